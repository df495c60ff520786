# Everything sets itself up: `make demo` and `make test` work on a fresh Debian machine.
SHELL := /bin/bash
DEPS ?= $(CURDIR)/.deps
export WSSS_DEPS := $(DEPS)
# An existing libtorch 2.11.0 named by LIBTORCH is used as is (e.g. a CUDA build on a GPU
# machine); otherwise setup carves a CPU libtorch out of the official wheel into .deps/.
ifeq ($(origin LIBTORCH),undefined)
export LIBTORCH := $(DEPS)/libtorch/torch
export WSSS_FETCH_LIBTORCH := 1
else
export LIBTORCH
endif
export WSSS_TEST_PYTHON ?= $(DEPS)/pyenv/bin/python
CARGO ?= cargo
BIN := target/release/wsss-dist

.PHONY: all setup build weights test test-slurm lint demo bench bench-setup clean
all: build

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --release

# torchvision's ImageNet MobileNetV2 as weights/mobilenet_v2.safetensors (docs/weights.md).
weights:
	@bash scripts/fetch-weights.sh

# Formatting and clippy (warnings denied; the allowed lints are in Cargo.toml), then every test.
test: lint
	@CARGO=$(CARGO) bash scripts/test.sh

# launch/slurm under a real single-node SLURM (scripts/slurm-local.sh installs and starts it;
# root), run by .ci/run after `make test`. Where no cluster can be started (not root, no apt),
# the suite is reported as not run, as make test reports its skips.
test-slurm: setup
	@if bash scripts/slurm-local.sh start; then \
	  WSSS_SLURM=1 CARGO=$(CARGO) bash scripts/test.sh --test slurm -- --test-threads=1; status=$$?; \
	  bash scripts/slurm-local.sh stop; exit $$status; \
	else \
	  echo "NOT RUN: tests/slurm.rs: scripts/slurm-local.sh could not start a local SLURM on this machine (see above)"; \
	fi

lint: setup
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -q -- -D warnings

demo: build weights
	$(BIN) run --config configs/synthetic.toml

bench-setup: setup
	@bash scripts/setup-bench.sh

bench: bench-setup build weights
	bash benchmarks/run.sh

clean:
	$(CARGO) clean
	rm -rf data runs
