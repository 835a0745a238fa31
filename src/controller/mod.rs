//! The operator's controllers: thin shells that gather inputs from the API server, call the pure
//! core (`policy::decide`, `approval::evaluate`, `policy::validate`) and write the results with
//! Server-Side Apply under the field manager `dvo-operator`.

pub mod agent_deployment;
pub mod approval_request;
pub mod conditions;
pub mod deployment_policy;
pub mod leader;
pub mod record;
pub mod workload;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};

use crate::crd::{AgentDeployment, ApprovalRequest, Capability, DeploymentPolicy};
use crate::identity::RoleMapping;

/// The Server-Side Apply field manager of everything the operator writes.
pub const MANAGER: &str = "dvo-operator";
/// ConfigMap (in the operator's namespace) holding the role mapping under [`ROLE_MAPPING_KEY`].
pub const ROLE_MAPPING_CONFIGMAP: &str = "dvo-role-mapping";
/// Key of the role mapping YAML in its ConfigMap.
pub const ROLE_MAPPING_KEY: &str = "roles.yaml";
/// Secret (in the operator's namespace) holding the operator's keys.
pub const KEYS_SECRET: &str = "dvo-operator-keys";
/// Key of the requester-stamp HMAC key in [`KEYS_SECRET`].
pub const STAMP_KEY: &str = "requester-stamp-key";

/// What the operator needs to know about where it runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The operator's own namespace (role mapping, keys).
    pub namespace: String,
    /// How long audit segments are kept (None: forever).
    pub audit_retention: Option<chrono::Duration>,
    /// This replica's name in the leader Lease (the pod name in a cluster).
    pub identity: String,
    /// Audit sinks (name, target), fed by the leader.
    pub audit_sinks: Vec<(String, crate::audit::sink::Target)>,
}

/// Shared state of the reconcilers.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Settings.
    pub settings: Settings,
    /// Publishes Events.
    pub recorder: Recorder,
    /// HMAC key of requester stamps.
    pub stamp_key: Vec<u8>,
    /// The audit log: every decision is recorded here before it is acted on.
    pub audit: crate::audit::store::AuditLog,
}

/// Why a reconcile did not finish; it is retried.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a call.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Configuration the operator cannot use (the rollout waits until it is fixed).
    #[error("{0}")]
    Config(String),
    /// The audit log did not record the fact: the action waits (fail closed).
    #[error("audit: {0}")]
    Audit(String),
    /// The reconcile panicked (a bug, or input nothing bounded): that object waits and is
    /// retried; the controller and every other object go on.
    #[error("the reconcile panicked: {0}")]
    Panic(String),
}

/// Runs one reconcile, turning a panic into an error of that reconcile alone.
pub async fn unwind_safe(
    fut: impl std::future::Future<Output = Result<Action, Error>>,
) -> Result<Action, Error> {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            Err(Error::Panic(what))
        }
    }
}

impl Context {
    /// The role mapping (see [`role_mapping`]).
    pub async fn role_mapping(&self) -> Result<RoleMapping, Error> {
        role_mapping(&self.client, &self.settings.namespace).await
    }
}

/// The role mapping from its ConfigMap in `namespace`: empty when there is none, an error when
/// it is invalid (fail closed: nothing is decided on a mapping the operator cannot read). Read
/// on every use, so a change applies at once.
pub async fn role_mapping(client: &Client, namespace: &str) -> Result<RoleMapping, Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let Some(cm) = api.get_opt(ROLE_MAPPING_CONFIGMAP).await? else {
        return Ok(RoleMapping::default());
    };
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(ROLE_MAPPING_KEY))
        .cloned()
        .unwrap_or_default();
    RoleMapping::parse(&text).map_err(|e| {
        Error::Config(format!(
            "ConfigMap {namespace}/{ROLE_MAPPING_CONFIGMAP} key {ROLE_MAPPING_KEY} is not a valid role mapping: {e}"
        ))
    })
}

