//! Test support: one real control plane per test run (started on first use, or reused from
//! `DVO_TEST_CLUSTER_DIR`), clients per test identity, a fresh namespace per test, the CRDs
//! installed once, and waits built on watches with a deadline.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{Condition, await_condition, conditions};
use kube::{Client, Config, Discovery, Resource};
use serde::de::DeserializeOwned;

use dvo_operator::crd::agent_deployment::{Phase, spec_digest};
use dvo_operator::crd::approval_request::ApprovalPhase;
use dvo_operator::crd::{AgentDeployment, ApprovalRequest};
use tokio::sync::OnceCell;

/// Field manager of objects the tests apply.
pub const TEST_MANAGER: &str = "dvo-tests";

/// A running control plane.
pub struct ControlPlane {
    dir: PathBuf,
    process: Option<Child>,
}

static CONTROL_PLANE: OnceLock<ControlPlane> = OnceLock::new();

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The control plane of this test run, started on first use. It stops by itself when this
/// process exits (the script watches our pid).
pub fn control_plane() -> &'static ControlPlane {
    CONTROL_PLANE.get_or_init(|| {
        if let Ok(dir) = std::env::var("DVO_TEST_CLUSTER_DIR") {
            let dir = PathBuf::from(dir);
            assert!(
                dir.join("ready").exists(),
                "DVO_TEST_CLUSTER_DIR={} has no ready control plane",
                dir.display()
            );
            return ControlPlane { dir, process: None };
        }
        ControlPlane::start(&format!("dvo-it-{}", std::process::id()))
    })
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(child) = self.process.as_mut() {
            // cluster.sh stops everything it started on SIGTERM.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

impl ControlPlane {
    /// Starts a control plane of its own in the temporary directory `name` (stopped when this
    /// value is dropped, or when this process exits).
    pub fn start(name: &str) -> ControlPlane {
        let dir = std::env::temp_dir().join(name);
        let log = dir.with_extension("log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new(repo().join("tests/controlplane/cluster.sh"))
            .args(["up", "--dir"])
            .arg(&dir)
            .args(["--watch-pid", &std::process::id().to_string()])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("start tests/controlplane/cluster.sh");
        // A cold start builds the binaries first, which takes minutes on two cores.
        let deadline = Instant::now() + Duration::from_secs(30 * 60);
        while !dir.join("ready").exists() {
            if let Some(status) = child.try_wait().expect("poll control plane") {
                panic!(
                    "control plane exited ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "control plane not ready in time; see {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        ControlPlane {
            dir,
            process: Some(child),
        }
    }

    /// Kills its kube-apiserver (SIGKILL); it stays down until [`ControlPlane::start_apiserver`].
    pub fn kill_apiserver(&self) {
        self.script("kill-apiserver");
    }

    /// Starts its kube-apiserver again (same port, same data); returns at once.
    pub fn start_apiserver(&self) {
        self.script("start-apiserver");
    }

    fn script(&self, command: &str) {
        let status = Command::new(repo().join("tests/controlplane/cluster.sh"))
            .arg(command)
            .arg("--dir")
            .arg(&self.dir)
            .status()
            .expect("run cluster.sh");
        assert!(status.success(), "cluster.sh {command} failed");
    }

    /// Installs our CRDs (Established and discoverable).
    pub async fn install_crds(&self) {
        install_crds(self.client("admin").await).await;
    }

    /// The kubeconfig file of an identity: admin, release-manager-1, release-manager-2,
    /// developer, operator, viewer, ci.
    pub fn kubeconfig(&self, identity: &str) -> PathBuf {
        self.dir.join(format!("kubeconfig-{identity}"))
    }

    /// The CA of the client certificate the API server presents to admission webhooks.
    pub fn webhook_client_ca(&self) -> PathBuf {
        self.dir.join("pki/webhook-client-ca.crt")
    }

    /// The control plane's files (certificates and keys under `pki/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A client authenticated as `identity`.
    pub async fn client(&self, identity: &str) -> Client {
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig(identity)).expect("read kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig");
        Client::try_from(config).expect("client")
    }

    /// `kubectl` (built at the pinned version) as `identity`, with its output (stdout and
    /// stderr) and success.
    pub fn kubectl(&self, identity: &str, args: &[&str]) -> (String, bool) {
        let out = Command::new(repo().join("tests/controlplane/bin/kubectl"))
            .env("KUBECONFIG", self.kubeconfig(identity))
            .env("KUBECACHEDIR", self.dir.join("kubectl-cache"))
            .args(args)
            .output()
            .expect("run kubectl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (text, out.status.success())
    }
}

impl ControlPlane {
    /// A token of the control plane's Entra ID look-alike issuer (which its API server trusts)
    /// for `upn` with object ID `oid`, `groups` and sign-in methods `amr`, valid for 10 minutes.
    pub fn entra_token(&self, upn: &str, oid: &str, groups: &[&str], amr: &[&str]) -> String {
        let entra = self.dir.join("entra");
        let read = |f: &str| std::fs::read_to_string(entra.join(f)).expect("entra issuer file");
        let key = dvo_operator::identity::testkit::TestKey::from_pem(
            &read("kid"),
            &entra.join("key.pem"),
        );
        let tenant = read("tenant");
        let now = chrono::Utc::now().timestamp();
        key.sign(&serde_json::json!({
            "iss": format!("https://login.microsoftonline.com/{tenant}/v2.0"),
            "aud": read("audience"), "exp": now + 600, "nbf": now - 60, "iat": now - 60,
            "tid": tenant, "oid": oid, "upn": upn, "groups": groups, "amr": amr,
        }))
    }

    /// `kubectl` signed in with a bearer `token` (an Entra ID token the API server verifies).
    pub fn kubectl_with_token(&self, token: &str, args: &[&str]) -> (String, bool) {
        let mut all = vec!["--token", token];
        all.extend_from_slice(args);
        self.kubectl("viewer", &all)
    }
}

/// A self-signed certificate for `cn` made with openssl (as an outsider would make one): its key
/// is written to `key` and the certificate to `crt`.
pub fn self_signed(cn: &str, key: &Path, crt: &Path) {
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
        ])
        .arg(format!("/CN={cn}"))
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(crt)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl: {out:?}");
}

/// A peer process a test talks to (rsyslogd, an SMTP server), with a directory of its own;
/// killed and its directory removed when dropped.
pub struct Peer {
    /// The process.
    pub child: std::process::Child,
    /// Its files (configuration, certificates, what it received).
    pub dir: std::path::PathBuf,
}

impl Peer {
    /// A fresh directory for the peer `kind` of test `name`.
    pub fn dir(kind: &str, name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("dvo-{kind}-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA (`ca.pem`, `ca.key`) and a server certificate for 127.0.0.1 it signed (`server.pem`,
/// `server.key`), written to `dir`.
pub fn loopback_tls(dir: &Path) {
    let d = dir.display();
    let openssl = |args: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("cd {d} && openssl {args}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(
        "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca -keyout ca.key -out ca.pem",
    );
    openssl("req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key -out server.csr");
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile san.ext -out server.pem",
    );
}

/// The identity the in-process operator and its webhook run as (bound to cluster-admin here;
/// the chart's RBAC is tested on its own).
pub const OPERATOR_IDENTITY: &str = "dvo-operator";

/// An admin client, with the cluster ready for our tests: CRDs installed and Established, RBAC
/// for the test identities, the operator's namespace and role mapping, and the admission webhook
/// serving and registered (it stays up for the whole run, across operator restarts).
pub async fn admin() -> Client {
    let client = control_plane().client("admin").await;
    static SETUP: OnceCell<()> = OnceCell::const_new();
    SETUP
        .get_or_init(|| async {
            install_crds(client.clone()).await;
            setup_cluster(client.clone()).await;
            tokio::task::spawn_blocking(start_webhook)
                .await
                .expect("start webhook");
            webhook_in_force().await;
        })
        .await;
    client
}

/// A client as the operator's own identity, whose writes the webhook lets through untouched:
/// for tests about the API server's schema alone.
pub async fn as_operator() -> Client {
    admin().await;
    control_plane().client(OPERATOR_IDENTITY).await
}

/// Server-side applies `obj` of kind `gvk` (group, version, kind) as the tests' field manager.
pub async fn apply(
    client: &Client,
    gvk: (&str, &str, &str),
    ns: Option<&str>,
    obj: serde_json::Value,
) {
    let (group, version, kind) = gvk;
    let gvk = kube::core::GroupVersionKind::gvk(group, version, kind);
    let lower = kind.to_lowercase();
    let plural = match lower.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => format!("{lower}s"),
    };
    let ar = kube::core::ApiResource::from_gvk_with_plural(&gvk, &plural);
    let api: Api<kube::core::DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let obj: kube::core::DynamicObject = serde_json::from_value(obj).expect("object");
    let name = obj.metadata.name.clone().expect("name");
    api.patch(
        &name,
        &PatchParams::apply(TEST_MANAGER).force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
}

const HOLD_BINDING: (&str, &str, &str) = (
    "admissionregistration.k8s.io",
    "v1",
    "ValidatingAdmissionPolicyBinding",
);

/// Makes the API server refuse every Deployment write in `ns` (a ValidatingAdmissionPolicy
/// named after it), and waits until it does.
pub async fn hold_deployments(client: &Client, ns: &str) {
    let vap = (
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingAdmissionPolicy",
    );
    apply(client, vap, None, serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": ns},
        "spec": {"failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["deployments"]}]},
            "validations": [{"expression": "false", "message": "held by the test"}]},
    })).await;
    apply(client, HOLD_BINDING, None, serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": ns},
        "spec": {"policyName": ns, "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}},
    })).await;
    let deployments = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), ns);
    let probe: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "probe"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "c"}]}}},
    }))
    .unwrap();
    let dry = PostParams {
        dry_run: true,
        field_manager: None,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while deployments.create(&dry, &probe).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the hold never took effect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Lifts [`hold_deployments`].
pub async fn release_deployments(client: &Client, ns: &str) {
    let (group, version, kind) = HOLD_BINDING;
    Api::<kube::core::DynamicObject>::all_with(
        client.clone(),
        &kube::core::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk(group, version, kind),
            "validatingadmissionpolicybindings",
        ),
    )
    .delete(ns, &Default::default())
    .await
    .unwrap();
}

