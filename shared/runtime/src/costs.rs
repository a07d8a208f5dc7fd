//! Cost roll-ups: what runs recorded (cost, tokens), summed per day and per workflow or per
//! tenant. `llmo costs` (embedded state or the API) and `GET /costs` answer with these rows.

use serde::Serialize;

use crate::store::RunSummary;

/// What rows are grouped by besides the day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    Workflow,
    Tenant,
}

impl std::str::FromStr for By {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "workflow" => Ok(By::Workflow),
            "tenant" => Ok(By::Tenant),
            other => Err(format!("`by` is `workflow` or `tenant`, not `{other}`")),
        }
    }
}

/// One day of one workflow (or tenant).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// The workflow's name or the tenant.
    pub key: String,
    pub runs: u64,
    pub cost_usd: f64,
    pub tokens: u64,
}

/// Sums `runs` (of `tenant`) that started at or after `since_ms` into rows, newest day first,
/// then by key. Runs never started are left out.
pub fn roll_up<'a>(runs: impl IntoIterator<Item = &'a RunSummary>, by: By, tenant: &str, since_ms: u64) -> Vec<Row> {
    let mut rows: std::collections::BTreeMap<(String, String), Row> = Default::default();
    for r in runs {
        let Some(at) = r.started_at.filter(|&t| t >= since_ms) else { continue };
        let day = day_of(at);
        let key = match by {
            By::Workflow => r.workflow.clone(),
            By::Tenant => tenant.to_string(),
        };
        let row = rows.entry((day.clone(), key.clone())).or_insert(Row { day, key, runs: 0, cost_usd: 0.0, tokens: 0 });
        row.runs += 1;
        row.cost_usd += r.cost_usd;
        row.tokens += r.tokens;
    }
    let mut out: Vec<Row> = rows.into_values().collect();
    out.sort_by(|a, b| b.day.cmp(&a.day).then(a.key.cmp(&b.key)));
    out
}

/// A span of time like `7d`, `24h`, `90m` in milliseconds (the `--since` of `llmo costs`).
pub fn parse_since(s: &str) -> Result<u64, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("`{s}`: a number and a unit (`7d`, `24h`, `30m`)"))?;
    let unit_ms = match unit {
        "d" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        _ => return Err(format!("`{s}`: the unit is `d`, `h` or `m`")),
    };
    n.checked_mul(unit_ms).filter(|&v| v <= 400 * 86_400_000).ok_or_else(|| format!("`{s}`: at most 400 days"))
}

/// The UTC day of a time in milliseconds since the epoch, as `YYYY-MM-DD`.
pub fn day_of(ms: u64) -> String {
    // Days since 1970-01-01 to a civil date (Howard Hinnant's `civil_from_days`).
    let z = (ms / 86_400_000) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(wf: &str, at: u64, cost: f64, tokens: u64) -> RunSummary {
        RunSummary {
            run_id: format!("run-{wf}-{at}"),
            workflow: wf.into(),
            status: "succeeded".into(),
            version: 3,
            started_at: Some(at),
            cost_usd: cost,
            tokens,
        }
    }

    #[test]
    fn days_are_utc_calendar_days() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(951_782_400_000), "2000-02-29");
        assert_eq!(day_of(1_796_083_199_999), "2026-11-30");
        assert_eq!(day_of(1_796_083_200_000), "2026-12-01");
    }

    #[test]
    fn runs_sum_per_day_and_workflow_or_tenant() {
        let day1 = 1_796_083_200_000; // 2026-12-01
        let runs = [
            run("a", day1 + 10, 0.5, 100),
            run("a", day1 + 20, 0.25, 50),
            run("b", day1 + 30, 1.0, 10),
            run("a", day1 - 10, 2.0, 7),
            run("a", day1 - 86_400_000 * 9, 9.0, 9),
        ];
        let rows = roll_up(&runs, By::Workflow, "acme", day1 - 86_400_000 * 7);
        let got: Vec<(&str, &str, u64, f64, u64)> =
            rows.iter().map(|r| (r.day.as_str(), r.key.as_str(), r.runs, r.cost_usd, r.tokens)).collect();
        assert_eq!(
            got,
            vec![("2026-12-01", "a", 2, 0.75, 150), ("2026-12-01", "b", 1, 1.0, 10), ("2026-11-30", "a", 1, 2.0, 7)]
        );
        let rows = roll_up(&runs, By::Tenant, "acme", day1);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].key.as_str(), rows[0].runs, rows[0].tokens), ("acme", 3, 160));
    }

    #[test]
    fn since_reads_days_hours_and_minutes() {
        assert_eq!(parse_since("7d"), Ok(7 * 86_400_000));
        assert_eq!(parse_since("24h"), Ok(86_400_000));
        assert_eq!(parse_since("30m"), Ok(1_800_000));
        assert!(parse_since("7w").unwrap_err().contains("unit"));
        assert!(parse_since("d").unwrap_err().contains("a number"));
        assert!(parse_since("999d").unwrap_err().contains("400 days"));
    }
}
