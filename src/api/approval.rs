//! `RemediationApproval`: a person's recorded decision on one Remediation.
//!
//! Contract: plain data and the pure rules of what an approval counts for. Approvals are
//! immutable records (a CEL transition rule refuses edits) bound to one Remediation (its uid)
//! and, to approve, one proposal (its digest); the chart's ValidatingAdmissionPolicy ties
//! `approver` to the authenticated user. [`verdict`] says whether one approval counts;
//! [`tally`] counts a Remediation's approvals.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use k8s_openapi::jiff::Timestamp;

use super::remediation::{ApprovalRecord, Remediation};

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
#[x_kube(validation = Rule::new("self.decision == 'reject' || has(self.proposalDigest)").message("an approval names the proposal it approves: spec.proposalDigest is the Remediation's status.proposal.digest"))]
#[serde(rename_all = "camelCase")]
pub struct RemediationApprovalSpec {
    /// The Remediation (same namespace) this decision is for: its name and uid, so an approval
    /// never carries over to a later Remediation of the same name.
    pub remediation_ref: RemediationRef,
    /// The digest of the proposal approved (`status.proposal.digest`); required to approve.
    /// An approval of another proposal does not count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 80))]
    pub proposal_digest: Option<String>,
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

/// One Remediation, by name and uid.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RemediationRef {
    /// The Remediation's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The Remediation's uid (`metadata.uid`).
    #[schemars(length(min = 1, max = 64))]
    pub uid: String,
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

/// Why an approval counts or not: a reason constant and what a person can do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Whether it counts toward the Remediation's decision.
    pub counted: bool,
    /// `Counted`, `RemediationNotFound`, `OtherRemediation`, `OtherProposal` or `Expired`.
    pub reason: &'static str,
    /// What it means, for the approval's status and Event.
    pub message: String,
}

/// Reasons of an approval's `Ready` condition.
pub mod reason {
    /// The decision counts toward its Remediation's.
    pub const COUNTED: &str = "Counted";
    /// No Remediation by that name in the namespace.
    pub const REMEDIATION_NOT_FOUND: &str = "RemediationNotFound";
    /// The Remediation by that name is another one (another uid).
    pub const OTHER_REMEDIATION: &str = "OtherRemediation";
    /// It approves another proposal than the one the Remediation now proposes.
    pub const OTHER_PROPOSAL: &str = "OtherProposal";
    /// It came after the Remediation's approval deadline.
    pub const EXPIRED: &str = "Expired";
}

/// Whether `approval` counts for `rem` (`None`: no Remediation by its name): the same uid,
/// the proposal `rem` proposes now (to approve), and made before `deadline`.
pub fn verdict(approval: &RemediationApproval, rem: Option<&Remediation>, deadline: Option<Timestamp>) -> Verdict {
    let target = &approval.spec.remediation_ref;
    let no = |reason, message: String| Verdict { counted: false, reason, message };
    let Some(rem) = rem else {
        return no(
            reason::REMEDIATION_NOT_FOUND,
            format!("there is no Remediation {:?} in this namespace", target.name),
        );
    };
    if rem.metadata.uid.as_deref() != Some(target.uid.as_str()) {
        return no(
            reason::OTHER_REMEDIATION,
            format!(
                "Remediation {:?} is another one now (uid {}, not {}); approve the current one",
                target.name,
                rem.metadata.uid.as_deref().unwrap_or("?"),
                target.uid
            ),
        );
    }
    if let (Some(deadline), Some(made)) = (deadline, approval.metadata.creation_timestamp.as_ref())
        && made.0 > deadline
    {
        return no(reason::EXPIRED, format!("made after the approval deadline ({deadline})"));
    }
    if approval.spec.decision == ApprovalDecision::Approve {
        let current = rem.status.as_ref().and_then(|s| s.proposal.as_ref()).map(|p| p.digest.as_str());
        let approved = approval.spec.proposal_digest.as_deref();
        if approved.is_none() || approved != current {
            return no(
                reason::OTHER_PROPOSAL,
                format!(
                    "approves proposal {}, but the Remediation proposes {}",
                    approved.unwrap_or("(none named)"),
                    current.unwrap_or("nothing yet")
                ),
            );
        }
    }
    let what = match approval.spec.decision {
        ApprovalDecision::Approve => "approval",
        ApprovalDecision::Reject => "rejection",
    };
    Verdict {
        counted: true,
        reason: reason::COUNTED,
        message: format!("the {what} counts for Remediation {:?}", target.name),
    }
}

/// How a Remediation's approvals stand: a counted rejection, and the distinct people whose
/// approvals count (the first approval of each).
#[derive(Debug, Default)]
pub struct Tally<'a> {
    /// A counted rejection, which wins over any number of approvals.
    pub rejected: Option<&'a RemediationApproval>,
    /// Counted approvals, one per approver.
    pub approved: Vec<&'a RemediationApproval>,
}

