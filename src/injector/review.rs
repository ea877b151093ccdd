//! One `AdmissionReview` (admission.k8s.io/v1) in, one out: the decision for a pod
//! and the JSON patch that injects it. No I/O here.
//!
//! Every input gets a well-formed review back. Only a pod whose annotations would
//! give a sidecar that cannot start is refused (`allowed: false`, the message naming
//! the annotation): the API server shows that to whoever created the pod, where a
//! warning on a pod made by a ReplicaSet would reach no one, and the pod would crash-
//! loop. Anything else the injector cannot handle (not a pod, not JSON, a pod spec
//! that is not one) is allowed unchanged, with a warning: breakwater never blocks a
//! pod for its own failings, as `failurePolicy: Ignore` promises.

use base64::Engine;
use serde_json::{Value, json};

use super::annotations::{Defaults, PREFIX};
use crate::inject::json::{to_json, to_node};
use crate::inject::pod::{self, INJECT_ANNOTATION, Outcome};

/// What the injector did with a review: the `outcome` label of
/// `breakwater_injector_reviews_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Injected,
    /// Allowed unchanged: opted out, injected already, hostNetwork, not a pod.
    Skipped,
    /// Refused: an annotation that would break the sidecar.
    Denied,
    /// Allowed unchanged, with a warning: not a review, or a pod spec that is not one.
    Invalid,
}

impl Decision {
    pub const ALL: [Decision; 4] = [
        Decision::Injected,
        Decision::Skipped,
        Decision::Denied,
        Decision::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Injected => "injected",
            Decision::Skipped => "skipped",
            Decision::Denied => "denied",
            Decision::Invalid => "invalid",
        }
    }
}

/// The review to send back, and what was decided.
#[derive(Debug)]
pub struct Answer {
    pub review: Value,
    pub decision: Decision,
    /// For the log: the pod, and why, when it was not injected.
    pub pod: String,
    pub why: Option<String>,
}

