//! Telemetry: structured logs (text or JSON lines) and, when an OTLP endpoint is given,
//! OpenTelemetry traces exported over OTLP/gRPC.
//!
//! Contract: [`init`] installs the global tracing subscriber once; the filter comes from
//! `RUST_LOG` (default `info`). With an endpoint, every `tracing` span is also an
//! OpenTelemetry span (through `tracing-opentelemetry`), exported in batches, and the W3C
//! trace-context propagator is installed for [`trace`]'s helpers. [`Telemetry::shutdown`]
//! flushes what is buffered; a collector that is down costs dropped spans, never the loop.

pub mod trace;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::{EnvFilter, filter::Targets, fmt, prelude::*};

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// What [`init`] installed; keep it until the process ends and call [`Self::shutdown`].
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn tracing(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is buffered now (tests read the collector right after a run).
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(e) = provider.force_flush()
        {
            tracing::warn!(error = %e, "could not flush spans to the OTLP endpoint");
        }
    }

    /// Flushes and stops the exporter (also on drop).
    pub fn shutdown(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "could not flush spans to the OTLP endpoint");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Installs the tracing subscriber with logs only. Safe to call more than once (later calls
/// do nothing).
pub fn init(format: LogFormat) {
    // Without an endpoint nothing can fail.
    let _ = init_with(format, None);
}

/// Installs the tracing subscriber: logs in `format`, and spans exported over OTLP/gRPC to
/// `otlp_endpoint` (`http://collector:4317`) when one is given. Must run inside a Tokio
/// runtime (the gRPC channel lives on it). An endpoint that is not an http:// URL is an error
/// (no TLS in the exporter); one that does not answer only drops spans. Later calls install
/// nothing and export nothing.
pub fn init_with(format: LogFormat, otlp_endpoint: Option<&str>) -> Result<Telemetry, String> {
    let provider = match otlp_endpoint {
        None => None,
        Some(endpoint) => Some(provider(endpoint)?),
    };
    // Each layer its own filter: RUST_LOG quiets the logs without turning traces off, and
    // traces hold Reflex's own spans (not every library's, one trace per library span).
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("reflex"))
            .with_filter(Targets::new().with_target("reflex", tracing::Level::INFO))
    });
    let logs = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(otel);
    let installed = match format {
        LogFormat::Text => registry.with(fmt::layer().with_writer(std::io::stderr).with_filter(logs())).try_init(),
        LogFormat::Json => {
            registry.with(fmt::layer().json().with_writer(std::io::stderr).with_filter(logs())).try_init()
        }
    };
    // try_init fails only when a subscriber is installed already: then ours sees no span.
    match installed {
        Ok(()) => {
            if provider.is_some() {
                opentelemetry::global::set_text_map_propagator(
                    opentelemetry_sdk::propagation::TraceContextPropagator::new(),
                );
            }
            Ok(Telemetry { provider })
        }
        Err(_) => Ok(Telemetry::default()),
    }
}

fn provider(endpoint: &str) -> Result<SdkTracerProvider, String> {
    // No TLS in the exporter (yet): refuse https here, with what to do, rather than fail later.
    if endpoint.starts_with("https://") {
        return Err(format!(
            "--otlp-endpoint {endpoint:?}: OTLP over TLS is not built in; point it at a collector over http:// (an in-cluster or sidecar collector that forwards over TLS)"
        ));
    }
    if !endpoint.starts_with("http://") || endpoint.len() <= "http://".len() {
        return Err(format!("--otlp-endpoint {endpoint:?} is not an http:// URL (e.g. http://otel-collector:4317)"));
    }
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| format!("cannot build the OTLP exporter for {endpoint}: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("reflex")
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_the_exporter_cannot_use_is_refused_naming_what_to_do() {
        let https = provider("https://collector:4317").err().unwrap_or_default();
        assert!(https.contains("not built in") && https.contains("http://"), "{https}");
        for bad in ["collector:4317", "http://", "grpc://collector:4317"] {
            assert!(provider(bad).is_err(), "{bad}");
        }
    }
}
