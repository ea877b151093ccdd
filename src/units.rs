//! Parsers for the human-readable values flags take: durations and byte sizes.

use std::time::Duration;

/// The longest duration any flag takes. Far beyond any sensible timeout, and
/// short enough that adding it to a clock reading can never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why a flag's value is not a duration, size, percentage or rate.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum UnitError {
    #[error("{0} (expected e.g. 250ms, 2s, 1m)")]
    Duration(humantime::DurationError),
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

/// `250ms`, `2s`, `1m`: humantime's grammar, which the chart and README use; at
/// most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let d = humantime::parse_duration(s.trim()).map_err(UnitError::Duration)?;
    if d > MAX_DURATION {
        return Err(UnitError::TooLong(s.trim().into()));
    }
    Ok(d)
}

/// A positive duration: zero would make a timeout fire before any work starts.
pub fn parse_positive_duration(s: &str) -> Result<Duration, UnitError> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(UnitError::Zero);
    }
    Ok(d)
}

/// `65536`, `64KiB`, `64k`, `1MiB`: plain bytes or binary multiples.
pub fn parse_bytes(s: &str) -> Result<usize, UnitError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: usize = digits.parse().map_err(|_| UnitError::NotASize(s.into()))?;
    let multiplier = match unit.trim().to_ascii_lowercase().as_str() {
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
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_positive_duration("0s").is_err());
        assert_eq!(parse_duration("365d"), Ok(MAX_DURATION));
        assert!(parse_duration("366d").is_err());
        assert!(parse_duration("18446744073709551615s").is_err());
    }

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_bytes("8192"), Ok(8192));
        assert_eq!(parse_bytes("64KiB"), Ok(65536));
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("").is_err());
    }
}
