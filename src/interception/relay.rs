//! The opaque TCP relay: bytes in, the same bytes out, to the original
//! destination (or the app's targeted port), within the connect timeout and
//! behind a connect-level circuit breaker per address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::copy_bidirectional;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use crate::metrics::OpaqueMetrics;
use crate::policy::breaker::{Breaker, BreakerConfig};

/// Connect-level circuit breakers of opaque destinations, one per address. A
/// TCP relay knows only whether the connect succeeded, so that is all they judge.
pub struct ConnectBreakers {
    config: BreakerConfig,
    breakers: Mutex<HashMap<SocketAddr, Arc<Breaker>>>,
}

/// Addresses remembered at most; past that the map starts afresh.
const MAX_TARGETS: usize = 4096;

impl ConnectBreakers {
    pub fn new(config: BreakerConfig) -> Self {
        ConnectBreakers {
            config,
            breakers: Mutex::new(HashMap::new()),
        }
    }

    fn of(&self, target: SocketAddr) -> Arc<Breaker> {
        let mut map = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TARGETS && !map.contains_key(&target) {
            map.clear();
        }
        map.entry(target)
            .or_insert_with(|| Arc::new(Breaker::new(self.config, Instant::now())))
            .clone()
    }
}

/// Relays `client` to `target` until either side closes. While the target's
/// circuit is open the client's connection is closed at once.
pub async fn relay(
    mut client: TcpStream,
    target: SocketAddr,
    connect_timeout: Duration,
    breakers: &ConnectBreakers,
    metrics: OpaqueMetrics,
) {
    metrics.connections.inc();
    let Ok(permit) = breakers.of(target).admit(Instant::now()) else {
        metrics.connect_failures.inc();
        debug!(%target, "opaque relay: circuit open, connection closed");
        return;
    };
    let started = Instant::now();
    let upstream = tokio::time::timeout(connect_timeout, TcpStream::connect(target)).await;
    let connected = matches!(upstream, Ok(Ok(_)));
    if let Some(t) = permit.record(connected, started.elapsed(), Instant::now()) {
        debug!(%target, to = t.to.as_str(), "opaque relay: circuit changed");
    }
    let mut upstream = match upstream {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            metrics.connect_failures.inc();
            debug!(%target, error = %e, "opaque relay: connect failed");
            return;
        }
        Err(_) => {
            metrics.connect_failures.inc();
            debug!(%target, "opaque relay: connect timed out");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    match copy_bidirectional(&mut client, &mut upstream).await {
        Ok((sent, received)) => {
            metrics.sent.inc_by(sent);
            metrics.received.inc_by(received);
            debug!(%target, sent, received, "opaque relay closed");
        }
        Err(e) => debug!(%target, error = %e, "opaque relay broke"),
    }
}
