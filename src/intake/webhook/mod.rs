//! The Alertmanager webhook's shell: `POST /alerts` (payload version 4), `GET /metrics`,
//! `GET /healthz`, `GET /readyz`.
//!
//! Contract: a delivery must carry the configured bearer token (compared in constant time;
//! 401 without it) and fit the body limit (413); it is parsed strictly (400 naming the
//! field). Nothing is created for a rejected request. A delivery is planned by the pure
//! [`super::plan`] from memory ([`super::known`]: watched policies, Remediations and kill
//! switch; 503 until they have listed) and its writes go to the bounded, coalescing
//! [`super::queue`] whole or not at all (503 + Retry-After when full — never a silent drop).
//! Creates and resolutions are confirmed before the delivery is answered 200 (a failure is a
//! 503, so Alertmanager retries); sightings of an active Remediation are written behind,
//! coalesced, one status write per Remediation however many alerts named it. Workers create
//! Remediations (labelled with policy and target; a create that collides with a concurrent
//! one becomes an observation) and write `status.alert` (field manager `reflex-intake`,
//! under resourceVersion preconditions so concurrent writers never lose a count). Every
//! suppression is an Event on the policy, once per delivery, policy, target and reason.
//! Counters, queue depth and request latency are on `/metrics` (prometheus-client).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};

use super::known;
use super::payload::Payload;
use super::payload::parse;
use super::plan::{Action, Existing, POLICY_LABEL, PolicyRef, Resolved, TARGET_LABEL, matches, plan_with, resolves};
use super::queue::{Creation, Done, Key, Op, Queue, Want, Work};
use super::resolve::{NAMING_LABELS, Reader, Unresolved, resolve};
use crate::api::TargetKind;
use crate::api::remediation::{AlertObservation, Remediation};

mod metrics;
mod resolution;

pub use metrics::*;
use resolution::*;

/// Largest accepted delivery.
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// Field manager of intake's status writes.
pub const INTAKE_MANAGER: &str = "reflex-intake";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
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

/// How much intake takes on at once.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Deliveries handled at once; more are answered 503 + Retry-After.
    pub in_flight: usize,
    /// Remediations with unwritten work; a delivery that would exceed it is answered 503.
    pub queue: usize,
    /// Concurrent writers draining the queue.
    pub workers: usize,
    /// How long sightings of an active Remediation are coalesced before they are written
    /// (creates and resolutions are written at once).
    pub coalesce: Duration,
}

/// Deliveries handled at once; more wait for Alertmanager's retry.
pub const MAX_IN_FLIGHT: usize = 16;

impl Default for Limits {
    fn default() -> Self {
        Self { in_flight: MAX_IN_FLIGHT, queue: 10_000, workers: 8, coalesce: Duration::from_secs(1) }
    }
}

/// How long a delivery waits for the writes it must confirm (creates, resolutions) before
/// it asks Alertmanager to retry.
const CONFIRM_WITHIN: Duration = Duration::from_secs(10);

/// Failed writes of one Remediation's work before it is dropped (and counted).
const MAX_ATTEMPTS: u32 = 5;

/// Events waiting to be published; past it they are counted and dropped (Events are
/// best-effort; the metrics always count).
const EVENT_BACKLOG: usize = 1024;

struct Shared {
    client: kube::Client,
    settings: Settings,
    metrics: Metrics,
    known: known::Shared,
    queue: Queue,
    events: mpsc::Sender<(ObjectReference, Event)>,
    /// Deliveries in progress are bounded; past it Alertmanager is told to retry.
    slots: tokio::sync::Semaphore,
    /// True once the watches have listed.
    synced: tokio::sync::watch::Receiver<bool>,
    /// Reads what an alert names, for policies that resolve their target (`target.kinds`).
    reader: Option<Arc<dyn Reader>>,
    /// Targets resolved recently, by (namespace, the labels that name it, the kinds acted on):
    /// repeats of an alert, and its resolution after the Pod has gone, find it here.
    resolutions: moka::future::Cache<ResolutionKey, Resolution>,
    /// The alerts Alertmanager delivered (authenticated), as delivered, by fingerprint: a
    /// hand-off replays only these — never what a Remediation's spec says.
    delivered: moka::future::Cache<String, Value>,
}

