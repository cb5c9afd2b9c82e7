//! The trust gate: may this tested change deploy now, does it need a human, or must it not
//! happen at all?
//!
//! Contract: pure [`decide`] over the environment and the policy's trust settings — `observe`
//! never deploys; `propose` always waits for approval; `auto` deploys to staging, and to
//! production only through approval until it has earned trust (enough verified successes in a
//! row, and no other change of the policy still unverified). The shell
//! reads the namespace label `reflex.dev/environment` (unlabelled = production, the safe
//! default); the policy's `environment` can only make that stricter.

use futures::FutureExt;

use crate::api::policy::{MergeApproval, TrustLevel};
use crate::api::remediation::{GateDecision, GateResult};
use crate::api::validate::{ValidCi, ValidTrust};
use crate::api::{Environment, ErrorCategory};
use kube::api::Api;

use crate::api::RemediationPolicy;
use crate::cluster::{api_error, environment};
use crate::ports::{Gate, StageError, StageFuture, StageInput};

/// Decide for one change.
///
/// `verified`: the policy's verified successes in a row within its earned-trust window; at
/// `auto`, production changes go through without a human once there are enough and no other
/// change of the policy is still `unverified` (the Remediation named).
pub fn decide(env: Environment, trust: &ValidTrust, verified: u32, unverified: Option<&str>) -> GateResult {
    let env_name = match env {
        Environment::Staging => "staging",
        Environment::Production => "production",
    };
    let (decision, reason) = match (trust.level, env) {
        (TrustLevel::Observe, _) => (GateDecision::Denied, "trust level observe: Reflex only reports".to_owned()),
        (TrustLevel::Propose, _) => {
            (GateDecision::ApprovalRequired, "trust level propose: a human approves every change".to_owned())
        }
        (TrustLevel::Auto, _) if trust.require_approval => {
            (GateDecision::ApprovalRequired, format!("{env_name}, trust auto, but the policy requires approval"))
        }
        (TrustLevel::Auto, Environment::Staging) => (GateDecision::Approved, "staging, trust auto".to_owned()),
        (TrustLevel::Auto, Environment::Production) if verified >= trust.successes_required => match unverified {
            None => (
                GateDecision::Approved,
                format!("production, trust auto, earned: {verified} verified successes in a row"),
            ),
            Some(other) => (
                GateDecision::ApprovalRequired,
                format!(
                    "production, trust auto, earned ({verified} verified successes in a row), but the change of {other} is not verified yet; waits for approval"
                ),
            ),
        },
        (TrustLevel::Auto, Environment::Production) => (
            GateDecision::ApprovalRequired,
            format!(
                "production, trust auto: {verified} of {} verified successes in a row; waits for approval until trust is earned",
                trust.successes_required
            ),
        ),
    };
    GateResult { decision, reason, identity: None }
}

/// A GitOps policy whose merges the forge's own review approves (`mergeApproval: forge`): a
/// change that would wait for a RemediationApproval goes on to the merge, which waits for the
/// pull request's approval instead. `observe` still never deploys.
pub fn by_forge_review(decided: GateResult) -> GateResult {
    match decided.decision {
        GateDecision::ApprovalRequired => GateResult {
            decision: GateDecision::Approved,
            reason: format!(
                "{}; the pull request's review on the forge approves the merge (mergeApproval: forge)",
                decided.reason
            ),
            identity: decided.identity,
        },
        _ => decided,
    }
}

/// Reads the environment, then [`decide`]s.
#[derive(Clone)]
pub struct TrustGate {
    pub client: kube::Client,
}

