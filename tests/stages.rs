#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Stage shells against the sandbox: what the demo does not show.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use reflex::api::remediation::{CiVerdict, Remediation, Step};
use reflex::ports::Test;
use reflex::ports::{EffectKey, StageInput};
use reflex::sandbox::{ADMIN_TOKEN, Config, Sandbox};
use serde_json::json;

async fn setup() -> (Sandbox, kube::Client) {
    reflex::install_crypto_provider();
    let sb = Sandbox::start(Config::default()).await.unwrap();
    sb.install_crds().unwrap();
    let client = sb.client(ADMIN_TOKEN).await.unwrap();
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "checkout", "namespace": "default"}, "spec": {"replicas": 1,
        "selector": {"matchLabels": {"app": "c"}}, "template": {"metadata": {"labels": {"app": "c"}}, "spec": {"containers": [{"name": "app", "image": "c:1", "resources": {"limits": {"memory": "128Mi"}}}]}}}}))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), "default").create(&PostParams::default(), &d).await.unwrap();
    (sb, client)
}

fn remediation_with_patch(patch: serde_json::Value) -> Remediation {
    let digest = reflex::patch::digest(&patch);
    serde_json::from_value(json!({
        "apiVersion": "reflex.dev/v1alpha1", "kind": "Remediation",
        "metadata": {"name": "r", "namespace": "default", "uid": "u-1"},
        "spec": {"policyRef": {"name": "p"}, "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "checkout"},
                 "alert": {"name": "A", "fingerprint": "f", "startsAt": "2026-01-01T00:00:00Z"}},
        "status": {"phase": "Testing", "proposal": {"patchType": "strategic", "patch": patch, "digest": digest, "rationale": "t", "producedBy": "playbook"}}
    }))
    .unwrap()
}

fn input(rem: Remediation) -> StageInput {
    StageInput {
        remediation: Arc::new(rem),
        policy: None,
        key: EffectKey { uid: "u-1".into(), step: Step::Test, attempt: 1 },
        cancel: Default::default(),
    }
}

#[tokio::test]
async fn a_rejected_dry_run_fails_with_the_api_servers_message_and_changes_nothing() {
    let (_sb, client) = setup().await;
    let dry = reflex::ci::dryrun::DryRun { client: client.clone() };
    // Within the safety rules (1 → 1.5 is a bounded change), but not an integer.
    let bad = dry.test(input(remediation_with_patch(json!({"spec": {"replicas": 1.5}})))).await.unwrap();
    assert_eq!(bad.verdict, CiVerdict::Failed);
    assert!(bad.messages[0].contains("spec.replicas"), "{:?}", bad.messages);
    let good_patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "256Mi"}}}]}}}});
    let good = dry.test(input(remediation_with_patch(good_patch.clone()))).await.unwrap();
    assert_eq!(good.verdict, CiVerdict::Passed, "{:?}", good.messages);
    assert_eq!(good.proposal_digest, reflex::patch::digest(&good_patch));
    let d = Api::<Deployment>::namespaced(client, "default").get("checkout").await.unwrap();
    assert_eq!(d.metadata.generation, Some(1), "a dry run stores nothing");
    let limits = d.spec.template.spec.unwrap().containers[0].resources.clone().unwrap().limits.unwrap();
    assert_eq!(limits["memory"].0, "128Mi");
}

#[tokio::test]
async fn ci_runs_the_patch_safety_check_again_whoever_wrote_the_proposal() {
    let (_sb, client) = setup().await;
    let dry = reflex::ci::dryrun::DryRun { client: client.clone() };
    // A proposal edited in status after it was checked: privileged, and past the factor.
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app",
        "securityContext": {"privileged": true}, "resources": {"limits": {"memory": "64Gi"}}}]}}}});
    let r = dry.test(input(remediation_with_patch(patch.clone()))).await.unwrap();
    assert_eq!(r.verdict, CiVerdict::Failed);
    let m = &r.messages[0];
    assert!(m.contains("patch-safety check refused") && m.contains("privilege") && m.contains("limits.memory"), "{m}");
    assert_eq!(r.proposal_digest, reflex::patch::digest(&patch));
    let d = Api::<Deployment>::namespaced(client, "default").get("checkout").await.unwrap();
    assert_eq!(d.metadata.generation, Some(1), "nothing was sent, not even a dry run");
}

