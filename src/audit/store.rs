//! The audit log in ConfigMaps: segments `dvo-audit-NNNNNN` in the operator's namespace, each
//! well under the 1 MiB object limit. Appends replace the current segment with its
//! `resourceVersion` (optimistic concurrency), so two writers can never fork the chain: the loser
//! re-reads and retries. A full segment is sealed (`immutable: true`, with a checkpoint of its last
//! entry) and the next one records the head it continues from. Concurrent appends are batched into
//! one write (group commit).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::{mpsc, oneshot};

use super::{Checkpoint, Draft, Entry, Link, Segment, SigningKey, append};

/// Label on every segment.
pub const SEGMENT_LABEL: &str = "dvo.caat.io/audit-segment";
/// Annotation holding the head (JSON `Link`) a segment continues from.
const PREVIOUS_ANNOTATION: &str = "dvo.caat.io/audit-previous";
const ENTRIES_KEY: &str = "entries.jsonl";
const CHECKPOINTS_KEY: &str = "checkpoints.jsonl";
/// A segment is sealed once its entries exceed this many bytes (objects may hold 1 MiB).
pub const SEGMENT_BYTES: usize = 256 * 1024;
/// A checkpoint is signed every this many entries (and when a segment is sealed, at shutdown, and
/// every [`CHECKPOINT_INTERVAL`] while new entries are unsigned).
pub const CHECKPOINT_EVERY: u64 = 100;
/// How long new entries may stay without a checkpoint.
pub const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

fn segment_name(index: u64) -> String {
    format!("dvo-audit-{index:06}")
}

fn index_of(name: &str) -> Option<u64> {
    name.strip_prefix("dvo-audit-")?.parse().ok()
}

/// The lines of `key` that read as `T`, up to the first that does not, and what that one was.
fn lines<T: serde::de::DeserializeOwned>(cm: &ConfigMap, key: &str) -> (Vec<T>, Option<String>) {
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(String::as_str)
        .unwrap_or("");
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(item) => out.push(item),
            Err(e) => {
                let line = n.saturating_add(1);
                let why = format!("ConfigMap {}: {key} line {line}: {e}", cm.name_any());
                return (out, Some(why));
            }
        }
    }
    (out, None)
}

/// A segment as stored, with its checkpoints. A line that does not read back (tampering) stops
/// the segment there and is named in `Segment::unreadable`, for `verify()` to report.
pub fn read_segment(cm: &ConfigMap) -> Result<(Segment, Vec<Checkpoint>), String> {
    let previous = match cm.annotations().get(PREVIOUS_ANNOTATION) {
        Some(v) => Some(serde_json::from_str(v).map_err(|e| {
            format!(
                "ConfigMap {}: unreadable {PREVIOUS_ANNOTATION}: {e}",
                cm.name_any()
            )
        })?),
        None => None,
    };
    let (entries, bad_entry) = lines(cm, ENTRIES_KEY);
    let (checkpoints, bad_checkpoint) = lines(cm, CHECKPOINTS_KEY);
    let segment = Segment {
        name: cm.name_any(),
        previous,
        entries,
        unreadable: bad_entry.or(bad_checkpoint),
    };
    Ok((segment, checkpoints))
}

fn to_jsonl<T: serde::Serialize>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| crate::json::to_string(i) + "\n")
        .collect()
}

fn segment_cm(
    index: u64,
    previous: Option<&Link>,
    entries: &[Entry],
    checkpoints: &[Checkpoint],
    sealed: bool,
) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(segment_name(index));
    cm.metadata.labels = Some(BTreeMap::from([(
        SEGMENT_LABEL.to_owned(),
        "true".to_owned(),
    )]));
    if let Some(p) = previous {
        cm.metadata.annotations = Some(BTreeMap::from([(
            PREVIOUS_ANNOTATION.to_owned(),
            crate::json::to_string(p),
        )]));
    }
    cm.data = Some(BTreeMap::from([
        (ENTRIES_KEY.to_owned(), to_jsonl(entries)),
        (CHECKPOINTS_KEY.to_owned(), to_jsonl(checkpoints)),
    ]));
    cm.immutable = sealed.then_some(true);
    cm
}

