//! The `diagnose` skill: a read-only look at a workload, as the caller.
//!
//! Contract: [`investigate`] reads the target, the Pods its selector selects (at most 100) and
//! the Warning Events about them (by field selector) with the caller's own client (RBAC decides what it may
//! see; a read it may not make is a finding that says so, the target itself a refusal), and
//! [`findings_of`] — pure — turns them into a bounded [`Diagnosis`]: replicas not ready,
//! conditions that are not well, restarts, waiting and last-terminated reasons (OOMKilled
//! with the memory limit), an HPA at its maximum, Warning Events. It writes nothing.

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, DynamicObject, ListParams};
use serde_json::Value;

use crate::api::remediation::{Diagnosis, Finding, TargetRef};

/// Most Pods and Events reported on.
const MAX_PODS: usize = 10;
const MAX_EVENTS: usize = 8;

/// Reads `target` in `namespace` as `client`'s identity and diagnoses it.
///
/// # Errors
/// The target cannot be read (missing, or the caller may not get it).
pub async fn investigate(client: &kube::Client, namespace: &str, target: &TargetRef) -> Result<Diagnosis, kube::Error> {
    let resource = crate::cluster::api_resource(target.kind);
    let object = Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource).get(&target.name).await?;
    let object = serde_json::to_value(object).unwrap_or(Value::Null);
    let mut notes = Vec::new();
    let pods = match pods_of(client, namespace, &object).await {
        Ok(pods) => pods,
        Err(e) => {
            notes.push(Finding { source: "pods".into(), detail: format!("not readable as the caller: {e}") });
            Vec::new()
        }
    };
    // The Events about the target and the Pods reported on, each by a field selector.
    let mut events = Vec::new();
    let names =
        std::iter::once(target.name.clone()).chain(pods.iter().take(MAX_PODS).filter_map(|p| p.metadata.name.clone()));
    for name in names {
        let lp = ListParams::default().fields(&format!("involvedObject.name={name}")).limit(50);
        match Api::<Event>::namespaced(client.clone(), namespace).list(&lp).await {
            Ok(list) => events.extend(list.items),
            Err(e) => {
                notes.push(Finding { source: "events".into(), detail: format!("not readable as the caller: {e}") });
                break;
            }
        }
    }
    let mut diagnosis = findings_of(target, &object, &pods, &events);
    diagnosis.findings.extend(notes);
    Ok(diagnosis)
}

/// The Pods the workload's `spec.selector` selects, at most [`MAX_LISTED_PODS`].
async fn pods_of(client: &kube::Client, namespace: &str, workload: &Value) -> Result<Vec<Pod>, String> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    let Some(selector) = workload.pointer("/spec/selector") else { return Ok(Vec::new()) };
    let selector: LabelSelector = serde_json::from_value(selector.clone()).map_err(|e| e.to_string())?;
    let selector: kube::core::Selector =
        selector.try_into().map_err(|e: kube::core::ParseExpressionError| e.to_string())?;
    let lp = ListParams::default().labels_from(&selector).limit(MAX_LISTED_PODS);
    Api::<Pod>::namespaced(client.clone(), namespace).list(&lp).await.map(|l| l.items).map_err(|e| e.to_string())
}

/// Most Pods read.
const MAX_LISTED_PODS: u32 = 100;

fn finding(source: &str, detail: String) -> Finding {
    Finding { source: source.to_owned(), detail }
}

