//! The validation edge: a raw `RemediationPolicy` or `Playbook` spec becomes a validated
//! type exactly once. Every problem is reported with the field path and what to do, all of
//! them at once, so a user fixes a manifest in one round.
//!
//! Contract: pure; never panics on any input. Later stages take [`ValidPolicy`] /
//! [`ValidPlaybook`] and never read the raw spec again.

use std::{collections::HashSet, fmt, time::Duration};

use super::freeze::{FreezeWhen, ValidFreeze, weekday};
use super::quantity::parse_quantity;
use super::{
    DurationString, Environment, TargetKind,
    playbook::{ParameterType, PatchMode, PatchType, PlaybookRollout, PlaybookSpec, ValueSpec},
    policy::{
        AgentMode, CiJobSpec, Comparison, ForgeType, FreezeWindow, GitopsSpec, GuardSpec, McpServerSpec, ModelSpec,
        NotifySpec, RemediationPolicySpec, TrustLevel, VerdictAction, VerifySpec,
    },
};
use super::{matcher::Matcher, template::NameTemplate};

mod gitops;
mod playbook;

use gitops::gitops;
pub use gitops::{Remote, RemoteScheme, ValidCi, ValidGitops, parse_remote};
pub use playbook::{ValidParameter, ValidPlaybook, ValidRollout, ValidWait, ValueRule};

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `spec.verify.for`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Every problem found in one object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", e.field, e.message)?;
        }
        Ok(())
    }
}

impl ValidationErrors {
    /// Whether any error concerns `field` exactly.
    pub fn has(&self, field: &str) -> bool {
        self.0.iter().any(|e| e.field == field)
    }
}

#[derive(Default)]
struct Collector(Vec<FieldError>);

impl Collector {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError { field: field.into(), message: message.into() });
    }

    fn duration(&mut self, field: &str, value: &DurationString) -> Duration {
        value.parse().unwrap_or_else(|e| {
            self.push(field, e.to_string());
            Duration::ZERO
        })
    }

    fn url(&mut self, field: &str, value: &str) {
        if !(value.starts_with("http://") || value.starts_with("https://")) || value.len() <= "https://".len() {
            self.push(field, format!("{value:?} is not an http:// or https:// URL"));
        }
    }

    fn finish<T>(self, value: T) -> Result<T, ValidationErrors> {
        if self.0.is_empty() { Ok(value) } else { Err(ValidationErrors(self.0)) }
    }
}

/// A verification rule with durations read.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidVerify {
    /// PromQL expression; None: derived from the alert's rule when sampled.
    pub query: Option<String>,
    /// Comparison operator.
    pub operator: Comparison,
    /// Threshold.
    pub threshold: f64,
    /// Window the condition must hold for.
    pub for_: Duration,
    /// Deadline for a verdict.
    pub timeout: Duration,
    /// Time between samples.
    pub interval: Duration,
    /// Wait after the rollout before the first sample.
    pub initial_delay: Duration,
    /// Bad samples allowed before Failed (None: only the timeout fails it).
    pub failure_limit: Option<u32>,
    /// No-data samples allowed before Inconclusive (None: only at the timeout).
    pub inconclusive_limit: Option<u32>,
    /// Provider errors in a row allowed before Error.
    pub consecutive_error_limit: u32,
    /// What Inconclusive leads to.
    pub on_inconclusive: VerdictAction,
    /// What Error leads to.
    pub on_error: VerdictAction,
    /// The check is "the expression returns nothing" (an alert's rule, scoped to its
    /// series), not the operator and threshold.
    pub pass_when_empty: bool,
    /// Metrics the fix must not make worse.
    pub guards: Vec<GuardSpec>,
}

