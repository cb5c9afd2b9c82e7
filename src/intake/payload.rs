//! The Alertmanager webhook payload (version 4) and its validation.
//!
//! Contract: [`parse`] turns a body into a [`Payload`] or a message naming the offending
//! field — unknown version, missing or malformed labels, bad timestamps, bad fingerprints,
//! unknown alert status. Fields Alertmanager adds that Reflex does not use are accepted.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Deserialize;

/// An Alertmanager webhook delivery.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    pub version: String,
    #[serde(default)]
    pub group_key: String,
    #[serde(default)]
    pub truncated_alerts: u64,
    pub status: String,
    #[serde(default)]
    pub receiver: String,
    pub alerts: Vec<Alert>,
}

/// One alert of a delivery.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub status: String,
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub starts_at: String,
    #[serde(default, rename = "endsAt")]
    pub ends_at_raw: Option<String>,
    #[serde(default, rename = "generatorURL")]
    pub generator_url: Option<String>,
    pub fingerprint: String,
}

impl Alert {
    /// When it ended; Alertmanager writes `0001-01-01T00:00:00Z` for "not yet".
    pub fn ends_at(&self) -> Option<Timestamp> {
        self.ends_at_raw.as_deref().and_then(|t| t.parse::<Timestamp>().ok()).filter(|t| t.as_second() > 0)
    }
}

/// Parse and validate a delivery.
pub fn parse(body: &[u8]) -> Result<Payload, String> {
    let p: Payload = serde_json::from_slice(body).map_err(|e| format!("not an Alertmanager webhook payload: {e}"))?;
    if p.version != "4" {
        return Err(format!("version: {:?} is not supported; Alertmanager sends version \"4\"", p.version));
    }
    if !matches!(p.status.as_str(), "firing" | "resolved") {
        return Err(format!("status: {:?} must be \"firing\" or \"resolved\"", p.status));
    }
    for (i, a) in p.alerts.iter().enumerate() {
        if !matches!(a.status.as_str(), "firing" | "resolved") {
            return Err(format!("alerts[{i}].status: {:?} must be \"firing\" or \"resolved\"", a.status));
        }
        if !a.labels.contains_key("alertname") {
            return Err(format!("alerts[{i}].labels: alertname is missing"));
        }
        if let Some(bad) =
            a.labels.keys().find(|k| k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            return Err(format!("alerts[{i}].labels: {bad:?} is not a valid label name"));
        }
        if a.fingerprint.is_empty()
            || !a.fingerprint.chars().all(|c| c.is_ascii_alphanumeric())
            || a.fingerprint.len() > 64
        {
            return Err(format!("alerts[{i}].fingerprint: {:?} is not an Alertmanager fingerprint", a.fingerprint));
        }
        if a.starts_at.parse::<Timestamp>().is_err() {
            return Err(format!("alerts[{i}].startsAt: {:?} is not an RFC 3339 time", a.starts_at));
        }
        if let Some(end) = &a.ends_at_raw
            && end.parse::<Timestamp>().is_err()
        {
            return Err(format!("alerts[{i}].endsAt: {end:?} is not an RFC 3339 time"));
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(alert: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(
            &json!({"version": "4", "status": "firing", "groupLabels": {}, "externalURL": "x", "alerts": [alert]}),
        )
        .unwrap()
    }

    fn good() -> serde_json::Value {
        json!({"status": "firing", "labels": {"alertname": "A"}, "startsAt": "2026-01-01T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "fingerprint": "abc123"})
    }

    #[test]
    fn a_real_delivery_parses() {
        let p = parse(&body(good())).unwrap();
        assert_eq!(p.alerts[0].ends_at(), None, "Alertmanager's zero time means not ended");
    }

    #[test]
    fn each_bad_field_is_named() {
        let with = |k: &str, v: serde_json::Value| {
            let mut a = good();
            a[k] = v;
            parse(&body(a)).unwrap_err()
        };
        assert!(with("startsAt", json!("yesterday")).starts_with("alerts[0].startsAt"));
        assert!(with("endsAt", json!("later")).starts_with("alerts[0].endsAt"));
        assert!(with("status", json!("pending")).starts_with("alerts[0].status"));
        assert!(with("fingerprint", json!("../x")).starts_with("alerts[0].fingerprint"));
        assert_eq!(with("labels", json!({"severity": "x"})), "alerts[0].labels: alertname is missing");
        assert!(with("labels", json!({"alertname": "A", "bad-key": "x"})).contains("not a valid label name"));
        let v3 = serde_json::to_vec(&json!({"version": "3", "status": "firing", "alerts": []})).unwrap();
        assert!(parse(&v3).unwrap_err().starts_with("version"));
        assert!(parse(b"{").unwrap_err().starts_with("not an Alertmanager webhook payload"));
        assert!(parse(br#"{"version": "4", "status": "firing"}"#).unwrap_err().contains("alerts"));
    }
}
