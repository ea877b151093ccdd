//! Start-up validation against the running proxy: random `--route`s mixing the
//! real keys with edge and garbage values. Whatever the parser and the
//! cross-field rules accept, a proxy must then serve without panicking; and
//! what only the cross-field rules refuse must not panic either, should a
//! rule ever be missed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use breakwater::Config;
use breakwater::config::RouteOverride;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};

use crate::support;

/// The kinds of value the route keys take, each with edge and garbage values.
const DURATIONS: &[&str] = &[
    "0",
    "0s",
    "1ns",
    "1us",
    "1ms",
    "25ms",
    "250ms",
    "1s",
    "1m",
    "365d",
    "366d",
    "-1s",
    "soon",
    "",
    "1.5s",
    "18446744073709551615s",
];
const COUNTS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "20",
    "1000",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "-1",
    "many",
    "",
    "1e3",
];
const PERCENTS: &[&str] = &[
    "0", "1", "50", "100", "100%", "101", "1000", "1001", "-5", "NaN", "inf", "0.5", "x",
];
const SIZES: &[&str] = &[
    "0",
    "1",
    "64KiB",
    "1MiB",
    "18446744073709551615",
    "99999999999999MiB",
    "12 parsecs",
];
const LIMITS: &[&str] = &[
    "auto",
    "AUTO",
    "0",
    "1",
    "2",
    "50",
    "18446744073709551615",
    "-3",
];
const BOOLS: &[&str] = &["true", "false", "on", "0", "maybe"];
const PROTOCOLS: &[&str] = &["auto", "h1", "H2", "h3"];
const CONDITIONS: &[&str] = &[
    "5xx",
    "5xx+429",
    "connect-failure+reset",
    "gateway-error",
    "503",
    "999",
    "unavailable",
    "sometimes",
    "",
];

/// Every route key with the kind of value it takes, and one no route has.
const KEYS: &[(&str, &[&str])] = &[
    ("timeout", DURATIONS),
    ("connect-timeout", DURATIONS),
    ("protocol", PROTOCOLS),
    ("tls", BOOLS),
    ("retries", COUNTS),
    ("retry-on", CONDITIONS),
    ("retry-backoff", DURATIONS),
    ("retry-backoff-max", DURATIONS),
    ("per-try-timeout", DURATIONS),
    ("retry-budget", PERCENTS),
    ("retry-budget-min", COUNTS),
    ("retry-body-limit", SIZES),
    ("breaker-consecutive-failures", COUNTS),
    ("breaker-failure-rate", PERCENTS),
    ("breaker-window", DURATIONS),
    ("breaker-min-requests", COUNTS),
    ("breaker-open-duration", DURATIONS),
    ("breaker-half-open-requests", COUNTS),
    ("breaker-slow-call", DURATIONS),
    ("breaker-slow-call-rate", PERCENTS),
    ("max-ejection-percent", PERCENTS),
    ("max-concurrent", LIMITS),
    ("max-concurrent-min", COUNTS),
    ("max-concurrent-max", COUNTS),
    ("max-queue", COUNTS),
    ("queue-timeout", DURATIONS),
    ("colour", BOOLS),
];

/// The keys the cross-field rules relate, drawn more often so that conflicting
/// pairs (`max-concurrent=auto` with inverted bounds, say) come up.
const RELATED: &[&str] = &[
    "timeout",
    "per-try-timeout",
    "retries",
    "retry-backoff",
    "retry-backoff-max",
    "retry-budget",
    "retry-budget-min",
    "breaker-half-open-requests",
    "max-concurrent",
    "max-concurrent-min",
    "max-concurrent-max",
];

/// Proxies started for accepted routes, and for routes only the cross-field
/// rules refuse: each costs a bind and a few requests.
const ACCEPTED_PROXIES: usize = 32;
const REFUSED_PROXIES: usize = 32;
/// The global `--timeout` of the proxies; a route only gets a proxy when its own
/// deadline is no longer, so that every request ends within the test's wait.
const TIMEOUT: Duration = Duration::from_secs(1);

