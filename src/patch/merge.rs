//! List semantics and the two merge algorithms that depend on them: strategic merge patch
//! (built-in kinds only, as in Kubernetes) and the structural merge server-side apply uses.
//!
//! Contract: [`list_type`] says how a list at a field path merges — `Map` (items keyed, e.g.
//! containers by `name`), `Set` (primitive union, e.g. finalizers) or `Atomic` (replaced whole).
//! Built-in kinds use the patch-merge keys Kubernetes declares on its Go types; custom kinds use
//! `x-kubernetes-list-type` / `x-kubernetes-list-map-keys` from their schema, defaulting to
//! atomic. [`strategic_merge`] understands the `$patch`, `$retainKeys`,
//! `$deleteFromPrimitiveList/` and `$setElementOrder/` directives kubectl sends, and keys
//! lists by Kubernetes' `patchMergeKey` (one field for container ports, service ports and
//! topology spread constraints, where server-side apply keys by two).

use serde_json::{Map, Value};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListType {
    Atomic,
    Set,
    Map(Vec<String>),
}

/// Where list semantics come from: the built-in table, or a custom kind's schema.
#[derive(Clone, Copy, Debug)]
pub enum Lists<'a> {
    Builtin,
    Schema(&'a Value),
}

fn map(keys: &[&str]) -> ListType {
    ListType::Map(keys.iter().map(|k| (*k).to_owned()).collect())
}

fn builtin_list_type(path: &[&str]) -> ListType {
    let last = path.last().copied().unwrap_or_default();
    let parent = path.len().checked_sub(2).and_then(|i| path.get(i)).copied().unwrap_or_default();
    match last {
        "finalizers" if path.len() <= 2 => ListType::Set,
        "ownerReferences" => map(&["uid"]),
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims" => map(&["name"]),
        "hostAliases" => map(&["ip"]),
        "volumeMounts" => map(&["mountPath"]),
        "volumeDevices" => map(&["devicePath"]),
        "ports" if parent.ends_with("ontainers") => map(&["containerPort", "protocol"]),
        "ports" => map(&["port", "protocol"]),
        "conditions" => map(&["type"]),
        "topologySpreadConstraints" => map(&["topologyKey", "whenUnsatisfiable"]),
        _ => ListType::Atomic,
    }
}

/// The list type a strategic merge patch uses at `path`: Kubernetes' `patchMergeKey`, which
/// for a few lists is one field where server-side apply keys by two — container ports by
/// `containerPort` alone (so a patch cannot add the same port for another protocol), service
/// ports by `port`, topology spread constraints by `topologyKey`.
fn patch_list_type(path: &[&str]) -> ListType {
    let last = path.last().copied().unwrap_or_default();
    let parent = path.len().checked_sub(2).and_then(|i| path.get(i)).copied().unwrap_or_default();
    match last {
        "ports" if parent.ends_with("ontainers") => map(&["containerPort"]),
        "ports" => map(&["port"]),
        "topologySpreadConstraints" => map(&["topologyKey"]),
        _ => builtin_list_type(path),
    }
}

/// Orders `merged` (the list at a field after the patch) as `$setElementOrder/<field>` asks,
/// as Kubernetes does: the items the order names in its order, the server's other items in
/// theirs, the two interleaved by where they stood on the server (an item new with the patch
/// before a server item).
fn set_element_order(merged: Vec<Value>, order: &[Value], server: &[Value], keys: Option<&[String]>) -> Vec<Value> {
    let same = |a: &Value, b: &Value| match keys {
        Some(keys) => same_key(a, keys, b),
        None => a == b,
    };
    let at = |list: &[Value], item: &Value| list.iter().position(|x| same(x, item));
    let (mut named, mut others): (Vec<Value>, Vec<Value>) = merged.into_iter().partition(|m| at(order, m).is_some());
    named.sort_by_key(|m| at(order, m));
    others.sort_by_key(|m| at(server, m));
    let mut out = Vec::with_capacity(named.len() + others.len());
    let (mut named, mut others) = (named.into_iter().peekable(), others.into_iter().peekable());
    loop {
        match (named.peek(), others.peek()) {
            (Some(n), Some(o)) => {
                let first_named = match (at(server, n), at(server, o)) {
                    (Some(a), Some(b)) => a < b,
                    _ => true,
                };
                out.extend(if first_named { named.next() } else { others.next() });
            }
            (Some(_), None) => out.extend(named.next()),
            (None, Some(_)) => out.extend(others.next()),
            (None, None) => return out,
        }
    }
}

/// The schema node at a field path (array items are descended through implicitly).
fn schema_at<'a>(schema: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut node = schema;
    for seg in path {
        while node.get("type").and_then(Value::as_str) == Some("array") {
            node = node.get("items")?;
        }
        node = node.get("properties").and_then(|p| p.get(*seg)).or_else(|| node.get("additionalProperties"))?;
    }
    Some(node)
}

