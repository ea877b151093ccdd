//! A fake Kubernetes API server for the discovery tests: plain HTTP on loopback,
//! no authentication, speaking the API's own list/watch protocol for
//! `discovery.k8s.io/v1` EndpointSlices and `v1` Services, namespaced and
//! cluster-wide, with objects in the shape `tests/fixtures/kubernetes/` records.
//!
//! What it does as a real API server (1.30+) does, because clients depend on it:
//!
//! - one global resourceVersion, bumped by every write, as etcd's revision;
//! - `LIST` with `labelSelector` (`k=v`, `k==v`, `k!=v`, `k in (a,b)`,
//!   `k notin (a,b)`, `k`, `!k`, comma = and), `fieldSelector` on
//!   `metadata.name`/`metadata.namespace` (other fields are ignored), `limit` and
//!   `continue` (pages of one snapshot's version, a token that expires with it:
//!   410 Expired), items without `kind`/`apiVersion`;
//! - `WATCH` (`watch=true`): from `resourceVersion=N` the changes after N; from none
//!   or `0` synthetic `ADDED` events for what exists; `sendInitialEvents=true`
//!   (streaming lists) adds the `k8s.io/initial-events-end` bookmark; one JSON
//!   event per line in a chunked body; an object whose labels stop (start)
//!   matching the selector arrives as `DELETED` (`ADDED`); `BOOKMARK`s when
//!   `allowWatchBookmarks=true`; the stream ends after `timeoutSeconds`;
//! - a version older than the last compaction: the watch answers 200 with one
//!   `ERROR` event carrying a 410 Expired `Status` and ends, as the watch cache does;
//! - `Status` bodies for 400, 401, 403, 404, 405, 410, 422 and 503.
//!
//! The test drives it through [`FakeApi`]: writes (`put_service`, `put_slice`,
//! `delete_slice`), faults (`set_forbidden`, `set_unauthorized`, `set_down`,
//! `set_unavailable`, `expire_watches`, `break_watches`, `send_garbage`) and
//! counters (lists, watches) that show a client's relists.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

/// `discovery.k8s.io/v1` EndpointSlices.
pub const SLICES: Kind = Kind::EndpointSlices;
/// `v1` Services.
pub const SERVICES: Kind = Kind::Services;

/// The user a 403 names, as a pod's service account would be.
pub const USER: &str = "system:serviceaccount:shop:breakwater";

/// The resources the fake serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    EndpointSlices,
    Services,
}

impl Kind {
    const ALL: [Kind; 2] = [Kind::EndpointSlices, Kind::Services];

    fn index(self) -> usize {
        match self {
            Kind::EndpointSlices => 0,
            Kind::Services => 1,
        }
    }

    /// The resource's plural, as in its URL.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::EndpointSlices => "endpointslices",
            Kind::Services => "services",
        }
    }

    /// The API group, `""` for the core group.
    pub fn group(self) -> &'static str {
        match self {
            Kind::EndpointSlices => "discovery.k8s.io",
            Kind::Services => "",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Kind::EndpointSlices => "discovery.k8s.io/v1",
            Kind::Services => "v1",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Kind::EndpointSlices => "EndpointSlice",
            Kind::Services => "Service",
        }
    }

    /// `plural.group`, as messages name a resource.
    fn qualified(self) -> String {
        match self.group() {
            "" => self.plural().to_string(),
            group => format!("{}.{group}", self.plural()),
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Kind::EndpointSlices => "/apis/discovery.k8s.io/v1",
            Kind::Services => "/api/v1",
        }
    }

    /// The collection's path, in `ns` or cluster-wide.
    pub fn path(self, ns: Option<&str>) -> String {
        match ns {
            Some(ns) => format!("{}/namespaces/{ns}/{}", self.prefix(), self.plural()),
            None => format!("{}/{}", self.prefix(), self.plural()),
        }
    }
}

/// A recorded response shape from `tests/fixtures/kubernetes/`.
pub fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/kubernetes/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// One endpoint of an EndpointSlice, as the EndpointSlice controller writes it.
#[derive(Clone, Debug)]
pub struct Ep {
    pub ip: String,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// The pod's name; `None`: made up from the Service and the address.
    pub pod: Option<String>,
    pub node: Option<String>,
    pub zone: Option<String>,
}

impl Ep {
    /// Running and passing its readiness probe.
    pub fn ready(ip: &str) -> Ep {
        Ep::with(ip, true, true, false)
    }

    /// Running, failing its readiness probe.
    pub fn not_ready(ip: &str) -> Ep {
        Ep::with(ip, false, false, false)
    }

    /// Shutting down while still passing its readiness probe.
    pub fn terminating(ip: &str) -> Ep {
        Ep::with(ip, false, true, true)
    }

    pub fn with(ip: &str, ready: bool, serving: bool, terminating: bool) -> Ep {
        Ep {
            ip: ip.to_string(),
            ready,
            serving,
            terminating,
            pod: None,
            node: None,
            zone: None,
        }
    }
}

/// One request the fake answered (or refused).
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub params: HashMap<String, String>,
    pub at: Instant,
}

impl Seen {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    pub fn is_watch(&self) -> bool {
        self.param("watch").is_some_and(is_true)
    }
}

type Key = (Kind, String, String);

/// One write, as watches replay it.
struct Change {
    rv: u64,
    key: Key,
    before: Option<Arc<Value>>,
    /// The object now; for a deletion, its last state at the deletion's version.
    object: Arc<Value>,
    deleted: bool,
}

struct Store {
    rv: u64,
    /// Versions below this are compacted away: a watch from one gets 410.
    oldest: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    log: Vec<Change>,
}

/// Changes kept for watches that resume; beyond, the oldest half is compacted.
const LOG_LIMIT: usize = 8192;

#[derive(Clone, Copy, Debug)]
enum Signal {
    Changed,
    Expire,
    Break,
    Garbage,
    Bookmark,
}

struct Settings {
    bookmark_every: Option<Duration>,
    watch_cap: Option<Duration>,
}

struct Shared {
    store: Mutex<Store>,
    signals: broadcast::Sender<Signal>,
    /// Bumped to drop every open connection.
    kill: watch::Sender<u64>,
    forbidden: [AtomicBool; 2],
    unauthorized: AtomicBool,
    unavailable: AtomicBool,
    down: AtomicBool,
    lists: [AtomicUsize; 2],
    list_pages: [AtomicUsize; 2],
    watches: [AtomicUsize; 2],
    gets: [AtomicUsize; 2],
    open: [AtomicUsize; 2],
    connections: AtomicUsize,
    requests: Mutex<Vec<Seen>>,
    settings: Mutex<Settings>,
    audit: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    fn kill_connections(&self) {
        self.kill.send_modify(|epoch| *epoch += 1);
    }
}

/// The fake API server; stops (and drops its connections) when dropped.
pub struct FakeApi {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.kill_connections();
    }
}

