//! Cluster helpers the stages share: the API for a target kind, the one mapping of
//! Kubernetes API errors to an [`ErrorCategory`], reading a Remediation's target and its
//! environment, loading a playbook with the patch-safety rules it implies, and acting as
//! another identity ([`Impersonator`], [`access_review`]).
//!
//! Contract: thin reads through the client a stage was given; nothing here writes (a
//! SubjectAccessReview is a question, not a change). Every failure is a [`StageError`] whose
//! category comes from [`api_category`], so a stage never invents its own reading of an API
//! status code.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Namespace;

use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use serde_json::Value;

use crate::api::playbook::Playbook;
use crate::api::remediation::Remediation;
use crate::api::validate::{ValidPlaybook, ValidPolicy};
use crate::api::{Environment, ErrorCategory, TargetKind};
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

/// The Pods a workload's `spec.selector` selects (none when it has no selector), in
/// `namespace`. `what` names the workload in errors.
pub async fn workload_pods(
    client: &kube::Client,
    namespace: &str,
    workload: &Value,
    what: &str,
) -> StageResult<Vec<k8s_openapi::api::core::v1::Pod>> {
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    let Some(selector) = workload.pointer("/spec/selector") else { return Ok(Vec::new()) };
    let invalid =
        |e: &dyn std::fmt::Display| StageError::new(ErrorCategory::InvalidSpec, format!("{what}'s spec.selector: {e}"));
    let selector: LabelSelector = serde_json::from_value(selector.clone()).map_err(|e| invalid(&e))?;
    let selector: kube::core::Selector = selector.try_into().map_err(|e| invalid(&e))?;
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&kube::api::ListParams::default().labels_from(&selector))
        .await
        .map_err(|e| api_error(&format!("reading {what}'s Pods"), &e))?;
    Ok(pods.items)
}

/// An object as JSON (for the pure cores, which judge JSON).
pub fn as_json(object: &DynamicObject) -> StageResult<Value> {
    serde_json::to_value(object).map_err(|e| StageError::new(ErrorCategory::Transient, e.to_string()))
}

/// The environment a change to `rem`'s target lands in: its namespace's label
/// (`reflex.dev/environment`; unlabelled is production), made stricter — never laxer — by the
/// policy's `environment`.
pub async fn environment(
    client: &kube::Client,
    rem: &Remediation,
    policy: Option<&ValidPolicy>,
) -> StageResult<Environment> {
    let ns = rem.metadata.namespace.clone().unwrap_or_default();
    let namespace = Api::<Namespace>::all(client.clone())
        .get(&ns)
        .await
        .map_err(|e| api_error(&format!("reading namespace {ns}"), &e))?;
    let labelled = Environment::of_labels(namespace.metadata.labels.as_ref());
    Ok(Environment::stricter(policy.and_then(|p| p.environment), labelled))
}

/// Which version of an object this is, as far as its spec goes: its generation, or (for kinds
/// without a spec, such as ConfigMaps) its resourceVersion.
pub fn revision_of(meta: &kube::api::ObjectMeta) -> Option<String> {
    meta.generation
        .map(|g| format!("generation {g}"))
        .or_else(|| meta.resource_version.as_ref().map(|r| format!("resourceVersion {r}")))
}

/// Clients that act as another identity (impersonation), made from the operator's own
/// configuration and kept per identity. The API server checks the operator's `impersonate`
/// permission on every request, so RBAC — not this type — limits whom it can act as.
pub struct Impersonator {
    config: kube::Config,
    clients: Mutex<HashMap<String, kube::Client>>,
}

impl Impersonator {
    /// Impersonating clients derived from `config` (the operator's).
    pub fn new(config: kube::Config) -> Self {
        Self { config, clients: Mutex::default() }
    }

    /// A client acting as `user` in `groups`.
    pub fn client_as(&self, user: &str, groups: &[String]) -> StageResult<kube::Client> {
        let key = format!("{user}\u{1f}{}", groups.join("\u{1f}"));
        let mut clients = self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let mut config = self.config.clone();
        config.auth_info.impersonate = Some(user.to_owned());
        config.auth_info.impersonate_groups = (!groups.is_empty()).then(|| groups.to_vec());
        let client = kube::Client::try_from(config)
            .map_err(|e| StageError::new(ErrorCategory::Transient, format!("a client acting as {user}: {e}")))?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// One request, as a SubjectAccessReview asks about it.
pub struct Access<'a> {
    /// The verb (`patch`, `get`, …).
    pub verb: &'a str,
    /// The resource's API.
    pub resource: &'a ApiResource,
    /// Its namespace.
    pub namespace: &'a str,
    /// Its name.
    pub name: &'a str,
}

impl Access<'_> {
    /// How RBAC names the permission: `patch deployments.apps "checkout" in namespace shop`.
    pub fn describe(&self) -> String {
        let resource = if self.resource.group.is_empty() {
            self.resource.plural.clone()
        } else {
            format!("{}.{}", self.resource.plural, self.resource.group)
        };
        format!("{} {resource} {:?} in namespace {}", self.verb, self.name, self.namespace)
    }
}

/// Whether `user` (in `groups`) may make the request `access` — a SubjectAccessReview the
/// operator (`client`) asks. `Ok(Err(why))` names the missing permission.
pub async fn access_review(
    client: &kube::Client,
    user: &str,
    groups: &[String],
    access: &Access<'_>,
) -> StageResult<Result<(), String>> {
    use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_owned()),
            groups: Some(groups.to_vec()),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(access.verb.to_owned()),
                group: Some(access.resource.group.clone()),
                resource: Some(access.resource.plural.clone()),
                namespace: Some(access.namespace.to_owned()),
                name: Some(access.name.to_owned()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let reviewed = Api::<SubjectAccessReview>::all(client.clone())
        .create(&kube::api::PostParams::default(), &review)
        .await
        .map_err(|e| api_error("asking a SubjectAccessReview", &e))?;
    let status = reviewed.status.unwrap_or_default();
    Ok(if status.allowed {
        Ok(())
    } else {
        let why = status.reason.filter(|r| !r.is_empty()).map(|r| format!(" ({r})")).unwrap_or_default();
        Err(format!("{user} may not {}{why}", access.describe()))
    })
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
