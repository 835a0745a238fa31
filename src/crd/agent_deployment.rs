//! `AgentDeployment`: the request to run one agent in one environment.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DeployAction, Platform};
use crate::policy::Decision;

/// Runs one AI agent in one environment, once policy allows it and the required people approved
/// this exact spec. While a changed spec waits, the previously approved one keeps running.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dvo.caat.io",
    version = "v1alpha1",
    kind = "AgentDeployment",
    namespaced,
    shortname = "adep",
    category = "dvo",
    status = "AgentDeploymentStatus",
    derive = "PartialEq",
    doc = "Runs one AI agent in one environment, gated by policy and approval.",
    printcolumn(name = "Agent", type_ = "string", json_path = ".spec.agent"),
    printcolumn(name = "Platform", type_ = "string", json_path = ".spec.platform"),
    printcolumn(
        name = "Environment",
        type_ = "string",
        json_path = ".spec.environment"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Approval",
        type_ = "string",
        json_path = ".status.approvalRequest",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.platform == 'copilot-studio' || has(self.template)")
    .message("spec.template is required for platforms that run in the cluster (langchain, fastapi)")
    .field_path(".template"))]
#[x_kube(validation = Rule::new("self.platform != 'copilot-studio' || !has(self.template)")
    .message("spec.template must be empty for copilot-studio: nothing runs in the cluster")
    .field_path(".template"))]
#[serde(rename_all = "camelCase")]
pub struct AgentDeploymentSpec {
    /// The agent's code, e.g. `GHA`.
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"))]
    pub agent: String,
    /// Where the agent runs: `langchain`, `fastapi` or `copilot-studio`.
    pub platform: Platform,
    /// The target environment: `development`, `staging`, `production` or a name an admin
    /// configured with a tier.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 63))]
    pub environment: String,
    /// `deploy` (default) or `rollback`.
    #[serde(default)]
    pub action: DeployAction,
    /// How the workload is rolled out. Default `RollingUpdate`.
    #[serde(default)]
    pub strategy: Strategy,
    /// Number of agent pods. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// The pod template of the agent workload (not for `copilot-studio`).
    // Boxed: a pod template is nearly 2 KB inline even when empty, and every cached
    // AgentDeployment would carry that space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Box<PodTemplateSpec>>,
    /// Seconds a rollout may take to become available before it counts as failed. Default 600.
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 1, max = 86400))]
    pub progress_deadline_seconds: i32,
    /// Steps around the rollout.
    #[serde(default)]
    pub steps: Steps,
    /// Free key/values that policy conditions can read by key (for example `change_ticket`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "context_schema")]
    pub context: BTreeMap<String, serde_json::Value>,
    /// Why this change is needed, shown to approvers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub justification: Option<String>,
    /// Not part of the resource (never read or written): on the operator's cached copies, whose
    /// pod template is dropped to save memory, what was computed from the whole spec.
    // Skipped both ways, spelled so that the schema derive's copy of this struct reads it.
    #[serde(skip_deserializing, skip_serializing_if = "never_serialized")]
    #[schemars(skip)]
    pub without_template: Option<TemplateDropped>,
}

fn never_serialized<T>(_: &T) -> bool {
    true
}

/// What stands in for the pod template of a cached spec: the digest and images of the whole
/// spec, computed when it was read, and the template as JSON text (a fraction of the memory of
/// the typed template; see [`AgentDeploymentSpec::drop_template`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TemplateDropped {
    /// [`spec_digest`] of the whole spec.
    pub digest: String,
    /// [`images`] of the whole spec.
    pub images: Vec<String>,
    /// The pod template as compact JSON (None: the spec had none, or it is kept typed).
    pub template: Option<Box<str>>,
}

impl AgentDeploymentSpec {
    /// Keeps the pod template as JSON text, with the digest and images of the whole spec: the
    /// cached copy still answers [`spec_digest`] and [`images`], and [`Self::pod_template`]
    /// gives the template back.
    pub fn drop_template(&mut self) {
        if self.without_template.is_some() {
            return;
        }
        let digest = spec_digest(self);
        let images = images(self);
        // Kept typed when its text would not read back (k8s-openapi writes some times it
        // cannot read, such as year 0 with an offset): a rollout must never be held by that.
        let text = self
            .template
            .as_deref()
            .map(|t| crate::json::to_string(t).into_boxed_str())
            .filter(|text| serde_json::from_str::<PodTemplateSpec>(text).is_ok());
        if text.is_some() {
            self.template = None;
        }
        self.without_template = Some(TemplateDropped {
            digest,
            images,
            template: text,
        });
    }

    /// The pod template, from a cached copy's JSON text as from a whole spec. Err: the text does
    /// not read back (it was written by [`Self::drop_template`], so it does).
    pub fn pod_template(&self) -> Result<Option<PodTemplateSpec>, String> {
        match &self.without_template {
            _ if self.template.is_some() => Ok(self.template.as_deref().cloned()),
            None => Ok(None),
            Some(dropped) => dropped
                .template
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| format!("the cached pod template does not read back: {e}")),
        }
    }
}

fn context_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": { "x-kubernetes-preserve-unknown-fields": true },
    })
}

/// How the workload is rolled out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Strategy {
    /// A Deployment rolling update.
    #[default]
    RollingUpdate,
    /// A second workload, switched over at once (needs the `blue-green-deploy` capability).
    BlueGreen,
    /// A share of traffic first (needs the `canary-deploy` capability).
    Canary,
}

