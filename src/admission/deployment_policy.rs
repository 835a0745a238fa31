//! DeploymentPolicy admission: a policy is compiled and checked (regexes, windows, blackouts,
//! time zones, approvals) before it is stored, and a policy labelled
//! `dvo.caat.io/protected: "true"` is deleted only by an admin.

use super::{Env, Verdict, draft};
use crate::audit::EventType;
use crate::crd::DeploymentPolicy;
use crate::identity::{Identity, Role};

/// The label that protects a policy from deletion by anyone but an admin.
pub const PROTECTED: &str = "dvo.caat.io/protected";
const KIND: &str = "DeploymentPolicy";

fn name(p: &DeploymentPolicy) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

/// Reviews a created or changed policy.
pub fn review_write(user: &Identity, new: &DeploymentPolicy) -> Verdict {
    match crate::policy::validate(&new.spec) {
        Ok(()) => Verdict::allow(),
        Err(problems) => {
            let message = format!(
                "DeploymentPolicy {} is invalid: {}",
                name(new),
                problems.join("; ")
            );
            Verdict::refuse(
                message.clone(),
                draft(
                    EventType::PolicyViolation,
                    user,
                    "admit",
                    name(new),
                    KIND,
                    "denied",
                    Some(message),
                ),
            )
        }
    }
}

/// Reviews the deletion of `old`.
pub fn review_delete(env: &Env, user: &Identity, old: &DeploymentPolicy) -> Verdict {
    let protected = old
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(PROTECTED))
        .is_some_and(|v| v == "true");
    if !protected {
        return Verdict::allow();
    }
    // Roles that hold in every environment: an environment grant is not enough for a policy
    // that applies across them.
    let subject = env.mapping.subject(user, "");
    let roles: Vec<String> = subject
        .roles
        .iter()
        .map(|r| r.as_str().to_owned())
        .collect();
    let (event, status, refusal) = if subject.is_human() && subject.roles.contains(&Role::Admin) {
        (EventType::PermissionGranted, "success", None)
    } else {
        (
            EventType::PermissionDenied,
            "denied",
            Some(format!(
                "DeploymentPolicy {} is protected ({PROTECTED}=true): only an admin may delete it; {} (roles: {}) is not one",
                name(old),
                user.username,
                roles.join(", ")
            )),
        )
    };
    let mut d = draft(
        event,
        user,
        "delete_protected_policy",
        name(old),
        KIND,
        status,
        refusal.clone(),
    );
    d.user_roles = roles;
    Verdict {
        refusal,
        patch: vec![],
        audit: Some(d),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::identity::RoleMapping;

    fn policy(labels: serde_json::Value, spec: serde_json::Value) -> DeploymentPolicy {
        serde_json::from_value(json!({
            "apiVersion": "dvo.caat.io/v1alpha1", "kind": "DeploymentPolicy",
            "metadata": {"name": "prod-gate", "labels": labels},
            "spec": spec,
        }))
        .unwrap()
    }

    fn user(name: &str, group: &str) -> Identity {
        Identity {
            username: name.into(),
            uid: None,
            groups: vec![group.into()],
        }
    }

    #[test]
    fn invalid_policies_are_refused_with_every_problem() {
        let bad = policy(
            json!(null),
            json!({"action": "Deny", "timeZone": "Mars/Olympus",
                "conditions": [{"field": "agent", "operator": "Matches", "value": "("}]}),
        );
        let v = review_write(&user("alice-admin", "dvo-admins"), &bad);
        let message = v.refusal.unwrap();
        assert!(
            message.starts_with("DeploymentPolicy prod-gate is invalid: "),
            "{message}"
        );
        assert!(message.contains("Mars/Olympus"), "{message}");
        assert!(message.contains("regex"), "{message}");
        assert_eq!(v.audit.unwrap().event_type, EventType::PolicyViolation);
        let good = policy(json!(null), json!({"action": "Deny"}));
        assert_eq!(review_write(&user("x", "y"), &good), Verdict::allow());
    }

    #[test]
    fn protected_policies_are_deleted_by_admins_only() {
        let mapping: RoleMapping =
            crate::yaml::from_str(include_str!("../../examples/role-mapping.yaml")).unwrap();
        let env = Env {
            mapping: &mapping,
            key: b"k",
            operator: "op",
        };
        let spec = json!({"action": "Deny"});
        let open = policy(json!(null), spec.clone());
        let rosa = user("rosa-release", "3f2a8c1e-5b7d-4e9a-a1c2-0d4e6f8b9a10");
        assert_eq!(review_delete(&env, &rosa, &open), Verdict::allow());
        let protected = policy(json!({(PROTECTED): "true"}), spec);
        let v = review_delete(&env, &rosa, &protected);
        assert_eq!(
            v.refusal.as_deref(),
            Some(
                "DeploymentPolicy prod-gate is protected (dvo.caat.io/protected=true): only an admin may delete it; rosa-release (roles: release_manager) is not one"
            )
        );
        let v = review_delete(&env, &user("alice-admin", "dvo-admins"), &protected);
        assert_eq!(v.refusal, None);
        assert_eq!(v.audit.unwrap().event_type, EventType::PermissionGranted);
    }
}
