#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The GitOps backend end to end: a real bare git repository, the forge stand-in (GitHub and
//! GitLab endpoints only — no forge server can run here), the sandbox API server, and the
//! GitOps controller stand-in applying the repository to it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use reflex::api::ErrorCategory;
use reflex::api::remediation::{CiVerdict, Remediation, RolloutState, Step};
use reflex::demo::forge::Forge;
use reflex::ports::{Deploy, EffectKey, Rollback, StageInput, Test};
use reflex::sandbox::{ADMIN_TOKEN, Config, Sandbox};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "forge-token-1";

const MANIFEST: &str = r#"# The checkout service. Owned by the payments team.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: checkout
spec:
  replicas: 1
  selector:
    matchLabels: {app: c}
  template:
    metadata:
      labels: {app: c}
    spec:
      containers:
        - name: app
          image: "c:1"
          resources:
            limits:
              memory: 128Mi # raised by hand in March
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: checkout-settings
data:
  mode: fast
"#;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=dev", "-c", "user.email=dev@example.invalid", "-c", "protocol.file.allow=always"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

struct World {
    _sb: Sandbox,
    admin: kube::Client,
    dir: PathBuf,
    bare: PathBuf,
    forge: Arc<Forge>,
    ci: reflex::ci::Ci,
    deploy: reflex::deploy::gitops::Backends,
    policy: Arc<reflex::api::validate::ValidPolicy>,
    _stop: CancellationToken,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl World {
    /// A commit on `main` by someone else, editing `file` with `edit`.
    fn commit_upstream(&self, file: &str, edit: impl Fn(&str) -> String) {
        let work = self.dir.join(format!("upstream-{}", uuid::Uuid::new_v4()));
        git(&self.dir, &["clone", "--quiet", &format!("file://{}", self.bare.display()), work.to_str().unwrap()]);
        let path = work.join(file);
        std::fs::write(&path, edit(&std::fs::read_to_string(&path).unwrap())).unwrap();
        git(&work, &["commit", "--quiet", "-am", "upstream change"]);
        git(&work, &["push", "--quiet", "origin", "HEAD:main"]);
    }

    fn file_on(&self, rev: &str, file: &str) -> String {
        git(&self.bare, &["show", &format!("{rev}:{file}")])
    }

    async fn sync(&self) -> String {
        reflex::demo::syncer::sync(&self.admin, &self.bare, "main", "default").await.unwrap()
    }

    async fn memory(&self) -> String {
        let d = Api::<Deployment>::namespaced(self.admin.clone(), "default").get("checkout").await.unwrap();
        d.spec.template.spec.unwrap().containers[0].resources.clone().unwrap().limits.unwrap()["memory"].0.clone()
    }

    fn input(&self, rem: &Remediation, step: Step) -> StageInput {
        StageInput {
            remediation: Arc::new(rem.clone()),
            policy: Some(self.policy.clone()),
            key: EffectKey { uid: rem.metadata.uid.clone().unwrap(), step, attempt: 1 },
            cancel: CancellationToken::new(),
        }
    }
}

/// A Remediation (stored, so it has a uid) proposing `memory` for the app container.
async fn remediation(w: &World, name: &str, memory: &str) -> Remediation {
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": memory}}}]}}}});
    let digest = reflex::patch::digest(&patch);
    let mut rem: Remediation = serde_json::from_value(json!({
        "apiVersion": "reflex.dev/v1alpha1", "kind": "Remediation",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"policyRef": {"name": "p"}, "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "checkout"},
                 "alert": {"name": "KubeContainerOOMKilled", "fingerprint": "f00d", "startsAt": "2026-01-01T00:00:00Z"}}}))
    .unwrap();
    rem =
        Api::<Remediation>::namespaced(w.admin.clone(), "default").create(&PostParams::default(), &rem).await.unwrap();
    rem.status = Some(
        serde_json::from_value(
            json!({"phase": "Testing", "proposal": {"patchType": "strategic", "patch": patch, "digest": digest,
            "rationale": "OOM-killed at 128Mi; raise the limit", "producedBy": "playbook"}}),
        )
        .unwrap(),
    );
    rem
}

