//! PodDisruptionBudget headroom before a change that restarts Pods.
//!
//! Contract: a change to a Deployment's, StatefulSet's or DaemonSet's pod template restarts
//! its Pods by a rollout that takes up to a known number of them down at once (the
//! workload's update strategy: `maxUnavailable` of a rolling update, every replica for
//! `Recreate`, none for `OnDelete` or a surge-only update). Pods already unavailable go first,
//! so what the rollout may take from the *ready* Pods is that number less the ones already
//! down. Every PodDisruptionBudget of the namespace whose selector matches the pod template's
//! labels must allow that many disruptions now (`status.disruptionsAllowed`, from a status
//! the disruption controller has brought up to date); otherwise [`headroom`] says which
//! budget and why, and deploy waits (a retried step) rather than breach it. Other changes
//! (ConfigMaps, HPAs, replicas alone) restart nothing and need no headroom. Pure: the caller
//! reads the budgets.

use std::collections::BTreeMap;

use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use serde_json::Value;

use crate::api::TargetKind;
use crate::api::playbook::PatchType;

/// Whether applying `patch` to a `kind` changes its pod template (and so restarts Pods).
pub fn restarts_pods(kind: TargetKind, patch_type: PatchType, patch: &Value) -> bool {
    if !matches!(kind, TargetKind::Deployment | TargetKind::StatefulSet | TargetKind::DaemonSet) {
        return false;
    }
    match patch_type {
        PatchType::Json => patch.as_array().is_some_and(|ops| {
            ops.iter().any(|op| {
                op.get("path").and_then(Value::as_str).is_some_and(|p| p == "/spec" || p.starts_with("/spec/template"))
            })
        }),
        _ => patch.pointer("/spec/template").is_some_and(|t| !t.is_null()),
    }
}

/// `v` scaled against `total`: a count, or a percentage rounded as `round_up` says.
fn scaled(v: Option<&IntOrString>, total: i64, round_up: bool, default: i64) -> i64 {
    match v {
        None => default,
        Some(IntOrString::Int(n)) => i64::from(*n),
        Some(IntOrString::String(p)) => {
            let percent = p.trim_end_matches('%').trim().parse::<i64>().unwrap_or(0);
            let num = percent.saturating_mul(total);
            if round_up { (num + 99) / 100 } else { num / 100 }
        }
    }
}

fn int_or_string(v: Option<&Value>) -> Option<IntOrString> {
    v.filter(|v| !v.is_null()).and_then(|v| serde_json::from_value(v.clone()).ok())
}

fn int(v: &Value, pointer: &str) -> Option<i64> {
    v.pointer(pointer).and_then(Value::as_i64)
}

/// How many Pods the rollout of a new pod template takes down at once, and how many are
/// unavailable already — from the live object.
pub fn rollout_disruption(kind: TargetKind, live: &Value) -> (i64, i64) {
    match kind {
        TargetKind::Deployment => {
            let replicas = int(live, "/spec/replicas").unwrap_or(1);
            let unavailable = (replicas - int(live, "/status/availableReplicas").unwrap_or(0)).max(0);
            let strategy = live.pointer("/spec/strategy").cloned().unwrap_or(Value::Null);
            if strategy.get("type").and_then(Value::as_str) == Some("Recreate") {
                return (replicas, unavailable);
            }
            // Defaults 25% each; surge rounds up, unavailable down (the Deployment controller).
            let rolling = strategy.get("rollingUpdate").cloned().unwrap_or(Value::Null);
            let quarter = IntOrString::String("25%".into());
            let surge =
                scaled(Some(&int_or_string(rolling.get("maxSurge")).unwrap_or(quarter.clone())), replicas, true, 0);
            let mut down =
                scaled(Some(&int_or_string(rolling.get("maxUnavailable")).unwrap_or(quarter)), replicas, false, 0);
            if down == 0 && surge == 0 {
                // Both zero cannot make progress; the controller then takes one down.
                down = 1;
            }
            (down.min(replicas), unavailable)
        }
        TargetKind::StatefulSet => {
            let replicas = int(live, "/spec/replicas").unwrap_or(1);
            let unavailable = (replicas - int(live, "/status/availableReplicas").unwrap_or(0)).max(0);
            let strategy = live.pointer("/spec/updateStrategy").cloned().unwrap_or(Value::Null);
            if strategy.get("type").and_then(Value::as_str) == Some("OnDelete") {
                return (0, unavailable);
            }
            let max = int_or_string(strategy.pointer("/rollingUpdate/maxUnavailable"));
            let down = scaled(max.as_ref(), replicas, false, 1).max(1).min(replicas);
            // Without maxUnavailable the controller replaces the highest ordinal first, ready
            // or not: a Pod already down does not spare a ready one.
            (down, if max.is_some() { unavailable } else { 0 })
        }
        TargetKind::DaemonSet => {
            let desired = int(live, "/status/desiredNumberScheduled").unwrap_or(0);
            let unavailable = int(live, "/status/numberUnavailable").unwrap_or(0);
            let strategy = live.pointer("/spec/updateStrategy").cloned().unwrap_or(Value::Null);
            if strategy.get("type").and_then(Value::as_str) == Some("OnDelete") {
                return (0, unavailable);
            }
            let rolling = strategy.get("rollingUpdate").cloned().unwrap_or(Value::Null);
            let surge = scaled(int_or_string(rolling.get("maxSurge")).as_ref(), desired, true, 0);
            let down = scaled(int_or_string(rolling.get("maxUnavailable")).as_ref(), desired, true, 1);
            if down == 0 && surge > 0 { (0, unavailable) } else { (down.max(1).min(desired.max(1)), unavailable) }
        }
        TargetKind::ConfigMap | TargetKind::HorizontalPodAutoscaler | TargetKind::Job | TargetKind::CronJob => (0, 0),
    }
}

