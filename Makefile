# make demo   train a BPE on the bundled corpus, then a small TuringNLG on it (CPU, ~3-5 minutes), then generate
# make test   the test suite (CPU; GPU tests run too where CUDA is present)
# make bench  the benchmarks (each prints ratios against a peer measured in the same run)
#
# Each target creates .venv and installs the project with its dev extra when .venv is missing.
# Where there is no NVIDIA GPU the CPU build of PyTorch is installed (TORCH_CPU). Elsewhere than
# this project's CI you may want PyTorch's CPU wheel index: make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_CPU ?= torch==2.13.0
TORCH_INDEX_URL ?=
# two xdist workers (one torch thread each, see tests/conftest.py); files stay whole on one worker
PYTEST_ARGS ?= -n 2 --dist loadfile

STAMP := $(VENV)/.installed

.PHONY: demo test bench install clean-venv gpu-check

install: $(STAMP)

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: installing the default (CUDA) PyTorch build"; \
		$(PY) -m pip install -q "torch>=2.4"; \
	else \
		echo "no NVIDIA GPU: installing the CPU PyTorch build ($(TORCH_CPU))"; \
		$(PY) -m pip install -q "$(TORCH_CPU)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)); \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

DEMO_TOKENIZER := data_cache/tokenizers/shakespeare-bpe-1024

demo: $(STAMP)
	@test -f $(DEMO_TOKENIZER)/tokenizer.json || $(PY) recipes/prepare_data.py tokenizer \
		--input recipes/data/tinyshakespeare.txt --kind bpe --vocab-size 1024 --output $(DEMO_TOKENIZER) --overwrite
	$(PY) recipes/pretrain_nlg.py --config demo.yaml --demo true

bench: $(STAMP)
	$(PY) benchmarks/generate.py
	$(PY) benchmarks/data.py
	$(PY) benchmarks/encoder_unpad.py
	$(PY) benchmarks/train.py
	$(PY) benchmarks/load.py
	$(PY) benchmarks/onnx.py

# on a GPU machine: kernel tests + benchmarks against the goals, < 8 min (benchmarks/gpu_check.py); elsewhere exit 2
gpu-check:
	@$(PYTHON) benchmarks/gpu_check.py

clean-venv:
	rm -rf $(VENV)
