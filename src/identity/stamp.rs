//! The requester stamp: who asked for an AgentDeployment spec, as the API server authenticated
//! them, bound to the object and the spec digest by an HMAC-SHA256 with a key only the operator
//! and its admission webhook hold. The operator trusts a requester only through a stamp that
//! verifies.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::Identity;

/// The annotation that carries the stamp (JSON).
pub const ANNOTATION: &str = "dvo.caat.io/requester";

/// A signed statement: `identity` asked for spec `digest` of AgentDeployment `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stamp {
    /// The requester.
    #[serde(flatten)]
    pub identity: Identity,
    /// The spec digest the request was made for.
    pub digest: String,
    /// Hex HMAC-SHA256 over the namespace, name, digest and identity.
    pub signature: String,
}

/// HMAC-SHA256 under `key`.
pub fn hmac(key: &[u8]) -> Hmac<Sha256> {
    #[expect(clippy::expect_used, reason = "HMAC takes a key of any length")]
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length")
}

/// Hex HMAC-SHA256 of `message` (its compact JSON) under `key`: the signature of every stamp.
pub fn sign_value(key: &[u8], message: &serde_json::Value) -> String {
    let mut mac = hmac(key);
    mac.update(message.to_string().as_bytes());
    crate::hex(&mac.finalize().into_bytes())
}

/// Whether `signature` is the HMAC of `message` under `key` (constant-time comparison).
pub fn verify_value(key: &[u8], message: &serde_json::Value, signature: &str) -> bool {
    let mut mac = hmac(key);
    mac.update(message.to_string().as_bytes());
    crate::unhex(signature).is_some_and(|b| mac.verify_slice(&b).is_ok())
}

fn message(namespace: &str, name: &str, digest: &str, identity: &Identity) -> serde_json::Value {
    serde_json::json!({
        "namespace": namespace, "name": name, "digest": digest,
        "username": identity.username, "uid": identity.uid, "groups": identity.groups,
    })
}

impl Stamp {
    /// Signs a stamp.
    pub fn sign(
        key: &[u8],
        namespace: &str,
        name: &str,
        digest: &str,
        identity: Identity,
    ) -> Stamp {
        let signature = sign_value(key, &message(namespace, name, digest, &identity));
        Stamp {
            identity,
            digest: digest.to_owned(),
            signature,
        }
    }

    /// The requester, when the stamp's signature verifies for this object and this digest.
    pub fn verify(
        &self,
        key: &[u8],
        namespace: &str,
        name: &str,
        digest: &str,
    ) -> Result<&Identity, String> {
        if self.digest != digest {
            return Err(format!(
                "the requester stamp is for spec {} but the spec is now {digest}",
                self.digest
            ));
        }
        let signed = message(namespace, name, digest, &self.identity);
        if verify_value(key, &signed, &self.signature) {
            Ok(&self.identity)
        } else {
            Err("the requester stamp's signature does not verify".into())
        }
    }

    /// Reads a stamp from the annotation value.
    pub fn parse(annotation: &str) -> Result<Stamp, String> {
        serde_json::from_str(annotation)
            .map_err(|e| format!("the requester stamp is not readable: {e}"))
    }
}

/// The annotation a person sets on an AgentDeployment to ask for break-glass; its value is the
/// reason.
pub const BREAK_GLASS: &str = "dvo.caat.io/break-glass";
/// The annotation holding the admission webhook's signed record of an accepted break-glass.
pub const BREAK_GLASS_STAMP: &str = "dvo.caat.io/break-glass-stamp";

/// A signed statement: `identity` invoked break-glass for spec `digest` of AgentDeployment
/// `namespace/name`, for `reason`, at `at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakGlass {
    /// Who invoked it.
    #[serde(flatten)]
    pub identity: Identity,
    /// The spec digest it lets through.
    pub digest: String,
    /// Why.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
    /// Hex HMAC-SHA256 over the object, digest, identity, reason and time.
    pub signature: String,
}

impl BreakGlass {
    fn message(&self, namespace: &str, name: &str) -> serde_json::Value {
        let mut m = message(namespace, name, &self.digest, &self.identity);
        crate::json::set(&mut m, "reason", self.reason.clone());
        crate::json::set(&mut m, "at", self.at.to_rfc3339());
        m
    }

