//! The demo's load: paced clients for a fixed time, every request recorded with
//! when it went, how long it took and what came back.
//!
//! Why paced and not as fast as possible: a closed loop sends a new request the
//! moment the last one ends, so its request count measures latency, not load —
//! a side that answers faster gets more requests, one that retries gets fewer,
//! and a fast refusal turns into a busy loop. Each client here sends one request
//! every `every` (or at once, if its last one took longer), so both sides of a
//! scene get the same offered load, and a difference in requests sent says that
//! clients were kept waiting.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

/// Where the load goes: straight at the service, or through a proxy that is
/// told the service's address in `Host`.
#[derive(Clone, Copy)]
pub struct Route {
    pub connect_to: SocketAddr,
    pub host: SocketAddr,
}

/// How much load, for how long.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    pub clients: usize,
    /// Each client's interval between requests.
    pub every: Duration,
    pub duration: Duration,
    /// The clients' own TCP connect timeout: what an app without breakwater
    /// waits for an unreachable upstream (the same as breakwater's).
    pub connect_timeout: Duration,
}

impl Pace {
    /// Requests a second all clients together offer.
    pub fn rate(&self) -> f64 {
        self.clients as f64 / self.every.as_secs_f64()
    }

    pub fn describe(&self) -> String {
        format!(
            "{} clients, each a GET every {} ms ({:.0}/s in all)",
            self.clients,
            self.every.as_millis(),
            self.rate()
        )
    }
}

/// What one request got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx with its whole body.
    Ok,
    /// An HTTP answer that is not a 2xx, with breakwater's
    /// `x-breakwater-reason` if it made the answer itself.
    Failed { status: u16, reason: Option<String> },
    /// No HTTP answer: a dropped connection, a refused or timed-out connect.
    NoAnswer,
}

/// One request.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When it was sent, from the start of the run.
    pub at: Duration,
    pub took: Duration,
    pub outcome: Outcome,
}

impl Sample {
    pub fn ok(&self) -> bool {
        self.outcome == Outcome::Ok
    }

    /// When its answer came, from the start of the run.
    pub fn done(&self) -> Duration {
        self.at + self.took
    }
}

/// What one run measured, samples in the order they were sent.
#[derive(Default)]
pub struct Results {
    pub samples: Vec<Sample>,
    pub duration: Duration,
}

impl Results {
    pub fn sent(&self) -> u64 {
        self.samples.len() as u64
    }

    /// Requests that got an HTTP answer, whatever its status.
    pub fn answered(&self) -> u64 {
        self.samples
            .iter()
            .filter(|s| s.outcome != Outcome::NoAnswer)
            .count() as u64
    }

    pub fn ok(&self) -> u64 {
        self.samples.iter().filter(|s| s.ok()).count() as u64
    }

    /// 2xx answers a second, from the start to the last answer (requests still
    /// out at the end of the run are answered after it).
    pub fn ok_per_second(&self) -> f64 {
        let last = self.samples.iter().map(Sample::done).max();
        let span = last.unwrap_or_default().max(self.duration);
        self.ok() as f64 / span.as_secs_f64().max(0.001)
    }

    /// The `p`th percentile (0-100) latency of every request.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        percentile(self.samples.iter(), p)
    }

    /// The `p`th percentile latency of the requests `keep` picks.
    pub fn percentile_of(&self, p: f64, keep: impl Fn(&Sample) -> bool) -> Option<Duration> {
        percentile(self.samples.iter().filter(|s| keep(s)), p)
    }

    /// The answers breakwater made itself, by status and reason: `503
    /// circuit-open` and how many.
    pub fn reasons(&self) -> BTreeMap<String, u64> {
        let mut reasons = BTreeMap::new();
        for s in &self.samples {
            if let Outcome::Failed {
                status,
                reason: Some(reason),
            } = &s.outcome
            {
                *reasons.entry(format!("{status} {reason}")).or_default() += 1;
            }
        }
        reasons
    }
}

