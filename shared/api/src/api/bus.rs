//! `POST /bus/events`: an event put on the bus starts the runs of the tenant's registered
//! workflows whose event triggers (`spec.events`) match it, as EventBridge rules deployed
//! from those triggers would (`llmo_core::triggers::pattern_matches`). Each start goes
//! through the deployed trigger path ([`Api::start_scheduled`]) with the event's id in its
//! idempotency key: the same event put twice starts each run once.

use std::collections::HashMap;
use std::sync::Mutex;

use llmo_core::model::EventTrigger;

use super::*;

/// Most bytes of an event's `detail` (EventBridge's own limit for a whole event is 256 KB).
pub const DETAIL_BYTES: usize = 256 * 1024;
/// Most registered workflows one event is matched against.
pub const WORKFLOWS_PER_EVENT: usize = 1000;

/// The event triggers of registered workflows, by tenant and name, as of their registration
/// time (a workflow is validated again only when it is registered again).
#[derive(Default)]
pub struct Triggers(Mutex<HashMap<(String, String), Known>>);

/// A workflow's registration time and its event triggers then.
type Known = (u64, Vec<EventTrigger>);

impl Api {
    pub(super) async fn bus_event(&self, tenant: &str, body: &Value) -> (Reply, Option<String>) {
        let text = |k: &str| body.get(k).and_then(Value::as_str).filter(|s| !s.is_empty() && s.len() <= 256);
        let (Some(source), Some(detail_type)) = (text("source"), text("detail-type")) else {
            return (
                problem(StatusCode::BAD_REQUEST, "`source` and `detail-type` (1 to 256 characters) are required"),
                None,
            );
        };
        let detail = match body.get("detail") {
            None | Some(Value::Null) => json!({}),
            Some(d @ Value::Object(_)) if d.to_string().len() <= DETAIL_BYTES => d.clone(),
            Some(Value::Object(_)) => {
                return (
                    problem(StatusCode::PAYLOAD_TOO_LARGE, format!("`detail` is over {DETAIL_BYTES} bytes")),
                    None,
                );
            }
            Some(_) => return (problem(StatusCode::BAD_REQUEST, "`detail` is an object"), None),
        };
        let id = match body.get("id") {
            None | Some(Value::Null) => {
                let mut b = [0u8; 16];
                getrandom::fill(&mut b).expect("the operating system's random source");
                b.iter().map(|x| format!("{x:02x}")).collect()
            }
            Some(Value::String(s)) if (1..=128).contains(&s.len()) => s.clone(),
            Some(_) => return (problem(StatusCode::BAD_REQUEST, "`id` is a string of 1 to 128 characters"), None),
        };
        let time = match body.get("time") {
            None | Some(Value::Null) => llmo_runtime::ports::now_ms().to_string(),
            Some(Value::String(t)) if (1..=64).contains(&t.len()) => t.clone(),
            Some(_) => return (problem(StatusCode::BAD_REQUEST, "`time` is a string of 1 to 64 characters"), None),
        };
        let event = json!({
            "id": id,
            "source": source,
            "detail-type": detail_type,
            "time": time,
            "account": "local",
            "region": "local",
            "detail": detail,
        });
        let registered = match self.workflows.list(tenant).await {
            Ok(r) => r,
            Err(e) => return (internal(e), None),
        };
        let mut started = Vec::new();
        let mut failed = Vec::new();
        for r in registered.iter().take(WORKFLOWS_PER_EVENT) {
            let triggers = match self.triggers_of(tenant, &r.name, r.registered_at).await {
                Ok(t) => t,
                Err(e) => return (internal(e), None),
            };
            for t in triggers.iter().filter(|t| llmo_core::triggers::pattern_matches(&t.pattern, &event)) {
                let start = json!({"tenant": tenant, "workflow": r.name, "trigger": t.name, "event": event});
                match self.start_scheduled(&start).await {
                    Ok(v) => started.push(json!({
                        "workflow": r.name, "trigger": t.name, "run_id": v["run_id"], "created": v["created"],
                    })),
                    Err(e) => failed.push(json!({"workflow": r.name, "trigger": t.name, "error": e})),
                }
            }
        }
        (reply(StatusCode::OK, json!({"id": id, "started": started, "failed": failed})), Some(id))
    }

    /// A registered workflow's event triggers (none when it no longer validates).
    async fn triggers_of(
        &self,
        tenant: &str,
        name: &str,
        registered_at: u64,
    ) -> Result<Vec<EventTrigger>, llmo_runtime::store::Error> {
        let key = (tenant.to_string(), name.to_string());
        if let Some((at, t)) = self.triggers.0.lock().expect("triggers lock").get(&key)
            && *at == registered_at
        {
            return Ok(t.clone());
        }
        let triggers = match self.workflows.get(tenant, name).await? {
            Some(src) => {
                self.starter.check(&format!("{name}.yaml"), &src).map(|c| c.workflow.spec.events).unwrap_or_default()
            }
            None => Vec::new(),
        };
        self.triggers.0.lock().expect("triggers lock").insert(key, (registered_at, triggers.clone()));
        Ok(triggers)
    }
}
