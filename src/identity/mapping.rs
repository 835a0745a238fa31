//! The role mapping: which roles a user, a group or a service account holds.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::access::Tier;
use super::{Permission, Role};

/// An authenticated identity as the API server reports it (`userInfo`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    /// The user name, e.g. `alice@example.com` or `system:serviceaccount:ci:deployer`.
    pub username: String,
    /// The user's UID, when the authenticator gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Groups, e.g. Entra ID group object IDs.
    #[serde(default)]
    pub groups: Vec<String>,
}

impl Identity {
    /// The `namespace/name` of a Kubernetes service account user, if this is one.
    pub fn service_account(&self) -> Option<String> {
        let rest = self.username.strip_prefix("system:serviceaccount:")?;
        let (ns, name) = rest.split_once(':')?;
        Some(format!("{ns}/{name}"))
    }
}

/// An identity together with the roles the mapping gives it in one environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    /// The user name.
    pub username: String,
    /// The user's groups.
    pub groups: Vec<String>,
    /// Roles in effect (never empty: no mapping means `viewer`).
    pub roles: BTreeSet<Role>,
    /// True for machines (Kubernetes service accounts and holders of `service_account`): they
    /// never count as human approvers.
    pub machine: bool,
}

impl Subject {
    /// Whether this subject may count as a human approver.
    pub fn is_human(&self) -> bool {
        !self.machine
    }
}

/// Roles granted to users, groups and service accounts in one environment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Grants {
    /// User name → roles.
    #[serde(default)]
    pub users: RoleTable,
    /// Group (for Entra ID, the group object ID) → roles.
    #[serde(default)]
    pub groups: RoleTable,
    /// Service account as `namespace/name` → roles.
    #[serde(default)]
    pub service_accounts: RoleTable,
}

type RoleTable = BTreeMap<String, BTreeSet<Role>>;

/// Adds to `into` the roles that the three tables give `identity`.
fn collect_roles(
    users: &RoleTable,
    groups: &RoleTable,
    service_accounts: &RoleTable,
    identity: &Identity,
    into: &mut BTreeSet<Role>,
) {
    let lookups = [
        users.get(&identity.username),
        identity
            .service_account()
            .and_then(|sa| service_accounts.get(&sa)),
    ];
    into.extend(lookups.into_iter().flatten().flatten().copied());
    for group in &identity.groups {
        into.extend(groups.get(group).into_iter().flatten().copied());
    }
}

/// The role mapping and access settings, as configured in the operator's ConfigMap (Helm values).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleMapping {
    /// User name → roles, in every environment.
    #[serde(default)]
    pub users: RoleTable,
    /// Group (for Entra ID, the group object ID) → roles, in every environment.
    #[serde(default)]
    pub groups: RoleTable,
    /// Service account as `namespace/name` → roles, in every environment.
    #[serde(default)]
    pub service_accounts: RoleTable,
    /// Extra roles that hold only in one environment (environment name → grants).
    #[serde(default)]
    pub environments: BTreeMap<String, Grants>,
    /// Permissions switched off in one environment for everyone (environment → permission → false).
    #[serde(default)]
    pub permission_overrides: BTreeMap<String, BTreeMap<Permission, bool>>,
    /// The tier of environments with names other than development, staging and production.
    /// An environment with no tier is treated as production (the strictest).
    #[serde(default)]
    pub environment_tiers: BTreeMap<String, Tier>,
}

impl RoleMapping {
    /// Reads a mapping from its YAML (the ConfigMap's `roles.yaml`, a `--role-mapping` file):
    /// empty text is the empty mapping (everyone a viewer); anything unreadable is an error,
    /// never a partial mapping.
    pub fn parse(text: &str) -> Result<RoleMapping, String> {
        if text.trim().is_empty() {
            return Ok(RoleMapping::default());
        }
        crate::yaml::from_str(text).map_err(|e| e.to_string())
    }

