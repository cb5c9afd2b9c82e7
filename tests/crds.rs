//! The committed CRDs match the Rust types, deserialize strictly, and their CEL rules
//! catch the mistakes they are there to catch (evaluated client-side by kube's CEL engine).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on broken fixtures

use std::{fs, path::Path};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use reflex::api::crds;
use serde_json::{Value, json};

fn crd_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/crds"))
}

fn yaml_to_json(text: &str) -> Value {
    serde_saphyr::from_str(text).expect("valid YAML")
}

/// Regenerate with `make crds` when this fails.
#[test]
fn committed_crds_match_the_rust_types() {
    let expected = crds::all();
    let mut files: Vec<_> = fs::read_dir(crd_dir()).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), expected.len(), "crds/ must hold exactly one file per CRD: {files:?}");
    for crd in &expected {
        let path = crd_dir().join(crds::file_name(crd));
        let on_disk = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}; run `make crds`", path.display()));
        assert!(on_disk == crds::render_file(crd).unwrap(), "{} drifted from src/api; run `make crds`", path.display());
    }
}

/// Every file is a CustomResourceDefinition with no field the type does not know.
#[test]
fn every_crd_file_deserializes_strictly() {
    for entry in fs::read_dir(crd_dir()).unwrap() {
        let path = entry.unwrap().path();
        let text = fs::read_to_string(&path).unwrap();
        let raw = yaml_to_json(&text);
        let crd: CustomResourceDefinition =
            serde_json::from_value(raw.clone()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Strict: the typed value must carry every field of the file, nothing dropped.
        assert_eq!(
            serde_json::to_value(&crd).unwrap(),
            raw,
            "{} has fields unknown to apiextensions/v1",
            path.display()
        );
        assert_eq!(crd.spec.group, "reflex.dev");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(),
            "{} needs the status subresource",
            path.display()
        );
        assert!(
            !crd.spec.names.short_names.clone().unwrap_or_default().is_empty(),
            "{} needs a short name",
            path.display()
        );
        assert!(version.additional_printer_columns.as_ref().is_some_and(|c| c.iter().any(|c| c.name == "Age")));
    }
}

#[test]
fn remediation_prints_phase_target_policy_and_age() {
    let rem = crds::all().into_iter().find(|c| c.spec.names.kind == "Remediation").unwrap();
    let columns: Vec<_> = rem.spec.versions[0]
        .additional_printer_columns
        .clone()
        .unwrap()
        .into_iter()
        .map(|c| (c.name, c.json_path))
        .collect();
    for (name, path) in [
        ("Phase", ".status.phase"),
        ("Target", ".spec.target.name"),
        ("Policy", ".spec.policyRef.name"),
        ("Age", ".metadata.creationTimestamp"),
    ] {
        assert!(columns.contains(&(name.to_owned(), path.to_owned())), "missing column {name}: {columns:?}");
    }
}

/// `reflex crd` prints exactly the committed files.
#[test]
fn reflex_crd_prints_the_committed_files() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_reflex")).arg("crd").output().unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&printed).unwrap();
    let mut from_files: Vec<Value> = fs::read_dir(crd_dir())
        .unwrap()
        .map(|e| yaml_to_json(&fs::read_to_string(e.unwrap().path()).unwrap()))
        .collect();
    let mut from_cli = docs;
    let key = |v: &Value| v["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    from_files.sort_by_key(key);
    from_cli.sort_by_key(key);
    assert_eq!(from_cli, from_files);
}

fn schema(kind: &str) -> Value {
    let crd = crds::all().into_iter().find(|c| c.spec.names.kind == kind).unwrap();
    serde_json::to_value(crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap()).unwrap()
}

fn cel_errors(kind: &str, obj: &Value, old: Option<&Value>) -> Vec<String> {
    match kube::core::cel::Validator::new().validate(&schema(kind), obj, old) {
        Ok(()) => vec![],
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

fn policy(spec_patch: Value) -> Value {
    let mut spec = json!({
        "match": {"alertnames": ["KubeContainerOOMKilled"], "matchers": ["namespace=\"shop\""]},
        "target": {"kind": "Deployment", "name": "{{ labels.deployment }}"},
        "playbook": "raise-memory-limit",
        "verify": {"query": "increase(oom_kills[5m])", "operator": "<", "threshold": 1, "for": "1m", "timeout": "5m"}
    });
    merge(&mut spec, spec_patch);
    json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "RemediationPolicy", "metadata": {"name": "p", "namespace": "shop"}, "spec": spec})
}

fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(&k);
                } else {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (b, p) => *b = p,
    }
}

#[test]
fn cel_accepts_a_good_policy() {
    assert_eq!(cel_errors("RemediationPolicy", &policy(json!({})), None), Vec::<String>::new());
    let resolving = policy(json!({"target": {"kind": null, "name": null, "kinds": ["Deployment", "StatefulSet"]}}));
    assert_eq!(cel_errors("RemediationPolicy", &resolving, None), Vec::<String>::new());
}

