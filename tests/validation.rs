//! The validation edge: a manifest becomes a validated type once, and every bad field is
//! named with what to do about it — never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

use reflex::api::validate::{ValidPlaybook, ValidPolicy};
use reflex::api::{Playbook, RemediationPolicy};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn a_good_policy_validates_with_durations_read() {
    let policy: RemediationPolicy = serde_saphyr::from_str(&fixture("policy-good.yaml")).unwrap();
    let valid = ValidPolicy::from_spec(&policy.spec).unwrap();
    assert_eq!(valid.limits.cooldown.as_secs(), 600);
    assert_eq!(valid.verify.as_ref().unwrap().for_.as_secs(), 30);
    assert_eq!(valid.matchers.len(), 2);
    assert_eq!(valid.limits.max_duration.as_secs(), 3600, "defaults apply to omitted fields");
    let labels = [("deployment".to_owned(), "checkout".to_owned())].into();
    assert_eq!(valid.target_name.as_ref().unwrap().render(&labels).unwrap(), "checkout");
}

#[test]
fn a_bad_policy_names_every_bad_field() {
    let policy: RemediationPolicy = serde_saphyr::from_str(&fixture("policy-bad.yaml")).unwrap();
    let errors = ValidPolicy::from_spec(&policy.spec).unwrap_err();
    for field in [
        "spec.match.matchers[0]",
        "spec.match.matchers[1]",
        "spec.target.name",
        "spec.agent.model",
        "spec.ci.dryRun",
        "spec.verify.for",
        "spec.limits.cooldown",
    ] {
        assert!(errors.has(field), "expected an error for {field}; got: {errors}");
    }
    let text = errors.to_string();
    assert!(text.contains("invalid regex"), "{text}");
    assert!(
        text.contains("10 minutes") && text.contains("write it like 30s"),
        "the message says how to fix it: {text}"
    );
}

#[test]
fn a_good_playbook_validates_with_bounds_read() {
    let pb: Playbook = serde_saphyr::from_str(&fixture("playbook-good.yaml")).unwrap();
    let valid = ValidPlaybook::from_spec(&pb.spec).unwrap();
    assert_eq!(valid.parameters[0].max, Some(4.0 * 1024.0 * 1024.0 * 1024.0));
    assert!(valid.rollback_on_failure, "rollback defaults to on");
}

#[test]
fn a_bad_playbook_names_every_bad_field() {
    let pb: Playbook = serde_saphyr::from_str(&fixture("playbook-bad.yaml")).unwrap();
    let errors = ValidPlaybook::from_spec(&pb.spec).unwrap_err();
    for field in [
        "spec.targetKinds[1]",
        "spec.reads[0].name",
        "spec.patch.parameters[0].min",
        "spec.patch.parameters[1].max",
        "spec.patch.template",
        "spec.patch.allowedPaths[0]",
        "spec.patch.parameters[2].min",
        "spec.patch.parameters[2].maxFactor",
        "spec.patch.parameters[3].newer",
        "spec.rollout.waitFor[0].kind",
        "spec.rollout.waitFor[1].name",
        "spec.rollout.settle",
        "spec.patch.values[0]",
        "spec.patch.values[1].path",
        "spec.patch.values[1].pattern",
    ] {
        assert!(errors.has(field), "expected an error for {field}; got: {errors}");
    }
    assert!(errors.to_string().contains("no parameter \"replicas\" is declared"), "{errors}");
}

#[test]
fn malformed_manifests_are_errors_not_panics() {
    for text in [
        "",
        "spec: [",
        "apiVersion: reflex.dev/v1alpha1\nkind: RemediationPolicy\nspec: {match: 3}",
        "\u{0}\u{1}",
        "spec:\n  target: {kind: Pod, name: x}",
    ] {
        let parsed: Result<RemediationPolicy, _> = serde_saphyr::from_str(text);
        assert!(parsed.is_err(), "{text:?} must be rejected");
    }
}

