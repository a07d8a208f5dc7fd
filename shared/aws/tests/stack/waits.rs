//! Approvals and events in the serverless runtime, against the local stack: waiting tasks are
//! listed, answered exactly once (racing and replayed answers and answers after the timeout get
//! 409), answered through a single-use link without an account, and events reach only the
//! runs whose correlation key matches. Every run's stored log is audited.

use crate::support;

use std::time::Duration;

use llmo_core::engine::Event;
use serde_json::{Value, json};
use support::*;

const REVIEW: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: review }
spec:
  inputs:
    doc: { type: string }
    wait: { type: string, default: 10m }
  tasks:
    - id: draft
      type: transform
      with: { output: "draft of {{ inputs.doc }}" }
    - id: review
      type: wait
      depends_on: [draft]
      with:
        approval:
          prompt: "Publish {{ inputs.doc }}?"
          fields:
            channel: { type: string, enum: [blog, newsletter] }
          approvers: { roles: [developer] }
          link: true
        timeout: 3s
    - id: publish
      type: transform
      depends_on: [review]
      with: { output: "{{ tasks.draft.output }} to {{ tasks.review.output.fields.channel }} by {{ tasks.review.output.by }}" }
  outputs:
    published: "{{ tasks.publish.output }}"
"#;

const PAID: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: paid }
spec:
  inputs: { order: { type: string } }
  tasks:
    - id: paid
      type: wait
      with: { event: { name: payment.settled, key: "{{ inputs.order }}" } }
    - { id: ship, type: transform, depends_on: [paid], with: { output: "ship {{ inputs.order }}: {{ tasks.paid.output.payload.amount }}" } }
  outputs:
    shipped: "{{ tasks.ship.output }}"
"#;

const LINKS: &[u8] = b"the-local-tests-answer-link-secret-0123456789";

async fn start(api: &llmo_api::Api, source: &str, inputs: Value) -> String {
    let (code, v) = call(api, "POST", "/runs", Some(json!({"source": source, "inputs": inputs}))).await;
    assert_eq!(code, 201, "{v}");
    v["run_id"].as_str().unwrap().to_string()
}

