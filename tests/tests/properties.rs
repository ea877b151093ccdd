//! Property tests of breakwater's own grammars and its header hygiene, through
//! the library's public API: `--route`, the flag value units, `Retry-After`,
//! `x-breakwater-deadline-ms`, request ids, hop-by-hop stripping with the
//! request checks around it, and `breakwater inject`. Each parser must refuse
//! what it cannot read without panicking, and read back what breakwater itself
//! writes. No sockets: these run in a few seconds. fuzz/ has the same parsers
//! as cargo-fuzz targets, for longer runs where a nightly toolchain exists.

use std::time::{Duration, SystemTime};

use breakwater::cli::{Cli, Command};
use breakwater::config::units::{
    MAX_DURATION, format_duration, parse_bytes, parse_duration, parse_per_second, parse_percent,
    parse_positive_duration,
};
use breakwater::config::{ConcurrencyLimit, Protocol, RouteOverride, keys};
use breakwater::exchange::check_request;
use breakwater::inject::{Plan, inject_stream};
use breakwater::policy::deadline::{DEADLINE_HEADER, announce, incoming};
use breakwater::policy::retry::{RetryOn, retry_after};
use breakwater::transport::headers::{
    X_REQUEST_ID, ensure_request_id, is_upgrade, request_id, strip_hop_by_hop,
};
use clap::Parser;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Version, header};
use proptest::prelude::*;

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        // A failure should say what failed, not write files into the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any text, weighted toward the characters the grammars care about.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z0-9:,=+%\\[\\]. -]{0,40}",
        proptest::collection::vec(any::<u8>(), 0..40)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

// ---------------------------------------------------------------- units

/// Durations up to the flags' maximum, at every scale from nanoseconds.
fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0u64..=MAX_DURATION.as_nanos() as u64).prop_map(Duration::from_nanos),
        (0u64..=MAX_DURATION.as_secs()).prop_map(Duration::from_secs),
        (0u64..100_000).prop_map(Duration::from_millis),
    ]
}

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn unit_parsers_never_panic_and_keep_their_bounds(s in text()) {
        if let Ok(d) = parse_duration(&s) {
            prop_assert!(d <= MAX_DURATION);
        }
        if let Ok(d) = parse_positive_duration(&s) {
            prop_assert!(!d.is_zero());
        }
        let _ = parse_bytes(&s);
        if let Ok(p) = parse_percent(&s) {
            prop_assert!((0.0..=1000.0).contains(&p), "{p}");
        }
        if let Ok(n) = parse_per_second(&s) {
            prop_assert!(n < 1_000_000);
        }
    }

    /// What `/config` shows is what the flag takes.
    #[test]
    fn a_formatted_duration_parses_back_to_itself(d in duration()) {
        prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        prop_assert_eq!(parse_positive_duration(&format_duration(d)).is_ok(), !d.is_zero());
    }

    #[test]
    fn durations_past_the_maximum_are_refused(extra in 1u64..u64::MAX / 2) {
        let d = MAX_DURATION.saturating_add(Duration::from_nanos(extra));
        prop_assert!(parse_duration(&format_duration(d)).is_err());
        let secs = format!("{}s", u128::from(MAX_DURATION.as_secs()) + u128::from(extra));
        prop_assert!(parse_duration(&secs).is_err(), "{}", secs);
    }

    #[test]
    fn sizes_multiply_or_refuse_to_overflow(
        n in prop_oneof![0usize..100_000, any::<usize>()],
        unit in prop::sample::select(&[("", 1usize), ("b", 1), ("k", 1024), ("KiB", 1024), ("kb", 1024), ("M", 1 << 20), ("MiB", 1 << 20), ("mb", 1 << 20)][..]),
        space in prop::sample::select(&["", " ", "  "][..]),
    ) {
        let s = format!("{space}{n}{space}{}{space}", unit.0);
        match n.checked_mul(unit.1) {
            Some(bytes) => prop_assert_eq!(parse_bytes(&s), Ok(bytes)),
            None => prop_assert!(parse_bytes(&s).is_err()),
        }
    }

    #[test]
    fn percents_and_rates_round_trip(p in 0.0f32..=1000.0, sign in any::<bool>(), n in 0u32..1_000_000) {
        let s = if sign { format!("{p}%") } else { p.to_string() };
        prop_assert_eq!(parse_percent(&s), Ok(p));
        let negative = format!("-{}", p.max(0.1));
        prop_assert!(parse_percent(&negative).is_err(), "{}", negative);
        prop_assert_eq!(parse_per_second(&n.to_string()), Ok(n));
        prop_assert!(parse_per_second(&(1_000_000 + u64::from(n)).to_string()).is_err());
    }
}

// ---------------------------------------------------------------- --route

