"""Export a checkpoint to a Hugging Face `NanoChatForCausalLM` directory, and import one back.

    OUT/
      config.json               NanoChatConfig fields (model_type "nanochat")
      model.safetensors         the weights under transformers' names, in the dtype the checkpoint stores
      tokenizer.json            a `tokenizers` file that encodes and decodes as ours (see hf_tokenizer)
      tokenizer_config.json     special tokens by role; the chat template when the tokenizer has chat tokens
      generation_config.json    BOS, the stop tokens our engine stops at
      README.md                 a model card from the checkpoint's metadata

The architectures are the same (weight-free RMSNorm also on the embedding, RoPE in nanochat's direction, QK-norm
after RoPE, ReLU², GQA, untied lm_head, logit softcap), so the weights are renamed, never changed. The one
difference is our ±50 clamp around the softcap; `clamp_is_exact` decides when it cannot act (docs/interop.md).
Everything is written into a hidden directory beside OUT and renamed into place: OUT is whole or absent.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from embergpt.config import GPTConfig
from embergpt.errors import EmbergptError
from embergpt.model import LOGIT_CLAMP

MAX_JSON_BYTES = 1 << 20  # config.json and friends are a few KB
MAX_TOKENIZER_BYTES = 256 << 20
ARCHITECTURE = "NanoChatForCausalLM"


class InteropError(EmbergptError):
    """A model or a directory that the other format cannot represent exactly, or a malformed HF directory."""


# Our name -> transformers' name; {i} is the layer.
_GLOBAL_NAMES = {"transformer.wte.weight": "model.embed_tokens.weight", "lm_head.weight": "lm_head.weight"}
_LAYER_NAMES = {
    "attn.c_q.weight": "self_attn.q_proj.weight",
    "attn.c_k.weight": "self_attn.k_proj.weight",
    "attn.c_v.weight": "self_attn.v_proj.weight",
    "attn.c_proj.weight": "self_attn.o_proj.weight",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_proj.weight": "mlp.fc2.weight",
}


def hf_names(n_layer: int) -> dict[str, str]:
    """Every weight's name here -> its name in transformers' NanoChatForCausalLM."""
    names = dict(_GLOBAL_NAMES)
    for i in range(n_layer):
        names.update({f"transformer.h.{i}.{ours}": f"model.layers.{i}.{hf}" for ours, hf in _LAYER_NAMES.items()})
    return names


# ------------------------------------------------------------------------------------------- the logit clamp


def raw_logit_bound(lm_head: torch.Tensor) -> float:
    """An upper bound on |logit| before the softcap, for any input: the final RMSNorm leaves a vector of norm at
    most sqrt(n_embd), so by Cauchy-Schwarz |w_v . x| <= |w_v| sqrt(n_embd). lm_head [V, C]."""
    return float(lm_head.detach().double().norm(dim=1).max()) * math.sqrt(lm_head.size(1))


def clamp_is_exact(softcap: float | None, bound: float) -> bool:
    """Whether our clamp(±50) -> softcap -> clamp(±50) equals transformers' plain softcap for every input.

    - The outer clamp cannot act when softcap <= 50 (|c tanh| < c), nor when the raw logits stay within ±50
      (|c tanh(x / c)| <= |x|).
    - The inner clamp cannot act when the raw logits stay within ±50 (with a margin for rounding), or when
      tanh(50 / c) is already 1.0 in fp32 (so clamping a larger x to 50 does not change c tanh(x / c)).
    """
    within = bound * (1 + 1e-4) <= LOGIT_CLAMP
    if softcap is None:
        return within
    saturated = bool(torch.tanh(torch.tensor(LOGIT_CLAMP, dtype=torch.float32) / softcap) == 1.0)
    return (within or saturated) and (softcap <= LOGIT_CLAMP or within)


# ------------------------------------------------------------------------------------------------- export


def hf_config(config: GPTConfig, tokenizer: Any, dtype: torch.dtype) -> dict[str, Any]:
    """config.json for a GPTConfig: NanoChatConfig's fields."""
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "nanochat",
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": 4 * config.n_embd,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.sequence_len,
        "hidden_act": "relu2",
        "attention_dropout": 0.0,  # our dropout is a training setting; inference has none either way
        "attention_bias": False,
        "rms_norm_eps": config.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},
        "final_logit_softcapping": config.softcap,
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": _stop_ids(tokenizer)[0],
        "pad_token_id": tokenizer.bos_id,
        "dtype": str(dtype).removeprefix("torch."),
    }


