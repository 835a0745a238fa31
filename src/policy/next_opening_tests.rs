//! `nextWindowOpensAt` against the previous algorithm (every quarter hour, every policy, 400
//! days), kept here as the oracle: the faster search must find the same moment. Cases found by
//! a review (dated windows and blackouts, zones changing clocks on different dates) and
//! property tests over random windows, blackouts and time conditions in many zones.
use chrono::{DateTime, Utc};
use proptest::prelude::*;

use super::*;
use crate::capability::CapabilitySet;
use crate::crd::AgentDeploymentSpec;
use crate::crd::deployment_policy::DeploymentPolicySpec;
use crate::identity::RoleMapping;
use crate::policy::rules::Rules;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}
fn policy(yaml: &str) -> DeploymentPolicySpec {
    crate::yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}: {yaml}"))
}
fn mapping() -> RoleMapping {
    crate::yaml::from_str("users: {adm: [admin]}").unwrap()
}
fn rules(ps: &[(String, String)]) -> Rules {
    Rules::new(
        ps.iter().map(|(n, y)| (n.clone(), policy(y))),
        CapabilitySet::default(),
        mapping(),
    )
}
fn request() -> Request {
    let spec: AgentDeploymentSpec = serde_json::from_value(serde_json::json!({
        "agent": "GHA", "platform": "langchain", "environment": "staging",
        "template": {"spec": {"containers": [{"name": "agent", "image": "gha:1"}]}},
    }))
    .unwrap();
    Request {
        namespace: "agents".into(),
        labels: Default::default(),
        spec,
        requester: Some(crate::identity::Identity {
            username: "adm".into(),
            uid: None,
            groups: vec![],
        }),
        staging_validated: true,
    }
}

/// One evaluation from scratch: a context built for `now` alone, and the full trace.
fn fresh(rules: &Rules, request: &Request, now: DateTime<Utc>) -> (Decision, Vec<Clearance>) {
    let subject = subject_of(rules, request);
    let base = context::build(request, &subject, now, Tz::UTC);
    evaluate(
        rules,
        &mut Contexts::new(rules, request, &subject, &base),
        now,
        Trace::Full,
    )
}

/// The algorithm of 6f4e619 (every quarter hour, every policy, 400 days), each step evaluated
/// from scratch.
fn old_next_opening(rules: &Rules, request: &Request, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let (decision, mut clearances) = fresh(rules, request, now);
    if !(decision.outcome == Outcome::Deny && clearances.len() == decision.violations.len()) {
        return None;
    }
    let horizon = now
        .checked_add_signed(Duration::days(HORIZON_DAYS))
        .unwrap();
    let mut t = now;
    while t <= horizon {
        let quarter = next_quarter_hour(t);
        let next = clearances
            .iter()
            .map(|c| match c {
                Clearance::At(at) => *at,
                Clearance::NextQuarterHour => quarter,
            })
            .max()?;
        t = if next > t { next } else { quarter };
        let (d, c) = fresh(rules, request, t);
        if d.violations.is_empty() {
            return Some(t);
        }
        if c.len() != d.violations.len() {
            return None;
        }
        clearances = c;
    }
    None
}

fn named(ps: &[&str]) -> Vec<(String, String)> {
    ps.iter()
        .enumerate()
        .map(|(i, p)| (format!("p{i}"), p.to_string()))
        .collect()
}

/// The next opening of `policies` at `now`, after checking it is the oracle's.
fn opens(policies: &[&str], now: &str) -> Option<DateTime<Utc>> {
    let r = rules(&named(policies));
    let now = utc(now);
    let d = decide(&r, &request(), now);
    assert_eq!(d.outcome, Outcome::Deny, "{policies:?} at {now}");
    let oracle = old_next_opening(&r, &request(), now);
    assert_eq!(d.next_window_opens_at, oracle, "{policies:?} at {now}");
    d.next_window_opens_at
}

