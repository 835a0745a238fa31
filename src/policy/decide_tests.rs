use chrono::{DateTime, Utc};
use proptest::prelude::*;

use super::*;
use crate::capability::CapabilitySet;
use crate::crd::AgentDeploymentSpec;
use crate::crd::capability::{CapabilitySpec, Fallback};
use crate::crd::deployment_policy::{DeploymentPolicySpec, Requirement};
use crate::identity::RoleMapping;
use crate::policy::decision;
use crate::policy::rules::Rules;
use crate::policy::validate;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// A Tuesday at noon UTC: inside business hours, not a weekend.
fn tuesday() -> DateTime<Utc> {
    utc("2026-11-24T12:00:00Z")
}

fn policy(yaml: &str) -> DeploymentPolicySpec {
    crate::yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}: {yaml}"))
}

fn mapping() -> RoleMapping {
    crate::yaml::from_str("users: {adm: [admin], rm: [release_manager], op: [operator], dev: [developer], ci: [service_account]}").unwrap()
}

fn rules_with(policies: &[(&str, &str)], caps: CapabilitySet) -> Rules {
    Rules::new(
        policies.iter().map(|(n, y)| (n.to_string(), policy(y))),
        caps,
        mapping(),
    )
}

fn rules(policies: &[(&str, &str)]) -> Rules {
    rules_with(policies, CapabilitySet::default())
}

fn request(env: &str, user: &str) -> Request {
    request_spec(env, user, |_| {})
}

fn request_spec(env: &str, user: &str, edit: impl FnOnce(&mut AgentDeploymentSpec)) -> Request {
    let mut spec: AgentDeploymentSpec = serde_json::from_value(serde_json::json!({
        "agent": "GHA", "platform": "langchain", "environment": env,
        "template": {"spec": {"containers": [{"name": "agent", "image": "gha:1"}]}},
        "context": {"change_ticket": "CHG-1", "risk": 3},
    }))
    .unwrap();
    edit(&mut spec);
    Request {
        namespace: "agents".into(),
        labels: [("team".to_string(), "payments".to_string())].into(),
        spec,
        requester: (!user.is_empty()).then(|| crate::identity::Identity {
            username: user.into(),
            uid: None,
            groups: vec![],
        }),
        staging_validated: true,
    }
}

fn names_in_trace(d: &Decision) -> Vec<(&str, decision::TraceResult)> {
    d.trace
        .iter()
        .map(|t| (t.policy.as_str(), t.result))
        .collect()
}

#[test]
fn scope_matching() {
    // (scope yaml, in scope for production/langchain/GHA/agents/deploy?)
    let table = [
        ("{}", true),
        ("{environments: ['*']}", true),
        ("{environments: [production, prod]}", true),
        ("{environments: [staging]}", false),
        ("{platforms: [fastapi]}", false),
        ("{platforms: [langchain, fastapi]}", true),
        ("{agents: [GHA]}", true),
        ("{agents: [ORC]}", false),
        ("{agents: ['*', ORC]}", true),
        ("{namespaces: [agents]}", true),
        ("{namespaces: [other]}", false),
        ("{actions: [rollback]}", false),
        ("{actions: [deploy]}", true),
        ("{environments: [production], agents: [ORC]}", false),
    ];
    for (scope, in_scope) in table {
        let r = rules(&[("p", &format!("{{action: AuditOnly, scope: {scope}}}"))]);
        let d = decide(&r, &request("production", "adm"), tuesday());
        assert_eq!(!d.trace.is_empty(), in_scope, "{scope}");
    }
}

#[test]
fn priority_order_and_ties() {
    use decision::TraceResult::*;
    // Same priority: Deny before Allow, whatever the names.
    let r = rules(&[
        ("a-allow", "{priority: 5, action: Allow}"),
        ("z-deny", "{priority: 5, action: Deny, message: no}"),
    ]);
    let d = decide(&r, &request("staging", "op"), tuesday());
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(
        names_in_trace(&d),
        vec![("z-deny", Matched), ("a-allow", NotReached)]
    );
    // A lower priority number goes first: Allow at 1 ends evaluation before Deny at 2.
    let r = rules(&[
        ("deny", "{priority: 2, action: Deny}"),
        ("allow", "{priority: 1, action: Allow}"),
    ]);
    let d = decide(&r, &request("staging", "op"), tuesday());
    assert_eq!(d.outcome, Outcome::Allow);
    assert_eq!(
        names_in_trace(&d),
        vec![("allow", Matched), ("deny", NotReached)]
    );
    // Same priority and action: by name.
    let r = rules(&[
        ("b", "{action: Warn, message: B}"),
        ("a", "{action: Warn, message: A}"),
        ("c", "{action: Warn, message: C}"),
    ]);
    let d = decide(&r, &request("staging", "op"), tuesday());
    assert_eq!(d.warnings, vec!["A", "B", "C"]);
    // Policy order in the input never matters.
    let mut swapped = vec![
        ("c", "{action: Warn, message: C}"),
        ("a", "{action: Warn, message: A}"),
        ("b", "{action: Warn, message: B}"),
    ];
    let d2 = decide(&rules(&swapped), &request("staging", "op"), tuesday());
    swapped.reverse();
    assert_eq!(d, d2);
}

