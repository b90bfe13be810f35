# pocketlm — every command installs what it needs first (a venv with the pinned stack, the CPU torch wheel).
#   make demo   build every missing artifact with the quick presets, publish them, and run the suite
#   make test   run the test suite (what CI runs)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# The Hub is unreachable on the machines this project is built on; set HF_HUB_OFFLINE=0 to use it.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= $(HF_HUB_OFFLINE)
export TRANSFORMERS_OFFLINE ?= $(HF_HUB_OFFLINE)
export GRADIO_ANALYTICS_ENABLED ?= False
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test clean-artifacts

$(STAMP): pyproject.toml requirements-lock.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements-lock.txt -e ".[dev]"
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m pocketlm.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean-artifacts:
	rm -rf hub runs
