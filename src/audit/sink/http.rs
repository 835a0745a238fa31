//! HTTP sinks: Splunk HTTP Event Collector (batched events, `Authorization: Splunk <token>`,
//! optional indexer acknowledgement) and a generic HTTPS webhook (a JSON array of entries).

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::audit::Entry;
use crate::audit::sink::Failure;

/// The HTTP(S) client of the sinks.
pub type Https = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An HTTP(S) client trusting the system's roots.
pub fn client() -> Result<Https, String> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| format!("no TLS roots: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// GETs `url`: its status and body.
pub async fn get(client: &Https, url: &str) -> Result<(StatusCode, String), String> {
    let req = Request::get(url)
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("bad request to {url}: {e}"))?;
    send(client, url, req).await
}

async fn post(
    client: &Https,
    url: &str,
    headers: &[(&str, String)],
    body: String,
) -> Result<(StatusCode, String), String> {
    let mut req = Request::post(url).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("bad request to {url}: {e}"))?;
    send(client, url, req).await
}

async fn send(
    client: &Https,
    url: &str,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, String), String> {
    send_with_headers(client, url, req)
        .await
        .map(|(status, _, body)| (status, body))
}

/// The answer to `req`: the whole exchange within 30 s, and the body read up to 1 MiB.
async fn send_with_headers(
    client: &Https,
    url: &str,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, hyper::HeaderMap, String), String> {
    let exchange = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = http_body_util::Limited::new(resp.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(|e| format!("{url}: {e}"))?
            .to_bytes();
        Ok((
            status,
            headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        ))
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), exchange)
        .await
        .map_err(|_| format!("{url}: no whole answer within 30 s"))?
}

/// The wait a `Retry-After` header asks for (seconds, or an HTTP date).
pub fn retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<std::time::Duration> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(std::time::Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    at.signed_duration_since(now).to_std().ok()
}

/// Posts a notification (JSON) to `url`: any 2xx is delivery; a 429 or 503 carries the wait its
/// `Retry-After` asks for.
pub async fn notify(
    client: &Https,
    url: &str,
    headers: &[(&str, String)],
    body: String,
) -> Result<(), Failure> {
    // The URL of a Slack or Teams webhook is its secret: errors name its host only.
    let host = url
        .split('/')
        .nth(2)
        .and_then(|h| h.rsplit('@').next())
        .unwrap_or("the endpoint");
    let mut req = Request::post(url).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| Failure {
            message: format!("cannot make a request to {host}: {e}"),
            retry_after: None,
            permanent: true,
        })?;
    let (status, headers, body) = send_with_headers(client, url, req)
        .await
        .map_err(|e| e.replace(url, host))?;
    if status.is_success() {
        return Ok(());
    }
    let wait = matches!(status.as_u16(), 429 | 503)
        .then(|| headers.get("retry-after")?.to_str().ok().map(str::to_owned))
        .flatten()
        .and_then(|v| retry_after(&v, chrono::Utc::now()));
    Err(Failure {
        message: format!(
            "{host} answered HTTP {status}: {}",
            body.chars().take(300).collect::<String>()
        ),
        retry_after: wait,
        // The receiver refuses this message (or this endpoint) for good.
        permanent: status.is_client_error() && !matches!(status.as_u16(), 408 | 429),
    })
}

/// Splunk HEC settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Splunk {
    /// Base URL, e.g. `https://splunk:8088`.
    pub base: String,
    /// The HEC token.
    pub token: String,
    /// Index, when not the token's default.
    pub index: Option<String>,
    /// An acknowledgement channel (GUID): when set, an entry counts as delivered only once
    /// Splunk acknowledges it was indexed.
    pub ack_channel: Option<String>,
}

/// What a HEC reply means.
fn hec_outcome(status: StatusCode, body: &str) -> Result<Option<u64>, String> {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let code = v.get("code").and_then(Value::as_i64);
    let text = v.get("text").and_then(Value::as_str).unwrap_or(body);
    match (status.as_u16(), code) {
        (200, Some(0) | None) => Ok(v.get("ackId").and_then(Value::as_u64)),
        (503, _) | (_, Some(9)) => Err(format!(
            "Splunk HEC is busy (HTTP {status}, code {code:?}: {text}); retrying"
        )),
        (401 | 403, _) => Err(format!(
            "Splunk HEC refused the token (HTTP {status}, code {code:?}: {text}): check the sink's token"
        )),
        (400, Some(7)) => Err(format!(
            "Splunk HEC refused the index (code 7: {text}): check the sink's index"
        )),
        _ => Err(format!(
            "Splunk HEC answered HTTP {status} (code {code:?}: {text})"
        )),
    }
}

