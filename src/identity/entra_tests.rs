use std::sync::OnceLock;

use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::*;
use crate::identity::testkit::TestKey;

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const AUD: &str = "api://dvo-operator";

fn keys() -> &'static (TestKey, TestKey) {
    static KEYS: OnceLock<(TestKey, TestKey)> = OnceLock::new();
    KEYS.get_or_init(|| (TestKey::new("k1"), TestKey::new("k2")))
}

fn jwks(which: &[&TestKey]) -> JwkSet {
    serde_json::from_value(crate::identity::testkit::jwks(which)).unwrap()
}

fn config() -> EntraConfig {
    crate::yaml::from_str(&format!(
        "tenants: [{TENANT}]\naudience: {AUD}\nissuerVersion: both\nleewaySeconds: 30\nappRoles: {{DVO.ReleaseManager: release_manager}}"
    ))
    .unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims() -> Value {
    json!({
        "iss": format!("https://login.microsoftonline.com/{TENANT}/v2.0"), "aud": AUD,
        "exp": now() + 3600, "nbf": now() - 60, "iat": now() - 60,
        "tid": TENANT, "oid": "0c0e7f3e-0000-4000-8000-00000000a001",
        "upn": "rosa@example.com", "preferred_username": "Rosa (display)",
        "groups": ["3f2a8c1e-5b7d-4e9a-a1c2-0d4e6f8b9a10"], "roles": ["DVO.ReleaseManager", "Other"],
        "amr": ["pwd", "mfa"],
    })
}

fn sign(key: &TestKey, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.into());
    encode(&header, claims, &EncodingKey::from_rsa_der(&key.der)).unwrap()
}

fn with(mut c: Value, k: &str, v: Value) -> Value {
    if v.is_null() {
        c.as_object_mut().unwrap().remove(k);
    } else {
        c[k] = v;
    }
    c
}

#[test]
fn a_good_token_gives_the_identity_groups_and_app_roles() {
    let (k1, _) = keys();
    let id = verify(&sign(k1, "k1", &claims()), &jwks(&[k1]), &config(), true).unwrap();
    assert_eq!(
        (id.username.as_str(), id.tid.as_str(), id.mfa),
        ("rosa@example.com", TENANT, true)
    );
    assert_eq!(id.app_roles, [Role::ReleaseManager].into());
    assert_eq!(
        id.identity().uid.as_deref(),
        Some("0c0e7f3e-0000-4000-8000-00000000a001"),
        "the oid, as the API server's claim mapping gives it"
    );
    assert_eq!(
        id.entra_id(),
        format!("{TENANT}/0c0e7f3e-0000-4000-8000-00000000a001")
    );
    assert_eq!(
        id.identity().groups,
        vec!["3f2a8c1e-5b7d-4e9a-a1c2-0d4e6f8b9a10"]
    );
    // The v1 issuer form is accepted too when configured.
    let v1 = with(
        claims(),
        "iss",
        json!(format!("https://sts.windows.net/{TENANT}/")),
    );
    assert!(verify(&sign(k1, "k1", &v1), &jwks(&[k1]), &config(), true).is_ok());
}

#[test]
fn application_tokens_are_machines_and_user_tokens_people() {
    let (k1, _) = keys();
    let who = |c: &Value| {
        verify(&sign(k1, "k1", c), &jwks(&[k1]), &config(), false)
            .unwrap()
            .application
    };
    assert!(!who(&claims()), "a user name: a person");
    let app = with(
        with(claims(), "preferred_username", Value::Null),
        "upn",
        Value::Null,
    );
    assert!(
        who(&app),
        "no user name and no delegated scope: an application"
    );
    // A delegated scope makes a person, who must then be named.
    let unnamed = with(app.clone(), "scp", json!("access_as_user"));
    assert!(matches!(
        verify(&sign(k1, "k1", &unnamed), &jwks(&[k1]), &config(), false),
        Err(TokenError::Malformed(_))
    ));
    assert!(
        who(&with(claims(), "idtyp", json!("app"))),
        "idtyp app whatever else it says"
    );
}

#[test]
fn people_are_named_by_the_configured_claim_alone() {
    let (k1, _) = keys();
    let verify_with = |c: &Value, cfg: &EntraConfig| {
        verify(&sign(k1, "k1", c), &jwks(&[k1]), cfg, false).map(|id| id.username)
    };
    assert_eq!(
        verify_with(&claims(), &config()),
        Ok("rosa@example.com".into())
    );
    // No upn: no other claim stands in for it.
    let no_upn = with(claims(), "upn", Value::Null);
    assert!(matches!(
        verify_with(&no_upn, &config()),
        Err(TokenError::Malformed(m)) if m.contains("no upn claim")
    ));
    let mut by_preferred = config();
    by_preferred.username_claim = UsernameClaim::PreferredUsername;
    assert_eq!(
        verify_with(&no_upn, &by_preferred),
        Ok("Rosa (display)".into())
    );
    let many = with(claims(), "groups", json!(vec!["g"; 201]));
    assert!(matches!(
        verify_with(&many, &config()),
        Err(TokenError::Malformed(_))
    ));
    let long_oid = with(claims(), "oid", json!("o".repeat(65)));
    assert!(matches!(
        verify_with(&long_oid, &config()),
        Err(TokenError::Malformed(_))
    ));
    for bad in [
        json!("u".repeat(300)),
        json!("rosa "),
        json!("system:kube-controller-manager"),
        json!(
            "ro
sa"
        ),
    ] {
        let c = with(claims(), "upn", bad.clone());
        assert!(
            matches!(verify_with(&c, &config()), Err(TokenError::Malformed(_))),
            "{bad}"
        );
    }
}

