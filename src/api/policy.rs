//! `RemediationPolicy`: which alerts Reflex acts on, what it may change, how it proves a
//! fix, and how much it may do on its own.
//!
//! Contract: plain data. CEL rules catch what the API server can (enums, bounds, `for` not
//! longer than `timeout`, one CI backend); [`crate::api::validate`] checks the rest
//! (matcher syntax, templates, durations) once and yields a validated policy.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DurationString, Environment, SecretKeyRef, TargetKind};

/// A policy: alerts it matches, the target it fixes, and the rules the fix must follow.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "reflex.dev",
    version = "v1alpha1",
    kind = "RemediationPolicy",
    namespaced,
    status = "RemediationPolicyStatus",
    shortname = "rpol",
    category = "reflex",
    doc = "Which alerts Reflex remediates in this namespace, with which playbook, and under which trust, CI, verification and limits.",
    printcolumn(name = "Playbook", type_ = "string", json_path = ".spec.playbook"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.agent.mode"),
    printcolumn(name = "Trust", type_ = "string", json_path = ".spec.trust.level"),
    printcolumn(name = "Suspended", type_ = "boolean", json_path = ".spec.limits.suspend"),
    printcolumn(name = "Earned", type_ = "boolean", json_path = ".status.trust.earned"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("self.agent.mode == 'llm' || has(self.playbook)").message("playbook is required unless agent.mode is llm"))]
#[serde(rename_all = "camelCase")]
pub struct RemediationPolicySpec {
    /// Which alerts this policy acts on.
    #[serde(rename = "match")]
    pub match_: AlertMatch,
    /// How to find the object to fix from the alert's labels.
    pub target: TargetSelector,
    /// Name of a Playbook in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub playbook: Option<String>,
    /// Whether a deterministic playbook, an LLM agent, or both produce the fix.
    #[serde(default)]
    pub agent: AgentSpec,
    /// Staging or production; when unset, read from the namespace label
    /// `reflex.dev/environment` (production if absent, the safe default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    /// How much Reflex may do without a human.
    #[serde(default)]
    pub trust: TrustSpec,
    /// How a proposed patch is tested before it is deployed.
    #[serde(default)]
    pub ci: CiSpec,
    /// How a deployed fix is proven; defaults to the playbook's verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySpec>,
    /// Rate limits, cooldowns, retries and the suspend switch.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// How long a deployed change may take to roll out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
    /// Silence the alert in Alertmanager (its exact labels) while the fix deploys and is
    /// verified, so on-call is not paged for a fix in flight; expired when the Remediation
    /// ends. Needs the operator's `--alertmanager-url`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub silence_alert: bool,
    /// Where to tell humans what happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<NotifySpec>,
    /// Steps handed to another agent over A2A, found by skill among the agents Reflex
    /// discovered (Services annotated `reflex.dev/a2a-agent: "true"`). A delegate's proposal
    /// goes through the same patch-safety check, CI and gate as any other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegate: Option<DelegateSpec>,
}

/// The steps a policy delegates.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DelegateSpec {
    /// The diagnosis: the delegate's findings instead of the playbook's reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnose: Option<Delegation>,
    /// The change (in GitOps mode, the change the pull request carries): the delegate's
    /// patch instead of the playbook's or the LLM's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propose: Option<Delegation>,
}

/// One delegated step.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Delegation {
    /// The skill id the agent's card must list.
    #[schemars(length(min = 1, max = 128))]
    pub skill: String,
    /// Only this agent: the annotated Service's name in the policy's namespace, or
    /// `namespace/name`. Unset: any discovered agent in the policy's namespace with the skill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// How long the delegate has, streaming included (at most 10m).
    #[serde(default = "default_delegation_timeout")]
    pub timeout: DurationString,
    /// When the delegate does not answer usefully (gone, timed out, refused, malformed):
    /// `escalate` (the default: a person looks, told why), `playbook` or `llm`.
    #[serde(default)]
    pub fallback: DelegationFallback,
}

/// What runs when a delegation fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DelegationFallback {
    /// End the step for a person, with the reason.
    #[default]
    Escalate,
    /// The policy's playbook.
    Playbook,
    /// The policy's LLM agent.
    Llm,
}

fn default_delegation_timeout() -> DurationString {
    DurationString::new("60s")
}

