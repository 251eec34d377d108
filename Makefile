# Two entry points for a fresh clone (Python 3.11, nothing installed):
#   make demo    set up .venv, build the core, run a local server and a short realistic load on an embedded
#                LMDB directory (.tally/demo): summary, HTML report, trace, replay-log check
#   make test    set up .venv, build the core, run the whole test suite
# Everything is installed into .venv by the project's own files (pyproject.toml).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo bench bench-core bench-loadgen test test-slow clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard core/*.pyx core/*.pxd)
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

clean:
	rm -rf $(VENV) build .tally core/*.c core/*.so core/*.html
