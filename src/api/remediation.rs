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

/// One finding of the diagnosis.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// Where it came from (tool name, query).
    pub source: String,
    /// What was found.
    pub detail: String,
}

/// What diagnosis found.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Diagnosis {
    /// One-paragraph summary.
    pub summary: String,
    /// Individual findings (bounded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub findings: Vec<Finding>,
}

/// Who produced a proposal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProposalSource {
    /// A deterministic playbook.
    Playbook,
    /// The LLM agent.
    Llm,
    /// Another agent, over A2A (the policy's `delegate.propose`).
    Delegate,
}

/// Token usage of LLM calls.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TokenUsage {
    /// Prompt tokens.
    pub prompt: u64,
    /// Completion tokens.
    pub completion: u64,
}

/// The proposed change.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Proposal {
    /// Patch format.
    pub patch_type: PatchType,
    /// The patch body.
    pub patch: AnyJson,
    /// `sha256:<hex>` of the canonical patch; CI results and deploys refer to it.
    pub digest: String,
    /// Why this change.
    pub rationale: String,
    /// What should happen once it is applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_effect: Option<String>,
    /// Playbook or LLM.
    pub produced_by: ProposalSource,
    /// Playbook name, when one was used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub playbook: Option<String>,
    /// Model name, when the LLM was used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Tokens spent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<TokenUsage>,
    /// Money spent in US dollars (decimal string).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "costUSD")]
    pub cost_usd: Option<String>,
}

/// CI backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum CiBackend {
    /// Safety check and server-side dry-run only.
    DryRun,
    /// A test Job.
    Job,
    /// A pull request and its checks.
    Gitops,
}

/// Pass or fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CiVerdict {
    /// Every check passed.
    Passed,
    /// A check rejected the proposal.
    Failed,
}

/// Result of testing one proposal.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CiResult {
    /// Digest of the proposal that was tested.
    pub proposal_digest: String,
    /// Backend that ran last.
    pub backend: CiBackend,
    /// Passed or failed.
    pub verdict: CiVerdict,
    /// Every reason the proposal was refused, or a summary of what passed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub messages: Vec<String>,
    /// Job name or pull-request URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The target's revision CI tested against (`generation N`, or `resourceVersion R` for
    /// kinds without a spec): deploy refuses when the target has changed since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_revision: Option<String>,
    /// What the change does to the live object, as the server-side dry-run answered: a
    /// unified diff of the two manifests (server-set fields left out), cut at 8 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub diff: Option<String>,
    /// The last lines the test Job printed (control characters removed, each cut at 240
    /// characters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub log_tail: Vec<String>,
    /// The GitOps pull request that carries the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<PullRequestRecord>,
}

/// A pull request (GitHub) or merge request (GitLab) Reflex opened.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PullRequestRecord {
    /// Its number (GitHub) or project-level iid (GitLab).
    pub number: u64,
    /// Its web page.
    pub url: String,
    /// The branch it merges (`reflex/<remediation>`).
    pub branch: String,
    /// The commit Reflex pushed.
    pub commit: String,
    /// The base branch's commit the change was made on.
    pub base_commit: String,
    /// The file the change edits, relative to the repository root.
    pub file: String,
    /// Each check's final state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub checks: Vec<CheckRecord>,
    /// The merge commit, once merged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_commit: Option<String>,
}

/// One check of a pull request.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckRecord {
    /// Its name (status context or check-run name).
    pub name: String,
    /// `success`, `failure`, `pending`, … as the forge reported it.
    pub state: String,
    /// Where its details are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// What the gate decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum GateDecision {
    /// Deploy now.
    Approved,
    /// Wait for a RemediationApproval.
    ApprovalRequired,
    /// Only humans may act (trust `observe`, or RBAC refuses the deployer identity).
    Denied,
}

/// Result of the gate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GateResult {
    /// The decision.
    pub decision: GateDecision,
    /// Why.
    pub reason: String,
    /// ServiceAccount the deploy impersonates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

/// A person's decision as applied to this Remediation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRecord {
    /// The RemediationApproval's name.
    pub name: String,
    /// Approve or reject.
    pub decision: ApprovalDecision,
    /// Who decided.
    pub approver: String,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the decision was applied.
    pub decided_at: Time,
}