/// Alert selection: names plus Alertmanager-syntax label matchers, all of which must hold.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AlertMatch {
    /// Alert names (the `alertname` label); any one of them matches.
    #[schemars(length(min = 1, max = 32))]
    pub alertnames: Vec<String>,
    /// Label matchers in Alertmanager syntax, e.g. `severity=~"critical|page"`,
    /// `namespace="shop"`, `team!="infra"`. Regexes are anchored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub matchers: Vec<String>,
}

/// The object to fix, found from the alert's labels. It is always in the policy's own
/// namespace, whatever the alert says. Either `kind` and a `name` template, or `kinds`: the
/// kinds the policy acts on, the target resolved from what the alert names — a Pod (`pod`,
/// followed through its controllers: ReplicaSet → Deployment, StatefulSet, DaemonSet), a
/// workload (`deployment`, `statefulset`, `daemonset`) or an HPA (`horizontalpodautoscaler`),
/// as kube-state-metrics and the kubernetes-mixin alerts label them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.kinds) ? !has(self.kind) && !has(self.name) : has(self.kind) && has(self.name)").message("give kind and name, or kinds (resolved from the alert's labels), not both"))]
#[serde(rename_all = "camelCase")]
pub struct TargetSelector {
    /// Kind of the target (with `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<TargetKind>,
    /// Name template: literal text and `{{ labels.NAME }}` placeholders,
    /// e.g. `{{ labels.deployment }}` (with `kind`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,
    /// The kinds the policy acts on, the target resolved from the alert's labels (instead of
    /// `kind` and `name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 5))]
    pub kinds: Vec<TargetKind>,
}

/// How the fix is produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AgentMode {
    /// Only the deterministic playbook.
    #[default]
    Playbook,
    /// Only the LLM agent.
    Llm,
    /// The LLM agent first; the playbook when the agent escalates, fails or runs out of budget.
    LlmThenPlaybook,
}

/// The LLM agent's model, tools and budgets.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.mode == 'playbook' || has(self.model)").message("agent.model is required when agent.mode is llm or llm-then-playbook"))]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// `playbook`, `llm` or `llm-then-playbook`.
    #[serde(default)]
    pub mode: AgentMode,
    /// OpenAI-compatible chat-completions endpoint and model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSpec>,
    /// External MCP servers the agent may call, besides Reflex's own tools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub mcp_servers: Vec<McpServerSpec>,
    /// Most LLM turns in one run.
    #[serde(default = "default_max_iterations")]
    #[schemars(range(min = 1, max = 100))]
    pub max_iterations: u32,
    /// Most tokens (prompt + completion) in one run.
    #[serde(default = "default_max_tokens")]
    #[schemars(range(min = 1000, max = 10_000_000))]
    pub max_tokens: u32,
    /// Most money one run may spend, in US dollars (decimal string, e.g. "0.50").
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "maxCostUSD")]
    #[schemars(regex(pattern = r"^[0-9]{1,6}(\.[0-9]{1,6})?$"))]
    pub max_cost_usd: Option<String>,
    /// Wall-clock budget for one agent run.
    #[serde(default = "default_agent_timeout")]
    pub timeout: DurationString,
    /// Instructions for the LLM agent (its system prompt), after the playbook's own
    /// `agentInstructions` when both are given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16384))]
    pub instructions: Option<String>,
}

impl Default for AgentSpec {
    fn default() -> Self {
        Self {
            mode: AgentMode::default(),
            model: None,
            mcp_servers: Vec::new(),
            max_iterations: default_max_iterations(),
            max_tokens: default_max_tokens(),
            max_cost_usd: None,
            timeout: default_agent_timeout(),
            instructions: None,
        }
    }
}

fn default_max_iterations() -> u32 {
    10
}
fn default_max_tokens() -> u32 {
    100_000
}
fn default_agent_timeout() -> DurationString {
    DurationString::new("5m")
}

/// An OpenAI-compatible model endpoint.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// Base URL of the chat-completions API, e.g. `https://api.openai.com/v1`.
    #[schemars(length(min = 1, max = 2048))]
    pub endpoint: String,
    /// Model name as the endpoint knows it.
    #[schemars(length(min = 1, max = 256))]
    pub model: String,
    /// Secret key holding the API key; omit for endpoints without auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,
}

/// An external MCP server and the tools the agent may call on it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct McpServerSpec {
    /// Short name used in audit records and playbooks.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Streamable-HTTP endpoint URL.
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// Allowed tools; tools not listed are never called.
    #[schemars(length(min = 1, max = 64))]
    pub tools: Vec<ToolPin>,
    /// Secret key holding a bearer token for the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_secret_ref: Option<SecretKeyRef>,
    /// Per-call timeout.
    #[serde(default = "default_tool_timeout")]
    pub timeout: DurationString,
}

