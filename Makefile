# The README's two commands are `scripts/ironclaw run -- ...` and `make test`.
.PHONY: setup test unit bench soak fmt

setup:
	scripts/setup.sh

# Every test: unit tests and tests that boot real VMs (QEMU, TCG here).
test: setup
	cargo test --workspace

unit:
	cargo test --workspace --lib --bins

bench: setup
	target/release/ironclaw bench --output docs/benchmarks.md

# 300 sandboxes in a row through the library and the service (docs/reliability.md).
soak: setup
	target/release/ironclaw bench --soak 300 --output docs/reliability.md

fmt:
	cargo fmt --all
