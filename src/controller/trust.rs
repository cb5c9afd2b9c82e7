//! The policies' trust records, as the controller keeps them.
//!
//! Contract: a change enters its policy's record as *pending* before deploy writes it
//! ([`enter_pending`]); its outcome — a verified success, or a failure that resets the run —
//! replaces the entry when it ends ([`record_outcome`]). While a change is pending no
//! production change goes through on earned trust (the gate reads it), and a Remediation gone
//! with its change pending (deleted with its finalizer removed by hand, say) counts as a
//! failure the next time the record is written, once the API server confirms it is gone.
//! Every write is guarded by the policy's resourceVersion: a stale view gets 409 and the
//! reconcile is retried. Events on the policy when trust is earned or reset.

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tracing::warn;

use super::reconcile::{Context, Error, truncate};
use crate::api::policy::{ChangeOutcome, TrustRecord};
use crate::api::validate::ValidPolicy;
use crate::api::{Remediation, RemediationPolicy};

/// Field manager of the policies' trust records.
const TRUST_MANAGER: &str = "reflex-trust";

/// Enters `rem`'s change in its policy's record as pending, before deploy writes it; nothing
/// to do when it is there already or its outcome is known.
pub(super) async fn enter_pending(ctx: &Context, rem: &Remediation) -> Result<(), Error> {
    let namespace = rem.namespace().unwrap_or_default();
    let name = &rem.spec.policy_ref.name;
    let (Some(object), Some(uid)) = (ctx.policies.get(&ObjectRef::new(name).within(&namespace)), rem.uid()) else {
        return Ok(());
    };
    let current = object.status.clone().unwrap_or_default().trust;
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ctx.clock.now());
    let next = current.with_pending(&rem.name_any(), &uid, now);
    if next == current {
        return Ok(());
    }
    write(ctx, &object, &next, &rem.name_any()).await
}

/// Puts a deployed change's `outcome` into its policy's record, once, with the pending
/// changes whose Remediations are gone counted as failures.
pub(super) async fn record_outcome(
    ctx: &Context,
    rem: &Remediation,
    outcome: Option<ChangeOutcome>,
    policy: Option<&ValidPolicy>,
) -> Result<(), Error> {
    let (Some(outcome), Some(policy)) = (outcome, policy) else { return Ok(()) };
    let namespace = rem.namespace().unwrap_or_default();
    let name = &rem.spec.policy_ref.name;
    // Read fresh, not from the cache: the per-target history was just written to the same
    // object, and a stale resourceVersion would only buy a conflict and a retry.
    let Some(cached) = ctx.policies.get(&ObjectRef::new(name).within(&namespace)) else { return Ok(()) };
    let cached_trust = cached.status.clone().unwrap_or_default().trust;
    let pending_elsewhere = cached_trust.pending.iter().any(|p| p.uid != outcome.uid);
    if !cached_trust.takes(&outcome) && !cached_trust.pending.iter().any(|p| p.uid == outcome.uid) && !pending_elsewhere
    {
        // Already recorded (the common case for a finished Remediation reconciled again).
        return Ok(());
    }
    let fresh = Api::<RemediationPolicy>::namespaced(ctx.client.clone(), &namespace).get_opt(name).await;
    let Some(object) = fresh.map_err(|source| Error::RecordTrust {
        namespace: namespace.clone(),
        policy: name.clone(),
        remediation: outcome.remediation.clone(),
        source,
    })?
    else {
        return Ok(());
    };
    let current = object.status.clone().unwrap_or_default().trust;
    let (required, window, basis) = (policy.trust.successes_required, policy.trust.window, object.spec.trust_basis());
    let mut next = current.clone();
    for gone in gone_pending(ctx, &namespace, &current, &outcome.uid).await? {
        next = next.with(gone, required, window, &basis);
    }
    let failed = outcome.failure.is_some();
    let remediation = outcome.remediation.clone();
    next = next.with(outcome, required, window, &basis);
    if next == current {
        return Ok(());
    }
    write(ctx, &object, &next, &remediation).await?;
    let reset = next.last_reset != current.last_reset;
    let note = match (failed || reset, current.earned, next.earned) {
        (true, _, _) => Some((EventType::Warning, "TrustReset", next.last_reset_reason.clone().unwrap_or_default())),
        (false, false, true) => Some((
            EventType::Normal,
            "TrustEarned",
            format!(
                "{} verified successes in a row: production changes at trust auto deploy without a human",
                next.verified.len()
            ),
        )),
        _ => None,
    };
    if let Some((type_, reason, note)) = note {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(truncate(&note, 1000)),
            action: "Record".to_owned(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &object.object_ref(&())).await {
            warn!(policy = %name, error = %e, "could not publish event");
        }
    }
    Ok(())
}

/// The pending changes (besides `uid`'s) whose Remediations are gone — not in the cache, and
/// the API server confirms it (not found, or the name now belongs to another object) — as
/// failures.
async fn gone_pending(
    ctx: &Context,
    namespace: &str,
    record: &TrustRecord,
    uid: &str,
) -> Result<Vec<ChangeOutcome>, Error> {
    let cached: Vec<String> = ctx.remediations.state().iter().filter_map(|r| r.uid()).collect();
    let api = Api::<Remediation>::namespaced(ctx.client.clone(), namespace);
    let mut gone = Vec::new();
    for p in record.pending.iter().filter(|p| p.uid != uid && !cached.contains(&p.uid)) {
        let found = api.get_opt(&p.remediation).await.map_err(|source| Error::ReadRemediation {
            namespace: namespace.to_owned(),
            name: p.remediation.clone(),
            source,
        })?;
        if found.and_then(|r| r.uid()).as_deref() != Some(p.uid.as_str()) {
            gone.push(ChangeOutcome {
                remediation: p.remediation.clone(),
                uid: p.uid.clone(),
                failure: Some("gone before its change was verified; the change may still be applied".to_owned()),
                at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ctx.clock.now()),
            });
        }
    }
    Ok(gone)
}

async fn write(
    ctx: &Context,
    policy: &RemediationPolicy,
    record: &TrustRecord,
    remediation: &str,
) -> Result<(), Error> {
    write_status(ctx, policy, TRUST_MANAGER, "trust", serde_json::json!(record), remediation).await
}

/// Writes one field of `policy`'s status under `manager` (each part of the status its own
/// manager, so one write never drops another's field), guarded by the resourceVersion read.
pub(super) async fn write_status(
    ctx: &Context,
    policy: &RemediationPolicy,
    manager: &str,
    field: &str,
    value: serde_json::Value,
    remediation: &str,
) -> Result<(), Error> {
    let namespace = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let body = serde_json::json!({
        "apiVersion": "reflex.dev/v1alpha1", "kind": "RemediationPolicy",
        "metadata": {"name": name, "resourceVersion": policy.resource_version()},
        "status": {field: value},
    });
    Api::<RemediationPolicy>::namespaced(ctx.client.clone(), &namespace)
        .patch_status(&name, &PatchParams::apply(manager).force(), &Patch::Apply(body))
        .await
        .map(|_| ())
        .map_err(|source| Error::RecordTrust { namespace, policy: name, remediation: remediation.to_owned(), source })
}
