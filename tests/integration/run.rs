//! The `dvo run` binary: startup checks, health endpoints, JSON logs and graceful shutdown.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{OPERATOR_NS, control_plane, free_port, operator};

fn get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// `dvo run` as `identity` for the operator namespace `ns`, logging to `log` (a file: a pipe
/// nobody reads would fill up).
fn dvo_run(identity: &str, ns: &str, port: u16, log: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dvo"));
    cmd.env("KUBECONFIG", control_plane().kubeconfig(identity))
        .env("RUST_LOG", "info,kube_runtime=debug")
        .args([
            "run",
            "--namespace",
            ns,
            "--log-format",
            "json",
            // The shared webhook of the test run stays registered; this process serves none.
            "--no-webhook",
            "--health-addr",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(Stdio::piped());
    cmd
}

/// Kills the process if the test fails before stopping it: no `dvo run` outlives a failed test.
struct KillOnPanic(u32);

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

fn log_file(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("dvo-run-{name}-{}.log", std::process::id()))
}

#[tokio::test]
async fn run_refuses_to_start_without_access_to_its_kinds() {
    operator().await;
    let out = tokio::task::spawn_blocking(|| {
        dvo_run("viewer", OPERATOR_NS, free_port(), &log_file("viewer"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot list AgentDeployments") && err.contains("forbidden"),
        "{err}"
    );
}

#[tokio::test]
async fn run_serves_health_logs_json_and_stops_on_sigterm() {
    let client = operator().await;
    // Its own namespace: its own leader Lease (the test operator leads in dvo-system).
    let ns = crate::support::namespace(&client, "dvorun").await;
    let port = free_port();
    let log = log_file("admin");
    let mut child = dvo_run("admin", &ns, port, &log).spawn().unwrap();
    let _orphan_guard = KillOnPanic(child.id());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if get(port, "/readyz").is_some_and(|reply| reply.starts_with("HTTP/1.1 200")) {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "dvo run exited early");
        assert!(Instant::now() < deadline, "dvo run never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(get(port, "/healthz").unwrap().starts_with("HTTP/1.1 200"));
    // Metrics: this replica leads, and reconciles are counted (it watches the whole cluster).
    crate::support::create_as("operator", &ns, serde_json::json!({
        "apiVersion": "dvo.caat.io/v1alpha1", "kind": "AgentDeployment", "metadata": {"name": "counted"},
        "spec": {"agent": "CNT", "platform": "copilot-studio", "environment": "development"},
    })).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let text = get(port, "/metrics").unwrap_or_default();
        if text.contains("dvo_reconciles_total{kind=\"AgentDeployment\"}") {
            break text;
        }
        assert!(Instant::now() < deadline, "no reconcile counted: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for want in [
        "dvo_leader 1",
        "# TYPE dvo_approval_latency_seconds histogram",
        "dvo_decisions_total{value=",
    ] {
        assert!(metrics.contains(want), "{want} in {metrics}");
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "graceful exit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logs = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let messages: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["fields"]["message"].as_str())
        .collect();
    for want in [
        "controllers started",
        "caches synced; ready",
        "shutting down",
    ] {
        assert!(messages.contains(&want), "{want} not logged: {messages:?}");
    }
    // Reconciles in flight finish, or the grace period ends them: either way the process exits 0.
    let stopped = [
        "controllers stopped",
        "controllers did not stop in time; exiting",
    ];
    assert!(
        stopped.iter().any(|m| messages.contains(m)),
        "{messages:?} (log: {})",
        log.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_runs_and_a_follower_takes_over_when_it_stops() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let client = operator().await;
    let ns = crate::support::namespace(&client, "leader").await;
    let start = |me: &str| {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let ready = Arc::new(AtomicBool::new(false));
        let settings = dvo_operator::controller::Settings {
            namespace: ns.clone(),
            audit_retention: None,
            identity: me.to_owned(),
            audit_sinks: vec![],
            notifications: Default::default(),
            policy_reports: false,
        };
        let task = tokio::spawn(dvo_operator::controller::run(
            client.clone(),
            settings,
            ready.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        (stop, ready, task)
    };
    let ready_within = |flag: Arc<AtomicBool>, secs: u64| async move {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !flag.load(Ordering::Relaxed) {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        true
    };
    let (stop_a, ready_a, task_a) = start("replica-a");
    assert!(
        ready_within(ready_a.clone(), 60).await,
        "the first replica leads"
    );
    let (stop_b, ready_b, task_b) = start("replica-b");
    let leases =
        kube::Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), &ns);
    let holder =
        |l: k8s_openapi::api::coordination::v1::Lease| l.spec.and_then(|s| s.holder_identity);
    assert!(!ready_within(ready_b.clone(), 4).await, "a follower waits");
    assert_eq!(
        holder(leases.get("dvo-operator-leader").await.unwrap()).as_deref(),
        Some("replica-a")
    );
    // The leader stops and releases the lease: the follower takes over without waiting for expiry.
    let _ = stop_a.send(());
    task_a.await.unwrap().unwrap();
    assert!(ready_within(ready_b, 10).await, "the follower takes over");
    assert_eq!(
        holder(leases.get("dvo-operator-leader").await.unwrap()).as_deref(),
        Some("replica-b")
    );
    let _ = stop_b.send(());
    task_b.await.unwrap().unwrap();
}
