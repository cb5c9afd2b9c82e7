//! `Playbook`: the explicit, reviewable decision logic for one kind of fix — what to read,
//! the patch to produce within declared bounds, and how to verify and roll back.
//!
//! Contract: plain data; [`crate::api::validate`] turns it into a validated playbook.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::{TargetKind, duration::DurationString, policy::VerifySpec};

/// A playbook: reads, a bounded patch, verification and rollback defaults.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "reflex.dev",
    version = "v1alpha1",
    kind = "Playbook",
    namespaced,
    status = "PlaybookStatus",
    shortname = "pb",
    category = "reflex",
    doc = "A reviewable remediation recipe: what to read through MCP tools, the bounded patch to produce, and how to verify and roll back.",
    printcolumn(name = "Kinds", type_ = "string", json_path = ".spec.targetKinds"),
    printcolumn(name = "Patch", type_ = "string", json_path = ".spec.patch.mode"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct PlaybookSpec {
    /// What the playbook fixes, for humans and for the agent's prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub description: Option<String>,
    /// Kinds of target this playbook can fix.
    #[schemars(length(min = 1, max = 5))]
    pub target_kinds: Vec<TargetKind>,
    /// MCP tool calls made before proposing; results are available to templates by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub reads: Vec<ReadStep>,
    /// When the playbook applies: each requirement is a read that must find something — a
    /// query with a value other than 0 (write the condition in PromQL, `… > 0`), an object
    /// that exists. Unmet, the Remediation stands aside (Cancelled, reason NotApplicable)
    /// without proposing, so two policies on one alert (an OOM-caused crash loop, one that
    /// began with a new revision) each act only on their own cause.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub requires: Vec<Requirement>,
    /// The patch to produce. Absent: the playbook only diagnoses — its reads are the
    /// findings people get, and a policy that runs it must be at trust level `observe`
    /// (for alerts with no safe mechanical fix, such as a failed Job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<PatchSpec>,
    /// Default verification, used when the policy has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySpec>,
    /// What a deployed change waits for beyond its target's own rollout — for a ConfigMap,
    /// the workloads that read it; for an autoscaler, the workload it scales.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<PlaybookRollout>,
    /// What happens when verification fails.
    #[serde(default)]
    pub rollback: RollbackSpec,
    /// Instructions for the LLM agent when a policy runs this playbook in an LLM mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16384))]
    pub agent_instructions: Option<String>,
}

/// One MCP tool call.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReadStep {
    /// Name the result is known by in templates (`reads.NAME`).
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// MCP server name from the policy; omitted means Reflex's own tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Tool to call.
    #[schemars(length(min = 1, max = 128))]
    pub tool: String,
    /// Arguments; string values may use `{{ ... }}` placeholders.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub arguments: BTreeMap<String, String>,
}

/// A condition a playbook applies under: a read that must find something.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Requirement {
    /// The read (by name) that must find something.
    #[schemars(length(min = 1, max = 63))]
    pub read: String,
    /// What it means when it finds nothing, for people (`the container was not OOM-killed`).
    #[schemars(length(min = 1, max = 512))]
    pub otherwise: String,
}

/// Who writes the patch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PatchMode {
    /// Rendered from `template` with bounded parameters.
    #[default]
    Template,
    /// Written by the LLM agent within `constraints`.
    Agent,
}

/// Patch formats the API server understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PatchType {
    /// Strategic merge patch (lists keyed by name in pod templates).
    #[default]
    Strategic,
    /// JSON merge patch (RFC 7386).
    Merge,
    /// JSON patch (RFC 6902).
    Json,
}

/// The patch a playbook produces and the bounds it must stay in.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.mode != 'template' || has(self.template)").message("patch.template is required when patch.mode is template"))]
#[serde(rename_all = "camelCase")]
pub struct PatchSpec {
    /// `template` or `agent`.
    #[serde(default)]
    pub mode: PatchMode,
    /// Patch format.
    #[serde(default, rename = "type")]
    pub patch_type: PatchType,
    /// The patch body (YAML or JSON) with `{{ params.NAME }}` placeholders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16384))]
    pub template: Option<String>,
    /// Bounded parameters the template uses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub parameters: Vec<Parameter>,
    /// Field paths the patch may touch, e.g. `spec.template.spec.containers[*].resources.limits.memory`.
    /// One segment is one whole key: `data.POOL_SIZE` allows the key `POOL_SIZE`, not
    /// `POOL_SIZE.x`. Labels, annotations, volumes, `envFrom`, probes, lifecycle hooks and
    /// scheduling fields change only where a path names them (not through a parent).
    #[schemars(length(min = 1, max = 64))]
    pub allowed_paths: Vec<String>,
    /// What text (or numbers) may be written at an exact field path. Text — ConfigMap
    /// values, env values, labels, annotations — changes only where its value is constrained
    /// here or by a template parameter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub values: Vec<ValueSpec>,
}

