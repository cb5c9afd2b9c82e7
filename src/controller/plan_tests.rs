//! Tests of the reconciler's pure core: what one reconcile records, runs and announces.

use k8s_openapi::jiff::Timestamp;
use kube::api::ObjectMeta;

use super::*;
use crate::api::conditions::find;
use crate::api::remediation::{AlertRef, Diagnosis, RemediationSpec, TargetRef};
use crate::api::{LocalObjectRef, TargetKind};
use crate::controller::machine::{PolicyView, Settings, StageSet};

fn now(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).unwrap()
}

fn mk_remediation() -> Remediation {
    let mut rem = Remediation::new(
        "r1",
        RemediationSpec {
            policy_ref: LocalObjectRef { name: "p".into() },
            alert: AlertRef {
                name: "A".into(),
                fingerprint: "f".into(),
                labels: Default::default(),
                annotations: Default::default(),
                starts_at: Time(now(0)),
                generator_url: None,
            },
            target: TargetRef { api_version: "apps/v1".into(), kind: TargetKind::Deployment, name: "checkout".into() },
            cancel: false,
        },
    );
    rem.metadata = ObjectMeta {
        name: Some("r1".into()),
        namespace: Some("shop".into()),
        uid: Some("0b7c2b9e-6f1a-4a59-9b3e-3f2d7c1a8e45".into()),
        generation: Some(1),
        ..Default::default()
    };
    rem
}

fn obs(stages: StageSet, at: i64) -> Observations {
    Observations {
        now: now(at),
        policy: PolicyView::Valid(Settings::default()),
        stages,
        running: None,
        halt: None,
        deploys_at_cap: None,
        ineffective: None,
    }
}

fn apply(rem: &mut Remediation, plan: &Plan) {
    rem.status = Some(plan.status.clone());
}

#[test]
fn a_new_remediation_starts_and_records_its_first_effect_before_running_it() {
    let rem = mk_remediation();
    let plan = plan(&rem, None, None, &obs(StageSet::ALL, 1));
    assert_eq!(plan.status.phase, Phase::Diagnosing);
    assert_eq!(plan.start, Some((Step::Diagnose, 1)));
    let rec = plan.status.last_step(Step::Diagnose).unwrap();
    assert_eq!((rec.attempt, rec.state), (1, StepState::Started), "recorded before it runs");
    assert_eq!(plan.transitions.len(), 1, "one Event for Pending -> Diagnosing");
    assert_eq!(plan.status.trace_id.as_deref(), Some("0b7c2b9e6f1a4a599b3e3f2d7c1a8e45"));
    assert_eq!(find(&plan.status.conditions, ConditionType::Progressing).unwrap().status, "True");
}

#[test]
fn a_missing_stage_stalls_with_a_condition_naming_it_and_no_fake_effect() {
    let rem = mk_remediation();
    let plan = plan(&rem, None, None, &obs(StageSet::ALL.without(Step::Diagnose), 1));
    assert_eq!(plan.start, None, "nothing runs without the stage");
    let stalled = find(&plan.status.conditions, ConditionType::Stalled).unwrap();
    assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", reason::STAGE_UNAVAILABLE));
    assert!(stalled.message.contains("diagnose stage is not available"), "{}", stalled.message);
    assert_eq!(find(&plan.status.conditions, ConditionType::Progressing).unwrap().status, "False");
    assert!(plan.status.steps.is_empty(), "no effect is recorded as started");
}

#[test]
fn a_finished_effect_is_recorded_and_the_next_one_started_in_the_same_reconcile() {
    let mut rem = mk_remediation();
    let first = plan(&rem, None, None, &obs(StageSet::ALL, 1));
    apply(&mut rem, &first);
    let key = EffectKey { uid: rem.metadata.uid.clone().unwrap(), step: Step::Diagnose, attempt: 1 };
    let output = StageOutput::Diagnosis(Diagnosis { summary: "working set above limit".into(), findings: vec![] });
    let second = plan(&rem, Some((key, Ok(output))), None, &obs(StageSet::ALL, 2));
    assert_eq!(second.status.last_step(Step::Diagnose).unwrap().state, StepState::Succeeded);
    assert_eq!(second.status.diagnosis.as_ref().unwrap().summary, "working set above limit");
    assert_eq!(second.start, Some((Step::Propose, 1)));
}

