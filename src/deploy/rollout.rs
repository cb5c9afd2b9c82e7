//! Has the applied change rolled out? The pure judgement of one look at the workload.
//!
//! Contract: [`progress`] reads the live object as its controller reports it. A Deployment
//! has rolled out when its status observes the generation the change produced and every
//! replica is updated, ready and available with no old one left; a StatefulSet when it
//! observes the generation and its update revision is current on every replica (for
//! `OnDelete`, once observed: nothing rolls until Pods are deleted); a DaemonSet when every
//! scheduled node runs an updated, available Pod; a HorizontalPodAutoscaler when its status
//! observes the generation; a ConfigMap at once (nothing rolls). It has *stalled* when the
//! Deployment says ProgressDeadlineExceeded, or when `timeout` has passed since the apply.
//! While progressing it is looked at again after [`RECHECK`].

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::Value;

use crate::api::TargetKind;
use crate::api::remediation::{RolloutState, RolloutStatus};

/// How soon a rollout in progress is looked at again.
pub const RECHECK: Duration = Duration::from_secs(2);

fn int(v: &Value, pointer: &str) -> Option<i64> {
    v.pointer(pointer).and_then(Value::as_i64)
}

fn condition<'a>(v: &'a Value, kind: &str) -> Option<&'a Value> {
    v.pointer("/status/conditions")?.as_array()?.iter().find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
}

/// Whether the workload's controller has seen the generation the change produced.
fn observed(live: &Value) -> Result<(), String> {
    let generation = int(live, "/metadata/generation").unwrap_or(0);
    let seen = int(live, "/status/observedGeneration").unwrap_or(0);
    if seen < generation {
        return Err(format!("its controller has not observed generation {generation} yet (observed {seen})"));
    }
    Ok(())
}

/// Ok when rolled out; Err(progress so far) while not; a stall reason first.
fn rolled_out(kind: TargetKind, live: &Value) -> (Result<String, String>, Option<String>) {
    let stall = condition(live, "Progressing")
        .filter(|c| c.get("reason").and_then(Value::as_str) == Some("ProgressDeadlineExceeded"))
        .map(|c| {
            format!(
                "ProgressDeadlineExceeded: {}",
                c.get("message").and_then(Value::as_str).unwrap_or("the rollout made no progress in time")
            )
        });
    if let Err(e) = observed(live) {
        return (Err(e), stall);
    }
    let status = |p: &str| int(live, &format!("/status/{p}")).unwrap_or(0);
    let outcome = match kind {
        TargetKind::Deployment => {
            let want = int(live, "/spec/replicas").unwrap_or(1);
            let (updated, ready, available, total) =
                (status("updatedReplicas"), status("readyReplicas"), status("availableReplicas"), status("replicas"));
            let summary = format!("{updated} of {want} updated, {ready} ready, {available} available, {total} in all");
            if updated >= want && available >= want && ready >= want && total == want {
                Ok(summary)
            } else {
                Err(summary)
            }
        }
        TargetKind::StatefulSet => {
            let want = int(live, "/spec/replicas").unwrap_or(1);
            let on_delete = live.pointer("/spec/updateStrategy/type").and_then(Value::as_str) == Some("OnDelete");
            let current = live.pointer("/status/currentRevision");
            let update = live.pointer("/status/updateRevision");
            let (updated, ready) = (status("updatedReplicas"), status("readyReplicas"));
            let summary = format!("{updated} of {want} updated, {ready} ready");
            if on_delete || (current.is_some() && current == update && updated >= want && ready >= want) {
                Ok(summary)
            } else {
                Err(summary)
            }
        }
        TargetKind::DaemonSet => {
            let want = status("desiredNumberScheduled");
            let (updated, available) = (status("updatedNumberScheduled"), status("numberAvailable"));
            let summary = format!("{updated} of {want} nodes updated, {available} available");
            if updated >= want && available >= want && status("numberUnavailable") == 0 {
                Ok(summary)
            } else {
                Err(summary)
            }
        }
        TargetKind::HorizontalPodAutoscaler => Ok("the autoscaler observes the change".to_owned()),
        TargetKind::ConfigMap => Ok("a ConfigMap rolls nothing out".to_owned()),
    };
    (outcome, stall)
}

