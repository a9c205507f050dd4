"""The sampling and KV-cache sections of `embergpt check-features`: each check compares two independent
computations (cached vs uncached, batch vs one by one, a filter vs its definition) on the "check" model shape
with random weights (the real init zeroes the output projections, which would hide cache bugs).
"""

from __future__ import annotations

import torch

from embergpt.config import PRESETS, GPTConfig
from embergpt.inference.engine import Engine
from embergpt.inference.kv_cache import KVCache
from embergpt.inference.streaming import TextStreamer
from embergpt.model import GPT
from embergpt.sampling import SamplingParams, apply_min_p, apply_top_k, apply_top_p, sample_next_token

Check = tuple[str, bool, str]


def _random_model(config: GPTConfig, device: torch.device, seed: int = 0) -> GPT:
    gen = torch.Generator().manual_seed(seed)
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.to(device).eval()


def _sampling_checks(device: torch.device) -> list[Check]:
    checks: list[Check] = []
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(8, 256, generator=gen) * 3).to(device)

    greedy = sample_next_token(logits, SamplingParams(temperature=0.0))
    checks.append(("sampling: temperature 0 is greedy", torch.equal(greedy, logits.argmax(-1)), "argmax on 8 rows"))

    kept = torch.isfinite(apply_top_k(logits, 10)).sum(-1)
    checks.append(("sampling: top-k keeps exactly k", bool((kept == 10).all()), f"k=10 -> kept {kept.tolist()[:4]}..."))

    p = 0.9
    probs = logits.softmax(-1)
    filtered = apply_top_p(logits, p)
    mask = torch.isfinite(filtered)
    mass = (probs * mask).sum(-1)
    # smallest: removing the least likely kept token must bring the mass below p
    least = probs.masked_fill(~mask, float("inf")).min(-1).values
    ok = bool((mass >= p - 1e-6).all() and (mass - least < p).all())
    checks.append(("sampling: top-p keeps the smallest set with mass >= p", ok,
                   f"p={p}: kept mass {mass.min():.3f}..{mass.max():.3f}, {int(mask.sum(-1).float().mean())} tokens"))

    m = 0.1
    kept_min = torch.isfinite(apply_min_p(logits, m))
    expected = probs >= m * probs.max(-1, keepdim=True).values * (1 - 1e-6)
    checks.append(("sampling: min-p keeps p >= min_p * p_max", torch.equal(kept_min, expected), f"min_p={m}"))

    params = SamplingParams(temperature=1.0, top_k=50, top_p=0.95)

    def draw(seed: int) -> list[int]:
        g = torch.Generator(device=device).manual_seed(seed)
        return torch.cat([sample_next_token(logits, params, g) for _ in range(4)]).tolist()

    same, other = draw(1) == draw(1), draw(1) != draw(2)
    checks.append(("sampling: same seed -> same tokens, other seed differs", same and other, "32 draws per seed"))

    bad = 0
    for kwargs in (dict(temperature=-1), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1), dict(min_p=2.0),
                   dict(repetition_penalty=0.0)):
        try:
            SamplingParams(**kwargs)
        except ValueError:
            bad += 1
    checks.append(("sampling: invalid parameters raise ValueError", bad == 6, f"{bad}/6 rejected"))
    return checks


