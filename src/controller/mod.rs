//! The operator's controllers: thin shells that gather inputs from the API server, call the pure
//! core (`policy::decide`, `approval::evaluate`, `policy::validate`) and write the results with
//! Server-Side Apply under the field manager `dvo-operator`.

pub mod agent_deployment;
pub mod approval_request;
pub mod conditions;
pub mod deployment_policy;
pub mod environment;
pub mod events;
pub mod leader;
pub mod record;
pub mod reports;
pub mod status;
pub mod stores;
pub mod workload;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};

use crate::crd::{AgentDeployment, ApprovalRequest, Capability, DeploymentPolicy};

pub use crate::MANAGER;
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
    /// Notification channels, fed by the leader.
    pub notifications: crate::notify::Config,
    /// Whether the leader keeps dvo's PolicyReports current (`wgpolicyk8s.io` installed).
    pub policy_reports: bool,
}

/// Shared state of the reconcilers.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Settings.
    pub settings: Settings,
    /// Publishes Events.
    pub recorder: events::Events,
    /// HMAC key of requester stamps.
    pub stamp_key: Vec<u8>,
    /// The audit log: every decision is recorded here before it is acted on.
    pub audit: crate::audit::store::AuditLog,
    /// The compiled policies, capabilities and role mapping (one immutable snapshot, swapped
    /// when they change).
    pub environment: tokio::sync::watch::Receiver<environment::Environment>,
    /// Every AgentDeployment (staging evidence, the ApprovalRequest controller).
    pub agents: Store<AgentDeployment>,
    /// Every ApprovalRequest.
    pub requests: Store<ApprovalRequest>,
    /// What the API server held at the last check that rules were current.
    pub confirmed: tokio::sync::Mutex<Option<Held>>,
}

/// How many reconciles of one kind run at once: enough to keep the API server busy, few enough
/// that the webhook (same process, fail closed) always gets its share of the machine.
pub const RECONCILE_CONCURRENCY: u16 = 32;
/// How many changes a shared cache holds for a subscriber that is behind.
const SUBSCRIBER_BUFFER: usize = 1024;

