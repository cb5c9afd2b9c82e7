//! The GitOps flow: the tested change becomes a commit on branch `reflex/<remediation>`, a pull
//! request whose checks must pass (CI), a merge when the gate allows (deploy), and — when the
//! fix does not hold — a merged revert of that merge (rollback).
//!
//! Contract: every step is idempotent and resumable without memory: the branch name derives
//! from the Remediation, and every commit Reflex makes carries trailers naming the
//! Remediation's uid, the proposal's digest, the base commit, the files and when it was made.
//! Before it pushes or opens anything, a step looks for what an earlier run (another replica,
//! or this one before a restart) left: an open pull request from the branch, or the branch
//! itself — reused when its trailers say it is this change, replaced when it is an earlier
//! proposal of this Remediation, refused when it is anyone else's. Nothing is pushed twice
//! and no second pull request is opened. A pull request is trusted only after it is read back
//! from the forge: its branch, its head commit (unchanged since the checks ran), and that
//! commit's trailers. Checks wait until every required one (or, with none named, every one
//! reported — at least one) passed, any failed, or the timeout counted from the commit's own
//! time. A refused merge because the base moved is rebased once onto the new base (a conflict
//! fails, saying so) and checked again. When a change ends without a merge, its pull request
//! is closed and its branch deleted ([`Session::abandon`]).

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use secrecy::SecretString;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::forge::{self, Check, CheckState, Forge, ForgeError, Merge, PrState, PullRequest};
use super::manifest::{self, Wanted};
use super::repo::{Credentials, GitError, Repo, is_sha};
use crate::api::ErrorCategory;
use crate::api::policy::ForgeType;
use crate::api::remediation::{CheckRecord, Proposal, PullRequestRecord, Remediation};
use crate::api::validate::{RemoteScheme, ValidGitops};
use crate::ports::{StageError, StageResult};

mod undo;

/// How the operator runs GitOps changes.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where working copies are made (removed after each step).
    pub work_dir: PathBuf,
    /// Whether `file://` repositories may be used (tests and the demo).
    pub allow_local: bool,
    /// How often the forge is asked about checks, reviews and merges.
    pub poll: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self { work_dir: std::env::temp_dir(), allow_local: false, poll: Duration::from_secs(10) }
    }
}

const UID: &str = "Reflex-Remediation-UID";
const DIGEST: &str = "Reflex-Proposal";
const BASE: &str = "Reflex-Base";
const FILES: &str = "Reflex-Files";
const CREATED: &str = "Reflex-Created";
const REVERTS: &str = "Reflex-Reverts";

/// The branch a Remediation's change is pushed to.
pub fn branch_of(rem: &Remediation) -> String {
    format!("reflex/{}", rem.metadata.name.as_deref().unwrap_or_default())
}

/// The branch its revert is pushed to.
pub fn revert_branch_of(rem: &Remediation) -> String {
    format!("{}-revert", branch_of(rem))
}

/// The value of trailer `key` in a commit message: only the message's last paragraph is its
/// trailer block (as `git interpret-trailers` reads it), and the last one of a key wins.
pub fn trailer(message: &str, key: &str) -> Option<String> {
    let block = message.trim_end().rsplit("\n\n").next().unwrap_or_default();
    block
        .lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(|v| v.trim().to_owned()))
        .next_back()
        .filter(|v| !v.is_empty())
}

/// One line, without control characters, at most `max` characters: what goes into a commit
/// subject or a pull-request title from a field someone else wrote.
fn line(text: &str, max: usize) -> String {
    let one: String = text.lines().next().unwrap_or_default().chars().filter(|c| !c.is_control()).collect();
    one.trim().chars().take(max).collect()
}

