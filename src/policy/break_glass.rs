//! Break-glass: what a verified break-glass stamp lifts from a Decision. It lifts windows,
//! blackouts, `Deny` policies, blocked actions and approval requirements — except those of
//! policies marked `bypassable: false` — and the unverified-requester check (nobody approves).
//! It never lifts evaluation errors, unavailable capabilities or missing permissions.

use super::decision::{Decision, Outcome, ViolationKind};
use super::rules::Rules;

fn bypassable(rules: &Rules, source: &str) -> bool {
    match source.strip_prefix("policy/") {
        Some(name) => rules.policy(name).is_none_or(|p| p.spec.bypassable),
        None => true,
    }
}

/// Marks what in `decision` a break-glass would lift: the one place that decides it (the
/// operator applies it, `kubectl dvo status` advises it, the webhook refuses a break-glass that
/// would lift nothing).
pub fn mark(rules: &Rules, decision: &mut Decision) {
    let liftable = |kind: ViolationKind| {
        matches!(
            kind,
            ViolationKind::PolicyDenied
                | ViolationKind::BlockedAction
                | ViolationKind::OutsideWindow
                | ViolationKind::Blackout
                | ViolationKind::UnverifiedRequester
        )
    };
    for v in &mut decision.violations {
        v.break_glass_lifts = liftable(v.kind) && bypassable(rules, &v.source);
    }
    for r in &mut decision.approval_requirements {
        r.break_glass_lifts = bypassable(rules, &r.source);
    }
}

/// Whether a break-glass would lift anything of `decision` (as [`mark`] marked it).
pub fn would_lift(decision: &Decision) -> bool {
    decision.violations.iter().any(|v| v.break_glass_lifts)
        || decision
            .approval_requirements
            .iter()
            .any(|r| r.break_glass_lifts)
}

