//! `demo --scene outage`: a service that goes away hard (its port stops
//! answering connects, as when its node is gone) and comes back. Straight at
//! it, every request waits for a connect timeout while it is down; through
//! breakwater, the first ones do too, then the circuit opens and breakwater
//! answers at once, watching the port until it accepts again.

use std::time::Duration;

use tokio::time::Instant;

use super::load::{Pace, Results, Sample};
use super::scene::{self, Proxied, Setup, Style, Table, got_of, latency};
use super::scrape::sum;
use super::service::{Behaviour, Service};

/// Each side's load time, and its shortest: the outage (4/9 of it) must
/// outlast a connect timeout for the breaker to learn anything.
const DURATION: Duration = Duration::from_millis(4500);

/// The load time of both sides.
pub fn load_time(setup: &Setup) -> Duration {
    2 * setup.duration.unwrap_or(DURATION).max(DURATION)
}

/// The breaker's open duration, shorter than its 5 s default so that the scene
/// fits in seconds. It matters when the circuit opens on the resets of
/// connections the service closed as it went (a request crossing the close on
/// the wire): breakwater then waits it out before a probe. When it opens on
/// connects that time out, connects every 25-250 ms find the port's return
/// sooner.
const OPEN_FOR: &str = "--breaker-open-duration=1s";

/// When the service was down, from the start of a side's load.
struct Downtime {
    from: Duration,
    to: Duration,
}

impl Downtime {
    fn covers(&self, s: &Sample) -> bool {
        s.at >= self.from && s.at < self.to
    }

    /// From its return to the first 2xx of a request sent after it went down.
    fn recovery(&self, r: &Results) -> Option<Duration> {
        r.samples
            .iter()
            .filter(|s| s.ok() && s.at >= self.from)
            .map(|s| s.done().saturating_sub(self.to))
            .min()
    }
}

pub async fn run(setup: &Setup) -> Result<(), Box<dyn std::error::Error>> {
    let style = setup.style;
    style.title(
        "outage",
        "the service goes down hard, then returns; breakwater's breaker answers in microseconds \
         instead of waiting, and closes when it is back.",
    );
    let mut service = Service::spawn(Behaviour::default()).await?;
    let proxy = Proxied::start(&[OPEN_FOR]).await?;
    let mut pace = setup.pace(1, Duration::from_millis(20), DURATION);
    pace.duration = pace.duration.max(DURATION);
    pace.connect_timeout = proxy.config.connect_timeout;
    let (up, down) = (pace.duration / 9, pace.duration * 4 / 9);
    let breaker = &proxy.config.breaker;
    println!(
        "  {}, {:.1} s a side; down after {:.1} s for {:.1} s. Both sides' connect timeout {}; \
         breakwater's breaker opens on {} failures in a row, {OPEN_FOR}.",
        pace.describe(),
        pace.duration.as_secs_f64(),
        up.as_secs_f64(),
        down.as_secs_f64(),
        crate::units::format_duration(pace.connect_timeout),
        breaker.consecutive_failures,
    );

    let start = service.seen.requests();
    let route = scene::direct(service.addr);
    let (direct, direct_down) = side(style, "direct", route, pace, &mut service, up, down).await?;
    let between = service.seen.requests();
    let route = scene::through(&proxy, service.addr);
    let (through, through_down) = side(
        style,
        "through breakwater",
        route,
        pace,
        &mut service,
        up,
        down,
    )
    .await?;
    let end = service.seen.requests();
    let metrics = proxy.metrics().await;
    proxy.stop().await;

    let mut table = Table::new(&["direct", "through breakwater"]);
    table.common_rows(&[&direct, &through]);
    let sides = [(&direct, &direct_down), (&through, &through_down)];
    table.row(
        "requests sent while down",
        sides
            .iter()
            .map(|(r, d)| r.samples.iter().filter(|s| d.covers(s)).count().to_string()),
    );
    for (label, p) in [
        ("answer while down, p50", 50.0),
        ("answer while down, p99", 99.0),
    ] {
        table.row(
            label,
            sides
                .iter()
                .map(|(r, d)| latency(r.percentile_of(p, |s| d.covers(s)))),
        );
    }
    table.row(
        "first 2xx after its return",
        sides.iter().map(|(r, d)| match d.recovery(r) {
            Some(after) => format!("{} later", latency(Some(after))),
            None => "none".into(),
        }),
    );
    let opened = sum(
        &metrics,
        "breakwater_circuit_transitions_total",
        &[("to", "open")],
    );
    table.row("circuit opened", ["—".into(), format!("{opened:.0}×")]);
    table.row(
        "the service got",
        [
            got_of(between - start, direct.sent()),
            got_of(end - between, through.sent()),
        ],
    );
    table.print();
    println!(
        "{}",
        scene::requests_sentence(
            &direct,
            &[("through breakwater", &through)],
            "while the service was down, each direct request waited out the connect timeout and \
             its client sent nothing meanwhile; breakwater's refusals kept the clients' pace.",
            "the clients through breakwater waited longer than the direct ones.",
        )
    );
    if opened > 0.0 {
        println!(
            "Through breakwater only the first requests of the outage waited (p99); then the \
             circuit opened and breakwater answered at once, probing until the service was back."
        );
    } else {
        println!(
            "The circuit did not open: too few failures in a row reached breakwater while the \
             service was down (more --concurrency makes more)."
        );
    }
    println!("{}", scene::reasons_line(&through));
    Ok(())
}

/// One side: load for `pace`, the service down after `up` for `down`.
async fn side(
    style: Style,
    name: &str,
    route: super::load::Route,
    pace: Pace,
    service: &mut Service,
    up: Duration,
    down: Duration,
) -> std::io::Result<(Results, Downtime)> {
    let started = Instant::now();
    let outage = async {
        tokio::time::sleep(up).await;
        let from = started.elapsed();
        service.go_down().await?;
        tokio::time::sleep_until(started + up + down).await;
        service.come_back()?;
        Ok::<_, std::io::Error>(Downtime {
            from,
            to: started.elapsed(),
        })
    };
    let (results, downtime) = tokio::join!(scene::side(style, name, route, pace), outage);
    Ok((results, downtime?))
}
