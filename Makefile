# Two entry points for a fresh machine: `make demo` (the whole pipeline on Fashion-MNIST, CPU, offline) and
# `make test`.
# The environment is created from requirements.txt on first use and reused afterwards.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test env bench clean-env data sweep study weights

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

env: $(STAMP)

# Fashion-MNIST from Debian's package when missing (the pipeline falls back to torchvision's download when online).
data:
	@test -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz || \
		(command -v apt-get >/dev/null && ($(SUDO) apt-get install -y dataset-fashion-mnist || \
		($(SUDO) apt-get update && $(SUDO) apt-get install -y dataset-fashion-mnist)) || \
		echo "dataset-fashion-mnist not installable here; the demo will try torchvision's download")

demo: $(STAMP) data
	OMP_NUM_THREADS=2 $(PY) scripts/demo.py

# The paper's claims (Table 1, Δt, convergence) and the semantic-anchor diagnostics with 5 paired seeds to 10,800
# steps on the demo's pipeline: reuses its tokenizers and seed-0 runs, resumable (hours on 2 cores; run it in the
# background): outputs/demo/studies/anchors/report.md
study: $(STAMP) data
	OMP_NUM_THREADS=2 $(PY) scripts/study.py

# ReDi-style PCA semantics against the Semantic VAE, 3 seeds (reuses the study's SemVAE runs; ~25 min).
sweep: $(STAMP) data
	OMP_NUM_THREADS=2 $(PY) scripts/sweep.py --name semantics --delta-t 0 0.3 --semantics semvae pca --repeats 3

# Lint (ruff, configured in pyproject.toml), then the tests.
test: $(STAMP)
	$(PY) -m ruff check sfd scripts tools tests
	OMP_NUM_THREADS=2 $(PY) -m pytest -q

# Everything a paper row needs, laid out where its config looks (rows: `$(PY) scripts/download.py --list`).
ROW ?= sfd-xl-800ep-ag
weights: $(STAMP)
	$(PY) scripts/download.py $(ROW)

# The B/1 network's eval forward at batch 1 on this machine (scripts/bench.py device: the accelerator suite).
bench: $(STAMP)
	$(PY) scripts/bench.py forward --config configs/sfd/autoguidance_b/train.yaml --batch 1

clean-env:
	rm -rf $(VENV)