/// How long a delivered alert is remembered for a hand-off (Alertmanager repeats a firing
/// alert every `repeat_interval`, hours by default).
const DELIVERED_TTL: Duration = Duration::from_secs(24 * 3600);

/// What a resolution is remembered by: (namespace, the labels that name the target, the kinds
/// acted on).
type ResolutionKey = (String, String, String);
/// A target resolved, or why not.
type Resolution = Result<(TargetKind, String), Unresolved>;
/// A match waiting for a resolution: (policy namespace, policy name, alert fingerprint).
type Match = (String, String, String);
/// What one resolution asks: the namespace, the labels that name the target, the kinds.
type Question = (String, BTreeMap<String, String>, Vec<TargetKind>);

/// How long a resolved target is remembered.
const RESOLUTION_TTL: Duration = Duration::from_secs(3600);
/// Longest one resolution may take.
const RESOLVE_WITHIN: Duration = Duration::from_secs(5);

/// The webhook: its caches, its queue and its workers. Dropping it stops them.
pub struct Intake {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Intake {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Intake {
    /// Registers more metrics to be served on intake's `/metrics`.
    pub fn register_metrics(&self, f: impl FnOnce(&mut Registry)) {
        self.shared.metrics.register(f);
    }

    /// Start watching policies, Remediations and the kill switch, and the queue's workers.
    pub fn start(client: kube::Client, settings: Settings) -> Arc<Self> {
        Self::start_with(client, settings, Limits::default())
    }

    pub fn start_with(client: kube::Client, settings: Settings, limits: Limits) -> Arc<Self> {
        Self::start_resolving(client, settings, limits, None)
    }

    /// [`Self::start_with`], resolving the targets of policies that name kinds through `reader`.
    pub fn start_resolving(
        client: kube::Client,
        settings: Settings,
        limits: Limits,
        reader: Option<Arc<dyn Reader>>,
    ) -> Arc<Self> {
        let known: known::Shared = Arc::default();
        let (handoff, mut handed_off) = mpsc::channel(HANDOFF_BACKLOG);
        known::lock(&known).handoff = Some(handoff);
        let (mut tasks, synced) = known::watch(&client, &known, settings.kill_switch.as_ref());
        let (events, mut rx) = mpsc::channel::<(ObjectReference, Event)>(EVENT_BACKLOG);
        let reporter = Reporter { controller: "reflex-intake".into(), instance: std::env::var("POD_NAME").ok() };
        let recorder = Recorder::new(client.clone(), reporter);
        tasks.push(tokio::spawn(async move {
            while let Some((reference, event)) = rx.recv().await {
                if let Err(e) = recorder.publish(&event, &reference).await {
                    tracing::warn!(error = %e, reason = %event.reason, "could not record an intake Event");
                }
            }
        }));
        let shared = Arc::new(Shared {
            client,
            settings,
            metrics: Metrics::default(),
            known,
            queue: Queue::new(limits.queue, limits.coalesce),
            events,
            slots: tokio::sync::Semaphore::new(limits.in_flight),
            synced,
            reader,
            // Failures are remembered briefly (a Pod appearing a moment later is found).
            resolutions: moka::future::Cache::builder().max_capacity(10_000).expire_after(ResolutionExpiry).build(),
            delivered: moka::future::Cache::builder().max_capacity(10_000).time_to_live(DELIVERED_TTL).build(),
        });
        // A Remediation that stood aside while its alert fires: the alert is planned again, as
        // if delivered, so another policy that matches it acts now rather than at
        // Alertmanager's next repeat (hours away); the one that stood aside is not retried.
        {
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(r) = handed_off.recv().await {
                    let mut synced = shared.synced.clone();
                    if synced.wait_for(|s| *s).await.is_err() {
                        return;
                    }
                    let name = r.metadata.name.clone().unwrap_or_default();
                    let Some(body) = handoff_payload(&shared.delivered, &r).await else {
                        tracing::info!(remediation = %name,
                            "its playbook did not apply; its alert is not one this intake saw firing in its namespace, so nothing is planned again");
                        continue;
                    };
                    let status = handle(&shared, body.to_string().as_bytes()).await.status();
                    tracing::info!(remediation = %name, %status,
                        "its playbook did not apply; the alert is planned again for the other policies");
                }
            }));
        }
        for _ in 0..limits.workers.max(1) {
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let (key, work) = shared.queue.take().await;
                    let retry = write(&shared, &key, work).await;
                    let retry = retry.map(|w| {
                        let at = tokio::time::Instant::now() + backoff(w.attempts);
                        (w, at)
                    });
                    shared.queue.done(&key, retry);
                    shared.metrics.queued.set(shared.queue.len() as i64);
                }
            }));
        }
        Arc::new(Self { shared, tasks })
    }

    /// Wait until intake's watches have listed (it answers 503 until then).
    pub async fn ready(&self) {
        let mut synced = self.shared.synced.clone();
        let _ = synced.wait_for(|s| *s).await;
    }
}

