//! `DeploymentPolicy`: one cluster-wide rule evaluated against every AgentDeployment in scope.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::DeployAction;
use crate::identity::Role;

/// A governance rule for AgentDeployments. Policies in scope are evaluated in `priority` order
/// (lower first; ties: `Deny` before other actions, then by name). The first matching `Allow` or
/// `Deny` ends evaluation; `RequireApproval`, `Warn` and `AuditOnly` accumulate.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dvo.caat.io",
    version = "v1alpha1",
    kind = "DeploymentPolicy",
    plural = "deploymentpolicies",
    shortname = "dpol",
    category = "dvo",
    status = "DeploymentPolicyStatus",
    derive = "PartialEq",
    doc = "A governance rule evaluated against every AgentDeployment in its scope.",
    printcolumn(name = "Action", type_ = "string", json_path = ".spec.action"),
    printcolumn(name = "Priority", type_ = "integer", json_path = ".spec.priority"),
    printcolumn(name = "Enabled", type_ = "boolean", json_path = ".spec.enabled"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.action != 'RequireApproval' || has(self.approval)")
    .message("spec.approval is required when action is RequireApproval")
    .field_path(".approval"))]
#[x_kube(validation = Rule::new("self.action == 'RequireApproval' || !has(self.approval)")
    .message("spec.approval is only allowed when action is RequireApproval")
    .field_path(".approval"))]
#[serde(rename_all = "camelCase")]
pub struct DeploymentPolicySpec {
    /// Evaluation order: lower numbers are evaluated first. Default 100.
    #[serde(default = "default_priority")]
    #[schemars(range(min = 0, max = 1000000))]
    pub priority: i32,

    /// A disabled policy is listed in the trace but never matches. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// What the policy is for, shown in traces and to approvers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// Which AgentDeployments the policy applies to. An empty list or `"*"` means all.
    #[serde(default)]
    pub scope: PolicyScope,

    /// Conditions over the evaluation context, combined by `match`. No conditions: the policy
    /// matches every AgentDeployment in scope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub conditions: Vec<PolicyCondition>,

    /// `All` (every condition must hold) or `Any` (at least one). Default `All`.
    #[serde(default, rename = "match")]
    pub match_: MatchMode,

    /// What a match means: `Allow` or `Deny` end evaluation; `RequireApproval`, `Warn` and
    /// `AuditOnly` accumulate.
    pub action: PolicyAction,

    /// The message shown when the policy matches (the reason of a `Deny`, the text of a `Warn`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,

    /// Who must approve, when `action` is `RequireApproval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalPolicy>,

    /// Allowed deployment windows. When any are given, a matching deployment outside every
    /// window is a violation, and the decision says when the next window opens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub windows: Vec<TimeWindow>,

    /// Blackout periods: a matching deployment inside one is a violation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub blackouts: Vec<Blackout>,

    /// Actions this policy refuses outright for matching deployments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    #[x_kube(validation = Rule::new("self.all(x, self.exists_one(y, x == y))").message("blockedActions must not repeat an action"))]
    pub blocked_actions: Vec<DeployAction>,

    /// Steps that must run for matching deployments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    #[x_kube(validation = Rule::new("self.all(x, self.exists_one(y, x == y))").message("requirements must not repeat an entry"))]
    pub requirements: Vec<Requirement>,

    /// Who is told about matching deployments.
    #[serde(default, skip_serializing_if = "Notify::is_empty")]
    pub notify: Notify,

    /// IANA time zone in which this policy's conditions read `deployment_hour`,
    /// `deployment_weekday` and `is_weekend`. Default `UTC`.
    #[serde(default = "default_time_zone")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: String,

    /// What an evaluation error in this policy means: `Fail` (deny, the default) or `Ignore`
    /// (skip the policy, with a warning).
    #[serde(default)]
    pub failure_policy: FailurePolicy,

    /// Whether break-glass (`dvo.caat.io/break-glass` on an AgentDeployment, from a holder of
    /// `bypass_approval`) lets a spec through this policy: its Deny, blocked actions, windows,
    /// blackouts and approval. Set `false` for rules that must hold even in an emergency.
    /// Default true.
    #[serde(default = "bypassable_by_default")]
    pub bypassable: bool,
}

