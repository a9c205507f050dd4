"""Export to and import from Hugging Face: `transformers`' NanoChat (an independent implementation) computes the
same logits and greedy tokens as our model, `AutoTokenizer` the same ids and text as our tokenizers, and a
transformers-written directory round-trips bitwise. Hostile and foreign directories are refused cleanly."""

import json
import math
import re
import subprocess
from importlib.resources import files
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from embergpt import GPT, GPTConfig, load_checkpoint, save_checkpoint
from embergpt.inference.engine import Engine
from embergpt.interop import InteropError, export_hf, import_hf
from embergpt.interop.hf import clamp_is_exact, raw_logit_bound
from embergpt.tokenizer import BPETokenizer, CharTokenizer

transformers = pytest.importorskip("transformers")

SHAKESPEARE = files("embergpt.corpora").joinpath("shakespeare.txt").read_text()
SAMPLE = SHAKESPEARE[-6000:]  # held-out tail: text the tokenizers below were not trained on


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(SHAKESPEARE[:200_000], 400)  # has nanochat's chat tokens


@pytest.fixture(scope="module")
def char():
    return CharTokenizer.from_text(SHAKESPEARE)


def random_model(config, seed=0, std=0.3):
    torch.manual_seed(seed)
    model = GPT(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            # lm_head small enough that raw logits provably stay within ±50 (so the export is exact)
            p.normal_(0, 0.02 if name == "lm_head.weight" else std)
    return model


def hf_model(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def rel_err(a, b):
    return ((a - b).norm() / a.norm()).item()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, bpe):
    """A small GPT really trained (BPE, GQA) on Shakespeare."""
    from embergpt.train import TrainConfig, train

    tmp = tmp_path_factory.mktemp("trained")
    (tmp / "corpus.txt").write_text(SHAKESPEARE[:30_000])
    bpe.save(tmp / "tok.json")
    cfg = TrainConfig(data=str(tmp / "corpus.txt"), tokenizer=str(tmp / "tok.json"), preset="tiny", seq_len=32,
                      batch_size=8, steps=30, eval_interval=30, eval_steps=2, out=str(tmp / "run"), verbose=False,
                      optimizer="adamw", lr=3e-3)
    return train(cfg).checkpoint


# ------------------------------------------------------------------------------------------------ the model


@pytest.mark.parametrize("n_kv_head", [4, 2, 1], ids=["MHA", "GQA", "MQA"])
def test_random_weights_give_transformers_logits(tmp_path, bpe, n_kv_head):
    config = GPTConfig(vocab_size=bpe.vocab_size, sequence_len=64, n_layer=2, n_head=4, n_kv_head=n_kv_head,
                       n_embd=32)
    save_checkpoint(random_model(config, seed=n_kv_head), tmp_path / "ck", tokenizer=bpe)
    export_hf(tmp_path / "ck", tmp_path / "hf")
    ours, theirs = load_checkpoint(tmp_path / "ck").model, hf_model(tmp_path / "hf")
    idx = torch.randint(0, bpe.vocab_size, (3, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours(idx), theirs(idx).logits
    assert rel_err(a, b) <= 1e-5


@pytest.mark.slow  # trains a small model first (the module's `trained` fixture)
def test_trained_weights_give_transformers_logits_and_greedy_tokens(tmp_path, trained, bpe):
    export_hf(trained, tmp_path / "hf")
    ck = load_checkpoint(trained)
    theirs = hf_model(tmp_path / "hf")
    prompt = [bpe.bos_id, *bpe.encode(SAMPLE[:80])][:20]
    idx = torch.tensor([bpe.encode(SAMPLE[100:400])[:32]])
    with torch.no_grad():
        a, b = ck.model(idx), theirs(idx).logits
    assert rel_err(a, b) <= 1e-5

    ours = Engine(ck.model, ck.tokenizer).generate(prompt, max_new_tokens=12)[0]  # greedy by default
    out = theirs.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                          pad_token_id=bpe.bos_id)
    assert out[0, len(prompt):].tolist() == ours and len(ours) == 12


def test_format1_checkpoint_exports_in_nanochats_direction(tmp_path, bpe):
    """An old checkpoint is converted on load, so transformers sees the logits the old model computed."""
    from test_checkpoint_rotary import old_formula_logits, write_format1

    config = GPTConfig(vocab_size=bpe.vocab_size, sequence_len=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
    model = random_model(config, seed=5)
    idx = torch.randint(0, bpe.vocab_size, (2, 32))
    before = old_formula_logits(model.state_dict(), config, idx)
    write_format1(tmp_path / "old", model, bpe)
    export_hf(tmp_path / "old", tmp_path / "hf")
    with torch.no_grad():
        assert rel_err(before, hf_model(tmp_path / "hf")(idx).logits) <= 1e-5


def test_clamp_exactness_rule():
    # within ±50 the clamps never act; beyond, only a saturated tanh (tiny softcap) keeps the softcap exact
    assert clamp_is_exact(15.0, 49.0) and clamp_is_exact(None, 49.0) and clamp_is_exact(80.0, 49.0)
    assert not clamp_is_exact(15.0, 60.0) and not clamp_is_exact(None, 60.0) and not clamp_is_exact(80.0, 60.0)
    assert clamp_is_exact(5.0, 1e6)  # tanh(10) == 1.0 in fp32
    # the bound is a real bound: no input drives a logit above it
    config = GPTConfig(vocab_size=30, sequence_len=16, n_layer=1, n_head=2, n_kv_head=1, n_embd=16, softcap=None)
    model = random_model(config, std=1.0)
    bound = raw_logit_bound(model.lm_head.weight)
    with torch.no_grad():
        logits = model(torch.randint(0, 30, (8, 16)))
    assert logits.abs().max() <= min(bound, 50.0) and bound > logits.abs().max() / 2


def test_what_transformers_cannot_represent_is_refused(tmp_path, bpe):
    from embergpt.ladder import LADDER

    config = GPTConfig(vocab_size=bpe.vocab_size, sequence_len=16, n_layer=1, n_head=2, n_kv_head=1, n_embd=16)
    loud = random_model(config, std=1.0)
    with torch.no_grad():
        loud.lm_head.weight.mul_(1000)  # raw logits can pass 50: our clamp would act, transformers has none
    save_checkpoint(loud, tmp_path / "loud", tokenizer=bpe)
    with pytest.raises(InteropError, match="softcap=15.0 .* not be exact"):
        export_hf(tmp_path / "loud", tmp_path / "out1")
    nocap = random_model(config.replace(softcap=None), std=1.0)
    with torch.no_grad():
        nocap.lm_head.weight.mul_(1000)
    save_checkpoint(nocap, tmp_path / "nocap", tokenizer=bpe)
    with pytest.raises(InteropError, match="softcap=None"):
        export_hf(tmp_path / "nocap", tmp_path / "out1")
    save_checkpoint(LADDER["bigram"](config), tmp_path / "ladder", tokenizer=bpe)
    save_checkpoint(random_model(config), tmp_path / "notok")
    for ck, why in [("ladder", "teaching-ladder"), ("notok", "no tokenizer")]:
        with pytest.raises(InteropError, match=why):
            export_hf(tmp_path / ck, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out1").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


# ------------------------------------------------------------------------------------------------ tokenizers


@pytest.fixture(scope="module")
def exported_tokenizers(tmp_path_factory, bpe, char):
    out = {}
    for name, tok in [("bpe", bpe), ("char", char), ("char-chat", CharTokenizer.from_text(SHAKESPEARE, chat=True))]:
        tmp = tmp_path_factory.mktemp(name)
        config = GPTConfig(vocab_size=tok.vocab_size, sequence_len=16, n_layer=1, n_head=2, n_kv_head=1, n_embd=16)
        save_checkpoint(random_model(config), tmp / "ck", tokenizer=tok)
        export_hf(tmp / "ck", tmp / "hf")
        out[name] = (tok, transformers.AutoTokenizer.from_pretrained(tmp / "hf"))
    return out


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_autotokenizer_matches_ours_on_the_corpus(exported_tokenizers, kind):
    ours, theirs = exported_tokenizers[kind]
    ids = ours.encode(SAMPLE)
    assert theirs(SAMPLE, add_special_tokens=False)["input_ids"] == ids
    assert theirs(SAMPLE)["input_ids"] == [ours.bos_id, *ids]  # a text prompt starts with BOS, as in our engine
    assert theirs.decode(ids) == ours.decode(ids) == SAMPLE
    with_specials = "<|bos|>" + SAMPLE[:300] + "<|bos|>"
    assert theirs(with_specials, add_special_tokens=False)["input_ids"] == ours.encode(with_specials, True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_autotokenizer_matches_ours_on_any_unicode(exported_tokenizers, text):
    ours, theirs = exported_tokenizers["bpe"]
    ids = ours.encode(text, allow_special=True)
    assert theirs(text, add_special_tokens=False)["input_ids"] == ids
    assert theirs.decode(ids) == ours.decode(ids) == text


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_decoding_any_ids_matches(exported_tokenizers, data):
    """Including byte sequences that are not UTF-8: both put U+FFFD in the same places."""
    for ours, theirs in exported_tokenizers.values():  # bpe, char, char with chat tokens
        ids = data.draw(st.lists(st.integers(0, ours.vocab_size - 1), max_size=40))
        assert theirs.decode(ids) == ours.decode(ids)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.data())
def test_char_autotokenizer_on_any_text_of_its_alphabet(exported_tokenizers, text):
    ours, theirs = exported_tokenizers["char"]
    s = text.draw(st.text(alphabet=ours.chars, max_size=300))
    assert theirs(s, add_special_tokens=False)["input_ids"] == ours.encode(s)


def render_ours(messages, tokenizer):
    from embergpt.chat.template import render_chat  # what the server renders OpenAI messages with

    return render_chat([(m["role"], m["content"]) for m in messages], tokenizer).ids


CONVERSATIONS = [
    [{"role": "user", "content": "Who art thou?"}],
    [{"role": "system", "content": "Speak as a king."}, {"role": "user", "content": "Who art thou?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Good morrow."},
     {"role": "system", "content": "Be brief."}, {"role": "system", "content": "And kind."},
     {"role": "user", "content": "And now?"}],
    [{"role": "system", "content": "Only a system message."}],
    [{"role": "user", "content": "a"}, {"role": "system", "content": "late system"}],
]


@pytest.mark.parametrize("kind", ["bpe", "char-chat"])
@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_chat_template_renders_like_ours(exported_tokenizers, messages, kind):
    ours, theirs = exported_tokenizers[kind]
    ids = theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert list(ids) == render_ours(messages, ours)
    from embergpt.chat.template import ConversationError, render_for_generation

    try:  # the chat-training renderer agrees too, on the conversations it accepts (alternating, ending with user)
        assert list(ids) == render_for_generation(messages, ours)
    except ConversationError:
        assert messages[-1]["role"] != "user" or [m["role"] for m in messages].count("system") > 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(turns=st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]),
                                st.text(max_size=30).filter(lambda s: "<|" not in s)), min_size=1, max_size=6))