/// RBAC (the operator identity is cluster-admin; people may use our kinds, so that what refuses
/// them is our webhook, not RBAC), the operator's namespace and the role mapping.
async fn setup_cluster(client: Client) {
    let rbac = ("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding");
    // The static identity `dvo-operator` carries the operator's user name (so the webhook lets its
    // writes through) and a group that makes it cluster-admin; the operator itself runs with its
    // ServiceAccount's token, which has exactly the chart's RBAC.
    apply(&client, rbac, None, serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "dvo-test-superusers"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "Group", "name": "dvo-test-superusers"}],
    })).await;
    apply(
        &client,
        ("rbac.authorization.k8s.io", "v1", "ClusterRole"),
        None,
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "dvo-test-users"},
            "rules": [
                {"apiGroups": ["dvo.caat.io"], "resources": ["*"], "verbs": ["*"]},
                {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list"]},
            ],
        }),
    )
    .await;
    let people = [
        "release-manager-1",
        "release-manager-2",
        "developer",
        "operator",
        "ci",
    ];
    apply(&client, rbac, None, serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "dvo-test-users"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "dvo-test-users"},
        "subjects": people.iter().map(|p| serde_json::json!({"kind": "User", "name": identity(p).username})).collect::<Vec<_>>(),
    })).await;
    // The viewer may only read and annotate ApprovalRequests.
    apply(&client, ("rbac.authorization.k8s.io", "v1", "ClusterRole"), None, serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "dvo-test-viewer"},
        "rules": [{"apiGroups": ["dvo.caat.io"], "resources": ["approvalrequests"], "verbs": ["get", "list", "watch", "patch"]}],
    })).await;
    apply(&client, rbac, None, serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "dvo-test-viewer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "dvo-test-viewer"},
        "subjects": [{"kind": "User", "name": identity("viewer").username}],
    })).await;
    install_chart();
}