/// The commit message: what changes and why, the Remediation and its alert, and the trailers
/// a later run recognises its own work by.
pub fn commit_message(
    rem: &Remediation,
    digest: &str,
    base: &str,
    files: &[String],
    created: Timestamp,
    rationale: &str,
) -> String {
    let ns = rem.metadata.namespace.as_deref().unwrap_or_default();
    let name = rem.metadata.name.as_deref().unwrap_or_default();
    let alert = &rem.spec.alert;
    let target = &rem.spec.target;
    let mut m = format!("reflex: fix {} {ns}/{} ({})\n\n", target.kind.as_str(), target.name, line(&alert.name, 80));
    m.push_str(&format!("{}\n\n", line(rationale, 300)));
    m.push_str(&format!("Remediation: {ns}/{name} (kubectl reflex explain -n {ns} {name})\n"));
    m.push_str(&format!("Alert: {} fingerprint {}", line(&alert.name, 120), line(&alert.fingerprint, 64)));
    if let Some(url) = alert.generator_url.as_deref().filter(|u| u.starts_with("http")) {
        m.push_str(&format!("\nAlert source: {}", line(url, 500)));
    }
    m.push_str(&format!(
        "\n\n{UID}: {}\n{DIGEST}: {digest}\n{BASE}: {base}\n{FILES}: {}\n{CREATED}: {created}\n",
        rem.metadata.uid.as_deref().unwrap_or_default(),
        files.join(", ")
    ));
    m
}

/// Where a pull request's checks are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checks {
    /// Not all have reported.
    Pending,
    /// Every one that counts passed.
    Passed,
    /// These failed.
    Failed(Vec<String>),
}

/// Judges the checks on a commit: with `required` names, each must have reported success
/// (any failure of any check fails); with none named, at least one must have reported and all
/// must have passed. A check reported twice (a status and a check run of one name, or a re-run)
/// counts by its worst state.
pub fn judge(required: &[String], checks: &[Check]) -> Checks {
    let failed: Vec<String> =
        checks.iter().filter(|c| c.state == CheckState::Failure).map(|c| c.name.clone()).collect();
    if !failed.is_empty() {
        return Checks::Failed(failed);
    }
    let passed = |name: &str| {
        let mine: Vec<&Check> = checks.iter().filter(|c| c.name == name).collect();
        !mine.is_empty() && mine.iter().all(|c| c.state == CheckState::Success)
    };
    let done = if required.is_empty() {
        !checks.is_empty() && checks.iter().all(|c| c.state == CheckState::Success)
    } else {
        required.iter().all(|r| passed(r))
    };
    if done { Checks::Passed } else { Checks::Pending }
}

fn records(checks: &[Check]) -> Vec<CheckRecord> {
    checks
        .iter()
        .take(64)
        .map(|c| CheckRecord {
            name: line(&c.name, 200),
            state: c.state.as_str().to_owned(),
            url: c
                .url
                .as_deref()
                .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
                .map(|u| line(u, 500)),
        })
        .collect()
}

fn forge_error(what: &str, e: ForgeError) -> StageError {
    let category = match &e {
        ForgeError::Auth(_) => ErrorCategory::NeedsHuman,
        ForgeError::NotFound(_) | ForgeError::Rejected(_) => ErrorCategory::NeedsHuman,
        ForgeError::Unavailable(_) | ForgeError::Cancelled => ErrorCategory::Transient,
    };
    StageError::new(category, format!("{what}: {e}"))
}

fn git_error(what: &str, e: GitError) -> StageError {
    let category = match &e {
        GitError::Auth(_) | GitError::Setup(_) => ErrorCategory::NeedsHuman,
        GitError::Conflict(_) => ErrorCategory::NeedsHuman,
        GitError::Rejected(_) => ErrorCategory::Conflict,
        GitError::Failed(_) => ErrorCategory::Transient,
    };
    StageError::new(category, format!("{what}: {e}"))
}

/// What opening a change came to.
#[derive(Clone, Debug, PartialEq)]
pub struct Opened {
    /// The pull request, with its checks.
    pub record: PullRequestRecord,
    /// `Ok` when the checks passed; why not, otherwise (the pull request is then closed).
    pub verdict: Result<(), String>,
}

/// One Remediation's conversation with its repository and forge.
pub struct Session {
    forge: Box<dyn Forge>,
    creds: Credentials,
    gitops: ValidGitops,
    settings: Settings,
    cancel: CancellationToken,
}

fn refuse<T>(message: String) -> StageResult<T> {
    Err(StageError::new(ErrorCategory::NeedsHuman, message))
}

