//! The result of `decide()`: what happens to one AgentDeployment spec, and why.

use chrono::{DateTime, Utc};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crd::deployment_policy::{Notify, Operator, PolicyAction, Requirement};
use crate::identity::Role;

/// What happens to the spec.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum Outcome {
    /// Roll out now.
    Allow,
    /// Roll out once every approval requirement has its quorum.
    RequireApproval,
    /// A person must act; nothing is rolled out.
    ManualActionRequired,
    /// Refused; see the violations (and `nextWindowOpensAt` for a closed window).
    Deny,
}

/// The full decision, as recorded in `AgentDeployment.status.decision`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// What happens to the spec.
    pub outcome: Outcome,
    /// The moment the decision was made for (time conditions, windows and blackouts).
    pub evaluated_at: DateTime<Utc>,
    /// Policies whose conditions matched, in evaluation order, with the reason each matched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matched_policies: Vec<MatchedPolicy>,
    /// Everything that refuses the spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<Violation>,
    /// Warnings from `Warn` policies, ignored policy errors and degraded capabilities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Approvals the spec needs, each with its own quorum.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approval_requirements: Vec<ApprovalRequirement>,
    /// Steps that matching policies require.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requirements: Vec<Requirement>,
    /// Recipients gathered from matching policies.
    #[serde(default, skip_serializing_if = "Notify::is_empty")]
    pub notify: Notify,
    /// Steps skipped because their capability is disabled with fallback `Skip`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_steps: Vec<StepNote>,
    /// Steps left out because their capability is disabled with fallback `Degrade`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub degraded_steps: Vec<StepNote>,
    /// What a person must do, when the outcome is `ManualActionRequired`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manual_instructions: Vec<String>,
    /// For a spec refused only by time (windows, blackouts, time conditions): the first moment
    /// at which it would no longer be refused for that reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_window_opens_at: Option<DateTime<Utc>>,
    /// Every policy in scope, in evaluation order, with the conditions that held and did not.
    /// In an AgentDeployment's status: the policies that matched or failed to evaluate first,
    /// then those that did not match while there is room, at most [`STATUS_TRACE`] in all
    /// (`dvo evaluate` shows the whole trace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trace: Vec<PolicyTrace>,
    /// How many policies in scope the trace leaves out (in status: those that did not match,
    /// were disabled or not reached, and any beyond the limit).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub trace_omitted: u32,
    /// How many matched policies `matchedPolicies` leaves out (in status, beyond the limit).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub matched_omitted: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// How many policies an AgentDeployment's status traces at most.
pub const STATUS_TRACE: usize = 8;
/// How many matched policies an AgentDeployment's status names at most.
pub const STATUS_MATCHED: usize = 16;

/// Which entries of a trace (given by their results, in order) a status keeps: those that
/// matched or failed to evaluate, and those that did not match while there is room, at most
/// [`STATUS_TRACE`] in all.
pub(super) fn kept_for_status(results: &[TraceResult]) -> Vec<usize> {
    let decisive = |r: &TraceResult| {
        matches!(
            r,
            TraceResult::Matched | TraceResult::ErrorFailed | TraceResult::ErrorIgnored
        )
    };
    // Room left for policies that did not match, once those that did are in.
    let mut room = STATUS_TRACE.saturating_sub(results.iter().filter(|r| decisive(r)).count());
    results
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            decisive(r)
                || (**r == TraceResult::NotMatched && room > 0 && {
                    room = room.saturating_sub(1);
                    true
                })
        })
        .map(|(at, _)| at)
        .take(STATUS_TRACE)
        .collect()
}

pub(super) fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Decision {
    /// The decision as an AgentDeployment's status keeps it, bounded whatever the number of
    /// policies: the trace of the policies that matched or failed to evaluate, and of those
    /// that did not match while there is room (at most [`STATUS_TRACE`] in all), and how many
    /// it leaves out.
    pub fn for_status(&self) -> Decision {
        let results: Vec<TraceResult> = self.trace.iter().map(|t| t.result).collect();
        let kept: Vec<PolicyTrace> = kept_for_status(&results)
            .into_iter()
            .filter_map(|at| self.trace.get(at).cloned())
            .collect();
        let omitted = self.trace.len().saturating_sub(kept.len());
        let matched = self.matched_policies.len();
        Decision {
            trace: kept,
            trace_omitted: count(omitted).saturating_add(self.trace_omitted),
            matched_policies: self
                .matched_policies
                .iter()
                .take(STATUS_MATCHED)
                .cloned()
                .collect(),
            matched_omitted: count(matched.saturating_sub(STATUS_MATCHED))
                .saturating_add(self.matched_omitted),
            ..self.clone()
        }
    }

    /// The decision without its detail: the trace and the matched policies are dropped, and
    /// the moment (which no comparison looks at) is replaced by a fingerprint of them. What the
    /// operator keeps of a status in memory, and what tells whether a decision is new: a change
    /// of detail alone (a renamed policy) is still a change.
    pub fn without_detail(&self) -> Decision {
        // Fingerprints are moments from 2^41 s on (the year 71000 and after): no decision is
        // made then, so a decision that carries one has been stripped already.
        const FROM: i64 = 1 << 41;
        let stripped = self.evaluated_at.timestamp() >= FROM;
        let evaluated_at = if stripped {
            self.evaluated_at
        } else {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            serde_json::to_vec(&(&self.trace, &self.matched_policies))
                .unwrap_or_default()
                .hash(&mut h);
            // 40 bits of it as seconds after FROM: a moment chrono represents.
            let seconds = i64::try_from(h.finish() >> 24)
                .unwrap_or_default()
                .saturating_add(FROM);
            DateTime::<Utc>::from_timestamp(seconds, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
        };
        Decision {
            evaluated_at,
            trace: vec![],
            matched_policies: vec![],
            ..self.clone()
        }
    }
}

/// A policy whose conditions matched.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MatchedPolicy {
    /// Policy name.
    pub name: String,
    /// Its action.
    pub action: PolicyAction,
    /// Why it matched, in words.
    pub reason: String,
}

