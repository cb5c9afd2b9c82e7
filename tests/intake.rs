#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The webhook over HTTP against the sandbox: auth, limits, strict parsing, one Remediation
//! per incident under repeats and concurrent deliveries, resolution, suppression Events and
//! metrics.

mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Event};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use reflex::api::remediation::{AlertObservation, AlertState, Remediation};
use reflex::intake::webhook::{Intake, Limits, Settings, router};
use reflex::sandbox::Sandbox;
use serde_json::{Value, json};

const TOKEN: &str = "am-webhook-token";

async fn setup(limits: Value) -> (Sandbox, kube::Client, String) {
    setup_with(limits, Limits::default(), None).await
}

async fn setup_with(
    limits: Value,
    capacity: Limits,
    kill_switch: Option<(String, String)>,
) -> (Sandbox, kube::Client, String) {
    let (sb, client) = common::shop_with_policy(json!({"match": {"alertnames": ["KubeContainerOOMKilled"]}, "target": {"kind": "Deployment", "name": "{{ labels.deployment }}"},
                 "playbook": "raise-memory-limit", "trust": {"level": "auto"}, "limits": limits,
                 "verify": {"query": "x", "operator": "<", "threshold": 1, "for": "2s", "timeout": "30s", "interval": "1s"}})).await;
    if let Some((ns, name)) = &kill_switch {
        // On from the start: intake is ready only once its watch has listed it.
        let cm = serde_json::from_value(json!({"metadata": {"name": name}, "data": {"killSwitch": "true"}})).unwrap();
        Api::<ConfigMap>::namespaced(client.clone(), ns).create(&PostParams::default(), &cm).await.unwrap();
    }
    let intake = Intake::start_with(client.clone(), Settings { token: Some(TOKEN.into()), kill_switch }, capacity);
    tokio::time::timeout(Duration::from_secs(10), intake.ready()).await.expect("intake's watches list");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(intake)).await });
    (sb, client, url)
}

