//! The evaluation context: the facts about one AgentDeployment request that policy conditions
//! read by dotted path.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Timelike, Utc};
use chrono_tz::Tz;
use serde_json::{Map, Value, json};

use crate::crd::AgentDeploymentSpec;
use crate::identity::{Identity, Subject};

/// Everything `decide()` needs to know about one AgentDeployment spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// Namespace of the AgentDeployment.
    pub namespace: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its spec.
    pub spec: AgentDeploymentSpec,
    /// The verified requester, when known. Unknown requesters are never privileged.
    pub requester: Option<Identity>,
    /// Whether the same agent is `Deployed` and Ready in staging with the same images
    /// (computed by the operator, never read from the spec).
    pub staging_validated: bool,
}

/// Names the operator computes; a `spec.context` key of the same name never overrides them.
const BUILT_INS: &[&str] = &[
    "agent",
    "agent_id",
    "platform",
    "environment",
    "action",
    "strategy",
    "replicas",
    "namespace",
    "labels",
    "user",
    "staging_validated",
    "deployment_hour",
    "deployment_weekday",
    "is_weekend",
    "timestamp",
    "context",
];

/// Builds the context for one request at `now`, with the time fields in zone `tz`.
///
/// Fields: `agent`, `agent_id` (alias), `platform`, `environment`, `action`, `strategy`,
/// `replicas`, `namespace`, `labels`, `user` (`username`, `groups`, `roles`, `known`),
/// `staging_validated`, `deployment_hour`, `deployment_weekday` (`monday`...), `is_weekend`,
/// `timestamp` (RFC 3339, UTC), `context` (all of `spec.context`), and every key of
/// `spec.context` that is not one of these names.
pub fn build(request: &Request, subject: &Subject, now: DateTime<Utc>, tz: Tz) -> Value {
    let spec = &request.spec;
    let mut ctx = Map::new();
    for (k, v) in &spec.context {
        if !BUILT_INS.contains(&k.as_str()) {
            ctx.insert(k.clone(), v.clone());
        }
    }
    let built: [(&str, Value); 12] = [
        ("agent", json!(spec.agent)),
        ("agent_id", json!(spec.agent)),
        ("platform", json!(spec.platform)),
        ("environment", json!(spec.environment)),
        ("action", json!(spec.action)),
        ("strategy", json!(spec.strategy)),
        ("replicas", json!(spec.replicas.unwrap_or(1))),
        ("namespace", json!(request.namespace)),
        ("labels", json!(request.labels)),
        (
            "user",
            json!({
                "username": subject.username,
                "groups": subject.groups,
                "roles": subject.roles,
                "known": request.requester.is_some(),
            }),
        ),
        ("staging_validated", json!(request.staging_validated)),
        ("context", json!(spec.context)),
    ];
    for (k, v) in built {
        ctx.insert(k.to_owned(), v);
    }
    set_time(&mut ctx, now, tz);
    Value::Object(ctx)
}

/// Sets the time fields of a context to `now` in zone `tz`: `deployment_hour`,
/// `deployment_weekday`, `is_weekend` and `timestamp`. Nothing else in a context reads the time,
/// so a context built once can be looked at again at another instant.
pub fn retime(ctx: &mut Value, now: DateTime<Utc>, tz: Tz) {
    if let Value::Object(map) = ctx {
        set_time(map, now, tz);
    }
}

fn set_time(ctx: &mut Map<String, Value>, now: DateTime<Utc>, tz: Tz) {
    // Beyond what dates represent in `tz` (the very ends of time), UTC wall time stands in.
    let local = super::time::local(now, tz).unwrap_or_else(|| now.naive_utc());
    let weekday = local.weekday();
    let timed: [(&str, Value); 4] = [
        ("deployment_hour", json!(local.hour())),
        ("deployment_weekday", json!(weekday_name(weekday))),
        ("is_weekend", json!(weekday.number_from_monday() >= 6)),
        (
            "timestamp",
            json!(now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        ),
    ];
    for (k, v) in timed {
        ctx.insert(k.to_owned(), v);
    }
}

/// The full lowercase day name, as window `days` spell it.
fn weekday_name(day: chrono::Weekday) -> &'static str {
    use chrono::Weekday::*;
    match day {
        Mon => "monday",
        Tue => "tuesday",
        Wed => "wednesday",
        Thu => "thursday",
        Fri => "friday",
        Sat => "saturday",
        Sun => "sunday",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A context built at one instant and re-timed to another is the context built there,
    /// across zones, days, a DST change and the ends of time.
    #[test]
    fn a_retimed_context_is_the_one_built_at_that_time() {
        let request = Request {
            namespace: "agents".into(),
            labels: BTreeMap::from([("team".into(), "ops".into())]),
            spec: serde_json::from_value(json!({
                "agent": "a", "platform": "langchain", "environment": "production",
                "context": {"risk": 3, "deployment_hour": 99, "timestamp": "forged"},
            }))
            .unwrap(),
            requester: None,
            staging_validated: false,
        };
        let subject = Subject {
            username: "rosa".into(),
            groups: vec!["release-managers".into()],
            roles: Default::default(),
            machine: false,
        };
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let times = [
            at("2026-11-24T14:00:00Z"),
            at("2026-11-28T23:45:00Z"),
            at("2027-03-28T00:59:59Z"),
            at("2027-03-28T01:00:00Z"),
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MAX_UTC,
        ];
        for tz in [
            Tz::UTC,
            Tz::Europe__Berlin,
            Tz::Asia__Kathmandu,
            Tz::Pacific__Chatham,
        ] {
            for from in times {
                for to in times {
                    let mut ctx = build(&request, &subject, from, tz);
                    retime(&mut ctx, to, tz);
                    assert_eq!(
                        ctx,
                        build(&request, &subject, to, tz),
                        "{from} -> {to} in {tz}"
                    );
                }
            }
        }
    }
}
