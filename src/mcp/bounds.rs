//! The pure edge of the MCP context tools: input bounds checked before any work, output
//! caps with an explicit truncation notice, and Secret redaction.
//!
//! Contract: every check returns a message a caller (often an LLM) can act on, naming the
//! argument and the allowed range. Caps never cut silently: a capped output carries a
//! [`Truncation`] saying what was shown, what there was and how to see the rest. Secret
//! values never leave the server: `data`, `stringData` and the last-applied annotation of
//! any Secret are replaced, whoever asks.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Items a list returns unless asked for fewer.
pub const DEFAULT_LIMIT: u32 = 50;
/// Most items a list returns.
pub const MAX_LIMIT: u32 = 500;
/// Log lines returned unless asked for fewer, and at most.
pub const DEFAULT_LOG_LINES: u32 = 200;
pub const MAX_LOG_LINES: u32 = 2_000;
/// Furthest back logs may be read.
pub const MAX_LOG_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Longest PromQL expression accepted.
pub const MAX_QUERY_LEN: usize = 4_096;
/// Most points a range query may return per series, and most series.
pub const MAX_POINTS: u64 = 1_100;
pub const MAX_SERIES: usize = 50;
/// Longest range query window.
pub const MAX_RANGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Largest serialized output of one call.
pub const MAX_OUTPUT_BYTES: usize = 256 * 1024;

/// What a capped output left out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Truncation {
    /// How many were returned.
    pub shown: u64,
    /// How many there were (when known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// What to do to see more.
    pub notice: String,
}

const REDACTED: &str = "<redacted by reflex>";

/// Replace every value of a Secret (and its last-applied copy) with a marker. `secret`
/// says the object was read as a Secret (list items carry no `kind` on a real API server);
/// an object whose own `kind` says Secret is redacted either way.
pub fn redact(object: &mut Value, secret: bool) {
    if !secret && object.get("kind").and_then(Value::as_str) != Some("Secret") {
        return;
    }
    for field in ["data", "stringData"] {
        if let Some(map) = object.get_mut(field).and_then(Value::as_object_mut) {
            for v in map.values_mut() {
                *v = Value::String(REDACTED.into());
            }
        }
    }
    if let Some(annotations) = object.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut)
        && let Some(v) = annotations.get_mut("kubectl.kubernetes.io/last-applied-configuration")
    {
        *v = Value::String(REDACTED.into());
    }
}

/// Strip what no reader needs (managedFields) and redact Secrets.
pub fn clean(object: Value) -> Value {
    clean_as(object, false)
}

/// [`clean`], for an object read as a Secret (`secret`) whatever its body says.
pub fn clean_as(mut object: Value, secret: bool) -> Value {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    redact(&mut object, secret);
    object
}

/// Whether an API resource is Secrets.
pub fn is_secret(ar: &kube::api::ApiResource) -> bool {
    ar.group.is_empty() && ar.plural == "secrets"
}

/// `limit`, defaulted and bounded.
pub fn limit(asked: Option<u32>) -> Result<u32, String> {
    match asked {
        None => Ok(DEFAULT_LIMIT),
        Some(0) => Err(format!("limit must be between 1 and {MAX_LIMIT}")),
        Some(n) if n > MAX_LIMIT => Err(format!("limit {n} is over {MAX_LIMIT}; page with a label selector instead")),
        Some(n) => Ok(n),
    }
}

/// A Kubernetes object or namespace name.
pub fn name(what: &str, value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok { Ok(()) } else { Err(format!("{what} {value:?} is not a valid Kubernetes name")) }
}

/// A PromQL expression: non-empty and not huge (Prometheus parses it).
pub fn query(q: &str) -> Result<(), String> {
    if q.trim().is_empty() {
        return Err("query is empty".into());
    }
    if q.len() > MAX_QUERY_LEN {
        return Err(format!("query is {} bytes; at most {MAX_QUERY_LEN}", q.len()));
    }
    Ok(())
}

/// A range query's window and step: the number of points per series it asks for.
pub fn range(start: jiff::Timestamp, end: jiff::Timestamp, step: Duration) -> Result<u64, String> {
    if end <= start {
        return Err(format!("end {end} is not after start {start}"));
    }
    let span = end.duration_since(start).unsigned_abs();
    if span > MAX_RANGE {
        return Err(format!("the range is {}s; at most {}s (7 days)", span.as_secs(), MAX_RANGE.as_secs()));
    }
    if step.is_zero() {
        return Err("step must be positive".into());
    }
    let points = span.as_secs_f64() / step.as_secs_f64();
    if points > MAX_POINTS as f64 {
        let min_step = (span.as_secs_f64() / MAX_POINTS as f64).ceil();
        return Err(format!(
            "{points:.0} points per series at step {}s; at most {MAX_POINTS} — use a step of at least {min_step}s",
            step.as_secs_f64()
        ));
    }
    Ok(points as u64 + 1)
}

