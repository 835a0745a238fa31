//! One audit entry.

use serde::{Deserialize, Serialize};

/// What happened. The seed's event types, plus break-glass and retention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum EventType {
    AuthSuccess,
    AuthFailure,
    AuthMfaRequired,
    PermissionGranted,
    PermissionDenied,
    ApprovalRequested,
    ApprovalGranted,
    ApprovalDenied,
    ValidationStarted,
    ValidationCompleted,
    DeploymentStarted,
    DeploymentCompleted,
    DeploymentFailed,
    RollbackStarted,
    RollbackCompleted,
    PolicyEvaluated,
    PolicyViolation,
    CapabilityChecked,
    CapabilityDegraded,
    CapabilityBlocked,
    /// A break-glass annotation let one spec through windows and approvals.
    BreakGlassUsed,
    /// Retention deleted whole old segments; `metadata` says which and up to which `seq`.
    RetentionApplied,
    /// A checkpoint was signed; `metadata` is the checkpoint (seq, head hash, time, key id,
    /// signature), so every sink receives it and a copy outside the cluster can vouch for the log.
    CheckpointSigned,
}

impl EventType {
    /// Every event type.
    pub const ALL: [EventType; 23] = [
        EventType::AuthSuccess,
        EventType::AuthFailure,
        EventType::AuthMfaRequired,
        EventType::PermissionGranted,
        EventType::PermissionDenied,
        EventType::ApprovalRequested,
        EventType::ApprovalGranted,
        EventType::ApprovalDenied,
        EventType::ValidationStarted,
        EventType::ValidationCompleted,
        EventType::DeploymentStarted,
        EventType::DeploymentCompleted,
        EventType::DeploymentFailed,
        EventType::RollbackStarted,
        EventType::RollbackCompleted,
        EventType::PolicyEvaluated,
        EventType::PolicyViolation,
        EventType::CapabilityChecked,
        EventType::CapabilityDegraded,
        EventType::CapabilityBlocked,
        EventType::BreakGlassUsed,
        EventType::RetentionApplied,
        EventType::CheckpointSigned,
    ];

    /// The event type named `name` (as entries carry it), if any.
    pub fn named(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|e| e.as_str() == name)
    }

    /// Its name as entries carry it (`approval_granted`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::AuthSuccess => "auth_success",
            EventType::AuthFailure => "auth_failure",
            EventType::AuthMfaRequired => "auth_mfa_required",
            EventType::PermissionGranted => "permission_granted",
            EventType::PermissionDenied => "permission_denied",
            EventType::ApprovalRequested => "approval_requested",
            EventType::ApprovalGranted => "approval_granted",
            EventType::ApprovalDenied => "approval_denied",
            EventType::ValidationStarted => "validation_started",
            EventType::ValidationCompleted => "validation_completed",
            EventType::DeploymentStarted => "deployment_started",
            EventType::DeploymentCompleted => "deployment_completed",
            EventType::DeploymentFailed => "deployment_failed",
            EventType::RollbackStarted => "rollback_started",
            EventType::RollbackCompleted => "rollback_completed",
            EventType::PolicyEvaluated => "policy_evaluated",
            EventType::PolicyViolation => "policy_violation",
            EventType::CapabilityChecked => "capability_checked",
            EventType::CapabilityDegraded => "capability_degraded",
            EventType::CapabilityBlocked => "capability_blocked",
            EventType::BreakGlassUsed => "break_glass_used",
            EventType::RetentionApplied => "retention_applied",
            EventType::CheckpointSigned => "checkpoint_signed",
        }
    }
}

/// What a writer supplies; the chain fills in `seq`, `previous_hash` and `entry_hash`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Draft {
    /// Unique id of the event.
    pub event_id: String,
    /// RFC 3339 time of the event.
    pub timestamp: String,
    /// What happened.
    pub event_type: EventType,
    /// Who (user name, or `system:…` for the operator itself).
    pub user_id: String,
    /// Their e-mail, when known.
    pub user_email: Option<String>,
    /// Their roles when they acted.
    pub user_roles: Vec<String>,
    /// How they were authenticated (`kubernetes`, `entra-id`, `operator`).
    pub auth_method: String,
    /// What was done.
    pub operation: String,
    /// On what (`namespace/name`).
    pub resource: String,
    /// The kind of resource.
    pub resource_type: String,
    /// Environment.
    pub environment: Option<String>,
    /// Platform.
    pub platform: Option<String>,
    /// Agents involved.
    pub agents: Vec<String>,
    /// `success`, `failure`, `blocked`, `degraded`, `pending`.
    pub status: String,
    /// Why it failed, if it did.
    pub error_message: Option<String>,
    /// Request id (admission UID).
    pub request_id: Option<String>,
    /// Session id.
    pub session_id: Option<String>,
    /// Client address.
    pub ip_address: Option<String>,
    /// Client user agent.
    pub user_agent: Option<String>,
    /// Policies in scope.
    pub policies_evaluated: Vec<String>,
    /// Violations.
    pub policy_violations: Vec<String>,
    /// Anything else (digest, decision outcome, approvers...).
    pub metadata: serde_json::Value,
    /// Identifies the fact recorded, so a re-reconcile never records it twice.
    pub idempotency_key: String,
}

/// A chained entry: every field of the draft plus its place in the chain. Reading one is strict:
/// the JSON must be exactly what the entry serializes to (no unknown, missing or respelled
/// fields), so that no change to a stored entry, even one that means nothing, goes unnoticed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct Entry {
    /// Position in the chain, from 1, without gaps.
    pub seq: u64,
    /// The recorded facts.
    #[serde(flatten)]
    pub draft: Draft,
    /// `entry_hash` of the previous entry (64 zeros for the first).
    pub previous_hash: String,
    /// SHA-256 (hex) of the RFC 8785 canonical JSON of every other field.
    pub entry_hash: String,
}

impl Draft {
    /// A draft with the required facts; the optional ones empty.
    pub fn new(
        event_type: EventType,
        user_id: &str,
        operation: &str,
        resource: &str,
        resource_type: &str,
        status: &str,
    ) -> Draft {
        Draft {
            event_id: String::new(),
            timestamp: String::new(),
            event_type,
            user_id: user_id.to_owned(),
            user_email: None,
            user_roles: vec![],
            auth_method: String::new(),
            operation: operation.to_owned(),
            resource: resource.to_owned(),
            resource_type: resource_type.to_owned(),
            environment: None,
            platform: None,
            agents: vec![],
            status: status.to_owned(),
            error_message: None,
            request_id: None,
            session_id: None,
            ip_address: None,
            user_agent: None,
            policies_evaluated: vec![],
            policy_violations: vec![],
            metadata: serde_json::Value::Null,
            idempotency_key: String::new(),
        }
    }
}

/// The fields of an entry, as read before the strictness check.
#[derive(Deserialize)]
struct Fields {
    seq: u64,
    #[serde(flatten)]
    draft: Draft,
    previous_hash: String,
    entry_hash: String,
}

impl TryFrom<serde_json::Value> for Entry {
    type Error = String;
    fn try_from(value: serde_json::Value) -> Result<Entry, String> {
        let f: Fields = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
        let entry = Entry {
            seq: f.seq,
            draft: f.draft,
            previous_hash: f.previous_hash,
            entry_hash: f.entry_hash,
        };
        if serde_json::to_value(&entry).map_err(|e| e.to_string())? != value {
            return Err(format!(
                "entry {} is not in its stored form: a field is unknown, missing or spelled differently",
                entry.seq
            ));
        }
        Ok(entry)
    }
}
