//! ValidatingAdmissionPolicies, as kube-apiserver applies them: on every create and update a
//! person or a client makes, each policy bound by a `ValidatingAdmissionPolicyBinding` whose
//! match constraints take the request has its validations evaluated — CEL over `object`,
//! `oldObject`, `request` (with `request.userInfo`), `namespaceObject` and `params` — by
//! kube's CEL engine (`kube::core::cel::VapEvaluator`). A failed validation of a binding with
//! `validationActions: [Deny]` refuses the request with 403 and the policy's message.
//!
//! Contract: pure over the store transaction's view; writes nothing. Supported: resource
//! rules (groups, versions, operations, resources, `*`), `matchConditions`, the binding's
//! `matchResources.namespaceSelector.matchLabels`, `paramRef` by name (and namespace). An
//! expression that fails to evaluate denies (`failurePolicy: Fail`, the default). Not
//! supported (said here, not faked): `failurePolicy: Ignore`, object selectors, `matchPolicy`,
//! `variables`, `auditAnnotations`, `Warn`/`Audit` actions, label-selected params.

use kube::core::cel::{AdmissionRequest, GroupVersionKind, GroupVersionResource, VapEvaluator, VapExpression};
use serde_json::Value;

use super::rbac::UserInfo;
use super::resources::ResourceType;
use super::status::ApiError;
use super::store::Tx;

const POLICIES: &str = "validatingadmissionpolicies.admissionregistration.k8s.io";
const BINDINGS: &str = "validatingadmissionpolicybindings.admissionregistration.k8s.io";

/// One write as admission sees it.
pub struct Request<'a> {
    /// `CREATE` or `UPDATE`.
    pub operation: &'a str,
    /// The resource written.
    pub rt: &'a ResourceType,
    /// Whether this writes the status subresource (rules then name `PLURAL/status`).
    pub status: bool,
    /// The object's namespace (empty for cluster-scoped kinds).
    pub namespace: &'a str,
    /// The object's name.
    pub name: &'a str,
    /// The object as it would be stored.
    pub object: &'a Value,
    /// The object before (updates).
    pub old: Option<&'a Value>,
    /// Who asks.
    pub user: &'a UserInfo,
    /// `dryRun=All`.
    pub dry_run: bool,
}

fn strings(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect()
}

fn listed(list: &[&str], value: &str) -> bool {
    list.iter().any(|x| *x == "*" || *x == value)
}

/// Whether a policy's resource rules take this request.
fn rules_match(policy: &Value, req: &Request<'_>) -> bool {
    let rules = policy.pointer("/spec/matchConstraints/resourceRules").and_then(Value::as_array);
    rules.into_iter().flatten().any(|rule| {
        let resource = if req.status { format!("{}/status", req.rt.plural) } else { req.rt.plural.clone() };
        listed(&strings(rule.get("apiGroups")), &req.rt.group)
            && listed(&strings(rule.get("apiVersions")), &req.rt.version)
            && listed(&strings(rule.get("operations")), req.operation)
            && listed(&strings(rule.get("resources")), &resource)
    })
}

/// Whether a binding's namespace selector takes this request's namespace.
fn namespace_matches(binding: &Value, namespace: Option<&Value>) -> bool {
    let Some(wanted) = binding.pointer("/spec/matchResources/namespaceSelector/matchLabels").and_then(Value::as_object)
    else {
        return true;
    };
    let labels = namespace.and_then(|n| n.pointer("/metadata/labels"));
    wanted.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

fn expressions(list: Option<&Value>) -> Vec<VapExpression> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| {
            Some(VapExpression {
                expression: v.get("expression")?.as_str()?.to_owned(),
                message: v.get("message").and_then(Value::as_str).map(str::to_owned),
                message_expression: v.get("messageExpression").and_then(Value::as_str).map(str::to_owned),
            })
        })
        .collect()
}

/// Runs every bound policy that takes `req`; the first denial, as the API server words it.
///
/// # Errors
/// A 403 naming the policy, the binding and the failed validation's message.
pub fn admit(tx: &Tx<'_>, req: &Request<'_>) -> Result<(), ApiError> {
    let namespace = (!req.namespace.is_empty()).then(|| tx.get("namespaces", "", req.namespace)).flatten();
    for binding in tx.list(BINDINGS, None) {
        let Some(policy_name) = binding.pointer("/spec/policyName").and_then(Value::as_str) else { continue };
        let Some(policy) = tx.get(POLICIES, "", policy_name) else { continue };
        if !rules_match(&policy, req) || !namespace_matches(&binding, namespace.as_ref()) {
            continue;
        }
        let params = binding.pointer("/spec/paramRef/name").and_then(Value::as_str).and_then(|name| {
            let kind = policy.pointer("/spec/paramKind")?;
            let rt = tx.registry.by_kind(kind.get("apiVersion")?.as_str()?, kind.get("kind")?.as_str()?)?;
            let ns = binding.pointer("/spec/paramRef/namespace").and_then(Value::as_str).unwrap_or(req.namespace);
            tx.get(&rt.storage, if rt.namespaced { ns } else { "" }, name)
        });
        let mut evaluator = VapEvaluator::builder().object(req.object.clone()).request(AdmissionRequest {
            operation: req.operation.to_owned(),
            username: req.user.username.clone(),
            uid: req.user.uid.clone(),
            groups: req.user.groups.clone(),
            name: req.name.to_owned(),
            namespace: req.namespace.to_owned(),
            dry_run: req.dry_run,
            kind: GroupVersionKind {
                group: req.rt.group.clone(),
                version: req.rt.version.clone(),
                kind: req.rt.kind.clone(),
            },
            resource: GroupVersionResource {
                group: req.rt.group.clone(),
                version: req.rt.version.clone(),
                resource: req.rt.plural.clone(),
            },
        });
        if let Some(old) = req.old {
            evaluator = evaluator.old_object(old.clone());
        }
        if let Some(ns) = &namespace {
            evaluator = evaluator.namespace_object(ns.clone());
        }
        if let Some(p) = params {
            evaluator = evaluator.params(p);
        }
        let evaluator = evaluator.build();
        // matchConditions: all must hold for the policy to apply at all.
        let conditions = expressions(policy.pointer("/spec/matchConditions"));
        if evaluator.evaluate(&conditions).iter().any(|r| !r.passed) {
            continue;
        }
        let deny = strings(binding.pointer("/spec/validationActions")).contains(&"Deny");
        let binding_name = binding.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        for result in evaluator.evaluate(&expressions(policy.pointer("/spec/validations"))) {
            if result.passed || !deny {
                continue;
            }
            let message = result.message.unwrap_or_else(|| format!("failed expression: {}", result.expression));
            let resource = if req.rt.group.is_empty() {
                req.rt.plural.clone()
            } else {
                format!("{}.{}", req.rt.plural, req.rt.group)
            };
            return Err(ApiError::forbidden(format!(
                "{resource} \"{}\" is forbidden: ValidatingAdmissionPolicy '{policy_name}' with binding '{binding_name}' denied request: {message}",
                req.name
            )));
        }
    }
    Ok(())
}
