//! Alertmanager silences for a fix in flight: on-call is not paged for an alert Reflex is
//! already fixing.
//!
//! Contract: for a policy that opts in (`spec.silenceAlert`), the controller silences the
//! alert — matchers for exactly its labels, each an equality — through Alertmanager's API v2
//! when the change starts deploying, until the end of the time the fix may take (the silence
//! expires by itself if the operator is gone), records the silence id in status, and expires
//! it when the Remediation ends. Alertmanager being unreachable never blocks the loop: the
//! failure is logged and tried again on the next reconcile. [`matchers`] is the pure part.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

/// The most of an Alertmanager answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// The matchers that select exactly an alert with `labels`.
pub fn matchers(labels: &BTreeMap<String, String>) -> Vec<Value> {
    labels
        .iter()
        .map(|(name, value)| json!({"name": name, "value": value, "isRegex": false, "isEqual": true}))
        .collect()
}

/// Alertmanager's API v2.
#[derive(Clone, Debug)]
pub struct Alertmanager {
    http: reqwest::Client,
    base: String,
}

impl Alertmanager {
    /// `url` is Alertmanager's base URL (`http://alertmanager:9093`).
    ///
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn new(url: &str) -> Result<Self, String> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().map_err(|e| e.to_string())?;
        Ok(Self { http, base: url.trim_end_matches('/').to_owned() })
    }

    /// Silences the alert with `labels` until `ends`; the silence id.
    ///
    /// # Errors
    /// Alertmanager refused or could not be reached (the message says which).
    pub async fn silence(
        &self,
        labels: &BTreeMap<String, String>,
        ends: jiff::Timestamp,
        comment: &str,
    ) -> Result<String, String> {
        let body = json!({
            "matchers": matchers(labels),
            "startsAt": jiff::Timestamp::now().to_string(),
            "endsAt": ends.to_string(),
            "createdBy": "reflex",
            "comment": comment,
        });
        let response = self
            .http
            .post(format!("{}/api/v2/silences", self.base))
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("Alertmanager at {}: {e}", self.base))?;
        let status = response.status();
        // A silence id is a few dozen bytes: read no more than 64 KiB of any answer.
        let mut response = response;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            body.extend_from_slice(&chunk[..chunk.len().min(MAX_ANSWER - body.len().min(MAX_ANSWER))]);
            if body.len() >= MAX_ANSWER {
                break;
            }
        }
        let text = String::from_utf8_lossy(&body).into_owned();
        if !status.is_success() {
            return Err(format!("Alertmanager refused the silence ({status}): {text}"));
        }
        serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("silenceID").and_then(Value::as_str).map(str::to_owned))
            .ok_or_else(|| format!("Alertmanager answered without a silence id: {text}"))
    }

    /// Expires the silence `id` (one already gone counts as expired).
    ///
    /// # Errors
    /// Alertmanager refused or could not be reached.
    pub async fn expire(&self, id: &str) -> Result<(), String> {
        let response = self
            .http
            .delete(format!("{}/api/v2/silence/{id}", self.base))
            .send()
            .await
            .map_err(|e| format!("Alertmanager at {}: {e}", self.base))?;
        match response.status() {
            s if s.is_success() || s == reqwest::StatusCode::NOT_FOUND => Ok(()),
            s => Err(format!("Alertmanager refused to expire silence {id} ({s})")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matchers_select_exactly_the_alerts_labels() {
        let labels: BTreeMap<String, String> =
            [("alertname", "KubeContainerOOMKilled"), ("namespace", "shop"), ("pod", "a\"b")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        let m = matchers(&labels);
        assert_eq!(m.len(), 3);
        assert!(m.iter().all(|m| m["isRegex"] == false && m["isEqual"] == true));
        assert_eq!(
            m[2],
            json!({"name": "pod", "value": "a\"b", "isRegex": false, "isEqual": true}),
            "values as they are, not patterns"
        );
    }
}