/// Decides on the review in `body`.
pub fn review(body: &[u8], defaults: &Defaults) -> Answer {
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return invalid(
                "admission.k8s.io/v1",
                "",
                "?",
                format!("the request is not JSON: {e}"),
            );
        }
    };
    let api_version = match parsed.get("apiVersion").and_then(Value::as_str) {
        Some(v @ ("admission.k8s.io/v1" | "admission.k8s.io/v1beta1")) => v.to_string(),
        _ => "admission.k8s.io/v1".to_string(),
    };
    let Some(request) = parsed
        .get("request")
        .filter(|_| parsed.get("kind").and_then(Value::as_str) == Some("AdmissionReview"))
    else {
        return invalid(
            &api_version,
            "",
            "?",
            "the request is not an AdmissionReview with a request".into(),
        );
    };
    let uid = request.get("uid").and_then(Value::as_str).unwrap_or("");
    let text = |path: &[&str]| {
        path.iter()
            .try_fold(request, |v, k| v.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    let namespace = text(&["namespace"]);
    let object = request.get("object");
    let object_name = object
        .and_then(|o| o.get("metadata"))
        .and_then(|m| m.get("name").or_else(|| m.get("generateName")))
        .and_then(Value::as_str)
        .unwrap_or("");
    let pod_name = format!("{namespace}/{object_name}");
    let kind = text(&["kind", "kind"]);
    let resource = text(&["resource", "resource"]);
    if kind != "Pod" || resource != "pods" || !text(&["subResource"]).is_empty() {
        let what = format!("{kind} ({resource})");
        return skipped(
            &api_version,
            uid,
            &pod_name,
            format!("only pods are injected, this is {what}"),
            true,
        );
    }
    if text(&["operation"]) != "CREATE" {
        return skipped(
            &api_version,
            uid,
            &pod_name,
            "pods are injected when they are created".into(),
            false,
        );
    }
    let Some(object @ Value::Object(_)) = object else {
        return invalid(
            &api_version,
            uid,
            &pod_name,
            "the review holds no pod object".into(),
        );
    };
    decide_pod(&api_version, uid, &pod_name, object, defaults)
}

fn decide_pod(
    api_version: &str,
    uid: &str,
    pod_name: &str,
    object: &Value,
    defaults: &Defaults,
) -> Answer {
    let meta = |field: &str| -> Vec<(&str, &str)> {
        match object.get("metadata").and_then(|m| m.get(field)) {
            Some(Value::Object(map)) => map
                .iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.as_str(), v)))
                .collect(),
            _ => Vec::new(),
        }
    };
    let annotations = meta("annotations");
    let labels = meta("labels");
    let opted_out = annotations
        .iter()
        .chain(&labels)
        .any(|(k, v)| *k == INJECT_ANNOTATION && *v == "disabled");
    if opted_out {
        return skipped(
            api_version,
            uid,
            pod_name,
            format!("{INJECT_ANNOTATION}: disabled"),
            false,
        );
    }
    let mut node = to_node(object);
    if pod::is_injected(&node) {
        return skipped(
            api_version,
            uid,
            pod_name,
            "breakwater is in it already".into(),
            false,
        );
    }
    let plan = match defaults.plan_for(
        annotations
            .iter()
            .copied()
            .filter(|(k, _)| k.starts_with(PREFIX)),
    ) {
        Ok(plan) => plan,
        Err(e) => return denied(api_version, uid, pod_name, e.to_string()),
    };
    match pod::inject(&mut node, &plan) {
        Ok(Outcome::Injected) => {}
        Ok(Outcome::Skipped(why)) => return skipped(api_version, uid, pod_name, why, true),
        Err(e) => {
            return invalid(
                api_version,
                uid,
                pod_name,
                format!("the pod cannot take breakwater: {e}"),
            );
        }
    }
    let patch = json_patch::diff(object, &to_json(&node));
    let patch = match serde_json::to_vec(&patch) {
        Ok(bytes) => base64::engine::general_purpose::STANDARD.encode(bytes),
        Err(e) => {
            return invalid(
                api_version,
                uid,
                pod_name,
                format!("the patch cannot be written: {e}"),
            );
        }
    };
    let response = json!({
        "uid": uid,
        "allowed": true,
        "patchType": "JSONPatch",
        "patch": patch,
    });
    Answer {
        review: wrap(api_version, response),
        decision: Decision::Injected,
        pod: pod_name.to_string(),
        why: None,
    }
}

/// The answer to a request whose review could not be read (too big, too slow).
pub fn unreadable(why: String) -> Answer {
    invalid("admission.k8s.io/v1", "", "?", why)
}

fn wrap(api_version: &str, response: Value) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "response": response,
    })
}

/// A warning as the API client shows it: `Warning: breakwater: ...`.
fn warning(why: &str) -> String {
    format!("breakwater: not injected: {why}")
}

fn skipped(api_version: &str, uid: &str, pod: &str, why: String, warn: bool) -> Answer {
    let mut response = json!({"uid": uid, "allowed": true});
    if warn {
        response["warnings"] = json!([warning(&why)]);
    }
    Answer {
        review: wrap(api_version, response),
        decision: Decision::Skipped,
        pod: pod.to_string(),
        why: Some(why),
    }
}

fn invalid(api_version: &str, uid: &str, pod: &str, why: String) -> Answer {
    let response = json!({"uid": uid, "allowed": true, "warnings": [warning(&why)]});
    Answer {
        review: wrap(api_version, response),
        decision: Decision::Invalid,
        pod: pod.to_string(),
        why: Some(why),
    }
}

