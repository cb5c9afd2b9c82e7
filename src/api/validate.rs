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

/// CI settings.
#[derive(Clone, Debug, PartialEq)]
pub enum ValidCi {
    /// Safety check and server-side dry-run only.
    DryRunOnly,
    /// Plus a test Job.
    Job(CiJobSpec, Duration),
    /// Plus a pull request and its checks; the deploy is its merge.
    Gitops(Box<ValidGitops>),
}

/// How git reaches a GitOps repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteScheme {
    /// `https://` (a token from the credentials Secret).
    Https,
    /// `ssh://` or `user@host:path` (a key from the credentials Secret).
    Ssh,
    /// `file://`: a repository on the operator's own filesystem — refused unless the operator
    /// runs with `--allow-local-repositories` (tests and the demo).
    File,
}

/// A GitOps repository location, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    /// How git reaches it.
    pub scheme: RemoteScheme,
    /// The URL as written, for git.
    pub url: String,
    /// Host name (empty for `file://`).
    pub host: String,
    /// The repository's path on the host, without a leading `/` or a trailing `.git`.
    pub path: String,
}

/// Parses a repository URL: `https://host/owner/repo(.git)`, `ssh://[user@]host[:port]/path`,
/// `user@host:path` (scp-like, as git reads it) or `file:///path`. Plain `http://`,
/// credentials in the URL and option-like URLs are refused.
pub fn parse_remote(url: &str) -> Result<Remote, String> {
    let strip = |p: &str| p.trim_matches('/').trim_end_matches(".git").to_owned();
    // `transport::address` is git's remote-helper syntax (`ext::` runs a command).
    if url.starts_with('-') || url.contains("::") || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{url:?} is not a repository URL"));
    }
    if let Some(rest) = url.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(format!("{url:?}: a file:// URL needs an absolute path"));
        }
        return Ok(Remote { scheme: RemoteScheme::File, url: url.to_owned(), host: String::new(), path: strip(rest) });
    }
    if url.contains("://") {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let scheme = match parsed.scheme() {
            "https" => RemoteScheme::Https,
            "ssh" => RemoteScheme::Ssh,
            other => return Err(format!("{url:?}: scheme {other:?} is not supported; use https:// or ssh://")),
        };
        if parsed.password().is_some() || (scheme == RemoteScheme::Https && !parsed.username().is_empty()) {
            return Err(format!("{url:?} carries credentials; put them in the credentials Secret instead"));
        }
        let host = parsed.host_str().unwrap_or_default().to_owned();
        let path = strip(parsed.path());
        if host.is_empty() || path.is_empty() {
            return Err(format!("{url:?} names no host or repository path"));
        }
        return Ok(Remote { scheme, url: url.to_owned(), host, path });
    }
    // scp-like: [user@]host:path (git reads a colon before any slash this way).
    match url.split_once(':') {
        Some((user_host, path)) if !user_host.contains('/') && !path.is_empty() && !path.starts_with('/') => {
            let host = user_host.rsplit('@').next().unwrap_or_default().to_owned();
            if host.is_empty() {
                return Err(format!("{url:?} names no host"));
            }
            Ok(Remote { scheme: RemoteScheme::Ssh, url: url.to_owned(), host, path: strip(path) })
        }
        _ => Err(format!("{url:?} is not a repository URL: use https://, ssh://, user@host:path or file://")),
    }
}

/// A GitOps flow that passed validation.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidGitops {
    /// The spec as written.
    pub spec: GitopsSpec,
    /// The repository.
    pub remote: Remote,
    /// The forge's API base URL, without a trailing `/`.
    pub api_url: String,
    /// The repository on the forge (`owner/repo`, `group/project`).
    pub project: String,
    /// Most time to wait for checks.
    pub checks_timeout: Duration,
    /// Most time to wait for the live object to converge after a merge.
    pub converge_timeout: Duration,
}

/// A relative path inside a repository: no `..`, not absolute, no empty or `.git` components.
fn repository_path(path: &str) -> bool {
    !path.starts_with('/')
        && !path.contains('\\')
        && path.split('/').all(|c| !c.is_empty() && c != ".." && c != "." && c != ".git")
}