def _stop_ids(tokenizer: Any) -> list[int]:
    """The tokens generation stops at, as in our chat renderer: <|assistant_end|> then <|bos|> for chat tokenizers,
    <|bos|> (the start of a new document) otherwise."""
    sp = tokenizer.special_tokens
    return [sp["<|assistant_end|>"], tokenizer.bos_id] if tokenizer.chat_template else [tokenizer.bos_id]


def model_card(metadata: dict[str, Any], config: GPTConfig, num_params: int) -> str:
    """README.md: what the model is and how it was trained, from the checkpoint's metadata."""
    train = metadata.get("train_config") if isinstance(metadata.get("train_config"), dict) else {}
    metrics = metadata.get("metrics") if isinstance(metadata.get("metrics"), dict) else {}

    def fmt(value: Any, spec: str = "") -> str:
        return "not recorded" if value is None else format(value, spec) if spec else str(value)

    tok = metadata.get("tokenizer") or {}
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [embergpt, nanochat]",
        "---",
        "",
        "# An embergpt model",
        "",
        f"A {num_params:,}-parameter GPT trained with [embergpt](https://github.com/), exported with "
        "`embergpt export --format hf`. It loads with `transformers` as `NanoChatForCausalLM` "
        "(no `trust_remote_code`).",
        "",
        "| | |",
        "|---|---|",
        f"| training data | {fmt(train.get('data'))} |",
        f"| steps | {fmt(metadata.get('step'))} |",
        f"| validation loss | {fmt(metrics.get('val_loss'), '.4f')} |",
        f"| bits per byte (validation) | {fmt(metrics.get('val_bpb'), '.4f')} |",
        f"| layers / heads / kv heads / width | {config.n_layer} / {config.n_head} / {config.n_kv_head} / "
        f"{config.n_embd} |",
        f"| context | {config.sequence_len} tokens |",
        f"| tokenizer | {fmt(tok.get('kind'))}, {fmt(tok.get('vocab_size'))} ids |",
        f"| embergpt version, commit | {fmt(metadata.get('embergpt_version'))}, {fmt(metadata.get('git_commit'))} |",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'model = AutoModelForCausalLM.from_pretrained("PATH")',
        'tokenizer = AutoTokenizer.from_pretrained("PATH")',
        "```",
        "",
    ]
    return "\n".join(lines)