/// GitOps and test-Job settings a namespace user writes are held to what is safe to hand git
/// and a forge: no git transport syntax or credentials in the URL, a project of plain path
/// segments (exactly owner/repo on GitHub), an API URL without query or fragment, paths inside
/// the repository, no REFLEX_ variables of one's own.
#[test]
fn gitops_and_job_settings_that_could_steer_git_or_the_forge_are_refused() {
    use reflex::api::validate::{RemoteScheme, ValidPolicy, parse_remote};
    for bad in [
        "ext::sh -c touch% /tmp/x",
        "-uupload-pack=touch",
        "https://user:pw@github.com/o/r.git",
        "http://github.com/o/r",
        "git@host",
        "fd::x",
    ] {
        assert!(parse_remote(bad).is_err(), "{bad}");
    }
    let ok = parse_remote("git@github.com:platform/apps.git").unwrap();
    assert_eq!((ok.scheme, ok.host.as_str(), ok.path.as_str()), (RemoteScheme::Ssh, "github.com", "platform/apps"));
    let https = parse_remote("https://gitlab.example.com/group/sub/project.git").unwrap();
    assert_eq!((https.scheme, https.path.as_str()), (RemoteScheme::Https, "group/sub/project"));

    let policy = |gitops: serde_json::Value, job: Option<serde_json::Value>| {
        let mut ci = serde_json::json!({"gitops": gitops});
        if let Some(job) = job {
            ci = serde_json::json!({"job": job});
        }
        let spec: reflex::api::policy::RemediationPolicySpec = serde_json::from_value(serde_json::json!({
            "match": {"alertnames": ["A"]}, "target": {"kind": "Deployment", "name": "web"}, "playbook": "p", "ci": ci}))
        .unwrap();
        ValidPolicy::from_spec(&spec).err().map(|e| e.to_string()).unwrap_or_default()
    };
    let gitops = |extra: serde_json::Value| {
        let mut g = serde_json::json!({"repository": "https://github.com/platform/apps.git", "credentialsSecret": "repo", "forge": {"type": "github"}});
        if let (Some(a), Some(b)) = (g.as_object_mut(), extra.as_object()) {
            for (k, v) in b {
                a.insert(k.clone(), v.clone());
            }
        }
        g
    };
    assert_eq!(policy(gitops(serde_json::json!({})), None), "", "a plain GitHub repository validates");
    let errors = policy(
        gitops(serde_json::json!({"forge": {"type": "github", "project": "a/b/c"}, "path": "../etc/passwd"})),
        None,
    );
    assert!(errors.contains("spec.ci.gitops.forge.project") && errors.contains("spec.ci.gitops.path"), "{errors}");
    let errors = policy(
        gitops(serde_json::json!({"forge": {"type": "github", "apiUrl": "https://ghe.example.com/api/v3#"}})),
        None,
    );
    assert!(errors.contains("spec.ci.gitops.forge.apiUrl"), "{errors}");
    let errors = policy(gitops(serde_json::json!({"forge": {"type": "gitlab", "project": "group/../x"}})), None);
    assert!(errors.contains("spec.ci.gitops.forge.project"), "{errors}");
    let errors = policy(gitops(serde_json::json!({"baseBranch": "--upload-pack=x"})), None);
    assert!(errors.contains("spec.ci.gitops.baseBranch"), "{errors}");
    let job = serde_json::json!({"image": "i:1", "command": ["t"], "env": [{"name": "REFLEX_MANIFEST", "value": "/etc/shadow"}, {"name": "1X"}]});
    let errors = policy(serde_json::json!({}), Some(job));
    assert!(
        errors.contains("spec.ci.job.env[0].name")
            && errors.contains("REFLEX_")
            && errors.contains("spec.ci.job.env[1].name"),
        "{errors}"
    );
}

#[test]
fn a_job_is_only_diagnosed_and_a_playbook_without_a_patch_only_diagnoses() {
    let policy = |trust: &str| -> RemediationPolicy {
        serde_saphyr::from_str(&format!(
            "apiVersion: reflex.dev/v1alpha1\nkind: RemediationPolicy\nmetadata: {{name: p}}\nspec:\n  match: {{alertnames: [KubeJobFailed]}}\n  target: {{kinds: [Job, CronJob]}}\n  playbook: diagnose-failed-job\n  trust: {{level: {trust}}}\n"
        ))
        .unwrap()
    };
    let errors = ValidPolicy::from_spec(&policy("propose").spec).unwrap_err();
    assert!(errors.has("spec.trust.level"), "{errors}");
    assert!(errors.to_string().contains("trust level observe"), "{errors}");
    assert!(ValidPolicy::from_spec(&policy("observe").spec).is_ok());

    let pb: Playbook = serde_saphyr::from_str(
        "apiVersion: reflex.dev/v1alpha1\nkind: Playbook\nmetadata: {name: d}\nspec:\n  targetKinds: [Job]\n  reads:\n    - {name: job, tool: get_resource, arguments: {kind: Job, name: x}}\n",
    )
    .unwrap();
    assert!(ValidPlaybook::from_spec(&pb.spec).unwrap().diagnoses_only);
    let mut bare = pb.clone();
    bare.spec.reads.clear();
    let errors = ValidPlaybook::from_spec(&bare.spec).unwrap_err();
    assert!(errors.has("spec.reads"), "a playbook with neither reads nor a patch does nothing: {errors}");
}

/// A delegated step is validated like the rest: its skill, its agent, its timeout (at most
/// 10m), and a fallback the policy can run.
#[test]
fn a_bad_delegation_names_each_bad_field() {
    let mut policy: serde_json::Value = serde_saphyr::from_str(&fixture("policy-good.yaml")).unwrap();
    policy["spec"]["delegate"] = serde_json::json!({
        "diagnose": {"skill": " ", "agent": "Not A Name", "timeout": "20m"},
        "propose": {"skill": "propose-fix", "fallback": "llm", "agent": "platform/fixer"}});
    let policy: RemediationPolicy = serde_json::from_value(policy).unwrap();
    let errors = ValidPolicy::from_spec(&policy.spec).unwrap_err();
    for field in [
        "spec.delegate.diagnose.skill",
        "spec.delegate.diagnose.agent",
        "spec.delegate.diagnose.timeout",
        "spec.delegate.propose.fallback",
    ] {
        assert!(errors.has(field), "expected an error for {field}; got: {errors}");
    }
    assert!(!errors.has("spec.delegate.propose.agent"), "namespace/name is a valid agent: {errors}");
    assert!(errors.to_string().contains("llm needs spec.agent.model"), "{errors}");
}