/// One look at the rollout of a change applied at `applied`, at `now`.
pub fn progress(
    kind: TargetKind,
    live: &Value,
    applied: Timestamp,
    timeout: Duration,
    now: Timestamp,
) -> RolloutStatus {
    let waited = now.duration_since(applied).unsigned_abs();
    let secs = |d: Duration| format!("{}s", d.as_secs());
    let (outcome, stall) = if kind == TargetKind::ConfigMap {
        (Ok("a ConfigMap rolls nothing out".to_owned()), None)
    } else {
        rolled_out(kind, live)
    };
    let (state, message) = match (outcome, stall) {
        (Ok(summary), _) => (RolloutState::Complete, format!("rolled out in {}: {summary}", secs(waited))),
        (Err(summary), Some(stall)) => (RolloutState::Stalled, format!("{stall} ({summary})")),
        (Err(summary), None) if waited >= timeout => (
            RolloutState::Stalled,
            format!("not rolled out within the policy's rollout timeout {}: {summary}", secs(timeout)),
        ),
        (Err(summary), None) => (RolloutState::Progressing, format!("rolling out for {}: {summary}", secs(waited))),
    };
    RolloutStatus {
        state,
        message,
        completed_at: (state == RolloutState::Complete).then_some(Time(now)),
        next_check_at: (state == RolloutState::Progressing).then(|| Time(now.checked_add(RECHECK).unwrap_or(now))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn deployment(generation: i64, observed: i64, status: Value) -> Value {
        let mut s = status;
        s["observedGeneration"] = json!(observed);
        json!({"metadata": {"generation": generation}, "spec": {"replicas": 3}, "status": s})
    }

    fn state(kind: TargetKind, live: &Value, waited: i64) -> RolloutState {
        progress(kind, live, at(0), Duration::from_secs(60), at(waited)).state
    }

    #[test]
    fn a_deployment_rolls_out_when_every_replica_is_updated_ready_and_available() {
        let done = json!({"replicas": 3, "updatedReplicas": 3, "readyReplicas": 3, "availableReplicas": 3});
        assert_eq!(state(TargetKind::Deployment, &deployment(2, 2, done.clone()), 5), RolloutState::Complete);
        assert_eq!(
            state(TargetKind::Deployment, &deployment(2, 1, done), 5),
            RolloutState::Progressing,
            "not observed yet"
        );
        let old_left = json!({"replicas": 4, "updatedReplicas": 3, "readyReplicas": 4, "availableReplicas": 4});
        assert_eq!(state(TargetKind::Deployment, &deployment(2, 2, old_left), 5), RolloutState::Progressing);
        let not_ready = json!({"replicas": 3, "updatedReplicas": 3, "readyReplicas": 2, "availableReplicas": 2});
        let s = progress(
            TargetKind::Deployment,
            &deployment(2, 2, not_ready.clone()),
            at(0),
            Duration::from_secs(60),
            at(5),
        );
        assert_eq!(s.state, RolloutState::Progressing);
        assert!(s.message.contains("3 of 3 updated, 2 ready, 2 available"), "{}", s.message);
        assert_eq!(s.next_check_at, Some(Time(at(5).checked_add(RECHECK).unwrap())));
        assert_eq!(
            state(TargetKind::Deployment, &deployment(2, 2, not_ready), 60),
            RolloutState::Stalled,
            "the policy's timeout"
        );
    }

    #[test]
    fn progress_deadline_exceeded_is_a_stall_at_once() {
        let mut stuck = json!({"replicas": 3, "updatedReplicas": 1, "readyReplicas": 2, "availableReplicas": 2,
            "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                            "message": "ReplicaSet \"checkout-abc\" has timed out progressing."}]});
        let s =
            progress(TargetKind::Deployment, &deployment(2, 2, stuck.clone()), at(0), Duration::from_secs(600), at(3));
        assert_eq!(s.state, RolloutState::Stalled);
        assert!(
            s.message.starts_with("ProgressDeadlineExceeded: ReplicaSet \"checkout-abc\" has timed out"),
            "{}",
            s.message
        );
        stuck["conditions"][0]["reason"] = json!("ReplicaSetUpdated");
        assert_eq!(state(TargetKind::Deployment, &deployment(2, 2, stuck), 3), RolloutState::Progressing);
    }

    #[test]
    fn statefulsets_daemonsets_autoscalers_and_configmaps_by_their_own_fields() {
        let sts = |current: &str, updated: i64| {
            json!({"metadata": {"generation": 4}, "spec": {"replicas": 2},
                   "status": {"observedGeneration": 4, "currentRevision": current, "updateRevision": "web-2", "updatedReplicas": updated, "readyReplicas": 2}})
        };
        assert_eq!(state(TargetKind::StatefulSet, &sts("web-2", 2), 1), RolloutState::Complete);
        assert_eq!(state(TargetKind::StatefulSet, &sts("web-1", 1), 1), RolloutState::Progressing);
        let on_delete = json!({"metadata": {"generation": 4}, "spec": {"replicas": 2, "updateStrategy": {"type": "OnDelete"}},
                               "status": {"observedGeneration": 4, "currentRevision": "web-1", "updateRevision": "web-2"}});
        assert_eq!(state(TargetKind::StatefulSet, &on_delete, 1), RolloutState::Complete);
        let ds = |updated: i64, unavailable: i64| {
            json!({"metadata": {"generation": 2}, "status": {"observedGeneration": 2, "desiredNumberScheduled": 3,
                   "updatedNumberScheduled": updated, "numberAvailable": 3 - unavailable, "numberUnavailable": unavailable}})
        };
        assert_eq!(state(TargetKind::DaemonSet, &ds(3, 0), 1), RolloutState::Complete);
        assert_eq!(state(TargetKind::DaemonSet, &ds(3, 1), 1), RolloutState::Progressing);
        let hpa = |observed: i64| json!({"metadata": {"generation": 3}, "status": {"observedGeneration": observed}});
        assert_eq!(state(TargetKind::HorizontalPodAutoscaler, &hpa(3), 1), RolloutState::Complete);
        assert_eq!(state(TargetKind::HorizontalPodAutoscaler, &hpa(2), 1), RolloutState::Progressing);
        assert_eq!(state(TargetKind::ConfigMap, &json!({"metadata": {}}), 0), RolloutState::Complete);
    }
}
