//! Every policy key, defined once: its name (the flag without `--`, the route
//! key, the policy file's key), its default, and where it applies. The route
//! parser's key list and its errors come from here, and tests check the flags,
//! their env variables, the chart, `inject` and the README against it, so none
//! of them can lack a key or drift to another default.

/// Where a key may be set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// A `run` flag, a policy-file default and a route key.
    Everywhere,
    /// A key of a route only (what it matches, or a per-upstream choice).
    RouteOnly,
}

/// Which listener's routes a key means something on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applies {
    Outbound,
    Inbound,
    Both,
}

/// One policy key.
#[derive(Clone, Copy, Debug)]
pub struct PolicyKey {
    pub name: &'static str,
    /// The flag's default as `--help` prints it; `None`: unset unless given.
    pub default: Option<&'static str>,
    pub scope: Scope,
    pub applies: Applies,
    /// The chart value that sets the flag (`resilience.timeout`), for keys
    /// with a flag; route keys in the chart are the camelCase name.
    pub chart: Option<&'static str>,
    /// A value the key accepts, for tests and examples.
    pub example: &'static str,
}

const fn key(
    name: &'static str,
    default: Option<&'static str>,
    applies: Applies,
    chart: &'static str,
    example: &'static str,
) -> PolicyKey {
    PolicyKey {
        name,
        default,
        scope: Scope::Everywhere,
        applies,
        chart: Some(chart),
        example,
    }
}

const fn route_key(name: &'static str, applies: Applies, example: &'static str) -> PolicyKey {
    PolicyKey {
        name,
        default: None,
        scope: Scope::RouteOnly,
        applies,
        chart: None,
        example,
    }
}

use Applies::{Both, Inbound, Outbound};

/// The keys that say what a route matches; a route has these besides its policy keys.
pub const MATCH_KEYS: &[PolicyKey] = &[
    route_key("name", Both, "reports-slow"),
    route_key("direction", Both, "outbound"),
    route_key("host", Both, "reports"),
    route_key("port", Both, "8080"),
    route_key("path", Both, "/healthz"),
    route_key("path-prefix", Both, "/slow"),
    route_key("method", Both, "GET"),
    route_key("header", Both, "x-canary:1"),
];

