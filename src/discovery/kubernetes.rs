//! `--discovery kubernetes`: a Service's ready pods from its EndpointSlices,
//! watched through the pod's own service account, without a control plane.
//!
//! One shared watch per namespace, not one per destination: every Service of
//! a namespace is watched (small: its ClusterIPs and ports, to map a ClusterIP
//! or a Service port to its slices), and the EndpointSlices of the Services
//! that were called, by a label selector that names them. A newly called
//! Service restarts that watch with the wider selector (the old set stays in
//! force until the new list is in); a Service no destination uses any more
//! leaves it at the next sweep. The `kube` crate's watcher does the protocol:
//! list, watch from its resourceVersion, relist on `410 Gone`, bookmarks,
//! backoff on errors. A failure keeps the last set; a namespace never listed
//! (the API unreachable, RBAC denied) leaves its Services to DNS, said once
//! in the log and per destination in `/upstreams`.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{Lookup, Watched};
use crate::config::DiscoveryConfig;

/// The label the EndpointSlice controller puts on a Service's slices.
const SERVICE_LABEL: &str = "kubernetes.io/service-name";
/// The longest a first request to a Service waits for its slices to be listed.
const SYNC_WAIT: Duration = Duration::from_secs(2);
/// How often Services no destination uses any more are let go.
const SWEEP: Duration = Duration::from_secs(60);
/// Where a pod's own namespace is written.
const NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Why discovery could not start; the proxy then resolves by DNS.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("--kubernetes-api {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("not in a Kubernetes pod ({0}); give --kubernetes-api")]
    NotInCluster(String),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(String),
}

/// A Service as discovery keeps it.
#[derive(Clone, Debug, Default, PartialEq)]
struct ServiceInfo {
    cluster_ips: Vec<IpAddr>,
    /// Service port → the port's name, which its slices' ports carry.
    ports: Vec<(u16, Option<String>)>,
}

/// An EndpointSlice as discovery keeps it: only what routing needs.
#[derive(Clone, Debug, Default, PartialEq)]
struct SliceInfo {
    service: String,
    /// Port name → the pods' port.
    ports: Vec<(Option<String>, u16)>,
    /// Addresses of endpoints that are ready and not terminating.
    ready: Vec<IpAddr>,
}

fn service_info(svc: &Service) -> ServiceInfo {
    let spec = svc.spec.as_ref();
    let mut cluster_ips: Vec<IpAddr> = spec
        .and_then(|s| s.cluster_ips.clone())
        .unwrap_or_default()
        .iter()
        .chain(spec.and_then(|s| s.cluster_ip.as_ref()))
        .filter_map(|ip| ip.parse().ok())
        .collect();
    cluster_ips.sort_unstable();
    cluster_ips.dedup();
    let ports = spec
        .and_then(|s| s.ports.as_ref())
        .map(|ports| {
            ports
                .iter()
                .filter_map(|p| Some((u16::try_from(p.port).ok()?, p.name.clone())))
                .collect()
        })
        .unwrap_or_default();
    ServiceInfo { cluster_ips, ports }
}

fn slice_info(slice: &EndpointSlice) -> Option<SliceInfo> {
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_LABEL)?.clone();
    if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
        return None;
    }
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| Some((p.name.clone(), u16::try_from(p.port?).ok()?)))
        .collect();
    let ready = slice
        .endpoints
        .iter()
        .flatten()
        .filter(|e| {
            // Unset `ready` means ready; a terminating endpoint takes no new requests.
            let c = e.conditions.as_ref();
            c.and_then(|c| c.ready).unwrap_or(true)
                && !c.and_then(|c| c.terminating).unwrap_or(false)
        })
        .filter_map(|e| e.addresses.first()?.parse().ok())
        .collect();
    Some(SliceInfo {
        service,
        ports,
        ready,
    })
}

/// The ready endpoints of `service`'s port `port`, from its slices.
fn endpoints_of<'a>(
    service: Option<&ServiceInfo>,
    slices: impl Iterator<Item = &'a SliceInfo>,
    name: &str,
    port: u16,
) -> Vec<SocketAddr> {
    let Some(service) = service else {
        return Vec::new();
    };
    let Some((_, port_name)) = service.ports.iter().find(|(p, _)| *p == port) else {
        return Vec::new();
    };
    let mut addrs = Vec::new();
    for slice in slices.filter(|s| s.service == name) {
        // Unnamed on one side and empty on the other are the same port.
        let named =
            |n: &Option<String>| n.as_deref().unwrap_or("") == port_name.as_deref().unwrap_or("");
        if let Some((_, target)) = slice.ports.iter().find(|(n, _)| named(n)) {
            addrs.extend(slice.ready.iter().map(|ip| SocketAddr::new(*ip, *target)));
        }
    }
    addrs
}

