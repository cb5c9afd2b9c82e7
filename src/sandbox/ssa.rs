//! Field ownership: `managedFields` and server-side apply.
//!
//! Contract: every write records which manager owns which fields, in the `FieldsV1` format real
//! clusters use (`f:spec`, `k:{"name":"app"}`, `v:"a"`, `.`). An *update* (create, PUT, merge,
//! JSON or strategic patch) takes the fields it changed from whoever owned them. An *apply*
//! (`application/apply-patch+yaml`) declares the complete set of fields its manager wants: a
//! field another manager owns with a different value is a conflict (409 naming manager and
//! field) unless `force`, which takes it over; fields the manager applied before and omits now
//! are removed unless someone else still owns them. All functions here are pure.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use crate::patch::merge::{ListType, Lists, list_type, same_key, structural_merge};

/// One step in a field path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pe {
    Field(String),
    /// An associative-list item, by its key fields (canonical JSON object).
    Key(String),
    /// A set item, by value (canonical JSON).
    Val(String),
}

pub type Path = Vec<Pe>;
pub type FieldSet = BTreeSet<Path>;

/// Which part of the object a write addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Main,
    Status,
}

const METADATA_TRACKED: &[&str] = &["labels", "annotations", "finalizers", "ownerReferences"];

/// Every owned path of `obj` for `part`: leaves, plus one entry per associative-list item.
pub fn fields_of(obj: &Value, part: Part, lists: Lists<'_>) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(map) = obj.as_object() else { return out };
    for (k, v) in map {
        let wanted = match part {
            Part::Status => k == "status",
            Part::Main => !matches!(k.as_str(), "apiVersion" | "kind" | "status"),
        };
        if !wanted {
            continue;
        }
        if k == "metadata" {
            for mk in METADATA_TRACKED {
                if let Some(mv) = v.get(*mk) {
                    let path = vec![Pe::Field("metadata".into()), Pe::Field((*mk).into())];
                    let mut names = vec!["metadata".to_owned(), (*mk).to_owned()];
                    walk(mv, path, &mut names, lists, &mut out);
                }
            }
            continue;
        }
        let mut names = vec![k.clone()];
        walk(v, vec![Pe::Field(k.clone())], &mut names, lists, &mut out);
    }
    out
}

fn walk(v: &Value, path: Path, names: &mut Vec<String>, lists: Lists<'_>, out: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                let mut p = path.clone();
                p.push(Pe::Field(k.clone()));
                names.push(k.clone());
                walk(child, p, names, lists, out);
                names.pop();
            }
        }
        Value::Array(items) => {
            let segs: Vec<&str> = names.iter().map(String::as_str).collect();
            match list_type(lists, &segs) {
                ListType::Atomic => {
                    out.insert(path);
                }
                ListType::Set => {
                    for item in items {
                        let mut p = path.clone();
                        p.push(Pe::Val(item.to_string()));
                        out.insert(p);
                    }
                }
                ListType::Map(keys) => {
                    for item in items {
                        let key: Map<String, Value> =
                            keys.iter().filter_map(|k| item.get(k).map(|v| (k.clone(), v.clone()))).collect();
                        let mut p = path.clone();
                        p.push(Pe::Key(Value::Object(key).to_string()));
                        out.insert(p.clone());
                        if let Value::Object(m) = item {
                            for (k, child) in m {
                                let mut cp = p.clone();
                                cp.push(Pe::Field(k.clone()));
                                names.push(k.clone());
                                walk(child, cp, names, lists, out);
                                names.pop();
                            }
                        }
                    }
                }
            }
        }
        _ => {
            out.insert(path);
        }
    }
}

/// The value at `path`, if present.
pub fn value_at<'a>(obj: &'a Value, path: &[Pe]) -> Option<&'a Value> {
    let mut node = obj;
    for pe in path {
        node = match pe {
            Pe::Field(f) => node.get(f)?,
            Pe::Key(k) => {
                let probe: Value = serde_json::from_str(k).ok()?;
                let keys: Vec<String> = probe.as_object()?.keys().cloned().collect();
                node.as_array()?.iter().find(|i| same_key(i, &keys, &probe))?
            }
            Pe::Val(v) => {
                let probe: Value = serde_json::from_str(v).ok()?;
                node.as_array()?.iter().find(|i| **i == probe)?
            }
        };
    }
    Some(node)
}

