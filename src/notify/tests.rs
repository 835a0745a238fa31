use serde_json::json;

use super::*;
use crate::audit::{Draft, Entry};

fn entry(event: EventType, status: &str, kind: &str, resource: &str, metadata: Value) -> Entry {
    let mut d = Draft::new(event, "rosa@example.com", "op", resource, kind, status);
    d.auth_method = "kubernetes".into();
    d.environment = Some("production".into());
    d.agents = vec!["GHA".into()];
    d.timestamp = "2026-11-26T10:00:00Z".into();
    d.metadata = metadata;
    Entry {
        seq: 7,
        draft: d,
        previous_hash: "p".into(),
        entry_hash: "h7".into(),
    }
}

fn requested() -> Entry {
    entry(
        EventType::ApprovalRequested,
        "pending",
        "AgentDeployment",
        "agents/gha",
        json!({
            "digest": "sha256:abc", "request": "gha-g1-abc",
            "requirements": [{"source": "policy/prod", "roles": ["release_manager"], "minApprovals": 2, "requireMfa": true}],
            "expiresAt": "2026-11-27T10:00:00Z", "reasons": ["policy prod: held: environment is production"],
            "justification": "fix CVE",
        }),
    )
}

fn channel(yaml: &str) -> Channel {
    Config::parse(&format!("channels: [{yaml}]"))
        .unwrap()
        .channels
        .remove(0)
}

fn mapping() -> RoleMapping {
    RoleMapping::parse(
        "users: {rosa@example.com: [release_manager], max@example.com: [release_manager], bob: [release_manager], eve@example.com: [developer], ci-bot@example.com: [release_manager, service_account]}
groups: {rm-group: [release_manager], dev-group: [developer]}
environments: {production: {users: {prod-only@example.com: [release_manager]}}}",
    )
    .unwrap()
}

#[test]
fn only_facts_worth_telling_are_notices() {
    let ar = |event, status| {
        entry(
            event,
            status,
            "ApprovalRequest",
            "agents/gha-g1-abc",
            json!({"deployment": "gha", "requester": "rosa@example.com"}),
        )
    };
    let ad = |event, status| entry(event, status, "AgentDeployment", "agents/gha", json!({}));
    let cases: Vec<(Entry, Option<Kind>)> = vec![
        (requested(), Some(Kind::ApprovalRequested)),
        (
            ar(EventType::ApprovalGranted, "approved"),
            Some(Kind::ApprovalGranted),
        ),
        (
            ar(EventType::ApprovalDenied, "rejected"),
            Some(Kind::ApprovalRejected),
        ),
        (
            ar(EventType::ApprovalDenied, "expired"),
            Some(Kind::ApprovalExpired),
        ),
        (
            ar(EventType::ApprovalDenied, "cancelled"),
            Some(Kind::ApprovalCancelled),
        ),
        (
            ar(EventType::ApprovalDenied, "superseded"),
            Some(Kind::ApprovalSuperseded),
        ),
        (
            ad(EventType::DeploymentCompleted, "success"),
            Some(Kind::Deployed),
        ),
        (
            ad(EventType::DeploymentFailed, "failure"),
            Some(Kind::Failed),
        ),
        (
            ad(EventType::RollbackCompleted, "applied"),
            Some(Kind::RolledBack),
        ),
        (
            ad(EventType::BreakGlassUsed, "success"),
            Some(Kind::BreakGlassUsed),
        ),
        (
            ad(EventType::PolicyViolation, "blocked"),
            Some(Kind::PolicyRefused),
        ),
        // Acts, intents, outcomes and transitions that are not the fact itself.
        (ar(EventType::ApprovalGranted, "approval_recorded"), None),
        (ar(EventType::ApprovalDenied, "rejection_recorded"), None),
        (ad(EventType::ApprovalDenied, "failure"), None),
        (ad(EventType::DeploymentStarted, "success"), None),
        (ad(EventType::RollbackStarted, "intent"), None),
        (
            ad(EventType::PolicyEvaluated, "break_glass_lifted_nothing"),
            None,
        ),
        (ad(EventType::PermissionDenied, "denied"), None),
        // A request entry that does not name its AgentDeployment, a resource without namespace.
        (
            entry(
                EventType::ApprovalGranted,
                "approved",
                "ApprovalRequest",
                "agents/x",
                json!({}),
            ),
            None,
        ),
        (
            entry(
                EventType::DeploymentCompleted,
                "success",
                "AgentDeployment",
                "gha",
                json!({}),
            ),
            None,
        ),
    ];
    for (e, want) in &cases {
        assert_eq!(
            notice(e).map(|n| n.kind),
            *want,
            "{:?} {}",
            e.draft.event_type,
            e.draft.status
        );
    }
    let n = notice(&cases[1].0).unwrap();
    assert_eq!(
        (
            n.deployment.as_str(),
            n.request.as_deref(),
            n.requester.as_deref()
        ),
        ("gha", Some("gha-g1-abc"), Some("rosa@example.com"))
    );
    let r = requested();
    let n = notice(&r).unwrap();
    assert_eq!(n.requirements[0].roles, vec![Role::ReleaseManager]);
    assert_eq!(n.requirements[0].min_approvals, 2);
    assert_eq!(
        n.why,
        vec![
            "policy prod: held: environment is production",
            "justification: fix CVE"
        ]
    );
}

