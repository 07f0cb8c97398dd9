//! A build never damages the engine it would replace: interrupted (SIGINT), terminated
//! (SIGTERM) or killed (SIGKILL) part-way, or
//! failing to write because the disk is full (here: a file-size limit), it leaves the
//! existing engine byte-identical, and the next build succeeds and clears what the killed
//! ones left. (The replacement itself is one atomic exchange of directories on Linux.)

#![cfg(unix)]

mod common;
use common::*;

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Every file of an engine directory, by name, with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    all.sort();
    all
}

/// An engine of the tiny example at `dir`.
fn existing_engine(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let out = zambac(&[
        "build",
        root().join("examples/tiny.toml").to_str().unwrap(),
        "-o",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    files(dir)
}

fn build_command(input: &str, out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_zambac"));
    c.args(["build", input, "--no-cache", "-o", out.to_str().unwrap()])
        .env("XDG_CACHE_HOME", test_cache_home());
    c
}

#[test]
fn a_build_interrupted_or_killed_part_way_leaves_the_existing_engine_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = tmp.path().join("e.engine");
    let before = existing_engine(&engine);
    // The ~100M example writes 200 MB of weights after compiling its kernels: killed at
    // these points the build is compiling, then writing.
    let input = root().join("examples/zamba2-100m.toml");
    // Interrupted (Ctrl-C), terminated, or killed outright.
    let stops = [
        (libc::SIGKILL, 300),
        (libc::SIGKILL, 1500),
        (libc::SIGINT, 1500),
        (libc::SIGTERM, 800),
    ];
    for (signal, ms) in stops {
        let delay = Duration::from_millis(ms);
        let mut command = build_command(input.to_str().unwrap(), &engine);
        // SAFETY: between fork and exec the closure only calls `signal`, which is
        // async-signal-safe. A test run in the background of a non-interactive shell
        // inherits SIGINT ignored; a user's Ctrl-C reaches a build with the default action.
        unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGTERM, libc::SIG_DFL);
                Ok(())
            });
        }
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        std::thread::sleep(delay);
        // SAFETY: signalling a child this test spawned and has not yet waited for.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let status = child.wait_with_output().unwrap().status;
        assert_eq!(
            status.signal(),
            Some(signal),
            "the build ended by itself within {:?}; this test needs it still running",
            started.elapsed()
        );
        assert_eq!(files(&engine), before, "signal {signal} after {delay:?}");
    }
    // What the killed builds left beside the engine does not stop the next one.
    let out = zambac(&[
        "build",
        root().join("examples/tiny.toml").to_str().unwrap(),
        "--weights",
        "random:9",
        "-o",
        engine.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(files(&engine), before, "the new build replaced the engine");
    // ... and it removed their half-written directories.
    let left: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "e.engine")
        .collect();
    assert!(left.is_empty(), "debris of the killed builds: {left:?}");
}

#[test]
fn a_build_that_runs_out_of_space_leaves_the_existing_engine_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = tmp.path().join("e.engine");
    let before = existing_engine(&engine);
    let mut build = build_command(root().join("examples/tiny.toml").to_str().unwrap(), &engine);
    build.args(["--weights", "random:9"]);
    // SAFETY: between fork and exec the closure only calls async-signal-safe functions
    // (setrlimit, signal). A 256 KiB file-size limit makes writing the ~2 MB weights fail
    // with EFBIG, as a full disk fails a write; SIGXFSZ is ignored so the write returns
    // the error instead of killing the process.
    unsafe {
        build.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 256 * 1024,
                rlim_max: 256 * 1024,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let out = build.output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("weights.bin") && stderr(&out).contains("cannot write"),
        "the message names the file that could not be written: {}",
        stderr(&out)
    );
    assert_eq!(files(&engine), before);
    let left = std::fs::read_dir(tmp.path()).unwrap().count();
    assert_eq!(left, 1, "the failed build removed its temporary directory");
}
