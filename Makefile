# The two commands of the README:  `make serve`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sepconv-installed

.PHONY: install serve models test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[cpu,test]'
	touch $(STAMP)

install: $(STAMP)

models: $(STAMP)
	$(VENV)/bin/sepconv export --catalog

## Export the default catalog (if not there yet) and serve it on 127.0.0.1:8000.
serve: models
	$(VENV)/bin/sepconv serve --host 127.0.0.1 --port 8000

## Lint and run the whole test suite.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/export_time.py

clean:
	rm -rf $(VENV) models/*/ .pytest_cache
