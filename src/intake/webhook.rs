//! The Alertmanager webhook (`POST /alerts`, payload version 4): matched alerts become
//! Remediations.
//!
//! Contract: the pure core ([`plan`]) decides, for every firing alert, which policies match
//! (alert name, Alertmanager matchers, and scope — a policy only acts on targets in its own
//! namespace, so the alert's `namespace` label must name it) and which Remediation that
//! means: the target from the policy's name template, the name from the policy and the alert
//! fingerprint, so a repeated delivery maps to the same object. The shell parses and
//! validates the body (400 naming the problem, nothing created), lists policies, and creates
//! the Remediations; one that already exists is a duplicate delivery, not an error.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, PostParams};
use serde::Deserialize;
use serde_json::{Value, json};

use super::template::is_dns_subdomain;
use crate::api::LocalObjectRef;
use crate::api::policy::RemediationPolicy;
use crate::api::remediation::{AlertRef, Remediation, RemediationSpec, TargetRef};
use crate::api::validate::ValidPolicy;

/// Largest accepted delivery.
pub const MAX_BODY: usize = 4 * 1024 * 1024;

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
    #[serde(default, rename = "generatorURL")]
    pub generator_url: Option<String>,
    pub fingerprint: String,
}

/// A policy as intake sees it.
#[derive(Clone, Debug)]
pub struct PolicyRef {
    pub namespace: String,
    pub name: String,
    pub policy: ValidPolicy,
}

/// What to do for one (alert, policy) match.
#[derive(Clone, Debug, PartialEq)]
pub struct Intent {
    pub namespace: String,
    pub name: String,
    pub spec: RemediationSpec,
}

/// The outcome of planning a delivery.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Planned {
    pub intents: Vec<Intent>,
    /// Firing alerts no policy matched.
    pub unmatched: usize,
    /// Alerts skipped as resolved (resolution handling is a later stage).
    pub resolved: usize,
    /// Why a matching policy could not act (missing label, bad name).
    pub problems: Vec<String>,
}

/// Validate a delivery's shape; the message names the offending field.
pub fn validate(p: &Payload) -> Result<(), String> {
    if p.version != "4" {
        return Err(format!("version: {:?} is not supported; Alertmanager sends version \"4\"", p.version));
    }
    for (i, a) in p.alerts.iter().enumerate() {
        if !matches!(a.status.as_str(), "firing" | "resolved") {
            return Err(format!("alerts[{i}].status: {:?} must be \"firing\" or \"resolved\"", a.status));
        }
        if !a.labels.contains_key("alertname") {
            return Err(format!("alerts[{i}].labels: alertname is missing"));
        }
        if a.fingerprint.is_empty()
            || !a.fingerprint.chars().all(|c| c.is_ascii_alphanumeric())
            || a.fingerprint.len() > 64
        {
            return Err(format!("alerts[{i}].fingerprint: {:?} is not an Alertmanager fingerprint", a.fingerprint));
        }
        if a.starts_at.parse::<jiff::Timestamp>().is_err() {
            return Err(format!("alerts[{i}].startsAt: {:?} is not an RFC 3339 time", a.starts_at));
        }
    }
    Ok(())
}

/// The Remediation name for a policy and an alert fingerprint.
pub fn remediation_name(policy: &str, fingerprint: &str) -> String {
    let mut name = format!("{policy}-{}", fingerprint.to_ascii_lowercase());
    name.truncate(253);
    name
}

