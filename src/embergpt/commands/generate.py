"""`embergpt generate --checkpoint DIR --prompt TEXT`: continue a prompt, streaming the text as it is generated."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """Continue a prompt with a trained checkpoint, streaming the text as it is generated.

Output longer than the model's context is written in rounds (the context's last half is kept: --context-shift).
Sampling: temperature (0 or below 0.001 = greedy), then top-k, top-p and min-p, with a repetition penalty."""
EXAMPLE = """examples:
  embergpt generate --checkpoint runs/shakespeare/final --prompt "ROMEO:" --max-tokens 200 --top-k 50
  echo "To be" | embergpt generate --checkpoint runs/shakespeare/final --prompt - --seed 1 --n-samples 3"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint directory (from train)")
    parser.add_argument("--prompt", required=True, help="the text to continue; '-' reads it from stdin")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="new tokens per sample (default 256; beyond the model's context, see --context-shift)")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 (or below 0.001) = greedy (default 0.8)")
    parser.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens (default off)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling: keep mass >= p (default off)")
    parser.add_argument("--min-p", type=float, default=None, help="keep tokens with p >= min_p * p_max (default off)")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (default 1)")
    parser.add_argument("--seed", type=int, default=None, help="random seed for reproducible samples (default random)")
    parser.add_argument("--n-samples", type=int, default=1,
                        help="samples of the same prompt (one shared prefill; default 1)")
    parser.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                        help="print text as it is generated (default; single sample only)")
    parser.add_argument("--context-shift", action=argparse.BooleanOptionalAction, default=True,
                        help="when the output outgrows the model's context, keep its last half and go on (default); "
                             "--no-context-shift makes that an error")
    parser.add_argument("--echo", action=argparse.BooleanOptionalAction, default=True,
                        help="print the prompt before the generated text (default)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: $EMBERGPT_DEVICE or best)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: bf16 on CUDA, else fp32)")
    parser.add_argument("--compile", nargs="?", const="default", default="off",
                        choices=["off", "default", "max-autotune"],
                        help="compile the decode step: slow start, faster steps (max-autotune: slowest start, "
                             "fastest steps; the best choice with --dtype bfloat16 on CPU; default off; --compile "
                             "alone = default)")


def run(args: argparse.Namespace) -> int:
    from embergpt.inference.loading import MAX_PROMPT_BYTES, continue_prompt, load_for_inference
    from embergpt.input_files import read_text_stream
    from embergpt.sampling import SamplingParams

    if args.prompt == "-" and sys.stdin is None:
        raise ValueError("--prompt - reads the prompt from stdin, but stdin is closed; pipe the text in")
    prompt = read_text_stream(sys.stdin.buffer, max_bytes=MAX_PROMPT_BYTES, what="the prompt on stdin") \
        if args.prompt == "-" else args.prompt
    if args.n_samples < 1:
        raise ValueError(f"--n-samples must be >= 1, got {args.n_samples}")
    if args.max_tokens is not None and args.max_tokens < 0:
        raise ValueError(f"--max-tokens must be >= 0, got {args.max_tokens}")
    sampling = SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
    )
    engine = load_for_inference(args.checkpoint, args.device, args.dtype).engine(args.compile)
    if engine.compile:
        print(f"embergpt generate: compiling the decode step ({engine.compile_mode}); the first tokens wait for it "
              "(a minute or more on a small CPU)...", file=sys.stderr, flush=True)
    streaming = args.stream and args.n_samples == 1
    out = sys.stdout

    def write(text: str) -> None:
        out.write(text)
        out.flush()

    if streaming:
        started = False

        def on_text(piece: str) -> None:
            nonlocal started
            if args.echo and not started:
                write(prompt)
            started = True
            write(piece)

        continue_prompt(engine, prompt, args.max_tokens, sampling, args.seed, 1, on_text, args.context_shift)
        if not started and args.echo:
            write(prompt)
        write("\n")
        return 0

    texts = continue_prompt(engine, prompt, args.max_tokens, sampling, args.seed, args.n_samples,
                            context_shift=args.context_shift)
    for i, text in enumerate(texts):
        if args.n_samples > 1:
            write(f"--- sample {i + 1}/{args.n_samples} ---\n")
        write((prompt if args.echo else "") + text + "\n")
    return 0