impl FakeApi {
    /// Starts the server on `127.0.0.1:0`, empty, at resourceVersion 1000.
    pub async fn start() -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake API");
        let addr = listener.local_addr().expect("fake API addr");
        let (signals, _) = broadcast::channel(1024);
        let (kill, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                rv: 1000,
                oldest: 0,
                objects: BTreeMap::new(),
                log: Vec::new(),
            }),
            signals,
            kill,
            forbidden: Default::default(),
            unauthorized: AtomicBool::new(false),
            unavailable: AtomicBool::new(false),
            down: AtomicBool::new(false),
            lists: Default::default(),
            list_pages: Default::default(),
            watches: Default::default(),
            gets: Default::default(),
            open: Default::default(),
            connections: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            settings: Mutex::new(Settings {
                bookmark_every: Some(Duration::from_secs(1)),
                watch_cap: None,
            }),
            audit: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        FakeApi { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT`, for `--kubernetes-api`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    // ---- objects ----

    /// Creates or replaces Service `ns/name`, type ClusterIP (`cluster_ip` "None":
    /// headless), with `ports` as (name, port, targetPort); a targetPort that is a
    /// number is sent as one, else as a port name.
    pub fn put_service(&self, ns: &str, name: &str, cluster_ip: &str, ports: &[(&str, u16, &str)]) {
        let now = now_rfc3339();
        let mut svc = fixture("service.json");
        let spec_ports: Vec<Value> = ports
            .iter()
            .map(|&(port_name, port, target)| {
                let target = target
                    .parse::<u16>()
                    .map_or_else(|_| json!(target), |n| json!(n));
                let mut p = json!({"protocol": "TCP", "port": port, "targetPort": target});
                if !port_name.is_empty() {
                    p["name"] = json!(port_name);
                }
                p
            })
            .collect();
        let applied = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "annotations": {},
                "labels": {"app.kubernetes.io/name": name},
                "name": name,
                "namespace": ns,
            },
            "spec": {
                "ports": spec_ports.iter().map(|p| {
                    let mut p = p.clone();
                    if let Some(p) = p.as_object_mut() {
                        p.remove("protocol");
                    }
                    p
                }).collect::<Vec<_>>(),
                "selector": {"app.kubernetes.io/name": name},
            },
        });
        let meta = &mut svc["metadata"];
        meta["name"] = json!(name);
        meta["namespace"] = json!(ns);
        meta["uid"] = json!(uid_for(&format!("service/{ns}/{name}")));
        meta["creationTimestamp"] = json!(now);
        meta["labels"] = json!({"app.kubernetes.io/name": name});
        meta["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] =
            json!(format!("{applied}\n"));
        let fields = &mut meta["managedFields"][0];
        fields["time"] = json!(now);
        let mut field_ports = Map::new();
        field_ports.insert(".".into(), json!({}));
        for p in &spec_ports {
            let mut f = json!({".": {}, "f:port": {}, "f:protocol": {}, "f:targetPort": {}});
            if p.get("name").is_some() {
                f["f:name"] = json!({});
            }
            field_ports.insert(
                format!("k:{{\"port\":{},\"protocol\":\"TCP\"}}", p["port"]),
                f,
            );
        }
        fields["fieldsV1"]["f:spec"]["f:ports"] = Value::Object(field_ports);
        let spec = &mut svc["spec"];
        spec["ports"] = json!(spec_ports);
        spec["selector"] = json!({"app.kubernetes.io/name": name});
        spec["clusterIP"] = json!(cluster_ip);
        spec["clusterIPs"] = json!([cluster_ip]);
        self.put(SERVICES, svc);
    }

    /// Creates or replaces EndpointSlice `ns/slice` of Service `service`, as the
    /// EndpointSlice controller writes one. Each endpoint is (ip, ready,
    /// terminating); `serving` is `ready || terminating` (a terminating pod still
    /// passing its readiness probe). `ports` are (name, port): the name is the
    /// Service port's, the port the pod's.
    pub fn put_slice(
        &self,
        ns: &str,
        slice: &str,
        service: &str,
        endpoints: &[(&str, bool, bool)],
        ports: &[(&str, u16)],
    ) {
        let eps: Vec<Ep> = endpoints
            .iter()
            .map(|&(ip, ready, terminating)| Ep::with(ip, ready, ready || terminating, terminating))
            .collect();
        self.put_slice_with(ns, slice, service, &eps, ports);
    }

    /// [`FakeApi::put_slice`] with every endpoint field chosen.
    pub fn put_slice_with(
        &self,
        ns: &str,
        slice: &str,
        service: &str,
        eps: &[Ep],
        ports: &[(&str, u16)],
    ) {
        let obj = self.slice_object(ns, slice, service, eps, ports);
        self.put(SLICES, obj);
    }

    /// Puts many slices as one burst of writes (for big Services).
    pub fn put_slices(
        &self,
        ns: &str,
        service: &str,
        slices: &[(String, Vec<Ep>)],
        ports: &[(&str, u16)],
    ) {
        for (name, eps) in slices {
            self.put_slice_with(ns, name, service, eps, ports);
        }
    }

    fn slice_object(
        &self,
        ns: &str,
        slice: &str,
        service: &str,
        eps: &[Ep],
        ports: &[(&str, u16)],
    ) -> Value {
        let now = now_rfc3339();
        let owner_uid = self
            .get(SERVICES, ns, service)
            .and_then(|s| s["metadata"]["uid"].as_str().map(str::to_string))
            .unwrap_or_else(|| uid_for(&format!("service/{ns}/{service}")));
        let mut obj = fixture("endpointslice.json");
        let meta = &mut obj["metadata"];
        meta["name"] = json!(slice);
        meta["generateName"] = json!(format!("{service}-"));
        meta["namespace"] = json!(ns);
        meta["uid"] = json!(uid_for(&format!("endpointslice/{ns}/{slice}")));
        meta["generation"] = json!(1);
        meta["creationTimestamp"] = json!(now);
        meta["labels"] = json!({
            "app.kubernetes.io/name": service,
            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            "kubernetes.io/service-name": service,
        });
        meta["annotations"]["endpoints.kubernetes.io/last-change-trigger-time"] = json!(now);
        meta["ownerReferences"][0]["name"] = json!(service);
        meta["ownerReferences"][0]["uid"] = json!(owner_uid);
        let fields = &mut meta["managedFields"][0];
        fields["time"] = json!(now);
        fields["fieldsV1"]["f:metadata"]["f:ownerReferences"] =
            json!({".": {}, format!("k:{{\"uid\":\"{owner_uid}\"}}"): {}});
        // Go's encoding of an empty (nil) list: `null`, as real slices say.
        obj["endpoints"] = if eps.is_empty() {
            Value::Null
        } else {
            Value::Array(eps.iter().map(|e| endpoint_json(ns, service, e)).collect())
        };
        obj["ports"] = if ports.is_empty() {
            Value::Null
        } else {
            Value::Array(
                ports
                    .iter()
                    .map(|&(name, port)| json!({"name": name, "protocol": "TCP", "port": port}))
                    .collect(),
            )
        };
        obj
    }

    /// Creates or replaces any object of `kind` (its metadata names it); its
    /// resourceVersion is set, its uid and creationTimestamp kept from the object it
    /// replaces. The new resourceVersion.
    pub fn put(&self, kind: Kind, mut obj: Value) -> u64 {
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let name = obj["metadata"]["name"]
            .as_str()
            .expect("an object has a name")
            .to_string();
        obj["kind"] = json!(kind.kind());
        obj["apiVersion"] = json!(kind.api_version());
        let key = (kind, ns, name);
        let mut store = self.shared.store();
        store.rv += 1;
        let rv = store.rv;
        let before = store.objects.get(&key).cloned();
        if let Some(old) = &before {
            let meta = &mut obj["metadata"];
            meta["uid"] = old["metadata"]["uid"].clone();
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
            if let Some(g) = old["metadata"]["generation"].as_u64() {
                meta["generation"] = json!(g + 1);
            }
        }
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let obj = Arc::new(obj);
        store.objects.insert(key.clone(), obj.clone());
        store.log.push(Change {
            rv,
            key,
            before,
            object: obj,
            deleted: false,
        });
        compact(&mut store);
        drop(store);
        let _ = self.shared.signals.send(Signal::Changed);
        rv
    }

    /// Deletes EndpointSlice `ns/name`; whether it existed.
    pub fn delete_slice(&self, ns: &str, name: &str) -> bool {
        self.delete(SLICES, ns, name)
    }

    /// Deletes Service `ns/name`; whether it existed.
    pub fn delete_service(&self, ns: &str, name: &str) -> bool {
        self.delete(SERVICES, ns, name)
    }

    pub fn delete(&self, kind: Kind, ns: &str, name: &str) -> bool {
        let key = (kind, ns.to_string(), name.to_string());
        let mut store = self.shared.store();
        let Some(before) = store.objects.remove(&key) else {
            return false;
        };
        store.rv += 1;
        let rv = store.rv;
        let mut gone = (*before).clone();
        gone["metadata"]["resourceVersion"] = json!(rv.to_string());
        store.log.push(Change {
            rv,
            key,
            before: Some(before),
            object: Arc::new(gone),
            deleted: true,
        });
        compact(&mut store);
        drop(store);
        let _ = self.shared.signals.send(Signal::Changed);
        true
    }

    /// The stored object, with `kind` and `apiVersion`.
    pub fn get(&self, kind: Kind, ns: &str, name: &str) -> Option<Value> {
        let key = (kind, ns.to_string(), name.to_string());
        self.shared.store().objects.get(&key).map(|o| (**o).clone())
    }

    /// The last resourceVersion handed out.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().rv
    }

    // ---- faults ----

    /// Every request (of either kind) answers 403 Forbidden, as RBAC denies.
    pub fn set_forbidden(&self, on: bool) {
        for kind in Kind::ALL {
            self.set_forbidden_kind(kind, on);
        }
    }

    /// Requests for `kind` answer 403 Forbidden.
    pub fn set_forbidden_kind(&self, kind: Kind, on: bool) {
        self.shared.forbidden[kind.index()].store(on, Ordering::SeqCst);
    }

    /// Every request answers 401 Unauthorized (a revoked or expired token).
    pub fn set_unauthorized(&self, on: bool) {
        self.shared.unauthorized.store(on, Ordering::SeqCst);
    }

    /// Every request answers 503 ServiceUnavailable (an API server without etcd).
    pub fn set_unavailable(&self, on: bool) {
        self.shared.unavailable.store(on, Ordering::SeqCst);
    }

    /// Down: open connections (watches too) are dropped, new ones accepted and
    /// closed at once, requests on a connection that survived closed unanswered.
    pub fn set_down(&self, on: bool) {
        self.shared.down.store(on, Ordering::SeqCst);
        if on {
            self.shared.kill_connections();
        }
    }

    /// A compaction: every version handed out so far becomes too old. Open watches
    /// get an `ERROR` event with a 410 Expired Status and end; a watch (or a list's
    /// `continue`) from an older version gets 410; a new list works.
    pub fn expire_watches(&self) {
        let mut store = self.shared.store();
        store.rv += 1;
        store.oldest = store.rv;
        store.log.clear();
        drop(store);
        let _ = self.shared.signals.send(Signal::Expire);
    }

    /// Open watch streams are cut in the middle of an event: half a JSON line, then
    /// the connection dies without the chunked body's end.
    pub fn break_watches(&self) {
        let _ = self.shared.signals.send(Signal::Break);
    }

    /// Open watch streams get a line that is not JSON (and go on).
    pub fn send_garbage(&self) {
        let _ = self.shared.signals.send(Signal::Garbage);
    }

    /// Open watch streams that allow bookmarks get one now.
    pub fn send_bookmarks(&self) {
        let _ = self.shared.signals.send(Signal::Bookmark);
    }

    /// How often watches that allow them get a `BOOKMARK` (default 1 s; `None`:
    /// only on [`FakeApi::send_bookmarks`]). For watches opened after the call.
    pub fn set_bookmark_interval(&self, every: Option<Duration>) {
        lock(&self.shared.settings).bookmark_every = every;
    }

    /// Watches end (cleanly) after at most this long, whatever `timeoutSeconds`
    /// asked. For watches opened after the call.
    pub fn set_watch_cap(&self, cap: Option<Duration>) {
        lock(&self.shared.settings).watch_cap = cap;
    }

    // ---- counters ----

    /// Lists of `kind` started (first pages: a client's initial list or relist).
    pub fn lists(&self, kind: Kind) -> usize {
        self.shared.lists[kind.index()].load(Ordering::SeqCst)
    }

    /// List pages of `kind` served, `continue` pages included.
    pub fn list_pages(&self, kind: Kind) -> usize {
        self.shared.list_pages[kind.index()].load(Ordering::SeqCst)
    }

    /// Watches of `kind` started.
    pub fn watches(&self, kind: Kind) -> usize {
        self.shared.watches[kind.index()].load(Ordering::SeqCst)
    }

    /// Single-object GETs of `kind`.
    pub fn gets(&self, kind: Kind) -> usize {
        self.shared.gets[kind.index()].load(Ordering::SeqCst)
    }

    /// Watches of `kind` open now.
    pub fn open_watches(&self, kind: Kind) -> usize {
        self.shared.open[kind.index()].load(Ordering::SeqCst)
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Every request seen, in order.
    pub fn requests(&self) -> Vec<Seen> {
        lock(&self.shared.requests).clone()
    }

    /// Waits until `cond` holds, polling every 10 ms; panics after `wait`.
    pub async fn wait_until(&self, what: &str, wait: Duration, cond: impl Fn(&FakeApi) -> bool) {
        let deadline = Instant::now() + wait;
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "fake API: {what} within {wait:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until a watch of `kind` is open.
    pub async fn wait_for_watch(&self, kind: Kind, wait: Duration) {
        self.wait_until(&format!("a {} watch open", kind.plural()), wait, |api| {
            api.open_watches(kind) > 0
        })
        .await;
    }
}

/// Drops the oldest half of a long change log, as etcd compacts.
fn compact(store: &mut Store) {
    if store.log.len() > LOG_LIMIT {
        let cut = store.log.len() / 2;
        let last = store.log[cut - 1].rv;
        store.log.drain(..cut);
        store.oldest = store.oldest.max(last + 1);
    }
}

fn endpoint_json(ns: &str, service: &str, e: &Ep) -> Value {
    let h = fnv(&e.ip);
    let pod = e
        .pod
        .clone()
        .unwrap_or_else(|| format!("{service}-6d4b8c9f7-{}", pod_suffix(h)));
    let node = e
        .node
        .clone()
        .unwrap_or_else(|| format!("worker-{}", h % 3 + 1));
    let zone = e
        .zone
        .clone()
        .unwrap_or_else(|| format!("zone-{}", ["a", "b", "c"][(h % 3) as usize]));
    json!({
        "addresses": [e.ip],
        "conditions": {"ready": e.ready, "serving": e.serving, "terminating": e.terminating},
        "targetRef": {"kind": "Pod", "namespace": ns, "name": pod, "uid": uid_for(&format!("pod/{ns}/{pod}"))},
        "nodeName": node,
        "zone": zone,
    })
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Five characters as a ReplicaSet's pods get them.
fn pod_suffix(mut h: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| {
            let c = ALPHABET[(h % ALPHABET.len() as u64) as usize] as char;
            h /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// A stable UUID-shaped id for `seed`.
fn uid_for(seed: &str) -> String {
    let a = fnv(seed);
    let b = fnv(&format!("{seed}#"));
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    )
}

/// Now, as the API server writes times (RFC 3339, seconds, UTC).
fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

// ---- selectors ----

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq)]
pub enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A label selector as the API server parses `labelSelector`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selector(pub Vec<Requirement>);

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

impl Selector {
    pub fn parse(s: &str) -> Result<Selector, String> {
        let mut parts = Vec::new();
        let (mut depth, mut start) = (0, 0);
        for (i, c) in s.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&s[start..]);
        let mut reqs = Vec::new();
        for part in parts.into_iter().map(str::trim) {
            if part.is_empty() {
                if s.trim().is_empty() {
                    continue;
                }
                return Err(format!(
                    "unable to parse requirement: empty requirement in {s:?}"
                ));
            }
            reqs.push(Self::requirement(part)?);
        }
        Ok(Selector(reqs))
    }

    fn requirement(part: &str) -> Result<Requirement, String> {
        let bad = || format!("unable to parse requirement: {part:?}");
        if let Some(open) = part.find('(') {
            let close = part
                .rfind(')')
                .filter(|&c| c == part.len() - 1)
                .ok_or_else(bad)?;
            let head: Vec<&str> = part[..open].split_whitespace().collect();
            let values: Vec<String> = part[open + 1..close]
                .split(',')
                .map(|v| v.trim().to_string())
                .collect();
            if values.iter().any(|v| !valid_value(v)) {
                return Err(bad());
            }
            return match head.as_slice() {
                [key, "in"] if valid_key(key) => Ok(Requirement::In(key.to_string(), values)),
                [key, "notin"] if valid_key(key) => Ok(Requirement::NotIn(key.to_string(), values)),
                _ => Err(bad()),
            };
        }
        let pair = |op: &str| {
            part.split_once(op)
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        };
        let checked = |(k, v): (String, String)| {
            if valid_key(&k) && valid_value(&v) {
                Ok((k, v))
            } else {
                Err(bad())
            }
        };
        if let Some(kv) = pair("!=") {
            let (k, v) = checked(kv)?;
            return Ok(Requirement::NotEq(k, v));
        }
        if let Some(kv) = pair("==").or_else(|| pair("=")) {
            let (k, v) = checked(kv)?;
            return Ok(Requirement::Eq(k, v));
        }
        if let Some(key) = part.strip_prefix('!') {
            let key = key.trim();
            return if valid_key(key) {
                Ok(Requirement::NotExists(key.to_string()))
            } else {
                Err(bad())
            };
        }
        if valid_key(part) {
            Ok(Requirement::Exists(part.to_string()))
        } else {
            Err(bad())
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether an object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj["metadata"]["labels"].as_object();
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Eq(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEq(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => !label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::NotExists(k) => label(k).is_none(),
        })
    }
}

/// `fieldSelector`: `metadata.name` and `metadata.namespace` with `=`, `==`, `!=`;
/// other fields are accepted and ignored.
#[derive(Clone, Debug, Default)]
struct Fields(Vec<(String, bool, String)>);

impl Fields {
    fn parse(s: &str) -> Fields {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, true, v)
            } else {
                continue;
            };
            let field = field.trim();
            if field == "metadata.name" || field == "metadata.namespace" {
                out.push((field.to_string(), equal, value.trim().to_string()));
            } else {
                eprintln!("fake API: fieldSelector {field} ignored");
            }
        }
        Fields(out)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn matches(&self, ns: &str, name: &str) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = if field == "metadata.name" { name } else { ns };
            (actual == value) == *equal
        })
    }
}

// ---- the server ----

type ApiBody = BoxBody<Bytes, io::Error>;

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        if shared.down.load(Ordering::SeqCst) {
            drop(stream);
            continue;
        }
        let mut kill = shared.kill.subscribe();
        let shared = shared.clone();
        tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let service = service_fn(move |req| handle(shared.clone(), req));
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = kill.changed() => {}
            }
        });
    }
}

enum Target {
    Version,
    Unknown,
    Resource {
        kind: Kind,
        ns: Option<String>,
        name: Option<String>,
    },
}

fn route(path: &str) -> Target {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let kind_of = |plural: &str| Kind::ALL.into_iter().find(|k| k.plural() == plural);
    let (rest, group_ok): (&[&str], fn(Kind) -> bool) = match segs.as_slice() {
        ["version"] => return Target::Version,
        ["api", "v1", rest @ ..] => (rest, |k| k.group().is_empty()),
        ["apis", "discovery.k8s.io", "v1", rest @ ..] => {
            (rest, |k| k.group() == "discovery.k8s.io")
        }
        _ => return Target::Unknown,
    };
    let (kind, ns, name) = match rest {
        [plural] => (kind_of(plural), None, None),
        ["namespaces", ns, plural] => (kind_of(plural), Some(ns), None),
        ["namespaces", ns, plural, name] => (kind_of(plural), Some(ns), Some(name)),
        _ => return Target::Unknown,
    };
    match kind {
        Some(kind) if group_ok(kind) => Target::Resource {
            kind,
            ns: ns.map(|s| s.to_string()),
            name: name.map(|s| s.to_string()),
        },
        _ => Target::Unknown,
    }
}

fn is_true(v: &str) -> bool {
    v == "true" || v == "1"
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ApiBody>, io::Error> {
    if shared.down.load(Ordering::SeqCst) {
        // hyper closes the connection without an answer.
        return Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the fake API is down",
        ));
    }
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    lock(&shared.requests).push(Seen {
        method: req.method().to_string(),
        path: path.clone(),
        query,
        params: params.clone(),
        at: Instant::now(),
    });
    Ok(respond(&shared, req.method(), route(&path), &params))
}

fn respond(
    shared: &Arc<Shared>,
    method: &Method,
    target: Target,
    q: &HashMap<String, String>,
) -> Response<ApiBody> {
    let (kind, ns, name) = match target {
        Target::Version => return json_response(shared, StatusCode::OK, &fixture("version.json")),
        Target::Unknown => {
            return Response::builder()
                .status(StatusCode::NOT_FOUND)
                .header("content-type", "text/plain; charset=utf-8")
                .header("x-content-type-options", "nosniff")
                .body(full("404 page not found\n"))
                .expect("response");
        }
        Target::Resource { kind, ns, name } => (kind, ns, name),
    };
    if shared.unauthorized.load(Ordering::SeqCst) {
        return status_response(
            shared,
            status(401, "Unauthorized", "Unauthorized".into(), None),
        );
    }
    let watching = q.get("watch").is_some_and(|w| is_true(w));
    let verb = match (&name, watching) {
        (Some(_), _) => "get",
        (None, true) => "watch",
        (None, false) => "list",
    };
    if method != Method::GET {
        return status_response(
            shared,
            status(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource".into(),
                None,
            ),
        );
    }
    if shared.forbidden[kind.index()].load(Ordering::SeqCst) {
        return status_response(
            shared,
            forbidden(kind, verb, ns.as_deref(), name.as_deref()),
        );
    }
    if shared.unavailable.load(Ordering::SeqCst) {
        let mut s = fixture("status-unavailable.json");
        s["metadata"] = json!({});
        return status_response(shared, s);
    }
    match (name, ns) {
        (Some(name), Some(ns)) => get_object(shared, kind, &ns, &name),
        (Some(_), None) => unreachable!("routes name objects in a namespace"),
        (None, ns) if watching => start_watch(shared, kind, ns, q),
        (None, ns) => list(shared, kind, ns.as_deref(), q),
    }
}

fn full(body: impl Into<Bytes>) -> ApiBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

fn json_response(shared: &Shared, code: StatusCode, body: &Value) -> Response<ApiBody> {
    let bytes = serde_json::to_vec(body).expect("JSON");
    Response::builder()
        .status(code)
        .header("audit-id", audit_id(shared))
        .header("cache-control", "no-cache, private")
        .header("content-type", "application/json")
        .header(
            "x-kubernetes-pf-flowschema-uid",
            uid_for("flowschema/service-accounts"),
        )
        .header(
            "x-kubernetes-pf-prioritylevel-uid",
            uid_for("prioritylevel/workload-low"),
        )
        .body(full(bytes))
        .expect("response")
}

fn audit_id(shared: &Shared) -> String {
    uid_for(&format!(
        "audit/{}",
        shared.audit.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A `Status` object, as the API server fails a request.
pub fn status(code: u16, reason: &str, message: String, details: Option<Value>) -> Value {
    let mut s = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(details) = details {
        s["details"] = details;
    }
    s
}

fn status_response(shared: &Shared, s: Value) -> Response<ApiBody> {
    let code = s["code"]
        .as_u64()
        .and_then(|c| u16::try_from(c).ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(shared, code, &s)
}

/// RBAC's denial, worded as the API server words it.
pub fn forbidden(kind: Kind, verb: &str, ns: Option<&str>, name: Option<&str>) -> Value {
    let what = match name {
        Some(name) => format!("{} \"{name}\"", kind.qualified()),
        None => kind.qualified(),
    };
    let scope = match ns {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    let message = format!(
        "{what} is forbidden: User \"{USER}\" cannot {verb} resource \"{}\" in API group \"{}\" {scope}",
        kind.plural(),
        kind.group()
    );
    let mut details = Map::new();
    if let Some(name) = name {
        details.insert("name".into(), json!(name));
    }
    if !kind.group().is_empty() {
        details.insert("group".into(), json!(kind.group()));
    }
    details.insert("kind".into(), json!(kind.plural()));
    status(403, "Forbidden", message, Some(Value::Object(details)))
}

fn bad_request(shared: &Shared, message: String) -> Response<ApiBody> {
    status_response(shared, status(400, "BadRequest", message, None))
}

fn get_object(shared: &Arc<Shared>, kind: Kind, ns: &str, name: &str) -> Response<ApiBody> {
    shared.gets[kind.index()].fetch_add(1, Ordering::SeqCst);
    let key = (kind, ns.to_string(), name.to_string());
    let found = shared.store().objects.get(&key).cloned();
    match found {
        Some(obj) => json_response(shared, StatusCode::OK, &obj),
        None => {
            let mut details = Map::new();
            details.insert("name".into(), json!(name));
            if !kind.group().is_empty() {
                details.insert("group".into(), json!(kind.group()));
            }
            details.insert("kind".into(), json!(kind.plural()));
            status_response(
                shared,
                status(
                    404,
                    "NotFound",
                    format!("{} \"{name}\" not found", kind.qualified()),
                    Some(Value::Object(details)),
                ),
            )
        }
    }
}

fn selectors(
    shared: &Shared,
    q: &HashMap<String, String>,
) -> Result<(Selector, Fields), Box<Response<ApiBody>>> {
    let labels = Selector::parse(q.get("labelSelector").map_or("", String::as_str))
        .map_err(|e| Box::new(bad_request(shared, e)))?;
    let fields = Fields::parse(q.get("fieldSelector").map_or("", String::as_str));
    Ok((labels, fields))
}

/// A list item: the API server leaves `kind` and `apiVersion` to the list.
fn item(obj: &Value) -> Value {
    let mut item = obj.clone();
    if let Some(map) = item.as_object_mut() {
        map.remove("kind");
        map.remove("apiVersion");
    }
    item
}

fn list(
    shared: &Arc<Shared>,
    kind: Kind,
    ns: Option<&str>,
    q: &HashMap<String, String>,
) -> Response<ApiBody> {
    let (labels, fields) = match selectors(shared, q) {
        Ok(s) => s,
        Err(resp) => return *resp,
    };
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|&l| l > 0);
    let store = shared.store();
    let token = q.get("continue").filter(|c| !c.is_empty());
    let (rv, after) = match token {
        Some(token) => match decode_continue(token) {
            Some((rv, _)) if rv < store.oldest => {
                drop(store);
                let mut s = fixture("status-expired-continue.json");
                s["metadata"] = json!({});
                return status_response(shared, s);
            }
            Some((rv, start)) => (rv, Some(start)),
            None => {
                drop(store);
                return bad_request(shared, format!("continue key is not valid: {token}"));
            }
        },
        None => {
            shared.lists[kind.index()].fetch_add(1, Ordering::SeqCst);
            (store.rv, None)
        }
    };
    shared.list_pages[kind.index()].fetch_add(1, Ordering::SeqCst);
    let mut items = Vec::new();
    let mut remaining = 0u64;
    let mut last: Option<(String, String)> = None;
    for ((k, ons, oname), obj) in &store.objects {
        if *k != kind
            || ns.is_some_and(|ns| ns != ons)
            || !fields.matches(ons, oname)
            || !labels.matches(obj)
        {
            continue;
        }
        if let Some((start_ns, start_name)) = &after
            && (ons.as_str(), oname.as_str()) < (start_ns.as_str(), start_name.as_str())
        {
            continue;
        }
        if limit.is_some_and(|l| items.len() >= l) {
            remaining += 1;
            continue;
        }
        items.push(item(obj));
        last = Some((ons.clone(), oname.clone()));
    }
    drop(store);
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if remaining > 0
        && let Some((last_ns, last_name)) = last
    {
        // The next key after the last one served, as etcd pages.
        meta["continue"] = json!(encode_continue(rv, &format!("{last_ns}/{last_name}\u{0}")));
        if labels.is_empty() && fields.is_empty() {
            meta["remainingItemCount"] = json!(remaining);
        }
    }
    let body = json!({
        "kind": format!("{}List", kind.kind()),
        "apiVersion": kind.api_version(),
        "metadata": meta,
        "items": items,
    });
    json_response(shared, StatusCode::OK, &body)
}

/// `{"v":"meta.k8s.io/v1","rv":N,"start":"ns/name\u0000"}`, base64url without
/// padding: the API server's continue token.
fn encode_continue(rv: u64, start: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": start});
    base64url(token.to_string().as_bytes())
}

fn decode_continue(token: &str) -> Option<(u64, (String, String))> {
    let bytes = unbase64url(token)?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let rv = v["rv"].as_u64()?;
    let start = v["start"].as_str()?;
    let (ns, name) = start.split_once('/')?;
    Some((rv, (ns.to_string(), name.to_string())))
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64url(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn unbase64url(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = match c {
            b'+' => 62,
            b'/' => 63,
            _ => B64.iter().position(|&b| b == c)? as u32,
        };
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits & 0xff) as u8);
        }
    }
    Some(out)
}

// ---- watches ----

struct WatchSpec {
    kind: Kind,
    ns: Option<String>,
    labels: Selector,
    fields: Fields,
    bookmarks: bool,
}

impl WatchSpec {
    fn selects(&self, key: &Key, obj: &Value) -> bool {
        key.0 == self.kind
            && self.ns.as_ref().is_none_or(|ns| *ns == key.1)
            && self.fields.matches(&key.1, &key.2)
            && self.labels.matches(obj)
    }

    /// What this watch sees of a change: the type and the object, if anything.
    fn event<'a>(&self, c: &'a Change) -> Option<(&'static str, &'a Value)> {
        let before = c.before.as_ref().is_some_and(|b| self.selects(&c.key, b));
        if c.deleted {
            return before.then_some(("DELETED", &*c.object));
        }
        match (before, self.selects(&c.key, &c.object)) {
            (true, true) => Some(("MODIFIED", &*c.object)),
            (false, true) => Some(("ADDED", &*c.object)),
            (true, false) => Some(("DELETED", &*c.object)),
            (false, false) => None,
        }
    }
}

fn event_line(kind: &str, obj: &Value) -> Bytes {
    let mut line = format!("{{\"type\":\"{kind}\",\"object\":").into_bytes();
    serde_json::to_writer(&mut line, obj).expect("JSON");
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

/// A bookmark as the watch cache sends one: an empty object of the kind at `rv`.
fn bookmark(kind: Kind, rv: u64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    match kind {
        Kind::EndpointSlices => json!({
            "kind": "EndpointSlice",
            "apiVersion": "discovery.k8s.io/v1",
            "metadata": meta,
            "addressType": "",
            "endpoints": null,
            "ports": null,
        }),
        Kind::Services => json!({
            "kind": "Service",
            "apiVersion": "v1",
            "metadata": meta,
            "spec": {},
            "status": {"loadBalancer": {}},
        }),
    }
}

fn expired_line(rv: u64, oldest: u64) -> Bytes {
    let s = status(
        410,
        "Expired",
        format!("too old resource version: {rv} ({oldest})"),
        None,
    );
    event_line("ERROR", &s)
}

struct WatchBody(mpsc::Receiver<Result<Bytes, io::Error>>);

impl Body for WatchBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(Frame::data)))
    }
}

struct OpenWatch(Arc<Shared>, Kind);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.open[self.1.index()].fetch_sub(1, Ordering::SeqCst);
    }
}

fn start_watch(
    shared: &Arc<Shared>,
    kind: Kind,
    ns: Option<String>,
    q: &HashMap<String, String>,
) -> Response<ApiBody> {
    let (labels, fields) = match selectors(shared, q) {
        Ok(s) => s,
        Err(resp) => return *resp,
    };
    let flag = |name: &str| q.get(name).is_some_and(|v| is_true(v));
    let bookmarks = flag("allowWatchBookmarks");
    let initial_events = flag("sendInitialEvents");
    if initial_events && q.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan") {
        return status_response(
            shared,
            status(
                422,
                "Invalid",
                "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan".into(),
                None,
            ),
        );
    }
    let since = match q.get("resourceVersion").map_or("", String::as_str) {
        "" | "0" => None,
        rv => match rv.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => {
                return bad_request(
                    shared,
                    format!(
                        "resourceVersion: Invalid value: \"{rv}\": strconv.ParseUint: parsing \"{rv}\": invalid syntax"
                    ),
                );
            }
        },
    };
    let settings = lock(&shared.settings);
    // 0 or none: the server's own (minRequestTimeout, 1800 s, to twice that).
    let asked = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|&t| t > 0)
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let timeout = settings.watch_cap.map_or(asked, |cap| asked.min(cap));
    let bookmark_every = settings.bookmark_every.filter(|_| bookmarks);
    drop(settings);
    let spec = WatchSpec {
        kind,
        ns,
        labels,
        fields,
        bookmarks,
    };
    // Subscribed before the snapshot: no change falls between.
    let signals = shared.signals.subscribe();
    shared.watches[kind.index()].fetch_add(1, Ordering::SeqCst);
    shared.open[kind.index()].fetch_add(1, Ordering::SeqCst);
    let open = OpenWatch(shared.clone(), kind);
    let mut first = Vec::new();
    let mut ends = false;
    let cursor;
    {
        let store = shared.store();
        cursor = store.rv;
        match since {
            Some(rv) if rv < store.oldest && !initial_events => {
                first.push(expired_line(rv, store.oldest));
                ends = true;
            }
            Some(rv) if !initial_events => {
                let start = store.log.partition_point(|c| c.rv <= rv);
                for c in &store.log[start..] {
                    if let Some((t, obj)) = spec.event(c) {
                        first.push(event_line(t, obj));
                    }
                }
            }
            _ => {
                for (key, obj) in &store.objects {
                    if spec.selects(key, obj) {
                        first.push(event_line("ADDED", obj));
                    }
                }
                if initial_events {
                    first.push(event_line("BOOKMARK", &bookmark(kind, store.rv, true)));
                }
            }
        }
    }
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(run_watch(WatchRun {
        shared: shared.clone(),
        spec,
        signals,
        tx,
        first,
        ends,
        cursor,
        timeout,
        bookmark_every,
        _open: open,
    }));
    Response::builder()
        .status(StatusCode::OK)
        .header("audit-id", audit_id(shared))
        .header("cache-control", "no-cache, private")
        .header("content-type", "application/json")
        .body(WatchBody(rx).boxed())
        .expect("response")
}

struct WatchRun {
    shared: Arc<Shared>,
    spec: WatchSpec,
    signals: broadcast::Receiver<Signal>,
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
    first: Vec<Bytes>,
    ends: bool,
    cursor: u64,
    timeout: Duration,
    bookmark_every: Option<Duration>,
    _open: OpenWatch,
}

/// The changes after `cursor` this watch sees; moves `cursor` to now.
fn pending(shared: &Shared, spec: &WatchSpec, cursor: &mut u64) -> Vec<Bytes> {
    let store = shared.store();
    let start = store.log.partition_point(|c| c.rv <= *cursor);
    let lines = store.log[start..]
        .iter()
        .filter_map(|c| spec.event(c))
        .map(|(t, obj)| event_line(t, obj))
        .collect();
    *cursor = (*cursor).max(store.rv);
    lines
}

async fn run_watch(mut w: WatchRun) {
    for line in std::mem::take(&mut w.first) {
        if w.tx.send(Ok(line)).await.is_err() {
            return;
        }
    }
    if w.ends {
        return;
    }
    let deadline = tokio::time::sleep(w.timeout);
    tokio::pin!(deadline);
    let every = w.bookmark_every.unwrap_or(Duration::from_secs(3600));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        let mut lines = Vec::new();
        let mut end = false;
        let mut broken = false;
        tokio::select! {
            _ = &mut deadline => return,
            _ = w.tx.closed() => return,
            _ = ticker.tick(), if w.bookmark_every.is_some() => {
                lines = pending(&w.shared, &w.spec, &mut w.cursor);
                lines.push(event_line("BOOKMARK", &bookmark(w.spec.kind, w.cursor, false)));
            }
            signal = w.signals.recv() => match signal {
                Ok(Signal::Changed) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    lines = pending(&w.shared, &w.spec, &mut w.cursor);
                }
                Ok(Signal::Expire) => {
                    let oldest = w.shared.store().oldest;
                    lines.push(expired_line(w.cursor, oldest));
                    end = true;
                }
                Ok(Signal::Break) => {
                    lines.push(Bytes::from(format!(
                        "{{\"type\":\"MODIFIED\",\"object\":{{\"kind\":\"{}\",\"apiVersion\":\"{}\",\"metadata\":{{\"name\":\"",
                        w.spec.kind.kind(),
                        w.spec.kind.api_version()
                    )));
                    broken = true;
                }
                Ok(Signal::Garbage) => {
                    lines.push(Bytes::from_static(b"<html><body><h1>502 Bad Gateway</h1></body></html>\n"));
                }
                Ok(Signal::Bookmark) => {
                    if w.spec.bookmarks {
                        lines = pending(&w.shared, &w.spec, &mut w.cursor);
                        lines.push(event_line("BOOKMARK", &bookmark(w.spec.kind, w.cursor, false)));
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
        for line in lines {
            if w.tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
        if broken {
            // Let the half event reach the wire, then fail the body: hyper drops the
            // connection without the chunked body's last chunk.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ =
                w.tx.send(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "watch broken by the test",
                )))
                .await;
            return;
        }
        if end {
            return;
        }
    }
}

// ---- a client for the self-tests and for tests that look at the wire ----

/// What reading a watch stream gave.
#[derive(Debug)]
pub enum Next {
    /// One event line, parsed.
    Event(Value),
    /// A line that is not JSON.
    Garbage(String),
    /// The stream ended cleanly (with this much of a last line left over).
    End(String),
    /// The body failed (cut): the error and what was left of a line.
    Broken(String, String),
    /// Nothing within the wait.
    Timeout,
}

/// A watch (or any streaming GET) read line by line with a plain hyper client.
pub struct WatchStream {
    pub status: u16,
    body: Incoming,
    buf: Vec<u8>,
}

impl WatchStream {
    pub async fn open(url: &str) -> WatchStream {
        let client = crate::support::client();
        let req = Request::get(url)
            .body(crate::support::full(""))
            .expect("request");
        let resp = client.request(req).await.expect("the fake API answers");
        let status = resp.status().as_u16();
        WatchStream {
            status,
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }

    pub async fn next(&mut self, wait: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line[..pos]).into_owned();
                return match serde_json::from_str(&line) {
                    Ok(v) => Next::Event(v),
                    Err(_) => Next::Garbage(line),
                };
            }
            let rest = || String::from_utf8_lossy(&self.buf).into_owned();
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return Next::Timeout,
                Ok(None) => return Next::End(rest()),
                Ok(Some(Err(e))) => return Next::Broken(e.to_string(), rest()),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// The next event; panics on anything else.
    pub async fn event(&mut self, wait: Duration) -> Value {
        match self.next(wait).await {
            Next::Event(v) => v,
            other => panic!("expected a watch event, got {other:?}"),
        }
    }

    /// The next event that is not a BOOKMARK.
    pub async fn change(&mut self, wait: Duration) -> Value {
        loop {
            let ev = self.event(wait).await;
            if ev["type"] != "BOOKMARK" {
                return ev;
            }
        }
    }
}

/// The structure of a JSON value, to compare with a fixture's: object keys
/// recursively (`k:{...}` managed-field keys as one), arrays by their first
/// element, scalars by type.
pub fn shape(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let k = if k.starts_with("k:{") {
                        "k:{…}".to_string()
                    } else {
                        k.clone()
                    };
                    (k, shape(v))
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.first().map(shape).into_iter().collect()),
        Value::String(_) => json!("string"),
        Value::Number(_) => json!("number"),
        Value::Bool(_) => json!("bool"),
        Value::Null => Value::Null,
    }
}

// ---- self-tests ----

mod tests {
    use super::*;
    use crate::support::{client, get};

    const WAIT: Duration = Duration::from_secs(5);

    fn shop_orders(api: &FakeApi) {
        api.put_service("shop", "orders", "10.96.0.10", &[("http", 80, "http")]);
        api.put_slice(
            "shop",
            "orders-x7k2p",
            "orders",
            &[
                ("10.244.1.17", true, false),
                ("10.244.2.9", false, false),
                ("10.244.3.21", false, true),
            ],
            &[("http", 8080)],
        );
    }

    async fn get_json(url: &str) -> (u16, Value) {
        let answer = get(&client(), url).await;
        let body = serde_json::from_str(&answer.body)
            .unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {}", answer.body));
        (answer.status, body)
    }

    #[tokio::test]
    async fn objects_and_lists_have_the_recorded_shape() {
        let api = FakeApi::start().await;
        shop_orders(&api);
        let (code, slice) = get_json(&format!(
            "{}{}/orders-x7k2p",
            api.url(),
            SLICES.path(Some("shop"))
        ))
        .await;
        assert_eq!(code, 200);
        assert_eq!(shape(&slice), shape(&fixture("endpointslice.json")));
        assert_eq!(
            slice["metadata"]["labels"]["kubernetes.io/service-name"],
            "orders"
        );
        assert_eq!(
            slice["endpoints"][2]["conditions"],
            json!({"ready": false, "serving": true, "terminating": true})
        );
        let (code, svc) = get_json(&format!(
            "{}{}/orders",
            api.url(),
            SERVICES.path(Some("shop"))
        ))
        .await;
        assert_eq!(code, 200);
        assert_eq!(shape(&svc), shape(&fixture("service.json")));
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");
        assert_eq!(
            slice["metadata"]["ownerReferences"][0]["uid"], svc["metadata"]["uid"],
            "the slice is owned by its Service"
        );

        let (code, list) = get_json(&format!(
            "{}{}?limit=500",
            api.url(),
            SLICES.path(Some("shop"))
        ))
        .await;
        assert_eq!(code, 200);
        let mut recorded = fixture("endpointslice-list.json");
        // One page: no continue token.
        recorded["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("continue");
        recorded["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("remainingItemCount");
        assert_eq!(shape(&list), shape(&recorded));
        assert!(
            list["items"][0].get("kind").is_none(),
            "list items carry no kind"
        );
        let rv: u64 = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(rv, api.resource_version());
        let (_, services) = get_json(&format!("{}{}", api.url(), SERVICES.path(None))).await;
        assert_eq!(shape(&services), shape(&fixture("service-list.json")));

        let (code, missing) =
            get_json(&format!("{}{}/nope", api.url(), SLICES.path(Some("shop")))).await;
        assert_eq!(code, 404);
        assert_eq!(shape(&missing), shape(&fixture("status-not-found.json")));
        let unknown = get(
            &client(),
            &format!("{}/apis/apps/v1/deployments", api.url()),
        )
        .await;
        assert_eq!(
            (unknown.status, unknown.body.as_str()),
            (404, "404 page not found\n")
        );
        let (code, version) = get_json(&format!("{}/version", api.url())).await;
        assert_eq!((code, version["minor"].as_str()), (200, Some("30")));
        assert_eq!(api.lists(SLICES), 1);
        assert_eq!(api.lists(SERVICES), 1);
        assert_eq!(api.gets(SLICES), 2);
    }

    #[tokio::test]
    async fn lists_page_with_limit_and_continue() {
        let api = FakeApi::start().await;
        for name in ["orders-a", "orders-b", "orders-c"] {
            api.put_slice(
                "shop",
                name,
                "orders",
                &[("10.244.0.1", true, false)],
                &[("http", 8080)],
            );
        }
        let base = format!("{}{}", api.url(), SLICES.path(Some("shop")));
        let (_, page1) = get_json(&format!("{base}?limit=2")).await;
        assert_eq!(page1["items"].as_array().unwrap().len(), 2);
        assert_eq!(page1["metadata"]["remainingItemCount"], 1);
        assert_eq!(
            shape(&page1["metadata"]),
            shape(&fixture("endpointslice-list.json")["metadata"])
        );
        let token = page1["metadata"]["continue"].as_str().unwrap().to_string();
        // A write between pages: the next page still has the first page's version.
        api.put_slice("shop", "orders-d", "orders", &[], &[("http", 8080)]);
        let (_, page2) = get_json(&format!("{base}?limit=2&continue={token}")).await;
        let names: Vec<&str> = page2["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["orders-c", "orders-d"]);
        assert_eq!(
            page2["metadata"]["resourceVersion"],
            page1["metadata"]["resourceVersion"]
        );
        assert_eq!(
            page2["items"][1]["endpoints"],
            Value::Null,
            "no endpoints: null, as Go encodes it"
        );
        assert!(page2["metadata"].get("continue").is_none());
        assert_eq!((api.lists(SLICES), api.list_pages(SLICES)), (1, 2));
        // A compaction expires the token.
        api.expire_watches();
        let (code, gone) = get_json(&format!("{base}?limit=2&continue={token}")).await;
        assert_eq!((code, gone["reason"].as_str()), (410, Some("Expired")));
        assert_eq!(
            shape(&gone),
            shape(&fixture("status-expired-continue.json"))
        );
    }

    #[tokio::test]
    async fn label_selectors_filter_lists() {
        let api = FakeApi::start().await;
        for (slice, service) in [
            ("orders-a", "orders"),
            ("payments-a", "payments"),
            ("cart-a", "cart"),
        ] {
            api.put_slice(
                "shop",
                slice,
                service,
                &[("10.244.0.1", true, false)],
                &[("http", 8080)],
            );
        }
        api.put_slice(
            "other",
            "orders-z",
            "orders",
            &[("10.244.9.1", true, false)],
            &[("http", 8080)],
        );
        let names = |list: &Value| -> Vec<String> {
            list["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
                .collect()
        };
        let base = format!("{}{}", api.url(), SLICES.path(Some("shop")));
        let (_, all) = get_json(&base).await;
        assert_eq!(names(&all), ["cart-a", "orders-a", "payments-a"]);
        let (_, one) = get_json(&format!(
            "{base}?labelSelector=kubernetes.io%2Fservice-name%3Dorders"
        ))
        .await;
        assert_eq!(names(&one), ["orders-a"]);
        let (_, two) = get_json(&format!(
            "{base}?labelSelector=kubernetes.io%2Fservice-name+in+%28orders%2Cpayments%29"
        ))
        .await;
        assert_eq!(names(&two), ["orders-a", "payments-a"]);
        let (_, not) = get_json(&format!(
            "{base}?labelSelector=kubernetes.io%2Fservice-name%21%3Dorders,endpointslice.kubernetes.io%2Fmanaged-by"
        ))
        .await;
        assert_eq!(names(&not), ["cart-a", "payments-a"]);
        let (_, everywhere) = get_json(&format!(
            "{}{}?labelSelector=kubernetes.io%2Fservice-name%3D%3Dorders",
            api.url(),
            SLICES.path(None)
        ))
        .await;
        assert_eq!(names(&everywhere), ["orders-z", "orders-a"]);
        let (_, by_name) = get_json(&format!("{base}?fieldSelector=metadata.name%3Dcart-a")).await;
        assert_eq!(names(&by_name), ["cart-a"]);
        let (code, bad) = get_json(&format!("{base}?labelSelector=%3Dorders")).await;
        assert_eq!((code, bad["reason"].as_str()), (400, Some("BadRequest")));
        assert_eq!(shape(&bad), shape(&fixture("status-bad-request.json")));
        let seen = api.requests();
        assert_eq!(
            seen[2].param("labelSelector"),
            Some("kubernetes.io/service-name in (orders,payments)")
        );
    }

    #[tokio::test]
    async fn a_watch_sees_added_modified_and_deleted() {
        let api = FakeApi::start().await;
        shop_orders(&api);
        let base = format!("{}{}", api.url(), SLICES.path(Some("shop")));
        let (_, list) = get_json(&format!(
            "{base}?labelSelector=kubernetes.io%2Fservice-name%3Dorders"
        ))
        .await;
        let rv = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();
        let mut w = WatchStream::open(&format!(
            "{base}?watch=true&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=290&labelSelector=kubernetes.io%2Fservice-name%3Dorders"
        ))
        .await;
        assert_eq!(w.status, 200);
        api.wait_for_watch(SLICES, WAIT).await;
        api.put_slice(
            "shop",
            "orders-2",
            "orders",
            &[("10.244.4.4", true, false)],
            &[("http", 8080)],
        );
        api.put_slice(
            "shop",
            "payments-1",
            "payments",
            &[("10.244.5.5", true, false)],
            &[("http", 8080)],
        );
        api.put_slice(
            "shop",
            "orders-2",
            "orders",
            &[("10.244.4.4", false, false)],
            &[("http", 8080)],
        );
        api.delete_slice("shop", "orders-2");
        let added = w.change(WAIT).await;
        assert_eq!(added["type"], "ADDED");
        assert_eq!(
            added["object"]["kind"], "EndpointSlice",
            "watch objects carry their kind"
        );
        assert_eq!(added["object"]["metadata"]["name"], "orders-2");
        assert_eq!(
            shape(&added["object"]),
            shape(&fixture("endpointslice.json"))
        );
        let modified = w.change(WAIT).await;
        assert_eq!(modified["type"], "MODIFIED");
        assert_eq!(shape(&modified), shape(&fixture("watch-modified.json")));
        assert_eq!(
            modified["object"]["endpoints"][0]["conditions"]["ready"],
            false
        );
        assert_eq!(modified["object"]["metadata"]["generation"], 2);
        let deleted = w.change(WAIT).await;
        assert_eq!(deleted["type"], "DELETED");
        let rvs: Vec<u64> = [&added, &modified, &deleted]
            .iter()
            .map(|e| {
                e["object"]["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        assert!(rvs.windows(2).all(|p| p[0] < p[1]), "{rvs:?}");
        assert_eq!(
            rvs[2],
            api.resource_version(),
            "a deletion has a version of its own"
        );
        // A label change out of the selector is a deletion for this watch.
        api.put_slice(
            "shop",
            "orders-x7k2p",
            "renamed",
            &[("10.244.1.17", true, false)],
            &[("http", 8080)],
        );
        let moved = w.change(WAIT).await;
        assert_eq!(
            (
                moved["type"].as_str(),
                moved["object"]["metadata"]["name"].as_str()
            ),
            (Some("DELETED"), Some("orders-x7k2p"))
        );
        // From the list's version again, without a selector: the same changes.
        let mut replay =
            WatchStream::open(&format!("{base}?watch=true&resourceVersion={rv}")).await;
        let mut seen = Vec::new();
        for _ in 0..5 {
            let ev = replay.change(WAIT).await;
            seen.push(format!(
                "{} {}",
                ev["type"].as_str().unwrap(),
                ev["object"]["metadata"]["name"].as_str().unwrap()
            ));
        }
        assert_eq!(
            seen,
            [
                "ADDED orders-2",
                "ADDED payments-1",
                "MODIFIED orders-2",
                "DELETED orders-2",
                "MODIFIED orders-x7k2p"
            ]
        );
        assert_eq!(api.watches(SLICES), 2);
    }

    #[tokio::test]
    async fn a_watch_without_a_version_starts_with_what_exists() {
        let api = FakeApi::start().await;
        shop_orders(&api);
        api.set_bookmark_interval(Some(Duration::from_millis(100)));
        let base = format!("{}{}", api.url(), SERVICES.path(Some("shop")));
        let mut w = WatchStream::open(&format!("{base}?watch=true&allowWatchBookmarks=true")).await;
        let first = w.event(WAIT).await;
        assert_eq!(
            (
                first["type"].as_str(),
                first["object"]["metadata"]["name"].as_str()
            ),
            (Some("ADDED"), Some("orders"))
        );
        let mark = w.event(WAIT).await;
        assert_eq!(mark["type"], "BOOKMARK");
        assert_eq!(
            mark["object"]["metadata"]["resourceVersion"],
            api.resource_version().to_string()
        );
        assert_eq!(mark["object"]["kind"], "Service");
        // Streaming lists: initial events, then the bookmark that ends them.
        let slices = format!("{}{}", api.url(), SLICES.path(Some("shop")));
        let mut s = WatchStream::open(&format!(
            "{slices}?watch=true&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion=0"
        ))
        .await;
        assert_eq!(s.event(WAIT).await["type"], "ADDED");
        let end = s.event(WAIT).await;
        assert_eq!(
            shape(&end),
            shape(&fixture("watch-initial-events-end.json"))
        );
        assert_eq!(
            end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
            "true"
        );
        let periodic = s.event(WAIT).await;
        assert_eq!(shape(&periodic), shape(&fixture("watch-bookmark.json")));
        let (code, invalid) =
            get_json(&format!("{slices}?watch=true&sendInitialEvents=true")).await;
        assert_eq!((code, invalid["reason"].as_str()), (422, Some("Invalid")));
    }

    #[tokio::test]
    async fn expired_watches_get_410_and_old_versions_stay_too_old() {
        let api = FakeApi::start().await;
        shop_orders(&api);
        let base = format!("{}{}", api.url(), SLICES.path(Some("shop")));
        let old = api.resource_version();
        let mut w = WatchStream::open(&format!("{base}?watch=true&resourceVersion={old}")).await;
        api.wait_for_watch(SLICES, WAIT).await;
        api.expire_watches();
        let error = w.event(WAIT).await;
        assert_eq!(shape(&error), shape(&fixture("watch-expired.json")));
        assert_eq!(
            (error["type"].as_str(), error["object"]["code"].as_u64()),
            (Some("ERROR"), Some(410))
        );
        assert!(
            matches!(w.next(WAIT).await, Next::End(rest) if rest.is_empty()),
            "the watch ends after its error"
        );
        // Starting again from the old version: 200, one 410 event, the end.
        let mut again =
            WatchStream::open(&format!("{base}?watch=true&resourceVersion={old}")).await;
        assert_eq!(again.status, 200);
        assert_eq!(again.event(WAIT).await["object"]["reason"], "Expired");
        assert!(matches!(again.next(WAIT).await, Next::End(_)));
        // A relist's version works.
        let (_, list) = get_json(&base).await;
        let rv = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();
        let mut fresh = WatchStream::open(&format!("{base}?watch=true&resourceVersion={rv}")).await;
        api.put_slice(
            "shop",
            "orders-2",
            "orders",
            &[("10.244.4.4", true, false)],
            &[("http", 8080)],
        );
        assert_eq!(fresh.change(WAIT).await["type"], "ADDED");
    }

    #[tokio::test]
    async fn forbidden_and_unauthorized_answer_a_status() {
        let api = FakeApi::start().await;
        shop_orders(&api);
        api.set_forbidden(true);
        let base = format!("{}{}", api.url(), SLICES.path(Some("shop")));
        let (code, denied) = get_json(&format!("{base}?limit=500")).await;
        assert_eq!(code, 403);
        assert_eq!(denied, fixture("status-forbidden.json"));
        let (code, denied) = get_json(&format!("{base}?watch=true&resourceVersion=1")).await;
        assert_eq!(code, 403);
        assert!(
            denied["message"]
                .as_str()
                .unwrap()
                .contains("cannot watch resource \"endpointslices\"")
        );
        let (code, denied) = get_json(&format!("{}{}", api.url(), SERVICES.path(None))).await;
        assert_eq!(code, 403);
        assert_eq!(
            denied["message"],
            format!(
                "services is forbidden: User \"{USER}\" cannot list resource \"services\" in API group \"\" at the cluster scope"
            )
        );
        api.set_forbidden(false);
        api.set_unauthorized(true);
        let (code, who) = get_json(&base).await;
        assert_eq!(code, 401);
        assert_eq!(who, fixture("status-unauthorized.json"));
        api.set_unauthorized(false);
        api.set_unavailable(true);
        let (code, busy) = get_json(&base).await;
        assert_eq!((code, busy["code"].as_u64()), (503, Some(503)));
        api.set_unavailable(false);
        assert_eq!(get_json(&base).await.0, 200);
    }

    #[tokio::test]
    async fn down_drops_connections_and_watches() {
        let api = FakeApi::start().await;
        shop_orders(&api);
        let base = format!("{}{}", api.url(), SLICES.path(Some("shop")));
        let mut w = WatchStream::open(&format!(
            "{base}?watch=true&resourceVersion={}",
            api.resource_version()
        ))
        .await;
        api.wait_for_watch(SLICES, WAIT).await;
        api.set_down(true);
        assert!(
            matches!(w.next(WAIT).await, Next::Broken(..) | Next::End(_)),
            "the watch is cut"
        );
        api.wait_until("the watch is closed", WAIT, |api| {
            api.open_watches(SLICES) == 0
        })
        .await;
        let c = client();
        let req = Request::get(&base).body(crate::support::full("")).unwrap();
        assert!(c.request(req).await.is_err(), "no answer while down");
        api.set_down(false);
        assert_eq!(get_json(&base).await.0, 200);
    }

    #[tokio::test]
    async fn broken_watches_end_mid_event_and_garbage_is_one_line() {
        let api = FakeApi::start().await;
        shop_orders(&api);
        let base = format!("{}{}", api.url(), SLICES.path(Some("shop")));
        let mut w = WatchStream::open(&format!(
            "{base}?watch=true&resourceVersion={}",
            api.resource_version()
        ))
        .await;
        api.wait_for_watch(SLICES, WAIT).await;
        api.send_garbage();
        assert!(matches!(w.next(WAIT).await, Next::Garbage(line) if line.starts_with("<html>")));
        api.put_slice(
            "shop",
            "orders-2",
            "orders",
            &[("10.244.4.4", true, false)],
            &[("http", 8080)],
        );
        assert_eq!(
            w.change(WAIT).await["type"],
            "ADDED",
            "the stream goes on after garbage"
        );
        api.break_watches();
        match w.next(WAIT).await {
            Next::Broken(_, rest) => assert!(rest.starts_with("{\"type\":\"MODIFIED\""), "{rest}"),
            other => panic!("expected a cut stream, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn watches_end_at_their_timeout() {
        let api = FakeApi::start().await;
        api.set_watch_cap(Some(Duration::from_millis(300)));
        let base = format!("{}{}", api.url(), SLICES.path(Some("shop")));
        let mut w = WatchStream::open(&format!("{base}?watch=true&timeoutSeconds=290")).await;
        let started = Instant::now();
        assert!(matches!(w.next(WAIT).await, Next::End(_)));
        assert!(started.elapsed() < Duration::from_secs(2));
        api.set_watch_cap(None);
        let mut w = WatchStream::open(&format!("{base}?watch=true&timeoutSeconds=1")).await;
        let started = Instant::now();
        assert!(matches!(w.next(WAIT).await, Next::End(_)));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "{took:?}"
        );
        let mut w = WatchStream::open(&format!("{base}?watch=true&timeoutSeconds=0")).await;
        assert!(
            matches!(w.next(Duration::from_millis(1500)).await, Next::Timeout),
            "0: the server's long default"
        );
    }

    // ---- driven by the real kube client ----

    use futures_util::StreamExt;
    use futures_util::stream::BoxStream;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use kube::ResourceExt;
    use kube::api::{Api, ListParams};
    use kube::runtime::watcher::{self, Event};

    /// A watcher, polled all the time by a task of its own as a controller polls
    /// it (the stream is lazy: unpolled, it opens no watch), 50 ms after an error.
    struct Events<K> {
        rx: mpsc::UnboundedReceiver<Result<Event<K>, watcher::Error>>,
        task: JoinHandle<()>,
    }

    impl<K> Drop for Events<K> {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn drive<K>(api: Api<K>, config: watcher::Config) -> Events<K>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut stream: BoxStream<'static, _> = watcher::watcher(api, config).boxed();
            while let Some(item) = stream.next().await {
                let failed = item.is_err();
                if tx.send(item).is_err() {
                    return;
                }
                if failed {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        Events { rx, task }
    }

    fn kube_client(api: &FakeApi) -> kube::Client {
        let config = kube::Config::new(api.url().parse().expect("the fake API's URL"));
        kube::Client::try_from(config).expect("a kube client")
    }

    fn describe<K: kube::Resource>(event: &Event<K>) -> String {
        match event {
            Event::Init => "Init".into(),
            Event::InitApply(o) => format!("InitApply {}", o.name_any()),
            Event::InitDone => "InitDone".into(),
            Event::Apply(o) => format!("Apply {}", o.name_any()),
            Event::Delete(o) => format!("Delete {}", o.name_any()),
        }
    }

    /// The watcher's next item, error or event.
    async fn next_item<K>(events: &mut Events<K>) -> Result<Event<K>, watcher::Error> {
        tokio::time::timeout(WAIT, events.rx.recv())
            .await
            .expect("the watcher says something in time")
            .expect("the watcher stream goes on")
    }

    /// The watcher's next event; errors before it are pushed to `errors`.
    async fn next_event<K>(events: &mut Events<K>, errors: &mut Vec<String>) -> Event<K> {
        loop {
            match next_item(events).await {
                Ok(event) => return event,
                Err(e) => errors.push(e.to_string()),
            }
        }
    }

    async fn expect_events<K: kube::Resource>(
        events: &mut Events<K>,
        expected: &[&str],
    ) -> Vec<Event<K>> {
        let mut errors = Vec::new();
        let mut got = Vec::new();
        for want in expected {
            let event = next_event(events, &mut errors).await;
            assert_eq!(describe(&event), *want, "errors before it: {errors:?}");
            got.push(event);
        }
        assert!(errors.is_empty(), "{errors:?}");
        got
    }

    #[tokio::test]
    async fn the_kube_watcher_lists_watches_and_relists() {
        let api = FakeApi::start().await;
        shop_orders(&api);
        let slices: Api<EndpointSlice> = Api::namespaced(kube_client(&api), "shop");
        let mut events = drive(slices, watcher::Config::default());
        let init =
            expect_events(&mut events, &["Init", "InitApply orders-x7k2p", "InitDone"]).await;
        let Event::InitApply(slice) = &init[1] else {
            unreachable!()
        };
        assert_eq!(slice.address_type, "IPv4");
        let ready: Vec<(String, Option<bool>, Option<bool>)> = slice
            .endpoints
            .iter()
            .flatten()
            .map(|e| {
                let c = e.conditions.clone().unwrap_or_default();
                (e.addresses[0].clone(), c.ready, c.terminating)
            })
            .collect();
        assert_eq!(
            ready,
            [
                ("10.244.1.17".to_string(), Some(true), Some(false)),
                ("10.244.2.9".to_string(), Some(false), Some(false)),
                ("10.244.3.21".to_string(), Some(false), Some(true)),
            ]
        );
        let port = &slice.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.port),
            (Some("http"), Some(8080))
        );
        assert_eq!(slice.labels()["kubernetes.io/service-name"], "orders");

        api.wait_for_watch(SLICES, WAIT).await;
        let seen = api.requests();
        let list = seen.iter().find(|r| !r.is_watch()).unwrap();
        assert_eq!(
            (list.path.as_str(), list.param("limit")),
            (
                "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices",
                Some("500")
            )
        );
        let watch = seen.iter().find(|r| r.is_watch()).unwrap();
        assert_eq!(watch.param("allowWatchBookmarks"), Some("true"));
        assert_eq!(watch.param("timeoutSeconds"), Some("290"));
        assert_eq!(
            watch.param("resourceVersion"),
            Some(api.resource_version().to_string().as_str())
        );

        api.put_slice(
            "shop",
            "orders-2",
            "orders",
            &[("10.244.4.4", true, false)],
            &[("http", 8080)],
        );
        api.put_slice(
            "shop",
            "orders-2",
            "orders",
            &[("10.244.4.4", false, false)],
            &[("http", 8080)],
        );
        api.delete_slice("shop", "orders-2");
        let changes = expect_events(
            &mut events,
            &["Apply orders-2", "Apply orders-2", "Delete orders-2"],
        )
        .await;
        let Event::Apply(modified) = &changes[1] else {
            unreachable!()
        };
        assert_eq!(
            modified.endpoints.as_ref().unwrap()[0]
                .conditions
                .as_ref()
                .unwrap()
                .ready,
            Some(false)
        );
        assert_eq!(api.lists(SLICES), 1);

        // A compaction: the watcher gets the 410, relists, and a change made
        // meanwhile is in the new list.
        api.expire_watches();
        api.put_slice(
            "shop",
            "orders-3",
            "orders",
            &[("10.244.5.5", true, false)],
            &[("http", 8080)],
        );
        match next_item(&mut events).await {
            Err(watcher::Error::WatchError(status)) => {
                assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
            }
            other => panic!("expected the 410, got {:?}", other.map(|e| describe(&e))),
        }
        expect_events(
            &mut events,
            &[
                "Init",
                "InitApply orders-3",
                "InitApply orders-x7k2p",
                "InitDone",
            ],
        )
        .await;
        assert_eq!(api.lists(SLICES), 2, "one relist");

        // A cut stream resumes from its version: no relist, nothing lost.
        api.wait_for_watch(SLICES, WAIT).await;
        let watches = api.watches(SLICES);
        api.break_watches();
        api.put_slice(
            "shop",
            "orders-4",
            "orders",
            &[("10.244.6.6", true, false)],
            &[("http", 8080)],
        );
        let mut errors = Vec::new();
        assert_eq!(
            describe(&next_event(&mut events, &mut errors).await),
            "Apply orders-4",
            "{errors:?}"
        );
        assert_eq!(api.lists(SLICES), 2);
        assert!(api.watches(SLICES) > watches, "it watched again");
        eprintln!("kube watcher on a cut stream: {errors:?}");

        // A line that is not JSON: an error, and the stream goes on.
        api.wait_for_watch(SLICES, WAIT).await;
        api.send_garbage();
        api.put_slice(
            "shop",
            "orders-5",
            "orders",
            &[("10.244.7.7", true, false)],
            &[("http", 8080)],
        );
        let mut errors = Vec::new();
        assert_eq!(
            describe(&next_event(&mut events, &mut errors).await),
            "Apply orders-5"
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(api.lists(SLICES), 2);
    }

    #[tokio::test]
    async fn the_kube_watcher_streams_lists_and_pages_with_selectors() {
        let api = FakeApi::start().await;
        for (slice, service) in [
            ("orders-a", "orders"),
            ("orders-b", "orders"),
            ("payments-a", "payments"),
            ("cart-a", "cart"),
        ] {
            api.put_slice(
                "shop",
                slice,
                service,
                &[("10.244.0.1", true, false)],
                &[("http", 8080)],
            );
        }
        let client = kube_client(&api);
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "shop");
        let config = watcher::Config::default()
            .labels("kubernetes.io/service-name in (orders,payments)")
            .page_size(1);
        let mut events = drive(slices.clone(), config);
        expect_events(
            &mut events,
            &[
                "Init",
                "InitApply orders-a",
                "InitApply orders-b",
                "InitApply payments-a",
                "InitDone",
            ],
        )
        .await;
        assert_eq!((api.lists(SLICES), api.list_pages(SLICES)), (1, 3));
        // A slice leaving the selector is a deletion for this watcher.
        api.put_slice(
            "shop",
            "payments-a",
            "billing",
            &[("10.244.0.1", true, false)],
            &[("http", 8080)],
        );
        api.put_slice(
            "shop",
            "cart-a",
            "orders",
            &[("10.244.0.1", true, false)],
            &[("http", 8080)],
        );
        expect_events(&mut events, &["Delete payments-a", "Apply cart-a"]).await;

        let streaming = watcher::Config::default().streaming_lists();
        let mut events = drive(slices, streaming);
        expect_events(
            &mut events,
            &[
                "Init",
                "InitApply cart-a",
                "InitApply orders-a",
                "InitApply orders-b",
                "InitApply payments-a",
                "InitDone",
            ],
        )
        .await;
        assert_eq!(api.lists(SLICES), 1, "a streaming list is a watch");
        api.put_slice("shop", "orders-c", "orders", &[], &[("http", 8080)]);
        let applied = expect_events(&mut events, &["Apply orders-c"]).await;
        let Event::Apply(empty) = &applied[0] else {
            unreachable!()
        };
        assert!(
            empty.endpoints.as_ref().is_none_or(Vec::is_empty),
            "endpoints: null reads as none"
        );

        api.put_service(
            "shop",
            "orders",
            "10.96.0.10",
            &[("http", 80, "http"), ("admin", 9090, "9091")],
        );
        let services: Api<Service> = Api::namespaced(client, "shop");
        let svc = services.get("orders").await.expect("the Service");
        let spec = svc.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.10"));
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        let ports = spec.ports.unwrap();
        assert_eq!(
            ports[0].target_port,
            Some(IntOrString::String("http".into()))
        );
        assert_eq!(ports[1].target_port, Some(IntOrString::Int(9091)));
        let listed = services.list(&ListParams::default()).await.expect("a list");
        assert_eq!(listed.items.len(), 1);
        match services.get("nope").await {
            Err(kube::Error::Api(status)) => {
                assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"))
            }
            other => panic!("expected a 404, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_kube_client_sees_rbac_denial_and_an_outage() {
        let api = FakeApi::start().await;
        shop_orders(&api);
        api.set_forbidden(true);
        let slices: Api<EndpointSlice> = Api::namespaced(kube_client(&api), "shop");
        match slices.list(&ListParams::default()).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
                assert!(
                    status
                        .message
                        .contains("cannot list resource \"endpointslices\""),
                    "{}",
                    status.message
                );
            }
            other => panic!("expected a 403, got {other:?}"),
        }
        let mut events = drive(slices.clone(), watcher::Config::default());
        assert_eq!(describe(&next_item(&mut events).await.unwrap()), "Init");
        match next_item(&mut events).await {
            Err(watcher::Error::InitialListFailed(kube::Error::Api(status))) => {
                assert_eq!(status.code, 403)
            }
            other => panic!("expected the 403, got {:?}", other.map(|e| describe(&e))),
        }
        api.set_forbidden(false);
        expect_events(&mut events, &["Init", "InitApply orders-x7k2p", "InitDone"]).await;
        api.wait_for_watch(SLICES, WAIT).await;
        // Down: the watch is cut, relisting fails, coming back resumes.
        api.set_down(true);
        let mut errors = Vec::new();
        for _ in 0..3 {
            if let Err(e) = next_item(&mut events).await {
                errors.push(e.to_string());
            }
        }
        assert!(!errors.is_empty());
        eprintln!("kube watcher while the API is down: {errors:?}");
        api.set_down(false);
        api.put_slice(
            "shop",
            "orders-2",
            "orders",
            &[("10.244.4.4", true, false)],
            &[("http", 8080)],
        );
        let mut errors = Vec::new();
        assert_eq!(
            describe(&next_event(&mut events, &mut errors).await),
            "Apply orders-2",
            "{errors:?}"
        );
    }

    #[test]
    fn selectors_parse_as_the_api_server_does() {
        use Requirement::*;
        let s = |text: &str| Selector::parse(text).unwrap().0;
        assert_eq!(s(""), []);
        assert_eq!(s("a=b"), [Eq("a".into(), "b".into())]);
        assert_eq!(
            s("a==b, c != d"),
            [Eq("a".into(), "b".into()), NotEq("c".into(), "d".into())]
        );
        assert_eq!(
            s("kubernetes.io/service-name in (orders, payments),x notin (y)"),
            [
                In(
                    "kubernetes.io/service-name".into(),
                    vec!["orders".into(), "payments".into()]
                ),
                NotIn("x".into(), vec!["y".into()])
            ]
        );
        assert_eq!(s("a,!b"), [Exists("a".into()), NotExists("b".into())]);
        for bad in ["=b", "a in b", "a,,b", "a in (b", "a=b c"] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            unbase64url(&base64url(b"shop/orders\0 x")).unwrap(),
            b"shop/orders\0 x"
        );
        let (rv, start) =
            decode_continue(&encode_continue(48_391, "shop/orders-x7k2p\u{0}")).unwrap();
        assert_eq!(
            (rv, start.0.as_str(), start.1.as_str()),
            (48_391, "shop", "orders-x7k2p\u{0}")
        );
        assert_eq!(now_rfc3339().len(), "2024-06-03T09:12:44Z".len());
    }
}