fn default_tool_timeout() -> DurationString {
    DurationString::new("30s")
}

/// An allowed tool, optionally pinned to the hash of its schema.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ToolPin {
    /// Tool name as the server lists it.
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    /// `sha256:<hex>` of the tool's input and output schemas, annotations and description (the
    /// model reads it); drift refuses the run. `reflex mcp manifest` prints Reflex's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^sha256:[0-9a-f]{64}$"))]
    pub schema_hash: Option<String>,
}

/// How much Reflex may do on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TrustLevel {
    /// Diagnose only; never propose a change: the findings go to people (the Remediation
    /// ends Escalated with them, and the notification carries them).
    Observe,
    /// Propose and test; deploy only with a human's approval.
    #[default]
    Propose,
    /// Deploy on its own where the environment and earned trust allow.
    Auto,
}

/// Trust: level, approval requirement and the earned-trust threshold for production.
#[derive(Default, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrustSpec {
    /// `observe`, `propose` or `auto`.
    #[serde(default)]
    pub level: TrustLevel,
    /// Always wait for a RemediationApproval before deploying.
    #[serde(default)]
    pub require_approval: bool,
    /// At `auto`, production changes need this many recent verified successes.
    #[serde(default)]
    pub earned_trust: EarnedTrust,
    /// Distinct people whose approvals a change needs when it waits for approval (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10))]
    pub required_approvals: Option<u32>,
    /// How long a change waits for approval before it escalates (reason `ApprovalExpired`);
    /// approvals made after that do not count. Unset: it waits until `limits.maxDuration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_timeout: Option<DurationString>,
}

/// The record a policy must have before it deploys to production without a human.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EarnedTrust {
    /// Verified successes needed, with no failed verification or rollback in between.
    #[serde(default = "default_successes")]
    #[schemars(range(min = 1, max = 1000))]
    pub successes_required: u32,
    /// How far back successes count.
    #[serde(default = "default_trust_window")]
    pub window: DurationString,
}

impl Default for EarnedTrust {
    fn default() -> Self {
        Self { successes_required: default_successes(), window: default_trust_window() }
    }
}

fn default_successes() -> u32 {
    3
}
fn default_trust_window() -> DurationString {
    DurationString::new("720h")
}

/// How a proposed patch is tested: the server-side dry-run always, plus at most one of a
/// test Job or a GitOps pull request.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!(has(self.job) && has(self.gitops))").message("choose at most one of ci.job and ci.gitops"))]
#[serde(rename_all = "camelCase")]
pub struct CiSpec {
    /// Server-side dry-run of the patch. Always on; it cannot be disabled.
    #[serde(default = "default_true")]
    #[x_kube(validation = Rule::new("self == true").message("ci.dryRun cannot be disabled: every patch is dry-run on the API server"))]
    pub dry_run: bool,
    /// A Kubernetes Job that tests the patched manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<CiJobSpec>,
    /// Push the patch to a branch, open a pull request and wait for its checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gitops: Option<GitopsSpec>,
}

impl Default for CiSpec {
    fn default() -> Self {
        Self { dry_run: true, job: None, gitops: None }
    }
}

fn default_true() -> bool {
    true
}

/// A test Job: the patched manifest is mounted at `/reflex/manifest.yaml` (the live object at
/// `/reflex/live.yaml`); exit code 0 passes. It runs as the deployer identity of the policy's
/// environment, in the target's namespace, under the restricted Pod Security profile, with no
/// ServiceAccount token mounted.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CiJobSpec {
    /// Container image that runs the test.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Command to run; exit code 0 passes.
    #[schemars(length(min = 1, max = 64))]
    pub command: Vec<String>,
    /// Environment variables for the test (plain values; no Secret references).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub env: Vec<CiEnvVar>,
    /// Most time the Job may take; one still running then fails the test and is deleted.
    #[serde(default = "default_ci_timeout")]
    pub timeout: DurationString,
}

/// One environment variable of a test Job.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CiEnvVar {
    /// Variable name (a C identifier).
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    /// Its value.
    #[serde(default)]
    #[schemars(length(max = 4096))]
    pub value: String,
}

fn default_ci_timeout() -> DurationString {
    DurationString::new("10m")
}

