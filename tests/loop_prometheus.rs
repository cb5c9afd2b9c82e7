#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The loop from deploy to verdict with the real stages against the real Prometheus
//! (Debian's package): CI's server-side dry-run, the trust gate, server-side apply as the
//! staging deployer, the rollout watch, and the verification sampler reading Prometheus,
//! which scrapes a gauge per Deployment this test controls. Diagnose and propose are a fixed
//! proposal (raise the memory limit to 250Mi) — the agent is tested elsewhere.
//! - a fix that works (the gauge clears) is Succeeded;
//! - a fix that does not (the gauge stays) is rolled back, the pod template exactly as before;
//! - a fix whose query has no data is Inconclusive and escalates; the change stays.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::servers::{prometheus, temp_dir, until};
use futures::FutureExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams, PostParams};
use reflex::api::AnyJson;
use reflex::api::playbook::PatchType;
use reflex::api::remediation::{Diagnosis, Phase, Proposal, ProposalSource, Remediation};
use reflex::controller::stages::Stages;
use reflex::ports::{StageFuture, StageInput};
use reflex::sandbox::{ADMIN_TOKEN, Config, Sandbox};
use serde_json::json;

fn raise() -> serde_json::Value {
    json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "250Mi"}}}]}}}})
}

/// Diagnose and propose: always the same proposal.
struct Fixed;

impl reflex::ports::Diagnose for Fixed {
    fn diagnose(&self, _: StageInput) -> StageFuture<Diagnosis> {
        async { Ok(Diagnosis { summary: "OOM-killed".into(), findings: vec![] }) }.boxed()
    }
}

impl reflex::ports::Propose for Fixed {
    fn propose(&self, _: StageInput) -> StageFuture<Proposal> {
        let patch = raise();
        async move {
            Ok(Proposal {
                patch_type: PatchType::Strategic,
                digest: reflex::patch::digest(&patch),
                patch: AnyJson(patch),
                rationale: "raise the limit".into(),
                expected_effect: None,
                produced_by: ProposalSource::Playbook,
                playbook: Some("fix-memory".into()),
                model: None,
                tokens: None,
                cost_usd: None,
            })
        }
        .boxed()
    }
}

fn memory(d: &Deployment) -> String {
    let c = &d.spec.template.spec.as_ref().unwrap().containers[0];
    c.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0.clone()
}

