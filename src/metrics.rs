//! Where Reflex reads numbers from: verification's samples, the playbook executor's direct
//! reads, and the MCP server's PromQL tool when no Prometheus is configured.
//!
//! Contract: a [`MetricsSource`] answers an instant PromQL query with one number (the sum
//! of the result vector, or the scalar), `None` when the query matched no series. Two
//! sources: [`Prometheus`] over HTTP (prometheus-http-query), and models that stand in for
//! Prometheus in the demo (see `crate::demo`), which must say which queries they can answer.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    /// The server rejected the query (bad PromQL): retrying will not help.
    #[error("query rejected: {0}")]
    Rejected(String),
    /// The source could not be reached or timed out.
    #[error("metrics source unavailable: {0}")]
    Unavailable(String),
}

/// Answers instant queries.
pub trait MetricsSource: Send + Sync {
    fn instant(&self, query: &str) -> BoxFuture<'_, Result<Option<f64>, MetricsError>>;
}

/// A Prometheus server's HTTP API.
pub struct Prometheus {
    client: prometheus_http_query::Client,
    timeout: Duration,
}

impl Prometheus {
    /// `url` is the server's base URL (`http://prometheus:9090`).
    pub fn new(url: &str, timeout: Duration) -> Result<Self, MetricsError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| MetricsError::Unavailable(e.to_string()))?;
        let client =
            prometheus_http_query::Client::from(http, url).map_err(|e| MetricsError::Rejected(e.to_string()))?;
        Ok(Self { client, timeout })
    }
}

impl MetricsSource for Prometheus {
    fn instant(&self, query: &str) -> BoxFuture<'_, Result<Option<f64>, MetricsError>> {
        let query = query.to_owned();
        Box::pin(async move {
            let timeout_ms = i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX);
            let result = self.client.query(&query).timeout(timeout_ms).get().await.map_err(|e| match e {
                prometheus_http_query::Error::Prometheus(p) => MetricsError::Rejected(p.to_string()),
                other => MetricsError::Unavailable(other.to_string()),
            })?;
            Ok(match result.data() {
                prometheus_http_query::response::Data::Vector(v) if v.is_empty() => None,
                prometheus_http_query::response::Data::Vector(v) => Some(v.iter().map(|s| s.sample().value()).sum()),
                prometheus_http_query::response::Data::Scalar(s) => Some(s.value()),
                prometheus_http_query::response::Data::Matrix(_) => {
                    return Err(MetricsError::Rejected(format!(
                        "{query:?} returns a range vector; use an instant expression"
                    )));
                }
            })
        })
    }
}

impl<T: MetricsSource + ?Sized> MetricsSource for Arc<T> {
    fn instant(&self, query: &str) -> BoxFuture<'_, Result<Option<f64>, MetricsError>> {
        (**self).instant(query)
    }
}
