//! A `Playbook` spec validated: parameters with bounds, value rules, the rollout and waits.

use super::*;

/// A playbook parameter with bounds read.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidParameter {
    /// Name.
    pub name: String,
    /// Type.
    pub type_: ParameterType,
    /// Value expression.
    pub value: String,
    /// Lower bound in base units.
    pub min: Option<f64>,
    /// Upper bound (ceiling) in base units.
    pub max: Option<f64>,
    /// Largest ratio of new to current value.
    pub max_factor: Option<f64>,
    /// Allowed strings.
    pub allowed: Vec<String>,
    /// An image parameter's tag must be a later version.
    pub newer: bool,
    /// The LLM agent chooses the value in the LLM modes.
    pub delegate: bool,
}

/// A playbook that passed validation.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidPlaybook {
    /// Kinds it can fix.
    pub target_kinds: Vec<TargetKind>,
    /// Read steps (names unique).
    pub reads: Vec<crate::api::playbook::ReadStep>,
    /// Template or agent.
    pub patch_mode: PatchMode,
    /// Patch format.
    pub patch_type: PatchType,
    /// The template, in template mode.
    pub template: Option<String>,
    /// Parameters.
    pub parameters: Vec<ValidParameter>,
    /// Field paths the patch may touch.
    pub allowed_paths: Vec<String>,
    /// Default verification.
    pub verify: Option<ValidVerify>,
    /// Restore on failed verification.
    pub rollback_on_failure: bool,
    /// The LLM agent's instructions, when the playbook gives them.
    pub agent_instructions: Option<String>,
    /// What a deployed change waits for beyond its target's own rollout.
    pub rollout: ValidRollout,
    /// Constraints on new values by exact field path (`patch.values`).
    pub values: Vec<(String, ValueRule)>,
    /// No patch: the playbook's reads are a diagnosis, and it never proposes.
    pub diagnoses_only: bool,
    /// Reads that must find something for the playbook to apply.
    pub requires: Vec<crate::api::playbook::Requirement>,
}

/// A constraint on a field's new value (from a playbook's `patch.values`, or derived from
/// its template).
#[derive(Clone, Debug, PartialEq)]
pub enum ValueRule {
    /// One of these texts.
    OneOf(Vec<String>),
    /// Text matching this regular expression, whole.
    Pattern(String),
    /// A number (or quantity) within these bounds, in base units.
    Range {
        /// Lower bound.
        min: Option<f64>,
        /// Upper bound.
        max: Option<f64>,
    },
}

impl fmt::Display for ValueRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OneOf(allowed) => write!(f, "one of {allowed:?}"),
            Self::Pattern(p) => write!(f, "text matching /{p}/"),
            Self::Range { min, max } => match (min, max) {
                (Some(lo), Some(hi)) => write!(f, "a number from {lo} to {hi}"),
                (Some(lo), None) => write!(f, "a number of at least {lo}"),
                (None, Some(hi)) => write!(f, "a number of at most {hi}"),
                (None, None) => write!(f, "a number"),
            },
        }
    }
}

/// What a deployed change waits for beyond its target's own rollout, validated.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ValidRollout {
    /// Workloads that must have rolled out.
    pub wait_for: Vec<ValidWait>,
    /// Least time from the apply (zero when the playbook sets none).
    pub settle: Duration,
}

/// One workload a change waits for.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidWait {
    /// Deployment, StatefulSet or DaemonSet.
    pub kind: TargetKind,
    /// Its name, from the alert's labels.
    pub name: NameTemplate,
    /// Every Pod it runs must have started after the change.
    pub new_pods: bool,
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn is_field_path(path: &str) -> bool {
    !path.is_empty()
        && path.split('.').all(|seg| {
            let (name, index) = match seg.split_once('[') {
                Some((n, rest)) => (n, Some(rest)),
                None => (seg, None),
            };
            // `/` for annotation keys such as kubectl.kubernetes.io/restartedAt.
            let name_ok =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '/'));
            let index_ok = index.is_none_or(|i| {
                i.strip_suffix(']').is_some_and(|inner| {
                    inner == "*" || (!inner.is_empty() && inner.chars().all(|c| c.is_ascii_digit()))
                })
            });
            name_ok && index_ok
        })
}

/// Placeholders `{{ params.NAME }}` found in a template.
fn template_params(template: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else { break };
        if let Some(name) = after[..close].trim().strip_prefix("params.") {
            out.push(name.trim().to_owned());
        }
        rest = &after[close + 2..];
    }
    out
}

fn bound(c: &mut Collector, field: &str, type_: ParameterType, raw: Option<&String>) -> Option<f64> {
    let raw = raw?;
    let parsed = match type_ {
        ParameterType::Integer => raw.parse::<i64>().ok().map(|v| v as f64),
        ParameterType::Number => raw.parse::<f64>().ok().filter(|v| v.is_finite()),
        ParameterType::Quantity => parse_quantity(raw).ok(),
        ParameterType::String => {
            c.push(field, "a string parameter takes an allowed list, not min/max");
            return None;
        }
        ParameterType::Image => {
            c.push(field, "an image parameter is bounded to its repository (and `newer`), not min/max");
            return None;
        }
    };
    if parsed.is_none() {
        let kind = match type_ {
            ParameterType::Integer => "an integer",
            ParameterType::Number => "a number",
            _ => "a quantity such as 512Mi",
        };
        c.push(field, format!("{raw:?} is not {kind}"));
    }
    parsed
}