impl Splunk {
    /// One HEC event per entry, newline-separated, in one request.
    pub fn body(&self, entries: &[Entry]) -> String {
        entries
            .iter()
            .map(|e| {
                let time = chrono::DateTime::parse_from_rfc3339(&e.draft.timestamp)
                    .map(|t| t.timestamp())
                    .ok();
                let mut ev =
                    json!({"source": "dvo-operator", "sourcetype": "dvo:audit", "event": e});
                if let Some(t) = time {
                    crate::json::set(&mut ev, "time", t);
                }
                if let Some(i) = &self.index {
                    crate::json::set(&mut ev, "index", i.clone());
                }
                ev.to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Sends a batch; with an ack channel, waits until Splunk acknowledges it.
    pub async fn send(&self, client: &Https, entries: &[Entry]) -> Result<(), String> {
        let mut headers = vec![("authorization", format!("Splunk {}", self.token))];
        if let Some(ch) = &self.ack_channel {
            headers.push(("x-splunk-request-channel", ch.clone()));
        }
        let url = format!(
            "{}/services/collector/event",
            self.base.trim_end_matches('/')
        );
        let (status, body) = post(client, &url, &headers, self.body(entries)).await?;
        let ack = hec_outcome(status, &body)?;
        let (Some(_), Some(id)) = (&self.ack_channel, ack) else {
            return Ok(());
        };
        let url = format!("{}/services/collector/ack", self.base.trim_end_matches('/'));
        for _ in 0..50 {
            let (status, body) =
                post(client, &url, &headers, json!({"acks": [id]}).to_string()).await?;
            hec_outcome(status, &body)?;
            let acked: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let ack = acked.get("acks").and_then(|a| a.get(id.to_string()));
            if ack == Some(&json!(true)) {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        Err(format!(
            "Splunk did not acknowledge batch {id} in time; it will be sent again"
        ))
    }
}

/// The signature header of webhook requests: `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "x-dvo-signature";

/// The value of [`SIGNATURE_HEADER`] for `body` under `secret`.
pub fn signature(secret: &str, body: &str) -> String {
    use hmac::Mac;
    let mut mac = crate::identity::stamp::hmac(secret.as_bytes());
    mac.update(body.as_bytes());
    format!("sha256={}", crate::hex(&mac.finalize().into_bytes()))
}

/// Posts a JSON array of entries to `url`, signed with `secret` in [`SIGNATURE_HEADER`] so the
/// receiver can check who sent it; any 2xx is delivery.
pub async fn webhook(
    client: &Https,
    url: &str,
    secret: Option<&str>,
    entries: &[Entry],
) -> Result<(), String> {
    let body = crate::json::to_string(entries);
    let headers: Vec<(&str, String)> = secret
        .map(|s| (SIGNATURE_HEADER, signature(s, &body)))
        .into_iter()
        .collect();
    let (status, body) = post(client, url, &headers, body).await?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("webhook {url} answered HTTP {status}: {body}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hec_replies() {
        let ok = StatusCode::OK;
        assert_eq!(hec_outcome(ok, r#"{"text":"Success","code":0}"#), Ok(None));
        assert_eq!(
            hec_outcome(ok, r#"{"text":"Success","code":0,"ackId":7}"#),
            Ok(Some(7))
        );
        assert!(
            hec_outcome(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"text":"Server is busy","code":9}"#
            )
            .unwrap_err()
            .contains("busy")
        );
        assert!(
            hec_outcome(
                StatusCode::FORBIDDEN,
                r#"{"text":"Invalid token","code":4}"#
            )
            .unwrap_err()
            .contains("check the sink's token")
        );
        assert!(
            hec_outcome(
                StatusCode::BAD_REQUEST,
                r#"{"text":"Incorrect index","code":7}"#
            )
            .unwrap_err()
            .contains("check the sink's index")
        );
    }

    #[test]
    fn webhook_signature_is_an_hmac_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", "what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
