//! The validator refuses every launch, product and program that breaks the contract, and
//! says where: each case starts from the valid toy engine, breaks one thing in its
//! `manifest.json` (which has no checksum of its own, so nothing else needs fixing) and
//! expects `Engine::open` to name the program, the step and the problem. The writer runs
//! the same validator: handed the same broken parts, `EngineWriter::finish` refuses them
//! as an internal error and leaves nothing behind.

mod common;

use std::fs;
use std::path::Path;

use common::{
    STEP_ADD, STEP_EMBED, STEP_GEMM_W1, STEP_HEAD, STEP_KV_WRITE, STEP_ROW_SCALE, write,
    write_parts,
};
use serde_json::{Value, json};
use zambac_engine::{Engine, EngineError, MANIFEST_FILE, Manifest, ManifestParts};

/// Index of each program in the manifest (the order `ProgramName::ALL` writes them).
const PREFILL: usize = 0;
const DECODE: usize = 2;

/// The `Load` message of opening the toy engine after `edit` changed its manifest.
fn refused(dir: &Path, edit: impl FnOnce(&mut Value)) -> String {
    let path = dir.join(MANIFEST_FILE);
    let mut m: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    edit(&mut m);
    fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    match Engine::open(dir) {
        Err(EngineError::Load { file, tensor, msg }) => {
            assert!(file.ends_with(MANIFEST_FILE), "{file}: {msg}");
            assert_eq!(tensor, None, "{msg}");
            msg
        }
        Err(e) => panic!("expected a Load error, got {e}"),
        Ok(_) => panic!("a broken manifest was accepted"),
    }
}

/// The builder's parts that would have produced `manifest` (weights and companion files
/// are the writer's).
fn parts_of(manifest: Manifest) -> ManifestParts {
    let mut model = manifest.model;
    model.tokenizer = None;
    ManifestParts {
        zambac_version: manifest.zambac_version,
        model,
        source: manifest.source,
        kernels: manifest.kernels,
        programs: manifest.programs,
        host_target: manifest.host_target,
        build: manifest.build,
    }
}

/// Breaks the toy engine with `edit`; checks that opening it fails with a message that
/// names `program` and `step` and contains every one of `expect`, and that the writer
/// refuses the same parts with the same message.
fn case(program: &str, step: Option<usize>, expect: &[&str], edit: impl Fn(&mut Value)) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("toy.engine");
    write(&dir);
    let msg = refused(&dir, &edit);
    let place = match step {
        Some(i) => format!("program `{program}`, step {i}"),
        None => format!("program `{program}`"),
    };
    assert!(
        msg.starts_with(&place),
        "should start with `{place}`: {msg}"
    );
    for e in expect {
        assert!(msg.contains(e), "should contain `{e}`: {msg}");
    }

    let broken = Manifest::parse(&fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap();
    let again = tmp.path().join("again.engine");
    match write_parts(&again, parts_of(broken)) {
        Err(EngineError::Internal(m)) => {
            assert_eq!(m, format!("the engine being built is inconsistent: {msg}"))
        }
        Err(e) => panic!("expected an internal error from the writer, got {e}"),
        Ok(_) => panic!("the writer accepted what the loader refuses: {msg}"),
    }
    let mut left: Vec<String> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["toy.engine"],
        "the refused build left something behind"
    );
}

fn step(m: &mut Value, program: usize, i: usize) -> &mut Value {
    &mut m["programs"][program]["steps"][i]
}

fn launch(m: &mut Value, program: usize, i: usize) -> &mut Value {
    let s = step(m, program, i);
    assert!(s.get("Launch").is_some(), "step {i} is not a launch: {s}");
    &mut s["Launch"]
}

fn views(m: &mut Value, program: usize, i: usize) -> &mut Vec<Value> {
    launch(m, program, i)["views"].as_array_mut().unwrap()
}

