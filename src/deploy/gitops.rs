//! Deploy and rollback for policies whose CI is a GitOps pull request: the deploy is the merge
//! of the tested pull request, the rollout waits for the GitOps controller to make the live
//! object what the change says, and the rollback merges a revert of the merge.
//!
//! Contract: implements `Deploy` and `Rollback` ([`Backends`]) by choosing, per Remediation,
//! between the direct server-side apply and this path: a change whose policy (as it is now)
//! asks for GitOps goes through the repository, never around it — a direct patch would be
//! reverted by the next sync. Before the merge it re-derives everything as a direct deploy
//! does (`recheck`: kill switch, policy, patch safety, target unchanged since CI, the gate and
//! approvals), then proves the pull request is this change (`gitops::flow`). The rollout
//! reads the target and, when the object says which Argo CD Application or Flux Kustomization
//! manages it, that object's sync state; converged within `convergeTimeout` of the merge, the
//! workload's own rollout is judged as for any deploy. The rollback waits, within the same
//! timeout, for the previous values to be live again.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use serde_json::Value;

use super::apply::{ServerSideApply, drifted, rollout_of};
use super::recheck::recheck;
use crate::api::ErrorCategory;
use crate::api::policy::MergeApproval;
use crate::api::remediation::{DeployRecord, RollbackRecord, RolloutState, RolloutStatus};
use crate::api::validate::{ValidCi, ValidGitops, ValidPolicy};
use crate::cluster::{as_json, read_target};
use crate::gitops::flow::{Session, Settings};
use crate::gitops::short;
use crate::patch::TestedPatch;
use crate::ports::{Deploy, Rollback, StageError, StageFuture, StageInput};

/// The deploy stage: direct, or through the repository.
#[derive(Clone)]
pub struct Backends {
    /// The direct server-side apply (also the snapshot, for both).
    pub direct: ServerSideApply,
    /// How GitOps changes are made.
    pub gitops: Arc<Settings>,
}

fn gitops_of(policy: Option<&ValidPolicy>) -> Option<&ValidGitops> {
    match &policy?.ci {
        ValidCi::Gitops(g) => Some(g),
        _ => None,
    }
}

impl Deploy for Backends {
    fn snapshot(&self, input: StageInput) -> StageFuture<DeployRecord> {
        self.direct.snapshot(input)
    }

    fn apply(&self, input: StageInput, patch: TestedPatch) -> StageFuture<DeployRecord> {
        if gitops_of(input.policy.as_deref()).is_none() {
            return self.direct.apply(input, patch);
        }
        let (direct, settings) = (self.direct.clone(), self.gitops.clone());
        async move {
            let rem = &input.remediation;
            let status = rem.status.as_ref();
            let mut record = status.and_then(|s| s.deploy.clone()).ok_or_else(|| {
                StageError::new(ErrorCategory::InvalidSpec, "no snapshot is recorded; refusing to deploy")
            })?;
            let proposal = patch.proposal();
            let now =
                recheck(&direct.client, direct.gate.as_ref(), direct.kill_switch.as_ref(), &input, proposal).await?;
            let gitops = gitops_of(Some(&now.policy)).ok_or_else(|| {
                StageError::new(
                    ErrorCategory::NeedsHuman,
                    "the policy no longer asks for GitOps; the change must be tested again",
                )
            })?;
            let tested = status.and_then(|s| s.ci.as_ref()).and_then(|c| c.pull_request.clone()).ok_or_else(|| {
                StageError::new(
                    ErrorCategory::InvalidSpec,
                    "no pull request is recorded for the tested change; refusing to deploy",
                )
            })?;
            let namespace = rem.metadata.namespace.clone().unwrap_or_default();
            let session = Session::new(&direct.client, &namespace, gitops, &settings, input.cancel.clone()).await?;
            // The forge's own review, waited for as long as the policy waits for an approval (a day
            // when it sets no limit).
            let forge_review = (gitops.spec.merge_approval == MergeApproval::Forge)
                .then(|| now.policy.trust.approval_timeout.unwrap_or(Duration::from_secs(24 * 3600)));
            let merged = session.merge(rem, &tested, proposal, forge_review).await?;
            record.identity = Some(format!("GitOps merge on {} ({})", gitops.project, gitops.remote.url));
            record.applied_digest = Some(proposal.digest.clone());
            record.applied_revision = merged.merge_commit.as_deref().map(|c| format!("commit {}", short(c)));
            record.field_manager = None;
            record.applied_at = Some(Time(Timestamp::now()));
            record.pull_request = Some(merged);
            Ok(record)
        }
        .boxed()
    }

