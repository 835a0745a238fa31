//! Watches with their own backoff, and the shared caches the reconcilers read instead of
//! LISTing: every input of a decision comes from a watch, so a reconcile costs no LIST however
//! many objects there are, and a watch that fails (410 Gone after an API server restart, a
//! dropped connection) retries on its own schedule without stalling the others.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::Store;
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;

/// The backoff of one watch: doubling from [`WatchBackoff::FIRST`] up to [`WatchBackoff::MAX`],
/// with jitter, reset by the first event after a failure. The ceiling is low on purpose: after
/// an API server outage, every watch is back within a few seconds of it answering.
#[derive(Clone, Debug)]
pub struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    /// The first pause.
    pub const FIRST: Duration = Duration::from_millis(250);
    /// The longest pause.
    pub const MAX: Duration = Duration::from_secs(4);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let base = self.next;
        self.next = base.saturating_mul(2).min(Self::MAX);
        let mut byte = [0u8; 1];
        let jitter = getrandom::fill(&mut byte).map_or(0, |()| u32::from(byte[0]));
        // Between half and all of the base.
        let half = base.checked_div(2).unwrap_or_default();
        let spread = half
            .saturating_mul(jitter)
            .checked_div(255)
            .unwrap_or_default();
        Some(half.saturating_add(spread))
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// A watch of `api` with its own [`WatchBackoff`]; `managedFields` are dropped (nothing reads
/// them, and they are a large part of every object); failures are logged and retried, never
/// passed on, so the stream only ever yields events.
pub fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    retried(watcher(api, config), kind)
}

/// A watch stream with managedFields dropped, its own backoff, and failures logged.
fn retried<K: Resource + Send + 'static>(
    stream: impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
    kind: String,
) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static {
    stream
        .modify(|o: &mut K| o.meta_mut().managed_fields = None)
        .backoff(WatchBackoff::default())
        .filter_map(move |event| {
            let kind = kind.clone();
            async move {
                match event {
                    Ok(event) => Some(Ok(event)),
                    Err(e) => {
                        crate::metrics::METRICS
                            .watch_errors
                            .get_or_create(&crate::metrics::kind(&kind))
                            .inc();
                        tracing::warn!(%kind, %e, "watch failed; retrying");
                        None
                    }
                }
            }
        })
}

fn uid<K: Resource>(obj: &K) -> String {
    obj.meta().uid.clone().unwrap_or_default()
}

/// The last fingerprint seen of each object.
#[derive(Default)]
struct Seen(HashMap<String, u64>);

impl Seen {
    /// Whether `obj` differs from what was last seen of it in what `key` covers.
    fn differs<K: Resource, V: Hash>(&mut self, obj: &K, key: impl Fn(&K) -> V) -> bool {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key(obj).hash(&mut h);
        let fingerprint = h.finish();
        self.0.insert(uid(obj), fingerprint) != Some(fingerprint)
    }
}

/// The objects of the shared cache's `stream` whose `key` differs from the last one seen for
/// the same object: a relist that brings nothing new triggers nothing, and writes that do not
/// change what `key` covers (our own status writes) trigger nothing. What is remembered of
/// objects no longer in `store` is forgotten as it grows.
pub fn changed<K, V>(
    stream: impl Stream<Item = Arc<K>> + Send + 'static,
    store: Store<K>,
    key: impl Fn(&K) -> V + Send + 'static,
) -> impl Stream<Item = Arc<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    V: Hash,
{
    let mut seen = Seen::default();
    stream.filter(move |obj| {
        let new = seen.differs(obj.as_ref(), &key);
        if seen.0.len() > store.len().saturating_mul(2).saturating_add(1024) {
            let alive: std::collections::HashSet<String> =
                store.state().iter().map(|o| uid(o.as_ref())).collect();
            seen.0.retain(|uid, _| alive.contains(uid));
        }
        std::future::ready(new)
    })
}

