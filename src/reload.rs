//! The live policy: `--policy-file` watched, and applied to new requests when
//! it changes. A valid new file replaces both route tables at once; learned
//! state survives for each route whose policy did not change (see
//! [`Registry::replace_routes`]); an invalid one is logged with its line and
//! column, counted, shown in `/config`, and the old policy kept.
//!
//! The file is polled rather than watched with inotify: a Kubernetes ConfigMap
//! volume changes by swapping a `..data` symlink, which a read of the path
//! follows, and the kubelet takes up to a minute to publish an edit anyway.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus::IntCounterVec;
use serde::Serialize;
use tracing::{info, warn};

use crate::config::Config;
use crate::config::layered::{self, Layered, PolicyVersion};
use crate::policy::overrides::Overrides;
use crate::upstream::{Registry, Replaced, RouteTable};

/// How often the file is read for changes.
pub const POLICY_POLL: Duration = Duration::from_millis(500);

/// What `/config` says of the file.
#[derive(Clone, Debug, Default, Serialize)]
struct FileStatus {
    path: Option<String>,
    /// The version in force.
    version: Option<PolicyVersion>,
    precedence: &'static str,
    /// The `defaults` keys the file sets, which win over their flags.
    keys_over_flags: Vec<&'static str>,
    /// The last change that was refused, while the file still holds it.
    rejected: Option<String>,
    reloads_applied: u64,
    reloads_rejected: u64,
    /// What the last applied reload did to learned state.
    last_reload: Option<ReloadEffect>,
}

#[derive(Clone, Copy, Debug, Serialize)]
struct ReloadEffect {
    outbound: Replaced,
    inbound: Replaced,
}

/// The effective configuration, and the file it came from.
pub struct LivePolicy {
    /// The flags alone: each version of the file is applied over these.
    flags: Config,
    effective: RwLock<Config>,
    status: RwLock<FileStatus>,
    /// The bytes last read, applied or not: a refused file is not re-parsed
    /// (and re-logged) until it changes again.
    last_bytes: Mutex<Option<Vec<u8>>>,
    outbound: Arc<Registry>,
    inbound: Arc<Registry>,
    reloads: IntCounterVec,
    pub overrides: Arc<Overrides>,
    /// Why outbound TLS is unavailable, if it is: a new file that adds a
    /// `tls=true` route is then refused rather than sent in plaintext.
    tls_unavailable: Option<String>,
}

/// The start-up policy: the flags, and over them the file if there is one.
pub struct Initial {
    pub config: Config,
    layered: Option<(Layered, Vec<u8>)>,
}

impl Initial {
    /// Reads `--policy-file`, if given; an invalid file fails start-up.
    pub fn load(flags: &Config) -> Result<Initial, layered::PolicyError> {
        let Some(path) = &flags.policy_file else {
            return Ok(Initial {
                config: flags.clone(),
                layered: None,
            });
        };
        let bytes = layered::read(path)?;
        let l = layered::apply(flags, path, &bytes)?;
        // The flags' own warnings are logged with the flags; these are the file's.
        for warning in l
            .config
            .warnings
            .iter()
            .filter(|w| !flags.warnings.contains(w))
        {
            warn!(%warning, file = %path.display(), "policy file");
        }
        Ok(Initial {
            config: l.config.clone(),
            layered: Some((l, bytes)),
        })
    }
}

impl LivePolicy {
    pub fn new(
        flags: Config,
        initial: Initial,
        outbound: Arc<Registry>,
        inbound: Arc<Registry>,
        reloads: IntCounterVec,
        overrides: Arc<Overrides>,
        tls_unavailable: Option<String>,
    ) -> Self {
        let mut status = FileStatus {
            path: flags.policy_file.as_ref().map(|p| p.display().to_string()),
            precedence: "policy file over flags: its defaults replace the flags they name; \
                         its routes are matched before the --route flags",
            ..FileStatus::default()
        };
        let mut last = None;
        if let Some((l, bytes)) = initial.layered {
            status.version = Some(l.version);
            status.keys_over_flags = l.file_keys;
            last = Some(bytes);
        }
        LivePolicy {
            flags,
            effective: RwLock::new(initial.config),
            status: RwLock::new(status),
            last_bytes: Mutex::new(last),
            outbound,
            inbound,
            reloads,
            overrides,
            tls_unavailable,
        }
    }