async fn wait_phase(api: &Api<Remediation>, name: &str, want: Phase) -> Remediation {
    until(&format!("{name} to reach {want}"), Duration::from_secs(90), async || {
        api.get(name).await.ok().filter(|r| r.status.as_ref().is_some_and(|s| s.phase == want))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_stages_verify_against_prometheus_succeed_roll_back_or_escalate() {
    reflex::install_crypto_provider();
    let dir = temp_dir();
    // The exporter: an OOM-kill gauge per Deployment (none for `nodata`).
    let gauges: Arc<Mutex<HashMap<&'static str, u64>>> =
        Arc::new(Mutex::new(HashMap::from([("works", 3), ("broken", 3)])));
    let exporter = {
        let gauges = gauges.clone();
        axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let body = gauges
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(d, v)| format!("demo_oom_events{{namespace=\"default\",deployment=\"{d}\"}} {v}\n"))
                    .collect::<String>();
                async move { format!("# TYPE demo_oom_events gauge\n{body}") }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let exporter_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, exporter).await });
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: exporter\n    honor_labels: true\n    static_configs:\n      - targets: [\"{exporter_addr}\"]\n"
    );
    let (_prom, url) = prometheus(&dir, &config).await;
    let metrics = Arc::new(reflex::metrics::Prometheus::new(&url, Duration::from_secs(5)).unwrap());

    // The sandbox: namespace `default` as staging, three Deployments, a playbook, three policies.
    let sb = Sandbox::start(Config {
        rbac: reflex::sandbox::rbac::Table::from_yaml(common::STAGES_RBAC).unwrap(),
        ..Config::default()
    })
    .await
    .unwrap();
    sb.install_crds().unwrap();
    let admin = sb.client(ADMIN_TOKEN).await.unwrap();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone())
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"reflex.dev/environment": "staging"}}})),
        )
        .await
        .unwrap();
    let deployments = Api::<Deployment>::namespaced(admin.clone(), "default");
    for name in ["works", "broken", "nodata"] {
        let d: Deployment = serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"replicas": 1,
            "selector": {"matchLabels": {"app": name}}, "template": {"metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "app", "image": "c:1", "resources": {"limits": {"memory": "128Mi"}}}]}}}}))
        .unwrap();
        deployments.create(&PostParams::default(), &d).await.unwrap();
    }
    let playbook: reflex::api::playbook::Playbook = serde_json::from_value(json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "Playbook",
        "metadata": {"name": "fix-memory", "namespace": "default"},
        "spec": {"targetKinds": ["Deployment"], "patch": {"mode": "template", "type": "strategic",
            "template": "spec:\n  template:\n    spec:\n      containers:\n        - name: app\n          resources:\n            limits: {memory: \"{{ params.memory }}\"}\n",
            "parameters": [{"name": "memory", "type": "quantity", "value": "'250Mi'", "min": "64Mi", "max": "2Gi", "maxFactor": 3}],
            "allowedPaths": ["spec.template.spec.containers[*].resources.limits.memory"]}}}))
    .unwrap();
    Api::<reflex::api::playbook::Playbook>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &playbook)
        .await
        .unwrap();
    let policies = Api::<reflex::api::RemediationPolicy>::namespaced(admin.clone(), "default");
    for (name, query, extra) in [
        ("works", r#"sum(demo_oom_events{deployment="works"})"#, json!({})),
        ("broken", r#"sum(demo_oom_events{deployment="broken"})"#, json!({})),
        ("nodata", r#"sum(demo_oom_events{deployment="nodata"})"#, json!({"inconclusiveLimit": 2})),
    ] {
        let mut verify =
            json!({"query": query, "operator": "<", "threshold": 1, "for": "2s", "timeout": "15s", "interval": "1s"});
        verify.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let spec = serde_json::from_value(json!({"match": {"alertnames": ["KubeContainerOOMKilled"]},
            "target": {"kind": "Deployment", "name": "{{ labels.deployment }}"}, "playbook": "fix-memory",
            "trust": {"level": "auto"}, "verify": verify}))
        .unwrap();
        policies.create(&PostParams::default(), &reflex::api::RemediationPolicy::new(name, spec)).await.unwrap();
    }

    // The real stages, as the operator assembles them (the operator's identity; deploy as the deployer).
    let operator_config = sb.config("t-operator").await.unwrap();
    let operator = kube::Client::try_from(operator_config.clone()).unwrap();
    let identity = reflex::deploy::identity::DeployerIdentity {
        deployers: Default::default(),
        impersonator: Arc::new(reflex::cluster::Impersonator::new(operator_config)),
    };
    let gate = Arc::new(reflex::gate::trust::TrustGate { client: operator.clone() });
    let deploy = Arc::new(reflex::deploy::apply::ServerSideApply {
        client: operator.clone(),
        gate: gate.clone(),
        identity: identity.clone(),
        kill_switch: None,
    });
    let stages = Stages {
        diagnose: Some(Arc::new(Fixed)),
        propose: Some(Arc::new(Fixed)),
        test: Some(Arc::new(reflex::ci::Ci::new(operator.clone(), identity))),
        gate: Some(gate),
        deploy: Some(deploy.clone()),
        verify: Some(Arc::new(reflex::verify::sampler::Sampler { client: operator, metrics })),
        rollback: Some(deploy),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let controller = {
        let (admin, stop) = (admin.clone(), stop.clone());
        tokio::spawn(async move {
            reflex::controller::reconcile::run(
                admin,
                stages,
                Default::default(),
                async move { stop.cancelled().await },
            )
            .await
            .unwrap();
        })
    };
    let broken_before = deployments.get("broken").await.unwrap().spec.template;
    let remediations = Api::<Remediation>::namespaced(admin.clone(), "default");
    for name in ["works", "broken", "nodata"] {
        let rem: Remediation = serde_json::from_value(json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "Remediation",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"policyRef": {"name": name}, "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                     "alert": {"name": "KubeContainerOOMKilled", "fingerprint": name, "labels": {"deployment": name}, "startsAt": jiff::Timestamp::now().to_string()}}}))
        .unwrap();
        remediations.create(&PostParams::default(), &rem).await.unwrap();
    }

    // The fix that works: once deployed, its OOM kills stop.
    wait_phase(&remediations, "works", Phase::Verifying).await;
    gauges.lock().unwrap().insert("works", 0);
    let works = wait_phase(&remediations, "works", Phase::Succeeded).await.status.unwrap();
    assert_eq!(works.verification.unwrap().verdict, reflex::api::remediation::VerificationVerdict::Passed);
    assert_eq!(memory(&deployments.get("works").await.unwrap()), "250Mi");

    // The fix that does not work: rolled back, the pod template exactly as before.
    let broken = wait_phase(&remediations, "broken", Phase::RolledBack).await.status.unwrap();
    assert_eq!(broken.verification.unwrap().verdict, reflex::api::remediation::VerificationVerdict::Failed);
    assert_eq!(deployments.get("broken").await.unwrap().spec.template, broken_before, "exactly as before");

    // No data: Inconclusive, escalated to people; the change stays (nothing proved it bad).
    let nodata = wait_phase(&remediations, "nodata", Phase::Escalated).await.status.unwrap();
    let v = nodata.verification.unwrap();
    assert_eq!(v.verdict, reflex::api::remediation::VerificationVerdict::Inconclusive, "{:?}", v.message);
    assert!(nodata.rollback.is_none(), "not rolled back");
    assert_eq!(memory(&deployments.get("nodata").await.unwrap()), "250Mi");

    stop.cancel();
    controller.await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