/// The segment ConfigMaps in chain order.
async fn segment_maps(api: &Api<ConfigMap>) -> Result<Vec<ConfigMap>, kube::Error> {
    let mut cms = api
        .list(&ListParams::default().labels(SEGMENT_LABEL))
        .await?
        .items;
    cms.sort_by_key(|c| index_of(&c.name_any()));
    Ok(cms)
}

/// Every segment in chain order with all checkpoints: what `verify()` takes.
pub async fn load(
    client: &Client,
    namespace: &str,
) -> Result<(Vec<Segment>, Vec<Checkpoint>), String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let cms = segment_maps(&api)
        .await
        .map_err(|e| format!("cannot list audit segments: {e}"))?;
    let mut segments = Vec::new();
    let mut checkpoints = Vec::new();
    for cm in &cms {
        let (s, c) = read_segment(cm)?;
        segments.push(s);
        checkpoints.extend(c);
    }
    Ok((segments, checkpoints))
}

type Reply = oneshot::Sender<Result<Option<Entry>, String>>;

/// How many lost races an append survives before it reports failure (the caller then waits).
const MAX_CONFLICTS: u32 = 30;

/// The pause after the `n`th lost race: exponential from 5 ms up to 500 ms, with jitter so that
/// writers racing in lockstep (the webhook's and the controllers', or two replicas) fall apart.
fn conflict_backoff(n: u32) -> std::time::Duration {
    let base = 5u64.saturating_mul(1 << n.min(7)).min(500);
    let mut byte = [0u8; 1];
    let jitter = getrandom::fill(&mut byte).map_or(128, |()| u64::from(byte[0]));
    std::time::Duration::from_millis((base / 2).saturating_add(base.saturating_mul(jitter) / 255))
}

/// Appends to the log in the cluster. Cheap to clone; appends from many tasks are batched.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<(Option<Draft>, Reply)>,
}

struct Writer {
    api: Api<ConfigMap>,
    namespace: String,
    key: SigningKey,
}

/// The entry that carries `checkpoint` into the chain (and so to every sink).
fn carrier(namespace: &str, checkpoint: &Checkpoint) -> Draft {
    let mut d = Draft::new(
        super::EventType::CheckpointSigned,
        super::OPERATOR,
        "checkpoint",
        namespace,
        "AuditLog",
        "signed",
    );
    d.timestamp = checkpoint.at.clone();
    d.idempotency_key = format!("checkpoint/{}", checkpoint.seq);
    d.metadata = serde_json::to_value(checkpoint).unwrap_or_default();
    d
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl AuditLog {
    /// Starts the writer task for the log in `namespace`, signing checkpoints with `key`.
    pub fn start(client: Client, namespace: &str, key: SigningKey) -> AuditLog {
        AuditLog::start_with_interval(client, namespace, key, CHECKPOINT_INTERVAL)
    }

    /// [`AuditLog::start`], signing new entries at least every `interval`.
    pub fn start_with_interval(
        client: Client,
        namespace: &str,
        key: SigningKey,
        interval: std::time::Duration,
    ) -> AuditLog {
        let (tx, mut rx) = mpsc::channel::<(Option<Draft>, Reply)>(1024);
        let writer = Writer {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            key,
        };
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now()
                    .checked_add(interval)
                    .unwrap_or_else(tokio::time::Instant::now),
                interval,
            );
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Whether entries were appended since the last checkpoint this writer signed.
            let mut unsigned = false;
            loop {
                let first = tokio::select! {
                    next = rx.recv() => match next {
                        Some(first) => first,
                        None => break,
                    },
                    _ = tick.tick() => {
                        if unsigned {
                            match writer.append(vec![], true).await {
                                Ok(_) => unsigned = false,
                                Err(e) => tracing::warn!(%e, "cannot sign an audit checkpoint"),
                            }
                        }
                        continue;
                    }
                };
                // Group commit: everything queued by now goes into one write. A `None` draft asks
                // for a checkpoint of the head (at shutdown).
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let checkpoint = batch.iter().any(|(d, _)| d.is_none());
                let drafts: Vec<Draft> = batch.iter().filter_map(|(d, _)| d.clone()).collect();
                let wrote = !drafts.is_empty();
                let result = writer.append(drafts, checkpoint).await;
                if result.is_ok() {
                    unsigned = !checkpoint && (unsigned || wrote);
                }
                let mut entries = result.as_ref().ok().map(|e| e.iter());
                for (draft, reply) in batch {
                    let answer = match (&result, draft) {
                        (Err(e), _) => Err(e.clone()),
                        (Ok(_), Some(_)) => Ok(entries.as_mut().and_then(Iterator::next).cloned()),
                        (Ok(all), None) => Ok(all.last().cloned()),
                    };
                    let _ = reply.send(answer);
                }
            }
        });
        AuditLog { tx }
    }

    /// Signs a checkpoint of the current head (at shutdown). Errors when the log is empty.
    pub async fn checkpoint(&self) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((None, reply))
            .await
            .map_err(|_| "the audit writer has stopped".to_owned())?;
        rx.await
            .map_err(|_| "the audit writer has stopped".to_owned())?
            .map(|_| ())
    }

    /// Appends one fact and returns its entry once it is stored; an entry with the same
    /// idempotency key already in the current or previous segment is returned instead of a
    /// duplicate. An error means nothing was recorded: the caller must not act.
    pub async fn record(&self, draft: Draft) -> Result<Entry, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((Some(draft), reply))
            .await
            .map_err(|_| "the audit writer has stopped".to_owned())?;
        let result = rx
            .await
            .map_err(|_| "the audit writer has stopped".to_owned())?
            .and_then(|e| e.ok_or_else(|| "the audit writer returned no entry".to_owned()));
        let outcome = if result.is_ok() { "ok" } else { "error" };
        crate::metrics::METRICS
            .audit_appends
            .get_or_create(&crate::metrics::value(outcome))
            .inc();
        result
    }
}

