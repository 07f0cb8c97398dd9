//! Attention over a KV cache — one token, and prompts of any length from any position —
//! with and without grouped-query heads.

use super::harness::{Buf, Lib, assert_within_scale, check_with, random, to_bf16};
use zambac_codegen::HostTarget;
use zambac_engine::{Elem, Kernel, KernelKind, decode_split_len};
use zambac_reference::kernels as k;
use zambac_runtime::Tensor;

fn decode(heads: usize, kv_heads: usize, head_dim: usize, capacity: usize, pos: usize) {
    decode_stored(heads, kv_heads, head_dim, capacity, pos, Elem::F32, 1);
    decode_stored(heads, kv_heads, head_dim, capacity, pos, Elem::F32, 3);
}

/// The caches as a kernel reads them (`kv`) and as the reference does (their values).
fn caches(k: Vec<f32>, v: Vec<f32>, kv: Elem) -> ((Buf, Buf), (Vec<f32>, Vec<f32>)) {
    match kv {
        Elem::Bf16 => {
            let ((kb, kr), (vb, vr)) = (to_bf16(&k), to_bf16(&v));
            ((Buf::Bf16(kb), Buf::Bf16(vb)), (kr, vr))
        }
        _ => ((Buf::F32(k.clone()), Buf::F32(v.clone())), (k, v)),
    }
}

/// Decode attention split `splits` ways, then combined, against the reference; both
/// schedules, each kernel run over its whole grid and in two ranges. The partial rows of the
/// splits that [`decode_split_len`] leaves without keys must be `(−∞, 0, 0…)`.
fn decode_stored(
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    pos: usize,
    kv: Elem,
    splits: usize,
) {
    let scale = (head_dim as f64 / 2.0).powf(-0.5);
    let q = random(heads * head_dim, 50, -1.0, 1.0);
    let kc = random(kv_heads * capacity * head_dim, 51, -1.0, 1.0);
    let vc = random(kv_heads * capacity * head_dim, 52, -1.0, 1.0);
    let ((kbuf, vbuf), (kc, vc)) = caches(kc, vc, kv);
    let want = k::attention(
        &Tensor::new(vec![1, heads * head_dim], q.clone()),
        &Tensor::new(vec![kv_heads, capacity, head_dim], kc.clone()),
        &Tensor::new(vec![kv_heads, capacity, head_dim], vc.clone()),
        heads,
        scale,
        pos,
    );
    let width = head_dim + 2;
    // Garbage in the partials: every element must be written.
    let partial = Buf::F32(vec![f32::NAN; heads * splits * width]);
    let bufs = [q_buf(q), kbuf, vbuf, partial];
    let kernels = [
        Kernel {
            symbol: "part".into(),
            kind: KernelKind::AttentionDecode {
                heads,
                kv_heads,
                head_dim,
                scale,
                kv,
                splits,
            },
        },
        Kernel {
            symbol: "combine".into(),
            kind: KernelKind::AttentionCombine {
                heads,
                head_dim,
                splits,
            },
        },
    ];
    let keys = (pos + 1).min(capacity);
    let busy = keys.div_ceil(decode_split_len(keys, splits));
    let ints = [pos as i64, capacity as i64];
    for (schedule, lib) in [
        ("host", Lib::build(&kernels)),
        ("GPU schedule", Lib::build_gpu_schedule(&kernels)),
    ] {
        for (run, parts) in lib
            .run_both("part", &bufs, &ints, heads * splits)
            .iter()
            .enumerate()
        {
            let label = format!(
                "decode {heads}/{kv_heads}×{head_dim} at {pos} of {capacity}, {splits} splits, \
                 {kv:?} ({schedule}, {})",
                ["whole", "split"][run]
            );
            let rows = parts[3].f32();
            for (i, row) in rows.chunks(width).enumerate() {
                if i % splits >= busy {
                    assert_eq!(row[0], f32::NEG_INFINITY, "{label}: split {i} max");
                    assert!(row[1..].iter().all(|x| *x == 0.0), "{label}: split {i}");
                } else {
                    assert!(row.iter().all(|x| x.is_finite()), "{label}: split {i}");
                }
            }
            let mut out = [parts[3].clone(), Buf::F32(vec![f32::NAN; heads * head_dim])];
            lib.call("combine", &mut out, &[], 0, heads);
            assert_within_scale(out[1].f32(), &want.data, ATTENTION_ATOL, &label);
        }
    }
}

