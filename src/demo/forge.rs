//! The forge stand-in: just the GitHub REST and GitLab REST endpoints Reflex's GitOps flow
//! calls, over a real bare git repository on disk, for the GitOps tests and
//! `reflex demo --scenario gitops`. No forge server can be installed here; this is a stand-in
//! and says so when it starts. It listens on loopback only.
//!
//! Pull requests live in memory; branches, commits and merges are real git in the bare
//! repository (a merge is `git merge --no-ff` in a scratch clone, pushed back). Checks are
//! scripted: each new head commit gets the [`Faults::checks`] in force when it is first asked
//! about. Faults script the forge's bad days: 5xx answers, rate limits with `Retry-After`, an
//! expired token, a merge refused once ("base branch was modified"), pull-request creation
//! failing after the push. Every request is recorded as `METHOD path` for assertions.
//!
//! GitHub: `/api/v3/repos/{owner}/{repo}/…` — `pulls` (list by head, create), `pulls/{n}`
//! (get, close), `pulls/{n}/merge`, `pulls/{n}/reviews`, `commits/{ref}`,
//! `commits/{sha}/status`, `commits/{sha}/check-runs`, `git/refs/heads/{branch}` (delete).
//! GitLab: `/api/v4/projects/{id}/…` — `merge_requests` (list, create), `merge_requests/{iid}`
//! (get, close), `…/merge`, `…/approvals`, `repository/commits/{ref}`,
//! `repository/commits/{sha}/statuses`, `repository/branches/{branch}` (delete).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// What the stand-in does wrong, and which checks it reports.
#[derive(Clone, Debug)]
pub struct Faults {
    /// Checks each new head commit gets: (name, state) with GitHub states
    /// (`success`, `failure`, `pending`); a name `run:NAME` is a check run named NAME, the
    /// others commit statuses; empty: none ever report.
    pub checks: Vec<(String, String)>,
    /// Answer this many next requests with 502.
    pub server_errors: u32,
    /// Answer this many next requests with 429 and `Retry-After: 1`.
    pub rate_limits: u32,
    /// Every request gets 401 (an expired token).
    pub token_expired: bool,
    /// The next merge is refused as "base branch was modified".
    pub refuse_merge_once: bool,
    /// Creating a pull request fails with 500 (after git has pushed).
    pub fail_create: bool,
    /// Pull requests with an approving review (by number).
    pub approved: BTreeSet<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            checks: vec![("ci/test".into(), "success".into())],
            server_errors: 0,
            rate_limits: 0,
            token_expired: false,
            refuse_merge_once: false,
            fail_create: false,
            approved: BTreeSet::new(),
        }
    }
}

/// One pull request.
#[derive(Clone, Debug)]
pub struct Pr {
    /// Number / iid.
    pub number: u64,
    /// Source branch.
    pub branch: String,
    /// Target branch.
    pub base: String,
    /// Title.
    pub title: String,
    /// `open`, `closed` or `merged`.
    pub state: String,
    /// Head commit when merged or closed (the branch may be gone).
    pub head: Option<String>,
    /// Merge commit.
    pub merge_commit: Option<String>,
}

#[derive(Default)]
struct Inner {
    prs: Vec<Pr>,
    checks: BTreeMap<String, Vec<(String, String)>>,
    requests: Vec<String>,
}

/// The stand-in's state.
pub struct Forge {
    bare: PathBuf,
    token: String,
    /// Scripted behaviour; change it between steps.
    pub faults: Mutex<Faults>,
    inner: Mutex<Inner>,
}

fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .args(["-c", "protocol.file.allow=always", "-c", "user.name=forge", "-c", "user.email=forge@example.invalid"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

impl Forge {
    /// A stand-in over the bare repository `bare`, accepting `token`.
    pub fn new(bare: &Path, token: &str) -> Arc<Self> {
        Arc::new(Self {
            bare: bare.to_owned(),
            token: token.to_owned(),
            faults: Mutex::default(),
            inner: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every pull request so far.
    pub fn pull_requests(&self) -> Vec<Pr> {
        self.lock().prs.clone()
    }

    /// Every request so far, as `METHOD path`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// The commit `rev` names in the repository, if any.
    pub fn rev(&self, rev: &str) -> Option<String> {
        git(&self.bare, &["rev-parse", "--verify", "--quiet", &format!("{rev}^{{commit}}")]).ok()
    }

    /// Serves on a loopback port; returns its base URL (`http://127.0.0.1:PORT`).
    ///
    /// # Errors
    /// The port cannot be bound.
    pub async fn serve(self: &Arc<Self>, stop: tokio_util::sync::CancellationToken) -> std::io::Result<String> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let url = format!("http://{}", listener.local_addr()?);
        tracing::info!(%url, "forge stand-in listening (GitHub and GitLab pull-request endpoints only; not a real forge)");
        let app = axum::Router::new().fallback(handle).with_state(self.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
        });
        Ok(url)
    }

    fn head_of(&self, pr: &Pr) -> String {
        pr.head.clone().or_else(|| self.rev(&format!("refs/heads/{}", pr.branch))).unwrap_or_default()
    }

    fn checks_of(&self, sha: &str) -> Vec<(String, String)> {
        let scripted = self.faults().checks.clone();
        self.lock().checks.entry(sha.to_owned()).or_insert(scripted).clone()
    }

    /// Merges `pr` into its base with a merge commit, as the forge's merge button does.
    fn merge(&self, number: u64, sha: &str) -> Result<String, (StatusCode, String)> {
        let pr = self
            .lock()
            .prs
            .iter()
            .find(|p| p.number == number)
            .cloned()
            .ok_or((StatusCode::NOT_FOUND, "Not Found".into()))?;
        if pr.state != "open" {
            return Err((StatusCode::METHOD_NOT_ALLOWED, "Pull Request is not mergeable".into()));
        }
        let head = self.head_of(&pr);
        if head != sha {
            return Err((StatusCode::CONFLICT, "Head branch was modified. Review and try the merge again.".into()));
        }
        if std::mem::take(&mut self.faults().refuse_merge_once) {
            return Err((
                StatusCode::METHOD_NOT_ALLOWED,
                "Base branch was modified. Review and try the merge again.".into(),
            ));
        }
        let scratch = std::env::temp_dir().join(format!("forge-merge-{}", uuid::Uuid::new_v4()));
        let result = (|| {
            let bare = self.bare.display().to_string();
            let dir = scratch.display().to_string();
            git(Path::new("/"), &["clone", "--quiet", "--branch", &pr.base, &format!("file://{bare}"), &dir])?;
            git(&scratch, &["fetch", "--quiet", "origin", &format!("refs/heads/{}", pr.branch)])?;
            let msg = format!("Merge pull request #{number} from {}\n\n{}", pr.branch, pr.title);
            if let Err(e) = git(&scratch, &["merge", "--no-ff", "--quiet", "-m", &msg, "FETCH_HEAD"]) {
                return Err(format!("conflict: {e}"));
            }
            git(&scratch, &["push", "--quiet", "origin", &format!("HEAD:refs/heads/{}", pr.base)])?;
            git(&scratch, &["rev-parse", "HEAD"])
        })();
        let _ = std::fs::remove_dir_all(&scratch);
        match result {
            Ok(commit) => {
                let mut inner = self.lock();
                if let Some(p) = inner.prs.iter_mut().find(|p| p.number == number) {
                    p.state = "merged".into();
                    p.head = Some(head);
                    p.merge_commit = Some(commit.clone());
                }
                Ok(commit)
            }
            Err(e) if e.starts_with("conflict") => {
                Err((StatusCode::METHOD_NOT_ALLOWED, "Pull Request is not mergeable".into()))
            }
            Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, e)),
        }
    }
}

fn github_pr(f: &Forge, pr: &Pr, base_url: &str) -> Value {
    json!({"number": pr.number, "html_url": format!("{base_url}/pull/{}", pr.number), "state": if pr.state == "open" { "open" } else { "closed" },
        "merged": pr.state == "merged", "merged_at": if pr.state == "merged" { json!("2026-01-01T00:00:00Z") } else { Value::Null },
        "merge_commit_sha": pr.merge_commit, "head": {"ref": pr.branch, "sha": f.head_of(pr), "repo": {"full_name": "platform/apps"}},
        "base": {"ref": pr.base, "repo": {"full_name": "platform/apps"}}, "title": pr.title})
}

fn gitlab_mr(f: &Forge, pr: &Pr, base_url: &str) -> Value {
    let state = match pr.state.as_str() {
        "open" => "opened",
        s => s,
    };
    json!({"iid": pr.number, "web_url": format!("{base_url}/-/merge_requests/{}", pr.number), "state": state,
        "merge_commit_sha": pr.merge_commit, "source_branch": pr.branch, "target_branch": pr.base, "sha": f.head_of(pr), "title": pr.title,
        "source_project_id": 7, "target_project_id": 7})
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn query(uri: &axum::http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned()))
        .collect()
}

