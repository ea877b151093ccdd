//! What `breakwater inject` does to one pod spec: the sidecar container, the
//! iptables init container, the app containers' proxy variables and the volumes
//! (iptables' lock directory, the policy file's ConfigMap), each the same as the Helm
//! chart renders (the tests compare the two).
//!
//! Injection first removes whatever an earlier injection added, then adds it again at
//! fixed places, so injecting twice gives the same pod as injecting once, and
//! re-injecting with other flags replaces the old injection.

use super::yaml::Node;
use super::{Mode, Plan, SidecarForm};

/// breakwater's listeners, as DESIGN.md fixes them.
pub const INBOUND_PORT: u16 = 15006;
pub const OUTBOUND_PORT: u16 = 15001;
pub const ADMIN_PORT: u16 = 15000;

pub const SIDECAR_NAME: &str = "breakwater";
pub const INIT_NAME: &str = "breakwater-init";
/// A writable /run for the iptables init container: iptables takes its lock file
/// there, and the container's root filesystem is read-only.
pub const XTABLES_VOLUME: &str = "breakwater-xtables";
/// The policy file's ConfigMap (`--policy-configmap`), mounted into the sidecar at
/// [`POLICY_DIR`] as a directory: a subPath mount of the one file would never receive
/// the ConfigMap's updates.
pub const POLICY_VOLUME: &str = "breakwater-policy";
pub const POLICY_DIR: &str = "/etc/breakwater/policy";
/// Set on the pod template: the mode injected, so that a later injection in the
/// other mode knows the proxy variables on the app containers are its own.
pub const MODE_ANNOTATION: &str = "breakwater.io/mode";
/// `breakwater.io/inject: disabled` on a pod template leaves it alone.
pub const INJECT_ANNOTATION: &str = "breakwater.io/inject";
/// A label and an annotation on every injected pod: the version of breakwater that
/// injected it (`kubectl get pods -l breakwater.io/version` finds them all).
pub const VERSION_KEY: &str = "breakwater.io/version";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Set when injection added kubectl's default-container annotation, so that
/// `uninject` takes out only what inject put in.
const DEFAULT_CONTAINER_SET: &str = "breakwater.io/default-container-set";
const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";
/// Sidecars of other meshes: a pod that has one is left alone, two proxies that both
/// redirect the pod's traffic would loop it.
const OTHER_PROXIES: [&str; 2] = ["istio-proxy", "linkerd-proxy"];
/// The app's port when neither `--app-port` nor a containerPort says otherwise.
pub const DEFAULT_APP_PORT: u16 = 8080;

/// The variables explicit mode sets on the app containers. Both spellings: Go reads
/// either, curl and many scripting runtimes only the lowercase `http_proxy`.
pub fn proxy_env() -> [(&'static str, String); 4] {
    let proxy = format!("http://127.0.0.1:{OUTBOUND_PORT}");
    let no_proxy = "localhost,127.0.0.1,::1".to_string();
    [
        ("HTTP_PROXY", proxy.clone()),
        ("http_proxy", proxy),
        ("NO_PROXY", no_proxy.clone()),
        ("no_proxy", no_proxy),
    ]
}

/// What happened to one pod spec.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Injected,
    /// Left unchanged, and why.
    Skipped(String),
}

/// Why a pod template cannot take breakwater: a part of it is not what a pod
/// spec has there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PodError {
    #[error("the pod spec is missing or not a mapping")]
    NoSpec,
    #[error("spec.containers is missing or not a list")]
    NoContainers,
    #[error("spec.containers is empty")]
    EmptyContainers,
    #[error("spec.{0} is not a list")]
    NotAList(&'static str),
    #[error("metadata.annotations is not a mapping")]
    Annotations,
    #[error("metadata.labels is not a mapping")]
    Labels,
    #[error("a container's env is not a list")]
    Env,
}