/// Decide what a (validated) delivery means.
pub fn plan(p: &Payload, policies: &[PolicyRef]) -> Planned {
    let mut out = Planned::default();
    for a in &p.alerts {
        if a.status == "resolved" {
            out.resolved += 1;
            continue;
        }
        let alertname = a.labels.get("alertname").cloned().unwrap_or_default();
        let mut matched = false;
        for pr in policies {
            let pol = &pr.policy;
            let in_scope = a.labels.get("namespace") == Some(&pr.namespace);
            if !in_scope || !pol.alertnames.contains(&alertname) || !pol.matchers.iter().all(|m| m.matches(&a.labels)) {
                continue;
            }
            matched = true;
            let target = match pol.target_name.render(&a.labels) {
                Ok(t) => t,
                Err(e) => {
                    out.problems.push(format!(
                        "policy {}/{}: alert {alertname} ({}): {e}",
                        pr.namespace, pr.name, a.fingerprint
                    ));
                    continue;
                }
            };
            let name = remediation_name(&pr.name, &a.fingerprint);
            if !is_dns_subdomain(&name) {
                out.problems.push(format!("policy {}/{}: {name:?} is not a valid object name", pr.namespace, pr.name));
                continue;
            }
            let Ok(starts_at) = a.starts_at.parse::<jiff::Timestamp>() else { continue };
            out.intents.push(Intent {
                namespace: pr.namespace.clone(),
                name,
                spec: RemediationSpec {
                    policy_ref: LocalObjectRef { name: pr.name.clone() },
                    alert: AlertRef {
                        name: alertname.clone(),
                        fingerprint: a.fingerprint.clone(),
                        labels: a.labels.clone(),
                        annotations: a.annotations.clone(),
                        starts_at: Time(starts_at),
                        generator_url: a.generator_url.clone(),
                    },
                    target: TargetRef {
                        api_version: pol.target_kind.api_version().to_owned(),
                        kind: pol.target_kind,
                        name: target,
                    },
                    cancel: false,
                },
            });
        }
        if !matched {
            out.unmatched += 1;
        }
    }
    out
}

/// The webhook's shared state.
pub struct Intake {
    pub client: kube::Client,
}

fn reply(code: StatusCode, body: Value) -> Response {
    (code, axum::Json(body)).into_response()
}

async fn policies(client: &kube::Client) -> Result<Vec<PolicyRef>, kube::Error> {
    let list = Api::<RemediationPolicy>::all(client.clone()).list(&Default::default()).await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|p| {
            let namespace = p.metadata.namespace.clone()?;
            let name = p.metadata.name.clone()?;
            match ValidPolicy::from_spec(&p.spec) {
                Ok(policy) => Some(PolicyRef { namespace, name, policy }),
                Err(e) => {
                    tracing::warn!(policy = %format!("{namespace}/{name}"), error = %e, "skipping an invalid policy");
                    None
                }
            }
        })
        .collect())
}

async fn receive(State(intake): State<Arc<Intake>>, body: axum::body::Bytes) -> Response {
    let payload: Payload = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("not an Alertmanager webhook payload: {e}")}),
            );
        }
    };
    if let Err(e) = validate(&payload) {
        return reply(StatusCode::BAD_REQUEST, json!({"error": e}));
    }
    let policies = match policies(&intake.client).await {
        Ok(p) => p,
        Err(e) => {
            return reply(StatusCode::SERVICE_UNAVAILABLE, json!({"error": format!("cannot read policies: {e}")}));
        }
    };
    let planned = plan(&payload, &policies);
    let (mut created, mut existing, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for intent in planned.intents {
        let api: Api<Remediation> = Api::namespaced(intake.client.clone(), &intent.namespace);
        let rem = Remediation::new(&intent.name, intent.spec);
        match api
            .create(&PostParams { field_manager: Some(crate::api::MANAGER.into()), ..Default::default() }, &rem)
            .await
        {
            Ok(_) => {
                tracing::info!(remediation = %format!("{}/{}", intent.namespace, intent.name), "created from alert");
                created.push(format!("{}/{}", intent.namespace, intent.name));
            }
            Err(kube::Error::Api(s)) if s.code == 409 => existing.push(format!("{}/{}", intent.namespace, intent.name)),
            Err(e) => failed.push(format!("{}/{}: {e}", intent.namespace, intent.name)),
        }
    }
    for p in &planned.problems {
        tracing::warn!(problem = %p, "alert matched a policy but cannot be acted on");
    }
    let body = json!({"created": created, "existing": existing, "unmatched": planned.unmatched, "resolved": planned.resolved, "problems": planned.problems, "failed": failed});
    // A failed create is worth a retry from Alertmanager; everything else is done.
    reply(if failed.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, body)
}

