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
use dvo_operator::policy::{Request, Rules, decide};

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
    let mut samples: Vec<Duration> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(decide(black_box(rules), black_box(request), at));
            }
            start.elapsed() / iters
        })
        .collect();
    samples.sort();
    samples[rounds / 2]
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
