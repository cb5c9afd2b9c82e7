//! Has the applied change rolled out? The pure judgement of one look at the workload.
//!
//! Contract: [`progress`] reads the live object as its controller reports it. A Deployment
//! has rolled out when its status observes the generation the change produced and every
//! replica is updated, ready and available with no old one left; a StatefulSet when every
//! replica at or above its partition is updated and all are ready (`OnDelete`: only once
//! its Pods were deleted and replaced — until then the change has reached no Pod); a
//! DaemonSet when every scheduled node runs an updated, available Pod; a
//! HorizontalPodAutoscaler when the replicas it wants are within its new bounds and its
//! target runs them; a ConfigMap at once (nothing rolls; verification judges the effect).
//! It has *stalled* when the Deployment reports ProgressDeadlineExceeded for this change, or
//! when `timeout` has passed since the apply. While progressing it is looked at again after
//! [`RECHECK`].

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

/// Ok when rolled out; Err(progress so far) while not; and a stall reason — only from a
/// ProgressDeadlineExceeded the controller reported for this change (the generation
/// observed, the condition updated since the apply; an older one, kept through a rollback
/// to an existing revision or a scale, says nothing about this change).
fn rolled_out(kind: TargetKind, live: &Value, applied: Timestamp) -> (Result<String, String>, Option<String>) {
    if let Err(e) = observed(live) {
        return (Err(e), None);
    }
    let since = applied.checked_sub(jiff::SignedDuration::from_secs(1)).unwrap_or(applied);
    let stall = condition(live, "Progressing")
        .filter(|c| c.get("reason").and_then(Value::as_str) == Some("ProgressDeadlineExceeded"))
        .filter(|c| {
            c.get("lastUpdateTime")
                .and_then(Value::as_str)
                .and_then(|t| t.parse::<Timestamp>().ok())
                .is_some_and(|t| t >= since)
        })
        .map(|c| {
            format!(
                "ProgressDeadlineExceeded: {}",
                c.get("message").and_then(Value::as_str).unwrap_or("the rollout made no progress in time")
            )
        });
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
            // A partitioned rollout updates only the ordinals at or above the partition.
            let partition = int(live, "/spec/updateStrategy/rollingUpdate/partition").unwrap_or(0).clamp(0, want);
            let (updated, ready) = (status("updatedReplicas"), status("readyReplicas"));
            let summary = if on_delete {
                format!(
                    "{updated} of {want} Pods replaced (updateStrategy OnDelete: the change reaches a Pod only when it is deleted)"
                )
            } else {
                format!("{updated} of {} updated, {ready} of {want} ready", want - partition)
            };
            if updated >= want - partition && ready >= want { Ok(summary) } else { Err(summary) }
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
        TargetKind::HorizontalPodAutoscaler | TargetKind::ConfigMap => Ok(String::new()),
    };
    (outcome, stall)
}