impl Session {
    /// Reads the credentials Secret (in `namespace`) and checks it may be sent where the policy
    /// points: the forge's API host and, for HTTPS, the repository's.
    pub async fn new(
        client: &kube::Client,
        namespace: &str,
        gitops: &ValidGitops,
        settings: &Settings,
        cancel: CancellationToken,
    ) -> StageResult<Self> {
        let name = &gitops.spec.credentials_secret;
        let secret = Api::<Secret>::namespaced(client.clone(), namespace).get_opt(name).await.map_err(|e| {
            crate::cluster::api_error(&format!("reading the GitOps credentials Secret {namespace}/{name}"), &e)
        })?;
        let Some(secret) = secret else {
            return refuse(format!(
                "the GitOps credentials Secret {namespace}/{name} does not exist; create it with key token"
            ));
        };
        let data = secret.data.clone().unwrap_or_default();
        let key =
            |k: &str| data.get(k).map(|v| String::from_utf8_lossy(&v.0).trim().to_owned()).filter(|v| !v.is_empty());
        let Some(token) = key("token") else {
            return refuse(format!("Secret {namespace}/{name} has no key token (the forge API token)"));
        };
        let annotations = secret.metadata.annotations.as_ref();
        let mut urls = vec![gitops.api_url.clone()];
        if gitops.remote.scheme == RemoteScheme::Https {
            urls.push(gitops.remote.url.clone());
        }
        for url in urls {
            crate::egress::bound_to(name, annotations, &url)
                .map_err(|why| StageError::new(ErrorCategory::NeedsHuman, why))?;
        }
        let user = match gitops.spec.forge.type_ {
            ForgeType::Github => "x-access-token",
            ForgeType::Gitlab => "oauth2",
        };
        let creds = Credentials {
            user: user.to_owned(),
            token: Some(SecretString::from(token.clone())),
            ssh_key: key("ssh-privatekey").map(SecretString::from),
            known_hosts: key("known_hosts"),
        };
        let forge = forge::client(
            gitops.spec.forge.type_,
            &gitops.api_url,
            &gitops.project,
            SecretString::from(token),
            name,
            cancel.clone(),
        )
        .map_err(|e| StageError::new(ErrorCategory::Transient, e))?;
        Ok(Self { forge, creds, gitops: gitops.clone(), settings: settings.clone(), cancel })
    }

    fn base(&self) -> &str {
        &self.gitops.spec.base_branch
    }

    async fn clone_base(&self) -> StageResult<Repo> {
        Repo::clone(&self.gitops.remote, self.base(), &self.creds, &self.settings.work_dir, self.settings.allow_local)
            .await
            .map_err(|e| git_error(&format!("cloning {} ({})", self.gitops.remote.url, self.base()), e))
    }

    async fn wait(&self) -> StageResult<()> {
        tokio::select! {
            () = self.cancel.cancelled() => Err(StageError::new(ErrorCategory::Transient, "cancelled")),
            () = tokio::time::sleep(self.settings.poll) => Ok(()),
        }
    }

    /// The trailers of commit (or branch) `reference`, read from the forge.
    async fn trailers_of(&self, reference: &str) -> StageResult<(Option<String>, Option<String>, String)> {
        let message = self
            .forge
            .commit_message(reference)
            .await
            .map_err(|e| forge_error(&format!("reading commit {reference}"), e))?;
        Ok((trailer(&message, UID), trailer(&message, DIGEST), message))
    }

