//! `decide()` with 1, 100 and 1,000 policies. Besides criterion's absolute times, prints each
//! size as a ratio to the 1-policy baseline measured in the same process, which is what to
//! compare across machines.

use std::hint::black_box;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use criterion::{BenchmarkId, Criterion};
use dvo_operator::capability::CapabilitySet;
use dvo_operator::crd::DeploymentPolicySpec;
use dvo_operator::identity::{Identity, RoleMapping};
use dvo_operator::policy::{Decision, Request, Rules, decide, decide_for_status};

/// `n` policies: one in five in scope of the benchmarked request with conditions that are
/// evaluated but do not match, the rest scoped to other agents; plus an audit-all policy.
fn policies(n: usize) -> Vec<(String, DeploymentPolicySpec)> {
    (0..n)
        .map(|i| {
            let yaml = if i == 0 {
                "{priority: 1000, action: AuditOnly}".to_owned()
            } else if i % 5 == 0 {
                format!(
                    "{{priority: {i}, action: Deny, conditions: [{{field: environment, operator: Equals, value: production}}, {{field: context.risk, operator: GreaterThan, value: {}}}]}}",
                    100 + i
                )
            } else {
                format!("{{priority: {i}, action: RequireApproval, scope: {{agents: [AGENT-{i}]}}, approval: {{roles: [admin]}}}}")
            };
            (format!("p{i:04}"), dvo_operator::yaml::from_str(&yaml).expect("policy"))
        })
        .collect()
}

fn request() -> Request {
    Request {
        namespace: "agents".into(),
        labels: Default::default(),
        spec: serde_json::from_value(serde_json::json!({
            "agent": "GHA", "platform": "langchain", "environment": "production",
            "template": {"spec": {"containers": [{"name": "a", "image": "a:1"}]}},
            "context": {"risk": 3},
        }))
        .expect("spec"),
        requester: Some(Identity {
            username: "rosa".into(),
            uid: None,
            groups: vec!["release-managers".into()],
        }),
        staging_validated: true,
    }
}

fn rules(n: usize) -> Rules {
    let mapping: RoleMapping =
        dvo_operator::yaml::from_str("groups: {release-managers: [release_manager]}")
            .expect("mapping");
    Rules::new(policies(n), CapabilitySet::default(), mapping)
}

/// Median time of one `decide()` over `rounds` rounds of `iters` calls each.
fn median(
    rules: &Rules,
    request: &Request,
    at: DateTime<Utc>,
    iters: u32,
    rounds: usize,
) -> Duration {
    median_of(decide, rules, request, at, iters, rounds)
}

/// Median time of one call of `f` (a way to decide) over `rounds` rounds of `iters` calls.
fn median_of(
    f: fn(&Rules, &Request, DateTime<Utc>) -> Decision,
    rules: &Rules,
    request: &Request,
    at: DateTime<Utc>,
    iters: u32,
    rounds: usize,
) -> Duration {
    let mut samples: Vec<Duration> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(f(black_box(rules), black_box(request), at));
            }
            start.elapsed() / iters
        })
        .collect();
    samples.sort();
    samples[rounds / 2]
}

/// `n` realistic policies (the shape): each scoped to one of four environments, one in
/// three also to a list of agents; two or three conditions, among them a regex and a numeric
/// compare; one in four with a working-hours window; actions mixed.
fn realistic(n: usize) -> Vec<(String, DeploymentPolicySpec)> {
    let envs = ["production", "staging", "development", "sandbox"];
    let actions = ["RequireApproval", "Deny", "Warn", "AuditOnly"];
    (0..n)
        .map(|i| {
            let env = envs[i % 4];
            let agents = if i % 3 == 0 {
                format!(", agents: [GHA-{}, GHA-{}, GHA]", i % 50, (i + 7) % 50)
            } else {
                String::new()
            };
            let third = if i % 2 == 0 {
                format!(", {{field: labels.team, operator: In, value: [team-{}, ops]}}", i % 13)
            } else {
                String::new()
            };
            let window = if i % 4 == 1 {
                ", windows: [{days: [monday, tuesday, wednesday, thursday, friday], start: '09:00', end: '17:00', timeZone: Europe/Berlin}]"
            } else {
                ""
            };
            let action = actions[(i / 4) % 4];
            // Denies are evaluated but do not hold for the benchmarked request (risk 3).
            let risk = if action == "Deny" { 10 + i % 7 } else { i % 7 };
            let approval = if action == "RequireApproval" {
                ", approval: {roles: [release_manager]}"
            } else {
                ""
            };
            let yaml = format!(
                "{{priority: {i}, action: {}, scope: {{environments: [{env}]{agents}}}, conditions: [{{field: agent, operator: Matches, value: 'G[A-Z]{{2}}(-[0-9]+)?'}}, {{field: context.risk, operator: GreaterThan, value: {}}}{third}]{window}{approval}}}",
                action, risk
            );
            (format!("r{i:04}"), dvo_operator::yaml::from_str(&yaml).expect("policy"))
        })
        .collect()
}

