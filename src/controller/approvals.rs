//! The approvals controller: writes each `RemediationApproval`'s own status — whether its
//! decision counts for the Remediation it names, and why not — and records an Event on it.
//!
//! Contract: the decision itself is the Remediation reconciler's (it counts approvals with
//! `api::approval::tally`); this controller only reports, on the approval, the same
//! `api::approval::verdict` the tally applies: a Remediation that does not exist, another
//! uid, another proposal, or after the approval deadline. It writes only the approval's
//! status (server-side apply, field manager `reflex-status`) and Events.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Client, Resource, ResourceExt};
use tracing::warn;

use crate::api::approval::{RemediationApproval, RemediationApprovalStatus, Verdict, verdict};
use crate::api::conditions::{self, ConditionType, Desired};
use crate::api::validate::ValidPolicy;
use crate::api::{Remediation, RemediationPolicy, STATUS_MANAGER};

/// The status `approval` should have given `verdict`, or `None` when it already has it
/// (timestamps aside). Pure.
pub fn desired_status(
    approval: &RemediationApproval,
    verdict: &Verdict,
    remediation_uid: Option<&str>,
    now: Timestamp,
) -> Option<RemediationApprovalStatus> {
    let mut status = approval.status.clone().unwrap_or_default();
    let desired = if verdict.counted {
        Desired::yes(ConditionType::Ready, verdict.reason, verdict.message.clone())
    } else {
        Desired::no(ConditionType::Ready, verdict.reason, verdict.message.clone())
    };
    let mut changed = conditions::merge(&mut status.conditions, &desired, approval.metadata.generation, now);
    let uid = verdict.counted.then(|| remediation_uid.unwrap_or_default().to_owned());
    if status.remediation_uid != uid {
        status.remediation_uid = uid;
        changed = true;
    }
    changed.then_some(status)
}

struct Context {
    client: Client,
    recorder: Recorder,
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("approval {0} has no namespace")]
    NoNamespace(String),
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
}

/// Runs the approvals controller until `shutdown` completes.
pub async fn run(client: Client, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let reporter = Reporter { controller: "reflex-approvals".into(), instance: std::env::var("POD_NAME").ok() };
    let ctx = Arc::new(Context { client: client.clone(), recorder: Recorder::new(client.clone(), reporter) });
    let controller = Controller::new(Api::<RemediationApproval>::all(client.clone()), watcher::Config::default());
    let index = controller.store();
    controller
        // A Remediation's new proposal (or a new Remediation under an old name) changes what
        // its approvals count for.
        .watches(Api::<Remediation>::all(client), watcher::Config::default(), move |rem| {
            let (namespace, name) = (rem.namespace(), rem.name_any());
            index
                .state()
                .into_iter()
                .filter(|a| a.namespace() == namespace && a.spec.remediation_ref.name == name)
                .map(|a| ObjectRef::from_obj(&*a))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            if let Err(e) = result {
                warn!(error = %e, "approvals controller");
            }
            futures::future::ready(())
        })
        .await;
}

async fn reconcile(approval: Arc<RemediationApproval>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = approval.name_any();
    let namespace = approval.namespace().ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let api_err = |what: String| move |source| Error::Api { what, source };
    let rem = Api::<Remediation>::namespaced(ctx.client.clone(), &namespace)
        .get_opt(&approval.spec.remediation_ref.name)
        .await
        .map_err(api_err(format!("reading Remediation {namespace}/{}", approval.spec.remediation_ref.name)))?;
    let timeout = match &rem {
        Some(rem) => Api::<RemediationPolicy>::namespaced(ctx.client.clone(), &namespace)
            .get_opt(&rem.spec.policy_ref.name)
            .await
            .map_err(api_err(format!("reading policy {namespace}/{}", rem.spec.policy_ref.name)))?
            .and_then(|p| ValidPolicy::from_spec(&p.spec).ok())
            .and_then(|p| p.trust.approval_timeout),
        None => None,
    };
    let deadline = rem.as_ref().and_then(|r| r.status.as_ref()).and_then(|s| s.approval_deadline(timeout));
    let verdict = verdict(&approval, rem.as_ref(), deadline);
    let uid = rem.as_ref().and_then(|r| r.metadata.uid.as_deref());
    let Some(status) = desired_status(&approval, &verdict, uid, Timestamp::now()) else {
        return Ok(Action::await_change());
    };
    let body = serde_json::json!({
        "apiVersion": "reflex.dev/v1alpha1", "kind": "RemediationApproval",
        "metadata": {"name": name}, "status": status,
    });
    Api::<RemediationApproval>::namespaced(ctx.client.clone(), &namespace)
        .patch_status(&name, &PatchParams::apply(STATUS_MANAGER).force(), &Patch::Apply(body))
        .await
        .map_err(api_err(format!("writing the status of approval {namespace}/{name}")))?;
    let event = Event {
        type_: if verdict.counted { EventType::Normal } else { EventType::Warning },
        reason: verdict.reason.to_owned(),
        note: Some(verdict.message.clone()),
        action: "Judge".to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &approval.object_ref(&())).await {
        warn!(approval = %name, error = %e, "could not publish event");
    }
    Ok(Action::await_change())
}

fn error_policy(_approval: Arc<RemediationApproval>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(error = %error, "approval reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::approval::reason;

    fn approval() -> RemediationApproval {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "reflex.dev/v1alpha1", "kind": "RemediationApproval",
            "metadata": {"name": "a1", "namespace": "shop", "generation": 1},
            "spec": {"remediationRef": {"name": "r", "uid": "u-1"}, "decision": "approve", "approver": "alice", "proposalDigest": "sha256:x"}
        }))
        .unwrap()
    }

    #[test]
    fn an_approval_says_why_it_does_not_count_and_is_written_only_on_change() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let ignored = Verdict { counted: false, reason: reason::OTHER_PROPOSAL, message: "approves another".into() };
        let mut a = approval();
        let status = desired_status(&a, &ignored, Some("u-1"), now).expect("first write");
        let ready = conditions::find(&status.conditions, ConditionType::Ready).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "OtherProposal"));
        assert_eq!(status.remediation_uid, None, "not applied to any Remediation");
        a.status = Some(status);
        assert_eq!(desired_status(&a, &ignored, Some("u-1"), now), None, "nothing new: no write");
        let counted = Verdict { counted: true, reason: reason::COUNTED, message: "counts".into() };
        let status = desired_status(&a, &counted, Some("u-1"), now).expect("flipped");
        assert_eq!(status.remediation_uid.as_deref(), Some("u-1"));
    }
}
