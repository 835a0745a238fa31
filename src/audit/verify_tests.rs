use serde_json::{Value, json};

use super::*;
use crate::audit::{Draft, SigningKey, append};

const SEED: [u8; 32] = [7; 32];

fn draft(i: u64) -> Draft {
    let mut d = Draft::new(
        EventType::PolicyEvaluated,
        "rosa-release",
        "evaluate",
        &format!("agents/gha-{i}"),
        "AgentDeployment",
        "success",
    );
    d.event_id = format!("ev-{i}");
    d.timestamp = format!("2026-11-24T10:00:{:02}Z", i % 60);
    d.environment = Some("production".into());
    d.metadata = json!({"digest": format!("sha256:{i}"), "approvals": i, "ratio": 0.5});
    d.idempotency_key = format!("k-{i}");
    d
}

/// 10 entries in segments of 4, 4 and 2; checkpoints where the first two were sealed (seq 4 and
/// 8) and at seq 10.
fn chain() -> (Vec<Segment>, Vec<Checkpoint>) {
    let key = SigningKey::from_seed(&SEED).unwrap();
    let mut entries = Vec::new();
    let mut head = None;
    for i in 1..=10 {
        let e = append(head.as_ref(), draft(i)).unwrap();
        head = Some(e.link());
        entries.push(e);
    }
    let checkpoints = vec![
        key.sign(4, &entries[3].entry_hash, "t4"),
        key.sign(8, &entries[7].entry_hash, "t8"),
        key.sign(10, &entries[9].entry_hash, "t10"),
    ];
    (segments_of(&entries), checkpoints)
}

fn segments_of(entries: &[Entry]) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut previous = None;
    for (n, chunk) in entries.chunks(4).enumerate() {
        out.push(Segment {
            name: format!("seg-{n}"),
            previous: previous.clone(),
            entries: chunk.to_vec(),
            unreadable: None,
        });
        previous = chunk.last().map(Entry::link);
    }
    out
}

fn public() -> Vec<u8> {
    SigningKey::from_seed(&SEED).unwrap().public_key()
}

fn fault_of(segments: &[Segment], checkpoints: &[Checkpoint]) -> (FaultKind, u64) {
    let f = verify(segments, checkpoints, &public()).unwrap_err();
    (f.kind, f.seq)
}

fn rehash(e: &mut Entry) {
    e.entry_hash = crate::audit::entry_hash(e);
}

/// Re-links and re-hashes every entry (what someone who rewrites the whole chain does).
fn relink(s: &mut [Segment]) {
    let mut head: Option<crate::audit::Link> = None;
    for seg in s.iter_mut() {
        if let Some(h) = &head {
            seg.previous = Some(h.clone());
        }
        for e in seg.entries.iter_mut() {
            e.previous_hash = head
                .as_ref()
                .map_or(crate::audit::GENESIS.to_owned(), |h| h.hash.clone());
            rehash(e);
            head = Some(e.link());
        }
    }
}

#[test]
fn an_intact_chain_verifies() {
    let (segs, cps) = chain();
    let r = verify(&segs, &cps, &public()).unwrap();
    assert_eq!(
        (
            r.entries,
            r.first_seq,
            r.last_seq,
            r.checkpoints,
            r.last_checkpoint_seq
        ),
        (10, 1, 10, 3, Some(10))
    );
    assert_eq!(r.head_hash, segs[2].entries[1].entry_hash);
    assert_eq!(segs[0].entries[0].previous_hash, crate::audit::GENESIS);
    // A JSON export round trip keeps it verifiable (the hash is over canonical JSON).
    let text = serde_json::to_string(&segs).unwrap();
    let back: Vec<Segment> = serde_json::from_str(&text).unwrap();
    assert!(verify(&back, &cps, &public()).is_ok());
}

#[test]
fn the_hash_covers_every_field() {
    let (segs, _) = chain();
    let entry = &segs[0].entries[1];
    let value = serde_json::to_value(entry).unwrap();
    let fields: Vec<String> = value
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "entry_hash")
        .cloned()
        .collect();
    assert!(fields.len() >= 25, "{fields:?}");
    for field in fields {
        let mut v = value.clone();
        v[&field] = match &v[&field] {
            Value::String(s) if field == "event_type" => json!(if s == "policy_evaluated" {
                "policy_violation"
            } else {
                "policy_evaluated"
            }),
            Value::String(s) => json!(format!("{s}x")),
            Value::Number(n) => json!(n.as_u64().unwrap() + 1),
            Value::Null => json!("set"),
            Value::Array(_) => json!(["added"]),
            Value::Object(_) => json!({"changed": true}),
            Value::Bool(b) => json!(!b),
        };
        let altered: Entry = serde_json::from_value(v).unwrap();
        assert_ne!(
            crate::audit::entry_hash(&altered),
            entry.entry_hash,
            "changing {field} is not detected"
        );
    }
}

