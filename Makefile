# The README's two commands are `scripts/ironclaw run -- ...` and `make test`.
.PHONY: setup test unit bench fmt

setup:
	scripts/setup.sh

# Every test: unit tests and tests that boot real VMs (QEMU, TCG here).
test: setup
	cargo test --workspace

unit:
	cargo test --workspace --lib --bins

bench: setup
	target/release/ironclaw bench --output docs/benchmarks.md

fmt:
	cargo fmt --all