#[test]
fn the_untouched_toy_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("toy.engine");
    write(&dir);
    // A round trip through `serde_json::Value` alone changes nothing the loader checks.
    let path = dir.join(MANIFEST_FILE);
    let m: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
    let engine = Engine::open(&dir).unwrap();
    assert_eq!(engine.manifest().programs, common::programs());
}

#[test]
fn a_missing_view() {
    case(
        "decode",
        Some(STEP_ADD),
        &[
            "kernel `add`, Binary",
            "the kernel takes 3 views (a, b, out), the launch passes 2",
        ],
        |m| {
            views(m, DECODE, STEP_ADD).pop();
        },
    );
}

#[test]
fn an_extra_view() {
    case(
        "prefill",
        Some(STEP_EMBED),
        &[
            "kernel `embed`, Embedding",
            "the kernel takes 3 views (tokens, table, out), the launch passes 4",
        ],
        |m| {
            views(m, PREFILL, STEP_EMBED).push(json!({ "buf": { "Slot": 0 } }));
        },
    );
}

#[test]
fn an_f32_slot_where_the_kernel_wants_i64_tokens() {
    case(
        "decode",
        Some(STEP_EMBED),
        &["view 0 (tokens) must be i64, but slot 1 holds f32"],
        |m| views(m, DECODE, STEP_EMBED)[0] = json!({ "buf": { "Slot": 1 } }),
    );
}

#[test]
fn a_bf16_weight_where_the_kernel_wants_f32() {
    // `head` has the table's shape, [V, H]; only its element type is wrong.
    case(
        "prefill",
        Some(STEP_EMBED),
        &["view 1 (table) must be f32, but weight 3 `head` holds bf16"],
        |m| views(m, PREFILL, STEP_EMBED)[1] = json!({ "buf": { "Weight": 3 } }),
    );
}

#[test]
fn a_written_view_pointing_at_a_weight() {
    case(
        "decode",
        Some(STEP_ADD),
        &["view 2 (out) is written by the kernel, but weight 1 `w1` is read-only"],
        |m| views(m, DECODE, STEP_ADD)[2] = json!({ "buf": { "Weight": 1 } }),
    );
}

#[test]
fn a_view_whose_offset_is_past_its_buffer() {
    // Slot 2 holds one row of H = 4 in decode.
    case(
        "decode",
        Some(STEP_ROW_SCALE),
        &[
            "kernel `row_scale`, Epilogue",
            "view 1 (out) reaches 104 elements into slot 2, which holds 4: outside its buffer",
        ],
        |m| views(m, DECODE, STEP_ROW_SCALE)[1]["offset"] = json!({ "k": 100 }),
    );
}

#[test]
fn a_view_that_outgrows_its_buffer_with_the_prompt() {
    // A workspace of one row fits every one-token call, not a prompt of two: the check
    // covers every call of the program, not one size.
    case(
        "prefill",
        Some(STEP_ADD),
        &[
            "view 2 (out) reaches 4·T elements into workspace 0, which holds 4: outside its \
             buffer (at T = ",
        ],
        |m| m["programs"][PREFILL]["scratch"][0] = json!({ "k": 4 }),
    );
}

#[test]
fn a_wrong_number_of_integer_arguments() {
    case(
        "prefill",
        Some(STEP_ROW_SCALE),
        &["the kernel takes 1 integer arguments (position), the launch passes 2"],
        |m| {
            launch(m, PREFILL, STEP_ROW_SCALE)["ints"]
                .as_array_mut()
                .unwrap()
                .push(json!({ "k": 1 }))
        },
    );
}

#[test]
fn a_kernel_that_is_not_in_the_table() {
    case(
        "decode",
        Some(STEP_EMBED),
        &["(kernel `embedz`): launches `embedz`, which is not in the kernel table"],
        |m| launch(m, DECODE, STEP_EMBED)["kernel"] = json!("embedz"),
    );
}

