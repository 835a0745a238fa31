//! The evaluation environment: every policy, capability and the role mapping compiled once into
//! one immutable [`Rules`] snapshot, rebuilt when one of them changes and swapped atomically.
//! Reconciles and the webhook read the snapshot; none compiles or LISTs anything. A change
//! requeues exactly the AgentDeployments it may decide differently ([`Rules::affected_by`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ListParams;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{reflector, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

use super::{ROLE_MAPPING_CONFIGMAP, ROLE_MAPPING_KEY, stores};
use crate::capability::CapabilitySet;
use crate::crd::AgentDeploymentSpec;
use crate::crd::deployment_policy::PolicyScope;
use crate::crd::{AgentDeployment, Capability, DeploymentPolicy};
use crate::identity::RoleMapping;
use crate::policy::{Affected, Rules, in_scope};

/// The compiled rules, or why the operator cannot decide anything (an invalid role mapping or
/// capability: fail closed, every rollout waits until it is fixed), with the versions of the
/// objects they were built from.
#[derive(Clone, Debug)]
pub struct Environment {
    /// The rules.
    pub rules: Result<Arc<Rules>, String>,
    /// What they were built from.
    pub versions: Arc<Versions>,
}

impl Environment {
    /// The environment before anything is loaded.
    pub fn unloaded() -> Environment {
        Environment {
            rules: Err("the policies are not loaded yet".to_owned()),
            versions: Arc::default(),
        }
    }
}

/// The resourceVersion of every object an environment was built from, by kind and name.
pub type Versions = BTreeMap<(&'static str, String), String>;

/// What the API server holds now (three reads): the resourceVersion of every policy and
/// capability and of the role mapping, as [`Versions`] name them, and, when `with_scopes`, the
/// scope of every policy as the same LIST has it (otherwise policies are listed as metadata
/// only and no scope is known). Policies are read first: versions read later that match the
/// rules exactly held since before, so all of it describes the moment policies were listed.
pub async fn read_now(
    client: &Client,
    namespace: &str,
    with_scopes: bool,
) -> Result<(Versions, Scopes), kube::Error> {
    let mut now = Versions::new();
    let mut scopes = Scopes::new();
    let lp = ListParams::default();
    let policies = Api::<DeploymentPolicy>::all(client.clone());
    if with_scopes {
        for p in policies.list(&lp).await? {
            let version = p.resource_version().unwrap_or_default();
            now.insert((POLICY, p.name_any()), version.clone());
            scopes.insert(p.name_any(), Some((version, p.spec.scope)));
        }
    } else {
        for p in policies.list_metadata(&lp).await? {
            now.insert(
                (POLICY, p.name_any()),
                p.resource_version().unwrap_or_default(),
            );
        }
    }
    for c in Api::<Capability>::all(client.clone())
        .list_metadata(&lp)
        .await?
    {
        now.insert(
            (CAPABILITY, c.name_any()),
            c.resource_version().unwrap_or_default(),
        );
    }
    let mapping = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_metadata_opt(ROLE_MAPPING_CONFIGMAP)
        .await?;
    if let Some(m) = mapping {
        now.insert(
            (ROLE_MAPPING, m.name_any()),
            m.resource_version().unwrap_or_default(),
        );
    }
    Ok((now, scopes))
}

/// The scopes the API server held of policies, by name, each with the resourceVersion it was
/// read at (None: not found).
pub type Scopes = BTreeMap<String, Option<(String, PolicyScope)>>;

/// How an environment stands for one object against what the API server holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Currency {
    /// It holds everything the object's decision reads.
    Current,
    /// It is behind in something the object's decision reads.
    Stale,
    /// It is behind in policies only, and whether they are in the object's scope now is not
    /// known yet.
    Unknown,
}

