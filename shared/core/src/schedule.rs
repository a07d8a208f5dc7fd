//! EventBridge schedule expressions: `cron(...)` with its six fields, and `rate(...)`.
//!
//! Checked here so that a workflow that validates also deploys: EventBridge refuses bad
//! expressions only at deploy time, far from the file that holds them.

use std::time::Duration;

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    question: bool,
    l: bool,
    w: bool,
    hash: bool,
}

const FIELDS: [Field; 6] = [
    Field { name: "minutes", min: 0, max: 59, names: &[], question: false, l: false, w: false, hash: false },
    Field { name: "hours", min: 0, max: 23, names: &[], question: false, l: false, w: false, hash: false },
    Field { name: "day-of-month", min: 1, max: 31, names: &[], question: true, l: true, w: true, hash: false },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"],
        question: false,
        l: false,
        w: false,
        hash: false,
    },
    Field {
        name: "day-of-week",
        min: 1,
        max: 7,
        names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
        question: true,
        l: true,
        w: false,
        hash: true,
    },
    Field { name: "year", min: 1970, max: 2199, names: &[], question: false, l: false, w: false, hash: false },
];

/// Checks an EventBridge cron expression (the part inside `cron(...)`; the wrapper is
/// accepted too). Returns the canonical `cron(...)` form.
pub fn check_cron(expr: &str) -> Result<String, String> {
    let inner = expr.trim().strip_prefix("cron(").and_then(|s| s.strip_suffix(')')).unwrap_or(expr.trim());
    let parts: Vec<&str> = inner.split_whitespace().collect();
    if parts.len() != 6 {
        return Err(format!(
            "an EventBridge cron expression has 6 fields (minutes hours day-of-month month day-of-week year), found {}",
            parts.len()
        ));
    }
    for (part, field) in parts.iter().zip(FIELDS.iter()) {
        check_field(part, field)?;
    }
    let (dom, dow) = (parts[2], parts[4]);
    match (dom == "?", dow == "?") {
        (true, true) => return Err("only one of day-of-month and day-of-week may be `?`".into()),
        (false, false) => {
            return Err("one of day-of-month and day-of-week must be `?` (EventBridge cannot set both)".into());
        }
        _ => {}
    }
    Ok(format!("cron({})", parts.join(" ")))
}

fn value(s: &str, f: &Field) -> Result<u32, String> {
    let v = if let Some(i) = f.names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        f.min + i as u32
    } else {
        s.parse::<u32>().map_err(|_| format!("`{s}` is not a valid {} value", f.name))?
    };
    if v < f.min || v > f.max {
        return Err(format!("{} value {v} is out of range {}-{}", f.name, f.min, f.max));
    }
    Ok(v)
}

fn check_field(part: &str, f: &Field) -> Result<(), String> {
    if part == "?" {
        return if f.question {
            Ok(())
        } else {
            Err(format!("`?` is only allowed in day-of-month and day-of-week, not in {}", f.name))
        };
    }
    for item in part.split(',') {
        if item.is_empty() {
            return Err(format!("empty list item in {} field `{part}`", f.name));
        }
        if item == "*" {
            continue;
        }
        if f.l && (item == "L" || (f.hash && item.ends_with('L') && value(&item[..item.len() - 1], f).is_ok())) {
            continue;
        }
        if f.w && (item == "LW" || item.strip_suffix('W').is_some_and(|d| value(d, f).is_ok())) {
            continue;
        }
        if f.hash
            && let Some((d, n)) = item.split_once('#')
        {
            value(d, f)?;
            match n.parse::<u32>() {
                Ok(1..=5) => continue,
                _ => return Err(format!("`#{n}` in {}: the week number must be 1-5", f.name)),
            }
        }
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (item, None),
        };
        if let Some(s) = step {
            match s.parse::<u32>() {
                Ok(n) if n > 0 => {}
                _ => return Err(format!("step `/{s}` in {} must be a positive number", f.name)),
            }
        }
        if range == "*" {
            continue;
        }
        match range.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (value(a, f)?, value(b, f)?);
                if a > b && f.name != "day-of-week" {
                    return Err(format!("range {a}-{b} in {} runs backwards", f.name));
                }
            }
            None => {
                value(range, f)?;
            }
        }
    }
    Ok(())
}