/// A GitOps flow: the patch becomes a commit on branch `reflex/<remediation>` in the
/// repository the cluster is synced from, a pull request whose checks must pass, a merge when
/// the gate allows, and a wait until the live object has converged; a rollback merges a
/// revert of that merge.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GitopsSpec {
    /// Repository to clone and push to: `https://host/owner/repo.git` or
    /// `ssh://git@host/owner/repo.git` (`git@host:owner/repo.git` too).
    #[schemars(length(min = 1, max = 2048))]
    pub repository: String,
    /// Base branch the pull request targets.
    #[serde(default = "default_branch")]
    #[schemars(length(min = 1, max = 255))]
    pub base_branch: String,
    /// Path of the file (relative to the repository root) that sets the target's fields;
    /// unset: every YAML file under `searchPath` is searched for the object by kind, name and
    /// namespace (Kustomize patch files that set a changed field are preferred to the base).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub path: Option<String>,
    /// Directory the search is limited to (relative to the root; default the whole repository).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub search_path: Option<String>,
    /// Secret in the policy's namespace with the credentials: key `token` (the forge API, and
    /// git over HTTPS), and for SSH remotes `ssh-privatekey` and `known_hosts`.
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: String,
    /// The forge that hosts the repository and its pull requests.
    pub forge: ForgeSpec,
    /// Names of checks (commit statuses or check runs) that must pass; empty: at least one
    /// must report and every one reported must pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub required_checks: Vec<String>,
    /// Most time to wait for checks to pass.
    #[serde(default = "default_ci_timeout")]
    pub checks_timeout: DurationString,
    /// Who approves the merge: `gate` (Reflex's gate and RemediationApprovals; the default) or
    /// `forge` (the pull request's own reviews: Reflex merges once the forge says it may).
    #[serde(default)]
    pub merge_approval: MergeApproval,
    /// Most time after the merge for the live object to converge to the patched state.
    #[serde(default = "default_converge_timeout")]
    pub converge_timeout: DurationString,
}

/// Which forge API to speak.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ForgeSpec {
    /// `github` (GitHub and GitHub Enterprise Server) or `gitlab` (GitLab.com and self-managed).
    #[serde(rename = "type")]
    pub type_: ForgeType,
    /// Base URL of the API: default `https://api.github.com` or `https://gitlab.com/api/v4`;
    /// a self-hosted forge names its own (`https://ghe.example.com/api/v3`,
    /// `https://gitlab.example.com/api/v4`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub api_url: Option<String>,
    /// The repository on the forge: `owner/repo` (GitHub) or the project path `group/project`
    /// (GitLab). Default: derived from `repository`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub project: Option<String>,
}

/// Forge kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ForgeType {
    /// GitHub REST API v3.
    Github,
    /// GitLab REST API v4.
    Gitlab,
}

/// Who approves a GitOps merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum MergeApproval {
    /// Reflex's gate (trust level and RemediationApprovals).
    #[default]
    Gate,
    /// The forge's own review rules: merge once the forge reports the pull request mergeable
    /// with its required reviews.
    Forge,
}

fn default_converge_timeout() -> DurationString {
    DurationString::new("10m")
}

fn default_branch() -> String {
    "main".to_owned()
}

/// Comparison applied to each verification sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Comparison {
    /// Value below the threshold.
    #[serde(rename = "<")]
    Less,
    /// Value at or below the threshold.
    #[serde(rename = "<=")]
    LessOrEqual,
    /// Value above the threshold.
    #[serde(rename = ">")]
    Greater,
    /// Value at or above the threshold.
    #[serde(rename = ">=")]
    GreaterOrEqual,
    /// Value equal to the threshold.
    #[serde(rename = "==")]
    Equal,
    /// Value different from the threshold.
    #[serde(rename = "!=")]
    NotEqual,
}

