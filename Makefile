# The two commands a new user needs: `make test` and `make run`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test run venv bench sim clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# The whole suite. pytest exit code 5 (no tests collected) is a failure, as is any other non-zero code.
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

# A longer simulator run than CI's: make sim SEEDS=10000
SEEDS ?= 2000
sim: $(STAMP)
	$(PY) -m tests.sim --seeds $(SEEDS)

bench: $(STAMP)
	$(PY) bench/raft_core.py

run: $(STAMP)
	@echo "make run arrives with the controller (issue 4): there is no controller process yet."; exit 2

clean:
	rm -rf $(VENV) build *.egg-info
