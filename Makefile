# proxypilot — the two commands a user needs are `make run` and `make test`.
# Both install what a fresh Debian machine lacks first (`make setup`, idempotent).

SHELL := /bin/bash
BIN   := target/release/proxypilot

.PHONY: setup build run test unit e2e lint fmt clean bench soak fuzz image-test deploy-fly pgo

# The release build is optimized with the profiles in pgo/ (pgo/README.md): rustc's
# profile-guided optimization, then llvm-bolt lays out the linked binary (scripts/bolt.sh).
# `make lint` passes the same flags, so the two share one build cache.
# PROXYPILOT_PGO=0 builds without either, PROXYPILOT_BOLT=0 without the BOLT step.
PGO_RUSTFLAGS = RUSTFLAGS="$${RUSTFLAGS:-} $$(scripts/pgo-flags.sh)"

setup:
	@scripts/setup.sh

# A binary an earlier build laid out is replaced by cargo's own link when BOLT is turned off.
build: setup
	@if [ "$${PROXYPILOT_BOLT:-1}" = 0 ]; then rm -f $(BIN); fi
	$(PGO_RUSTFLAGS) cargo build --release --locked
	scripts/bolt.sh $(BIN)

## Make the profiles `make build` optimizes with again (pgo/proxypilot.profdata.xz and
## pgo/proxypilot.bolt.yaml.xz): instrumented builds driven through the sidecar's paths by
## bench/pgo.py (~12 min).
pgo: setup
	scripts/pgo.sh

## Start a local tokenizer and the sidecar with an embedded offline default; prints how to call it.
run: build
	@scripts/run.sh

## All tests: unit tests, then end-to-end tests against the real binary on loopback.
test: build
	cargo test --profile unit --locked
	python3 -m pytest -q -p no:cacheprovider tests/e2e

unit: setup
	cargo test --profile unit --locked

e2e: build
	python3 -m pytest -q -p no:cacheprovider tests/e2e

## Benchmarks: direct vs proxypilot vs nginx and mitmproxy as sidecars, on loopback; prints the
## tables and rewrites docs/benchmarks.md (~15 min). BENCH_ARGS=--quick for a smoke test.
bench: build
	@scripts/bench-setup.sh
	python3 bench/bench.py $(BENCH_ARGS)

## Soak test: 1000 keep-alive TLS clients for 10 min through the sidecar and the tokenizer (normal,
## streamed and failing requests); fails on any failed request or growing RSS/fds; rewrites
## docs/soak.md. SOAK_ARGS='--duration 60 --clients 200 --no-write' for a quick run.
soak: build
	python3 bench/soak.py $(SOAK_ARGS)

## Deploy to Fly.io: the sidecar and the example shell in one Machine, then its self-test
## (docs/deploy-fly.md). FLY_ARGS="--org my-org" (also --targets FILE, --instance ID, --dry-run).
deploy-fly: build
	PROXYPILOT=$(BIN) scripts/fly-deploy.sh $(FLY_ARGS)

## Build the container image around a binary built here (PROXYPILOT_BIN, default the release
## build) and run it as it ships: non-root on 443, health check, one proxied request. Needs root,
## podman (installed if missing) and port 443 free on this machine. Not part of `test`.
image-test: build
	@scripts/image-test.sh

## Fuzz the parsers with cargo-fuzz (libFuzzer), 60 s per target, and print a table of
## executions, corpus and crashes. Not part of `test`. FUZZ_ARGS="300" for 300 s each,
## FUZZ_ARGS="30 authority flysrc" for some targets (or FUZZ_SECONDS=300).
fuzz: setup
	scripts/fuzz.sh $(FUZZ_ARGS)

lint: setup
	shellcheck -s sh deploy/shell/proxypilot-trust
	shellcheck scripts/pgo.sh scripts/pgo-flags.sh scripts/bolt.sh
	cargo fmt --check
	$(PGO_RUSTFLAGS) cargo clippy --release --locked --all-targets -- -D warnings

fmt:
	cargo fmt

clean:
	cargo clean
	rm -rf run