    /// Opens (or resumes) the pull request for `proposal`, the change from `live` to `stored`,
    /// and waits for its checks.
    pub async fn propose(
        &self,
        rem: &Remediation,
        proposal: &Proposal,
        live: &Value,
        stored: &Value,
    ) -> StageResult<Opened> {
        let uid = rem.metadata.uid.clone().unwrap_or_default();
        let digest = proposal.digest.as_str();
        let branch = branch_of(rem);
        let repo = self.clone_base().await?;
        let base_commit = repo.rev("HEAD").await.map_err(|e| git_error("reading the base commit", e))?;
        // What an earlier run left: an open pull request, or the branch alone (pushed before a
        // crash). Reused only when its head is provably this change; replaced when it is an
        // earlier proposal of this Remediation; refused when it is anyone else's.
        let open = self
            .forge
            .find_open(&branch, self.base())
            .await
            .map_err(|e| forge_error("looking for an open pull request", e))?;
        let pushed = repo.remote_branch(&branch).await.map_err(|e| git_error("reading the remote branch", e))?;
        let mut replacing: Option<String> = None;
        if let Some(head) = pushed.clone() {
            let message = repo.message(&head).await.map_err(|e| git_error("reading the branch's commit", e))?;
            if trailer(&message, UID).as_deref() != Some(uid.as_str()) {
                return refuse(format!(
                    "branch {branch} already exists in {} and was not made for this Remediation; delete it or rename the Remediation",
                    self.gitops.remote.url
                ));
            }
            let same = trailer(&message, DIGEST).as_deref() == Some(digest)
                && self.prove(&repo, &head, proposal, &branch).await.is_ok();
            if same {
                let pr = match open.filter(|pr| pr.head == head) {
                    Some(pr) => pr,
                    None => self.open_pr(rem, &branch, &message, &head).await?,
                };
                return self.checked(pr, &message, &branch).await;
            }
            replacing = Some(head);
        } else if let Some(pr) = &open {
            return refuse(format!("pull request {} has no branch {branch}; close it", pr.url));
        }
        let files = self.edited(&repo, rem, live, stored)?;
        let names: Vec<String> = files.iter().map(|(f, _)| f.clone()).collect();
        let message = commit_message(rem, digest, &base_commit, &names, Timestamp::now(), &proposal.rationale);
        let commit = repo.commit(&branch, &files, &message).await.map_err(|e| git_error("committing the change", e))?;
        repo.push(&branch, replacing.as_deref()).await.map_err(|e| git_error(&format!("pushing {branch}"), e))?;
        let pr = match open {
            Some(pr) => self.forge.get(pr.number).await.map_err(|e| forge_error("reading the pull request", e))?,
            None => self.open_pr(rem, &branch, &message, &commit).await?,
        };
        if pr.head != commit {
            return refuse(format!("pull request {} does not point at the commit Reflex pushed ({commit})", pr.url));
        }
        self.checked(pr, &message, &branch).await
    }

    /// Proves that commit `head` (fetched from `branch`) is `proposal` and nothing else: one
    /// parent, on the base branch's history; every file it changes a YAML file whose every
    /// changed document becomes exactly what the proposal's patch makes of it.
    async fn prove(&self, repo: &Repo, head: &str, proposal: &Proposal, branch: &str) -> StageResult<()> {
        let fail = |why: String| {
            StageError::new(
                ErrorCategory::NeedsHuman,
                format!("commit {head} on {branch} is not the tested change: {why}"),
            )
        };
        let g = |e: GitError| fail(e.to_string());
        let parents = repo.git(&["rev-list", "--parents", "-n", "1", "--end-of-options", head]).await.map_err(g)?;
        let parents: Vec<&str> = parents.split_whitespace().skip(1).collect();
        let [parent] = parents.as_slice() else { return Err(fail("it is not a single-parent commit".into())) };
        let base = format!("refs/remotes/origin/{}", self.base());
        if repo.git(&["merge-base", "--is-ancestor", "--end-of-options", parent, &base]).await.is_err() {
            return Err(fail(format!("its parent {parent} is not on {}", self.base())));
        }
        let names = repo.git(&["diff", "--name-only", "-z", "--no-renames", parent, head, "--"]).await.map_err(g)?;
        let names: Vec<&str> = names.split('\0').filter(|n| !n.is_empty()).collect();
        if names.is_empty() {
            return Err(fail("it changes nothing".into()));
        }
        for name in names {
            if !(name.ends_with(".yaml") || name.ends_with(".yml")) || name.chars().any(char::is_control) {
                return Err(fail(format!("it changes {name:?}, which is not a manifest")));
            }
            let old =
                repo.git(&["show", &format!("{parent}:{name}")]).await.map_err(|_| fail(format!("it adds {name}")))?;
            let new =
                repo.git(&["show", &format!("{head}:{name}")]).await.map_err(|_| fail(format!("it deletes {name}")))?;
            let (old_docs, new_docs) = (manifest::documents(&old), manifest::documents(&new));
            if old_docs.len() != new_docs.len() {
                return Err(fail(format!("it adds or removes documents in {name}")));
            }
            for ((os, oe), (ns, ne)) in old_docs.into_iter().zip(new_docs) {
                let parse = |t: &str| serde_saphyr::from_str::<Value>(t).ok();
                let (Some(before), Some(after)) = (parse(&old[os..oe]), parse(&new[ns..ne])) else {
                    return Err(fail(format!("{name} does not parse")));
                };
                if before == after {
                    continue;
                }
                let expected = crate::patch::safety::apply(proposal.patch_type, &before, &proposal.patch.0)
                    .map_err(|e| fail(format!("the patch does not apply to {name}: {e}")))?;
                if expected != after {
                    return Err(fail(format!("{name} changes more than (or other than) the proposal's patch")));
                }
            }
        }
        Ok(())
    }