async fn handle(State(f): State<Arc<Forge>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body: Value = axum::body::to_bytes(body, 1 << 20)
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let path = percent_encoding::percent_decode_str(parts.uri.path()).decode_utf8_lossy().into_owned();
    f.lock().requests.push(format!("{} {path}", parts.method));
    {
        let mut faults = f.faults();
        let token = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| parts.headers.get("private-token").and_then(|v| v.to_str().ok()));
        if faults.token_expired || token != Some(f.token.as_str()) {
            return answer(StatusCode::UNAUTHORIZED, json!({"message": "Bad credentials"}));
        }
        if faults.server_errors > 0 {
            faults.server_errors -= 1;
            return answer(StatusCode::BAD_GATEWAY, json!({"message": "upstream unavailable"}));
        }
        if faults.rate_limits > 0 {
            faults.rate_limits -= 1;
            return ([("retry-after", "1")], answer(StatusCode::TOO_MANY_REQUESTS, json!({"message": "rate limited"})))
                .into_response();
        }
    }
    let q = query(&parts.uri);
    // Segments are decoded one by one: a GitLab project id or branch is one encoded segment.
    let decoded: Vec<String> = parts
        .uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .map(|seg| percent_encoding::percent_decode_str(seg).decode_utf8_lossy().into_owned())
        .collect();
    let segs: Vec<&str> = decoded.iter().map(String::as_str).collect();
    match segs.as_slice() {
        ["api", "v3", "repos", owner, repo, rest @ ..] => {
            github(&f, &parts.method, &format!("https://forge.invalid/{owner}/{repo}"), rest, &q, &body)
        }
        ["api", "v4", "projects", project, rest @ ..] => {
            gitlab(&f, &parts.method, &format!("https://forge.invalid/{project}"), rest, &q, &body)
        }
        _ => answer(StatusCode::NOT_FOUND, json!({"message": "Not Found"})),
    }
}

fn open_pr(f: &Forge, branch: &str, base: &str, title: &str) -> Result<Pr, (StatusCode, String)> {
    if f.faults().fail_create {
        return Err((StatusCode::INTERNAL_SERVER_ERROR, "something went wrong".into()));
    }
    if f.rev(&format!("refs/heads/{branch}")).is_none() {
        return Err((StatusCode::UNPROCESSABLE_ENTITY, format!("head {branch} does not exist")));
    }
    let mut inner = f.lock();
    if inner.prs.iter().any(|p| p.branch == branch && p.state == "open") {
        return Err((StatusCode::UNPROCESSABLE_ENTITY, format!("A pull request already exists for {branch}.")));
    }
    let pr = Pr {
        number: inner.prs.len() as u64 + 1,
        branch: branch.into(),
        base: base.into(),
        title: title.into(),
        state: "open".into(),
        head: None,
        merge_commit: None,
    };
    inner.prs.push(pr.clone());
    Ok(pr)
}

fn close_pr(f: &Forge, n: u64) -> Option<Pr> {
    let head = f.lock().prs.iter().find(|p| p.number == n).map(|p| f.head_of(p));
    let mut inner = f.lock();
    let pr = inner.prs.iter_mut().find(|p| p.number == n)?;
    if pr.state == "open" {
        pr.state = "closed".into();
        pr.head = head;
    }
    Some(pr.clone())
}