#[tokio::test]
async fn the_playbook_executor_refuses_what_the_patch_safety_check_refuses() {
    use reflex::api::playbook::Playbook;
    use reflex::api::policy::RemediationPolicy;
    use reflex::ports::Propose;
    let (_sb, client) = setup().await;
    // The playbook's author allowed the security context; the check never does.
    let pb: Playbook = serde_json::from_value(json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "Playbook",
        "metadata": {"name": "unsafe", "namespace": "default"},
        "spec": {"targetKinds": ["Deployment"], "patch": {"mode": "template", "type": "strategic",
            "template": "spec:\n  template:\n    spec:\n      containers:\n        - name: app\n          securityContext: {privileged: true}\n",
            "allowedPaths": ["spec.template.spec.containers[*].securityContext"]}}}))
    .unwrap();
    Api::<Playbook>::namespaced(client.clone(), "default").create(&PostParams::default(), &pb).await.unwrap();
    let mut policy: RemediationPolicy =
        serde_saphyr::from_str(&std::fs::read_to_string("tests/fixtures/policy-good.yaml").unwrap()).unwrap();
    policy.spec.playbook = Some("unsafe".into());
    let policy = reflex::api::validate::ValidPolicy::from_spec(&policy.spec).unwrap();
    let mut rem = remediation_with_patch(json!({}));
    rem.status = None;
    let mut input = input(rem);
    input.policy = Some(Arc::new(policy));
    input.key.step = Step::Propose;
    // The playbook reads nothing: no metrics are ever asked for.
    let unused = reflex::metrics::Prometheus::new("http://127.0.0.1:9", std::time::Duration::from_secs(1)).unwrap();
    let metrics: Arc<dyn reflex::metrics::MetricsSource> = Arc::new(unused);
    let executor = reflex::agent::executor::PlaybookExecutor::new(client.clone(), metrics);
    let err = executor.propose(input).await.expect_err("refused");
    assert!(err.message.contains("patch-safety check refused"), "{err}");
    assert!(err.message.contains("securityContext"), "{err}");
    let d = Api::<Deployment>::namespaced(client, "default").get("checkout").await.unwrap();
    assert_eq!(d.metadata.generation, Some(1), "nothing was changed");
}

/// A Remediation named `name` whose proposal `patch` passed CI, as the controller would hand
/// it to deploy.
fn tested(name: &str, patch: serde_json::Value) -> Remediation {
    let mut rem = remediation_with_patch(patch);
    rem.metadata.name = Some(name.into());
    rem.metadata.uid = Some(format!("uid-{name}"));
    let status = rem.status.as_mut().unwrap();
    let digest = status.proposal.as_ref().unwrap().digest.clone();
    status.ci = Some(
        serde_json::from_value(json!({"proposalDigest": digest, "backend": "dryRun", "verdict": "Passed"})).unwrap(),
    );
    rem
}

/// Snapshot and apply `rem`'s change with `deploy`, as the controller does; the Remediation
/// with its deploy record, ready to be rolled back.
async fn deployed(deploy: &reflex::deploy::apply::ServerSideApply, mut rem: Remediation) -> Remediation {
    use reflex::ports::Deploy;
    let snapshot = deploy.snapshot(input(rem.clone())).await.unwrap();
    rem.status.as_mut().unwrap().deploy = Some(snapshot);
    let status = rem.status.as_ref().unwrap();
    let patch =
        reflex::patch::TestedPatch::new(status.proposal.as_ref().unwrap(), status.ci.as_ref().unwrap()).unwrap();
    let record = deploy.apply(input(rem.clone()), patch).await.unwrap();
    assert_eq!(record.field_manager, Some(format!("reflex-{}", rem.metadata.name.clone().unwrap())));
    rem.status.as_mut().unwrap().deploy = Some(record);
    rem
}

async fn app_container(client: &kube::Client) -> serde_json::Value {
    let d = Api::<Deployment>::namespaced(client.clone(), "default").get("checkout").await.unwrap();
    serde_json::to_value(&d.spec.template.spec.unwrap().containers[0]).unwrap()
}

/// Each Remediation applies under its own field manager: a second change to the same container
/// leaves the first one's fields intact, and rolling the second back releases only what it
/// took. (With one shared manager, the image bump's apply dropped the memory limit and
/// request the raise had set.)
#[tokio::test]
async fn successive_remediations_keep_each_others_fields_and_a_rollback_releases_only_its_own() {
    use reflex::ports::Rollback;
    let (_sb, client) = setup().await;
    let deploy = reflex::deploy::apply::ServerSideApply { client: client.clone() };
    let memory = json!({"spec": {"template": {"spec": {"containers": [{"name": "app",
        "resources": {"limits": {"memory": "250Mi"}, "requests": {"memory": "250Mi"}}}]}}}});
    let image = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "c:2"}]}}}});

    deployed(&deploy, tested("raise-memory", memory)).await;
    let bump = deployed(&deploy, tested("bump-image", image)).await;
    let app = app_container(&client).await;
    assert_eq!(app["image"], "c:2");
    assert_eq!(app["resources"], json!({"limits": {"memory": "250Mi"}, "requests": {"memory": "250Mi"}}), "{app}");

    deploy.rollback(input(bump)).await.unwrap();
    let app = app_container(&client).await;
    assert_eq!(app["image"], "c:1", "the bump is rolled back");
    assert_eq!(
        app["resources"],
        json!({"limits": {"memory": "250Mi"}, "requests": {"memory": "250Mi"}}),
        "the raise is untouched by the other Remediation's rollback: {app}"
    );
}
