//! `demo --scene slow-tail`: a service whose answers are fast but now and then
//! stall. Straight at it, the stalls are the p99; through breakwater, a per-try
//! timeout cuts a stalled attempt and retries it, and hedging sends a second
//! copy of a request that has not been answered soon and takes the first answer.

use std::time::Duration;

use super::scene::{self, Proxied, Setup, Table, got_of};
use super::scrape::sum;
use super::service::{Behaviour, Service};

const BEHAVIOUR: Behaviour = Behaviour {
    unavailable: 0,
    reset: 0,
    stall: 3,
    stall_for: Duration::from_millis(500),
    slots: None,
    work: Duration::ZERO,
};

/// The two ways breakwater deals with it, each a `run` flag.
const PER_TRY: &str = "--per-try-timeout=50ms";
const HEDGE: &str = "--hedge-after=30ms";

const DURATION: Duration = Duration::from_secs(2);

/// The load time of all sides.
pub fn load_time(setup: &Setup) -> Duration {
    3 * setup.duration.unwrap_or(DURATION)
}

/// Answers slower than this count as the tail.
const SLOW: Duration = Duration::from_millis(100);

pub async fn run(setup: &Setup) -> Result<(), Box<dyn std::error::Error>> {
    let style = setup.style;
    style.title(
        "slow-tail",
        &format!(
            "{}% of answers stall for {} ms; a per-try timeout retries them, hedging races a \
             second copy.",
            BEHAVIOUR.stall,
            BEHAVIOUR.stall_for.as_millis()
        ),
    );
    let service = Service::spawn(BEHAVIOUR).await?;
    let per_try = Proxied::start(&[PER_TRY]).await?;
    let hedge = Proxied::start(&[HEDGE]).await?;
    let mut pace = setup.pace(1, Duration::from_millis(20), DURATION);
    pace.connect_timeout = per_try.config.connect_timeout;
    println!(
        "  {}, {:.1} s straight at the service, then through breakwater with {PER_TRY}, then \
         with {HEDGE}",
        pace.describe(),
        pace.duration.as_secs_f64()
    );

    let mut got = Vec::new();
    let mut count = |from: &mut u64| {
        let now = service.seen.requests();
        got.push(now - std::mem::replace(from, now));
    };
    let mut seen = service.seen.requests();
    let direct = scene::side(style, "direct", scene::direct(service.addr), pace).await;
    count(&mut seen);
    let route = scene::through(&per_try, service.addr);
    let cut = scene::side(style, "per-try timeout", route, pace).await;
    count(&mut seen);
    let route = scene::through(&hedge, service.addr);
    let hedged = scene::side(style, "hedging", route, pace).await;
    count(&mut seen);
    let retried = sum(&per_try.metrics().await, "breakwater_retries_total", &[]);
    let hedge_metrics = hedge.metrics().await;
    let hedges = |outcome| {
        sum(
            &hedge_metrics,
            "breakwater_hedges_total",
            &[("outcome", outcome)],
        )
    };
    let (won, lost) = (hedges("won"), hedges("lost"));
    per_try.stop().await;
    hedge.stop().await;

    let sides = [&direct, &cut, &hedged];
    let mut table = Table::new(&["direct", "per-try timeout 50ms", "hedge after 30ms"]);
    table.common_rows(&sides);
    table.row(
        &format!("slower than {} ms", SLOW.as_millis()),
        sides.iter().map(|r| {
            let slow = r.samples.iter().filter(|s| s.took > SLOW).count() as u64;
            scene::share(slow, r.sent())
        }),
    );
    table.row(
        "the service got",
        sides.iter().zip(&got).map(|(r, g)| got_of(*g, r.sent())),
    );
    table.row(
        "extra attempts",
        [
            "—".into(),
            format!("{retried:.0} retries"),
            format!("{:.0} hedges ({won:.0} won)", won + lost),
        ],
    );
    table.print();
    println!(
        "{}",
        scene::requests_sentence(
            &direct,
            &[("per-try timeout", &cut), ("hedging", &hedged)],
            "a direct client waiting on a stalled answer sends nothing meanwhile; through \
             breakwater the stall was cut short, so the clients kept their pace.",
            "the clients through breakwater waited longer than the direct ones.",
        )
    );
    println!(
        "A stalled attempt costs the per-try timeout and a backoff before its retry; a hedge \
         costs only its delay, but sends a second copy (within a 10% budget) of each slow one."
    );
    Ok(())
}
