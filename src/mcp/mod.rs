//! MCP, the loop's nervous system: Reflex's MCP server (context tools over streamable HTTP,
//! stateless, as the caller), the identity that flows through it, the tool manifest, and
//! the MCP client the loop calls every tool through.
//!
//! Contract: [`server`] serves `/mcp` behind the bearer-token identity ([`identity::caller_of`]); [`bounds`] is the
//! pure edge (input bounds, output caps, redaction); [`manifest`] pins tool schemas.

pub mod bounds;
pub mod client;
pub mod identity;
pub mod manifest;
pub mod server;

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
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(Some(std::time::Duration::from_secs(2)))
        .with_allowed_hosts(hosts)
        .with_max_request_body_bytes(MAX_BODY)
        .with_cancellation_token(stop);
    let edge = Edge { identities, inflight: server.inflight() };
    let service =
        StreamableHttpService::new(move || Ok(server.clone()), Arc::new(LocalSessionManager::default()), config);
    axum::Router::new().route_service("/mcp", service).layer(axum::middleware::from_fn_with_state(edge, edge_of_mcp))
}

/// What the edge of `/mcp` needs: who is calling, and the calls they have in flight.
#[derive(Clone)]
struct Edge {
    identities: Arc<identity::Identities>,
    inflight: server::InFlight,
}

/// Every `/mcp` request first: authenticate the bearer token (401 before any MCP handling)
/// and put the [`identity::Caller`] in the request's extensions, where rmcp hands it to tools.
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
    let caller = match identity::caller_of(&edge.identities, req.headers()).await {
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
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return too_large();
    };
    if bytes.windows(23).any(|w| w == b"notifications/cancelled")
        && let Ok(msg) = serde_json::from_slice::<serde_json::Value>(&bytes)
        && msg.get("method").and_then(serde_json::Value::as_str) == Some("notifications/cancelled")
        && let Some(id) = msg.pointer("/params/requestId")
    {
        let cancelled = edge.inflight.cancel(caller.key(), &id.to_string());
        tracing::debug!(user = %caller.user, request = %id, cancelled, "notifications/cancelled");
    }
    parts.extensions.insert(caller);
    next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))).await
}

fn too_large() -> axum::response::Response {
    (axum::http::StatusCode::PAYLOAD_TOO_LARGE, "the request body is over 1 MiB").into_response()
}

/// Largest MCP request body.
const MAX_BODY: usize = 1024 * 1024;