/// The naive floor: the same policies compiled once into plain predicates, visited in a loop
/// (no index), each condition checked against a context map built once per call; no trace.
struct Naive {
    policies: Vec<NaivePolicy>,
}

struct NaivePolicy {
    name: String,
    environments: Vec<String>,
    agents: Vec<String>,
    agent: regex::Regex,
    risk_above: f64,
    teams: Option<Vec<String>>,
    working_hours: bool,
}

impl Naive {
    fn new(policies: &[(String, DeploymentPolicySpec)]) -> Naive {
        let policies = policies
            .iter()
            .map(|(name, p)| {
                let mut risk_above = f64::MAX;
                let mut teams = None;
                let mut agent = regex::Regex::new("^$").expect("regex");
                for c in &p.conditions {
                    match c.field.as_str() {
                        "agent" => {
                            agent = regex::Regex::new(&format!(
                                "^(?:{})$",
                                c.value.as_str().expect("pattern")
                            ))
                            .expect("regex")
                        }
                        "context.risk" => risk_above = c.value.as_f64().expect("number"),
                        _ => {
                            teams = Some(
                                c.value
                                    .as_array()
                                    .expect("list")
                                    .iter()
                                    .filter_map(|v| v.as_str().map(str::to_owned))
                                    .collect(),
                            )
                        }
                    }
                }
                NaivePolicy {
                    name: name.clone(),
                    environments: p.scope.environments.clone(),
                    agents: p.scope.agents.clone(),
                    agent,
                    risk_above,
                    teams,
                    working_hours: !p.windows.is_empty(),
                }
            })
            .collect();
        Naive { policies }
    }

    fn decide(&self, request: &Request, at: DateTime<Utc>) -> Vec<&str> {
        use chrono::{Datelike, Timelike};
        let mut context = std::collections::HashMap::new();
        context.insert("agent", serde_json::json!(request.spec.agent));
        context.insert("risk", request.spec.context["risk"].clone());
        context.insert(
            "team",
            serde_json::json!(request.labels.get("team").cloned().unwrap_or_default()),
        );
        let local = at.with_timezone(&chrono_tz::Europe::Berlin);
        let working = local.weekday().number_from_monday() <= 5 && (9..17).contains(&local.hour());
        let mut matched = vec![];
        for p in &self.policies {
            if !p.environments.contains(&request.spec.environment)
                || (!p.agents.is_empty() && !p.agents.contains(&request.spec.agent))
            {
                continue;
            }
            let agent = context["agent"].as_str().unwrap_or_default();
            let risk = context["risk"].as_f64().unwrap_or(f64::MIN);
            let team = context["team"].as_str().unwrap_or_default();
            let holds = p.agent.is_match(agent)
                && risk > p.risk_above
                && p.teams.as_ref().is_none_or(|t| t.iter().any(|x| x == team));
            if holds && (!p.working_hours || working) {
                matched.push(p.name.as_str());
            }
        }
        matched
    }
}

