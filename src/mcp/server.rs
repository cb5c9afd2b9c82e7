//! Reflex's MCP server: the context tools every step of the loop reads production through,
//! served at `/mcp` (streamable HTTP, stateless, so replicas need no sticky sessions).
//!
//! Contract: every tool has typed input and structured output. A call runs *as the caller*
//! (the [`Caller`] the identity middleware put in the request: an impersonating client), so
//! a caller sees exactly what RBAC lets it see; a forbidden read is a tool error naming the
//! missing permission. Inputs are bounded ([`super::bounds`]) before any work; each tool has
//! a timeout; outputs are capped with an explicit truncation notice; Secret values never
//! leave. A slow call reports progress when the client asked for it, and stops when the
//! client cancels (or disconnects). Results are cached for [`CACHE_TTL`] per identity,
//! tool and arguments, so an agent asking twice costs one read. Resources
//! `remediation://NAMESPACE/NAME` and `playbook://NAMESPACE/NAME`; a prompt for diagnosing
//! an alert.
//!
//! The server's parts: [`super::call`] (the server value and the call machinery — as the
//! caller, cached, timed out, cancellable, with progress — and the cache's fast path),
//! [`super::schema`] (every tool's typed input and output), [`super::tools`] (the tool
//! bodies), [`super::resources`] (resources and the prompt); this module builds the server
//! and answers MCP's server requests.

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    Implementation, ListResourceTemplatesResult, ListResourcesResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, prompt_handler, tool_handler};

pub use super::call::{Backends, ReflexMcp};
use super::call::{InFlight, Inner, Served};

/// How long a context tool's result is reused for the same identity and arguments.
pub const CACHE_TTL: Duration = Duration::from_secs(2);
/// Most bytes the read-through cache holds.
pub const CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// Each tool's version: bump it with any change to its input or output schema, and run
/// `reflex mcp manifest > mcp-manifest.json` (a test holds the two together).
pub const TOOL_VERSIONS: &[(&str, u32)] = &[
    ("get_resource", 1),
    ("list_resources", 1),
    ("get_events", 1),
    ("get_pod_logs", 1),
    ("get_rollout_history", 2),
    ("query_prometheus", 1),
    ("query_prometheus_range", 1),
    ("list_firing_alerts", 1),
    ("list_remediations", 1),
    ("list_playbooks", 1),
    ("approve_remediation", 1),
    ("reject_remediation", 1),
    ("cancel_remediation", 1),
];

/// A Prometheus client for the PromQL and alert tools (ring TLS through our reqwest).
pub fn prometheus_client(url: &str) -> Result<prometheus_http_query::Client, String> {
    crate::install_crypto_provider();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().map_err(|e| e.to_string())?;
    prometheus_http_query::Client::from(http, url).map_err(|e| e.to_string())
}

impl ReflexMcp {
    pub fn new(backends: Backends) -> Self {
        Self::build(backends, CACHE_TTL)
    }

    /// Cache results for `ttl` instead of [`CACHE_TTL`] (zero: no caching).
    pub fn with_cache_ttl(self, ttl: Duration) -> Self {
        Self::build(self.inner.backends.clone(), ttl)
    }

    fn build(backends: Backends, ttl: Duration) -> Self {
        let cache = (!ttl.is_zero()).then(|| {
            moka::future::Cache::builder()
                // The structured copy weighs about what its text does.
                .weigher(|k: &String, v: &Arc<Served>| u32::try_from(k.len() + 2 * v.text.len()).unwrap_or(u32::MAX))
                .max_capacity(CACHE_BYTES)
                .time_to_live(ttl)
                .build()
        });
        let inner = Inner {
            backends,
            inflight: InFlight::default(),
            cache,
            tool_router: Self::tool_router() + Self::action_router(),
            prompt_router: Self::prompt_router(),
        };
        Self { inner: Arc::new(inner) }
    }

    /// Calls in progress, for cancellation by notification.
    pub fn inflight(&self) -> InFlight {
        self.inner.inflight.clone()
    }

    /// Whether results are cached (the fast path has anything to serve).
    pub fn caches(&self) -> bool {
        self.inner.cache.is_some()
    }
}

#[tool_handler(router = self.inner.tool_router)]
#[prompt_handler(router = self.inner.prompt_router)]
impl ServerHandler for ReflexMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_prompts().enable_resources().build())
            .with_server_info(Implementation::new("reflex", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Reflex's context tools read Kubernetes (as you: your token's RBAC applies) and Prometheus. \
                 Resources: remediation://NAMESPACE/NAME, playbook://NAMESPACE/NAME.",
            )
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        self.resource_list(&ctx).await
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(super::resources::templates())
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        self.resource_read(request, &ctx).await
    }
}

/// The tools as listed (for the manifest and tests).
pub fn tools() -> Vec<rmcp::model::Tool> {
    (ReflexMcp::tool_router() + ReflexMcp::action_router()).list_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_has_a_version_and_typed_schemas() {
        let tools = tools();
        assert_eq!(tools.len(), TOOL_VERSIONS.len());
        for t in &tools {
            assert!(TOOL_VERSIONS.iter().any(|(n, _)| *n == t.name), "{} has no version", t.name);
            assert!(t.output_schema.is_some(), "{} has no output schema", t.name);
            let read_only = !super::super::actions::ACTION_TOOLS.contains(&t.name.as_ref());
            assert_eq!(t.annotations.as_ref().and_then(|a| a.read_only_hint), Some(read_only), "{}", t.name);
        }
    }
}
