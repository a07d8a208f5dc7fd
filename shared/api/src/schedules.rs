//! Registered workflows' schedules under `llmo serve` (deployed, EventBridge Scheduler fires
//! them): `spec.schedule.cron` in its `timezone` (IANA, default UTC), or `rate` counted from
//! the workflow's registration.
//!
//! Each tick starts one run, through the same path as a deployed tick
//! ([`Api::start_scheduled`]) with the tick's time in the start's idempotency key
//! (`serve:<tenant>:<workflow>@<tick ms>`): a tick fired twice (a restart within the same
//! minute, two catch-ups) starts one run.
//!
//! Catch-up after downtime: at start, the latest tick of each schedule that fell while the
//! server was down (at most [`CATCH_UP_DAYS`] back, and not before the workflow was
//! registered) fires once; older missed ticks are skipped, as a scheduler that was switched
//! off would skip them. A workflow registered or changed while serving is picked up at the
//! next minute.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{Datelike, TimeZone, Timelike};
use llmo_core::model::Schedule;
use llmo_core::schedule::{CivilMinute, cron_matches};
use llmo_runtime::store::SqliteStore;
use serde_json::json;
use tokio::sync::watch;

use crate::Api;

/// How far back a start looks for a tick missed while the server was down.
pub const CATCH_UP_DAYS: u64 = 7;
const MINUTE: u64 = 60_000;

/// The schedules' timer task.
pub struct Schedules {
    task: tokio::task::JoinHandle<()>,
}

/// One registered workflow's schedule, as last read.
struct Entry {
    registered_at: u64,
    schedule: Option<Schedule>,
}

/// The minute `ms` (ms since the epoch, UTC) in `tz`.
fn civil(ms: u64, tz: chrono_tz::Tz) -> Option<CivilMinute> {
    let t = tz.timestamp_millis_opt(ms as i64).single()?;
    let (y, m) = (t.year(), t.month());
    let first_next = if m == 12 {
        chrono::NaiveDate::from_ymd_opt(y + 1, 1, 1)
    } else {
        chrono::NaiveDate::from_ymd_opt(y, m + 1, 1)
    }?;
    let days_in_month = first_next.pred_opt()?.day();
    Some(CivilMinute {
        year: u32::try_from(y).ok()?,
        month: m,
        day: t.day(),
        hour: t.hour(),
        minute: t.minute(),
        weekday: t.weekday().num_days_from_sunday() + 1,
        days_in_month,
    })
}

/// Whether `s` (of a workflow registered at `registered_at`) ticks at minute `m` (ms, a
/// multiple of a minute). A bad time zone or expression never ticks.
pub fn ticks_at(s: &Schedule, registered_at: u64, m: u64) -> bool {
    if !s.enabled || m < registered_at {
        return false;
    }
    if let Some(rate) = s.rate {
        let every = (rate.0.as_millis() as u64).max(MINUTE);
        let anchor = registered_at.div_ceil(MINUTE) * MINUTE;
        return m > anchor && (m - anchor) % every == 0;
    }
    let Some(cron) = &s.cron else { return false };
    let tz: chrono_tz::Tz = match s.timezone.as_deref().unwrap_or("UTC").parse() {
        Ok(tz) => tz,
        Err(_) => return false,
    };
    civil(m, tz).is_some_and(|c| cron_matches(cron, &c).unwrap_or(false))
}

/// The latest tick of `s` in `(after, upto]` (minutes), if any.
pub fn latest_tick(s: &Schedule, registered_at: u64, after: u64, upto: u64) -> Option<u64> {
    let mut m = upto / MINUTE * MINUTE;
    while m > after {
        if ticks_at(s, registered_at, m) {
            return Some(m);
        }
        m -= MINUTE;
    }
    None
}

