//! Object metadata as the API server reads and writes it, on untyped JSON objects.
//!
//! Contract: pure helpers over `serde_json::Value`; a missing or malformed `metadata` reads
//! as absent and is replaced on write.

use serde_json::{Map, Value, json};

use super::status::Cause;

/// The finalizer the CRD cleanup controller holds on a CRD being deleted.
pub const CRD_CLEANUP: &str = "customresourcecleanup.apiextensions.k8s.io";

/// RFC 3339 time, seconds precision, as Kubernetes writes `metav1.Time`.
pub fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub fn meta_str<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(key)?.as_str()
}

pub fn meta_mut(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    let m = obj.as_object_mut()?.entry("metadata").or_insert_with(|| json!({}));
    if !m.is_object() {
        *m = json!({});
    }
    m.as_object_mut()
}

pub fn set_meta(obj: &mut Value, key: &str, v: Value) {
    if let Some(m) = meta_mut(obj) {
        m.insert(key.into(), v);
    }
}

pub fn del_meta(obj: &mut Value, key: &str) {
    if let Some(m) = meta_mut(obj) {
        m.remove(key);
    }
}

pub fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_owned))
        .collect()
}

/// A field-level cause of an `Invalid` answer.
pub fn field_cause(field: &str, message: impl Into<String>) -> Cause {
    Cause { reason: "FieldValueInvalid".into(), message: message.into(), field: field.into() }
}