async fn world(forge_type: &str, extra: Value) -> World {
    reflex::install_crypto_provider();
    let dir = std::env::temp_dir().join(format!("reflex-gitops-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let bare = dir.join("platform.git");
    git(&dir, &["init", "--quiet", "--bare", "-b", "main", bare.to_str().unwrap()]);
    let seed = dir.join("seed");
    git(&dir, &["clone", "--quiet", &format!("file://{}", bare.display()), seed.to_str().unwrap()]);
    std::fs::create_dir_all(seed.join("apps")).unwrap();
    std::fs::write(seed.join("apps/checkout.yaml"), MANIFEST).unwrap();
    std::fs::write(seed.join("README.md"), "platform manifests\n").unwrap();
    git(&seed, &["add", "."]);
    git(&seed, &["commit", "--quiet", "-m", "initial"]);
    git(&seed, &["push", "--quiet", "origin", "HEAD:main"]);

    let config =
        Config { rbac: reflex::sandbox::rbac::Table::from_yaml(common::STAGES_RBAC).unwrap(), ..Config::default() };
    let sb = Sandbox::start(config).await.unwrap();
    sb.install_crds().unwrap();
    let admin = sb.client(ADMIN_TOKEN).await.unwrap();
    let stop = CancellationToken::new();
    let forge = Forge::new(&bare, TOKEN);
    let url = forge.serve(stop.clone()).await.unwrap();
    reflex::demo::syncer::sync(&admin, &bare, "main", "default").await.unwrap();
    // Staging: trust auto deploys without a human.
    let patch = json!({"metadata": {"labels": {"reflex.dev/environment": "staging"}}});
    Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone())
        .patch("default", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(patch))
        .await
        .unwrap();
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "platform-repo",
        "annotations": {"reflex.dev/credentials-host": url.clone()}}, "stringData": {"token": TOKEN}}))
    .unwrap();
    Api::<Secret>::namespaced(admin.clone(), "default").create(&PostParams::default(), &secret).await.unwrap();
    let api_url = match forge_type {
        "github" => format!("{url}/api/v3"),
        _ => format!("{url}/api/v4"),
    };
    let mut gitops = json!({"repository": format!("file://{}", bare.display()), "credentialsSecret": "platform-repo",
        "forge": {"type": forge_type, "apiUrl": api_url, "project": "platform/apps"},
        "requiredChecks": ["ci/test"], "checksTimeout": "3s", "convergeTimeout": "3s"});
    if let (Some(g), Some(e)) = (gitops.as_object_mut(), extra.as_object()) {
        g.extend(e.clone());
    }
    let spec: reflex::api::policy::RemediationPolicySpec = serde_json::from_value(json!({
        "match": {"alertnames": ["KubeContainerOOMKilled"]}, "target": {"kind": "Deployment", "name": "checkout"},
        "trust": {"level": "auto"}, "playbook": "raise-memory", "ci": {"gitops": gitops},
        "verify": {"query": "x", "operator": "<", "threshold": 1, "for": "2s", "timeout": "30s", "interval": "1s"}}))
    .unwrap();
    let pb: reflex::api::playbook::Playbook = serde_json::from_value(json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "Playbook",
        "metadata": {"name": "raise-memory", "namespace": "default"},
        "spec": {"targetKinds": ["Deployment"], "patch": {"mode": "template", "type": "strategic",
            "template": "spec:\n  template:\n    spec:\n      containers:\n        - name: app\n          resources:\n            limits: {memory: \"{{ params.memory }}\"}\n",
            "parameters": [{"name": "memory", "type": "quantity", "value": "'256Mi'", "min": "64Mi", "max": "2Gi", "maxFactor": 4}],
            "allowedPaths": ["spec.template.spec.containers[*].resources.limits.memory"]}}}))
    .unwrap();
    Api::<reflex::api::playbook::Playbook>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &pb)
        .await
        .unwrap();
    let policy_object = reflex::api::RemediationPolicy::new("p", spec.clone());
    Api::<reflex::api::RemediationPolicy>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &policy_object)
        .await
        .unwrap();
    let policy = Arc::new(reflex::api::validate::ValidPolicy::from_spec(&spec).unwrap());

    let op_config = sb.config("t-operator").await.unwrap();
    let identity = reflex::deploy::identity::DeployerIdentity {
        deployers: Default::default(),
        impersonator: Arc::new(reflex::cluster::Impersonator::new(op_config.clone())),
    };
    let operator = kube::Client::try_from(op_config).unwrap();
    let settings =
        reflex::gitops::flow::Settings { work_dir: dir.clone(), allow_local: true, poll: Duration::from_millis(100) };
    let ci = reflex::ci::Ci::new(operator.clone(), identity.clone()).with_gitops(settings.clone());
    let gate = Arc::new(reflex::gate::trust::TrustGate { client: operator.clone() });
    let deploy = reflex::deploy::gitops::Backends {
        direct: reflex::deploy::apply::ServerSideApply { client: operator, gate, identity, kill_switch: None },
        gitops: Arc::new(settings),
    };
    World { _sb: sb, admin, dir, bare, forge, ci, deploy, policy, _stop: stop }
}

/// CI, snapshot and merge, as the controller runs them; the Remediation after each.
async fn tested(w: &World, rem: &mut Remediation) -> reflex::api::remediation::CiResult {
    let ci = w.ci.test(w.input(rem, Step::Test)).await.unwrap();
    rem.status.as_mut().unwrap().ci = Some(ci.clone());
    ci
}

