//! AgentDeployment admission: stamps the requester of every new spec, refuses requesters without
//! the permission for the environment (production goes to approval instead), refuses changes to
//! the webhook's stamps, and turns a break-glass annotation from a holder of `bypass_approval`
//! into a signed break-glass stamp for that one spec.

use chrono::{DateTime, Utc};

use super::{AnnotationPatch, Env, Verdict, draft};
use crate::audit::{Draft, EventType};
use crate::crd::AgentDeployment;
use crate::crd::agent_deployment::spec_digest;
use crate::identity::stamp::{self, BREAK_GLASS, BREAK_GLASS_STAMP, BreakGlass, Stamp};
use crate::identity::{Check, Identity, Permission, Subject};

const KIND: &str = "AgentDeployment";

fn annotation(ad: Option<&AgentDeployment>, key: &str) -> Option<String> {
    ad.and_then(|a| a.metadata.annotations.as_ref())
        .and_then(|a| a.get(key))
        .cloned()
}

fn roles(subject: &Subject) -> String {
    let roles: Vec<&str> = subject.roles.iter().map(|r| r.as_str()).collect();
    roles.join(", ")
}

/// Reviews a create or update of `new` (replacing `old`) by `user` at `now`.
pub fn review(
    env: &Env,
    user: &Identity,
    old: Option<&AgentDeployment>,
    new: &AgentDeployment,
    now: DateTime<Utc>,
) -> Verdict {
    if user.username == env.operator {
        return Verdict::allow();
    }
    let ns = new.metadata.namespace.as_deref().unwrap_or_default();
    let name = new.metadata.name.as_deref().unwrap_or_default();
    let resource = format!("{ns}/{name}");
    let environment = new.spec.environment.as_str();
    let subject = env.mapping.subject(user, environment);
    let audit = |event: EventType, operation: &str, status: &str, message: &str| -> Draft {
        let mut d = draft(
            event,
            user,
            operation,
            resource.clone(),
            KIND,
            status,
            Some(message.to_owned()),
        );
        d.user_roles = subject
            .roles
            .iter()
            .map(|r| r.as_str().to_owned())
            .collect();
        d.environment = Some(environment.to_owned());
        d.platform = Some(new.spec.platform.as_str().to_owned());
        d.agents = vec![new.spec.agent.clone()];
        d
    };
    let refuse = |message: String| {
        let d = audit(EventType::PermissionDenied, "admit", "denied", &message);
        Verdict::refuse(message, d)
    };

    for key in [stamp::ANNOTATION, BREAK_GLASS_STAMP] {
        if annotation(Some(new), key) != annotation(old, key) {
            return refuse(format!(
                "the annotation {key} is written by the dvo admission webhook only; {} may not set or change it",
                user.username
            ));
        }
    }
    let digest = spec_digest(&new.spec);
    let spec_changed = old.is_none_or(|o| spec_digest(&o.spec) != digest);
    let mut patch = AnnotationPatch::new(new.metadata.annotations.is_some());
    if spec_changed {
        let permission = env.mapping.permission_for(new.spec.action, environment);
        if let Check::Denied { reason } = env.mapping.can(&subject, permission, environment) {
            return refuse(format!(
                "AgentDeployment {resource} refused: {reason} (environment {environment})"
            ));
        }
        let stamp = Stamp::sign(env.key, ns, name, &digest, user.clone());
        patch.set(stamp::ANNOTATION, &crate::json::to_string(&stamp));
    }

    let reason = annotation(Some(new), BREAK_GLASS);
    let mut recorded = None;
    match reason {
        Some(reason) if spec_changed || annotation(old, BREAK_GLASS).as_ref() != Some(&reason) => {
            let may = subject.is_human()
                && subject
                    .roles
                    .iter()
                    .any(|r| r.grants(Permission::BypassApproval));
            if !may {
                let holders: Vec<&str> = Permission::BypassApproval
                    .granted_by()
                    .iter()
                    .map(|r| r.as_str())
                    .collect();
                return refuse(format!(
                    "break-glass on AgentDeployment {resource} refused: {} (roles: {}) lacks permission bypass_approval, which roles {} have; remove the annotation {BREAK_GLASS}",
                    user.username,
                    roles(&subject),
                    holders.join(", ")
                ));
            }
            if reason.trim().is_empty() {
                return refuse(format!(
                    "break-glass on AgentDeployment {resource} needs a reason: {BREAK_GLASS}=\"<incident and why>\""
                ));
            }
            // For the spec the operator has decided (its status), the core says what a
            // break-glass would lift; one that would lift nothing is refused.
            let decided = old
                .filter(|_| !spec_changed)
                .and_then(|o| o.status.as_ref())
                .filter(|st| {
                    st.observed_generation == new.metadata.generation
                        && st.spec_digest.as_deref() == Some(digest.as_str())
                })
                .and_then(|st| st.decision.as_ref());
            if let Some(d) = decided.filter(|d| !crate::policy::break_glass::would_lift(d)) {
                let holding: Vec<String> = d
                    .violations
                    .iter()
                    .map(|v| format!("{} ({:?})", v.source, v.kind))
                    .chain(
                        d.approval_requirements
                            .iter()
                            .map(|r| format!("approval ({})", r.source)),
                    )
                    .collect();
                let what = if holding.is_empty() {
                    "nothing holds it back".to_owned()
                } else {
                    format!(
                        "what holds it back is not lifted by break-glass: {} (capabilities, permissions and policies with bypassable: false)",
                        holding.join(", ")
                    )
                };
                return refuse(format!(
                    "break-glass on AgentDeployment {resource} refused: it would lift nothing; {what}"
                ));
            }
            let bg = BreakGlass::sign(env.key, ns, name, &digest, user.clone(), &reason, now);
            patch.set(BREAK_GLASS_STAMP, &crate::json::to_string(&bg));
            // The stamp is a permission used, not yet an override: the operator records
            // break_glass_used with what it lifted, when it lifts something.
            let mut d = audit(
                EventType::PermissionGranted,
                "break_glass",
                "stamped",
                &reason,
            );
            crate::json::set(&mut d.metadata, "digest", digest.clone());
            recorded = Some(d);
        }
        reason => {
            let stale = spec_changed || reason.is_none();
            if stale && annotation(Some(new), BREAK_GLASS_STAMP).is_some() {
                patch.remove(BREAK_GLASS_STAMP);
            }
        }
    }
    Verdict {
        refusal: None,
        patch: patch.into_ops(),
        audit: recorded,
    }
}

