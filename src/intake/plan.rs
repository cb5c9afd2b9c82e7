//! The pure core of intake: what a delivery means, given the policies and the Remediations
//! that already exist.
//!
//! Contract: for each alert, every matching policy (alert name, Alertmanager matchers, and
//! scope — the alert's `namespace` label must be the policy's namespace) resolves a target.
//! Then, per (policy, target): an *active* (non-terminal) Remediation is observed again (a
//! repeat, a second Alertmanager replica, another alert of the same incident) — never a
//! second one; a resolved alert marks it resolved; otherwise a new one is created, unless
//! the kill switch, `suspend`, the cooldown after the last one finished, the policy's rate
//! limit (`maxRemediations` per `window`) or its concurrency limit says no — each a named
//! suppression reason. Names are deterministic (`<policy>-<target>-<n>`), so concurrent
//! deliveries computing the same action collide on create instead of duplicating.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sha2::{Digest, Sha256};

use super::payload::{Alert, Payload};
use std::collections::BTreeMap;

use crate::api::remediation::{AlertRef, Phase, RemediationSpec, TargetRef};
use crate::api::template::is_dns_subdomain;
use crate::api::validate::ValidPolicy;
use crate::api::{LocalObjectRef, TargetKind};

/// A policy as intake sees it.
#[derive(Clone, Debug)]
pub struct PolicyRef {
    pub namespace: String,
    pub name: String,
    pub policy: ValidPolicy,
}

/// A Remediation as intake sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Existing {
    pub namespace: String,
    pub name: String,
    pub policy: String,
    pub target: String,
    pub seq: u32,
    /// None until the controller first writes status.
    pub phase: Option<Phase>,
    pub created: Timestamp,
    pub finished: Option<Timestamp>,
    /// The fingerprint of the alert that created it.
    pub fingerprint: String,
    /// It ended Cancelled because its playbook did not apply (reason NotApplicable): its
    /// policy stood aside, and another policy on the same alert may act.
    pub stood_aside: bool,
    /// When the occurrence of the alert that created it started (whole seconds).
    pub alert_started: Timestamp,
}

impl Existing {
    /// One being created at `now`.
    pub fn creating(
        namespace: &str,
        name: &str,
        policy: &str,
        target: &str,
        fingerprint: &str,
        now: Timestamp,
    ) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            policy: policy.to_owned(),
            target: target.to_owned(),
            seq: seq_of(name),
            phase: None,
            created: now,
            finished: None,
            stood_aside: false,
            alert_started: now,
            fingerprint: fingerprint.to_owned(),
        }
    }

    fn active(&self) -> bool {
        self.phase.is_none_or(|p| !p.is_terminal())
    }
}

/// Why an alert did not become a Remediation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Suppression {
    KillSwitch,
    Suspended,
    Cooldown,
    RateLimited,
    Concurrency,
    /// Another policy's Remediation is already working on this target.
    TargetBusy,
    /// The policy stood aside for this occurrence of the alert (its playbook did not apply).
    StoodAside,
}

impl Suppression {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KillSwitch => "kill_switch",
            Self::Suspended => "suspended",
            Self::Cooldown => "cooldown",
            Self::RateLimited => "rate_limited",
            Self::Concurrency => "concurrency",
            Self::TargetBusy => "target_busy",
            Self::StoodAside => "stood_aside",
        }
    }
}

/// One alert (by fingerprint) and when its current occurrence started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Occurrence {
    pub fingerprint: String,
    pub starts_at: Timestamp,
}

/// One thing to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Create {
        namespace: String,
        name: String,
        policy: String,
        target: String,
        spec: Box<RemediationSpec>,
        seen: Timestamp,
        alert: Occurrence,
    },
    /// Seen again while active.
    Observe {
        namespace: String,
        name: String,
        seen: Timestamp,
        alert: Occurrence,
    },
    /// Alertmanager says this alert resolved (the Remediation's alert resolves when all
    /// of its alerts have).
    Resolve {
        namespace: String,
        name: String,
        at: Timestamp,
        alert: Occurrence,
    },
    Suppress {
        namespace: String,
        policy: String,
        target: String,
        reason: Suppression,
        detail: String,
    },
}

