//! Walking a patch as a tree of leaves: which fields it sets, what the target holds there
//! now, and which list items it would add. Lists merge by their keys as the API server's
//! strategic merge does (`merge::list_type`), or are replaced whole (JSON merge patches).
//!
//! Contract: pure. Shared by the playbook renderer (what a parameter replaces), deploy
//! (drift since the change), and the demo's timeline (the patch as a diff).

use serde_json::{Map, Value};

use super::merge::{ListType, Lists, list_type, same_key};

/// The (field, list-item key) steps that lead to a leaf.
pub type Trail = Vec<(String, Option<Value>)>;

/// Every leaf the patch sets, with list items as `[*]` and their merge keys left out, and
/// the concrete path (field names) used to find the current value.
pub fn leaves(
    v: &Value,
    path: &mut Vec<String>,
    display: String,
    out: &mut Vec<(String, Trail)>,
    trail: &mut Vec<(String, Option<Value>)>,
    keyed: bool,
) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                path.push(k.clone());
                trail.push((k.clone(), None));
                let shown = if display.is_empty() { k.clone() } else { format!("{display}.{k}") };
                leaves(child, path, shown, out, trail, keyed);
                trail.pop();
                path.pop();
            }
        }
        // A JSON merge patch replaces lists whole: the list is the leaf.
        Value::Array(_) if !keyed => out.push((display, trail.clone())),
        Value::Array(items) => {
            let segs: Vec<&str> = path.iter().map(String::as_str).collect();
            match list_type(Lists::Builtin, &segs) {
                ListType::Map(keys) => {
                    for item in items {
                        let probe: Map<String, Value> =
                            keys.iter().filter_map(|k| item.get(k).map(|v| (k.clone(), v.clone()))).collect();
                        if let Some(last) = trail.last_mut() {
                            last.1 = Some(Value::Object(probe));
                        }
                        if let Value::Object(m) = item {
                            for (k, child) in m.iter().filter(|(k, _)| !keys.contains(k)) {
                                path.push(k.clone());
                                trail.push((k.clone(), None));
                                leaves(child, path, format!("{display}[*].{k}"), out, trail, keyed);
                                trail.pop();
                                path.pop();
                            }
                        }
                        if let Some(last) = trail.last_mut() {
                            last.1 = None;
                        }
                    }
                }
                _ => out.push((display, trail.clone())),
            }
        }
        _ => out.push((display, trail.clone())),
    }
}

/// The target's current value at a trail of (field, list-item key) steps.
pub fn current_at<'a>(object: &'a Value, trail: &[(String, Option<Value>)]) -> Option<&'a Value> {
    let mut node = object;
    for (field, key) in trail {
        node = node.get(field)?;
        if let Some(probe) = key {
            let keys: Vec<String> = probe.as_object()?.keys().cloned().collect();
            node = node.as_array()?.iter().find(|i| same_key(i, &keys, probe))?;
        }
    }
    Some(node)
}

/// The leaves of a strategic patch, paired with the target's current values: what a change
/// replaces.
pub fn touched(patch: &Value, object: &Value) -> Vec<(String, Option<Value>)> {
    touched_as(patch, object, true)
}

/// [`touched`] for a patch whose lists merge by key (`keyed`, strategic) or are replaced
/// whole (merge patches).
pub fn touched_as(patch: &Value, object: &Value, keyed: bool) -> Vec<(String, Option<Value>)> {
    let mut out = Vec::new();
    leaves(patch, &mut Vec::new(), String::new(), &mut out, &mut Vec::new(), keyed);
    out.into_iter().map(|(shown, trail)| (shown, current_at(object, &trail).cloned())).collect()
}

/// List items a strategic patch would add (no item with that key exists), as `path[*]`:
/// adding an item is a change in its own right and needs its own allowance.
pub fn new_items(patch: &Value, object: &Value) -> Vec<String> {
    fn walk(patch: &Value, object: Option<&Value>, path: &mut Vec<String>, display: &str, out: &mut Vec<String>) {
        match patch {
            Value::Object(m) => {
                for (k, child) in m {
                    path.push(k.clone());
                    let shown = if display.is_empty() { k.clone() } else { format!("{display}.{k}") };
                    walk(child, object.and_then(|o| o.get(k)), path, &shown, out);
                    path.pop();
                }
            }
            Value::Array(items) => {
                let segs: Vec<&str> = path.iter().map(String::as_str).collect();
                if let ListType::Map(keys) = list_type(Lists::Builtin, &segs) {
                    for item in items {
                        match object.and_then(Value::as_array).and_then(|a| a.iter().find(|x| same_key(x, &keys, item)))
                        {
                            Some(current) => walk(item, Some(current), path, &format!("{display}[*]"), out),
                            None => out.push(format!("{display}[*]")),
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(patch, Some(object), &mut Vec::new(), "", &mut out);
    out
}

/// The target's values at every leaf of `probe` that holds `token`: what a parameter replaces.
pub fn replaced<'a>(probe: &Value, object: &'a Value, token: &str) -> Vec<Option<&'a Value>> {
    let mut out = Vec::new();
    leaves(probe, &mut Vec::new(), String::new(), &mut out, &mut Vec::new(), true);
    out.iter()
        .filter(|(_, trail)| current_at(probe, trail).and_then(Value::as_str) == Some(token))
        .map(|(_, trail)| current_at(object, trail))
        .collect()
}
