#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Stage shells against the sandbox: what the demo does not show.

mod common;

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use reflex::api::remediation::{CiVerdict, Remediation, Step};
use reflex::ports::Test;
use reflex::ports::{EffectKey, StageInput};
use reflex::sandbox::{ADMIN_TOKEN, Config, Sandbox};
use serde_json::json;

async fn setup() -> (Sandbox, kube::Client) {
    setup_with(common::STAGES_RBAC).await
}

/// A sandbox under `rbac`, with the `checkout` Deployment; the administrator's client.
async fn setup_with(rbac: &str) -> (Sandbox, kube::Client) {
    setup_in(Config { rbac: reflex::sandbox::rbac::Table::from_yaml(rbac).unwrap(), ..Config::default() }).await
}

/// A sandbox started with `config`, with the `checkout` Deployment; the administrator's client.
async fn setup_in(config: Config) -> (Sandbox, kube::Client) {
    reflex::install_crypto_provider();
    let sb = Sandbox::start(config).await.unwrap();
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
    let (sb, client) = setup().await;
    let dry = dry_run(&sb).await;
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
    let (sb, client) = setup().await;
    let dry = dry_run(&sb).await;
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

/// A policy at trust `auto` whose playbook, `change-app`, may raise the app container's memory
/// limit (at most 3x, at most 2Gi) and move its image to a newer tag of the same repository.
async fn auto_policy_and_playbook(client: &kube::Client) {
    use reflex::api::playbook::Playbook;
    let pb: Playbook = serde_json::from_value(json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "Playbook",
        "metadata": {"name": "change-app", "namespace": "default"},
        "spec": {"targetKinds": ["Deployment"], "patch": {"mode": "template", "type": "strategic",
            "template": "spec:\n  template:\n    spec:\n      containers:\n        - name: app\n          image: \"{{ params.image }}\"\n          resources:\n            limits: {memory: \"{{ params.memory }}\"}\n",
            "parameters": [{"name": "memory", "type": "quantity", "value": "'256Mi'", "min": "64Mi", "max": "2Gi", "maxFactor": 3},
                           {"name": "image", "type": "image", "value": "'c:2'", "newer": true}],
            "allowedPaths": ["spec.template.spec.containers[*].resources.limits.memory", "spec.template.spec.containers[*].image"]}}}))
    .unwrap();
    Api::<Playbook>::namespaced(client.clone(), "default").create(&PostParams::default(), &pb).await.unwrap();
    // The policy object too: the gate reads its trust record.
    let policy = reflex::api::RemediationPolicy::new("p", auto_policy_spec());
    Api::<reflex::api::RemediationPolicy>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
}

fn auto_policy_spec() -> reflex::api::policy::RemediationPolicySpec {
    serde_json::from_value(json!({
        "match": {"alertnames": ["A"]}, "target": {"kind": "Deployment", "name": "checkout"}, "trust": {"level": "auto"},
        "playbook": "change-app",
        "verify": {"query": "x", "operator": "<", "threshold": 1, "for": "2s", "timeout": "30s", "interval": "1s"}}))
    .unwrap()
}

fn auto_policy() -> Arc<reflex::api::validate::ValidPolicy> {
    Arc::new(reflex::api::validate::ValidPolicy::from_spec(&auto_policy_spec()).unwrap())
}

/// What the controller hands the deploy stage for `rem`: with its policy.
fn deploy_input(rem: Remediation) -> StageInput {
    let mut input = input(rem);
    input.policy = Some(auto_policy());
    input.key.step = Step::Deploy;
    input
}

/// The deploy stage as the operator assembles it: asking the trust gate again.
/// The operator's client, and the deployer identities it acts as.
async fn operator(sb: &Sandbox) -> (kube::Client, reflex::deploy::identity::DeployerIdentity) {
    let config = sb.config("t-operator").await.unwrap();
    let impersonator = Arc::new(reflex::cluster::Impersonator::new(config.clone()));
    let identity = reflex::deploy::identity::DeployerIdentity { deployers: Default::default(), impersonator };
    (kube::Client::try_from(config).unwrap(), identity)
}

/// CI's dry-run as the operator assembles it.
async fn dry_run(sb: &Sandbox) -> reflex::ci::Ci {
    let (client, identity) = operator(sb).await;
    reflex::ci::Ci::new(client, identity)
}

/// The deploy stage as the operator assembles it: as the operator, asking the trust gate
/// again, writing as the deployer.
async fn deployer(sb: &Sandbox) -> reflex::deploy::apply::ServerSideApply {
    let (client, identity) = operator(sb).await;
    let gate = Arc::new(reflex::gate::trust::TrustGate { client: client.clone() });
    reflex::deploy::apply::ServerSideApply { client, gate, identity, kill_switch: None }
}

/// Labels namespace `default` as staging (unlabelled namespaces count as production).
async fn staging(client: &kube::Client) {
    use k8s_openapi::api::core::v1::Namespace;
    let patch = json!({"metadata": {"labels": {"reflex.dev/environment": "staging"}}});
    Api::<Namespace>::all(client.clone())
        .patch("default", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(patch))
        .await
        .unwrap();
}

/// The target's revision now, as CI records the one it tested.
async fn revision(client: &kube::Client) -> String {
    let d = Api::<Deployment>::namespaced(client.clone(), "default").get("checkout").await.unwrap();
    format!("generation {}", d.metadata.generation.unwrap())
}

