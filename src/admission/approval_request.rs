//! ApprovalRequest admission: people act with annotations (`approve`, `approve-token`, `reject`,
//! `cancel`); an act is accepted only from someone entitled to it, and then replaced in the same
//! write by a signed act the operator can verify. Only the operator creates requests, and nobody
//! but the webhook writes the signed acts.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use super::{AnnotationPatch, Env, Verdict, draft};
use crate::approval::signed::{
    self, ACTS, APPROVE, APPROVE_TOKEN, ActKind, CANCEL, REJECT, SignedAct, Via,
};
use crate::approval::{self, Act};
use crate::audit::{Draft, EventType};
use crate::crd::ApprovalRequest;
use crate::crd::approval_request::ApprovalPhase;
use crate::identity::entra::{EntraIdentity, SignIn};
use crate::identity::{Identity, Role, Subject};

const KIND: &str = "ApprovalRequest";

fn annotation<'a>(apr: &'a ApprovalRequest, key: &str) -> Option<&'a String> {
    apr.metadata.annotations.as_ref().and_then(|a| a.get(key))
}

fn resource(apr: &ApprovalRequest) -> String {
    format!(
        "{}/{}",
        apr.metadata.namespace.as_deref().unwrap_or_default(),
        apr.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The act annotations `new` adds or changes relative to `old`.
fn requested<'a>(old: &ApprovalRequest, new: &'a ApprovalRequest) -> Vec<(&'static str, &'a str)> {
    [APPROVE, APPROVE_TOKEN, REJECT, CANCEL]
        .into_iter()
        .filter_map(|key| {
            let value = annotation(new, key)?;
            (annotation(old, key) != Some(value)).then_some((key, value.as_str()))
        })
        .collect()
}

/// The Entra ID token this update gives with `approve-token`, if it gives one: the webhook
/// verifies it before calling [`review_update`].
pub fn token<'a>(old: &ApprovalRequest, new: &'a ApprovalRequest) -> Option<&'a str> {
    requested(old, new)
        .into_iter()
        .find(|(key, _)| *key == APPROVE_TOKEN)
        .map(|(_, value)| value)
}

