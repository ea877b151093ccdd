//! Cross-field rules: values that parse one by one but cannot work together.
//!
//! They are checked on the global flags and on each `--route` merged over them
//! (the policy its destination really gets), so `run --check` refuses what the
//! proxy could not serve, and each message names the route and both keys. A
//! combination that works but is pointless is a warning, not an error, as in
//! Envoy (a per-try timeout longer than the overall one simply never fires).

use std::fmt::Display;
use std::time::Duration;

use super::{BreakerConfig, BulkheadPolicy, Config, ConfigError, RetryPolicy, RouteOverride};
use crate::units::format_duration;

/// The policy of one scope: the flags alone, or a route merged over them.
struct Effective {
    timeout: Duration,
    retry: RetryPolicy,
    breaker: BreakerConfig,
    bulkhead: BulkheadPolicy,
}

impl Effective {
    fn of_flags(config: &Config) -> Self {
        Effective {
            timeout: config.timeout,
            retry: config.retry.clone(),
            breaker: config.breaker,
            bulkhead: config.bulkhead,
        }
    }

    /// The same merge as the route table's, so that what is checked is what runs.
    fn of_route(config: &Config, route: &RouteOverride) -> Self {
        let mut p = Effective::of_flags(config);
        p.timeout = route.timeout.unwrap_or(p.timeout);
        route.apply(&mut p.retry);
        let mut ejection = config.max_ejection_percent;
        route
            .limits
            .apply(&mut p.breaker, Some(&mut p.bulkhead), &mut ejection);
        p
    }
}

/// Where a value comes from, to name its key the way the user wrote it.
enum Scope<'a> {
    Flags,
    Route(&'a RouteOverride),
}

impl Scope<'_> {
    /// `--key (value)` for a flag; `key (value)` for a route's own key, and
    /// `key (value, from --key)` for one the route inherits.
    fn key(&self, key: &str, value: impl Display) -> String {
        match self {
            Scope::Flags => format!("--{key} ({value})"),
            Scope::Route(route) if route.sets(key) => format!("{key} ({value})"),
            Scope::Route(_) => format!("{key} ({value}, from --{key})"),
        }
    }

    fn say(&self, text: String) -> String {
        match self {
            Scope::Flags => text,
            Scope::Route(route) => format!(
                "{} {}: {text}",
                route.origin.as_deref().unwrap_or("--route"),
                route.label()
            ),
        }
    }
}

/// Checks the flags, then every route over them; returns the warnings.
pub fn check(config: &Config) -> Result<Vec<String>, ConfigError> {
    let mut warnings = Vec::new();
    rules(&Scope::Flags, &Effective::of_flags(config), &mut warnings)?;
    let mut names = std::collections::HashMap::new();
    for (i, route) in config.routes.iter().enumerate() {
        let policy = Effective::of_route(config, route);
        let scope = Scope::Route(route);
        rules(&scope, &policy, &mut warnings)?;
        // The name is the `route` label and the key of learned state.
        if let Some(name) = &route.name
            && let Some(earlier) = names.insert(name.clone(), i)
        {
            return Err(ConfigError::Conflict(scope.say(format!(
                "the name is also route {}'s; give each route its own `name`",
                earlier + 1
            ))));
        }
        rate_limit_key_rules(config, route, &scope, &mut warnings)?;
        for (key, dest) in route.traffic.destinations() {
            if let Some(listener) = own_listener(config, dest) {
                return Err(ConfigError::Conflict(scope.say(format!(
                    "{key} ({dest}) is breakwater's own {listener} listener: \
                     the request would come back to it"
                ))));
            }
        }
        if let Some(first) = config.routes[..i].iter().find(|r| r.shadows(route)) {
            warnings.push(scope.say(format!(
                "never matches: {} {} matches every request it would",
                first.origin.as_deref().unwrap_or("--route"),
                first.label()
            )));
        }
    }
    Ok(warnings)
}