impl Writer {
    /// Appends `drafts` in one write to the current segment (sealing and starting a new one when
    /// it is full), retrying on a lost race.
    async fn append(&self, drafts: Vec<Draft>, checkpoint: bool) -> Result<Vec<Entry>, String> {
        let mut out = Vec::with_capacity(drafts.len().saturating_add(1));
        let mut rest: &[Draft] = &drafts;
        let mut conflicts: u32 = 0;
        loop {
            // A write takes what fits in the current segment; the rest goes to the next one.
            match self.try_append(rest, checkpoint).await {
                Ok((entries, taken)) => {
                    out.extend(entries);
                    rest = rest.get(taken..).unwrap_or_default();
                    if rest.is_empty() {
                        return Ok(out);
                    }
                    conflicts = 0;
                }
                Err(Retry::Again) => {}
                Err(Retry::Conflict) if conflicts < MAX_CONFLICTS => {
                    // The first retry is immediate (usually a read that was a moment old); after
                    // that, writers back off.
                    if conflicts > 0 {
                        tokio::time::sleep(conflict_backoff(conflicts)).await;
                    }
                    conflicts = conflicts.saturating_add(1);
                }
                Err(Retry::Conflict) => {
                    return Err(format!(
                        "the audit log changed under every attempt to append ({MAX_CONFLICTS} conflicts)"
                    ));
                }
                Err(Retry::Fatal(e)) => return Err(e),
            }
        }
    }