/// The outcome of planning a delivery.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Planned {
    pub actions: Vec<Action>,
    /// Alerts no policy matched.
    pub unmatched: usize,
    /// Why a matching policy could not act (missing label, bad name).
    pub problems: Vec<String>,
    /// Alerts whose target could not be resolved from their labels, per policy.
    pub unresolved: Vec<UnresolvedTarget>,
}

/// A matching policy found no target it acts on for an alert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnresolvedTarget {
    /// The policy's namespace.
    pub namespace: String,
    /// The policy.
    pub policy: String,
    /// The alert's name.
    pub alert: String,
    /// A short machine reason (see `resolve::Unresolved`).
    pub reason: &'static str,
    /// Why.
    pub message: String,
}

/// Targets resolved before planning (by reading the cluster) for the policies that name kinds
/// instead of a name template: (policy namespace, policy name, alert fingerprint) → the target,
/// or why there is none.
pub type Resolved = BTreeMap<(String, String, String), Result<(TargetKind, String), super::resolve::Unresolved>>;

/// Labels intake puts on the Remediations it creates.
pub const POLICY_LABEL: &str = "reflex.dev/policy";
pub const TARGET_LABEL: &str = "reflex.dev/target";

/// `<policy>-<target>-<n>`, shortened with a hash when too long for an object name.
pub fn remediation_name(policy: &str, target: &str, seq: u32) -> String {
    let name = format!("{policy}-{target}-{seq}");
    if name.len() <= 253 {
        return name;
    }
    let hash: String =
        Sha256::digest(format!("{policy}/{target}").as_bytes()).iter().take(5).map(|b| format!("{b:02x}")).collect();
    format!("{}-{hash}-{seq}", &policy[..policy.len().min(200)])
}

