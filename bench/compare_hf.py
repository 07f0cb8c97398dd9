"""Runs Hugging Face transformers and zambac side by side on the CPU and prints ratios.

For each config: HF eager float32 with 2 threads (prefill of 512 tokens computing the last
position's logits; decode tokens/s after a 128-token prompt, from generate() timings),
then `zambac build` (random f32 and bf16 weights) and `zambac bench` for the same shapes.
The machine's read bandwidth is measured here too, with a large f32 matrix-vector product
(2 threads) and with a plain sum over the same matrix, to express decode as a fraction of
the memory-bandwidth roofline: weight bytes read per token (the engine's
`decode_weight_elems_read` from `zambac build --json`: a shared block's weights stream once
per invocation, except the embedding half of its input products, which the compiler hoists
out of the invocations) divided by the bandwidth.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "..", "shared", "configs")
# Timed prefills per `zambac bench` (its `prefill_runs_s`).
ZAMBAC_PREFILL_RUNS = 3


def best_time(fn, runs=3):
    """The shortest of `runs` timed calls after a warm-up: on a shared machine whose memory
    bandwidth varies from minute to minute, the best run is the most repeatable measure of
    what the code can do. Both sides are measured this way."""
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bandwidths_gbs():
    """Read bandwidth over 1 GiB of f32, 2 threads: (matrix-vector product, plain sum).

    The GEMV figure is the issue's definition of the machine's bandwidth; the sum reads
    the same bytes with less work per byte and shows what the memory system delivers."""
    a = torch.randn(16384, 16384, dtype=torch.float32)
    x = torch.randn(16384, dtype=torch.float32)
    gemv = best_time(lambda: torch.mv(a, x), runs=5)
    total = best_time(lambda: a.sum(), runs=5)
    return a.numel() * 4 / gemv / 1e9, a.numel() * 4 / total / 1e9


def hf_bench(name, prompt_len, decode_prompt, new_tokens, prefill_runs):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(os.path.join(CONFIGS, name))
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, cfg.vocab_size, (1, prompt_len), generator=g)
    with torch.no_grad():
        prefill = best_time(lambda: model(ids, logits_to_keep=1), runs=prefill_runs)
        dp = ids[:, :decode_prompt]

        def gen(n):
            return model.generate(dp, max_new_tokens=n, min_new_tokens=n, do_sample=False)

        one = best_time(lambda: gen(1), runs=3)
        many = best_time(lambda: gen(new_tokens + 1), runs=3)
    per_token = (many - one) / new_tokens
    rss = peak_rss()
    del model
    return {"prefill_s": prefill, "decode_s_per_token": per_token, "decode_tok_per_s": 1 / per_token, "peak_rss_bytes": rss}


def hf_bench_isolated(name, prompt_len, decode_prompt, new_tokens, prefill_runs):
    """hf_bench in a process of its own, so its peak RSS is HF's alone."""
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--hf-only", name, "--prompt-len", str(prompt_len),
         "--decode-prompt", str(decode_prompt), "--new-tokens", str(new_tokens),
         "--hf-prefill-runs", str(prefill_runs)],
        check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def peak_rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def zambac(binary, args):
    out = subprocess.run([binary] + args, check=True, capture_output=True, text=True)
    return out.stdout


def zambac_build(binary, name, dtype, workdir):
    engine = os.path.join(workdir, f"{name}-{dtype}.engine")
    cfg = os.path.join(CONFIGS, name, "config.json")
    summary = json.loads(zambac(binary, ["build", cfg, "--dtype", dtype, "--weights", "random:0", "-o", engine, "--json"]))
    explore = json.loads(zambac(binary, ["explore", cfg, "--json"]))
    return {
        "engine": engine,
        "weight_bytes": summary["weight_bytes"],
        # What one decode step of this engine streams: every weight, the shared blocks once
        # per invocation (less the hoisted embedding halves).
        "decode_weight_bytes_read": summary["decode_weight_elems_read"] * (4 if dtype == "f32" else 2),
        # What a straightforward implementation streams (no hoisting): HF's roofline.
        "model_decode_weight_bytes_read": explore["decode_weight_elems_read"] * (4 if dtype == "f32" else 2),
        "prefill_s": float("inf"),
        "decode_s_per_token": float("inf"),
        "peak_rss_bytes": 0,
    }