/// Queued hand-offs; past it one is dropped (with a log line), never blocking the watch.
const HANDOFF_BACKLOG: usize = 256;

/// A delivery of the alert `r` stood aside for, as Alertmanager last delivered it — only when
/// that alert still fires and belongs to `r`'s namespace. What the Remediation's spec says is
/// never replayed: anyone who may create a Remediation writes it.
async fn handoff_payload(
    delivered: &moka::future::Cache<String, Value>,
    r: &crate::api::remediation::Remediation,
) -> Option<Value> {
    let alert = delivered.get(&r.spec.alert.fingerprint).await?;
    let namespace = r.metadata.namespace.as_deref()?;
    let firing = alert.get("status").and_then(Value::as_str) == Some("firing");
    let ours = alert.pointer("/labels/namespace").and_then(Value::as_str) == Some(namespace);
    (firing && ours).then(|| {
        json!({"version": "4", "status": "firing", "receiver": "reflex-handoff", "groupKey": "", "truncatedAlerts": 0,
            "alerts": [alert]})
    })
}

fn reply(code: StatusCode, body: Value) -> Response {
    (code, axum::Json(body)).into_response()
}

/// 503 + `Retry-After`, so Alertmanager retries.
fn retry_later(body: Value) -> Response {
    let mut resp = reply(StatusCode::SERVICE_UNAVAILABLE, body);
    resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
    resp
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

enum Created {
    New,
    Existed,
    NoTarget(String),
    /// The name belongs to a Remediation of another policy or target.
    Clash(String),
}

async fn create(client: &kube::Client, ns: &str, name: &str, c: &Creation) -> Result<Created, kube::Error> {
    // An alert naming a target that does not exist is recorded, not retried forever.
    let kind = c.spec.target.kind;
    let targets: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &crate::cluster::api_resource(kind));
    let target = &c.spec.target.name;
    if targets.get_opt(target).await?.is_none() {
        return Ok(Created::NoTarget(format!("{} {ns}/{target} does not exist", kind.as_str())));
    }
    let labels =
        BTreeMap::from([(POLICY_LABEL.to_owned(), c.policy.clone()), (TARGET_LABEL.to_owned(), c.target.clone())]);
    let mut rem = Remediation::new(name, (*c.spec).clone());
    rem.metadata.namespace = Some(ns.to_owned());
    rem.metadata.labels = Some(labels.clone());
    let api = Api::<Remediation>::namespaced(client.clone(), ns);
    let pp = PostParams { field_manager: Some(INTAKE_MANAGER.into()), ..Default::default() };
    match api.create(&pp, &rem).await {
        Ok(_) => Ok(Created::New),
        // Another delivery (or replica) created it first — if it is this incident's.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let theirs = api.get_opt(name).await?.map(|r| r.metadata.labels.unwrap_or_default()).unwrap_or_default();
            let same = labels.iter().all(|(k, v)| theirs.get(k) == Some(v));
            Ok(if same {
                Created::Existed
            } else {
                Created::Clash(format!(
                    "{ns}/{name} already exists for policy {:?}, target {:?}; rename the policy",
                    theirs.get(POLICY_LABEL).map_or("", String::as_str),
                    theirs.get(TARGET_LABEL).map_or("", String::as_str),
                ))
            })
        }
        Err(e) => Err(e),
    }
}

fn publish(s: &Shared, reference: Option<ObjectReference>, event: Event) {
    let Some(reference) = reference else { return };
    if s.events.try_send((reference, event)).is_err() {
        s.metrics.events_dropped.inc();
    }
}