fn gitops(c: &mut Collector, g: &GitopsSpec) -> Option<ValidGitops> {
    let at = "spec.ci.gitops";
    let remote = match parse_remote(&g.repository) {
        Ok(r) => Some(r),
        Err(why) => {
            c.push(format!("{at}.repository"), why);
            None
        }
    };
    for (field, path) in [("path", &g.path), ("searchPath", &g.search_path)] {
        if let Some(p) = path
            && !repository_path(p)
        {
            c.push(format!("{at}.{field}"), format!("{p:?} must be a path inside the repository (relative, no ..)"));
        }
    }
    let branch_ok = !g.base_branch.is_empty()
        && !g.base_branch.starts_with('-')
        && !g.base_branch.contains("..")
        && g.base_branch.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_./".contains(ch));
    if !branch_ok {
        c.push(format!("{at}.baseBranch"), format!("{:?} is not a branch name", g.base_branch));
    }
    for (i, name) in g.required_checks.iter().enumerate() {
        if name.trim().is_empty() {
            c.push(format!("{at}.requiredChecks[{i}]"), "name the check");
        }
    }
    if !super::template::is_dns_subdomain(&g.credentials_secret) {
        c.push(format!("{at}.credentialsSecret"), format!("{:?} is not a Secret name", g.credentials_secret));
    }
    let checks_timeout = c.duration(&format!("{at}.checksTimeout"), &g.checks_timeout);
    let converge_timeout = c.duration(&format!("{at}.convergeTimeout"), &g.converge_timeout);
    let remote = remote?;
    let segment = |c: &str| {
        !c.is_empty() && c != "." && c != ".." && c.chars().all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch))
    };
    let project_ok = |p: &str| {
        let parts: Vec<&str> = p.split('/').collect();
        let count = match g.forge.type_ {
            ForgeType::Github => parts.len() == 2,
            ForgeType::Gitlab => parts.len() >= 2,
        };
        count && parts.iter().all(|c| segment(c))
    };
    let project = match &g.forge.project {
        Some(p) if project_ok(p) => p.clone(),
        Some(p) => {
            c.push(
                format!("{at}.forge.project"),
                format!("{p:?} is not owner/repo (GitHub) or group/project (GitLab) of letters, digits, ., _ and -"),
            );
            return None;
        }
        None if remote.scheme != RemoteScheme::File && project_ok(&remote.path) => remote.path.clone(),
        None => {
            c.push(format!("{at}.forge.project"), "cannot be derived from the repository URL; set it");
            return None;
        }
    };
    let api_url = match (&g.forge.api_url, g.forge.type_) {
        (Some(u), _) => match reqwest::Url::parse(u) {
            Ok(parsed)
                if matches!(parsed.scheme(), "https" | "http")
                    && parsed.host_str().is_some()
                    && parsed.query().is_none()
                    && parsed.fragment().is_none()
                    && parsed.username().is_empty()
                    && parsed.password().is_none() =>
            {
                u.trim_end_matches('/').to_owned()
            }
            _ => {
                c.push(
                    format!("{at}.forge.apiUrl"),
                    format!("{u:?} is not an http(s) URL without query, fragment or credentials"),
                );
                return None;
            }
        },
        (None, _) if remote.scheme == RemoteScheme::File => {
            c.push(format!("{at}.forge.apiUrl"), "a file:// repository has no forge host; set apiUrl");
            return None;
        }
        (None, ForgeType::Github) if remote.host == "github.com" => "https://api.github.com".to_owned(),
        (None, ForgeType::Github) => format!("https://{}/api/v3", remote.host),
        (None, ForgeType::Gitlab) => format!("https://{}/api/v4", remote.host),
    };
    Some(ValidGitops { spec: g.clone(), remote, api_url, project, checks_timeout, converge_timeout })
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

/// A playbook parameter with bounds read.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidParameter {
    /// Name.
    pub name: String,
    /// Type.
    pub type_: ParameterType,
    /// Value expression.
    pub value: String,
    /// Lower bound in base units.
    pub min: Option<f64>,
    /// Upper bound (ceiling) in base units.
    pub max: Option<f64>,
    /// Largest ratio of new to current value.
    pub max_factor: Option<f64>,
    /// Allowed strings.
    pub allowed: Vec<String>,
    /// An image parameter's tag must be a later version.
    pub newer: bool,
    /// The LLM agent chooses the value in the LLM modes.
    pub delegate: bool,
}

/// A playbook that passed validation.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidPlaybook {
    /// Kinds it can fix.
    pub target_kinds: Vec<TargetKind>,
    /// Read steps (names unique).
    pub reads: Vec<super::playbook::ReadStep>,
    /// Template or agent.
    pub patch_mode: PatchMode,
    /// Patch format.
    pub patch_type: PatchType,
    /// The template, in template mode.
    pub template: Option<String>,
    /// Parameters.
    pub parameters: Vec<ValidParameter>,
    /// Field paths the patch may touch.
    pub allowed_paths: Vec<String>,
    /// Default verification.
    pub verify: Option<ValidVerify>,
    /// Restore on failed verification.
    pub rollback_on_failure: bool,
    /// The LLM agent's instructions, when the playbook gives them.
    pub agent_instructions: Option<String>,
    /// What a deployed change waits for beyond its target's own rollout.
    pub rollout: ValidRollout,
    /// Constraints on new values by exact field path (`patch.values`).
    pub values: Vec<(String, ValueRule)>,
    /// No patch: the playbook's reads are a diagnosis, and it never proposes.
    pub diagnoses_only: bool,
    /// Reads that must find something for the playbook to apply.
    pub requires: Vec<super::playbook::Requirement>,
}

