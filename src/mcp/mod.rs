//! MCP, the loop's nervous system: Reflex's MCP server (context tools over streamable HTTP,
//! stateless, as the caller), the identity that flows through it, the tool manifest, and
//! the MCP client the loop calls every tool through.
//!
//! Contract: [`server`] serves `/mcp` behind [`identity::require_caller`]; [`bounds`] is the
//! pure edge (input bounds, output caps, redaction); [`manifest`] pins tool schemas.

pub mod bounds;
pub mod identity;
pub mod manifest;
pub mod server;

use std::sync::Arc;

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
        .with_max_request_body_bytes(1024 * 1024)
        .with_cancellation_token(stop);
    let service =
        StreamableHttpService::new(move || Ok(server.clone()), Arc::new(LocalSessionManager::default()), config);
    axum::Router::new()
        .nest_service("/mcp", service)
        .layer(axum::middleware::from_fn_with_state(identities, identity::require_caller))
}