#[test]
fn a_stale_result_for_another_attempt_is_ignored() {
    let mut rem = mk_remediation();
    let first = plan(&rem, None, None, &obs(StageSet::ALL, 1));
    apply(&mut rem, &first);
    let stale = EffectKey { uid: "x".into(), step: Step::Diagnose, attempt: 7 };
    let output = StageOutput::Diagnosis(Diagnosis { summary: "stale".into(), findings: vec![] });
    let second = plan(&rem, Some((stale, Ok(output))), None, &obs(StageSet::ALL, 2));
    assert!(second.status.diagnosis.is_none());
    assert_eq!(second.start, Some((Step::Diagnose, 1)), "the recorded effect is resumed, not duplicated");
    assert_eq!(second.status.steps.len(), 1);
}

#[test]
fn reconciling_twice_without_news_changes_nothing() {
    let mut rem = mk_remediation();
    let first = plan(&rem, None, None, &obs(StageSet::NONE, 1));
    apply(&mut rem, &first);
    let second = plan(&rem, None, None, &obs(StageSet::NONE, 50));
    assert_eq!(Some(&second.status), rem.status.as_ref(), "an unchanged status is not rewritten");
    assert!(second.transitions.is_empty(), "no Event without a transition");
}

#[test]
fn cancelling_ends_the_remediation_and_stops_the_effect() {
    let mut rem = mk_remediation();
    let first = plan(&rem, None, None, &obs(StageSet::ALL, 1));
    apply(&mut rem, &first);
    rem.spec.cancel = true;
    let mut o = obs(StageSet::ALL, 2);
    o.running = Some((Step::Diagnose, 1));
    let p = plan(&rem, None, None, &o);
    assert_eq!(p.status.phase, Phase::Cancelled);
    assert!(p.cancel_running);
    assert!(p.status.finished_at.is_some());
    let ready = find(&p.status.conditions, ConditionType::Ready).unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", reason::CANCEL_REQUESTED));
}

#[test]
fn trace_ids_come_from_uids() {
    assert_eq!(trace_id("0b7c2b9e-6f1a-4a59-9b3e-3f2d7c1a8e45").as_deref(), Some("0b7c2b9e6f1a4a599b3e3f2d7c1a8e45"));
    assert_eq!(trace_id("not-a-uuid"), None);
    assert_eq!(trace_id("00000000-0000-0000-0000-000000000000"), None, "an all-zero trace id is invalid");
}

#[test]
fn only_an_applied_change_that_ended_has_an_outcome_for_trust() {
    use crate::api::remediation::DeployRecord;
    let mut rem = mk_remediation();
    let mut status =
        RemediationStatus { phase: Phase::Succeeded, finished_at: Some(Time(now(9))), ..Default::default() };
    assert_eq!(change_outcome(&rem, &status), None, "nothing was applied: nothing to count");
    status.deploy = Some(DeployRecord {
        previous: crate::api::AnyJson(serde_json::json!({})),
        previous_resource_version: "1".into(),
        applied_digest: Some("sha256:x".into()),
        applied_revision: None,
        identity: None,
        field_manager: None,
        applied_at: Some(Time(now(5))),
        pull_request: None,
    });
    let verified = change_outcome(&rem, &status).unwrap();
    assert_eq!((verified.failure, verified.uid.as_str()), (None, "0b7c2b9e-6f1a-4a59-9b3e-3f2d7c1a8e45"));
    status.phase = Phase::RolledBack;
    assert!(change_outcome(&rem, &status).unwrap().failure.unwrap().starts_with("rolled back"));
    status.phase = Phase::Verifying;
    assert_eq!(change_outcome(&rem, &status), None, "not ended yet");
    rem.metadata.uid = None;
    status.phase = Phase::Succeeded;
    assert_eq!(change_outcome(&rem, &status), None);
}
