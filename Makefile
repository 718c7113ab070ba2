# The README's two commands. Each creates .venv on first use.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test
run: $(VENV)/.installed
	$(VENV)/bin/relay serve

test: $(VENV)/.installed
	$(PY) -m pytest --durations=5

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@
