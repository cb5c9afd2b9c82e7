//! Cluster helpers the stages share: the API for a target kind, the one mapping of
//! Kubernetes API errors to an [`ErrorCategory`], reading a Remediation's target, and loading
//! a playbook with the patch-safety rules it implies.
//!
//! Contract: thin reads through the client a stage was given; nothing here writes. Every
//! failure is a [`StageError`] whose category comes from [`api_category`], so a stage never
//! invents its own reading of an API status code.

use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use serde_json::Value;

use crate::api::playbook::Playbook;
use crate::api::remediation::Remediation;
use crate::api::validate::ValidPlaybook;
use crate::api::{ErrorCategory, TargetKind};
use crate::patch::safety::Rules;
use crate::ports::{StageError, StageInput, StageResult};

/// Maps a Kubernetes API error to a category: 401/403 forbidden, 404 not found, 400/422 an
/// invalid spec, anything else (5xx, 409, 429, transport) transient.
pub fn api_category(e: &kube::Error) -> ErrorCategory {
    match e {
        kube::Error::Api(status) => match status.code {
            401 | 403 => ErrorCategory::Forbidden,
            404 => ErrorCategory::NotFound,
            400 | 422 => ErrorCategory::InvalidSpec,
            _ => ErrorCategory::Transient,
        },
        _ => ErrorCategory::Transient,
    }
}

/// A stage error for a failed API call: the category from [`api_category`], the message
/// `"{what}: {error}"`.
pub fn api_error(what: &str, e: &kube::Error) -> StageError {
    StageError::new(api_category(e), format!("{what}: {e}"))
}

/// The API resource of a target kind.
pub fn api_resource(kind: TargetKind) -> ApiResource {
    let (group, version) = match kind.api_version().split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", kind.api_version()),
    };
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind.as_str()))
}

/// The API of the Remediation's target kind, in the Remediation's namespace.
pub fn target_api(client: &kube::Client, rem: &Remediation) -> Api<DynamicObject> {
    let namespace = rem.metadata.namespace.clone().unwrap_or_default();
    Api::namespaced_with(client.clone(), &namespace, &api_resource(rem.spec.target.kind))
}

/// The Remediation's target as it is now.
pub async fn read_target(client: &kube::Client, rem: &Remediation) -> StageResult<DynamicObject> {
    target_api(client, rem).get(&rem.spec.target.name).await.map_err(|e| api_error("reading the target", &e))
}

/// An object as JSON (for the pure cores, which judge JSON).
pub fn as_json(object: &DynamicObject) -> StageResult<Value> {
    serde_json::to_value(object).map_err(|e| StageError::new(ErrorCategory::Transient, e.to_string()))
}

/// Which version of an object this is, as far as its spec goes: its generation, or (for kinds
/// without a spec, such as ConfigMaps) its resourceVersion.
pub fn revision_of(meta: &kube::api::ObjectMeta) -> Option<String> {
    meta.generation
        .map(|g| format!("generation {g}"))
        .or_else(|| meta.resource_version.as_ref().map(|r| format!("resourceVersion {r}")))
}

/// Loads and validates a playbook.
pub async fn load_playbook(client: &kube::Client, namespace: &str, name: &str) -> StageResult<ValidPlaybook> {
    let api: Api<Playbook> = Api::namespaced(client.clone(), namespace);
    let pb = api.get(name).await.map_err(|e| api_error(&format!("playbook {namespace}/{name}"), &e))?;
    ValidPlaybook::from_spec(&pb.spec).map_err(|e| {
        StageError::new(ErrorCategory::InvalidSpec, format!("playbook {namespace}/{name} is invalid: {e}"))
    })
}

/// What a Remediation's placeholders name outside a playbook run: `target.kind`,
/// `target.name`, `target.namespace` and `labels.X`.
pub fn remediation_lookup(rem: &Remediation) -> impl Fn(&str) -> Option<String> + '_ {
    move |n: &str| match n.split_once('.')? {
        ("target", "kind") => Some(rem.spec.target.kind.as_str().to_owned()),
        ("target", "name") => Some(rem.spec.target.name.clone()),
        ("target", "namespace") => rem.metadata.namespace.clone(),
        ("labels", key) => rem.spec.alert.labels.get(key).cloned(),
        _ => None,
    }
}

/// The rules any proposal for this Remediation is checked against: its policy's playbook's
/// (`Rules::from_playbook_in`), or the defaults for the target's kind when the policy names
/// no playbook. Never anything from the proposal.
pub async fn rules_for(client: &kube::Client, input: &StageInput) -> StageResult<Rules> {
    let rem = &input.remediation;
    let namespace = rem.metadata.namespace.clone().unwrap_or_default();
    match input.policy.as_ref().and_then(|p| p.playbook.as_ref()) {
        Some(name) => {
            let pb = load_playbook(client, &namespace, name).await?;
            Ok(Rules::from_playbook_in(&pb, &remediation_lookup(rem)))
        }
        None => Ok(Rules::default_for(rem.spec.target.kind.as_str())),
    }
}
