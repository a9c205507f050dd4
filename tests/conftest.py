"""Shared test set-up: a small thread count (the CI machine has 2 cores) and an isolated cache directory."""

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
# Servers started by tests decode eagerly (a fast start) unless a test asks for another configuration; the
# default configuration's own start-up is tested in tests/test_serve_fast_path.py.
os.environ.setdefault("EMBERGPT_COMPILE", "off")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Never touch the user's ~/.cache/embergpt from tests.
    monkeypatch.setenv("EMBERGPT_CACHE", str(tmp_path_factory.getbasetemp() / "embergpt-cache"))
