//! The forge's pull-request API behind one trait: GitHub REST v3 (github.com and GitHub
//! Enterprise Server) and GitLab REST v4 merge requests (gitlab.com and self-managed), both over
//! the egress client.
//!
//! Contract: every call is one HTTP request with retries: a 5xx or a transport failure is
//! retried with doubling backoff, a rate limit (429, or 403 with `x-ratelimit-remaining: 0`)
//! waits as long as `Retry-After` / `x-ratelimit-reset` says (at most [`MAX_WAIT`]), never past
//! the caller's cancellation; creating a pull request is never retried blindly (the caller
//! looks for the one it may have opened first). Answers are classified into [`ForgeError`]s a
//! person can act on — a refused token names the Secret to renew. Bodies are read up to 4 MiB.

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::api::policy::ForgeType;

/// Longest a rate limit is waited out in one go.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
const MAX_BODY: usize = 4 * 1024 * 1024;
const ATTEMPTS: u32 = 5;

/// A pull request (merge request) as the forge reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullRequest {
    /// Number (GitHub) or iid (GitLab).
    pub number: u64,
    /// Web page.
    pub url: String,
    /// Its source branch.
    pub branch: String,
    /// The commit at its head (empty when the forge's answer is not a commit id).
    pub head: String,
    /// The branch it merges into.
    pub base: String,
    /// Its head branch is in the project itself, not a fork.
    pub same_repo: bool,
    /// Open, closed or merged.
    pub state: PrState,
    /// The merge commit, once merged.
    pub merge_commit: Option<String>,
}

/// Where a pull request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrState {
    /// Open.
    Open,
    /// Closed without a merge.
    Closed,
    /// Merged.
    Merged,
}

/// One check on a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// Status context or check-run name.
    pub name: String,
    /// What it says.
    pub state: CheckState,
    /// Details page.
    pub url: Option<String>,
}

/// A check's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckState {
    /// Not finished.
    Pending,
    /// Passed (or neutral / skipped).
    Success,
    /// Failed, errored, cancelled or timed out.
    Failure,
}

impl CheckState {
    /// As recorded in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

/// What a merge attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Merge {
    /// Merged as this commit.
    Merged(String),
    /// The forge will not merge it as it is (conflict, base moved, a rule unmet); the message
    /// is the forge's.
    Refused(String),
}

/// Why a forge call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForgeError {
    /// The token was refused (401) or lacks a permission (403).
    #[error("the forge refused the token ({0})")]
    Auth(String),
    /// No such project, pull request or commit.
    #[error("not found on the forge: {0}")]
    NotFound(String),
    /// A request the forge rejected (4xx).
    #[error("the forge rejected the request: {0}")]
    Rejected(String),
    /// 5xx, rate limits or the network, after the retries.
    #[error("the forge is unavailable: {0}")]
    Unavailable(String),
    /// Cancelled while waiting.
    #[error("cancelled")]
    Cancelled,
}

/// What a forge call returns.
pub type ForgeFuture<'a, T> = BoxFuture<'a, Result<T, ForgeError>>;

/// The pull-request operations the GitOps flow needs.
pub trait Forge: Send + Sync {
    /// The open pull request from `branch` into `base`, if any.
    fn find_open<'a>(&'a self, branch: &'a str, base: &'a str) -> ForgeFuture<'a, Option<PullRequest>>;
    /// Opens one (the caller has looked for an existing one first).
    fn open<'a>(
        &'a self,
        branch: &'a str,
        base: &'a str,
        title: &'a str,
        body: &'a str,
    ) -> ForgeFuture<'a, PullRequest>;
    /// Reads one.
    fn get(&self, number: u64) -> ForgeFuture<'_, PullRequest>;
    /// The checks reported on a commit: commit statuses and check runs (GitHub) or commit
    /// statuses (GitLab, which include pipeline jobs).
    fn checks<'a>(&'a self, sha: &'a str) -> ForgeFuture<'a, Vec<Check>>;
    /// Whether the forge's own review approves its head commit `head`: at least one approval by
    /// someone with write access to the project, and no change requested.
    fn approved<'a>(&'a self, number: u64, head: &'a str) -> ForgeFuture<'a, bool>;
    /// Merges it if its head is still `sha`.
    fn merge<'a>(&'a self, number: u64, sha: &'a str, title: &'a str) -> ForgeFuture<'a, Merge>;
    /// Closes it without merging.
    fn close(&self, number: u64) -> ForgeFuture<'_, ()>;
    /// The message of a commit (a commit id, or a branch name).
    fn commit_message<'a>(&'a self, reference: &'a str) -> ForgeFuture<'a, String>;
}

