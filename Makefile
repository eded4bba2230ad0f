# Two commands for a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DEMO_OUT ?= out/demo

.PHONY: demo test install clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: setup.py $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/facebeam analyze --input examples --output $(DEMO_OUT) --overwrite

test: install
	$(BIN)/python -m pytest -q tests

bench: install
	$(BIN)/python -m bench.run --n 100 --repeat 3 --repeat_modes pipeline,detection
	$(BIN)/python -m bench.models

clean:
	rm -rf $(VENV) out build *.egg-info .pytest_cache
