"""`embergpt bench serve`: a tiny real run (a real server on 127.0.0.1, the engine and HF in this process).

No timing assertions (the machine is shared): only that every figure of issue 12 is there and that the ratios are
the ones of the figures they are made of.
"""

from __future__ import annotations

import argparse
import sys

import pytest

from embergpt.bench import serve


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.slow
def test_bench_serve_reports_engine_hf_clients_ratios_and_time_to_ready() -> None:
    pytest.importorskip("transformers")
    report = serve.run(_args("--modes", "off:float32", "--clients", "1,16", "--seconds", "0.5", "--repeats", "1",
                             "--max-tokens", "4", "--prompt-tokens", "4", "--device", "cpu"))
    assert report["benchmark"] == "serve" and report["clients"] == [1, 16]
    (mode,) = report["modes"]
    assert mode["mode"] == "off:float32" and "error" not in mode and "warning" not in mode
    assert report["fastest"] == {"clients_1": "off:float32", "clients_16": "off:float32"}

    # time to ready, seen from here (process start) and by the server (from loading the model): both starts
    ready = mode["time_to_ready"]
    for start in ("cold", "warm"):
        assert ready[f"{start}_s"] > 0 and ready[f"{start}_warmup_s"] == 0  # eager: nothing to warm up
        assert 0 <= ready[f"{start}_server_s"] < ready[f"{start}_s"]
        if sys.platform == "linux":  # the server's CPU seconds, from /proc
            assert ready[f"{start}_cpu_s"] > 0

    assert mode["engine"]["b1_tok_s"] > 0 and mode["engine"]["b16_tok_s"] > 0
    assert mode["hf"]["b1_tok_s"] > 0 and mode["hf"]["b16_tok_s"] > 0
    one, sixteen = mode["levels"]
    assert (one["clients"], sixteen["clients"]) == (1, 16)
    assert one["errors"] == sixteen["errors"] == 0 and one["requests"] > 0 and sixteen["requests"] >= 16
    assert one["mean_batch"] == 1.0 and sixteen["mean_batch"] > 1  # 16 clients share decode steps
    # one turn: each ratio is the quotient of the two medians it compares (up to their rounding)
    expected = {
        "clients_1_vs_engine_b1": one["tok_per_s"] / mode["engine"]["b1_tok_s"],
        "clients_1_vs_hf_b1": one["tok_per_s"] / mode["hf"]["b1_tok_s"],
        "clients_16_vs_engine_b16": sixteen["tok_per_s"] / mode["engine"]["b16_tok_s"],
        "clients_16_vs_hf_b16": sixteen["tok_per_s"] / mode["hf"]["b16_tok_s"],
    }
    assert set(mode["ratios"]) == set(expected)
    for name, value in expected.items():
        assert mode["ratios"][name] == pytest.approx(value, rel=0.02, abs=0.01), name
    goals = mode["goals"]
    assert set(goals) == {*expected, "ttft_ms_p99_16_clients", "cold_ready_s", "warm_ready_s", "errors"}
    for name in expected:
        assert goals[name]["value"] == mode["ratios"][name]
        assert goals[name]["met"] == (goals[name]["value"] >= serve.GOALS[name])
    assert goals["ttft_ms_p99_16_clients"]["value"] == sixteen["ttft_ms_p99"]
    assert goals["cold_ready_s"]["met"] == (ready["cold_s"] <= serve.COLD_READY_GOAL_S)
    assert goals["errors"] == 0


def test_modes_are_compile_dtype_pairs_and_auto_is_what_serve_runs() -> None:
    import torch

    from embergpt.inference.defaults import serve_defaults

    assert serve.parse_modes("off:float32, default:bfloat16,max-autotune") == [
        ("off", "float32"), ("default", "bfloat16"), ("max-autotune", "auto")]
    cpu = torch.device("cpu")
    assert serve.resolve_mode(("auto", "auto"), cpu) == serve_defaults(cpu)
    assert serve.resolve_mode(("off", "auto"), cpu) == ("off", serve_defaults(cpu)[1])
    for bad in ("", "fast:float32", "default:float64", "off:float32:x"):
        with pytest.raises(ValueError, match="--modes takes"):
            serve.parse_modes(bad)


@pytest.mark.parametrize("argv, needle", [
    (["--modes", "fast"], "--modes"),
    (["--modes", "off:float16", "--device", "cpu"], "float16"),
    (["--ready-timeout", "inf"], "--ready-timeout"),
    (["--prompt-tokens", "1500", "--max-tokens", "100"], "sequence_len"),
])
def test_bad_flags_fail_before_anything_is_built(argv: list[str], needle: str) -> None:
    from embergpt.errors import EmbergptError

    with pytest.raises((ValueError, EmbergptError), match=needle):
        serve.run(_args(*argv))