/// How the list at `path` (field names from the object root) merges.
pub fn list_type(lists: Lists<'_>, path: &[&str]) -> ListType {
    if path.first() == Some(&"metadata") {
        return builtin_list_type(path);
    }
    match lists {
        Lists::Builtin => builtin_list_type(path),
        Lists::Schema(schema) => {
            let Some(node) = schema_at(schema, path) else { return ListType::Atomic };
            match node.get("x-kubernetes-list-type").and_then(Value::as_str) {
                Some("set") => ListType::Set,
                Some("map") => ListType::Map(
                    node.get("x-kubernetes-list-map-keys")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|k| k.as_str().map(str::to_owned))
                        .collect(),
                ),
                _ => ListType::Atomic,
            }
        }
    }
}

/// Does list item `item` carry the same key as `key` (an object of key fields)?
pub fn same_key(item: &Value, keys: &[String], probe: &Value) -> bool {
    keys.iter().all(|k| {
        let a = item.get(k);
        let b = probe.get(k);
        // `protocol` defaults to TCP when absent, as in Kubernetes.
        let dflt = |v: Option<&Value>| match (k.as_str(), v) {
            ("protocol", None) => Some(Value::String("TCP".into())),
            (_, v) => v.cloned(),
        };
        dflt(a) == dflt(b)
    })
}

/// Strategic merge `patch` into `original` (built-in kinds).
pub fn strategic_merge(original: &Value, patch: &Value) -> Result<Value, String> {
    let mut path = Vec::new();
    merge_value(Some(original), patch, &mut path).map(|v| v.unwrap_or(Value::Null))
}

/// The merge server-side apply uses: like a strategic merge without directives.
pub fn structural_merge(original: &Value, applied: &Value, lists: Lists<'_>) -> Value {
    let mut path = Vec::new();
    apply_value(original, applied, &mut path, lists)
}

