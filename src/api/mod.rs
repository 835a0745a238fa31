//! The HTTP API (`/v1`, described in `openapi.json`) for bots, portals and the chat agent: the
//! seeds' approval and policy routes over the same pure core as the admission webhook. Callers
//! are people or applications with Entra ID tokens, or automation with API keys (stored as
//! hashes, rate-limited per key). Acts are signed and stored on the ApprovalRequest exactly as
//! the webhook stores an annotation's act (`via: http`), so HTTP and kubectl approvals count
//! toward one quorum and the operator records each once. Every call is audited; refusals are
//! RFC 9457 problem+json. Served by `dvo run --api-addr`, next to the webhook, with its
//! certificate.

mod caller;
pub mod problem;
mod routes;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use chrono::Utc;
use kube::Client;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;

pub use caller::{ApiKey, ApiKeys, Caller, MIN_KEY_LENGTH};
use problem::Problem;

use crate::audit::EventType;
use crate::audit::store::AuditLog;
use crate::controller::environment::{RoleMappings, Sources};
use crate::crd::ApprovalRequest;
use crate::https::RateLimit;
use crate::identity::RoleMapping;
use crate::webhook::jwks;

/// Where the API listens and where its API keys are.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Listen address.
    pub addr: SocketAddr,
    /// The API keys file (a mounted Secret's `keys.yaml`), read again when it changes; None: no
    /// API keys are accepted.
    pub api_keys: Option<PathBuf>,
}

/// What the webhook shares with the API: one role mapping watch, one stamp key, one audit log
/// writer, one token verifier, one operator identity.
pub struct Shared {
    /// A client with the operator's identity (acts are stored with it).
    pub client: Client,
    /// The operator's namespace (audit log).
    pub namespace: String,
    /// The role mapping.
    pub mappings: RoleMappings,
    /// The key acts are signed with.
    pub key: Vec<u8>,
    /// The operator's user name.
    pub operator: String,
    /// The audit log.
    pub audit: AuditLog,
    /// Entra ID token verification (None: tokens are refused).
    pub verifier: Option<Arc<jwks::Verifier>>,
}

/// Calls per minute a person or application may make (a token bucket per Entra ID identity).
const TOKEN_CALLS_PER_MINUTE: u32 = 300;
/// The most callers whose rate is tracked at once; beyond that the buckets start afresh.
const MAX_TRACKED_CALLERS: usize = 10_000;
/// How long one call may take, reading its body included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the API keys file is looked at again.
const KEYS_RECHECK: Duration = Duration::from_secs(2);
/// Unauthenticated refusals, and refusals for a caller's rate, audited per second on average
/// and in a burst (each kind): beyond that they are answered and counted but not each written
/// to the audit log (a flood cannot fill it).
const REFUSAL_AUDITS_PER_SECOND: f64 = 1.0;
const REFUSAL_AUDIT_BURST: f64 = 20.0;
/// The longest call (method and path) and problem detail an audit entry keeps.
const MAX_AUDITED_CALL: usize = 512;
const MAX_AUDITED_DETAIL: usize = 1024;
/// The largest request body read (an AgentDeployment to evaluate).
const MAX_BODY: usize = 1024 * 1024;

/// The API keys file, read again when it changes.
struct KeyFile {
    path: Option<PathBuf>,
    state: Mutex<KeyState>,
}

struct KeyState {
    text: Option<String>,
    keys: Arc<Result<ApiKeys, String>>,
    checked: Option<Instant>,
}

impl KeyFile {
    fn new(path: Option<PathBuf>) -> KeyFile {
        KeyFile {
            path,
            state: Mutex::new(KeyState {
                text: None,
                keys: Arc::new(Ok(ApiKeys::default())),
                checked: None,
            }),
        }
    }

