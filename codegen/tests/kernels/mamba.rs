//! The Mamba mixers' convolutions and scans against the reference primitives.

use super::harness::{
    Buf, Lib, assert_close, assert_within_scale, check, check_with, random, to_bf16,
};
use zambac_engine::{Elem, Kernel, KernelKind};
use zambac_reference::kernels as k;
use zambac_runtime::Tensor;

/// The scans carry an f32 state through every token where the reference carries f64, so
/// rounding accumulates over the sequence: elements far below the tensor's scale differ by up
/// to ~2·10⁻⁵ of their value.
const SCAN_RTOL: f32 = 1e-4;

/// How far a scan over several tokens with a bf16 state may drift from the reference, in
/// units of the tensor's scale: the state is rounded (2⁻⁹ relative at most) wherever a
/// kernel stores it — once per call in the host schedule (and on the GPU), but every token
/// in the GPU schedule run on the host, whose lanes are a loop through the buffer — and the
/// roundings accumulate over the tokens.
const BF16_DRIFT: f32 = 2e-2;

/// The state buffer a scan starts from, stored as `ssm`, and the values it holds.
fn stored_state(s0: Vec<f32>, ssm: Elem) -> (Buf, Vec<f32>) {
    match ssm {
        Elem::Bf16 => {
            let (bits, values) = to_bf16(&s0);
            (Buf::Bf16(bits), values)
        }
        _ => (Buf::F32(s0.clone()), s0),
    }
}

/// Checks a scan's output `y` (view `y_view`) and final state (view `state_view`) against
/// the reference's. An f32 state within [`SCAN_RTOL`]. A bf16 state after one token: `y`
/// (formed before the state is stored) within [`SCAN_RTOL`], and every state value the
/// reference's rounded to nearest — within half a bf16 unit in the last place of it (a
/// truncation or a wrong element would not be). After several tokens, both within
/// [`BF16_DRIFT`] of the scale.
fn check_scan(
    kind: KernelKind,
    bufs: &[Buf],
    (rows, grid): (usize, usize),
    (y_view, y): (usize, Vec<f32>),
    (state_view, state): (usize, Vec<f32>),
    ssm: Elem,
) {
    let ints = [rows as i64];
    if ssm == Elem::F32 {
        let expected = [(y_view, y), (state_view, state)];
        check(kind, bufs, &ints, grid, &expected, SCAN_RTOL);
        return;
    }
    if rows > 1 {
        let expected = [(y_view, y), (state_view, state)];
        check_with(kind, bufs, &ints, grid, &expected, |got, want, label| {
            assert_within_scale(got, want, BF16_DRIFT, label)
        });
        return;
    }
    check_with(
        kind.clone(),
        bufs,
        &ints,
        grid,
        &[(y_view, y)],
        |got, want, label| assert_close(got, want, SCAN_RTOL, label),
    );
    check_with(
        kind,
        bufs,
        &ints,
        grid,
        &[(state_view, state)],
        |got, want, label| {
            let scale = want.iter().fold(0.0f32, |m, w| m.max(w.abs()));
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                // Half a bf16 ulp of `w`: 2^(e − 8) for w in [2^e, 2^(e+1)).
                let half_ulp = f32::from_bits(w.to_bits() & 0x7f80_0000) / 256.0;
                let bound = half_ulp * 1.001 + 1e-6 * scale;
                assert!(
                    (g - w).abs() <= bound,
                    "{label}: element {i}: got {g}, want {w} rounded to bf16 (|Δ| {} > {bound})",
                    (g - w).abs()
                );
            }
        },
    );
}