/// Polls `GET /waiting` until `n` tasks of `run_ids` wait.
async fn waiting(api: &llmo_api::Api, run_ids: &[&str], n: usize) -> Vec<Value> {
    for _ in 0..200 {
        let (code, v) = call(api, "GET", "/waiting", None).await;
        assert_eq!(code, 200, "{v}");
        let rows: Vec<Value> = v["waiting"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| run_ids.contains(&r["run_id"].as_str().unwrap_or("")))
            .cloned()
            .collect();
        if rows.len() >= n {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{n} waiting tasks of {run_ids:?} never showed");
}

fn completions(log: &[llmo_runtime::store::Transition]) -> usize {
    log.iter().filter(|t| matches!(t.event, Event::Complete { .. })).count()
}

fn with_links(workers: usize) -> Setup {
    Setup { workers, links: Some(LINKS.to_vec()), ..Setup::default() }
}

on_both!(
    racing_approvals_record_one_answer_and_late_ones_get_409,
    racing_approvals_record_one_answer_and_late_ones_get_409_on_serve,
    racing_approvals,
    with_links(2)
);

async fn racing_approvals(t: &Target) {
    let api = t.api.clone();
    let run = start(&api, REVIEW, json!({"doc": "post-1"})).await;
    let rows = waiting(&api, &[&run], 1).await;
    assert_eq!(rows[0]["task"], "review");
    assert_eq!(rows[0]["prompt"], "Publish post-1?");
    assert_eq!(rows[0]["fields"]["channel"]["enum"], json!(["blog", "newsletter"]));

    let uri = format!("/runs/{run}/tasks/review/complete");
    // A viewer is not among the approvers; a bad field is refused before anything is stored.
    let viewer = token("vera", "t1", &["viewer"]);
    let (code, v) = call_as(&api, Some(&viewer), "POST", &uri, Some(json!({"approved": true}))).await;
    assert_eq!(code, 403, "{v}");
    let (code, v) = call(&api, "POST", &uri, Some(json!({"approved": true, "fields": {"channel": "tv"}}))).await;
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("one of"), "{v}");

    // Five developers answer at once: one answer is recorded, four get 409.
    let tokens: Vec<String> = (0..5).map(|i| token(&format!("dev{i}"), "t1", &["developer"])).collect();
    let answers = tokens.iter().enumerate().map(|(i, t)| {
        let body = json!({"approved": true, "fields": {"channel": if i % 2 == 0 { "blog" } else { "newsletter" }}});
        call_as(&api, Some(t), "POST", &uri, Some(body))
    });
    let got = futures::future::join_all(answers).await;
    let codes: Vec<u16> = got.iter().map(|(c, _)| *c).collect();
    assert_eq!(codes.iter().filter(|&&c| c == 200).count(), 1, "{got:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 409).count(), 4, "{got:?}");
    let winner = got.iter().find(|(c, _)| *c == 200).unwrap().1["output"]["by"].as_str().unwrap().to_string();
    let lost = &got.iter().find(|(c, _)| *c == 409).unwrap().1;
    assert!(lost["error"].as_str().unwrap().contains(&format!("answered already (by {winner})")), "{lost}");

    let end = wait_end(&api, &run, 30).await;
    assert_eq!(end["status"], "succeeded", "{end}");
    assert!(end["outputs"]["published"].as_str().unwrap().ends_with(&format!("by {winner}")), "{end}");
    // A replay of the winning request, after the run ended: 409, nothing stored.
    let (code, v) =
        call_as(&api, Some(&tokens[0]), "POST", &uri, Some(json!({"approved": true, "fields": {"channel": "blog"}})))
            .await;
    assert_eq!(code, 409, "{v}");
    let (initial, log) = t.initial_and_log(&run).await;
    check_log(&plan(REVIEW), &log, initial);
    assert_eq!(completions(&log), 1, "one answer in the log");

    // No answer within its 3 s timeout: the run fails, and a late answer is refused.
    let late = start(&api, REVIEW, json!({"doc": "post-2"})).await;
    let end = wait_end(&api, &late, 30).await;
    assert_eq!(end["status"], "failed", "{end}");
    assert!(end["error"].as_str().unwrap_or_default().contains("timed out after 3s"), "{end}");
    let uri = format!("/runs/{late}/tasks/review/complete");
    let (code, v) = call(&api, "POST", &uri, Some(json!({"approved": true, "fields": {"channel": "blog"}}))).await;
    assert_eq!(code, 409, "{v}");
    let (initial, log) = t.initial_and_log(&late).await;
    check_log(&plan(REVIEW), &log, initial);
    assert_eq!(completions(&log), 0);
}

on_both!(
    an_answer_link_works_once_without_an_account,
    an_answer_link_works_once_without_an_account_on_serve,
    answer_link,
    with_links(1)
);

async fn answer_link(t: &Target) {
    let api = t.api.clone();
    let run = start(&api, &REVIEW.replace("timeout: 3s", "timeout: 1h"), json!({"doc": "post-3"})).await;
    let rows = waiting(&api, &[&run], 1).await;
    let token = rows[0]["token"].as_str().expect("a developer sees the link").to_string();
    assert_eq!(rows[0]["link"], format!("/ui/answer.html#{token}"));
    // A viewer may not answer, so is not shown the link.
    let viewer = token_for_viewer();
    let (_, v) = call_as(&api, Some(&viewer), "GET", "/waiting", None).await;
    assert!(v["waiting"][0].get("token").is_none(), "{v}");

    // No bearer: the token alone. First what it asks, then the answer, then a replay.
    let (code, q) = call_as(&api, None, "POST", "/answer", Some(json!({"token": token}))).await;
    assert_eq!(code, 200, "{q}");
    assert_eq!(q["prompt"], "Publish post-3?");
    assert!(q.get("approvers").is_none());
    let forged = forge(&token);
    let (code, _) = call_as(&api, None, "POST", "/answer", Some(json!({"token": forged, "approved": true}))).await;
    assert_eq!(code, 401);
    let body = json!({"token": token, "approved": true, "fields": {"channel": "newsletter"}, "comment": "fine"});
    let (code, v) = call_as(&api, None, "POST", "/answer", Some(body.clone())).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["output"]["by"], "link");
    let (code, v) = call_as(&api, None, "POST", "/answer", Some(body)).await;
    assert_eq!(code, 409, "the link works once: {v}");
    let end = wait_end(&api, &run, 30).await;
    assert_eq!(end["outputs"]["published"], "draft of post-3 to newsletter by link", "{end}");
}

fn token_for_viewer() -> String {
    token("vera", "t1", &["viewer"])
}

on_both!(
    an_event_resumes_only_the_runs_waiting_for_its_key,
    an_event_resumes_only_the_runs_waiting_for_its_key_on_serve,
    event_resumes,
    Setup { workers: 2, ..Setup::default() }
);

async fn event_resumes(t: &Target) {
    let api = t.api.clone();
    let runs = [
        start(&api, PAID, json!({"order": "A-1"})).await,
        start(&api, PAID, json!({"order": "B-2"})).await,
        start(&api, PAID, json!({"order": "C-3"})).await,
    ];
    let ids: Vec<&str> = runs.iter().map(String::as_str).collect();
    waiting(&api, &ids, 3).await;
    let event = |key: &str, amount: u32| json!({"name": "payment.settled", "key": key, "payload": {"amount": amount}});
    let (code, v) = call(&api, "POST", "/events", Some(event("B-2", 20))).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["delivered"], json!([{"run_id": runs[1], "task": "paid", "item": null}]));
    let end = wait_end(&api, &runs[1], 30).await;
    assert_eq!(end["outputs"]["shipped"], "ship B-2: 20", "{end}");
    // Delivered once: the same event again reaches nobody; another tenant's event neither.
    let (_, v) = call(&api, "POST", "/events", Some(event("B-2", 99))).await;
    assert_eq!(v["delivered"], json!([]), "{v}");
    let other = token("ops", "t2", &["developer"]);
    let (_, v) = call_as(&api, Some(&other), "POST", "/events", Some(event("A-1", 1))).await;
    assert_eq!(v["delivered"], json!([]), "another tenant's runs: {v}");
    let left = waiting(&api, &ids, 2).await;
    let mut keys: Vec<&str> = left.iter().map(|r| r["key"].as_str().unwrap()).collect();
    keys.sort();
    assert_eq!(keys, ["A-1", "C-3"]);
    for (key, run) in [("A-1", &runs[0]), ("C-3", &runs[2])] {
        let (_, v) = call(&api, "POST", "/events", Some(event(key, 5))).await;
        assert_eq!(v["delivered"][0]["run_id"], run.as_str(), "{v}");
    }
    for run in &runs {
        let end = wait_end(&api, run, 30).await;
        assert_eq!(end["status"], "succeeded", "{end}");
        let (initial, log) = t.initial_and_log(run).await;
        check_log(&plan(PAID), &log, initial);
        assert_eq!(completions(&log), 1);
    }
    let (code, v) = call(&api, "POST", "/events", Some(json!({"key": "x"}))).await;
    assert_eq!(code, 400, "{v}");
}

