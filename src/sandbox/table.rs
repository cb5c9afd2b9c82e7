//! Server-side printing: `meta.k8s.io/v1 Table` responses for `kubectl get`.
//!
//! Contract: [`table`] renders objects of one type as a Table — CRDs from their
//! `additionalPrinterColumns` (JSONPath subset: `.a.b`, `[n]`, `[?(@.k=="v")]`), the workload
//! kinds with the columns kube-apiserver prints for them, anything else as Name + Age. `date`
//! columns are rendered as ages, as the API server does.

use serde_json::{Value, json};

use super::resources::ResourceType;

/// `5s`, `3m`, `2h10m`, `4d` — kubectl's human duration.
pub fn age(ts: &str, now: jiff::Timestamp) -> String {
    let Ok(t) = ts.parse::<jiff::Timestamp>() else { return "<unknown>".into() };
    let secs = (now.as_second() - t.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 8 * 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Evaluate a printer-column JSONPath.
pub fn json_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut node = obj;
    let mut rest = path.trim_start_matches('.');
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let inner = &r[..end];
            rest = r[end + 1..].trim_start_matches('.');
            if let Some(filter) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let (key, want) = filter.split_once("==")?;
                let want = want.trim().trim_matches('"').trim_matches('\'');
                node = node.as_array()?.iter().find(|i| i.get(key.trim()).and_then(Value::as_str) == Some(want))?;
            } else {
                node = node.get(inner.parse::<usize>().ok()?)?;
            }
            continue;
        }
        let end = rest.find(['.', '[']).unwrap_or(rest.len());
        node = node.get(&rest[..end])?;
        rest = rest[end..].trim_start_matches('.');
    }
    Some(node)
}

fn col(name: &str, ty: &str, priority: u64) -> Value {
    json!({"name": name, "type": ty, "format": if name == "Name" { "name" } else { "" }, "description": "", "priority": priority})
}

fn text(v: Option<&Value>) -> Value {
    match v {
        Some(Value::String(s)) => json!(s),
        Some(Value::Null) | None => json!("<none>"),
        Some(v) => json!(v.to_string()),
    }
}

fn int(obj: &Value, p: &str) -> i64 {
    obj.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}

type Columns = (Vec<Value>, Box<dyn Fn(&Value) -> Vec<Value>>);