/// A forge client for `type_` at `api_url` (no trailing `/`), for project `project`.
///
/// # Errors
/// The HTTP client cannot be built.
pub fn client(
    type_: ForgeType,
    api_url: &str,
    project: &str,
    token: SecretString,
    secret_name: &str,
    cancel: CancellationToken,
) -> Result<Box<dyn Forge>, String> {
    let http = crate::egress::client(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    let base = Http { http, token, secret: secret_name.to_owned(), cancel, backoff: Duration::from_millis(500) };
    Ok(match type_ {
        ForgeType::Github => Box::new(GitHub {
            api: format!("{api_url}/repos/{project}"),
            owner: project.split('/').next().unwrap_or_default().to_owned(),
            http: base,
            kind: ForgeType::Github,
        }),
        ForgeType::Gitlab => Box::new(GitLab {
            api: format!(
                "{api_url}/projects/{}",
                percent_encoding::utf8_percent_encode(project, percent_encoding::NON_ALPHANUMERIC)
            ),
            http: base,
        }),
    })
}

struct Http {
    http: reqwest::Client,
    token: SecretString,
    secret: String,
    cancel: CancellationToken,
    backoff: Duration,
}

/// How long a rate-limited answer asks to wait, if it is one.
pub fn rate_limited(status: StatusCode, headers: &reqwest::header::HeaderMap, now_unix: u64) -> Option<Duration> {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    let retry_after = header("retry-after").and_then(|v| v.parse::<u64>().ok()).map(Duration::from_secs);
    let exhausted = header("x-ratelimit-remaining").or_else(|| header("ratelimit-remaining")) == Some("0");
    let reset = header("x-ratelimit-reset")
        .or_else(|| header("ratelimit-reset"))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|at| Duration::from_secs(at.saturating_sub(now_unix)));
    match status {
        StatusCode::TOO_MANY_REQUESTS => Some(retry_after.or(reset).unwrap_or(Duration::from_secs(1))),
        StatusCode::FORBIDDEN if exhausted || retry_after.is_some() => {
            Some(retry_after.or(reset).unwrap_or(Duration::from_secs(1)))
        }
        _ => None,
    }
}

