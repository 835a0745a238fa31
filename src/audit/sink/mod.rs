//! SIEM sinks fed from the chain. Each sink keeps a cursor (the last `seq` it delivered) in a
//! ConfigMap, so delivery is at-least-once and resumes after a restart; a failing sink backs off
//! without ever blocking appends to the chain.

pub mod azure;
pub mod format;
pub mod http;

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
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
    /// Splunk HTTP Event Collector.
    Splunk(http::Splunk),
    /// Azure Monitor Logs Ingestion API.
    Azure(std::sync::Arc<azure::Azure>),
    /// A generic HTTP(S) endpoint receiving JSON arrays of entries, HMAC-signed.
    Webhook {
        /// The URL.
        url: String,
        /// The HMAC secret of the signature header.
        secret: Option<String>,
    },
    /// RFC 5424 over TCP (or TLS) with octet counting.
    Syslog {
        /// `host:port`.
        address: String,
        /// For TLS: the PEM file of the CA that signed the server's certificate.
        tls_ca: Option<String>,
        /// CEF or JSON.
        payload: Payload,
        /// HOSTNAME field of the messages.
        hostname: String,
    },
}

/// The query parameters of a sink URL.
fn query(q: &str) -> Vec<(&str, &str)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect()
}

/// The environment variable named by `token-env` (default `default_var`) that holds a sink's
/// secret, as a Secret mounted with `env.valueFrom.secretKeyRef` provides it.
fn token_var<'a>(params: &[(&'a str, &'a str)], default_var: &'a str) -> &'a str {
    params
        .iter()
        .find(|(k, _)| *k == "token-env")
        .map_or(default_var, |(_, v)| v)
}

/// The secret of [`token_var`], when it is set.
fn token(params: &[(&str, &str)], default_var: &str) -> Option<String> {
    std::env::var(token_var(params, default_var))
        .ok()
        .filter(|t| !t.is_empty())
}

/// The secret of [`token_var`], which must be set.
fn required_token(params: &[(&str, &str)], default_var: &str) -> Result<String, String> {
    token(params, default_var).ok_or_else(|| {
        format!(
            "the sink's token is not set: environment variable {} is empty",
            token_var(params, default_var)
        )
    })
}

