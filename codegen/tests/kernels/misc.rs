//! Embedding, elementwise binaries and KV-cache writes.

use super::harness::{Buf, Lib, check, random, to_bf16};
use zambac_engine::Elem;
use zambac_engine::Kernel;
use zambac_engine::{BinOp, KernelKind};
use zambac_reference::kernels as k;
use zambac_runtime::Tensor;

#[test]
fn embedding_copies_the_rows_of_the_tokens_in_f32_and_widened_bf16() {
    let (vocab, rows) = (11, 6);
    let tokens: Vec<i64> = vec![3, 0, 10, 3, 7, 1];
    // 1100: wide enough for a block per row in the GPU schedule.
    for hidden in [37, 64, 1100] {
        let table = random(vocab * hidden, 12, -1.0, 1.0);
        let (bits, rounded) = to_bf16(&table);
        let gather = |table: &[f32]| -> Vec<f32> {
            tokens
                .iter()
                .flat_map(|&t| table[t as usize * hidden..(t as usize + 1) * hidden].to_vec())
                .collect()
        };
        let out = Buf::F32(vec![0.0; rows * hidden]);
        let f32_bufs = [
            Buf::I64(tokens.clone()),
            Buf::F32(table.clone()),
            out.clone(),
        ];
        let kind = KernelKind::Embedding {
            hidden,
            elem: Elem::F32,
        };
        check(kind, &f32_bufs, &[], rows, &[(2, gather(&table))], 0.0);
        let bf16_bufs = [Buf::I64(tokens.clone()), Buf::Bf16(bits), out];
        let kind = KernelKind::Embedding {
            hidden,
            elem: Elem::Bf16,
        };
        check(kind, &bf16_bufs, &[], rows, &[(2, gather(&rounded))], 0.0);
    }
}

#[test]
fn row_scale_multiplies_each_row_by_its_factor() {
    for n in [45, 777] {
        row_scale(n, 5);
    }
}

fn row_scale(n: usize, rows: usize) {
    let y = random(rows * n, 15, -2.0, 2.0);
    let r = random(rows, 16, 0.1, 3.0);
    let want: Vec<f32> = (0..rows * n).map(|i| r[i / n] * y[i]).collect();
    let bufs = [Buf::F32(y), Buf::F32(r), Buf::F32(vec![0.0; rows * n])];
    check(
        KernelKind::RowScale { n },
        &bufs,
        &[],
        rows,
        &[(2, want)],
        0.0,
    );
}

#[test]
fn binary_adds_and_multiplies_per_row_or_broadcast() {
    for n in [45, 1031] {
        binary(n, 5);
    }
}

fn binary(n: usize, rows: usize) {
    let a = random(rows * n, 13, -2.0, 2.0);
    for (op, b_rows) in [
        (BinOp::Add, true),
        (BinOp::Mul, true),
        (BinOp::Add, false),
        (BinOp::Mul, false),
    ] {
        let b = random(if b_rows { rows * n } else { n }, 14, -2.0, 2.0);
        let want: Vec<f32> = (0..rows * n)
            .map(|i| {
                let y = b[if b_rows { i } else { i % n }];
                match op {
                    BinOp::Add => a[i] + y,
                    BinOp::Mul => a[i] * y,
                }
            })
            .collect();
        let bufs = [
            Buf::F32(a.clone()),
            Buf::F32(b),
            Buf::F32(vec![0.0; rows * n]),
        ];
        check(
            KernelKind::Binary { op, n, b_rows },
            &bufs,
            &[],
            rows,
            &[(2, want)],
            0.0,
        );
    }
}

#[test]
fn kv_write_puts_each_row_at_its_position_of_every_head() {
    let (heads, hd, capacity, rows, pos0) = (3, 20, 16, 5, 9);
    let keys = random(rows * heads * hd, 15, -1.0, 1.0);
    let cache = random(heads * capacity * hd, 16, -1.0, 1.0);
    let mut want = Tensor::new(vec![heads, capacity, hd], cache.clone());
    k::kv_write(
        &mut want,
        &Tensor::new(vec![rows, heads * hd], keys.clone()),
        pos0,
    );
    let bufs = [Buf::F32(keys), Buf::F32(cache)];
    let kind = KernelKind::KvWrite {
        heads,
        head_dim: hd,
        cache: Elem::F32,
    };
    let ints = [pos0 as i64, capacity as i64];
    check(kind, &bufs, &ints, rows, &[(1, want.data)], 0.0);
}

/// A bf16 cache gets each key rounded to nearest even, every other row left as it was.
#[test]
fn kv_write_rounds_to_bf16_when_the_cache_is_bf16() {
    let (heads, hd, capacity, rows, pos0) = (3, 20, 16, 5, 9);
    let keys = random(rows * heads * hd, 15, -3.0, 3.0);
    let (cache, _) = to_bf16(&random(heads * capacity * hd, 16, -1.0, 1.0));
    let (key_bits, _) = to_bf16(&keys);
    let mut want = cache.clone();
    for r in 0..rows {
        for h in 0..heads {
            for d in 0..hd {
                want[(h * capacity + pos0 + r) * hd + d] = key_bits[r * heads * hd + h * hd + d];
            }
        }
    }
    let kernel = Kernel {
        symbol: "k".into(),
        kind: KernelKind::KvWrite {
            heads,
            head_dim: hd,
            cache: Elem::Bf16,
        },
    };
    let lib = Lib::build(&[kernel]);
    let mut bufs = [Buf::F32(keys), Buf::Bf16(cache)];
    lib.call("k", &mut bufs, &[pos0 as i64, capacity as i64], 0, rows);
    assert_eq!(bufs[1], Buf::Bf16(want));
}
