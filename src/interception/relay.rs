//! The opaque TCP relay: bytes in, the same bytes out, to the original
//! destination (or the app's targeted port), within the connect timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::copy_bidirectional;
use tokio::net::TcpStream;
use tracing::debug;

use crate::metrics::OpaqueMetrics;

/// Relays `client` to `target` until either side closes.
pub async fn relay(
    mut client: TcpStream,
    target: SocketAddr,
    connect_timeout: Duration,
    metrics: OpaqueMetrics,
) {
    metrics.connections.inc();
    let upstream = tokio::time::timeout(connect_timeout, TcpStream::connect(target)).await;
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
