//! One-token attention over a KV cache, with and without grouped-query heads.

use super::harness::{Buf, check, random};
use zambac_engine::KernelKind;
use zambac_reference::kernels as k;
use zambac_runtime::Tensor;

fn decode(heads: usize, kv_heads: usize, head_dim: usize, capacity: usize, pos: usize) {
    let scale = (head_dim as f64 / 2.0).powf(-0.5);
    let q = random(heads * head_dim, 50, -1.0, 1.0);
    let kc = random(kv_heads * capacity * head_dim, 51, -1.0, 1.0);
    let vc = random(kv_heads * capacity * head_dim, 52, -1.0, 1.0);
    let want = k::attention(
        &Tensor::new(vec![1, heads * head_dim], q.clone()),
        &Tensor::new(vec![kv_heads, capacity, head_dim], kc.clone()),
        &Tensor::new(vec![kv_heads, capacity, head_dim], vc.clone()),
        heads,
        scale,
        pos,
    );
    let bufs = [
        Buf::F32(q),
        Buf::F32(kc),
        Buf::F32(vc),
        Buf::F32(vec![0.0; heads * head_dim]),
    ];
    let kind = KernelKind::AttentionDecode {
        heads,
        kv_heads,
        head_dim,
        scale,
    };
    let ints = [pos as i64, capacity as i64];
    check(kind, &bufs, &ints, heads, &[(3, want.data)], 2e-5);
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