/// `key=value` pairs: mostly a value of the key's own kind, sometimes any value.
fn pairs() -> impl Strategy<Value = Vec<String>> {
    let every: Vec<&'static str> = KEYS.iter().flat_map(|(_, v)| v.iter().copied()).collect();
    let related: Vec<usize> = (0..KEYS.len())
        .filter(|&k| RELATED.contains(&KEYS[k].0))
        .collect();
    let key = prop_oneof![
        1 => 0..KEYS.len(),
        2 => prop::sample::select(related),
    ];
    let pair = (key, prop::bool::weighted(0.8), any::<prop::sample::Index>()).prop_map(
        move |(k, own_kind, i)| {
            let (key, values) = KEYS[k];
            let value = if own_kind {
                values[i.index(values.len())]
            } else {
                every[i.index(every.len())]
            };
            format!("{key}={value}")
        },
    );
    prop::collection::vec(pair, 0..7)
}

#[test]
fn every_route_the_validator_accepts_is_served_without_a_panic() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // `/ok` answers 200; `/fail` a retryable 503 that asks for no wait, so
    // retries, the budget and the breakers run without sleeping.
    let upstream = rt.block_on(support::spawn_upstream(|req| async move {
        match req.uri().path() {
            "/fail" => {
                let mut resp = support::text_response(503, "down");
                resp.headers_mut()
                    .insert("retry-after", http::HeaderValue::from_static("0"));
                resp
            }
            _ => support::text_response(200, "ok"),
        }
    }));
    let host = upstream.addr.to_string();
    let (accepted, refused) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 1024,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let outcome = runner.run(&pairs(), |pairs| {
        let spec = format!("127.0.0.1,{}", pairs.join(","));
        let Ok(route) = RouteOverride::parse(&spec) else {
            return Ok(());
        };
        let mut config = Config::loopback();
        config.timeout = TIMEOUT;
        config.routes = vec![route.clone()];
        let (count, cap) = match config.validate() {
            Ok(_) => (&accepted, ACCEPTED_PROXIES),
            Err(_) => (&refused, REFUSED_PROXIES),
        };
        if route.timeout.unwrap_or(TIMEOUT) > TIMEOUT || count.load(Ordering::Relaxed) >= cap {
            return Ok(());
        }
        count.fetch_add(1, Ordering::Relaxed);
        rt.block_on(serve(config, &host))
            .map_err(|e| TestCaseError::fail(format!("--route {spec}: {e}")))
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    let (accepted, refused) = (accepted.into_inner(), refused.into_inner());
    assert!(
        accepted >= ACCEPTED_PROXIES / 2 && refused >= REFUSED_PROXIES / 2,
        "too few routes served: {accepted} accepted, {refused} refused by the rules"
    );
}

/// One proxy with `config`: a success and a failure through the route, each
/// answered with some response within the route's deadline and a margin.
/// The route that once passed `run --check` and then panicked on the first
/// request: with the rule bypassed, the proxy still answers.
#[tokio::test]
async fn inverted_auto_bounds_serve_even_past_the_rules() {
    let upstream = support::spawn_upstream(|_| async { support::text_response(200, "ok") }).await;
    let mut config = Config::loopback();
    config.routes = vec![support::route(
        "127.0.0.1,max-concurrent=auto,max-concurrent-min=2000",
    )];
    assert!(config.validate().is_err(), "the rule refuses it");
    serve(config, &upstream.addr.to_string())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

async fn serve(config: Config, host: &str) -> Result<(), String> {
    let proxy = support::spawn_proxy(config.app_addr, |c| *c = config).await;
    let client = support::client();
    for path in ["/ok", "/fail", "/ok"] {
        let req = http::Request::get(format!("http://{}{path}", proxy.outbound()))
            .header(http::header::HOST, host)
            .body(support::full(""))
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(TIMEOUT * 5, client.request(req)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("GET {path}: no response: {e}")),
            Err(_) => return Err(format!("GET {path}: no response within {:?}", TIMEOUT * 5)),
        }
    }
    drop(proxy);
    Ok(())
}
