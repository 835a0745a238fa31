//! The `/v1` routes: thin handlers that authenticate, gather inputs from the caches, call the
//! pure core (the act rules of the admission webhook, `decide()`), write with optimistic
//! concurrency, and answer through [`Api::finish`] (audited).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::{Value, json};

use super::problem::Problem;
use super::{Api, Caller};
use crate::admission::Env;
use crate::admission::approval_request::{Actor, act, acts_with};
use crate::approval::signed::{self, ACTS, ActKind, SignedAct};
use crate::audit::EventType;
use crate::crd::approval_request::ApprovalPhase;
use crate::crd::{AgentDeployment, ApprovalRequest};
use crate::identity::{Check, Identity, Permission, RoleMapping};

/// The OpenAPI description of these routes.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The longest comment or reason taken with an act.
const MAX_COMMENT: usize = 2000;
/// History entries answered at most per call, and segments (of up to 1 MiB) searched at most.
const MAX_HISTORY: usize = 1000;
const HISTORY_SEGMENTS: usize = 20;
/// Lost races an act survives before it is answered 503.
const ACT_ATTEMPTS: usize = 5;

type Shared = State<Arc<Api>>;
type Params = Query<HashMap<String, String>>;

/// The routes.
pub fn router(api: Arc<Api>) -> Router {
    // Policies are read here and written through Git and kubectl only.
    let read_only = |reads: axum::routing::MethodRouter<Arc<Api>>| {
        reads
            .post(policies_read_only)
            .put(policies_read_only)
            .patch(policies_read_only)
            .delete(policies_read_only)
    };
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/policies", read_only(get(list_policies)))
        .route("/v1/policies/evaluate", post(evaluate))
        .route("/v1/policies/{name}", read_only(get(get_policy)))
        .route("/v1/approvals/pending", get(pending))
        .route("/v1/approvals/history", get(history))
        .route("/v1/approvals/{namespace}/{name}", get(get_request))
        .route("/v1/approvals/{namespace}/{name}/{action}", post(act_on))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(api)
}

/// Ends a call that takes longer than [`super::CALL_TIMEOUT`], reading its body included, so
/// that slow clients cannot hold connections.
pub async fn within_deadline(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(super::CALL_TIMEOUT, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the call took longer than {} s",
                super::CALL_TIMEOUT.as_secs()
            ),
        )
        .into_response(),
    }
}

/// An extractor's refusal (a body too large, a malformed query) as a problem.
fn rejected(status: StatusCode, text: String) -> Problem {
    Problem::new(status, text)
}

/// Authenticates, runs `body` for the caller, and answers through [`Api::finish`].
async fn call<F, Fut>(api: Arc<Api>, headers: &HeaderMap, what: String, body: F) -> Response
where
    F: FnOnce(Arc<Api>, Caller) -> Fut,
    Fut: Future<Output = Result<Value, Problem>>,
{
    match api.authenticate(headers).await {
        Err(p) => api.finish(None, &what, Err(p)).await,
        Ok(caller) => {
            let outcome = match api.within_rate(&caller) {
                Ok(()) => body(api.clone(), caller.clone()).await,
                Err(p) => Err(p),
            };
            api.finish(Some(&caller), &what, outcome).await
        }
    }
}

/// 403 unless `caller` holds `permission` (by roles that hold in every environment), with the
/// permission check's own words.
fn require(mapping: &RoleMapping, caller: &Caller, permission: Permission) -> Result<(), Problem> {
    match mapping.can(&caller.subject(mapping, ""), permission, "") {
        Check::Allowed { .. } => Ok(()),
        Check::NeedsApproval { reason } | Check::Denied { reason } => {
            Err(Problem::forbidden(reason))
        }
    }
}