/// Steps around the rollout; each needs the capability of the same name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Steps {
    /// Wait for the workload to become available within its progress deadline. Default true.
    #[serde(default = "default_true")]
    pub health_check: bool,
    /// Roll back to the last deployed spec when the health check fails. Default true.
    #[serde(default = "default_true")]
    pub auto_rollback: bool,
    /// A Job that runs integration tests after the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integration_tests: Option<HookStep>,
    /// A Job that synchronises the agent's knowledge base after the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kb_sync: Option<HookStep>,
}

impl Default for Steps {
    fn default() -> Self {
        Steps {
            health_check: true,
            auto_rollback: true,
            integration_tests: None,
            kb_sync: None,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_progress_deadline() -> i32 {
    600
}

/// A container run as a Job after the rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookStep {
    /// The container image.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// The command (entrypoint) to run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments to the command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Seconds the Job may run before it counts as failed. Default 600.
    #[serde(default = "default_hook_deadline")]
    #[schemars(range(min = 1, max = 86400))]
    pub active_deadline_seconds: i64,
}

fn default_hook_deadline() -> i64 {
    600
}

/// The outcome of one hook step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepStatus {
    /// The step's capability name: `integration-tests` or `kb-sync`.
    pub name: String,
    /// The Job that runs it.
    pub job: String,
    /// The spec digest it ran for.
    pub digest: String,
    /// `Running`, `Succeeded` or `Failed`.
    pub state: StepState,
    /// Detail from the Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Where a hook step stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StepState {
    /// The Job runs.
    Running,
    /// The Job completed.
    Succeeded,
    /// The Job failed.
    Failed,
}

/// Where an AgentDeployment stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// Not evaluated yet.
    Pending,
    /// Waiting for the approvals in `status.approvalRequest`.
    PendingApproval,
    /// Refused by policy, a window, a blackout or a capability; see `status.decision.violations`.
    Blocked,
    /// An approver rejected this spec.
    Rejected,
    /// The approval request expired.
    ApprovalExpired,
    /// A person must act; see `status.decision.manualInstructions`.
    ManualActionRequired,
    /// Rolling out.
    Progressing,
    /// Rolled out and healthy.
    Deployed,
    /// Rolled out without some steps; see `status.decision.degradedSteps`.
    Degraded,
    /// The rollout or a required step failed.
    Failed,
}

/// Observed state of an AgentDeployment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentDeploymentStatus {
    /// Where the deployment stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `sha256:` digest of the spec that was evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_digest: Option<String>,
    /// The policy decision for that spec, with its trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// The ApprovalRequest for that spec, when approval is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_request: Option<String>,
    /// Digest of the spec the workload runs now (applied to the Deployment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_digest: Option<String>,
    /// Digest of the last spec whose rollout passed its health check: where auto-rollback returns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_digest: Option<String>,
    /// SHA-256 of the pod template the Deployment ran (as the API server stored it) when
    /// `healthyDigest` passed its health check: auto-rollback restores only a template that
    /// hashes to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_template: Option<String>,
    /// Digest of a spec whose rollout failed; it is not applied again until the spec changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_digest: Option<String>,
    /// Hook steps (integration tests, KB sync) run for the deployed spec, with their outcome.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepStatus>,
    /// A one-line summary of the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `PolicyEvaluated`, `Approved`, `CapabilitiesAvailable`, `Ready`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// A rollout the audit log holds as about to happen whose outcome it does not hold yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_intent: Option<RolloutIntent>,
}

/// One change about to be written to the workload (recorded ahead of the write).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutIntent {
    /// The spec generation.
    pub generation: i64,
    /// The spec digest.
    pub digest: String,
}

/// What became of a rollout intent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutOutcome {
    /// The workload runs the intended spec.
    Applied,
    /// The spec moved on before the intended one reached the workload.
    Superseded,
}

impl RolloutOutcome {
    /// The audit status word.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutOutcome::Applied => "applied",
            RolloutOutcome::Superseded => "superseded",
        }
    }
}

impl RolloutIntent {
    /// What became of this intent, given the digest the workload runs and the change
    /// (generation, digest) the operator wants now; None: still to be written.
    pub fn outcome(
        &self,
        running: Option<&str>,
        generation: i64,
        digest: &str,
    ) -> Option<RolloutOutcome> {
        if running == Some(self.digest.as_str()) {
            Some(RolloutOutcome::Applied)
        } else if self.generation != generation || self.digest != digest {
            Some(RolloutOutcome::Superseded)
        } else {
            None
        }
    }
}

/// The `sha256:` digest of a spec: SHA-256 over its JSON with object keys sorted. Only `spec`
/// counts, so labels and annotations added by GitOps tools never change it.
pub fn spec_digest(spec: &AgentDeploymentSpec) -> String {
    use sha2::{Digest, Sha256};
    if let Some(dropped) = &spec.without_template {
        return dropped.digest.clone();
    }
    // serde_json::Value keeps object keys sorted (BTreeMap), which makes the text canonical.
    let canonical = crate::json::to_value(spec).to_string();
    format!(
        "sha256:{}",
        crate::hex(&Sha256::digest(canonical.as_bytes()))
    )
}

/// The container images of a spec's pod template, sorted.
pub fn images(spec: &AgentDeploymentSpec) -> Vec<String> {
    if let Some(dropped) = &spec.without_template {
        return dropped.images.clone();
    }
    let mut out: Vec<String> = spec
        .template
        .iter()
        .filter_map(|t| t.spec.as_ref())
        .flat_map(|p| {
            p.containers
                .iter()
                .chain(p.init_containers.iter().flatten())
        })
        .filter_map(|c| c.image.clone())
        .collect();
    out.sort();
    out
}