/// The final check, after every mutating webhook and the schema: a new spec (create, or an
/// update that changed it) must carry a requester stamp that verifies for exactly this spec. It
/// catches a later mutating webhook changing the spec after ours, and anything our mutating
/// review let through unread.
pub fn review_final(
    env: &Env,
    user: &Identity,
    old: Option<&AgentDeployment>,
    new: &AgentDeployment,
) -> Verdict {
    if user.username == env.operator {
        return Verdict::allow();
    }
    let digest = spec_digest(&new.spec);
    if old.is_some_and(|o| spec_digest(&o.spec) == digest) {
        return Verdict::allow();
    }
    let ns = new.metadata.namespace.as_deref().unwrap_or_default();
    let name = new.metadata.name.as_deref().unwrap_or_default();
    let verified = annotation(Some(new), stamp::ANNOTATION)
        .ok_or_else(|| "it has no requester stamp".to_owned())
        .and_then(|text| Stamp::parse(&text))
        .and_then(|s| s.verify(env.key, ns, name, &digest).map(|_| ()));
    match verified {
        Ok(()) => Verdict::allow(),
        Err(why) => {
            let message = format!(
                "AgentDeployment {ns}/{name} refused: {why} (was its spec changed after the dvo webhook stamped it?)"
            );
            let mut d = draft(
                EventType::PermissionDenied,
                user,
                "admit",
                format!("{ns}/{name}"),
                KIND,
                "denied",
                Some(message.clone()),
            );
            d.environment = Some(new.spec.environment.clone());
            Verdict::refuse(message, d)
        }
    }
}

#[cfg(test)]
#[path = "agent_deployment_tests.rs"]
mod tests;