impl std::str::FromStr for Target {
    type Err = String;
    /// `stdout`; `syslog+tcp://host:port[?payload=cef|json]`;
    /// `splunk+https://host:8088[?index=I&ack=true&token-env=VAR]` (token from `$DVO_SPLUNK_TOKEN`
    /// by default); `webhook+https://host/path[?token-env=VAR]` (HMAC secret from `$DVO_WEBHOOK_SECRET` by default).
    fn from_str(s: &str) -> Result<Target, String> {
        let usage = || {
            format!(
                "unknown audit sink {s:?}: use stdout, syslog+tcp://host:port?payload=cef|json, splunk+https://host:8088?index=NAME, azure+https://DCE?dcr=ID or webhook+https://host/path"
            )
        };
        if s == "stdout" {
            return Ok(Target::Stdout);
        }
        let (scheme, rest) = s.split_once("://").ok_or_else(usage)?;
        let (address, q) = rest.split_once('?').unwrap_or((rest, ""));
        let params = query(q);
        let known = |allowed: &[&str]| match params.iter().find(|(k, _)| !allowed.contains(k)) {
            Some((k, _)) => Err(format!("unknown audit sink option {k:?} in {s:?}")),
            None => Ok(()),
        };
        match scheme {
            "syslog+tcp" | "syslog+tls" => {
                known(&["payload", "ca-file"])?;
                let tls_ca = match (scheme, params.iter().find(|(k, _)| *k == "ca-file")) {
                    ("syslog+tls", Some((_, file))) => Some(file.to_string()),
                    ("syslog+tls", None) => {
                        return Err(format!("{s:?}: syslog+tls needs ca-file=/path/to/ca.pem"));
                    }
                    (_, Some(_)) => return Err(format!("{s:?}: ca-file applies to syslog+tls")),
                    (_, None) => None,
                };
                let payload = match params
                    .iter()
                    .find(|(k, _)| *k == "payload")
                    .map(|(_, v)| *v)
                {
                    None | Some("cef") => Payload::Cef,
                    Some("json") => Payload::Json,
                    Some(other) => {
                        return Err(format!(
                            "unknown audit sink option payload={other:?}: use payload=cef or payload=json"
                        ));
                    }
                };
                Ok(Target::Syslog {
                    address: address.to_owned(),
                    tls_ca,
                    payload,
                    hostname: std::env::var("POD_NAME").unwrap_or_else(|_| "dvo-operator".into()),
                })
            }
            "splunk+https" | "splunk+http" => {
                known(&["index", "ack", "token-env"])?;
                let http = scheme.trim_start_matches("splunk+");
                let ack = params.iter().any(|(k, v)| *k == "ack" && *v == "true");
                let channel = ack.then(|| {
                    let mut b = [0u8; 16];
                    let _ = getrandom::fill(&mut b);
                    let h = crate::hex(&b);
                    format!(
                        "{}-{}-{}-{}-{}",
                        &h[..8],
                        &h[8..12],
                        &h[12..16],
                        &h[16..20],
                        &h[20..]
                    )
                });
                Ok(Target::Splunk(http::Splunk {
                    base: format!("{http}://{address}"),
                    token: required_token(&params, "DVO_SPLUNK_TOKEN")?,
                    index: params
                        .iter()
                        .find(|(k, _)| *k == "index")
                        .map(|(_, v)| v.to_string()),
                    ack_channel: channel,
                }))
            }
            "azure+https" | "azure+http" => {
                known(&[
                    "dcr",
                    "stream",
                    "tenant",
                    "client-id",
                    "authority",
                    "token-env",
                ])?;
                let param = |k: &str, env: &str| {
                    params
                        .iter()
                        .find(|(p, _)| *p == k)
                        .map(|(_, v)| v.to_string())
                        .or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
                };
                let need = |k: &str, env: &str| {
                    param(k, env).ok_or_else(|| format!("the Azure sink needs {k} (or ${env})"))
                };
                let credential = match std::env::var("AZURE_FEDERATED_TOKEN_FILE")
                    .ok()
                    .filter(|v| !v.is_empty())
                {
                    Some(file) => azure::Credential::FederatedTokenFile(file),
                    None => azure::Credential::Secret(required_token(
                        &params,
                        "DVO_AZURE_CLIENT_SECRET",
                    )?),
                };
                Ok(Target::Azure(std::sync::Arc::new(azure::Azure::new(
                    &format!("{}://{address}", scheme.trim_start_matches("azure+")),
                    &need("dcr", "DVO_AZURE_DCR")?,
                    &param("stream", "DVO_AZURE_STREAM")
                        .unwrap_or_else(|| "Custom-DvoAudit_CL".into()),
                    &param("authority", "AZURE_AUTHORITY_HOST")
                        .unwrap_or_else(|| "https://login.microsoftonline.com".into()),
                    &need("tenant", "AZURE_TENANT_ID")?,
                    &need("client-id", "AZURE_CLIENT_ID")?,
                    credential,
                ))))
            }
            "webhook+https" | "webhook+http" => {
                known(&["token-env"])?;
                Ok(Target::Webhook {
                    url: format!("{}://{address}", scheme.trim_start_matches("webhook+")),
                    secret: token(&params, "DVO_WEBHOOK_SECRET"),
                })
            }
            _ => Err(usage()),
        }
    }
}

/// A named sink.
pub struct Sink {
    /// Names its cursor ConfigMap (`dvo-audit-cursor-<name>`).
    pub name: String,
    /// Where it delivers.
    pub target: Target,
    connection: Option<Connection>,
    https: Option<http::Https>,
}

/// A syslog connection.
enum Connection {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Connection {
    async fn open(address: &str, tls_ca: Option<&str>) -> Result<Connection, String> {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|e| format!("cannot connect to syslog at {address}: {e}"))?;
        let Some(ca) = tls_ca else {
            return Ok(Connection::Plain(tcp));
        };
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| format!("cannot read CA file {ca}: {e}"))?;
        for cert in certs {
            roots
                .add(cert.map_err(|e| format!("CA file {ca}: {e}"))?)
                .map_err(|e| format!("CA file {ca}: {e}"))?;
        }
        let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let host = address
            .rsplit_once(':')
            .map_or(address, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("{host}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with syslog at {address}: {e}"))?;
        Ok(Connection::Tls(Box::new(tls)))
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Connection::Plain(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
            Connection::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
        }
    }
}