/// Fails with a clear message when a CRD of ours is not installed.
pub async fn check_crds(client: &Client) -> anyhow::Result<()> {
    let lp = ListParams::default().limit(1);
    let missing = |kind: &str, e: kube::Error| match e {
        kube::Error::Api(ae) if ae.code == 404 => anyhow::anyhow!(
            "the {kind} CRD (dvo.caat.io/v1alpha1) is not installed: run `kubectl apply --server-side -f crds/` (or install the Helm chart)"
        ),
        e => anyhow::anyhow!("cannot list {kind}s: {e}"),
    };
    Api::<AgentDeployment>::all(client.clone())
        .list_metadata(&lp)
        .await
        .map_err(|e| missing("AgentDeployment", e))?;
    Api::<ApprovalRequest>::all(client.clone())
        .list_metadata(&lp)
        .await
        .map_err(|e| missing("ApprovalRequest", e))?;
    Api::<DeploymentPolicy>::all(client.clone())
        .list_metadata(&lp)
        .await
        .map_err(|e| missing("DeploymentPolicy", e))?;
    Api::<Capability>::all(client.clone())
        .list_metadata(&lp)
        .await
        .map_err(|e| missing("Capability", e))?;
    Ok(())
}

/// How long reconciles in flight may take to finish once the controllers stop.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// Key of the audit checkpoint Ed25519 seed in [`KEYS_SECRET`].
pub const CHECKPOINT_KEY: &str = "audit-checkpoint-key";

/// The operator's keys.
pub struct Keys {
    /// HMAC key of requester stamps.
    pub stamp: Vec<u8>,
    /// Ed25519 seed of audit checkpoints.
    pub checkpoint: Vec<u8>,
}

/// The operator's keys from the keys Secret, created with random bytes when absent (idempotent:
/// a second replica that loses the race reads the winner's keys).
pub async fn ensure_keys(client: &Client, namespace: &str) -> anyhow::Result<Keys> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = match api.get_opt(KEYS_SECRET).await? {
        Some(secret) => secret,
        None => {
            let mut secret = Secret::default();
            secret.metadata.name = Some(KEYS_SECRET.to_owned());
            let mut data = std::collections::BTreeMap::new();
            for name in [STAMP_KEY, CHECKPOINT_KEY] {
                let mut key = vec![0u8; 32];
                getrandom::fill(&mut key)
                    .map_err(|e| anyhow::anyhow!("no randomness for the operator's keys: {e}"))?;
                data.insert(name.to_owned(), ByteString(key));
            }
            secret.data = Some(data);
            create_or_get(&api, KEYS_SECRET, &secret).await?
        }
    };
    let get = |name: &str| {
        let key = secret
            .data
            .as_ref()
            .and_then(|d| d.get(name))
            .map(|b| b.0.clone());
        key.filter(|k| k.len() == 32).ok_or_else(|| {
            anyhow::anyhow!("Secret {namespace}/{KEYS_SECRET} has no 32-byte {name}")
        })
    };
    Ok(Keys {
        stamp: get(STAMP_KEY)?,
        checkpoint: get(CHECKPOINT_KEY)?,
    })
}

/// The audit checkpoint seed from the keys Secret, without creating anything (for verifiers).
pub async fn checkpoint_seed(client: &Client, namespace: &str) -> anyhow::Result<Vec<u8>> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(KEYS_SECRET)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read Secret {namespace}/{KEYS_SECRET} for the checkpoint key (or give --public-key): {e}"))?;
    secret
        .data
        .and_then(|d| d.get(CHECKPOINT_KEY).map(|b| b.0.clone()))
        .ok_or_else(|| anyhow::anyhow!("Secret {namespace}/{KEYS_SECRET} has no {CHECKPOINT_KEY}"))
}

/// Creates `obj` as `name` (field manager `dvo-operator`), or returns the object that already
/// exists under that name: deterministic names make creation idempotent across restarts and
/// replicas.
pub async fn create_or_get<K>(api: &Api<K>, name: &str, obj: &K) -> Result<K, kube::Error>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = PostParams {
        dry_run: false,
        field_manager: Some(MANAGER.to_owned()),
    };
    match api.create(&params, obj).await {
        Ok(created) => Ok(created),
        Err(kube::Error::Api(e)) if e.code == 409 => api.get(name).await,
        Err(e) => Err(e),
    }
}

