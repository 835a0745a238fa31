//! The ApprovalRequest life cycle as a pure state machine.
//!
//! `Pending` → `Approved` when every requirement has its quorum of distinct eligible people;
//! `Rejected` by an eligible person; `Cancelled` by the requester or an admin; `Expired` at
//! `expiresAt`; `Superseded` when the AgentDeployment's spec moved on. Every phase but
//! `Pending` is final. Eligibility: a human (never a service account) holding one of the
//! requirement's roles, not the requester unless the requirement allows self-approval, acting
//! before the request expired.

pub mod signed;

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use crate::crd::approval_request::{
    ApprovalPhase, ApprovalRequestSpec, RequirementProgress, RequirementSpec,
};
use crate::identity::{Role, Subject};
use crate::policy::Decision;

/// One act (approve, reject, cancel) by a person whose roles are resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Act {
    /// Who, with their roles in the request's environment.
    pub subject: Subject,
    /// When.
    pub at: DateTime<Utc>,
    /// Whether the person proved multi-factor authentication (a verified Entra ID token).
    pub mfa: bool,
    /// Their Entra ID identity, `tid/oid`, when known: one person under several names.
    pub entra: Option<String>,
}

/// Everything the state machine looks at.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    /// The request.
    pub spec: &'a ApprovalRequestSpec,
    /// The phase recorded so far (None: new).
    pub current: Option<ApprovalPhase>,
    /// Approvals in the order given.
    pub approvals: &'a [Act],
    /// A rejection, if one was given.
    pub rejection: Option<&'a Act>,
    /// A cancellation, if one was given.
    pub cancellation: Option<&'a Act>,
    /// Whether the AgentDeployment is gone or its spec no longer has this digest.
    pub superseded: bool,
    /// Now.
    pub now: DateTime<Utc>,
}

/// The result of one step.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// The new phase.
    pub phase: ApprovalPhase,
    /// For each approval (same order as the input): the requirement sources it counts for, or
    /// why it counts for nothing.
    pub approvals: Vec<Result<Vec<String>, String>>,
    /// Why the rejection or cancellation was ignored, when it was.
    pub ignored_rejection: Option<String>,
    /// Why the cancellation was ignored, when it was.
    pub ignored_cancellation: Option<String>,
    /// Progress of each requirement.
    pub progress: Vec<RequirementProgress>,
    /// A sentence for the `Approved` condition and events.
    pub message: String,
    /// When to look again by itself (the expiry, while pending).
    pub requeue_at: Option<DateTime<Utc>>,
}

/// The requester's name when `act` is theirs: the same user name (whatever its case), or the
/// same Entra ID object as the requester's UID (one person under another name).
pub fn requester_of<'a>(spec: &'a ApprovalRequestSpec, act: &Act) -> Option<&'a str> {
    let r = spec.requester.as_ref()?;
    let oid = act
        .entra
        .as_deref()
        .and_then(|e| e.split_once('/'))
        .map(|(_, oid)| oid);
    let same = r.username.eq_ignore_ascii_case(&act.subject.username)
        || (oid.is_some() && r.uid.as_deref() == oid);
    same.then_some(r.username.as_str())
}

/// Why `act` cannot count for `req`, if it cannot.
pub fn ineligible(spec: &ApprovalRequestSpec, req: &RequirementSpec, act: &Act) -> Option<String> {
    let who = &act.subject.username;
    if act.subject.machine {
        return Some(format!(
            "{who} is a machine (a service account, an application or an API key); machines never count as human approvers"
        ));
    }
    if let (Some(requester), false) = (requester_of(spec, act), req.allow_self_approval) {
        return Some(format!(
            "{requester} requested this deployment and cannot approve it ({})",
            req.source
        ));
    }
    if !req.roles.iter().any(|r| act.subject.roles.contains(r)) {
        let roles: Vec<&str> = req.roles.iter().map(|r| r.as_str()).collect();
        let held: Vec<&str> = act.subject.roles.iter().map(|r| r.as_str()).collect();
        return Some(format!(
            "{who} (roles: {}) holds none of the roles {} that {} needs",
            held.join(", "),
            roles.join(", "),
            req.source
        ));
    }
    if req.require_mfa && !act.mfa {
        return Some(format!(
            "{who} did not prove multi-factor authentication, which {} requires: sign in to the cluster with MFA, or approve with dvo.caat.io/approve-token=<Entra ID access token>",
            req.source
        ));
    }
    if act.at >= spec.expires_at {
        return Some(format!(
            "{who} acted at {} after the request expired at {}",
            act.at.to_rfc3339(),
            spec.expires_at.to_rfc3339()
        ));
    }
    None
}