/// `rem` as CI left it having tested the target as it is now, and snapshotted.
async fn tested_now(
    deploy: &reflex::deploy::apply::ServerSideApply,
    client: &kube::Client,
    mut rem: Remediation,
) -> Remediation {
    use reflex::ports::Deploy;
    rem.status.as_mut().unwrap().ci.as_mut().unwrap().target_revision = Some(revision(client).await);
    let snapshot = deploy.snapshot(deploy_input(rem.clone())).await.unwrap();
    rem.status.as_mut().unwrap().deploy = Some(snapshot);
    rem
}

fn tested_patch(rem: &Remediation) -> reflex::patch::TestedPatch {
    let status = rem.status.as_ref().unwrap();
    reflex::patch::TestedPatch::new(status.proposal.as_ref().unwrap(), status.ci.as_ref().unwrap()).unwrap()
}

/// Test, snapshot and apply `rem`'s change with `deploy`, as the controller does; the
/// Remediation with its deploy record, ready to be rolled back.
async fn deployed(
    deploy: &reflex::deploy::apply::ServerSideApply,
    client: &kube::Client,
    rem: Remediation,
) -> Remediation {
    use reflex::ports::Deploy;
    let mut rem = tested_now(deploy, client, rem).await;
    let record = deploy.apply(deploy_input(rem.clone()), tested_patch(&rem)).await.unwrap();
    let manager = record.field_manager.clone().unwrap();
    assert!(manager.starts_with(&format!("reflex-{}-", rem.metadata.name.clone().unwrap())), "{manager}");
    rem.status.as_mut().unwrap().deploy = Some(record);
    rem
}

async fn app_container(client: &kube::Client) -> serde_json::Value {
    let d = Api::<Deployment>::namespaced(client.clone(), "default").get("checkout").await.unwrap();
    serde_json::to_value(&d.spec.template.spec.unwrap().containers[0]).unwrap()
}

/// Each Remediation applies under its own field manager: a second change to the same container
/// leaves the first one's fields intact, and rolling the second back releases only what it
/// took. (With one shared manager, the image bump's apply dropped the memory limit the raise
/// had set.)
#[tokio::test]
async fn successive_remediations_keep_each_others_fields_and_a_rollback_releases_only_its_own() {
    use reflex::ports::Rollback;
    let (sb, client) = setup().await;
    staging(&client).await;
    auto_policy_and_playbook(&client).await;
    let deploy = deployer(&sb).await;
    let memory = json!({"spec": {"template": {"spec": {"containers": [{"name": "app",
        "resources": {"limits": {"memory": "250Mi"}}}]}}}});
    let image = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "c:2"}]}}}});

    let raise = deployed(&deploy, &client, tested("raise-memory", memory)).await;
    let record = raise.status.as_ref().unwrap().deploy.clone().unwrap();
    assert_eq!(record.identity.as_deref(), Some("system:serviceaccount:reflex-system:reflex-deployer-staging"));
    let as_operator = Api::<Deployment>::namespaced(operator(&sb).await.0, "default")
        .patch(
            "checkout",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(as_operator, kube::Error::Api(ref s) if s.code == 403),
        "the operator cannot write: {as_operator}"
    );
    let bump = deployed(&deploy, &client, tested("bump-image", image)).await;
    let app = app_container(&client).await;
    assert_eq!(app["image"], "c:2");
    assert_eq!(app["resources"], json!({"limits": {"memory": "250Mi"}}), "{app}");

    deploy.rollback(deploy_input(bump)).await.unwrap();
    let app = app_container(&client).await;
    assert_eq!(app["image"], "c:1", "the bump is rolled back");
    assert_eq!(
        app["resources"],
        json!({"limits": {"memory": "250Mi"}}),
        "the raise is untouched by the other Remediation's rollback: {app}"
    );
}

/// Status is a record, not proof: a proposal and CI digest rewritten in status after CI (here
/// privileged, and far past the factor) are refused by deploy's own safety check, and
/// nothing is written.
#[tokio::test]
async fn deploy_refuses_a_proposal_edited_in_status_after_ci() {
    use reflex::ports::Deploy;
    let (sb, client) = setup().await;
    staging(&client).await;
    auto_policy_and_playbook(&client).await;
    let deploy = deployer(&sb).await;
    let forged = json!({"spec": {"template": {"spec": {"containers": [{"name": "app",
        "securityContext": {"privileged": true}, "resources": {"limits": {"memory": "64Gi"}}}]}}}});
    let rem = tested_now(&deploy, &client, tested("forged", forged)).await;
    let err = deploy.apply(deploy_input(rem.clone()), tested_patch(&rem)).await.unwrap_err();
    assert_eq!(err.category, reflex::api::ErrorCategory::NeedsHuman);
    assert!(err.message.contains("refusing to deploy") && err.message.contains("privilege"), "{err}");
    let app = app_container(&client).await;
    assert_eq!((app["resources"]["limits"]["memory"].as_str(), app.get("securityContext")), (Some("128Mi"), None));
}

/// A change approved (or left waiting) while people edited the target is not applied over
/// their edit: deploy answers Conflict (the controller tests it again), naming the revision
/// CI tested and the one it found.
#[tokio::test]
async fn deploy_refuses_when_the_target_changed_since_ci_tested_it() {
    use reflex::ports::Deploy;
    let (sb, client) = setup().await;
    staging(&client).await;
    auto_policy_and_playbook(&client).await;
    let deploy = deployer(&sb).await;
    let raise = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "250Mi"}}}]}}}});
    let rem = tested_now(&deploy, &client, tested("raise", raise)).await;
    // Someone scales the Deployment by hand in between.
    Api::<Deployment>::namespaced(client.clone(), "default")
        .patch(
            "checkout",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    let err = deploy.apply(deploy_input(rem.clone()), tested_patch(&rem)).await.unwrap_err();
    assert_eq!(err.category, reflex::api::ErrorCategory::Conflict, "tested again, not escalated: {err}");
    assert!(err.message.contains("tested at generation 1, now generation 2"), "{err}");
    assert_eq!(app_container(&client).await["resources"]["limits"]["memory"], "128Mi", "nothing was applied");
}