/// Whether `env` holds what the API server holds (`now`) for an AgentDeployment with `spec` in
/// `namespace`: a rollout is written only on rules that are current, as the caches may lag a
/// `kubectl apply` of a policy and an AgentDeployment together by a moment.
///
/// Capabilities and the role mapping count for every object; a policy only for the objects in
/// its scope, before (as `env` has it) or after (`scopes`: the scope the API server holds of a
/// policy that differs). So policies other teams keep changing never make the rules stale for
/// objects they do not apply to. A scope counts only if it was read at the very version `now`
/// lists: `now` is one moment, and a scope read at another says nothing of it. Unknown: some
/// policy differs whose scope is not known (read them with their scopes, [`read_now`]).
pub fn currency(
    env: &Environment,
    now: &Versions,
    scopes: &Scopes,
    namespace: &str,
    spec: &AgentDeploymentSpec,
) -> Currency {
    let built = env.versions.as_ref();
    let differing = built
        .iter()
        .filter(|(k, v)| now.get(*k) != Some(*v))
        .map(|(k, _)| k)
        .chain(
            now.iter()
                .filter(|(k, v)| built.get(*k) != Some(*v))
                .map(|(k, _)| k),
        );
    let mut unknown = false;
    for (kind, name) in differing {
        if *kind != POLICY {
            return Currency::Stale;
        }
        if built.contains_key(&(POLICY, name.clone())) {
            let before = env.rules.as_ref().ok().and_then(|r| r.policy(name));
            // A policy the environment names but does not hold: nothing is known of it.
            if before.is_none_or(|p| in_scope(&p.spec.scope, namespace, spec)) {
                return Currency::Stale;
            }
        }
        let Some(listed) = now.get(&(POLICY, name.clone())) else {
            continue; // deleted: only its scope before counts
        };
        match scopes.get(name) {
            None => unknown = true,
            Some(Some((read, scope))) if read == listed => {
                if in_scope(scope, namespace, spec) {
                    return Currency::Stale;
                }
            }
            // Changed or deleted since it was listed: what it was then is not known.
            Some(_) => return Currency::Stale,
        }
    }
    if unknown {
        Currency::Unknown
    } else {
        Currency::Current
    }
}

const POLICY: &str = "DeploymentPolicy";
const CAPABILITY: &str = "Capability";
const ROLE_MAPPING: &str = "ConfigMap";

/// How long changes are gathered before the environment is rebuilt (a `kubectl apply` of a
/// hundred policies is one rebuild, not a hundred).
const SETTLE: Duration = Duration::from_millis(100);
/// The longest changes are gathered before the environment is rebuilt.
const SETTLE_AT_MOST: Duration = Duration::from_secs(1);

/// The role mapping in `cm` (the ConfigMap [`ROLE_MAPPING_CONFIGMAP`] in `namespace`): empty
/// when there is none, an error when it is invalid.
pub fn role_mapping_of(cm: Option<&ConfigMap>, namespace: &str) -> Result<RoleMapping, String> {
    let Some(cm) = cm else {
        return Ok(RoleMapping::default());
    };
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(ROLE_MAPPING_KEY))
        .map(String::as_str)
        .unwrap_or_default();
    RoleMapping::parse(text).map_err(|e| {
        format!(
            "ConfigMap {namespace}/{ROLE_MAPPING_CONFIGMAP} key {ROLE_MAPPING_KEY} is not a valid role mapping: {e}"
        )
    })
}

/// The watch of the role-mapping ConfigMap alone.
fn role_mapping_config() -> watcher::Config {
    watcher::Config::default().fields(&format!("metadata.name={ROLE_MAPPING_CONFIGMAP}"))
}

/// The caches the environment is built from.
#[derive(Clone)]
pub struct Sources {
    /// Every DeploymentPolicy.
    pub policies: Store<DeploymentPolicy>,
    /// Every Capability.
    pub capabilities: Store<Capability>,
    /// The role-mapping ConfigMap.
    pub mapping: Store<ConfigMap>,
    /// The operator's namespace.
    pub namespace: String,
}