impl ValidVerify {
    /// The check when neither the policy nor its playbook says how to verify: the alert's
    /// own rule must stay silent for a minute, within ten.
    pub fn from_alert() -> Self {
        Self {
            query: None,
            operator: Comparison::Less,
            threshold: 0.0,
            for_: Duration::from_secs(60),
            timeout: Duration::from_secs(600),
            interval: Duration::from_secs(15),
            initial_delay: Duration::ZERO,
            failure_limit: None,
            inconclusive_limit: None,
            consecutive_error_limit: 4,
            on_inconclusive: VerdictAction::Escalate,
            on_error: VerdictAction::Escalate,
            pass_when_empty: true,
            guards: Vec::new(),
        }
    }
}

impl ValidVerify {
    /// Whether one value satisfies the condition.
    pub fn holds(&self, value: f64) -> bool {
        match self.operator {
            Comparison::Less => value < self.threshold,
            Comparison::LessOrEqual => value <= self.threshold,
            Comparison::Greater => value > self.threshold,
            Comparison::GreaterOrEqual => value >= self.threshold,
            Comparison::Equal => (value - self.threshold).abs() < f64::EPSILON,
            Comparison::NotEqual => (value - self.threshold).abs() >= f64::EPSILON,
        }
    }
}

fn verify(c: &mut Collector, base: &str, v: &VerifySpec) -> ValidVerify {
    if v.query.as_deref().is_some_and(|q| q.trim().is_empty()) {
        c.push(
            format!("{base}.query"),
            "must be a PromQL expression (or left out, to verify against the alert's own rule)",
        );
    }
    if v.query.is_some() && v.operator.is_none() {
        c.push(format!("{base}.operator"), "is required with query");
    }
    if v.query.is_some() && v.threshold.is_none() {
        c.push(format!("{base}.threshold"), "is required with query");
    }
    // Status keeps MAX_SAMPLES samples: a limit must be reachable within them.
    let most = crate::api::remediation::MAX_SAMPLES as u32 - 1;
    for (field, limit) in [
        ("failureLimit", v.failure_limit),
        ("inconclusiveLimit", v.inconclusive_limit),
        ("consecutiveErrorLimit", Some(v.consecutive_error_limit)),
    ] {
        if limit.is_some_and(|l| l > most) {
            c.push(
                format!("{base}.{field}"),
                format!("must be at most {most} (status keeps the last {} samples)", most + 1),
            );
        }
    }
    for (i, g) in v.guards.iter().enumerate() {
        let at = format!("{base}.guards[{i}]");
        if g.query.trim().is_empty() {
            c.push(format!("{at}.query"), "must be a PromQL expression");
        }
        match (g.max_increase_percent, g.max_increase) {
            (Some(m), None) | (None, Some(m)) if m.is_finite() && m >= 0.0 => {}
            (Some(_), Some(_)) | (None, None) => {
                c.push(at.clone(), "needs exactly one of maxIncreasePercent and maxIncrease");
            }
            _ => c.push(at.clone(), "its margin must be a finite number of at least 0"),
        }
        if v.guards[..i].iter().any(|o| o.name == g.name) {
            c.push(format!("{at}.name"), format!("{:?} is used by another guard", g.name));
        }
    }
    if v.threshold.is_some_and(|t| !t.is_finite()) {
        c.push(format!("{base}.threshold"), "must be a finite number");
    }
    if v.query.is_none() && (v.operator.is_some() || v.threshold.is_some()) {
        c.push(
            format!("{base}.query"),
            "operator and threshold need a query; without one the alert's own rule is the check",
        );
    }
    let for_ = c.duration(&format!("{base}.for"), &v.for_);
    let timeout = c.duration(&format!("{base}.timeout"), &v.timeout);
    let interval = c.duration(&format!("{base}.interval"), &v.interval);
    if for_ > timeout {
        c.push(
            format!("{base}.for"),
            format!("{} is longer than timeout {}: the condition could never hold in time", v.for_, v.timeout),
        );
    }
    if interval > timeout {
        c.push(format!("{base}.interval"), format!("{} is longer than timeout {}", v.interval, v.timeout));
    }
    if interval < Duration::from_secs(1) {
        c.push(format!("{base}.interval"), "must be at least 1s");
    }
    // Status keeps the last MAX_SAMPLES samples; the window must fit in them.
    let most = interval.saturating_mul(crate::api::remediation::MAX_SAMPLES as u32 - 1);
    if interval >= Duration::from_secs(1) && for_ > most {
        c.push(
            format!("{base}.for"),
            format!(
                "{} needs more than {} samples at interval {}: raise the interval to at least {}s",
                v.for_,
                crate::api::remediation::MAX_SAMPLES,
                v.interval,
                for_.as_secs().div_ceil(crate::api::remediation::MAX_SAMPLES as u64 - 1)
            ),
        );
    }
    let initial_delay =
        v.initial_delay.as_ref().map_or(Duration::ZERO, |d| c.duration(&format!("{base}.initialDelay"), d));
    ValidVerify {
        query: v.query.clone(),
        operator: v.operator.unwrap_or(Comparison::Less),
        threshold: v.threshold.unwrap_or(0.0),
        pass_when_empty: false,
        for_,
        timeout,
        interval,
        initial_delay,
        failure_limit: v.failure_limit,
        inconclusive_limit: v.inconclusive_limit,
        consecutive_error_limit: v.consecutive_error_limit,
        on_inconclusive: v.on_inconclusive,
        on_error: v.on_error,
        guards: v.guards.clone(),
    }
}