#[test]
fn one_head_per_kv_head_attends_all_cached_keys() {
    decode(4, 4, 24, 32, 19);
    decode(2, 2, 64, 40, 39);
    decode(3, 3, 20, 8, 0);
}

#[test]
fn grouped_query_heads_share_their_kv_head() {
    decode(4, 2, 24, 32, 19);
    decode(8, 1, 40, 24, 5);
    decode(6, 3, 160, 64, 50);
}

/// Splits take at least 64 keys, in multiples of 16: caches on both sides of those
/// boundaries, with more splits than there are keys to fill them and fewer, and head dims
/// that do not fill a warp's lanes evenly (24, 40, 72) or do (32, 128).
#[test]
fn split_decode_attention_covers_every_key_once() {
    for pos in [0, 15, 16, 63, 64, 65, 127, 128, 200, 255, 256, 300, 700] {
        decode_stored(2, 1, 24, 704, pos, Elem::F32, 4);
    }
    for (splits, pos) in [(1, 500), (2, 129), (7, 450), (16, 1100), (5, 64)] {
        decode_stored(2, 2, 32, 1200, pos, Elem::F32, splits);
    }
    decode_stored(3, 3, 72, 300, 299, Elem::F32, 3);
    decode_stored(2, 1, 128, 520, 517, Elem::Bf16, 6);
}

/// One prompt of `rows` queries at positions `pos ..` over a cache of `capacity` rows whose
/// first `pos + rows` keys are written.
struct Prompt {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    pos: usize,
    rows: usize,
    kv: Elem,
    products: Elem,
}

impl Prompt {
    fn kind(&self) -> KernelKind {
        KernelKind::AttentionPrefill {
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            scale: (self.head_dim as f64 / 2.0).powf(-0.5),
            kv: self.kv,
            products: self.products,
        }
    }

    /// The buffers `[q, K, V, out]` and the reference output.
    fn case(&self, seed: u64) -> ([Buf; 4], Vec<f32>) {
        let (h, kvh, hd, c) = (self.heads, self.kv_heads, self.head_dim, self.capacity);
        let q = random(self.rows * h * hd, seed, -1.5, 1.5);
        let kc = random(kvh * c * hd, seed + 1, -1.5, 1.5);
        let vc = random(kvh * c * hd, seed + 2, -1.0, 1.0);
        let ((kbuf, vbuf), (kc, vc)) = caches(kc, vc, self.kv);
        let want = k::attention(
            &Tensor::new(vec![self.rows, h * hd], q.clone()),
            &Tensor::new(vec![kvh, c, hd], kc.clone()),
            &Tensor::new(vec![kvh, c, hd], vc.clone()),
            h,
            (hd as f64 / 2.0).powf(-0.5),
            self.pos,
        );
        // The output starts as garbage: every element must be written.
        let out = vec![f32::NAN; self.rows * h * hd];
        ([q_buf(q), kbuf, vbuf, Buf::F32(out)], want.data)
    }

    fn ints(&self) -> [i64; 3] {
        [self.pos as i64, self.capacity as i64, self.rows as i64]
    }

    fn check(&self) {
        let (bufs, want) = self.case(60);
        let grid = self.heads * self.rows;
        check_with(
            self.kind(),
            &bufs,
            &self.ints(),
            grid,
            &[(3, want)],
            |g, w, l| assert_within_scale(g, w, ATTENTION_ATOL, l),
        );
    }
}

/// Outputs are weighted means of values whose weights are f32 exponentials of f32 scores,
/// against the reference's f64: the error is set by the values' scale, not by each output
/// (one that cancels to ~0 is as wrong as any other). Plain f32 attention (numpy, scores,
/// `exp` and sums in f32) is off by up to 5e-7 of the scale on these shapes; this allows 4×.
const ATTENTION_ATOL: f32 = 2e-6;

fn prompt(heads: usize, kv_heads: usize, head_dim: usize, pos: usize, rows: usize) -> Prompt {
    Prompt {
        heads,
        kv_heads,
        head_dim,
        capacity: pos + rows + 3,
        pos,
        rows,
        kv: Elem::F32,
        products: Elem::F32,
    }
}

