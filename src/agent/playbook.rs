//! The playbook executor's pure core: render a playbook's bounded patch from what was read.
//!
//! Contract: placeholders (`{{ target.name }}`, `{{ labels.X }}`, `{{ params.X }}`) are
//! substituted *after* the template is parsed as YAML, so no value can change the patch's
//! structure. Each parameter's expression is evaluated ([`super::expr`]) and bounded: clamped
//! to `[min, max]` and to `maxFactor` times the value it replaces in the target (read with
//! the same merge keys the patch uses); every clamp is reported. Every leaf the patch sets
//! must be under one of the playbook's `allowedPaths` (list items as `[*]`; merge keys such as
//! `name` identify items and are not changes).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::expr::{ExprError, eval};
use crate::api::playbook::{ParameterType, PatchType};
use crate::api::validate::{ValidParameter, ValidPlaybook};
use crate::patch::image::{repository, tag_of, valid_repository, valid_tag, version_of};
use crate::patch::safety::{inert, number};
use crate::patch::tree::{new_items, replaced, touched_as};

/// What the patch is rendered against.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// `target.kind`, `target.name`, `target.namespace`.
    pub target: BTreeMap<String, String>,
    /// The alert's labels.
    pub labels: BTreeMap<String, String>,
    /// Each read step's result, by name.
    pub reads: BTreeMap<String, Value>,
    /// The target object as read (for maxFactor and the snapshot).
    pub object: Value,
    /// `{{ now }}`: when the run began (RFC 3339), e.g. for a restart annotation.
    pub now: Option<String>,
    /// `promql.<key>`: PromQL fragments Reflex builds from the validated target (never from
    /// alert labels) — `promql.pods` (the target's Pods by kube-state-metrics owner joins) and
    /// `promql.podNameRegex` (the name-regex fallback). Pasted into read arguments as they are.
    pub promql: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RenderError {
    #[error("playbook has no template (mode agent needs the agent stage)")]
    NoTemplate,
    #[error("template is not valid YAML: {0}")]
    Yaml(String),
    #[error("{0}")]
    Expr(#[from] ExprError),
    #[error("template uses {0:?}, which is not defined")]
    Unknown(String),
    #[error(
        "{{{{ {name} }}}} is {value:?}: only letters, digits and _ . : / - can go into an expression or a tool argument"
    )]
    Unsafe { name: String, value: String },
    #[error("parameter {name}: {message}")]
    Parameter { name: String, message: String },
    #[error("the patch sets {0}, which the playbook's allowedPaths do not allow")]
    NotAllowed(String),
    #[error(
        "{{{{ {name} }}}} is {value:?}: a field name from a placeholder may hold only letters, digits, _ and - (and must not repeat another field)"
    )]
    Key { name: String, value: String },
}

impl Scope {
    /// `target.<key>` or `labels.<key>`: the values templates and read arguments may name.
    pub fn lookup(&self, name: &str) -> Option<String> {
        if name == "now" {
            return self.now.clone();
        }
        let (ns, key) = name.split_once('.')?;
        match ns {
            "target" => self.target.get(key).cloned(),
            "labels" => self.labels.get(key).cloned(),
            "promql" => self.promql.get(key).cloned(),
            "workload" if key == "container" => self.container(),
            _ => None,
        }
    }

    /// `workload.container`: the container the alert names (`labels.container`), or else the
    /// target's only container — once the target is read. None when the alert names none and
    /// the workload runs several (a template must not guess between them).
    fn container(&self) -> Option<String> {
        if let Some(named) = self.labels.get("container").filter(|c| !c.is_empty()) {
            return Some(named.clone());
        }
        match self.object.pointer("/spec/template/spec/containers").and_then(Value::as_array).map(Vec::as_slice) {
            Some([only]) => only.get("name").and_then(Value::as_str).map(str::to_owned),
            _ => None,
        }
    }
}

/// A rendered patch, the parameter values used, and notes on every bound applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    pub patch: Value,
    pub params: BTreeMap<String, String>,
    pub notes: Vec<String>,
}

const MARK: &str = "__reflex_placeholder_";

/// Replace `{{ x.y }}` with markers so values are substituted after parsing.
fn mark(template: &str) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start..].find("}}") else { break };
        out.push_str(&rest[..start]);
        let name = rest[start + 2..start + end].trim().to_owned();
        out.push_str(&format!("{MARK}{}__", names.len()));
        names.push(name);
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    (out, names)
}

