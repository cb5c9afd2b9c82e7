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

/// An alerting rule as the metrics source reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertRule {
    /// The alert name.
    pub name: String,
    /// Its PromQL expression.
    pub expr: String,
    /// Its static labels (added to every alert it fires).
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Answers instant queries.
pub trait MetricsSource: Send + Sync {
    fn instant(&self, query: &str) -> BoxFuture<'_, Result<Option<f64>, MetricsError>>;

    /// The query evaluated at `at` instead of now.
    fn instant_at(&self, query: &str, at: jiff::Timestamp) -> BoxFuture<'_, Result<Option<f64>, MetricsError>> {
        let _ = (query, at);
        Box::pin(async { Err(MetricsError::Unavailable("this metrics source cannot evaluate at a past time".into())) })
    }

    /// The alerting rules named `name`.
    fn alert_rules(&self, name: &str) -> BoxFuture<'_, Result<Vec<AlertRule>, MetricsError>> {
        let _ = name;
        Box::pin(async { Err(MetricsError::Unavailable("this metrics source has no rules API".into())) })
    }
}

fn vector_value(query: &str, data: &prometheus_http_query::response::Data) -> Result<Option<f64>, MetricsError> {
    use prometheus_http_query::response::Data;
    Ok(match data {
        Data::Vector(v) if v.is_empty() => None,
        Data::Vector(v) => Some(v.iter().map(|s| s.sample().value()).sum()),
        Data::Scalar(s) => Some(s.value()),
        Data::Matrix(_) => {
            return Err(MetricsError::Rejected(format!("{query:?} returns a range vector; use an instant expression")));
        }
    })
}

/// Only a query Prometheus cannot run (bad data, an execution error) is rejected; a timeout,
/// a cancellation or an unavailable or failing server is the provider failing, retried.
fn prometheus_error(e: prometheus_http_query::Error) -> MetricsError {
    use prometheus_http_query::error::PrometheusErrorType;
    match e {
        prometheus_http_query::Error::Prometheus(p)
            if matches!(p.error_type(), PrometheusErrorType::BadData | PrometheusErrorType::Execution) =>
        {
            MetricsError::Rejected(p.to_string())
        }
        other => MetricsError::Unavailable(other.to_string()),
    }
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
            let result = self.client.query(&query).timeout(timeout_ms).get().await.map_err(prometheus_error)?;
            vector_value(&query, result.data())
        })
    }

    fn instant_at(&self, query: &str, at: jiff::Timestamp) -> BoxFuture<'_, Result<Option<f64>, MetricsError>> {
        let query = query.to_owned();
        Box::pin(async move {
            let timeout_ms = i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX);
            let result = self
                .client
                .query(&query)
                // Milliseconds matter: an alert starts within the second its sample arrived.
                .query("time", format!("{:.3}", at.as_millisecond() as f64 / 1000.0))
                .timeout(timeout_ms)
                .get()
                .await
                .map_err(prometheus_error)?;
            vector_value(&query, result.data())
        })
    }

    fn alert_rules(&self, name: &str) -> BoxFuture<'_, Result<Vec<AlertRule>, MetricsError>> {
        use prometheus_http_query::response::Rule;
        let name = name.to_owned();
        Box::pin(async move {
            let groups = self
                .client
                .rules()
                .kind(prometheus_http_query::RuleKind::Alerting)
                .name(&name)
                .get()
                .await
                .map_err(prometheus_error)?;
            Ok(groups
                .iter()
                .flat_map(|g| g.rules())
                .filter_map(|r| match r {
                    Rule::Alerting(a) if a.name() == name => Some(AlertRule {
                        name: a.name().to_owned(),
                        expr: a.query().to_owned(),
                        labels: a.labels().iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    }),
                    _ => None,
                })
                .collect())
        })
    }
}

impl<T: MetricsSource + ?Sized> MetricsSource for Arc<T> {
    fn instant(&self, query: &str) -> BoxFuture<'_, Result<Option<f64>, MetricsError>> {
        (**self).instant(query)
    }

    fn instant_at(&self, query: &str, at: jiff::Timestamp) -> BoxFuture<'_, Result<Option<f64>, MetricsError>> {
        (**self).instant_at(query, at)
    }

    fn alert_rules(&self, name: &str) -> BoxFuture<'_, Result<Vec<AlertRule>, MetricsError>> {
        (**self).alert_rules(name)
    }
}
