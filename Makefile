# The two commands of the README:
#   make demo   run the main job on the embedded corpus (the Python standard library)
#   make test   run the test suite
# Both create .venv on first use. GPU users: create .venv with your CUDA torch installed first,
# then edit constraints.txt to pin that build; everything else installs against it.

PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
OUT     ?= runs/demo
PYTEST_ARGS ?=

.PHONY: demo test setup lint clean-demo

setup: $(STAMP)

$(STAMP): setup.py constraints.txt scripts/install_system_deps.sh
	bash scripts/install_system_deps.sh
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q -c constraints.txt torch==2.13.0
	DS_BUILD_OPS=0 $(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m data_tools.preprocess --output $(OUT)/data

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