#[test]
fn a_requester_is_named_only_when_vouched_for_and_bad_metadata_is_no_requirement() {
    let ad = |user: &str, auth: &str, event, status| {
        let mut e = entry(
            event,
            status,
            "AgentDeployment",
            "agents/gha",
            json!({"requirements": "garbage"}),
        );
        e.draft.user_id = user.into();
        e.draft.auth_method = auth.into();
        e
    };
    let cases = [
        (
            ad(
                "dana@example.com",
                "kubernetes",
                EventType::DeploymentCompleted,
                "success",
            ),
            Some("dana@example.com"),
        ),
        (
            ad(
                "(unknown requester)",
                "none",
                EventType::DeploymentCompleted,
                "success",
            ),
            None,
        ),
        (
            ad(
                crate::audit::OPERATOR,
                "none",
                EventType::RollbackCompleted,
                "applied",
            ),
            None,
        ),
        (
            ad(
                crate::audit::OPERATOR,
                "kubernetes",
                EventType::RollbackCompleted,
                "applied",
            ),
            None,
        ),
        (
            ad(
                "bg@example.com",
                "kubernetes",
                EventType::BreakGlassUsed,
                "success",
            ),
            None,
        ),
        (
            ad(
                "dana@example.com",
                "kubernetes",
                EventType::ApprovalRequested,
                "pending",
            ),
            Some("dana@example.com"),
        ),
    ];
    for (e, want) in &cases {
        let n = notice(e).unwrap();
        assert_eq!(
            n.requester.as_deref(),
            *want,
            "{} {}",
            e.draft.user_id,
            e.draft.auth_method
        );
        assert!(n.requirements.is_empty());
    }
}

#[test]
fn channels_take_what_they_subscribe_to() {
    let m = mapping();
    let r = requested();
    let n = notice(&r).unwrap();
    let takes = |yaml: &str| message(&n, &channel(yaml), &m).is_some();
    assert!(takes("{name: all, slack: {urlEnv: X}}"));
    assert!(takes(
        "{name: a, slack: {urlEnv: X}, events: [approvalRequested]}"
    ));
    assert!(!takes("{name: a, slack: {urlEnv: X}, events: [deployed]}"));
    assert!(takes(
        "{name: a, slack: {urlEnv: X}, environments: [production]}"
    ));
    assert!(!takes(
        "{name: a, slack: {urlEnv: X}, environments: [staging]}"
    ));
    assert!(takes(
        "{name: a, teams: {urlEnv: X}, roles: [release_manager, admin]}"
    ));
    assert!(!takes("{name: a, teams: {urlEnv: X}, roles: [admin]}"));
    // Roles filter approval requests only.
    let done = entry(
        EventType::DeploymentCompleted,
        "success",
        "AgentDeployment",
        "agents/gha",
        json!({"notify": {"onDeploy": ["channel:ops", "ops@example.com"]}}),
    );
    let n = notice(&done).unwrap();
    assert!(
        message(
            &n,
            &channel("{name: a, teams: {urlEnv: X}, roles: [admin]}"),
            &m
        )
        .is_some()
    );
    // A policy naming a channel reaches it whatever it subscribes to, and no other.
    assert!(
        message(
            &n,
            &channel(
                "{name: ops, slack: {urlEnv: X}, events: [breakGlassUsed], environments: [dev]}"
            ),
            &m
        )
        .is_some()
    );
    assert!(
        message(
            &n,
            &channel("{name: opsx, slack: {urlEnv: X}, events: [breakGlassUsed]}"),
            &m
        )
        .is_none()
    );
}