/// Whether every budget covering the workload's Pods (by its pod template's labels, or the
/// labels of any of its Pods, which carry more: `pod-template-hash`, the StatefulSet Pod
/// name) allows what its rollout takes down; the refusal names the budget, its numbers and
/// what to do.
pub fn headroom(
    kind: TargetKind,
    live: &Value,
    pods: &[BTreeMap<String, String>],
    budgets: &[PodDisruptionBudget],
) -> Result<(), String> {
    let (down_at_once, unavailable) = rollout_disruption(kind, live);
    let needed = (down_at_once - unavailable).max(0);
    if needed == 0 {
        return Ok(());
    }
    let labels: BTreeMap<String, String> = live
        .pointer("/spec/template/metadata/labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default();
    for pdb in budgets {
        let Some(spec) = pdb.spec.as_ref() else { continue };
        // A budget with no selector selects nothing; an empty one selects every Pod.
        let Some(selector) = spec.selector.clone() else { continue };
        let name = format!("{}/{}", pdb.namespace().unwrap_or_default(), pdb.name_any());
        let selector: Selector = match selector.try_into() {
            Ok(s) => s,
            // A selector we cannot read might cover these Pods: do not guess.
            Err(e) => return Err(format!("PodDisruptionBudget {name} has a selector Reflex cannot read ({e})")),
        };
        if !selector.matches(&labels) && !pods.iter().any(|p| selector.matches(p)) {
            continue;
        }
        let Some(status) = pdb.status.as_ref() else {
            return Err(format!(
                "PodDisruptionBudget {name} has no status yet (is the disruption controller running?)"
            ));
        };
        let generation = pdb.metadata.generation.unwrap_or(0);
        if status.observed_generation.unwrap_or(0) < generation {
            return Err(format!(
                "PodDisruptionBudget {name} was changed and its status is not current yet (observed generation {} of {generation})",
                status.observed_generation.unwrap_or(0)
            ));
        }
        let allowed = i64::from(status.disruptions_allowed.unwrap_or(0));
        if allowed < needed {
            return Err(format!(
                "PodDisruptionBudget {name} allows {allowed} disruption(s) now ({} healthy, {} required) and the rollout takes up to {needed} ready Pod(s) down at once; waiting for headroom",
                status.current_healthy.unwrap_or(0),
                status.desired_healthy.unwrap_or(0)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(replicas: i64, available: i64, strategy: Value) -> Value {
        json!({"spec": {"replicas": replicas, "strategy": strategy,
                "template": {"metadata": {"labels": {"app": "checkout"}}}},
               "status": {"availableReplicas": available}})
    }

    fn pdb(selector: Value, allowed: i32, generation: i64, observed: i64) -> PodDisruptionBudget {
        serde_json::from_value(json!({
            "metadata": {"name": "checkout", "namespace": "shop", "generation": generation},
            "spec": {"selector": selector, "minAvailable": 2},
            "status": {"disruptionsAllowed": allowed, "currentHealthy": 2 + allowed, "desiredHealthy": 2,
                       "expectedPods": 2 + allowed, "observedGeneration": observed}
        }))
        .unwrap()
    }

    fn app() -> Value {
        json!({"matchLabels": {"app": "checkout"}})
    }

    #[test]
    fn only_pod_template_changes_of_workloads_restart_pods() {
        let template = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "x:2"}]}}}});
        assert!(restarts_pods(TargetKind::Deployment, PatchType::Strategic, &template));
        assert!(restarts_pods(TargetKind::StatefulSet, PatchType::Merge, &template));
        assert!(!restarts_pods(TargetKind::Deployment, PatchType::Strategic, &json!({"spec": {"replicas": 4}})));
        assert!(!restarts_pods(TargetKind::ConfigMap, PatchType::Strategic, &json!({"data": {"k": "v"}})));
        let op = json!([{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "x:2"}]);
        assert!(restarts_pods(TargetKind::Deployment, PatchType::Json, &op));
        let scale = json!([{"op": "replace", "path": "/spec/replicas", "value": 3}]);
        assert!(!restarts_pods(TargetKind::Deployment, PatchType::Json, &scale));
    }

    #[test]
    fn the_update_strategy_says_how_many_pods_go_down_at_once() {
        let rolling = |u: Value, s: Value| json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": u, "maxSurge": s}});
        assert_eq!(rollout_disruption(TargetKind::Deployment, &deployment(4, 4, json!({}))).0, 1, "default 25% of 4");
        assert_eq!(
            rollout_disruption(TargetKind::Deployment, &deployment(3, 3, json!({}))).0,
            0,
            "25% of 3 rounds down"
        );
        assert_eq!(
            rollout_disruption(TargetKind::Deployment, &deployment(10, 10, rolling(json!("50%"), json!(0)))).0,
            5
        );
        assert_eq!(rollout_disruption(TargetKind::Deployment, &deployment(4, 4, rolling(json!(0), json!(1)))).0, 0);
        assert_eq!(rollout_disruption(TargetKind::Deployment, &deployment(4, 4, rolling(json!(0), json!(0)))).0, 1);
        assert_eq!(rollout_disruption(TargetKind::Deployment, &deployment(4, 1, json!({"type": "Recreate"}))), (4, 3));
        let sts = json!({"spec": {"replicas": 3, "updateStrategy": {"type": "RollingUpdate"}}, "status": {"availableReplicas": 2}});
        assert_eq!(rollout_disruption(TargetKind::StatefulSet, &sts), (1, 0), "a Pod down spares no ready one");
        let sts = json!({"spec": {"replicas": 4, "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "50%"}}},
            "status": {"availableReplicas": 3}});
        assert_eq!(rollout_disruption(TargetKind::StatefulSet, &sts), (2, 1));
        let on_delete = json!({"spec": {"replicas": 3, "updateStrategy": {"type": "OnDelete"}}, "status": {"availableReplicas": 3}});
        assert_eq!(rollout_disruption(TargetKind::StatefulSet, &on_delete).0, 0);
        let ds = json!({"spec": {}, "status": {"desiredNumberScheduled": 5, "numberUnavailable": 0}});
        assert_eq!(rollout_disruption(TargetKind::DaemonSet, &ds), (1, 0));
        let ds_pct = json!({"spec": {"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "30%"}}},
            "status": {"desiredNumberScheduled": 5, "numberUnavailable": 0}});
        assert_eq!(rollout_disruption(TargetKind::DaemonSet, &ds_pct).0, 2, "30% of 5 rounds up");
        let ds_surge = json!({"spec": {"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}},
            "status": {"desiredNumberScheduled": 5, "numberUnavailable": 0}});
        assert_eq!(rollout_disruption(TargetKind::DaemonSet, &ds_surge).0, 0, "surge only");
    }

    #[test]
    fn a_budget_with_no_headroom_holds_a_rollout_that_takes_ready_pods_down() {
        let live =
            deployment(2, 2, json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}));
        let why = headroom(TargetKind::Deployment, &live, &[], &[pdb(app(), 0, 1, 1)]).unwrap_err();
        assert!(why.contains("PodDisruptionBudget shop/checkout allows 0 disruption(s)"), "{why}");
        assert!(why.contains("up to 1 ready Pod(s)"), "{why}");
        assert_eq!(headroom(TargetKind::Deployment, &live, &[], &[pdb(app(), 1, 1, 1)]), Ok(()));
        // A budget of other Pods, or with no selector, does not apply; an empty selector does.
        assert_eq!(
            headroom(TargetKind::Deployment, &live, &[], &[pdb(json!({"matchLabels": {"app": "cart"}}), 0, 1, 1)]),
            Ok(())
        );
        assert_eq!(headroom(TargetKind::Deployment, &live, &[], &[pdb(Value::Null, 0, 1, 1)]), Ok(()));
        assert!(headroom(TargetKind::Deployment, &live, &[], &[pdb(json!({}), 0, 1, 1)]).is_err());
        // A status older than the budget's spec is not relied on.
        let stale = headroom(TargetKind::Deployment, &live, &[], &[pdb(app(), 1, 2, 1)]).unwrap_err();
        assert!(stale.contains("not current"), "{stale}");
    }

    #[test]
    fn a_budget_selecting_on_labels_only_pods_carry_applies() {
        let live =
            deployment(2, 2, json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}));
        let by_hash = pdb(json!({"matchLabels": {"pod-template-hash": "abc12"}}), 0, 1, 1);
        assert_eq!(headroom(TargetKind::Deployment, &live, &[], std::slice::from_ref(&by_hash)), Ok(()));
        let pod: BTreeMap<String, String> =
            [("app".to_owned(), "checkout".to_owned()), ("pod-template-hash".to_owned(), "abc12".to_owned())].into();
        assert!(headroom(TargetKind::Deployment, &live, &[pod], &[by_hash]).is_err());
    }

    #[test]
    fn pods_already_down_go_first_so_a_fix_for_crashing_pods_is_not_held() {
        // Both Pods crash-loop: the budget allows nothing, but the rollout replaces the
        // unavailable Pods first and takes no ready one down.
        let live =
            deployment(2, 0, json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}));
        assert_eq!(headroom(TargetKind::Deployment, &live, &[], &[pdb(app(), 0, 1, 1)]), Ok(()));
        // A surge-only rollout takes none down.
        let surge =
            deployment(2, 2, json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}));
        assert_eq!(headroom(TargetKind::Deployment, &surge, &[], &[pdb(app(), 0, 1, 1)]), Ok(()));
    }
}
