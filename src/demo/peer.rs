//! The A2A peer stand-in: an agent another team runs, which the `a2a` scenario's policy
//! delegates its diagnosis to. Built on the A2A project's own server SDK (a2a-server-lf: its
//! request handler, task store, card and JSON-RPC routers) with a scripted executor — a
//! stand-in for an agent nobody here can run, and it says so. The interop proof with a real
//! peer is tests/a2a.rs (the official Python SDK).

use std::sync::Arc;

use a2a::{
    A2AError, AgentCapabilities, AgentCard, AgentInterface, AgentSkill, Artifact, Part, StreamResponse, Task,
    TaskArtifactUpdateEvent, TaskState, TaskStatus, TaskStatusUpdateEvent,
};
use a2a_server::{AgentExecutor, DefaultRequestHandler, ExecutorContext, InMemoryTaskStore};
use futures::stream::BoxStream;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The stand-in agent, listening on loopback.
pub struct Peer {
    pub port: u16,
    stop: CancellationToken,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Scripted {
    findings: Vec<String>,
}

impl AgentExecutor for Scripted {
    fn execute(&self, ctx: ExecutorContext) -> BoxStream<'static, Result<StreamResponse, A2AError>> {
        let (task_id, context_id) = ctx.task_info();
        let data = ctx
            .message
            .as_ref()
            .and_then(|m| {
                m.parts.iter().find_map(|p| match &p.content {
                    a2a::PartContent::Data(v) => Some(v.clone()),
                    _ => None,
                })
            })
            .unwrap_or(Value::Null);
        let target = format!(
            "{} {}",
            data.pointer("/target/kind").and_then(Value::as_str).unwrap_or("the workload"),
            data.pointer("/target/name").and_then(Value::as_str).unwrap_or_default()
        );
        let findings: Vec<Value> = self.findings.iter().map(|f| json!({"source": "oom-expert", "detail": f})).collect();
        let answer = json!({"summary": format!("{target} is killed for memory"), "findings": findings});
        let status = |state| TaskStatus { state, message: None, timestamp: None };
        let events = vec![
            Ok(StreamResponse::Task(Task {
                id: task_id.clone(),
                context_id: context_id.clone(),
                status: status(TaskState::Submitted),
                artifacts: None,
                history: None,
                metadata: None,
            })),
            Ok(StreamResponse::StatusUpdate(TaskStatusUpdateEvent {
                task_id: task_id.clone(),
                context_id: context_id.clone(),
                status: status(TaskState::Working),
                metadata: None,
            })),
            Ok(StreamResponse::ArtifactUpdate(TaskArtifactUpdateEvent {
                task_id: task_id.clone(),
                context_id: context_id.clone(),
                artifact: Artifact {
                    artifact_id: "diagnosis".into(),
                    name: Some("diagnosis".into()),
                    description: None,
                    parts: vec![Part::data(answer)],
                    metadata: None,
                    extensions: None,
                },
                append: None,
                last_chunk: Some(true),
                metadata: None,
            })),
            Ok(StreamResponse::StatusUpdate(TaskStatusUpdateEvent {
                task_id,
                context_id,
                status: status(TaskState::Completed),
                metadata: None,
            })),
        ];
        Box::pin(futures::stream::iter(events))
    }

    fn cancel(&self, ctx: ExecutorContext) -> BoxStream<'static, Result<StreamResponse, A2AError>> {
        let (task_id, context_id) = ctx.task_info();
        Box::pin(futures::stream::iter(vec![Ok(StreamResponse::StatusUpdate(TaskStatusUpdateEvent {
            task_id,
            context_id,
            status: TaskStatus { state: TaskState::Canceled, message: None, timestamp: None },
            metadata: None,
        }))]))
    }
}

impl Peer {
    /// Starts the stand-in with one skill, answering every request with `findings`.
    ///
    /// # Errors
    /// It cannot listen on loopback.
    pub async fn start(skill: &str, findings: Vec<String>) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let card = AgentCard {
            name: "oom-expert (stand-in)".into(),
            description: "A scripted A2A agent standing in for another team's diagnosis agent.".into(),
            version: "1.0.0".into(),
            supported_interfaces: vec![AgentInterface::new(
                format!("http://127.0.0.1:{port}/a2a"),
                a2a::TRANSPORT_PROTOCOL_JSONRPC,
            )],
            capabilities: AgentCapabilities {
                streaming: Some(true),
                push_notifications: Some(false),
                extensions: None,
                extended_agent_card: None,
            },
            default_input_modes: vec!["application/json".into()],
            default_output_modes: vec!["application/json".into()],
            skills: vec![AgentSkill {
                id: skill.to_owned(),
                name: skill.to_owned(),
                description: "Diagnose an OOM-killed workload".into(),
                tags: vec!["oom".into()],
                examples: None,
                input_modes: None,
                output_modes: None,
                security_requirements: None,
            }],
            provider: None,
            documentation_url: None,
            icon_url: None,
            security_schemes: None,
            security_requirements: None,
            signatures: None,
        };
        let handler = Arc::new(DefaultRequestHandler::new(Scripted { findings }, InMemoryTaskStore::new()));
        let router = axum::Router::new()
            .merge(a2a_server::agent_card::agent_card_router(Arc::new(a2a_server::StaticAgentCard::new(card))))
            .nest("/a2a", a2a_server::jsonrpc::jsonrpc_router(handler));
        let stop = CancellationToken::new();
        let until = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).with_graceful_shutdown(async move { until.cancelled().await }).await;
        });
        tracing::info!(port, "A2A peer stand-in started (a scripted agent on the A2A Rust SDK, not another team's)");
        Ok(Self { port, stop })
    }
}