    /// The roles and machine flag of `identity` in `environment`.
    pub fn subject(&self, identity: &Identity, environment: &str) -> Subject {
        let mut roles = BTreeSet::new();
        collect_roles(
            &self.users,
            &self.groups,
            &self.service_accounts,
            identity,
            &mut roles,
        );
        if let Some(env) = self.environments.get(environment) {
            collect_roles(
                &env.users,
                &env.groups,
                &env.service_accounts,
                identity,
                &mut roles,
            );
        }
        if roles.is_empty() {
            roles.insert(Role::Viewer);
        }
        let machine = identity.service_account().is_some()
            || identity
                .groups
                .iter()
                .any(|g| g == "system:serviceaccounts")
            || roles.contains(&Role::ServiceAccount);
        Subject {
            username: identity.username.clone(),
            groups: identity.groups.clone(),
            roles,
            machine,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping() -> RoleMapping {
        crate::yaml::from_str(
            r#"
users:
  alice@example.com: [admin]
groups:
  3f2a8c1e-5b7d-4e9a-a1c2-0d4e6f8b9a10: [release_manager]
  developers: [developer]
serviceAccounts:
  ci/deployer: [service_account]
  argocd/argocd-application-controller: [operator]
environments:
  staging:
    groups:
      developers: [operator]
permissionOverrides:
  production:
    bypass_approval: false
environmentTiers:
  qa: staging
"#,
        )
        .unwrap()
    }

    fn id(user: &str, groups: &[&str]) -> Identity {
        Identity {
            username: user.into(),
            uid: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn roles_come_from_users_groups_service_accounts_and_environments() {
        let m = mapping();
        // (user, groups, environment, roles, machine)
        type Case<'a> = (&'a str, &'a [&'a str], &'a str, &'a [Role], bool);
        let cases: &[Case] = &[
            (
                "alice@example.com",
                &[],
                "production",
                &[Role::Admin],
                false,
            ),
            (
                "bob",
                &["3f2a8c1e-5b7d-4e9a-a1c2-0d4e6f8b9a10"],
                "production",
                &[Role::ReleaseManager],
                false,
            ),
            (
                "dora",
                &["developers"],
                "development",
                &[Role::Developer],
                false,
            ),
            (
                "dora",
                &["developers"],
                "staging",
                &[Role::Developer, Role::Operator],
                false,
            ),
            (
                "nobody",
                &["unknown-group"],
                "production",
                &[Role::Viewer],
                false,
            ),
            (
                "system:serviceaccount:ci:deployer",
                &["system:serviceaccounts"],
                "staging",
                &[Role::ServiceAccount],
                true,
            ),
            // A service account mapped to a human role is still a machine.
            (
                "system:serviceaccount:argocd:argocd-application-controller",
                &[],
                "staging",
                &[Role::Operator],
                true,
            ),
            (
                "system:serviceaccount:other:sa",
                &[],
                "staging",
                &[Role::Viewer],
                true,
            ),
        ];
        for (user, groups, env, roles, machine) in cases {
            let s = m.subject(&id(user, groups), env);
            assert_eq!(s.roles, roles.iter().copied().collect(), "{user} in {env}");
            assert_eq!(s.machine, *machine, "{user} machine");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = crate::yaml::from_str::<RoleMapping>("user: {}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `user`"), "{err}");
        let err = crate::yaml::from_str::<RoleMapping>("users: {a: [root]}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant `root`"), "{err}");
    }

    #[test]
    fn parse_takes_empty_text_and_refuses_anything_unreadable() {
        assert_eq!(RoleMapping::parse("  \n"), Ok(RoleMapping::default()));
        let ok = RoleMapping::parse("groups: {g: [release_manager]}").unwrap();
        assert_eq!(ok.groups["g"], [Role::ReleaseManager].into());
        for (text, want) in [
            ("groups: {g: [superuser]}", "unknown variant `superuser`"),
            ("grups: {g: [admin]}", "unknown field `grups`"),
            (
                "environmentTiers: {}\nenvironmentTiers: {}",
                "duplicate mapping key: environmentTiers",
            ),
            ("users: [alice]", "expected mapping start"),
        ] {
            let err = RoleMapping::parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
