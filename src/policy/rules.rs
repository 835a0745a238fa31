//! Policies compiled once into an immutable evaluation environment, and `validate()`.

use std::collections::{BTreeMap, HashMap};

use chrono_tz::Tz;

use super::condition;
use super::time::{Period, Window, parse_tz};
use crate::capability::CapabilitySet;
use crate::crd::AgentDeploymentSpec;
use crate::crd::deployment_policy::{DeploymentPolicySpec, PolicyAction, PolicyScope};
use crate::identity::{Role, RoleMapping};

/// Context fields whose value depends on the moment of evaluation.
const TIME_FIELDS: &[&str] = &[
    "deployment_hour",
    "deployment_weekday",
    "is_weekend",
    "timestamp",
];

/// Where a condition that does not read the time is shared: its number among the distinct
/// such conditions of the rules (the same field, operator and value), and its field's among
/// their distinct fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Shared {
    pub condition: usize,
    pub field: usize,
}

/// One policy with its regexes, time zones, windows and blackouts parsed.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Object name.
    pub name: String,
    /// `policy/<name>`: what its violations and approval requirements name as their source.
    pub(super) source: String,
    /// What it says when it denies or warns: its message, or words that name it.
    pub(super) message: String,
    /// The policy as written.
    pub spec: DeploymentPolicySpec,
    /// Parsed form, or why the policy cannot be evaluated.
    pub(super) parsed: Result<Parsed, String>,
}

#[derive(Clone, Debug)]
pub(super) struct Parsed {
    pub conditions: Vec<condition::Compiled>,
    /// For each condition that does not read the time: where it is shared among the rules it
    /// is in, so that a decision evaluates each distinct condition, and looks up each distinct
    /// field, once however many policies repeat it.
    pub shared: Vec<Option<Shared>>,
    pub windows: Vec<Window>,
    pub blackouts: Vec<Period>,
    pub tz: Tz,
    /// Whether a condition reads a time field (its match can change with time alone).
    pub time_dependent: bool,
    /// Whether a condition reads `timestamp` (whose match is not periodic in the week).
    pub reads_timestamp: bool,
}

impl Policy {
    /// Compiles a policy. A policy that does not compile still takes part: evaluating it is an
    /// error, which its `failurePolicy` decides about.
    pub fn new(name: impl Into<String>, spec: DeploymentPolicySpec) -> Policy {
        let parsed = parse(&spec).map_err(|errors| errors.join("; "));
        let name: String = name.into();
        let message = match (&spec.message, spec.action) {
            (Some(m), _) => m.clone(),
            (None, PolicyAction::Warn) => format!("warning from policy {name}"),
            (None, _) => format!("denied by policy {name}"),
        };
        Policy {
            source: format!("policy/{name}"),
            message,
            name,
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
            shared: vec![None; conditions.len()],
            time_dependent: conditions
                .iter()
                .any(|c| TIME_FIELDS.contains(&c.field.as_str())),
            reads_timestamp: conditions.iter().any(|c| c.field == "timestamp"),
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
    /// Positions (in evaluation order) of the policies scoped to each environment named in a
    /// scope, so that a decision never visits a policy scoped to other environments.
    by_environment: HashMap<String, Vec<usize>>,
    /// Positions of the policies scoped to every environment.
    any_environment: Vec<usize>,
    /// Position of each policy by name.
    by_name: HashMap<String, usize>,
    /// How many distinct conditions that do not read the time the policies hold.
    pub(super) shared_conditions: usize,
    /// How many distinct fields those conditions read.
    pub(super) shared_fields: usize,
}

/// Whether a policy with `scope` applies to `spec` in `namespace` (an empty list, or `*` in
/// it, matches everything).
pub fn in_scope(scope: &PolicyScope, namespace: &str, spec: &AgentDeploymentSpec) -> bool {
    listed(&scope.environments, &spec.environment)
        && in_scope_but_environment(scope, namespace, spec)
}

/// [`in_scope`] but for the environment (which the environment index has already matched).
fn in_scope_but_environment(
    scope: &PolicyScope,
    namespace: &str,
    spec: &AgentDeploymentSpec,
) -> bool {
    listed(&scope.platforms, spec.platform.as_str())
        && listed(&scope.agents, &spec.agent)
        && listed(&scope.namespaces, namespace)
        && listed(&scope.actions, spec.action.as_str())
}

/// Whether a scope's `list` takes `v` (an empty list, or `*` in it, takes everything).
fn listed(list: &[String], v: &str) -> bool {
    list.is_empty() || list.iter().any(|x| x == "*" || x == v)
}

/// Which AgentDeployments a change of the evaluation environment may decide differently.
#[derive(Clone, Debug, PartialEq)]
pub enum Affected {
    /// None: the policies, capabilities and role mapping are what they were.
    Nothing,
    /// Those in any of these scopes (of the policies added, removed or changed, before and
    /// after the change).
    Scopes(Vec<PolicyScope>),
    /// All of them (capabilities or the role mapping changed).
    Everything,
}

impl Affected {
    /// Whether an AgentDeployment with `spec` in `namespace` may be decided differently.
    pub fn includes(&self, namespace: &str, spec: &AgentDeploymentSpec) -> bool {
        match self {
            Affected::Nothing => false,
            Affected::Everything => true,
            Affected::Scopes(scopes) => scopes.iter().any(|s| in_scope(s, namespace, spec)),
        }
    }
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
        let shared = share_conditions(&mut policies);
        Rules::compiled(policies, capabilities, mapping, shared)
    }

    /// The environment of these policies, already compiled and in evaluation order.
    fn compiled(
        policies: Vec<Policy>,
        capabilities: CapabilitySet,
        mapping: RoleMapping,
        (shared_conditions, shared_fields): (usize, usize),
    ) -> Rules {
        let mut by_environment: HashMap<String, Vec<usize>> = HashMap::new();
        let mut any_environment = Vec::new();
        for (at, p) in policies.iter().enumerate() {
            let envs = &p.spec.scope.environments;
            if envs.is_empty() || envs.iter().any(|e| e == "*") {
                any_environment.push(at);
                continue;
            }
            let mut named: Vec<&String> = envs.iter().collect();
            named.sort();
            named.dedup();
            for env in named {
                by_environment.entry(env.clone()).or_default().push(at);
            }
        }
        let mut by_name = HashMap::new();
        for (at, p) in policies.iter().enumerate() {
            by_name.entry(p.name.clone()).or_insert(at);
        }
        Rules {
            policies,
            capabilities,
            mapping,
            by_environment,
            any_environment,
            by_name,
            shared_conditions,
            shared_fields,
        }
    }

    /// The same environment with only the policies `keep` chooses (nothing is compiled again,
    /// and shared conditions keep their numbers).
    pub(super) fn only(&self, keep: impl Fn(&Policy) -> bool) -> Rules {
        Rules::compiled(
            self.policies.iter().filter(|p| keep(p)).cloned().collect(),
            self.capabilities.clone(),
            self.mapping.clone(),
            (self.shared_conditions, self.shared_fields),
        )
    }

    /// Whether no two policies share a name.
    pub(super) fn unique_names(&self) -> bool {
        self.by_name.len() == self.policies.len()
    }

    /// The policy named `name` (the first in evaluation order, should two share it).
    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.by_name.get(name).and_then(|at| self.policies.get(*at))
    }

