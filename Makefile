# The two commands a newcomer needs (see README.md):
#   make demo   run rctmon against its built-in simulator, metrics on http://127.0.0.1:9831/metrics
#   make test   install what the tests need and run the whole suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench system-deps clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	-$(PY) -m pip install --quiet -e '.[systemd]' || echo "systemd-python not built (needs libsystemd-dev, pkg-config); continuing without it"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/rctmon demo

system-deps:
	@sh scripts/install-system-deps

test: system-deps $(VENV)/.installed
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) -m bench

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
