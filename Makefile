# Two commands for a fresh machine with Python 3.11:
#   make demo   set up .venv and run the quickstart search (builtin data, transformer family)
#   make test   set up .venv with the test extras and run the test suite
#   make bench  (not needed for the two above) the side-by-side benchmarks, see bench/README.md
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Each demo run gets its own storage folder: ktune never overwrites an experiment.
DEMO_STORAGE ?= results/demo-$(shell date +%Y%m%d-%H%M%S)
PYTEST_ARGS ?=
# The suite's files run in this many processes (pytest-xdist; a file's tests stay in one,
# sharing its module fixtures). In one process the 2 cores stood 30-40% idle (waits on
# Ray's start-up and on subprocesses); two fill them. TEST_WORKERS=0: one process.
# --no-loadscope-reorder: files in the order tests/conftest.py gives (the longest first).
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: demo test lint test-all bench bench-quick venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,bench]"
	touch $(STAMP)

venv: $(STAMP)

# One storage folder for both steps (DEMO_STORAGE's date would be re-evaluated per use).
demo: $(STAMP)
	@storage="$(DEMO_STORAGE)"; set -e; \
	$(BIN)/ktune run examples/quickstart.yaml --storage "$$storage"; \
	$(BIN)/ktune report "$$storage/quickstart"

test: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

# ruff lint and format check, mypy on ktune/ (pyproject.toml [tool.ruff], [tool.mypy]);
# CI runs it before the tests.
LINTED := ktune tests examples bench cluster
lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

# Also the tests that download real models and data sets (needs network).
test-all: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) -m "" $(PYTEST_ARGS)

# Side-by-side benchmarks (bench/README.md): all of them, 50-61 min on 2 cores; run
# alone on the machine. bench-quick: the same in their quick modes, about 17 min.
bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(BIN)/python bench/run.py --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