/// What the target, its Pods and the Events say. Pure.
pub fn findings_of(target: &TargetRef, object: &Value, pods: &[Pod], events: &[Event]) -> Diagnosis {
    let what = format!("{} {}", target.kind.as_str(), target.name);
    let mut findings = Vec::new();
    let status = object.get("status").cloned().unwrap_or(Value::Null);
    let int = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_i64);
    if let Some(want) = int(object, "/spec/replicas") {
        let ready = int(&status, "/readyReplicas").unwrap_or(0);
        if ready < want {
            findings.push(finding(&what, format!("{ready} of {want} replicas ready")));
        }
    }
    if let (Some(max), Some(current)) = (int(object, "/spec/maxReplicas"), int(&status, "/currentReplicas"))
        && current >= max
    {
        findings.push(finding(&what, format!("at maxReplicas ({current} of {max})")));
    }
    for c in status.get("conditions").and_then(Value::as_array).into_iter().flatten() {
        let (kind, state) = (c["type"].as_str().unwrap_or_default(), c["status"].as_str().unwrap_or_default());
        let bad = match kind {
            "Failed" | "ReplicaFailure" | "ScalingLimited" => state == "True",
            "Available" | "Progressing" | "Complete" | "AbleToScale" | "ScalingActive" => state == "False",
            _ => false,
        };
        if bad {
            findings.push(finding(
                &what,
                format!(
                    "{kind}={state} ({}: {})",
                    c["reason"].as_str().unwrap_or_default(),
                    c["message"].as_str().unwrap_or_default()
                ),
            ));
        }
    }
    let mut restarts = 0;
    for pod in pods.iter().take(MAX_PODS) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let limits: std::collections::BTreeMap<String, String> = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .filter_map(|c| {
                let memory = c.resources.as_ref()?.limits.as_ref()?.get("memory")?;
                Some((c.name.clone(), memory.0.clone()))
            })
            .collect();
        for cs in pod.status.iter().flat_map(|s| s.container_statuses.iter().flatten()) {
            restarts += cs.restart_count;
            let mut parts = Vec::new();
            if cs.restart_count > 0 {
                parts.push(format!("{} restarts", cs.restart_count));
            }
            if let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.clone()) {
                parts.push(format!("waiting: {w}"));
            }
            if let Some(t) = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
                let reason = t.reason.clone().unwrap_or_default();
                let limit = match (reason.as_str(), limits.get(&cs.name)) {
                    ("OOMKilled", Some(l)) => format!(", memory limit {l}"),
                    _ => String::new(),
                };
                parts.push(format!("last terminated: {reason} (exit {}){limit}", t.exit_code));
            }
            if !parts.is_empty() {
                findings.push(finding(&format!("Pod {name}"), format!("container {}: {}", cs.name, parts.join(", "))));
            }
        }
    }
    let pod_names: Vec<String> = pods.iter().filter_map(|p| p.metadata.name.clone()).collect();
    let mut warnings: Vec<&Event> = events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter(|e| {
            let about = e.involved_object.name.clone().unwrap_or_default();
            about == target.name || pod_names.contains(&about)
        })
        .collect();
    warnings.sort_by_key(|e| std::cmp::Reverse(e.last_timestamp.as_ref().map(|t| t.0)));
    for e in warnings.iter().take(MAX_EVENTS) {
        findings.push(finding(
            &format!("Event on {}", e.involved_object.name.clone().unwrap_or_default()),
            format!(
                "{}: {} (x{})",
                e.reason.clone().unwrap_or_default(),
                e.message.clone().unwrap_or_default().chars().take(300).collect::<String>(),
                e.count.unwrap_or(1)
            ),
        ));
    }
    findings.truncate(32);
    let summary = if findings.is_empty() {
        format!("{what}: nothing looks wrong ({} Pods, {restarts} restarts)", pods.len())
    } else {
        format!("{what}: {} findings across {} Pods ({restarts} restarts)", findings.len(), pods.len())
    };
    Diagnosis { summary, findings }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TargetKind;
    use serde_json::json;

    #[test]
    fn an_oom_killed_crash_loop_is_reported_with_its_limit_and_events() {
        let target = TargetRef { api_version: "apps/v1".into(), kind: TargetKind::Deployment, name: "checkout".into() };
        let object = json!({"spec": {"replicas": 2}, "status": {"readyReplicas": 1,
            "conditions": [{"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable", "message": "1 of 2"}]}});
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "checkout-abc"},
            "spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "128Mi"}}}]},
            "status": {"containerStatuses": [{"name": "app", "image": "x", "imageID": "", "ready": false, "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}})).unwrap();
        let event: Event = serde_json::from_value(json!({"metadata": {"name": "e1"}, "type": "Warning",
            "reason": "BackOff", "message": "Back-off restarting failed container", "count": 7,
            "involvedObject": {"kind": "Pod", "name": "checkout-abc"}}))
        .unwrap();
        let other: Event = serde_json::from_value(json!({"metadata": {"name": "e2"}, "type": "Warning",
            "reason": "BackOff", "involvedObject": {"kind": "Pod", "name": "someone-else"}}))
        .unwrap();
        let d = findings_of(&target, &object, &[pod], &[event, other]);
        let details: Vec<&str> = d.findings.iter().map(|f| f.detail.as_str()).collect();
        assert_eq!(
            details,
            [
                "1 of 2 replicas ready",
                "Available=False (MinimumReplicasUnavailable: 1 of 2)",
                "container app: 4 restarts, waiting: CrashLoopBackOff, last terminated: OOMKilled (exit 137), memory limit 128Mi",
                "BackOff: Back-off restarting failed container (x7)",
            ]
        );
        assert_eq!(d.summary, "Deployment checkout: 4 findings across 1 Pods (4 restarts)");
    }
}
