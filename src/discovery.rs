//! Where a destination's endpoints come from, besides DNS: `--discovery
//! kubernetes` turns a Service (by name or ClusterIP) into its ready pods.
//!
//! The contract with [`crate::upstream::endpoint::Endpoints`]: a lookup says
//! a destination is not discovery's ([`Lookup::NotMine`], DNS as before), is a
//! Service with these addresses and a [`Watched`] cell whose version moves when
//! they change (one atomic load per request tells the set is current), or is a
//! Service discovery cannot serve now (DNS meanwhile, and the reason shown).

pub mod kubernetes;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// One discovered destination: a Service and port, and its ready endpoints.
#[derive(Debug)]
pub struct Watched {
    /// `orders.shop:80`, for messages and `/upstreams`.
    pub service: String,
    version: AtomicU64,
    addrs: RwLock<Arc<[SocketAddr]>>,
}

impl Watched {
    pub fn new(service: String) -> Self {
        Watched {
            service,
            version: AtomicU64::new(0),
            addrs: RwLock::new(Arc::new([])),
        }
    }

    /// Moves with every change of [`Watched::addrs`].
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The ready endpoints now, with the version they are.
    pub fn addrs(&self) -> (Arc<[SocketAddr]>, u64) {
        let addrs = self.addrs.read().unwrap_or_else(|p| p.into_inner());
        (addrs.clone(), self.version())
    }

    /// Replaces the set if it changed; whether it did.
    pub fn set(&self, mut new: Vec<SocketAddr>) -> bool {
        new.sort_unstable();
        new.dedup();
        let mut addrs = self.addrs.write().unwrap_or_else(|p| p.into_inner());
        if **addrs == *new {
            return false;
        }
        *addrs = new.into();
        self.version.fetch_add(1, Ordering::AcqRel);
        true
    }
}

/// What discovery says of one destination.
#[derive(Debug)]
pub enum Lookup {
    /// Not a Service discovery knows: resolve it by DNS.
    NotMine,
    /// A Service: its endpoints, kept current in the cell.
    Found(Arc<Watched>),
    /// A Service discovery cannot serve now: DNS meanwhile, for this reason.
    Unavailable(String),
}