fn find(f: &Forge, n: &str) -> Option<Pr> {
    let n: u64 = n.parse().ok()?;
    f.lock().prs.iter().find(|p| p.number == n).cloned()
}

fn not_found() -> Response {
    answer(StatusCode::NOT_FOUND, json!({"message": "Not Found"}))
}

fn github(f: &Forge, m: &Method, base: &str, rest: &[&str], q: &BTreeMap<String, String>, body: &Value) -> Response {
    let s = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or_default();
    match (m.as_str(), rest) {
        ("GET", ["pulls"]) => {
            let head = q.get("head").and_then(|h| h.split_once(':')).map(|(_, b)| b.to_owned()).unwrap_or_default();
            let prs: Vec<Value> = f
                .pull_requests()
                .iter()
                .filter(|p| p.state == "open" && p.branch == head)
                .map(|p| github_pr(f, p, base))
                .collect();
            answer(StatusCode::OK, json!(prs))
        }
        ("POST", ["pulls"]) => match open_pr(f, s("head"), s("base"), s("title")) {
            Ok(pr) => answer(StatusCode::CREATED, github_pr(f, &pr, base)),
            Err((code, m)) => answer(code, json!({"message": m})),
        },
        ("GET", ["pulls", n]) => find(f, n).map_or_else(not_found, |p| answer(StatusCode::OK, github_pr(f, &p, base))),
        ("PATCH", ["pulls", n]) if s("state") == "closed" => {
            let Ok(num) = n.parse() else { return not_found() };
            close_pr(f, num).map_or_else(not_found, |p| answer(StatusCode::OK, github_pr(f, &p, base)))
        }
        ("PUT", ["pulls", n, "merge"]) => {
            let Ok(num) = n.parse() else { return not_found() };
            match f.merge(num, s("sha")) {
                Ok(sha) => answer(
                    StatusCode::OK,
                    json!({"sha": sha, "merged": true, "message": "Pull Request successfully merged"}),
                ),
                Err((code, m)) => answer(code, json!({"message": m})),
            }
        }
        ("GET", ["pulls", n, "reviews"]) => {
            // A drive-by review by someone without write access never counts.
            let approved = n.parse().is_ok_and(|n| f.faults().approved.contains(&n));
            let head = find(f, n).map(|p| f.head_of(&p)).unwrap_or_default();
            let mut reviews = vec![
                json!({"user": {"login": "drive-by"}, "state": "APPROVED", "author_association": "NONE", "commit_id": head}),
            ];
            if approved {
                reviews.push(json!({"user": {"login": "alice"}, "state": "APPROVED", "author_association": "MEMBER", "commit_id": head}));
            }
            answer(StatusCode::OK, json!(reviews))
        }
        // Checks whose name starts with `run:` are GitHub Actions-style check runs, the others
        // commit statuses.
        ("GET", ["commits", sha, "status"]) => {
            let statuses: Vec<Value> = f
                .checks_of(sha)
                .iter()
                .filter(|(n, _)| !n.starts_with("run:"))
                .map(|(n, s)| json!({"context": n, "state": s, "target_url": format!("{base}/checks/{n}")}))
                .collect();
            answer(StatusCode::OK, json!({"state": "pending", "statuses": statuses}))
        }
        ("GET", ["commits", sha, "check-runs"]) => {
            let runs: Vec<Value> = f
                .checks_of(sha)
                .iter()
                .filter_map(|(n, s)| Some((n.strip_prefix("run:")?, s)))
                .map(|(n, s)| {
                    let (status, conclusion) = match s.as_str() {
                        "pending" => ("in_progress", Value::Null),
                        other => ("completed", json!(other)),
                    };
                    json!({"name": n, "status": status, "conclusion": conclusion, "html_url": format!("{base}/runs/{n}")})
                })
                .collect();
            answer(StatusCode::OK, json!({"total_count": runs.len(), "check_runs": runs}))
        }
        ("GET", ["commits", reference @ ..]) => match git(&f.bare, &["log", "-1", "--format=%B", &reference.join("/")])
        {
            Ok(message) => answer(StatusCode::OK, json!({"commit": {"message": message}})),
            Err(_) => answer(StatusCode::UNPROCESSABLE_ENTITY, json!({"message": "No commit found"})),
        },
        ("DELETE", ["git", "refs", "heads", branch @ ..]) => {
            match git(&f.bare, &["update-ref", "-d", &format!("refs/heads/{}", branch.join("/"))]) {
                Ok(_) => StatusCode::NO_CONTENT.into_response(),
                Err(_) => answer(StatusCode::UNPROCESSABLE_ENTITY, json!({"message": "Reference does not exist"})),
            }
        }
        _ => not_found(),
    }
}