fn bypassable_by_default() -> bool {
    true
}

fn default_priority() -> i32 {
    100
}

fn default_true() -> bool {
    true
}

/// Which AgentDeployments a policy applies to. Each list is matched independently; an empty
/// list or one containing `"*"` matches everything.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyScope {
    /// Environment names, e.g. `production`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environments: Vec<String>,
    /// Platforms: `langchain`, `fastapi`, `copilot-studio`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
    /// Agent codes, e.g. `GHA`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
    /// Namespaces of the AgentDeployments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Actions: `deploy`, `rollback`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<String>,
}

/// One test over the evaluation context.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyCondition {
    /// Dotted path into the evaluation context, e.g. `environment`, `user.roles`,
    /// `labels.team` or any key of the AgentDeployment's `spec.context`. A missing field reads
    /// as null.
    #[schemars(
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_/-]+)*$"),
        length(max = 253)
    )]
    pub field: String,
    /// How the field is compared with `value`.
    pub operator: Operator,
    /// The value to compare with: a list for `In`/`NotIn`, a regular expression (whole-value
    /// match) for `Matches`, a number for `GreaterThan`/`LessThan`.
    #[schemars(schema_with = "any_value_schema")]
    pub value: serde_json::Value,
}

/// A schema node that accepts any JSON value (structural, via `x-kubernetes-preserve-unknown-fields`).
pub(crate) fn any_value_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

/// Comparison operators of policy conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Operator {
    /// The field equals the value (numbers compare by value: 1 equals 1.0).
    Equals,
    /// The field does not equal the value.
    NotEquals,
    /// The field equals one element of the list `value`.
    In,
    /// The field equals no element of the list `value`.
    NotIn,
    /// The field is a string matched whole by the regular expression `value`.
    Matches,
    /// The field is a number greater than `value`.
    GreaterThan,
    /// The field is a number less than `value`.
    LessThan,
    /// The field is a string containing the string `value`, or a list with an element equal to `value`.
    Contains,
}

/// How conditions combine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MatchMode {
    /// Every condition must hold.
    #[default]
    All,
    /// At least one condition must hold.
    Any,
}

/// What a matching policy does.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum PolicyAction {
    /// Allow and stop evaluating further policies.
    Allow,
    /// Deny and stop evaluating further policies.
    Deny,
    /// Require the approvals described in `approval`.
    RequireApproval,
    /// Allow, with a warning shown in status and to approvers.
    Warn,
    /// Record the match in the audit log only.
    AuditOnly,
}

/// Who must approve a matching deployment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalPolicy {
    /// Roles whose holders may approve. Service accounts never count as human approvers.
    #[schemars(length(min = 1, max = 6))]
    #[x_kube(validation = Rule::new("self.all(x, self.exists_one(y, x == y))").message("approval.roles must not repeat a role"))]
    pub roles: Vec<Role>,
    /// How many distinct people must approve. Default 1.
    #[serde(default = "default_min_approvals")]
    #[schemars(range(min = 1, max = 10))]
    pub min_approvals: i32,
    /// How long a request stays open, as a duration such as `24h`, `90m`, `1h30m` or `45s`.
    /// Default `24h`.
    #[serde(default = "default_expiry")]
    #[schemars(
        regex(pattern = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"),
        length(min = 2, max = 16)
    )]
    pub expiry: String,
    /// Whether the requester may approve their own deployment. Default false.
    #[serde(default)]
    pub allow_self_approval: bool,
    /// Whether an approval counts only when its approver proved multi-factor authentication:
    /// `kubectl annotate apr NAME dvo.caat.io/approve-token=<Entra ID access token>`, verified
    /// by the admission webhook (the token itself is never stored). Default false.
    #[serde(default)]
    pub require_mfa: bool,
}

fn default_min_approvals() -> i32 {
    1
}

fn default_expiry() -> String {
    "24h".to_owned()
}

