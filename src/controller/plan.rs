//! The pure plan of one reconcile: record a finished effect and an approval into status, ask
//! [`decide`] (chaining transitions), and derive the conditions.
//!
//! Contract: pure — no I/O, the time comes from the observations. [`plan`] returns everything
//! the reconcile shell will do: the status to write, the transitions to announce, the effect
//! to start, when to look again. The shell performs exactly that.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::machine::{Decision, Observations, decide};
use crate::api::conditions::{self, ConditionType, Desired, reason};
use crate::api::policy::ChangeOutcome;
use crate::api::remediation::{ApprovalRecord, MAX_SAMPLES, Phase, RemediationStatus, Step, StepRecord, StepState};
use crate::api::{ApprovalDecision, Remediation};
use crate::ports::{EffectKey, StageError, StageOutput};

/// A phase change made in this reconcile.
#[derive(Clone, Debug, PartialEq)]
pub struct TransitionRecord {
    /// Old phase.
    pub from: Phase,
    /// New phase.
    pub to: Phase,
    /// Reason constant.
    pub reason: &'static str,
    /// Detail.
    pub message: String,
}

/// Everything one reconcile will do, computed without touching the cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The status to write (written only if it differs from the current one).
    pub status: RemediationStatus,
    /// Phase changes, each announced by an Event.
    pub transitions: Vec<TransitionRecord>,
    /// The effect to start (or resume) once the status is written: step and attempt.
    pub start: Option<(Step, u32)>,
    /// When to look again.
    pub requeue: Option<Duration>,
    /// Stop the in-flight effect (the Remediation reached a terminal phase).
    pub cancel_running: bool,
}

/// Most transitions chained in one reconcile (the longest legal chain is shorter).
const MAX_CHAIN: usize = 16;

