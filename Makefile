# Two commands: `make demo` (set up .venv, install, run the quickstart) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DEMO_EXTRAS := datasets
TEST_EXTRAS := datasets,dev,text,lm,ray,lightning

.PHONY: demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch's CPU build goes in first so that nothing pulls a CUDA build.
$(VENV)/.torch: | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	touch $@

$(VENV)/.installed-demo: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install --quiet -e '.[$(DEMO_EXTRAS)]'
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install --quiet -e '.[$(TEST_EXTRAS)]'
	touch $@

demo: $(VENV)/.installed-demo
	$(BIN)/prunus demo

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
