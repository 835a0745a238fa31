//! Verifying a chain: every hash, every link, every `seq`, every segment boundary and every
//! checkpoint. The first fault found is named with its `seq` and kind.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::chain::{GENESIS, Link, entry_hash};
use super::{Checkpoint, Entry, EventType};

/// One stored segment (a ConfigMap), in chain order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// Its name.
    pub name: String,
    /// The head of the chain before this segment (None for the chain's first segment).
    pub previous: Option<Link>,
    /// Its entries, in order.
    pub entries: Vec<Entry>,
    /// What could not be read back, if anything (which key, which line, why): a stored line
    /// that is not an entry or a checkpoint was altered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

/// The kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultKind {
    /// The entry's content does not hash to its `entry_hash`: it was altered.
    HashMismatch,
    /// `previous_hash` is not the previous entry's hash: an entry was removed, reordered or forged.
    BrokenLink,
    /// A `seq` is missing or repeated inside a segment.
    SequenceGap,
    /// Whole segments are missing (between two segments, or at the start without a retention
    /// entry that accounts for them).
    MissingSegment,
    /// Entries a checkpoint covers are gone: the newest entries were deleted.
    Truncated,
    /// A checkpoint's signature does not verify with the public key.
    BadCheckpointSignature,
    /// A validly signed checkpoint names another head hash: the chain was rewritten.
    CheckpointMismatch,
    /// A sealed segment (any but the newest) does not end at a checkpoint: its checkpoints were
    /// removed, or it was rewritten or cut.
    MissingCheckpoint,
    /// A stored line does not read as an entry or a checkpoint: it was altered.
    Unreadable,
}

/// The first fault in a chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// Its kind.
    pub kind: FaultKind,
    /// The `seq` of the first bad entry (or of the checkpoint).
    pub seq: u64,
    /// The segment it was found in, when it concerns an entry.
    pub segment: Option<String>,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} at seq {}", self.kind, self.seq)?;
        if let Some(s) = &self.segment {
            write!(f, " (segment {s})")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// What a successful verification covered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Entries checked.
    pub entries: u64,
    /// First and last `seq` present.
    pub first_seq: u64,
    /// Last `seq` present.
    pub last_seq: u64,
    /// The head hash.
    pub head_hash: String,
    /// Checkpoints verified.
    pub checkpoints: usize,
    /// The newest checkpoint's `seq`: entries after it are protected by the hash chain only.
    pub last_checkpoint_seq: Option<u64>,
}

fn fault(kind: FaultKind, seq: u64, segment: Option<&str>, message: String) -> Fault {
    Fault {
        kind,
        seq,
        segment: segment.map(str::to_owned),
        message,
    }
}

/// The highest `seq` that retention entries say were deleted.
fn retained_through(segments: &[Segment]) -> u64 {
    segments
        .iter()
        .flat_map(|s| &s.entries)
        .filter(|e| e.draft.event_type == EventType::RetentionApplied)
        .filter_map(|e| {
            e.draft
                .metadata
                .get("deleted_through_seq")
                .and_then(|v| v.as_u64())
        })
        .max()
        .unwrap_or(0)
}

/// The checkpoint a `checkpoint_signed` entry carries.
pub fn carried_checkpoint(entry: &Entry) -> Option<Result<Checkpoint, String>> {
    (entry.draft.event_type == EventType::CheckpointSigned).then(|| {
        serde_json::from_value(entry.draft.metadata.clone())
            .map_err(|e| format!("its metadata is not a checkpoint: {e}"))
    })
}

/// Whether a sealed segment ends at a checkpoint: its last entry is covered by one, or its last
/// entry carries the checkpoint of the entry before it.
fn ends_at_checkpoint(segment: &Segment, covered: &std::collections::HashSet<u64>) -> bool {
    let Some(last) = segment.entries.last() else {
        return true;
    };
    covered.contains(&last.seq)
        || matches!(carried_checkpoint(last), Some(Ok(c)) if c.seq.saturating_add(1) == last.seq)
}

/// Whether each entry of `segments` (in order) carries the hash of its content, computed on
/// every core: the hashes are independent of each other; only the links are checked in order.
fn hashes_match(segments: &[Segment]) -> Vec<bool> {
    let entries: Vec<&Entry> = segments.iter().flat_map(|s| &s.entries).collect();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let chunk = entries.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let parts: Vec<_> = entries
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|e| entry_hash(e) == e.entry_hash)
                        .collect::<Vec<bool>>()
                })
            })
            .collect();
        // A part whose thread died counts as not matching (fail closed).
        let mut out = Vec::with_capacity(entries.len());
        for (part, handle) in entries.chunks(chunk).zip(parts) {
            match handle.join() {
                Ok(ok) => out.extend(ok),
                Err(_) => out.extend(std::iter::repeat_n(false, part.len())),
            }
        }
        out
    })
}