    /// The files the change edits, with their new text.
    fn edited(
        &self,
        repo: &Repo,
        rem: &Remediation,
        live: &Value,
        stored: &Value,
    ) -> StageResult<Vec<(String, String)>> {
        let invalid = |m: String| StageError::new(ErrorCategory::InvalidSpec, m);
        let changes = manifest::changes(live, stored).map_err(invalid)?;
        if changes.is_empty() {
            return Err(invalid("the change sets nothing the repository could hold".into()));
        }
        let spec = &self.gitops.spec;
        let files = match &spec.path {
            Some(path) => {
                repo.read(path).map_err(|e| git_error("reading spec.ci.gitops.path", e))?.into_iter().collect()
            }
            None => repo.yaml_files(spec.search_path.as_deref()).map_err(|e| git_error("reading the repository", e))?,
        };
        let target = &rem.spec.target;
        let wanted = Wanted {
            api_version: target.kind.api_version(),
            kind: target.kind.as_str(),
            name: &target.name,
            namespace: rem.metadata.namespace.as_deref().unwrap_or_default(),
        };
        let found = manifest::locate(&files, &wanted);
        if found.is_empty() {
            let scope = spec.path.as_deref().or(spec.search_path.as_deref()).unwrap_or("the repository");
            return Err(invalid(format!(
                "no manifest for {} {}/{} in {} ({scope}: {} YAML files read); set spec.ci.gitops.path to the file that defines it",
                wanted.kind,
                wanted.namespace,
                wanted.name,
                self.gitops.remote.url,
                files.len()
            )));
        }
        let plan = manifest::assign(&found, &changes).map_err(invalid)?;
        let mut out: Vec<(String, String)> = Vec::new();
        // Several documents of one file: edit from the last, so earlier spans stay valid.
        let mut by_file: std::collections::BTreeMap<String, Vec<(usize, Vec<manifest::Change>)>> = Default::default();
        for (i, c) in plan {
            by_file.entry(found[i].file.clone()).or_default().push((i, c));
        }
        for (file, mut docs) in by_file {
            let mut text = files.iter().find(|(f, _)| *f == file).map(|(_, t)| t.clone()).unwrap_or_default();
            docs.sort_by_key(|(i, _)| std::cmp::Reverse(found[*i].span.0));
            for (i, c) in docs {
                text = manifest::edit(&text, found[i].span, &c).map_err(|e| invalid(format!("{file}: {e}")))?;
            }
            out.push((file, text));
        }
        if out.iter().all(|(f, t)| files.iter().any(|(g, u)| g == f && u == t)) {
            return Err(invalid(
                "the repository already holds these values; the cluster has drifted from it — sync it instead".into(),
            ));
        }
        Ok(out)
    }

