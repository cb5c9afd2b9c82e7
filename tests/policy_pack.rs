#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The policy pack's own tests (`policies/tests`, as `reflex test` runs them), and a test file
//! whose expectation is wrong failing with what it got.

#[tokio::test]
async fn the_kubernetes_mixin_pack_passes_its_tests() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/tests");
    let (text, ok) = reflex::simulate::run_tests(&dir).await.unwrap();
    assert!(ok, "{text}");
    assert!(text.ends_with("4 passed, 0 failed\n"), "{text}");
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
        .replace("target: StatefulSet/db", "target: Deployment/db");
    std::fs::write(dir.join("wrong.yaml"), wrong).unwrap();
    let (text, ok) = reflex::simulate::run_tests(&dir).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok);
    assert!(
        text.contains("FAIL") && text.contains("expected target Deployment/db, got Some(Ok((StatefulSet, \"db\")))"),
        "{text}"
    );
    assert!(text.ends_with("3 passed, 1 failed\n"), "{text}");
}