/// Depthwise causal conv + SiLU over `x [rows, ch]` continuing from `state [ch, K−1]` (or
/// zeros): the outputs and the new state, as the kernel contract defines them.
fn conv(
    x: &[f32],
    rows: usize,
    ch: usize,
    w: &[f32],
    bias: Option<&[f32]>,
    state: Option<&[f32]>,
    kw: usize,
) -> (Vec<f32>, Vec<f32>) {
    let hist = kw - 1;
    let mut out = vec![0.0; rows * ch];
    let mut next = vec![0.0; ch * hist];
    for c in 0..ch {
        let mut window: Vec<f32> = (0..hist)
            .map(|j| state.map_or(0.0, |s| s[c * hist + j]))
            .collect();
        window.extend((0..rows).map(|t| x[t * ch + c]));
        for t in 0..rows {
            let mut acc = bias.map_or(0.0, |b| b[c] as f64);
            for j in 0..kw {
                acc += w[c * kw + j] as f64 * window[t + j] as f64;
            }
            out[t * ch + c] = k::silu(acc as f32);
        }
        next[c * hist..(c + 1) * hist].copy_from_slice(&window[rows..]);
    }
    (out, next)
}

fn mamba2_conv(rows: usize, step: bool, kw: usize, cd: usize) {
    let di = 16;
    let width = di + cd + 7;
    let zx = random(rows * width, 60, -2.0, 2.0);
    let w = random(cd * kw, 61, -1.0, 1.0);
    let b = random(cd, 62, -0.5, 0.5);
    let state = random(cd * (kw - 1), 63, -2.0, 2.0);
    let x: Vec<f32> = (0..rows * cd)
        .map(|i| zx[i / cd * width + di + i % cd])
        .collect();
    let (out, next) = conv(&x, rows, cd, &w, Some(&b), step.then_some(&state[..]), kw);
    let bufs = [
        Buf::F32(zx),
        Buf::F32(w),
        Buf::F32(b),
        Buf::F32(state),
        Buf::F32(vec![0.0; rows * cd]),
    ];
    let kind = KernelKind::Mamba2Conv {
        width,
        di,
        cd,
        k: kw,
        step,
    };
    check(
        kind,
        &bufs,
        &[rows as i64],
        cd,
        &[(4, out), (3, next)],
        1e-5,
    );
}

#[test]
fn mamba2_conv_prefill_from_zeros_and_step_from_state() {
    mamba2_conv(7, false, 4, 33);
    mamba2_conv(2, false, 4, 33);
    mamba2_conv(1, true, 4, 33);
    mamba2_conv(3, true, 4, 33);
    mamba2_conv(5, false, 2, 33);
    mamba2_conv(4, true, 1, 33);
    // A call of no rows leaves the state as it was.
    mamba2_conv(0, true, 4, 33);
    // More channels than the host takes per iteration: several iterations per thread, the
    // last one ragged.
    mamba2_conv(9, true, 4, 1100);
    mamba2_conv(2, true, 4, 1100);
}

/// A conv's channels are computed in vectors of 8 and a range's leftover channels one at a
/// time, and which channels are left over depends on how a launch splits the grid among
/// threads. Every channel must come out with the same bits either way (a sequence decoded
/// in a batch runs each launch whole on one thread, decoded alone split across them).
#[test]
fn conv_channels_have_the_same_bits_however_the_grid_is_split() {
    let (rows, kw, di, cd) = (3, 4, 16, 37);
    let width = di + cd + 7;
    let kinds = [
        KernelKind::Mamba2Conv {
            width,
            di,
            cd,
            k: kw,
            step: true,
        },
        KernelKind::Mamba1Conv {
            di: cd,
            k: kw,
            bias: true,
            step: true,
        },
    ];
    for kind in kinds {
        let mamba2 = matches!(kind, KernelKind::Mamba2Conv { .. });
        // Inputs large enough that SiLU's exp is far from exact in every channel.
        let input = random(rows * width.max(2 * cd), 70, -6.0, 6.0);
        let bufs = vec![
            Buf::F32(input),
            Buf::F32(random(cd * kw, 71, -1.0, 1.0)),
            Buf::F32(random(cd, 72, -0.5, 0.5)),
            Buf::F32(random(cd * (kw - 1), 73, -3.0, 3.0)),
            Buf::F32(vec![0.0; rows * cd]),
        ];
        let kernel = zambac_engine::Kernel {
            symbol: "k".into(),
            kind: kind.clone(),
        };
        let lib = Lib::build(std::slice::from_ref(&kernel));
        let run = |cuts: &[usize]| {
            let mut b = bufs.clone();
            let mut from = 0;
            for &to in cuts.iter().chain(std::iter::once(&cd)) {
                lib.call("k", &mut b, &[rows as i64], from, to);
                from = to;
            }
            b
        };
        let whole = run(&[]);
        for cuts in [&[1][..], &[5], &[18], &[3, 11, 30], &[7, 8, 9, 36]] {
            let split = run(cuts);
            for view in [3, 4] {
                let (w, s) = (whole[view].f32(), split[view].f32());
                for (i, (a, b)) in w.iter().zip(s).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{} view {view} element {i}, grid cut at {cuts:?}: {a} whole, {b} split",
                        if mamba2 { "Mamba2Conv" } else { "Mamba1Conv" }
                    );
                }
            }
        }
    }
}