#[test]
fn canonical_json_ignores_key_order_and_number_spelling() {
    let (segs, _) = chain();
    let e = &segs[0].entries[0];
    let mut reordered = e.clone();
    reordered.draft.metadata =
        serde_json::from_str(r#"{"ratio": 0.50, "approvals": 1.0, "digest": "sha256:1"}"#).unwrap();
    assert_eq!(crate::audit::entry_hash(&reordered), e.entry_hash);
}

#[test]
fn faults_are_named_with_their_first_bad_seq() {
    let (segs, cps) = chain();
    // (tampering, expected fault)
    type Tamper = Box<dyn Fn(&mut Vec<Segment>, &mut Vec<Checkpoint>)>;
    let table: Vec<(&str, Tamper, (FaultKind, u64))> = vec![
        (
            "alter a field",
            Box::new(|s, _| s[0].entries[3].draft.status = "failure".into()),
            (FaultKind::HashMismatch, 4),
        ),
        (
            "alter a field and recompute its hash",
            Box::new(|s, _| {
                s[1].entries[1].draft.user_id = "mallory".into();
                rehash(&mut s[1].entries[1]);
            }),
            (FaultKind::BrokenLink, 7),
        ),
        (
            "delete an entry",
            Box::new(|s, _| {
                s[0].entries.remove(2);
            }),
            (FaultKind::SequenceGap, 3),
        ),
        (
            "swap two entries",
            Box::new(|s, _| s[1].entries.swap(0, 1)),
            (FaultKind::SequenceGap, 5),
        ),
        (
            "delete a middle segment",
            Box::new(|s, _| {
                s.remove(1);
            }),
            (FaultKind::MissingSegment, 5),
        ),
        (
            "delete the first segment",
            Box::new(|s, _| {
                s.remove(0);
            }),
            (FaultKind::MissingSegment, 5),
        ),
        (
            "delete the newest entries",
            Box::new(|s, _| {
                s[2].entries.clear();
            }),
            (FaultKind::Truncated, 9),
        ),
        (
            "forge a checkpoint's head",
            Box::new(|_, c| c[0].head_hash = "f".repeat(64)),
            (FaultKind::BadCheckpointSignature, 4),
        ),
        (
            "rewrite the whole chain",
            Box::new(|s, _| {
                let mut head: Option<crate::audit::Link> = None;
                for seg in s.iter_mut() {
                    if let Some(h) = &head {
                        seg.previous = Some(h.clone());
                    }
                    for e in seg.entries.iter_mut() {
                        e.draft.user_id = "mallory".into();
                        e.previous_hash = head
                            .as_ref()
                            .map_or(crate::audit::GENESIS.to_owned(), |h| h.hash.clone());
                        rehash(e);
                        head = Some(e.link());
                    }
                }
            }),
            (FaultKind::CheckpointMismatch, 4),
        ),
        (
            "rewrite the whole chain and remove its checkpoints",
            Box::new(|s, c| {
                for seg in s.iter_mut() {
                    for e in seg.entries.iter_mut() {
                        e.draft.user_id = "mallory".into();
                    }
                }
                relink(s);
                c.clear();
            }),
            (FaultKind::MissingCheckpoint, 4),
        ),
        (
            "remove a sealed segment's checkpoint",
            Box::new(|_, c| {
                c.remove(1);
            }),
            (FaultKind::MissingCheckpoint, 8),
        ),
        (
            "a line that no longer reads as an entry",
            Box::new(|s, _| {
                s[1].entries.truncate(2);
                s[1].unreadable = Some("ConfigMap seg-1: entries.jsonl line 3: EOF".into());
            }),
            (FaultKind::Unreadable, 7),
        ),
        (
            "a checkpoint entry whose metadata is not a checkpoint",
            Box::new(|s, _| {
                let e = &mut s[2].entries[1];
                e.draft.event_type = EventType::CheckpointSigned;
                e.draft.metadata = json!({"seq": "ten"});
                rehash(e);
            }),
            (FaultKind::BadCheckpointSignature, 10),
        ),
        (
            "rewrite and sign with another key",
            Box::new(|_, c| {
                let other = SigningKey::from_seed(&[9; 32]).unwrap();
                c[0] = other.sign(c[0].seq, &c[0].head_hash, &c[0].at);
            }),
            (FaultKind::BadCheckpointSignature, 4),
        ),
    ];
    for (what, tamper, want) in table {
        let (mut s, mut c) = (segs.clone(), cps.clone());
        tamper(&mut s, &mut c);
        assert_eq!(fault_of(&s, &c), want, "{what}");
    }
    let f = verify(
        &{
            let mut s = segs.clone();
            s[0].entries[3].draft.status = "failure".into();
            s
        },
        &cps,
        &public(),
    )
    .unwrap_err();
    assert_eq!(
        f.to_string(),
        "HashMismatch at seq 4 (segment seg-0): the entry's content does not match its entry_hash: it was altered"
    );
}

#[test]
fn retention_may_delete_old_segments_when_it_says_so() {
    let key = SigningKey::from_seed(&SEED).unwrap();
    let (mut segs, _) = chain();
    let head = segs[2].entries.last().unwrap().link();
    let mut retention = Draft::new(
        EventType::RetentionApplied,
        "system:dvo-operator",
        "retention",
        "audit",
        "ConfigMap",
        "success",
    );
    retention.metadata = json!({"deleted_segments": ["seg-0"], "deleted_through_seq": 4});
    let e = append(Some(&head), retention).unwrap();
    segs[2].entries.push(e.clone());
    segs.remove(0);
    let cps = vec![
        key.sign(8, &segs[0].entries[3].entry_hash, "t8"),
        key.sign(11, &e.entry_hash, "t11"),
    ];
    let r = verify(&segs, &cps, &public()).unwrap();
    assert_eq!((r.first_seq, r.last_seq), (5, 11));
    // Deleting more than retention declared is still a missing segment.
    segs.remove(0);
    assert_eq!(fault_of(&segs, &cps), (FaultKind::MissingSegment, 9));
}

#[test]
fn an_empty_log_verifies_and_seq_stays_exact() {
    assert_eq!(verify(&[], &[], &public()).unwrap().entries, 0);
    let head = crate::audit::Link {
        seq: crate::audit::MAX_SEQ,
        hash: "0".repeat(64),
    };
    assert!(append(Some(&head), draft(1)).is_err());
    assert!(SigningKey::from_seed(&[1; 5]).is_err());
}

/// Any single-byte change anywhere in a stored entry is caught: either the line no longer reads
/// as an entry, or `verify()` reports a fault. Exhaustive over every byte of one entry.
#[test]
fn any_single_byte_change_is_detected() {
    let (segs, cps) = chain();
    let line = serde_json::to_vec(&segs[0].entries[1]).unwrap();
    let mut tried = 0;
    for pos in 0..line.len() {
        for replacement in [b'0', b'x', b'"', b' ', b'\\', 0xc3] {
            if line[pos] == replacement {
                continue;
            }
            let mut altered = line.clone();
            altered[pos] = replacement;
            let Ok(entry) = serde_json::from_slice::<Entry>(&altered) else {
                continue;
            };
            tried += 1;
            let mut s = segs.clone();
            s[0].entries[1] = entry;
            assert!(
                verify(&s, &cps, &public()).is_err(),
                "byte {pos} -> {replacement:#x} went unnoticed: {}",
                String::from_utf8_lossy(&altered)
            );
        }
    }
    assert!(tried > 500, "only {tried} alterations still parsed");
}

/// A checkpoint carried by a `checkpoint_signed` entry counts like a stored one: it closes a
/// sealed segment, and a rewrite of what it covers is caught even with every stored checkpoint
/// removed; a trusted copy from outside (a sink) catches the deletion of the newest entries.
#[test]
fn checkpoints_in_the_chain_and_from_outside() {
    let key = SigningKey::from_seed(&SEED).unwrap();
    let mut entries = Vec::new();
    let mut head = None;
    for i in 1..=3 {
        let e = append(head.as_ref(), draft(i)).unwrap();
        head = Some(e.link());
        entries.push(e);
    }
    let c3 = key.sign(3, &entries[2].entry_hash, "t3");
    let mut carrier = Draft::new(
        EventType::CheckpointSigned,
        "system:dvo-operator",
        "checkpoint",
        "dvo-system",
        "AuditLog",
        "signed",
    );
    carrier.metadata = serde_json::to_value(&c3).unwrap();
    let e4 = append(head.as_ref(), carrier).unwrap();
    let e5 = append(Some(&e4.link()), draft(5)).unwrap();
    let segs = vec![
        Segment {
            name: "a".into(),
            previous: None,
            entries: vec![
                entries[0].clone(),
                entries[1].clone(),
                entries[2].clone(),
                e4.clone(),
            ],
            unreadable: None,
        },
        Segment {
            name: "b".into(),
            previous: Some(e4.link()),
            entries: vec![e5.clone()],
            unreadable: None,
        },
    ];
    let r = verify(&segs, &[], &public()).unwrap();
    assert_eq!((r.checkpoints, r.last_checkpoint_seq), (1, Some(3)));
    // Rewriting what the carried checkpoint covers is caught.
    let mut rewritten = segs.clone();
    rewritten[0].entries[1].draft.user_id = "mallory".into();
    relink(&mut rewritten);
    assert_eq!(
        fault_of(&rewritten, &[]),
        (FaultKind::CheckpointMismatch, 3)
    );
    // Deleting the newest entry goes unnoticed in the log alone, but not against a trusted
    // checkpoint of it kept outside.
    let mut cut = segs.clone();
    cut[1].entries.clear();
    assert!(verify(&cut, &[], &public()).is_ok());
    let outside = key.sign(5, &e5.entry_hash, "t5");
    assert_eq!(fault_of(&cut, &[outside]), (FaultKind::Truncated, 5));
}