/// Agent settings with budgets read.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidAgent {
    /// Mode.
    pub mode: AgentMode,
    /// Model; present in the LLM modes.
    pub model: Option<ModelSpec>,
    /// External MCP servers with per-call timeouts.
    pub mcp_servers: Vec<(McpServerSpec, Duration)>,
    /// Most LLM turns.
    pub max_iterations: u32,
    /// Most tokens.
    pub max_tokens: u32,
    /// Most money in US dollars.
    pub max_cost_usd: Option<f64>,
    /// Wall-clock budget.
    pub timeout: Duration,
    /// The policy's instructions for the agent.
    pub instructions: Option<String>,
}

/// Rate limits and retry settings with durations read.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidLimits {
    /// Minimum time between remediations of the same target.
    pub cooldown: Duration,
    /// Remediations allowed per window.
    pub max_remediations: u32,
    /// The window.
    pub window: Duration,
    /// Most in flight at once.
    pub max_concurrent: u32,
    /// Consecutive failures of one step before escalation.
    pub max_attempts: u32,
    /// Wall-clock budget from start until deploy.
    pub max_duration: Duration,
    /// No new remediations.
    pub suspend: bool,
    /// Change-freeze windows.
    pub freeze: Vec<ValidFreeze>,
    /// Failed fixes in a row by one playbook that pause a target.
    pub failed_fixes: u32,
    /// Re-alerted verified fixes in a row that pause a target.
    pub realerts: u32,
    /// How soon after a verified fix a new alert counts against it.
    pub realert_within: Duration,
}

/// Reads one freeze window; every problem is pushed with its field.
fn freeze(c: &mut Collector, field: &str, f: &FreezeWindow) -> Option<ValidFreeze> {
    let zone_name = f.time_zone.as_deref().unwrap_or("UTC");
    let time_zone = match jiff::tz::TimeZone::get(zone_name) {
        Ok(tz) => tz,
        Err(_) => {
            c.push(
                format!("{field}.timeZone"),
                format!("{zone_name:?} is not an IANA time zone (e.g. Europe/Berlin, UTC)"),
            );
            return None;
        }
    };
    let when = match (&f.start, &f.end, f.days.is_empty(), &f.from, &f.to) {
        (Some(start), Some(end), true, None, None) => {
            let parse = |c: &mut Collector, name: &str, v: &str| match v.parse::<jiff::civil::DateTime>() {
                Ok(t) => Some(t),
                Err(_) => {
                    c.push(format!("{field}.{name}"), format!("{v:?} is not a date-time like 2026-12-24T00:00"));
                    None
                }
            };
            let (start, end) = (parse(c, "start", start)?, parse(c, "end", end)?);
            if end <= start {
                c.push(format!("{field}.end"), "must be after start");
                return None;
            }
            FreezeWhen::Between(start, end)
        }
        (None, None, false, Some(from), Some(to)) => {
            let mut days = Vec::new();
            for d in &f.days {
                match weekday(d) {
                    Some(day) => days.push(day),
                    None => c.push(format!("{field}.days"), format!("{d:?} is not a day (Mon … Sun)")),
                }
            }
            let parse = |c: &mut Collector, name: &str, v: &str| match v.parse::<jiff::civil::Time>() {
                Ok(t) => Some(t),
                Err(_) => {
                    c.push(format!("{field}.{name}"), format!("{v:?} is not a time of day like 16:00"));
                    None
                }
            };
            let (from, to) = (parse(c, "from", from)?, parse(c, "to", to)?);
            if from == to || days.len() != f.days.len() {
                if from == to {
                    c.push(format!("{field}.to"), "must differ from from");
                }
                return None;
            }
            FreezeWhen::Weekly(days, from, to)
        }
        _ => {
            c.push(field, "give either start and end, or days with from and to");
            return None;
        }
    };
    Some(ValidFreeze { reason: f.reason.clone(), when, time_zone })
}

