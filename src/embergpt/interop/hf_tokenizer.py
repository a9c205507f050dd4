"""Our tokenizers as Hugging Face `tokenizers` files (tokenizer.json), and back.

BPE: our ranks are tiktoken's (token bytes -> rank, merging the adjacent pair whose concatenation has the lowest
rank). In `tokenizers` that is a byte-level BPE whose vocabulary is the ranks (bytes spelled with GPT-2's
byte-to-unicode alphabet) and whose merges are every split (a, b) of every token into two tokens, ordered by the
rank of a + b: the pair `tokenizers` merges first is then the one tiktoken merges first. `ignore_merges` makes a
pre-token that is itself a token encode as that one token, as tiktoken does. The split regex is ours.

Char: a BPE with no merges over the characters (each character is its own token), no pre-tokenizer, and a Fuse
decoder that joins the pieces without spaces.

Both add `<|bos|>` in front when asked for special tokens (`add_special_tokens=True`, transformers' default),
as our engine does for a text prompt. Special-token names in text are special tokens in `tokenizers` (our
`encode(text, allow_special=True)`); our plain `encode` keeps them text.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from embergpt.errors import TokenizerError
from embergpt.tokenizer import BOS, CHAT_SPECIAL_TOKENS, UNK, BPETokenizer, CharTokenizer, Tokenizer

# nanochat's chat format in Jinja, rendering exactly what embergpt's chat renderer does: <|bos|>, system messages
# joined with blank lines into the next user message (or a user turn of their own at the end), one start/end pair
# per turn, and <|assistant_start|> when a reply is wanted. Sandboxed Jinja has no list.append: strings carry it.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='', has_system=false) -%}"
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- if ns.has_system -%}{%- set ns.system = ns.system + '\\n\\n' + message['content'] -%}"
    "{%- else -%}{%- set ns.system = message['content'] -%}{%- endif -%}"
    "{%- set ns.has_system = true -%}"
    "{%- elif message['role'] == 'user' -%}"
    "{%- if ns.has_system -%}"
    "{{- '<|user_start|>' + ns.system + '\\n\\n' + message['content'] + '<|user_end|>' -}}"
    "{%- set ns.has_system = false -%}"
    "{%- else -%}{{- '<|user_start|>' + message['content'] + '<|user_end|>' -}}{%- endif -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '<|assistant_start|>' + message['content'] + '<|assistant_end|>' -}}"
    "{%- else -%}{{- raise_exception('unknown message role ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if ns.has_system -%}{{- '<|user_start|>' + ns.system + '<|user_end|>' -}}{%- endif -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant_start|>' -}}{%- endif -%}"
)


@lru_cache(maxsize=1)
def byte_alphabet() -> tuple[str, ...]:
    """GPT-2's byte -> printable character table (what `tokenizers`' ByteLevel uses): printable Latin-1 bytes stand
    for themselves, the other 68 bytes for the characters from U+0100 on, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return tuple(table[b] for b in range(256))


def _spell(token: bytes) -> str:
    alphabet = byte_alphabet()
    return "".join(alphabet[b] for b in token)


def bpe_merges(ranks: list[bytes]) -> list[tuple[bytes, bytes]]:
    """Every split of every token into two tokens, ordered by the rank of the token they make (ties: by the ranks
    of the left, then the right piece)."""
    rank = {r: i for i, r in enumerate(ranks)}
    merges: list[tuple[bytes, bytes]] = []
    for token in ranks:  # rank order
        pairs = [(token[:k], token[k:]) for k in range(1, len(token)) if token[:k] in rank and token[k:] in rank]
        merges += sorted(pairs, key=lambda p: (rank[p[0]], rank[p[1]]))
    return merges


