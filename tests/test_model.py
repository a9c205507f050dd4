"""Model behaviour: shapes, causality, RoPE relativity, GQA/MQA equivalence, softcap, init loss, attention paths."""

import math

import pytest
import torch

from embergpt.config import GPTConfig
from embergpt.inference.kv_cache import KVCache
from embergpt.model import GPT, apply_rotary, rotary_tables


def make_model(seed=0, **changes):
    """A tiny model with every weight random (the real init zeroes output projections, hiding bugs)."""
    torch.manual_seed(seed)
    base = dict(vocab_size=50, sequence_len=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
    config = GPTConfig(**{**base, **changes})
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def test_shapes_and_loss():
    model = make_model()
    idx = torch.randint(0, 50, (3, 17))
    assert model(idx).shape == (3, 17, 50)
    assert model(idx).dtype == torch.float32
    loss = model(idx, targets=idx)
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_logits_at_one_position_per_row_equals_the_full_logits_there():
    model = make_model()
    idx = torch.randint(0, 50, (3, 12))
    at = torch.tensor([11, 0, 5])
    picked = model(idx, logits_at=at)
    assert picked.shape == (3, 50)
    torch.testing.assert_close(picked, model(idx)[torch.arange(3), at], rtol=1e-5, atol=1e-5)


def test_ignored_targets():
    model = make_model()
    idx = torch.randint(0, 50, (2, 10))
    targets = idx.clone()
    targets[:, 5:] = -1
    logits = model(idx)
    expected = torch.nn.functional.cross_entropy(logits[:, :5].reshape(-1, 50), idx[:, :5].reshape(-1))
    assert torch.allclose(model(idx, targets=targets), expected, atol=1e-6)


def test_too_long_sequence_is_a_clear_error():
    model = make_model()
    with pytest.raises(ValueError, match="sequence_len"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_causality():
    model = make_model()
    idx = torch.randint(0, 50, (1, 20))
    changed = idx.clone()
    changed[0, 12] = (idx[0, 12] + 1) % 50
    a, b = model(idx), model(changed)
    assert torch.equal(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_rope_scores_depend_only_on_relative_distance():
    head_dim = 16
    cos, sin = rotary_tables(64, head_dim, 10000.0)
    torch.manual_seed(0)
    q, k = torch.randn(head_dim), torch.randn(head_dim)

    def rotated(x, pos):
        return apply_rotary(x.view(1, 1, 1, -1), cos[pos].view(1, 1, 1, -1), sin[pos].view(1, 1, 1, -1)).flatten()

    def score(i, j):
        return torch.dot(rotated(q, i), rotated(k, j))

    assert torch.allclose(score(3, 1), score(40, 38), atol=1e-5)
    assert torch.allclose(score(10, 10), score(0, 0), atol=1e-5)
    assert not torch.allclose(score(3, 1), score(3, 2), atol=1e-3)
    # rotation preserves norms
    assert torch.allclose(rotated(q, 17).norm(), q.norm(), atol=1e-5)


@pytest.mark.parametrize("n_kv_head", [1, 2])
def test_grouped_query_equals_mha_with_replicated_kv(n_kv_head):
    gqa = make_model(n_kv_head=n_kv_head)
    mha = GPT(gqa.config.replace(n_kv_head=4)).eval()
    rep = 4 // n_kv_head
    head_dim = gqa.config.head_dim
    state = {}
    for name, tensor in gqa.state_dict().items():
        if name.endswith(("attn.c_k.weight", "attn.c_v.weight")):
            # weight rows are grouped by kv head: [n_kv_head * head_dim, C] -> repeat each head `rep` times
            tensor = tensor.view(n_kv_head, head_dim, -1).repeat_interleave(rep, dim=0).reshape(4 * head_dim, -1)
        state[name] = tensor
    mha.load_state_dict(state)
    idx = torch.randint(0, 50, (2, 16))
    assert torch.allclose(gqa(idx), mha(idx), atol=1e-5)


def test_softcap_bounds_logits_and_none_disables_it():
    capped = make_model()
    with torch.no_grad():
        capped.lm_head.weight.mul_(50)
    uncapped = GPT(capped.config.replace(softcap=None)).eval()
    uncapped.load_state_dict(capped.state_dict())
    idx = torch.randint(0, 50, (2, 16))
    assert capped(idx).abs().max() <= 15.0 + 1e-5
    assert uncapped(idx).abs().max() > 15.0
    assert uncapped(idx).abs().max() <= 50.0  # the final clamp still applies


def test_no_norm_parameters_and_nanochat_names():
    model = GPT(GPTConfig(vocab_size=50, sequence_len=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32))
    names = set(model.state_dict())
    expected = {"transformer.wte.weight", "lm_head.weight"}
    for i in range(2):
        expected |= {f"transformer.h.{i}.attn.c_{n}.weight" for n in ("q", "k", "v", "proj")}
        expected |= {f"transformer.h.{i}.mlp.c_{n}.weight" for n in ("fc", "proj")}
    assert names == expected


@pytest.mark.parametrize("vocab_size", [65, 256, 4096])
def test_loss_at_init_is_ln_vocab(vocab_size):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab_size, sequence_len=64, n_layer=2, n_head=4, n_kv_head=4, n_embd=64))
    idx = torch.randint(0, vocab_size, (4, 64))
    assert abs(model(idx, targets=idx).item() - math.log(vocab_size)) < 0.3


def test_explicit_attention_matches_sdpa_and_is_causal():
    model = make_model()
    idx = torch.randint(0, 50, (2, 24))
    sdpa = model(idx)
    explicit, attention = model(idx, return_attention=True)
    assert torch.allclose(sdpa, explicit, atol=1e-4)
    assert len(attention) == 2 and attention[0].shape == (2, 4, 24, 24)
    upper = torch.triu(torch.ones(24, 24, dtype=torch.bool), diagonal=1)
    assert attention[1][..., upper].abs().max() == 0
    assert torch.allclose(attention[1].sum(-1), torch.ones(2, 4, 24), atol=1e-5)


def test_cached_forward_matches_full_forward():
    model = make_model()
    idx = torch.randint(0, 50, (2, 24))
    full = model(idx)
    cache = KVCache.for_model(model.config, batch_size=2, max_len=24)
    pieces = [model(idx[:, :10], kv_cache=cache)]
    pieces += [model(idx[:, t : t + 1], kv_cache=cache) for t in range(10, 24)]
    assert torch.allclose(torch.cat(pieces, 1), full, atol=1e-4)
    assert cache.pos.tolist() == [24, 24]


def test_cache_overflow_is_a_clear_error():
    model = make_model()
    cache = KVCache.for_model(model.config, batch_size=1, max_len=8)
    model(torch.zeros(1, 8, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="KV cache full"):
        model(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="sequence_len"):
        KVCache.for_model(model.config, batch_size=1, max_len=33)


def test_gqa_shrinks_cache():
    config = GPTConfig(vocab_size=50, sequence_len=32, n_layer=2, n_head=4, n_kv_head=4, n_embd=32)
    mha = KVCache.for_model(config, 2).nbytes
    assert KVCache.for_model(config.replace(n_kv_head=2), 2).nbytes * 2 == mha
    assert KVCache.for_model(config.replace(n_kv_head=1), 2).nbytes * 4 == mha


def test_num_params_and_flops():
    model = GPT(GPTConfig(vocab_size=50, sequence_len=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32))
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    n_dense = model.num_params() - 50 * 32
    assert model.flops_per_token() == 6 * n_dense + 12 * 2 * 4 * 8 * 32
