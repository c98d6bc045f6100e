# Two entry points for a fresh machine: `make demo` (train the Conv4d example) and `make test`.
# Each command installs only the extras it needs, with one stamp file per extra set, so
# `make test` after `make demo` installs the rest (PyTorch, pytest) and nothing twice.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python

$(VPY):
	$(PY) -m venv $(VENV)

# $(VENV)/.installed-<extras>: `pip install -e .[<extras>]`, redone when pyproject.toml changes
$(VENV)/.installed-%: pyproject.toml | $(VPY)
	$(VPY) -m pip install -q -e ".[$*]"
	touch $@

.PHONY: install demo test bench docs docs-serve
install: $(VENV)/.installed-test,examples

demo: $(VENV)/.installed-examples
	$(VPY) examples/conv4d_spacetime.py

test: $(VENV)/.installed-test,examples
	$(VPY) -m pytest avila_ml tests

# PyTorch comes with the test extra: the benchmarks time it next to Avila ML
bench: $(VENV)/.installed-test,examples
	$(VPY) benchmarks/run_all.py

docs: $(VENV)/.installed-docs
	$(VPY) -m mkdocs build --strict --site-dir site

docs-serve: $(VENV)/.installed-docs
	$(VPY) -m mkdocs serve