impl Http {
    /// One call with retries; `retry` false for a request that must not be sent twice.
    async fn call(
        &self,
        kind: ForgeType,
        method: Method,
        url: &str,
        body: Option<Value>,
        retry: bool,
    ) -> Result<(StatusCode, Value), ForgeError> {
        let mut delay = self.backoff;
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            let mut req = self.http.request(method.clone(), url).header("user-agent", "reflex");
            req = match kind {
                ForgeType::Github => req
                    .bearer_auth(self.token.expose_secret())
                    .header("accept", "application/vnd.github+json")
                    .header("x-github-api-version", "2022-11-28"),
                ForgeType::Gitlab => req.header("private-token", self.token.expose_secret()),
            };
            if let Some(b) = &body {
                req = req.json(b);
            }
            let wait = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let now = jiff::Timestamp::now().as_second().max(0) as u64;
                    if let Some(wait) = rate_limited(status, resp.headers(), now) {
                        last = format!("rate limited ({status}); asked to wait {}s", wait.as_secs());
                        if wait > MAX_WAIT * 5 {
                            return Err(ForgeError::Unavailable(last));
                        }
                        wait.min(MAX_WAIT)
                    } else if status.is_server_error() {
                        last = format!("{method} {url}: {status}");
                        delay
                    } else {
                        let bytes = read_capped(resp).await.map_err(ForgeError::Unavailable)?;
                        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                        return self.classify(status, value, url);
                    }
                }
                Err(e) => {
                    last = format!("{method} {url}: {e}");
                    delay
                }
            };
            if !retry || attempt == ATTEMPTS {
                break;
            }
            tokio::select! {
                () = self.cancel.cancelled() => return Err(ForgeError::Cancelled),
                () = tokio::time::sleep(wait) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        }
        Err(ForgeError::Unavailable(last))
    }

    fn classify(&self, status: StatusCode, value: Value, url: &str) -> Result<(StatusCode, Value), ForgeError> {
        let message = value
            .get("message")
            .map(|m| match m {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .or_else(|| value.get("error").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| status.to_string());
        let message: String = message.chars().filter(|c| !c.is_control()).take(300).collect();
        let message = message.replace(self.token.expose_secret(), "***");
        match status.as_u16() {
            200..=299 => Ok((status, value)),
            401 => Err(ForgeError::Auth(format!(
                "401 {message}: the token in Secret {:?} (key token) is invalid or expired; renew it",
                self.secret
            ))),
            403 => Err(ForgeError::Auth(format!(
                "403 {message}: the token in Secret {:?} lacks a permission this needs (see the README for scopes)",
                self.secret
            ))),
            404 => Err(ForgeError::NotFound(format!("{url}: {message}"))),
            // Merge refusals are answers the caller reads.
            405 | 406 | 409 | 422 => Ok((status, value)),
            _ => Err(ForgeError::Rejected(format!("{status}: {message}"))),
        }
    }
}

async fn read_capped(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if out.len() + chunk.len() > MAX_BODY {
            return Err("the forge's answer is larger than 4 MiB".into());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn text(v: &Value, p: &str) -> String {
    let t = v.pointer(p).and_then(Value::as_str).unwrap_or_default();
    t.chars().filter(|c| !c.is_control()).take(512).collect()
}

/// A commit id from the forge's answer; empty unless it is one.
fn commit_id(v: &Value, p: &str) -> String {
    let t = v.pointer(p).and_then(Value::as_str).unwrap_or_default();
    if super::repo::is_sha(t) { t.to_owned() } else { String::new() }
}

/// A branch in a URL path: each segment encoded (`reflex/x` stays two segments).
fn branch_path(branch: &str) -> String {
    branch.split('/').map(enc).collect::<Vec<_>>().join("/")
}

fn refused(status: StatusCode, v: &Value) -> ForgeError {
    ForgeError::Rejected(format!("{status}: {}", v.get("message").map(ToString::to_string).unwrap_or_default()))
}

struct GitHub {
    api: String,
    owner: String,
    http: Http,
    kind: ForgeType,
}

impl GitHub {
    fn pr(v: &Value) -> PullRequest {
        let merged = v.get("merged").and_then(Value::as_bool).unwrap_or(false)
            || v.get("merged_at").is_some_and(|m| !m.is_null());
        PullRequest {
            number: v.get("number").and_then(Value::as_u64).unwrap_or_default(),
            url: text(v, "/html_url"),
            branch: text(v, "/head/ref"),
            head: commit_id(v, "/head/sha"),
            base: text(v, "/base/ref"),
            same_repo: {
                let head_repo = text(v, "/head/repo/full_name");
                !head_repo.is_empty() && head_repo == text(v, "/base/repo/full_name")
            },
            state: if merged {
                PrState::Merged
            } else if text(v, "/state") == "open" {
                PrState::Open
            } else {
                PrState::Closed
            },
            merge_commit: merged.then(|| commit_id(v, "/merge_commit_sha")).filter(|s| !s.is_empty()),
        }
    }

    async fn req(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        retry: bool,
    ) -> Result<(StatusCode, Value), ForgeError> {
        self.http.call(self.kind, method, &format!("{}{path}", self.api), body, retry).await
    }
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl Forge for GitHub {
    fn find_open<'a>(&'a self, branch: &'a str, base: &'a str) -> ForgeFuture<'a, Option<PullRequest>> {
        async move {
            let path = format!(
                "/pulls?state=open&head={}&base={}&per_page=10",
                enc(&format!("{}:{branch}", self.owner)),
                enc(base)
            );
            let (_, v) = self.req(Method::GET, &path, None, true).await?;
            Ok(v.as_array()
                .and_then(|a| a.iter().map(Self::pr).find(|p| p.branch == branch && p.base == base && p.same_repo)))
        }
        .boxed()
    }

    fn open<'a>(
        &'a self,
        branch: &'a str,
        base: &'a str,
        title: &'a str,
        body: &'a str,
    ) -> ForgeFuture<'a, PullRequest> {
        async move {
            let b = json!({"title": title, "head": branch, "base": base, "body": body, "maintainer_can_modify": false});
            let (status, v) = self.req(Method::POST, "/pulls", Some(b), false).await?;
            if status.is_success() { Ok(Self::pr(&v)) } else { Err(refused(status, &v)) }
        }
        .boxed()
    }

    fn get(&self, number: u64) -> ForgeFuture<'_, PullRequest> {
        async move { Ok(Self::pr(&self.req(Method::GET, &format!("/pulls/{number}"), None, true).await?.1)) }.boxed()
    }

    fn checks<'a>(&'a self, sha: &'a str) -> ForgeFuture<'a, Vec<Check>> {
        async move {
            let mut out = Vec::new();
            let (_, combined) =
                self.req(Method::GET, &format!("/commits/{}/status?per_page=100", enc(sha)), None, true).await?;
            for s in combined.get("statuses").and_then(Value::as_array).into_iter().flatten() {
                let state = match text(s, "/state").as_str() {
                    "success" => CheckState::Success,
                    "failure" | "error" => CheckState::Failure,
                    _ => CheckState::Pending,
                };
                out.push(Check {
                    name: text(s, "/context"),
                    state,
                    url: s.get("target_url").and_then(Value::as_str).map(str::to_owned),
                });
            }
            let (_, runs) =
                self.req(Method::GET, &format!("/commits/{}/check-runs?per_page=100", enc(sha)), None, true).await?;
            for r in runs.get("check_runs").and_then(Value::as_array).into_iter().flatten() {
                let state = match (text(r, "/status").as_str(), text(r, "/conclusion").as_str()) {
                    ("completed", "success" | "neutral" | "skipped") => CheckState::Success,
                    ("completed", _) => CheckState::Failure,
                    _ => CheckState::Pending,
                };
                out.push(Check {
                    name: text(r, "/name"),
                    state,
                    url: r.get("html_url").and_then(Value::as_str).map(str::to_owned),
                });
            }
            Ok(out)
        }
        .boxed()
    }

    fn approved<'a>(&'a self, number: u64, head: &'a str) -> ForgeFuture<'a, bool> {
        async move {
            let (_, v) = self.req(Method::GET, &format!("/pulls/{number}/reviews?per_page=100"), None, true).await?;
            // Each reviewer's latest decisive review counts — of the head commit, by someone with
            // write access (anyone may review a public repository's pull requests).
            let mut latest: std::collections::BTreeMap<String, String> = Default::default();
            for r in v.as_array().into_iter().flatten() {
                let state = text(r, "/state");
                let member = matches!(text(r, "/author_association").as_str(), "OWNER" | "MEMBER" | "COLLABORATOR");
                if member && matches!(state.as_str(), "APPROVED" | "CHANGES_REQUESTED" | "DISMISSED") {
                    let current = text(r, "/commit_id") == head;
                    latest.insert(
                        text(r, "/user/login"),
                        if current || state != "APPROVED" { state } else { "STALE".into() },
                    );
                }
            }
            Ok(latest.values().any(|s| s == "APPROVED") && !latest.values().any(|s| s == "CHANGES_REQUESTED"))
        }
        .boxed()
    }

    fn merge<'a>(&'a self, number: u64, sha: &'a str, title: &'a str) -> ForgeFuture<'a, Merge> {
        async move {
            let b = json!({"sha": sha, "merge_method": "merge", "commit_title": title});
            let (status, v) = self.req(Method::PUT, &format!("/pulls/{number}/merge"), Some(b), true).await?;
            if status.is_success() && v.get("merged").and_then(Value::as_bool) != Some(false) {
                return Ok(Merge::Merged(commit_id(&v, "/sha")));
            }
            Ok(Merge::Refused(format!("{status}: {}", text(&v, "/message"))))
        }
        .boxed()
    }

    fn close(&self, number: u64) -> ForgeFuture<'_, ()> {
        async move {
            let (status, v) =
                self.req(Method::PATCH, &format!("/pulls/{number}"), Some(json!({"state": "closed"})), true).await?;
            if status.is_success() { Ok(()) } else { Err(refused(status, &v)) }
        }
        .boxed()
    }

    fn commit_message<'a>(&'a self, reference: &'a str) -> ForgeFuture<'a, String> {
        async move {
            let (_, v) = self.req(Method::GET, &format!("/commits/{}", branch_path(reference)), None, true).await?;
            Ok(v.pointer("/commit/message").and_then(Value::as_str).unwrap_or_default().to_owned())
        }
        .boxed()
    }
}