/// The policy keys, in the order the README's table lists them.
pub const POLICY_KEYS: &[PolicyKey] = &[
    key("timeout", Some("15s"), Both, "resilience.timeout", "2s"),
    key(
        "connect-timeout",
        Some("1s"),
        Both,
        "resilience.connectTimeout",
        "250ms",
    ),
    route_key("protocol", Outbound, "h2"),
    route_key("tls", Outbound, "true"),
    key("retries", Some("2"), Outbound, "resilience.retries", "1"),
    key(
        "retry-on",
        Some("connect-failure,reset,gateway-error"),
        Outbound,
        "resilience.retryOn",
        "5xx",
    ),
    key(
        "retry-backoff",
        Some("25ms"),
        Outbound,
        "resilience.retryBackoff",
        "10ms",
    ),
    key(
        "retry-backoff-max",
        Some("250ms"),
        Outbound,
        "resilience.retryBackoffMax",
        "1s",
    ),
    key(
        "per-try-timeout",
        None,
        Outbound,
        "resilience.perTryTimeout",
        "500ms",
    ),
    key(
        "retry-budget",
        Some("20"),
        Outbound,
        "resilience.retryBudget",
        "10",
    ),
    key(
        "retry-budget-min",
        Some("10"),
        Outbound,
        "resilience.retryBudgetMin",
        "5",
    ),
    key(
        "retry-body-limit",
        Some("64KiB"),
        Outbound,
        "resilience.retryBodyLimit",
        "1MiB",
    ),
    key(
        "retry-budget-mode",
        Some("enforce"),
        Outbound,
        "resilience.retryBudgetMode",
        "observe",
    ),
    key(
        "hedge-after",
        None,
        Outbound,
        "resilience.hedgeAfter",
        "p95",
    ),
    key(
        "hedge-budget",
        Some("10"),
        Outbound,
        "resilience.hedgeBudget",
        "5",
    ),
    key(
        "breaker-consecutive-failures",
        Some("5"),
        Outbound,
        "breaker.consecutiveFailures",
        "3",
    ),
    key(
        "breaker-failure-rate",
        Some("50"),
        Outbound,
        "breaker.failureRate",
        "25",
    ),
    key(
        "breaker-window",
        Some("10s"),
        Outbound,
        "breaker.window",
        "30s",
    ),
    key(
        "breaker-min-requests",
        Some("20"),
        Outbound,
        "breaker.minRequests",
        "10",
    ),
    key(
        "breaker-open-duration",
        Some("5s"),
        Outbound,
        "breaker.openDuration",
        "1s",
    ),
    key(
        "breaker-half-open-requests",
        Some("1"),
        Outbound,
        "breaker.halfOpenRequests",
        "2",
    ),
    key(
        "breaker-slow-call",
        None,
        Outbound,
        "breaker.slowCall",
        "2s",
    ),
    key(
        "breaker-slow-call-rate",
        Some("100"),
        Outbound,
        "breaker.slowCallRate",
        "80",
    ),
    key(
        "max-ejection-percent",
        Some("50"),
        Outbound,
        "breaker.maxEjectionPercent",
        "100",
    ),
    key(
        "breaker-mode",
        Some("enforce"),
        Outbound,
        "breaker.mode",
        "observe",
    ),
    key(
        "max-concurrent",
        Some("1024"),
        Outbound,
        "bulkhead.maxConcurrent",
        "auto",
    ),
    key(
        "max-concurrent-min",
        Some("4"),
        Outbound,
        "bulkhead.maxConcurrentMin",
        "2",
    ),
    key(
        "max-concurrent-max",
        Some("1024"),
        Outbound,
        "bulkhead.maxConcurrentMax",
        "512",
    ),
    key("max-queue", Some("0"), Outbound, "bulkhead.maxQueue", "16"),
    key(
        "queue-timeout",
        Some("1s"),
        Outbound,
        "bulkhead.queueTimeout",
        "100ms",
    ),
    key(
        "bulkhead-mode",
        Some("enforce"),
        Both,
        "bulkhead.mode",
        "observe",
    ),
    key(
        "inbound-max-concurrent",
        None,
        Inbound,
        "inbound.maxConcurrent",
        "4",
    ),
    key(
        "inbound-max-queue",
        Some("0"),
        Inbound,
        "inbound.maxQueue",
        "8",
    ),
    key(
        "inbound-queue-timeout",
        Some("1s"),
        Inbound,
        "inbound.queueTimeout",
        "500ms",
    ),
    key("rate-limit", None, Outbound, "rateLimit.outbound", "100/20"),
    key(
        "inbound-rate-limit",
        None,
        Inbound,
        "rateLimit.inbound",
        "50",
    ),
    route_key("rate-limit-key", Both, "x-user"),
    key(
        "rate-limit-mode",
        Some("enforce"),
        Both,
        "rateLimit.mode",
        "observe",
    ),
    // Moving and copying traffic, and rehearsing failures: per route only.
    route_key("to", Outbound, "orders:8080"),
    route_key("keep-host", Outbound, "true"),
    route_key("split", Outbound, "orders:8080@10"),
    route_key("split-key", Outbound, "x-user"),
    route_key("mirror", Outbound, "orders:8080@100"),
    route_key("mirror-unsafe", Outbound, "true"),
    route_key("fault-abort", Both, "503@10"),
    route_key("fault-delay", Both, "200ms@10"),
];

/// Keys that mean something only beside another: the key and value an
/// example of `name` needs on its route to be accepted.
pub fn companion(name: &str) -> Option<(&'static str, &'static str)> {
    match name {
        "keep-host" | "mirror-unsafe" => Some(("mirror", "orders:8080@100")),
        "split-key" => Some(("split", "orders:8080@10")),
        _ => None,
    }
}

/// The key named `name`, among the policy keys.
pub fn policy_key(name: &str) -> Option<&'static PolicyKey> {
    POLICY_KEYS.iter().find(|k| k.name == name)
}

/// The key named `name`, among the match keys.
pub fn match_key(name: &str) -> Option<&'static PolicyKey> {
    MATCH_KEYS.iter().find(|k| k.name == name)
}

/// The route keys for an error message: every match and policy key, comma-separated.
pub fn route_keys_list() -> String {
    MATCH_KEYS
        .iter()
        .chain(POLICY_KEYS)
        .map(|k| k.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The keys a policy file's `defaults:` may hold: those that are also flags.
pub fn default_keys() -> impl Iterator<Item = &'static PolicyKey> {
    POLICY_KEYS.iter().filter(|k| k.scope == Scope::Everywhere)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_flag_shaped() {
        let mut seen = std::collections::HashSet::new();
        for k in MATCH_KEYS.iter().chain(POLICY_KEYS) {
            assert!(seen.insert(k.name), "{} twice", k.name);
            assert!(
                k.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
                "{}",
                k.name
            );
            assert_eq!(
                k.chart.is_some(),
                k.scope == Scope::Everywhere,
                "{}",
                k.name
            );
        }
    }
}
