//! Telling people: a message to a Slack-compatible incoming webhook (or a generic JSON
//! webhook) when a Remediation waits for approval, succeeds, is rolled back, escalates or
//! ends unverified.
//!
//! Contract: [`message`] is pure: the summary, the change, the verdict with its numbers and
//! the exact command to act. [`Notifier::send`] delivers it in the background — retried with
//! backoff, never blocking the loop — and counts deliveries and failures (on `/metrics` once
//! registered). A webhook URL comes from a Secret a namespace user writes, so it is judged
//! first ([`check_url`]): https only (plain http only where the operator allows it, for
//! tests), never a link-local address (cloud metadata endpoints).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::{Value, json};

use crate::api::Remediation;
use crate::api::policy::NotifyFormat;
use crate::api::remediation::Phase;

/// The phases people are told about.
pub const TOLD: &[Phase] =
    &[Phase::AwaitingApproval, Phase::Succeeded, Phase::RolledBack, Phase::Escalated, Phase::Unverified];

/// Longest message text (Slack truncates far beyond this; people read far less).
const MAX_TEXT: usize = 3000;

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The message for `rem` entering `phase` because of `reason` (`message`), in `format`.
pub fn message(rem: &Remediation, phase: Phase, reason: &str, detail: &str, format: NotifyFormat) -> Value {
    let name = rem.metadata.name.clone().unwrap_or_default();
    let namespace = rem.metadata.namespace.clone().unwrap_or_default();
    let status = rem.status.as_ref();
    let target = format!("{} {namespace}/{}", rem.spec.target.kind.as_str(), rem.spec.target.name);
    let change = status
        .and_then(|s| s.proposal.as_ref())
        .map(|p| truncate(&format!("{:?} patch {}: {}", p.patch_type, p.digest, p.patch.0), 1200));
    let verdict = status.and_then(|s| s.verification.as_ref()).map(|v| {
        let values: Vec<String> =
            v.samples.iter().rev().take(5).rev().map(|s| s.value.map_or("–".to_owned(), |x| x.to_string())).collect();
        format!("{:?}: {} (last samples: {})", v.verdict, v.message.clone().unwrap_or_default(), values.join(", "))
    });
    let command = match phase {
        Phase::AwaitingApproval => format!(
            "kubectl reflex describe {name} -n {namespace}   # then: kubectl reflex approve {name} -n {namespace}  (or reject)"
        ),
        _ => format!("kubectl reflex describe {name} -n {namespace}"),
    };
    let mut text = format!(
        "*Reflex* {namespace}/{name}: *{phase}* ({reason}) — {detail}\nTarget: {target} · alert {}",
        rem.spec.alert.name
    );
    // What Reflex found: for a policy that only diagnoses, this is the whole message.
    let findings: Vec<String> = status
        .and_then(|s| s.diagnosis.as_ref())
        .map(|d| d.findings.iter().take(10).map(|f| truncate(&f.detail, 300)).collect())
        .unwrap_or_default();
    if !findings.is_empty() {
        text.push_str("\nFindings:");
        for f in &findings {
            text.push_str(&format!("\n• {f}"));
        }
    }
    if let Some(c) = &change {
        text.push_str(&format!("\nChange: {c}"));
    }
    if let Some(v) = &verdict {
        text.push_str(&format!("\nVerification: {v}"));
    }
    text.push_str(&format!("\nAct: `{command}`"));
    let text = truncate(&text, MAX_TEXT);
    match format {
        NotifyFormat::Slack => json!({"text": slack_escaped(&text)}),
        NotifyFormat::Json => json!({
            "remediation": name, "namespace": namespace, "phase": phase.as_str(), "reason": reason,
            "message": detail, "target": target, "alert": rem.spec.alert.name,
            "findings": findings, "change": change, "verification": verdict, "command": command, "text": text,
        }),
    }
}

/// `text` as Slack shows it literally: `&`, `<` and `>` escaped, so a finding quoted from a
/// pod log or an alert cannot mention `<!channel>` or hide a link.
fn slack_escaped(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Whether `url` may be posted to.
///
/// # Errors
/// Not a URL, not https (unless `allow_http`), or a link-local host.
pub fn check_url(url: &str, allow_http: bool) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url.trim()).map_err(|e| format!("not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_http => {}
        other => return Err(format!("scheme {other:?} is not allowed: use https")),
    }
    let host = parsed.host_str().unwrap_or_default();
    if host.is_empty() || host.eq_ignore_ascii_case("metadata.google.internal") {
        return Err("a link-local or metadata host is not allowed".to_owned());
    }
    crate::egress::check_url(url.trim()).map_err(|_| "a link-local or metadata host is not allowed".to_owned())?;
    Ok(parsed)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// `delivered` or `failed`.
    pub outcome: &'static str,
}

/// Delivers messages in the background.
#[derive(Clone, Debug)]
pub struct Notifier {
    http: reqwest::Client,
    /// Plain http allowed (tests, a receiver on loopback).
    pub allow_http: bool,
    /// Deliveries by outcome.
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// Delays between attempts.
    pub backoff: Arc<Vec<Duration>>,
}

impl Notifier {
    /// A notifier; `allow_http` permits plain-http webhooks.
    ///
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn new(allow_http: bool) -> Result<Self, String> {
        // Webhook URLs come from Secrets namespace users write: no redirects, no link-local or
        // metadata address, by name or by number.
        let http = crate::egress::client(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        Ok(Self {
            http,
            allow_http,
            deliveries: Family::default(),
            backoff: Arc::new(vec![Duration::from_secs(1), Duration::from_secs(4), Duration::from_secs(15)]),
        })
    }

    /// Registers the delivery counters.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        // Both outcomes from the start: a dashboard shows 0, not "no data".
        for outcome in ["delivered", "failed"] {
            self.deliveries.get_or_create(&DeliveryLabels { outcome }).inc_by(0);
        }
        registry.register("notifications", "Notifications by outcome", self.deliveries.clone());
    }

