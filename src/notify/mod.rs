//! Notifications: approvers and people told where they are (Slack, Teams, e-mail, a webhook).
//!
//! Delivery is driven from the audit log, as an outbox: each channel reads the entries after
//! its cursor, turns each into at most one message ([`notice`], then [`message`], both pure),
//! sends it, and moves its cursor past it. A restart or a leader change therefore loses nothing
//! and repeats nothing that was acknowledged; a channel that is down holds back only itself,
//! never a rollout or another channel.

pub mod config;
pub mod render;
pub mod send;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::audit::{Entry, EventType};
use crate::crd::approval_request::RequirementSpec;
use crate::identity::{Role, RoleMapping};
pub use config::{Channel, Config, Endpoint};

/// What a notification is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Kind {
    /// A change waits for approval (to those who may approve it).
    ApprovalRequested,
    /// Its approvals are complete.
    ApprovalGranted,
    /// An eligible approver rejected it.
    ApprovalRejected,
    /// Nobody approved in time.
    ApprovalExpired,
    /// The requester or an admin withdrew it.
    ApprovalCancelled,
    /// A newer spec replaced the change before it was decided.
    ApprovalSuperseded,
    /// The change rolled out and is healthy.
    Deployed,
    /// The rollout failed.
    Failed,
    /// The operator rolled back to the last healthy spec.
    RolledBack,
    /// A break-glass override was used.
    BreakGlassUsed,
    /// A policy refused the change (it is Blocked); told only where the policy asks for it
    /// (`notify.onRefusal`) or a channel lists this kind in its `events`.
    PolicyRefused,
}

impl Kind {
    /// How serious it is.
    pub fn severity(self) -> Severity {
        match self {
            Kind::ApprovalGranted | Kind::Deployed => Severity::Info,
            Kind::ApprovalRequested
            | Kind::ApprovalCancelled
            | Kind::ApprovalSuperseded
            | Kind::ApprovalExpired => Severity::Notice,
            Kind::ApprovalRejected | Kind::Failed | Kind::RolledBack | Kind::PolicyRefused => {
                Severity::Warning
            }
            Kind::BreakGlassUsed => Severity::Critical,
        }
    }

    fn headline(self) -> &'static str {
        match self {
            Kind::ApprovalRequested => "Approval needed",
            Kind::ApprovalGranted => "Approved",
            Kind::ApprovalRejected => "Rejected",
            Kind::ApprovalExpired => "Approval expired",
            Kind::ApprovalCancelled => "Approval request cancelled",
            Kind::ApprovalSuperseded => "Approval request superseded",
            Kind::Deployed => "Deployed",
            Kind::Failed => "Rollout failed",
            Kind::RolledBack => "Rolled back",
            Kind::BreakGlassUsed => "Break-glass used",
            Kind::PolicyRefused => "Refused by policy",
        }
    }
}

/// How serious a notification is (colours and mail priority).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Something good or expected.
    Info,
    /// Worth knowing.
    Notice,
    /// Something went wrong.
    Warning,
    /// For the security contacts.
    Critical,
}