/// Why `act` cannot count for any requirement, if it cannot (the first requirement's reason).
fn ineligible_for_all(spec: &ApprovalRequestSpec, act: &Act) -> Option<String> {
    let reasons: Vec<String> = spec
        .requirements
        .iter()
        .filter_map(|r| ineligible(spec, r, act))
        .collect();
    (reasons.len() == spec.requirements.len())
        .then(|| reasons.into_iter().next().unwrap_or_default())
}

/// The requirements an ApprovalRequest carries for `decision`.
pub fn requirements(decision: &Decision) -> Vec<RequirementSpec> {
    decision
        .approval_requirements
        .iter()
        .map(|r| RequirementSpec {
            source: r.source.clone(),
            roles: r.roles.clone(),
            min_approvals: r.min_approvals,
            allow_self_approval: r.allow_self_approval,
            require_mfa: r.require_mfa,
        })
        .collect()
}

/// Whether an existing request (in `phase`, carrying `has`) must be replaced because the
/// policies in force now want `wanted`: a pending request follows them (approvals given so far
/// must be given again); a request that reached any other phase stands.
pub fn outdated(
    phase: Option<ApprovalPhase>,
    has: &[RequirementSpec],
    wanted: &[RequirementSpec],
) -> bool {
    matches!(phase, None | Some(ApprovalPhase::Pending)) && has != wanted
}

/// Why `spec` is not the request for generation `generation` (spec digest `digest`) of the
/// AgentDeployment with UID `uid`, if it is not. A request counts for exactly one change of one
/// AgentDeployment: compared in full (UID, generation and the whole digest), never by its name.
pub fn binding_problem(
    spec: &ApprovalRequestSpec,
    uid: &str,
    generation: i64,
    digest: &str,
) -> Option<String> {
    let r = &spec.deployment_ref;
    if r.uid != uid {
        return Some(format!(
            "it is for AgentDeployment UID {}, not {uid}",
            r.uid
        ));
    }
    if r.generation != generation {
        return Some(format!(
            "it is for generation {} of the spec, not {generation}",
            r.generation
        ));
    }
    if spec.spec_digest != digest {
        return Some(format!(
            "it approves spec {}, not {digest}",
            spec.spec_digest
        ));
    }
    None
}

/// Whether a request counts as approved for a rollout: the phase its verified acts decide
/// (`from_acts`, the life cycle run on the acts alone) must be `Approved`, and so must the phase
/// the operator reported (`reported`), which it writes only after recording the acts in the
/// audit log. Neither alone suffices: status is a report that a status writer could forge, and
/// acts not yet recorded must not take effect.
pub fn approved_for_rollout(reported: Option<ApprovalPhase>, from_acts: ApprovalPhase) -> bool {
    reported == Some(ApprovalPhase::Approved) && from_acts == ApprovalPhase::Approved
}

/// Why a rejection or cancellation `act` came too late: after the approval that completed the
/// quorum (at `met_at`).
fn after_approval(met_at: Option<DateTime<Utc>>, act: &Act, what: &str) -> Option<String> {
    met_at.filter(|m| *m < act.at).map(|m| {
        format!(
            "the {what} by {} came at {}, after the request was approved at {}",
            act.subject.username,
            act.at.to_rfc3339(),
            m.to_rfc3339()
        )
    })
}