/// Background tasks that stop when this is dropped.
struct Drivers(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Drivers {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The AgentDeployments whose staging evidence a change of `changed` may alter: the others of
/// its agent, when it is in a staging-tier environment (only those count as evidence).
fn evidence_for(
    agents: &Store<AgentDeployment>,
    env: &environment::Environment,
    changed: &AgentDeployment,
) -> Vec<ObjectRef<AgentDeployment>> {
    let Ok(rules) = &env.rules else {
        return vec![];
    };
    if rules.mapping().tier(&changed.spec.environment) != crate::identity::Tier::Staging {
        return vec![];
    }
    agents
        .state_filter(|o| {
            o.spec.agent == changed.spec.agent && o.metadata.uid != changed.metadata.uid
        })
        .iter()
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

/// Runs a reconcile, measuring it.
async fn timed(
    fut: impl std::future::Future<Output = Result<Action, Error>>,
) -> Result<Action, Error> {
    let m = &crate::metrics::METRICS;
    m.reconciles_running.inc();
    let started = std::time::Instant::now();
    let result = fut.await;
    m.reconcile_seconds.observe(started.elapsed().as_secs_f64());
    m.reconciles_running.dec();
    result
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
    /// The rules were about to let something out but the caches they were built from are
    /// behind the API server: the reconcile runs again once they have caught up.
    #[error(
        "the policies changed a moment ago and the operator has not seen the change yet; it decides again once it has"
    )]
    Stale,
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
    /// The evaluation environment now: compiled rules (or why nothing can be decided) and
    /// what they were built from.
    pub fn environment(&self) -> environment::Environment {
        self.environment.borrow().clone()
    }

    /// Fails with [`Error::Stale`] unless `env` holds what the API server held, at some moment
    /// after `observed` (when the reconcile read its object), of everything the decision of
    /// an AgentDeployment with `spec` in `namespace` reads ([`environment::currency`]). One
    /// read of what the API server holds serves every reconcile that read its object before
    /// it began; when policies differ, all are read again once, with their scopes.
    pub async fn confirm_current(
        &self,
        env: &environment::Environment,
        observed: std::time::Instant,
        namespace: &str,
        spec: &crate::crd::AgentDeploymentSpec,
    ) -> Result<(), Error> {
        let mut last = self.confirmed.lock().await;
        let namespace_of_operator = &self.settings.namespace;
        let held = match last.take() {
            Some(held) if held.began >= observed => last.insert(held),
            _ => {
                let began = std::time::Instant::now();
                let (versions, scopes) =
                    environment::read_now(&self.client, namespace_of_operator, false).await?;
                last.insert(Held {
                    began,
                    versions,
                    scopes,
                })
            }
        };
        let currency =
            |held: &Held| environment::currency(env, &held.versions, &held.scopes, namespace, spec);
        if let environment::Currency::Unknown = currency(held) {
            // Some policy differs: read them all again, each with its scope at the version
            // listed (one LIST: no read of a scope can fall behind its version).
            let (versions, scopes) =
                environment::read_now(&self.client, namespace_of_operator, true).await?;
            held.versions = versions;
            held.scopes = scopes;
        }
        match currency(held) {
            environment::Currency::Current => Ok(()),
            environment::Currency::Stale | environment::Currency::Unknown => Err(Error::Stale),
        }
    }
}

/// What the API server held at one moment, as far as the currency of rules goes.
pub struct Held {
    /// When it was asked (before the reads).
    began: std::time::Instant,
    /// The resourceVersions it held.
    versions: environment::Versions,
    /// The scope of every policy at the version listed, once some reconcile's rules differed
    /// from what was listed (empty before).
    scopes: environment::Scopes,
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
        Error::Stale => "stale",
    };
    crate::metrics::METRICS
        .reconcile_errors
        .get_or_create(&crate::metrics::ErrorLabels {
            kind: K::kind(&()).into_owned(),
            error: class.to_owned(),
        })
        .inc();
    if let Error::Stale = error {
        tracing::info!(kind = %K::kind(&()), name = %obj.meta().name.as_deref().unwrap_or(""), namespace = ?obj.meta().namespace, %error, "deciding again shortly");
        return Action::requeue(Duration::from_secs(1));
    }
    tracing::warn!(kind = %K::kind(&()), name = %obj.meta().name.as_deref().unwrap_or(""), namespace = ?obj.meta().namespace, %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

fn counted(kind: &str) {
    crate::metrics::METRICS
        .reconciles
        .get_or_create(&crate::metrics::kind(kind))
        .inc();
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
    // The caches every reconcile reads (no LIST inside a reconcile), each with its own watch
    // and backoff. Their drivers run as tasks for as long as the controllers do.
    let (sources, changes) = environment::Sources::watch(&client, &settings.namespace);
    let policy_store = sources.policies.clone();
    let (agents, ad_writer) = reflector::store_shared(SUBSCRIBER_BUFFER);
    let (requests, apr_writer) = reflector::store_shared(SUBSCRIBER_BUFFER);
    let no_subscriber = || anyhow::anyhow!("a shared cache without subscribers (a bug)");
    let ad_own = ad_writer.subscribe().ok_or_else(no_subscriber)?;
    let ad_evidence = ad_writer.subscribe().ok_or_else(no_subscriber)?;
    let ad_requests = ad_writer.subscribe().ok_or_else(no_subscriber)?;
    let apr_own = apr_writer.subscribe().ok_or_else(no_subscriber)?;
    let apr_owner = apr_writer.subscribe().ok_or_else(no_subscriber)?;
    let (env_tx, env_rx) = tokio::sync::watch::channel(environment::Environment::unloaded());
    // Every channel is checked (its secrets read) before anything runs: one that cannot
    // deliver is a start-up error, not a silence.
    let notifiers = (settings.notifications.channels.iter())
        .map(|channel| {
            let env = env_rx.clone();
            let mapping: crate::notify::send::Mapping = std::sync::Arc::new(move || {
                let rules = env.borrow().rules.clone()?;
                Ok(rules.mapping().clone())
            });
            crate::notify::send::Notifier::new(channel.clone(), mapping, &|var| {
                std::env::var(var).ok()
            })
        })
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| anyhow::anyhow!("notifications: {e}"))?;
    let (requeue_tx, requeue_rx) = futures::channel::mpsc::unbounded();
    let _drivers = Drivers(vec![
        tokio::spawn(
            reflector::reflector(
                ad_writer,
                // Kept slim: the detail of each decision is in the API server, not in memory.
                stores::watch(
                    Api::<AgentDeployment>::all(client.clone()),
                    watcher::Config::default(),
                )
                .modify(agent_deployment::slim),
            )
            .for_each(|_| async {}),
        ),
        tokio::spawn(
            reflector::reflector(
                apr_writer,
                stores::watch(
                    Api::<ApprovalRequest>::all(client.clone()),
                    watcher::Config::default(),
                ),
            )
            .for_each(|_| async {}),
        ),
        tokio::spawn(environment::maintain(
            sources,
            changes,
            agents.clone(),
            env_tx,
            requeue_tx,
        )),
    ]);
    // Decisions are never made on a partial view: the controllers start once every cache holds
    // its first full list and the environment is built from it.
    let synced = async {
        let mut env = env_rx.clone();
        agents.wait_until_ready().await.is_ok()
            && requests.wait_until_ready().await.is_ok()
            && env.changed().await.is_ok()
    };
    tokio::select! {
        ok = synced => if !ok { anyhow::bail!("the caches stopped before they were synced") },
        () = stop.clone() => return Ok(()),
    }

    let reporter = Reporter {
        controller: MANAGER.to_owned(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context {
        recorder: events::Events::new(client.clone(), reporter),
        client: client.clone(),
        settings: settings.clone(),
        stamp_key: keys.stamp,
        audit: audit.clone(),
        environment: env_rx.clone(),
        agents: agents.clone(),
        requests: requests.clone(),
        confirmed: tokio::sync::Mutex::new(None),
    });
    let config = kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY);
    let owned = |wc: watcher::Config| wc.labels(workload::OWNER_LABEL);
    let evidence = {
        let (agents, env) = (agents.clone(), env_rx.clone());
        move |changed: Arc<AgentDeployment>| evidence_for(&agents, &env.borrow(), &changed)
    };
    let ads = Controller::for_shared_stream(
        stores::changed(ad_own, agents.clone(), stores::reconcile_key),
        agents.clone(),
    )
    .with_config(config.clone())
    .trigger_backoff(stores::WatchBackoff::default())
    .owns_stream(stores::triggers(stores::watch(
        Api::<PartialObjectMeta<Deployment>>::all(client.clone()),
        owned(watcher::Config::default()),
    )))
    .owns_stream(stores::triggers(stores::watch(
        Api::<PartialObjectMeta<Job>>::all(client.clone()),
        owned(watcher::Config::default()),
    )))
    .owns_shared_stream(stores::changed(apr_owner, requests.clone(), stores::version))
    // Staging evidence: a change to a staging AgentDeployment can validate the others of its agent.
    .watches_shared_stream(
        stores::changed(ad_evidence, agents.clone(), stores::version),
        evidence,
    )
    // A change of policies, capabilities or role mapping: exactly those it may decide differently.
    .reconcile_on(requeue_rx)
    .graceful_shutdown_on(stop.clone())
    .run(
        |o, c| timed(unwind_safe(agent_deployment::reconcile(o, c))),
        error_policy,
        ctx.clone(),
    )
    .for_each(|r| async move {
        counted("AgentDeployment");
        if let Ok((obj, _)) = r {
            tracing::debug!(name = %obj.name, namespace = ?obj.namespace, "reconciled AgentDeployment");
        }
    });

    let pending = {
        let (aprs, stop) = (requests.clone(), stop.clone());
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
                    .set(i64::try_from(waiting).unwrap_or(i64::MAX));
            }
        }
    };
    let aprs = Controller::for_shared_stream(
        stores::changed(apr_own, requests.clone(), stores::version),
        requests.clone(),
    )
    .with_config(config.clone())
    .trigger_backoff(stores::WatchBackoff::default())
    .watches_shared_stream(
        stores::changed(ad_requests, agents.clone(), stores::reconcile_key),
        move |ad| {
            let ns = ad.metadata.namespace.clone();
            let name = ad.name_any();
            requests
                .state_filter(|a| a.metadata.namespace == ns && a.spec.deployment_ref.name == name)
                .iter()
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
    .with_config(config)
    .trigger_backoff(stores::WatchBackoff::default())
    .graceful_shutdown_on(stop.clone())
    .run(
        |o, c| unwind_safe(deployment_policy::reconcile(o, c)),
        error_policy,
        ctx.clone(),
    )
    .for_each(|_| async { counted("DeploymentPolicy") });

    tracing::info!(namespace = %settings.namespace, "controllers started");
    ready.store(true, Ordering::Relaxed);
    tracing::info!("caches synced; ready");
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
            |_: Option<&str>| {},
        )
    }));
    let reports = {
        let (client, agents, stop) = (client.clone(), agents.clone(), stop.clone());
        let enabled = settings.policy_reports;
        async move {
            if enabled {
                reports::run(client, agents, policy_store, stop).await;
            }
        }
    };
    let notifiers = futures::future::join_all(notifiers.into_iter().map(|notifier| {
        let cursor = crate::audit::sink::Outbox::cursor(&notifier);
        let told = events::delivery(ctx.recorder.clone(), &settings.namespace, cursor);
        crate::audit::sink::run(
            client.clone(),
            settings.namespace.clone(),
            notifier,
            stop.clone(),
            told,
        )
    }));
    let all = async {
        tokio::join!(
            ads, aprs, policies, retention, sinks, notifiers, pending, reports, holder
        )
        .8
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
