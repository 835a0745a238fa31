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
/// A segment is sealed once its entries exceed this many bytes (objects may hold 1 MiB; every
/// append rewrites the segment, so smaller segments make cheaper appends).
pub const SEGMENT_BYTES: usize = 64 * 1024;
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
    segment_cm_text(
        index,
        previous,
        to_jsonl(entries),
        to_jsonl(checkpoints),
        sealed,
    )
}

fn segment_cm_text(
    index: u64,
    previous: Option<&Link>,
    entries: String,
    checkpoints: String,
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
        (ENTRIES_KEY.to_owned(), entries),
        (CHECKPOINTS_KEY.to_owned(), checkpoints),
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

/// The `seq` of the newest entry (0 for an empty log): one metadata list and one read of the
/// newest segment.
pub async fn head(client: &Client, namespace: &str) -> Result<u64, String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let list = api
        .list_metadata(&ListParams::default().labels(SEGMENT_LABEL))
        .await
        .map_err(|e| format!("cannot list audit segments: {e}"))?;
    let newest = list
        .items
        .iter()
        .filter_map(|m| Some((index_of(&m.name_any())?, m.name_any())))
        .max();
    let Some((_, name)) = newest else {
        return Ok(0);
    };
    let Some(cm) = api
        .get_opt(&name)
        .await
        .map_err(|e| format!("cannot read audit segment {name}: {e}"))?
    else {
        return Err(format!("audit segment {name} went away; trying again"));
    };
    let (segment, _) = read_segment(&cm)?;
    let after = cm
        .annotations()
        .get(PREVIOUS_ANNOTATION)
        .and_then(|v| serde_json::from_str::<Link>(v).ok())
        .map_or(0, |l| l.seq);
    Ok(segment.entries.last().map_or(after, |e| e.seq))
}

/// The segments in chain order, from a metadata-only list: index, name, and the `seq` their
/// entries start after.
async fn segments_in_order(api: &Api<ConfigMap>) -> Result<Vec<(u64, String, u64)>, String> {
    let list = api
        .list_metadata(&ListParams::default().labels(SEGMENT_LABEL))
        .await
        .map_err(|e| format!("cannot list audit segments: {e}"))?;
    let mut segments: Vec<(u64, String, u64)> = list
        .items
        .iter()
        .filter_map(|m| {
            let name = m.name_any();
            let index = index_of(&name)?;
            let after = m
                .annotations()
                .get(PREVIOUS_ANNOTATION)
                .and_then(|v| serde_json::from_str::<Link>(v).ok())
                .map_or(0, |l| l.seq);
            Some((index, name, after))
        })
        .collect();
    segments.sort();
    Ok(segments)
}

/// The entries of segment `name`; None when it is gone (retention); an error when it cannot be
/// read or is damaged.
async fn segment_entries(api: &Api<ConfigMap>, name: &str) -> Result<Option<Vec<Entry>>, String> {
    let Some(cm) = api
        .get_opt(name)
        .await
        .map_err(|e| format!("cannot read audit segment {name}: {e}"))?
    else {
        return Ok(None);
    };
    let (segment, _) = read_segment(&cm)?;
    if let Some(damage) = segment.unreadable {
        return Err(format!("the audit log is damaged ({damage})"));
    }
    Ok(Some(segment.entries))
}

/// The entries after `seq`, reading only the segments that hold them (their names and the
/// heads they continue from come from a metadata-only list), and no more segments once
/// `limit` entries are read: what a sink delivers next costs what is new, not the size of the
/// log.
pub async fn entries_after(
    client: &Client,
    namespace: &str,
    seq: u64,
    limit: usize,
) -> Result<Vec<Entry>, String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let segments = segments_in_order(&api).await?;
    // A segment holds entries after `seq` unless the next one starts at or before it.
    let starts: Vec<u64> = segments.iter().map(|(_, _, after)| *after).collect();
    let mut out = Vec::new();
    for (i, (_, name, _)) in segments.iter().enumerate() {
        if out.len() >= limit {
            break;
        }
        let next_start = starts.get(i.saturating_add(1)).copied();
        if next_start.is_some_and(|n| n <= seq) {
            continue;
        }
        let Some(entries) = segment_entries(&api, name).await? else {
            continue; // deleted by retention meanwhile
        };
        out.extend(entries.into_iter().filter(|e| e.seq > seq));
    }
    Ok(out)
}

