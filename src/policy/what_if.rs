//! What a policy change would do: every AgentDeployment decided under the policies in force and
//! under the proposed ones, at the same moment with the same requester and evidence, and the
//! ones whose outcome differs. Pure.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Decision, Outcome, Request, Rules, decide};

/// An AgentDeployment whose outcome the change would change.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// `namespace/name`.
    pub agent_deployment: String,
    /// The outcome under the policies in force.
    pub now: Outcome,
    /// The outcome under the proposed policies.
    pub proposed: Outcome,
    /// Why, under the proposed policies: its violations, or the policies that matched.
    pub why: Vec<String>,
}

/// The reasons a decision gives: its violations, else the policies that matched.
fn reasons(d: &Decision) -> Vec<String> {
    if !d.violations.is_empty() {
        return d
            .violations
            .iter()
            .map(|v| format!("{}: {}", v.source, v.message))
            .collect();
    }
    d.matched_policies
        .iter()
        .map(|m| format!("policy {} ({:?}): {}", m.name, m.action, m.reason))
        .collect()
}

/// The AgentDeployments (`name`, request) whose outcome differs between `current` and
/// `proposed` at `at`, in the order given.
pub fn changes<'a>(
    current: &Rules,
    proposed: &Rules,
    requests: impl IntoIterator<Item = (String, &'a Request)>,
    at: DateTime<Utc>,
) -> Vec<Change> {
    requests
        .into_iter()
        .filter_map(|(name, request)| {
            let now = decide(current, request, at).outcome;
            let after = decide(proposed, request, at);
            (after.outcome != now).then(|| Change {
                agent_deployment: name,
                now,
                proposed: after.outcome,
                why: reasons(&after),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::CapabilitySet;
    use crate::crd::DeploymentPolicySpec;
    use crate::identity::RoleMapping;

    fn policy(name: &str, yaml: &str) -> (String, DeploymentPolicySpec) {
        (name.to_owned(), crate::yaml::from_str(yaml).unwrap())
    }

    fn rules(policies: Vec<(String, DeploymentPolicySpec)>) -> Rules {
        let mapping: RoleMapping = crate::yaml::from_str("users: {ops: [operator]}").unwrap();
        Rules::new(policies, CapabilitySet::default(), mapping)
    }

    fn request(ns: &str, env: &str) -> Request {
        Request {
            namespace: ns.into(),
            labels: Default::default(),
            spec: crate::yaml::from_str(&format!(
                "agent: GHA\nplatform: langchain\nenvironment: {env}\ntemplate: {{spec: {{containers: [{{name: a, image: a:1}}]}}}}"
            ))
            .unwrap(),
            requester: Some(crate::identity::Identity {
                username: "ops".into(),
                ..Default::default()
            }),
            staging_validated: false,
        }
    }

    #[test]
    fn only_changed_outcomes_are_listed_with_the_new_reasons() {
        let hold = policy(
            "hold",
            "action: RequireApproval\napproval: {roles: [release_manager]}\nscope: {namespaces: [team]}",
        );
        let freeze = policy(
            "freeze",
            "action: Deny\nmessage: frozen\nscope: {namespaces: [team], environments: [staging]}",
        );
        let current = rules(vec![hold.clone()]);
        let staging = request("team", "staging");
        let other = request("elsewhere", "staging");
        let dev = request("team", "development");
        let all = || {
            vec![
                ("team/a".to_owned(), &staging),
                ("elsewhere/b".to_owned(), &other),
                ("team/c".to_owned(), &dev),
            ]
        };
        let at = "2026-11-26T10:00:00Z".parse().unwrap();
        // Adding a freeze changes only what it scopes.
        let added = changes(&current, &rules(vec![hold.clone(), freeze]), all(), at);
        assert_eq!(added.len(), 1, "{added:?}");
        assert_eq!(added[0].agent_deployment, "team/a");
        assert_eq!(
            (added[0].now, added[0].proposed),
            (Outcome::RequireApproval, Outcome::Deny)
        );
        assert!(
            added[0].why.iter().any(|w| w.contains("frozen")),
            "{added:?}"
        );
        // Removing the hold releases both of the team's.
        let removed = changes(&current, &rules(vec![]), all(), at);
        let names: Vec<&str> = removed
            .iter()
            .map(|c| c.agent_deployment.as_str())
            .collect();
        assert_eq!(names, ["team/a", "team/c"]);
        assert!(removed.iter().all(|c| c.proposed == Outcome::Allow));
        // No change, nothing listed.
        assert!(changes(&current, &rules(vec![hold]), all(), at).is_empty());
    }
}
