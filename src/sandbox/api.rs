//! The API server's object semantics over the store: create, read, list, update, patch
//! (JSON, merge, strategic, apply), delete with finalizers, garbage collection and namespace
//! termination.
//!
//! Contract: every write goes through [`persist`], which applies the rules a real API server
//! applies — system metadata (uid, creationTimestamp, resourceVersion, generation bumped on
//! spec changes only), the status subresource split, finalizer rules, name validation, CRD
//! schema admission, managedFields — and then either stores the object or, when it is being
//! deleted and has no finalizers left, removes it. Each request is one store transaction, so a
//! failure stores nothing, and `dryRun=All` runs the same path without committing.

use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};

use super::defaults::{builtin_shape, defaults};
use super::deletion::{delete_in, settle};
use super::meta::{del_meta, field_cause, finalizers, meta_str, now, set_meta};
use super::rbac::UserInfo;
use super::resources::{Behaviour, ResourceType};
use super::schema::{FieldValidation, admit};
use super::selectors::{FieldSelector, LabelSelector};
use super::ssa::{self, Part, Writer};
use super::status::{ApiError, Cause, Subject, success};
use super::store::{Store, Tx, name_of, ns_of};
use crate::api::template::is_dns_subdomain;
use crate::patch::merge::{Lists, strategic_merge};

/// Who writes, where, and how.
#[derive(Clone, Debug)]
pub struct WriteCtx {
    pub rt: Arc<ResourceType>,
    pub namespace: String,
    pub manager: String,
    pub dry_run: bool,
    pub validation: FieldValidation,
    /// Who asks: a request's user goes through admission policies; `None` for the sandbox's
    /// own controllers (the workload model), as kube-controller-manager's writes of a kind no
    /// policy here binds.
    pub user: Option<UserInfo>,
}

impl WriteCtx {
    fn subject(&self, name: &str) -> Subject {
        Subject::new(&self.rt.group, &self.rt.plural, name)
    }
}

/// A write's result and the warnings to send back.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub object: Value,
    pub warnings: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    Json,
    Merge,
    Strategic,
    Apply { force: bool },
}

#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    /// Exact snapshot version (`resourceVersionMatch=Exact`).
    pub exact: Option<u64>,
}

#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub orphan: bool,
}

fn lists(rt: &ResourceType) -> Lists<'_> {
    match &rt.schema {
        Some(s) => Lists::Schema(s),
        None => Lists::Builtin,
    }
}

fn has_generation(rt: &ResourceType, obj: &Value) -> bool {
    rt.is_custom() || obj.get("spec").is_some()
}

/// The object minus metadata and status: what `generation` tracks.
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    v
}

fn invalid(rt: &ResourceType, name: &str, causes: Vec<Cause>) -> ApiError {
    let kg = if rt.group.is_empty() { rt.kind.clone() } else { format!("{}.{}", rt.kind, rt.group) };
    ApiError::invalid(&kg, name, causes)
}

/// Set apiVersion/kind as this served type presents them, converting Events between the
/// core and events.k8s.io shapes.
pub fn to_api(rt: &ResourceType, mut obj: Value) -> Value {
    if rt.behaviour == Behaviour::EventsV1 {
        obj = events::core_to_v1(obj);
    }
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), json!(rt.api_version()));
        m.insert("kind".into(), json!(rt.kind));
    }
    obj
}

/// The stored shape of an incoming object.
pub fn to_storage(rt: &ResourceType, obj: Value) -> Value {
    if rt.behaviour == Behaviour::EventsV1 { events::v1_to_core(obj) } else { obj }
}

mod events {
    use serde_json::{Map, Value};

    const PAIRS: &[(&str, &str)] = &[
        ("regarding", "involvedObject"),
        ("note", "message"),
        ("reportingController", "reportingComponent"),
        ("deprecatedSource", "source"),
        ("deprecatedFirstTimestamp", "firstTimestamp"),
        ("deprecatedLastTimestamp", "lastTimestamp"),
        ("deprecatedCount", "count"),
    ];

    fn rename(obj: Value, from_v1: bool) -> Value {
        let Value::Object(m) = obj else { return obj };
        let mut out = Map::new();
        for (k, v) in m {
            let renamed = PAIRS.iter().find_map(|(v1, core)| match from_v1 {
                true if k == *v1 => Some(*core),
                false if k == *core => Some(*v1),
                _ => None,
            });
            out.insert(renamed.map(str::to_owned).unwrap_or(k), v);
        }
        Value::Object(out)
    }