#[test]
fn the_review_cases_open_when_the_oracle_says() {
    // (policies, now, the opening)
    let table: [(&[&str], &str, &str); 5] = [
        // Business hours and a holiday freeze of two weeks, asked on its first Monday.
        (
            &[
                "{action: AuditOnly, windows: [{days: [monday, tuesday, wednesday, thursday, friday], start: '09:00', end: '17:00', timeZone: Europe/London}], blackouts: [{start: '2026-12-19', end: '2027-01-03', timeZone: Europe/London, reason: holidays}]}",
            ],
            "2026-12-21T10:00:00Z",
            "2027-01-04T09:00:00Z",
        ),
        // Two overlapping blackouts of two policies.
        (
            &[
                "{action: AuditOnly, blackouts: [{start: '2026-12-01', end: '2026-12-10', timeZone: UTC, reason: a}]}",
                "{action: AuditOnly, blackouts: [{start: '2026-12-09', end: '2026-12-20', timeZone: UTC, reason: b}]}",
            ],
            "2026-12-01T10:00:00Z",
            "2026-12-21T00:00:00Z",
        ),
        // A London and a New York window that overlap only while the US is on summer time and
        // the UK is not.
        (
            &[
                "{action: AuditOnly, windows: [{days: [monday], start: '13:00', end: '14:00', timeZone: Europe/London}]}",
                "{action: AuditOnly, windows: [{days: [monday], start: '09:00', end: '10:00', timeZone: America/New_York}]}",
            ],
            "2027-01-05T12:00:00Z",
            "2027-03-15T13:00:00Z",
        ),
        // A weekend Deny and a freeze ending on a Saturday 19 days ahead.
        (
            &[
                "{action: Deny, priority: 1, timeZone: Europe/Paris, conditions: [{field: is_weekend, operator: Equals, value: true}]}",
                "{action: AuditOnly, priority: 2, blackouts: [{start: '2026-11-01', end: '2026-12-12', timeZone: Europe/Paris, reason: freeze}]}",
            ],
            "2026-11-23T10:00:00Z",
            "2026-12-13T23:00:00Z",
        ),
        // A window that closes between hour turns (23:40 in Kolkata).
        (
            &[
                "{action: Warn, priority: 3, timeZone: Asia/Kolkata, match: Any, conditions: [{field: deployment_hour, operator: LessThan, value: 14}], windows: [{days: [tuesday, friday], start: '19:00', end: '21:05', timeZone: Asia/Kolkata}]}",
                "{action: Deny, priority: 4, timeZone: Asia/Kolkata, match: Any, conditions: [{field: is_weekend, operator: Equals, value: true}], windows: [{days: [monday, saturday, sunday], start: '19:30', end: '23:40', timeZone: Asia/Kolkata}]}",
            ],
            "2026-12-06T08:30:00Z",
            "2026-12-07T14:00:00Z",
        ),
    ];
    for (policies, now, want) in table {
        assert_eq!(
            opens(policies, now),
            Some(utc(want)),
            "{policies:?} at {now}"
        );
    }
}

const ZONES: &[&str] = &[
    "UTC",
    "Europe/London",
    "America/New_York",
    "Australia/Sydney",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "America/St_Johns",
    "Europe/Paris",
];
const DAYS: &[&str] = &[
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

fn arb_window_in(zones: &'static [&'static str]) -> impl Strategy<Value = String> {
    (
        prop::sample::subsequence(DAYS, 1..=7),
        0u32..24,
        prop::sample::select(&[0u32, 15, 30, 45][..]),
        15u32..600,
        prop::sample::select(zones),
    )
        .prop_map(|(days, h, m, len, tz)| {
            let end_min = (h * 60 + m + len) % (24 * 60);
            format!(
                "{{days: [{}], start: '{:02}:{:02}', end: '{:02}:{:02}', timeZone: {}}}",
                days.join(", "),
                h,
                m,
                end_min / 60,
                end_min % 60,
                tz
            )
        })
}

