//! Reflex as an A2A agent: the card at `/.well-known/agent-card.json` and the JSON-RPC
//! binding at `/a2a`, with Remediations as the task store.
//!
//! Contract: every `/a2a` request is authenticated before any JSON-RPC handling, with the MCP
//! server's identity rules (a Kubernetes bearer token, reviewed; 401 with WWW-Authenticate
//! otherwise; 429 for a source presenting rejected tokens over and over), and every read and
//! write is made *as the caller* (impersonation): a caller who may not create Remediations in
//! a namespace cannot start one there, and one who may not get a Remediation cannot see its
//! task. Nothing about a task lives in this process: `GetTask`, `ListTasks`, `CancelTask`
//! and the streams read the Remediation from the API server (streams watch it), so a
//! restarted operator or another replica answers for every task. A stream ends when the task
//! ends or waits for a person (input-required: an approval), or after [`STREAM_LIMIT`] (the
//! caller subscribes again). Push notifications and the extended card are not offered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use a2a::{
    A2AError, AgentCard, CancelTaskRequest, DeleteTaskPushNotificationConfigRequest, GetExtendedAgentCardRequest,
    GetTaskPushNotificationConfigRequest, GetTaskRequest, ListTaskPushNotificationConfigsRequest,
    ListTaskPushNotificationConfigsResponse, ListTasksRequest, ListTasksResponse, Message, Part, Role,
    SendMessageRequest, SendMessageResponse, StreamResponse, SubscribeToTaskRequest, Task, TaskArtifactUpdateEvent,
    TaskPushNotificationConfig, TaskState, TaskStatusUpdateEvent,
};
use a2a_server::{RequestHandler, ServiceParams};
use futures::stream::{BoxStream, StreamExt};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

use super::investigate::investigate;
use super::task::{self, Request, parse_request, parse_task_id, remediation_for, stream_ends, task_of};
use crate::api::remediation::Remediation;
use crate::mcp::identity::{Caller, Identities, caller_of};

/// Longest a stream follows a task before it ends (the caller subscribes again).
pub const STREAM_LIMIT: Duration = Duration::from_secs(900);
/// Most streams one caller holds open at once.
pub const MAX_STREAMS_PER_CALLER: usize = 16;
/// How long a request's body may take to arrive once its headers are in.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a blocking `SendMessage` for `remediate` waits for the task to end before it
/// answers with the task as it is (working); the caller follows with `GetTask` or a stream.
pub const BLOCKING_WAIT: Duration = Duration::from_secs(30);
/// Longest `CancelTask` waits for the controller to record the cancellation.
pub const CANCEL_WAIT: Duration = Duration::from_secs(10);
/// Largest JSON-RPC request body.
const MAX_BODY: usize = 1024 * 1024;
/// Most tasks one `ListTasks` page holds.
const MAX_PAGE: i32 = 100;

/// The A2A request handler over Remediations.
pub struct A2aServer {
    identities: Arc<Identities>,
    /// The operator's client: only to read the policy a `remediate` request names, to check
    /// the request against it (every effect is the caller's).
    operator: kube::Client,
    /// Open streams per caller.
    streams: Arc<std::sync::Mutex<HashMap<String, usize>>>,
}

/// One of a caller's open streams; dropping it frees the slot.
struct StreamSlot {
    streams: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    caller: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut s) = self.streams.lock()
            && let Some(n) = s.get_mut(&self.caller)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.remove(&self.caller);
            }
        }
    }
}

impl A2aServer {
    pub fn new(identities: Arc<Identities>, operator: kube::Client) -> Self {
        Self { identities, operator, streams: Arc::default() }
    }

    /// A stream slot for `caller`, or the refusal when it holds [`MAX_STREAMS_PER_CALLER`].
    fn slot(&self, caller: &Caller) -> Result<StreamSlot, A2AError> {
        let mut s = self.streams.lock().map_err(|_| A2AError::internal("stream accounting is unavailable"))?;
        let n = s.entry(caller.key().to_owned()).or_insert(0);
        if *n >= MAX_STREAMS_PER_CALLER {
            return Err(A2AError::unsupported_operation(format!(
                "{} already holds {MAX_STREAMS_PER_CALLER} open streams; close one, or poll with GetTask",
                caller.user
            )));
        }
        *n += 1;
        Ok(StreamSlot { streams: self.streams.clone(), caller: caller.key().to_owned() })
    }

