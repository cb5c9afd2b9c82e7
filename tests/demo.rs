#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The demo scenarios end to end: the sandbox, the operator (controller, stages, intake over
//! HTTP) and the scenario's model, exactly as `reflex demo` runs them.

use reflex::api::remediation::{Phase, Step, StepState};
use reflex::demo::scenario::Scenario;

/// Run a scenario as `reflex demo` does: its outcome and the timeline it printed.
async fn play(scenario: Scenario, keep: bool) -> (reflex::demo::Outcome, String) {
    let mut out = Vec::new();
    let outcome = reflex::demo::run(scenario, keep, &mut out).await;
    let text = String::from_utf8(out).unwrap();
    match outcome {
        Ok(outcome) => (outcome, text),
        Err(e) => panic!("{e:#}\n{text}"),
    }
}

/// A built-in scenario's text, to run a variant of it.
fn built_in_text(name: &str) -> &'static str {
    reflex::demo::scenario::BUILT_IN.iter().find(|(n, _)| *n == name).unwrap().1
}

fn succeeded(rem: &reflex::api::remediation::Remediation, step: Step) -> bool {
    rem.status.as_ref().unwrap().steps.iter().any(|r| r.step == step && r.state == StepState::Succeeded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oom_scenario_raises_the_limit_and_verifies_the_fix() {
    let (outcome, text) = play(Scenario::built_in("oom").unwrap(), false).await;
    assert_eq!(outcome.phase(), Some(Phase::Succeeded), "{text}");
    assert!(outcome.as_expected());
    assert_eq!((outcome.memory_before.as_str(), outcome.memory_after.as_str()), ("128Mi", "250Mi"), "{text}");
    let requests = &outcome.template_after["spec"]["containers"][0]["resources"]["requests"];
    assert_eq!(
        (requests["memory"].as_str(), requests["cpu"].as_str()),
        (Some("250Mi"), Some("100m")),
        "request raised, cpu untouched"
    );
    let rem = &outcome.remediation;
    for step in [
        Step::Diagnose,
        Step::Propose,
        Step::Test,
        Step::Gate,
        Step::Snapshot,
        Step::Deploy,
        Step::Rollout,
        Step::Verify,
    ] {
        assert!(succeeded(rem, step), "{step:?} succeeded: {text}");
    }
    assert!(!rem.status.as_ref().unwrap().steps.iter().any(|r| r.step == Step::Rollback));
    let status = rem.status.as_ref().unwrap();
    assert_eq!(
        status.deploy.as_ref().unwrap().applied_digest.as_deref(),
        Some(status.proposal.as_ref().unwrap().digest.as_str())
    );
    assert!(status.verification.as_ref().unwrap().samples.iter().any(|s| s.ok));
    assert!(
        text.contains("checking  sum(increase(kube_pod_container_status_restarts_total"),
        "the query on the timeline: {text}"
    );
    assert_eq!(
        status.rollout.as_ref().unwrap().state,
        reflex::api::remediation::RolloutState::Complete,
        "deployed = rolled out"
    );
    // Diagnose and propose each read through Reflex's MCP server: the playbook's two reads
    // and the target itself.
    let calls = &outcome.tool_calls;
    assert_eq!(calls.iter().filter(|c| *c == "get_resource ok").count(), 4, "{calls:?}");
    assert_eq!(calls.iter().filter(|c| *c == "query_prometheus ok").count(), 2, "{calls:?}");
    // One Event per transition: Pending → Diagnosing → Proposed → Testing → Deploying → Verifying → Succeeded.
    assert_eq!(outcome.events.len(), 6, "{:?}", outcome.events);
    assert_eq!(outcome.events.last().map(String::as_str), Some("Verified"), "{:?}", outcome.events);
    for expected in [
        "read      usage: 200Mi",
        "limits.memory: 128Mi → 250Mi",
        "tested    Passed",
        "gate      Approved: staging, trust auto",
        "deployed",
        "verdict   Passed",
        "result: Succeeded (as the scenario expects)",
    ] {
        assert!(text.contains(expected), "timeline shows {expected:?}:\n{text}");
    }
    assert!(outcome.elapsed.as_secs() < 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bad_fix_scenario_rolls_the_deployment_back_as_it_was() {
    let (outcome, text) = play(Scenario::built_in("bad-fix").unwrap(), false).await;
    assert_eq!(outcome.phase(), Some(Phase::RolledBack), "{text}");
    assert!(outcome.as_expected());
    assert!(text.contains("limits.memory: 128Mi → 140Mi"), "{text}");
    assert_eq!(
        (outcome.memory_before.as_str(), outcome.memory_after.as_str()),
        ("128Mi", "128Mi"),
        "back as it was: {text}"
    );
    assert_eq!(outcome.template_after, outcome.template_before, "the whole pod template is restored exactly");
    let rem = &outcome.remediation;
    assert!(succeeded(rem, Step::Deploy) && succeeded(rem, Step::Rollback), "{text}");
    let status = rem.status.as_ref().unwrap();
    // Its Pods never became ready: the rollout stalled, and the change was never counted as
    // deployed, let alone verified.
    let rollout = status.rollout.as_ref().unwrap();
    assert_eq!(rollout.state, reflex::api::remediation::RolloutState::Stalled);
    assert!(rollout.message.starts_with("ProgressDeadlineExceeded"), "{}", rollout.message);
    assert!(status.verification.is_none(), "{text}");
    assert!(status.rollback.is_some());
    assert_eq!(outcome.events.last().map(String::as_str), Some("RolledBack"), "{:?}", outcome.events);
    assert!(outcome.events.iter().any(|r| r == "RolloutStalled"), "{:?}", outcome.events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_llm_scenario_is_driven_by_the_agent_and_shows_its_calls_tokens_and_cost() {
    use reflex::api::remediation::ProposalSource;
    let (outcome, text) = play(Scenario::built_in("llm").unwrap(), false).await;
    assert_eq!(outcome.phase(), Some(Phase::Succeeded), "{text}");
    assert_eq!((outcome.memory_before.as_str(), outcome.memory_after.as_str()), ("128Mi", "256Mi"), "{text}");
    let proposal = outcome.remediation.status.as_ref().unwrap().proposal.clone().unwrap();
    assert_eq!(proposal.produced_by, ProposalSource::Llm);
    assert_eq!(proposal.model.as_deref(), Some("scripted-demo"));
    assert_eq!(proposal.tokens.as_ref().map(|t| t.prompt + t.completion), Some(1800 + 140 + 2600 + 210));
    // 4,400 prompt tokens at $3/M and 350 completion tokens at $15/M.
    assert_eq!(proposal.cost_usd.as_deref(), Some("0.018450"));
    // The agent's reads went through Reflex's MCP server (audited), and the timeline shows
    // each call with its duration, then tokens and cost; the stand-in says it is one.
    let calls = &outcome.tool_calls;
    assert!(
        calls.contains(&"get_resource ok".to_owned()) && calls.contains(&"query_prometheus ok".to_owned()),
        "{calls:?}"
    );
    for expected in [
        "stand-in: the LLM is a scripted OpenAI-compatible server",
        "llm       scripted-demo: 4750 tokens, $0.018450",
        "tool      get_resource ",
        "tool      query_prometheus ",
        "limits.memory: 128Mi → 256Mi",
        "result: Succeeded (as the scenario expects)",
    ] {
        assert!(text.contains(expected), "timeline shows {expected:?}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saturation_scenario_scales_out_within_bounds_and_verifies() {
    let (outcome, text) = play(Scenario::built_in("saturation").unwrap(), false).await;
    assert_eq!(outcome.phase(), Some(Phase::Succeeded), "{text}");
    // 2 replicas at saturation 1.5 want 2 × 1.5 / 0.7 ≈ 4.3; the playbook's maxFactor caps it at 4.
    let status = outcome.remediation.status.as_ref().unwrap();
    assert_eq!(status.proposal.as_ref().unwrap().patch.0, serde_json::json!({"spec": {"replicas": 4}}));
    for expected in
        ["read      saturation: 1.5", "spec.replicas: 2 → 4", "capped at 2x", "sample    0.75 ✓", "verdict   Passed"]
    {
        assert!(text.contains(expected), "timeline shows {expected:?}:\n{text}");
    }
}

fn image(template: &serde_json::Value) -> &str {
    template["spec"]["containers"][0]["image"].as_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leak_scenario_restarts_the_workload_and_verifies_memory_fell() {
    let (outcome, text) = play(Scenario::built_in("leak").unwrap(), false).await;
    assert_eq!(outcome.phase(), Some(Phase::Succeeded), "{text}");
    // A rolling restart: a restartedAt annotation on the pod template, nothing else changed.
    let status = outcome.remediation.status.as_ref().unwrap();
    let patch = &status.proposal.as_ref().unwrap().patch.0;
    let stamp = patch["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"].as_str();
    assert!(stamp.is_some_and(|s| s.parse::<jiff::Timestamp>().is_ok()), "{patch}");
    assert_eq!(
        outcome.template_after["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"].as_str(),
        stamp,
        "{text}"
    );
    let mut unchanged = outcome.template_after.clone();
    unchanged["metadata"].as_object_mut().unwrap().remove("annotations");
    assert_eq!(unchanged, outcome.template_before, "only the annotation changed");
    // Five hours at 40Mi an hour on top of 100Mi before; fresh Pods back near 100Mi after.
    assert!(text.contains("read      workingSet: 301Mi"), "{text}");
    let samples = &status.verification.as_ref().unwrap().samples;
    assert!(!samples.is_empty());
    assert!(samples.iter().all(|s| s.ok && s.value.is_some_and(|v| v < 110.0 * 1048576.0)), "{samples:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bad_rollout_scenario_returns_to_the_previous_revisions_image() {
    let (outcome, text) = play(Scenario::built_in("bad-rollout").unwrap(), false).await;
    assert_eq!(outcome.phase(), Some(Phase::Succeeded), "{text}");
    assert_eq!(image(&outcome.template_before), "registry.example.com/shop/checkout:1.5.0");
    assert_eq!(image(&outcome.template_after), "registry.example.com/shop/checkout:1.4.2", "{text}");
    // The previous image came from the rollout history, read through Reflex's MCP server.
    assert!(
        outcome.tool_calls.iter().filter(|c| *c == "get_rollout_history ok").count() >= 2,
        "{:?}",
        outcome.tool_calls
    );
    for expected in
        ["read      errors: 0.12", "checkout:1.5.0 → registry.example.com/shop/checkout:1.4.2", "verdict   Passed"]
    {
        assert!(text.contains(expected), "timeline shows {expected:?}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_scenario_raises_a_configmap_value_within_bounds() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let (outcome, text) = play(Scenario::built_in("pool").unwrap(), true).await;
    assert_eq!(outcome.phase(), Some(Phase::Succeeded), "{text}");
    // 20 at saturation 1.5 wants 20 × 1.5 / 0.7 ≈ 43; maxFactor 2 caps it at 40. ConfigMap
    // data stays text.
    let status = outcome.remediation.status.as_ref().unwrap();
    assert_eq!(status.proposal.as_ref().unwrap().patch.0, serde_json::json!({"data": {"DB_POOL_SIZE": "40"}}));
    let sandbox = outcome.sandbox.as_ref().unwrap();
    let client = sandbox.client(reflex::sandbox::ADMIN_TOKEN).await.unwrap();
    let cm = kube::Api::<ConfigMap>::namespaced(client, "shop").get("checkout-config").await.unwrap();
    let data = cm.data.unwrap();
    assert_eq!(
        (data.get("DB_POOL_SIZE").map(String::as_str), data.get("LOG_LEVEL").map(String::as_str)),
        (Some("40"), Some("info")),
        "the key raised, the rest untouched"
    );
    for expected in
        ["data.DB_POOL_SIZE: 20 → 40", "capped at 2x the current 20", "sample    0.75 ✓", "verdict   Passed"]
    {
        assert!(text.contains(expected), "timeline shows {expected:?}:\n{text}");
    }

    // An alert naming a key the playbook does not list is refused before anything is tested.
    let text = built_in_text("pool");
    let other = text
        .replace("key: DB_POOL_SIZE", "key: REQUEST_TIMEOUT_SECONDS")
        .replace("key=\"DB_POOL_SIZE\"", "key=\"REQUEST_TIMEOUT_SECONDS\"");
    let mut scenario = Scenario::parse(&other).unwrap();
    scenario.expect.phase = Phase::Failed;
    let (outcome, text) = play(scenario, false).await;
    assert_eq!(outcome.phase(), Some(Phase::Failed), "{text}");
    assert!(text.contains("data.REQUEST_TIMEOUT_SECONDS, which the playbook's allowedPaths do not allow"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_known_bug_scenario_bumps_the_image_through_ci_and_verifies() {
    let (outcome, text) = play(Scenario::built_in("known-bug").unwrap(), false).await;
    assert_eq!(outcome.phase(), Some(Phase::Succeeded), "{text}");
    assert_eq!(image(&outcome.template_after), "registry.example.com/shop/checkout:1.4.3", "{text}");
    let status = outcome.remediation.status.as_ref().unwrap();
    let ci = status.ci.as_ref().unwrap();
    assert_eq!(ci.verdict, reflex::api::remediation::CiVerdict::Passed);
    assert_eq!(ci.proposal_digest, status.proposal.as_ref().unwrap().digest, "CI tested exactly what deployed");
    assert!(succeeded(&outcome.remediation, Step::Test) && succeeded(&outcome.remediation, Step::Verify));

    // An alert naming an older release is refused before anything is tested or deployed.
    let older = built_in_text("known-bug");
    let mut scenario = Scenario::parse(&older.replace("fixed_version: 1.4.3", "fixed_version: 1.4.1")).unwrap();
    scenario.expect.phase = Phase::Failed;
    let (outcome, text) = play(scenario, false).await;
    assert_eq!(outcome.phase(), Some(Phase::Failed), "{text}");
    assert!(text.contains("1.4.1 is not a newer version than 1.4.2"), "{text}");
    assert_eq!(outcome.template_after, outcome.template_before);
    assert!(!outcome.remediation.status.as_ref().unwrap().steps.iter().any(|r| r.step == Step::Test));
}

#[test]
fn every_playbook_in_the_library_is_built_in_and_valid() {
    use reflex::api::playbook::Playbook;
    let mut files: Vec<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/playbooks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().trim_end_matches(".yaml").to_owned())
        .collect();
    files.sort();
    let mut built_in: Vec<String> = reflex::demo::scenario::PLAYBOOKS.iter().map(|(n, _)| (*n).to_owned()).collect();
    built_in.sort();
    assert_eq!(files, built_in);
    for (name, text) in reflex::demo::scenario::PLAYBOOKS {
        let pb: Playbook = serde_saphyr::from_str(text).unwrap();
        assert_eq!(pb.metadata.name.as_deref(), Some(*name));
        reflex::api::validate::ValidPlaybook::from_spec(&pb.spec).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Each has a scenario that uses it.
        assert!(
            reflex::demo::scenario::BUILT_IN.iter().any(|(s, _)| Scenario::built_in(s)
                .unwrap()
                .playbooks
                .iter()
                .any(|p| p == name)),
            "no scenario exercises {name}"
        );
    }
}

/// Bad LLM runs through the whole loop — controller, stages, status — on the llm scenario:
/// each ends Escalated before anything is tested or deployed, with the reason in status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_llm_runs_end_escalated_before_ci_with_the_reason_in_status() {
    let scripts: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string("tests/fixtures/llm/scripts.json").unwrap()).unwrap();
    for (name, reason) in [
        ("bad-privileged", "security context"),
        ("bad-injection-logs", "ServiceAccount"),
        ("bad-secret-read", "read a Secret"),
        ("bad-wrong-namespace", "may only act in"),
        ("bad-refusal", "refused"),
        ("bad-endless-tool-calls", "iteration budget"),
    ] {
        let script = scripts.iter().find(|s| s["name"] == name).unwrap();
        let mut scenario = Scenario::built_in("llm").unwrap();
        scenario.llm.as_mut().unwrap().turns = script["turns"].as_array().unwrap().clone();
        scenario.expect.phase = Phase::Escalated;
        let (outcome, text) = play(scenario, false).await;
        assert_eq!(outcome.phase(), Some(Phase::Escalated), "{name}: {text}");
        let status = outcome.remediation.status.as_ref().unwrap();
        let message = status.message.as_deref().unwrap_or_default();
        assert!(message.contains(reason), "{name}: status says {message:?}");
        assert!(status.proposal.is_none() && status.ci.is_none() && status.deploy.is_none(), "{name}: {status:?}");
        assert!(!status.steps.iter().any(|r| matches!(r.step, Step::Test | Step::Deploy)), "{name}");
        assert_eq!(outcome.template_after, outcome.template_before, "{name}: nothing changed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hpa_saturation_scenario_raises_max_replicas_within_bounds() {
    let (outcome, text) = play(Scenario::built_in("hpa-saturation").unwrap(), false).await;
    assert_eq!(outcome.phase(), Some(Phase::Succeeded), "{text}");
    // maxReplicas 4 at 150% of target wants 4 × 1.5 / 0.8 = 7.5 → 8, within 2x and 50.
    let status = outcome.remediation.status.as_ref().unwrap();
    assert_eq!(status.proposal.as_ref().unwrap().patch.0, serde_json::json!({"spec": {"maxReplicas": 8}}));
    // The Deployment's replicas are the HPA's: untouched.
    assert_eq!(outcome.template_after, outcome.template_before);
    for expected in ["read      saturation: 1.5", "spec.maxReplicas: 4 → 8", "sample    0.75 ✓", "verdict   Passed"]
    {
        assert!(text.contains(expected), "timeline shows {expected:?}:\n{text}");
    }
}

/// In production the fix waits for a person: a forged approval (mallory naming alice) is
/// refused by the shipped admission policy, alice approves as herself through the plugin's
/// path, and the change deploys as the production deployer and is verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_production_scenario_waits_for_a_real_approval_and_deploys_as_the_production_deployer() {
    let (outcome, text) = play(Scenario::built_in("production").unwrap(), false).await;
    assert!(outcome.as_expected(), "{text}");
    assert!(text.contains("AwaitingApproval production, trust auto"), "{text}");
    assert!(
        text.contains("forged      mallory creates an approval naming alice: refused (403)")
            && text.contains("ValidatingAdmissionPolicy 'reflex-approver-is-requester'"),
        "{text}"
    );
    assert!(text.contains("approved    alice (kubectl reflex approve"), "{text}");
    assert!(text.contains("deployed  as system:serviceaccount:reflex-system:reflex-deployer-production"), "{text}");
    let approval = outcome.remediation.status.unwrap().approval.unwrap();
    assert_eq!(approval.approver, "alice");
    assert_eq!(outcome.memory_after, "250Mi");
}

/// The operator's own identity in the demo's RBAC table (the one the tests and the demo run
/// the loop under) writes no workload, no ConfigMap and none of the objects people decide
/// with — an approval, a policy, a playbook — so it cannot approve its own change; it may
/// create Remediations and write the status of Reflex's objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_own_identity_cannot_approve_or_change_what_people_decide() {
    use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
    use kube::discovery::ApiResource;
    reflex::install_crypto_provider();
    let rbac = reflex::sandbox::rbac::Table::from_yaml(reflex::demo::DEMO_RBAC).unwrap();
    let sandbox =
        reflex::sandbox::Sandbox::start(reflex::sandbox::Config { rbac, ..Default::default() }).await.unwrap();
    sandbox.install_crds().unwrap();
    let admin = sandbox.client(reflex::sandbox::ADMIN_TOKEN).await.unwrap();
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(admin);
    ns.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({"metadata": {"name": "shop"}})).unwrap(),
    )
    .await
    .unwrap();
    let operator = sandbox.client("reflex-demo-operator").await.unwrap();
    let resource = |group: &str, version: &str, kind: &str, plural: &str| ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() { version.into() } else { format!("{group}/{version}") },
        kind: kind.into(),
        plural: plural.into(),
    };
    let refused = [
        (
            resource("reflex.dev", "v1alpha1", "RemediationApproval", "remediationapprovals"),
            serde_json::json!({"spec": {"remediationRef": {"name": "r", "uid": "u"}, "decision": "approve",
                "approver": "system:serviceaccount:reflex-system:reflex", "proposalDigest": format!("sha256:{}", "0".repeat(64))}}),
        ),
        (
            resource("reflex.dev", "v1alpha1", "RemediationPolicy", "remediationpolicies"),
            serde_json::json!({"spec": {}}),
        ),
        (resource("reflex.dev", "v1alpha1", "Playbook", "playbooks"), serde_json::json!({"spec": {}})),
        (resource("", "v1", "ConfigMap", "configmaps"), serde_json::json!({"data": {"k": "v"}})),
        (resource("apps", "v1", "Deployment", "deployments"), serde_json::json!({"spec": {}})),
    ];
    for (ar, body) in refused {
        let api: Api<DynamicObject> = Api::namespaced_with(operator.clone(), "shop", &ar);
        let mut object = serde_json::json!({"apiVersion": ar.api_version, "kind": ar.kind, "metadata": {"name": "x"}});
        object.as_object_mut().unwrap().extend(body.as_object().unwrap().clone());
        let created = api.create(&PostParams::default(), &serde_json::from_value(object).unwrap()).await;
        match created {
            Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{}: {e:?}", ar.kind),
            other => panic!("the operator created a {}: {other:?}", ar.kind),
        }
        let patched = api
            .patch("x", &PatchParams::default(), &Patch::Merge(serde_json::json!({"metadata": {"labels": {"a": "b"}}})))
            .await;
        assert!(matches!(patched, Err(kube::Error::Api(ref e)) if e.code == 403), "{}: {patched:?}", ar.kind);
    }
}

/// The OOM fix on a GitOps-run cluster: a pull request (checks passed) merged into the
/// repository, applied by the GitOps controller stand-in, then verified — and the repository's
/// line changed, its comment kept.
#[tokio::test]
async fn the_gitops_scenario_merges_a_pull_request_then_verifies_the_fix() {
    let (outcome, text) = play(Scenario::built_in("gitops").unwrap(), false).await;
    assert_eq!(outcome.phase(), Some(Phase::Succeeded), "{text}");
    assert_eq!((outcome.memory_before.as_str(), outcome.memory_after.as_str()), ("128Mi", "250Mi"), "{text}");
    let status = outcome.remediation.status.as_ref().unwrap();
    let pr = status.ci.as_ref().unwrap().pull_request.as_ref().unwrap();
    assert_eq!((pr.number, pr.file.as_str()), (1, "apps/checkout.yaml"));
    let merged = status.deploy.as_ref().unwrap().pull_request.as_ref().unwrap();
    assert!(merged.merge_commit.is_some(), "{text}");
    assert!(text.contains("  pr        #1 ") && text.contains("  merged    #1 as "), "{text}");
    assert!(text.contains("    +            limits: {memory: 250Mi}      # set at launch\n"), "{text}");
}

/// CPUThrottlingHigh names only a Pod: followed to its Deployment (the policy names kinds, not a
/// name), the CPU limit raised by half again, throttling verified below the alert's threshold.
#[tokio::test]
async fn the_cpu_throttling_scenario_follows_the_pod_to_its_deployment_and_raises_its_cpu() {
    let (outcome, text) = play(Scenario::built_in("cpu-throttling").unwrap(), false).await;
    assert_eq!(outcome.phase(), Some(Phase::Succeeded), "{text}");
    let rem = &outcome.remediation;
    assert_eq!(
        (rem.spec.target.kind, rem.spec.target.name.as_str()),
        (reflex::api::TargetKind::Deployment, "checkout")
    );
    assert!(rem.spec.alert.labels["pod"].starts_with("checkout-"), "the alert named a Pod");
    assert_eq!(outcome.template_after["spec"]["containers"][0]["resources"]["limits"]["cpu"], "750m", "{text}");
    assert!(text.contains("read      throttling: 0.375") && text.contains("sample    0.0625 ✓"), "{text}");
}

/// The pack's KubePodCrashLooping policy: the alert names only a Pod, followed to its
/// Deployment; the memory limit is raised and the OOM kills stop.
#[tokio::test]
async fn the_crashloop_scenario_follows_the_pod_and_raises_the_memory_limit() {
    let (outcome, text) = play(Scenario::built_in("crashloop").unwrap(), false).await;
    assert_eq!(outcome.phase(), Some(Phase::Succeeded), "{text}");
    let rem = &outcome.remediation;
    assert_eq!(
        (rem.spec.target.kind, rem.spec.target.name.as_str()),
        (reflex::api::TargetKind::Deployment, "checkout")
    );
    assert_eq!(rem.metadata.name.as_deref(), Some("kube-pod-crashlooping-oom-deploy.checkout-1"));
    assert!(rem.spec.alert.annotations["description"].contains(&rem.spec.alert.labels["pod"]));
    assert_eq!((outcome.memory_before.as_str(), outcome.memory_after.as_str()), ("128Mi", "250Mi"), "{text}");
}

/// The pack's KubeHpaMaxedOut policy: the HPA named by its kube-state-metrics label, its
/// maxReplicas raised, the metric back under target.
#[tokio::test]
async fn the_hpa_maxed_out_scenario_resolves_the_hpa_from_its_label() {
    let (outcome, text) = play(Scenario::built_in("hpa-maxed-out").unwrap(), false).await;
    assert_eq!(outcome.phase(), Some(Phase::Succeeded), "{text}");
    let rem = &outcome.remediation;
    assert_eq!(
        (rem.spec.target.kind, rem.spec.target.name.as_str()),
        (reflex::api::TargetKind::HorizontalPodAutoscaler, "checkout")
    );
    assert!(text.contains("with maxReplicas=8"), "{text}");
}

/// The pack's new-revision KubePodCrashLooping policy: the crashing Pod of the new release is
/// followed to its Deployment; the playbook applies (a revision within the hour, no OOM kill)
/// and returns the container to the previous revision's image.
#[tokio::test]
async fn the_crashloop_new_revision_scenario_rolls_back_to_the_previous_image() {
    let (outcome, text) = play(Scenario::built_in("crashloop-new-revision").unwrap(), false).await;
    assert_eq!(outcome.phase(), Some(Phase::Succeeded), "{text}");
    let rem = &outcome.remediation;
    assert!(rem.spec.alert.labels["pod"].starts_with("checkout-"), "{:?}", rem.spec.alert.labels);
    assert!(text.contains("last state Error"), "the crash is not an OOM kill: {text}");
    assert!(text.contains("read      not-oom-killed: 1"), "{text}");
    assert!(
        text.contains("checkout:1.5.0 → registry.example.com/shop/checkout:1.4.2"),
        "the previous revision's image: {text}"
    );
}

/// The pack's KubeDeploymentRolloutStuck policy: the alert names no container, and the
/// Deployment's only one is rolled back.
#[tokio::test]
async fn the_rollout_stuck_scenario_rolls_back_the_only_container() {
    let (outcome, text) = play(Scenario::built_in("rollout-stuck").unwrap(), false).await;
    assert_eq!(outcome.phase(), Some(Phase::Succeeded), "{text}");
    assert!(!outcome.remediation.spec.alert.labels.contains_key("container"));
    assert!(text.contains("with image=registry.example.com/shop/checkout:1.4.2"), "{text}");
}

/// The pack's KubeJobFailed policy only diagnoses: the findings go to people, nothing is
/// proposed, the Job is untouched.
#[tokio::test]
async fn the_job_failed_scenario_reports_its_findings_and_proposes_nothing() {
    let (outcome, text) = play(Scenario::built_in("job-failed").unwrap(), false).await;
    assert_eq!(outcome.phase(), Some(Phase::Escalated), "{text}");
    let status = outcome.remediation.status.clone().unwrap();
    let message = status.message.unwrap_or_default();
    assert!(message.contains("Failed=True (BackoffLimitExceeded") && message.contains("failed-pods: 2"), "{message}");
    assert!(status.proposal.is_none() && status.deploy.is_none(), "{text}");
}

/// The a2a scenario: the agent is found from its Service's annotation alone, the diagnosis is
/// the agent's (on the timeline), and the loop closes on the playbook's proposal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_a2a_scenario_delegates_the_diagnosis_to_a_discovered_agent() {
    let (outcome, text) = play(Scenario::built_in("a2a").unwrap(), false).await;
    assert_eq!(outcome.phase(), Some(Phase::Succeeded), "{text}");
    assert!(text.contains("discovered  A2A agent shop/oom-expert"), "{text}");
    assert!(text.contains("delegated the diagnosis over A2A to agent shop/oom-expert (skill diagnose-oom)"), "{text}");
    let diagnosis = outcome.remediation.status.clone().unwrap().diagnosis.unwrap();
    assert!(diagnosis.findings[0].detail.starts_with("working set 200Mi is over the 128Mi memory limit"));
    assert!(diagnosis.findings[0].source.starts_with("a2a shop/oom-expert (diagnose-oom)"));
}
