//! Capabilities: which switches an AgentDeployment needs, their built-in defaults (the seed
//! table), and what a disabled capability's fallback does to a deployment. Pure code.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::crd::Platform;
use crate::crd::agent_deployment::{AgentDeploymentSpec, Strategy};
use crate::crd::capability::{CapabilitySpec, Fallback};
use crate::identity::{Permission, Tier};

/// Every capability the operator knows, named as the Capability objects are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[allow(missing_docs)]
pub enum CapabilityName {
    DeployLangchain,
    DeployFastapi,
    DeployCopilot,
    DeployToProduction,
    DeployToStaging,
    DeployToDevelopment,
    AutoRollback,
    KbSync,
    HealthCheck,
    IntegrationTests,
    ParallelDeploy,
    BlueGreenDeploy,
    CanaryDeploy,
}

impl CapabilityName {
    /// Every capability.
    pub const ALL: [CapabilityName; 13] = [
        CapabilityName::DeployLangchain,
        CapabilityName::DeployFastapi,
        CapabilityName::DeployCopilot,
        CapabilityName::DeployToProduction,
        CapabilityName::DeployToStaging,
        CapabilityName::DeployToDevelopment,
        CapabilityName::AutoRollback,
        CapabilityName::KbSync,
        CapabilityName::HealthCheck,
        CapabilityName::IntegrationTests,
        CapabilityName::ParallelDeploy,
        CapabilityName::BlueGreenDeploy,
        CapabilityName::CanaryDeploy,
    ];

    /// The object name, e.g. `deploy-to-production`.
    pub fn as_str(self) -> &'static str {
        match self {
            CapabilityName::DeployLangchain => "deploy-langchain",
            CapabilityName::DeployFastapi => "deploy-fastapi",
            CapabilityName::DeployCopilot => "deploy-copilot",
            CapabilityName::DeployToProduction => "deploy-to-production",
            CapabilityName::DeployToStaging => "deploy-to-staging",
            CapabilityName::DeployToDevelopment => "deploy-to-development",
            CapabilityName::AutoRollback => "auto-rollback",
            CapabilityName::KbSync => "kb-sync",
            CapabilityName::HealthCheck => "health-check",
            CapabilityName::IntegrationTests => "integration-tests",
            CapabilityName::ParallelDeploy => "parallel-deploy",
            CapabilityName::BlueGreenDeploy => "blue-green-deploy",
            CapabilityName::CanaryDeploy => "canary-deploy",
        }
    }

    /// The built-in setting used when no Capability object of this name exists. The seed's
    /// table gives seven; the others are ours: the staging and development switches and the
    /// health check are on (the seed would refuse every non-production rollout otherwise), the
    /// advanced rollout strategies are off until an admin creates their object.
    pub fn default_spec(self) -> CapabilitySpec {
        use CapabilityName::*;
        let (enabled, fallback, message, perms, approval): (
            bool,
            Fallback,
            &str,
            &[Permission],
            bool,
        ) = match self {
            DeployLangchain => (
                true,
                Fallback::Error,
                "LangChain deployment is not available in this environment",
                &[],
                false,
            ),
            DeployFastapi => (
                true,
                Fallback::Error,
                "FastAPI deployment is not available in this environment",
                &[],
                false,
            ),
            DeployCopilot => (
                true,
                Fallback::Manual,
                "Copilot Studio deployment requires manual action. Please contact your administrator.",
                &[],
                false,
            ),
            DeployToProduction => (
                true,
                Fallback::Error,
                "Production deployment is disabled in this environment",
                &[Permission::DeployProduction],
                true,
            ),
            DeployToStaging => (
                true,
                Fallback::Error,
                "Staging deployment is disabled in this environment",
                &[],
                false,
            ),
            DeployToDevelopment => (
                true,
                Fallback::Error,
                "Development deployment is disabled in this environment",
                &[],
                false,
            ),
            AutoRollback => (
                true,
                Fallback::Skip,
                "Auto-rollback disabled; manual rollback available if needed",
                &[],
                false,
            ),
            KbSync => (
                true,
                Fallback::Degrade,
                "KB sync unavailable; deployment will proceed without KB update",
                &[],
                false,
            ),
            HealthCheck => (
                true,
                Fallback::Degrade,
                "Health check unavailable; deployment proceeds without health verification",
                &[],
                false,
            ),
            IntegrationTests => (
                true,
                Fallback::Skip,
                "Integration tests skipped; manual verification recommended",
                &[],
                false,
            ),
            ParallelDeploy => (
                false,
                Fallback::Error,
                "Parallel deployment is not enabled; create the parallel-deploy Capability to enable it",
                &[],
                false,
            ),
            BlueGreenDeploy => (
                false,
                Fallback::Error,
                "Blue-green deployment is not enabled; create the blue-green-deploy Capability to enable it",
                &[],
                false,
            ),
            CanaryDeploy => (
                false,
                Fallback::Error,
                "Canary deployment is not enabled; create the canary-deploy Capability to enable it",
                &[],
                false,
            ),
        };
        CapabilitySpec {
            enabled,
            fallback,
            message: Some(message.to_owned()),
            required_permissions: perms.to_vec(),
            requires_approval: approval,
        }
    }

    /// How a deployment uses this capability, which bounds what a fallback can do.
    fn role(self) -> Use {
        use CapabilityName::*;
        match self {
            DeployLangchain | DeployFastapi | DeployCopilot | DeployToProduction
            | DeployToStaging | DeployToDevelopment => Use::Essential,
            BlueGreenDeploy | CanaryDeploy | ParallelDeploy => Use::Strategy,
            AutoRollback | KbSync | HealthCheck | IntegrationTests => Use::Step,
        }
    }
}

