//! The Remediation state machine: `decide(&remediation, &observations) -> Decision`.
//!
//! Contract: pure and total. Every transition rule of the loop lives here; the reconciler
//! gathers observations, calls [`decide`], performs the one effect it names and records
//! it. Effect outcomes are read back from status (keyed by step and attempt), so a restart
//! resumes exactly where the last recorded outcome left off: a completed effect is never
//! run again, and an effect recorded as started but not finished is resumed under the
//! same key (stages are idempotent per key). Terminal phases are final.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::api::conditions::reason;
use crate::api::policy::VerdictAction;
use crate::api::remediation::{
    AlertState, CiVerdict, GateDecision, Phase, Remediation, RemediationStatus, RolloutState, Step, StepState,
    VerificationVerdict,
};
use crate::api::validate::ValidPolicy;
use crate::api::{ApprovalDecision, ErrorCategory};
use crate::patch::TestedPatch;

/// Policy settings the machine needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Consecutive failures of one step before giving up on it.
    pub max_attempts: u32,
    /// Wall-clock budget from start until deploy.
    pub max_duration: Duration,
    /// First retry delay; doubles per attempt.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_cap: Duration,
    /// How long a change waits for approval before it escalates.
    pub approval_timeout: Option<Duration>,
    /// Diagnose only, never propose (trust level `observe`): the diagnosis goes to people.
    pub diagnose_only: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            max_duration: Duration::from_secs(3600),
            retry_base: Duration::from_secs(2),
            retry_cap: Duration::from_secs(300),
            approval_timeout: None,
            diagnose_only: false,
        }
    }
}

/// The governing policy as the reconciler found it.
#[derive(Clone, Debug, PartialEq)]
pub enum PolicyView {
    /// Found and valid.
    Valid(Settings),
    /// No policy by that name in the namespace.
    NotFound,
    /// Found but invalid; the message says why.
    Invalid(String),
}

/// Which stage implementations this build has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StageSet(u16);

impl StageSet {
    /// No stage available.
    pub const NONE: Self = Self(0);
    /// Every stage available.
    pub const ALL: Self = Self(u16::MAX);

    fn bit(step: Step) -> u16 {
        1 << (step as u16)
    }

    /// Adds a stage.
    #[must_use]
    pub fn with(self, step: Step) -> Self {
        Self(self.0 | Self::bit(step))
    }

    /// Removes a stage.
    #[must_use]
    pub fn without(self, step: Step) -> Self {
        Self(self.0 & !Self::bit(step))
    }

    /// Whether a stage is available.
    pub fn has(self, step: Step) -> bool {
        self.0 & Self::bit(step) != 0
    }
}

/// What the reconciler observed outside the Remediation itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Observations {
    /// The clock.
    pub now: Timestamp,
    /// The governing policy.
    pub policy: PolicyView,
    /// Stages this build can run.
    pub stages: StageSet,
    /// The effect of this Remediation currently running in this process, if any.
    pub running: Option<(Step, u32)>,
    /// Why nothing may happen before deploy now (kill switch, suspended policy, a target kind
    /// the policy does not act on), whatever created the Remediation.
    pub halt: Option<Halt>,
    /// Changes deploying or being verified across the cluster have reached the operator's
    /// cap: a new deploy waits for one to finish.
    pub deploys_at_cap: Option<u32>,
    /// The policy stopped trying on this target (its fixes did not work): a Remediation not
    /// started yet escalates with this reason instead.
    pub ineffective: Option<String>,
}

/// A reason the controller starts nothing before deploy: the Remediation stalls with it
/// until it clears. Verification and rollback of a change already applied go on.
#[derive(Clone, Debug, PartialEq)]
pub struct Halt {
    /// A [`reason`] constant.
    pub reason: &'static str,
    /// What holds it and how to release it.
    pub message: String,
    /// Look again after this long even if nothing changes ([`HALT_RECHECK`]).
    pub recheck_after: Option<Duration>,
}