impl Sink {
    /// A sink that has not connected yet.
    pub fn new(name: &str, target: Target) -> Sink {
        Sink {
            name: name.to_owned(),
            target,
            connection: None,
            https: None,
        }
    }

    fn https(&mut self) -> Result<&http::Https, String> {
        match &mut self.https {
            Some(client) => Ok(client),
            slot @ None => Ok(slot.insert(http::client()?)),
        }
    }

    /// Delivers a batch (connecting first when needed).
    pub async fn deliver(&mut self, entries: &[Entry]) -> Result<(), String> {
        match self.target.clone() {
            Target::Splunk(splunk) => splunk.send(self.https()?, entries).await,
            Target::Azure(azure) => azure.send(self.https()?, entries).await,
            Target::Webhook { url, secret } => {
                http::webhook(self.https()?, &url, secret.as_deref(), entries).await
            }
            Target::Stdout => {
                for e in entries {
                    println!("{}", crate::json::to_string(e));
                }
                Ok(())
            }
            Target::Syslog {
                address,
                tls_ca,
                payload,
                hostname,
            } => {
                let frames: String = entries
                    .iter()
                    .map(|e| format::syslog_frame(e, payload, &hostname))
                    .collect();
                let conn = match &mut self.connection {
                    Some(conn) => conn,
                    slot @ None => {
                        slot.insert(Connection::open(&address, tls_ca.as_deref()).await?)
                    }
                };
                let result = conn.write(frames.as_bytes()).await;
                result.map_err(|e| {
                    self.connection = None;
                    format!("syslog at {address}: {e}")
                })
            }
        }
    }
}

/// A reader of the log after its own cursor: a SIEM [`Sink`], or a notification channel.
/// The cursor is stored after each batch, and only if nobody moved it meanwhile.
pub trait Outbox: Send {
    /// Its name (metrics and logs).
    fn name(&self) -> &str;
    /// The ConfigMap that keeps its cursor.
    fn cursor(&self) -> String;
    /// The lengths of the consecutive deliveries `entries` are cut into; the cursor is stored
    /// after each.
    fn batches(&self, entries: &[Entry]) -> Result<Vec<usize>, String>;
    /// What it promises about the log (a SIEM sink: every entry).
    fn promise(&self) -> Promise {
        Promise::EveryEntry
    }
    /// Delivers one batch.
    fn deliver<'a>(
        &'a mut self,
        entries: &'a [Entry],
    ) -> futures::future::BoxFuture<'a, Result<(), Failure>>;
}

/// What an outbox promises about the log; where it starts and what it may drop follow from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Promise {
    /// Every entry from the first, each until it is delivered (a SIEM sink: the record).
    EveryEntry,
    /// What happens from the moment it first ran; a message the receiver refuses for good is
    /// dropped, and said (a notification channel: people, not the record).
    FromItsStart,
}

/// A delivery that did not happen.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// What went wrong.
    pub message: String,
    /// How long the receiver asked to be left alone (HTTP 429 or 503 with `Retry-After`).
    pub retry_after: Option<Duration>,
    /// The receiver refused this very message for good (an HTTP 4xx but 408 and 429, an SMTP
    /// 5xx, a message that cannot be written): sending it again cannot succeed. Only
    /// notifications are ever dropped for it; a sink's entries are retried until delivered.
    pub permanent: bool,
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure {
            message,
            retry_after: None,
            permanent: false,
        }
    }
}

impl Outbox for Sink {
    fn name(&self) -> &str {
        &self.name
    }

    fn cursor(&self) -> String {
        format!("dvo-audit-cursor-{}", self.name)
    }

    fn batches(&self, entries: &[Entry]) -> Result<Vec<usize>, String> {
        Ok(entries.chunks(200).map(<[Entry]>::len).collect())
    }