/// `decision` as break-glass by `by` (for `reason`) leaves it, and what it lifted (empty: the
/// break-glass changed nothing).
pub fn apply(
    rules: &Rules,
    mut decision: Decision,
    by: &str,
    reason: &str,
) -> (Decision, Vec<String>) {
    mark(rules, &mut decision);
    let mut lifted: Vec<String> = vec![];
    decision.violations.retain(|v| {
        if v.break_glass_lifts {
            lifted.push(format!("{:?} ({})", v.kind, v.source));
        }
        !v.break_glass_lifts
    });
    decision.approval_requirements.retain(|r| {
        if r.break_glass_lifts {
            lifted.push(format!("approval ({})", r.source));
        }
        !r.break_glass_lifts
    });
    if !decision.violations.iter().any(|v| v.is_temporal()) {
        decision.next_window_opens_at = None;
    }
    decision.outcome = if !decision.violations.is_empty() {
        Outcome::Deny
    } else if !decision.manual_instructions.is_empty() {
        Outcome::ManualActionRequired
    } else if !decision.approval_requirements.is_empty() {
        Outcome::RequireApproval
    } else {
        Outcome::Allow
    };
    let said = if lifted.is_empty() {
        "nothing".to_owned()
    } else {
        lifted.join(", ")
    };
    decision
        .warnings
        .push(format!("break-glass by {by} ({reason}) lifted {said}"));
    (decision, lifted)
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use serde_json::json;

    use super::*;
    use crate::capability::CapabilitySet;
    use crate::crd::AgentDeployment;
    use crate::identity::Identity;
    use crate::policy::{Request, decide};

    fn rules(policies: &[(&str, serde_json::Value)]) -> Rules {
        Rules::new(
            policies
                .iter()
                .map(|(n, spec)| (n.to_string(), serde_json::from_value(spec.clone()).unwrap())),
            CapabilitySet::new(std::iter::empty()).unwrap(),
            crate::yaml::from_str(include_str!("../../examples/role-mapping.yaml")).unwrap(),
        )
    }

    fn request(requester: Option<&str>) -> Request {
        let ad: AgentDeployment = serde_json::from_value(json!({
            "apiVersion": "dvo.caat.io/v1alpha1", "kind": "AgentDeployment",
            "metadata": {"name": "gha", "namespace": "team"},
            "spec": {"agent": "GHA", "platform": "langchain", "environment": "production",
                "template": {"spec": {"containers": [{"name": "a", "image": "a:1"}]}}},
        }))
        .unwrap();
        Request {
            namespace: "team".into(),
            labels: Default::default(),
            spec: ad.spec,
            requester: requester.map(|u| Identity {
                username: u.into(),
                uid: None,
                groups: vec!["a7c4e2b9-1d3f-4a6b-8e5c-9f0a1b2c3d4e".into()],
            }),
            staging_validated: true,
        }
    }

    /// (case, policies, requester, outcome after break-glass, violations left).
    type Case<'a> = (
        &'a str,
        Vec<(&'a str, serde_json::Value)>,
        Option<&'a str>,
        Outcome,
        usize,
    );

    /// A Saturday inside the blackout.
    fn now() -> DateTime<Utc> {
        "2026-12-26T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn lifts_time_deny_and_approvals_but_never_non_bypassable_policies() {
        let freeze = json!({"action": "Deny", "blackouts": [{"start": "2026-12-20", "end": "2027-01-02", "reason": "freeze"}]});
        let approve = json!({"action": "RequireApproval", "approval": {"roles": ["release_manager"], "minApprovals": 2}});
        let mut hard = json!({"action": "Deny", "conditions": [{"field": "agent", "operator": "Equals", "value": "GHA"}], "bypassable": false});
        let table: [Case; 4] = [
            (
                "blackout and approvals lifted",
                vec![("freeze", freeze.clone()), ("approve", approve.clone())],
                Some("dev-dana"),
                Outcome::Allow,
                0,
            ),
            (
                "unknown requester lifted too",
                vec![("approve", approve.clone())],
                None,
                Outcome::Allow,
                0,
            ),
            (
                "a non-bypassable deny stays",
                vec![("hard", hard.clone()), ("approve", approve.clone())],
                Some("dev-dana"),
                Outcome::Deny,
                1,
            ),
            (
                "non-bypassable approvals stay",
                vec![("approve", {
                    let mut a = approve.clone();
                    a["bypassable"] = json!(false);
                    a
                })],
                Some("dev-dana"),
                Outcome::RequireApproval,
                0,
            ),
        ];
        for (case, policies, requester, outcome, violations) in table {
            let rules = rules(&policies);
            let before = decide(&rules, &request(requester), now());
            assert_ne!(before.outcome, Outcome::Allow, "{case}: something to lift");
            let (after, lifted) = apply(&rules, before, "alice-admin", "INC-1");
            assert!(!lifted.is_empty(), "{case}");
            assert_eq!(after.outcome, outcome, "{case}: {after:#?}");
            // Applied again, it lifts nothing more, and says so.
            let (again, nothing) = apply(&rules, after.clone(), "alice-admin", "INC-1");
            assert!(nothing.is_empty(), "{case}: {nothing:?}");
            assert_eq!(
                again.warnings.last().map(String::as_str),
                Some("break-glass by alice-admin (INC-1) lifted nothing")
            );
            assert_eq!(after.violations.len(), violations, "{case}");
            assert!(
                after
                    .warnings
                    .iter()
                    .any(|w| w.starts_with("break-glass by alice-admin (INC-1) lifted")),
                "{case}"
            );
        }
        hard["action"] = json!("Warn");
        let rules = rules(&[("hard", hard)]);
        let (after, _) = apply(
            &rules,
            decide(&rules, &request(Some("dev-dana")), now()),
            "a",
            "b",
        );
        assert!(after.warnings.last().unwrap().ends_with("lifted approval (permission/deploy_production), approval (capability/deploy-to-production)"), "{:?}", after.warnings);
    }

    #[test]
    fn what_break_glass_lifts_is_marked_by_kind_and_bypassable() {
        let rules = rules(&[
            ("soft", json!({"action": "Deny"})),
            ("hard", json!({"action": "Deny", "bypassable": false})),
        ]);
        let v = |source: &str, kind: ViolationKind| crate::policy::decision::Violation {
            source: source.into(),
            kind,
            message: String::new(),
            break_glass_lifts: false,
        };
        // (violation, lifted)
        let table = [
            (v("policy/soft", ViolationKind::PolicyDenied), true),
            (v("policy/hard", ViolationKind::PolicyDenied), false),
            (v("policy/soft", ViolationKind::OutsideWindow), true),
            (v("policy/soft", ViolationKind::Blackout), true),
            (v("policy/soft", ViolationKind::BlockedAction), true),
            (
                v(
                    "permission/deploy_production",
                    ViolationKind::UnverifiedRequester,
                ),
                true,
            ),
            (
                v(
                    "capability/deploy-langchain",
                    ViolationKind::CapabilityUnavailable,
                ),
                false,
            ),
        ];
        for (violation, lifted) in table {
            let mut d = decide(&rules, &request(Some("dev-dana")), now());
            d.violations = vec![violation.clone()];
            d.approval_requirements.clear();
            mark(&rules, &mut d);
            assert_eq!(d.violations[0].break_glass_lifts, lifted, "{violation:?}");
            assert_eq!(would_lift(&d), lifted, "{violation:?}");
        }
    }
}
