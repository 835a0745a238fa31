//! Acts on an ApprovalRequest as the admission webhook records them: people write
//! `dvo.caat.io/approve` (or `approve-token`, `reject`, `cancel`); the webhook checks who they
//! are and replaces the annotation, in the same write, by a signed act appended to
//! `dvo.caat.io/acts`. The operator counts only acts whose signature verifies for this request.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Act;
use crate::crd::ApprovalRequest;
use crate::identity::stamp::{sign_value, verify_value};
use crate::identity::{Role, Subject};

/// The annotation holding the signed acts (a JSON list), written by the webhook only.
pub const ACTS: &str = "dvo.caat.io/acts";
/// `kubectl annotate apr NAME dvo.caat.io/approve="comment"`.
pub const APPROVE: &str = "dvo.caat.io/approve";
/// An approval proving MFA: the value is an Entra ID access token, never stored.
pub const APPROVE_TOKEN: &str = "dvo.caat.io/approve-token";
/// `kubectl annotate apr NAME dvo.caat.io/reject="reason"` (the reason is required).
pub const REJECT: &str = "dvo.caat.io/reject";
/// `kubectl annotate apr NAME dvo.caat.io/cancel="why"`.
pub const CANCEL: &str = "dvo.caat.io/cancel";

/// What a person did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActKind {
    /// Approved.
    Approve,
    /// Rejected.
    Reject,
    /// Withdrew the request.
    Cancel,
}

/// How an act arrived, when not as an annotation written through the Kubernetes API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// The dvo HTTP API (`/v1/approvals/.../approve`), for a caller it authenticated itself.
    Http,
}

/// One act, as verified by the webhook, with the roles the person held when acting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedAct {
    /// What they did.
    pub kind: ActKind,
    /// Who, with their roles in the request's environment.
    #[serde(flatten)]
    pub subject: Subject,
    /// Their UID: the API server's for an annotation, the token's `oid` over HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// When the webhook accepted it.
    pub at: DateTime<Utc>,
    /// Their comment or reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Whether they proved multi-factor authentication: a verified Entra ID token, or a sign-in
    /// at the API server whose `amr` it passed on (when trusted).
    #[serde(default)]
    pub mfa: bool,
    /// `tid/oid` of the Entra ID identity they acted as: from the token they gave, or from the
    /// API server's sign-in claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entra: Option<String>,
    /// How the act arrived when not through the Kubernetes API (`http`: the dvo HTTP API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Via>,
    /// Hex HMAC-SHA256 over the request (namespace, name, UID, spec digest) and the act.
    #[serde(default)]
    pub signature: String,
}

fn message(apr: &ApprovalRequest, act: &SignedAct) -> serde_json::Value {
    let mut unsigned = crate::json::to_value(act);
    crate::json::set(&mut unsigned, "signature", serde_json::Value::Null);
    serde_json::json!({
        "namespace": apr.metadata.namespace, "name": apr.metadata.name, "uid": apr.metadata.uid,
        "digest": apr.spec.spec_digest, "act": unsigned,
    })
}

impl SignedAct {
    /// Signs `self` for `apr`.
    pub fn sign(mut self, key: &[u8], apr: &ApprovalRequest) -> SignedAct {
        self.signature = sign_value(key, &message(apr, &self));
        self
    }

    /// Whether the signature verifies for `apr`.
    pub fn verifies(&self, key: &[u8], apr: &ApprovalRequest) -> bool {
        verify_value(key, &message(apr, self), &self.signature)
    }

    /// As an input of the life cycle.
    pub fn act(&self) -> Act {
        Act {
            subject: self.subject.clone(),
            at: self.at,
            mfa: self.mfa,
            entra: self.entra.clone(),
        }
    }

    /// Whether this person holds `role`.
    pub fn holds(&self, role: Role) -> bool {
        self.subject.roles.contains(&role)
    }
}

/// The acts recorded on `apr` (its [`ACTS`] annotation), each with whether it verifies.
pub fn recorded(apr: &ApprovalRequest, key: &[u8]) -> Result<Vec<(SignedAct, bool)>, String> {
    let Some(text) = apr.metadata.annotations.as_ref().and_then(|a| a.get(ACTS)) else {
        return Ok(vec![]);
    };
    let acts: Vec<SignedAct> = serde_json::from_str(text)
        .map_err(|e| format!("annotation {ACTS} is not a list of signed acts: {e}"))?;
    Ok(acts
        .into_iter()
        .map(|a| {
            let ok = a.verifies(key, apr);
            (a, ok)
        })
        .collect())
}

/// The acts recorded on a request, split by whether their signature verifies for it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Acts {
    /// Acts the webhook signed for this very request, in the order given.
    pub verified: Vec<SignedAct>,
    /// Acts whose signature does not verify (forged, or copied from another request).
    pub forged: Vec<SignedAct>,
}