    pub fn v1_to_core(obj: Value) -> Value {
        let mut core = rename(obj, true);
        if let Some(m) = core.as_object_mut() {
            m.insert("apiVersion".into(), Value::String("v1".into()));
        }
        core
    }

    pub fn core_to_v1(obj: Value) -> Value {
        rename(obj, false)
    }
}

/// Check the namespace a namespaced write targets exists and is not terminating.
fn check_namespace(tx: &Tx<'_>, w: &WriteCtx, creating: bool) -> Result<(), ApiError> {
    if !w.rt.namespaced {
        return Ok(());
    }
    let Some(ns) = tx.get("namespaces", "", &w.namespace) else {
        return Err(ApiError::not_found(Subject::new("", "namespaces", &w.namespace)));
    };
    if creating && meta_str(&ns, "deletionTimestamp").is_some() {
        return Err(ApiError::forbidden(format!(
            "{} is forbidden: unable to create new content in namespace {} because it is being terminated",
            w.rt.plural, w.namespace
        )));
    }
    Ok(())
}

/// Apply the rules every write obeys, then store or remove `new`.
fn persist(
    tx: &mut Tx<'_>,
    w: &WriteCtx,
    old: Option<&Value>,
    mut new: Value,
    part: Part,
    apply: bool,
) -> Result<Outcome, ApiError> {
    let rt = &w.rt;
    if !new.is_object() {
        return Err(ApiError::bad_request(format!("the object must be a JSON object, not {new}")));
    }
    let name = name_of(&new).to_owned();
    let mut warnings = Vec::new();
    for field in ["labels", "annotations"] {
        let bad = new
            .get("metadata")
            .and_then(|m| m.get(field))
            .is_some_and(|v| !v.is_null() && !v.as_object().is_some_and(|m| m.values().all(Value::is_string)));
        if bad {
            return Err(invalid(
                rt,
                &name,
                vec![field_cause(
                    &format!("metadata.{field}"),
                    "Invalid value: must be a map of string keys to string values",
                )],
            ));
        }
    }
    match old {
        Some(old) => {
            for k in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "namespace",
                "name",
            ] {
                match old.get("metadata").and_then(|m| m.get(k)) {
                    Some(v) => set_meta(&mut new, k, v.clone()),
                    None => del_meta(&mut new, k),
                };
            }
            if part == Part::Status {
                let status = new.get("status").cloned();
                let mut kept = old.clone();
                match status {
                    Some(s) => kept["status"] = s,
                    None => {
                        kept.as_object_mut().map(|m| m.remove("status"));
                    }
                }
                if let Some(mf) = new.pointer("/metadata/managedFields").cloned() {
                    set_meta(&mut kept, "managedFields", mf);
                }
                new = kept;
            } else if rt.status {
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        new.as_object_mut().map(|m| m.remove("status"));
                    }
                }
            }
            if has_generation(rt, &new) {
                let generation = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
                let bumped = if spec_part(old) != spec_part(&new) { generation.saturating_add(1) } else { generation };
                set_meta(&mut new, "generation", json!(bumped));
            }
            if meta_str(old, "deletionTimestamp").is_some() {
                let before = finalizers(old);
                if let Some(f) = finalizers(&new).into_iter().find(|f| !before.contains(f)) {
                    return Err(invalid(
                        rt,
                        &name,
                        vec![Cause {
                            reason: "FieldValueForbidden".into(),
                            message: format!(
                                "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{{f:?}}}"
                            ),
                            field: "metadata.finalizers".into(),
                        }],
                    ));
                }
            }
        }
        None => {
            set_meta(&mut new, "uid", json!(uuid::Uuid::new_v4().to_string()));
            set_meta(&mut new, "creationTimestamp", json!(now()));
            for k in ["deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"] {
                del_meta(&mut new, k);
            }
            if rt.namespaced {
                set_meta(&mut new, "namespace", json!(w.namespace));
            } else {
                del_meta(&mut new, "namespace");
            }
            if rt.status && rt.behaviour != Behaviour::Crd && rt.behaviour != Behaviour::Namespace {
                new.as_object_mut().map(|o| o.remove("status"));
            }
            if has_generation(rt, &new) {
                set_meta(&mut new, "generation", json!(1));
            } else {
                del_meta(&mut new, "generation");
            }
        }
    }
    del_meta(&mut new, "selfLink");
    if !is_dns_subdomain(&name) {
        return Err(invalid(
            rt,
            &name,
            vec![field_cause(
                "metadata.name",
                format!(
                    "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
                ),
            )],
        ));
    }
    if let Some(cause) = builtin_shape(rt, &new) {
        return Err(invalid(rt, &name, vec![cause]));
    }
    if let Some(schema) = &rt.schema {
        let admitted = admit(schema, rt.rules.as_deref(), &new, old);
        if !admitted.invalid.is_empty() {
            return Err(invalid(rt, &name, admitted.invalid));
        }
        if !admitted.unknown.is_empty() {
            match w.validation {
                FieldValidation::Strict => {
                    let list =
                        admitted.unknown.iter().map(|u| format!("unknown field {u:?}")).collect::<Vec<_>>().join(", ");
                    return Err(ApiError::bad_request(format!(
                        "{} in version {:?} cannot be handled as a {}: strict decoding error: {list}",
                        rt.kind, rt.version, rt.kind
                    )));
                }
                FieldValidation::Warn => {
                    warnings.extend(admitted.unknown.iter().map(|u| format!("unknown field {u:?}")))
                }
                FieldValidation::Ignore => {}
            }
        }
        new = admitted.object;
    }
    defaults(rt, &mut new, old.is_none());
    if let Some(user) = &w.user
        && meta_str(&new, "deletionTimestamp").is_none()
    {
        let request = super::admission::Request {
            operation: if old.is_some() { "UPDATE" } else { "CREATE" },
            rt,
            status: matches!(part, Part::Status),
            namespace: &w.namespace,
            name: &name,
            object: &new,
            old,
            user,
            dry_run: w.dry_run,
        };
        super::admission::admit(tx, &request)?;
    }
    if rt.behaviour == Behaviour::Crd {
        tx.registry.register_crd(&new)?;
    }
    if !apply {
        let api_version = rt.api_version();
        let time = now();
        let writer = Writer { manager: &w.manager, api_version: &api_version, time: &time, part };
        ssa::record_update(old, &mut new, &writer, lists(rt));
    }
    // Namespaces finish deleting in settle(), once empty, like the namespace controller does.
    let object = if meta_str(&new, "deletionTimestamp").is_some()
        && finalizers(&new).is_empty()
        && rt.behaviour != Behaviour::Namespace
    {
        let ns = ns_of(&new).to_owned();
        if rt.behaviour == Behaviour::Crd {
            tx.registry.unregister_crd(&new);
        }
        tx.remove(&rt.storage, &ns, &name).unwrap_or(new)
    } else {
        tx.put(&rt.storage, new)
    };
    Ok(Outcome { object, warnings })
}

