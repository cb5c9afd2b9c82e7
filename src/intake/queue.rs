//! Intake's bounded, keyed, coalescing work queue: what still has to be written to each
//! Remediation.
//!
//! Contract: work is keyed by Remediation (namespace, name). Work offered for a key that is
//! already waiting merges into it in arrival order (a thousand sightings of one incident
//! become one status write), so the queue's size is the number of distinct Remediations
//! with unwritten work, and that is what [`Queue::offer`] bounds: a batch that would exceed
//! the capacity is refused whole (the webhook answers 503 + Retry-After) and nothing of it
//! is queued. A key is handed to one worker at a time; work arriving while it is being
//! written waits and is handed out again when the worker is done, so writes to one
//! Remediation never race each other. Callers that need to know the outcome (a create, a
//! resolution) attach a waiter. [`Work::observation`] is the pure merge of queued work into
//! the Remediation's `status.alert`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::api::remediation::{AlertObservation, AlertState, RemediationSpec};

/// A Remediation: (namespace, name).
pub type Key = (String, String);

/// A Remediation to create.
#[derive(Clone, Debug, PartialEq)]
pub struct Creation {
    pub policy: String,
    pub target: String,
    pub spec: Box<RemediationSpec>,
}

/// One thing a delivery asks of a Remediation.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Create it (and count the sighting that caused it).
    Create { creation: Box<Creation>, at: Timestamp },
    /// The alert was seen (again).
    Seen { at: Timestamp },
    /// Alertmanager says the alert resolved at `at`.
    Resolved { at: Timestamp },
}

/// What became of work a caller waited for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Done {
    Created,
    /// Someone (another delivery, another replica) had created it already.
    AlreadyExisted,
    /// The status write landed.
    Recorded,
    /// The target does not exist: nothing was created.
    TargetNotFound(String),
    /// It could not be written (yet); Alertmanager should retry.
    Failed(String),
}

/// Everything waiting to be written to one Remediation.
#[derive(Debug, Default)]
pub struct Work {
    pub create: Option<Box<Creation>>,
    /// Sightings not yet counted in status.
    pub times: u64,
    pub first_seen: Option<Timestamp>,
    pub last_seen: Option<Timestamp>,
    /// Set when the latest thing heard was a resolution.
    pub resolved: Option<Timestamp>,
    /// The latest resolution heard, even if the alert fired again since.
    pub last_resolution: Option<Timestamp>,
    /// Failed write attempts so far.
    pub attempts: u32,
    pub waiters: Vec<oneshot::Sender<Done>>,
}

impl Work {
    fn apply(&mut self, op: Op) {
        match op {
            Op::Create { creation, at } => {
                self.create.get_or_insert(creation);
                self.seen(at);
            }
            Op::Seen { at } => self.seen(at),
            Op::Resolved { at } => {
                self.resolved = Some(at);
                self.last_resolution = Some(self.last_resolution.map_or(at, |r| r.max(at)));
            }
        }
    }

    fn seen(&mut self, at: Timestamp) {
        self.times = self.times.saturating_add(1);
        self.first_seen = Some(self.first_seen.map_or(at, |f| f.min(at)));
        self.last_seen = Some(self.last_seen.map_or(at, |l| l.max(at)));
        // Firing again after a resolution.
        self.resolved = None;
    }

    /// `self` happened first, then `later`.
    pub fn then(mut self, later: Work) -> Work {
        if self.create.is_none() {
            self.create = later.create;
        }
        if later.times > 0 {
            self.times = self.times.saturating_add(later.times);
            self.first_seen = [self.first_seen, later.first_seen].into_iter().flatten().min();
            self.last_seen = [self.last_seen, later.last_seen].into_iter().flatten().max();
            self.resolved = None;
        }
        if later.resolved.is_some() {
            self.resolved = later.resolved;
        }
        self.last_resolution = self.last_resolution.max(later.last_resolution);
        self.waiters.extend(later.waiters);
        self
    }

    /// Whether there is anything to write to status.
    pub fn writes_status(&self) -> bool {
        self.times > 0 || self.resolved.is_some()
    }

