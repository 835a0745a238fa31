//! One AdmissionRequest through the admission core: who asks, which review applies to the
//! resource and operation, and the typed objects it needs. Pure: the webhook gathers the role
//! mapping and verifies approval tokens (I/O), then calls [`review`].

use chrono::{DateTime, Utc};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, Operation};
use serde::de::DeserializeOwned;

use super::{Env, Verdict};
use crate::crd::{AgentDeployment, ApprovalRequest, DeploymentPolicy};
use crate::identity::Identity;
use crate::identity::entra::{EntraIdentity, SignIn};

/// Who the API server says asks.
pub fn user(req: &AdmissionRequest<DynamicObject>) -> Identity {
    Identity {
        username: req.user_info.username.clone().unwrap_or_default(),
        uid: req.user_info.uid.clone(),
        groups: req.user_info.groups.clone().unwrap_or_default(),
    }
}

/// What the API server vouched for about how the requester signed in (`userInfo.extra`), when
/// `tenants` trust it (see [`SignIn::from_extra`]).
pub fn sign_in(req: &AdmissionRequest<DynamicObject>, tenants: Option<&[String]>) -> SignIn {
    match &req.user_info.extra {
        Some(extra) => SignIn::from_extra(extra, req.user_info.uid.as_deref(), tenants),
        None => SignIn::default(),
    }
}

fn typed<K: DeserializeOwned>(obj: Option<&DynamicObject>) -> Result<K, String> {
    let obj = obj.ok_or("the request carries no object")?;
    let value = serde_json::to_value(obj).map_err(|e| e.to_string())?;
    serde_json::from_value(value).map_err(|e| format!("cannot read the object: {e}"))
}

/// The Entra ID token an ApprovalRequest update gives with `approve-token`, if it gives one:
/// the webhook verifies it and passes the result to [`review`].
pub fn approval_token(path: &str, req: &AdmissionRequest<DynamicObject>) -> Option<String> {
    if path != "approvalrequests" || req.operation != Operation::Update {
        return None;
    }
    let new = typed::<ApprovalRequest>(req.object.as_ref()).ok()?;
    let old = typed::<ApprovalRequest>(req.old_object.as_ref()).ok()?;
    super::approval_request::token(&old, &new).map(str::to_owned)
}

/// The verdict on `req`, sent to the webhook path `path` (`agentdeployments`,
/// `agentdeployments-final`, `approvalrequests`, `deploymentpolicies`, `status`), with `token`
/// the verification of [`approval_token`] and `sign_in_tenants` the tenants whose sign-ins at
/// the API server are trusted (None: none). An error is a request the core cannot review: the
/// webhook refuses it (fail closed).
pub fn review(
    env: &Env,
    path: &str,
    req: &AdmissionRequest<DynamicObject>,
    token: Option<Result<EntraIdentity, String>>,
    sign_in_tenants: Option<&[String]>,
    now: DateTime<Utc>,
) -> Result<Verdict, String> {
    let user = user(req);
    // The operator's own writes (status, requests, finalizers) pass untouched.
    if user.username == env.operator {
        return Ok(Verdict::allow());
    }
    let resource = match &req.namespace {
        Some(ns) => format!("{ns}/{}", req.name),
        None => req.name.clone(),
    };
    Ok(match (path, &req.operation) {
        ("status", _) => super::status(env, &user, &req.kind.kind, resource),
        ("agentdeployments", Operation::Create | Operation::Update) => {
            // What our types cannot read, the API server's schema refuses next (mutating
            // webhooks run before schema validation); the operator never trusts an object
            // without a verified stamp.
            let Ok(new) = typed::<AgentDeployment>(req.object.as_ref()) else {
                return Ok(Verdict::allow());
            };
            let old = typed::<AgentDeployment>(req.old_object.as_ref()).ok();
            super::agent_deployment::review(env, &user, old.as_ref(), &new, now)
        }
        ("agentdeployments-final", Operation::Create | Operation::Update) => {
            // After the schema: what our types cannot read is refused (fail closed).
            let new = typed::<AgentDeployment>(req.object.as_ref())?;
            let old = typed::<AgentDeployment>(req.old_object.as_ref()).ok();
            super::agent_deployment::review_final(env, &user, old.as_ref(), &new)
        }
        ("approvalrequests", Operation::Create) => {
            let new = typed::<ApprovalRequest>(req.object.as_ref())?;
            super::approval_request::review_create(env, &user, &new)
        }
        ("approvalrequests", Operation::Update) => {
            let new = typed::<ApprovalRequest>(req.object.as_ref())?;
            let old = typed::<ApprovalRequest>(req.old_object.as_ref())?;
            super::approval_request::review_update(
                env,
                &user,
                &sign_in(req, sign_in_tenants),
                &old,
                &new,
                token,
                now,
            )
        }
        ("deploymentpolicies", Operation::Delete) => {
            let old = typed::<DeploymentPolicy>(req.old_object.as_ref())?;
            super::deployment_policy::review_delete(env, &user, &old)
        }
        ("deploymentpolicies", Operation::Create | Operation::Update) => {
            let new = typed::<DeploymentPolicy>(req.object.as_ref())?;
            super::deployment_policy::review_write(&user, &new)
        }
        (path, op) => return Err(format!("no review for {op:?} on {path}")),
    })
}
