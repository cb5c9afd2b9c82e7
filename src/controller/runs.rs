//! In-flight effects. An effect runs as its own task so a slow stage (an LLM, a CI Job)
//! never blocks reconciles, and can be cancelled at once when the run is cancelled. When
//! it finishes, its result waits here and the Remediation is re-queued; the next reconcile
//! records the result in status. Only reconciles write status, so writes never race.
//!
//! Contract: at most one effect per Remediation. A result lost to a crash is recovered by
//! the machine, which resumes the effect recorded as started under the same key.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use futures::channel::mpsc::UnboundedSender;
use kube::runtime::reflector::ObjectRef;
use tokio_util::sync::CancellationToken;

use super::stages::{EffectKey, StageError, StageFuture, StageOutput};
use crate::api::{ErrorCategory, Remediation};

/// A finished effect and its outcome.
pub type Finished = (EffectKey, Result<StageOutput, StageError>);

struct Run {
    key: EffectKey,
    cancel: CancellationToken,
    result: Option<Result<StageOutput, StageError>>,
}

/// The registry of effects started by this process.
#[derive(Clone)]
pub struct Runs {
    inner: Arc<Mutex<HashMap<String, Run>>>,
    requeue: UnboundedSender<ObjectRef<Remediation>>,
}

impl Runs {
    /// A registry that re-queues a Remediation through `requeue` when its effect finishes.
    pub fn new(requeue: UnboundedSender<ObjectRef<Remediation>>) -> Self {
        Self { inner: Arc::default(), requeue }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Run>> {
        // A panic while holding this lock cannot leave the map inconsistent (every
        // critical section is a single insert/remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The effect running for `uid`, if one has not finished.
    pub fn running(&self, uid: &str) -> Option<EffectKey> {
        self.lock().get(uid).filter(|r| r.result.is_none()).map(|r| r.key.clone())
    }

    /// The finished effect of `uid`, if any; it stays here until [`Runs::clear_finished`]
    /// so a failed status write does not lose it.
    pub fn finished(&self, uid: &str) -> Option<(EffectKey, Result<StageOutput, StageError>)> {
        self.lock().get(uid).and_then(|r| r.result.clone().map(|res| (r.key.clone(), res)))
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
            map.insert(key.uid.clone(), Run { key: key.clone(), cancel: cancel.clone(), result: None });
        }
        let this = self.clone();
        tokio::spawn(async move {
            let result = tokio::select! {
                r = effect => r,
                () = cancel.cancelled() => Err(StageError::new(ErrorCategory::Transient, "cancelled")),
            };
            if let Some(run) = this.lock().get_mut(&key.uid).filter(|r| r.key == key) {
                run.result = Some(result);
            }
            // The controller may be shutting down; then nobody needs the nudge.
            let _ = this.requeue.unbounded_send(obj);
        });
        true
    }

    /// Cancels and forgets the effect of `uid`. Returns whether one was running.
    pub fn cancel(&self, uid: &str) -> bool {
        match self.lock().remove(uid) {
            Some(run) => {
                run.cancel.cancel();
                run.result.is_none()
            }
            None => false,
        }
    }

    /// Cancels every effect (operator shutdown).
    pub fn cancel_all(&self) {
        for (_, run) in self.lock().drain() {
            run.cancel.cancel();
        }
    }
}