/// Trust settings with the window read.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidTrust {
    /// Level.
    pub level: TrustLevel,
    /// Always wait for approval.
    pub require_approval: bool,
    /// Successes needed for production at `auto`.
    pub successes_required: u32,
    /// How far back successes count.
    pub window: Duration,
    /// Distinct approvers a change needs when it waits for approval (at least 1).
    pub required_approvals: u32,
    /// How long a change waits for approval.
    pub approval_timeout: Option<Duration>,
}

/// A policy that passed validation.
#[derive(Clone, Debug)]
pub struct ValidPolicy {
    /// Alert names, any of which matches.
    pub alertnames: Vec<String>,
    /// Label matchers, all of which must hold.
    pub matchers: Vec<Matcher>,
    /// The kinds the policy acts on (one, with a name template).
    pub target_kinds: Vec<TargetKind>,
    /// Target name template; none when the target is resolved from the alert's labels.
    pub target_name: Option<NameTemplate>,
    /// Playbook name.
    pub playbook: Option<String>,
    /// Agent settings.
    pub agent: ValidAgent,
    /// Explicit environment, if set.
    pub environment: Option<Environment>,
    /// Trust.
    pub trust: ValidTrust,
    /// CI.
    pub ci: ValidCi,
    /// Verification override.
    pub verify: Option<ValidVerify>,
    /// Limits.
    pub limits: ValidLimits,
    /// Notification target.
    pub notify: Option<NotifySpec>,
    /// Most time a deployed change may take to roll out.
    pub rollout_timeout: Duration,
    /// Silence the alert while the fix is in flight.
    pub silence_alert: bool,
    /// The delegated diagnosis, with its timeout read.
    pub delegate_diagnose: Option<ValidDelegation>,
    /// The delegated proposal, with its timeout read.
    pub delegate_propose: Option<ValidDelegation>,
}

/// A delegated step with its timeout read.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidDelegation {
    /// The skill the agent must list.
    pub skill: String,
    /// The one agent, as (namespace — none: the policy's —, Service name), when the policy
    /// pins one.
    pub agent: Option<(Option<String>, String)>,
    /// How long the delegate has.
    pub timeout: Duration,
    /// What runs when it fails.
    pub fallback: crate::api::policy::DelegationFallback,
}

/// Longest a delegate may take.
pub const MAX_DELEGATION: Duration = Duration::from_secs(600);

