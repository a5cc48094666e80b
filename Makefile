# imgkit: set up, demo, test, bench. System packages are listed once, in packages.txt.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export IMGKIT_CACHE ?= /tmp/imgkit-cache
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=
# Debian's own Python: readable by every user, so the unprivileged test run can use the venv.
PYTHON ?= $(shell [ -x /usr/bin/python3 ] && echo /usr/bin/python3 || echo python3)

.PHONY: setup system-packages venv demo lint test test-root test-unprivileged fuzz bench clean

setup: system-packages venv

system-packages:
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    $$(grep -v '^#' packages.txt) >/dev/null

$(PY): pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(PY)

venv: $(PY)

cache:
	mkdir -p $(IMGKIT_CACHE) && chmod 1777 $(IMGKIT_CACHE)

DEMO_EXPECT := imgkit demo: root filesystem is up

# Build the bundled example disk (examples/demo.toml) and boot it with SeaBIOS and with OVMF.
demo: setup cache
	$(PY) -m imgkit build examples/demo.toml -O out
	$(PY) -m imgkit inspect out/demo.img
	$(PY) -m imgkit run out/demo.img --firmware bios --snapshot --expect '$(DEMO_EXPECT)' --timeout 300
	$(PY) -m imgkit run out/demo.img --firmware uefi --snapshot --expect '$(DEMO_EXPECT)' --timeout 300
	@echo "demo: out/demo.img booted with SeaBIOS and with OVMF"

# ruff over the whole tree, mypy over the library modules the README documents (the lists
# are in pyproject.toml).
lint: venv
	$(VENV)/bin/ruff check --output-format concise .
	$(VENV)/bin/mypy

# The linters, the test suite, then (when run as root, as CI does) the suite again as an
# unprivileged user: building images must never need root. The `slow` tests (a whole
# distribution built and booted) run once, in the unprivileged pass (tests/conftest.py).
test: export IMGKIT_SLOW_IN_UNPRIVILEGED_PASS = 1
test: setup cache lint test-root test-unprivileged

test-root:
	$(PY) -m pytest -p no:cacheprovider -q -ra $(PYTEST_ARGS)

test-unprivileged:
	@if [ "$$(id -u)" = 0 ]; then \
	    echo "== the same tests as uid 65534 =="; \
	    VENV=$(VENV) PYTHON=$(PYTHON) tests/unprivileged.sh $(PYTEST_ARGS); \
	else echo "(not root: the run above was already unprivileged)"; fi

# The hostile-input corpus at length: thousands of mutated images, bad configs and arguments
# (tests/fuzzing.py), each under a time and memory limit. FUZZ_SEED picks another corpus.
FUZZ_CASES ?= 5000
FUZZ_SEED ?= 14
fuzz: venv
	IMGKIT_FUZZ_CASES=$(FUZZ_CASES) IMGKIT_FUZZ_SEED=$(FUZZ_SEED) \
	    $(PY) -m pytest -p no:cacheprovider -q -ra tests/test_fuzz.py $(PYTEST_ARGS)

bench: setup cache
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf out build dist *.egg-info
