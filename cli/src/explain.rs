//! `llmo explain`: a workflow's plan in words (or JSON).

use std::fmt::Write;

use llmo_core::model::{EffectiveRetry, OnFailure, TriggerRule};
use llmo_core::validate::Checked;
use serde::Serialize;

#[derive(Serialize)]
pub struct Plan {
    pub workflow: String,
    pub version: Option<String>,
    pub tasks: usize,
    pub levels: Vec<Vec<String>>,
    /// Most tasks that can run at once by the graph alone (each `for_each` task counted once),
    /// capped by `concurrency.max_parallel`.
    pub max_parallelism: usize,
    pub max_parallel: Option<u32>,
    pub critical_path: Vec<String>,
    pub schedule: Option<String>,
    pub details: Vec<TaskPlan>,
}

#[derive(Serialize)]
pub struct TaskPlan {
    pub id: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub level: u32,
    pub depends_on: Vec<String>,
    pub trigger: &'static str,
    pub when: Option<String>,
    pub for_each: Option<String>,
    pub max_concurrency: Option<u32>,
    /// Tasks whose results this task may read: its transitive dependencies.
    pub can_read: Vec<String>,
    /// Tasks it does read.
    pub reads_tasks: Vec<String>,
    pub reads_inputs: Vec<String>,
    pub timeout: Option<String>,
    pub max_attempts: u32,
    pub on_failure: String,
    /// Set on a fallback task: the task it stands in for.
    pub fallback_for: Option<String>,
}

impl Plan {
    pub fn of(c: &Checked) -> Plan {
        let wf = &c.workflow;
        let dag = &c.dag;
        let levels: Vec<Vec<String>> =
            dag.level_groups().into_iter().map(|g| g.into_iter().map(|i| dag.id(i).to_string()).collect()).collect();
        // Fallback tasks run only instead of a failed task: they add no parallelism.
        let fallbacks: Vec<&str> =
            wf.spec.tasks.iter().filter_map(|t| t.on_failure.as_ref().and_then(|f| f.fallback())).collect();
        let widest =
            levels.iter().map(|l| l.iter().filter(|id| !fallbacks.contains(&id.as_str())).count()).max().unwrap_or(0);
        let max_parallel = wf.spec.concurrency.as_ref().and_then(|c| c.max_parallel);
        let defaults = wf.spec.defaults.clone().unwrap_or_default();
        let base_retry = EffectiveRetry::default().overlay(defaults.retry.as_ref());
        let schedule = wf.spec.schedule.as_ref().and_then(|s| {
            s.cron
                .as_deref()
                .and_then(|c| llmo_core::schedule::check_cron(c).ok())
                .or_else(|| s.rate.and_then(|r| llmo_core::schedule::check_rate(r.0).ok()))
        });
        let details = wf
            .spec
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut can_read: Vec<String> = dag.ancestors(i).map(|a| dag.id(a).to_string()).collect();
                can_read.sort();
                TaskPlan {
                    id: t.id.clone(),
                    ty: t.ty.clone(),
                    level: dag.level(i),
                    depends_on: t.depends_on.clone(),
                    trigger: t.trigger.unwrap_or(TriggerRule::AllSucceeded).as_str(),
                    when: t.when.clone(),
                    for_each: t.for_each.clone(),
                    max_concurrency: t.max_concurrency,
                    can_read,
                    reads_tasks: c.reads[i].tasks.iter().cloned().collect(),
                    reads_inputs: c.reads[i].inputs.iter().cloned().collect(),
                    timeout: t.timeout.or(defaults.timeout).map(|d| d.to_string()),
                    max_attempts: base_retry.overlay(t.retry.as_ref()).max_attempts,
                    fallback_for: wf
                        .spec
                        .tasks
                        .iter()
                        .find(|o| o.on_failure.as_ref().and_then(|f| f.fallback()) == Some(t.id.as_str()))
                        .map(|o| o.id.clone()),
                    on_failure: match &t.on_failure {
                        None => "fail".into(),
                        Some(OnFailure::Action(a)) => format!("{a:?}").to_lowercase(),
                        Some(OnFailure::Fallback(f)) => format!("fallback to {}", f.fallback),
                    },
                }
            })
            .collect();
        Plan {
            workflow: wf.metadata.name.clone(),
            version: wf.metadata.version.clone(),
            tasks: wf.spec.tasks.len(),
            max_parallelism: max_parallel.map_or(widest, |m| widest.min(m as usize)),
            max_parallel,
            critical_path: dag.critical_path().into_iter().map(|i| dag.id(i).to_string()).collect(),
            levels,
            schedule,
            details,
        }
    }

    pub fn text(&self) -> String {
        let mut o = String::new();
        let version = self.version.as_deref().map(|v| format!(" {v}")).unwrap_or_default();
        let _ =
            writeln!(o, "workflow {}{version}: {} tasks in {} levels", self.workflow, self.tasks, self.levels.len());
        let cap = self.max_parallel.map(|m| format!(" (max_parallel {m})")).unwrap_or_default();
        let _ = writeln!(o, "max parallelism: {}{cap}", self.max_parallelism);
        let _ = writeln!(o, "critical path ({} tasks): {}", self.critical_path.len(), self.critical_path.join(" -> "));
        if let Some(s) = &self.schedule {
            let _ = writeln!(o, "schedule: {s}");
        }
        let _ = writeln!(o, "\nlevels:");
        for (i, l) in self.levels.iter().enumerate() {
            let shown: Vec<&str> = l.iter().take(12).map(String::as_str).collect();
            let more = if l.len() > 12 { format!(" … (+{})", l.len() - 12) } else { String::new() };
            let _ = writeln!(o, "  {i:>3}: {}{more}", shown.join(", "));
        }
        let _ = writeln!(o, "\ntasks:");
        for t in &self.details {
            let _ = writeln!(o, "  {} ({}, level {})", t.id, t.ty, t.level);
            if !t.depends_on.is_empty() {
                let _ = writeln!(o, "      depends on: {} [trigger: {}]", t.depends_on.join(", "), t.trigger);
            }
            if let Some(f) = &t.fallback_for {
                let _ = writeln!(o, "      runs only if {f} fails; its result then stands in for {f}'s");
            }
            if let Some(w) = &t.when {
                let _ = writeln!(o, "      when: {w}");
            }
            if let Some(fe) = &t.for_each {
                let mc = t.max_concurrency.map(|m| format!(" (at most {m} at once)")).unwrap_or_default();
                let _ = writeln!(o, "      for each item of: {fe}{mc}");
            }
            let can = if t.can_read.is_empty() { "(no task results)".to_string() } else { t.can_read.join(", ") };
            let _ = writeln!(o, "      can read: {can}");
            if !t.reads_tasks.is_empty() || !t.reads_inputs.is_empty() {
                let mut r: Vec<String> = t.reads_tasks.iter().map(|x| format!("tasks.{x}")).collect();
                r.extend(t.reads_inputs.iter().map(|x| format!("inputs.{x}")));
                let _ = writeln!(o, "      reads: {}", r.join(", "));
            }
            let timeout = t.timeout.as_deref().unwrap_or("none");
            let _ = writeln!(o, "      attempts: {}, timeout: {timeout}, on failure: {}", t.max_attempts, t.on_failure);
        }
        o
    }
}
