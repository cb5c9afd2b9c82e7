//! Who deploys. The operator never writes a workload as itself: deploy and rollback act as the
//! ServiceAccount of the change's environment (`reflex-deployer-staging`,
//! `reflex-deployer-production` by default; names configurable), after a SubjectAccessReview
//! for exactly that request. RBAC on those accounts is the blast radius; the API server
//! enforces it again on the real request.
//!
//! Contract: [`Deployers`] is configuration (pure); [`DeployerIdentity::checked`] reads the
//! environment, asks the review and returns a client acting as the deployer, or a
//! `NeedsHuman` refusal naming the missing permission. Nothing here writes.

use std::sync::Arc;

use crate::api::Environment;
use crate::api::ErrorCategory;
use crate::api::remediation::Remediation;
use crate::api::validate::ValidPolicy;
use crate::cluster::{Access, Impersonator, access_review, api_resource, environment};
use crate::ports::{StageError, StageResult};

/// The deployer ServiceAccounts, one per environment, in the operator's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployers {
    /// Where the ServiceAccounts live (the operator's namespace).
    pub namespace: String,
    /// The staging deployer's name.
    pub staging: String,
    /// The production deployer's name.
    pub production: String,
}

impl Default for Deployers {
    fn default() -> Self {
        Self {
            namespace: "reflex-system".into(),
            staging: "reflex-deployer-staging".into(),
            production: "reflex-deployer-production".into(),
        }
    }
}

impl Deployers {
    /// The username of `env`'s deployer: `system:serviceaccount:NAMESPACE:NAME`.
    pub fn user(&self, env: Environment) -> String {
        let name = match env {
            Environment::Staging => &self.staging,
            Environment::Production => &self.production,
        };
        format!("system:serviceaccount:{}:{name}", self.namespace)
    }

    /// The groups every ServiceAccount of the namespace is in, as the API server sets them.
    pub fn groups(&self) -> Vec<String> {
        vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{}", self.namespace),
            "system:authenticated".into(),
        ]
    }
}

/// The deployer identities and the means to act as them.
#[derive(Clone)]
pub struct DeployerIdentity {
    /// Which ServiceAccount deploys in each environment.
    pub deployers: Deployers,
    /// Clients acting as them, from the operator's configuration.
    pub impersonator: Arc<Impersonator>,
}

impl DeployerIdentity {
    /// The deployer of `rem`'s change and a client acting as it, unchecked: the environment
    /// now (namespace label, made stricter by `policy`). CI's dry-run uses it as it is, so the
    /// API server answers for the deployer's permissions.
    pub async fn acting(
        &self,
        client: &kube::Client,
        rem: &Remediation,
        policy: Option<&ValidPolicy>,
    ) -> StageResult<(kube::Client, String)> {
        let env = environment(client, rem, policy).await?;
        let user = self.deployers.user(env);
        Ok((self.impersonator.client_as(&user, &self.deployers.groups())?, user))
    }

    /// [`Self::acting`], after a SubjectAccessReview for `verb` on exactly the target. A
    /// denial is `NeedsHuman`, naming the permission to grant.
    pub async fn checked(
        &self,
        client: &kube::Client,
        rem: &Remediation,
        policy: Option<&ValidPolicy>,
        verb: &str,
    ) -> StageResult<(kube::Client, String)> {
        let (acting, user) = self.acting(client, rem, policy).await?;
        let resource = api_resource(rem.spec.target.kind);
        let namespace = rem.metadata.namespace.clone().unwrap_or_default();
        let access = Access { verb, resource: &resource, namespace: &namespace, name: &rem.spec.target.name };
        if let Err(why) = access_review(client, &user, &self.deployers.groups(), &access).await? {
            return Err(StageError::new(
                ErrorCategory::NeedsHuman,
                format!("refusing to deploy: the deployer {why}; grant it that permission in its Role"),
            ));
        }
        Ok((acting, user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_environment_has_its_own_deployer_service_account() {
        let d = Deployers::default();
        assert_eq!(d.user(Environment::Staging), "system:serviceaccount:reflex-system:reflex-deployer-staging");
        assert_eq!(d.user(Environment::Production), "system:serviceaccount:reflex-system:reflex-deployer-production");
        assert!(d.groups().contains(&"system:serviceaccounts:reflex-system".to_owned()));
    }
}
