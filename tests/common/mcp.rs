//! Set-up shared by the MCP tests: a sandbox with an RBAC table (an operator that may review
//! tokens and impersonate; alice in group oncall reading `shop`; bob with nothing), Reflex's
//! MCP server on a loopback port, and an rmcp client.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use reflex::mcp::identity::Identities;
use reflex::mcp::server::{Backends, ReflexMcp};
use reflex::sandbox::Sandbox;
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceExt};

const RBAC: &str = r#"
users:
  - {name: sandbox-admin, token: reflex-sandbox-admin, groups: ["system:masters"]}
  - {name: reflex-operator, token: t-operator}
  - {name: alice, token: t-alice, groups: [oncall]}
  - {name: bob, token: t-bob}
  - {name: carol, token: t-carol-for-reflex, groups: [oncall], audiences: [reflex]}
grants:
  - subjects: [{kind: User, name: reflex-operator}]
    rules:
      - {apiGroups: [""], resources: ["users", "groups", "serviceaccounts"], verbs: ["impersonate"]}
      - {apiGroups: ["authentication.k8s.io"], resources: ["uids", "userextras/authentication.kubernetes.io/credential-id"], verbs: ["impersonate"]}
      - {apiGroups: ["authentication.k8s.io"], resources: ["tokenreviews"], verbs: ["create"]}
      - {apiGroups: [""], resources: ["namespaces"], verbs: ["list"]}
  - subjects: [{kind: Group, name: oncall}, {kind: ServiceAccount, namespace: shop, name: reflex-reader}]
    rules:
      - {apiGroups: ["reflex.dev"], resources: ["prometheus"], verbs: ["get"]}
  - subjects: [{kind: ServiceAccount, namespace: shop, name: reflex-reader}]
    namespaces: [shop]
    rules:
      - {apiGroups: ["", "apps"], resources: ["pods", "pods/log", "configmaps", "events", "deployments", "replicasets"], verbs: ["get", "list", "watch"]}
  - subjects: [{kind: Group, name: oncall}]
    namespaces: [shop]
    rules:
      - {apiGroups: ["", "apps", "reflex.dev"], resources: ["pods", "pods/log", "configmaps", "secrets", "events", "deployments", "replicasets", "remediations", "playbooks"], verbs: ["get", "list", "watch"]}
      - {apiGroups: ["reflex.dev"], resources: ["remediationapprovals"], verbs: ["create"]}
"#;

pub struct Setup {
    pub sb: Sandbox,
    pub admin: kube::Client,
    pub url: String,
}

/// The sandbox and the MCP server; `prometheus` backs the PromQL tools.
pub async fn setup_with(prometheus: Option<prometheus_http_query::Client>) -> Setup {
    let config = reflex::sandbox::Config {
        rbac: reflex::sandbox::rbac::Table::from_yaml(RBAC).unwrap(),
        ..reflex::sandbox::Config::default()
    };
    let (sb, admin) = super::shop_with_policy_in(config, super::oom_policy()).await;
    let operator = sb.client("t-operator").await.unwrap();
    let identities = Arc::new(Identities::new(operator.clone(), sb.config("t-operator").await.unwrap()));
    let router = reflex::mcp::router(
        ReflexMcp::new(Backends {
            prometheus,
            operator: Some(operator),
            metrics: None,
            agents: None,
            tool_metrics: Default::default(),
        }),
        identities,
        vec![],
        tokio_util::sync::CancellationToken::new(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    Setup { sb, admin, url }
}

pub async fn connect(url: &str, token: &str) -> RunningService<RoleClient, ()> {
    let config = StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(token.to_owned());
    let transport = StreamableHttpClientTransport::with_client(reqwest::Client::new(), config);
    ().serve(transport).await.expect("MCP client connects")
}

pub async fn setup() -> Setup {
    setup_with(None).await
}

/// A "Prometheus" that accepts, reads the request and never answers; reports when each
/// connection is closed by the client (how long it stayed open).
pub async fn hanging_prometheus() -> (String, tokio::sync::mpsc::UnboundedReceiver<Duration>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let opened = Instant::now();
                let mut buf = [0u8; 4096];
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = tx.send(opened.elapsed());
            });
        }
    });
    (url, rx)
}

/// The Remediation `shop/checkout-oom-checkout-1` the MCP tests read back.
pub async fn create_remediation(admin: &kube::Client) {
    let rem: reflex::api::remediation::Remediation = serde_json::from_value(serde_json::json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "Remediation",
        "metadata": {"name": "checkout-oom-checkout-1", "namespace": "shop"},
        "spec": {"policyRef": {"name": "checkout-oom"}, "alert": {"name": "KubeContainerOOMKilled", "fingerprint": "f1", "labels": {}, "annotations": {},
            "startsAt": "2026-01-01T00:00:00Z"}, "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "checkout"}}}))
    .unwrap();
    kube::Api::<reflex::api::remediation::Remediation>::namespaced(admin.clone(), "shop")
        .create(&kube::api::PostParams::default(), &rem)
        .await
        .unwrap();
}
