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

mod ci;
mod status;

pub use ci::*;
pub use status::*;

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