/// Strip a `fieldManager` to what the API server accepts.
pub fn validate_manager(m: &str) -> Result<(), ApiError> {
    if m.len() > 128 {
        return Err(ApiError::invalid(
            "PatchOptions.meta.k8s.io",
            "",
            vec![field_cause("fieldManager", "Too long: may not be more than 128 bytes")],
        ));
    }
    Ok(())
}

pub struct Api {
    pub store: Arc<Store>,
    /// What containers "printed" (`pods/log`).
    pub logs: super::logs::PodLogs,
}

impl Api {
    pub fn new(store: Arc<Store>) -> Self {
        Self { store, logs: super::logs::PodLogs::default() }
    }

    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        let ns = if rt.namespaced { ns } else { "" };
        self.store
            .get(&rt.storage, ns, name)
            .map(|o| to_api(rt, o))
            .ok_or_else(|| ApiError::not_found(Subject::new(&rt.group, &rt.plural, name)))
    }

    /// A list object, paginated.
    pub fn list(&self, rt: &ResourceType, ns: Option<&str>, opts: &ListOptions) -> Result<Value, ApiError> {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Token {
            rv: u64,
            /// The last (namespace, name) returned, compared as a tuple like the store sorts.
            start: (String, String),
        }
        let token = match &opts.continue_token {
            Some(t) if !t.is_empty() => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(t)
                    .map_err(|_| ApiError::bad_request("continue key is not valid: illegal base64 data"))?;
                Some(
                    serde_json::from_slice::<Token>(&bytes)
                        .map_err(|_| ApiError::bad_request("continue key is not valid: malformed token"))?,
                )
            }
            _ => None,
        };
        let at = token.as_ref().map(|t| t.rv).or(opts.exact);
        let (objects, list_rv) = self.store.list(&rt.storage, ns, at).map_err(|e| {
            if token.is_some() {
                ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.")
            } else {
                e
            }
        })?;
        let key = |o: &Value| (ns_of(o).to_owned(), name_of(o).to_owned());
        let mut matching = objects.into_iter().map(|o| to_api(rt, o)).filter(|o| {
            opts.labels.matches(o.pointer("/metadata/labels").unwrap_or(&Value::Null)) && opts.fields.matches(o)
        });
        let mut items = Vec::new();
        let mut remaining = 0usize;
        let mut last = (String::new(), String::new());
        let start = token.as_ref().map(|t| t.start.clone());
        for o in matching.by_ref() {
            if start.as_ref().is_some_and(|s| key(&o) <= *s) {
                continue;
            }
            if opts.limit.is_some_and(|l| l > 0 && items.len() >= l) {
                remaining = 1;
                break;
            }
            last = key(&o);
            items.push(o);
        }
        remaining += matching.count();
        let mut meta = json!({"resourceVersion": list_rv.to_string()});
        if remaining > 0 {
            let t = serde_json::to_vec(&Token { rv: list_rv, start: last }).unwrap_or_default();
            meta["continue"] = json!(base64::engine::general_purpose::STANDARD.encode(t));
            meta["remainingItemCount"] = json!(remaining);
        }
        Ok(
            json!({"apiVersion": rt.api_version(), "kind": format!("{}List", rt.kind), "metadata": meta, "items": items}),
        )
    }

    pub fn create(&self, w: &WriteCtx, obj: Value) -> Result<Outcome, ApiError> {
        let mut obj = to_storage(&w.rt, obj);
        if meta_str(&obj, "name").is_none_or(str::is_empty) {
            match meta_str(&obj, "generateName").filter(|g| !g.is_empty()) {
                Some(g) => {
                    let suffix: String = uuid::Uuid::new_v4()
                        .simple()
                        .to_string()
                        .chars()
                        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                        .take(5)
                        .collect();
                    let name = format!("{g}{suffix}");
                    set_meta(&mut obj, "name", json!(name));
                }
                None => {
                    return Err(invalid(
                        &w.rt,
                        "",
                        vec![Cause {
                            reason: "FieldValueRequired".into(),
                            message: "Required value: name or generateName is required".into(),
                            field: "metadata.name".into(),
                        }],
                    ));
                }
            }
        }
        if w.rt.namespaced
            && let Some(body_ns) = meta_str(&obj, "namespace")
            && !body_ns.is_empty()
            && body_ns != w.namespace
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let name = name_of(&obj).to_owned();
        self.store.write(w.dry_run, |tx| {
            check_namespace(tx, w, true)?;
            if tx.get(&w.rt.storage, if w.rt.namespaced { &w.namespace } else { "" }, &name).is_some() {
                return Err(ApiError::already_exists(w.subject(&name)));
            }
            let out = persist(tx, w, None, obj, Part::Main, false)?;
            Ok(Outcome { object: to_api(&w.rt, out.object), warnings: out.warnings })
        })
    }

    /// PUT on the object or its status.
    pub fn update(&self, w: &WriteCtx, name: &str, obj: Value, part: Part) -> Result<Outcome, ApiError> {
        let obj = to_storage(&w.rt, obj);
        if meta_str(&obj, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta_str(&obj, "name").unwrap_or_default()
            )));
        }
        let ns = if w.rt.namespaced { w.namespace.clone() } else { String::new() };
        self.store.write(w.dry_run, |tx| {
            check_namespace(tx, w, false)?;
            let Some(old) = tx.get(&w.rt.storage, &ns, name) else { return Err(ApiError::not_found(w.subject(name))) };
            if w.rt.is_custom() && meta_str(&obj, "resourceVersion").is_none_or(str::is_empty) {
                return Err(invalid(
                    &w.rt,
                    name,
                    vec![field_cause(
                        "metadata.resourceVersion",
                        "Invalid value: 0x0: must be specified for an update",
                    )],
                ));
            }
            if let Some(rv) = meta_str(&obj, "resourceVersion").filter(|r| !r.is_empty())
                && Some(rv) != meta_str(&old, "resourceVersion")
            {
                return Err(ApiError::modified(w.subject(name)));
            }
            let out = persist(tx, w, Some(&old), obj, part, false)?;
            settle(tx)?;
            Ok(Outcome { object: to_api(&w.rt, out.object), warnings: out.warnings })
        })
    }

    /// PATCH on the object or its status. Apply patches create the object when missing.
    pub fn patch(
        &self,
        w: &WriteCtx,
        name: &str,
        kind: PatchKind,
        body: &Value,
        part: Part,
    ) -> Result<(Outcome, bool), ApiError> {
        if kind == PatchKind::Strategic && w.rt.is_custom() {
            return Err(ApiError::unsupported_media_type(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            ));
        }
        if matches!(kind, PatchKind::Apply { .. }) && w.manager.is_empty() {
            return Err(ApiError::invalid(
                "PatchOptions.meta.k8s.io",
                "",
                vec![Cause {
                    reason: "FieldValueRequired".into(),
                    message: "Required value: is required for apply patch".into(),
                    field: "fieldManager".into(),
                }],
            ));
        }
        let ns = if w.rt.namespaced { w.namespace.clone() } else { String::new() };
        self.store.write(w.dry_run, |tx| {
            check_namespace(tx, w, false)?;
            let old = tx.get(&w.rt.storage, &ns, name);
            if old.is_none() && part == Part::Status {
                return Err(ApiError::not_found(w.subject(name)));
            }
            let old_api = old.clone().map(|o| to_api(&w.rt, o));
            let (new, applied) = match (kind, &old_api) {
                (PatchKind::Apply { force }, _) => {
                    let applied = to_storage(&w.rt, body.clone());
                    if meta_str(&applied, "name").is_some_and(|n| n != name) {
                        return Err(ApiError::bad_request(format!(
                            "the name of the object ({}) does not match the name on the URL ({name})",
                            meta_str(&applied, "name").unwrap_or_default()
                        )));
                    }
                    if applied.get("apiVersion").and_then(Value::as_str) != Some(&w.rt.api_version())
                        && w.rt.behaviour != Behaviour::EventsV1
                        || applied.get("kind").and_then(Value::as_str) != Some(&w.rt.kind)
                    {
                        return Err(ApiError::bad_request(format!(
                            "apply patch must name apiVersion {:?} and kind {:?}",
                            w.rt.api_version(),
                            w.rt.kind
                        )));
                    }
                    let api_version = w.rt.api_version();
                    let time = now();
                    let writer = Writer { manager: &w.manager, api_version: &api_version, time: &time, part };
                    let mut applied = applied;
                    set_meta(&mut applied, "name", json!(name));
                    let merged =
                        ssa::apply(old.as_ref(), &applied, &writer, force, lists(&w.rt)).map_err(|conflicts| {
                            ApiError::apply_conflicts(
                                w.subject(name),
                                conflicts
                                    .into_iter()
                                    .map(|c| Cause {
                                        reason: "FieldManagerConflict".into(),
                                        message: format!(
                                            "conflict with {:?} using {}: {}",
                                            c.manager, c.api_version, c.field
                                        ),
                                        field: c.field,
                                    })
                                    .collect(),
                            )
                        })?;
                    (merged, true)
                }
                (_, None) => return Err(ApiError::not_found(w.subject(name))),
                (PatchKind::Json, Some(cur)) => {
                    let ops: json_patch::Patch = serde_json::from_value(body.clone()).map_err(|e| {
                        ApiError::bad_request(format!(
                            "the server rejected our request due to an error in our request: invalid JSON patch: {e}"
                        ))
                    })?;
                    let mut doc = cur.clone();
                    for op in ops.0 {
                        // As in kube-apiserver (evanphx/json-patch), `test` of a missing path
                        // against null passes; clients (kube-runtime's finalizer helper) rely on it.
                        if let json_patch::PatchOperation::Test(t) = &op
                            && t.value.is_null()
                            && doc.pointer(t.path.as_str()).is_none()
                        {
                            continue;
                        }
                        json_patch::patch(&mut doc, &[op])
                            .map_err(|e| ApiError::invalid(&w.rt.kind, name, vec![field_cause("", e.to_string())]))?;
                    }
                    (to_storage(&w.rt, doc), false)
                }
                (PatchKind::Merge, Some(cur)) => {
                    if !body.is_object() {
                        return Err(ApiError::bad_request("the body of a merge patch must be a JSON object"));
                    }
                    let mut doc = cur.clone();
                    json_patch::merge(&mut doc, body);
                    (to_storage(&w.rt, doc), false)
                }
                (PatchKind::Strategic, Some(cur)) => {
                    let doc = strategic_merge(cur, body).map_err(ApiError::bad_request)?;
                    (to_storage(&w.rt, doc), false)
                }
            };
            // A patch (apply included) may carry a resourceVersion precondition.
            if let (Some(old), Some(rv)) = (&old, meta_str(body, "resourceVersion").filter(|r| !r.is_empty()))
                && Some(rv) != meta_str(old, "resourceVersion")
            {
                return Err(ApiError::modified(w.subject(name)));
            }
            if !new.is_object() {
                return Err(ApiError::invalid(
                    &w.rt.kind,
                    name,
                    vec![field_cause("", "the patched object is not a JSON object")],
                ));
            }
            let created = old.is_none();
            if created {
                check_namespace(tx, w, true)?;
            }
            let out = persist(tx, w, old.as_ref(), new, part, applied)?;
            settle(tx)?;
            Ok((Outcome { object: to_api(&w.rt, out.object), warnings: out.warnings }, created))
        })
    }

    /// DELETE one object: the object (custom kinds, or still finalizing) or a Success Status.
    pub fn delete(&self, w: &WriteCtx, name: &str, opts: &DeleteOptions) -> Result<Value, ApiError> {
        let ns = if w.rt.namespaced { w.namespace.clone() } else { String::new() };
        self.store.write(w.dry_run, |tx| {
            let Some(old) = tx.get(&w.rt.storage, &ns, name) else { return Err(ApiError::not_found(w.subject(name))) };
            if let Some(uid) = &opts.uid
                && Some(uid.as_str()) != meta_str(&old, "uid")
            {
                return Err(ApiError::conflict(
                    w.subject(name),
                    &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {}", meta_str(&old, "uid").unwrap_or_default()),
                ));
            }
            if let Some(rv) = &opts.resource_version
                && Some(rv.as_str()) != meta_str(&old, "resourceVersion")
            {
                return Err(ApiError::conflict(
                    w.subject(name),
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        meta_str(&old, "resourceVersion").unwrap_or_default()
                    ),
                ));
            }
            let (obj, gone) = delete_in(tx, &w.rt, &old, opts.orphan)?;
            settle(tx)?;
            if gone && !w.rt.is_custom() {
                Ok(success(&w.subject(name), meta_str(&old, "uid").unwrap_or_default()))
            } else {
                Ok(to_api(&w.rt, obj))
            }
        })
    }

    /// DELETE on a collection: every matching object, as one list of what was deleted.
    pub fn delete_collection(&self, w: &WriteCtx, opts: &ListOptions) -> Result<Value, ApiError> {
        let ns = w.rt.namespaced.then_some(w.namespace.as_str());
        let rt = w.rt.clone();
        self.store.write(w.dry_run, |tx| {
            let mut items = Vec::new();
            for o in tx.list(&rt.storage, ns) {
                let shown = to_api(&rt, o.clone());
                if opts.labels.matches(shown.pointer("/metadata/labels").unwrap_or(&Value::Null)) && opts.fields.matches(&shown) {
                    let (obj, _) = delete_in(tx, &rt, &o, false)?;
                    items.push(to_api(&rt, obj));
                }
            }
            settle(tx)?;
            Ok(json!({"apiVersion": rt.api_version(), "kind": format!("{}List", rt.kind), "metadata": {}, "items": items}))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::resources::Registry;

    fn ctx(api: &Api, group: &str, plural: &str, ns: &str) -> WriteCtx {
        let rt = api.store.registry().find(group, "v1", plural).unwrap();
        WriteCtx {
            rt,
            namespace: ns.into(),
            manager: "test".into(),
            dry_run: false,
            validation: FieldValidation::Strict,
            user: None,
        }
    }

    fn api_with_namespace(ns: &str) -> Api {
        let api = Api::new(Arc::new(Store::new(1000)));
        let w = ctx(&api, "", "namespaces", "");
        api.create(&w, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})).unwrap();
        api
    }

    #[test]
    fn namespace_deletion_waits_for_finalizers_then_removes_everything() {
        let api = api_with_namespace("shop");
        let cms = ctx(&api, "", "configmaps", "shop");
        api.create(&cms, json!({"metadata": {"name": "plain"}})).unwrap();
        api.create(&cms, json!({"metadata": {"name": "held", "finalizers": ["x/y"]}})).unwrap();
        let nss = ctx(&api, "", "namespaces", "");
        let terminating = api.delete(&nss, "shop", &DeleteOptions::default()).unwrap();
        assert_eq!(terminating["status"]["phase"], "Terminating");
        assert_eq!(api.get(&cms.rt, "shop", "plain").unwrap_err().code, 404);
        let held = api.get(&cms.rt, "shop", "held").unwrap();
        assert!(held.pointer("/metadata/deletionTimestamp").is_some());
        let err = api.create(&cms, json!({"metadata": {"name": "late"}})).unwrap_err();
        assert_eq!(err.code, 403);
        assert!(err.message.contains("because it is being terminated"));
        api.patch(&cms, "held", PatchKind::Merge, &json!({"metadata": {"finalizers": null}}), Part::Main).unwrap();
        assert_eq!(api.get(&cms.rt, "shop", "held").unwrap_err().code, 404);
        assert_eq!(api.get(&nss.rt, "", "shop").unwrap_err().code, 404, "the emptied namespace goes");
    }

    #[test]
    fn garbage_collection_follows_owners_unless_orphaned() {
        let api = api_with_namespace("shop");
        let cms = ctx(&api, "", "configmaps", "shop");
        let owner = api.create(&cms, json!({"metadata": {"name": "owner"}})).unwrap().object;
        let uid = owner["metadata"]["uid"].clone();
        let dependent = |name: &str| json!({"metadata": {"name": name, "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]}});
        api.create(&cms, dependent("child")).unwrap();
        api.delete(&cms, "owner", &DeleteOptions::default()).unwrap();
        assert_eq!(api.get(&cms.rt, "shop", "child").unwrap_err().code, 404);

        let owner = api.create(&cms, json!({"metadata": {"name": "owner"}})).unwrap().object;
        let uid = owner["metadata"]["uid"].clone();
        api.create(&cms, json!({"metadata": {"name": "kept", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]}})).unwrap();
        api.delete(&cms, "owner", &DeleteOptions { orphan: true, ..Default::default() }).unwrap();
        let kept = api.get(&cms.rt, "shop", "kept").unwrap();
        assert_eq!(kept["metadata"]["ownerReferences"], json!([]));
    }

    #[test]
    fn events_written_as_events_k8s_io_read_back_as_core_events() {
        let api = api_with_namespace("shop");
        let registry: Registry = api.store.registry();
        let v1 = registry.find("events.k8s.io", "v1", "events").unwrap();
        let w = WriteCtx {
            rt: v1.clone(),
            namespace: "shop".into(),
            manager: "t".into(),
            dry_run: false,
            validation: FieldValidation::Ignore,
            user: None,
        };
        api.create(
            &w,
            json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e1"},
            "regarding": {"kind": "Remediation", "name": "r1"}, "note": "Pending -> Diagnosing", "reason": "Diagnosing",
            "reportingController": "reflex", "type": "Normal"}),
        )
        .unwrap();
        let core = registry.find("", "v1", "events").unwrap();
        let e = api.get(&core, "shop", "e1").unwrap();
        assert_eq!((e["apiVersion"].as_str(), e["involvedObject"]["name"].as_str()), (Some("v1"), Some("r1")));
        assert_eq!(e["message"], "Pending -> Diagnosing");
        assert_eq!(e["reportingComponent"], "reflex");
        let back = api.get(&v1, "shop", "e1").unwrap();
        assert_eq!(back["note"], "Pending -> Diagnosing");
        assert_eq!(back["apiVersion"], "events.k8s.io/v1");
    }
}