/// The newest `limit` entries that `keep` accepts, newest first, reading segments from the
/// newest back and no more than `max_segments` of them; and whether the search reached the
/// log's first segment (false: older entries were not searched).
pub async fn newest(
    client: &Client,
    namespace: &str,
    keep: impl Fn(&Entry) -> bool,
    limit: usize,
    max_segments: usize,
) -> Result<(Vec<Entry>, bool), String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let segments = segments_in_order(&api).await?;
    let mut out = Vec::new();
    for (read, (_, name, _)) in segments.iter().rev().enumerate() {
        if out.len() >= limit || read >= max_segments {
            return Ok((out, false));
        }
        let Some(entries) = segment_entries(&api, name).await? else {
            continue; // deleted by retention meanwhile
        };
        let room = limit.saturating_sub(out.len());
        out.extend(entries.into_iter().rev().filter(|e| keep(e)).take(room));
    }
    Ok((out, true))
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
    /// The newest segment as this writer last read or wrote it: an append is one write, with
    /// no read, unless another writer got there first (then only that segment is read again).
    head: Option<Head>,
    /// The index of the newest segment last seen (where to look again after a lost race).
    last_index: Option<u64>,
}

/// The newest segment, parsed, with what an append needs.
struct Head {
    index: u64,
    /// Its resourceVersion (the write is conditional on it).
    version: Option<String>,
    sealed: bool,
    previous: Option<Link>,
    /// Its entries and checkpoints as stored (JSON lines).
    entries_text: String,
    checkpoints_text: String,
    /// Its last entry's link, or the one it continues from.
    link: Option<Link>,
    /// Its checkpoints' last seq.
    last_checkpoint: Option<u64>,
    /// Entries of this segment and the one before, by idempotency key.
    known: std::collections::HashMap<String, Entry>,
}

