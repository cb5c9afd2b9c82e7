//! The Alertmanager webhook's shell: `POST /alerts` (payload version 4), `GET /metrics`.
//!
//! Contract: a delivery must carry the configured bearer token (compared in constant time;
//! 401 without it) and fit the body limit (413); it is parsed strictly (400 naming the
//! field). Nothing is created for a rejected request. The pure [`super::plan`] decides; this
//! shell lists policies and Remediations, creates Remediations (labelled with policy and
//! target), records on each how often its alert was seen and when last, or that it resolved
//! (`status.alert`, field manager `reflex-intake`, under resourceVersion preconditions so
//! concurrent deliveries never lose a count), and records every suppression as an Event on
//! the policy. A create that collides with a concurrent one becomes an observation. Counters
//! and request latency are on `/metrics` (prometheus-client).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::payload::parse;
use super::plan::{Action, Existing, POLICY_LABEL, PolicyRef, TARGET_LABEL, existing_from, plan};
use crate::api::policy::RemediationPolicy;
use crate::api::remediation::{AlertObservation, AlertState, Remediation};
use crate::api::validate::ValidPolicy;

/// Largest accepted delivery.
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// Field manager of intake's status writes.
pub const INTAKE_MANAGER: &str = "reflex-intake";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

/// Intake's metrics.
pub struct Metrics {
    registry: Registry,
    received: Counter,
    matched: Counter,
    deduplicated: Counter,
    resolved: Counter,
    created: Counter,
    suppressed: Family<Reason, Counter>,
    rejected: Family<Reason, Counter>,
    truncated: Counter,
    latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("reflex_intake");
        let m = Self {
            registry: Registry::default(),
            received: Counter::default(),
            matched: Counter::default(),
            deduplicated: Counter::default(),
            resolved: Counter::default(),
            created: Counter::default(),
            suppressed: Family::default(),
            rejected: Family::default(),
            truncated: Counter::default(),
            latency: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
        };
        registry.register("alerts_received", "Alerts received in webhook deliveries", m.received.clone());
        registry.register("alerts_matched", "Alert and policy matches", m.matched.clone());
        registry.register(
            "alerts_deduplicated",
            "Matches that found their Remediation already active",
            m.deduplicated.clone(),
        );
        registry.register("alerts_resolved", "Resolutions recorded on an active Remediation", m.resolved.clone());
        registry.register("remediations_created", "Remediations created", m.created.clone());
        registry.register(
            "alerts_suppressed",
            "Matches that did not become a Remediation, by reason",
            m.suppressed.clone(),
        );
        registry.register("requests_rejected", "Deliveries rejected, by reason", m.rejected.clone());
        registry.register(
            "alerts_truncated",
            "Alerts Alertmanager left out of deliveries (truncatedAlerts)",
            m.truncated.clone(),
        );
        registry.register("request_duration_seconds", "Time to handle a delivery", m.latency.clone());
        Self { registry, ..m }
    }
}

impl Metrics {
    fn reject(&self, reason: &str) {
        self.rejected.get_or_create(&Reason { reason: reason.into() }).inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// How intake is configured.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// The bearer token deliveries must carry; `None` accepts unauthenticated deliveries
    /// (the demo, on loopback).
    pub token: Option<String>,
    /// The ConfigMap (namespace, name) whose `killSwitch: "true"` stops all new Remediations.
    pub kill_switch: Option<(String, String)>,
}

/// The webhook's shared state.
pub struct Intake {
    pub client: kube::Client,
    pub settings: Settings,
    pub metrics: Metrics,
    recorder: Recorder,
    /// Deliveries in progress are bounded; past it Alertmanager is told to retry.
    slots: tokio::sync::Semaphore,
}

/// Deliveries handled at once; more wait for Alertmanager's retry.
pub const MAX_IN_FLIGHT: usize = 16;

impl Intake {
    pub fn new(client: kube::Client, settings: Settings) -> Self {
        Self::with_capacity(client, settings, MAX_IN_FLIGHT)
    }

    /// With room for `in_flight` deliveries at once.
    pub fn with_capacity(client: kube::Client, settings: Settings, in_flight: usize) -> Self {
        let reporter = Reporter { controller: "reflex-intake".into(), instance: std::env::var("POD_NAME").ok() };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            metrics: Metrics::default(),
            slots: tokio::sync::Semaphore::new(in_flight),
        }
    }
}

fn reply(code: StatusCode, body: Value) -> Response {
    (code, axum::Json(body)).into_response()
}

