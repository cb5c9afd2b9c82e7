#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Verification against the real Prometheus (Debian's package), scraping gauges this test
//! controls and evaluating a real alerting rule:
//! - with no query, the check is derived from the alert's own rule, scoped to the alert's
//!   series through the PromQL AST: it fails while checkout's series fires, passes once it
//!   clears, and another deployment still firing does not count against checkout;
//! - an alert naming a Pod is checked across the workload's Pods: the Pod the rollout
//!   replaced going silent is no pass while its successor still fires;
//! - a derived check that cannot see the alert's series (a label Prometheus never had), or an
//!   alert with no rule, is Inconclusive with the reason — never a silent pass;
//! - a fix that clears the alert but makes a guard metric worse than its baseline (read from
//!   Prometheus's history just before the change) by more than its margin fails;
//! - a query with no data is Inconclusive; a Prometheus that stops answering is Error, never
//!   Failed.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::servers::{prometheus, temp_dir, until};
use reflex::api::remediation::{Remediation, Step, Verification, VerificationVerdict};
use reflex::api::validate::ValidPolicy;
use reflex::metrics::{MetricsSource, Prometheus};
use reflex::ports::{EffectKey, StageInput, Verify};
use reflex::verify::sampler::Sampler;
use serde_json::json;

/// A Remediation in Verifying for an alert with `labels`, which started `started`.
fn remediation(alertname: &str, labels: serde_json::Value, started: jiff::Timestamp) -> Remediation {
    serde_json::from_value(json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "Remediation",
        "metadata": {"name": "checkout-oom-checkout-1", "namespace": "shop", "uid": "u-1"},
        "spec": {"policyRef": {"name": "checkout-oom"}, "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "checkout"},
                 "alert": {"name": alertname, "fingerprint": "f", "labels": labels, "startsAt": started.to_string()}},
        "status": {"phase": "Verifying", "deploy": {"previous": {}, "previousResourceVersion": "1", "appliedAt": jiff::Timestamp::now().to_string()}}}))
    .unwrap()
}

fn policy(verify: serde_json::Value) -> Arc<ValidPolicy> {
    let spec = serde_json::from_value(json!({"match": {"alertnames": ["KubeContainerOOMKilled"]},
        "target": {"kind": "Deployment", "name": "checkout"}, "playbook": "raise-memory-limit", "trust": {"level": "auto"},
        "verify": verify}))
    .unwrap();
    Arc::new(ValidPolicy::from_spec(&spec).unwrap())
}

/// One verification sample, as the controller would run it: `prev` fed back as status.
async fn sample(
    sampler: &Sampler,
    rem: &Remediation,
    policy: &Arc<ValidPolicy>,
    prev: Option<Verification>,
) -> Verification {
    let mut rem = rem.clone();
    rem.status.as_mut().unwrap().verification = prev;
    let input = StageInput {
        remediation: Arc::new(rem),
        policy: Some(policy.clone()),
        key: EffectKey { uid: "u-1".into(), step: Step::Verify, attempt: 1 },
        cancel: Default::default(),
    };
    sampler.verify(input).await.unwrap()
}