/// A constraint on the value at one field path: exactly one of `allowed`, `pattern`, or
/// `min`/`max`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("(has(self.allowed) ? 1 : 0) + (has(self.pattern) ? 1 : 0) + ((has(self.min) || has(self.max)) ? 1 : 0) == 1").message("patch.values[]: give exactly one of allowed, pattern, or min/max"))]
#[serde(rename_all = "camelCase")]
pub struct ValueSpec {
    /// The exact field path, e.g. `data.LOG_LEVEL` or `spec.template.spec.containers[*].env[*].value`.
    #[schemars(length(min = 1, max = 512))]
    pub path: String,
    /// The values it may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub allowed: Option<Vec<String>>,
    /// A regular expression the whole value must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub pattern: Option<String>,
    /// Least value (a number or a quantity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<String>,
    /// Largest value (a number or a quantity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
}

/// Kinds of parameter value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParameterType {
    /// A whole number.
    Integer,
    /// A decimal number.
    Number,
    /// A Kubernetes quantity such as `512Mi` or `250m`.
    Quantity,
    /// A string from an allowed list.
    String,
    /// A container image: `value` is a path to text in the reads, the target or the labels
    /// (`reads.history.revisions[current=false].images[0]`, `labels.fixed_version`), either a
    /// whole reference or a bare tag put on the repository of the image it replaces. Always in
    /// the same repository as the image it replaces.
    Image,
}

/// A bounded parameter: an expression over the reads, clamped to `[min, max]` and to at
/// most `maxFactor` times its current value.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.type != 'string' || (has(self.allowed) && size(self.allowed) > 0)").message("a string parameter needs a non-empty allowed list"))]
#[serde(rename_all = "camelCase")]
pub struct Parameter {
    /// Name used as `{{ params.NAME }}`.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Value type.
    #[serde(rename = "type")]
    pub type_: ParameterType,
    /// Expression that computes the value from reads and the current state.
    #[schemars(length(min = 1, max = 1024))]
    pub value: String,
    /// Lower bound (same type as the value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<String>,
    /// Upper bound, the ceiling (same type as the value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
    /// Largest allowed ratio of new value to current value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub max_factor: Option<f64>,
    /// Allowed values for a string parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub allowed: Option<Vec<String>>,
    /// For an image parameter: the new tag must be a later version (dot-separated numbers,
    /// compared number by number) than the tag it replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newer: Option<bool>,
    /// Let the LLM agent choose this value, within the same bounds, when the policy's agent
    /// mode is `llm` or `llm-then-playbook`: the agent sees the playbook's reads and proposes
    /// only the delegated values; the playbook renders and bounds the patch. `value` stays
    /// the playbook's own choice, used in `playbook` mode and as the fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegate: Option<bool>,
}

/// What counts as rolled out for a change whose target rolls nothing out itself. Every
/// condition must hold, within the policy's `rollout.timeout`, or the deploy has stalled and
/// is rolled back.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PlaybookRollout {
    /// Workloads in the Remediation's namespace that must have rolled out (their controller's
    /// own rollout judgement, as for a target of that kind).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub wait_for: Vec<RolloutWait>,
    /// Least time from the apply before the change counts as rolled out, e.g. for the kubelet
    /// to refresh ConfigMap files mounted in Pods (its sync period plus cache TTL: about a
    /// minute by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settle: Option<DurationString>,
}

/// One workload a change waits for.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.kind in ['Deployment', 'StatefulSet', 'DaemonSet']").message("rollout.waitFor[].kind must be Deployment, StatefulSet or DaemonSet"))]
#[serde(rename_all = "camelCase")]
pub struct RolloutWait {
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    pub kind: TargetKind,
    /// Its name: literal text with `{{ labels.NAME }}` placeholders from the alert.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Every Pod it runs must have started after the change — for configuration read only at
    /// start, which something else (a reloader, a person) restarts the Pods for. Reflex does
    /// not restart them itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub new_pods: bool,
}

/// Rollback behaviour.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RollbackSpec {
    /// Restore the recorded previous values when verification fails.
    #[serde(default = "default_true")]
    pub on_verification_failure: bool,
}

impl Default for RollbackSpec {
    fn default() -> Self {
        Self { on_verification_failure: true }
    }
}

fn default_true() -> bool {
    true
}

/// What the operator observed about a playbook.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PlaybookStatus {
    /// Generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` says whether the playbook is valid, and why not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