fn spec(pr: &PolicyRef, a: &Alert, kind: TargetKind, target: &str, starts_at: Timestamp) -> RemediationSpec {
    RemediationSpec {
        policy_ref: LocalObjectRef { name: pr.name.clone() },
        alert: AlertRef {
            name: a.labels.get("alertname").cloned().unwrap_or_default(),
            fingerprint: a.fingerprint.clone(),
            labels: a.labels.clone(),
            annotations: a.annotations.clone(),
            starts_at: Time(starts_at),
            generator_url: a.generator_url.clone(),
        },
        target: TargetRef { api_version: kind.api_version().to_owned(), kind, name: target.to_owned() },
        cancel: false,
    }
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

fn all<'a>(existing: &'a [Existing], added: &'a [Existing]) -> impl Iterator<Item = &'a Existing> {
    existing.iter().chain(added)
}

/// Decide what a validated delivery means at `now` (for policies with name templates only).
pub fn plan(p: &Payload, policies: &[PolicyRef], existing: &[Existing], kill_switch: bool, now: Timestamp) -> Planned {
    plan_with(p, policies, existing, &Resolved::new(), kill_switch, now)
}

/// Whether `pr` resolves its target from the alert's labels (rather than a name template).
pub fn resolves(pr: &PolicyRef) -> bool {
    pr.policy.target_name.is_none()
}

/// Whether alert `a` is one `pr` acts on: its name, its matchers, and its `namespace` label in
/// the policy's namespace.
pub fn matches(pr: &PolicyRef, a: &Alert) -> bool {
    let alertname = a.labels.get("alertname").cloned().unwrap_or_default();
    a.labels.get("namespace") == Some(&pr.namespace)
        && pr.policy.alertnames.contains(&alertname)
        && pr.policy.matchers.iter().all(|m| m.matches(&a.labels))
}

/// [`plan`], with the targets `resolved` before planning for the policies that need it.
pub fn plan_with(
    p: &Payload,
    policies: &[PolicyRef],
    existing: &[Existing],
    resolved: &Resolved,
    kill_switch: bool,
    now: Timestamp,
) -> Planned {
    let mut out = Planned::default();
    // What this delivery decides to create, on top of what exists.
    let mut added: Vec<Existing> = Vec::new();
    for a in &p.alerts {
        let alertname = a.labels.get("alertname").cloned().unwrap_or_default();
        let mut matched = false;
        for pr in policies {
            let pol = &pr.policy;
            if !matches(pr, a) {
                continue;
            }
            matched = true;
            let (kind, name) = match (&pol.target_name, pol.target_kinds.first()) {
                (Some(template), Some(kind)) => match template.render(&a.labels) {
                    Ok(t) => (*kind, t),
                    Err(e) => {
                        out.problems.push(format!(
                            "policy {}/{}: alert {alertname} ({}): {e}",
                            pr.namespace, pr.name, a.fingerprint
                        ));
                        continue;
                    }
                },
                _ => match resolved.get(&(pr.namespace.clone(), pr.name.clone(), a.fingerprint.clone())) {
                    // Only a kind the policy acts on, whatever the resolution says.
                    Some(Ok((kind, name))) if pol.acts_on(*kind) => (*kind, name.clone()),
                    // A resolution needs no read: the Remediation is found by the alert's
                    // fingerprint (the Pod it named is often gone by now).
                    _ if a.status == "resolved" => {
                        let by_alert = all(existing, &added).find(|e| {
                            e.namespace == pr.namespace
                                && e.policy == pr.name
                                && e.fingerprint == a.fingerprint
                                && e.active()
                        });
                        if let Some(e) = by_alert {
                            out.actions.push(Action::Resolve {
                                namespace: e.namespace.clone(),
                                name: e.name.clone(),
                                at: a.ends_at().unwrap_or(now),
                                alert: Occurrence {
                                    fingerprint: a.fingerprint.clone(),
                                    starts_at: a.starts_at.parse::<Timestamp>().unwrap_or(now),
                                },
                            });
                        }
                        continue;
                    }
                    other => {
                        let (reason, message) = match other {
                            Some(Err(why)) => (why.reason, why.message.clone()),
                            Some(Ok((kind, name))) => (
                                "KindNotActedOn",
                                format!("{} {name} is not a kind the policy acts on ({})", kind.as_str(), pol.kinds()),
                            ),
                            None => ("ReadFailed", "its target was not resolved".to_owned()),
                        };
                        out.unresolved.push(UnresolvedTarget {
                            namespace: pr.namespace.clone(),
                            policy: pr.name.clone(),
                            alert: alertname.clone(),
                            reason,
                            message,
                        });
                        continue;
                    }
                },
            };
            // What identifies the target among the policy's Remediations (label, name): its name,
            // and for a policy acting on several kinds the kind too (a Deployment and its HPA
            // usually share a name).
            let target = if pol.target_name.is_some() { name.clone() } else { format!("{}.{name}", short_kind(kind)) };
            let same = |e: &&Existing| e.namespace == pr.namespace && e.policy == pr.name && e.target == target;
            let starts_at = a.starts_at.parse::<Timestamp>().unwrap_or(now);
            let occurrence = Occurrence { fingerprint: a.fingerprint.clone(), starts_at };
            let active = all(existing, &added).filter(same).find(|e| e.active()).cloned();
            if a.status == "resolved" {
                if let Some(e) = active {
                    out.actions.push(Action::Resolve {
                        namespace: e.namespace,
                        name: e.name,
                        at: a.ends_at().unwrap_or(now),
                        alert: occurrence,
                    });
                }
                continue;
            }
            if let Some(e) = active {
                out.actions.push(Action::Observe {
                    namespace: e.namespace,
                    name: e.name,
                    seen: now,
                    alert: occurrence,
                });
                continue;
            }
            let suppress = |reason, detail: String| Action::Suppress {
                namespace: pr.namespace.clone(),
                policy: pr.name.clone(),
                target: target.clone(),
                reason,
                detail,
            };
            let of_policy: Vec<&Existing> =
                all(existing, &added).filter(|e| e.namespace == pr.namespace && e.policy == pr.name).collect();
            let last_finished = all(existing, &added).filter(same).filter_map(|e| e.finished).max();
            let recent =
                of_policy.iter().filter(|e| now.duration_since(e.created).unsigned_abs() < pol.limits.window).count();
            let running = of_policy.iter().filter(|e| e.active()).count();
            let busy = all(existing, &added)
                .find(|e| e.namespace == pr.namespace && e.target == target && e.policy != pr.name && e.active())
                .map(|e| e.name.clone());
            // Stood aside for this occurrence: trying again would only stand aside again (and,
            // with no cooldown, loop); another occurrence of the alert is tried afresh.
            let stood_aside = all(existing, &added)
                .filter(same)
                .find(|e| {
                    // The same occurrence: one start, compared to the second (a Kubernetes
                    // timestamp keeps whole seconds; Prometheus's has fractions).
                    e.stood_aside
                        && e.fingerprint == a.fingerprint
                        && e.alert_started.as_second() == starts_at.as_second()
                })
                .map(|e| e.name.clone());
            let action = if kill_switch {
                suppress(Suppression::KillSwitch, "the global kill switch is on".into())
            } else if let Some(name) = stood_aside {
                suppress(
                    Suppression::StoodAside,
                    format!("{name} found its playbook does not apply to this alert; another policy may act"),
                )
            } else if pol.limits.suspend {
                suppress(Suppression::Suspended, format!("policy {} is suspended", pr.name))
            } else if let Some(done) =
                last_finished.filter(|t| now.duration_since(*t).unsigned_abs() < pol.limits.cooldown)
            {
                let left = pol.limits.cooldown.saturating_sub(now.duration_since(done).unsigned_abs());
                suppress(
                    Suppression::Cooldown,
                    format!(
                        "{target} was remediated {} ago; cooldown {} ({} left)",
                        secs(now.duration_since(done).unsigned_abs()),
                        secs(pol.limits.cooldown),
                        secs(left)
                    ),
                )
            } else if recent >= pol.limits.max_remediations as usize {
                suppress(
                    Suppression::RateLimited,
                    format!(
                        "{recent} remediations within {} (limit {})",
                        secs(pol.limits.window),
                        pol.limits.max_remediations
                    ),
                )
            } else if running >= pol.limits.max_concurrent as usize {
                suppress(
                    Suppression::Concurrency,
                    format!("{running} remediations in progress (limit {})", pol.limits.max_concurrent),
                )
            } else if let Some(other) = busy {
                suppress(Suppression::TargetBusy, format!("{other} (another policy) is already remediating {target}"))
            } else {
                // Sequence numbers come from names anyone who may create a Remediation can
                // choose: one at u32::MAX names no next one, and says so.
                let Some(seq) = all(existing, &added).filter(same).map(|e| e.seq).max().unwrap_or(0).checked_add(1)
                else {
                    out.problems.push(format!(
                        "policy {}/{}: the Remediations of {target} are numbered up to {}; no next number",
                        pr.namespace,
                        pr.name,
                        u32::MAX
                    ));
                    continue;
                };
                let rem_name = remediation_name(&pr.name, &target, seq);
                if !is_dns_subdomain(&rem_name) {
                    out.problems
                        .push(format!("policy {}/{}: {rem_name:?} is not a valid object name", pr.namespace, pr.name));
                    continue;
                }
                added.push(Existing::creating(&pr.namespace, &rem_name, &pr.name, &target, &a.fingerprint, now));
                Action::Create {
                    namespace: pr.namespace.clone(),
                    name: rem_name,
                    policy: pr.name.clone(),
                    target: target.clone(),
                    spec: Box::new(spec(pr, a, kind, &name, starts_at)),
                    seen: now,
                    alert: occurrence,
                }
            };
            out.actions.push(action);
        }
        if !matched {
            out.unmatched += 1;
        }
    }
    out
}

/// A kind's short name (kubectl's), for target keys.
fn short_kind(kind: TargetKind) -> &'static str {
    match kind {
        TargetKind::Deployment => "deploy",
        TargetKind::StatefulSet => "sts",
        TargetKind::DaemonSet => "ds",
        TargetKind::ConfigMap => "cm",
        TargetKind::HorizontalPodAutoscaler => "hpa",
        TargetKind::Job => "job",
        TargetKind::CronJob => "cj",
    }
}