/// The deploy: previous values (recorded before applying) and what was applied.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeployRecord {
    /// The target's values of every field the patch touches, before the change.
    pub previous: AnyJson,
    /// The target's resourceVersion when the snapshot was taken.
    pub previous_resource_version: String,
    /// Digest of the proposal applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_digest: Option<String>,
    /// Revision produced by the apply (resourceVersion or rollout revision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_revision: Option<String>,
    /// Identity the apply ran as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The field manager that owns the fields the change set (`reflex-<name>-<uid hash>`; a record —
    /// rollback derives it from the Remediation's name again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_manager: Option<String>,
    /// When the change was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<Time>,
    /// A GitOps change: the merged pull request (with its merge commit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<PullRequestRecord>,
}

/// Verification verdicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum VerificationVerdict {
    /// Not decided yet; more samples are needed.
    Pending,
    /// The condition held for the whole window.
    Passed,
    /// The condition broke more often than `failureLimit` allows, the alert fired again, or
    /// the timeout passed with the condition still broken.
    Failed,
    /// No data, too few samples, or neither held nor failed by the timeout: nothing proven
    /// either way.
    Inconclusive,
    /// The metrics provider failed (errors in a row beyond `consecutiveErrorLimit`, or it
    /// rejected the query): nothing was measured.
    Error,
}

/// One verification sample.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    /// When it was taken.
    pub at: Time,
    /// The value (worst series), absent when the query returned no data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Whether the condition held.
    pub ok: bool,
    /// The metrics provider's error, when it failed to answer (no value, and not a bad
    /// sample).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What one sample says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleKind {
    /// The condition held.
    Good,
    /// The condition broke.
    Bad,
    /// The query returned no data.
    NoData,
    /// The provider failed.
    Error,
}

impl Sample {
    /// What this sample says.
    pub fn kind(&self) -> SampleKind {
        match (&self.error, self.value, self.ok) {
            (Some(_), _, _) => SampleKind::Error,
            (None, None, _) => SampleKind::NoData,
            (None, Some(_), true) => SampleKind::Good,
            (None, Some(_), false) => SampleKind::Bad,
        }
    }
}

/// Verification progress and verdict.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// Pending, passed or failed.
    pub verdict: VerificationVerdict,
    /// Recent samples (bounded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 60))]
    pub samples: Vec<Sample>,
    /// Why the verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When verification began.
    pub started_at: Time,
    /// When the next sample is due (while pending).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_sample_at: Option<Time>,
    /// For Inconclusive and Error: what the verification rule says follows (`onInconclusive`
    /// / `onError`; escalate when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<crate::api::policy::VerdictAction>,
    /// The PromQL expression sampled — the policy's, or the one derived from the alert's rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The condition each sample is held to and the window (`< 1 for 60s`; for a check
    /// derived from the alert, `no series for 60s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// The threshold samples are compared with (absent for a check derived from the alert).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// A check derived from the alert reproduced the alert at its start (until it has, an
    /// empty answer proves nothing).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reproduced: bool,
    /// The guards: each metric's value just before the change and now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub guards: Vec<GuardStatus>,
}

/// One guard metric against its baseline.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GuardStatus {
    /// The guard's name.
    pub name: String,
    /// Its value just before the change (absent: no data then, or not read yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<f64>,
    /// Whether the baseline was read (a read that found no data still counts as read).
    #[serde(default)]
    pub baseline_read: bool,
    /// Its latest value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<f64>,
    /// It got worse than its margin allows.
    #[serde(default)]
    pub worse: bool,
}

/// An Alertmanager silence of the alert while its fix is in flight.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SilenceRecord {
    /// Alertmanager's silence id.
    pub id: String,
    /// When it expires by itself.
    pub ends_at: Time,
    /// Expired by Reflex when the Remediation ended.
    #[serde(default)]
    pub expired: bool,
}

/// Where a rollout stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RolloutState {
    /// Not rolled out yet; checked again at `nextCheckAt`.
    Progressing,
    /// Every Pod runs the change: updated, ready and available.
    Complete,
    /// It will not finish: ProgressDeadlineExceeded, or the policy's rollout timeout.
    Stalled,
}

/// How the applied change is rolling out.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Progressing, Complete or Stalled.
    pub state: RolloutState,
    /// What the workload reports (replicas updated, ready, available; the reason it stalled).
    pub message: String,
    /// When it was found complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// When to look again (while progressing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_check_at: Option<Time>,
}

/// The rollback performed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RollbackRecord {
    /// Why the change was reverted.
    pub reason: String,
    /// Revision after restoring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_revision: Option<String>,
    /// When the previous state was restored.
    pub restored_at: Time,
    /// A GitOps change: the merged pull request that reverted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<PullRequestRecord>,
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
