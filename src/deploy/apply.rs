//! Server-side apply of a tested patch, the snapshot before it, and the rollback after it.
//!
//! Contract: the snapshot ([`previous_of`], pure) mirrors the patch's shape with the target's
//! current values — `null` where a field was absent — keyed list items by their merge keys,
//! so the rollback restores exactly what the patch changed and nothing else. Strategic-merge
//! patches without directives are applied as server-side apply configurations under the
//! Remediation's own field manager (`reflex-<name>-<uid hash>`, forced: it takes ownership of exactly the
//! fields its change sets); other patch types are sent as that patch type. Rollback applies
//! the snapshot under the same manager; fields that were absent are left out of the
//! configuration, so server-side apply removes them unless another manager — a person, or
//! another Remediation — still owns them.

use futures::FutureExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use serde_json::{Map, Value, json};

use std::sync::Arc;
use std::time::Duration;

use super::identity::DeployerIdentity;
use super::recheck::recheck;
use super::request::{apply_config, field_manager, has_directives, request};
use super::rollout::{Waited, Window};
use crate::api::playbook::PatchType;
use crate::api::quantity::parse_quantity;
use crate::api::remediation::Remediation;
use crate::api::remediation::{DeployRecord, RollbackRecord, RolloutStatus};
use crate::api::validate::{ValidRollout, ValidWait};
use crate::api::{AnyJson, ErrorCategory};
use crate::cluster::{
    api_error, api_resource, as_json, load_playbook, revision_of, rules_for, target_api, workload_pods,
};
use crate::patch::TestedPatch;
use crate::patch::merge::{ListType, Lists, list_type, same_key};
use crate::patch::safety::{Proposed, Target, check};
use crate::patch::tree::touched_as;
use crate::ports::StageResult;
use crate::ports::{Deploy, Gate, Rollback, StageError, StageFuture, StageInput};
use kube::api::{Api, DynamicObject};

/// Marks a list item the patch added (it did not exist before).
const ABSENT: &str = "$absent";

/// The target's current values at every field `patch` sets, in the patch's shape: `null`
/// where a field was absent, list items the patch adds marked absent, and — for merge
/// patches, which replace lists whole — whole lists.
pub fn previous_of(patch: &Value, object: &Value, patch_type: PatchType) -> Value {
    fn walk(patch: &Value, object: Option<&Value>, path: &mut Vec<String>, keyed: bool) -> Value {
        match patch {
            Value::Object(p) => {
                let mut out = Map::new();
                for (k, v) in p {
                    path.push(k.clone());
                    out.insert(k.clone(), walk(v, object.and_then(|o| o.get(k)), path, keyed));
                    path.pop();
                }
                Value::Object(out)
            }
            Value::Array(items) if keyed => {
                let segs: Vec<&str> = path.iter().map(String::as_str).collect();
                match list_type(Lists::Builtin, &segs) {
                    ListType::Map(keys) => Value::Array(
                        items
                            .iter()
                            .map(|item| {
                                let current = object
                                    .and_then(Value::as_array)
                                    .and_then(|a| a.iter().find(|x| same_key(x, &keys, item)));
                                let mut prev = match current {
                                    Some(c) => walk(item, Some(c), path, keyed),
                                    None => json!({ABSENT: true}),
                                };
                                // Merge keys identify the item; keep them as they are.
                                if let (Some(m), Some(src)) = (prev.as_object_mut(), item.as_object()) {
                                    for k in &keys {
                                        if let Some(v) = src.get(k) {
                                            m.insert(k.clone(), v.clone());
                                        }
                                    }
                                }
                                prev
                            })
                            .collect(),
                    ),
                    _ => object.cloned().unwrap_or(Value::Null),
                }
            }
            _ => object.cloned().unwrap_or(Value::Null),
        }
    }
    walk(patch, Some(object), &mut Vec::new(), patch_type != PatchType::Merge)
}

fn is_absent(v: &Value) -> bool {
    v.get(ABSENT).is_some()
}

/// The apply configuration that restores `previous`: absent fields and added items are left
/// out (server-side apply then removes what only Reflex owned).
pub fn restore_config(previous: &Value) -> Value {
    match previous {
        // Absent before: leave out; a map left empty by that is left out too.
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), restore_config(v)))
                .filter(|(_, v)| !v.as_object().is_some_and(Map::is_empty))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().filter(|i| !is_absent(i)).map(restore_config).collect()),
        other => other.clone(),
    }
}