    /// One conditional write: the entries of the drafts it took (a prefix) and how many it took.
    async fn try_append(
        &self,
        drafts: &[Draft],
        checkpoint: bool,
    ) -> Result<(Vec<Entry>, usize), Retry> {
        let fatal = |e: kube::Error| Retry::Fatal(format!("audit append failed: {e}"));
        let cms = segment_maps(&self.api).await.map_err(fatal)?;
        let Some(current) = cms.last().cloned() else {
            // The first segment of the log.
            let cm = segment_cm(0, None, &[], &[], false);
            return match self.api.create(&PostParams::default(), &cm).await {
                Ok(_) => Err(Retry::Again),
                Err(kube::Error::Api(e)) if e.code == 409 => Err(Retry::Conflict),
                Err(e) => Err(fatal(e)),
            };
        };
        let index = index_of(&current.name_any()).unwrap_or(0);
        let (segment, mut checkpoints) = read_segment(&current).map_err(Retry::Fatal)?;
        if let Some(damage) = &segment.unreadable {
            return Err(Retry::Fatal(format!(
                "the audit log is damaged ({damage}); nothing is appended until it is repaired"
            )));
        }
        if current.immutable == Some(true) {
            // Sealed by another writer that has not created the next one yet: create it.
            let head = segment
                .entries
                .last()
                .map(Entry::link)
                .or(segment.previous.clone());
            let next = segment_cm(index.saturating_add(1), head.as_ref(), &[], &[], false);
            return match self.api.create(&PostParams::default(), &next).await {
                Ok(_) => Err(Retry::Again),
                Err(kube::Error::Api(e)) if e.code == 409 => Err(Retry::Conflict),
                Err(e) => Err(fatal(e)),
            };
        }
        let mut known: BTreeMap<String, Entry> = BTreeMap::new();
        if let Some(prev) = cms.iter().rev().nth(1) {
            let (s, _) = read_segment(prev).map_err(Retry::Fatal)?;
            if let Some(damage) = &s.unreadable {
                return Err(Retry::Fatal(format!(
                    "the audit log is damaged ({damage}); nothing is appended until it is repaired"
                )));
            }
            known.extend(
                s.entries
                    .into_iter()
                    .map(|e| (e.draft.idempotency_key.clone(), e)),
            );
        }
        known.extend(
            segment
                .entries
                .iter()
                .map(|e| (e.draft.idempotency_key.clone(), e.clone())),
        );
        let mut entries = segment.entries.clone();
        let mut head = entries.last().map(Entry::link).or(segment.previous.clone());
        let mut out: Vec<Entry> = Vec::with_capacity(drafts.len().saturating_add(1));
        let mut size: usize = entries
            .iter()
            .map(|e| serde_json::to_string(e).map_or(0, |s| s.len().saturating_add(1)))
            .sum();
        let mut taken: usize = 0;
        let mut signed_now: Option<Checkpoint> = None;
        for draft in drafts {
            if size > SEGMENT_BYTES {
                break;
            }
            taken = taken.saturating_add(1);
            if let Some(existing) = known
                .get(&draft.idempotency_key)
                .filter(|_| !draft.idempotency_key.is_empty())
            {
                out.push(existing.clone());
                continue;
            }
            let entry = append(head.as_ref(), draft.clone()).map_err(Retry::Fatal)?;
            head = Some(entry.link());
            if entry.seq % CHECKPOINT_EVERY == 0 {
                let c = self.key.sign(entry.seq, &entry.entry_hash, &now());
                checkpoints.push(c.clone());
                signed_now = Some(c);
            }
            known.insert(entry.draft.idempotency_key.clone(), entry.clone());
            size = size.saturating_add(
                serde_json::to_string(&entry).map_or(0, |s| s.len().saturating_add(1)),
            );
            entries.push(entry.clone());
            out.push(entry);
        }
        let sealed = size > SEGMENT_BYTES;
        let unsigned_head = entries
            .last()
            .filter(|l| checkpoints.last().is_none_or(|c| c.seq != l.seq));
        if let (true, Some(last)) = (sealed || checkpoint, unsigned_head) {
            let c = self.key.sign(last.seq, &last.entry_hash, &now());
            checkpoints.push(c.clone());
            signed_now = Some(c);
        }
        // The newest checkpoint signed in this write also goes into the chain, right after the
        // entries it covers: sinks deliver it, and a sealed segment ends with it.
        if let Some(c) = signed_now {
            let entry =
                append(head.as_ref(), carrier(&self.namespace, &c)).map_err(Retry::Fatal)?;
            entries.push(entry);
        }
        let mut cm = segment_cm(
            index,
            segment.previous.as_ref(),
            &entries,
            &checkpoints,
            sealed,
        );
        cm.metadata.resource_version = current.resource_version();
        if checkpoint && taken == drafts.len() {
            out.extend(entries.last().cloned());
        }
        match self
            .api
            .replace(&current.name_any(), &PostParams::default(), &cm)
            .await
        {
            Ok(_) => Ok((out, taken)),
            Err(kube::Error::Api(e)) if e.code == 409 => Err(Retry::Conflict),
            Err(e) => Err(fatal(e)),
        }
    }
}

enum Retry {
    /// Progress without entries (a segment was created): try again at once.
    Again,
    /// Another writer changed the log first: re-read and try again.
    Conflict,
    Fatal(String),
}