/// A worker writes one Remediation's queued work; `Some` is work to try again.
async fn write(s: &Shared, key: &Key, mut work: Work) -> Option<Work> {
    let (ns, name) = key;
    let m = &s.metrics;
    if let Some(c) = work.create.take() {
        let refused = |reason: &str, detail: String| {
            m.suppressed.get_or_create(&Reason { reason: reason.into() }).inc();
            let reference = {
                let mut known = known::lock(&s.known);
                known.abandon(key);
                known.reference(ns, &c.policy)
            };
            let event_reason = if reason == "target_not_found" { "TargetNotFound" } else { "NameClash" };
            publish(s, reference, event(EventType::Warning, event_reason, format!("alert not remediated: {detail}")));
        };
        match create(&s.client, ns, name, &c).await {
            Ok(Created::New) => {
                m.created.inc();
                known::lock(&s.known).confirm(key);
                work.finish(Some(Want::Create), &Done::Created);
            }
            Ok(Created::Existed) => {
                m.deduplicated.inc();
                known::lock(&s.known).confirm(key);
                work.finish(Some(Want::Create), &Done::AlreadyExisted);
            }
            Ok(Created::NoTarget(detail)) => {
                refused("target_not_found", detail.clone());
                work.finish(None, &Done::TargetNotFound(detail));
                return None;
            }
            Ok(Created::Clash(detail)) => {
                refused("name_clash", detail.clone());
                work.finish(None, &Done::Clash(detail));
                return None;
            }
            Err(e) => {
                // Forget it, so Alertmanager's retry plans the create afresh and waits for it.
                known::lock(&s.known).abandon(key);
                work.create = Some(c);
                return failed(s, key, work, &e);
            }
        }
    }
    if work.writes_status() {
        match observe(&s.client, ns, name, |p| work.observation(p)).await {
            Ok(()) => {}
            Err(kube::Error::Api(st)) if st.code == 404 => {
                tracing::info!(remediation = %format!("{ns}/{name}"), "deleted before its sightings were written");
                work.finish(None, &Done::Failed(format!("{ns}/{name} was deleted")));
                return None;
            }
            Err(e) => return failed(s, key, work, &e),
        }
    }
    work.finish(None, &Done::Recorded);
    None
}

fn failed(s: &Shared, key: &Key, mut work: Work, e: &kube::Error) -> Option<Work> {
    // Deliveries waiting on it answer 503, so Alertmanager retries too.
    work.finish(None, &Done::Failed(e.to_string()));
    work.attempts += 1;
    let remediation = format!("{}/{}", key.0, key.1);
    if work.attempts < MAX_ATTEMPTS {
        tracing::warn!(%remediation, attempt = work.attempts, error = %e, "intake write failed; retrying");
        return Some(work);
    }
    s.metrics.writes_failed.inc();
    tracing::error!(%remediation, error = %e, sightings = work.times, "intake gave up writing; Alertmanager's next delivery will try again");
    None
}

/// Backoff before failed work is tried again: 200 ms doubling, at most 6.4 s.
fn backoff(attempts: u32) -> Duration {
    Duration::from_millis(200u64 << attempts.saturating_sub(1).min(5))
}

fn event(type_: EventType, reason: &str, note: String) -> Event {
    Event { type_, reason: reason.into(), note: Some(note), action: "Intake".into(), secondary: None }
}

/// How long a delivery may take to send its body once its headers are in.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// A delivery: the token first (401 before a byte of the body is read), then a slot (503
/// when all are taken), then the body — at most [`MAX_BODY`], within [`BODY_TIMEOUT`].
async fn receive(State(intake): State<Arc<Intake>>, req: axum::extract::Request) -> Response {
    let started = Instant::now();
    let s = &intake.shared;
    let (parts, body) = req.into_parts();
    if !authorized(s.settings.token.as_deref(), &parts.headers) {
        s.metrics.reject("unauthorized");
        return reply(
            StatusCode::UNAUTHORIZED,
            json!({"error": "a valid bearer token is required (Authorization: Bearer <token>)"}),
        );
    }
    // Bounded: when full, 503 with Retry-After so Alertmanager retries — never a silent drop.
    let Ok(_slot) = s.slots.try_acquire() else {
        s.metrics.reject("overloaded");
        return retry_later(json!({"error": "busy: too many deliveries in progress; retry"}));
    };
    let body = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => {
            s.metrics.reject("invalid");
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": format!("the body is larger than {MAX_BODY} bytes")}),
            );
        }
        Err(_) => {
            s.metrics.reject("invalid");
            return reply(
                StatusCode::REQUEST_TIMEOUT,
                json!({"error": format!("the body did not arrive within {}s", BODY_TIMEOUT.as_secs())}),
            );
        }
    };
    let resp = handle(s, &body).await;
    s.metrics.latency.observe(started.elapsed().as_secs_f64());
    resp
}