fn arb_blackout() -> impl Strategy<Value = String> {
    (0i64..40, 1i64..20, prop::sample::select(ZONES)).prop_map(|(start, len, tz)| {
        let s = utc("2026-11-15T00:00:00Z") + Duration::days(start);
        let e = s + Duration::days(len);
        format!(
            "{{start: '{}', end: '{}', timeZone: {}, reason: r}}",
            s.format("%Y-%m-%d"),
            e.format("%Y-%m-%d"),
            tz
        )
    })
}

fn arb_condition() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            0i64..24,
            prop::sample::select(&["LessThan", "GreaterThan", "Equals", "NotEquals"][..])
        )
            .prop_map(|(h, op)| format!("{{field: deployment_hour, operator: {op}, value: {h}}}")),
        prop::sample::select(DAYS)
            .prop_map(|d| format!("{{field: deployment_weekday, operator: Equals, value: {d}}}")),
        any::<bool>().prop_map(|b| format!("{{field: is_weekend, operator: Equals, value: {b}}}")),
        Just("{field: agent, operator: Equals, value: nobody}".to_string()),
    ]
}

fn arb_policy() -> impl Strategy<Value = String> {
    arb_policy_in(ZONES, 2)
}
fn arb_policy_in(
    zones: &'static [&'static str],
    blackouts: usize,
) -> impl Strategy<Value = String> {
    (
        prop::sample::select(&["Deny", "AuditOnly", "Allow", "Warn"][..]),
        0i32..5,
        prop::sample::select(zones),
        prop::collection::vec(arb_condition(), 0..3),
        any::<bool>(),
        prop::collection::vec(arb_window_in(zones), 0..2),
        prop::collection::vec(arb_blackout(), 0..blackouts),
    )
        .prop_map(|(action, prio, tz, conds, any_match, windows, blackouts)| {
            let mut s = format!("{{action: {action}, priority: {prio}, timeZone: {tz}");
            if !conds.is_empty() {
                s += &format!(
                    ", match: {}, conditions: [{}]",
                    if any_match { "Any" } else { "All" },
                    conds.join(", ")
                );
            }
            if !windows.is_empty() {
                s += &format!(", windows: [{}]", windows.join(", "));
            }
            if !blackouts.is_empty() {
                s += &format!(", blackouts: [{}]", blackouts.join(", "));
            }
            s + "}"
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, max_shrink_iters: 2000, ..ProptestConfig::default() })]
    #[test]
    fn next_opening_matches_the_old_algorithm(
        ps in prop::collection::vec(arb_policy(), 1..4),
        minutes in 0i64..(60 * 24 * 45),
    ) {
        let named: Vec<(String, String)> = ps.iter().enumerate().map(|(i, p)| (format!("p{i}"), p.clone())).collect();
        let r = rules(&named);
        let now = utc("2026-11-10T00:00:00Z") + Duration::minutes(minutes);
        let d = decide(&r, &request(), now);
        let old = old_next_opening(&r, &request(), now);
        prop_assert_eq!(d.next_window_opens_at, old, "policies {:#?} at {}", named, now);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, max_shrink_iters: 2000, ..ProptestConfig::default() })]
    /// One zone, no blackouts: the subset and the hour turns alone.
    #[test]
    fn next_opening_one_zone_no_blackouts(
        zone in 0usize..9,
        ps in prop::collection::vec(any::<u8>(), 1..4),
        minutes in 0i64..(60 * 24 * 45),
        seed in any::<u64>(),
    ) {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::{TestRunner, Config, RngAlgorithm, TestRng};
        let zones: &'static [&'static str] = match zone { 0 => &["UTC"], 1 => &["Europe/London"], 2 => &["America/New_York"], 3 => &["Australia/Sydney"], 4 => &["Asia/Kolkata"], 5 => &["Asia/Kathmandu"], 6 => &["Pacific/Chatham"], 7 => &["America/St_Johns"], _ => &["Europe/Paris"] };
        let mut seedb = [0u8; 32];
        seedb[..8].copy_from_slice(&seed.to_le_bytes());
        let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &seedb));
        let named: Vec<(String, String)> = ps.iter().enumerate().map(|(i, _)| (format!("p{i}"), arb_policy_in(zones, 1).new_tree(&mut runner).unwrap().current())).collect();
        let r = rules(&named);
        let now = utc("2026-11-10T00:00:00Z") + Duration::minutes(minutes);
        let d = decide(&r, &request(), now);
        let old = old_next_opening(&r, &request(), now);
        prop_assert_eq!(d.next_window_opens_at, old, "policies {:#?} at {}", named, now);
    }
}