/// Substitute `{{ name }}` in plain text (read arguments, parameter expressions). Values are
/// pasted as text, so only inert ones are accepted: an alert label cannot inject PromQL or
/// expression syntax.
pub fn substitute(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, RenderError> {
    let (marked, names) = mark(text);
    let mut out = marked;
    for (i, name) in names.iter().enumerate() {
        let value = lookup(name).ok_or_else(|| RenderError::Unknown(name.clone()))?;
        // Reflex's own PromQL fragments are built from the validated target, not from labels.
        if !name.starts_with("promql.") && !inert(&value) {
            return Err(RenderError::Unsafe { name: name.clone(), value });
        }
        out = out.replace(&format!("{MARK}{i}__"), &value);
    }
    Ok(out)
}

/// Fields whose values the API keeps as text whatever they look like: ConfigMap data,
/// annotations, labels, environment variables.
const TEXT_FIELDS: [&str; 5] = ["data", "stringData", "annotations", "labels", "env"];

fn fill(
    v: &mut Value,
    names: &[String],
    values: &dyn Fn(&str) -> Option<String>,
    text: bool,
) -> Result<(), RenderError> {
    match v {
        Value::String(s) if s.contains(MARK) => {
            let whole = names.iter().enumerate().find(|(i, _)| *s == format!("{MARK}{i}__"));
            let mut out = s.clone();
            for (i, name) in names.iter().enumerate() {
                let token = format!("{MARK}{i}__");
                if out.contains(&token) {
                    let value = values(name).ok_or_else(|| RenderError::Unknown(name.clone()))?;
                    out = out.replace(&token, &value);
                }
            }
            *v = match whole {
                // A whole-value integer parameter stays a number, except where the API wants
                // text (a ConfigMap's `data: {POOL_SIZE: "40"}`).
                Some(_) if !text && out.parse::<i64>().is_ok() && !out.starts_with('0') => {
                    json!(out.parse::<i64>().unwrap_or_default())
                }
                _ => Value::String(out),
            };
            Ok(())
        }
        Value::Array(items) => items.iter_mut().try_for_each(|i| fill(i, names, values, text)),
        Value::Object(m) => {
            // A placeholder in a key (`data: {"{{ labels.key }}": ...}`) names a field: only
            // inert values (never a parameter) may go there.
            if m.keys().any(|k| k.contains(MARK)) {
                for (k, mut child) in std::mem::take(m) {
                    let key = if k.contains(MARK) { fill_key(&k, names, values)? } else { k };
                    fill(&mut child, names, values, text || TEXT_FIELDS.contains(&key.as_str()))?;
                    if m.contains_key(&key) {
                        return Err(RenderError::Key { name: key.clone(), value: key });
                    }
                    m.insert(key, child);
                }
                return Ok(());
            }
            m.iter_mut().try_for_each(|(k, i)| fill(i, names, values, text || TEXT_FIELDS.contains(&k.as_str())))
        }
        _ => Ok(()),
    }
}

fn fill_key(key: &str, names: &[String], values: &dyn Fn(&str) -> Option<String>) -> Result<String, RenderError> {
    let mut out = key.to_owned();
    for (i, name) in names.iter().enumerate() {
        let token = format!("{MARK}{i}__");
        if out.contains(&token) {
            if name.starts_with("params.") {
                return Err(RenderError::Parameter {
                    name: name.trim_start_matches("params.").to_owned(),
                    message: "a parameter cannot name a field".into(),
                });
            }
            let value = values(name).ok_or_else(|| RenderError::Unknown(name.clone()))?;
            // No `.` or `/`: field paths are dotted, and a key must name one field.
            if value.is_empty()
                || value.len() > 253
                || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(RenderError::Key { name: name.clone(), value });
            }
            out = out.replace(&token, &value);
        }
    }
    Ok(out)
}

/// `192Mi`, `1Gi`, `500m`, `2`: the shortest exact-enough Kubernetes quantity, rounding up.
pub fn format_quantity(value: f64) -> String {
    quantity_text(value, f64::ceil)
}

/// Like [`format_quantity`], rounding down.
pub fn format_quantity_floor(value: f64) -> String {
    quantity_text(value, f64::floor)
}

/// An exact binary suffix when there is one, else Mi (or milli below 1) rounded by `round`.
fn quantity_text(value: f64, round: fn(f64) -> f64) -> String {
    const UNITS: [(&str, f64); 4] = [("Ti", 1099511627776.0), ("Gi", 1073741824.0), ("Mi", 1048576.0), ("Ki", 1024.0)];
    if value >= 1024.0 {
        for (suffix, size) in UNITS {
            if value >= size && (value / size).fract() == 0.0 {
                return format!("{}{suffix}", (value / size) as u64);
            }
        }
        return format!("{}Mi", round(value / 1048576.0) as u64);
    }
    if value.fract() == 0.0 { format!("{}", value as u64) } else { format!("{}m", round(value * 1000.0) as u64) }
}

