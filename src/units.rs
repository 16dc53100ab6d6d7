//! Durations and memory sizes as people write them, parsed in one place: `gc --grace`, a stage's `resources.time`
//! and `resources.memory` all go through here, so "45" cannot mean seconds in one place and minutes in another.
//!
//! Units are required (a bare number is an error naming the units), arithmetic is checked, and values are bounded so
//! that no scheduler field overflows: durations at most [`MAX_DURATION`] (10 years; AWS Batch's timeout is a 32-bit
//! count of seconds), memory at most [`MAX_MEMORY_MIB`] (1 PiB).

use std::time::Duration;

/// The longest duration accepted anywhere: 3650 days.
pub const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);
/// The largest memory request accepted: 1 PiB, in MiB.
pub const MAX_MEMORY_MIB: u64 = 1 << 30;

/// What [`parse_duration`] accepts, for error messages.
pub const DURATION_FORMS: &str = "a number with a unit (s, m, h or d), or several such as 1h30m";

/// Parses `90s`, `30m`, `24h`, `7d`, `1h30m`, `0s`. Every number carries its unit; the total is at most
/// [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("expected a duration, {DURATION_FORMS}; got an empty string"));
    }
    if t.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("\"{s}\" has no unit: write e.g. {t}s, {t}m or {t}h ({DURATION_FORMS})"));
    }
    let too_long = || format!("\"{s}\" is longer than the limit of {} days", MAX_DURATION.as_secs() / 86_400);
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit: u64 = match c {
            'd' => 86_400,
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(format!("\"{s}\": unknown unit `{c}` ({DURATION_FORMS})")),
        };
        if num.is_empty() {
            return Err(format!("\"{s}\": unit `{c}` without a number before it ({DURATION_FORMS})"));
        }
        // Digits only, so a parse failure is an overflow of u64.
        let n: u64 = num.parse().map_err(|_| too_long())?;
        num.clear();
        total = n.checked_mul(unit).and_then(|x| total.checked_add(x)).ok_or_else(too_long)?;
        if total > MAX_DURATION.as_secs() {
            return Err(too_long());
        }
    }
    if !num.is_empty() {
        return Err(format!("\"{s}\": the last number `{num}` has no unit ({DURATION_FORMS})"));
    }
    Ok(Duration::from_secs(total))
}

/// What [`parse_memory_mib`] accepts, for error messages.
pub const MEMORY_FORMS: &str = "a size with a unit such as 512M, 4G, 1.5GiB or 1T";

/// Parses `512M`, `4G`, `4Gi`, `2GB`, `1.5G`, `1T`, `1048576K` into MiB, rounded up; at least 1 MiB, at most
/// [`MAX_MEMORY_MIB`].
pub fn parse_memory_mib(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!("\"{s}\": expected {MEMORY_FORMS}"));
    }
    let n: f64 = num.parse().map_err(|_| format!("\"{s}\": expected {MEMORY_FORMS}"))?;
    let u = unit.trim().to_ascii_uppercase();
    let u = u.strip_suffix('B').unwrap_or(&u);
    let u = u.strip_suffix('I').unwrap_or(u);
    let factor = match u {
        "K" => 1.0 / 1024.0,
        "M" => 1.0,
        "G" => 1024.0,
        "T" => 1024.0 * 1024.0,
        "P" => 1024.0 * 1024.0 * 1024.0,
        "" => return Err(format!("\"{s}\" has no unit: write e.g. {num}M or {num}G ({MEMORY_FORMS})")),
        _ => return Err(format!("\"{s}\": unknown unit `{}` ({MEMORY_FORMS})", unit.trim())),
    };
    let mib = (n * factor).ceil();
    if !mib.is_finite() || mib > MAX_MEMORY_MIB as f64 {
        return Err(format!("\"{s}\" is more than the limit of 1P"));
    }
    if mib < 1.0 {
        return Err(format!("\"{s}\": must be at least 1M"));
    }
    Ok(mib as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_units_and_stay_in_range() {
        assert_eq!(parse_duration("24h").unwrap().as_secs(), 86_400);
        assert_eq!(parse_duration("0s").unwrap().as_secs(), 0);
        assert_eq!(parse_duration("1h30m").unwrap().as_secs(), 5400);
        assert_eq!(parse_duration(" 7d ").unwrap().as_secs(), 7 * 86_400);
        assert_eq!(parse_duration("3650d").unwrap(), MAX_DURATION);
        for bad in ["", "45", "5x", "h", "1h30", "2 weeks", "-1s", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_duration("45").unwrap_err().contains("no unit"));
        for huge in ["3651d", "1000000000000000s", "999999999999999d", "99999999999999999999999999s"] {
            assert!(parse_duration(huge).unwrap_err().contains("longer than the limit"), "{huge}");
        }
    }

    #[test]
    fn memory_sizes_need_units_and_stay_in_range() {
        assert_eq!(parse_memory_mib("4G").unwrap(), 4096);
        assert_eq!(parse_memory_mib("512Mi").unwrap(), 512);
        assert_eq!(parse_memory_mib("1.5GB").unwrap(), 1536);
        assert_eq!(parse_memory_mib("1T").unwrap(), 1 << 20);
        assert_eq!(parse_memory_mib("1500K").unwrap(), 2);
        for bad in ["lots", "1024", "", "G", "4X", "0M", "1e400G", "99999999999999999999T"] {
            assert!(parse_memory_mib(bad).is_err(), "{bad}");
        }
    }
}