    /// Counts a notification that could not even be attempted (no URL, a refused one).
    pub fn failed(&self) {
        self.deliveries.get_or_create(&DeliveryLabels { outcome: "failed" }).inc();
    }

    /// Posts `body` to `url` in the background, retried with backoff; the outcome counted.
    pub fn send(&self, url: reqwest::Url, body: Value) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut delays = this.backoff.iter();
            loop {
                let attempt = this.http.post(url.clone()).json(&body).send().await;
                match attempt {
                    Ok(r) if r.status().is_success() => {
                        this.deliveries.get_or_create(&DeliveryLabels { outcome: "delivered" }).inc();
                        return;
                    }
                    other => {
                        let why = other.map_or_else(|e| e.to_string(), |r| r.status().to_string());
                        match delays.next() {
                            Some(d) => {
                                tracing::debug!(error = %why, "notification not delivered; retrying");
                                tokio::time::sleep(*d).await;
                            }
                            None => {
                                tracing::warn!(error = %why, "notification not delivered; giving up");
                                this.failed();
                                return;
                            }
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_and_never_link_local_unless_allowed() {
        assert!(check_url("https://hooks.slack.com/services/T/B/X", false).is_ok());
        assert!(check_url("http://hooks.example.com/x", false).unwrap_err().contains("use https"));
        assert!(check_url("http://127.0.0.1:8080/hook", true).is_ok());
        assert!(check_url("https://169.254.169.254/latest/meta-data", false).unwrap_err().contains("link-local"));
        assert!(check_url("https://[fe80::1]/x", false).is_err());
        assert!(check_url("https://metadata.google.internal/x", false).is_err());
        assert!(check_url("file:///etc/passwd", true).is_err());
        assert!(check_url("not a url", true).is_err());
    }

    #[test]
    fn failures_are_counted() {
        crate::install_crypto_provider();
        let notifier = Notifier::new(false).unwrap();
        let mut registry = prometheus_client::registry::Registry::with_prefix("reflex");
        notifier.register(&mut registry);
        notifier.failed();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains(r#"reflex_notifications_total{outcome="failed"} 1"#), "{text}");
    }

    #[test]
    fn the_message_names_what_happened_and_the_command_to_act() {
        let rem: Remediation = serde_json::from_value(json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "Remediation",
            "metadata": {"name": "checkout-oom-1", "namespace": "shop"},
            "spec": {"policyRef": {"name": "p"}, "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "checkout"},
                     "alert": {"name": "KubeContainerOOMKilled", "fingerprint": "f", "startsAt": "2026-01-01T00:00:00Z"}},
            "status": {"phase": "AwaitingApproval", "proposal": {"patchType": "strategic", "digest": "sha256:ab",
                "patch": {"spec": {"replicas": 3}}, "rationale": "r", "producedBy": "playbook"}}}))
        .unwrap();
        let slack =
            message(&rem, Phase::AwaitingApproval, "ApprovalRequired", "production, trust auto", NotifyFormat::Slack);
        let text = slack["text"].as_str().unwrap();
        assert!(text.contains("shop/checkout-oom-1: *AwaitingApproval* (ApprovalRequired)"), "{text}");
        assert!(text.contains(r#"{"spec":{"replicas":3}}"#), "{text}");
        assert!(text.contains("kubectl reflex approve checkout-oom-1 -n shop"), "{text}");
        let generic = message(&rem, Phase::AwaitingApproval, "ApprovalRequired", "x", NotifyFormat::Json);
        assert_eq!(generic["phase"], "AwaitingApproval");
        assert_eq!(generic["target"], "Deployment shop/checkout");
    }

    #[test]
    fn a_diagnosis_reaches_people_and_what_it_quotes_cannot_ping_the_channel() {
        let rem: Remediation = serde_json::from_value(json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "Remediation",
            "metadata": {"name": "nightly-1", "namespace": "shop"},
            "spec": {"policyRef": {"name": "p"}, "target": {"apiVersion": "batch/v1", "kind": "Job", "name": "nightly"},
                     "alert": {"name": "KubeJobFailed", "fingerprint": "f", "startsAt": "2026-01-01T00:00:00Z"}},
            "status": {"phase": "Escalated", "diagnosis": {"summary": "s", "findings": [
                {"source": "playbook diagnose-failed-job read job", "detail": "job: failed 3 times, reason BackoffLimitExceeded"},
                {"source": "playbook diagnose-failed-job read logs", "detail": "logs: <!channel> error & <https://evil.example|click>"}]}}}))
        .unwrap();
        let slack = message(&rem, Phase::Escalated, "Diagnosed", "diagnosis only", NotifyFormat::Slack);
        let text = slack["text"].as_str().unwrap();
        assert!(text.contains("Findings:\n• job: failed 3 times, reason BackoffLimitExceeded"), "{text}");
        assert!(text.contains("logs: &lt;!channel&gt; error &amp; &lt;https://evil.example|click&gt;"), "{text}");
        assert!(!text.contains("<!channel>") && !text.contains("Change:"), "{text}");
        let generic = message(&rem, Phase::Escalated, "Diagnosed", "diagnosis only", NotifyFormat::Json);
        assert_eq!(generic["findings"][0], "job: failed 3 times, reason BackoffLimitExceeded");
    }
}