impl Sources {
    /// Starts the three watches: the caches, and a stream that yields once per change of any of
    /// them (to be driven by [`maintain`]).
    pub fn watch(
        client: &Client,
        namespace: &str,
    ) -> (Sources, impl Stream<Item = ()> + Send + 'static) {
        let (policies, pw) = reflector::store();
        let (capabilities, cw) = reflector::store();
        let (mapping, mw) = reflector::store();
        let changes = futures::stream::select(
            futures::stream::select(
                reflector(
                    pw,
                    stores::watch(
                        Api::<DeploymentPolicy>::all(client.clone()),
                        Default::default(),
                    ),
                )
                .map(|_| ()),
                reflector(
                    cw,
                    stores::watch(Api::<Capability>::all(client.clone()), Default::default()),
                )
                .map(|_| ()),
            ),
            reflector(
                mw,
                stores::watch(
                    Api::<ConfigMap>::namespaced(client.clone(), namespace),
                    role_mapping_config(),
                ),
            )
            .map(|_| ()),
        );
        let sources = Sources {
            policies,
            capabilities,
            mapping,
            namespace: namespace.to_owned(),
        };
        (sources, changes)
    }

    /// Whether every cache holds its first full list.
    pub fn ready(&self) -> bool {
        use futures::FutureExt;
        let ready = |r: Option<Result<(), _>>| matches!(r, Some(Ok(())));
        ready(self.policies.wait_until_ready().now_or_never())
            && ready(self.capabilities.wait_until_ready().now_or_never())
            && ready(self.mapping.wait_until_ready().now_or_never())
    }

    /// The environment the caches hold now.
    pub fn build(&self) -> Environment {
        let cm = self
            .mapping
            .get(&ObjectRef::new(ROLE_MAPPING_CONFIGMAP).within(&self.namespace));
        let capabilities = self.capabilities.state();
        let policies = self.policies.state();
        let mut versions = Versions::new();
        let mut note =
            |kind: &'static str,
             meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
                versions.insert(
                    (kind, meta.name.clone().unwrap_or_default()),
                    meta.resource_version.clone().unwrap_or_default(),
                );
            };
        policies.iter().for_each(|p| note(POLICY, &p.metadata));
        capabilities
            .iter()
            .for_each(|c| note(CAPABILITY, &c.metadata));
        if let Some(cm) = &cm {
            note(ROLE_MAPPING, &cm.metadata);
        }
        let rules = (|| {
            let mapping = role_mapping_of(cm.as_deref(), &self.namespace)?;
            let capabilities = CapabilitySet::new(
                capabilities
                    .iter()
                    .map(|c| (c.metadata.name.as_deref().unwrap_or(""), c.spec.clone())),
            )?;
            Ok(Arc::new(Rules::new(
                policies.iter().map(|p| (p.name_any(), p.spec.clone())),
                capabilities,
                mapping,
            )))
        })();
        Environment {
            rules,
            versions: Arc::new(versions),
        }
    }
}

/// Which AgentDeployments a change of environment from `old` to `new` may decide differently.
pub fn affected(old: &Environment, new: &Environment) -> Affected {
    match (&old.rules, &new.rules) {
        (Ok(old), Ok(new)) => old.affected_by(new),
        (Err(a), Err(b)) if a == b => Affected::Nothing,
        _ => Affected::Everything,
    }
}

