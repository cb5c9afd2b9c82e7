//! The LLM stand-in the scripted-LLM tests use: `reflex::demo::standin` (one implementation
//! for the tests and `reflex demo --scenario llm`), started on loopback.
#![allow(dead_code)]

pub use reflex::demo::standin::StandIn;

/// A started stand-in, announced as one on stderr.
pub async fn start() -> StandIn {
    let s = StandIn::start().await.expect("the LLM stand-in starts");
    eprintln!("LLM stand-in (scripted OpenAI-compatible server, not a model) at {}", s.url);
    s
}