/// Injects breakwater into `template` (a Pod, or a workload's pod template: a mapping
/// with `metadata` and `spec`).
pub fn inject(template: &mut Node, plan: &Plan) -> Result<Outcome, PodError> {
    let annotation = |key: &str| {
        template
            .at(&["metadata", "annotations", key])
            .and_then(Node::as_str)
            .map(str::to_string)
    };
    if annotation(INJECT_ANNOTATION).as_deref() == Some("disabled") {
        return Ok(Outcome::Skipped(format!("{INJECT_ANNOTATION}: disabled")));
    }
    let was_explicit = annotation(MODE_ANNOTATION).as_deref() == Some("explicit");
    let spec = match template.get_mut("spec") {
        Some(spec @ Node::Map(_)) => spec,
        _ => return Err(PodError::NoSpec),
    };
    if spec.get("hostNetwork").is_some_and(Node::is_true) {
        return Ok(Outcome::Skipped(
            "hostNetwork: the pod shares the node's network, where redirecting traffic \
             would take the node's own"
                .into(),
        ));
    }
    for list in ["containers", "initContainers"] {
        if let Some(Node::Seq(items)) = spec.get(list)
            && let Some(other) = OTHER_PROXIES
                .iter()
                .find(|p| items.iter().any(|c| named(c, p)))
        {
            return Ok(Outcome::Skipped(format!("it already has {other}")));
        }
    }

    remove_previous(spec, was_explicit && plan.mode != Mode::Explicit);

    let Some(Node::Seq(containers)) = spec.get("containers") else {
        return Err(PodError::NoContainers);
    };
    let Some(app) = containers.first() else {
        return Err(PodError::EmptyContainers);
    };
    let app_name = app.get("name").and_then(Node::as_str).map(str::to_string);
    let app_port = plan.app_port.unwrap_or_else(|| first_port(app));

    let sidecar = sidecar_container(plan, app_port);
    match plan.sidecar {
        SidecarForm::Native => seq(spec, "initContainers")?.insert(0, sidecar),
        SidecarForm::Classic => seq(spec, "containers")?.push(sidecar),
    }
    match plan.mode {
        Mode::Transparent => {
            seq(spec, "initContainers")?.insert(0, init_container(plan));
            seq(spec, "volumes")?.push(xtables_volume());
        }
        Mode::Explicit => {
            for container in seq(spec, "containers")?.iter_mut() {
                if !named(container, SIDECAR_NAME) {
                    set_proxy_env(container)?;
                }
            }
        }
    }
    if let Some(policy) = &plan.policy {
        // After the xtables volume, as the chart renders them.
        seq(spec, "volumes")?.push(policy_volume(&policy.name));
    }

    // Lists that only an earlier injection filled go, so a switch of form or mode
    // leaves no `initContainers: []` behind.
    for key in ["initContainers", "volumes"] {
        if matches!(spec.get(key), Some(Node::Seq(items)) if items.is_empty()) {
            spec.remove(key);
        }
    }

    let annotations = template
        .map_entry("metadata")
        .and_then(|m| m.map_entry("annotations"))
        .ok_or(PodError::Annotations)?;
    annotations.set(MODE_ANNOTATION, Node::str(plan.mode.as_str()));
    annotations.set(VERSION_KEY, Node::str(VERSION));
    if let Some(name) = app_name
        && annotations.get(DEFAULT_CONTAINER_ANNOTATION).is_none()
    {
        // `kubectl logs` and `exec` then pick the app, not the sidecar.
        annotations.set(DEFAULT_CONTAINER_ANNOTATION, Node::str(name));
        annotations.set(DEFAULT_CONTAINER_SET, Node::str("true"));
    }
    template
        .map_entry("metadata")
        .and_then(|m| m.map_entry("labels"))
        .ok_or(PodError::Labels)?
        .set(VERSION_KEY, Node::str(VERSION));
    Ok(Outcome::Injected)
}

