//! Targets from what an alert carries, for policies that name kinds instead of a name
//! template (`target.kinds`): the labels kube-state-metrics and the kubernetes-mixin alerts use.
//!
//! Contract: a workload label (`deployment`, `statefulset`, `daemonset`) or an HPA label
//! (`horizontalpodautoscaler`) of a kind the policy acts on names the target directly, tried in
//! that order; a `pod` label is followed through its controllers (the owner reference with
//! `controller: true`): ReplicaSet → Deployment, StatefulSet, DaemonSet, Job → CronJob, each
//! read through a [`Reader`] (the operator's is an MCP read as the namespace's reader
//! identity). An owner reference is only a claim: it is followed only to the group its kind is
//! served at (`apps/v1`, `batch/v1`), and the owner read must carry the uid it names. A chain
//! that ends at a kind the policy does not act on, a Pod or owner that does not exist or is not
//! the one named, or an alert that names nothing is an [`Unresolved`] with the reason —
//! recorded by the caller (an Event on the policy, a metric), never retried forever. Every
//! name read from a label or an owner reference must be a valid object name. At most
//! [`MAX_HOPS`] reads per alert.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use serde_json::Value;

use crate::api::TargetKind;
use crate::api::template::is_dns_subdomain;

/// Most objects read for one alert.
pub const MAX_HOPS: usize = 4;

/// Reads one object (kind as the API spells it) in a namespace; `None` when it does not exist.
pub trait Reader: Send + Sync {
    /// Reads `kind` `name` in `namespace`.
    fn read<'a>(
        &'a self,
        namespace: &'a str,
        kind: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Value>, String>>;
}

/// Why no target was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unresolved {
    /// A short machine reason (`NoTargetLabel`, `KindNotActedOn`, `NotFound`, `NoController`,
    /// `OwnerMismatch`, `ReadFailed`, `InvalidName`, `TooMany`).
    pub reason: &'static str,
    /// What a person should know.
    pub message: String,
}

fn unresolved(reason: &'static str, message: impl Into<String>) -> Unresolved {
    Unresolved { reason, message: message.into() }
}

/// The labels that name a target directly, in the order they are tried.
const DIRECT: [(&str, TargetKind); 4] = [
    ("deployment", TargetKind::Deployment),
    ("statefulset", TargetKind::StatefulSet),
    ("daemonset", TargetKind::DaemonSet),
    ("horizontalpodautoscaler", TargetKind::HorizontalPodAutoscaler),
];

/// Every label a target is resolved from (what a resolution depends on).
pub const NAMING_LABELS: [&str; 6] =
    ["deployment", "statefulset", "daemonset", "horizontalpodautoscaler", "pod", "job_name"];

/// The kind `kind` as a target kind, if Reflex changes it.
fn target_kind(kind: &str) -> Option<TargetKind> {
    match kind {
        "Deployment" => Some(TargetKind::Deployment),
        "StatefulSet" => Some(TargetKind::StatefulSet),
        "DaemonSet" => Some(TargetKind::DaemonSet),
        "HorizontalPodAutoscaler" => Some(TargetKind::HorizontalPodAutoscaler),
        "Job" => Some(TargetKind::Job),
        "CronJob" => Some(TargetKind::CronJob),
        _ => None,
    }
}

/// The API group and version the controllers followed are served at.
fn served_at(kind: &str) -> Option<&'static str> {
    match kind {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" => Some("apps/v1"),
        "Job" | "CronJob" => Some("batch/v1"),
        _ => None,
    }
}

/// An owner reference with `controller: true`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Controller {
    /// `apps/v1`, `batch/v1`, …
    pub api_version: String,
    /// Its kind.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its uid, which the owner read must carry.
    pub uid: String,
}

/// The controller of `object` (its owner reference with `controller: true`).
pub fn controller_of(object: &Value) -> Option<Controller> {
    let text = |r: &Value, k: &str| r.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    object.pointer("/metadata/ownerReferences")?.as_array()?.iter().find_map(|r| {
        (r.get("controller").and_then(Value::as_bool) == Some(true)).then(|| Controller {
            api_version: text(r, "apiVersion"),
            kind: text(r, "kind"),
            name: text(r, "name"),
            uid: text(r, "uid"),
        })
    })
}

fn kinds_text(kinds: &[TargetKind]) -> String {
    kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(" or ")
}

