//! Reflex's agent card: its skills, its one interface (JSON-RPC, A2A 1.0) and how to
//! authenticate (a Kubernetes bearer token). Pure.

use std::collections::HashMap;

use a2a::{
    AgentCapabilities, AgentCard, AgentInterface, AgentProvider, AgentSkill, HttpAuthSecurityScheme, SecurityScheme,
};

use super::task::{DIAGNOSE, REMEDIATE, STATUS};

/// The security scheme's name on the card.
pub const SCHEME: &str = "kubernetes";

fn skill(id: &str, name: &str, description: &str, tags: &[&str], example: &str) -> AgentSkill {
    AgentSkill {
        id: id.to_owned(),
        name: name.to_owned(),
        description: description.to_owned(),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        examples: Some(vec![example.to_owned()]),
        input_modes: Some(vec!["application/json".to_owned(), "text/plain".to_owned()]),
        output_modes: Some(vec!["application/json".to_owned(), "text/plain".to_owned()]),
        security_requirements: None,
    }
}

/// The card served at `/.well-known/agent-card.json`; `url` is where the JSON-RPC endpoint is
/// reached from outside (the Service's address and `/a2a`).
pub fn card(url: &str) -> AgentCard {
    AgentCard {
        name: "Reflex".to_owned(),
        description: "Closes the loop on well-understood operational events in Kubernetes: diagnoses a workload, \
            remediates it under a RemediationPolicy (propose, test, gate, deploy, verify, roll back), and reports \
            on Remediations. Every action runs as the caller: RBAC decides."
            .to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        supported_interfaces: vec![AgentInterface::new(url, a2a::TRANSPORT_PROTOCOL_JSONRPC)],
        capabilities: AgentCapabilities {
            streaming: Some(true),
            push_notifications: Some(false),
            extensions: None,
            extended_agent_card: Some(false),
        },
        default_input_modes: vec!["application/json".to_owned(), "text/plain".to_owned()],
        default_output_modes: vec!["application/json".to_owned(), "text/plain".to_owned()],
        skills: vec![
            skill(
                REMEDIATE,
                "Remediate",
                "Run the remediation loop for a target under a named RemediationPolicy (its trust level, limits, CI \
                 and approvals apply). Input: a data part {\"skill\": \"remediate\", \"namespace\", \"policy\", \
                 \"target\": {\"kind\", \"name\"}, \"alert\"?: {\"name\", \"labels\", \"annotations\"}} and an \
                 incident description as text. The task is the Remediation; it streams phase changes, and its \
                 artifacts are the diagnosis, the proposal, the verdict and the links. The caller must be allowed \
                 to create Remediations in the namespace.",
                &["kubernetes", "remediation", "sre"],
                r#"{"skill": "remediate", "namespace": "shop", "policy": "checkout-oom", "target": {"kind": "Deployment", "name": "checkout"}}"#,
            ),
            skill(
                DIAGNOSE,
                "Diagnose",
                "Read-only investigation of a workload as the caller: replicas, conditions, restarts, \
                 last-terminated reasons, Warning Events. Input: {\"skill\": \"diagnose\", \"namespace\", \
                 \"target\": {\"kind\", \"name\"}}. Returns a message with the findings.",
                &["kubernetes", "diagnosis", "read-only"],
                r#"{"skill": "diagnose", "namespace": "shop", "target": {"kind": "Deployment", "name": "checkout"}}"#,
            ),
            skill(
                STATUS,
                "Status",
                "Report on a Remediation: its phase, why, and what it produced. Input: {\"skill\": \"status\", \
                 \"namespace\", \"remediation\"}. Returns its task.",
                &["kubernetes", "remediation", "status"],
                r#"{"skill": "status", "namespace": "shop", "remediation": "checkout-oom-checkout-1"}"#,
            ),
        ],
        provider: Some(AgentProvider { organization: "Reflex".to_owned(), url: "https://reflex.dev".to_owned() }),
        documentation_url: None,
        icon_url: None,
        security_schemes: Some(HashMap::from([(
            SCHEME.to_owned(),
            SecurityScheme::HttpAuth(HttpAuthSecurityScheme {
                scheme: "bearer".to_owned(),
                description: Some(
                    "A Kubernetes bearer token (a ServiceAccount token, ideally minted with audience `reflex`). \
                     Reflex reviews it (TokenReview) and acts as that identity: what RBAC allows the caller is what \
                     Reflex does for it."
                        .to_owned(),
                ),
                bearer_format: Some("JWT".to_owned()),
            }),
        )])),
        security_requirements: Some(vec![HashMap::from([(SCHEME.to_owned(), Vec::new())])]),
        signatures: None,
    }
}