/// In production the gate wants a person: an approval written into status is not enough —
/// deploy reads the RemediationApprovals itself, refuses without one, deploys with one.
#[tokio::test]
async fn in_production_deploy_reads_the_approval_itself() {
    use reflex::api::approval::RemediationApproval;
    use reflex::ports::Deploy;
    let (sb, client) = setup().await;
    auto_policy_and_playbook(&client).await;
    let deploy = deployer(&sb).await;
    let raise = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "250Mi"}}}]}}}});
    let mut rem = tested_now(&deploy, &client, tested("raise", raise)).await;
    rem.status.as_mut().unwrap().approval = Some(
        serde_json::from_value(
            json!({"name": "forged", "decision": "approve", "approver": "alice", "decidedAt": "2026-01-01T00:00:00Z"}),
        )
        .unwrap(),
    );
    let err = deploy.apply(deploy_input(rem.clone()), tested_patch(&rem)).await.unwrap_err();
    assert!(err.message.contains("do not approve it"), "{err}");
    assert_eq!(app_container(&client).await["resources"]["limits"]["memory"], "128Mi");

    let approval: RemediationApproval = serde_json::from_value(json!({
        "apiVersion": "reflex.dev/v1alpha1", "kind": "RemediationApproval", "metadata": {"name": "ok", "namespace": "default"},
        "spec": {"remediationRef": {"name": "raise", "uid": "uid-raise"}, "decision": "approve", "approver": "alice",
                 "proposalDigest": rem.status.as_ref().unwrap().proposal.as_ref().unwrap().digest}}))
    .unwrap();
    Api::<RemediationApproval>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &approval)
        .await
        .unwrap();
    deploy.apply(deploy_input(rem.clone()), tested_patch(&rem)).await.unwrap();
    assert_eq!(app_container(&client).await["resources"]["limits"]["memory"], "250Mi");
}

/// A deployer its RBAC does not allow the change stops the Remediation before anything is
/// written, naming the permission to grant (here the staging deployer may only read).
#[tokio::test]
async fn a_deployer_without_the_permission_is_refused_with_the_permission_named() {
    use reflex::ports::Deploy;
    let read_only = common::STAGES_RBAC.replace(r#"verbs: ["get", "patch"]"#, r#"verbs: ["get"]"#);
    let (sb, client) = setup_with(&read_only).await;
    staging(&client).await;
    auto_policy_and_playbook(&client).await;
    let deploy = deployer(&sb).await;
    let raise = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "250Mi"}}}]}}}});
    let rem = tested_now(&deploy, &client, tested("raise", raise)).await;
    let err = deploy.apply(deploy_input(rem.clone()), tested_patch(&rem)).await.unwrap_err();
    assert_eq!(err.category, reflex::api::ErrorCategory::NeedsHuman);
    assert!(
        err.message.contains(
            r#"system:serviceaccount:reflex-system:reflex-deployer-staging may not patch deployments.apps "checkout" in namespace default"#
        ),
        "{err}"
    );
    assert_eq!(app_container(&client).await["resources"]["limits"]["memory"], "128Mi", "nothing was applied");
}

/// A deploy resumed after its write landed (the operator stopped before recording it) finds
/// its own change in place and completes; it is not refused as if someone else had edited
/// the target since CI.
#[tokio::test]
async fn a_deploy_resumed_after_its_write_landed_completes() {
    use reflex::ports::Deploy;
    let (sb, client) = setup().await;
    staging(&client).await;
    auto_policy_and_playbook(&client).await;
    let deploy = deployer(&sb).await;
    let raise = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "250Mi"}}}]}}}});
    let before_apply = tested_now(&deploy, &client, tested("raise", raise)).await;
    deploy.apply(deploy_input(before_apply.clone()), tested_patch(&before_apply)).await.unwrap();
    // The record of that apply was lost: the same effect runs again from the same status.
    let record = deploy.apply(deploy_input(before_apply.clone()), tested_patch(&before_apply)).await.unwrap();
    assert!(record.applied_at.is_some(), "completed, recorded this time");
    assert_eq!(app_container(&client).await["resources"]["limits"]["memory"], "250Mi");
}

/// Rollback restores what status says was there before — and status can be tampered with.
/// A forged proposal with a matching digest and a forged `previous` (a privileged container,
/// an image from another registry) is refused by the safety check's fixed refusals, naming
/// them; nothing is written. (Amounts are not judged: undoing a raise is what a rollback is.)
#[tokio::test]
async fn a_rollback_from_a_tampered_status_cannot_write_what_no_change_may() {
    use reflex::ports::Rollback;
    let (sb, client) = setup().await;
    staging(&client).await;
    auto_policy_and_playbook(&client).await;
    let deploy = deployer(&sb).await;
    // This Remediation did write the target (so a rollback has something to undo)...
    let raise = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "250Mi"}}}]}}}});
    deployed(&deploy, &client, tested("forged-rollback", raise)).await;
    // ...and then its status is forged.
    let forged = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "evil.example/miner:1",
        "securityContext": {"privileged": true}}]}}}});
    let mut rem = tested("forged-rollback", forged.clone());
    let status = rem.status.as_mut().unwrap();
    status.deploy = Some(
        // No apply recorded: the drift check (which compares with what was applied) is skipped.
        serde_json::from_value(json!({"previous": forged, "previousResourceVersion": "1"})).unwrap(),
    );
    let err = deploy.rollback(deploy_input(rem)).await.unwrap_err();
    assert_eq!(err.category, reflex::api::ErrorCategory::NeedsHuman);
    assert!(err.message.contains("refusing to roll back") && err.message.contains("privilege"), "{err}");
    assert!(err.message.contains("evil.example/miner"), "{err}");
    let app = app_container(&client).await;
    assert_eq!((app["image"].as_str(), app.get("securityContext")), (Some("c:1"), None), "nothing was written");
}