/// The strategic-merge patch that restores `previous`: nulls delete, added items are deleted.
fn restore_strategic(previous: &Value) -> Value {
    match previous {
        Value::Object(m) if is_absent(previous) => {
            let mut item: Map<String, Value> =
                m.iter().filter(|(k, _)| k.as_str() != ABSENT).map(|(k, v)| (k.clone(), v.clone())).collect();
            item.insert("$patch".into(), json!("delete"));
            Value::Object(item)
        }
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), restore_strategic(v))).collect()),
        Value::Array(items) => Value::Array(items.iter().map(restore_strategic).collect()),
        other => other.clone(),
    }
}

/// Are these the same value (quantities compared by amount: the API server may rewrite
/// `1024Mi` as `1Gi`)?
fn same_value(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a, b) {
        (Some(Value::String(x)), Some(Value::String(y))) => {
            x == y || matches!((parse_quantity(x), parse_quantity(y)), (Ok(p), Ok(q)) if (p - q).abs() < 1e-9)
        }
        (a, b) => a == b,
    }
}

fn show(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "unset".into(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// Fields whose current value is no longer what Reflex applied: someone changed them since.
pub fn drifted(applied: &Value, current: &Value, patch_type: PatchType) -> Vec<String> {
    let keyed = patch_type != PatchType::Merge;
    let wanted = touched_as(applied, applied, keyed);
    let now = touched_as(applied, current, keyed);
    wanted
        .into_iter()
        .zip(now)
        .filter(|((_, want), (_, have))| !same_value(want.as_ref(), have.as_ref()))
        .map(|((path, want), (_, have))| {
            format!("{path} is {} (Reflex applied {})", show(have.as_ref()), show(want.as_ref()))
        })
        .collect()
}

/// Fields `previous` (status.deploy.previous, a record) would restore that the patch never
/// set: a rollback restores only what its own change took, whatever status says.
pub fn outside_patch(previous: &Value, patch: &Value, patch_type: PatchType) -> Vec<String> {
    let keyed = patch_type != PatchType::Merge;
    let set: std::collections::BTreeSet<String> =
        touched_as(patch, patch, keyed).into_iter().map(|(path, _)| path).collect();
    touched_as(previous, previous, keyed)
        .into_iter()
        .map(|(path, _)| path)
        .filter(|path| !path.ends_with(ABSENT) && !set.contains(path))
        .collect()
}

/// Deploys and rolls back through the Kubernetes API.
#[derive(Clone)]
pub struct ServerSideApply {
    pub client: kube::Client,
    /// The gate deploy asks again, just before it writes ([`super::recheck`]).
    pub gate: Arc<dyn Gate>,
    /// Who writes: the deployer of the change's environment, never the operator.
    pub identity: DeployerIdentity,
    /// The operator's kill-switch ConfigMap (namespace, name), which deploy reads again.
    pub kill_switch: Option<(String, String)>,
}

impl Deploy for ServerSideApply {
    fn snapshot(&self, input: StageInput) -> StageFuture<DeployRecord> {
        let client = self.client.clone();
        async move {
            let rem = &input.remediation;
            let proposal =
                rem.status.as_ref().and_then(|s| s.proposal.clone()).ok_or_else(|| {
                    StageError::new(ErrorCategory::InvalidSpec, "there is no proposal to snapshot for")
                })?;
            let obj = crate::cluster::read_target(&client, rem).await?;
            let current = as_json(&obj)?;
            let previous = match proposal.patch_type {
                PatchType::Json => json!({"object": current.get("spec").cloned().unwrap_or(Value::Null)}),
                t => previous_of(&proposal.patch.0, &current, t),
            };
            Ok(DeployRecord {
                previous: AnyJson(previous),
                previous_resource_version: obj.metadata.resource_version.clone().unwrap_or_default(),
                applied_digest: None,
                applied_revision: None,
                identity: None,
                field_manager: None,
                applied_at: None,
                pull_request: None,
            })
        }
        .boxed()
    }

    fn rollout(&self, input: StageInput) -> StageFuture<RolloutStatus> {
        rollout_of(self.client.clone(), input)
    }

    fn apply(&self, input: StageInput, patch: TestedPatch) -> StageFuture<DeployRecord> {
        let (client, gate, identity) = (self.client.clone(), self.gate.clone(), self.identity.clone());
        let kill_switch = self.kill_switch.clone();
        async move {
            let rem = &input.remediation;
            let mut record = rem.status.as_ref().and_then(|s| s.deploy.clone()).ok_or_else(|| {
                StageError::new(ErrorCategory::InvalidSpec, "no snapshot is recorded; refusing to deploy")
            })?;
            let proposal = patch.proposal();
            // Status is a record, not proof: everything the change relies on, checked again.
            let now = recheck(&client, gate.as_ref(), kill_switch.as_ref(), &input, proposal).await?;
            if now.written {
                let (_, user) = identity.acting(&client, rem, Some(&*now.policy)).await?;
                // Resumed after the write landed: record it, write nothing.
                record.identity = Some(user);
                record.applied_digest = Some(proposal.digest.clone());
                record.field_manager = Some(super::request::field_manager(rem));
                record.applied_revision = now.revision;
                record.applied_at = Some(Time(jiff::Timestamp::now()));
                return Ok(record);
            }
            let (deployer, user) = identity.checked(&client, rem, Some(&*now.policy), "patch").await?;
            let api = target_api(&deployer, rem);
            let name = &rem.spec.target.name;
            let (params, body) = request(rem, proposal, false)?;
            let obj = api.patch(name, &params, &body).await.map_err(|e| api_error("applying the patch", &e))?;
            record.identity = Some(user);
            record.applied_digest = Some(proposal.digest.clone());
            record.field_manager = Some(params.field_manager.clone().unwrap_or_default());
            record.applied_revision = revision_of(&obj.metadata);
            record.applied_at = Some(Time(jiff::Timestamp::now()));
            Ok(record)
        }
        .boxed()
    }
}

/// One look at how the applied change rolls out, as the operator (reads only): the target,
/// and what the policy's playbook says to wait for, read as they are now.
pub(super) fn rollout_of(client: kube::Client, input: StageInput) -> StageFuture<RolloutStatus> {
    async move {
        let rem = &input.remediation;
        let applied = rem
            .status
            .as_ref()
            .and_then(|s| s.deploy.as_ref()?.applied_at.as_ref())
            .map(|t| t.0)
            .ok_or_else(|| StageError::new(ErrorCategory::InvalidSpec, "no applied change to watch roll out"))?;
        let policy = input.policy.as_deref();
        let timeout = policy.map_or(Duration::from_secs(600), |p| p.rollout_timeout);
        let namespace = rem.metadata.namespace.clone().unwrap_or_default();
        let plan = match policy.and_then(|p| p.playbook.as_deref()) {
            Some(name) => load_playbook(&client, &namespace, name).await?.rollout,
            None => ValidRollout::default(),
        };
        let mut waits = Vec::with_capacity(plan.wait_for.len());
        for wait in &plan.wait_for {
            waits.push(waited(&client, &namespace, rem, wait).await?);
        }
        let live = as_json(&crate::cluster::read_target(&client, rem).await?)?;
        let window = Window { applied, timeout, settle: plan.settle };
        Ok(super::rollout::progress(rem.spec.target.kind, &live, &waits, window, jiff::Timestamp::now()))
    }
    .boxed()
}

/// A workload the playbook says to wait for, named from the alert's labels and read now.
async fn waited(client: &kube::Client, namespace: &str, rem: &Remediation, wait: &ValidWait) -> StageResult<Waited> {
    let name = wait.name.render(&rem.spec.alert.labels).map_err(|e| {
        StageError::new(
            ErrorCategory::InvalidSpec,
            format!("the playbook's rollout.waitFor names no {}: {e}", wait.kind),
        )
    })?;
    let what = format!("{} {namespace}/{name}", wait.kind);
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &api_resource(wait.kind));
    let live = match api.get_opt(&name).await.map_err(|e| api_error(&format!("reading {what}"), &e))? {
        Some(object) => Some(as_json(&object)?),
        None => None,
    };
    let pods = match (&live, wait.new_pods) {
        (Some(workload), true) => {
            let pods = workload_pods(client, namespace, workload, &what).await?;
            Some(
                pods.iter()
                    .map(serde_json::to_value)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| StageError::new(ErrorCategory::Transient, e.to_string()))?,
            )
        }
        _ => None,
    };
    Ok(Waited { kind: wait.kind, name, live, pods })
}