/// A sleep longer than SQS's 15-minute delay becomes one EventBridge Scheduler one-shot
/// (`at(...)` the wake time, to the second, deleted after it fires, its input the wake
/// message) and nothing is on the queue meanwhile. LocalStack's Scheduler stores schedules but
/// does not fire them, so the test then plays the scheduler: it sends the schedule's input to
/// the queue, as EventBridge would at that time, and the run goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_two_hour_sleep_is_one_scheduler_one_shot() {
    let Some(aws) = aws().await else { return };
    let mut aws = stack(&aws, 30, 5).await;
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let scheduler = aws_sdk_scheduler::Client::new(&sdk);
    let group = format!("g{}", &aws.table[aws.table.len().saturating_sub(12)..]).replace(['_', '.'], "-");
    scheduler.create_schedule_group().name(&group).send().await.expect("a schedule group");
    let queue_arn = aws
        .sqs
        .get_queue_attributes()
        .queue_url(&aws.queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn).cloned())
        .unwrap();
    aws.one_shots = Some(llmo_aws::config::OneShots {
        scheduler: scheduler.clone(),
        role_arn: "arn:aws:iam::000000000000:role/llmo-scheduler".into(),
        queue_arn: queue_arn.clone(),
        group: group.clone(),
    });
    const NAP: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: long-nap }
spec:
  tasks:
    - { id: nap, type: wait, with: { sleep: { for: 2h } } }
    - { id: after, type: transform, depends_on: [nap], with: { output: "{{ tasks.nap.output.waited_until }}" } }
  outputs:
    woke: "{{ tasks.after.output }}"