fn mamba1_conv(rows: usize, step: bool, bias: bool, kw: usize) {
    let di = 19;
    let xz = random(rows * 2 * di, 64, -2.0, 2.0);
    let w = random(di * kw, 65, -1.0, 1.0);
    let b = random(di, 66, -0.5, 0.5);
    let state = random(di * (kw - 1), 67, -2.0, 2.0);
    let x: Vec<f32> = (0..rows * di)
        .map(|i| xz[i / di * 2 * di + 2 * (i % di)])
        .collect();
    let (out, next) = conv(
        &x,
        rows,
        di,
        &w,
        bias.then_some(&b[..]),
        step.then_some(&state[..]),
        kw,
    );
    let mut bufs = vec![Buf::F32(xz), Buf::F32(w)];
    if bias {
        bufs.push(Buf::F32(b));
    }
    bufs.push(Buf::F32(state));
    bufs.push(Buf::F32(vec![0.0; rows * di]));
    let n = bufs.len();
    let kind = KernelKind::Mamba1Conv {
        di,
        k: kw,
        bias,
        step,
    };
    check(
        kind,
        &bufs,
        &[rows as i64],
        di,
        &[(n - 1, out), (n - 2, next)],
        1e-5,
    );
}

#[test]
fn mamba1_conv_reads_the_interleaved_x_columns() {
    mamba1_conv(6, false, true, 4);
    mamba1_conv(1, false, false, 4);
    mamba1_conv(1, true, true, 4);
    mamba1_conv(4, true, false, 3);
}

/// Columns `[from, from + n)` of `m [rows, width]`.
fn columns(m: &[f32], rows: usize, width: usize, from: usize, n: usize) -> Vec<f32> {
    (0..rows * n)
        .map(|i| m[i / n * width + from + i % n])
        .collect()
}

struct Ssd {
    heads: usize,
    p: usize,
    groups: usize,
    n: usize,
}

fn mamba2_scan(s: &Ssd, rows: usize, dt_min: Option<f64>, step: bool) {
    mamba2_scan_stored(s, rows, dt_min, step, Elem::F32);
}

/// A scan's inputs — views `[zx, xbc, dt_bias, A_log, D, y (zero), state]` — with the
/// reference's output `y` and final state.
struct ScanCase {
    width: usize,
    bufs: [Buf; 7],
    y: Vec<f32>,
    state: Vec<f32>,
}

fn scan_case(s: &Ssd, rows: usize, dt_min: Option<f64>, step: bool, ssm: Elem) -> ScanCase {
    let (di, cd) = (s.heads * s.p, s.heads * s.p + 2 * s.groups * s.n);
    let width = di + cd + s.heads + 3;
    let zx = random(rows * width, 70, -3.0, 1.0);
    let xbc = random(rows * cd, 71, -1.0, 1.0);
    scan_reference(s, rows, (zx, xbc), dt_min, step, ssm)
}

