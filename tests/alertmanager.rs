#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The intake path with the real servers: Prometheus (Debian's package) scrapes a gauge this
//! test controls and evaluates an alerting rule; Alertmanager (Debian's package) routes the
//! alert to Reflex's webhook with bearer auth and `send_resolved: true`; Reflex runs against
//! the sandbox. Flip the gauge: one Remediation appears, and stays one through repeats; flip
//! it back: the resolution reaches it. `make test` installs both servers when missing.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::servers::{alertmanager, free_port, reflex_route, start, temp_dir, until};

use kube::api::{Api, ListParams};
use reflex::api::remediation::{AlertState, Remediation};
use reflex::intake::webhook::{Intake, Settings, router};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_and_alertmanager_drive_exactly_one_remediation_and_its_resolution() {
    let dir = temp_dir();

    // Reflex: the sandbox, a policy, and the webhook with a bearer token.
    let (_sb, client) = common::shop_with_policy(json!({"match": {"alertnames": ["KubeContainerOOMKilled"], "matchers": ["severity=\"warning\""]},
                 "target": {"kind": "Deployment", "name": "{{ labels.deployment }}"},
                 "playbook": "raise-memory-limit", "trust": {"level": "auto"},
                 "verify": {"query": "x", "operator": "<", "threshold": 1, "for": "2s", "timeout": "30s", "interval": "1s"}})).await;
    let token = "alertmanager-to-reflex";
    std::fs::write(dir.join("token"), token).unwrap();
    let intake = Intake::start(client.clone(), Settings { token: Some(token.into()), kill_switch: None });
    let intake_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let intake_addr = intake_listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(intake_listener, router(intake)).await });

    // The exporter whose gauge the test controls.
    let gauge = Arc::new(AtomicU64::new(0));
    let exporter = {
        let gauge = gauge.clone();
        axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let v = gauge.load(Ordering::SeqCst);
                async move {
                    format!("# TYPE demo_oom_events gauge\ndemo_oom_events{{namespace=\"shop\",deployment=\"checkout\",container=\"app\"}} {v}\n")
                }
            }),
        )
    };
    let exporter_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let exporter_addr = exporter_listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(exporter_listener, exporter).await });

    // Alertmanager, routing to Reflex with bearer auth and resolutions.
    let timing = "  group_by: [alertname, namespace, deployment]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 2s\n";
    let (_am, am_url) = alertmanager(&dir, &reflex_route(&dir, &format!("http://{intake_addr}/alerts"), timing)).await;
    let am_port = am_url.rsplit(':').next().unwrap().to_owned();

    // Prometheus, scraping the gauge and alerting on it.
    let prom_port = free_port();
    std::fs::write(
        dir.join("rules.yml"),
        "groups:\n  - name: reflex-test\n    interval: 1s\n    rules:\n      - alert: KubeContainerOOMKilled\n        expr: demo_oom_events > 0\n        labels: {severity: warning}\n        annotations: {summary: \"OOM kills in {{ $labels.deployment }}\"}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{}]\nalerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [\"127.0.0.1:{am_port}\"]\nscrape_configs:\n  - job_name: exporter\n    honor_labels: true\n    static_configs:\n      - targets: [\"{exporter_addr}\"]\n",
            dir.join("rules.yml").display()
        ),
    )
    .unwrap();
    let _prom = start(
        "prometheus",
        &[
            format!("--config.file={}", dir.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.join("prom-data").display()),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ],
        &dir.join("prometheus.log"),
    );
    let http = reqwest::Client::new();
    until("Prometheus to be ready", Duration::from_secs(30), async || {
        http.get(format!("http://127.0.0.1:{prom_port}/-/ready")).send().await.ok().filter(|r| r.status().is_success())
    })
    .await;

    // Fire.
    let rems: Api<Remediation> = Api::namespaced(client.clone(), "shop");
    gauge.store(3, Ordering::SeqCst);
    let fired = Instant::now();
    let rem = until("a Remediation from the firing alert", Duration::from_secs(60), async || {
        rems.list(&ListParams::default()).await.ok()?.items.into_iter().next()
    })
    .await;
    let latency = fired.elapsed();
    assert_eq!(rem.metadata.name.as_deref(), Some("checkout-oom-checkout-1"));
    assert_eq!(rem.spec.target.name, "checkout");
    assert_eq!(rem.spec.alert.labels.get("severity").map(String::as_str), Some("warning"));
    // Repeats (repeat_interval 2s) are counted on the same Remediation, never a second one.
    until("a repeated delivery", Duration::from_secs(30), async || {
        let r = rems.get("checkout-oom-checkout-1").await.ok()?;
        r.status?.alert.filter(|a| a.times_seen >= 2).map(|_| ())
    })
    .await;
    assert_eq!(
        rems.list(&ListParams::default()).await.unwrap().items.len(),
        1,
        "exactly one Remediation despite repeats"
    );

    // Resolve.
    gauge.store(0, Ordering::SeqCst);
    until("the resolution to reach the Remediation", Duration::from_secs(60), async || {
        let r = rems.get("checkout-oom-checkout-1").await.ok()?;
        r.status?.alert.filter(|a| a.state == AlertState::Resolved && a.resolved_at.is_some()).map(|_| ())
    })
    .await;
    assert_eq!(rems.list(&ListParams::default()).await.unwrap().items.len(), 1);
    eprintln!(
        "alert fired → Remediation created in {:.1}s (Prometheus scrape/eval 1s, Alertmanager group_wait 1s)",
        latency.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
