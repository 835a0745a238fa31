//! Audit drafts for what the controllers decide and do. Recorded before the action (write-ahead);
//! idempotency keys name the fact, so a re-reconcile never records it twice.

use sha2::{Digest, Sha256};

use crate::approval::signed::{ActKind, SignedAct};
use crate::audit::{Draft, EventType};
use crate::crd::agent_deployment::{Phase, RolloutIntent};
use crate::crd::approval_request::RequirementSpec;
use crate::crd::deployment_policy::PolicyAction;
use crate::crd::{AgentDeployment, ApprovalRequest};
use crate::identity::Identity;
use crate::policy::Decision;

pub use crate::audit::OPERATOR;

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
    d.event_id = crate::hex_prefix(&Sha256::digest(key.as_bytes()), 16);
    d.timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    d.idempotency_key = key;
    d
}

/// A fact about the current spec of an AgentDeployment (`digest` is its digest).
pub fn agent(
    ad: &AgentDeployment,
    digest: &str,
    requester: Option<&Identity>,
    event: EventType,
    operation: &str,
    status: &str,
    key: &str,
) -> Draft {
    let change = RolloutIntent {
        generation: ad.metadata.generation.unwrap_or(0),
        digest: digest.to_owned(),
    };
    agent_change(ad, &change, requester, event, operation, status, key)
}

/// What became of a rollout recorded ahead of its write: `applied`, `superseded` (the spec
/// moved on before it was written), `withheld` (the decision no longer let it out), or a
/// `write_failed` attempt (an outcome follows). The operator observed it, so it is the actor.
pub fn rollout_outcome(
    ad: &AgentDeployment,
    intent: &RolloutIntent,
    outcome: &str,
    message: &str,
) -> Draft {
    let mut d = agent_change(
        ad,
        intent,
        None,
        EventType::DeploymentStarted,
        "rollout outcome",
        outcome,
        &format!("rollout-{outcome}"),
    );
    d.user_id = OPERATOR.to_owned();
    d.error_message = (outcome != "applied").then(|| message.to_owned());
    crate::json::set(&mut d.metadata, "outcome", outcome);
    crate::json::set(&mut d.metadata, "message", message);
    d
}