impl fmt::Display for CapabilityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CapabilityName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        CapabilityName::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown capability {s:?}"))
    }
}

/// What a deployment needs a capability for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Use {
    /// The deployment cannot happen without it (platform, environment): `Skip` and `Degrade`
    /// cannot apply and act as `Error`.
    Essential,
    /// A rollout strategy: `Skip` and `Degrade` fall back to a rolling update.
    Strategy,
    /// A step around the rollout: `Skip` and `Degrade` leave the step out.
    Step,
}

/// The capability settings in force: Capability objects over the built-in defaults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CapabilitySet {
    configured: BTreeMap<CapabilityName, CapabilitySpec>,
}

impl CapabilitySet {
    /// Settings from Capability objects (name, spec). Unknown names are refused, naming them.
    pub fn new<'a>(
        objects: impl IntoIterator<Item = (&'a str, CapabilitySpec)>,
    ) -> Result<Self, String> {
        let mut configured = BTreeMap::new();
        for (name, spec) in objects {
            configured.insert(name.parse()?, spec);
        }
        Ok(CapabilitySet { configured })
    }

    /// The setting of one capability.
    pub fn get(&self, name: CapabilityName) -> CapabilitySpec {
        self.configured
            .get(&name)
            .cloned()
            .unwrap_or_else(|| name.default_spec())
    }
}

/// The capabilities a deployment needs, in a fixed order: platform, environment, strategy, steps.
pub fn needed(spec: &AgentDeploymentSpec, tier: Tier) -> Vec<CapabilityName> {
    use CapabilityName::*;
    let mut out = vec![
        match spec.platform {
            Platform::Langchain => DeployLangchain,
            Platform::Fastapi => DeployFastapi,
            Platform::CopilotStudio => DeployCopilot,
        },
        match tier {
            Tier::Development => DeployToDevelopment,
            Tier::Staging => DeployToStaging,
            Tier::Production => DeployToProduction,
        },
    ];
    match spec.strategy {
        Strategy::RollingUpdate => {}
        Strategy::BlueGreen => out.push(BlueGreenDeploy),
        Strategy::Canary => out.push(CanaryDeploy),
    }
    if spec.platform != Platform::CopilotStudio {
        let steps = &spec.steps;
        let wanted = [
            (steps.health_check, HealthCheck),
            (steps.auto_rollback, AutoRollback),
            (steps.integration_tests.is_some(), IntegrationTests),
            (steps.kb_sync.is_some(), KbSync),
        ];
        out.extend(wanted.into_iter().filter(|(on, _)| *on).map(|(_, c)| c));
    }
    out
}

/// What one needed capability does to the deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Enabled: use it. `approval_by` lists the permissions whose holders must approve, when the
    /// capability requires approval; `permissions` must be held by the requester.
    Available {
        /// Permissions the requester must hold.
        permissions: Vec<Permission>,
        /// Whether an approval is required.
        requires_approval: bool,
    },
    /// Disabled, fallback `Error` (or `Skip`/`Degrade` on an essential capability): refused.
    Blocked(String),
    /// Disabled, fallback `Manual`, or `copilot-studio`: a person must act.
    Manual(String),
    /// Disabled, fallback `Skip`: the step (or strategy) is left out.
    Skipped(String),
    /// Disabled, fallback `Degrade`: runs without it, marked `Degraded`.
    Degraded(String),
}

/// The effect of one capability on a deployment.
pub fn effect(name: CapabilityName, setting: &CapabilitySpec) -> Effect {
    let message = setting
        .message
        .clone()
        .or_else(|| name.default_spec().message)
        .unwrap_or_else(|| format!("capability {name} is disabled"));
    if name == CapabilityName::DeployCopilot && setting.enabled {
        // Copilot Studio agents have no workload in the cluster: always a person's job.
        return Effect::Manual(message);
    }
    if setting.enabled {
        return Effect::Available {
            permissions: setting.required_permissions.clone(),
            requires_approval: setting.requires_approval,
        };
    }
    match (setting.fallback, name.role()) {
        (Fallback::Manual, _) => Effect::Manual(message),
        (Fallback::Error, _) => Effect::Blocked(message),
        (Fallback::Skip | Fallback::Degrade, Use::Essential) => Effect::Blocked(format!(
            "{message} (capability {name} is essential: fallback {:?} cannot skip it)",
            setting.fallback
        )),
        (Fallback::Skip, _) => Effect::Skipped(message),
        (Fallback::Degrade, _) => Effect::Degraded(message),
    }
}

#[cfg(test)]
mod tests;