    /// Signs a break-glass record.
    pub fn sign(
        key: &[u8],
        namespace: &str,
        name: &str,
        digest: &str,
        identity: Identity,
        reason: &str,
        at: DateTime<Utc>,
    ) -> BreakGlass {
        let mut bg = BreakGlass {
            identity,
            digest: digest.to_owned(),
            reason: reason.to_owned(),
            at,
            signature: String::new(),
        };
        bg.signature = sign_value(key, &bg.message(namespace, name));
        bg
    }

    /// Reads a record from its annotation and checks it: signed by `key`, for this object and
    /// for spec `digest`.
    pub fn verified(
        annotation: &str,
        key: &[u8],
        namespace: &str,
        name: &str,
        digest: &str,
    ) -> Result<BreakGlass, String> {
        let bg: BreakGlass = serde_json::from_str(annotation)
            .map_err(|e| format!("the break-glass stamp is not readable: {e}"))?;
        if !verify_value(key, &bg.message(namespace, name), &bg.signature) {
            return Err("the break-glass stamp's signature does not verify".into());
        }
        if bg.digest != digest {
            return Err(format!(
                "the break-glass stamp is for spec {} but the spec is now {digest}",
                bg.digest
            ));
        }
        Ok(bg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        Identity {
            username: "alice".into(),
            uid: Some("u-1".into()),
            groups: vec!["g1".into()],
        }
    }

    #[test]
    fn a_stamp_verifies_only_for_its_key_object_digest_and_identity() {
        let key = b"0123456789abcdef0123456789abcdef";
        let stamp = Stamp::sign(key, "ns", "gha", "sha256:aa", alice());
        let parsed = Stamp::parse(&serde_json::to_string(&stamp).unwrap()).unwrap();
        assert_eq!(parsed.verify(key, "ns", "gha", "sha256:aa"), Ok(&alice()));
        assert!(
            parsed
                .verify(b"another key", "ns", "gha", "sha256:aa")
                .is_err()
        );
        assert!(parsed.verify(key, "other-ns", "gha", "sha256:aa").is_err());
        assert!(parsed.verify(key, "ns", "other", "sha256:aa").is_err());
        assert_eq!(
            parsed.verify(key, "ns", "gha", "sha256:bb").unwrap_err(),
            "the requester stamp is for spec sha256:aa but the spec is now sha256:bb"
        );
        let mut forged = parsed.clone();
        forged.identity.groups.push("admins".into());
        assert_eq!(
            forged.verify(key, "ns", "gha", "sha256:aa").unwrap_err(),
            "the requester stamp's signature does not verify"
        );
        let mut garbled = parsed;
        garbled.signature = "zz".into();
        assert!(garbled.verify(key, "ns", "gha", "sha256:aa").is_err());
        assert!(Stamp::parse("{not json").is_err());
    }

    #[test]
    fn a_break_glass_stamp_verifies_only_unchanged_and_for_its_digest() {
        let key = b"0123456789abcdef0123456789abcdef";
        let at = "2026-11-22T03:00:00Z".parse().unwrap();
        let bg = BreakGlass::sign(key, "ns", "gha", "sha256:aa", alice(), "outage INC-1", at);
        let text = serde_json::to_string(&bg).unwrap();
        assert_eq!(
            BreakGlass::verified(&text, key, "ns", "gha", "sha256:aa"),
            Ok(bg.clone())
        );
        assert_eq!(
            BreakGlass::verified(&text, key, "ns", "gha", "sha256:bb").unwrap_err(),
            "the break-glass stamp is for spec sha256:aa but the spec is now sha256:bb"
        );
        assert!(BreakGlass::verified(&text, key, "ns", "other", "sha256:aa").is_err());
        let mut longer = bg;
        longer.reason = "any reason I like".into();
        let text = serde_json::to_string(&longer).unwrap();
        assert_eq!(
            BreakGlass::verified(&text, key, "ns", "gha", "sha256:aa").unwrap_err(),
            "the break-glass stamp's signature does not verify"
        );
        assert!(BreakGlass::verified("{", key, "ns", "gha", "sha256:aa").is_err());
    }
}
