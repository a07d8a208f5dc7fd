# LLM-Orchestrator: the whole CI contract is `make test`.
#
#   make demo    validate every example, explain and draw one, run every example offline
#                (mock models, canned HTTP answers), one of them durably with resume/status
#   make test    formatting, lints, every test, and a one-shot run of the benchmarks
#   make local   the serverless system on this machine (local AWS, api, step workers, dlq)
#   make package cargo lambda build --profile lambda of every function, and the lambda test on them
#   make bench   the benchmarks, measured (figures go to BENCHMARKS.md)
#   make soak    the chaos soak, long: 300 example runs on 4 step workers, one SIGKILLed every
#                second (a 16-run version is part of `make test`)
#   make schema  regenerate schema/workflow.schema.json from the Rust types
#   make infra   regenerate infra/generated.yaml (the examples' schedules and event rules)

CARGO ?= cargo
LLMO  := target/release/llmo
EXAMPLES := $(filter-out %.test.yaml,$(wildcard workflows/*.yaml))
# Examples that wait for people or events (answered with `llmo approve` / `llmo send-event`).
WAIT_EXAMPLES := $(filter-out %.test.yaml,$(wildcard workflows/waits/*.yaml))
DEMO_STATE := .llmo/demo.db

.PHONY: all demo build test lint fmt unit local lambda package bench-smoke bench schema clean stack-up stack-down deploy teardown infra soak

all: test

build:
	$(CARGO) build --release -p llmo-cli

demo: build
	$(LLMO) validate $(EXAMPLES) $(WAIT_EXAMPLES)
	@echo
	$(LLMO) explain workflows/article-pipeline.yaml
	@echo
	$(LLMO) graph --format mermaid workflows/article-pipeline.yaml
	@echo
	$(LLMO) run --mock workflows/article-pipeline.yaml --input topic="Rust ownership"
	@echo
	$(LLMO) run --mock workflows/simple-inference.yaml -i question="What is a DAG?"
	@echo
	LLMO_SECRET_TICKETS_TOKEN=offline $(LLMO) run --mock workflows/nightly-digest.yaml \
	  --fixtures workflows/fixtures/nightly-digest.http.yaml
	@echo
	$(LLMO) run --mock workflows/document-intake.yaml --fixtures workflows/fixtures/document-intake.http.yaml \
	  --state $(DEMO_STATE) -i bucket=acme-intake -i key=contracts/msa.pdf
	@echo
	$(LLMO) runs --state $(DEMO_STATE)
	@echo
	$(LLMO) test workflows

test: lint unit bench-smoke

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	localstack/stack.sh install
	.venv/tools/bin/python infra/check.py infra/template.yaml
	.venv/tools/bin/python infra/check.py --self-test
	.venv/tools/bin/cfn-lint infra/template.yaml infra/generated.yaml
	.venv/tools/bin/checkov --config-file infra/checkov.yaml
	SAM_CLI_TELEMETRY=0 .venv/sam/bin/sam validate --lint --template infra/template.yaml

# Every test, with the local AWS (LocalStack for SQS/S3, moto for DynamoDB) started for the
# serverless tests and stopped after. The nightly-digest example reads a secret from the env.
# functions/lambda-test.sh then runs the four functions under `cargo lambda watch` and invokes
# them with real event payloads.
# Last, infra/template.yaml is deployed on moto's CloudFormation and the one-command local system
# (localstack/run-local.sh --cfn) runs on the resources it created: it answers `llmo submit --wait`,
# and schemathesis fuzzes the API against docs/openapi.json. Then `llmo serve` passes the same
# end-to-end checks (tests/api_smoke.sh), and a Ctrl-C mid-run loses nothing. Last, the step and
# dlq functions run as real Lambda functions (LocalStack's Lambda in a Docker engine with no
# bridge and no firewall rules, fed by the SQS mappings infra/template.yaml declares), and the
# examples run through them (localstack/lambda/smoke.sh).
# The test binaries are built first, before the local AWS is started.
# The serverless benchmark once, small, with its contention targets checked (the debug
# build `cargo test` made of it): the layered DAG at the size its targets are set for (a
# 200-task DAG packs into 2 messages a layer, so 16 workers there fold more often per step
# than one worker that takes the whole layer in one batch; about 7 s), fewer workers; 30 child
# runs (`type: workflow`) on 2 workers.
SERVERLESS_SMOKE := target/debug/examples/serverless --check wide 300 1 4 16 && target/debug/examples/serverless --check layered 1000 1 4 16 && target/debug/examples/serverless children 30 2 && target/debug/examples/serverless agent 20 2
# The I/O-bound benchmark once, small (1,000 model calls of 300 ms, 100 at a time), checked.
IO_SMOKE := target/debug/examples/io_bound 1000 100 300 --check
# A read of a run whose log is dear to replay, once (debug build; checks a load replays nothing dear).
# The examples' test cases (workflows/**/*.test.yaml), offline, with a JUnit report.
EXAMPLE_TESTS := target/debug/llmo test workflows --junit target/llmo-test.junit.xml
REPLAY_SMOKE := target/debug/examples/replay 200 20000 --check
# Process start to first step, once (the debug build: it checks the measurement, not the figure).
FIRST_STEP_SMOKE := target/debug/llmo synth --shape layered --tasks 1000 > target/synth-1000.yaml && \
  python3 tests/bench/first_step.py target/debug/llmo target/synth-1000.yaml 2
# A run's events reaching a client of its stream, once (3 runs of 5 sleeps; debug build).
EVENTS_SMOKE := python3 tests/bench/events_latency.py target/debug/llmo 3 5
unit:
	$(CARGO) test --workspace --locked --no-run
	LLMO_SECRET_TICKETS_TOKEN=offline localstack/with-stack.sh \
	  sh -c '$(CARGO) test --workspace --locked && functions/lambda-test.sh && $(SERVERLESS_SMOKE)'
	$(EXAMPLE_TESTS)
	$(IO_SMOKE)
	$(REPLAY_SMOKE)
	$(FIRST_STEP_SMOKE)
	$(EVENTS_SMOKE)
	LLMO_API_ADDR=127.0.0.1:18080 localstack/run-local.sh --smoke --cfn
	tests/serve_smoke.sh 127.0.0.1:18090
	tests/ui/agent_page.sh
	localstack/lambda/smoke.sh

# The functions as real Lambda functions on this machine (LocalStack's Lambda in Docker), checked.
lambda:
	$(CARGO) build --locked --workspace --bins --examples
	localstack/lambda/smoke.sh

# The serverless system on this machine: local AWS, api on :8080, step workers, dlq (Ctrl-C stops).
local:
	localstack/run-local.sh

# `cargo lambda build --profile lambda` of every function (target/lambda/NAME/bootstrap: fat LTO,
# optimized for size, stripped; see Cargo.toml), then the
# same lambda test run against the packaged bootstraps (about 10 minutes on 2 cores), then the
# real-Lambda smoke with them.
package:
	localstack/with-stack.sh functions/lambda-test.sh --packaged
	FUNCTIONS=target/lambda localstack/lambda/smoke.sh

# Deploys infra/template.yaml to the AWS account of your credentials (see README, "Deploying to
# AWS"): sam build (cargo lambda, arm64) then sam deploy, which shows the change set first.
#   make deploy JWT_ISSUER=https://... JWT_AUDIENCE=... [ALARM_TOPIC=arn:aws:sns:...]
# sam build runs `cargo lambda build --release`: these give it Cargo.toml's `lambda` profile.
LAMBDA_PROFILE := CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_OPT_LEVEL=s CARGO_PROFILE_RELEASE_STRIP=true
SAM := SAM_CLI_TELEMETRY=0 PATH="$(CURDIR)/.venv/tools/bin:$$PATH" .venv/sam/bin/sam
deploy:
	@test -n "$(JWT_ISSUER)" -a -n "$(JWT_AUDIENCE)" || { echo "make deploy JWT_ISSUER=<your identity provider's issuer> JWT_AUDIENCE=<its audience/client id>" >&2; exit 2; }
	localstack/stack.sh install
	$(LAMBDA_PROFILE) $(SAM) build --config-file infra/samconfig.toml
	$(SAM) deploy --config-file infra/samconfig.toml \
	  --parameter-overrides JwtIssuer=$(JWT_ISSUER) JwtAudience=$(JWT_AUDIENCE) AlarmTopicArn=$(ALARM_TOPIC)

teardown:
	$(SAM) delete --config-file infra/samconfig.toml

stack-up:
	localstack/stack.sh up

stack-down:
	localstack/stack.sh down

# Runs each benchmark once (criterion's test mode, as under `cargo test`) so a broken
# benchmark fails CI without spending CI minutes on measurement, or on a release build of
# every dependency: the benches are built with the test profile the tests already built.
bench-smoke:
	$(CARGO) test --workspace --locked --bench validate --bench engine --bench driver

bench:
	$(CARGO) bench --locked -p llmo-core --bench validate --bench engine
	$(CARGO) bench --locked -p llmo-runtime --bench driver
	$(CARGO) build --release --locked -p llmo-runtime --example e2e
	for s in chain fan layered; do for st in memory sqlite; do target/release/examples/e2e $$s $$st; done; done
	$(CARGO) build --release --locked -p llmo-runtime --example model_server --example io_bound
	target/release/examples/io_bound 5000 100 200
	target/release/examples/io_bound 5000 500 200
	$(CARGO) build --release --locked -p llmo-runtime --example replay
	target/release/examples/replay 1000 100000 --check
	$(CARGO) build --release --locked -p llmo-lambda --examples
	target/release/examples/invoke_bench 300
	$(CARGO) build --release --locked -p llmo-aws --example serverless -p llmo-fn-step -p llmo-runtime --example model_server
	localstack/with-stack.sh sh -c 'target/release/examples/serverless --check wide 10000 1 4 16 64 && \
	  target/release/examples/serverless --latency 200 layered 1000 1 4 16 64 && \
	  target/release/examples/serverless --latency 200 --pack 1 layered 1000 1 4 16 64 && \
	  target/release/examples/serverless --check layered 1000 1 4 16 64 && \
	  target/release/examples/serverless --pack 1 --check wide 10000 1 4 16 64 && \
	  target/release/examples/serverless --pack 1 layered 1000 1 4 16 64 && \
	  target/release/examples/serverless --no-fold layered 1000 1 4 16 64 && \
	  target/release/examples/serverless --window 1 --check wide 10000 1 4 16 64 && \
	  target/release/examples/serverless --window 1 layered 1000 1 4 16 64 && \
	  target/release/examples/serverless chain 200 1 4 && \
	  target/release/examples/serverless children 200 4 && \
	  target/release/examples/serverless agent 200 1 4 && \
	  target/release/examples/serverless --pack 1 agent 200 1 4 && \
	  target/release/examples/serverless --cold target/release/step'
	$(CARGO) build --release --locked -p llmo-cli
	target/release/llmo synth --shape layered --tasks 1000 > target/synth-1000.yaml
	python3 tests/bench/first_step.py target/release/llmo target/synth-1000.yaml 21
	target/release/llmo synth --shape layered --tasks 10000 > target/synth-10000.yaml
	CARGO_TARGET_DIR=$(CURDIR)/target/yaml-parsers $(CARGO) run --release --locked \
	  --manifest-path tests/bench/yaml-parsers/Cargo.toml -- target/synth-1000.yaml target/synth-10000.yaml
	# The API under load: llmo serve (16 clients, then 10,000 runs waiting), the local stack's api.
	$(CARGO) build --release --locked --workspace --bins --examples
	tests/bench/api_load.sh serve
	tests/bench/api_load.sh stack
	# A run's transitions reaching a client of its event stream (llmo serve, release).
	python3 tests/bench/events_latency.py target/release/llmo 20 20

# Prints its figures as one `soak: {...}` line (BENCHMARKS.md, "Chaos soak").
soak:
	$(CARGO) test --locked -p llmo-fn-step --test soak --no-run
	$(CARGO) build --locked -p llmo-lambda --examples
	SOAK_RUNS=300 SOAK_KILL_MS=1000 localstack/with-stack.sh \
	  sh -c '$(CARGO) test --locked -p llmo-fn-step --test soak -- --nocapture'

schema:
	$(CARGO) run -q -p llmo-cli -- schema -o schema/workflow.schema.json

# The examples' schedules and event rules (a test keeps the committed file current).
infra:
	$(CARGO) run -q -p llmo-cli -- infra $(EXAMPLES) --tenant examples -o infra/generated.yaml

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