"#;
    let api = api(&aws);
    let workers = Workers::start(&aws, 1, 10, |s| s);
    let run = start(&api, NAP, json!({})).await;
    let mut schedules = Vec::new();
    for _ in 0..100 {
        schedules = scheduler.list_schedules().group_name(&group).send().await.unwrap().schedules().to_vec();
        if !schedules.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(schedules.len(), 1, "one one-shot for the wake");
    let name = schedules[0].name().unwrap().to_string();
    let s = scheduler.get_schedule().group_name(&group).name(&name).send().await.unwrap();
    let (_, log) = initial_and_log(&aws, &run).await;
    let started = log[0].at;
    let due = (started + 2 * 3_600_000).div_ceil(1000);
    assert_eq!(s.schedule_expression(), Some(llmo_aws::sqs::at_expression(due).as_str()));
    assert_eq!(s.schedule_expression_timezone(), Some("UTC"));
    assert_eq!(s.action_after_completion().map(|a| a.as_str()), Some("DELETE"));
    let target = s.target().unwrap();
    assert_eq!(target.arn(), queue_arn);
    let input = target.input().unwrap().to_string();
    // Signed as every message the functions send; read as the step function reads it.
    assert!(input.starts_with("s1."), "{input}");
    let message = llmo_aws::sqs::SqsQueue::new(aws.clone()).open(&input).await.unwrap();
    assert!(matches!(message, llmo_runtime::queue::Message::Event { event: Event::WakeDue { .. }, .. }), "{message:?}");
    // Nothing is on the queue while it waits: the run is still waiting a few seconds later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, v) = call(&api, "GET", &format!("/runs/{run}"), None).await;
    assert_eq!(v["tasks"][0]["status"], "waiting", "{v}");
    assert_eq!(initial_and_log(&aws, &run).await.1.len(), log.len(), "nothing happened meanwhile");

    // The scheduler fires: it sends the input to the queue.
    aws.sqs.send_message().queue_url(&aws.queue_url).message_body(input).send().await.unwrap();
    let end = wait_end(&api, &run, 30).await;
    workers.stop().await;
    assert_eq!(end["status"], "succeeded", "{end}");
    assert_eq!(end["outputs"]["woke"].as_u64(), Some(started + 2 * 3_600_000));
    let (initial, log) = initial_and_log(&aws, &run).await;
    check_log(&plan(NAP), &log, initial);
}

/// Messages put on the queues by anyone but the deployment's functions are not acted on: an
/// approval forged on the step queue (unsigned, or signed with another key) does not answer
/// the wait its approvers guard, and an unreadable message naming the run, put on the step
/// queue or straight on the dead-letter queue, does not fail it. Each is dropped (counted as
/// forged), never dead-lettered; the real answer through the API then works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_queue_messages_are_dropped_and_change_nothing() {
    use llmo_runtime::queue::{Envelope, Message};
    let Some(aws) = aws().await else { return };
    assert!(aws.queue_keys.is_some(), "the local stack signs its messages (LLMO_QUEUE_KEYS)");
    let aws = stack(&aws, 2, 2).await;
    let api = api(&aws);
    let workers = Workers::start(&aws, 1, 10, |s| s);
    let dead = Workers::dead_letters(&aws);
    let source = REVIEW.replace("timeout: 3s", "timeout: 10m");
    let run = start(&api, &source, json!({"doc": "post-9"})).await;
    waiting(&api, &[&run], 1).await;
    // What a principal allowed to send to the queue would send: a valid approval, by anyone.
    let store = llmo_aws::dynamo::DynamoStore::new(aws.clone());
    let p = plan(&source);
    use llmo_runtime::store::RunStore;
    let st = llmo_runtime::store::rebuild(&p, store.load(&run).await.unwrap().unwrap()).unwrap();
    let answer = llmo_core::engine::waits::Approval {
        approved: true,
        fields: json!({"channel": "blog"}).as_object().cloned().unwrap(),
        ..Default::default()
    };
    let event = p.approve(&st, "review", None, &answer, "forged-by-queue").unwrap();
    let body = Envelope::encode(&Message::Event { run_id: run.clone(), event });
    let theirs = llmo_aws::mac::Keys::new(vec![b"a-key-that-is-not-the-deployments-0123456789".to_vec()]).unwrap();
    let poison = json!({"v": 99, "kind": "event", "run_id": run, "event": {"type": "start"}}).to_string();
    for (queue, body) in [
        (&aws.queue_url, body.clone()),
        (&aws.queue_url, theirs.sign(&body)),
        (&aws.queue_url, poison.clone()),
        (&aws.dlq_url, poison.clone()),
    ] {
        aws.sqs.send_message().queue_url(queue).message_body(body).send().await.unwrap();
    }
    // Well past the queue's visibility (2 s) and receive limit (2): had they been failed back,
    // they would be dead letters by now.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (_, v) = call(&api, "GET", &format!("/runs/{run}"), None).await;
    assert_eq!((v["status"].as_str(), v["tasks"][1]["status"].as_str()), (Some("running"), Some("waiting")), "{v}");
    let (_, log) = initial_and_log(&aws, &run).await;
    assert_eq!(completions(&log), 0, "the forged approval was not applied");
    // The approvers' own answer still works.
    let uri = format!("/runs/{run}/tasks/review/complete");
    let (code, v) = call(&api, "POST", &uri, Some(json!({"approved": true, "fields": {"channel": "blog"}}))).await;
    assert_eq!(code, 200, "{v}");
    let end = wait_end(&api, &run, 30).await;
    assert_eq!(end["status"], "succeeded", "{end}");
    assert!(end["outputs"]["published"].as_str().unwrap().ends_with("by dev"), "{end}");
    workers.stop().await;
    dead.stop().await;
}