/// `helm` (built at the pinned version) with its state under the control plane's directory:
/// its standard output, its standard error, and whether it succeeded.
pub fn helm(args: &[&str]) -> (String, String, bool) {
    let dir = control_plane().dir.join("helm");
    let out = Command::new(repo().join("tests/controlplane/bin/helm"))
        .env("KUBECONFIG", control_plane().kubeconfig("admin"))
        .env("HELM_CACHE_HOME", dir.join("cache"))
        .env("HELM_CONFIG_HOME", dir.join("config"))
        .env("HELM_DATA_HOME", dir.join("data"))
        .args(args)
        .output()
        .expect("run helm");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

/// Installs the chart into the operator's namespace with the example role mapping and no pods
/// (there is no kubelet; the operator runs in this process with the chart's ServiceAccount).
fn install_chart() {
    let mapping: serde_json::Value = dvo_operator::yaml::from_str(
        &std::fs::read_to_string(repo().join("examples/role-mapping.yaml")).expect("role mapping"),
    )
    .expect("role mapping YAML");
    let values = control_plane().dir.join("values.json");
    std::fs::write(
        &values,
        // The HTTP API is on: the operator's RBAC then lets it store acts.
        serde_json::json!({"roleMapping": mapping, "replicaCount": 0, "api": {"enabled": true},
            "policyReports": {"enabled": true, "installCRDs": true}})
        .to_string(),
    )
    .expect("values");
    let chart = repo().join("charts/dvo-operator");
    let (out, err, ok) = helm(&[
        "upgrade",
        "--install",
        "dvo",
        chart.to_str().expect("utf-8"),
        "--namespace",
        OPERATOR_NS,
        "--create-namespace",
        "--values",
        values.to_str().expect("utf-8"),
    ]);
    assert!(ok, "helm install: {out}{err}");
}

/// A client with the token of the chart's ServiceAccount (TokenRequest), valid for two hours.
pub async fn service_account_client() -> Client {
    let admin = control_plane().client("admin").await;
    let request: k8s_openapi::api::authentication::v1::TokenRequest =
        serde_json::from_value(serde_json::json!({"spec": {"expirationSeconds": 7200}}))
            .expect("TokenRequest");
    let token = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(admin, OPERATOR_NS)
        .create_subresource::<_, k8s_openapi::api::authentication::v1::TokenRequest>(
            "token",
            "dvo-operator",
            &PostParams::default(),
            &request,
        )
        .await
        .expect("TokenRequest for the chart's ServiceAccount")
        .status
        .expect("token")
        .token;
    let kubeconfig =
        Kubeconfig::read_from(control_plane().kubeconfig("admin")).expect("kubeconfig");
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.expect("a token").into()),
        ..Default::default()
    };
    Client::try_from(config).expect("client")
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