/// Proof that a fix worked: a PromQL expression whose value must satisfy a condition for
/// a whole window, within a timeout.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("duration(self.__for__) <= duration(self.timeout)").message("verify.for must not be longer than verify.timeout"))]
#[x_kube(validation = Rule::new("duration(self.interval) <= duration(self.timeout)").message("verify.interval must not be longer than verify.timeout"))]
#[x_kube(validation = Rule::new("duration(self.interval) >= duration('1s')").message("verify.interval must be at least 1s"))]
#[x_kube(validation = Rule::new("has(self.query) == has(self.operator) && has(self.query) == has(self.threshold)").message("verify.query, operator and threshold go together; leave all three out to verify against the alert's own rule"))]
#[serde(rename_all = "camelCase")]
pub struct VerifySpec {
    /// PromQL expression whose value is checked against the condition. Leave it out to
    /// verify against the alert itself: the firing alert's rule (from Prometheus's rules
    /// API), scoped to the alert's series, must return nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub query: Option<String>,
    /// Comparison operator (with `query`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<Comparison>,
    /// Threshold the value is compared with (with `query`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// How long the condition must hold without a break.
    #[serde(rename = "for")]
    pub for_: DurationString,
    /// Most time verification may take to decide; undecided by then, it is Inconclusive
    /// (or Failed when the latest sample still breaks the condition).
    pub timeout: DurationString,
    /// Time between samples.
    #[serde(default = "default_interval")]
    pub interval: DurationString,
    /// How long to wait after the change has rolled out before the first sample (a
    /// stabilization window: samples in it would judge the old Pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay: Option<DurationString>,
    /// Samples that break the condition before the fix fails at once. Unset: a bad sample
    /// only restarts the window, and the fix fails if it has not held by the timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 59))]
    pub failure_limit: Option<u32>,
    /// Samples with no data before the verdict is Inconclusive at once. Unset: no data only
    /// counts at the timeout (undecided: Inconclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 59))]
    pub inconclusive_limit: Option<u32>,
    /// Metrics-provider errors in a row before the verdict is Error. A provider error never
    /// counts as a bad sample.
    #[serde(default = "default_consecutive_error_limit")]
    #[schemars(range(max = 59))]
    pub consecutive_error_limit: u32,
    /// What an Inconclusive verdict leads to: `escalate` (the default: humans decide, the
    /// change stays), `rollback`, or `keep` (the change stays, the Remediation ends
    /// Unverified).
    #[serde(default)]
    pub on_inconclusive: VerdictAction,
    /// What an Error verdict (the metrics provider failed) leads to; as `onInconclusive`.
    #[serde(default)]
    pub on_error: VerdictAction,
    /// Collateral damage: metrics that must not get worse than they were just before the
    /// change by more than their margin (error rate, p99 latency). A fix that clears the
    /// alert while one gets worse fails and is rolled back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub guards: Vec<GuardSpec>,
}

/// A metric a fix must not make worse.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.maxIncreasePercent) != has(self.maxIncrease)").message("a guard needs exactly one of maxIncreasePercent and maxIncrease"))]
#[serde(rename_all = "camelCase")]
pub struct GuardSpec {
    /// Name shown in status and messages.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// PromQL expression (one number: the sum of its series).
    #[schemars(length(min = 1, max = 4096))]
    pub query: String,
    /// Worse is lower instead of higher (e.g. a success rate).
    #[serde(default)]
    pub lower_is_worse: bool,
    /// Most it may get worse, in percent of its value just before the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 10000.0))]
    pub max_increase_percent: Option<f64>,
    /// Most it may get worse, in its own unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_increase: Option<f64>,
}

/// Waiting for a deployed change to roll out.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Most time from the apply until the workload has rolled the change out (its Pods
    /// updated, ready and available); past it — or when the Deployment reports
    /// ProgressDeadlineExceeded — the deploy failed and is rolled back. Default 10m.
    #[serde(default = "default_rollout_timeout")]
    pub timeout: DurationString,
}

fn default_rollout_timeout() -> DurationString {
    DurationString::new("10m")
}

/// What an undecided verification leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VerdictAction {
    /// Hand it to people (phase Escalated); the change stays.
    #[default]
    Escalate,
    /// Undo the change.
    Rollback,
    /// Keep the change; the Remediation ends Unverified (no trust is earned by it).
    Keep,
}

fn default_interval() -> DurationString {
    DurationString::new("15s")
}

fn default_consecutive_error_limit() -> u32 {
    4
}

/// Rate limits, retries, deadlines and the suspend switch.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Minimum time between remediations of the same target.
    #[serde(default = "default_cooldown")]
    pub cooldown: DurationString,
    /// Most remediations this policy starts per window.
    #[serde(default)]
    pub max_remediations: RateLimit,
    /// Most remediations of this policy in flight at once.
    #[serde(default = "default_max_concurrent")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_concurrent: u32,
    /// Consecutive failed attempts of one step before the remediation escalates.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 10))]
    pub max_attempts: u32,
    /// Wall-clock budget from start until deploy (approval waits included).
    #[serde(default = "default_max_duration")]
    pub max_duration: DurationString,
    /// Stop starting new remediations for this policy.
    #[serde(default)]
    pub suspend: bool,
    /// Change-freeze windows: nothing is deployed while one is open (verification and
    /// rollback of a change already applied go on).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub freeze: Vec<FreezeWindow>,
    /// When fixes of a target are not working: the policy stops trying on it.
    #[serde(default)]
    pub ineffective: IneffectiveSpec,
}

