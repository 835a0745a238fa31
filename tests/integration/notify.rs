//! Notifications against real peers: loopback HTTP receivers standing in for Slack, Teams and a
//! webhook, and a real SMTP server (aiosmtpd: STARTTLS and AUTH required), fed by the real
//! operator's audit log from a real approval flow; and the outbox's promises under failure
//! (429 with Retry-After, a channel that is down, a notifier killed mid-retry).

use std::collections::VecDeque;
use std::io::BufRead;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use dvo_operator::audit::sink::http;
use dvo_operator::audit::store::AuditLog;
use dvo_operator::audit::{Draft, EventType, SigningKey};
use dvo_operator::crd::agent_deployment::Phase;
use dvo_operator::identity::RoleMapping;
use dvo_operator::notify::Config;
use dvo_operator::notify::send::{Mapping, Notifier};
use kube::Api;
use serde_json::{Value, json};

use crate::audit::RunningSink;
use crate::support::*;

/// A request a receiver acknowledged.
#[derive(Clone, Debug)]
struct Got {
    path: String,
    delivery: String,
    signature: String,
    body: String,
    at: Instant,
}

/// Answers queued ahead of 200: status and `Retry-After` seconds.
type Answers = Arc<Mutex<VecDeque<(u16, Option<u64>)>>>;

/// A loopback HTTP receiver: answers each request with the next queued status (and
/// `Retry-After`), then 200; records what it acknowledged and counts every attempt.
#[derive(Clone)]
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Got>>>,
    answers: Answers,
    attempts: Arc<Mutex<Vec<Instant>>>,
    down: Arc<AtomicUsize>,
    /// While set, requests are held unanswered.
    hold: Arc<AtomicUsize>,
}