/// Day of the week, in the window's time zone.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum Weekday {
    Monday,
    Tuesday,
    Wednesday,
    Thursday,
    Friday,
    Saturday,
    Sunday,
}

/// A recurring allowed window, in wall-clock time of `timeZone`. The window opens at `start`
/// (inclusive) and closes at `end` (exclusive) on each listed day; `start` after `end` wraps
/// past midnight, the window then belongs to the day it opens on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.start != self.end").message("window start and end must differ (use 00:00-24:00 for a whole day)"))]
pub struct TimeWindow {
    /// Days on which the window opens.
    #[schemars(length(min = 1, max = 7))]
    #[x_kube(validation = Rule::new("self.all(x, self.exists_one(y, x == y))").message("window days must not repeat a day"))]
    pub days: Vec<Weekday>,
    /// Opening time, `HH:MM` (24-hour).
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"), length(max = 5))]
    pub start: String,
    /// Closing time, `HH:MM` (24-hour); `24:00` means midnight at the end of the day.
    #[schemars(
        regex(pattern = r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$"),
        length(max = 5)
    )]
    pub end: String,
    /// IANA time zone of `start`, `end` and `days`, e.g. `America/New_York`. Default `UTC`.
    #[serde(default = "default_time_zone")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: String,
}

/// A period in which matching deployments are refused. `start` and `end` are both dates
/// (`YYYY-MM-DD`, the end day included) or both local date-times (`YYYY-MM-DDTHH:MM`, the end
/// excluded), in wall-clock time of `timeZone`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.start) == size(self.end)")
    .message("blackout start and end must both be dates (YYYY-MM-DD) or both date-times (YYYY-MM-DDTHH:MM)"))]
#[x_kube(validation = Rule::new("size(self.start) != size(self.end) || self.end >= self.start")
    .message(Message::Expression("'blackout end ' + self.end + ' is before its start ' + self.start".into())))]
pub struct Blackout {
    /// First day (`YYYY-MM-DD`) or moment (`YYYY-MM-DDTHH:MM`) of the blackout.
    #[schemars(
        regex(
            pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])(T([01][0-9]|2[0-3]):[0-5][0-9])?$"
        ),
        length(max = 16)
    )]
    pub start: String,
    /// Last day (included) or end moment (excluded) of the blackout, same form as `start`.
    #[schemars(
        regex(
            pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])(T([01][0-9]|2[0-3]):[0-5][0-9])?$"
        ),
        length(max = 16)
    )]
    pub end: String,
    /// IANA time zone of `start` and `end`. Default `UTC`.
    #[serde(default = "default_time_zone")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: String,
    /// Why deployments are frozen, shown in the violation.
    #[schemars(length(min = 1, max = 256))]
    pub reason: String,
}

fn default_time_zone() -> String {
    "UTC".to_owned()
}

/// A step a policy requires before a deployment counts as done.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum Requirement {
    /// The agent must pass validation.
    Validation,
    /// Integration tests must run and pass.
    Tests,
    /// The workload must pass its health check.
    HealthCheck,
}

/// Notification recipients.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Notify {
    /// Told when a matching deployment rolls out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub on_deploy: Vec<String>,
    /// Told when a matching deployment fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub on_failure: Vec<String>,
    /// Told when a matching deployment is refused by policy (a `Deny`, a window, a blackout or
    /// a blocked action: the AgentDeployment is Blocked). Only policies that name recipients
    /// here cause such a notice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub on_refusal: Vec<String>,
}

impl Notify {
    /// Whether there are no recipients at all.
    pub fn is_empty(&self) -> bool {
        self.on_deploy.is_empty() && self.on_failure.is_empty() && self.on_refusal.is_empty()
    }
}

/// What an evaluation error in a policy means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FailurePolicy {
    /// Deny, with the error as the reason (fail closed).
    #[default]
    Fail,
    /// Skip the policy and record a warning.
    Ignore,
}

/// Observed state of a DeploymentPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentPolicyStatus {
    /// The generation last checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`, or why the policy is not in force.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