#[test]
fn cel_catches_policy_mistakes_with_their_messages() {
    let cases = [
        (json!({"verify": {"for": "10m", "timeout": "5m"}}), "verify.for must not be longer than verify.timeout"),
        (json!({"verify": {"interval": "10m"}}), "verify.interval must not be longer than verify.timeout"),
        (json!({"ci": {"dryRun": false}}), "ci.dryRun cannot be disabled"),
        (
            json!({"ci": {"job": {"image": "test", "command": ["true"]}, "gitops": {"repository": "https://git/x", "path": "a.yaml"}}}),
            "choose at most one of ci.job and ci.gitops",
        ),
        (json!({"agent": {"mode": "llm"}}), "agent.model is required"),
        (json!({"playbook": null}), "playbook is required unless agent.mode is llm"),
        (
            json!({"target": {"kind": "Deployment", "name": "x", "kinds": ["Deployment"]}}),
            "give kind and name, or kinds (resolved from the alert's labels), not both",
        ),
        (json!({"target": {"name": null}}), "give kind and name, or kinds"),
    ];
    for (patch, message) in cases {
        let errors = cel_errors("RemediationPolicy", &policy(patch.clone()), None);
        assert!(errors.iter().any(|e| e.contains(message)), "{patch} should fail with {message:?}, got {errors:?}");
    }
}

#[test]
fn cel_lets_a_playbook_wait_only_for_workloads_that_roll_out() {
    let playbook = |kind: &str| {
        json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "Playbook", "metadata": {"name": "pool", "namespace": "shop"},
            "spec": {"targetKinds": ["ConfigMap"], "patch": {"mode": "agent", "allowedPaths": ["data.poolSize"]},
                     "rollout": {"waitFor": [{"kind": kind, "name": "{{ labels.deployment }}", "newPods": true}], "settle": "90s"}}})
    };
    assert_eq!(cel_errors("Playbook", &playbook("Deployment"), None), Vec::<String>::new());
    let errors = cel_errors("Playbook", &playbook("ConfigMap"), None);
    assert!(
        errors.iter().any(|e| e.contains("rollout.waitFor[].kind must be Deployment, StatefulSet or DaemonSet")),
        "{errors:?}"
    );
}

#[test]
fn cel_wants_exactly_one_constraint_per_playbook_value() {
    let playbook = |value: Value| {
        json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "Playbook", "metadata": {"name": "mode", "namespace": "shop"},
            "spec": {"targetKinds": ["ConfigMap"], "patch": {"mode": "agent", "allowedPaths": ["data.MODE"], "values": [value]}}})
    };
    assert!(
        cel_errors("Playbook", &playbook(json!({"path": "data.MODE", "allowed": ["fast", "slow"]})), None).is_empty()
    );
    for bad in [json!({"path": "data.MODE"}), json!({"path": "data.MODE", "allowed": ["a"], "pattern": "a"})] {
        let errors = cel_errors("Playbook", &playbook(bad.clone()), None);
        assert!(
            errors.iter().any(|e| e.contains("give exactly one of allowed, pattern, or min/max")),
            "{bad}: {errors:?}"
        );
    }
}

#[test]
fn cel_keeps_approvals_immutable_and_cancel_one_way() {
    let approval = |decision: &str| {
        json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "RemediationApproval", "metadata": {"name": "a"},
        "spec": {"remediationRef": {"name": "r", "uid": "u-1"}, "decision": decision, "approver": "alice", "proposalDigest": "sha256:x"}})
    };
    assert!(cel_errors("RemediationApproval", &approval("approve"), None).is_empty());
    let mut unbound = approval("approve");
    unbound["spec"].as_object_mut().unwrap().remove("proposalDigest");
    let errors = cel_errors("RemediationApproval", &unbound, None);
    assert!(errors.iter().any(|e| e.contains("names the proposal it approves")), "{errors:?}");
    let errors = cel_errors("RemediationApproval", &approval("reject"), Some(&approval("approve")));
    assert!(errors.iter().any(|e| e.contains("an approval is immutable")), "{errors:?}");

    let rem = |cancel: bool, target: &str| {
        json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "Remediation", "metadata": {"name": "r"},
        "spec": {"policyRef": {"name": "p"}, "cancel": cancel, "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
                 "alert": {"name": "A", "fingerprint": "f", "startsAt": "2026-11-21T00:00:00Z"}}})
    };
    assert!(
        cel_errors("Remediation", &rem(true, "checkout"), Some(&rem(false, "checkout"))).is_empty(),
        "cancelling is allowed"
    );
    let errors = cel_errors("Remediation", &rem(false, "checkout"), Some(&rem(true, "checkout")));
    assert!(errors.iter().any(|e| e.contains("cancel cannot be undone")), "{errors:?}");
    let errors = cel_errors("Remediation", &rem(false, "payments"), Some(&rem(false, "checkout")));
    assert!(errors.iter().any(|e| e.contains("immutable")), "{errors:?}");
}

#[test]
fn cel_requires_a_template_for_template_playbooks() {
    let pb = json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "Playbook", "metadata": {"name": "x"},
        "spec": {"targetKinds": ["Deployment"], "patch": {"mode": "template", "allowedPaths": ["spec.replicas"]}}});
    let errors = cel_errors("Playbook", &pb, None);
    assert!(errors.iter().any(|e| e.contains("patch.template is required")), "{errors:?}");
}