fn seq_of(name: &str) -> u32 {
    name.rsplit('-').next().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Whether `r` ended Cancelled because its playbook did not apply.
pub fn stood_aside(r: &crate::api::remediation::Remediation) -> bool {
    r.status.as_ref().is_some_and(|s| {
        s.phase == Phase::Cancelled
            && s.conditions.iter().any(|c| c.reason == crate::api::conditions::reason::NOT_APPLICABLE)
    })
}

/// Index existing Remediations by their intake labels.
pub fn existing_from(rems: &[crate::api::remediation::Remediation]) -> Vec<Existing> {
    rems.iter()
        .filter_map(|r| {
            let labels = r.metadata.labels.as_ref()?;
            let name = r.metadata.name.clone()?;
            let seq = seq_of(&name);
            Some(Existing {
                namespace: r.metadata.namespace.clone()?,
                name,
                policy: labels.get(POLICY_LABEL)?.clone(),
                target: labels.get(TARGET_LABEL)?.clone(),
                seq,
                phase: r.status.as_ref().map(|s| s.phase),
                created: r.metadata.creation_timestamp.as_ref().map_or(Timestamp::UNIX_EPOCH, |t| t.0),
                finished: r.status.as_ref().and_then(|s| s.finished_at.as_ref()).map(|t| t.0),
                fingerprint: r.spec.alert.fingerprint.clone(),
                stood_aside: stood_aside(r),
                alert_started: r.spec.alert.starts_at.0,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::policy::RemediationPolicySpec;
    use serde_json::json;

    fn policy(ns: &str, limits: serde_json::Value) -> PolicyRef {
        let spec: RemediationPolicySpec = serde_json::from_value(json!({
            "match": {"alertnames": ["KubeContainerOOMKilled"], "matchers": ["severity=~\"warning|critical\""]},
            "target": {"kind": "Deployment", "name": "{{ labels.deployment }}"},
            "playbook": "raise-memory-limit",
            "trust": {"level": "auto"},
            "limits": limits,
            "verify": {"query": "x", "operator": "<", "threshold": 1, "for": "2s", "timeout": "30s", "interval": "1s"}
        }))
        .unwrap();
        PolicyRef { namespace: ns.into(), name: "checkout-oom".into(), policy: ValidPolicy::from_spec(&spec).unwrap() }
    }

    fn alert(status: &str, pod: &str) -> serde_json::Value {
        json!({"status": status, "labels": {"alertname": "KubeContainerOOMKilled", "namespace": "shop", "deployment": "checkout", "pod": pod, "severity": "critical"},
            "startsAt": "2026-01-01T00:00:00Z", "fingerprint": format!("f{pod}")})
    }

    fn payload(alerts: Vec<serde_json::Value>) -> Payload {
        serde_json::from_value(json!({"version": "4", "status": "firing", "alerts": alerts})).unwrap()
    }

    fn now() -> Timestamp {
        "2026-01-01T01:00:00Z".parse().unwrap()
    }

    fn existing(seq: u32, phase: Option<Phase>, finished_ago: Option<i64>) -> Existing {
        Existing {
            namespace: "shop".into(),
            name: remediation_name("checkout-oom", "checkout", seq),
            policy: "checkout-oom".into(),
            target: "checkout".into(),
            seq,
            phase,
            created: now().checked_sub(jiff::SignedDuration::from_secs(3000)).unwrap(),
            finished: finished_ago.map(|s| now().checked_sub(jiff::SignedDuration::from_secs(s)).unwrap()),
            fingerprint: format!("f{seq}"),
            stood_aside: false,
            alert_started: "2026-01-01T00:00:00Z".parse().unwrap(),
        }
    }

    #[test]
    fn a_policy_that_stood_aside_is_not_retried_for_the_same_occurrence_of_the_alert() {
        let pols = [policy("shop", json!({"cooldown": "0s"}))];
        let aside =
            Existing { stood_aside: true, fingerprint: "fa".into(), ..existing(1, Some(Phase::Cancelled), Some(5)) };
        let again = plan(&payload(vec![alert("firing", "a")]), &pols, std::slice::from_ref(&aside), false, now());
        assert_eq!(kinds(&again), ["suppress stood_aside"], "no loop, even with no cooldown");
        // A new occurrence (it resolved and fired again) is tried afresh.
        let mut refired = alert("firing", "a");
        refired["startsAt"] = json!("2026-01-01T00:59:00Z");
        let fresh = plan(&payload(vec![refired]), &pols, &[aside], false, now());
        assert_eq!(kinds(&fresh), ["create checkout-oom-checkout-2"]);
    }

    fn kinds(p: &Planned) -> Vec<String> {
        p.actions
            .iter()
            .map(|a| match a {
                Action::Create { name, .. } => format!("create {name}"),
                Action::Observe { name, .. } => format!("observe {name}"),
                Action::Resolve { name, .. } => format!("resolve {name}"),
                Action::Suppress { reason, .. } => format!("suppress {}", reason.as_str()),
            })
            .collect()
    }

    #[test]
    fn one_active_remediation_per_policy_and_target() {
        let pols = [policy("shop", json!({})), policy("other", json!({}))];
        // Two pods of the same deployment in one delivery: one Remediation, seen twice.
        let p = plan(&payload(vec![alert("firing", "a"), alert("firing", "b")]), &pols, &[], false, now());
        assert_eq!(kinds(&p), ["create checkout-oom-checkout-1", "observe checkout-oom-checkout-1"]);
        // A repeat while it is active is an observation, not a second one.
        let active = [existing(1, Some(Phase::Verifying), None)];
        assert_eq!(
            kinds(&plan(&payload(vec![alert("firing", "a")]), &pols, &active, false, now())),
            ["observe checkout-oom-checkout-1"]
        );
        // Resolution reaches the active one.
        assert_eq!(
            kinds(&plan(&payload(vec![alert("resolved", "a")]), &pols, &active, false, now())),
            ["resolve checkout-oom-checkout-1"]
        );
        // After it finished and the cooldown passed: the next one in sequence.
        let done = [existing(1, Some(Phase::Succeeded), Some(7200))];
        assert_eq!(
            kinds(&plan(&payload(vec![alert("firing", "a")]), &pols, &done, false, now())),
            ["create checkout-oom-checkout-2"]
        );
    }

    #[test]
    fn suppressions_are_named() {
        let p = |limits, ex: &[Existing], kill| {
            kinds(&plan(&payload(vec![alert("firing", "a")]), &[policy("shop", limits)], ex, kill, now()))
        };
        assert_eq!(p(json!({}), &[], true), ["suppress kill_switch"]);
        assert_eq!(p(json!({"suspend": true}), &[], false), ["suppress suspended"]);
        assert_eq!(
            p(json!({"cooldown": "10m"}), &[existing(1, Some(Phase::Succeeded), Some(60))], false),
            ["suppress cooldown"]
        );
        let many: Vec<Existing> = (1..=3).map(|i| existing(i, Some(Phase::Failed), Some(7200))).collect();
        assert_eq!(
            p(json!({"maxRemediations": {"count": 3, "window": "24h"}}), &many, false),
            ["suppress rate_limited"]
        );
        let mut elsewhere = existing(1, Some(Phase::Verifying), None);
        elsewhere.target = "cart".into();
        assert_eq!(p(json!({"maxConcurrent": 1}), &[elsewhere], false), ["suppress concurrency"]);
        let mut other_policy = existing(1, Some(Phase::Deploying), None);
        other_policy.policy = "checkout-latency".into();
        assert_eq!(p(json!({}), &[other_policy], false), ["suppress target_busy"]);
    }

    #[test]
    fn scope_and_matching() {
        let pols = [policy("other", json!({}))];
        let p = plan(&payload(vec![alert("firing", "a")]), &pols, &[], false, now());
        assert_eq!((p.actions.len(), p.unmatched), (0, 1), "a policy never acts outside its namespace");
        let mut low = alert("firing", "a");
        low["labels"]["severity"] = json!("info");
        assert_eq!(plan(&payload(vec![low]), &[policy("shop", json!({}))], &[], false, now()).unmatched, 1);
        let mut unnamed = alert("firing", "a");
        unnamed["labels"].as_object_mut().unwrap().remove("deployment");
        let p = plan(&payload(vec![unnamed]), &[policy("shop", json!({}))], &[], false, now());
        assert!(p.actions.is_empty() && p.problems[0].contains("deployment"), "{:?}", p.problems);
    }

    #[test]
    fn a_remediation_numbered_u32_max_names_a_problem_instead_of_overflowing() {
        let last = [existing(u32::MAX, Some(Phase::Failed), Some(7200))];
        let p = plan(&payload(vec![alert("firing", "a")]), &[policy("shop", json!({}))], &last, false, now());
        assert!(p.actions.is_empty(), "{:?}", kinds(&p));
        assert!(p.problems.iter().any(|m| m.contains("no next number")), "{:?}", p.problems);
    }

    #[test]
    fn long_names_stay_valid() {
        let name = remediation_name(&"p".repeat(250), &"t".repeat(250), 7);
        assert!(name.len() <= 253 && name.ends_with("-7") && is_dns_subdomain(&name), "{name}");
    }
}
