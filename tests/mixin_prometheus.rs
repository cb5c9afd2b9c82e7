#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The policy pack against the alerts people already have, with the real servers: Prometheus
//! (Debian's package) evaluates kubernetes-mixin-style alerting rules (the mixin's alert
//! names, labels and expressions, with test-length windows) over series shaped like
//! kube-state-metrics' and cAdvisor's, which this test's exporter computes from the
//! sandbox's objects on every scrape; Alertmanager (Debian's package) routes the alerts to
//! the operator's webhook with bearer auth; the operator is assembled as `reflex run`
//! assembles it, reading Prometheus for its playbooks and for verification (no policy here
//! writes PromQL: each is verified against its alert's own rule).
//!
//! - KubePodCrashLooping names only a Pod of `checkout` (OOM-killed at a 128Mi limit under a
//!   200Mi working set): the pack's policy follows it to the Deployment, raises the memory
//!   limit, and the alert's rule goes silent: Succeeded.
//! - KubeHpaMaxedOut names the HPA `web` (pinned at maxReplicas 4 under six replicas' worth
//!   of load): maxReplicas is raised to 8 and the HPA leaves its ceiling: Succeeded.
//! - KubeJobFailed names the Job `nightly-report` (its Pods exit 1 past its backoff limit):
//!   the pack's diagnose-only policy reports why (BackoffLimitExceeded, two failed Pods) and
//!   escalates to people; nothing is proposed and the Job is untouched.
//! - Before the operator acts, `reflex simulate` (from the cluster, with the same Prometheus)
//!   predicts each alert's policy, target, patch and gate decision; the operator then does
//!   exactly that.
//!
//! The pack is applied as shipped except for two lines a platform team changes per namespace:
//! trust `auto` (the shipped `propose` waits for a person) and verification windows of
//! seconds instead of minutes.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::servers::{alertmanager, prometheus, reflex_route, temp_dir, until};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use reflex::api::remediation::{GateDecision, Phase, Remediation};
use reflex::demo::model::OomModel;
use reflex::sandbox::{ADMIN_TOKEN, Config, Sandbox};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The operator's token in the demo's RBAC table (least privilege: it cannot write a
/// workload; its changes are made as the staging deployer).
const OPERATOR_TOKEN: &str = "reflex-demo-operator";

/// The workloads' working sets, as cAdvisor would report them.
const WORKING_SET: [(&str, f64); 2] = [("checkout", 200.0 * 1024.0 * 1024.0), ("web", 100.0 * 1024.0 * 1024.0)];

/// Load on `web`, in replicas' worth at the HPA's target utilization.
const WEB_LOAD: f64 = 6.0;

/// The HPA's target CPU utilization.
const TARGET_UTILIZATION: f64 = 70.0;

/// Rules modelled on kubernetes-mixin's (kube-prometheus-stack): same names, labels and
/// expressions; `for` and the range windows shortened to test time.
const RULES: &str = r#"groups:
  - name: kubernetes-apps
    interval: 1s
    rules:
      - alert: KubePodCrashLooping
        expr: max_over_time(kube_pod_container_status_waiting_reason{reason="CrashLoopBackOff", job="kube-state-metrics"}[10s]) >= 1
        labels: {severity: warning}
        annotations:
          description: 'Pod {{ $labels.namespace }}/{{ $labels.pod }} ({{ $labels.container }}) is in waiting state (reason: "CrashLoopBackOff").'
          summary: Pod is crash looping.
      - alert: KubeHpaMaxedOut
        expr: |
          kube_horizontalpodautoscaler_status_current_replicas{job="kube-state-metrics"}
            ==
          kube_horizontalpodautoscaler_spec_max_replicas{job="kube-state-metrics"}
        labels: {severity: warning}
        annotations:
          description: HPA {{ $labels.namespace }}/{{ $labels.horizontalpodautoscaler }} has been running at max replicas for longer than 15 minutes.
          summary: HPA is running at max replicas
      - alert: KubeJobFailed
        expr: kube_job_failed{job="kube-state-metrics"} > 0
        labels: {severity: warning}
        annotations:
          description: Job {{ $labels.namespace }}/{{ $labels.job_name }} failed to complete.
      - alert: KubeDeploymentRolloutStuck
        expr: |
          kube_deployment_status_condition{condition="Progressing", status="false", job="kube-state-metrics"} != 0
        labels: {severity: warning}
"#;

/// The report Job's Pods exit 1: it fails past its backoff limit.
struct FailingJobs;

impl reflex::sandbox::jobs::JobModel for FailingJobs {
    fn run(&self, _: &Value) -> reflex::sandbox::jobs::JobRun {
        reflex::sandbox::jobs::JobRun::Fail {
            after: Duration::from_millis(200),
            code: 1,
            log: vec!["connecting to warehouse.shop:5432: connection refused".into()],
        }
    }
}

/// One exposition line.
fn line(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    out.push_str(&format!("{name}{{{}}} {value}\n", labels.join(",")));
}

/// kube-state-metrics' series for namespace `shop`, from the sandbox's objects.
async fn kube_state_metrics(client: &kube::Client) -> String {
    let mut out = String::new();
    let pods = Api::<Pod>::namespaced(client.clone(), "shop").list(&ListParams::default()).await.unwrap();
    for pod in &pods.items {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        for owner in pod.metadata.owner_references.iter().flatten() {
            line(
                &mut out,
                "kube_pod_owner",
                &[
                    ("namespace", "shop"),
                    ("pod", name),
                    ("uid", uid),
                    ("owner_kind", &owner.kind),
                    ("owner_name", &owner.name),
                    ("owner_is_controller", if owner.controller == Some(true) { "true" } else { "false" }),
                ],
                1.0,
            );
        }
        for c in pod.spec.iter().flat_map(|s| &s.containers) {
            if let Some(limit) = c.resources.as_ref().and_then(|r| r.limits.as_ref()).and_then(|l| l.get("memory")) {
                let bytes = reflex::api::quantity::parse_quantity(&limit.0).unwrap();
                line(
                    &mut out,
                    "kube_pod_container_resource_limits",
                    &[
                        ("namespace", "shop"),
                        ("pod", name),
                        ("uid", uid),
                        ("container", &c.name),
                        ("resource", "memory"),
                        ("unit", "byte"),
                    ],
                    bytes,
                );
            }
        }
        for s in pod.status.iter().flat_map(|s| s.container_statuses.iter().flatten()) {
            let labels = [("namespace", "shop"), ("pod", name), ("uid", uid), ("container", s.name.as_str())];
            line(&mut out, "kube_pod_container_status_restarts_total", &labels, f64::from(s.restart_count));
            if let Some(reason) = s.state.as_ref().and_then(|st| st.waiting.as_ref()).and_then(|w| w.reason.as_deref())
            {
                let mut with = labels.to_vec();
                with.push(("reason", reason));
                line(&mut out, "kube_pod_container_status_waiting_reason", &with, 1.0);
            }
            if let Some(reason) =
                s.last_state.as_ref().and_then(|st| st.terminated.as_ref()).and_then(|t| t.reason.as_deref())
            {
                let mut with = labels.to_vec();
                with.push(("reason", reason));
                line(&mut out, "kube_pod_container_status_last_terminated_reason", &with, 1.0);
            }
        }
    }
    let sets = Api::<ReplicaSet>::namespaced(client.clone(), "shop").list(&ListParams::default()).await.unwrap();
    for rs in &sets.items {
        let replicas = rs.spec.replicas.unwrap_or(1);
        line(
            &mut out,
            "kube_replicaset_spec_replicas",
            &[("namespace", "shop"), ("replicaset", rs.metadata.name.as_deref().unwrap_or_default())],
            f64::from(replicas),
        );
        if let Some(created) = &rs.metadata.creation_timestamp {
            line(
                &mut out,
                "kube_replicaset_created",
                &[("namespace", "shop"), ("replicaset", rs.metadata.name.as_deref().unwrap_or_default())],
                created.0.as_second() as f64,
            );
        }
        for owner in rs.metadata.owner_references.iter().flatten() {
            line(
                &mut out,
                "kube_replicaset_owner",
                &[
                    ("namespace", "shop"),
                    ("replicaset", rs.metadata.name.as_deref().unwrap_or_default()),
                    ("owner_kind", &owner.kind),
                    ("owner_name", &owner.name),
                    ("owner_is_controller", "true"),
                ],
                1.0,
            );
        }
    }
    for d in Api::<Deployment>::namespaced(client.clone(), "shop").list(&ListParams::default()).await.unwrap().items {
        let name = d.metadata.name.as_deref().unwrap_or_default();
        for c in d.status.iter().flat_map(|s| s.conditions.iter().flatten()) {
            for status in ["true", "false", "unknown"] {
                let value = if c.status.as_deref().is_some_and(|s| s.eq_ignore_ascii_case(status)) { 1.0 } else { 0.0 };
                line(
                    &mut out,
                    "kube_deployment_status_condition",
                    &[
                        ("namespace", "shop"),
                        ("deployment", name),
                        ("condition", c.type_.as_deref().unwrap_or_default()),
                        ("status", status),
                    ],
                    value,
                );
            }
        }
    }
    for job in Api::<Job>::namespaced(client.clone(), "shop").list(&ListParams::default()).await.unwrap().items {
        let name = job.metadata.name.as_deref().unwrap_or_default();
        let status = job.status.unwrap_or_default();
        let failed = status.conditions.iter().flatten().any(|c| c.type_ == "Failed" && c.status == "True");
        let labels = [("namespace", "shop"), ("job_name", name)];
        line(&mut out, "kube_job_status_failed", &labels, f64::from(status.failed.unwrap_or(0)));
        line(
            &mut out,
            "kube_job_failed",
            &[("namespace", "shop"), ("job_name", name), ("condition", "true")],
            if failed { 1.0 } else { 0.0 },
        );
    }
    // The HPA controller's view: as many replicas as the load needs, within min and max.
    let hpas =
        Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), "shop").list(&ListParams::default()).await.unwrap();
    for hpa in &hpas.items {
        let name = hpa.metadata.name.as_deref().unwrap_or_default();
        let spec = &hpa.spec;
        let max = f64::from(spec.max_replicas);
        let min = f64::from(spec.min_replicas.unwrap_or(1));
        let current = WEB_LOAD.ceil().clamp(min, max);
        let labels = [("namespace", "shop"), ("horizontalpodautoscaler", name)];
        line(&mut out, "kube_horizontalpodautoscaler_spec_max_replicas", &labels, max);
        line(&mut out, "kube_horizontalpodautoscaler_spec_min_replicas", &labels, min);
        line(&mut out, "kube_horizontalpodautoscaler_status_current_replicas", &labels, current);
        line(&mut out, "kube_horizontalpodautoscaler_status_desired_replicas", &labels, current);
        let metric = [
            ("namespace", "shop"),
            ("horizontalpodautoscaler", name),
            ("metric_name", "cpu"),
            ("metric_target_type", "utilization"),
        ];
        line(&mut out, "kube_horizontalpodautoscaler_spec_target_metric", &metric, TARGET_UTILIZATION);
        line(
            &mut out,
            "kube_horizontalpodautoscaler_status_target_metric",
            &metric,
            TARGET_UTILIZATION * WEB_LOAD / current,
        );
    }
    out
}