#[test]
fn each_action() {
    let cond = "conditions: [{field: environment, operator: Equals, value: staging}]";
    // (action yaml, outcome, warnings, approval sources)
    let table: Vec<(String, Outcome, Vec<&str>, Vec<&str>)> = vec![
        (
            format!("{{action: Allow, {cond}}}"),
            Outcome::Allow,
            vec![],
            vec![],
        ),
        (
            format!("{{action: Deny, message: nope, {cond}}}"),
            Outcome::Deny,
            vec![],
            vec![],
        ),
        (
            format!("{{action: Warn, message: careful, {cond}}}"),
            Outcome::Allow,
            vec!["careful"],
            vec![],
        ),
        (
            format!("{{action: Warn, {cond}}}"),
            Outcome::Allow,
            vec!["warning from policy p"],
            vec![],
        ),
        (
            format!("{{action: AuditOnly, {cond}}}"),
            Outcome::Allow,
            vec![],
            vec![],
        ),
        (
            format!("{{action: RequireApproval, approval: {{roles: [release_manager]}}, {cond}}}"),
            Outcome::RequireApproval,
            vec![],
            vec!["policy/p"],
        ),
    ];
    for (yaml, outcome, warnings, approvals) in table {
        let d = decide(
            &rules(&[("p", &yaml)]),
            &request("staging", "op"),
            tuesday(),
        );
        assert_eq!(d.outcome, outcome, "{yaml}");
        assert_eq!(d.warnings, warnings, "{yaml}");
        assert_eq!(
            d.approval_requirements
                .iter()
                .map(|r| r.source.as_str())
                .collect::<Vec<_>>(),
            approvals,
            "{yaml}"
        );
        assert_eq!(d.matched_policies.len(), 1, "{yaml}");
        if outcome == Outcome::Deny {
            assert_eq!(d.violations[0].message, "nope");
            assert_eq!(d.violations[0].kind, decision::ViolationKind::PolicyDenied);
        }
    }
}

#[test]
fn several_approval_requirements_accumulate_with_warnings() {
    let r = rules(&[
        (
            "security",
            "{priority: 1, action: RequireApproval, approval: {roles: [admin], minApprovals: 1, expiry: 4h}}",
        ),
        (
            "release",
            "{priority: 2, action: RequireApproval, approval: {roles: [release_manager, admin, service_account], minApprovals: 2, allowSelfApproval: true}}",
        ),
        ("hours", "{priority: 3, action: Warn, message: late}"),
        ("audit", "{priority: 4, action: AuditOnly}"),
    ]);
    let d = decide(&r, &request("staging", "op"), tuesday());
    assert_eq!(d.outcome, Outcome::RequireApproval);
    assert_eq!(d.matched_policies.len(), 4);
    assert_eq!(d.warnings, vec!["late"]);
    let req: Vec<_> = d
        .approval_requirements
        .iter()
        .map(|r| {
            (
                r.source.as_str(),
                r.roles.clone(),
                r.min_approvals,
                r.expiry.as_str(),
                r.allow_self_approval,
            )
        })
        .collect();
    use crate::identity::Role::*;
    assert_eq!(
        req,
        vec![
            ("policy/security", vec![Admin], 1, "4h", false),
            // Service accounts are dropped: they never count as approvers.
            (
                "policy/release",
                vec![ReleaseManager, Admin],
                2,
                "24h",
                true
            ),
        ]
    );
}

#[test]
fn match_all_and_any() {
    let conds = "[{field: environment, operator: Equals, value: staging}, {field: labels.team, operator: Equals, value: risk}]";
    let all = decide(
        &rules(&[("p", &format!("{{action: Deny, conditions: {conds}}}"))]),
        &request("staging", "op"),
        tuesday(),
    );
    assert_eq!(all.outcome, Outcome::Allow);
    assert_eq!(
        all.trace[0]
            .conditions
            .iter()
            .map(|c| c.held)
            .collect::<Vec<_>>(),
        vec![true, false]
    );
    let any = decide(
        &rules(&[(
            "p",
            &format!("{{action: Deny, match: Any, conditions: {conds}}}"),
        )]),
        &request("staging", "op"),
        tuesday(),
    );
    assert_eq!(any.outcome, Outcome::Deny);
    assert!(
        any.matched_policies[0]
            .reason
            .contains("environment Equals \"staging\""),
        "{:?}",
        any.matched_policies
    );
}