/// A change that restarts Pods waits while a PodDisruptionBudget covering them has no
/// headroom for what the rollout takes down (deferred, not refused, nothing written), and
/// deploys once the budget allows it.
#[tokio::test]
async fn a_change_that_restarts_pods_waits_for_disruption_headroom() {
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use kube::api::{Patch, PatchParams};
    use reflex::ports::Deploy;
    let (sb, client) = setup().await;
    staging(&client).await;
    auto_policy_and_playbook(&client).await;
    let deployments = Api::<Deployment>::namespaced(client.clone(), "default");
    let two_one_at_a_time = json!({"spec": {"replicas": 2,
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}}});
    deployments.patch("checkout", &PatchParams::default(), &Patch::Merge(two_one_at_a_time)).await.unwrap();
    let budgets = Api::<PodDisruptionBudget>::namespaced(client.clone(), "default");
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({"metadata": {"name": "checkout"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "c"}}}}))
    .unwrap();
    budgets.create(&PostParams::default(), &pdb).await.unwrap();
    // Both Pods ready, and the budget's status current: it allows no disruption.
    let settled = |want_allowed: i32| {
        let budgets = budgets.clone();
        async move {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                let b = budgets.get("checkout").await.unwrap();
                let status = b.status.clone().unwrap_or_default();
                if status.observed_generation == b.metadata.generation
                    && status.current_healthy == Some(2)
                    && status.disruptions_allowed == Some(want_allowed)
                {
                    return;
                }
                assert!(tokio::time::Instant::now() < deadline, "the budget never settled: {status:?}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    settled(0).await;

    let image = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "c:2"}]}}}});
    let deploy = deployer(&sb).await;
    let rem = tested_now(&deploy, &client, tested("bump", image)).await;
    let err = deploy.apply(deploy_input(rem.clone()), tested_patch(&rem)).await.unwrap_err();
    assert_eq!(err.category, reflex::api::ErrorCategory::Deferred, "{err}");
    assert!(err.message.contains("PodDisruptionBudget default/checkout allows 0 disruption(s)"), "{err}");
    assert_eq!(app_container(&client).await["image"], "c:1", "nothing was applied");

    budgets
        .patch("checkout", &PatchParams::default(), &Patch::Merge(json!({"spec": {"minAvailable": 1}})))
        .await
        .unwrap();
    settled(1).await;
    let record = deploy.apply(deploy_input(rem.clone()), tested_patch(&rem)).await.unwrap();
    assert!(record.applied_at.is_some());
    assert_eq!(app_container(&client).await["image"], "c:2");
}

/// Deploy goes by the policy and the kill switch as they are when it writes, not as the
/// controller saw them when the step started: a policy suspended since waits (Deferred), the
/// kill switch turned on waits, a policy lowered to `propose` since wants an approval and is
/// refused without one; with all of that undone, the change lands.
#[tokio::test]
async fn deploy_goes_by_the_policy_and_the_kill_switch_as_they_are_now() {
    use kube::api::{Patch, PatchParams};
    use reflex::api::ErrorCategory;
    use reflex::ports::Deploy;
    let (sb, client) = setup().await;
    staging(&client).await;
    auto_policy_and_playbook(&client).await;
    let mut deploy = deployer(&sb).await;
    deploy.kill_switch = Some(("default".into(), "reflex-settings".into()));
    let raise = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "250Mi"}}}]}}}});
    let rem = tested_now(&deploy, &client, tested("raise", raise)).await;
    let policies = Api::<reflex::api::RemediationPolicy>::namespaced(client.clone(), "default");
    let set = |patch: serde_json::Value| {
        let policies = policies.clone();
        async move { policies.patch("p", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap() }
    };
    // What the controller handed the step (deploy_input) still says auto and not suspended.
    let attempt = || deploy.apply(deploy_input(rem.clone()), tested_patch(&rem));

    set(json!({"spec": {"limits": {"suspend": true}}})).await;
    let err = attempt().await.unwrap_err();
    assert_eq!(err.category, ErrorCategory::Deferred, "{err}");
    assert!(err.message.contains("suspended"), "{err}");
    set(json!({"spec": {"limits": {"suspend": false}}})).await;

    let settings = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), "default");
    let switch = |on: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "reflex-settings"}, "data": {"killSwitch": on}});
    settings.patch("reflex-settings", &PatchParams::apply("test"), &Patch::Apply(switch("true"))).await.unwrap();
    let err = attempt().await.unwrap_err();
    assert_eq!(err.category, ErrorCategory::Deferred, "{err}");
    assert!(err.message.contains("kill switch is on"), "{err}");
    settings.patch("reflex-settings", &PatchParams::apply("test"), &Patch::Apply(switch("false"))).await.unwrap();

    set(json!({"spec": {"trust": {"level": "propose"}}})).await;
    let err = attempt().await.unwrap_err();
    assert_eq!(err.category, ErrorCategory::NeedsHuman, "{err}");
    assert!(err.message.contains("requires approval"), "{err}");
    assert_eq!(app_container(&client).await["resources"]["limits"]["memory"], "128Mi", "nothing was applied");

    set(json!({"spec": {"trust": {"level": "auto"}}})).await;
    attempt().await.unwrap();
    assert_eq!(app_container(&client).await["resources"]["limits"]["memory"], "250Mi");
}