/// cAdvisor's series (the kubelet's `/metrics/cadvisor`): each container's working set.
async fn cadvisor(client: &kube::Client) -> String {
    let mut out = String::new();
    let pods = Api::<Pod>::namespaced(client.clone(), "shop").list(&ListParams::default()).await.unwrap();
    for pod in &pods.items {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let Some((_, bytes)) = WORKING_SET.iter().find(|(w, _)| name.starts_with(&format!("{w}-"))) else { continue };
        for c in pod.spec.iter().flat_map(|s| &s.containers) {
            line(
                &mut out,
                "container_memory_working_set_bytes",
                &[
                    ("namespace", "shop"),
                    ("pod", name),
                    ("container", &c.name),
                    ("image", c.image.as_deref().unwrap_or_default()),
                ],
                *bytes,
            );
        }
    }
    out
}

fn shop_resources() -> String {
    r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {reflex.dev/environment: staging}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: reflex-reader, namespace: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: checkout, namespace: shop, labels: {app: checkout}}
spec:
  replicas: 2
  selector: {matchLabels: {app: checkout}}
  template:
    metadata: {labels: {app: checkout}}
    spec:
      containers:
        - name: app
          image: registry.example.com/shop/checkout:1.4.2
          resources:
            limits: {memory: 128Mi}
            requests: {memory: 128Mi, cpu: 100m}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  replicas: 4
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: app
          image: registry.example.com/shop/web:2.0.1
          resources:
            limits: {memory: 256Mi}
            requests: {memory: 256Mi, cpu: 500m}
