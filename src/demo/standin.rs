//! The LLM stand-in: an OpenAI-compatible chat-completions server that replays scripted
//! turns, for the scripted-LLM tests (tests/llm_agent.rs) and `reflex demo --scenario llm`.
//! It is the project's only stand-in for a model service (none is reachable here), and says
//! so when it starts.
//!
//! A script is a list of turns, each one of:
//! - `{"calls": [{"name", "arguments"}], "content"?, "usage": [prompt, completion]}`:
//!   an assistant message with tool calls (`arguments` a JSON value, or a string sent as is);
//! - `{"content": "..."}` or `{"refusal": "..."}`: an assistant message without tool calls;
//! - `{"status": N, "message"?}`: an error answer with that HTTP status (and message);
//! - `{"raw": "..."}`: a 200 whose body is exactly that text;
//! - `{"huge": N}`: a 200 whose body is a JSON object padded to about N bytes;
//! - `{"hang": true}`: never answers;
//! - `{"repeat": TURN}`: that turn, forever.
//!
//! When the script runs out the server answers 400 "script exhausted". Every request body is
//! recorded for assertions. It listens on loopback only.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Default)]
struct Script {
    turns: VecDeque<Value>,
    requests: Vec<Value>,
    /// Each request's W3C `traceparent` header, when it had one.
    traceparents: Vec<String>,
}

#[derive(Clone)]
pub struct StandIn {
    /// The API base to give the client (`.../v1`).
    pub url: String,
    script: Arc<Mutex<Script>>,
}

impl StandIn {
    pub async fn start() -> std::io::Result<Self> {
        let script = Arc::new(Mutex::new(Script::default()));
        let app =
            axum::Router::new().route("/v1/chat/completions", axum::routing::post(complete)).with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/v1", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        tracing::info!(%url, "LLM stand-in started (a scripted OpenAI-compatible server, not a model)");
        Ok(Self { url, script })
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replace the script (and forget the recorded requests).
    pub fn load(&self, turns: &[Value]) {
        *self.script() = Script { turns: turns.iter().cloned().collect(), ..Script::default() };
    }

    pub fn requests(&self) -> Vec<Value> {
        self.script().requests.clone()
    }

    /// The `traceparent` headers the requests carried, in order.
    pub fn traceparents(&self) -> Vec<String> {
        self.script().traceparents.clone()
    }
}

fn error(status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = if status == StatusCode::TOO_MANY_REQUESTS { "rate_limit_error" } else { "invalid_request_error" };
    (status, axum::Json(json!({"error": {"message": message, "type": kind, "param": null, "code": null}})))
        .into_response()
}

async fn complete(
    State(script): State<Arc<Mutex<Script>>>,
    headers: axum::http::HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let (turn, n) = {
        let mut s = script.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        s.requests.push(body.0);
        if let Some(traceparent) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
            s.traceparents.push(traceparent.to_owned());
        }
        let turn = match s.turns.front().cloned() {
            Some(t) if t.get("repeat").is_some() => Some(t["repeat"].clone()),
            Some(_) => s.turns.pop_front(),
            None => None,
        };
        (turn, s.requests.len())
    };
    let Some(turn) = turn else { return error(400, "script exhausted") };
    if let Some(status) = turn.get("status").and_then(Value::as_u64) {
        let message = turn.get("message").and_then(Value::as_str).unwrap_or("scripted failure");
        return error(status as u16, message);
    }
    if turn.get("hang").is_some() {
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    }
    if let Some(bytes) = turn.get("huge").and_then(Value::as_u64) {
        let filler = "x".repeat(usize::try_from(bytes).unwrap_or(0));
        return (StatusCode::OK, [("content-type", "application/json")], format!("{{\"pad\": \"{filler}\"}}"))
            .into_response();
    }
    if let Some(raw) = turn.get("raw").and_then(Value::as_str) {
        return (StatusCode::OK, [("content-type", "application/json")], raw.to_owned()).into_response();
    }
    let calls: Vec<Value> = turn
        .get("calls")
        .and_then(Value::as_array)
        .map(|calls| {
            calls
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let arguments = match &c["arguments"] {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    json!({"id": format!("call_{n}_{i}"), "type": "function", "function": {"name": c["name"], "arguments": arguments}})
                })
                .collect()
        })
        .unwrap_or_default();
    let mut message = json!({"role": "assistant", "content": turn.get("content").cloned().unwrap_or(Value::Null)});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    if let Some(r) = turn.get("refusal") {
        message["refusal"] = r.clone();
    }
    let usage = turn.get("usage").and_then(Value::as_array).cloned().unwrap_or_default();
    let prompt = usage.first().and_then(Value::as_u64).unwrap_or(0);
    let completion = usage.get(1).and_then(Value::as_u64).unwrap_or(0);
    let finish = if message.get("tool_calls").is_some() { "tool_calls" } else { "stop" };
    axum::Json(json!({
        "id": format!("chatcmpl-{n}"), "object": "chat.completion", "created": 0, "model": "scripted",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    }))
    .into_response()
}