impl Head {
    /// The head from a stored segment; `before` holds the entries of the segment before it.
    fn read(index: u64, cm: &ConfigMap, before: Vec<Entry>) -> Result<Head, Retry> {
        let (segment, checkpoints) = read_segment(cm).map_err(Retry::Fatal)?;
        if let Some(damage) = &segment.unreadable {
            return Err(Retry::Fatal(format!(
                "the audit log is damaged ({damage}); nothing is appended until it is repaired"
            )));
        }
        let text = |key: &str| {
            cm.data
                .as_ref()
                .and_then(|d| d.get(key))
                .cloned()
                .unwrap_or_default()
        };
        let mut known: std::collections::HashMap<String, Entry> = before
            .into_iter()
            .map(|e| (e.draft.idempotency_key.clone(), e))
            .collect();
        let link = segment
            .entries
            .last()
            .map(Entry::link)
            .or(segment.previous.clone());
        known.extend(
            segment
                .entries
                .into_iter()
                .map(|e| (e.draft.idempotency_key.clone(), e)),
        );
        Ok(Head {
            index,
            version: cm.resource_version(),
            sealed: cm.immutable == Some(true),
            previous: segment.previous,
            entries_text: text(ENTRIES_KEY),
            checkpoints_text: text(CHECKPOINTS_KEY),
            link,
            last_checkpoint: checkpoints.last().map(|c| c.seq),
            known,
        })
    }
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
        let mut writer = Writer {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            key,
            head: None,
            last_index: None,
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
    async fn append(&mut self, drafts: Vec<Draft>, checkpoint: bool) -> Result<Vec<Entry>, String> {
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

    /// The index of the newest segment in the cluster (names only), or None when there is none.
    async fn newest_index(&self) -> Result<Option<u64>, kube::Error> {
        let names = self
            .api
            .list_metadata(&ListParams::default().labels(SEGMENT_LABEL))
            .await?;
        Ok(names
            .items
            .iter()
            .filter_map(|m| index_of(&m.name_any()))
            .max())
    }

    /// Reads the newest segment again, starting from where it was last seen: one GET unless
    /// others sealed segments meanwhile.
    async fn load(&mut self) -> Result<Head, Retry> {
        let fatal = |e: kube::Error| Retry::Fatal(format!("audit append failed: {e}"));
        let index = match self.last_index {
            Some(i) => i,
            None => match self.newest_index().await.map_err(fatal)? {
                Some(i) => i,
                None => {
                    // The first segment of the log.
                    let cm = segment_cm(0, None, &[], &[], false);
                    return match self.api.create(&PostParams::default(), &cm).await {
                        Ok(created) => Head::read(0, &created, vec![]),
                        Err(kube::Error::Api(e)) if e.code == 409 => Err(Retry::Conflict),
                        Err(e) => Err(fatal(e)),
                    };
                }
            },
        };
        let Some(cm) = self
            .api
            .get_opt(&segment_name(index))
            .await
            .map_err(fatal)?
        else {
            // Where it was last seen is gone (retention): look for the newest again.
            self.last_index = None;
            return Err(Retry::Again);
        };
        let next = index.saturating_add(1);
        if cm.immutable == Some(true)
            && self
                .api
                .get_metadata_opt(&segment_name(next))
                .await
                .map_err(fatal)?
                .is_some()
        {
            self.last_index = Some(next);
            return Err(Retry::Again);
        }
        let before = match index.checked_sub(1) {
            None => vec![],
            Some(p) => match self.api.get_opt(&segment_name(p)).await.map_err(fatal)? {
                Some(prev) => read_segment(&prev).map_err(Retry::Fatal)?.0.entries,
                None => vec![],
            },
        };
        self.last_index = Some(index);
        Head::read(index, &cm, before)
    }

    /// One conditional write: the entries of the drafts it took (a prefix) and how many it took.
    async fn try_append(
        &mut self,
        drafts: &[Draft],
        checkpoint: bool,
    ) -> Result<(Vec<Entry>, usize), Retry> {
        let fatal = |e: kube::Error| Retry::Fatal(format!("audit append failed: {e}"));
        let mut head = match self.head.take() {
            Some(head) => head,
            None => self.load().await?,
        };
        if head.sealed {
            // Sealed (by this writer or another that has not created the next one yet): create
            // the next segment, continuing from its last entry.
            let index = head.index.saturating_add(1);
            let next = segment_cm(index, head.link.as_ref(), &[], &[], false);
            return match self.api.create(&PostParams::default(), &next).await {
                Ok(created) => {
                    // Only the sealed segment's entries are remembered with the new one.
                    let from = head.previous.as_ref().map_or(0, |p| p.seq);
                    let before: Vec<Entry> =
                        head.known.into_values().filter(|e| e.seq > from).collect();
                    self.head = Some(Head::read(index, &created, before)?);
                    self.last_index = Some(index);
                    Err(Retry::Again)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    self.last_index = Some(index);
                    Err(Retry::Conflict)
                }
                Err(e) => Err(fatal(e)),
            };
        }
        let mut entries_text = head.entries_text.clone();
        let mut checkpoints_text = head.checkpoints_text.clone();
        let mut link = head.link.clone();
        let mut last_checkpoint = head.last_checkpoint;
        let mut added: Vec<Entry> = Vec::new();
        let mut out: Vec<Entry> = Vec::with_capacity(drafts.len().saturating_add(1));
        let mut taken: usize = 0;
        let mut signed_now: Option<Checkpoint> = None;
        let sign = |seq: u64, hash: &str, text: &mut String| {
            let c = self.key.sign(seq, hash, &now());
            text.push_str(&crate::json::to_string(&c));
            text.push('\n');
            c
        };
        for draft in drafts {
            if entries_text.len() > SEGMENT_BYTES {
                break;
            }
            taken = taken.saturating_add(1);
            let existing = head
                .known
                .get(&draft.idempotency_key)
                .or_else(|| {
                    added
                        .iter()
                        .find(|e| e.draft.idempotency_key == draft.idempotency_key)
                })
                .filter(|_| !draft.idempotency_key.is_empty());
            if let Some(existing) = existing {
                out.push(existing.clone());
                continue;
            }
            let entry = append(link.as_ref(), draft.clone()).map_err(Retry::Fatal)?;
            link = Some(entry.link());
            if entry.seq % CHECKPOINT_EVERY == 0 {
                signed_now = Some(sign(entry.seq, &entry.entry_hash, &mut checkpoints_text));
                last_checkpoint = Some(entry.seq);
            }
            entries_text.push_str(&crate::json::to_string(&entry));
            entries_text.push('\n');
            added.push(entry.clone());
            out.push(entry);
        }
        let sealed = entries_text.len() > SEGMENT_BYTES;
        // The segment's last entry, when it has one and no checkpoint covers it.
        let has_entries = !added.is_empty() || !head.entries_text.is_empty();
        let unsigned_head = link
            .clone()
            .filter(|l| has_entries && last_checkpoint != Some(l.seq));
        if let (true, Some(last)) = (sealed || checkpoint, unsigned_head) {
            signed_now = Some(sign(last.seq, &last.hash, &mut checkpoints_text));
        }
        // The newest checkpoint signed in this write also goes into the chain, right after the
        // entries it covers: sinks deliver it, and a sealed segment ends with it.
        if let Some(c) = &signed_now {
            let entry = append(link.as_ref(), carrier(&self.namespace, c)).map_err(Retry::Fatal)?;
            link = Some(entry.link());
            entries_text.push_str(&crate::json::to_string(&entry));
            entries_text.push('\n');
            added.push(entry);
        }
        if checkpoint && taken == drafts.len() {
            out.extend(added.last().cloned());
        }
        let mut cm = segment_cm_text(
            head.index,
            head.previous.as_ref(),
            entries_text.clone(),
            checkpoints_text.clone(),
            sealed,
        );
        cm.metadata.resource_version = head.version.clone();
        match self
            .api
            .replace(&segment_name(head.index), &PostParams::default(), &cm)
            .await
        {
            Ok(stored) => {
                head.version = stored.resource_version();
                head.sealed = sealed;
                head.entries_text = entries_text;
                head.checkpoints_text = checkpoints_text;
                head.link = link;
                head.last_checkpoint = signed_now.as_ref().map(|c| c.seq).or(last_checkpoint);
                head.known.extend(
                    added
                        .into_iter()
                        .map(|e| (e.draft.idempotency_key.clone(), e)),
                );
                self.head = Some(head);
                Ok((out, taken))
            }
            // Another writer got there first: read the segment again.
            Err(kube::Error::Api(e)) if e.code == 409 => Err(Retry::Conflict),
            // The write may or may not have happened: read it again before the next one.
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

/// Whether retention may delete `segment` (when every older one goes too): it is sealed and
/// its newest entry is older than `cutoff`.
fn expirable(segment: &Segment, sealed: bool, cutoff: chrono::DateTime<chrono::Utc>) -> bool {
    let newest = segment
        .entries
        .last()
        .and_then(|e| chrono::DateTime::parse_from_rfc3339(&e.draft.timestamp).ok());
    sealed && newest.is_some_and(|t| t < cutoff)
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
        if !expirable(segment, *sealed, cutoff) {
            break;
        }
        names.push(segment.name.clone());
        through = segment.entries.last().map_or(through, |e| e.seq);
    }
    (names, through)
}

/// Deletes whole segments older than `cutoff`, after recording a `retention_applied` entry that
/// names them (so `verify()` accepts the log starting later). Returns the deleted names. Reads
/// the segments' names, then the oldest segments only, up to the first that stays.
pub async fn apply_retention(
    client: &Client,
    namespace: &str,
    log: &AuditLog,
    cutoff: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<String>, String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let list = api
        .list_metadata(&ListParams::default().labels(SEGMENT_LABEL))
        .await
        .map_err(|e| format!("cannot list audit segments: {e}"))?;
    let mut names: Vec<(u64, String)> = list
        .items
        .iter()
        .filter_map(|m| Some((index_of(&m.name_any())?, m.name_any())))
        .collect();
    names.sort();
    // Never the newest segment.
    names.pop();
    let mut segments = Vec::new();
    for (_, name) in &names {
        let Some(cm) = api
            .get_opt(name)
            .await
            .map_err(|e| format!("cannot read audit segment {name}: {e}"))?
        else {
            continue;
        };
        let segment = read_segment(&cm)?.0;
        let sealed = cm.immutable == Some(true);
        if !expirable(&segment, sealed, cutoff) {
            break;
        }
        segments.push((segment, sealed));
    }
    // What was read is all expirable; a stand-in for the newest keeps `expired` honest.
    segments.push((
        Segment {
            name: String::new(),
            previous: None,
            entries: vec![],
            unreadable: None,
        },
        false,
    ));
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
