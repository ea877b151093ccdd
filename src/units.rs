//! Parsers for the human-readable values flags take: durations and byte sizes.
//!
//! Both grammars are regular on purpose: the chart's values.schema.json holds
//! the same grammars as patterns (its `definitions`), and a test feeds both the
//! same values, so a value the chart lets through is one the binary starts with.

use std::time::Duration;

/// The longest duration any flag takes. Far beyond any sensible timeout, and
/// short enough that adding it to a clock reading can never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why a flag's value is not a duration, size, percentage or rate.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum UnitError {
    #[error("'{0}' is not a duration (expected e.g. 250ms, 2s, 1m30s)")]
    NotADuration(String),
    #[error("'{0}' needs a unit (e.g. {0}s or {0}ms)")]
    NoUnit(String),
    #[error(
        "unknown unit '{0}' (use ns, us, ms, s, m, h, d, w, M or y, or their long \
         names: sec, min, hours, days, ...)"
    )]
    DurationUnit(String),
    #[error("{unit} takes at most {places} decimals (whole nanoseconds)")]
    Decimals { unit: String, places: usize },
    #[error("'{0}' is longer than 365 days")]
    TooLong(String),
    #[error("must be greater than zero")]
    Zero,
    #[error("'{0}' is not a size (expected e.g. 8192, 64KiB, 1MiB)")]
    NotASize(String),
    #[error("unknown size unit '{0}' (use KiB or MiB)")]
    SizeUnit(String),
    #[error("'{0}' is too large")]
    TooLarge(String),
    #[error("'{0}' is not a percentage")]
    NotAPercentage(String),
    #[error("must be between 0 and 1000")]
    PercentRange,
    #[error("'{0}' is not a whole number >= 0")]
    NotACount(String),
    #[error("must be below 1000000")]
    PerSecondRange,
}

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Every unit a duration may be written in, with its length in nanoseconds:
/// humantime's names and lengths (a month is 30.44 days, a year 365.25), so
/// that what [`format_duration`] writes parses back.
pub const DURATION_UNITS: &[(&[&str], u128)] = &[
    (&["ns", "nsec", "nanos"], 1),
    (&["us", "usec", "µs"], 1_000),
    (&["ms", "msec", "millis"], 1_000_000),
    (&["s", "sec", "secs", "second", "seconds"], NANOS_PER_SEC),
    (
        &["m", "min", "mins", "minute", "minutes"],
        60 * NANOS_PER_SEC,
    ),
    (&["h", "hr", "hrs", "hour", "hours"], 3_600 * NANOS_PER_SEC),
    (&["d", "day", "days"], 86_400 * NANOS_PER_SEC),
    (
        &["w", "wk", "wks", "week", "weeks"],
        604_800 * NANOS_PER_SEC,
    ),
    (&["M", "month", "months"], 2_630_016 * NANOS_PER_SEC),
    (
        &["y", "yr", "yrs", "year", "years"],
        31_557_600 * NANOS_PER_SEC,
    ),
];

/// `250ms`, `2s`, `1m30s`, `1.5h`, `1h 30m`, or `0`: numbers each with a unit
/// of [`DURATION_UNITS`] (spaces allowed before a unit and between parts),
/// decimals down to whole nanoseconds, at most [`MAX_DURATION`]. Stricter than
/// humantime on purpose (no `1 0s` for 10s, no tabs inside, no decimal it
/// would round away): the chart's schema holds this grammar as a pattern, so
/// both must refuse the same values.
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let value = s.trim_ascii();
    if value == "0" {
        return Ok(Duration::ZERO);
    }
    if value.is_empty() {
        return Err(UnitError::NotADuration(value.into()));
    }
    let too_long = || UnitError::TooLong(value.into());
    let mut total: u128 = 0;
    let mut rest = value;
    while !rest.is_empty() {
        let (nanos, after) = part(value, rest)?;
        total = total.checked_add(nanos).ok_or_else(too_long)?;
        rest = after.trim_start_matches(' ');
    }
    if total > MAX_DURATION.as_nanos() {
        return Err(too_long());
    }
    let secs = u64::try_from(total / NANOS_PER_SEC).map_err(|_| too_long())?;
    let nanos = u32::try_from(total % NANOS_PER_SEC).map_err(|_| too_long())?;
    Ok(Duration::new(secs, nanos))
}

