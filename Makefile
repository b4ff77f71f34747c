# Two entry points for a fresh machine: `make test` (and, with its issue, `make demo`).
# The environment is created from requirements.txt on first use and reused afterwards.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test env bench clean-env

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

env: $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q

bench: $(STAMP)
	$(PY) scripts/bench_model.py --config configs/sfd/autoguidance_b/train.yaml --batch 1 --mode forward

clean-env:
	rm -rf $(VENV)