impl Acts {
    /// Reads and verifies the acts on `apr`.
    pub fn read(apr: &ApprovalRequest, key: &[u8]) -> Result<Acts, String> {
        let (verified, forged) = recorded(apr, key)?.into_iter().partition(|(_, ok)| *ok);
        let strip = |v: Vec<(SignedAct, bool)>| v.into_iter().map(|(a, _)| a).collect();
        Ok(Acts {
            verified: strip(verified),
            forged: strip(forged),
        })
    }

    /// The verified acts of one kind.
    pub fn of(&self, kind: ActKind) -> impl Iterator<Item = &SignedAct> {
        self.verified.iter().filter(move |a| a.kind == kind)
    }

    /// The approvals that counted in `eval` (this request's evaluation): the quorum.
    pub fn quorum<'a>(&'a self, eval: &super::Evaluation) -> Vec<&'a SignedAct> {
        self.of(ActKind::Approve)
            .zip(&eval.approvals)
            .filter(|(_, counted)| counted.is_ok())
            .map(|(act, _)| act)
            .collect()
    }

    /// The life cycle over the verified acts: the first rejection and cancellation count.
    pub fn evaluate(
        &self,
        spec: &crate::crd::approval_request::ApprovalRequestSpec,
        current: Option<crate::crd::approval_request::ApprovalPhase>,
        superseded: bool,
        now: DateTime<Utc>,
    ) -> super::Evaluation {
        let approvals: Vec<Act> = self.of(ActKind::Approve).map(SignedAct::act).collect();
        let rejection = self.of(ActKind::Reject).next().map(SignedAct::act);
        let cancellation = self.of(ActKind::Cancel).next().map(SignedAct::act);
        super::evaluate(&super::Input {
            spec,
            current,
            approvals: &approvals,
            rejection: rejection.as_ref(),
            cancellation: cancellation.as_ref(),
            superseded,
            now,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Identity, RoleMapping};

    fn apr() -> ApprovalRequest {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "dvo.caat.io/v1alpha1", "kind": "ApprovalRequest",
            "metadata": {"name": "gha-1", "namespace": "ns", "uid": "u-1"},
            "spec": {"deploymentRef": {"name": "gha", "uid": "ad-1"},
                "specDigest": format!("sha256:{}", "a".repeat(64)), "environment": "production",
                "agent": "GHA", "platform": "langchain",
                "requirements": [{"source": "policy/p", "roles": ["release_manager"], "minApprovals": 1}],
                "expiresAt": "2026-11-23T00:00:00Z"},
        }))
        .unwrap()
    }

    fn act() -> SignedAct {
        let identity = Identity {
            username: "rosa".into(),
            uid: None,
            groups: vec!["rm".into()],
        };
        let mapping: RoleMapping =
            crate::yaml::from_str("groups: {rm: [release_manager]}").unwrap();
        SignedAct {
            kind: ActKind::Approve,
            subject: mapping.subject(&identity, "production"),
            uid: Some("u-rosa".into()),
            at: "2026-11-22T03:00:00Z".parse().unwrap(),
            comment: Some("ok".into()),
            mfa: false,
            entra: None,
            via: None,
            signature: String::new(),
        }
    }

    #[test]
    fn an_act_verifies_only_unchanged_and_on_its_request() {
        let key = b"k".repeat(32);
        let signed = act().sign(&key, &apr());
        assert!(signed.verifies(&key, &apr()));
        assert!(!signed.verifies(b"another key", &apr()));
        let mut other = apr();
        other.metadata.uid = Some("u-2".into());
        assert!(!signed.verifies(&key, &other), "a re-created request");
        let mut other = apr();
        other.spec.spec_digest = format!("sha256:{}", "b".repeat(64));
        assert!(!signed.verifies(&key, &other), "another spec");
        let changes: [fn(&mut SignedAct); 7] = [
            |a| a.kind = ActKind::Reject,
            |a| a.via = Some(Via::Http),
            |a| a.entra = Some("tenant/oid".into()),
            |a| {
                a.subject.roles.insert(Role::Admin);
            },
            |a| a.mfa = true,
            |a| a.comment = None,
            |a| a.subject.username = "raj".into(),
        ];
        for change in changes {
            let mut forged = signed.clone();
            change(&mut forged);
            assert!(!forged.verifies(&key, &apr()), "{forged:?}");
        }
    }

    #[test]
    fn recorded_reads_the_annotation_and_marks_forgeries() {
        let key = b"k".repeat(32);
        let mut request = apr();
        assert_eq!(recorded(&request, &key), Ok(vec![]));
        let good = act().sign(&key, &request);
        let mut forged = act();
        forged.subject.username = "mallory".into();
        forged.signature = good.signature.clone();
        let text = serde_json::to_string(&[&good, &forged]).unwrap();
        request.metadata.annotations = Some([(ACTS.to_owned(), text)].into());
        assert_eq!(
            recorded(&request, &key),
            Ok(vec![(good, true), (forged, false)])
        );
        request.metadata.annotations = Some([(ACTS.to_owned(), "nope".to_owned())].into());
        assert!(recorded(&request, &key).unwrap_err().contains(ACTS));
    }
}
