import json

import pytest

from embergpt.config import PRESETS, GPTConfig, get_preset


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"n_embd": 130, "n_head": 4}, "n_embd"),
        ({"n_head": 4, "n_kv_head": 3}, "n_head"),
        ({"n_embd": 12, "n_head": 4, "n_kv_head": 4}, "head_dim"),  # head_dim 3 is odd
        ({"vocab_size": 0}, "vocab_size"),
        ({"n_layer": -1}, "n_layer"),
        ({"sequence_len": 2.5}, "sequence_len"),
        ({"dropout": 1.0}, "dropout"),
        ({"softcap": 0.0}, "softcap"),
    ],
)
def test_validation_names_field(changes, field):
    with pytest.raises(ValueError, match=field):
        GPTConfig(**changes)


def test_json_round_trip(tmp_path):
    config = GPTConfig(vocab_size=100, n_layer=3, n_head=6, n_kv_head=2, n_embd=96, softcap=None, dropout=0.1)
    assert GPTConfig.from_json(config.to_json()) == config
    config.save(tmp_path / "c.json")
    assert GPTConfig.load(tmp_path / "c.json") == config
    assert json.loads((tmp_path / "c.json").read_text())["softcap"] is None


def test_unknown_field_rejected():
    with pytest.raises(ValueError, match="unknown field"):
        GPTConfig.from_dict({"vocab_size": 10, "n_embedding": 4})


def test_presets_are_valid_and_named():
    assert {"tiny", "shakespeare-char", "d12"} <= set(PRESETS)
    d12 = get_preset("d12")
    assert (d12.n_layer, d12.n_embd) == (12, 768)
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("d13")