/// Checks a rate: whole minutes, at least one. Returns the EventBridge `rate(...)` form.
pub fn check_rate(d: Duration) -> Result<String, String> {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        return Err("the shortest rate EventBridge allows is 1 minute".into());
    }
    if d.subsec_nanos() != 0 || d.as_secs() % 60 != 0 {
        return Err("a rate must be a whole number of minutes".into());
    }
    let m = d.as_secs() / 60;
    Ok(if m % 1440 == 0 {
        let n = m / 1440;
        format!("rate({n} day{})", if n == 1 { "" } else { "s" })
    } else if m % 60 == 0 {
        let n = m / 60;
        format!("rate({n} hour{})", if n == 1 { "" } else { "s" })
    } else {
        format!("rate({m} minute{})", if m == 1 { "" } else { "s" })
    })
}

/// A minute of civil (wall-clock) time in a schedule's time zone: what a cron expression is
/// matched against (the time zone conversion is the caller's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CivilMinute {
    pub year: u32,
    /// 1-12.
    pub month: u32,
    /// 1-31.
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    /// 1 (Sunday) to 7 (Saturday), as EventBridge numbers them.
    pub weekday: u32,
    /// Days in this month (28-31).
    pub days_in_month: u32,
}

impl CivilMinute {
    /// The weekday (1 = Sunday) of day `d` of this month.
    fn weekday_of(&self, d: u32) -> u32 {
        (((self.weekday as i64 - 1) + (d as i64 - self.day as i64)).rem_euclid(7) + 1) as u32
    }

    /// The weekday (Monday to Friday) nearest day `d` within the month (EventBridge's `W`).
    fn nearest_weekday(&self, d: u32) -> u32 {
        let d = d.min(self.days_in_month);
        match self.weekday_of(d) {
            7 if d == 1 => 3,                      // Saturday the 1st: Monday the 3rd
            7 => d - 1,                            // Saturday: Friday
            1 if d == self.days_in_month => d - 2, // Sunday the last: Friday
            1 => d + 1,                            // Sunday: Monday
            _ => d,
        }
    }
}

