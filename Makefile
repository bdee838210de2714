# The commands of the README:
#   make demo   run the main job on the embedded corpus (the Python standard library)
#   make test   run the test suite
#   make bench  run every benchmark and write one report, bench/results/suite_<date>_<cpu>.json
# Each creates .venv on first use. GPU users: create .venv with your CUDA torch installed first,
# then edit constraints.txt to pin that build; everything else installs against it.

PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
OUT     ?= runs/demo
RANKS   ?= 2
PORT    ?= 29517
DEMO_SECONDS ?= 180
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: demo test bench setup lint clean-demo

setup: $(STAMP)

$(STAMP): setup.py constraints.txt scripts/install_system_deps.sh
	bash scripts/install_system_deps.sh
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q -c constraints.txt torch==2.13.0
	DS_BUILD_OPS=0 $(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# 1. standard library -> cleaned, deduplicated corpus -> 8,192-id tokenizer -> shards ($(OUT)/data)
# 2. a small GPT-2 trained on them with DeepSpeed ZeRO-2 on $(RANKS) CPU ranks, in the precision the CPU
#    runs natively (train.precision auto: bf16 with AMX or AVX512-BF16, else fp32), for about $(DEMO_SECONDS) s:
#    training.budget times this machine's step and sets train.max_steps to fit
#    then its curves drawn by codeparrot-plot into $(OUT)/train/metrics.png
# 3. its validation perplexity, an export to a transformers GPT2LMHeadModel directory ($(OUT)/hf), and a
#    completion of a Python prompt from that export
demo: $(STAMP)
	$(BIN)/python -m data_tools.preprocess --output $(OUT)/data --vocab-size 8192
	steps=$$(OMP_NUM_THREADS=1 $(BIN)/python -m training.budget --config configs/demo.json --world $(RANKS) \
		--ds_config ds_configs/zero2_cpu.json --seconds $(DEMO_SECONDS) --set data.paths='["$(OUT)/data"]') && \
	OMP_NUM_THREADS=1 PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/deepspeed --num_gpus $(RANKS) \
		--master_addr 127.0.0.1 --master_port $(PORT) pretrain_gpt.py --config configs/demo.json \
		--ds_config ds_configs/zero2_cpu.json --set data.paths='["$(OUT)/data"]' train.save_dir=$(OUT)/train \
		$$steps
	$(BIN)/codeparrot-plot $(OUT)/train
	$(BIN)/codeparrot-eval perplexity $(OUT)/train --data $(OUT)/data
	$(BIN)/codeparrot-export $(OUT)/train $(OUT)/hf --overwrite
	$(BIN)/codeparrot-generate $(OUT)/hf 'def fibonacci(n):' --max-new-tokens 64 --temperature 0

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# About 20 minutes on 2 cores; BENCH_ARGS="--only generate,startup" runs some, "--quick" at toy sizes.
bench: $(STAMP)
	$(BIN)/python -m bench.suite $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
