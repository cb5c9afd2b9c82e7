//! MCP, the loop's nervous system: Reflex's MCP server (context tools over streamable HTTP,
//! stateless, as the caller), the identity that flows through it, the tool manifest, and
//! the MCP client the loop calls every tool through.
//!
//! Contract: [`server`] serves `/mcp` behind the bearer-token identity ([`identity::caller_of`]),
//! with its call machinery in [`call`], tool schemas in [`schema`], tool bodies in [`tools`],
//! resources and the prompt in [`resources`]; [`bounds`] is the pure edge (input bounds,
//! output caps, redaction); [`manifest`] pins tool schemas (and holds the one schema hash).

pub mod actions;
pub mod bounds;
pub mod call;
pub mod client;
pub mod identity;
pub mod manifest;
pub mod resources;
pub mod schema;
pub mod server;
pub mod tools;

use std::sync::Arc;

use axum::response::IntoResponse;

/// `/mcp`: the stateless streamable-HTTP MCP service behind bearer-token identity.
/// `allowed_hosts` are the Host headers accepted besides loopback (the Service's names).
pub fn router(
    server: server::ReflexMcp,
    identities: Arc<identity::Identities>,
    allowed_hosts: Vec<String>,
    stop: tokio_util::sync::CancellationToken,
) -> axum::Router {
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    };
    let mut hosts = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    hosts.extend(allowed_hosts);
    let fast_hosts = Arc::new(hosts.iter().map(|h| allowed_authority(h)).collect());
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(Some(std::time::Duration::from_secs(2)))
        .with_allowed_hosts(hosts)
        .with_max_request_body_bytes(MAX_BODY)
        .with_cancellation_token(stop);
    let edge = Edge { identities, server: server.clone(), hosts: fast_hosts };
    let service =
        StreamableHttpService::new(move || Ok(server.clone()), Arc::new(LocalSessionManager::default()), config);
    axum::Router::new().route_service("/mcp", service).layer(axum::middleware::from_fn_with_state(edge, edge_of_mcp))
}

/// What the edge of `/mcp` needs: who is calling, and the server (its calls in flight, and
/// its cache for the fast path: repeated context-tool calls answered without rmcp's
/// per-request decode, service, task and encode).
#[derive(Clone)]
struct Edge {
    identities: Arc<identity::Identities>,
    server: server::ReflexMcp,
    /// The Host headers rmcp accepts, as (host, port).
    hosts: Arc<Vec<(String, Option<u16>)>>,
}

/// `[::1]` and `::1` alike: the host without brackets, lowercase.
fn bare_host(h: &str) -> String {
    h.trim().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase()
}

/// An allowed-host entry as (host, port): `name:8080`, `name`, `[::1]:80`, or a bare IPv6
/// address (which does not parse as an authority: then the whole entry is the host).
fn allowed_authority(entry: &str) -> (String, Option<u16>) {
    match axum::http::uri::Authority::try_from(entry.trim()) {
        Ok(a) => (bare_host(a.host()), a.port_u16()),
        Err(_) => (bare_host(entry), None),
    }
}

/// Whether rmcp would take this POST as it is, with nothing for it to check beyond what
/// [`server::ReflexMcp::cached_reply`] checks: `Accept` names both JSON and SSE, the body is
/// JSON, the Host is one rmcp accepts, no Origin, a known protocol version before the one
/// that needs the standard headers, and no other `Mcp-*` header. Anything else: rmcp.
fn plain_post(headers: &axum::http::HeaderMap, hosts: &[(String, Option<u16>)]) -> bool {
    use axum::http::header::{ACCEPT, CONTENT_TYPE, HOST, ORIGIN};
    let essence = |v: &str| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let accept: Vec<&str> = headers.get_all(ACCEPT).iter().filter_map(|v| v.to_str().ok()).collect();
    // Weights (`q=0`) and quoted parameters are rmcp's to read.
    if accept.iter().any(|v| v.contains([';', '"'])) {
        return false;
    }
    let accepted: Vec<String> = accept.iter().flat_map(|v| v.split(',').map(essence).collect::<Vec<_>>()).collect();
    let accepts = |m: &str| accepted.iter().any(|a| a == m);
    if !accepts("application/json") || !accepts("text/event-stream") {
        return false;
    }
    if headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(essence).as_deref() != Some("application/json") {
        return false;
    }
    if headers.contains_key(ORIGIN) {
        return false;
    }
    for (name, value) in headers {
        let n = name.as_str();
        if n == "mcp-protocol-version" {
            let known = value.to_str().ok().is_some_and(|v| {
                rmcp::model::ProtocolVersion::KNOWN_VERSIONS.iter().any(|k| k.as_str() == v)
                    && v < rmcp::model::ProtocolVersion::STANDARD_HEADERS.as_str()
            });
            if !known {
                return false;
            }
        } else if n.starts_with("mcp-") {
            return false;
        }
    }
    let Some(host) = headers.get(HOST).and_then(|v| v.to_str().ok()) else { return false };
    let Ok(host) = axum::http::uri::Authority::try_from(host) else { return false };
    let (name, port) = (bare_host(host.host()), host.port_u16());
    hosts.iter().any(|(h, p)| *h == name && p.is_none_or(|p| port == Some(p)))
}

