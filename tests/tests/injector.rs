//! `breakwater injector`, the admission webhook, as the API server meets it: real
//! `AdmissionReview` requests over HTTPS from curl, the returned JSON patch applied
//! to the pod by Python's `jsonpatch` (not ours), the result validated by
//! kubernetes-validate and compared with what `breakwater inject` writes. Also bad
//! reviews, a missing certificate, and a certificate that rotates.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use breakwater::inject::json::to_json;
use serde_json::{Value, json};

use crate::kubernetes::{have_kubernetes_validate, repo, temp_file, text, unique, validate};
use crate::support::*;
use crate::tls::Ca;

/// A running injector; killed on drop.
struct Injector {
    child: Child,
    webhook: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Injector {
    async fn start(cert: &Path, key: &Path, extra: &[&str]) -> Injector {
        let ports = free_ports(2).await;
        let child = Command::new(binary())
            .arg("injector")
            .arg(format!("--listen-addr={}", ports[0]))
            .arg(format!("--admin-addr={}", ports[1]))
            .arg(format!("--tls-cert={}", cert.display()))
            .arg(format!("--tls-key={}", key.display()))
            .args(["--log-level=warn", "--drain-delay=0s"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start breakwater injector");
        Injector {
            child,
            webhook: ports[0],
            admin: ports[1],
        }
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// POSTs `body` to `/inject` with curl, trusting `ca`: the parsed review back.
    fn post(&self, ca: &Path, body: &[u8]) -> Value {
        let file = temp_file(&format!("review-{}.json", unique()), "");
        std::fs::write(&file, body).expect("write review");
        let out = self.curl(ca, &file, 10);
        let _ = std::fs::remove_file(&file);
        assert!(
            out.status.success(),
            "curl failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)))
    }

    fn curl(&self, ca: &Path, body: &Path, max_secs: u32) -> Output {
        Command::new("curl")
            .args([
                "-sS",
                "--fail-with-body",
                "--max-time",
                &max_secs.to_string(),
            ])
            .arg("--cacert")
            .arg(ca)
            .args(["-H", "Content-Type: application/json"])
            .arg("--data-binary")
            .arg(format!("@{}", body.display()))
            .arg("--resolve")
            .arg(format!("localhost:{}:127.0.0.1", self.webhook.port()))
            .arg(format!("https://localhost:{}/inject", self.webhook.port()))
            .output()
            .expect("run curl")
    }
}

/// A CA and a serving certificate for `localhost`, written to a fresh directory.
fn certificates(tag: &str) -> (Ca, PathBuf, PathBuf, PathBuf) {
    let ca = Ca::new(&format!("injector-ca-{tag}"));
    let (cert, key) = ca.leaf("breakwater-injector", &["localhost"], None);
    let dir = temp_file(&format!("injector-{tag}-{}", unique()), "");
    let _ = std::fs::remove_file(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let (ca_file, cert_file, key_file) =
        (dir.join("ca.pem"), dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&ca_file, &ca.pem).expect("ca");
    std::fs::write(&cert_file, cert).expect("cert");
    std::fs::write(&key_file, key).expect("key");
    (ca, ca_file, cert_file, key_file)
}

fn fixture() -> Value {
    let path = repo().join("tests/fixtures/admission/pod-create.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("fixture JSON")
}

/// Applies the review's patch to `pod` with Python's `jsonpatch` (RFC 6902, not
/// breakwater's code), as the API server applies it.
fn apply_with_python(review: &Value, pod: &Value) -> Value {
    let response = &review["response"];
    assert_eq!(response["patchType"], "JSONPatch", "{review}");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().expect("a base64 patch"))
        .expect("base64");
    let n = unique();
    let pod_file = temp_file(&format!("pod-{n}.json"), &pod.to_string());
    let patch_file = temp_file(&format!("patch-{n}.json"), &String::from_utf8_lossy(&patch));
    let script = "import json, sys, jsonpatch\n\
        pod = json.load(open(sys.argv[1]))\n\
        patch = jsonpatch.JsonPatch(json.load(open(sys.argv[2])))\n\
        print(json.dumps(patch.apply(pod)))\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&pod_file)
        .arg(&patch_file)
        .output()
        .expect("python3");
    let _ = std::fs::remove_file(&pod_file);
    let _ = std::fs::remove_file(&patch_file);
    assert!(out.status.success(), "jsonpatch: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("patched pod")
}

fn have_python_jsonpatch() -> bool {
    !skip_without_python(&["jsonpatch"])
}

fn sidecar_args(pod: &Value) -> Vec<String> {
    let sidecar = pod["spec"]["initContainers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "breakwater"))
        .unwrap_or_else(|| panic!("no sidecar in {pod}"));
    sidecar["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn a_pod_review_over_https_gets_a_patch_that_makes_a_valid_injected_pod() {
    if !have_python_jsonpatch() || !have_kubernetes_validate() {
        return;
    }
    let (_ca, ca_file, cert, key) = certificates("patch");
    let injector = Injector::start(&cert, &key, &["--retries=3"]).await;
    wait_for_ready(&injector.admin_url("/ready")).await;

    let review = fixture();
    let answer = injector.post(&ca_file, review.to_string().as_bytes());
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    assert_eq!(response["uid"], review["request"]["uid"]);
    assert_eq!(response["allowed"], true);

    let pod = &review["request"]["object"];
    let injected = apply_with_python(&answer, pod);
    // What the API server would store validates against the Pod schema.
    validate(&[("webhook-pod".into(), injected.to_string())]);

    let args = sidecar_args(&injected);
    for expected in [
        "--retries=3",
        "--timeout=2s",
        "--route=payments:8080,timeout=3s",
        "--route=search,retries=0",
        "--app-addr=127.0.0.1:8080",
    ] {
        assert!(args.iter().any(|a| a == expected), "{expected} in {args:?}");
    }
    assert_eq!(
        injected["metadata"]["labels"]["breakwater.io/version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(injected["metadata"]["labels"]["app"], "web");
    let containers = injected["spec"]["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(containers.len(), 1, "the app alone; the sidecar is native");

    // The same pod through `breakwater inject` with the same flags: the same pod.
    // (The injector's flags first, then the annotations' in the order of their keys.)
    let flags = [
        "--retries=3",
        "--route=payments:8080,timeout=3s",
        "--route=search,retries=0",
        "--timeout=2s",
    ];
    let by_inject = inject_with_binary(pod, &flags);
    assert_eq!(
        by_inject["spec"], injected["spec"],
        "webhook and inject differ"
    );
    assert_eq!(by_inject["metadata"], injected["metadata"]);

    // Sent again (the API server reinvokes webhooks), the injected pod is left alone.
    let mut again = review.clone();
    again["request"]["object"] = injected.clone();
    let answer = injector.post(&ca_file, again.to_string().as_bytes());
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none(), "{answer}");

    let metrics = get(&client(), &injector.admin_url("/metrics")).await.body;
    assert!(
        metrics.contains("breakwater_injector_reviews_total{outcome=\"injected\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("breakwater_injector_reviews_total{outcome=\"skipped\"} 1"),
        "{metrics}"
    );
}

/// `breakwater inject` on a pod (JSON is YAML), the result as JSON.
fn inject_with_binary(pod: &Value, flags: &[&str]) -> Value {
    let mut child = Command::new(binary())
        .arg("inject")
        .args(flags)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("breakwater inject");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(pod.to_string().as_bytes())
            .expect("write pod");
    }
    let out = child.wait_with_output().expect("inject ends");
    assert!(out.status.success(), "inject: {}", text(&out.stderr));
    let docs = breakwater::inject::documents(&text(&out.stdout)).expect("YAML");
    to_json(&docs[0])
}

#[tokio::test]
async fn reviews_that_cannot_be_injected_are_answered_allowed_with_a_warning() {
    let (_ca, ca_file, cert, key) = certificates("bad");
    let injector = Injector::start(&cert, &key, &[]).await;
    wait_for_ready(&injector.admin_url("/ready")).await;

    let mut not_a_pod = fixture();
    not_a_pod["request"]["kind"]["kind"] = json!("Deployment");
    not_a_pod["request"]["resource"]["resource"] = json!("deployments");
    let mut unpatchable = fixture();
    unpatchable["request"]["object"]["spec"]["containers"] = json!("web");
    let mut host = fixture();
    host["request"]["object"]["spec"]["hostNetwork"] = json!(true);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "not JSON",
            b"{\"kind\": \"AdmissionRev".to_vec(),
            "not JSON",
        ),
        (
            "not a review",
            b"{\"hello\": 1}".to_vec(),
            "not an AdmissionReview",
        ),
        (
            "a Deployment",
            not_a_pod.to_string().into_bytes(),
            "only pods",
        ),
        (
            "containers not a list",
            unpatchable.to_string().into_bytes(),
            "not a list",
        ),
        ("hostNetwork", host.to_string().into_bytes(), "hostNetwork"),
        ("9 MiB", vec![b' '; 9 << 20], "over"),
    ];
    for (what, body, warning) in cases {
        let answer = injector.post(&ca_file, &body);
        assert_eq!(answer["kind"], "AdmissionReview", "{what}: {answer}");
        let response = &answer["response"];
        assert_eq!(response["allowed"], true, "{what}: {answer}");
        assert!(response.get("patch").is_none(), "{what}: {answer}");
        let warnings = response["warnings"][0].as_str().unwrap_or_default();
        assert!(warnings.contains(warning), "{what}: {warnings}");
    }

    // An annotation that would make a sidecar that cannot start refuses the pod,
    // naming it: the API server shows the message to whoever created the pod.
    let mut bad = fixture();
    bad["request"]["object"]["metadata"]["annotations"]["breakwater.io/retries"] = json!("lots");
    let answer = injector.post(&ca_file, bad.to_string().as_bytes());
    let response = &answer["response"];
    assert_eq!(response["allowed"], false, "{answer}");
    assert_eq!(response["uid"], bad["request"]["uid"]);
    let message = response["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("breakwater.io/retries") && message.contains("lots"),
        "{message}"
    );

    // Other paths and methods do not take reviews; the webhook still answers after.
    let status = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&ca_file)
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", injector.webhook.port()))
        .arg(format!(
            "https://localhost:{}/inject",
            injector.webhook.port()
        ))
        .output()
        .expect("curl");
    assert_eq!(text(&status.stdout), "405");
    let answer = injector.post(&ca_file, fixture().to_string().as_bytes());
    assert_eq!(answer["response"]["allowed"], true);
    let metrics = get(&client(), &injector.admin_url("/metrics")).await.body;
    assert!(
        metrics.contains("breakwater_injector_reviews_total{outcome=\"invalid\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("breakwater_injector_reviews_total{outcome=\"denied\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn without_its_certificate_the_injector_is_not_ready_and_refuses_at_once() {
    let (_ca, ca_file, cert, key) = certificates("late");
    let (cert_pem, key_pem) = (
        std::fs::read_to_string(&cert).expect("cert"),
        std::fs::read_to_string(&key).expect("key"),
    );
    std::fs::write(&cert, "not a certificate\n").expect("break the cert");
    let injector = Injector::start(&cert, &key, &[]).await;
    let c = client();
    let ready_url = injector.admin_url("/ready");
    let mut answer = None;
    for _ in 0..100 {
        let req = http::Request::get(&ready_url)
            .body(full(""))
            .expect("request");
        if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_millis(500), c.request(req)).await
        {
            answer = Some(crate::support::answer(resp).await);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answer = answer.expect("the admin port answers");
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(answer.body.contains("certificate"), "{}", answer.body);
    assert!(get(&c, &injector.admin_url("/live")).await.status == 200);

    // The webhook port closes at once: the API server falls back to failurePolicy
    // instead of waiting out its timeout.
    let body = temp_file(&format!("review-{}.json", unique()), &fixture().to_string());
    let started = Instant::now();
    let out = injector.curl(&ca_file, &body, 10);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // The certificate arrives (a Secret mounted late): ready, and answering.
    std::fs::write(&key, &key_pem).expect("key");
    std::fs::write(&cert, &cert_pem).expect("cert");
    wait_for_ready(&ready_url).await;
    let out = injector.curl(&ca_file, &body, 10);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Rotated to a certificate of another CA: new connections get the new one.
    let (_other, other_ca, other_cert, other_key) = certificates("rotated");
    std::fs::write(&key, std::fs::read(&other_key).expect("key")).expect("key");
    std::fs::write(&cert, std::fs::read(&other_cert).expect("cert")).expect("cert");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = injector.curl(&other_ca, &body, 10);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never rotated: {}",
            text(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!injector.curl(&ca_file, &body, 10).status.success());
    let _ = std::fs::remove_file(&body);
}

#[test]
fn injector_check_refuses_bad_flags_and_bad_certificates_naming_them() {
    let (_ca, _ca_file, cert, key) = certificates("check");
    let check = |extra: &[&str], cert: &Path| {
        Command::new(binary())
            .arg("injector")
            .arg("--check")
            .arg(format!("--tls-cert={}", cert.display()))
            .arg(format!("--tls-key={}", key.display()))
            .args(extra)
            .output()
            .expect("breakwater injector --check")
    };
    let out = check(&["--retries=2"], &cert);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("--retries=2"),
        "{}",
        text(&out.stdout)
    );

    let out = check(&["--retries=lots"], &cert);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--retries"),
        "{}",
        text(&out.stderr)
    );

    let out = check(&["--inbound-addr=0.0.0.0:1"], &cert);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("set by inject"),
        "{}",
        text(&out.stderr)
    );

    let not_pem = temp_file(&format!("not-pem-{}.crt", unique()), "hello\n");
    let out = check(&[], &not_pem);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--tls-cert") && stderr.contains("not-pem"),
        "{stderr}"
    );
}

/// The chart's injector: its manifests validate, its webhook entry reaches its
/// Service and port, its generated certificate serves the Service's DNS name, and,
/// run with the Deployment's own args, it injects the sidecar the chart's named
/// templates render for the same values (the third of inject, chart and webhook).
#[tokio::test]
async fn the_charts_injector_serves_its_certificate_and_injects_the_charts_sidecar() {
    use crate::kubernetes::{KUBE_VERSION, find, have_helm, helm_template, kind_of, parse, str_at};
    if !have_helm() || !have_kubernetes_validate() || !have_python_jsonpatch() {
        return;
    }
    let set = [
        "injector.enabled=true",
        "resilience.retries=3",
        "resilience.timeout=4s",
        "injector.runFlags={--breaker-consecutive-failures=7}",
    ];
    let out = helm_template(&[], &set, KUBE_VERSION);
    assert!(out.status.success(), "helm template: {}", text(&out.stderr));
    let manifests = text(&out.stdout);
    validate(&[("injector-chart".into(), manifests.clone())]);
    let docs = parse(&manifests);
    let json_docs: Vec<Value> = docs.iter().map(to_json).collect();
    let named = |kind: &str, suffix: &str| -> &Value {
        json_docs
            .iter()
            .find(|d| {
                d["kind"] == kind
                    && d["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| n.ends_with(suffix))
            })
            .unwrap_or_else(|| panic!("no {kind} *{suffix} rendered"))
    };
    let deployment = named("Deployment", "-injector");
    let service = named("Service", "-injector");
    let secret = named("Secret", "-injector-tls");
    let webhook = named("MutatingWebhookConfiguration", "-injector");
    assert!(docs.iter().any(|d| kind_of(d) == "PodDisruptionBudget"));

    let name = service["metadata"]["name"].as_str().expect("name");
    let entries = webhook["webhooks"].as_array().expect("webhooks");
    assert_eq!(entries.len(), 2, "the namespace and the pod opt-in");
    for entry in entries {
        assert_eq!(entry["failurePolicy"], "Ignore");
        assert_eq!(entry["sideEffects"], "None");
        let to = &entry["clientConfig"]["service"];
        assert_eq!(to["name"], name);
        assert_eq!(to["namespace"], "shop");
        assert_eq!(to["path"], "/inject");
        assert_eq!(entry["clientConfig"]["caBundle"], secret["data"]["ca.crt"]);
        let port = service["spec"]["ports"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["port"] == to["port"]))
            .expect("the webhook's port on the Service");
        assert_eq!(port["targetPort"], "webhook");
    }
    // The release's namespace is never injected: the injector would wait on itself.
    let excluded = &entries[0]["namespaceSelector"]["matchExpressions"][1];
    assert!(
        excluded["values"]
            .as_array()
            .is_some_and(|v| v.contains(&json!("shop")))
    );

    // The Secret's certificate, for the name the API server dials.
    let decode = |key: &str| {
        let b64 = secret["data"][key].as_str().expect(key);
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("b64"),
        )
        .expect("PEM text")
    };
    let dir = temp_file(&format!("chart-injector-{}", unique()), "");
    let _ = std::fs::remove_file(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let (ca, cert, key) = (dir.join("ca.crt"), dir.join("tls.crt"), dir.join("tls.key"));
    for (file, field) in [(&ca, "ca.crt"), (&cert, "tls.crt"), (&key, "tls.key")] {
        std::fs::write(file, decode(field)).expect("write");
    }

    // The Deployment's args, with the mounted files and ports moved to this machine.
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let ports = free_ports(2).await;
    let mut args: Vec<String> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    assert_eq!(args.first().map(String::as_str), Some("injector"));
    assert!(
        args.contains(&"--listen-addr=0.0.0.0:8443".to_string()),
        "{args:?}"
    );
    assert_eq!(container["ports"][0]["containerPort"], 8443);
    for arg in &mut args {
        let replaced = match arg.split('=').next().unwrap_or("") {
            "--listen-addr" => format!("--listen-addr={}", ports[0]),
            "--admin-addr" => format!("--admin-addr={}", ports[1]),
            "--tls-cert" => format!("--tls-cert={}", cert.display()),
            "--tls-key" => format!("--tls-key={}", key.display()),
            _ => continue,
        };
        *arg = replaced;
    }
    // Our own flags go before the sidecar's run flags, which end the list.
    args.splice(
        1..1,
        [
            "--log-level=warn".to_string(),
            "--drain-delay=0s".to_string(),
        ],
    );
    let child = Command::new(binary())
        .args(&args)
        .stdout(Stdio::null())
        .spawn()
        .expect("start the chart's injector");
    let injector = Injector {
        child,
        webhook: ports[0],
        admin: ports[1],
    };
    wait_for_ready(&injector.admin_url("/ready")).await;

    let mut review = fixture();
    review["request"]["object"]["metadata"]["annotations"] = json!({});
    let body = temp_file(&format!("review-{}.json", unique()), &review.to_string());
    let host = format!("{name}.shop.svc");
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--max-time", "10", "--cacert"])
        .arg(&ca)
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(format!("@{}", body.display()))
        .arg("--resolve")
        .arg(format!("{host}:{}:127.0.0.1", ports[0].port()))
        .arg(format!("https://{host}:{}/inject", ports[0].port()))
        .output()
        .expect("curl");
    let _ = std::fs::remove_file(&body);
    assert!(out.status.success(), "curl {host}: {}", text(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).expect("a review");
    let injected = apply_with_python(&answer, &review["request"]["object"]);
    let args = sidecar_args(&injected);
    for expected in [
        "--retries=3",
        "--timeout=4s",
        "--breaker-consecutive-failures=7",
    ] {
        assert!(args.iter().any(|a| a == expected), "{expected} in {args:?}");
    }

    // The chart's own pod (the demo, through the named templates), same values.
    let demo = find(&docs, "Deployment");
    let demo = if str_at(demo, &["metadata", "name"]).is_some_and(|n| n.ends_with("-injector")) {
        docs.iter()
            .filter(|d| kind_of(d) == "Deployment")
            .find(|d| !str_at(d, &["metadata", "name"]).is_some_and(|n| n.ends_with("-injector")))
            .expect("the demo Deployment")
    } else {
        demo
    };
    let chart_pod = to_json(demo.at(&["spec", "template", "spec"]).expect("pod spec"));
    let by_name = |pod: &Value, name: &str| -> Value {
        pod["initContainers"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no {name} in {pod}"))
    };
    let mut chart_sidecar = by_name(&chart_pod, "breakwater");
    let mut webhook_sidecar = by_name(&injected["spec"], "breakwater");
    // The flags the injector's runFlags add, which the chart's pod does not have.
    for sidecar in [&mut chart_sidecar, &mut webhook_sidecar] {
        if let Some(args) = sidecar["args"].as_array_mut() {
            args.retain(|a| a != "--breaker-consecutive-failures=7");
        }
    }
    assert_eq!(
        webhook_sidecar, chart_sidecar,
        "the webhook's sidecar is the chart's"
    );
    assert_eq!(
        by_name(&injected["spec"], "breakwater-init"),
        by_name(&chart_pod, "breakwater-init")
    );
}

#[test]
fn the_injector_chart_takes_cert_manager_and_refuses_what_it_cannot_inject() {
    use crate::kubernetes::{KUBE_VERSION, have_helm, helm_template, parse};
    if !have_helm() {
        return;
    }
    let out = helm_template(
        &[],
        &[
            "injector.enabled=true",
            "injector.certManager.enabled=true",
            "demo.enabled=false",
        ],
        KUBE_VERSION,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let docs: Vec<Value> = parse(&text(&out.stdout)).iter().map(to_json).collect();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert!(
        kinds.contains(&"Certificate") && kinds.contains(&"Issuer"),
        "{kinds:?}"
    );
    assert!(
        !kinds.contains(&"Secret"),
        "cert-manager makes the Secret: {kinds:?}"
    );
    let webhook = docs
        .iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .expect("webhook");
    let certificate = docs
        .iter()
        .find(|d| d["kind"] == "Certificate")
        .expect("cert");
    assert_eq!(
        webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!(
            "shop/{}",
            certificate["metadata"]["name"].as_str().unwrap_or("")
        )
    );
    assert!(
        webhook["webhooks"][0]["clientConfig"]
            .get("caBundle")
            .is_none()
    );
    assert_eq!(
        certificate["spec"]["dnsNames"][0],
        format!(
            "{}.shop.svc",
            certificate["metadata"]["name"].as_str().unwrap_or("")
        )
    );

    // cert-manager's API in the cluster is enough.
    let helm = crate::kubernetes::helm().expect("helm");
    let out = Command::new(helm)
        .args(["template", "demo"])
        .arg(crate::kubernetes::chart())
        .args(["--namespace", "shop", "--kube-version", KUBE_VERSION])
        .args(["--api-versions", "cert-manager.io/v1"])
        .args([
            "--set",
            "injector.enabled=true",
            "--set",
            "demo.enabled=false",
        ])
        .output()
        .expect("helm");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("kind: Certificate"));
    let out = helm_template(
        &[],
        &["injector.enabled=true", "demo.enabled=false"],
        KUBE_VERSION,
    );
    assert!(!text(&out.stdout).contains("kind: Certificate"));

    for (set, says) in [
        ("tls.inbound.secretName=certs", "tls.*.secretName"),
        ("policy.inline=defaults: {}", "policy.inline"),
        ("injector.failurePolicy=Sometimes", "failurePolicy"),
    ] {
        let out = helm_template(&[], &["injector.enabled=true", set], KUBE_VERSION);
        assert!(!out.status.success(), "{set} rendered");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(says), "{set}: {stderr}");
    }
}
