//! What deploy re-derives before it changes anything. Status is a record, never proof:
//! whoever can write `remediations/status` could claim a proposal was tested or approved.
//! So just before the write, deploy checks again, from the API server:
//!
//! - the operator's kill switch, and the policy as it is now: suspended, a kill switch on or
//!   a freeze open waits (`Deferred`); a policy gone, invalid or for another kind refuses;
//!   everything below, and the write, go by this policy;
//! - the patch-safety verdict, against the live target and the rules of the policy's
//!   playbook as they are now (or the kind's defaults);
//! - that the target's spec has not changed since CI tested the patch (people's edits are
//!   not overwritten: a `Conflict`, and the controller tests the change again);
//! - the gate's decision as it is now (trust, environment), and — when the gate wants a
//!   human — a `RemediationApproval` read from the API server that approves this Remediation
//!   and none that rejects it;
//! - for a change that restarts Pods, headroom in every PodDisruptionBudget covering them
//!   ([`super::disruption`]) — the one check that waits (`Deferred`) instead of refusing.
//!
//! Contract: reads only. A refusal is a `NeedsHuman` stage error naming what failed (a
//! changed target a `Conflict`, a wait `Deferred`); nothing has been written when it is
//! returned, so nothing is rolled back.

use kube::api::{Api, ListParams};
use serde_json::Value;

use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

use super::disruption::{headroom, restarts_pods};
use crate::api::playbook::PatchType;
use crate::api::validate::ValidPolicy;
use crate::api::{ErrorCategory, RemediationPolicy};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::approval::{ApprovalDecision, RemediationApproval, tally};
use crate::api::remediation::{ApprovalRecord, CiResult, GateDecision, GateResult, Proposal};
use crate::cluster::{api_error, as_json, read_target, revision_of, rules_for};
use crate::patch::safety::{Proposed, Refusal, Target, check};
use crate::ports::{Gate, StageError, StageInput, StageResult};

/// What deploy found when it checked again: the live target (as JSON) and the policy as it
/// is now, which the write is then made under.
pub struct Rechecked {
    pub current: Value,
    pub policy: Arc<ValidPolicy>,
    /// The target's revision now.
    pub revision: Option<String>,
    /// This Remediation's write has already landed (its field manager on the target, and the
    /// change's values in place): a deploy resumed after the write and before status recorded
    /// it. Nothing is written again (a JSON patch would apply twice); everything else was
    /// judged as for any deploy, so a forged `managedFields` entry gains nothing.
    pub written: bool,
}