#[test]
fn a_kernel_of_a_kind_this_build_does_not_know() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("toy.engine");
    write(&dir);
    let msg = refused(&dir, |m| {
        let kernel = m["kernels"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|k| k["symbol"] == "kv_write")
            .unwrap();
        let kind = kernel["kind"]["KvWrite"].take();
        kernel["kind"] = json!({ "KvWrite2": kind });
    });
    // The first launch of it, in the first program listed.
    let want = format!(
        "program `prefill`, step {STEP_KV_WRITE}: launches kernel `kv_write`, whose kind \
         `KvWrite2` this runtime does not know"
    );
    assert!(msg.starts_with(&want), "{msg}");
}

#[test]
fn a_grid_that_is_not_the_kinds_fixed_grid() {
    case(
        "decode",
        Some(STEP_HEAD),
        &[
            "kernel `head`, Gemv",
            "the grid is 9, but the kernel covers exactly 8",
        ],
        |m| launch(m, DECODE, STEP_HEAD)["grid"] = json!({ "k": 9 }),
    );
}

#[test]
fn a_program_that_does_not_output_a_state() {
    case(
        "decode",
        None,
        &["program `decode`: it does not output state `k.0`"],
        |m| {
            m["programs"][DECODE]["outputs"]
                .as_array_mut()
                .unwrap()
                .retain(|o| o[0] != "k.0")
        },
    );
}

#[test]
fn logits_of_the_wrong_shape() {
    // prefill_last computes one row, not T.
    case(
        "prefill_last",
        None,
        &["logits have shape [T, 8], not [1, 8]"],
        |m| m["programs"][1]["outputs"][0][1][0] = json!({ "t": 1 }),
    );
}

#[test]
fn a_gemm_operand_outside_its_buffer() {
    // B = w1 [4, 4] read with a column stride of 5: (4-1)·1 + (4-1)·5 + 1 = 19 elements.
    case(
        "prefill",
        Some(STEP_GEMM_W1),
        &[
            "(GEMM): operand B reaches 19 elements into weight 1 `w1`, which holds 16: \
             outside its buffer",
        ],
        |m| step(m, PREFILL, STEP_GEMM_W1)["Gemm"]["b"]["col_stride"] = json!({ "k": 5 }),
    );
}

#[test]
fn a_gemm_writing_a_weight() {
    case(
        "decode",
        Some(STEP_GEMM_W1),
        &["operand C cannot be weight 2 `w2` (f32)"],
        |m| step(m, DECODE, STEP_GEMM_W1)["Gemm"]["c"]["view"] = json!({ "buf": { "Weight": 2 } }),
    );
}

#[test]
fn a_kv_write_whose_position_can_run_past_the_cache() {
    // Rows written from pos + 1 run one row past the cache for a decode at its last
    // position.
    case(
        "decode",
        Some(STEP_KV_WRITE),
        &[
            "kernel `kv_write`, KvWrite",
            "the kernel needs pos + 2 ≤ C, which fails at T = 1, C = 1, pos = 0",
        ],
        |m| launch(m, DECODE, STEP_KV_WRITE)["ints"][0] = json!({ "p": 1, "k": 1 }),
    );
}

#[test]
fn a_kv_write_told_a_larger_cache_than_it_has() {
    // The capacity argument sizes the cache view: C + 1 rows do not fit `k.0`.
    case(
        "prefill",
        Some(STEP_KV_WRITE),
        &["view 1 (cache) reaches 4·C + 4 elements into output `k.0`, which holds 4·C"],
        |m| launch(m, PREFILL, STEP_KV_WRITE)["ints"][1] = json!({ "c": 1, "k": 1 }),
    );
}

#[test]
fn a_negative_position_argument() {
    // Rows written at position -1 land before the cache: every relation of the kind holds
    // (-1 + T ≤ C), so only the sign check stands between this and a write out of bounds.
    case(
        "prefill",
        Some(STEP_KV_WRITE),
        &[
            "kernel `kv_write`, KvWrite",
            "integer argument 0 (position), -1, is negative",
        ],
        |m| launch(m, PREFILL, STEP_KV_WRITE)["ints"][0] = json!({ "k": -1 }),
    );
}