/// Query blocks are 16 rows (four to a grid index on the host; on the GPU a warp per
/// query), key groups 6 keys (4 per step of the GPU's warp loop) and key tiles 60 keys
/// (40): lengths on both sides of each boundary, from position 0 and continuing a sequence.
#[test]
fn prompt_attention_equals_the_reference_across_block_and_tile_boundaries() {
    for rows in [
        1, 2, 5, 6, 7, 15, 16, 17, 39, 41, 59, 60, 61, 63, 64, 65, 121, 128, 130, 200,
    ] {
        for pos in [0, 5, 64] {
            prompt(2, 2, 24, pos, rows).check();
        }
    }
}

/// Head dims that the four-column passes do not divide, and grouped-query heads.
#[test]
fn prompt_attention_takes_any_head_dim_and_grouped_query_heads() {
    prompt(3, 3, 22, 7, 40).check();
    prompt(4, 2, 64, 0, 33).check();
    prompt(8, 1, 18, 3, 19).check();
    prompt(6, 3, 160, 20, 50).check();
}

/// The cache may be exactly full: the last query's keys end at the last row of the cache.
#[test]
fn prompt_attention_reads_nothing_past_a_full_cache() {
    let mut p = prompt(2, 1, 16, 9, 23);
    p.capacity = p.pos + p.rows;
    p.check();
}

/// 8-lane `exp` goes to libmvec's AVX2 `_ZGVdN8v_expf` where the target has AVX2, and stays
/// a `math` op (scalar `expf` per lane) for a generic x86-64 target; both compute attention.
#[test]
fn transcendentals_call_libmvec_only_for_avx2_targets() {
    let p = prompt(2, 2, 24, 4, 21);
    let (bufs, want) = p.case(7);
    let kernel = Kernel {
        symbol: "k".into(),
        kind: p.kind(),
    };
    let generic = HostTarget {
        cpu: "x86-64".into(),
        features: String::new(),
    };
    let avx2 = HostTarget {
        cpu: "x86-64-v3".into(),
        features: "+avx,+avx2,+fma".into(),
    };
    let runs_here = std::arch::is_x86_feature_detected!("avx2");
    for (target, libmvec) in [(&generic, false), (&avx2, true)] {
        let dumps = tempfile::tempdir().expect("tempdir");
        let lib = Lib::build_for(std::slice::from_ref(&kernel), target, Some(dumps.path()));
        let ll = std::fs::read_to_string(dumps.path().join("k.ll")).expect("k.ll");
        assert_eq!(ll.contains("@_ZGVdN8v_expf("), libmvec, "{target:?}");
        assert_eq!(target.has_avx2(), libmvec);
        if libmvec && !runs_here {
            continue;
        }
        let mut bufs = bufs.clone();
        lib.call("k", &mut bufs, &p.ints(), 0, p.heads * p.rows);
        assert_within_scale(
            bufs[3].f32(),
            &want,
            ATTENTION_ATOL,
            &format!("attention for {target:?}"),
        );
    }
}

/// An f32 buffer of queries.
fn q_buf(q: Vec<f32>) -> Buf {
    Buf::F32(q)
}

/// bf16 caches: the kernels widen what they read; every result equals attention over the
/// rounded values.
#[test]
fn bf16_caches_are_read_as_their_values() {
    decode_stored(4, 2, 24, 32, 19, Elem::Bf16, 2);
    decode_stored(2, 2, 20, 40, 39, Elem::Bf16, 1);
    for (rows, pos) in [(1, 0), (17, 5), (70, 0), (65, 64)] {
        let mut p = prompt(4, 2, 24, pos, rows);
        p.kv = Elem::Bf16;
        p.check();
    }
}

/// A host target with AVX-512 BF16, whatever this machine is: code for it compiles anywhere.
fn bf16_target() -> HostTarget {
    HostTarget {
        cpu: "x86-64-v4".into(),
        features: "+avx,+avx2,+fma,+f16c,+avx512f,+avx512bw,+avx512cd,+avx512dq,+avx512vl,\
                   +avx512bf16"
            .into(),
    }
}

