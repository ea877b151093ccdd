//! The policy file applied over the flags: the effective configuration.
//!
//! The file's `defaults` win over the flags for the keys they set, and its
//! routes come before the `--route` flags (first match wins): the file is what
//! an operator edits live, so an incident edit must not be undone by a stale
//! flag in the pod template. `/config` prints both the precedence and the keys
//! the file took over.

use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;

use super::keys::{self, Scope};
use super::policy_file::{self, Entry, Position, RawRoute};
use super::route::{RouteError, RouteOverride};
use super::{ConcurrencyLimit, Config};
use crate::policy::limits::BulkheadPolicy;

/// Which version of the file is in force.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PolicyVersion {
    pub path: String,
    /// FNV-1a of the file's bytes, in hex: equal files, equal versions.
    pub hash: String,
    /// When it was applied, RFC 3339 (UTC).
    pub loaded_at: String,
}

/// The effective configuration and what the file changed in it.
#[derive(Clone, Debug)]
pub struct Layered {
    pub config: Config,
    pub version: PolicyVersion,
    /// The `defaults` keys the file sets, which win over their flags.
    pub file_keys: Vec<&'static str>,
}

/// Why a policy file cannot be applied; names the file, and where known the
/// line, column and key.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {at}: {message}")]
    At {
        path: String,
        at: Position,
        message: String,
    },
    /// A rule across keys (see `validate`); the message names the route and keys.
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl PolicyError {
    /// The position in the file, when the error has one.
    pub fn position(&self) -> Option<Position> {
        match self {
            PolicyError::At { at, .. } => Some(*at),
            _ => None,
        }
    }
}

/// Reads `path` and applies it over `flags`.
pub fn load(flags: &Config, path: &Path) -> Result<Layered, PolicyError> {
    apply(flags, path, &read(path)?)
}

