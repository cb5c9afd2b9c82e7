//! The policy's limits, applied by the controller to every Remediation, however it was made.
//!
//! Contract: intake applies the cooldown, the rate limit (`maxRemediations` per `window`),
//! the concurrency limit (`maxConcurrent`) and "one Remediation per target" when it decides
//! to create a Remediation. A Remediation created by hand skips intake, so [`limits_halt`]
//! judges it again before it starts, against the other Remediations of the same namespace.
//! They are admission limits: once a Remediation has started it keeps its place (lowering a
//! limit holds back new ones, never one under way, so two can never wait for each other).
//! Against one that has not started count every Remediation under way, and those not yet
//! started that are *ahead* of it (created earlier; the name breaks ties) unless the limits
//! hold them back themselves — so one intake created passes exactly as it passed at intake,
//! and Remediations over a limit start in creation order as it allows them (a halt with the
//! time to look again). Pure: the caller passes the peers and the clock.

use std::time::Duration;

use jiff::Timestamp;

use super::machine::{HALT_RECHECK, Halt};
use crate::api::ErrorCategory;
use crate::api::TargetKind;
use crate::api::conditions::ConditionType;
use crate::api::conditions::reason;
use crate::api::remediation::{Phase, Remediation, RemediationStatus, Step, StepState};
use crate::api::validate::ValidLimits;

/// What the limits need of one Remediation.
#[derive(Clone, Debug, PartialEq)]
pub struct Peer {
    pub namespace: String,
    pub name: String,
    pub policy: String,
    pub target_kind: TargetKind,
    pub target_name: String,
    /// Set by the API server (it cannot be chosen by whoever creates the object).
    pub created: Timestamp,
    /// None until the controller first writes status.
    pub phase: Option<Phase>,
    /// It has started (left Pending), whatever it is doing now.
    pub began: bool,
    /// The reason of its Stalled condition, when True (a Remediation the limits hold back
    /// before it started holds no place in the limits of those behind it).
    pub stalled: Option<String>,
    pub finished: Option<Timestamp>,
    /// Where it stands with the operator's cap on concurrent deploys.
    pub deploy: DeploySlot,
}

/// Where a Remediation stands with the operator's cap on concurrent deploys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeploySlot {
    /// Not deploying.
    None,
    /// In Deploying with nothing written: its snapshot not started (or withdrawn by a
    /// re-test), or its deploy deferred (waiting for disruption headroom, say) — it waits for
    /// a slot, and a deferred one gives its slot back while it waits.
    Waiting,
    /// Deploying (its snapshot or write under way), being verified, or rolling back.
    Holding,
}

/// Where `status` stands with the deploy cap.
pub fn deploy_slot(status: &RemediationStatus) -> DeploySlot {
    match status.phase {
        Phase::Deploying => {
            let applied = status.deploy.as_ref().is_some_and(|d| d.applied_at.is_some());
            let snapshot = status.last_step(Step::Snapshot).map(|r| r.state);
            let deploy = status.last_step(Step::Deploy);
            let deferred =
                deploy.is_some_and(|r| r.state == StepState::Failed && r.category == Some(ErrorCategory::Deferred));
            let not_snapshotted = status.deploy.is_none() && snapshot.is_none_or(|s| s == StepState::Cancelled);
            if !applied && (not_snapshotted || deferred) { DeploySlot::Waiting } else { DeploySlot::Holding }
        }
        Phase::Verifying | Phase::RollingBack => DeploySlot::Holding,
        _ => DeploySlot::None,
    }
}

