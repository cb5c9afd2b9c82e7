#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Targets resolved from what a standard alert names: the operator as `reflex run` assembles
//! it, on the sandbox under the demo's RBAC; intake reads through Reflex's MCP server as the
//! namespace's reader identity.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use reflex::api::remediation::Remediation;
use reflex::operator::{self, Operator};
use reflex::sandbox::{ADMIN_TOKEN, Config, Sandbox};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const OPERATOR_TOKEN: &str = "reflex-demo-operator";

struct Quiet;

impl reflex::metrics::MetricsSource for Quiet {
    fn instant(&self, _: &str) -> futures::future::BoxFuture<'_, Result<Option<f64>, reflex::metrics::MetricsError>> {
        Box::pin(async { Ok(None) })
    }
}

async fn create<K>(client: &kube::Client, ns: Option<&str>, v: Value) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns.unwrap_or("shop"));
    api.create(&PostParams::default(), &serde_json::from_value(v).unwrap()).await.unwrap()
}

/// A KubePodCrashLooping-style alert names only a Pod: a policy acting on Deployments and
/// StatefulSets gets the Deployment behind it (Pod → ReplicaSet → Deployment, read as the
/// reader); a Pod no controller runs is not remediated — the reply, a Warning Event on the
/// policy and a metric say why.
#[tokio::test]
async fn an_alert_naming_only_a_pod_is_remediated_on_the_workload_that_runs_it() {
    reflex::install_crypto_provider();
    let rbac = reflex::sandbox::rbac::Table::from_yaml(reflex::demo::DEMO_RBAC).unwrap();
    let sandbox = Sandbox::start(Config { rbac, ..Config::default() }).await.unwrap();
    sandbox.install_crds().unwrap();
    let admin = sandbox.client(ADMIN_TOKEN).await.unwrap();
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "shop"}})).unwrap())
        .await
        .unwrap();
    let _: ServiceAccount = create(&admin, None, json!({"metadata": {"name": "reflex-reader"}})).await;
    let _: Deployment = create(
        &admin,
        None,
        json!({"metadata": {"name": "checkout"}, "spec": {"replicas": 1,
        "selector": {"matchLabels": {"app": "c"}}, "template": {"metadata": {"labels": {"app": "c"}},
        "spec": {"containers": [{"name": "app", "image": "c:1"}]}}}}),
    )
    .await;
    let _: Pod = create(
        &admin,
        None,
        json!({"metadata": {"name": "debug-shell"}, "spec": {"containers": [{"name": "sh", "image": "busybox"}]}}),
    )
    .await;
    let _: Pod = create(
        &admin,
        None,
        json!({"metadata": {"name": "debug-shell-2"}, "spec": {"containers": [{"name": "sh", "image": "busybox"}]}}),
    )
    .await;
    let spec = json!({"match": {"alertnames": ["KubePodCrashLooping"]}, "target": {"kinds": ["Deployment", "StatefulSet"]},
        "playbook": "raise-memory-limit", "trust": {"level": "observe"}});
    let policy: reflex::api::RemediationPolicy = serde_json::from_value(json!({"apiVersion": "reflex.dev/v1alpha1",
        "kind": "RemediationPolicy", "metadata": {"name": "crashloop", "namespace": "shop"}, "spec": spec}))
    .unwrap();
    Api::<reflex::api::RemediationPolicy>::namespaced(admin.clone(), "shop")
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    // The Deployment's Pod, as the ReplicaSet controller named it.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "shop");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let pod = loop {
        let list = pods.list(&ListParams::default().labels("app=c")).await.unwrap();
        if let Some(p) = list.items.first() {
            break p.metadata.name.clone().unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "the Deployment never got a Pod");
        tokio::task::yield_now().await;
    };

    let stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let op = Operator::assemble(
        operator::Config {
            client: sandbox.client(OPERATOR_TOKEN).await.unwrap(),
            kube_config: sandbox.config(OPERATOR_TOKEN).await.unwrap(),
            metrics: Arc::new(Quiet),
            prometheus: None,
            mcp_url: format!("http://{address}/mcp"),
            roles: reflex::operator::Roles::ALL,
            a2a: reflex::a2a::Settings { url: format!("http://{address}/a2a"), ..Default::default() },
            own_token: Some((OPERATOR_TOKEN.to_owned(), None)),
            mcp_allowed_hosts: vec![],
            mcp_audiences: vec![],
            webhook: reflex::intake::webhook::Settings { token: Some("t".into()), kill_switch: None },
            prices: Default::default(),
            audit: Arc::new(reflex::mcp::client::MemoryAudit::default()),
            audit_log: None,
            deployers: Default::default(),
            max_concurrent_deploys: None,
            alertmanager: None,
            gitops: Default::default(),
        },
        &stop,
    );
    tokio::time::timeout(Duration::from_secs(10), op.intake.ready()).await.unwrap();
    let _server = op.serve(listener, stop.clone());
    let delivery = |status: &str, pod: &str, fingerprint: &str| {
        let ends = if status == "resolved" { "2026-01-01T01:00:00Z" } else { "0001-01-01T00:00:00Z" };
        let alert = json!({"status": status, "labels": {"alertname": "KubePodCrashLooping", "namespace": "shop", "pod": pod,
            "container": "app", "severity": "warning"}, "annotations": {}, "startsAt": "2026-01-01T00:00:00Z",
            "endsAt": ends, "generatorURL": "", "fingerprint": fingerprint});
        json!({"version": "4", "groupKey": "g", "truncatedAlerts": 0, "status": status, "receiver": "reflex", "groupLabels": {},
            "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am", "alerts": [alert]})
    };
    let deliver = |pod: &str, fingerprint: &str| delivery("firing", pod, fingerprint);
    let http = reqwest::Client::new();
    let post = |body: Value| {
        let http = http.clone();
        async move {
            let r = http.post(format!("http://{address}/alerts")).bearer_auth("t").json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };

    let reply = post(deliver(&pod, "f1")).await;
    let created = reply["created"][0].as_str().unwrap_or_else(|| panic!("{reply}")).to_owned();
    let rem =
        Api::<Remediation>::namespaced(admin.clone(), "shop").get(created.split('/').nth(1).unwrap()).await.unwrap();
    assert_eq!(
        (rem.spec.target.kind, rem.spec.target.name.as_str()),
        (reflex::api::TargetKind::Deployment, "checkout")
    );
    assert_eq!(rem.spec.target.api_version, "apps/v1");
    // The same alert again: the same Remediation, observed.
    let again = post(deliver(&pod, "f1")).await;
    assert_eq!(again["observed"][0].as_str(), Some(created.as_str()), "{again}");

    // Resolved after the crash-looping Pod was replaced: found by the alert, nothing read.
    let gone = post(delivery("resolved", "checkout-replaced-zzzzz", "f1")).await;
    assert_eq!(gone["resolved"][0].as_str(), Some(created.as_str()), "{gone}");

    // Two bare Pods in one delivery: both recorded, one Warning on the policy.
    let mut two = deliver("debug-shell", "f2");
    let second = delivery("firing", "debug-shell-2", "f3")["alerts"][0].clone();
    two["alerts"].as_array_mut().unwrap().push(second);
    let reply = post(two).await;
    assert!(reply["created"].as_array().unwrap().is_empty(), "{reply}");
    let why = &reply["suppressed"][0];
    assert_eq!(why["reason"], "target_not_resolved", "{reply}");
    assert!(why["detail"].as_str().unwrap().contains("NoController: Pod debug-shell has no controller"), "{reply}");
    let metrics = http.get(format!("http://{address}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("reflex_intake_targets_unresolved_total{reason=\"NoController\"} 2"), "{metrics}");
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(admin.clone(), "shop");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let list = events.list(&ListParams::default().fields("involvedObject.name=crashloop")).await.unwrap();
        let warnings: Vec<_> = list
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("TargetNotResolved") && e.type_.as_deref() == Some("Warning"))
            .collect();
        if let [one] = warnings.as_slice() {
            assert!(one.message.as_deref().unwrap_or_default().ends_with("(and 1 more like it)"), "{:?}", one.message);
            break;
        }
        assert!(warnings.len() < 2, "one Warning per policy and reason, not per alert");
        assert!(tokio::time::Instant::now() < deadline, "no TargetNotResolved Event on the policy");
        tokio::task::yield_now().await;
    }
    stop.cancel();
}
