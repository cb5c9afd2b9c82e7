#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Scripted adversarial runs through the whole operator, as an attacker would try them: agent
//! mode `llm` with no playbook (so the kind's default rules apply), a staging namespace and
//! trust `auto` — nothing but the patch-safety check stands between the model and the
//! cluster. The model is the scripted stand-in (tests/common/llm.rs, the only stand-in for a
//! model service); everything else is real: the operator as `reflex run` assembles it, its
//! MCP server, CI's server-side dry-run, the trust gate and the deployer, on the sandbox.
//!
//! Every bad run in tests/fixtures/llm/adversarial.json must end Escalated or Failed before
//! any deploy, with its reason in status and the target exactly as before; the good runs
//! must deploy and be verified.

mod common;
#[path = "common/llm.rs"]
mod llm_standin;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use reflex::api::remediation::{Phase, Remediation, Step};
use reflex::operator::{self, Operator};
use reflex::sandbox::{ADMIN_TOKEN, Config, Sandbox};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const OPERATOR_TOKEN: &str = "reflex-demo-operator";

/// Every query answers 0: the good runs' verification (`reflex_adversarial_errors < 1`) holds.
struct Quiet;
impl reflex::metrics::MetricsSource for Quiet {
    fn instant(&self, _: &str) -> futures::future::BoxFuture<'_, Result<Option<f64>, reflex::metrics::MetricsError>> {
        Box::pin(async { Ok(Some(0.0)) })
    }
}

struct World {
    admin: kube::Client,
    standin: llm_standin::StandIn,
    stop: CancellationToken,
    _sandbox: Sandbox,
}

/// The targets: kind, name, the policy that governs it.
fn target(which: &str) -> (&'static str, &'static str, &'static str, &'static str) {
    match which {
        "deployment" => ("apps/v1", "Deployment", "checkout", "llm-deployment"),
        "config" => ("v1", "ConfigMap", "checkout-config", "llm-config"),
        "hpa" => ("autoscaling/v2", "HorizontalPodAutoscaler", "checkout", "llm-hpa"),
        other => panic!("no target {other}"),
    }
}

