//! The `api` function: the HTTP API (API Gateway HTTP API, payload v2) over the run store.
//!
//! | route | does |
//! | --- | --- |
//! | `POST /workflows` `{"source": "<yaml>"}` | validates and registers a definition (by its `metadata.name`) |
//! | `GET /workflows` | the registered definitions |
//! | `POST /runs` `{"workflow": name \| "source": yaml, "inputs": {..}, "idempotency_key"?}` | starts a run (`Idempotency-Key` header works too: one key, one run) |
//! | `GET /runs?workflow=&status=&limit=&cursor=` | runs, newest first, a page at a time |
//! | `GET /runs/{id}` | status, task states, outputs, cost |
//! | `GET /runs/{id}/history` | the transition log |
//! | `POST /runs/{id}/cancel` | cancels (stored before the answer; `on.failure` hooks run) |

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use lambda_http::http::{Method, StatusCode};
use lambda_http::{Body, Request, Response};
use llmo_core::engine::{Event, Plan};
use llmo_core::source::SourceFile;
use llmo_core::validate::{Checked, Validator};
use llmo_runtime::executor::Registry;
use llmo_runtime::ports::SystemClock;
use llmo_runtime::providers::Config;
use llmo_runtime::queue::{Delivery, Message, Queue};
use llmo_runtime::store::{RunStore, rebuild};
use llmo_runtime::worker::Worker;
use serde_json::{Value, json};

use crate::config::Aws;
use crate::dynamo::{DynamoStore, ListFilter};
use crate::sqs::SqsQueue;

pub struct Api {
    pub aws: Aws,
    pub store: Arc<DynamoStore>,
    pub queue: Arc<SqsQueue>,
    pub worker: Worker,
    pub config: Config,
    pub mock: bool,
    validator: Validator,
}

type Reply = Response<Body>;

/// A refusal, boxed (a response is large).
type Refusal = Box<Reply>;

fn reply(status: StatusCode, body: Value) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::Text(body.to_string()))
        .expect("valid response")
}

fn problem(status: StatusCode, message: impl Into<String>) -> Reply {
    reply(status, json!({"error": message.into()}))
}