fn delegation(
    c: &mut Collector,
    spec: &RemediationPolicySpec,
    field: &str,
    d: Option<&crate::api::policy::Delegation>,
) -> Option<ValidDelegation> {
    use crate::api::policy::DelegationFallback;
    let d = d?;
    let base = format!("spec.delegate.{field}");
    if d.skill.trim().is_empty() || d.skill.len() > 128 || d.skill.chars().any(char::is_control) {
        c.push(format!("{base}.skill"), "must name a skill (1 to 128 characters, as the agent's card lists it)");
    }
    let is_name = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    let agent = d.agent.as_deref().and_then(|a| {
        let (ns, name) = match a.split_once('/') {
            Some((ns, name)) => (Some(ns), name),
            None => (None, a),
        };
        if ns.is_none_or(is_name) && is_name(name) {
            Some((ns.map(str::to_owned), name.to_owned()))
        } else {
            c.push(format!("{base}.agent"), format!("{a:?} is not a Service name or namespace/name"));
            None
        }
    });
    let timeout = c.duration(&format!("{base}.timeout"), &d.timeout);
    if timeout.is_zero() || timeout > MAX_DELEGATION {
        c.push(format!("{base}.timeout"), "must be longer than zero and at most 10m");
    }
    match d.fallback {
        DelegationFallback::Playbook if spec.playbook.as_deref().is_none_or(str::is_empty) => {
            c.push(format!("{base}.fallback"), "playbook needs spec.playbook");
        }
        DelegationFallback::Llm if spec.agent.model.is_none() => {
            c.push(format!("{base}.fallback"), "llm needs spec.agent.model");
        }
        _ => {}
    }
    Some(ValidDelegation { skill: d.skill.clone(), agent, timeout, fallback: d.fallback })
}

impl ValidPolicy {
    /// Whether the policy acts on objects of `kind`.
    pub fn acts_on(&self, kind: TargetKind) -> bool {
        self.target_kinds.contains(&kind)
    }

    /// The kinds it acts on, as a person reads them (`Deployment or StatefulSet`).
    pub fn kinds(&self) -> String {
        self.target_kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(" or ")
    }