/// An authenticated delivery's body.
async fn handle(s: &Shared, body: &[u8]) -> Response {
    let m = &s.metrics;
    let payload = match parse(body) {
        Ok(p) => p,
        Err(e) => {
            m.reject("invalid");
            return reply(StatusCode::BAD_REQUEST, json!({"error": e}));
        }
    };
    if !*s.synced.borrow() {
        m.reject("starting");
        return retry_later(json!({"error": "starting: intake has not yet listed policies and Remediations"}));
    }
    // Remembered as delivered, for a hand-off (its latest state: a resolution ends it).
    for a in &payload.alerts {
        s.delivered
            .insert(
                a.fingerprint.clone(),
                json!({"status": a.status, "labels": a.labels, "annotations": a.annotations, "startsAt": a.starts_at,
                "endsAt": a.ends_at_raw, "generatorURL": a.generator_url, "fingerprint": a.fingerprint}),
            )
            .await;
    }
    // The policies as they are now, read once for resolving and planning.
    let policies = known::lock(&s.known).policies();
    let resolved = resolve_targets(s, &payload, &policies).await;
    let now = jiff::Timestamp::now();
    let mut observed = BTreeSet::new();
    let mut suppressed = BTreeMap::new();
    let mut confirm = Vec::new();
    let (mut matched, mut deduplicated) = (0u64, 0u64);
    let planned = {
        let mut known = known::lock(&s.known);
        let existing = known.existing();
        let planned = plan_with(&payload, &policies, &existing, &resolved, known.kill_switch, now);
        let mut batch = Vec::with_capacity(planned.actions.len());
        let mut creating = Vec::new();
        for action in &planned.actions {
            match action {
                Action::Create { namespace, name, policy, target, spec, seen, alert } => {
                    let fingerprint = alert.fingerprint.clone();
                    matched += 1;
                    let key = (namespace.clone(), name.clone());
                    let (tx, rx) = oneshot::channel();
                    let creation =
                        Box::new(Creation { policy: policy.clone(), target: target.clone(), spec: spec.clone() });
                    let op = Op::Create { creation, at: *seen, alert: alert.clone() };
                    batch.push((key.clone(), op, Some((Want::Create, tx))));
                    let context = json!({"policy": format!("{namespace}/{policy}"), "target": target});
                    confirm.push((key, Asked::Create, context, rx));
                    creating.push(Existing::creating(namespace, name, policy, target, &fingerprint, now));
                }
                Action::Observe { namespace, name, seen, alert } => {
                    matched += 1;
                    deduplicated += 1;
                    let key = (namespace.clone(), name.clone());
                    let op = Op::Seen { at: *seen, alert: alert.clone() };
                    // A create still on its way: wait for its outcome (it may fail).
                    if known.unconfirmed(&key) {
                        let (tx, rx) = oneshot::channel();
                        batch.push((key.clone(), op, Some((Want::Create, tx))));
                        confirm.push((key, Asked::Observe, Value::Null, rx));
                    } else {
                        batch.push((key.clone(), op, None));
                        observed.insert(key);
                    }
                }
                Action::Resolve { namespace, name, at, alert } => {
                    let key = (namespace.clone(), name.clone());
                    let (tx, rx) = oneshot::channel();
                    batch.push((key.clone(), Op::Resolved { at: *at, alert: alert.clone() }, Some((Want::Status, tx))));
                    confirm.push((key, Asked::Resolve, Value::Null, rx));
                }
                Action::Suppress { namespace, policy, target, reason, detail } => {
                    matched += 1;
                    let entry = suppressed.entry((namespace.clone(), policy.clone(), target.clone(), reason.as_str()));
                    let (_, _, count) =
                        entry.or_insert_with(|| (detail.clone(), known.reference(namespace, policy), 0u64));
                    *count += 1;
                }
            }
        }
        if let Err(full) = s.queue.offer(batch) {
            m.reject("queue_full");
            let error =
                format!("busy: {} Remediations have writes waiting (capacity {}); retry", full.pending, full.capacity);
            return retry_later(json!({ "error": error }));
        }
        for e in creating {
            known.creating(e);
        }
        planned
    };
    // Counted once the delivery is accepted, so a refused one counts nothing twice.
    m.received.inc_by(payload.alerts.len() as u64);
    if payload.truncated_alerts > 0 {
        m.truncated.inc_by(payload.truncated_alerts);
        tracing::warn!(truncated = payload.truncated_alerts, group = %payload.group_key, "Alertmanager truncated this delivery; raise max_alerts on the receiver");
    }
    m.matched.inc_by(matched);
    m.deduplicated.inc_by(deduplicated);
    m.queued.set(s.queue.len() as i64);
    let mut suppressed_out = Vec::new();
    for ((namespace, policy, target, reason), (detail, reference, count)) in suppressed {
        m.suppressed.get_or_create(&Reason { reason: reason.into() }).inc_by(count);
        let note = format!("alert for {target} not remediated ({reason}): {detail}");
        publish(s, reference, event(EventType::Normal, "Suppressed", note));
        suppressed_out.push(
            json!({"policy": format!("{namespace}/{policy}"), "target": target, "reason": reason, "detail": detail}),
        );
    }
    // One Warning per (policy, reason) and delivery, however many alerts it covers.
    let mut grouped: BTreeMap<(String, String, &'static str), (String, u64)> = BTreeMap::new();
    for u in &planned.unresolved {
        m.unresolved.get_or_create(&Reason { reason: u.reason.into() }).inc();
        let entry = grouped.entry((u.namespace.clone(), u.policy.clone(), u.reason)).or_insert_with(|| {
            (format!("alert {} names no target policy {} acts on: {}", u.alert, u.policy, u.message), 0)
        });
        entry.1 += 1;
        suppressed_out.push(json!({"policy": format!("{}/{}", u.namespace, u.policy), "reason": "target_not_resolved",
            "detail": format!("{}: {}", u.reason, u.message)}));
    }
    for ((namespace, policy, _), (first, count)) in grouped {
        let reference = known::lock(&s.known).reference(&namespace, &policy);
        let more = if count > 1 { format!(" (and {} more like it)", count - 1) } else { String::new() };
        let first: String = first.chars().take(360).collect();
        let note = format!("{first}{more}");
        publish(s, reference, event(EventType::Warning, "TargetNotResolved", note));
    }
    let mut problems = planned.problems;
    for p in &problems {
        tracing::warn!(problem = %p, "alert matched a policy but cannot be acted on");
    }
    // Creates and resolutions are confirmed before Alertmanager hears 200; sightings of an
    // active Remediation are written behind.
    let (mut created, mut resolved, mut failed) = (vec![], vec![], vec![]);
    let deadline = tokio::time::Instant::now() + CONFIRM_WITHIN;
    for (key, asked, context, rx) in confirm {
        let name = format!("{}/{}", key.0, key.1);
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Done::Created)) if asked == Asked::Create => created.push(name),
            Ok(Ok(Done::Recorded)) if asked == Asked::Resolve => {
                m.resolved.inc();
                resolved.push(name);
            }
            Ok(Ok(Done::Created | Done::AlreadyExisted | Done::Recorded)) => {
                observed.insert(key);
            }
            Ok(Ok(Done::TargetNotFound(detail))) => {
                suppressed_out.push(json!({"policy": context["policy"], "target": context["target"],
                    "reason": "target_not_found", "detail": detail}));
            }
            Ok(Ok(Done::Clash(detail))) => problems.push(detail),
            Ok(Ok(Done::Failed(e))) => failed.push(format!("{name}: {e}")),
            Ok(Err(_)) => failed.push(format!("{name}: intake stopped before writing it")),
            Err(_) => failed.push(format!("{name}: not written within {}s; still queued", CONFIRM_WITHIN.as_secs())),
        }
    }
    let observed: Vec<String> = observed.into_iter().map(|(ns, n)| format!("{ns}/{n}")).collect();
    let body = json!({"created": created, "observed": observed, "resolved": resolved, "suppressed": suppressed_out,
        "unmatched": planned.unmatched, "problems": problems, "failed": failed});
    // A failed write is worth a retry from Alertmanager; everything else is done.
    if failed.is_empty() { reply(StatusCode::OK, body) } else { retry_later(body) }
}

