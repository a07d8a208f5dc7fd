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
}
