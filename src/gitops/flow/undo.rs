//! Undoing a change in the repository: the revert of a merge, proven to be exactly that,
//! and the release of a change that was never merged (its pull request closed, branch deleted).

use super::*;

impl Session {
    /// Reverts a merged change: a revert commit of its merge on `reflex/<name>-revert`, a pull
    /// request, its checks, its merge. Resumes from whatever an earlier run left, once it is
    /// proven to be exactly the revert of that merge.
    pub async fn revert(&self, rem: &Remediation, merged: &PullRequestRecord) -> StageResult<PullRequestRecord> {
        let merge_commit = merged.merge_commit.clone().unwrap_or_default();
        if !is_sha(&merge_commit) {
            return Err(StageError::new(
                ErrorCategory::InvalidSpec,
                "the change's pull request has no merge commit to revert",
            ));
        }
        let uid = rem.metadata.uid.clone().unwrap_or_default();
        let branch = revert_branch_of(rem);
        let digest = format!("revert:{merge_commit}");
        let repo = self.clone_base().await?;
        self.prove_merge(&repo, &merge_commit, &uid).await?;
        let pushed = repo.remote_branch(&branch).await.map_err(|e| git_error("reading the revert branch", e))?;
        let (head, message) = match pushed {
            Some(head) => {
                let message = repo.message(&head).await.map_err(|e| git_error("reading the revert branch", e))?;
                let ours = trailer(&message, UID).as_deref() == Some(uid.as_str())
                    && trailer(&message, DIGEST).as_deref() == Some(digest.as_str());
                // Exactly the inverse of the merge's change, nothing else.
                let forward = repo
                    .git(&["diff", "--full-index", "--no-color", &format!("{merge_commit}^1"), &merge_commit, "--"])
                    .await;
                let backward =
                    repo.git(&["diff", "--full-index", "--no-color", &head, &format!("{head}^1"), "--"]).await;
                if !ours || forward.is_err() || forward != backward {
                    return refuse(format!(
                        "branch {branch} exists and is not this Remediation's revert of {merge_commit}"
                    ));
                }
                (head, message)
            }
            None => {
                let ns = rem.metadata.namespace.as_deref().unwrap_or_default();
                let name = rem.metadata.name.as_deref().unwrap_or_default();
                let base = repo.rev("HEAD").await.map_err(|e| git_error("reading the base commit", e))?;
                let message = format!(
                    "reflex: revert {} {ns}/{} — the fix did not hold\n\nReverts {merge_commit} (pull request #{}).\nRemediation: {ns}/{name} (kubectl reflex explain -n {ns} {name})\n\n{UID}: {uid}\n{DIGEST}: {digest}\n{REVERTS}: {merge_commit}\n{BASE}: {base}\n{FILES}: {}\n{CREATED}: {}\n",
                    rem.spec.target.kind.as_str(),
                    rem.spec.target.name,
                    merged.number,
                    line(&merged.file, 300),
                    Timestamp::now()
                );
                let head = repo.revert(&branch, &merge_commit, &message).await.map_err(|e| match e {
                    GitError::Conflict(m) => StageError::new(
                        ErrorCategory::NeedsHuman,
                        format!("the merge {merge_commit} cannot be reverted cleanly ({m}); revert it by hand"),
                    ),
                    other => git_error("reverting", other),
                })?;
                repo.push(&branch, None).await.map_err(|e| git_error(&format!("pushing {branch}"), e))?;
                (head, message)
            }
        };
        let pr = match self
            .forge
            .find_open(&branch, self.base())
            .await
            .map_err(|e| forge_error("looking for the revert", e))?
        {
            Some(pr) if pr.head == head => pr,
            Some(pr) => return refuse(format!("pull request {} is not this Remediation's revert", pr.url)),
            None => self.open_pr(rem, &branch, &message, &head).await?,
        };
        let opened = self.checked(pr, &message, &branch).await?;
        if let Err(why) = opened.verdict {
            return refuse(format!("the revert's {why}; revert {merge_commit} by hand"));
        }
        // The revert's content was made (or proven) here; merge it as its own change.
        let pr = self.proven(rem, opened.record.number, &head, &digest, &branch).await?;
        let title = format!("Merge {branch} (Reflex)");
        let sha = match pr.state {
            PrState::Merged => pr.merge_commit.clone().unwrap_or_default(),
            PrState::Closed => return refuse(format!("the revert {} was closed without a merge", pr.url)),
            PrState::Open => match self
                .forge
                .merge(pr.number, &head, &title)
                .await
                .map_err(|e| forge_error("merging the revert", e))?
            {
                Merge::Merged(sha) => sha,
                Merge::Refused(why) => match self.forge.get(pr.number).await {
                    Ok(now) if now.state == PrState::Merged => now.merge_commit.unwrap_or_default(),
                    _ => {
                        return refuse(format!(
                            "the forge will not merge the revert {}: {why}; revert {merge_commit} by hand",
                            pr.url
                        ));
                    }
                },
            },
        };
        if !is_sha(&sha) {
            return refuse(format!("the forge merged the revert {} but named no merge commit", pr.url));
        }
        self.delete_branch(&branch, &head).await;
        let mut record = opened.record;
        record.merge_commit = Some(sha);
        Ok(record)
    }

