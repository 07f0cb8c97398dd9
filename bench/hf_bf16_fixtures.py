"""How far Hugging Face's own bf16 inference moves from its float32 inference on the
fixtures: the yardstick for zambac's bf16 engines (tests/bf16_products.rs prints zambac's
side of the same measurement).

For every fixture in ../shared/fixtures: the model in float32 and the same model cast to
bfloat16 (weights *and* every activation in bf16, as `torch_dtype=bfloat16` runs it), on
the fixture's longest prompt: the largest prefill logit difference, the largest difference
over 16 decode steps fed the float32 model's greedy tokens, and how many greedy tokens agree
before the first difference (of 17: the prefill's and 16 decoded). Prints one JSON line per
fixture.

    .venv-bench/bin/python bench/hf_bf16_fixtures.py
"""

import json
import os

import torch
import transformers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "..", "shared", "fixtures")
STEPS = 16


def load(path, dtype):
    cfg = json.load(open(os.path.join(path, "config.json")))
    cls = {
        "zamba2": transformers.Zamba2ForCausalLM,
        "zamba": transformers.ZambaForCausalLM,
    }[cfg["model_type"]]
    m = cls.from_pretrained(path, attn_implementation="eager", torch_dtype=torch.float32)
    return m.to(dtype).eval()


@torch.no_grad()
def forced_logits(model, prompt, tokens):
    """Prefill logits of every position, then one cached decode step per forced token."""
    out = model(torch.tensor([prompt]), use_cache=True)
    rows = [out.logits[0].float()]
    cache = out.past_key_values
    for t in tokens:
        out = model(torch.tensor([[t]]), past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        rows.append(out.logits[0].float())
    return torch.cat(rows)


@torch.no_grad()
def greedy(model, prompt):
    out = model.generate(
        torch.tensor([prompt]),
        do_sample=False,
        max_new_tokens=STEPS + 1,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out[0, len(prompt):].tolist()


def main():
    torch.set_num_threads(2)
    for name in sorted(os.listdir(FIXTURES)):
        path = os.path.join(FIXTURES, name)
        if not os.path.exists(os.path.join(path, "config.json")):
            continue
        prompt = max(json.load(open(os.path.join(path, "tokens.json"))), key=len)
        f32, bf16 = load(path, torch.float32), load(path, torch.bfloat16)
        base_tokens = greedy(f32, prompt)
        forced = base_tokens[:STEPS]
        a = forced_logits(f32, prompt, forced)
        b = forced_logits(bf16, prompt, forced)
        n = len(prompt)
        other = greedy(bf16, prompt)
        agree = next((i for i, (x, y) in enumerate(zip(base_tokens, other)) if x != y), len(other))
        print(json.dumps({
            "fixture": name,
            "prefill_max_abs_diff": round(float((a[:n] - b[:n]).abs().max()), 4),
            "decode_max_abs_diff": round(float((a[n:] - b[n:]).abs().max()), 4),
            "greedy_agreement": f"{agree}/{len(other)}",
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        }))


if __name__ == "__main__":
    main()