#[test]
fn failure_policies() {
    // deployment_hour is a number, Matches needs a string: an evaluation error.
    let bad = "conditions: [{field: deployment_hour, operator: Matches, value: '1.*'}]";
    let fail = decide(
        &rules(&[("p", &format!("{{action: Warn, {bad}}}"))]),
        &request("staging", "op"),
        tuesday(),
    );
    assert_eq!(fail.outcome, Outcome::Deny);
    assert_eq!(
        fail.violations[0].kind,
        decision::ViolationKind::EvaluationError
    );
    assert_eq!(
        fail.violations[0].message,
        "policy p could not be evaluated: Matches on deployment_hour needs a string field, found a number"
    );
    assert_eq!(fail.trace[0].result, decision::TraceResult::ErrorFailed);
    let ignore = decide(
        &rules(&[(
            "p",
            &format!("{{action: Deny, failurePolicy: Ignore, {bad}}}"),
        )]),
        &request("staging", "op"),
        tuesday(),
    );
    assert_eq!(ignore.outcome, Outcome::Allow);
    assert_eq!(ignore.trace[0].result, decision::TraceResult::ErrorIgnored);
    assert!(ignore.warnings[0].ends_with("(ignored: failurePolicy Ignore)"));
    // A missing field is null: ordered comparison on it is an error too.
    let missing = decide(
        &rules(&[(
            "p",
            "{action: Warn, conditions: [{field: context.nope, operator: GreaterThan, value: 1}]}",
        )]),
        &request("staging", "op"),
        tuesday(),
    );
    assert_eq!(missing.outcome, Outcome::Deny);
    // A policy that does not compile (bad regex) fails closed.
    let invalid = decide(
        &rules(&[(
            "p",
            "{action: Allow, conditions: [{field: agent, operator: Matches, value: '('}]}",
        )]),
        &request("staging", "op"),
        tuesday(),
    );
    assert_eq!(invalid.outcome, Outcome::Deny);
    assert!(
        invalid.violations[0]
            .message
            .starts_with("policy p is invalid: condition on agent: invalid regular expression")
    );
}

#[test]
fn context_fields_and_spoofing() {
    // spec.context keys are readable at the top level and under context.
    let r = rules(&[(
        "p",
        "{action: Deny, conditions: [{field: change_ticket, operator: Matches, value: 'CHG-[0-9]+'}, {field: context.risk, operator: LessThan, value: 5}]}",
    )]);
    assert_eq!(
        decide(&r, &request("staging", "op"), tuesday()).outcome,
        Outcome::Deny
    );
    // A spec.context key named like a computed field never overrides it.
    let r = rules(&[(
        "p",
        "{action: Deny, conditions: [{field: staging_validated, operator: NotEquals, value: true}]}",
    )]);
    let mut spoof = request_spec("staging", "op", |s| {
        s.context
            .insert("staging_validated".into(), serde_json::json!(true));
    });
    spoof.staging_validated = false;
    assert_eq!(decide(&r, &spoof, tuesday()).outcome, Outcome::Deny);
    // user.roles, labels and the alias agent_id.
    let r = rules(&[(
        "p",
        "{action: Deny, conditions: [{field: user.roles, operator: Contains, value: operator}, {field: labels.team, operator: In, value: [payments]}, {field: agent_id, operator: Equals, value: GHA}]}",
    )]);
    assert_eq!(
        decide(&r, &request("staging", "op"), tuesday()).outcome,
        Outcome::Deny
    );
    assert_eq!(
        decide(&r, &request("staging", "dev"), tuesday()).outcome,
        Outcome::Deny,
        "developers lack deploy_staging anyway"
    );
    assert_eq!(
        decide(&r, &request("development", "dev"), tuesday()).outcome,
        Outcome::Allow
    );
}

#[test]
fn blocked_actions_requirements_and_notify() {
    let r = rules(&[
        (
            "freeze",
            "{action: AuditOnly, blockedActions: [rollback], requirements: [tests, validation], notify: {onDeploy: [a@x], onFailure: [b@x]}}",
        ),
        (
            "more",
            "{action: AuditOnly, requirements: [healthCheck, tests], notify: {onDeploy: [a@x, c@x]}}",
        ),
    ]);
    let d = decide(&r, &request("staging", "op"), tuesday());
    assert_eq!(d.outcome, Outcome::Allow);
    assert_eq!(
        d.requirements,
        vec![
            Requirement::Validation,
            Requirement::Tests,
            Requirement::HealthCheck
        ]
    );
    assert_eq!(d.notify.on_deploy, vec!["a@x", "c@x"]);
    assert_eq!(d.notify.on_failure, vec!["b@x"]);
    let rollback = request_spec("staging", "op", |s| {
        s.action = crate::crd::DeployAction::Rollback
    });
    let d = decide(&r, &rollback, tuesday());
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(
        d.violations[0].message,
        "action rollback is blocked by policy freeze"
    );
    assert_eq!(
        d.next_window_opens_at, None,
        "a blocked action does not clear with time"
    );
}