    /// `status.alert` after this work, given what it says now.
    pub fn observation(&self, prev: Option<&AlertObservation>) -> AlertObservation {
        let anchor = self.last_seen.or(self.resolved).or(self.first_seen).unwrap_or(Timestamp::UNIX_EPOCH);
        let mut next = prev.cloned().unwrap_or(AlertObservation {
            state: AlertState::Firing,
            times_seen: 0,
            first_seen: Time(self.first_seen.unwrap_or(anchor)),
            last_seen: Time(anchor),
            resolved_at: None,
        });
        if self.times > 0 {
            next.times_seen = next.times_seen.saturating_add(self.times);
            next.last_seen = Time(next.last_seen.0.max(self.last_seen.unwrap_or(anchor)));
            // Firing again; `resolvedAt` keeps the last resolution, so verification can
            // tell a fix that resolved the alert only for a while.
            next.state = AlertState::Firing;
        }
        if let Some(at) = self.last_resolution {
            next.resolved_at = Some(Time(next.resolved_at.map_or(at, |r| r.0.max(at))));
        }
        if self.resolved.is_some() {
            next.state = AlertState::Resolved;
        }
        next.times_seen = next.times_seen.max(1);
        next
    }

    /// Tell every waiter.
    pub fn finish(&mut self, done: &Done) {
        for w in self.waiters.drain(..) {
            let _ = w.send(done.clone());
        }
    }
}

/// The batch could not be queued: too many Remediations already have work waiting.
#[derive(Debug, PartialEq, Eq)]
pub struct Full {
    pub pending: usize,
    pub capacity: usize,
}

#[derive(Default)]
struct Inner {
    pending: HashMap<Key, Work>,
    /// Keys ready for a worker, oldest first; each is pending, not busy, and `due`.
    ready: VecDeque<Key>,
    /// Sightings-only keys and when they become ready (FIFO: the delay is constant). An
    /// entry is stale when its key was made ready earlier or taken meanwhile.
    later: VecDeque<(Instant, Key)>,
    /// Pending keys already in `ready`.
    due: HashSet<Key>,
    /// Keys with a live entry in `later`.
    deferred: HashSet<Key>,
    busy: HashSet<Key>,
}

impl Inner {
    fn schedule(&mut self, key: &Key, urgent: bool, now: Instant, delay: Duration) -> bool {
        if self.busy.contains(key) || self.due.contains(key) {
            return false;
        }
        if urgent || delay.is_zero() {
            self.deferred.remove(key);
            self.due.insert(key.clone());
            self.ready.push_back(key.clone());
            true
        } else {
            if self.deferred.insert(key.clone()) {
                self.later.push_back((now + delay, key.clone()));
            }
            false
        }
    }

    /// Move what has come due to `ready`; when the next one is due otherwise.
    fn promote(&mut self, now: Instant) -> Option<Instant> {
        while let Some((at, _)) = self.later.front() {
            if *at > now {
                return Some(*at);
            }
            let Some((_, key)) = self.later.pop_front() else { break };
            // Stale when the key was made ready or taken since.
            if self.deferred.remove(&key)
                && self.pending.contains_key(&key)
                && !self.busy.contains(&key)
                && self.due.insert(key.clone())
            {
                self.ready.push_back(key);
            }
        }
        None
    }
}

/// The queue. See the module docs.
pub struct Queue {
    inner: Mutex<Inner>,
    notify: Notify,
    capacity: usize,
    /// How long sightings of an active Remediation wait to be coalesced before they are
    /// written: at most one status write per Remediation per `delay` however hard its
    /// alert storms. Creates and resolutions are written at once.
    delay: Duration,
}

