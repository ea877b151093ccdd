//! Logging: tracing with JSON or text lines on stdout, filtered by `--log-level`
//! and changeable at run time (`PUT /log-level`). The access log is the
//! `breakwater::access` target, on whenever `--access-log` is.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

/// `--log-format`: how log lines are written on stdout.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

/// Swaps the live filter; set once by [`init`].
struct FilterControl {
    handle: reload::Handle<EnvFilter, Registry>,
    access_log: bool,
}

static CONTROL: OnceLock<FilterControl> = OnceLock::new();

/// Why the logger could not be installed or its filter changed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot install the logger: {0}")]
    Install(tracing_subscriber::util::TryInitError),
    #[error("this process did not install breakwater's logger")]
    NotInstalled,
    #[error("cannot change the log filter: {0}")]
    Reload(reload::Error),
    #[error(
        "'{0}' is not a log level (off, error, warn, info, debug, trace) or \
         TARGET=LEVEL directives (info,breakwater::listener=debug)"
    )]
    Level(String),
    #[error("invalid log filter '{level}': {source}")]
    Filter {
        level: String,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("access log filter: {0}")]
    AccessLog(tracing_subscriber::filter::ParseError),
}

/// Installs the global subscriber. Call once, before the runtime starts.
pub fn init(format: LogFormat, level: &str, access_log: bool) -> Result<(), LogError> {
    let (filter, handle) = reload::Layer::new(build_filter(level, access_log)?);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stdout),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
                    .with_writer(std::io::stdout),
            )
            .try_init(),
    };
    installed.map_err(LogError::Install)?;
    let _ = CONTROL.set(FilterControl { handle, access_log });
    Ok(())
}

/// Replaces the log filter (same syntax as `--log-level`).
pub fn set_filter(level: &str) -> Result<(), LogError> {
    let control = CONTROL.get().ok_or(LogError::NotInstalled)?;
    let filter = build_filter(level, control.access_log)?;
    control.handle.reload(filter).map_err(LogError::Reload)
}

/// The levels `--log-level` takes, alone or after `TARGET=` (tracing's
/// numbers 0 to 5 too); the chart's schema holds the same list.
pub const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// A `--log-level` filter, checked as [`init`] and `PUT /log-level` check it.
pub fn parse_log_level(filter: &str) -> Result<String, LogError> {
    build_filter(filter, false)?;
    Ok(filter.into())
}

/// A comma list of levels and `TARGET=LEVEL` directives. Stricter than
/// tracing's own grammar on purpose: it takes a bare word like `verbose` as a
/// target at every level, so a typo of a level would silence breakwater's logs.
fn check_directives(filter: &str) -> Result<(), LogError> {
    let is_level = |l: &str| {
        LOG_LEVELS.iter().any(|w| w.eq_ignore_ascii_case(l))
            || matches!(l, "0" | "1" | "2" | "3" | "4" | "5")
    };
    let is_target = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-'))
    };
    let ok = filter.split(',').all(|d| match d.split_once('=') {
        Some((target, level)) => is_target(target) && is_level(level),
        None => is_level(d),
    });
    if ok {
        Ok(())
    } else {
        Err(LogError::Level(filter.into()))
    }
}

fn build_filter(level: &str, access_log: bool) -> Result<EnvFilter, LogError> {
    check_directives(level)?;
    let mut filter = EnvFilter::try_new(level).map_err(|source| LogError::Filter {
        level: level.into(),
        source,
    })?;
    if access_log {
        let directive = "breakwater::access=info"
            .parse()
            .map_err(LogError::AccessLog)?;
        filter = filter.add_directive(directive);
    }
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels_are_levels_or_directives_with_a_level() {
        for good in [
            "info",
            "DEBUG",
            "off",
            "3",
            "info,breakwater::listener=debug",
            "breakwater=trace",
        ] {
            assert_eq!(parse_log_level(good).ok().as_deref(), Some(good), "{good}");
        }
        for bad in [
            "",
            "verbose",
            "breakwater",
            "info,",
            "breakwater=loud",
            "=debug",
            "6",
            "+3",
            "info;debug",
            "warn, hyper=info",
            "a b=info",
            "breakwater[span]=debug",
        ] {
            let e = parse_log_level(bad).expect_err(bad);
            assert!(e.to_string().contains("is not a log level"), "{bad}: {e}");
        }
    }
}
