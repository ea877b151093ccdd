//! breakwater's integration tests: one binary, a module per area. Every test starts
//! real servers and the proxy on loopback ephemeral ports; nothing is mocked.

// Tests panic on what they set up themselves: that is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod kube_api;
mod support;

mod admin;
mod admin_page;
mod alerts;
mod attribution;
mod balancing;
mod ci_programs;
mod cli;
mod demo;
mod discovery;
mod faults;
mod grammars;
mod grpc;
mod health;
mod hedging;
mod injector;
mod interception;
mod interop;
mod keys;
mod kubernetes;
mod layers;
mod lifecycle;
mod limits;
mod monitoring;
mod policy;
mod properties;
mod protocols;
mod proxying;
mod rate_limits;
mod reasons;
mod resilience;
mod retries;
mod spreading;
mod status;
mod strangler;
mod stream_idle;
mod streaming;
mod tls;
mod tracing;
mod tunnels;
mod validation;