impl Peer {
    /// The limits' view of `rem`; None without the metadata every stored object has.
    pub fn of(rem: &Remediation) -> Option<Self> {
        let status = rem.status.as_ref();
        Some(Self {
            namespace: rem.metadata.namespace.clone()?,
            name: rem.metadata.name.clone()?,
            policy: rem.spec.policy_ref.name.clone(),
            target_kind: rem.spec.target.kind,
            target_name: rem.spec.target.name.clone(),
            created: rem.metadata.creation_timestamp.as_ref()?.0,
            phase: status.map(|s| s.phase),
            began: status.is_some_and(|s| s.started_at.is_some()),
            stalled: status.and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == ConditionType::Stalled.as_str() && c.status == "True")
                    .map(|c| c.reason.clone())
            }),
            finished: status.and_then(|s| s.finished_at.as_ref()).map(|t| t.0),
            deploy: status.map_or(DeploySlot::None, deploy_slot),
        })
    }

    fn active(&self) -> bool {
        self.phase.is_none_or(|p| !p.is_terminal())
    }

    /// Held back by the limits themselves (not by the kill switch, a suspend or a freeze,
    /// which keep its place).
    fn held_by_limits(&self) -> bool {
        self.stalled.as_deref().is_some_and(|r| {
            [reason::TARGET_BUSY, reason::COOLDOWN, reason::RATE_LIMITED, reason::POLICY_CONCURRENCY].contains(&r)
        })
    }

    /// Whether it counts against the limits of `me`, which has not started: it has started,
    /// or it is ahead of `me` and not held back by the limits.
    fn has_place_before(&self, me: &Self) -> bool {
        self.began || (self.ahead_of(me) && !self.held_by_limits())
    }

    fn ahead_of(&self, me: &Self) -> bool {
        (self.created, &self.name) < (me.created, &me.name)
    }

    fn same_target(&self, me: &Self) -> bool {
        self.target_kind == me.target_kind && self.target_name == me.target_name
    }

    /// The key the deploy cap orders by, across namespaces.
    fn key(&self) -> (Timestamp, &str, &str) {
        (self.created, &self.namespace, &self.name)
    }

    fn describe_target(&self) -> String {
        format!("{} {:?}", self.target_kind.as_str(), self.target_name)
    }
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

fn since(now: Timestamp, then: Timestamp) -> Duration {
    now.duration_since(then).unsigned_abs()
}

/// Whether a limit holds `me` back at `now`, given every Remediation the controller knows
/// (`me` among them or not).
pub fn limits_halt(me: &Peer, peers: &[Peer], limits: &ValidLimits, now: Timestamp) -> Option<Halt> {
    if me.began {
        return None;
    }
    let others: Vec<&Peer> = peers.iter().filter(|p| p.namespace == me.namespace && p.name != me.name).collect();
    let halt = |reason, message: String, after: Duration| Halt {
        reason,
        message,
        recheck_after: Some(after.clamp(Duration::from_secs(1), HALT_RECHECK)),
    };

    // One Remediation per target at a time, whichever policy made it.
    if let Some(first) = others.iter().find(|p| p.same_target(me) && p.active() && p.has_place_before(me)) {
        return Some(halt(
            reason::TARGET_BUSY,
            format!("{} is already remediating {}: this one waits until it ends", first.name, me.describe_target()),
            HALT_RECHECK,
        ));
    }
    // The cooldown after the last Remediation of this target by this policy finished.
    let last_finished = others
        .iter()
        .filter(|p| p.policy == me.policy && p.same_target(me))
        .filter_map(|p| p.finished)
        .filter(|f| *f <= now)
        .max();
    if let Some(done) = last_finished.filter(|f| since(now, *f) < limits.cooldown) {
        let left = limits.cooldown.saturating_sub(since(now, done));
        return Some(halt(
            reason::COOLDOWN,
            format!(
                "{} was remediated {} ago; the policy's cooldown is {} ({} left)",
                me.describe_target(),
                secs(since(now, done)),
                secs(limits.cooldown),
                secs(left)
            ),
            left,
        ));
    }
    let of_policy: Vec<&&Peer> = others.iter().filter(|p| p.policy == me.policy && p.has_place_before(me)).collect();
    // The rate limit: Remediations of this policy started within the window.
    let recent: Vec<Timestamp> =
        of_policy.iter().map(|p| p.created).filter(|c| since(now, *c) < limits.window).collect();
    if recent.len() >= limits.max_remediations as usize {
        let oldest = recent.iter().min().copied().unwrap_or(now);
        let left = limits.window.saturating_sub(since(now, oldest));
        return Some(halt(
            reason::RATE_LIMITED,
            format!(
                "{} remediations of policy {:?} within {} (limits.maxRemediations {}): this one waits ({} left)",
                recent.len(),
                me.policy,
                secs(limits.window),
                limits.max_remediations,
                secs(left)
            ),
            left,
        ));
    }
    // The concurrency limit.
    let running = of_policy.iter().filter(|p| p.active()).count();
    (running >= limits.max_concurrent as usize).then(|| {
        halt(
            reason::POLICY_CONCURRENCY,
            format!(
                "{running} remediations of policy {:?} are in progress (limits.maxConcurrent {}): this one waits for one to end",
                me.policy, limits.max_concurrent
            ),
            HALT_RECHECK,
        )
    })
}

