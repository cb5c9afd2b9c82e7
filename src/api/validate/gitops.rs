//! CI settings of a policy: the test Job, and the GitOps repository, its remote and forge.

use super::*;

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

pub(super) fn gitops(c: &mut Collector, g: &GitopsSpec) -> Option<ValidGitops> {
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
    if !crate::api::template::is_dns_subdomain(&g.credentials_secret) {
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
