# Set-up and entry points. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: setup test demo bench clean gpu-check

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,gpu]'
	rm -f $(VENV)/.installed-*
	touch $@

test: setup
	$(PY) -m pytest -q

# On a machine with a CUDA GPU: the CUDA and Triton tests, then the GPU benchmark (scripts/gpu-check.sh)
gpu-check: setup
	PYTHON=$(PY) scripts/gpu-check.sh

demo: setup
	$(PY) -m targetprop compare demo --overwrite

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
