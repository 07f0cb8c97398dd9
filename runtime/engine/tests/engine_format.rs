//! The engine format: write → open round trips, reproducible bytes, atomic replacement,
//! and a `Load` error naming the file (and tensor) for every kind of damage.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{HOST, PTX, TOKENIZER, write};
use zambac_engine::{
    Checksum, Elem, Engine, EngineError, EngineWriter, FORMAT_VERSION, HOST_FILE, MANIFEST_FILE,
    PTX_FILE, TOKENIZER_FILE, WEIGHT_ALIGN, WEIGHTS_FILE, bf16_bits,
};

fn fresh() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("toy.engine");
    write(&out);
    (tmp, out)
}

/// The `Load` error of opening `dir`, as (file name, tensor, message).
fn load_error(dir: &Path) -> (String, Option<String>, String) {
    match Engine::open(dir) {
        Err(EngineError::Load { file, tensor, msg }) => {
            let name = Path::new(&file)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, tensor, msg)
        }
        Err(e) => panic!("expected a Load error, got {e}"),
        Ok(_) => panic!("a damaged engine opened"),
    }
}

#[test]
fn weights_round_trip_bit_exact_and_bf16_rounds_to_nearest_even() {
    let (_tmp, out) = fresh();
    let engine = Engine::open(&out).unwrap();
    let m = engine.manifest();
    assert_eq!(m.format_version, FORMAT_VERSION);
    assert_eq!(FORMAT_VERSION, 8);
    let parts = common::parts(common::kernels());
    let mut model = parts.model.clone();
    model.tokenizer = Some(zambac_engine::FileRef {
        file: TOKENIZER_FILE.into(),
        xxh3: Checksum::of(TOKENIZER),
    });
    assert_eq!(m.model, model);
    assert_eq!(m.source, parts.source);
    assert_eq!(m.kernels, parts.kernels);
    assert_eq!(m.programs, parts.programs);
    assert_eq!(m.host.xxh3, Checksum::of(HOST));
    let gpu = m.gpu.as_ref().expect("the toy engine has GPU code");
    assert_eq!(gpu.ptx.xxh3, Checksum::of(PTX));
    assert_eq!(gpu.chip, "sm_90");
    assert_eq!(
        gpu.kernels,
        common::companions(&parts.kernels).gpu.unwrap().kernels
    );
    assert_eq!(
        fs::read(engine.tokenizer_path().unwrap()).unwrap(),
        TOKENIZER
    );
    for (i, (name, shape, data, elem)) in common::weights().into_iter().enumerate() {
        let w = engine.weight(i).unwrap();
        assert_eq!((w.entry.name.as_str(), &w.entry.shape), (name, &shape));
        assert_eq!(w.entry.elem, elem);
        assert_eq!(w.entry.offset % WEIGHT_ALIGN, 0);
        assert_eq!(
            w.bytes.as_ptr() as usize % 64,
            0,
            "mapped in place, aligned"
        );
        match elem {
            Elem::F32 => {
                let got: Vec<u32> = w.as_f32().unwrap().iter().map(|x| x.to_bits()).collect();
                let want: Vec<u32> = data.iter().map(|x| x.to_bits()).collect();
                assert_eq!(got, want, "{name}");
                assert!(w.as_bf16_bits().is_none());
            }
            Elem::Bf16 => {
                let want: Vec<u16> = data.iter().map(|&x| bf16_bits(x)).collect();
                assert_eq!(w.as_bf16_bits().unwrap(), want.as_slice(), "{name}");
                assert!(w.as_f32().is_none());
                let widened: Vec<u32> = w.to_f32().iter().map(|x| x.to_bits()).collect();
                let want: Vec<u32> = want.iter().map(|&b| u32::from(b) << 16).collect();
                assert_eq!(widened, want, "{name} widened");
            }
            other => panic!("the toy stores no {other} weight"),
        }
    }
}

#[test]
fn bf16_conversion_is_round_to_nearest_even() {
    let cases: [(u32, u16); 7] = [
        (0x3F80_0000, 0x3F80), // 1.0, exact
        (0x3F80_8000, 0x3F80), // halfway, even below
        (0x3F81_8000, 0x3F82), // halfway, even above
        (0x3F80_8001, 0x3F81), // just above halfway
        (0x3F80_7FFF, 0x3F80), // just below halfway
        (0x7F7F_FFFF, 0x7F80), // f32::MAX rounds to infinity
        (0xBF80_8000, 0xBF80), // sign is kept
    ];
    for (f, b) in cases {
        assert_eq!(bf16_bits(f32::from_bits(f)), b, "{f:#010x}");
    }
    assert!(f32::from_bits(u32::from(bf16_bits(f32::NAN)) << 16).is_nan());
    let mut widened = [0.0f32; 2];
    zambac_engine::widen_bf16(&[0x3F82, 0xC000], &mut widened);
    assert_eq!(widened, [1.015625, -2.0]);
}