impl Queue {
    pub fn new(capacity: usize, delay: Duration) -> Self {
        Self { inner: Mutex::new(Inner::default()), notify: Notify::new(), capacity, delay }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Distinct Remediations with work waiting (not counting those being written).
    pub fn len(&self) -> usize {
        self.lock().pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queue a batch, all of it or (when it would exceed the capacity) none of it.
    pub fn offer(&self, batch: Vec<(Key, Op, Option<oneshot::Sender<Done>>)>) -> Result<(), Full> {
        let mut inner = self.lock();
        let fresh: HashSet<&Key> = batch.iter().map(|(k, ..)| k).filter(|k| !inner.pending.contains_key(*k)).collect();
        if inner.pending.len() + fresh.len() > self.capacity {
            return Err(Full { pending: inner.pending.len(), capacity: self.capacity });
        }
        let now = Instant::now();
        let mut touched: HashMap<Key, bool> = HashMap::new();
        for (key, op, waiter) in batch {
            let urgent = !matches!(op, Op::Seen { .. }) || waiter.is_some();
            let work = inner.pending.entry(key.clone()).or_default();
            work.apply(op);
            work.waiters.extend(waiter);
            *touched.entry(key).or_default() |= urgent;
        }
        let mut woke = 0;
        for (key, urgent) in touched {
            // A deferred key keeps its place in `later` unless this batch makes it urgent.
            if inner.schedule(&key, urgent, now, self.delay) {
                woke += 1;
            }
        }
        let later = !inner.later.is_empty();
        drop(inner);
        for _ in 0..woke.max(usize::from(later)) {
            self.notify.notify_one();
        }
        Ok(())
    }

    /// The next key with work, exclusively until [`Queue::done`].
    pub async fn take(&self) -> (Key, Work) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next = {
                let mut inner = self.lock();
                let next = inner.promote(Instant::now());
                if let Some(key) = inner.ready.pop_front() {
                    inner.due.remove(&key);
                    let work = inner.pending.remove(&key).unwrap_or_default();
                    inner.busy.insert(key.clone());
                    return (key, work);
                }
                next
            };
            match next {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at, notified).await;
                }
                None => notified.await,
            }
        }
    }

    /// The worker is done with `key`; `retry` (work that failed) goes back in front of
    /// whatever arrived meanwhile, and is ready at once. Retried work may exceed the
    /// capacity: it was admitted.
    pub fn done(&self, key: &Key, retry: Option<Work>) {
        let mut inner = self.lock();
        inner.busy.remove(key);
        let later = inner.pending.remove(key);
        let work = match (retry, later) {
            (Some(r), Some(l)) => Some((r.then(l), true)),
            (Some(r), None) => Some((r, true)),
            (None, Some(l)) => {
                let urgent = l.create.is_some() || l.resolved.is_some() || !l.waiters.is_empty();
                Some((l, urgent))
            }
            (None, None) => None,
        };
        if let Some((work, urgent)) = work {
            inner.pending.insert(key.clone(), work);
            inner.schedule(key, urgent, Instant::now(), self.delay);
            drop(inner);
            self.notify.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: &str) -> Key {
        ("shop".into(), n.into())
    }

    fn t(s: &str) -> Timestamp {
        format!("2026-01-01T00:{s}Z").parse().unwrap()
    }

    #[test]
    fn sightings_coalesce_and_a_later_resolution_wins() {
        let q = Queue::new(10, Duration::ZERO);
        let ops = (0..1000).map(|i| (key("a"), Op::Seen { at: t(if i % 2 == 0 { "01:00" } else { "02:00" }) }, None));
        q.offer(ops.collect()).unwrap();
        q.offer(vec![(key("a"), Op::Resolved { at: t("03:00") }, None)]).unwrap();
        assert_eq!(q.len(), 1);
        let work = q.lock().pending.remove(&key("a")).unwrap();
        let obs = work.observation(None);
        assert_eq!(obs.times_seen, 1000);
        assert_eq!((obs.first_seen.0, obs.last_seen.0), (t("01:00"), t("02:00")));
        assert_eq!((obs.state, obs.resolved_at.map(|r| r.0)), (AlertState::Resolved, Some(t("03:00"))));
    }

    #[test]
    fn firing_after_a_resolution_fires_again_and_counts_add_up() {
        let mut w = Work::default();
        w.apply(Op::Resolved { at: t("01:00") });
        w.apply(Op::Seen { at: t("02:00") });
        let prev = AlertObservation {
            state: AlertState::Resolved,
            times_seen: 7,
            first_seen: Time(t("00:00")),
            last_seen: Time(t("00:30")),
            resolved_at: Some(Time(t("00:40"))),
        };
        let obs = w.observation(Some(&prev));
        assert_eq!((obs.state, obs.times_seen, obs.first_seen.0), (AlertState::Firing, 8, t("00:00")));
        assert_eq!((obs.last_seen.0, obs.resolved_at.map(|r| r.0)), (t("02:00"), Some(t("01:00"))));
    }

    #[test]
    fn a_resolution_alone_keeps_the_count() {
        let mut w = Work::default();
        w.apply(Op::Resolved { at: t("05:00") });
        let prev = AlertObservation {
            state: AlertState::Firing,
            times_seen: 3,
            first_seen: Time(t("00:00")),
            last_seen: Time(t("01:00")),
            resolved_at: None,
        };
        let obs = w.observation(Some(&prev));
        assert_eq!((obs.state, obs.times_seen, obs.last_seen.0), (AlertState::Resolved, 3, t("01:00")));
    }

    #[test]
    fn a_batch_over_capacity_is_refused_whole() {
        let q = Queue::new(2, Duration::ZERO);
        q.offer(vec![(key("a"), Op::Seen { at: t("00:00") }, None)]).unwrap();
        let batch = vec![(key("a"), Op::Seen { at: t("00:00") }, None), (key("b"), Op::Seen { at: t("00:00") }, None)];
        q.offer(batch).unwrap();
        let over = vec![(key("c"), Op::Seen { at: t("00:00") }, None), (key("a"), Op::Seen { at: t("00:00") }, None)];
        assert_eq!(q.offer(over), Err(Full { pending: 2, capacity: 2 }));
        assert_eq!(q.lock().pending[&key("a")].times, 2, "nothing of the refused batch was queued");
    }

    #[tokio::test]
    async fn a_key_is_written_by_one_worker_at_a_time_and_retries_go_first() {
        let q = Queue::new(10, Duration::ZERO);
        q.offer(vec![(key("a"), Op::Resolved { at: t("01:00") }, None)]).unwrap();
        let (k, failed) = q.take().await;
        // Arrives while "a" is being written: not handed out until the worker is done.
        q.offer(vec![(key("a"), Op::Seen { at: t("02:00") }, None), (key("b"), Op::Seen { at: t("02:00") }, None)])
            .unwrap();
        let (other, _) = q.take().await;
        assert_eq!(other, key("b"));
        q.done(&k, Some(failed));
        let (again, merged) = q.take().await;
        assert_eq!(again, key("a"));
        // The failed resolution came first, then the sighting: firing again.
        assert_eq!((merged.times, merged.resolved), (1, None));
    }

    #[tokio::test(start_paused = true)]
    async fn sightings_wait_to_be_coalesced_but_creates_and_resolutions_do_not() {
        let q = Queue::new(10, Duration::from_secs(1));
        q.offer(vec![(key("a"), Op::Seen { at: t("00:00") }, None)]).unwrap();
        q.offer(vec![(key("b"), Op::Resolved { at: t("00:00") }, None)]).unwrap();
        let started = tokio::time::Instant::now();
        let (first, _) = q.take().await;
        assert_eq!((first, started.elapsed()), (key("b"), Duration::ZERO), "the resolution goes first, at once");
        q.offer(vec![(key("a"), Op::Seen { at: t("00:01") }, None)]).unwrap();
        let (second, work) = q.take().await;
        assert_eq!(second, key("a"));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(1) && waited < Duration::from_millis(1010),
            "sightings wait out the window: {waited:?}"
        );
        assert_eq!(work.times, 2, "and are written together");
        // A sighting-only key made urgent by a later create goes at once.
        q.offer(vec![(key("c"), Op::Seen { at: t("00:02") }, None)]).unwrap();
        let creation = Box::new(Creation { policy: "p".into(), target: "t".into(), spec: Box::new(spec()) });
        q.offer(vec![(key("c"), Op::Create { creation, at: t("00:02") }, None)]).unwrap();
        let before = tokio::time::Instant::now();
        let (third, work) = q.take().await;
        assert_eq!((third, before.elapsed(), work.times), (key("c"), Duration::ZERO, 2));
    }

    fn spec() -> RemediationSpec {
        serde_json::from_value(
            serde_json::json!({"policyRef": {"name": "p"}, "alert": {"name": "A", "fingerprint": "f",
            "labels": {}, "annotations": {}, "startsAt": "2026-01-01T00:00:00Z"},
            "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "t"}}),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn waiters_hear_the_outcome() {
        let q = Queue::new(10, Duration::ZERO);
        let (tx, rx) = oneshot::channel();
        q.offer(vec![(key("a"), Op::Seen { at: t("00:00") }, Some(tx))]).unwrap();
        let (_, mut work) = q.take().await;
        work.finish(&Done::Recorded);
        assert_eq!(rx.await.unwrap(), Done::Recorded);
    }
}