/// Whether `template` carries breakwater already: its sidecar in either form.
pub fn is_injected(template: &Node) -> bool {
    ["containers", "initContainers"].iter().any(|list| {
        matches!(template.at(&["spec", list]), Some(Node::Seq(items))
            if items.iter().any(|c| named(c, SIDECAR_NAME)))
    })
}

/// Takes out everything [`inject`] added, leaving the pod as it was before:
/// `Skipped` when there was nothing of breakwater's in it.
pub fn uninject(template: &mut Node) -> Result<Outcome, PodError> {
    if !is_injected(template) {
        return Ok(Outcome::Skipped("breakwater is not in it".into()));
    }
    let annotation = |key: &str| {
        template
            .at(&["metadata", "annotations", key])
            .and_then(Node::as_str)
            .map(str::to_string)
    };
    let explicit = annotation(MODE_ANNOTATION).as_deref() == Some("explicit");
    let default_container_set = annotation(DEFAULT_CONTAINER_SET).is_some();
    let spec = match template.get_mut("spec") {
        Some(spec @ Node::Map(_)) => spec,
        _ => return Err(PodError::NoSpec),
    };
    let emptied = remove_previous(spec, explicit);
    for key in emptied {
        spec.remove(key);
    }
    if let Some(metadata @ Node::Map(_)) = template.get_mut("metadata") {
        let mut keys = vec![MODE_ANNOTATION, VERSION_KEY, DEFAULT_CONTAINER_SET];
        if default_container_set {
            keys.push(DEFAULT_CONTAINER_ANNOTATION);
        }
        remove_keys(metadata, "annotations", &keys);
        remove_keys(metadata, "labels", &[VERSION_KEY]);
        // A workload's template without metadata got it from inject.
        if matches!(metadata, Node::Map(e) if e.is_empty()) {
            template.remove("metadata");
        }
    }
    Ok(Outcome::Injected)
}

/// Removes `keys` from the mapping `metadata.<field>`, and the mapping itself when
/// that emptied it.
fn remove_keys(metadata: &mut Node, field: &str, keys: &[&str]) {
    let Some(map @ Node::Map(_)) = metadata.get_mut(field) else {
        return;
    };
    let had = matches!(map, Node::Map(e) if !e.is_empty());
    for key in keys {
        map.remove(key);
    }
    if had && matches!(map, Node::Map(e) if e.is_empty()) {
        metadata.remove(field);
    }
}

fn seq<'a>(spec: &'a mut Node, key: &'static str) -> Result<&'a mut Vec<Node>, PodError> {
    spec.seq_entry(key).ok_or(PodError::NotAList(key))
}

fn named(container: &Node, name: &str) -> bool {
    container.get("name").and_then(Node::as_str) == Some(name)
}

/// Takes out what an earlier injection added. Lists stay in place, even empty, so a
/// re-injection puts everything back exactly where the first one did; returned are
/// those this emptied, which `uninject` removes.
fn remove_previous(spec: &mut Node, drop_proxy_env: bool) -> Vec<&'static str> {
    let mut emptied = Vec::new();
    let mut retain = |key: &'static str, keep: &dyn Fn(&Node) -> bool| {
        if let Some(Node::Seq(items)) = spec.get_mut(key) {
            let before = items.len();
            items.retain(keep);
            if items.is_empty() && before > 0 {
                emptied.push(key);
            }
        }
    };
    retain("initContainers", &|c| {
        !named(c, SIDECAR_NAME) && !named(c, INIT_NAME)
    });
    retain("volumes", &|v| {
        !named(v, XTABLES_VOLUME) && !named(v, POLICY_VOLUME)
    });
    if let Some(Node::Seq(items)) = spec.get_mut("containers") {
        items.retain(|c| !named(c, SIDECAR_NAME));
        if drop_proxy_env {
            let names = proxy_env().map(|(name, _)| name);
            for container in items.iter_mut() {
                if let Some(Node::Seq(env)) = container.get_mut("env") {
                    let before = env.len();
                    env.retain(|e| !names.iter().any(|n| named(e, n)));
                    if env.is_empty() && before > 0 {
                        container.remove("env");
                    }
                }
            }
        }
    }
    emptied
}

