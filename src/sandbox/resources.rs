//! The resource types the sandbox serves: built-in kinds and kinds registered by CRDs.
//!
//! Contract: a [`Registry`] maps `(group, version, plural)` to a [`ResourceType`] and renders the
//! discovery documents (`/api`, `/apis`, group and group-version resource lists) from the same
//! table, so what discovery advertises is exactly what the server answers. Several served types
//! can share one storage (core and `events.k8s.io` Events; the versions of a CRD).

use std::sync::Arc;

use serde_json::{Value, json};

use super::status::{ApiError, Cause};

/// Special behaviour a type gets from the server beyond plain storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    Plain,
    Namespace,
    Crd,
    /// create-only review types answered from the RBAC table.
    SubjectAccessReview,
    LocalSubjectAccessReview,
    SelfSubjectAccessReview,
    TokenReview,
    SelfSubjectReview,
    /// `events.k8s.io/v1` Events, stored as core Events.
    EventsV1,
}

#[derive(Clone, Debug)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub status: bool,
    pub behaviour: Behaviour,
    /// Key of the storage this type reads and writes.
    pub storage: String,
    /// Extra field paths `fieldSelector` accepts besides metadata.name / metadata.namespace.
    pub field_paths: Vec<String>,
    /// CRD only: the version's `openAPIV3Schema`.
    pub schema: Option<Value>,
    /// CRD only: its CEL rules, compiled once at registration.
    pub rules: Option<Arc<kube::core::cel::CompiledSchema>>,
    /// CRD only: `additionalPrinterColumns`.
    pub printer_columns: Vec<Value>,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    pub fn is_review(&self) -> bool {
        matches!(
            self.behaviour,
            Behaviour::SubjectAccessReview
                | Behaviour::LocalSubjectAccessReview
                | Behaviour::SelfSubjectAccessReview
                | Behaviour::TokenReview
                | Behaviour::SelfSubjectReview
        )
    }

    pub fn is_custom(&self) -> bool {
        self.schema.is_some()
    }

    fn verbs(&self) -> Vec<&'static str> {
        if self.is_review() {
            vec!["create"]
        } else {
            vec!["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
        }
    }

    /// Does `fieldSelector` support this path on this type?
    pub fn supports_field(&self, path: &str) -> bool {
        path == "metadata.name"
            || (self.namespaced && path == "metadata.namespace")
            || self.field_paths.iter().any(|p| p == path)
    }
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    status: bool,
    short: &'static [&'static str],
    behaviour: Behaviour,
    fields: &'static [&'static str],
}

const fn b(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    status: bool,
    short: &'static [&'static str],
) -> Builtin {
    Builtin { group, version, kind, plural, namespaced, status, short, behaviour: Behaviour::Plain, fields: &[] }
}

const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