def test_chat_template_renders_like_ours_on_any_conversation(exported_tokenizers, turns):
    ours, theirs = exported_tokenizers["bpe"]
    messages = [{"role": r, "content": c} for r, c in turns]
    ids = theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert list(ids) == render_ours(messages, ours)


def test_exported_tokenizers_import_back_exactly(exported_tokenizers):
    from embergpt.interop.hf_tokenizer import from_hf_tokenizer, to_hf_tokenizer

    for ours, _ in exported_tokenizers.values():  # bpe, char, char with chat tokens
        assert from_hf_tokenizer(json.loads(to_hf_tokenizer(ours).to_str())).to_json_bytes() == ours.to_json_bytes()


def test_tokenizer_written_by_transformers_tiktoken_converter_imports_exactly(bpe, tmp_path):
    """nanochat's HF models carry a tokenizer.json from transformers' TikTokenConverter: it imports as ours."""
    import base64

    from transformers.convert_slow_tokenizer import TikTokenConverter

    from embergpt.interop.hf_tokenizer import from_hf_tokenizer

    ranks = tmp_path / "vocab.tiktoken"
    ranks.write_text("".join(f"{base64.b64encode(r).decode()} {i}\n" for i, r in enumerate(bpe.ranks)))
    converted = TikTokenConverter(vocab_file=str(ranks), pattern=bpe.pattern,
                                  extra_special_tokens=bpe.special_tokens).converted()
    assert from_hf_tokenizer(json.loads(converted.to_str())).to_json_bytes() == bpe.to_json_bytes()