#[test]
fn windows_blackouts_and_the_next_opening() {
    let business = "windows: [{days: [monday, tuesday, wednesday, thursday], start: '06:00', end: '18:00', timeZone: America/New_York}]";
    let r = rules(&[("hours", &format!("{{action: AuditOnly, {business}}}"))]);
    // Saturday 2026-11-21 15:00Z: closed until Monday 06:00 EST.
    let d = decide(&r, &request("staging", "op"), utc("2026-11-21T15:00:00Z"));
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.violations[0].kind, decision::ViolationKind::OutsideWindow);
    assert_eq!(d.next_window_opens_at, Some(utc("2026-11-23T11:00:00Z")));
    assert_eq!(
        decide(&r, &request("staging", "op"), utc("2026-11-23T11:00:00Z")).outcome,
        Outcome::Allow
    );
    // A blackout over Monday and Tuesday pushes the opening to Wednesday.
    let r = rules(&[(
        "hours",
        &format!(
            "{{action: AuditOnly, {business}, blackouts: [{{start: '2026-11-23', end: '2026-11-24', timeZone: America/New_York, reason: release freeze}}]}}"
        ),
    )]);
    let d = decide(&r, &request("staging", "op"), utc("2026-11-21T15:00:00Z"));
    assert_eq!(d.next_window_opens_at, Some(utc("2026-11-25T11:00:00Z")));
    // Inside the blackout itself: a Blackout violation, same opening.
    let d = decide(&r, &request("staging", "op"), utc("2026-11-23T15:00:00Z"));
    assert_eq!(
        d.violations.iter().map(|v| v.kind).collect::<Vec<_>>(),
        vec![decision::ViolationKind::Blackout]
    );
    assert!(d.violations[0].message.contains("release freeze"));
    assert_eq!(d.next_window_opens_at, Some(utc("2026-11-25T11:00:00Z")));
    // A blackout in another policy counts too.
    let r = rules(&[
        ("hours", &format!("{{action: AuditOnly, {business}}}")),
        (
            "freeze",
            "{action: AuditOnly, blackouts: [{start: '2026-11-23T00:00', end: '2026-11-23T12:00', timeZone: America/New_York, reason: migration}]}",
        ),
    ]);
    let d = decide(&r, &request("staging", "op"), utc("2026-11-21T15:00:00Z"));
    assert_eq!(d.next_window_opens_at, Some(utc("2026-11-23T17:00:00Z")));
    // Time conditions: the seed's weekend block opens at Monday 00:00 in the policy's zone.
    let r = rules(&[(
        "weekend",
        "{action: Deny, timeZone: Europe/Paris, conditions: [{field: environment, operator: Equals, value: production}, {field: is_weekend, operator: Equals, value: true}]}",
    )]);
    let d = decide(
        &r,
        &request("production", "adm"),
        utc("2026-11-21T15:00:00Z"),
    );
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.next_window_opens_at, Some(utc("2026-11-22T23:00:00Z")));
    // Refused for something that time does not change: no next opening.
    let r = rules(&[
        ("hours", &format!("{{action: AuditOnly, {business}}}")),
        ("deny", "{action: Deny, priority: 200, message: never}"),
    ]);
    let d = decide(&r, &request("staging", "op"), utc("2026-11-21T15:00:00Z"));
    assert_eq!(d.next_window_opens_at, None);
}

#[test]
fn permissions_of_the_requester() {
    use decision::ViolationKind::{PermissionDenied, UnverifiedRequester};
    let r = rules(&[]);
    // (environment, user, outcome, approval sources, violation kinds)
    let table = [
        ("development", "dev", Outcome::Allow, vec![], vec![]),
        (
            "staging",
            "dev",
            Outcome::Deny,
            vec![],
            vec![PermissionDenied],
        ),
        ("staging", "ci", Outcome::Allow, vec![], vec![]),
        ("staging", "", Outcome::Deny, vec![], vec![PermissionDenied]),
        (
            "production",
            "dev",
            Outcome::RequireApproval,
            vec![
                "permission/deploy_production",
                "capability/deploy-to-production",
            ],
            vec![],
        ),
        (
            "production",
            "ci",
            Outcome::RequireApproval,
            vec![
                "permission/deploy_production",
                "capability/deploy-to-production",
            ],
            vec![],
        ),
        (
            "production",
            "",
            Outcome::Deny,
            vec![
                "permission/deploy_production",
                "capability/deploy-to-production",
            ],
            vec![UnverifiedRequester],
        ),
        (
            "production",
            "rm",
            Outcome::RequireApproval,
            vec!["capability/deploy-to-production"],
            vec![],
        ),
    ];
    for (env, user, outcome, approvals, kinds) in table {
        let d = decide(&r, &request(env, user), tuesday());
        assert_eq!(d.outcome, outcome, "{user} → {env}");
        assert_eq!(
            d.approval_requirements
                .iter()
                .map(|a| a.source.as_str())
                .collect::<Vec<_>>(),
            approvals,
            "{user} → {env}"
        );
        assert_eq!(
            d.violations.iter().map(|v| v.kind).collect::<Vec<_>>(),
            kinds,
            "{user} → {env}"
        );
    }
    let d = decide(&r, &request("staging", ""), tuesday());
    assert_eq!(
        d.violations[0].message,
        "(unknown requester) (roles: viewer) lacks permission deploy_staging, which roles operator, release_manager, admin, service_account have"
    );
}