/// What kind of refusal a violation is.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum ViolationKind {
    /// A `Deny` policy matched.
    PolicyDenied,
    /// The action is in a matching policy's `blockedActions`.
    BlockedAction,
    /// Outside every allowed window of a matching policy.
    OutsideWindow,
    /// Inside a blackout of a matching policy.
    Blackout,
    /// A policy could not be evaluated and its `failurePolicy` is `Fail`.
    EvaluationError,
    /// A needed capability is disabled with fallback `Error`.
    CapabilityUnavailable,
    /// The requester lacks the permission for the environment.
    PermissionDenied,
    /// Approval is required but the requester is unknown: self-approval could not be ruled out.
    UnverifiedRequester,
}

/// One reason the spec is refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Violation {
    /// What refused it: `policy/NAME`, `capability/NAME` or `permission/NAME`.
    pub source: String,
    /// The kind of refusal.
    pub kind: ViolationKind,
    /// The message for people.
    pub message: String,
    /// Whether a break-glass by a holder of `bypass_approval` lifts it (decided by the core:
    /// windows, blackouts, `Deny` policies, blocked actions and an unverified requester, unless
    /// the policy says `bypassable: false`).
    #[serde(default)]
    pub break_glass_lifts: bool,
}

impl Violation {
    /// Whether the refusal depends only on the time of evaluation.
    pub fn is_temporal(&self) -> bool {
        matches!(
            self.kind,
            ViolationKind::OutsideWindow | ViolationKind::Blackout
        )
    }
}

/// One approval requirement: `minApprovals` distinct people holding one of `roles`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRequirement {
    /// What asked for it: `policy/NAME`, `capability/NAME` or `permission/NAME`.
    pub source: String,
    /// Roles whose human holders may approve.
    pub roles: Vec<Role>,
    /// Distinct people needed.
    pub min_approvals: i32,
    /// How long the request stays open, e.g. `24h`.
    pub expiry: String,
    /// Whether the requester may count.
    pub allow_self_approval: bool,
    /// Whether only approvals that proved multi-factor authentication count.
    #[serde(default)]
    pub require_mfa: bool,
    /// Whether a break-glass lifts it (unless the policy says `bypassable: false`).
    #[serde(default)]
    pub break_glass_lifts: bool,
}

/// A step changed by a capability fallback.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepNote {
    /// The capability.
    pub capability: String,
    /// Its message.
    pub message: String,
}

/// How one policy in scope was evaluated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTrace {
    /// Policy name.
    pub policy: String,
    /// Its priority.
    pub priority: i32,
    /// Its action.
    pub action: PolicyAction,
    /// What came of it.
    pub result: TraceResult,
    /// Each condition with the value found and whether it held.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<ConditionTrace>,
    /// Extra detail (the error, the window or blackout that applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What came of one policy in scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TraceResult {
    /// Conditions held: the action applied.
    Matched,
    /// Conditions did not hold.
    NotMatched,
    /// The policy is disabled.
    Disabled,
    /// Evaluation failed; `failurePolicy: Fail` turned it into a violation.
    ErrorFailed,
    /// Evaluation failed; `failurePolicy: Ignore` skipped it.
    ErrorIgnored,
    /// An earlier `Allow` or `Deny` ended evaluation before this policy.
    NotReached,
}

/// How one condition was evaluated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConditionTrace {
    /// The field path.
    pub field: String,
    /// The operator.
    pub operator: Operator,
    /// The policy's value.
    #[schemars(schema_with = "crate::crd::deployment_policy::any_value_schema")]
    pub expected: serde_json::Value,
    /// The value found in the context (null when missing).
    #[schemars(schema_with = "crate::crd::deployment_policy::any_value_schema")]
    pub actual: serde_json::Value,
    /// Whether it held.
    pub held: bool,
    /// The evaluation error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
