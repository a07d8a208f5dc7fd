//! The `llmo` binary as people use it every day (issue 24): inputs, hints, listings, progress,
//! scripted fixtures and `llmo test`.

mod common;
use common::*;

use std::process::Stdio;

/// The CLI as people use it (issue 24): `--ui` before the file, `-i` read as the input is
/// declared, fixtures that cannot apply refused, printed hints that carry `--state`,
/// `send-event` that reached nothing exits 3, `runs` with a header, filters and JSON that
/// creates no file, `status` with the inputs, and a closed pipe that is no panic.
#[test]
fn the_cli_behaves_as_people_use_it() {
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("llmo-behaves-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("runs.db");
    let db_s = db.to_str().unwrap();
    // `runs` of a state file that does not exist: no runs, and no file made.
    let out = llmo(&["runs", "--state", db_s, "--format", "json"]);
    assert!(out.status.success() && text(&out.stdout).trim() == "[]", "{}", text(&out.stderr));
    assert!(!db.exists(), "listing created the state file");
    // `-i year=2024` for a string input is the text 2024.
    let wf = dir.join("echo.yaml");
    std::fs::write(
        &wf,
        "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: { name: echo }\nspec:\n  inputs: { year: { type: string } }\n  tasks:\n    - { id: a, type: transform, with: { output: \"{{ inputs.year }}!\" } }\n  outputs: { said: \"{{ tasks.a.output }}\" }\n",
    )
    .unwrap();
    let out = llmo(&["run", "--state", db_s, wf.to_str().unwrap(), "-i", "year=2024"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let outputs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outputs["said"], "2024!");
    let runs = text(&llmo(&["runs", "--state", db_s]).stdout);
    assert!(runs.starts_with("RUN\tWORKFLOW\tSTATUS\tCOST\tSTARTED\n"), "{runs}");
    let listed: serde_json::Value =
        serde_json::from_slice(&llmo(&["runs", "--state", db_s, "--format", "json", "--workflow", "echo"]).stdout)
            .unwrap();
    let run_id = listed[0]["run_id"].as_str().unwrap().to_string();
    assert_eq!(listed[0]["status"], "succeeded");
    let none: serde_json::Value =
        serde_json::from_slice(&llmo(&["runs", "--state", db_s, "--format", "json", "--status", "failed"]).stdout)
            .unwrap();
    assert_eq!(none, serde_json::json!([]));
    let status: serde_json::Value =
        serde_json::from_slice(&llmo(&["status", &run_id, "--state", db_s]).stdout).unwrap();
    assert_eq!(status["inputs"]["year"], "2024");
    // An event nothing waits for: exit 3.
    let out = llmo(&["send-event", "nobody.listens", "--key", "k", "--state", db_s]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    // Fixtures that cannot apply to the workflow are refused, not ignored (a real request
    // would go out in their place).
    let fixtures = root().join("workflows/fixtures/document-intake.http.yaml");
    let out = llmo(&["run", "--fixtures", fixtures.to_str().unwrap(), wf.to_str().unwrap(), "-i", "year=1"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("workflow `echo` has no `http` task to answer"), "{}", text(&out.stderr));
    // The hint to answer an approval names the state file.
    let review = dir.join("review.yaml");
    std::fs::write(
        &review,
        "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: { name: review }\nspec:\n  tasks:\n    - { id: ok, type: wait, with: { approval: { prompt: Ship? }, timeout: 2s, on_timeout: succeed } }\n",
    )
    .unwrap();
    let out = llmo(&["run", "--state", db_s, review.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(err.contains(&format!(" ok --state {db_s} (or llmo reject)")), "{err}");
    // `--ui` before the file does not take the file for its address.
    let mut child = command()
        .args(["run", "--mock", "--ui", wf.to_str().unwrap(), "-i", "year=7"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut page = None;
    for l in lines.map_while(Result::ok) {
        if l.starts_with("run page: http://127.0.0.1:") {
            page = Some(l);
            break;
        }
    }
    child.kill().ok();
    child.wait().ok();
    assert!(page.is_some(), "the run page was served");
    // A reader that stops reading: the process ends quietly (no panic), as `| head -1` needs.
    let mut schema = command()
        .args(["synth", "--shape", "layered", "--tasks", "10000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(schema.stdout.take());
    let out = schema.wait_with_output().unwrap();
    assert!(!text(&out.stderr).contains("panicked"), "{}", text(&out.stderr));
    std::fs::remove_dir_all(&dir).ok();
}

/// Progress shows a retry as it happens, with why the attempt failed, and a `for_each`'s
/// items as they go.
#[test]
fn progress_shows_retries_and_items_as_they_happen() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(async {
        use wiremock::matchers::{method, path};
        let server = wiremock::MockServer::start().await;
        wiremock::Mock::given(method("GET"))
            .and(path("/flaky"))
            .respond_with(wiremock::ResponseTemplate::new(503).set_body_string("busy"))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        wiremock::Mock::given(method("GET"))
            .and(path("/flaky"))
            .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(serde_json::json!({"ok": true})))
            .mount(&server)
            .await;
        server
    });
    let dir = std::env::temp_dir().join(format!("llmo-progress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wf = dir.join("flaky.yaml");
    std::fs::write(
        &wf,
        format!(
            "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: {{ name: flaky }}\nspec:\n  tasks:\n    - id: call\n      type: http\n      retry: {{ max_attempts: 2, backoff: {{ initial: 100ms }} }}\n      with: {{ url: \"{}/flaky\" }}\n    - {{ id: each, type: transform, for_each: \"range(3) | list\", depends_on: [call], with: {{ output: \"{{{{ item }}}}\" }} }}\n",
            server.uri()
        ),
    )
    .unwrap();
    let out = command()
        .args(["run", wf.to_str().unwrap()])
        .env("LLMO_EGRESS_ALLOW", "loopback")
        .env("LLMO_EGRESS_ALLOW_HTTP", "1")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("↻ call attempt 1 failed: HTTP 503"), "{err}");
    assert!(err.contains("  each: 0/3 items done, 0 failed, 3 running"), "{err}");
    drop(rt);
    std::fs::remove_dir_all(&dir).ok();
}

/// `llmo submit -i year=2024` sends a `string` input as the text `2024`, as `llmo run` reads it.
#[test]
fn submit_reads_inputs_as_the_workflow_declares_them() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(async {
        use wiremock::matchers::{body_partial_json, method, path};
        let server = wiremock::MockServer::start().await;
        wiremock::Mock::given(method("POST"))
            .and(path("/runs"))
            .and(body_partial_json(serde_json::json!({"inputs": {"year": "2024", "n": 3}})))
            .respond_with(
                wiremock::ResponseTemplate::new(201)
                    .set_body_json(serde_json::json!({"run_id": "run-1", "workflow": "y"})),
            )
            .expect(1)
            .mount(&server)
            .await;
        server
    });
    let dir = std::env::temp_dir().join(format!("llmo-submit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wf = dir.join("y.yaml");
    std::fs::write(
        &wf,
        "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: { name: y }\nspec:\n  inputs: { year: { type: string }, n: { type: integer } }\n  tasks:\n    - { id: a, type: transform, with: { output: \"{{ inputs.year }}\" } }\n",
    )
    .unwrap();
    let out = command()
        .args(["submit", wf.to_str().unwrap(), "-i", "year=2024", "-i", "n=3", "--api", &server.uri()])
        .env("LLMO_TOKEN", "t")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    drop(server);
    drop(rt);
    std::fs::remove_dir_all(&dir).ok();
}

/// `--fixtures` takes the branch the script says (offline the mock would always answer the
/// first `enum` value), and rules that cannot apply name their file and line.
#[test]
fn fixtures_choose_the_branch_and_typos_are_refused_with_their_line() {
    let dir = std::env::temp_dir().join(format!("llmo-fixtures-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("invoice.yaml");
    std::fs::write(
        &f,
        "models:\n  - { task: classify, answer: { json: { kind: invoice } } }\nhttp:\n  - { task: extract, body: { text: an invoice } }\n  - { url: 'https://records.example.invalid/*', status: 201 }\n",
    )
    .unwrap();
    let out = llmo(&[
        "run",
        "--mock",
        "--fixtures",
        f.to_str().unwrap(),
        "workflows/document-intake.yaml",
        "-i",
        "bucket=b",
        "-i",
        "key=k.pdf",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let outputs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outputs["kind"], "invoice", "the mock alone answers `contract`, the first enum value");
    let typo = dir.join("typo.yaml");
    std::fs::write(&typo, "models:\n  - { task: clasify, answer: { text: x } }\n").unwrap();
    let out = llmo(&["run", "--mock", "--fixtures", typo.to_str().unwrap(), "workflows/document-intake.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:2:5: models[0]: task: workflow `document-intake` has no task `clasify` (did you mean `classify`?)",
            typo.display()
        )),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `llmo test`: a passing and a failing case run in parallel, the failure printed as one line
/// per difference, a JUnit report that counts them, exit 1; an invalid test file exits 2 with
/// its line; `llmo validate` checks test files; one of the examples' cases, by `--filter`.
#[test]
fn llmo_test_runs_cases_reports_differences_and_writes_junit() {
    let dir = std::env::temp_dir().join(format!("llmo-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("route.yaml"),
        "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: { name: route }\nspec:\n  inputs: { text: { type: string } }\n  tasks:\n    - id: label\n      type: llm\n      with: { model: gpt-4o-mini, prompt: \"{{ inputs.text }}\", output_schema: { type: object, properties: { label: { enum: [spam, ham] } }, required: [label] } }\n    - { id: drop, type: transform, depends_on: [label], when: \"tasks.label.output.json.label == 'spam'\", with: { output: dropped } }\n    - { id: keep, type: transform, depends_on: [label], when: \"tasks.label.output.json.label == 'ham'\", with: { output: kept } }\n  outputs:\n    label: \"{{ tasks.label.output.json.label }}\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("route.test.yaml"),
        "cases:\n  - name: ham is kept\n    inputs: { text: hello mum }\n    fixtures: { models: [{ task: label, answer: { json: { label: ham } } }] }\n    expect: { outputs: { label: ham }, tasks: { keep: succeeded, drop: skipped } }\n  - name: wrong on purpose\n    inputs: { text: buy now }\n    fixtures: { models: [{ task: label, answer: { json: { label: spam } } }] }\n    expect: { outputs: { label: ham }, tasks: { keep: succeeded } }\n",
    )
    .unwrap();
    let junit = dir.join("report.xml");
    let out = llmo(&["test", dir.to_str().unwrap(), "--junit", junit.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("ok    ") && err.contains("› ham is kept"), "{err}");
    assert!(err.contains("FAIL  ") && err.contains("› wrong on purpose"), "{err}");
    assert!(err.contains("outputs.label: expected \"ham\", got \"spam\""), "{err}");
    assert!(err.contains("tasks.keep: expected succeeded, got skipped (`when` is false"), "{err}");
    assert!(err.contains("1 passed, 1 failed, 0 could not run"), "{err}");
    let report = std::fs::read_to_string(&junit).unwrap();
    assert!(report.contains("<testsuites name=\"llmo test\" tests=\"2\" failures=\"1\" errors=\"0\""), "{report}");
    assert!(report.contains("<testcase classname=\"route\" name=\"ham is kept\""), "{report}");
    assert!(
        report.contains("<failure message=\"2 expectations not met\">outputs.label: expected &quot;ham&quot;"),
        "{report}"
    );
    // The same file fixed passes: exit 0.
    let fixed = std::fs::read_to_string(dir.join("route.test.yaml")).unwrap().replace(
        "expect: { outputs: { label: ham }, tasks: { keep: succeeded } }",
        "expect: { outputs: { label: spam }, tasks: { drop: { status: succeeded, output: dropped } } }",
    );
    std::fs::write(dir.join("route.test.yaml"), fixed).unwrap();
    let out = llmo(&["test", dir.join("route.yaml").to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A test file with a typo: exit 2, located.
    std::fs::write(
        dir.join("bad.test.yaml"),
        "workflow: route.yaml\ncases:\n  - name: x\n    expect: { tasks: { kep: succeeded } }\n",
    )
    .unwrap();
    let bad = dir.join("bad.test.yaml");
    let out = llmo(&["test", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(&format!(
            "{}:4:24: cases[0].expect.tasks.kep: workflow `route` has no task `kep` (did you mean `keep`?)",
            bad.display()
        )),
        "{}",
        text(&out.stderr)
    );
    let out = llmo(&["validate", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    // An example's case, alone.
    let out = llmo(&["test", "workflows/waits", "--filter", "rejected"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("1 passed, 0 failed"), "{}", text(&out.stderr));
    std::fs::remove_dir_all(&dir).ok();
}

/// `llmo callback --api` posts the answer to `/callbacks/{token}` (an error with its
/// `retryable`, a heartbeat to `/heartbeat`) and exits 3 when the API says the attempt no
/// longer waits (409).
#[test]
fn callback_answers_through_the_api() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(async {
        use wiremock::matchers::{body_json, method, path};
        let server = wiremock::MockServer::start().await;
        let ok = wiremock::ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({"run_id": "run-1", "task": "t", "attempt": 1, "recorded": true}));
        wiremock::Mock::given(method("POST"))
            .and(path("/callbacks/tok.en"))
            .and(body_json(serde_json::json!({"output": {"label": "dog"}})))
            .respond_with(ok.clone())
            .expect(1)
            .mount(&server)
            .await;
        wiremock::Mock::given(method("POST"))
            .and(path("/callbacks/tok.en"))
            .and(body_json(serde_json::json!({"error": "crashed", "retryable": false})))
            .respond_with(wiremock::ResponseTemplate::new(409).set_body_json(
                serde_json::json!({"error": "`t` is not waiting for this callback: it was answered already"}),
            ))
            .expect(1)
            .mount(&server)
            .await;
        wiremock::Mock::given(method("POST"))
            .and(path("/callbacks/tok.en/heartbeat"))
            .respond_with(ok)
            .expect(1)
            .mount(&server)
            .await;
        server
    });
    let uri = server.uri();
    let run = |args: &[&str]| {
        let mut all = vec!["callback", "tok.en"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--api", &uri]);
        command().args(&all).env_remove("LLMO_TOKEN").output().unwrap()
    };
    let out = run(&["--output", "{\"label\": \"dog\"}"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("\"recorded\": true"), "{}", text(&out.stdout));
    let out = run(&["--error", "crashed", "--no-retry"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("answered already"), "{}", text(&out.stderr));
    let out = run(&["--heartbeat"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&["--output", "not json"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--output is not JSON"), "{}", text(&out.stderr));
    drop(server);
    drop(rt);
}