/// The Entra ID tenant of the test tokens.
pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// The audience of the test tokens.
pub const AUDIENCE: &str = "api://dvo-operator";

/// The signing key of the test tenant, published to the webhook as a JWKS file.
pub fn entra_key() -> &'static dvo_operator::identity::testkit::TestKey {
    static KEY: OnceLock<dvo_operator::identity::testkit::TestKey> = OnceLock::new();
    KEY.get_or_init(|| dvo_operator::identity::testkit::TestKey::new("test-tenant-key"))
}

/// The Entra ID settings of the test tenant, with the JWKS from `source` (`jwksFile` or
/// `jwksUrl`) and a minimum refetch gap of `refetch` seconds.
pub fn entra_config(
    source: &str,
    location: &str,
    refetch: u64,
) -> dvo_operator::identity::entra::EntraConfig {
    serde_json::from_value(serde_json::json!({
        "tenants": [TENANT], "audience": AUDIENCE, "issuerVersion": "both",
        source: location, "jwksMinRefetchSeconds": refetch,
        // The control plane's Entra look-alike issuer is of this tenant too.
        "trustApiServerSignIn": true,
    }))
    .expect("Entra settings")
}

/// Starts the admission webhook in this process, on a thread of its own, for the whole run.
fn start_webhook() {
    let jwks = control_plane().dir.join("entra-jwks.json");
    std::fs::write(
        &jwks,
        dvo_operator::identity::testkit::jwks(&[entra_key()]).to_string(),
    )
    .expect("write JWKS");
    let port = free_port();
    on_own_thread("webhook", move |flag| async move {
        let client = service_account_client().await;
        let settings = dvo_operator::webhook::Settings {
            namespace: OPERATOR_NS.to_owned(),
            addr: ([127, 0, 0, 1], port).into(),
            url: Some(format!("https://127.0.0.1:{port}")),
            service: "dvo-operator-webhook".to_owned(),
            entra: Some(entra_config("jwksFile", jwks.to_str().expect("utf-8"), 300)),
            certificates: dvo_operator::webhook::Certificates::Own,
            client_ca: Some(
                std::fs::read_to_string(control_plane().webhook_client_ca())
                    .expect("the control plane's webhook client CA"),
            ),
            api: Some(dvo_operator::api::Settings {
                addr: ([127, 0, 0, 1], api_port()).into(),
                api_keys: Some(api_keys_file()),
            }),
        };
        dvo_operator::webhook::serve(client, settings, flag, std::future::pending())
            .await
            .expect("webhook serves");
    });
}

