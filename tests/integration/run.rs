//! The `dvo run` binary: startup checks, health endpoints, JSON logs and graceful shutdown.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{OPERATOR_NS, control_plane, operator};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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

/// `dvo run` as `identity`, logging to `log` (a file: a pipe nobody reads would fill up).
fn dvo_run(identity: &str, port: u16, log: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dvo"));
    cmd.env("KUBECONFIG", control_plane().kubeconfig(identity))
        .env("RUST_LOG", "info,kube_runtime=debug")
        .args([
            "run",
            "--namespace",
            OPERATOR_NS,
            "--log-format",
            "json",
            "--health-addr",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(Stdio::piped());
    cmd
}

fn log_file(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("dvo-run-{name}-{}.log", std::process::id()))
}

#[tokio::test]
async fn run_refuses_to_start_without_access_to_its_kinds() {
    operator().await;
    let out = tokio::task::spawn_blocking(|| {
        dvo_run("viewer", free_port(), &log_file("viewer"))
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
    operator().await;
    let port = free_port();
    let log = log_file("admin");
    let mut child = dvo_run("admin", port, &log).spawn().unwrap();
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