/// A JSON patch whose write landed before its record did (the operator stopped in between)
/// is neither applied a second time nor taken for someone else's edit (the generation its
/// own write moved): the Remediation's field manager on the target says the write landed.
#[tokio::test]
async fn a_json_patch_resumed_after_its_write_landed_is_not_applied_twice() {
    use reflex::ports::Deploy;
    let (sb, client) = setup().await;
    staging(&client).await;
    auto_policy_and_playbook(&client).await;
    let deploy = deployer(&sb).await;
    let ops = json!([{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "c:2"}]);
    let mut rem = tested("bump", ops.clone());
    let proposal = rem.status.as_mut().unwrap().proposal.as_mut().unwrap();
    proposal.patch_type = reflex::api::playbook::PatchType::Json;
    let rem = tested_now(&deploy, &client, rem).await;
    deploy.apply(deploy_input(rem.clone()), tested_patch(&rem)).await.unwrap();
    let generation = |client: kube::Client| async move {
        Api::<Deployment>::namespaced(client, "default").get("checkout").await.unwrap().metadata.generation
    };
    let after_first = generation(client.clone()).await;
    let record = deploy.apply(deploy_input(rem.clone()), tested_patch(&rem)).await.expect("resumed, not a conflict");
    assert!(record.applied_at.is_some());
    assert_eq!(generation(client.clone()).await, after_first, "nothing written the second time");
    assert_eq!(app_container(&client).await["image"], "c:2");
}

/// A deploy that failed before it wrote (here: the deployer may not patch) leaves nothing to
/// undo: the rollback writes nothing — restoring the snapshot would overwrite whatever
/// people changed since it was taken — and says so.
#[tokio::test]
async fn a_rollback_of_a_change_never_written_writes_nothing() {
    use kube::api::{Patch, PatchParams};
    use reflex::ports::Rollback;
    let (sb, client) = setup().await;
    staging(&client).await;
    auto_policy_and_playbook(&client).await;
    let deploy = deployer(&sb).await;
    let raise = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "250Mi"}}}]}}}});
    let rem = tested_now(&deploy, &client, tested("never", raise)).await;
    // Someone edits the target after the snapshot; the deploy never wrote.
    let edit = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "300Mi"}}}]}}}});
    Api::<Deployment>::namespaced(client.clone(), "default")
        .patch("checkout", &PatchParams::default(), &Patch::Strategic(edit))
        .await
        .unwrap();
    let mut input = deploy_input(rem);
    input.key.step = reflex::api::remediation::Step::Rollback;
    let record = deploy.rollback(input).await.unwrap();
    assert!(record.reason.starts_with("nothing to undo"), "{}", record.reason);
    assert_eq!(app_container(&client).await["resources"]["limits"]["memory"], "300Mi", "their edit stands");
}

