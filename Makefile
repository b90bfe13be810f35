# pocketlm — every command installs what it needs first (a venv with the pinned stack, the CPU torch wheel).
#   make demo   build every missing artifact with the demo presets, publish them, and run the suite
#               (make demo ARGS="--port 7861": flags of python -m pocketlm.demo)
#   make test   run the test suite (what CI runs)
#   make docs   build the docs site into site/ (strict: a broken link, page or anchor fails)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

# The Hub is unreachable on the machines this project is built on; set HF_HUB_OFFLINE=0 to use it.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= $(HF_HUB_OFFLINE)
export TRANSFORMERS_OFFLINE ?= $(HF_HUB_OFFLINE)
export GRADIO_ANALYTICS_ENABLED ?= False
export TOKENIZERS_PARALLELISM ?= false
# Some machines set PYTHONDONTWRITEBYTECODE=1: then every test subprocess recompiles transformers, sklearn...
# from source (tens of seconds each). Let Python cache bytecode in the venv and the checkout (both git-ignored).
unexport PYTHONDONTWRITEBYTECODE

# The browser test drives the Gradio suite in the system Chromium (Playwright with executable_path): a bare
# CI machine gets it from apt (as root, or through sudo) the first time.
CHROMIUM ?= /usr/bin/chromium
export POCKETLM_CHROMIUM := $(CHROMIUM)
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# tcmalloc makes a CPU training step faster (up to 1.4× measured; pocketlm/allocator.py); the training scripts use
# it when it is installed. Best effort: where apt cannot install it, training runs on the system allocator, slower.
TCMALLOC := $(VENV)/.tcmalloc

.PHONY: install demo test docs clean-artifacts

# The demo gets the runtime stack only; the tests add the [dev] extras (pytest, schemathesis, Playwright).
# --no-compile: pip would byte-compile every module of every package (torch alone ships thousands), most of which
# are never imported; Python compiles a module the first time it is imported anyway.
$(STAMP): pyproject.toml requirements-lock.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --no-compile -c requirements-lock.txt -e .
	@touch $@

$(DEV_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q --no-compile -c requirements-lock.txt -e ".[dev]"
	$(BIN)/python -m pip check
	@touch $@

install: $(DEV_STAMP)

demo: $(STAMP) $(TCMALLOC)
	$(BIN)/python -m pocketlm.demo $(ARGS)

test: $(DEV_STAMP) $(CHROMIUM) $(TCMALLOC)
	$(BIN)/python -m pytest -q

docs: $(DEV_STAMP)
	$(BIN)/python -m mkdocs build --strict

# Chromium for the browser tests and screenshots; the emoji font draws the Spaces' ✅ / ❌ marks (boxes without it)
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-noto-color-emoji

clean-artifacts:
	rm -rf hub runs

$(TCMALLOC): $(STAMP)
	@$(BIN)/python -c "import sys; from pocketlm.allocator import find_tcmalloc; sys.exit(find_tcmalloc() is None)" \
	  || $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libtcmalloc-minimal4 \
	  || ($(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends libtcmalloc-minimal4) \
	  || echo "tcmalloc not installed: training runs on the system allocator (slower on the CPU)"
	@touch $@
