//! In-flight effects. An effect runs as its own task so a slow stage (an LLM, a CI Job)
//! never blocks reconciles, and can be cancelled at once when the Remediation is cancelled. When
//! it finishes, its result waits here and the Remediation is re-queued; the next reconcile
//! records the result in status. Only reconciles write status, so writes never race.
//!
//! Contract: at most one effect per Remediation. A result lost to a crash is recovered by
//! the machine, which resumes the effect recorded as started under the same key.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use futures::FutureExt;
use futures::channel::mpsc::UnboundedSender;
use kube::runtime::reflector::ObjectRef;
use tokio_util::sync::CancellationToken;

use crate::api::{ErrorCategory, Remediation};
use crate::ports::{EffectKey, StageError, StageFuture, StageOutput};

/// A finished effect and its outcome.
pub type Finished = (EffectKey, Result<StageOutput, StageError>);

struct InFlight {
    key: EffectKey,
    cancel: CancellationToken,
    result: Option<Result<StageOutput, StageError>>,
}

/// The registry of effects started by this process.
#[derive(Clone)]
pub struct Effects {
    inner: Arc<Mutex<HashMap<String, InFlight>>>,
    requeue: UnboundedSender<ObjectRef<Remediation>>,
}

impl Effects {
    /// A registry that re-queues a Remediation through `requeue` when its effect finishes.
    pub fn new(requeue: UnboundedSender<ObjectRef<Remediation>>) -> Self {
        Self { inner: Arc::default(), requeue }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, InFlight>> {
        // A panic while holding this lock cannot leave the map inconsistent (every
        // critical section is a single insert/remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Running and finished effect of `uid`, read together: an effect that finishes between
    /// two separate reads would otherwise look like neither, i.e. orphaned, and be resumed.
    pub fn state(&self, uid: &str) -> (Option<EffectKey>, Option<Finished>) {
        let map = self.lock();
        match map.get(uid) {
            Some(r) => match &r.result {
                None => (Some(r.key.clone()), None),
                Some(res) => (None, Some((r.key.clone(), res.clone()))),
            },
            None => (None, None),
        }
    }

    /// Forgets the finished effect `key` once its outcome is recorded in status.
    pub fn clear_finished(&self, key: &EffectKey) {
        let mut map = self.lock();
        if map.get(&key.uid).is_some_and(|r| r.key == *key && r.result.is_some()) {
            map.remove(&key.uid);
        }
    }

    /// Starts `effect` for `key`, replacing nothing: returns false if one is already running.
    pub fn spawn(
        &self,
        key: EffectKey,
        obj: ObjectRef<Remediation>,
        cancel: CancellationToken,
        effect: StageFuture<StageOutput>,
    ) -> bool {
        {
            let mut map = self.lock();
            if map.get(&key.uid).is_some_and(|r| r.result.is_none()) {
                return false;
            }
            map.insert(key.uid.clone(), InFlight { key: key.clone(), cancel: cancel.clone(), result: None });
        }
        let this = self.clone();
        tokio::spawn(async move {
            // A stage that panics is a failed step with the panic's message, never an effect
            // that runs for ever (its result would never come).
            let effect =
                std::panic::AssertUnwindSafe(effect).catch_unwind().map(|r| r.unwrap_or_else(|p| Err(panicked(&*p))));
            let result = tokio::select! {
                r = effect => r,
                () = cancel.cancelled() => Err(StageError::new(ErrorCategory::Transient, "cancelled")),
            };
            if let Some(effect) = this.lock().get_mut(&key.uid).filter(|r| r.key == key) {
                effect.result = Some(result);
            }
            // The controller may be shutting down; then nobody needs the nudge.
            let _ = this.requeue.unbounded_send(obj);
        });
        true
    }

    /// Cancels and forgets the effect of `uid`. Returns whether one was running.
    pub fn cancel(&self, uid: &str) -> bool {
        match self.lock().remove(uid) {
            Some(effect) => {
                effect.cancel.cancel();
                effect.result.is_none()
            }
            None => false,
        }
    }

    /// Cancels every effect (operator shutdown).
    pub fn cancel_all(&self) {
        for (_, effect) in self.lock().drain() {
            effect.cancel.cancel();
        }
    }
}

/// The failure a panicking stage is recorded as: a bug for a human to look at.
pub(super) fn panicked(payload: &(dyn std::any::Any + Send)) -> StageError {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    let what: String = what.chars().take(500).collect();
    StageError::new(ErrorCategory::NeedsHuman, format!("the stage panicked (a bug in Reflex): {what}"))
}