/// Why the loop cannot move: a reason constant and what a human can do.
type Stall = (&'static str, String);

/// The target changed since CI tested the change, before anything was written: what CI,
/// the gate and the snapshot said no longer holds. Their results are cleared and their last
/// records marked Cancelled (withdrawn), so each runs again under a new attempt. Approvals
/// stay: they are bound to the proposal, which has not changed, and deploy reads them again.
fn withdraw_tested(status: &mut RemediationStatus, now: Timestamp) {
    status.ci = None;
    status.gate = None;
    status.deploy = None;
    status.rollout = None;
    status.retests = status.retests.saturating_add(1);
    for step in [Step::Test, Step::Gate, Step::Snapshot, Step::Deploy] {
        if let Some(attempt) = status.last_step(step).map(|r| r.attempt) {
            status.push_step(StepRecord {
                step,
                attempt,
                state: StepState::Cancelled,
                category: None,
                message: Some("withdrawn: the target changed since CI tested the change".to_owned()),
                started_at: Time(now),
                finished_at: Some(Time(now)),
            });
        }
    }
}

/// Computes what one reconcile does. Pure.
pub fn plan(
    rem: &Remediation,
    finished: Option<(EffectKey, Result<StageOutput, StageError>)>,
    approval: Option<ApprovalRecord>,
    obs: &Observations,
) -> Plan {
    let now = obs.now;
    let mut work = rem.clone();
    let mut status = work.status.take().unwrap_or_default();
    if let Some((key, outcome)) = finished {
        record_outcome(&mut status, &key, outcome, now);
    }
    // The approvals' decision is recorded while the change waits for it; a rejection, in any
    // phase before deploy.
    if status.approval.is_none() {
        let waiting = status.phase == Phase::AwaitingApproval;
        let rejected = approval.as_ref().is_some_and(|a| a.decision == ApprovalDecision::Reject);
        if waiting || (rejected && status.nothing_applied() && !status.phase.is_terminal()) {
            status.approval = approval;
        }
    }
    work.status = Some(status);

    let mut transitions = Vec::new();
    let mut start = None;
    let mut requeue = None;
    let mut stall: Option<Stall> = None;
    for _ in 0..MAX_CHAIN {
        let decision = decide(&work, obs);
        let Some(status) = work.status.as_mut() else { break };
        match decision {
            Decision::Transition { to, reason, message } => {
                let from = status.phase;
                if !from.successors().contains(&to) {
                    // decide() never does this (tested exhaustively); refuse rather than corrupt.
                    stall = Some((reason::INVALID_SPEC, format!("refused illegal transition {from} -> {to}")));
                    break;
                }
                status.phase = to;
                if from == Phase::Deploying && to == Phase::Testing {
                    withdraw_tested(status, now);
                }
                if from == Phase::Pending {
                    status.started_at = Some(Time(now));
                    status.trace_id = rem.metadata.uid.as_deref().and_then(trace_id);
                }
                if to.is_terminal() {
                    status.finished_at = Some(Time(now));
                }
                transitions.push(TransitionRecord { from, to, reason, message });
            }
            Decision::Start { step, attempt } => {
                let resuming =
                    status.last_step(step).is_some_and(|r| r.attempt == attempt && r.state == StepState::Started);
                if !resuming {
                    status.push_step(StepRecord {
                        step,
                        attempt,
                        state: StepState::Started,
                        category: None,
                        message: None,
                        started_at: Time(now),
                        finished_at: None,
                    });
                }
                start = Some((step, attempt));
                break;
            }
            Decision::Wait { after } => {
                requeue = after;
                break;
            }
            Decision::Stall { reason, message } => {
                stall = Some((reason, message));
                break;
            }
        }
    }

    let mut status = work.status.take().unwrap_or_default();
    let phase = status.phase;
    let generation = rem.metadata.generation;
    let last = transitions.last();
    let message = match (&stall, last) {
        (Some((_, m)), _) => Some(m.clone()),
        (None, Some(t)) => Some(t.message.clone()),
        (None, None) => status.message.clone(),
    };
    let progress = message.clone().unwrap_or_else(|| format!("phase {phase}"));
    let terminal_reason = terminal_reason(last.map(|t| t.reason), &status);
    let desired = [
        ready(phase, terminal_reason, &progress),
        stalled(stall.as_ref()),
        progressing(phase, stall.as_ref(), last.map(|t| t.reason), progress.clone()),
    ];
    for d in &desired {
        conditions::merge(&mut status.conditions, d, generation, now);
    }
    status.message = message;
    status.observed_generation = generation;

    Plan { status, transitions, start, requeue, cancel_running: phase.is_terminal() }
}

/// Records a finished effect's outcome on the step status says is in flight; a stale result
/// (any other key) is ignored.
fn record_outcome(
    status: &mut RemediationStatus,
    key: &EffectKey,
    outcome: Result<StageOutput, StageError>,
    now: Timestamp,
) {
    let Some(record) = status
        .steps
        .iter_mut()
        .rev()
        .find(|r| r.step == key.step && r.attempt == key.attempt && r.state == StepState::Started)
    else {
        return;
    };
    record.finished_at = Some(Time(now));
    match outcome {
        Ok(output) => {
            record.state = StepState::Succeeded;
            match output {
                StageOutput::Diagnosis(d) => status.diagnosis = Some(d),
                StageOutput::Proposal(p) => status.proposal = Some(p),
                StageOutput::Ci(c) => status.ci = Some(c),
                StageOutput::Gate(g) => status.gate = Some(g),
                StageOutput::Deploy(d) => status.deploy = Some(d),
                StageOutput::Rollout(r) => status.rollout = Some(r),
                StageOutput::Verification(mut v) => {
                    let excess = v.samples.len().saturating_sub(MAX_SAMPLES);
                    v.samples.drain(..excess);
                    status.verification = Some(v);
                }
                StageOutput::Rollback(r) => status.rollback = Some(r),
            }
        }
        Err(e) => {
            record.state = StepState::Failed;
            record.category = Some(e.category);
            record.message = Some(e.message);
        }
    }
}

/// How a deployed change ended, for its policy's trust record: `None` until the Remediation
/// has ended, and for one that never applied a change. Verified only when it Succeeded.
pub fn change_outcome(rem: &Remediation, status: &RemediationStatus) -> Option<ChangeOutcome> {
    let applied = status.deploy.as_ref().is_some_and(|d| d.applied_at.is_some());
    if !status.phase.is_terminal() || !applied {
        return None;
    }
    let failure = match status.phase {
        Phase::Succeeded => None,
        Phase::RolledBack => Some(format!(
            "rolled back: {}",
            status
                .verification
                .as_ref()
                .and_then(|v| v.message.clone())
                .unwrap_or_else(|| "the change did not hold".into())
        )),
        phase => Some(format!("ended {phase} after deploy: {}", status.message.clone().unwrap_or_default())),
    };
    Some(ChangeOutcome {
        remediation: rem.metadata.name.clone()?,
        uid: rem.metadata.uid.clone()?,
        failure,
        at: status.finished_at.clone()?,
    })
}

/// A Remediation deleted once its deploy had begun (the write may have landed unrecorded)
/// and before its change was verified: a failure for earned trust — the change may stay in
/// place and nothing proved it. None when no deploy began or the Remediation had ended (its
/// outcome is recorded).
pub fn deleted_outcome(rem: &Remediation, now: Timestamp) -> Option<ChangeOutcome> {
    let status = rem.status.as_ref()?;
    let applied = status.deploy.as_ref().is_some_and(|d| d.applied_at.is_some());
    let deploy_began = status.last_step(Step::Deploy).is_some();
    if status.phase.is_terminal() || !(applied || deploy_began) {
        return None;
    }
    Some(ChangeOutcome {
        remediation: rem.metadata.name.clone()?,
        uid: rem.metadata.uid.clone()?,
        failure: Some(format!(
            "deleted in phase {} before its change was verified; the change stays applied",
            status.phase
        )),
        at: Time(now),
    })
}

/// W3C trace id (32 lowercase hex digits) derived from the Remediation's uid.
pub fn trace_id(uid: &str) -> Option<String> {
    let hex: String = uid.chars().filter(char::is_ascii_hexdigit).map(|c| c.to_ascii_lowercase()).collect();
    (hex.len() == 32 && hex.chars().any(|c| c != '0')).then_some(hex)
}

/// The Ready reason of a terminal phase: the reason of the transition into it, or (on later
/// reconciles) `Verified` kept from before, else `Finished`.
fn terminal_reason(last_transition: Option<&'static str>, status: &RemediationStatus) -> &'static str {
    let previous_ready = conditions::find(&status.conditions, ConditionType::Ready).map(|c| c.reason.as_str());
    last_transition.unwrap_or(match previous_ready {
        Some(r) if r == reason::VERIFIED => reason::VERIFIED,
        _ => reason::FINISHED,
    })
}

/// Ready: true only once the fix is verified; false with the terminal reason when the
/// Remediation ended otherwise; false and in progress before that.
fn ready(phase: Phase, terminal_reason: &'static str, progress: &str) -> Desired {
    if phase == Phase::Succeeded {
        Desired::yes(ConditionType::Ready, reason::VERIFIED, progress.to_owned())
    } else if phase.is_terminal() {
        Desired::no(ConditionType::Ready, terminal_reason, progress.to_owned())
    } else {
        Desired::no(ConditionType::Ready, reason::IN_PROGRESS, format!("phase {phase}"))
    }
}

/// Stalled: true with the stall's reason while the loop needs outside help.
fn stalled(stall: Option<&Stall>) -> Desired {
    match stall {
        Some((r, m)) => Desired::yes(ConditionType::Stalled, r, m.clone()),
        None => Desired::no(ConditionType::Stalled, reason::IN_PROGRESS, "not stalled"),
    }
}

/// Progressing: true while the loop moves; false once terminal or stalled.
fn progressing(
    phase: Phase,
    stall: Option<&Stall>,
    last_transition: Option<&'static str>,
    progress: String,
) -> Desired {
    if phase.is_terminal() {
        Desired::no(ConditionType::Progressing, reason::FINISHED, format!("finished in phase {phase}"))
    } else if let Some((r, m)) = stall {
        Desired::no(ConditionType::Progressing, r, m.clone())
    } else {
        Desired::yes(ConditionType::Progressing, last_transition.unwrap_or(reason::IN_PROGRESS), progress)
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