    /// The keys now: read again at most every [`KEYS_RECHECK`]; an unreadable or invalid file
    /// is an error (no key is accepted), never the last good keys.
    fn current(&self) -> Arc<Result<ApiKeys, String>> {
        let Some(path) = &self.path else {
            return Arc::new(Ok(ApiKeys::default()));
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.checked.is_some_and(|t| t.elapsed() < KEYS_RECHECK) {
            return state.keys.clone();
        }
        state.checked = Some(Instant::now());
        match std::fs::read_to_string(path) {
            Ok(text) if state.text.as_deref() == Some(text.as_str()) => {}
            Ok(text) => {
                let parsed = ApiKeys::parse(&text)
                    .map_err(|e| format!("the API keys file {}: {e}", path.display()));
                if let Err(e) = &parsed {
                    tracing::error!(%e, "API keys refused; no API key is accepted until fixed");
                }
                state.keys = Arc::new(parsed);
                state.text = Some(text);
            }
            Err(e) => {
                state.text = None;
                state.keys = Arc::new(Err(format!(
                    "cannot read the API keys file {}: {e}",
                    path.display()
                )));
            }
        }
        state.keys.clone()
    }
}

/// The API's state: the shared parts and its own caches and limits.
pub struct Api {
    shared: Arc<Shared>,
    requests: Store<ApprovalRequest>,
    sources: Sources,
    keys: KeyFile,
    /// Per caller: its rate (calls per minute) and bucket.
    limits: Mutex<HashMap<String, (u32, RateLimit)>>,
    /// The audit budget of unauthenticated refusals.
    anonymous: Mutex<RateLimit>,
    /// The audit budget of calls refused for their caller's rate (429).
    over_rate: Mutex<RateLimit>,
}

impl Api {
    /// The role mapping now (503 while not loaded; routes then refuse an invalid one).
    fn mapping(&self) -> Result<Arc<Result<RoleMapping, String>>, Problem> {
        self.shared.mappings.get().map_err(Problem::unavailable)
    }

    /// Who calls: a bearer token (Entra ID) or an API key (`X-API-Key`).
    async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, Problem> {
        let header = |name: &str| -> Result<Option<&str>, Problem> {
            match headers.get(name) {
                None => Ok(None),
                Some(v) => v
                    .to_str()
                    .map(|s| Some(s.trim()))
                    .map_err(|_| Problem::unauthorized(format!("the {name} header is not text"))),
            }
        };
        let bearer = header("authorization")?.map(|h| {
            // The scheme is case-insensitive (RFC 9110).
            h.split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token)
                .ok_or_else(|| {
                    Problem::unauthorized(
                        "the Authorization header must be Bearer <Entra ID access token>",
                    )
                })
        });
        let key = header("x-api-key")?;
        match (bearer, key) {
            (Some(_), Some(_)) => Err(Problem::unauthorized(
                "send either a bearer token or an API key, not both",
            )),
            (Some(token), None) => {
                let token = token?.trim();
                let Some(verifier) = &self.shared.verifier else {
                    return Err(Problem::unauthorized(
                        "this operator has no Entra ID settings, so it cannot verify tokens",
                    ));
                };
                let id = verifier.verify(token).await.map_err(|why| {
                    Problem::unauthorized(format!("the token was refused: {why}"))
                })?;
                Ok(if id.application {
                    Caller::Application(id)
                } else {
                    Caller::Person(id)
                })
            }
            (None, Some(presented)) => {
                let keys = self.keys.current();
                // What is wrong with the file is in the operator's log, not told to callers.
                let keys = keys.as_ref().as_ref().map_err(|_| {
                    Problem::unavailable(
                        "API keys cannot be checked now: the operator's keys file is unreadable or invalid (see its log)",
                    )
                })?;
                let key = keys
                    .find(presented)
                    .ok_or_else(|| Problem::unauthorized("the API key is not valid"))?;
                Ok(Caller::Key {
                    name: key.name.clone(),
                    roles: key.roles.clone(),
                    requests_per_minute: key.requests_per_minute,
                })
            }
            (None, None) => Err(Problem::unauthorized(
                "no credentials: send Authorization: Bearer <Entra ID access token>, or X-API-Key: <key>",
            )),
        }
    }