fn denied(api_version: &str, uid: &str, pod: &str, why: String) -> Answer {
    let message = format!("breakwater: {why}");
    let response = json!({
        "uid": uid,
        "allowed": false,
        "status": {"code": 400, "reason": "BadRequest", "message": message},
    });
    Answer {
        review: wrap(api_version, response),
        decision: Decision::Denied,
        pod: pod.to_string(),
        why: Some(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn defaults() -> Defaults {
        match Cli::try_parse_from(["breakwater", "inject", "--retries=2"])
            .expect("flags")
            .command
        {
            Command::Inject(args) => Defaults::new(args.sidecar).expect("defaults"),
            other => panic!("{other:?}"),
        }
    }

    fn pod_review(pod: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop",
                "operation": "CREATE",
                "object": pod,
            }
        }))
        .expect("json")
    }

    fn web(annotations: Value) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"generateName": "web-", "annotations": annotations},
            "spec": {"containers": [{"name": "web", "image": "web:1"}]}
        })
    }

    fn patched(answer: &Answer, pod: &Value) -> Value {
        let b64 = answer.review["response"]["patch"]
            .as_str()
            .expect("a patch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64");
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("a JSON patch");
        let mut pod = pod.clone();
        json_patch::patch(&mut pod, &patch).expect("applies");
        pod
    }

    #[test]
    fn a_pod_gets_a_patch_that_injects_it_once() {
        let pod = web(json!({}));
        let answer = review(&pod_review(pod.clone()), &defaults());
        assert_eq!(answer.decision, Decision::Injected, "{answer:?}");
        let response = &answer.review["response"];
        assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(response["allowed"], true);
        assert_eq!(response["patchType"], "JSONPatch");
        let injected = patched(&answer, &pod);
        let sidecar = &injected["spec"]["initContainers"][1];
        assert_eq!(sidecar["name"], "breakwater");
        assert!(
            sidecar["args"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == "--retries=2"))
        );
        assert_eq!(
            injected["metadata"]["labels"]["breakwater.io/version"],
            env!("CARGO_PKG_VERSION")
        );
        // The API server may call again (reinvocation): nothing more to do.
        let again = review(&pod_review(injected), &defaults());
        assert_eq!(again.decision, Decision::Skipped);
        assert!(again.review["response"].get("patch").is_none());
    }

    #[test]
    fn what_cannot_be_injected_is_allowed_with_a_warning() {
        for body in [
            b"{not json".to_vec(),
            b"[]".to_vec(),
            br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#.to_vec(),
        ] {
            let answer = review(&body, &defaults());
            assert_eq!(answer.decision, Decision::Invalid, "{answer:?}");
            assert_eq!(answer.review["response"]["allowed"], true);
            assert!(answer.review["response"]["warnings"][0].is_string());
        }
        let answer = review(
            &pod_review(json!({"metadata": {}, "spec": {"containers": "web"}})),
            &defaults(),
        );
        assert_eq!(answer.decision, Decision::Invalid, "{answer:?}");
        let host =
            json!({"metadata": {}, "spec": {"hostNetwork": true, "containers": [{"name": "a"}]}});
        let answer = review(&pod_review(host), &defaults());
        assert_eq!(answer.decision, Decision::Skipped);
        let warning = answer.review["response"]["warnings"][0]
            .as_str()
            .unwrap_or("");
        assert!(warning.contains("hostNetwork"), "{warning}");
    }

    #[test]
    fn a_bad_annotation_denies_the_pod_naming_it() {
        let pod = web(json!({"breakwater.io/retries": "lots"}));
        let answer = review(&pod_review(pod), &defaults());
        assert_eq!(answer.decision, Decision::Denied);
        let response = &answer.review["response"];
        assert_eq!(response["allowed"], false);
        assert_eq!(response["status"]["code"], 400);
        let message = response["status"]["message"].as_str().unwrap_or("");
        assert!(message.contains("breakwater.io/retries"), "{message}");
    }

    #[test]
    fn disabled_pods_and_other_kinds_are_left_alone() {
        let pod = web(json!({"breakwater.io/inject": "disabled"}));
        let answer = review(&pod_review(pod), &defaults());
        assert_eq!(answer.decision, Decision::Skipped);
        assert!(answer.review["response"].get("warnings").is_none());

        let mut body: Value = serde_json::from_slice(&pod_review(web(json!({})))).expect("json");
        body["request"]["kind"]["kind"] = json!("Secret");
        body["request"]["resource"]["resource"] = json!("secrets");
        let answer = review(&serde_json::to_vec(&body).expect("json"), &defaults());
        assert_eq!(answer.decision, Decision::Skipped);
        assert_eq!(answer.review["response"]["allowed"], true);
    }
}
