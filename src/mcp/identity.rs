//! Who is calling: MCP callers present a Kubernetes bearer token; the server validates it
//! with a TokenReview and reads *as the caller*.
//!
//! Contract: [`Identities::authenticate`] turns a token into a [`Caller`] — the reviewed user
//! and groups and a client that impersonates exactly them — or an error for a 401. Reviews
//! are cached by a hash of the token (never the token) for [`REVIEW_TTL`], impersonated
//! clients per identity for [`CLIENT_TTL`], so a burst of calls costs one TokenReview (calls
//! with one token while its review runs wait for that review). A rejected token is
//! remembered for [`REJECTED_TTL`], and a source whose tokens were rejected
//! [`MAX_REJECTED`] times within that window is answered 429 without a review: a flood of
//! bad tokens costs the API server little and cannot use up the operator's own share of it.
//! With audiences configured, the review asks for them and a token must be minted for one
//! of them (a TokenRequest for Reflex, say); without, for the API server. The
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
/// How long a rejected token is answered without another review, and the window in which a
/// source's rejections are counted.
pub const REJECTED_TTL: Duration = Duration::from_secs(10);
/// Rejected tokens one source may present within [`REJECTED_TTL`] before it is refused
/// reviews until the window passes.
pub const MAX_REJECTED: u32 = 20;

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

/// The ServiceAccount, in each namespace Reflex serves, that the LLM agent reads as: read-only
/// RBAC in its own namespace, and the MCP server keeps it there whatever it asks.
pub const READER: &str = "reflex-reader";

/// An authenticated caller; cheap to clone (one per request).
#[derive(Clone)]
pub struct Caller {
    pub user: Arc<str>,
    pub groups: Arc<[String]>,
    /// The only namespace this caller may read — a [`READER`]'s own — enforced by the server
    /// on every tool call (namespaced kinds only, PromQL scoped to it, no actions).
    pub scope: Option<Arc<str>>,
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
    #[error("too many rejected tokens from this address; retry in {}s", REJECTED_TTL.as_secs())]
    Throttled,
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
    /// The audiences a token must be minted for; empty: the API server's.
    audiences: Vec<String>,
    /// By the token's SHA-256: the caller its review named.
    reviews: moka::future::Cache<[u8; 32], Caller>,
    /// By the token's SHA-256: why its review rejected it.
    rejected: moka::future::Cache<[u8; 32], String>,
    /// Rejections per source address within the window.
    rejections: moka::future::Cache<std::net::IpAddr, Arc<std::sync::atomic::AtomicU32>>,
    clients: moka::future::Cache<String, kube::Client>,
}

impl Identities {
    /// `operator` reviews tokens; `config` (the operator's) is cloned into impersonating
    /// clients, so the operator needs the `impersonate` verb on users, groups, uids and the
    /// user extras a review returns.
    pub fn new(operator: kube::Client, config: kube::Config) -> Self {
        Self {
            operator,
            config,
            audiences: Vec::new(),
            reviews: moka::future::Cache::builder().max_capacity(10_000).time_to_live(REVIEW_TTL).build(),
            rejected: moka::future::Cache::builder().max_capacity(10_000).time_to_live(REJECTED_TTL).build(),
            rejections: moka::future::Cache::builder().max_capacity(10_000).time_to_live(REJECTED_TTL).build(),
            clients: moka::future::Cache::builder().max_capacity(1_000).time_to_idle(CLIENT_TTL).build(),
        }
    }

    /// Tokens must be minted for one of `audiences` (e.g. `reflex`, by a TokenRequest);
    /// list the API server's too to go on accepting ordinary ServiceAccount tokens.
    #[must_use]
    pub fn with_audiences(mut self, audiences: Vec<String>) -> Self {
        self.audiences = audiences;
        self
    }

    async fn review(&self, token: &str) -> Result<Reviewed, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
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
        // An authenticator that ignored the audiences asked for answers none: not proof.
        if !self.audiences.is_empty() && !status.audiences.iter().flatten().any(|a| self.audiences.contains(a)) {
            return Err(AuthError::Rejected(format!("the token is not for {:?}", self.audiences)));
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

    /// The caller behind `token`, presented from `source` (when known).
    pub async fn authenticate(&self, token: &str, source: Option<std::net::IpAddr>) -> Result<Caller, AuthError> {
        use std::sync::atomic::Ordering;
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.reviews.get(&digest).await {
            return Ok(hit);
        }
        if let Some(why) = self.rejected.get(&digest).await {
            return Err(AuthError::Rejected(why));
        }
        let count = match source {
            Some(ip) => Some(self.rejections.get_with(source_key(ip), async { Arc::new(0.into()) }).await),
            None => None,
        };
        // The review is counted against its source before it runs (and given back if the
        // token is good): many bad tokens at once cannot all slip in under the limit.
        if let Some(c) = &count
            && c.fetch_add(1, Ordering::Relaxed) >= MAX_REJECTED
        {
            c.fetch_sub(1, Ordering::Relaxed);
            return Err(AuthError::Throttled);
        }
        // Calls with one token while its review runs share that review.
        let reviewed =
            self.reviews.try_get_with(digest, async { self.caller(self.review(token).await?).await }).await.map_err(
                |e| match &*e {
                    AuthError::Rejected(why) => AuthError::Rejected(why.clone()),
                    AuthError::Missing => AuthError::Missing,
                    AuthError::Throttled => AuthError::Throttled,
                    AuthError::Unavailable(why) => AuthError::Unavailable(why.clone()),
                },
            );
        match &reviewed {
            Err(AuthError::Rejected(why)) => self.rejected.insert(digest, why.clone()).await,
            _ => {
                if let Some(c) = count {
                    c.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        reviewed
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
        let scope = user
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
            .filter(|(_, name)| *name == READER)
            .map(|(namespace, _)| Arc::from(namespace));
        Ok(Caller { user: user.into(), groups: groups.into(), scope, key: key.into(), client })
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

/// The source a rejection counts against: the address, or for IPv6 its /64 (one host holds
/// a whole /64).
fn source_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            std::net::IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        other => other,
    }
}

/// The caller behind a request's bearer token, or the answer to give instead: 401 with
/// WWW-Authenticate (missing, malformed or rejected token), 429 for a source presenting
/// rejected tokens over and over, 503 when the review cannot run.
pub async fn caller_of(
    ids: &Identities,
    headers: &HeaderMap,
    source: Option<std::net::IpAddr>,
) -> Result<Caller, Response> {
    match ids.authenticate(bearer(headers).unwrap_or(""), source).await {
        Ok(caller) => Ok(caller),
        Err(e @ AuthError::Throttled) => {
            let mut resp = (StatusCode::TOO_MANY_REQUESTS, axum::Json(serde_json::json!({"error": e.to_string()})))
                .into_response();
            resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(REJECTED_TTL.as_secs()));
            Err(resp)
        }
        Err(e @ AuthError::Unavailable(_)) => {
            tracing::warn!(error = %e, "MCP caller could not be authenticated");
            Err((StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({"error": e.to_string()})))
                .into_response())
        }
        Err(e) => Err(unauthorized(&e)),
    }
}