fn env<'a>(api: &'a Api, mapping: &'a RoleMapping) -> Env<'a> {
    Env {
        mapping,
        key: &api.shared.key,
        operator: &api.shared.operator,
    }
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

async fn no_route(
    State(api): Shared,
    headers: HeaderMap,
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> Response {
    let what = format!("{method} {}", uri.path());
    call(api, &headers, what.clone(), |_, _| async move {
        Err(Problem::not_found(format!(
            "no route {what}; the routes are described at /v1/openapi.json"
        )))
    })
    .await
}

async fn wrong_method(
    State(api): Shared,
    headers: HeaderMap,
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> Response {
    let what = format!("{method} {}", uri.path());
    call(api, &headers, what, |_, _| async move {
        Err(Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "{method} is not allowed on {}; see /v1/openapi.json",
                uri.path()
            ),
        ))
    })
    .await
}

async fn policies_read_only(
    State(api): Shared,
    headers: HeaderMap,
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> Response {
    let what = format!("{method} {}", uri.path());
    call(api, &headers, what, |_, _| async move {
        Err(Problem {
            allow: Some("GET"),
            ..Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "policies are read-only here: they are changed through Git and kubectl (kubectl apply -f policy.yaml), where the admission webhook checks them and the change is reviewed like any other",
            )
        })
    })
    .await
}

async fn list_policies(State(api): Shared, headers: HeaderMap) -> Response {
    call(
        api,
        &headers,
        "GET /v1/policies".into(),
        |api, caller| async move {
            let mapping = api.mapping()?;
            require(checked(&mapping)?, &caller, Permission::ViewStatus)?;
            kubernetes_permits(&api, &caller, &[READ_POLICIES]).await?;
            let mut items: Vec<Value> = api
                .sources
                .policies
                .state()
                .iter()
                .map(|p| json!({"name": p.metadata.name, "spec": p.spec}))
                .collect();
            items.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
            Ok(json!({"items": items}))
        },
    )
    .await
}

async fn get_policy(State(api): Shared, headers: HeaderMap, Path(name): Path<String>) -> Response {
    let what = format!("GET /v1/policies/{name}");
    call(api, &headers, what, |api, caller| async move {
        let mapping = api.mapping()?;
        require(checked(&mapping)?, &caller, Permission::ViewStatus)?;
        kubernetes_permits(&api, &caller, &[READ_POLICIES]).await?;
        let policy = api
            .sources
            .policies
            .get(&ObjectRef::new(&name))
            .ok_or_else(|| Problem::not_found(format!("no DeploymentPolicy {name}")))?;
        Ok(json!({"name": policy.metadata.name, "spec": policy.spec, "status": policy.status}))
    })
    .await
}

/// Reading policies, as kubectl would (`kubectl get deploymentpolicies`).
const READ_POLICIES: Access = Access {
    verb: "list",
    resource: "deploymentpolicies",
    namespace: None,
};

/// What a caller does, as Kubernetes RBAC names it: `verb` on our `resource` (plural), in
/// `namespace` (None: cluster-wide).
#[derive(Clone, Copy)]
struct Access<'a> {
    verb: &'a str,
    resource: &'a str,
    namespace: Option<&'a str>,
}