/// The first containerPort of the app container: what it listens on, most likely.
fn first_port(app: &Node) -> u16 {
    let port = match app.get("ports") {
        Some(Node::Seq(ports)) => ports.first().and_then(|p| p.get("containerPort")),
        _ => None,
    };
    port.and_then(Node::as_str)
        .and_then(|p| p.parse().ok())
        .unwrap_or(DEFAULT_APP_PORT)
}

fn set_proxy_env(container: &mut Node) -> Result<(), PodError> {
    let env = container.seq_entry("env").ok_or(PodError::Env)?;
    for (name, value) in proxy_env() {
        let entry = Node::map([("name", Node::str(name)), ("value", Node::str(value))]);
        match env.iter_mut().find(|e| named(e, name)) {
            Some(existing) => *existing = entry,
            None => env.push(entry),
        }
    }
    Ok(())
}

/// `breakwater run` and its arguments, as the chart renders them.
pub fn run_args(plan: &Plan, app_port: u16) -> Vec<String> {
    let mut args = vec![
        "run".to_string(),
        format!("--inbound-addr=0.0.0.0:{INBOUND_PORT}"),
        format!("--outbound-addr=127.0.0.1:{OUTBOUND_PORT}"),
        format!("--admin-addr=0.0.0.0:{ADMIN_PORT}"),
        format!("--app-addr=127.0.0.1:{app_port}"),
    ];
    args.extend(plan.run_flags.iter().cloned());
    if let Some(policy) = &plan.policy {
        args.push(policy_file_flag(&policy.key));
    }
    args
}

/// `--policy-file` at `key` of the mounted ConfigMap.
fn policy_file_flag(key: &str) -> String {
    format!("--policy-file={POLICY_DIR}/{key}")
}

/// `breakwater init-iptables` and its arguments, as the chart renders them.
pub fn iptables_args(plan: &Plan) -> Vec<String> {
    let mut args = vec![
        "init-iptables".to_string(),
        format!("--inbound-port={INBOUND_PORT}"),
        format!("--outbound-port={OUTBOUND_PORT}"),
        format!("--admin-port={ADMIN_PORT}"),
        format!("--proxy-uid={}", plan.proxy_uid),
    ];
    let lists = [
        ("--exclude-inbound-ports", &plan.exclude_inbound_ports),
        ("--exclude-outbound-ports", &plan.exclude_outbound_ports),
        ("--exclude-outbound-cidrs", &plan.exclude_outbound_cidrs),
    ];
    for (flag, values) in lists {
        if !values.is_empty() {
            args.push(format!("{flag}={}", values.join(",")));
        }
    }
    args
}

fn strings(items: Vec<String>) -> Node {
    Node::Seq(items.into_iter().map(Node::str).collect())
}

fn http_probe(path: &str, period: u32, failures: u32) -> Node {
    Node::map([
        (
            "httpGet",
            Node::map([("path", Node::str(path)), ("port", Node::plain(ADMIN_PORT))]),
        ),
        ("periodSeconds", Node::plain(period)),
        ("failureThreshold", Node::plain(failures)),
    ])
}

fn port(name: &str, number: u16) -> Node {
    Node::map([
        ("name", Node::str(name)),
        ("containerPort", Node::plain(number)),
        ("protocol", Node::str("TCP")),
    ])
}

fn resources(cpu: &str, memory: &str, memory_limit: &str) -> Node {
    Node::map([
        (
            "requests",
            Node::map([("cpu", Node::str(cpu)), ("memory", Node::str(memory))]),
        ),
        ("limits", Node::map([("memory", Node::str(memory_limit))])),
    ])
}

