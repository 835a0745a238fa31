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
    /// The HTTP API, served next to the webhook with its certificate (None: not served).
    pub api: Option<crate::api::Settings>,
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
    verifier: Option<Arc<jwks::Verifier>>,
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
    let verifier = settings
        .entra
        .clone()
        .map(jwks::Verifier::new)
        .transpose()?
        .map(Arc::new);
    let audit = AuditLog::start(client.clone(), &ns, signing);
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    if let Some(api) = settings.api.clone() {
        let shared = crate::api::Shared {
            client: client.clone(),
            namespace: ns.clone(),
            mappings: mappings.clone(),
            key: keys.stamp.clone(),
            operator: operator.clone(),
            audit: audit.clone(),
            // Its own key cache: a flood of tokens at the API never waits on the webhook's.
            verifier: settings
                .entra
                .clone()
                .map(jwks::Verifier::new)
                .transpose()?
                .map(Arc::new),
        };
        let tls = tls::server_config(&cert, None)?;
        // Whatever becomes of the API, admission goes on. Calls that come before its caches
        // are loaded wait in the listen queue; a port that is taken is tried again.
        let first = tokio::net::TcpListener::bind(api.addr).await;
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut bound = first;
            let listener = loop {
                match bound {
                    Ok(listener) => break listener,
                    Err(e) => {
                        tracing::error!(addr = %api.addr, %e, "the HTTP API cannot listen (trying again in 5 s); admission goes on without it");
                        tokio::select! {
                            () = stop.clone() => return,
                            () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                        }
                        bound = tokio::net::TcpListener::bind(api.addr).await;
                    }
                }
            };
            crate::api::serve(Arc::new(shared), api, listener, tls, stop).await;
        });
    }
    let shared = Arc::new(Shared {
        audit,
        verifier,
        mappings: mappings.clone(),
        key: keys.stamp,
        operator: operator.clone(),
        callers_verified: settings.client_ca.is_some(),
    });
    let app = Router::new()
        .route("/admit/{kind}", post(admit))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared);
    registration::apply(&client, &settings, &cert.ca).await?;
    // Ready once the role mapping is loaded: until then every review would be refused.
    mappings.loaded().await;
    tracing::info!(addr = %settings.addr, %operator, "admission webhook serving");
    ready.store(true, Ordering::Relaxed);
    crate::https::serve(listener, acceptor, app, "webhook", shutdown).await;
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
        let tenants = self
            .verifier
            .as_ref()
            .map(|v| v.config())
            .filter(|c| c.trust_api_server_sign_in)
            .map(|c| c.tenants.as_slice());
        admission::request::review(&env, path, req, token, tenants, Utc::now())
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
