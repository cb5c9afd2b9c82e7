//! A GitOps scenario's world: a local bare git repository holding the scenario's manifests on
//! `main`, the forge stand-in ([`super::forge`]) over it, and the GitOps controller stand-in
//! ([`super::syncer`]) keeping the cluster at what `main` says. Everything lives in a
//! directory of its own, removed (and the tasks stopped) when the [`Repository`] is dropped.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::forge::Forge;
use super::scenario::GitopsScript;

/// The token the forge stand-in accepts (the scenario's Secret carries it).
pub const TOKEN: &str = "demo-forge-token";

/// The repository, its forge and its syncer.
pub struct Repository {
    /// The directory everything lives in.
    pub dir: PathBuf,
    /// The bare repository.
    pub bare: PathBuf,
    /// The forge stand-in's base URL.
    pub url: String,
    /// The forge stand-in.
    pub forge: Arc<Forge>,
    stop: CancellationToken,
}

impl Drop for Repository {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn git(dir: &std::path::Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=platform",
            "-c",
            "user.email=platform@example.invalid",
            "-c",
            "protocol.file.allow=always",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .context("running git (is it installed?)")?;
    anyhow::ensure!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

impl Repository {
    /// Makes the repository with `script`'s files on `main` and starts the forge over it.
    ///
    /// # Errors
    /// git or the forge's listener fails.
    pub async fn start(script: &GitopsScript) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("reflex-demo-gitops-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        let bare = dir.join("platform.git");
        let seed = dir.join("seed");
        let (bare_s, seed_s) = (bare.display().to_string(), seed.display().to_string());
        git(&dir, &["init", "--quiet", "--bare", "-b", "main", &bare_s])?;
        git(&dir, &["clone", "--quiet", &format!("file://{bare_s}"), &seed_s])?;
        for (path, content) in &script.files {
            anyhow::ensure!(
                !path.starts_with('/') && !path.split('/').any(|c| c == ".."),
                "gitops file {path:?} must be a relative path"
            );
            let file = seed.join(path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&file, content)?;
        }
        git(&seed, &["add", "."])?;
        git(&seed, &["commit", "--quiet", "-m", "platform manifests"])?;
        git(&seed, &["push", "--quiet", "origin", "HEAD:main"])?;
        let stop = CancellationToken::new();
        let forge = Forge::new(&bare, TOKEN);
        let url = forge.serve(stop.clone()).await?;
        Ok(Self { dir, bare, url, forge, stop })
    }

    /// `text` with the placeholders filled in.
    pub fn substitute(&self, text: &str, forge: &str) -> String {
        let api = if forge == "gitlab" { format!("{}/api/v4", self.url) } else { format!("{}/api/v3", self.url) };
        text.replace("${GITOPS_REPOSITORY}", &format!("file://{}", self.bare.display()))
            .replace("${FORGE_API}", &api)
            .replace("${FORGE_URL}", &self.url)
            .replace("${FORGE_TOKEN}", TOKEN)
    }

    /// How the operator makes GitOps changes here: local repositories allowed, a quick poll.
    pub fn settings(&self) -> crate::gitops::flow::Settings {
        crate::gitops::flow::Settings {
            work_dir: self.dir.clone(),
            allow_local: true,
            poll: Duration::from_millis(200),
        }
    }

    /// The lines the last merge on `main` changed (`-`/`+`, file headers left out).
    pub fn last_merge(&self) -> Vec<String> {
        let out = Command::new("git")
            .args(["diff", "--unified=0", "main^1", "main"])
            .current_dir(&self.bare)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output();
        let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        text.lines()
            .filter(|l| (l.starts_with('+') || l.starts_with('-')) && !l.starts_with("+++") && !l.starts_with("---"))
            .map(str::to_owned)
            .collect()
    }

    /// Applies `main` now, then every half second until dropped.
    ///
    /// # Errors
    /// The first sync fails.
    pub async fn keep_synced(&self, client: kube::Client, namespace: String) -> anyhow::Result<()> {
        super::syncer::sync(&client, &self.bare, "main", &namespace)
            .await
            .map_err(|e| anyhow::anyhow!("syncing main: {e}"))?;
        let (bare, stop) = (self.bare.clone(), self.stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                if let Err(e) = super::syncer::sync(&client, &bare, "main", &namespace).await {
                    tracing::debug!(error = %e, "the GitOps controller stand-in could not sync main");
                }
            }
        });
        Ok(())
    }
}
