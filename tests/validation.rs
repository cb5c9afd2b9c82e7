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
    assert_eq!(valid.target_name.render(&labels).unwrap(), "checkout");
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