    fn rollout(&self, input: StageInput) -> StageFuture<RolloutStatus> {
        let merged = input.remediation.status.as_ref().and_then(|s| s.deploy.as_ref()?.pull_request.clone());
        let Some(merged) = merged else { return self.direct.rollout(input) };
        let client = self.direct.client.clone();
        async move {
            let rem = input.remediation.clone();
            let status = rem.status.as_ref();
            let proposal = status
                .and_then(|s| s.proposal.as_ref())
                .ok_or_else(|| StageError::new(ErrorCategory::InvalidSpec, "no proposal recorded"))?;
            let applied =
                status.and_then(|s| s.deploy.as_ref()?.applied_at.as_ref()).map(|t| t.0).ok_or_else(|| {
                    StageError::new(
                        ErrorCategory::InvalidSpec,
                        "no merged change to watch converge (status.deploy.appliedAt)",
                    )
                })?;
            let timeout = gitops_of(input.policy.as_deref()).map_or(Duration::from_secs(600), |g| g.converge_timeout);
            let live = as_json(&read_target(&client, &rem).await?)?;
            let pending = drifted(&proposal.patch.0, &live, proposal.patch_type);
            let commit = merged.merge_commit.as_deref().map(short).unwrap_or("?");
            if pending.is_empty() {
                return rollout_of(client, input).await;
            }
            let sync = sync_state(&client, &live).await;
            let waited = Timestamp::now().duration_since(applied).unsigned_abs();
            let controller = sync.as_ref().map(|s| format!("; {s}")).unwrap_or_default();
            let failed = sync.as_ref().is_some_and(|s| s.failed);
            if waited > timeout || failed {
                return Ok(RolloutStatus {
                    state: RolloutState::Stalled,
                    message: format!(
                        "the cluster did not converge to merge commit {commit} {}: {}{controller}",
                        if failed {
                            "(its GitOps controller reports a failure)".to_owned()
                        } else {
                            format!("within convergeTimeout ({}s)", timeout.as_secs())
                        },
                        pending.join("; ")
                    ),
                    completed_at: None,
                    next_check_at: None,
                });
            }
            let next =
                Timestamp::now().checked_add(jiff::SignedDuration::from_secs(2)).unwrap_or_else(|_| Timestamp::now());
            Ok(RolloutStatus {
                state: RolloutState::Progressing,
                message: format!(
                    "waiting for the GitOps controller to apply merge commit {commit}: {}{controller}",
                    pending.join("; ")
                ),
                completed_at: None,
                next_check_at: Some(Time(next)),
            })
        }
        .boxed()
    }
}

