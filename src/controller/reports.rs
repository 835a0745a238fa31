//! Keeps dvo's PolicyReports current (the leader's task): every few seconds, the report of each
//! namespace with AgentDeployments and the cluster report of the policies are built from the
//! caches (`policy::report`) and written with Server-Side Apply only when they changed; the
//! report of a namespace left without AgentDeployments is deleted. Idle, it writes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
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

/// Runs until `stop`.
pub async fn run(
    client: Client,
    agents: Store<AgentDeployment>,
    policies: Store<DeploymentPolicy>,
    stop: impl Future<Output = ()>,
) {
    let (namespaced, cluster) = (resource("PolicyReport"), resource("ClusterPolicyReport"));
    let apply = PatchParams::apply(crate::MANAGER).force();
    // What each report was last written as (an empty digest: found, not written by us yet).
    let mut written: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut listed = false;
    let mut last_problem = String::new();
    let mut every = tokio::time::interval(EVERY);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = every.tick() => {}
        }
        let mut problems = vec![];
        if !listed {
            let ours = ListParams::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
            match Api::<DynamicObject>::all_with(client.clone(), &namespaced)
                .list_metadata(&ours)
                .await
            {
                Ok(found) => {
                    for r in found.items {
                        written.insert(r.namespace().unwrap_or_default(), vec![]);
                    }
                    listed = true;
                }
                Err(e) => problems.push(format!("listing dvo's PolicyReports: {e}")),
            }
        }
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
        let (write, gone) = plan(&written, &wanted);
        for (i, d) in write {
            let Some((ns, body)) = wanted.get(i) else {
                continue;
            };
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
        // Said once per new problem, not every few seconds.
        let problem = problems.join("; ");
        if problem != last_problem && !problem.is_empty() {
            tracing::warn!(%problem, "policy reports not up to date; trying again");
        }
        last_problem = problem;
    }
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
