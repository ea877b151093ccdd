//! Unit tests of `breakwater inject`: every kind, idempotence, mode and form
//! switches, what is left alone, and errors that name the document and line.

use super::*;
use crate::cli::{Cli, Command};
use clap::Parser;

fn plan(flags: &[&str]) -> Plan {
    let argv = ["breakwater", "inject"].iter().chain(flags);
    match Cli::try_parse_from(argv).expect("inject flags").command {
        Command::Inject(args) => Plan::from_args(args.sidecar).expect("a valid plan"),
        other => panic!("parsed as {other:?}"),
    }
}

fn plan_error(flags: &[&str]) -> String {
    let argv = ["breakwater", "inject"].iter().chain(flags);
    match Cli::try_parse_from(argv).expect("inject flags").command {
        Command::Inject(args) => Plan::from_args(args.sidecar)
            .expect_err("an invalid plan")
            .to_string(),
        other => panic!("parsed as {other:?}"),
    }
}

fn run(input: &str, flags: &[&str]) -> Injected {
    inject_stream(input, &plan(flags)).expect("injects")
}

const WORKLOADS: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: traefik/whoami:v1.10.1
        ports: [{containerPort: 9090}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [{name: db, image: db}]}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec: {containers: [{name: agent, image: agent}]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: once}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: once, image: once}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: '0 3 * * *'
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: nightly, image: nightly}]
---
apiVersion: v1
kind: Pod
metadata: {name: solo}
spec: {containers: [{name: solo, image: solo}]}
";

const PASSTHROUGH: &str = "\
---
apiVersion: v1
kind: ConfigMap   # comments survive in documents without a pod
metadata: {name: settings}
data:
  on: 'yes'
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80}]}
";

fn docs(output: &str) -> Vec<Node> {
    split_documents(output)
        .iter()
        .filter_map(|c| yaml::parse(c.text).expect("output parses"))
        .collect()
}

fn pod_spec(doc: &Node) -> &Node {
    let kind = doc.get("kind").and_then(Node::as_str).unwrap_or("");
    let path = template_path(kind).expect("a kind with pods");
    doc.at(path)
        .and_then(|t| t.get("spec"))
        .expect("a pod spec")
}

