//! `Remediation`: one run of the loop for one incident — the alert that started it, the
//! target, and the full record of what Reflex read, proposed, tested, deployed and verified.
//!
//! Contract: plain data. `spec` is written once by intake (only `cancel` may change, and
//! only to true); `status` is written only by the controller, under field manager
//! `reflex-status`.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{AnyJson, ApprovalDecision, ErrorCategory, LocalObjectRef, TargetKind, playbook::PatchType};

mod records;

pub use records::*;

/// Most step records kept in status; older ones are dropped first.
pub const MAX_STEPS: usize = 32;
#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Most verification samples kept in status.
pub const MAX_SAMPLES: usize = 60;

/// One incident being remediated.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "reflex.dev",
    version = "v1alpha1",
    kind = "Remediation",
    namespaced,
    status = "RemediationStatus",
    shortname = "rem",
    shortname = "rems",
    category = "reflex",
    doc = "One run of the Reflex loop for one incident: alert, target, and the record of diagnosis, proposal, CI, approval, deploy and verification.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Kind", type_ = "string", json_path = ".spec.target.kind", priority = 1),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.target.name"),
    printcolumn(name = "Policy", type_ = "string", json_path = ".spec.policyRef.name"),
    printcolumn(name = "Alert", type_ = "string", json_path = ".spec.alert.name", priority = 1),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Message", type_ = "string", json_path = ".status.message", priority = 1)
)]
#[x_kube(validation = Rule::new("self.policyRef == oldSelf.policyRef && self.alert == oldSelf.alert && self.target == oldSelf.target").message("policyRef, alert and target are immutable; only cancel may change"))]
#[x_kube(validation = Rule::new("!oldSelf.cancel || self.cancel").message("cancel cannot be undone once set"))]
#[serde(rename_all = "camelCase")]
pub struct RemediationSpec {
    /// The RemediationPolicy (same namespace) that governs this run.
    pub policy_ref: LocalObjectRef,
    /// The alert that started it.
    pub alert: AlertRef,
    /// The object to fix (same namespace).
    pub target: TargetRef,
    /// Set to true to stop the run; nothing further is deployed.
    #[serde(default)]
    pub cancel: bool,
}

/// The alert as Alertmanager delivered it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AlertRef {
    /// The `alertname` label.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Alertmanager's fingerprint of the label set.
    #[schemars(length(min = 1, max = 64))]
    pub fingerprint: String,
    /// All labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// All annotations (data, never instructions).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// When the alert started firing.
    pub starts_at: Time,
    /// Link to the alert's source expression.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "generatorURL")]
    pub generator_url: Option<String>,
}

/// The object to fix.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// API version, e.g. `apps/v1`.
    #[schemars(length(min = 1, max = 63))]
    pub api_version: String,
    /// Kind.
    pub kind: TargetKind,
    /// Name (an object name: lowercase letters, digits, `-` and `.`).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
}

/// The label on a Remediation another agent asked for over A2A (value `a2a`): its alert is
/// what the caller said, not what Alertmanager delivered, so nothing is silenced for it.
pub const REQUESTED_OVER_LABEL: &str = "reflex.dev/requested-over";

/// Where a Remediation is in the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// Created; not started.
    #[default]
    Pending,
    /// Reading production and producing a proposal.
    Diagnosing,
    /// A proposal exists; testing has not started.
    Proposed,
    /// The proposal is checked and tested; then the gate decides.
    Testing,
    /// Waiting for a RemediationApproval.
    AwaitingApproval,
    /// Snapshotting the previous state and applying the change.
    Deploying,
    /// Watching the verification query.
    Verifying,
    /// Restoring the recorded previous state.
    RollingBack,
    /// Verified: the fix held. Terminal.
    Succeeded,
    /// A stage failed for good before anything was deployed. Terminal.
    Failed,
    /// The change did not hold and was reverted. Terminal.
    RolledBack,
    /// The alert resolved, or a person cancelled or rejected. Terminal.
    Cancelled,
    /// Humans must act: budget exhausted, repeated failure, or policy says so. Terminal.
    Escalated,
    /// The change was kept though verification could not decide (the policy's `keep`): not
    /// proven, so no trust is earned by it. Terminal.
    Unverified,
}

