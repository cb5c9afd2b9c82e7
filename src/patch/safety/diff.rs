//! The leaf-by-leaf difference between two objects: list items matched by their merge keys.

use super::*;

/// Every leaf that differs between `before` and `after`. Lists Kubernetes merges by key
/// (containers by name, ports by containerPort, …) are matched item by item; other lists
/// are compared whole.
pub fn diff(before: &Value, after: &Value) -> Vec<Change> {
    let mut out = Vec::new();
    walk(Some(before), Some(after), &mut Vec::new(), &mut Vec::new(), &mut out);
    out
}

/// `path` holds the raw keys (for list types), `shown` the segments (list items as `[*]`).
pub(super) fn walk(
    before: Option<&Value>,
    after: Option<&Value>,
    path: &mut Vec<String>,
    shown: &mut Vec<String>,
    out: &mut Vec<Change>,
) {
    if before == after {
        return;
    }
    match (before, after) {
        (Some(Value::Object(b)), Some(Value::Object(a))) => {
            let keys: std::collections::BTreeSet<&String> = b.keys().chain(a.keys()).collect();
            for k in keys {
                path.push(k.clone());
                shown.push(k.clone());
                walk(b.get(k), a.get(k), path, shown, out);
                shown.pop();
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
                    out.push(Change::at(shown, before, after));
                    return;
                }
            };
            let none = Vec::new();
            let b = b.and_then(Value::as_array).unwrap_or(&none);
            let a = a.and_then(Value::as_array).unwrap_or(&none);
            let mut item = shown.clone();
            if let Some(last) = item.last_mut() {
                last.push_str("[*]");
            }
            let key_of = |item: &Value| -> Value {
                Value::Object(keys.iter().filter_map(|k| item.get(k).map(|v| (k.clone(), v.clone()))).collect())
            };
            for new in a {
                let probe = key_of(new);
                let old = b.iter().find(|o| same_key(o, &keys, &probe));
                walk_item(old, Some(new), &keys, path, &mut item, out);
            }
            for old in b {
                let probe = key_of(old);
                if !a.iter().any(|n| same_key(n, &keys, &probe)) {
                    walk_item(Some(old), None, &keys, path, &mut item, out);
                }
            }
            // Order is meaning too (init containers run in it; env entries expand `$(VAR)`s
            // defined before them): the items both sides hold, in a different order, are a
            // change of the list itself.
            let kept_before: Vec<Value> =
                b.iter().map(key_of).filter(|k| a.iter().any(|n| same_key(n, &keys, k))).collect();
            let kept_after: Vec<Value> =
                a.iter().map(key_of).filter(|k| b.iter().any(|o| same_key(o, &keys, k))).collect();
            let reordered = kept_before.len() == kept_after.len()
                && kept_before.iter().zip(&kept_after).any(|(x, y)| !same_key(x, &keys, y));
            if reordered {
                out.push(Change::at(shown, Some(&Value::Array(kept_before)), Some(&Value::Array(kept_after))));
            }
        }
        _ => out.push(Change::at(shown, before, after)),
    }
}

/// A keyed list item: its merge keys identify it and are not changes of their own, unless
/// the whole item appears (then they are new values like any other) or goes.
pub(super) fn walk_item(
    before: Option<&Value>,
    after: Option<&Value>,
    keys: &[String],
    path: &mut Vec<String>,
    shown: &mut Vec<String>,
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
        out.push(Change::at(shown, before, after));
    }
    if let (None, Some(added)) = (before, after) {
        for k in keys {
            if let Some(v) = added.get(k) {
                shown.push(k.clone());
                out.push(Change::at(shown, None, Some(v)));
                shown.pop();
            }
        }
    }
    walk(Some(&b), Some(&a), path, shown, out);
}

/// Every node inside a value with its path (object keys joined by `.`, list items as `[*]`).
pub(super) fn each_path(v: &Value, path: &mut String, visit: &mut dyn FnMut(&str, &Value)) {
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
