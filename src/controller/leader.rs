//! Leader election: one replica reconciles; the others stand by.
//!
//! Contract: [`run_elected`] holds a `coordination.k8s.io` Lease (kube-lease-manager) and
//! runs the Remediation controller only while this replica holds it. Losing the lease stops
//! the controller at once (its in-flight effects are cancelled and resumed by the next
//! leader under the same keys); shutting down releases the lease, and a standby takes it
//! when it next looks (at the latest when the term it last saw would have ended). Each
//! replica writes the Lease under its own field manager, so a take-over of a held lease is
//! a server-side apply conflict and two replicas never lead at once. The intake webhook is
//! not elected: creating a Remediation is idempotent, so every replica may serve it.

use std::future::Future;

use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::reconcile::{self, Error, Guards};
use super::stages::Stages;

/// Which Lease, held by whom, for how long.
#[derive(Clone, Debug)]
pub struct Election {
    pub namespace: String,
    pub lease: String,
    /// This replica's identity (the Pod name in a cluster).
    pub identity: String,
    /// Seconds a lease is valid without renewal.
    pub duration: u64,
    /// Seconds before expiry at which the holder renews.
    pub grace: u64,
}

impl Election {
    /// The field manager this replica writes the Lease with: one per identity. Server-side
    /// apply only refuses a write that takes a field *another* manager owns, so replicas
    /// sharing one manager would each take the lease over the other and both lead.
    pub fn field_manager(&self) -> String {
        format!("reflex-leader-election-{}", self.identity)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("leader election: {0}")]
    Lease(#[from] LeaseManagerError),
    #[error("leader election stopped unexpectedly")]
    Stopped,
    #[error(transparent)]
    Controller(#[from] Error),
}

/// Wait until `leader` says true, or `stop`; false when stopping.
async fn until_leader(leader: &mut watch::Receiver<bool>, stop: &CancellationToken) -> Result<bool, ElectionError> {
    loop {
        // A closed channel means the lease manager died: its last value is stale.
        if leader.has_changed().is_err() {
            return Err(ElectionError::Stopped);
        }
        if *leader.borrow_and_update() {
            return Ok(true);
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(false),
            changed = leader.changed() => changed.map_err(|_| ElectionError::Stopped)?,
        }
    }
}

/// Run the controller whenever this replica leads, until `shutdown` completes.
pub async fn run_elected(
    client: kube::Client,
    stages: Stages,
    guards: Guards,
    election: Election,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ElectionError> {
    let manager = LeaseManagerBuilder::new(client.clone(), &election.lease)
        .with_namespace(&election.namespace)
        .with_identity(&election.identity)
        .with_duration(election.duration)
        .with_grace(election.grace)
        .with_field_manager(election.field_manager())
        .build()
        .await?;
    let (mut leader, task) = manager.watch().await;
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop.cancel();
        });
    }
    info!(identity = %election.identity, lease = %format!("{}/{}", election.namespace, election.lease), "waiting for leadership");
    while until_leader(&mut leader, &stop).await? {
        info!(identity = %election.identity, "leading: starting the controller");
        let mut watching = leader.clone();
        let stop_leading = {
            let stop = stop.clone();
            async move {
                loop {
                    if watching.has_changed().is_err() || !*watching.borrow_and_update() {
                        return;
                    }
                    tokio::select! {
                        () = stop.cancelled() => return,
                        changed = watching.changed() => if changed.is_err() { return },
                    }
                }
            }
        };
        reconcile::run(client.clone(), stages.clone(), guards.clone(), stop_leading).await?;
        if stop.is_cancelled() {
            break;
        }
        warn!(identity = %election.identity, "lost leadership: the controller stopped; standing by");
    }
    // Closing the channel makes the manager release the lease.
    drop(leader);
    match task.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ElectionError::Stopped),
    }
}