impl ValidPlaybook {
    /// Validates a playbook spec.
    ///
    /// # Errors
    /// [`ValidationErrors`] listing every bad field.
    pub fn from_spec(spec: &PlaybookSpec) -> Result<Self, ValidationErrors> {
        let mut c = Collector::default();
        if spec.target_kinds.is_empty() {
            c.push("spec.targetKinds", "list at least one kind");
        }
        let mut kinds = HashSet::new();
        for (i, k) in spec.target_kinds.iter().enumerate() {
            if !kinds.insert(*k) {
                c.push(format!("spec.targetKinds[{i}]"), format!("{k} is listed twice"));
            }
        }
        let mut read_names = HashSet::new();
        for (i, r) in spec.reads.iter().enumerate() {
            if !is_identifier(&r.name) {
                c.push(
                    format!("spec.reads[{i}].name"),
                    format!("{:?} must start with a letter and hold letters, digits, '_' or '-'", r.name),
                );
            } else if !read_names.insert(r.name.as_str()) {
                c.push(format!("spec.reads[{i}].name"), format!("{:?} is used twice", r.name));
            }
            if r.tool.trim().is_empty() {
                c.push(format!("spec.reads[{i}].tool"), "must name a tool");
            }
        }

        for (i, r) in spec.requires.iter().enumerate() {
            if !read_names.contains(r.read.as_str()) {
                c.push(format!("spec.requires[{i}].read"), format!("{:?} is not one of the playbook's reads", r.read));
            }
            if r.otherwise.trim().is_empty() {
                c.push(format!("spec.requires[{i}].otherwise"), "say what it means when the read finds nothing");
            }
        }
        let diagnoses_only = spec.patch.is_none();
        if diagnoses_only && spec.reads.is_empty() {
            c.push("spec.reads", "a playbook without a patch only diagnoses: list the reads that are its findings");
        }
        let no_patch = crate::api::playbook::PatchSpec {
            mode: PatchMode::Template,
            patch_type: PatchType::default(),
            template: None,
            parameters: Vec::new(),
            allowed_paths: Vec::new(),
            values: Vec::new(),
        };
        let p = spec.patch.as_ref().unwrap_or(&no_patch);
        let mut params = Vec::new();
        let mut param_names = HashSet::new();
        for (i, param) in p.parameters.iter().enumerate() {
            let base = format!("spec.patch.parameters[{i}]");
            if !is_identifier(&param.name) {
                c.push(
                    format!("{base}.name"),
                    format!("{:?} must start with a letter and hold letters, digits, '_' or '-'", param.name),
                );
            } else if !param_names.insert(param.name.clone()) {
                c.push(format!("{base}.name"), format!("{:?} is used twice", param.name));
            }
            let min = bound(&mut c, &format!("{base}.min"), param.type_, param.min.as_ref());
            let max = bound(&mut c, &format!("{base}.max"), param.type_, param.max.as_ref());
            if let (Some(lo), Some(hi)) = (min, max)
                && lo > hi
            {
                c.push(
                    format!("{base}.min"),
                    format!(
                        "{:?} is above max {:?}",
                        param.min.as_deref().unwrap_or(""),
                        param.max.as_deref().unwrap_or("")
                    ),
                );
            }
            if let Some(f) = param.max_factor
                && !(f.is_finite() && f >= 1.0)
            {
                c.push(format!("{base}.maxFactor"), "must be a number of at least 1");
            }
            let allowed = param.allowed.clone().unwrap_or_default();
            if param.type_ == ParameterType::String && allowed.is_empty() {
                c.push(format!("{base}.allowed"), "a string parameter needs a non-empty allowed list");
            }
            let numeric = !matches!(param.type_, ParameterType::String | ParameterType::Image);
            if numeric && max.is_none() && param.max_factor.is_none() {
                c.push(format!("{base}.max"), "a numeric parameter needs a ceiling: set max or maxFactor");
            }
            if param.type_ == ParameterType::Image {
                if param.max_factor.is_some() {
                    c.push(format!("{base}.maxFactor"), "an image parameter has no factor");
                }
                if param.allowed.is_some() {
                    c.push(format!("{base}.allowed"), "an image parameter takes no allowed list");
                }
            } else if param.newer.is_some() {
                c.push(format!("{base}.newer"), "only an image parameter can require a newer version");
            }
            params.push(ValidParameter {
                name: param.name.clone(),
                type_: param.type_,
                value: param.value.clone(),
                min,
                max,
                max_factor: param.max_factor,
                allowed,
                newer: param.newer.unwrap_or(false),
                delegate: param.delegate.unwrap_or(false),
            });
        }
        match (p.mode, &p.template) {
            _ if diagnoses_only => {}
            (PatchMode::Template, None) => c.push("spec.patch.template", "required when patch.mode is template"),
            (PatchMode::Template, Some(t)) => {
                for name in template_params(t) {
                    if !param_names.contains(&name) {
                        c.push(
                            "spec.patch.template",
                            format!("uses {{{{ params.{name} }}}} but no parameter {name:?} is declared"),
                        );
                    }
                }
            }
            (PatchMode::Agent, _) => {}
        }
        if p.allowed_paths.is_empty() && !diagnoses_only {
            c.push("spec.patch.allowedPaths", "list the field paths the patch may touch");
        }
        for (i, path) in p.allowed_paths.iter().enumerate() {
            if !is_field_path(path) {
                c.push(
                    format!("spec.patch.allowedPaths[{i}]"),
                    format!(
                        "{path:?} is not a field path like spec.template.spec.containers[*].resources.limits.memory"
                    ),
                );
            }
        }
        let verify = spec.verify.as_ref().map(|v| verify(&mut c, "spec.verify", v));
        let rollout = spec.rollout.as_ref().map(|r| rollout(&mut c, r)).unwrap_or_default();
        let values =
            p.values.iter().enumerate().filter_map(|(i, v)| value_rule(&mut c, i, v, &p.allowed_paths)).collect();
        c.finish(Self {
            target_kinds: spec.target_kinds.clone(),
            reads: spec.reads.clone(),
            patch_mode: p.mode,
            patch_type: p.patch_type,
            template: p.template.clone(),
            parameters: params,
            allowed_paths: p.allowed_paths.clone(),
            verify,
            rollback_on_failure: spec.rollback.on_verification_failure,
            agent_instructions: spec.agent_instructions.clone(),
            rollout,
            values,
            diagnoses_only,
            requires: spec.requires.clone(),
        })
    }
}

