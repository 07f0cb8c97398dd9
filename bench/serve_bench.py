"""Drives `zambac-run serve` with N concurrent clients through the `openai` package and
reports throughput, time to first token and inter-token latency percentiles.

Each client sends `--requests` streamed completions one after the other, each with a
random prompt of `--prompt-len` token ids and `--max-tokens` tokens to generate (greedy,
`ignore_eos`, so every request generates exactly that many). Run by bench/serve.sh, which
also builds the engines and compares `zambac-run bench --batch 1` with `--batch 16`.
"""

import argparse
import asyncio
import json
import random
import re
import statistics
import subprocess
import sys
import time
import urllib.request

from openai import AsyncOpenAI


def percentiles(xs):
    if not xs:
        return {"p50": None, "p90": None, "p99": None, "mean": None}
    s = sorted(xs)

    def q(p):
        return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]

    return {"p50": q(50), "p90": q(90), "p99": q(99), "mean": statistics.fmean(s)}


async def one_request(client, model, prompt, max_tokens):
    t0 = time.perf_counter()
    stamps = []
    tokens = 0
    stream = await client.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    async for chunk in stream:
        if not chunk.choices:
            continue
        ids = (chunk.choices[0].model_extra or {}).get("token_ids") or []
        if ids:
            stamps.append(time.perf_counter())
            tokens += len(ids)
    ttft = stamps[0] - t0 if stamps else None
    itl = [b - a for a, b in zip(stamps, stamps[1:])]
    return ttft, itl, tokens


async def client_loop(client, model, rng, args, out):
    for _ in range(args.requests):
        prompt = [rng.randrange(args.vocab) for _ in range(args.prompt_len)]
        out.append(await one_request(client, model, prompt, args.max_tokens))


def metric(base, name):
    text = urllib.request.urlopen(f"{base}/metrics").read().decode()
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


async def drive(base, args, clients):
    client = AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=3600)
    model = (await client.models.list()).data[0].id
    # Warm-up: pages in the weights, sizes the buffers.
    await one_request(client, model, [1] * args.prompt_len, 4)
    steps0 = metric(base, "zambac_decode_batch_size_count") or 0
    seqs0 = metric(base, "zambac_decode_batch_size_sum") or 0
    results = []
    t0 = time.perf_counter()
    await asyncio.gather(
        *(client_loop(client, model, random.Random(1000 + c), args, results) for c in range(clients))
    )
    wall = time.perf_counter() - t0
    steps = (metric(base, "zambac_decode_batch_size_count") or 0) - steps0
    seqs = (metric(base, "zambac_decode_batch_size_sum") or 0) - seqs0
    tokens = sum(r[2] for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "prompt_len": args.prompt_len,
        "max_tokens": args.max_tokens,
        "wall_s": wall,
        "generated_tokens": tokens,
        "output_tok_per_s": tokens / wall,
        "requests_per_s": len(results) / wall,
        "ttft_s": percentiles([r[0] for r in results if r[0] is not None]),
        "itl_s": percentiles([x for r in results for x in r[1]]),
        "mean_decode_batch": seqs / steps if steps else None,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--zambac-run", default="target/release/zambac-run")
    ap.add_argument("--engine", required=True)
    ap.add_argument("--clients", default="1,16", help="client counts to run, one after the other")
    ap.add_argument("--requests", type=int, default=2, help="requests per client")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--port", type=int, default=18400)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    with open(f"{args.engine}/manifest.json") as f:
        args.vocab = json.load(f)["model"]["vocab_size"]
    server = subprocess.Popen(
        [args.zambac_run, "serve", args.engine, "--port", str(args.port),
         "--max-batch", str(max(counts)), "--prefix-cache-mib", "0",
         "--context", str(args.prompt_len + args.max_tokens + 8)],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        line = server.stderr.readline()
        m = re.search(r"on (http://\S+)", line)
        if not m:
            sys.exit(f"the server did not start: {line}{server.stderr.read()}")
        base = m.group(1)
        runs = []
        for c in counts:
            r = asyncio.run(drive(base, args, c))
            runs.append(r)
            print(
                f"{c:>3} clients: {r['output_tok_per_s']:8.1f} tok/s, {r['requests']} requests in "
                f"{r['wall_s']:.1f} s; TTFT p50/p90/p99 "
                + "/".join(f"{r['ttft_s'][p] * 1e3:.0f}" for p in ("p50", "p90", "p99"))
                + " ms; ITL p50/p90/p99 "
                + "/".join(f"{r['itl_s'][p] * 1e3:.1f}" for p in ("p50", "p90", "p99"))
                + f" ms; mean decode batch {r['mean_decode_batch'] or 0:.1f}",
                flush=True,
            )
        if len(runs) > 1:
            print(f"throughput {counts[-1]} vs {counts[0]} clients: "
                  f"{runs[-1]['output_tok_per_s'] / runs[0]['output_tok_per_s']:.2f}x")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"engine": args.engine, "runs": runs}, f, indent=2)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
