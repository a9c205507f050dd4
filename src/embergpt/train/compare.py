"""`--model compare`: the four rungs of the teaching ladder, trained one after the other with the same budget,
data and optimizer; a table (parameters, val loss, tok/s, time) and one plot of the four val-loss curves."""

from __future__ import annotations

import json
from pathlib import Path

from embergpt.train.config import TrainConfig
from embergpt.train.distributed import DistContext
from embergpt.train.loop import run_loop
from embergpt.train.metrics import plot_comparison, read_metrics
from embergpt.train.result import TrainResult
from embergpt.train.setup import setup_pretraining

ORDER = ("bigram", "single-head", "multi-head", "gpt")


def comparison_table(results: list[TrainResult]) -> str:
    rows = [("model", "params", "val loss", "val bpb", "tok/s", "train s", "steps")]
    for r in results:
        rows.append(
            (
                r.model_kind,
                f"{r.num_params:,}",
                f"{r.val_loss:.4f}" if r.val_loss is not None else "-",
                f"{r.val_bpb:.3f}" if r.val_bpb is not None else "-",
                f"{r.tok_per_s:,.0f}",
                f"{r.train_seconds:.1f}",
                str(r.step),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def compare_ladder(cfg: TrainConfig, ctx: DistContext) -> TrainResult:
    """Train bigram, single-head, multi-head and gpt into OUT/<model>; write OUT/compare.png and compare.json."""
    out = Path(cfg.out)
    results: list[TrainResult] = []
    for kind in ORDER:
        if cfg.verbose and ctx.is_main:
            print(f"\n=== {kind} ===", flush=True)
        sub = cfg.replace(model=kind, out=str(out / kind), resume=None)
        if cfg.time_budget is not None and cfg.eval_seconds is None:
            # models run at very different speeds: evaluate on the clock, so every curve gets ~12 points
            sub = sub.replace(eval_interval=0, eval_seconds=cfg.time_budget / 12)
        result = run_loop(setup_pretraining(sub, ctx))
        results.append(result)
        if result.interrupted:
            break
    plot = None
    if ctx.is_main:
        curves = {r.model_kind: read_metrics(r.metrics_path) for r in results if r.metrics_path is not None}
        plot = plot_comparison(curves, out / "compare.png", title=f"the teaching ladder on {cfg.data}")
        table = comparison_table(results)
        (out / "compare.json").write_text(
            json.dumps(
                [
                    {
                        "model": r.model_kind, "params": r.num_params, "val_loss": r.val_loss, "val_bpb": r.val_bpb,
                        "tok_per_s": r.tok_per_s, "train_seconds": r.train_seconds, "steps": r.step,
                    }
                    for r in results
                ],
                indent=2,
            )
            + "\n"
        )
        print(f"\n{table}\n\nplot: {plot}", flush=True)
    last = results[-1]
    return TrainResult(
        out_dir=out,
        model_kind="compare",
        num_params=sum(r.num_params for r in results),
        step=last.step,
        checkpoint=last.checkpoint,
        interrupted=last.interrupted,
        train_loss=last.train_loss,
        val_loss=last.val_loss,
        val_bpb=last.val_bpb,
        train_seconds=sum(r.train_seconds for r in results),
        wall_seconds=sum(r.wall_seconds for r in results),
        tokens=sum(r.tokens for r in results),
        tok_per_s=last.tok_per_s,
        mfu=last.mfu,
        metrics_path=None,
        plot_path=plot,
        samples=last.samples,
        ladder=results,
    )
