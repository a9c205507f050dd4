# Every target does its own set-up: a fresh clone needs nothing but python3 (>=3.10) and make.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.embergpt-installed

.PHONY: demo chat-demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch: the bounded range resolves to it here (an open range pulls CUDA wheels).
	$(PY) -m pip install -q "torch>=2.4,<2.14"
	$(PY) -m pip install -q -e ".[dev,serve,bench]"
	touch $(STAMP)

# The main job: train a char-level Shakespeare GPT on the CPU (~2 minutes), print samples, the val loss,
# where the checkpoint is and the command that serves it.
demo: $(STAMP)
	$(VENV)/bin/embergpt train --demo

# Chat: make demo's checkpoint (trained first when runs/shakespeare/final is missing), fine-tuned on the built-in
# chat tasks (spell, reverse, count, arithmetic with the calculator tool, identity) for at most 240 s, then the
# held-out accuracy per task. At most 100 + 240 s = 5 min 40 s of training all told.
chat-demo: $(STAMP)
	test -d runs/shakespeare/final || $(VENV)/bin/embergpt train --demo
	$(VENV)/bin/embergpt sft runs/shakespeare/final --out runs/chat --overwrite --time-budget 240 --steps 800

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info .pytest_cache runs artifacts
