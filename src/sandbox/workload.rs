//! The workload model: enough of the Deployment and ReplicaSet controllers and the kubelet to
//! make rollouts observable. No scheduler, no containers.
//!
//! Contract: a Deployment's pod template change produces a new ReplicaSet revision
//! (`pod-template-hash`, `deployment.kubernetes.io/revision`; returning to an old template
//! revives its ReplicaSet with a new revision, as `kubectl rollout undo` relies on); old
//! ReplicaSets scale to zero; ReplicaSets create and delete Pods; Pods become Running and Ready
//! after `ready_after`; Deployment and ReplicaSet status converge (observedGeneration,
//! replicas, updatedReplicas, readyReplicas, availableReplicas, conditions); and
//! PodDisruptionBudgets report the Pods they select and the disruptions allowed (the
//! disruption controller); Jobs run one Pod each, which ends as the scenario says
//! ([`super::jobs`]). Writes go through
//! the same API path as clients', under the field manager `kube-controller-manager`, and only
//! when something changed, so the loop settles.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::api::{Api, ListOptions, WriteCtx};
use super::meta::now;
use super::schema::FieldValidation;
use super::ssa::Part;
use super::status::ApiError;
use super::store::{name_of, ns_of};

const MANAGER: &str = "kube-controller-manager";

/// What a scenario says about how Pods behave (the demo's OOM kills), in place of the
/// default "every container starts and becomes ready".
pub trait PodModel: Send + Sync {
    /// The status the kubelet would report for `pod` at `now`, and how long until it next
    /// changes; `None` to use the default behaviour. Must be stable between changes.
    fn status(&self, pod: &Value, now: jiff::Timestamp) -> Option<(Value, Option<Duration>)>;
}

/// How the modelled kubelet behaves.
#[derive(Clone, Default)]
pub struct Kubelet {
    /// How long a new Pod takes to become Ready.
    pub ready_after: Duration,
    /// Scenario behaviour, if any.
    pub model: Option<Arc<dyn PodModel>>,
    /// How Jobs' Pods end (default: each exits 0 after `ready_after`, printing nothing).
    pub jobs: Option<Arc<dyn super::jobs::JobModel>>,
}
const REVISION: &str = "deployment.kubernetes.io/revision";
const HASH: &str = "pod-template-hash";

pub(super) fn ctx(api: &Api, plural: &str, group: &str, ns: &str) -> Option<WriteCtx> {
    ctx_at(api, group, "v1", plural, ns)
}

pub(super) fn ctx_at(api: &Api, group: &str, version: &str, plural: &str, ns: &str) -> Option<WriteCtx> {
    let rt = api.store.registry().find(group, version, plural)?;
    Some(WriteCtx {
        rt,
        namespace: ns.to_owned(),
        manager: MANAGER.into(),
        dry_run: false,
        validation: FieldValidation::Ignore,
        user: None,
    })
}

pub(super) fn list(api: &Api, group: &str, plural: &str, ns: &str) -> Vec<Value> {
    let Some(rt) = api.store.registry().find(group, "v1", plural) else { return Vec::new() };
    api.list(&rt, Some(ns), &ListOptions::default())
        .ok()
        .and_then(|l| l.get("items").and_then(Value::as_array).cloned())
        .unwrap_or_default()
}

pub(super) fn uid(o: &Value) -> &str {
    o.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default()
}

pub(super) fn owned_by<'a>(items: &'a [Value], owner: &str) -> Vec<&'a Value> {
    items
        .iter()
        .filter(|o| {
            o.pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|r| r.iter().any(|r| r.get("uid").and_then(Value::as_str) == Some(owner)))
        })
        .filter(|o| o.pointer("/metadata/deletionTimestamp").is_none())
        .collect()
}

pub(super) fn owner_ref(api_version: &str, kind: &str, owner: &Value) -> Value {
    json!([{"apiVersion": api_version, "kind": kind, "name": name_of(owner), "uid": uid(owner), "controller": true, "blockOwnerDeletion": true}])
}

/// A short stable hash of the pod template, as the label value.
pub fn template_hash(template: &Value) -> String {
    let digest = Sha256::digest(template.to_string().as_bytes());
    digest.iter().take(5).map(|b| format!("{b:02x}")).collect()
}

