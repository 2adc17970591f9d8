# Two commands: `make demo` and `make test`. Both work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DB ?= demo/bowknot.duckdb

.PHONY: demo test install browser bench docs clean
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## make demo: install, generate the demo workspace, serve it and print the sign-in link
demo: $(STAMP)
	$(BIN)/bowknot demo serve --db $(DEMO_DB)

## Page tests drive Debian's headless Chromium; fonts-noto-core gives it Persian and Thai glyphs.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium fonts-noto-core; }

## make test: install what the tests need and run them all
test: $(STAMP) browser
	$(BIN)/python -m pytest -q
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

docs: $(STAMP)
	$(BIN)/bowknot settings --markdown > docs/settings.md
	$(BIN)/bowknot contract > docs/contract.md

bench: $(STAMP)
	$(BIN)/python benchmarks/ingest.py

clean:
	rm -rf $(VENV) demo .pytest_cache .mypy_cache
