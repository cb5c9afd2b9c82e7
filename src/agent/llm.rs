//! The LLM client: any OpenAI-compatible chat-completions endpoint with tool calling
//! (OpenAI, Azure, vLLM, Ollama, llama.cpp, LiteLLM), with async-openai's request and reply
//! types, over the egress client (no redirects, no link-local address) with the reply read up
//! to [`MAX_REPLY_BYTES`].
//!
//! Contract: [`LlmClient::chat`] sends one request with a per-request timeout, retries
//! 429 and 5xx answers (and connection failures) with exponential backoff and full jitter up
//! to [`LlmSettings::attempts`], stops at once when its cancellation token fires (the
//! request in flight is dropped), and returns the reply with its token usage and cost (from
//! the operator's price table). Each call is a tracing span with model, tokens, cost and
//! duration. 4xx answers other than 429 are not retried: the request itself is wrong.

use std::time::{Duration, Instant};

use async_openai::types::chat::{
    ChatCompletionResponseMessage, CreateChatCompletionRequest, CreateChatCompletionResponse,
};
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

/// Dollars per million tokens, by direction; the operator's config holds one per model.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Price {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

impl Price {
    /// What `usage` cost.
    pub fn cost(&self, usage: Usage) -> f64 {
        (f64::from(usage.prompt) * self.input_per_million + f64::from(usage.completion) * self.output_per_million) / 1e6
    }
}

/// Where and how to reach the model.
#[derive(Clone, Debug)]
pub struct LlmSettings {
    /// Base URL of the OpenAI-compatible API (`https://api.openai.com/v1`, `http://vllm:8000/v1`).
    pub endpoint: String,
    pub model: String,
    /// From the Secret the policy names; absent for endpoints without auth.
    pub api_key: Option<SecretString>,
    /// Per request.
    pub timeout: Duration,
    /// Tries per request, the first included.
    pub attempts: u32,
    /// Price of this model, when the operator's table has it.
    pub price: Option<Price>,
}

/// Tokens one reply used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u32,
    pub completion: u32,
}

impl Usage {
    pub fn total(&self) -> u64 {
        u64::from(self.prompt) + u64::from(self.completion)
    }
}

/// One reply.
#[derive(Clone, Debug)]
pub struct Reply {
    pub message: ChatCompletionResponseMessage,
    pub usage: Usage,
    /// US dollars; 0 when the price is unknown.
    pub cost_usd: f64,
    pub duration: Duration,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum LlmError {
    #[error("the LLM request was cancelled")]
    Cancelled,
    #[error("the model endpoint refused the request: {0}")]
    Rejected(String),
    #[error("the model endpoint is unavailable after {attempts} attempts: {last}")]
    Unavailable { attempts: u32, last: String },
    #[error("the model's answer is not usable: {0}")]
    Malformed(String),
}

/// The largest answer read from the endpoint (a chat completion is kilobytes; an endpoint a
/// policy names could send gigabytes).
pub const MAX_REPLY_BYTES: usize = 4 * 1024 * 1024;

/// A client for one policy's model.
#[derive(Clone)]
pub struct LlmClient {
    http: reqwest::Client,
    settings: LlmSettings,
}

impl std::fmt::Debug for LlmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmClient")
            .field("endpoint", &self.settings.endpoint)
            .field("model", &self.settings.model)
            .finish()
    }
}

/// What a failed attempt means for the next one.
enum Attempt {
    Retry(String),
    Stop(LlmError),
}