/// Remove the field or item at `path` (no-op when absent).
fn remove_at(obj: &mut Value, path: &[Pe]) {
    let Some((last, parent)) = path.split_last() else { return };
    let mut node = obj;
    for pe in parent {
        let next = match pe {
            Pe::Field(f) => node.get_mut(f),
            Pe::Key(k) => {
                let Ok(probe) = serde_json::from_str::<Value>(k) else { return };
                let keys: Vec<String> = probe.as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
                node.as_array_mut().and_then(|a| a.iter_mut().find(|i| same_key(i, &keys, &probe)))
            }
            Pe::Val(_) => None,
        };
        let Some(n) = next else { return };
        node = n;
    }
    match last {
        Pe::Field(f) => {
            if let Some(m) = node.as_object_mut() {
                m.remove(f);
            }
        }
        Pe::Key(k) => {
            let Ok(probe) = serde_json::from_str::<Value>(k) else { return };
            let keys: Vec<String> = probe.as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
            if let Some(a) = node.as_array_mut() {
                a.retain(|i| !same_key(i, &keys, &probe));
            }
        }
        Pe::Val(v) => {
            let Ok(probe) = serde_json::from_str::<Value>(v) else { return };
            if let Some(a) = node.as_array_mut() {
                a.retain(|i| *i != probe);
            }
        }
    }
}

fn pe_token(pe: &Pe) -> String {
    match pe {
        Pe::Field(f) => format!("f:{f}"),
        Pe::Key(k) => format!("k:{k}"),
        Pe::Val(v) => format!("v:{v}"),
    }
}

/// Render a set as `fieldsV1`: an owned node with children carries the `"."` marker.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    fn build(paths: Vec<&[Pe]>) -> Map<String, Value> {
        let mut own = false;
        let mut groups: BTreeMap<String, Vec<&[Pe]>> = BTreeMap::new();
        for p in paths {
            match p.split_first() {
                None => own = true,
                Some((head, tail)) => groups.entry(pe_token(head)).or_default().push(tail),
            }
        }
        let mut m = Map::new();
        if own && !groups.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (tok, tails) in groups {
            m.insert(tok, Value::Object(build(tails)));
        }
        m
    }
    Value::Object(build(set.iter().map(Vec::as_slice).collect()))
}

fn parse_token(tok: &str) -> Option<Pe> {
    let (kind, rest) = tok.split_at_checked(2)?;
    match kind {
        "f:" => Some(Pe::Field(rest.to_owned())),
        "k:" => serde_json::from_str::<Value>(rest).ok().map(|v| Pe::Key(v.to_string())),
        "v:" => serde_json::from_str::<Value>(rest).ok().map(|v| Pe::Val(v.to_string())),
        _ => None,
    }
}

/// Parse `fieldsV1` back into a set.
pub fn from_fields_v1(v: &Value) -> FieldSet {
    fn go(node: &Value, path: &mut Path, out: &mut FieldSet) {
        let Some(m) = node.as_object() else { return };
        if (m.is_empty() || m.contains_key(".")) && !path.is_empty() {
            out.insert(path.clone());
        }
        for (tok, child) in m {
            if let Some(pe) = parse_token(tok) {
                path.push(pe);
                go(child, path, out);
                path.pop();
            }
        }
    }
    let mut out = FieldSet::new();
    go(v, &mut Vec::new(), &mut out);
    out
}

/// One `managedFields` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub manager: String,
    pub apply: bool,
    pub api_version: String,
    pub time: String,
    pub part: Part,
    pub fields: FieldSet,
}

pub fn read_entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| Entry {
            manager: e.get("manager").and_then(Value::as_str).unwrap_or_default().to_owned(),
            apply: e.get("operation").and_then(Value::as_str) == Some("Apply"),
            api_version: e.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_owned(),
            time: e.get("time").and_then(Value::as_str).unwrap_or_default().to_owned(),
            part: if e.get("subresource").and_then(Value::as_str) == Some("status") {
                Part::Status
            } else {
                Part::Main
            },
            fields: e.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
        })
        .collect()
}

pub fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": if e.apply { "Apply" } else { "Update" },
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.fields),
            });
            if e.part == Part::Status {
                v["subresource"] = json!("status");
            }
            v
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Who is writing, and how.
#[derive(Clone, Debug)]
pub struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    pub time: &'a str,
    pub part: Part,
}