/// Whether a request's `Origin` (when it has one) is one of the hosts this server answers
/// to — loopback and the configured names — over http or https. The MCP transport requires a
/// 403 for any other: a web page elsewhere must not reach a server on loopback (DNS
/// rebinding, or a page posting to 127.0.0.1).
fn origin_allowed(headers: &axum::http::HeaderMap, hosts: &[(String, Option<u16>)]) -> bool {
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else { return true };
    let Ok(uri) = origin.to_str().unwrap_or("").parse::<axum::http::Uri>() else { return false };
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else { return false };
    if !matches!(scheme, "http" | "https") {
        return false;
    }
    let port = authority.port_u16().or(if scheme == "https" { Some(443) } else { Some(80) });
    let host = bare_host(authority.host());
    hosts.iter().any(|(h, p)| *h == host && p.is_none_or(|p| port == Some(p)))
}

/// Every `/mcp` request first: a foreign `Origin` is refused (403), then the bearer token is
/// authenticated (401 before any MCP handling) and the [`identity::Caller`] put in the
/// request's extensions, where rmcp hands it to tools.
///
/// Then cancellation: a stateless server has no session to route `notifications/cancelled`
/// through, so rmcp acknowledges and drops it; clients on the 2025 protocol (the Python
/// SDK's default) cancel that way. Catch it here and stop the caller's call with that
/// request id.
async fn edge_of_mcp(
    axum::extract::State(edge): axum::extract::State<Edge>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if !origin_allowed(req.headers(), &edge.hosts) {
        return (
            axum::http::StatusCode::FORBIDDEN,
            "this Origin may not call Reflex's MCP server: only loopback and the configured hosts",
        )
            .into_response();
    }
    let source = req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    let caller = match identity::caller_of(&edge.identities, req.headers(), source).await {
        Ok(caller) => caller,
        Err(answer) => return answer,
    };
    if req.method() != axum::http::Method::POST {
        let mut req = req;
        req.extensions_mut().insert(caller);
        return next.run(req).await;
    }
    let Ok(req) = crate::web::refuse_oversized(req, MAX_BODY).await else { return too_large() };
    let (mut parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => return too_large(),
        Err(_) => {
            return (axum::http::StatusCode::REQUEST_TIMEOUT, "the request body did not arrive within 10s")
                .into_response();
        }
    };
    if bytes.windows(23).any(|w| w == b"notifications/cancelled")
        && let Ok(msg) = serde_json::from_slice::<serde_json::Value>(&bytes)
        && msg.get("method").and_then(serde_json::Value::as_str) == Some("notifications/cancelled")
        && let Some(id) = msg.pointer("/params/requestId")
    {
        let cancelled = edge.server.inflight().cancel(caller.key(), &id.to_string());
        tracing::debug!(user = %caller.user, request = %id, cancelled, "notifications/cancelled");
    }
    if edge.server.caches()
        && plain_post(&parts.headers, &edge.hosts)
        && let Some(reply) = edge.server.cached_reply(&caller, &bytes).await
    {
        return ([(axum::http::header::CONTENT_TYPE.as_str(), "application/json"), (CACHE_HEADER, "hit")], reply)
            .into_response();
    }
    parts.extensions.insert(caller);
    next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))).await
}

/// How long a request's body may take to arrive once its headers are in.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn too_large() -> axum::response::Response {
    (axum::http::StatusCode::PAYLOAD_TOO_LARGE, "the request body is over 1 MiB").into_response()
}

/// Marks a response served by the cache's fast path (`hit`), for operators and tests.
pub const CACHE_HEADER: &str = "x-reflex-cache";

/// Largest MCP request body.
const MAX_BODY: usize = 1024 * 1024;
