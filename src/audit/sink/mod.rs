//! SIEM sinks fed from the chain. Each sink keeps a cursor (the last `seq` it delivered) in a
//! ConfigMap, so delivery is at-least-once and resumes after a restart; a failing sink backs off
//! without ever blocking appends to the chain.

pub mod format;

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::Entry;
use super::store::{self, SEGMENT_LABEL};
use format::Payload;

/// Where a sink delivers.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// JSON lines on standard output.
    Stdout,
    /// RFC 5424 over TCP with octet counting.
    Syslog {
        /// `host:port`.
        address: String,
        /// CEF or JSON.
        payload: Payload,
        /// HOSTNAME field of the messages.
        hostname: String,
    },
}

impl std::str::FromStr for Target {
    type Err = String;
    /// `stdout`, or `syslog+tcp://host:port[?payload=cef|json]`.
    fn from_str(s: &str) -> Result<Target, String> {
        if s == "stdout" {
            return Ok(Target::Stdout);
        }
        let rest = s.strip_prefix("syslog+tcp://").ok_or_else(|| {
            format!(
                "unknown audit sink {s:?}: use stdout or syslog+tcp://host:port?payload=cef|json"
            )
        })?;
        let (address, query) = rest.split_once('?').unwrap_or((rest, ""));
        let payload = match query {
            "" | "payload=cef" => Payload::Cef,
            "payload=json" => Payload::Json,
            other => {
                return Err(format!(
                    "unknown audit sink option {other:?}: use payload=cef or payload=json"
                ));
            }
        };
        Ok(Target::Syslog {
            address: address.to_owned(),
            payload,
            hostname: std::env::var("POD_NAME").unwrap_or_else(|_| "dvo-operator".into()),
        })
    }
}

/// A named sink.
pub struct Sink {
    /// Names its cursor ConfigMap (`dvo-audit-cursor-<name>`).
    pub name: String,
    /// Where it delivers.
    pub target: Target,
    connection: Option<TcpStream>,
}

impl Sink {
    /// A sink that has not connected yet.
    pub fn new(name: &str, target: Target) -> Sink {
        Sink {
            name: name.to_owned(),
            target,
            connection: None,
        }
    }

    async fn send(&mut self, entries: &[Entry]) -> Result<(), String> {
        match &self.target {
            Target::Stdout => {
                for e in entries {
                    println!("{}", serde_json::to_string(e).expect("an entry serializes"));
                }
                Ok(())
            }
            Target::Syslog {
                address,
                payload,
                hostname,
            } => {
                let frames: String = entries
                    .iter()
                    .map(|e| format::syslog_frame(e, *payload, hostname))
                    .collect();
                if self.connection.is_none() {
                    let stream = TcpStream::connect(address)
                        .await
                        .map_err(|e| format!("cannot connect to syslog at {address}: {e}"))?;
                    self.connection = Some(stream);
                }
                let conn = self.connection.as_mut().expect("connected above");
                let result = async {
                    conn.write_all(frames.as_bytes()).await?;
                    conn.flush().await
                }
                .await;
                result.map_err(|e| {
                    self.connection = None;
                    format!("syslog at {address}: {e}")
                })
            }
        }
    }
}

fn cursor_name(sink: &str) -> String {
    format!("dvo-audit-cursor-{sink}")
}

async fn read_cursor(api: &Api<ConfigMap>, sink: &str) -> Result<u64, String> {
    let cm = api
        .get_opt(&cursor_name(sink))
        .await
        .map_err(|e| format!("cannot read the cursor of sink {sink}: {e}"))?;
    Ok(cm
        .and_then(|c| c.data)
        .and_then(|d| d.get("seq").and_then(|s| s.parse().ok()))
        .unwrap_or(0))
}

async fn write_cursor(api: &Api<ConfigMap>, sink: &str, seq: u64) -> Result<(), String> {
    let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": cursor_name(sink)}, "data": {"seq": seq.to_string()}});
    api.patch(
        &cursor_name(sink),
        &PatchParams::apply(crate::controller::MANAGER).force(),
        &Patch::Apply(&cm),
    )
    .await
    .map(|_| ())
    .map_err(|e| format!("cannot store the cursor of sink {sink}: {e}"))
}

/// Delivers everything after the cursor, in batches; returns how many entries were delivered.
async fn drain(client: &Client, namespace: &str, sink: &mut Sink) -> Result<usize, String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let cursor = read_cursor(&api, &sink.name).await?;
    let (segments, _) = store::load(client, namespace).await?;
    let pending: Vec<Entry> = segments
        .into_iter()
        .flat_map(|s| s.entries)
        .filter(|e| e.seq > cursor)
        .collect();
    for batch in pending.chunks(200) {
        sink.send(batch).await?;
        write_cursor(
            &api,
            &sink.name,
            batch.last().expect("chunks are not empty").seq,
        )
        .await?;
    }
    Ok(pending.len())
}

/// Feeds `sink` from the log in `namespace` until `stop` completes: on every change of a
/// segment, and again after a failure with exponential backoff (1 s to 60 s).
pub async fn run(
    client: Client,
    namespace: String,
    mut sink: Sink,
    stop: impl std::future::Future<Output = ()>,
) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let mut changes = watcher(api, watcher::Config::default().labels(SEGMENT_LABEL)).boxed();
    let mut backoff: Option<Duration> = None;
    tokio::pin!(stop);
    loop {
        let wait = async {
            match backoff {
                Some(d) => tokio::time::sleep(d).await,
                None => {
                    let _ = changes.next().await;
                }
            }
        };
        tokio::select! {
            () = &mut stop => return,
            () = wait => {}
        }
        match drain(&client, &namespace, &mut sink).await {
            Ok(_) => backoff = None,
            Err(e) => {
                let next = backoff.map_or(Duration::from_secs(1), |d| {
                    (d * 2).min(Duration::from_secs(60))
                });
                tracing::warn!(sink = %sink.name, error = %e, retry_in = ?next, "audit sink failed");
                backoff = Some(next);
            }
        }
    }
}