impl Phase {
    /// Every phase, in loop order.
    pub const ALL: [Phase; 14] = [
        Phase::Pending,
        Phase::Diagnosing,
        Phase::Proposed,
        Phase::Testing,
        Phase::AwaitingApproval,
        Phase::Deploying,
        Phase::Verifying,
        Phase::RollingBack,
        Phase::Succeeded,
        Phase::Failed,
        Phase::RolledBack,
        Phase::Cancelled,
        Phase::Escalated,
        Phase::Unverified,
    ];

    /// Terminal phases are final.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::RolledBack | Self::Cancelled | Self::Escalated | Self::Unverified
        )
    }

    /// Whether a change may have reached the target in this phase.
    pub fn after_deploy(self) -> bool {
        matches!(self, Self::Deploying | Self::Verifying | Self::RollingBack)
    }

    /// The phases this phase may move to. Everything else is an illegal transition.
    pub fn successors(self) -> &'static [Phase] {
        use Phase::*;
        match self {
            Pending => &[Diagnosing, Cancelled, Escalated],
            Diagnosing => &[Proposed, Failed, Cancelled, Escalated],
            Proposed => &[Testing, Failed, Cancelled, Escalated],
            Testing => &[AwaitingApproval, Deploying, Failed, Cancelled, Escalated],
            AwaitingApproval => &[Deploying, Failed, Cancelled, Escalated],
            // Back to Testing when the target changed since CI tested the change.
            Deploying => &[Testing, Verifying, RollingBack, Failed, Cancelled, Escalated],
            Verifying => &[Succeeded, RollingBack, Cancelled, Escalated, Unverified],
            RollingBack => &[RolledBack, Escalated],
            Succeeded | Failed | RolledBack | Cancelled | Escalated | Unverified => &[],
        }
    }

    /// The phase's name as written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Diagnosing => "Diagnosing",
            Self::Proposed => "Proposed",
            Self::Testing => "Testing",
            Self::AwaitingApproval => "AwaitingApproval",
            Self::Deploying => "Deploying",
            Self::Verifying => "Verifying",
            Self::RollingBack => "RollingBack",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::RolledBack => "RolledBack",
            Self::Cancelled => "Cancelled",
            Self::Escalated => "Escalated",
            Self::Unverified => "Unverified",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One effect of the loop; each is run through its stage's trait.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub enum Step {
    /// Read production (MCP tools) and summarise what is wrong.
    Diagnose,
    /// Produce a patch (playbook and/or LLM).
    Propose,
    /// Patch-safety check, server-side dry-run, optional Job or GitOps checks.
    Test,
    /// Decide whether the change may deploy now, needs a human, or must not happen.
    Gate,
    /// Record the target's current values of every field the patch touches.
    Snapshot,
    /// Apply the tested patch.
    Deploy,
    /// Check once whether the workload has rolled the change out.
    Rollout,
    /// Take one verification sample and judge.
    Verify,
    /// Restore the snapshot.
    Rollback,
}

impl Step {
    /// Every step, in loop order.
    pub const ALL: [Step; 9] = [
        Step::Diagnose,
        Step::Propose,
        Step::Test,
        Step::Gate,
        Step::Snapshot,
        Step::Deploy,
        Step::Rollout,
        Step::Verify,
        Step::Rollback,
    ];

    /// Lower-case name for logs, metrics and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Diagnose => "diagnose",
            Self::Propose => "propose",
            Self::Test => "test",
            Self::Gate => "gate",
            Self::Snapshot => "snapshot",
            Self::Deploy => "deploy",
            Self::Rollout => "rollout",
            Self::Verify => "verify",
            Self::Rollback => "rollback",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Progress of one recorded effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StepState {
    /// Recorded before the effect ran; no outcome yet.
    Started,
    /// The effect completed.
    Succeeded,
    /// The effect failed; `category` says how.
    Failed,
    /// The effect was stopped before it completed (cancellation).
    Cancelled,
}

/// One effect, keyed by step and attempt: recorded before it runs, completed after.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    /// Which effect.
    pub step: Step,
    /// Attempt number, from 1, per step.
    pub attempt: u32,
    /// Progress.
    pub state: StepState,
    /// Failure category when failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<ErrorCategory>,
    /// Outcome detail for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the effect was recorded as started.
    pub started_at: Time,
    /// When the outcome was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
}

/// State of the alert as last delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// Still firing.
    #[default]
    Firing,
    /// Alertmanager reported it resolved.
    Resolved,
}

