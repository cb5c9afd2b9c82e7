//! MCP: Reflex's MCP server (context tools over the cluster and Prometheus, read as the
//! caller) and its MCP client (schema pinning, timeouts, cancellation, audit).
//!
//! Contract: nothing here yet; the controller reaches production only through the stage
//! traits, which will call tools through this module.