/// How a host names a Service, if it does.
#[derive(Debug, PartialEq, Eq)]
struct ServiceName<'a> {
    name: &'a str,
    namespace: &'a str,
    /// `name.ns.svc[.cluster.local]`: a Kubernetes name beyond doubt.
    explicit: bool,
}

/// `orders` (the pod's namespace), `orders.shop` (when `shop` is watched,
/// else it may be any DNS name), `orders.shop.svc[.<cluster domain>]`.
fn service_name<'a>(host: &'a str, own: &'a str, watched: &[String]) -> Option<ServiceName<'a>> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let mut labels = host.split('.');
    let name = labels.next().filter(|n| !n.is_empty())?;
    match (labels.next(), labels.next()) {
        (None, _) => Some(ServiceName {
            name,
            namespace: own,
            explicit: false,
        }),
        (Some(ns), None) if watched.iter().any(|w| w == ns) => Some(ServiceName {
            name,
            namespace: ns,
            explicit: false,
        }),
        (Some(ns), Some("svc")) if !ns.is_empty() => Some(ServiceName {
            name,
            namespace: ns,
            explicit: true,
        }),
        _ => None,
    }
}

/// A namespace's two watch tasks: its Services, and its wanted slices.
type Tasks = (Option<JoinHandle<()>>, Option<JoinHandle<()>>);

/// The watches of one namespace and what they hold.
struct Namespace {
    name: String,
    services_api: Api<Service>,
    slices_api: Api<EndpointSlice>,
    services: RwLock<HashMap<String, ServiceInfo>>,
    /// The slices of the wanted Services only, by slice name.
    slices: RwLock<HashMap<String, SliceInfo>>,
    /// Services whose slices are watched: those a destination uses.
    wanted: Mutex<BTreeSet<String>>,
    /// Each discovered destination, while a destination holds it.
    cells: Mutex<HashMap<(String, u16), Weak<Watched>>>,
    services_synced: watch::Sender<bool>,
    /// The selector generation whose list is in.
    slices_synced: watch::Sender<u64>,
    generation: AtomicU64,
    tasks: Mutex<Tasks>,
    /// The last failure of either watch, until one succeeds again.
    failure: Mutex<Option<String>>,
}

impl Namespace {
    fn new(client: &Client, name: &str) -> Arc<Self> {
        Arc::new(Namespace {
            name: name.to_string(),
            services_api: Api::namespaced(client.clone(), name),
            slices_api: Api::namespaced(client.clone(), name),
            services: RwLock::default(),
            slices: RwLock::default(),
            wanted: Mutex::default(),
            cells: Mutex::default(),
            services_synced: watch::channel(false).0,
            slices_synced: watch::channel(0).0,
            generation: AtomicU64::new(0),
            tasks: Mutex::default(),
            failure: Mutex::default(),
        })
    }

    fn start(self: &Arc<Self>) {
        let ns = Arc::clone(self);
        let task = tokio::spawn(async move { ns.watch_services().await });
        lock(&self.tasks).0 = Some(task);
    }

    fn stop(&self) {
        let mut tasks = lock(&self.tasks);
        for task in [tasks.0.take(), tasks.1.take()].into_iter().flatten() {
            task.abort();
        }
    }

