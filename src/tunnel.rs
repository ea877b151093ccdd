//! Opaque byte relays: `CONNECT host:port` tunnels (HTTPS the app originates
//! itself) and protocol upgrades (WebSocket) once both sides have switched.

use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use crate::drain::DrainWatch;
use crate::transport::stream_idle::relay;

/// Relays bytes between the client's upgraded connection and `upstream` until
/// either side closes, or nothing moves for `idle` (`--stream-idle-timeout`). The
/// drain watch keeps shutdown waiting for the tunnel, up to `--drain-timeout`.
pub fn relay_connect(
    client: OnUpgrade,
    mut upstream: TcpStream,
    drain: DrainWatch,
    idle: Option<Duration>,
) {
    tokio::spawn(async move {
        let _drain = drain;
        match client.await {
            Ok(upgraded) => {
                let mut client = TokioIo::new(upgraded);
                match relay(&mut client, &mut upstream, idle).await {
                    Ok((up, down)) => debug!(up, down, "tunnel closed"),
                    Err(e) => debug!(error = %e, "tunnel broke"),
                }
            }
            Err(e) => debug!(error = %e, "client left before the tunnel opened"),
        }
    });
}

/// Relays bytes between both sides of a `101 Switching Protocols` exchange,
/// until either closes or nothing moves for `idle`.
pub fn relay_upgrade(
    client: OnUpgrade,
    upstream: OnUpgrade,
    drain: DrainWatch,
    idle: Option<Duration>,
) {
    tokio::spawn(async move {
        let _drain = drain;
        match tokio::try_join!(client, upstream) {
            Ok((client, upstream)) => {
                let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                match relay(&mut client, &mut upstream, idle).await {
                    Ok((up, down)) => debug!(up, down, "upgraded connection closed"),
                    Err(e) => debug!(error = %e, "upgraded connection broke"),
                }
            }
            Err(e) => debug!(error = %e, "upgrade did not complete"),
        }
    });
}