    /// The caller behind the request's bearer token (reviewed once by the edge; cached).
    async fn caller(&self, params: &ServiceParams) -> Result<Caller, A2AError> {
        let token = params
            .get("authorization")
            .and_then(|v| v.first())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .unwrap_or_default();
        self.identities.authenticate(token, None).await.map_err(|e| A2AError::invalid_request(e.to_string()))
    }
}

/// An API server refusal as an A2A error the caller can act on.
fn kube_error(what: &str, e: &kube::Error) -> A2AError {
    match e {
        kube::Error::Api(s) if s.code == 404 => A2AError::task_not_found(what),
        kube::Error::Api(s) if s.code == 403 => A2AError::invalid_request(format!(
            "forbidden: {what}: {} (RBAC decides what Reflex does for you)",
            s.message
        )),
        kube::Error::Api(s) if s.code == 422 || s.code == 400 => {
            A2AError::invalid_params(format!("{what}: {}", s.message))
        }
        other => A2AError::internal(format!("{what}: {other}")),
    }
}

fn remediations(caller: &Caller, namespace: &str) -> Api<Remediation> {
    Api::namespaced(caller.client.clone(), namespace)
}

async fn get(caller: &Caller, namespace: &str, name: &str) -> Result<Remediation, A2AError> {
    remediations(caller, namespace).get(name).await.map_err(|e| kube_error(&task::task_id(namespace, name), &e))
}

impl A2aServer {
    /// Creates the Remediation a `remediate` request asks for, as the caller; a retried
    /// message finds the one it created.
    ///
    /// Before anything is created: the policy must exist, be valid, act on the target's kind
    /// and on the alert the caller named (as intake checks a delivered alert), and the caller
    /// must itself be allowed to get and patch the target — Reflex changes for a caller only
    /// what the caller may change.
    async fn start(&self, caller: &Caller, message: &Message, r: &task::Remediate) -> Result<Remediation, A2AError> {
        if message.task_id.as_deref().is_some_and(|t| !t.is_empty()) {
            return Err(A2AError::unsupported_operation(
                "Reflex tasks take no follow-up messages: start a new task, or follow this one with GetTask or SubscribeToTask",
            ));
        }
        let policy = Api::<crate::api::RemediationPolicy>::namespaced(self.operator.clone(), &r.namespace)
            .get(&r.policy)
            .await
            .map_err(|e| match e {
                kube::Error::Api(s) if s.code == 404 => A2AError::invalid_params(format!(
                    "policy: there is no RemediationPolicy {} in namespace {}",
                    r.policy, r.namespace
                )),
                other => A2AError::internal(format!("reading RemediationPolicy {}/{}: {other}", r.namespace, r.policy)),
            })?;
        let valid = crate::api::validate::ValidPolicy::from_spec(&policy.spec).map_err(|e| {
            A2AError::invalid_params(format!("policy: RemediationPolicy {} is not valid: {e}", r.policy))
        })?;
        if !valid.acts_on(r.target.kind) {
            return Err(A2AError::invalid_params(format!(
                "target.kind: policy {} acts on {}, not {}",
                r.policy,
                valid.kinds(),
                r.target.kind.as_str()
            )));
        }
        r.check_against(&valid)?;
        for verb in ["get", "patch"] {
            may(caller, verb, &r.namespace, &r.target).await?;
        }
        let name = task::remediation_name(&caller.user, &message.message_id);
        let context = message.context_id.clone().unwrap_or_else(a2a::new_context_id);
        let rem = remediation_for(r, &name, &message.message_id, &context, k8s_openapi::jiff::Timestamp::now());
        match remediations(caller, &r.namespace).create(&PostParams::default(), &rem).await {
            Ok(created) => {
                tracing::info!(user = %caller.user, remediation = %task::task_id(&r.namespace, &name), policy = %r.policy, "A2A: started a Remediation");
                Ok(created)
            }
            // A retried message: the Remediation it created, when it is that one.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let existing = get(caller, &r.namespace, &name).await?;
                let same_message = existing
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(task::MESSAGE_ANNOTATION))
                    .is_some_and(|m| *m == message.message_id);
                if same_message
                    && existing.spec.policy_ref == rem.spec.policy_ref
                    && existing.spec.target == rem.spec.target
                {
                    Ok(existing)
                } else {
                    Err(A2AError::invalid_request(format!(
                        "Remediation {}/{name} exists and was not made for this message; send a new messageId",
                        r.namespace
                    )))
                }
            }
            Err(e) => Err(kube_error(&format!("creating a Remediation in namespace {}", r.namespace), &e)),
        }
    }

    async fn diagnose(
        &self,
        caller: &Caller,
        namespace: &str,
        target: &crate::api::remediation::TargetRef,
        context: Option<String>,
    ) -> Result<Message, A2AError> {
        let diagnosis = investigate(&caller.client, namespace, target)
            .await
            .map_err(|e| kube_error(&format!("{} {namespace}/{}", target.kind.as_str(), target.name), &e))?;
        let mut text = diagnosis.summary.clone();
        for f in &diagnosis.findings {
            text.push_str(&format!("\n- {}: {}", f.source, f.detail));
        }
        let mut m = Message::new(Role::Agent, vec![Part::text(text), Part::data(json!(diagnosis))]);
        m.context_id = context;
        Ok(m)
    }
}

