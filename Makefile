# All set-up happens here, so `make demo` and `make test` work as the first
# command on a fresh Debian machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# torch (a test dependency) is taken from a local wheel where the machine has one
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: install system-deps demo test check bench clean

install: system-deps $(VENV)/.installed

system-deps:
	@if ! command -v fusermount >/dev/null 2>&1 || ! ldconfig -p | grep -q 'libfuse.so.2'; then \
		echo "installing fuse and libfuse2 with apt"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq fuse libfuse2 >/dev/null; \
	fi
	@if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then \
		echo "installing nginx-light with apt (the blob front's tests)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nginx-light >/dev/null; \
	fi
	@if [ -z "$(PYTHON)" ] || ! $(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1; then \
		echo "installing python3 and python3-venv with apt"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3 python3-venv >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(FIND_LINKS) -e '.[dev]'
	touch $@

demo: install
	$(BIN)/python scripts/demo.py

test: install
	$(BIN)/python -m pytest -q

check: install
	$(BIN)/ruff check streamfs tests scripts
	$(BIN)/ruff format --check streamfs tests scripts
	$(BIN)/mypy streamfs

bench: install
	$(BIN)/python scripts/bench.py $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) .demo .bench