impl Rollback for ServerSideApply {
    fn rollback(&self, input: StageInput) -> StageFuture<RollbackRecord> {
        let (client, identity) = (self.client.clone(), self.identity.clone());
        async move {
            let rem = &input.remediation;
            let status = rem.status.as_ref().ok_or_else(|| StageError::new(ErrorCategory::InvalidSpec, "no status"))?;
            let record = status
                .deploy
                .as_ref()
                .ok_or_else(|| StageError::new(ErrorCategory::InvalidSpec, "no snapshot to restore"))?;
            let proposal = status
                .proposal
                .as_ref()
                .ok_or_else(|| StageError::new(ErrorCategory::InvalidSpec, "no proposal recorded"))?;
            // Status is a record, not proof: restore only what this change set, and only a
            // change recorded as this proposal's.
            let extra = outside_patch(&record.previous.0, &proposal.patch.0, proposal.patch_type);
            if !extra.is_empty() {
                return Err(StageError::new(
                    ErrorCategory::NeedsHuman,
                    format!("refusing to roll back: status.deploy.previous names fields the change never set: {}", extra.join(", ")),
                ));
            }
            if record.applied_at.is_some() && record.applied_digest.as_deref() != Some(proposal.digest.as_str()) {
                return Err(StageError::new(
                    ErrorCategory::NeedsHuman,
                    "refusing to roll back: the applied change recorded in status is not this Remediation's proposal",
                ));
            }
            let reads = target_api(&client, rem);
            let name = &rem.spec.target.name;
            // Only undo Reflex's own change: if someone changed those fields since, stop and
            // leave it to a human rather than overwrite them.
            let object = reads.get(name).await.map_err(|e| api_error("reading the target", &e))?;
            let manager = field_manager(rem);
            let written = object.metadata.managed_fields.iter().flatten().any(|f| f.manager.as_deref() == Some(&manager));
            if record.applied_at.is_none() && !written {
                // The deploy failed before it wrote (its re-check, a denied deployer, an
                // unreachable API server): there is nothing of ours to undo, and restoring the
                // snapshot would overwrite whatever changed since it was taken.
                return Ok(RollbackRecord {
                    reason: "nothing to undo: the change was never written to the target".to_owned(),
                    restored_revision: revision_of(&object.metadata),
                    restored_at: Time(jiff::Timestamp::now()),
                    pull_request: None,
                });
            }
            if proposal.patch_type == PatchType::Json {
                return Err(StageError::new(
                    ErrorCategory::InvalidSpec,
                    "JSON-patch changes are restored by hand; the snapshot is in status.deploy.previous",
                ));
            }
            let live = as_json(&object)?;
            if record.applied_at.is_some() {
                let changed = drifted(&proposal.patch.0, &live, proposal.patch_type);
                if !changed.is_empty() {
                    return Err(StageError::new(
                        ErrorCategory::InvalidSpec,
                        format!(
                            "the target changed since Reflex applied its patch, so it is not rolled back automatically: {}",
                            changed.join("; ")
                        ),
                    ));
                }
            }
            // What the rollback writes comes from status, which can be tampered with: judged
            // against the live target like any change, refused on whatever no change may do
            // (amounts aside: undoing a raise is what a rollback is).
            let (restore, restore_type) = match proposal.patch_type {
                PatchType::Merge => (record.previous.0.clone(), PatchType::Merge),
                _ => (restore_config(&record.previous.0), PatchType::Strategic),
            };
            let namespace = rem.metadata.namespace.clone().unwrap_or_default();
            let allowed = Target { kind: rem.spec.target.kind.as_str(), namespace: &namespace, name };
            let proposed = Proposed { target: allowed.clone(), patch_type: restore_type, patch: &restore };
            let verdict = check(&rules_for(&client, &input).await?, &allowed, &live, &proposed);
            let fixed = verdict.fixed();
            if !fixed.is_empty() {
                let reasons: Vec<String> = fixed.iter().map(ToString::to_string).collect();
                return Err(StageError::new(
                    ErrorCategory::NeedsHuman,
                    format!("refusing to roll back: the values recorded in status would {}", reasons.join("; ")),
                ));
            }
            // The same deployer as the change's (by the environment now), checked again.
            let (deployer, _) = identity.checked(&client, rem, input.policy.as_deref(), "patch").await?;
            let api = target_api(&deployer, rem);
            let obj = if proposal.patch_type == PatchType::Strategic && !has_directives(&proposal.patch.0) {
                let config = apply_config(rem, &restore_config(&record.previous.0));
                api.patch(name, &PatchParams::apply(&field_manager(rem)).force(), &Patch::Apply(config)).await
            } else {
                // The deploy was a plain patch: undo it the same way (nulls delete).
                let params = PatchParams { field_manager: Some(field_manager(rem)), ..PatchParams::default() };
                let undo = match proposal.patch_type {
                    PatchType::Merge => Patch::Merge(record.previous.0.clone()),
                    _ => Patch::Strategic(restore_strategic(&record.previous.0)),
                };
                api.patch(name, &params, &undo).await
            }
            .map_err(|e| api_error("restoring the snapshot", &e))?;

            let reason = status
                .verification
                .as_ref()
                .and_then(|v| v.message.clone())
                .unwrap_or_else(|| "the change did not hold".to_owned());
            Ok(RollbackRecord {
                reason,
                restored_revision: revision_of(&obj.metadata),
                restored_at: Time(jiff::Timestamp::now()),
                pull_request: None,
            })
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollback_restores_only_fields_its_patch_set_whatever_status_says() {
        let object = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "a:1",
            "resources": {"limits": {"memory": "128Mi"}}}]}}}});
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "256Mi"}}},
            {"name": "debug", "image": "busybox"}]}}}});
        let honest = previous_of(&patch, &object, PatchType::Strategic);
        assert!(outside_patch(&honest, &patch, PatchType::Strategic).is_empty(), "{honest}");
        let forged = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "128Mi"}},
            "securityContext": {"privileged": true}}]}}, "replicas": 50}});
        let extra = outside_patch(&forged, &patch, PatchType::Strategic);
        assert_eq!(extra, ["spec.replicas", "spec.template.spec.containers[*].securityContext.privileged"]);
    }

    #[test]
    fn the_snapshot_mirrors_the_patch_with_current_values() {
        let object = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [
            {"name": "sidecar", "image": "s:1"},
            {"name": "app", "image": "a:1", "resources": {"limits": {"memory": "128Mi"}}}]}}}});
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "resources": {"limits": {"memory": "256Mi"}, "requests": {"memory": "256Mi"}}}]}}}});
        let prev = previous_of(&patch, &object, PatchType::Strategic);
        assert_eq!(
            prev,
            json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "resources": {"limits": {"memory": "128Mi"}, "requests": {"memory": null}}}]}}}})
        );
        let config = restore_config(&prev);
        assert_eq!(
            config,
            json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "resources": {"limits": {"memory": "128Mi"}}}]}}}})
        );
    }

    #[test]
    fn added_items_are_removed_on_rollback_and_merge_lists_are_whole() {
        let object = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "a:1"}]}}}});
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "debug", "image": "busybox"}]}}}});
        let prev = previous_of(&patch, &object, PatchType::Strategic);
        assert_eq!(restore_config(&prev), json!({"spec": {"template": {"spec": {"containers": []}}}}));
        assert_eq!(
            restore_strategic(&prev),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "debug", "$patch": "delete"}]}}}})
        );
        let merged = previous_of(&patch, &object, PatchType::Merge);
        assert_eq!(merged, json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "a:1"}]}}}}));
    }

    #[test]
    fn drift_since_the_deploy_is_detected_and_quantities_compare_by_amount() {
        let applied = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "1024Mi"}}}]}}}});
        let same = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "1Gi"}}}]}}}});
        assert!(drifted(&applied, &same, PatchType::Strategic).is_empty());
        let edited = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "2Gi"}}}]}}}});
        let d = drifted(&applied, &edited, PatchType::Strategic);
        assert_eq!(d, ["spec.template.spec.containers[*].resources.limits.memory is 2Gi (Reflex applied 1024Mi)"]);
    }
}
