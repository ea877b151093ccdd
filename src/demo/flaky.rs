//! The demo's flaky service: mostly fine, sometimes overloaded, sometimes gone.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// How often each fault happens, in percent of requests.
pub struct Faults {
    pub unavailable: u32,
    pub reset: u32,
    pub slow: u32,
    pub slow_for: Duration,
}

impl Faults {
    pub fn describe(&self) -> String {
        format!(
            "{}% 503s, {}% dropped connections, {}% answers that stall {:?}",
            self.unavailable, self.reset, self.slow, self.slow_for
        )
    }
}

/// The fault a request meets, drawn at random.
enum Fate {
    Ok,
    Unavailable,
    Reset,
    Slow,
}

impl Faults {
    fn draw(&self) -> Fate {
        let roll = fastrand::u32(0..100);
        if roll < self.unavailable {
            Fate::Unavailable
        } else if roll < self.unavailable + self.reset {
            Fate::Reset
        } else if roll < self.unavailable + self.reset + self.slow {
            Fate::Slow
        } else {
            Fate::Ok
        }
    }
}

/// The service dropped the connection instead of answering.
#[derive(Debug, thiserror::Error)]
#[error("flaky service dropped the connection")]
struct Dropped;

/// Serves until the task is dropped.
pub async fn spawn(faults: Faults) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let faults = std::sync::Arc::new(faults);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let faults = faults.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let fate = faults.draw();
                    let slow_for = faults.slow_for;
                    async move {
                        let (status, body) = match fate {
                            Fate::Ok => (StatusCode::OK, "ok\n"),
                            Fate::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "overloaded\n"),
                            // An error from the service makes hyper close the
                            // connection without a response: a dropped request.
                            Fate::Reset => return Err(Dropped),
                            Fate::Slow => {
                                tokio::time::sleep(slow_for).await;
                                (StatusCode::OK, "ok, eventually\n")
                            }
                        };
                        let mut resp =
                            Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                        *resp.status_mut() = status;
                        Ok::<_, Dropped>(resp)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                Ok::<(), Infallible>(())
            });
        }
    });
    Ok((addr, task))
}