fn builtins() -> Vec<Builtin> {
    use Behaviour::*;
    vec![
        Builtin {
            behaviour: Namespace,
            fields: &["status.phase"],
            ..b("", "v1", "Namespace", "namespaces", false, true, &["ns"])
        },
        Builtin {
            fields: &[
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ],
            ..b("", "v1", "Pod", "pods", true, true, &["po"])
        },
        b("", "v1", "ConfigMap", "configmaps", true, false, &["cm"]),
        Builtin { fields: &["type"], ..b("", "v1", "Secret", "secrets", true, false, &[]) },
        b("", "v1", "Service", "services", true, true, &["svc"]),
        b("", "v1", "ServiceAccount", "serviceaccounts", true, false, &["sa"]),
        Builtin { fields: EVENT_FIELDS, ..b("", "v1", "Event", "events", true, false, &["ev"]) },
        b("apps", "v1", "Deployment", "deployments", true, true, &["deploy"]),
        b("apps", "v1", "ReplicaSet", "replicasets", true, true, &["rs"]),
        b("apps", "v1", "StatefulSet", "statefulsets", true, true, &["sts"]),
        b("apps", "v1", "DaemonSet", "daemonsets", true, true, &["ds"]),
        Builtin { fields: &["status.successful"], ..b("batch", "v1", "Job", "jobs", true, true, &[]) },
        b("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", true, true, &["hpa"]),
        b("coordination.k8s.io", "v1", "Lease", "leases", true, false, &[]),
        b("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", true, true, &["pdb"]),
        Builtin {
            behaviour: EventsV1,
            fields: &[
                "regarding.kind",
                "regarding.namespace",
                "regarding.name",
                "regarding.uid",
                "reason",
                "reportingController",
                "type",
            ],
            ..b("events.k8s.io", "v1", "Event", "events", true, false, &["ev"])
        },
        Builtin {
            behaviour: SubjectAccessReview,
            ..b("authorization.k8s.io", "v1", "SubjectAccessReview", "subjectaccessreviews", false, false, &[])
        },
        Builtin {
            behaviour: LocalSubjectAccessReview,
            ..b("authorization.k8s.io", "v1", "LocalSubjectAccessReview", "localsubjectaccessreviews", true, false, &[])
        },
        Builtin {
            behaviour: SelfSubjectAccessReview,
            ..b("authorization.k8s.io", "v1", "SelfSubjectAccessReview", "selfsubjectaccessreviews", false, false, &[])
        },
        Builtin {
            behaviour: TokenReview,
            ..b("authentication.k8s.io", "v1", "TokenReview", "tokenreviews", false, false, &[])
        },
        Builtin {
            behaviour: SelfSubjectReview,
            ..b("authentication.k8s.io", "v1", "SelfSubjectReview", "selfsubjectreviews", false, false, &[])
        },
        b(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingAdmissionPolicy",
            "validatingadmissionpolicies",
            false,
            true,
            &[],
        ),
        b(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingAdmissionPolicyBinding",
            "validatingadmissionpolicybindings",
            false,
            false,
            &[],
        ),
        Builtin {
            behaviour: Crd,
            ..b(
                "apiextensions.k8s.io",
                "v1",
                "CustomResourceDefinition",
                "customresourcedefinitions",
                false,
                true,
                &["crd", "crds"],
            )
        },
    ]
}

/// Types `kubectl get all` covers.
const IN_ALL: &[&str] = &[
    "pods",
    "services",
    "deployments",
    "replicasets",
    "statefulsets",
    "daemonsets",
    "jobs",
    "horizontalpodautoscalers",
];

fn singular(kind: &str) -> String {
    kind.to_ascii_lowercase()
}

/// Storage key shared by all versions of a resource (and by both Event APIs).
fn storage_key(group: &str, plural: &str) -> String {
    if group.is_empty() || (group == "events.k8s.io" && plural == "events") {
        plural.to_owned()
    } else {
        format!("{plural}.{group}")
    }
}

/// Every type the server serves, built-ins first, then CRD-registered kinds.
#[derive(Clone, Debug)]
pub struct Registry {
    types: Vec<Arc<ResourceType>>,
}

impl Default for Registry {
    fn default() -> Self {
        let types = builtins()
            .into_iter()
            .map(|b| {
                Arc::new(ResourceType {
                    group: b.group.into(),
                    version: b.version.into(),
                    kind: b.kind.into(),
                    plural: b.plural.into(),
                    singular: singular(b.kind),
                    namespaced: b.namespaced,
                    short_names: b.short.iter().map(|s| (*s).to_owned()).collect(),
                    categories: if IN_ALL.contains(&b.plural) { vec!["all".into()] } else { vec![] },
                    status: b.status,
                    behaviour: b.behaviour,
                    storage: storage_key(b.group, b.plural),
                    field_paths: b.fields.iter().map(|s| (*s).to_owned()).collect(),
                    schema: None,
                    rules: None,
                    printer_columns: Vec::new(),
                })
            })
            .collect();
        Self { types }
    }
}

