# The two Quickstart commands: `make demo` and `make test`. Both build .venv from nothing
# (CPU torch, the package and its C++ kernels) the first time and reuse it afterwards.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
SOURCES := setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu csrc/*/*.cuh)

.PHONY: demo test clean

demo: $(INSTALLED)
	$(BIN)/unet-fast demo

test: $(INSTALLED)
	$(BIN)/pytest

$(INSTALLED): $(SOURCES)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet torch==2.13.0 triton==3.7.1 numpy scipy
	$(BIN)/pip install --quiet --no-build-isolation --editable ".[test]"
	touch $@

clean:
	rm -rf $(VENV) build unet_fast/_C*.so *.egg-info