fn format_param_floor(p: &ValidParameter, value: f64) -> String {
    match p.type_ {
        ParameterType::Quantity => format_quantity_floor(value),
        ParameterType::Integer => format!("{}", value.floor() as i64),
        ParameterType::Number | ParameterType::String | ParameterType::Image => format!("{value}"),
    }
}

fn parse_param(p: &ValidParameter, text: &str) -> Option<f64> {
    match p.type_ {
        ParameterType::Quantity => crate::api::quantity::parse_quantity(text).ok(),
        _ => text.parse().ok(),
    }
}

fn format_param(p: &ValidParameter, value: f64) -> String {
    match p.type_ {
        ParameterType::Quantity => format_quantity(value),
        ParameterType::Integer => format!("{}", value.round() as i64),
        ParameterType::Number | ParameterType::String | ParameterType::Image => format!("{value}"),
    }
}

/// Render `pb`'s patch in `scope`.
pub fn render(pb: &ValidPlaybook, scope: &Scope) -> Result<Rendered, RenderError> {
    render_with(pb, scope, &BTreeMap::new())
}

/// A value the LLM agent chose for a delegated parameter: a number for numeric ones, text
/// for quantities, strings and images.
pub type Choices = BTreeMap<String, Value>;

/// Render `pb`'s patch in `scope`, with the agent's `choices` for delegated parameters in
/// place of the playbook's expressions. A choice must already be within every bound: where
/// the playbook's own value would be clamped with a note, a choice is refused.
pub fn render_with(pb: &ValidPlaybook, scope: &Scope, choices: &Choices) -> Result<Rendered, RenderError> {
    let template = pb.template.as_deref().ok_or(RenderError::NoTemplate)?;
    let plain = |name: &str| scope.lookup(name);
    let eval_scope = json!({"reads": scope.reads, "target": scope.object, "labels": scope.labels});
    for name in choices.keys() {
        if !pb.parameters.iter().any(|p| p.delegate && &p.name == name) {
            return Err(RenderError::Parameter {
                name: name.clone(),
                message: "is not a parameter the playbook delegates".into(),
            });
        }
    }
    let mut raw: BTreeMap<String, f64> = BTreeMap::new();
    for p in &pb.parameters {
        if matches!(p.type_, ParameterType::String | ParameterType::Image) {
            continue;
        }
        let v = match choices.get(&p.name) {
            Some(choice) => chosen_number(p, choice)?,
            None => eval(&substitute(&p.value, &|n| plain(n))?, &eval_scope)?,
        };
        raw.insert(p.name.clone(), v);
    }
    let (marked, names) = mark(template);
    let mut patch: Value = serde_saphyr::from_str(&marked).map_err(|e| RenderError::Yaml(e.to_string()))?;
    let mut notes = Vec::new();
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    // Bound each parameter: [min, max], then maxFactor against what it replaces.
    let mut probe = patch.clone();
    let probe_values = |n: &str| -> Option<String> {
        match n.strip_prefix("params.") {
            Some(p) => Some(format!("{MARK}param_{p}__")),
            None => plain(n),
        }
    };
    fill(&mut probe, &names, &probe_values, false)?;
    for p in &pb.parameters {
        let chosen = choices.get(&p.name);
        if p.type_ == ParameterType::Image {
            let token = format!("{MARK}param_{}__", p.name);
            let currents = replaced(&probe, &scope.object, &token);
            let wanted = match chosen {
                Some(Value::String(s)) => s.clone(),
                Some(other) => {
                    return Err(RenderError::Parameter {
                        name: p.name.clone(),
                        message: format!("the agent chose {other}, which is not an image or tag"),
                    });
                }
                None => super::expr::text(&substitute(&p.value, &|n| plain(n))?, &eval_scope)?,
            };
            let image = bounded_image(p, &wanted, &currents)?;
            params.insert(p.name.clone(), image);
            continue;
        }
        if p.type_ == ParameterType::String {
            let v = match chosen {
                Some(Value::String(s)) => s.clone(),
                Some(other) => {
                    return Err(RenderError::Parameter {
                        name: p.name.clone(),
                        message: format!("the agent chose {other}, which is not text"),
                    });
                }
                None => substitute(&p.value, &|n| plain(n))?,
            };
            if !p.allowed.contains(&v) {
                return Err(RenderError::Parameter {
                    name: p.name.clone(),
                    message: format!("{v:?} is not one of {:?}", p.allowed),
                });
            }
            params.insert(p.name.clone(), v);
            continue;
        }
        let mut v = raw.get(&p.name).copied().unwrap_or_default();
        let before = notes.len();
        if let Some(min) = p.min.filter(|m| v < *m) {
            notes.push(format!("{}: {} raised to the minimum {}", p.name, format_param(p, v), format_param(p, min)));
            v = min;
        }
        if let Some(max) = p.max.filter(|m| v > *m) {
            notes.push(format!("{}: {} capped at the ceiling {}", p.name, format_param(p, v), format_param(p, max)));
            v = max;
        }
        let mut upper = f64::INFINITY;
        if let Some(max) = p.max {
            upper = upper.min(max);
        }
        if let Some(factor) = p.max_factor {
            let token = format!("{MARK}param_{}__", p.name);
            let currents: Vec<f64> =
                replaced(&probe, &scope.object, &token).iter().map(|cur| cur.and_then(number).unwrap_or(0.0)).collect();
            // Fail closed: a factor bound needs a current value to be relative to.
            let top = currents.iter().copied().reduce(f64::max).unwrap_or(0.0);
            let base =
                currents.into_iter().reduce(f64::min).filter(|b| *b > 0.0).ok_or_else(|| RenderError::Parameter {
                    name: p.name.clone(),
                    message: format!("maxFactor {factor} needs the value it replaces, but the target has none there"),
                })?;
            // The factor bounds a change either way, as the safety check does.
            if v < top / factor {
                notes.push(format!(
                    "{}: {} raised to 1/{factor} of the current {}",
                    p.name,
                    format_param(p, v),
                    format_param(p, top)
                ));
                v = top / factor;
            }
            if v > base * factor {
                notes.push(format!(
                    "{}: {} capped at {factor}x the current {}",
                    p.name,
                    format_param(p, v),
                    format_param(p, base)
                ));
                v = base * factor;
            }
            upper = upper.min(base * factor);
        }
        if let Some(min) = p.min
            && v < min
        {
            return Err(RenderError::Parameter {
                name: p.name.clone(),
                message: format!(
                    "the bounds leave nothing: {} is below the minimum {}",
                    format_param(p, v),
                    format_param(p, min)
                ),
            });
        }
        if v < 0.0 {
            return Err(RenderError::Parameter { name: p.name.clone(), message: format!("{v} is negative") });
        }
        // The agent's choice is not bent to fit: one outside the bounds is refused.
        if chosen.is_some() && notes.len() > before {
            let why = notes.split_off(before).join("; ");
            return Err(RenderError::Parameter {
                name: p.name.clone(),
                message: format!("the agent's choice is outside the playbook's bounds ({why})"),
            });
        }
        // The written value must itself respect the caps: round down when rounding up would not.
        let text = format_param(p, v);
        let text = if parse_param(p, &text).is_some_and(|w| w > upper) { format_param_floor(p, v) } else { text };
        params.insert(p.name.clone(), text);
    }
    let values = |n: &str| -> Option<String> {
        match n.strip_prefix("params.") {
            Some(p) => params.get(p).cloned(),
            None => plain(n),
        }
    };
    fill(&mut patch, &names, &values, false)?;
    let keyed = pb.patch_type != PatchType::Merge;
    let mut changed: Vec<String> = touched_as(&patch, &scope.object, keyed).into_iter().map(|(p, _)| p).collect();
    if keyed {
        changed.extend(new_items(&patch, &scope.object));
    }
    for path in changed {
        if !crate::patch::safety::path_allowed(&path, &pb.allowed_paths) {
            return Err(RenderError::NotAllowed(path));
        }
    }
    Ok(Rendered { patch, params, notes })
}