/// What an audit entry means for the people to be told, or nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct Notice<'e> {
    /// What it is about.
    pub kind: Kind,
    /// The entry it comes from.
    pub entry: &'e Entry,
    /// The namespace of the AgentDeployment.
    pub namespace: String,
    /// The AgentDeployment.
    pub deployment: String,
    /// The ApprovalRequest, for approvals.
    pub request: Option<String>,
    /// Who asked for the change, when known.
    pub requester: Option<String>,
    /// Approval requirements (approval requested).
    pub requirements: Vec<RequirementSpec>,
    /// The recipients the policies name (`notify.onDeploy` or `notify.onFailure`).
    pub policy_recipients: Vec<String>,
    /// Why: what held it, what failed, what the approvers said.
    pub why: Vec<String>,
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn texts(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .take(64)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// What `entry` means for notifications, if anything. Only facts count: a phase transition,
/// an approval request created, a rollback applied, a break-glass lifting a refusal.
pub fn notice(entry: &Entry) -> Option<Notice<'_>> {
    let d = &entry.draft;
    let m = &d.metadata;
    let (namespace, name) = d.resource.split_once('/')?;
    let from_request = d.resource_type == "ApprovalRequest";
    let kind = match (d.event_type, d.status.as_str(), from_request) {
        (EventType::ApprovalRequested, "pending", false) => Kind::ApprovalRequested,
        (EventType::ApprovalGranted, "approved", true) => Kind::ApprovalGranted,
        (EventType::ApprovalDenied, "rejected", true) => Kind::ApprovalRejected,
        (EventType::ApprovalDenied, "expired", true) => Kind::ApprovalExpired,
        (EventType::ApprovalDenied, "cancelled", true) => Kind::ApprovalCancelled,
        (EventType::ApprovalDenied, "superseded", true) => Kind::ApprovalSuperseded,
        (EventType::DeploymentCompleted, "success", false) => Kind::Deployed,
        (EventType::DeploymentFailed, "failure", false) => Kind::Failed,
        (EventType::RollbackCompleted, "applied", false) => Kind::RolledBack,
        (EventType::BreakGlassUsed, "success", false) => Kind::BreakGlassUsed,
        (EventType::PolicyViolation, "blocked", false) => Kind::PolicyRefused,
        _ => return None,
    };
    let (deployment, request) = if from_request {
        (text(m, "deployment")?.to_owned(), Some(name.to_owned()))
    } else {
        (name.to_owned(), text(m, "request").map(str::to_owned))
    };
    // An AgentDeployment's entry names its requester when the API server vouched for one
    // (the operator's own acts, and break-glass, name who acted instead).
    let requester = if from_request {
        text(m, "requester").map(str::to_owned)
    } else {
        let vouched = d.auth_method == "kubernetes" && d.user_id != crate::audit::OPERATOR;
        (vouched && kind != Kind::BreakGlassUsed).then(|| d.user_id.clone())
    };
    let requirements = m
        .get("requirements")
        .and_then(|r| serde_json::from_value::<Vec<RequirementSpec>>(r.clone()).ok())
        .unwrap_or_default();
    let list = match kind {
        Kind::Deployed => "onDeploy",
        Kind::PolicyRefused => "onRefusal",
        _ => "onFailure",
    };
    let policy_recipients = match kind {
        Kind::Deployed | Kind::Failed | Kind::RolledBack | Kind::PolicyRefused => {
            texts(m.get("notify").and_then(|n| n.get(list)))
        }
        _ => vec![],
    };
    let mut why = texts(m.get("reasons"));
    match kind {
        Kind::BreakGlassUsed => {
            why.extend(text(m, "reason").map(|r| format!("reason given: {r}")));
            why.extend(
                texts(m.get("lifted"))
                    .into_iter()
                    .map(|l| format!("lifted: {l}")),
            );
        }
        Kind::ApprovalRequested => {
            why.extend(text(m, "justification").map(|j| format!("justification: {j}")));
        }
        Kind::RolledBack => why.extend(text(m, "rollbackTo").map(|g| format!("now running {g}"))),
        Kind::PolicyRefused => why.extend(d.policy_violations.iter().cloned()),
        _ => {}
    }
    why.extend(d.error_message.clone().filter(|e| !e.is_empty()));
    if why.is_empty()
        && let Some(msg) = text(m, "message")
    {
        why.push(msg.to_owned());
    }
    Some(Notice {
        kind,
        entry,
        namespace: namespace.to_owned(),
        deployment,
        request,
        requester,
        requirements,
        policy_recipients,
        why,
    })
}

/// A notification as every channel renders it.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// What it is about.
    pub kind: Kind,
    /// One line, e.g. `Approval needed: GHA to production (agents/gha)`.
    pub title: String,
    /// Label and value pairs, in order.
    pub facts: Vec<(String, String)>,
    /// Why (held, failed, said).
    pub why: Vec<String>,
    /// Commands that act on it (approve, reject, look).
    pub commands: Vec<String>,
    /// Mail only: the recipients.
    pub to: Vec<String>,
    /// Names the delivery (audit entry hash and channel): receivers can drop a repeat.
    pub key: String,
}

/// The most recipients of one mail.
const MAX_RECIPIENTS: usize = 100;