---
apiVersion: batch/v1
kind: Job
metadata: {name: nightly-report, namespace: shop}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers: [{name: report, image: registry.example.com/shop/report:3.1.0}]
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web, namespace: shop}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 2
  maxReplicas: 4
  metrics:
    - type: Resource
      resource: {name: cpu, target: {type: Utilization, averageUtilization: 70}}
"#
    .to_owned()
}

/// The policy pack as shipped, in `shop`, with trust `auto` where it says `propose`, and
/// test-length verification.
fn policy_pack() -> Vec<Value> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/kubernetes-mixin.yaml")).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    docs.into_iter()
        .filter(|d| !d.is_null())
        .map(|mut d| {
            d["metadata"]["namespace"] = json!("shop");
            if d["kind"] == "RemediationPolicy" {
                // A diagnose-only policy stays at observe.
                if d["spec"]["trust"]["level"] == "propose" {
                    d["spec"]["trust"] = json!({"level": "auto"});
                }
                d["spec"]["verify"] = json!({"for": "3s", "timeout": "90s", "interval": "1s"});
            }
            d
        })
        .collect()
}

fn playbooks() -> Vec<Value> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/playbooks");
    [
        "raise-memory-limit-if-oom-killed",
        "rollback-new-revision",
        "raise-hpa-max-on-saturation",
        "raise-cpu-limit",
        "diagnose-failed-job",
    ]
    .iter()
    .map(|name| {
        let mut p: Value =
            serde_saphyr::from_str(&std::fs::read_to_string(format!("{dir}/{name}.yaml")).unwrap()).unwrap();
        p["metadata"]["namespace"] = json!("shop");
        p
    })
    .collect()
}

