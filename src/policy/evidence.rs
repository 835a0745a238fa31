//! `staging_validated`, computed from evidence in the cluster rather than asserted by the spec.

use crate::crd::agent_deployment::{AgentDeployment, Phase, images, spec_digest};
use crate::identity::{RoleMapping, Tier};

/// True when another AgentDeployment of the same agent, in a staging-tier environment, is
/// `Deployed`, Ready, runs its current spec, and uses the same container images as `candidate`.
pub fn staging_validated<'a>(
    candidate: &AgentDeployment,
    all: impl IntoIterator<Item = &'a AgentDeployment>,
    mapping: &RoleMapping,
) -> bool {
    let wanted = images(&candidate.spec);
    !wanted.is_empty()
        && all.into_iter().any(|other| {
            let Some(status) = &other.status else {
                return false;
            };
            let ready = status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            other.spec.agent == candidate.spec.agent
                && mapping.tier(&other.spec.environment) == Tier::Staging
                && status.phase == Some(Phase::Deployed)
                && ready
                && status.deployed_digest.as_deref() == Some(spec_digest(&other.spec).as_str())
                && images(&other.spec) == wanted
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
    use serde_json::json;

    fn adep(env: &str, agent: &str, image: &str) -> AgentDeployment {
        serde_json::from_value(json!({
            "apiVersion": "dvo.caat.io/v1alpha1", "kind": "AgentDeployment", "metadata": {"name": format!("{agent}-{env}")},
            "spec": {"agent": agent, "platform": "langchain", "environment": env,
                     "template": {"spec": {"containers": [{"name": "a", "image": image}]}}},
        }))
        .unwrap()
    }

    fn deployed(
        mut a: AgentDeployment,
        phase: Phase,
        ready: bool,
        current: bool,
    ) -> AgentDeployment {
        let digest = if current {
            spec_digest(&a.spec)
        } else {
            "sha256:old".into()
        };
        a.status = Some(crate::crd::AgentDeploymentStatus {
            phase: Some(phase),
            deployed_digest: Some(digest),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                reason: "X".into(),
                message: String::new(),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    Default::default(),
                ),
                observed_generation: None,
            }],
            ..Default::default()
        });
        a
    }

    #[test]
    fn evidence_table() {
        let m: RoleMapping = crate::yaml::from_str("environmentTiers: {qa: staging}").unwrap();
        let prod = adep("production", "GHA", "gha:2");
        // (the other AgentDeployment, validated?)
        let table = [
            (
                deployed(adep("staging", "GHA", "gha:2"), Phase::Deployed, true, true),
                true,
            ),
            (
                deployed(adep("qa", "GHA", "gha:2"), Phase::Deployed, true, true),
                true,
            ),
            (
                deployed(adep("staging", "GHA", "gha:1"), Phase::Deployed, true, true),
                false,
            ),
            (
                deployed(adep("staging", "ORC", "gha:2"), Phase::Deployed, true, true),
                false,
            ),
            (
                deployed(
                    adep("staging", "GHA", "gha:2"),
                    Phase::Progressing,
                    true,
                    true,
                ),
                false,
            ),
            (
                deployed(
                    adep("staging", "GHA", "gha:2"),
                    Phase::Deployed,
                    false,
                    true,
                ),
                false,
            ),
            (
                deployed(
                    adep("staging", "GHA", "gha:2"),
                    Phase::Deployed,
                    true,
                    false,
                ),
                false,
            ),
            (
                deployed(
                    adep("development", "GHA", "gha:2"),
                    Phase::Deployed,
                    true,
                    true,
                ),
                false,
            ),
            (adep("staging", "GHA", "gha:2"), false),
        ];
        for (i, (other, want)) in table.into_iter().enumerate() {
            assert_eq!(staging_validated(&prod, [&other], &m), want, "case {i}");
        }
    }

    #[test]
    fn digest_covers_spec_only() {
        let mut a = adep("staging", "GHA", "gha:2");
        let d = spec_digest(&a.spec);
        assert!(d.starts_with("sha256:") && d.len() == 71, "{d}");
        a.metadata.labels =
            Some([("argocd.argoproj.io/instance".to_string(), "x".to_string())].into());
        assert_eq!(spec_digest(&a.spec), d);
        a.spec.replicas = Some(3);
        assert_ne!(spec_digest(&a.spec), d);
    }
}
