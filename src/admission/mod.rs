//! What the admission webhook decides, as pure functions: who may write what to our objects,
//! and which stamps the webhook adds in the same write. The webhook server (`crate::webhook`)
//! only parses requests, gathers the role mapping and keys, calls these, audits and answers.

pub mod agent_deployment;
pub mod approval_request;
pub mod deployment_policy;
#[cfg(test)]
mod fixtures;
pub mod request;

use serde_json::{Value, json};

use crate::audit::{Draft, EventType};
use crate::identity::{Identity, RoleMapping};

/// The immutable inputs every review shares.
#[derive(Clone, Copy, Debug)]
pub struct Env<'a> {
    /// Roles of people and machines.
    pub mapping: &'a RoleMapping,
    /// HMAC key of stamps.
    pub key: &'a [u8],
    /// The operator's own user name: the only writer of status and of ApprovalRequests.
    pub operator: &'a str,
}

/// The answer to one admission request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Verdict {
    /// Why the write is refused (shown by kubectl); None: allowed.
    pub refusal: Option<String>,
    /// JSON Patch operations applied to the object when allowed.
    pub patch: Vec<Value>,
    /// The fact to record in the audit log before answering (not on dry runs).
    pub audit: Option<Draft>,
}

impl Verdict {
    /// Allowed, unchanged, nothing to record.
    pub fn allow() -> Verdict {
        Verdict::default()
    }

    /// The verdict once its audit fact was (or was not) appended. Write-ahead: a change is
    /// allowed only once the log holds it; a refusal stays a refusal either way.
    pub fn after_audit(self, recorded: Result<(), String>) -> Verdict {
        match (recorded, &self.refusal) {
            (Err(e), None) => Verdict {
                refusal: Some(format!(
                    "the audit log could not record this change, so it is refused; try again: {e}"
                )),
                patch: vec![],
                audit: None,
            },
            _ => self,
        }
    }

    /// Refused with `message`, recorded as `event`.
    pub fn refuse(message: String, audit: Draft) -> Verdict {
        Verdict {
            refusal: Some(message),
            patch: vec![],
            audit: Some(audit),
        }
    }
}

/// JSON Patch operations on an object's annotations.
pub struct AnnotationPatch {
    has_map: bool,
    ops: Vec<Value>,
}

fn pointer(key: &str) -> String {
    format!(
        "/metadata/annotations/{}",
        key.replace('~', "~0").replace('/', "~1")
    )
}

impl AnnotationPatch {
    /// Patches for an object that has (or has no) annotations map yet.
    pub fn new(has_map: bool) -> AnnotationPatch {
        AnnotationPatch {
            has_map,
            ops: vec![],
        }
    }

    /// Sets `key` to `value`.
    pub fn set(&mut self, key: &str, value: &str) {
        if !self.has_map {
            self.ops
                .push(json!({"op": "add", "path": "/metadata/annotations", "value": {}}));
            self.has_map = true;
        }
        self.ops
            .push(json!({"op": "add", "path": pointer(key), "value": value}));
    }

    /// Removes `key`, which must be present.
    pub fn remove(&mut self, key: &str) {
        self.ops.push(json!({"op": "remove", "path": pointer(key)}));
    }

    /// The operations.
    pub fn into_ops(self) -> Vec<Value> {
        self.ops
    }
}

/// An audit draft about an admission request (the shell sets its ids from the request UID).
pub fn draft(
    event: EventType,
    user: &Identity,
    operation: &str,
    resource: String,
    kind: &str,
    status: &str,
    message: Option<String>,
) -> Draft {
    let mut d = Draft::new(event, &user.username, operation, &resource, kind, status);
    d.auth_method = "kubernetes".into();
    d.error_message = message;
    d.metadata = json!({"groups": user.groups, "uid": user.uid});
    d
}

/// The actor of an audit entry whose caller did not authenticate as the API server.
pub const UNVERIFIED_CALLER: &str = "(unverified webhook caller)";

/// `draft` for a request whose caller did not prove it is the API server (no client certificate
/// from the configured CA): the user in it is only claimed, so the entry names no person as its
/// actor and keeps the claim in `metadata.claimedUser`.
pub fn unverified_caller(mut d: Draft) -> Draft {
    crate::json::set(&mut d.metadata, "claimedUser", d.user_id.clone());
    crate::json::set(&mut d.metadata, "claimedRoles", d.user_roles.clone());
    d.user_id = UNVERIFIED_CALLER.to_owned();
    d.user_roles = vec![];
    d.auth_method = "unverified-caller".into();
    d
}

