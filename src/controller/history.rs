//! The policies' per-target history, as the controller keeps it: each deployed fix's
//! outcome, re-alerts, and pauses ([`super::ineffective`] decides; this writes).
//!
//! Contract: [`record_fix`] enters a Remediation's deployed change once it ended;
//! [`before_start`] is asked before a Remediation starts: it marks the target's last fix
//! re-alerted when the alert came back soon after it, pauses the target when its fixes are
//! not working, and answers why the Remediation must not start (the pause in force, under the
//! policy's current generation). Writes go to `status.targets` under their own field manager,
//! guarded by the policy's resourceVersion (a stale view gets 409 and the reconcile is retried).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use super::ineffective::{of, pause_reason, paused, with_fix, with_pause, with_realert};
use super::reconcile::{Context, Error};
use crate::api::policy::{FixRecord, TargetHistory};
use crate::api::remediation::RemediationStatus;
use crate::api::validate::ValidPolicy;
use crate::api::{Remediation, RemediationPolicy};

/// Field manager of the policies' per-target history.
const HISTORY_MANAGER: &str = "reflex-history";

fn policy_of(ctx: &Context, rem: &Remediation) -> Option<std::sync::Arc<RemediationPolicy>> {
    let namespace = rem.namespace().unwrap_or_default();
    ctx.policies.get(&ObjectRef::new(&rem.spec.policy_ref.name).within(&namespace))
}

/// With `history`, the target paused when its fixes are not working (and not paused yet
/// under `generation`).
fn maybe_paused(
    history: Vec<TargetHistory>,
    rem: &Remediation,
    policy: &ValidPolicy,
    generation: i64,
    now: Time,
) -> Vec<TargetHistory> {
    let (kind, name) = (rem.spec.target.kind, rem.spec.target.name.as_str());
    if paused(&history, kind, name, generation).is_some() {
        return history;
    }
    let limits = &policy.limits;
    match of(&history, kind, name)
        .and_then(|t| pause_reason(t, limits.failed_fixes, limits.realerts, limits.realert_within))
    {
        Some(reason) => with_pause(&history, kind, name, reason, now, generation),
        None => history,
    }
}

/// Enters `rem`'s deployed change once it ended (`outcome` as the trust record reads it).
pub(super) async fn record_fix(
    ctx: &Context,
    rem: &Remediation,
    status: &RemediationStatus,
    outcome: Option<&crate::api::policy::ChangeOutcome>,
    policy: Option<&ValidPolicy>,
) -> Result<(), Error> {
    let (Some(outcome), Some(policy), Some(object)) = (outcome, policy, policy_of(ctx, rem)) else { return Ok(()) };
    let current = object.status.clone().unwrap_or_default().targets;
    let fix = FixRecord {
        remediation: outcome.remediation.clone(),
        uid: outcome.uid.clone(),
        playbook: status.proposal.as_ref().and_then(|p| p.playbook.clone()),
        verified: outcome.failure.is_none(),
        unproven: outcome.failure.is_some()
            && status.verification.as_ref().is_some_and(|v| {
                matches!(
                    v.verdict,
                    crate::api::remediation::VerificationVerdict::Inconclusive
                        | crate::api::remediation::VerificationVerdict::Error
                )
            }),
        outcome: outcome.failure.clone().unwrap_or_else(|| "verified".to_owned()),
        at: outcome.at.clone(),
        realerted_at: None,
    };
    let generation = object.metadata.generation.unwrap_or(0);
    let next = with_fix(&current, rem.spec.target.kind, &rem.spec.target.name, fix);
    let next = maybe_paused(next, rem, policy, generation, Time(ctx.clock.now()));
    if next == current {
        return Ok(());
    }
    write(ctx, &object, &next, &rem.name_any()).await
}

/// Before `rem` starts: notes a re-alert, pauses the target when its fixes are not working,
/// and returns why `rem` must not start (the pause in force), if it must not.
pub(super) async fn before_start(
    ctx: &Context,
    rem: &Remediation,
    policy: &ValidPolicy,
) -> Result<Option<String>, Error> {
    let Some(object) = policy_of(ctx, rem) else { return Ok(None) };
    let (kind, name) = (rem.spec.target.kind, rem.spec.target.name.as_str());
    let generation = object.metadata.generation.unwrap_or(0);
    let current = object.status.clone().unwrap_or_default().targets;
    let created = rem.metadata.creation_timestamp.clone().unwrap_or(Time(ctx.clock.now()));
    let next =
        with_realert(&current, kind, name, created, policy.limits.realert_within).unwrap_or_else(|| current.clone());
    let next = maybe_paused(next, rem, policy, generation, Time(ctx.clock.now()));
    if next != current {
        write(ctx, &object, &next, &rem.name_any()).await?;
    }
    Ok(paused(&next, kind, name, generation).map(|p| {
        format!(
            "policy {:?} stopped trying on {} {name:?} since {}: {}; edit the policy (a new playbook, say) to try again",
            rem.spec.policy_ref.name,
            kind.as_str(),
            p.since.0,
            p.reason
        )
    }))
}

async fn write(
    ctx: &Context,
    policy: &RemediationPolicy,
    targets: &[TargetHistory],
    remediation: &str,
) -> Result<(), Error> {
    super::trust::write_status(ctx, policy, HISTORY_MANAGER, "targets", serde_json::json!(targets), remediation).await
}
