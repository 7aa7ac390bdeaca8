# Two commands do all the set-up on a fresh machine (Python 3.10-3.12 and make):
#   make train   creates .venv, installs attn, trains RAM on the embedded MNIST, tracked in ./mlflow.db
#   make test    creates .venv, installs attn with test extras, runs the test suite: the unit tier, then e2e
#   make test-fast  the unit tier alone (tests/unit: no Ray, no MLflow server), in under 2 minutes
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: train test test-fast test-e2e bench install clean

# The same pinned versions as every cluster node (scripts/cluster/constraints.txt).
CONSTRAINTS := scripts/cluster/constraints.txt

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[test]'
	touch $@

install: $(VENV)/.installed

train: $(VENV)/.installed
	$(PY) run.py experiments/mnist_ram.yaml

PYTEST := $(PY) -m pytest -q -ra --durations=15
# pytest-xdist: one worker per core, at most 4. End-to-end tests go to the workers a file at a time
# (loadfile: a module's tests share the clusters and runs of its module-scoped fixtures), longest first
# (tests/conftest.py orders them; xdist would otherwise hand out the files with the most tests first);
# tests marked alone (pyproject.toml says why) run after them, one at a time.
PARALLEL := -n auto --maxprocesses 4

test-fast: $(VENV)/.installed
	$(PYTEST) $(PARALLEL) --dist load tests/unit

test-e2e: $(VENV)/.installed
	$(PYTEST) $(PARALLEL) --dist loadfile --no-loadscope-reorder -m "not alone" tests/e2e
	$(PYTEST) -m alone tests/e2e || test $$? -eq 5  # 5: none is marked alone on this machine

# Unit first: a broken unit test stops the run before the slow tier starts.
test: test-fast
	$(MAKE) --no-print-directory test-e2e

bench: $(VENV)/.installed
	$(PY) -m attn.bench ram

clean:
	rm -rf $(VENV) runs mlartifacts mlflow.db
