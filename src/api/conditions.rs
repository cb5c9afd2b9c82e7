//! Status conditions: the types Reflex sets, the reasons it gives, and the merge rule.
//!
//! Contract: [`merge`] is pure. It keeps `lastTransitionTime` unless the condition's
//! status flips, and reports whether anything but timestamps changed, so callers skip
//! writes that would only churn the object.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Condition types Reflex sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConditionType {
    /// True once the object has reached its goal (a Remediation has Succeeded, a policy
    /// or playbook is valid).
    Ready,
    /// True while the remediation loop is moving forward.
    Progressing,
    /// True when the loop cannot move without outside help (missing stage, bad policy).
    Stalled,
}

impl ConditionType {
    /// The condition's `type` as written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::Progressing => "Progressing",
            Self::Stalled => "Stalled",
        }
    }
}

/// Reasons: every condition and Event Reflex writes uses one of these constants.
pub mod reason {
    /// The remediation is being processed.
    pub const IN_PROGRESS: &str = "InProgress";
    /// The loop started.
    pub const STARTED: &str = "Started";
    /// A proposal was produced.
    pub const PROPOSED: &str = "Proposed";
    /// Testing of the proposal began.
    pub const TESTING: &str = "Testing";
    /// A person must approve before deploy.
    pub const APPROVAL_REQUIRED: &str = "ApprovalRequired";
    /// The change may be deployed.
    pub const APPROVED: &str = "Approved";
    /// A person rejected the change.
    pub const APPROVAL_REJECTED: &str = "ApprovalRejected";
    /// No approval came within the policy's `trust.approvalTimeout`.
    pub const APPROVAL_EXPIRED: &str = "ApprovalExpired";
    /// The change was applied; verification runs.
    pub const DEPLOYED: &str = "Deployed";
    /// Verification held: the fix worked.
    pub const VERIFIED: &str = "Verified";
    /// Verification did not hold; the change is being reverted.
    pub const VERIFICATION_FAILED: &str = "VerificationFailed";
    /// Deploy could not complete after a snapshot was taken; reverting.
    pub const DEPLOY_FAILED: &str = "DeployFailed";
    /// The previous state was restored.
    pub const ROLLED_BACK: &str = "RolledBack";
    /// CI rejected the proposal.
    pub const TESTS_FAILED: &str = "TestsFailed";
    /// The alert resolved before anything was deployed.
    pub const ALERT_RESOLVED: &str = "AlertResolved";
    /// A person asked to stop.
    pub const CANCEL_REQUESTED: &str = "CancelRequested";
    /// The wall-clock budget before deploy ran out.
    pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
    /// A stage reported its budget exhausted.
    pub const BUDGET_EXHAUSTED: &str = "BudgetExhausted";
    /// A stage kept failing.
    pub const REPEATED_FAILURE: &str = "RepeatedFailure";
    /// RBAC refused a stage.
    pub const FORBIDDEN: &str = "Forbidden";
    /// A stage found the input unusable.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Something a stage needed does not exist.
    pub const NOT_FOUND: &str = "NotFound";
    /// The playbook's requirements do not hold for what it found: it stood aside.
    pub const NOT_APPLICABLE: &str = "NotApplicable";
    /// The policy only diagnoses (trust level `observe`): the findings are for people.
    pub const DIAGNOSED: &str = "Diagnosed";
    /// The agent escalated, or its proposal was refused by the patch-safety check.
    pub const AGENT_ESCALATED: &str = "AgentEscalated";
    /// The gate decided only humans may act.
    pub const HUMANS_ONLY: &str = "HumansOnly";
    /// The policy is suspended (`limits.suspend`): nothing more happens before deploy.
    pub const SUSPENDED: &str = "Suspended";
    /// The operator's cap on concurrent deploys is reached: a deploy waits for one to finish.
    pub const CONCURRENCY_CAP: &str = "ConcurrencyCap";
    /// Another Remediation is already working on this target: this one waits for it.
    pub const TARGET_BUSY: &str = "TargetBusy";
    /// The target was remediated within the policy's cooldown: this one waits for it to pass.
    pub const COOLDOWN: &str = "Cooldown";
    /// The policy's rate limit (`maxRemediations` per `window`) is reached: this one waits.
    pub const RATE_LIMITED: &str = "RateLimited";
    /// The policy's `maxConcurrent` Remediations are in progress: this one waits for one.
    pub const POLICY_CONCURRENCY: &str = "PolicyConcurrency";
    /// The policy is in a change-freeze window: nothing is deployed until it ends.
    pub const CHANGE_FREEZE: &str = "ChangeFreeze";
    /// The operator's kill switch is on: nothing more happens before deploy.
    pub const KILL_SWITCH: &str = "KillSwitch";
    /// The Remediation targets a kind its policy does not act on.
    pub const TARGET_KIND_NOT_ALLOWED: &str = "TargetKindNotAllowed";
    /// The target changed since CI tested the change: it is tested again (or, changing again
    /// and again, goes to a human).
    pub const TARGET_CHANGED: &str = "TargetChanged";
    /// The policy stopped trying on this target: its fixes kept failing, or the alert kept
    /// coming back after them. People decide what next.
    pub const INEFFECTIVE_FIX: &str = "IneffectiveFix";
    /// The applied change did not roll out (ProgressDeadlineExceeded, or the policy's rollout
    /// timeout): a failed deploy, rolled back.
    pub const ROLLOUT_STALLED: &str = "RolloutStalled";
    /// Verification could not decide (no data, too few samples, neither held nor failed by
    /// the timeout); the policy's `onInconclusive` says what follows.
    pub const VERIFICATION_INCONCLUSIVE: &str = "VerificationInconclusive";
    /// The metrics provider failed during verification; the policy's `onError` says what
    /// follows.
    pub const VERIFICATION_ERROR: &str = "VerificationError";
    /// Deploy's own re-check refused the change before writing anything (the patch-safety
    /// verdict now, the target changed since CI, the gate or an approval).
    pub const DEPLOY_REFUSED: &str = "DeployRefused";
    /// Reverting failed; humans must look.
    pub const ROLLBACK_FAILED: &str = "RollbackFailed";
    /// The referenced RemediationPolicy does not exist.
    pub const POLICY_NOT_FOUND: &str = "PolicyNotFound";
    /// The referenced RemediationPolicy is invalid.
    pub const POLICY_INVALID: &str = "PolicyInvalid";
    /// The stage the remediation needs is not available in this build.
    pub const STAGE_UNAVAILABLE: &str = "StageUnavailable";
    /// The object passed validation.
    pub const VALID: &str = "Valid";
    /// The object failed validation.
    pub const INVALID: &str = "Invalid";
    /// The remediation reached a terminal phase.
    pub const FINISHED: &str = "Finished";
}