    /// Takes a token from the caller's bucket (an API key's configured rate, or
    /// [`TOKEN_CALLS_PER_MINUTE`] per Entra ID identity; per replica), or refuses with 429 and
    /// when to come back. A key whose rate was changed gets a bucket of the new rate.
    fn within_rate(&self, caller: &Caller) -> Result<(), Problem> {
        let (who, per_minute, what) = match caller {
            Caller::Key {
                name,
                requests_per_minute,
                ..
            } => (
                format!("key/{name}"),
                *requests_per_minute,
                format!("API key {name}"),
            ),
            Caller::Person(id) | Caller::Application(id) => (
                format!("entra/{}", id.entra_id()),
                TOKEN_CALLS_PER_MINUTE,
                id.username.clone(),
            ),
        };
        let now = Instant::now();
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        if limits.len() >= MAX_TRACKED_CALLERS && !limits.contains_key(&who) {
            limits.clear();
        }
        let rate = f64::from(per_minute);
        let fresh = || (per_minute, RateLimit::new(rate / 60.0, rate, now));
        let entry = limits.entry(who).or_insert_with(fresh);
        if entry.0 != per_minute {
            *entry = fresh();
        }
        if entry.1.take(now) {
            return Ok(());
        }
        let wait = entry.1.wait().as_secs_f64().ceil().max(1.0);
        Err(Problem {
            retry_after: Some(wait as u64),
            ..Problem::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{what} is over its rate of {per_minute} calls per minute; try again in {wait} s"
                ),
            )
        })
    }

    /// Records the call (who, what, outcome) and answers it. A call that cannot be recorded is
    /// answered 503 (fail closed) — except unauthenticated refusals beyond their audit budget,
    /// which are answered as they are and only counted.
    async fn finish(
        &self,
        caller: Option<&Caller>,
        call: &str,
        outcome: Result<serde_json::Value, Problem>,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        let code = match &outcome {
            Ok(_) => 200,
            Err(p) => p.status.as_u16(),
        };
        let (event, status) = match (caller, code) {
            (None, _) | (_, 401) => (EventType::AuthFailure, "denied"),
            (_, 403) => (EventType::PermissionDenied, "denied"),
            (_, 429) => (EventType::PermissionDenied, "rate_limited"),
            (_, 200) => (EventType::AuthSuccess, "success"),
            _ => (EventType::AuthSuccess, "failure"),
        };
        // Refusals a flood can cause are written within a budget, not each one.
        let budget = match (caller, code) {
            (None, _) => Some(&self.anonymous),
            (Some(_), 429) => Some(&self.over_rate),
            _ => None,
        };
        let audited = budget.is_none_or(|b| {
            b.lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(Instant::now())
        });
        crate::metrics::METRICS
            .api_calls
            .get_or_create(&crate::metrics::ApiLabels {
                code: code.to_string(),
                audited: audited.to_string(),
            })
            .inc();
        if audited {
            let recorded = match self.draft(caller, call, event, status, &outcome, code) {
                Some(draft) => self.shared.audit.record(draft).await.map(|_| ()),
                None => Err("no random event id could be made".to_owned()),
            };
            if let Err(e) = recorded {
                tracing::error!(%call, %e, "API call not recorded in the audit log");
                // An act stored on its request is recorded by the operator when it sees it,
                // whatever happens to this call's own entry: say so rather than "refused".
                let stored = outcome.as_ref().is_ok_and(|v| v.get("act").is_some());
                let detail = if stored {
                    format!(
                        "the act was stored on the request (the operator records it), but this call's own audit entry could not be written: {e}"
                    )
                } else {
                    format!(
                        "this call could not be recorded in the audit log, so it is refused: {e}"
                    )
                };
                return Problem::unavailable(detail).into_response();
            }
        }
        match outcome {
            Ok(body) => axum::Json(body).into_response(),
            Err(problem) => problem.into_response(),
        }
    }

    fn draft(
        &self,
        caller: Option<&Caller>,
        call: &str,
        event: EventType,
        status: &str,
        outcome: &Result<serde_json::Value, Problem>,
        code: u16,
    ) -> Option<crate::audit::Draft> {
        let user = caller.map_or_else(|| "(anonymous)".to_owned(), Caller::username);
        // Bounded: what a caller sends cannot make big entries.
        let mut d = crate::audit::Draft::new(
            event,
            &user,
            "http",
            crate::json::truncate(call, MAX_AUDITED_CALL),
            "HttpApi",
            status,
        );
        d.auth_method = caller.map_or("none", Caller::auth_method).to_owned();
        if let (Some(c), Ok(mapping)) = (caller, self.mapping())
            && let Ok(mapping) = mapping.as_ref()
        {
            d.user_roles = c
                .subject(mapping, "")
                .roles
                .iter()
                .map(|r| r.as_str().to_owned())
                .collect();
        }
        d.error_message = outcome
            .as_ref()
            .err()
            .map(|p| crate::json::truncate(&p.detail, MAX_AUDITED_DETAIL).to_owned());
        // A random id, or none: the same id twice would make the log drop the second call as
        // a repeat of the first.
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).ok()?;
        d.event_id = crate::hex_prefix(&id, 8);
        d.timestamp = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        d.idempotency_key = format!("http/{}", d.event_id);
        d.metadata = serde_json::json!({
            "via": "http", "httpStatus": code,
            "apiKey": match caller { Some(Caller::Key { name, .. }) => Some(name), _ => None },
            "entra": match caller {
                Some(Caller::Person(id) | Caller::Application(id)) => Some(id.entra_id()),
                _ => None,
            },
        });
        Some(d)
    }
}