@pytest.mark.parametrize("change, message", [
    (lambda d: d.__setitem__("normalizer", {"type": "NFC"}), "normalizer"),
    (lambda d: d["model"].__setitem__("ignore_merges", False), "ignore_merges"),
    (lambda d: d["model"].__setitem__("byte_fallback", True), "byte_fallback"),
    (lambda d: d.__setitem__("decoder", {"type": "Metaspace"}), "ByteLevel decoder"),
    (lambda d: d["model"]["merges"].reverse(), "merges are not"),
    (lambda d: d["model"]["merges"].pop(), "merges are not"),
    (lambda d: d["added_tokens"][0].__setitem__("id", 5), "added token ids"),
    (lambda d: d["model"]["vocab"].__setitem__("Ġthe", 10**6), "vocab ids must be 0..n-1"),
    (lambda d: d["added_tokens"][0].__setitem__("content", "<|start|>"), "no <|bos|>"),
])
def test_foreign_tokenizers_that_we_cannot_reproduce_are_refused(bpe, change, message):
    from embergpt.interop.hf_tokenizer import from_hf_tokenizer, to_hf_tokenizer
    from embergpt.tokenizer import TokenizerError

    doc = json.loads(to_hf_tokenizer(bpe).to_str())
    change(doc)
    with pytest.raises(TokenizerError, match=re.escape(message)):
        from_hf_tokenizer(doc)


