# MedPlatform's command vocabulary. `make run` brings the platform up, `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH ?= all

.PHONY: install run test test-fast lint browser-deps bench reliability check-deploy clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# medmnist supplies dataset metadata and the official download addresses; its torch
	# dependency is only needed for its PyTorch loaders, which the platform does not use.
	$(BIN)/python -m pip install --quiet --no-deps medmnist==3.0.2
	touch $(STAMP)

install: $(STAMP)

## Debian's Chromium for the browser tests (Playwright drives it; no browser download). Without
## root or apt-get it is not installed, and the browser tests skip, saying why.
browser-deps:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing Debian chromium for browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "chromium not found and cannot be installed here (needs root and apt-get): browser tests will skip"; \
	  fi; }

run: install
	$(BIN)/python -m medplatform.launcher

test: install browser-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not browser and not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/python manage.py check

check-deploy: install
	DEBUG=0 SECRET_KEY=$$(head -c 48 /dev/urandom | base64) ALLOWED_HOSTS=medplatform.example.org \
	SECURE_SSL_REDIRECT=1 SESSION_COOKIE_SECURE=1 CSRF_COOKIE_SECURE=1 SECURE_HSTS_SECONDS=31536000 \
	SECURE_HSTS_INCLUDE_SUBDOMAINS=1 SECURE_HSTS_PRELOAD=1 \
	$(BIN)/python manage.py check --deploy --fail-level WARNING

## Benchmarks: `make bench` runs all; `make bench BENCH=name` runs one (see bench/README.md).
bench: install
	$(BIN)/python -m bench $(BENCH) $(BENCH_ARGS)

## Reliability measurements (docs/RELIABILITY.md): workers killed at random, then 20 users of load.
## Both use DATABASE_URL / REDIS_URL when set (creating databases of their own), else SQLite and
## the embedded Redis.
reliability: install
	$(BIN)/python -m reliability.kill_workers --rounds 10
	$(BIN)/python -m reliability.load --users 20 --minutes 3

clean:
	rm -rf var/staticfiles .pytest_cache .ruff_cache
