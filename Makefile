# The two set-up commands (README): `make demo` and `make test`. Both install what is missing first.
# Builds use the project's venv (.venv) for libtorch: tch 0.24 links torch==2.11.0 from PyPI.
export LIBTORCH_USE_PYTORCH := 1
export VIRTUAL_ENV := $(CURDIR)/.venv
export PATH := $(CURDIR)/.venv/bin:$(PATH)
export DP_ASSETS ?= $(CURDIR)/assets

CARGO ?= cargo

.PHONY: setup build demo test check clean-assets

setup:
	@scripts/setup.sh all

build: setup
	$(CARGO) build --release --workspace --bins

demo: build
	$(CARGO) run --release -p dp-train --bin dp-train -- fashion-mnist

test: setup
	$(CARGO) test --workspace

check: setup
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean-assets:
	rm -rf assets
