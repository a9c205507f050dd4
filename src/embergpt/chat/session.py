"""A conversation with a chat model that keeps its KV cache between turns: what `embergpt chat` runs.

    session = ChatSession(engine, system="Be brief.", sampling=SamplingParams(0.6), max_new_tokens=256)
    for event in session.send("What is 12 + 34?"):       # token events as they are generated
        print(event.text, end="")
    session.clear()

The conversation is kept as token ids: what the model read and what it wrote (its tool calls and their forced
outputs included), in nanochat's chat template. A turn appends `<|user_start|> text <|user_end|>
<|assistant_start|>` and decodes the reply in the one decode core (a one-slot `Batch` with `reuse_prefix`), so
only the new turn is prefilled: the cache already holds everything before it. nanochat's chat_cli re-prefills
the whole history at every turn; `embergpt bench chat` measures the difference.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from embergpt.chat.template import render_for_generation
from embergpt.inference.batch import Event, Request
from embergpt.inference.engine import Engine
from embergpt.sampling import SamplingParams
from embergpt.whole_numbers import MAX_SEED, check_seed, is_whole


class ChatSession:
    """One conversation on `engine` (whose tokenizer must have the chat tokens). `reuse_cache=False` re-prefills
    the whole history every turn (the reference the cached turns are tested against)."""

    def __init__(
        self,
        engine: Engine,
        system: str | None = None,
        sampling: SamplingParams | None = None,
        max_new_tokens: int = 256,
        seed: int | None = None,
        reuse_cache: bool = True,
    ) -> None:
        tok = engine.tokenizer
        if tok is None or not getattr(tok, "chat_template", False):
            raise ValueError("this model's tokenizer has no chat tokens (<|user_start|> ...): train it with "
                             "`embergpt sft` first")
        self.engine, self.tokenizer = engine, tok
        self.system = system
        self.sampling = sampling or SamplingParams(temperature=0.0)
        if not is_whole(max_new_tokens, 1, math.inf):
            raise ValueError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}")
        self.max_new_tokens = max_new_tokens
        self.seed = None if seed is None else check_seed(seed)
        self.reuse_cache = reuse_cache
        self.special = tok.special_tokens
        # a reply ends at <|assistant_end|> (or <|bos|>); the chat benchmark empties this to decode alike
        self.stop_ids = frozenset({self.special["<|assistant_end|>"], self.special["<|bos|>"]})
        self.ids: list[int] = []  # the conversation so far
        self.turns = 0
        self._batch = engine.batch(1, reuse_prefix=reuse_cache)

    @property
    def counts(self) -> dict[str, int]:
        """Prefill work so far: prefill_tokens (run through the model) and reused_tokens (read from the cache)."""
        return self._batch.counts

    def clear(self) -> None:
        """Forget the conversation (the next turn starts afresh)."""
        self.ids, self.turns = [], 0

    def prompt_for(self, user_text: str) -> list[int]:
        """The ids the model reads before its next reply: the conversation so far and the new user turn."""
        if not self.ids:
            messages = ([{"role": "system", "content": self.system}] if self.system else []) + [
                {"role": "user", "content": user_text}]
            return render_for_generation({"messages": messages}, self.tokenizer)
        sp = self.special
        return [*self.ids, sp["<|user_start|>"], *self.tokenizer.encode(user_text), sp["<|user_end|>"],
                sp["<|assistant_start|>"]]

    def send(self, user_text: str) -> Iterator[Event]:
        """Run one turn: yields the reply's token events (their `text` is the reply's text as it completes,
        tool calls and outputs included as their special tokens' names) and finally its done event."""
        if not user_text.strip():
            raise ValueError("the message is empty; type something")
        prompt = self.prompt_for(user_text)
        sp = self.special
        room = (self.engine.sequence_len or 0) - len(prompt)
        if room < 2:
            raise ValueError(f"the conversation is {len(prompt)} tokens, the model's context is "
                             f"{self.engine.sequence_len}: /clear it to go on")
        # turn k uses seed + k, wrapped so that a seed near the top of the range stays one the generator takes
        seed = None if self.seed is None else (self.seed + self.turns) % (MAX_SEED + 1)
        request = Request(prompt, min(self.max_new_tokens, room - 1), self.sampling, seed,
                          stop_ids=self.stop_ids, tools=True, text=True)
        generated: list[int] = []
        events = self._batch.add([request])
        while True:
            for event in events:
                if event.kind == "error":
                    raise RuntimeError(event.error)
                if event.kind == "token":
                    generated.append(event.token)
                yield event
                if event.kind == "done":
                    self.ids = [*prompt, *generated, sp["<|assistant_end|>"]]
                    self.turns += 1
                    return
            events = self._batch.step()

    def reply(self, user_text: str) -> str:
        """One turn, returning the reply's whole text."""
        return "".join(e.text for e in self.send(user_text))


def pretty_tools(text: str) -> str:
    """Reply text with the calculator's tokens shown for people: "[calculator: 12+34 = 46]"."""
    import re

    text = re.sub(r"<\|python_start\|>(.*?)<\|python_end\|>\s*<\|output_start\|>(.*?)<\|output_end\|>",
                  lambda m: f"[calculator: {m.group(1)} = {m.group(2)}]", text, flags=re.S)
    return text.replace("<|python_start|>", "[calculator: ").replace("<|python_end|>", "]")

