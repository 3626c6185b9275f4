# wasmlet — the only entry points a user needs: `make run`, `make test`, `make bench`.

CARGO ?= cargo
# CI points this outside the clone so repeated runs reuse compiled dependencies.
export CARGO_TARGET_DIR ?= $(CURDIR)/target
BIN := $(CARGO_TARGET_DIR)/debug
RUN_DIR := $(CURDIR)/.run

.PHONY: all build build-deps examples packaging-configs run run-ha run-agent test test-deps lint fmt fuzz bench bench-deps clean-run deb debs deb-deps cross-deps

all: build

## What building needs beside Rust: protoc, which compiles the etcd client's protocol (idempotent).
build-deps:
	@command -v protoc >/dev/null 2>&1 \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler)

## Toolchain pieces the build and the tests need (idempotent, quick when present), the
## etcd servers the three-master tests start (Debian's etcd-server), the OCI registry
## the module-source tests push to (Debian's docker-registry; the tests start their own),
## `ip` and `iptables`, with which the NAT test builds a masquerading router of namespaces,
## and Debian's headless-capable Chromium with its WebDriver, in which the dashboard tests run.
test-deps: build-deps
	@command -v etcd >/dev/null 2>&1 \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server)
	@command -v docker-registry >/dev/null 2>&1 \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry)
	@command -v iptables >/dev/null 2>&1 && command -v ip >/dev/null 2>&1 \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables iproute2)
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)
	@rustup target list --installed | grep -qx wasm32-wasip1 && rustup target list --installed | grep -qx wasm32-wasip2 \
		|| rustup target add wasm32-wasip1 wasm32-wasip2
	@command -v cargo-nextest >/dev/null 2>&1 || $(CARGO) install cargo-nextest --locked

## Builds every binary of the workspace (one profile for building, testing and benchmarking).
build: build-deps
	$(CARGO) build --workspace --bins

## The example workloads, compiled for wasm32-wasip1/-wasip2 into wasm-examples/dist.
examples: test-deps
	CARGO_TARGET_DIR=$(CARGO_TARGET_DIR)/wasm-examples bash wasm-examples/build.sh

## Builds, then starts a master and one agent on this machine and deploys the hello and sensor examples; Ctrl-C stops them.
## The master listens on LISTEN: loopback by default; `make run LISTEN=0.0.0.0` lets other machines join it.
LISTEN ?= 127.0.0.1
run: build examples
	WASMLET_RUN_LISTEN=$(LISTEN) bash scripts/run-local.sh $(BIN) $(RUN_DIR)

## Three etcd members, three masters on them and two agents on this machine, with the examples applied; Ctrl-C stops them.
run-ha: build examples test-deps
	bash scripts/run-ha.sh $(BIN) $(RUN_DIR)

## One agent on its own (no master), running the examples from a manifests directory: the IoT case.
run-agent: build examples
	@mkdir -p $(RUN_DIR)/agent-alone
	@bash wasm-examples/manifests.sh $(RUN_DIR)/manifests $(RUN_DIR)/sensor-data
	$(BIN)/wasmlet-agent --data-dir $(RUN_DIR)/agent-alone --api-addr 127.0.0.1:7071 --ingress-addr 127.0.0.1:7080 \
		--manifests-dir $(RUN_DIR)/manifests --allowed-host-paths $(RUN_DIR)/sensor-data

## The commented config files packages install, generated from the binaries' flags (a test checks they match).
packaging-configs: build
	$(BIN)/wasmlet-agent config-template > packaging/agent.toml
	$(BIN)/wasmlet-master config-template > packaging/master.toml

## Installs what the tests need, then runs the whole suite (the packages of both architectures included).
test: test-deps build examples debs
	$(CARGO) nextest run --workspace --no-fail-fast

## Debian packages: `make deb` for this machine, `make deb ARCH=arm64` cross-compiled on an amd64
## machine (Debian's gcc-aarch64-linux-gnu). Release builds; the .debs land in $(CARGO_TARGET_DIR)/debian.
HOST_ARCH := $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
ARCH ?= $(HOST_ARCH)
TRIPLE_amd64 := x86_64-unknown-linux-gnu
TRIPLE_arm64 := aarch64-unknown-linux-gnu
TRIPLE := $(TRIPLE_$(ARCH))
TARGET_FLAG := $(if $(filter $(HOST_ARCH),$(ARCH)),,--target $(TRIPLE))
CARGO_DEB := /var/tmp/wasmlet-tools/bin/cargo-deb
DEB_DIR := $(CARGO_TARGET_DIR)/debian