def test_char_tokenizer_has_no_chat_template(exported_tokenizers):
    assert not exported_tokenizers["char"][1].chat_template


# ------------------------------------------------------------------------------------------------ import


@pytest.fixture(scope="module")
def transformers_dir(tmp_path_factory, bpe):
    """A directory written by transformers itself (bf16 weights), with our tokenizer files."""
    tmp = tmp_path_factory.mktemp("foreign")
    config = transformers.NanoChatConfig(vocab_size=bpe.vocab_size, hidden_size=32, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=64, final_logit_softcapping=15.0,
                                         bos_token_id=bpe.bos_id, eos_token_id=bpe.bos_id, pad_token_id=bpe.bos_id)
    torch.manual_seed(3)
    model = transformers.NanoChatForCausalLM(config).to(torch.bfloat16)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.02 if "lm_head" in name else 0.3)
    model.save_pretrained(tmp / "hf")
    # its tokenizer files, as our exporter writes them
    save_checkpoint(GPT(GPTConfig(vocab_size=bpe.vocab_size, n_layer=1, n_head=2, n_kv_head=1, n_embd=16)),
                    tmp / "tok_ck", tokenizer=bpe)
    export_hf(tmp / "tok_ck", tmp / "tok_hf")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp / "hf" / name).write_bytes((tmp / "tok_hf" / name).read_bytes())
    return tmp / "hf"


def test_transformers_directory_imports_exports_bitwise(tmp_path, transformers_dir, bpe):
    import_hf(transformers_dir, tmp_path / "ck")
    export_hf(tmp_path / "ck", tmp_path / "hf")
    a, b = load_file(str(transformers_dir / "model.safetensors")), load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype == torch.bfloat16 and torch.equal(a[name], b[name]), name
    ours = json.loads((tmp_path / "hf" / "config.json").read_text())
    theirs = transformers.NanoChatConfig.from_pretrained(transformers_dir).to_dict()
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "final_logit_softcapping",
                  "rope_parameters"):
        assert ours[field] == theirs[field], field
    # and the imported model computes what transformers computes (both in fp32)
    ck = load_checkpoint(tmp_path / "ck")
    idx = torch.randint(0, bpe.vocab_size, (2, 40))
    with torch.no_grad():
        assert rel_err(ck.model(idx), hf_model(transformers_dir)(idx).logits) <= 1e-5
    assert ck.tokenizer.to_json_bytes() == bpe.to_json_bytes()


@pytest.mark.slow  # trains a small model first (the module's `trained` fixture)
def test_export_import_export_is_bitwise(tmp_path, trained):
    export_hf(trained, tmp_path / "hf1")
    import_hf(tmp_path / "hf1", tmp_path / "ck")
    export_hf(tmp_path / "ck", tmp_path / "hf2")
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json"):
        assert (tmp_path / "hf1" / name).read_bytes() == (tmp_path / "hf2" / name).read_bytes(), name


