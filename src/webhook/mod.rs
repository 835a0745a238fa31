//! The admission webhook server: HTTPS (rustls) with a certificate the operator manages,
//! registered for our API group only with `failurePolicy: Fail`. Handlers are thin: they parse
//! the AdmissionReview, read the role mapping, verify approval tokens, call the pure reviews in
//! [`crate::admission`], append the audit fact before answering (not on dry runs) and answer.

pub mod jwks;
mod registration;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Json, Path, State};
use axum::routing::post;
use chrono::Utc;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use sha2::{Digest, Sha256};

use crate::admission::{self, Env, Verdict};
use crate::audit::store::AuditLog;
use crate::identity::Identity;
use crate::identity::entra::EntraConfig;

pub use registration::{NAME as CONFIGURATION, configurations};

/// Where the webhook listens and how the API server reaches it.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The operator's namespace (keys, certificate, role mapping, audit log).
    pub namespace: String,
    /// Listen address.
    pub addr: SocketAddr,
    /// The base URL the API server calls (an operator outside the cluster); None: the Service.
    pub url: Option<String>,
    /// The Service in front of the webhook (used when `url` is None).
    pub service: String,
    /// Entra ID settings for approvals that must prove MFA (None: such approvals are refused).
    pub entra: Option<EntraConfig>,
    /// Whether the certificate is the operator's own (generated) or another issuer's.
    pub certificates: Certificates,
    /// PEM of the CA that issues the API server's webhook client certificate: when set, only
    /// callers presenting such a certificate are served. When not set, any TLS client is served
    /// and what it says is recorded as claimed (no person is named as the actor).
    pub client_ca: Option<String>,
}

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a connection is used before its next answer says `Connection: close` (the API server
/// then reconnects): connections do not pile up, and none is closed under a request in flight.
const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(120);
/// How long a retiring connection may then stay idle before it is closed: longer than the API
/// server keeps an idle connection (90 s), so it has stopped using it by then.
const RETIRING_IDLE: std::time::Duration = std::time::Duration::from_secs(120);
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 512;
/// New connections accepted per second on average, and in a burst: beyond that a connection is
/// closed at once (the API server retries; a flood costs no handshakes).
const CONNECTIONS_PER_SECOND: f64 = 100.0;
const CONNECTION_BURST: f64 = 200.0;

/// A token bucket: `take` at `now` is allowed while tokens remain, refilled at `rate` per second
/// up to `burst`.
#[derive(Debug)]
struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: std::time::Instant,
}

