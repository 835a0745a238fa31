//! The requester stamp: who asked for an AgentDeployment spec, as the API server authenticated
//! them, bound to the object and the spec digest by an HMAC-SHA256 with a key only the operator
//! and its admission webhook hold. The operator trusts a requester only through a stamp that
//! verifies.

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

fn mac(key: &[u8], namespace: &str, name: &str, digest: &str, identity: &Identity) -> Hmac<Sha256> {
    let message = serde_json::json!({
        "namespace": namespace, "name": name, "digest": digest,
        "username": identity.username, "uid": identity.uid, "groups": identity.groups,
    });
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message.to_string().as_bytes());
    mac
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
        let signature = crate::hex(
            &mac(key, namespace, name, digest, &identity)
                .finalize()
                .into_bytes(),
        );
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
        let ok = crate::unhex(&self.signature).is_some_and(|b| {
            mac(key, namespace, name, digest, &self.identity)
                .verify_slice(&b)
                .is_ok()
        });
        if ok {
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
}
