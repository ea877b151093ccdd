//! `demo --scene overload`: more load than a service can take. It serves a
//! fixed number of requests at once and queues the rest, so its latency grows
//! with the requests it holds. Straight at it, every request waits in that
//! queue; through breakwater with `--max-concurrent auto`, the adaptive limit
//! keeps few requests in the service, those are answered quickly, and the
//! rest are refused at once (503 `bulkhead-full`) for the client to retry later
//! or elsewhere.

use std::time::Duration;

use super::scene::{self, Proxied, Setup, Table, latency};
use super::scrape::sum;
use super::service::{Behaviour, Service};

const SLOTS: usize = 8;
const WORK: Duration = Duration::from_millis(20);

const BEHAVIOUR: Behaviour = Behaviour {
    unavailable: 0,
    reset: 0,
    stall: 0,
    stall_for: Duration::ZERO,
    slots: Some(SLOTS),
    work: WORK,
};

const AUTO: &str = "--max-concurrent=auto";

const DURATION: Duration = Duration::from_millis(3500);

/// The load time of all sides.
pub fn load_time(setup: &Setup) -> Duration {
    2 * setup.duration.unwrap_or(DURATION)
}

pub async fn run(setup: &Setup) -> Result<(), Box<dyn std::error::Error>> {
    let style = setup.style;
    let capacity = SLOTS as f64 / WORK.as_secs_f64();
    style.title(
        "overload",
        &format!(
            "the service serves {SLOTS} requests at once ({} ms each, {capacity:.0}/s) and queues \
             the rest; breakwater's adaptive limit keeps its latency by shedding.",
            WORK.as_millis()
        ),
    );
    let service = Service::spawn(BEHAVIOUR).await?;
    let proxy = Proxied::start(&[AUTO]).await?;
    let mut pace = setup.pace(4, Duration::from_millis(100), DURATION);
    pace.connect_timeout = proxy.config.connect_timeout;
    println!(
        "  {}, {:.1} s straight at the service, then through breakwater with {AUTO} (starts at \
         {}, moves once a second)",
        pace.describe(),
        pace.duration.as_secs_f64(),
        proxy.config.bulkhead.initial_limit(),
    );

    service.seen.take_peak();
    let direct = scene::side(style, "direct", scene::direct(service.addr), pace).await;
    let direct_peak = service.seen.take_peak();
    let route = scene::through(&proxy, service.addr);
    let through = scene::side(style, "through breakwater", route, pace).await;
    let through_peak = service.seen.take_peak();
    let metrics = proxy.metrics().await;
    proxy.stop().await;
    let destination = service.addr.to_string();
    let limit = sum(
        &metrics,
        "breakwater_concurrency_limit",
        &[("direction", "outbound"), ("destination", &destination)],
    );

    let sides = [&direct, &through];
    let mut table = Table::new(&["direct", "through breakwater"]);
    table.common_rows(&sides);
    for (label, p) in [("p50 of the 2xx", 50.0), ("p99 of the 2xx", 99.0)] {
        table.row(
            label,
            sides
                .iter()
                .map(|r| latency(r.percentile_of(p, |s| s.ok()))),
        );
    }
    table.row(
        "2xx a second",
        sides.iter().map(|r| format!("{:.0}", r.ok_per_second())),
    );
    table.row(
        "held by the service, at most",
        [direct_peak.to_string(), through_peak.to_string()],
    );
    table.row(
        "concurrency limit at the end",
        ["—".into(), format!("{limit:.0}")],
    );
    table.print();
    println!(
        "{}",
        scene::requests_sentence(
            &direct,
            &[("through breakwater", &through)],
            "each direct request waited in the service's queue, longer than its client's pace; \
             breakwater answered what it shed at once, so its clients kept their pace.",
            "the clients through breakwater waited longer than the direct ones.",
        )
    );
    if pace.rate() > capacity {
        println!(
            "Both sides got about what the service can do ({:.0} and {:.0} answers a second of \
             its {capacity:.0}); breakwater refused the rest at once (the 503s above) instead of \
             making every request wait in the queue.",
            direct.ok_per_second(),
            through.ok_per_second()
        );
    } else {
        println!(
            "The load ({:.0}/s) stayed within what the service can do ({capacity:.0}/s): \
             nothing to shed (more --concurrency overloads it).",
            pace.rate()
        );
    }
    println!("{}", scene::reasons_line(&through));
    Ok(())
}
