//! `llmo infra`: the EventBridge Scheduler schedules and EventBridge rules that start the
//! workflows' runs, as a CloudFormation template (see `llmo_core::triggers`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use llmo_core::triggers::{Options, cloudformation};
use llmo_core::validate::Validator;

use crate::checked_or_report;

pub fn infra(validator: &Validator, files: &[PathBuf], opts: &Options, out: Option<&Path>) -> Result<ExitCode> {
    if !llmo_core::tenant::valid(&opts.tenant) {
        anyhow::bail!("--tenant {}: 1-64 of A-Za-z0-9_.-, not starting with . or -", opts.tenant);
    }
    let mut checked = Vec::new();
    let mut failed = false;
    for f in files {
        match checked_or_report(validator, f)? {
            Some(c) => checked.push(c),
            None => failed = true,
        }
    }
    if failed {
        return Ok(ExitCode::from(1));
    }
    let workflows: Vec<_> = checked.iter().map(|c| &c.workflow).collect();
    let template = cloudformation(&workflows, opts).map_err(anyhow::Error::msg)?;
    let text = serde_json::to_string_pretty(&template)? + "\n";
    let (schedules, rules) = workflows
        .iter()
        .fold((0, 0), |(s, r), w| (s + usize::from(w.spec.schedule.is_some()), r + w.spec.events.len()));
    match out {
        Some(p) => {
            std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?;
            eprintln!("{}: {schedules} schedule(s), {rules} event rule(s) for tenant {}", p.display(), opts.tenant);
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}