/// The first part of `rest` (a number and its unit) in nanoseconds, and what
/// follows it; `value` is the whole duration, for the errors.
fn part<'a>(value: &str, rest: &'a str) -> Result<(u128, &'a str), UnitError> {
    let bad = || UnitError::NotADuration(value.into());
    let leading = |s: &str, f: fn(char) -> bool| s.len() - s.trim_start_matches(f).len();
    let (whole, after) = rest.split_at(leading(rest, |c| c.is_ascii_digit()));
    if whole.is_empty() {
        return Err(bad());
    }
    let (fraction, after) = match after.strip_prefix('.') {
        Some(f) => match f.split_at(leading(f, |c| c.is_ascii_digit())) {
            ("", _) => return Err(bad()), // `1.s`: a point without decimals
            split => split,
        },
        None => ("", after),
    };
    let number = &rest[..rest.len() - after.len()];
    let after = after.trim_start_matches(' ');
    let (unit, after) = after.split_at(leading(after, |c| c.is_ascii_alphabetic() || c == 'µ'));
    if unit.is_empty() {
        let next_part = after.is_empty() || after.starts_with(|c: char| c.is_ascii_digit());
        return Err(if next_part {
            UnitError::NoUnit(number.into())
        } else {
            bad()
        });
    }
    // What follows a part is the next one (after spaces), or nothing.
    let next = after.trim_start_matches(' ');
    if !next.is_empty() && !next.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(bad());
    }
    let nanos = DURATION_UNITS
        .iter()
        .find(|(names, _)| names.contains(&unit))
        .map(|(_, nanos)| *nanos)
        .ok_or_else(|| UnitError::DurationUnit(unit.into()))?;
    let places = (nanos.ilog10() as usize).min(9);
    if fraction.len() > places {
        return Err(UnitError::Decimals {
            unit: unit.into(),
            places,
        });
    }
    let too_long = || UnitError::TooLong(value.into());
    // More than 20 digits is far past the cap, and past u128 arithmetic.
    if whole.len() > 20 {
        return Err(too_long());
    }
    let whole: u128 = whole.parse().map_err(|_| bad())?;
    let fraction: u128 = match fraction {
        "" => 0,
        f => f.parse::<u128>().map_err(|_| bad())? * (nanos / 10u128.pow(f.len() as u32)),
    };
    let nanos = whole
        .checked_mul(nanos)
        .and_then(|n| n.checked_add(fraction))
        .ok_or_else(too_long)?;
    Ok((nanos, after))
}

/// A positive duration: zero would make a timeout fire before any work starts.
pub fn parse_positive_duration(s: &str) -> Result<Duration, UnitError> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(UnitError::Zero);
    }
    Ok(d)
}

/// `65536`, `64KiB`, `64k`, `1MiB`: plain bytes or binary multiples, the unit
/// in any case, spaces allowed before it (the chart's schema holds this grammar).
pub fn parse_bytes(s: &str) -> Result<usize, UnitError> {
    let s = s.trim_ascii();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: usize = match digits {
        "" => return Err(UnitError::NotASize(s.into())),
        d => d.parse().map_err(|_| UnitError::TooLarge(s.into()))?,
    };
    let multiplier = match unit.trim_start_matches(' ').to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        other => return Err(UnitError::SizeUnit(other.into())),
    };
    n.checked_mul(multiplier)
        .ok_or_else(|| UnitError::TooLarge(s.into()))
}

/// Serializes a duration as the flags take it (`250ms`), for `/config`.
pub fn serialize_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