#[test]
fn capability_fallbacks_in_decisions() {
    let off = |name: &'static str, fallback| {
        (
            name,
            CapabilitySpec {
                enabled: false,
                fallback,
                message: Some(format!("{name} is off")),
                required_permissions: vec![],
                requires_approval: false,
            },
        )
    };
    let caps = CapabilitySet::new([
        off("kb-sync", Fallback::Degrade),
        off("auto-rollback", Fallback::Skip),
        off("deploy-fastapi", Fallback::Error),
    ])
    .unwrap();
    let r = rules_with(&[], caps);
    let hook = crate::crd::agent_deployment::HookStep {
        image: "kb:1".into(),
        command: vec![],
        args: vec![],
        active_deadline_seconds: 60,
    };
    let d = decide(
        &r,
        &request_spec("staging", "op", |s| s.steps.kb_sync = Some(hook)),
        tuesday(),
    );
    assert_eq!(d.outcome, Outcome::Allow);
    assert_eq!(
        d.degraded_steps
            .iter()
            .map(|s| s.capability.as_str())
            .collect::<Vec<_>>(),
        vec!["kb-sync"]
    );
    assert_eq!(
        d.skipped_steps
            .iter()
            .map(|s| s.capability.as_str())
            .collect::<Vec<_>>(),
        vec!["auto-rollback"]
    );
    assert_eq!(d.warnings, vec!["kb-sync is off"]);
    let d = decide(
        &r,
        &request_spec("staging", "op", |s| {
            s.platform = crate::crd::Platform::Fastapi
        }),
        tuesday(),
    );
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.violations[0].source, "capability/deploy-fastapi");
    // Canary needs a capability that is off by default.
    let d = decide(
        &rules(&[]),
        &request_spec("staging", "op", |s| {
            s.strategy = crate::crd::agent_deployment::Strategy::Canary
        }),
        tuesday(),
    );
    assert_eq!(d.outcome, Outcome::Deny);
    // Copilot Studio: a person publishes it.
    let d = decide(
        &rules(&[]),
        &request_spec("staging", "op", |s| {
            s.platform = crate::crd::Platform::CopilotStudio;
            s.template = None;
        }),
        tuesday(),
    );
    assert_eq!(d.outcome, Outcome::ManualActionRequired);
    assert_eq!(
        d.manual_instructions,
        vec![
            "Copilot Studio deployment requires manual action. Please contact your administrator."
        ]
    );
}

#[test]
fn validate_messages() {
    let table = [
        (
            "{action: Deny, conditions: [{field: agent, operator: Matches, value: '[a-'}]}",
            "invalid regular expression \"[a-\"",
        ),
        (
            "{action: Deny, timeZone: Europe/Atlantis}",
            "timeZone: unknown time zone \"Europe/Atlantis\"",
        ),
        (
            "{action: Deny, windows: [{days: [], start: '06:00', end: '18:00'}]}",
            "window has no days",
        ),
        (
            "{action: Deny, windows: [{days: [monday], start: '06:00', end: '18:00', timeZone: Moon/Base}]}",
            "unknown time zone \"Moon/Base\"",
        ),
        (
            "{action: Deny, blackouts: [{start: '2026-12-20', end: '2026-01-02', reason: Holiday freeze}]}",
            "blackout \"Holiday freeze\": end 2026-01-02 is before its start 2026-12-20",
        ),
        (
            "{action: RequireApproval}",
            "action RequireApproval needs spec.approval",
        ),
        (
            "{action: Warn, approval: {roles: [admin]}}",
            "spec.approval is only allowed with action RequireApproval",
        ),
        (
            "{action: RequireApproval, approval: {roles: [service_account]}}",
            "service accounts never count as human approvers",
        ),
        (
            "{action: RequireApproval, approval: {roles: [admin], minApprovals: 0}}",
            "approval.minApprovals must be at least 1",
        ),
        (
            "{action: RequireApproval, approval: {roles: [admin], expiry: 1d}}",
            "approval.expiry \"1d\" is not a duration",
        ),
        (
            "{action: RequireApproval, approval: {roles: [admin], expiry: 800h}}",
            "at most 30 days",
        ),
        (
            "{action: Deny, conditions: [{field: risk, operator: In, value: 3}]}",
            "In needs a list value, found a number",
        ),
        (
            "{action: Deny, scope: {platforms: [lambda]}}",
            "scope.platforms: unknown value \"lambda\"",
        ),
        (
            "{action: Deny, scope: {actions: [delete]}}",
            "scope.actions: unknown value \"delete\"",
        ),
    ];
    for (yaml, want) in table {
        let errors = validate(&policy(yaml)).unwrap_err();
        assert!(
            errors.iter().any(|e| e.contains(want)),
            "{yaml}: {errors:?}"
        );
    }
    assert_eq!(
        validate(&policy(
            "{action: Deny, blackouts: [{start: '2026-12-20', end: '2027-01-02', reason: Holiday freeze}]}"
        )),
        Ok(())
    );
    // Every problem is reported, not only the first.
    let errors = validate(&policy(
        "{action: Deny, timeZone: X/Y, conditions: [{field: a, operator: Matches, value: '('}]}",
    ))
    .unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:?}");
}

