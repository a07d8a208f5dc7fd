//! Pass 4c: the spec's other parts: inputs, schedules, event triggers, budgets and timing.

use super::*;

impl Run<'_> {
    pub(super) fn inputs(&mut self, spec: Option<&Value>) -> Option<indexmap::IndexMap<String, InputSpec>> {
        let raw = spec.and_then(|s| s.get("inputs")).and_then(Value::as_object)?;
        let mut out = indexmap::IndexMap::new();
        for (name, v) in raw {
            let p = format!("/spec/inputs/{name}");
            if !regex_is_ident(name) {
                let (path, span) = self.loc_key(&p);
                self.push(
                    Diagnostic::error(INPUT, format!("input name `{name}` is not an identifier"))
                        .at(path, span)
                        .help("inputs are read as `inputs.<name>`: use letters, digits and `_`"),
                );
            }
            let Some(spec) = typed::<InputSpec>(Some(v)) else {
                // Reported by the schema; keep the name declared so references still resolve.
                out.insert(name.clone(), InputSpec::untyped());
                continue;
            };
            self.input_decl(&p, &spec);
            out.insert(name.clone(), spec);
        }
        Some(out)
    }

    pub(super) fn input_decl(&mut self, p: &str, spec: &InputSpec) {
        if let Some(items) = &spec.items {
            if spec.ty != InputType::Array {
                self.error(
                    INPUT,
                    &format!("{p}/items"),
                    format!("`items` only applies to arrays; this input is {}", a(spec.ty)),
                );
            }
            self.input_decl(&format!("{p}/items"), items);
        }
        if let Some(values) = &spec.enum_values {
            for (i, v) in values.iter().enumerate() {
                let bare = InputSpec { enum_values: None, ..spec.clone() };
                if let Some((_, msg)) = check_value(&bare, v).into_iter().next() {
                    self.error(INPUT, &format!("{p}/enum/{i}"), format!("enum value does not fit the input: {msg}"));
                }
            }
        }
        if let Some(d) = &spec.default {
            for (sub, msg) in check_value(spec, d) {
                self.error(INPUT, &format!("{p}/default{sub}"), format!("default does not fit the input: {msg}"));
            }
            if spec.required {
                self.warning(
                    INPUT,
                    &format!("{p}/required"),
                    "an input with a default is never missing; `required` has no effect",
                );
            }
        }
        if let (Some(a), Some(b)) = (spec.minimum, spec.maximum)
            && a > b
        {
            self.error(INPUT, &format!("{p}/minimum"), format!("minimum {a} is greater than maximum {b}"));
        }
        if let (Some(a), Some(b)) = (spec.min_length, spec.max_length)
            && a > b
        {
            self.error(INPUT, &format!("{p}/min_length"), format!("min_length {a} is greater than max_length {b}"));
        }
    }

    pub(super) fn schedule(&mut self, spec: Option<&Value>, inputs: Option<&indexmap::IndexMap<String, InputSpec>>) {
        let Some(s) = typed::<Schedule>(spec.and_then(|s| s.get("schedule"))) else { return };
        let p = "/spec/schedule";
        match (&s.cron, &s.rate) {
            (Some(_), Some(_)) => {
                self.error(SCHEDULE, p, "set `cron` or `rate`, not both");
            }
            (None, None) => {
                self.error(SCHEDULE, p, "a schedule needs `cron` or `rate`").help =
                    Some("e.g. `cron: \"0 6 * * ? *\"` (06:00 UTC daily) or `rate: 1h`".into());
            }
            (Some(c), None) => {
                if let Err(e) = check_cron(c) {
                    self.error(SCHEDULE, &format!("{p}/cron"), format!("invalid cron expression: {e}")).help =
                        Some("EventBridge cron has 6 fields: minutes hours day-of-month month day-of-week year, e.g. `0 6 * * ? *`".into());
                }
            }
            (None, Some(r)) => {
                if let Err(e) = check_rate(r.0) {
                    self.error(SCHEDULE, &format!("{p}/rate"), format!("invalid rate: {e}"));
                }
            }
        }
        if let Some(tz) = &s.timezone
            && !(tz == "UTC"
                || tz.split('/').count() >= 2
                    && tz.split('/').all(|part| {
                        !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || "_+-".contains(c))
                    }))
        {
            self.error(SCHEDULE, &format!("{p}/timezone"), format!("`{tz}` is not an IANA time zone name")).help =
                Some("e.g. `UTC`, `Europe/Paris`, `America/New_York`".into());
        }
        if let Some(decl) = inputs {
            let given: serde_json::Map<String, Value> = s.inputs.clone().into_iter().collect();
            if let Err(errs) = crate::inputs::resolve_inputs(decl, &given) {
                for e in errs {
                    let ptr = if given.contains_key(&e.input) {
                        format!("{p}/inputs/{}{}", e.input, e.path)
                    } else {
                        format!("{p}/inputs")
                    };
                    self.error(INPUT, &ptr, format!("scheduled runs: {}", e.message));
                }
            }
        } else if !s.inputs.is_empty() {
            self.error(INPUT, &format!("{p}/inputs"), "the schedule passes inputs, but the workflow declares none");
        }
    }

    pub(super) fn events(&mut self, spec: Option<&Value>, inputs: Option<&indexmap::IndexMap<String, InputSpec>>) {
        let Some(raw) = spec.and_then(|s| s.get("events")).and_then(Value::as_array) else { return };
        let mut names = BTreeSet::new();
        let empty = RefCtx { views: &[], dag: None, inputs: None, secrets: &[] };
        for (i, ev) in raw.iter().enumerate() {
            let Some(ev) = typed::<EventTrigger>(Some(ev)) else { continue };
            let base = format!("/spec/events/{i}");
            if !names.insert(ev.name.clone()) {
                self.error(EVENT, &format!("{base}/name"), format!("duplicate event trigger name `{}`", ev.name));
            }
            if ev.pattern.is_empty() {
                self.error(EVENT, &format!("{base}/pattern"), "an empty pattern would match every event on the bus");
            }
            self.event_pattern(&Value::Object(ev.pattern.clone()), &mut format!("{base}/pattern"));
            let decl = inputs.cloned().unwrap_or_default();
            for (name, tmpl) in &ev.inputs {
                let p = format!("{base}/inputs/{name}");
                if !decl.contains_key(name) {
                    let hint = self.suggest(name, decl.keys().map(String::as_str));
                    let (path, span) = self.loc_key(&p);
                    self.push(
                        Diagnostic::error(INPUT, format!("event trigger sets undeclared input `{name}`"))
                            .at(path, span)
                            .help_opt(hint),
                    );
                }
                let mut reads = Reads::default();
                self.template(tmpl, &p, Site::Event, &empty, &mut reads);
            }
            for (name, d) in &decl {
                if d.required && d.default.is_none() && !ev.inputs.contains_key(name) {
                    let (path, span) = self.loc_key(&base);
                    self.push(
                        Diagnostic::error(
                            INPUT,
                            format!("event trigger `{}` does not set required input `{name}`", ev.name),
                        )
                        .at(path, span)
                        .help(format!("add `{name}: \"{{{{ event.detail... }}}}\"` under `inputs`")),
                    );
                }
            }
        }
    }

    /// EventBridge patterns: every leaf is a list of match values.
    pub(super) fn event_pattern(&mut self, v: &Value, ptr: &mut String) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    let len = ptr.len();
                    ptr.push('/');
                    ptr.push_str(&k.replace('~', "~0").replace('/', "~1"));
                    match child {
                        Value::Object(_) => self.event_pattern(child, ptr),
                        Value::Array(_) => {}
                        other => {
                            let p = ptr.clone();
                            self.error(
                                EVENT,
                                &p,
                                format!("pattern values must be lists, found {} `{}`", json_type(other), short(other)),
                            )
                            .help = Some(format!("write `[{}]`", short(other)));
                        }
                    }
                    ptr.truncate(len);
                }
            }
            _ => {
                let p = ptr.clone();
                self.error(EVENT, &p, "an event pattern is a mapping");
            }
        }
    }

    /// Secret hosts no broader than one registered domain (`*.com` would send the secret to
    /// anyone who registers a name there).
    pub(super) fn secret_hosts(&mut self, spec: Option<&Value>) {
        let Some(secrets) = spec.and_then(|s| s.get("secrets")).and_then(Value::as_object) else { return };
        for (name, d) in secrets {
            for (i, h) in d.get("hosts").and_then(Value::as_array).into_iter().flatten().enumerate() {
                if let Some(why) = h.as_str().and_then(crate::model::host_pattern_too_broad) {
                    self.error(SECRET_HOSTS, &format!("/spec/secrets/{name}/hosts/{i}"), why).help =
                        Some("a secret goes only to hosts of one registered domain".into());
                }
            }
        }
    }

    pub(super) fn budget_and_timing(&mut self, spec: Option<&Value>, defaults: Option<&Defaults>, views: &[TaskView]) {
        if let Some(b) = typed::<crate::model::Budget>(spec.and_then(|s| s.get("budget"))) {
            if b.max_cost_usd.is_some_and(|c| c <= 0.0) {
                self.error(BUDGET, "/spec/budget/max_cost_usd", "max_cost_usd must be greater than zero").help =
                    Some("remove `budget` for no limit".into());
            }
            if b.max_cost_usd.is_none() && b.max_tokens.is_none() {
                self.warning(BUDGET, "/spec/budget", "an empty budget sets no limit");
            }
        }
        if let Some(d) = defaults {
            if d.timeout.is_some_and(|t| t.0.is_zero()) {
                self.error(TIMING, "/spec/defaults/timeout", "timeout must be greater than zero");
            }
            let r = crate::model::EffectiveRetry::default().overlay(d.retry.as_ref());
            if r.initial > r.max {
                self.error(TIMING, "/spec/defaults/retry/backoff", "backoff `initial` is longer than `max`");
            }
        }
        let run_timeout = typed::<crate::model::Duration>(spec.and_then(|s| s.get("timeout")));
        if let Some(rt) = run_timeout {
            if rt.0.is_zero() {
                self.error(TIMING, "/spec/timeout", "timeout must be greater than zero");
            }
            for (i, v) in views.iter().enumerate() {
                if let Some(t) = v.task.as_ref().and_then(|t| t.timeout)
                    && t > rt
                {
                    self.warning(
                        TIMING,
                        &format!("/spec/tasks/{i}/timeout"),
                        format!("task timeout {t} is longer than the run timeout {rt}"),
                    );
                }
            }
        }
    }
}
