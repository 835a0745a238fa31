//! Keeps dvo's PolicyReports current (the leader's task): every few seconds, the report of each
//! namespace with AgentDeployments and the cluster report of the policies are built from the
//! caches (`policy::report`) and written with Server-Side Apply only when they changed; the
//! report of a namespace left without AgentDeployments is deleted. Idle, it writes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::FutureExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use sha2::{Digest, Sha256};

use crate::crd::{AgentDeployment, DeploymentPolicy};
use crate::policy::report::{self, MANAGED_BY, NAME};

/// How often the reports are brought up to date.
pub const EVERY: Duration = Duration::from_secs(10);
/// The key of the cluster report among the namespaces written.
const CLUSTER: &str = "";

fn resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("wgpolicyk8s.io", "v1alpha2", kind))
}

fn digest(report: &serde_json::Value) -> Vec<u8> {
    Sha256::digest(crate::json::to_string(report).as_bytes()).to_vec()
}

/// What to do, given what was last `written` (namespace → digest; `""` is the cluster report)
/// and the reports `wanted` now: the reports to write (index into `wanted`, with their digest),
/// and the namespaces whose report is to go. Nothing, when nothing changed.
fn plan(
    written: &BTreeMap<String, Vec<u8>>,
    wanted: &[(String, serde_json::Value)],
) -> (Vec<(usize, Vec<u8>)>, Vec<String>) {
    let write = wanted
        .iter()
        .enumerate()
        .filter_map(|(i, (ns, body))| {
            let d = digest(body);
            (written.get(ns) != Some(&d)).then_some((i, d))
        })
        .collect();
    let gone = written
        .keys()
        .filter(|ns| !ns.is_empty() && !wanted.iter().any(|(w, _)| w == *ns))
        .cloned()
        .collect();
    (write, gone)
}

/// Whose a report named `dvo` is, as the cluster holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holder {
    /// None there.
    Missing,
    /// Ours (our label).
    Ours,
    /// Someone else's: never changed or deleted.
    Theirs,
}

fn holder(meta: Option<&kube::core::ObjectMeta>) -> Holder {
    match meta {
        None => Holder::Missing,
        Some(m) => {
            let ours = m
                .labels
                .as_ref()
                .and_then(|l| l.get(MANAGED_BY.0))
                .is_some_and(|v| v == MANAGED_BY.1);
            if ours { Holder::Ours } else { Holder::Theirs }
        }
    }
}