struct GitLab {
    api: String,
    http: Http,
}

impl GitLab {
    fn mr(v: &Value) -> PullRequest {
        let state = match text(v, "/state").as_str() {
            "merged" => PrState::Merged,
            "opened" | "locked" => PrState::Open,
            _ => PrState::Closed,
        };
        // A fast-forward merge has no merge commit: the head is what landed.
        let merge_commit =
            [commit_id(v, "/merge_commit_sha"), commit_id(v, "/squash_commit_sha"), commit_id(v, "/sha")]
                .into_iter()
                .find(|s| !s.is_empty());
        let project = |p: &str| v.pointer(p).and_then(Value::as_u64);
        PullRequest {
            number: v.get("iid").and_then(Value::as_u64).unwrap_or_default(),
            url: text(v, "/web_url"),
            branch: text(v, "/source_branch"),
            head: commit_id(v, "/sha"),
            base: text(v, "/target_branch"),
            same_repo: project("/source_project_id").is_some()
                && project("/source_project_id") == project("/target_project_id"),
            state,
            merge_commit: if state == PrState::Merged { merge_commit } else { None },
        }
    }

    async fn req(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        retry: bool,
    ) -> Result<(StatusCode, Value), ForgeError> {
        self.http.call(ForgeType::Gitlab, method, &format!("{}{path}", self.api), body, retry).await
    }
}

