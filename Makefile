# Two commands do all the set-up on a fresh machine (Python 3.10-3.12 and make):
#   make train   creates .venv, installs attn, trains RAM on the embedded MNIST, tracked in ./mlflow.db
#   make test    creates .venv, installs attn with test extras, runs the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: train test bench install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

train: $(VENV)/.installed
	$(PY) run.py experiments/mnist_ram.yaml

test: $(VENV)/.installed
	$(PY) -m pytest -q -ra --durations=15

bench: $(VENV)/.installed
	$(PY) -m attn.bench ram

clean:
	rm -rf $(VENV) runs mlartifacts mlflow.db
