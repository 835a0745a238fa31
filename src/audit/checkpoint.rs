//! Checkpoints: the head of the chain signed with the operator's Ed25519 key, so that a rewrite
//! of the whole chain by someone who can edit ConfigMaps (but not read the key) is detectable.

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

/// A signed statement: the chain had `head_hash` at `seq` at time `at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The `seq` of the head.
    pub seq: u64,
    /// Its `entry_hash`.
    pub head_hash: String,
    /// RFC 3339 time of signing.
    pub at: String,
    /// Which key signed (hex of the first 8 bytes of its public key).
    pub key_id: String,
    /// Hex Ed25519 signature over the canonical JSON of the other fields.
    pub signature: String,
}

/// The checkpoint signing key (a 32-byte Ed25519 seed, kept in a Secret).
pub struct SigningKey(Ed25519KeyPair);

fn key_id(public: &[u8]) -> String {
    crate::hex_prefix(public, 8)
}

fn message(seq: u64, head_hash: &str, at: &str, key_id: &str) -> Vec<u8> {
    let v = serde_json::json!({"seq": seq, "head_hash": head_hash, "at": at, "key_id": key_id});
    crate::json::canonical(&v).into_bytes()
}

impl SigningKey {
    /// A key from its 32-byte seed.
    pub fn from_seed(seed: &[u8]) -> Result<SigningKey, String> {
        Ed25519KeyPair::from_seed_unchecked(seed)
            .map(SigningKey)
            .map_err(|_| "the checkpoint key must be a 32-byte Ed25519 seed".to_owned())
    }

    /// The public key (32 bytes), for verifiers.
    pub fn public_key(&self) -> Vec<u8> {
        self.0.public_key().as_ref().to_vec()
    }

    /// Signs the head `seq`/`head_hash` at time `at`.
    pub fn sign(&self, seq: u64, head_hash: &str, at: &str) -> Checkpoint {
        let id = key_id(self.0.public_key().as_ref());
        let signature = crate::hex(self.0.sign(&message(seq, head_hash, at, &id)).as_ref());
        Checkpoint {
            seq,
            head_hash: head_hash.to_owned(),
            at: at.to_owned(),
            key_id: id,
            signature,
        }
    }
}

impl Checkpoint {
    /// Whether the signature verifies with `public_key`.
    pub fn verifies(&self, public_key: &[u8]) -> bool {
        let Some(sig) = crate::unhex(&self.signature) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(
                &message(self.seq, &self.head_hash, &self.at, &self.key_id),
                &sig,
            )
            .is_ok()
    }
}
