"""The `embergpt` command line: a thin layer over library functions.

Each verb lives in `embergpt/commands/<verb>.py`, which defines
`add_arguments(parser)` (cheap: no heavy imports) and `run(args) -> int`.
Errors a user can cause (`EmbergptError`, `ValueError`, a bad flag) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

# verb -> (module under embergpt.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "check-features": ("check_features", "run the model capability report (PASS/FAIL per check)"),
    "tokenizer": ("tokenizer", "train, inspect or use a char/BPE tokenizer"),
    "train": ("train", "train a GPT (or a teaching-ladder model) on a text source"),
    "sft": ("sft", "fine-tune a pretrained checkpoint on conversations (builtin:chat-tasks or JSONL)"),
    "generate": ("generate", "generate text from a checkpoint"),
    "chat": ("chat", "talk to a chat model (after `embergpt sft`): a REPL, or one reply with --prompt"),
    "serve": ("serve", "serve a checkpoint over HTTP with a web UI"),
    "micro": ("micro", "train the pure-Python micro GPT on names"),
    "bench": ("bench", "run a benchmark and print JSON"),
    "export": ("export", "export a checkpoint to another format (--format hf: a transformers directory)"),
    "import": ("import_", "import a model from another format (--format hf: a NanoChatForCausalLM directory)"),
    "eval": ("eval", "evaluate a checkpoint: loss and bits per byte on data, multiple-choice tasks"),
}


def _import_optional(name: str):
    """Import a command module; None if that module itself does not exist (a verb not built yet)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            return None
        raise


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag prints one line (not the whole usage block) and where to find help.

    Sub-commands inherit the class: add_subparsers() builds its parsers with type(self)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from embergpt import __version__

    parser = _Parser(prog="embergpt", description="embergpt: a small-GPT toolkit.")
    parser.add_argument("--version", action="version", version=f"embergpt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for verb, (module_name, help_text) in COMMANDS.items():
        module = _import_optional(f"embergpt.commands.{module_name}")
        if module is None:
            continue
        # A verb's module may add a longer DESCRIPTION and an EXAMPLE (shown as written, after the flags).
        p = sub.add_parser(
            verb, help=help_text, description=getattr(module, "DESCRIPTION", help_text),
            epilog=getattr(module, "EXAMPLE", None), formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    from embergpt.errors import EmbergptError, one_line

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except (EmbergptError, ValueError) as e:
        print(f"embergpt {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # stdout closed by a reader such as `head`
        return 0
    except OSError as e:  # a path the user gave: a directory for a file, a read-only place, a full disk
        where = f": {e.filename}" if e.filename else ""
        print(f"embergpt {args.command}: error: {one_line(f'{e.strerror or e}{where}')}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        if not isinstance(e, MemoryError) and "can't allocate memory" not in str(e) and "out of memory" not in str(e):
            raise
        print(f"embergpt {args.command}: error: out of memory; ask for less (a smaller batch, model, "
              f"--n-samples or --max-tokens)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"embergpt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
