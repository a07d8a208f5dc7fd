//! Child workflows (`type: workflow`) in embedded runs: the example fans out and joins, child
//! files that form a cycle are refused before anything runs, and a `kill -9` while a child
//! waits loses nothing and makes no second child: `llmo resume` takes the parent's attempt up
//! again, finds its child and drives it to its end.

mod common;

use common::*;
use serde_json::Value;

#[test]
fn the_fan_out_example_runs_a_child_per_question() {
    let out = llmo(&["run", "--mock", "workflows/fan-out/research-brief.yaml", "-i", "topic=Rust"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let answers = v["answers"].as_array().unwrap();
    assert_eq!(answers.len(), 3, "{v}");
    assert_eq!(answers[1], "[mock gpt-4o-mini] About Rust: Why does it matter?");
    let children: Vec<&str> = v["children"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(children.len(), 3);
    assert!(children.iter().all(|c| c.starts_with("run-")), "{children:?}");
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("llmo-children-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn calls(name: &str, child: &str) -> String {
    format!(
        "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: {{ name: {name} }}\nspec:\n  tasks:\n    - id: call\n      type: workflow\n      with: {{ workflow: {child} }}\n"
    )
}

#[test]
fn child_files_that_form_a_cycle_are_refused_before_anything_runs() {
    let dir = scratch("cycle");
    std::fs::write(dir.join("a.yaml"), calls("a", "b")).unwrap();
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("b.yaml"), calls("b", "sub/c.yaml")).unwrap();
    std::fs::write(dir.join("sub/c.yaml"), calls("c", "../a.yaml")).unwrap();
    // `..` is refused in a child's path: c's reference is bad input, not a way out.
    let out = llmo(&["validate", dir.join("sub/c.yaml").to_str().unwrap()]);
    assert!(out.status.success(), "a path with `..` is refused when it runs: {}", text(&out.stderr));
    std::fs::write(dir.join("sub/c.yaml"), calls("c", "d.yaml")).unwrap();
    std::fs::write(dir.join("sub/d.yaml"), calls("d", "c.yaml")).unwrap();
    let out = llmo(&["validate", dir.join("a.yaml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("WF072") && err.contains("form a cycle"), "{err}");
    assert!(err.contains("c.yaml (task `call`) → ") && err.contains("d.yaml"), "the chain is named: {err}");
    let db = dir.join("runs.db");
    let out = llmo(&["run", "--mock", "--state", db.to_str().unwrap(), dir.join("a.yaml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(!db.exists(), "nothing was stored");
    let _ = std::fs::remove_dir_all(&dir);
}

const PARENT: &str = r#"apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: parent }
spec:
  tasks:
    - id: ask
      type: workflow
      with: { workflow: child.yaml, inputs: { who: world } }
  outputs:
    said: "{{ tasks.ask.output.outputs.said }}"
"#;

const CHILD: &str = r#"apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: child }
spec:
  inputs: { who: { type: string } }
  tasks:
    - id: gate
      type: wait
      with: { approval: { prompt: "Say hello?" } }
    - { id: say, type: transform, depends_on: [gate], with: { output: "hello {{ inputs.who }}" } }
  outputs:
    said: "{{ tasks.say.output }}"
"#;

fn runs(state: &str) -> Vec<Value> {
    let out = llmo(&["runs", "--state", state, "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
}

#[test]
fn a_killed_parent_resumes_its_child_and_makes_no_second_one() {
    let dir = scratch("resume");
    std::fs::write(dir.join("parent.yaml"), PARENT).unwrap();
    std::fs::write(dir.join("child.yaml"), CHILD).unwrap();
    let db = dir.join("runs.db");
    let state = db.to_str().unwrap();
    let mut run = command()
        .args(["run", "--mock", "--state", state, dir.join("parent.yaml").to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut waiting = Value::Null;
    for _ in 0..300 {
        let out = llmo(&["waiting", "--state", state, "--json"]);
        if let Ok(v) = serde_json::from_slice::<Value>(&out.stdout)
            && v.as_array().is_some_and(|a| a.len() == 1)
        {
            waiting = v[0].clone();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(waiting["task"], "gate", "the child waits: {waiting}");
    run.kill().unwrap();
    run.wait().unwrap();
    let before = runs(state);
    assert_eq!(before.len(), 2, "the parent and its child: {before:?}");
    let child = waiting["run_id"].as_str().unwrap().to_string();
    let parent = before.iter().find(|r| r["workflow"] == "parent").unwrap()["run_id"].as_str().unwrap().to_string();
    let out = llmo(&["approve", &child, "gate", "--state", state]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = llmo(&["resume", "--mock", "--wait", "--state", state, &parent]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["said"], "hello world", "{v}");
    let after = runs(state);
    assert_eq!(after.len(), 2, "no second child: {after:?}");
    assert!(after.iter().all(|r| r["status"] == "succeeded"), "{after:?}");
    let out = llmo(&["status", &parent, "--state", state]);
    assert!(text(&out.stdout).contains(&child) || text(&out.stderr).contains(&child), "the parent names its child");
    let _ = std::fs::remove_dir_all(&dir);
}
