//! Trace context: which trace a span belongs to, continuing a recorded trace, and the W3C
//! `traceparent` carried on outgoing MCP and LLM requests and read from incoming ones.
//!
//! Contract: pure helpers over the current `tracing` span's OpenTelemetry context. Without an
//! OTLP endpoint (no OpenTelemetry layer) every span's context is invalid: nothing is
//! recorded, injected or continued, and every helper is a no-op. Anything read from outside
//! (a `traceparent` from a request, ids from a Remediation's status) is parsed by the W3C
//! propagator or the id types; what does not parse is ignored, never trusted in part — a
//! trace id only groups spans, it proves nothing.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C header and `_meta` key.
pub const TRACEPARENT: &str = "traceparent";

/// The trace and span id of `span`, as lowercase hex, when it is exported.
pub fn ids_of(span: &tracing::Span) -> Option<(String, String)> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| (span_context.trace_id().to_string(), span_context.span_id().to_string()))
}

/// Makes `span` a child of the span `span_id` of trace `trace_id` (a trace recorded earlier,
/// perhaps by another process). Returns false, changing nothing, when either id is not
/// valid hex of the right length or is all zeros.
pub fn continue_trace(span: &tracing::Span, trace_id: &str, span_id: &str) -> bool {
    let (Some(trace_id), Some(span_id)) = (trace_id_from(trace_id), span_id_from(span_id)) else {
        return false;
    };
    remote_parent(span, trace_id, span_id)
}

/// Makes `span` a sampled child of the remote span `span_id` of trace `trace_id`.
fn remote_parent(span: &tracing::Span, trace_id: TraceId, span_id: SpanId) -> bool {
    let remote = SpanContext::new(trace_id, span_id, TraceFlags::SAMPLED, true, TraceState::default());
    span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote)).is_ok()
}

/// The span id of a trace's root — the Remediation itself, which is never a span of one
/// process: derived from the trace id, so every process names the same parent.
pub fn root_span_id(trace_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(trace_id.as_bytes());
    let id: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    // All zeros is not a span id; the chance is 2^-64, and then any fixed id serves.
    if id.bytes().all(|b| b == b'0') { "0000000000000001".to_owned() } else { id }
}

fn trace_id_from(hex: &str) -> Option<TraceId> {
    let ok = hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then(|| TraceId::from_hex(hex).ok()).flatten().filter(|id| *id != TraceId::INVALID)
}

fn span_id_from(hex: &str) -> Option<SpanId> {
    let ok = hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then(|| SpanId::from_hex(hex).ok()).flatten().filter(|id| *id != SpanId::INVALID)
}

/// The `traceparent` value naming `span` as the parent, when it is exported.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `span` a child of the caller's span named by `traceparent` (from a request header
/// or an MCP request's `_meta`). Returns whether it parsed.
///
/// The caller's sampling flag is not followed: a caller cannot switch off the recording of
/// what Reflex does for it (a `-00` traceparent is continued as sampled). Any caller may name
/// any trace id — a trace groups spans for people to read and proves nothing.
pub fn continue_from(span: &tracing::Span, traceparent: &str) -> bool {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let extracted = TraceContextPropagator::new().extract(&carrier);
    let remote = extracted.span().span_context().clone();
    if !remote.is_valid() {
        return false;
    }
    remote_parent(span, remote.trace_id(), remote.span_id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_are_not_lowercase_hex_of_the_right_length_or_are_zero_are_refused() {
        assert!(trace_id_from("4bf92f3577b34da6a3ce929d0e0e4736").is_some());
        assert!(span_id_from("00f067aa0ba902b7").is_some());
        for bad in [
            "",
            "4bf92f3577b34da6a3ce929d0e0e473",
            "4BF92F3577B34DA6A3CE929D0E0E4736",
            "00000000000000000000000000000000",
            "4bf92f3577b34da6a3ce929d0e0e473g",
            "4bf92f3577b34da6a3ce929d0e0e4736 ",
        ] {
            assert!(trace_id_from(bad).is_none(), "{bad:?}");
        }
        for bad in ["0000000000000000", "00f067aa0ba902b", "+0f067aa0ba902b7"] {
            assert!(span_id_from(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn without_an_exporter_nothing_is_recorded_injected_or_continued() {
        let span = tracing::info_span!("reconcile");
        assert_eq!(ids_of(&span), None);
        assert_eq!(traceparent(&span), None);
        assert!(!continue_from(&span, "not a traceparent"));
    }
}