/// An agent's choice for a numeric parameter, in base units.
fn chosen_number(p: &ValidParameter, choice: &Value) -> Result<f64, RenderError> {
    let v = match (p.type_, choice) {
        (ParameterType::Quantity, Value::String(s)) => crate::api::quantity::parse_quantity(s).ok(),
        (ParameterType::Integer, Value::Number(n)) => n.as_f64().filter(|f| f.fract() == 0.0),
        (ParameterType::Number | ParameterType::Quantity, Value::Number(n)) => n.as_f64(),
        _ => None,
    };
    v.filter(|v| v.is_finite()).ok_or_else(|| RenderError::Parameter {
        name: p.name.clone(),
        message: format!("the agent chose {choice}, which is not {}", type_name(p.type_)),
    })
}

/// How a parameter type is named to people and to the model.
pub fn type_name(t: ParameterType) -> &'static str {
    match t {
        ParameterType::Integer => "an integer",
        ParameterType::Number => "a number",
        ParameterType::Quantity => "a quantity such as 512Mi or 250m",
        ParameterType::String => "one of the allowed strings",
        ParameterType::Image => "an image tag or reference in the same repository",
    }
}

/// An image parameter's value: `wanted` (a tagged reference, or a tag for the repository of
/// the image it replaces — never a digest, which would pin any build whatever its tag says)
/// in the same repository as every image it replaces, not what already runs, and a later
/// version of the same variant when the parameter says `newer`.
fn bounded_image(p: &ValidParameter, wanted: &str, currents: &[Option<&Value>]) -> Result<String, RenderError> {
    let fail = |message: String| RenderError::Parameter { name: p.name.clone(), message };
    let currents: Vec<&str> =
        currents.iter().map(|c| c.and_then(Value::as_str)).collect::<Option<_>>().ok_or_else(|| {
            fail(
                "the target has no image where the template puts this parameter (is the container named right?)".into(),
            )
        })?;
    let Some(first) = currents.first() else {
        return Err(fail("the template does not place this parameter".into()));
    };
    if wanted.contains('@') {
        return Err(fail(format!("{wanted:?} pins a digest; give a tag")));
    }
    let bare = !wanted.contains([':', '/']);
    let image = if bare { format!("{}:{wanted}", repository(first)) } else { wanted.to_owned() };
    let wanted_repository = repository(&image);
    let Some(tag) = tag_of(&image).filter(|t| valid_tag(t) && valid_repository(wanted_repository)) else {
        return Err(fail(format!("{wanted:?} is not an image tag or a tagged reference")));
    };
    for current in &currents {
        let from = repository(current);
        if from != wanted_repository {
            return Err(fail(format!("{image} is not in the repository of {current} ({from})")));
        }
        if *current == image {
            return Err(fail(format!("{image} is what already runs")));
        }
        if p.newer {
            let Some(old) = tag_of(current) else {
                return Err(fail(format!(
                    "the current image {current} has no tag (or is pinned by digest) to compare"
                )));
            };
            match (version_of(old), version_of(tag)) {
                (Some((_, va)), Some((_, vb))) if va != vb => {
                    return Err(fail(format!("{tag} is another variant than {old} ({vb:?} instead of {va:?})")));
                }
                (Some((a, _)), Some((b, _))) if b > a => {}
                (Some(_), Some(_)) => return Err(fail(format!("{tag} is not a newer version than {old}"))),
                _ => return Err(fail(format!("{old:?} and {tag:?} are not both versions (like 1.4.3) to compare"))),
            }
        }
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::playbook::PatchMode;

    const MI: f64 = 1048576.0;

    fn playbook(value: &str, max_factor: Option<f64>) -> ValidPlaybook {
        ValidPlaybook {
            target_kinds: vec![],
            reads: vec![],
            diagnoses_only: false,
            requires: vec![],
            patch_mode: PatchMode::Template,
            patch_type: PatchType::Strategic,
            template: Some(
                "spec:\n  template:\n    spec:\n      containers:\n        - name: \"{{ labels.container }}\"\n          resources:\n            limits: {memory: \"{{ params.memory }}\"}\n            requests: {memory: \"{{ params.memory }}\"}\n".into(),
            ),
            parameters: vec![ValidParameter {
                name: "memory".into(),
                type_: ParameterType::Quantity,
                value: value.into(),
                min: Some(64.0 * MI),
                max: Some(1024.0 * MI),
                max_factor,
                allowed: vec![],
                newer: false,
                delegate: false,
            }],
            allowed_paths: vec![
                "spec.template.spec.containers[*].resources.limits.memory".into(),
                "spec.template.spec.containers[*].resources.requests.memory".into(),
            ],
            verify: None,
            rollback_on_failure: true,
            agent_instructions: None,
            rollout: Default::default(),
            values: vec![],
        }
    }

    fn scope(container: &str) -> Scope {
        let object = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "resources": {"limits": {"memory": "128Mi"}, "requests": {"memory": "128Mi"}}}]}}}});
        Scope {
            target: BTreeMap::from([("name".into(), "checkout".into()), ("kind".into(), "Deployment".into())]),
            labels: BTreeMap::from([("container".into(), container.into())]),
            reads: BTreeMap::from([("usage".into(), json!({"value": 200.0 * MI})), ("target".into(), object.clone())]),
            object,
            now: None,
            promql: BTreeMap::from([(
                "pods".into(),
                "max by (namespace, pod) (kube_pod_owner{owner_name=\"x\"})".into(),
            )]),
        }
    }

    #[test]
    fn reflexs_own_promql_is_pasted_and_a_label_still_cannot_inject_any() {
        let s = scope("app");
        let q = substitute(
            "max(x{container=\"{{ labels.container }}\"} * on (namespace, pod) group_left () {{ promql.pods }})",
            &|n| s.lookup(n),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(q.ends_with("group_left () max by (namespace, pod) (kube_pod_owner{owner_name=\"x\"}))"), "{q}");
        let hostile = scope("app\"} or vector(1) #");
        let err = substitute("x{container=\"{{ labels.container }}\"}", &|n| hostile.lookup(n)).unwrap_err();
        assert!(matches!(err, RenderError::Unsafe { .. }), "{err}");
    }

    fn image_playbook(value: &str, newer: bool) -> ValidPlaybook {
        let mut pb = playbook("1", None);
        pb.template = Some(
            "spec:\n  template:\n    spec:\n      containers:\n        - name: \"{{ labels.container }}\"\n          image: \"{{ params.image }}\"\n".into(),
        );
        pb.parameters = vec![ValidParameter {
            name: "image".into(),
            type_: ParameterType::Image,
            value: value.into(),
            min: None,
            max: None,
            max_factor: None,
            allowed: vec![],
            newer,
            delegate: true,
        }];
        pb.allowed_paths = vec!["spec.template.spec.containers[*].image".into()];
        pb
    }

    fn image_scope(fixed: &str) -> Scope {
        let object = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "registry:5000/shop/checkout:1.4.2"}]}}}});
        Scope {
            labels: BTreeMap::from([("container".into(), "app".into()), ("fixed".into(), fixed.into())]),
            reads: BTreeMap::from([(
                "history".into(),
                json!({"revisions": [{"current": true, "images": ["registry:5000/shop/checkout:1.4.2"]},
                    {"current": false, "images": ["registry:5000/shop/checkout:1.3.9"]}]}),
            )]),
            object,
            ..Scope::default()
        }
    }

    #[test]
    fn image_parameters_stay_in_their_repository_and_can_require_a_newer_version() {
        let image =
            |pb: &ValidPlaybook, fixed: &str| render(pb, &image_scope(fixed)).map(|r| r.params["image"].clone());
        let bump = image_playbook("labels.fixed", true);
        assert_eq!(
            image(&bump, "1.4.3").unwrap(),
            "registry:5000/shop/checkout:1.4.3",
            "a bare tag joins the repository"
        );
        assert_eq!(image(&bump, "v1.10.0").unwrap(), "registry:5000/shop/checkout:v1.10.0");
        assert_eq!(image(&bump, "registry:5000/shop/checkout:2.0").unwrap(), "registry:5000/shop/checkout:2.0");
        let err = |pb: &ValidPlaybook, fixed: &str| image(pb, fixed).unwrap_err().to_string();
        assert!(err(&bump, "1.4.1").contains("1.4.1 is not a newer version than 1.4.2"));
        assert!(err(&bump, "1.4.2").contains("what already runs"));
        assert!(err(&bump, "1.4.2.0").contains("not a newer version"), "trailing zeros are the same version");
        assert!(err(&bump, "latest").contains("not both versions"));
        assert!(err(&bump, "1.4.3-debug").contains("another variant"));
        // A digest would pin any build, whatever its tag says.
        let digest = format!("registry:5000/shop/checkout:9.9.9@sha256:{}", "a".repeat(64));
        assert!(err(&bump, &digest).contains("pins a digest"));
        assert!(err(&bump, "registry:5000/Shop/checkout:1.5").contains("not an image tag"));
        assert!(err(&bump, "evil.example.com/shop/checkout:9.9").contains("not in the repository"));
        assert!(err(&bump, "-x").contains("not an image tag"));
        // Rollback: the previous revision's image from the history, older and allowed.
        let back = image_playbook("reads.history.revisions[current=false].images[0]", false);
        let by_name = image_playbook("reads.history.previous.containers[name={{ labels.container }}].image", false);
        let mut prev = image_scope("");
        prev.reads.insert(
            "history".into(),
            json!({"previous": {"containers": [{"name": "sidecar", "image": "registry:5000/shop/proxy:1"},
                {"name": "app", "image": "registry:5000/shop/checkout:1.3.8"}]}}),
        );
        assert_eq!(render(&by_name, &prev).unwrap().params["image"], "registry:5000/shop/checkout:1.3.8");
        assert_eq!(image(&back, "").unwrap(), "registry:5000/shop/checkout:1.3.9");
        let mut one = image_scope("");
        one.reads.insert("history".into(), json!({"revisions": [{"current": true, "images": ["a"]}]}));
        assert!(render(&back, &one).unwrap_err().to_string().contains("matches nothing"));
    }

    #[test]
    fn agent_choices_for_delegated_parameters_must_already_be_in_bounds() {
        let mut pb = playbook("reads.usage.value", Some(2.0));
        pb.parameters[0].delegate = true;
        let s = scope("app");
        let with = |pb: &ValidPlaybook, v: Value| render_with(pb, &s, &Choices::from([("memory".to_owned(), v)]));
        assert_eq!(with(&pb, json!("192Mi")).unwrap().params["memory"], "192Mi");
        let e = with(&pb, json!("512Mi")).unwrap_err().to_string();
        assert!(e.contains("outside the playbook's bounds") && e.contains("2x the current 128Mi"), "{e}");
        assert!(with(&pb, json!("32Mi")).unwrap_err().to_string().contains("minimum"));
        assert!(with(&pb, json!(true)).unwrap_err().to_string().contains("not a quantity"));
        let other = render_with(&pb, &s, &Choices::from([("replicas".to_owned(), json!(3))]));
        assert!(other.unwrap_err().to_string().contains("not a parameter the playbook delegates"));
        // Not delegated: a choice is refused even when in bounds.
        pb.parameters[0].delegate = false;
        assert!(with(&pb, json!("192Mi")).is_err());
        // The playbook's own value, clamped with a note as before.
        assert_eq!(render(&pb, &s).unwrap().params["memory"], "200Mi");
        let bump = image_playbook("labels.fixed", true);
        let chosen = render_with(&bump, &image_scope("1.4.3"), &Choices::from([("image".to_owned(), json!("1.5.0"))]));
        assert_eq!(chosen.unwrap().params["image"], "registry:5000/shop/checkout:1.5.0");
    }

    #[test]
    fn configmap_data_stays_text_and_keys_come_only_from_inert_values() {
        let mut pb = playbook("reads.target.data.POOL * 2", None);
        pb.parameters[0].type_ = ParameterType::Integer;
        pb.parameters[0].min = Some(1.0);
        pb.parameters[0].max = Some(100.0);
        pb.patch_type = PatchType::Merge;
        pb.template = Some("data:\n  \"{{ labels.key }}\": \"{{ params.memory }}\"\n".into());
        pb.allowed_paths = vec!["data".into()];
        let object = json!({"data": {"POOL": "20", "LOG": "info"}});
        let mut s = Scope {
            labels: BTreeMap::from([("key".into(), "POOL".into())]),
            reads: BTreeMap::from([("target".into(), object.clone())]),
            object,
            ..Scope::default()
        };
        assert_eq!(render(&pb, &s).unwrap().patch, json!({"data": {"POOL": "40"}}));
        for bad in ["a b", "POOL.x", "../x", ""] {
            s.labels.insert("key".into(), bad.into());
            assert!(matches!(render(&pb, &s), Err(RenderError::Key { .. })), "{bad:?}");
        }
        // A key from a placeholder cannot repeat a literal one.
        pb.template = Some("data:\n  POOL: \"1\"\n  \"{{ labels.key }}\": \"{{ params.memory }}\"\n".into());
        s.labels.insert("key".into(), "POOL".into());
        assert!(matches!(render(&pb, &s), Err(RenderError::Key { .. })));
        pb.template = Some("data:\n  \"{{ params.memory }}\": \"1\"\n".into());
        s.labels.insert("key".into(), "POOL".into());
        assert!(render(&pb, &s).unwrap_err().to_string().contains("cannot name a field"));
    }

    #[test]
    fn now_is_a_placeholder() {
        let mut pb = playbook("1", None);
        pb.parameters.clear();
        pb.template = Some("spec:\n  template:\n    metadata:\n      annotations:\n        kubectl.kubernetes.io/restartedAt: \"{{ now }}\"\n".into());
        pb.allowed_paths = vec!["spec.template.metadata.annotations.kubectl.kubernetes.io/restartedAt".into()];
        let s = Scope { now: Some("2026-11-21T23:00:00Z".into()), ..scope("app") };
        let r = render(&pb, &s).unwrap();
        assert_eq!(
            r.patch["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"],
            "2026-11-21T23:00:00Z"
        );
        assert!(matches!(render(&pb, &Scope { now: None, ..s }), Err(RenderError::Unknown(_))));
    }

    #[test]
    fn renders_a_bounded_patch() {
        let r = render(&playbook("max(reads.usage.value * 1.25, reads.target.spec.template.spec.containers[name={{ labels.container }}].resources.limits.memory * 1.5)", Some(3.0)), &scope("app")).unwrap();
        assert_eq!(r.params["memory"], "250Mi");
        assert_eq!(r.patch["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"], "250Mi");
        assert_eq!(r.patch["spec"]["template"]["spec"]["containers"][0]["name"], "app");
        assert!(r.notes.is_empty());
    }

    #[test]
    fn factor_and_ceiling_bound_the_value() {
        let r = render(&playbook("reads.usage.value * 4", Some(2.0)), &scope("app")).unwrap();
        assert_eq!(r.params["memory"], "256Mi", "{:?}", r.notes);
        assert!(r.notes.iter().any(|n| n.contains("capped at 2x the current 128Mi")));
        let r = render(&playbook("'4Gi'", None), &scope("app")).unwrap();
        assert_eq!(r.params["memory"], "1Gi");
        assert!(r.notes[0].contains("ceiling"));
    }

    #[test]
    fn values_cannot_change_the_patch_structure() {
        // A label value full of YAML stays one string (here it names a container that does
        // not exist, so adding it must be allowed for the patch to render at all).
        let evil = "app\"}]\nspec: {hostNetwork: true}";
        assert!(matches!(render(&playbook("'128Mi'", None), &scope(evil)), Err(RenderError::NotAllowed(_))));
        let mut pb = playbook("'128Mi'", None);
        pb.allowed_paths.push("spec.template.spec.containers[*]".into());
        let r = render(&pb, &scope(evil)).unwrap();
        let name = r.patch["spec"]["template"]["spec"]["containers"][0]["name"].as_str().unwrap();
        assert!(name.contains("hostNetwork"));
        assert!(r.patch["spec"].get("hostNetwork").is_none());
    }

    #[test]
    fn paths_outside_allowed_paths_are_refused() {
        let mut pb = playbook("'128Mi'", None);
        pb.allowed_paths = vec!["spec.template.spec.containers[*].resources.limits.memory".into()];
        assert_eq!(
            render(&pb, &scope("app")).unwrap_err(),
            RenderError::NotAllowed("spec.template.spec.containers[*].resources.requests.memory".into())
        );
    }

    #[test]
    fn label_values_cannot_inject_into_expressions_or_queries() {
        let pb = playbook(
            "reads.target.spec.template.spec.containers[name={{ labels.container }}].resources.limits.memory",
            None,
        );
        let err = render(&pb, &scope("app]*(\"")).unwrap_err();
        assert!(matches!(err, RenderError::Unsafe { .. }), "{err}");
        let q = substitute("up{container=\"{{ labels.c }}\"}", &|_| Some("x\"} or vector(1) or {a=\"".into()));
        assert!(matches!(q, Err(RenderError::Unsafe { .. })));
        assert_eq!(
            substitute("up{pod=~\"{{ t }}-.*\"}", &|_| Some("checkout".into())).unwrap(),
            "up{pod=~\"checkout-.*\"}"
        );
    }

    #[test]
    fn factor_bounds_fail_closed_and_rounding_respects_caps() {
        // 128Mi x 1.1 = 140.8Mi: written as 140Mi, not the 141Mi that would exceed the cap.
        let r = render(
            &playbook("reads.target.spec.template.spec.containers[name=app].resources.limits.memory * 1.1", Some(1.1)),
            &scope("app"),
        )
        .unwrap();
        assert_eq!(r.params["memory"], "140Mi");
        // No current value to be relative to: refuse rather than go unbounded.
        let mut s = scope("app");
        s.object = json!({"spec": {"template": {"spec": {"containers": [{"name": "app"}]}}}});
        let err = render(&playbook("'256Mi'", Some(2.0)), &s).unwrap_err();
        assert!(err.to_string().contains("needs the value it replaces"), "{err}");
    }

    #[test]
    fn adding_list_items_and_merge_patches_need_their_own_allowance() {
        // A label picking a container that does not exist would add one.
        let err = render(&playbook("'128Mi'", None), &scope("other")).unwrap_err();
        assert_eq!(err, RenderError::NotAllowed("spec.template.spec.containers[*]".into()));
        // A merge patch replaces lists whole: the list itself must be allowed.
        let mut pb = playbook("'128Mi'", None);
        pb.patch_type = PatchType::Merge;
        let err = render(&pb, &scope("app")).unwrap_err();
        assert_eq!(err, RenderError::NotAllowed("spec.template.spec.containers".into()));
    }

    #[test]
    fn quantities_format_exactly_or_round_up() {
        assert_eq!(format_quantity(192.0 * MI), "192Mi");
        assert_eq!(format_quantity(1024.0 * MI), "1Gi");
        assert_eq!(format_quantity(140.8 * MI), "141Mi");
        assert_eq!(format_quantity(0.5), "500m");
        assert_eq!(format_quantity(2.0), "2");
    }
}
