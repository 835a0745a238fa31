//! Audit appends to ConfigMaps on a real API server (the local control plane, started here, or
//! the one in `DVO_TEST_CLUSTER_DIR`): one writer awaiting each append (the baseline), then
//! concurrent appends batched by group commit, then two writers racing for the same chain; each
//! given as entries per second and as a ratio to the baseline measured in the same process.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dvo_operator::audit::store::{AuditLog, load};
use dvo_operator::audit::{Draft, EventType, SigningKey, verify};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

fn cluster() -> (PathBuf, Option<std::process::Child>) {
    if let Ok(dir) = std::env::var("DVO_TEST_CLUSTER_DIR") {
        return (PathBuf::from(dir), None);
    }
    let dir = std::env::temp_dir().join(format!("dvo-bench-{}", std::process::id()));
    let child = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/controlplane/cluster.sh"
    ))
    .args(["up", "--dir"])
    .arg(&dir)
    .args(["--watch-pid", &std::process::id().to_string()])
    .stdout(Stdio::null())
    .spawn()
    .expect("start the control plane");
    let deadline = Instant::now() + Duration::from_secs(30 * 60);
    while !dir.join("ready").exists() {
        assert!(Instant::now() < deadline, "control plane not ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    (dir, Some(child))
}

fn draft(i: usize) -> Draft {
    let mut d = Draft::new(
        EventType::PolicyEvaluated,
        "rosa-release",
        "evaluate",
        &format!("bench/gha-{}", i % 100),
        "AgentDeployment",
        "success",
    );
    d.timestamp = "2026-11-24T10:00:00Z".into();
    d.idempotency_key = format!("bench/{i}");
    d.metadata = serde_json::json!({"digest": "sha256:0123456789abcdef", "outcome": "Allow"});
    d
}

async fn concurrent(logs: &[AuditLog], n: usize, offset: usize) -> Duration {
    let t = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let log = logs[i % logs.len()].clone();
            tokio::spawn(async move { log.record(draft(offset + i)).await.expect("append") })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    t.elapsed()
}

#[tokio::main]
async fn main() {
    let (dir, _child) = cluster();
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(dir.join("kubeconfig-admin")).expect("kubeconfig"),
        &KubeConfigOptions::default(),
    )
    .await
    .expect("config");
    let client = kube::Client::try_from(config).expect("client");
    let ns = format!("dvo-bench-{}", std::process::id());
    let mut namespace = Namespace::default();
    namespace.metadata.name = Some(ns.clone());
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .expect("namespace");
    let seed = [7; 32];
    let key = || SigningKey::from_seed(&seed).expect("key");
    let log = AuditLog::start(client.clone(), &ns, key());

    let n = 200;
    let t = Instant::now();
    for i in 0..n {
        log.record(draft(i)).await.expect("append");
    }
    let base = n as f64 / t.elapsed().as_secs_f64();
    println!(
        "audit/configmap one writer, awaited  {n:>5} entries  {base:>8.0} entries/s  (baseline)"
    );

    let mut offset = n;
    for (label, writers, n) in [
        ("group commit, 64 tasks", 1, 3000),
        ("two writers racing   ", 2, 3000),
    ] {
        let logs: Vec<AuditLog> = (0..writers)
            .map(|w| {
                if w == 0 {
                    log.clone()
                } else {
                    AuditLog::start(client.clone(), &ns, key())
                }
            })
            .collect();
        let elapsed = concurrent(&logs, n, offset).await;
        offset += n;
        let rate = n as f64 / elapsed.as_secs_f64();
        println!(
            "audit/configmap {label}  {n:>5} entries  {rate:>8.0} entries/s  {:.1}x baseline",
            rate / base
        );
    }
    let (segments, checkpoints) = load(&client, &ns).await.expect("load");
    let entries: usize = segments.iter().map(|s| s.entries.len()).sum();
    verify(&segments, &checkpoints, &key().public_key()).expect("the chain verifies");
    println!(
        "audit/configmap {entries} entries in {} segments, chain verifies",
        segments.len()
    );
    Api::<Namespace>::all(client)
        .delete(&ns, &Default::default())
        .await
        .expect("delete namespace");
}
