//! Recovery that follows the upstream. While an endpoint's circuit is open
//! because the endpoint could not be reached, a plain TCP connect on a short,
//! growing interval tells when it accepts connections again, and the half-open
//! probe goes then rather than when the open duration ends: a pod that
//! restarts in a second costs about a second of refusals, not the five of the
//! open duration. An endpoint that accepts but still fails is judged by that
//! probe as before and opens again, for longer; one that opened on 5xx or
//! timeouts is reachable already and waits out its open duration.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::endpoint::Endpoint;

/// The first check, soon after the circuit opens; each later one waits
/// twice as long, up to [`LONGEST_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(25);
/// A restarted endpoint waits at most this long for its traffic.
const LONGEST_WAIT: Duration = Duration::from_millis(250);

/// Watches `endpoint`, whose circuit has just opened on a connect failure,
/// until it accepts a connection, its circuit leaves the open state, or the
/// open duration ends (its probe is due by then anyway). Bounded by that
/// duration: an endpoint that is gone for good costs nothing afterwards.
pub fn watch(endpoint: Arc<Endpoint>, connect_timeout: Duration) {
    tokio::spawn(async move {
        let mut wait = FIRST_WAIT;
        loop {
            let Some(until) = endpoint.breaker.open_until() else {
                return;
            };
            let next = Instant::now() + wait;
            if next >= until {
                return;
            }
            tokio::time::sleep_until(next).await;
            let connect = TcpStream::connect(endpoint.addr);
            if let Ok(Ok(_)) = tokio::time::timeout(connect_timeout, connect).await {
                debug!(endpoint = %endpoint.addr, "endpoint accepts connections again; probe due");
                endpoint.breaker.reachable(Instant::now());
                return;
            }
            wait = (wait * 2).min(LONGEST_WAIT);
        }
    });
}