/// Whether Kubernetes RBAC allows a person or application `access` (a SubjectAccessReview of
/// the name and groups their token gives): the HTTP API acts and shows things only where
/// kubectl would let them. API keys have no Kubernetes identity: their reach is their roles.
async fn kubernetes_allows(
    api: &Api,
    caller: &Caller,
    access: Access<'_>,
) -> Result<bool, Problem> {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    let (Caller::Person(id) | Caller::Application(id)) = caller else {
        return Ok(true);
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(id.username.clone()),
            // A token's groups are directory groups: none may pass for a Kubernetes system
            // group (system:masters would pass every check).
            groups: Some(
                id.groups
                    .iter()
                    .filter(|g| !g.starts_with("system:"))
                    .cloned()
                    .collect(),
            ),
            uid: Some(id.oid.clone()),
            resource_attributes: Some(ResourceAttributes {
                namespace: access.namespace.map(str::to_owned),
                verb: Some(access.verb.to_owned()),
                group: Some("dvo.caat.io".to_owned()),
                resource: Some(access.resource.to_owned()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let answer = kube::Api::<SubjectAccessReview>::all(api.shared.client.clone())
        .create(&kube::api::PostParams::default(), &review)
        .await
        .map_err(|e| Problem::unavailable(format!("cannot ask Kubernetes RBAC: {e}")))?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// [`kubernetes_allows`] for each of `all`, or 403 naming what is not allowed.
async fn kubernetes_permits(api: &Api, caller: &Caller, all: &[Access<'_>]) -> Result<(), Problem> {
    for &access in all {
        if !kubernetes_allows(api, caller, access).await? {
            let place = access
                .namespace
                .map_or("cluster-wide".to_owned(), |ns| format!("in namespace {ns}"));
            return Err(Problem::forbidden(format!(
                "{} may not {} {} {place} (Kubernetes RBAC): the HTTP API shows and does only what kubectl would let you",
                caller.username(),
                access.verb,
                access.resource
            )));
        }
    }
    Ok(())
}

/// A request's namespace and name as Kubernetes allows them (a DNS label and a DNS subdomain),
/// or 404: nothing else reaches the Kubernetes client.
fn object_name(namespace: &str, name: &str) -> Result<(), Problem> {
    let label = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
    };
    if label(namespace, 63) && !namespace.contains('.') && label(name, 253) {
        return Ok(());
    }
    Err(Problem::not_found(
        "no such ApprovalRequest: a namespace and a name are lowercase letters, digits, '-' and '.'",
    ))
}

/// The mapping [`Api::mapping`] gave, or 503 when it is invalid (nothing is decided on it).
fn checked(mapping: &Arc<Result<RoleMapping, String>>) -> Result<&RoleMapping, Problem> {
    mapping
        .as_ref()
        .as_ref()
        .map_err(|e| Problem::unavailable(format!("the role mapping is invalid: {e}")))
}

async fn evaluate(
    State(api): Shared,
    headers: HeaderMap,
    params: Result<Params, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    call(
        api,
        &headers,
        "POST /v1/policies/evaluate".into(),
        |api, caller| async move {
            let params = params.map_err(|e| rejected(e.status(), e.body_text()))?;
            let body = body.map_err(|e| rejected(e.status(), e.body_text()))?;
            let mapping = api.mapping()?;
            require(checked(&mapping)?, &caller, Permission::ViewStatus)?;
            let adep: AgentDeployment = serde_json::from_slice(&body).map_err(|e| {
                Problem::bad_request(format!(
                    "the body must be an AgentDeployment manifest as JSON: {e}"
                ))
            })?;
            let at = match params.get("at") {
                None => Utc::now(),
                Some(at) => at.parse::<DateTime<Utc>>().map_err(|e| {
                    Problem::bad_request(format!("at must be an RFC 3339 time: {e}"))
                })?,
            };
            let rules = api.sources.build().rules.map_err(|e| {
                Problem::unavailable(format!("the policies cannot be used now: {e}"))
            })?;
            let requester = match &caller {
                Caller::Person(id) | Caller::Application(id) => id.identity(),
                Caller::Key { .. } => Identity {
                    username: caller.username(),
                    ..Identity::default()
                },
            };
            // As `dvo evaluate --staging-validated`: the caller says whether the agent passed staging.
            let staging_validated = match params.get("stagingValidated").map(String::as_str) {
                None | Some("false") => false,
                Some("true") => true,
                Some(_) => {
                    return Err(Problem::bad_request(
                        "stagingValidated must be true or false",
                    ));
                }
            };
            let request =
                crate::cli::evaluate::request_for(&adep, Some(requester), staging_validated);
            let decision = crate::policy::decide(&rules, &request, at);
            Ok(json!({"outcome": decision.outcome, "decision": decision}))
        },
    )
    .await
}

/// A request as the routes show it.
fn summary(apr: &ApprovalRequest) -> Value {
    let spec = &apr.spec;
    json!({
        "namespace": apr.metadata.namespace, "name": apr.metadata.name,
        "agent": spec.agent, "environment": spec.environment, "platform": spec.platform,
        "deployment": spec.deployment_ref.name, "specDigest": spec.spec_digest,
        "requester": spec.requester.as_ref().map(|r| &r.username),
        "justification": spec.justification,
        "requirements": spec.requirements, "expiresAt": spec.expires_at,
        "phase": apr.phase(),
    })
}

const ACTIONS: [(ActKind, &str); 3] = [
    (ActKind::Approve, "approve"),
    (ActKind::Reject, "reject"),
    (ActKind::Cancel, "cancel"),
];

/// What `actor` may do to `apr` now: exactly what the webhook would accept.
fn actions(
    env: &Env,
    actor: &Actor,
    apr: &ApprovalRequest,
    now: DateTime<Utc>,
) -> Vec<&'static str> {
    ACTIONS
        .iter()
        .filter(|(kind, _)| act(env, actor, apr, *kind, Some("a reason"), now).is_ok())
        .map(|(_, name)| *name)
        .collect()
}

async fn pending(
    State(api): Shared,
    headers: HeaderMap,
    params: Result<Params, QueryRejection>,
) -> Response {
    call(
        api,
        &headers,
        "GET /v1/approvals/pending".into(),
        |api, caller| async move {
            let params = params.map_err(|e| rejected(e.status(), e.body_text()))?;
            let mapping = api.mapping()?;
            let mapping = checked(&mapping)?;
            let env = env(&api, mapping);
            let now = Utc::now();
            let wanted = |key: &str, value: &str| params.get(key).is_none_or(|w| w == value);
            let mut may_patch: HashMap<String, bool> = HashMap::new();
            let mut items = vec![];
            for apr in api.requests.state() {
                let spec = &apr.spec;
                let ns = apr.metadata.namespace.as_deref().unwrap_or_default();
                if !(wanted("namespace", ns)
                    && wanted("environment", &spec.environment)
                    && wanted("agent", &spec.agent))
                    || apr.phase() != ApprovalPhase::Pending
                {
                    continue;
                }
                let actor = caller.actor(mapping, &spec.environment);
                let can = actions(&env, &actor, &apr, now);
                if can.is_empty() {
                    continue;
                }
                let rbac = match may_patch.get(ns) {
                    Some(known) => *known,
                    None => {
                        let access = Access {
                            verb: "patch",
                            resource: "approvalrequests",
                            namespace: Some(ns),
                        };
                        let known = kubernetes_allows(&api, &caller, access).await?;
                        may_patch.insert(ns.to_owned(), known);
                        known
                    }
                };
                if !rbac {
                    continue;
                }
                let mut item = summary(&apr);
                crate::json::set(&mut item, "actions", can);
                items.push(item);
            }
            items.sort_by(|a, b| a["expiresAt"].as_str().cmp(&b["expiresAt"].as_str()));
            Ok(json!({"items": items}))
        },
    )
    .await
}

fn act_summary(a: &SignedAct) -> Value {
    json!({
        "kind": a.kind, "username": a.subject.username,
        "roles": a.subject.roles, "at": a.at, "comment": a.comment, "mfa": a.mfa,
        "via": a.via.map_or("kubernetes", |_| "http"),
    })
}

async fn get_request(
    State(api): Shared,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let what = format!("GET /v1/approvals/{namespace}/{name}");
    call(api, &headers, what, |api, caller| async move {
        let mapping = api.mapping()?;
        let mapping = checked(&mapping)?;
        require(mapping, &caller, Permission::ViewStatus)?;
        object_name(&namespace, &name)?;
        let get = |resource| Access {
            verb: "get",
            resource,
            namespace: Some(&namespace),
        };
        kubernetes_permits(
            &api,
            &caller,
            &[get("approvalrequests"), get("agentdeployments")],
        )
        .await?;
        let apr = api
            .requests
            .get(&ObjectRef::new(&name).within(&namespace))
            .ok_or_else(|| Problem::not_found(format!("no ApprovalRequest {namespace}/{name}")))?;
        let acts = signed::Acts::read(&apr, &api.shared.key).unwrap_or_default();
        let decision =
            kube::Api::<AgentDeployment>::namespaced(api.shared.client.clone(), &namespace)
                .get_opt(&apr.spec.deployment_ref.name)
                .await
                .map_err(|e| Problem::unavailable(format!("cannot read the AgentDeployment: {e}")))?
                .and_then(|ad| ad.status)
                .and_then(|s| s.decision);
        let actor = caller.actor(mapping, &apr.spec.environment);
        let mut out = summary(&apr);
        crate::json::set(
            &mut out,
            "acts",
            acts.verified.iter().map(act_summary).collect::<Vec<_>>(),
        );
        crate::json::set(&mut out, "status", crate::json::to_value(&apr.status));
        crate::json::set(&mut out, "decision", crate::json::to_value(&decision));
        crate::json::set(
            &mut out,
            "actions",
            actions(&env(&api, mapping), &actor, &apr, Utc::now()),
        );
        Ok(out)
    })
    .await
}

/// The body of an act: `{"comment": "..."}` (approve, cancel) or `{"reason": "..."}` (reject).
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ActBody {
    comment: Option<String>,
    reason: Option<String>,
}

async fn act_on(
    State(api): Shared,
    headers: HeaderMap,
    Path((namespace, name, action)): Path<(String, String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let what = format!("POST /v1/approvals/{namespace}/{name}/{action}");
    call(api, &headers, what, |api, caller| async move {
        let body = body.map_err(|e| rejected(e.status(), e.body_text()))?;
        let Some((kind, _)) = ACTIONS.iter().find(|(_, n)| *n == action) else {
            return Err(Problem::not_found(format!(
                "no action {action}: approve, reject or cancel"
            )));
        };
        let given: ActBody = if body.iter().all(u8::is_ascii_whitespace) {
            ActBody::default()
        } else {
            serde_json::from_slice(&body).map_err(|e| {
                Problem::bad_request(format!(
                    "the body must be {{\"comment\": \"...\"}} or {{\"reason\": \"...\"}}: {e}"
                ))
            })?
        };
        let comment = given.reason.or(given.comment);
        let said = comment.as_deref().is_some_and(|c| !c.trim().is_empty());
        if *kind == ActKind::Reject && !said {
            return Err(Problem::bad_request(
                "a rejection needs a reason: {\"reason\": \"<why>\"}",
            ));
        }
        if comment
            .as_ref()
            .is_some_and(|c| c.chars().count() > MAX_COMMENT)
        {
            return Err(Problem::bad_request(format!(
                "the comment is longer than {MAX_COMMENT} characters"
            )));
        }
        record_act(&api, &caller, &namespace, &name, *kind, comment.as_deref()).await
    })
    .await
}

/// Checks the act against the request as the API server has it now and stores the signed act
/// at that very version (a lost race reads again and decides again).
async fn record_act(
    api: &Api,
    caller: &Caller,
    namespace: &str,
    name: &str,
    kind: ActKind,
    comment: Option<&str>,
) -> Result<Value, Problem> {
    object_name(namespace, name)?;
    let patch = Access {
        verb: "patch",
        resource: "approvalrequests",
        namespace: Some(namespace),
    };
    kubernetes_permits(api, caller, &[patch]).await?;
    let requests = kube::Api::<ApprovalRequest>::namespaced(api.shared.client.clone(), namespace);
    for _ in 0..ACT_ATTEMPTS {
        let mapping = api.mapping()?;
        let mapping = checked(&mapping)?;
        let env = env(api, mapping);
        let apr = requests
            .get_opt(name)
            .await
            .map_err(|e| Problem::unavailable(format!("cannot read the ApprovalRequest: {e}")))?
            .ok_or_else(|| Problem::not_found(format!("no ApprovalRequest {namespace}/{name}")))?;
        let now = Utc::now();
        let actor = caller.actor(mapping, &apr.spec.environment);
        let signed = act(&env, &actor, &apr, kind, comment, now).map_err(|r| {
            if r.conflict {
                Problem::conflict(r.message)
            } else {
                Problem::forbidden(r.message)
            }
        })?;
        let patch = json!({"metadata": {
            "resourceVersion": apr.metadata.resource_version,
            "annotations": {ACTS: acts_with(&env, &apr, signed.clone())},
        }});
        let params = PatchParams {
            field_manager: Some("dvo-operator-http-api".into()),
            ..PatchParams::default()
        };
        match requests.patch(name, &params, &Patch::Merge(&patch)).await {
            Ok(stored) => {
                let acts = signed::Acts::read(&stored, env.key).unwrap_or_default();
                // Said done only when it is there to see.
                if !acts
                    .verified
                    .iter()
                    .any(|a| a.signature == signed.signature)
                {
                    return Err(Problem::unavailable(
                        "the act was not found on the request after it was written; try again",
                    ));
                }
                let decided = acts.evaluate(&stored.spec, None, false, now);
                return Ok(json!({
                    "request": format!("{namespace}/{name}"), "act": act_summary(&signed),
                    "phase": decided.phase, "message": decided.message,
                }));
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(kube::Error::Api(e)) => {
                return Err(Problem::unavailable(format!(
                    "the act could not be stored: {}",
                    e.message
                )));
            }
            Err(e) => {
                return Err(Problem::unavailable(format!(
                    "the act could not be stored: {e}"
                )));
            }
        }
    }
    Err(Problem::unavailable(
        "the ApprovalRequest kept changing while the act was stored; try again",
    ))
}

async fn history(
    State(api): Shared,
    headers: HeaderMap,
    params: Result<Params, QueryRejection>,
) -> Response {
    call(
        api,
        &headers,
        "GET /v1/approvals/history".into(),
        |api, caller| async move {
            let params = params.map_err(|e| rejected(e.status(), e.body_text()))?;
            let mapping = api.mapping()?;
            require(checked(&mapping)?, &caller, Permission::ViewAuditLog)?;
            let limit = match params.get("limit") {
                None => 100,
                Some(l) => l
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=MAX_HISTORY).contains(l))
                    .ok_or_else(|| {
                        Problem::bad_request(format!("limit must be 1 to {MAX_HISTORY}"))
                    })?,
            };
            let events = [
                EventType::ApprovalRequested,
                EventType::ApprovalGranted,
                EventType::ApprovalDenied,
            ];
            let event = match params.get("event") {
            None => None,
            Some(e) => Some(
                events
                    .into_iter()
                    .find(|t| t.as_str() == e)
                    .ok_or_else(|| {
                        Problem::bad_request(
                            "event must be approval_requested, approval_granted or approval_denied",
                        )
                    })?,
            ),
        };
            // The same filter as `dvo audit query`, over the approval events only.
            let one = |key: &str| params.get(key).cloned().into_iter().collect::<Vec<_>>();
            let filter = crate::audit::query::Filter {
                users: one("user"),
                events: event.map_or_else(|| events.to_vec(), |e| vec![e]),
                environments: one("environment"),
                namespaces: one("namespace"),
                agents: one("agent"),
                ..Default::default()
            };
            let keep = |e: &crate::audit::Entry| filter.matches(e);
            let (entries, complete) = crate::audit::store::newest(
                &api.shared.client,
                &api.shared.namespace,
                keep,
                limit,
                HISTORY_SEGMENTS,
            )
            .await
            .map_err(|e| Problem::unavailable(format!("cannot read the audit log: {e}")))?;
            let items: Vec<Value> = entries
                .iter()
                .map(|e| {
                    let d = &e.draft;
                    json!({
                        "seq": e.seq, "timestamp": d.timestamp, "event": d.event_type,
                        "user": d.user_id, "roles": d.user_roles, "resource": d.resource,
                        "status": d.status, "environment": d.environment, "agents": d.agents,
                        "message": d.error_message, "via": d.metadata.get("via"),
                        "entryHash": e.entry_hash,
                    })
                })
                .collect();
            Ok(json!({"items": items, "complete": complete}))
        },
    )
    .await
}