/// How often and when the alert was seen.
///
/// Several alerts (one per pod, say) can feed one Remediation: each is tracked by its
/// fingerprint, and the Remediation's alert is resolved only when all of them are.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AlertObservation {
    /// Resolved when every alert feeding this Remediation has resolved.
    pub state: AlertState,
    /// Deliveries of this alert seen by intake.
    pub times_seen: u64,
    /// First delivery.
    pub first_seen: Time,
    /// Latest delivery.
    pub last_seen: Time,
    /// When the alert last resolved, if it did (kept when it fires again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<Time>,
    /// When an alert started again after having resolved: a new occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refired_at: Option<Time>,
    /// The alerts feeding this Remediation, by fingerprint (bounded; resolved ones are
    /// forgotten first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub alerts: Vec<AlertInstance>,
}

/// Most alert instances [`AlertObservation::alerts`] keeps.
pub const MAX_ALERT_INSTANCES: usize = 256;

/// One alert (one fingerprint) and its current occurrence.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AlertInstance {
    /// Alertmanager's fingerprint of the alert's labels.
    pub fingerprint: String,
    /// When this occurrence started (a later one is a new occurrence).
    pub starts_at: Time,
    /// When this occurrence resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<Time>,
}

/// Everything the controller recorded about the run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RemediationStatus {
    /// Where the run is.
    #[serde(default)]
    pub phase: Phase,
    /// Generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// One-line summary for `kubectl get -o wide`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The alert as intake has seen it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<AlertObservation>,
    /// Diagnosis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<Diagnosis>,
    /// The proposed change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposal: Option<Proposal>,
    /// CI result for the proposal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci: Option<CiResult>,
    /// Gate decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateResult>,
    /// A person's decision, when one was needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRecord>,
    /// Previous state and applied change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<DeployRecord>,
    /// Verification samples and verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// How the applied change is rolling out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// The Alertmanager silence held while the fix is in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silence: Option<SilenceRecord>,
    /// The rollback, when one happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackRecord>,
    /// Trace id under which every step of this run is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Recent effects, oldest first (bounded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub steps: Vec<StepRecord>,
    /// How many times the change was tested again because its target changed since CI.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retests: u32,
    /// When the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the run reached a terminal phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
}

impl RemediationStatus {
    /// Whether no change has been applied yet: a phase before deploy, or deploying with no
    /// apply recorded.
    pub fn nothing_applied(&self) -> bool {
        !self.phase.after_deploy()
            || (self.phase == Phase::Deploying && self.deploy.as_ref().is_none_or(|d| d.applied_at.is_none()))
    }

    /// When the change began waiting for approval: when the gate that asked for it finished.
    pub fn waiting_since(&self) -> Option<k8s_openapi::jiff::Timestamp> {
        let gate = self.last_step(Step::Gate).filter(|r| r.state == StepState::Succeeded)?;
        gate.finished_at.as_ref().map(|t| t.0)
    }

    /// The approval deadline: `timeout` after the change began waiting for approval.
    pub fn approval_deadline(&self, timeout: Option<std::time::Duration>) -> Option<k8s_openapi::jiff::Timestamp> {
        let since = self.waiting_since()?;
        let timeout = k8s_openapi::jiff::SignedDuration::try_from(timeout?).ok()?;
        since.checked_add(timeout).ok()
    }

    /// The latest record of `step`, if any.
    pub fn last_step(&self, step: Step) -> Option<&StepRecord> {
        self.steps.iter().rev().find(|r| r.step == step)
    }

    /// Failed attempts of `step` since its last success.
    pub fn consecutive_failures(&self, step: Step) -> u32 {
        let mut n = 0;
        for record in self.steps.iter().rev().filter(|r| r.step == step) {
            match record.state {
                // Waiting for something outside Reflex is not a failure of the step.
                StepState::Failed if record.category == Some(ErrorCategory::Deferred) => {}
                StepState::Failed => n += 1,
                StepState::Succeeded => break,
                StepState::Started | StepState::Cancelled => {}
            }
        }
        n
    }

    /// Appends a record; beyond [`MAX_STEPS`], drops the oldest record that is not its
    /// step's latest (the latest of each step is what the loop decides by — a long run of
    /// deferred retries must not push out when the gate decided, say).
    pub fn push_step(&mut self, record: StepRecord) {
        self.steps.push(record);
        while self.steps.len() > MAX_STEPS {
            let superseded = (0..self.steps.len())
                .find(|&i| self.steps[i + 1..].iter().any(|later| later.step == self.steps[i].step));
            self.steps.remove(superseded.unwrap_or(0));
        }
    }
}