/// Keeps `current` up to date with `sources` (once their caches are ready) and sends every
/// AgentDeployment a change may affect to `requeue`. Runs until `changes` ends.
pub async fn maintain(
    sources: Sources,
    changes: impl Stream<Item = ()> + Send + 'static,
    agents: Store<AgentDeployment>,
    current: watch::Sender<Environment>,
    requeue: futures::channel::mpsc::UnboundedSender<ObjectRef<AgentDeployment>>,
) {
    let mut changes = std::pin::pin!(changes);
    while changes.next().await.is_some() {
        // Gather what else arrives while things settle, but never for longer than
        // SETTLE_AT_MOST: changes that never stop (a GitOps tool syncing all day) still reach
        // the rules.
        let at_most = tokio::time::sleep(SETTLE_AT_MOST);
        let mut at_most = std::pin::pin!(at_most);
        loop {
            tokio::select! {
                _ = &mut at_most => break,
                next = tokio::time::timeout(SETTLE, changes.next()) => {
                    if !matches!(next, Ok(Some(()))) {
                        break;
                    }
                }
            }
        }
        if !sources.ready() {
            continue;
        }
        let new = sources.build();
        if let Err(e) = &new.rules {
            tracing::error!(%e, "the evaluation environment is invalid; every rollout waits");
        }
        let old = current.send_replace(new.clone());
        let affected = affected(&old, &new);
        if affected == Affected::Nothing {
            continue;
        }
        let mut n: usize = 0;
        for ad in agents.state() {
            let ns = ad.namespace().unwrap_or_default();
            if affected.includes(&ns, &ad.spec) {
                n = n.saturating_add(1);
                if requeue
                    .unbounded_send(ObjectRef::from_obj(ad.as_ref()))
                    .is_err()
                {
                    return;
                }
            }
        }
        tracing::info!(
            requeued = n,
            "policies, capabilities or the role mapping changed"
        );
    }
}

/// The role mapping as the webhook reads it: its own watch of the ConfigMap (every replica
/// serves the webhook, leader or not), parsed once per change.
#[derive(Clone)]
pub struct RoleMappings {
    current: watch::Receiver<Option<Arc<Result<RoleMapping, String>>>>,
}