/// The object at `v`, or an empty one when absent or not an object.
pub(super) fn object(v: Option<&Value>) -> serde_json::Map<String, Value> {
    v.and_then(Value::as_object).cloned().unwrap_or_default()
}

fn revision(o: &Value) -> u64 {
    o.pointer(&format!("/metadata/annotations/{}", REVISION.replace('/', "~1")))
        .and_then(Value::as_str)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

pub(super) fn int(o: &Value, p: &str) -> i64 {
    o.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}

fn is_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|c| {
        c.iter().any(|c| c.get("type") == Some(&json!("Ready")) && c.get("status") == Some(&json!("True")))
    })
}

/// Write `new` as a status update if its status differs from `old`'s.
pub(super) fn put_status(api: &Api, w: &WriteCtx, old: &Value, status: Value) -> Result<(), ApiError> {
    if old.get("status") == Some(&status) {
        return Ok(());
    }
    let mut new = old.clone();
    new["status"] = status;
    api.update(w, name_of(old), new, Part::Status).map(|_| ())
}

/// One pass over a namespace. Returns the earliest time a pod will become ready, if any is
/// waiting, so the caller can come back then.
pub fn reconcile_namespace(api: &Api, ns: &str, kubelet: &Kubelet) -> Result<Option<Duration>, ApiError> {
    let ready_after = kubelet.ready_after;
    let Some(dw) = ctx(api, "deployments", "apps", ns) else { return Ok(None) };
    let Some(rw) = ctx(api, "replicasets", "apps", ns) else { return Ok(None) };
    let Some(pw) = ctx(api, "pods", "", ns) else { return Ok(None) };
    for d in list(api, "apps", "deployments", ns) {
        if d.pointer("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        let template = d.pointer("/spec/template").cloned().unwrap_or(json!({}));
        let hash = template_hash(&template);
        let replicas = d.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
        let all_rs = list(api, "apps", "replicasets", ns);
        let mine = owned_by(&all_rs, uid(&d));
        let max_rev = mine.iter().map(|r| revision(r)).max().unwrap_or(0);
        let current =
            mine.iter().find(|r| r.pointer(&format!("/metadata/labels/{HASH}")).and_then(Value::as_str) == Some(&hash));
        let new_rev = match current {
            Some(rs) if revision(rs) == max_rev => max_rev,
            _ => max_rev + 1,
        };
        let mut labels = object(template.pointer("/metadata/labels"));
        labels.insert(HASH.into(), json!(hash));
        let mut rs_template = object(Some(&template));
        let mut rs_meta = object(rs_template.get("metadata"));
        rs_meta.insert("labels".into(), Value::Object(labels.clone()));
        rs_template.insert("metadata".into(), Value::Object(rs_meta));
        let mut selector = object(d.pointer("/spec/selector"));
        let mut match_labels = object(selector.get("matchLabels"));
        match_labels.insert(HASH.into(), json!(hash));
        selector.insert("matchLabels".into(), Value::Object(match_labels));
        let mut annotations = json!({});
        annotations[REVISION] = json!(new_rev.to_string());
        match current {
            None => {
                let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {
                    "name": format!("{}-{hash}", name_of(&d)), "namespace": ns, "labels": labels,
                    "annotations": annotations, "ownerReferences": owner_ref("apps/v1", "Deployment", &d)},
                    "spec": {"replicas": replicas, "selector": selector, "template": rs_template}});
                match api.create(&rw, rs) {
                    Ok(_) | Err(ApiError { code: 409, .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Some(rs) if int(rs, "/spec/replicas") != replicas || revision(rs) != new_rev => {
                let mut rs = (*rs).clone();
                rs["spec"]["replicas"] = json!(replicas);
                rs["metadata"]["annotations"][REVISION] = json!(new_rev.to_string());
                let name = name_of(&rs).to_owned();
                api.update(&rw, &name, rs, Part::Main)?;
            }
            Some(_) => {}
        }
        for old in mine
            .iter()
            .filter(|r| r.pointer(&format!("/metadata/labels/{HASH}")).and_then(Value::as_str) != Some(&hash))
        {
            if int(old, "/spec/replicas") != 0 {
                let mut o = (*old).clone();
                o["spec"]["replicas"] = json!(0);
                let name = name_of(&o).to_owned();
                api.update(&rw, &name, o, Part::Main)?;
            }
        }
        if revision(&d) != new_rev {
            let mut nd = d.clone();
            nd["metadata"]["annotations"][REVISION] = json!(new_rev.to_string());
            api.update(&dw, name_of(&d), nd, Part::Main)?;
        }
    }
    // ReplicaSets own Pods.
    let all_pods = list(api, "", "pods", ns);
    for rs in list(api, "apps", "replicasets", ns) {
        if rs.pointer("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        let want = int(&rs, "/spec/replicas").max(0) as usize;
        let mut pods = owned_by(&all_pods, uid(&rs));
        pods.sort_by_key(|p| {
            p.pointer("/metadata/creationTimestamp").and_then(Value::as_str).unwrap_or_default().to_owned()
        });
        // Like the ReplicaSet controller's slow-start batches: at most 500 creations a pass;
        // the creations themselves trigger the next pass.
        for i in pods.len()..want.min(pods.len() + 500) {
            let template = rs.pointer("/spec/template").cloned().unwrap_or(json!({}));
            let suffix = template_hash(&json!([uid(&rs), i, now(), uuid::Uuid::new_v4().to_string()]));
            let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": format!("{}-{}", name_of(&rs), &suffix[..5]), "namespace": ns,
                "labels": template.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
                "ownerReferences": owner_ref("apps/v1", "ReplicaSet", &rs)},
                "spec": template.get("spec").cloned().unwrap_or(json!({}))});
            api.create(&pw, pod)?;
        }
        for extra in pods.iter().skip(want).rev() {
            match api.delete(&pw, name_of(extra), &Default::default()) {
                Ok(_) | Err(ApiError { code: 404, .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    // The Job controller, and the kubelet for Jobs' Pods.
    let mut wake: Option<Duration> = super::jobs::reconcile(api, ns, kubelet)?;
    // The kubelet: Pods start and become ready.
    let now_ts = jiff::Timestamp::now();
    for pod in list(api, "", "pods", ns) {
        if pod.pointer("/metadata/deletionTimestamp").is_some() || super::jobs::runs_a_job(&pod) {
            continue;
        }
        if let Some((status, next)) = kubelet.model.as_ref().and_then(|m| m.status(&pod, now_ts)) {
            if let Some(next) = next {
                wake = Some(wake.map_or(next, |w| w.min(next)));
            }
            put_status(api, &pw, &pod, status)?;
            continue;
        }
        if is_ready(&pod) {
            continue;
        }
        let created = pod
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .unwrap_or(now_ts);
        let waited = Duration::from_secs((now_ts.as_second() - created.as_second()).max(0) as u64);
        if waited < ready_after {
            let left = ready_after - waited;
            wake = Some(wake.map_or(left, |w| w.min(left)));
            continue;
        }
        let t = now();
        let containers = pod.pointer("/spec/containers").and_then(Value::as_array).cloned().unwrap_or_default();
        let statuses: Vec<Value> = containers
            .iter()
            .map(|c| json!({"name": c.get("name"), "image": c.get("image"), "ready": true, "started": true, "restartCount": 0, "state": {"running": {"startedAt": t}}}))
            .collect();
        let cond = |ty: &str| json!({"type": ty, "status": "True", "lastTransitionTime": t});
        let status = json!({"phase": "Running", "startTime": t, "podIP": "10.0.0.1",
            "conditions": [cond("PodScheduled"), cond("Initialized"), cond("ContainersReady"), cond("Ready")],
            "containerStatuses": statuses});
        put_status(api, &pw, &pod, status)?;
    }
    // Status roll-up: ReplicaSets, then Deployments.
    let all_pods = list(api, "", "pods", ns);
    for rs in list(api, "apps", "replicasets", ns) {
        let pods = owned_by(&all_pods, uid(&rs));
        let ready = pods.iter().filter(|p| is_ready(p)).count();
        let status = json!({"replicas": pods.len(), "fullyLabeledReplicas": pods.len(), "readyReplicas": ready,
            "availableReplicas": ready, "observedGeneration": int(&rs, "/metadata/generation")});
        put_status(api, &rw, &rs, status)?;
    }
    let all_rs = list(api, "apps", "replicasets", ns);
    for d in list(api, "apps", "deployments", ns) {
        let hash = template_hash(&d.pointer("/spec/template").cloned().unwrap_or(json!({})));
        let mine = owned_by(&all_rs, uid(&d));
        let sum = |p: &str| mine.iter().map(|r| int(r, p)).sum::<i64>();
        let updated = mine
            .iter()
            .filter(|r| r.pointer(&format!("/metadata/labels/{HASH}")).and_then(Value::as_str) == Some(&hash))
            .map(|r| int(r, "/status/replicas"))
            .sum::<i64>();
        let want = int(&d, "/spec/replicas");
        let available = sum("/status/availableReplicas");
        let complete = updated == want && available >= want && sum("/status/replicas") == want;
        let old = d.get("status").cloned().unwrap_or(json!({}));
        // Progress is a change in the updated or available counts; none for
        // progressDeadlineSeconds (default 600) while incomplete: ProgressDeadlineExceeded.
        let progressed = old.get("updatedReplicas").and_then(Value::as_i64) != Some(updated)
            || old.get("availableReplicas").and_then(Value::as_i64) != Some(available)
            || old.get("observedGeneration").and_then(Value::as_i64) != Some(int(&d, "/metadata/generation"));
        let prev_progress = old
            .get("conditions")
            .and_then(Value::as_array)
            .and_then(|c| c.iter().find(|c| c.get("type") == Some(&json!("Progressing"))).cloned());
        let last_progress = prev_progress
            .as_ref()
            .filter(|_| !progressed)
            .and_then(|p| p.get("lastUpdateTime"))
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .unwrap_or_else(jiff::Timestamp::now);
        let deadline = Duration::from_secs(
            u64::try_from(d.pointer("/spec/progressDeadlineSeconds").and_then(Value::as_i64).unwrap_or(600))
                .unwrap_or(600),
        );
        let stuck_for = jiff::Timestamp::now().duration_since(last_progress).unsigned_abs();
        // Once exceeded it stays so until the rollout progresses again.
        let was_exceeded = prev_progress
            .as_ref()
            .is_some_and(|p| p.get("reason").and_then(Value::as_str) == Some("ProgressDeadlineExceeded"));
        let exceeded = !complete && (stuck_for >= deadline || (was_exceeded && !progressed));
        if !complete && !exceeded {
            let left = deadline - stuck_for;
            wake = Some(wake.map_or(left, |w| w.min(left)));
        }
        let progress_reason = if complete {
            "NewReplicaSetAvailable"
        } else if exceeded {
            "ProgressDeadlineExceeded"
        } else {
            "ReplicaSetUpdated"
        };
        let keep_time = |ty: &str, status: &str, reason: &str| {
            let prev = old
                .get("conditions")
                .and_then(Value::as_array)
                .and_then(|c| c.iter().find(|c| c.get("type") == Some(&json!(ty))).cloned());
            let same = prev
                .as_ref()
                .is_some_and(|p| p.get("status") == Some(&json!(status)) && p.get("reason") == Some(&json!(reason)));
            let t = if same {
                prev.as_ref().and_then(|p| p.get("lastTransitionTime").cloned()).unwrap_or(json!(now()))
            } else {
                json!(now())
            };
            // The Progressing condition's lastUpdateTime is the last progress.
            let updated_at = match prev.as_ref().and_then(|p| p.get("lastUpdateTime").cloned()) {
                Some(last) if ty == "Progressing" && !progressed => last,
                _ if ty == "Progressing" => json!(now()),
                _ => t.clone(),
            };
            json!({"type": ty, "status": status, "reason": reason, "lastTransitionTime": t, "lastUpdateTime": updated_at,
            "message": match reason {
                "NewReplicaSetAvailable" => format!("ReplicaSet \"{}-{hash}\" has successfully progressed.", name_of(&d)),
                "ReplicaSetUpdated" => format!("ReplicaSet \"{}-{hash}\" is progressing.", name_of(&d)),
                "MinimumReplicasAvailable" => "Deployment has minimum availability.".to_owned(),
                "ProgressDeadlineExceeded" => format!("ReplicaSet \"{}-{hash}\" has timed out progressing.", name_of(&d)),
                _ => "Deployment does not have minimum availability.".to_owned(),
            }})
        };
        let (avail_status, avail_reason) = if available >= want {
            ("True", "MinimumReplicasAvailable")
        } else {
            ("False", "MinimumReplicasUnavailable")
        };

        let status = json!({
            "observedGeneration": int(&d, "/metadata/generation"),
            "replicas": sum("/status/replicas"),
            "updatedReplicas": updated,
            "readyReplicas": sum("/status/readyReplicas"),
            "availableReplicas": available,
            "unavailableReplicas": (want - available).max(0),
            "conditions": [keep_time("Available", avail_status, avail_reason), keep_time("Progressing", if exceeded { "False" } else { "True" }, progress_reason)],
        });
        put_status(api, &dw, &d, status)?;
    }
    disruption_budgets(api, ns)?;
    autoscalers(api, ns)?;
    Ok(wake)
}

/// The HorizontalPodAutoscaler controller, as far as status goes: it observes each
/// generation and reports its target's replicas (within its bounds) — no scaling.
fn autoscalers(api: &Api, ns: &str) -> Result<(), ApiError> {
    let Some(w) = ctx_at(api, "autoscaling", "v2", "horizontalpodautoscalers", ns) else { return Ok(()) };
    let hpas = api
        .list(&w.rt, Some(ns), &ListOptions::default())
        .ok()
        .and_then(|l| l.get("items").and_then(Value::as_array).cloned())
        .unwrap_or_default();
    if hpas.is_empty() {
        return Ok(());
    }
    let deployments = list(api, "apps", "deployments", ns);
    for hpa in hpas {
        let target = hpa.pointer("/spec/scaleTargetRef/name").and_then(Value::as_str).unwrap_or_default();
        let current = deployments.iter().find(|d| name_of(d) == target).map_or(0, |d| int(d, "/status/replicas"));
        let min = hpa.pointer("/spec/minReplicas").and_then(Value::as_i64).unwrap_or(1);
        let max = int(&hpa, "/spec/maxReplicas").max(min);
        let status = json!({
            "observedGeneration": int(&hpa, "/metadata/generation"),
            "currentReplicas": current,
            "desiredReplicas": current.clamp(min, max),
        });
        put_status(api, &w, &hpa, status)?;
    }
    Ok(())
}

/// `intOrString` scaled against `total`, rounding up (as the disruption controller does).
fn scaled(v: &Value, total: i64) -> i64 {
    match v {
        Value::String(p) => {
            let percent = p.trim_end_matches('%').parse::<i64>().unwrap_or(0);
            (percent * total + 99) / 100
        }
        other => other.as_i64().unwrap_or(0),
    }
}

/// The scale the disruption controller expects of `pods`: the sum of `spec.replicas` of their
/// controllers (a ReplicaSet's owning Deployment when it has one), one for a Pod with none.
fn expected_pods(pods: &[&Value], replicasets: &[Value], deployments: &[Value]) -> i64 {
    let controller_of = |o: &Value| -> Option<String> {
        o.pointer("/metadata/ownerReferences")?
            .as_array()?
            .iter()
            .find(|r| r.get("controller") == Some(&json!(true)))?
            .get("uid")?
            .as_str()
            .map(str::to_owned)
    };
    let mut scales: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
    let mut unowned = 0;
    for pod in pods {
        let Some(rs_uid) = controller_of(pod) else {
            unowned += 1;
            continue;
        };
        let Some(rs) = replicasets.iter().find(|r| uid(r) == rs_uid) else {
            unowned += 1;
            continue;
        };
        let owner = controller_of(rs).and_then(|d| deployments.iter().find(|x| uid(x) == d));
        let (key, scale) = match owner {
            Some(d) => (uid(d).to_owned(), int(d, "/spec/replicas")),
            None => (rs_uid, int(rs, "/spec/replicas")),
        };
        scales.insert(key, scale);
    }
    scales.values().sum::<i64>() + unowned
}

/// The disruption controller: each PodDisruptionBudget's status from the Pods it selects
/// (expected = their controllers' scale; a null selector selects none, an empty one all).
fn disruption_budgets(api: &Api, ns: &str) -> Result<(), ApiError> {
    let Some(bw) = ctx(api, "poddisruptionbudgets", "policy", ns) else { return Ok(()) };
    let budgets = list(api, "policy", "poddisruptionbudgets", ns);
    if budgets.is_empty() {
        return Ok(());
    }
    let pods: Vec<Value> =
        list(api, "", "pods", ns).into_iter().filter(|p| p.pointer("/metadata/deletionTimestamp").is_none()).collect();
    let replicasets = list(api, "apps", "replicasets", ns);
    let deployments = list(api, "apps", "deployments", ns);
    for pdb in budgets {
        let selector = pdb
            .pointer("/spec/selector")
            .filter(|s| !s.is_null())
            .and_then(|s| super::selectors::LabelSelector::from_object(s).ok());
        let selected: Vec<&Value> = match &selector {
            None => Vec::new(),
            Some(sel) => {
                pods.iter().filter(|p| sel.matches(p.pointer("/metadata/labels").unwrap_or(&Value::Null))).collect()
            }
        };
        let expected = expected_pods(&selected, &replicasets, &deployments);
        let healthy = i64::try_from(selected.iter().filter(|p| is_ready(p)).count()).unwrap_or(i64::MAX);
        let desired = match (pdb.pointer("/spec/minAvailable"), pdb.pointer("/spec/maxUnavailable")) {
            (Some(min), _) if !min.is_null() => scaled(min, expected),
            (_, Some(max)) if !max.is_null() => (expected - scaled(max, expected)).max(0),
            _ => 0,
        };
        let allowed = (healthy - desired).max(0);
        let (status, reason) = if allowed > 0 { ("True", "SufficientPods") } else { ("False", "InsufficientPods") };
        let prev = pdb.pointer("/status/conditions/0").cloned();
        let t = match prev {
            Some(p) if p.get("status") == Some(&json!(status)) => p.get("lastTransitionTime").cloned(),
            _ => None,
        }
        .unwrap_or(json!(now()));
        let status = json!({
            "observedGeneration": int(&pdb, "/metadata/generation"),
            "disruptionsAllowed": allowed,
            "currentHealthy": healthy,
            "desiredHealthy": desired,
            "expectedPods": expected,
            "conditions": [{"type": "DisruptionAllowed", "status": status, "reason": reason,
                "message": "", "lastTransitionTime": t, "observedGeneration": int(&pdb, "/metadata/generation")}],
        });
        put_status(api, &bw, &pdb, status)?;
    }
    Ok(())
}

const WATCHED: &[&str] = &[
    "deployments.apps",
    "replicasets.apps",
    "pods",
    "jobs.batch",
    "poddisruptionbudgets.policy",
    "horizontalpodautoscalers.autoscaling",
];

/// Run the model until `stop`: react to changes of Deployments, ReplicaSets and Pods.
pub async fn run(api: Arc<Api>, kubelet: Kubelet, stop: CancellationToken) {
    let mut changes = api.store.subscribe();
    let mut dirty: BTreeSet<String> = BTreeSet::new();
    let mut timer: Option<tokio::time::Instant> = None;
    loop {
        let sleep = async {
            match timer {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = sleep => { timer = None; for ns in list(&api, "", "namespaces", "").iter().map(|n| name_of(n).to_owned()) { dirty.insert(ns); } }
            msg = changes.recv() => match msg {
                Ok(c) if WATCHED.contains(&c.storage.as_str()) => { dirty.insert(ns_of(&c.object).to_owned()); }
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    for ns in list(&api, "", "namespaces", "").iter().map(|n| name_of(n).to_owned()) { dirty.insert(ns); }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
        // Drain what else is queued before working, so one burst is one pass.
        while let Ok(c) = changes.try_recv() {
            if WATCHED.contains(&c.storage.as_str()) {
                dirty.insert(ns_of(&c.object).to_owned());
            }
        }
        for ns in std::mem::take(&mut dirty) {
            match reconcile_namespace(&api, &ns, &kubelet) {
                Ok(Some(wait)) => {
                    let at = tokio::time::Instant::now() + wait;
                    timer = Some(timer.map_or(at, |t| t.min(at)));
                }
                Ok(None) => {}
                // A client raced us (409) or the namespace went away: retry shortly.
                Err(e) => {
                    tracing::debug!(namespace = %ns, error = %e, "workload model pass failed; will retry");
                    let at = tokio::time::Instant::now() + Duration::from_millis(100);
                    timer = Some(timer.map_or(at, |t| t.min(at)));
                }
            }
        }
    }
}