impl RateLimit {
    fn new(rate: f64, burst: f64, now: std::time::Instant) -> RateLimit {
        RateLimit {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn take(&mut self, now: std::time::Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The largest AdmissionReview read (an object and its old version, each up to the API
/// server's 3 MiB request limit).
pub const MAX_BODY: usize = 7 * 1024 * 1024;

/// Who issues the webhook's certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Certificates {
    /// The operator generates it and keeps it in Secret `dvo-operator-webhook-tls`.
    #[value(name = "self")]
    Own,
    /// cert-manager (a Certificate of the chart) fills that Secret; the operator waits for it.
    CertManager,
}

struct Shared {
    /// The role mapping, from its own watch (never a GET per review).
    mappings: crate::controller::environment::RoleMappings,
    key: Vec<u8>,
    operator: String,
    audit: AuditLog,
    verifier: Option<jwks::Verifier>,
    /// Whether every caller proved it is the API server (client certificates required).
    callers_verified: bool,
}

/// Who the API server knows `client` as (a SelfSubjectReview): for the webhook, the operator's
/// own user name, the only writer of status; for `kubectl dvo`, the person at the keyboard.
pub async fn whoami(client: &Client) -> anyhow::Result<Identity> {
    let review = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(|e| anyhow::anyhow!("asking the API server who this client is: {e}"))?;
    let user = review
        .status
        .and_then(|s| s.user_info)
        .filter(|u| u.username.as_deref().is_some_and(|n| !n.is_empty()))
        .ok_or_else(|| anyhow::anyhow!("the API server did not say who this client is"))?;
    Ok(Identity {
        username: user.username.unwrap_or_default(),
        uid: user.uid,
        groups: user.groups.unwrap_or_default(),
    })
}

/// Runs the webhook until `shutdown` completes. `ready` is set once it listens and its
/// configurations carry its CA.
pub async fn serve(
    client: Client,
    settings: Settings,
    ready: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let ns = settings.namespace.clone();
    let operator = whoami(&client).await?.username;
    let keys = crate::controller::ensure_keys(&client, &ns).await?;
    let hosts = registration::hosts(&settings)?;
    let cert = match settings.certificates {
        Certificates::Own => tls::ensure(&client, &ns, &hosts).await?,
        Certificates::CertManager => tls::external(&client, &ns).await?,
    };
    let acceptor =
        tokio_rustls::TlsAcceptor::from(tls::server_config(&cert, settings.client_ca.as_deref())?);
    if settings.client_ca.is_none() {
        tracing::warn!(
            "no --webhook-client-ca: any TLS client can call the webhook; what it says is recorded as claimed only (see README: authenticating the API server)"
        );
    }
    let listener = tokio::net::TcpListener::bind(settings.addr).await?;
    let signing =
        crate::audit::SigningKey::from_seed(&keys.checkpoint).map_err(anyhow::Error::msg)?;
    let mappings = crate::controller::environment::RoleMappings::start(&client, &ns);
    let shared = Arc::new(Shared {
        audit: AuditLog::start(client.clone(), &ns, signing),
        verifier: settings
            .entra
            .clone()
            .map(jwks::Verifier::new)
            .transpose()?,
        mappings: mappings.clone(),
        key: keys.stamp,
        operator: operator.clone(),
        callers_verified: settings.client_ca.is_some(),
    });
    let app = Router::new()
        .route("/admit/{kind}", post(admit))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared);
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut accepting = RateLimit::new(
        CONNECTIONS_PER_SECOND,
        CONNECTION_BURST,
        std::time::Instant::now(),
    );
    registration::apply(&client, &settings, &cert.ca).await?;
    // Ready once the role mapping is loaded: until then every review would be refused.
    mappings.loaded().await;
    tracing::info!(addr = %settings.addr, %operator, "admission webhook serving");
    ready.store(true, Ordering::Relaxed);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(%e, "webhook accept failed");
                    continue;
                }
            },
        };
        if !accepting.take(std::time::Instant::now()) {
            tracing::debug!(%peer, "webhook connection rate exceeded; closing");
            continue;
        }
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "webhook connection limit reached; closing");
            continue;
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, %e, "webhook TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "webhook TLS handshake timed out"),
            };
            // Past its lifetime, a connection's next answer asks the client to close it: closing
            // it from here could cut a request the API server is just writing (it does not
            // retry an admission review), which refuses a write for nothing.
            let retiring = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = retiring.clone();
            let app =
                tower::util::MapResponse::new(app, move |mut resp: axum::response::Response| {
                    if flag.load(Ordering::Relaxed) {
                        resp.headers_mut().insert(
                            axum::http::header::CONNECTION,
                            axum::http::HeaderValue::from_static("close"),
                        );
                    }
                    resp
                });
            let service = TowerToHyperService::new(app);
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = tokio::time::sleep(CONNECTION_LIFETIME) => {
                    retiring.store(true, Ordering::Relaxed);
                    tokio::select! {
                        r = conn.as_mut() => r,
                        () = tokio::time::sleep(RETIRING_IDLE) => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, %e, "webhook connection ended with an error");
            }
        });
    }
    ready.store(false, Ordering::Relaxed);
    tracing::info!("admission webhook stopped");
    Ok(())
}