/// Whether a cron expression (as [`check_cron`] accepts) fires at minute `t`. An expression
/// that does not check is an error.
pub fn cron_matches(expr: &str, t: &CivilMinute) -> Result<bool, String> {
    let canonical = check_cron(expr)?;
    let inner = &canonical["cron(".len()..canonical.len() - 1];
    let parts: Vec<&str> = inner.split_whitespace().collect();
    let values = [t.minute, t.hour, t.day, t.month, t.weekday, t.year];
    for (k, (part, field)) in parts.iter().zip(FIELDS.iter()).enumerate() {
        if !field_matches(part, field, values[k], k, t)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn field_matches(part: &str, f: &Field, v: u32, k: usize, t: &CivilMinute) -> Result<bool, String> {
    if part == "?" || part == "*" {
        return Ok(true);
    }
    for item in part.split(',') {
        let hit = match (k, item) {
            (2, "L") => v == t.days_in_month,
            (2, "LW") => v == t.nearest_weekday(t.days_in_month),
            (2, w) if w.ends_with('W') => v == t.nearest_weekday(value(&w[..w.len() - 1], f)?),
            (4, "L") => v == 7,
            (4, l) if l.ends_with('L') => v == value(&l[..l.len() - 1], f)? && t.day + 7 > t.days_in_month,
            (4, h) if h.contains('#') => {
                let (d, n) = h.split_once('#').expect("checked");
                v == value(d, f)? && (t.day - 1) / 7 + 1 == n.parse::<u32>().map_err(|e| e.to_string())?
            }
            _ => {
                let (range, step) = match item.split_once('/') {
                    Some((r, s)) => (r, s.parse::<u32>().map_err(|e| e.to_string())?),
                    None => (item, 1),
                };
                let (a, b) = match range.split_once('-') {
                    _ if range == "*" => (f.min, f.max),
                    Some((a, b)) => (value(a, f)?, value(b, f)?),
                    // `5/15`: from 5 to the end, every 15.
                    None if item.contains('/') => (value(range, f)?, f.max),
                    None => {
                        let a = value(range, f)?;
                        (a, a)
                    }
                };
                if a <= b {
                    (a..=b).contains(&v) && (v - a) % step == 0
                } else {
                    // A day-of-week range that wraps (FRI-MON).
                    let span = f.max - f.min + 1;
                    let off = (v + span - a) % span;
                    off <= (b + span - a) % span && off % step == 0
                }
            }
        };
        if hit {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_crons() {
        for ok in [
            "0 6 * * ? *",
            "cron(0 6 * * ? *)",
            "0/15 * * * ? *",
            "0 18 ? * MON-FRI *",
            "0 10 L * ? *",
            "0 10 15W * ? *",
            "0 10 ? * 6#3 *",
            "5,35 14 * JAN,FEB ? 2026-2030",
        ] {
            assert!(check_cron(ok).is_ok(), "{ok}: {:?}", check_cron(ok));
        }
        assert_eq!(check_cron("0 6 * * ? *").unwrap(), "cron(0 6 * * ? *)");
    }

    #[test]
    fn invalid_crons() {
        for (bad, why) in [
            ("0 6 * * *", "6 fields"),
            ("0 6 * * * *", "must be `?`"),
            ("0 6 ? * ? *", "only one"),
            ("60 6 * * ? *", "out of range"),
            ("0 24 * * ? *", "out of range"),
            ("0 6 * FOO ? *", "not a valid month"),
            ("0 6 * * ? 1800", "out of range"),
            ("0/0 6 * * ? *", "step"),
            ("? 6 * * ? *", "only allowed"),
            ("0 6 ? * 2#9 *", "week number"),
        ] {
            let err = check_cron(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(check_rate(Duration::from_secs(3600)).unwrap(), "rate(1 hour)");
        assert_eq!(check_rate(Duration::from_secs(300)).unwrap(), "rate(5 minutes)");
        assert_eq!(check_rate(Duration::from_secs(86400 * 2)).unwrap(), "rate(2 days)");
        assert!(check_rate(Duration::from_secs(30)).is_err());
        assert!(check_rate(Duration::from_secs(90)).is_err());
    }

    fn at(year: u32, month: u32, day: u32, hour: u32, minute: u32, weekday: u32, dim: u32) -> CivilMinute {
        CivilMinute { year, month, day, hour, minute, weekday, days_in_month: dim }
    }

    #[test]
    fn crons_match_the_minutes_eventbridge_fires_at() {
        // 2026-12-07 is a Monday (2); December has 31 days and starts on a Tuesday.
        let mon = |h, m| at(2026, 12, 7, h, m, 2, 31);
        let m = |e: &str, t: &CivilMinute| cron_matches(e, t).unwrap();
        assert!(m("0 6 * * ? *", &mon(6, 0)));
        assert!(!m("0 6 * * ? *", &mon(6, 1)));
        assert!(m("0/15 * * * ? *", &mon(9, 45)) && !m("0/15 * * * ? *", &mon(9, 50)));
        assert!(m("5/20 * * * ? *", &mon(9, 45)) && !m("5/20 * * * ? *", &mon(9, 0)));
        assert!(m("0 18 ? * MON-FRI *", &mon(18, 0)));
        assert!(!m("0 18 ? * MON-FRI *", &at(2026, 12, 6, 18, 0, 1, 31)), "Sunday");
        assert!(m("0 0 ? * FRI-MON *", &mon(0, 0)) && m("0 0 ? * FRI-MON *", &at(2026, 12, 5, 0, 0, 7, 31)));
        assert!(!m("0 0 ? * FRI-MON *", &at(2026, 12, 8, 0, 0, 3, 31)), "Tuesday is outside FRI-MON");
        assert!(
            m("0 10 L * ? *", &at(2026, 12, 31, 10, 0, 5, 31)) && !m("0 10 L * ? *", &at(2026, 12, 30, 10, 0, 4, 31))
        );
        // 2026-11-15 is a Sunday: 15W is Monday the 16th.
        assert!(
            m("0 10 15W * ? *", &at(2026, 11, 16, 10, 0, 2, 30))
                && !m("0 10 15W * ? *", &at(2026, 11, 15, 10, 0, 1, 30))
        );
        // The last weekday of January 2027 (31st is a Sunday): Friday the 29th.
        assert!(m("0 10 LW * ? *", &at(2027, 1, 29, 10, 0, 6, 31)));
        // The third Friday of December 2026 is the 18th; the last Monday is the 28th.
        assert!(
            m("0 10 ? * 6#3 *", &at(2026, 12, 18, 10, 0, 6, 31))
                && !m("0 10 ? * 6#3 *", &at(2026, 12, 11, 10, 0, 6, 31))
        );
        assert!(m("0 10 ? * 2L *", &at(2026, 12, 28, 10, 0, 2, 31)) && !m("0 10 ? * 2L *", &mon(10, 0)));
        assert!(m("5,35 14 * JAN,FEB ? 2026-2030", &at(2027, 2, 1, 14, 35, 2, 28)));
        assert!(!m("5,35 14 * JAN,FEB ? 2026-2030", &at(2031, 2, 1, 14, 35, 7, 28)));
        assert!(cron_matches("0 6 * * *", &mon(6, 0)).is_err());
    }
}