/// The intake routes: `POST /alerts`.
pub fn router(client: kube::Client) -> axum::Router {
    axum::Router::new()
        .route("/alerts", post(receive))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(Arc::new(Intake { client }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TargetKind;
    use crate::api::policy::RemediationPolicySpec;

    fn policy(ns: &str) -> PolicyRef {
        let spec: RemediationPolicySpec = serde_json::from_value(json!({
            "match": {"alertnames": ["KubeContainerOOMKilled"], "matchers": ["severity=~\"warning|critical\""]},
            "target": {"kind": "Deployment", "name": "{{ labels.deployment }}"},
            "playbook": "raise-memory-limit",
            "trust": {"level": "auto"},
            "verify": {"query": "x", "operator": "<", "threshold": 1, "for": "2s", "timeout": "30s", "interval": "1s"}
        }))
        .unwrap();
        PolicyRef { namespace: ns.into(), name: "checkout-oom".into(), policy: ValidPolicy::from_spec(&spec).unwrap() }
    }

    fn payload(labels: Value, status: &str) -> Payload {
        serde_json::from_value(json!({"version": "4", "status": status, "alerts": [{"status": status, "labels": labels,
            "startsAt": "2026-01-01T00:00:00Z", "fingerprint": "a1b2c3d4e5f60718"}]}))
        .unwrap()
    }

    #[test]
    fn a_matching_alert_in_scope_becomes_a_remediation() {
        let p = payload(
            json!({"alertname": "KubeContainerOOMKilled", "namespace": "shop", "deployment": "checkout", "severity": "critical"}),
            "firing",
        );
        let planned = plan(&p, &[policy("shop"), policy("other")]);
        assert_eq!(planned.intents.len(), 1, "only the policy in the alert's namespace acts");
        let i = &planned.intents[0];
        assert_eq!((i.namespace.as_str(), i.name.as_str()), ("shop", "checkout-oom-a1b2c3d4e5f60718"));
        assert_eq!(i.spec.target.name, "checkout");
        assert_eq!(i.spec.target.kind, TargetKind::Deployment);
    }

    #[test]
    fn non_matching_resolved_and_unrenderable_alerts() {
        let pols = [policy("shop")];
        let low = payload(
            json!({"alertname": "KubeContainerOOMKilled", "namespace": "shop", "deployment": "checkout", "severity": "info"}),
            "firing",
        );
        assert_eq!(plan(&low, &pols).unmatched, 1);
        let resolved = payload(
            json!({"alertname": "KubeContainerOOMKilled", "namespace": "shop", "deployment": "checkout", "severity": "critical"}),
            "resolved",
        );
        assert_eq!(plan(&resolved, &pols).resolved, 1);
        let nolabel = payload(
            json!({"alertname": "KubeContainerOOMKilled", "namespace": "shop", "severity": "critical"}),
            "firing",
        );
        let planned = plan(&nolabel, &pols);
        assert!(planned.intents.is_empty() && planned.problems[0].contains("deployment"), "{:?}", planned.problems);
    }

    #[test]
    fn bad_deliveries_are_named() {
        let mut p = payload(json!({"alertname": "A"}), "firing");
        p.version = "3".into();
        assert!(validate(&p).unwrap_err().starts_with("version"));
        let mut p = payload(json!({"alertname": "A"}), "firing");
        p.alerts[0].starts_at = "yesterday".into();
        assert!(validate(&p).unwrap_err().starts_with("alerts[0].startsAt"));
        let p = payload(json!({"severity": "x"}), "firing");
        assert_eq!(validate(&p).unwrap_err(), "alerts[0].labels: alertname is missing");
    }
}