/// The guards intake applies, applied again by the controller before every effect — a
/// Remediation created by hand, or one already past intake when they changed, obeys them
/// too. `kill_switch`: the operator's kill switch is on; `policy`: the governing policy, when
/// valid; its change-freeze windows are judged at `now`.
pub fn halt_for(kill_switch: bool, policy: Option<&ValidPolicy>, rem: &Remediation, now: Timestamp) -> Option<Halt> {
    if kill_switch {
        return Some(Halt {
            reason: reason::KILL_SWITCH,
            message: "the operator's kill switch is on: nothing is deployed until it is turned off".to_owned(),
            recheck_after: Some(HALT_RECHECK),
        });
    }
    let policy = policy?;
    if policy.limits.suspend {
        return Some(Halt {
            reason: reason::SUSPENDED,
            message: format!(
                "policy {:?} is suspended (limits.suspend): nothing is deployed until it is resumed",
                rem.spec.policy_ref.name
            ),
            recheck_after: Some(HALT_RECHECK),
        });
    }
    if let Some(freeze) = policy.limits.freeze.iter().find(|f| f.open_at(now)) {
        return Some(Halt {
            reason: reason::CHANGE_FREEZE,
            message: format!(
                "policy {:?} is in a change freeze ({}): nothing is deployed until it ends",
                rem.spec.policy_ref.name,
                freeze.describe()
            ),
            recheck_after: Some(HALT_RECHECK),
        });
    }
    (!policy.acts_on(rem.spec.target.kind)).then(|| Halt {
        reason: reason::TARGET_KIND_NOT_ALLOWED,
        message: format!(
            "policy {:?} acts on {}, not on {} {:?}",
            rem.spec.policy_ref.name,
            policy.kinds(),
            rem.spec.target.kind.as_str(),
            rem.spec.target.name
        ),
        recheck_after: Some(HALT_RECHECK),
    })
}

/// How soon a halted Remediation is looked at again without a change to it: a freeze ends by
/// the clock, and the caches a halt is read from (policies, the kill switch) are fed by their
/// own watches, which may trail the event that triggered the reconcile.
pub const HALT_RECHECK: Duration = Duration::from_secs(10);

fn cap_message(taken: u32) -> String {
    format!(
        "{taken} changes are deploying or being verified across the cluster (the operator's --max-concurrent-deploys): this one waits for one to finish"
    )
}

/// How often a deferred step (waiting for disruption headroom, say) is tried again.
pub const DEFERRED_RECHECK: Duration = Duration::from_secs(15);

/// The one thing to do next.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Nothing to do; look again after `after` (or on the next change).
    Wait {
        /// When to look again.
        after: Option<Duration>,
    },
    /// Move to another phase; `to` is always one of the current phase's successors.
    Transition {
        /// New phase.
        to: Phase,
        /// A [`reason`] constant.
        reason: &'static str,
        /// Human-readable detail.
        message: String,
    },
    /// Start (or resume) one effect, keyed by step and attempt.
    Start {
        /// Which effect.
        step: Step,
        /// Attempt number (a resumed effect keeps its attempt).
        attempt: u32,
    },
    /// The loop cannot move without outside help.
    Stall {
        /// A [`reason`] constant.
        reason: &'static str,
        /// What is missing and what a human can do.
        message: String,
    },
}

fn to(to: Phase, reason: &'static str, message: impl Into<String>) -> Decision {
    Decision::Transition { to, reason, message: message.into() }
}