/// [`scan_case`] of the given in-projection rows `zx` (of width `di + cd + heads + 3`) and
/// conv output `xbc`.
fn scan_reference(
    s: &Ssd,
    rows: usize,
    (zx, xbc): (Vec<f32>, Vec<f32>),
    dt_min: Option<f64>,
    step: bool,
    ssm: Elem,
) -> ScanCase {
    let (h, p, g, n) = (s.heads, s.p, s.groups, s.n);
    let di = h * p;
    let cd = di + 2 * g * n;
    let width = di + cd + h + 3;
    let dt_bias = random(h, 72, -1.0, 0.5);
    let a_log = random(h, 73, -1.0, 1.5);
    let d = random(h, 74, 0.5, 1.5);
    let (s0_buf, s0) = stored_state(random(h * p * n, 75, -1.0, 1.0), ssm);
    let t = |data: Vec<f32>, cols: usize| Tensor::new(vec![rows, cols], data);
    let x = t(columns(&xbc, rows, cd, 0, di), di);
    let b = t(columns(&xbc, rows, cd, di, g * n), g * n);
    let c = t(columns(&xbc, rows, cd, di + g * n, g * n), g * n);
    let dt_raw = columns(&zx, rows, width, di + cd, h);
    let dt: Vec<f32> = dt_raw
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let soft = k::softplus(v + dt_bias[i % h]);
            dt_min.map_or(soft, |min| soft.max(min as f32))
        })
        .collect();
    let start = Tensor::new(vec![h, p, n], s0.clone());
    let (y, state) = k::ssd(
        &x,
        &t(dt, h),
        &Tensor::new(vec![h], a_log.clone()),
        &b,
        &c,
        step.then_some(&start),
        (h, p, g, n),
    );
    let skip = k::scale_heads(&x, &Tensor::new(vec![h], d.clone()), h);
    let y: Vec<f32> = y.data.iter().zip(&skip.data).map(|(a, b)| a + b).collect();
    let bufs = [
        Buf::F32(zx),
        Buf::F32(xbc),
        Buf::F32(dt_bias),
        Buf::F32(a_log),
        Buf::F32(d),
        Buf::F32(vec![0.0; rows * di]),
        s0_buf,
    ];
    ScanCase {
        width,
        bufs,
        y,
        state: state.data,
    }
}

fn mamba2_scan_stored(s: &Ssd, rows: usize, dt_min: Option<f64>, step: bool, ssm: Elem) {
    let case = scan_case(s, rows, dt_min, step, ssm);
    let kind = KernelKind::Mamba2Scan {
        width: case.width,
        heads: s.heads,
        head_dim: s.p,
        groups: s.groups,
        state: s.n,
        dt_min,
        step,
        ssm,
    };
    let expected = ((5, case.y), (6, case.state));
    check_scan(
        kind,
        &case.bufs,
        (rows, s.heads),
        expected.0,
        expected.1,
        ssm,
    );
}

/// A decode step's conv and scan in one kernel against the conv's reference step followed
/// by the scan's: the outputs and the SSM state as the two give them, the conv state only
/// read; and the gate norm after it shifts the conv state as the conv step would have.
fn mamba2_conv_scan(s: &Ssd, dt_min: Option<f64>, ssm: Elem) {
    let kw = 4;
    let (di, cd) = (s.heads * s.p, s.heads * s.p + 2 * s.groups * s.n);
    let width = di + cd + s.heads + 3;
    let zx = random(width, 90, -2.0, 2.0);
    let w = random(cd * kw, 91, -1.0, 1.0);
    let b = random(cd, 92, -0.5, 0.5);
    let conv_state = random(cd * (kw - 1), 93, -2.0, 2.0);
    let (xbc, shifted) = conv(&zx[di..di + cd], 1, cd, &w, Some(&b), Some(&conv_state), kw);
    let case = scan_reference(s, 1, (zx.clone(), xbc), dt_min, true, ssm);
    let [zx_buf, _, dt_bias, a_log, d, y, state] = case.bufs.clone();
    let bufs = [
        zx_buf.clone(),
        Buf::F32(w),
        Buf::F32(b),
        Buf::F32(conv_state.clone()),
        dt_bias,
        a_log,
        d,
        y,
        state,
    ];
    let kind = KernelKind::Mamba2ConvScan {
        width,
        heads: s.heads,
        head_dim: s.p,
        groups: s.groups,
        state: s.n,
        k: kw,
        dt_min,
        ssm,
    };
    check(
        kind.clone(),
        &bufs,
        &[],
        s.heads,
        &[(3, conv_state.clone())],
        0.0,
    );
    check_scan(kind, &bufs, (1, s.heads), (7, case.y), (8, case.state), ssm);
    // The gate norm of the step, with and without the shift: the same output, and the
    // shifted state the conv step leaves.
    let y = random(di, 94, -1.0, 1.0);
    let norm_w = random(di, 95, 0.5, 1.5);
    let groups = s.groups;
    let norm = |conv_shift| KernelKind::Mamba2GateNorm {
        width,
        di,
        groups,
        eps: 1e-5,
        conv_shift,
    };
    let plain = [
        Buf::F32(y.clone()),
        zx_buf.clone(),
        Buf::F32(norm_w.clone()),
        Buf::F32(vec![0.0; di]),
    ];
    let lib = Lib::build(&[Kernel {
        symbol: "n".into(),
        kind: norm(None),
    }]);
    let [want, _] = lib.run_both("n", &plain, &[], 1);
    let mut shifting = plain.to_vec();
    shifting.push(Buf::F32(conv_state));
    let shift = zambac_engine::ConvShift {
        channels: cd,
        k: kw,
    };
    let expected = [(3, want[3].values()), (4, shifted)];
    check(norm(Some(shift)), &shifting, &[], 1, &expected, 1e-6);
}

