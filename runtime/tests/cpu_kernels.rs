//! Kernels chosen for the CPU the runtime runs on: the matrix library's kernel family from
//! the CPU's extensions (never a pre-AVX one on an AVX CPU), the user's own choice
//! respected, and host code refused on a CPU that lacks an extension it was generated for.

mod common;

use std::process::Command;

use common::fixture;
use zambac_runtime::cpu::blas::{core_for, is_pre_avx, openblas};
use zambac_runtime::cpu::machine::Machine;

fn machine(vendor: &str, features: &[&'static str]) -> Machine {
    Machine {
        vendor: vendor.into(),
        model: "test".into(),
        features: features.to_vec(),
    }
}

const AVX2: [&str; 5] = ["sse4.2", "avx", "avx2", "fma", "f16c"];
const AVX512: [&str; 5] = ["avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl"];

/// The kernel family follows the extensions (and the vendor), not a table of CPU models: a
/// CPU newer than any table (Emerald Rapids, which Debian's OpenBLAS 0.3.21 runs on SSE3
/// kernels) gets the family its extensions allow.
#[test]
fn the_kernel_family_follows_the_extensions() {
    let emerald_rapids = [
        AVX2.as_slice(),
        &AVX512,
        &["avx512vnni", "avx512bf16", "avx512fp16"],
    ]
    .concat();
    let skylake_sp = [AVX2.as_slice(), &AVX512].concat();
    assert_eq!(
        core_for(&machine("GenuineIntel", &emerald_rapids)),
        Some("Cooperlake")
    );
    // AMD's AVX-512 (Zen 4: two 256-bit halves) runs OpenBLAS's Zen kernels faster.
    assert_eq!(
        core_for(&machine("AuthenticAMD", &emerald_rapids)),
        Some("Zen")
    );
    assert_eq!(
        core_for(&machine("GenuineIntel", &skylake_sp)),
        Some("SkylakeX")
    );
    assert_eq!(core_for(&machine("AuthenticAMD", &AVX2)), Some("Zen"));
    assert_eq!(core_for(&machine("GenuineIntel", &AVX2)), Some("Haswell"));
    // No AVX2: OpenBLAS's own table covers every such CPU.
    assert_eq!(core_for(&machine("GenuineIntel", &["sse4.2", "avx"])), None);
    for core in ["Cooperlake", "SkylakeX", "Zen", "Haswell"] {
        assert!(!is_pre_avx(core), "{core}");
    }
    assert!(is_pre_avx("Prescott") && is_pre_avx("NEHALEM"));
}

/// On this machine: a CPU with AVX2 or AVX-512 never runs pre-AVX matrix kernels.
#[test]
fn an_avx_cpu_gets_no_pre_avx_matrix_kernels() {
    let this = Machine::this();
    match openblas() {
        Ok(b) => {
            if this.has("avx2") {
                assert!(!is_pre_avx(&b.core), "{} runs {} kernels", this, b.core);
            }
            if std::env::var_os("OPENBLAS_CORETYPE").is_none() {
                assert_eq!(b.chosen_by, "zambac");
                assert_eq!(
                    Some(b.core.to_ascii_lowercase()),
                    core_for(this).map(str::to_ascii_lowercase)
                );
            }
        }
        // Without OpenBLAS every product runs on the `gemm` crate, which picks its
        // kernels from the CPU's features itself.
        Err(e) => eprintln!("no OpenBLAS here ({e}); the gemm crate runs the products"),
    }
}

fn bench_json(dir: &std::path::Path, env: &[(&str, &str)]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_zambac-run"))
        .args([
            "bench",
            dir.to_str().unwrap(),
            "--prompt-len",
            "4",
            "--new-tokens",
            "1",
            "--json",
        ])
        .env_remove("OPENBLAS_CORETYPE")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The kernel choice is made before OpenBLAS loads, which is why it takes effect: a user's
/// `OPENBLAS_CORETYPE` is honoured the same way (and named as the chooser), and without it
/// the report names zambac's choice and the CPU.
#[test]
fn bench_names_the_cpu_and_who_chose_the_kernels() {
    if openblas().is_err() {
        eprintln!("no OpenBLAS here; nothing to choose");
        return;
    }
    let f = fixture();
    let ours = bench_json(&f.dir, &[]);
    let lib = ours["gemm_library"].as_str().unwrap();
    let want = core_for(Machine::this()).unwrap_or("");
    assert!(
        lib.contains(&format!("{want} kernels, chosen by zambac")),
        "{lib}"
    );
    assert_eq!(
        ours["cpu"]["features"],
        serde_json::json!(Machine::this().features)
    );
    assert!(
        ours["host_code"].as_str().unwrap().contains("x86-64"),
        "{ours}"
    );
    let users = bench_json(&f.dir, &[("OPENBLAS_CORETYPE", "Prescott")]);
    let lib = users["gemm_library"].as_str().unwrap();
    assert!(
        lib.contains("Prescott kernels, chosen by OPENBLAS_CORETYPE"),
        "{lib}"
    );
}

/// Host code generated for an extension this CPU lacks is refused before it runs (exit
/// 2), naming the extension; without the check the first such instruction would kill the
/// process.
#[test]
fn host_code_for_missing_extensions_is_refused() {
    let this = Machine::this();
    let Some(absent) = [
        "avx512fp16",
        "avx512vp2intersect",
        "avx512bf16",
        "avx512f",
        "avx2",
    ]
    .into_iter()
    .find(|f| zambac_runtime::cpu::machine::supports(f) == Some(false)) else {
        eprintln!("{this} has every extension this test could ask for");
        return;
    };
    let f = fixture();
    let manifest = f.dir.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["host_target"] =
        serde_json::json!({ "cpu": "future", "features": format!("+sse2,+{absent}") });
    std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zambac-run"))
        .args(["run", f.dir.to_str().unwrap(), "--tokens", "1,2"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(absent) && err.contains("lacks"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
