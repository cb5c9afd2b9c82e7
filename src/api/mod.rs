//! Reflex's API: the four custom resources of group `reflex.dev/v1alpha1`, their shared
//! building blocks, conditions, and the validated forms that later stages consume.
//!
//! Contract: types here are plain data (serde + schemars); they never touch the cluster.
//! Raw specs are turned into validated types once, in [`validate`]; everything downstream
//! takes the validated type and never re-checks the raw spec.

pub mod approval;
pub mod conditions;
pub mod crds;
pub mod duration;
pub mod freeze;
pub mod matcher;
pub mod playbook;
pub mod policy;
pub mod quantity;
pub mod remediation;
pub mod template;
pub mod validate;

use std::{borrow::Cow, fmt};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

pub use approval::{ApprovalDecision, RemediationApproval, RemediationApprovalSpec};
pub use duration::DurationString;
pub use playbook::{Playbook, PlaybookSpec};
pub use policy::{RemediationPolicy, RemediationPolicySpec};
pub use remediation::{Phase, Remediation, RemediationSpec, RemediationStatus, Step};

/// API group of every Reflex resource.
pub const GROUP: &str = "reflex.dev";
/// API version of every Reflex resource.
pub const VERSION: &str = "v1alpha1";
/// Finalizer Reflex puts on Remediations so in-flight work is stopped before deletion.
pub const FINALIZER: &str = "reflex.dev/cleanup";
/// The field manager a Remediation's change to its target is applied under:
/// `reflex-<name>-<uid hash>`. Each Remediation owns exactly the fields its change set, so
/// changes by different Remediations and by people coexist, and a rollback releases only what
/// its Remediation took (one shared manager would silently drop an earlier change's fields on
/// the next apply). The uid's hash keeps a later Remediation that reuses a deleted one's name
/// from taking over its fields. At most 128 characters: a long name is cut.
pub fn change_manager(remediation: &str, uid: &str) -> String {
    use sha2::{Digest, Sha256};
    let hash: String = Sha256::digest(uid.as_bytes()).iter().take(4).map(|b| format!("{b:02x}")).collect();
    let mut cut = remediation.len().min(128 - "reflex-".len() - 1 - hash.len());
    while !remediation.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("reflex-{}-{hash}", &remediation[..cut])
}
/// Field manager for Reflex's own status writes.
pub const STATUS_MANAGER: &str = "reflex-status";

/// A reference to an object in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectRef {
    /// Name of the object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A key within a Secret in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Kinds of object Reflex may change. Anything else is refused by the API server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum TargetKind {
    /// `apps/v1` Deployment.
    Deployment,
    /// `apps/v1` StatefulSet.
    StatefulSet,
    /// `apps/v1` DaemonSet.
    DaemonSet,
    /// `v1` ConfigMap (configuration parameters).
    ConfigMap,
    /// `autoscaling/v2` HorizontalPodAutoscaler.
    HorizontalPodAutoscaler,
    /// `batch/v1` Job — diagnosed, never changed (a policy on it is at trust level `observe`).
    Job,
    /// `batch/v1` CronJob — diagnosed, never changed (a policy on it is at trust level `observe`).
    CronJob,
}

impl TargetKind {
    /// The `apiVersion` objects of this kind are served at.
    pub fn api_version(self) -> &'static str {
        match self {
            Self::Deployment | Self::StatefulSet | Self::DaemonSet => "apps/v1",
            Self::ConfigMap => "v1",
            Self::HorizontalPodAutoscaler => "autoscaling/v2",
            Self::Job | Self::CronJob => "batch/v1",
        }
    }

    /// The kind's name as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::StatefulSet => "StatefulSet",
            Self::DaemonSet => "DaemonSet",
            Self::ConfigMap => "ConfigMap",
            Self::HorizontalPodAutoscaler => "HorizontalPodAutoscaler",
            Self::Job => "Job",
            Self::CronJob => "CronJob",
        }
    }

    /// Reflex only diagnoses objects of this kind: a failed Job has no mechanical fix.
    pub fn diagnosed_only(self) -> bool {
        matches!(self, Self::Job | Self::CronJob)
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a change lands; production needs earned trust or a human.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// Pre-production: `auto` trust deploys without a human.
    Staging,
    /// Production: `auto` deploys only with earned trust, otherwise waits for approval.
    Production,
}