/// How many changes hold or are owed a deploy slot ahead of `me`, when that reaches the
/// operator's `cap` (then `me` waits). Counted across the cluster: every change deploying,
/// being verified or rolling back; every one waiting for a slot that was created before
/// `me` (so the waiting go one at a time, in creation order, and two waiting never count each
/// other); and `reserved`, the ones this process has just let through whose start the cache
/// may not show yet (by `namespace/name`).
pub fn deploys_at_cap(me: &Peer, peers: &[Peer], reserved: &[String], cap: u32) -> Option<u32> {
    let key = |p: &Peer| format!("{}/{}", p.namespace, p.name);
    let mine = key(me);
    let mut ahead: Vec<String> = peers
        .iter()
        .filter(|p| key(p) != mine)
        .filter(|p| match p.deploy {
            DeploySlot::Holding => true,
            // One waiting for another reason (a freeze on its policy, say) keeps no place.
            DeploySlot::Waiting => {
                p.key() < me.key() && p.stalled.as_deref().is_none_or(|r| r == reason::CONCURRENCY_CAP)
            }
            DeploySlot::None => false,
        })
        .map(key)
        .collect();
    ahead.extend(reserved.iter().filter(|r| **r != mine).cloned());
    ahead.sort_unstable();
    ahead.dedup();
    let count = u32::try_from(ahead.len()).unwrap_or(u32::MAX);
    (count >= cap).then_some(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn peer(name: &str, created: i64, phase: Option<Phase>, finished: Option<i64>) -> Peer {
        Peer {
            namespace: "shop".into(),
            name: name.into(),
            policy: "checkout-oom".into(),
            target_kind: TargetKind::Deployment,
            target_name: "checkout".into(),
            created: at(created),
            phase,
            began: phase.is_some_and(|p| p != Phase::Pending),
            stalled: None,
            finished: finished.map(at),
            deploy: DeploySlot::None,
        }
    }

    fn limits() -> ValidLimits {
        ValidLimits {
            cooldown: Duration::from_secs(600),
            max_remediations: 2,
            window: Duration::from_secs(3600),
            max_concurrent: 1,
            max_attempts: 3,
            max_duration: Duration::from_secs(3600),
            suspend: false,
            freeze: Vec::new(),
            failed_fixes: 2,
            realerts: 2,
            realert_within: Duration::from_secs(3600),
        }
    }

    fn reason_of(me: &Peer, peers: &[Peer], limits: &ValidLimits, now: i64) -> Option<&'static str> {
        limits_halt(me, peers, limits, at(now)).map(|h| h.reason)
    }

    #[test]
    fn alone_nothing_holds_a_remediation_back() {
        let me = peer("me", 0, None, None);
        assert_eq!(reason_of(&me, std::slice::from_ref(&me), &limits(), 1), None);
    }

    #[test]
    fn a_second_remediation_of_a_busy_target_waits_for_the_first_whatever_its_policy() {
        let first = Peer { policy: "other".into(), ..peer("first", 0, Some(Phase::Testing), None) };
        let me = peer("me", 10, None, None);
        let peers = [first.clone(), me.clone()];
        assert_eq!(reason_of(&me, &peers, &limits(), 20), Some(reason::TARGET_BUSY));
        // The earlier one is not held back by the later one.
        assert_eq!(reason_of(&first, &peers, &limits(), 20), None);
        // Another target of the same namespace is not busy.
        let elsewhere = Peer { target_name: "cart".into(), ..me.clone() };
        assert_eq!(reason_of(&elsewhere, &peers, &limits(), 20), None);
    }

    #[test]
    fn the_cooldown_runs_from_the_last_finish_and_tells_how_long_is_left() {
        let done = peer("done", 0, Some(Phase::Succeeded), Some(100));
        let me = peer("me", 200, None, None);
        let h = limits_halt(&me, &[done.clone(), me.clone()], &limits(), at(300)).unwrap();
        assert_eq!(h.reason, reason::COOLDOWN);
        assert!(h.message.contains("400s left"), "{}", h.message);
        assert_eq!(h.recheck_after, Some(HALT_RECHECK));
        assert_eq!(reason_of(&me, &[done.clone(), me.clone()], &limits(), 700), None, "cooldown over");
        // Another policy's finish on the same target starts no cooldown for this one.
        let theirs = Peer { policy: "other".into(), ..done };
        assert_eq!(reason_of(&me, &[theirs, me.clone()], &limits(), 300), None);
    }

    #[test]
    fn the_rate_limit_counts_only_remediations_ahead_within_the_window() {
        let mut l = limits();
        l.max_concurrent = 10;
        l.cooldown = Duration::ZERO;
        let a = Peer { target_name: "a".into(), ..peer("a", 0, Some(Phase::Failed), Some(1)) };
        let b = Peer { target_name: "b".into(), ..peer("b", 100, Some(Phase::Failed), Some(101)) };
        let me = peer("me", 200, None, None);
        let peers = [a.clone(), b.clone(), me.clone()];
        let h = limits_halt(&me, &peers, &l, at(300)).unwrap();
        assert_eq!(h.reason, reason::RATE_LIMITED);
        // The earliest leaves the window 3,600 s after it was created.
        assert_eq!(reason_of(&me, &peers, &l, 3_599), Some(reason::RATE_LIMITED));
        assert_eq!(reason_of(&me, &peers, &l, 3_600), None);
        // The two ahead of it are within the limit themselves.
        assert_eq!(reason_of(&b, &peers, &l, 300), None);
    }

    #[test]
    fn the_concurrency_limit_lets_them_through_in_creation_order() {
        let mut l = limits();
        l.max_remediations = 100;
        let a = Peer { target_name: "a".into(), ..peer("a", 0, Some(Phase::AwaitingApproval), None) };
        let me = peer("me", 5, None, None);
        let peers = [a.clone(), me.clone()];
        assert_eq!(reason_of(&me, &peers, &l, 10), Some(reason::POLICY_CONCURRENCY));
        assert_eq!(reason_of(&a, &peers, &l, 10), None);
        let a_done = Peer { phase: Some(Phase::Succeeded), finished: Some(at(8)), ..a };
        assert_eq!(reason_of(&me, &[a_done, me.clone()], &l, 10), None);
    }

    #[test]
    fn one_held_back_before_it_started_holds_no_place_for_those_behind_it() {
        let mut l = limits();
        l.max_remediations = 100;
        let waiting = Peer { stalled: Some(reason::COOLDOWN.into()), ..peer("waiting", 0, Some(Phase::Pending), None) };
        let me = peer("me", 5, None, None);
        let on_other = Peer { target_name: "cart".into(), ..me.clone() };
        assert_eq!(reason_of(&on_other, &[waiting.clone(), on_other.clone()], &l, 10), None);
        assert_eq!(reason_of(&me, &[waiting.clone(), me.clone()], &l, 10), None, "not busy either");
        // Once started, a stall (a freeze, say) keeps its place.
        let started = Peer { phase: Some(Phase::AwaitingApproval), began: true, ..waiting };
        assert_eq!(reason_of(&on_other, &[started, on_other.clone()], &l, 10), Some(reason::POLICY_CONCURRENCY));
    }

    fn deploying(name: &str, created: i64, slot: DeploySlot) -> Peer {
        Peer { deploy: slot, ..peer(name, created, Some(Phase::Deploying), None) }
    }

    #[test]
    fn at_the_deploy_cap_the_waiting_go_one_at_a_time_in_creation_order() {
        let holding = Peer { phase: Some(Phase::Verifying), ..deploying("a", 0, DeploySlot::Holding) };
        let b = Peer { stalled: Some(reason::CONCURRENCY_CAP.into()), ..deploying("b", 10, DeploySlot::Waiting) };
        let c = Peer { stalled: Some(reason::CONCURRENCY_CAP.into()), ..deploying("c", 20, DeploySlot::Waiting) };
        let peers = [holding.clone(), b.clone(), c.clone()];
        assert_eq!(deploys_at_cap(&b, &peers, &[], 1), Some(1));
        assert_eq!(deploys_at_cap(&c, &peers, &[], 1), Some(2));
        // The first ends: the earlier waiting one goes, the later still waits — for it.
        let done = Peer { phase: Some(Phase::Succeeded), deploy: DeploySlot::None, ..holding };
        let peers = [done.clone(), b.clone(), c.clone()];
        assert_eq!(deploys_at_cap(&b, &peers, &[], 1), None);
        assert_eq!(deploys_at_cap(&c, &peers, &[], 1), Some(1));
        assert_eq!(deploys_at_cap(&c, &peers, &[], 2), None, "a cap of two lets both go");
        // One let through but not yet in the cache counts, once.
        assert_eq!(deploys_at_cap(&c, &[done.clone(), c.clone()], &["shop/b".into()], 1), Some(1));
        assert_eq!(deploys_at_cap(&b, &[done.clone(), b.clone()], &["shop/b".into()], 1), None, "not itself");
        // One waiting ahead that is held by something else keeps no place.
        let frozen = Peer { stalled: Some(reason::CHANGE_FREEZE.into()), ..b };
        assert_eq!(deploys_at_cap(&c, &[done, frozen, c.clone()], &[], 1), None);
    }

    #[test]
    fn one_under_way_counts_whatever_its_order_and_is_never_held_back_itself() {
        let mut l = limits();
        l.max_remediations = 100;
        // "early" was held back (by the cooldown) while "late" started on the same target.
        let early = Peer { stalled: Some(reason::COOLDOWN.into()), ..peer("early", 0, Some(Phase::Pending), None) };
        let late = peer("late", 10, Some(Phase::Verifying), None);
        let peers = [early.clone(), late.clone()];
        assert_eq!(reason_of(&early, &peers, &l, 700), Some(reason::TARGET_BUSY), "it waits for the one under way");
        assert_eq!(reason_of(&late, &peers, &l, 700), None, "one under way goes on");
        // Lowering maxConcurrent holds back new ones, never two already under way.
        let other = Peer { target_name: "cart".into(), ..peer("other", 20, Some(Phase::Testing), None) };
        assert_eq!(reason_of(&other, &[late.clone(), other.clone()], &l, 30), None);
        assert_eq!(reason_of(&late, &[late.clone(), other.clone()], &l, 30), None);
    }

    #[test]
    fn one_held_by_the_kill_switch_keeps_its_place_so_they_do_not_all_start_at_once() {
        let mut l = limits();
        l.max_remediations = 100;
        let first = Peer {
            stalled: Some(reason::KILL_SWITCH.into()),
            target_name: "a".into(),
            ..peer("first", 0, Some(Phase::Pending), None)
        };
        let second = Peer {
            stalled: Some(reason::KILL_SWITCH.into()),
            target_name: "b".into(),
            ..peer("second", 5, Some(Phase::Pending), None)
        };
        let peers = [first.clone(), second.clone()];
        assert_eq!(reason_of(&first, &peers, &l, 10), None);
        assert_eq!(reason_of(&second, &peers, &l, 10), Some(reason::POLICY_CONCURRENCY));
    }

    #[test]
    fn a_re_tested_or_deferred_deploy_waits_for_a_slot_again() {
        use crate::api::remediation::StepRecord;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let record = |step, attempt, state, category| StepRecord {
            step,
            attempt,
            state,
            category,
            message: None,
            started_at: Time(at(0)),
            finished_at: Some(Time(at(1))),
        };
        let mut s = RemediationStatus { phase: Phase::Deploying, ..Default::default() };
        assert_eq!(deploy_slot(&s), DeploySlot::Waiting, "nothing started");
        s.push_step(record(Step::Snapshot, 1, StepState::Started, None));
        assert_eq!(deploy_slot(&s), DeploySlot::Holding, "its snapshot under way");
        s.push_step(record(Step::Snapshot, 1, StepState::Cancelled, None));
        assert_eq!(deploy_slot(&s), DeploySlot::Waiting, "withdrawn by a re-test");
        s.deploy =
            Some(serde_json::from_value(serde_json::json!({"previous": {}, "previousResourceVersion": "1"})).unwrap());
        s.push_step(record(Step::Snapshot, 2, StepState::Succeeded, None));
        assert_eq!(deploy_slot(&s), DeploySlot::Holding);
        s.push_step(record(Step::Deploy, 1, StepState::Failed, Some(ErrorCategory::Deferred)));
        assert_eq!(deploy_slot(&s), DeploySlot::Waiting, "deferred: the slot is given back");
        s.push_step(record(Step::Deploy, 2, StepState::Started, None));
        assert_eq!(deploy_slot(&s), DeploySlot::Holding);
    }

    #[test]
    fn the_same_creation_second_is_ordered_by_name_and_other_namespaces_do_not_count() {
        let mut l = limits();
        l.max_remediations = 100;
        let a = Peer { target_name: "a".into(), ..peer("a", 0, None, None) };
        let b = Peer { target_name: "b".into(), ..peer("b", 0, None, None) };
        let peers = [a.clone(), b.clone()];
        assert_eq!(reason_of(&a, &peers, &l, 1), None);
        assert_eq!(reason_of(&b, &peers, &l, 1), Some(reason::POLICY_CONCURRENCY));
        let a_elsewhere = Peer { namespace: "other".into(), ..a };
        assert_eq!(reason_of(&b, &[a_elsewhere, b.clone()], &l, 1), None);
    }
}