/// An autoscaler has taken its new bounds in: the replicas it wants are within them and its
/// target runs that many (its controller writes no observedGeneration to go by).
fn autoscaled(live: &Value) -> Result<String, String> {
    let min = int(live, "/spec/minReplicas").unwrap_or(1);
    let max = int(live, "/spec/maxReplicas").unwrap_or(i64::MAX);
    let (Some(current), Some(desired)) = (int(live, "/status/currentReplicas"), int(live, "/status/desiredReplicas"))
    else {
        return Err("the autoscaler reports no replicas yet".to_owned());
    };
    let summary = format!("wants {desired} replicas within {min}..{max}, runs {current}");
    if (min..=max).contains(&desired) && current == desired { Ok(summary) } else { Err(summary) }
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
    let (outcome, stall) = match kind {
        // Pods read a ConfigMap as mounted files (updated in place) or at start: nothing rolls
        // out, and verification judges the effect.
        TargetKind::HorizontalPodAutoscaler => (autoscaled(live), None),
        TargetKind::ConfigMap => (Ok("a ConfigMap rolls nothing out".to_owned()), None),
        _ => rolled_out(kind, live, applied),
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
    fn progress_deadline_exceeded_for_this_change_is_a_stall_and_an_older_one_is_not() {
        let stuck = |updated_at: i64, observed: i64| {
            deployment(
                2,
                observed,
                json!({"replicas": 3, "updatedReplicas": 1, "readyReplicas": 2, "availableReplicas": 2,
                "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                "lastUpdateTime": at(updated_at).to_string(),
                                "message": "ReplicaSet \"checkout-abc\" has timed out progressing."}]}),
            )
        };
        let s = progress(TargetKind::Deployment, &stuck(2, 2), at(0), Duration::from_secs(600), at(3));
        assert_eq!(s.state, RolloutState::Stalled);
        assert!(
            s.message.starts_with("ProgressDeadlineExceeded: ReplicaSet \"checkout-abc\" has timed out"),
            "{}",
            s.message
        );
        // Reported before the change (kept through a rollback to an existing revision): not ours.
        let old = progress(TargetKind::Deployment, &stuck(-60, 2), at(0), Duration::from_secs(600), at(3));
        assert_eq!(old.state, RolloutState::Progressing);
        // The controller has not observed the change yet: the condition is about the old spec.
        let unseen = progress(TargetKind::Deployment, &stuck(2, 1), at(0), Duration::from_secs(600), at(3));
        assert_eq!(unseen.state, RolloutState::Progressing);
    }

    #[test]
    fn statefulsets_daemonsets_autoscalers_and_configmaps_by_their_own_fields() {
        let sts = |updated: i64| {
            json!({"metadata": {"generation": 4}, "spec": {"replicas": 2},
                   "status": {"observedGeneration": 4, "updatedReplicas": updated, "readyReplicas": 2}})
        };
        assert_eq!(state(TargetKind::StatefulSet, &sts(2), 1), RolloutState::Complete);
        assert_eq!(state(TargetKind::StatefulSet, &sts(1), 1), RolloutState::Progressing);
        let on_delete = json!({"metadata": {"generation": 4}, "spec": {"replicas": 2, "updateStrategy": {"type": "OnDelete"}},
                               "status": {"observedGeneration": 4, "updatedReplicas": 0, "readyReplicas": 2}});
        let s = progress(TargetKind::StatefulSet, &on_delete, at(0), Duration::from_secs(60), at(1));
        assert_eq!(s.state, RolloutState::Progressing, "no Pod runs the change yet");
        assert!(s.message.contains("OnDelete"), "{}", s.message);
        let partitioned = json!({"metadata": {"generation": 4},
            "spec": {"replicas": 4, "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}},
            "status": {"observedGeneration": 4, "updatedReplicas": 2, "readyReplicas": 4}});
        assert_eq!(state(TargetKind::StatefulSet, &partitioned, 1), RolloutState::Complete, "ordinals 2 and 3");
        let ds = |updated: i64, unavailable: i64| {
            json!({"metadata": {"generation": 2}, "status": {"observedGeneration": 2, "desiredNumberScheduled": 3,
                   "updatedNumberScheduled": updated, "numberAvailable": 3 - unavailable, "numberUnavailable": unavailable}})
        };
        assert_eq!(state(TargetKind::DaemonSet, &ds(3, 0), 1), RolloutState::Complete);
        assert_eq!(state(TargetKind::DaemonSet, &ds(3, 1), 1), RolloutState::Progressing);
        // The HPA controller writes no observedGeneration: done when what it wants is within
        // the new bounds and its target runs that many.
        let hpa = |desired: i64, current: i64| {
            json!({"metadata": {"generation": 3}, "spec": {"minReplicas": 2, "maxReplicas": 8},
                   "status": {"desiredReplicas": desired, "currentReplicas": current}})
        };
        assert_eq!(state(TargetKind::HorizontalPodAutoscaler, &hpa(6, 6), 0), RolloutState::Complete);
        assert_eq!(state(TargetKind::HorizontalPodAutoscaler, &hpa(6, 4), 0), RolloutState::Progressing, "scaling up");
        assert_eq!(
            state(TargetKind::HorizontalPodAutoscaler, &hpa(10, 10), 0),
            RolloutState::Progressing,
            "not yet within the bounds"
        );
        assert_eq!(state(TargetKind::HorizontalPodAutoscaler, &json!({"spec": {}}), 0), RolloutState::Progressing);
        assert_eq!(state(TargetKind::ConfigMap, &json!({"metadata": {}}), 0), RolloutState::Complete);
    }
}