/// Runs until `stop`.
pub async fn run(
    client: Client,
    agents: Store<AgentDeployment>,
    policies: Store<DeploymentPolicy>,
    stop: impl Future<Output = ()>,
) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let (namespaced, cluster) = (resource("PolicyReport"), resource("ClusterPolicyReport"));
    let apply = PatchParams::apply(crate::MANAGER).force();
    // What the cluster holds: every PolicyReport named dvo (metadata only), from a watch.
    let writer = reflector::store::Writer::<kube::core::PartialObjectMeta<DynamicObject>>::new(
        namespaced.clone(),
    );
    let held = writer.as_reader();
    let watch = reflector::reflector(
        writer,
        watcher::watcher(
            Api::<kube::core::PartialObjectMeta<DynamicObject>>::all_with(
                client.clone(),
                &namespaced,
            ),
            watcher::Config::default().fields(&format!("metadata.name={NAME}")),
        )
        .default_backoff(),
    );
    let watching = tokio::spawn(watch.for_each(|_| async {}));
    // What each report was last written as.
    let mut written: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut last_problem = String::new();
    let mut every = tokio::time::interval(EVERY);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = every.tick() => {}
        }
        let mut problems = vec![];
        if held.wait_until_ready().now_or_never().is_none() {
            continue; // not listed yet (or the report kinds are not installed)
        }
        let in_cluster = |ns: &str| -> Holder {
            if ns == CLUSTER {
                return Holder::Missing; // looked up below
            }
            let key = reflector::ObjectRef::new_with(NAME, namespaced.clone()).within(ns);
            holder(held.get(&key).as_ref().map(|m| &m.metadata))
        };
        let cluster_holder = match Api::<DynamicObject>::all_with(client.clone(), &cluster)
            .get_metadata_opt(NAME)
            .await
        {
            Ok(m) => holder(m.as_ref().map(|m| &m.metadata)),
            Err(e) => {
                problems.push(format!("reading the ClusterPolicyReport: {e}"));
                Holder::Theirs
            }
        };
        let whose = |ns: &str| {
            if ns == CLUSTER {
                cluster_holder
            } else {
                in_cluster(ns)
            }
        };
        let mut by_namespace: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for ad in agents.state() {
            by_namespace
                .entry(ad.namespace().unwrap_or_default())
                .or_default()
                .push(ad);
        }
        let mut wanted: Vec<(String, serde_json::Value)> = by_namespace
            .iter()
            .map(|(ns, ads)| {
                (
                    ns.clone(),
                    report::namespace_report(ns, ads.iter().map(|a| a.as_ref())),
                )
            })
            .collect();
        let all_policies = policies.state();
        wanted.push((
            CLUSTER.to_owned(),
            report::cluster_report(all_policies.iter().map(|p| p.as_ref())),
        ));
        // A report that is gone (deleted, or its kind reinstalled) is written again; one of
        // ours found in the cluster that this leader did not write is checked against.
        written.retain(|ns, _| whose(ns) == Holder::Ours);
        for (ns, _) in &wanted {
            if whose(ns) == Holder::Ours {
                written.entry(ns.clone()).or_default();
            }
        }
        let (write, _) = plan(&written, &wanted);
        for (i, d) in write {
            let Some((ns, body)) = wanted.get(i) else {
                continue;
            };
            if whose(ns) == Holder::Theirs {
                problems.push(format!(
                    "a report named {NAME} in {ns:?} is not dvo's: left as it is"
                ));
                continue;
            }
            let api = if ns.is_empty() {
                Api::<DynamicObject>::all_with(client.clone(), &cluster)
            } else {
                Api::<DynamicObject>::namespaced_with(client.clone(), ns, &namespaced)
            };
            let outcome = api.patch(NAME, &apply, &Patch::Apply(body)).await;
            crate::metrics::METRICS
                .policy_report_writes
                .get_or_create(&crate::metrics::value(
                    if outcome.is_ok() { "ok" } else { "error" }.to_owned(),
                ))
                .inc();
            match outcome {
                Ok(_) => {
                    written.insert(ns.clone(), d);
                }
                Err(e) => problems.push(format!("writing the PolicyReport of {ns:?}: {e}")),
            }
        }
        // Ours, in namespaces without AgentDeployments any more: deleted.
        let gone: Vec<String> = held
            .state()
            .iter()
            .filter(|m| holder(Some(&m.metadata)) == Holder::Ours)
            .filter_map(|m| m.metadata.namespace.clone())
            .filter(|ns| !by_namespace.contains_key(ns))
            .collect();
        for ns in gone {
            let api = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &namespaced);
            match api.delete(NAME, &DeleteParams::default()).await {
                Ok(_) => {
                    written.remove(&ns);
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    written.remove(&ns);
                }
                Err(e) => problems.push(format!("deleting the PolicyReport of {ns}: {e}")),
            }
        }
        // Said once per new problem, not every round.
        let problem = problems.join("; ");
        if problem != last_problem && !problem.is_empty() {
            tracing::warn!(%problem, "policy reports not up to date; trying again");
        }
        last_problem = problem;
    }
    watching.abort();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_what_changed_is_written_and_what_is_gone_deleted() {
        let wanted = vec![
            ("a".to_owned(), json!({"results": [1]})),
            ("b".to_owned(), json!({"results": [2]})),
            (CLUSTER.to_owned(), json!({"results": []})),
        ];
        let mut written: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        written.insert("old".into(), vec![]);
        let (write, gone) = plan(&written, &wanted);
        assert_eq!(write.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(gone, ["old"]);
        // Once written, an unchanged cluster needs nothing.
        for (i, d) in write {
            written.insert(wanted[i].0.clone(), d);
        }
        written.remove("old");
        assert_eq!(plan(&written, &wanted), (vec![], vec![]));
        // One namespace changes: only it is written.
        let mut changed = wanted.clone();
        changed[1].1 = json!({"results": [3]});
        let (write, gone) = plan(&written, &changed);
        assert_eq!(write.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1]);
        assert!(gone.is_empty());
        // A report found but never written by this leader is written again.
        written.insert("a".into(), vec![]);
        assert_eq!(plan(&written, &wanted).0.len(), 1);
    }
}
