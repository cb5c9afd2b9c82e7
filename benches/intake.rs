#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `cargo bench --bench intake`: Reflex's webhook against the floor — a bare handler that
//! only parses the same Alertmanager payload and answers 200 — on the same machine, in the
//! same run, over loopback HTTP. Grouped payloads (many alerts per delivery, as Alertmanager
//! sends them) for a set of targets; Reflex runs against the sandbox, so every delivery also
//! pays for listing policies and Remediations and writing each incident's sightings.
//! Bounded: a fixed number of deliveries per server. Prints alerts/s and p50/p99 latency.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use reflex::api::policy::RemediationPolicy;
use reflex::api::remediation::Remediation;
use reflex::intake::webhook::{Intake, Settings, router};
use reflex::sandbox::{ADMIN_TOKEN, Config, Sandbox};
use serde_json::{Value, json};

const TARGETS: usize = 10;
const ALERTS_PER_DELIVERY: usize = 1000;
const DELIVERIES: usize = 100;
const TOKEN: &str = "bench-token";

fn payload() -> Vec<u8> {
    let alerts: Vec<Value> = (0..ALERTS_PER_DELIVERY)
        .map(|i| {
            let target = format!("svc-{}", i % TARGETS);
            json!({"status": "firing", "labels": {"alertname": "KubeContainerOOMKilled", "namespace": "shop", "deployment": target,
                "pod": format!("{target}-{i}"), "container": "app", "severity": "warning"},
                "annotations": {"summary": "OOM"}, "startsAt": "2026-01-01T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus/graph", "fingerprint": format!("{i:016x}")})
        })
        .collect();
    serde_json::to_vec(&json!({"version": "4", "groupKey": "{}:{alertname=\"KubeContainerOOMKilled\"}", "truncatedAlerts": 0,
        "status": "firing", "receiver": "reflex", "groupLabels": {"alertname": "KubeContainerOOMKilled"}, "commonLabels": {},
        "commonAnnotations": {}, "externalURL": "http://alertmanager", "alerts": alerts}))
    .unwrap_or_default()
}

async fn run(url: &str, body: &[u8]) -> (Duration, Vec<Duration>) {
    let http = reqwest::Client::new();
    let mut latencies = Vec::with_capacity(DELIVERIES);
    let started = Instant::now();
    for _ in 0..DELIVERIES {
        let t = Instant::now();
        let resp = http
            .post(url)
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await;
        match resp {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => panic!("{url}: {}", r.status()),
            Err(e) => panic!("{url}: {e}"),
        }
        latencies.push(t.elapsed());
    }
    (started.elapsed(), latencies)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, total: Duration, mut lat: Vec<Duration>) -> f64 {
    lat.sort();
    let rate = (ALERTS_PER_DELIVERY * DELIVERIES) as f64 / total.as_secs_f64();
    println!(
        "{name:<34} {rate:>10.0} alerts/s   p50 {:>7.2} ms   p99 {:>7.2} ms",
        pct(&lat, 0.5).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3
    );
    rate
}

/// The shipped binary's allocator, so the benchmark measures what ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    // `cargo test --all-targets` builds and runs this too; only `cargo bench` measures.
    if !std::env::args().any(|a| a == "--bench") {
        println!("intake benchmark: run with `cargo bench --bench intake`");
        return;
    }
    reflex::install_crypto_provider();
    let sb = Sandbox::start(Config::default()).await.expect("sandbox");
    sb.install_crds().expect("crds");
    let client = sb.client(ADMIN_TOKEN).await.expect("client");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "shop"}})).expect("ns"))
        .await
        .expect("namespace");
    for i in 0..TARGETS {
        let d: Deployment = serde_json::from_value(json!({"metadata": {"name": format!("svc-{i}")}, "spec": {"replicas": 1,
            "selector": {"matchLabels": {"app": "s"}}, "template": {"metadata": {"labels": {"app": "s"}}, "spec": {"containers": [{"name": "app", "image": "s:1"}]}}}}))
        .expect("deployment");
        Api::<Deployment>::namespaced(client.clone(), "shop")
            .create(&PostParams::default(), &d)
            .await
            .expect("deployment");
    }
    let policy: RemediationPolicy = serde_json::from_value(json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "RemediationPolicy",
        "metadata": {"name": "oom", "namespace": "shop"},
        "spec": {"match": {"alertnames": ["KubeContainerOOMKilled"]}, "target": {"kind": "Deployment", "name": "{{ labels.deployment }}"},
                 "playbook": "raise-memory-limit", "trust": {"level": "auto"}, "limits": {"maxConcurrent": 100, "maxRemediations": {"count": 100, "window": "1h"}},
                 "verify": {"query": "x", "operator": "<", "threshold": 1, "for": "2s", "timeout": "30s", "interval": "1s"}}}))
    .expect("policy");
    Api::<RemediationPolicy>::namespaced(client.clone(), "shop")
        .create(&PostParams::default(), &policy)
        .await
        .expect("policy");

    let intake = Intake::start(client.clone(), Settings { token: Some(TOKEN.into()), kill_switch: None });
    intake.ready().await;
    let l1 = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let reflex_url = format!("http://{}/alerts", l1.local_addr().expect("addr"));
    // As the operator serves it: within the listener bounds (web::serve); the floor is a bare
    // axum::serve.
    let _server = reflex::web::serve(
        l1,
        router(intake),
        reflex::web::Limits::default(),
        tokio_util::sync::CancellationToken::new(),
    );

    let floor = axum::Router::new()
        .route(
            "/alerts",
            axum::routing::post(|body: axum::body::Bytes| async move {
                match reflex::intake::payload::parse(&body) {
                    Ok(_) => axum::http::StatusCode::OK,
                    Err(_) => axum::http::StatusCode::BAD_REQUEST,
                }
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(reflex::intake::webhook::MAX_BODY));
    let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let floor_url = format!("http://{}/alerts", l2.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(l2, floor).await });

    let body = payload();
    println!(
        "intake benchmark: {DELIVERIES} deliveries of {ALERTS_PER_DELIVERY} alerts ({} KiB each) over {TARGETS} targets, sequential, loopback",
        body.len() / 1024
    );
    // Warm both (the first Reflex delivery creates the Remediations).
    let _ = run(&floor_url, &body).await;
    let (ft, fl) = run(&floor_url, &body).await;
    let floor_rate = report("floor (parse + 200)", ft, fl);
    let (rt, rl) = run(&reflex_url, &body).await;
    let answered = Instant::now();
    let reflex_rate = report("reflex intake (sandbox API)", rt, rl);
    println!("reflex / floor throughput: {:.2}x the floor's cost", floor_rate / reflex_rate);
    // Sightings are written behind (coalesced): how long until the API shows every one.
    let expected = (DELIVERIES * ALERTS_PER_DELIVERY / TARGETS) as u64;
    let rems: Api<Remediation> = Api::namespaced(client.clone(), "shop");
    loop {
        let list = rems.list(&Default::default()).await.expect("list");
        let seen: Vec<u64> =
            list.items.iter().filter_map(|r| Some(r.status.as_ref()?.alert.as_ref()?.times_seen)).collect();
        if seen.len() == TARGETS && seen.iter().all(|n| *n == expected) {
            break;
        }
        assert!(answered.elapsed() < Duration::from_secs(60), "sightings not written: {seen:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "every sighting in status ({TARGETS} Remediations x {expected}) {:.0} ms after the last answer (coalescing window 1 s)",
        answered.elapsed().as_secs_f64() * 1e3
    );
}