async fn metrics(State(intake): State<Arc<Intake>>) -> Response {
    let mut resp = intake.shared.metrics.encode().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

async fn readyz(State(intake): State<Arc<Intake>>) -> Response {
    if *intake.shared.synced.borrow() {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "intake has not yet listed policies and Remediations").into_response()
    }
}

async fn too_large(
    State(intake): State<Arc<Intake>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let too_big =
        || reply(StatusCode::PAYLOAD_TOO_LARGE, json!({"error": format!("the body is larger than {MAX_BODY} bytes")}));
    // Drained so the client reads the 413 — but only for a client with the token: nobody
    // else gets the server to read megabytes (the route answers them 401 unread).
    if !authorized(intake.shared.settings.token.as_deref(), req.headers()) {
        return next.run(req).await;
    }
    let Ok(req) = crate::web::refuse_oversized(req, MAX_BODY).await else { return too_big() };
    let resp = next.run(req).await;
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return too_big();
    }
    resp
}

/// The intake routes: `POST /alerts`, `GET /metrics`, `GET /healthz`.
pub fn router(intake: Arc<Intake>) -> axum::Router {
    alerts_router(intake.clone()).merge(health_router(intake))
}

/// `/alerts` alone (the intake role).
pub fn alerts_router(intake: Arc<Intake>) -> axum::Router {
    axum::Router::new()
        .route("/alerts", post(receive))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(intake.clone(), too_large))
        .with_state(intake)
}