/// Counts `approvals` (those in `rem`'s namespace naming it) for `rem`. Pure — the
/// controller passes its cache, the deploy step a list it has just read from the API server.
pub fn tally<'a>(
    rem: &Remediation,
    approvals: impl IntoIterator<Item = &'a RemediationApproval>,
    deadline: Option<Timestamp>,
) -> Tally<'a> {
    let mut out = Tally::default();
    let (Some(namespace), Some(name)) = (rem.metadata.namespace.as_deref(), rem.metadata.name.as_deref()) else {
        return out;
    };
    let mut mine: Vec<&RemediationApproval> = approvals
        .into_iter()
        .filter(|a| a.metadata.namespace.as_deref() == Some(namespace) && a.spec.remediation_ref.name == name)
        .filter(|a| verdict(a, Some(rem), deadline).counted)
        .collect();
    mine.sort_by_key(|a| a.metadata.creation_timestamp.as_ref().map(|t| t.0));
    for a in mine {
        match a.spec.decision {
            ApprovalDecision::Reject => {
                out.rejected.get_or_insert(a);
            }
            ApprovalDecision::Approve => {
                if !out.approved.iter().any(|b| b.spec.approver == a.spec.approver) {
                    out.approved.push(a);
                }
            }
        }
    }
    out
}

impl Tally<'_> {
    /// The decision, once there is one: a rejection, or approvals by `required` distinct
    /// people (at least one).
    pub fn decision(
        &self,
        required: u32,
        decided_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    ) -> Option<ApprovalRecord> {
        if let Some(r) = self.rejected {
            return Some(ApprovalRecord {
                name: r.metadata.name.clone().unwrap_or_default(),
                decision: ApprovalDecision::Reject,
                approver: r.spec.approver.clone(),
                reason: r.spec.reason.clone(),
                decided_at,
            });
        }
        let needed = usize::try_from(required.max(1)).unwrap_or(usize::MAX);
        (self.approved.len() >= needed).then(|| {
            let names: Vec<&str> = self.approved.iter().filter_map(|a| a.metadata.name.as_deref()).collect();
            let who: Vec<&str> = self.approved.iter().map(|a| a.spec.approver.as_str()).collect();
            let reasons: Vec<&str> = self.approved.iter().filter_map(|a| a.spec.reason.as_deref()).collect();
            ApprovalRecord {
                name: names.join(", "),
                decision: ApprovalDecision::Approve,
                approver: who.join(", "),
                reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
                decided_at,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rem() -> Remediation {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "reflex.dev/v1alpha1", "kind": "Remediation",
            "metadata": {"name": "r", "namespace": "shop", "uid": "u-1", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"policyRef": {"name": "p"}, "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "checkout"},
                     "alert": {"name": "A", "fingerprint": "f", "startsAt": "2026-01-01T00:00:00Z"}},
            "status": {"phase": "AwaitingApproval", "proposal": {"patchType": "strategic", "patch": {}, "digest": "sha256:now",
                       "rationale": "r", "producedBy": "playbook"}}
        }))
        .unwrap()
    }

    fn approval(name: &str, approver: &str, decision: &str, uid: &str, digest: &str, at: &str) -> RemediationApproval {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "reflex.dev/v1alpha1", "kind": "RemediationApproval",
            "metadata": {"name": name, "namespace": "shop", "creationTimestamp": at},
            "spec": {"remediationRef": {"name": "r", "uid": uid}, "decision": decision, "approver": approver, "proposalDigest": digest}
        }))
        .unwrap()
    }

    const AT: &str = "2026-01-01T00:05:00Z";

    #[test]
    fn an_approval_counts_only_for_its_remediation_its_proposal_and_before_the_deadline() {
        let r = rem();
        let good = approval("a", "alice", "approve", "u-1", "sha256:now", AT);
        assert!(verdict(&good, Some(&r), None).counted);
        assert_eq!(verdict(&good, None, None).reason, reason::REMEDIATION_NOT_FOUND);
        let other_uid = approval("a", "alice", "approve", "u-0", "sha256:now", AT);
        assert_eq!(verdict(&other_uid, Some(&r), None).reason, reason::OTHER_REMEDIATION);
        let stale = approval("a", "alice", "approve", "u-1", "sha256:before", AT);
        let v = verdict(&stale, Some(&r), None);
        assert_eq!(v.reason, reason::OTHER_PROPOSAL);
        assert!(v.message.contains("sha256:before") && v.message.contains("sha256:now"), "{}", v.message);
        let deadline: Timestamp = "2026-01-01T00:04:00Z".parse().unwrap();
        assert_eq!(verdict(&good, Some(&r), Some(deadline)).reason, reason::EXPIRED);
        let reject_any = approval("x", "bob", "reject", "u-1", "sha256:before", AT);
        assert!(verdict(&reject_any, Some(&r), None).counted, "a rejection stops whatever is proposed");
    }

    #[test]
    fn n_distinct_approvers_decide_and_a_rejection_wins() {
        let r = rem();
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::UNIX_EPOCH);
        let alice = approval("a1", "alice", "approve", "u-1", "sha256:now", AT);
        let alice_again = approval("a2", "alice", "approve", "u-1", "sha256:now", "2026-01-01T00:06:00Z");
        let carol = approval("a3", "carol", "approve", "u-1", "sha256:now", "2026-01-01T00:07:00Z");
        let t = tally(&r, [&alice, &alice_again], None);
        assert!(t.decision(2, now.clone()).is_none(), "one person approving twice is one approver");
        let t = tally(&r, [&alice, &alice_again, &carol], None);
        let d = t.decision(2, now.clone()).unwrap();
        assert_eq!((d.decision, d.approver.as_str()), (ApprovalDecision::Approve, "alice, carol"));
        let bob = approval("b", "bob", "reject", "u-1", "sha256:now", AT);
        let d = tally(&r, [&alice, &carol, &bob], None).decision(2, now).unwrap();
        assert_eq!((d.decision, d.approver.as_str()), (ApprovalDecision::Reject, "bob"));
    }
}