    fn deliver<'a>(
        &'a mut self,
        entries: &'a [Entry],
    ) -> futures::future::BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move { Sink::deliver(self, entries).await.map_err(Failure::from) })
    }
}

/// A stored cursor: the `seq` delivered last, and the resourceVersion it was read or written
/// at (None: there is no cursor yet).
struct Cursor {
    seq: u64,
    version: Option<String>,
}

async fn read_cursor(api: &Api<ConfigMap>, name: &str) -> Result<Cursor, String> {
    let cm = api
        .get_opt(name)
        .await
        .map_err(|e| format!("cannot read the cursor {name}: {e}"))?;
    let Some(cm) = cm else {
        return Ok(Cursor {
            seq: 0,
            version: None,
        });
    };
    let seq = (cm.data.as_ref())
        .and_then(|d| d.get("seq").and_then(|s| s.parse().ok()))
        .unwrap_or(0);
    Ok(Cursor {
        seq,
        version: cm.metadata.resource_version,
    })
}

/// Moves the cursor to `seq`, only if nobody else moved it since it was read (another replica
/// that took over): a deposed leader cannot move a cursor back.
async fn write_cursor(
    api: &Api<ConfigMap>,
    name: &str,
    cursor: &mut Cursor,
    seq: u64,
) -> Result<(), String> {
    let mut metadata = serde_json::json!({"name": name});
    if let Some(v) = &cursor.version {
        crate::json::set(&mut metadata, "resourceVersion", v.clone());
    }
    let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": {"seq": seq.to_string()}});
    let written = api
        .patch(
            name,
            &PatchParams::apply(crate::MANAGER).force(),
            &Patch::Apply(&cm),
        )
        .await
        .map_err(|e| match e {
            kube::Error::Api(a) if a.code == 409 => {
                format!(
                    "the cursor {name} moved meanwhile (another replica delivers); reading it again"
                )
            }
            e => format!("cannot store the cursor {name}: {e}"),
        })?;
    *cursor = Cursor {
        seq,
        version: written.metadata.resource_version,
    };
    Ok(())
}

/// How many entries an outbox reads from the log at a time.
const READ_AT_ONCE: usize = 2000;

/// Delivers everything after the cursor, batch by batch, storing the cursor after each; returns
/// how many entries were passed. A notification refused for good is `dropped` (told why).
async fn drain(
    client: &Client,
    namespace: &str,
    outbox: &mut dyn Outbox,
    dropped: &(dyn Fn(&str) + Sync),
) -> Result<usize, Failure> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let name = outbox.cursor();
    let promise = outbox.promise();
    let mut cursor = read_cursor(&api, &name).await?;
    if cursor.version.is_none() && promise == Promise::FromItsStart {
        let head = store::head(client, namespace).await?;
        write_cursor(&api, &name, &mut cursor, head).await?;
    }
    let lag = crate::metrics::METRICS
        .sink_lag
        .get_or_create(&crate::metrics::value(outbox.name()))
        .clone();
    let mut delivered: usize = 0;
    loop {
        let pending: Vec<Entry> =
            store::entries_after(client, namespace, cursor.seq, READ_AT_ONCE).await?;
        lag.set(i64::try_from(pending.len()).unwrap_or(i64::MAX));
        let mut rest = pending.as_slice();
        for len in outbox.batches(&pending)? {
            let (batch, after) = rest.split_at(len.min(rest.len()));
            rest = after;
            let Some(last) = batch.last() else { continue };
            match outbox.deliver(batch).await {
                Ok(()) => {}
                Err(f) if f.permanent && promise == Promise::FromItsStart => {
                    // Refused for good: dropped, and said, so the channel goes on.
                    let why = format!("dropped the message of entry {}: {}", last.seq, f.message);
                    tracing::warn!(outbox = %outbox.name(), %why, "notification dropped");
                    dropped(&why);
                }
                Err(f) => return Err(f),
            }
            write_cursor(&api, &name, &mut cursor, last.seq).await?;
            delivered = delivered.saturating_add(batch.len());
            lag.dec_by(i64::try_from(batch.len()).unwrap_or(i64::MAX));
        }
        if pending.len() < READ_AT_ONCE {
            return Ok(delivered);
        }
    }
}