#[test]
fn a_fused_conv_and_scan_step_equals_the_conv_then_the_scan() {
    let small = Ssd {
        heads: 4,
        p: 4,
        groups: 2,
        n: 5,
    };
    mamba2_conv_scan(&small, Some(0.01), Elem::F32);
    mamba2_conv_scan(&small, None, Elem::Bf16);
    let typical = Ssd {
        heads: 2,
        p: 8,
        groups: 1,
        n: 64,
    };
    mamba2_conv_scan(&typical, None, Elem::F32);
}

/// The chunked prefill scan — pass 1 over every chunk, the pass along the chunks, pass 3 —
/// run on shared buffers and compared with the reference's sequential scan from the state
/// (every call continues one): outputs and final state, with the host schedule and the
/// GPU's, each pass whole and with its grid split in two.
fn mamba2_chunked(
    s: &Ssd,
    rows: usize,
    (chunks, min_len): (usize, usize),
    dt_min: Option<f64>,
    ssm: Elem,
) {
    let case = scan_case(s, rows, dt_min, true, ssm);
    let (h, pn) = (s.heads, s.p * s.n);
    let scan = |outputs| KernelKind::Mamba2ChunkScan {
        width: case.width,
        heads: h,
        head_dim: s.p,
        groups: s.groups,
        state: s.n,
        dt_min,
        chunks,
        min_len,
        outputs,
    };
    let kernels = [
        ("states", scan(false)),
        (
            "pass",
            KernelKind::Mamba2ChunkPass {
                heads: h,
                head_dim: s.p,
                state: s.n,
                chunks,
                min_len,
                ssm,
            },
        ),
        ("outputs", scan(true)),
    ]
    .map(|(symbol, kind)| Kernel {
        symbol: symbol.into(),
        kind,
    });
    let schedules = [
        ("host", Lib::build(&kernels)),
        ("GPU schedule", Lib::build_gpu_schedule(&kernels)),
    ];
    for (schedule, lib) in &schedules {
        for split in [false, true] {
            let mut bufs = case.bufs.clone();
            // Garbage in the workspaces: every pass must write before it reads.
            let mut states = Buf::F32(vec![f32::NAN; chunks * h * pn]);
            let mut decay = Buf::F32(vec![f32::NAN; chunks * h]);
            let ints = [rows as i64];
            let call = |symbol: &str, views: &[*mut u8], ints: &[i64], grid: usize| {
                if split {
                    let cut = grid / 2;
                    lib.call_raw(symbol, views, ints, cut, grid);
                    lib.call_raw(symbol, views, ints, 0, cut);
                } else {
                    lib.call_raw(symbol, views, ints, 0, grid);
                }
            };
            let [zx, xbc, dt_bias, a_log, d, y, state] = &mut bufs;
            let p = |b: &mut Buf| b.as_mut_ptr();
            let first = [
                p(zx),
                p(xbc),
                p(dt_bias),
                p(a_log),
                p(&mut states),
                p(&mut decay),
            ];
            call("states", &first, &ints, chunks * h);
            call("pass", &[p(&mut states), p(&mut decay), p(state)], &ints, h);
            let last = [
                p(zx),
                p(xbc),
                p(dt_bias),
                p(a_log),
                p(d),
                p(y),
                p(&mut states),
            ];
            call("outputs", &last, &ints, chunks * h);
            let label = |what: &str| {
                format!(
                    "chunked scan {what}, {rows} tokens in {chunks} chunks ({schedule}, split {split})"
                )
            };
            if ssm == Elem::F32 {
                assert_close(&y.values(), &case.y, SCAN_RTOL, &label("y"));
                assert_close(&state.values(), &case.state, SCAN_RTOL, &label("state"));
            } else {
                // The state is rounded once, when the pass stores it: the outputs are the
                // f32 scan's, the state within the drift of a rounding.
                assert_close(&y.values(), &case.y, SCAN_RTOL, &label("y"));
                assert_within_scale(&state.values(), &case.state, 4e-3, &label("state"));
            }
        }
    }
}