impl Rollback for Backends {
    fn rollback(&self, input: StageInput) -> StageFuture<RollbackRecord> {
        let merged = input.remediation.status.as_ref().and_then(|s| s.deploy.as_ref()?.pull_request.clone());
        let Some(merged) = merged else { return self.direct.rollback(input) };
        let (client, settings) = (self.direct.client.clone(), self.gitops.clone());
        async move {
            let rem = &input.remediation;
            let status = rem.status.as_ref().ok_or_else(|| StageError::new(ErrorCategory::InvalidSpec, "no status"))?;
            let record = status.deploy.as_ref().ok_or_else(|| StageError::new(ErrorCategory::InvalidSpec, "no snapshot"))?;
            // The policy may be gone by now; the repository and forge are the recorded ones
            // only if the policy still names them — otherwise a human reverts.
            let gitops = gitops_of(input.policy.as_deref()).ok_or_else(|| {
                StageError::new(
                    ErrorCategory::NeedsHuman,
                    format!("the policy no longer names the GitOps repository; revert merge commit {} of {} by hand", merged.merge_commit.clone().unwrap_or_default(), merged.url),
                )
            })?;
            let namespace = rem.metadata.namespace.clone().unwrap_or_default();
            let session = Session::new(&client, &namespace, gitops, &settings, input.cancel.clone()).await?;
            let reverted = session.revert(rem, &merged).await?;
            // The previous values live again: what the rollback is for.
            let deadline = Timestamp::now().checked_add(jiff::SignedDuration::try_from(gitops.converge_timeout).unwrap_or_default()).unwrap_or_else(|_| Timestamp::now());
            let commit = reverted.merge_commit.clone().unwrap_or_default();
            loop {
                let live = as_json(&read_target(&client, rem).await?)?;
                let pending = restored(&record.previous.0, &live, status.proposal.as_ref().map(|p| p.patch_type));
                if pending.is_empty() {
                    break;
                }
                if Timestamp::now() > deadline {
                    return Err(StageError::new(
                        ErrorCategory::NeedsHuman,
                        format!("the revert merged as commit {} but the cluster did not converge within convergeTimeout: {}", short(&commit), pending.join("; ")),
                    ));
                }
                tokio::select! {
                    () = input.cancel.cancelled() => return Err(StageError::new(ErrorCategory::Transient, "cancelled")),
                    () = tokio::time::sleep(settings.poll.min(Duration::from_secs(2))) => {}
                }
            }
            let reason = status.verification.as_ref().and_then(|v| v.message.clone()).unwrap_or_else(|| "the change did not hold".to_owned());
            Ok(RollbackRecord {
                reason,
                restored_revision: Some(format!("commit {}", short(&commit))),
                restored_at: Time(Timestamp::now()),
                pull_request: Some(reverted),
            })
        }
        .boxed()
    }
}

/// Fields of the snapshot `previous` that are not live again.
fn restored(previous: &Value, live: &Value, patch_type: Option<crate::api::playbook::PatchType>) -> Vec<String> {
    let cleaned = strip_absent(previous);
    drifted(&cleaned, live, patch_type.unwrap_or(crate::api::playbook::PatchType::Strategic))
}

/// The snapshot without its markers for list items the change added (a revert removes them).
fn strip_absent(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), strip_absent(v))).collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|i| !i.as_object().is_some_and(|o| o.keys().any(|k| k.starts_with('$'))))
                .map(strip_absent)
                .collect(),
        ),
        other => other.clone(),
    }
}

/// What the GitOps controller that manages `live` says, when the object names one.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncState {
    /// `Argo CD Application argocd/shop`, `Flux Kustomization flux-system/apps`.
    pub what: String,
    /// Its words.
    pub summary: String,
    /// It reports a failed sync.
    pub failed: bool,
}

impl std::fmt::Display for SyncState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.summary)
    }
}

/// The Argo CD Application (from the `argocd.argoproj.io/tracking-id` annotation, or the
/// `app.kubernetes.io/instance` label in namespace `argocd`) or Flux Kustomization (from the
/// `kustomize.toolkit.fluxcd.io/name`/`namespace` labels) that manages `live`, read now; none
/// when the object names none or it cannot be read (the live fields decide convergence).
pub async fn sync_state(client: &kube::Client, live: &Value) -> Option<SyncState> {
    let label = |k: &str| live.pointer(&format!("/metadata/labels/{}", k.replace('/', "~1"))).and_then(Value::as_str);
    let annotation =
        |k: &str| live.pointer(&format!("/metadata/annotations/{}", k.replace('/', "~1"))).and_then(Value::as_str);
    if let (Some(name), Some(ns)) =
        (label("kustomize.toolkit.fluxcd.io/name"), label("kustomize.toolkit.fluxcd.io/namespace"))
    {
        let gvk = GroupVersionKind::gvk("kustomize.toolkit.fluxcd.io", "v1", "Kustomization");
        let obj = read(client, ns, name, &gvk).await?;
        return Some(flux_state(&format!("Flux Kustomization {ns}/{name}"), &obj));
    }
    let app = annotation("argocd.argoproj.io/tracking-id")
        .and_then(|t| t.split(':').next())
        .or_else(|| label("app.kubernetes.io/instance"))?;
    let (ns, name) = app.split_once('_').unwrap_or(("argocd", app));
    let gvk = GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Application");
    let obj = read(client, ns, name, &gvk).await?;
    Some(argo_state(&format!("Argo CD Application {ns}/{name}"), &obj))
}