fn internal(e: impl std::fmt::Display) -> Reply {
    tracing::error!(error = %e, "api request failed");
    problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

impl Api {
    pub fn new(aws: &Aws, executors: Registry, config: Config, mock: bool) -> Self {
        let store = Arc::new(DynamoStore::new(aws.clone()));
        let queue = Arc::new(SqsQueue::new(aws.clone()));
        let worker =
            Worker::from_stored(store.clone(), queue.clone(), Arc::new(executors), Arc::new(SystemClock::default()));
        Api { aws: aws.clone(), store, queue, worker, config, mock, validator: Validator::default() }
    }

    pub async fn handle(&self, req: Request) -> Reply {
        let path = req.uri().path().trim_end_matches('/').to_string();
        let query: HashMap<String, String> = req
            .uri()
            .query()
            .map(|q| {
                q.split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), urlencoding_decode(v)))
                    .collect()
            })
            .unwrap_or_default();
        let body: Value = match req.body() {
            Body::Empty => Value::Null,
            b => match serde_json::from_slice(b.as_ref()) {
                Ok(v) => v,
                Err(e) => return problem(StatusCode::BAD_REQUEST, format!("request body is not JSON: {e}")),
            },
        };
        let header_key = req.headers().get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string);
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        match (req.method(), parts.as_slice()) {
            (&Method::POST, ["workflows"]) => self.register(&body).await,
            (&Method::GET, ["workflows"]) => self.workflows().await,
            (&Method::POST, ["runs"]) => self.start(&body, header_key).await,
            (&Method::GET, ["runs"]) => self.list(&query).await,
            (&Method::GET, ["runs", id]) => self.get(id).await,
            (&Method::GET, ["runs", id, "history"]) => self.history(id).await,
            (&Method::POST, ["runs", id, "cancel"]) => self.cancel(id).await,
            _ => problem(StatusCode::NOT_FOUND, format!("no route {} {path}", req.method())),
        }
    }

    fn check(&self, name: &str, source: &str) -> Result<Checked, Refusal> {
        let outcome = self.validator.validate(&SourceFile::new(name.to_string(), source.to_string()));
        outcome.checked.ok_or_else(|| {
            let errors: Vec<Value> = outcome
                .report
                .records()
                .into_iter()
                .map(|r| json!({"file": r.file, "line": r.line, "column": r.column, "field": r.path, "code": r.code, "message": r.message}))
                .collect();
            Box::new(reply(StatusCode::UNPROCESSABLE_ENTITY, json!({"error": "the workflow does not validate", "diagnostics": errors})))
        })
    }

    async fn register(&self, body: &Value) -> Reply {
        let Some(source) = body.get("source").and_then(Value::as_str) else {
            return problem(StatusCode::BAD_REQUEST, "`source` (the workflow YAML) is required");
        };
        let checked = match self.check("workflow.yaml", source) {
            Ok(c) => c,
            Err(r) => return *r,
        };
        let name = checked.workflow.metadata.name.clone();
        let r = self
            .aws
            .dynamodb
            .put_item()
            .table_name(&self.aws.table)
            .item("pk", AttributeValue::S("WORKFLOWS".into()))
            .item("sk", AttributeValue::S(name.clone()))
            .item("source", AttributeValue::S(source.to_string()))
            .item("registered_at", AttributeValue::N(llmo_runtime::ports::now_ms().to_string()))
            .send()
            .await;
        match r {
            Ok(_) => reply(StatusCode::CREATED, json!({"workflow": name, "tasks": checked.workflow.spec.tasks.len()})),
            Err(e) => internal(aws_sdk_dynamodb::error::DisplayErrorContext(e)),
        }
    }

    async fn definition(&self, name: &str) -> Result<Option<String>, Refusal> {
        let out = self
            .aws
            .dynamodb
            .get_item()
            .table_name(&self.aws.table)
            .key("pk", AttributeValue::S("WORKFLOWS".into()))
            .key("sk", AttributeValue::S(name.to_string()))
            .send()
            .await
            .map_err(|e| Box::new(internal(aws_sdk_dynamodb::error::DisplayErrorContext(e))))?;
        Ok(out.item.and_then(|i| i.get("source").and_then(|s| s.as_s().ok()).cloned()))
    }

    async fn workflows(&self) -> Reply {
        let r = self
            .aws
            .dynamodb
            .query()
            .table_name(&self.aws.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", AttributeValue::S("WORKFLOWS".into()))
            .projection_expression("sk, registered_at")
            .send()
            .await;
        match r {
            Ok(out) => {
                let names: Vec<Value> = out
                    .items()
                    .iter()
                    .map(|i| json!({"workflow": i.get("sk").and_then(|s| s.as_s().ok()), "registered_at": i.get("registered_at").and_then(|n| n.as_n().ok()).and_then(|n| n.parse::<u64>().ok())}))
                    .collect();
                reply(StatusCode::OK, json!({"workflows": names}))
            }
            Err(e) => internal(aws_sdk_dynamodb::error::DisplayErrorContext(e)),
        }
    }

    async fn start(&self, body: &Value, header_key: Option<String>) -> Reply {
        let (name, source) =
            match (body.get("source").and_then(Value::as_str), body.get("workflow").and_then(Value::as_str)) {
                (Some(s), _) => (
                    body.get("source_name").and_then(Value::as_str).unwrap_or("workflow.yaml").to_string(),
                    s.to_string(),
                ),
                (None, Some(w)) => match self.definition(w).await {
                    Ok(Some(s)) => (format!("{w}.yaml"), s),
                    Ok(None) => return problem(StatusCode::NOT_FOUND, format!("no workflow `{w}` is registered")),
                    Err(r) => return *r,
                },
                (None, None) => {
                    return problem(StatusCode::BAD_REQUEST, "give `workflow` (a registered name) or `source`");
                }
            };
        let checked = match self.check(&name, &source) {
            Ok(c) => c,
            Err(r) => return *r,
        };
        let given = body.get("inputs").and_then(Value::as_object).cloned().unwrap_or_default();
        let inputs = match llmo_core::inputs::resolve_inputs(&checked.workflow.spec.inputs, &given) {
            Ok(i) => i,
            Err(errors) => {
                let list: Vec<Value> =
                    errors.iter().map(|e| json!({"input": e.input, "path": e.path, "message": e.message})).collect();
                return reply(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"error": "inputs do not match the workflow", "inputs": list}),
                );
            }
        };
        let key = header_key.or_else(|| body.get("idempotency_key").and_then(Value::as_str).map(str::to_string));
        let mut plan = Plan::new(checked);
        plan.set_estimates(llmo_runtime::estimates(&self.config, self.mock, &plan));
        let run_id = new_run_id();
        let st = plan.new_run(run_id.clone(), inputs);
        let workflow = plan.checked.workflow.metadata.name.clone();
        let existing = match self.store.create_once(key.as_deref(), &workflow, &name, &source, &st).await {
            Ok(e) => e,
            Err(e) => return internal(e),
        };
        let run_id = existing.clone().unwrap_or(run_id);
        // Sent again for a repeated key too: the first request may have died before sending
        // it, and a second `Start` is ignored.
        if let Err(e) = self.queue.send(&Message::Event { run_id: run_id.clone(), event: Event::Start }, 0).await {
            return internal(e);
        }
        let status = if existing.is_some() { StatusCode::OK } else { StatusCode::CREATED };
        reply(status, json!({"run_id": run_id, "workflow": workflow, "created": existing.is_none()}))
    }

    /// Starts the run an EventBridge schedule asks for: `{"workflow", "inputs"}` as the event
    /// itself (Scheduler) or as its `detail` (scheduled rule). The event id (or the
    /// Scheduler's `idempotency_key`/scheduled time) is the start's idempotency key.
    pub async fn start_scheduled(&self, event: &Value) -> Result<Value, String> {
        let body = match event.get("detail") {
            Some(d) if d.get("workflow").is_some() => d.clone(),
            _ => event.clone(),
        };
        // Scoped by workflow, so two schedules' ticks at the same time never share a key.
        let workflow = body.get("workflow").and_then(Value::as_str).unwrap_or_default();
        let key = event
            .get("idempotency_key")
            .or_else(|| body.get("idempotency_key"))
            .or_else(|| event.get("id"))
            .and_then(Value::as_str)
            .map(|k| format!("schedule:{workflow}:{k}"));
        let r = self.start(&body, key).await;
        let ok = r.status().is_success();
        let text = String::from_utf8_lossy(r.body().as_ref()).into_owned();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if ok {
            tracing::info!(result = %v, "scheduled run started");
            Ok(v)
        } else {
            Err(v.to_string())
        }
    }

    async fn list(&self, q: &HashMap<String, String>) -> Reply {
        let f = ListFilter {
            workflow: q.get("workflow").cloned(),
            status: q.get("status").cloned(),
            limit: q.get("limit").and_then(|l| l.parse().ok()),
            cursor: q.get("cursor").cloned(),
        };
        match self.store.list_page(&f).await {
            Ok(page) => {
                let runs: Vec<Value> = page
                    .runs
                    .iter()
                    .map(|r| json!({"run_id": r.run_id, "workflow": r.workflow, "status": r.status, "started_at": r.started_at, "cost_usd": r.cost_usd}))
                    .collect();
                reply(StatusCode::OK, json!({"runs": runs, "next": page.next}))
            }
            Err(e) => internal(e),
        }
    }

    async fn get(&self, id: &str) -> Reply {
        let stored = match self.store.load(id).await {
            Ok(Some(s)) => s,
            Ok(None) => return problem(StatusCode::NOT_FOUND, format!("no run `{id}`")),
            Err(e) => return internal(e),
        };
        let checked = match self.check(&stored.source_name, &stored.source) {
            Ok(c) => c,
            Err(r) => return *r,
        };
        let plan = Plan::new(checked);
        let workflow = stored.workflow.clone();
        let st = match rebuild(&plan, stored) {
            Ok(s) => s,
            Err(e) => return internal(e),
        };
        let tasks: Vec<Value> = st
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| {
                json!({
                    "id": plan.checked.dag.id(i),
                    "status": t.status.as_str(),
                    "attempts": t.attempts,
                    "output": t.output,
                    "error": t.error,
                    "reason": t.reason,
                    "cost_usd": t.cost_usd,
                    "tokens": t.tokens,
                })
            })
            .collect();
        reply(
            StatusCode::OK,
            json!({
                "run_id": st.run_id, "workflow": workflow, "status": st.status.as_str(), "version": st.version,
                "started_at": st.started_at, "ended_at": st.ended_at, "cost_usd": st.cost_usd, "tokens": st.tokens,
                "outputs": st.outputs, "error": st.error, "tasks": tasks,
            }),
        )
    }

    async fn history(&self, id: &str) -> Reply {
        match self.store.history(id).await {
            Ok(h) if h.is_empty() => match self.store.version(id).await {
                Ok(None) => problem(StatusCode::NOT_FOUND, format!("no run `{id}`")),
                _ => reply(StatusCode::OK, json!({"run_id": id, "transitions": []})),
            },
            Ok(h) => reply(StatusCode::OK, json!({"run_id": id, "transitions": h})),
            Err(e) => internal(e),
        }
    }

    async fn cancel(&self, id: &str) -> Reply {
        let d = Delivery {
            receipt: String::new(),
            message: Message::Event { run_id: id.to_string(), event: Event::Cancel },
            receive_count: 1,
        };
        match self.worker.handle(&d).await {
            Ok(_) => self.get(id).await,
            Err(llmo_runtime::worker::Error::NoSuchRun(_)) => problem(StatusCode::NOT_FOUND, format!("no run `{id}`")),
            Err(e) => internal(e),
        }
    }
}

fn new_run_id() -> String {
    use sha2::{Digest, Sha256};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = llmo_runtime::ports::now_ms();
    let seed = format!("{now}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    let h = Sha256::digest(seed.as_bytes());
    format!("run-{now}-{}", h.iter().take(4).map(|b| format!("{b:02x}")).collect::<String>())
}

/// Decodes `%xx` and `+` in a query value.
fn urlencoding_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() + 1
                && s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()).is_some() =>
            {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).expect("checked"));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