/// When the policy stops trying to fix a target: its fixes keep failing verification, or
/// the alert keeps coming back soon after "successful" ones. The next Remediation of that
/// target escalates instead, and the target stays paused (in the policy's status) until the
/// policy's spec changes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IneffectiveSpec {
    /// This many fixes in a row by the same playbook that failed verification (or were
    /// rolled back) pause the target. Default 2.
    #[serde(default = "default_two")]
    #[schemars(range(min = 1, max = 100))]
    pub failed_fixes: u32,
    /// This many verified fixes in a row followed by the alert again within `realertWithin`
    /// pause the target. Default 2.
    #[serde(default = "default_two")]
    #[schemars(range(min = 1, max = 100))]
    pub realerts: u32,
    /// How soon after a verified fix a new alert counts against it. Default 1h.
    #[serde(default = "default_realert_within")]
    pub realert_within: DurationString,
}

impl Default for IneffectiveSpec {
    fn default() -> Self {
        Self { failed_fixes: 2, realerts: 2, realert_within: default_realert_within() }
    }
}

fn default_two() -> u32 {
    2
}

fn default_realert_within() -> DurationString {
    DurationString::new("1h")
}

/// A change freeze: either one period (`start` to `end`), or a weekly window (`days`, `from`
/// to `to`), in a time zone.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FreezeWindow {
    /// Why (shown in the Remediation's condition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub reason: Option<String>,
    /// IANA time zone, e.g. `Europe/Berlin` (default `UTC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// One period: its start, a civil date-time in the time zone (`2026-12-24T00:00`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// One period: its end (exclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// Weekly: the days (`Mon` … `Sun`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<String>,
    /// Weekly: from this time of day (`16:00`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Weekly: until this time of day (exclusive; earlier than `from` runs past midnight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

impl Default for LimitsSpec {
    fn default() -> Self {
        Self {
            cooldown: default_cooldown(),
            max_remediations: RateLimit::default(),
            max_concurrent: default_max_concurrent(),
            max_attempts: default_max_attempts(),
            max_duration: default_max_duration(),
            suspend: false,
            freeze: Vec::new(),
            ineffective: IneffectiveSpec::default(),
        }
    }
}

fn default_cooldown() -> DurationString {
    DurationString::new("30m")
}
fn default_max_concurrent() -> u32 {
    1
}
fn default_max_attempts() -> u32 {
    3
}
fn default_max_duration() -> DurationString {
    DurationString::new("1h")
}

/// At most `count` events per `window`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Allowed count per window.
    #[schemars(range(min = 1, max = 10_000))]
    pub count: u32,
    /// Window length.
    pub window: DurationString,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self { count: 5, window: DurationString::new("1h") }
    }
}

/// Where notifications go.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NotifySpec {
    /// Secret key holding the webhook URL (https).
    pub webhook_secret_ref: SecretKeyRef,
    /// `slack` (an incoming webhook's `{"text": …}`, the default) or `json` (the fields).
    #[serde(default)]
    pub format: NotifyFormat,
}

/// How a notification is shaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NotifyFormat {
    /// A Slack-compatible incoming webhook.
    #[default]
    Slack,
    /// A generic JSON webhook.
    Json,
}

/// What the operator observed about a policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RemediationPolicyStatus {
    /// Generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` says whether the policy is valid, and why not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Remediations of this policy currently in flight.
    #[serde(default)]
    pub active_remediations: u32,
    /// Name of the most recent Remediation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_remediation: Option<String>,
    /// The earned-trust record for production.
    #[serde(default)]
    pub trust: TrustRecord,
    /// Alerts suppressed, by reason (cooldown, rate_limit, suspended, kill_switch, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub suppressed: BTreeMap<String, u64>,
    /// Each target's recent fixes, and whether the policy has stopped trying on it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub targets: Vec<TargetHistory>,
}

/// One target's recent fixes under this policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TargetHistory {
    /// The target's kind.
    pub kind: super::TargetKind,
    /// Its name.
    pub name: String,
    /// Recent deployed fixes, oldest first (bounded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub fixes: Vec<FixRecord>,
    /// Set when the policy stopped trying on this target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<TargetPause>,
}