/// One step of the life cycle.
pub fn evaluate(input: &Input) -> Evaluation {
    let spec = input.spec;
    let mut progress: Vec<RequirementProgress> = spec
        .requirements
        .iter()
        .map(|r| RequirementProgress {
            source: r.source.clone(),
            approvers: vec![],
            needed: r.min_approvals,
            met: false,
        })
        .collect();
    let mut seen = BTreeSet::new();
    // When the quorum was complete: the approval that completed it.
    let mut met_at: Option<DateTime<Utc>> = None;
    let met = |progress: &[RequirementProgress]| {
        progress
            .iter()
            .all(|p| p.approvers.len() as i64 >= i64::from(p.needed))
    };
    let approvals = input
        .approvals
        .iter()
        .map(|act| {
            if !seen.insert(act.subject.username.clone()) {
                return Err(format!(
                    "{} already approved; each person counts once",
                    act.subject.username
                ));
            }
            let mut satisfies = Vec::new();
            let mut reasons = Vec::new();
            for (req, prog) in spec.requirements.iter().zip(progress.iter_mut()) {
                match ineligible(spec, req, act) {
                    None => {
                        prog.approvers.push(act.subject.username.clone());
                        satisfies.push(req.source.clone());
                    }
                    Some(why) => reasons.push(why),
                }
            }
            if satisfies.is_empty() {
                Err(reasons.into_iter().next().unwrap_or_default())
            } else {
                if met_at.is_none() && met(&progress) {
                    met_at = Some(act.at);
                }
                Ok(satisfies)
            }
        })
        .collect();
    for p in &mut progress {
        p.met = p.approvers.len() as i64 >= i64::from(p.needed);
    }

    let ignored_rejection = input.rejection.and_then(|act| {
        ineligible_for_all(spec, act).or_else(|| after_approval(met_at, act, "rejection"))
    });
    let ignored_cancellation = input.cancellation.and_then(|act| {
        let is_requester = requester_of(spec, act).is_some();
        let is_admin = act.subject.roles.contains(&Role::Admin) && !act.subject.machine;
        if !is_requester && !is_admin {
            return Some(format!(
                "{} is neither the requester nor an admin and cannot cancel",
                act.subject.username
            ));
        }
        after_approval(met_at, act, "cancellation")
    });
    // The first decisive act decides (a rejection or cancellation given at the same moment as the
    // approval that completed the quorum wins): acts are never re-read to change an outcome.
    let cancelled = input
        .cancellation
        .filter(|_| ignored_cancellation.is_none());
    let rejected = input.rejection.filter(|_| ignored_rejection.is_none());
    let first_refusal = match (cancelled, rejected) {
        (Some(c), Some(r)) if r.at < c.at => Some((ApprovalPhase::Rejected, r)),
        (Some(c), _) => Some((ApprovalPhase::Cancelled, c)),
        (None, Some(r)) => Some((ApprovalPhase::Rejected, r)),
        (None, None) => None,
    };

    let all_met = met_at.is_some();
    let pending = matches!(input.current, None | Some(ApprovalPhase::Pending));
    let (phase, message) = if !pending {
        let phase = input.current.unwrap_or(ApprovalPhase::Pending);
        (phase, format!("{phase:?} (final)"))
    } else if let Some((phase, act)) = first_refusal {
        let verb = if phase == ApprovalPhase::Rejected {
            "rejected"
        } else {
            "cancelled"
        };
        (phase, format!("{verb} by {}", act.subject.username))
    } else if all_met {
        let who: BTreeSet<&str> = progress
            .iter()
            .flat_map(|p| p.approvers.iter().map(String::as_str))
            .collect();
        (
            ApprovalPhase::Approved,
            format!(
                "approved by {}",
                who.into_iter().collect::<Vec<_>>().join(", ")
            ),
        )
    } else if input.superseded {
        (
            ApprovalPhase::Superseded,
            "the AgentDeployment's spec changed; a new request replaces this one".to_owned(),
        )
    } else if input.now >= spec.expires_at {
        (
            ApprovalPhase::Expired,
            format!(
                "expired at {} without its approvals",
                spec.expires_at.to_rfc3339()
            ),
        )
    } else {
        let missing: Vec<String> = progress
            .iter()
            .filter(|p| !p.met)
            .map(|p| format!("{}: {} of {}", p.source, p.approvers.len(), p.needed))
            .collect();
        (
            ApprovalPhase::Pending,
            format!("waiting for approvals ({})", missing.join("; ")),
        )
    };
    Evaluation {
        requeue_at: (phase == ApprovalPhase::Pending).then_some(spec.expires_at),
        phase,
        approvals,
        ignored_rejection,
        ignored_cancellation,
        progress,
        message,
    }
}

#[cfg(test)]
mod tests;
