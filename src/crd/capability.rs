//! `Capability`: a cluster-wide switch for one thing the operator can do.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::identity::Permission;

/// A switch for one capability. The object's name is the capability's name (for example
/// `deploy-to-production`); a capability without an object has the built-in default.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dvo.caat.io",
    version = "v1alpha1",
    kind = "Capability",
    plural = "capabilities",
    shortname = "cap",
    category = "dvo",
    status = "CapabilityStatus",
    derive = "PartialEq",
    doc = "A switch for one capability of the operator, named after it.",
    validation = Rule::new(
        "self.metadata.name in ['deploy-langchain', 'deploy-fastapi', 'deploy-copilot', 'deploy-to-production', 'deploy-to-staging', 'deploy-to-development', 'auto-rollback', 'kb-sync', 'health-check', 'integration-tests', 'parallel-deploy', 'blue-green-deploy', 'canary-deploy']"
    ).message("metadata.name must be a capability: deploy-langchain, deploy-fastapi, deploy-copilot, deploy-to-production, deploy-to-staging, deploy-to-development, auto-rollback, kb-sync, health-check, integration-tests, parallel-deploy, blue-green-deploy, canary-deploy"),
    printcolumn(name = "Enabled", type_ = "boolean", json_path = ".spec.enabled"),
    printcolumn(name = "Fallback", type_ = "string", json_path = ".spec.fallback"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct CapabilitySpec {
    /// Whether the capability is available.
    pub enabled: bool,
    /// What happens when a deployment needs the capability while it is disabled: `Error`
    /// blocks, `Skip` skips the step, `Degrade` runs without it and marks the deployment
    /// `Degraded`, `Manual` stops with `message` as instructions for a person.
    pub fallback: Fallback,
    /// Shown to users when the fallback applies (instructions, for `Manual`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
    /// Permissions the requester must hold to use the capability.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 13))]
    #[x_kube(validation = Rule::new("self.all(x, self.exists_one(y, x == y))").message("requiredPermissions must not repeat a permission"))]
    pub required_permissions: Vec<Permission>,
    /// Whether using the capability needs an approval (by holders of its required permissions).
    #[serde(default)]
    pub requires_approval: bool,
}

/// What happens when a needed capability is disabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Fallback {
    /// Block the deployment with the message.
    Error,
    /// Skip the step and record it.
    Skip,
    /// Run without it and mark the deployment `Degraded`.
    Degrade,
    /// Stop in `ManualActionRequired` with the message as instructions.
    Manual,
}

/// Observed state of a Capability.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CapabilityStatus {
    /// The generation last observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions in the `metav1.Condition` shape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
