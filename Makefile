# The two commands a newcomer needs (see README.md):
#   make demo   run rctmon against its built-in simulator, metrics on http://127.0.0.1:9831/metrics
#   make test   install what the tests need, lint, and run the whole suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# pip's progress and the index's notes are noise on a first screen; errors still show.
PIP := $(PY) -m pip --quiet --disable-pip-version-check --no-input

.PHONY: demo test lint bench system-deps clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip 2>/dev/null || true
	$(PIP) install -e '.[dev]'
	@# systemd-python is optional (rctmon speaks the notify protocol itself); build it only where it can build.
	@if pkg-config --exists libsystemd 2>/dev/null; then $(PIP) install -e '.[systemd]'; fi
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/rctmon demo

system-deps:
	@sh scripts/install-system-deps

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check rctmon tests bench
	$(VENV)/bin/mypy

test: system-deps $(VENV)/.installed lint
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) -m bench

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
