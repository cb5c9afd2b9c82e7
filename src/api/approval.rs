//! `RemediationApproval`: a person's recorded decision on one Remediation.
//!
//! Contract: plain data. Approvals are immutable records (a CEL transition rule refuses
//! edits); the chart's ValidatingAdmissionPolicy ties `approver` to the authenticated user.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::LocalObjectRef;
use super::remediation::Remediation;

/// Approve or reject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalDecision {
    /// Deploy the tested change.
    Approve,
    /// Do not deploy; the remediation is cancelled.
    Reject,
}

/// A person's decision on a Remediation waiting for approval.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "reflex.dev",
    version = "v1alpha1",
    kind = "RemediationApproval",
    namespaced,
    status = "RemediationApprovalStatus",
    shortname = "rappr",
    category = "reflex",
    doc = "A person's approve/reject decision on one Remediation. Immutable once created.",
    printcolumn(name = "Remediation", type_ = "string", json_path = ".spec.remediationRef.name"),
    printcolumn(name = "Decision", type_ = "string", json_path = ".spec.decision"),
    printcolumn(name = "Approver", type_ = "string", json_path = ".spec.approver"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("an approval is immutable: create a new RemediationApproval instead"))]
#[serde(rename_all = "camelCase")]
pub struct RemediationApprovalSpec {
    /// The Remediation (same namespace) this decision is for.
    pub remediation_ref: LocalObjectRef,
    /// `approve` or `reject`.
    pub decision: ApprovalDecision,
    /// The authenticated user making the decision (enforced by admission policy).
    #[schemars(length(min = 1, max = 253))]
    pub approver: String,
    /// Why, for the audit trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
}

/// What the operator did with an approval.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RemediationApprovalStatus {
    /// UID of the Remediation the decision was applied to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediation_uid: Option<String>,
    /// When the decision was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<Time>,
    /// `Ready` says whether the decision was applied, and why not (e.g. not awaiting approval).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The decision that applies to `rem` among `approvals`: those in its namespace, for its name,
/// created no earlier than it; a rejection wins over any approval. Pure — the controller
/// passes its cache, the deploy step a list it has just read from the API server.
pub fn deciding<'a>(
    rem: &Remediation,
    approvals: impl IntoIterator<Item = &'a RemediationApproval>,
) -> Option<&'a RemediationApproval> {
    let namespace = rem.metadata.namespace.as_deref()?;
    let name = rem.metadata.name.as_deref()?;
    let created = rem.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let mut candidates: Vec<&RemediationApproval> = approvals
        .into_iter()
        .filter(|a| a.metadata.namespace.as_deref() == Some(namespace) && a.spec.remediation_ref.name == name)
        .filter(|a| match (created, a.metadata.creation_timestamp.as_ref()) {
            (Some(rem_created), Some(a_created)) => a_created.0 >= rem_created,
            _ => true,
        })
        .collect();
    candidates.sort_by_key(|a| a.spec.decision != ApprovalDecision::Reject);
    candidates.first().copied()
}
