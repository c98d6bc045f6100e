# Two entry points for a fresh machine: `make demo` (train the Conv4d example) and `make test`.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q -e ".[test,examples]"
	touch $(STAMP)

# The cuda leg on the strict emulated CUDA device (tests/emulated_cupy): on every `make test`, the
# GPU-path regressions (test_cuda_path.py: transfers, kernels, RNG, optimizers) and the files whose
# CUDA leg covers the most GPU code per second; `make test-cuda-emulated` runs the whole cuda leg
# (every test with the device fixture, about 25 min on 2 cores).
CUDA_EMULATED_TESTS := tests/test_cuda_path.py tests/test_tensor.py tests/test_nn_module.py \
	tests/test_layers.py tests/test_transformer.py tests/test_conv4d.py

.PHONY: install demo test test-cuda-emulated bench
install: $(STAMP)

demo: $(STAMP)
	$(VPY) examples/conv4d_spacetime.py

test: $(STAMP)
	$(VPY) -m pytest avila_ml tests
	AVILA_ML_TEST_DEVICE=cuda-emulated $(VPY) -m pytest -p no:cacheprovider -k cuda $(CUDA_EMULATED_TESTS)

test-cuda-emulated: $(STAMP)
	AVILA_ML_TEST_DEVICE=cuda-emulated $(VPY) -m pytest -p no:cacheprovider -k "cuda and not nvcc" tests

bench: $(STAMP)
	$(VPY) benchmarks/run_all.py
