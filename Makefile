# Two commands set up a fresh machine (Python >= 3.10 and pip only):
#   make demo   - create .venv, install the kit, run its main job on the built-in default
#   make test   - create .venv, install the kit, run the whole test suite (notebooks included)
#   make test-fast - the fast tier for a development loop: no notebooks, no tests marked slow
#   make notebooks - execute the teaching notebooks and store their outputs (figures compressed)
# torch is pinned through constraints.txt (PIP_CONSTRAINT): any other torch would pull
# several GB of CUDA packages on CPU machines.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= jax,torch,ray,colmap,notebooks,dev,lpips
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv demo test test-fast bench notebooks clean

$(VENV)/.installed-stamp: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed-stamp

demo: venv
	$(VENV)/bin/see3d demo --out outputs/demo

test: venv
	$(PY) -m pytest -q -ra --durations=15

test-fast: venv
	$(PY) -m pytest -q -ra -m "not slow" --ignore=tests/test_notebooks.py --durations=10

notebooks: venv
	$(PY) notebooks/publish.py

bench: venv
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) outputs
