"""The RoPE direction change (checkpoint format 1 -> 2): old checkpoints load and give the logits they gave before.

The reference is an independent forward written here from the formulas, with the old rotation
(y1 = x1 cos - x2 sin, y2 = x2 cos + x1 sin), run on the very weights the old-format file holds.
"""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from embergpt import GPT, GPTConfig, load_checkpoint, save_checkpoint
from embergpt.checkpoint import FORMAT_VERSION, file_sha256


def old_formula_logits(state: dict, cfg: GPTConfig, idx: torch.Tensor) -> torch.Tensor:
    """Logits [B, T, V] of the format-1 model, from the formulas (explicit attention, loops over heads)."""
    B, T = idx.shape
    D, H, Hkv = cfg.head_dim, cfg.n_head, cfg.n_kv_head

    def norm(x):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.norm_eps)

    pos = torch.arange(T, dtype=torch.float64)[:, None]
    freq = cfg.rope_base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    cos, sin = (pos * freq).cos().float(), (pos * freq).sin().float()  # (T, D/2)

    def old_rotate(x):  # x (B, T, D)
        a, b = x[..., : D // 2], x[..., D // 2 :]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)

    x = norm(state["transformer.wte.weight"][idx])
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}."
        h = norm(x)
        q = h @ state[p + "attn.c_q.weight"].T
        k = h @ state[p + "attn.c_k.weight"].T
        v = h @ state[p + "attn.c_v.weight"].T
        heads = []
        for j in range(H):
            g = j // (H // Hkv)  # the key/value head this query head shares
            qj = norm(old_rotate(q[..., j * D : (j + 1) * D]))
            kj = norm(old_rotate(k[..., g * D : (g + 1) * D]))
            scores = (qj @ kj.transpose(1, 2)) / math.sqrt(D)
            att = scores.masked_fill(~causal, float("-inf")).softmax(-1)
            heads.append(att @ v[..., g * D : (g + 1) * D])
        x = x + torch.cat(heads, -1) @ state[p + "attn.c_proj.weight"].T
        m = torch.relu(norm(x) @ state[p + "mlp.c_fc.weight"].T) ** 2
        x = x + m @ state[p + "mlp.c_proj.weight"].T
    logits = (norm(x) @ state["lm_head.weight"].T).clamp(-50, 50)
    c = cfg.softcap
    return (c * torch.tanh(logits / c)).clamp(-50, 50)


def write_format1(path, model, tokenizer=None):
    """A checkpoint exactly as format 1 wrote it: same files, format_version 1, and weights whose header does not
    record the digest of metadata.json (format 1 did not hash metadata.json)."""
    save_checkpoint(model, path, tokenizer=tokenizer)
    downgrade_to_format1(path)


def downgrade_to_format1(path):
    """Rewrite a saved checkpoint's metadata and weights header as format 1 had them."""
    weights = path / "model.safetensors"
    save_file(load_file(weights), weights)
    meta = json.loads((path / "metadata.json").read_text())
    meta["format_version"] = 1
    meta["files"]["model.safetensors"] = file_sha256(weights)
    (path / "metadata.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])  # MHA, GQA, MQA: c_k has n_kv_head heads of rows
def test_format1_checkpoint_loads_with_its_old_logits(tmp_path, n_kv_head):
    cfg = GPTConfig(vocab_size=50, sequence_len=24, n_layer=2, n_head=4, n_kv_head=n_kv_head, n_embd=32)
    torch.manual_seed(n_kv_head)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    idx = torch.randint(0, cfg.vocab_size, (2, 24))
    before = old_formula_logits(state, cfg, idx)

    write_format1(tmp_path / "old", model)
    ck = load_checkpoint(tmp_path / "old")
    with torch.no_grad():
        after = ck.model(idx)
    assert torch.allclose(after, before, rtol=1e-5, atol=1e-5), (after - before).abs().max()

    # The conversion is what makes them agree: read as format 2, the same weights give other logits.
    save_checkpoint(model, tmp_path / "new")
    with torch.no_grad():
        as_new = load_checkpoint(tmp_path / "new").model(idx)
    assert (as_new - before).abs().max() > 1e-2
    # ...and a converted model saves as the current format, which loads without converting again.
    save_checkpoint(ck.model, tmp_path / "resaved")
    again = load_checkpoint(tmp_path / "resaved")
    assert again.metadata["format_version"] == FORMAT_VERSION == 2
    with torch.no_grad():
        assert torch.equal(again.model(idx), after)


def test_conversion_negates_exactly_the_second_half_of_each_head():
    cfg = GPTConfig(vocab_size=20, sequence_len=8, n_layer=1, n_head=4, n_kv_head=2, n_embd=16)
    from embergpt.checkpoint import rotary_v1_to_v2

    state = GPT(cfg).state_dict()
    out = rotary_v1_to_v2(state, cfg)
    D = cfg.head_dim
    for name, heads in (("c_q", 4), ("c_k", 2)):
        w, c = state[f"transformer.h.0.attn.{name}.weight"], out[f"transformer.h.0.attn.{name}.weight"]
        for h in range(heads):
            rows = slice(h * D, (h + 1) * D)
            assert torch.equal(c[rows][: D // 2], w[rows][: D // 2])
            assert torch.equal(c[rows][D // 2 :], -w[rows][D // 2 :])
    for key in state:  # nothing else changes, and the input is left alone
        if ".c_q." not in key and ".c_k." not in key:
            assert out[key] is state[key]


def test_resuming_a_format1_training_checkpoint_is_refused(tmp_path):
    """Its optimizer moments are in the old basis: it loads for inference, but training does not resume from it."""
    import dataclasses

    from embergpt import CheckpointError
    from embergpt.train import TrainConfig, train

    (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 100)
    cfg = TrainConfig(data=str(tmp_path / "corpus.txt"), preset="tiny", seq_len=16, batch_size=4, steps=2,
                      eval_interval=0, eval_steps=1, out=str(tmp_path / "run"), verbose=False)
    checkpoint = train(cfg).checkpoint
    downgrade_to_format1(checkpoint)
    assert load_checkpoint(checkpoint).metadata["format_version"] == 1
    with pytest.raises(CheckpointError, match="format-1 checkpoint"):
        train(dataclasses.replace(cfg, resume=str(checkpoint), steps=4))