/// One `key=value` of a route: the text written and what it sets.
#[derive(Clone, Debug)]
enum Setting {
    Timeout(Duration),
    ConnectTimeout(Duration),
    Protocol(Protocol, &'static str),
    Tls(bool, &'static str),
    Retries(u32),
    RetryOn(RetryOn),
    RetryBackoff(Duration),
    RetryBackoffMax(Duration),
    PerTryTimeout(Duration),
    RetryBudget(f32),
    RetryBudgetMin(u32),
    RetryBodyLimit(usize, bool),
    Count(&'static str, u32),
    Rate(&'static str, u8, bool),
    Window(&'static str, Duration),
    HalfOpen(u32),
    MaxConcurrent(ConcurrencyLimit),
    Size(&'static str, usize),
}

fn positive_duration() -> impl Strategy<Value = Duration> {
    duration().prop_map(|d| d.max(Duration::from_nanos(1)))
}

fn retry_on() -> impl Strategy<Value = RetryOn> {
    // 429 as a code reads as the `429` condition, so the codes leave it out.
    let code = (100u16..=599).prop_filter("429 is a condition", |c| *c != 429);
    (any::<[bool; 6]>(), proptest::collection::vec(code, 0..3)).prop_map(|(b, statuses)| RetryOn {
        connect_failure: b[0],
        reset: b[1],
        gateway_error: b[2],
        server_error: b[3],
        too_many_requests: b[4],
        unavailable: b[5],
        statuses,
    })
}

fn setting() -> impl Strategy<Value = Setting> {
    use Setting::*;
    use breakwater::config::Protocol as P;
    prop_oneof![
        positive_duration().prop_map(Timeout),
        positive_duration().prop_map(ConnectTimeout),
        prop::sample::select(
            &[
                (P::Auto, "auto"),
                (P::H1, "h1"),
                (P::H2, "H2"),
                (P::H2, "h2"),
            ][..]
        )
        .prop_map(|(p, s)| Protocol(p, s)),
        prop::sample::select(
            &[
                (true, "true"),
                (true, "on"),
                (true, "yes"),
                (true, "1"),
                (false, "false"),
                (false, "off"),
                (false, "no"),
                (false, "0"),
            ][..]
        )
        .prop_map(|(b, s)| Tls(b, s)),
        any::<u32>().prop_map(Retries),
        retry_on().prop_map(RetryOn),
        duration().prop_map(RetryBackoff),
        duration().prop_map(RetryBackoffMax),
        positive_duration().prop_map(PerTryTimeout),
        (0.0f32..=1000.0).prop_map(RetryBudget),
        (0u32..1_000_000).prop_map(RetryBudgetMin),
        (0usize..1 << 20, any::<bool>()).prop_map(|(n, kib)| RetryBodyLimit(n, kib)),
        (
            prop::sample::select(&["breaker-consecutive-failures", "breaker-min-requests"][..]),
            any::<u32>()
        )
            .prop_map(|(k, n)| Count(k, n)),
        (
            prop::sample::select(
                &[
                    "breaker-failure-rate",
                    "breaker-slow-call-rate",
                    "max-ejection-percent"
                ][..]
            ),
            0u8..=100,
            any::<bool>()
        )
            .prop_map(|(k, n, pct)| Rate(k, n, pct)),
        (
            prop::sample::select(
                &[
                    "breaker-window",
                    "breaker-open-duration",
                    "breaker-slow-call",
                    "queue-timeout"
                ][..]
            ),
            positive_duration()
        )
            .prop_map(|(k, d)| Window(k, d)),
        (1u32..=u32::MAX).prop_map(HalfOpen),
        prop_oneof![
            Just(ConcurrencyLimit::Auto),
            (1usize..100_000).prop_map(ConcurrencyLimit::Fixed)
        ]
        .prop_map(MaxConcurrent),
        (
            prop::sample::select(&["max-concurrent-min", "max-concurrent-max", "max-queue"][..]),
            any::<usize>()
        )
            .prop_map(|(k, n)| Size(k, n)),
    ]
}

impl Setting {
    /// The `key=value` text, written as a user might.
    fn render(&self) -> String {
        let d = |d: &Duration| format_duration(*d);
        match self {
            Setting::Timeout(v) => format!("timeout={}", d(v)),
            Setting::ConnectTimeout(v) => format!("connect-timeout={}", d(v)),
            Setting::Protocol(_, s) => format!("protocol={s}"),
            Setting::Tls(_, s) => format!("tls={s}"),
            Setting::Retries(n) => format!("retries={n}"),
            // Route values use '+' between conditions.
            Setting::RetryOn(on) => format!("retry-on={}", on.to_string().replace(',', "+")),
            Setting::RetryBackoff(v) => format!("retry-backoff={}", d(v)),
            Setting::RetryBackoffMax(v) => format!("retry-backoff-max={}", d(v)),
            Setting::PerTryTimeout(v) => format!("per-try-timeout={}", d(v)),
            Setting::RetryBudget(p) => format!("retry-budget={p}%"),
            Setting::RetryBudgetMin(n) => format!("retry-budget-min={n}"),
            Setting::RetryBodyLimit(n, true) => format!("retry-body-limit={n}KiB"),
            Setting::RetryBodyLimit(n, false) => format!("retry-body-limit={n}"),
            Setting::Count(k, n) => format!("{k}={n}"),
            Setting::Rate(k, n, true) => format!("{k}={n}%"),
            Setting::Rate(k, n, false) => format!("{k}={n}"),
            Setting::Window(k, v) => format!("{k}={}", d(v)),
            Setting::HalfOpen(n) => format!("breaker-half-open-requests={n}"),
            Setting::MaxConcurrent(l) => format!("max-concurrent={l}"),
            Setting::Size(k, n) => format!("{k}={n}"),
        }
    }

    /// What the parsed route should hold after this setting.
    fn apply(&self, r: &mut RouteOverride) {
        let l = &mut r.limits;
        match self.clone() {
            Setting::Timeout(v) => r.timeout = Some(v),
            Setting::ConnectTimeout(v) => r.connect_timeout = Some(v),
            Setting::Protocol(p, _) => r.protocol = Some(p),
            Setting::Tls(b, _) => r.tls = Some(b),
            Setting::Retries(n) => r.retries = Some(n),
            Setting::RetryOn(on) => r.retry_on = Some(on),
            Setting::RetryBackoff(v) => r.retry_backoff = Some(v),
            Setting::RetryBackoffMax(v) => r.retry_backoff_max = Some(v),
            Setting::PerTryTimeout(v) => r.per_try_timeout = Some(v),
            Setting::RetryBudget(p) => r.retry_budget = Some(p),
            Setting::RetryBudgetMin(n) => r.retry_budget_min = Some(n),
            Setting::RetryBodyLimit(n, kib) => {
                r.retry_body_limit = Some(if kib { n * 1024 } else { n })
            }
            Setting::Count(k, n) => match k {
                "breaker-consecutive-failures" => l.breaker_consecutive_failures = Some(n),
                _ => l.breaker_min_requests = Some(n),
            },
            Setting::Rate(k, n, _) => match k {
                "breaker-failure-rate" => l.breaker_failure_rate = Some(n),
                "breaker-slow-call-rate" => l.breaker_slow_call_rate = Some(n),
                _ => l.max_ejection_percent = Some(n),
            },
            Setting::Window(k, v) => match k {
                "breaker-window" => l.breaker_window = Some(v),
                "breaker-open-duration" => l.breaker_open_duration = Some(v),
                "breaker-slow-call" => l.breaker_slow_call = Some(v),
                _ => l.queue_timeout = Some(v),
            },
            Setting::HalfOpen(n) => l.breaker_half_open_requests = Some(n),
            Setting::MaxConcurrent(c) => l.max_concurrent = Some(c),
            Setting::Size(k, n) => match k {
                "max-concurrent-min" => l.max_concurrent_min = Some(n),
                "max-concurrent-max" => l.max_concurrent_max = Some(n),
                _ => l.max_queue = Some(n),
            },
        }
    }
}

/// A route's target as written (any case; IPv6 bracketed) and the host it names.
fn target() -> impl Strategy<Value = (String, String, Option<u16>)> {
    let name = "[a-zA-Z0-9]([a-zA-Z0-9.-]{0,20}[a-zA-Z0-9])?";
    let v6 = prop::sample::select(&["::1", "fe80::1", "2001:DB8::42", "::"][..]);
    (
        prop_oneof![
            name.prop_map(|n| (n.clone(), n.to_ascii_lowercase())),
            v6.prop_map(|a| (format!("[{a}]"), a.to_ascii_lowercase())),
        ],
        proptest::option::of(1u16..=65535),
    )
        .prop_map(|((written, host), port)| {
            let written = match port {
                Some(p) => format!("{written}:{p}"),
                None => written,
            };
            (written, host, port)
        })
}

proptest! {
    #![proptest_config(cases(500))]

    #[test]
    fn route_parsing_never_panics(s in text()) {
        if let Ok(r) = RouteOverride::parse(&s) {
            prop_assert_eq!(&r.host, &r.host.as_ref().map(|h| h.to_ascii_lowercase()));
            prop_assert_ne!(r.port, Some(0));
        }
    }

    /// Any key after a valid target: never a panic, and an error names the key.
    #[test]
    fn route_keys_with_garbage_values_never_panic(
        key in prop::sample::select(
            keys::POLICY_KEYS
                .iter()
                .chain(keys::MATCH_KEYS)
                .map(|k| k.name)
                .chain(["colour"])
                .collect::<Vec<_>>(),
        ),
        value in "[^,]{0,24}",
    ) {
        if let Err(e) = RouteOverride::parse(&format!("payments:8080,{key}={value}")) {
            prop_assert!(e.to_string().contains(key), "{e}");
        }
    }

    /// A route written from a generated structure parses to that structure,
    /// whitespace, empty pairs and upper case notwithstanding.
    #[test]
    fn a_rendered_route_parses_back_to_itself(
        (written, host, port) in target(),
        settings in proptest::collection::vec(
            (setting(), prop::sample::select(&["", " ", "\t"][..]), any::<bool>()),
            0..12,
        ),
    ) {
        let mut expected = RouteOverride { host: Some(host), port, ..RouteOverride::default() };
        let mut text = written;
        for (s, pad, empty_pair) in &settings {
            // A key given twice is an error; this property is about the rest.
            let rendered = s.render();
            let name = rendered.split('=').next().unwrap_or_default();
            let Some(key) = keys::policy_key(name) else { continue };
            if expected.set_keys.contains(&key.name) {
                continue;
            }
            expected.set_keys.push(key.name);
            s.apply(&mut expected);
            text.push_str(&format!(",{pad}{}{pad}", s.render()));
            if *empty_pair {
                text.push(',');
            }
        }
        prop_assert_eq!(RouteOverride::parse(&text), Ok(expected), "{}", text);
    }
}

// ---------------------------------------------------------------- Retry-After

fn headers_with(name: HeaderName, values: &[HeaderValue]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in values {
        h.append(name.clone(), v.clone());
    }
    h
}

fn header_value() -> impl Strategy<Value = HeaderValue> {
    proptest::collection::vec(any::<u8>(), 0..40)
        .prop_filter_map("a valid header value", |b| HeaderValue::from_bytes(&b).ok())
}

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn retry_after_never_panics_and_only_answers_429_and_503(
        v in prop_oneof![
            header_value(),
            "[ ]?[+-]?[0-9]{1,30}[ ]?".prop_filter_map("", |s| HeaderValue::from_str(&s).ok()),
        ],
        code in 100u16..=599,
    ) {
        let h = headers_with(header::RETRY_AFTER, &[v]);
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
        let wait = retry_after(status, &h);
        if !matches!(code, 429 | 503) {
            prop_assert_eq!(wait, None);
        }
    }

    /// Delta-seconds are taken as written, however large; a negative or
    /// overflowing number is no delay.
    #[test]
    fn delta_seconds_are_exact(n in any::<u64>(), extra in 1u128..1000) {
        let h = headers_with(header::RETRY_AFTER, &[HeaderValue::from(n)]);
        prop_assert_eq!(retry_after(StatusCode::SERVICE_UNAVAILABLE, &h), Some(Duration::from_secs(n)));
        let negative = HeaderValue::from_str(&format!("-{}", n.max(1))).unwrap_or(HeaderValue::from_static("-1"));
        let h = headers_with(header::RETRY_AFTER, &[negative]);
        prop_assert_eq!(retry_after(StatusCode::TOO_MANY_REQUESTS, &h), None);
        let huge = HeaderValue::from_str(&(u128::from(u64::MAX) + extra).to_string()).unwrap_or(HeaderValue::from_static("x"));
        let h = headers_with(header::RETRY_AFTER, &[huge]);
        prop_assert_eq!(retry_after(StatusCode::TOO_MANY_REQUESTS, &h), None);
    }

    /// An HTTP date is a wait until then, never longer; a past date is no wait.
    #[test]
    fn http_dates_are_a_bounded_wait(ahead in -100_000_000i64..100_000_000i64) {
        let now = SystemTime::now();
        let at = if ahead >= 0 {
            now + Duration::from_secs(ahead as u64)
        } else {
            now - Duration::from_secs(ahead.unsigned_abs())
        };
        let v = HeaderValue::from_str(&httpdate::fmt_http_date(at)).unwrap_or(HeaderValue::from_static("x"));
        let h = headers_with(header::RETRY_AFTER, &[v]);
        let wait = retry_after(StatusCode::SERVICE_UNAVAILABLE, &h);
        let wait = wait.unwrap_or(Duration::MAX);
        // The date drops the sub-second part; the clock moves on a little.
        let most = Duration::from_secs(ahead.max(0) as u64);
        prop_assert!(wait <= most, "{wait:?} > {most:?}");
        prop_assert!(most.saturating_sub(wait) < Duration::from_secs(2), "{wait:?} for {ahead}s");
    }
}

// ---------------------------------------------------------------- deadline

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn incoming_deadlines_never_panic(values in proptest::collection::vec(
        prop_oneof![
            header_value(),
            "[ ]?[+-]?[0-9]{1,25}[ ]?".prop_filter_map("", |s| HeaderValue::from_str(&s).ok()),
        ],
        0..3,
    )) {
        let h = headers_with(DEADLINE_HEADER, &values);
        if let Some(d) = incoming(&h) {
            // Whatever parses is a whole number of milliseconds.
            prop_assert_eq!(d.subsec_nanos() % 1_000_000, 0);
        }
    }

    #[test]
    fn incoming_reads_milliseconds_as_written(ms in any::<u64>(), pad in prop::sample::select(&["", " ", "\t"][..])) {
        let v = HeaderValue::from_str(&format!("{pad}{ms}{pad}")).unwrap_or(HeaderValue::from_static("x"));
        let h = headers_with(DEADLINE_HEADER, &[v]);
        prop_assert_eq!(incoming(&h), Some(Duration::from_millis(ms)));
    }

    /// announce → incoming is the time left to the millisecond below (at least
    /// 1 ms, at most what the header can carry), and a caller's own values
    /// for the header are replaced by exactly one.
    #[test]
    fn announce_then_incoming_round_trips_within_a_millisecond(
        left in prop_oneof![
            duration(),
            (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        ],
        theirs in proptest::collection::vec(header_value(), 0..3),
    ) {
        let mut h = headers_with(DEADLINE_HEADER, &theirs);
        announce(&mut h, left);
        prop_assert_eq!(h.get_all(&DEADLINE_HEADER).iter().count(), 1);
        let back = incoming(&h).unwrap_or_default();
        let expected = left.clamp(Duration::from_millis(1), Duration::from_millis(u64::MAX));
        prop_assert!(back <= expected, "{back:?} > {left:?}");
        prop_assert!(expected - back < Duration::from_millis(1), "{back:?} for {left:?}");
    }
}

// ---------------------------------------------------------------- request ids

const ID_HEADERS: [&str; 4] = ["traceparent", "b3", "x-b3-traceid", "x-request-id"];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn hex(len: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(prop::sample::select(&b"0123456789abcdef"[..]), len)
        .prop_map(|b| String::from_utf8(b).unwrap_or_default())
}

/// Id header values: well-formed trace contexts and anything else.
fn id_value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        header_value(),
        (hex(32), hex(16)).prop_filter_map("", |(t, p)| {
            HeaderValue::from_str(&format!("00-{t}-{p}-01")).ok()
        }),
        (hex(32), hex(16))
            .prop_filter_map("", |(t, s)| HeaderValue::from_str(&format!("{t}-{s}-1"))
                .ok()),
        "[0-9a-f-]{0,40}".prop_filter_map("", |s| HeaderValue::from_str(&s).ok()),
    ]
}

fn id_headers() -> impl Strategy<Value = HeaderMap> {
    proptest::collection::vec((prop::sample::select(&ID_HEADERS[..]), id_value()), 0..5).prop_map(
        |pairs| {
            let mut h = HeaderMap::new();
            h.insert("x-other", HeaderValue::from_static("1"));
            for (name, v) in pairs {
                h.append(name, v);
            }
            h
        },
    )
}

/// W3C Trace Context §3.2, version 00: `00-` 32 hex `-` 16 hex `-` 2 hex,
/// neither id all zeros.
fn valid_traceparent(v: &[u8]) -> bool {
    let parts: Vec<&[u8]> = v.split(|&b| b == b'-').collect();
    let hex = |p: &[u8], n: usize| p.len() == n && p.iter().all(u8::is_ascii_hexdigit);
    let zero = |p: &[u8]| p.iter().all(|&b| b == b'0');
    matches!(parts.as_slice(), [ver, t, s, f]
        if *ver == b"00" && hex(t, 32) && hex(s, 16) && hex(f, 2) && !zero(t) && !zero(s))
}

proptest! {
    #![proptest_config(cases(1000))]

    /// The id is a piece of one of the id headers; a request without one
    /// leaves with a fresh 32-hex `x-request-id`, one with one is untouched.
    #[test]
    fn request_ids_come_from_the_headers_or_are_fresh(h in id_headers()) {
        let before = h.clone();
        if let Some(id) = request_id(&h) {
            let found = ID_HEADERS
                .iter()
                .any(|n| before.get_all(*n).iter().any(|v| contains(v.as_bytes(), id)));
            prop_assert!(found, "{:?} is in none of {:?}", id, before);
        }
        let mut h = h;
        ensure_request_id(&mut h);
        let id = request_id(&h).map(<[u8]>::to_vec);
        prop_assert!(id.is_some(), "every request leaves with an id");
        let id = id.unwrap_or_default();
        // A traceparent that does not parse is dropped, with its tracestate.
        let mut before = before;
        if before
            .get("traceparent")
            .is_some_and(|v| !valid_traceparent(v.as_bytes()))
        {
            before.remove("traceparent");
            before.remove("tracestate");
        }
        if request_id(&before).is_none() {
            prop_assert_eq!(id.len(), 32);
            prop_assert!(id.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)), "{:?}", id);
            prop_assert_eq!(h.get_all(X_REQUEST_ID).iter().count(), 1);
            prop_assert_eq!(h.len(), before.len() + 1, "only the id is added");
        } else {
            prop_assert_eq!(&h, &before);
        }
    }

    #[test]
    fn a_traceparent_gives_its_trace_id(t in hex(32), p in hex(16), other in id_headers()) {
        let mut h = other;
        h.remove("traceparent");
        let tp = HeaderValue::from_str(&format!("00-{t}-{p}-01")).unwrap_or(HeaderValue::from_static("x"));
        h.insert("traceparent", tp);
        prop_assert_eq!(request_id(&h), Some(t.as_bytes()));
    }
}

// ---------------------------------------------------------------- hop-by-hop

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Header names: hop-by-hop ones, the protected two, and random others.
fn header_name() -> impl Strategy<Value = HeaderName> {
    prop_oneof![
        3 => prop::sample::select(&HOP_BY_HOP[..]).prop_map(HeaderName::from_static),
        1 => prop::sample::select(&["host", "content-length"][..]).prop_map(HeaderName::from_static),
        3 => "[a-zA-Z][a-zA-Z0-9-]{0,18}".prop_filter_map("a header name", |s| HeaderName::from_bytes(s.as_bytes()).ok()),
    ]
}

/// A `Connection` value: tokens naming headers (any case, odd spacing).
fn connection_value(names: Vec<HeaderName>) -> impl Strategy<Value = HeaderValue> {
    let token = prop_oneof![
        prop::sample::select(names.clone()).prop_map(|n| n.as_str().to_string()),
        prop::sample::select(names).prop_map(|n| n.as_str().to_ascii_uppercase()),
        prop::sample::select(
            &[
                "close",
                "keep-alive",
                "Upgrade",
                "TE",
                "host",
                "Content-Length"
            ][..]
        )
        .prop_map(str::to_string),
        "[a-z-]{1,10}",
    ];
    proptest::collection::vec((token, prop::sample::select(&["", " ", "  "][..])), 1..5)
        .prop_filter_map("a header value", |tokens| {
            let text = tokens
                .iter()
                .map(|(t, pad)| format!("{pad}{t}{pad}"))
                .collect::<Vec<_>>()
                .join(",");
            HeaderValue::from_str(&text).ok()
        })
}

fn value_for(name: &HeaderName) -> BoxedStrategy<HeaderValue> {
    if name == header::TE {
        prop::sample::select(
            &[
                "trailers",
                "gzip, trailers",
                "deflate",
                "TRAILERS",
                "trailers;q=1",
            ][..],
        )
        .prop_map(HeaderValue::from_static)
        .boxed()
    } else if name == header::UPGRADE {
        prop::sample::select(&["websocket", "h2c", "h2c, websocket", "HTTP/2.0"][..])
            .prop_map(HeaderValue::from_static)
            .boxed()
    } else {
        "[ -~]{0,12}"
            .prop_filter_map("", |s| HeaderValue::from_str(&s).ok())
            .boxed()
    }
}

fn hop_headers() -> impl Strategy<Value = HeaderMap> {
    proptest::collection::vec(header_name(), 0..12)
        .prop_flat_map(|names| {
            let values: Vec<_> = names.iter().map(value_for).collect();
            let mut named = names.clone();
            named.push(HeaderName::from_static("x-unlisted"));
            let connection = proptest::collection::vec(connection_value(named), 0..3);
            (Just(names), values, connection)
        })
        .prop_map(|(names, values, connection)| {
            let mut h = HeaderMap::new();
            for (n, v) in names.into_iter().zip(values) {
                if n != header::CONNECTION {
                    h.append(n, v);
                }
            }
            for v in connection {
                h.append(header::CONNECTION, v);
            }
            h
        })
}

/// The names the `Connection` headers list.
fn connection_names(h: &HeaderMap) -> Vec<HeaderName> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

proptest! {
    #![proptest_config(cases(500))]

    /// Without an upgrade no hop-by-hop header is left (`te` only as exactly
    /// `trailers`), the headers `Connection` names are gone but `host` and
    /// `content-length`, and all other headers are untouched.
    #[test]
    fn stripping_leaves_no_hop_by_hop_header(h in hop_headers()) {
        let named = connection_names(&h);
        let mut out = h.clone();
        strip_hop_by_hop(&mut out, false);
        for name in HOP_BY_HOP {
            if name == "te" {
                let te: Vec<_> = out.get_all("te").iter().collect();
                prop_assert!(te.is_empty() || te == ["trailers"], "te: {:?}", te);
            } else {
                prop_assert!(!out.contains_key(name), "{} left in {:?}", name, out);
            }
        }
        for name in &named {
            if *name == header::HOST || *name == header::CONTENT_LENGTH {
                prop_assert!(out.get_all(name).iter().eq(h.get_all(name).iter()), "{} changed", name);
            } else if *name != header::TE && name.as_str() != "close" {
                prop_assert!(!out.contains_key(name), "{} named in Connection is left: {:?}", name, out);
            }
        }
        for name in h.keys() {
            if !HOP_BY_HOP.contains(&name.as_str()) && !named.contains(name) {
                prop_assert!(out.get_all(name).iter().eq(h.get_all(name).iter()), "{} changed", name);
            }
        }
        // exchange strips on the way in and on the way out: the second is a no-op.
        let mut again = out.clone();
        strip_hop_by_hop(&mut again, false);
        prop_assert_eq!(again, out);
    }

    /// With an upgrade, `Upgrade` passes as it came and `Connection` says only
    /// `upgrade`; the rest of the hop-by-hop headers still go.
    #[test]
    fn an_upgrade_keeps_upgrade_and_nothing_else_hop_by_hop(h in hop_headers()) {
        // What exchange strips with `upgrade` set: a request is_upgrade accepts.
        let mut h = h;
        h.append(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.append(header::UPGRADE, HeaderValue::from_static("websocket"));
        let mut req = Request::new(());
        *req.headers_mut() = h.clone();
        prop_assert!(is_upgrade(&req));
        let mut out = h.clone();
        strip_hop_by_hop(&mut out, true);
        prop_assert!(out.get_all(header::CONNECTION).iter().eq([HeaderValue::from_static("upgrade")].iter()));
        prop_assert!(out.get_all(header::UPGRADE).iter().eq(h.get_all(header::UPGRADE).iter()));
        for name in HOP_BY_HOP.iter().filter(|n| !matches!(**n, "connection" | "upgrade" | "te")) {
            prop_assert!(!out.contains_key(*name), "{} left", name);
        }
    }

    /// Only an HTTP/1.1 request with `Connection: upgrade` and an `Upgrade`
    /// other than h2c switches protocols.
    #[test]
    fn only_http11_upgrades(h in hop_headers(), version in prop::sample::select(&[Version::HTTP_10, Version::HTTP_11, Version::HTTP_2][..])) {
        let mut req = Request::new(());
        *req.version_mut() = version;
        *req.headers_mut() = h.clone();
        let switches = is_upgrade(&req);
        if switches {
            prop_assert_eq!(version, Version::HTTP_11);
            prop_assert!(connection_names(&h).contains(&header::UPGRADE));
            let offers: Vec<String> = h.get_all(header::UPGRADE).iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(',').map(|p| p.trim().to_ascii_lowercase()))
                .collect();
            prop_assert!(offers.iter().any(|p| p != "h2c"), "{:?}", offers);
        }
        let only_h2c = h.get_all(header::UPGRADE).iter().all(|v| v == "h2c");
        prop_assert!(!(switches && only_h2c));
    }

    /// A request that passes breakwater's checks has exactly one `Host` when it
    /// is HTTP/1.1, and at most one otherwise, still after stripping (a
    /// `Connection` list cannot remove it).
    #[test]
    fn checked_requests_have_one_host(
        h in hop_headers(),
        hosts in 0usize..4,
        version in prop::sample::select(&[Version::HTTP_10, Version::HTTP_11, Version::HTTP_2][..]),
    ) {
        let mut req = Request::new(());
        *req.version_mut() = version;
        *req.headers_mut() = h;
        req.headers_mut().remove(header::HOST);
        for i in 0..hosts {
            req.headers_mut().append(header::HOST, HeaderValue::from(i));
        }
        let checked = check_request(&req, 8192);
        let count = |r: &Request<()>| r.headers().get_all(header::HOST).iter().count();
        prop_assert_eq!(checked.is_ok(), hosts == 1 || (hosts == 0 && version != Version::HTTP_11));
        if checked.is_ok() {
            let upgrade = is_upgrade(&req);
            strip_hop_by_hop(req.headers_mut(), upgrade);
            prop_assert_eq!(count(&req), hosts);
        }
    }
}

// ---------------------------------------------------------------- inject

fn inject_plan(flags: &[&str]) -> Plan {
    let argv = ["breakwater", "inject"].iter().chain(flags);
    match Cli::try_parse_from(argv).map(|c| c.command) {
        Ok(Command::Inject(args)) => {
            Plan::from_args(args.sidecar).unwrap_or_else(|e| panic!("{e}"))
        }
        other => panic!("inject flags parse as {other:?}"),
    }
}

/// A Deployment with generated names, ports and containers, in block or flow style.
fn deployment() -> impl Strategy<Value = String> {
    let name = "[a-z][a-z0-9-]{0,10}[a-z0-9]";
    (
        name,
        proptest::collection::vec((name, "[a-z]{1,8}(:[0-9]\\.[0-9])?", proptest::option::of(1u16..=65535)), 1..4),
        1u8..5,
        any::<bool>(),
    )
        .prop_map(|(app, containers, replicas, flow)| {
            let mut y = format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {app}\n  labels: {{app: {app}}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {app}}}}}\n  template:\n    metadata: {{labels: {{app: {app}}}}}\n    spec:\n      containers:\n"
            );
            for (i, (c, image, port)) in containers.iter().enumerate() {
                let c = format!("{c}{i}");
                let ports = port.map(|p| format!("ports: [{{containerPort: {p}}}]"));
                if flow {
                    let ports = ports.map(|p| format!(", {p}")).unwrap_or_default();
                    y.push_str(&format!("      - {{name: {c}, image: '{image}'{ports}}}\n"));
                } else {
                    y.push_str(&format!("      - name: {c}\n        image: \"{image}\"\n"));
                    if let Some(p) = ports {
                        y.push_str(&format!("        {p}\n"));
                    }
                }
            }
            y
        })
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn inject_never_panics_on_any_text(s in prop_oneof![
        text(),
        "(kind: (Pod|Deployment|List|CronJob)\n)?[a-z:{}\\[\\], \n'\"&*!-]{0,60}",
        deployment().prop_flat_map(|d| { let n = d.len(); (Just(d), 0..n) }).prop_map(|(d, cut)| {
            // A manifest broken off anywhere.
            let cut = (0..=cut).rev().find(|i| d.is_char_boundary(*i)).unwrap_or(0);
            d[..cut].to_string()
        }),
    ]) {
        let plan = inject_plan(&[]);
        let _ = inject_stream(&s, &plan);
    }

    /// src/inject/tests.rs `injecting_twice_changes_nothing`, for generated
    /// Deployments and each mode and sidecar form.
    #[test]
    fn injecting_a_deployment_twice_changes_nothing(
        d in deployment(),
        two in any::<bool>(),
        form in 0usize..3,
    ) {
        let flags: [&[&str]; 3] = [&[], &["--sidecar", "classic"], &["--mode", "explicit"]];
        let plan = inject_plan(flags[form]);
        let input = if two { format!("{d}---\n{d}") } else { d };
        let once = inject_stream(&input, &plan);
        prop_assert!(once.is_ok(), "{:?}\n{}", once.err(), input);
        let once = once.map(|i| i.output).unwrap_or_default();
        prop_assert_ne!(&once, &input, "nothing injected");
        let twice = inject_stream(&once, &plan).map(|i| i.output);
        prop_assert_eq!(twice, Ok(once));
    }
}

