//! Reflex's MCP action tools — `approve_remediation`, `reject_remediation`,
//! `cancel_remediation` — for people's own MCP clients (an on-call engineer's assistant).
//!
//! Contract: each acts as the caller (the identity the `/mcp` edge authenticated and
//! impersonates), through `crate::oncall`, so RBAC and the approval admission policy decide:
//! nobody can approve as someone else. Never cached; not read-only. The LLM agent's client is
//! pinned to the read-only context tools and can never call these.

use rmcp::handler::server::wrapper::Parameters;
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};

use super::bounds;
use super::call::{Json, ReflexMcp, args};
use super::schema::{ActionOutput, RemediationAction};
use super::tools::TOOL_TIMEOUT;
use crate::api::ApprovalDecision;

/// The action tools' names.
pub const ACTION_TOOLS: &[&str] = &["approve_remediation", "reject_remediation", "cancel_remediation"];

fn checked(p: &RemediationAction) -> Result<(), String> {
    bounds::name("namespace", &p.namespace)?;
    bounds::name("name", &p.name)?;
    if p.reason.as_ref().is_some_and(|r| r.len() > 1024) {
        return Err("reason is over 1024 characters".into());
    }
    Ok(())
}

#[tool_router(router = action_router, vis = "pub(super)")]
impl ReflexMcp {
    #[tool(
        description = "Approve a Remediation's current proposal, as yourself (your RBAC and the approval admission policy apply).",
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = false)
    )]
    async fn approve_remediation(
        &self,
        Parameters(p): Parameters<RemediationAction>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ActionOutput>, String> {
        self.decide(&ctx, "approve_remediation", p, ApprovalDecision::Approve).await
    }

    #[tool(
        description = "Reject a Remediation's change, as yourself: it is cancelled before deploy.",
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = false)
    )]
    async fn reject_remediation(
        &self,
        Parameters(p): Parameters<RemediationAction>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ActionOutput>, String> {
        self.decide(&ctx, "reject_remediation", p, ApprovalDecision::Reject).await
    }

    #[tool(
        description = "Cancel a Remediation, as yourself: nothing further is deployed.",
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = true)
    )]
    async fn cancel_remediation(
        &self,
        Parameters(p): Parameters<RemediationAction>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ActionOutput>, String> {
        checked(&p)?;
        self.run(&ctx, "cancel_remediation", args(&p), TOOL_TIMEOUT, |caller| async move {
            crate::oncall::cancel(&caller.client, &p.namespace, &p.name).await.map_err(|e| e.to_string())?;
            Ok(ActionOutput {
                approval: None,
                message: format!("{}/{} is cancelled: nothing further is deployed", p.namespace, p.name),
            })
        })
        .await
    }
}

impl ReflexMcp {
    /// Approves or rejects as the caller (an approval pinned to the digest they reviewed).
    async fn decide(
        &self,
        ctx: &RequestContext<RoleServer>,
        tool: &'static str,
        p: RemediationAction,
        decision: ApprovalDecision,
    ) -> Result<Json<ActionOutput>, String> {
        checked(&p)?;
        self.run(ctx, tool, args(&p), TOOL_TIMEOUT, |caller| async move {
            let reviewed = p.proposal_digest.as_deref().filter(|_| decision == ApprovalDecision::Approve);
            let a = crate::oncall::decide(&caller.client, &p.namespace, &p.name, decision, p.reason.clone(), reviewed)
                .await
                .map_err(|e| e.to_string())?;
            let message = match decision {
                ApprovalDecision::Approve => format!(
                    "{} approves proposal {} of {}/{}",
                    a.spec.approver,
                    a.spec.proposal_digest.unwrap_or_default(),
                    p.namespace,
                    p.name
                ),
                ApprovalDecision::Reject => format!("{} rejects {}/{}", a.spec.approver, p.namespace, p.name),
            };
            Ok(ActionOutput { approval: a.metadata.name.clone(), message })
        })
        .await
    }
}