impl LlmClient {
    pub fn new(settings: LlmSettings) -> Result<Self, LlmError> {
        // The endpoint comes from a policy: no redirects, no link-local or metadata address.
        crate::egress::check_url(&settings.endpoint).map_err(LlmError::Rejected)?;
        let http = crate::egress::client(Some(settings.timeout))
            .map_err(|e| LlmError::Rejected(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { http, settings })
    }

    /// One POST to `/chat/completions` with async-openai's request and response types, the
    /// answer read up to [`MAX_REPLY_BYTES`] (async-openai's own client reads any size).
    async fn post(&self, request: &CreateChatCompletionRequest) -> Result<CreateChatCompletionResponse, Failure> {
        let url = format!("{}/chat/completions", self.settings.endpoint.trim_end_matches('/'));
        let mut call = self.http.post(url).json(request);
        // The W3C trace context: a model gateway that traces joins this run's trace.
        if let Some(traceparent) = crate::telemetry::trace::traceparent(&tracing::Span::current()) {
            call = call.header(crate::telemetry::trace::TRACEPARENT, traceparent);
        }
        if let Some(key) = &self.settings.api_key {
            call = call.bearer_auth(key.expose_secret());
        }
        let mut response = call.send().await.map_err(Failure::Transport)?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(Failure::Transport)? {
            if body.len() + chunk.len() > MAX_REPLY_BYTES {
                return Err(Failure::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let error = serde_json::from_slice::<async_openai::error::WrappedError>(&body).ok().map(|w| w.error);
            return Err(Failure::Status(status, error));
        }
        serde_json::from_slice(&body).map_err(Failure::Malformed)
    }

    pub fn model(&self) -> &str {
        &self.settings.model
    }

    /// One chat completion (the request's model is set from the settings).
    pub async fn chat(
        &self,
        mut request: CreateChatCompletionRequest,
        cancel: &CancellationToken,
    ) -> Result<Reply, LlmError> {
        request.model.clone_from(&self.settings.model);
        let attempts = self.settings.attempts.max(1);
        let span = tracing::info_span!("llm.chat", otel.name = %format!("chat {}", self.settings.model), otel.kind = "client",
            gen_ai.operation.name = "chat", gen_ai.request.model = %self.settings.model, model = %self.settings.model, tokens = tracing::field::Empty,
            cost_usd = tracing::field::Empty, duration_ms = tracing::field::Empty);
        let started = Instant::now();
        let mut last = String::new();
        for attempt in 1..=attempts {
            let call = tracing::Instrument::instrument(self.post(&request), span.clone());
            let result = tokio::select! {
                () = cancel.cancelled() => return Err(LlmError::Cancelled),
                r = call => r,
            };
            match result.map_err(classify) {
                Ok(response) => {
                    // An endpoint that reports no usage is charged an estimate (4 bytes a token), so
                    // the token and cost budgets still hold.
                    let estimate = |bytes: usize| u32::try_from(bytes / 4).unwrap_or(u32::MAX);
                    let usage = response.usage.as_ref().map_or_else(
                        || Usage {
                            prompt: estimate(serde_json::to_string(&request).map_or(0, |s| s.len())),
                            completion: estimate(
                                response
                                    .choices
                                    .first()
                                    .and_then(|c| serde_json::to_string(&c.message).ok())
                                    .map_or(0, |s| s.len()),
                            ),
                        },
                        |u| Usage { prompt: u.prompt_tokens, completion: u.completion_tokens },
                    );
                    let cost_usd = self.settings.price.map_or(0.0, |p| p.cost(usage));
                    let duration = started.elapsed();
                    span.record("tokens", usage.total());
                    span.record("cost_usd", cost_usd);
                    span.record("duration_ms", duration.as_millis() as u64);
                    let Some(choice) = response.choices.into_iter().next() else {
                        return Err(LlmError::Malformed("the reply has no choices".into()));
                    };
                    return Ok(Reply { message: choice.message, usage, cost_usd, duration });
                }
                Err(Attempt::Stop(e)) => return Err(e),
                Err(Attempt::Retry(why)) => {
                    last = why;
                    if attempt < attempts {
                        let wait = crate::mcp::client::backoff(attempt, uuid::Uuid::new_v4().as_u64_pair().0);
                        tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, error = %last, "LLM request failed; retrying");
                        tokio::select! {
                            () = cancel.cancelled() => return Err(LlmError::Cancelled),
                            () = tokio::time::sleep(wait) => {}
                        }
                    }
                }
            }
        }
        Err(LlmError::Unavailable { attempts, last })
    }
}

/// How one request to the endpoint failed.
#[derive(Debug)]
enum Failure {
    /// Not 2xx, with the error the endpoint described, if it did.
    Status(reqwest::StatusCode, Option<async_openai::error::ApiError>),
    Transport(reqwest::Error),
    TooLarge,
    Malformed(serde_json::Error),
}

/// What went wrong, in words of our own: the endpoint's own text (its error message, the
/// body it sent) is logged, never carried into the Remediation's status.
fn classify(e: Failure) -> Attempt {
    tracing::warn!(error = ?e, "the LLM endpoint's answer (logged only)");
    match e {
        Failure::Status(status, error) => {
            let kind = error
                .iter()
                .flat_map(|e| [e.r#type.as_deref(), e.code.as_deref()])
                .flatten()
                .filter(|t| {
                    t.len() <= 64 && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                })
                .collect::<Vec<_>>()
                .join("/");
            let kind = if kind.is_empty() { String::new() } else { format!(" ({kind})") };
            let what = format!("the endpoint answered HTTP {}{kind}", status.as_u16());
            if status.as_u16() == 429 || status.is_server_error() {
                Attempt::Retry(what)
            } else {
                Attempt::Stop(LlmError::Rejected(what))
            }
        }
        Failure::Transport(e) if e.is_timeout() => Attempt::Retry("the endpoint did not answer in time".to_owned()),
        Failure::Transport(e) if e.is_connect() || e.is_request() => {
            Attempt::Retry("the endpoint could not be reached".to_owned())
        }
        Failure::Transport(_) => Attempt::Stop(LlmError::Rejected("the request to the endpoint failed".to_owned())),
        Failure::TooLarge => Attempt::Stop(LlmError::Malformed(format!(
            "the reply is larger than {} MiB; it was not read further",
            MAX_REPLY_BYTES / (1024 * 1024)
        ))),
        Failure::Malformed(e) => Attempt::Stop(LlmError::Malformed(format!(
            "the reply is not a chat completion (line {}, column {})",
            e.line(),
            e.column()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_follows_the_price_table() {
        let p = Price { input_per_million: 3.0, output_per_million: 15.0 };
        let c = p.cost(Usage { prompt: 1_000_000, completion: 100_000 });
        assert!((c - 4.5).abs() < 1e-9, "{c}");
        assert_eq!(Usage { prompt: 7, completion: 5 }.total(), 12);
    }
}
