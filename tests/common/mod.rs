//! Set-up shared by the intake tests: a sandbox with Reflex's CRDs, namespace `shop`, the
//! Deployment `checkout` and the policy `checkout-oom`.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

pub mod mcp;
pub mod servers;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use reflex::api::policy::RemediationPolicy;
use reflex::sandbox::{ADMIN_TOKEN, Config, Sandbox};
use serde_json::{Value, json};

/// The sandbox and an admin client, with `shop/checkout` and the policy `shop/checkout-oom`
/// whose spec is `policy_spec`.
pub async fn shop_with_policy(policy_spec: Value) -> (Sandbox, kube::Client) {
    shop_with_policy_in(Config::default(), policy_spec).await
}

/// [`shop_with_policy`] on a sandbox started with `config` (its RBAC table must keep the
/// `reflex-sandbox-admin` token).
pub async fn shop_with_policy_in(config: Config, policy_spec: Value) -> (Sandbox, kube::Client) {
    reflex::install_crypto_provider();
    let sb = Sandbox::start(config).await.unwrap();
    sb.install_crds().unwrap();
    let client = sb.client(ADMIN_TOKEN).await.unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "shop"}})).unwrap())
        .await
        .unwrap();
    let policy: RemediationPolicy =
        serde_json::from_value(json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "RemediationPolicy",
        "metadata": {"name": "checkout-oom", "namespace": "shop"}, "spec": policy_spec}))
        .unwrap();
    Api::<RemediationPolicy>::namespaced(client.clone(), "shop").create(&PostParams::default(), &policy).await.unwrap();
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "checkout"}, "spec": {"replicas": 1,
        "selector": {"matchLabels": {"app": "c"}}, "template": {"metadata": {"labels": {"app": "c"}}, "spec": {"containers": [{"name": "app", "image": "c:1"}]}}}}))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), "shop").create(&PostParams::default(), &d).await.unwrap();
    // The ServiceAccount the LLM agent reads as.
    let reader: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "reflex-reader"}})).unwrap();
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), "shop")
        .create(&PostParams::default(), &reader)
        .await
        .unwrap();
    (sb, client)
}

/// The OOM policy the intake and MCP tests use.
pub fn oom_policy() -> Value {
    json!({"match": {"alertnames": ["KubeContainerOOMKilled"]}, "target": {"kind": "Deployment", "name": "{{ labels.deployment }}"},
        "playbook": "raise-memory-limit", "trust": {"level": "auto"},
        "verify": {"query": "x", "operator": "<", "threshold": 1, "for": "2s", "timeout": "30s", "interval": "1s"}})
}

/// The RBAC table the stage tests run under: an operator that reads, reviews access and may
/// act as the two deployers — but cannot write a workload itself; a staging deployer that may
/// patch Deployments in `default`, and a production deployer that may too.
pub const STAGES_RBAC: &str = r#"
users:
  - {name: sandbox-admin, token: reflex-sandbox-admin, groups: ["system:masters"]}
serviceAccounts:
  - {namespace: reflex-system, name: reflex, token: t-operator}
grants:
  - subjects: [{kind: ServiceAccount, namespace: reflex-system, name: reflex}]
    rules:
      - {apiGroups: ["*"], resources: ["*"], verbs: ["get", "list", "watch"]}
      - {apiGroups: ["authorization.k8s.io"], resources: ["subjectaccessreviews"], verbs: ["create"]}
      - {apiGroups: [""], resources: ["groups"], verbs: ["impersonate"]}
  - subjects: [{kind: ServiceAccount, namespace: reflex-system, name: reflex}]
    namespaces: [reflex-system]
    rules:
      - {apiGroups: [""], resources: ["serviceaccounts"], verbs: ["impersonate"], resourceNames: ["reflex-deployer-staging", "reflex-deployer-production"]}
  - subjects:
      - {kind: ServiceAccount, namespace: reflex-system, name: reflex-deployer-staging}
      - {kind: ServiceAccount, namespace: reflex-system, name: reflex-deployer-production}
    namespaces: [default]
    rules:
      - {apiGroups: ["apps"], resources: ["deployments"], verbs: ["get", "patch"]}
      - {apiGroups: ["batch"], resources: ["jobs"], verbs: ["create", "get", "delete"]}
      - {apiGroups: [""], resources: ["configmaps"], verbs: ["create", "get", "delete"]}
"#;
