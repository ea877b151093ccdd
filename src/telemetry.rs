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

fn build_filter(level: &str, access_log: bool) -> Result<EnvFilter, LogError> {
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
