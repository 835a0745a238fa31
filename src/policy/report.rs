//! dvo's decisions as `wgpolicyk8s.io/v1alpha2` PolicyReports (the format Kyverno and Policy
//! Reporter use): one report per namespace, with a result per policy (or permission or
//! capability) that holds an AgentDeployment back, lets it through after approval, or refused
//! it; and one ClusterPolicyReport of the DeploymentPolicies themselves. Pure: built from the
//! objects' status, with timestamps from their conditions, so an unchanged cluster gives an
//! unchanged report.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::crd::agent_deployment::Phase;
use crate::crd::{AgentDeployment, DeploymentPolicy};
use crate::policy::decision::ViolationKind;

/// The API version of the reports.
pub const API_VERSION: &str = "wgpolicyk8s.io/v1alpha2";
/// The name of dvo's report in each namespace, and of its cluster report.
pub const NAME: &str = "dvo";
/// The label on every report dvo writes.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "dvo-operator");

/// The most results a report lists, and the longest message a result carries (in bytes):
/// together they keep a report far below the API server's object size limit.
pub const MAX_RESULTS: usize = 500;
const MAX_MESSAGE: usize = 512;

/// Keeps what needs attention first and at most [`MAX_RESULTS`] of `results`, with a note of
/// how many more there are (the summary counts them all).
fn bounded(results: &mut Vec<Value>) {
    if results.len() <= MAX_RESULTS {
        return;
    }
    let rank = |r: &Value| match r.get("result").and_then(|v| v.as_str()) {
        Some("fail") => 0,
        Some("error") => 1,
        Some("warn") => 2,
        _ => 3,
    };
    results.sort_by_key(rank);
    let left = results.len().saturating_sub(MAX_RESULTS);
    results.truncate(MAX_RESULTS);
    results.push(json!({
        "source": "dvo", "policy": "dvo-report", "category": "Report", "result": "skip",
        "severity": "info", "scored": false,
        "message": format!("{left} more results (passing first) are counted in the summary but not listed"),
    }));
}

/// The counts of a report's results by outcome.
fn summary(results: &[Value]) -> Value {
    let count = |r: &str| results.iter().filter(|x| x["result"] == r).count();
    json!({"pass": count("pass"), "fail": count("fail"), "warn": count("warn"),
           "error": count("error"), "skip": count("skip")})
}

/// `policy/NAME` is reported as policy NAME; `permission/...` and `capability/...` as written.
fn policy_name(source: &str) -> &str {
    source.strip_prefix("policy/").unwrap_or(source)
}

/// The newest condition transition: when the object's state last changed.
fn changed_at(ad: &AgentDeployment) -> Option<Value> {
    let newest = ad
        .status
        .as_ref()?
        .conditions
        .iter()
        .map(|c| c.last_transition_time.0)
        .max()?;
    Some(json!({"seconds": newest.as_second(), "nanos": 0}))
}