/// [`serialize_duration`] for an optional duration (`null` when unset).
pub fn serialize_opt_duration<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => serialize_duration(d, s),
        None => s.serialize_none(),
    }
}

/// A percentage from 0 to 1000 (a retry budget may allow more retries than requests).
pub fn parse_percent(s: &str) -> Result<f32, UnitError> {
    let p: f32 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| UnitError::NotAPercentage(s.into()))?;
    if !(0.0..=1000.0).contains(&p) {
        return Err(UnitError::PercentRange);
    }
    Ok(p)
}

/// A count of retries per second, below what the budget's arithmetic can hold.
pub fn parse_per_second(s: &str) -> Result<u32, UnitError> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| UnitError::NotACount(s.into()))?;
    if n >= 1_000_000 {
        return Err(UnitError::PerSecondRange);
    }
    Ok(n)
}

/// Formats a duration the way the flags take it, for `/config` and logs.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_human_readable() {
        let ms = Duration::from_millis;
        for (text, want) in [
            ("250ms", ms(250)),
            ("1m", ms(60_000)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("1.5s", ms(1500)),
            ("1h30m", ms(5_400_000)),
            ("1h 30m", ms(5_400_000)),
            ("5 min", ms(300_000)),
            (" 2s\n", ms(2000)),
            ("1.5h", ms(5_400_000)),
            ("0.000000001s", Duration::from_nanos(1)),
            ("1.5us", Duration::from_nanos(1500)),
            ("7µs", Duration::from_micros(7)),
            ("1M", Duration::from_secs(2_630_016)),
            ("365d", MAX_DURATION),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn durations_refuse_what_the_chart_refuses() {
        for (text, why) in [
            ("", "'' is not a duration"),
            ("2x", "unknown unit 'x'"),
            ("fast", "'fast' is not a duration"),
            ("10", "'10' needs a unit"),
            ("1h30", "'30' needs a unit"),
            ("1 0s", "'1' needs a unit"),
            ("-1s", "is not a duration"),
            ("+1s", "is not a duration"),
            ("1.s", "is not a duration"),
            (".5s", "is not a duration"),
            ("1h\t30m", "is not a duration"),
            ("1s,", "is not a duration"),
            ("1S", "unknown unit 'S'"),
            ("1.5ns", "ns takes at most 0 decimals"),
            ("1.0000001ms", "ms takes at most 6 decimals"),
            ("1.0000000001h", "h takes at most 9 decimals"),
            ("366d", "longer than 365 days"),
            ("1y", "longer than 365 days"),
            ("18446744073709551615s", "longer than 365 days"),
            ("999999999999999999999999s", "longer than 365 days"),
        ] {
            let e = parse_duration(text).expect_err(text).to_string();
            assert!(e.contains(why), "{text:?}: {e}");
        }
        assert_eq!(parse_positive_duration("0.0s"), Err(UnitError::Zero));
        assert_eq!(parse_positive_duration("0"), Err(UnitError::Zero));
        assert!(parse_positive_duration("0s 1ns").is_ok());
    }

    #[test]
    fn formatted_durations_parse_back() {
        for d in [
            Duration::from_nanos(1),
            Duration::from_millis(1500),
            Duration::from_secs(5_400),
            Duration::new(30_000_000, 123_456_789),
            MAX_DURATION,
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{d:?}");
        }
    }

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_bytes("8192"), Ok(8192));
        assert_eq!(parse_bytes("64KiB"), Ok(65536));
        assert_eq!(parse_bytes("64 kib"), Ok(65536));
        assert_eq!(parse_bytes("16k"), Ok(16384));
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("1GiB").is_err());
        assert!(parse_bytes("1.5KiB").is_err());
        assert!(parse_bytes("64\tKiB").is_err());
        assert_eq!(
            parse_bytes("99999999999999999999999"),
            Err(UnitError::TooLarge("99999999999999999999999".into()))
        );
    }
}
