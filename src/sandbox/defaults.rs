//! What the API server fills in or refuses while decoding the built-in kinds: shape checks
//! the workload model relies on, and server-set defaults and status.
//!
//! Contract: pure over the object being written.

use serde_json::{Value, json};

use super::meta::{CRD_CLEANUP, field_cause, now, set_meta};
use super::resources::ResourceType;
use super::status::Cause;

/// The few shape checks the built-in workload kinds need before the workload model reads them
/// (kube-apiserver rejects these while decoding).
pub(super) fn builtin_shape(rt: &ResourceType, obj: &Value) -> Option<Cause> {
    if rt.group != "apps" {
        return None;
    }
    let map_of_strings = |p: &str| {
        obj.pointer(p).is_none_or(|v| v.is_null() || v.as_object().is_some_and(|m| m.values().all(Value::is_string)))
    };
    let int = |p: &str| {
        obj.pointer(p).is_none_or(|v| v.is_null() || v.as_i64().is_some_and(|n| (0..=i64::from(i32::MAX)).contains(&n)))
    };
    for (path, field) in [
        ("/spec/selector/matchLabels", "spec.selector.matchLabels"),
        ("/spec/template/metadata/labels", "spec.template.metadata.labels"),
    ] {
        if !map_of_strings(path) {
            return Some(field_cause(field, "Invalid value: must be a map of string keys to string values"));
        }
    }
    if !int("/spec/replicas") {
        return Some(field_cause("spec.replicas", "Invalid value: must be an integer between 0 and 2147483647"));
    }
    if obj.get("spec").is_some_and(|t| !t.is_object()) {
        return Some(field_cause("spec", "Invalid value: must be an object"));
    }
    if obj.pointer("/spec/template").is_some_and(|t| !t.is_object()) {
        return Some(field_cause("spec.template", "Invalid value: must be an object"));
    }
    None
}

/// A Pod spec's container defaults, as kube-apiserver sets them on every write: a port's
/// protocol, a probe's timing and thresholds.
fn default_pod_spec(spec: &mut Value) {
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else { continue };
        for c in containers {
            if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                for port in ports.iter_mut().filter_map(Value::as_object_mut) {
                    port.entry("protocol").or_insert(json!("TCP"));
                }
            }
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
                    p.entry("timeoutSeconds").or_insert(json!(1));
                    p.entry("periodSeconds").or_insert(json!(10));
                    p.entry("successThreshold").or_insert(json!(1));
                    p.entry("failureThreshold").or_insert(json!(3));
                }
            }
        }
    }
}

/// Server-set defaults and status for the kinds that have them.
pub(super) fn defaults(rt: &ResourceType, obj: &mut Value, creating: bool) {
    let template = match (rt.group.as_str(), rt.kind.as_str()) {
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") | ("batch", "Job") => {
            obj.pointer_mut("/spec/template/spec")
        }
        ("", "Pod") => obj.get_mut("spec"),
        _ => None,
    };
    if let Some(spec) = template {
        default_pod_spec(spec);
    }
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet") => {
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                spec.entry("replicas").or_insert(json!(1));
                spec.entry("revisionHistoryLimit").or_insert(json!(10));
                if rt.kind == "Deployment" {
                    spec.entry("progressDeadlineSeconds").or_insert(json!(600));
                    spec.entry("strategy").or_insert(
                        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
                    );
                }
            }
        }
        ("", "Namespace") => {
            if obj.pointer("/metadata/deletionTimestamp").is_none() {
                obj["status"] = json!({"phase": "Active"});
            }
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
        }
        ("", "Pod") if creating => {
            obj["status"] = json!({"phase": "Pending"});
        }
        // stringData is write-only: merged into data (base64), as kube-apiserver does.
        ("", "Secret") => {
            if let Some(Value::Object(plain)) = obj.as_object_mut().and_then(|o| o.remove("stringData")) {
                use base64::Engine;
                let data = obj.as_object_mut().map(|o| o.entry("data").or_insert_with(|| json!({})));
                if let Some(Value::Object(data)) = data {
                    for (k, v) in plain {
                        let text = v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
                        data.insert(k, Value::String(base64::engine::general_purpose::STANDARD.encode(text)));
                    }
                }
            }
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            if creating {
                let mut f = obj.pointer("/metadata/finalizers").and_then(Value::as_array).cloned().unwrap_or_default();
                if !f.contains(&json!(CRD_CLEANUP)) {
                    f.push(json!(CRD_CLEANUP));
                }
                set_meta(obj, "finalizers", Value::Array(f));
            }
            let names = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
            let t = now();
            let cond = |ty: &str, reason: &str, msg: &str| json!({"type": ty, "status": "True", "reason": reason, "message": msg, "lastTransitionTime": t});
            let stored: Vec<Value> = obj
                .pointer("/spec/versions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|v| v.get("storage") == Some(&json!(true)))
                .filter_map(|v| v.get("name").cloned())
                .collect();
            obj["status"] = json!({
                "acceptedNames": names,
                "storedVersions": stored,
                "conditions": [
                    cond("NamesAccepted", "NoConflicts", "no conflicts found"),
                    cond("Established", "InitialNamesAccepted", "the initial names have been accepted"),
                ],
            });
        }
        _ => {}
    }
}
