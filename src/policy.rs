//! Policies: plain state machines and rules with no I/O. The pipeline in
//! `outbound`, `inbound` and `attempts` enforces them.

pub mod adaptive;
pub mod balance;
pub mod breaker;
pub mod budget;
pub mod bulkhead;
pub mod deadline;
pub mod hedge;
pub mod limits;
pub mod mode;
pub mod overrides;
pub mod rate_limit;
pub mod retry;
pub mod traffic;