impl Gate for TrustGate {
    fn gate(&self, input: StageInput) -> StageFuture<GateResult> {
        let client = self.client.clone();
        async move {
            let policy = input
                .policy
                .clone()
                .ok_or_else(|| StageError::new(ErrorCategory::InvalidSpec, "the policy is missing"))?;
            let env = environment(&client, &input.remediation, Some(&policy)).await?;
            // The record is re-read from the API server for every decision.
            let rem = &input.remediation;
            let namespace = rem.metadata.namespace.clone().unwrap_or_default();
            let object = Api::<RemediationPolicy>::namespaced(client, &namespace)
                .get(&rem.spec.policy_ref.name)
                .await
                .map_err(|e| api_error(&format!("reading policy {namespace}/{}", rem.spec.policy_ref.name), &e))?;
            let basis = object.spec.trust_basis();
            let record = object.status.map(|s| s.trust).unwrap_or_default();
            // Only successes earned under this very spec count.
            let verified = record.verified_within(policy.trust.window, jiff::Timestamp::now(), &basis);
            let uid = rem.metadata.uid.clone().unwrap_or_default();
            let unverified = record.unresolved_besides(&uid).map(|p| p.remediation.clone());
            let decided = decide(env, &policy.trust, verified, unverified.as_deref());
            let forge_review =
                matches!(&policy.ci, ValidCi::Gitops(g) if g.spec.merge_approval == MergeApproval::Forge);
            Ok(if forge_review { by_forge_review(decided) } else { decided })
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn with_forge_review_a_waiting_change_goes_to_the_merge_and_observe_never_does() {
        let t = |level| super::ValidTrust { level, ..trust(level, false) };
        let waiting = super::by_forge_review(decide(Environment::Production, &t(TrustLevel::Propose), 0, None));
        assert_eq!(waiting.decision, GateDecision::Approved);
        assert!(waiting.reason.contains("mergeApproval: forge"), "{}", waiting.reason);
        let observe = super::by_forge_review(decide(Environment::Production, &t(TrustLevel::Observe), 0, None));
        assert_eq!(observe.decision, GateDecision::Denied);
    }

    use super::*;
    use std::time::Duration;

    fn trust(level: TrustLevel, require_approval: bool) -> ValidTrust {
        ValidTrust {
            level,
            require_approval,
            successes_required: 3,
            window: Duration::from_secs(3600),
            required_approvals: 1,
            approval_timeout: None,
        }
    }

    #[test]
    fn a_policy_cannot_relax_its_namespace() {
        use Environment::*;
        assert_eq!(Environment::stricter(Some(Staging), Production), Production);
        assert_eq!(Environment::stricter(Some(Production), Staging), Production);
        assert_eq!(Environment::stricter(None, Staging), Staging);
        assert_eq!(Environment::stricter(Some(Staging), Staging), Staging);
    }

    #[test]
    fn only_auto_in_staging_deploys_unattended() {
        use GateDecision::*;
        let cases = [
            (TrustLevel::Auto, false, Environment::Staging, Approved),
            (TrustLevel::Auto, false, Environment::Production, ApprovalRequired),
            (TrustLevel::Auto, true, Environment::Staging, ApprovalRequired),
            (TrustLevel::Propose, false, Environment::Staging, ApprovalRequired),
            (TrustLevel::Observe, false, Environment::Staging, Denied),
            (TrustLevel::Observe, true, Environment::Production, Denied),
        ];
        for (level, approval, env, want) in cases {
            assert_eq!(decide(env, &trust(level, approval), 0, None).decision, want, "{level:?} {approval} {env:?}");
        }
    }

    #[test]
    fn production_at_auto_goes_through_once_trust_is_earned() {
        let auto = trust(TrustLevel::Auto, false);
        let waiting = decide(Environment::Production, &auto, 2, None);
        assert_eq!(waiting.decision, GateDecision::ApprovalRequired);
        assert!(waiting.reason.contains("2 of 3 verified successes"), "{}", waiting.reason);
        assert_eq!(decide(Environment::Production, &auto, 3, None).decision, GateDecision::Approved);
        let in_flight = decide(Environment::Production, &auto, 3, Some("checkout-oom-7"));
        assert_eq!(in_flight.decision, GateDecision::ApprovalRequired, "another change not verified yet");
        assert!(in_flight.reason.contains("checkout-oom-7 is not verified yet"), "{}", in_flight.reason);
        let strict = trust(TrustLevel::Auto, true);
        assert_eq!(
            decide(Environment::Production, &strict, 100, None).decision,
            GateDecision::ApprovalRequired,
            "requireApproval always waits"
        );
        assert_eq!(
            decide(Environment::Production, &trust(TrustLevel::Propose, false), 100, None).decision,
            GateDecision::ApprovalRequired
        );
    }
}