/// bf16 products (`vdpbf16ps`): q and the softmax weights are rounded to bf16, the caches are
/// bf16 already. Against attention over the rounded queries, what is left is the rounding of
/// each weight (2⁻⁹ of it, relative), so every output is within 2⁻⁸ of the values' largest
/// magnitude — across the query blocks, key groups and tiles of the f32 test, head dims that
/// are not whole vectors, and grouped-query heads. The code must call `vdpbf16ps`; on a CPU
/// without AVX-512 BF16 it is only compiled.
#[test]
fn bf16_products_equal_attention_over_rounded_queries_to_the_weights_rounding() {
    let runs_here = std::arch::is_x86_feature_detected!("avx512bf16");
    let mut shapes: Vec<(usize, usize, usize, usize, usize)> = Vec::new();
    for rows in [1, 2, 5, 6, 7, 16, 17, 59, 60, 61, 64, 65, 121, 130] {
        for pos in [0, 5, 64] {
            shapes.push((2, 2, 24, pos, rows));
        }
    }
    shapes.extend([
        (3, 3, 22, 7, 40),
        (4, 2, 64, 0, 33),
        (8, 1, 18, 3, 19),
        (2, 1, 128, 50, 70),
    ]);
    for (heads, kv_heads, head_dim, pos, rows) in shapes {
        let mut p = prompt(heads, kv_heads, head_dim, pos, rows);
        p.kv = Elem::Bf16;
        p.products = Elem::Bf16;
        let (bufs, _) = p.case(60);
        let Buf::F32(q) = &bufs[0] else {
            unreachable!("queries are f32")
        };
        let (_, rounded) = to_bf16(q);
        let values = bufs[2].values();
        let want = k::attention(
            &Tensor::new(vec![rows, heads * head_dim], rounded),
            &Tensor::new(vec![kv_heads, p.capacity, head_dim], bufs[1].values()),
            &Tensor::new(vec![kv_heads, p.capacity, head_dim], values.clone()),
            heads,
            (head_dim as f64 / 2.0).powf(-0.5),
            pos,
        );
        let kernel = Kernel {
            symbol: "k".into(),
            kind: p.kind(),
        };
        let dumps = tempfile::tempdir().expect("tempdir");
        let lib = Lib::build_for(
            std::slice::from_ref(&kernel),
            &bf16_target(),
            Some(dumps.path()),
        );
        let ll = std::fs::read_to_string(dumps.path().join("k.ll")).expect("k.ll");
        assert!(
            ll.contains("llvm.x86.avx512bf16.dpbf16ps.256"),
            "no vdpbf16ps"
        );
        if !runs_here {
            continue;
        }
        let bound = values.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 256.0;
        let label = format!("bf16 products {heads}/{kv_heads}×{head_dim}, {rows} rows from {pos}");
        for cut in [0, rows * heads / 3] {
            let mut run = bufs.clone();
            let grid = heads * rows;
            lib.call("k", &mut run, &p.ints(), cut, grid);
            lib.call("k", &mut run, &p.ints(), 0, cut);
            for (i, (g, w)) in run[3].f32().iter().zip(&want.data).enumerate() {
                assert!(
                    (g - w).abs() <= bound,
                    "{label}: element {i}: {g} against {w}"
                );
            }
        }
    }
}

/// bf16 products are code for AVX-512 BF16 only: host code for another CPU, or the GPU
/// schedule, is refused with the kernel's name, not compiled into an instruction the CPU
/// lacks.
#[test]
fn bf16_products_are_refused_for_a_cpu_without_avx512_bf16() {
    let mut p = prompt(2, 2, 24, 0, 9);
    p.kv = Elem::Bf16;
    p.products = Elem::Bf16;
    let kernel = Kernel {
        symbol: "k".into(),
        kind: p.kind(),
    };
    let avx2 = HostTarget {
        cpu: "x86-64-v3".into(),
        features: "+avx,+avx2,+fma".into(),
    };
    let Err(error) = zambac_codegen::compile_host(std::slice::from_ref(&kernel), &avx2, None, None)
    else {
        panic!("bf16 products compiled for an AVX2 target");
    };
    assert!(error.to_string().contains("AVX-512 BF16"), "{error}");
    let Err(error) = zambac_codegen::compile_host_scheduled(
        std::slice::from_ref(&kernel),
        &bf16_target(),
        zambac_codegen::kernels::Target::HostWithGpuSchedule,
        None,
        None,
    ) else {
        panic!("bf16 products compiled with the GPU schedule");
    };
    assert!(error.to_string().contains("AVX-512 BF16"), "{error}");
}