/// Reasons per requirement source, the same reason for several sources said once:
/// `ops-omar requested this deployment and cannot approve it (policy/a, permission/b)`.
fn merged(reasons: &[(&str, String)]) -> String {
    let mut templates: Vec<(String, Vec<&str>)> = vec![];
    for (source, why) in reasons {
        let template = why.replace(source, "\u{0}");
        match templates.iter_mut().find(|(t, _)| *t == template) {
            Some((_, sources)) => sources.push(source),
            None => templates.push((template, vec![source])),
        }
    }
    templates
        .into_iter()
        .map(|(t, sources)| t.replace('\u{0}', &sources.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Reviews the creation of a request: the operator's alone.
pub fn review_create(env: &Env, user: &Identity, new: &ApprovalRequest) -> Verdict {
    if user.username == env.operator {
        return Verdict::allow();
    }
    let message = format!(
        "ApprovalRequests are created by the dvo operator only; {} may not create {}",
        user.username,
        resource(new)
    );
    Verdict::refuse(
        message.clone(),
        draft(
            EventType::PermissionDenied,
            user,
            "create",
            resource(new),
            KIND,
            "denied",
            Some(message),
        ),
    )
}

/// Someone acting on a request, as authenticated by the API server (an annotation) or by the
/// HTTP API (a token or an API key), with the roles they hold in the request's environment.
#[derive(Clone, Debug)]
pub struct Actor {
    /// Who, with their roles.
    pub subject: Subject,
    /// Their UID (the API server's, or the `oid` of their token).
    pub uid: Option<String>,
    /// Whether they proved multi-factor authentication (a verified token, or the API server's
    /// trusted sign-in claims).
    pub mfa: bool,
    /// `tid/oid` of their Entra ID identity, when known.
    pub entra: Option<String>,
    /// How the act arrives (None: an annotation through the Kubernetes API).
    pub via: Option<Via>,
}

/// Why an act was refused: the message the caller sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// What kubectl (or the HTTP API's problem detail) shows.
    pub message: String,
    /// Whether the request's state refuses it (decided, expired, already approved by this
    /// person) rather than the actor's standing.
    pub conflict: bool,
}

impl Refusal {
    fn denied(message: String) -> Refusal {
        Refusal {
            message,
            conflict: false,
        }
    }

    fn conflict(message: String) -> Refusal {
        Refusal {
            conflict: true,
            ..Refusal::denied(message)
        }
    }
}

/// The signed act `actor` may record on `apr` (`comment`: the comment, or the rejection's
/// reason), or why not: the request must still be pending and unexpired, undecided by the acts
/// on it, and the actor entitled to the act. The same rules for every way an act arrives.
pub fn act(
    env: &Env,
    actor: &Actor,
    apr: &ApprovalRequest,
    kind: ActKind,
    comment: Option<&str>,
    now: DateTime<Utc>,
) -> Result<SignedAct, Refusal> {
    let res = resource(apr);
    let spec = &apr.spec;
    let phase = apr.phase();
    if phase != ApprovalPhase::Pending {
        return Err(Refusal::conflict(format!(
            "ApprovalRequest {res} is {phase:?}; it takes no more approvals, rejections or cancellations"
        )));
    }
    if now >= spec.expires_at {
        return Err(Refusal::conflict(format!(
            "ApprovalRequest {res} expired at {}; it takes no more approvals, rejections or cancellations",
            spec.expires_at.to_rfc3339()
        )));
    }
    let subject = &actor.subject;
    let life_cycle_act = Act {
        subject: subject.clone(),
        at: now,
        mfa: actor.mfa,
        entra: actor.entra.clone(),
    };
    // One person may carry several names (a token's, the API server's): the Entra ID identity
    // says who it is.
    let same_person = |a: &SignedAct| {
        a.subject.username.eq_ignore_ascii_case(&subject.username)
            || (actor.entra.is_some() && a.entra == actor.entra)
    };
    // Forged or unreadable acts count for nothing (and are dropped when the list is rewritten).
    let acts = signed::Acts::read(apr, env.key).unwrap_or_default();
    let decided = acts.evaluate(spec, None, false, now);
    if decided.phase != ApprovalPhase::Pending {
        return Err(Refusal::conflict(format!(
            "ApprovalRequest {res} is already decided by the acts recorded on it ({}); it takes no more approvals, rejections or cancellations",
            decided.message
        )));
    }
    let who = &subject.username;
    let comment = comment.map(str::trim).filter(|c| !c.is_empty());
    match kind {
        ActKind::Approve => {
            if acts.of(ActKind::Approve).any(same_person) {
                return Err(Refusal::conflict(format!(
                    "{who} already approved ApprovalRequest {res}; each person counts once"
                )));
            }
            // Still pending (checked above), so the progress is that of the approvals alone.
            let mut reasons = vec![];
            let mut counts = false;
            for (req, p) in spec.requirements.iter().zip(&decided.progress) {
                if p.met {
                    continue;
                }
                match approval::ineligible(spec, req, &life_cycle_act) {
                    None => counts = true,
                    Some(why) => reasons.push((req.source.as_str(), why)),
                }
            }
            if !counts {
                let why = merged(&reasons);
                return Err(Refusal::denied(format!(
                    "approval of ApprovalRequest {res} refused: {why}"
                )));
            }
        }
        ActKind::Reject => {
            if comment.is_none() {
                return Err(Refusal::denied(format!(
                    "a rejection needs a reason: {REJECT}=\"<why>\""
                )));
            }
            let reasons: Vec<(&str, String)> = spec
                .requirements
                .iter()
                .filter_map(|req| {
                    Some((
                        req.source.as_str(),
                        approval::ineligible(spec, req, &life_cycle_act)?,
                    ))
                })
                .collect();
            if reasons.len() == spec.requirements.len() {
                return Err(Refusal::denied(format!(
                    "rejection of ApprovalRequest {res} refused: {}",
                    merged(&reasons)
                )));
            }
        }
        ActKind::Cancel => {
            let admin = subject.is_human() && subject.roles.contains(&Role::Admin);
            if approval::requester_of(spec, &life_cycle_act).is_none() && !admin {
                return Err(Refusal::denied(format!(
                    "cancellation of ApprovalRequest {res} refused: {who} is neither the requester nor an admin"
                )));
            }
        }
    };
    Ok(SignedAct {
        kind,
        subject: subject.clone(),
        uid: actor.uid.clone(),
        at: now,
        comment: comment.map(str::to_owned),
        mfa: actor.mfa,
        entra: actor.entra.clone(),
        via: actor.via,
        signature: String::new(),
    }
    .sign(env.key, apr))
}

/// `apr`'s acts annotation with `signed` appended: what [`act`] allows is recorded this way.
/// Forged or unreadable entries are dropped: the list holds only what verifies.
pub fn acts_with(env: &Env, apr: &ApprovalRequest, signed: SignedAct) -> String {
    let mut all = signed::Acts::read(apr, env.key)
        .unwrap_or_default()
        .verified;
    all.push(signed);
    crate::json::to_string(&all)
}

/// Reviews an update of `old` into `new` by `user` at `now`. `sign_in` is what the API server
/// vouched for about the user's sign-in; `token` is the verification of the `approve-token`
/// this update gives (see [`token`]).
pub fn review_update(
    env: &Env,
    user: &Identity,
    sign_in: &SignIn,
    old: &ApprovalRequest,
    new: &ApprovalRequest,
    token: Option<Result<EntraIdentity, String>>,
    now: DateTime<Utc>,
) -> Verdict {
    if user.username == env.operator {
        return Verdict::allow();
    }
    let res = resource(new);
    let spec = &old.spec;
    let mut subject = env.mapping.subject(user, &spec.environment);
    let refuse_as = |event: EventType, message: String, roles: &BTreeSet<Role>| {
        let mut d: Draft = draft(
            event,
            user,
            "act",
            res.clone(),
            KIND,
            "denied",
            Some(message.clone()),
        );
        d.user_roles = roles.iter().map(|r| r.as_str().to_owned()).collect();
        d.environment = Some(spec.environment.clone());
        d.platform = Some(spec.platform.as_str().to_owned());
        d.agents = vec![spec.agent.clone()];
        crate::json::set(&mut d.metadata, "specDigest", spec.spec_digest.clone());
        crate::json::set(
            &mut d.metadata,
            "deployment",
            spec.deployment_ref.name.clone(),
        );
        crate::json::set(
            &mut d.metadata,
            "generation",
            spec.deployment_ref.generation,
        );
        Verdict::refuse(message, d)
    };
    let held = subject.roles.clone();
    let refuse = |message: String| refuse_as(EventType::PermissionDenied, message, &held);

    if annotation(new, ACTS) != annotation(old, ACTS) {
        return refuse(format!(
            "the annotation {ACTS} is written by the dvo admission webhook only; {} may not set or change it: act with {APPROVE}, {REJECT} or {CANCEL}",
            user.username
        ));
    }
    let acts = requested(old, new);
    let (key, value) = match acts.as_slice() {
        [] => return Verdict::allow(),
        [one] => *one,
        _ => {
            return refuse(format!(
                "one act at a time: this change sets {}",
                acts.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
            ));
        }
    };
    let (mut mfa, mut entra) = (sign_in.mfa, sign_in.entra.clone());
    if key == APPROVE_TOKEN {
        let auth_failure = |message: String| refuse_as(EventType::AuthFailure, message, &held);
        let verified = match token {
            Some(Ok(t)) => t,
            Some(Err(why)) => {
                return auth_failure(format!("the approval token was refused: {why}"));
            }
            None => return auth_failure("the approval token was not verified".into()),
        };
        if verified.application {
            return auth_failure(format!(
                "the approval token is an application's ({}), not a person's: approve with your own token",
                verified.username
            ));
        }
        if !verified.username.eq_ignore_ascii_case(&user.username) {
            return auth_failure(format!(
                "the approval token belongs to {}, not to {}: approve with your own token",
                verified.username, user.username
            ));
        }
        subject
            .roles
            .extend(verified.roles(env.mapping, &spec.environment));
        mfa |= verified.mfa;
        entra = Some(verified.entra_id());
    }
    let kind = match key {
        REJECT => ActKind::Reject,
        CANCEL => ActKind::Cancel,
        _ => ActKind::Approve,
    };
    let actor = Actor {
        subject,
        uid: user.uid.clone(),
        mfa,
        entra,
        via: None,
    };
    // The token is never stored, not even as a comment.
    let comment = (key != APPROVE_TOKEN).then_some(value);
    let signed = match act(env, &actor, old, kind, comment, now) {
        Ok(signed) => signed,
        Err(refusal) => {
            return refuse_as(
                EventType::PermissionDenied,
                refusal.message,
                &actor.subject.roles,
            );
        }
    };
    let mut patch = AnnotationPatch::new(true);
    patch.remove(key);
    patch.set(ACTS, &acts_with(env, old, signed));
    // An accepted act is not recorded here: the API server may call this webhook several times
    // for one write (conflicts, reinvocation) and may then not store it. The operator records
    // each act once, when it sees it stored (`controller::record::act`).
    Verdict {
        refusal: None,
        patch: patch.into_ops(),
        audit: None,
    }
}

#[cfg(test)]
#[path = "approval_request_tests.rs"]
mod tests;
