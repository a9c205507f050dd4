"""`embergpt check-features`: print one PASS/FAIL line per capability check; exit 1 if any fails."""

from __future__ import annotations

import argparse

EXAMPLE = """examples:
  embergpt check-features                  (one PASS/FAIL line per check; exit code 1 if any fails)
  embergpt check-features --device cuda"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: $EMBERGPT_DEVICE or best)")


def run(args: argparse.Namespace) -> int:
    from embergpt.check_features import run_checks
    from embergpt.device import resolve_device

    device = resolve_device(args.device)
    print(f"embergpt check-features on {device}")
    checks = run_checks(device)
    section = None
    width = max(len(c.name) for c in checks)
    for c in checks:
        if c.section != section:
            section = c.section
            print(f"\n[{section}]")
        print(f"{'PASS' if c.passed else 'FAIL'}  {c.name:<{width}}  {c.detail}")
    failed = sum(not c.passed for c in checks)
    print(f"\n{len(checks) - failed} passed, {failed} failed")
    return 1 if failed else 0