/// A constraint on a field's new value (from a playbook's `patch.values`, or derived from
/// its template).
#[derive(Clone, Debug, PartialEq)]
pub enum ValueRule {
    /// One of these texts.
    OneOf(Vec<String>),
    /// Text matching this regular expression, whole.
    Pattern(String),
    /// A number (or quantity) within these bounds, in base units.
    Range {
        /// Lower bound.
        min: Option<f64>,
        /// Upper bound.
        max: Option<f64>,
    },
}

impl fmt::Display for ValueRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OneOf(allowed) => write!(f, "one of {allowed:?}"),
            Self::Pattern(p) => write!(f, "text matching /{p}/"),
            Self::Range { min, max } => match (min, max) {
                (Some(lo), Some(hi)) => write!(f, "a number from {lo} to {hi}"),
                (Some(lo), None) => write!(f, "a number of at least {lo}"),
                (None, Some(hi)) => write!(f, "a number of at most {hi}"),
                (None, None) => write!(f, "a number"),
            },
        }
    }
}

/// What a deployed change waits for beyond its target's own rollout, validated.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ValidRollout {
    /// Workloads that must have rolled out.
    pub wait_for: Vec<ValidWait>,
    /// Least time from the apply (zero when the playbook sets none).
    pub settle: Duration,
}

/// One workload a change waits for.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidWait {
    /// Deployment, StatefulSet or DaemonSet.
    pub kind: TargetKind,
    /// Its name, from the alert's labels.
    pub name: NameTemplate,
    /// Every Pod it runs must have started after the change.
    pub new_pods: bool,
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn is_field_path(path: &str) -> bool {
    !path.is_empty()
        && path.split('.').all(|seg| {
            let (name, index) = match seg.split_once('[') {
                Some((n, rest)) => (n, Some(rest)),
                None => (seg, None),
            };
            // `/` for annotation keys such as kubectl.kubernetes.io/restartedAt.
            let name_ok =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '/'));
            let index_ok = index.is_none_or(|i| {
                i.strip_suffix(']').is_some_and(|inner| {
                    inner == "*" || (!inner.is_empty() && inner.chars().all(|c| c.is_ascii_digit()))
                })
            });
            name_ok && index_ok
        })
}

/// Placeholders `{{ params.NAME }}` found in a template.
fn template_params(template: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else { break };
        if let Some(name) = after[..close].trim().strip_prefix("params.") {
            out.push(name.trim().to_owned());
        }
        rest = &after[close + 2..];
    }
    out
}

fn bound(c: &mut Collector, field: &str, type_: ParameterType, raw: Option<&String>) -> Option<f64> {
    let raw = raw?;
    let parsed = match type_ {
        ParameterType::Integer => raw.parse::<i64>().ok().map(|v| v as f64),
        ParameterType::Number => raw.parse::<f64>().ok().filter(|v| v.is_finite()),
        ParameterType::Quantity => parse_quantity(raw).ok(),
        ParameterType::String => {
            c.push(field, "a string parameter takes an allowed list, not min/max");
            return None;
        }
        ParameterType::Image => {
            c.push(field, "an image parameter is bounded to its repository (and `newer`), not min/max");
            return None;
        }
    };
    if parsed.is_none() {
        let kind = match type_ {
            ParameterType::Integer => "an integer",
            ParameterType::Number => "a number",
            _ => "a quantity such as 512Mi",
        };
        c.push(field, format!("{raw:?} is not {kind}"));
    }
    parsed
}

