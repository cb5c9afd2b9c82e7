//! What a person does to a Remediation — approve, reject, cancel, look — always as
//! themselves: every request uses the caller's own client (their kubeconfig, or the identity
//! Reflex's MCP server impersonates for them), so RBAC and the approval admission policy
//! decide. Used by `reflex approve|reject|cancel|get|describe|explain` (also `kubectl reflex
//! …`) and by the MCP action tools.
//!
//! Contract: [`approval_for`] and [`describe`] are pure; [`decide`] and [`cancel`] each make
//! one request as the caller and change nothing else. Refusals name what to do.

use std::fmt::Write as _;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::api::approval::{ApprovalDecision, RemediationApproval, RemediationApprovalSpec, RemediationRef};
use crate::api::remediation::{Phase, Remediation};

pub mod explain;

/// Why a person's action did not happen.
#[derive(Debug, thiserror::Error)]
pub enum OncallError {
    /// The Remediation is not there (or the caller may not see it).
    #[error("Remediation {namespace}/{name}: {source}")]
    ReadRemediation {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Nothing to approve or reject yet, or any more.
    #[error("{0}")]
    NothingToDecide(String),
    /// Asking the API server who the caller is failed.
    #[error("who am I (SelfSubjectReview): {0}")]
    WhoAmI(String),
    /// The API server refused the request (RBAC, the approval admission policy, validation).
    #[error("{what}: {source}")]
    Write {
        /// What was being done.
        what: String,
        /// The API error, with the server's message.
        #[source]
        source: kube::Error,
    },
}

/// The caller's username, as the API server knows it (a SelfSubjectReview).
///
/// # Errors
/// [`OncallError::WhoAmI`] when the API server does not answer it.
pub async fn whoami(client: &kube::Client) -> Result<String, OncallError> {
    let review = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(|e| OncallError::WhoAmI(e.to_string()))?;
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| OncallError::WhoAmI("the API server named no user".into()))
}

/// The approval (or rejection) of `rem`'s current proposal by `approver`: bound to the
/// Remediation's uid and, to approve, to its proposal's digest. Pure.
///
/// # Errors
/// [`OncallError::NothingToDecide`] when there is no proposal to approve, or the Remediation
/// has ended.
pub fn approval_for(
    rem: &Remediation,
    decision: ApprovalDecision,
    approver: &str,
    reason: Option<String>,
    suffix: &str,
) -> Result<RemediationApproval, OncallError> {
    let name = rem.metadata.name.clone().unwrap_or_default();
    let uid = rem.metadata.uid.clone().unwrap_or_default();
    let status = rem.status.clone().unwrap_or_default();
    if status.phase.is_terminal() {
        return Err(OncallError::NothingToDecide(format!(
            "Remediation {name} has ended (phase {}); there is nothing to decide",
            status.phase
        )));
    }
    let digest = status.proposal.map(|p| p.digest);
    if decision == ApprovalDecision::Approve && digest.is_none() {
        return Err(OncallError::NothingToDecide(format!(
            "Remediation {name} has no proposal yet (phase {}); approve once it waits in {}",
            status.phase,
            Phase::AwaitingApproval
        )));
    }
    let verb = match decision {
        ApprovalDecision::Approve => "approve",
        ApprovalDecision::Reject => "reject",
    };
    let mut object = RemediationApproval::new(
        &approval_name(&name, verb, suffix),
        RemediationApprovalSpec {
            remediation_ref: RemediationRef { name, uid },
            proposal_digest: digest,
            decision,
            approver: approver.to_owned(),
            reason,
        },
    );
    object.metadata.namespace = rem.metadata.namespace.clone();
    Ok(object)
}

/// `<remediation>-<verb>-<suffix>`, cut to fit an object name.
fn approval_name(remediation: &str, verb: &str, suffix: &str) -> String {
    let tail = format!("-{verb}-{suffix}");
    let mut head = remediation.to_owned();
    let room = 253usize.saturating_sub(tail.len());
    if head.len() > room {
        head.truncate(room);
        head = head.trim_end_matches(['-', '.']).to_owned();
    }
    format!("{head}{tail}")
}

/// Approves or rejects Remediation `namespace/name` as the caller, who must be allowed to
/// create RemediationApprovals there (and, with the admission policy, may only name
/// themselves as the approver).
///
/// # Errors
/// The Remediation cannot be read, has nothing to decide, or the API server refused.
/// `reviewed`: the proposal digest the person looked at; the decision is refused when the
/// Remediation proposes something else by now.
pub async fn decide(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    decision: ApprovalDecision,
    reason: Option<String>,
    reviewed: Option<&str>,
) -> Result<RemediationApproval, OncallError> {
    let rem = Api::<Remediation>::namespaced(client.clone(), namespace).get(name).await.map_err(|source| {
        OncallError::ReadRemediation { namespace: namespace.to_owned(), name: name.to_owned(), source }
    })?;
    let current = rem.status.as_ref().and_then(|s| s.proposal.as_ref()).map(|p| p.digest.as_str());
    if let Some(reviewed) = reviewed
        && current != Some(reviewed)
    {
        return Err(OncallError::NothingToDecide(format!(
            "Remediation {name} proposes {} now, not the {reviewed} you reviewed; look again (reflex describe {name})",
            current.unwrap_or("nothing")
        )));
    }
    let me = whoami(client).await?;
    let suffix = uuid::Uuid::new_v4().simple().to_string()[..6].to_owned();
    let approval = approval_for(&rem, decision, &me, reason, &suffix)?;
    Api::<RemediationApproval>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &approval)
        .await
        .map_err(|source| OncallError::Write { what: format!("creating RemediationApproval as {me}"), source })
}