    async fn open_pr(&self, rem: &Remediation, branch: &str, message: &str, head: &str) -> StageResult<PullRequest> {
        let title = message.lines().next().unwrap_or("reflex: fix").to_owned();
        let ns = rem.metadata.namespace.as_deref().unwrap_or_default();
        let name = rem.metadata.name.as_deref().unwrap_or_default();
        let body = format!(
            "Opened by Reflex for Remediation `{ns}/{name}`.\n\n{}\n\nSee `kubectl reflex explain -n {ns} {name}`. Reflex merges this pull request when its gate allows, waits for the cluster to converge and verifies the fix; if the fix does not hold it opens and merges a revert.",
            message.split("\n\n").nth(1).unwrap_or_default()
        );
        let pr = match self.forge.open(branch, self.base(), &title, &body).await {
            Ok(pr) => pr,
            // Opened by a request whose answer was lost, or by a racing replica: find it.
            Err(e) => match self.forge.find_open(branch, self.base()).await {
                Ok(Some(pr)) => pr,
                _ => return Err(forge_error("opening the pull request", e)),
            },
        };
        if pr.head != head || !pr.same_repo || pr.base != self.base() {
            return refuse(format!("pull request {} is not {branch} at {head} into {}", pr.url, self.base()));
        }
        Ok(pr)
    }

    /// Waits for the checks on `pr`'s head (made at the `Reflex-Created` time in `message`),
    /// and closes it when they fail or time out.
    async fn checked(&self, pr: PullRequest, message: &str, branch: &str) -> StageResult<Opened> {
        let created =
            trailer(message, CREATED).and_then(|t| t.parse::<Timestamp>().ok()).unwrap_or_else(Timestamp::now);
        let mut record = PullRequestRecord {
            number: pr.number,
            url: line(&pr.url, 500),
            branch: branch.to_owned(),
            commit: pr.head.clone(),
            base_commit: trailer(message, BASE).unwrap_or_default(),
            file: trailer(message, FILES).map(|f| line(&f, 500)).unwrap_or_default(),
            checks: Vec::new(),
            merge_commit: None,
        };
        let verdict = self.await_checks(&pr.head, created, &mut record.checks).await?;
        if verdict.is_err() {
            self.abandon(pr.number, branch, &pr.head).await;
        }
        Ok(Opened { record, verdict })
    }

    async fn await_checks(
        &self,
        sha: &str,
        since: Timestamp,
        out: &mut Vec<CheckRecord>,
    ) -> StageResult<Result<(), String>> {
        let timeout = self.gitops.checks_timeout;
        loop {
            let checks = self.forge.checks(sha).await.map_err(|e| forge_error("reading the checks", e))?;
            *out = records(&checks);
            match judge(&self.gitops.spec.required_checks, &checks) {
                Checks::Passed => return Ok(Ok(())),
                Checks::Failed(names) => {
                    let names: Vec<String> = names.iter().take(16).map(|n| line(n, 100)).collect();
                    return Ok(Err(format!("checks failed: {}", names.join(", "))));
                }
                Checks::Pending if Timestamp::now().duration_since(since).unsigned_abs() > timeout => {
                    let waiting: Vec<String> = if self.gitops.spec.required_checks.is_empty() {
                        checks
                            .iter()
                            .filter(|c| c.state == CheckState::Pending)
                            .map(|c| line(&c.name, 100))
                            .take(16)
                            .collect()
                    } else {
                        self.gitops
                            .spec
                            .required_checks
                            .iter()
                            .filter(|r| !checks.iter().any(|c| &c.name == *r && c.state == CheckState::Success))
                            .cloned()
                            .collect()
                    };
                    let which = if waiting.is_empty() {
                        "no check reported".to_owned()
                    } else {
                        format!("still waiting for {}", waiting.join(", "))
                    };
                    return Ok(Err(format!(
                        "checks did not pass within checksTimeout ({}s): {which}",
                        timeout.as_secs()
                    )));
                }
                Checks::Pending => self.wait().await?,
            }
        }
    }

