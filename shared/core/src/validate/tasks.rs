//! Pass 4a: each task's semantics: `for_each`, timing, per-type rules and policies.

use super::*;

impl Run<'_> {
    /// Checks tasks `range`; `self.pre` holds their analyses from index `pre_base` on.
    pub(super) fn tasks_semantics(
        &mut self,
        range: std::ops::Range<usize>,
        pre_base: usize,
        ctx: &RefCtx<'_>,
        inputs: Option<&indexmap::IndexMap<String, InputSpec>>,
        spec: Option<&Value>,
        defaults: Option<&Defaults>,
    ) -> Vec<Reads> {
        range
            .map(|i| match &ctx.views[i].task {
                Some(task) => self.task_semantics(i, i - pre_base, task, ctx, inputs, spec, defaults),
                None => Reads::default(),
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn task_semantics(
        &mut self,
        i: usize,
        pre_index: usize,
        task: &Task,
        ctx: &RefCtx<'_>,
        inputs: Option<&indexmap::IndexMap<String, InputSpec>>,
        spec: Option<&Value>,
        defaults: Option<&Defaults>,
    ) -> Reads {
        let base = format!("/spec/tasks/{i}");
        let mut reads = Reads::default();
        let body = Site::Task { idx: i, body: true, secrets: false };
        let head = Site::Task { idx: i, body: false, secrets: false };
        let pre = self.pre.get_mut(pre_index).map(std::mem::take);
        let (pre_when, pre_for_each, pre_with) = match pre {
            Some(p) => (p.when, p.for_each, Some(p.with)),
            None => (None, None, None),
        };
        if let Some(w) = &task.when {
            self.expression_analysed(w, pre_when, &format!("{base}/when"), head, ctx, &mut reads);
        }
        if let Some(fe) = &task.for_each {
            let refs = self.expression_analysed(fe, pre_for_each, &format!("{base}/for_each"), head, ctx, &mut reads);
            for r in refs {
                if r.len() >= 2
                    && r[0] == "inputs"
                    && let Some(decl) = inputs.and_then(|m| m.get(&r[1]))
                    && r.len() == 2
                    && decl.ty != InputType::Array
                    && decl.ty != InputType::Object
                {
                    self.error(
                        FOR_EACH,
                        &format!("{base}/for_each"),
                        format!("`for_each` needs a list, but input `{}` is {}", r[1], a(decl.ty)),
                    )
                    .help = Some(format!("declare `{}` with `type: array`", r[1]));
                }
            }
            if let (Some(mc), Some(mp)) = (
                task.max_concurrency,
                spec.and_then(|s| s.pointer("/concurrency/max_parallel")).and_then(Value::as_u64),
            ) && u64::from(mc) > mp
            {
                self.warning(
                    FOR_EACH,
                    &format!("{base}/max_concurrency"),
                    format!("max_concurrency {mc} exceeds the run's max_parallel {mp}; at most {mp} items run at once"),
                );
            }
        } else if task.max_concurrency.is_some() {
            self.error(
                FOR_EACH,
                &format!("{base}/max_concurrency"),
                "`max_concurrency` only applies to a task with `for_each`",
            )
            .help = Some("remove it, or add `for_each: <list expression>`".into());
        }
        if let Some(t) = &task.tolerate_failures {
            let at = format!("{base}/tolerate_failures");
            if task.for_each.is_none() {
                self.error(FOR_EACH, &at, "`tolerate_failures` only applies to a task with `for_each`").help =
                    Some("remove it, or add `for_each: <list expression>`".into());
            } else if t.count.is_none() && t.percent.is_none() {
                self.error(FOR_EACH, &at, "`tolerate_failures` needs `count`, `percent` or both").help =
                    Some("e.g. `tolerate_failures: { percent: 10 }`".into());
            } else if t.percent.is_some_and(|p| !(0.0..=100.0).contains(&p)) {
                self.error(FOR_EACH, &format!("{at}/percent"), "`percent` is from 0 to 100");
            }
        }
        if let Some(c) = &task.concurrency {
            self.template(&c.key, &format!("{base}/concurrency/key"), body, ctx, &mut reads);
        }
        let v = self.v;
        let ty = v.registry.get(&task.ty);
        let with = self.json["spec"]["tasks"][i].get("with");
        match (with, pre_with) {
            (Some(_), Some(found)) => {
                for (rel, kind, secrets, analysis) in found {
                    let p = format!("{base}/with{rel}");
                    let site = with_secrets(body, secrets);
                    match kind {
                        Kind::Template => self.template_analysed(analysis, &p, site, ctx, &mut reads),
                        Kind::Expression => {
                            let src = self.json.pointer(&p).and_then(Value::as_str).unwrap_or_default();
                            self.expression_analysed(src, Some(analysis), &p, site, ctx, &mut reads)
                        }
                    };
                }
            }
            (Some(with), None) => {
                self.walk_with(with, &mut format!("{base}/with"), base.len() + 5, ty, body, ctx, &mut reads);
            }
            (None, _) => {}
        }
        if let Some(ty) = ty {
            self.type_rules(&base, ty, with);
        }
        if task.ty == crate::agent::AGENT
            && let Some(a) = typed::<crate::agent::AgentWith>(with)
        {
            // Each tool runs a task of a known type; under a budget, one that spends nothing: a
            // call holds none of it (fail closed).
            let budget = self.json.pointer("/spec/budget").is_some();
            for (k, tool) in a.tools.iter().enumerate() {
                if budget && !crate::engine::budget::spends_nothing(&tool.run.ty) {
                    self.error(
                        TASK_CONFIG,
                        &format!("{base}/with/tools/{k}/run/type"),
                        format!(
                            "tool `{}` runs a `{}` task, which may spend, in a workflow with a `budget`: an agent's calls hold none of the budget yet, so under one a tool must spend nothing (`http`, `transform`, `policy`)",
                            tool.name, tool.run.ty
                        ),
                    );
                }
                if v.registry.get(&tool.run.ty).is_none() {
                    let hint = self.suggest(&tool.run.ty, v.registry.names());
                    self.error(
                        UNKNOWN_TYPE,
                        &format!("{base}/with/tools/{k}/run/type"),
                        format!("tool `{}` runs unknown task type `{}`", tool.name, tool.run.ty),
                    )
                    .help = hint;
                }
            }
        }
        // Timing.
        if let Some(t) = task.timeout
            && t.0.is_zero()
        {
            self.error(TIMING, &format!("{base}/timeout"), "timeout must be greater than zero");
        }
        let retry = crate::model::EffectiveRetry::default()
            .overlay(defaults.and_then(|d| d.retry.as_ref()))
            .overlay(task.retry.as_ref());
        if retry.initial > retry.max && task.retry.as_ref().and_then(|r| r.backoff.as_ref()).is_some() {
            self.error(TIMING, &format!("{base}/retry/backoff"), "backoff `initial` is longer than `max`");
        }
        reads
    }

    /// Rules of the built-in task types that a schema cannot say.
    pub(super) fn type_rules(&mut self, base: &str, ty: &TaskType, with: Option<&Value>) {
        let w = format!("{base}/with");
        if matches!(ty.name.as_str(), "http" | "function")
            && let Some(cb) = typed::<crate::callback::CallbackWith>(with.and_then(|w| w.get("callback")))
            && let Err((field, m)) = cb.check()
        {
            self.error(TASK_CONFIG, &format!("{w}/callback/{field}"), m);
        }
        match ty.name.as_str() {
            crate::agent::AGENT => {
                let Some(a) = typed::<crate::agent::AgentWith>(with) else { return };
                for (field, m) in a.check() {
                    let at = if field.is_empty() { w.clone() } else { format!("{w}/{field}") };
                    self.error(TASK_CONFIG, &at, m);
                }
            }
            "llm" => {
                // Read straight from JSON: this runs for every llm task, and the schema has
                // already checked the types.
                let Some(with) = with.and_then(Value::as_object) else { return };
                match (with.get("prompt"), with.get("messages")) {
                    (None, None) => {
                        self.error(TASK_CONFIG, &w, "an llm task needs `prompt` or `messages`");
                    }
                    (Some(_), Some(_)) => {
                        self.error(TASK_CONFIG, &format!("{w}/messages"), "set `prompt` or `messages`, not both");
                    }
                    _ => {}
                }
                if let Some(schema) = with.get("output_schema") {
                    if let Err(e) = jsonschema::meta::validate(schema) {
                        self.error(
                            TASK_CONFIG,
                            &format!("{w}/output_schema"),
                            format!("`output_schema` is not a valid JSON Schema: {}", one_line(e)),
                        );
                    }
                    if with.get("response_format").and_then(Value::as_str) == Some("text") {
                        self.error(
                            TASK_CONFIG,
                            &format!("{w}/response_format"),
                            "`output_schema` needs `response_format: json`",
                        );
                    }
                }
                let fallbacks = with.get("fallback_models").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
                for (k, m) in fallbacks.iter().enumerate() {
                    let Some(m) = m.as_str() else { continue };
                    if m.trim().is_empty() || m.split('/').count() > 2 || m.starts_with('/') || m.ends_with('/') {
                        self.error(
                            TASK_CONFIG,
                            &format!("{w}/fallback_models/{k}"),
                            format!("`{m}` is not `model` or `provider/model`"),
                        );
                    }
                }
            }
            "wait" => {
                let Some(t) = typed::<WaitWith>(with) else { return };
                let forms = [t.sleep.is_some(), t.approval.is_some(), t.event.is_some()];
                if forms.iter().filter(|&&f| f).count() != 1 {
                    self.error(TASK_CONFIG, &w, "a wait task needs exactly one of `sleep`, `approval` and `event`");
                }
                if let Some(sleep) = &t.sleep
                    && sleep.for_.is_some() == sleep.until.is_some()
                {
                    self.error(TASK_CONFIG, &format!("{w}/sleep"), "`sleep` needs exactly one of `for` and `until`");
                }
                if t.on_timeout.is_some() && t.timeout.is_none() {
                    self.error(TASK_CONFIG, &format!("{w}/on_timeout"), "`on_timeout` needs a `timeout`");
                }
                if let Some(a) = &t.approval {
                    for (name, f) in &a.fields {
                        let p = format!("{w}/approval/fields/{name}");
                        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                            self.error(TASK_CONFIG, &p, format!("field name `{name}` is not letters, digits and `_`"));
                        }
                        for (k, v) in f.enum_.iter().flatten().enumerate() {
                            if !f.ty.admits(v) {
                                self.error(
                                    TASK_CONFIG,
                                    &format!("{p}/enum/{k}"),
                                    format!("{v} is not a {}", f.ty.as_str()),
                                );
                            }
                        }
                    }
                    let roles = a.approvers.iter().flat_map(|x| &x.roles);
                    for (k, r) in roles.enumerate() {
                        if !matches!(r.as_str(), "viewer" | "developer" | "admin") {
                            self.error(
                                TASK_CONFIG,
                                &format!("{w}/approval/approvers/roles/{k}"),
                                format!("`{r}` is not a role (viewer, developer, admin)"),
                            );
                        }
                    }
                }
                if let Some(e) = &t.event
                    && (e.name.is_empty() || e.name.len() > 128 || e.name.contains(['#', '/', ' ']))
                {
                    self.error(
                        TASK_CONFIG,
                        &format!("{w}/event/name"),
                        "an event name is 1 to 128 characters, without `#`, `/` or spaces",
                    );
                }
            }
            "function" => {
                // A name without templates is checked now; a templated one when it is rendered.
                let Some(f) = with.and_then(|w| w.get("function")).and_then(Value::as_str) else { return };
                if !f.contains("{{")
                    && let Err(e) = crate::function::FunctionRef::parse(f)
                {
                    self.error(TASK_CONFIG, &format!("{w}/function"), e);
                }
            }
            "workflow" => {
                let Some(f) = with.and_then(|w| w.get("workflow")).and_then(Value::as_str) else { return };
                if !f.contains("{{")
                    && let Err(e) = crate::child::WorkflowRef::parse(f)
                {
                    self.error(TASK_CONFIG, &format!("{w}/workflow"), e);
                }
            }
            "transform" => {
                let Some(t) = typed::<TransformWith>(with) else { return };
                if t.output.is_some() == t.expression.is_some() {
                    self.error(TASK_CONFIG, &w, "a transform task needs exactly one of `output` and `expression`");
                }
            }
            "evaluate" => {
                let Some(ev) = typed::<EvaluateWith>(with) else { return };
                for (k, c) in ev.checks.iter().enumerate() {
                    let p = format!("{w}/checks/{k}");
                    match c {
                        Check::Regex { pattern } => {
                            if let Err(e) = regex::Regex::new(pattern) {
                                self.error(
                                    TASK_CONFIG,
                                    &format!("{p}/pattern"),
                                    format!("invalid regular expression: {}", one_line(e)),
                                );
                            }
                        }
                        Check::JsonSchema { schema } => {
                            if let Err(e) = jsonschema::meta::validate(schema) {
                                self.error(
                                    TASK_CONFIG,
                                    &format!("{p}/schema"),
                                    format!("not a valid JSON Schema: {e}"),
                                );
                            }
                        }
                        Check::Range { min, max } => {
                            if min.is_none() && max.is_none() {
                                self.error(TASK_CONFIG, &p, "a range check needs `min`, `max` or both");
                            }
                            if let (Some(a), Some(b)) = (min, max)
                                && a > b
                            {
                                self.error(
                                    TASK_CONFIG,
                                    &format!("{p}/min"),
                                    format!("min {a} is greater than max {b}"),
                                );
                            }
                        }
                        _ => {}
                    }
                }
            }
            "policy" => {
                let Some(pw) = typed::<PolicyWith>(with) else { return };
                for (k, pat) in pw.deny_patterns.iter().enumerate() {
                    if let Err(e) = regex::Regex::new(pat) {
                        self.error(
                            POLICY,
                            &format!("{w}/deny_patterns/{k}"),
                            format!("invalid regular expression: {}", one_line(e)),
                        );
                    }
                }
            }
            _ => {}
        }
    }

    /// Model allow/deny lists of policy tasks, checked against every llm task now rather
    /// than at run time.
    pub(super) fn policies(&mut self, views: &[TaskView]) {
        if !views.iter().any(|v| v.task.as_ref().is_some_and(|t| t.ty == "policy")) {
            return;
        }
        let mut models: Vec<(usize, String, String)> = Vec::new();
        for (i, v) in views.iter().enumerate() {
            let Some(t) = &v.task else { continue };
            if t.ty == "llm" {
                for (rel, model) in llm_models(&t.with) {
                    models.push((i, format!("/spec/tasks/{i}/with{rel}"), model));
                }
            }
            // The judges of `evaluate` tasks call models too.
            if t.ty == "evaluate" {
                let checks = t.with.get("checks").and_then(Value::as_array).into_iter().flatten().enumerate();
                for (k, c) in checks.filter(|(_, c)| c.get("kind").and_then(Value::as_str) == Some("llm_judge")) {
                    let provider = c.get("provider").and_then(Value::as_str).unwrap_or("");
                    if let Some(m) = c.get("model").and_then(Value::as_str) {
                        let full = if m.contains('/') || provider.is_empty() {
                            m.to_string()
                        } else {
                            format!("{provider}/{m}")
                        };
                        models.push((i, format!("/spec/tasks/{i}/with/checks/{k}/model"), full));
                    }
                }
            }
        }
        // A templated model is known only when rendered: the executor checks every call
        // against the policies then (`engine::builtin::model_allowed`).
        models.retain(|(_, _, m)| !m.contains("{{") && !m.contains("{%"));
        for (pi, v) in views.iter().enumerate() {
            let Some(t) = &v.task else { continue };
            if t.ty != "policy" {
                continue;
            }
            let Some(pw) = typed::<PolicyWith>(self.json["spec"]["tasks"][pi].get("with")) else { continue };
            let policy_id = v.id.clone().unwrap_or_default();
            for (ti, ptr, model) in &models {
                let bare = model.rsplit('/').next().unwrap_or(model);
                let matches = |g: &String| glob_match(g, model) || glob_match(g, bare);
                let task_id = views[*ti].id.clone().unwrap_or_default();
                if let Some(g) = pw.deny_models.iter().find(|g| matches(g)) {
                    self.error(
                        POLICY,
                        ptr,
                        format!("model `{model}` of task `{task_id}` is denied by policy `{policy_id}` (`{g}`)"),
                    );
                } else if !pw.allow_models.is_empty() && !pw.allow_models.iter().any(matches) {
                    self.error(
                        POLICY,
                        ptr,
                        format!("model `{model}` of task `{task_id}` is not in the allow list of policy `{policy_id}`"),
                    )
                    .help = Some(format!("allowed: {}", pw.allow_models.join(", ")));
                }
            }
        }
    }

    // ---- spec-level parts ------------------------------------------------------------------
}