/// The wait before the next attempt after `failures` failures in a row: exponential from 1 s
/// to 60 s, with up to a quarter of jitter, and never less than the receiver asked for (up to
/// 5 minutes: a receiver cannot silence a channel for longer).
pub fn backoff(failures: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
    let exp =
        Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(Duration::from_secs(60));
    let jittered = exp.mul_f64(1.0 + 0.25 * jitter.clamp(0.0, 1.0));
    retry_after.map_or(jittered, |r| r.min(Duration::from_secs(300)).max(jittered))
}

/// Feeds `outbox` from the log in `namespace` until `stop` completes: on every change of a
/// segment, and again after a failure with [`backoff`]. `failed` is told of each change
/// between working and failing (for an Event).
pub async fn run(
    client: Client,
    namespace: String,
    mut outbox: impl Outbox,
    stop: impl std::future::Future<Output = ()>,
    failed: impl Fn(Option<&str>) + Sync,
) {
    // Changes are all it needs to know of: the segments' metadata is watched, not their data.
    let api: Api<PartialObjectMeta<ConfigMap>> = Api::namespaced(client.clone(), &namespace);
    let mut changes = watcher(api, watcher::Config::default().labels(SEGMENT_LABEL)).boxed();
    let mut wait_for: Option<Duration> = None;
    let mut failures: u32 = 0;
    tokio::pin!(stop);
    loop {
        let wait = async {
            match wait_for {
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
        // Stopping (the Lease lost) ends a drain where it stands: a message sent and not yet
        // stored in the cursor goes once more, with the same delivery key.
        let dropped = |why: &str| failed(Some(why));
        let drained = tokio::select! {
            () = &mut stop => return,
            drained = drain(&client, &namespace, &mut outbox, &dropped) => drained,
        };
        match drained {
            Ok(_) => {
                if failures > 0 {
                    failed(None);
                }
                failures = 0;
                wait_for = None;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let mut b = [0u8; 1];
                let _ = getrandom::fill(&mut b);
                let next = backoff(failures, e.retry_after, f64::from(b[0]) / 255.0);
                tracing::warn!(outbox = %outbox.name(), error = %e.message, retry_in = ?next, "audit delivery failed");
                if failures == 1 {
                    failed(Some(&e.message));
                }
                wait_for = Some(next);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_urls() {
        assert_eq!("stdout".parse::<Target>(), Ok(Target::Stdout));
        match "syslog+tcp://siem:514?payload=json"
            .parse::<Target>()
            .unwrap()
        {
            Target::Syslog {
                address, payload, ..
            } => assert_eq!((address.as_str(), payload), ("siem:514", Payload::Json)),
            other => panic!("{other:?}"),
        }
        // PATH stands in for a Secret exposed as an environment variable.
        match "splunk+https://splunk:8088?index=dvo&ack=true&token-env=PATH"
            .parse::<Target>()
            .unwrap()
        {
            Target::Splunk(s) => {
                assert_eq!(
                    (s.base.as_str(), s.index.as_deref(), s.token),
                    (
                        "https://splunk:8088",
                        Some("dvo"),
                        std::env::var("PATH").unwrap()
                    )
                );
                assert_eq!(s.ack_channel.map(|c| c.len()), Some(36));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            "webhook+https://hooks.example.com/audit"
                .parse::<Target>()
                .unwrap(),
            Target::Webhook {
                url: "https://hooks.example.com/audit".into(),
                secret: std::env::var("DVO_WEBHOOK_SECRET")
                    .ok()
                    .filter(|t| !t.is_empty()),
            }
        );
        let errors = [
            (
                "splunk+https://s:8088?token-env=DVO_TEST_SURELY_UNSET",
                "environment variable DVO_TEST_SURELY_UNSET is empty",
            ),
            ("syslog+tcp://s:514?payload=xml", "payload=\"xml\""),
            (
                "syslog+tcp://s:514?format=cef",
                "unknown audit sink option \"format\"",
            ),
            ("kafka://broker", "unknown audit sink \"kafka://broker\""),
        ];
        for (url, want) in errors {
            let err = url.parse::<Target>().unwrap_err();
            assert!(err.contains(want), "{url}: {err}");
        }
    }
}