/// Everything deploy relies on, re-derived; the live target and the policy as they are now
/// when the tested `proposal` may be applied. `kill_switch`: the operator's kill-switch
/// ConfigMap (namespace, name), read here too.
pub async fn recheck(
    client: &kube::Client,
    gate: &dyn Gate,
    kill_switch: Option<&(String, String)>,
    input: &StageInput,
    proposal: &Proposal,
) -> StageResult<Rechecked> {
    let rem = &input.remediation;
    let namespace = rem.metadata.namespace.clone().unwrap_or_default();
    if let Some((ns, name)) = kill_switch {
        let switch = Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(|e| api_error("reading the kill switch", &e))?;
        if switch.and_then(|c| c.data).and_then(|d| d.get("killSwitch").cloned()).is_some_and(|v| v.trim() == "true") {
            return Err(StageError::new(
                ErrorCategory::Deferred,
                format!("the operator's kill switch is on (ConfigMap {ns}/{name}); tried again when it is off"),
            ));
        }
    }
    // The policy as it is now, not as the controller last saw it.
    let policy_name = &rem.spec.policy_ref.name;
    let object = Api::<RemediationPolicy>::namespaced(client.clone(), &namespace)
        .get_opt(policy_name)
        .await
        .map_err(|e| api_error(&format!("reading policy {namespace}/{policy_name}"), &e))?
        .ok_or_else(|| refuse(&format!("policy {namespace}/{policy_name} no longer exists")))?;
    let policy = Arc::new(
        ValidPolicy::from_spec(&object.spec)
            .map_err(|e| refuse(&format!("policy {namespace}/{policy_name} is invalid now: {e}")))?,
    );
    if policy.limits.suspend {
        return Err(StageError::new(
            ErrorCategory::Deferred,
            format!("policy {policy_name} is suspended (limits.suspend); tried again when it is resumed"),
        ));
    }
    changeable(rem.spec.target.kind).map_err(|why| refuse(&why))?;
    if !policy.acts_on(rem.spec.target.kind) {
        return Err(refuse(&format!(
            "policy {policy_name} acts on {}, not on {}",
            policy.kinds(),
            rem.spec.target.kind.as_str()
        )));
    }
    if let Some(freeze) = policy.limits.freeze.iter().find(|f| f.open_at(jiff::Timestamp::now())) {
        // The controller halts before deploy in a freeze; this catches one that began since.
        return Err(StageError::new(
            ErrorCategory::Deferred,
            format!("not deploying in a change freeze ({}); tried again after it", freeze.describe()),
        ));
    }
    let fresh = StageInput { policy: Some(policy.clone()), ..input.clone() };
    let input = &fresh;
    let live = read_target(client, rem).await?;
    let current = as_json(&live)?;
    let revision = revision_of(&live.metadata);
    let manager = super::request::field_manager(rem);
    let claimed = live.metadata.managed_fields.iter().flatten().any(|f| f.manager.as_deref() == Some(manager.as_str()));
    // Our own values in place (set by people since, or by a write whose managedFields entry
    // was dropped) are not someone else's edit since CI: re-applying them moves nothing.
    let in_place = proposal.patch_type != PatchType::Json
        && super::apply::drifted(&proposal.patch.0, &current, proposal.patch_type).is_empty();
    // Our field manager on the target says our write landed — but anyone who may edit the
    // target may write that entry. It counts only with the values in place (a JSON patch's
    // result cannot be read back, so there the entry is taken); and either way the safety
    // check, the gate and the approvals below are judged as ever.
    let written = claimed && (in_place || proposal.patch_type == PatchType::Json);
    let ours = in_place || written;
    if !ours {
        let tested = rem.status.as_ref().and_then(|s| s.ci.as_ref());
        unchanged_since_test(tested, revision.as_deref())?;
    }
    let rules = rules_for(client, input).await?;
    let target = &rem.spec.target;
    let allowed = Target { kind: target.kind.as_str(), namespace: &namespace, name: &target.name };
    let proposed = Proposed { target: allowed.clone(), patch_type: proposal.patch_type, patch: &proposal.patch.0 };
    let mut verdict = check(&rules, &allowed, &current, &proposed);
    if ours {
        // Re-applying our own change moves no value; everything else is judged as ever.
        verdict.refusals.retain(|r| !matches!(r, Refusal::NoChange));
    }
    if !verdict.allowed() {
        return Err(refuse(&format!("the patch-safety check refuses the patch now: {}", verdict.summary())));
    }

    let decision = gate.gate(input.clone()).await?;
    // Approvals are read whatever the gate says: a person's rejection stops the change even
    // where the gate would let it through alone (staging, earned trust).
    let approvals = Api::<RemediationApproval>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default())
        .await
        .map_err(|e| api_error("reading the approvals", &e))?
        .items;
    let trust = input.policy.as_ref().map(|p| &p.trust);
    let deadline = rem.status.as_ref().and_then(|s| s.approval_deadline(trust.and_then(|t| t.approval_timeout)));
    let required = trust.map_or(1, |t| t.required_approvals);
    let approval = tally(rem, &approvals, deadline).decision(required, Time(jiff::Timestamp::now()));
    if let Some(rejected) = approval.as_ref().filter(|a| a.decision == ApprovalDecision::Reject) {
        return Err(refuse(&format!("{} rejected it (RemediationApproval {})", rejected.approver, rejected.name)));
    }
    gate_allows(&decision, approval.as_ref()).map_err(|m| refuse(&m))?;
    // Last, as it is the one check that waits rather than refuses.
    if restarts_pods(target.kind, proposal.patch_type, &proposal.patch.0) {
        let budgets = Api::<PodDisruptionBudget>::namespaced(client.clone(), &namespace)
            .list(&ListParams::default())
            .await
            .map_err(|e| api_error("reading the PodDisruptionBudgets", &e))?
            .items;
        let pods = if budgets.is_empty() { Vec::new() } else { pod_labels(client, &namespace, &current).await? };
        headroom(target.kind, &current, &pods, &budgets).map_err(|m| StageError::new(ErrorCategory::Deferred, m))?;
    }
    Ok(Rechecked { current, policy, revision, written })
}

/// The labels of the workload's Pods (those its selector selects).
async fn pod_labels(
    client: &kube::Client,
    namespace: &str,
    workload: &Value,
) -> StageResult<Vec<std::collections::BTreeMap<String, String>>> {
    let pods = crate::cluster::workload_pods(client, namespace, workload, "the target").await?;
    Ok(pods.into_iter().map(|p| p.metadata.labels.unwrap_or_default()).collect())
}

fn refuse(why: &str) -> StageError {
    StageError::new(ErrorCategory::NeedsHuman, format!("refusing to deploy: {why}"))
}

/// Whether Reflex may change an object of `kind` at all: a Job or CronJob is only diagnosed
/// (the machine, validation and the gate stop such a change first; deploy refuses it too).
///
/// # Errors
/// The kind is diagnosed only; the message says so.
pub fn changeable(kind: crate::api::TargetKind) -> Result<(), String> {
    if kind.diagnosed_only() {
        return Err(format!("Reflex never changes a {kind}: it only diagnoses one"));
    }
    Ok(())
}

