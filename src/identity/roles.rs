//! The seed's roles and permissions table.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A governance role. People and machines get roles from the role mapping; no role means `viewer`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Can view status, cannot make changes.
    Viewer,
    /// Can deploy to development.
    Developer,
    /// Can deploy to development and staging, and roll back staging.
    Operator,
    /// Can deploy to and roll back every environment, production included.
    ReleaseManager,
    /// Every permission, including policy management and break-glass.
    Admin,
    /// Automated deployments (CI/CD): development and staging only, never a human approver.
    ServiceAccount,
}

/// A fine-grained permission from the seed's table.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// See status.
    ViewStatus,
    /// See deployments.
    ViewDeployments,
    /// Read the audit log.
    ViewAuditLog,
    /// Validate agents.
    ValidateAgents,
    /// Deploy to development-tier environments.
    DeployDevelopment,
    /// Deploy to staging-tier environments.
    DeployStaging,
    /// Deploy to production-tier environments.
    DeployProduction,
    /// Roll back staging-tier environments.
    RollbackStaging,
    /// Roll back production-tier environments.
    RollbackProduction,
    /// Create, change and delete policies.
    ManagePolicies,
    /// Change capabilities.
    ManageCapabilities,
    /// Change the role mapping.
    ManageUsers,
    /// Break-glass: let one spec through windows and approvals.
    BypassApproval,
}

impl Role {
    /// Every role, in table order.
    pub const ALL: [Role; 6] = [
        Role::Viewer,
        Role::Developer,
        Role::Operator,
        Role::ReleaseManager,
        Role::Admin,
        Role::ServiceAccount,
    ];

    /// The permissions the seed's table grants this role.
    pub fn permissions(self) -> &'static [Permission] {
        use Permission::*;
        match self {
            Role::Viewer => &[ViewStatus, ViewDeployments],
            Role::Developer => &[
                ViewStatus,
                ViewDeployments,
                ValidateAgents,
                DeployDevelopment,
            ],
            Role::Operator => &[
                ViewStatus,
                ViewDeployments,
                ViewAuditLog,
                ValidateAgents,
                DeployDevelopment,
                DeployStaging,
                RollbackStaging,
            ],
            Role::ReleaseManager => &[
                ViewStatus,
                ViewDeployments,
                ViewAuditLog,
                ValidateAgents,
                DeployDevelopment,
                DeployStaging,
                DeployProduction,
                RollbackStaging,
                RollbackProduction,
            ],
            Role::Admin => &Permission::ALL,
            Role::ServiceAccount => &[ViewStatus, ValidateAgents, DeployDevelopment, DeployStaging],
        }
    }

    /// Whether the seed's table grants `permission` to this role.
    pub fn grants(self, permission: Permission) -> bool {
        self.permissions().contains(&permission)
    }

    /// Whether holders of this role can count as human approvers.
    pub fn is_human(self) -> bool {
        self != Role::ServiceAccount
    }

    /// The name used in manifests and the role mapping.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Developer => "developer",
            Role::Operator => "operator",
            Role::ReleaseManager => "release_manager",
            Role::Admin => "admin",
            Role::ServiceAccount => "service_account",
        }
    }
}

impl Permission {
    /// Every permission, in table order.
    pub const ALL: [Permission; 13] = [
        Permission::ViewStatus,
        Permission::ViewDeployments,
        Permission::ViewAuditLog,
        Permission::ValidateAgents,
        Permission::DeployDevelopment,
        Permission::DeployStaging,
        Permission::DeployProduction,
        Permission::RollbackStaging,
        Permission::RollbackProduction,
        Permission::ManagePolicies,
        Permission::ManageCapabilities,
        Permission::ManageUsers,
        Permission::BypassApproval,
    ];

    /// The seed's approval-eligible permissions: lacking them sends a request to approval
    /// instead of refusing it.
    pub fn approval_eligible(self) -> bool {
        matches!(
            self,
            Permission::DeployProduction | Permission::RollbackProduction
        )
    }

    /// The name used in manifests and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::ViewStatus => "view_status",
            Permission::ViewDeployments => "view_deployments",
            Permission::ViewAuditLog => "view_audit_log",
            Permission::ValidateAgents => "validate_agents",
            Permission::DeployDevelopment => "deploy_development",
            Permission::DeployStaging => "deploy_staging",
            Permission::DeployProduction => "deploy_production",
            Permission::RollbackStaging => "rollback_staging",
            Permission::RollbackProduction => "rollback_production",
            Permission::ManagePolicies => "manage_policies",
            Permission::ManageCapabilities => "manage_capabilities",
            Permission::ManageUsers => "manage_users",
            Permission::BypassApproval => "bypass_approval",
        }
    }

    /// The roles whose table entry grants this permission.
    pub fn granted_by(self) -> Vec<Role> {
        Role::ALL.into_iter().filter(|r| r.grants(self)).collect()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Permission::*;
    use Role::*;

    /// The seed's table, written out as (role, permission, granted) for every pair.
    #[test]
    fn role_table_matches_the_seed() {
        let granted: &[(Role, &[Permission])] = &[
            (Viewer, &[ViewStatus, ViewDeployments]),
            (
                Developer,
                &[
                    ViewStatus,
                    ViewDeployments,
                    ValidateAgents,
                    DeployDevelopment,
                ],
            ),
            (
                Operator,
                &[
                    ViewStatus,
                    ViewDeployments,
                    ViewAuditLog,
                    ValidateAgents,
                    DeployDevelopment,
                    DeployStaging,
                    RollbackStaging,
                ],
            ),
            (
                ReleaseManager,
                &[
                    ViewStatus,
                    ViewDeployments,
                    ViewAuditLog,
                    ValidateAgents,
                    DeployDevelopment,
                    DeployStaging,
                    DeployProduction,
                    RollbackStaging,
                    RollbackProduction,
                ],
            ),
            (Admin, &Permission::ALL),
            (
                ServiceAccount,
                &[ViewStatus, ValidateAgents, DeployDevelopment, DeployStaging],
            ),
        ];
        for (role, perms) in granted {
            for p in Permission::ALL {
                assert_eq!(role.grants(p), perms.contains(&p), "{role} / {p}");
            }
        }
    }

    #[test]
    fn names_round_trip_through_serde() {
        for r in Role::ALL {
            let s = serde_json::to_value(r).unwrap();
            assert_eq!(s, r.as_str());
            assert_eq!(serde_json::from_value::<Role>(s).unwrap(), r);
        }
        for p in Permission::ALL {
            let s = serde_json::to_value(p).unwrap();
            assert_eq!(s, p.as_str());
            assert_eq!(serde_json::from_value::<Permission>(s).unwrap(), p);
        }
    }

    #[test]
    fn only_production_permissions_are_approval_eligible() {
        let eligible: Vec<_> = Permission::ALL
            .into_iter()
            .filter(|p| p.approval_eligible())
            .collect();
        assert_eq!(eligible, vec![DeployProduction, RollbackProduction]);
        assert_eq!(BypassApproval.granted_by(), vec![Admin]);
        assert_eq!(DeployProduction.granted_by(), vec![ReleaseManager, Admin]);
    }
}