#[test]
fn a_refusal_is_told_only_where_a_policy_or_a_channel_asks_for_it() {
    let m = mapping();
    let blocked = |notify: Value| {
        let mut e = entry(
            EventType::PolicyViolation,
            "blocked",
            "AgentDeployment",
            "agents/gha",
            json!({"notify": notify}),
        );
        e.draft.policy_violations = vec!["policy/freeze: production is frozen".into()];
        e
    };
    let asked = blocked(json!({"onRefusal": ["channel:sec", "sec@example.com"]}));
    let n = notice(&asked).unwrap();
    assert_eq!(n.kind, Kind::PolicyRefused);
    assert_eq!(n.why, vec!["policy/freeze: production is frozen"]);
    let to = |yaml: &str, n: &Notice| message(n, &channel(yaml), &m);
    assert!(to("{name: sec, slack: {urlEnv: X}, events: [deployed]}", &n).is_some());
    assert!(
        to("{name: all, slack: {urlEnv: X}}", &n).is_none(),
        "a channel that takes everything does not get refusals nobody asked it for"
    );
    assert!(
        to(
            "{name: all, slack: {urlEnv: X}, events: [policyRefused]}",
            &n
        )
        .is_some()
    );
    let mail = to(
        "{name: mail, smtp: {server: 'smtp:587', from: dvo@example.com}}",
        &n,
    )
    .unwrap();
    assert_eq!(
        mail.to,
        vec!["sec@example.com"],
        "only whom the policy names, not the channel's list"
    );
    let subscribed = to(
        "{name: mail, smtp: {server: 'smtp:587', from: dvo@example.com}, to: [cab@example.com], events: [policyRefused]}",
        &n,
    )
    .unwrap();
    assert_eq!(
        subscribed.to,
        vec!["cab@example.com", "rosa@example.com", "sec@example.com"]
    );
    assert!(
        mail.title
            .starts_with("Refused by policy: GHA to production")
    );
    // Asked by nobody: told nowhere but where a channel subscribes.
    let quiet = blocked(json!({"onDeploy": ["ops@example.com"]}));
    let n = notice(&quiet).unwrap();
    assert!(to("{name: all, slack: {urlEnv: X}}", &n).is_none());
    assert!(
        to(
            "{name: mail, smtp: {server: 'smtp:587', from: dvo@example.com}}",
            &n
        )
        .is_none()
    );
}