/// Samples until the verdict is no longer Pending (one a second, within `timeout`).
async fn decide(
    sampler: &Sampler,
    rem: &Remediation,
    policy: &Arc<ValidPolicy>,
    mut prev: Option<Verification>,
    timeout: Duration,
) -> Verification {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let v = sample(sampler, rem, policy, prev).await;
        if v.verdict != VerificationVerdict::Pending {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "no verdict within {timeout:?}: {v:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        prev = Some(v);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_against_a_real_prometheus_and_alerting_rule() {
    reflex::install_crypto_provider();
    let dir = temp_dir();
    // The exporter: OOM-kill gauges for two deployments.
    let checkout = Arc::new(AtomicU64::new(3));
    let cart = Arc::new(AtomicU64::new(2));
    // checkout's error ratio, in thousandths.
    let errors = Arc::new(AtomicU64::new(10));
    // A crash-looping Pod of checkout: its name (a rollout replaces it) and whether it crashes.
    let crashing = Arc::new(std::sync::Mutex::new(("checkout-7d9f-abcde".to_owned(), 1u64)));
    let exporter = {
        let (checkout, cart, errors, crashing) = (checkout.clone(), cart.clone(), errors.clone(), crashing.clone());
        axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let (a, b) = (checkout.load(Ordering::SeqCst), cart.load(Ordering::SeqCst));
                let e = errors.load(Ordering::SeqCst) as f64 / 1000.0;
                let (pod, crash) = crashing.lock().unwrap().clone();
                async move {
                    format!(
                        "# TYPE demo_oom_events gauge\ndemo_oom_events{{namespace=\"shop\",deployment=\"checkout\",container=\"app\"}} {a}\ndemo_oom_events{{namespace=\"shop\",deployment=\"cart\",container=\"app\"}} {b}\n# TYPE demo_error_ratio gauge\ndemo_error_ratio{{namespace=\"shop\",deployment=\"checkout\"}} {e}\n# TYPE demo_crashing gauge\ndemo_crashing{{namespace=\"shop\",pod=\"{pod}\"}} {crash}\n"
                    )
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let exporter_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, exporter).await });
    std::fs::write(
        dir.join("rules.yml"),
        "groups:\n  - name: reflex-test\n    interval: 1s\n    rules:\n      - alert: KubeContainerOOMKilled\n        expr: sum by (namespace, deployment, container) (demo_oom_events) > 0\n        labels: {severity: warning}\n      - alert: KubePodCrashLooping\n        expr: demo_crashing > 0\n        labels: {severity: warning}\n",
    )
    .unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{}]\nscrape_configs:\n  - job_name: exporter\n    honor_labels: true\n    static_configs:\n      - targets: [\"{exporter_addr}\"]\n",
        dir.join("rules.yml").display()
    );
    let (server, url) = prometheus(&dir, &config).await;
    let source = Arc::new(Prometheus::new(&url, Duration::from_secs(5)).unwrap());
    until("checkout's series to be scraped", Duration::from_secs(30), async || {
        source.instant(r#"demo_oom_events{deployment="checkout"} > 0"#).await.ok().flatten()
    })
    .await;
    until("the alerting rule to be loaded", Duration::from_secs(30), async || {
        source.alert_rules("KubeContainerOOMKilled").await.ok().filter(|r| !r.is_empty())
    })
    .await;
    let started = jiff::Timestamp::now();
    let client = kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
    let sampler = Sampler { client, metrics: source.clone() };
    let labels = json!({"alertname": "KubeContainerOOMKilled", "namespace": "shop", "deployment": "checkout",
        "container": "app", "severity": "warning"});
    let rem = remediation("KubeContainerOOMKilled", labels.clone(), started);
    let derived = policy(json!({"for": "2s", "timeout": "60s", "interval": "1s"}));

    // Still firing: the derived check sees checkout's series, and only checkout's.
    let first = sample(&sampler, &rem, &derived, None).await;
    assert_eq!(first.verdict, VerificationVerdict::Pending, "{:?}", first.message);
    let query = first.query.clone().unwrap();
    for part in [r#"deployment="checkout""#, r#"namespace="shop""#, r#"container="app""#] {
        assert!(query.contains(part), "{query}");
    }
    assert!(!query.contains("severity"), "the rule's own label is not a series label: {query}");
    assert!(!first.samples[0].ok, "checkout still fires: a bad sample");
    assert!(first.message.as_deref().unwrap().contains("the alert's condition still holds"));

    // The fix works: checkout clears (cart still fires), and the check passes.
    checkout.store(0, Ordering::SeqCst);
    let passed = decide(&sampler, &rem, &derived, Some(first), Duration::from_secs(30)).await;
    assert_eq!(passed.verdict, VerificationVerdict::Passed, "{:?}", passed.message);
    assert!(passed.message.as_deref().unwrap().contains("returned nothing: the alert's condition is clear"));

    // A fix that clears the alert but hurts a guard fails: the error ratio was 0.01 just
    // before the change (read from Prometheus's history) and is 0.1 after it.
    let guarded = policy(json!({"for": "3s", "timeout": "60s", "interval": "1s",
        "guards": [{"name": "error-ratio", "query": "sum(demo_error_ratio{deployment=\"checkout\"})", "maxIncreasePercent": 50}]}));
    let changed = remediation("KubeContainerOOMKilled", labels.clone(), started);
    errors.store(100, Ordering::SeqCst);
    until("the worse error ratio to be scraped", Duration::from_secs(30), async || {
        source.instant(r#"sum(demo_error_ratio{deployment="checkout"}) > 0.05"#).await.ok().flatten()
    })
    .await;
    let hurt = decide(&sampler, &changed, &guarded, None, Duration::from_secs(30)).await;
    assert_eq!(hurt.verdict, VerificationVerdict::Failed, "{:?}", hurt.message);
    assert!(
        hurt.message.as_deref().unwrap().starts_with("guard error-ratio got worse: 0.01 before the change, 0.1 now"),
        "{:?}",
        hurt.message
    );
    assert_eq!(hurt.guards[0].baseline, Some(0.01));

    // A Pod's alert: the rollout replaces that Pod, and its series goes away. The check
    // follows the workload's Pods, so the new Pod still crashing is still a bad sample — a
    // check scoped to the old Pod would have "passed" on its silence.
    let pod_started = jiff::Timestamp::now();
    let pod_alert = json!({"alertname": "KubePodCrashLooping", "namespace": "shop", "pod": "checkout-7d9f-abcde", "severity": "warning"});
    let pod_rem = remediation("KubePodCrashLooping", pod_alert, pod_started);
    *crashing.lock().unwrap() = ("checkout-5c4b-fghij".to_owned(), 1);
    until("the new Pod's series to be scraped", Duration::from_secs(30), async || {
        source.instant(r#"demo_crashing{pod="checkout-5c4b-fghij"}"#).await.ok().flatten()
    })
    .await;
    let crash_check = policy(json!({"for": "2s", "timeout": "60s", "interval": "1s"}));
    let still = sample(&sampler, &pod_rem, &crash_check, None).await;
    assert!(still.query.as_deref().unwrap().contains(r#"pod=~"checkout-.+""#), "{:?}", still.query);
    assert!(still.reproduced, "the old Pod's series reproduces the alert at its start");
    assert!(!still.samples[0].ok, "the new Pod crashes too: {:?}", still.message);
    // The new Pod stops crashing: clear, and the fix passes.
    *crashing.lock().unwrap() = ("checkout-5c4b-fghij".to_owned(), 0);
    let cured = decide(&sampler, &pod_rem, &crash_check, Some(still), Duration::from_secs(30)).await;
    assert_eq!(cured.verdict, VerificationVerdict::Passed, "{:?}", cured.message);

    // A check that cannot see the alert's series (a label Prometheus never had, as external
    // labels are) is Inconclusive at once, never an empty "pass".
    let mut foreign = labels.clone();
    foreign["cluster"] = json!("prod-eu");
    let blind = sample(&sampler, &remediation("KubeContainerOOMKilled", foreign, started), &derived, None).await;
    assert_eq!(blind.verdict, VerificationVerdict::Inconclusive, "{:?}", blind.message);
    assert!(blind.message.as_deref().unwrap().contains("cannot see the alert's series"), "{:?}", blind.message);
    // An alert whose rule Prometheus does not have: Inconclusive, the reason named.
    let ruleless = sample(&sampler, &remediation("NoSuchAlert", labels.clone(), started), &derived, None).await;
    assert_eq!(ruleless.verdict, VerificationVerdict::Inconclusive);
    assert!(ruleless.message.as_deref().unwrap().contains("no alerting rule named \"NoSuchAlert\""));

    // A query with no data is Inconclusive (here at once: inconclusiveLimit 0), not Failed.
    let missing = policy(json!({"query": "sum(demo_absent_metric)", "operator": "<", "threshold": 1,
        "for": "2s", "timeout": "30s", "interval": "1s", "inconclusiveLimit": 0}));
    let no_data = sample(&sampler, &rem, &missing, None).await;
    assert_eq!(no_data.verdict, VerificationVerdict::Inconclusive, "{:?}", no_data.message);

    // Prometheus stops answering: errors, never bad samples, then Error.
    drop(server);
    let errors = policy(json!({"query": "sum(demo_oom_events)", "operator": "<", "threshold": 1,
        "for": "2s", "timeout": "60s", "interval": "1s", "consecutiveErrorLimit": 2, "failureLimit": 0}));
    let error = decide(&sampler, &rem, &errors, None, Duration::from_secs(30)).await;
    assert_eq!(error.verdict, VerificationVerdict::Error, "{:?}", error.message);
    assert!(error.samples.iter().all(|s| s.error.is_some() && !s.ok), "{:?}", error.samples);
    assert_eq!(error.samples.len(), 3, "two errors allowed, the third decides");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The Pods of a workload by kube-state-metrics' owner series, against a real Prometheus: a
/// Deployment's Pods through their ReplicaSets, a DaemonSet's directly — where the name regex
/// also counts the Pod of a DaemonSet that shares the Deployment's name.
#[tokio::test]
async fn owner_joins_select_a_workloads_pods_where_name_regexes_do_not() {
    reflex::install_crypto_provider();
    let dir = temp_dir();
    let series = "# TYPE kube_pod_owner gauge\n\
        kube_pod_owner{namespace=\"shop\",pod=\"web-7d9f-abcde\",owner_kind=\"ReplicaSet\",owner_name=\"web-7d9f\",owner_is_controller=\"true\"} 1\n\
        kube_pod_owner{namespace=\"shop\",pod=\"web-worker-5c4b-fghij\",owner_kind=\"ReplicaSet\",owner_name=\"web-worker-5c4b\",owner_is_controller=\"true\"} 1\n\
        kube_pod_owner{namespace=\"shop\",pod=\"web-xyz12\",owner_kind=\"DaemonSet\",owner_name=\"web\",owner_is_controller=\"true\"} 1\n\
        # TYPE kube_replicaset_owner gauge\n\
        kube_replicaset_owner{namespace=\"shop\",replicaset=\"web-7d9f\",owner_kind=\"Deployment\",owner_name=\"web\",owner_is_controller=\"true\"} 1\n\
        kube_replicaset_owner{namespace=\"shop\",replicaset=\"web-worker-5c4b\",owner_kind=\"Deployment\",owner_name=\"web-worker\",owner_is_controller=\"true\"} 1\n\
        # TYPE container_memory_working_set_bytes gauge\n\
        container_memory_working_set_bytes{namespace=\"shop\",pod=\"web-7d9f-abcde\",container=\"app\"} 100\n\
        container_memory_working_set_bytes{namespace=\"shop\",pod=\"web-worker-5c4b-fghij\",container=\"app\"} 900\n\
        container_memory_working_set_bytes{namespace=\"shop\",pod=\"web-xyz12\",container=\"app\"} 500\n";
    let exporter = axum::Router::new().route("/metrics", axum::routing::get(move || async move { series }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let exporter_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, exporter).await });
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: ksm\n    honor_labels: true\n    static_configs:\n      - targets: [\"{exporter_addr}\"]\n"
    );
    let (_server, url) = prometheus(&dir, &config).await;
    let source = Arc::new(Prometheus::new(&url, Duration::from_secs(5)).unwrap());
    let usage = |pods: String| {
        format!(
            r#"max(container_memory_working_set_bytes{{namespace="shop",container="app"}} * on (namespace, pod) group_left () {pods})"#
        )
    };
    let deployment = usage(reflex::metrics::pods_of("Deployment", "shop", "web").unwrap());
    let by_join = until("the owner join to answer", Duration::from_secs(30), async || {
        source.instant(&deployment).await.ok().flatten()
    })
    .await;
    assert_eq!(by_join, 100.0, "only the Deployment's Pod");
    let daemonset = usage(reflex::metrics::pods_of("DaemonSet", "shop", "web").unwrap());
    assert_eq!(source.instant(&daemonset).await.unwrap(), Some(500.0));
    let worker = usage(reflex::metrics::pods_of("Deployment", "shop", "web-worker").unwrap());
    assert_eq!(source.instant(&worker).await.unwrap(), Some(900.0));
    let regex = format!(
        r#"max(container_memory_working_set_bytes{{namespace="shop",container="app",pod=~"{}"}})"#,
        reflex::metrics::pod_name_regex("web").unwrap()
    );
    assert_eq!(source.instant(&regex).await.unwrap(), Some(500.0), "the name regex also counts the DaemonSet's Pod");
}