def zambac_round(binary, r, prompt_len, decode_prompt, new_tokens, prefill):
    """One more `zambac bench` of decode (and of prefill when `prefill`); keeps the best of
    the rounds."""
    runs = []
    if prefill:
        pre = json.loads(zambac(binary, ["bench", r["engine"], "--prompt-len", str(prompt_len), "--new-tokens", "2", "--json"]))
        # The best single prefill, as for HF (the report's `prefill_s` is a median).
        r["prefill_s"] = min([r["prefill_s"]] + pre["prefill_runs_s"])
        runs.append(pre)
    dec = json.loads(zambac(binary, ["bench", r["engine"], "--prompt-len", str(decode_prompt), "--new-tokens", str(new_tokens), "--json"]))
    runs.append(dec)
    r["decode_s_per_token"] = min(r["decode_s_per_token"], 1 / dec["decode_tok_per_s"])
    r["decode_tok_per_s"] = 1 / r["decode_s_per_token"]
    r["peak_rss_bytes"] = max([r["peak_rss_bytes"]] + [x["peak_rss_bytes"] for x in runs])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--zambac", help="the zambac binary")
    ap.add_argument("--hf-only", metavar="CONFIG", help="(internal) print HF's results for one config as JSON")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--decode-prompt", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2, help="zambac prefill bench rounds per engine (f32 and bf16 alternate); the best is kept")
    ap.add_argument("--decode-rounds", type=int, default=5, help="zambac decode bench rounds per engine, alternating likewise")
    ap.add_argument("--hf-prefill-runs", type=int, default=None, help="HF prefill runs (default: as many as zambac's, 3 per `zambac bench` round)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("configs", nargs="*", default=["zamba2-100m", "zamba2-1.2b"])
    a = ap.parse_args()
    torch.set_num_threads(2)
    # Both sides report the best of the same number of single prefills.
    hf_prefill_runs = a.hf_prefill_runs or ZAMBAC_PREFILL_RUNS * a.rounds
    if a.hf_only:
        print(json.dumps(hf_bench(a.hf_only, a.prompt_len, a.decode_prompt, a.new_tokens, hf_prefill_runs)))
        return 0
    if not a.zambac:
        ap.error("--zambac is required")
    machine = f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}"
    probes = [bandwidths_gbs()]
    print(f"machine: {machine}")
    results = {"machine": machine, "configs": {}}
    with tempfile.TemporaryDirectory() as work:
        for name in a.configs:
            hf = hf_bench_isolated(name, a.prompt_len, a.decode_prompt, a.new_tokens, hf_prefill_runs)
            f32 = zambac_build(a.zambac, name, "f32", work)
            bf16 = zambac_build(a.zambac, name, "bf16", work)
            for i in range(max(a.rounds, a.decode_rounds)):
                for r in (f32, bf16):
                    zambac_round(a.zambac, r, a.prompt_len, a.decode_prompt, a.new_tokens, prefill=i < a.rounds)
                if i < a.rounds:
                    probes.append(bandwidths_gbs())
            # The machine's bandwidth is the best any probe saw so far (it varies with the
            # neighbours' load); the roofline is then the most demanding one.
            bw = max(p[0] for p in probes)
            bw_sum = max(p[1] for p in probes)
            print(f"\nread bandwidth, 2 threads, best of {len(probes)} probes: f32 GEMV {bw:.1f} GB/s, sum {bw_sum:.1f} GB/s")
            roof = f32["decode_weight_bytes_read"] / (bw * 1e9)
            roof_sum = f32["decode_weight_bytes_read"] / (bw_sum * 1e9)
            for r in (f32, bf16):
                r.pop("engine")
            row = {
                "bandwidth_gbs": bw,
                "sum_bandwidth_gbs": bw_sum,
                "achieved_decode_gbs_f32": f32["decode_weight_bytes_read"] / f32["decode_s_per_token"] / 1e9,
                "achieved_decode_gbs_bf16": bf16["decode_weight_bytes_read"] / bf16["decode_s_per_token"] / 1e9,
                "hf": hf,
                "zambac_f32": f32,
                "zambac_bf16": bf16,
                "prefill_speedup_f32": hf["prefill_s"] / f32["prefill_s"],
                "prefill_speedup_bf16": hf["prefill_s"] / bf16["prefill_s"],
                "decode_speedup_f32": f32["decode_tok_per_s"] / hf["decode_tok_per_s"],
                "decode_roofline_fraction_f32": roof / f32["decode_s_per_token"],
                "decode_sum_roofline_fraction_f32": roof_sum / f32["decode_s_per_token"],
                "hf_decode_roofline_fraction": f32["model_decode_weight_bytes_read"] / (bw * 1e9) / hf["decode_s_per_token"],
                "bf16_decode_vs_f32": bf16["decode_tok_per_s"] / f32["decode_tok_per_s"],
                "bf16_prefill_vs_f32": f32["prefill_s"] / bf16["prefill_s"],
            }
            results["configs"][name] = row
            print(f"\n{name} (f32 weights {f32['weight_bytes'] / 1e9:.2f} GB, read per decoded token {f32['decode_weight_bytes_read'] / 1e9:.2f} GB; roofline {roof * 1e3:.1f} ms/token at the GEMV bandwidth, {roof_sum * 1e3:.1f} at the sum's)")
            print(f"  prefill {a.prompt_len}: HF {hf['prefill_s']:.3f} s | zambac f32 {f32['prefill_s']:.3f} s ({row['prefill_speedup_f32']:.2f}x) | bf16 {bf16['prefill_s']:.3f} s ({row['prefill_speedup_bf16']:.2f}x)")
            print(f"  decode:      HF {hf['decode_s_per_token'] * 1e3:.1f} ms/tok ({row['hf_decode_roofline_fraction']:.0%} of roofline) | zambac f32 {f32['decode_s_per_token'] * 1e3:.1f} ms/tok ({row['decode_roofline_fraction_f32']:.0%} of roofline, {row['decode_sum_roofline_fraction_f32']:.0%} at the sum's bandwidth, {row['decode_speedup_f32']:.2f}x HF) | bf16 {bf16['decode_s_per_token'] * 1e3:.1f} ms/tok ({row['bf16_decode_vs_f32']:.2f}x f32)")
            print(f"  weights streamed during decode: f32 {row['achieved_decode_gbs_f32']:.1f} GB/s, bf16 {row['achieved_decode_gbs_bf16']:.1f} GB/s")
            print(f"  peak RSS:    HF {hf['peak_rss_bytes'] / 2**30:.2f} GiB | zambac f32 {f32['peak_rss_bytes'] / 2**30:.2f} GiB | bf16 {bf16['peak_rss_bytes'] / 2**30:.2f} GiB")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
