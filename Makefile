# The two set-up commands (README): `make demo` and `make test`. Both install what is missing first.
# Builds use the project's venv (.venv) for libtorch: tch 0.24 links torch==2.11.0 from PyPI.
export LIBTORCH_USE_PYTORCH := 1
export VIRTUAL_ENV := $(CURDIR)/.venv
export PATH := $(CURDIR)/.venv/bin:$(PATH)
export DP_ASSETS ?= $(CURDIR)/assets

CARGO ?= cargo

.PHONY: setup build demo demo-fashion-mnist test check clean-assets

setup:
	@scripts/setup.sh all

build: setup
	$(CARGO) build --release --workspace --bins

# The main job: private fine-tuning of all-MiniLM-L6-v2 on Rotten Tomatoes at epsilon 8
# (a fresh run folder each time: a folder holding a checkpoint would be resumed).
demo: build
	rm -rf runs/demo-minilm
	target/release/dp-train train --config examples/minilm_finetune.toml --run-dir runs/demo-minilm

# The quick one: an MLP on Fashion-MNIST at epsilon 3.
demo-fashion-mnist: build
	target/release/dp-train fashion-mnist

test: setup
	$(CARGO) test --workspace

check: setup
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean-assets:
	rm -rf assets