/// The desired state of one condition, before timestamps are assigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// Which condition.
    pub type_: ConditionType,
    /// `True` or `False`.
    pub status: bool,
    /// One of the [`reason`] constants.
    pub reason: &'static str,
    /// Human-readable detail.
    pub message: String,
}

impl Desired {
    /// A condition with status `True`.
    pub fn yes(type_: ConditionType, reason: &'static str, message: impl Into<String>) -> Self {
        Self { type_, status: true, reason, message: message.into() }
    }

    /// A condition with status `False`.
    pub fn no(type_: ConditionType, reason: &'static str, message: impl Into<String>) -> Self {
        Self { type_, status: false, reason, message: message.into() }
    }
}

fn status_str(status: bool) -> &'static str {
    if status { "True" } else { "False" }
}

/// Merges `desired` into `conditions`, keeping `lastTransitionTime` unless the status
/// flips. Returns true when anything other than timestamps changed.
pub fn merge(conditions: &mut Vec<Condition>, desired: &Desired, generation: Option<i64>, now: Timestamp) -> bool {
    let status = status_str(desired.status);
    match conditions.iter_mut().find(|c| c.type_ == desired.type_.as_str()) {
        Some(existing) => {
            let flipped = existing.status != status;
            let changed = flipped
                || existing.reason != desired.reason
                || existing.message != desired.message
                || existing.observed_generation != generation;
            if flipped {
                existing.last_transition_time = Time(now);
            }
            existing.status = status.to_owned();
            existing.reason = desired.reason.to_owned();
            existing.message.clone_from(&desired.message);
            existing.observed_generation = generation;
            changed
        }
        None => {
            conditions.push(Condition {
                type_: desired.type_.as_str().to_owned(),
                status: status.to_owned(),
                reason: desired.reason.to_owned(),
                message: desired.message.clone(),
                observed_generation: generation,
                last_transition_time: Time(now),
            });
            true
        }
    }
}

/// Finds a condition by type.
pub fn find(conditions: &[Condition], type_: ConditionType) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == type_.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn keeps_transition_time_when_status_does_not_flip() {
        let mut conds = Vec::new();
        let first = Desired::yes(ConditionType::Progressing, reason::STARTED, "started");
        assert!(merge(&mut conds, &first, Some(1), ts(100)));
        let same_status = Desired::yes(ConditionType::Progressing, reason::TESTING, "testing");
        assert!(merge(&mut conds, &same_status, Some(1), ts(200)));
        let c = find(&conds, ConditionType::Progressing).unwrap();
        assert_eq!(c.last_transition_time, Time(ts(100)));
        assert_eq!(c.reason, "Testing");
    }

    #[test]
    fn moves_transition_time_when_status_flips() {
        let mut conds = Vec::new();
        merge(&mut conds, &Desired::yes(ConditionType::Stalled, reason::POLICY_NOT_FOUND, "x"), None, ts(100));
        merge(&mut conds, &Desired::no(ConditionType::Stalled, reason::IN_PROGRESS, "x"), None, ts(300));
        let c = find(&conds, ConditionType::Stalled).unwrap();
        assert_eq!(c.last_transition_time, Time(ts(300)));
        assert_eq!(c.status, "False");
    }

    #[test]
    fn reports_no_change_when_only_time_differs() {
        let mut conds = Vec::new();
        let d = Desired::no(ConditionType::Ready, reason::IN_PROGRESS, "working");
        assert!(merge(&mut conds, &d, Some(2), ts(1)));
        let before = conds.clone();
        assert!(!merge(&mut conds, &d, Some(2), ts(999)));
        assert_eq!(conds, before, "an unchanged condition must not be rewritten");
    }
}