fn percentile<'a>(samples: impl Iterator<Item = &'a Sample>, p: f64) -> Option<Duration> {
    let mut took: Vec<Duration> = samples.map(|s| s.took).collect();
    if took.is_empty() {
        return None;
    }
    took.sort_unstable();
    let rank = ((p / 100.0) * (took.len() - 1) as f64).round() as usize;
    took.get(rank.min(took.len() - 1)).copied()
}

/// A client that gives up on a request after this: none of the scenes' should
/// take near it, but a run must end.
const GIVE_UP: Duration = Duration::from_secs(15);

/// Drives `pace` against `route`, calling `progress(elapsed, requests)` about
/// twice a second. Requests still out at the end are waited for.
pub async fn run(route: Route, pace: Pace, progress: impl Fn(Duration, u64)) -> Results {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(pace.connect_timeout));
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector);
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + pace.duration;
    let clients = pace.clients.max(1);
    let workers: Vec<_> = (0..clients)
        .map(|i| {
            let (client, count) = (client.clone(), count.clone());
            // Spread the clients over one interval, so the load is smooth.
            let mut next = started + pace.every.mul_f64(i as f64 / clients as f64);
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let uri = format!("http://{}/", route.connect_to);
                let host = route.host.to_string();
                while next < deadline {
                    tokio::time::sleep_until(next).await;
                    let Ok(req) = Request::get(&uri)
                        .header(header::HOST, &host)
                        .body(Empty::<Bytes>::new())
                    else {
                        break;
                    };
                    let sent = Instant::now();
                    let outcome = tokio::time::timeout(GIVE_UP, async {
                        let resp = match client.request(req).await {
                            Ok(resp) => resp,
                            Err(_) => return Outcome::NoAnswer,
                        };
                        let status = resp.status();
                        let reason = resp
                            .headers()
                            .get("x-breakwater-reason")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        match resp.into_body().collect().await {
                            Ok(_) if status.is_success() => Outcome::Ok,
                            Ok(_) => Outcome::Failed {
                                status: status.as_u16(),
                                reason,
                            },
                            Err(_) => Outcome::NoAnswer,
                        }
                    })
                    .await
                    .unwrap_or(Outcome::NoAnswer);
                    let now = Instant::now();
                    count.fetch_add(1, Ordering::Relaxed);
                    samples.push(Sample {
                        at: sent - started,
                        took: now - sent,
                        outcome,
                    });
                    // Late: go at once, but do not make up for lost time.
                    next = (next + pace.every).max(now);
                }
                samples
            })
        })
        .collect();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500).min(deadline - Instant::now())).await;
        progress(started.elapsed(), count.load(Ordering::Relaxed));
    }
    let mut samples = Vec::new();
    for w in workers {
        if let Ok(s) = w.await {
            samples.extend(s);
        }
    }
    samples.sort_by_key(|s| s.at);
    Results {
        samples,
        duration: pace.duration,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, took_ms: u64, outcome: Outcome) -> Sample {
        Sample {
            at: Duration::from_millis(at_ms),
            took: Duration::from_millis(took_ms),
            outcome,
        }
    }

    #[test]
    fn counts_and_percentiles_of_a_run() {
        let refused = Outcome::Failed {
            status: 503,
            reason: Some("circuit-open".into()),
        };
        let r = Results {
            samples: vec![
                sample(0, 10, Outcome::Ok),
                sample(1, 20, Outcome::Ok),
                sample(2, 1000, Outcome::NoAnswer),
                sample(3, 1, refused.clone()),
                sample(4, 1, refused),
            ],
            duration: Duration::from_secs(1),
        };
        assert_eq!((r.sent(), r.answered(), r.ok()), (5, 4, 2));
        assert_eq!(r.percentile(50.0), Some(Duration::from_millis(10)));
        assert_eq!(r.percentile(100.0), Some(Duration::from_millis(1000)));
        assert_eq!(
            r.percentile_of(99.0, Sample::ok),
            Some(Duration::from_millis(20))
        );
        assert_eq!(r.percentile_of(50.0, |_| false), None);
        assert_eq!(r.reasons().get("503 circuit-open"), Some(&2));
    }
}
