#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The policy pack's own tests (`policies/tests`, as `reflex test` runs them), and a test file
//! whose expectation is wrong failing with what it got.

#[tokio::test]
async fn the_kubernetes_mixin_pack_passes_its_tests() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/tests");
    let (text, ok) = reflex::simulate::run_tests(&dir).await.unwrap();
    assert!(ok, "{text}");
    assert!(text.ends_with("9 passed, 0 failed\n"), "{text}");
}

#[tokio::test]
async fn a_wrong_expectation_fails_naming_what_came_instead() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("reflex-policy-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let original = std::fs::read_to_string(root.join("policies/tests/kubernetes-mixin.yaml")).unwrap();
    let wrong = original
        .replace("../kubernetes-mixin.yaml", &root.join("policies/kubernetes-mixin.yaml").display().to_string())
        .replace("../../playbooks/", &format!("{}/", root.join("playbooks").display()))
        .replacen("target: StatefulSet/db", "target: Deployment/db", 1);
    std::fs::write(dir.join("wrong.yaml"), wrong).unwrap();
    let (text, ok) = reflex::simulate::run_tests(&dir).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok);
    assert!(
        text.contains("FAIL") && text.contains("expected target Deployment/db, got Some(Ok((StatefulSet, \"db\")))"),
        "{text}"
    );
    assert!(text.ends_with("8 passed, 1 failed\n"), "{text}");
}

/// `reflex simulate --from-cluster`: a namespace copied read-only from a running cluster (here
/// the sandbox), its real Pod followed through its ReplicaSet to the Deployment, and nothing
/// written to the cluster.
#[tokio::test]
async fn simulate_copies_a_namespace_from_a_cluster_and_writes_nothing_there() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use kube::api::{Api, ListParams, PostParams};
    use serde_json::json;
    reflex::install_crypto_provider();
    let cluster = reflex::sandbox::Sandbox::start(reflex::sandbox::Config::default()).await.unwrap();
    cluster.install_crds().unwrap();
    let client = cluster.client(reflex::sandbox::ADMIN_TOKEN).await.unwrap();
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "shop", "labels": {"reflex.dev/environment": "staging"}}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut loaded = reflex::simulate::World { namespace: Some("shop".into()), ..Default::default() };
    for f in ["policies/kubernetes-mixin.yaml", "playbooks/raise-memory-limit-if-oom-killed.yaml"] {
        loaded.add_yaml(&std::fs::read_to_string(root.join(f)).unwrap(), f).unwrap();
    }
    for doc in &loaded.documents {
        let mut doc = doc.clone();
        doc["metadata"]["namespace"] = json!("shop");
        let kind = doc["kind"].as_str().unwrap().to_owned();
        let gvk = kube::core::GroupVersionKind::gvk("reflex.dev", "v1alpha1", &kind);
        let api = Api::<kube::api::DynamicObject>::namespaced_with(
            client.clone(),
            "shop",
            &kube::api::ApiResource::from_gvk(&gvk),
        );
        api.create(&PostParams::default(), &serde_json::from_value(doc).unwrap()).await.unwrap();
    }
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "checkout", "namespace": "shop"}, "spec": {"replicas": 1,
        "selector": {"matchLabels": {"app": "c"}}, "template": {"metadata": {"labels": {"app": "c"}},
        "spec": {"containers": [{"name": "app", "image": "c:1", "resources": {"limits": {"memory": "128Mi"}, "requests": {"memory": "128Mi"}}}]}}}})).unwrap();
    Api::<Deployment>::namespaced(client.clone(), "shop").create(&PostParams::default(), &d).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let pod = loop {
        if let Some(p) = pods.list(&ListParams::default()).await.unwrap().items.first() {
            break p.metadata.name.clone().unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "no Pod");
        tokio::task::yield_now().await;
    };
    let version =
        Api::<Deployment>::namespaced(client.clone(), "shop").get("checkout").await.unwrap().metadata.resource_version;

    let world = reflex::simulate::World {
        documents: reflex::simulate::from_cluster(&client, "shop").await.unwrap(),
        series: vec![reflex::simulate::Series {
            query: r#"max(max_over_time(container_memory_working_set_bytes{namespace="shop",container="app"}[15m]) * on (namespace, pod) group_left () max by (namespace, pod) (kube_pod_owner{namespace="shop",owner_kind="ReplicaSet"} * on (namespace, owner_name) group_left () max by (namespace, owner_name) (label_replace(kube_replicaset_owner{namespace="shop",owner_kind="Deployment",owner_name="checkout"}, "owner_name", "$1", "replicaset", "(.*)"))))"#.into(),
            value: Some(209_715_200.0),
        }, reflex::simulate::Series {
            query: r#"max(kube_pod_container_status_last_terminated_reason{namespace="shop",container="app",reason="OOMKilled"} * on (namespace, pod) group_left () max by (namespace, pod) (kube_pod_owner{namespace="shop",owner_kind="ReplicaSet"} * on (namespace, owner_name) group_left () max by (namespace, owner_name) (label_replace(kube_replicaset_owner{namespace="shop",owner_kind="Deployment",owner_name="checkout"}, "owner_name", "$1", "replicaset", "(.*)"))))"#.into(),
            value: Some(1.0),
        }],
        ..Default::default()
    };
    let alert = reflex::simulate::Alert {
        labels: [
            ("alertname", "KubePodCrashLooping"),
            ("namespace", "shop"),
            ("pod", pod.as_str()),
            ("container", "app"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect(),
        annotations: Default::default(),
    };
    let report = reflex::simulate::simulate(&world, &alert).await.unwrap();
    let text = report.to_string();
    assert!(text.contains("policy shop/kube-pod-crashlooping-oom: matches"), "{text}");
    assert!(text.contains("target   Deployment checkout"), "{text}");
    assert!(text.contains("+            memory: 250Mi"), "{text}");
    assert!(text.contains("gate     ApprovalRequired"), "{text}");
    let after = Api::<Deployment>::namespaced(client.clone(), "shop").get("checkout").await.unwrap();
    assert_eq!(after.metadata.resource_version, version, "nothing was written to the cluster");
}