#[test]
fn same_inputs_give_byte_identical_engines() {
    let (_tmp, out) = fresh();
    let first: Vec<(String, Vec<u8>)> = files(&out);
    write(&out);
    assert_eq!(files(&out), first, "rewriting in place");
    let other = out.with_file_name("other.engine");
    write(&other);
    assert_eq!(files(&other), first, "writing elsewhere");
    let names: Vec<&str> = first.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            MANIFEST_FILE,
            HOST_FILE,
            PTX_FILE,
            TOKENIZER_FILE,
            WEIGHTS_FILE
        ]
    );
    let manifest = String::from_utf8(first[0].1.clone()).unwrap();
    assert!(
        manifest.starts_with("{\n  \"format_version\": 8,\n  \"zambac_version\""),
        "{manifest}"
    );
    assert!(manifest.ends_with("}\n"));
    // The new names of the format, as a reader of the JSON sees them.
    assert!(manifest.contains("\"elem\": \"bf16\""), "{manifest}");
    assert!(!manifest.contains("\"dtype\""), "{manifest}");
    assert!(
        manifest.contains("\"name\": \"prefill_last\""),
        "{manifest}"
    );
    assert!(manifest.contains("\"role\": \"k.0\""), "{manifest}");
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.retain(|n| n != MANIFEST_FILE);
    names.insert(0, MANIFEST_FILE.into());
    names
        .into_iter()
        .map(|n| (n.clone(), fs::read(dir.join(&n)).unwrap()))
        .collect()
}

/// Entries of `parent` other than `keep`: temporary directories left behind.
fn debris(parent: &Path, keep: &[&str]) -> Vec<String> {
    fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

#[test]
fn a_failed_write_leaves_the_existing_engine_intact() {
    let (tmp, out) = fresh();
    let before = files(&out);

    // Fails in `finish`: a program launches a kernel the table does not have.
    let mut w = EngineWriter::create(&out).unwrap();
    w.add_weight("embed", &[2, 2], &[1.0, 2.0, 3.0, 4.0], Elem::F32)
        .unwrap();
    let err = w
        .finish(common::parts(Vec::new()), common::companions(&[]))
        .unwrap_err();
    assert!(matches!(err, EngineError::Internal(_)), "{err}");
    assert!(err.to_string().contains("not in the kernel table"), "{err}");
    assert_eq!(files(&out), before);

    // Fails while adding a weight, then is dropped.
    let mut w = EngineWriter::create(&out).unwrap();
    assert!(w.add_weight("bad", &[3], &[1.0], Elem::F32).is_err());
    assert!(
        matches!(
            w.add_weight("ids", &[1], &[1.0], Elem::I64),
            Err(EngineError::Internal(_))
        ),
        "weights are f32 or bf16"
    );
    drop(w);

    // Abandoned half-way.
    let mut w = EngineWriter::create(&out).unwrap();
    w.add_weight("embed", &[1], &[1.0], Elem::Bf16).unwrap();
    drop(w);

    assert_eq!(files(&out), before);
    assert!(Engine::open(&out).is_ok());
    assert_eq!(debris(tmp.path(), &["toy.engine"]), Vec::<String>::new());
}

#[test]
fn refuses_to_replace_a_directory_that_is_not_an_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let precious = tmp.path().join("home");
    fs::create_dir(&precious).unwrap();
    fs::write(precious.join("thesis.tex"), "years of work").unwrap();
    match EngineWriter::create(&precious) {
        Err(EngineError::Write { msg, .. }) => assert!(msg.contains("not an engine"), "{msg}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("would replace a non-engine directory"),
    }
    assert!(precious.join("thesis.tex").exists());
    // An empty directory is fine to fill.
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    write(&empty);
    assert!(Engine::open(&empty).is_ok());
}

#[test]
fn progress_reports_every_tensor_and_the_final_size() {
    let tmp = tempfile::tempdir().unwrap();
    let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let mut w = EngineWriter::create(tmp.path().join("e")).unwrap();
    let log = seen.clone();
    w.on_progress(move |p| {
        log.borrow_mut()
            .push((p.tensor.to_string(), p.bytes_written))
    });
    w.add_weight("a", &[3], &[1.0, 2.0, 3.0], Elem::F32)
        .unwrap();
    w.add_weight("b", &[2], &[1.0, 2.0], Elem::Bf16).unwrap();
    w.add_weight("c", &[0], &[], Elem::F32).unwrap();
    assert_eq!(w.bytes_written(), 128);
    assert_eq!(
        *seen.borrow(),
        vec![("a".into(), 12), ("b".into(), 68), ("c".into(), 128)]
    );
}

#[test]
fn another_format_version_is_rejected_by_name() {
    for version in [1, 2, 3, 4, 5, 6, 7, 9] {
        let (_tmp, out) = fresh();
        let path = out.join(MANIFEST_FILE);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"format_version\": 8"));
        fs::write(
            &path,
            text.replace(
                "\"format_version\": 8",
                &format!("\"format_version\": {version}"),
            ),
        )
        .unwrap();
        let (file, _, msg) = load_error(&out);
        assert_eq!(file, MANIFEST_FILE);
        assert!(msg.contains(&format!("format version {version}")), "{msg}");
        assert!(
            msg.contains(&format!("reads version {FORMAT_VERSION}")),
            "{msg}"
        );
    }
}