impl Schedules {
    /// Fires what was missed (see the module), then every tick as it comes, until `stop`.
    pub async fn start(api: Arc<Api>, store: Arc<SqliteStore>, mut stop: watch::Receiver<bool>) -> Self {
        let task = tokio::spawn(async move {
            let mut known: HashMap<(String, String), Entry> = HashMap::new();
            let now = llmo_runtime::ports::now_ms();
            refresh(&api, &store, &mut known).await;
            let since = now.saturating_sub(CATCH_UP_DAYS * 86_400_000);
            for ((tenant, name), e) in &known {
                if let Some(s) = &e.schedule
                    && let Some(t) = latest_tick(s, e.registered_at, since, now)
                {
                    fire(&api, tenant, name, s, t).await;
                }
            }
            let mut last = now / MINUTE * MINUTE;
            loop {
                let now = llmo_runtime::ports::now_ms();
                let next = (now / MINUTE + 1) * MINUTE;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(next - now + 50)) => {}
                    _ = stop.changed() => return,
                }
                refresh(&api, &store, &mut known).await;
                let now = llmo_runtime::ports::now_ms() / MINUTE * MINUTE;
                // Every minute since the last look (one, unless this process was starved).
                for m in (last + MINUTE..=now).step_by(MINUTE as usize) {
                    for ((tenant, name), e) in &known {
                        if let Some(s) = e.schedule.as_ref().filter(|s| ticks_at(s, e.registered_at, m)) {
                            fire(&api, tenant, name, s, m).await;
                        }
                    }
                }
                last = now.max(last);
            }
        });
        Schedules { task }
    }

    /// Stops the timer (a tick being fired finishes first only if it already started).
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Reads the registered workflows again, parsing only the ones registered since last time.
async fn refresh(api: &Api, store: &SqliteStore, known: &mut HashMap<(String, String), Entry>) {
    let all = match store.all_registered() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "reading the registered workflows for their schedules failed");
            return;
        }
    };
    let mut seen = std::collections::HashSet::new();
    for (tenant, name, at) in all {
        let key = (tenant.clone(), name.clone());
        seen.insert(key.clone());
        if known.get(&key).is_some_and(|e| e.registered_at == at) {
            continue;
        }
        let schedule = match api.workflows.get(&tenant, &name).await {
            Ok(Some(src)) => match api.starter.check(&format!("{name}.yaml"), &src) {
                Ok(c) => c.workflow.spec.schedule.clone(),
                Err(e) => {
                    tracing::warn!(%tenant, workflow = %name, error = %e, "a registered workflow no longer validates; its schedule is off");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(%tenant, workflow = %name, error = %e, "reading a registered workflow failed");
                continue;
            }
        };
        if let Some(s) = &schedule
            && s.cron.is_some()
            && s.timezone.as_deref().is_some_and(|z| z.parse::<chrono_tz::Tz>().is_err())
        {
            tracing::warn!(%tenant, workflow = %name, timezone = ?s.timezone, "unknown time zone: the schedule never fires");
        }
        known.insert(key, Entry { registered_at: at, schedule });
    }
    known.retain(|k, _| seen.contains(k));
}

async fn fire(api: &Api, tenant: &str, workflow: &str, s: &Schedule, tick: u64) {
    let event = json!({
        "tenant": tenant,
        "workflow": workflow,
        "inputs": s.inputs,
        "idempotency_key": format!("serve:{tenant}:{workflow}@{tick}"),
    });
    match api.start_scheduled(&event).await {
        Ok(v) => tracing::info!(%tenant, %workflow, tick, run = %v["run_id"], "scheduled run started"),
        Err(e) => tracing::warn!(%tenant, %workflow, tick, error = %e, "a scheduled run did not start"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(cron: Option<&str>, rate_mins: Option<u64>, tz: Option<&str>) -> Schedule {
        Schedule {
            cron: cron.map(str::to_string),
            rate: rate_mins.map(|m| llmo_core::model::Duration(Duration::from_secs(m * 60))),
            timezone: tz.map(str::to_string),
            inputs: Default::default(),
            enabled: true,
        }
    }

    fn ms(rfc3339: &str) -> u64 {
        chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp_millis() as u64
    }

    #[test]
    fn crons_tick_in_their_time_zone_and_rates_from_registration() {
        let paris = sched(Some("0 6 * * ? *"), None, Some("Europe/Paris"));
        // 06:00 in Paris is 05:00 UTC in winter, 04:00 UTC in summer.
        assert!(ticks_at(&paris, 0, ms("2026-12-07T05:00:00Z")));
        assert!(!ticks_at(&paris, 0, ms("2026-12-07T06:00:00Z")));
        assert!(ticks_at(&paris, 0, ms("2026-07-07T04:00:00Z")));
        assert!(!ticks_at(&paris, ms("2026-12-08T00:00:00Z"), ms("2026-12-07T05:00:00Z")), "before registration");
        let off = Schedule { enabled: false, ..paris.clone() };
        assert!(!ticks_at(&off, 0, ms("2026-12-07T05:00:00Z")));
        assert!(!ticks_at(&sched(Some("0 6 * * ? *"), None, Some("Mars/Olympus")), 0, ms("2026-12-07T06:00:00Z")));
        let reg = ms("2026-12-07T10:00:30Z");
        let every15 = sched(None, Some(15), None);
        assert!(ticks_at(&every15, reg, ms("2026-12-07T10:16:00Z")));
        assert!(!ticks_at(&every15, reg, ms("2026-12-07T10:15:00Z")));
        assert!(!ticks_at(&every15, reg, ms("2026-12-07T10:01:00Z")), "not at registration itself");
    }

    #[test]
    fn the_catch_up_finds_only_the_latest_missed_tick() {
        let daily = sched(Some("30 9 * * ? *"), None, None);
        let now = ms("2026-12-07T12:00:00Z");
        let week_ago = now - 7 * 86_400_000;
        assert_eq!(latest_tick(&daily, 0, week_ago, now), Some(ms("2026-12-07T09:30:00Z")));
        assert_eq!(latest_tick(&daily, 0, ms("2026-12-07T09:30:00Z"), now), None, "already seen");
        assert_eq!(latest_tick(&daily, ms("2026-12-07T10:00:00Z"), week_ago, now), None, "registered after it");
    }
}