fn main() {
    let sizes = [1usize, 100, 1000];
    let at: DateTime<Utc> = "2026-11-24T14:00:00Z".parse().expect("time");
    let request = request();
    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let mut group = c.benchmark_group("decide");
    for n in sizes {
        let rules = rules(n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &rules, |b, rules| {
            b.iter(|| decide(rules, &request, at))
        });
    }
    group.finish();
    c.final_summary();

    // Ratios against the 1-policy baseline, measured here, interleaved to share machine noise.
    let all: Vec<Rules> = sizes.iter().map(|n| rules(*n)).collect();
    let mut times = vec![Duration::ZERO; sizes.len()];
    for _ in 0..3 {
        for (i, r) in all.iter().enumerate() {
            times[i] += median(r, &request, at, if sizes[i] >= 1000 { 20 } else { 200 }, 9);
        }
    }
    for (n, t) in sizes.iter().zip(&times) {
        println!(
            "decide/{n}: {:>10.1} µs per call, {:>7.1}x the 1-policy baseline",
            t.as_secs_f64() * 1e6 / 3.0,
            t.as_secs_f64() / times[0].as_secs_f64()
        );
    }

    // Realistic policies against the naive floor, interleaved in the same process.
    let mut realistic_request = request.clone();
    realistic_request.labels.insert("team".into(), "ops".into());
    for n in [100usize, 1000] {
        let ps = realistic(n);
        let naive = Naive::new(&ps);
        let mapping: RoleMapping =
            dvo_operator::yaml::from_str("groups: {release-managers: [release_manager]}")
                .expect("mapping");
        let r = Rules::new(ps, CapabilitySet::default(), mapping);
        let d = decide(&r, &realistic_request, at);
        assert!(
            !d.matched_policies.is_empty(),
            "the realistic request matches some"
        );
        assert_eq!(
            naive.decide(&realistic_request, at).len(),
            d.matched_policies.len(),
            "the floor does the same work"
        );
        let (mut ours, mut status, mut floor) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        for _ in 0..5 {
            ours += median(&r, &realistic_request, at, 100, 9);
            status += median_of(decide_for_status, &r, &realistic_request, at, 100, 9);
            let mut samples: Vec<Duration> = (0..9)
                .map(|_| {
                    let start = Instant::now();
                    for _ in 0..100 {
                        black_box(naive.decide(black_box(&realistic_request), at));
                    }
                    start.elapsed() / 100
                })
                .collect();
            samples.sort();
            floor += samples[4];
        }
        println!(
            "decide realistic/{n}: whole trace {:>8.1} µs ({:.2}x the floor), as the operator decides (status) {:>8.1} µs ({:.2}x the floor), naive floor {:>8.1} µs ({} matched)",
            ours.as_secs_f64() * 1e6 / 5.0,
            ours.as_secs_f64() / floor.as_secs_f64(),
            status.as_secs_f64() * 1e6 / 5.0,
            status.as_secs_f64() / floor.as_secs_f64(),
            floor.as_secs_f64() * 1e6 / 5.0,
            d.matched_policies.len()
        );
    }

    // nextWindowOpensAt: a Deny whose condition reads the time (so time might lift it) among n
    // policies: always true ("never": a week is searched), and one that lifts at 09:00 local.
    let timed = |n: usize, condition: &str| {
        let mut ps = policies(n);
        ps.push((
            "timed".into(),
            dvo_operator::yaml::from_str(&format!(
                "{{priority: -1, action: Deny, timeZone: Europe/Berlin, conditions: [{condition}]}}"
            ))
            .expect("policy"),
        ));
        let mapping: RoleMapping =
            dvo_operator::yaml::from_str("groups: {release-managers: [release_manager]}")
                .expect("mapping");
        Rules::new(ps, CapabilitySet::default(), mapping)
    };
    let night: DateTime<Utc> = "2026-11-24T01:00:00Z".parse().expect("time");
    for (what, condition) in [
        (
            "never",
            "{field: deployment_hour, operator: GreaterThan, value: -1}",
        ),
        (
            "at 09:00",
            "{field: deployment_hour, operator: LessThan, value: 9}",
        ),
    ] {
        for n in [1usize, 1000] {
            let r = timed(n, condition);
            let d = decide(&r, &request, night);
            let t = median(&r, &request, night, 5, 5);
            println!(
                "nextWindowOpensAt {what}/{n}: {:>10.1} µs per call, {:>7.1}x the 1-policy baseline (opens {:?})",
                t.as_secs_f64() * 1e6,
                t.as_secs_f64() / (times[0].as_secs_f64() / 3.0),
                d.next_window_opens_at.map(|t| t.to_rfc3339())
            );
        }
    }
}
