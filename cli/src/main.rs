//! `llmo`: the LLM-Orchestrator command line.
//!
//! Thin on purpose: it reads files, calls the core, and renders what the core returns.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use llmo_core::source::SourceFile;
use llmo_core::validate::{Checked, Outcome, Validator};
use llmo_core::yaml::Limits;

mod explain;
mod infra;
mod remote;
mod run;
mod serve;
mod server;
mod term;
mod testing;
mod waits;
mod watch;

// Validation of large files allocates many small objects; mimalloc makes that markedly faster.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "llmo",
    version,
    about = "LLM-Orchestrator: validate, draw, explain and run LLM workflows",
    long_about = "LLM-Orchestrator runs DAGs of LLM calls, transforms, HTTP tools, evaluations and policy checks.\n\
                  This command checks workflow files (YAML, format llm-orchestrator/v1), shows their structure,\n\
                  and runs them in this process, durably with --state.",
    after_help = "Examples:\n  llmo validate workflows/*.yaml\n  llmo graph workflows/article-pipeline.yaml --format mermaid\n  llmo explain workflows/article-pipeline.yaml\n  llmo run workflows/article-pipeline.yaml --mock --state .llmo/runs.db\n  llmo runs\n  llmo schema > workflow.schema.json"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Diagnostics on stderr as text or as JSON lines (with the run and task ids of every
    /// line). Filter with RUST_LOG; spans go to OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    #[arg(long, global = true, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
}