/// The target is at the revision CI tested (`generation N`, or `resourceVersion R`); when it
/// is not, a `Conflict` — the change is tested again, never written over what changed.
pub fn unchanged_since_test(tested: Option<&CiResult>, now: Option<&str>) -> Result<(), StageError> {
    let again = |m: String| StageError::new(ErrorCategory::Conflict, m);
    match (tested.and_then(|ci| ci.target_revision.as_deref()), now) {
        (Some(then), Some(now)) if then == now => Ok(()),
        (Some(then), Some(now)) => {
            Err(again(format!("the target changed since CI tested the patch (tested at {then}, now {now})")))
        }
        (None, _) => Err(again("CI recorded no revision of the target it tested".to_owned())),
        (Some(_), None) => Err(refuse("the target reports no revision to compare with what CI tested")),
    }
}

/// The gate's decision now, with the decision the approvals make when it wants one.
pub fn gate_allows(gate: &GateResult, approval: Option<&ApprovalRecord>) -> Result<(), String> {
    match (gate.decision, approval) {
        (GateDecision::Approved, _) => Ok(()),
        (GateDecision::Denied, _) => Err(format!("the gate denies the change: {}", gate.reason)),
        (GateDecision::ApprovalRequired, Some(a)) if a.decision == ApprovalDecision::Approve => Ok(()),
        (GateDecision::ApprovalRequired, Some(a)) => {
            Err(format!("{} rejected it (RemediationApproval {})", a.approver, a.name))
        }
        (GateDecision::ApprovalRequired, None) => Err(format!(
            "the gate requires approval ({}) and the RemediationApprovals of this Remediation's proposal do not approve it",
            gate.reason
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::remediation::{CiBackend, CiVerdict};

    fn ci(revision: Option<&str>) -> CiResult {
        CiResult {
            proposal_digest: "sha256:x".into(),
            backend: CiBackend::DryRun,
            verdict: CiVerdict::Passed,
            messages: vec![],
            reference: None,
            target_revision: revision.map(str::to_owned),
            diff: None,
            log_tail: Vec::new(),
            pull_request: None,
        }
    }

    #[test]
    fn a_target_changed_since_ci_is_tested_again_not_overwritten() {
        assert!(unchanged_since_test(Some(&ci(Some("generation 2"))), Some("generation 2")).is_ok());
        let changed = unchanged_since_test(Some(&ci(Some("generation 2"))), Some("generation 3")).unwrap_err();
        assert_eq!(changed.category, ErrorCategory::Conflict);
        assert!(changed.message.contains("tested at generation 2, now generation 3"), "{changed}");
        let unknown = unchanged_since_test(Some(&ci(None)), Some("generation 2")).unwrap_err();
        assert_eq!(unknown.category, ErrorCategory::Conflict, "no recorded revision: no proof, test again");
        assert_eq!(unchanged_since_test(None, Some("generation 2")).unwrap_err().category, ErrorCategory::Conflict);
        let no_revision = unchanged_since_test(Some(&ci(Some("generation 2"))), None).unwrap_err();
        assert_eq!(no_revision.category, ErrorCategory::NeedsHuman);
    }

    #[test]
    fn a_job_is_never_deployed_to() {
        use crate::api::TargetKind;
        assert!(changeable(TargetKind::Deployment).is_ok());
        for kind in [TargetKind::Job, TargetKind::CronJob] {
            assert!(changeable(kind).unwrap_err().contains("only diagnoses"), "{kind}");
        }
    }

    fn approval(decision: &str) -> ApprovalRecord {
        serde_json::from_value(serde_json::json!({
            "name": "a1", "decision": decision, "approver": "alice", "decidedAt": "2026-01-01T00:00:00Z"
        }))
        .unwrap()
    }

    #[test]
    fn the_gate_is_decided_again_and_an_approval_must_be_there_now() {
        let gate = |decision| GateResult { decision, reason: "production, trust auto".into(), identity: None };
        assert_eq!(gate_allows(&gate(GateDecision::Approved), None), Ok(()));
        assert!(
            gate_allows(&gate(GateDecision::Denied), Some(&approval("approve"))).is_err(),
            "an approval cannot override a denial"
        );
        assert_eq!(gate_allows(&gate(GateDecision::ApprovalRequired), Some(&approval("approve"))), Ok(()));
        let rejected = gate_allows(&gate(GateDecision::ApprovalRequired), Some(&approval("reject"))).unwrap_err();
        assert!(rejected.contains("alice rejected"), "{rejected}");
        let missing = gate_allows(&gate(GateDecision::ApprovalRequired), None).unwrap_err();
        assert!(missing.contains("do not approve it"), "{missing}");
    }
}
