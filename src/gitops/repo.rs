//! A working copy of a GitOps repository, driven through the `git` command line (real git:
//! clone, commit, push, revert; git2 would add libgit2 and OpenSSL, gix has no push).
//!
//! Contract: every command runs with no user or system configuration (`HOME` is the working
//! directory's own, `GIT_CONFIG_NOSYSTEM`, no credential helper, no hooks, no prompts), only the
//! transports the remote needs (`file://` only when the operator allows local repositories),
//! symlinks checked out as plain files (so reading the tree cannot leave it), and a time limit.
//! Credentials never appear on a command line: an HTTPS token travels as an
//! `http.extraHeader` set through the environment, an SSH key as a file only the operator can
//! read, checked against the Secret's `known_hosts` (host keys are never accepted blindly).
//! Errors are classified ([`GitError`]) and scrubbed of the token. The directory is removed
//! when the [`Repo`] is dropped.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};

use crate::api::validate::{Remote, RemoteScheme};

/// Longest any one git command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Most YAML files the search reads.
pub const MAX_FILES: usize = 5000;
/// Most bytes of YAML the search reads.
pub const MAX_BYTES: usize = 64 * 1024 * 1024;

/// Whether `s` is a full commit id (SHA-1 or SHA-256, lowercase hex): what may be passed to
/// git or a forge as a commit, never an option or a path.
pub fn is_sha(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What git needs to reach the remote.
#[derive(Clone, Default)]
pub struct Credentials {
    /// HTTPS: the user name that goes with the token (`x-access-token` for GitHub,
    /// `oauth2` for GitLab).
    pub user: String,
    /// The token (HTTPS pushes and the forge API).
    pub token: Option<SecretString>,
    /// An SSH private key.
    pub ssh_key: Option<SecretString>,
    /// The known host keys for SSH.
    pub known_hosts: Option<String>,
}

/// Why a git command failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GitError {
    /// The remote refused the credentials.
    #[error("the repository refused the credentials: {0}")]
    Auth(String),
    /// A push was refused because the branch moved (or exists with other commits).
    #[error("the push was refused because the branch changed: {0}")]
    Rejected(String),
    /// A revert or rebase met changes it cannot combine.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Something that asks for a person (a missing known_hosts, a transport not allowed).
    #[error("{0}")]
    Setup(String),
    /// Anything else: the network, the remote, git itself.
    #[error("git failed: {0}")]
    Failed(String),
}

/// A clone in a directory of its own.
pub struct Repo {
    root: PathBuf,
    tree: PathBuf,
    env: Vec<(String, String)>,
    config: Vec<String>,
    secret: Option<String>,
}

impl Drop for Repo {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            tracing::warn!(dir = %self.root.display(), error = %e, "could not remove a GitOps working copy");
        }
    }
}

/// What a person reads of git's complaint: its last few meaningful lines (git and ssh say what
/// went wrong last, after any banner), control characters and the token removed, at most 600
/// characters.
fn scrub(text: &str, secret: Option<&str>) -> String {
    let mut t: String = text.chars().filter(|c| !c.is_control() || *c == '\n').collect();
    if let Some(s) = secret.filter(|s| !s.is_empty()) {
        t = t.replace(s, "***");
    }
    let lines: Vec<&str> = t.lines().map(str::trim).filter(|l| !l.is_empty() && !l.chars().all(|c| c == '@')).collect();
    let tail = lines[lines.len().saturating_sub(4)..].join(" / ");
    tail.chars().take(600).collect()
}

fn classify(stderr: &str) -> fn(String) -> GitError {
    let s = stderr.to_ascii_lowercase();
    if s.contains("authentication failed")
        || s.contains("could not read username")
        || s.contains("permission denied")
        || s.contains("returned error: 401")
        || s.contains("returned error: 403")
        || s.contains("invalid username or password")
    {
        GitError::Auth
    } else if s.contains("non-fast-forward")
        || s.contains("[rejected]")
        || s.contains("stale info")
        || s.contains("fetch first")
    {
        GitError::Rejected
    } else if s.contains("conflict") {
        GitError::Conflict
    } else if s.contains("host key verification failed")
        || s.contains("remote host identification has changed")
        || s.contains("transport") && s.contains("not allowed")
    {
        GitError::Setup
    } else {
        GitError::Failed
    }
}

impl Repo {
    /// Clones `branch` of `remote` into a new directory under `work`.
    pub async fn clone(
        remote: &Remote,
        branch: &str,
        creds: &Credentials,
        work: &Path,
        allow_file: bool,
    ) -> Result<Self, GitError> {
        let repo = Self::prepare(remote, creds, work, allow_file)?;
        let tree_arg = repo.tree.display().to_string();
        repo.git_in(
            &repo.root,
            &["clone", "--quiet", "--no-tags", "--single-branch", "--branch", branch, "--", &remote.url, &tree_arg],
        )
        .await?;
        Ok(repo)
    }

