//! Intake's bounded, keyed, coalescing work queue: what still has to be written to each
//! Remediation.
//!
//! Contract: work is keyed by Remediation (namespace, name). Work offered for a key that is
//! already waiting merges into it (a thousand sightings of one incident become one status
//! write), so the queue's size is the number of distinct Remediations with unwritten work,
//! and that is what [`Queue::offer`] bounds: a batch that would exceed the capacity is
//! refused whole (the webhook answers 503 + Retry-After) and nothing of it is queued. A key
//! is handed to one worker at a time; work arriving while it is being written waits and is
//! handed out again when the worker is done, so writes to one Remediation never race each
//! other. Sightings-only work waits out a coalescing window; creates, resolutions and work
//! someone waits for go at once; failed work comes back after its backoff without holding
//! a worker.
//!
//! [`Work::observation`] is the pure merge of queued work into `status.alert`. Each alert
//! (fingerprint) keeps its latest occurrence: a later `startsAt` is a new occurrence and
//! wins; a resolution of the same occurrence sticks, so merges commute and a late or
//! duplicated delivery (another replica, a retry) cannot undo a resolution or invent one.
//! The Remediation's alert is resolved when all of its alerts are; an alert that starts
//! again after resolving sets `refiredAt`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::plan::Occurrence;
use crate::api::remediation::{AlertInstance, AlertObservation, AlertState, MAX_ALERT_INSTANCES, RemediationSpec};

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
    Create { creation: Box<Creation>, at: Timestamp, alert: Occurrence },
    /// The alert was seen (again) at `at`.
    Seen { at: Timestamp, alert: Occurrence },
    /// Alertmanager says the alert's occurrence resolved at `at`.
    Resolved { at: Timestamp, alert: Occurrence },
}

/// What a waiter waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// The Remediation to exist.
    Create,
    /// The status write.
    Status,
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
    /// The name is taken by something else: nothing was created.
    Clash(String),
    /// It could not be written (yet); Alertmanager should retry.
    Failed(String),
}

/// One alert's latest occurrence, as far as queued work knows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Instance {
    pub starts_at: Timestamp,
    pub resolved_at: Option<Timestamp>,
    /// When an occurrence started after an earlier one had resolved.
    pub refired_at: Option<Timestamp>,
}

impl Instance {
    fn new(starts_at: Timestamp, resolved_at: Option<Timestamp>) -> Self {
        Self { starts_at, resolved_at, refired_at: None }
    }

    /// The later occurrence; for the same one, resolved if either says so. Commutative and
    /// associative, so the order work is merged in does not matter.
    fn join(self, other: Instance) -> Instance {
        let (early, late) = if self.starts_at <= other.starts_at { (self, other) } else { (other, self) };
        let refired = early.refired_at.max(late.refired_at);
        if early.starts_at == late.starts_at {
            return Instance {
                starts_at: late.starts_at,
                resolved_at: early.resolved_at.max(late.resolved_at),
                refired_at: refired,
            };
        }
        // A new occurrence; if the earlier one had resolved, it fired again.
        let again = early.resolved_at.map(|_| late.starts_at);
        Instance { refired_at: refired.max(again), ..late }
    }
}

/// Everything waiting to be written to one Remediation.
#[derive(Debug, Default)]
pub struct Work {
    pub create: Option<Box<Creation>>,
    /// Sightings not yet counted in status.
    pub times: u64,
    pub first_seen: Option<Timestamp>,
    pub last_seen: Option<Timestamp>,
    /// Alerts by fingerprint.
    pub alerts: BTreeMap<String, Instance>,
    /// Failed write attempts so far.
    pub attempts: u32,
    pub waiters: Vec<Waiter>,
}

/// Someone waiting to hear what became of work.
pub type Waiter = (Want, oneshot::Sender<Done>);