    /// Validates a policy spec.
    ///
    /// # Errors
    /// [`ValidationErrors`] listing every bad field.
    pub fn from_spec(spec: &RemediationPolicySpec) -> Result<Self, ValidationErrors> {
        let mut c = Collector::default();

        if spec.match_.alertnames.is_empty() {
            c.push("spec.match.alertnames", "list at least one alert name");
        }
        for (i, name) in spec.match_.alertnames.iter().enumerate() {
            if name.trim().is_empty() {
                c.push(format!("spec.match.alertnames[{i}]"), "must not be empty");
            }
        }
        let matchers = spec
            .match_
            .matchers
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                Matcher::parse(m).map_err(|e| c.push(format!("spec.match.matchers[{i}]"), format!("{m:?}: {e}"))).ok()
            })
            .collect();

        let t = &spec.target;
        let (target_kinds, target_name) = match (t.kind, &t.name, t.kinds.is_empty()) {
            (Some(kind), Some(name), true) => {
                let parsed = NameTemplate::parse(name).map_err(|e| c.push("spec.target.name", e.to_string())).ok();
                (vec![kind], parsed)
            }
            (None, None, false) => {
                let mut kinds = t.kinds.clone();
                kinds.sort_by_key(|k| k.as_str());
                kinds.dedup();
                if kinds.contains(&TargetKind::ConfigMap) {
                    c.push(
                        "spec.target.kinds",
                        "a ConfigMap is not resolved from an alert's labels; give kind and name",
                    );
                }
                (kinds, None)
            }
            _ => {
                c.push("spec.target", "give kind and name, or kinds (resolved from the alert's labels), not both");
                (vec![], None)
            }
        };

        if spec.agent.mode != AgentMode::Llm && spec.playbook.as_deref().is_none_or(str::is_empty) {
            c.push("spec.playbook", "name a Playbook (required unless agent.mode is llm)");
        }
        let agent = agent(&mut c, spec);
        let delegate = spec.delegate.clone().unwrap_or_default();
        let delegate_diagnose = delegation(&mut c, spec, "diagnose", delegate.diagnose.as_ref());
        let delegate_propose = delegation(&mut c, spec, "propose", delegate.propose.as_ref());

        let trust = ValidTrust {
            level: spec.trust.level,
            require_approval: spec.trust.require_approval,
            successes_required: spec.trust.earned_trust.successes_required,
            window: c.duration("spec.trust.earnedTrust.window", &spec.trust.earned_trust.window),
            required_approvals: spec.trust.required_approvals.unwrap_or(1),
            approval_timeout: spec.trust.approval_timeout.as_ref().map(|t| c.duration("spec.trust.approvalTimeout", t)),
        };
        if let Some(kind) = target_kinds.iter().find(|k| k.diagnosed_only())
            && trust.level != TrustLevel::Observe
        {
            c.push(
                "spec.trust.level",
                format!("a {kind} has no mechanical fix and Reflex never changes one: a policy on it must be at trust level observe (diagnose and report)"),
            );
        }
        if trust.required_approvals == 0 || trust.required_approvals > 10 {
            c.push("spec.trust.requiredApprovals", "must be between 1 and 10");
        }
        if trust.approval_timeout.is_some_and(|t| t.is_zero()) {
            c.push(
                "spec.trust.approvalTimeout",
                "must be longer than zero (leave it unset to wait until limits.maxDuration)",
            );
        }
        if trust.successes_required == 0 {
            c.push("spec.trust.earnedTrust.successesRequired", "must be at least 1");
        }

        if !spec.ci.dry_run {
            c.push("spec.ci.dryRun", "cannot be disabled: every patch is dry-run on the API server");
        }
        let ci = match (&spec.ci.job, &spec.ci.gitops) {
            (Some(_), Some(_)) => {
                c.push("spec.ci", "choose at most one of job and gitops");
                ValidCi::DryRunOnly
            }
            (Some(job), None) => {
                if job.command.is_empty() {
                    c.push("spec.ci.job.command", "give the command that runs the test");
                }
                if job.image.trim().is_empty() || job.image.chars().any(char::is_whitespace) {
                    c.push("spec.ci.job.image", "must name a container image");
                }
                let mut names = std::collections::BTreeSet::new();
                for (i, var) in job.env.iter().enumerate() {
                    let ident = var.name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && var.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if !ident {
                        c.push(
                            format!("spec.ci.job.env[{i}].name"),
                            format!(
                                "{:?} is not a variable name (letters, digits and _, not starting with a digit)",
                                var.name
                            ),
                        );
                    } else if var.name.starts_with("REFLEX_") {
                        c.push(
                            format!("spec.ci.job.env[{i}].name"),
                            format!("{:?}: names starting with REFLEX_ are set by Reflex itself", var.name),
                        );
                    } else if !names.insert(var.name.as_str()) {
                        c.push(format!("spec.ci.job.env[{i}].name"), format!("{:?} is set twice", var.name));
                    }
                }
                ValidCi::Job(job.clone(), c.duration("spec.ci.job.timeout", &job.timeout))
            }
            (None, Some(g)) => match gitops(&mut c, g) {
                Some(valid) => ValidCi::Gitops(Box::new(valid)),
                None => ValidCi::DryRunOnly,
            },
            (None, None) => ValidCi::DryRunOnly,
        };

        let verify = spec.verify.as_ref().map(|v| verify(&mut c, "spec.verify", v));

        let l = &spec.limits;
        let limits = ValidLimits {
            cooldown: c.duration("spec.limits.cooldown", &l.cooldown),
            max_remediations: l.max_remediations.count,
            window: c.duration("spec.limits.maxRemediations.window", &l.max_remediations.window),
            max_concurrent: l.max_concurrent,
            max_attempts: l.max_attempts,
            max_duration: c.duration("spec.limits.maxDuration", &l.max_duration),
            suspend: l.suspend,
            freeze: l
                .freeze
                .iter()
                .enumerate()
                .filter_map(|(i, f)| freeze(&mut c, &format!("spec.limits.freeze[{i}]"), f))
                .collect(),
            failed_fixes: l.ineffective.failed_fixes.max(1),
            realerts: l.ineffective.realerts.max(1),
            realert_within: c.duration("spec.limits.ineffective.realertWithin", &l.ineffective.realert_within),
        };
        if l.max_remediations.count == 0 {
            c.push("spec.limits.maxRemediations.count", "must be at least 1 (use suspend to stop all remediations)");
        }
        if l.max_concurrent == 0 {
            c.push("spec.limits.maxConcurrent", "must be at least 1 (use suspend to stop all remediations)");
        }
        if !(1..=10).contains(&l.max_attempts) {
            c.push("spec.limits.maxAttempts", "must be between 1 and 10");
        }
        if limits.max_duration.is_zero() {
            c.push("spec.limits.maxDuration", "must be longer than 0s");
        }

        if let Some(n) = &spec.notify
            && (n.webhook_secret_ref.name.is_empty() || n.webhook_secret_ref.key.is_empty())
        {
            c.push("spec.notify.webhookSecretRef", "needs both name and key");
        }

        let rollout_timeout = match &spec.rollout {
            Some(r) => c.duration("spec.rollout.timeout", &r.timeout),
            None => Duration::from_secs(600),
        };
        if rollout_timeout.is_zero() {
            c.push("spec.rollout.timeout", "must be longer than 0s");
        }

        c.finish(Self {
            alertnames: spec.match_.alertnames.clone(),
            matchers,
            target_kinds,
            target_name,
            playbook: spec.playbook.clone(),
            agent,
            environment: spec.environment,
            trust,
            ci,
            verify,
            limits,
            notify: spec.notify.clone(),
            rollout_timeout,
            silence_alert: spec.silence_alert,
            delegate_diagnose,
            delegate_propose,
        })
    }
}

