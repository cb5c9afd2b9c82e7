//! Has the applied change rolled out? The pure judgement of one look at the workload.
//!
//! Contract: [`progress`] reads the live object as its controller reports it. A Deployment
//! has rolled out when its status observes the generation the change produced and every
//! replica is updated, ready and available with no old one left; a StatefulSet when every
//! replica at or above its partition is updated and all are ready (`OnDelete`: only once
//! its Pods were deleted and replaced — until then the change has reached no Pod); a
//! DaemonSet when every scheduled node runs an updated, available Pod; a
//! HorizontalPodAutoscaler when the replicas it wants are within its new bounds and its
//! target runs them; a ConfigMap at once — nothing rolls by itself. On top of the target's
//! own rollout come what the playbook says to wait for ([`Waited`]): workloads that must have
//! rolled out too (a ConfigMap's readers, an autoscaler's target), if asked with every Pod
//! started after the change (configuration read only at start), and a settle time from the
//! apply (the kubelet refreshing mounted ConfigMap files). It has *stalled* when a Deployment
//! — the target or one waited for — reports ProgressDeadlineExceeded for this change, or when
//! `timeout` has passed since the apply. While progressing it is looked at again after
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
        // Jobs are never changed (diagnosed only): nothing of theirs rolls out.
        TargetKind::HorizontalPodAutoscaler | TargetKind::ConfigMap | TargetKind::Job | TargetKind::CronJob => {
            Ok(String::new())
        }
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

/// A workload the playbook says the change waits for, as read now.
#[derive(Clone, Debug, PartialEq)]
pub struct Waited {
    /// Deployment, StatefulSet or DaemonSet.
    pub kind: TargetKind,
    /// Its name.
    pub name: String,
    /// The workload; `None` when there is no such object.
    pub live: Option<Value>,
    /// The Pods it selects, when every one must have started after the change.
    pub pods: Option<Vec<Value>>,
}

/// When the change was applied and how long its rollout may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// When the change was applied.
    pub applied: Timestamp,
    /// The policy's rollout timeout.
    pub timeout: Duration,
    /// The playbook's least time from the apply.
    pub settle: Duration,
}

fn created(pod: &Value) -> Option<Timestamp> {
    pod.pointer("/metadata/creationTimestamp")?.as_str()?.parse().ok()
}

fn is_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|cs| {
        cs.iter().any(|c| {
            c.get("type").and_then(Value::as_str) == Some("Ready")
                && c.get("status").and_then(Value::as_str) == Some("True")
        })
    })
}