// ---------------------------------------------------------------- policy file

/// Lines a policy file is made of, valid and not, for files built from them.
fn policy_line() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(
            &[
                "defaults:",
                "routes:",
                "  - name: a",
                "  - host: api",
                "    path-prefix: /x",
                "    method: GET",
                "    direction: inbound",
                "    headers:",
                "      - name: x-a",
                "        value: \"1\"",
                "    timeout: 2s",
                "  timeout: 30s",
                "  retries: 2",
                "  retry-on: [5xx, 429]",
                "  breaker-mode: observe",
                "    inbound-max-concurrent: 4",
                "  max-concurrent-min: 2000",
                "  - &a x",
                "---",
                "  ? complex",
                "\t- tab",
            ][..]
        )
        .prop_map(str::to_string),
        "[ a-z:#\\-\\[\\]{}\"'&*!|>]{0,30}",
    ]
}

proptest! {
    #![proptest_config(cases(300))]

    /// Any text is a policy or an error at a position in the file, never a
    /// panic; what applies passes the flags' validation.
    #[test]
    fn policy_files_apply_or_fail_with_a_position(
        lines in proptest::collection::vec(policy_line(), 0..14),
        raw in text(),
    ) {
        let flags = breakwater::Config::loopback();
        for text in [lines.join("\n"), raw] {
            let applied = breakwater::config::layered::apply(
                &flags,
                std::path::Path::new("p.yaml"),
                text.as_bytes(),
            );
            match applied {
                Ok(l) => prop_assert!(l.config.validate().is_ok()),
                Err(e) => prop_assert!(e.to_string().starts_with("p.yaml"), "{e}"),
            }
        }
    }
}