/// The port of the HTTP API the shared webhook serves (with the webhook's certificate).
pub fn api_port() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(free_port)
}

/// The API keys file of the shared HTTP API (tests write keys into it; it is read again when it
/// changes). Empty at first.
pub fn api_keys_file() -> PathBuf {
    let path = control_plane().dir.join("api-keys.yaml");
    if !path.exists() {
        std::fs::write(&path, "").expect("write the API keys file");
    }
    path
}

/// Runs `task` (given its readiness flag) on a thread and runtime of its own, so that it
/// outlives each test's runtime; returns once the flag is set.
fn on_own_thread<F, Fut>(what: &str, task: F) -> std::thread::JoinHandle<()>
where
    F: FnOnce(std::sync::Arc<std::sync::atomic::AtomicBool>) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = ready.clone();
    let thread = std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(task(flag));
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready.load(std::sync::atomic::Ordering::Relaxed) {
        assert!(!thread.is_finished(), "the {what} stopped while starting");
        assert!(Instant::now() < deadline, "the {what} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    thread
}

/// Polls until the API server calls the webhook (it picks up configurations asynchronously): a
/// dry-run create that only the webhook refuses is refused.
async fn webhook_in_force() {
    let developer = control_plane().client("developer").await;
    let api = Api::<dvo_operator::crd::AgentDeployment>::namespaced(developer, OPERATOR_NS);
    let ad: dvo_operator::crd::AgentDeployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "dvo.caat.io/v1alpha1", "kind": "AgentDeployment", "metadata": {"name": "probe"},
        "spec": {"agent": "P", "platform": "copilot-studio", "environment": "staging"},
    }))
    .expect("probe");
    let params = PostParams {
        dry_run: true,
        field_manager: None,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match api.create(&params, &ad).await {
            Err(kube::Error::Api(e)) if e.message.contains("lacks permission deploy_staging") => {
                return;
            }
            other => assert!(
                Instant::now() < deadline,
                "the webhook is not in force: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn install_crds(client: Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let text =
        std::fs::read_to_string(repo().join("crds/dvo-crds.yaml")).expect("crds/dvo-crds.yaml");
    for crd in dvo_operator::yaml::documents::<CustomResourceDefinition>(&text).expect("CRD YAML") {
        let name = crd.metadata.name.clone().expect("CRD name");
        api.patch(
            &name,
            &PatchParams::apply(TEST_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("install CRD {name}: {e}"));
        wait_for(
            &api,
            &name,
            conditions::is_crd_established(),
            Duration::from_secs(30),
        )
        .await;
    }
    // Established does not mean discoverable yet: poll discovery (kubectl needs it) until all
    // four kinds are served.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let discovery = Discovery::new(client.clone())
            .filter(&["dvo.caat.io"])
            .run()
            .await;
        let kinds = discovery.ok().and_then(|d| {
            d.get("dvo.caat.io")
                .map(|g| g.recommended_resources().len())
        });
        if kinds == Some(4) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dvo.caat.io kinds not discoverable in time (found {kinds:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A fresh namespace for one test.
pub async fn namespace(client: &Client, test: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "t-{test}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.clone());
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    name
}

/// Waits (on a watch) until `condition` holds for object `name`, or panics at the deadline.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    condition: impl Condition<K>,
    deadline: Duration,
) -> K
where
    K: Resource + Clone + std::fmt::Debug + DeserializeOwned + Send + 'static,
{
    match tokio::time::timeout(deadline, await_condition(api.clone(), name, condition)).await {
        Ok(Ok(Some(obj))) => obj,
        Ok(Ok(None)) => panic!("{name} was deleted while waiting"),
        Ok(Err(e)) => panic!("watching {name}: {e}"),
        Err(_) => panic!("{name}: condition not met within {deadline:?}"),
    }
}

/// The operator's namespace in the tests.
pub const OPERATOR_NS: &str = "dvo-system";

/// Test identities of the control plane (see tests/controlplane/cluster.sh): name → user, groups.
pub fn identity(name: &str) -> dvo_operator::identity::Identity {
    let (user, groups): (&str, &[&str]) = match name {
        "admin" => ("alice-admin", &["system:masters", "dvo-admins"]),
        "release-manager-1" => ("rosa-release", &["3f2a8c1e-5b7d-4e9a-a1c2-0d4e6f8b9a10"]),
        "release-manager-2" => ("raj-release", &["3f2a8c1e-5b7d-4e9a-a1c2-0d4e6f8b9a10"]),
        "developer" => ("dev-dana", &["a7c4e2b9-1d3f-4a6b-8e5c-9f0a1b2c3d4e"]),
        "operator" => ("ops-omar", &["dvo-operators"]),
        "viewer" => ("vera-viewer", &["dvo-viewers"]),
        "ci" => (
            "system:serviceaccount:ci:deployer",
            &["system:serviceaccounts", "system:serviceaccounts:ci"],
        ),
        "dvo-operator" => (
            "system:serviceaccount:dvo-system:dvo-operator",
            &[
                "system:serviceaccounts",
                "system:serviceaccounts:dvo-system",
            ],
        ),
        other => panic!("no test identity {other}"),
    };
    dvo_operator::identity::Identity {
        username: user.to_owned(),
        uid: Some(format!("uid-{name}")),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

/// Creates DeploymentPolicy `<ns>-<name>` with `spec`, scoped to namespace `ns` (policies are
/// cluster-wide; tests keep theirs to their own namespace). Returns its name.
pub async fn scoped_policy(
    client: &Client,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> String {
    let mut spec = spec;
    spec["scope"]["namespaces"] = serde_json::json!([ns]);
    let name = format!("{ns}-{name}");
    let p: dvo_operator::crd::DeploymentPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "dvo.caat.io/v1alpha1", "kind": "DeploymentPolicy",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("policy");
    Api::<dvo_operator::crd::DeploymentPolicy>::all(client.clone())
        .create(&PostParams::default(), &p)
        .await
        .expect("create policy");
    name
}

/// Creates the AgentDeployment `manifest` in `ns` as `who` (the admission webhook stamps them as
/// its requester).
pub async fn create_as(
    who: &str,
    ns: &str,
    manifest: serde_json::Value,
) -> dvo_operator::crd::AgentDeployment {
    let ad: dvo_operator::crd::AgentDeployment =
        serde_json::from_value(manifest).expect("AgentDeployment");
    Api::<dvo_operator::crd::AgentDeployment>::namespaced(control_plane().client(who).await, ns)
        .create(&PostParams::default(), &ad)
        .await
        .unwrap_or_else(|e| panic!("{who} creates {:?}: {e}", ad.metadata.name))
}

/// The entries of the operator's audit log about `resource` (`namespace/name`), in order.
pub async fn audit_entries(client: &Client, resource: &str) -> Vec<dvo_operator::audit::Entry> {
    let (segments, _) = dvo_operator::audit::store::load(client, OPERATOR_NS)
        .await
        .expect("load the audit log");
    segments
        .into_iter()
        .flat_map(|s| s.entries)
        .filter(|e| e.draft.resource == resource)
        .collect()
}

/// How long the tests wait for the operator to get somewhere.
pub const WAIT_DEFAULT: Duration = Duration::from_secs(60);

/// Waits until the AgentDeployment's status describes its current generation in `phase`.
pub async fn phase(client: &Client, ns: &str, name: &str, want: Phase) -> AgentDeployment {
    phase_within(client, ns, name, want, WAIT_DEFAULT).await
}

/// [`phase`] with a deadline of its own.
pub async fn phase_within(
    client: &Client,
    ns: &str,
    name: &str,
    want: Phase,
    deadline: Duration,
) -> AgentDeployment {
    let api = Api::<AgentDeployment>::namespaced(client.clone(), ns);
    let cond = move |o: Option<&AgentDeployment>| {
        o.is_some_and(|a| {
            let s = a.status.as_ref();
            s.and_then(|s| s.phase) == Some(want)
                && s.and_then(|s| s.observed_generation) == a.metadata.generation
                && s.and_then(|s| s.spec_digest.clone()) == Some(spec_digest(&a.spec))
        })
    };
    match tokio::time::timeout(
        deadline,
        kube::runtime::wait::await_condition(api.clone(), name, cond),
    )
    .await
    {
        Ok(Ok(Some(a))) => a,
        _ => panic!(
            "{ns}/{name} never reached {want:?}; now: {:#?}",
            api.get(name).await.ok().and_then(|a| a.status)
        ),
    }
}

/// `kubectl annotate apr NAME dvo.caat.io/<what>="<what> by test"` as `who`: kubectl's output
/// and whether the webhook accepted the act.
pub fn act(ns: &str, apr: &str, who: &str, what: &str) -> (String, bool) {
    let annotation = format!("dvo.caat.io/{what}={what} by test");
    control_plane().kubectl(who, &["annotate", "-n", ns, "apr", apr, &annotation])
}

/// [`act`], which must be accepted.
pub fn accepted(ns: &str, apr: &str, who: &str, what: &str) {
    let (out, ok) = act(ns, apr, who, what);
    assert!(ok, "{who} {what} {apr}: {out}");
}

/// [`act`], which must be refused with a message containing `why`.
pub fn refused(ns: &str, apr: &str, who: &str, what: &str, why: &str) -> String {
    let (out, ok) = act(ns, apr, who, what);
    assert!(
        !ok && out.contains(why),
        "{who} {what} {apr}: wanted a refusal with {why:?}, got: {out}"
    );
    out
}

pub async fn apr_phase(
    client: &Client,
    ns: &str,
    name: &str,
    want: ApprovalPhase,
) -> ApprovalRequest {
    let api = Api::<ApprovalRequest>::namespaced(client.clone(), ns);
    wait_for(
        &api,
        name,
        move |o: Option<&ApprovalRequest>| {
            o.and_then(|a| a.status.as_ref()).and_then(|s| s.phase) == Some(want)
        },
        WAIT_DEFAULT,
    )
    .await
}

/// Serialises tests that change cluster-scoped objects every test sees (Capabilities).
pub static CLUSTER_SCOPED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

static OPERATOR: std::sync::Mutex<Option<Running>> = std::sync::Mutex::new(None);
static OPERATOR_SETUP: OnceCell<()> = OnceCell::const_new();

/// Starts the operator in this process, on a thread of its own (it outlives each test's runtime).
fn start_operator() -> Running {
    if std::env::var("DVO_TEST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("DVO_TEST_LOG"))
            .try_init();
    }
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let thread = on_own_thread("operator", move |flag| async move {
        let client = service_account_client().await;
        let settings = dvo_operator::controller::Settings {
            namespace: OPERATOR_NS.to_owned(),
            audit_retention: Some(chrono::Duration::days(365)),
            identity: "test-operator".to_owned(),
            audit_sinks: vec![],
            notifications: Default::default(),
            // The chart installs the report kinds for the suite (policyReports.installCRDs).
            policy_reports: true,
        };
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        dvo_operator::controller::run(client, settings, flag, shutdown)
            .await
            .expect("operator runs");
    });
    Running { stop, thread }
}

/// An admin client, with the cluster set up (see [`admin`]) and the operator running.
pub async fn operator() -> Client {
    let client = admin().await;
    OPERATOR_SETUP
        .get_or_init(|| async {
            let running = tokio::task::spawn_blocking(start_operator)
                .await
                .expect("start operator");
            *OPERATOR.lock().unwrap() = Some(running);
        })
        .await;
    client
}

/// Stops the operator (letting reconciles in flight finish) and starts a new one.
pub async fn restart_operator() {
    while_operator_stopped(async {}).await;
}

/// Runs `during` while the operator is stopped (the webhook keeps serving), then starts a new
/// operator.
pub async fn while_operator_stopped<T>(during: impl Future<Output = T>) -> T {
    tokio::task::spawn_blocking(|| {
        let mut guard = OPERATOR.lock().unwrap();
        if let Some(running) = guard.take() {
            running.stop.send(true).expect("operator listens");
            running.thread.join().expect("operator thread");
        }
    })
    .await
    .expect("stop the operator");
    let out = during.await;
    tokio::task::spawn_blocking(|| {
        *OPERATOR.lock().unwrap() = Some(start_operator());
    })
    .await
    .expect("start the operator");
    out
}

/// The requester-stamp key the operator created.
pub async fn stamp_key(client: &Client) -> Vec<u8> {
    let secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), OPERATOR_NS)
        .get(dvo_operator::controller::KEYS_SECRET)
        .await
        .expect("keys Secret");
    secret.data.unwrap()[dvo_operator::controller::STAMP_KEY]
        .0
        .clone()
}

/// Polls `check` until it holds (or fails after a minute, saying what was seen).
pub async fn until<T: std::fmt::Debug>(
    what: &str,
    mut seen: impl FnMut() -> T,
    check: impl Fn(&T) -> bool,
) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let now = seen();
        if check(&now) {
            return now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: never; saw {now:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// An AgentDeployment manifest of agent GHA named `name`, for `env`, running `image`, with no
/// health check (no node runs its pods in these tests).
pub fn agent_manifest(name: &str, env: &str, image: &str) -> serde_json::Value {
    serde_json::json!({"apiVersion": "dvo.caat.io/v1alpha1", "kind": "AgentDeployment",
        "metadata": {"name": name}, "spec": {
        "agent": "GHA", "platform": "langchain", "environment": env, "replicas": 1,
        "steps": {"healthCheck": false},
        "template": {"spec": {"containers": [{"name": "agent", "image": image}]}},
    }})
}