/// Cancels Remediation `namespace/name` as the caller (`spec.cancel: true`): nothing further is
/// deployed; a change already applied is left to verification and rollback.
///
/// # Errors
/// The API server refused (RBAC: `patch remediations`).
pub async fn cancel(client: &kube::Client, namespace: &str, name: &str) -> Result<Remediation, OncallError> {
    Api::<Remediation>::namespaced(client.clone(), namespace)
        .patch(name, &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"cancel": true}})))
        .await
        .map_err(|source| OncallError::Write { what: format!("cancelling Remediation {namespace}/{name}"), source })
}

/// A person's view of one Remediation: phase and why, the proposal, CI, the gate, approvals,
/// the deploy, verification. Pure.
/// The Events about Remediation `namespace/name` (events.k8s.io), as `explain` reads them.
///
/// # Errors
/// The Events cannot be listed (the caller's RBAC, say).
pub async fn happenings(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Vec<explain::Happening>, kube::Error> {
    use k8s_openapi::api::events::v1::Event;
    let fields = format!("regarding.kind=Remediation,regarding.name={name}");
    let list = Api::<Event>::namespaced(client.clone(), namespace)
        .list(&kube::api::ListParams::default().fields(&fields))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|e| {
            let at = e.event_time.map(|t| t.0).or(e.metadata.creation_timestamp.map(|t| t.0))?;
            Some(explain::Happening { at, reason: e.reason.unwrap_or_default(), note: e.note.unwrap_or_default() })
        })
        .collect())
}

pub fn describe(rem: &Remediation) -> String {
    let mut out = String::new();
    let name = rem.metadata.name.as_deref().unwrap_or_default();
    let ns = rem.metadata.namespace.as_deref().unwrap_or_default();
    let status = rem.status.clone().unwrap_or_default();
    let _ = writeln!(out, "Remediation {ns}/{name} (uid {})", rem.metadata.uid.as_deref().unwrap_or("?"));
    let _ = writeln!(out, "  policy     {}", rem.spec.policy_ref.name);
    let _ = writeln!(out, "  alert      {} ({})", rem.spec.alert.name, rem.spec.alert.fingerprint);
    let _ = writeln!(out, "  target     {} {}", rem.spec.target.kind.as_str(), rem.spec.target.name);
    let _ =
        writeln!(out, "  phase      {}{}", status.phase, status.message.map(|m| format!(": {m}")).unwrap_or_default());
    if let Some(p) = &status.proposal {
        let _ = writeln!(out, "  proposal   {} ({:?}) — {}", p.digest, p.produced_by, p.rationale);
        let _ = writeln!(out, "  patch      {:?} {}", p.patch_type, p.patch.0);
    }
    if let Some(ci) = &status.ci {
        let _ = writeln!(out, "  ci         {:?}: {}", ci.verdict, ci.messages.join("; "));
    }
    if let Some(g) = &status.gate {
        let _ = writeln!(out, "  gate       {:?}: {}", g.decision, g.reason);
    }
    if let Some(a) = &status.approval {
        let _ = writeln!(out, "  approval   {:?} by {} ({})", a.decision, a.approver, a.name);
    } else if status.phase == Phase::AwaitingApproval {
        let _ = writeln!(out, "  approval   waiting: reflex approve {name} -n {ns} [--reason ...]");
    }
    if let Some(d) = &status.deploy {
        let _ = writeln!(
            out,
            "  deploy     {} as {}",
            d.applied_revision.as_deref().unwrap_or("not applied"),
            d.identity.as_deref().unwrap_or("-")
        );
    }
    if let Some(v) = &status.verification {
        let _ = writeln!(out, "  verify     {:?}: {}", v.verdict, v.message.as_deref().unwrap_or(""));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rem(phase: &str, proposal: bool) -> Remediation {
        let mut status = serde_json::json!({"phase": phase});
        if proposal {
            status["proposal"] = serde_json::json!({"patchType": "strategic", "patch": {}, "digest": "sha256:abc",
                "rationale": "raise the limit", "producedBy": "playbook"});
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "reflex.dev/v1alpha1", "kind": "Remediation",
            "metadata": {"name": "checkout-oom-1", "namespace": "shop", "uid": "u-1"},
            "spec": {"policyRef": {"name": "p"}, "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "checkout"},
                     "alert": {"name": "A", "fingerprint": "f", "startsAt": "2026-01-01T00:00:00Z"}},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn an_approval_is_bound_to_the_remediation_and_its_current_proposal_as_the_person() {
        let a =
            approval_for(&rem("AwaitingApproval", true), ApprovalDecision::Approve, "alice", None, "x1y2z3").unwrap();
        assert_eq!(a.metadata.name.as_deref(), Some("checkout-oom-1-approve-x1y2z3"));
        assert_eq!(a.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(a.spec.remediation_ref, RemediationRef { name: "checkout-oom-1".into(), uid: "u-1".into() });
        assert_eq!((a.spec.proposal_digest.as_deref(), a.spec.approver.as_str()), (Some("sha256:abc"), "alice"));
    }

    #[test]
    fn there_is_nothing_to_approve_before_a_proposal_or_after_the_end() {
        let early = approval_for(&rem("Diagnosing", false), ApprovalDecision::Approve, "alice", None, "x").unwrap_err();
        assert!(early.to_string().contains("no proposal yet"), "{early}");
        assert!(
            approval_for(&rem("Diagnosing", false), ApprovalDecision::Reject, "alice", None, "x").is_ok(),
            "a rejection needs none"
        );
        let late = approval_for(&rem("Succeeded", true), ApprovalDecision::Approve, "alice", None, "x").unwrap_err();
        assert!(late.to_string().contains("has ended"), "{late}");
        assert!(approval_name(&"r".repeat(300), "approve", "abcdef").len() <= 253);
    }
}