/// The results for one AgentDeployment.
fn results_of(ad: &AgentDeployment) -> Vec<Value> {
    let Some(status) = &ad.status else {
        return vec![];
    };
    let Some(decision) = &status.decision else {
        return vec![];
    };
    let phase = status.phase.unwrap_or(Phase::Pending);
    let resource = json!([{
        "apiVersion": "dvo.caat.io/v1alpha1", "kind": "AgentDeployment",
        "namespace": ad.metadata.namespace, "name": ad.metadata.name, "uid": ad.metadata.uid,
    }]);
    let properties = json!({
        "phase": format!("{phase:?}"), "environment": ad.spec.environment, "agent": ad.spec.agent,
        "digest": status.spec_digest.clone().unwrap_or_default(),
    });
    let result = |policy: &str, category: &str, result: &str, severity: &str, message: String| {
        let message = crate::json::truncate(&message, MAX_MESSAGE);
        let mut r = json!({
            "source": "dvo", "policy": policy, "category": category, "result": result,
            "severity": severity, "scored": true, "message": message,
            "resources": resource.clone(), "properties": properties.clone(),
        });
        if let Some(at) = changed_at(ad) {
            crate::json::set(&mut r, "timestamp", at);
        }
        r
    };
    let mut out = vec![];
    for v in &decision.violations {
        let (outcome, severity) = match v.kind {
            ViolationKind::EvaluationError => ("error", "high"),
            _ => ("fail", "high"),
        };
        out.push(result(
            policy_name(&v.source),
            &format!("{:?}", v.kind),
            outcome,
            severity,
            v.message.clone(),
        ));
    }
    for req in &decision.approval_requirements {
        let roles: Vec<&str> = req.roles.iter().map(|r| r.as_str()).collect();
        let needs = format!(
            "{} approval(s) of {}{}",
            req.min_approvals,
            roles.join(", "),
            if req.require_mfa { ", with MFA" } else { "" }
        );
        // Released (approved, or let through by break-glass) only once it rolled out; nothing
        // else is called a pass.
        let (outcome, message) = match phase {
            Phase::PendingApproval => ("warn", format!("held until {needs}")),
            Phase::Rejected => ("fail", format!("rejected; needed {needs}")),
            Phase::ApprovalExpired => ("fail", format!("expired unapproved; needed {needs}")),
            Phase::Progressing | Phase::Deployed | Phase::Degraded | Phase::Failed => {
                ("pass", format!("released ({phase:?}); needed {needs}"))
            }
            Phase::Pending | Phase::Blocked | Phase::ManualActionRequired => {
                ("skip", format!("not yet asked ({phase:?}); needs {needs}"))
            }
        };
        out.push(result(
            policy_name(&req.source),
            "ApprovalRequired",
            outcome,
            "medium",
            message,
        ));
    }
    if out.is_empty() {
        let (outcome, message) = match phase {
            Phase::ManualActionRequired | Phase::Degraded => (
                "warn",
                status
                    .message
                    .clone()
                    .unwrap_or_else(|| format!("{phase:?}")),
            ),
            _ => ("pass", "allowed by the policies in force".to_owned()),
        };
        out.push(result("dvo-decision", "Decision", outcome, "info", message));
    }
    out
}

/// The PolicyReport of `namespace`, of the AgentDeployments in it (in any order).
pub fn namespace_report<'a>(
    namespace: &str,
    ads: impl IntoIterator<Item = &'a AgentDeployment>,
) -> Value {
    let mut ads: Vec<&AgentDeployment> = ads.into_iter().collect();
    ads.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut results: Vec<Value> = ads.into_iter().flat_map(results_of).collect();
    // The summary counts every result; the list keeps what needs attention first and stops at
    // MAX_RESULTS, so that a report stays far below the API server's object size limit.
    let counts = summary(&results);
    bounded(&mut results);
    json!({
        "apiVersion": API_VERSION, "kind": "PolicyReport",
        "metadata": {"name": NAME, "namespace": namespace,
                     "labels": {MANAGED_BY.0: MANAGED_BY.1}},
        "summary": counts, "results": results,
    })
}

