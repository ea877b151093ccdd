//! A small DNS cache in front of the system resolver (getaddrinfo, so /etc/hosts
//! and the pod's search domains apply). Answers are reused for `--dns-ttl`.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Names kept at most; a scan of many hosts cannot grow the cache without bound.
const MAX_ENTRIES: usize = 4096;

/// When a name was resolved, and to what.
type Entry = (Instant, Arc<[IpAddr]>);

pub struct DnsCache {
    ttl: Duration,
    entries: Mutex<HashMap<Box<str>, Entry>>,
}

impl DnsCache {
    pub fn new(ttl: Duration) -> Self {
        DnsCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The addresses of `host`, from the cache while fresh. Only called when a new
    /// upstream connection is needed, never per request on a pooled connection.
    pub async fn resolve(&self, host: &str) -> io::Result<Arc<[IpAddr]>> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Arc::new([ip]));
        }
        if let Some(hit) = self.cached(host) {
            return Ok(hit);
        }
        let addrs: Vec<IpAddr> = tokio::net::lookup_host((host, 0))
            .await?
            .map(|sa| sa.ip())
            .collect();
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host} has no addresses"),
            ));
        }
        let addrs: Arc<[IpAddr]> = addrs.into();
        if !self.ttl.is_zero() {
            self.store(host, addrs.clone());
        }
        Ok(addrs)
    }

    fn cached(&self, host: &str) -> Option<Arc<[IpAddr]>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(host)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, addrs)| addrs.clone())
    }

    fn store(&self, host: &str, addrs: Arc<[IpAddr]>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(host.into(), (Instant::now(), addrs));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_skip_the_resolver_and_names_are_cached() {
        let dns = DnsCache::new(Duration::from_secs(60));
        let ip = dns.resolve("127.0.0.1").await.ok();
        assert_eq!(
            ip.as_deref(),
            Some(&["127.0.0.1".parse().unwrap_or(IpAddr::from([0; 4]))][..])
        );
        let first = dns.resolve("localhost").await.ok();
        assert!(first.is_some(), "localhost resolves");
        assert!(dns.cached("localhost").is_some());
        assert!(dns.resolve("does-not-exist.invalid").await.is_err());
    }
}