/// The namespace label that says which environment a namespace is.
pub const ENVIRONMENT_LABEL: &str = "reflex.dev/environment";

impl Environment {
    /// The environment a namespace's labels say (only `staging` is staging: an unlabelled
    /// namespace counts as production).
    pub fn of_labels(labels: Option<&std::collections::BTreeMap<String, String>>) -> Self {
        match labels.and_then(|l| l.get(ENVIRONMENT_LABEL)).map(String::as_str) {
            Some("staging") => Self::Staging,
            _ => Self::Production,
        }
    }

    /// A policy may make its namespace's environment stricter, never laxer: a policy saying
    /// `staging` cannot turn a production namespace into a staging one.
    pub fn stricter(policy: Option<Self>, namespace: Self) -> Self {
        match (policy, namespace) {
            (Some(Self::Production), _) | (_, Self::Production) => Self::Production,
            _ => Self::Staging,
        }
    }
}

/// The fixed, small set of failure categories. They label metrics and Events and pick the
/// retry strategy; free error text never goes into a label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCategory {
    /// User input is wrong: wait for the user to change it.
    InvalidSpec,
    /// Network, timeouts, conflicts, 5xx: retry with bounded backoff and jitter.
    Transient,
    /// RBAC refused: surface it in status and stop.
    Forbidden,
    /// Something referenced does not exist.
    NotFound,
    /// An iteration, token, wall-clock or cost budget ran out.
    BudgetExhausted,
    /// The agent escalated, or proposed what the safety check refuses: humans must act.
    NeedsHuman,
    /// Not yet: the step waits for something outside Reflex (disruption headroom, the end of
    /// a change freeze) and is tried again at a fixed interval without counting as a
    /// failure, until the policy's `maxDuration` is spent.
    Deferred,
    /// The target changed since the change was tested (people edited it, an autoscaler moved
    /// it): the change is tested again rather than written over their edit.
    Conflict,
    /// The playbook does not apply to what it found (a requirement unmet: the crash loop is
    /// not OOM-caused, no new revision preceded it): it stands aside for another policy.
    NotApplicable,
}

impl ErrorCategory {
    /// The label value used in metrics and Events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidSpec => "invalid_spec",
            Self::Transient => "transient",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::BudgetExhausted => "budget_exhausted",
            Self::NeedsHuman => "needs_human",
            Self::Deferred => "deferred",
            Self::Conflict => "conflict",
            Self::NotApplicable => "not_applicable",
        }
    }

    /// Whether repeating the same step can succeed without anything else changing.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Transient | Self::Deferred | Self::Conflict)
    }
}

impl fmt::Display for ErrorCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An arbitrary JSON value stored as is (patches, previous field values).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct AnyJson(pub serde_json::Value);

impl JsonSchema for AnyJson {
    fn schema_name() -> Cow<'static, str> {
        "AnyJson".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // A structural schema may leave `type` out only where unknown fields are preserved.
        json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
    }
}

#[cfg(test)]
mod manager_tests {
    use super::change_manager;

    #[test]
    fn each_remediation_has_its_own_field_manager_even_under_a_reused_name() {
        let a = change_manager("checkout-oom-checkout-1", "uid-a");
        assert!(
            a.starts_with("reflex-checkout-oom-checkout-1-") && a.len() == "reflex-checkout-oom-checkout-1-".len() + 8,
            "{a}"
        );
        assert_ne!(a, change_manager("checkout-oom-checkout-1", "uid-b"), "a later Remediation reusing the name");
        let long = change_manager(&"r".repeat(253), "uid-a");
        assert!(long.len() <= 128, "{}", long.len());
        assert_ne!(long, change_manager(&"r".repeat(253), "uid-b"));
    }
}