/// `rate-limit-key`: `identity` is the inbound client's (outbound requests
/// come from the app, which has none); a key on a route without a limit, or
/// `identity` without client certificates, works but keys nothing.
fn rate_limit_key_rules(
    config: &Config,
    route: &RouteOverride,
    scope: &Scope<'_>,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    use crate::policy::rate_limit::LimitKey;
    let Some(key) = &route.rate.rate_limit_key else {
        return Ok(());
    };
    let inbound = route.direction == super::RouteDirection::Inbound;
    if *key == LimitKey::Identity && !inbound {
        return Err(ConfigError::Conflict(
            scope.say(
                "rate-limit-key (identity) is the client certificate's identity, which only \
             inbound requests have; key outbound limits by a header"
                    .into(),
            ),
        ));
    }
    let limited = if inbound {
        route.rate.inbound_rate_limit.or(config.inbound_rate_limit)
    } else {
        route.rate.rate_limit.or(config.rate_limit)
    };
    if limited.is_none() {
        let limit = if inbound {
            "inbound-rate-limit"
        } else {
            "rate-limit"
        };
        warnings.push(scope.say(format!(
            "rate-limit-key has no {limit} to key: requests are not limited"
        )));
    }
    let verified = config
        .inbound_tls
        .as_ref()
        .is_some_and(|t| t.client_ca.is_some());
    if *key == LimitKey::Identity && !verified {
        warnings.push(
            scope.say(
                "rate-limit-key (identity) without --inbound-tls-client-ca: no client has an \
             identity, so all share one bucket"
                    .into(),
            ),
        );
    }
    Ok(())
}

/// Which of breakwater's listeners `dest` names, if any: its port, on a
/// loopback, unspecified or the listener's own address (or `localhost`).
fn own_listener(config: &Config, dest: &crate::addr::Destination) -> Option<&'static str> {
    let listeners = [
        ("outbound", config.outbound_addr),
        ("inbound", config.inbound_addr),
        ("admin", config.admin_addr),
    ];
    let ip = dest.host().parse::<std::net::IpAddr>().ok();
    listeners.into_iter().find_map(|(name, addr)| {
        let local = match ip {
            Some(ip) => ip.is_loopback() || ip.is_unspecified() || ip == addr.ip(),
            None => dest.host().eq_ignore_ascii_case("localhost"),
        };
        (local && dest.port() == addr.port()).then_some(name)
    })
}

