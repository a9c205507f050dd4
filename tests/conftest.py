"""Shared test set-up: a small thread count (the CI machine has 2 cores) and an isolated cache directory."""

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Never touch the user's ~/.cache/embergpt from tests.
    monkeypatch.setenv("EMBERGPT_CACHE", str(tmp_path_factory.getbasetemp() / "embergpt-cache"))