fn gitlab(f: &Forge, m: &Method, base: &str, rest: &[&str], q: &BTreeMap<String, String>, body: &Value) -> Response {
    let s = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or_default();
    match (m.as_str(), rest) {
        ("GET", ["merge_requests"]) => {
            let branch = q.get("source_branch").cloned().unwrap_or_default();
            let mrs: Vec<Value> = f
                .pull_requests()
                .iter()
                .filter(|p| p.state == "open" && p.branch == branch)
                .map(|p| gitlab_mr(f, p, base))
                .collect();
            answer(StatusCode::OK, json!(mrs))
        }
        ("POST", ["merge_requests"]) => match open_pr(f, s("source_branch"), s("target_branch"), s("title")) {
            Ok(pr) => answer(StatusCode::CREATED, gitlab_mr(f, &pr, base)),
            Err((StatusCode::UNPROCESSABLE_ENTITY, m)) if m.contains("already exists") => {
                answer(StatusCode::CONFLICT, json!({"message": [m]}))
            }
            Err((code, m)) => answer(code, json!({"message": m})),
        },
        ("GET", ["merge_requests", n]) => {
            find(f, n).map_or_else(not_found, |p| answer(StatusCode::OK, gitlab_mr(f, &p, base)))
        }
        ("PUT", ["merge_requests", n]) if s("state_event") == "close" => {
            let Ok(num) = n.parse() else { return not_found() };
            close_pr(f, num).map_or_else(not_found, |p| answer(StatusCode::OK, gitlab_mr(f, &p, base)))
        }
        ("PUT", ["merge_requests", n, "merge"]) => {
            let Ok(num) = n.parse() else { return not_found() };
            match f.merge(num, s("sha")) {
                Ok(_) => find(f, n).map_or_else(not_found, |p| answer(StatusCode::OK, gitlab_mr(f, &p, base))),
                Err((StatusCode::CONFLICT, m)) => answer(StatusCode::CONFLICT, json!({"message": m})),
                Err((StatusCode::METHOD_NOT_ALLOWED, m)) => answer(StatusCode::NOT_ACCEPTABLE, json!({"message": m})),
                Err((code, m)) => answer(code, json!({"message": m})),
            }
        }
        ("GET", ["merge_requests", n, "approvals"]) => {
            let approved = n.parse().is_ok_and(|n| f.faults().approved.contains(&n));
            answer(
                StatusCode::OK,
                json!({"approved": approved, "approved_by": if approved { json!([{"user": {"username": "alice"}}]) } else { json!([]) }}),
            )
        }
        ("GET", ["repository", "commits", sha, "statuses"]) => {
            let statuses: Vec<Value> = f
                .checks_of(sha)
                .iter()
                .map(|(n, s)| {
                    let gl = match s.as_str() {
                        "failure" => "failed",
                        "success" => "success",
                        _ => "running",
                    };
                    json!({"name": n, "status": gl, "target_url": format!("{base}/-/jobs/{n}")})
                })
                .collect();
            answer(StatusCode::OK, json!(statuses))
        }
        ("GET", ["repository", "commits", reference @ ..]) => {
            match git(&f.bare, &["log", "-1", "--format=%B", &reference.join("/")]) {
                Ok(message) => answer(StatusCode::OK, json!({"message": message})),
                Err(_) => not_found(),
            }
        }
        ("DELETE", ["repository", "branches", branch @ ..]) => {
            match git(&f.bare, &["update-ref", "-d", &format!("refs/heads/{}", branch.join("/"))]) {
                Ok(_) => StatusCode::NO_CONTENT.into_response(),
                Err(_) => not_found(),
            }
        }
        _ => not_found(),
    }
}