#[derive(Subcommand)]
enum Command {
    /// Check workflow files and report every error, with file:line:column.
    ///
    /// Exit status: 0 when every file is valid, 1 when any has an error (or, with
    /// --deny-warnings, a warning), 2 when a file cannot be read.
    Validate {
        /// Workflow files (`-` reads standard input).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Human)]
        format: ReportFormat,
        /// Treat warnings as errors.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Draw a workflow's task graph.
    Graph {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
        format: GraphFormat,
    },
    /// Print the JSON Schema of the workflow format (for editors and other tools).
    Schema {
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Run a workflow in this process and print its outputs as JSON.
    ///
    /// Independent tasks run at the same time. Model calls go to the providers configured in
    /// .llmo/config.yaml (or --config / $LLMO_CONFIG) with keys from the environment
    /// (OPENAI_API_KEY, ANTHROPIC_API_KEY, ...); --mock answers them offline instead, and
    /// answers `http` tasks with an echo; --fixtures scripts answers per task, with or without it.
    Run {
        file: PathBuf,
        /// An input, NAME=VALUE (VALUE is read as JSON when it parses, else as text). Repeatable.
        #[arg(long = "input", short = 'i', value_name = "NAME=VALUE")]
        inputs: Vec<String>,
        /// A JSON or YAML file of inputs.
        #[arg(long)]
        input_file: Option<PathBuf>,
        /// Keep the run in this SQLite file, so it can be resumed, inspected and cancelled (in
        /// memory otherwise).
        #[arg(long, value_name = "PATH")]
        state: Option<PathBuf>,
        /// Serve the run page (the DAG with live task states) and print its link: `--ui` on
        /// 127.0.0.1 on a free port, `--ui=ADDR` on ADDR; it stays up after the run ends,
        /// until Ctrl-C.
        #[arg(long, value_name = "ADDR", num_args = 0..=1, require_equals = true, default_missing_value = "127.0.0.1:0")]
        ui: Option<String>,
        /// Serve Prometheus metrics on http://ADDR/metrics (no token: keep it on loopback);
        /// stays up after the run ends, until Ctrl-C.
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<String>,
        #[command(flatten)]
        exec: ExecArgs,
    },
    /// Continue a failed or timed-out run from its failed tasks: tasks that succeeded keep
    /// their outputs and do not run again; the others run again with fresh retries.
    Redrive {
        run_id: String,
        /// Edit an input for the tasks that run again, NAME=VALUE (VALUE is read as JSON when it
        /// parses, else as text). Repeatable; recorded with the redrive in the run's history.
        #[arg(long = "input", short = 'i', value_name = "NAME=VALUE")]
        inputs: Vec<String>,
        #[arg(long, value_name = "PATH", default_value = ".llmo/runs.db")]
        state: PathBuf,
        /// Ask the serverless API at this URL instead of a state file.
        #[arg(long, value_name = "URL")]
        api: Option<String>,
        #[command(flatten)]
        exec: ExecArgs,
    },
    /// A new run that reuses a stored run's recorded outputs and runs TASK and everything
    /// downstream of it again (its provenance names the source run).
    Rerun {
        run_id: String,
        /// The task to run again from.
        #[arg(long, value_name = "TASK")]
        from: String,
        #[arg(long, value_name = "PATH", default_value = ".llmo/runs.db")]
        state: PathBuf,
        /// Ask the serverless API at this URL instead of a state file.
        #[arg(long, value_name = "URL")]
        api: Option<String>,
        #[command(flatten)]
        exec: ExecArgs,
    },
    /// List the tasks waiting for an approval or an event (in a state file, or with --api
    /// in the serverless API's tenant).
    Waiting {
        #[arg(long, value_name = "PATH", default_value = ".llmo/runs.db")]
        state: PathBuf,
        /// Ask the serverless API at this URL instead of a state file.
        #[arg(long, value_name = "URL")]
        api: Option<String>,
        /// `json`: one JSON array instead of lines (`--json` is kept as its old spelling).
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[arg(long, hide = true)]
        json: bool,
    },
    /// Approve a task waiting for an approval (`type: wait` with `approval`, or an agent's tool
    /// call whose tool has an `approval`). Exit status 3
    /// when it no longer waits (answered already, timed out, the run ended).
    Approve {
        #[command(flatten)]
        answer: AnswerArgs,
    },
    /// Reject a task waiting for an approval. Exit status 3 when it no longer waits.
    Reject {
        #[command(flatten)]
        answer: AnswerArgs,
    },
    /// Post an event: every task waiting for an event of this name and key (in a state file,
    /// or with --api in the API's tenant) receives it, once. Exit 3 when no task waited for it.
    SendEvent {
        /// The event's name (as the waiting tasks' `event.name` says).
        name: String,
        /// The correlation key (as the waiting tasks' `event.key` renders it).
        #[arg(long, default_value = "")]
        key: String,
        /// The event's payload, JSON (later tasks read `tasks.<id>.output.payload`).
        #[arg(long, default_value = "null")]
        payload: String,
        #[arg(long, value_name = "PATH", default_value = ".llmo/runs.db")]
        state: PathBuf,
        /// Ask the serverless API at this URL instead of a state file.
        #[arg(long, value_name = "URL")]
        api: Option<String>,
    },
    /// Answer a callback's task token (a `function` or `http` task with `callback`): the task
    /// succeeds with --output, its attempt fails with --error (`retry` applies unless
    /// --no-retry), or --heartbeat keeps it alive. In a state file, or with --api through the
    /// API (`POST /callbacks/{token}`). Exit status 3 when the attempt no longer waits.
    Callback {
        /// The task token its call carried.
        token: String,
        /// The task's output, JSON.
        #[arg(long, value_name = "JSON", conflicts_with_all = ["error", "heartbeat"], required_unless_present_any = ["error", "heartbeat"])]
        output: Option<String>,
        /// Fail the attempt with this message.
        #[arg(long, value_name = "MESSAGE", conflicts_with = "heartbeat")]
        error: Option<String>,
        /// With --error: fail the task without another attempt.
        #[arg(long, requires = "error")]
        no_retry: bool,
        /// Report that the call is still being worked on (its `heartbeat` deadline moves).
        #[arg(long)]
        heartbeat: bool,
        #[arg(long, value_name = "PATH", default_value = ".llmo/runs.db")]
        state: PathBuf,
        /// Answer through the API at this URL instead of a state file.
        #[arg(long, value_name = "URL")]
        api: Option<String>,
    },
    /// Continue a run interrupted (even by kill -9) from its state file.
    /// A run another live process executes is refused (one executor per run) unless --wait.
    Resume {
        run_id: String,
        #[arg(long, value_name = "PATH", default_value = ".llmo/runs.db")]
        state: PathBuf,
        /// Wait for the process executing the run to end or die, then take the run over.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        exec: ExecArgs,
    },
    /// Submit a workflow to the serverless API (deployed, or `api --local`) and print the run
    /// id; with --wait, follow it and print its outputs.
    Submit {
        file: PathBuf,
        /// An input, NAME=VALUE (VALUE is read as JSON when it parses, else as text). Repeatable.
        #[arg(long = "input", short = 'i', value_name = "NAME=VALUE")]
        inputs: Vec<String>,
        /// A JSON or YAML file of inputs.
        #[arg(long)]
        input_file: Option<PathBuf>,
        /// The API's base URL (default: $LLMO_API_URL, else http://127.0.0.1:8080).
        #[arg(long, value_name = "URL")]
        api: Option<String>,
        /// Submitting again with the same key returns the first run instead of starting another.
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
        /// Follow the run to its end and print its outputs.
        #[arg(long)]
        wait: bool,
    },
    /// Read the serverless API's audit trail (admins): who did what, to what, when.
    Audit {
        /// Only this run's records (its requests and status changes).
        #[arg(long, value_name = "RUN_ID")]
        run: Option<String>,
        /// How far back, e.g. 30m, 24h, 7d (default 24h; 30d with --run; at most 31d).
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
        /// Another tenant's records (operators only).
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// The API's base URL (default: $LLMO_API_URL, else http://127.0.0.1:8080).
        #[arg(long, value_name = "URL")]
        api: Option<String>,
        /// The answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the serverless system's sweeper once (operators): start runs whose start was lost,
    /// time out runs past their deadline. It also runs every 5 minutes on its own.
    Sweep {
        /// The API's base URL (default: $LLMO_API_URL, else http://127.0.0.1:8080).
        #[arg(long, value_name = "URL")]
        api: Option<String>,
    },
    /// Serve the REST API on this machine without AWS: the deployed API's routes, auth,
    /// tenancy, waits, audit, run pages and /metrics on one SQLite file, with step workers,
    /// the sweeper and registered workflows' schedules in the process. Prints a development
    /// token (unless LLMO_AUTH configures tokens) and stops gracefully on Ctrl-C.
    Serve {
        /// The SQLite file of runs, registered workflows, audit trail and queue.
        #[arg(long, default_value = ".llmo/serve.db")]
        state: PathBuf,
        /// The address to listen on (keep it on loopback unless tokens come from LLMO_AUTH).
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
        /// Step workers consuming the queue at once.
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// The tenant of the printed development token.
        #[arg(long, default_value = "local")]
        tenant: String,
        /// Days the printed development token is valid.
        #[arg(long, default_value_t = 30)]
        token_days: u64,
        #[command(flatten)]
        exec: ExecArgs,
    },
    /// Print an HS256 bearer token for a local API (`llmo serve` or `api --local` verifying
    /// with $LLMO_JWT_SECRET). Use it as `export LLMO_TOKEN=$(llmo token --tenant acme)`.
    Token {
        #[arg(long)]
        tenant: String,
        /// viewer, developer or admin (repeatable; add `operator` to an admin to act on other tenants).
        #[arg(long = "role", default_value = "developer")]
        roles: Vec<String>,
        /// The token's subject (who you are).
        #[arg(long, default_value = "local-user")]
        sub: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        #[arg(long, env = "LLMO_JWT_AUDIENCE", default_value = "llmo-api")]
        audience: String,
        #[arg(long, env = "LLMO_JWT_ISSUER")]
        issuer: Option<String>,
    },
    /// Print a run's transition log from the serverless API.
    Logs {
        run_id: String,
        /// The API's base URL (default: $LLMO_API_URL, else http://127.0.0.1:8080).
        #[arg(long, value_name = "URL")]
        api: Option<String>,
        /// One JSON object per transition.
        #[arg(long)]
        json: bool,
    },
    /// Follow a run's events as they happen (each transition, what it changed, the run's
    /// end), from a state file or with --api from the API's event stream. Exit 0 when the
    /// run succeeded, 1 otherwise.
    Watch {
        run_id: String,
        #[arg(long, value_name = "PATH", default_value = ".llmo/runs.db")]
        state: PathBuf,
        /// Follow the run through the API at this URL (`GET /runs/{id}/events`; `$LLMO_TOKEN`).
        #[arg(long, value_name = "URL")]
        api: Option<String>,
        /// One JSON object per event.
        #[arg(long)]
        json: bool,
    },
    /// Print a stored run's state as JSON (from a state file, or with --api from the
    /// serverless API).
    Status {
        run_id: String,
        #[arg(long, value_name = "PATH", default_value = ".llmo/runs.db")]
        state: PathBuf,
        /// Ask the serverless API at this URL instead of a state file.
        #[arg(long, value_name = "URL")]
        api: Option<String>,
        /// Include the run's transition log.
        #[arg(long)]
        history: bool,
    },
    /// Cost, tokens and runs per day and workflow (or tenant), from a state file or with
    /// --api from the serverless API.
    Costs {
        /// Group by `workflow` or `tenant` besides the day.
        #[arg(long, value_parser = ["workflow", "tenant"], default_value = "workflow")]
        by: String,
        /// How far back: `7d`, `24h`, `30m`.
        #[arg(long, default_value = "7d")]
        since: String,
        #[arg(long, value_name = "PATH", default_value = ".llmo/runs.db")]
        state: PathBuf,
        /// Ask the serverless API at this URL instead of a state file.
        #[arg(long, value_name = "URL")]
        api: Option<String>,
        /// Operators: another tenant (with --api).
        #[arg(long)]
        tenant: Option<String>,
        /// `json`: the rows as JSON (`--json` is kept as its old spelling).
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[arg(long, hide = true)]
        json: bool,
    },
    /// List the runs of a state file, newest first: id, workflow, status (a run not ended:
    /// whether a live process executes it), cost, start time.
    Runs {
        #[arg(long, value_name = "PATH", default_value = ".llmo/runs.db")]
        state: PathBuf,
        /// Only runs of this workflow.
        #[arg(long)]
        workflow: Option<String>,
        /// Only runs in this status (`running`, `succeeded`, `failed`, ...).
        #[arg(long)]
        status: Option<String>,
        /// `json`: one JSON array.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Cancel a stored run: a process running it stops starting tasks; `on.failure` hooks run.
    Cancel {
        run_id: String,
        #[arg(long, value_name = "PATH", default_value = ".llmo/runs.db")]
        state: PathBuf,
        #[command(flatten)]
        exec: ExecArgs,
    },
    /// Print a generated workflow of N tasks (for benchmarks and scale tests).
    #[command(hide = true)]
    Synth {
        #[arg(long, value_enum, default_value_t = SynthShape::Layered)]
        shape: SynthShape,
        #[arg(long, default_value_t = 10_000)]
        tasks: usize,
    },
    /// Run workflows' test cases (NAME.test.yaml beside NAME.yaml) offline, in parallel.
    ///
    /// Each case gives inputs, fixtures (scripted model and HTTP answers), answers to the
    /// waits, and what it expects: the run's status, outputs, and tasks' statuses, outputs and
    /// attempts. Exit 0 when every case passed, 1 when one failed, 2 when a test file is
    /// invalid. Format: docs/workflow-spec.md, "Testing workflows".
    Test {
        /// Test files, workflows (their NAME.test.yaml), or directories searched for *.test.yaml
        /// (default: the current directory).
        paths: Vec<PathBuf>,
        /// Cases running at once (default: the machine's cores).
        #[arg(long, short = 'j')]
        jobs: Option<usize>,
        /// Only the cases whose name contains this text.
        #[arg(long)]
        filter: Option<String>,
        /// Write a JUnit XML report here (for CI).
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Provider configuration, for prices (default: $LLMO_CONFIG, else .llmo/config.yaml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Generate the EventBridge Scheduler schedules (`spec.schedule`) and EventBridge rules
    /// (`spec.events`) that start the workflows' runs, as a CloudFormation template to deploy
    /// beside the main stack (parameter ScheduleFunctionArn: its output of that name).
    Infra {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The tenant the runs belong to (the one that registers these workflows).
        #[arg(long)]
        tenant: String,
        /// Write the template here (JSON, which CloudFormation reads as YAML too) instead of stdout.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
        /// EventBridge Scheduler's flexible time window in minutes (0: each tick at its time).
        #[arg(long, default_value_t = 0)]
        flexible_window: u32,
    },
    /// Show a workflow's plan: levels, parallelism, critical path, and what each task can read.
    Explain {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = ExplainFormat::Text)]
        format: ExplainFormat,
    },
}

/// The arguments of `approve` and `reject`.
#[derive(clap::Args)]
struct AnswerArgs {
    run_id: String,
    /// The waiting task's id.
    task: String,
    /// Which item, for a `for_each` task.
    #[arg(long)]
    item: Option<u32>,
    /// For an agent task: the id of the tool call to answer (needed only when several of its
    /// calls wait for approval; `llmo waiting` lists them).
    #[arg(long)]
    call: Option<String>,
    /// A form field, NAME=VALUE (VALUE is read as JSON when it parses, else as text). Repeatable.
    #[arg(long = "field", short = 'f', value_name = "NAME=VALUE")]
    fields: Vec<String>,
    /// A comment recorded with the answer.
    #[arg(long)]
    comment: Option<String>,
    #[arg(long, value_name = "PATH", default_value = ".llmo/runs.db")]
    state: PathBuf,
    /// Ask the serverless API at this URL instead of a state file.
    #[arg(long, value_name = "URL")]
    api: Option<String>,
}

impl AnswerArgs {
    fn run(self, approved: bool) -> Result<ExitCode> {
        let a =
            waits::Answer { approved, fields: self.fields, comment: self.comment, item: self.item, call: self.call };
        match &self.api {
            Some(api) => {
                remote::answer(&self.run_id, &self.task, &a, serde_json::Value::Object(a.fields_map()?), Some(api))
            }
            None => waits::answer(&self.run_id, &self.task, &a, &self.state),
        }
    }
}

#[derive(clap::Args)]
struct ExecArgs {
    /// Answer model calls with the deterministic offline mock provider, and `http` tasks with
    /// an echo of the request, unless --fixtures answers them: nothing leaves this machine.
    #[arg(long)]
    mock: bool,
    /// Scripted answers: model answers per task, item and attempt, HTTP answers per request
    /// (YAML `models:` and `http:`; docs/workflow-spec.md, "Fixtures"). Without --mock, what
    /// they do not answer goes to the providers and the network.
    #[arg(long, value_name = "FILE", alias = "http-fixtures")]
    fixtures: Option<PathBuf>,
    /// Provider configuration (default: $LLMO_CONFIG, else .llmo/config.yaml if present).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Attempts running at once (the workflow's max_parallel applies as well).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// process: a stored transition survives the process being killed; power: also a power
    /// loss (every write waits for fsync; slower).
    #[arg(long, value_enum, default_value_t = DurabilityArg::Process)]
    durability: DurabilityArg,
}

/// How a listing is printed (the same flag on every command that lists).
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum DurabilityArg {
    Process,
    Power,
}

impl ExecArgs {
    /// What a remote command carries (nothing of it is used: the functions run the tasks).
    fn default_exec() -> run::Exec {
        run::Exec {
            mock: false,
            fixtures: None,
            config: None,
            concurrency: 1,
            durability: llmo_runtime::store::Durability::Process,
        }
    }

    fn exec(self) -> run::Exec {
        run::Exec {
            mock: self.mock,
            fixtures: self.fixtures,
            config: self.config,
            concurrency: self.concurrency,
            durability: match self.durability {
                DurabilityArg::Process => llmo_runtime::store::Durability::Process,
                DurabilityArg::Power => llmo_runtime::store::Durability::Power,
            },
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum ReportFormat {
    /// Diagnostics with source snippets.
    Human,
    /// One JSON array of diagnostics (file, line, column, severity, code, path, message, help).
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Mermaid,
    Dot,
}

#[derive(Clone, Copy, ValueEnum)]
enum SynthShape {
    Chain,
    Fan,
    Layered,
}

#[derive(Clone, Copy, ValueEnum)]
enum ExplainFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    // Output piped into a command that stops reading (`llmo runs | head -1`) ends this process
    // quietly, as it would any Unix tool, instead of panicking in `println!`.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg =
            payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied());
        if msg.is_some_and(|m| m.starts_with("failed printing to stdout") && m.contains("Broken pipe")) {
            std::process::exit(141); // 128 + SIGPIPE, what a shell reports for it
        }
        default_hook(info)
    }));
    let cli = Cli::parse();
    // Diagnostics of the runtime (retries, unknown prices): RUST_LOG=llmo_runtime=debug for more.
    let settings = llmo_runtime::telemetry::Settings {
        service: "llmo".into(),
        format: cli.log_format.parse().unwrap_or_default(),
        without_time: false,
        filter: Some(std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| "warn".into())),
        otlp_endpoint: std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|v| !v.is_empty()),
    };
    // The OTLP exporter sends from a task on its own small runtime, alive as long as `main`.
    let exporter_rt = match &settings.otlp_endpoint {
        Some(_) => match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
            Ok(rt) => Some(rt),
            Err(e) => {
                eprintln!("error: starting the trace exporter: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let _telemetry = {
        let _entered = exporter_rt.as_ref().map(|rt| rt.enter());
        match llmo_runtime::telemetry::init(&settings) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    // First, so the schema compiles (on its own thread) while the command reads its files.
    let validator = Validator::shared();
    match cli.command {
        Command::Validate { files, format, deny_warnings } => validate(validator, &files, format, deny_warnings),
        Command::Graph { file, format } => {
            let Some(checked) = checked_or_report(validator, &file)? else {
                return Ok(ExitCode::from(1));
            };
            let label = |i: usize| {
                let t = &checked.workflow.spec.tasks[i];
                match &t.for_each {
                    Some(fe) => format!("{} ({}, for each {fe})", t.id, t.ty),
                    None => format!("{} ({})", t.id, t.ty),
                }
            };
            let text = match format {
                GraphFormat::Mermaid => checked.dag.mermaid(label),
                GraphFormat::Dot => checked.dag.dot(&checked.workflow.metadata.name, label),
            };
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema { output } => {
            let text = llmo_core::schema::workflow_schema_text(validator.registry());
            match output {
                Some(p) => std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?,
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { file, inputs, input_file, state, ui, metrics_addr, exec } => {
            let source = read_source(&file)?;
            let outcome = validator.validate(&source);
            eprint!("{}", render(&outcome));
            let Some(checked) = outcome.checked else {
                eprintln!("{}: {} error{}", source.name(), outcome.report.errors(), plural(outcome.report.errors()));
                return Ok(ExitCode::from(1));
            };
            if let Some(e) = nesting_error(validator, &file) {
                eprintln!("error[WF072]: {}: {}", file.display(), term::clean(&e));
                return Ok(ExitCode::from(1));
            }
            let serve = run::Serve { ui, metrics_addr };
            run::run(checked, &source, &run::Options { inputs, input_file, state, exec: exec.exec() }, &serve)
        }
        Command::Resume { run_id, state, wait, exec } => run::resume(&run_id, &state, wait, &exec.exec()),
        Command::Waiting { api: Some(api), json, format, .. } => {
            remote::waiting(Some(&api), json || format == Format::Json)
        }
        Command::Waiting { state, json, format, api: None } => waits::list(&state, json || format == Format::Json),
        Command::Approve { answer } => answer.run(true),
        Command::Reject { answer } => answer.run(false),
        Command::Callback { token, output, error, no_retry, heartbeat, state, api } => {
            use llmo_runtime::callbacks::Answer;
            let answer = match (output, error) {
                _ if heartbeat => Answer::Heartbeat,
                (Some(o), _) => {
                    Answer::Output(serde_json::from_str(&o).map_err(|e| anyhow::anyhow!("--output is not JSON: {e}"))?)
                }
                (None, Some(e)) => Answer::Error { error: e, retryable: !no_retry },
                (None, None) => anyhow::bail!("say --output JSON, --error MESSAGE or --heartbeat"),
            };
            match api {
                Some(api) => remote::callback(&token, &answer, Some(&api)),
                None => waits::callback(&token, &answer, &state),
            }
        }
        Command::SendEvent { name, key, payload, state, api } => {
            let payload: serde_json::Value =
                serde_json::from_str(&payload).map_err(|e| anyhow::anyhow!("--payload is not JSON: {e}"))?;
            match api {
                Some(api) => remote::send_event(&name, &key, &payload, Some(&api)),
                None => waits::send_event(&name, &key, &payload, &state),
            }
        }
        Command::Redrive { run_id, inputs, api: Some(api), .. } => {
            let edits = run::edited_inputs(&inputs)?;
            remote::redrive(&run_id, edits, Some(&api))
        }
        Command::Redrive { run_id, inputs, state, exec, api: None } => {
            let edits = run::edited_inputs(&inputs)?;
            run::redrive(&run_id, edits, &state, &exec.exec())
        }
        Command::Rerun { run_id, from, api: Some(api), .. } => remote::rerun(&run_id, &from, Some(&api)),
        Command::Rerun { run_id, from, state, exec, api: None } => run::rerun(&run_id, &from, &state, &exec.exec()),
        Command::Watch { run_id, api: Some(api), json, .. } => watch::remote(&run_id, Some(&api), json),
        Command::Watch { run_id, state, json, api: None } => watch::local(&run_id, &state, json),
        Command::Status { run_id, api: Some(api), .. } => remote::status(&run_id, Some(&api)),
        Command::Status { run_id, state, history, api: None } => run::status(&run_id, &state, history),
        Command::Submit { file, inputs, input_file, api, idempotency_key, wait } => {
            let opts = run::Options { inputs, input_file, state: None, exec: ExecArgs::default_exec() };
            remote::submit(&file, &opts, api.as_deref(), idempotency_key.as_deref(), wait)
        }
        Command::Logs { run_id, api, json } => remote::logs(&run_id, api.as_deref(), json),
        Command::Audit { run, since, tenant, limit, api, json } => {
            remote::audit(run.as_deref(), since.as_deref(), tenant.as_deref(), limit, api.as_deref(), json)
        }
        Command::Sweep { api } => remote::sweep(api.as_deref()),
        Command::Serve { state, addr, workers, tenant, token_days, exec } => {
            server::serve(server::Options { state, addr, workers, exec: exec.exec(), tenant, token_days })
        }
        Command::Token { tenant, roles, sub, ttl, audience, issuer } => {
            let secret = std::env::var("LLMO_JWT_SECRET").map_err(|_| {
                anyhow::anyhow!("LLMO_JWT_SECRET is not set (the secret the local API verifies tokens with)")
            })?;
            println!("{}", remote::token(&secret, &sub, &tenant, &roles, ttl, &audience, issuer.as_deref())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Runs { state, workflow, status, format } => {
            run::runs(&state, workflow.as_deref(), status.as_deref(), format == Format::Json)
        }
        Command::Costs { by, since, state, api: None, tenant: _, json, format } => {
            run::costs(&by, &since, &state, json || format == Format::Json)
        }
        Command::Costs { by, since, api: Some(api), tenant, json, format, .. } => {
            remote::costs(&by, &since, tenant.as_deref(), Some(&api), json || format == Format::Json)
        }
        Command::Cancel { run_id, state, exec } => run::cancel(&run_id, &state, &exec.exec()),
        Command::Synth { shape, tasks } => {
            use llmo_core::synth::{Shape, workflow_yaml};
            let shape = match shape {
                SynthShape::Chain => Shape::Chain,
                SynthShape::Fan => Shape::FanOutFanIn,
                SynthShape::Layered => Shape::Layered { width: 100 },
            };
            print!("{}", workflow_yaml(shape, tasks));
            Ok(ExitCode::SUCCESS)
        }
        Command::Infra { files, tenant, output, flexible_window } => {
            let opts = llmo_core::triggers::Options { tenant, flexible_window_minutes: flexible_window };
            // Test files (`llmo validate workflows/*.yaml` takes them too) start no runs.
            let files: Vec<PathBuf> =
                files.into_iter().filter(|f| !f.to_string_lossy().ends_with(testing::SUFFIX)).collect();
            infra::infra(validator, &files, &opts, output.as_deref())
        }
        Command::Test { paths, jobs, filter, junit, config } => {
            let exec = run::Exec { mock: true, config, ..ExecArgs::default_exec() };
            let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
            let config = run::config(&exec)?;
            testing::test(validator, testing::Options { paths, jobs, filter, junit, config })
        }
        Command::Explain { file, format } => {
            let Some(checked) = checked_or_report(validator, &file)? else {
                return Ok(ExitCode::from(1));
            };
            let plan = explain::Plan::of(&checked);
            match format {
                ExplainFormat::Text => print!("{}", plan.text()),
                ExplainFormat::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Reads a workflow file, refusing oversized files before reading them.
fn read_source(path: &Path) -> Result<SourceFile> {
    let limit = Limits::default().max_bytes;
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin().lock().take(limit as u64 + 1).read_to_end(&mut buf).context("reading standard input")?;
        if buf.len() > limit {
            bail!("<stdin>: input is larger than the {limit}-byte limit for workflow files");
        }
        let text = String::from_utf8(buf).map_err(|e| anyhow::anyhow!("<stdin>: not UTF-8 text: {e}"))?;
        return Ok(SourceFile::new("<stdin>", text));
    }
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > limit as u64 {
        bail!("{}: file is {} bytes; the limit for workflow files is {limit} bytes", path.display(), meta.len());
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| anyhow::anyhow!("{}: not UTF-8 text: {e}", path.display()))?;
    Ok(SourceFile::new(path.display().to_string(), text))
}

fn render(outcome: &Outcome) -> String {
    let theme = if std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
        miette::GraphicalTheme::unicode()
    } else {
        miette::GraphicalTheme::unicode_nocolor()
    };
    let handler = miette::GraphicalReportHandler::new_themed(theme).with_context_lines(1);
    let mut out = String::new();
    for d in outcome.report.miette() {
        let _ = handler.render_report(&mut out, &d);
        out.push('\n');
    }
    out
}

fn validate(validator: &Validator, files: &[PathBuf], format: ReportFormat, deny_warnings: bool) -> Result<ExitCode> {
    let mut failed = false;
    let mut unreadable = false;
    let mut records = Vec::new();
    let mut stderr = std::io::stderr().lock();
    for f in files {
        // A workflow's test file: checked against its workflow.
        if f.to_string_lossy().ends_with(testing::SUFFIX) {
            match testing::load(f, validator) {
                Ok(s) => {
                    if let ReportFormat::Human = format {
                        writeln!(stderr, "{}: ok (test file, {} case{})", f.display(), s.len(), plural(s.len()))?;
                    }
                }
                Err(errors) => {
                    failed = true;
                    for e in &errors {
                        match format {
                            ReportFormat::Human => writeln!(stderr, "error: {}", term::clean(e))?,
                            ReportFormat::Json => records.push(llmo_core::diagnostic::Record {
                                file: f.display().to_string(),
                                line: None,
                                column: None,
                                severity: llmo_core::diagnostic::Severity::Error,
                                code: "TEST",
                                path: String::new(),
                                message: e.clone(),
                                help: None,
                            }),
                        }
                    }
                }
            }
            continue;
        }
        let source = match read_source(f) {
            Ok(s) => s,
            Err(e) => {
                writeln!(stderr, "error: {e:#}")?;
                unreadable = true;
                continue;
            }
        };
        let outcome = validator.validate(&source);
        let (errors, warnings) = (outcome.report.errors(), outcome.report.warnings());
        failed |= errors > 0 || (deny_warnings && warnings > 0);
        let nesting = outcome.checked.as_ref().and_then(|_| nesting_error(validator, f));
        if let Some(e) = &nesting {
            failed = true;
            match format {
                ReportFormat::Human => writeln!(stderr, "error[WF072]: {}: {}", f.display(), term::clean(e))?,
                ReportFormat::Json => records.push(llmo_core::diagnostic::Record {
                    file: f.display().to_string(),
                    line: None,
                    column: None,
                    severity: llmo_core::diagnostic::Severity::Error,
                    code: "WF072",
                    path: "spec.tasks".into(),
                    message: e.clone(),
                    help: None,
                }),
            }
        }
        match format {
            ReportFormat::Json => records.extend(outcome.report.records()),
            ReportFormat::Human => {
                write!(stderr, "{}", render(&outcome))?;
                let status = match (errors, warnings) {
                    (0, 0) => "ok".to_string(),
                    (0, w) => format!("ok, {w} warning{}", plural(w)),
                    (e, 0) => format!("{e} error{}", plural(e)),
                    (e, w) => format!("{e} error{}, {w} warning{}", plural(e), plural(w)),
                };
                let tasks = outcome
                    .checked
                    .as_ref()
                    .map(|c| format!(" ({} task{})", c.workflow.spec.tasks.len(), plural(c.workflow.spec.tasks.len())))
                    .unwrap_or_default();
                writeln!(stderr, "{}: {status}{tasks}", source.name())?;
            }
        }
    }
    if let ReportFormat::Json = format {
        println!("{}", serde_json::to_string_pretty(&records)?);
    }
    Ok(if unreadable {
        ExitCode::from(2)
    } else if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Validates one file; prints its diagnostics to stderr; returns the checked workflow if valid
/// (and its child workflow files neither form a cycle nor nest too deep).
fn checked_or_report(validator: &Validator, file: &Path) -> Result<Option<Checked>> {
    let source = read_source(file)?;
    let outcome = validator.validate(&source);
    eprint!("{}", render(&outcome));
    if outcome.checked.is_none() {
        eprintln!("{}: {} error{}", source.name(), outcome.report.errors(), plural(outcome.report.errors()));
    } else if let Some(e) = nesting_error(validator, file) {
        eprintln!("error[WF072]: {}: {}", file.display(), term::clean(&e));
        return Ok(None);
    }
    Ok(outcome.checked)
}

/// Why the child workflow files `file` starts (without templates) cannot run: a cycle, or
/// nesting past the limit.
fn nesting_error(validator: &Validator, file: &Path) -> Option<String> {
    let check = |p: &Path, text: &str| validator.validate(&SourceFile::new(p.display().to_string(), text)).checked;
    llmo_runtime::children::check_nesting(file, &check).err()
}