/// Snapshot, then the deploy stage's apply (the merge), as the controller runs them.
async fn deploying(
    w: &World,
    rem: &mut Remediation,
) -> Result<reflex::api::remediation::DeployRecord, reflex::ports::StageError> {
    let snapshot = w.deploy.snapshot(w.input(rem, Step::Snapshot)).await.unwrap();
    rem.status.as_mut().unwrap().deploy = Some(snapshot);
    let status = rem.status.as_ref().unwrap();
    let tested =
        reflex::patch::TestedPatch::new(status.proposal.as_ref().unwrap(), status.ci.as_ref().unwrap()).unwrap();
    w.deploy.apply(w.input(rem, Step::Deploy), tested).await
}

async fn merged(w: &World, rem: &mut Remediation) -> reflex::api::remediation::DeployRecord {
    let record = deploying(w, rem).await.unwrap();
    rem.status.as_mut().unwrap().deploy = Some(record.clone());
    record
}

/// The whole path on GitHub's API: a pull request whose only change is the memory line (the
/// comment, quoting and the other document kept), checks passed, no second pull request or
/// push when the step runs again; the merge commit on main; the rollout waits until the
/// GitOps controller has applied it; the rollback merges a revert and the old value is live
/// again.
#[tokio::test]
async fn a_fix_is_a_pull_request_merged_synced_and_reverted() {
    let w = world("github", json!({})).await;
    let mut rem = remediation(&w, "checkout-oom-1", "256Mi").await;
    let ci = tested(&w, &mut rem).await;
    assert_eq!(ci.verdict, CiVerdict::Passed, "{:?}", ci.messages);
    let pr = ci.pull_request.clone().unwrap();
    assert_eq!((pr.number, pr.branch.as_str(), pr.file.as_str()), (1, "reflex/checkout-oom-1", "apps/checkout.yaml"));
    assert_eq!(pr.checks.len(), 1);
    assert_eq!((pr.checks[0].name.as_str(), pr.checks[0].state.as_str()), ("ci/test", "success"));
    assert!(ci.messages.iter().any(|m| m.contains("checks passed")), "{:?}", ci.messages);
    let changed = w.file_on(&pr.commit, "apps/checkout.yaml");
    assert_eq!(
        changed,
        MANIFEST
            .replace("memory: 128Mi # raised by hand in March", "memory: 256Mi # raised by hand in March")
            .trim_end()
    );
    let message = git(&w.bare, &["log", "-1", "--format=%B", &pr.commit]);
    assert!(
        message.contains("Remediation: default/checkout-oom-1")
            && message.contains("Alert: KubeContainerOOMKilled fingerprint f00d"),
        "{message}"
    );
    assert!(message.contains(&format!("Reflex-Remediation-UID: {}", rem.metadata.uid.clone().unwrap())), "{message}");

    // The step again (a restart, another replica): the same pull request, nothing pushed.
    let again = w.ci.test(w.input(&rem, Step::Test)).await.unwrap();
    assert_eq!(again.pull_request.as_ref().map(|p| (p.number, p.commit.clone())), Some((1, pr.commit.clone())));
    assert_eq!(w.forge.pull_requests().len(), 1, "no second pull request");
    assert_eq!(w.forge.rev("refs/heads/reflex/checkout-oom-1"), Some(pr.commit.clone()), "no second push");
    assert_eq!(w.memory().await, "128Mi", "CI changed nothing in the cluster");

    let record = merged(&w, &mut rem).await;
    let merge = record.pull_request.as_ref().and_then(|p| p.merge_commit.clone()).unwrap();
    assert_eq!(w.forge.rev("refs/heads/main"), Some(merge.clone()));
    assert!(w.file_on("main", "apps/checkout.yaml").contains("memory: 256Mi # raised by hand in March"));
    assert_eq!(w.forge.rev("refs/heads/reflex/checkout-oom-1"), None, "the branch is deleted after the merge");
    assert_eq!(w.memory().await, "128Mi", "the merge is not an apply: the GitOps controller applies it");

    let waiting = w.deploy.rollout(w.input(&rem, Step::Rollout)).await.unwrap();
    assert_eq!(waiting.state, RolloutState::Progressing);
    assert!(waiting.message.contains("waiting for the GitOps controller to apply merge commit"), "{}", waiting.message);
    assert_eq!(w.sync().await, merge);
    assert_eq!(w.memory().await, "256Mi");
    let done = w.deploy.rollout(w.input(&rem, Step::Rollout)).await.unwrap();
    assert_ne!(done.state, RolloutState::Stalled, "{}", done.message);
    assert!(
        !done.message.contains("GitOps controller"),
        "converged: the workload's own rollout is judged: {}",
        done.message
    );

    // The fix did not hold: a revert of the merge, merged; the old value live again.
    let syncing = tokio::spawn({
        let (admin, bare) = (w.admin.clone(), w.bare.clone());
        async move {
            loop {
                let _ = reflex::demo::syncer::sync(&admin, &bare, "main", "default").await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let rolled = w.deploy.rollback(w.input(&rem, Step::Rollback)).await.unwrap();
    syncing.abort();
    let revert = rolled.pull_request.unwrap();
    assert_eq!(revert.branch, "reflex/checkout-oom-1-revert");
    assert_eq!(w.forge.rev("refs/heads/main"), revert.merge_commit.clone());
    assert!(w.file_on("main", "apps/checkout.yaml").contains("memory: 128Mi # raised by hand in March"));
    assert_eq!(w.memory().await, "128Mi");
    assert_eq!(w.forge.pull_requests().len(), 2);
}

/// GitLab's merge-request API through a forge having a bad day: 5xx and a rate limit on the
/// way are retried (Retry-After honoured); failing checks fail CI, close the merge request and
/// delete the branch.
#[tokio::test]
async fn on_gitlab_failing_checks_fail_ci_and_leave_nothing_behind() {
    let w = world("gitlab", json!({})).await;
    {
        let mut f = w.forge.faults.lock().unwrap();
        f.server_errors = 2;
        f.rate_limits = 1;
        f.checks = vec![("ci/test".into(), "failure".into())];
    }
    let mut rem = remediation(&w, "checkout-oom-2", "256Mi").await;
    let ci = tested(&w, &mut rem).await;
    assert_eq!(ci.verdict, CiVerdict::Failed, "{:?}", ci.messages);
    assert!(
        ci.messages.iter().any(|m| m.contains("checks failed: ci/test") && m.contains("closed")),
        "{:?}",
        ci.messages
    );
    let prs = w.forge.pull_requests();
    assert_eq!(prs.len(), 1);
    assert_eq!(prs[0].state, "closed");
    assert_eq!(w.forge.rev("refs/heads/reflex/checkout-oom-2"), None, "the branch is deleted");
    let requests = w.forge.requests();
    assert!(
        requests.iter().any(|r| r.starts_with("POST /api/v4/projects/platform%2Fapps/merge_requests")
            || r.starts_with("POST /api/v4/projects/platform/apps/merge_requests")),
        "{requests:?}"
    );
}

/// Faults that end in a clear condition: the object is not in the repository; the branch
/// exists and is someone else's; the token expired; no check ever reports.
#[tokio::test]
async fn faults_end_in_clear_conditions() {
    let w = world("github", json!({"searchPath": "nothing-here"})).await;
    let rem = remediation(&w, "checkout-oom-3", "256Mi").await;
    let err = w.ci.test(w.input(&rem, Step::Test)).await.unwrap_err();
    assert_eq!(err.category, ErrorCategory::InvalidSpec);
    assert!(
        err.message.contains("no manifest for Deployment default/checkout")
            && err.message.contains("spec.ci.gitops.path"),
        "{err}"
    );

    let w = world("github", json!({})).await;
    // Someone else's branch of that name.
    let seed = w.dir.join("other");
    git(&w.dir, &["clone", "--quiet", &format!("file://{}", w.bare.display()), seed.to_str().unwrap()]);
    git(&seed, &["commit", "--quiet", "--allow-empty", "-m", "mine"]);
    git(&seed, &["push", "--quiet", "origin", "HEAD:refs/heads/reflex/checkout-oom-4"]);
    let rem = remediation(&w, "checkout-oom-4", "256Mi").await;
    let err = w.ci.test(w.input(&rem, Step::Test)).await.unwrap_err();
    assert_eq!(err.category, ErrorCategory::NeedsHuman);
    assert!(
        err.message.contains("branch reflex/checkout-oom-4 already exists")
            && err.message.contains("not made for this Remediation"),
        "{err}"
    );
    assert!(w.forge.pull_requests().is_empty());

    w.forge.faults.lock().unwrap().token_expired = true;
    let rem = remediation(&w, "checkout-oom-5", "256Mi").await;
    let err = w.ci.test(w.input(&rem, Step::Test)).await.unwrap_err();
    assert_eq!(err.category, ErrorCategory::NeedsHuman);
    assert!(
        err.message.contains("401") && err.message.contains("\"platform-repo\"") && err.message.contains("renew"),
        "{err}"
    );

    {
        let mut f = w.forge.faults.lock().unwrap();
        f.token_expired = false;
        f.checks = vec![];
    }
    let rem = remediation(&w, "checkout-oom-6", "256Mi").await;
    let ci = w.ci.test(w.input(&rem, Step::Test)).await.unwrap();
    assert_eq!(ci.verdict, CiVerdict::Failed);
    assert!(
        ci.messages.iter().any(|m| m.contains("did not pass within checksTimeout (3s)") && m.contains("ci/test")),
        "{:?}",
        ci.messages
    );
    assert_eq!(w.forge.rev("refs/heads/reflex/checkout-oom-6"), None);
}

/// A restart between the push and the pull request: the next run finds its own branch and
/// opens the pull request for that commit, pushing nothing again.
#[tokio::test]
async fn a_branch_pushed_before_a_crash_gets_its_pull_request_without_a_second_push() {
    let w = world("github", json!({})).await;
    w.forge.faults.lock().unwrap().fail_create = true;
    let rem = remediation(&w, "checkout-oom-7", "256Mi").await;
    let err = w.ci.test(w.input(&rem, Step::Test)).await.unwrap_err();
    assert!(err.message.contains("opening the pull request"), "{err}");
    let pushed = w.forge.rev("refs/heads/reflex/checkout-oom-7").unwrap();
    w.forge.faults.lock().unwrap().fail_create = false;
    let ci = w.ci.test(w.input(&rem, Step::Test)).await.unwrap();
    assert_eq!(ci.verdict, CiVerdict::Passed, "{:?}", ci.messages);
    assert_eq!(ci.pull_request.unwrap().commit, pushed);
    assert_eq!(w.forge.rev("refs/heads/reflex/checkout-oom-7"), Some(pushed));
}

/// The base moved after the pull request was opened: a change elsewhere in the file is rebased
/// over and merged; a change to the same line is a merge conflict, which closes the pull request
/// and says so.
#[tokio::test]
async fn a_moved_base_is_rebased_and_a_conflict_fails_clearly() {
    let w = world("github", json!({})).await;
    let mut rem = remediation(&w, "checkout-oom-8", "256Mi").await;
    tested(&w, &mut rem).await;
    w.commit_upstream("apps/checkout.yaml", |t| t.replace("mode: fast", "mode: careful"));
    w.forge.faults.lock().unwrap().refuse_merge_once = true;
    let record = merged(&w, &mut rem).await;
    let main = w.file_on("main", "apps/checkout.yaml");
    assert!(main.contains("mode: careful") && main.contains("memory: 256Mi"), "{main}");
    assert_eq!(record.pull_request.unwrap().merge_commit, w.forge.rev("refs/heads/main"));

    let w = world("github", json!({})).await;
    let mut rem = remediation(&w, "checkout-oom-9", "256Mi").await;
    tested(&w, &mut rem).await;
    w.commit_upstream("apps/checkout.yaml", |t| t.replace("memory: 128Mi", "memory: 192Mi"));
    w.forge.faults.lock().unwrap().refuse_merge_once = true;
    let err = deploying(&w, &mut rem).await.unwrap_err();
    assert_eq!(err.category, ErrorCategory::NeedsHuman);
    assert!(err.message.contains("merge conflict: apps/checkout.yaml changed on main"), "{err}");
    assert_eq!(w.forge.pull_requests()[0].state, "closed");
    assert_eq!(w.forge.rev("refs/heads/reflex/checkout-oom-9"), None);
    assert!(w.file_on("main", "apps/checkout.yaml").contains("memory: 192Mi"), "main is as the person left it");
}

/// The GitOps controller never applies the merge: the rollout stalls at convergeTimeout,
/// naming what is not live.
#[tokio::test]
async fn a_merge_the_cluster_never_converges_to_stalls() {
    let w = world("github", json!({"convergeTimeout": "1s"})).await;
    let mut rem = remediation(&w, "checkout-oom-10", "256Mi").await;
    tested(&w, &mut rem).await;
    merged(&w, &mut rem).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let stalled = loop {
        let r = w.deploy.rollout(w.input(&rem, Step::Rollout)).await.unwrap();
        if r.state == RolloutState::Stalled {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "never stalled: {}", r.message);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        stalled.message.contains("did not converge")
            && stalled.message.contains("within convergeTimeout (1s)")
            && stalled.message.contains("256Mi"),
        "{}",
        stalled.message
    );
}

/// A Remediation that ends unmerged — even one cancelled before its status recorded the pull
/// request — closes its pull request and deletes its branch; someone else's is left alone; a
/// second release (the controller releases at least once) finds nothing left and succeeds.
#[tokio::test]
async fn release_closes_the_remediations_own_pull_request_only() {
    let w = world("github", json!({})).await;
    let mut rem = remediation(&w, "checkout-oom-11", "256Mi").await;
    tested(&w, &mut rem).await;
    rem.status.as_mut().unwrap().ci = None;
    w.ci.release(w.input(&rem, Step::Test)).await.unwrap();
    assert_eq!(w.forge.pull_requests()[0].state, "closed");
    assert_eq!(w.forge.rev("refs/heads/reflex/checkout-oom-11"), None);
    // The controller releases at least once: a second release finds nothing and succeeds.
    w.ci.release(w.input(&rem, Step::Test)).await.unwrap();
    assert_eq!(w.forge.pull_requests().len(), 1);

    let other = remediation(&w, "checkout-oom-12", "256Mi").await;
    let seed = w.dir.join("someone");
    git(&w.dir, &["clone", "--quiet", &format!("file://{}", w.bare.display()), seed.to_str().unwrap()]);
    git(&seed, &["commit", "--quiet", "--allow-empty", "-m", "not reflex"]);
    git(&seed, &["push", "--quiet", "origin", "HEAD:refs/heads/reflex/checkout-oom-12"]);
    w.ci.release(w.input(&other, Step::Test)).await.unwrap();
    assert!(w.forge.rev("refs/heads/reflex/checkout-oom-12").is_some(), "someone else's branch stays");
}

/// With `mergeApproval: forge`, the gate lets the change on and the merge waits for the pull
/// request's own approving review.
#[tokio::test]
async fn with_forge_review_the_merge_waits_for_an_approving_review() {
    let w = world("github", json!({"mergeApproval": "forge"})).await;
    let mut rem = remediation(&w, "checkout-oom-13", "256Mi").await;
    tested(&w, &mut rem).await;
    let snapshot = w.deploy.snapshot(w.input(&rem, Step::Snapshot)).await.unwrap();
    rem.status.as_mut().unwrap().deploy = Some(snapshot);
    let status = rem.status.as_ref().unwrap();
    let tested =
        reflex::patch::TestedPatch::new(status.proposal.as_ref().unwrap(), status.ci.as_ref().unwrap()).unwrap();
    let merging = tokio::spawn({
        let (deploy, input) = (w.deploy.clone(), w.input(&rem, Step::Deploy));
        async move { deploy.apply(input, tested).await }
    });
    // Reviews are asked for; nothing merges without one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !w.forge.requests().iter().any(|r| r.ends_with("/pulls/1/reviews")) {
        assert!(tokio::time::Instant::now() < deadline, "the reviews were never read");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(w.forge.pull_requests()[0].state, "open");
    w.forge.faults.lock().unwrap().approved.insert(1);
    let record = merging.await.unwrap().unwrap();
    assert_eq!(w.forge.pull_requests()[0].state, "merged");
    assert_eq!(record.pull_request.unwrap().merge_commit, w.forge.rev("refs/heads/main"));
}

/// Status is a record, never proof: a commit pushed onto the branch with Reflex's trailers
/// copied, and status edited to name it (and a hostile branch name), is not merged — its
/// content is not the tested patch.
#[tokio::test]
async fn a_commit_with_copied_trailers_is_not_merged() {
    let w = world("github", json!({})).await;
    let mut rem = remediation(&w, "checkout-oom-14", "256Mi").await;
    let ci = tested(&w, &mut rem).await;
    let pr = ci.pull_request.unwrap();
    // Someone with push access replaces the commit: same trailers, one more change.
    let work = w.dir.join("forger");
    git(&w.dir, &["clone", "--quiet", &format!("file://{}", w.bare.display()), work.to_str().unwrap()]);
    git(&work, &["fetch", "--quiet", "origin", "reflex/checkout-oom-14"]);
    git(&work, &["checkout", "--quiet", "FETCH_HEAD"]);
    let message = git(&work, &["log", "-1", "--format=%B"]);
    let path = work.join("apps/checkout.yaml");
    std::fs::write(&path, std::fs::read_to_string(&path).unwrap().replace("image: \"c:1\"", "image: \"evil:1\""))
        .unwrap();
    git(&work, &["commit", "--quiet", "--amend", "-am", &message]);
    git(&work, &["push", "--quiet", "--force", "origin", "HEAD:refs/heads/reflex/checkout-oom-14"]);
    let forged = git(&work, &["rev-parse", "HEAD"]);
    let ci = rem.status.as_mut().unwrap().ci.as_mut().unwrap();
    let record = ci.pull_request.as_mut().unwrap();
    record.commit = forged.clone();
    record.branch = "../../../../x".into();
    let err = deploying(&w, &mut rem).await.unwrap_err();
    assert_eq!(err.category, ErrorCategory::NeedsHuman);
    assert!(
        err.message.contains(&format!("commit {forged}")) && err.message.contains("is not the tested change"),
        "{err}"
    );
    assert_eq!(w.forge.pull_requests()[0].state, "open", "nothing merged");
    assert_eq!(w.forge.rev("refs/heads/main").unwrap(), git(&w.bare, &["rev-parse", &format!("{}^1", pr.commit)]));

    // CI run again finds the forged commit on its branch and replaces it with its own.
    let again = w.ci.test(w.input(&rem, Step::Test)).await.unwrap();
    let head = again.pull_request.unwrap().commit;
    assert_ne!(head, forged);
    assert!(!w.file_on(&head, "apps/checkout.yaml").contains("evil"));
}

/// When the live object names the Argo CD Application that manages it, the rollout reads its
/// sync state: a failed sync stalls the change at once, with Argo CD's own message.
#[tokio::test]
async fn an_argo_cd_application_that_failed_to_sync_stalls_the_rollout() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{DynamicObject, Patch, PatchParams};
    let w = world("github", json!({"convergeTimeout": "10m"})).await;
    let crd: CustomResourceDefinition = serde_json::from_value(json!({"metadata": {"name": "applications.argoproj.io"},
        "spec": {"group": "argoproj.io", "scope": "Namespaced", "names": {"plural": "applications", "singular": "application", "kind": "Application", "listKind": "ApplicationList"},
            "versions": [{"name": "v1alpha1", "served": true, "storage": true, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}}))
    .unwrap();
    Api::<CustomResourceDefinition>::all(w.admin.clone()).create(&PostParams::default(), &crd).await.unwrap();
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": "argocd"}})).unwrap();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(w.admin.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let gvk = kube::core::GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Application");
    let apps: Api<DynamicObject> =
        Api::namespaced_with(w.admin.clone(), "argocd", &kube::api::ApiResource::from_gvk(&gvk));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let app = json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Application", "metadata": {"name": "shop", "namespace": "argocd"},
        "spec": {"project": "default"}});
    loop {
        match apps.create(&PostParams::default(), &serde_json::from_value(app.clone()).unwrap()).await {
            Ok(_) => break,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "the CRD never served: {e}"),
        }
        tokio::task::yield_now().await;
    }
    let status = json!({"status": {"sync": {"status": "OutOfSync", "revision": "0123456789abcdef0123"}, "health": {"status": "Healthy"},
        "operationState": {"phase": "Failed", "message": "Deployment.apps \"checkout\" is invalid: spec.template: forbidden"}}});
    apps.patch_status("shop", &PatchParams::default(), &Patch::Merge(status)).await.unwrap();
    let tracked = json!({"metadata": {"annotations": {"argocd.argoproj.io/tracking-id": "shop:apps/Deployment:default/checkout"}}});
    Api::<Deployment>::namespaced(w.admin.clone(), "default")
        .patch("checkout", &PatchParams::default(), &Patch::Merge(tracked))
        .await
        .unwrap();

    let mut rem = remediation(&w, "checkout-oom-15", "256Mi").await;
    tested(&w, &mut rem).await;
    merged(&w, &mut rem).await;
    let r = w.deploy.rollout(w.input(&rem, Step::Rollout)).await.unwrap();
    assert_eq!(r.state, RolloutState::Stalled, "{}", r.message);
    assert!(r.message.contains("its GitOps controller reports a failure"), "{}", r.message);
    assert!(
        r.message.contains("Argo CD Application argocd/shop: sync OutOfSync at 0123456789ab")
            && r.message.contains("forbidden"),
        "{}",
        r.message
    );
}

/// GitHub reports checks two ways — commit statuses and check runs (GitHub Actions) — and a
/// required check may be either; a check run still in progress is waited for, and one that
/// concludes `failure` fails CI.
#[tokio::test]
async fn required_checks_are_read_from_statuses_and_check_runs() {
    let w = world("github", json!({"requiredChecks": ["ci/test", "build"]})).await;
    w.forge.faults.lock().unwrap().checks =
        vec![("ci/test".into(), "success".into()), ("run:build".into(), "success".into())];
    let mut rem = remediation(&w, "checkout-oom-16", "256Mi").await;
    let ci = tested(&w, &mut rem).await;
    assert_eq!(ci.verdict, CiVerdict::Passed, "{:?}", ci.messages);
    let checks: Vec<(String, String)> =
        ci.pull_request.unwrap().checks.iter().map(|c| (c.name.clone(), c.state.clone())).collect();
    assert_eq!(checks, vec![("ci/test".to_owned(), "success".to_owned()), ("build".to_owned(), "success".to_owned())]);

    w.forge.faults.lock().unwrap().checks =
        vec![("ci/test".into(), "success".into()), ("run:build".into(), "failure".into())];
    let mut rem = remediation(&w, "checkout-oom-17", "256Mi").await;
    let ci = tested(&w, &mut rem).await;
    assert_eq!(ci.verdict, CiVerdict::Failed);
    assert!(ci.messages.iter().any(|m| m.contains("checks failed: build")), "{:?}", ci.messages);
}

/// A real OpenSSH server on loopback, serving the test's repositories to one key.
struct Sshd {
    child: std::process::Child,
    port: u16,
    client_key: String,
    known_hosts: String,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sshd(dir: &Path) -> Sshd {
    let d = dir.join("sshd");
    std::fs::create_dir_all(&d).unwrap();
    for key in ["host_key", "client_key"] {
        let out =
            Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(d.join(key)).output().unwrap();
        assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {0}/host_key\nAuthorizedKeysFile {0}/authorized_keys\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nUsePAM no\nStrictModes no\nPidFile {0}/sshd.pid\n",
        d.display()
    );
    std::fs::write(d.join("sshd_config"), config).unwrap();
    // The privilege-separation directory OpenSSH wants (the package's tmpfiles make it on boot).
    let _ = std::fs::create_dir_all("/run/sshd");
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(d.join("sshd_config"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(d.join("log")).unwrap())
        .spawn()
        .expect("sshd (openssh-server; scripts/prereqs.sh installs it)");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "sshd did not listen: {}",
            std::fs::read_to_string(d.join("log")).unwrap_or_default()
        );
        std::thread::yield_now();
    }
    let host = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
    let host: Vec<&str> = host.split_whitespace().take(2).collect();
    Sshd {
        child,
        port,
        client_key: std::fs::read_to_string(d.join("client_key")).unwrap(),
        known_hosts: format!("[127.0.0.1]:{port} {}\n", host.join(" ")),
    }
}

/// An ssh:// remote: cloned and pushed with the Secret's key, the server checked against the
/// Secret's known_hosts — and refused when the host key is not the one it names.
#[tokio::test]
async fn an_ssh_remote_is_reached_with_the_secrets_key_and_its_host_key_checked() {
    let base = std::env::temp_dir().join(format!("reflex-sshd-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&base).unwrap();
    let server = sshd(&base);
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap().trim().to_owned();
    // The world's repository, reached over ssh: its path is known once the world exists, so the
    // policy names it through a symlink made first.
    let link = base.join("platform.git");
    let remote = format!("ssh://{user}@127.0.0.1:{}{}", server.port, link.display());
    let w = world("github", json!({"repository": remote})).await;
    std::os::unix::fs::symlink(&w.bare, &link).unwrap();
    let secrets = Api::<Secret>::namespaced(w.admin.clone(), "default");
    let with =
        |known_hosts: &str| json!({"stringData": {"ssh-privatekey": server.client_key, "known_hosts": known_hosts}});
    secrets
        .patch("platform-repo", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(with(&server.known_hosts)))
        .await
        .unwrap();
    let mut rem = remediation(&w, "checkout-oom-18", "256Mi").await;
    let ci = tested(&w, &mut rem).await;
    assert_eq!(ci.verdict, CiVerdict::Passed, "{:?}", ci.messages);
    let pr = ci.pull_request.unwrap();
    assert_eq!(w.forge.rev("refs/heads/reflex/checkout-oom-18"), Some(pr.commit), "pushed over ssh");

    // A known_hosts naming another key: the server is not trusted, nothing is pushed.
    let other = server.known_hosts.replace(
        server.known_hosts.split_whitespace().nth(2).unwrap(),
        "AAAAC3NzaC1lZDI1NTE5AAAAIFmVdVb0pQ5DtpmXIVZWGuxQ2ZRe0tMr1cqb7a8dOqDr",
    );
    secrets
        .patch("platform-repo", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(with(&other)))
        .await
        .unwrap();
    let rem = remediation(&w, "checkout-oom-19", "256Mi").await;
    let err = w.ci.test(w.input(&rem, Step::Test)).await.unwrap_err();
    assert_eq!(err.category, ErrorCategory::NeedsHuman, "{err}");
    assert!(err.message.to_ascii_lowercase().contains("host key"), "{err}");
    assert_eq!(w.forge.rev("refs/heads/reflex/checkout-oom-19"), None);
    drop(server);
    let _ = std::fs::remove_dir_all(&base);
}

/// Status is a record: a rollback whose status names a merge commit that is not this
/// Remediation's change (here: the repository's first commit) reverts nothing.
#[tokio::test]
async fn a_rollback_reverts_only_a_merge_of_this_remediations_change() {
    let w = world("github", json!({})).await;
    let mut rem = remediation(&w, "checkout-oom-20", "256Mi").await;
    tested(&w, &mut rem).await;
    merged(&w, &mut rem).await;
    let main_before = w.forge.rev("refs/heads/main");
    let first = git(&w.bare, &["rev-list", "--max-parents=0", "main"]);
    rem.status.as_mut().unwrap().deploy.as_mut().unwrap().pull_request.as_mut().unwrap().merge_commit =
        Some(first.clone());
    let err = w.deploy.rollback(w.input(&rem, Step::Rollback)).await.unwrap_err();
    assert_eq!(err.category, ErrorCategory::NeedsHuman);
    assert!(err.message.contains(&first) && err.message.contains("not a merge of this Remediation's change"), "{err}");
    assert_eq!(w.forge.rev("refs/heads/main"), main_before, "nothing reverted");
    assert_eq!(w.forge.rev("refs/heads/reflex/checkout-oom-20-revert"), None, "nothing pushed");
}