def export_hf(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write checkpoint `checkpoint` as a Hugging Face NanoChatForCausalLM directory `out` (see the module
    docstring). Raises InteropError (one line) for a model the format cannot represent."""
    from safetensors import safe_open

    from embergpt.checkpoint import load_checkpoint
    from embergpt.interop.hf_tokenizer import hf_tokenizer_json, tokenizer_config

    out = Path(out)
    _check_out(out, overwrite)
    ck = load_checkpoint(checkpoint)  # validated; a format-1 checkpoint comes back in nanochat's RoPE direction
    kind = (ck.metadata.get("model") or {}).get("kind", "gpt")
    if kind != "gpt":
        raise InteropError(f"a teaching-ladder model ({kind}) has no Hugging Face architecture; export a GPT")
    if ck.tokenizer is None:
        raise InteropError(f"{checkpoint} has no tokenizer.json; a Hugging Face directory needs its tokenizer")
    if ck.tokenizer.vocab_size > ck.config.vocab_size:
        raise InteropError(f"the tokenizer has {ck.tokenizer.vocab_size} ids, the model only {ck.config.vocab_size}")
    state = ck.model.state_dict()
    bound = raw_logit_bound(state["lm_head.weight"])
    if not clamp_is_exact(ck.config.softcap, bound):
        raise InteropError(
            f"softcap={ck.config.softcap} with lm_head rows that allow raw logits up to {bound:.1f}: embergpt clamps "
            f"logits to ±{LOGIT_CLAMP:g} around the softcap and transformers does not, so the export would not be "
            "exact (see docs/interop.md)"
        )
    with safe_open(str(Path(checkpoint) / "model.safetensors"), framework="pt") as f:
        stored = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    dtypes = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
    if any(d not in dtypes for d in stored.values()):
        raise InteropError(f"model.safetensors stores dtypes {sorted(set(stored.values()))}; export needs F32/BF16/F16")
    # The weights in the dtype the checkpoint stores (the model was loaded in fp32; the round trip is exact).
    names = hf_names(ck.config.n_layer)
    weights = {hf: state[ours].to(dtypes[stored[ours]]).contiguous() for ours, hf in names.items()}
    dtype = dtypes[stored["lm_head.weight"]]

    def write(tmp: Path) -> None:
        from safetensors.torch import save_file

        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _write_json(tmp / "config.json", hf_config(ck.config, ck.tokenizer, dtype))
        (tmp / "tokenizer.json").write_text(hf_tokenizer_json(ck.tokenizer), encoding="utf-8")
        _write_json(tmp / "tokenizer_config.json", tokenizer_config(ck.tokenizer, ck.config.sequence_len))
        stops = _stop_ids(ck.tokenizer)
        _write_json(tmp / "generation_config.json", {
            "bos_token_id": ck.tokenizer.bos_id,
            "eos_token_id": stops if len(stops) > 1 else stops[0],
            "pad_token_id": ck.tokenizer.bos_id,
        })
        (tmp / "README.md").write_text(model_card(ck.metadata, ck.config, ck.model.num_params()), encoding="utf-8")

    return write_directory_atomically(out, write, overwrite)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise InteropError(f"{out} already exists; pass --overwrite to replace it, or choose another OUT")
    if out.exists() and not out.is_dir():
        raise InteropError(f"{out} exists and is not a directory; choose another OUT")


def write_directory_atomically(out: Path, write: Callable[[Path], None], overwrite: bool) -> Path:
    """Run `write(tmp)` on a fresh hidden directory beside `out`, then rename it to `out` (replacing an existing
    `out` only when `overwrite`). On any failure the temporary directory is removed and `out` is untouched."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        write(tmp)
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        _check_out(out, overwrite)  # again: something may have appeared while we wrote
        if out.exists():
            os.rename(out, old)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out


# ------------------------------------------------------------------------------------------------- import

# NanoChatConfig's defaults (transformers 5), used for fields a config.json leaves out.
NANOCHAT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 50304,
    "hidden_size": 768,
    "intermediate_size": 8192,
    "num_hidden_layers": 12,
    "num_attention_heads": 6,
    "num_key_value_heads": None,
    "max_position_embeddings": 2048,
    "hidden_act": "relu2",
    "attention_dropout": 0.0,
    "rms_norm_eps": 1e-6,
    "initializer_range": 0.02,
    "rope_parameters": None,
    "use_cache": True,
    "final_logit_softcapping": 15.0,
    "attention_bias": False,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 1,
    "tie_word_embeddings": False,
}
DEFAULT_ROPE_THETA = 10000.0
# Fields every transformers config may carry that say nothing about the computation.
_GENERIC_FIELDS = {
    "_name_or_path", "architectures", "chunk_size_feed_forward", "dtype", "torch_dtype", "id2label", "label2id",
    "is_encoder_decoder", "model_type", "output_attentions", "output_hidden_states", "problem_type", "return_dict",
    "transformers_version", "head_dim", "rope_theta", "rope_scaling",
}


def _read_json(path: Path, max_bytes: int = MAX_JSON_BYTES) -> Any:
    from embergpt.bounded_json import loads
    from embergpt.input_files import read_regular_text

    # bounded: size, nesting depth and NaN / Infinity (not JSON) are refused before any field is read
    text = read_regular_text(path, max_bytes=max_bytes, what=path.name, error=InteropError)
    return loads(text, what=path.name, max_bytes=max_bytes, error=InteropError)


def _number(doc: dict[str, Any], name: str, kind: type, positive: bool = True) -> Any:
    value = doc[name]
    ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    if not ok or (kind is float and not math.isfinite(value)) or (positive and value <= 0):
        raise InteropError(f"config.json: {name} must be a positive {kind.__name__}, got {str(value)[:40]}")
    return kind(value)