async fn admit(
    State(shared): State<Arc<Shared>>,
    Path(kind): Path<String>,
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let req: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(req) => req,
        Err(e) => return Json(AdmissionResponse::invalid(e.to_string()).into_review()),
    };
    let started = std::time::Instant::now();
    let verdict = shared.review(&kind, &req).await;
    let answer = shared.answer(&req, verdict).await;
    crate::metrics::METRICS
        .admission_seconds
        .observe(started.elapsed().as_secs_f64());
    crate::metrics::METRICS
        .admissions
        .get_or_create(&crate::metrics::AdmissionLabels {
            resource: kind,
            verdict: if answer.allowed { "allowed" } else { "refused" }.to_owned(),
        })
        .inc();
    Json(answer.into_review())
}

impl Shared {
    async fn review(
        &self,
        path: &str,
        req: &AdmissionRequest<DynamicObject>,
    ) -> Result<Verdict, String> {
        // The operator's own writes need neither the mapping nor a token.
        if admission::request::user(req).username == self.operator {
            return Ok(Verdict::allow());
        }
        let mapping = self.mappings.get()?;
        let mapping = mapping.as_ref().as_ref().map_err(Clone::clone)?;
        let env = Env {
            mapping,
            key: &self.key,
            operator: &self.operator,
        };
        let token = match admission::request::approval_token(path, req) {
            None => None,
            Some(token) => Some(match &self.verifier {
                Some(v) => v.verify(&token).await,
                None => Err(
                    "this operator has no Entra ID settings, so it cannot verify approval tokens"
                        .to_owned(),
                ),
            }),
        };
        admission::request::review(&env, path, req, token, Utc::now())
    }

    async fn answer(
        &self,
        req: &AdmissionRequest<DynamicObject>,
        verdict: Result<Verdict, String>,
    ) -> AdmissionResponse {
        let resp = AdmissionResponse::from(req);
        let verdict = match verdict {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(uid = %req.uid, %e, "admission review failed; refusing");
                return resp.deny(format!(
                    "dvo admission could not review this request, so it is refused: {e}"
                ));
            }
        };
        let mut verdict = verdict;
        if let (Some(mut draft), false) = (verdict.audit.take(), req.dry_run) {
            draft.event_id = crate::hex_prefix(&Sha256::digest(req.uid.as_bytes()), 16);
            draft.timestamp = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            draft.idempotency_key = format!("admission/{}", req.uid);
            draft.request_id = Some(req.uid.clone());
            if !self.callers_verified {
                draft = admission::unverified_caller(draft);
            }
            let recorded = self.audit.record(draft).await.map(|_| ());
            if let Err(e) = &recorded {
                tracing::error!(uid = %req.uid, user = ?req.user_info.username, refusal = ?verdict.refusal, %e, "audit append failed");
                if verdict.refusal.is_some() {
                    crate::metrics::METRICS
                        .unrecorded_refusals
                        .get_or_create(&crate::metrics::value(req.resource.resource.clone()))
                        .inc();
                }
            }
            verdict = verdict.after_audit(recorded);
        }
        if let Some(message) = verdict.refusal {
            tracing::info!(uid = %req.uid, user = ?req.user_info.username, %message, "admission refused");
            return resp.deny(message);
        }
        if verdict.patch.is_empty() {
            return resp;
        }
        let patch =
            serde_json::from_value::<json_patch::Patch>(serde_json::Value::Array(verdict.patch));
        match patch.map_err(|e| e.to_string()).and_then(|p| {
            AdmissionResponse::from(req)
                .with_patch(p)
                .map_err(|e| e.to_string())
        }) {
            Ok(resp) => resp,
            Err(e) => AdmissionResponse::from(req)
                .deny(format!("dvo admission could not build its patch: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn connections_are_rate_limited_with_a_burst() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(10.0, 3.0, t0);
        let taken: Vec<bool> = (0..5).map(|_| limit.take(t0)).collect();
        assert_eq!(
            taken,
            [true, true, true, false, false],
            "the burst, then nothing"
        );
        assert!(!limit.take(t0 + Duration::from_millis(50)), "half a token");
        assert!(
            limit.take(t0 + Duration::from_millis(100)),
            "one token per 100 ms"
        );
        assert!(!limit.take(t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_secs(60);
        let refilled = (0..5).filter(|_| limit.take(later)).count();
        assert_eq!(refilled, 3, "never more than the burst");
    }
}