/// Reconcile triggers from the watch `events` of objects that are not cached (the Deployments
/// and Jobs the operator owns, watched as metadata only): an object whose resourceVersion is
/// what was last seen (a relist) triggers nothing; a deleted one does (to be recreated), also
/// when it went while the watch was down and the relist no longer brings it.
pub fn triggers<K>(
    events: impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Default + Send + 'static,
{
    let mut seen = Seen::default();
    // Who owns each object seen (all a trigger needs of an object that is gone).
    let mut owners: HashMap<String, K> = HashMap::new();
    // Objects seen since the last relist began: what a relist does not bring again is gone.
    let mut relisted: Option<std::collections::HashSet<String>> = None;
    events.flat_map(move |event| {
        let out: Vec<K> = match event {
            Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => {
                if let Some(r) = relisted.as_mut() {
                    r.insert(uid(&obj));
                }
                owners.insert(uid(&obj), owner_only(&obj));
                if seen.differs(&obj, version) {
                    vec![obj]
                } else {
                    vec![]
                }
            }
            Ok(watcher::Event::Delete(obj)) => {
                seen.0.remove(&uid(&obj));
                owners.remove(&uid(&obj));
                vec![obj]
            }
            Ok(watcher::Event::Init) => {
                relisted = Some(Default::default());
                vec![]
            }
            Ok(watcher::Event::InitDone) => match relisted.take() {
                Some(alive) => {
                    seen.0.retain(|uid, _| alive.contains(uid));
                    let gone: Vec<String> = owners
                        .keys()
                        .filter(|uid| !alive.contains(*uid))
                        .cloned()
                        .collect();
                    gone.iter().filter_map(|uid| owners.remove(uid)).collect()
                }
                None => vec![],
            },
            Err(_) => vec![],
        };
        futures::stream::iter(out.into_iter().map(Ok))
    })
}

/// A copy of `obj` with only what maps it to its owner.
fn owner_only<K: Resource + Default>(obj: &K) -> K {
    let mut k = K::default();
    let (from, to) = (obj.meta(), k.meta_mut());
    to.name = from.name.clone();
    to.namespace = from.namespace.clone();
    to.uid = from.uid.clone();
    to.owner_references = from.owner_references.clone();
    k
}

/// What of an object its own reconcile depends on besides its status: the spec (generation),
/// labels, annotations (requester and break-glass stamps) and deletion.
pub fn reconcile_key<K: Resource>(obj: &K) -> impl Hash + use<K> {
    let meta = obj.meta();
    (
        meta.generation,
        meta.labels.clone(),
        meta.annotations.clone(),
        meta.deletion_timestamp.as_ref().map(|t| t.0.to_string()),
    )
}

/// The object's resourceVersion (a relist that brings no change triggers nothing).
pub fn version<K: Resource>(obj: &K) -> Option<String> {
    obj.meta().resource_version.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::ResourceExt;

    #[test]
    fn watch_backoff_doubles_to_its_ceiling_and_resets() {
        let mut b = WatchBackoff::default();
        let pauses: Vec<Duration> = (0..8).map(|_| b.next().unwrap()).collect();
        let bases = [250u64, 500, 1000, 2000, 4000, 4000, 4000, 4000];
        for (pause, base) in pauses.iter().zip(bases) {
            let base = Duration::from_millis(base);
            assert!(
                *pause >= base / 2 && *pause <= base,
                "{pause:?} not in [{:?}, {base:?}]",
                base / 2
            );
        }
        b.reset();
        assert!(b.next().unwrap() <= WatchBackoff::FIRST);
    }

    #[tokio::test]
    async fn triggers_skip_what_a_relist_brings_again_and_name_what_it_does_not() {
        use k8s_openapi::api::core::v1::ConfigMap;
        use kube::runtime::watcher::Event;
        let cm = |uid: &str, rv: &str| {
            let mut c = ConfigMap::default();
            c.metadata.name = Some(format!("cm-{uid}"));
            c.metadata.uid = Some(uid.into());
            c.metadata.resource_version = Some(rv.into());
            c
        };
        let events = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(cm("a", "1"))),
            Ok(Event::InitApply(cm("b", "1"))),
            Ok(Event::InitDone),
            Ok(Event::Apply(cm("a", "2"))),
            // The watch broke; the relist brings a unchanged, and b no more.
            Ok(Event::Init),
            Ok(Event::InitApply(cm("a", "2"))),
            Ok(Event::InitDone),
        ];
        let out: Vec<(String, Option<String>)> = triggers(futures::stream::iter(events))
            .map(|c| {
                let c = c.unwrap();
                (c.uid().unwrap(), c.resource_version())
            })
            .collect()
            .await;
        let want = vec![
            ("a".to_owned(), Some("1".to_owned())),
            ("b".to_owned(), Some("1".to_owned())),
            ("a".to_owned(), Some("2".to_owned())),
            // b is gone: its owner is told (with only what maps it to its owner).
            ("b".to_owned(), None),
        ];
        assert_eq!(out, want);
    }

    #[tokio::test]
    async fn only_changes_of_the_key_pass() {
        use k8s_openapi::api::core::v1::ConfigMap;
        let cm = |uid: &str, rv: &str| {
            let mut c = ConfigMap::default();
            c.metadata.uid = Some(uid.into());
            c.metadata.resource_version = Some(rv.into());
            Arc::new(c)
        };
        let input = vec![
            cm("a", "1"),
            cm("b", "1"),
            cm("a", "1"),
            cm("a", "2"),
            cm("b", "1"),
        ];
        let (store, _writer) = kube::runtime::reflector::store::<ConfigMap>();
        let passed: Vec<(String, String)> = changed(futures::stream::iter(input), store, version)
            .map(|c| (c.uid().unwrap(), c.resource_version().unwrap()))
            .collect()
            .await;
        let want = [("a", "1"), ("b", "1"), ("a", "2")].map(|(u, r)| (u.into(), r.into()));
        assert_eq!(passed, want);
    }
}
