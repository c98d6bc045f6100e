# Two entry points for a fresh machine: `make demo` (train the Conv4d example) and `make test`.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q -e ".[test,examples]"
	touch $(STAMP)

.PHONY: install demo test bench
install: $(STAMP)

demo: $(STAMP)
	$(VPY) examples/conv4d_spacetime.py

test: $(STAMP)
	$(VPY) -m pytest avila_ml tests

bench: $(STAMP)
	$(VPY) benchmarks/run_all.py
