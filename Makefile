# Reflex — common tasks. `make test` is the one command CI and newcomers run.
CARGO ?= cargo

.PHONY: all build test bench lint fmt crds crds-check chart protobuf-fields prereqs run sandbox clean

# Tools prereqs installs locally (kubectl when the machine has none) come first on PATH.
export PATH := $(CURDIR)/.tools/bin:$(PATH)

all: build

build:
	$(CARGO) build

## Install missing prerequisites, then run every test tier available.
test: prereqs
	$(CARGO) test --all-targets --no-fail-fast

## The benchmarks (release build; installs wrk, their load generator, when missing).
bench:
	@scripts/prereqs.sh --bench
	$(CARGO) bench

## Formatting, clippy with warnings denied, and the CRD drift check.
lint: prereqs
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(MAKE) crds-check

fmt:
	$(CARGO) fmt --all

## Regenerate crds/ from the Rust types (and the chart's copy).
crds:
	$(CARGO) run --quiet -- crd --dir crds
	cp crds/*.yaml charts/reflex/crds/

## Lint and render the Helm chart (the tests do this too: tests/chart.rs).
chart: prereqs
	helm lint --strict charts/reflex
	helm template reflex charts/reflex --namespace reflex-system > /dev/null

## Regenerate the sandbox's protobuf field table from k8s-pb and k8s-openapi (after updating either).
protobuf-fields:
	$(CARGO) fetch
	python3 scripts/protobuf-fields.py

## Fail if crds/ differs from what the Rust types generate.
crds-check:
	$(CARGO) test --quiet --test crds committed_crds_match_the_rust_types

prereqs:
	@scripts/prereqs.sh

## Run the operator against the current kubeconfig context.
run:
	$(CARGO) run -- run

## Start the sandbox API server with Reflex's CRDs; prints the kubeconfig to use with kubectl.
sandbox:
	$(CARGO) run -- sandbox

clean:
	$(CARGO) clean
