//! The four custom resources of the `dvo.caat.io/v1alpha1` API.
//!
//! Doc comments on these types become `kubectl explain` text, so they are written for users.
//! Everything the API server can refuse by itself (enums, ranges, formats, cross-field CEL
//! rules) is declared here; the rest is checked by the admission webhook.

// The kube derive takes one `printcolumn(...)` per column; clippy reads repeated `type_ = ...`
// arguments across them as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

pub mod agent_deployment;
pub mod approval_request;
pub mod capability;
pub mod deployment_policy;
pub mod strict;

pub use agent_deployment::{AgentDeployment, AgentDeploymentSpec, AgentDeploymentStatus};
pub use approval_request::{ApprovalRequest, ApprovalRequestSpec, ApprovalRequestStatus};
pub use capability::{Capability, CapabilitySpec, CapabilityStatus};
pub use deployment_policy::{DeploymentPolicy, DeploymentPolicySpec, DeploymentPolicyStatus};

use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every kind in this crate.
pub const GROUP: &str = "dvo.caat.io";

/// The agent runtime an AgentDeployment targets.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Platform {
    /// A LangChain agent served from a container.
    Langchain,
    /// A FastAPI agent served from a container.
    Fastapi,
    /// A Microsoft Copilot Studio agent: nothing runs in the cluster, a person publishes it.
    CopilotStudio,
}

impl Platform {
    /// The name used in manifests and policy scopes.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Langchain => "langchain",
            Platform::Fastapi => "fastapi",
            Platform::CopilotStudio => "copilot-studio",
        }
    }
}

/// What an AgentDeployment asks for.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DeployAction {
    /// Roll out the spec.
    #[default]
    Deploy,
    /// Return to an earlier spec.
    Rollback,
}

impl DeployAction {
    /// The name used in manifests and policy scopes.
    pub fn as_str(self) -> &'static str {
        match self {
            DeployAction::Deploy => "deploy",
            DeployAction::Rollback => "rollback",
        }
    }
}

/// All CRDs as one multi-document YAML stream, as committed under `crds/`.
pub fn crds_yaml() -> Result<String, String> {
    let crds = [
        AgentDeployment::crd(),
        DeploymentPolicy::crd(),
        ApprovalRequest::crd(),
        Capability::crd(),
    ];
    crds.iter()
        .map(|crd| {
            let mut value = crate::json::to_value(crd);
            unwrap_descriptions(&mut value);
            crate::yaml::to_string(&value)
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|docs| docs.join("---\n"))
}

/// Doc comments keep their source line breaks; `kubectl explain` reads better when a paragraph
/// is one line. Joins lines within paragraphs of every `description`, keeping blank lines.
fn unwrap_descriptions(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match v {
                    serde_json::Value::String(text) if key == "description" => {
                        *text = text
                            .split("\n\n")
                            .map(|paragraph| {
                                paragraph
                                    .split('\n')
                                    .map(str::trim)
                                    .collect::<Vec<_>>()
                                    .join(" ")
                            })
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    other => unwrap_descriptions(other),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}
