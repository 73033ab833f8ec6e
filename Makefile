# wsgiproxy: every target installs what it needs, so a fresh machine runs them as they are.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum < requirements.txt | cut -d' ' -f1)

.PHONY: run test lint tools bench bench-quick bench-pool clean

$(STAMP): requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt
	@rm -f $(VENV)/.installed-*
	@touch $@

# curl drives the end-to-end tests the way users drive the proxy; prometheus, promtool
# and systemd-analyze check deploy/ (tests/test_deploy.py). Debian packages, installed
# only when missing and without starting their services. Where apt-get refuses, the
# deploy tests say so and skip: a warning here, not a failed `make test`.
tools:
	@command -v curl >/dev/null 2>&1 || { \
		(apt-get update -qq && apt-get install -y -qq curl) >/dev/null; }
	@sh deploy/install-tools.sh || echo "make tools: deploy/ tools not installed; tests/test_deploy.py will skip what needs them" >&2

## run: set up .venv and start the proxy under gunicorn gevent workers (127.0.0.1:8080)
run: $(STAMP)
	$(BIN)/gunicorn -c gunicorn.conf.py wsgiproxy.app:app

## test: install what the suite needs, then run it
test: $(STAMP) tools
	$(BIN)/python -m pytest -q -p no:cacheprovider

## bench: the proxy against nginx and the Python alternatives, side by side (bench/README.md)
bench: $(STAMP)
	$(BIN)/python bench/run.py

## bench-quick: a short run of the same (a few minutes)
bench-quick: $(STAMP)
	$(BIN)/python bench/run.py --quick

## bench-pool: cost of one pool event against queue depth, ours beside httpcore 1.0.9's
bench-pool: $(STAMP)
	$(BIN)/python bench/pool_bench.py

## lint: ruff over the package, tests and bench; mypy --strict over the package
lint: $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check ruff==0.17.5 mypy==2.4.1 types-requests
	$(BIN)/ruff check wsgiproxy tests bench gunicorn.conf.py
	$(BIN)/ruff format --check wsgiproxy tests bench gunicorn.conf.py
	$(BIN)/mypy --strict wsgiproxy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
