//! The audit log in ConfigMaps on a real API server: group commit, sealing, racing writers, and
//! the operator's own records of a deployment, verified end to end.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::support::{OPERATOR_NS, audit_entries, control_plane, create_as, namespace, operator};
use dvo_operator::audit::sink::{self, Sink, Target};
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

/// The `dvo` binary as the admin runs it: its output and exit code.
fn dvo(args: &[&str]) -> (String, Option<i32>) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dvo"))
        .env("KUBECONFIG", control_plane().kubeconfig("admin"))
        .args(args)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        out.status.code(),
    )
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
    seqs.dedup();
    assert_eq!(seqs.len(), 400, "every fact once");
    // With the entries that carry checkpoints, the log has no gaps.
    let (segments, _) = load(&client, &ns).await.unwrap();
    let mut all: Vec<u64> = segments
        .iter()
        .flat_map(|s| &s.entries)
        .filter(|e| e.draft.event_type == EventType::CheckpointSigned)
        .map(|e| e.seq)
        .chain(seqs.iter().copied())
        .collect();
    all.sort();
    assert_eq!(all, (1..=all.len() as u64).collect::<Vec<u64>>(), "no gaps");
    // The same fact again is not recorded twice.
    let again = log.record(draft(399, "a")).await.unwrap();
    assert!(seqs.contains(&again.seq));
    let head = *all.last().unwrap();
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
    // The checkpoint of the head, and the entry that carries it.
    assert_eq!(
        (report.entries, report.last_seq, report.last_checkpoint_seq),
        (head + 1, head + 1, Some(head))
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
    let report = verify(&segments, &checkpoints, &public).unwrap();
    let facts = segments
        .iter()
        .flat_map(|s| &s.entries)
        .filter(|e| e.draft.event_type != EventType::CheckpointSigned)
        .count();
    assert_eq!(facts, 120);
    assert!(report.entries >= 120, "{report:?}");
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
    let public = dvo_operator::hex(&SigningKey::from_seed(&SEED).unwrap().public_key());
    let run = dvo;
    let (out, code) = run(&[
        "audit",
        "verify",
        "--namespace",
        &ns,
        "--public-key",
        &public,
    ]);
    assert_eq!(code, Some(0), "{out}");
    // Five facts and the entry that carries the checkpoint signed at the end.
    assert!(out.starts_with("intact: 6 entries"), "{out}");
    // An export verifies offline; tail shows the newest entries.
    let (export, code) = run(&["audit", "export", "--namespace", &ns]);
    assert_eq!(code, Some(0), "{export}");
    let file = std::env::temp_dir().join(format!("dvo-export-{}.json", std::process::id()));
    std::fs::write(&file, &export).unwrap();
    let (out, code) = run(&[
        "audit",
        "verify",
        "-f",
        file.to_str().unwrap(),
        "--public-key",
        &public,
    ]);
    assert_eq!(
        (code, out.starts_with("intact: 6 entries")),
        (Some(0), true),
        "{out}"
    );
    let (tail, _) = run(&["audit", "tail", "-n", "2", "--namespace", &ns]);
    let seqs: Vec<u64> = tail
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, vec![5, 6]);
    let (cef, _) = run(&["audit", "export", "--format", "cef", "--namespace", &ns]);
    assert_eq!(
        cef.lines()
            .filter(|l| l.starts_with("CEF:0|KesselDigital|CAAT-DVO|1.0|policy_evaluated|"))
            .count(),
        5,
        "{cef}"
    );
    let (err, code) = run(&["audit", "export", "-n", "2", "--namespace", &ns]);
    assert_eq!(code, Some(1));
    assert!(err.contains("-n applies to --format jsonl or cef"), "{err}");

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

