//! Entra ID look-alike keys and tokens for tests (unit and integration): RSA keys made with
//! `openssl`, published like Entra's (a JWK without `alg`), and RS256 tokens signed with them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::arithmetic_side_effects,
    reason = "test tooling (keys and tokens the tests make); never given user data"
)]

use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};

/// An RSA signing key and its public JWK.
pub struct TestKey {
    /// The key id.
    pub kid: String,
    /// PKCS#1 DER private key.
    pub der: Vec<u8>,
    /// The public key as Entra publishes it (no `alg`).
    pub jwk: Value,
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("openssl prints text")
}

impl TestKey {
    /// A new 2048-bit key named `kid`.
    pub fn new(kid: &str) -> TestKey {
        let dir = std::env::temp_dir().join(format!(
            "dvo-testkey-{kid}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let pem = dir.join("key.pem");
        openssl(&["genrsa", "-out", pem.to_str().expect("utf-8 path"), "2048"]);
        let key = TestKey::from_pem(kid, &pem);
        std::fs::remove_dir_all(&dir).expect("remove temp dir");
        key
    }

    /// The RSA key in the PEM file `pem`, named `kid` (an issuer's key made elsewhere).
    pub fn from_pem(kid: &str, pem: &std::path::Path) -> TestKey {
        let pem_s = pem.to_str().expect("utf-8 path");
        let der = pem.with_extension("der");
        openssl(&[
            "rsa",
            "-in",
            pem_s,
            "-traditional",
            "-outform",
            "DER",
            "-out",
            der.to_str().expect("utf-8 path"),
        ]);
        let modulus = openssl(&["rsa", "-in", pem_s, "-noout", "-modulus"]);
        let n = crate::unhex(modulus.trim().trim_start_matches("Modulus="))
            .expect("openssl prints the modulus in hex");
        TestKey {
            kid: kid.to_owned(),
            der: std::fs::read(&der).expect("DER key"),
            jwk: json!({"kty": "RSA", "use": "sig", "kid": kid, "n": URL_SAFE_NO_PAD.encode(n), "e": "AQAB"}),
        }
    }

    /// `claims` signed with RS256 under this key's `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        encode(&header, claims, &EncodingKey::from_rsa_der(&self.der)).expect("RS256 signs")
    }
}

/// A JWKS document of `keys`.
pub fn jwks(keys: &[&TestKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
}