    async fn watch_services(self: Arc<Self>) {
        let stream = watcher(self.services_api.clone(), watcher::Config::default());
        let mut stream = std::pin::pin!(stream);
        let mut buffer = HashMap::new();
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Init) => buffer.clear(),
                Ok(Event::InitApply(svc)) => {
                    if let Some(name) = svc.metadata.name.clone() {
                        buffer.insert(name, service_info(&svc));
                    }
                }
                Ok(Event::InitDone) => {
                    *write(&self.services) = std::mem::take(&mut buffer);
                    self.services_synced.send_replace(true);
                    self.recovered();
                    self.refresh_all();
                }
                Ok(Event::Apply(svc)) => {
                    if let Some(name) = svc.metadata.name.clone() {
                        write(&self.services).insert(name.clone(), service_info(&svc));
                        self.refresh(&name);
                    }
                }
                Ok(Event::Delete(svc)) => {
                    if let Some(name) = svc.metadata.name.clone() {
                        write(&self.services).remove(&name);
                        self.refresh(&name);
                    }
                }
                Err(e) => self.failed("services", &e),
            }
        }
    }

    async fn watch_slices(self: Arc<Self>, generation: u64, selector: String) {
        let config = watcher::Config::default().labels(&selector);
        let stream = watcher(self.slices_api.clone(), config);
        let mut stream = std::pin::pin!(stream);
        let mut buffer = HashMap::new();
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Init) => buffer.clear(),
                Ok(Event::InitApply(slice)) => {
                    if let (Some(name), Some(info)) =
                        (slice.metadata.name.clone(), slice_info(&slice))
                    {
                        buffer.insert(name, info);
                    }
                }
                Ok(Event::InitDone) => {
                    // The whole set at once: the old one served until now.
                    *write(&self.slices) = std::mem::take(&mut buffer);
                    self.slices_synced.send_replace(generation);
                    self.recovered();
                    self.refresh_all();
                }
                Ok(Event::Apply(slice)) => {
                    let Some(name) = slice.metadata.name.clone() else {
                        continue;
                    };
                    let info = slice_info(&slice);
                    let old = match &info {
                        Some(info) => write(&self.slices).insert(name, info.clone()),
                        None => write(&self.slices).remove(&name),
                    };
                    for svc in old
                        .iter()
                        .chain(info.iter())
                        .map(|s| s.service.clone())
                        .collect::<BTreeSet<_>>()
                    {
                        self.refresh(&svc);
                    }
                }
                Ok(Event::Delete(slice)) => {
                    let Some(name) = slice.metadata.name.clone() else {
                        continue;
                    };
                    let old = write(&self.slices).remove(&name);
                    if let Some(old) = old {
                        self.refresh(&old.service);
                    }
                }
                Err(e) => self.failed("endpointslices", &e),
            }
        }
    }

    /// Restarts the slice watch with a selector naming every wanted Service;
    /// returns the generation whose list the caller may wait for.
    fn rewatch_slices(self: &Arc<Self>) -> u64 {
        let wanted = lock(&self.wanted).iter().cloned().collect::<Vec<_>>();
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let mut tasks = lock(&self.tasks);
        if let Some(old) = tasks.1.take() {
            old.abort();
        }
        if wanted.is_empty() {
            write(&self.slices).clear();
            return generation;
        }
        let selector = format!("{SERVICE_LABEL} in ({})", wanted.join(","));
        let ns = Arc::clone(self);
        tasks.1 = Some(tokio::spawn(ns.watch_slices(generation, selector)));
        generation
    }

    /// Recomputes every live destination of `service`.
    fn refresh(&self, service: &str) {
        let cells: Vec<(u16, Arc<Watched>)> = lock(&self.cells)
            .iter()
            .filter(|((s, _), _)| s == service)
            .filter_map(|((_, port), cell)| Some((*port, cell.upgrade()?)))
            .collect();
        if cells.is_empty() {
            return;
        }
        let services = read(&self.services);
        let slices = read(&self.slices);
        for (port, cell) in cells {
            let addrs = endpoints_of(services.get(service), slices.values(), service, port);
            if cell.set(addrs) {
                tracing::debug!(service = %cell.service, endpoints = cell.addrs().0.len(), "discovered endpoints changed");
            }
        }
    }

    fn refresh_all(&self) {
        let wanted: Vec<String> = lock(&self.wanted).iter().cloned().collect();
        for service in wanted {
            self.refresh(&service);
        }
    }

    fn failed(&self, what: &str, e: &watcher::Error) {
        let reason = describe(&self.name, what, e);
        let mut failure = lock(&self.failure);
        if failure.as_deref() != Some(reason.as_str()) {
            // Once per distinct failure, not once per retry.
            warn!(namespace = %self.name, error = %reason, "Kubernetes discovery failing: its Services keep their last endpoints, or go by DNS if they have none yet");
            *failure = Some(reason);
        }
    }

    fn recovered(&self) {
        if lock(&self.failure).take().is_some() {
            info!(namespace = %self.name, "Kubernetes discovery recovered");
        }
    }

    fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    /// Waits until the Services are listed, at most `SYNC_WAIT`; not at all
    /// while the watch is failing, so a destination left to DNS is not held
    /// up each time its DNS answer is due.
    async fn services_ready(&self) -> bool {
        if *self.services_synced.borrow() {
            return true;
        }
        if self.failure().is_some() {
            return false;
        }
        let mut rx = self.services_synced.subscribe();
        tokio::time::timeout(SYNC_WAIT, rx.wait_for(|synced| *synced))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits until the slices of generation `g` (or a later one) are listed.
    async fn slices_ready(&self, g: u64) -> bool {
        if *self.slices_synced.borrow() >= g {
            return true;
        }
        if self.failure().is_some() {
            return false;
        }
        let mut rx = self.slices_synced.subscribe();
        tokio::time::timeout(SYNC_WAIT, rx.wait_for(|synced| *synced >= g))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Lets go of Services no destination holds; whether anything is left.
    fn sweep(self: &Arc<Self>) -> bool {
        let live: BTreeSet<String> = {
            let mut cells = lock(&self.cells);
            cells.retain(|_, cell| cell.strong_count() > 0);
            cells.keys().map(|(s, _)| s.clone()).collect()
        };
        let changed = {
            let mut wanted = lock(&self.wanted);
            let changed = *wanted != live;
            *wanted = live.clone();
            changed
        };
        if changed {
            self.rewatch_slices();
        }
        !live.is_empty()
    }
}

fn describe(namespace: &str, what: &str, e: &watcher::Error) -> String {
    let status = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.as_ref()),
        watcher::Error::WatchError(s) => Some(s.as_ref()),
        _ => None,
    };
    match status {
        Some(s) if s.is_forbidden() => format!(
            "forbidden: the pod's service account may not list and watch {what} in namespace \
             {namespace} (the chart's discovery.rbac makes the Role)"
        ),
        _ => format!("{what} in namespace {namespace}: {e}"),
    }
}

