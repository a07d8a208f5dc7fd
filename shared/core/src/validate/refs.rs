//! Pass 4b: templates and expressions: syntax and what they read (a task reads only its ancestors; secrets only in http headers), in tasks, outputs and hooks.

use super::*;

impl Run<'_> {
    /// Checks the templates and expressions of a `with` block (or any templated value).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn walk_with(
        &mut self,
        v: &Value,
        ptr: &mut String,
        rel: usize,
        ty: Option<&TaskType>,
        site: Site,
        ctx: &RefCtx<'_>,
        reads: &mut Reads,
    ) {
        let mut found = Vec::new();
        visit_strings(v, ptr, rel, ty, &mut |src, p, kind, secrets| found.push((src, p.to_string(), kind, secrets)));
        for (src, p, kind, secrets) in found {
            let site = with_secrets(site, secrets);
            match kind {
                Kind::Expression => self.expression(src, &p, site, ctx, reads),
                Kind::Template => self.template(src, &p, site, ctx, reads),
            };
        }
    }

    pub(super) fn template(
        &mut self,
        src: &str,
        ptr: &str,
        site: Site,
        ctx: &RefCtx<'_>,
        reads: &mut Reads,
    ) -> Vec<Vec<String>> {
        let analysed = self.v.analyzer.template_refs(src);
        self.template_analysed(analysed, ptr, site, ctx, reads)
    }

    pub(super) fn template_analysed(
        &mut self,
        analysed: Analysis,
        ptr: &str,
        site: Site,
        ctx: &RefCtx<'_>,
        reads: &mut Reads,
    ) -> Vec<Vec<String>> {
        match analysed {
            Ok(refs) => {
                self.references(&refs, ptr, site, ctx, reads);
                refs
            }
            Err(e) => {
                self.syntax(ptr, &e, "template");
                Vec::new()
            }
        }
    }

    pub(super) fn expression(
        &mut self,
        src: &str,
        ptr: &str,
        site: Site,
        ctx: &RefCtx<'_>,
        reads: &mut Reads,
    ) -> Vec<Vec<String>> {
        self.expression_analysed(src, None, ptr, site, ctx, reads)
    }

    pub(super) fn expression_analysed(
        &mut self,
        src: &str,
        pre: Option<Analysis>,
        ptr: &str,
        site: Site,
        ctx: &RefCtx<'_>,
        reads: &mut Reads,
    ) -> Vec<Vec<String>> {
        let trimmed = src.trim();
        if trimmed.starts_with("{{") && trimmed.ends_with("}}") {
            let inner = trimmed[2..trimmed.len() - 2].trim().to_string();
            self.error(EXPRESSION_BRACES, ptr, "this field is an expression, not a template").help =
                Some(format!("write it without braces: `{inner}`"));
            return Vec::new();
        }
        let analysed = pre.unwrap_or_else(|| self.v.analyzer.expression_refs(src));
        match analysed {
            Ok(refs) => {
                self.references(&refs, ptr, site, ctx, reads);
                refs
            }
            Err(e) => {
                self.syntax(ptr, &e, "expression");
                Vec::new()
            }
        }
    }

    pub(super) fn syntax(&mut self, ptr: &str, e: &SyntaxError, what: &str) {
        let at = match e.line {
            Some(l) if l > 1 => format!(" (line {l} of the {what})"),
            _ => String::new(),
        };
        self.error(TEMPLATE_SYNTAX, ptr, format!("{what} syntax error{at}: {}", e.message));
    }

    /// Checks what a template or expression reads against what its site may read.
    pub(super) fn references(
        &mut self,
        refs: &[Vec<String>],
        ptr: &str,
        site: Site,
        ctx: &RefCtx<'_>,
        reads: &mut Reads,
    ) {
        for r in refs {
            let root = r[0].as_str();
            let dotted = Dotted(r);
            match root {
                "inputs" if !matches!(site, Site::Event) => {
                    if let Some(name) = r.get(1) {
                        if let Some(decl) = ctx.inputs
                            && !decl.iter().any(|d| d == name)
                        {
                            let hint = self
                                .suggest(name, decl.iter().map(String::as_str))
                                .unwrap_or_else(|| "declare it under `spec.inputs`".to_string());
                            self.error(
                                UNKNOWN_REFERENCE,
                                ptr,
                                format!("`{dotted}` reads an undeclared input `{name}`"),
                            )
                            .help = Some(hint);
                        } else if ctx.inputs.is_none() {
                            self.error(
                                UNKNOWN_REFERENCE,
                                ptr,
                                format!("`{dotted}` reads input `{name}`, but the workflow declares no inputs"),
                            )
                            .help = Some("declare it under `spec.inputs`".into());
                        }
                        reads.inputs.insert(name.clone());
                    }
                }
                "tasks" if !matches!(site, Site::Event | Site::RunKey) => {
                    let Some(id) = r.get(1) else {
                        reads.all_tasks = true;
                        if let Site::Task { .. } = site {
                            self.error(
                                UNKNOWN_REFERENCE,
                                ptr,
                                "`tasks` is read dynamically; references cannot be checked",
                            )
                            .help = Some("name the task: `tasks.<id>.output`".into());
                        }
                        continue;
                    };
                    let Some(j) = ctx.index_of(id) else {
                        let hint = self.suggest(id, ctx.views.iter().filter_map(|v| v.id.as_deref()));
                        self.error(UNKNOWN_REFERENCE, ptr, format!("`{dotted}` reads unknown task `{id}`")).help = hint;
                        continue;
                    };
                    if let Some(field) = r.get(2)
                        && !TASK_FIELDS.contains(&field.as_str())
                    {
                        let hint = self
                            .suggest(field, TASK_FIELDS.iter().copied())
                            .unwrap_or_else(|| format!("a task result has: {}", TASK_FIELDS.join(", ")));
                        self.error(
                            UNKNOWN_REFERENCE,
                            ptr,
                            format!("`{dotted}`: a task result has no field `{field}`"),
                        )
                        .help = Some(hint);
                    }
                    // A field of the output that the task's type never gives (`output.txt` of an
                    // `llm` task) would be undefined at run time.
                    if r.get(2).is_some_and(|f| f == "output")
                        && let Some(field) = r.get(3)
                        && let Some(t) = ctx.views[j].task.as_ref().filter(|t| t.for_each.is_none())
                        // A fallback's output (of another type) may stand in for it.
                        && t.on_failure.as_ref().and_then(|f| f.fallback()).is_none()
                        && let Some(known) = super::output_fields(&t.ty, &t.with)
                        && !known.contains(&field.as_str())
                    {
                        let hint = self
                            .suggest(field, known.iter().copied())
                            .unwrap_or_else(|| format!("the output of a `{}` task has: {}", t.ty, known.join(", ")));
                        self.error(
                            UNKNOWN_REFERENCE,
                            ptr,
                            format!("`{dotted}`: the output of `{id}` (type `{}`) has no field `{field}`", t.ty),
                        )
                        .help = Some(hint);
                    }
                    if let Site::Task { idx, .. } = site {
                        let me = ctx.views[idx].id.as_deref().unwrap_or("?");
                        if j == idx {
                            self.error(NOT_ANCESTOR, ptr, format!("task `{me}` reads its own result (`{dotted}`)"));
                        } else if let Some(dag) = ctx.dag
                            && !dag.is_ancestor(j, idx)
                        {
                            self.error(
                                NOT_ANCESTOR,
                                ptr,
                                format!("task `{me}` reads `{dotted}` but does not depend on `{id}`"),
                            )
                            .help = Some(format!(
                                "add `{id}` to the depends_on of `{me}` (directly or through another task) so it has run first"
                            ));
                        }
                    }
                    reads.tasks.insert(id.clone());
                }
                "run" if !matches!(site, Site::Event) => {
                    if let Some(field) = r.get(1) {
                        let ended = matches!(site, Site::Hook { .. } | Site::Output);
                        let known =
                            RUN_FIELDS.contains(&field.as_str()) || (ended && RUN_END_FIELDS.contains(&field.as_str()));
                        if !known {
                            let all: Vec<&str> =
                                RUN_FIELDS.iter().chain(if ended { RUN_END_FIELDS } else { &[] }).copied().collect();
                            let hint = if RUN_END_FIELDS.contains(&field.as_str()) {
                                Some(format!(
                                    "`run.{field}` is only known once the run has ended: read it in `outputs` or `on` hooks"
                                ))
                            } else {
                                self.suggest(field, all.iter().copied())
                                    .or_else(|| Some(format!("`run` has: {}", all.join(", "))))
                            };
                            self.error(UNKNOWN_REFERENCE, ptr, format!("`{dotted}`: `run` has no field `{field}`"))
                                .help = hint;
                        }
                        reads.run.insert(field.clone());
                    }
                }
                "item" | "item_index" => match site {
                    Site::Task { idx, body: true, .. }
                        if ctx.views[idx].task.as_ref().is_some_and(|t| t.for_each.is_some()) =>
                    {
                        reads.item = true;
                    }
                    Site::Task { body: false, idx, .. }
                        if ctx.views[idx].task.as_ref().is_some_and(|t| t.for_each.is_some()) =>
                    {
                        self.error(
                            ITEM_OUTSIDE_FOR_EACH,
                            ptr,
                            format!("`{root}` is not defined in `when` or `for_each`"),
                        )
                        .help = Some("`when` and `for_each` are evaluated once, before the fan-out".into());
                    }
                    _ => {
                        self.error(
                            ITEM_OUTSIDE_FOR_EACH,
                            ptr,
                            format!("`{root}` is only defined inside a task with `for_each`"),
                        )
                        .help = Some(
                            "add `for_each: <list expression>` to this task, or read the value another way".into(),
                        );
                    }
                },
                "secrets" => match site {
                    Site::Task { secrets: true, .. } | Site::Hook { secrets: true } => match r.get(1) {
                        Some(name) if ctx.secrets.contains(name) => {
                            reads.secrets.insert(name.clone());
                        }
                        Some(name) => {
                            let suggestion = self.suggest(name, ctx.secrets.iter().map(String::as_str));
                            let d = self.error(
                                SECRET_UNDECLARED,
                                ptr,
                                format!("secret `{name}` is not declared in `spec.secrets`"),
                            );
                            d.help = Some(suggestion.unwrap_or_else(|| {
                                format!("declare it with the hosts it may be sent to: `secrets: {{ {name}: {{ hosts: [api.example.com] }} }}` under `spec`")
                            }));
                        }
                        None => {
                            self.error(SECRET_UNDECLARED, ptr, "secrets must be read by name (`secrets.NAME`)").help =
                                Some("a computed secret name could read any secret; write the name out".into());
                        }
                    },
                    _ => {
                        self.error(SECRET_PLACE, ptr, "secrets may only be read in http `headers`").help =
                            Some("secrets must not reach prompts, bodies or outputs, where they would be stored or sent to a model".into());
                    }
                },
                "event" if matches!(site, Site::Event) => {}
                // A call's arguments, in the task an agent's tool runs.
                "args"
                    if matches!(site, Site::Task { body: true, .. })
                        && (in_tool(ptr, "run/with") || in_tool(ptr, "approval/prompt")) => {}
                // The answer to a call's approval, in the task the tool runs.
                "approval" if matches!(site, Site::Task { body: true, .. }) && in_tool(ptr, "run/with") => {}
                _ => {
                    let roots: &[&str] = match site {
                        Site::Event => &["event"],
                        Site::RunKey => &["inputs", "run"],
                        _ => &["inputs", "tasks", "run", "item", "item_index"],
                    };
                    let hint = self
                        .suggest(root, roots.iter().copied())
                        .unwrap_or_else(|| format!("templates here can read: {}", roots.join(", ")));
                    self.error(UNKNOWN_REFERENCE, ptr, format!("unknown variable `{root}`")).help = Some(hint);
                }
            }
        }
    }

    pub(super) fn outputs(&mut self, spec: Option<&Value>, ctx: &RefCtx<'_>) -> Reads {
        let mut reads = Reads::default();
        let Some(outputs) = spec.and_then(|s| s.get("outputs")).and_then(Value::as_object) else { return reads };
        for (name, v) in outputs {
            let mut p = format!("/spec/outputs/{}", name.replace('~', "~0").replace('/', "~1"));
            let rel = p.len();
            self.walk_with(v, &mut p, rel, None, Site::Output, ctx, &mut reads);
        }
        reads
    }

    /// `spec.concurrency`: `key` and `limit` together, the key a template of what is known
    /// when the run starts.
    pub(super) fn run_key(&mut self, spec: Option<&Value>, ctx: &RefCtx<'_>) {
        let Some(c) = spec.and_then(|s| s.get("concurrency")).and_then(Value::as_object) else { return };
        if let Some(Value::String(key)) = c.get("key") {
            let mut reads = Reads::default();
            self.template(key, "/spec/concurrency/key", Site::RunKey, ctx, &mut reads);
        }
        match (c.get("key"), c.get("limit")) {
            (Some(_), None) => {
                self.error(CONCURRENCY, "/spec/concurrency/key", "a concurrency `key` needs a `limit`").help =
                    Some("add `limit: <how many runs with the same key may run at once>`".into());
            }
            (None, Some(_)) => {
                self.error(CONCURRENCY, "/spec/concurrency/limit", "a concurrency `limit` needs a `key`").help =
                    Some("add `key: \"{{ inputs.<name> }}\"` (runs with the same key share the limit)".into());
            }
            _ => {}
        }
    }

    pub(super) fn hooks(&mut self, spec: Option<&Value>, ctx: &RefCtx<'_>) {
        let Some(hooks) = typed::<Hooks>(spec.and_then(|s| s.get("on"))) else { return };
        let types: Vec<&str> = self.v.registry.names().collect();
        for (kind, list) in [("success", &hooks.success), ("failure", &hooks.failure)] {
            for (i, h) in list.iter().enumerate() {
                let base = format!("/spec/on/{kind}/{i}");
                let v = self.v;
                let ty = v.registry.get(&h.ty);
                if ty.is_none() {
                    let hint = self.suggest(&h.ty, types.iter().copied());
                    self.error(UNKNOWN_TYPE, &format!("{base}/type"), format!("unknown task type `{}`", h.ty)).help =
                        hint;
                }
                let mut reads = Reads::default();
                if let Some(with) = self.json.pointer(&format!("{base}/with")) {
                    let mut p = format!("{base}/with");
                    let rel = p.len();
                    self.walk_with(with, &mut p, rel, ty, Site::Hook { secrets: false }, ctx, &mut reads);
                }
                if let Some(ty) = ty {
                    self.type_rules(&base, ty, self.json.pointer(&format!("{base}/with")));
                }
                if self.json.pointer(&format!("{base}/with/callback")).is_some() {
                    self.error(
                        TASK_CONFIG,
                        &format!("{base}/with/callback"),
                        "a hook runs once, after the run ended: it cannot wait for a callback",
                    );
                }
            }
        }
    }
}

/// Whether `ptr` lies in the `run.with` of an agent's tool (`.../with/tools/<n>/run/with/...`),
/// where templates read the call's arguments as `args`.
/// Whether `ptr` is at or under `under` (`run/with`, `approval/prompt`) of an agent's tool.
fn in_tool(ptr: &str, under: &str) -> bool {
    ptr.split_once("/with/tools/").is_some_and(|(_, rest)| {
        rest.split_once('/').is_some_and(|(n, rest)| {
            n.bytes().all(|b| b.is_ascii_digit())
                && rest.strip_prefix(under).is_some_and(|r| r.is_empty() || r.starts_with('/'))
        })
    })
}
