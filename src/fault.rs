//! Faults injected on purpose, to rehearse a dependency's failures with the
//! policies that will protect the app from them (`fault-delay`, `fault-abort`
//! on a route). Off unless a route names them; each is counted
//! (`breakwater_faults_injected_total`) and marked in the access log.

use std::time::Duration;

use tokio::time::Instant;

use crate::accounting::InFlight;
use crate::addr::Destination;
use crate::error::ProxyError;
use crate::metrics::{Direction, Metrics};
use crate::units::format_duration;
use crate::upstream::traffic::RouteTraffic;

/// Delays the request and then fails it, each if the route's share says so;
/// `Err` is the answer the client gets instead of the upstream's. The delay
/// is part of the request's time: a delay past `deadline` ends in `timeout`
/// at the deadline, as a slow upstream would.
pub async fn inject(
    traffic: &RouteTraffic,
    direction: Direction,
    metrics: &Metrics,
    in_flight: &mut InFlight,
    deadline: Deadline<'_>,
) -> Result<(), ProxyError> {
    let Some(faults) = &traffic.faults else {
        return Ok(());
    };
    let injected = faults.roll();
    if let Some(delay) = injected.delay {
        metrics.count_fault(direction, &traffic.route, "delay");
        mark(in_flight, "delay");
        let until = Instant::now() + delay;
        if until >= deadline.at {
            tokio::time::sleep_until(deadline.at).await;
            return Err(ProxyError::Timeout {
                dest: deadline.dest.to_string(),
                after: format_duration(deadline.budget),
            });
        }
        tokio::time::sleep_until(until).await;
    }
    if let Some(status) = injected.abort {
        metrics.count_fault(direction, &traffic.route, "abort");
        mark(in_flight, "abort");
        return Err(ProxyError::FaultInjected {
            status,
            route: traffic.route.to_string(),
        });
    }
    Ok(())
}

fn mark(in_flight: &mut InFlight, kind: &'static str) {
    if let Some(a) = in_flight.access_mut() {
        a.fault = Some(kind);
    }
}

/// When the request's time is up, for a delay that would outlast it.
#[derive(Clone, Copy)]
pub struct Deadline<'a> {
    pub at: Instant,
    /// The whole of the request's time, for the message.
    pub budget: Duration,
    pub dest: &'a Destination,
}