/// The watcher, retrying with backoff on errors (each error still reported).
fn watcher<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl futures_util::Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, config).default_backoff()
}

/// Kubernetes endpoint discovery for one proxy.
pub struct KubeDiscovery {
    client: Client,
    own_namespace: String,
    /// `--discovery-namespaces`: watched from start-up, for ClusterIPs.
    watched: Vec<String>,
    namespaces: Mutex<HashMap<String, Arc<Namespace>>>,
}

impl KubeDiscovery {
    /// Builds the client (in-cluster, or `--kubernetes-api`) and starts
    /// watching the Services of `--discovery-namespaces`. Needs a runtime.
    pub fn start(config: &DiscoveryConfig) -> Result<Arc<Self>, DiscoveryError> {
        // The kube client's TLS asks rustls for the process default: ours.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kube_config = match &config.api {
            Some(url) => {
                let uri = url
                    .parse::<http::Uri>()
                    .map_err(|e| DiscoveryError::BadUrl {
                        url: url.clone(),
                        reason: e.to_string(),
                    })?;
                kube::Config::new(uri)
            }
            None => kube::Config::incluster()
                .map_err(|e| DiscoveryError::NotInCluster(e.to_string()))?,
        };
        let own_namespace = std::env::var("POD_NAMESPACE")
            .ok()
            .filter(|n| !n.is_empty())
            .or_else(|| {
                std::fs::read_to_string(NAMESPACE_FILE)
                    .ok()
                    .map(|n| n.trim().to_string())
                    .filter(|n| !n.is_empty())
            })
            .unwrap_or_else(|| kube_config.default_namespace.clone());
        let client =
            Client::try_from(kube_config).map_err(|e| DiscoveryError::Client(e.to_string()))?;
        let watched = if config.namespaces.is_empty() {
            vec![own_namespace.clone()]
        } else {
            config.namespaces.clone()
        };
        let discovery = Arc::new(KubeDiscovery {
            client,
            own_namespace,
            watched,
            namespaces: Mutex::default(),
        });
        for ns in &discovery.watched {
            discovery.namespace(ns);
        }
        let weak = Arc::downgrade(&discovery);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP).await;
                let Some(d) = weak.upgrade() else { break };
                d.sweep();
            }
        });
        info!(namespace = %discovery.own_namespace, watched = ?discovery.watched, "Kubernetes endpoint discovery started");
        Ok(discovery)
    }

    fn namespace(&self, name: &str) -> Arc<Namespace> {
        let mut all = lock(&self.namespaces);
        if let Some(ns) = all.get(name) {
            return ns.clone();
        }
        let ns = Namespace::new(&self.client, name);
        ns.start();
        all.insert(name.to_string(), ns.clone());
        ns
    }

    fn sweep(&self) {
        let mut all = lock(&self.namespaces);
        all.retain(|name, ns| {
            let keep = ns.sweep() || self.watched.contains(name);
            if !keep {
                ns.stop();
            }
            keep
        });
    }

    /// What discovery makes of `host:port`.
    pub async fn lookup(&self, host: &str, port: u16) -> Lookup {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return self.lookup_cluster_ip(ip, port).await;
        }
        let Some(svc) = service_name(host, &self.own_namespace, &self.watched) else {
            return Lookup::NotMine;
        };
        let ns = self.namespace(svc.namespace);
        if !ns.services_ready().await {
            return Lookup::Unavailable(ns.failure().unwrap_or_else(|| {
                format!("the Services of namespace {} are not listed yet", ns.name)
            }));
        }
        if !read(&ns.services).contains_key(svc.name) {
            // `localhost`, or a name the search path makes something else.
            return Lookup::NotMine;
        }
        self.watch(&ns, svc.name, port).await
    }

    async fn lookup_cluster_ip(&self, ip: IpAddr, port: u16) -> Lookup {
        for name in &self.watched {
            let ns = self.namespace(name);
            if !ns.services_ready().await {
                continue;
            }
            let service = read(&ns.services)
                .iter()
                .find(|(_, s)| s.cluster_ips.contains(&ip))
                .map(|(name, _)| name.clone());
            if let Some(service) = service {
                return self.watch(&ns, &service, port).await;
            }
        }
        Lookup::NotMine
    }

    /// The cell of `service:port`, watching its slices if nothing did yet.
    async fn watch(&self, ns: &Arc<Namespace>, service: &str, port: u16) -> Lookup {
        let key = (service.to_string(), port);
        let existing = lock(&ns.cells).get(&key).and_then(Weak::upgrade);
        if let Some(cell) = existing {
            return Lookup::Found(cell);
        }
        let cell = Arc::new(Watched::new(format!("{service}.{}:{port}", ns.name)));
        lock(&ns.cells).insert(key, Arc::downgrade(&cell));
        let newly = lock(&ns.wanted).insert(service.to_string());
        let generation = if newly {
            ns.rewatch_slices()
        } else {
            ns.generation.load(Ordering::Acquire)
        };
        if !ns.slices_ready(generation).await {
            return Lookup::Unavailable(ns.failure().unwrap_or_else(|| {
                format!(
                    "the EndpointSlices of {service}.{} are not listed yet",
                    ns.name
                )
            }));
        }
        ns.refresh(service);
        Lookup::Found(cell)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_in_their_kubernetes_forms() {
        let watched = vec!["shop".to_string()];
        let own = "default";
        let n = |h| service_name(h, own, &watched);
        assert_eq!(
            n("orders"),
            Some(ServiceName {
                name: "orders",
                namespace: "default",
                explicit: false
            })
        );
        assert_eq!(n("orders.shop").map(|s| s.namespace), Some("shop"));
        assert_eq!(n("example.com"), None, "an unwatched second label is DNS");
        let full = n("orders.billing.svc.cluster.local").unwrap();
        assert_eq!(
            (full.name, full.namespace, full.explicit),
            ("orders", "billing", true)
        );
        assert!(n("orders.billing.svc").is_some_and(|s| s.explicit));
        assert!(n("orders.shop.svc.cluster.local.").is_some());
        assert_eq!(n("a.b.c"), None);
        assert_eq!(n(".x"), None);
    }

    #[test]
    fn endpoints_follow_the_service_port_name_to_ready_pods() {
        let service = ServiceInfo {
            cluster_ips: vec!["10.96.0.10".parse().unwrap()],
            ports: vec![(80, Some("http".into())), (9090, Some("metrics".into()))],
        };
        let slices = [
            SliceInfo {
                service: "orders".into(),
                ports: vec![(Some("http".into()), 8080), (Some("metrics".into()), 9100)],
                ready: vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()],
            },
            SliceInfo {
                service: "other".into(),
                ports: vec![(Some("http".into()), 8080)],
                ready: vec!["10.0.0.9".parse().unwrap()],
            },
        ];
        let got = endpoints_of(Some(&service), slices.iter(), "orders", 80);
        assert_eq!(
            got,
            vec![
                "10.0.0.1:8080".parse().unwrap(),
                "10.0.0.2:8080".parse::<SocketAddr>().unwrap()
            ]
        );
        let metrics = endpoints_of(Some(&service), slices.iter(), "orders", 9090);
        assert!(metrics.iter().all(|a| a.port() == 9100));
        assert!(endpoints_of(Some(&service), slices.iter(), "orders", 81).is_empty());
        assert!(endpoints_of(None, slices.iter(), "orders", 80).is_empty());
    }

    #[test]
    fn not_ready_and_terminating_endpoints_are_left_out() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "orders-abc", "labels": {"kubernetes.io/service-name": "orders"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": true, "terminating": true}},
                {"addresses": ["10.0.0.4"]},
                {"addresses": ["not-an-ip"]}
            ],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))
        .unwrap();
        let info = slice_info(&slice).unwrap();
        let ready: Vec<String> = info.ready.iter().map(|ip| ip.to_string()).collect();
        assert_eq!(ready, ["10.0.0.1", "10.0.0.4"]);
        assert_eq!(info.ports, vec![(Some("http".into()), 8080)]);
    }
}