fn apply_value(original: &Value, applied: &Value, path: &mut Vec<String>, lists: Lists<'_>) -> Value {
    match (original, applied) {
        (Value::Object(o), Value::Object(a)) => {
            let mut out = o.clone();
            for (k, v) in a {
                path.push(k.clone());
                let merged = match o.get(k) {
                    Some(ov) => apply_value(ov, v, path, lists),
                    None => v.clone(),
                };
                path.pop();
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(o), Value::Array(a)) => {
            let segs: Vec<&str> = path.iter().map(String::as_str).collect();
            match list_type(lists, &segs) {
                ListType::Atomic => applied.clone(),
                ListType::Set => {
                    let mut out = o.clone();
                    for v in a {
                        if !out.contains(v) {
                            out.push(v.clone());
                        }
                    }
                    Value::Array(out)
                }
                ListType::Map(keys) => {
                    let mut out = o.clone();
                    for item in a {
                        match out.iter_mut().find(|x| same_key(x, &keys, item)) {
                            Some(slot) => *slot = apply_value(slot, item, path, lists),
                            None => out.push(item.clone()),
                        }
                    }
                    Value::Array(out)
                }
            }
        }
        _ => applied.clone(),
    }
}

fn merge_value(original: Option<&Value>, patch: &Value, path: &mut Vec<String>) -> Result<Option<Value>, String> {
    match patch {
        Value::Object(p) => {
            match p.get("$patch").and_then(Value::as_str) {
                Some("delete") => return Ok(None),
                Some("replace") => {
                    let mut out = p.clone();
                    out.remove("$patch");
                    return Ok(Some(Value::Object(out)));
                }
                Some("merge") | None => {}
                Some(other) => return Err(format!("unknown patch type: {other}")),
            }
            let mut out: Map<String, Value> = match original {
                Some(Value::Object(o)) => o.clone(),
                _ => Map::new(),
            };
            let mut retain: Option<Vec<String>> = None;
            let mut orders: Vec<(String, Vec<Value>)> = Vec::new();
            for (k, v) in p {
                if k == "$patch" {
                    continue;
                }
                if let Some(field) = k.strip_prefix("$setElementOrder/") {
                    orders.push((field.to_owned(), v.as_array().cloned().unwrap_or_default()));
                    continue;
                }
                if k == "$retainKeys" {
                    retain = Some(
                        v.as_array().into_iter().flatten().filter_map(|x| x.as_str().map(str::to_owned)).collect(),
                    );
                    continue;
                }
                if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
                    let drop = v.as_array().cloned().unwrap_or_default();
                    if let Some(Value::Array(items)) = out.get_mut(field) {
                        items.retain(|x| !drop.contains(x));
                    }
                    continue;
                }
                if v.is_null() {
                    out.remove(k);
                    continue;
                }
                path.push(k.clone());
                let merged = merge_value(out.get(k), v, path)?;
                path.pop();
                match merged {
                    Some(m) => out.insert(k.clone(), m),
                    None => out.remove(k),
                };
            }
            for (field, order) in orders {
                path.push(field.clone());
                let segs: Vec<&str> = path.iter().map(String::as_str).collect();
                let keys = match patch_list_type(&segs) {
                    ListType::Map(keys) => Some(keys),
                    _ => None,
                };
                path.pop();
                let server: Vec<Value> = match original {
                    Some(Value::Object(o)) => o.get(&field).and_then(Value::as_array).cloned().unwrap_or_default(),
                    _ => Vec::new(),
                };
                if let Some(Value::Array(merged)) = out.remove(&field) {
                    out.insert(field, Value::Array(set_element_order(merged, &order, &server, keys.as_deref())));
                }
            }
            if let Some(keep) = retain {
                out.retain(|k, _| keep.contains(k));
            }
            Ok(Some(Value::Object(out)))
        }
        Value::Array(items) => {
            let segs: Vec<&str> = path.iter().map(String::as_str).collect();
            let lt = if segs.first() == Some(&"metadata") {
                list_type(Lists::Builtin, &segs)
            } else {
                patch_list_type(&segs)
            };
            let replace = items.iter().any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"));
            let plain: Vec<Value> =
                items.iter().filter(|i| i.get("$patch").and_then(Value::as_str) != Some("replace")).cloned().collect();
            let orig = match original {
                Some(Value::Array(o)) if !replace => o.clone(),
                _ => Vec::new(),
            };
            match lt {
                ListType::Atomic => Ok(Some(Value::Array(plain))),
                ListType::Set => {
                    let mut out = orig;
                    for v in plain {
                        if !out.contains(&v) {
                            out.push(v);
                        }
                    }
                    Ok(Some(Value::Array(out)))
                }
                ListType::Map(keys) => {
                    let mut out = orig;
                    for item in plain {
                        if keys.iter().all(|k| item.get(k).is_none()) {
                            return Err(format!("map: {item} does not contain declared merge key: {}", keys[0]));
                        }
                        let pos = out.iter().position(|x| same_key(x, &keys, &item));
                        if item.get("$patch").and_then(Value::as_str) == Some("delete") {
                            if let Some(i) = pos {
                                out.remove(i);
                            }
                            continue;
                        }
                        match pos {
                            Some(i) => {
                                if let Some(m) = merge_value(Some(&out[i]), &item, path)? {
                                    out[i] = m;
                                }
                            }
                            None => {
                                if let Some(m) = merge_value(None, &item, path)? {
                                    out.push(m);
                                }
                            }
                        }
                    }
                    Ok(Some(Value::Array(out)))
                }
            }
        }
        other => Ok(Some(other.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deploy() -> Value {
        json!({"metadata": {"name": "web", "finalizers": ["a"]}, "spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "app:1", "resources": {"limits": {"memory": "64Mi"}}, "env": [{"name": "A", "value": "1"}]},
            {"name": "sidecar", "image": "side:1"}
        ]}}}})
    }

    #[test]
    fn containers_merge_by_name() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "resources": {"limits": {"memory": "128Mi"}}, "env": [{"name": "B", "value": "2"}]}
        ]}}}});
        let out = strategic_merge(&deploy(), &patch).unwrap();
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs.as_array().unwrap().len(), 2);
        assert_eq!(cs[0]["image"], "app:1");
        assert_eq!(cs[0]["resources"]["limits"]["memory"], "128Mi");
        assert_eq!(cs[0]["env"], json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]));
        assert_eq!(cs[1]["name"], "sidecar");
    }

    #[test]
    fn directives() {
        let patch = json!({
            "metadata": {"finalizers": ["b"], "$deleteFromPrimitiveList/finalizers": ["a"]},
            "spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "app"}], "containers": [{"name": "sidecar", "$patch": "delete"}]}}}
        });
        let out = strategic_merge(&deploy(), &patch).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
        assert_eq!(out["spec"]["template"]["spec"]["containers"].as_array().unwrap().len(), 1);
        let null_deletes = strategic_merge(&deploy(), &json!({"metadata": {"finalizers": null}})).unwrap();
        assert!(null_deletes["metadata"].get("finalizers").is_none());
        assert!(
            strategic_merge(&deploy(), &json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}}))
                .is_err()
        );
    }

    #[test]
    fn schema_list_types() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "items": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["id"], "items": {"type": "object"}},
            "tags": {"type": "array", "x-kubernetes-list-type": "set"},
            "args": {"type": "array"}
        }}}});
        let l = Lists::Schema(&schema);
        assert_eq!(list_type(l, &["spec", "items"]), ListType::Map(vec!["id".into()]));
        assert_eq!(list_type(l, &["spec", "tags"]), ListType::Set);
        assert_eq!(list_type(l, &["spec", "args"]), ListType::Atomic);
        assert_eq!(list_type(l, &["metadata", "finalizers"]), ListType::Set);
        let merged = structural_merge(
            &json!({"spec": {"items": [{"id": 1, "v": 1}, {"id": 2}]}}),
            &json!({"spec": {"items": [{"id": 1, "v": 9}]}}),
            l,
        );
        assert_eq!(merged["spec"]["items"], json!([{"id": 1, "v": 9}, {"id": 2}]));
    }
}
