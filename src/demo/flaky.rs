//! `demo --scene flaky`: a service that answers 503 or drops the connection now
//! and then, straight and through breakwater on its defaults but for the
//! breaker's run of failures, where retries (within the retry budget) turn most
//! failures into answers.

use std::time::Duration;

use super::scene::{self, Proxied, Setup, Table, got_of};
use super::scrape::sum;
use super::service::{Behaviour, Service};

const BEHAVIOUR: Behaviour = Behaviour {
    unavailable: 10,
    reset: 5,
    stall: 0,
    stall_for: Duration::ZERO,
    slots: None,
    work: Duration::ZERO,
};

const DURATION: Duration = Duration::from_millis(2500);

/// A service that fails 15 % of its attempts fails five in a row about once in
/// 13,000 attempts: in one run in six of this scene the default breaker
/// (`--breaker-consecutive-failures=5`) would open for a moment and mix the
/// outage scene's policy into this one. Ten in a row (once in 170 million) is
/// an outage, not flakiness.
const RUN_OF_FAILURES: &str = "--breaker-consecutive-failures=10";

/// The load time of all sides.
pub fn load_time(setup: &Setup) -> Duration {
    2 * setup.duration.unwrap_or(DURATION)
}

pub async fn run(setup: &Setup) -> Result<(), Box<dyn std::error::Error>> {
    let style = setup.style;
    style.title(
        "flaky",
        &format!(
            "{}% of answers are 503s and {}% drop the connection; breakwater retries them, within \
             its retry budget.",
            BEHAVIOUR.unavailable, BEHAVIOUR.reset
        ),
    );
    let service = Service::spawn(BEHAVIOUR).await?;
    let proxy = Proxied::start(&[RUN_OF_FAILURES]).await?;
    let mut pace = setup.pace(1, Duration::from_millis(20), DURATION);
    pace.connect_timeout = proxy.config.connect_timeout;
    println!(
        "  {}, {:.1} s straight at the service, then through breakwater on its defaults but \
         {RUN_OF_FAILURES}: at 15% failures five in a row happen, ten are an outage",
        pace.describe(),
        pace.duration.as_secs_f64()
    );

    let start = service.seen.requests();
    let direct = scene::side(style, "direct", scene::direct(service.addr), pace).await;
    let between = service.seen.requests();
    let route = scene::through(&proxy, service.addr);
    let through = scene::side(style, "through breakwater", route, pace).await;
    let end = service.seen.requests();
    let metrics = proxy.metrics().await;
    let retry = proxy.config.retry.clone();
    proxy.stop().await;

    let mut table = Table::new(&["direct", "through breakwater"]);
    table.common_rows(&[&direct, &through]);
    table.row(
        "the service got",
        [
            got_of(between - start, direct.sent()),
            got_of(end - between, through.sent()),
        ],
    );
    table.print();
    let retried = sum(&metrics, "breakwater_retries_total", &[]);
    let skipped = sum(&metrics, "breakwater_retries_skipped_total", &[]);
    println!(
        "{}",
        scene::requests_sentence(
            &direct,
            &[("through breakwater", &through)],
            "the direct clients fell behind their pace.",
            "each client waited for its request's retries (backoff from 25 ms) before it sent \
             the next.",
        )
    );
    println!(
        "breakwater retried {retried:.0} attempts (its budget: {}% of requests + {}/s; \
         {skipped:.0} skipped); the retries' backoff is what p99 pays.",
        retry.budget_percent, retry.budget_min_per_sec
    );
    println!("{}", scene::reasons_line(&through));
    Ok(())
}