def to_hf_tokenizer(tok: Tokenizer) -> Any:
    """A `tokenizers.Tokenizer` that encodes and decodes as `tok` does (see the module docstring)."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer

    if isinstance(tok, BPETokenizer):
        vocab = {_spell(r): i for i, r in enumerate(tok.ranks)}
        merges = [(_spell(a), _spell(b)) for a, b in bpe_merges(tok.ranks)]
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(tok.pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        hf.decoder = decoders.ByteLevel()
    elif isinstance(tok, CharTokenizer):
        hf = HFTokenizer(models.BPE(vocab={c: i for i, c in enumerate(tok.chars)}, merges=[],
                                    unk_token=UNK if tok.unk else None))
        hf.decoder = decoders.Fuse()
    else:
        raise TokenizerError(f"a {type(tok).__name__} cannot be exported to the Hugging Face format")
    specials = sorted(tok.special_tokens.items(), key=lambda item: item[1])
    hf.add_special_tokens([AddedToken(name, special=True, normalized=False) for name, _ in specials])
    for name, want in specials:
        if hf.token_to_id(name) != want:  # the added tokens must land on our ids, right after the vocabulary
            raise TokenizerError(f"special token {name} got id {hf.token_to_id(name)} in the export, not {want}")
    hf.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.bos_id)]
    )
    return hf


def tokenizer_config(tok: Tokenizer, model_max_length: int) -> dict[str, Any]:
    """tokenizer_config.json: the class, the special tokens by role and, for chat tokenizers, the chat template."""
    chat = tok.chat_template
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": "<|assistant_end|>" if chat else BOS,
        "pad_token": BOS,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": True,
        "add_eos_token": False,
    }
    if UNK in tok.special_tokens:
        config["unk_token"] = UNK
    if chat:
        config["chat_template"] = CHAT_TEMPLATE
    return config


# ---------------------------------------------------------------------------------------------------- import


def from_hf_tokenizer(doc: Any) -> Tokenizer:
    """Our tokenizer for a parsed tokenizer.json that `to_hf_tokenizer` could have written (a byte-level BPE with
    a Split pre-tokenizer, or a merge-free char BPE), else a TokenizerError naming what does not fit."""
    if not isinstance(doc, dict) or not isinstance(doc.get("model"), dict):
        raise TokenizerError("tokenizer.json: no 'model' object")
    model = doc["model"]
    if model.get("type") != "BPE":
        raise TokenizerError(f"tokenizer.json: model.type {model.get('type')!r} is not supported (only BPE)")
    vocab, merges = model.get("vocab"), model.get("merges")
    if not isinstance(vocab, dict) or not isinstance(merges, list):
        raise TokenizerError("tokenizer.json: model.vocab must be an object and model.merges a list")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in vocab.values()):
        raise TokenizerError("tokenizer.json: model.vocab ids must be integers")
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise TokenizerError("tokenizer.json: model.vocab ids must be 0..n-1, each once")
    added = doc.get("added_tokens") or []
    if not isinstance(added, list) or not all(isinstance(a, dict) for a in added):
        raise TokenizerError("tokenizer.json: added_tokens must be a list of objects")
    specials = [(a.get("content"), a.get("id")) for a in added]
    if not all(isinstance(n, str) and isinstance(i, int) and not isinstance(i, bool) for n, i in specials):
        raise TokenizerError("tokenizer.json: every added token needs a string content and an integer id")
    specials.sort(key=lambda item: item[1])
    names = [name for name, _ in specials]
    if [i for _, i in specials] != list(range(len(vocab), len(vocab) + len(specials))):
        raise TokenizerError("tokenizer.json: added token ids must follow the vocabulary's, each once")
    if BOS not in names:
        raise TokenizerError(f"tokenizer.json: no {BOS} added token; embergpt needs one")
    by_id = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]

    # What would make `tokenizers` differ from our tokenizers: a normalizer, BPE options we do not have.
    if doc.get("normalizer") is not None:
        raise TokenizerError("tokenizer.json: a normalizer is set; embergpt's tokenizers have none")
    for key, want in (("dropout", None), ("continuing_subword_prefix", None), ("end_of_word_suffix", None),
                      ("byte_fallback", False)):
        if model.get(key, want) != want:
            raise TokenizerError(f"tokenizer.json: model.{key} is {str(model.get(key))[:40]}; embergpt needs {want}")
    decoder = (doc.get("decoder") or {}).get("type") if isinstance(doc.get("decoder"), dict) else None
    pre = doc.get("pre_tokenizer")
    if pre is None and not merges:  # a char tokenizer
        if decoder != "Fuse":
            raise TokenizerError(f"tokenizer.json: a char tokenizer needs the Fuse decoder, not {decoder}")
        unk, chat = model.get("unk_token") == UNK, CHAT_SPECIAL_TOKENS[1] in names
        expected = [BOS, *([UNK] if unk else []), *(CHAT_SPECIAL_TOKENS[1:] if chat else [])]
        if names != expected:
            raise TokenizerError(f"tokenizer.json: a char tokenizer's added tokens must be {expected}, got {names}")
        return CharTokenizer(by_id, unk=unk, chat=chat)

    pattern = _split_pattern(pre)
    if decoder != "ByteLevel":
        raise TokenizerError(f"tokenizer.json: a byte-level BPE needs the ByteLevel decoder, not {decoder}")
    if model.get("ignore_merges") is not True:
        raise TokenizerError("tokenizer.json: model.ignore_merges must be true (a pre-token that is a token encodes "
                             "as that token, as in tiktoken)")
    alphabet = {c: b for b, c in enumerate(byte_alphabet())}
    try:
        ranks = [bytes(alphabet[c] for c in token) for token in by_id]
    except KeyError:
        raise TokenizerError("tokenizer.json: the vocabulary is not byte-level (GPT-2 byte alphabet)") from None
    tok = BPETokenizer(ranks, pattern=pattern, special_tokens=names)
    # tiktoken merges any adjacent pair that makes a token, the lowest-ranked first: the merges must be exactly
    # those pairs, in the order of the token they make (ties between pairs making one token do not matter).
    pairs = []
    for m in merges:
        pair = m.split(" ", 1) if isinstance(m, str) else m
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise TokenizerError(f"tokenizer.json: merge {str(m)[:40]!r} is not a pair of strings")
        pairs.append((pair[0], pair[1]))
    made = [vocab.get(a + b, -1) for a, b in pairs]
    if made != sorted(made) or set(pairs) != {(_spell(a), _spell(b)) for a, b in bpe_merges(ranks)}:
        raise TokenizerError("tokenizer.json: the merges are not every split of every token in rank order (not "
                             "tiktoken-style BPE); embergpt cannot reproduce this tokenizer exactly")
    return tok


def _split_pattern(pre: Any) -> str:
    """The regex of a Sequence[Split(regex, isolated), ByteLevel(use_regex=False)] pre-tokenizer."""
    steps = pre.get("pretokenizers") if isinstance(pre, dict) and pre.get("type") == "Sequence" else None
    if not isinstance(steps, list) or len(steps) != 2 or not all(isinstance(s, dict) for s in steps):
        raise TokenizerError("tokenizer.json: pre_tokenizer must be Sequence[Split, ByteLevel]")
    split, byte_level = steps
    pattern = split.get("pattern")
    if (split.get("type") != "Split" or not isinstance(pattern, dict) or not isinstance(pattern.get("Regex"), str)
            or split.get("behavior") != "Isolated" or split.get("invert")):
        raise TokenizerError("tokenizer.json: pre_tokenizer's first step must be an isolated regex Split")
    if byte_level.get("type") != "ByteLevel" or byte_level.get("use_regex") or byte_level.get("add_prefix_space"):
        raise TokenizerError("tokenizer.json: pre_tokenizer's second step must be ByteLevel without its own regex")
    return pattern["Regex"]


def hf_tokenizer_json(tok: Tokenizer) -> str:
    """tokenizer.json's contents for `tok`."""
    return json.dumps(json.loads(to_hf_tokenizer(tok).to_str()), indent=2, ensure_ascii=False) + "\n"