fn columns(rt: &ResourceType, now: jiff::Timestamp) -> Columns {
    let name = |o: &Value| json!(o.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default());
    let created = move |o: &Value| {
        json!(age(o.pointer("/metadata/creationTimestamp").and_then(Value::as_str).unwrap_or_default(), now))
    };
    if rt.is_custom() {
        let mut defs = vec![col("Name", "string", 0)];
        let specs = rt.printer_columns.clone();
        for c in &specs {
            let n = c.get("name").and_then(Value::as_str).unwrap_or_default();
            let ty = c.get("type").and_then(Value::as_str).unwrap_or("string");
            defs.push(col(n, ty, c.get("priority").and_then(Value::as_u64).unwrap_or(0)));
        }
        if specs.is_empty() {
            defs.push(col("Age", "date", 0));
        }
        return (
            defs,
            Box::new(move |o| {
                let mut row = vec![name(o)];
                for c in &specs {
                    let path = c.get("jsonPath").and_then(Value::as_str).unwrap_or_default();
                    let v = json_path(o, path);
                    row.push(match (c.get("type").and_then(Value::as_str), v) {
                        (Some("date"), Some(Value::String(ts))) => json!(age(ts, now)),
                        (_, Some(Value::String(s))) => json!(s),
                        (_, Some(v)) if !v.is_null() => v.clone(),
                        _ => Value::Null,
                    });
                }
                if specs.is_empty() {
                    row.push(created(o));
                }
                row
            }),
        );
    }
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("apps", "Deployment") => (
            vec![
                col("Name", "string", 0),
                col("Ready", "string", 0),
                col("Up-to-date", "string", 0),
                col("Available", "string", 0),
                col("Age", "string", 0),
                col("Containers", "string", 1),
                col("Images", "string", 1),
            ],
            Box::new(move |o| {
                let containers =
                    o.pointer("/spec/template/spec/containers").and_then(Value::as_array).cloned().unwrap_or_default();
                let field = |k: &str| {
                    containers.iter().filter_map(|c| c.get(k).and_then(Value::as_str)).collect::<Vec<_>>().join(",")
                };
                vec![
                    name(o),
                    json!(format!("{}/{}", int(o, "/status/readyReplicas"), int(o, "/spec/replicas"))),
                    json!(int(o, "/status/updatedReplicas")),
                    json!(int(o, "/status/availableReplicas")),
                    created(o),
                    json!(field("name")),
                    json!(field("image")),
                ]
            }),
        ),
        ("apps", "ReplicaSet") => (
            vec![
                col("Name", "string", 0),
                col("Desired", "integer", 0),
                col("Current", "integer", 0),
                col("Ready", "integer", 0),
                col("Age", "string", 0),
            ],
            Box::new(move |o| {
                vec![
                    name(o),
                    json!(int(o, "/spec/replicas")),
                    json!(int(o, "/status/replicas")),
                    json!(int(o, "/status/readyReplicas")),
                    created(o),
                ]
            }),
        ),
        ("", "Pod") => (
            vec![
                col("Name", "string", 0),
                col("Ready", "string", 0),
                col("Status", "string", 0),
                col("Restarts", "string", 0),
                col("Age", "string", 0),
            ],
            Box::new(move |o| {
                let statuses =
                    o.pointer("/status/containerStatuses").and_then(Value::as_array).cloned().unwrap_or_default();
                let total = o.pointer("/spec/containers").and_then(Value::as_array).map_or(0, Vec::len);
                let ready = statuses.iter().filter(|s| s.get("ready") == Some(&json!(true))).count();
                let restarts: i64 =
                    statuses.iter().map(|s| s.get("restartCount").and_then(Value::as_i64).unwrap_or(0)).sum();
                let waiting = statuses.iter().find_map(|s| s.pointer("/state/waiting/reason").and_then(Value::as_str));
                let phase = o.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Pending");
                let status = if o.pointer("/metadata/deletionTimestamp").is_some() {
                    "Terminating"
                } else {
                    waiting.unwrap_or(phase)
                };
                vec![name(o), json!(format!("{ready}/{total}")), json!(status), json!(restarts.to_string()), created(o)]
            }),
        ),
        ("", "Namespace") => (
            vec![col("Name", "string", 0), col("Status", "string", 0), col("Age", "string", 0)],
            Box::new(move |o| vec![name(o), text(o.pointer("/status/phase")), created(o)]),
        ),
        ("", "Event") => (
            vec![
                col("Last Seen", "string", 0),
                col("Type", "string", 0),
                col("Reason", "string", 0),
                col("Object", "string", 0),
                col("Message", "string", 0),
            ],
            Box::new(move |o| {
                let seen = ["/lastTimestamp", "/eventTime", "/metadata/creationTimestamp"]
                    .iter()
                    .find_map(|p| o.pointer(p).and_then(Value::as_str))
                    .unwrap_or_default();
                let obj = format!(
                    "{}/{}",
                    o.pointer("/involvedObject/kind").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase(),
                    o.pointer("/involvedObject/name").and_then(Value::as_str).unwrap_or_default()
                );
                vec![
                    json!(age(seen, now)),
                    text(o.get("type")),
                    text(o.get("reason")),
                    json!(obj),
                    text(o.get("message")),
                ]
            }),
        ),
        _ => (vec![col("Name", "string", 0), col("Age", "string", 0)], Box::new(move |o| vec![name(o), created(o)])),
    }
}

/// The partial object a row carries (`includeObject=Metadata`, the default).
fn row_object(o: &Value, include: &str) -> Value {
    match include {
        "None" => Value::Null,
        "Object" => o.clone(),
        _ => {
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))})
        }
    }
}

/// A Table for `objects`; `list_meta` is the list's metadata (resourceVersion, continue).
pub fn table(rt: &ResourceType, objects: &[Value], list_meta: Value, include: &str) -> Value {
    let (defs, row) = columns(rt, jiff::Timestamp::now());
    let rows: Vec<Value> = objects.iter().map(|o| json!({"cells": row(o), "object": row_object(o, include)})).collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "columnDefinitions": defs, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_path_subset() {
        let o = json!({"status": {"conditions": [{"type": "Progressing", "reason": "A"}, {"type": "Ready", "reason": "Verified"}]}, "spec": {"l": [1, 2]}});
        assert_eq!(json_path(&o, ".status.conditions[?(@.type==\"Ready\")].reason"), Some(&json!("Verified")));
        assert_eq!(json_path(&o, ".spec.l[1]"), Some(&json!(2)));
        assert_eq!(json_path(&o, ".spec.missing"), None);
    }

    #[test]
    fn ages_read_like_kubectl() {
        let now: jiff::Timestamp = "2026-01-01T12:00:00Z".parse().unwrap();
        assert_eq!(age("2026-01-01T11:59:30Z", now), "30s");
        assert_eq!(age("2026-01-01T11:55:00Z", now), "5m0s");
        assert_eq!(age("2026-01-01T10:00:00Z", now), "120m");
        assert_eq!(age("2025-12-25T12:00:00Z", now), "7d");
    }
}
