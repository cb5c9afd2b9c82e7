//! How a policy tests a change: the dry-run, a test Job, or a GitOps pull request.

use super::*;

/// How a proposed patch is tested: the server-side dry-run always, plus at most one of a
/// test Job or a GitOps pull request.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!(has(self.job) && has(self.gitops))").message("choose at most one of ci.job and ci.gitops"))]
#[serde(rename_all = "camelCase")]
pub struct CiSpec {
    /// Server-side dry-run of the patch. Always on; it cannot be disabled.
    #[serde(default = "default_true")]
    #[x_kube(validation = Rule::new("self == true").message("ci.dryRun cannot be disabled: every patch is dry-run on the API server"))]
    pub dry_run: bool,
    /// A Kubernetes Job that tests the patched manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<CiJobSpec>,
    /// Push the patch to a branch, open a pull request and wait for its checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gitops: Option<GitopsSpec>,
}

impl Default for CiSpec {
    fn default() -> Self {
        Self { dry_run: true, job: None, gitops: None }
    }
}

fn default_true() -> bool {
    true
}

/// A test Job: the patched manifest is mounted at `/reflex/manifest.yaml` (the live object at
/// `/reflex/live.yaml`); exit code 0 passes. It runs as the deployer identity of the policy's
/// environment, in the target's namespace, under the restricted Pod Security profile, with no
/// ServiceAccount token mounted.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CiJobSpec {
    /// Container image that runs the test.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Command to run; exit code 0 passes.
    #[schemars(length(min = 1, max = 64))]
    pub command: Vec<String>,
    /// Environment variables for the test (plain values; no Secret references).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub env: Vec<CiEnvVar>,
    /// Most time the Job may take; one still running then fails the test and is deleted.
    #[serde(default = "default_ci_timeout")]
    pub timeout: DurationString,
}

/// One environment variable of a test Job.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CiEnvVar {
    /// Variable name (a C identifier).
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    /// Its value.
    #[serde(default)]
    #[schemars(length(max = 4096))]
    pub value: String,
}

fn default_ci_timeout() -> DurationString {
    DurationString::new("10m")
}

/// A GitOps flow: the patch becomes a commit on branch `reflex/<remediation>` in the
/// repository the cluster is synced from, a pull request whose checks must pass, a merge when
/// the gate allows, and a wait until the live object has converged; a rollback merges a
/// revert of that merge.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GitopsSpec {
    /// Repository to clone and push to: `https://host/owner/repo.git` or
    /// `ssh://git@host/owner/repo.git` (`git@host:owner/repo.git` too).
    #[schemars(length(min = 1, max = 2048))]
    pub repository: String,
    /// Base branch the pull request targets.
    #[serde(default = "default_branch")]
    #[schemars(length(min = 1, max = 255))]
    pub base_branch: String,
    /// Path of the file (relative to the repository root) that sets the target's fields;
    /// unset: every YAML file under `searchPath` is searched for the object by kind, name and
    /// namespace (Kustomize patch files that set a changed field are preferred to the base).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub path: Option<String>,
    /// Directory the search is limited to (relative to the root; default the whole repository).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub search_path: Option<String>,
    /// Secret in the policy's namespace with the credentials: key `token` (the forge API, and
    /// git over HTTPS), and for SSH remotes `ssh-privatekey` and `known_hosts`.
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: String,
    /// The forge that hosts the repository and its pull requests.
    pub forge: ForgeSpec,
    /// Names of checks (commit statuses or check runs) that must pass; empty: at least one
    /// must report and every one reported must pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub required_checks: Vec<String>,
    /// Most time to wait for checks to pass.
    #[serde(default = "default_ci_timeout")]
    pub checks_timeout: DurationString,
    /// Who approves the merge: `gate` (Reflex's gate and RemediationApprovals; the default) or
    /// `forge` (the pull request's own reviews: Reflex merges once the forge says it may).
    #[serde(default)]
    pub merge_approval: MergeApproval,
    /// Most time after the merge for the live object to converge to the patched state.
    #[serde(default = "default_converge_timeout")]
    pub converge_timeout: DurationString,
}

/// Which forge API to speak.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ForgeSpec {
    /// `github` (GitHub and GitHub Enterprise Server) or `gitlab` (GitLab.com and self-managed).
    #[serde(rename = "type")]
    pub type_: ForgeType,
    /// Base URL of the API: default `https://api.github.com` or `https://gitlab.com/api/v4`;
    /// a self-hosted forge names its own (`https://ghe.example.com/api/v3`,
    /// `https://gitlab.example.com/api/v4`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub api_url: Option<String>,
    /// The repository on the forge: `owner/repo` (GitHub) or the project path `group/project`
    /// (GitLab). Default: derived from `repository`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub project: Option<String>,
}

/// Forge kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ForgeType {
    /// GitHub REST API v3.
    Github,
    /// GitLab REST API v4.
    Gitlab,
}

/// Who approves a GitOps merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum MergeApproval {
    /// Reflex's gate (trust level and RemediationApprovals).
    #[default]
    Gate,
    /// The forge's own review rules: merge once the forge reports the pull request mergeable
    /// with its required reviews.
    Forge,
}

fn default_converge_timeout() -> DurationString {
    DurationString::new("10m")
}

fn default_branch() -> String {
    "main".to_owned()
}