/// What `channel` is sent for `notice`, if anything: the channel must take the kind (or a
/// policy names it), the environment, the namespace and, for approval requests, one of the roles that may
/// approve. A mail goes to the channel's `to`, plus those the kind concerns: the people and
/// group addresses that may approve, the requester (when an address), and the addresses the
/// policies list.
pub fn message(notice: &Notice, channel: &Channel, mapping: &RoleMapping) -> Option<Message> {
    let d = &notice.entry.draft;
    let named = notice
        .policy_recipients
        .iter()
        .any(|r| r.strip_prefix("channel:") == Some(channel.name.as_str()));
    let environment = d.environment.clone().unwrap_or_default();
    let roles: BTreeSet<Role> = notice
        .requirements
        .iter()
        .flat_map(|r| r.roles.iter().copied())
        .collect();
    let wanted = named
        || ((channel.events.is_empty() || channel.events.contains(&notice.kind))
            && (channel.environments.is_empty() || channel.environments.contains(&environment))
            && (channel.namespaces.is_empty() || channel.namespaces.contains(&notice.namespace))
            && (notice.kind != Kind::ApprovalRequested
                || channel.roles.is_empty()
                || !channel.roles.is_disjoint(&roles))
            // A refusal is told where a policy or the channel asks for it, not everywhere.
            && (notice.kind != Kind::PolicyRefused
                || channel.events.contains(&Kind::PolicyRefused)
                || (matches!(channel.endpoint, Endpoint::Smtp(_))
                    && notice.policy_recipients.iter().any(|r| config::is_address(r)))));
    if !wanted {
        return None;
    }
    let mut to: Vec<String> = vec![];
    if let Endpoint::Smtp(smtp) = &channel.endpoint {
        let mut add = |a: &str| {
            if config::is_address(a) && !to.iter().any(|t| t.eq_ignore_ascii_case(a)) {
                to.push(a.to_owned());
            }
        };
        // A refusal that only a policy's addresses ask for goes to those addresses alone.
        let policy_only = notice.kind == Kind::PolicyRefused
            && !named
            && !channel.events.contains(&Kind::PolicyRefused);
        if !policy_only {
            channel.to.iter().for_each(|a| add(a));
            if notice.kind == Kind::ApprovalRequested {
                let (users, groups) = holders(mapping, &roles, &environment);
                users.iter().for_each(|u| add(u));
                for g in groups {
                    if let Some(address) = smtp.groups.get(g) {
                        add(address);
                    }
                }
            } else if notice.kind != Kind::BreakGlassUsed {
                notice.requester.iter().for_each(|r| add(r));
            }
        }
        notice.policy_recipients.iter().for_each(|r| add(r));
        // The requester is told of outcomes, never asked to approve their own change.
        if notice.kind == Kind::ApprovalRequested
            && let Some(r) = &notice.requester
        {
            to.retain(|t| !t.eq_ignore_ascii_case(r) || channel.to.contains(t));
        }
        to.truncate(MAX_RECIPIENTS);
        if to.is_empty() {
            return None;
        }
    }
    let agent = d.agents.first().cloned().unwrap_or_default();
    let title = format!(
        "{}: {agent} to {environment} ({}/{})",
        notice.kind.headline(),
        notice.namespace,
        notice.deployment
    );
    let mut facts = vec![
        ("Agent".to_owned(), agent),
        ("Environment".to_owned(), environment),
        (
            "AgentDeployment".to_owned(),
            format!("{}/{}", notice.namespace, notice.deployment),
        ),
    ];
    if let Some(r) = &notice.requester {
        facts.push(("Requested by".into(), r.clone()));
    }
    if notice.kind == Kind::BreakGlassUsed {
        facts.push(("Used by".into(), d.user_id.clone()));
    }
    for r in &notice.requirements {
        let roles: Vec<&str> = r.roles.iter().map(|r| r.as_str()).collect();
        facts.push((
            "Approvals needed".into(),
            format!(
                "{} of {}{} ({})",
                r.min_approvals,
                roles.join(" or "),
                if r.require_mfa { ", with MFA" } else { "" },
                r.source
            ),
        ));
    }
    if let Some(digest) = text(&d.metadata, "digest") {
        facts.push(("Spec".into(), digest.to_owned()));
    }
    if let Some(at) = text(&d.metadata, "expiresAt") {
        facts.push(("Expires".into(), at.to_owned()));
    }
    facts.push((
        "Audit entry".into(),
        format!("#{} at {}", notice.entry.seq, d.timestamp),
    ));
    let ns = &notice.namespace;
    let commands = match (notice.kind, &notice.request) {
        (Kind::ApprovalRequested, Some(apr)) => {
            let mut commands = vec![
                format!("kubectl dvo approve {apr} -n {ns} --message \"...\""),
                format!(
                    "kubectl annotate approvalrequest {apr} -n {ns} dvo.caat.io/approve=\"...\""
                ),
                format!(
                    "kubectl annotate approvalrequest {apr} -n {ns} dvo.caat.io/reject=\"reason\""
                ),
            ];
            if let Some(api) = &channel.api_url {
                commands.push(format!(
                    "curl -X POST -H \"Authorization: Bearer $TOKEN\" {}/v1/approvals/{ns}/{apr}/approve -d '{{\"comment\": \"...\"}}'",
                    api.trim_end_matches('/')
                ));
            }
            commands
        }
        _ => vec![format!("kubectl dvo status {} -n {ns}", notice.deployment)],
    };
    Some(Message {
        kind: notice.kind,
        title,
        facts,
        why: notice.why.clone(),
        commands,
        to,
        key: format!("{}-{}", channel.name, notice.entry.entry_hash),
    })
}

/// The users (by name) and groups that hold one of `roles` in `environment`; never a machine
/// (a holder of `service_account`), which cannot approve.
fn holders<'m>(
    mapping: &'m RoleMapping,
    roles: &BTreeSet<Role>,
    environment: &str,
) -> (BTreeSet<&'m str>, BTreeSet<&'m str>) {
    let grants = mapping.environments.get(environment);
    let holds =
        |held: &BTreeSet<Role>| !held.is_disjoint(roles) && !held.contains(&Role::ServiceAccount);
    let users = (mapping.users.iter())
        .chain(grants.into_iter().flat_map(|g| g.users.iter()))
        .filter(|(_, held)| holds(held))
        .map(|(u, _)| u.as_str())
        .collect();
    let groups = (mapping.groups.iter())
        .chain(grants.into_iter().flat_map(|g| g.groups.iter()))
        .filter(|(_, held)| holds(held))
        .map(|(g, _)| g.as_str())
        .collect();
    (users, groups)
}

#[cfg(test)]
mod tests;
