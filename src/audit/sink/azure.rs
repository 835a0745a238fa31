//! Azure Monitor Logs Ingestion API: a token by client credentials (a client secret, or the
//! workload-identity federated token file AKS projects), records posted to the data collection
//! rule's stream in chunks under 1 MB, `Retry-After` honoured on 429.

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use serde_json::Value;
use tokio::sync::Mutex;

use super::http::Https;
use crate::audit::Entry;

/// The largest request body sent (the API refuses 1 MB and more).
pub const CHUNK_BYTES: usize = 900 * 1024;

/// How the sink proves who it is.
#[derive(Clone, Debug, PartialEq)]
pub enum Credential {
    /// A client secret.
    Secret(String),
    /// A federated token file (workload identity), read at every token request.
    FederatedTokenFile(String),
}

/// Logs Ingestion settings.
#[derive(Debug)]
pub struct Azure {
    /// Data collection endpoint, e.g. `https://dce-x.westeurope-1.ingest.monitor.azure.com`.
    pub endpoint: String,
    /// Immutable ID of the data collection rule.
    pub dcr: String,
    /// Stream name, e.g. `Custom-DvoAudit_CL`.
    pub stream: String,
    /// Entra authority host, e.g. `https://login.microsoftonline.com`.
    pub authority: String,
    /// Tenant ID.
    pub tenant: String,
    /// Client (application) ID.
    pub client_id: String,
    /// The credential.
    pub credential: Credential,
    token: Mutex<Option<(String, Instant)>>,
}

impl PartialEq for Azure {
    fn eq(&self, other: &Self) -> bool {
        (
            &self.endpoint,
            &self.dcr,
            &self.stream,
            &self.authority,
            &self.tenant,
            &self.client_id,
            &self.credential,
        ) == (
            &other.endpoint,
            &other.dcr,
            &other.stream,
            &other.authority,
            &other.tenant,
            &other.client_id,
            &other.credential,
        )
    }
}

fn form(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A record of the stream: the entry's fields, with `TimeGenerated`.
pub fn record(e: &Entry) -> Value {
    let mut v = crate::json::to_value(e);
    crate::json::set(&mut v, "TimeGenerated", e.draft.timestamp.clone());
    v
}

/// Splits records into JSON arrays each under [`CHUNK_BYTES`].
pub fn chunks(records: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut size: usize = 2;
    for r in records {
        let s = r.to_string();
        if !current.is_empty() && size.saturating_add(s.len()).saturating_add(1) > CHUNK_BYTES {
            out.push(format!("[{}]", current.join(",")));
            current.clear();
            size = 2;
        }
        size = size.saturating_add(s.len()).saturating_add(1);
        current.push(s);
    }
    if !current.is_empty() {
        out.push(format!("[{}]", current.join(",")));
    }
    out
}

impl Azure {
    /// A sink with no token yet.
    pub fn new(
        endpoint: &str,
        dcr: &str,
        stream: &str,
        authority: &str,
        tenant: &str,
        client_id: &str,
        credential: Credential,
    ) -> Azure {
        Azure {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            dcr: dcr.to_owned(),
            stream: stream.to_owned(),
            authority: authority.trim_end_matches('/').to_owned(),
            tenant: tenant.to_owned(),
            client_id: client_id.to_owned(),
            credential,
            token: Mutex::new(None),
        }
    }

    async fn token(&self, client: &Https) -> Result<String, String> {
        let mut cached = self.token.lock().await;
        if let Some((t, _)) = cached.as_ref().filter(|(_, until)| Instant::now() < *until) {
            return Ok(t.clone());
        }
        let assertion;
        let mut pairs = vec![
            ("client_id", self.client_id.as_str()),
            ("scope", "https://monitor.azure.com//.default"),
            ("grant_type", "client_credentials"),
        ];
        match &self.credential {
            Credential::Secret(s) => pairs.push(("client_secret", s.as_str())),
            Credential::FederatedTokenFile(path) => {
                assertion = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read the federated token file {path}: {e}"))?;
                pairs.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ));
                pairs.push(("client_assertion", assertion.trim()));
            }
        }
        let url = format!("{}/{}/oauth2/v2.0/token", self.authority, self.tenant);
        let req = Request::post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form(&pairs))))
            .map_err(|e| e.to_string())?;
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("token request to {url}: {e}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            let why = v
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or("");
            return Err(format!(
                "Entra ID refused the sink's credentials (HTTP {status}): {why}"
            ));
        }
        let token = v
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or("the token response has no access_token")?
            .to_owned();
        let ttl = v
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(300)
            .saturating_sub(60);
        let until = Instant::now().checked_add(Duration::from_secs(ttl));
        *cached = until.map(|at| (token.clone(), at));
        Ok(token)
    }

    /// Uploads entries in chunks under 1 MB; on 429 waits `Retry-After` (at most 60 s) and retries.
    pub async fn send(&self, client: &Https, entries: &[Entry]) -> Result<(), String> {
        let url = format!(
            "{}/dataCollectionRules/{}/streams/{}?api-version=2023-01-01",
            self.endpoint, self.dcr, self.stream
        );
        let records: Vec<Value> = entries.iter().map(record).collect();
        for chunk in chunks(&records) {
            let mut attempts: u32 = 0;
            loop {
                let token = self.token(client).await?;
                let req = Request::post(&url)
                    .header("content-type", "application/json")
                    .header("authorization", format!("Bearer {token}"))
                    .body(Full::new(Bytes::from(chunk.clone())))
                    .map_err(|e| e.to_string())?;
                let resp = client
                    .request(req)
                    .await
                    .map_err(|e| format!("{url}: {e}"))?;
                let status = resp.status();
                if status.is_success() {
                    break;
                }
                if status.as_u16() == 429 && attempts < 5 {
                    attempts = attempts.saturating_add(1);
                    let wait = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(5)
                        .min(60);
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                    continue;
                }
                if status.as_u16() == 401 {
                    *self.token.lock().await = None;
                }
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                    .unwrap_or_default();
                return Err(format!("Logs Ingestion answered HTTP {status}: {body}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chunks_stay_under_a_megabyte_and_keep_every_record() {
        let big = json!({"padding": "x".repeat(100_000)});
        let records: Vec<Value> = (0..25).map(|i| json!({"i": i, "d": big})).collect();
        let chunks = chunks(&records);
        assert!(chunks.len() >= 3, "{}", chunks.len());
        let mut seen = 0;
        for c in &chunks {
            assert!(c.len() < 1024 * 1024);
            seen += serde_json::from_str::<Vec<Value>>(c).unwrap().len();
        }
        assert_eq!(seen, 25);
        assert!(super::chunks(&[]).is_empty());
    }

    #[test]
    fn form_encoding() {
        assert_eq!(
            form(&[
                ("scope", "https://monitor.azure.com//.default"),
                ("a b", "c&d")
            ]),
            "scope=https%3A%2F%2Fmonitor.azure.com%2F%2F.default&a%20b=c%26d"
        );
    }
}