fn names(spec: &Node, list: &str) -> Vec<String> {
    match spec.get(list) {
        Some(Node::Seq(items)) => items
            .iter()
            .filter_map(|c| c.get("name").and_then(Node::as_str).map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

#[test]
fn every_kind_with_a_pod_gets_the_sidecar() {
    let out = run(WORKLOADS, &[]);
    let docs = docs(&out.output);
    assert_eq!(docs.len(), 6);
    for doc in &docs {
        let spec = pod_spec(doc);
        assert_eq!(
            names(spec, "initContainers"),
            ["breakwater-init", "breakwater"]
        );
        assert_eq!(names(spec, "volumes"), ["breakwater-xtables"]);
    }
    let web = pod_spec(&docs[0]);
    let sidecar = match web.get("initContainers") {
        Some(Node::Seq(items)) => &items[1],
        _ => panic!("no init containers"),
    };
    assert_eq!(
        sidecar.get("restartPolicy").and_then(Node::as_str),
        Some("Always")
    );
    let args = yaml::emit(sidecar.get("args").expect("args"));
    assert!(
        args.contains("--app-addr=127.0.0.1:9090"),
        "first containerPort: {args}"
    );
    assert_eq!(
        out.notes
            .iter()
            .filter(|n| n.starts_with("injected"))
            .count(),
        6
    );
}

#[test]
fn documents_without_pods_pass_through_byte_for_byte() {
    let input = format!("# a header comment\n{PASSTHROUGH}");
    let out = run(&input, &[]);
    assert_eq!(out.output, input);
    let mixed = format!("{WORKLOADS}{PASSTHROUGH}");
    let out = run(&mixed, &[]);
    assert!(out.output.ends_with(PASSTHROUGH), "{}", out.output);
}

#[test]
fn injecting_twice_changes_nothing() {
    let forms: [&[&str]; 6] = [
        &[],
        &["--sidecar", "classic"],
        &["--mode", "explicit"],
        &[
            "--mode",
            "explicit",
            "--sidecar",
            "classic",
            "--retries",
            "3",
        ],
        &["--policy-configmap", "shop-policy"],
        &[
            "--mode",
            "explicit",
            "--sidecar",
            "classic",
            "--policy-configmap=shop-policy",
            "--policy-configmap-key=rules.yaml",
        ],
    ];
    for flags in forms {
        let once = run(WORKLOADS, flags).output;
        let twice = run(&once, flags).output;
        assert_eq!(once, twice, "flags {flags:?}");
    }
}

#[test]
fn reinjecting_with_other_flags_replaces_the_injection() {
    let original = run(WORKLOADS, &[]).output;
    let explicit = run(&original, &["--mode", "explicit", "--sidecar", "classic"]).output;
    let web = pod_spec(&docs(&explicit)[0]).clone();
    assert_eq!(names(&web, "containers"), ["web", "breakwater"]);
    assert!(web.get("initContainers").is_none(), "nothing left behind");
    assert!(web.get("volumes").is_none());
    let back = run(&explicit, &[]).output;
    assert_eq!(back, original, "back to the first injection exactly");
}

/// The breakwater container of a pod spec, native or classic.
fn sidecar_of(spec: &Node) -> &Node {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|list| match spec.get(list) {
            Some(Node::Seq(items)) => items
                .iter()
                .find(|c| c.get("name").and_then(Node::as_str) == Some(pod::SIDECAR_NAME)),
            _ => None,
        })
        .next()
        .expect("a breakwater container")
}

fn args_of(container: &Node) -> Vec<String> {
    match container.get("args") {
        Some(Node::Seq(args)) => args
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

#[test]
fn a_policy_configmap_is_mounted_as_a_directory_and_read_as_the_policy_file() {
    for (flags, volumes) in [
        (
            &["--policy-configmap", "shop-policy", "--retries", "3"][..],
            &["breakwater-xtables", "breakwater-policy"][..],
        ),
        (
            &[
                "--mode",
                "explicit",
                "--sidecar",
                "classic",
                "--policy-configmap",
                "shop-policy",
                "--retries",
                "3",
            ],
            &["breakwater-policy"],
        ),
    ] {
        let out = run(WORKLOADS, flags);
        for doc in &docs(&out.output) {
            let spec = pod_spec(doc);
            assert_eq!(names(spec, "volumes"), volumes, "{flags:?}");
            let Some(Node::Seq(vols)) = spec.get("volumes") else {
                panic!("no volumes")
            };
            let policy = vols.last().expect("the policy volume");
            assert_eq!(
                policy,
                &yaml::parse("name: breakwater-policy\nconfigMap: {name: shop-policy}")
                    .expect("ok")
                    .expect("node"),
                "the whole ConfigMap, no items"
            );
            let sidecar = sidecar_of(spec);
            assert_eq!(
                sidecar.get("volumeMounts"),
                yaml::parse(
                    "- {name: breakwater-policy, mountPath: /etc/breakwater/policy, readOnly: true}"
                )
                .expect("ok")
                .as_ref(),
                "the directory, read-only, without subPath: {flags:?}"
            );
            assert_eq!(
                args_of(sidecar).last().map(String::as_str),
                Some("--policy-file=/etc/breakwater/policy/policy.yaml"),
                "after the run flags: {flags:?}"
            );
        }
        assert!(
            out.notes
                .iter()
                .any(|n| n.contains("ConfigMap shop-policy") && n.contains("policy.yaml")),
            "{:?}",
            out.notes
        );
    }

    let p = plan(&[
        "--policy-configmap",
        "a.b-1",
        "--policy-configmap-key",
        "Rules_v2.yaml",
    ]);
    assert_eq!(
        p.policy,
        Some(PolicyConfigMap {
            name: "a.b-1".into(),
            key: "Rules_v2.yaml".into()
        })
    );
    assert!(
        pod::run_args(&p, 8080)
            .contains(&"--policy-file=/etc/breakwater/policy/Rules_v2.yaml".to_string())
    );
    assert_eq!(plan(&[]).policy, None, "none by default");
    assert!(
        run(WORKLOADS, &[])
            .notes
            .iter()
            .all(|n| !n.contains("ConfigMap")),
        "no note without it"
    );
}

#[test]
fn reinjecting_without_the_policy_configmap_removes_it() {
    let plain = run(WORKLOADS, &[]).output;
    let with = run(
        &plain,
        &[
            "--policy-configmap",
            "shop-policy",
            "--policy-configmap-key",
            "a.yaml",
        ],
    )
    .output;
    let other = run(&with, &["--policy-configmap", "other"]).output;
    let web = pod_spec(&docs(&other)[0]).clone();
    assert_eq!(
        names(&web, "volumes"),
        ["breakwater-xtables", "breakwater-policy"]
    );
    assert!(
        other.contains("name: other"),
        "replaced, not added: {other}"
    );
    assert!(!other.contains("shop-policy") && !other.contains("a.yaml"));
    assert_eq!(run(&other, &[]).output, plain, "back to no policy exactly");

    // In explicit mode the policy volume is the only one: the list goes with it.
    let explicit = ["--mode", "explicit", "--sidecar", "classic"];
    let without = run(WORKLOADS, &explicit).output;
    let with = run(
        &without,
        &[&explicit[..], &["--policy-configmap", "shop-policy"]].concat(),
    )
    .output;
    assert_eq!(
        names(pod_spec(&docs(&with)[0]), "volumes"),
        ["breakwater-policy"]
    );
    let off = run(&with, &explicit).output;
    assert!(pod_spec(&docs(&off)[0]).get("volumes").is_none(), "{off}");
    assert!(!off.contains("breakwater-policy") && !off.contains("--policy-file"));
    assert_eq!(off, without);
}

#[test]
fn policy_configmap_flags_are_checked_naming_the_flag() {
    let err = plan_error(&["--policy-file", "/etc/policy.yaml"]);
    assert!(
        err.contains("--policy-file is set by inject") && err.contains("--policy-configmap"),
        "{err}"
    );
    assert!(plan_error(&["--retries=1", "--policy-file=/p.yaml"]).contains("--policy-configmap"));
    assert!(
        plan_error(&["--retries", "1", "--policy-configmap", "p"]).contains("before the run flags")
    );
    let long = "a".repeat(254);
    for name in [
        "Shop",
        "shop_policy",
        "-shop",
        "shop-",
        "a..b",
        "a.-b",
        "",
        &long,
    ] {
        let err = plan_error(&["--policy-configmap", name]);
        assert!(
            err.contains("--policy-configmap:") && err.contains("DNS-1123"),
            "{name:?}: {err}"
        );
    }
    for name in ["p", "shop-policy", "shop.policy.v2", "0", &"a".repeat(253)] {
        assert!(
            plan(&["--policy-configmap", name]).policy.is_some(),
            "{name}"
        );
    }
    for key in ["a/b", "../x", "..x", ".", "..", "", "a b", "pol:icy", &long] {
        let err = plan_error(&["--policy-configmap", "p", "--policy-configmap-key", key]);
        assert!(err.contains("--policy-configmap-key:"), "{key:?}: {err}");
    }
    for key in ["policy.yaml", ".hidden", "a..b", "Rules-2_x.yml"] {
        assert_eq!(
            plan(&["--policy-configmap", "p", "--policy-configmap-key", key])
                .policy
                .map(|p| p.key),
            Some(key.to_string())
        );
    }
    // A key without a ConfigMap is a mistake, not ignored.
    let argv = ["breakwater", "inject", "--policy-configmap-key", "a.yaml"];
    let err = Cli::try_parse_from(argv).expect_err("a key without a ConfigMap");
    assert!(err.to_string().contains("--policy-configmap"), "{err}");
}

#[test]
fn explicit_mode_sets_the_proxy_variables_on_app_containers_only() {
    let input = "\
kind: Pod
metadata: {name: p}
spec:
  containers:
  - name: app
    image: app
    env:
    - {name: HTTP_PROXY, value: 'http://corp:3128'}
    - {name: KEEP, value: x}
";
    let out = run(input, &["--mode", "explicit", "--sidecar", "classic"]);
    let doc = &docs(&out.output)[0];
    let env = doc.at(&["spec", "containers"]).expect("containers");
    let Node::Seq(containers) = env else { panic!() };
    let app_env = names(&containers[0], "env");
    assert_eq!(
        app_env,
        ["HTTP_PROXY", "KEEP", "http_proxy", "NO_PROXY", "no_proxy"]
    );
    assert!(out.output.contains("value: http://127.0.0.1:15001"));
    assert!(
        !out.output.contains("corp:3128"),
        "breakwater's proxy replaces it"
    );
    assert!(
        names(&containers[1], "env").is_empty(),
        "not on the sidecar"
    );
    assert!(
        out.notes.iter().any(|n| n.contains("targetPort")),
        "{:?}",
        out.notes
    );
    assert!(
        !out.output.contains("NET_ADMIN"),
        "explicit mode needs no privileges"
    );
}

#[test]
fn pods_that_must_not_be_touched_are_left_alone() {
    let input = "\
kind: Pod
metadata: {name: host}
spec: {hostNetwork: true, containers: [{name: a, image: a}]}
---
kind: Pod
metadata: {name: off, annotations: {breakwater.io/inject: disabled}}
spec: {containers: [{name: a, image: a}]}
---
kind: Pod
metadata: {name: meshed}
spec: {containers: [{name: a, image: a}, {name: istio-proxy, image: x}]}
";
    let out = run(input, &[]);
    assert_eq!(out.output, input);
    assert_eq!(
        out.notes
            .iter()
            .filter(|n| n.starts_with("skipped"))
            .count(),
        3
    );
}

#[test]
fn lists_from_kubectl_get_are_injected_item_by_item() {
    let input = "\
apiVersion: v1
kind: List
items:
- kind: Pod
  metadata: {name: a}
  spec: {containers: [{name: a, image: a}]}
- kind: Service
  metadata: {name: s}
";
    let out = run(input, &["--sidecar", "classic"]);
    let doc = &docs(&out.output)[0];
    let Some(Node::Seq(items)) = doc.get("items") else {
        panic!()
    };
    assert_eq!(
        names(items[0].get("spec").expect("spec"), "containers"),
        ["a", "breakwater"]
    );
    assert_eq!(
        items[1],
        yaml::parse("kind: Service\nmetadata: {name: s}")
            .expect("ok")
            .expect("node")
    );
}

#[test]
fn classic_sidecars_in_jobs_come_with_the_shutdown_note() {
    let out = run(WORKLOADS, &["--sidecar", "classic"]);
    let shutdown: Vec<_> = out
        .notes
        .iter()
        .filter(|n| n.contains("/shutdown"))
        .collect();
    assert_eq!(shutdown.len(), 2, "Job and CronJob: {:?}", out.notes);
    assert!(
        run(WORKLOADS, &[])
            .notes
            .iter()
            .all(|n| !n.contains("/shutdown"))
    );
}

#[test]
fn invalid_yaml_names_the_document_and_line() {
    let input = "kind: ConfigMap\n---\nkind: Pod\nspec:\n  containers: [\n---\nkind: Secret\n";
    let err = inject_stream(input, &plan(&[])).expect_err("invalid");
    assert_eq!(err.document, 2);
    assert_eq!(err.line, 5, "{err}");
    assert!(err.to_string().starts_with("document 2, line 5"), "{err}");

    let input = "# header\n---\nkind: Pod\nmetadata:\n  name: x\n   bad: indent\n";
    let err = inject_stream(input, &plan(&[])).expect_err("invalid");
    assert_eq!((err.document, err.line), (1, 6), "{err}");
}

#[test]
fn pods_of_the_wrong_shape_name_the_document() {
    let input = "kind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: a}]}\n---\nkind: Deployment\nmetadata: {name: d}\nspec: {template: {spec: {containers: {}}}}\n";
    let err = inject_stream(input, &plan(&[])).expect_err("containers is not a list");
    assert_eq!(err.document, 2);
    assert!(err.message.contains("Deployment/d"), "{err}");
    assert!(err.message.contains("containers"), "{err}");
}

#[test]
fn run_flags_are_checked_and_written_one_per_arg() {
    let p = plan(&[
        "--mode",
        "explicit",
        "--retries",
        "3",
        "--route",
        "payments:8080,timeout=2s",
        "--access-log",
    ]);
    assert_eq!(
        p.run_flags,
        [
            "--retries=3",
            "--route=payments:8080,timeout=2s",
            "--access-log"
        ]
    );
    assert_eq!(plan(&["--", "--timeout=2s"]).run_flags, ["--timeout=2s"]);
    assert!(plan_error(&["--retries", "-1"]).contains("--retries"));
    assert!(plan_error(&["--no-such-flag"]).contains("--no-such-flag"));
    assert!(plan_error(&["--app-addr", "127.0.0.1:1"]).contains("--app-port"));
    assert!(plan_error(&["--retries", "1", "--mode", "explicit"]).contains("before the run flags"));
    assert!(plan_error(&["--route", "x:1,retries=nope"]).contains("route"));
}

#[test]
fn iptables_flags_are_rendered_as_init_iptables_takes_them() {
    let p = plan(&[
        "--exclude-inbound-ports",
        "22,9000",
        "--exclude-outbound-cidrs",
        "169.254.169.254/32",
        "--proxy-uid",
        "2000",
    ]);
    assert_eq!(
        pod::iptables_args(&p),
        [
            "init-iptables",
            "--inbound-port=15006",
            "--outbound-port=15001",
            "--admin-port=15000",
            "--proxy-uid=2000",
            "--exclude-inbound-ports=22,9000",
            "--exclude-outbound-cidrs=169.254.169.254/32",
        ]
    );
}

#[test]
fn split_keeps_every_byte() {
    let input = "a: 1\n--- # c\nb: 2\n---\n--- x\n----not a marker\n";
    let chunks = split_documents(input);
    let joined: String = chunks.iter().map(|c| c.text).collect();
    assert_eq!(joined, input);
    let lines: Vec<_> = chunks.iter().map(|c| (c.first_line, c.marked)).collect();
    assert_eq!(lines, [(1, false), (2, true), (4, true), (5, true)]);
}

#[test]
fn host_network_in_any_yaml_spelling_is_never_injected() {
    for spelling in [
        "true", "True", "TRUE", "yes", "Yes", "on", "ON", "y", "\"true\"",
    ] {
        let input = format!(
            "kind: Pod\nmetadata: {{name: host}}\nspec: {{hostNetwork: {spelling}, containers: [{{name: a}}]}}\n"
        );
        let out = run(&input, &[]);
        assert_eq!(out.output, input, "hostNetwork: {spelling}");
        assert!(
            out.notes
                .iter()
                .any(|n| n.contains("skipped Pod/host: hostNetwork")),
            "hostNetwork: {spelling}: {:?}",
            out.notes
        );
    }
    for spelling in ["false", "no", "off"] {
        let input = format!(
            "kind: Pod\nmetadata: {{name: p}}\nspec: {{hostNetwork: {spelling}, containers: [{{name: a}}]}}\n"
        );
        assert!(
            run(&input, &[]).output.contains("name: breakwater"),
            "{spelling}"
        );
    }
}

#[test]
fn injected_pods_carry_breakwaters_version_as_a_label_and_an_annotation() {
    let out = run(WORKLOADS, &[]);
    let injected = docs(&out.output);
    let template = injected[0].at(&["spec", "template"]).expect("template");
    for field in ["labels", "annotations"] {
        assert_eq!(
            template
                .at(&["metadata", field, pod::VERSION_KEY])
                .and_then(Node::as_str),
            Some(env!("CARGO_PKG_VERSION")),
            "{field}"
        );
    }
    // The workload's own labels stay, and the selector is not touched.
    assert_eq!(
        template
            .at(&["metadata", "labels", "app"])
            .and_then(Node::as_str),
        Some("web")
    );
    assert!(
        injected[0]
            .at(&["spec", "selector", "matchLabels", pod::VERSION_KEY])
            .is_none()
    );
}

/// The stream as inject writes documents: what uninject must give back.
fn normalized(input: &str) -> String {
    documents(input)
        .expect("yaml")
        .iter()
        .map(yaml::emit)
        .collect::<Vec<_>>()
        .join("---\n")
}

#[test]
fn uninject_restores_what_inject_changed() {
    let with_annotation = "\
kind: Pod
metadata:
  name: picked
  annotations: {kubectl.kubernetes.io/default-container: web, team: a}
  labels: {app: p}
spec:
  initContainers: [{name: setup, image: s}]
  volumes: [{name: data, emptyDir: {}}]
  containers:
  - {name: web, image: w, env: [{name: A, value: b}]}
  - {name: side, image: s}
";
    let flag_sets: [&[&str]; 5] = [
        &[],
        &["--mode", "explicit"],
        &["--sidecar", "classic"],
        &[
            "--mode",
            "explicit",
            "--sidecar",
            "classic",
            "--retries",
            "3",
        ],
        &["--policy-configmap", "shop"],
    ];
    for input in [WORKLOADS, with_annotation] {
        for flags in flag_sets {
            let injected = run(input, flags).output;
            assert_ne!(normalized(&injected), normalized(input), "{flags:?}");
            let back = uninject_stream(&injected).expect("uninjects");
            assert_eq!(
                normalized(&back.output),
                normalized(input),
                "{flags:?}: {injected}"
            );
            assert!(
                back.notes.iter().any(|n| n.starts_with("uninjected")),
                "{:?}",
                back.notes
            );
        }
    }
}

#[test]
fn uninject_leaves_pods_without_breakwater_byte_for_byte() {
    let back = uninject_stream(WORKLOADS).expect("uninjects");
    assert_eq!(back.output, WORKLOADS);
    assert!(
        back.notes.iter().all(|n| n.starts_with("left ")),
        "{:?}",
        back.notes
    );
    let back = uninject_stream(PASSTHROUGH).expect("uninjects");
    assert_eq!(back.output, PASSTHROUGH);
}

/// What Pod Security's `baseline` and `restricted` levels would refuse in the
/// containers and volumes inject adds (the rules of the Pod Security Standards that
/// a sidecar can break: capabilities, root, privilege escalation, seccomp, volume
/// types). The app's own containers are the app's business.
fn pod_security_violations(spec: &Node, restricted: bool) -> Vec<String> {
    const BASELINE_CAPS: [&str; 13] = [
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    ];
    let mut found = Vec::new();
    let ours = |c: &&Node| {
        let name = c.get("name").and_then(Node::as_str).unwrap_or("");
        name == pod::SIDECAR_NAME || name == pod::INIT_NAME
    };
    for list in ["initContainers", "containers"] {
        let Some(Node::Seq(items)) = spec.get(list) else {
            continue;
        };
        for c in items.iter().filter(ours) {
            let name = c.get("name").and_then(Node::as_str).unwrap_or("");
            let sc = |path: &[&str]| {
                let mut full = vec!["securityContext"];
                full.extend_from_slice(path);
                c.at(&full).and_then(Node::as_str).map(str::to_string)
            };
            let added: Vec<String> = match c.at(&["securityContext", "capabilities", "add"]) {
                Some(Node::Seq(caps)) => caps
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect(),
                _ => Vec::new(),
            };
            if sc(&["privileged"]).as_deref() == Some("true") {
                found.push(format!("{name}: privileged"));
            }
            for cap in &added {
                let allowed = if restricted {
                    cap == "NET_BIND_SERVICE"
                } else {
                    BASELINE_CAPS.contains(&cap.as_str())
                };
                if !allowed {
                    found.push(format!("{name}: adds {cap}"));
                }
            }
            if restricted {
                if sc(&["allowPrivilegeEscalation"]).as_deref() != Some("false") {
                    found.push(format!("{name}: allowPrivilegeEscalation"));
                }
                if sc(&["runAsNonRoot"]).as_deref() != Some("true")
                    || sc(&["runAsUser"]).as_deref() == Some("0")
                {
                    found.push(format!("{name}: may run as root"));
                }
                if !matches!(
                    sc(&["seccompProfile", "type"]).as_deref(),
                    Some("RuntimeDefault" | "Localhost")
                ) {
                    found.push(format!("{name}: seccomp"));
                }
                let drops_all = matches!(c.at(&["securityContext", "capabilities", "drop"]),
                    Some(Node::Seq(d)) if d.iter().any(|n| n.as_str() == Some("ALL")));
                if !drops_all {
                    found.push(format!("{name}: does not drop ALL"));
                }
            }
        }
    }
    if let Some(Node::Seq(volumes)) = spec.get("volumes") {
        for v in volumes {
            let Node::Map(entries) = v else { continue };
            for (key, _) in entries {
                if key.text == "hostPath" {
                    found.push("a hostPath volume".into());
                }
            }
        }
    }
    found
}

#[test]
fn explicit_mode_passes_restricted_pod_security_and_transparent_needs_privileged() {
    for form in ["native", "classic"] {
        for policy in [&[][..], &["--policy-configmap", "shop"][..]] {
            let mut flags = vec!["--mode", "explicit", "--sidecar", form];
            flags.extend_from_slice(policy);
            let out = run(WORKLOADS, &flags);
            for doc in docs(&out.output).iter().take(3) {
                let spec = pod_spec(doc);
                assert_eq!(
                    pod_security_violations(spec, true),
                    Vec::<String>::new(),
                    "{flags:?}"
                );
            }
        }
        let out = run(WORKLOADS, &["--sidecar", form]);
        let injected = docs(&out.output);
        let spec = pod_spec(&injected[0]);
        // The iptables step: NET_ADMIN and NET_RAW as root, beyond even baseline.
        let baseline = pod_security_violations(spec, false);
        assert_eq!(
            baseline,
            [
                "breakwater-init: adds NET_ADMIN",
                "breakwater-init: adds NET_RAW"
            ],
            "{form}"
        );
        let restricted = pod_security_violations(spec, true);
        assert!(
            restricted.iter().all(|v| v.starts_with("breakwater-init")),
            "{restricted:?}"
        );
    }
}
