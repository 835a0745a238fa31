//! Recovery from an API server outage, on a control plane of its own (the outage must not
//! disturb the other tests): the operator's watches come back on their own short backoff, so
//! work resumes within seconds of the API server answering again, and nothing that changed
//! meanwhile is missed.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::support::{ControlPlane, OPERATOR_NS};
use dvo_operator::crd::agent_deployment::Phase;
use dvo_operator::crd::{AgentDeployment, DeploymentPolicy};

/// How long the API server is down.
const OUTAGE: Duration = Duration::from_secs(30);
/// How soon after the API server answers again work must have resumed (the goal is 10 s; the
/// margin is for a loaded two-core machine).
const RESUMED_WITHIN: Duration = Duration::from_secs(20);

async fn retry<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    deadline: Duration,
    mut f: impl FnMut() -> F,
) -> T {
    let until = Instant::now() + deadline;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < until => {
                tracing::debug!(%e, "{what}: retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

fn adep(name: &str, replicas: i32) -> AgentDeployment {
    serde_json::from_value(json!({
        "apiVersion": "dvo.caat.io/v1alpha1", "kind": "AgentDeployment", "metadata": {"name": name},
        "spec": {"agent": "GHA", "platform": "langchain", "environment": "development", "replicas": replicas,
                 "template": {"spec": {"containers": [{"name": "agent", "image": "gha:1"}]}}},
    }))
    .unwrap()
}

/// Polls until `name` is Blocked at generation `generation` or later.
async fn decided(client: &Client, ns: &str, name: &str, generation: i64, within: Duration) {
    let api = Api::<AgentDeployment>::namespaced(client.clone(), ns);
    let until = Instant::now() + within;
    loop {
        let st = api
            .get_opt(name)
            .await
            .ok()
            .flatten()
            .and_then(|a| a.status);
        if st.as_ref().is_some_and(|s| {
            s.phase == Some(Phase::Blocked) && s.observed_generation >= Some(generation)
        }) {
            return;
        }
        assert!(
            Instant::now() < until,
            "{ns}/{name} not decided at generation {generation} within {within:?}: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn after_an_api_server_outage_work_resumes_within_seconds_and_nothing_is_missed() {
    let name = format!("dvo-outage-{}", std::process::id());
    let cp = tokio::task::spawn_blocking(move || ControlPlane::start(&name))
        .await
        .unwrap();
    cp.install_crds().await;
    let client = cp.client("admin").await;
    let ns = "outage";
    for name in [OPERATOR_NS, ns] {
        let mut n = Namespace::default();
        n.metadata.name = Some(name.to_owned());
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &n)
            .await
            .unwrap();
    }
    // Every AgentDeployment here is refused: each decision is a status write to look for.
    let policy: DeploymentPolicy = serde_json::from_value(json!({
        "apiVersion": "dvo.caat.io/v1alpha1", "kind": "DeploymentPolicy", "metadata": {"name": "hold-outage"},
        "spec": {"action": "Deny", "message": "held for the outage test", "scope": {"namespaces": [ns]}},
    }))
    .unwrap();
    Api::<DeploymentPolicy>::all(client.clone())
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let settings = dvo_operator::controller::Settings {
        namespace: OPERATOR_NS.to_owned(),
        audit_retention: None,
        identity: "outage-test".to_owned(),
        audit_sinks: vec![],
        notifications: Default::default(),
        policy_reports: false,
    };
    let operator = tokio::spawn(dvo_operator::controller::run(
        client.clone(),
        settings,
        Arc::new(AtomicBool::new(false)),
        async move {
            let mut stopped = stopped;
            let _ = stopped.wait_for(|s| *s).await;
        },
    ));
    let ads = Api::<AgentDeployment>::namespaced(client.clone(), ns);
    ads.create(&PostParams::default(), &adep("before", 1))
        .await
        .unwrap();
    decided(&client, ns, "before", 1, Duration::from_secs(60)).await;

    cp.kill_apiserver();
    tokio::time::sleep(OUTAGE).await; // the outage itself, not a synchronisation
    cp.start_apiserver();
    retry(
        "the API server answers again",
        Duration::from_secs(120),
        || client.apiserver_version(),
    )
    .await;
    let answered = Instant::now();
    // A new object, and a change to one the operator knew before the outage.
    let (pp, after) = (PostParams::default(), adep("after", 1));
    retry("create after the outage", Duration::from_secs(30), || {
        ads.create(&pp, &after)
    })
    .await;
    let (params, patch) = (
        PatchParams::default(),
        Patch::Merge(json!({"spec": {"replicas": 2}})),
    );
    let changed = retry("change after the outage", Duration::from_secs(30), || {
        ads.patch("before", &params, &patch)
    })
    .await;
    let generation = changed.metadata.generation.unwrap();
    decided(&client, ns, "after", 1, RESUMED_WITHIN).await;
    decided(&client, ns, "before", generation, RESUMED_WITHIN).await;
    eprintln!(
        "outage test: work resumed {:?} after the API server answered again",
        answered.elapsed()
    );

    stop.send(true).unwrap();
    operator.await.unwrap().unwrap();
}