impl RoleMappings {
    /// Starts watching the role mapping in `namespace` (the watch stops with the runtime).
    pub fn start(client: &Client, namespace: &str) -> RoleMappings {
        let (tx, rx) = watch::channel(None);
        let (store, writer) = reflector::store();
        let events = reflector(
            writer,
            stores::watch(
                Api::<ConfigMap>::namespaced(client.clone(), namespace),
                role_mapping_config(),
            ),
        );
        let ns = namespace.to_owned();
        tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            let mut listed = false;
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::InitDone) => listed = true,
                    Ok(watcher::Event::Init | watcher::Event::InitApply(_)) | Err(_) => continue,
                    Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {}
                }
                if listed {
                    let cm = store.get(&ObjectRef::new(ROLE_MAPPING_CONFIGMAP).within(&ns));
                    tx.send_replace(Some(Arc::new(role_mapping_of(cm.as_deref(), &ns))));
                }
            }
        });
        RoleMappings { current: rx }
    }

    /// The mapping now; an error while it is not loaded yet or invalid (fail closed).
    pub fn get(&self) -> Result<Arc<Result<RoleMapping, String>>, String> {
        self.current
            .borrow()
            .clone()
            .ok_or_else(|| "the role mapping is not loaded yet".to_owned())
    }

    /// Waits until the mapping is loaded.
    pub async fn loaded(&self) {
        let mut rx = self.current.clone();
        let _ = rx.wait_for(Option::is_some).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(rules: Result<Rules, &str>) -> Environment {
        Environment {
            rules: rules.map(Arc::new).map_err(str::to_owned),
            versions: Arc::default(),
        }
    }

    #[test]
    fn an_environment_that_breaks_or_mends_affects_everything() {
        let ok = || env(Ok(Rules::default()));
        let table = [
            (ok(), ok(), Affected::Nothing),
            (env(Err("bad")), env(Err("bad")), Affected::Nothing),
            (env(Err("bad")), env(Err("worse")), Affected::Everything),
            (ok(), env(Err("bad")), Affected::Everything),
            (env(Err("bad")), ok(), Affected::Everything),
        ];
        for (i, (old, new, want)) in table.into_iter().enumerate() {
            assert_eq!(affected(&old, &new), want, "case {i}");
        }
    }

    /// Rules are current for an object unless what differs from the API server is read by its
    /// decision: a capability or the role mapping always, a policy when it is in the object's
    /// scope before or after the change.
    #[test]
    fn rules_are_stale_only_for_the_objects_a_difference_applies_to() {
        let policy = |scope: &str| -> crate::crd::DeploymentPolicySpec {
            crate::yaml::from_str(&format!("{{action: Warn, scope: {scope}}}")).unwrap()
        };
        let scope = |s: &str| policy(s).scope;
        let built_rules = Rules::new(
            [
                ("ours".to_owned(), policy("{namespaces: [team-a]}")),
                ("theirs".to_owned(), policy("{namespaces: [team-b]}")),
            ],
            CapabilitySet::default(),
            RoleMapping::default(),
        );
        let v = |entries: &[(&'static str, &str, &str)]| -> Versions {
            entries
                .iter()
                .map(|(k, n, rv)| ((*k, (*n).to_owned()), (*rv).to_owned()))
                .collect()
        };
        let built = [
            (POLICY, "ours", "1"),
            (POLICY, "theirs", "2"),
            (CAPABILITY, "canary", "3"),
            (ROLE_MAPPING, "dvo-role-mapping", "4"),
        ];
        let env = |rules: Result<Rules, &str>| Environment {
            rules: rules.map(Arc::new).map_err(str::to_owned),
            versions: Arc::new(v(&built)),
        };
        let spec: AgentDeploymentSpec = serde_json::from_value(serde_json::json!({
            "agent": "GHA", "platform": "langchain", "environment": "staging",
        }))
        .unwrap();
        let with = |changes: &[(&'static str, &str, Option<&str>)]| -> Versions {
            let mut now = v(&built);
            for (k, n, rv) in changes {
                match rv {
                    Some(rv) => now.insert((*k, (*n).to_owned()), (*rv).to_owned()),
                    None => now.remove(&(*k, (*n).to_owned())),
                };
            }
            now
        };
        // Scopes read at resourceVersion `rv` (changes below are listed at "9").
        let read_at = |rv: &str, entries: &[(&str, Option<&str>)]| {
            entries
                .iter()
                .map(|(n, s)| ((*n).to_owned(), s.map(|s| (rv.to_owned(), scope(s)))))
                .collect::<Scopes>()
        };
        let known = |entries: &[(&str, Option<&str>)]| read_at("9", entries);

        use Currency::{Current, Stale, Unknown};
        type Case<'a> = (&'a str, Versions, Scopes, Result<Rules, &'a str>, Currency);
        let table: Vec<Case> = vec![
            (
                "nothing differs",
                with(&[]),
                known(&[]),
                Ok(built_rules.clone()),
                Current,
            ),
            (
                "a capability changed",
                with(&[(CAPABILITY, "canary", Some("9"))]),
                known(&[]),
                Ok(built_rules.clone()),
                Stale,
            ),
            (
                "a capability was added",
                with(&[(CAPABILITY, "hooks", Some("9"))]),
                known(&[]),
                Ok(built_rules.clone()),
                Stale,
            ),
            (
                "the role mapping was deleted",
                with(&[(ROLE_MAPPING, "dvo-role-mapping", None)]),
                known(&[]),
                Ok(built_rules.clone()),
                Stale,
            ),
            (
                "a policy in scope changed",
                with(&[(POLICY, "ours", Some("9"))]),
                known(&[]),
                Ok(built_rules.clone()),
                Stale,
            ),
            (
                "a policy in scope was deleted",
                with(&[(POLICY, "ours", None)]),
                known(&[]),
                Ok(built_rules.clone()),
                Stale,
            ),
            (
                "a policy elsewhere changed, its scope unknown",
                with(&[(POLICY, "theirs", Some("9"))]),
                known(&[]),
                Ok(built_rules.clone()),
                Unknown,
            ),
            (
                "a policy elsewhere changed and stays elsewhere",
                with(&[(POLICY, "theirs", Some("9"))]),
                known(&[("theirs", Some("{namespaces: [team-b]}"))]),
                Ok(built_rules.clone()),
                Current,
            ),
            (
                "a policy elsewhere moved into scope",
                with(&[(POLICY, "theirs", Some("9"))]),
                known(&[("theirs", Some("{namespaces: [team-a]}"))]),
                Ok(built_rules.clone()),
                Stale,
            ),
            (
                "a policy elsewhere changed and was deleted since",
                with(&[(POLICY, "theirs", Some("9"))]),
                known(&[("theirs", None)]),
                Ok(built_rules.clone()),
                Stale,
            ),
            (
                // What it was at the listed version (in scope, say) is not known.
                "a policy elsewhere, its scope read at a later version than listed",
                with(&[(POLICY, "theirs", Some("9"))]),
                read_at("10", &[("theirs", Some("{namespaces: [team-b]}"))]),
                Ok(built_rules.clone()),
                Stale,
            ),
            (
                "a new policy, its scope read at a later version than listed",
                with(&[(POLICY, "new", Some("9"))]),
                read_at("10", &[("new", Some("{agents: [OTHER]}"))]),
                Ok(built_rules.clone()),
                Stale,
            ),
            (
                "a policy elsewhere was deleted",
                with(&[(POLICY, "theirs", None)]),
                known(&[]),
                Ok(built_rules.clone()),
                Current,
            ),
            (
                "a new policy, scope unknown",
                with(&[(POLICY, "new", Some("9"))]),
                known(&[]),
                Ok(built_rules.clone()),
                Unknown,
            ),
            (
                "a new policy for everything",
                with(&[(POLICY, "new", Some("9"))]),
                known(&[("new", Some("{}"))]),
                Ok(built_rules.clone()),
                Stale,
            ),
            (
                "a new policy for another agent",
                with(&[(POLICY, "new", Some("9"))]),
                known(&[("new", Some("{agents: [OTHER]}"))]),
                Ok(built_rules.clone()),
                Current,
            ),
            (
                "two new policies, one in scope",
                with(&[(POLICY, "a", Some("9")), (POLICY, "b", Some("9"))]),
                known(&[
                    ("a", Some("{agents: [OTHER]}")),
                    ("b", Some("{environments: [staging]}")),
                ]),
                Ok(built_rules.clone()),
                Stale,
            ),
            (
                "a changed policy the rules do not hold",
                with(&[(POLICY, "theirs", Some("9"))]),
                known(&[("theirs", Some("{namespaces: [team-b]}"))]),
                Ok(Rules::default()),
                Stale,
            ),
            (
                "invalid rules: a policy elsewhere changed",
                with(&[(POLICY, "theirs", Some("9"))]),
                known(&[("theirs", Some("{namespaces: [team-b]}"))]),
                Err("invalid role mapping"),
                Stale,
            ),
        ];
        for (case, now, scopes, rules, want) in table {
            assert_eq!(
                currency(&env(rules), &now, &scopes, "team-a", &spec),
                want,
                "{case}"
            );
        }
    }

    #[test]
    fn a_role_mapping_is_empty_when_absent_and_an_error_when_invalid() {
        assert_eq!(role_mapping_of(None, "dvo"), Ok(RoleMapping::default()));
        let cm = ConfigMap {
            data: Some(
                [(
                    ROLE_MAPPING_KEY.to_owned(),
                    "users: [not, a, map]".to_owned(),
                )]
                .into(),
            ),
            ..Default::default()
        };
        let e = role_mapping_of(Some(&cm), "dvo").unwrap_err();
        assert!(
            e.starts_with(
                "ConfigMap dvo/dvo-role-mapping key roles.yaml is not a valid role mapping"
            ),
            "{e}"
        );
    }
}
