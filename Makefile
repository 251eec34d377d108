# Two entry points for a fresh clone (Python 3.11, nothing installed):
#   make demo    set up .venv, build the core, run a local server and a short realistic load on an embedded
#                LMDB directory (.tally/demo): summary, HTML report, trace, replay-log check
#   make test    set up .venv, build the core, run the whole test suite
# Everything is installed into .venv by the project's own files (pyproject.toml).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo bench bench-core bench-loadgen bench-soak test test-slow test-debug clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard core/*.pyx core/*.pxd engine/*.pyx engine/*.pxd)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: setup
	$(BIN)/tally demo

bench: setup
	$(BIN)/tally bench e2e --data .tally/bench --accounts 200000 --seconds 3

bench-core: setup
	$(BIN)/tally bench core --data .tally/bench --transfers 2000000

bench-loadgen: setup
	$(BIN)/tally bench loadgen

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

# The state machine's C asserts (balances never wrap, id-map inserts succeed, undo logs empty
# after a rollback, a pending state only in the pending table) exist only in a TALLY_DEBUG build:
# build one in a copy of the tree and run the property, tiering and store tests against it.
DEBUG_TREE := build/debug-tree
test-debug: setup
	$(BIN)/python -m pip install --quiet "Cython>=3.0.10" setuptools wheel
	rm -rf $(DEBUG_TREE) && mkdir -p $(DEBUG_TREE)
	cp -r core engine tests setup.py pyproject.toml $(DEBUG_TREE)/
	rm -f $(DEBUG_TREE)/core/*.so $(DEBUG_TREE)/core/*.c $(DEBUG_TREE)/engine/*.so $(DEBUG_TREE)/engine/*.c
	cd $(DEBUG_TREE) && TALLY_DEBUG=1 $(CURDIR)/$(BIN)/python setup.py --quiet build_ext --inplace
	cd $(DEBUG_TREE) && PYTHONPATH=. $(CURDIR)/$(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/test_properties.py tests/test_tiering.py tests/test_ledger.py tests/test_store.py tests/test_crash.py

bench-soak: setup
	$(BIN)/tally bench soak

clean:
	rm -rf $(VENV) build .tally core/*.c core/*.so core/*.html engine/*.c engine/*.so engine/*.html
