//! The MCP tools' typed inputs and structured outputs. Their JSON schemas are what clients
//! see and what the manifest pins: change one only with a version bump in
//! [`TOOL_VERSIONS`](super::server::TOOL_VERSIONS).
//!
//! Contract: plain data (serde + schemars); inputs deny unknown fields.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::bounds::Truncation;

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GetResource {
    /// The kind, e.g. Deployment, Pod, ConfigMap, HorizontalPodAutoscaler.
    pub kind: String,
    /// API version (group/version); needed only for kinds Reflex does not know.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Namespace (omit for cluster-scoped kinds).
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ObjectOutput {
    /// The object (managedFields removed; Secret values redacted).
    pub object: Value,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListResourcesInput {
    pub kind: String,
    #[serde(default)]
    pub api_version: Option<String>,
    /// Namespace; omit to list across namespaces (where RBAC allows).
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub label_selector: Option<String>,
    #[serde(default)]
    pub field_selector: Option<String>,
    /// At most this many (default 50, at most 500).
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ListOutput {
    pub items: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<Truncation>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GetEvents {
    pub namespace: String,
    /// The object's kind, e.g. Pod.
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventSummary {
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub message: String,
    pub count: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct EventsOutput {
    pub events: Vec<EventSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<Truncation>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GetPodLogs {
    pub namespace: String,
    pub pod: String,
    #[serde(default)]
    pub container: Option<String>,
    /// Newest lines to return (default 200, at most 2000).
    #[serde(default)]
    pub tail_lines: Option<u32>,
    /// Only lines from the last this many seconds (at most 86400).
    #[serde(default)]
    pub since_seconds: Option<u64>,
    /// The previous (crashed) container's logs.
    #[serde(default)]
    pub previous: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct LogsOutput {
    pub lines: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<Truncation>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GetRolloutHistory {
    pub namespace: String,
    pub deployment: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    pub revision: u64,
    pub replica_set: String,
    pub images: Vec<String>,
    /// Each container's image, by container name.
    #[serde(default)]
    pub containers: Vec<ContainerImage>,
    pub replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Whether this is the Deployment's current template.
    pub current: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ContainerImage {
    pub name: String,
    pub image: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct RolloutHistory {
    /// Newest revision first.
    pub revisions: Vec<Revision>,
    /// What a rollback returns to: the newest revision whose ReplicaSet is older than the
    /// current one's (a rollback re-numbers the revision it restores, so after one, the bad
    /// release is newer than what runs and is never the previous).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Revision>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueryPrometheus {
    /// PromQL.
    pub query: String,
    /// Evaluation time (RFC 3339); default now.
    #[serde(default)]
    pub time: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct SeriesValue {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct InstantOutput {
    pub series: Vec<SeriesValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<Truncation>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueryPrometheusRange {
    pub query: String,
    /// RFC 3339.
    pub start: String,
    /// RFC 3339.
    pub end: String,
    /// Seconds between points.
    pub step_seconds: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    /// [unix seconds, value] pairs.
    pub points: Vec<(f64, f64)>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct RangeOutput {
    pub series: Vec<Series>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<Truncation>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListFiringAlerts {
    /// Only alerts whose `namespace` label is this.
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FiringAlert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub active_at: String,
    pub value: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct AlertsOutput {
    pub alerts: Vec<FiringAlert>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<Truncation>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListInNamespace {
    /// Omit to list across namespaces (where RBAC allows).
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemediationSummary {
    pub namespace: String,
    pub name: String,
    pub phase: String,
    pub policy: String,
    pub target: String,
    pub alert: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `remediation://NAMESPACE/NAME` for the whole object.
    pub uri: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct RemediationsOutput {
    pub remediations: Vec<RemediationSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<Truncation>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlaybookSummary {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `playbook://NAMESPACE/NAME` for the whole object.
    pub uri: String,
}

/// An agent Reflex discovered over A2A (a Service annotated `reflex.dev/a2a-agent: "true"`).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentSummary {
    pub namespace: String,
    /// The annotated Service.
    pub service: String,
    /// The card's name and description.
    pub name: String,
    pub description: String,
    /// Where Reflex reaches it.
    pub url: String,
    /// Ready, Unreachable or Invalid.
    pub state: String,
    /// Why it is not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The skill ids its card lists.
    pub skills: Vec<String>,
    /// When its card was last read.
    pub checked_at: String,
    /// `agent://NAMESPACE/SERVICE` for the same, as a resource.
    pub uri: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct AgentsOutput {
    pub agents: Vec<AgentSummary>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct PlaybooksOutput {
    pub playbooks: Vec<PlaybookSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<Truncation>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiagnoseAlert {
    /// The alert's name, e.g. KubeContainerOOMKilled.
    pub alertname: String,
    pub namespace: String,
    /// The object the alert is about, e.g. Deployment/checkout.
    #[serde(default)]
    pub target: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RemediationAction {
    /// The Remediation's namespace.
    pub namespace: String,
    /// The Remediation's name.
    pub name: String,
    /// Why, for the audit trail.
    #[serde(default)]
    pub reason: Option<String>,
    /// To approve: the proposal digest you reviewed; refused if the proposal changed since.
    #[serde(default)]
    pub proposal_digest: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ActionOutput {
    /// The RemediationApproval created, if the action created one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// What happened.
    pub message: String,
}
