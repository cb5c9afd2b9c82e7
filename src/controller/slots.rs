//! The deploy slots this process has let through, held under one lock from counting to
//! deciding so two reconciles cannot both take the last one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::ResourceExt;

use super::limits::{DeploySlot, Peer, deploys_at_cap};
use super::plan::Plan;
use super::reconcile::Context;
use crate::api::Remediation;
use crate::api::remediation::Step;

/// Deploy slots this process let through that its cache may not show taken yet, by
/// `namespace/name`, each for at most [`DeploySlots::HOLD`]. The reconciler holds the lock
/// from counting the slots to deciding ([`Taken`]), so two reconciles at once cannot both
/// take the last one.
#[derive(Default)]
pub struct DeploySlots(Mutex<HashMap<String, std::time::Instant>>);

/// The slots, locked for one decision.
pub(super) struct Taken<'a>(std::sync::MutexGuard<'a, HashMap<String, std::time::Instant>>);

impl DeploySlots {
    /// Longer than the cache ever trails the status write that records the snapshot.
    const HOLD: Duration = Duration::from_secs(60);

    pub(super) fn lock(&self) -> Taken<'_> {
        let mut slots = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        slots.retain(|_, at| at.elapsed() < Self::HOLD);
        Taken(slots)
    }
}

impl Taken<'_> {
    /// How many deploy slots are taken ahead of `rem` when that reaches the cap (None when
    /// it holds one already, or under the cap).
    pub(super) fn at_cap(&self, ctx: &Context, rem: &Remediation) -> Option<u32> {
        let cap = ctx.max_concurrent_deploys?;
        let me = Peer::of(rem)?;
        if me.deploy == DeploySlot::Holding {
            return None;
        }
        // Judged as if it waited already: one decision may take it from the gate into deploy.
        let me = Peer { deploy: DeploySlot::Waiting, ..me };
        let peers: Vec<Peer> = ctx.remediations.state().iter().filter_map(|r| Peer::of(r)).collect();
        let reserved: Vec<String> = self.0.keys().cloned().collect();
        deploys_at_cap(&me, &peers, &reserved, cap)
    }

    /// Records what the decision did: a Remediation starting its snapshot, or its deploy
    /// again after deferring, takes its slot.
    pub(super) fn settle(mut self, rem: &Remediation, plan: &Plan) {
        let key = format!("{}/{}", rem.namespace().unwrap_or_default(), rem.name_any());
        if plan.start.is_some_and(|(step, _)| matches!(step, Step::Snapshot | Step::Deploy)) {
            self.0.insert(key, std::time::Instant::now());
        } else {
            self.0.remove(&key);
        }
    }
}
