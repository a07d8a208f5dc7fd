//! RFC 3339 times to milliseconds since the epoch (for `wait` tasks' `sleep.until`), without
//! a calendar crate: `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.

use super::state::Millis;

/// Milliseconds since the epoch of an RFC 3339 time (`2026-12-01T09:00:00Z`,
/// `2026-12-01T10:00:00.5+01:00`, a space for the `T`).
pub fn parse_rfc3339(s: &str) -> Result<Millis, String> {
    let bad = || format!("`{s}` is not an RFC 3339 time (like 2026-12-01T09:00:00Z)");
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<i64>().ok()).ok_or_else(bad);
    let (y, mo, d, h, mi, sec) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return Err(bad());
    }
    let mut rest = &s[19..];
    let mut ms = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let f = &frac[..digits.min(3)];
        ms = f.parse::<i64>().map_err(|_| bad())? * 10i64.pow(3 - f.len() as u32);
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let hh: i64 = o[1..3].parse().map_err(|_| bad())?;
            let mm: i64 = o[4..6].parse().map_err(|_| bad())?;
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (hh * 60 + mm)
        }
        _ => return Err(bad()),
    };
    // Days from 1970-01-01 (Howard Hinnant's `days_from_civil`).
    let (y, m) = if mo <= 2 { (y - 1, mo + 9) } else { (y, mo - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let t = ((days * 24 + h) * 60 + mi - offset_min) * 60_000 + sec * 1000 + ms;
    u64::try_from(t).map_err(|_| format!("`{s}` is before 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_read_as_epoch_milliseconds() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("2026-12-01T00:00:00Z"), Ok(1_796_083_200_000));
        assert_eq!(parse_rfc3339("2026-12-01T01:00:00.250+01:00"), Ok(1_796_083_200_250));
        assert_eq!(parse_rfc3339("2000-02-29 12:00:00-00:30"), Ok(951_827_400_000));
        for bad in
            ["tomorrow", "2026-13-01T00:00:00Z", "2026-12-01T00:00:00", "2026-12-01T00:00:00.Z", "1969-12-31T23:59:59Z"]
        {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }
}