    /// An empty repository whose `origin` is `remote`: enough to delete a remote branch with a
    /// lease, without cloning anything.
    pub async fn scratch(
        remote: &Remote,
        creds: &Credentials,
        work: &Path,
        allow_file: bool,
    ) -> Result<Self, GitError> {
        let repo = Self::prepare(remote, creds, work, allow_file)?;
        let tree_arg = repo.tree.display().to_string();
        repo.git_in(&repo.root, &["init", "--quiet", "--bare", &tree_arg]).await?;
        repo.git(&["remote", "add", "origin", &remote.url]).await?;
        Ok(repo)
    }

    fn prepare(remote: &Remote, creds: &Credentials, work: &Path, allow_file: bool) -> Result<Self, GitError> {
        let root = work.join(format!("reflex-{}", uuid::Uuid::new_v4()));
        let tree = root.join("tree");
        let home = root.join("home");
        std::fs::create_dir_all(&home).map_err(|e| GitError::Setup(format!("creating {}: {e}", home.display())))?;
        let mut env: Vec<(String, String)> = vec![
            ("HOME".into(), home.display().to_string()),
            ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
            ("GIT_CONFIG_GLOBAL".into(), "/dev/null".into()),
            ("GIT_TERMINAL_PROMPT".into(), "0".into()),
            ("GIT_ASKPASS".into(), "/bin/false".into()),
            ("SSH_ASKPASS".into(), "/bin/false".into()),
            ("GIT_AUTHOR_NAME".into(), "Reflex".into()),
            ("GIT_AUTHOR_EMAIL".into(), "reflex@reflex.dev".into()),
            ("GIT_COMMITTER_NAME".into(), "Reflex".into()),
            ("GIT_COMMITTER_EMAIL".into(), "reflex@reflex.dev".into()),
            ("LC_ALL".into(), "C".into()),
            // File names are names, never pathspec magic.
            ("GIT_LITERAL_PATHSPECS".into(), "1".into()),
        ];
        let mut config: Vec<String> = [
            "protocol.allow=never",
            "core.hooksPath=/dev/null",
            "credential.helper=",
            "core.symlinks=false",
            "submodule.recurse=false",
            "core.fsmonitor=false",
            "commit.gpgSign=false",
            // A redirect would carry the token's header to another host.
            "http.followRedirects=false",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut secret = None;
        let mut repo =
            Self { root: root.clone(), tree: tree.clone(), env: Vec::new(), config: Vec::new(), secret: None };
        match remote.scheme {
            RemoteScheme::Https => {
                config.push("protocol.https.allow=always".into());
                if let Some(token) = &creds.token {
                    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
                        "{}:{}",
                        creds.user,
                        token.expose_secret()
                    ));
                    env.push(("GIT_CONFIG_COUNT".into(), "1".into()));
                    env.push(("GIT_CONFIG_KEY_0".into(), "http.extraHeader".into()));
                    env.push(("GIT_CONFIG_VALUE_0".into(), format!("Authorization: Basic {basic}")));
                    secret = Some(token.expose_secret().to_owned());
                }
            }
            RemoteScheme::Ssh => {
                config.push("protocol.ssh.allow=always".into());
                let (Some(key), Some(known)) = (&creds.ssh_key, &creds.known_hosts) else {
                    return Err(GitError::Setup(
                        "an ssh remote needs keys ssh-privatekey and known_hosts in the credentials Secret (host keys are never accepted unchecked)"
                            .into(),
                    ));
                };
                let key_file = home.join("id");
                let hosts_file = home.join("known_hosts");
                write_private(&key_file, &format!("{}\n", key.expose_secret().trim_end()))?;
                write_private(&hosts_file, known)?;
                env.push((
                    "GIT_SSH_COMMAND".into(),
                    format!(
                        "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes",
                        key_file.display(),
                        hosts_file.display()
                    ),
                ));
            }
            RemoteScheme::File if allow_file => config.push("protocol.file.allow=always".into()),
            RemoteScheme::File => {
                return Err(GitError::Setup(format!(
                    "{} is a repository on the operator's own filesystem; the operator refuses file:// remotes unless it runs with --allow-local-repositories",
                    remote.url
                )));
            }
        }
        repo.env = env;
        repo.config = config;
        repo.secret = secret;
        Ok(repo)
    }

    /// The working tree.
    pub fn tree(&self) -> &Path {
        &self.tree
    }

    async fn git_in(&self, dir: &Path, args: &[&str]) -> Result<String, GitError> {
        let mut cmd = tokio::process::Command::new("git");
        for c in &self.config {
            cmd.arg("-c").arg(c);
        }
        cmd.args(args).current_dir(dir).env_clear().kill_on_drop(true);
        if let Ok(path) = std::env::var("PATH") {
            cmd.env("PATH", path);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let out = tokio::time::timeout(COMMAND_TIMEOUT, cmd.output())
            .await
            .map_err(|_| {
                GitError::Failed(format!("git {} did not finish within {}s", args[0], COMMAND_TIMEOUT.as_secs()))
            })?
            .map_err(|e| GitError::Setup(format!("running git: {e} (is git installed?)")))?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let all = format!("{stderr}\n{stdout}");
        let text = scrub(&all, self.secret.as_deref());
        Err(classify(&all)(format!("git {}: {text}", args[0])))
    }

    /// Runs git in the working tree.
    pub async fn git(&self, args: &[&str]) -> Result<String, GitError> {
        self.git_in(&self.tree, args).await
    }

    /// The commit `rev` names.
    pub async fn rev(&self, rev: &str) -> Result<String, GitError> {
        self.git(&["rev-parse", "--verify", "--quiet", "--end-of-options", &format!("{rev}^{{commit}}")]).await
    }

    /// The tip of `branch` on the remote, if it exists (fetched into `refs/remotes/origin/`).
    pub async fn remote_branch(&self, branch: &str) -> Result<Option<String>, GitError> {
        let wanted = format!("refs/heads/{branch}");
        let listed = self.git(&["ls-remote", "--heads", "origin", &wanted]).await?;
        // ls-remote matches the pattern as a tail (`x/refs/heads/…` too): the exact name only.
        let sha = listed.lines().find_map(|l| match l.split_once('\t') {
            Some((sha, name)) if name == wanted && is_sha(sha) => Some(sha.to_owned()),
            _ => None,
        });
        let Some(sha) = sha else { return Ok(None) };
        self.git(&[
            "fetch",
            "--quiet",
            "--no-tags",
            "origin",
            &format!("+refs/heads/{branch}:refs/remotes/origin/{branch}"),
        ])
        .await?;
        Ok(Some(sha))
    }

    /// Fetches the remote's `branch` again and resets the working tree to it.
    pub async fn reset_to_remote(&self, branch: &str) -> Result<String, GitError> {
        self.git(&[
            "fetch",
            "--quiet",
            "--no-tags",
            "origin",
            &format!("+refs/heads/{branch}:refs/remotes/origin/{branch}"),
        ])
        .await?;
        self.git(&["checkout", "--quiet", "--force", "-B", branch, &format!("refs/remotes/origin/{branch}")]).await?;
        self.rev("HEAD").await
    }

    /// The full message of commit `sha`.
    pub async fn message(&self, sha: &str) -> Result<String, GitError> {
        self.git(&["log", "-1", "--format=%B", "--end-of-options", sha]).await
    }

    /// The YAML files under `under` (relative paths and their text), `.git` left out, symlinks,
    /// names with control characters and files over [`super::manifest::MAX_FILE`] skipped.
    /// More than [`MAX_FILES`] files or [`MAX_BYTES`] in all is an error, not a silently
    /// shorter list (a search that misses a file could edit the wrong one).
    pub fn yaml_files(&self, under: Option<&str>) -> Result<Vec<(String, String)>, GitError> {
        let start = under.map_or(self.tree.clone(), |u| self.tree.join(u));
        let mut out = Vec::new();
        let mut bytes = 0_usize;
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            let mut entries: Vec<_> = entries.flatten().collect();
            entries.sort_by_key(std::fs::DirEntry::file_name);
            for entry in entries {
                let path = entry.path();
                let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
                if meta.is_dir() {
                    if entry.file_name() != ".git" {
                        stack.push(path);
                    }
                    continue;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                let yaml = name.ends_with(".yaml") || name.ends_with(".yml") || name == "Kustomization";
                if !meta.is_file() || !yaml || meta.len() > super::manifest::MAX_FILE as u64 {
                    continue;
                }
                let (Ok(text), Ok(rel)) = (std::fs::read_to_string(&path), path.strip_prefix(&self.tree)) else {
                    continue;
                };
                let rel = rel.to_string_lossy().into_owned();
                if rel.chars().any(char::is_control) {
                    continue;
                }
                bytes += text.len();
                out.push((rel, text));
                if out.len() > MAX_FILES || bytes > MAX_BYTES {
                    return Err(GitError::Setup(format!(
                        "the repository has more than {MAX_FILES} YAML files or {} MiB of them; set spec.ci.gitops.path or searchPath",
                        MAX_BYTES / (1024 * 1024)
                    )));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The file at `rel` (a path inside the tree, a regular file, not a link), if present.
    pub fn read(&self, rel: &str) -> Result<Option<(String, String)>, GitError> {
        let path = self.tree.join(rel);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() && meta.len() <= super::manifest::MAX_FILE as u64 => {
                std::fs::read_to_string(&path)
                    .map(|text| Some((rel.to_owned(), text)))
                    .map_err(|e| GitError::Failed(format!("reading {rel}: {e}")))
            }
            Ok(_) => Err(GitError::Setup(format!("{rel} is not a regular file of at most 1 MiB"))),
            Err(_) => Ok(None),
        }
    }

    /// Writes `files` (relative path, new text) and commits them on a new local `branch` made
    /// from the current HEAD; returns the commit.
    pub async fn commit(&self, branch: &str, files: &[(String, String)], message: &str) -> Result<String, GitError> {
        self.git(&["checkout", "--quiet", "-B", branch]).await?;
        for (rel, text) in files {
            let path = self.tree.join(rel);
            // The path came from our own walk of this tree; never follow a link out of it.
            if std::fs::symlink_metadata(&path).map(|m| !m.is_file()).unwrap_or(true) {
                return Err(GitError::Setup(format!("{rel} is not a regular file in the repository")));
            }
            std::fs::write(&path, text).map_err(|e| GitError::Failed(format!("writing {rel}: {e}")))?;
            self.git(&["add", "--", rel]).await?;
        }
        self.git(&["commit", "--quiet", "--no-verify", "-m", message]).await?;
        self.rev("HEAD").await
    }

    /// Pushes HEAD to `branch` on the remote: a new branch when `replacing` is `None`,
    /// otherwise only while the remote branch is still at `replacing`.
    pub async fn push(&self, branch: &str, replacing: Option<&str>) -> Result<(), GitError> {
        let refspec = format!("HEAD:refs/heads/{branch}");
        let lease = format!("--force-with-lease=refs/heads/{branch}:{}", replacing.unwrap_or(""));
        self.git(&["push", "--quiet", "--no-verify", "--porcelain", &lease, "origin", &refspec]).await.map(|_| ())
    }

    /// Deletes `branch` on the remote while it is still at `expected` (someone else's commits on
    /// it are never thrown away).
    pub async fn delete_branch(&self, branch: &str, expected: &str) -> Result<(), GitError> {
        let lease = format!("--force-with-lease=refs/heads/{branch}:{expected}");
        self.git(&["push", "--quiet", "--no-verify", &lease, "origin", &format!(":refs/heads/{branch}")])
            .await
            .map(|_| ())
    }

    /// Commits a revert of `sha` on a new local `branch` made from HEAD (a merge commit is
    /// reverted against its first parent); returns the new commit.
    pub async fn revert(&self, branch: &str, sha: &str, message: &str) -> Result<String, GitError> {
        if !is_sha(sha) {
            return Err(GitError::Setup(format!("{sha:?} is not a commit id")));
        }
        self.git(&["checkout", "--quiet", "-B", branch]).await?;
        let parents = self.git(&["rev-list", "--parents", "-n", "1", "--end-of-options", sha]).await?;
        let merge = parents.split_whitespace().count() > 2;
        let mut args = vec!["revert", "--no-edit", "--no-commit"];
        if merge {
            args.extend(["-m", "1"]);
        }
        args.extend(["--end-of-options", sha]);
        if let Err(e) = self.git(&args).await {
            let _ = self.git(&["revert", "--abort"]).await;
            return Err(match e {
                GitError::Failed(m) | GitError::Conflict(m) => GitError::Conflict(m),
                other => other,
            });
        }
        self.git(&["commit", "--quiet", "--no-verify", "-m", message]).await?;
        self.rev("HEAD").await
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), GitError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut f = options.open(path).map_err(|e| GitError::Setup(format!("writing {}: {e}", path.display())))?;
    f.write_all(text.as_bytes()).map_err(|e| GitError::Setup(format!("writing {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_and_scrubbed_of_the_token() {
        let t = Some("s3cret");
        assert!(matches!(classify("fatal: Authentication failed for 'https://x'")(String::new()), GitError::Auth(_)));
        assert!(matches!(
            classify(" ! [rejected] HEAD -> reflex/x (stale info)")(String::new()),
            GitError::Rejected(_)
        ));
        assert!(matches!(
            classify("CONFLICT (content): Merge conflict in a.yaml")(String::new()),
            GitError::Conflict(_)
        ));
        assert!(matches!(classify("Host key verification failed.")(String::new()), GitError::Setup(_)));
        assert_eq!(scrub("remote: token s3cret is bad\x1b[0m", t), "remote: token *** is bad[0m");
        let banner = "@@@@@@@@\n@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @\n@@@@@@@@\nline\nHost key verification failed.\nfatal: Could not read from remote repository.\n";
        assert!(matches!(classify(banner)(String::new()), GitError::Setup(_)));
        assert_eq!(
            scrub(banner, None),
            "@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @ / line / Host key verification failed. / fatal: Could not read from remote repository."
        );
    }
}