/// Serves the API on `listener` (bound to `settings.addr`) with `tls` until `shutdown`
/// completes, once its caches are loaded.
pub async fn serve(
    shared: Arc<Shared>,
    settings: Settings,
    listener: tokio::net::TcpListener,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let client = shared.client.clone();
    let (requests, writer) = reflector::store();
    let watch = reflector::reflector(
        writer,
        crate::controller::stores::watch(
            kube::Api::<ApprovalRequest>::all(client.clone()),
            watcher::Config::default(),
        ),
    );
    tokio::spawn(futures::StreamExt::for_each(watch, |_| async {}));
    let (sources, changes) = Sources::watch(&client, &shared.namespace);
    tokio::spawn(futures::StreamExt::for_each(changes, |()| async {}));
    let api = Arc::new(Api {
        shared,
        requests: requests.clone(),
        sources: sources.clone(),
        keys: KeyFile::new(settings.api_keys),
        limits: Mutex::default(),
        anonymous: Mutex::new(RateLimit::new(
            REFUSAL_AUDITS_PER_SECOND,
            REFUSAL_AUDIT_BURST,
            Instant::now(),
        )),
        over_rate: Mutex::new(RateLimit::new(
            REFUSAL_AUDITS_PER_SECOND,
            REFUSAL_AUDIT_BURST,
            Instant::now(),
        )),
    });
    if let Err(e) = api.keys.current().as_ref() {
        tracing::error!(%e, "the HTTP API starts without API keys");
    }
    let app = routes::router(api)
        .layer(axum::middleware::from_fn(routes::within_deadline))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY));
    let ready = async move {
        let _ = requests.wait_until_ready().await;
        let _ = sources.policies.wait_until_ready().await;
        let _ = sources.capabilities.wait_until_ready().await;
    };
    ready.await;
    tracing::info!(addr = %settings.addr, "HTTP API serving");
    crate::https::serve(
        listener,
        tokio_rustls::TlsAcceptor::from(tls),
        app,
        "api",
        shutdown,
    )
    .await;
}
