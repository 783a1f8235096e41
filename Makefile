# The two commands a fresh machine needs: `make run` and `make test`.
CONFIG ?= examples/gateway.toml
VENV   := .venv
STAMPS := target/.stamps

.PHONY: run build plugins test test-unit test-e2e lint bench setup-system setup-test clean

## run: build the gateway and the plugins, then serve $(CONFIG)
run: build
	GATEWAY_BIN=target/release/gateway scripts/build-plugins.sh
	target/release/gateway check --config $(CONFIG)
	target/release/gateway run --config $(CONFIG)

## build: the release gateway binary
build: setup-system
	cargo build --release -p gateway

## plugins: every crate in plugins/ (and the test plugins) to components in target/
plugins: setup-system
	scripts/build-plugins.sh

## test: install what the tests need, then run every test (unit, then end-to-end with real clients)
test: setup-system setup-test plugins test-unit test-e2e

test-unit:
	cargo test --workspace
	cd plugins && cargo test -q
	cd plugin-sdk/examples/rust && cargo test -q

test-e2e:
	cargo build -p gateway
	$(VENV)/bin/pytest tests

## lint: formatting and clippy, as CI checks them
lint: setup-system
	python3 scripts/check-architecture.py
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cd plugins && cargo fmt --all -- --check && cargo clippy -q --all-targets -- -D warnings

## bench: the load bench (gateway vs calling the mock directly); writes benches/RESULTS.md
bench: setup-system
	benches/run-load.sh --write

## bench-streams: 10,000 concurrent 60 s streams through the stock plugins; appends to benches/RESULTS.md
.PHONY: bench-streams
bench-streams: setup-system
	benches/run-streams.sh --write

## bench-state: the stock plugins' latency and req/s with the Redis state store against memory (needs Redis on 127.0.0.1:6379); appends to benches/RESULTS.md
.PHONY: bench-state
bench-state: setup-system
	benches/run-state.sh --write

setup-system:
	scripts/setup-system.sh

## setup-test: the test tools (Python venv, Claude Code from npm) and a running Redis
setup-test: $(STAMPS)/venv $(STAMPS)/npm
	scripts/setup-system.sh test

$(STAMPS)/venv: tests/requirements.txt
	mkdir -p $(STAMPS)
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
	touch $@

$(STAMPS)/npm: tests/package.json tests/package-lock.json
	mkdir -p $(STAMPS)
	cd tests && npm ci --no-audit --no-fund --loglevel=error
	touch $@

clean:
	cargo clean
	rm -rf $(VENV) tests/node_modules plugins/target