impl Work {
    fn apply(&mut self, op: Op) {
        let (alert, instance) = match op {
            Op::Create { creation, at, alert } => {
                self.create.get_or_insert(creation);
                self.seen(at);
                (alert.fingerprint, Instance::new(alert.starts_at, None))
            }
            Op::Seen { at, alert } => {
                self.seen(at);
                (alert.fingerprint, Instance::new(alert.starts_at, None))
            }
            Op::Resolved { at, alert } => (alert.fingerprint, Instance::new(alert.starts_at, Some(at))),
        };
        self.note(alert, instance);
    }

    fn note(&mut self, fingerprint: String, instance: Instance) {
        let joined = self.alerts.get(&fingerprint).map_or(instance, |i| i.join(instance));
        self.alerts.insert(fingerprint, joined);
    }

    fn seen(&mut self, at: Timestamp) {
        self.times = self.times.saturating_add(1);
        self.first_seen = Some(self.first_seen.map_or(at, |f| f.min(at)));
        self.last_seen = Some(self.last_seen.map_or(at, |l| l.max(at)));
    }

    /// Merge work that arrived later (the merge is order-free but for which creation wins).
    pub fn then(mut self, later: Work) -> Work {
        if self.create.is_none() {
            self.create = later.create;
        }
        self.times = self.times.saturating_add(later.times);
        self.first_seen = [self.first_seen, later.first_seen].into_iter().flatten().min();
        self.last_seen = [self.last_seen, later.last_seen].into_iter().flatten().max();
        for (fp, i) in later.alerts {
            self.note(fp, i);
        }
        self.waiters.extend(later.waiters);
        self
    }

    /// Whether there is anything to write to status.
    pub fn writes_status(&self) -> bool {
        self.times > 0 || !self.alerts.is_empty()
    }

    /// Worth writing without waiting for more sightings.
    fn urgent(&self) -> bool {
        self.create.is_some() || !self.waiters.is_empty() || self.alerts.values().any(|i| i.resolved_at.is_some())
    }

    /// `status.alert` after this work, given what it says now.
    pub fn observation(&self, prev: Option<&AlertObservation>) -> AlertObservation {
        let anchor = self
            .last_seen
            .or_else(|| self.alerts.values().filter_map(|i| i.resolved_at).max())
            .unwrap_or(Timestamp::UNIX_EPOCH);
        let mut next = prev.cloned().unwrap_or(AlertObservation {
            state: AlertState::Firing,
            times_seen: 0,
            first_seen: Time(self.first_seen.unwrap_or(anchor)),
            last_seen: Time(anchor),
            resolved_at: None,
            refired_at: None,
            alerts: Vec::new(),
        });
        if self.times > 0 {
            next.times_seen = next.times_seen.saturating_add(self.times);
            next.last_seen = Time(next.last_seen.0.max(self.last_seen.unwrap_or(anchor)));
        }
        let mut known: BTreeMap<String, Instance> = next
            .alerts
            .iter()
            .map(|a| (a.fingerprint.clone(), Instance::new(a.starts_at.0, a.resolved_at.as_ref().map(|t| t.0))))
            .collect();
        let was_resolved = (next.state == AlertState::Resolved).then(|| next.resolved_at.as_ref().map(|t| t.0));
        let mut refired = next.refired_at.as_ref().map(|t| t.0);
        for (fp, new) in &self.alerts {
            let joined = match known.get(fp) {
                // The same alert started again after resolving: a new occurrence.
                Some(old) => old.join(*new),
                None => {
                    // Another alert started after the Remediation's alert had resolved.
                    if new.resolved_at.is_none()
                        && let Some(since) = was_resolved
                        && since.is_none_or(|r| new.starts_at > r)
                    {
                        refired = refired.max(Some(new.starts_at));
                    }
                    *new
                }
            };
            refired = refired.max(joined.refired_at);
            known.insert(fp.clone(), Instance { refired_at: None, ..joined });
        }
        // Bounded: forget resolved alerts first (earliest resolved), then the oldest.
        while known.len() > MAX_ALERT_INSTANCES {
            let victim = known
                .iter()
                .filter(|(_, i)| i.resolved_at.is_some())
                .min_by_key(|(_, i)| i.resolved_at)
                .or_else(|| known.iter().min_by_key(|(_, i)| i.starts_at))
                .map(|(fp, _)| fp.clone());
            match victim {
                Some(fp) => known.remove(&fp),
                None => break,
            };
        }
        if !known.is_empty() {
            let all_resolved = known.values().all(|i| i.resolved_at.is_some());
            if all_resolved {
                next.state = AlertState::Resolved;
                next.resolved_at = known.values().filter_map(|i| i.resolved_at).max().map(Time);
            } else {
                next.state = AlertState::Firing;
            }
        }
        next.refired_at = refired.map(Time);
        next.alerts = known
            .into_iter()
            .map(|(fingerprint, i)| AlertInstance {
                fingerprint,
                starts_at: Time(i.starts_at),
                resolved_at: i.resolved_at.map(Time),
            })
            .collect();
        next
    }

