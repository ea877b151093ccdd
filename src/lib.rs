//! breakwater: a sidecar resilience proxy for HTTP.
//!
//! A request's path, outermost first (see README's lifecycle diagram):
//! [`listener`] accepts and serves HTTP/1.1 and HTTP/2 → [`inbound`] or
//! [`outbound`] decides where it goes and under which policy → [`exchange`] applies
//! the deadline, header hygiene and the bulkhead → [`attempts`] retries →
//! [`forward`] sends one attempt over a [`transport`] connection → [`body`] streams
//! the answer back, carrying the request's [`accounting::InFlight`] guard until
//! the last byte; [`rescue`] answers for a request that failed.
//!
//! The modules are in layers (README, "Architecture"; enforced by
//! `tests/tests/layers.rs`): leaves, policies, configuration, mechanism,
//! per-destination state, pipeline, wiring.

pub(crate) mod accounting;
pub mod addr;
pub mod admin;
pub mod app;
pub(crate) mod attempts;
pub(crate) mod body;
pub mod cli;
pub mod config;
pub(crate) mod connect;
pub(crate) mod context;
pub mod demo;
pub mod destination;
pub(crate) mod discovery;
pub mod drain;
pub mod error;
pub mod exchange;
pub(crate) mod executor;
pub(crate) mod fault;
pub(crate) mod forward;
pub(crate) mod health;
pub(crate) mod inbound;
pub mod inject;
pub mod injector;
pub mod interception;
pub(crate) mod listener;
pub mod metrics;
pub(crate) mod mirror;
pub(crate) mod outbound;
pub mod policy;
pub(crate) mod reload;
pub(crate) mod rescue;
pub mod status;
pub mod telemetry;
pub mod tls;
pub(crate) mod trace;
pub mod transport;
pub(crate) mod tunnel;
pub mod units;
pub(crate) mod upstream;

pub use app::{BoundAddrs, Proxy, RunReport};
pub use config::Config;
