//! HTTP helpers shared by the operator's endpoints (the Alertmanager webhook and `/mcp`).
//!
//! Contract: [`refuse_oversized`] answers for a request whose declared body is over a limit:
//! it reads and drops what the client is sending (up to a bound), so the client gets to
//! read the 413 instead of a reset connection.

use axum::extract::Request;
use axum::http::header;
use futures::StreamExt;

/// `Ok(req)` when the declared body fits `max`; otherwise drain it (at most `8 × max`) and
/// give `Err(())` — the caller answers 413.
pub async fn refuse_oversized(req: Request, max: usize) -> Result<Request, ()> {
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_none_or(|n| n <= max) {
        return Ok(req);
    }
    let mut stream = req.into_body().into_data_stream();
    let mut drained = 0usize;
    while let Some(Ok(chunk)) = stream.next().await {
        drained += chunk.len();
        if drained > 8 * max {
            break;
        }
    }
    Err(())
}
