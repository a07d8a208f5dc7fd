//! Runs: start (from a request or a trigger), list, read, history, cancel, redrive, rerun.

use super::*;

/// Up to `limit` transitions within [`PAGE_BYTES`] (at least one), and the version after
/// which the next page starts if any are left.
pub(super) fn history_page(tail: Vec<llmo_runtime::store::Transition>, limit: usize) -> (Vec<Value>, Option<u64>) {
    let mut out = Vec::new();
    let mut bytes = 0;
    let total = tail.len();
    for t in tail {
        let v = serde_json::to_value(&t).unwrap_or(Value::Null);
        let size = llmo_core::engine::limits::json_size(&v, VALUE_BYTES);
        let (v, size) = if size > VALUE_BYTES {
            let marker = json!({"version": t.version, "at": t.at, "event": {"event": event_kind(&v), "truncated": true, "bytes": serde_json::to_string(&v).map_or(size, |s| s.len())}});
            (marker, 256)
        } else {
            (v, size)
        };
        if out.len() == limit || (!out.is_empty() && bytes + size > PAGE_BYTES) {
            break;
        }
        bytes += size;
        out.push(v);
    }
    let next = (out.len() < total).then(|| out.last().and_then(|v| v["version"].as_u64())).flatten();
    (out, next)
}

pub(super) fn event_kind(transition: &Value) -> Value {
    transition.pointer("/event/event").cloned().unwrap_or(Value::Null)
}

/// A run whose state cannot be rebuilt (its stored workflow no longer validates, its log no
/// longer replays): what is known without the engine, with `unreadable` saying why. Once the
/// dead-letter handler has aborted it (see `Worker::abort`) that is `failed` and the reason;
/// before, the last snapshot's status (its messages are on their way to the dead-letter queue).
pub(super) fn unreadable(stored: llmo_runtime::store::StoredRun, why: String) -> Reply {
    let snap = &stored.snapshot;
    let (status, version, error, ended_at) = match stored.tail.last() {
        Some(t) => match &t.event {
            llmo_core::engine::Event::Abort { reason } => ("failed", t.version, Some(reason.clone()), Some(t.at)),
            _ => (snap.status.as_str(), t.version, snap.error.clone(), snap.ended_at),
        },
        None => (snap.status.as_str(), snap.version, snap.error.clone(), snap.ended_at),
    };
    tracing::warn!(run = %snap.run_id, %why, "run state cannot be rebuilt");
    reply(
        StatusCode::OK,
        json!({
            "run_id": snap.run_id, "workflow": stored.workflow, "status": status, "version": version,
            "inputs": snap.inputs, "started_at": snap.started_at, "ended_at": ended_at,
            "cost_usd": snap.cost_usd, "tokens": snap.tokens, "outputs": null, "error": error, "tasks": [],
            "unreadable": why,
        }),
    )
}

impl Api {
    /// Starts a run through the start-a-run use case: from a registered workflow of the tenant
    /// or from `source`.
    /// The start-a-run use case for a tenant: the workflow registered as `workflow` or the
    /// text given, with `inputs`, once per `key`.
    pub async fn start_run(
        &self,
        tenant: &str,
        wanted: Wanted,
        inputs: serde_json::Map<String, Value>,
        key: Option<IdempotencyKey>,
    ) -> Result<llmo_runtime::start::Started, StartRefused> {
        let (name, source) = match wanted {
            Wanted::Source { name, text } => (name, text),
            Wanted::Registered(w) => match self.workflows.get(tenant, &w).await {
                Ok(Some(s)) => (format!("{w}.yaml"), s),
                Ok(None) => return Err(StartRefused::NotRegistered(w)),
                Err(e) => return Err(StartRefused::Store(e)),
            },
        };
        let req = StartRequest { tenant: Some(tenant.to_string()), inputs, key };
        self.starter.start(&*self.store, &*self.queue, &name, &source, &req).await.map_err(StartRefused::Start)
    }