/// Which whole segments retention may delete: sealed ones, oldest first and contiguous, whose
/// newest entry is older than `cutoff`; never the newest segment. Returns their names and the
/// last `seq` they hold.
pub fn expired(
    segments: &[(Segment, bool)],
    cutoff: chrono::DateTime<chrono::Utc>,
) -> (Vec<String>, u64) {
    let mut names = Vec::new();
    let mut through = 0;
    let candidates = segments.len().saturating_sub(1);
    for (segment, sealed) in segments.iter().take(candidates) {
        let newest = segment
            .entries
            .last()
            .and_then(|e| chrono::DateTime::parse_from_rfc3339(&e.draft.timestamp).ok());
        match newest {
            Some(t) if *sealed && t < cutoff => {
                names.push(segment.name.clone());
                through = segment.entries.last().map_or(through, |e| e.seq);
            }
            _ => break,
        }
    }
    (names, through)
}

/// Deletes whole segments older than `cutoff`, after recording a `retention_applied` entry that
/// names them (so `verify()` accepts the log starting later). Returns the deleted names.
pub async fn apply_retention(
    client: &Client,
    namespace: &str,
    log: &AuditLog,
    cutoff: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<String>, String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let cms = segment_maps(&api)
        .await
        .map_err(|e| format!("cannot list audit segments: {e}"))?;
    let mut segments = Vec::new();
    for cm in &cms {
        segments.push((read_segment(cm)?.0, cm.immutable == Some(true)));
    }
    let (names, through) = expired(&segments, cutoff);
    if names.is_empty() {
        return Ok(names);
    }
    let mut draft = Draft::new(
        super::EventType::RetentionApplied,
        super::OPERATOR,
        "retention",
        namespace,
        "ConfigMap",
        "success",
    );
    draft.timestamp = now();
    draft.idempotency_key = format!("retention/{through}");
    draft.metadata = serde_json::json!({"deleted_segments": names, "deleted_through_seq": through, "cutoff": cutoff.to_rfc3339()});
    log.record(draft).await?;
    for name in &names {
        match api.delete(name, &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(format!("cannot delete audit segment {name}: {e}")),
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{EventType, append};

    fn segment(name: &str, first: u64, n: u64, ts: &str) -> Segment {
        let mut entries = Vec::new();
        let mut head = (first > 1).then(|| Link {
            seq: first - 1,
            hash: "0".repeat(64),
        });
        for _ in 0..n {
            let mut d = Draft::new(EventType::PolicyEvaluated, "u", "o", "r", "t", "success");
            d.timestamp = ts.to_owned();
            let e = append(head.as_ref(), d).unwrap();
            head = Some(e.link());
            entries.push(e);
        }
        Segment {
            name: name.to_owned(),
            previous: None,
            entries,
            unreadable: None,
        }
    }

    #[test]
    fn retention_takes_old_sealed_segments_from_the_start_only() {
        let cutoff = "2026-06-01T00:00:00Z".parse().unwrap();
        let old = "2026-01-01T00:00:00Z";
        let new = "2026-11-01T00:00:00Z";
        // (segments with their sealed flag, names retention may delete, last seq deleted)
        type Case<'a> = (Vec<(Segment, bool)>, Vec<&'a str>, u64);
        let table: Vec<Case> = vec![
            (
                vec![
                    (segment("a", 1, 3, old), true),
                    (segment("b", 4, 3, old), true),
                    (segment("c", 7, 1, old), false),
                ],
                vec!["a", "b"],
                6,
            ),
            (
                vec![
                    (segment("a", 1, 3, old), true),
                    (segment("b", 4, 3, new), true),
                    (segment("c", 7, 1, old), true),
                ],
                vec!["a"],
                3,
            ),
            // The newest segment is never deleted, even when sealed and old.
            (vec![(segment("a", 1, 3, old), true)], vec![], 0),
            // An unsealed segment stops retention.
            (
                vec![
                    (segment("a", 1, 3, old), false),
                    (segment("b", 4, 3, old), true),
                ],
                vec![],
                0,
            ),
        ];
        for (segments, names, through) in table {
            assert_eq!(
                expired(&segments, cutoff),
                (names.iter().map(|s| s.to_string()).collect(), through)
            );
        }
    }
}
