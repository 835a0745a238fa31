//! The audit chain: append (hashing) rate, `verify()` time and `dvo audit query`'s filter time
//! for 10 k, 100 k and 1 M entries, each also given as a ratio per entry to the 10 k baseline
//! measured in the same process.

use std::hint::black_box;
use std::time::Instant;

use dvo_operator::audit::query::Filter;
use dvo_operator::audit::{Draft, EventType, Segment, SigningKey, append, verify};

fn chain(n: usize, key: &SigningKey) -> (Vec<Segment>, Vec<dvo_operator::audit::Checkpoint>) {
    let mut entries = Vec::with_capacity(n);
    let mut checkpoints = Vec::new();
    let mut head = None;
    for i in 0..n {
        let mut d = Draft::new(
            EventType::PolicyEvaluated,
            "rosa-release",
            "evaluate",
            &format!("agents/gha-{}", i % 100),
            "AgentDeployment",
            "success",
        );
        d.timestamp = "2026-11-24T10:00:00Z".into();
        d.environment = Some("production".into());
        d.idempotency_key = format!("k{i}");
        d.metadata = serde_json::json!({"digest": "sha256:0123456789abcdef", "outcome": "Allow"});
        let e = append(head.as_ref(), d).expect("append");
        if e.seq.is_multiple_of(100) {
            checkpoints.push(key.sign(e.seq, &e.entry_hash, "2026-11-24T10:00:00Z"));
        }
        head = Some(e.link());
        entries.push(e);
    }
    let segments = entries
        .chunks(300)
        .scan(
            None,
            |prev: &mut Option<dvo_operator::audit::Link>, chunk| {
                let s = Segment {
                    name: String::new(),
                    previous: prev.clone(),
                    entries: chunk.to_vec(),
                    unreadable: None,
                };
                *prev = chunk.last().map(|e| e.link());
                Some(s)
            },
        )
        .collect();
    (segments, checkpoints)
}

fn main() {
    let key = SigningKey::from_seed(&[5; 32]).expect("key");
    let public = key.public_key();
    let sizes = [10_000usize, 100_000, 1_000_000];
    let mut baseline = None;
    let mut query_baseline = None;
    for n in sizes {
        let t = Instant::now();
        let (segments, checkpoints) = chain(n, &key);
        let build = t.elapsed();
        let t = Instant::now();
        let report = black_box(verify(&segments, &checkpoints, &public)).expect("intact");
        let check = t.elapsed();
        assert_eq!(report.entries, n as u64);
        let per = check.as_secs_f64() / n as f64;
        let base = *baseline.get_or_insert(per);
        println!(
            "audit/{n}: append {:>8.0} entries/s, verify {:>7.2} s ({:>5.2} µs/entry, {:.2}x the 10k per-entry baseline)",
            n as f64 / build.as_secs_f64(),
            check.as_secs_f64(),
            per * 1e6,
            per / base
        );
        // `dvo audit query`: a filter by namespace, event and time over every entry.
        let filter = Filter {
            namespaces: vec!["agents".into()],
            events: vec![EventType::PolicyEvaluated],
            since: "2026-11-01T00:00:00Z".parse().ok(),
            users: vec!["rosa-release".into()],
            ..Filter::default()
        };
        let t = Instant::now();
        let matched = segments
            .iter()
            .flat_map(|s| &s.entries)
            .filter(|e| black_box(&filter).matches(e))
            .count();
        let query = t.elapsed();
        assert_eq!(matched, n);
        let per_query = query.as_secs_f64() / n as f64;
        let query_base = *query_baseline.get_or_insert(per_query);
        println!(
            "audit/{n}: query {:>7.2} s ({:>5.2} µs/entry, {:.2}x the 10k per-entry baseline)",
            query.as_secs_f64(),
            per_query * 1e6,
            per_query / query_base
        );
    }
}