#[test]
fn the_chunked_scan_equals_the_sequential_one() {
    let small = Ssd {
        heads: 4,
        p: 4,
        groups: 2,
        n: 5,
    };
    // (tokens, (chunks, fewest tokens per chunk)): fewer tokens than chunks (empty
    // chunks), one token per chunk, ragged last chunks, whole vectors of tokens (the host
    // takes 8 at a time) in a chunk, and calls that the fewest tokens per chunk cut into
    // fewer chunks than there are.
    for (rows, chunking) in [
        (1, (3, 1)),
        (2, (5, 1)),
        (5, (5, 1)),
        (19, (3, 1)),
        (37, (4, 1)),
        (40, (2, 1)),
        (17, (1, 1)),
        (37, (8, 8)),
        (64, (4, 16)),
        (65, (4, 16)),
        (5, (4, 16)),
    ] {
        mamba2_chunked(&small, rows, chunking, Some(0.01), Elem::F32);
    }
    let typical = Ssd {
        heads: 4,
        p: 16,
        groups: 1,
        n: 64,
    };
    mamba2_chunked(&typical, 37, (4, 1), None, Elem::F32);
    let wide = Ssd {
        heads: 2,
        p: 3,
        groups: 1,
        n: 72,
    };
    mamba2_chunked(&wide, 29, (6, 4), Some(0.001), Elem::F32);
    mamba2_chunked(&small, 23, (4, 1), None, Elem::Bf16);
}

#[test]
fn mamba2_scan_prefill_from_zero_state_with_the_dt_clamp() {
    let small = Ssd {
        heads: 4,
        p: 4,
        groups: 2,
        n: 5,
    };
    mamba2_scan(&small, 19, Some(0.01), false);
    mamba2_scan(&small, 8, None, false);
    let wide = Ssd {
        heads: 2,
        p: 3,
        groups: 1,
        n: 72,
    };
    mamba2_scan(&wide, 11, Some(0.001), false);
    let typical = Ssd {
        heads: 4,
        p: 16,
        groups: 1,
        n: 64,
    };
    mamba2_scan(&typical, 37, None, false);
}

#[test]
fn mamba2_scan_steps_continue_from_the_state() {
    let small = Ssd {
        heads: 4,
        p: 4,
        groups: 2,
        n: 5,
    };
    mamba2_scan(&small, 1, None, true);
    mamba2_scan(&small, 3, Some(0.01), true);
    let typical = Ssd {
        heads: 2,
        p: 8,
        groups: 2,
        n: 64,
    };
    mamba2_scan(&typical, 1, None, true);
}

fn mamba1_scan(heads: usize, p: usize, n: usize, rows: usize, dt_min: Option<f64>, step: bool) {
    mamba1_scan_stored((heads, p, n), rows, dt_min, step, Elem::F32);
}

