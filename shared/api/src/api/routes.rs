//! The API's routes: which request is which, and the role each needs.

use super::*;

/// A route, with the role it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    RegisterWorkflow,
    ListWorkflows,
    StartRun,
    ListRuns,
    GetRun(&'a str),
    History(&'a str),
    /// `GET /runs/{id}/events`: the run's events (server-sent events).
    RunEvents(&'a str),
    Cancel(&'a str),
    Redrive(&'a str),
    Rerun(&'a str),
    /// `POST /runs/{id}/tasks/{task}/complete`.
    Complete(&'a str, &'a str),
    Events,
    /// `POST /bus/events`: an event for the registered workflows' event triggers.
    BusEvent,
    Waiting,
    /// `POST /answer`: an approval answered through its single-use link (no bearer).
    Answer,
    /// `POST /callbacks/{token}`: a callback's task token answered (the token is the
    /// credential; a bearer, when sent, must be of the token's tenant).
    Callback(&'a str),
    /// `POST /callbacks/{token}/heartbeat`.
    Heartbeat(&'a str),
    Audit,
    Sweep,
    OpenApi,
    Metrics,
    Costs,
}

impl<'a> Route<'a> {
    pub fn parse(method: &Method, parts: &[&'a str]) -> Option<Self> {
        Some(match (method, parts) {
            (&Method::POST, ["workflows"]) => Route::RegisterWorkflow,
            (&Method::GET, ["workflows"]) => Route::ListWorkflows,
            (&Method::POST, ["runs"]) => Route::StartRun,
            (&Method::GET, ["runs"]) => Route::ListRuns,
            (&Method::GET, ["runs", id]) => Route::GetRun(id),
            (&Method::GET, ["runs", id, "history"]) => Route::History(id),
            (&Method::GET, ["runs", id, "events"]) => Route::RunEvents(id),
            (&Method::POST, ["runs", id, "cancel"]) => Route::Cancel(id),
            (&Method::POST, ["runs", id, "redrive"]) => Route::Redrive(id),
            (&Method::POST, ["runs", id, "rerun"]) => Route::Rerun(id),
            (&Method::POST, ["runs", id, "tasks", task, "complete"]) => Route::Complete(id, task),
            (&Method::POST, ["events"]) => Route::Events,
            (&Method::POST, ["bus", "events"]) => Route::BusEvent,
            (&Method::GET, ["waiting"]) => Route::Waiting,
            (&Method::POST, ["answer"]) => Route::Answer,
            (&Method::POST, ["callbacks", token]) => Route::Callback(token),
            (&Method::POST, ["callbacks", token, "heartbeat"]) => Route::Heartbeat(token),
            (&Method::GET, ["audit"]) => Route::Audit,
            (&Method::POST, ["sweep"]) => Route::Sweep,
            (&Method::GET, ["openapi.json"]) => Route::OpenApi,
            (&Method::GET, ["metrics"]) => Route::Metrics,
            (&Method::GET, ["costs"]) => Route::Costs,
            _ => return None,
        })
    }

    pub fn needs(&self) -> Role {
        match self {
            Route::ListWorkflows
            | Route::ListRuns
            | Route::GetRun(_)
            | Route::History(_)
            | Route::RunEvents(_)
            | Route::OpenApi
            | Route::Costs
            | Route::Waiting => Role::Viewer,
            // Who may answer is the wait's to say (`approvers`; developers when it names none);
            // `POST /answer` is not authenticated by role at all (the link's token is the
            // credential).
            Route::Complete(..) | Route::Answer | Route::Callback(_) | Route::Heartbeat(_) => Role::Viewer,
            Route::RegisterWorkflow
            | Route::StartRun
            | Route::Cancel(_)
            | Route::Redrive(_)
            | Route::Rerun(_)
            | Route::Events
            | Route::BusEvent => Role::Developer,
            Route::Audit | Route::Sweep | Route::Metrics => Role::Admin,
        }
    }

    /// The route as the audit trail names it.
    pub fn action(&self) -> &'static str {
        match self {
            Route::RegisterWorkflow => "POST /workflows",
            Route::ListWorkflows => "GET /workflows",
            Route::StartRun => "POST /runs",
            Route::ListRuns => "GET /runs",
            Route::GetRun(_) => "GET /runs/{id}",
            Route::History(_) => "GET /runs/{id}/history",
            Route::RunEvents(_) => "GET /runs/{id}/events",
            Route::Cancel(_) => "POST /runs/{id}/cancel",
            Route::Redrive(_) => "POST /runs/{id}/redrive",
            Route::Rerun(_) => "POST /runs/{id}/rerun",
            Route::Complete(..) => "POST /runs/{id}/tasks/{task}/complete",
            Route::Events => "POST /events",
            Route::BusEvent => "POST /bus/events",
            Route::Waiting => "GET /waiting",
            Route::Answer => "POST /answer",
            Route::Callback(_) => "POST /callbacks/{token}",
            Route::Heartbeat(_) => "POST /callbacks/{token}/heartbeat",
            Route::Audit => "GET /audit",
            Route::Sweep => "POST /sweep",
            Route::OpenApi => "GET /openapi.json",
            Route::Metrics => "GET /metrics",
            Route::Costs => "GET /costs",
        }
    }

    pub(super) fn run(&self) -> Option<&'a str> {
        match self {
            Route::GetRun(id)
            | Route::History(id)
            | Route::RunEvents(id)
            | Route::Cancel(id)
            | Route::Redrive(id)
            | Route::Rerun(id)
            | Route::Complete(id, _) => Some(id),
            _ => None,
        }
    }
}
