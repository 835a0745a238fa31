//! The audit log in ConfigMaps on a real API server: group commit, sealing, racing writers, and
//! the operator's own records of a deployment, verified end to end.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::support::{OPERATOR_NS, control_plane, namespace, operator};
use dvo_operator::audit::store::{AuditLog, SEGMENT_LABEL, load};
use dvo_operator::audit::{Draft, EventType, FaultKind, SigningKey, verify};

const SEED: [u8; 32] = [11; 32];

fn draft(i: usize, writer: &str) -> Draft {
    let mut d = Draft::new(
        EventType::PolicyEvaluated,
        "rosa-release",
        "evaluate",
        &format!("agents/gha-{i}"),
        "AgentDeployment",
        "success",
    );
    d.timestamp = "2026-11-24T10:00:00Z".into();
    d.idempotency_key = format!("{writer}/{i}");
    d.metadata = json!({"padding": "x".repeat(700)});
    d
}

async fn log_namespace(client: &Client, name: &str) -> String {
    namespace(client, name).await
}

#[tokio::test]
async fn concurrent_appends_are_batched_sealed_and_verify() {
    let client = operator().await;
    let ns = log_namespace(&client, "auditlog").await;
    let log = AuditLog::start(client.clone(), &ns, SigningKey::from_seed(&SEED).unwrap());
    // 400 entries of ~1 KiB from concurrent tasks: group commit, and more than one segment.
    let tasks: Vec<_> = (0..400)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.record(draft(i, "a")).await })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().unwrap().seq);
    }
    seqs.sort();
    assert_eq!(
        seqs,
        (1..=400).collect::<Vec<u64>>(),
        "every fact once, no gaps"
    );
    // The same fact again is not recorded twice.
    let again = log.record(draft(399, "a")).await.unwrap();
    assert!(again.seq <= 400);
    log.checkpoint().await.unwrap();
    let (segments, checkpoints) = load(&client, &ns).await.unwrap();
    assert!(
        segments.len() >= 2,
        "sealed at {} bytes: {} segments",
        dvo_operator::audit::store::SEGMENT_BYTES,
        segments.len()
    );
    let public = SigningKey::from_seed(&SEED).unwrap().public_key();
    let report = verify(&segments, &checkpoints, &public).unwrap();
    assert_eq!(
        (report.entries, report.last_seq, report.last_checkpoint_seq),
        (400, 400, Some(400))
    );
    let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels(SEGMENT_LABEL))
        .await
        .unwrap();
    let sealed = cms
        .items
        .iter()
        .filter(|c| c.immutable == Some(true))
        .count();
    assert_eq!(sealed, segments.len() - 1, "every full segment is sealed");
    for cm in &cms.items {
        let size: usize = cm.data.as_ref().unwrap().values().map(String::len).sum();
        assert!(size < 512 * 1024, "{} holds {size} bytes", cm.name_any());
    }
}

#[tokio::test]
async fn two_writers_never_fork_the_chain() {
    let client = operator().await;
    let ns = log_namespace(&client, "auditrace").await;
    let a = AuditLog::start(client.clone(), &ns, SigningKey::from_seed(&SEED).unwrap());
    let b = AuditLog::start(
        control_plane().client("admin").await,
        &ns,
        SigningKey::from_seed(&SEED).unwrap(),
    );
    let mut tasks = Vec::new();
    for i in 0..60 {
        let (a, b) = (a.clone(), b.clone());
        tasks.push(tokio::spawn(async move { a.record(draft(i, "a")).await }));
        tasks.push(tokio::spawn(async move { b.record(draft(i, "b")).await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let (segments, checkpoints) = load(&client, &ns).await.unwrap();
    let public = SigningKey::from_seed(&SEED).unwrap().public_key();
    assert_eq!(
        verify(&segments, &checkpoints, &public).unwrap().entries,
        120
    );
}

#[tokio::test]
async fn tampering_with_a_segment_is_named_by_dvo_audit_verify() {
    let client = operator().await;
    let ns = log_namespace(&client, "audittamper").await;
    let log = AuditLog::start(client.clone(), &ns, SigningKey::from_seed(&SEED).unwrap());
    for i in 0..5 {
        log.record(draft(i, "t")).await.unwrap();
    }
    log.checkpoint().await.unwrap();
    let public: String = SigningKey::from_seed(&SEED)
        .unwrap()
        .public_key()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dvo"))
            .env("KUBECONFIG", control_plane().kubeconfig("admin"))
            .args(args)
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
            out.status.code(),
        )
    };
    let (out, code) = run(&[
        "audit",
        "verify",
        "--namespace",
        &ns,
        "--public-key",
        &public,
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("intact: 5 entries"), "{out}");
    // Someone who can edit ConfigMaps changes who approved entry 3.
    let api = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    let mut cm = api.get("dvo-audit-000000").await.unwrap();
    let data = cm.data.as_mut().unwrap();
    let text = data["entries.jsonl"].replacen(
        "\"user_id\":\"rosa-release\"",
        "\"user_id\":\"mallory\"",
        3,
    );
    let lines: Vec<&str> = text.lines().collect();
    let fixed: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if i < 2 {
                l.replace("mallory", "rosa-release")
            } else {
                l.to_string()
            }
        })
        .collect();
    data.insert("entries.jsonl".into(), fixed.join("\n") + "\n");
    api.replace("dvo-audit-000000", &PostParams::default(), &cm)
        .await
        .unwrap();
    let (out, code) = run(&[
        "audit",
        "verify",
        "--namespace",
        &ns,
        "--public-key",
        &public,
    ]);
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.starts_with("TAMPERED: HashMismatch at seq 3 (segment dvo-audit-000000)"),
        "{out}"
    );
    let (segments, checkpoints) = load(&client, &ns).await.unwrap();
    let fault = verify(
        &segments,
        &checkpoints,
        &SigningKey::from_seed(&SEED).unwrap().public_key(),
    )
    .unwrap_err();
    assert_eq!(fault.kind, FaultKind::HashMismatch);
}

#[tokio::test]
async fn the_operator_records_a_deployment_before_acting_and_its_log_verifies() {
    let client = operator().await;
    let ns = namespace(&client, "audited").await;
    let ad: dvo_operator::crd::AgentDeployment = serde_json::from_value(json!({
        "apiVersion": "dvo.caat.io/v1alpha1", "kind": "AgentDeployment", "metadata": {"name": "gha"},
        "spec": {"agent": "AUD", "platform": "copilot-studio", "environment": "development"},
    }))
    .unwrap();
    let created = Api::<dvo_operator::crd::AgentDeployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &ad)
        .await
        .unwrap();
    let resource = format!("{ns}/gha");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let entry = loop {
        let (segments, _) = load(&client, OPERATOR_NS).await.unwrap();
        let found = segments
            .iter()
            .flat_map(|s| s.entries.iter())
            .find(|e| e.draft.resource == resource)
            .cloned();
        if let Some(e) = found {
            break e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit entry for {resource}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(entry.draft.event_type, EventType::PolicyViolation);
    assert_eq!(entry.draft.user_id, "(unknown requester)");
    assert_eq!(entry.draft.metadata["uid"], json!(created.uid().unwrap()));
    // The whole operator log verifies with the operator's own key.
    let (out, code) = {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dvo"))
            .env("KUBECONFIG", control_plane().kubeconfig("admin"))
            .args(["audit", "verify", "--namespace", OPERATOR_NS])
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
            out.status.code(),
        )
    };
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("intact: "), "{out}");
}
