//! What each step leaves in a Remediation's status: the diagnosis, the proposal, CI, the gate,
//! approvals, the deploy, verification, guards, the silence, the rollout and the rollback.

use super::*;

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
