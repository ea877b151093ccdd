//! Address types, parsed once: a destination's `host:port` and an address range.
//! A leaf: it imports nothing of breakwater's.

use std::fmt;
use std::net::IpAddr;

use http::uri::Authority;

/// A host and port an outbound request goes to, host lower-cased, as routes and
/// metrics name it. IPv6 hosts are kept without brackets.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    host: Box<str>,
    port: u16,
}

impl Destination {
    pub fn new(host: &str, port: u16) -> Self {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Destination {
            host: host.to_ascii_lowercase().into_boxed_str(),
            port,
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether this is `host:port` already, without allocating: the per-connection
    /// cache compares every request's target with its last destination.
    pub fn is(&self, host: &str, port: u16) -> bool {
        self.port == port && self.host.eq_ignore_ascii_case(strip_brackets(host))
    }

    /// The `host:port` authority used in upstream URIs (brackets around IPv6).
    pub fn authority(&self) -> Authority {
        let text = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        // A Destination is only built from an authority that parsed, so this holds;
        // the fallback keeps a surprise from becoming a panic.
        Authority::try_from(text).unwrap_or_else(|_| Authority::from_static("invalid:0"))
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

pub(crate) fn strip_brackets(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Why a `--exclude-outbound-cidrs` entry is not an address range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("'{0}' is not an address/prefix")]
    NotAnAddress(String),
    #[error("'{cidr}': the prefix must be 0-{max}")]
    Prefix { cidr: String, max: u8 },
}

/// An address range from `--exclude-outbound-cidrs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| CidrError::NotAnAddress(s.into()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| CidrError::Prefix {
                    cidr: s.into(),
                    max,
                })?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}
