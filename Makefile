# LLM-Orchestrator: the whole CI contract is `make test`.
#
#   make demo    validate every example, explain and draw one, and run it offline (mock models)
#   make test    formatting, lints, every test, and a one-shot run of the benchmarks
#   make bench   the benchmarks, measured (figures go to BENCHMARKS.md)
#   make schema  regenerate schema/workflow.schema.json from the Rust types

CARGO ?= cargo
LLMO  := target/release/llmo
EXAMPLES := $(wildcard workflows/*.yaml)

.PHONY: all demo build test lint fmt unit bench-smoke bench schema clean

all: test

build:
	$(CARGO) build --release -p llmo-cli

demo: build
	$(LLMO) validate $(EXAMPLES)
	@echo
	$(LLMO) explain workflows/article-pipeline.yaml
	@echo
	$(LLMO) graph --format mermaid workflows/article-pipeline.yaml
	@echo
	$(LLMO) run --mock workflows/article-pipeline.yaml --input topic="Rust ownership"

test: lint unit bench-smoke

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit:
	$(CARGO) test --workspace --locked

# Runs each benchmark once (criterion's --test mode) so a broken benchmark fails CI
# without spending CI minutes on measurement.
bench-smoke:
	$(CARGO) bench --locked -p llmo-core --bench validate --bench engine -- --test

bench:
	$(CARGO) bench --locked -p llmo-core --bench validate --bench engine

schema:
	$(CARGO) run -q -p llmo-cli -- schema -o schema/workflow.schema.json

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