fn agent(c: &mut Collector, spec: &RemediationPolicySpec) -> ValidAgent {
    let a = &spec.agent;
    if a.mode != AgentMode::Playbook && a.model.is_none() {
        c.push("spec.agent.model", "required when agent.mode is llm or llm-then-playbook");
    }
    if let Some(m) = &a.model {
        c.url("spec.agent.model.endpoint", &m.endpoint);
        if m.model.trim().is_empty() {
            c.push("spec.agent.model.model", "must name the model");
        }
    }
    let mut names = HashSet::new();
    let mut servers = Vec::new();
    for (i, s) in a.mcp_servers.iter().enumerate() {
        let base = format!("spec.agent.mcpServers[{i}]");
        if !names.insert(s.name.as_str()) {
            c.push(format!("{base}.name"), format!("{:?} is listed twice", s.name));
        }
        c.url(&format!("{base}.url"), &s.url);
        let mut tools = HashSet::new();
        for (j, t) in s.tools.iter().enumerate() {
            if !tools.insert(t.name.as_str()) {
                c.push(format!("{base}.tools[{j}].name"), format!("{:?} is listed twice", t.name));
            }
            if let Some(h) = &t.schema_hash {
                let ok = h.strip_prefix("sha256:").is_some_and(|hex| {
                    hex.len() == 64 && hex.chars().all(|ch| ch.is_ascii_hexdigit() && !ch.is_ascii_uppercase())
                });
                if !ok {
                    c.push(
                        format!("{base}.tools[{j}].schemaHash"),
                        "must be sha256: followed by 64 lowercase hex digits",
                    );
                }
            }
        }
        if s.tools.is_empty() {
            c.push(format!("{base}.tools"), "allow at least one tool");
        }
        let timeout = c.duration(&format!("{base}.timeout"), &s.timeout);
        servers.push((s.clone(), timeout));
    }
    let max_cost_usd = a.max_cost_usd.as_ref().and_then(|s| match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Some(v),
        _ => {
            c.push("spec.agent.maxCostUSD", format!("{s:?} is not a positive decimal amount such as \"0.50\""));
            None
        }
    });
    if a.max_iterations == 0 {
        c.push("spec.agent.maxIterations", "must be at least 1");
    }
    ValidAgent {
        mode: a.mode,
        model: a.model.clone(),
        mcp_servers: servers,
        max_iterations: a.max_iterations,
        max_tokens: a.max_tokens,
        max_cost_usd,
        timeout: c.duration("spec.agent.timeout", &a.timeout),
        instructions: a.instructions.clone().filter(|i| !i.trim().is_empty()),
    }
}