/// Whether the caller may `verb` the target (a SelfSubjectAccessReview as the caller).
async fn may(
    caller: &Caller,
    verb: &str,
    namespace: &str,
    target: &crate::api::remediation::TargetRef,
) -> Result<(), A2AError> {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let resource = crate::cluster::api_resource(target.kind);
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.to_owned()),
                group: Some(resource.group.clone()),
                resource: Some(resource.plural.clone()),
                namespace: Some(namespace.to_owned()),
                name: Some(target.name.clone()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let reviewed = Api::<SelfSubjectAccessReview>::all(caller.client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| kube_error("asking the API server what you may do", &e))?;
    if reviewed.status.is_some_and(|s| s.allowed) {
        Ok(())
    } else {
        Err(A2AError::invalid_request(format!(
            "forbidden: {} may not {verb} {} {namespace}/{}; Reflex changes for a caller only what the caller may change",
            caller.user,
            target.kind.as_str(),
            target.name
        )))
    }
}

/// The Remediation `namespace/name` followed as the caller: the task now, then an artifact
/// update for each artifact that appears or changes and a status update for each change of
/// state or headline, until a state `ends` the stream (for callers: [`stream_ends`]), or
/// [`STREAM_LIMIT`] passes.
fn follow(
    caller: &Caller,
    rem: Remediation,
    ends: fn(&TaskState) -> bool,
    slot: Option<StreamSlot>,
) -> BoxStream<'static, Result<StreamResponse, A2AError>> {
    let namespace = rem.metadata.namespace.clone().unwrap_or_default();
    let name = rem.metadata.name.clone().unwrap_or_default();
    let first = task_of(&rem);
    let watch =
        watcher(remediations(caller, &namespace), watcher::Config::default().fields(&format!("metadata.name={name}")))
            .boxed();
    struct Follow {
        watch: BoxStream<'static, Result<watcher::Event<Remediation>, watcher::Error>>,
        last: Task,
        queue: std::collections::VecDeque<Result<StreamResponse, A2AError>>,
        done: bool,
        deadline: tokio::time::Instant,
        /// Held while the stream lives.
        _slot: Option<StreamSlot>,
    }
    let done = ends(&first.status.state);
    let state = Follow {
        watch,
        last: first.clone(),
        queue: [Ok(StreamResponse::Task(first))].into(),
        done,
        deadline: tokio::time::Instant::now() + STREAM_LIMIT,
        _slot: slot,
    };
    futures::stream::unfold(state, move |mut s| async move {
        loop {
            if let Some(next) = s.queue.pop_front() {
                return Some((next, s));
            }
            if s.done {
                return None;
            }
            let event = match tokio::time::timeout_at(s.deadline, s.watch.next()).await {
                Err(_) | Ok(None) => return None,
                Ok(Some(event)) => event,
            };
            match event {
                Ok(watcher::Event::Apply(rem) | watcher::Event::InitApply(rem)) => {
                    let now = task_of(&rem);
                    let before: HashMap<&str, &a2a::Artifact> = s
                        .last
                        .artifacts
                        .iter()
                        .flatten()
                        .map(|a| (a.artifact_id.as_str(), a))
                        .collect();
                    for a in now.artifacts.iter().flatten() {
                        if before.get(a.artifact_id.as_str()) != Some(&a) {
                            s.queue.push_back(Ok(StreamResponse::ArtifactUpdate(TaskArtifactUpdateEvent {
                                task_id: now.id.clone(),
                                context_id: now.context_id.clone(),
                                artifact: a.clone(),
                                append: Some(false),
                                last_chunk: Some(true),
                                metadata: None,
                            })));
                        }
                    }
                    let changed = now.status.state != s.last.status.state
                        || now.status.message.as_ref().and_then(Message::text)
                            != s.last.status.message.as_ref().and_then(Message::text);
                    if changed {
                        s.queue.push_back(Ok(StreamResponse::StatusUpdate(TaskStatusUpdateEvent {
                            task_id: now.id.clone(),
                            context_id: now.context_id.clone(),
                            status: now.status.clone(),
                            metadata: now.metadata.clone(),
                        })));
                    }
                    s.done = ends(&now.status.state);
                    s.last = now;
                }
                Ok(watcher::Event::Delete(_)) => {
                    let mut status = s.last.status.clone();
                    status.state = TaskState::Failed;
                    status.message =
                        Some(Message::new(Role::Agent, vec![Part::text("the Remediation was deleted".to_owned())]));
                    s.queue.push_back(Ok(StreamResponse::StatusUpdate(TaskStatusUpdateEvent {
                        task_id: s.last.id.clone(),
                        context_id: s.last.context_id.clone(),
                        status,
                        metadata: None,
                    })));
                    s.done = true;
                }
                Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
                Err(e) => {
                    // A refusal does not pass by retrying; anything else the watcher retries.
                    let refused = matches!(&e,
                        watcher::Error::InitialListFailed(kube::Error::Api(s)) | watcher::Error::WatchStartFailed(kube::Error::Api(s))
                            if s.code == 403 || s.code == 401);
                    if refused {
                        s.queue.push_back(Err(A2AError::invalid_request(format!(
                            "forbidden: watching {}: {e} (the caller needs list and watch on remediations)",
                            s.last.id
                        ))));
                        s.done = true;
                    } else {
                        tracing::debug!(error = %e, task = %s.last.id, "A2A stream: watch error; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
    })
    .boxed()
}

/// Follows `rem` until a state `until` ends it or `wait` passes; the task as last seen.
async fn wait_for(caller: &Caller, rem: Remediation, wait: Duration, until: fn(&TaskState) -> bool) -> Task {
    let mut last = task_of(&rem);
    let mut stream = follow(caller, rem, until, None);
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(Ok(event))) = tokio::time::timeout_at(deadline, stream.next()).await {
        match event {
            StreamResponse::Task(t) => last = t,
            StreamResponse::StatusUpdate(u) => last.status = u.status,
            StreamResponse::ArtifactUpdate(a) => {
                let artifacts = last.artifacts.get_or_insert_with(Vec::new);
                artifacts.retain(|x| x.artifact_id != a.artifact.artifact_id);
                artifacts.push(a.artifact);
            }
            StreamResponse::Message(_) => {}
        }
        if until(&last.status.state) {
            break;
        }
    }
    last
}

#[async_trait::async_trait]
impl RequestHandler for A2aServer {
    async fn send_message(
        &self,
        params: &ServiceParams,
        req: SendMessageRequest,
    ) -> Result<SendMessageResponse, A2AError> {
        let caller = self.caller(params).await?;
        match parse_request(&req.message, req.metadata.as_ref())? {
            Request::Remediate(r) => {
                let rem = self.start(&caller, &req.message, &r).await?;
                let immediately = req.configuration.as_ref().and_then(|c| c.return_immediately).unwrap_or(false);
                let task =
                    if immediately { task_of(&rem) } else { wait_for(&caller, rem, BLOCKING_WAIT, stream_ends).await };
                Ok(SendMessageResponse::Task(task))
            }
            Request::Diagnose { namespace, target } => Ok(SendMessageResponse::Message(
                self.diagnose(&caller, &namespace, &target, req.message.context_id.clone()).await?,
            )),
            Request::Status { namespace, name } => {
                Ok(SendMessageResponse::Task(task_of(&get(&caller, &namespace, &name).await?)))
            }
        }
    }

    async fn send_streaming_message(
        &self,
        params: &ServiceParams,
        req: SendMessageRequest,
    ) -> Result<BoxStream<'static, Result<StreamResponse, A2AError>>, A2AError> {
        let caller = self.caller(params).await?;
        match parse_request(&req.message, req.metadata.as_ref())? {
            Request::Remediate(r) => {
                let slot = self.slot(&caller)?;
                let rem = self.start(&caller, &req.message, &r).await?;
                Ok(follow(&caller, rem, stream_ends, Some(slot)))
            }
            Request::Diagnose { namespace, target } => {
                let m = self.diagnose(&caller, &namespace, &target, req.message.context_id.clone()).await?;
                Ok(futures::stream::once(async move { Ok(StreamResponse::Message(m)) }).boxed())
            }
            Request::Status { namespace, name } => {
                let slot = self.slot(&caller)?;
                Ok(follow(&caller, get(&caller, &namespace, &name).await?, stream_ends, Some(slot)))
            }
        }
    }

    async fn get_task(&self, params: &ServiceParams, req: GetTaskRequest) -> Result<Task, A2AError> {
        let caller = self.caller(params).await?;
        let (namespace, name) = parse_task_id(&req.id)?;
        Ok(task_of(&get(&caller, &namespace, &name).await?))
    }

    /// Remediations as tasks: in the namespace named by `tenant`, else in every namespace
    /// (which needs a cluster-wide list). Pages are the API server's (`continue`); a
    /// context or state filter applies within a page.
    async fn list_tasks(&self, params: &ServiceParams, req: ListTasksRequest) -> Result<ListTasksResponse, A2AError> {
        let caller = self.caller(params).await?;
        let size = req.page_size.unwrap_or(50).clamp(1, MAX_PAGE);
        let api: Api<Remediation> = match req.tenant.as_deref().filter(|t| !t.is_empty()) {
            Some(namespace) => remediations(&caller, namespace),
            None => Api::all(caller.client.clone()),
        };
        let mut lp = ListParams::default().limit(u32::try_from(size).unwrap_or(50));
        if let Some(token) = req.page_token.as_deref().filter(|t| !t.is_empty()) {
            lp = lp.continue_token(token);
        }
        let list = api.list(&lp).await.map_err(|e| kube_error("listing Remediations", &e))?;
        let include_artifacts = req.include_artifacts.unwrap_or(false);
        let tasks: Vec<Task> = list
            .items
            .iter()
            .map(task_of)
            .filter(|t| req.context_id.as_deref().is_none_or(|c| c.is_empty() || t.context_id == c))
            .filter(|t| req.status.as_ref().is_none_or(|s| *s == TaskState::Unspecified || t.status.state == *s))
            .map(|mut t| {
                if !include_artifacts {
                    t.artifacts = None;
                }
                t
            })
            .collect();
        // The API server's count of what matches (this page and what remains), before the
        // context and state filters.
        let remaining = list.metadata.remaining_item_count.unwrap_or(0);
        let total = i64::try_from(list.items.len()).unwrap_or(i64::MAX).saturating_add(remaining.max(0));
        Ok(ListTasksResponse {
            page_size: size,
            total_size: i32::try_from(total).unwrap_or(i32::MAX),
            next_page_token: list.metadata.continue_.unwrap_or_default(),
            tasks,
        })
    }

    async fn cancel_task(&self, params: &ServiceParams, req: CancelTaskRequest) -> Result<Task, A2AError> {
        let caller = self.caller(params).await?;
        let (namespace, name) = parse_task_id(&req.id)?;
        let rem = get(&caller, &namespace, &name).await?;
        if task::state_of(&rem).is_terminal() {
            return Err(A2AError::task_not_cancelable(&req.id));
        }
        let cancelled = crate::oncall::cancel(&caller.client, &namespace, &name).await.map_err(|e| match e {
            crate::oncall::OncallError::Write { what, source } => kube_error(&what, &source),
            other => A2AError::internal(other.to_string()),
        })?;
        tracing::info!(user = %caller.user, task = %req.id, "A2A: cancelled a Remediation");
        Ok(wait_for(&caller, cancelled, CANCEL_WAIT, TaskState::is_terminal).await)
    }

    async fn subscribe_to_task(
        &self,
        params: &ServiceParams,
        req: SubscribeToTaskRequest,
    ) -> Result<BoxStream<'static, Result<StreamResponse, A2AError>>, A2AError> {
        let caller = self.caller(params).await?;
        let (namespace, name) = parse_task_id(&req.id)?;
        let rem = get(&caller, &namespace, &name).await?;
        if task::state_of(&rem).is_terminal() {
            return Err(A2AError::unsupported_operation(format!(
                "task {} has ended ({:?}); read it with GetTask",
                req.id,
                task::state_of(&rem)
            )));
        }
        let slot = self.slot(&caller)?;
        Ok(follow(&caller, rem, stream_ends, Some(slot)))
    }

    async fn create_push_config(
        &self,
        _params: &ServiceParams,
        _req: TaskPushNotificationConfig,
    ) -> Result<TaskPushNotificationConfig, A2AError> {
        Err(A2AError::push_notification_not_supported())
    }

    async fn get_push_config(
        &self,
        _params: &ServiceParams,
        _req: GetTaskPushNotificationConfigRequest,
    ) -> Result<TaskPushNotificationConfig, A2AError> {
        Err(A2AError::push_notification_not_supported())
    }

    async fn list_push_configs(
        &self,
        _params: &ServiceParams,
        _req: ListTaskPushNotificationConfigsRequest,
    ) -> Result<ListTaskPushNotificationConfigsResponse, A2AError> {
        Err(A2AError::push_notification_not_supported())
    }

    async fn delete_push_config(
        &self,
        _params: &ServiceParams,
        _req: DeleteTaskPushNotificationConfigRequest,
    ) -> Result<(), A2AError> {
        Err(A2AError::push_notification_not_supported())
    }

    async fn get_extended_agent_card(
        &self,
        _params: &ServiceParams,
        _req: GetExtendedAgentCardRequest,
    ) -> Result<AgentCard, A2AError> {
        Err(A2AError::extended_card_not_configured())
    }
}

/// `/.well-known/agent-card.json` (public) and `/a2a` (authenticated, bounded body).
pub fn router(identities: Arc<Identities>, operator: kube::Client, card: AgentCard) -> axum::Router {
    let server = Arc::new(A2aServer::new(identities.clone(), operator));
    let rpc = a2a_server::jsonrpc::jsonrpc_router(server)
        .layer(axum::middleware::from_fn_with_state(identities, authenticate));
    axum::Router::new()
        .merge(a2a_server::agent_card::agent_card_router(Arc::new(a2a_server::StaticAgentCard::new(card))))
        .nest("/a2a", rpc)
}

/// The edge of `/a2a`: the bearer token is reviewed before any JSON-RPC handling, then the
/// body must arrive whole, within [`MAX_BODY`] and [`BODY_TIMEOUT`].
async fn authenticate(
    axum::extract::State(identities): axum::extract::State<Arc<Identities>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let source = req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    if let Err(answer) = caller_of(&identities, req.headers(), source).await {
        return answer;
    }
    let too_large = || (axum::http::StatusCode::PAYLOAD_TOO_LARGE, "the request body is over 1 MiB").into_response();
    let Ok(req) = crate::web::refuse_oversized(req, MAX_BODY).await else { return too_large() };
    let (parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => return too_large(),
        Err(_) => {
            return (axum::http::StatusCode::REQUEST_TIMEOUT, "the request body did not arrive within 10s")
                .into_response();
        }
    };
    next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))).await
}