fn authorized(expected: Option<&str>, headers: &HeaderMap) -> bool {
    let Some(expected) = expected else { return true };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

async fn kill_switch(client: &kube::Client, at: &Option<(String, String)>) -> Result<bool, kube::Error> {
    let Some((ns, name)) = at else { return Ok(false) };
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns).get_opt(name).await?;
    Ok(cm.and_then(|c| c.data).and_then(|d| d.get("killSwitch").cloned()).is_some_and(|v| v.trim() == "true"))
}

async fn policies(
    client: &kube::Client,
) -> Result<(Vec<PolicyRef>, BTreeMap<(String, String), ObjectReference>), kube::Error> {
    let list = Api::<RemediationPolicy>::all(client.clone()).list(&ListParams::default()).await?;
    let mut refs = BTreeMap::new();
    let mut out = Vec::new();
    for p in list.items {
        let (Some(namespace), Some(name)) = (p.metadata.namespace.clone(), p.metadata.name.clone()) else { continue };
        refs.insert(
            (namespace.clone(), name.clone()),
            ObjectReference {
                api_version: Some("reflex.dev/v1alpha1".into()),
                kind: Some("RemediationPolicy".into()),
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                uid: p.metadata.uid.clone(),
                ..ObjectReference::default()
            },
        );
        match ValidPolicy::from_spec(&p.spec) {
            Ok(policy) => out.push(PolicyRef { namespace, name, policy }),
            Err(e) => tracing::warn!(policy = %format!("{namespace}/{name}"), error = %e, "skipping an invalid policy"),
        }
    }
    Ok((out, refs))
}

/// Write `status.alert` with `update`, retrying on concurrent writes.
async fn observe(
    client: &kube::Client,
    ns: &str,
    name: &str,
    update: impl Fn(Option<&AlertObservation>) -> AlertObservation,
) -> Result<(), kube::Error> {
    let api: Api<Remediation> = Api::namespaced(client.clone(), ns);
    let mut attempt = 0;
    loop {
        let current = api.get(name).await?;
        let next = update(current.status.as_ref().and_then(|s| s.alert.as_ref()));
        let body = json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "Remediation",
            "metadata": {"name": name, "resourceVersion": current.metadata.resource_version}, "status": {"alert": next}});
        match api.patch_status(name, &PatchParams::apply(INTAKE_MANAGER).force(), &Patch::Apply(body)).await {
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < 5 => attempt += 1,
            other => return other.map(|_| ()),
        }
    }
}

fn seen_again(prev: Option<&AlertObservation>, at: jiff::Timestamp, times: u64) -> AlertObservation {
    match prev {
        Some(p) => AlertObservation {
            state: AlertState::Firing,
            times_seen: p.times_seen.saturating_add(times),
            first_seen: p.first_seen.clone(),
            last_seen: Time(at),
            resolved_at: None,
        },
        None => AlertObservation {
            state: AlertState::Firing,
            times_seen: times.max(1),
            first_seen: Time(at),
            last_seen: Time(at),
            resolved_at: None,
        },
    }
}

async fn receive(State(intake): State<Arc<Intake>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let started = Instant::now();
    // Bounded: when full, 503 with Retry-After so Alertmanager retries — never a silent drop.
    let Ok(_slot) = intake.slots.try_acquire() else {
        intake.metrics.reject("overloaded");
        let mut resp =
            reply(StatusCode::SERVICE_UNAVAILABLE, json!({"error": "busy: too many deliveries in progress; retry"}));
        resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        return resp;
    };
    let resp = handle(&intake, &headers, &body).await;
    intake.metrics.latency.observe(started.elapsed().as_secs_f64());
    resp
}