fn entry_mut<'e>(entries: &'e mut Vec<Entry>, w: &Writer<'_>, apply: bool) -> &'e mut Entry {
    let pos = entries.iter().position(|e| e.manager == w.manager && e.apply == apply && e.part == w.part);
    let i = match pos {
        Some(i) => i,
        None => {
            entries.push(Entry {
                manager: w.manager.to_owned(),
                apply,
                api_version: w.api_version.to_owned(),
                time: w.time.to_owned(),
                part: w.part,
                fields: FieldSet::new(),
            });
            entries.len() - 1
        }
    };
    let e = &mut entries[i];
    e.time = w.time.to_owned();
    e.api_version = w.api_version.to_owned();
    e
}

/// Record an update (non-apply write) from `old` (None on create) to `new`, updating
/// `new`'s managedFields in place.
pub fn record_update(old: Option<&Value>, new: &mut Value, w: &Writer<'_>, lists: Lists<'_>) {
    // As kube-apiserver does, a write that sets managedFields itself replaces them (anyone
    // who may update an object may rewrite its field ownership).
    let stored = |o: &Value| o.pointer("/metadata/managedFields").cloned();
    let rewritten = new.pointer("/metadata/managedFields").is_some_and(|m| Some(m.clone()) != old.and_then(stored));
    let mut entries = if rewritten { read_entries(new) } else { old.map(read_entries).unwrap_or_default() };
    let before = old.map(|o| fields_of(o, w.part, lists)).unwrap_or_default();
    let after = fields_of(new, w.part, lists);
    let changed: FieldSet = after
        .iter()
        .filter(|p| !before.contains(*p) || old.and_then(|o| value_at(o, p)) != value_at(new, p))
        .cloned()
        .collect();
    let gone: FieldSet = before.difference(&after).cloned().collect();
    for e in entries.iter_mut().filter(|e| e.part == w.part) {
        e.fields.retain(|p| !gone.contains(p));
        if e.manager != w.manager || e.apply {
            e.fields.retain(|p| !changed.contains(p) || matches!(p.last(), Some(Pe::Key(_))));
        }
    }
    if !changed.is_empty() {
        entry_mut(&mut entries, w, false).fields.extend(changed);
    }
    entries.retain(|e| !e.fields.is_empty());
    write_entries(new, &entries);
}

/// A contested field: (other manager, its apiVersion, the path as `.spec.replicas`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    pub api_version: String,
    pub field: String,
}

/// Render a path the way conflict messages do: `.spec.containers[name="app"].image`.
pub fn display_path(path: &[Pe]) -> String {
    let mut s = String::new();
    for pe in path {
        match pe {
            Pe::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            Pe::Key(k) => {
                let v: Value = serde_json::from_str(k).unwrap_or(Value::Null);
                let parts: Vec<String> = v.as_object().into_iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
                s.push_str(&format!("[{}]", parts.join(",")));
            }
            Pe::Val(v) => s.push_str(&format!("[{v}]")),
        }
    }
    s
}