/// The breakwater container. Its probes are the chart's; see the comment there on
/// why the startup probe is `/live`.
fn sidecar_container(plan: &Plan, app_port: u16) -> Node {
    let mut c = Node::map([
        ("name", Node::str(SIDECAR_NAME)),
        ("image", Node::str(&plan.image)),
        ("imagePullPolicy", Node::str("IfNotPresent")),
    ]);
    if plan.sidecar == SidecarForm::Native {
        c.set("restartPolicy", Node::str("Always"));
    }
    c.set("args", strings(run_args(plan, app_port)));
    c.set(
        "ports",
        Node::Seq(vec![
            port("bw-admin", ADMIN_PORT),
            port("bw-inbound", INBOUND_PORT),
        ]),
    );
    c.set("startupProbe", http_probe("/live", 1, 30));
    c.set("livenessProbe", http_probe("/live", 10, 3));
    c.set("readinessProbe", http_probe("/ready", 2, 1));
    c.set("resources", resources("50m", "32Mi", "128Mi"));
    c.set(
        "securityContext",
        Node::map([
            ("runAsNonRoot", Node::plain(true)),
            ("runAsUser", Node::plain(plan.proxy_uid)),
            ("runAsGroup", Node::plain(plan.proxy_uid)),
            ("readOnlyRootFilesystem", Node::plain(true)),
            ("allowPrivilegeEscalation", Node::plain(false)),
            (
                "capabilities",
                Node::map([("drop", strings(vec!["ALL".into()]))]),
            ),
            (
                "seccompProfile",
                Node::map([("type", Node::str("RuntimeDefault"))]),
            ),
        ]),
    );
    if plan.policy.is_some() {
        // The directory, not the file with subPath: a subPath mount gets no updates.
        c.set(
            "volumeMounts",
            Node::Seq(vec![Node::map([
                ("name", Node::str(POLICY_VOLUME)),
                ("mountPath", Node::str(POLICY_DIR)),
                ("readOnly", Node::plain(true)),
            ])]),
        );
    }
    c
}

/// The init container that installs the iptables redirect: the only part that needs
/// privileges (root in the pod's network namespace, NET_ADMIN and NET_RAW).
fn init_container(plan: &Plan) -> Node {
    Node::map([
        ("name", Node::str(INIT_NAME)),
        ("image", Node::str(&plan.init_image)),
        ("imagePullPolicy", Node::str("IfNotPresent")),
        ("args", strings(iptables_args(plan))),
        ("resources", resources("10m", "16Mi", "64Mi")),
        (
            "securityContext",
            Node::map([
                ("runAsNonRoot", Node::plain(false)),
                ("runAsUser", Node::plain(0)),
                ("runAsGroup", Node::plain(0)),
                ("readOnlyRootFilesystem", Node::plain(true)),
                ("allowPrivilegeEscalation", Node::plain(false)),
                (
                    "capabilities",
                    Node::map([
                        ("drop", strings(vec!["ALL".into()])),
                        ("add", strings(vec!["NET_ADMIN".into(), "NET_RAW".into()])),
                    ]),
                ),
                (
                    "seccompProfile",
                    Node::map([("type", Node::str("RuntimeDefault"))]),
                ),
            ]),
        ),
        (
            "volumeMounts",
            Node::Seq(vec![Node::map([
                ("name", Node::str(XTABLES_VOLUME)),
                ("mountPath", Node::str("/run")),
            ])]),
        ),
    ])
}

/// The whole ConfigMap as a volume (no `items`: every key is a file, and the
/// kubelet's updates replace them all at once).
fn policy_volume(configmap: &str) -> Node {
    Node::map([
        ("name", Node::str(POLICY_VOLUME)),
        ("configMap", Node::map([("name", Node::str(configmap))])),
    ])
}

fn xtables_volume() -> Node {
    Node::map([
        ("name", Node::str(XTABLES_VOLUME)),
        (
            "emptyDir",
            Node::map([
                ("medium", Node::str("Memory")),
                ("sizeLimit", Node::str("1Mi")),
            ]),
        ),
    ])
}