/// One deployed fix and how it ended.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FixRecord {
    /// The Remediation.
    pub remediation: String,
    /// Its uid.
    pub uid: String,
    /// The playbook it used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub playbook: Option<String>,
    /// Verified (the fix held).
    pub verified: bool,
    /// Neither proven nor disproven (verification Inconclusive or Error — no data, the
    /// metrics provider down): not held against the playbook.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unproven: bool,
    /// How it ended.
    pub outcome: String,
    /// When it ended.
    pub at: Time,
    /// When the alert came back after it (a verified fix only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realerted_at: Option<Time>,
}

/// Why and since when the policy stopped trying on a target.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TargetPause {
    /// Why.
    pub reason: String,
    /// Since when.
    pub since: Time,
    /// The policy generation it was paused under: changing the policy's spec resumes it.
    pub generation: i64,
}

/// The policy's earned-trust record: verified successes since the last failure.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TrustRecord {
    /// Verified successes since the last reset, oldest first (bounded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub verified: Vec<VerifiedSuccess>,
    /// When trust was last reset by a failed verification or rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reset: Option<Time>,
    /// Why trust was last reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reset_reason: Option<String>,
    /// The uid of the Remediation whose failure reset it (so it is counted once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reset_by: Option<String>,
    /// Whether production changes at trust `auto` deploy without a human now (a summary; the
    /// gate recomputes it).
    #[serde(default)]
    pub earned: bool,
    /// The digest of the policy's spec the successes were earned under
    /// ([`RemediationPolicySpec::trust_basis`]): another spec starts from zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basis: Option<String>,
    /// Changes written to a target whose outcome is not in the record yet (entered before the
    /// write). While one is here no production change goes through on earned trust, and one
    /// whose Remediation is gone without an outcome counts as a failure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub pending: Vec<PendingChange>,
}

/// A change written (or about to be) whose outcome is not known yet.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PendingChange {
    /// The Remediation.
    pub remediation: String,
    /// Its uid.
    pub uid: String,
    /// When its deploy began.
    pub since: Time,
}

/// One verified success.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VerifiedSuccess {
    /// The Remediation.
    pub remediation: String,
    /// Its uid.
    pub uid: String,
    /// When its verification passed.
    pub at: Time,
}

/// How a deployed change ended, for the trust record.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangeOutcome {
    /// The Remediation.
    pub remediation: String,
    /// Its uid.
    pub uid: String,
    /// Verified (`None`), or why not.
    pub failure: Option<String>,
    /// When it ended.
    pub at: Time,
}

const MAX_VERIFIED: usize = 1000;

impl RemediationPolicySpec {
    /// A digest of what decides the changes this policy makes — what it matches, its target,
    /// playbook, agent, environment, CI and verification: trust earned under one of these does
    /// not carry over to another (say, from a playbook to an LLM agent).
    pub fn trust_basis(&self) -> String {
        let basis = serde_json::json!({
            "match": self.match_, "target": self.target, "playbook": self.playbook, "agent": self.agent,
            "environment": self.environment, "ci": self.ci, "verify": self.verify,
        });
        use sha2::{Digest, Sha256};
        // serde_json's maps are sorted: the same spec gives the same text.
        let hash = Sha256::digest(basis.to_string().as_bytes());
        format!("sha256:{}", hash.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }
}

impl TrustRecord {
    /// The record with `remediation`'s change entered as pending (unchanged when it is
    /// already pending or its outcome is known).
    #[must_use]
    pub fn with_pending(&self, remediation: &str, uid: &str, since: Time) -> Self {
        let mut next = self.clone();
        if !self.knows(uid) && !self.pending.iter().any(|p| p.uid == uid) {
            next.pending.push(PendingChange { remediation: remediation.to_owned(), uid: uid.to_owned(), since });
            let excess = next.pending.len().saturating_sub(MAX_VERIFIED);
            next.pending.drain(..excess);
        }
        next
    }

    /// A pending change other than `uid`'s: its outcome is not known yet.
    pub fn unresolved_besides(&self, uid: &str) -> Option<&PendingChange> {
        self.pending.iter().find(|p| p.uid != uid)
    }

    /// Whether this Remediation's outcome is already in the record.
    pub fn knows(&self, uid: &str) -> bool {
        self.last_reset_by.as_deref() == Some(uid) || self.verified.iter().any(|v| v.uid == uid)
    }

    /// Whether `outcome` changes the record: a Remediation not yet in it, that ended after
    /// the last reset (an older one is history the reset already judged — it must not come
    /// back into the run when its Remediation is reconciled again).
    pub fn takes(&self, outcome: &ChangeOutcome) -> bool {
        !self.knows(&outcome.uid) && self.last_reset.as_ref().is_none_or(|reset| outcome.at.0 > reset.0)
    }