/// Refuses writes to a status subresource of ours by anyone but the operator.
pub fn status(env: &Env, user: &Identity, kind: &str, resource: String) -> Verdict {
    if user.username == env.operator {
        return Verdict::allow();
    }
    let message = format!(
        "the status of {kind} {resource} is written by the dvo operator ({}) only; {} may not change it",
        env.operator, user.username
    );
    Verdict::refuse(
        message.clone(),
        draft(
            EventType::PermissionDenied,
            user,
            "update_status",
            resource,
            kind,
            "denied",
            Some(message),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_patches_escape_keys_and_create_the_map() {
        let mut p = AnnotationPatch::new(false);
        p.set("dvo.caat.io/acts", "[]");
        p.remove("a~b/c");
        let mut obj = json!({"metadata": {"name": "x"}});
        let ops = p.into_ops();
        assert_eq!(ops[1]["path"], "/metadata/annotations/dvo.caat.io~1acts");
        assert_eq!(ops[2]["path"], "/metadata/annotations/a~0b~1c");
        let patch: json_patch::Patch = serde_json::from_value(json!(&ops[..2])).unwrap();
        json_patch::patch(&mut obj, &patch).unwrap();
        assert_eq!(obj["metadata"]["annotations"]["dvo.caat.io/acts"], "[]");
    }

    #[test]
    fn only_the_operator_writes_status() {
        let mapping = RoleMapping::default();
        let env = Env {
            mapping: &mapping,
            key: b"k",
            operator: "system:serviceaccount:dvo-system:dvo-operator",
        };
        let op = Identity {
            username: env.operator.into(),
            ..Identity::default()
        };
        assert_eq!(
            status(&env, &op, "ApprovalRequest", "ns/a".into()),
            Verdict::allow()
        );
        let admin = Identity {
            username: "alice-admin".into(),
            ..Identity::default()
        };
        let v = status(&env, &admin, "ApprovalRequest", "ns/a".into());
        assert_eq!(
            v.refusal.as_deref(),
            Some(
                "the status of ApprovalRequest ns/a is written by the dvo operator (system:serviceaccount:dvo-system:dvo-operator) only; alice-admin may not change it"
            )
        );
        assert_eq!(v.audit.unwrap().event_type, EventType::PermissionDenied);
    }

    #[test]
    fn an_unverified_caller_never_names_a_person() {
        let alice = Identity {
            username: "alice-admin".into(),
            ..Identity::default()
        };
        let mut d = draft(
            EventType::PermissionDenied,
            &alice,
            "create",
            "ns/x".into(),
            "AgentDeployment",
            "denied",
            None,
        );
        d.user_roles = vec!["admin".into()];
        let mut odd = d.clone();
        odd.metadata = json!("not an object");
        for d in [d, odd] {
            let u = unverified_caller(d);
            assert_eq!(u.user_id, UNVERIFIED_CALLER);
            assert_eq!(u.auth_method, "unverified-caller");
            assert!(u.user_roles.is_empty());
            assert_eq!(u.metadata["claimedUser"], "alice-admin");
            assert_eq!(u.metadata["claimedRoles"], json!(["admin"]));
        }
    }

    #[test]
    fn a_change_the_audit_log_did_not_record_is_refused() {
        let allowed = Verdict {
            refusal: None,
            patch: vec![json!({"op": "add", "path": "/x", "value": 1})],
            audit: None,
        };
        assert_eq!(allowed.clone().after_audit(Ok(())), allowed);
        let failed = allowed.after_audit(Err("etcd is down".into()));
        assert_eq!(
            failed.refusal.as_deref(),
            Some(
                "the audit log could not record this change, so it is refused; try again: etcd is down"
            )
        );
        assert!(failed.patch.is_empty(), "nothing of the change is applied");
        let refused = Verdict {
            refusal: Some("no".into()),
            patch: vec![],
            audit: None,
        };
        assert_eq!(refused.clone().after_audit(Err("x".into())), refused);
    }
}
