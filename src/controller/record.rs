//! Audit drafts for what the controllers decide and do. Recorded before the action (write-ahead);
//! idempotency keys name the fact, so a re-reconcile never records it twice.

use sha2::{Digest, Sha256};

use crate::audit::{Draft, EventType};
use crate::crd::agent_deployment::Phase;
use crate::crd::{AgentDeployment, ApprovalRequest};
use crate::identity::Identity;
use crate::policy::Decision;

fn base(
    event: EventType,
    user: &str,
    operation: &str,
    resource: String,
    kind: &str,
    status: &str,
    key: String,
) -> Draft {
    let mut d = Draft::new(event, user, operation, &resource, kind, status);
    d.event_id = crate::hex(&Sha256::digest(key.as_bytes())[..16]);
    d.timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    d.idempotency_key = key;
    d
}

/// A fact about one spec of an AgentDeployment.
pub fn agent(
    ad: &AgentDeployment,
    digest: &str,
    requester: Option<&Identity>,
    event: EventType,
    operation: &str,
    status: &str,
    key: &str,
) -> Draft {
    let ns = ad.metadata.namespace.as_deref().unwrap_or("");
    let name = ad.metadata.name.as_deref().unwrap_or("");
    let uid = ad.metadata.uid.as_deref().unwrap_or("");
    let user = requester.map_or("(unknown requester)", |r| r.username.as_str());
    let mut d = base(
        event,
        user,
        operation,
        format!("{ns}/{name}"),
        "AgentDeployment",
        status,
        format!("{key}/{uid}/{digest}"),
    );
    d.auth_method = if requester.is_some() {
        "kubernetes"
    } else {
        "none"
    }
    .to_owned();
    d.environment = Some(ad.spec.environment.clone());
    d.platform = Some(ad.spec.platform.as_str().to_owned());
    d.agents = vec![ad.spec.agent.clone()];
    d.metadata = serde_json::json!({"digest": digest, "uid": uid});
    d
}

/// The record of a phase transition of an AgentDeployment, with the decision behind it.
pub fn transition(
    ad: &AgentDeployment,
    digest: &str,
    requester: Option<&Identity>,
    phase: Phase,
    message: &str,
    decision: &Decision,
) -> Draft {
    let (event, status) = match phase {
        Phase::Blocked => (EventType::PolicyViolation, "blocked"),
        Phase::Rejected => (EventType::ApprovalDenied, "failure"),
        Phase::ApprovalExpired => (EventType::ApprovalDenied, "expired"),
        Phase::ManualActionRequired => (EventType::CapabilityBlocked, "blocked"),
        Phase::Degraded => (EventType::CapabilityDegraded, "degraded"),
        Phase::Deployed => (EventType::DeploymentCompleted, "success"),
        Phase::Failed => (EventType::DeploymentFailed, "failure"),
        Phase::Pending | Phase::PendingApproval | Phase::Progressing => {
            (EventType::PolicyEvaluated, "success")
        }
    };
    let mut d = agent(
        ad,
        digest,
        requester,
        event,
        &format!("{phase:?}"),
        status,
        &format!("phase/{phase:?}"),
    );
    d.policies_evaluated = decision.trace.iter().map(|t| t.policy.clone()).collect();
    d.policy_violations = decision
        .violations
        .iter()
        .map(|v| format!("{}: {}", v.source, v.message))
        .collect();
    d.error_message =
        matches!(status, "blocked" | "failure" | "expired").then(|| message.to_owned());
    d.metadata["outcome"] = serde_json::json!(decision.outcome);
    d
}

/// The record of an ApprovalRequest reaching a final phase.
pub fn approval(
    apr: &ApprovalRequest,
    event: EventType,
    status: &str,
    actors: &[String],
    message: &str,
) -> Draft {
    let ns = apr.metadata.namespace.as_deref().unwrap_or("");
    let name = apr.metadata.name.as_deref().unwrap_or("");
    let uid = apr.metadata.uid.as_deref().unwrap_or("");
    let user = actors.first().map_or("system:dvo-operator", String::as_str);
    let mut d = base(
        event,
        user,
        status,
        format!("{ns}/{name}"),
        "ApprovalRequest",
        status,
        format!("approval/{status}/{uid}"),
    );
    d.auth_method = "kubernetes".into();
    d.environment = Some(apr.spec.environment.clone());
    d.platform = Some(apr.spec.platform.as_str().to_owned());
    d.agents = vec![apr.spec.agent.clone()];
    d.error_message = (status != "approved").then(|| message.to_owned());
    d.metadata = serde_json::json!({"digest": apr.spec.spec_digest, "deployment": apr.spec.deployment_ref.name, "actors": actors, "message": message});
    d
}