async fn world() -> World {
    reflex::install_crypto_provider();
    let rbac = reflex::sandbox::rbac::Table::from_yaml(reflex::demo::DEMO_RBAC).unwrap();
    let sandbox = Sandbox::start(Config { rbac, ..Config::default() }).await.unwrap();
    sandbox.install_crds().unwrap();
    let admin = sandbox.client(ADMIN_TOKEN).await.unwrap();
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "shop", "labels": {"reflex.dev/environment": "staging"}}}))
            .unwrap();
    Api::<Namespace>::all(admin.clone()).create(&PostParams::default(), &ns).await.unwrap();
    // The ServiceAccount the agent reads as (the demo's RBAC grants it read-only in shop).
    let reader: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "reflex-reader", "namespace": "shop"}})).unwrap();
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(admin.clone(), "shop")
        .create(&PostParams::default(), &reader)
        .await
        .unwrap();
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "checkout", "namespace": "shop"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "checkout"}},
            "template": {"metadata": {"labels": {"app": "checkout"}}, "spec": {"containers": [{"name": "app",
                "image": "registry.local/shop/checkout:1.4.0", "command": ["/checkout"],
                "env": [{"name": "POOL_SIZE", "value": "10"}],
                "resources": {"limits": {"memory": "256Mi", "cpu": "500m"}, "requests": {"memory": "256Mi"}}}]}}}}))
    .unwrap();
    Api::<Deployment>::namespaced(admin.clone(), "shop").create(&PostParams::default(), &d).await.unwrap();
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "checkout-config", "namespace": "shop"},
        "data": {"POOL_SIZE": "10", "MODE": "fast"}}))
    .unwrap();
    Api::<ConfigMap>::namespaced(admin.clone(), "shop").create(&PostParams::default(), &cm).await.unwrap();
    let hpa = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "checkout", "namespace": "shop"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "checkout"},
                 "minReplicas": 2, "maxReplicas": 10}});
    dynamic(&admin, "hpa").patch("checkout", &PatchParams::apply("test").force(), &Patch::Apply(&hpa)).await.unwrap();

    let standin = llm_standin::start().await;
    for which in ["deployment", "config", "hpa"] {
        let (_, kind, name, policy) = target(which);
        let spec = json!({"match": {"alertnames": ["Adversarial"]}, "target": {"kind": kind, "name": name},
            "trust": {"level": "auto"},
            "agent": {"mode": "llm", "model": {"endpoint": standin.url, "model": "scripted"}, "maxIterations": 4},
            "limits": {"cooldown": "0s", "maxRemediations": {"count": 1000, "window": "1h"}, "ineffective": {"realerts": 10}},
            "verify": {"query": "reflex_adversarial_errors", "operator": "<", "threshold": 1,
                       "initialDelay": "0s", "for": "1s", "interval": "1s", "timeout": "30s"}});
        let spec: reflex::api::policy::RemediationPolicySpec = serde_json::from_value(spec).unwrap();
        reflex::api::validate::ValidPolicy::from_spec(&spec).unwrap();
        let policy = reflex::api::RemediationPolicy::new(policy, spec);
        Api::<reflex::api::RemediationPolicy>::namespaced(admin.clone(), "shop")
            .create(&PostParams::default(), &policy)
            .await
            .unwrap();
    }

    // The operator, as `reflex run` assembles it, under the demo's RBAC: it reads, and writes
    // workloads only as the staging or production deployer.
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
            prices: [(
                "scripted".to_owned(),
                reflex::agent::llm::Price { input_per_million: 5.0, output_per_million: 15.0 },
            )]
            .into_iter()
            .collect(),
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
    let controller_stop = stop.clone();
    tokio::spawn(async move { op.run_controller(None, async move { controller_stop.cancelled().await }).await });
    World { admin, standin, stop, _sandbox: sandbox }
}

fn dynamic(client: &kube::Client, which: &str) -> Api<DynamicObject> {
    let kind = match target(which).1 {
        "Deployment" => reflex::api::TargetKind::Deployment,
        "ConfigMap" => reflex::api::TargetKind::ConfigMap,
        _ => reflex::api::TargetKind::HorizontalPodAutoscaler,
    };
    Api::namespaced_with(client.clone(), "shop", &reflex::cluster::api_resource(kind))
}

/// The target's spec and data as stored, and its resourceVersion.
async fn snapshot(w: &World, which: &str) -> (Value, String) {
    let o = dynamic(&w.admin, which).get(target(which).2).await.unwrap();
    let v = serde_json::to_value(&o).unwrap();
    let rv = o.metadata.resource_version.clone().unwrap_or_default();
    (
        json!({"spec": v.get("spec"), "data": v.get("data"), "labels": v.pointer("/metadata/labels"),
            "annotations": v.pointer("/metadata/annotations")}),
        rv,
    )
}

