//! `ApprovalRequest`: the approvals one AgentDeployment spec needs, and who gave them.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DeployAction, Platform};
use crate::identity::Role;

/// The approvals one AgentDeployment spec (by digest) needs. Created by the operator; people
/// act on it with `kubectl annotate apr NAME dvo.caat.io/approve="comment"` (or `reject`,
/// `cancel`). The spec never changes after creation.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dvo.caat.io",
    version = "v1alpha1",
    kind = "ApprovalRequest",
    namespaced,
    shortname = "apr",
    category = "dvo",
    status = "ApprovalRequestStatus",
    derive = "PartialEq",
    doc = "The approvals one AgentDeployment spec needs, and who gave them.",
    printcolumn(
        name = "Deployment",
        type_ = "string",
        json_path = ".spec.deploymentRef.name"
    ),
    printcolumn(
        name = "Environment",
        type_ = "string",
        json_path = ".spec.environment"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Expires", type_ = "string", json_path = ".spec.expiresAt"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("spec is immutable: a changed deployment gets a new ApprovalRequest"))]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRequestSpec {
    /// The AgentDeployment this request is for.
    pub deployment_ref: DeploymentRef,
    /// `sha256:` digest of the AgentDeployment spec being approved; approvals count for it only.
    #[schemars(regex(pattern = r"^sha256:[0-9a-f]{64}$"))]
    pub spec_digest: String,
    /// Who asked for the deployment, as the API server authenticated them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<Requester>,
    /// Target environment.
    pub environment: String,
    /// Agent code.
    pub agent: String,
    /// Agent platform.
    pub platform: Platform,
    /// `deploy` or `rollback`.
    #[serde(default)]
    pub action: DeployAction,
    /// The requester's reason, shown to approvers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub justification: Option<String>,
    /// Every requirement must reach its quorum of distinct eligible approvers.
    #[schemars(length(min = 1, max = 32))]
    pub requirements: Vec<RequirementSpec>,
    /// When the request expires unapproved.
    pub expires_at: DateTime<Utc>,
}

/// Reference to the AgentDeployment of a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRef {
    /// Name, in the request's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// UID, so a re-created AgentDeployment of the same name does not inherit approvals.
    #[schemars(length(min = 1, max = 64))]
    pub uid: String,
    /// `metadata.generation` of the AgentDeployment spec this request is for: an approval is
    /// for one change, so going back to an earlier spec (a later generation) asks again. 0
    /// (a request made before this field existed) counts for no spec.
    #[serde(default)]
    pub generation: i64,
}

/// The authenticated requester.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Requester {
    /// User name.
    pub username: String,
    /// UID, when the authenticator gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// One approval requirement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequirementSpec {
    /// What asked for it, e.g. `policy/mc-prod-approval`.
    pub source: String,
    /// Roles whose holders may approve.
    #[schemars(length(min = 1, max = 6))]
    pub roles: Vec<Role>,
    /// Distinct people needed.
    #[schemars(range(min = 1, max = 10))]
    pub min_approvals: i32,
    /// Whether the requester may count.
    #[serde(default)]
    pub allow_self_approval: bool,
    /// Whether only approvals that proved multi-factor authentication (an Entra ID token with
    /// `mfa` in `amr`, given as `dvo.caat.io/approve-token`) count.
    #[serde(default)]
    pub require_mfa: bool,
}

/// Where an ApprovalRequest stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ApprovalPhase {
    /// Waiting for approvals.
    Pending,
    /// Every requirement has its quorum.
    Approved,
    /// An eligible approver rejected it.
    Rejected,
    /// `expiresAt` passed first.
    Expired,
    /// The requester or an admin withdrew it.
    Cancelled,
    /// The AgentDeployment's spec changed; a new request replaces this one.
    Superseded,
}

impl ApprovalRequest {
    /// Its phase as its status reports it; `Pending` until the operator has written one.
    pub fn phase(&self) -> ApprovalPhase {
        self.status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or(ApprovalPhase::Pending)
    }
}

/// Observed state of an ApprovalRequest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRequestStatus {
    /// Where the request stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ApprovalPhase>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Verified approvals, in the order they were given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<ApprovalRecord>,
    /// The rejection, when rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejection: Option<ApprovalRecord>,
    /// The cancellation, when the requester or an admin withdrew the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancellation: Option<ApprovalRecord>,
    /// Progress of each requirement: who counted for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub progress: Vec<RequirementProgress>,
    /// Conditions in the `metav1.Condition` shape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// How far one requirement is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequirementProgress {
    /// The requirement's source.
    pub source: String,
    /// Distinct eligible people who approved, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    /// How many are needed.
    pub needed: i32,
    /// Whether the quorum is reached.
    pub met: bool,
}

/// One verified act on a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRecord {
    /// Who, as the API server authenticated them.
    pub username: String,
    /// Their groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Their roles when they acted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Role>,
    /// Sources of the requirements this act counted for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub satisfies: Vec<String>,
    /// When.
    pub at: DateTime<Utc>,
    /// Their comment or reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Whether they proved multi-factor authentication (a verified Entra ID token).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mfa: bool,
    /// Why this act counts for nothing, if it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
}
