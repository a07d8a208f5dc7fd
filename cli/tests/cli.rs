//! The `llmo` binary end to end: exit codes, output formats, and every subcommand.

use std::process::{Command, Stdio};

mod common;
use common::*;

#[test]
fn validate_passes_every_example() {
    let mut files: Vec<String> = std::fs::read_dir(root().join("workflows"))
        .unwrap()
        .map(|e| format!("workflows/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|f| f.ends_with(".yaml"))
        .collect();
    files.sort();
    let args: Vec<&str> = std::iter::once("validate").chain(files.iter().map(String::as_str)).collect();
    let out = llmo(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    for f in &files {
        assert!(err.contains(&format!("{f}: ok")), "{err}");
    }
}

#[test]
fn validate_reports_errors_with_file_line_column_and_snippet() {
    let out = llmo(&["validate", "tests/fixtures/invalid/structure.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("tests/fixtures/invalid/structure.yaml:10:33: spec.tasks[0].with.modle: unknown field `modle`"),
        "{err}"
    );
    assert!(err.contains("help: did you mean `model`?"), "{err}");
    assert!(err.contains("with: { provider: openai, modle: gpt-4o-mini, prompt: hi }"), "snippet missing: {err}");
    assert!(err.contains("WF011"), "{err}");
    assert!(err.contains("structure.yaml: 6 errors"), "{err}");
}

#[test]
fn validate_json_output_is_machine_readable() {
    let out =
        llmo(&["validate", "--format", "json", "tests/fixtures/invalid/graph.yaml", "workflows/simple-inference.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let records: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let list = records.as_array().unwrap();
    assert!(!list.is_empty());
    let cycle = list.iter().find(|r| r["code"] == "WF023").expect("cycle reported");
    assert_eq!(cycle["line"], 13);
    assert_eq!(cycle["column"], 20);
    assert_eq!(cycle["severity"], "error");
    assert!(cycle["message"].as_str().unwrap().contains("b -> c -> b"));
}

#[test]
fn warnings_pass_unless_denied() {
    let out = llmo(&["validate", "tests/fixtures/warnings-only.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("ok, 2 warnings"), "{}", text(&out.stderr));
    let out = llmo(&["validate", "--deny-warnings", "tests/fixtures/warnings-only.yaml"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn unreadable_files_exit_2_and_others_are_still_checked() {
    let out = llmo(&["validate", "does/not/exist.yaml", "workflows/simple-inference.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("cannot read does/not/exist.yaml"), "{err}");
    assert!(err.contains("workflows/simple-inference.yaml: ok"), "{err}");
}

#[test]
fn validate_reads_standard_input() {
    let mut child = command().args(["validate", "-"]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: {name: x}\nspec: {tasks: [{id: a, type: transform, with: {output: 1}}]}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("<stdin>: ok (1 task)"));
}

#[test]
fn graph_draws_mermaid_and_dot() {
    let out = llmo(&["graph", "workflows/article-pipeline.yaml"]);
    assert!(out.status.success());
    let m = text(&out.stdout);
    assert!(m.starts_with("flowchart TD\n"));
    assert!(m.contains("outline --> draft") && m.contains("draft -. on failure .-> draft_short"), "{m}");
    let out = llmo(&["graph", "--format", "dot", "workflows/article-pipeline.yaml"]);
    let d = text(&out.stdout);
    assert!(d.starts_with("digraph \"article-pipeline\" {"));
    assert!(d.contains("\"score\" -> \"publish\";"), "{d}");
    let out = llmo(&["graph", "tests/fixtures/invalid/graph.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
}

#[test]
fn schema_prints_the_committed_schema() {
    let out = llmo(&["schema"]);
    assert!(out.status.success());
    let committed = std::fs::read_to_string(root().join("schema/workflow.schema.json")).unwrap();
    assert_eq!(text(&out.stdout), committed);
}

#[test]
fn explain_shows_levels_parallelism_critical_path_and_reads() {
    let out = llmo(&["explain", "workflows/article-pipeline.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert!(t.contains("critical path (5 tasks): guard -> outline -> draft -> score -> publish"), "{t}");
    assert!(t.contains("max parallelism: 2 (max_parallel 8)"), "{t}");
    assert!(t.contains("can read: draft, guard, outline, score, translate"), "{t}");
    let out = llmo(&["explain", "--format", "json", "workflows/nightly-digest.yaml"]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["schedule"], "cron(0 6 ? * MON-FRI *)");
    assert_eq!(plan["levels"].as_array().unwrap().len(), 5);
}

#[test]
fn help_lists_the_commands() {
    let out = llmo(&["--help"]);
    let t = text(&out.stdout);
    for c in ["validate", "graph", "schema", "explain"] {
        assert!(t.contains(c), "{t}");
    }
}

#[test]
fn thousands_of_errors_render_in_linear_time() {
    // Rendering snippets once scanned the file from its start for every diagnostic: 30,000
    // diagnostics on a 1.5 MB file took 90 s. Now it is well under a second in release.
    let synth = llmo(&["synth", "--shape", "chain", "--tasks", "10000"]);
    let doc = text(&synth.stdout).replace("      type: llm\n", "      type: llm\n      colour: red\n");
    let path = std::env::temp_dir().join(format!("llmo-many-errors-{}.yaml", std::process::id()));
    std::fs::write(&path, doc).unwrap();
    let start = std::time::Instant::now();
    let out = llmo(&["validate", path.to_str().unwrap()]);
    let elapsed = start.elapsed();
    std::fs::remove_file(&path).ok();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(": 10000 errors"), "{}", &text(&out.stderr)[..2000.min(out.stderr.len())]);
    assert!(elapsed < std::time::Duration::from_secs(20), "{elapsed:?}");
}

#[test]
fn run_executes_a_workflow_offline_with_the_mock_provider() {
    let out = llmo(&["run", "--mock", "workflows/simple-inference.yaml", "--input", "question=What is Rust?"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let outputs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outputs["answer"], "[mock gpt-4o-mini] What is Rust?");
    assert!(text(&out.stderr).contains("[1/1] ✓ answer (llm)"), "{}", text(&out.stderr));

    let out = llmo(&["run", "--mock", "workflows/article-pipeline.yaml", "-i", "topic=Rust ownership"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let outputs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(outputs["article"].as_str().unwrap().starts_with("[mock gpt-4o] Write an article"), "{outputs}");
    assert_eq!(outputs["published"], false, "the mock draft is too short to pass the quality gate");
    let err = text(&out.stderr);
    assert!(err.contains("– draft_short (llm) (not needed: `draft` succeeded)"), "{err}");
    assert!(err.contains("– publish (http) (`when` is false"), "{err}");
}

#[test]
fn run_refuses_bad_inputs_and_reports_unavailable_executors() {
    let out = llmo(&["run", "--mock", "workflows/simple-inference.yaml", "-i", "tone=rude"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("missing required input `question`"), "{err}");
    assert!(err.contains("`rude` is not one of: neutral, friendly, formal"), "{err}");

    let out = llmo(&["run", "workflows/simple-inference.yaml", "-i", "question=hi"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("openai/gpt-4o-mini: provider `openai` needs an API key: set OPENAI_API_KEY"), "{err}");
}

#[test]
fn every_example_runs_offline() {
    for (wf, inputs) in [
        ("simple-inference", vec!["question=What is Rust?"]),
        ("article-pipeline", vec!["topic=Rust ownership"]),
        ("nightly-digest", vec![]),
        ("document-intake", vec!["bucket=acme-intake", "key=contracts/msa.pdf"]),
    ] {
        let file = format!("workflows/{wf}.yaml");
        let fixtures = format!("workflows/fixtures/{wf}.http.yaml");
        let mut args = vec!["run", "--mock", file.as_str()];
        if root().join(&fixtures).exists() {
            args.extend(["--fixtures", fixtures.as_str()]);
        }
        for i in &inputs {
            args.extend(["-i", i]);
        }
        let out = command().args(&args).env("LLMO_SECRET_TICKETS_TOKEN", "offline").output().unwrap();
        assert!(out.status.success(), "{wf}: {}", text(&out.stderr));
        let outputs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        match wf {
            "nightly-digest" => assert_eq!(outputs["tickets"], 3, "the three fixture tickets were summarised"),
            "document-intake" => assert_eq!(outputs["kind"], "contract"),
            _ => assert!(outputs.is_object(), "{wf}: {outputs}"),
        }
    }
}

#[test]
fn run_calls_an_openai_compatible_server_named_in_the_environment() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(async {
        use wiremock::matchers::{header, method, path};
        let server = wiremock::MockServer::start().await;
        wiremock::Mock::given(method("POST"))
            .and(path("/v1/chat/completions"))
            .and(header("authorization", "Bearer sk-test"))
            .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "model": "gpt-4o-mini",
                "choices": [{ "index": 0, "message": { "role": "assistant", "content": "Rust is a language." } }],
                "usage": { "prompt_tokens": 2000, "completion_tokens": 1000 }
            })))
            .expect(1)
            .mount(&server)
            .await;
        server
    });
    let out = command()
        .args(["run", "workflows/simple-inference.yaml", "-i", "question=What is Rust?"])
        .env("OPENAI_BASE_URL", format!("{}/v1", server.uri()))
        .env("OPENAI_API_KEY", "sk-test")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let outputs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outputs["answer"], "Rust is a language.");
    // 2000 × $0.15/M + 1000 × $0.60/M
    assert!(err.contains("3000 tokens, $0.0009"), "{err}");
    drop(rt);
}

#[test]
fn cancel_stops_a_running_run_and_runs_its_failure_hooks() {
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("llmo-cancel-{}", std::process::id()));
    let db = dir.join("runs.db");
    let _ = std::fs::remove_dir_all(&dir);
    let mut child = command()
        .args(["run", "--mock", "--state", db.to_str().unwrap(), "workflows/article-pipeline.yaml", "-i", "topic=Rust"])
        .env("LLMO_MOCK_DELAY_MS", "400")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let run_id = lines.next().unwrap().unwrap().split(':').next().unwrap().to_string();
    for line in lines.by_ref() {
        if line.unwrap().contains("✓ outline") {
            break;
        }
    }
    let out = llmo(&["cancel", &run_id, "--state", db.to_str().unwrap(), "--mock"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(": cancelled ("), "{err}");
    assert!(err.contains("hook on.failure[0] (http): done"), "{err}");
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert_eq!(child.wait().unwrap().code(), Some(1), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains(": cancelled in")), "{rest:?}");
    let status: serde_json::Value =
        serde_json::from_slice(&llmo(&["status", &run_id, "--state", db.to_str().unwrap(), "--history"]).stdout)
            .unwrap();
    assert_eq!(status["status"], "cancelled");
    assert_eq!(status["tasks"]["translate"]["attempts"], 0, "nothing started after the cancel");
    let history = status["history"].as_array().unwrap();
    assert!(history.iter().any(|h| h["event"] == "cancel"), "{history:?}");
    assert_eq!(llmo(&["cancel", &run_id, "--state", db.to_str().unwrap()]).status.code(), Some(1), "already ended");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_run_killed_mid_flight_resumes_without_rerunning_finished_tasks() {
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("llmo-resume-{}", std::process::id()));
    let db = dir.join("runs.db");
    let _ = std::fs::remove_dir_all(&dir);
    let mut child = command()
        .args([
            "run",
            "--mock",
            "--state",
            db.to_str().unwrap(),
            "workflows/article-pipeline.yaml",
            "-i",
            "topic=Rust ownership",
        ])
        .env("LLMO_MOCK_DELAY_MS", "300")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let run_id = lines.next().unwrap().unwrap().split(':').next().unwrap().to_string();
    for line in lines.by_ref() {
        if line.unwrap().contains("✓ outline") {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();

    let status: serde_json::Value =
        serde_json::from_slice(&llmo(&["status", &run_id, "--state", db.to_str().unwrap()]).stdout).unwrap();
    assert_eq!(status["status"], "running", "{status}");
    assert_eq!(status["tasks"]["outline"]["status"], "succeeded");

    let out = llmo(&["resume", &run_id, "--state", db.to_str().unwrap(), "--mock"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(!err.contains("✓ guard") && !err.contains("✓ outline"), "finished tasks ran again: {err}");
    let status: serde_json::Value =
        serde_json::from_slice(&llmo(&["status", &run_id, "--state", db.to_str().unwrap()]).stdout).unwrap();
    assert_eq!(status["status"], "succeeded");
    for t in ["guard", "outline"] {
        assert_eq!(status["tasks"][t]["attempts"], 1, "{t} must not run again");
    }
    let runs = text(&llmo(&["runs", "--state", db.to_str().unwrap()]).stdout);
    assert!(runs.contains(&format!("{run_id}\tarticle-pipeline\tsucceeded")), "{runs}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn token_mints_what_the_api_verifies_and_remote_commands_send_it() {
    let secret = "a-local-development-secret-of-32+bytes";
    let out = command()
        .args(["token", "--tenant", "acme", "--role", "admin", "--sub", "ops"])
        .env("LLMO_JWT_SECRET", secret)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
    let payload = token.split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(
        (claims["tenant"].as_str(), claims["sub"].as_str(), claims["aud"].as_str()),
        (Some("acme"), Some("ops"), Some("llmo-api"))
    );
    assert_eq!(claims["roles"], serde_json::json!(["admin"]));
    // Too short a secret is refused, not used.
    let out = command().args(["token", "--tenant", "acme"]).env("LLMO_JWT_SECRET", "short").output().unwrap();
    assert!(!out.status.success());
    // `llmo audit` sends the token and the range, and prints the records.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(async {
        use wiremock::matchers::{header, method, path, query_param};
        let server = wiremock::MockServer::start().await;
        wiremock::Mock::given(method("GET"))
            .and(path("/audit"))
            .and(header("authorization", format!("Bearer {token}").as_str()))
            .and(query_param("run", "run-1"))
            .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "tenant": "acme", "since": 0, "until": 1,
                "records": [{"at": 1796000000000u64, "tenant": "acme", "actor": "alice", "role": "developer",
                             "action": "POST /runs", "target": "run-1", "result": "201", "run_id": "run-1"}]
            })))
            .expect(1)
            .mount(&server)
            .await;
        server
    });
    let out =
        command().args(["audit", "--run", "run-1", "--api", &server.uri()]).env("LLMO_TOKEN", &token).output().unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("alice") && stdout.contains("POST /runs") && stdout.contains("201"), "{stdout}");
    // Without the token the server refuses the request (wiremock matches on it) and the command fails.
    let out = command().args(["audit", "--api", &server.uri()]).env_remove("LLMO_TOKEN").output().unwrap();
    assert!(!out.status.success());
    drop(rt);
}

/// A GET over a fresh connection: (status, headers and body as text).
fn http_get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out)
}

fn body_json(resp: &str) -> serde_json::Value {
    serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap_or_default()).unwrap_or_default()
}

#[test]
fn run_serves_its_page_and_metrics_and_logs_json_with_run_and_task_ids() {
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("llmo-ui-{}", std::process::id()));
    let db = dir.join("runs.db");
    let _ = std::fs::remove_dir_all(&dir);
    let mut child = command()
        .args(["--log-format", "json", "run", "--mock", "--state", db.to_str().unwrap()])
        .args([
            "--ui=127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "workflows/article-pipeline.yaml",
            "-i",
            "topic=Rust",
        ])
        .env("LLMO_MOCK_DELAY_MS", "300")
        .env("RUST_LOG", "llmo_runtime=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines().map(|l| l.unwrap());
    let (mut page, mut metrics, mut json_lines) = (None, None, Vec::new());
    for line in lines.by_ref() {
        if let Some(m) = line.strip_prefix("metrics: http://") {
            metrics = Some(m.trim_end_matches("/metrics").to_string());
        } else if let Some(p) = line.strip_prefix("run page: http://") {
            page = Some(p.to_string());
            break;
        }
    }
    let page = page.expect("the run page's link");
    let (addr, rest) = page.split_once('/').unwrap();
    let (path, token) = rest.split_once("#token=").unwrap();
    let run_id = path.rsplit('/').next().unwrap().to_string();
    assert_eq!(token.len(), 32);
    // The page is there for anyone; the run's data only with the token.
    let (code, resp) = http_get(addr, &format!("/{path}"), None);
    assert_eq!(code, 200);
    assert!(resp.to_ascii_lowercase().contains("content-security-policy: default-src 'none'"), "{resp}");
    assert_eq!(http_get(addr, &format!("/runs/{run_id}"), None).0, 401);
    assert_eq!(http_get(addr, &format!("/runs/{run_id}"), Some("0123456789abcdef0123456789abcdef")).0, 401);
    let (code, resp) = http_get(addr, &format!("/runs/{run_id}"), Some(token));
    assert_eq!(code, 200, "{resp}");
    let run = body_json(&resp);
    assert_eq!(run["tasks"].as_array().unwrap().len(), 7, "{run}");
    assert!(["pending", "running"].contains(&run["status"].as_str().unwrap()), "seen while it runs: {run}");
    let draft = run["tasks"].as_array().unwrap().iter().find(|t| t["id"] == "draft_short").unwrap();
    assert_eq!(draft["fallback_for"], serde_json::json!(["draft"]));
    for line in lines.by_ref() {
        if line.starts_with('{') {
            json_lines.push(line);
        } else if line.contains("ended; still serving") {
            break;
        }
    }
    let (_, resp) = http_get(addr, &format!("/runs/{run_id}"), Some(token));
    let run = body_json(&resp);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(run["tasks"][1]["ended_at"].as_u64() >= run["tasks"][1]["started_at"].as_u64());
    let (_, list) = http_get(addr, "/runs", Some(token));
    assert!(body_json(&list)["runs"].as_array().unwrap().iter().any(|r| r["run_id"] == run_id.as_str()));

    let (code, exposition) = http_get(&metrics.expect("the metrics address"), "/metrics", None);
    assert_eq!(code, 200);
    for want in [
        r#"llmo_model_calls_total{provider="mock",model="gpt-4o-mini",outcome="ok"}"#,
        r#"llmo_tokens_total{workflow="article-pipeline",model="gpt-4o",direction="output"}"#,
        r#"llmo_runs_finished_total{workflow="article-pipeline",status="succeeded"} 1"#,
        r#"llmo_attempts_total{task_type="llm",outcome="succeeded"}"#,
        "llmo_step_seconds_bucket",
    ] {
        assert!(exposition.contains(want), "{want} in {exposition}");
    }
    child.kill().ok();
    child.wait().ok();

    // JSON log lines carry the run and the task of the spans they are in.
    let attempts: Vec<serde_json::Value> = json_lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["fields"]["message"] == "attempt succeeded")
        .collect();
    assert!(attempts.len() >= 4, "outline, draft, two translations: {json_lines:?}");
    for a in &attempts {
        let spans = a["spans"].as_array().unwrap();
        assert!(spans.iter().any(|s| s["run_id"] == run_id.as_str()), "{a}");
        assert!(spans.iter().any(|s| s["task"].is_string()), "{a}");
    }

    let out = llmo(&["costs", "--state", db.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["key"], "article-pipeline", "{rows}");
    assert_eq!(rows[0]["runs"], 1);
    assert!(rows[0]["tokens"].as_u64().unwrap() > 0, "{rows}");
    let table = text(&llmo(&["costs", "--state", db.to_str().unwrap(), "--by", "tenant"]).stdout);
    assert!(table.contains("local") && table.contains("total"), "{table}");
    // Metrics have no token: they are served on loopback only.
    let out =
        llmo(&["run", "--mock", "--metrics-addr", "0.0.0.0:0", "workflows/simple-inference.yaml", "-i", "question=q"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("serve them on loopback"), "{}", text(&out.stderr));
    std::fs::remove_dir_all(&dir).ok();
}

/// A run that failed at a broken HTTP dependency, redriven once it is fixed: only the failed
/// task and what depends on it run again (the fake dependency counts its calls), the tasks that
/// succeeded keep their outputs, and the log records the redrive.
#[test]
fn redrive_reruns_only_the_failed_tasks_once_the_dependency_is_fixed() {
    use wiremock::matchers::{method, path};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(async {
        let server = wiremock::MockServer::start().await;
        wiremock::Mock::given(method("GET"))
            .and(path("/first"))
            .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(serde_json::json!({"n": 4})))
            .mount(&server)
            .await;
        wiremock::Mock::given(method("GET"))
            .and(path("/data"))
            .respond_with(wiremock::ResponseTemplate::new(503).set_body_string("down for maintenance"))
            .mount(&server)
            .await;
        server
    });
    let dir = std::env::temp_dir().join(format!("llmo-redrive-{}", std::process::id()));
    let db = dir.join("runs.db");
    let _ = std::fs::remove_dir_all(&dir);
    let egress = |c: &mut Command| {
        c.env("LLMO_EGRESS_ALLOW", "127.0.0.1/32").env("LLMO_EGRESS_ALLOW_HTTP", "1");
    };
    let mut c = command();
    c.args(["run", "--state", db.to_str().unwrap(), "tests/fixtures/redrive/flaky.yaml"])
        .args(["-i", &format!("base={}", server.uri())]);
    egress(&mut c);
    let out = c.output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let run_id = err.lines().next().unwrap().split(':').next().unwrap().to_string();
    assert!(err.contains("503"), "{err}");

    // Fixed: the dependency answers.
    rt.block_on(async {
        server.reset().await;
        wiremock::Mock::given(method("GET"))
            .and(path("/first"))
            .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(serde_json::json!({"n": 4})))
            .mount(&server)
            .await;
        wiremock::Mock::given(method("GET"))
            .and(path("/data"))
            .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(serde_json::json!({"n": 2})))
            .mount(&server)
            .await;
    });
    let mut c = command();
    c.args(["redrive", &run_id, "--state", db.to_str().unwrap()]);
    egress(&mut c);
    let out = c.output().unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("redriving 2 of 4 tasks"), "{err}");
    let outputs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outputs["total"], 42);
    let calls = rt.block_on(server.received_requests()).unwrap();
    let paths: Vec<&str> = calls.iter().map(|r| r.url.path()).collect();
    assert_eq!(paths, vec!["/data"], "after the fix only the failed task called out");

    let status: serde_json::Value =
        serde_json::from_slice(&llmo(&["status", &run_id, "--state", db.to_str().unwrap(), "--history"]).stdout)
            .unwrap();
    assert_eq!(status["status"], "succeeded");
    assert_eq!(status["tasks"]["first"]["attempts"], 1, "not run again");
    assert_eq!(status["tasks"]["prepare"]["attempts"], 1, "not run again");
    assert_eq!(status["tasks"]["fetch"]["attempts"], 2, "once before, once after the redrive");
    let history = status["history"].as_array().unwrap();
    assert!(history.iter().any(|h| h["event"].as_str().unwrap().starts_with("redrive")), "{history:?}");
    // A succeeded run is not redriven.
    let out = llmo(&["redrive", &run_id, "--state", db.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("only a failed or timed-out run is redriven"));
    std::fs::remove_dir_all(&dir).ok();
    drop(rt);
}

/// A redrive with an edited input: the dependency moved to another address, so the failed task
/// runs again against the new `base` (the tasks that succeeded are not run again, so the old
/// server is not called again), and the history records which inputs were edited. An edit
/// that does not check is refused before anything is stored.
#[test]
fn redrive_with_an_edited_input_runs_the_failed_task_with_it() {
    use wiremock::matchers::{method, path};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mount = |server: &wiremock::MockServer, p: &'static str, code: u16, body: serde_json::Value| {
        rt.block_on(
            wiremock::Mock::given(method("GET"))
                .and(path(p))
                .respond_with(wiremock::ResponseTemplate::new(code).set_body_json(body))
                .mount(server),
        )
    };
    let old = rt.block_on(wiremock::MockServer::start());
    mount(&old, "/first", 200, serde_json::json!({"n": 4}));
    mount(&old, "/data", 503, serde_json::json!({"error": "gone"}));
    let moved = rt.block_on(wiremock::MockServer::start());
    mount(&moved, "/data", 200, serde_json::json!({"n": 2}));
    let dir = std::env::temp_dir().join(format!("llmo-redrive-edit-{}", std::process::id()));
    let db = dir.join("runs.db");
    let _ = std::fs::remove_dir_all(&dir);
    let run = |args: &[&str]| {
        let mut c = command();
        c.args(args).env("LLMO_EGRESS_ALLOW", "127.0.0.1/32").env("LLMO_EGRESS_ALLOW_HTTP", "1");
        c.output().unwrap()
    };
    let base = format!("base={}", old.uri());
    let out = run(&["run", "--state", db.to_str().unwrap(), "tests/fixtures/redrive/flaky.yaml", "-i", &base]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let run_id = text(&out.stderr).lines().next().unwrap().split(':').next().unwrap().to_string();

    let out = run(&["redrive", &run_id, "--state", db.to_str().unwrap(), "-i", "bsae=x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown input `bsae`"), "{}", text(&out.stderr));

    let moved_base = format!("base={}", moved.uri());
    let out = run(&["redrive", &run_id, "--state", db.to_str().unwrap(), "-i", &moved_base]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let outputs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outputs["total"], 42, "prepare's recorded 40 plus the moved dependency's 2");
    let old_calls: Vec<String> =
        rt.block_on(old.received_requests()).unwrap().iter().map(|r| r.url.path().to_string()).collect();
    assert_eq!(old_calls, ["/first", "/data"], "the old server is not called after the redrive");
    assert_eq!(rt.block_on(moved.received_requests()).unwrap().len(), 1);
    let status: serde_json::Value =
        serde_json::from_slice(&llmo(&["status", &run_id, "--state", db.to_str().unwrap(), "--history"]).stdout)
            .unwrap();
    let history = status["history"].as_array().unwrap();
    assert!(history.iter().any(|h| h["event"].as_str().unwrap().ends_with("with edited inputs: base")), "{history:?}");
    std::fs::remove_dir_all(&dir).ok();
    drop(rt);
}

/// `llmo rerun RUN --from TASK`: a new run that reuses the recorded outputs upstream of TASK
/// and runs TASK and everything downstream again; its status names the source run.
#[test]
fn rerun_from_the_middle_of_a_dag_reuses_what_is_upstream() {
    let dir = std::env::temp_dir().join(format!("llmo-rerun-{}", std::process::id()));
    let db = dir.join("runs.db");
    let _ = std::fs::remove_dir_all(&dir);
    let db = db.to_str().unwrap();
    let out = llmo(&["run", "--mock", "--state", db, "workflows/article-pipeline.yaml", "-i", "topic=Rust"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let first = text(&out.stderr).lines().next().unwrap().split(':').next().unwrap().to_string();
    let out = llmo(&["rerun", &first, "--from", "draft", "--state", db, "--mock"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("rerun of {first} from `draft` (2 of 7 tasks reused)")), "{err}");
    let second = err.lines().next().unwrap().split(':').next().unwrap().to_string();
    assert_ne!(first, second);
    let status: serde_json::Value = serde_json::from_slice(&llmo(&["status", &second, "--state", db]).stdout).unwrap();
    assert_eq!(status["status"], "succeeded");
    assert_eq!(status["rerun_of"], serde_json::json!({"run_id": first, "from": "draft"}));
    assert_eq!(status["tasks"]["guard"]["attempts"], 0, "reused");
    assert_eq!(status["tasks"]["outline"]["attempts"], 0, "reused");
    assert_eq!(status["tasks"]["draft"]["attempts"], 1, "run again");
    let bad = llmo(&["rerun", &first, "--from", "nope", "--state", db, "--mock"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("no task `nope`"));
    std::fs::remove_dir_all(&dir).ok();
}

/// Embedded waits across processes: two `llmo run`s of an event wait (orders A and B) share a
/// state file; `llmo waiting` lists both, `llmo send-event --key B` resumes only B's run (its
/// process finishes with B's payload), a second identical event reaches nobody, and `--key A`
/// then finishes A. An approval is answered once: a second `llmo approve` exits with status 3.
#[test]
fn events_reach_only_the_runs_waiting_for_their_key_across_processes() {
    let dir = std::env::temp_dir().join(format!("llmo-events-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let wf = dir.join("paid.yaml");
    std::fs::write(
        &wf,
        r#"apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: paid }
spec:
  inputs: { order: { type: string } }
  tasks:
    - id: ok
      type: wait
      with: { approval: { fields: { note: { type: string, required: false } } } }
    - id: paid
      type: wait
      depends_on: [ok]
      with: { event: { name: payment.settled, key: "{{ inputs.order }}" } }
    - { id: ship, type: transform, depends_on: [paid], with: { output: "{{ inputs.order }}: {{ tasks.paid.output.payload.amount }}" } }
  outputs:
    shipped: "{{ tasks.ship.output }}"
"#,
    )
    .unwrap();
    let db = dir.join("runs.db");
    let state = db.to_str().unwrap();
    // Their stderr goes to files, shown if the test fails.
    let err_file = |order: &str| dir.join(format!("{order}.err"));
    let start = |order: &str| {
        let mut c = command();
        c.args(["run", "--state", state, wf.to_str().unwrap(), "-i", &format!("order={order}")])
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(err_file(order)).unwrap());
        c.spawn().unwrap()
    };
    let a = start("A");
    let b = start("B");
    let listed = |n: usize| {
        for _ in 0..200 {
            let out = llmo(&["waiting", "--state", state, "--json"]);
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                && v.as_array().is_some_and(|a| a.len() == n && a.iter().all(|w| w["kind"] != serde_json::Value::Null))
            {
                return v;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let err = |o: &str| std::fs::read_to_string(err_file(o)).unwrap_or_default();
        let now = text(&llmo(&["waiting", "--state", state, "--json"]).stdout);
        panic!("{n} waiting tasks never listed: {now}\nA: {}\nB: {}", err("A"), err("B"));
    };
    let approvals = listed(2);
    for w in approvals.as_array().unwrap() {
        assert_eq!(w["kind"], "approval", "{w}");
        let run_id = w["run_id"].as_str().unwrap();
        let out = llmo(&["approve", run_id, "ok", "--state", state, "-f", "note=fine"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let again = llmo(&["approve", run_id, "ok", "--state", state]);
        assert_eq!(again.status.code(), Some(3), "answered once: {}", text(&again.stderr));
        assert!(text(&again.stderr).contains("answered already"), "{}", text(&again.stderr));
    }
    let events = listed(2);
    assert!(events.as_array().unwrap().iter().all(|w| w["kind"] == "event"), "{events}");
    let send = |key: &str, amount: u32| {
        let out = llmo(&[
            "send-event",
            "payment.settled",
            "--key",
            key,
            "--payload",
            &format!("{{\"amount\": {amount}}}"),
            "--state",
            state,
        ]);
        let n =
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["delivered"].as_array().unwrap().len();
        // Exit 3 when the event reached no waiting task.
        assert_eq!(out.status.code(), Some(if n == 0 { 3 } else { 0 }), "{}", text(&out.stderr));
        n
    };
    assert_eq!(send("B", 20), 1);
    let b = b.wait_with_output().unwrap();
    assert!(b.status.success(), "{}", std::fs::read_to_string(err_file("B")).unwrap_or_default());
    let out: serde_json::Value = serde_json::from_slice(&b.stdout).unwrap();
    assert_eq!(out["shipped"], "B: 20");
    assert_eq!(send("B", 99), 0, "delivered once");
    assert_eq!(listed(1)[0]["key"], "A", "A still waits");
    assert_eq!(send("A", 5), 1);
    let a = a.wait_with_output().unwrap();
    assert!(a.status.success(), "{}", std::fs::read_to_string(err_file("A")).unwrap_or_default());
    let out: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    assert_eq!(out["shipped"], "A: 5");
    std::fs::remove_dir_all(&dir).ok();
}

/// A `.llmo/config.yaml` in the working directory (a cloned repository's) cannot send any
/// environment variable anywhere: naming `AWS_SECRET_ACCESS_KEY` as a provider's key is
/// refused before anything runs, naming the file and the field; where a file's providers
/// send their calls is shown.
#[test]
fn a_working_directory_config_cannot_name_any_variable_as_a_key() {
    let dir = std::env::temp_dir().join(format!("llmo-config-{}", std::process::id()));
    std::fs::create_dir_all(dir.join(".llmo")).unwrap();
    let workflow = dir.join("w.yaml");
    std::fs::write(
        &workflow,
        "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: { name: w }\nspec:\n  tasks:\n    - { id: a, type: llm, with: { model: m, prompt: Hi } }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join(".llmo/config.yaml"),
        "default_provider: grab\nproviders:\n  grab: { kind: openai, base_url: 'http://127.0.0.1:9/v1', api_key_env: AWS_SECRET_ACCESS_KEY }\n",
    )
    .unwrap();
    let out = command().current_dir(&dir).args(["run", workflow.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(
            ".llmo/config.yaml: providers.grab.api_key_env: `AWS_SECRET_ACCESS_KEY` is not a provider key's name"
        ),
        "{err}"
    );
    // A provider key's name is fine, and where its calls go is said (and refused by the
    // egress policy: a loopback listener is not where a file may send them).
    std::fs::write(
        dir.join(".llmo/config.yaml"),
        "default_provider: grab\nproviders:\n  grab: { kind: openai, base_url: 'http://127.0.0.1:9/v1', api_key_env: GRAB_API_KEY }\n",
    )
    .unwrap();
    let out = command().current_dir(&dir).args(["run", workflow.to_str().unwrap()]).output().unwrap();
    let err = text(&out.stderr);
    assert!(err.contains("provider `grab` calls http://127.0.0.1:9/v1 (set by .llmo/config.yaml)"), "{err}");
    assert!(err.contains("egress refused"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// One executor per run: while `llmo run` executes a run, `llmo resume` of it refuses
/// (naming the process) and `llmo runs` / `status` call it live; `resume --wait` waits for
/// that process and, once it has ended the run, runs nothing again. A process killed
/// with -9 is seen dead at once (its run `interrupted`, resumed without waiting).
#[test]
fn a_live_run_is_not_resumed_twice() {
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("llmo-owner-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (db, wf) = (dir.join("runs.db"), dir.join("nap.yaml"));
    std::fs::write(
        &wf,
        "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: { name: nap }\nspec:\n  tasks:\n    - { id: nap, type: wait, with: { sleep: { for: 4s } } }\n    - { id: done, type: transform, depends_on: [nap], with: { output: ok } }\n",
    )
    .unwrap();
    let (db_s, wf_s) = (db.to_str().unwrap(), wf.to_str().unwrap());
    let start = |args: &[&str]| command().args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut owner = start(&["run", "--state", db_s, wf_s]);
    let mut lines = std::io::BufReader::new(owner.stderr.take().unwrap()).lines();
    let run_id = lines.next().unwrap().unwrap().split(':').next().unwrap().to_string();
    let pid = owner.id();
    // Live: refused, and said to be.
    let out = llmo(&["resume", &run_id, "--state", db_s]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&format!("is being executed by {pid}@")), "{}", text(&out.stderr));
    let runs = text(&llmo(&["runs", "--state", db_s]).stdout);
    assert!(runs.contains(&format!("running (live: pid {pid}@")), "{runs}");
    let status: serde_json::Value =
        serde_json::from_slice(&llmo(&["status", &run_id, "--state", db_s]).stdout).unwrap();
    assert_eq!(status["live"], true, "{status}");
    // --wait: waits for the owner, which ends the run; nothing runs twice.
    let waited = command().args(["resume", &run_id, "--state", db_s, "--wait"]).output().unwrap();
    assert!(waited.status.success(), "{}", text(&waited.stderr));
    assert!(text(&waited.stderr).contains("waiting for it to end or stop"), "{}", text(&waited.stderr));
    assert!(owner.wait().unwrap().success());
    let status: serde_json::Value =
        serde_json::from_slice(&llmo(&["status", &run_id, "--state", db_s]).stdout).unwrap();
    assert_eq!((status["status"].as_str(), status["tasks"]["nap"]["attempts"].as_u64()), (Some("succeeded"), Some(1)));
    // Killed: interrupted at once, and resumed without waiting for its lease.
    let mut owner = start(&["run", "--state", db_s, wf_s]);
    let mut lines = std::io::BufReader::new(owner.stderr.take().unwrap()).lines();
    let run_id = lines.next().unwrap().unwrap().split(':').next().unwrap().to_string();
    owner.kill().unwrap();
    owner.wait().unwrap();
    let runs = text(&llmo(&["runs", "--state", db_s]).stdout);
    let line = runs.lines().find(|l| l.starts_with(&run_id)).unwrap_or_default();
    assert!(line.contains("(interrupted)\t$0.0000\t"), "{runs}");
    let out = llmo(&["resume", &run_id, "--state", db_s]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::remove_dir_all(&dir).ok();
}

/// `llmo serve` with development tokens stays on this machine: a non-loopback address is
/// refused before anything is created (no state file, no secret).
#[test]
fn serve_refuses_development_tokens_beyond_loopback() {
    let dir = std::env::temp_dir().join(format!("llmo-serve-addr-{}", std::process::id()));
    let state = dir.join("s.db");
    let out = Command::new(env!("CARGO_BIN_EXE_llmo"))
        .args(["serve", "--state", state.to_str().unwrap(), "--addr", "0.0.0.0:0"])
        .env_remove("LLMO_AUTH")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("set LLMO_AUTH"), "{}", text(&out.stderr));
    assert!(!dir.exists(), "nothing was created");
}

/// Callbacks embedded: an `http` task with `callback` sends its task token in a header and
/// waits; `llmo callback --heartbeat` keeps it alive, `--error` fails the attempt (its retry
/// sends again with a new token), `--output` ends it once; the run's process then finishes.
/// The first attempt's token is useless after its attempt ended, a second answer exits 3, and
/// a forged token is refused without touching the run.
#[test]
fn callbacks_wait_for_their_token_across_processes() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(async {
        use wiremock::matchers::{method, path};
        let server = wiremock::MockServer::start().await;
        wiremock::Mock::given(method("POST"))
            .and(path("/jobs"))
            .respond_with(wiremock::ResponseTemplate::new(202).set_body_json(serde_json::json!({"queued": true})))
            .mount(&server)
            .await;
        server
    });
    let dir = std::env::temp_dir().join(format!("llmo-callbacks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let wf = dir.join("label.yaml");
    std::fs::write(
        &wf,
        format!(
            r#"apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: {{ name: label }}
spec:
  tasks:
    - id: label
      type: http
      retry: {{ max_attempts: 2, backoff: {{ initial: 100ms }} }}
      with:
        method: POST
        url: "{}/jobs"
        body: {{ text: "a dog on a skateboard" }}
        callback: {{ timeout: 1h, heartbeat: 10m }}
    - {{ id: after, type: transform, depends_on: [label], with: {{ output: "label: {{{{ tasks.label.output.label }}}}" }} }}
  outputs:
    said: "{{{{ tasks.after.output }}}}"
"#,
            server.uri()
        ),
    )
    .unwrap();
    let db = dir.join("runs.db");
    let state = db.to_str().unwrap();
    let err_file = dir.join("run.err");
    let run = command()
        .args(["run", "--state", state, wf.to_str().unwrap()])
        .env("LLMO_EGRESS_ALLOW", "loopback")
        .env("LLMO_EGRESS_ALLOW_HTTP", "1")
        .env_remove("LLMO_LINK_SECRET")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .unwrap();
    let token_of = |n: usize| {
        for _ in 0..300 {
            let got = rt.block_on(server.received_requests()).unwrap_or_default();
            if got.len() >= n {
                let h = got[n - 1].headers.get("llmo-callback-token").expect("the token header");
                assert!(got[n - 1].headers.get("idempotency-key").is_some());
                return h.to_str().unwrap().to_string();
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("call {n} never came: {}", std::fs::read_to_string(&err_file).unwrap_or_default());
    };
    let callback = |args: &[&str]| {
        let mut all = vec!["callback"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--state", state]);
        command().args(&all).env_remove("LLMO_LINK_SECRET").output().unwrap()
    };
    let first = token_of(1);
    // The call has returned once the task is listed as waiting for its callback.
    for _ in 0..300 {
        let out = llmo(&["waiting", "--state", state, "--json"]);
        if text(&out.stdout).contains("\"callback\"") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // A middle character of the signature (the last one's padding bits may not count).
    let forged = {
        let mut b = first.as_bytes().to_vec();
        let k = b.len() - 10;
        b[k] = if b[k] == b'A' { b'B' } else { b'A' };
        String::from_utf8(b).unwrap()
    };
    let out = callback(&[&forged, "--output", "{}"]);
    assert_eq!(out.status.code(), Some(2), "forged: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("not valid"), "{}", text(&out.stderr));
    let out = callback(&[&first, "--heartbeat"]);
    assert!(out.status.success(), "heartbeat: {}", text(&out.stderr));
    let out = callback(&[&first, "--error", "the labeller crashed"]);
    assert!(out.status.success(), "error: {}", text(&out.stderr));
    // Its retry calls again, with a new token; the old one answers nothing now.
    let second = token_of(2);
    assert_ne!(first, second);
    let out = callback(&[&first, "--output", "{\"label\": \"cat\"}"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("the token is for attempt 1"), "{}", text(&out.stderr));
    let out = callback(&[&second, "--output", "{\"label\": \"dog\"}"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let again = callback(&[&second, "--output", "{\"label\": \"cat\"}"]);
    assert_eq!(again.status.code(), Some(3), "answered once: {}", text(&again.stderr));
    let run = run.wait_with_output().unwrap();
    let err = std::fs::read_to_string(&err_file).unwrap_or_default();
    assert!(run.status.success(), "{err}");
    assert!(err.contains("waits for its callback"), "{err}");
    let out: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(out["said"], "label: dog");
    assert_eq!(rt.block_on(server.received_requests()).unwrap().len(), 2, "one call per attempt");
    drop(rt);
    std::fs::remove_dir_all(&dir).ok();
}