impl Registry {
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types.iter().find(|t| t.group == group && t.version == version && t.plural == plural).cloned()
    }

    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceType>> {
        self.types.iter().find(|t| t.api_version() == api_version && t.kind == kind).cloned()
    }

    /// Any served version of the storage (the first registered one).
    pub fn by_storage(&self, storage: &str) -> Option<Arc<ResourceType>> {
        self.types.iter().find(|t| t.storage == storage && t.behaviour != Behaviour::EventsV1).cloned()
    }

    pub fn has_group_version(&self, group: &str, version: &str) -> bool {
        self.types.iter().any(|t| t.group == group && t.version == version)
    }

    /// Register (or replace) the kinds a CRD object defines. Validates what the API server
    /// validates before accepting one.
    pub fn register_crd(&mut self, crd: &Value) -> Result<Vec<Arc<ResourceType>>, ApiError> {
        let types = crd_types(crd)?;
        let storage = types.first().map(|t| t.storage.clone()).unwrap_or_default();
        if self.types.iter().any(|t| t.storage == storage && !t.is_custom()) {
            let name = crd.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
            return Err(invalid(name, "spec.group", "Invalid value: the group and plural name a built-in resource"));
        }
        self.types.retain(|t| t.storage != storage);
        self.types.extend(types.iter().cloned());
        Ok(types)
    }

    /// Remove a CRD's kinds; returns the storage key they used.
    pub fn unregister_crd(&mut self, crd: &Value) -> Option<String> {
        let group = crd.pointer("/spec/group")?.as_str()?;
        let plural = crd.pointer("/spec/names/plural")?.as_str()?;
        let key = storage_key(group, plural);
        self.types.retain(|t| t.storage != key);
        Some(key)
    }

    /// `/api`
    pub fn core_versions(&self, addr: &str) -> Value {
        json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}]
        })
    }

    fn group_doc(&self, group: &str) -> Option<Value> {
        let mut versions: Vec<&str> = Vec::new();
        for t in self.types.iter().filter(|t| t.group == group) {
            if !versions.contains(&t.version.as_str()) {
                versions.push(&t.version);
            }
        }
        let preferred = *versions.first()?;
        let gv = |v: &str| json!({"groupVersion": format!("{group}/{v}"), "version": v});
        Some(json!({
            "name": group,
            "versions": versions.iter().map(|v| gv(v)).collect::<Vec<_>>(),
            "preferredVersion": gv(preferred),
        }))
    }

    /// `/apis`
    pub fn group_list(&self) -> Value {
        let mut groups: Vec<&str> = Vec::new();
        for t in self.types.iter().filter(|t| !t.group.is_empty()) {
            if !groups.contains(&t.group.as_str()) {
                groups.push(&t.group);
            }
        }
        let groups: Vec<Value> = groups.iter().filter_map(|g| self.group_doc(g)).collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    /// `/apis/{group}`
    pub fn group(&self, group: &str) -> Option<Value> {
        let mut doc = self.group_doc(group)?;
        doc["kind"] = json!("APIGroup");
        doc["apiVersion"] = json!("v1");
        Some(doc)
    }

    /// `/api/v1`, `/apis/{group}/{version}`
    pub fn resource_list(&self, group: &str, version: &str) -> Option<Value> {
        if !self.has_group_version(group, version) {
            return None;
        }
        let mut resources = Vec::new();
        for t in self.types.iter().filter(|t| t.group == group && t.version == version) {
            let mut r = json!({
                "name": t.plural,
                "singularName": t.singular,
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": t.verbs(),
            });
            if !t.short_names.is_empty() {
                r["shortNames"] = json!(t.short_names);
            }
            if !t.categories.is_empty() {
                r["categories"] = json!(t.categories);
            }
            resources.push(r);
            if t.status {
                resources.push(json!({
                    "name": format!("{}/status", t.plural),
                    "singularName": "",
                    "namespaced": t.namespaced,
                    "kind": t.kind,
                    "verbs": ["get", "patch", "update"],
                }));
            }
            if super::server::scalable(t) {
                resources.push(json!({
                    "name": format!("{}/scale", t.plural),
                    "singularName": "",
                    "namespaced": t.namespaced,
                    "group": "autoscaling",
                    "version": "v1",
                    "kind": "Scale",
                    "verbs": ["get", "patch", "update"],
                }));
            }
        }
        let gv = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
        Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
    }
}

