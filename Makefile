# Two entry points for a fresh machine: `make demo` (train the Conv4d example) and `make test`.
# Each command installs only the extras it needs, with one stamp file per extra set, so
# `make test` after `make demo` installs the rest (PyTorch, pytest) and nothing twice.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python

$(VPY):
	$(PY) -m venv $(VENV)

# $(VENV)/.installed-<extras>: `pip install -e .[<extras>]`, redone when pyproject.toml changes or
# the compiled kernels' sources do (an editable install builds avila_ml/cpu_accel/kernels/*.c once,
# in place, and never rebuilds them by itself)
$(VENV)/.installed-%: pyproject.toml setup.py $(wildcard avila_ml/cpu_accel/kernels/*) | $(VPY)
	$(VPY) -m pip install -q -e ".[$*]"
	touch $@

# The cuda leg on the strict emulated CUDA device (tests/emulated_cupy): on every `make test`, the
# GPU-path regressions (test_cuda_path.py: transfers, kernels, RNG, optimizers) and the files whose
# CUDA leg covers the most GPU code per second; `make test-cuda-emulated` runs the whole cuda leg
# (every test with the device fixture: about 2,800 tests, 4 min 55 s on an idle 2-core machine,
# 22 min when the cores were shared with other jobs).
CUDA_EMULATED_TESTS := tests/test_cuda_path.py tests/test_tensor.py tests/test_nn_module.py \
	tests/test_layers.py tests/test_transformer.py tests/test_conv4d.py

.PHONY: install demo test test-cuda-emulated bench docs docs-serve
install: $(VENV)/.installed-test,examples

demo: $(VENV)/.installed-examples
	$(VPY) examples/conv4d_spacetime.py

# The NumPy fallbacks of the compiled element-wise kernels (what runs where no C compiler built
# them) get their own short run with the kernels switched off: the files whose ops have both paths.
NUMPY_FALLBACK_TESTS := tests/test_pooling.py tests/test_normalization.py tests/test_activations.py \
	tests/test_cpu_fast_paths.py tests/test_conv4d.py tests/test_conv_onednn.py tests/test_cpu_accel_eltwise.py

test: $(VENV)/.installed-test,examples
	$(VPY) -m pytest avila_ml tests
	AVILA_ML_TEST_DEVICE=cuda-emulated $(VPY) -m pytest -p no:cacheprovider -k cuda $(CUDA_EMULATED_TESTS)
	AVILA_ML_NATIVE_KERNELS=0 $(VPY) -m pytest -p no:cacheprovider $(NUMPY_FALLBACK_TESTS)

test-cuda-emulated: $(VENV)/.installed-test,examples
	AVILA_ML_TEST_DEVICE=cuda-emulated $(VPY) -m pytest -p no:cacheprovider -k "cuda and not nvcc" tests

# PyTorch comes with the test extra: the benchmarks time it next to Avila ML
bench: $(VENV)/.installed-test,examples
	$(VPY) benchmarks/run_all.py

docs: $(VENV)/.installed-docs
	$(VPY) -m mkdocs build --strict --site-dir site

docs-serve: $(VENV)/.installed-docs
	$(VPY) -m mkdocs serve