fn delivery(status: &str, pods: &[&str]) -> Value {
    let alerts: Vec<Value> = pods
        .iter()
        .map(|p| json!({"status": status, "labels": {"alertname": "KubeContainerOOMKilled", "namespace": "shop", "deployment": "checkout", "pod": p},
            "annotations": {}, "startsAt": "2026-01-01T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "fingerprint": format!("f{p}")}))
        .collect();
    json!({"version": "4", "groupKey": "g", "truncatedAlerts": 0, "status": status, "receiver": "reflex", "alerts": alerts})
}

async fn post(url: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(format!("{url}/alerts")).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

/// The only Remediation's `status.alert`, once `ok` holds (within 10 s).
async fn eventually(client: &kube::Client, ok: impl Fn(&AlertObservation) -> bool) -> AlertObservation {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let rems = remediations(client).await;
        let alert = rems.first().and_then(|r| r.status.as_ref()?.alert.clone());
        match alert {
            Some(a) if ok(&a) => return a,
            other => assert!(tokio::time::Instant::now() < deadline, "status.alert never got there: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The policy's Events, once there are some (they are published behind the response).
async fn policy_events(client: &kube::Client) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let selector = "involvedObject.name=checkout-oom,involvedObject.kind=RemediationPolicy";
    loop {
        let events = Api::<Event>::namespaced(client.clone(), "shop")
            .list(&ListParams::default().fields(selector))
            .await
            .unwrap()
            .items;
        if !events.is_empty() {
            return events;
        }
        assert!(tokio::time::Instant::now() < deadline, "no Event on the policy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn remediations(client: &kube::Client) -> Vec<Remediation> {
    Api::<Remediation>::namespaced(client.clone(), "shop").list(&ListParams::default()).await.unwrap().items
}

/// The token is checked before the body is read: a client without it that declares 100 MiB
/// and sends none is answered 401 at once (it used to be buffered — up to 32 MiB drained for
/// a 413 — before the token was looked at).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_delivery_is_refused_before_its_body_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_sb, _client, url) = setup(json!({})).await;
    let address = url.trim_start_matches("http://");
    for auth in ["", "Authorization: Bearer wrong\r\n"] {
        let mut tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let head = format!(
            "POST /alerts HTTP/1.1\r\nHost: {address}\r\n{auth}Content-Type: application/json\r\nContent-Length: 104857600\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut answer))
            .await
            .expect("answered without waiting for the body")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 401"), "{auth:?}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_requests_create_nothing() {
    let (_sb, client, url) = setup(json!({})).await;
    assert_eq!(post(&url, None, &delivery("firing", &["a"])).await.0, 401);
    assert_eq!(post(&url, Some("wrong"), &delivery("firing", &["a"])).await.0, 401);
    let mut v3 = delivery("firing", &["a"]);
    v3["version"] = json!("3");
    let (code, body) = post(&url, Some(TOKEN), &v3).await;
    assert_eq!(code, 400);
    assert!(body["error"].as_str().unwrap().starts_with("version"), "{body}");
    let mut bad_time = delivery("firing", &["a"]);
    bad_time["alerts"][0]["startsAt"] = json!("soon");
    let (code, body) = post(&url, Some(TOKEN), &bad_time).await;
    assert_eq!((code, body["error"].as_str().unwrap().starts_with("alerts[0].startsAt")), (400, true), "{body}");
    let huge = json!({"version": "4", "status": "firing", "alerts": [], "pad": "x".repeat(5 * 1024 * 1024)});
    assert_eq!(post(&url, Some(TOKEN), &huge).await.0, 413);
    assert!(remediations(&client).await.is_empty(), "nothing was created");
    let metrics = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("reflex_intake_requests_rejected_total{reason=\"unauthorized\"} 2"), "{metrics}");
    assert!(metrics.contains("reflex_intake_requests_rejected_total{reason=\"invalid\"} 2"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_remediation_per_incident_despite_repeats_and_concurrent_deliveries() {
    let (_sb, client, url) = setup(json!({})).await;
    // Two pods of the same deployment, then the same delivery from two Alertmanager replicas at once.
    let (code, body) = post(&url, Some(TOKEN), &delivery("firing", &["a", "b"])).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["created"], json!(["shop/checkout-oom-checkout-1"]));
    let d = delivery("firing", &["a"]);
    let (r1, r2) = tokio::join!(post(&url, Some(TOKEN), &d), post(&url, Some(TOKEN), &d));
    assert_eq!((r1.0, r2.0), (200, 200), "{r1:?} {r2:?}");
    // Sightings of an active Remediation are written behind: wait for the count.
    let seen = eventually(&client, |a| a.times_seen >= 4).await;
    assert_eq!(seen.times_seen, 4, "every delivery counted, none lost to concurrency");
    assert_eq!(seen.state, AlertState::Firing);
    assert_eq!(remediations(&client).await.len(), 1, "exactly one Remediation");
    // Resolution reaches it, and it is resolved once both pods' alerts are.
    let (code, body) = post(&url, Some(TOKEN), &delivery("resolved", &["a"])).await;
    assert_eq!((code, body["resolved"].clone()), (200, json!(["shop/checkout-oom-checkout-1"])));
    let alert = status_alert(&client).await;
    assert_eq!(alert.state, AlertState::Firing, "pod b's alert is still firing: {alert:?}");
    assert_eq!(alert.alerts.len(), 2);
    let (code, _) = post(&url, Some(TOKEN), &delivery("resolved", &["b"])).await;
    assert_eq!(code, 200);
    let alert = status_alert(&client).await;
    assert_eq!(alert.state, AlertState::Resolved);
    assert!(alert.resolved_at.is_some() && alert.refired_at.is_none(), "{alert:?}");
    // A late firing delivery of the same occurrence (a slow replica) does not undo it.
    let (code, _) = post(&url, Some(TOKEN), &delivery("firing", &["a"])).await;
    assert_eq!(code, 200);
    let alert = eventually(&client, |a| a.times_seen >= 5).await;
    assert_eq!((alert.state, alert.refired_at), (AlertState::Resolved, None));
}

async fn status_alert(client: &kube::Client) -> AlertObservation {
    let rem = &remediations(client).await[0];
    rem.status.as_ref().unwrap().alert.clone().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppressions_are_recorded_on_the_policy_and_counted() {
    let (_sb, client, url) = setup(json!({"suspend": true})).await;
    let (code, body) = post(&url, Some(TOKEN), &delivery("firing", &["a"])).await;
    assert_eq!(code, 200);
    assert_eq!(body["suppressed"][0]["reason"], "suspended", "{body}");
    assert!(remediations(&client).await.is_empty());
    let events = policy_events(&client).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].reason.as_deref(), Some("Suppressed"));
    assert!(events[0].message.as_deref().unwrap().contains("suspended"));
    let metrics = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("reflex_intake_alerts_suppressed_total{reason=\"suspended\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_for_a_missing_target_is_recorded_not_retried() {
    let (_sb, client, url) = setup(json!({})).await;
    let mut d = delivery("firing", &["a"]);
    d["alerts"][0]["labels"]["deployment"] = json!("ghost");
    let (code, body) = post(&url, Some(TOKEN), &d).await;
    assert_eq!(code, 200, "not a retryable failure: {body}");
    assert_eq!(body["suppressed"][0]["reason"], "target_not_found", "{body}");
    assert!(remediations(&client).await.is_empty());
    let events = policy_events(&client).await;
    assert_eq!(events[0].reason.as_deref(), Some("TargetNotFound"));
    let metrics = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("reflex_intake_alerts_suppressed_total{reason=\"target_not_found\"} 1"), "{metrics}");
}

/// Deliver one alert; assert Alertmanager is told to retry (503 + `Retry-After: 5`).
async fn post_expecting_retry(url: &str) -> reqwest::Response {
    let resp = reqwest::Client::new()
        .post(format!("{url}/alerts"))
        .bearer_auth(TOKEN)
        .json(&delivery("firing", &["a"]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("5"));
    resp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_full_it_answers_503_with_retry_after() {
    let (_sb, client, url) = setup_with(json!({}), Limits { in_flight: 0, ..Limits::default() }, None).await;
    post_expecting_retry(&url).await;
    assert!(remediations(&client).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_that_would_overfill_the_queue_is_refused_whole() {
    let (_sb, client, url) = setup_with(json!({}), Limits { queue: 0, ..Limits::default() }, None).await;
    let resp = post_expecting_retry(&url).await;
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("capacity 0"), "{body}");
    assert!(remediations(&client).await.is_empty());
    let metrics = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("reflex_intake_requests_rejected_total{reason=\"queue_full\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kill_switch_configmap_stops_new_remediations_while_it_is_on() {
    let at = ("shop".to_owned(), "reflex-settings".to_owned());
    let (_sb, client, url) = setup_with(json!({}), Limits::default(), Some(at)).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "shop");
    for _ in 0..3 {
        let (code, body) = post(&url, Some(TOKEN), &delivery("firing", &["a"])).await;
        assert_eq!((code, &body["suppressed"][0]["reason"]), (200, &json!("kill_switch")), "{body}");
    }
    assert!(remediations(&client).await.is_empty());
    let metrics = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("reflex_intake_alerts_suppressed_total{reason=\"kill_switch\"} 3"), "{metrics}");
    // Turned off, it reaches intake through the watch.
    let off = Patch::Merge(json!({"data": {"killSwitch": "false"}}));
    cms.patch("reflex-settings", &PatchParams::default(), &off).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = post(&url, Some(TOKEN), &delivery("firing", &["a"])).await;
        assert_eq!(code, 200, "{body}");
        if body["created"] == json!(["shop/checkout-oom-checkout-1"]) {
            break;
        }
        assert_eq!(body["suppressed"][0]["reason"], "kill_switch", "{body}");
        assert!(tokio::time::Instant::now() < deadline, "turning the kill switch off never took effect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(remediations(&client).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_fails_is_never_answered_200_on_retry() {
    // Intake may read everything and write status, but not create Remediations.
    let rbac = r#"
users:
  - {name: sandbox-admin, token: reflex-sandbox-admin, groups: ["system:masters"]}
  - {name: intake, token: t-intake}
grants:
  - subjects: [{kind: User, name: intake}]
    rules:
      - {apiGroups: ["reflex.dev"], resources: ["remediationpolicies", "remediations"], verbs: ["get", "list", "watch"]}
      - {apiGroups: ["reflex.dev"], resources: ["remediations/status"], verbs: ["patch"]}
      - {apiGroups: ["apps"], resources: ["deployments"], verbs: ["get"]}
      - {apiGroups: ["", "events.k8s.io"], resources: ["events"], verbs: ["create", "patch"]}
"#;
    let config =
        reflex::sandbox::Config { rbac: reflex::sandbox::rbac::Table::from_yaml(rbac).unwrap(), ..Default::default() };
    let (sb, admin) = common::shop_with_policy_in(config, json!({"match": {"alertnames": ["KubeContainerOOMKilled"]},
        "target": {"kind": "Deployment", "name": "{{ labels.deployment }}"}, "playbook": "raise-memory-limit",
        "trust": {"level": "auto"}, "verify": {"query": "x", "operator": "<", "threshold": 1, "for": "2s", "timeout": "30s", "interval": "1s"}})).await;
    let client = sb.client("t-intake").await.unwrap();
    let intake = Intake::start(client, Settings { token: Some(TOKEN.into()), kill_switch: None });
    tokio::time::timeout(Duration::from_secs(10), intake.ready()).await.expect("intake's watches list");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(intake)).await });
    // Alertmanager's first try and its retries: each is told to retry, none is "observed".
    for attempt in 0..3 {
        let (code, body) = post(&url, Some(TOKEN), &delivery("firing", &["a"])).await;
        assert_eq!(code, 503, "attempt {attempt}: {body}");
        let failed = body["failed"][0].as_str().unwrap();
        assert!(failed.starts_with("shop/checkout-oom-checkout-1") && failed.contains("forbidden"), "{body}");
        assert_eq!(body["observed"], json!([]), "{body}");
    }
    assert!(remediations(&admin).await.is_empty());
}