/// An edit of the toy engine's manifest.
type Edit = fn(&mut Value);

/// Each edit of the toy engine's launch table is refused with a `gpu: ` message that
/// contains its expected text.
fn refused_gpu_edits(broken: &[(&str, Edit)]) {
    for (expect, edit) in broken {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("toy.engine");
        write(&dir);
        let msg = refused(&dir, edit);
        assert!(
            msg.starts_with("gpu: ") && msg.contains(expect),
            "expected `{expect}`: {msg}"
        );
    }
}

/// The GPU launch table of the toy engine, as JSON.
fn gpu_kernels(m: &mut Value) -> &mut Vec<Value> {
    m["gpu"]["kernels"].as_array_mut().unwrap()
}

#[test]
fn a_gpu_launch_table_that_disagrees_with_the_kernels_is_refused() {
    let broken: [(&str, Edit); 5] = [
        ("launch entries for", |m| {
            gpu_kernels(m).pop();
        }),
        ("stands where kernel", |m| gpu_kernels(m).swap(0, 1)),
        ("is not one of its arguments", |m| {
            gpu_kernels(m)[0]["params"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({"view": 99}));
        }),
        ("listed twice", |m| {
            gpu_kernels(m)[0]["params"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!("begin"));
        }),
        ("block size 0", |m| {
            gpu_kernels(m)[0]["block_size"] = 0.into()
        }),
    ];
    refused_gpu_edits(&broken);
}

#[test]
fn a_gpu_entry_without_the_grid_range_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("toy.engine");
    write(&dir);
    let msg = refused(&dir, |m| {
        gpu_kernels(m)[0]["params"]
            .as_array_mut()
            .unwrap()
            .retain(|p| p != "end");
    });
    assert!(msg.contains("lack the grid range"), "{msg}");
}

/// The index of the toy engine's first kernel of kind `kind`.
fn kernel_of_kind(m: &Value, kind: &str) -> usize {
    m["kernels"]
        .as_array()
        .unwrap()
        .iter()
        .position(|k| k["kind"].get(kind).is_some())
        .unwrap_or_else(|| panic!("the toy engine has no {kind}"))
}

/// A well-formed batched entry for the toy engine's Gemv.
fn batched() -> Value {
    json!({
        "params": ["begin", "end", {"view": 0}, "sequences", "input_stride", "output_stride"]
    })
}

#[test]
fn a_batched_entry_is_checked_like_an_entry() {
    let broken: [(&str, Edit); 4] = [
        ("only a Gemv has", |m| {
            let i = kernel_of_kind(m, "Binary");
            gpu_kernels(m)[i]["batched"] = batched();
        }),
        ("lack the batch", |m| {
            let i = kernel_of_kind(m, "Gemv");
            let mut b = batched();
            b["params"].as_array_mut().unwrap().pop();
            gpu_kernels(m)[i]["batched"] = b;
        }),
        ("batched entry parameter", |m| {
            let i = kernel_of_kind(m, "Gemv");
            let mut b = batched();
            b["params"].as_array_mut().unwrap().push(json!({"int": 7}));
            gpu_kernels(m)[i]["batched"] = b;
        }),
        // A single entry takes no batch.
        ("is not one of its arguments", |m| {
            let i = kernel_of_kind(m, "Gemv");
            gpu_kernels(m)[i]["params"]
                .as_array_mut()
                .unwrap()
                .push(json!("sequences"));
        }),
    ];
    refused_gpu_edits(&broken);
    // And a well-formed one is accepted.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("toy.engine");
    write(&dir);
    let path = dir.join(MANIFEST_FILE);
    let mut m: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let i = kernel_of_kind(&m, "Gemv");
    gpu_kernels(&mut m)[i]["batched"] = batched();
    fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    Engine::open(&dir).expect("a Gemv with a batched form opens");
}