async fn handle(intake: &Intake, headers: &HeaderMap, body: &[u8]) -> Response {
    let m = &intake.metrics;
    if !authorized(intake.settings.token.as_deref(), headers) {
        m.reject("unauthorized");
        return reply(
            StatusCode::UNAUTHORIZED,
            json!({"error": "a valid bearer token is required (Authorization: Bearer <token>)"}),
        );
    }
    let payload = match parse(body) {
        Ok(p) => p,
        Err(e) => {
            m.reject("invalid");
            return reply(StatusCode::BAD_REQUEST, json!({"error": e}));
        }
    };
    m.received.inc_by(payload.alerts.len() as u64);
    if payload.truncated_alerts > 0 {
        m.truncated.inc_by(payload.truncated_alerts);
        tracing::warn!(truncated = payload.truncated_alerts, group = %payload.group_key, "Alertmanager truncated this delivery; raise max_alerts on the receiver");
    }
    let unavailable = |what: &str, e: kube::Error| {
        m.reject("unavailable");
        reply(StatusCode::SERVICE_UNAVAILABLE, json!({"error": format!("{what}: {e}")}))
    };
    let killed = match kill_switch(&intake.client, &intake.settings.kill_switch).await {
        Ok(k) => k,
        Err(e) => return unavailable("cannot read the kill switch", e),
    };
    let (policies, refs) = match policies(&intake.client).await {
        Ok(p) => p,
        Err(e) => return unavailable("cannot read policies", e),
    };
    let rems =
        match Api::<Remediation>::all(intake.client.clone()).list(&ListParams::default().labels(POLICY_LABEL)).await {
            Ok(l) => l.items,
            Err(e) => return unavailable("cannot read remediations", e),
        };
    let existing: Vec<Existing> = existing_from(&rems);
    let planned = plan(&payload, &policies, &existing, killed, jiff::Timestamp::now());
    let (mut created, mut observed, mut resolved, mut suppressed, mut failed) =
        (vec![], vec![], vec![], vec![], vec![]);
    // A grouped delivery may mention one incident many times: one write per Remediation.
    let mut sightings: BTreeMap<(String, String), u64> = BTreeMap::new();
    for a in &planned.actions {
        if let Action::Observe { namespace, name, .. } = a {
            *sightings.entry((namespace.clone(), name.clone())).or_default() += 1;
        }
    }
    let mut recorded = std::collections::BTreeSet::new();
    for action in planned.actions {
        match action {
            Action::Create { namespace, name, policy, target, spec, seen } => {
                m.matched.inc();
                // An alert naming a target that does not exist is recorded, not retried forever.
                let kind = spec.target.kind;
                let targets: Api<kube::api::DynamicObject> =
                    Api::namespaced_with(intake.client.clone(), &namespace, &crate::agent::tools::api_resource(kind));
                match targets.get_opt(&target).await {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        m.suppressed.get_or_create(&Reason { reason: "target_not_found".into() }).inc();
                        let detail = format!("{} {namespace}/{target} does not exist", kind.as_str());
                        suppressed.push(json!({"policy": format!("{namespace}/{policy}"), "target": target, "reason": "target_not_found", "detail": detail}));
                        if let Some(reference) = refs.get(&(namespace.clone(), policy.clone())) {
                            let event = Event {
                                type_: EventType::Warning,
                                reason: "TargetNotFound".into(),
                                note: Some(format!("alert not remediated: {detail}")),
                                action: "Intake".into(),
                                secondary: None,
                            };
                            if let Err(e) = intake.recorder.publish(&event, reference).await {
                                tracing::warn!(error = %e, "could not record a TargetNotFound Event");
                            }
                        }
                        continue;
                    }
                    Err(e) => {
                        failed.push(format!("{namespace}/{name}: reading the target: {e}"));
                        continue;
                    }
                }
                let mut rem = Remediation::new(&name, *spec);
                rem.metadata.namespace = Some(namespace.clone());
                rem.metadata.labels =
                    Some(BTreeMap::from([(POLICY_LABEL.to_owned(), policy), (TARGET_LABEL.to_owned(), target)]));
                let api: Api<Remediation> = Api::namespaced(intake.client.clone(), &namespace);
                let pp = PostParams { field_manager: Some(INTAKE_MANAGER.into()), ..Default::default() };
                let outcome = match api.create(&pp, &rem).await {
                    Ok(_) => {
                        m.created.inc();
                        created.push(format!("{namespace}/{name}"));
                        Ok(())
                    }
                    // Another delivery (or replica) created it first: this is a repeat.
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        m.deduplicated.inc();
                        observed.push(format!("{namespace}/{name}"));
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                let recorded = match outcome {
                    Ok(()) => {
                        let key = (namespace.clone(), name.clone());
                        let times = 1 + sightings.remove(&key).unwrap_or(0);
                        recorded.insert(key);
                        observe(&intake.client, &namespace, &name, |p| seen_again(p, seen, times)).await
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = recorded {
                    failed.push(format!("{namespace}/{name}: {e}"));
                }
            }
            Action::Observe { namespace, name, seen } => {
                m.matched.inc();
                m.deduplicated.inc();
                let key = (namespace.clone(), name.clone());
                if !recorded.insert(key.clone()) {
                    continue;
                }
                let times = sightings.remove(&key).unwrap_or(1);
                match observe(&intake.client, &namespace, &name, |p| seen_again(p, seen, times)).await {
                    Ok(()) => observed.push(format!("{namespace}/{name}")),
                    Err(e) => failed.push(format!("{namespace}/{name}: {e}")),
                }
            }
            Action::Resolve { namespace, name, at } => {
                m.resolved.inc();
                let update = |p: Option<&AlertObservation>| {
                    let mut o = seen_again(p, at, 0);
                    o.times_seen = p.map_or(1, |p| p.times_seen);
                    o.state = AlertState::Resolved;
                    o.resolved_at = Some(Time(at));
                    o
                };
                match observe(&intake.client, &namespace, &name, update).await {
                    Ok(()) => resolved.push(format!("{namespace}/{name}")),
                    Err(e) => failed.push(format!("{namespace}/{name}: {e}")),
                }
            }
            Action::Suppress { namespace, policy, target, reason, detail } => {
                m.matched.inc();
                m.suppressed.get_or_create(&Reason { reason: reason.as_str().into() }).inc();
                suppressed.push(json!({"policy": format!("{namespace}/{policy}"), "target": target, "reason": reason.as_str(), "detail": detail}));
                if let Some(reference) = refs.get(&(namespace.clone(), policy.clone())) {
                    let event = Event {
                        type_: EventType::Normal,
                        reason: "Suppressed".into(),
                        note: Some(format!("alert for {target} not remediated ({}): {detail}", reason.as_str())),
                        action: "Intake".into(),
                        secondary: None,
                    };
                    if let Err(e) = intake.recorder.publish(&event, reference).await {
                        tracing::warn!(error = %e, "could not record a suppression Event");
                    }
                }
            }
        }
    }
    for p in &planned.problems {
        tracing::warn!(problem = %p, "alert matched a policy but cannot be acted on");
    }
    let body = json!({"created": created, "observed": observed, "resolved": resolved, "suppressed": suppressed,
        "unmatched": planned.unmatched, "problems": planned.problems, "failed": failed});
    // A failed write is worth a retry from Alertmanager; everything else is done.
    reply(if failed.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, body)
}

async fn metrics(State(intake): State<Arc<Intake>>) -> Response {
    let mut resp = intake.metrics.encode().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

async fn too_large(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use futures::StreamExt;
    let too_big =
        || reply(StatusCode::PAYLOAD_TOO_LARGE, json!({"error": format!("the body is larger than {MAX_BODY} bytes")}));
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        // Read (and drop) what the client is sending, up to a bound, so it gets to see the
        // 413 instead of a reset connection.
        let mut stream = req.into_body().into_data_stream();
        let mut drained = 0usize;
        while let Some(Ok(chunk)) = stream.next().await {
            drained += chunk.len();
            if drained > 8 * MAX_BODY {
                break;
            }
        }
        return too_big();
    }
    let resp = next.run(req).await;
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return too_big();
    }
    resp
}

/// The intake routes: `POST /alerts`, `GET /metrics`, `GET /healthz`.
pub fn router(intake: Arc<Intake>) -> axum::Router {
    axum::Router::new()
        .route("/alerts", post(receive))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(too_large))
        .with_state(intake)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        let mut h = HeaderMap::new();
        assert!(!authorized(Some("s3cret"), &h));
        h.insert(header::AUTHORIZATION, "Bearer s3cre".parse().unwrap());
        assert!(!authorized(Some("s3cret"), &h));
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(authorized(Some("s3cret"), &h));
        assert!(authorized(None, &HeaderMap::new()));
    }

    #[test]
    fn observations_count_and_keep_first_seen() {
        let t0: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: jiff::Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
        let first = seen_again(None, t0, 1);
        let second = seen_again(Some(&first), t1, 3);
        assert_eq!((second.times_seen, second.first_seen.0, second.last_seen.0), (4, t0, t1));
    }

    #[test]
    fn metrics_expose_counters_by_reason() {
        let m = Metrics::default();
        m.reject("unauthorized");
        m.suppressed.get_or_create(&Reason { reason: "cooldown".into() }).inc();
        let text = m.encode();
        assert!(text.contains("reflex_intake_requests_rejected_total{reason=\"unauthorized\"} 1"), "{text}");
        assert!(text.contains("reflex_intake_alerts_suppressed_total{reason=\"cooldown\"} 1"), "{text}");
    }
}