/// Verifies segments (in chain order) and checkpoints against the checkpoint public key. The
/// checkpoints are those stored beside the segments, those carried by `checkpoint_signed`
/// entries, and any trusted ones given from outside (a sink's copy): each must verify and match
/// the log, and every sealed segment must end at one.
pub fn verify(
    segments: &[Segment],
    checkpoints: &[Checkpoint],
    public_key: &[u8],
) -> Result<Report, Fault> {
    let hashes_ok = hashes_match(segments);
    let mut hash_ok = hashes_ok.iter();
    let mut head: Option<Link> = None;
    let mut count = 0u64;
    let mut first_seq = None;
    for segment in segments {
        let name = Some(segment.name.as_str());
        let mut expected = match (&head, &segment.previous) {
            // The chain's first segment: from seq 1, or after deleted segments that a retention
            // entry accounts for.
            (None, None) => Link {
                seq: 0,
                hash: GENESIS.to_owned(),
            },
            (None, Some(prev)) => {
                if retained_through(segments) < prev.seq {
                    return Err(fault(
                        FaultKind::MissingSegment,
                        prev.seq.saturating_add(1),
                        name,
                        format!(
                            "the log starts after seq {} but no retention entry accounts for the entries before it",
                            prev.seq
                        ),
                    ));
                }
                prev.clone()
            }
            (Some(h), Some(prev)) if prev.seq > h.seq => {
                return Err(fault(
                    FaultKind::MissingSegment,
                    h.seq.saturating_add(1),
                    name,
                    format!(
                        "entries {} to {} are missing before segment {}",
                        h.seq.saturating_add(1),
                        prev.seq,
                        segment.name
                    ),
                ));
            }
            (Some(h), _) => h.clone(),
        };
        for e in &segment.entries {
            if e.seq != expected.seq.saturating_add(1) {
                return Err(fault(
                    FaultKind::SequenceGap,
                    expected.seq.saturating_add(1),
                    name,
                    format!(
                        "expected seq {}, found {}",
                        expected.seq.saturating_add(1),
                        e.seq
                    ),
                ));
            }
            if hash_ok.next() != Some(&true) {
                return Err(fault(
                    FaultKind::HashMismatch,
                    e.seq,
                    name,
                    "the entry's content does not match its entry_hash: it was altered".into(),
                ));
            }
            if e.previous_hash != expected.hash {
                return Err(fault(
                    FaultKind::BrokenLink,
                    e.seq,
                    name,
                    format!(
                        "previous_hash {} is not the hash {} of seq {}",
                        e.previous_hash, expected.hash, expected.seq
                    ),
                ));
            }
            first_seq.get_or_insert(e.seq);
            count = count.saturating_add(1);
            expected = e.link();
        }
        if let Some(what) = &segment.unreadable {
            return Err(fault(
                FaultKind::Unreadable,
                expected.seq.saturating_add(1),
                name,
                format!("{what}: a stored line was altered"),
            ));
        }
        head = Some(expected);
    }
    let mut checkpoints: Vec<Checkpoint> = checkpoints.to_vec();
    for e in segments.iter().flat_map(|s| &s.entries) {
        match carried_checkpoint(e) {
            None => {}
            Some(Ok(c)) => checkpoints.push(c),
            Some(Err(why)) => {
                return Err(fault(FaultKind::BadCheckpointSignature, e.seq, None, why));
            }
        }
    }
    let head = head.unwrap_or(Link {
        seq: 0,
        hash: GENESIS.to_owned(),
    });
    let first = first_seq.unwrap_or(0);
    let hashes: std::collections::HashMap<u64, &str> = segments
        .iter()
        .flat_map(|s| &s.entries)
        .map(|e| (e.seq, e.entry_hash.as_str()))
        .collect();
    let hash_at = |seq: u64| hashes.get(&seq).copied();
    for c in &checkpoints {
        if !c.verifies(public_key) {
            return Err(fault(
                FaultKind::BadCheckpointSignature,
                c.seq,
                None,
                format!(
                    "the checkpoint signed at {} does not verify with the configured key",
                    c.at
                ),
            ));
        }
        if c.seq > head.seq {
            return Err(fault(
                FaultKind::Truncated,
                head.seq.saturating_add(1),
                None,
                format!(
                    "a checkpoint covers seq {} but the log ends at seq {}: the newest entries were deleted",
                    c.seq, head.seq
                ),
            ));
        }
        if c.seq >= first && hash_at(c.seq) != Some(c.head_hash.as_str()) {
            return Err(fault(
                FaultKind::CheckpointMismatch,
                c.seq,
                None,
                format!(
                    "the checkpoint at seq {} names head {} but the log has another entry there: the chain was rewritten",
                    c.seq, c.head_hash
                ),
            ));
        }
    }
    let covered: std::collections::HashSet<u64> = checkpoints.iter().map(|c| c.seq).collect();
    let sealed = segments.len().saturating_sub(1);
    if let Some(open) = segments
        .iter()
        .take(sealed)
        .find(|s| !ends_at_checkpoint(s, &covered))
    {
        let last = open.entries.last().map_or(0, |e| e.seq);
        return Err(fault(
            FaultKind::MissingCheckpoint,
            last,
            Some(&open.name),
            format!(
                "sealed segment {} ends at seq {last} without a checkpoint of it: its checkpoints were removed or it was rewritten",
                open.name
            ),
        ));
    }
    Ok(Report {
        entries: count,
        first_seq: first,
        last_seq: head.seq,
        head_hash: head.hash,
        checkpoints: checkpoints.len(),
        last_checkpoint_seq: checkpoints.iter().map(|c| c.seq).max(),
    })
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