/// Attack: whoever may edit the target can write a `managedFields` entry naming this
/// Remediation's field manager (its name is derived from the Remediation's name and uid, both
/// visible). A deploy that took that entry for "my write already landed" recorded the change
/// as applied and skipped every check — in production without an approval, and later counted
/// it towards earned trust. The entry proves nothing while the change's values are not in
/// place: the deploy re-checks as ever and, here, is refused for want of an approval.
#[tokio::test]
async fn a_forged_field_manager_on_the_target_does_not_pass_for_a_landed_write() {
    use kube::api::{Patch, PatchParams};
    use reflex::ports::Deploy;
    let (sb, client) = setup().await;
    auto_policy_and_playbook(&client).await; // `default` unlabelled: production
    let deploy = deployer(&sb).await;
    let raise = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "250Mi"}}}]}}}});
    let rem = tested_now(&deploy, &client, tested("raise", raise)).await;
    let manager = reflex::deploy::request::field_manager(&rem);
    let forged = json!({"metadata": {"managedFields": [{"manager": manager, "operation": "Apply", "apiVersion": "apps/v1",
        "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {}}}}]}});
    Api::<Deployment>::namespaced(client.clone(), "default")
        .patch("checkout", &PatchParams::default(), &Patch::Merge(forged))
        .await
        .unwrap();
    let live = Api::<Deployment>::namespaced(client.clone(), "default").get("checkout").await.unwrap();
    assert!(
        live.metadata.managed_fields.iter().flatten().any(|f| f.manager.as_deref() == Some(manager.as_str())),
        "the forged entry is on the target"
    );
    let refused = deploy.apply(deploy_input(rem.clone()), tested_patch(&rem)).await;
    let err = refused.expect_err("a forged managedFields entry is no landed write");
    assert_eq!(err.category, reflex::api::ErrorCategory::NeedsHuman, "{err}");
    assert!(err.message.contains("requires approval"), "{err}");
    assert_eq!(app_container(&client).await["resources"]["limits"]["memory"], "128Mi");
}

/// A ConfigMap change rolls nothing out by itself: the playbook names the Deployment that
/// reads it at start, and the change counts as rolled out only once every Pod of that
/// Deployment started after it (here a reloader's restart). Nobody restarts them: the rollout
/// stalls at the policy's timeout, naming what it waited for.
#[tokio::test]
async fn a_configmap_change_waits_for_the_workload_the_playbook_names_to_restart() {
    use k8s_openapi::api::core::v1::{ConfigMap, Pod};
    use kube::api::{ListParams, Patch, PatchParams};
    use reflex::api::playbook::Playbook;
    use reflex::api::remediation::RolloutState;
    use reflex::ports::Deploy;
    let (sb, client) = setup().await;
    let config: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "checkout-config"}, "data": {"poolSize": "10"}})).unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), "default").create(&PostParams::default(), &config).await.unwrap();
    let pb: Playbook = serde_json::from_value(json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "Playbook",
        "metadata": {"name": "pool", "namespace": "default"},
        "spec": {"targetKinds": ["ConfigMap"], "patch": {"mode": "template", "type": "merge",
            "template": "data:\n  poolSize: \"{{ params.pool }}\"\n",
            "parameters": [{"name": "pool", "type": "integer", "value": "20", "max": "40"}],
            "allowedPaths": ["data.poolSize"]},
            "rollout": {"waitFor": [{"kind": "Deployment", "name": "{{ labels.deployment }}", "newPods": true}]}}}))
    .unwrap();
    Api::<Playbook>::namespaced(client.clone(), "default").create(&PostParams::default(), &pb).await.unwrap();
    // The Deployment's one Pod, ready; the change applied a second after it started.
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let started = loop {
        let ready = pods.list(&ListParams::default().labels("app=c")).await.unwrap().items.into_iter().find(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
        if let Some(p) = ready {
            break p.metadata.creation_timestamp.unwrap().0;
        }
        assert!(tokio::time::Instant::now() < deadline, "the Deployment's Pod never became ready");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let applied = started.checked_add(jiff::SignedDuration::from_secs(1)).unwrap();
    let rem: Remediation = serde_json::from_value(json!({
        "apiVersion": "reflex.dev/v1alpha1", "kind": "Remediation",
        "metadata": {"name": "pool", "namespace": "default", "uid": "u-pool"},
        "spec": {"policyRef": {"name": "p"}, "target": {"apiVersion": "v1", "kind": "ConfigMap", "name": "checkout-config"},
                 "alert": {"name": "A", "fingerprint": "f", "startsAt": "2026-01-01T00:00:00Z", "labels": {"deployment": "checkout"}}},
        "status": {"phase": "Deploying", "deploy": {"previous": {}, "previousResourceVersion": "1", "appliedAt": applied.to_string()}}
    }))
    .unwrap();
    let input_with_timeout = |timeout: &str| {
        let spec: reflex::api::policy::RemediationPolicySpec = serde_json::from_value(json!({
            "match": {"alertnames": ["A"]}, "target": {"kind": "ConfigMap", "name": "checkout-config"}, "playbook": "pool",
            "rollout": {"timeout": timeout},
            "verify": {"query": "x", "operator": "<", "threshold": 1, "for": "2s", "timeout": "30s", "interval": "1s"}}))
        .unwrap();
        let mut input = input(rem.clone());
        input.policy = Some(Arc::new(reflex::api::validate::ValidPolicy::from_spec(&spec).unwrap()));
        input.key.step = Step::Rollout;
        input
    };
    let deploy = deployer(&sb).await;

    let waiting = deploy.rollout(input_with_timeout("10m")).await.unwrap();
    assert_eq!(waiting.state, RolloutState::Progressing, "{}", waiting.message);
    assert!(
        waiting.message.contains("Deployment checkout: ")
            && waiting.message.contains("0 of 1 Pods started since the change and ready, 1 older still running"),
        "{}",
        waiting.message
    );
    // Nobody restarts it: stalled at the policy's timeout, which has passed within seconds.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let stalled = loop {
        let look = deploy.rollout(input_with_timeout("1s")).await.unwrap();
        if look.state != RolloutState::Progressing {
            break look;
        }
        assert!(tokio::time::Instant::now() < deadline, "never stalled: {}", look.message);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(stalled.state, RolloutState::Stalled, "{}", stalled.message);
    assert!(
        stalled.message.contains("rollout timeout 1s") && stalled.message.contains("Deployment checkout:"),
        "{}",
        stalled.message
    );

    // A reloader restarts the Deployment: done once its new Pod is ready and the old one gone.
    let restart = json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": applied.to_string()}}}}});
    Api::<Deployment>::namespaced(client.clone(), "default")
        .patch("checkout", &PatchParams::default(), &Patch::Strategic(restart))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let done = loop {
        let look = deploy.rollout(input_with_timeout("10m")).await.unwrap();
        if look.state != RolloutState::Progressing {
            break look;
        }
        assert!(tokio::time::Instant::now() < deadline, "never rolled out: {}", look.message);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(done.state, RolloutState::Complete, "{}", done.message);
    assert!(done.message.contains("1 of 1 Pods started since the change and ready, 0 older"), "{}", done.message);
}

/// CI judges what the API server would store, not only its own emulation of the merge: a
/// playbook naming `readinessProbe.httpGet` lets the local check pass a new probe, but the
/// API server defaults the probe's timing and thresholds — fields no allowed path names —
/// and the dry-run's answer is refused for them. A playbook naming the whole probe and
/// bounding those fields too passes.
#[tokio::test]
async fn ci_judges_what_the_api_server_would_store_not_only_the_emulated_merge() {
    use reflex::api::playbook::Playbook;
    let (sb, client) = setup().await;
    let probe = "spec.template.spec.containers[*].readinessProbe";
    let playbook = |name: &str, allowed: &str, extra: Vec<serde_json::Value>| {
        let mut values = vec![
            json!({"path": format!("{probe}.httpGet.path"), "allowed": ["/healthz"]}),
            json!({"path": format!("{probe}.httpGet.port"), "min": "1", "max": "65535"}),
        ];
        values.extend(extra);
        let pb: Playbook = serde_json::from_value(json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "Playbook",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"targetKinds": ["Deployment"], "patch": {"mode": "agent", "allowedPaths": [allowed], "values": values}}}))
        .unwrap();
        pb
    };
    let bounded = ["timeoutSeconds", "periodSeconds", "successThreshold", "failureThreshold"]
        .iter()
        .map(|f| json!({"path": format!("{probe}.{f}"), "min": "1", "max": "60"}))
        .collect();
    let playbooks = Api::<Playbook>::namespaced(client.clone(), "default");
    playbooks
        .create(&PostParams::default(), &playbook("probe-get", &format!("{probe}.httpGet"), vec![]))
        .await
        .unwrap();
    playbooks.create(&PostParams::default(), &playbook("probe-whole", probe, bounded)).await.unwrap();
    let ci_with = |name: &str| {
        let mut spec = auto_policy_spec();
        spec.playbook = Some(name.to_owned());
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app",
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}}}]}}}});
        let mut input = input(remediation_with_patch(patch));
        input.policy = Some(Arc::new(reflex::api::validate::ValidPolicy::from_spec(&spec).unwrap()));
        input
    };
    let dry = dry_run(&sb).await;

    let refused = dry.test(ci_with("probe-get")).await.unwrap();
    assert_eq!(refused.verdict, CiVerdict::Failed, "{:?}", refused.messages);
    let message = refused.messages.join(" ");
    assert!(
        message.contains("refused what the API server would store")
            && message.contains("readinessProbe.failureThreshold")
            && message.contains("a probe changes only where"),
        "{message}"
    );

    let passed = dry.test(ci_with("probe-whole")).await.unwrap();
    assert_eq!(passed.verdict, CiVerdict::Passed, "{:?}", passed.messages);
    let d = Api::<Deployment>::namespaced(client.clone(), "default").get("checkout").await.unwrap();
    assert!(d.spec.template.spec.unwrap().containers[0].readiness_probe.is_none(), "a dry-run stores nothing");
}