/// `/metrics`, `/healthz` and `/readyz` (every role).
pub fn health_router(intake: Arc<Intake>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(intake)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hand_off_replays_only_an_alert_intake_saw_firing_in_the_remediations_namespace() {
        let delivered = moka::future::Cache::builder().max_capacity(10).build();
        let alert = |ns: &str, status: &str| {
            json!({"status": status, "labels": {"alertname": "KubePodCrashLooping", "namespace": ns},
                "annotations": {}, "startsAt": "2026-01-01T00:00:00.5Z", "fingerprint": "f1"})
        };
        let rem = |ns: &str, fingerprint: &str| -> crate::api::remediation::Remediation {
            serde_json::from_value(json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "Remediation",
                "metadata": {"name": "r", "namespace": ns},
                "spec": {"policyRef": {"name": "p"}, "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                    // What the Remediation's author wrote: never replayed.
                    "alert": {"name": "X", "fingerprint": fingerprint, "labels": {"alertname": "X", "namespace": "payments"},
                        "startsAt": "2026-01-01T00:00:00Z"}}}))
            .unwrap()
        };
        assert_eq!(handoff_payload(&delivered, &rem("shop", "f1")).await, None, "never delivered: nothing to replay");
        delivered.insert("f1".to_owned(), alert("payments", "firing")).await;
        assert_eq!(handoff_payload(&delivered, &rem("shop", "f1")).await, None, "another namespace's alert");
        delivered.insert("f1".to_owned(), alert("shop", "resolved")).await;
        assert_eq!(handoff_payload(&delivered, &rem("shop", "f1")).await, None, "resolved since");
        delivered.insert("f1".to_owned(), alert("shop", "firing")).await;
        let body = handoff_payload(&delivered, &rem("shop", "f1")).await.unwrap();
        assert_eq!(
            body["alerts"][0],
            alert("shop", "firing"),
            "the alert as Alertmanager delivered it, not the spec's"
        );
        assert!(crate::intake::payload::parse(body.to_string().as_bytes()).is_ok());
    }

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
    fn metrics_registered_by_other_parts_are_served_with_intakes() {
        let m = Metrics::default();
        let c: Counter = Counter::default();
        m.register(|r| r.register("notifications", "Notifications", c.clone()));
        c.inc();
        let text = m.encode();
        assert!(text.contains("reflex_notifications_total 1"), "{text}");
        assert!(text.contains("reflex_intake_alerts_received_total"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "one exposition: {text}");
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