/// Decides the next action for a Remediation.
pub fn decide(rem: &Remediation, obs: &Observations) -> Decision {
    let default_status = RemediationStatus::default();
    let status = rem.status.as_ref().unwrap_or(&default_status);
    let phase = status.phase;
    if phase.is_terminal() {
        return Decision::Wait { after: None };
    }

    // A rollback in progress always finishes: stopping halfway would leave the target in
    // neither the old nor the new state.
    if phase != Phase::RollingBack {
        if rem.spec.cancel {
            let note = if phase.after_deploy() {
                "; the applied change was left in place (status.deploy holds the previous values)"
            } else {
                "; nothing was deployed"
            };
            return to(Phase::Cancelled, reason::CANCEL_REQUESTED, format!("cancelled by request{note}"));
        }
        let resolved = status.alert.as_ref().is_some_and(|a| a.state == AlertState::Resolved);
        if resolved && !phase.after_deploy() {
            return to(Phase::Cancelled, reason::ALERT_RESOLVED, "the alert resolved before anything was deployed");
        }
        // A person's rejection stops the change in any phase before deploy, not only while it
        // waits for approval (the gate may let it through alone).
        if let Some(a) = status.approval.as_ref().filter(|a| a.decision == ApprovalDecision::Reject)
            && status.nothing_applied()
            && phase != Phase::AwaitingApproval
        {
            return to(
                Phase::Cancelled,
                reason::APPROVAL_REJECTED,
                format!(
                    "rejected by {}{}; nothing was deployed",
                    a.approver,
                    a.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
                ),
            );
        }
    }

    let settings = match &obs.policy {
        PolicyView::Valid(s) => s.clone(),
        PolicyView::NotFound if phase == Phase::RollingBack => Settings::default(),
        PolicyView::NotFound if phase.after_deploy() => {
            return to(
                Phase::Escalated,
                reason::POLICY_NOT_FOUND,
                format!(
                    "policy {:?} was deleted after the change was applied; verify or revert by hand",
                    rem.spec.policy_ref.name
                ),
            );
        }
        PolicyView::NotFound => {
            return to(
                Phase::Cancelled,
                reason::POLICY_NOT_FOUND,
                format!("policy {:?} no longer exists; nothing was deployed", rem.spec.policy_ref.name),
            );
        }
        PolicyView::Invalid(_) if phase == Phase::RollingBack => Settings::default(),
        PolicyView::Invalid(why) => {
            return Decision::Stall {
                reason: reason::POLICY_INVALID,
                message: format!("policy {:?} is invalid: {why}", rem.spec.policy_ref.name),
            };
        }
    };

    if !phase.after_deploy()
        && phase != Phase::Pending
        && let Some(started) = status.started_at.as_ref()
        && obs.now.duration_since(started.0).unsigned_abs() > settings.max_duration
    {
        return to(
            Phase::Escalated,
            reason::DEADLINE_EXCEEDED,
            format!("no deploy within limits.maxDuration ({}s) of the start", settings.max_duration.as_secs()),
        );
    }

    let applied = status.deploy.as_ref().is_some_and(|d| d.applied_at.is_some());
    if let Some(halt) = &obs.halt
        && (!phase.after_deploy() || phase == Phase::Deploying && !applied)
    {
        return Decision::Stall { reason: halt.reason, message: halt.message.clone() };
    }

    if phase == Phase::Pending
        && let Some(why) = &obs.ineffective
    {
        return to(Phase::Escalated, reason::INEFFECTIVE_FIX, why.clone());
    }

    let m = Machine { rem, status, obs, settings: &settings };
    match phase {
        Phase::Pending => to(Phase::Diagnosing, reason::STARTED, "remediation started"),
        Phase::Diagnosing => m.diagnosing(),
        Phase::Proposed => to(Phase::Testing, reason::TESTING, "testing the proposal"),
        Phase::Testing => m.testing(),
        Phase::AwaitingApproval => m.awaiting_approval(),
        Phase::Deploying => m.deploying(),
        Phase::Verifying => m.verifying(),
        Phase::RollingBack => m.rolling_back(),
        Phase::Succeeded
        | Phase::Failed
        | Phase::RolledBack
        | Phase::Cancelled
        | Phase::Escalated
        | Phase::Unverified => Decision::Wait { after: None },
    }
}

struct Machine<'a> {
    rem: &'a Remediation,
    status: &'a RemediationStatus,
    obs: &'a Observations,
    settings: &'a Settings,
}

/// Where a step goes when it fails for good.
#[derive(Clone, Copy)]
struct GiveUp {
    /// Phase for a failure that retrying cannot fix (invalid spec, forbidden, not found).
    permanent: Phase,
    /// Phase once transient failures used up the attempts.
    exhausted: Phase,
    /// Reason for `exhausted`.
    exhausted_reason: &'static str,
}