fn mamba1_scan_stored(
    (heads, p, n): (usize, usize, usize),
    rows: usize,
    dt_min: Option<f64>,
    step: bool,
    ssm: Elem,
) {
    let r = 3;
    let di = heads * p;
    let bw = r + 2 * n;
    let x = random(rows * di, 80, -1.0, 1.0);
    let dt = random(rows * di, 81, -3.0, 1.0);
    let dt_bias = random(di, 82, -1.0, 0.5);
    let a_log = random(di * n, 83, -1.0, 1.5);
    let bc = random(rows * heads * bw, 84, -1.0, 1.0);
    let d = random(di, 85, 0.5, 1.5);
    let xz = random(rows * 2 * di, 86, -3.0, 3.0);
    let (s0_buf, s0) = stored_state(random(di * n, 87, -1.0, 1.0), ssm);
    let delta: Vec<f32> = dt
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let soft = k::softplus(v + dt_bias[i % di]);
            dt_min.map_or(soft, |min| soft.max(min as f32))
        })
        .collect();
    let bcs = |from: usize| columns(&bc, rows * heads, bw, from, n);
    let t3 = |data: Vec<f32>, last: usize| Tensor::new(vec![rows, heads, last], data);
    let start = Tensor::new(vec![heads, p, n], s0.clone());
    let (y, state) = k::selective_scan(
        &t3(x.clone(), p),
        &t3(delta, p),
        &Tensor::new(vec![heads, p, n], a_log.clone()),
        &t3(bcs(r), n),
        &t3(bcs(r + n), n),
        step.then_some(&start),
    );
    let y: Vec<f32> = (0..rows * di)
        .map(|i| {
            let z = xz[i / di * 2 * di + 2 * (i % di) + 1];
            (y.data[i] + x[i] * d[i % di]) * k::silu(z)
        })
        .collect();
    let bufs = [
        Buf::F32(x),
        Buf::F32(dt),
        Buf::F32(dt_bias),
        Buf::F32(a_log),
        Buf::F32(bc),
        Buf::F32(d),
        Buf::F32(xz),
        s0_buf,
        Buf::F32(vec![0.0; rows * di]),
    ];
    let kind = KernelKind::Mamba1Scan {
        heads,
        head_dim: p,
        state: n,
        dt_rank: r,
        dt_min,
        step,
        ssm,
    };
    check_scan(kind, &bufs, (rows, di), (8, y), (7, state.data), ssm);
}

#[test]
fn mamba1_scan_prefill_and_step_with_the_gate() {
    mamba1_scan(2, 6, 16, 9, None, false);
    mamba1_scan(2, 5, 11, 4, Some(0.001), false);
    mamba1_scan(2, 6, 16, 1, None, true);
    mamba1_scan(3, 4, 16, 3, Some(0.01), true);
}

/// State rows wider than a warp: the GPU schedule's lanes take several columns each, the
/// last round only partly (40), or whole rounds (64).
#[test]
fn mamba1_scan_takes_states_wider_than_a_warp() {
    mamba1_scan(2, 3, 40, 5, None, false);
    mamba1_scan(1, 2, 64, 3, Some(0.01), true);
}

/// A bf16 SSM state (`--state-dtype bf16`): read as its values, every stored value rounded
/// to nearest even, in steps and prefills, with state rows that are whole vectors (64), end
/// in a narrower one (40) or are wider than a warp.
#[test]
fn bf16_states_are_read_as_their_values_and_stored_rounded() {
    let typical = Ssd {
        heads: 2,
        p: 8,
        groups: 2,
        n: 64,
    };
    mamba2_scan_stored(&typical, 1, None, true, Elem::Bf16);
    mamba2_scan_stored(&typical, 37, Some(0.01), false, Elem::Bf16);
    let narrow = Ssd {
        heads: 4,
        p: 4,
        groups: 1,
        n: 40,
    };
    mamba2_scan_stored(&narrow, 1, Some(0.01), true, Elem::Bf16);
    mamba2_scan_stored(&narrow, 5, None, true, Elem::Bf16);
    mamba1_scan_stored((2, 6, 16), 1, None, true, Elem::Bf16);
    mamba1_scan_stored((2, 3, 40), 9, Some(0.001), false, Elem::Bf16);
    mamba1_scan_stored((1, 2, 64), 3, None, true, Elem::Bf16);
}