/// The firing alerts Alertmanager holds, by alert name.
async fn alerts(http: &reqwest::Client, am: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let Ok(r) = http.get(format!("{am}/api/v2/alerts?active=true")).send().await else { return BTreeMap::new() };
    let list: Vec<Value> = r.json().await.unwrap_or_default();
    list.into_iter()
        .filter_map(|a| {
            let labels: BTreeMap<String, String> = serde_json::from_value(a["labels"].clone()).ok()?;
            Some((labels.get("alertname")?.clone(), labels))
        })
        .collect()
}

fn memory_limit(d: &Deployment) -> String {
    d.spec.template.spec.as_ref().unwrap().containers[0]
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
        .map(|q| q.0.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_pack_fixes_kubernetes_mixin_alerts_from_real_prometheus_as_simulate_predicts() {
    reflex::install_crypto_provider();
    let dir = temp_dir();

    // The sandbox, with the demo's least-privilege RBAC and its kubelet model (a container
    // whose memory limit is below its working set is OOM-killed and crash-loops).
    let model: reflex::demo::scenario::Model = serde_json::from_value(json!({
        "workloads": [
            {"namespace": "shop", "deployment": "checkout", "container": "app", "workingSet": "200Mi", "restartEvery": "1s"},
            {"namespace": "shop", "deployment": "web", "container": "app", "workingSet": "100Mi", "restartEvery": "1s"}
        ],
        "series": []
    }))
    .unwrap();
    let model = Arc::new(OomModel::new(&model).unwrap());
    let rbac = reflex::sandbox::rbac::Table::from_yaml(reflex::demo::DEMO_RBAC).unwrap();
    let sandbox = Sandbox::start(Config {
        pod_model: Some(model.clone()),
        job_model: Some(Arc::new(FailingJobs)),
        rbac,
        ..Config::default()
    })
    .await
    .unwrap();
    model.attach(sandbox.api().clone());
    sandbox.install_crds().unwrap();
    let admin = sandbox.client(ADMIN_TOKEN).await.unwrap();
    let resources: Vec<Value> = serde_saphyr::from_multiple(&shop_resources()).unwrap();
    for doc in resources.iter().filter(|d| !d.is_null()).chain(&policy_pack()).chain(&playbooks()) {
        reflex::demo::apply(&admin, doc).await.unwrap();
    }

    // The exporter: kube-state-metrics at /metrics, the kubelet's cAdvisor at /metrics/cadvisor.
    let exporter = {
        let (ksm, kubelet) = (admin.clone(), admin.clone());
        axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let client = ksm.clone();
                    async move { kube_state_metrics(&client).await }
                }),
            )
            .route(
                "/metrics/cadvisor",
                axum::routing::get(move || {
                    let client = kubelet.clone();
                    async move { cadvisor(&client).await }
                }),
            )
    };
    let exporter_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let exporter_addr = exporter_listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(exporter_listener, exporter).await });

    // The operator, as `reflex run` assembles it, reading the real Prometheus.
    let stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let token = "alertmanager-to-reflex";
    std::fs::write(dir.join("token"), token).unwrap();

    // Alertmanager, routing to the operator with bearer auth and resolutions.
    let timing = "  group_by: [alertname, namespace]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n";
    let (_am, am) = alertmanager(&dir, &reflex_route(&dir, &format!("http://{address}/alerts"), timing)).await;
    let am_port = am.rsplit(':').next().unwrap().to_owned();

    // Prometheus: kube-state-metrics and the kubelet, the mixin-style rules.
    std::fs::write(dir.join("rules.yml"), RULES).unwrap();
    let (_prom, prom_url) = prometheus(
        &dir,
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{}]\nalerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [\"127.0.0.1:{am_port}\"]\nscrape_configs:\n  - job_name: kube-state-metrics\n    honor_labels: true\n    static_configs:\n      - targets: [\"{exporter_addr}\"]\n  - job_name: kubelet\n    metrics_path: /metrics/cadvisor\n    honor_labels: true\n    static_configs:\n      - targets: [\"{exporter_addr}\"]\n",
            dir.join("rules.yml").display()
        ),
    )
    .await;

    let metrics = Arc::new(reflex::metrics::Prometheus::new(&prom_url, Duration::from_secs(10)).unwrap());
    let operator = reflex::operator::Operator::assemble(
        reflex::operator::Config {
            client: sandbox.client(OPERATOR_TOKEN).await.unwrap(),
            kube_config: sandbox.config(OPERATOR_TOKEN).await.unwrap(),
            metrics: metrics.clone(),
            prometheus: Some(reflex::mcp::server::prometheus_client(&prom_url).unwrap()),
            mcp_url: format!("http://{address}/mcp"),
            roles: reflex::operator::Roles::ALL,
            a2a: reflex::a2a::Settings { url: format!("http://{address}/a2a"), ..Default::default() },
            own_token: Some((OPERATOR_TOKEN.to_owned(), None)),
            mcp_allowed_hosts: vec![],
            mcp_audiences: vec![],
            webhook: reflex::intake::webhook::Settings { token: Some(token.into()), kill_switch: None },
            prices: BTreeMap::new(),
            audit: Arc::new(reflex::mcp::client::MemoryAudit::default()),
            audit_log: None,
            deployers: reflex::deploy::identity::Deployers::default(),
            max_concurrent_deploys: None,
            alertmanager: None,
            gitops: Default::default(),
        },
        &stop,
    );
    tokio::time::timeout(Duration::from_secs(10), operator.intake.ready()).await.unwrap();
    let _server = operator.serve(listener, stop.clone());

    // Both alerts fire in Prometheus and reach Alertmanager; intake records them (the
    // controller is not running yet: nothing has changed).
    let http = reqwest::Client::new();
    let firing = until(
        "KubePodCrashLooping, KubeHpaMaxedOut and KubeJobFailed in Alertmanager",
        Duration::from_secs(90),
        async || {
            let a = alerts(&http, &am).await;
            ["KubePodCrashLooping", "KubeHpaMaxedOut", "KubeJobFailed"].iter().all(|n| a.contains_key(*n)).then_some(a)
        },
    )
    .await;
    let rems: Api<Remediation> = Api::namespaced(admin.clone(), "shop");
    let recorded = until("a Remediation for each alert", Duration::from_secs(60), async || {
        let list = rems.list(&ListParams::default()).await.ok()?.items;
        (list.len() >= 3).then_some(list)
    })
    .await;

    // What `reflex simulate` predicts, from the cluster as it is and the same Prometheus.
    let mut world = reflex::simulate::World {
        documents: reflex::simulate::from_cluster(&admin, "shop").await.unwrap(),
        metrics: Some(metrics.clone()),
        ..Default::default()
    };
    world.namespace = Some("shop".into());
    let mut predicted = BTreeMap::new();
    for alertname in ["KubePodCrashLooping", "KubeHpaMaxedOut", "KubeJobFailed"] {
        let alert = reflex::simulate::Alert { labels: firing[alertname].clone(), annotations: BTreeMap::new() };
        let report = reflex::simulate::simulate(&world, &alert).await.unwrap();
        eprintln!("reflex simulate, {alertname}:\n{report}");
        let matching: Vec<_> = report.policies.iter().filter(|p| p.mismatch.is_none()).collect();
        let acting = matching.iter().filter(|p| matches!(p.patch, Some(Ok(_))) || p.diagnosis_only).count();
        assert_eq!(acting, 1, "{alertname}: one policy of the pack acts\n{report}");
        let other = report.policies.iter().find(|p| p.mismatch.is_some()).unwrap();
        assert!(
            other.mismatch.as_deref().unwrap().contains(alertname),
            "{alertname}: a policy that does not match says why: {other:?}"
        );
        predicted.extend(matching.into_iter().map(|p| (p.policy.clone(), p.clone())));
    }
    let aside = &predicted["shop/kube-pod-crashlooping-new-revision"];
    assert!(
        matches!(&aside.patch, Some(Err(why)) if why.contains("does not apply") && why.contains("OOM-killed")),
        "the rollback policy stands aside for an OOM-caused crash loop: {aside:?}"
    );
    for rem in &recorded {
        let policy = format!("shop/{}", rem.spec.policy_ref.name);
        let p = predicted
            .get(&policy)
            .unwrap_or_else(|| panic!("simulate found no matching policy {policy}, which the operator used"));
        let (kind, name) = p.target.clone().unwrap().unwrap();
        assert_eq!(
            (kind, name),
            (rem.spec.target.kind, rem.spec.target.name.clone()),
            "simulate resolves the same target"
        );
    }
    // Two policies match KubePodCrashLooping on one Deployment; one at a time acts on a
    // target, in name order: the rollback policy first.
    let crash = recorded.iter().find(|r| r.spec.policy_ref.name == "kube-pod-crashlooping-new-revision").unwrap();
    assert_eq!(crash.spec.target.name, "checkout", "the Pod named by the alert is traced to its Deployment");
    assert!(
        crash.spec.alert.labels["pod"].starts_with("checkout-"),
        "the alert named a Pod: {:?}",
        crash.spec.alert.labels
    );
    let hpa = recorded.iter().find(|r| r.spec.alert.name == "KubeHpaMaxedOut").unwrap();
    assert_eq!(hpa.spec.target.name, "web");
    let job = recorded.iter().find(|r| r.spec.alert.name == "KubeJobFailed").unwrap();
    assert_eq!((job.spec.target.kind, job.spec.target.name.as_str()), (reflex::api::TargetKind::Job, "nightly-report"));
    assert!(predicted["shop/kube-job-failed"].diagnosis_only && predicted["shop/kube-job-failed"].patch.is_none());
    assert_eq!(recorded.len(), 3, "one Remediation per alert and target, whichever Pods the alerts named");

    // Now the operator acts.
    let controller = {
        let stop = stop.clone();
        tokio::spawn(async move { operator.run_controller(None, async move { stop.cancelled().await }).await })
    };
    // The rollback policy stands aside (the crash loop is OOM-caused); the alert is planned
    // again at once and the OOM policy's Remediation acts — not at Alertmanager's next repeat.
    let handed_off = until("the OOM policy's Remediation after the hand-off", Duration::from_secs(60), async || {
        rems.list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|r| r.spec.policy_ref.name == "kube-pod-crashlooping-oom")
    })
    .await;
    assert_eq!(handed_off.spec.target.name, "checkout");
    let mut all = recorded.clone();
    all.push(handed_off);
    for rem in &all {
        let name = rem.metadata.name.clone().unwrap();
        let done = until(&format!("{name} to finish"), Duration::from_secs(150), async || {
            let r = rems.get(&name).await.ok()?;
            let phase = r.status.as_ref()?.phase;
            phase.is_terminal().then_some(r)
        })
        .await;
        let status = done.status.clone().unwrap();
        if rem.spec.policy_ref.name == "kube-pod-crashlooping-new-revision" {
            assert_eq!(status.phase, Phase::Cancelled, "{name}: {:?}", status.message);
            let message = status.message.clone().unwrap_or_default();
            assert!(message.contains("does not apply") && message.contains("OOM-killed"), "{name}: {message}");
            assert!(status.proposal.is_none(), "{name}: it stood aside before proposing");
            continue;
        }
        if rem.spec.alert.name == "KubeJobFailed" {
            assert_eq!(status.phase, Phase::Escalated, "{name}: {:?}", status.message);
            let message = status.message.clone().unwrap_or_default();
            assert!(
                message.starts_with("diagnosis only (trust level observe)")
                    && message.contains("Failed=True (BackoffLimitExceeded")
                    && message.contains("failed-pods: 2"),
                "{name}: the findings are for people: {message}"
            );
            assert!(
                status.proposal.is_none() && status.gate.is_none() && status.deploy.is_none(),
                "{name}: nothing proposed"
            );
            continue;
        }
        assert_eq!(status.phase, Phase::Succeeded, "{name}: {:?}", status.message);
        let verification = status.verification.as_ref().unwrap();
        let rule_metric = match rem.spec.alert.name.as_str() {
            "KubePodCrashLooping" => "kube_pod_container_status_waiting_reason",
            _ => "kube_horizontalpodautoscaler_spec_max_replicas",
        };
        assert!(
            verification.query.as_deref().unwrap_or_default().contains(rule_metric)
                && verification.condition.as_deref().unwrap_or_default().starts_with("no series")
                && verification.reproduced,
            "{name}: verified against the alert's own rule, which reproduced the alert first: {verification:?}"
        );
        let p = &predicted[&format!("shop/{}", rem.spec.policy_ref.name)];
        assert_eq!(
            status.proposal.as_ref().unwrap().patch.0,
            p.patch.clone().unwrap().unwrap(),
            "{name}: the operator's patch is the one simulate printed"
        );
        let gate = status.gate.as_ref().unwrap();
        assert_eq!(gate.decision, GateDecision::Approved);
        assert_eq!(p.gate.as_ref().unwrap().0, gate.decision, "simulate predicted the gate's decision");
    }

    let checkout = Api::<Deployment>::namespaced(admin.clone(), "shop").get("checkout").await.unwrap();
    assert_eq!(memory_limit(&checkout), "250Mi", "the limit is raised to 1.25x the working set Prometheus reported");
    let web = Api::<HorizontalPodAutoscaler>::namespaced(admin.clone(), "shop").get("web").await.unwrap();
    assert_eq!(web.spec.max_replicas, 8, "maxReplicas 4 → 8 (4 × 1.5 / 0.8)");
    let report = Api::<Job>::namespaced(admin.clone(), "shop").get("nightly-report").await.unwrap();
    assert_eq!(report.metadata.generation, Some(1), "the failed Job is never changed");
    // The alerts resolve, and the resolution reaches each Remediation.
    until("the alerts to resolve", Duration::from_secs(60), async || {
        let a = alerts(&http, &am).await;
        (!a.contains_key("KubePodCrashLooping") && !a.contains_key("KubeHpaMaxedOut")).then_some(())
    })
    .await;
    stop.cancel();
    let _ = controller.await;
    let _ = std::fs::remove_dir_all(&dir);
}