#[test]
fn mail_goes_to_those_the_notice_concerns() {
    let m = mapping();
    let smtp = "{name: mail, smtp: {server: 'm.example.com:587', from: dvo@example.com, groups: {rm-group: rm@example.com, dev-group: dev@example.com}}";
    let to = |e: &Entry, extra: &str| {
        message(
            &notice(e).unwrap(),
            &channel(&format!("{smtp}{extra}}}")),
            &m,
        )
        .map(|msg| msg.to)
    };
    // Approvers: users holding a role that may approve (addresses only, in this environment
    // too), groups through their addresses; never the requester, a developer or a machine.
    assert_eq!(
        to(&requested(), ""),
        Some(vec![
            "max@example.com".into(),
            "prod-only@example.com".into(),
            "rm@example.com".into()
        ])
    );
    assert_eq!(
        to(&requested(), ", to: [cab@example.com]"),
        Some(vec![
            "cab@example.com".into(),
            "max@example.com".into(),
            "prod-only@example.com".into(),
            "rm@example.com".into()
        ])
    );
    // Outcomes: the requester, and the policies' lists (addresses; channels are not mail).
    let done = entry(
        EventType::DeploymentCompleted,
        "success",
        "AgentDeployment",
        "agents/gha",
        json!({"notify": {"onDeploy": ["channel:ops", "ops@example.com"], "onFailure": ["oncall@example.com"]}}),
    );
    assert_eq!(
        to(&done, ""),
        Some(vec!["rosa@example.com".into(), "ops@example.com".into()])
    );
    let failed = entry(
        EventType::DeploymentFailed,
        "failure",
        "AgentDeployment",
        "agents/gha",
        json!({"notify": {"onDeploy": ["ops@example.com"], "onFailure": ["oncall@example.com"]}}),
    );
    assert_eq!(
        to(&failed, ""),
        Some(vec!["rosa@example.com".into(), "oncall@example.com".into()])
    );
    // Break-glass: only the channel's own list; none at all, no mail.
    let bg = entry(
        EventType::BreakGlassUsed,
        "success",
        "AgentDeployment",
        "agents/gha",
        json!({"reason": "outage", "lifted": ["policy/freeze"]}),
    );
    assert_eq!(to(&bg, ""), None);
    assert_eq!(
        to(&bg, ", to: [sec@example.com]"),
        Some(vec!["sec@example.com".into()])
    );
    // A requester that is no address is no recipient.
    let mut anon = done.clone();
    anon.draft.user_id = "bob".into();
    anon.draft.metadata = json!({});
    assert_eq!(to(&anon, ""), None);
}

#[test]
fn an_approval_request_says_what_why_and_how_to_act() {
    let r = requested();
    let msg = message(
        &notice(&r).unwrap(),
        &channel("{name: rm, teams: {urlEnv: X}}"),
        &mapping(),
    )
    .unwrap();
    assert_eq!(msg.title, "Approval needed: GHA to production (agents/gha)");
    let facts: Vec<String> = msg.facts.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    assert_eq!(
        facts,
        [
            "Agent: GHA",
            "Environment: production",
            "AgentDeployment: agents/gha",
            "Requested by: rosa@example.com",
            "Approvals needed: 2 of release_manager, with MFA (policy/prod)",
            "Spec: sha256:abc",
            "Expires: 2026-11-27T10:00:00Z",
            "Audit entry: #7 at 2026-11-26T10:00:00Z",
        ]
    );
    assert_eq!(
        msg.commands[0],
        "kubectl dvo approve gha-g1-abc -n agents --message \"...\""
    );
    assert!(
        msg.commands[1].starts_with(
            "kubectl annotate approvalrequest gha-g1-abc -n agents dvo.caat.io/approve="
        )
    );
    assert_eq!(msg.key, "rm-h7");
    assert_eq!(
        msg.commands.len(),
        3,
        "no HTTP action without the API's address"
    );
    // With the HTTP API's address, its approve action too.
    let config = Config::parse(
        "apiUrl: https://dvo.example.com:8443/\nchannels: [{name: rm, slack: {urlEnv: X}}]",
    )
    .unwrap();
    let msg = message(&notice(&r).unwrap(), &config.channels[0], &mapping()).unwrap();
    assert_eq!(
        msg.commands[3],
        "curl -X POST -H \"Authorization: Bearer $TOKEN\" https://dvo.example.com:8443/v1/approvals/agents/gha-g1-abc/approve -d '{\"comment\": \"...\"}'"
    );
    let plain = Config::parse("apiUrl: http://dvo.example.com\nchannels: []").unwrap_err();
    assert!(
        plain.contains("apiUrl") && plain.contains("only https://"),
        "{plain}"
    );
}

