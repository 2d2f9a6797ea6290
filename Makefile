# Everything a fresh Debian machine needs is installed by these targets.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NODE_DIR := tests/servers/oauth
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all system-deps node-check venv node dev test lint demo clean bench

all: test

# What a fresh Debian needs: venv support, and a compiler, the Python headers,
# libsystemd and pkg-config to build systemd-python. Only missing ones are installed.
system-deps:
	@missing=""; \
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	command -v gcc >/dev/null || missing="$$missing gcc"; \
	command -v pkg-config >/dev/null || missing="$$missing pkg-config"; \
	command -v setfacl >/dev/null || missing="$$missing acl"; \
	pkg-config --exists libsystemd 2>/dev/null || missing="$$missing libsystemd-dev"; \
	[ -f "$$($(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ] \
		|| missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ] && ! command -v sudo >/dev/null; then \
			echo "missing Debian packages:$$missing; run as root: apt-get install$$missing"; exit 1; \
		fi; \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

# The test OAuth server (oidc-provider) needs Node.js 20 or later.
node-check:
	@command -v node >/dev/null && command -v npm >/dev/null || \
		{ echo "Node.js 20+ and npm are needed for the test OAuth server"; exit 1; }
	@node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' || \
		{ echo "Node.js $$(node --version) is too old: 20 or later is needed"; exit 1; }

$(VENV)/.installed: pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json | node-check
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

$(VENV)/.bench-installed: pyproject.toml | venv
	$(PY) -m pip install -q -e '.[dev,bench]'
	@touch $@

# Benchmark scripts (not tests): JSON and plots in docs/performance/, the
# summary in docs/performance.md. About 12 minutes on 2 cores; BENCH_ARGS=--quick
# is a smoke run of the whole pipeline in about 2.
bench: $(VENV)/.bench-installed
	$(PY) -m tests.benchmarks.run_all $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(NODE_DIR)/node_modules .demo

# The Debian package (packaging/README.md): dist/tokend_VERSION_ARCH.deb.
DEB = dist/tokend_$(shell sed -n '1s/^tokend (\(.*\)).*/\1/p' packaging/debian/changelog)_$(shell dpkg --print-architecture).deb

.PHONY: deb test-packaging

deb:
	packaging/build-deb.sh

# Installs the package with apt into a throwaway Debian 12 root (needs root).
test-packaging: deb venv
	TOKEND_DEB=$(DEB) $(PY) -m pytest tests/test_packaging.py

# The documentation site (mkdocs.yml): build/site/index.html. Strict: a broken
# link, anchor or nav entry fails. mkdocs comes with the dev extra; the variable
# silences Material's end-of-life banner, which is no build problem.
.PHONY: docs

docs: venv
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet
	@echo "docs: build/site/index.html"
