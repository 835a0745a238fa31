use super::*;
use crate::crd::agent_deployment::{HookStep, Steps};

fn spec(platform: Platform, strategy: Strategy, steps: Steps) -> AgentDeploymentSpec {
    serde_json::from_value(serde_json::json!({
        "agent": "GHA", "platform": platform, "environment": "staging", "strategy": strategy,
        "steps": steps,
    }))
    .unwrap()
}

fn hook() -> Option<HookStep> {
    Some(HookStep {
        image: "tests:1".into(),
        command: vec![],
        args: vec![],
        active_deadline_seconds: 60,
    })
}

#[test]
fn defaults_follow_the_seed_table() {
    use CapabilityName::*;
    // (capability, enabled, fallback, requires approval, required permissions)
    let table: &[(CapabilityName, bool, Fallback, bool, &[Permission])] = &[
        (DeployLangchain, true, Fallback::Error, false, &[]),
        (DeployFastapi, true, Fallback::Error, false, &[]),
        (DeployCopilot, true, Fallback::Manual, false, &[]),
        (
            DeployToProduction,
            true,
            Fallback::Error,
            true,
            &[Permission::DeployProduction],
        ),
        (DeployToStaging, true, Fallback::Error, false, &[]),
        (DeployToDevelopment, true, Fallback::Error, false, &[]),
        (AutoRollback, true, Fallback::Skip, false, &[]),
        (KbSync, true, Fallback::Degrade, false, &[]),
        (HealthCheck, true, Fallback::Degrade, false, &[]),
        (IntegrationTests, true, Fallback::Skip, false, &[]),
        (ParallelDeploy, false, Fallback::Error, false, &[]),
        (BlueGreenDeploy, false, Fallback::Error, false, &[]),
        (CanaryDeploy, false, Fallback::Error, false, &[]),
    ];
    assert_eq!(table.len(), CapabilityName::ALL.len());
    for (name, enabled, fallback, approval, perms) in table {
        let d = CapabilitySet::default().get(*name);
        assert_eq!(
            (d.enabled, d.fallback, d.requires_approval),
            (*enabled, *fallback, *approval),
            "{name}"
        );
        assert_eq!(d.required_permissions, perms.to_vec(), "{name}");
        assert!(!d.message.unwrap().is_empty());
        assert_eq!(name.as_str().parse::<CapabilityName>().unwrap(), *name);
    }
    assert_eq!(
        CapabilitySet::default().get(KbSync).message.unwrap(),
        "KB sync unavailable; deployment will proceed without KB update"
    );
}

#[test]
fn needed_capabilities_follow_platform_environment_strategy_and_steps() {
    use CapabilityName::*;
    let all_steps = Steps {
        health_check: true,
        auto_rollback: true,
        integration_tests: hook(),
        kb_sync: hook(),
    };
    let no_steps = Steps {
        health_check: false,
        auto_rollback: false,
        integration_tests: None,
        kb_sync: None,
    };
    let cases = [
        (
            Platform::Langchain,
            Strategy::RollingUpdate,
            no_steps.clone(),
            Tier::Production,
            vec![DeployLangchain, DeployToProduction],
        ),
        (
            Platform::Fastapi,
            Strategy::Canary,
            no_steps.clone(),
            Tier::Staging,
            vec![DeployFastapi, DeployToStaging, CanaryDeploy],
        ),
        (
            Platform::Fastapi,
            Strategy::BlueGreen,
            all_steps.clone(),
            Tier::Development,
            vec![
                DeployFastapi,
                DeployToDevelopment,
                BlueGreenDeploy,
                HealthCheck,
                AutoRollback,
                IntegrationTests,
                KbSync,
            ],
        ),
        (
            Platform::Langchain,
            Strategy::RollingUpdate,
            Steps::default(),
            Tier::Staging,
            vec![DeployLangchain, DeployToStaging, HealthCheck, AutoRollback],
        ),
        // Copilot Studio has no workload, so no workload steps.
        (
            Platform::CopilotStudio,
            Strategy::RollingUpdate,
            all_steps,
            Tier::Production,
            vec![DeployCopilot, DeployToProduction],
        ),
    ];
    for (platform, strategy, steps, tier, want) in cases {
        assert_eq!(
            needed(&spec(platform, strategy, steps), tier),
            want,
            "{platform:?} {strategy:?} {tier:?}"
        );
    }
}

#[test]
fn fallbacks_by_kind_of_use() {
    use CapabilityName::*;
    let off = |fallback| CapabilitySpec {
        enabled: false,
        fallback,
        message: Some("msg".into()),
        required_permissions: vec![],
        requires_approval: false,
    };
    let blocked = Effect::Blocked("msg".into());
    let essential = |f: &str| {
        Effect::Blocked(format!(
            "msg (capability deploy-fastapi is essential: fallback {f} cannot skip it)"
        ))
    };
    // (capability, fallback, expected effect)
    let table = [
        (DeployFastapi, Fallback::Error, blocked.clone()),
        (
            DeployFastapi,
            Fallback::Manual,
            Effect::Manual("msg".into()),
        ),
        (DeployFastapi, Fallback::Skip, essential("Skip")),
        (DeployFastapi, Fallback::Degrade, essential("Degrade")),
        (CanaryDeploy, Fallback::Error, blocked.clone()),
        (CanaryDeploy, Fallback::Skip, Effect::Skipped("msg".into())),
        (
            CanaryDeploy,
            Fallback::Degrade,
            Effect::Degraded("msg".into()),
        ),
        (CanaryDeploy, Fallback::Manual, Effect::Manual("msg".into())),
        (KbSync, Fallback::Error, blocked.clone()),
        (KbSync, Fallback::Skip, Effect::Skipped("msg".into())),
        (KbSync, Fallback::Degrade, Effect::Degraded("msg".into())),
        (
            IntegrationTests,
            Fallback::Manual,
            Effect::Manual("msg".into()),
        ),
    ];
    for (name, fallback, want) in table {
        assert_eq!(effect(name, &off(fallback)), want, "{name} {fallback:?}");
    }
}

#[test]
fn copilot_is_always_manual_and_enabled_capabilities_carry_permissions() {
    let set = CapabilitySet::default();
    assert_eq!(
        effect(
            CapabilityName::DeployCopilot,
            &set.get(CapabilityName::DeployCopilot)
        ),
        Effect::Manual(
            "Copilot Studio deployment requires manual action. Please contact your administrator."
                .into()
        )
    );
    assert_eq!(
        effect(
            CapabilityName::DeployToProduction,
            &set.get(CapabilityName::DeployToProduction)
        ),
        Effect::Available {
            permissions: vec![Permission::DeployProduction],
            requires_approval: true
        }
    );
    // A configured object without a message falls back to the built-in message.
    let configured = CapabilitySet::new([(
        "kb-sync",
        CapabilitySpec {
            enabled: false,
            fallback: Fallback::Skip,
            message: None,
            required_permissions: vec![],
            requires_approval: false,
        },
    )])
    .unwrap();
    assert_eq!(
        effect(
            CapabilityName::KbSync,
            &configured.get(CapabilityName::KbSync)
        ),
        Effect::Skipped("KB sync unavailable; deployment will proceed without KB update".into())
    );
    assert_eq!(
        CapabilitySet::new([("teleport", configured.get(CapabilityName::KbSync))]).unwrap_err(),
        "unknown capability \"teleport\""
    );
}