/// Log tail and window, defaulted and bounded.
pub fn logs(tail: Option<u32>, since: Option<u64>) -> Result<(u32, Option<u64>), String> {
    let tail = match tail {
        None => DEFAULT_LOG_LINES,
        Some(0) => return Err(format!("tailLines must be between 1 and {MAX_LOG_LINES}")),
        Some(n) if n > MAX_LOG_LINES => return Err(format!("tailLines {n} is over {MAX_LOG_LINES}")),
        Some(n) => n,
    };
    match since {
        Some(0) => Err("sinceSeconds must be positive".into()),
        Some(s) if s > MAX_LOG_WINDOW.as_secs() => {
            Err(format!("sinceSeconds {s} is over {} (24 hours)", MAX_LOG_WINDOW.as_secs()))
        }
        s => Ok((tail, s)),
    }
}

/// Keep the first `limit` items; say so when there were more.
pub fn cap<T>(mut items: Vec<T>, limit: usize, more: Option<u64>, how: &str) -> (Vec<T>, Option<Truncation>) {
    let total = items.len() as u64 + more.unwrap_or(0);
    if items.len() <= limit && more.is_none_or(|m| m == 0) {
        return (items, None);
    }
    items.truncate(limit);
    let shown = items.len() as u64;
    (items, Some(Truncation { shown, total: Some(total), notice: format!("{shown} of {total} shown; {how}") }))
}

/// Keep the last lines that fit in `budget` bytes (logs: the newest matter most).
pub fn tail_bytes(lines: Vec<String>, budget: usize) -> (Vec<String>, Option<Truncation>) {
    let total = lines.len() as u64;
    let mut used = 0;
    let mut kept: Vec<String> = Vec::new();
    for line in lines.into_iter().rev() {
        if used + line.len() + 1 > budget {
            break;
        }
        used += line.len() + 1;
        kept.push(line);
    }
    kept.reverse();
    let shown = kept.len() as u64;
    let cut = (shown < total).then(|| Truncation {
        shown,
        total: Some(total),
        notice: format!("the newest {shown} of {total} lines fit in {budget} bytes; narrow sinceSeconds or tailLines"),
    });
    (kept, cut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_redacted_everywhere_they_hide() {
        let secret = json!({"kind": "Secret", "metadata": {"name": "db", "managedFields": [{}],
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"data\":{\"password\":\"aHVudGVyMg==\"}}"}},
            "data": {"password": "aHVudGVyMg=="}, "stringData": {"token": "t0k"}});
        let out = clean(secret).to_string();
        assert!(!out.contains("aHVudGVyMg") && !out.contains("t0k"), "{out}");
        assert!(!out.contains("managedFields"));
        let cm = clean(json!({"kind": "ConfigMap", "data": {"pool": "10"}}));
        assert_eq!(cm["data"]["pool"], "10", "only Secrets are redacted");
        // A list item from a real API server has no kind: redacted because it was read as one.
        let item = clean_as(json!({"metadata": {"name": "db"}, "data": {"password": "aHVudGVyMg=="}}), true);
        assert_eq!(item["data"]["password"], REDACTED);
    }

    #[test]
    fn bounds_name_the_argument_and_the_range() {
        assert_eq!(limit(None), Ok(DEFAULT_LIMIT));
        assert!(limit(Some(501)).unwrap_err().contains("over 500"));
        assert!(name("namespace", "Shop").unwrap_err().starts_with("namespace \"Shop\""));
        assert!(name("name", "checkout-7d9f").is_ok());
        assert!(query(&"x".repeat(5000)).unwrap_err().contains("at most 4096"));
        let t0: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let day = t0.checked_add(jiff::SignedDuration::from_hours(24)).unwrap();
        assert_eq!(range(t0, day, Duration::from_secs(120)), Ok(721));
        let e = range(t0, day, Duration::from_secs(15)).unwrap_err();
        assert!(e.contains("use a step of at least 79s"), "{e}");
        assert!(range(day, t0, Duration::from_secs(60)).is_err());
        assert!(logs(Some(5000), None).unwrap_err().contains("tailLines 5000"));
        assert!(logs(None, Some(100_000)).unwrap_err().contains("sinceSeconds"));
        assert_eq!(logs(None, None), Ok((DEFAULT_LOG_LINES, None)));
    }

    #[test]
    fn caps_say_what_they_left_out() {
        let (items, cut) = cap((0..10).collect::<Vec<_>>(), 3, Some(5), "narrow the selector");
        assert_eq!(items, vec![0, 1, 2]);
        assert_eq!(cut.unwrap().notice, "3 of 15 shown; narrow the selector");
        assert_eq!(cap(vec![1, 2], 3, None, "").1, None);
        let lines: Vec<String> = (0..100).map(|i| format!("line {i:03}")).collect();
        let (kept, cut) = tail_bytes(lines, 90);
        assert_eq!(kept.last().map(String::as_str), Some("line 099"), "the newest lines are kept");
        assert_eq!((kept.len(), cut.unwrap().shown), (10, 10));
    }
}