    /// The pull request `number`, read back and proven to be `branch` (derived, never from
    /// status) of this project into the base branch, its head `commit` — a commit whose
    /// trailers name this Remediation and `digest`.
    async fn proven(
        &self,
        rem: &Remediation,
        number: u64,
        commit: &str,
        digest: &str,
        branch: &str,
    ) -> StageResult<PullRequest> {
        let pr = self.forge.get(number).await.map_err(|e| forge_error("reading the pull request", e))?;
        if pr.branch != branch || !pr.same_repo || pr.base != self.base() {
            return refuse(format!(
                "pull request {} is not from this project's branch {branch} into {}; status does not describe this change",
                pr.url,
                self.base()
            ));
        }
        if pr.head != commit {
            return refuse(format!(
                "pull request {} has moved to commit {} since its checks passed on {commit}; not merging someone else's commit",
                pr.url, pr.head
            ));
        }
        let (owner, tested, _) = self.trailers_of(&pr.head).await?;
        if owner.as_deref() != rem.metadata.uid.as_deref() || tested.as_deref() != Some(digest) {
            return refuse(format!("commit {} of {} is not this Remediation's tested change", pr.head, pr.url));
        }
        Ok(pr)
    }

    /// Merges the tested pull request of `proposal` (after the forge's own review approves it,
    /// within `review_timeout`, when `forge_review`); returns the record with its merge commit.
    /// Its content is proven first, from a fresh clone; a merge done already is resumed.
    pub async fn merge(
        &self,
        rem: &Remediation,
        record: &PullRequestRecord,
        proposal: &Proposal,
        forge_review: Option<std::time::Duration>,
    ) -> StageResult<PullRequestRecord> {
        let branch = branch_of(rem);
        let mut commit = record.commit.clone();
        if !is_sha(&commit) {
            return refuse(format!("status names no commit of pull request #{} ({commit:?})", record.number));
        }
        let pr = self.proven(rem, record.number, &commit, &proposal.digest, &branch).await?;
        if pr.state == PrState::Open {
            let repo = self.clone_base().await?;
            if repo.remote_branch(&branch).await.map_err(|e| git_error("fetching the branch", e))?.as_deref()
                != Some(commit.as_str())
            {
                return refuse(format!("branch {branch} is no longer at the tested commit {commit}"));
            }
            self.prove(&repo, &commit, proposal, &branch).await?;
        }
        let started = Timestamp::now();
        let mut rebased = false;
        loop {
            let pr = self.proven(rem, record.number, &commit, &proposal.digest, &branch).await?;
            let title = format!("Merge {branch} (Reflex)");
            let outcome = match pr.state {
                PrState::Merged => Merge::Merged(pr.merge_commit.clone().unwrap_or_default()),
                PrState::Closed => return refuse(format!("pull request {} was closed without a merge", pr.url)),
                PrState::Open => {
                    if let Some(timeout) = forge_review
                        && !self
                            .forge
                            .approved(pr.number, &pr.head)
                            .await
                            .map_err(|e| forge_error("reading the reviews", e))?
                    {
                        if Timestamp::now().duration_since(started).unsigned_abs() > timeout {
                            return refuse(format!(
                                "pull request {} was not approved on the forge within {}s",
                                pr.url,
                                timeout.as_secs()
                            ));
                        }
                        self.wait().await?;
                        continue;
                    }
                    self.forge.merge(pr.number, &pr.head, &title).await.map_err(|e| forge_error("merging", e))?
                }
            };
            match outcome {
                Merge::Merged(sha) if is_sha(&sha) => {
                    self.delete_branch(&branch, &commit).await;
                    let mut record = record.clone();
                    record.branch = branch;
                    record.commit = commit;
                    record.merge_commit = Some(sha);
                    return Ok(record);
                }
                Merge::Merged(other) => {
                    return refuse(format!("the forge merged {} but named no merge commit ({other:?})", pr.url));
                }
                Merge::Refused(why) => {
                    // A merge that went through though its answer was lost reads as merged.
                    let now =
                        self.forge.get(pr.number).await.map_err(|e| forge_error("reading the pull request", e))?;
                    if now.state == PrState::Merged {
                        continue;
                    }
                    if rebased {
                        return refuse(format!("the forge will not merge {}: {why}", pr.url));
                    }
                    // The base moved (or conflicts): rebase once, check again, merge again.
                    rebased = true;
                    commit = self.rebase(pr.number, &branch, &commit, record, &why).await?;
                }
            }
        }
    }