def run_cli(capsys, *args):
    """The `embergpt` command line, in this process (the same code path as the installed script, without paying
    a Python start-up per call): (exit code, stdout, stderr)."""
    from embergpt.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def tamper(src: Path, dst: Path, config=None, drop=(), weights=None):
    """A copy of HF directory `src` with config.json fields changed (None deletes), files dropped, weights replaced."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name not in drop:
            (dst / f.name).write_bytes(f.read_bytes())
    if config is not None:
        doc = json.loads((src / "config.json").read_text())
        for k, v in config.items():
            doc.pop(k) if v is None else doc.__setitem__(k, v)
        (dst / "config.json").write_text(json.dumps(doc))
    if weights is not None:
        state = load_file(str(src / "model.safetensors"))
        save_file(weights(state), str(dst / "model.safetensors"))
    return dst


def _wrong_shape(state):
    state["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(3, 32)
    return state


def _extra_tensor(state):
    state["model.layers.9.mlp.fc1.weight"] = torch.zeros(2, 2)
    return state


def _missing_tensor(state):
    state.pop("lm_head.weight")
    return state


HOSTILE = {
    "unknown model_type": (dict(config={"model_type": "llama"}), "model_type 'llama'"),
    "other architecture": (dict(config={"architectures": ["LlamaForCausalLM"]}), "architectures"),
    "gelu": (dict(config={"hidden_act": "gelu"}), "field hidden_act"),
    "rope scaling": (dict(config={"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}),
                     "field rope_parameters"),
    "mlp width": (dict(config={"intermediate_size": 100}), "field intermediate_size"),
    "tied": (dict(config={"tie_word_embeddings": True}), "field tie_word_embeddings"),
    "remote code": (dict(config={"auto_map": {"AutoModel": "x.Y"}}), "field auto_map"),
    "unknown field": (dict(config={"sliding_window": 128}), "field sliding_window"),
    "negative size": (dict(config={"hidden_size": -32}), "hidden_size must be a positive int"),
    "bool layers": (dict(config={"num_hidden_layers": True}), "num_hidden_layers must be a positive int"),
    "bos past the vocabulary": (dict(config={"bos_token_id": 10**9}), "bos_token_id 1000000000 is not a token id"),
    "negative eos in a list": (dict(config={"eos_token_id": [1, -1]}), "eos_token_id \\[1, -1\\] is not a token id"),
    "string pad": (dict(config={"pad_token_id": "0"}), "pad_token_id 0 is not a token id"),
    "NaN epsilon": (dict(config={"rms_norm_eps": math.nan}), "NaN is not valid JSON"),
    "no tokenizer": (dict(drop=("tokenizer.json",)), "missing tokenizer.json"),
    "no config": (dict(drop=("config.json",)), "missing config.json"),
    "no weights": (dict(drop=("model.safetensors",)), "no model.safetensors"),
    "wrong shape": (dict(weights=_wrong_shape), "k_proj.weight has shape"),
    "extra tensor": (dict(weights=_extra_tensor), "unexpected tensor"),
    "missing tensor": (dict(weights=_missing_tensor), "missing tensor lm_head.weight"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_directories_are_one_line_errors(tmp_path, transformers_dir, case):
    changes, message = HOSTILE[case]
    src = tamper(transformers_dir, tmp_path / "src", **changes)
    with pytest.raises(InteropError, match=message):
        import_hf(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_broken_files_through_the_cli(tmp_path, transformers_dir, capsys):
    cases = {}
    cases["truncated weights"] = tamper(transformers_dir, tmp_path / "a")
    data = (tmp_path / "a" / "model.safetensors").read_bytes()
    (tmp_path / "a" / "model.safetensors").write_bytes(data[: len(data) // 2])
    cases["nested json"] = tamper(transformers_dir, tmp_path / "b")
    (tmp_path / "b" / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    cases["huge config"] = tamper(transformers_dir, tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text(" " * (2 << 20) + "{}")
    cases["foreign tokenizer"] = tamper(transformers_dir, tmp_path / "d")
    doc = json.loads((tmp_path / "d" / "tokenizer.json").read_text())
    doc["model"]["type"] = "WordPiece"
    (tmp_path / "d" / "tokenizer.json").write_text(json.dumps(doc))
    cases["nan weights"] = tamper(transformers_dir, tmp_path / "e",
                                  weights=lambda s: {**s, "lm_head.weight": s["lm_head.weight"] * float("nan")})
    for name, src in cases.items():
        r = run_cli(capsys, "import", src, tmp_path / f"out-{name}", "--format", "hf")
        assert r.returncode == 2, (name, r.stderr)
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("embergpt import: error:"), (name, r.stderr)
        assert not (tmp_path / f"out-{name}").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.slow  # trains a small model first (the module's `trained` fixture)
def test_cli_export_then_import(tmp_path, trained, capsys):
    r = run_cli(capsys, "export", trained, tmp_path / "hf", "--format", "hf")
    assert r.returncode == 0, r.stderr
    r = run_cli(capsys, "export", trained, tmp_path / "hf", "--format", "hf")
    assert r.returncode == 2 and "already exists" in r.stderr and r.stderr.count("\n") == 1
    r = run_cli(capsys, "import", tmp_path / "hf", tmp_path / "ck", "--format", "hf")
    assert r.returncode == 0, r.stderr
    a, b = load_checkpoint(trained).model.state_dict(), load_checkpoint(tmp_path / "ck").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    card = (tmp_path / "hf" / "README.md").read_text()
    meta = load_checkpoint(trained).metadata
    assert f"| steps | {meta['step']} |" in card and f"{meta['metrics']['val_loss']:.4f}" in card
    assert "corpus.txt" in card and f"{meta['metrics']['val_bpb']:.4f}" in card