/// The test Jobs' scenario: the container's command says how it ends.
struct JobScript;

impl reflex::sandbox::jobs::JobModel for JobScript {
    fn run(&self, job: &serde_json::Value) -> reflex::sandbox::jobs::JobRun {
        use reflex::sandbox::jobs::JobRun;
        use std::time::Duration;
        let command =
            job.pointer("/spec/template/spec/containers/0/command/0").and_then(|c| c.as_str()).unwrap_or_default();
        match command {
            "pass" => JobRun::Succeed {
                after: Duration::from_millis(200),
                log: vec!["validated 1 manifest".into(), "PASS".into()],
            },
            "fail" => JobRun::Fail {
                after: Duration::from_millis(200),
                code: 3,
                log: (1..=30).map(|i| format!("check {i}: \x1b[31mmemory limit below request\x1b[0m")).collect(),
            },
            _ => JobRun::Hang { log: vec!["waiting forever".into()] },
        }
    }
}

/// A policy whose CI runs a test Job with `command`.
fn job_policy(command: &str, timeout: &str) -> Arc<reflex::api::validate::ValidPolicy> {
    let mut spec = auto_policy_spec();
    spec.ci.job = Some(
        serde_json::from_value(
            json!({"image": "registry.example/check:1", "command": [command, "/reflex/manifest.yaml"],
        "env": [{"name": "STRICT", "value": "1"}], "timeout": timeout}),
        )
        .unwrap(),
    );
    Arc::new(reflex::api::validate::ValidPolicy::from_spec(&spec).unwrap())
}

