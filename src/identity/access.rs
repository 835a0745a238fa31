//! Permission checks: `can(subject, permission, environment)`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Permission, Role, RoleMapping, Subject};
use crate::crd::DeployAction;

/// How strict an environment is; decides which deploy and rollback permissions it needs.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Needs `deploy_development` (rollback too).
    Development,
    /// Needs `deploy_staging` / `rollback_staging`.
    Staging,
    /// Needs `deploy_production` / `rollback_production`; lacking them goes to approval.
    Production,
}

/// The outcome of a permission check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// A role of the subject grants the permission.
    Allowed {
        /// The first role (in table order) that grants it.
        role: Role,
    },
    /// No role grants it, but the permission is approval-eligible: the request goes to approval.
    NeedsApproval {
        /// Why, in words.
        reason: String,
    },
    /// Refused.
    Denied {
        /// Why, in words: names the missing permission and the roles that have it.
        reason: String,
    },
}

impl RoleMapping {
    /// The tier of an environment: its own name for the three standard ones, the configured
    /// tier for others, production when unknown (fail closed).
    pub fn tier(&self, environment: &str) -> Tier {
        match environment {
            "development" => Tier::Development,
            "staging" => Tier::Staging,
            "production" => Tier::Production,
            other => self
                .environment_tiers
                .get(other)
                .copied()
                .unwrap_or(Tier::Production),
        }
    }

    /// The permission an action needs in an environment.
    pub fn permission_for(&self, action: DeployAction, environment: &str) -> Permission {
        match (action, self.tier(environment)) {
            (_, Tier::Development) => Permission::DeployDevelopment,
            (DeployAction::Deploy, Tier::Staging) => Permission::DeployStaging,
            (DeployAction::Deploy, Tier::Production) => Permission::DeployProduction,
            (DeployAction::Rollback, Tier::Staging) => Permission::RollbackStaging,
            (DeployAction::Rollback, Tier::Production) => Permission::RollbackProduction,
        }
    }

    /// Whether `subject` holds `permission` in `environment`, with the seed's rules: an
    /// environment override of `false` refuses it for everyone; production deploy and rollback
    /// go to approval instead of being refused.
    pub fn can(&self, subject: &Subject, permission: Permission, environment: &str) -> Check {
        let overridden = self
            .permission_overrides
            .get(environment)
            .and_then(|o| o.get(&permission))
            .copied();
        if overridden == Some(false) {
            return Check::Denied {
                reason: format!("permission {permission} is disabled in environment {environment}"),
            };
        }
        if let Some(role) = subject.roles.iter().copied().find(|r| r.grants(permission)) {
            return Check::Allowed { role };
        }
        let holders = permission
            .granted_by()
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let roles = subject
            .roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let missing = format!(
            "{} (roles: {roles}) lacks permission {permission}, which roles {holders} have",
            subject.username
        );
        if permission.approval_eligible() {
            Check::NeedsApproval {
                reason: format!("{missing}; the request needs approval"),
            }
        } else {
            Check::Denied { reason: missing }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use Permission::*;

    fn subject(m: &RoleMapping, user: &str, env: &str) -> Subject {
        m.subject(
            &Identity {
                username: user.into(),
                ..Default::default()
            },
            env,
        )
    }

    fn mapping() -> RoleMapping {
        crate::yaml::from_str(
            r#"
users: {adm: [admin], rm: [release_manager], op: [operator], dev: [developer], ci: [service_account]}
permissionOverrides: {production: {bypass_approval: false}}
environmentTiers: {qa: staging, sandbox: development}
"#,
        )
        .unwrap()
    }

    #[test]
    fn deploy_permission_by_role_and_environment() {
        let m = mapping();
        // (user, environment, expected: 'A' allowed, 'P' approval, 'D' denied)
        let table: &[(&str, [char; 6])] = &[
            //            development staging production qa sandbox unknown-env
            ("adm", ['A', 'A', 'A', 'A', 'A', 'A']),
            ("rm", ['A', 'A', 'A', 'A', 'A', 'A']),
            ("op", ['A', 'A', 'P', 'A', 'A', 'P']),
            ("dev", ['A', 'D', 'P', 'D', 'A', 'P']),
            ("ci", ['A', 'A', 'P', 'A', 'A', 'P']),
            ("viewer", ['D', 'D', 'P', 'D', 'D', 'P']),
        ];
        let envs = [
            "development",
            "staging",
            "production",
            "qa",
            "sandbox",
            "eu-prod",
        ];
        for (user, expected) in table {
            for (env, want) in envs.iter().zip(expected) {
                for action in [DeployAction::Deploy, DeployAction::Rollback] {
                    let perm = m.permission_for(action, env);
                    let got = match m.can(&subject(&m, user, env), perm, env) {
                        Check::Allowed { .. } => 'A',
                        Check::NeedsApproval { .. } => 'P',
                        Check::Denied { .. } => 'D',
                    };
                    // Rollback in staging needs rollback_staging, which developers and CI lack too.
                    let want = if action == DeployAction::Rollback
                        && m.tier(env) == Tier::Staging
                        && (*user == "ci")
                    {
                        'D'
                    } else {
                        *want
                    };
                    assert_eq!(got, want, "{user} {action:?} in {env} ({perm})");
                }
            }
        }
    }

    #[test]
    fn overrides_refuse_even_admins_and_messages_name_the_holders() {
        let m = mapping();
        let adm = subject(&m, "adm", "production");
        assert!(
            matches!(m.can(&adm, BypassApproval, "production"), Check::Denied { reason } if reason.contains("disabled in environment production"))
        );
        assert_eq!(
            m.can(&adm, BypassApproval, "staging"),
            Check::Allowed { role: Role::Admin }
        );
        let dev = subject(&m, "dev", "staging");
        match m.can(&dev, DeployStaging, "staging") {
            Check::Denied { reason } => assert_eq!(
                reason,
                "dev (roles: developer) lacks permission deploy_staging, which roles operator, release_manager, admin, service_account have"
            ),
            other => panic!("{other:?}"),
        }
    }
}
