//! Patches: proposal types, the patch-safety check, and the guard type that only a tested
//! patch can become.
//!
//! Contract: pure. [`TestedPatch`] can only be built from a proposal together with a
//! passing CI result for the same digest, so nothing untested can reach deploy.

pub mod image;
pub mod merge;
pub mod safety;
pub mod tree;

use sha2::{Digest, Sha256};

use crate::api::remediation::{CiResult, CiVerdict, Proposal};

/// `sha256:<hex>` of a patch's canonical JSON (serde_json sorts object keys).
pub fn digest(patch: &serde_json::Value) -> String {
    let canonical = patch.to_string();
    let hash = Sha256::digest(canonical.as_bytes());
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in hash {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// A proposal that passed CI for exactly its digest. Only this type can be deployed.
#[derive(Clone, Debug, PartialEq)]
pub struct TestedPatch {
    proposal: Proposal,
}

impl TestedPatch {
    /// Pairs a proposal with its CI result; `None` unless CI passed this exact patch.
    pub fn new(proposal: &Proposal, ci: &CiResult) -> Option<Self> {
        let intact = digest(&proposal.patch.0) == proposal.digest;
        (intact && ci.verdict == CiVerdict::Passed && ci.proposal_digest == proposal.digest)
            .then(|| Self { proposal: proposal.clone() })
    }

    /// The tested proposal.
    pub fn proposal(&self) -> &Proposal {
        &self.proposal
    }
}

/// Fixtures shared by tests across modules.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::digest;
    use crate::api::{
        AnyJson,
        playbook::PatchType,
        remediation::{Proposal, ProposalSource},
    };

    /// A playbook proposal for `patch`, with its digest filled in.
    pub(crate) fn proposal(patch: serde_json::Value) -> Proposal {
        Proposal {
            patch_type: PatchType::Strategic,
            digest: digest(&patch),
            patch: AnyJson(patch),
            rationale: "raise the limit".into(),
            expected_effect: None,
            produced_by: ProposalSource::Playbook,
            playbook: Some("raise-memory-limit".into()),
            model: None,
            tokens: None,
            cost_usd: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::proposal;
    use super::*;
    use crate::api::{AnyJson, remediation::CiBackend};

    fn ci(digest: &str, verdict: CiVerdict) -> CiResult {
        CiResult {
            proposal_digest: digest.into(),
            backend: CiBackend::DryRun,
            verdict,
            messages: vec![],
            reference: None,
            target_revision: None,
            diff: None,
            log_tail: Vec::new(),
            pull_request: None,
        }
    }

    #[test]
    fn digest_is_stable_under_key_order() {
        let a = serde_json::json!({"a": 1, "b": {"c": 2, "d": 3}});
        let b: serde_json::Value = serde_json::from_str(r#"{"b":{"d":3,"c":2},"a":1}"#).unwrap();
        assert_eq!(digest(&a), digest(&b));
        assert!(digest(&a).starts_with("sha256:") && digest(&a).len() == 71);
    }

    #[test]
    fn only_a_passing_ci_for_the_same_patch_makes_it_deployable() {
        let p = proposal(serde_json::json!({"spec": {"replicas": 3}}));
        assert!(TestedPatch::new(&p, &ci(&p.digest, CiVerdict::Passed)).is_some());
        assert!(TestedPatch::new(&p, &ci(&p.digest, CiVerdict::Failed)).is_none());
        assert!(TestedPatch::new(&p, &ci("sha256:other", CiVerdict::Passed)).is_none());
        let mut tampered = p.clone();
        tampered.patch = AnyJson(serde_json::json!({"spec": {"replicas": 300}}));
        assert!(
            TestedPatch::new(&tampered, &ci(&p.digest, CiVerdict::Passed)).is_none(),
            "a patch edited after CI must not deploy"
        );
    }
}