    fn path(&self) -> Option<&PathBuf> {
        self.flags.policy_file.as_ref()
    }

    /// Re-reads the file every [`POLICY_POLL`] while the proxy runs.
    pub fn watch(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        self.path()?;
        let live = Arc::clone(self);
        Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(POLICY_POLL).await;
                let path = live.path().cloned();
                // File reads block: keep them off the async workers.
                let bytes = tokio::task::spawn_blocking(move || path.map(std::fs::read)).await;
                if let Ok(Some(Ok(bytes))) = bytes {
                    live.consider(bytes);
                }
                // Unreadable (mid-swap, or deleted): keep the policy, try again.
            }
        }))
    }

    /// Applies `bytes` if they differ from the last ones read.
    pub fn consider(&self, bytes: Vec<u8>) {
        let Some(path) = self.path() else { return };
        let mut last = self.last_bytes.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_deref() == Some(bytes.as_slice()) {
            return;
        }
        let result = layered::apply(&self.flags, path, &bytes).and_then(|l| {
            match &self.tls_unavailable {
                Some(why) if l.config.routes.iter().any(|r| r.tls == Some(true)) => {
                    Err(layered::PolicyError::Invalid {
                        path: path.display().to_string(),
                        message: format!(
                            "a route sets tls=true, but outbound TLS did not load at start-up: {why}"
                        ),
                    })
                }
                _ => Ok(l),
            }
        });
        *last = Some(bytes);
        drop(last);
        let mut status = self.status.write().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(l) => {
                let outbound = self
                    .outbound
                    .replace_routes(Arc::new(RouteTable::new(&l.config)));
                let inbound = self
                    .inbound
                    .replace_routes(Arc::new(RouteTable::inbound(&l.config)));
                for warning in &l.config.warnings {
                    warn!(%warning, "policy file");
                }
                info!(
                    file = %path.display(),
                    hash = %l.version.hash,
                    kept = outbound.kept + inbound.kept,
                    rebuilt = outbound.rebuilt + inbound.rebuilt,
                    "policy file applied"
                );
                self.reloads.with_label_values(&["applied"]).inc();
                status.reloads_applied += 1;
                status.version = Some(l.version);
                status.keys_over_flags = l.file_keys;
                status.rejected = None;
                status.last_reload = Some(ReloadEffect { outbound, inbound });
                *self.effective.write().unwrap_or_else(|p| p.into_inner()) = l.config;
            }
            Err(e) => {
                let (line, column) = e.position().map_or((0, 0), |p| (p.line, p.col));
                warn!(error = %e, line, column, "policy file rejected; keeping the policy in force");
                self.reloads.with_label_values(&["rejected"]).inc();
                status.reloads_rejected += 1;
                status.rejected = Some(e.to_string());
            }
        }
    }

    /// `/config`: the effective configuration, each route's policy, the file's
    /// version and status, and the admin overrides in force.
    pub fn describe(&self) -> String {
        let config = self
            .effective
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut described = describe_value(&config);
        if let Some(map) = described.as_object_mut() {
            let status = self
                .status
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            map.insert(
                "policy_file".into(),
                serde_json::to_value(status).unwrap_or_default(),
            );
            map.insert(
                "overrides".into(),
                serde_json::to_value(self.overrides.describe()).unwrap_or_default(),
            );
        }
        serde_json::to_string_pretty(&described).unwrap_or_default() + "\n"
    }
}

/// The configuration as JSON, with under `policies` each listener's routes and
/// the policy each results in.
pub fn describe_value(config: &Config) -> serde_json::Value {
    let mut described = serde_json::to_value(config).unwrap_or_default();
    if let Some(map) = described.as_object_mut() {
        map.insert(
            "policies".into(),
            serde_json::json!({
                "outbound": RouteTable::new(config).describe(),
                "inbound": RouteTable::inbound(config).describe(),
            }),
        );
    }
    described
}