impl Receiver {
    async fn start() -> Receiver {
        let r = Receiver {
            port: 0,
            got: Arc::default(),
            answers: Arc::default(),
            attempts: Arc::default(),
            down: Arc::default(),
            hold: Arc::default(),
        };
        let state = r.clone();
        let app = axum::Router::new().route(
            "/{*path}",
            axum::routing::post(
                move |axum::extract::Path(path): axum::extract::Path<String>,
                      headers: HeaderMap,
                      body: String| {
                    let s = state.clone();
                    async move {
                        s.attempts.lock().unwrap().push(Instant::now());
                        while s.hold.load(Ordering::SeqCst) > 0 {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        let h = |k: &str| {
                            headers
                                .get(k)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned()
                        };
                        let mut out = HeaderMap::new();
                        if s.down.load(Ordering::SeqCst) > 0 {
                            return (StatusCode::SERVICE_UNAVAILABLE, out, "down".to_owned());
                        }
                        if let Some((status, after)) = s.answers.lock().unwrap().pop_front() {
                            if let Some(a) = after {
                                out.insert("retry-after", a.to_string().parse().unwrap());
                            }
                            return (StatusCode::from_u16(status).unwrap(), out, "not now".into());
                        }
                        s.got.lock().unwrap().push(Got {
                            path,
                            delivery: h("x-dvo-delivery"),
                            signature: h(http::SIGNATURE_HEADER),
                            body,
                            at: Instant::now(),
                        });
                        (StatusCode::OK, out, "ok".to_owned())
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { port, ..r }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    fn got(&self, path: &str) -> Vec<Got> {
        let all = self.got.lock().unwrap();
        all.iter().filter(|g| g.path == path).cloned().collect()
    }
}

/// A real SMTP server (tests/peers/smtp.py) on loopback.
struct Smtp {
    peer: Peer,
    port: u16,
}

impl Smtp {
    /// Refusing the first `refuse` mails with a temporary error (451).
    fn start(name: &str, refuse: usize) -> Smtp {
        let dir = Peer::dir("smtp", name);
        loopback_tls(&dir);
        let port = free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/smtp.py");
        let d = |f: &str| dir.join(f).display().to_string();
        let mut child = std::process::Command::new("python3")
            .args([
                script,
                "--port",
                &port.to_string(),
                "--cert",
                &d("server.pem"),
            ])
            .args([
                "--key",
                &d("server.key"),
                "--user",
                "dvo",
                "--password",
                "mail-pw",
            ])
            .args(["--out", &d("mail.jsonl"), "--refuse", &refuse.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 tests/peers/smtp.py (pip install aiosmtpd)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the SMTP server did not start");
        Smtp {
            peer: Peer { child, dir },
            port,
        }
    }

    /// The mails it accepted: (envelope recipients, whole message, over TLS).
    fn mails(&self) -> Vec<(Vec<String>, String, bool)> {
        let text = std::fs::read_to_string(self.peer.dir.join("mail.jsonl")).unwrap_or_default();
        text.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                let to = v["to"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_str().unwrap().to_owned())
                    .collect();
                (
                    to,
                    v["data"].as_str().unwrap().to_owned(),
                    v["tls"] == json!(true),
                )
            })
            .collect()
    }
}

fn notifier(yaml: &str, mapping: RoleMapping, secrets: &[(&str, &str)]) -> Vec<Notifier> {
    let config = Config::parse(yaml).unwrap();
    let mapping: Mapping = Arc::new(move || Ok(mapping.clone()));
    let secrets: Vec<(String, String)> = secrets
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    config
        .channels
        .into_iter()
        .map(|c| {
            Notifier::new(c, mapping.clone(), &|var| {
                secrets
                    .iter()
                    .find(|(k, _)| k == var)
                    .map(|(_, v)| v.clone())
            })
            .unwrap()
        })
        .collect()
}

/// Waits until the channel's cursor exists: it started (at the newest entry).
async fn started(client: &kube::Client, ns: &str, channel: &str) -> Option<String> {
    let api = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), ns);
    let name = format!("dvo-notify-cursor-{channel}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(cm) = api.get_opt(&name).await.unwrap() {
            return cm.data.and_then(|d| d.get("seq").cloned());
        }
        assert!(Instant::now() < deadline, "{name} never appeared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn cluster_mapping(client: &kube::Client) -> RoleMapping {
    let cm = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), OPERATOR_NS)
        .get(dvo_operator::controller::ROLE_MAPPING_CONFIGMAP)
        .await
        .unwrap();
    RoleMapping::parse(&cm.data.unwrap()[dvo_operator::controller::ROLE_MAPPING_KEY]).unwrap()
}

#[tokio::test]
async fn an_approval_flow_reaches_slack_teams_a_webhook_and_mail() {
    let client = operator().await;
    let ns = namespace(&client, "notify").await;
    let web = Receiver::start().await;
    // The first mail is refused for now (451): it goes again, once.
    let smtp = Smtp::start(&ns, 1);
    let rm_group = &identity("release-manager-1").groups[0];
    let ca = smtp.peer.dir.join("ca.pem").display().to_string();
    let hook = format!("{ns}-hook");
    let yaml = format!(
        "channels:
- {{name: {ns}-slack, slack: {{url: '{}'}}, events: [approvalRequested, deployed], namespaces: [{ns}]}}
- {{name: {ns}-teams, teams: {{urlEnv: TEAMS_URL}}, roles: [release_manager], namespaces: [{ns}]}}
- {{name: {hook}, webhook: {{url: '{}', secretEnv: HOOK_SECRET}}, events: [breakGlassUsed], namespaces: [{ns}]}}
- {{name: {ns}-mail, smtp: {{server: '127.0.0.1:{}', from: 'dvo <dvo@example.com>', userEnv: SMTP_USER, passwordEnv: SMTP_PASSWORD, caFile: '{ca}', groups: {{'{rm_group}': rm@example.com}}}}, to: [cab@example.com], namespaces: [{ns}]}}
",
        web.url("slack"),
        web.url("hook"),
        smtp.port
    );
    let secrets = [
        ("TEAMS_URL", web.url("teams")),
        ("HOOK_SECRET", "hook-secret".to_owned()),
        ("SMTP_USER", "dvo".to_owned()),
        ("SMTP_PASSWORD", "mail-pw".to_owned()),
    ];
    let secrets: Vec<(&str, &str)> = secrets.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let running: Vec<RunningSink> = notifier(&yaml, cluster_mapping(&client).await, &secrets)
        .into_iter()
        .map(|n| RunningSink::outbox(&client, OPERATOR_NS, n))
        .collect();
    for channel in ["slack", "teams", "hook", "mail"] {
        started(&client, OPERATOR_NS, &format!("{ns}-{channel}")).await;
    }

    // A real flow: a policy holds the change for a release manager; one approves; it rolls out.
    scoped_policy(
        &client,
        &ns,
        "approve",
        json!({"action": "RequireApproval", "approval": {"roles": ["release_manager"]},
               "notify": {"onDeploy": ["deploys@example.com", format!("channel:{hook}")]}}),
    )
    .await;
    let manifest = json!({"apiVersion": "dvo.caat.io/v1alpha1", "kind": "AgentDeployment", "metadata": {"name": "gha"}, "spec": {
        "agent": "GHA", "platform": "langchain", "environment": "staging", "replicas": 1,
        "justification": "new <b>prompt</b> [see](https://evil.example)",
        "steps": {"healthCheck": false},
        "template": {"spec": {"containers": [{"name": "agent", "image": "gha:1"}]}},
    }});
    let ad = create_as("operator", &ns, manifest).await;
    phase(&client, &ns, "gha", Phase::PendingApproval).await;
    let apr = dvo_operator::controller::agent_deployment::approval_request_name(
        "gha",
        ad.metadata.generation.unwrap(),
        &dvo_operator::crd::agent_deployment::spec_digest(&ad.spec),
    );

    // Those who may approve hear of it where they are, with the command to do it.
    let approve = format!("kubectl dvo approve {apr} -n {ns}");
    let slack = until("the Slack message", || web.got("slack"), |g| !g.is_empty()).await;
    let block: Value = serde_json::from_str(&slack[0].body).unwrap();
    assert!(
        block["text"]
            .as_str()
            .unwrap()
            .starts_with("Approval needed: GHA to staging"),
        "{block}"
    );
    assert!(slack[0].body.contains(&approve), "{block}");
    assert!(slack[0].body.contains("1 of release_manager"), "{block}");
    assert_eq!(
        block["blocks"][2]["text"]["type"], "plain_text",
        "user text stays text: {block}"
    );
    let teams = until("the Teams card", || web.got("teams"), |g| !g.is_empty()).await;
    let card: Value = serde_json::from_str(&teams[0].body).unwrap();
    assert_eq!(
        card["attachments"][0]["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert!(teams[0].body.contains(&approve), "{card}");
    let mails = until("the approvers' mail", || smtp.mails(), |m| !m.is_empty()).await;
    let (to, text, tls) = &mails[0];
    assert_eq!(
        to,
        &vec!["cab@example.com".to_owned(), "rm@example.com".to_owned()]
    );
    assert!(tls, "STARTTLS was used");
    assert!(
        text.contains("Subject: Approval needed: GHA to staging"),
        "{text}"
    );
    assert!(
        text.contains(&approve) && text.contains("Requested by: ops-omar"),
        "{text}"
    );

    // The command the Teams card gives is the one that works.
    let blocks = card["attachments"][0]["content"]["body"]
        .as_array()
        .unwrap();
    let annotate = blocks
        .iter()
        .filter(|b| b["fontType"] == "Monospace")
        .filter_map(|b| b["text"].as_str())
        .find(|t| t.starts_with("kubectl annotate") && t.contains("/approve="))
        .unwrap_or_else(|| panic!("no approve command in {card}"));
    let args: Vec<&str> = annotate.split(' ').skip(1).collect();
    let (out, ok) = control_plane().kubectl("release-manager-1", &args);
    assert!(ok, "{annotate}: {out}");
    phase(&client, &ns, "gha", Phase::Deployed).await;

    // Teams (every kind, for release managers' requests): requested, granted, deployed.
    let teams = until(
        "granted and deployed on Teams",
        || web.got("teams"),
        |g| g.len() >= 3,
    )
    .await;
    let titles: Vec<String> = teams
        .iter()
        .map(|g| {
            serde_json::from_str::<Value>(&g.body).unwrap()["attachments"][0]["content"]["body"][0]
                ["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(titles.len(), 3, "{titles:?}");
    assert!(
        titles[0].starts_with("Approval needed")
            && titles[1].starts_with("Approved")
            && titles[2].starts_with("Deployed"),
        "{titles:?}"
    );
    // Slack takes requested and deployed only.
    let slack = until("deployed on Slack", || web.got("slack"), |g| g.len() >= 2).await;
    assert!(
        slack[1].body.contains("Deployed: GHA to staging"),
        "{}",
        slack[1].body
    );
    // The webhook takes break-glass only, but the policy names it for deployments: signed, keyed.
    let hooked = until(
        "the policy's webhook",
        || web.got("hook"),
        |g| !g.is_empty(),
    )
    .await;
    assert_eq!(
        hooked[0].signature,
        http::signature("hook-secret", &hooked[0].body)
    );
    let body: Value = serde_json::from_str(&hooked[0].body).unwrap();
    assert_eq!(body["kind"], "deployed");
    assert_eq!(body["entry"]["resource"], format!("{ns}/gha"));
    assert_eq!(hooked[0].delivery, body["delivery"].as_str().unwrap());
    // Mail: the deployment to the channel's list and the policy's address.
    let mails = until(
        "the deployment mail",
        || smtp.mails(),
        |m| m.iter().any(|(_, t, _)| t.contains("Subject: Deployed")),
    )
    .await;
    let deployed: Vec<_> = mails
        .iter()
        .filter(|(_, t, _)| t.contains("Subject: Deployed"))
        .collect();
    assert_eq!(
        deployed[0].0,
        vec![
            "cab@example.com".to_owned(),
            "deploys@example.com".to_owned()
        ]
    );

    if std::env::var("DVO_SHOW_PAYLOADS").is_ok() {
        eprintln!("SLACK {}\nTEAMS {}", slack[0].body, teams[0].body);
    }
    // Once each: nothing more arrives.
    for r in running {
        r.stop().await;
    }
    let keys: Vec<String> = web
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|g| g.delivery.clone())
        .collect();
    let mut unique = keys.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(keys.len(), unique.len(), "a delivery repeated: {keys:?}");
    assert_eq!(keys.len(), 2 + 3 + 1);
}

fn deployed(ns: &str, i: usize) -> Draft {
    let mut d = Draft::new(
        EventType::DeploymentCompleted,
        "dana@example.com",
        "Deployed",
        &format!("{ns}/agent-{i}"),
        "AgentDeployment",
        "success",
    );
    d.event_id = format!("e{i}");
    d.timestamp = "2026-11-26T10:00:00Z".into();
    d.idempotency_key = format!("deployed-{i}");
    d.environment = Some("production".into());
    d.agents = vec![format!("A{i}")];
    d
}

#[tokio::test]
async fn delivery_waits_as_asked_survives_a_kill_and_a_dead_channel_holds_back_only_itself() {
    let client = operator().await;
    let ns = namespace(&client, "notifykill").await;
    let log = AuditLog::start(
        client.clone(),
        &ns,
        SigningKey::from_seed(&[7; 32]).unwrap(),
    );
    let web = Receiver::start().await;
    let dead = free_port();
    let yaml = format!(
        "channels:
- {{name: good, webhook: {{url: '{}'}}}}
- {{name: dead, slack: {{url: 'http://127.0.0.1:{dead}/x'}}}}
",
        web.url("good")
    );
    let start = |n: Notifier| RunningSink::outbox(&client, &ns, n);
    let mut channels = notifier(&yaml, RoleMapping::default(), &[]).into_iter();
    let (good, dead) = (channels.next().unwrap(), channels.next().unwrap());
    // What was logged before a channel existed is not replayed: it starts at the newest entry.
    log.record(deployed(&ns, 0)).await.unwrap();
    let dead = start(dead);
    let good = start(good);
    assert_eq!(started(&client, &ns, "good").await.as_deref(), Some("1"));
    started(&client, &ns, "dead").await;

    // A receiver that asks to be left alone for 2 s, twice: the third attempt, 4 s later, lands.
    web.answers
        .lock()
        .unwrap()
        .extend([(429, Some(2)), (429, Some(2))]);
    log.record(deployed(&ns, 1)).await.unwrap();
    let got = until("entry 1", || web.got("good"), |g| g.len() == 1).await;
    let attempts = web.attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 3);
    for pair in attempts.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_secs(2),
            "Retry-After not honoured: {attempts:?}"
        );
    }
    assert!(got[0].at >= attempts[2]);

    // Down (503, no Retry-After) while entry 2 is appended; the notifier is killed mid-retry
    // (its task dropped where it stands, as kill -9 would).
    web.down.store(1, Ordering::SeqCst);
    log.record(deployed(&ns, 2)).await.unwrap();
    until(
        "an attempt at entry 2",
        || web.attempts.lock().unwrap().len(),
        |n| *n >= 4,
    )
    .await;
    good.task.abort();
    let _ = good.task.await;
    web.down.store(0, Ordering::SeqCst);
    log.record(deployed(&ns, 3)).await.unwrap();
    let channels = notifier(&yaml, RoleMapping::default(), &[]);
    let again = start(channels.into_iter().next().unwrap());
    let got = until("entries 2 and 3", || web.got("good"), |g| g.len() >= 3).await;
    let titles: Vec<String> = got
        .iter()
        .map(|g| serde_json::from_str::<Value>(&g.body).unwrap()["entry"]["seq"].to_string())
        .collect();
    assert_eq!(titles, ["2", "3", "4"], "each once, in order");

    // A message the receiver refuses for good (400) is dropped, and the channel goes on.
    web.answers.lock().unwrap().push_back((400, None));
    log.record(deployed(&ns, 4)).await.unwrap();
    log.record(deployed(&ns, 5)).await.unwrap();
    let got = until("entry 6", || web.got("good"), |g| g.len() >= 4).await;
    let last: Value = serde_json::from_str(&got[3].body).unwrap();
    assert_eq!(last["entry"]["seq"], 6, "entry 5 was dropped, 6 delivered");
    let dropped = dvo_operator::metrics::METRICS
        .notifications
        .get_or_create(&dvo_operator::metrics::ChannelLabel {
            channel: "good".into(),
            outcome: "dropped".into(),
        })
        .get();
    assert_eq!(dropped, 1, "the drop is counted");
    again.stop().await;

    // The dead channel never delivered, and did not hold back the good one.
    let cursor = |name: &str| {
        let api = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), &ns);
        let name = name.to_owned();
        async move {
            api.get_opt(&name)
                .await
                .unwrap()
                .and_then(|c| c.data)
                .map(|d| d["seq"].clone())
        }
    };
    assert_eq!(cursor("dvo-notify-cursor-good").await.as_deref(), Some("6"));
    assert_eq!(cursor("dvo-notify-cursor-dead").await.as_deref(), Some("1"));
    dead.stop().await;
}

#[tokio::test]
async fn a_cursor_another_replica_moved_is_never_moved_back() {
    let client = operator().await;
    let ns = namespace(&client, "notifyrace").await;
    let log = AuditLog::start(
        client.clone(),
        &ns,
        SigningKey::from_seed(&[9; 32]).unwrap(),
    );
    let web = Receiver::start().await;
    let yaml = format!(
        "channels: [{{name: race, webhook: {{url: '{}'}}}}]",
        web.url("race")
    );
    let channel = notifier(&yaml, RoleMapping::default(), &[]).remove(0);
    let running = RunningSink::outbox(&client, &ns, channel);
    assert_eq!(started(&client, &ns, "race").await.as_deref(), Some("0"));

    // Entry 1 is on its way, held by the receiver, when another replica (the new leader) moves
    // the cursor to 5.
    web.hold.store(1, Ordering::SeqCst);
    log.record(deployed(&ns, 1)).await.unwrap();
    until(
        "an attempt at entry 1",
        || web.attempts.lock().unwrap().len(),
        |n| *n >= 1,
    )
    .await;
    let cursors = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), &ns);
    cursors
        .patch(
            "dvo-notify-cursor-race",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"data": {"seq": "5"}})),
        )
        .await
        .unwrap();
    web.hold.store(0, Ordering::SeqCst);
    for i in 2..=6 {
        log.record(deployed(&ns, i)).await.unwrap();
    }
    // The deposed write does not move the cursor back to 1: what follows 5 is all it sends.
    let got = until("entry 6", || web.got("race"), |g| g.len() >= 2).await;
    let seqs: Vec<String> = got
        .iter()
        .map(|g| serde_json::from_str::<Value>(&g.body).unwrap()["entry"]["seq"].to_string())
        .collect();
    assert_eq!(seqs, ["1", "6"]);
    running.stop().await;
    let cursor = cursors.get("dvo-notify-cursor-race").await.unwrap();
    assert_eq!(cursor.data.unwrap()["seq"], "6");
}