/// Random policies from a small grammar that covers every action, time conditions and windows.
fn arb_policy() -> impl Strategy<Value = DeploymentPolicySpec> {
    let conditions = prop::sample::subsequence(
        vec![
            "{field: environment, operator: Equals, value: production}",
            "{field: is_weekend, operator: Equals, value: true}",
            "{field: deployment_hour, operator: GreaterThan, value: 12}",
            "{field: labels.team, operator: In, value: [payments, risk]}",
            "{field: staging_validated, operator: NotEquals, value: true}",
            "{field: context.risk, operator: LessThan, value: 2}",
            "{field: context.missing, operator: GreaterThan, value: 1}",
        ],
        0..3,
    );
    let action = prop::sample::select(vec![
        "Allow",
        "Deny",
        "Warn",
        "AuditOnly",
        "RequireApproval, approval: {roles: [release_manager]}",
    ]);
    let extra = prop::sample::select(vec![
        "",
        ", windows: [{days: [monday, friday], start: '09:00', end: '17:00', timeZone: America/New_York}]",
        ", blackouts: [{start: '2026-11-25', end: '2026-11-26', reason: freeze}]",
        ", failurePolicy: Ignore",
        ", match: Any",
        ", scope: {environments: [staging]}",
    ]);
    (conditions, action, extra, 0..4i32).prop_map(|(c, a, e, p)| {
        policy(&format!(
            "{{priority: {p}, action: {a}, conditions: [{}]{e}}}",
            c.join(", ")
        ))
    })
}

fn arb_request() -> impl Strategy<Value = (Request, DateTime<Utc>)> {
    (
        prop::sample::select(vec!["development", "staging", "production"]),
        prop::sample::select(vec!["", "adm", "rm", "op", "dev", "ci"]),
        any::<bool>(),
        0i64..(14 * 24 * 4),
    )
        .prop_map(|(env, user, validated, quarter)| {
            let mut r = request(env, user);
            r.staging_validated = validated;
            (
                r,
                utc("2026-11-19T00:00:00Z") + chrono::Duration::minutes(15 * quarter),
            )
        })
}

fn without_trace(mut d: Decision) -> Decision {
    d.trace.clear();
    d
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn decisions_are_deterministic(policies in prop::collection::vec(arb_policy(), 0..6), (req, at) in arb_request()) {
        let named: Vec<_> = policies.iter().enumerate().map(|(i, p)| (format!("p{i}"), p.clone())).collect();
        let a = decide(&Rules::new(named.clone(), CapabilitySet::default(), mapping()), &req, at);
        let mut reversed = named;
        reversed.reverse();
        let b = decide(&Rules::new(reversed, CapabilitySet::default(), mapping()), &req, at);
        prop_assert_eq!(a, b);
    }

    #[test]
    fn a_policy_that_does_not_match_changes_nothing(
        policies in prop::collection::vec(arb_policy(), 0..6),
        extra in arb_policy(),
        (req, at) in arb_request(),
    ) {
        let named: Vec<_> = policies.iter().enumerate().map(|(i, p)| (format!("p{i}"), p.clone())).collect();
        let before = decide(&Rules::new(named.clone(), CapabilitySet::default(), mapping()), &req, at);
        let mut never = extra;
        never.conditions = vec![policy("{action: Deny, conditions: [{field: agent, operator: Equals, value: NO-SUCH-AGENT}]}").conditions.remove(0)];
        never.match_ = crate::crd::deployment_policy::MatchMode::All;
        let mut with = named;
        with.push(("never".into(), never));
        let after = decide(&Rules::new(with, CapabilitySet::default(), mapping()), &req, at);
        prop_assert_eq!(without_trace(before), without_trace(after));
    }

    #[test]
    fn warn_and_audit_never_lift_a_deny(
        policies in prop::collection::vec(arb_policy(), 0..6),
        extra in arb_policy(),
        warn in any::<bool>(),
        (req, at) in arb_request(),
    ) {
        let named: Vec<_> = policies.iter().enumerate().map(|(i, p)| (format!("p{i}"), p.clone())).collect();
        let before = decide(&Rules::new(named.clone(), CapabilitySet::default(), mapping()), &req, at);
        let mut soft = extra;
        soft.action = if warn { crate::crd::deployment_policy::PolicyAction::Warn } else { crate::crd::deployment_policy::PolicyAction::AuditOnly };
        soft.approval = None;
        let mut with = named;
        with.push(("soft".into(), soft));
        let after = decide(&Rules::new(with, CapabilitySet::default(), mapping()), &req, at);
        if before.outcome == Outcome::Deny {
            prop_assert_eq!(after.outcome, Outcome::Deny);
        }
    }
}