    /// `POST /runs`: `{"workflow": name | "source": yaml, "inputs"}`.
    pub(super) async fn start_in(
        &self,
        tenant: &str,
        body: &Value,
        key: Option<IdempotencyKey>,
    ) -> (Reply, Option<String>) {
        let wanted = match (body.get("source").and_then(Value::as_str), body.get("workflow").and_then(Value::as_str)) {
            (Some(s), _) => Wanted::Source {
                name: body.get("source_name").and_then(Value::as_str).unwrap_or("workflow.yaml").to_string(),
                text: s.to_string(),
            },
            (None, Some(w)) => Wanted::Registered(w.to_string()),
            (None, None) => {
                return (problem(StatusCode::BAD_REQUEST, "give `workflow` (a registered name) or `source`"), None);
            }
        };
        let inputs = match body.get("inputs") {
            None | Some(Value::Null) => Default::default(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return (problem(StatusCode::BAD_REQUEST, "`inputs` must be an object"), None),
        };
        match self.start_run(tenant, wanted, inputs, key).await {
            Ok(s) => {
                let status = if s.created { StatusCode::CREATED } else { StatusCode::OK };
                let target = Some(s.run_id.clone());
                (reply(status, json!({"run_id": s.run_id, "workflow": s.workflow, "created": s.created})), target)
            }
            Err(StartRefused::NotRegistered(w)) => {
                (problem(StatusCode::NOT_FOUND, format!("no workflow `{w}` is registered")), None)
            }
            Err(StartRefused::Store(e)) => (internal(e), None),
            Err(StartRefused::Start(e)) => (start_error(e), None),
        }
    }

    pub(super) async fn start(
        &self,
        tenant: &str,
        body: &Value,
        header_key: Option<String>,
    ) -> (Reply, Option<String>) {
        let key = header_key.or_else(|| body.get("idempotency_key").and_then(Value::as_str).map(str::to_string));
        let key = match key.as_deref().map(IdempotencyKey::client).transpose() {
            Ok(k) => k,
            Err(e) => return (start_error(e), None),
        };
        self.start_in(tenant, body, key).await
    }

    /// Starts the run a trigger asks for (what `llmo infra` generates; see
    /// `llmo_core::triggers`):
    /// - an EventBridge Scheduler tick: `{"tenant", "workflow", "inputs", "idempotency_key"}`
    ///   (or a scheduled rule's event with that as its `detail`); the key (schedule and
    ///   scheduled time) is the start's idempotency key;
    /// - an EventBridge rule's delivery: `{"tenant", "workflow", "trigger", "event"}`: the
    ///   inputs are the registered workflow's trigger's templates over the event, and the event's
    ///   id is the idempotency key.
    ///
    /// Keys are in their own key spaces (schedule, event): no client can take them.
    /// In a `schedule` span: the root of the run's trace (EventBridge carries no context).
    pub async fn start_scheduled(&self, event: &Value) -> Result<Value, String> {
        use tracing::Instrument;
        let span = tracing::info_span!("schedule", otel.kind = "consumer", run_id = tracing::field::Empty);
        let r = self.start_scheduled_in(event).instrument(span.clone()).await;
        if let Ok(v) = &r
            && let Some(id) = v.get("run_id").and_then(Value::as_str)
        {
            span.record("run_id", id);
        }
        r
    }

    pub(super) async fn start_scheduled_in(&self, event: &Value) -> Result<Value, String> {
        let body = match event.get("detail") {
            Some(d) if d.get("workflow").is_some() => d.clone(),
            _ => event.clone(),
        };
        let tenant = body.get("tenant").and_then(Value::as_str).unwrap_or_default().to_string();
        let tenant = tenant.as_str();
        if !crate::auth::valid_tenant(tenant) {
            return Err(format!("the trigger names no valid `tenant` (got `{tenant}`)"));
        }
        let workflow = body.get("workflow").and_then(Value::as_str).unwrap_or_default().to_string();
        let inputs_of = |b: &Value| match b.get("inputs") {
            None | Some(Value::Null) => Ok(Default::default()),
            Some(Value::Object(m)) => Ok(m.clone()),
            Some(_) => Err("`inputs` must be an object".to_string()),
        };
        let (wanted, inputs, key) = if let (Some(trigger), Some(ev)) =
            (body.get("trigger").and_then(Value::as_str), body.get("event"))
        {
            let source = match self.workflows.get(tenant, &workflow).await {
                Ok(Some(s)) => s,
                Ok(None) => return Err(format!("no workflow `{workflow}` is registered for tenant `{tenant}`")),
                Err(e) => return Err(format!("reading workflow `{workflow}`: {e}")),
            };
            let checked = self.starter.check(&format!("{workflow}.yaml"), &source).map_err(|e| e.to_string())?;
            let t = checked
                .workflow
                .spec
                .events
                .iter()
                .find(|t| t.name == trigger)
                .ok_or_else(|| format!("workflow `{workflow}` has no event trigger `{trigger}`"))?;
            let inputs = llmo_core::triggers::event_inputs(t, ev)?;
            let id = ev.get("id").and_then(Value::as_str).ok_or("the event has no `id`")?;
            let key = IdempotencyKey::system(KeySpace::Event, &format!("{workflow}:{trigger}:{id}"));
            (Wanted::Source { name: format!("{workflow}.yaml"), text: source }, inputs, Some(key))
        } else {
            // Scoped by workflow, so two schedules' ticks at the same time never share a key.
            let key = match (event.get("idempotency_key").or_else(|| body.get("idempotency_key")), event.get("id")) {
                (Some(k), _) => {
                    k.as_str().map(|k| IdempotencyKey::system(KeySpace::Schedule, &format!("{workflow}:{k}")))
                }
                (None, Some(id)) => {
                    id.as_str().map(|k| IdempotencyKey::system(KeySpace::Schedule, &format!("{workflow}:{k}")))
                }
                _ => None,
            };
            (Wanted::Registered(workflow.clone()), inputs_of(&body)?, key)
        };
        match self.start_run(tenant, wanted, inputs, key).await {
            Ok(s) => {
                let v = json!({"run_id": s.run_id, "workflow": s.workflow, "created": s.created});
                tracing::info!(result = %v, tenant, workflow, "triggered run started");
                Ok(v)
            }
            Err(StartRefused::NotRegistered(w)) => {
                Err(format!("no workflow `{w}` is registered for tenant `{tenant}`"))
            }
            Err(StartRefused::Store(e)) => Err(format!("starting `{workflow}`: {e}")),
            Err(StartRefused::Start(e)) => Err(format!("starting `{workflow}`: {e}")),
        }
    }

    pub(super) async fn list(&self, tenant: &str, q: &HashMap<String, String>) -> Reply {
        let limit = match q.get("limit").map(|l| l.parse::<i32>()) {
            None => None,
            Some(Ok(l)) if (1..=1000).contains(&l) => Some(l),
            Some(_) => return problem(StatusCode::BAD_REQUEST, "`limit` is a number from 1 to 1000"),
        };
        let f = ListFilter {
            tenant: tenant.to_string(),
            workflow: q.get("workflow").cloned(),
            status: q.get("status").cloned(),
            limit,
            cursor: q.get("cursor").cloned(),
        };
        match self.index.list_page(&f).await {
            Ok(page) => {
                let runs: Vec<Value> = page
                    .runs
                    .iter()
                    .map(|r| json!({"run_id": r.run_id, "workflow": r.workflow, "status": r.status, "started_at": r.started_at, "cost_usd": r.cost_usd, "tokens": r.tokens}))
                    .collect();
                reply(StatusCode::OK, json!({"runs": runs, "next": page.next}))
            }
            Err(llmo_runtime::store::Error::Invalid(why)) => problem(StatusCode::BAD_REQUEST, why),
            Err(e) => internal(e),
        }
    }

    /// The run `id` of `tenant` (another tenant's run is no run).
    pub(super) async fn get(&self, tenant: &str, id: &str) -> Reply {
        let stored = match self.store.load(id).await {
            Ok(Some(s)) if s.snapshot.tenant.as_deref().unwrap_or("-") == tenant => s,
            Ok(_) => return no_run(id),
            Err(e) => return internal(e),
        };
        let checked = match self.starter.check(&stored.source_name, &stored.source) {
            Ok(c) => c,
            Err(e) => return unreadable(stored, format!("the stored workflow of {id} no longer validates: {e}")),
        };
        let plan = Arc::new(Plan::new(checked));
        let workflow = stored.workflow.clone();
        let st = match self.reads.state(self.store.as_ref(), tenant, plan.clone(), stored.clone()).await {
            Ok(s) => s,
            Err(ReadError::Store(e)) => return unreadable(stored, e.to_string()),
            Err(e) => return read_refused(e),
        };
        reply(StatusCode::OK, llmo_runtime::view::run(&plan, &workflow, &st))
    }

    /// A page of the run's log: `after` (a version, default 0) and `limit` (1 to 1,000,
    /// default 500) transitions, at most [`PAGE_BYTES`] of them; `next` is where the next page
    /// starts (`after=next`), absent on the last. A transition larger than [`VALUE_BYTES`]
    /// comes back with its event replaced by a `truncated` marker.
    pub(super) async fn history(&self, id: &str, q: &HashMap<String, String>) -> Reply {
        let after = match q.get("after").map(|v| v.parse::<u64>()) {
            None => 0,
            Some(Ok(v)) => v,
            Some(Err(_)) => return problem(StatusCode::BAD_REQUEST, "`after` is a version (a whole number)"),
        };
        let limit = match q.get("limit").map(|v| v.parse::<usize>()) {
            None => 500,
            Some(Ok(v)) if (1..=1000).contains(&v) => v,
            Some(_) => return problem(StatusCode::BAD_REQUEST, "`limit` is a whole number from 1 to 1000"),
        };
        let tail = match self.store.load_since(id, after).await {
            Ok(Some(t)) => t,
            Ok(None) => return no_run(id),
            Err(e) => return internal(e),
        };
        let (transitions, next) = history_page(tail, limit);
        let mut body = json!({"run_id": id, "transitions": transitions});
        if let Some(n) = next {
            body["next"] = json!(n);
        }
        reply(StatusCode::OK, body)
    }

    pub(super) async fn cancel(&self, tenant: &str, id: &str) -> Reply {
        // Read first at a bounded cost (the worker below replays on this thread): a dear log
        // is replayed under the tenant's cap and left as a snapshot for the worker.
        if let Ok(Some(stored)) = self.store.load(id).await
            && let Ok(checked) = self.starter.check(&stored.source_name, &stored.source)
            && let Err(e @ (ReadError::Busy { .. } | ReadError::Slow { .. })) =
                self.reads.state(self.store.as_ref(), tenant, Arc::new(Plan::new(checked)), stored).await
        {
            return read_refused(e);
        }
        let d = Delivery {
            receipt: String::new(),
            message: Message::Event { run_id: id.to_string(), event: Event::Cancel },
            receive_count: 1,
            trace: llmo_runtime::telemetry::traceparent(),
        };
        match self.worker.handle(&d).await {
            Ok(_) => self.get(tenant, id).await,
            Err(llmo_runtime::worker::Error::NoSuchRun(_)) => no_run(id),
            Err(e) => internal(e),
        }
    }

    /// `POST /runs/{id}/redrive`: a failed or timed-out run continues from its failed tasks
    /// (those that succeeded keep their outputs); 409 for a run in any other state.
    /// With `{"inputs": {..}}`, the run's inputs are edited for the tasks that run again
    /// (checked against the workflow's declarations; recorded with the redrive).
    pub(super) async fn redrive(&self, tenant: &str, id: &str, body: &Value) -> Reply {
        let edits = match body.get("inputs") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m.clone()),
            Some(_) => return problem(StatusCode::BAD_REQUEST, "`inputs` is an object of input names to values"),
        };
        let stored = match self.store.load(id).await {
            Ok(Some(s)) => s,
            Ok(None) => return no_run(id),
            Err(e) => return internal(e),
        };
        let plan = match self.starter.check(&stored.source_name, &stored.source) {
            Ok(c) => Arc::new(Plan::new(c)),
            Err(e) => {
                return problem(StatusCode::CONFLICT, format!("the stored workflow of {id} no longer validates: {e}"));
            }
        };
        let st = match self.state_of(tenant, plan.clone(), stored).await {
            Ok(s) => s,
            Err(refusal) => return *refusal,
        };
        if !matches!(st.status, RunStatus::Failed | RunStatus::TimedOut) {
            return problem(
                StatusCode::CONFLICT,
                format!("{id} is {}: only a failed or timed-out run is redriven", st.status.as_str()),
            );
        }
        if let Some(e) = &edits
            && let Err(errors) = llmo_core::inputs::check_edits(&plan.checked.workflow.spec.inputs, &st.inputs, e)
        {
            return start_error(StartError::Inputs(errors));
        }
        let d = Delivery {
            receipt: String::new(),
            message: Message::Event {
                run_id: id.to_string(),
                event: Event::Redrive { after: st.version, inputs: edits },
            },
            receive_count: 1,
            trace: llmo_runtime::telemetry::traceparent(),
        };
        match self.worker.handle(&d).await {
            Ok(_) => self.get(tenant, id).await,
            Err(e) => internal(e),
        }
    }

    /// `POST /runs/{id}/rerun` with `{"from": TASK}`: a new run of the same workflow and inputs
    /// that reuses this run's recorded outputs and runs TASK and everything downstream of it
    /// again (201, the new run's id; its `rerun_of` names this run).
    pub(super) async fn rerun(&self, tenant: &str, id: &str, body: &Value) -> (Reply, Option<String>) {
        let Some(from) = body.get("from").and_then(Value::as_str) else {
            return (problem(StatusCode::BAD_REQUEST, "`from` (the task to run again from) is required"), None);
        };
        let stored = match self.store.load(id).await {
            Ok(Some(s)) => s,
            Ok(None) => return (no_run(id), None),
            Err(e) => return (internal(e), None),
        };
        let plan = match self.starter.check(&stored.source_name, &stored.source) {
            Ok(c) => Arc::new(Plan::new(c)),
            Err(e) => return (start_error(e), None),
        };
        let (source_name, source) = (stored.source_name.clone(), stored.source.clone());
        let st = match self.state_of(tenant, plan, stored).await {
            Ok(s) => s,
            Err(refusal) => return (*refusal, None),
        };
        let prepared = match self.starter.prepare_rerun(&source_name, &source, &st, from) {
            Ok(p) => p,
            Err(e) => return (start_error(e), None),
        };
        let started = match self.starter.create(self.store.as_ref(), &prepared).await {
            Ok(s) => s,
            Err(e) => return (start_error(e), None),
        };
        let start = Message::Event { run_id: started.run_id.clone(), event: Event::Start };
        if let Err(e) = llmo_runtime::queue::Queue::send(self.queue.as_ref(), &start, 0).await {
            return (internal(e), Some(started.run_id));
        }
        let reused = prepared.state.ended_tasks;
        let r = reply(
            StatusCode::CREATED,
            json!({"run_id": started.run_id, "workflow": started.workflow, "rerun_of": {"run_id": id, "from": from}, "reused_tasks": reused}),
        );
        (r, Some(started.run_id))
    }
}

/// Where a run's workflow comes from.
#[derive(Debug, Clone)]
pub enum Wanted {
    /// The tenant's registered definition of this name.
    Registered(String),
    /// This text (named `name` in the run).
    Source { name: String, text: String },
}

/// Why a run was not started.
#[derive(Debug)]
pub enum StartRefused {
    NotRegistered(String),
    Store(llmo_runtime::store::Error),
    Start(StartError),
}