impl ValidPlaybook {
    /// Validates a playbook spec.
    ///
    /// # Errors
    /// [`ValidationErrors`] listing every bad field.
    pub fn from_spec(spec: &PlaybookSpec) -> Result<Self, ValidationErrors> {
        let mut c = Collector::default();
        if spec.target_kinds.is_empty() {
            c.push("spec.targetKinds", "list at least one kind");
        }
        let mut kinds = HashSet::new();
        for (i, k) in spec.target_kinds.iter().enumerate() {
            if !kinds.insert(*k) {
                c.push(format!("spec.targetKinds[{i}]"), format!("{k} is listed twice"));
            }
        }
        let mut read_names = HashSet::new();
        for (i, r) in spec.reads.iter().enumerate() {
            if !is_identifier(&r.name) {
                c.push(
                    format!("spec.reads[{i}].name"),
                    format!("{:?} must start with a letter and hold letters, digits, '_' or '-'", r.name),
                );
            } else if !read_names.insert(r.name.as_str()) {
                c.push(format!("spec.reads[{i}].name"), format!("{:?} is used twice", r.name));
            }
            if r.tool.trim().is_empty() {
                c.push(format!("spec.reads[{i}].tool"), "must name a tool");
            }
        }

        for (i, r) in spec.requires.iter().enumerate() {
            if !read_names.contains(r.read.as_str()) {
                c.push(format!("spec.requires[{i}].read"), format!("{:?} is not one of the playbook's reads", r.read));
            }
            if r.otherwise.trim().is_empty() {
                c.push(format!("spec.requires[{i}].otherwise"), "say what it means when the read finds nothing");
            }
        }
        let diagnoses_only = spec.patch.is_none();
        if diagnoses_only && spec.reads.is_empty() {
            c.push("spec.reads", "a playbook without a patch only diagnoses: list the reads that are its findings");
        }
        let no_patch = super::playbook::PatchSpec {
            mode: PatchMode::Template,
            patch_type: PatchType::default(),
            template: None,
            parameters: Vec::new(),
            allowed_paths: Vec::new(),
            values: Vec::new(),
        };
        let p = spec.patch.as_ref().unwrap_or(&no_patch);
        let mut params = Vec::new();
        let mut param_names = HashSet::new();
        for (i, param) in p.parameters.iter().enumerate() {
            let base = format!("spec.patch.parameters[{i}]");
            if !is_identifier(&param.name) {
                c.push(
                    format!("{base}.name"),
                    format!("{:?} must start with a letter and hold letters, digits, '_' or '-'", param.name),
                );
            } else if !param_names.insert(param.name.clone()) {
                c.push(format!("{base}.name"), format!("{:?} is used twice", param.name));
            }
            let min = bound(&mut c, &format!("{base}.min"), param.type_, param.min.as_ref());
            let max = bound(&mut c, &format!("{base}.max"), param.type_, param.max.as_ref());
            if let (Some(lo), Some(hi)) = (min, max)
                && lo > hi
            {
                c.push(
                    format!("{base}.min"),
                    format!(
                        "{:?} is above max {:?}",
                        param.min.as_deref().unwrap_or(""),
                        param.max.as_deref().unwrap_or("")
                    ),
                );
            }
            if let Some(f) = param.max_factor
                && !(f.is_finite() && f >= 1.0)
            {
                c.push(format!("{base}.maxFactor"), "must be a number of at least 1");
            }
            let allowed = param.allowed.clone().unwrap_or_default();
            if param.type_ == ParameterType::String && allowed.is_empty() {
                c.push(format!("{base}.allowed"), "a string parameter needs a non-empty allowed list");
            }
            let numeric = !matches!(param.type_, ParameterType::String | ParameterType::Image);
            if numeric && max.is_none() && param.max_factor.is_none() {
                c.push(format!("{base}.max"), "a numeric parameter needs a ceiling: set max or maxFactor");
            }
            if param.type_ == ParameterType::Image {
                if param.max_factor.is_some() {
                    c.push(format!("{base}.maxFactor"), "an image parameter has no factor");
                }
                if param.allowed.is_some() {
                    c.push(format!("{base}.allowed"), "an image parameter takes no allowed list");
                }
            } else if param.newer.is_some() {
                c.push(format!("{base}.newer"), "only an image parameter can require a newer version");
            }
            params.push(ValidParameter {
                name: param.name.clone(),
                type_: param.type_,
                value: param.value.clone(),
                min,
                max,
                max_factor: param.max_factor,
                allowed,
                newer: param.newer.unwrap_or(false),
                delegate: param.delegate.unwrap_or(false),
            });
        }
        match (p.mode, &p.template) {
            _ if diagnoses_only => {}
            (PatchMode::Template, None) => c.push("spec.patch.template", "required when patch.mode is template"),
            (PatchMode::Template, Some(t)) => {
                for name in template_params(t) {
                    if !param_names.contains(&name) {
                        c.push(
                            "spec.patch.template",
                            format!("uses {{{{ params.{name} }}}} but no parameter {name:?} is declared"),
                        );
                    }
                }
            }
            (PatchMode::Agent, _) => {}
        }
        if p.allowed_paths.is_empty() && !diagnoses_only {
            c.push("spec.patch.allowedPaths", "list the field paths the patch may touch");
        }
        for (i, path) in p.allowed_paths.iter().enumerate() {
            if !is_field_path(path) {
                c.push(
                    format!("spec.patch.allowedPaths[{i}]"),
                    format!(
                        "{path:?} is not a field path like spec.template.spec.containers[*].resources.limits.memory"
                    ),
                );
            }
        }
        let verify = spec.verify.as_ref().map(|v| verify(&mut c, "spec.verify", v));
        let rollout = spec.rollout.as_ref().map(|r| rollout(&mut c, r)).unwrap_or_default();
        let values =
            p.values.iter().enumerate().filter_map(|(i, v)| value_rule(&mut c, i, v, &p.allowed_paths)).collect();
        c.finish(Self {
            target_kinds: spec.target_kinds.clone(),
            reads: spec.reads.clone(),
            patch_mode: p.mode,
            patch_type: p.patch_type,
            template: p.template.clone(),
            parameters: params,
            allowed_paths: p.allowed_paths.clone(),
            verify,
            rollback_on_failure: spec.rollback.on_verification_failure,
            agent_instructions: spec.agent_instructions.clone(),
            rollout,
            values,
            diagnoses_only,
            requires: spec.requires.clone(),
        })
    }
}

