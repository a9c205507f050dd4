"""`embergpt chat --checkpoint DIR`: talk to a chat model, turn by turn, reusing the KV cache between turns."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """Talk to a chat model (a checkpoint trained with `embergpt sft`, whose tokenizer has the chat tokens).

Interactive: type a message, the reply streams back; /clear forgets the conversation, /exit (or Ctrl-D) leaves.
With --prompt, prints one reply and exits (for scripts). The calculator tool runs when the model calls it, shown
as [calculator: 12+34 = 46]. Each turn prefills only itself: the conversation so far stays in the KV cache."""
EXAMPLE = """example:
  embergpt chat --checkpoint runs/chat/final
  embergpt chat --checkpoint runs/chat/final --prompt 'Spell the word "apple".' --temperature 0"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="DIR", help="chat checkpoint directory (from sft)")
    parser.add_argument("--prompt", default=None, help="one message: print the reply and exit (default: a REPL)")
    parser.add_argument("--system", default=None, help="a system prompt for the conversation (default: none)")
    parser.add_argument("--max-tokens", type=int, default=256, help="most tokens per reply (default 256)")
    parser.add_argument("--temperature", type=float, default=0.6, help="0 = greedy (default 0.6)")
    parser.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens (default off)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling: keep mass >= p (default off)")
    parser.add_argument("--min-p", type=float, default=None, help="keep tokens with p >= min_p * p_max (default off)")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (default 1)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (turn k uses seed + k; default random)")
    parser.add_argument("--raw", action="store_true",
                        help="print tool calls as their special tokens (default: as [calculator: 1+2 = 3])")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: $EMBERGPT_DEVICE or best)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: bf16 on CUDA, else fp32)")


def run(args: argparse.Namespace) -> int:
    from embergpt.chat.session import ChatSession, pretty_tools
    from embergpt.inference.loading import MAX_PROMPT_BYTES, load_for_inference
    from embergpt.input_files import read_text_line
    from embergpt.sampling import SamplingParams

    if args.max_tokens < 1:
        raise ValueError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    sampling = SamplingParams(args.temperature, args.top_k, args.top_p, args.min_p, args.repetition_penalty)
    engine = load_for_inference(args.checkpoint, args.device, args.dtype).engine()
    session = ChatSession(engine, args.system, sampling, args.max_tokens, args.seed)
    show = (lambda text: text) if args.raw else pretty_tools
    out = sys.stdout

    def turn(message: str, stream: bool) -> None:
        text = ""
        for event in session.send(message):
            text += event.text
            if stream and event.kind == "token" and not ("<|" in text and not args.raw):
                out.write(event.text)
                out.flush()
        if not stream or ("<|" in text and not args.raw):
            out.write(show(text) if not stream else "\r" + show(text))
        out.write("\n")
        out.flush()

    if args.prompt is not None:
        turn(args.prompt, stream=False)
        return 0
    print("embergpt chat: /clear forgets the conversation, /exit leaves", file=sys.stderr)
    while True:
        if sys.stdin.isatty():  # a terminal: input() edits the line (the tty itself caps its length)
            try:
                message = input("you> ")
            except EOFError:
                message = None
        else:  # a pipe or a file: read a bounded line (/dev/zero piped in has no newline to stop input())
            out.write("you> ")
            out.flush()
            message = read_text_line(sys.stdin.buffer, max_bytes=MAX_PROMPT_BYTES, what="a message on stdin")
        if message is None:
            print()
            return 0
        if message.strip() in ("/exit", "/quit"):
            return 0
        if message.strip() == "/clear":
            session.clear()
            print("(conversation cleared)", file=sys.stderr)
            continue
        if not message.strip():
            continue
        out.write("assistant> ")
        try:
            turn(message, stream=True)
        except ValueError as e:  # the conversation outgrew the context: say so and go on
            print(f"\nembergpt chat: {e}", file=sys.stderr)
