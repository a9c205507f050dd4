"""Growing a char model's vocabulary for SFT: the chat tokens, and characters its corpus never had (digits, `+`).

    grown_tokenizer(tokenizer, needed_chars) -> tokenizer     the same one when nothing is missing
    resize_vocabulary(model, old, new)                         wte and lm_head rows moved to the new ids

Tokens are matched by what they stand for (a character, or a special token's name), so an id may move (a new
character sorts before <|bos|>); a token the old vocabulary lacked starts as the MEAN of the old rows, in wte and
lm_head alike: its embedding sits among the known ones and its first logit is an average one, neither a
favourite nor impossible. The checkpoint SFT writes holds the grown tokenizer beside the resized model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from embergpt.errors import TokenizerError


def grown_tokenizer(tokenizer: Any, needed_chars: str) -> Any:
    """A tokenizer that can render conversations made of `needed_chars`: `tokenizer` itself when it already can,
    else (char tokenizers only) one with the missing characters and the chat tokens added."""
    from embergpt.tokenizer import CharTokenizer

    if tokenizer.kind != "char":
        if not tokenizer.chat_template:
            raise TokenizerError(
                f"this {tokenizer.kind} tokenizer has no chat tokens (<|user_start|> ...); SFT grows only char "
                "vocabularies: pretrain with a tokenizer that has them (`embergpt train --tokenizer bpe` does)"
            )
        return tokenizer
    missing = set(needed_chars) - set(tokenizer.chars)
    if not missing and tokenizer.chat_template:
        return tokenizer
    return CharTokenizer(sorted(set(tokenizer.chars) | missing), unk=tokenizer.unk, chat=True)


def _pieces(tokenizer: Any) -> list[str]:
    return [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]  # a char, or a special token's name


@torch.no_grad()
def resize_vocabulary(model: nn.Module, old: Any, new: Any) -> list[str]:
    """Rebuild `model`'s wte [V, C] and lm_head [V, C] for tokenizer `new` (in place); returns the added tokens."""
    old_ids = {piece: i for i, piece in enumerate(_pieces(old))}
    new_pieces = _pieces(new)
    added = [piece for piece in new_pieces if piece not in old_ids]
    for owner, name in ((model.transformer.wte, "weight"), (model.lm_head, "weight")):
        old_weight = getattr(owner, name)
        rows = [old_weight[old_ids[p]] if p in old_ids else old_weight.mean(dim=0) for p in new_pieces]
        setattr(owner, name, nn.Parameter(torch.stack(rows).contiguous()))
    model.transformer.wte.num_embeddings = len(new_pieces)
    model.lm_head.out_features = len(new_pieces)
    model.config = model.config.replace(vocab_size=len(new_pieces))
    return added