#[test]
fn user_text_cannot_become_markup() {
    let mut r = requested();
    r.draft.agents = vec!["<!channel> [click](https://evil.example) *x*".into()];
    let msg = message(
        &notice(&r).unwrap(),
        &channel("{name: a, slack: {urlEnv: X}}"),
        &mapping(),
    )
    .unwrap();
    // Slack reads links and mentions in mrkdwn text; user values are plain text only, and the
    // fallback text is escaped.
    fn mrkdwn(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if o.get("type") == Some(&json!("mrkdwn")) {
                    out.push(o["text"].as_str().unwrap().to_owned());
                }
                o.values().for_each(|v| mrkdwn(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| mrkdwn(v, out)),
            _ => {}
        }
    }
    let slack = render::slack(&msg);
    let mut texts = vec![];
    mrkdwn(&slack, &mut texts);
    assert!(
        texts
            .iter()
            .all(|t| !t.contains("channel") && !t.contains("evil")),
        "{texts:?}"
    );
    assert!(
        slack["text"].as_str().unwrap().contains("&lt;!channel&gt;"),
        "{slack}"
    );
    assert_eq!(slack["blocks"][1]["fields"][0]["type"], "plain_text");
    // A newline in a value cannot fake a line of its own.
    let mut lines = msg.clone();
    lines.why = vec!["ok\n*Approved by* CISO".into()];
    let text = render::slack(&lines)["blocks"][2]["text"]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(text, "• ok *Approved by* CISO");
    let teams = render::teams(&msg).to_string();
    assert!(
        !teams.contains("[click](https") && teams.contains(r"\\[click\\](https"),
        "{teams}"
    );
    let (subject, body) = render::mail(&Message {
        title: "a\r\nBcc: x@evil.example".into(),
        ..msg.clone()
    });
    assert!(
        !subject.contains('\n') && !subject.contains('\r'),
        "{subject:?}"
    );
    assert!(body.starts_with("a Bcc: x@evil.example\n\n"), "{body}");
    // Long values are cut.
    let mut long = msg.clone();
    long.facts[0].1 = "x".repeat(10_000);
    assert!(render::slack(&long).to_string().len() < 5_000);
}

#[test]
fn payloads_have_the_shape_each_service_expects() {
    let r = requested();
    let msg = message(
        &notice(&r).unwrap(),
        &channel("{name: a, slack: {urlEnv: X}}"),
        &mapping(),
    )
    .unwrap();
    let s = render::slack(&msg);
    assert_eq!(s["blocks"][0]["type"], "header");
    assert_eq!(s["blocks"][1]["fields"][0]["text"], "Agent\nGHA");
    assert!(s["text"].as_str().unwrap().starts_with("Approval needed"));
    let t = render::teams(&msg);
    assert_eq!(t["type"], "message");
    let card = &t["attachments"][0];
    assert_eq!(
        card["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(card["content"]["type"], "AdaptiveCard");
    assert_eq!(card["content"]["body"][1]["type"], "FactSet");
    assert_eq!(
        card["content"]["body"][1]["facts"][0],
        json!({"title": "Agent", "value": "GHA"})
    );
    let w = render::webhook(&msg, &r);
    assert_eq!(
        (w["kind"].as_str(), w["entry"]["seq"].as_u64()),
        (Some("approvalRequested"), Some(7))
    );
}

#[test]
fn backoff_grows_jitters_and_honours_retry_after() {
    use crate::audit::sink::backoff;
    use std::time::Duration;
    assert_eq!(backoff(1, None, 0.0), Duration::from_secs(1));
    assert_eq!(backoff(2, None, 0.0), Duration::from_secs(2));
    assert_eq!(backoff(7, None, 0.0), Duration::from_secs(60));
    assert_eq!(backoff(30, None, 0.0), Duration::from_secs(60));
    assert_eq!(backoff(1, None, 1.0), Duration::from_millis(1250));
    assert_eq!(
        backoff(1, Some(Duration::from_secs(20)), 0.5),
        Duration::from_secs(20)
    );
    assert_eq!(
        backoff(7, Some(Duration::from_secs(2)), 0.0),
        Duration::from_secs(60)
    );
    assert_eq!(
        backoff(1, Some(Duration::from_secs(99_999)), 0.0),
        Duration::from_secs(300)
    );
    let now = chrono::DateTime::parse_from_rfc3339("2026-11-26T10:00:00Z")
        .unwrap()
        .to_utc();
    let http = crate::audit::sink::http::retry_after;
    assert_eq!(http("17", now), Some(Duration::from_secs(17)));
    assert_eq!(
        http("Thu, 26 Nov 2026 10:00:30 GMT", now),
        Some(Duration::from_secs(30))
    );
    assert_eq!(http("Thu, 26 Nov 2026 09:00:00 GMT", now), None);
    assert_eq!(http("soon", now), None);
}