/// Server-side apply `applied` over `live` (None creates). Returns the new object with its
/// managedFields, or the conflicts when `force` is false.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    w: &Writer<'_>,
    force: bool,
    lists: Lists<'_>,
) -> Result<Value, Vec<Conflict>> {
    let base = live.cloned().unwrap_or_else(|| json!({}));
    let mut entries = read_entries(&base);
    let wanted = fields_of(applied, w.part, lists);
    let mut conflicts = Vec::new();
    let mut contested: BTreeMap<usize, Vec<Path>> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        if e.manager == w.manager || e.part != w.part {
            continue;
        }
        for p in e.fields.intersection(&wanted) {
            if matches!(p.last(), Some(Pe::Key(_))) {
                continue;
            }
            if value_at(&base, p) != value_at(applied, p) {
                conflicts.push(Conflict {
                    manager: e.manager.clone(),
                    api_version: e.api_version.clone(),
                    field: display_path(p),
                });
                contested.entry(i).or_default().push(p.clone());
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    for (i, paths) in contested {
        for p in paths {
            entries[i].fields.remove(&p);
        }
    }
    let previous = entries
        .iter()
        .find(|e| e.manager == w.manager && e.apply && e.part == w.part)
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let mut obj = base;
    // Fields this manager applied before and no longer wants go, unless someone else owns them.
    let mut dropped: Vec<&Path> = previous
        .difference(&wanted)
        .filter(|p| {
            !entries.iter().any(|e| {
                !(e.manager == w.manager && e.apply) && e.part == w.part && e.fields.iter().any(|q| q.starts_with(p))
            })
        })
        .collect();
    dropped.sort_by_key(|p| std::cmp::Reverse(p.len()));
    let owned_elsewhere = |p: &[Pe]| {
        wanted.iter().any(|q| q.starts_with(p))
            || entries.iter().any(|e| {
                e.part == w.part && !(e.manager == w.manager && e.apply) && e.fields.iter().any(|q| q.starts_with(p))
            })
    };
    for p in dropped {
        remove_at(&mut obj, p);
        // Parents left empty and owned by no one go too, as in structured-merge-diff.
        for depth in (1..p.len()).rev() {
            let parent = &p[..depth];
            let empty = value_at(&obj, parent).is_some_and(|v| v.as_object().is_some_and(Map::is_empty));
            if !empty || owned_elsewhere(parent) {
                break;
            }
            remove_at(&mut obj, parent);
        }
    }
    let mut merged = structural_merge(&obj, applied, lists);
    entry_mut(&mut entries, w, true).fields = wanted;
    entries.retain(|e| !e.fields.is_empty());
    write_entries(&mut merged, &entries);
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Lists<'static> = Lists::Builtin;

    fn writer(m: &str) -> Writer<'_> {
        Writer { manager: m, api_version: "apps/v1", time: "2026-01-01T00:00:00Z", part: Part::Main }
    }

    fn deploy(replicas: i64, mem: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "app", "image": "app:1",
            "resources": {"limits": {"memory": mem}}}]}}}})
    }

    #[test]
    fn fields_v1_round_trips() {
        let set = fields_of(&deploy(1, "64Mi"), Part::Main, L);
        let v1 = to_fields_v1(&set);
        assert!(v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"app\"}"]["."].is_object());
        assert!(v1["f:metadata"]["f:labels"]["f:app"].is_object());
        assert!(v1["f:metadata"].get("f:name").is_none());
        assert_eq!(from_fields_v1(&v1), set);
    }

    #[test]
    fn apply_conflicts_with_an_updater_unless_forced() {
        let mut live = deploy(1, "64Mi");
        record_update(None, &mut live, &writer("kubectl-create"), L);
        let intent = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "128Mi"}}}]}}}});
        let err = apply(Some(&live), &intent, &writer("reflex"), false, L).unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].manager, "kubectl-create");
        assert_eq!(err[0].field, ".spec.template.spec.containers[name=\"app\"].resources.limits.memory");
        let forced = apply(Some(&live), &intent, &writer("reflex"), true, L).unwrap();
        assert_eq!(forced["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"], "128Mi");
        assert_eq!(forced["spec"]["template"]["spec"]["containers"][0]["image"], "app:1");
        let owners = read_entries(&forced);
        let reflex = owners.iter().find(|e| e.manager == "reflex").unwrap();
        assert!(reflex.apply);
        let creator = owners.iter().find(|e| e.manager == "kubectl-create").unwrap();
        let mem_path =
            fields_of(&intent, Part::Main, L).into_iter().find(|p| display_path(p).ends_with("memory")).unwrap();
        assert!(!creator.fields.contains(&mem_path), "force moved ownership");
        // Same value: shared ownership, no conflict.
        let same = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 1}});
        assert!(apply(Some(&live), &same, &writer("other"), false, L).is_ok());
    }

    #[test]
    fn apply_removes_fields_the_manager_stopped_declaring() {
        let first = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"a": "1", "b": "2"}}, "data": {"x": "1", "y": "2"}});
        let live = apply(None, &first, &writer("me"), false, L).unwrap();
        let second = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"a": "1"}}, "data": {"x": "1"}});
        let out = apply(Some(&live), &second, &writer("me"), false, L).unwrap();
        assert_eq!(out["data"], json!({"x": "1"}));
        assert_eq!(out["metadata"]["labels"], json!({"a": "1"}));
        let third = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        let out = apply(Some(&out), &third, &writer("me"), false, L).unwrap();
        assert!(out.get("data").is_none(), "emptied parents are pruned: {out}");
    }

    #[test]
    fn updates_take_ownership_of_what_they_change() {
        let live = apply(None, &deploy(1, "64Mi"), &writer("gitops"), false, L).unwrap();
        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = json!(3);
        record_update(Some(&live), &mut scaled, &writer("hpa"), L);
        let entries = read_entries(&scaled);
        let replicas = vec![Pe::Field("spec".into()), Pe::Field("replicas".into())];
        assert!(entries.iter().find(|e| e.manager == "hpa").unwrap().fields.contains(&replicas));
        assert!(!entries.iter().find(|e| e.manager == "gitops").unwrap().fields.contains(&replicas));
        let err = apply(Some(&scaled), &deploy(1, "64Mi"), &writer("gitops"), false, L).unwrap_err();
        assert_eq!(err[0].field, ".spec.replicas");
    }
}