/// The file's bytes, or why it cannot be read, naming it.
pub fn read(path: &Path) -> Result<Vec<u8>, PolicyError> {
    std::fs::read(path).map_err(|source| PolicyError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Applies the file's `bytes` over `flags`, validated as the flags are.
pub fn apply(flags: &Config, path: &Path, bytes: &[u8]) -> Result<Layered, PolicyError> {
    let name = path.display().to_string();
    let at = |at: Position, message: String| PolicyError::At {
        path: name.clone(),
        at,
        message,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| PolicyError::Invalid {
        path: name.clone(),
        message: format!("not UTF-8 text: {e}"),
    })?;
    let raw = policy_file::read(text).map_err(|e| at(e.at, e.message))?;
    let mut config = flags.clone();
    let mut file_keys = Vec::new();
    let mut defaults = RouteOverride::default();
    for entry in &raw.defaults {
        let Some(key) = keys::policy_key(&entry.key).filter(|k| k.scope == Scope::Everywhere)
        else {
            let hint = if keys::policy_key(&entry.key).is_some()
                || keys::match_key(&entry.key).is_some()
            {
                "is a route key, not a default"
            } else {
                "is not a policy key (listener and process settings stay flags)"
            };
            return Err(at(entry.at, format!("key '{}' {hint}", entry.key)));
        };
        set(&mut defaults, entry).map_err(|e| at(entry.at, e.to_string()))?;
        file_keys.push(key.name);
    }
    apply_defaults(&mut config, &defaults);
    let mut routes = Vec::with_capacity(raw.routes.len() + flags.routes.len());
    for r in &raw.routes {
        routes.push(route(r, &name).map_err(|(pos, e)| at(pos, e))?);
    }
    routes.extend(flags.routes.iter().cloned());
    config.routes = routes;
    config.policy_file = Some(path.to_path_buf());
    config.warnings = config.validate().map_err(|e| PolicyError::Invalid {
        path: name.clone(),
        message: e.to_string(),
    })?;
    Ok(Layered {
        config,
        version: PolicyVersion {
            path: name,
            hash: format!("{:016x}", fnv1a(bytes)),
            loaded_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        },
        file_keys,
    })
}

fn set(route: &mut RouteOverride, entry: &Entry) -> Result<(), RouteError> {
    route.set_key(&entry.key, &entry.value.joined())
}

/// One element of `routes:`, with its origin for later messages.
fn route(raw: &RawRoute, path: &str) -> Result<RouteOverride, (Position, String)> {
    let mut route = RouteOverride {
        origin: Some(format!("{path} line {}, route", raw.at.line)),
        ..RouteOverride::default()
    };
    for entry in &raw.entries {
        if entry.key == "header" {
            return Err((entry.at, "write header conditions under `headers:`".into()));
        }
        set(&mut route, entry).map_err(|e| (entry.at, e.to_string()))?;
    }
    for h in &raw.headers {
        let spec = match &h.value {
            Some(v) => format!("{}:{v}", h.name),
            None => h.name.clone(),
        };
        route
            .set_key("header", &spec)
            .map_err(|e| (h.at, e.to_string()))?;
    }
    route.finish().map_err(|e| (raw.at, e.to_string()))?;
    Ok(route)
}

/// The `defaults` keys over the flags' values: the same merge a route's keys get.
fn apply_defaults(config: &mut Config, d: &RouteOverride) {
    config.timeout = d.timeout.unwrap_or(config.timeout);
    config.connect_timeout = d.connect_timeout.unwrap_or(config.connect_timeout);
    d.apply(&mut config.retry);
    d.limits.apply(
        &mut config.breaker,
        Some(&mut config.bulkhead),
        &mut config.max_ejection_percent,
    );
    d.apply_modes(&mut config.modes);
    config.rate_limit = d.rate.rate_limit.or(config.rate_limit);
    config.hedge_budget = d.hedge_budget.unwrap_or(config.hedge_budget);
    config.hedge = crate::config::HedgePolicy::layered(
        config.hedge,
        d.hedge_after,
        d.hedge_budget,
        config.hedge_budget,
    );
    config.inbound_rate_limit = d.rate.inbound_rate_limit.or(config.inbound_rate_limit);
    let q = &mut config.inbound_queue;
    q.max_queue = d.inbound_max_queue.unwrap_or(q.max_queue);
    q.queue_timeout = d.inbound_queue_timeout.unwrap_or(q.queue_timeout);
    let limit = d.inbound_max_concurrent.or(match config.inbound_bulkhead {
        Some(BulkheadPolicy {
            max_concurrent: ConcurrencyLimit::Fixed(n),
            ..
        }) => u64::try_from(n).ok(),
        _ => None,
    });
    config.inbound_bulkhead = limit.map(|n| BulkheadPolicy::fixed(n, q.max_queue, q.queue_timeout));
}

/// FNV-1a, 64 bits: a version stamp, not a defence against anyone.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn apply_str(text: &str) -> Result<Layered, PolicyError> {
        apply(
            &Config::loopback(),
            Path::new("policy.yaml"),
            text.as_bytes(),
        )
    }

    #[test]
    fn the_file_wins_over_the_flags_and_its_routes_come_first() {
        let mut flags = Config::loopback();
        flags.routes = vec![RouteOverride::parse("reports,timeout=9s").unwrap()];
        let l = apply(
            &flags,
            Path::new("p.yaml"),
            b"defaults:\n  timeout: 2s\n  breaker-mode: observe\nroutes:\n  - name: slow\n    host: reports\n    path-prefix: /slow\n    timeout: 30s\n",
        )
        .unwrap();
        assert_eq!(l.config.timeout, Duration::from_secs(2));
        assert_eq!(l.config.modes.breaker, crate::policy::mode::Mode::Observe);
        assert_eq!(l.file_keys, ["timeout", "breaker-mode"]);
        assert_eq!(l.config.routes.len(), 2);
        assert_eq!(l.config.routes[0].name.as_deref(), Some("slow"));
        assert_eq!(l.version.hash.len(), 16);
        assert!(
            l.version.loaded_at.ends_with('Z'),
            "{}",
            l.version.loaded_at
        );
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        let e = apply_str("defaults:\n  timeout: 2s\n  colour: blue\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("policy.yaml") && e.contains("line 3") && e.contains("colour"),
            "{e}"
        );
        let e = apply_str("routes:\n  - host: a\n    retries: many\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && e.contains("retries"), "{e}");
        let e = apply_str("defaults:\n  inbound-addr: 0.0.0.0:1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a policy key"), "{e}");
        let e = apply_str("routes:\n  - direction: inbound\n    retries: 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("retries") && e.contains("inbound"), "{e}");
        // Cross-field rules run on the file's routes too, naming the line.
        let e = apply_str("routes:\n  - host: api\n    max-concurrent-min: 2000\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2") && e.contains("max-concurrent-min"),
            "{e}"
        );
    }

    #[test]
    fn a_shadowed_route_is_a_warning() {
        let l = apply_str("routes:\n  - host: api\n  - host: api\n    path-prefix: /x\n").unwrap();
        assert!(
            l.config
                .warnings
                .iter()
                .any(|w| w.contains("never matches")),
            "{:?}",
            l.config.warnings
        );
    }
}