/// The target `labels` name for a policy acting on `kinds`, reading through `reader` in
/// `namespace` when the alert names a Pod.
pub async fn resolve(
    reader: &dyn Reader,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    kinds: &[TargetKind],
) -> Result<(TargetKind, String), Unresolved> {
    for (label, kind) in DIRECT {
        if let Some(name) = labels.get(label).filter(|n| !n.is_empty())
            && kinds.contains(&kind)
        {
            if !is_dns_subdomain(name) {
                return Err(unresolved("InvalidName", format!("label {label}={name:?} is not an object name")));
            }
            return Ok((kind, name.clone()));
        }
    }
    // A Pod is followed through its controllers; so is a Job (to its CronJob), when the policy
    // acts on what owns it.
    let job = labels.get("job_name").filter(|j| !j.is_empty());
    let acts_on_jobs = kinds.iter().any(|k| k.diagnosed_only());
    let start = match (labels.get("pod").filter(|p| !p.is_empty()), job) {
        (Some(pod), _) => ("Pod", "pod", pod),
        (None, Some(job)) if acts_on_jobs => ("Job", "job_name", job),
        (None, _) => {
            let named: Vec<String> =
                DIRECT.iter().filter_map(|(l, _)| labels.get(*l).map(|v| format!("{l}={v}"))).collect();
            return Err(match (named.is_empty(), job) {
                (true, Some(job)) => unresolved(
                    "KindNotActedOn",
                    format!("the alert names Job {job}, and the policy acts on {}", kinds_text(kinds)),
                ),
                (true, None) => unresolved(
                    "NoTargetLabel",
                    "the alert names no pod, job_name, deployment, statefulset, daemonset or horizontalpodautoscaler label",
                ),
                (false, _) => unresolved(
                    "KindNotActedOn",
                    format!("the alert names {}, and the policy acts on {}", named.join(", "), kinds_text(kinds)),
                ),
            });
        }
    };
    let (start_kind, label, start_name) = start;
    if !is_dns_subdomain(start_name) {
        return Err(unresolved("InvalidName", format!("label {label}={start_name:?} is not an object name")));
    }
    let (mut kind, mut name) = (start_kind.to_owned(), start_name.clone());
    let mut chain = vec![format!("{start_kind} {start_name}")];
    let mut expected_uid: Option<String> = None;
    for _ in 0..MAX_HOPS {
        let object = reader
            .read(namespace, &kind, &name)
            .await
            .map_err(|e| unresolved("ReadFailed", format!("reading {kind} {namespace}/{name}: {e}")))?
            .ok_or_else(|| unresolved("NotFound", format!("{kind} {namespace}/{name} does not exist (any more)")))?;
        // An owner reference is only a claim (anyone who may create a Pod can write one): the
        // owner read must be the very object it names.
        if let Some(uid) = &expected_uid
            && object.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid.as_str())
        {
            return Err(unresolved(
                "OwnerMismatch",
                format!("{} claims a {kind} {name} that is not the one in the cluster (uid)", chain.join(" → ")),
            ));
        }
        if let Some(target) = target_kind(&kind).filter(|k| kinds.contains(k)) {
            return Ok((target, name));
        }
        let Some(owner) = controller_of(&object) else {
            return Err(unresolved(
                "NoController",
                format!("{} has no controller; nothing to change but the {kind} itself", chain.join(" → ")),
            ));
        };
        if !is_dns_subdomain(&owner.name) {
            return Err(unresolved("InvalidName", format!("{kind} {name}'s controller is named {:?}", owner.name)));
        }
        chain.push(format!("{} {}", owner.kind, owner.name));
        let served = served_at(&owner.kind).is_some_and(|v| v == owner.api_version);
        let wanted = target_kind(&owner.kind).is_some_and(|k| kinds.contains(&k));
        if !served || !(wanted || matches!(owner.kind.as_str(), "ReplicaSet" | "Job")) {
            break;
        }
        kind = owner.kind;
        name = owner.name;
        expected_uid = Some(owner.uid);
    }
    Err(unresolved(
        "KindNotActedOn",
        format!("{} is not a kind this policy acts on ({})", chain.join(" → "), kinds_text(kinds)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use serde_json::json;

    struct Objects(BTreeMap<(String, String), Value>);

    impl Reader for Objects {
        fn read<'a>(
            &'a self,
            _: &'a str,
            kind: &'a str,
            name: &'a str,
        ) -> BoxFuture<'a, Result<Option<Value>, String>> {
            let found = self.0.get(&(kind.to_owned(), name.to_owned())).cloned();
            async move { Ok(found) }.boxed()
        }
    }

    fn owned(kind: &str, name: &str, by: Option<(&str, &str)>) -> ((String, String), Value) {
        let refs = by.map(|(k, n)| {
            json!([{"kind": k, "name": n, "controller": true, "apiVersion": served_at(k).unwrap_or("v1"), "uid": format!("uid-{n}")}])
        });
        let object = json!({"metadata": {"name": name, "uid": format!("uid-{name}"), "ownerReferences": refs.unwrap_or(json!([]))}});
        ((kind.to_owned(), name.to_owned()), object)
    }

    fn claiming(pod: &str, api_version: &str, uid: &str) -> ((String, String), Value) {
        let refs =
            json!([{"kind": "Deployment", "name": "web", "controller": true, "apiVersion": api_version, "uid": uid}]);
        (("Pod".to_owned(), pod.to_owned()), json!({"metadata": {"name": pod, "uid": "p", "ownerReferences": refs}}))
    }

    fn world() -> Objects {
        Objects(BTreeMap::from([
            owned("Pod", "web-7d9f-abcde", Some(("ReplicaSet", "web-7d9f"))),
            owned("ReplicaSet", "web-7d9f", Some(("Deployment", "web"))),
            owned("Deployment", "web", None),
            owned("Pod", "db-0", Some(("StatefulSet", "db"))),
            owned("StatefulSet", "db", None),
            owned("Pod", "report-123-xyz", Some(("Job", "report-123"))),
            owned("Job", "report-123", Some(("CronJob", "report"))),
            owned("Pod", "static", None),
            // A Pod claiming a Deployment it does not belong to (wrong uid), and one claiming a
            // look-alike kind of another group.
            claiming("forged", "apps/v1", "someone-elses"),
            claiming("lookalike", "example.com/v1", "uid-web"),
        ]))
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    async fn run(pairs: &[(&str, &str)], kinds: &[TargetKind]) -> Result<(TargetKind, String), Unresolved> {
        resolve(&world(), "shop", &labels(pairs), kinds).await
    }

    #[tokio::test]
    async fn a_pod_is_followed_to_the_workload_that_runs_it() {
        let both = [TargetKind::Deployment, TargetKind::StatefulSet];
        assert_eq!(run(&[("pod", "web-7d9f-abcde")], &both).await, Ok((TargetKind::Deployment, "web".into())));
        assert_eq!(run(&[("pod", "db-0")], &both).await, Ok((TargetKind::StatefulSet, "db".into())));
        let only_sts = run(&[("pod", "web-7d9f-abcde")], &[TargetKind::StatefulSet]).await.unwrap_err();
        assert_eq!(only_sts.reason, "KindNotActedOn");
        assert!(
            only_sts.message.contains("Pod web-7d9f-abcde → ReplicaSet web-7d9f → Deployment web"),
            "{}",
            only_sts.message
        );
        let cron = run(&[("pod", "report-123-xyz")], &both).await.unwrap_err();
        assert!(cron.message.contains("→ Job report-123 → CronJob report is not a kind"), "{}", cron.message);
        assert_eq!(run(&[("pod", "static")], &both).await.unwrap_err().reason, "NoController");
        assert_eq!(run(&[("pod", "gone")], &both).await.unwrap_err().reason, "NotFound");
    }

    #[tokio::test]
    async fn an_owner_reference_is_followed_only_to_the_object_it_names() {
        let both = [TargetKind::Deployment, TargetKind::StatefulSet];
        assert_eq!(run(&[("pod", "forged")], &both).await.unwrap_err().reason, "OwnerMismatch");
        assert_eq!(run(&[("pod", "lookalike")], &both).await.unwrap_err().reason, "KindNotActedOn");
    }

    #[tokio::test]
    async fn workload_and_hpa_labels_name_the_target_directly() {
        let hpa = [TargetKind::HorizontalPodAutoscaler];
        assert_eq!(
            run(&[("horizontalpodautoscaler", "web"), ("deployment", "web")], &hpa).await,
            Ok((TargetKind::HorizontalPodAutoscaler, "web".into()))
        );
        assert_eq!(
            run(&[("deployment", "web"), ("pod", "db-0")], &[TargetKind::Deployment]).await,
            Ok((TargetKind::Deployment, "web".into()))
        );
        let wrong = run(&[("statefulset", "db")], &[TargetKind::Deployment]).await.unwrap_err();
        assert!(wrong.message.contains("names statefulset=db, and the policy acts on Deployment"), "{}", wrong.message);
        assert_eq!(
            run(&[("job_name", "report-1")], &[TargetKind::Deployment]).await.unwrap_err().reason,
            "KindNotActedOn"
        );
        assert_eq!(run(&[("alertname", "X")], &[TargetKind::Deployment]).await.unwrap_err().reason, "NoTargetLabel");
        assert_eq!(
            run(&[("deployment", "../etc")], &[TargetKind::Deployment]).await.unwrap_err().reason,
            "InvalidName"
        );
        // A malformed label of a kind the policy does not act on does not stop the Pod's.
        assert_eq!(
            run(&[("statefulset", "../x"), ("pod", "web-7d9f-abcde")], &[TargetKind::Deployment]).await,
            Ok((TargetKind::Deployment, "web".into()))
        );
    }
}