/// One run: the model reads the target, then proposes `case`'s patch; the Remediation as it
/// ended.
async fn play(w: &World, n: usize, case: &Value) -> Remediation {
    let which = case["target"].as_str().unwrap();
    let (api_version, kind, name, policy) = target(which);
    let proposed =
        case.get("proposedTarget").cloned().unwrap_or(json!({"kind": kind, "namespace": "shop", "name": name}));
    w.standin.load(&[
        json!({"calls": [{"name": "get_resource", "arguments": {"kind": kind, "namespace": "shop", "name": name}}], "usage": [900, 120]}),
        json!({"calls": [{"name": "propose_patch", "arguments": {"target": proposed, "patchType": case["patchType"],
            "patch": case["patch"], "rationale": case["why"].as_str().filter(|w| !w.is_empty()).unwrap_or("a fix")}}],
            "usage": [900, 120]}),
    ]);
    let rem: Remediation = serde_json::from_value(json!({
        "apiVersion": "reflex.dev/v1alpha1", "kind": "Remediation",
        "metadata": {"name": format!("run-{n}"), "namespace": "shop"},
        "spec": {"policyRef": {"name": policy}, "target": {"apiVersion": api_version, "kind": kind, "name": name},
                 "alert": {"name": "Adversarial", "fingerprint": format!("f{n}"), "startsAt": "2026-12-01T00:00:00Z",
                           "labels": {"alertname": "Adversarial", "namespace": "shop"}}}}))
    .unwrap();
    let api = Api::<Remediation>::namespaced(w.admin.clone(), "shop");
    api.create(&PostParams::default(), &rem).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = api.get(&format!("run-{n}")).await.unwrap();
        let phase = r.status.as_ref().map(|s| s.phase);
        if phase.is_some_and(|p| {
            matches!(p, Phase::Escalated | Phase::Failed | Phase::Succeeded | Phase::RolledBack | Phase::Cancelled)
        }) {
            return r;
        }
        assert!(tokio::time::Instant::now() < deadline, "run-{n} ({}) never ended: {:?}", case["name"], r.status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_bad_run_deploys_and_every_good_run_is_verified() {
    let w = world().await;
    let suite: Value =
        serde_json::from_str(&std::fs::read_to_string("tests/fixtures/llm/adversarial.json").unwrap()).unwrap();
    let bad = suite["bad"].as_array().unwrap();
    assert!(bad.len() >= 100, "the suite needs at least 100 bad runs, has {}", bad.len());
    for class in ["configmap-text", "image", "capacity", "coverage"] {
        let variants = bad.iter().filter(|c| c["class"] == class).count();
        assert!(variants >= 5, "class {class} has only {variants} variants");
    }
    let before: Vec<(Value, String)> =
        futures::future::join_all(["deployment", "config", "hpa"].map(|t| snapshot(&w, t))).await;
    let mut failures = Vec::new();
    for (n, case) in bad.iter().enumerate() {
        let name = case["name"].as_str().unwrap();
        let r = play(&w, n, case).await;
        let status = r.status.clone().unwrap_or_default();
        let message = status.message.clone().unwrap_or_default();
        eprintln!("{name}: {:?}: {}", status.phase, message.chars().take(160).collect::<String>());
        let deployed = status.steps.iter().any(|s| matches!(s.step, Step::Deploy)) || status.deploy.is_some();
        if !matches!(status.phase, Phase::Escalated | Phase::Failed) || deployed {
            failures.push(format!("{name}: ended {:?} (deploy started: {deployed}): {message}", status.phase));
        }
        let needle = case["reason"].as_str().unwrap();
        if !message.contains(needle) {
            failures.push(format!("{name}: status.message lacks {needle:?}: {message}"));
        }
        let which = case["target"].as_str().unwrap();
        let i = ["deployment", "config", "hpa"].iter().position(|t| *t == which).unwrap();
        let after = snapshot(&w, which).await;
        if after != before[i] {
            failures.push(format!("{name}: the target changed: {:?} → {:?}", before[i], after));
        }
    }
    assert!(failures.is_empty(), "{} of {} bad runs went wrong:\n{}", failures.len(), bad.len(), failures.join("\n"));

    // The good runs, last (they change the target): deployed and verified.
    for (n, case) in suite["good"].as_array().unwrap().iter().enumerate() {
        let r = play(&w, 1000 + n, case).await;
        let status = r.status.unwrap_or_default();
        assert_eq!(status.phase, Phase::Succeeded, "{}: {:?}", case["name"], status.message);
    }
    let d = Api::<Deployment>::namespaced(w.admin.clone(), "shop").get("checkout").await.unwrap();
    let c = &d.spec.template.spec.unwrap().containers[0];
    assert_eq!(c.image.as_deref(), Some("registry.local/shop/checkout:1.4.1"));
    assert_eq!(c.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0, "384Mi");
    w.stop.cancel();
}