    /// Rebases `branch` (at `commit`) onto the moved base, pushes it, waits for its checks;
    /// returns the new head. A conflict closes the pull request and says which file.
    async fn rebase(
        &self,
        number: u64,
        branch: &str,
        commit: &str,
        record: &PullRequestRecord,
        why: &str,
    ) -> StageResult<String> {
        let repo = self.clone_base().await?;
        repo.remote_branch(branch).await.map_err(|e| git_error("fetching the branch", e))?;
        repo.git(&["checkout", "--quiet", "-B", branch, &format!("refs/remotes/origin/{branch}")])
            .await
            .map_err(|e| git_error("checking out the branch", e))?;
        if let Err(e) = repo.git(&["rebase", "--quiet", &format!("refs/remotes/origin/{}", self.base())]).await {
            let _ = repo.git(&["rebase", "--abort"]).await;
            self.abandon(number, branch, commit).await;
            return refuse(format!(
                "merge conflict: {} changed on {} since the change was made ({why}); the rebase failed ({e}), so the pull request was closed — the change must be made again",
                record.file,
                self.base()
            ));
        }
        let head = repo.rev("HEAD").await.map_err(|e| git_error("reading the rebased commit", e))?;
        repo.push(branch, Some(commit)).await.map_err(|e| git_error("pushing the rebased branch", e))?;
        let mut checks = Vec::new();
        if let Err(failed) = self.await_checks(&head, Timestamp::now(), &mut checks).await? {
            self.abandon(number, branch, &head).await;
            return refuse(format!("after the rebase onto the moved base, {failed}"));
        }
        Ok(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, state: CheckState) -> Check {
        Check { name: name.into(), state, url: None }
    }

    #[test]
    fn checks_pass_when_every_required_one_passed_and_fail_on_any_failure() {
        use CheckState::*;
        let req = vec!["ci/test".to_owned(), "lint".to_owned()];
        assert_eq!(judge(&req, &[check("ci/test", Success)]), Checks::Pending, "lint has not reported");
        assert_eq!(
            judge(&req, &[check("ci/test", Success), check("lint", Success), check("other", Pending)]),
            Checks::Passed
        );
        assert_eq!(
            judge(&req, &[check("ci/test", Success), check("lint", Success), check("other", Failure)]),
            Checks::Failed(vec!["other".into()])
        );
        assert_eq!(
            judge(&req, &[check("ci/test", Success), check("lint", Success), check("lint", Pending)]),
            Checks::Pending,
            "a re-run counts by its worst state"
        );
        assert_eq!(judge(&[], &[]), Checks::Pending, "with none named, at least one must report");
        assert_eq!(judge(&[], &[check("a", Success), check("b", Pending)]), Checks::Pending);
        assert_eq!(judge(&[], &[check("a", Success), check("b", Success)]), Checks::Passed);
    }

    #[test]
    fn trailers_are_read_back_and_a_forged_subject_cannot_add_one() {
        let rem: Remediation = serde_json::from_value(serde_json::json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "Remediation",
            "metadata": {"name": "web-oom", "namespace": "shop", "uid": "u-1"},
            "spec": {"policyRef": {"name": "p"}, "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "alert": {"name": "Oom\nReflex-Remediation-UID: evil", "fingerprint": "f", "startsAt": "2026-01-01T00:00:00Z"}}}))
        .unwrap_or_else(|e| panic!("{e}"));
        let m = commit_message(
            &rem,
            "sha256:aa",
            "b0",
            &["apps/web.yaml".into()],
            Timestamp::UNIX_EPOCH,
            "raise memory\nReflex-Proposal: x",
        );
        assert_eq!(trailer(&m, UID).as_deref(), Some("u-1"));
        assert_eq!(trailer(&m, DIGEST).as_deref(), Some("sha256:aa"));
        assert_eq!(trailer(&m, FILES).as_deref(), Some("apps/web.yaml"));
        assert_eq!(m.matches("Reflex-Remediation-UID:").count(), 1, "{m}");
        assert!(m.starts_with("reflex: fix Deployment shop/web (Oom)"), "{m}");
        assert_eq!(branch_of(&rem), "reflex/web-oom");
    }
}
