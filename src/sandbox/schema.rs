//! Validation of custom objects against their CRD's structural schema, as the API server does
//! it on create, update and patch.
//!
//! Contract: [`admit`] applies schema defaults, prunes fields the schema does not declare
//! (unless `x-kubernetes-preserve-unknown-fields`), checks types, enums, required fields,
//! bounds and patterns, then evaluates the `x-kubernetes-validations` CEL rules (transition rules
//! see the old object). It returns the admitted object, or every violation at once. Unknown
//! fields are an error only under `fieldValidation=Strict`; otherwise they are dropped and
//! reported as warnings, like kube-apiserver.

use serde_json::{Map, Value};

use super::status::Cause;

/// `?fieldValidation=`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(s: Option<&str>) -> Result<Self, String> {
        match s {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(format!(
                "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
            )),
        }
    }
}

/// What admission concluded.
#[derive(Debug, Default)]
pub struct Admitted {
    pub object: Value,
    /// 422 causes.
    pub invalid: Vec<Cause>,
    /// Paths of undeclared fields that were dropped.
    pub unknown: Vec<String>,
}

fn cause(field: &str, message: String) -> Cause {
    Cause { reason: "FieldValueInvalid".into(), message, field: field.to_owned() }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Walk value and schema together: prune, then check.
fn walk(schema: &Value, value: &mut Value, path: &str, out: &mut Admitted) {
    let s = |k: &str| schema.get(k);
    if value.is_null() {
        if s("nullable").and_then(Value::as_bool) != Some(true) && !path.is_empty() {
            out.invalid.push(cause(
                path,
                format!(
                    "Invalid value: \"null\": {path} in body must be of type {}: \"null\"",
                    s("type").and_then(Value::as_str).unwrap_or("object")
                ),
            ));
        }
        return;
    }
    let int_or_string = s("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true);
    if let Some(want) = s("type").and_then(Value::as_str) {
        let got = type_name(value);
        let ok = got == want || (want == "number" && got == "integer");
        if !(ok || int_or_string && matches!(got, "integer" | "string")) {
            out.invalid.push(cause(
                path,
                format!("Invalid value: \"{got}\": {path} in body must be of type {want}: \"{got}\""),
            ));
            return;
        }
    }
    if let Some(allowed) = s("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let list = allowed.iter().map(Value::to_string).collect::<Vec<_>>().join(", ");
        out.invalid.push(cause(path, format!("Unsupported value: {value}: supported values: {list}")));
    }
    match value {
        Value::String(text) => {
            let len = text.chars().count() as u64;
            if let Some(max) = s("maxLength").and_then(Value::as_u64)
                && len > max
            {
                out.invalid.push(cause(path, format!("Too long: may not be more than {max} bytes")));
            }
            if let Some(min) = s("minLength").and_then(Value::as_u64)
                && len < min
            {
                out.invalid.push(cause(
                    path,
                    format!("Invalid value: {text:?}: {path} in body should be at least {min} chars long"),
                ));
            }
            if let Some(p) = s("pattern").and_then(Value::as_str)
                && regex::Regex::new(p).is_ok_and(|re| !re.is_match(text))
            {
                out.invalid.push(cause(path, format!("Invalid value: {text:?}: {path} in body should match '{p}'")));
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or_default();
            if let Some(min) = s("minimum").and_then(Value::as_f64)
                && x < min
            {
                out.invalid.push(cause(
                    path,
                    format!("Invalid value: {n}: {path} in body should be greater than or equal to {min}"),
                ));
            }
            if let Some(max) = s("maximum").and_then(Value::as_f64)
                && x > max
            {
                out.invalid.push(cause(
                    path,
                    format!("Invalid value: {n}: {path} in body should be less than or equal to {max}"),
                ));
            }
        }
        Value::Array(items) => {
            if let Some(max) = s("maxItems").and_then(Value::as_u64)
                && items.len() as u64 > max
            {
                out.invalid.push(cause(path, format!("Too many: {}: must have at most {max} items", items.len())));
            }
            if let Some(min) = s("minItems").and_then(Value::as_u64)
                && (items.len() as u64) < min
            {
                out.invalid.push(cause(
                    path,
                    format!("Invalid value: {}: {path} in body should have at least {min} items", items.len()),
                ));
            }
            if let Some(item_schema) = s("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(item_schema, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        Value::Object(map) => walk_object(schema, map, path, out),
        Value::Bool(_) | Value::Null => {}
    }
}

fn walk_object(schema: &Value, map: &mut Map<String, Value>, path: &str, out: &mut Admitted) {
    let preserve = schema.get("x-kubernetes-preserve-unknown-fields").and_then(Value::as_bool) == Some(true);
    let embedded = schema.get("x-kubernetes-embedded-resource").and_then(Value::as_bool) == Some(true);
    let props = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        let child = join(path, &key);
        // apiVersion/kind/metadata are always allowed at the root and in embedded resources.
        if (path.is_empty() || embedded) && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        let sub = props.and_then(|p| p.get(&key)).or(additional);
        match (sub, map.get_mut(&key)) {
            (Some(sub), Some(v)) => walk(sub, v, &child, out),
            (None, _) if preserve => {}
            (None, _) => {
                map.remove(&key);
                out.unknown.push(child);
            }
            (Some(_), None) => {}
        }
    }
    for req in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
        if !map.contains_key(req) {
            out.invalid.push(Cause {
                reason: "FieldValueRequired".into(),
                message: "Required value".into(),
                field: join(path, req),
            });
        }
    }
}

/// One CEL environment for every admission (building it registers every function).
static CEL: std::sync::LazyLock<kube::core::cel::Validator> = std::sync::LazyLock::new(kube::core::cel::Validator::new);

/// Admit `object` under `schema` (the version's `openAPIV3Schema`); `old` for updates.
/// `rules` are the schema's CEL rules compiled once ([`kube::core::cel::compile_schema`]).
pub fn admit(
    schema: &Value,
    rules: Option<&kube::core::cel::CompiledSchema>,
    object: &Value,
    old: Option<&Value>,
) -> Admitted {
    let mut out = Admitted { object: kube::core::cel::apply_defaults(schema, object), ..Admitted::default() };
    let mut obj = std::mem::take(&mut out.object);
    walk(schema, &mut obj, "", &mut out);
    let checked = match rules {
        Some(compiled) => CEL.validate_compiled(compiled, &obj, old),
        None => CEL.validate(schema, &obj, old),
    };
    if out.invalid.is_empty()
        && let Err(errors) = checked
    {
        for e in errors.into_vec() {
            let field = if e.field_path.is_empty() { "<root>".to_owned() } else { e.field_path.clone() };
            out.invalid.push(cause(&field, format!("Invalid value: \"object\": {}", e.message)));
        }
    }
    out.object = obj;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer", "minimum": 1, "maximum": 10},
                "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "name": {"type": "string", "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "name is immutable"}]}
            }},
            "status": {"type": "object", "properties": {"phase": {"type": "string"}}}
        }})
    }

    #[test]
    fn defaults_prunes_and_checks() {
        let obj = json!({"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "w"},
            "spec": {"size": 3, "extra": 1, "free": {"any": [1]}}});
        let a = admit(&schema(), None, &obj, None);
        assert!(a.invalid.is_empty(), "{:?}", a.invalid);
        assert_eq!(a.unknown, ["spec.extra"]);
        assert_eq!(a.object["spec"]["mode"], "a");
        assert_eq!(a.object["spec"]["free"]["any"], json!([1]));
        assert!(a.object["spec"].get("extra").is_none());
    }

    #[test]
    fn every_violation_is_reported_with_its_path() {
        let obj = json!({"spec": {"size": 11, "mode": "c", "free": "nope"}});
        let fields: Vec<String> = admit(&schema(), None, &obj, None).invalid.into_iter().map(|c| c.field).collect();
        assert_eq!(fields, ["spec.free", "spec.mode", "spec.size"]);
        let missing = admit(&schema(), None, &json!({"spec": {}}), None);
        assert_eq!(missing.invalid[0].field, "spec.size");
        assert_eq!(missing.invalid[0].reason, "FieldValueRequired");
    }

    #[test]
    fn transition_rules_see_the_old_object() {
        let old = json!({"spec": {"size": 1, "name": "x"}});
        let new = json!({"spec": {"size": 1, "name": "y"}});
        let a = admit(&schema(), None, &new, Some(&old));
        assert_eq!(a.invalid.len(), 1);
        assert!(a.invalid[0].message.contains("name is immutable"), "{:?}", a.invalid);
    }
}