/// Any policy a status may show: every action, disabled ones, conditions that fail to evaluate
/// under either failure policy, and the time conditions, windows and blackouts above.
fn arb_any_policy() -> impl Strategy<Value = String> {
    let condition = prop_oneof![
        4 => arb_condition(),
        1 => Just("{field: agent, operator: GreaterThan, value: 3}".to_string()),
        1 => Just("{field: agent, operator: Equals, value: GHA}".to_string()),
    ];
    (
        prop::sample::select(&["Deny", "AuditOnly", "Allow", "Warn", "RequireApproval"][..]),
        0i32..5,
        prop::collection::vec(condition, 0..3),
        any::<bool>(),
        prop::collection::vec(arb_window_in(ZONES), 0..2),
        prop::collection::vec(arb_blackout(), 0..2),
        (any::<bool>(), prop::sample::select(&["Fail", "Ignore"][..])),
    )
        .prop_map(|(action, prio, conds, any_match, windows, blackouts, (enabled, failure))| {
            let mut s = format!("{{action: {action}, priority: {prio}, enabled: {enabled}, failurePolicy: {failure}, match: {}, conditions: [{}], windows: [{}], blackouts: [{}]",
                if any_match { "Any" } else { "All" }, conds.join(", "), windows.join(", "), blackouts.join(", "));
            if action == "RequireApproval" {
                s += ", approval: {roles: [release_manager]}";
            }
            s + "}"
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, max_shrink_iters: 2000, ..ProptestConfig::default() })]
    /// What the operator decides for a status is exactly the whole decision, bounded; and
    /// bounding it again changes nothing.
    #[test]
    fn the_status_decision_is_the_whole_decision_bounded(
        ps in prop::collection::vec(arb_any_policy(), 1..40),
        minutes in 0i64..(60 * 24 * 45),
    ) {
        let named: Vec<(String, String)> = ps.iter().enumerate().map(|(i, p)| (format!("p{i:02}"), p.clone())).collect();
        let r = rules(&named);
        let now = utc("2026-11-10T00:00:00Z") + Duration::minutes(minutes);
        let whole = decide(&r, &request(), now);
        let bounded = whole.for_status();
        prop_assert_eq!(&decide_for_status(&r, &request(), now), &bounded, "policies {:#?} at {}", named, now);
        prop_assert_eq!(&bounded.for_status(), &bounded);
    }
}

/// Past both bounds: 30 matching policies and 10 that do not.
#[test]
fn a_status_decision_past_both_bounds() {
    let mut ps: Vec<(String, String)> = (0..30)
        .map(|i| (format!("m{i:02}"), "{action: AuditOnly}".to_string()))
        .collect();
    ps.extend((0..10).map(|i| {
        (
            format!("n{i:02}"),
            "{action: Deny, conditions: [{field: agent, operator: Equals, value: nobody}]}"
                .to_string(),
        )
    }));
    let r = rules(&ps);
    let now = utc("2026-11-10T00:00:00Z");
    let bounded = decide_for_status(&r, &request(), now);
    assert_eq!((bounded.trace.len(), bounded.trace_omitted), (8, 32));
    assert_eq!(
        (bounded.matched_policies.len(), bounded.matched_omitted),
        (16, 14)
    );
    assert_eq!(bounded, decide(&r, &request(), now).for_status());
}