def gpt_config_from_hf(doc: Any) -> GPTConfig:
    """Our GPTConfig for a NanoChatConfig's JSON, or an InteropError naming the field we cannot represent."""
    if not isinstance(doc, dict):
        raise InteropError("config.json: expected a JSON object")
    if doc.get("model_type") != "nanochat":
        raise InteropError(f"config.json: model_type {str(doc.get('model_type'))[:40]!r} is not supported; "
                           "embergpt imports nanochat (NanoChatForCausalLM) models only")
    arch = doc.get("architectures")
    if arch is not None and arch != [ARCHITECTURE]:
        raise InteropError(f"config.json: architectures {str(arch)[:60]} is not [{ARCHITECTURE!r}]")
    for name in ("auto_map", "quantization_config"):
        if name in doc:
            raise InteropError(f"config.json: field {name} (remote code or quantized weights) is not supported")
    unknown = sorted(set(doc) - set(NANOCHAT_DEFAULTS) - _GENERIC_FIELDS)
    if unknown:
        raise InteropError(f"config.json: field {unknown[0]} is not a NanoChatConfig field embergpt can represent")
    doc = {**NANOCHAT_DEFAULTS, **doc}
    n_embd = _number(doc, "hidden_size", int)
    n_head = _number(doc, "num_attention_heads", int)
    if doc["num_key_value_heads"] is None:
        doc["num_key_value_heads"] = n_head
    n_kv_head = _number(doc, "num_key_value_heads", int)
    fixed = {"hidden_act": "relu2", "attention_bias": False, "tie_word_embeddings": False}
    for name, want in fixed.items():
        if doc[name] != want:
            raise InteropError(f"config.json: field {name} is {str(doc[name])[:40]!r}; embergpt supports {want!r}")
    if doc["attention_dropout"] not in (0, 0.0):
        raise InteropError("config.json: field attention_dropout must be 0 (embergpt has no attention dropout)")
    if _number(doc, "intermediate_size", int) != 4 * n_embd:
        raise InteropError(f"config.json: field intermediate_size is {doc['intermediate_size']}; embergpt's MLP is "
                           f"4 * hidden_size = {4 * n_embd}")
    if n_embd % n_head:
        raise InteropError(f"config.json: field hidden_size {n_embd} is not a multiple of num_attention_heads {n_head}")
    if doc.get("head_dim") is not None and doc["head_dim"] != n_embd // n_head:
        raise InteropError(f"config.json: field head_dim is {str(doc['head_dim'])[:20]}; embergpt needs "
                           f"hidden_size / num_attention_heads = {n_embd // n_head}")
    _check_token_ids(doc)
    softcap = doc["final_logit_softcapping"]
    if softcap is not None:
        softcap = _number(doc, "final_logit_softcapping", float)
    try:
        return GPTConfig(
            vocab_size=_number(doc, "vocab_size", int),
            sequence_len=_number(doc, "max_position_embeddings", int),
            n_layer=_number(doc, "num_hidden_layers", int),
            n_head=n_head,
            n_kv_head=n_kv_head,
            n_embd=n_embd,
            rope_base=_rope_theta(doc),
            softcap=softcap,
            norm_eps=_number(doc, "rms_norm_eps", float),
        )
    except ValueError as e:
        raise InteropError(f"config.json: {e}") from None


def _check_token_ids(doc: dict[str, Any]) -> None:
    """bos / eos / pad ids are not used by the import (the tokenizer has its own) but a config whose ids are not
    ids of its own vocabulary is not a model's: refused, as any other out-of-range field."""
    vocab = doc["vocab_size"]
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = doc[name]
        ids = value if isinstance(value, list) and name == "eos_token_id" and len(value) <= 64 else [value]
        for i in ids:
            if i is None:
                continue
            if not (isinstance(i, int) and not isinstance(i, bool) and i >= 0
                    and (not isinstance(vocab, int) or i < vocab)):
                raise InteropError(f"config.json: {name} {str(value)[:40]} is not a token id in [0, vocab_size)")


def _rope_theta(doc: dict[str, Any]) -> float:
    if doc.get("rope_scaling") is not None:
        raise InteropError("config.json: field rope_scaling is set; embergpt has plain RoPE only")
    rope = doc["rope_parameters"]
    if rope is None:
        return _number(doc, "rope_theta", float) if "rope_theta" in doc else DEFAULT_ROPE_THETA
    if not isinstance(rope, dict) or rope.get("rope_type", "default") != "default" or set(rope) - {"rope_type",
                                                                                                    "rope_theta"}:
        raise InteropError(f"config.json: field rope_parameters {str(rope)[:60]} is not plain RoPE "
                           "({'rope_type': 'default', 'rope_theta': ...})")
    return _number(rope, "rope_theta", float) if "rope_theta" in rope else DEFAULT_ROPE_THETA