async fn read(client: &kube::Client, ns: &str, name: &str, gvk: &GroupVersionKind) -> Option<Value> {
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ApiResource::from_gvk(gvk));
    let obj = api.get_opt(name).await.ok().flatten()?;
    serde_json::to_value(obj).ok()
}

/// An Argo CD Application's sync and health, and a failed last operation.
pub fn argo_state(what: &str, app: &Value) -> SyncState {
    let s = |p: &str| app.pointer(p).and_then(Value::as_str).unwrap_or("unknown");
    let phase = s("/status/operationState/phase");
    let failed = matches!(phase, "Failed" | "Error");
    let mut summary = format!(
        "sync {} at {}, health {}",
        s("/status/sync/status"),
        short(s("/status/sync/revision")),
        s("/status/health/status")
    );
    if failed {
        summary.push_str(&format!(", last sync {phase}: {}", s("/status/operationState/message")));
    }
    SyncState { what: what.to_owned(), summary, failed }
}

/// A Flux Kustomization's Ready condition and last applied revision.
pub fn flux_state(what: &str, k: &Value) -> SyncState {
    let ready = k
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c.get("type").and_then(Value::as_str) == Some("Ready")));
    let field =
        |c: Option<&Value>, f: &str| c.and_then(|c| c.get(f)).and_then(Value::as_str).unwrap_or("unknown").to_owned();
    let status = field(ready, "status");
    let reason = field(ready, "reason");
    let failed =
        status == "False" && !matches!(reason.as_str(), "Progressing" | "DependencyNotReady" | "ProgressingWithRetry");
    let revision = k.pointer("/status/lastAppliedRevision").and_then(Value::as_str).unwrap_or("none");
    SyncState { what: what.to_owned(), summary: format!("Ready {status} ({reason}), last applied {revision}"), failed }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_controller_reporting_a_failed_sync_is_a_failure_and_progress_is_not() {
        let argo = json!({"status": {"sync": {"status": "OutOfSync", "revision": "abcdef1234567890"}, "health": {"status": "Healthy"},
            "operationState": {"phase": "Failed", "message": "one or more objects failed to apply"}}});
        let s = argo_state("Argo CD Application argocd/shop", &argo);
        assert!(
            s.failed && s.summary.contains("sync OutOfSync at abcdef123456") && s.summary.contains("failed to apply"),
            "{s}"
        );
        let flux = |status: &str, reason: &str| json!({"status": {"lastAppliedRevision": "main@sha1:abc", "conditions": [{"type": "Ready", "status": status, "reason": reason}]}});
        assert!(!flux_state("k", &flux("False", "Progressing")).failed);
        assert!(flux_state("k", &flux("False", "BuildFailed")).failed);
        assert_eq!(
            flux_state("k", &flux("True", "ReconciliationSucceeded")).summary,
            "Ready True (ReconciliationSucceeded), last applied main@sha1:abc"
        );
    }

    #[test]
    fn the_snapshots_markers_are_not_values_to_restore() {
        let previous = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "$absent": true}, {"name": "web", "resources": {"limits": {"memory": "128Mi"}}}]}}}});
        let cleaned = strip_absent(&previous);
        assert_eq!(cleaned["spec"]["template"]["spec"]["containers"].as_array().map(Vec::len), Some(1));
    }
}