deb: deb-deps
	@test -n "$(TRIPLE)" || (echo "ARCH=$(ARCH) is not supported: amd64 or arm64" >&2; exit 2)
	$(CARGO) build --release $(TARGET_FLAG) -p wasmlet-agent -p wasmlet-master -p wasmlet-cli
	$(CARGO_DEB) --no-build --strip $(TARGET_FLAG) -p wasmlet-agent --output $(DEB_DIR)
	$(CARGO_DEB) --no-build --strip $(TARGET_FLAG) -p wasmlet-master --output $(DEB_DIR)

## This machine's packages, and on amd64 the arm64 ones too (the tests check them and run the ARM agent under emulation).
debs:
	$(MAKE) deb
	$(if $(filter amd64,$(HOST_ARCH)),$(MAKE) deb ARCH=arm64)

## cargo-deb, and for a foreign ARCH Debian's cross compiler and the Rust target.
deb-deps: build-deps
	@test -x $(CARGO_DEB) || $(CARGO) install cargo-deb --version 3.8.0 --locked --root /var/tmp/wasmlet-tools
	@if [ "$(ARCH)" != "$(HOST_ARCH)" ]; then $(MAKE) --no-print-directory cross-deps ARCH=$(ARCH); fi
	@command -v qemu-aarch64-static >/dev/null 2>&1 || [ "$(HOST_ARCH)" != amd64 ] || $(MAKE) --no-print-directory cross-deps ARCH=arm64

## A cross toolchain for ARCH=arm64, and qemu to run its binaries here (idempotent).
cross-deps:
	@test "$(ARCH)" = arm64 || (echo "cross builds go from amd64 to arm64 only" >&2; exit 2)
	@command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 && command -v qemu-aarch64-static >/dev/null 2>&1 \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static)
	@rustup target list --installed | grep -qx $(TRIPLE) || rustup target add $(TRIPLE)

lint: build-deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Fuzzes the parsers of untrusted input (fuzz/src: manifests, quantities, durations, protocol messages,
## join tokens) with libFuzzer, FUZZ_SECONDS each, niced, then minimises fuzz/corpus, which `make test` replays.
## cargo-fuzz needs nightly features: the stable toolchain allows them with RUSTC_BOOTSTRAP=1.
CARGO_FUZZ := /var/tmp/wasmlet-tools/bin/cargo-fuzz
FUZZ_SECONDS ?= 120
FUZZ := cd fuzz && RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=$(CARGO_TARGET_DIR)/fuzz nice $(CARGO_FUZZ)
# No sanitizer (the targets are safe Rust); debug assertions on, so an overflow is a finding.
FUZZ_FLAGS := --fuzz-dir libfuzzer --sanitizer none --debug-assertions
fuzz:
	@test -x $(CARGO_FUZZ) || $(CARGO) install cargo-fuzz --version 0.13.2 --locked --root /var/tmp/wasmlet-tools
	@set -e; for target in $$($(FUZZ) list --fuzz-dir libfuzzer); do \
		echo "fuzzing $$target for $(FUZZ_SECONDS) s"; \
		mkdir -p fuzz/corpus/$$target; \
		($(FUZZ) run $(FUZZ_FLAGS) $$target corpus/$$target -- -max_total_time=$(FUZZ_SECONDS)); \
		($(FUZZ) cmin $(FUZZ_FLAGS) $$target corpus/$$target); \
	done

## Tools the benchmarks compare against and drive load with.
bench-deps:
	@command -v wrk >/dev/null 2>&1 && test -x /usr/bin/prometheus-node-exporter \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk prometheus-node-exporter)
	@# The Debian package enables a system service; the bench starts its own copy on loopback.
	@systemctl disable --now prometheus-node-exporter >/dev/null 2>&1 || true
	@# The wasmtime CLI of the version the agent embeds, for `density` (builds once, ~11 min on 2 cores,
	@# in a target dir of its own, removed afterwards, so the workspace's stays as it is).
	@test -x /var/tmp/wasmlet-tools/bin/wasmtime \
		|| (CARGO_TARGET_DIR=/var/tmp/wasmlet-tools/build $(CARGO) install wasmtime-cli --version 48.0.8 --locked --root /var/tmp/wasmlet-tools \
			&& rm -rf /var/tmp/wasmlet-tools/build)

## Benchmarks, printed as JSON lines, on release builds (the references are release builds too).
## `make bench SCENARIOS="report start"` runs a subset; scenarios: report start pull density failover heartbeats schedule ha http footprint.
bench: bench-deps examples debs
	$(CARGO) build --release --workspace --bins
	WASMLET_BIN_DIR=$(CARGO_TARGET_DIR)/release $(CARGO_TARGET_DIR)/release/wasmlet-bench $(SCENARIOS)

clean-run:
	rm -rf $(RUN_DIR)