#[test]
fn a_permission_gated_twice_and_a_repeated_warning_are_said_once() {
    // production is gated by the environment and by the deploy-to-production capability.
    let r = rules(&[
        ("w1", "{action: Warn, message: same words}"),
        ("w2", "{action: Warn, message: same words}"),
    ]);
    let d = decide(&r, &request("production", "op"), tuesday());
    let count = |w: &str| d.warnings.iter().filter(|x| x.contains(w)).count();
    assert_eq!(
        count("lacks permission deploy_production"),
        1,
        "{:?}",
        d.warnings
    );
    assert_eq!(count("same words"), 1, "{:?}", d.warnings);
    assert_eq!(d.outcome, Outcome::RequireApproval);
}

/// Each policy asks for approval once, even when two share a name (as a file given to
/// `dvo evaluate` twice could), and a permission and a capability asking for the same are one.
#[test]
fn each_source_asks_for_approval_once() {
    let approve = "{action: RequireApproval, approval: {roles: [admin]}}";
    let sources = |policies: &[(&str, &str)]| {
        let d = decide(&rules(policies), &request("staging", "dev"), tuesday());
        d.approval_requirements
            .iter()
            .map(|r| r.source.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        sources(&[("a", approve), ("b", approve)]),
        ["policy/a", "policy/b"]
    );
    assert_eq!(sources(&[("a", approve), ("a", approve)]), ["policy/a"]);
}

/// A policy scoped to environments `envs` (comma-separated; empty: all) and agents `agents`.
fn scoped(envs: &str, agents: &str) -> String {
    let list = |s: &str| {
        s.split(',')
            .filter(|x| !x.is_empty())
            .map(|x| format!("{x:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "{{action: Warn, message: m, scope: {{environments: [{}], agents: [{}]}}}}",
        list(envs),
        list(agents)
    )
}

proptest! {
    /// The scope index visits exactly the policies a full scan finds in scope, in the same order.
    #[test]
    fn the_scope_index_finds_what_a_scan_finds(
        scopes in proptest::collection::vec(
            (
                proptest::sample::select(vec!["", "production", "staging", "*", "production,staging", "dev"]),
                proptest::sample::select(vec!["", "GHA", "other", "*"]),
                -3i32..3,
            ),
            0..12,
        ),
        env in proptest::sample::select(vec!["production", "staging", "dev", "qa"]),
    ) {
        let specs: Vec<(String, String, i32)> = scopes
            .iter()
            .enumerate()
            .map(|(i, (e, a, prio))| (format!("p{i}"), scoped(e, a), *prio))
            .collect();
        let rules = Rules::new(
            specs.iter().map(|(n, y, prio)| {
                let mut p = policy(y);
                p.priority = *prio;
                (n.clone(), p)
            }),
            CapabilitySet::default(),
            mapping(),
        );
        let req = request(env, "dev");
        let indexed: Vec<&str> = rules.in_scope(&req.namespace, &req.spec).map(|p| p.name.as_str()).collect();
        let scanned: Vec<&str> = rules
            .policies()
            .iter()
            .filter(|p| crate::policy::in_scope(&p.spec.scope, &req.namespace, &req.spec))
            .map(|p| p.name.as_str())
            .collect();
        prop_assert_eq!(indexed, scanned);
    }
}

#[test]
fn a_change_of_rules_affects_the_scopes_of_what_changed() {
    use crate::policy::Affected;
    let base = [
        ("a", scoped("production", "")),
        ("b", scoped("staging", "GHA")),
    ];
    let build = |ps: &[(&str, String)], caps: CapabilitySet, m: RoleMapping| {
        Rules::new(ps.iter().map(|(n, y)| (n.to_string(), policy(y))), caps, m)
    };
    let old = build(&base, CapabilitySet::default(), mapping());
    let prod = request("production", "dev");
    let stag = request("staging", "dev");
    let dev = request("dev", "dev");
    let disabled = CapabilitySet::new([(
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
    // (the new rules, then whether production, staging and dev requests are affected)
    let table: Vec<(Rules, [bool; 3])> = vec![
        (
            build(&base, CapabilitySet::default(), mapping()),
            [false; 3],
        ),
        // a changed policy: its old and its new scope
        (
            build(
                &[("a", scoped("dev", "")), ("b", scoped("staging", "GHA"))],
                CapabilitySet::default(),
                mapping(),
            ),
            [true, false, true],
        ),
        // a removed policy
        (
            build(&base[..1], CapabilitySet::default(), mapping()),
            [false, true, false],
        ),
        // an added policy scoped to another agent: nobody here
        (
            build(
                &[
                    ("a", scoped("production", "")),
                    ("b", scoped("staging", "GHA")),
                    ("c", scoped("", "other")),
                ],
                CapabilitySet::default(),
                mapping(),
            ),
            [false; 3],
        ),
        // capabilities or the role mapping: everyone
        (build(&base, disabled, mapping()), [true; 3]),
        (
            build(&base, CapabilitySet::default(), RoleMapping::default()),
            [true; 3],
        ),
    ];
    for (i, (new, expected)) in table.into_iter().enumerate() {
        let affected = old.affected_by(&new);
        let got = [&prod, &stag, &dev].map(|r| affected.includes(&r.namespace, &r.spec));
        assert_eq!(got, expected, "case {i}: {affected:?}");
        assert_eq!(
            affected == Affected::Nothing,
            i == 0,
            "case {i}: {affected:?}"
        );
    }
}

#[test]
fn a_status_keeps_a_bounded_trace_of_what_matched() {
    // 200 policies in scope: 40 match (Warn), 160 do not.
    let specs: Vec<(String, String)> = (0..200)
        .map(|i| {
            let value = if i % 5 == 0 { "GHA" } else { "other" };
            (
                format!("p{i:03}"),
                format!("{{action: Warn, message: m, conditions: [{{field: agent, operator: Equals, value: {value}}}]}}"),
            )
        })
        .collect();
    let rules = Rules::new(
        specs.iter().map(|(n, y)| (n.clone(), policy(y))),
        CapabilitySet::default(),
        mapping(),
    );
    let full = decide(&rules, &request("production", "dev"), tuesday());
    assert_eq!(full.trace.len(), 200);
    let kept = full.for_status();
    assert_eq!(kept.trace.len(), decision::STATUS_TRACE);
    assert!(
        kept.trace
            .iter()
            .all(|t| t.result == decision::TraceResult::Matched)
    );
    assert_eq!(kept.trace_omitted as usize, 200 - decision::STATUS_TRACE);
    assert_eq!(
        kept.matched_policies[..],
        full.matched_policies[..decision::STATUS_MATCHED]
    );
    assert_eq!(kept.matched_omitted as usize, 40 - decision::STATUS_MATCHED);
    let bytes = serde_json::to_vec(&kept).unwrap().len();
    assert!(bytes < 8 * 1024, "{bytes} bytes");
    // Nothing else is dropped.
    let moment = chrono::DateTime::UNIX_EPOCH;
    assert_eq!(
        Decision {
            trace_omitted: 0,
            matched_omitted: 0,
            evaluated_at: moment,
            ..kept.without_detail()
        },
        Decision {
            evaluated_at: moment,
            ..full.without_detail()
        }
    );
    // Without detail twice is without detail once; another detail is another decision.
    assert_eq!(
        kept.without_detail().without_detail(),
        kept.without_detail()
    );
    assert_ne!(kept.without_detail(), full.without_detail());
    // What is kept in memory has no detail; the counts stay.
    let slim = kept.without_detail();
    assert!(slim.trace.is_empty() && slim.matched_policies.is_empty());
    assert_eq!(slim.trace_omitted, kept.trace_omitted);
}

#[test]
fn the_next_opening_looks_again_only_at_what_time_can_change() {
    let night = utc("2026-11-24T01:00:00Z"); // 02:00 in Paris, a Tuesday
    let at = |ps: &[(&str, &str)]| decide(&rules(ps), &request("production", "adm"), night);
    let before_nine = "{action: Deny, priority: 1, timeZone: Europe/Paris, conditions: [{field: deployment_hour, operator: LessThan, value: 9}]}";
    // Lifts at 09:00 Paris (08:00Z), whatever else is in force that did not match.
    let d = at(&[
        ("night", before_nine),
        (
            "other",
            "{action: Deny, priority: 5, conditions: [{field: agent, operator: Equals, value: nobody}]}",
        ),
    ]);
    assert_eq!(d.next_window_opens_at, Some(utc("2026-11-24T08:00:00Z")));
    // Time never lifts it: never (a week is enough to know).
    let d = at(&[(
        "always",
        "{action: Deny, priority: 1, timeZone: Europe/Paris, conditions: [{field: deployment_hour, operator: GreaterThan, value: -1}]}",
    )]);
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.next_window_opens_at, None);
    // Lifted at 09:00, but then a Deny it kept from being reached refuses: never.
    let d = at(&[
        ("night", before_nine),
        ("later", "{action: Deny, priority: 5, message: not ever}"),
    ]);
    assert_eq!(d.trace[1].result, decision::TraceResult::NotReached);
    assert_eq!(d.next_window_opens_at, None);
    // Only on Sundays: five days ahead (Sunday 00:00 Paris is Saturday 23:00Z).
    let d = at(&[(
        "weekdays",
        "{action: Deny, priority: 1, timeZone: Europe/Paris, conditions: [{field: deployment_weekday, operator: NotEquals, value: sunday}]}",
    )]);
    assert_eq!(d.next_window_opens_at, Some(utc("2026-11-28T23:00:00Z")));
    // A half-hour zone: its hours turn at :30 UTC.
    let d = at(&[(
        "kolkata",
        "{action: Deny, priority: 1, timeZone: Asia/Kolkata, conditions: [{field: deployment_hour, operator: LessThan, value: 9}]}",
    )]);
    // 01:00Z is 06:30 in Kolkata; 09:00 there is 03:30Z.
    assert_eq!(d.next_window_opens_at, Some(utc("2026-11-24T03:30:00Z")));
}
