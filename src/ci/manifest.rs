//! The manifests CI shows and hands on: an object as a person would read it (server-set
//! fields left out), as YAML, and the diff between the live object and what the server-side
//! dry-run would store.
//!
//! Contract: pure. [`clean`] removes what the API server sets (uid, resourceVersion,
//! generation, creationTimestamp, managedFields, selfLink, the last-applied annotation and
//! status), so the diff shows the change and nothing else; [`diff`] is a unified diff of the
//! two YAML renderings, cut at [`MAX_DIFF`] bytes on a line boundary with a note saying so.

use serde_json::Value;

/// Longest diff kept in status.
pub const MAX_DIFF: usize = 8 * 1024;

const SERVER_SET: [&str; 6] =
    ["uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink"];
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The object without what the API server sets.
pub fn clean(object: &Value) -> Value {
    let mut o = object.clone();
    if let Some(map) = o.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for field in SERVER_SET {
                meta.remove(field);
            }
            let empty = meta.get_mut("annotations").and_then(Value::as_object_mut).is_some_and(|a| {
                a.remove(LAST_APPLIED);
                a.is_empty()
            });
            if empty {
                meta.remove("annotations");
            }
        }
    }
    o
}

/// The object as YAML (JSON if it cannot be rendered, which serde-saphyr never refuses for a
/// JSON value).
pub fn yaml(object: &Value) -> String {
    serde_saphyr::to_string(object).unwrap_or_else(|_| serde_json::to_string_pretty(object).unwrap_or_default())
}

/// A unified diff from `live` to `stored` (what the server-side dry-run answered), both
/// cleaned first; empty when they are the same.
pub fn diff(live: &Value, stored: &Value) -> String {
    diff_named(live, stored, "dry-run")
}

/// [`diff`], the second side named `after`.
pub fn diff_named(live: &Value, changed: &Value, after: &str) -> String {
    let (a, b) = (yaml(&clean(live)), yaml(&clean(changed)));
    if a == b {
        return String::new();
    }
    let text = similar::TextDiff::from_lines(&a, &b).unified_diff().context_radius(3).header("live", after).to_string();
    cut(text, MAX_DIFF)
}

/// `text` cut at the last line boundary within `max` bytes, with a note when anything went.
fn cut(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    const NOTE: &str = "… (diff cut at 8 KiB)\n";
    let budget = max.saturating_sub(NOTE.len());
    let end = text[..text.floor_char_boundary(budget)].rfind('\n').map_or(0, |i| i + 1);
    format!("{}{NOTE}", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(memory: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1", "resourceVersion": "7", "generation": 3,
                "managedFields": [{"manager": "kubectl"}],
                "annotations": {LAST_APPLIED: "{}"}},
            "spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": memory}}}]}}},
            "status": {"replicas": 2}})
    }

    #[test]
    fn the_diff_shows_the_change_and_no_server_set_field() {
        let mut stored = deployment("512Mi");
        stored["metadata"]["resourceVersion"] = json!("8");
        stored["metadata"]["generation"] = json!(4);
        let d = diff(&deployment("256Mi"), &stored);
        assert!(d.contains("\n-            memory: 256Mi\n+            memory: 512Mi\n"), "{d}");
        assert_eq!(d.lines().filter(|l| l.starts_with('-') && !l.starts_with("---")).count(), 1, "{d}");
        for hidden in ["resourceVersion", "generation", "managedFields", "uid", LAST_APPLIED, "replicas"] {
            assert!(!d.contains(hidden), "{hidden} in {d}");
        }
    }

    #[test]
    fn no_change_is_an_empty_diff() {
        assert_eq!(diff(&deployment("1Gi"), &deployment("1Gi")), "");
    }

    #[test]
    fn a_long_diff_is_cut_on_a_line_with_a_note() {
        let live = json!({"data": (0..2000).map(|i| (format!("k{i}"), json!("a"))).collect::<serde_json::Map<_, _>>()});
        let stored =
            json!({"data": (0..2000).map(|i| (format!("k{i}"), json!("b"))).collect::<serde_json::Map<_, _>>()});
        let d = diff(&live, &stored);
        assert!(d.len() <= MAX_DIFF, "{}", d.len());
        assert!(d.ends_with("… (diff cut at 8 KiB)\n"), "{}", &d[d.len() - 60..]);
    }
}
