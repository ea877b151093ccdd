//! `RequestCtx`: what every stage of one request's way through the pipeline
//! needs to know about it — where it goes, its clocks, and its client's body —
//! in one place instead of a row of loose arguments. One clock type throughout:
//! tokio's `Instant`, which tests may pause.

use std::time::Duration;

use tokio::time::Instant;

use crate::error::ProxyError;
use crate::transport::client_body::BodyWatch;
use crate::units::format_duration;
use crate::upstream::DestinationState;

pub struct RequestCtx<'a> {
    /// The destination, with its policy, breakers, budget and bulkhead.
    pub state: &'a DestinationState,
    /// When the request arrived: its deadline counts from here.
    pub started: Instant,
    /// When breakwater stops waiting for a response head: `--timeout`, or the
    /// caller's shorter deadline.
    pub deadline: Instant,
    /// When the request held its bulkhead slot (`started` without a bulkhead):
    /// the upstream's clock for the adaptive limit, and the first attempt's.
    pub slot_granted: Instant,
    /// The client's request body as it is read, so that its faults are not
    /// taken for the upstream's; `None` for a request without a body.
    pub body: Option<&'a BodyWatch>,
}

impl RequestCtx<'_> {
    /// The deadline passed: no response from the destination within `after`.
    pub fn timed_out(&self, after: Duration) -> ProxyError {
        ProxyError::Timeout {
            dest: self.state.dest.to_string(),
            after: format_duration(after),
        }
    }

    /// The whole of the request's time, for a deadline that passed.
    pub fn budget(&self) -> Duration {
        self.deadline.saturating_duration_since(self.started)
    }
}
