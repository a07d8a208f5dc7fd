//! Definitions (register, list), costs, metrics, the sweeper and the audit trail.

use super::*;

impl Api {
    /// `GET /costs?by=workflow|tenant&since=7d`: cost, tokens and runs per UTC day and
    /// workflow (or for the tenant), from what the runs recorded, over at most
    /// [`COST_RUNS`] runs (`truncated` when there were more).
    pub(super) async fn costs(&self, tenant: &str, q: &HashMap<String, String>) -> Reply {
        use llmo_runtime::costs::{By, parse_since, roll_up};
        let by: By = match q.get("by").map_or(Ok(By::Workflow), |v| v.parse()) {
            Ok(b) => b,
            Err(e) => return problem(StatusCode::BAD_REQUEST, e),
        };
        let span = match parse_since(q.get("since").map_or("7d", String::as_str)) {
            Ok(ms) => ms,
            Err(e) => return problem(StatusCode::BAD_REQUEST, format!("`since`: {e}")),
        };
        let since = llmo_runtime::ports::now_ms().saturating_sub(span);
        let (runs, truncated) = match self.index.runs_since(tenant, since, COST_RUNS).await {
            Ok(r) => r,
            Err(e) => return internal(e),
        };
        let rows = roll_up(&runs, by, tenant, since);
        let total = json!({
            "runs": rows.iter().map(|r| r.runs).sum::<u64>(),
            "cost_usd": rows.iter().map(|r| r.cost_usd).sum::<f64>(),
            "tokens": rows.iter().map(|r| r.tokens).sum::<u64>(),
        });
        let by = if by == By::Workflow { "workflow" } else { "tenant" };
        reply(StatusCode::OK, json!({"by": by, "since": since, "rows": rows, "total": total, "truncated": truncated}))
    }

    pub(super) fn metrics(&self, p: &Principal) -> Reply {
        if !p.operator {
            return problem(StatusCode::FORBIDDEN, "GET /metrics counts every tenant's runs: operators only");
        }
        let Some(h) = &self.metrics else {
            return problem(StatusCode::NOT_FOUND, "this API keeps no metrics (deployed, they go to CloudWatch)");
        };
        let mut r = Response::new(Body::Text(h.render()));
        *r.status_mut() = StatusCode::OK;
        r.headers_mut().insert("content-type", "text/plain; version=0.0.4".parse().expect("header value"));
        r
    }

    pub(super) async fn register(&self, tenant: &str, body: &Value) -> (Reply, Option<String>) {
        let Some(source) = body.get("source").and_then(Value::as_str) else {
            return (problem(StatusCode::BAD_REQUEST, "`source` (the workflow YAML) is required"), None);
        };
        let checked = match self.starter.check("workflow.yaml", source) {
            Ok(c) => c,
            Err(e) => return (start_error(e), None),
        };
        let name = checked.workflow.metadata.name.clone();
        let reply = match self.workflows.put(tenant, &name, source, llmo_runtime::ports::now_ms()).await {
            Ok(()) => reply(StatusCode::CREATED, json!({"workflow": name, "tasks": checked.workflow.spec.tasks.len()})),
            Err(e) => internal(e),
        };
        (reply, Some(name))
    }

    pub(super) async fn workflows(&self, tenant: &str) -> Reply {
        match self.workflows.list(tenant).await {
            Ok(list) => {
                let names: Vec<Value> =
                    list.iter().map(|r| json!({"workflow": r.name, "registered_at": r.registered_at})).collect();
                reply(StatusCode::OK, json!({"workflows": names}))
            }
            Err(e) => internal(e),
        }
    }

    /// Runs the sweeper once; it acts on every tenant's runs, so only operators may.
    pub(super) async fn sweep(&self, p: &Principal) -> Reply {
        if !p.operator {
            return problem(StatusCode::FORBIDDEN, "POST /sweep acts on every tenant's runs: operators only");
        }
        match self.sweeper.sweep_now().await {
            Ok(out) => reply(StatusCode::OK, serde_json::to_value(out).unwrap_or(Value::Null)),
            Err(e) => internal(e),
        }
    }

    pub(super) async fn read_audit(&self, tenant: &str, q: &HashMap<String, String>) -> Reply {
        let num =
            |k: &str| q.get(k).map(|v| v.parse::<u64>().map_err(|_| format!("`{k}` is milliseconds since the epoch")));
        let now = llmo_runtime::ports::now_ms();
        let (until, since) = match (num("until").transpose(), num("since").transpose()) {
            (Ok(u), Ok(s)) => {
                let until = u.unwrap_or(now);
                (until, s.unwrap_or(until.saturating_sub(86_400_000)))
            }
            (Err(e), _) | (_, Err(e)) => return problem(StatusCode::BAD_REQUEST, e),
        };
        if let Err(e) = audit::check_range(since, until) {
            return problem(StatusCode::BAD_REQUEST, e);
        }
        let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
            None => 100,
            Some(Ok(l)) if (1..=1000).contains(&l) => l,
            Some(_) => return problem(StatusCode::BAD_REQUEST, "`limit` is a number from 1 to 1000"),
        };
        let run_id = q.get("run").cloned();
        if run_id.as_deref().is_some_and(|r| !valid_run_id(r)) {
            return problem(StatusCode::BAD_REQUEST, "`run` is not a run id");
        }
        let query = audit::Query { tenant: tenant.to_string(), run_id, since, until, limit };
        match self.audit.read(&query).await {
            Ok(records) => {
                reply(StatusCode::OK, json!({"tenant": tenant, "since": since, "until": until, "records": records}))
            }
            Err(e) => internal(e),
        }
    }
}