impl Registry {
    fn group_versions(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for t in &self.types {
            let gv = (t.group.clone(), t.version.clone());
            if !out.contains(&gv) {
                out.push(gv);
            }
        }
        out
    }

    /// `/openapi/v3`: where each group-version's document lives.
    pub fn openapi_root(&self) -> Value {
        let mut paths = serde_json::Map::new();
        for (g, v) in self.group_versions() {
            let key = if g.is_empty() { format!("api/{v}") } else { format!("apis/{g}/{v}") };
            let hash = format!("{:x}", self.types.iter().filter(|t| t.group == g && t.version == v).count());
            paths.insert(key.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={hash}")}));
        }
        json!({"paths": paths})
    }

    /// `/openapi/v3/apis/{group}/{version}`: the operations of each type, enough for clients
    /// to learn which query parameters the server supports (kubectl checks `fieldValidation`
    /// on PATCH before relying on server-side validation). Object schemas are not published.
    pub fn openapi_group_version(&self, group: &str, version: &str) -> Option<Value> {
        if !self.has_group_version(group, version) {
            return None;
        }
        let mut paths = serde_json::Map::new();
        let params: Vec<Value> = ["dryRun", "fieldManager", "fieldValidation", "force"]
            .iter()
            .map(|p| json!({"name": p, "in": "query", "schema": {"type": "string"}, "uniqueItems": true}))
            .collect();
        for t in self.types.iter().filter(|t| t.group == group && t.version == version && !t.is_review()) {
            let root = if group.is_empty() { format!("/api/{version}") } else { format!("/apis/{group}/{version}") };
            let scope = if t.namespaced { "/namespaces/{namespace}" } else { "" };
            let gvk = json!({"group": group, "version": version, "kind": t.kind});
            paths.insert(
                format!("{root}{scope}/{}/{{name}}", t.plural),
                json!({
                    "get": {"x-kubernetes-action": "get", "x-kubernetes-group-version-kind": gvk},
                    "put": {"x-kubernetes-action": "put", "x-kubernetes-group-version-kind": gvk, "parameters": params},
                    "patch": {"x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk, "parameters": params},
                    "delete": {"x-kubernetes-action": "delete", "x-kubernetes-group-version-kind": gvk},
                }),
            );
        }
        Some(
            json!({"openapi": "3.0.0", "info": {"title": "Kubernetes (Reflex sandbox)", "version": "v1.34.0"}, "paths": paths, "components": {"schemas": {}}}),
        )
    }
}

fn invalid(name: &str, field: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(
        "CustomResourceDefinition.apiextensions.k8s.io",
        name,
        vec![Cause { reason: "FieldValueInvalid".into(), message: message.into(), field: field.into() }],
    )
}

/// The served types a CRD object defines, or a 422 naming what is wrong with it.
pub fn crd_types(crd: &Value) -> Result<Vec<Arc<ResourceType>>, ApiError> {
    let name = crd.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    let s = |p: &str| crd.pointer(p).and_then(Value::as_str).unwrap_or_default().to_owned();
    let group = s("/spec/group");
    let plural = s("/spec/names/plural");
    let kind = s("/spec/names/kind");
    if group.is_empty() || !group.contains('.') {
        return Err(invalid(
            name,
            "spec.group",
            format!("Invalid value: {group:?}: should be a domain with at least one dot"),
        ));
    }
    if plural.is_empty() || kind.is_empty() {
        return Err(invalid(name, "spec.names", "Required value: plural and kind are required"));
    }
    if name != format!("{plural}.{group}") {
        return Err(invalid(
            name,
            "metadata.name",
            format!("Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    let namespaced = match s("/spec/scope").as_str() {
        "Namespaced" => true,
        "Cluster" => false,
        other => {
            return Err(invalid(
                name,
                "spec.scope",
                format!("Unsupported value: {other:?}: supported values: \"Cluster\", \"Namespaced\""),
            ));
        }
    };
    let list = |p: &str| -> Vec<String> {
        crd.pointer(p)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let singular_name = match s("/spec/names/singular") {
        x if x.is_empty() => kind.to_ascii_lowercase(),
        x => x,
    };
    let versions = crd.pointer("/spec/versions").and_then(Value::as_array).cloned().unwrap_or_default();
    if versions.is_empty() {
        return Err(invalid(
            name,
            "spec.versions",
            "Invalid value: must have exactly one version marked as storage version",
        ));
    }
    if versions.iter().filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true)).count() != 1 {
        return Err(invalid(
            name,
            "spec.versions",
            "Invalid value: must have exactly one version marked as storage version",
        ));
    }
    let mut out = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        if v.get("served").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        let Some(vname) = v.get("name").and_then(Value::as_str) else {
            return Err(invalid(name, &format!("spec.versions[{i}].name"), "Required value"));
        };
        let Some(schema) = v.pointer("/schema/openAPIV3Schema").cloned() else {
            return Err(invalid(
                name,
                &format!("spec.versions[{i}].schema.openAPIV3Schema"),
                "Required value: schemas are required",
            ));
        };
        out.push(Arc::new(ResourceType {
            group: group.clone(),
            version: vname.to_owned(),
            kind: kind.clone(),
            plural: plural.clone(),
            singular: singular_name.clone(),
            namespaced,
            short_names: list("/spec/names/shortNames"),
            categories: list("/spec/names/categories"),
            status: v.pointer("/subresources/status").is_some(),
            behaviour: Behaviour::Plain,
            storage: storage_key(&group, &plural),
            field_paths: v
                .get("selectableFields")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|f| f.get("jsonPath").and_then(Value::as_str).map(|p| p.trim_start_matches('.').to_owned()))
                .collect(),
            rules: Some(Arc::new(kube::core::cel::compile_schema(&schema))),
            schema: Some(schema),
            printer_columns: v.get("additionalPrinterColumns").and_then(Value::as_array).cloned().unwrap_or_default(),
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_event_apis_share_storage() {
        let r = Registry::default();
        let core = r.find("", "v1", "events").unwrap();
        let new = r.find("events.k8s.io", "v1", "events").unwrap();
        assert_eq!(core.storage, new.storage);
        assert_eq!(r.by_storage("events").unwrap().behaviour, Behaviour::Plain);
    }

    #[test]
    fn discovery_lists_status_subresources() {
        let r = Registry::default();
        let apps = r.resource_list("apps", "v1").unwrap();
        let names: Vec<&str> =
            apps["resources"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert!(names.contains(&"deployments") && names.contains(&"deployments/status"));
        assert!(r.resource_list("apps", "v2").is_none());
        let groups = r.group_list();
        assert!(groups["groups"].as_array().unwrap().iter().any(|g| g["name"] == "apiextensions.k8s.io"));
    }

    #[test]
    fn crd_names_are_checked() {
        let crd = json!({"metadata": {"name": "widgets.example.com"}, "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object"}}}]}});
        let mut r = Registry::default();
        let t = r.register_crd(&crd).unwrap();
        assert_eq!(t[0].singular, "widget");
        assert!(r.find("example.com", "v1", "widgets").is_some());
        let mut bad = crd.clone();
        bad["metadata"]["name"] = json!("gadgets.example.com");
        assert_eq!(r.register_crd(&bad).unwrap_err().code, 422);
        r.unregister_crd(&crd);
        assert!(r.find("example.com", "v1", "widgets").is_none());
    }
}