/// Checkpoints come by time, not only every 100 entries: a log of a few entries, never stopped
/// gracefully, is signed within the interval, and the checkpoint also goes into the chain (so
/// every sink receives it). Deleting the newest entries together with the stored checkpoints
/// then passes in the cluster alone but not against the copy kept outside; a line that no
/// longer reads as an entry is tampering, named with its segment and line.
#[tokio::test]
async fn checkpoints_come_by_time_reach_the_chain_and_outside_copies_catch_deletions() {
    let client = operator().await;
    let ns = log_namespace(&client, "auditcp").await;
    let key = SigningKey::from_seed(&SEED).unwrap();
    let public = dvo_operator::hex(&key.public_key());
    let log = AuditLog::start_with_interval(client.clone(), &ns, key, Duration::from_secs(1));
    for i in 0..3 {
        log.record(draft(i, "t")).await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let carrier = loop {
        let (segments, _) = load(&client, &ns).await.unwrap();
        let found = segments
            .iter()
            .flat_map(|s| &s.entries)
            .find(|e| e.draft.event_type == EventType::CheckpointSigned)
            .cloned();
        if let Some(e) = found {
            break e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint by time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(carrier.draft.metadata["seq"], 3);
    let outside = std::env::temp_dir().join(format!("dvo-checkpoint-{}.jsonl", std::process::id()));
    std::fs::write(&outside, serde_json::to_string(&carrier).unwrap() + "\n").unwrap();
    drop(log);

    // Someone who can edit ConfigMaps deletes the newest entries and every stored checkpoint.
    let api = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    let mut cm = api.get("dvo-audit-000000").await.unwrap();
    let data = cm.data.as_mut().unwrap();
    let kept: Vec<&str> = data["entries.jsonl"].lines().take(2).collect();
    let kept = kept.join("\n") + "\n";
    data.insert("entries.jsonl".into(), kept.clone());
    data.insert("checkpoints.jsonl".into(), String::new());
    api.replace("dvo-audit-000000", &PostParams::default(), &cm)
        .await
        .unwrap();
    let verify_args = [
        "audit",
        "verify",
        "--namespace",
        &ns,
        "--public-key",
        &public,
    ];
    let (out, code) = dvo(&verify_args);
    assert_eq!(code, Some(0), "the cluster alone cannot tell: {out}");
    let mut with_copy = verify_args.to_vec();
    with_copy.extend(["--checkpoint", outside.to_str().unwrap()]);
    let (out, code) = dvo(&with_copy);
    assert_eq!(code, Some(3), "{out}");
    assert!(out.starts_with("TAMPERED: Truncated at seq 3"), "{out}");

    // A line made unreadable is tampering, not bad input.
    let mut cm = api.get("dvo-audit-000000").await.unwrap();
    let data = cm.data.as_mut().unwrap();
    let mut lines: Vec<String> = kept.lines().map(str::to_owned).collect();
    lines[1].replace_range(0..1, "[");
    data.insert("entries.jsonl".into(), lines.join("\n") + "\n");
    api.replace("dvo-audit-000000", &PostParams::default(), &cm)
        .await
        .unwrap();
    let (out, code) = dvo(&verify_args);
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.starts_with("TAMPERED: Unreadable at seq 2 (segment dvo-audit-000000): ConfigMap dvo-audit-000000: entries.jsonl line 2"),
        "{out}"
    );
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
    let created = create_as("developer", &ns, serde_json::to_value(&ad).unwrap()).await;
    let resource = format!("{ns}/gha");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let entry = loop {
        if let Some(e) = audit_entries(&client, &resource).await.into_iter().next() {
            break e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit entry for {resource}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // copilot-studio has no automated deployment: a person must act.
    assert_eq!(entry.draft.event_type, EventType::CapabilityBlocked);
    assert_eq!(entry.draft.user_id, "dev-dana");
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

/// A real rsyslogd receiving RFC 5424 over TCP on loopback, writing what it parsed to a file.
struct Rsyslog {
    peer: crate::support::Peer,
    port: u16,
}

impl Rsyslog {
    fn start(name: &str) -> Rsyslog {
        Rsyslog::start_with(name, false)
    }

    /// With `tls`, rsyslog serves TLS (its OpenSSL driver) with a certificate for 127.0.0.1 signed
    /// by `ca.pem` in its directory.
    fn start_with(name: &str, tls: bool) -> Rsyslog {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = crate::support::Peer::dir("rsyslog", name);
        let d = dir.display().to_string();
        let (global, module) = if tls {
            crate::support::loopback_tls(&dir);
            (
                format!(
                    r#" DefaultNetstreamDriver="ossl" DefaultNetstreamDriverCAFile="{d}/ca.pem" DefaultNetstreamDriverCertFile="{d}/server.pem" DefaultNetstreamDriverKeyFile="{d}/server.key""#
                ),
                r#" StreamDriver.Name="ossl" StreamDriver.Mode="1" StreamDriver.AuthMode="anon""#
                    .to_owned(),
            )
        } else {
            (String::new(), String::new())
        };
        let conf = format!(
            r#"global(workDirectory="{d}"{global})
module(load="imtcp"{module})
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="fields" type="string" string="%syslogfacility%|%syslogseverity%|%hostname%|%app-name%|%msgid%|%structured-data%|%msg%\n")
*.* action(type="omfile" file="{d}/out.log" template="fields")
"#
        );
        std::fs::write(dir.join("rsyslog.conf"), conf).unwrap();
        let child = std::process::Command::new("rsyslogd")
            .args(["-n", "-f"])
            .arg(dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(dir.join("rsyslog.pid"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("rsyslogd (Debian package rsyslog; .ci/run installs it)");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "rsyslogd did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Rsyslog {
            peer: crate::support::Peer { child, dir },
            port,
        }
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.peer.dir.join("out.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    async fn wait_lines(&self, n: usize) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let lines = self.lines();
            if lines.len() >= n {
                return lines;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "rsyslog wrote {} of {n} lines: {lines:?}",
                lines.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn the_syslog_sink_delivers_cef_to_rsyslog_and_resumes_from_its_cursor() {
    let client = operator().await;
    let ns = log_namespace(&client, "auditsyslog").await;
    let rsyslog = Rsyslog::start("cef");
    let log = AuditLog::start(client.clone(), &ns, SigningKey::from_seed(&SEED).unwrap());
    let mut failed = draft(0, "s");
    failed.event_type = EventType::DeploymentFailed;
    failed.status = "failure".into();
    failed.environment = Some("production".into());
    failed.platform = Some("langchain".into());
    log.record(failed).await.unwrap();
    for i in 1..4 {
        log.record(draft(i, "s")).await.unwrap();
    }
    let target: Target = format!("syslog+tcp://127.0.0.1:{}?payload=cef", rsyslog.port)
        .parse()
        .unwrap();
    let task = RunningSink::start(&client, &ns, "siem", target.clone());
    let lines = rsyslog.wait_lines(4).await;
    // facility 13 (log audit), severity err for the failure; CEF with the seed's labels.
    let first: Vec<&str> = lines[0].splitn(7, '|').collect();
    assert_eq!(
        &first[..5],
        &["13", "3", "dvo-operator", "dvo-operator", "audit"],
        "{}",
        lines[0]
    );
    assert_eq!(first[5], "[dvo@32473 seq=\"1\"]");
    assert!(
        first[6].starts_with("CEF:0|KesselDigital|CAAT-DVO|1.0|deployment_failed|evaluate|7|"),
        "{}",
        first[6]
    );
    assert!(
        first[6].contains("cs1=production cs1Label=Environment cs2=langchain cs2Label=Platform"),
        "{}",
        first[6]
    );
    task.stop().await;

    // A restarted sink resumes after its cursor: no entry is delivered twice.
    log.record(draft(4, "s")).await.unwrap();
    let task = RunningSink::start(&client, &ns, "siem", target);
    // Entries go out in order, so a redelivery of 1-4 would be written before 5 shows up.
    let lines = rsyslog.wait_lines(5).await;
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert!(lines[4].contains("seq=\"5\""), "{}", lines[4]);
    task.stop().await;
}

#[tokio::test]
async fn retention_deletes_whole_old_segments_and_says_so() {
    let client = operator().await;
    let ns = log_namespace(&client, "auditretention").await;
    let log = AuditLog::start(client.clone(), &ns, SigningKey::from_seed(&SEED).unwrap());
    for i in 0..300 {
        log.record(draft(i, "r")).await.unwrap();
    }
    let (before, _) = load(&client, &ns).await.unwrap();
    assert!(before.len() >= 2, "{} segments", before.len());
    let cutoff = "2030-01-01T00:00:00Z".parse().unwrap();
    let deleted = dvo_operator::audit::store::apply_retention(&client, &ns, &log, cutoff)
        .await
        .unwrap();
    assert_eq!(
        deleted,
        before[..before.len() - 1]
            .iter()
            .map(|s| s.name.clone())
            .collect::<Vec<_>>()
    );
    let (after, checkpoints) = load(&client, &ns).await.unwrap();
    let public = SigningKey::from_seed(&SEED).unwrap().public_key();
    let report = verify(&after, &checkpoints, &public).unwrap();
    assert!(report.first_seq > 1 && report.last_seq > 300, "{report:?}");
    let retention = after
        .iter()
        .flat_map(|s| &s.entries)
        .find(|e| e.draft.event_type == EventType::RetentionApplied)
        .unwrap();
    assert_eq!(retention.draft.metadata["deleted_segments"], json!(deleted));
}

/// A stand-in for Splunk's HTTP Event Collector on loopback: answers the first event request
/// "busy" (code 9), then accepts with an ack id, and acknowledges it on the ack endpoint.
async fn fake_hec() -> (
    u16,
    std::sync::Arc<std::sync::Mutex<Vec<(String, String, String, String)>>>,
) {
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use std::sync::{Arc, Mutex};
    type Seen = Arc<Mutex<Vec<(String, String, String, String)>>>;
    let seen: Seen = Arc::default();
    let record = |path: &str, headers: &HeaderMap, body: String, seen: &Seen| {
        let h = |k: &str| {
            headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        seen.lock().unwrap().push((
            path.to_owned(),
            h("authorization"),
            h("x-splunk-request-channel"),
            body,
        ));
    };
    let app = axum::Router::new()
        .route(
            "/services/collector/event",
            axum::routing::post(
                move |State(seen): State<Seen>, headers: HeaderMap, body: String| async move {
                    record("event", &headers, body, &seen);
                    if headers.get("authorization").and_then(|v| v.to_str().ok())
                        != Some("Splunk good-token")
                    {
                        return (
                            StatusCode::FORBIDDEN,
                            r#"{"text":"Invalid token","code":4}"#.to_owned(),
                        );
                    }
                    let n = seen
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|s| s.0 == "event")
                        .count();
                    if n == 1 {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            r#"{"text":"Server is busy","code":9}"#.to_owned(),
                        )
                    } else {
                        (
                            StatusCode::OK,
                            format!(r#"{{"text":"Success","code":0,"ackId":{n}}}"#),
                        )
                    }
                },
            ),
        )
        .route(
            "/services/collector/ack",
            axum::routing::post(
                move |State(seen): State<Seen>, headers: HeaderMap, body: String| async move {
                    record("ack", &headers, body.clone(), &seen);
                    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["acks"][0]
                        .as_u64()
                        .unwrap();
                    (StatusCode::OK, format!(r#"{{"acks":{{"{id}":true}}}}"#))
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, seen)
}

#[tokio::test]
async fn the_splunk_sink_batches_retries_when_busy_and_waits_for_the_ack() {
    use dvo_operator::audit::sink::http::Splunk;
    let client = operator().await;
    let ns = log_namespace(&client, "auditsplunk").await;
    let (port, seen) = fake_hec().await;
    let log = AuditLog::start(client.clone(), &ns, SigningKey::from_seed(&SEED).unwrap());
    for i in 0..3 {
        log.record(draft(i, "h")).await.unwrap();
    }
    let splunk = |token: &str| Splunk {
        base: format!("http://127.0.0.1:{port}"),
        token: token.to_owned(),
        index: Some("dvo_audit".into()),
        ack_channel: Some("0f8e3c5a-1b2d-4e6f-8a9b-0c1d2e3f4a5b".into()),
    };
    let cursor = |client: Client, ns: String| async move {
        let cm = Api::<ConfigMap>::namespaced(client, &ns)
            .get_opt("dvo-audit-cursor-splunk")
            .await
            .unwrap();
        cm.and_then(|c| c.data).and_then(|d| d.get("seq").cloned())
    };
    let task = RunningSink::start(&client, &ns, "splunk", Target::Splunk(splunk("good-token")));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while cursor(client.clone(), ns.clone()).await.as_deref() != Some("3") {
        assert!(
            std::time::Instant::now() < deadline,
            "the cursor never reached 3: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    task.stop().await;
    let seen_handle = seen.clone();
    let seen = seen.lock().unwrap().clone();
    let events: Vec<_> = seen.iter().filter(|s| s.0 == "event").collect();
    assert_eq!(events.len(), 2, "busy once, then accepted: {seen:?}");
    assert!(
        seen.iter().any(|s| s.0 == "ack"),
        "the ack endpoint was asked"
    );
    let (_, auth, channel, body) = events[1];
    assert_eq!(
        (auth.as_str(), channel.as_str()),
        ("Splunk good-token", "0f8e3c5a-1b2d-4e6f-8a9b-0c1d2e3f4a5b")
    );
    let lines: Vec<serde_json::Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "one request carries the batch");
    assert_eq!(lines[0]["index"], "dvo_audit");
    assert_eq!(lines[0]["sourcetype"], "dvo:audit");
    assert_eq!(lines[2]["event"]["seq"], 3);

    // A bad token never advances a new sink's cursor.
    let bad = RunningSink::start(&client, &ns, "badtoken", Target::Splunk(splunk("wrong")));
    log.record(draft(3, "h")).await.unwrap();
    let refused = std::time::Instant::now() + Duration::from_secs(30);
    while !seen_handle
        .lock()
        .unwrap()
        .iter()
        .any(|s| s.1 == "Splunk wrong")
    {
        assert!(
            std::time::Instant::now() < refused,
            "the bad token was never tried"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bad.stop().await;
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get_opt("dvo-audit-cursor-badtoken")
        .await
        .unwrap();
    assert!(cm.is_none(), "no cursor for a sink that delivered nothing");
}

#[tokio::test]
async fn the_webhook_sink_posts_signed_batches() {
    use axum::http::HeaderMap;
    use dvo_operator::audit::sink::http;
    use std::sync::{Arc, Mutex};
    let client = operator().await;
    let ns = log_namespace(&client, "auditwebhook").await;
    let got: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let store = got.clone();
    let app = axum::Router::new().route(
        "/audit",
        axum::routing::post(move |headers: HeaderMap, body: String| async move {
            let sig = headers
                .get(http::SIGNATURE_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            store.lock().unwrap().push((sig, body));
            "ok"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let log = AuditLog::start(client.clone(), &ns, SigningKey::from_seed(&SEED).unwrap());
    for i in 0..2 {
        log.record(draft(i, "w")).await.unwrap();
    }
    let target = Target::Webhook {
        url: format!("http://127.0.0.1:{port}/audit"),
        secret: Some("s3cret".into()),
    };
    let task = RunningSink::start(&client, &ns, "hook", target);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while got.lock().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "nothing was posted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    task.stop().await;
    let (sig, body) = got.lock().unwrap()[0].clone();
    assert_eq!(
        sig,
        http::signature("s3cret", &body),
        "the receiver can check the sender"
    );
    let entries: Vec<dvo_operator::audit::Entry> = serde_json::from_str(&body).unwrap();
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
}

#[tokio::test]
async fn the_azure_sink_gets_a_token_and_honours_retry_after() {
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    use dvo_operator::audit::sink::azure;
    use std::sync::{Arc, Mutex};
    type Seen = Arc<Mutex<Vec<(String, String, String)>>>;
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route(
            "/{tenant}/oauth2/v2.0/token",
            axum::routing::post(
                |State(seen): State<Seen>, Path(tenant): Path<String>, body: String| async move {
                    seen.lock().unwrap().push(("token".into(), tenant, body));
                    (
                        StatusCode::OK,
                        r#"{"token_type":"Bearer","expires_in":3600,"access_token":"tok-123"}"#,
                    )
                },
            ),
        )
        .route(
            "/dataCollectionRules/{dcr}/streams/{stream}",
            axum::routing::post(
                |State(seen): State<Seen>,
                 Path((dcr, stream)): Path<(String, String)>,
                 headers: HeaderMap,
                 body: String| async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let first = !seen.lock().unwrap().iter().any(|s| s.0 == "upload");
                    seen.lock().unwrap().push((
                        "upload".into(),
                        format!("{dcr}/{stream} {auth}"),
                        body,
                    ));
                    if first {
                        (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")])
                    } else {
                        (StatusCode::NO_CONTENT, [("retry-after", "0")])
                    }
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = operator().await;
    let ns = log_namespace(&client, "auditazure").await;
    let log = AuditLog::start(client.clone(), &ns, SigningKey::from_seed(&SEED).unwrap());
    for i in 0..3 {
        log.record(draft(i, "z")).await.unwrap();
    }
    let base = format!("http://127.0.0.1:{port}");
    let target = Target::Azure(Arc::new(azure::Azure::new(
        &base,
        "dcr-0001",
        "Custom-DvoAudit_CL",
        &base,
        "tenant-1",
        "client-1",
        azure::Credential::Secret("s3cret".into()),
    )));
    let task = RunningSink::start(&client, &ns, "azure", target);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.0 == "upload")
        .count()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    task.stop().await;
    let seen = seen.lock().unwrap().clone();
    let token = seen.iter().find(|s| s.0 == "token").unwrap();
    assert_eq!(token.1, "tenant-1");
    for want in [
        "grant_type=client_credentials",
        "client_id=client-1",
        "client_secret=s3cret",
        "scope=https%3A%2F%2Fmonitor.azure.com%2F%2F.default",
    ] {
        assert!(token.2.contains(want), "{want} in {}", token.2);
    }
    let uploads: Vec<_> = seen.iter().filter(|s| s.0 == "upload").collect();
    assert_eq!(uploads[1].1, "dcr-0001/Custom-DvoAudit_CL Bearer tok-123");
    let records: Vec<serde_json::Value> = serde_json::from_str(&uploads[1].2).unwrap();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0]["TimeGenerated"], "2026-11-24T10:00:00Z");
    assert_eq!(
        uploads[0].2, uploads[1].2,
        "the throttled chunk is sent again as it was"
    );
}

/// Tampering by someone who can edit ConfigMaps (but cannot read the checkpoint key), each case
/// on a fresh log, each reported by `dvo audit verify` with its kind.
#[tokio::test]
async fn admin_tampering_is_reported() {
    let client = operator().await;
    let public = dvo_operator::hex(&SigningKey::from_seed(&SEED).unwrap().public_key());
    let verify_cli = |ns: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dvo"))
            .env("KUBECONFIG", control_plane().kubeconfig("admin"))
            .args([
                "audit",
                "verify",
                "--namespace",
                ns,
                "--public-key",
                &public,
            ])
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            out.status.code(),
        )
    };
    let lines_of = |cm: &ConfigMap| {
        cm.data.as_ref().unwrap()["entries.jsonl"]
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let mut dropped_from = 0;
    for case in ["recreate-sealed", "drop-newest", "rewrite-all"] {
        let ns = log_namespace(&client, &format!("tamper-{case}")).await;
        let log = AuditLog::start(client.clone(), &ns, SigningKey::from_seed(&SEED).unwrap());
        // Concurrent records: group commit keeps this quick.
        let tasks: Vec<_> = (0..300)
            .map(|i| {
                let (log, d) = (log.clone(), draft(i, case));
                tokio::spawn(async move { log.record(d).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        log.checkpoint().await.unwrap();
        assert_eq!(verify_cli(&ns).1, Some(0), "{case}: intact first");
        let api = Api::<ConfigMap>::namespaced(client.clone(), &ns);
        let mut cms = api
            .list(&ListParams::default().labels(SEGMENT_LABEL))
            .await
            .unwrap()
            .items;
        cms.sort_by_key(|c| c.name_any());
        let want = match case {
            "recreate-sealed" => {
                // Sealed segments are immutable, but can be deleted and recreated with other content.
                let sealed = cms
                    .iter()
                    .find(|c| c.immutable == Some(true))
                    .expect("a sealed segment")
                    .clone();
                let mut lines = lines_of(&sealed);
                lines[10] = lines[10].replace("rosa-release", "mallory");
                api.delete(&sealed.name_any(), &Default::default())
                    .await
                    .unwrap();
                let mut copy = sealed.clone();
                copy.metadata = kube::api::ObjectMeta {
                    name: sealed.metadata.name.clone(),
                    labels: sealed.metadata.labels.clone(),
                    annotations: sealed.metadata.annotations.clone(),
                    ..Default::default()
                };
                copy.data
                    .as_mut()
                    .unwrap()
                    .insert("entries.jsonl".into(), lines.join("\n") + "\n");
                api.create(&PostParams::default(), &copy).await.unwrap();
                "TAMPERED: HashMismatch at seq 11"
            }
            "drop-newest" => {
                let mut newest = cms.last().unwrap().clone();
                let lines = lines_of(&newest);
                let kept = lines[..lines.len() - 3].join("\n") + "\n";
                let first_dropped: serde_json::Value =
                    serde_json::from_str(&lines[lines.len() - 3]).unwrap();
                dropped_from = first_dropped["seq"].as_u64().unwrap();
                newest
                    .data
                    .as_mut()
                    .unwrap()
                    .insert("entries.jsonl".into(), kept);
                api.replace(&newest.name_any(), &PostParams::default(), &newest)
                    .await
                    .unwrap();
                "TAMPERED: Truncated at seq"
            }
            _ => {
                // Rewrite every entry with fresh hashes (and links), keeping the old checkpoints.
                let (segments, _) = load(&client, &ns).await.unwrap();
                let mut head: Option<dvo_operator::audit::Link> = None;
                for (segment, cm) in segments.iter().zip(cms.iter()) {
                    let mut lines = Vec::new();
                    for e in &segment.entries {
                        let mut d = e.draft.clone();
                        d.user_id = "mallory".into();
                        let forged = dvo_operator::audit::append(head.as_ref(), d).unwrap();
                        head = Some(forged.link());
                        lines.push(serde_json::to_string(&forged).unwrap());
                    }
                    api.delete(&cm.name_any(), &Default::default())
                        .await
                        .unwrap();
                    let mut copy = cm.clone();
                    // The forger relinks the segments through the forged heads.
                    copy.metadata = kube::api::ObjectMeta {
                        name: cm.metadata.name.clone(),
                        labels: cm.metadata.labels.clone(),
                        annotations: None,
                        ..Default::default()
                    };
                    copy.immutable = None;
                    copy.data
                        .as_mut()
                        .unwrap()
                        .insert("entries.jsonl".into(), lines.join("\n") + "\n");
                    api.create(&PostParams::default(), &copy).await.unwrap();
                }
                // At the first checkpoint: where the first segment was sealed.
                "TAMPERED: CheckpointMismatch at seq "
            }
        };
        let (out, code) = verify_cli(&ns);
        assert_eq!(code, Some(3), "{case}: {out}");
        assert!(out.starts_with(want), "{case}: {out}");
        if case == "drop-newest" {
            assert!(
                out.starts_with(&format!("{want} {dropped_from}:")),
                "{case}: {out}"
            );
        }
    }
}

/// Restarts mid-flow neither lose nor duplicate facts: after two restarts the flow goes on, and
/// every fact of it is in the log exactly once.
#[tokio::test]
async fn restarts_neither_lose_nor_duplicate_audit_facts() {
    let client = operator().await;
    let ns = namespace(&client, "auditrestart").await;
    let policy: dvo_operator::crd::DeploymentPolicy = serde_json::from_value(json!({
        "apiVersion": "dvo.caat.io/v1alpha1", "kind": "DeploymentPolicy", "metadata": {"name": format!("{ns}-approve")},
        "spec": {"action": "RequireApproval", "approval": {"roles": ["release_manager"]}, "scope": {"namespaces": [ns]}},
    }))
    .unwrap();
    Api::<dvo_operator::crd::DeploymentPolicy>::all(client.clone())
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    let ad: dvo_operator::crd::AgentDeployment = serde_json::from_value(json!({
        "apiVersion": "dvo.caat.io/v1alpha1", "kind": "AgentDeployment", "metadata": {"name": "gha"},
        "spec": {"agent": "RST", "platform": "langchain", "environment": "staging",
                 "template": {"spec": {"containers": [{"name": "a", "image": "rst:1"}]}}},
    }))
    .unwrap();
    let digest = dvo_operator::crd::agent_deployment::spec_digest(&ad.spec);
    // Requested by ops-omar, stamped by the admission webhook.
    create_as("operator", &ns, serde_json::to_value(&ad).unwrap()).await;
    let resource = format!("{ns}/gha");
    let facts = || async {
        let mut keys: Vec<String> = audit_entries(&client, &resource)
            .await
            .into_iter()
            .map(|e| e.draft.idempotency_key)
            .collect();
        keys.sort();
        keys
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let wanted = ["approval-requested", "phase/PendingApproval"];
    let before = loop {
        let keys = facts().await;
        if wanted.iter().all(|w| keys.iter().any(|k| k.starts_with(w))) {
            break keys;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "facts never recorded: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    crate::support::restart_operator().await;
    crate::support::restart_operator().await;
    // The flow goes on after the restarts: a release manager approves, and the restarted
    // operator rolls out.
    let apr = dvo_operator::controller::agent_deployment::approval_request_name("gha", 1, &digest);
    let (out, ok) = crate::support::control_plane().kubectl(
        "release-manager-1",
        &["annotate", "-n", &ns, "apr", &apr, "dvo.caat.io/approve=ok"],
    );
    assert!(ok, "{out}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let after = loop {
        let keys = facts().await;
        if keys.iter().any(|k| k.starts_with("rollout/")) {
            break keys;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no rollout recorded after the restarts: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut unique = after.clone();
    unique.dedup();
    assert_eq!(after, unique, "no fact twice: {after:?}");
    for fact in &before {
        assert!(after.contains(fact), "{fact} was lost");
    }
}

/// The action after an append fails (a ValidatingAdmissionPolicy refuses the Deployment), the
/// operator is restarted while it waits, and the action then happens: the rollout is recorded
/// once, before it happened, and not again.
#[tokio::test]
async fn an_action_that_fails_after_its_append_is_retried_without_a_second_entry() {
    let client = operator().await;
    let ns = namespace(&client, "auditahead").await;
    crate::support::hold_deployments(&client, &ns).await;
    let deployments =
        Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), &ns);

    let ad: dvo_operator::crd::AgentDeployment = serde_json::from_value(json!({
        "apiVersion": "dvo.caat.io/v1alpha1", "kind": "AgentDeployment", "metadata": {"name": "gha"},
        "spec": {"agent": "AHD", "platform": "langchain", "environment": "staging",
                 "template": {"spec": {"containers": [{"name": "a", "image": "ahd:1"}]}}},
    }))
    .unwrap();
    create_as("operator", &ns, serde_json::to_value(&ad).unwrap()).await;
    let resource = format!("{ns}/gha");
    let rollouts = || async {
        audit_entries(&client, &resource)
            .await
            .iter()
            .filter(|e| e.draft.idempotency_key.starts_with("rollout/"))
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while rollouts().await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the rollout was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        deployments.get_opt("gha").await.unwrap().is_none(),
        "recorded before it happened"
    );
    crate::support::restart_operator().await;
    crate::support::release_deployments(&client, &ns).await;
    crate::support::wait_for(
        &deployments,
        "gha",
        |d: Option<&k8s_openapi::api::apps::v1::Deployment>| d.is_some(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(rollouts().await, 1, "the rollout is recorded exactly once");
}

#[tokio::test]
async fn the_syslog_sink_speaks_tls_to_rsyslog() {
    let client = operator().await;
    let ns = log_namespace(&client, "auditsyslogtls").await;
    let rsyslog = Rsyslog::start_with("tls", true);
    let log = AuditLog::start(client.clone(), &ns, SigningKey::from_seed(&SEED).unwrap());
    log.record(draft(0, "tls")).await.unwrap();
    let url = format!(
        "syslog+tls://127.0.0.1:{}?payload=json&ca-file={}",
        rsyslog.port,
        rsyslog.peer.dir.join("ca.pem").display()
    );
    let target: Target = url.parse().unwrap();
    let task = RunningSink::start(&client, &ns, "tls", target);
    let lines = rsyslog.wait_lines(1).await;
    task.stop().await;
    let body = lines[0].splitn(7, '|').nth(6).unwrap();
    let entry: dvo_operator::audit::Entry = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(entry.seq, 1);
    // A server whose certificate the CA did not sign is refused.
    let other = std::env::temp_dir().join(format!("dvo-other-ca-{}.pem", std::process::id()));
    crate::support::self_signed("other", Path::new("/dev/null"), &other);
    let wrong: Target = format!(
        "syslog+tls://127.0.0.1:{}?ca-file={}",
        rsyslog.port,
        other.display()
    )
    .parse()
    .unwrap();
    let mut sink = Sink::new("wrong-ca", wrong);
    let err = sink.deliver(&[]).await.unwrap_err();
    assert!(err.contains("TLS with syslog"), "{err}");
}

/// A sink fed from the log in a namespace, until stopped.
pub struct RunningSink {
    stop: tokio::sync::oneshot::Sender<()>,
    /// The task feeding it (abort it to kill it where it stands).
    pub task: tokio::task::JoinHandle<()>,
}

impl RunningSink {
    fn start(client: &Client, ns: &str, name: &str, target: Target) -> RunningSink {
        RunningSink::outbox(client, ns, Sink::new(name, target))
    }

    /// Any reader of the log after its cursor (a sink, a notification channel).
    pub fn outbox(client: &Client, ns: &str, outbox: impl sink::Outbox + 'static) -> RunningSink {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(sink::run(
            client.clone(),
            ns.to_owned(),
            outbox,
            async move {
                let _ = stopped.await;
            },
            |_: Option<&str>| {},
        ));
        RunningSink { stop, task }
    }

    /// Stops it and waits until it has.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

#[tokio::test]
async fn an_append_is_one_write_whatever_the_size_of_the_log() {
    let client = operator().await;
    let ns = log_namespace(&client, "auditcost").await;
    // A log of three segments and more, written by another writer.
    let filler = AuditLog::start(client.clone(), &ns, SigningKey::from_seed(&SEED).unwrap());
    let tasks: Vec<_> = (0..700)
        .map(|i| {
            let log = filler.clone();
            tokio::spawn(async move { log.record(draft(i, "fill")).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    // A new writer whose every request is counted.
    let counts = dvo_operator::client::Counts::default();
    let kubeconfig =
        kube::config::Kubeconfig::read_from(control_plane().kubeconfig("admin")).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let counted = dvo_operator::client::counted_in(config, counts.clone()).unwrap();
    let log = AuditLog::start(counted, &ns, SigningKey::from_seed(&SEED).unwrap());
    for i in 0..100 {
        log.record(draft(i, "counted")).await.unwrap();
    }
    let n = |verb: &str| {
        counts
            .get_or_create(&dvo_operator::metrics::RequestLabels {
                verb: verb.to_owned(),
                resource: "configmaps".to_owned(),
            })
            .get()
    };
    // Finding the head once: the segments' names, the newest and the one before it.
    assert_eq!(n("list"), 1, "one metadata list to find the newest segment");
    assert!(n("get") <= 3, "{} reads", n("get"));
    // Then each append is one conditional write (plus a create when a segment is sealed).
    assert_eq!(n("update"), 100);
    let seals = 100 * 1100 / dvo_operator::audit::store::SEGMENT_BYTES as u64 + 1;
    assert!(n("create") <= seals, "{} creates", n("create"));
    let (segments, checkpoints) = load(&client, &ns).await.unwrap();
    assert!(segments.len() >= 3);
    let public = SigningKey::from_seed(&SEED).unwrap().public_key();
    let report = verify(&segments, &checkpoints, &public).unwrap();
    assert_eq!(
        report.entries as usize,
        segments.iter().map(|s| s.entries.len()).sum::<usize>()
    );
}