/// One `patch.values` entry: a field path the playbook allows, and exactly one constraint.
fn value_rule(c: &mut Collector, i: usize, spec: &ValueSpec, allowed: &[String]) -> Option<(String, ValueRule)> {
    let field = format!("spec.patch.values[{i}]");
    if !is_field_path(&spec.path) {
        c.push(format!("{field}.path"), format!("{:?} is not a field path like data.POOL_SIZE", spec.path));
        return None;
    }
    if !allowed
        .iter()
        .any(|a| spec.path == *a || spec.path.starts_with(&format!("{a}.")) || spec.path.starts_with(&format!("{a}[")))
    {
        c.push(format!("{field}.path"), format!("{:?} is not under any of patch.allowedPaths", spec.path));
    }
    let range = spec.min.is_some() || spec.max.is_some();
    let kinds = usize::from(spec.allowed.is_some()) + usize::from(spec.pattern.is_some()) + usize::from(range);
    if kinds != 1 {
        c.push(field, "give exactly one of allowed, pattern, or min/max");
        return None;
    }
    let bound = |c: &mut Collector, name: &str, raw: &Option<String>| -> Option<f64> {
        let raw = raw.as_ref()?;
        let parsed = parse_quantity(raw).ok();
        if parsed.is_none() {
            c.push(format!("{field}.{name}"), format!("{raw:?} is not a number or a quantity such as 512Mi"));
        }
        parsed
    };
    if let Some(allowed) = &spec.allowed {
        if allowed.is_empty() {
            c.push(format!("{field}.allowed"), "list at least one value");
        }
        return Some((spec.path.clone(), ValueRule::OneOf(allowed.clone())));
    }
    if let Some(pattern) = &spec.pattern {
        if let Err(e) = regex::Regex::new(&format!("^(?:{pattern})$")) {
            c.push(format!("{field}.pattern"), format!("not a regular expression: {e}"));
        }
        return Some((spec.path.clone(), ValueRule::Pattern(pattern.clone())));
    }
    let (min, max) = (bound(c, "min", &spec.min), bound(c, "max", &spec.max));
    if let (Some(lo), Some(hi)) = (min, max)
        && lo > hi
    {
        c.push(format!("{field}.min"), "is above max");
    }
    Some((spec.path.clone(), ValueRule::Range { min, max }))
}

fn rollout(c: &mut Collector, spec: &PlaybookRollout) -> ValidRollout {
    let mut wait_for = Vec::new();
    for (i, w) in spec.wait_for.iter().enumerate() {
        let field = format!("spec.rollout.waitFor[{i}]");
        if !matches!(w.kind, TargetKind::Deployment | TargetKind::StatefulSet | TargetKind::DaemonSet) {
            c.push(
                format!("{field}.kind"),
                format!("{} rolls nothing out: wait for a Deployment, StatefulSet or DaemonSet", w.kind),
            );
        }
        match NameTemplate::parse(&w.name) {
            Ok(name) => wait_for.push(ValidWait { kind: w.kind, name, new_pods: w.new_pods }),
            Err(e) => c.push(format!("{field}.name"), e.to_string()),
        }
    }
    let settle = spec.settle.as_ref().map_or(Duration::ZERO, |d| c.duration("spec.rollout.settle", d));
    ValidRollout { wait_for, settle }
}