#[test]
fn refusals() {
    let (k1, k2) = keys();
    let set = jwks(&[k1]);
    let other_tenant = "11111111-2222-3333-4444-555555555555";
    let hs256_with_public_key = {
        let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some("k1".into());
        encode(
            &h,
            &claims(),
            &EncodingKey::from_secret(k1.jwk["n"].as_str().unwrap().as_bytes()),
        )
        .unwrap()
    };
    let none = {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims().to_string());
        format!("{header}.{body}.")
    };
    let cases: Vec<(&str, String, bool, TokenError)> = vec![
        (
            "bad signature",
            sign(k2, "k1", &claims()),
            true,
            TokenError::BadSignature,
        ),
        (
            "wrong audience",
            sign(k1, "k1", &with(claims(), "aud", json!("api://other"))),
            true,
            TokenError::Audience,
        ),
        (
            "wrong issuer",
            sign(
                k1,
                "k1",
                &with(claims(), "iss", json!("https://evil.example.com/")),
            ),
            true,
            TokenError::Issuer,
        ),
        (
            "other tenant's issuer",
            sign(
                k1,
                "k1",
                &with(
                    claims(),
                    "iss",
                    json!(format!(
                        "https://login.microsoftonline.com/{other_tenant}/v2.0"
                    )),
                ),
            ),
            true,
            TokenError::Issuer,
        ),
        (
            "tenant not allowed",
            sign(k1, "k1", &with(claims(), "tid", json!(other_tenant))),
            true,
            TokenError::Tenant(other_tenant.into()),
        ),
        (
            "expired",
            sign(k1, "k1", &with(claims(), "exp", json!(now() - 120))),
            true,
            TokenError::Expired,
        ),
        (
            "not yet valid",
            sign(k1, "k1", &with(claims(), "nbf", json!(now() + 120))),
            true,
            TokenError::NotYetValid,
        ),
        (
            "no MFA",
            sign(k1, "k1", &with(claims(), "amr", json!(["pwd"]))),
            true,
            TokenError::NoMfa,
        ),
        ("alg none", none, true, TokenError::Algorithm("none".into())),
        (
            "HS256 with the public key",
            hs256_with_public_key,
            true,
            TokenError::Algorithm("HS256".into()),
        ),
        (
            "unknown kid",
            sign(k2, "k2", &claims()),
            true,
            TokenError::UnknownKey("k2".into()),
        ),
        (
            "groups overage",
            sign(
                k1,
                "k1",
                &with(
                    with(claims(), "groups", Value::Null),
                    "_claim_names",
                    json!({"groups": "src1"}),
                ),
            ),
            true,
            TokenError::GroupsOverage,
        ),
        (
            "missing exp",
            sign(k1, "k1", &with(claims(), "exp", Value::Null)),
            true,
            TokenError::Malformed(String::new()),
        ),
        (
            "garbage",
            "not.a.token".into(),
            true,
            TokenError::Malformed(String::new()),
        ),
    ];
    for (what, token, mfa, want) in cases {
        let got = verify(&token, &set, &config(), mfa).unwrap_err();
        match (&got, &want) {
            (TokenError::Malformed(_), TokenError::Malformed(_)) => {}
            _ => assert_eq!(got, want, "{what}"),
        }
    }
    // Without the MFA requirement a password-only token is fine.
    assert!(
        verify(
            &sign(k1, "k1", &with(claims(), "amr", json!(["pwd"]))),
            &set,
            &config(),
            false
        )
        .is_ok()
    );
    // Clock skew within the leeway is tolerated.
    assert!(
        verify(
            &sign(k1, "k1", &with(claims(), "exp", json!(now() - 10))),
            &set,
            &config(),
            true
        )
        .is_ok()
    );
    assert_eq!(
        TokenError::GroupsOverage.to_string(),
        "the token has too many groups to list them (groups overage): give the approvers their roles through app roles, or assign fewer groups"
    );
}

#[test]
fn key_rotation_an_unknown_kid_verifies_once_the_jwks_has_it() {
    let (k1, k2) = keys();
    let token = sign(k2, "k2", &claims());
    assert_eq!(
        verify(&token, &jwks(&[k1]), &config(), true).unwrap_err(),
        TokenError::UnknownKey("k2".into())
    );
    assert!(verify(&token, &jwks(&[k1, k2]), &config(), true).is_ok());
}