/// A fact about one change (generation and digest) of an AgentDeployment.
fn agent_change(
    ad: &AgentDeployment,
    change: &RolloutIntent,
    requester: Option<&Identity>,
    event: EventType,
    operation: &str,
    status: &str,
    key: &str,
) -> Draft {
    let ns = ad.metadata.namespace.as_deref().unwrap_or("");
    let name = ad.metadata.name.as_deref().unwrap_or("");
    let uid = ad.metadata.uid.as_deref().unwrap_or("");
    let (generation, digest) = (change.generation, change.digest.as_str());
    let user = requester.map_or("(unknown requester)", |r| r.username.as_str());
    // The generation is part of the fact: going back to an earlier spec is a new change, and
    // its rollout a new entry.
    let mut d = base(
        event,
        user,
        operation,
        format!("{ns}/{name}"),
        "AgentDeployment",
        status,
        format!("{key}/{uid}/g{generation}/{digest}"),
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
    d.metadata = serde_json::json!({"digest": digest, "uid": uid, "generation": generation});
    d
}

/// The record of a phase transition of an AgentDeployment, with the decision behind it and
/// the names of the policies in scope.
pub fn transition(
    ad: &AgentDeployment,
    digest: &str,
    requester: Option<&Identity>,
    phase: Phase,
    message: &str,
    decision: &Decision,
    policies_evaluated: Vec<String>,
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
    d.policies_evaluated = policies_evaluated;
    d.policy_violations = decision
        .violations
        .iter()
        .map(|v| format!("{}: {}", v.source, v.message))
        .collect();
    d.error_message =
        matches!(status, "blocked" | "failure" | "expired").then(|| message.to_owned());
    crate::json::set(
        &mut d.metadata,
        "outcome",
        serde_json::json!(decision.outcome),
    );
    notify(&mut d, decision);
    d
}

/// Adds the recipients the matching policies name (`notify`), when there are any.
pub fn notify(d: &mut Draft, decision: &Decision) {
    if !decision.notify.is_empty() {
        crate::json::set(
            &mut d.metadata,
            "notify",
            serde_json::json!(decision.notify),
        );
    }
}

/// The record of an approval asked for: the request, what it needs, until when, and why (the
/// matching policies that ask for it), so that those who may approve can be told.
pub fn approval_requested(
    ad: &AgentDeployment,
    digest: &str,
    requester: Option<&Identity>,
    request: &str,
    requirements: &[RequirementSpec],
    expires_at: chrono::DateTime<chrono::Utc>,
    decision: &Decision,
) -> Draft {
    // A request replaced because its requirements changed is a new fact (and a new notice).
    let asked = crate::json::to_string(&requirements);
    let key = format!(
        "approval-requested/{}",
        crate::hex_prefix(&Sha256::digest(asked.as_bytes()), 8)
    );
    let mut d = agent(
        ad,
        digest,
        requester,
        EventType::ApprovalRequested,
        "request approval",
        "pending",
        &key,
    );
    let reasons: Vec<String> = decision
        .matched_policies
        .iter()
        .filter(|p| p.action == PolicyAction::RequireApproval)
        .take(10)
        .map(|p| format!("policy {}: {}", p.name, p.reason))
        .collect();
    crate::json::set(&mut d.metadata, "request", request);
    crate::json::set(
        &mut d.metadata,
        "requirements",
        serde_json::json!(requirements),
    );
    crate::json::set(
        &mut d.metadata,
        "expiresAt",
        expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    crate::json::set(&mut d.metadata, "reasons", reasons);
    if let Some(j) = ad.spec.justification.as_ref().filter(|j| !j.is_empty()) {
        crate::json::set(&mut d.metadata, "justification", j.clone());
    }
    d
}

/// Who acted and how, as an act names them in audit metadata.
fn act_summary(act: &SignedAct) -> serde_json::Value {
    serde_json::json!({
        "username": act.subject.username,
        "uid": act.uid,
        "roles": act.subject.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        "at": act.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "mfa": act.mfa,
        "entra": act.entra,
    })
}

/// The acts a decision rests on, for audit metadata.
pub fn acts_summary(acts: &[&SignedAct]) -> serde_json::Value {
    acts.iter().map(|a| act_summary(a)).collect()
}

fn approval_base(
    apr: &ApprovalRequest,
    event: EventType,
    user: &str,
    status: &str,
    key: String,
) -> Draft {
    let ns = apr.metadata.namespace.as_deref().unwrap_or("");
    let name = apr.metadata.name.as_deref().unwrap_or("");
    let mut d = base(
        event,
        user,
        status,
        format!("{ns}/{name}"),
        "ApprovalRequest",
        status,
        key,
    );
    d.auth_method = "kubernetes".into();
    d.environment = Some(apr.spec.environment.clone());
    d.platform = Some(apr.spec.platform.as_str().to_owned());
    d.agents = vec![apr.spec.agent.clone()];
    d
}

/// The record of one act (approve, reject, cancel) the operator observed stored on a request,
/// with what it counted for (or why it counted for nothing). The actor is the person the API
/// server authenticated for the write that stored it: the webhook signed the act with that
/// identity, and only a signature that verifies for this request is recorded.
pub fn act(apr: &ApprovalRequest, act: &SignedAct, counted: Result<Vec<String>, String>) -> Draft {
    let uid = apr.metadata.uid.as_deref().unwrap_or("");
    let (event, status) = match act.kind {
        ActKind::Approve => (EventType::ApprovalGranted, "approval_recorded"),
        ActKind::Reject => (EventType::ApprovalDenied, "rejection_recorded"),
        ActKind::Cancel => (EventType::ApprovalDenied, "cancellation_recorded"),
    };
    let mut d = approval_base(
        apr,
        event,
        &act.subject.username,
        status,
        format!("act/{uid}/{}", act.signature),
    );
    d.user_roles = act
        .subject
        .roles
        .iter()
        .map(|r| r.as_str().to_owned())
        .collect();
    d.timestamp = act.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (satisfies, ignored) = match counted {
        Ok(s) => (s, None),
        Err(why) => (vec![], Some(why)),
    };
    d.metadata = serde_json::json!({
        "specDigest": apr.spec.spec_digest, "deployment": apr.spec.deployment_ref.name,
        "generation": apr.spec.deployment_ref.generation,
        "groups": act.subject.groups, "uid": act.uid, "comment": act.comment,
        "mfa": act.mfa, "entra": act.entra, "via": act.via, "satisfies": satisfies,
        "ignored": ignored,
    });
    d
}

/// The record of an ApprovalRequest reaching a final phase. The operator decided it, so the
/// operator is the actor; an approval names the whole quorum whose acts it rests on, a rejection
/// or cancellation the person who gave it (`actors`).
pub fn approval(
    apr: &ApprovalRequest,
    event: EventType,
    status: &str,
    actors: &[String],
    quorum: &[&SignedAct],
    message: &str,
) -> Draft {
    let uid = apr.metadata.uid.as_deref().unwrap_or("");
    let mut d = approval_base(
        apr,
        event,
        OPERATOR,
        status,
        format!("approval/{status}/{uid}"),
    );
    d.error_message = (status != "approved").then(|| message.to_owned());
    d.metadata = serde_json::json!({
        "digest": apr.spec.spec_digest, "deployment": apr.spec.deployment_ref.name,
        "generation": apr.spec.deployment_ref.generation,
        "actors": actors, "approvers": acts_summary(quorum), "message": message,
    });
    if let Some(r) = &apr.spec.requester {
        crate::json::set(&mut d.metadata, "requester", r.username.clone());
    }
    d
}