fn rules(scope: &Scope<'_>, p: &Effective, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
    let conflict = |text: String| Err(ConfigError::Conflict(scope.say(text)));
    let d = |d: Duration| format_duration(d);
    let q = &p.bulkhead;
    if q.min == 0 {
        return conflict(format!(
            "{} must be at least 1",
            scope.key("max-concurrent-min", q.min)
        ));
    }
    if q.min > q.max {
        return conflict(format!(
            "{} is greater than {}",
            scope.key("max-concurrent-min", q.min),
            scope.key("max-concurrent-max", q.max)
        ));
    }
    let r = &p.retry;
    if r.backoff > r.backoff_max {
        return conflict(format!(
            "{} is greater than {}",
            scope.key("retry-backoff", d(r.backoff)),
            scope.key("retry-backoff-max", d(r.backoff_max))
        ));
    }
    if p.breaker.half_open_requests == 0 {
        return conflict(format!(
            "{} must be at least 1: a half-open circuit closes after that many probes succeed",
            scope.key("breaker-half-open-requests", 0)
        ));
    }
    if let Some(per_try) = r.per_try_timeout
        && per_try > p.timeout
    {
        warnings.push(scope.say(format!(
            "{} is longer than {}, so only the overall timeout applies",
            scope.key("per-try-timeout", d(per_try)),
            scope.key("timeout", d(p.timeout))
        )));
    }
    if r.retries > 0 && r.budget_percent == 0.0 && r.budget_min_per_sec == 0 {
        warnings.push(scope.say(format!(
            "{} never happen: {} and {} allow none",
            scope.key("retries", r.retries),
            scope.key("retry-budget", r.budget_percent),
            scope.key("retry-budget-min", 0)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::cli;

    /// `run ARGS` through the whole of start-up validation: the error, or the warnings.
    fn check(args: &[&str]) -> Result<Vec<String>, String> {
        let args = cli::parse_run_args(args).map_err(|e| e.to_string())?;
        super::Config::from_args(args)
            .map(|c| c.warnings)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn an_identity_key_is_inbound_only() {
        let args = ["--route", "api,rate-limit=10,rate-limit-key=identity"];
        match check(&args) {
            Ok(_) => panic!("{args:?} was accepted"),
            Err(e) => assert!(e.contains("only inbound requests have"), "{e}"),
        }
    }

    #[track_caller]
    fn refused(args: &[&str], expected: &str) {
        match check(args) {
            Ok(_) => panic!("{args:?} was accepted"),
            Err(e) => assert_eq!(e, expected, "{args:?}"),
        }
    }

    #[test]
    fn bulkhead_bounds_must_hold_in_the_flags_and_each_route() {
        refused(
            &["--max-concurrent-min=2000"],
            "--max-concurrent-min (2000) is greater than --max-concurrent-max (1024)",
        );
        refused(
            &["--route=api,max-concurrent=auto,max-concurrent-min=2000"],
            "--route api: max-concurrent-min (2000) is greater than \
             max-concurrent-max (1024, from --max-concurrent-max)",
        );
        refused(
            &["--route=api:8080,max-concurrent-min=20,max-concurrent-max=10"],
            "--route api:8080: max-concurrent-min (20) is greater than max-concurrent-max (10)",
        );
        refused(
            &["--max-concurrent-min=8", "--route=api,max-concurrent-max=5"],
            "--route api: max-concurrent-min (8, from --max-concurrent-min) is greater than \
             max-concurrent-max (5)",
        );
        refused(
            &["--route=api,max-concurrent-min=0"],
            "--route api: max-concurrent-min (0) must be at least 1",
        );
        refused(
            &["--max-concurrent-min=0"],
            "--max-concurrent-min (0) must be at least 1",
        );
        assert!(
            check(&[
                "--route=api,max-concurrent=auto,max-concurrent-min=2000,max-concurrent-max=4000"
            ])
            .is_ok()
        );
    }

    #[test]
    fn backoff_must_not_exceed_its_cap() {
        refused(
            &["--retry-backoff=1s"],
            "--retry-backoff (1s) is greater than --retry-backoff-max (250ms)",
        );
        refused(
            &["--route=api,retry-backoff=2s"],
            "--route api: retry-backoff (2s) is greater than \
             retry-backoff-max (250ms, from --retry-backoff-max)",
        );
        refused(
            &[
                "--retry-backoff-max=2s",
                "--route=api,retry-backoff-max=10ms",
            ],
            "--route api: retry-backoff (25ms, from --retry-backoff) is greater than \
             retry-backoff-max (10ms)",
        );
        assert!(check(&["--route=api,retry-backoff=2s,retry-backoff-max=2s"]).is_ok());
    }

    #[test]
    fn half_open_probes_must_be_at_least_one() {
        // The route key is refused as it is parsed, like the flag.
        let e = check(&["--route=api,breaker-half-open-requests=0"]).unwrap_err();
        assert!(e.contains("breaker-half-open-requests"), "{e}");
        assert!(check(&["--breaker-half-open-requests=0"]).is_err());
    }

    #[test]
    fn a_per_try_timeout_beyond_the_timeout_is_a_warning() {
        let w = check(&["--per-try-timeout=20s"]).unwrap();
        assert_eq!(
            w,
            ["--per-try-timeout (20s) is longer than --timeout (15s), \
              so only the overall timeout applies"]
        );
        let w = check(&["--per-try-timeout=2s", "--route=api,timeout=1s"]).unwrap();
        assert_eq!(
            w,
            [
                "--route api: per-try-timeout (2s, from --per-try-timeout) is longer than \
              timeout (1s), so only the overall timeout applies"
            ]
        );
        assert_eq!(check(&["--per-try-timeout=15s"]), Ok(vec![]));
    }

    #[test]
    fn retries_without_any_budget_are_a_warning() {
        let w = check(&["--route=api,retry-budget=0,retry-budget-min=0"]).unwrap();
        assert_eq!(
            w,
            [
                "--route api: retries (2, from --retries) never happen: retry-budget (0) and \
              retry-budget-min (0) allow none"
            ]
        );
        assert_eq!(
            check(&["--retries=0", "--retry-budget=0", "--retry-budget-min=0"]),
            Ok(vec![])
        );
    }

    #[test]
    fn durations_beyond_a_year_are_refused() {
        let e = check(&["--timeout=400d"]).unwrap_err();
        assert!(e.contains("--timeout") && e.contains("365 days"), "{e}");
        let e = check(&["--route=api,retry-backoff-max=18446744073709551615s"]).unwrap_err();
        assert!(e.contains("retry-backoff-max"), "{e}");
    }
}