    /// The policies that may apply to `spec` in `namespace`, in evaluation order: those
    /// scoped to its environment or to all, then filtered by the rest of their scope.
    pub fn in_scope<'a>(
        &'a self,
        namespace: &'a str,
        spec: &'a AgentDeploymentSpec,
    ) -> impl Iterator<Item = &'a Policy> + 'a {
        let named = self
            .by_environment
            .get(&spec.environment)
            .map_or(&[][..], Vec::as_slice);
        Merged {
            a: named.iter().peekable(),
            b: self.any_environment.iter().peekable(),
        }
        .filter_map(|at| self.policies.get(at))
        .filter(move |p| in_scope_but_environment(&p.spec.scope, namespace, spec))
    }

    /// Which AgentDeployments may be decided differently under `new` than under `self`.
    pub fn affected_by(&self, new: &Rules) -> Affected {
        if self.capabilities != new.capabilities || self.mapping != new.mapping {
            return Affected::Everything;
        }
        let specs = |r: &Rules| -> BTreeMap<String, DeploymentPolicySpec> {
            r.policies
                .iter()
                .map(|p| (p.name.clone(), p.spec.clone()))
                .collect()
        };
        let (before, after) = (specs(self), specs(new));
        let mut scopes: Vec<PolicyScope> = Vec::new();
        for (name, spec) in &before {
            if after.get(name) != Some(spec) {
                scopes.push(spec.scope.clone());
            }
        }
        for (name, spec) in &after {
            if before.get(name) != Some(spec) && !scopes.contains(&spec.scope) {
                scopes.push(spec.scope.clone());
            }
        }
        if scopes.is_empty() {
            Affected::Nothing
        } else {
            Affected::Scopes(scopes)
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

/// Numbers the distinct conditions that do not read the time (same field, operator and value)
/// across `policies`, and their distinct fields; returns how many of each there are.
fn share_conditions(policies: &mut [Policy]) -> (usize, usize) {
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    let mut fields: HashMap<String, usize> = HashMap::new();
    for parsed in policies.iter_mut().filter_map(|p| p.parsed.as_mut().ok()) {
        for (c, shared) in parsed.conditions.iter().zip(parsed.shared.iter_mut()) {
            if TIME_FIELDS.contains(&c.field.as_str()) {
                continue;
            }
            // The operator and the value as JSON (numbers as written: 1 and 1.0 stay apart,
            // which only costs a second evaluation).
            let key = (c.field.clone(), format!("{:?} {}", c.operator, c.value));
            let next = (seen.len(), fields.len());
            *shared = Some(Shared {
                condition: *seen.entry(key).or_insert(next.0),
                field: *fields.entry(c.field.clone()).or_insert(next.1),
            });
        }
    }
    (seen.len(), fields.len())
}

/// Two ascending lists of positions merged into one ascending list (a position is in at most
/// one of them).
struct Merged<'a> {
    a: std::iter::Peekable<std::slice::Iter<'a, usize>>,
    b: std::iter::Peekable<std::slice::Iter<'a, usize>>,
}

impl Iterator for Merged<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match (self.a.peek(), self.b.peek()) {
            (Some(x), Some(y)) if x <= y => self.a.next().copied(),
            (Some(_), Some(_)) | (None, Some(_)) => self.b.next().copied(),
            (Some(_), None) => self.a.next().copied(),
            (None, None) => None,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let (a, b) = (self.a.size_hint(), self.b.size_hint());
        (
            a.0.saturating_add(b.0),
            a.1.zip(b.1).and_then(|(x, y)| x.checked_add(y)),
        )
    }
}

/// The human roles among `roles`.
pub(super) fn human(roles: impl IntoIterator<Item = Role>) -> Vec<Role> {
    roles.into_iter().filter(|r| r.is_human()).collect()
}