/// One `patch.values` entry: a field path the playbook allows, and exactly one constraint.
fn value_rule(c: &mut Collector, i: usize, spec: &ValueSpec, allowed: &[String]) -> Option<(String, ValueRule)> {
    let field = format!("spec.patch.values[{i}]");
    if !is_field_path(&spec.path) {
        c.push(format!("{field}.path"), format!("{:?} is not a field path like data.POOL_SIZE", spec.path));
        return None;
    }
    if !allowed
        .iter()
        .any(|a| spec.path == *a || spec.path.starts_with(&format!("{a}.")) || spec.path.starts_with(&format!("{a}[")))
    {
        c.push(format!("{field}.path"), format!("{:?} is not under any of patch.allowedPaths", spec.path));
    }
    let range = spec.min.is_some() || spec.max.is_some();
    let kinds = usize::from(spec.allowed.is_some()) + usize::from(spec.pattern.is_some()) + usize::from(range);
    if kinds != 1 {
        c.push(field, "give exactly one of allowed, pattern, or min/max");
        return None;
    }
    let bound = |c: &mut Collector, name: &str, raw: &Option<String>| -> Option<f64> {
        let raw = raw.as_ref()?;
        let parsed = parse_quantity(raw).ok();
        if parsed.is_none() {
            c.push(format!("{field}.{name}"), format!("{raw:?} is not a number or a quantity such as 512Mi"));
        }
        parsed
    };
    if let Some(allowed) = &spec.allowed {
        if allowed.is_empty() {
            c.push(format!("{field}.allowed"), "list at least one value");
        }
        return Some((spec.path.clone(), ValueRule::OneOf(allowed.clone())));
    }
    if let Some(pattern) = &spec.pattern {
        if let Err(e) = regex::Regex::new(&format!("^(?:{pattern})$")) {
            c.push(format!("{field}.pattern"), format!("not a regular expression: {e}"));
        }
        return Some((spec.path.clone(), ValueRule::Pattern(pattern.clone())));
    }
    let (min, max) = (bound(c, "min", &spec.min), bound(c, "max", &spec.max));
    if let (Some(lo), Some(hi)) = (min, max)
        && lo > hi
    {
        c.push(format!("{field}.min"), "is above max");
    }
    Some((spec.path.clone(), ValueRule::Range { min, max }))
}

fn rollout(c: &mut Collector, spec: &PlaybookRollout) -> ValidRollout {
    let mut wait_for = Vec::new();
    for (i, w) in spec.wait_for.iter().enumerate() {
        let field = format!("spec.rollout.waitFor[{i}]");
        if !matches!(w.kind, TargetKind::Deployment | TargetKind::StatefulSet | TargetKind::DaemonSet) {
            c.push(
                format!("{field}.kind"),
                format!("{} rolls nothing out: wait for a Deployment, StatefulSet or DaemonSet", w.kind),
            );
        }
        match NameTemplate::parse(&w.name) {
            Ok(name) => wait_for.push(ValidWait { kind: w.kind, name, new_pods: w.new_pods }),
            Err(e) => c.push(format!("{field}.name"), e.to_string()),
        }
    }
    let settle = spec.settle.as_ref().map_or(Duration::ZERO, |d| c.duration("spec.rollout.settle", d));
    ValidRollout { wait_for, settle }
}
