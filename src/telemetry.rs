//! Logging: tracing with JSON or text lines on stdout, filtered by `--log-level`.
//! The access log is the `breakwater::access` target, on whenever `--access-log` is.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Call once, before the runtime starts.
pub fn init(format: LogFormat, level: &str, access_log: bool) -> Result<(), String> {
    let mut filter = EnvFilter::try_new(level).map_err(|e| format!("--log-level: {e}"))?;
    if access_log {
        let directive = "breakwater::access=info"
            .parse()
            .map_err(|e| format!("access log filter: {e}"))?;
        filter = filter.add_directive(directive);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let installed = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    installed.map_err(|e| format!("cannot install the logger: {e}"))
}