#[test]
fn missing_files_are_named() {
    for name in [
        MANIFEST_FILE,
        WEIGHTS_FILE,
        HOST_FILE,
        PTX_FILE,
        TOKENIZER_FILE,
    ] {
        let (_tmp, out) = fresh();
        fs::remove_file(out.join(name)).unwrap();
        let (file, _, msg) = load_error(&out);
        assert_eq!(file, name);
        assert!(msg.contains("missing"), "{name}: {msg}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_, _, msg) = load_error(&tmp.path().join("nowhere"));
    assert!(msg.contains("no such engine directory"), "{msg}");
}

#[test]
fn a_truncated_or_invalid_manifest_is_named() {
    let (_tmp, out) = fresh();
    let path = out.join(MANIFEST_FILE);
    let text = fs::read(&path).unwrap();
    fs::write(&path, &text[..text.len() / 2]).unwrap();
    let (file, _, msg) = load_error(&out);
    assert_eq!(file, MANIFEST_FILE);
    assert!(msg.contains("not a valid engine manifest"), "{msg}");

    let good = String::from_utf8(text).unwrap();
    // The first `"offset": 0` is the first weight's (views at offset 0 leave it out).
    fs::write(&path, good.replacen("\"offset\": 0", "\"offset\": 4", 1)).unwrap();
    let (file, _, msg) = load_error(&out);
    assert_eq!(file, MANIFEST_FILE);
    assert!(msg.contains("not a multiple of 64"), "{msg}");
    assert!(msg.contains("tensor `embed`"), "{msg}");

    // A field this format does not have.
    fs::write(
        &path,
        good.replacen("\"elem\": \"f32\"", "\"dtype\": \"f32\"", 1),
    )
    .unwrap();
    let (file, _, msg) = load_error(&out);
    assert_eq!(file, MANIFEST_FILE);
    assert!(msg.contains("not a valid engine manifest"), "{msg}");
}

#[test]
fn a_checksum_mismatch_names_the_tensor() {
    let (_tmp, out) = fresh();
    let engine = Engine::open(&out).unwrap();
    let w2 = engine.manifest().weights[2].clone();
    drop(engine);
    let path = out.join(WEIGHTS_FILE);
    let mut bytes = fs::read(&path).unwrap();
    bytes[w2.offset as usize + 5] ^= 0x40;
    fs::write(&path, bytes).unwrap();
    let (file, tensor, msg) = load_error(&out);
    assert_eq!(file, WEIGHTS_FILE);
    assert_eq!(tensor.as_deref(), Some("w2"));
    assert!(msg.contains("checksum mismatch"), "{msg}");
}

#[test]
fn a_weights_file_of_the_wrong_size_is_named() {
    let (_tmp, out) = fresh();
    let path = out.join(WEIGHTS_FILE);
    let bytes = fs::read(&path).unwrap();
    for len in [bytes.len() - 3, bytes.len() + 64] {
        let mut b = bytes.clone();
        b.resize(len, 0);
        fs::write(&path, b).unwrap();
        let (file, _, msg) = load_error(&out);
        assert_eq!(file, WEIGHTS_FILE);
        assert!(msg.contains(&format!("is {len} bytes")), "{msg}");
    }
}

#[test]
fn a_replaced_companion_file_is_named() {
    for name in [HOST_FILE, PTX_FILE, TOKENIZER_FILE] {
        let (_tmp, out) = fresh();
        fs::write(out.join(name), b"something else").unwrap();
        let (file, _, msg) = load_error(&out);
        assert_eq!(file, name);
        assert!(msg.contains("checksum"), "{name}: {msg}");
    }
}

#[test]
fn a_build_removes_what_killed_builds_left_and_nothing_else() {
    let (tmp, out) = fresh();
    let parent = tmp.path();
    let name = out.file_name().unwrap().to_string_lossy().into_owned();
    // A process that cannot exist (pids stop far below 2³²−2), and one that does (pid 1).
    let dead_tmp = parent.join(format!(".{name}.zambac-tmp-4294967294"));
    let dead_old = parent.join(format!(".{name}.zambac-old-4294967294"));
    let live = parent.join(format!(".{name}.zambac-tmp-1"));
    let other = parent.join(".other.engine.zambac-tmp-4294967294");
    for d in [&dead_tmp, &dead_old, &live, &other] {
        fs::create_dir(d).unwrap();
        fs::write(d.join(WEIGHTS_FILE), b"half written").unwrap();
    }
    write(&out);
    assert!(
        !dead_tmp.exists() && !dead_old.exists(),
        "stale directories stay"
    );
    if Path::new("/proc/1").exists() {
        assert!(live.exists(), "a running build's directory was removed");
    }
    assert!(other.exists(), "another engine's directory was removed");
}