    /// Tell the waiters that want `what` (all of them for `None`).
    pub fn finish(&mut self, what: Option<Want>, done: &Done) {
        let (told, kept): (Vec<_>, Vec<_>) = self.waiters.drain(..).partition(|(w, _)| what.is_none_or(|x| x == *w));
        self.waiters = kept;
        for (_, tx) in told {
            let _ = tx.send(done.clone());
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
    /// Keys ready for a worker, oldest first; each is pending, not busy, and in `due`.
    ready: VecDeque<Key>,
    due: HashSet<Key>,
    /// Keys waiting for a time (coalescing window, retry backoff), earliest first. An entry
    /// is live only while `deferred` holds the same time for its key.
    later: BinaryHeap<Reverse<(Instant, Key)>>,
    deferred: HashMap<Key, Instant>,
    busy: HashSet<Key>,
}

impl Inner {
    /// Make `key` ready at `at` (at once when `at` has passed). Returns whether it is ready.
    fn schedule(&mut self, key: &Key, at: Instant, now: Instant) -> bool {
        if self.busy.contains(key) || self.due.contains(key) {
            return false;
        }
        if at <= now {
            self.deferred.remove(key);
            self.due.insert(key.clone());
            self.ready.push_back(key.clone());
            return true;
        }
        // An earlier time already set stands.
        if self.deferred.get(key).is_none_or(|t| at < *t) {
            self.deferred.insert(key.clone(), at);
            self.later.push(Reverse((at, key.clone())));
        }
        false
    }

    /// Move what has come due to `ready`; when the next one is due otherwise.
    fn promote(&mut self, now: Instant) -> Option<Instant> {
        while let Some(Reverse((at, _))) = self.later.peek() {
            if *at > now {
                return Some(*at);
            }
            let Some(Reverse((at, key))) = self.later.pop() else { break };
            if self.deferred.get(&key) == Some(&at) {
                self.deferred.remove(&key);
                if self.pending.contains_key(&key) && !self.busy.contains(&key) && self.due.insert(key.clone()) {
                    self.ready.push_back(key);
                }
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
    /// alert storms.
    delay: Duration,
}

impl Queue {
    pub fn new(capacity: usize, delay: Duration) -> Self {
        Self { inner: Mutex::new(Inner::default()), notify: Notify::new(), capacity, delay }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn when(&self, urgent: bool, now: Instant) -> Instant {
        if urgent { now } else { now.checked_add(self.delay).unwrap_or(now) }
    }

    /// Distinct Remediations with work waiting (not counting those being written).
    pub fn len(&self) -> usize {
        self.lock().pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queue a batch, all of it or (when it would exceed the capacity) none of it.
    pub fn offer(&self, batch: Vec<(Key, Op, Option<Waiter>)>) -> Result<(), Full> {
        let mut inner = self.lock();
        let fresh: HashSet<&Key> = batch.iter().map(|(k, ..)| k).filter(|k| !inner.pending.contains_key(*k)).collect();
        if inner.pending.len() + fresh.len() > self.capacity {
            return Err(Full { pending: inner.pending.len(), capacity: self.capacity });
        }
        let mut touched: HashSet<Key> = HashSet::new();
        for (key, op, waiter) in batch {
            let work = inner.pending.entry(key.clone()).or_default();
            work.apply(op);
            work.waiters.extend(waiter);
            touched.insert(key);
        }
        let now = Instant::now();
        let mut woke = 0;
        for key in touched {
            let urgent = inner.pending.get(&key).is_some_and(Work::urgent);
            if inner.schedule(&key, self.when(urgent, now), now) {
                woke += 1;
            }
        }
        let deferred = !inner.later.is_empty();
        drop(inner);
        // Wake a worker per ready key, or one to sleep until the next deferred key.
        for _ in 0..woke.max(usize::from(deferred)) {
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

    /// The worker is done with `key`. `retry` (work that failed, and when to try again)
    /// goes in front of whatever arrived meanwhile. Retried work may exceed the capacity:
    /// it was admitted.
    pub fn done(&self, key: &Key, retry: Option<(Work, Instant)>) {
        let mut inner = self.lock();
        inner.busy.remove(key);
        let later = inner.pending.remove(key);
        let now = Instant::now();
        let next = match (retry, later) {
            (Some((r, at)), Some(l)) => Some((r.then(l), at)),
            (Some((r, at)), None) => Some((r, at)),
            (None, Some(l)) => {
                let at = self.when(l.urgent(), now);
                Some((l, at))
            }
            (None, None) => None,
        };
        if let Some((work, at)) = next {
            inner.pending.insert(key.clone(), work);
            inner.schedule(key, at, now);
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

    fn occ(fp: &str, starts: &str) -> Occurrence {
        Occurrence { fingerprint: fp.into(), starts_at: t(starts) }
    }

    fn seen(fp: &str, starts: &str, at: &str) -> Op {
        Op::Seen { at: t(at), alert: occ(fp, starts) }
    }

    fn resolved(fp: &str, starts: &str, at: &str) -> Op {
        Op::Resolved { at: t(at), alert: occ(fp, starts) }
    }

    fn work(ops: Vec<Op>) -> Work {
        let mut w = Work::default();
        for op in ops {
            w.apply(op);
        }
        w
    }

    fn creation() -> Box<Creation> {
        let spec = serde_json::from_value(serde_json::json!({"policyRef": {"name": "p"}, "alert": {"name": "A",
            "fingerprint": "f", "labels": {}, "annotations": {}, "startsAt": "2026-01-01T00:00:00Z"},
            "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "t"}}))
        .unwrap();
        Box::new(Creation { policy: "p".into(), target: "t".into(), spec: Box::new(spec) })
    }

    #[test]
    fn sightings_coalesce_and_a_resolution_of_the_occurrence_sticks() {
        let q = Queue::new(10, Duration::ZERO);
        let ops = (0..1000).map(|i| (key("a"), seen("fa", "00:00", if i % 2 == 0 { "01:00" } else { "02:00" }), None));
        q.offer(ops.collect()).unwrap();
        q.offer(vec![(key("a"), resolved("fa", "00:00", "03:00"), None)]).unwrap();
        // A late sighting of the same occurrence (another replica, a retry) does not undo it.
        q.offer(vec![(key("a"), seen("fa", "00:00", "04:00"), None)]).unwrap();
        assert_eq!(q.len(), 1);
        let w = q.lock().pending.remove(&key("a")).unwrap();
        let obs = w.observation(None);
        assert_eq!(obs.times_seen, 1001);
        assert_eq!((obs.first_seen.0, obs.last_seen.0), (t("01:00"), t("04:00")));
        assert_eq!((obs.state, obs.resolved_at.map(|r| r.0)), (AlertState::Resolved, Some(t("03:00"))));
        assert_eq!(obs.refired_at, None);
    }

    #[test]
    fn one_alert_resolving_while_another_fires_leaves_the_remediation_firing() {
        // Two pods of one Deployment feed one Remediation; the order within a delivery is
        // the alerts' label order, so try both.
        for ops in [
            vec![resolved("fa", "00:00", "05:00"), seen("fb", "00:01", "05:00")],
            vec![seen("fb", "00:01", "05:00"), resolved("fa", "00:00", "05:00")],
        ] {
            let obs = work(ops).observation(None);
            assert_eq!((obs.state, &obs.refired_at), (AlertState::Firing, &None), "{obs:?}");
            let obs = work(vec![resolved("fb", "00:01", "06:00")]).observation(Some(&obs));
            assert_eq!((obs.state, obs.resolved_at.map(|r| r.0)), (AlertState::Resolved, Some(t("06:00"))));
        }
    }

    #[test]
    fn a_new_occurrence_after_resolving_is_a_refire_and_merges_commute() {
        let first = work(vec![seen("fa", "00:00", "01:00")]).observation(None);
        let gone = work(vec![resolved("fa", "00:00", "02:00")]).observation(Some(&first));
        assert_eq!(gone.state, AlertState::Resolved);
        // Written in either order, the same outcome: fired again at 03:00.
        let a = work(vec![seen("fa", "03:00", "03:30")]).observation(Some(&gone));
        let b = work(vec![seen("fa", "03:00", "03:30"), resolved("fa", "00:00", "02:00")]).observation(Some(&first));
        for obs in [&a, &b] {
            assert_eq!((obs.state, obs.refired_at.as_ref().map(|r| r.0)), (AlertState::Firing, Some(t("03:00"))));
        }
        // A different alert starting after the resolution is a refire too; one that started
        // before it (delivered late) is not.
        let other = work(vec![seen("fb", "02:30", "02:40")]).observation(Some(&gone));
        assert_eq!(other.refired_at.map(|r| r.0), Some(t("02:30")));
        let late = work(vec![seen("fb", "01:30", "02:40")]).observation(Some(&gone));
        assert_eq!((late.state, &late.refired_at), (AlertState::Firing, &None));
        // resolvedAt keeps the last resolution while firing again.
        assert_eq!(a.resolved_at.map(|r| r.0), Some(t("02:00")));
    }

    #[test]
    fn a_resolution_alone_invents_no_sighting_and_instances_are_bounded() {
        let obs = work(vec![resolved("fa", "00:00", "05:00")]).observation(None);
        assert_eq!((obs.times_seen, obs.state), (0, AlertState::Resolved));
        let many: Vec<Op> = (0..300).map(|i| seen(&format!("f{i:03}"), "00:00", "01:00")).collect();
        let mut obs = work(many).observation(None);
        assert_eq!(obs.alerts.len(), MAX_ALERT_INSTANCES);
        obs = work(vec![resolved("f299", "00:00", "02:00"), seen("g", "00:30", "02:00")]).observation(Some(&obs));
        assert_eq!(obs.alerts.len(), MAX_ALERT_INSTANCES);
        assert!(!obs.alerts.iter().any(|a| a.fingerprint == "f299"), "a resolved alert is forgotten first");
    }

    #[test]
    fn a_batch_over_capacity_is_refused_whole() {
        let q = Queue::new(2, Duration::ZERO);
        q.offer(vec![(key("a"), seen("f", "00:00", "00:00"), None)]).unwrap();
        let batch = vec![(key("a"), seen("f", "00:00", "00:00"), None), (key("b"), seen("f", "00:00", "00:00"), None)];
        q.offer(batch).unwrap();
        let over = vec![(key("c"), seen("f", "00:00", "00:00"), None), (key("a"), seen("f", "00:00", "00:00"), None)];
        assert_eq!(q.offer(over), Err(Full { pending: 2, capacity: 2 }));
        assert_eq!(q.lock().pending[&key("a")].times, 2, "nothing of the refused batch was queued");
    }

    #[tokio::test]
    async fn a_key_is_written_by_one_worker_at_a_time_and_retries_go_first() {
        let q = Queue::new(10, Duration::ZERO);
        q.offer(vec![(key("a"), resolved("f", "00:00", "01:00"), None)]).unwrap();
        let (k, failed) = q.take().await;
        // Arrives while "a" is being written: not handed out until the worker is done.
        q.offer(vec![(key("a"), seen("f", "02:00", "02:00"), None), (key("b"), seen("f", "00:00", "02:00"), None)])
            .unwrap();
        let (other, _) = q.take().await;
        assert_eq!(other, key("b"));
        q.done(&k, Some((failed, Instant::now())));
        let (again, merged) = q.take().await;
        assert_eq!(again, key("a"));
        assert_eq!(merged.times, 1);
        assert_eq!(merged.alerts["f"].starts_at, t("02:00"), "the newer occurrence");
        assert_eq!(merged.alerts["f"].refired_at, Some(t("02:00")), "after the resolution");
    }

    #[tokio::test(start_paused = true)]
    async fn sightings_wait_to_be_coalesced_but_creates_and_resolutions_do_not() {
        let q = Queue::new(10, Duration::from_secs(1));
        q.offer(vec![(key("a"), seen("f", "00:00", "00:00"), None)]).unwrap();
        q.offer(vec![(key("b"), resolved("f", "00:00", "00:00"), None)]).unwrap();
        let started = Instant::now();
        let (first, _) = q.take().await;
        assert_eq!((first, started.elapsed()), (key("b"), Duration::ZERO), "the resolution goes first, at once");
        q.offer(vec![(key("a"), seen("f", "00:00", "00:01"), None)]).unwrap();
        let (second, work) = q.take().await;
        assert_eq!(second, key("a"));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(1) && waited < Duration::from_millis(1010), "waited {waited:?}");
        assert_eq!(work.times, 2, "and are written together");
        // A sighting-only key made urgent by a later create goes at once.
        q.offer(vec![(key("c"), seen("f", "00:00", "00:02"), None)]).unwrap();
        q.offer(vec![(key("c"), Op::Create { creation: creation(), at: t("00:02"), alert: occ("f", "00:00") }, None)])
            .unwrap();
        let before = Instant::now();
        let (third, work) = q.take().await;
        assert_eq!((third, before.elapsed(), work.times), (key("c"), Duration::ZERO, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn failed_work_comes_back_after_its_backoff_without_holding_a_worker() {
        let q = Queue::new(10, Duration::from_secs(1));
        q.offer(vec![(key("a"), resolved("f", "00:00", "00:00"), None)]).unwrap();
        let (k, w) = q.take().await;
        let started = Instant::now();
        q.done(&k, Some((w, started + Duration::from_millis(400))));
        q.offer(vec![(key("b"), resolved("f", "00:00", "00:00"), None)]).unwrap();
        let (next, _) = q.take().await;
        assert_eq!((next, started.elapsed()), (key("b"), Duration::ZERO), "others go first");
        let (again, _) = q.take().await;
        assert_eq!(again, key("a"));
        assert!(started.elapsed() >= Duration::from_millis(400));
    }

    #[tokio::test]
    async fn waiters_hear_what_they_wait_for() {
        let q = Queue::new(10, Duration::ZERO);
        let (create_tx, create_rx) = oneshot::channel();
        let (status_tx, mut status_rx) = oneshot::channel();
        let op = Op::Create { creation: creation(), at: t("00:00"), alert: occ("f", "00:00") };
        q.offer(vec![(key("a"), op, Some((Want::Create, create_tx)))]).unwrap();
        q.offer(vec![(key("a"), resolved("f", "00:00", "00:01"), Some((Want::Status, status_tx)))]).unwrap();
        let (_, mut work) = q.take().await;
        work.finish(Some(Want::Create), &Done::Created);
        assert_eq!(create_rx.await.unwrap(), Done::Created);
        assert!(status_rx.try_recv().is_err(), "the resolution is not recorded yet");
        work.finish(None, &Done::Recorded);
        assert_eq!(status_rx.await.unwrap(), Done::Recorded);
    }
}
