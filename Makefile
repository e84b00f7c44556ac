# One entry point for people and CI. Every target installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: install run demo test test-cluster lint typecheck bench asyncapi clean browser

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[local,cloud,otel,dev]"
	@rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)

run: install  ## the whole stack on embedded defaults (starts nats-server if none is reachable)
	$(VENV)/bin/voiceagent up

demo: install  ## stack up, one scripted two-turn call, stack down
	$(VENV)/bin/voiceagent demo

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: install
	$(PY) -m mypy

# Debian's chromium for the console's browser test; a no-op when it is there. Needs root (CI is).
browser:
	@test -x /usr/bin/chromium || { echo "installing Debian's chromium (console browser test) ..."; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	  || { echo "ERROR: could not install chromium: run 'apt-get install chromium' as root"; exit 1; }; }

test: install lint typecheck browser  ## the whole suite, unit and integration
	$(PY) -m pytest -q

test-cluster: install  ## a call through three clustered nats-servers losing two nodes mid-call
	$(PY) -m pytest -q -m cluster_failover

bench: install  ## capacity and latency table
	$(VENV)/bin/voiceagent bench

asyncapi: install  ## regenerate the bus contract in docs/asyncapi/ (a test checks it)
	$(VENV)/bin/voiceagent asyncapi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