    /// Proves `merge_commit` (named by status, a record) is a merge of this Remediation's change
    /// on the base branch: on its history, and the change it brings in — its second parent, or
    /// the commit itself for a squash or fast-forward merge — carries this Remediation's uid.
    pub(super) async fn prove_merge(&self, repo: &Repo, merge_commit: &str, uid: &str) -> StageResult<()> {
        let refuse_it = |why: &str| {
            refuse::<()>(format!(
                "commit {merge_commit} is not a merge of this Remediation's change ({why}); revert by hand"
            ))
        };
        let base = format!("refs/remotes/origin/{}", self.base());
        if repo.git(&["merge-base", "--is-ancestor", "--end-of-options", merge_commit, &base]).await.is_err() {
            return refuse_it(&format!("it is not on {}", self.base()));
        }
        let parents = repo
            .git(&["rev-list", "--parents", "-n", "1", "--end-of-options", merge_commit])
            .await
            .map_err(|e| git_error("reading the merge commit", e))?;
        let parents: Vec<&str> = parents.split_whitespace().skip(1).collect();
        let change = match parents.as_slice() {
            [_, change] => (*change).to_owned(),
            [_] => merge_commit.to_owned(),
            _ => return refuse_it("it has no single change to undo"),
        };
        let message = repo.message(&change).await.map_err(|e| git_error("reading the merged change", e))?;
        if trailer(&message, UID).as_deref() != Some(uid) {
            return refuse_it("the change it merges was not made for this Remediation");
        }
        Ok(())
    }

    /// Closes this Remediation's open pull requests (the change's and the revert's) and deletes
    /// their branches — found by the branch names and proven by the head commits' trailers, so
    /// one whose status never recorded it (a Remediation cancelled while its checks ran) is
    /// found too. Someone else's branch of that name is left alone.
    pub async fn release(&self, rem: &Remediation) -> StageResult<()> {
        let uid = rem.metadata.uid.clone().unwrap_or_default();
        let repo = Repo::scratch(&self.gitops.remote, &self.creds, &self.settings.work_dir, self.settings.allow_local)
            .await
            .map_err(|e| git_error("preparing to clean up", e))?;
        for branch in [branch_of(rem), revert_branch_of(rem)] {
            let Some(head) = repo.remote_branch(&branch).await.map_err(|e| git_error("reading the branch", e))? else {
                continue;
            };
            let message = repo.message(&head).await.map_err(|e| git_error("reading the branch's commit", e))?;
            if trailer(&message, UID).as_deref() != Some(uid.as_str()) {
                continue;
            }
            if let Some(pr) = self
                .forge
                .find_open(&branch, self.base())
                .await
                .map_err(|e| forge_error("looking for the pull request", e))?
                && pr.head == head
            {
                self.forge.close(pr.number).await.map_err(|e| forge_error(&format!("closing {}", pr.url), e))?;
                tracing::info!(pr = %pr.url, "closed the pull request of a Remediation that ended without merging it");
            }
            repo.delete_branch(&branch, &head).await.map_err(|e| git_error(&format!("deleting {branch}"), e))?;
        }
        Ok(())
    }

    /// Closes pull request `number` and deletes `branch` while it is still at `head`; failures
    /// are logged — nothing waits on cleanup, and `release` tries again when the Remediation ends.
    pub(super) async fn abandon(&self, number: u64, branch: &str, head: &str) {
        match self.forge.get(number).await {
            Ok(pr) if pr.state == PrState::Open && pr.branch == branch => {
                if let Err(e) = self.forge.close(number).await {
                    tracing::warn!(pr = %pr.url, error = %e, "could not close the pull request");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(number, error = %e, "could not read the pull request to close it"),
        }
        self.delete_branch(branch, head).await;
    }

    /// Deletes `branch` on the remote while it is still at `head` (a lease: commits someone
    /// pushed since are never thrown away).
    pub(super) async fn delete_branch(&self, branch: &str, head: &str) {
        let result =
            match Repo::scratch(&self.gitops.remote, &self.creds, &self.settings.work_dir, self.settings.allow_local)
                .await
            {
                Ok(repo) => repo.delete_branch(branch, head).await,
                Err(e) => Err(e),
            };
        if let Err(e) = result {
            tracing::warn!(branch, error = %e, "could not delete the branch");
        }
    }
}