/// The ClusterPolicyReport of the DeploymentPolicies: each accepted (pass) or not (error, with
/// why).
pub fn cluster_report<'a>(policies: impl IntoIterator<Item = &'a DeploymentPolicy>) -> Value {
    let mut by_name: BTreeMap<String, &DeploymentPolicy> = BTreeMap::new();
    for p in policies {
        by_name.insert(p.metadata.name.clone().unwrap_or_default(), p);
    }
    let mut results: Vec<Value> = by_name
        .iter()
        .map(|(name, p)| {
            let accepted = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Accepted"));
            let (outcome, message) = match accepted {
                Some(c) if c.status == "True" => (
                    "pass",
                    crate::json::truncate(&c.message, MAX_MESSAGE).to_owned(),
                ),
                Some(c) => (
                    "error",
                    crate::json::truncate(&c.message, MAX_MESSAGE).to_owned(),
                ),
                None => ("skip", "not checked by the operator yet".to_owned()),
            };
            let mut r = json!({
                "source": "dvo", "policy": name, "category": "PolicyValidity",
                "result": outcome, "severity": "info", "scored": true, "message": message,
                "resources": [{"apiVersion": "dvo.caat.io/v1alpha1", "kind": "DeploymentPolicy",
                               "name": name, "uid": p.metadata.uid}],
            });
            if let Some(c) = accepted {
                crate::json::set(
                    &mut r,
                    "timestamp",
                    json!({"seconds": c.last_transition_time.0.as_second(), "nanos": 0}),
                );
            }
            r
        })
        .collect();
    let counts = summary(&results);
    bounded(&mut results);
    json!({
        "apiVersion": API_VERSION, "kind": "ClusterPolicyReport",
        "metadata": {"name": NAME, "labels": {MANAGED_BY.0: MANAGED_BY.1}},
        "summary": counts, "results": results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ad(name: &str, phase: &str, decision: Value) -> AgentDeployment {
        serde_json::from_value(json!({
            "apiVersion": "dvo.caat.io/v1alpha1", "kind": "AgentDeployment",
            "metadata": {"name": name, "namespace": "team", "uid": format!("uid-{name}")},
            "spec": {"agent": "GHA", "platform": "langchain", "environment": "production",
                     "template": {"spec": {"containers": [{"name": "a", "image": "a:1"}]}}},
            "status": {"phase": phase, "specDigest": "sha256:d", "decision": decision,
                       "conditions": [{"type": "Ready", "status": "False", "reason": "X", "message": "",
                                       "lastTransitionTime": "2026-11-26T10:00:00Z"}]},
        }))
        .unwrap()
    }

    fn decision(extra: Value) -> Value {
        let mut d = json!({"outcome": "Allow", "evaluatedAt": "2026-11-26T10:00:00Z"});
        for (k, v) in extra.as_object().unwrap() {
            d[k] = v.clone();
        }
        d
    }

    #[test]
    fn each_hold_refusal_and_approval_is_a_result() {
        let need = json!({"approvalRequirements": [{"source": "policy/two-rms", "roles": ["release_manager"],
            "minApprovals": 2, "expiry": "24h", "allowSelfApproval": false, "requireMfa": true,
            "breakGlassLifts": true}], "outcome": "RequireApproval"});
        let denied = json!({"outcome": "Deny", "violations": [{"source": "policy/freeze", "kind": "Blackout",
            "message": "production is frozen", "breakGlassLifts": true}]});
        let ads = [
            ad("held", "PendingApproval", decision(need.clone())),
            ad("done", "Deployed", decision(need)),
            ad("frozen", "Blocked", decision(denied)),
            ad("plain", "Deployed", decision(json!({}))),
        ];
        let report = namespace_report("team", ads.iter());
        let results = report["results"].as_array().unwrap();
        let row = |name: &str| {
            results
                .iter()
                .find(|r| r["resources"][0]["name"] == name)
                .unwrap()
                .clone()
        };
        assert_eq!(row("held")["result"], "warn");
        assert_eq!(row("held")["policy"], "two-rms");
        assert_eq!(
            row("held")["message"],
            "held until 2 approval(s) of release_manager, with MFA"
        );
        assert_eq!(row("done")["result"], "pass");
        assert_eq!(row("frozen")["result"], "fail");
        assert_eq!(row("frozen")["policy"], "freeze");
        assert_eq!(row("frozen")["message"], "production is frozen");
        assert_eq!(row("plain")["policy"], "dvo-decision");
        assert_eq!(
            report["summary"],
            json!({"pass": 2, "fail": 1, "warn": 1, "error": 0, "skip": 0})
        );
        let changed: chrono::DateTime<chrono::Utc> = "2026-11-26T10:00:00Z".parse().unwrap();
        assert_eq!(row("held")["timestamp"]["seconds"], changed.timestamp());
        // A crowded namespace lists what needs attention first, within bounds.
        let many: Vec<AgentDeployment> = (0..MAX_RESULTS + 10)
            .map(|i| ad(&format!("ok-{i:04}"), "Deployed", decision(json!({}))))
            .chain((0..MAX_RESULTS).map(|i| {
                // Long messages, as a policy may give: the report stays bounded in bytes.
                let long = "x".repeat(10_000);
                ad(&format!("zz-frozen-{i:04}"), "Blocked", decision(json!({"outcome": "Deny", "violations": [{"source": "policy/freeze", "kind": "Blackout", "message": long, "breakGlassLifts": true}]})))
            }))
            .collect();
        let crowded = namespace_report("team", many.iter());
        let listed = crowded["results"].as_array().unwrap();
        assert_eq!(listed.len(), MAX_RESULTS + 1);
        assert_eq!(listed[0]["result"], "fail", "the refusal first");
        assert_eq!(listed[MAX_RESULTS]["result"], "skip");
        assert_eq!(
            crowded["summary"]["pass"],
            MAX_RESULTS + 10,
            "the summary counts all"
        );
        assert!(crate::json::to_string(&crowded).len() < 600 * 1024);
        // The same objects in another order make the same report: nothing to write.
        let reversed = namespace_report("team", ads.iter().rev());
        assert_eq!(report, reversed);
    }
}