fn error_policy<K>(obj: Arc<K>, error: &Error, _: Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()>,
{
    let class = match error {
        Error::Kube(_) => "kube",
        Error::Config(_) => "config",
        Error::Audit(_) => "audit",
        Error::Panic(_) => "panic",
    };
    crate::metrics::METRICS
        .reconcile_errors
        .get_or_create(&crate::metrics::ErrorLabels {
            kind: K::kind(&()).into_owned(),
            error: class.to_owned(),
        })
        .inc();
    tracing::warn!(kind = %K::kind(&()), name = %obj.meta().name.as_deref().unwrap_or(""), namespace = ?obj.meta().namespace, %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

fn counted(kind: &str) {
    crate::metrics::METRICS
        .reconciles
        .get_or_create(&crate::metrics::kind(kind))
        .inc();
}

fn all_refs<K: Resource<DynamicType = ()> + Clone>(
    store: &kube::runtime::reflector::Store<K>,
) -> Vec<ObjectRef<K>> {
    store
        .state()
        .iter()
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

/// Runs the AgentDeployment, ApprovalRequest and DeploymentPolicy controllers until `shutdown`
/// completes; then lets reconciles in flight finish. `ready` is set once the CRDs and keys are
/// checked and the controllers' caches are synced.
pub async fn run(
    client: Client,
    settings: Settings,
    ready: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    check_crds(&client).await?;
    let shutdown = shutdown.shared();
    tracing::info!(identity = %settings.identity, "waiting for the leader Lease");
    tokio::select! {
        () = leader::acquire(&client, &settings.namespace, &settings.identity) => {}
        () = shutdown.clone() => return Ok(()),
    }
    tracing::info!(identity = %settings.identity, "leading");
    crate::metrics::METRICS.leader.set(1);
    // Controllers stop on shutdown, or when the lease is lost to another replica.
    let (lost_tx, mut lost_rx) = tokio::sync::watch::channel(false);
    let stop = {
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                () = shutdown => {}
                _ = lost_rx.wait_for(|lost| *lost) => {}
            }
        }
        .shared()
    };
    let holder = {
        let (client, ns, me, stop) = (
            client.clone(),
            settings.namespace.clone(),
            settings.identity.clone(),
            stop.clone(),
        );
        async move {
            let kept = leader::hold(&client, &ns, &me, stop).await;
            if !kept {
                tracing::error!("lost the leader Lease");
                let _ = lost_tx.send(true);
            }
            kept
        }
    };
    let keys = ensure_keys(&client, &settings.namespace).await?;
    let signing =
        crate::audit::SigningKey::from_seed(&keys.checkpoint).map_err(|e| anyhow::anyhow!(e))?;
    let audit = crate::audit::store::AuditLog::start(client.clone(), &settings.namespace, signing);
    let reporter = Reporter {
        controller: MANAGER.to_owned(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        settings: settings.clone(),
        stamp_key: keys.stamp,
        audit: audit.clone(),
    });

    let ads = Controller::new(
        Api::<AgentDeployment>::all(client.clone()),
        watcher::Config::default(),
    );
    let ad_store = ads.store();
    let (s1, s2, s3, s4) = (
        ad_store.clone(),
        ad_store.clone(),
        ad_store.clone(),
        ad_store.clone(),
    );
    let ads = ads
        .owns(Api::<Deployment>::all(client.clone()), watcher::Config::default().labels(workload::OWNER_LABEL))
        .owns(Api::<k8s_openapi::api::batch::v1::Job>::all(client.clone()), watcher::Config::default().labels(workload::OWNER_LABEL))
        .owns(Api::<ApprovalRequest>::all(client.clone()), watcher::Config::default())
        .watches(Api::<DeploymentPolicy>::all(client.clone()), watcher::Config::default(), move |_| all_refs(&s1))
        .watches(Api::<Capability>::all(client.clone()), watcher::Config::default(), move |_| all_refs(&s2))
        .watches(
            Api::<ConfigMap>::namespaced(client.clone(), &settings.namespace),
            watcher::Config::default().fields(&format!("metadata.name={ROLE_MAPPING_CONFIGMAP}")),
            move |_| all_refs(&s3),
        )
        // Staging evidence: a change to one AgentDeployment can validate others of the same agent.
        .watches(Api::<AgentDeployment>::all(client.clone()), watcher::Config::default(), move |changed| {
            s4.state()
                .iter()
                .filter(|o| o.spec.agent == changed.spec.agent && o.metadata.uid != changed.metadata.uid)
                .map(|o| ObjectRef::from_obj(o.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(stop.clone())
        .run(
            |o, c| unwind_safe(agent_deployment::reconcile(o, c)),
            error_policy,
            ctx.clone(),
        )
        .for_each(|r| async move {
            counted("AgentDeployment");
            if let Ok((obj, _)) = r {
                tracing::debug!(name = %obj.name, namespace = ?obj.namespace, "reconciled AgentDeployment");
            }
        });

    let aprs = Controller::new(
        Api::<ApprovalRequest>::all(client.clone()),
        watcher::Config::default(),
    );
    let apr_store = aprs.store();
    let pending = {
        let (aprs, stop) = (apr_store.clone(), stop.clone());
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(10));
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    () = &mut stop => return,
                    _ = every.tick() => {}
                }
                let waiting = aprs
                    .state()
                    .iter()
                    .filter(|a| {
                        matches!(
                            a.status.as_ref().and_then(|s| s.phase),
                            None | Some(crate::crd::approval_request::ApprovalPhase::Pending)
                        )
                    })
                    .count();
                crate::metrics::METRICS
                    .pending_approvals
                    .set(waiting as i64);
            }
        }
    };
    let synced = {
        let (ads, aprs) = (ad_store.clone(), apr_store.clone());
        async move { ads.wait_until_ready().await.is_ok() && aprs.wait_until_ready().await.is_ok() }
    };
    let aprs = aprs
        .watches(
            Api::<AgentDeployment>::all(client.clone()),
            watcher::Config::default(),
            move |ad| {
                apr_store
                    .state()
                    .iter()
                    .filter(|a| {
                        a.metadata.namespace == ad.metadata.namespace
                            && a.spec.deployment_ref.name == ad.name_any()
                    })
                    .map(|a| ObjectRef::from_obj(a.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(stop.clone())
        .run(
            |o, c| unwind_safe(approval_request::reconcile(o, c)),
            error_policy,
            ctx.clone(),
        )
        .for_each(|_| async { counted("ApprovalRequest") });

    let policies = Controller::new(
        Api::<DeploymentPolicy>::all(client.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(stop.clone())
    .run(
        |o, c| unwind_safe(deployment_policy::reconcile(o, c)),
        error_policy,
        ctx.clone(),
    )
    .for_each(|_| async { counted("DeploymentPolicy") });

    tracing::info!(namespace = %settings.namespace, "controllers started");
    let flag = ready.clone();
    let mark_ready = async move {
        // Ready once the caches hold every object: decisions are never made on a partial view.
        if synced.await {
            flag.store(true, Ordering::Relaxed);
            tracing::info!("caches synced; ready");
        }
    };
    let retention = {
        let (client, audit, ns) = (client.clone(), audit.clone(), settings.namespace.clone());
        let keep = settings.audit_retention;
        let stop = stop.clone();
        async move {
            let Some(keep) = keep else { return };
            let mut hourly = tokio::time::interval(Duration::from_secs(3600));
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    () = &mut stop => return,
                    _ = hourly.tick() => {}
                }
                match crate::audit::store::apply_retention(
                    &client,
                    &ns,
                    &audit,
                    chrono::Utc::now()
                        .checked_sub_signed(keep)
                        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC),
                )
                .await
                {
                    Ok(deleted) if !deleted.is_empty() => {
                        tracing::info!(?deleted, "audit retention deleted segments")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(%e, "audit retention failed; retrying in an hour"),
                }
            }
        }
    };
    let sinks = futures::future::join_all(settings.audit_sinks.iter().map(|(name, target)| {
        crate::audit::sink::run(
            client.clone(),
            settings.namespace.clone(),
            crate::audit::sink::Sink::new(name, target.clone()),
            stop.clone(),
        )
    }));
    let all = async {
        tokio::join!(
            ads, aprs, policies, mark_ready, retention, sinks, pending, holder
        )
        .7
    };
    // Reconciles in flight get a grace period once stopping starts; one stuck on the API server
    // must not keep the process past Kubernetes' termination grace (30 s by default).
    let grace = async {
        stop.clone().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let kept = tokio::select! {
        kept = all => kept,
        () = grace => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "controllers did not stop in time; exiting");
            true
        }
    };
    ready.store(false, Ordering::Relaxed);
    crate::metrics::METRICS.leader.set(0);
    if let Err(e) = audit.checkpoint().await {
        tracing::warn!(%e, "no audit checkpoint at shutdown");
    }
    if !kept {
        anyhow::bail!(
            "lost the leader Lease to another replica; exiting so that this one restarts as a follower"
        );
    }
    tracing::info!("controllers stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_reconcile_is_an_error_of_its_own() {
        let ok = unwind_safe(async { Ok(Action::await_change()) }).await;
        assert!(ok.is_ok());
        let failed = unwind_safe(async { Err(Error::Config("bad".into())) }).await;
        assert!(matches!(failed, Err(Error::Config(_))));
        let empty: Vec<Action> = vec![];
        let panicked = unwind_safe(async move {
            #[allow(clippy::indexing_slicing)]
            Ok(empty[0].clone())
        })
        .await;
        match panicked {
            Err(Error::Panic(what)) => assert!(what.contains("index out of bounds"), "{what}"),
            other => panic!("{other:?}"),
        }
    }
}