def _read_hf_weights(src: Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of model.safetensors (or its shards), checked against the expected names and shapes."""
    from safetensors import safe_open

    index = src / "model.safetensors.index.json"
    if (src / "model.safetensors").is_file():
        files = {name: "model.safetensors" for name in expected}
    elif index.is_file():
        doc = _read_json(index, 16 << 20)
        weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise InteropError("model.safetensors.index.json: no weight_map of tensor name -> file name")
        if any("/" in v or v.startswith(".") or not v.endswith(".safetensors") for v in weight_map.values()):
            raise InteropError("model.safetensors.index.json: a shard name leaves the directory")
        files = weight_map
    else:
        raise InteropError(f"{src}: no model.safetensors (nor model.safetensors.index.json)")
    missing = sorted(set(expected) - set(files))
    if missing:
        raise InteropError(f"model.safetensors: missing tensor {missing[0]}")
    tensors: dict[str, torch.Tensor] = {}
    allowed = {torch.float32, torch.bfloat16, torch.float16}
    for shard in sorted(set(files.values())):
        try:
            with safe_open(str(src / shard), framework="pt", device="cpu") as f:
                for name in f.keys():
                    if name not in expected:
                        raise InteropError(f"{shard}: unexpected tensor {name[:80]} (not in a NanoChatForCausalLM)")
                    want = list(expected[name].shape)
                    shape = list(f.get_slice(name).get_shape())
                    if shape != want:
                        raise InteropError(f"{shard}: tensor {name} has shape {shape}, config.json implies {want}")
                    tensors[name] = f.get_tensor(name)
                    if tensors[name].dtype not in allowed:
                        raise InteropError(f"{shard}: tensor {name} is {tensors[name].dtype}; expected float32/16")
        except InteropError:
            raise
        except Exception as e:  # safetensors' own errors for a truncated or malformed file
            raise InteropError(f"{shard}: cannot be read ({str(e)[:80]}); the file is truncated or corrupted") from None
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise InteropError(f"model.safetensors: missing tensor {missing[0]}")
    return tensors


def import_hf(src: str | Path, out: str | Path, overwrite: bool = False, warn: Callable[[str], None] | None = None
              ) -> Path:
    """Read a NanoChatForCausalLM directory `src` (config.json, model.safetensors, tokenizer.json) and save it as
    an embergpt checkpoint `out`. Everything is validated first; InteropError names what does not fit. `warn`
    receives a line when our logit clamp can change results that transformers computes (docs/interop.md)."""
    from embergpt.checkpoint import save_checkpoint
    from embergpt.interop.hf_tokenizer import from_hf_tokenizer
    from embergpt.model import GPT
    from embergpt.tokenizer import TokenizerError

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise InteropError(f"{src}: not a directory; pass a Hugging Face model directory")
    _check_out(out, overwrite)
    if not (src / "config.json").is_file():
        raise InteropError(f"{src}: missing config.json; this is not a Hugging Face model directory")
    config = gpt_config_from_hf(_read_json(src / "config.json"))
    if not (src / "tokenizer.json").is_file():
        raise InteropError(f"{src}: missing tokenizer.json; embergpt needs the tokenizer (a `tokenizers` file)")
    try:
        tokenizer = from_hf_tokenizer(_read_json(src / "tokenizer.json", MAX_TOKENIZER_BYTES))
    except TokenizerError as e:
        raise InteropError(str(e)) from None
    if tokenizer.vocab_size > config.vocab_size:
        raise InteropError(f"tokenizer.json has {tokenizer.vocab_size} ids, more than config.json's vocab_size "
                           f"{config.vocab_size}")

    with torch.device("meta"):  # shapes only: no memory for weights we are about to replace
        expected_ours = GPT(config).state_dict()
    names = hf_names(config.n_layer)
    expected = {names[k]: v for k, v in expected_ours.items() if k in names}
    if set(names) != set(expected_ours):
        raise InteropError("internal: the name map does not cover the model")  # a bug, not a user's input
    hf = _read_hf_weights(src, expected)
    if not all(torch.isfinite(t).all() for t in hf.values()):
        raise InteropError("model.safetensors: a tensor holds NaN or infinity")
    bound = raw_logit_bound(hf["lm_head.weight"])
    if warn is not None and not clamp_is_exact(config.softcap, bound):
        warn(f"note: raw logits can reach {bound:.1f}; embergpt clamps them to ±{LOGIT_CLAMP:g} around the softcap, "
             "so logits above that can differ slightly from transformers' (docs/interop.md)")

    model = GPT(config)
    model.load_state_dict({ours: hf[theirs] for ours, theirs in names.items()}, assign=True)  # keeps the dtype
    meta = {"imported_from": {"format": "hf", "path": str(src.resolve()), "architecture": ARCHITECTURE}}
    return save_checkpoint(model, out, tokenizer=tokenizer, metadata=meta)