/// Every Pod the workload runs started after the change and `want` of them are ready. Pods
/// on their way out (being deleted, or finished) are not counted either way.
fn restarted(workload: &Value, kind: TargetKind, pods: &[Value], applied: Timestamp) -> Result<String, String> {
    let want = match kind {
        TargetKind::DaemonSet => int(workload, "/status/desiredNumberScheduled").unwrap_or(0),
        _ => int(workload, "/spec/replicas").unwrap_or(1),
    };
    // The API server stamps creation to the second: a Pod started in the second of the apply
    // (a reloader reacts within milliseconds) counts as started after it.
    let since = Timestamp::from_second(applied.as_second()).unwrap_or(applied);
    let running: Vec<&Value> = pods
        .iter()
        .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
        .filter(|p| !matches!(p.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed")))
        .collect();
    let older = running.iter().filter(|p| created(p).is_none_or(|t| t < since)).count();
    let fresh = running.iter().filter(|p| created(p).is_some_and(|t| t >= since) && is_ready(p)).count();
    let summary = format!("{fresh} of {want} Pods started since the change and ready, {older} older still running");
    if older == 0 && i64::try_from(fresh).unwrap_or(i64::MAX) >= want { Ok(summary) } else { Err(summary) }
}

/// One workload waited for: rolled out by its own fields, and restarted when asked.
fn waited_for(w: &Waited, applied: Timestamp) -> (Result<String, String>, Option<String>) {
    let what = format!("{} {}", w.kind, w.name);
    let Some(live) = &w.live else {
        return (Err(format!("{what}: no such object")), None);
    };
    let (outcome, stall) = rolled_out(w.kind, live, applied);
    let outcome = match (outcome, &w.pods) {
        (Ok(summary), Some(pods)) => match restarted(live, w.kind, pods, applied) {
            Ok(r) => Ok(format!("{summary}; {r}")),
            Err(r) => Err(format!("{summary}; {r}")),
        },
        (outcome, _) => outcome,
    };
    let label = |s: String| format!("{what}: {s}");
    (outcome.map(label).map_err(label), stall.map(|s| format!("{what}: {s}")))
}

/// One look at the rollout of a change applied at `window.applied`, at `now`: the target's
/// own and every workload waited for.
pub fn progress(kind: TargetKind, live: &Value, waits: &[Waited], window: Window, now: Timestamp) -> RolloutStatus {
    let Window { applied, timeout, settle } = window;
    // An apply recorded ahead of this clock has waited for nothing yet.
    let waited = if now > applied { now.duration_since(applied).unsigned_abs() } else { Duration::ZERO };
    let secs = |d: Duration| format!("{}s", d.as_secs());
    let mut looks = vec![match kind {
        // Pods read a ConfigMap as mounted files (updated in place) or at start: nothing rolls
        // out by itself; the playbook says what to wait for, and verification judges the effect.
        TargetKind::HorizontalPodAutoscaler => (autoscaled(live), None),
        TargetKind::ConfigMap => (Ok("a ConfigMap rolls nothing out by itself".to_owned()), None),
        _ => rolled_out(kind, live, applied),
    }];
    looks.extend(waits.iter().map(|w| waited_for(w, applied)));
    if waited < settle {
        looks.push((Err(format!("settling for {} of {}", secs(waited), secs(settle))), None));
    }
    // A stall counts only where that rollout is not done.
    let stall = looks.iter().find_map(|(outcome, stall)| stall.clone().filter(|_| outcome.is_err()));
    let (done, pending): (Vec<_>, Vec<_>) = looks.into_iter().map(|(outcome, _)| outcome).partition(Result::is_ok);
    let join = |parts: Vec<Result<String, String>>| {
        parts.into_iter().map(|p| p.unwrap_or_else(|e| e)).filter(|p| !p.is_empty()).collect::<Vec<_>>().join("; ")
    };
    let outcome = if pending.is_empty() { Ok(join(done)) } else { Err(join(pending)) };
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

    fn window(timeout: u64) -> Window {
        Window { applied: at(0), timeout: Duration::from_secs(timeout), settle: Duration::ZERO }
    }

    fn state(kind: TargetKind, live: &Value, waited: i64) -> RolloutState {
        progress(kind, live, &[], window(60), at(waited)).state
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
        let s = progress(TargetKind::Deployment, &deployment(2, 2, not_ready.clone()), &[], window(60), at(5));
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
        let s = progress(TargetKind::Deployment, &stuck(2, 2), &[], window(600), at(3));
        assert_eq!(s.state, RolloutState::Stalled);
        assert!(
            s.message.starts_with("ProgressDeadlineExceeded: ReplicaSet \"checkout-abc\" has timed out"),
            "{}",
            s.message
        );
        // Reported before the change (kept through a rollback to an existing revision): not ours.
        let old = progress(TargetKind::Deployment, &stuck(-60, 2), &[], window(600), at(3));
        assert_eq!(old.state, RolloutState::Progressing);
        // The controller has not observed the change yet: the condition is about the old spec.
        let unseen = progress(TargetKind::Deployment, &stuck(2, 1), &[], window(600), at(3));
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
        let s = progress(TargetKind::StatefulSet, &on_delete, &[], window(60), at(1));
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

    fn pod(created: i64, ready: bool) -> Value {
        json!({"metadata": {"creationTimestamp": at(created).to_string()},
               "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
    }

    fn reader(pods: Option<Vec<Value>>) -> Waited {
        let done = json!({"replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2});
        let mut live = deployment(5, 5, done);
        live["spec"]["replicas"] = json!(2);
        Waited { kind: TargetKind::Deployment, name: "web".into(), live: Some(live), pods }
    }

    fn config_map(waits: &[Waited], settle: u64, waited: i64) -> RolloutStatus {
        let window = Window { settle: Duration::from_secs(settle), ..window(60) };
        progress(TargetKind::ConfigMap, &json!({"metadata": {}}), waits, window, at(waited))
    }

    #[test]
    fn a_configmap_change_waits_for_its_readers_to_restart_when_the_playbook_says_so() {
        // Rolled out by its own fields is enough when no restart is asked for.
        assert_eq!(config_map(&[reader(None)], 0, 1).state, RolloutState::Complete);
        // Configuration read at start: the Pods from before the change still run it.
        let before = config_map(&[reader(Some(vec![pod(-300, true), pod(-300, true)]))], 0, 5);
        assert_eq!(before.state, RolloutState::Progressing);
        assert!(
            before.message.contains("Deployment web: 2 of 2 updated")
                && before.message.contains("0 of 2 Pods started since the change and ready, 2 older still running"),
            "{}",
            before.message
        );
        // Half restarted; then all restarted but one not ready; then done.
        let half = reader(Some(vec![pod(-300, true), pod(4, true)]));
        assert_eq!(config_map(&[half], 0, 5).state, RolloutState::Progressing);
        let unready = reader(Some(vec![pod(3, true), pod(4, false)]));
        assert_eq!(config_map(&[unready], 0, 5).state, RolloutState::Progressing);
        // Terminating and finished Pods are on their way out, not counted as running the old config.
        let mut leaving = pod(-300, true);
        leaving["metadata"]["deletionTimestamp"] = json!(at(4).to_string());
        let mut evicted = pod(-300, false);
        evicted["status"]["phase"] = json!("Failed");
        let restarted = reader(Some(vec![pod(3, true), pod(4, true), leaving, evicted]));
        let done = config_map(std::slice::from_ref(&restarted), 0, 5);
        assert_eq!(done.state, RolloutState::Complete, "{}", done.message);
        assert!(done.message.contains("2 of 2 Pods started since the change"), "{}", done.message);
        // Never restarted: stalled at the policy's timeout, naming what it waited for.
        let never = config_map(&[reader(Some(vec![pod(-300, true), pod(-300, true)]))], 0, 60);
        assert_eq!(never.state, RolloutState::Stalled);
        assert!(
            never.message.contains("rollout timeout 60s") && never.message.contains("Deployment web:"),
            "{}",
            never.message
        );
        // A reader that does not exist is waited for, and named.
        let missing = Waited { live: None, ..reader(None) };
        let m = config_map(&[missing], 0, 5);
        assert_eq!(m.state, RolloutState::Progressing);
        assert!(m.message.contains("Deployment web: no such object"), "{}", m.message);
        // Every wait must hold: one done and one not is not done.
        assert_eq!(
            config_map(&[restarted, reader(Some(vec![pod(-300, true)]))], 0, 5).state,
            RolloutState::Progressing
        );
    }

    #[test]
    fn a_pod_stamped_in_the_second_of_the_apply_counts_as_started_after_it() {
        let applied = at(0).checked_add(Duration::from_millis(700)).unwrap();
        let waits = |created: i64| [reader(Some(vec![pod(created, true), pod(created, true)]))];
        let look = |created: i64| {
            let window = Window { applied, ..window(60) };
            progress(TargetKind::ConfigMap, &json!({}), &waits(created), window, at(5)).state
        };
        assert_eq!(look(0), RolloutState::Complete, "restarted within milliseconds of the apply");
        assert_eq!(look(-1), RolloutState::Progressing, "started the second before");
        // An apply stamped ahead of this clock has waited for nothing: not past any timeout.
        let ahead = Window { applied: at(10), ..window(3) };
        assert_eq!(
            progress(TargetKind::ConfigMap, &json!({}), &waits(-1), ahead, at(0)).state,
            RolloutState::Progressing
        );
    }

    #[test]
    fn a_settle_time_holds_the_rollout_until_it_has_passed() {
        let s = config_map(&[], 90, 30);
        assert_eq!(s.state, RolloutState::Progressing);
        assert!(s.message.contains("settling for 30s of 90s"), "{}", s.message);
        assert_eq!(config_map(&[], 90, 90).state, RolloutState::Complete);
    }

    #[test]
    fn a_waited_for_deployment_that_exceeds_its_progress_deadline_stalls_the_change() {
        let mut stuck = reader(None);
        stuck.live = Some(deployment(
            5,
            5,
            json!({"replicas": 2, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1,
                   "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                   "lastUpdateTime": at(2).to_string(), "message": "timed out"}]}),
        ));
        let s = config_map(&[stuck], 0, 3);
        assert_eq!(s.state, RolloutState::Stalled);
        assert!(s.message.starts_with("Deployment web: ProgressDeadlineExceeded: timed out"), "{}", s.message);
    }
}
