# eksinfer developer entry points. `make run` and `make test` work on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: run test bench lint fmt test-live test-prometheus test-status-page install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all,test,dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/eksinfer up $(ARGS)

test: $(STAMP)
	-@bash scripts/ensure-deb.sh prometheus promtool 300
	$(BIN)/python -m pytest -q -p no:cacheprovider $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# Rendered rules, alerts and dashboard against a real Prometheus scraping simulated engines + gateway
# (50 to 100 s on a shared 2-core machine; tests/deploy/test_prometheus_live.py). Skips, saying why, where Prometheus cannot be installed.
test-prometheus: $(STAMP)
	-@bash scripts/ensure-deb.sh prometheus promtool 300
	EKSINFER_PROMETHEUS=1 $(BIN)/python -m pytest -q -s -p no:cacheprovider -rs tests/deploy/test_prometheus_live.py $(ARGS)

# The gateway's status page in a real headless Chromium (Debian's package) against `eksinfer up`, under load
# (about 20 s; tests/gateway/test_status_page_browser.py). Skips, saying why, where Chromium cannot be installed.
# EKSINFER_UPDATE_SCREENSHOT=1 also rewrites docs/img/status.png.
test-status-page: $(STAMP)
	-@bash scripts/ensure-deb.sh chromium chromium 600
	$(BIN)/python -m pip install -q -e '.[browser]'
	EKSINFER_BROWSER=1 $(BIN)/python -m pytest -q -s -p no:cacheprovider -rs tests/gateway/test_status_page_browser.py $(ARGS)

test-live: $(STAMP)
	bash scripts/test-live.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