def _cache_checks(device: torch.device) -> list[Check]:
    checks: list[Check] = []
    config = PRESETS["check"]
    model = _random_model(config, device)
    engine = Engine(model)
    prompt, steps = [7, 3, 100, 42, 9], 48

    # cached decode vs a full uncached forward over the growing sequence, logits compared at every step
    logits, cache = engine.prefill(torch.tensor([prompt], device=device), max_new_tokens=steps)
    ids, worst, same_tokens = list(prompt), 0.0, True
    with torch.no_grad():
        for i in range(steps):
            ref = model(torch.tensor([ids], device=device))[0, -1]
            worst = max(worst, (logits[0] - ref).abs().max().item())
            token = logits.argmax(-1)
            same_tokens &= int(token) == int(ref.argmax())
            ids.append(int(token))
            if i + 1 < steps:
                logits = engine.decode_step(token, cache)
    checks.append(("kv-cache: cached decode == uncached forward", same_tokens and worst < 1e-3,
                   f"{steps} greedy steps, max |logit diff| {worst:.1e}"))

    prompts = [[1, 2, 3, 4, 5, 6, 7], [8], [9, 10, 11]]
    batched = engine.generate(prompts, 16)
    single = [engine.generate(p, 16)[0] for p in prompts]
    checks.append(("kv-cache: batch of different lengths == one by one", batched == single,
                   f"prompt lengths {[len(p) for p in prompts]}, 16 tokens each"))

    samples = engine.generate(prompts[0], 16, n_samples=3)
    checks.append(("kv-cache: n samples share one prefill", samples == [single[0]] * 3, "3 greedy samples"))

    ids_att, maps = engine.generate(prompts[2], 8, return_attention=True)
    with torch.no_grad():
        _, att = model(torch.tensor([prompts[2] + ids_att[0]], device=device), return_attention=True)
    diff = (maps[0] - torch.stack([a[0].float().cpu() for a in att])).abs().max().item()
    checks.append(("kv-cache: captured attention == full forward", diff < 1e-4,
                   f"[L, H, T, T] = {list(maps[0].shape)}, max diff {diff:.1e}"))

    sizes = {}
    for name, n_kv in (("MHA", config.n_head), ("GQA", config.n_head // 2), ("MQA", 1)):
        sizes[name] = KVCache.for_model(config.replace(n_kv_head=n_kv), 1, dtype=torch.float32, device="cpu").nbytes
    # k and v, per layer and head, sequence_len positions + the one spare (see KVCache), fp32
    expected = 2 * config.n_layer * config.n_head * (config.sequence_len + 1) * config.head_dim * 4
    ok = sizes["MHA"] == expected and sizes["MHA"] == 2 * sizes["GQA"] == config.n_head * sizes["MQA"]
    detail = ", ".join(f"{k} {v / 1024:.0f} KiB" for k, v in sizes.items())
    checks.append(("kv-cache: nbytes shrinks with GQA and MQA", ok, f"{detail} (T={config.sequence_len}, fp32)"))

    def raises(fn) -> bool:
        try:
            fn()
        except ValueError:
            return True
        return False

    full = KVCache.for_model(config, 1, 8)
    full.set_positions([8])
    too_long = raises(lambda: engine.generate(list(range(config.sequence_len - 4)), 5))
    full_cache = raises(lambda: full.check_capacity(1))
    checks.append(("kv-cache: overflow is an error, no wrap-around", too_long and full_cache,
                   "prompt + new tokens > sequence_len, and a full cache, both raise ValueError"))
    return checks


def _streaming_checks() -> list[Check]:
    class Bytes:  # byte-level: a 4-byte emoji arrives in 4 tokens
        def decode_bytes(self, ids: list[int]) -> bytes:
            return bytes(ids)

    text = "héllo 😀 世界"
    streamer = TextStreamer(Bytes())
    pieces = [streamer.push(b) for b in text.encode("utf-8")] + [streamer.flush()]
    ok = "".join(pieces) == text and all("\ufffd" not in p for p in pieces)
    held = sum(1 for p in pieces if p == "")
    return [("streaming: never emits a broken UTF-8 character", ok, f"{len(pieces) - 1} byte tokens, {held} held back")]


def engine_checks(device: torch.device | str | None = None) -> list[Check]:
    """(name, passed, detail) for the sampling, KV-cache and streaming checks of check-features."""
    device = torch.device(device or "cpu")
    checks = _sampling_checks(device) + _cache_checks(device) + _streaming_checks()
    return [(name, bool(ok), detail) for name, ok, detail in checks]


if __name__ == "__main__":  # a quick look without the CLI
    for name, ok, detail in engine_checks():
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
