# Everything a fresh Debian machine needs is installed by these targets.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NODE_DIR := tests/servers/oauth
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all system-deps venv node dev test lint demo clean

all: test

# systemd-python compiles against libsystemd; pkg-config finds it.
system-deps:
	@if ! pkg-config --exists libsystemd 2>/dev/null; then \
		echo "installing Debian packages: libsystemd-dev pkg-config"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq libsystemd-dev pkg-config gcc python3-dev >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --silent --no-audit --no-fund
	@touch $@

node: $(NODE_DIR)/node_modules/.installed

dev: venv node

test: dev
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check tokend tests
	$(VENV)/bin/ruff format --check tokend tests
	$(VENV)/bin/mypy tokend

demo: dev
	$(PY) -m tests.support.demo

clean:
	rm -rf $(VENV) $(NODE_DIR)/node_modules .demo