const BEFORE_DEPLOY: GiveUp =
    GiveUp { permanent: Phase::Failed, exhausted: Phase::Escalated, exhausted_reason: reason::REPEATED_FAILURE };

impl Machine<'_> {
    fn diagnosing(&self) -> Decision {
        if self.status.proposal.is_some() {
            return to(Phase::Proposed, reason::PROPOSED, "a proposal is ready");
        }
        match &self.status.diagnosis {
            None => self.step(Step::Diagnose, BEFORE_DEPLOY),
            Some(d) if self.settings.diagnose_only => to(
                Phase::Escalated,
                reason::DIAGNOSED,
                format!("diagnosis only (trust level observe), nothing is proposed: {}", d.summary),
            ),
            // Whatever the policy says (a Remediation made by hand): a Job is never changed.
            Some(d) if self.rem.spec.target.kind.diagnosed_only() => to(
                Phase::Escalated,
                reason::DIAGNOSED,
                format!("diagnosis only (Reflex never changes a {}): {}", self.rem.spec.target.kind, d.summary),
            ),
            Some(_) => self.step(Step::Propose, BEFORE_DEPLOY),
        }
    }

    fn testing(&self) -> Decision {
        let Some(proposal) = &self.status.proposal else {
            return to(Phase::Escalated, reason::INVALID_SPEC, "status.proposal is missing in phase Testing");
        };
        let ci = self.status.ci.as_ref().filter(|ci| ci.proposal_digest == proposal.digest);
        let Some(ci) = ci else {
            return self.step(Step::Test, BEFORE_DEPLOY);
        };
        if ci.verdict == CiVerdict::Failed {
            let why =
                if ci.messages.is_empty() { "the proposal was rejected".to_owned() } else { ci.messages.join("; ") };
            return to(Phase::Failed, reason::TESTS_FAILED, why);
        }
        match &self.status.gate {
            None => self.step(Step::Gate, BEFORE_DEPLOY),
            Some(g) => match g.decision {
                GateDecision::Approved => to(Phase::Deploying, reason::APPROVED, g.reason.clone()),
                GateDecision::ApprovalRequired => {
                    to(Phase::AwaitingApproval, reason::APPROVAL_REQUIRED, g.reason.clone())
                }
                GateDecision::Denied => to(Phase::Escalated, reason::HUMANS_ONLY, g.reason.clone()),
            },
        }
    }

    fn awaiting_approval(&self) -> Decision {
        match &self.status.approval {
            Some(a) if a.decision == ApprovalDecision::Approve => {
                to(Phase::Deploying, reason::APPROVED, format!("approved by {} ({})", a.approver, a.name))
            }
            Some(a) => to(
                Phase::Cancelled,
                reason::APPROVAL_REJECTED,
                format!(
                    "rejected by {}{}",
                    a.approver,
                    a.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
                ),
            ),
            None => match (self.settings.approval_timeout, self.status.waiting_since()) {
                (Some(timeout), Some(since)) => {
                    let waited = self.obs.now.duration_since(since).unsigned_abs();
                    if waited >= timeout {
                        return to(
                            Phase::Escalated,
                            reason::APPROVAL_EXPIRED,
                            format!("no approval within trust.approvalTimeout ({}s)", timeout.as_secs()),
                        );
                    }
                    let left = timeout - waited + Duration::from_secs(1);
                    Decision::Wait { after: Some(self.until_deadline().map_or(left, |d| d.min(left))) }
                }
                _ => Decision::Wait { after: self.until_deadline() },
            },
        }
    }

    fn deploying(&self) -> Decision {
        let tested = match (&self.status.proposal, &self.status.ci) {
            (Some(p), Some(ci)) => TestedPatch::new(p, ci),
            _ => None,
        };
        let Some(tested) = tested else {
            // Only a proposal that passed CI for its exact digest may deploy.
            return to(
                Phase::Escalated,
                reason::INVALID_SPEC,
                "no tested patch matches the proposal; refusing to deploy",
            );
        };
        match &self.status.deploy {
            None if self.obs.deploys_at_cap.is_some() => Decision::Stall {
                reason: reason::CONCURRENCY_CAP,
                message: cap_message(self.obs.deploys_at_cap.unwrap_or_default()),
            },
            None => self.step(
                Step::Snapshot,
                GiveUp {
                    permanent: Phase::Failed,
                    exhausted: Phase::Escalated,
                    exhausted_reason: reason::REPEATED_FAILURE,
                },
            ),
            Some(d) if d.applied_digest.as_deref() == Some(tested.proposal().digest.as_str()) => {
                self.rolling_out(&tested.proposal().digest)
            }
            Some(_) => self.step(
                Step::Deploy,
                GiveUp {
                    permanent: Phase::RollingBack,
                    exhausted: Phase::RollingBack,
                    exhausted_reason: reason::DEPLOY_FAILED,
                },
            ),
        }
    }

    /// Applied: wait for the workload to roll the change out, one look per effect.
    fn rolling_out(&self, digest: &str) -> Decision {
        let give_up = GiveUp {
            permanent: Phase::RollingBack,
            exhausted: Phase::RollingBack,
            exhausted_reason: reason::DEPLOY_FAILED,
        };
        match &self.status.rollout {
            Some(r) if r.state == RolloutState::Complete => {
                to(Phase::Verifying, reason::DEPLOYED, format!("applied {digest}; {}", r.message))
            }
            Some(r) if r.state == RolloutState::Stalled => {
                to(Phase::RollingBack, reason::ROLLOUT_STALLED, r.message.clone())
            }
            Some(r) => match r.next_check_at.as_ref().map(|t| t.0) {
                Some(due) if due > self.obs.now && self.obs.running.is_none() => {
                    Decision::Wait { after: Some(self.obs.now.duration_until(due).unsigned_abs()) }
                }
                _ => self.step(Step::Rollout, give_up),
            },
            None => self.step(Step::Rollout, give_up),
        }
    }

    fn verifying(&self) -> Decision {
        let give_up = GiveUp {
            permanent: Phase::RollingBack,
            exhausted: Phase::RollingBack,
            exhausted_reason: reason::VERIFICATION_FAILED,
        };
        match &self.status.verification {
            Some(v) if v.verdict == VerificationVerdict::Passed => to(
                Phase::Succeeded,
                reason::VERIFIED,
                v.message.clone().unwrap_or_else(|| "verification held".to_owned()),
            ),
            Some(v) if v.verdict == VerificationVerdict::Failed => to(
                Phase::RollingBack,
                reason::VERIFICATION_FAILED,
                v.message.clone().unwrap_or_else(|| "verification did not hold".to_owned()),
            ),
            Some(v) if matches!(v.verdict, VerificationVerdict::Inconclusive | VerificationVerdict::Error) => {
                let (r, what) = if v.verdict == VerificationVerdict::Error {
                    (reason::VERIFICATION_ERROR, "the metrics provider failed")
                } else {
                    (reason::VERIFICATION_INCONCLUSIVE, "verification could not decide")
                };
                let why = v.message.clone().unwrap_or_else(|| what.to_owned());
                match v.action.unwrap_or_default() {
                    VerdictAction::Escalate => {
                        to(Phase::Escalated, r, format!("{why}; the change stays, people decide"))
                    }
                    VerdictAction::Rollback => {
                        to(Phase::RollingBack, r, format!("{why}; rolling back as the policy says"))
                    }
                    VerdictAction::Keep => {
                        to(Phase::Unverified, r, format!("{why}; the change is kept unverified, as the policy says"))
                    }
                }
            }
            Some(v) => match v.next_sample_at.as_ref().map(|t| t.0) {
                Some(due) if due > self.obs.now && self.obs.running.is_none() => {
                    Decision::Wait { after: Some(self.obs.now.duration_until(due).unsigned_abs()) }
                }
                _ => self.step(Step::Verify, give_up),
            },
            None => self.step(Step::Verify, give_up),
        }
    }

    fn rolling_back(&self) -> Decision {
        if let Some(rollback) = &self.status.rollback {
            let message = if rollback.reason.starts_with("nothing to undo") {
                rollback.reason.clone()
            } else {
                "the previous state was restored".to_owned()
            };
            return to(Phase::RolledBack, reason::ROLLED_BACK, message);
        }
        if self.status.deploy.is_none() {
            return to(Phase::Escalated, reason::ROLLBACK_FAILED, "no snapshot of the previous state is recorded");
        }
        self.step(
            Step::Rollback,
            GiveUp {
                permanent: Phase::Escalated,
                exhausted: Phase::Escalated,
                exhausted_reason: reason::ROLLBACK_FAILED,
            },
        )
    }

    /// Time left before the pre-deploy deadline.
    fn until_deadline(&self) -> Option<Duration> {
        let started = self.status.started_at.as_ref()?;
        let elapsed = self.obs.now.duration_since(started.0).unsigned_abs();
        Some(self.settings.max_duration.saturating_sub(elapsed) + Duration::from_secs(1))
    }

    /// The target changed since CI tested the change: test it again (the plan withdraws the
    /// results that no longer hold), unless it has changed under every test so far.
    fn retest(&self, why: &str) -> Decision {
        let tests = self.status.retests.saturating_add(1);
        if tests > self.settings.max_attempts {
            return to(
                Phase::Escalated,
                reason::TARGET_CHANGED,
                format!("the target changed under each of {tests} tests of the change; last: {why}"),
            );
        }
        to(Phase::Testing, reason::TARGET_CHANGED, format!("{why}; testing the change again"))
    }

    /// A step that waits for something outside Reflex: tried again every
    /// [`DEFERRED_RECHECK`], until `limits.maxDuration` from the start is spent (then humans).
    fn deferred(&self, step: Step, attempt: u32, why: &str, failed_at: Timestamp) -> Decision {
        if self.until_deadline().is_some_and(|left| left <= Duration::from_secs(1)) {
            return to(
                Phase::Escalated,
                reason::DEADLINE_EXCEEDED,
                format!(
                    "{step} waited past limits.maxDuration ({}s) of the start: {why}",
                    self.settings.max_duration.as_secs()
                ),
            );
        }
        let elapsed = self.obs.now.duration_since(failed_at).unsigned_abs();
        if elapsed < DEFERRED_RECHECK {
            let wait = DEFERRED_RECHECK - elapsed;
            Decision::Wait { after: Some(self.until_deadline().map_or(wait, |d| d.min(wait))) }
        } else if step == Step::Deploy
            && let Some(taken) = self.obs.deploys_at_cap
        {
            // A deferred deploy gave its slot back while it waited; it takes one again.
            Decision::Stall { reason: reason::CONCURRENCY_CAP, message: cap_message(taken) }
        } else {
            Decision::Start { step, attempt: attempt.saturating_add(1) }
        }
    }

    /// Runs, resumes, retries or gives up on one step from its recorded history.
    fn step(&self, step: Step, give_up: GiveUp) -> Decision {
        let run = |attempt: u32| {
            if self.obs.stages.has(step) {
                Decision::Start { step, attempt }
            } else {
                Decision::Stall {
                    reason: reason::STAGE_UNAVAILABLE,
                    message: format!(
                        "the {step} stage is not available in this build of Reflex; the remediation waits in phase {} until an operator with that stage runs",
                        self.status.phase
                    ),
                }
            }
        };
        let Some(last) = self.status.last_step(step) else {
            return run(1);
        };
        match last.state {
            StepState::Started if self.obs.running == Some((step, last.attempt)) => Decision::Wait { after: None },
            // Recorded as started but not running here: the process stopped mid-effect.
            // Resume under the same key; stages are idempotent per key.
            StepState::Started => run(last.attempt),
            StepState::Cancelled => run(last.attempt.saturating_add(1)),
            // Verification and the rollout watch run again after success: each sample, each
            // look, is its own effect.
            StepState::Succeeded if matches!(step, Step::Verify | Step::Rollout) => run(last.attempt.saturating_add(1)),
            StepState::Succeeded => to(
                give_up.exhausted,
                give_up.exhausted_reason,
                format!("the {step} step succeeded but its result is missing from status"),
            ),
            StepState::Failed => {
                let category = last.category.unwrap_or(ErrorCategory::Transient);
                let why = last.message.clone().unwrap_or_else(|| category.as_str().to_owned());
                if category == ErrorCategory::NeedsHuman {
                    // After deploy the change is undone first, as for any failure there. The
                    // deploy step itself refuses only before it writes (its re-check), so
                    // there is nothing to undo.
                    let after_deploy = give_up.exhausted == Phase::RollingBack && step != Step::Deploy;
                    let dest = if after_deploy { Phase::RollingBack } else { Phase::Escalated };
                    let r = if step == Step::Deploy { reason::DEPLOY_REFUSED } else { reason::AGENT_ESCALATED };
                    return to(dest, r, format!("{step}: {why}"));
                }
                // Before deploy a playbook may stand aside (its requirements unmet); nothing
                // was changed, and another policy's Remediation may apply.
                if category == ErrorCategory::NotApplicable && give_up.exhausted != Phase::RollingBack {
                    return to(Phase::Cancelled, reason::NOT_APPLICABLE, format!("{step}: {why}"));
                }
                if category == ErrorCategory::BudgetExhausted {
                    let dest =
                        if give_up.exhausted == Phase::RollingBack { Phase::RollingBack } else { Phase::Escalated };
                    return to(dest, reason::BUDGET_EXHAUSTED, format!("{step}: {why}"));
                }
                if category == ErrorCategory::Conflict && step == Step::Deploy {
                    return self.retest(&why);
                }
                if category == ErrorCategory::Deferred {
                    return self.deferred(
                        step,
                        last.attempt,
                        &why,
                        last.finished_at.as_ref().map_or(last.started_at.0, |t| t.0),
                    );
                }
                if !category.is_retryable() {
                    let r = match category {
                        ErrorCategory::Forbidden => reason::FORBIDDEN,
                        ErrorCategory::NotFound => reason::NOT_FOUND,
                        _ => reason::INVALID_SPEC,
                    };
                    let r = if give_up.permanent == give_up.exhausted { give_up.exhausted_reason } else { r };
                    return to(give_up.permanent, r, format!("{step} failed ({category}): {why}"));
                }
                let failures = self.status.consecutive_failures(step);
                if failures >= self.settings.max_attempts {
                    return to(
                        give_up.exhausted,
                        give_up.exhausted_reason,
                        format!("{step} failed {failures} times in a row; last error: {why}"),
                    );
                }
                let delay = backoff(self.settings, self.rem.metadata.uid.as_deref().unwrap_or(""), step, last.attempt);
                let failed_at = last.finished_at.as_ref().map_or(last.started_at.0, |t| t.0);
                let elapsed = self.obs.now.duration_since(failed_at).unsigned_abs();
                if elapsed < delay {
                    Decision::Wait { after: Some(delay - elapsed) }
                } else {
                    run(last.attempt.saturating_add(1))
                }
            }
        }
    }
}

/// Exponential backoff with deterministic jitter (±20%, derived from the effect key so
/// replicas and restarts agree, and many remediations do not retry in lockstep).
pub fn backoff(settings: &Settings, uid: &str, step: Step, attempt: u32) -> Duration {
    jittered(settings, uid.bytes().chain([step as u8]), attempt)
}

/// The delay before retry number `attempt` (from 1): `retry_base` doubled per attempt up to
/// `retry_cap`, times a jitter of 0.8–1.2 derived from `seed` and `attempt` — the same for the
/// same inputs, different across objects, so retries of many objects spread out.
pub fn jittered(settings: &Settings, seed: impl Iterator<Item = u8>, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(16);
    let base = settings.retry_base.saturating_mul(1 << exp).min(settings.retry_cap);
    // FNV-1a over the key: stable across processes, unlike std's RandomState.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.chain(attempt.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let permille = 800 + (h % 401); // 0.8 ..= 1.2
    base.saturating_mul(u32::try_from(permille).unwrap_or(1000)) / 1000
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
