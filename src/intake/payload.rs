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

/// Prometheus 3 and Alertmanager 0.28 allow any UTF-8 label name (`service.name`); it
/// must not be empty. Refusing more would drop a whole delivery for one odd label.
fn is_label_name(k: &str) -> bool {
    !k.is_empty() && !k.chars().any(char::is_control)
}

/// Parse and validate a delivery.
pub fn parse(body: &[u8]) -> Result<Payload, String> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let p: Payload = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let at = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() || at == "." {
            format!("not an Alertmanager webhook payload: {inner}")
        } else {
            format!("{at}: {inner}")
        }
    })?;
    de.end().map_err(|e| format!("not an Alertmanager webhook payload: {e}"))?;
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
        if let Some(bad) = a.labels.keys().find(|k| !is_label_name(k)) {
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
    use proptest::prelude::*;
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
        assert!(with("labels", json!({"alertname": "A", "": "x"})).contains("not a valid label name"));
        assert!(
            parse(&body(json!({"status": "firing", "labels": {"alertname": "A", "service.name": "x"},
            "startsAt": "2026-01-01T00:00:00Z", "fingerprint": "abc"})))
            .is_ok(),
            "UTF-8 label names (Prometheus 3)"
        );
        let v3 = serde_json::to_vec(&json!({"version": "3", "status": "firing", "alerts": []})).unwrap();
        assert!(parse(&v3).unwrap_err().starts_with("version"));
        assert!(parse(b"{").unwrap_err().starts_with("not an Alertmanager webhook payload"));
        assert!(parse(br#"{"version": "4", "status": "firing"}"#).unwrap_err().contains("alerts"));
        assert_eq!(with("labels", json!({"alertname": 5})).split(':').next(), Some("alerts[0].labels.alertname"));
        assert!(parse(&[body(good()), b"{}".to_vec()].concat()).unwrap_err().contains("trailing characters"));
    }

    /// Any JSON value: what a mutated payload may hold in place of a field.
    fn any_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            "\\PC{0,12}".prop_map(serde_json::Value::from),
            Just(json!("2026-01-01T00:00:00Z")),
            Just(json!("firing")),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("[a-zA-Z_-]{1,8}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// The fields a mutation replaces, as the error path names them.
    const FIELDS: &[&str] = &[
        "version",
        "status",
        "groupKey",
        "truncatedAlerts",
        "alerts",
        "alerts[0]",
        "alerts[0].status",
        "alerts[0].labels",
        "alerts[0].labels.alertname",
        "alerts[0].annotations",
        "alerts[0].startsAt",
        "alerts[0].endsAt",
        "alerts[0].generatorURL",
        "alerts[0].fingerprint",
    ];

    fn replace(v: &mut serde_json::Value, path: &str, with: serde_json::Value) {
        let mut at = v;
        let parts: Vec<&str> = path.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let (name, index) = match part.split_once('[') {
                Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
                None => (*part, None),
            };
            let last = i + 1 == parts.len();
            if last && index.is_none() {
                at[name] = with;
                return;
            }
            at = &mut at[name];
            if let Some(ix) = index {
                if last {
                    at[ix] = with;
                    return;
                }
                at = &mut at[ix];
            }
        }
    }

    fn delivery() -> serde_json::Value {
        json!({"version": "4", "groupKey": "g", "truncatedAlerts": 0, "status": "firing", "receiver": "r",
            "alerts": [good()]})
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// No input panics the parser; every refusal says what is wrong.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            if let Err(e) = parse(&bytes) {
                prop_assert!(e.contains(": ") && e.len() > 10, "{e}");
            }
        }

        /// A real delivery cut short anywhere is refused, never half-read.
        #[test]
        fn truncated_deliveries_are_refused(cut in 0usize..400) {
            let full = serde_json::to_vec(&delivery()).unwrap();
            let cut = cut.min(full.len() - 1);
            prop_assert!(parse(&full[..cut]).is_err());
        }

        /// A field replaced by any value is accepted or refused with a message whose path
        /// is the field's, or a part of it, or inside it.
        #[test]
        fn a_bad_field_is_named(field in proptest::sample::select(FIELDS), value in any_json()) {
            let mut v = delivery();
            replace(&mut v, field, value);
            if let Err(e) = parse(&serde_json::to_vec(&v).unwrap()) {
                let at = e.split(':').next().unwrap_or_default();
                let related = field.starts_with(at) || at.starts_with(field);
                prop_assert!(related, "mutated {field}, error names {at:?}: {e}");
            }
        }
    }
}
