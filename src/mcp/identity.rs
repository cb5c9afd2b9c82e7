//! Who is calling: MCP callers present a Kubernetes bearer token; the server validates it
//! with a TokenReview and reads *as the caller*.
//!
//! Contract: [`Identities::authenticate`] turns a token into a [`Caller`] — the reviewed user
//! and groups and a client that impersonates exactly them — or an error for a 401. Reviews
//! are cached by a hash of the token (never the token) for [`REVIEW_TTL`], impersonated
//! clients per identity for [`CLIENT_TTL`], so a burst of calls costs one TokenReview. The
//! operator's own identity is used for nothing but the review: a caller sees exactly what
//! RBAC lets it see, and the server is never a confused deputy. [`caller_of`] gives a
//! request's caller or the 401 to answer before any MCP handling.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};

/// How long a token's review is trusted.
pub const REVIEW_TTL: Duration = Duration::from_secs(60);
/// How long an impersonated client is kept after its last use.
pub const CLIENT_TTL: Duration = Duration::from_secs(600);

/// A collision-free key for (user, groups): names may contain any separator.
fn identity_key(
    user: &str,
    groups: &[String],
    uid: Option<&str>,
    extra: &std::collections::BTreeMap<String, Vec<String>>,
) -> String {
    let doc = serde_json::json!([user, groups, uid, extra]).to_string();
    Sha256::digest(doc.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// An authenticated caller; cheap to clone (one per request).
#[derive(Clone)]
pub struct Caller {
    pub user: Arc<str>,
    pub groups: Arc<[String]>,
    /// A collision-free key of everything impersonated (user, groups, uid, extra).
    key: Arc<str>,
    /// Reads as the caller (impersonation).
    pub client: kube::Client,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller").field("user", &self.user).field("groups", &self.groups).finish_non_exhaustive()
    }
}

impl Caller {
    /// A stable key for per-identity caches.
    pub fn key(&self) -> &str {
        &self.key
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("a Kubernetes bearer token is required (Authorization: Bearer <token>)")]
    Missing,
    #[error("the token was not accepted: {0}")]
    Rejected(String),
    #[error("the token could not be reviewed: {0}")]
    Unavailable(String),
}

/// What a TokenReview said about a token: all of it is impersonated, so a scoped token
/// (its `extra`) stays scoped.
#[derive(Debug)]
struct Reviewed {
    user: String,
    groups: Vec<String>,
    uid: Option<String>,
    extra: std::collections::BTreeMap<String, Vec<String>>,
    /// [`identity_key`] of the above, computed once per review.
    key: String,
}

/// Token reviews and impersonated clients, cached.
pub struct Identities {
    operator: kube::Client,
    config: kube::Config,
    /// By the token's SHA-256: the caller its review named.
    reviews: moka::future::Cache<[u8; 32], Caller>,
    clients: moka::future::Cache<String, kube::Client>,
}

impl Identities {
    /// `operator` reviews tokens; `config` (the operator's) is cloned into impersonating
    /// clients, so the operator needs the `impersonate` verb on users and groups.
    pub fn new(operator: kube::Client, config: kube::Config) -> Self {
        Self {
            operator,
            config,
            reviews: moka::future::Cache::builder().max_capacity(10_000).time_to_live(REVIEW_TTL).build(),
            clients: moka::future::Cache::builder().max_capacity(1_000).time_to_idle(CLIENT_TTL).build(),
        }
    }

    async fn review(&self, token: &str) -> Result<Reviewed, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: token.to_owned(), ..TokenReviewSpec::default() },
            ..TokenReview::default()
        };
        let reviewed = Api::<TokenReview>::all(self.operator.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(AuthError::Rejected(status.error.unwrap_or_else(|| "not authenticated".into())));
        }
        let user = status.user.unwrap_or_default();
        let Some(name) = user.username.filter(|n| !n.is_empty()) else {
            return Err(AuthError::Rejected("the review named no user".into()));
        };
        let groups = user.groups.unwrap_or_default();
        let uid = user.uid.filter(|u| !u.is_empty());
        let extra = user.extra.unwrap_or_default().into_iter().collect();
        let key = identity_key(&name, &groups, uid.as_deref(), &extra);
        Ok(Reviewed { user: name, groups, uid, extra, key })
    }

    /// The caller behind `token`.
    pub async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.reviews.get(&digest).await {
            return Ok(hit);
        }
        let caller = self.caller(self.review(token).await?).await?;
        self.reviews.insert(digest, caller.clone()).await;
        Ok(caller)
    }

    /// The caller a review named, with the impersonating client for that identity.
    async fn caller(&self, reviewed: Reviewed) -> Result<Caller, AuthError> {
        let Reviewed { user, groups, uid, extra, key } = reviewed;
        let client = match self.clients.get(&key).await {
            Some(c) => c,
            None => {
                let mut config = self.config.clone();
                config.auth_info.impersonate = Some(user.clone());
                config.auth_info.impersonate_groups = (!groups.is_empty()).then(|| groups.clone());
                config.auth_info.impersonate_uid = uid;
                config.auth_info.impersonate_user_extra = (!extra.is_empty()).then(|| extra.into_iter().collect());
                let client = kube::Client::try_from(config).map_err(|e| AuthError::Unavailable(e.to_string()))?;
                self.clients.insert(key.clone(), client.clone()).await;
                client
            }
        };
        Ok(Caller { user: user.into(), groups: groups.into(), key: key.into(), client })
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn unauthorized(e: &AuthError) -> Response {
    let mut resp = (StatusCode::UNAUTHORIZED, axum::Json(serde_json::json!({"error": e.to_string()}))).into_response();
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer realm=\"reflex\""));
    resp
}

/// The caller behind a request's bearer token, or the answer to give instead: 401 with
/// WWW-Authenticate (missing, malformed or rejected token), 503 when the review cannot run.
pub async fn caller_of(ids: &Identities, headers: &HeaderMap) -> Result<Caller, Response> {
    match ids.authenticate(bearer(headers).unwrap_or("")).await {
        Ok(caller) => Ok(caller),
        Err(e @ AuthError::Unavailable(_)) => {
            tracing::warn!(error = %e, "MCP caller could not be authenticated");
            Err((StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({"error": e.to_string()})))
                .into_response())
        }
        Err(e) => Err(unauthorized(&e)),
    }
}