/// The test Job backend on the sandbox's Job model: a passing Job passes with its log in
/// status, a failing one fails with its exit code and the last 20 lines, a hung one fails at its
/// timeout; the ConfigMap holds the patched manifest while it runs; the Job and the ConfigMap
/// are gone afterwards, and nothing was deployed. The dry-run's diff is in status each time.
#[tokio::test]
async fn a_test_job_passes_fails_or_times_out_and_is_cleaned_up() {
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::ConfigMap;
    let (sb, client) = setup_in(Config {
        rbac: reflex::sandbox::rbac::Table::from_yaml(common::STAGES_RBAC).unwrap(),
        job_model: Some(Arc::new(JobScript)),
        ..Config::default()
    })
    .await;
    auto_policy_and_playbook(&client).await;
    let ci = dry_run(&sb).await;
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "256Mi"}}}]}}}});
    // The Remediation exists (the Jobs it owns would be garbage-collected otherwise).
    let mut stored = remediation_with_patch(patch.clone());
    stored.metadata.uid = None;
    stored.status = None;
    let stored = Api::<Remediation>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &stored)
        .await
        .unwrap();
    let uid = stored.metadata.uid.clone().unwrap();
    // Each run is its own attempt, as the controller numbers them: its own Job.
    let with = |command: &str, timeout: &str, attempt: u32| {
        let mut rem = remediation_with_patch(patch.clone());
        rem.metadata.uid = Some(uid.clone());
        let mut i = input(rem);
        i.key.uid = uid.clone();
        i.policy = Some(job_policy(command, timeout));
        i.key.attempt = attempt;
        i
    };
    let jobs = Api::<Job>::namespaced(client.clone(), "default");
    let maps = Api::<ConfigMap>::namespaced(client.clone(), "default");
    let gone = |name: String| {
        let (jobs, maps) = (jobs.clone(), maps.clone());
        async move {
            assert!(maps.get_opt(&name).await.unwrap().is_none(), "ConfigMap {name} was left behind");
            // Deleted in the background: gone, or going.
            let job = jobs.get_opt(&name).await.unwrap();
            assert!(job.is_none_or(|j| j.metadata.deletion_timestamp.is_some()), "Job {name} was left behind");
        }
    };

    let passed = ci.test(with("pass", "1m", 1)).await.unwrap();
    assert_eq!(passed.verdict, CiVerdict::Passed, "{:?}", passed.messages);
    assert_eq!(passed.backend, reflex::api::remediation::CiBackend::Job);
    assert_eq!(passed.log_tail, vec!["validated 1 manifest", "PASS"]);
    let diff = passed.diff.clone().unwrap();
    assert!(diff.contains("-") && diff.contains("memory: 128Mi") && diff.contains("memory: 256Mi"), "{diff}");
    assert!(passed.messages.iter().any(|m| m.contains("server-side dry-run accepted")), "{:?}", passed.messages);
    assert!(passed.messages.iter().any(|m| m.contains("passed, exit code 0")), "{:?}", passed.messages);
    gone(passed.reference.clone().unwrap()).await;

    let failed = ci.test(with("fail", "1m", 2)).await.unwrap();
    assert_eq!(failed.verdict, CiVerdict::Failed);
    assert!(
        failed.messages.iter().any(|m| m.contains("BackoffLimitExceeded") && m.contains("exit code 3")),
        "{:?}",
        failed.messages
    );
    assert_eq!(failed.log_tail.len(), 20);
    assert_eq!(failed.log_tail[19], "check 30:  [31mmemory limit below request [0m", "escape characters become spaces");
    gone(failed.reference.clone().unwrap()).await;

    // While the hung Job runs, its ConfigMap holds the patched manifest.
    let running = tokio::spawn({
        let ci = ci.clone();
        let input = with("hang", "2s", 3);
        async move { ci.test(input).await }
    });
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let manifest = loop {
        let list = maps.list(&Default::default()).await.unwrap();
        if let Some(m) = list.items.iter().find(|m| m.metadata.name.as_deref().is_some_and(|n| n.starts_with("r-ci-")))
        {
            break m.data.clone().unwrap()["manifest.yaml"].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "the test Job's ConfigMap never appeared");
        tokio::task::yield_now().await;
    };
    assert!(
        manifest.contains("memory: 256Mi")
            && manifest.contains("name: checkout")
            && !manifest.contains("managedFields"),
        "{manifest}"
    );
    let hung = running.await.unwrap().unwrap();
    assert_eq!(hung.verdict, CiVerdict::Failed);
    assert!(hung.messages.iter().any(|m| m.contains("longer than its timeout (2s)")), "{:?}", hung.messages);
    assert_eq!(hung.log_tail, vec!["waiting forever"]);
    gone(hung.reference.clone().unwrap()).await;

    let d = Api::<Deployment>::namespaced(client, "default").get("checkout").await.unwrap();
    assert_eq!(d.metadata.generation, Some(1), "CI deployed nothing");
}

/// Metrics that remember every query asked.
#[derive(Default)]
struct Recorded(std::sync::Mutex<Vec<String>>);

impl reflex::metrics::MetricsSource for Recorded {
    fn instant(
        &self,
        query: &str,
    ) -> futures::future::BoxFuture<'_, Result<Option<f64>, reflex::metrics::MetricsError>> {
        self.0.lock().unwrap().push(query.to_owned());
        Box::pin(async { Ok(Some(1.0)) })
    }
}

/// Reflex's own PromQL fragments are built from the target's name; a hand-made Remediation
/// whose target name is PromQL must not get it pasted into a query (the fragments bypass the
/// inert-value check labels go through).
#[tokio::test]
async fn a_target_name_that_is_promql_is_never_pasted_into_a_query() {
    use reflex::api::playbook::Playbook;
    use reflex::ports::Propose;
    let (_sb, client) = setup().await;
    let pb: Playbook = serde_json::from_value(json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "Playbook",
        "metadata": {"name": "query-first", "namespace": "default"},
        "spec": {"targetKinds": ["Deployment"],
            "reads": [{"name": "usage", "tool": "query", "arguments": {"query": "max(x{namespace=\"default\"} * on (namespace, pod) group_left () {{ promql.pods }})"}}],
            "patch": {"mode": "template", "type": "strategic",
            "template": "spec:\n  replicas: 2\n", "allowedPaths": ["spec.replicas"]}}}))
    .unwrap();
    Api::<Playbook>::namespaced(client.clone(), "default").create(&PostParams::default(), &pb).await.unwrap();
    let mut spec = auto_policy_spec();
    spec.playbook = Some("query-first".into());
    let policy = reflex::api::validate::ValidPolicy::from_spec(&spec).unwrap();
    let mut rem = remediation_with_patch(json!({}));
    rem.status = None;
    rem.spec.target.name = "checkout\"}) or vector(1) or (x{a=\"".into();
    // The API refuses such a Remediation in the first place (the CRD's pattern on the name).
    let mut stored = rem.clone();
    stored.metadata.uid = None;
    let refused =
        Api::<Remediation>::namespaced(client.clone(), "default").create(&PostParams::default(), &stored).await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains("spec.target.name")),
        "{refused:?}"
    );
    let mut input = input(rem);
    input.policy = Some(Arc::new(policy));
    input.key.step = Step::Propose;
    let metrics = Arc::new(Recorded::default());
    let executor = reflex::agent::executor::PlaybookExecutor::new(client.clone(), metrics.clone());
    let err = executor.propose(input).await.expect_err("refused");
    assert!(err.message.contains("not an object name"), "{err}");
    assert!(metrics.0.lock().unwrap().iter().all(|q| !q.contains("vector(1)")), "{:?}", metrics.0.lock().unwrap());
}