impl Forge for GitLab {
    fn find_open<'a>(&'a self, branch: &'a str, base: &'a str) -> ForgeFuture<'a, Option<PullRequest>> {
        async move {
            let path =
                format!("/merge_requests?state=opened&source_branch={}&target_branch={}", enc(branch), enc(base));
            let (_, v) = self.req(Method::GET, &path, None, true).await?;
            Ok(v.as_array()
                .and_then(|a| a.iter().map(Self::mr).find(|p| p.branch == branch && p.base == base && p.same_repo)))
        }
        .boxed()
    }

    fn open<'a>(
        &'a self,
        branch: &'a str,
        base: &'a str,
        title: &'a str,
        body: &'a str,
    ) -> ForgeFuture<'a, PullRequest> {
        async move {
            let b = json!({"source_branch": branch, "target_branch": base, "title": title, "description": body, "remove_source_branch": true});
            let (status, v) = self.req(Method::POST, "/merge_requests", Some(b), false).await?;
            if status.is_success() { Ok(Self::mr(&v)) } else { Err(refused(status, &v)) }
        }
        .boxed()
    }

    fn get(&self, number: u64) -> ForgeFuture<'_, PullRequest> {
        async move { Ok(Self::mr(&self.req(Method::GET, &format!("/merge_requests/{number}"), None, true).await?.1)) }
            .boxed()
    }

    fn checks<'a>(&'a self, sha: &'a str) -> ForgeFuture<'a, Vec<Check>> {
        async move {
            let (_, v) = self
                .req(Method::GET, &format!("/repository/commits/{}/statuses?per_page=100", enc(sha)), None, true)
                .await?;
            Ok(v.as_array()
                .into_iter()
                .flatten()
                .map(|s| Check {
                    name: text(s, "/name"),
                    state: match text(s, "/status").as_str() {
                        "success" | "skipped" => CheckState::Success,
                        "failed" | "canceled" => CheckState::Failure,
                        _ => CheckState::Pending,
                    },
                    url: s.get("target_url").and_then(Value::as_str).map(str::to_owned),
                })
                .collect())
        }
        .boxed()
    }

    fn approved<'a>(&'a self, number: u64, head: &'a str) -> ForgeFuture<'a, bool> {
        async move {
            // GitLab resets approvals on a new push (when the project says so) and counts only
            // eligible approvers; its own verdict is the one to follow.
            let _ = head;
            let (_, v) = self.req(Method::GET, &format!("/merge_requests/{number}/approvals"), None, true).await?;
            let by = v.get("approved_by").and_then(Value::as_array).is_some_and(|a| !a.is_empty());
            Ok(v.get("approved").and_then(Value::as_bool).unwrap_or(false) && by)
        }
        .boxed()
    }

    fn merge<'a>(&'a self, number: u64, sha: &'a str, title: &'a str) -> ForgeFuture<'a, Merge> {
        async move {
            let b = json!({"sha": sha, "should_remove_source_branch": true, "merge_commit_message": title});
            let (status, v) = self.req(Method::PUT, &format!("/merge_requests/{number}/merge"), Some(b), true).await?;
            let mr = Self::mr(&v);
            match (status.is_success(), mr.merge_commit) {
                (true, Some(sha)) => Ok(Merge::Merged(sha)),
                _ => Ok(Merge::Refused(format!(
                    "{status}: {}",
                    v.get("message").map(ToString::to_string).unwrap_or_default()
                ))),
            }
        }
        .boxed()
    }

    fn close(&self, number: u64) -> ForgeFuture<'_, ()> {
        async move {
            let (status, v) = self
                .req(Method::PUT, &format!("/merge_requests/{number}"), Some(json!({"state_event": "close"})), true)
                .await?;
            if status.is_success() { Ok(()) } else { Err(refused(status, &v)) }
        }
        .boxed()
    }

    fn commit_message<'a>(&'a self, reference: &'a str) -> ForgeFuture<'a, String> {
        async move {
            let (_, v) = self.req(Method::GET, &format!("/repository/commits/{}", enc(reference)), None, true).await?;
            Ok(v.get("message").and_then(Value::as_str).unwrap_or_default().to_owned())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn rate_limits_are_read_from_retry_after_or_the_reset_time() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(rate_limited(StatusCode::TOO_MANY_REQUESTS, &h, 0), Some(Duration::from_secs(7)));
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        h.insert("x-ratelimit-reset", HeaderValue::from_static("1030"));
        assert_eq!(rate_limited(StatusCode::FORBIDDEN, &h, 1000), Some(Duration::from_secs(30)));
        assert_eq!(
            rate_limited(StatusCode::FORBIDDEN, &HeaderMap::new(), 0),
            None,
            "a plain 403 is a permission, not a limit"
        );
        assert_eq!(rate_limited(StatusCode::OK, &h, 1000), None);
    }
}
