//! Policies: plain state machines and rules with no I/O. The pipeline in
//! `outbound`, `inbound` and `attempts` enforces them.

pub mod budget;
pub mod deadline;
pub mod retry;
