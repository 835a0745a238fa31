//! Policies compiled once into an immutable evaluation environment, and `validate()`.

use chrono_tz::Tz;

use super::condition;
use super::time::{Period, Window, parse_tz};
use crate::capability::CapabilitySet;
use crate::crd::deployment_policy::{DeploymentPolicySpec, PolicyAction};
use crate::identity::{Role, RoleMapping};

/// Context fields whose value depends on the moment of evaluation.
const TIME_FIELDS: &[&str] = &[
    "deployment_hour",
    "deployment_weekday",
    "is_weekend",
    "timestamp",
];

/// One policy with its regexes, time zones, windows and blackouts parsed.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Object name.
    pub name: String,
    /// The policy as written.
    pub spec: DeploymentPolicySpec,
    /// Parsed form, or why the policy cannot be evaluated.
    pub(super) parsed: Result<Parsed, String>,
}

#[derive(Clone, Debug)]
pub(super) struct Parsed {
    pub conditions: Vec<condition::Compiled>,
    pub windows: Vec<Window>,
    pub blackouts: Vec<Period>,
    pub tz: Tz,
    /// Whether a condition reads a time field (its match can change with time alone).
    pub time_dependent: bool,
}

impl Policy {
    /// Compiles a policy. A policy that does not compile still takes part: evaluating it is an
    /// error, which its `failurePolicy` decides about.
    pub fn new(name: impl Into<String>, spec: DeploymentPolicySpec) -> Policy {
        let parsed = parse(&spec).map_err(|errors| errors.join("; "));
        Policy {
            name: name.into(),
            spec,
            parsed,
        }
    }
}

fn parse(spec: &DeploymentPolicySpec) -> Result<Parsed, Vec<String>> {
    let mut errors = Vec::new();
    let e = &mut errors;
    let conditions: Vec<_> = spec
        .conditions
        .iter()
        .filter_map(|c| keep(e, condition::Compiled::new(&c.field, c.operator, &c.value)))
        .collect();
    let windows: Vec<_> = spec
        .windows
        .iter()
        .filter_map(|w| keep(e, Window::parse(w)))
        .collect();
    let blackouts: Vec<_> = spec
        .blackouts
        .iter()
        .filter_map(|b| keep(e, Period::parse(b)))
        .collect();
    let tz = keep(
        e,
        parse_tz(&spec.time_zone).map_err(|e| format!("timeZone: {e}")),
    );
    match (spec.action, &spec.approval) {
        (PolicyAction::RequireApproval, None) => errors
            .push("action RequireApproval needs spec.approval (roles and minApprovals)".into()),
        (PolicyAction::RequireApproval, Some(a)) => {
            if a.roles.is_empty() || a.roles.iter().all(|r| !r.is_human()) {
                errors.push(format!(
                    "approval.roles {:?} can never be satisfied: service accounts never count as human approvers; list a human role such as release_manager",
                    a.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>()
                ));
            }
            if a.min_approvals < 1 {
                errors.push("approval.minApprovals must be at least 1".into());
            }
            if let Err(e) = super::parse_expiry(&a.expiry) {
                errors.push(e);
            }
        }
        (_, Some(_)) => errors.push(format!(
            "spec.approval is only allowed with action RequireApproval, not {:?}",
            spec.action
        )),
        (_, None) => {}
    }
    let known = |list: &[String], allowed: &[&str], what: &str, errors: &mut Vec<String>| {
        for v in list {
            if v != "*" && !allowed.contains(&v.as_str()) {
                errors.push(format!(
                    "scope.{what}: unknown value {v:?} (expected one of {}, or \"*\")",
                    allowed.join(", ")
                ));
            }
        }
    };
    known(
        &spec.scope.platforms,
        &["langchain", "fastapi", "copilot-studio"],
        "platforms",
        &mut errors,
    );
    known(
        &spec.scope.actions,
        &["deploy", "rollback"],
        "actions",
        &mut errors,
    );
    match (errors.is_empty(), tz) {
        (true, Some(tz)) => Ok(Parsed {
            time_dependent: conditions
                .iter()
                .any(|c| TIME_FIELDS.contains(&c.field.as_str())),
            conditions,
            windows,
            blackouts,
            tz,
        }),
        _ => Err(errors),
    }
}

/// The value of `r`, or None with its error recorded.
fn keep<T>(errors: &mut Vec<String>, r: Result<T, String>) -> Option<T> {
    r.map_err(|e| errors.push(e)).ok()
}

/// Checks a DeploymentPolicy as the admission webhook does: every problem, each in words a
/// user understands. Ok when the policy can be evaluated.
pub fn validate(spec: &DeploymentPolicySpec) -> Result<(), Vec<String>> {
    parse(spec).map(|_| ())
}

/// The immutable evaluation environment: compiled policies in evaluation order, the capability
/// settings and the role mapping. Build it once, evaluate many requests against it.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    pub(super) policies: Vec<Policy>,
    pub(super) capabilities: CapabilitySet,
    pub(super) mapping: RoleMapping,
}

/// Evaluation order: priority (lower first), then `Deny` before other actions, then name.
fn order_key(p: &Policy) -> (i32, bool, &str) {
    (
        p.spec.priority,
        p.spec.action != PolicyAction::Deny,
        &p.name,
    )
}

impl Rules {
    /// Builds the environment from policies (name, spec), capability settings and the role mapping.
    pub fn new(
        policies: impl IntoIterator<Item = (String, DeploymentPolicySpec)>,
        capabilities: CapabilitySet,
        mapping: RoleMapping,
    ) -> Rules {
        let mut policies: Vec<Policy> = policies
            .into_iter()
            .map(|(n, s)| Policy::new(n, s))
            .collect();
        policies.sort_by(|a, b| order_key(a).cmp(&order_key(b)));
        Rules {
            policies,
            capabilities,
            mapping,
        }
    }

    /// The policies in evaluation order.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// The role mapping.
    pub fn mapping(&self) -> &RoleMapping {
        &self.mapping
    }
}

/// The human roles among `roles`.
pub(super) fn human(roles: impl IntoIterator<Item = Role>) -> Vec<Role> {
    roles.into_iter().filter(|r| r.is_human()).collect()
}
