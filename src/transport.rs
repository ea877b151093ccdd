//! Talking HTTP to one address: pooled HTTP/1.1 and HTTP/2 connections, the
//! version each endpoint was learned to speak, the client's request body as it
//! is read and replayed, and header hygiene. Mechanism: it knows no
//! destination, route or policy.

pub mod client_body;
pub mod headers;
pub mod pool;
pub mod replay;
pub mod speaks;
pub mod stream_idle;