    /// Verified successes within `window` before `now`, since the last reset, earned under
    /// `basis` (none under another).
    pub fn verified_within(&self, window: std::time::Duration, now: k8s_openapi::jiff::Timestamp, basis: &str) -> u32 {
        if self.basis.as_deref() != Some(basis) {
            return 0;
        }
        let since = k8s_openapi::jiff::SignedDuration::try_from(window)
            .ok()
            .and_then(|w| now.checked_sub(w).ok())
            .unwrap_or(k8s_openapi::jiff::Timestamp::MIN);
        u32::try_from(self.verified.iter().filter(|v| v.at.0 >= since).count()).unwrap_or(u32::MAX)
    }

    /// The record with `outcome` in it: a verified success adds to the run, a failure resets
    /// it. `earned` is recomputed for `required` successes within `window`. Pure; a known
    /// Remediation changes nothing.
    #[must_use]
    pub fn with(&self, outcome: ChangeOutcome, required: u32, window: std::time::Duration, basis: &str) -> Self {
        let mut next = self.clone();
        next.pending.retain(|p| p.uid != outcome.uid);
        if !self.takes(&outcome) {
            return next;
        }
        if next.basis.as_deref() != Some(basis) {
            // The policy changed what it does: its record starts again.
            next.verified.clear();
            next.basis = Some(basis.to_owned());
        }
        let now = outcome.at.0;
        match outcome.failure {
            None => {
                next.verified.push(VerifiedSuccess {
                    remediation: outcome.remediation,
                    uid: outcome.uid,
                    at: outcome.at,
                });
                let excess = next.verified.len().saturating_sub(MAX_VERIFIED);
                next.verified.drain(..excess);
            }
            Some(why) => {
                next.verified.clear();
                next.last_reset = Some(outcome.at);
                next.last_reset_reason = Some(format!("{}: {why}", outcome.remediation));
                next.last_reset_by = Some(outcome.uid);
            }
        }
        next.earned = next.verified_within(window, now, basis) >= required.max(1);
        next
    }
}

#[cfg(test)]
mod trust_tests {
    use std::time::Duration;

    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(1_800_000_000 + secs).unwrap())
    }

    fn outcome(uid: &str, failure: Option<&str>, secs: i64) -> ChangeOutcome {
        ChangeOutcome {
            remediation: format!("r-{uid}"),
            uid: uid.into(),
            failure: failure.map(str::to_owned),
            at: at(secs),
        }
    }

    #[test]
    fn trust_is_earned_by_verified_successes_in_a_row_and_reset_by_one_failure() {
        let window = Duration::from_secs(3600);
        let mut record = TrustRecord::default();
        for i in 0..4 {
            record = record.with(outcome(&format!("u{i}"), None, i), 5, window, "b");
            assert!(!record.earned, "{} verified of 5", i + 1);
        }
        record = record.with(outcome("u4", None, 4), 5, window, "b");
        assert!(record.earned, "five verified in a row");
        assert_eq!(record.with(outcome("u4", None, 5), 5, window, "b"), record, "one Remediation counts once");
        let changed = record.with(outcome("u9", None, 5), 5, window, "other");
        assert!(!changed.earned && changed.verified.len() == 1, "another spec starts from zero");
        let reset = record.with(outcome("u5", Some("verification failed"), 6), 5, window, "b");
        assert!(!reset.earned && reset.verified.is_empty(), "any failure resets it");
        assert_eq!(reset.last_reset_reason.as_deref(), Some("r-u5: verification failed"));
        assert!(reset.knows("u5"));
        assert_eq!(
            reset.with(outcome("u3", None, 3), 5, window, "b"),
            reset,
            "a success from before the reset stays out"
        );
        assert!(!reset.with(outcome("u6", None, 7), 5, window, "b").verified.is_empty(), "a later one counts");
    }

    #[test]
    fn only_successes_within_the_window_count() {
        let mut record = TrustRecord::default();
        for i in 0..3 {
            record = record.with(outcome(&format!("u{i}"), None, i * 1000), 3, Duration::from_secs(10_000), "b");
        }
        assert!(record.earned);
        assert_eq!(
            record.verified_within(Duration::from_secs(1500), at(2000).0, "b"),
            2,
            "the oldest is out of the window"
        );
        assert_eq!(record.verified_within(Duration::from_secs(1500), at(2000).0, "other"), 0);
    }
}
