//! Pass 3: task ids, dependencies and the DAG (cycles, fallbacks).

use std::collections::HashSet;

use super::*;

impl Run<'_> {
    pub(super) fn task_views(&mut self, spec: Option<&Value>, bad: &BTreeSet<String>) -> Vec<TaskView> {
        let Some(raw) = spec.and_then(|s| s.get("tasks")).and_then(Value::as_array) else {
            return Vec::new();
        };
        raw.iter()
            .enumerate()
            .map(|(i, t)| {
                // A task with a bad field is still checked for everything else: drop the
                // fields the schema rejected (they are reported already) and read the rest.
                let task: Option<Task> = typed(Some(t)).or_else(|| {
                    let prefix = format!("/spec/tasks/{i}/");
                    let mut t = t.clone();
                    let obj = t.as_object_mut()?;
                    for p in bad.range(prefix.clone()..).take_while(|p| p.starts_with(&prefix)) {
                        let p = &p[prefix.len()..];
                        let key = p.split('/').next().unwrap_or("");
                        if !matches!(key, "id" | "type" | "with") {
                            obj.remove(key);
                        }
                    }
                    if bad.contains(&format!("/spec/tasks/{i}")) {
                        obj.retain(|k, _| {
                            matches!(
                                k.as_str(),
                                "id" | "type"
                                    | "description"
                                    | "depends_on"
                                    | "trigger"
                                    | "when"
                                    | "for_each"
                                    | "max_concurrency"
                                    | "with"
                                    | "retry"
                                    | "timeout"
                                    | "on_failure"
                            )
                        });
                    }
                    typed(Some(&t))
                });
                match task {
                    Some(task) => TaskView::of(task),
                    None => TaskView {
                        task: None,
                        id: t.get("id").and_then(Value::as_str).map(str::to_string),
                        depends_on: t
                            .get("depends_on")
                            .and_then(Value::as_array)
                            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
                            .unwrap_or_default(),
                        fallback: t.pointer("/on_failure/fallback").and_then(Value::as_str).map(str::to_string),
                    },
                }
            })
            .collect()
    }

    /// Ids, types, dependencies, fallbacks and cycles; returns the DAG when it is acyclic.
    pub(super) fn graph(&mut self, views: &[TaskView]) -> Option<Dag> {
        let mut first: HashMap<&str, usize> = HashMap::new();
        for (i, v) in views.iter().enumerate() {
            let Some(id) = v.id.as_deref() else { continue };
            if let Some(&j) = first.get(id) {
                let (path, span) = self.loc(&format!("/spec/tasks/{i}/id"));
                let (_, first_span) = self.loc(&format!("/spec/tasks/{j}/id"));
                let mut d = Diagnostic::error(DUPLICATE_ID, format!("duplicate task id `{id}`"))
                    .at(path, span)
                    .label("used again here")
                    .help("task ids must be unique within a workflow");
                if let Some(s) = first_span {
                    d = d.related(s, "first used here");
                }
                self.push(d);
            } else {
                first.insert(id, i);
            }
        }
        let ids: Vec<&str> = first.keys().copied().collect();
        let types: Vec<&str> = self.v.registry.names().collect();
        for (i, v) in views.iter().enumerate() {
            if let Some(t) = &v.task
                && self.v.registry.get(&t.ty).is_none()
            {
                let hint = self
                    .suggest(&t.ty, types.iter().copied())
                    .unwrap_or_else(|| format!("known types: {}", types.join(", ")));
                self.error(UNKNOWN_TYPE, &format!("/spec/tasks/{i}/type"), format!("unknown task type `{}`", t.ty))
                    .help = Some(hint);
            }
            // Repeats: a scan of the earlier entries for the usual handful, a set for a wide join.
            let mut seen = (v.depends_on.len() > 16).then(|| HashSet::with_capacity(v.depends_on.len()));
            for (k, d) in v.depends_on.iter().enumerate() {
                // The pointer is built only for a finding: most dependencies have none.
                let p = || format!("/spec/tasks/{i}/depends_on/{k}");
                if !first.contains_key(d.as_str()) {
                    let hint = self.suggest(d, ids.iter().copied());
                    self.error(UNKNOWN_DEPENDENCY, &p(), format!("unknown task `{d}` in depends_on")).help = hint;
                } else if !match seen.as_mut() {
                    Some(set) => set.insert(d.as_str()),
                    None => !v.depends_on[..k].contains(d),
                } {
                    self.warning(DUPLICATE_DEPENDENCY, &p(), format!("`{d}` is listed twice in depends_on"));
                }
            }
        }
        // Fallbacks.
        let mut fallback_of: HashMap<&str, usize> = HashMap::new();
        for (i, v) in views.iter().enumerate() {
            let Some(f) = v.fallback.as_deref() else { continue };
            let p = format!("/spec/tasks/{i}/on_failure/fallback");
            let me = v.id.as_deref().unwrap_or("?");
            let Some(&fi) = first.get(f) else {
                let hint = self.suggest(f, ids.iter().copied());
                self.error(UNKNOWN_DEPENDENCY, &p, format!("unknown fallback task `{f}`")).help = hint;
                continue;
            };
            if f == me {
                self.error(FALLBACK, &p, "a task cannot be its own fallback");
                continue;
            }
            if let Some(&other) = fallback_of.get(f) {
                let other_id = views[other].id.as_deref().unwrap_or("?");
                self.error(
                    FALLBACK,
                    &p,
                    format!("`{f}` is already the fallback of `{other_id}`; a fallback serves one task"),
                );
                continue;
            }
            fallback_of.insert(f, i);
            if views[fi].fallback.is_some() {
                self.error(FALLBACK, &p, format!("`{f}` has a fallback of its own; fallbacks do not chain")).help =
                    Some("give the fallback task `on_failure: continue` or `fail`".into());
            }
            for (j, other) in views.iter().enumerate() {
                if other.depends_on.iter().any(|d| d == f) {
                    let k = other.depends_on.iter().position(|d| d == f).unwrap_or(0);
                    let other_id = other.id.as_deref().unwrap_or("?");
                    self.error(
                        FALLBACK,
                        &format!("/spec/tasks/{j}/depends_on/{k}"),
                        format!("`{other_id}` depends on `{f}`, which is the fallback of `{me}`"),
                    )
                    .help =
                        Some(format!("depend on `{me}` instead: its result is the fallback's when the fallback ran"));
                }
            }
        }
        let nodes: Vec<NodeSpec<'_>> = views
            .iter()
            .enumerate()
            .map(|(i, v)| NodeSpec {
                // Broken or duplicate ids get a unique placeholder so indexes stay aligned.
                id: match v.id.as_deref() {
                    Some(id) if first.get(id) == Some(&i) => id,
                    _ => "",
                },
                depends_on: v.depends_on.iter().map(String::as_str).collect(),
                // A self-fallback is reported above; it is not a cycle too.
                fallback: v.fallback.as_deref().filter(|f| Some(*f) != v.id.as_deref()),
            })
            .collect();
        match Dag::build(&nodes) {
            Ok(dag) => Some(dag),
            Err(cycles) => {
                for c in cycles {
                    let names: Vec<&str> = c.iter().map(|&i| nodes[i].id).collect();
                    let mut text = names.join(" -> ");
                    text.push_str(" -> ");
                    text.push_str(names[0]);
                    let a = c[0];
                    let next = names.get(1).copied().unwrap_or(names[0]);
                    let k = views[a].depends_on.iter().position(|d| d == next);
                    let p = match k {
                        Some(k) => format!("/spec/tasks/{a}/depends_on/{k}"),
                        None => format!("/spec/tasks/{a}/on_failure"),
                    };
                    self.error(CYCLE, &p, format!("dependency cycle: {text}")).help =
                        Some("each task depends on the next; remove one of these dependencies".into());
                }
                None
            }
        }
    }

    // ---- per-task semantics ------------------------------------------------------------
}
