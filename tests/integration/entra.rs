//! Entra ID approval tokens against a JWKS served on loopback: the key set is fetched, cached,
//! fetched again for an unknown `kid` (key rotation) and not more often than configured. And
//! people who sign in to the API server itself with Entra ID tokens.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use dvo_operator::crd::ApprovalRequest;
use dvo_operator::crd::agent_deployment::Phase;
use kube::Api;

use crate::support::*;
use dvo_operator::identity::testkit::{TestKey, jwks};
use dvo_operator::webhook::jwks::Verifier;

/// A JWKS endpoint: serves whatever `keys` holds and counts the requests.
struct JwksServer {
    url: String,
    keys: Arc<Mutex<Value>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    fn start(initial: Value) -> JwksServer {
        let port = free_port();
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let keys = Arc::new(Mutex::new(initial));
        let hits = Arc::new(AtomicUsize::new(0));
        let (k, h) = (keys.clone(), hits.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                h.fetch_add(1, Ordering::SeqCst);
                let body = k.lock().unwrap().to_string();
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        JwksServer {
            url: format!("http://127.0.0.1:{port}/discovery/v2.0/keys"),
            keys,
            hits,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn token(key: &TestKey, amr: &[&str]) -> String {
    let now = chrono::Utc::now().timestamp();
    key.sign(&json!({
        "iss": format!("https://login.microsoftonline.com/{TENANT}/v2.0"), "aud": AUDIENCE,
        "exp": now + 600, "nbf": now - 60, "tid": TENANT, "oid": "oid-rosa",
        "upn": "rosa-release", "amr": amr,
    }))
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_jwks_once_so_rotated_keys_verify() {
    let (k1, k2, k3) = (TestKey::new("k1"), TestKey::new("k2"), TestKey::new("k3"));
    let server = JwksServer::start(jwks(&[&k1]));
    let verifier = Verifier::new(entra_config("jwksUrl", &server.url, 0)).unwrap();
    let id = verifier.verify(&token(&k1, &["pwd", "mfa"])).await.unwrap();
    assert_eq!((id.username.as_str(), id.mfa), ("rosa-release", true));
    verifier.verify(&token(&k1, &["pwd"])).await.unwrap();
    assert_eq!(server.hits(), 1, "the key set is cached");
    // The tenant rotates to k2: the first token under k2 fetches the set again.
    *server.keys.lock().unwrap() = jwks(&[&k2]);
    let id = verifier.verify(&token(&k2, &["mfa"])).await.unwrap();
    assert!(id.mfa);
    assert_eq!(server.hits(), 2);
    // k1 is gone now, and a key the tenant never published stays unknown.
    let err = verifier.verify(&token(&k3, &["mfa"])).await.unwrap_err();
    assert_eq!(
        err,
        "the token's signing key \"k3\" is not in the tenant's JWKS"
    );
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn refetches_are_rate_limited_and_an_unreachable_jwks_is_a_clear_error() {
    let (k1, k2) = (TestKey::new("r1"), TestKey::new("r2"));
    let server = JwksServer::start(jwks(&[&k1]));
    let verifier = Verifier::new(entra_config("jwksUrl", &server.url, 300)).unwrap();
    verifier.verify(&token(&k1, &["mfa"])).await.unwrap();
    *server.keys.lock().unwrap() = jwks(&[&k1, &k2]);
    for _ in 0..5 {
        let err = verifier.verify(&token(&k2, &["mfa"])).await.unwrap_err();
        assert!(
            err.ends_with("the JWKS was fetched less than 300s ago and is not fetched again yet"),
            "{err}"
        );
    }
    assert_eq!(server.hits(), 1, "made-up kids cannot hammer the endpoint");

    // An endpoint answering something that is not a key set is a clear error, not an empty set.
    let garbage = JwksServer::start(json!({"error": "maintenance"}));
    let verifier = Verifier::new(entra_config("jwksUrl", &garbage.url, 0)).unwrap();
    let err = verifier.verify(&token(&k1, &["mfa"])).await.unwrap_err();
    assert!(
        err.starts_with("the JWKS is not a JSON Web Key Set"),
        "{err}"
    );

    let nowhere = format!("http://127.0.0.1:{}/keys", free_port());
    let verifier = Verifier::new(entra_config("jwksUrl", &nowhere, 0)).unwrap();
    let err = verifier.verify(&token(&k1, &["mfa"])).await.unwrap_err();
    assert!(err.starts_with(&nowhere), "{err}");
    let none = serde_json::from_value::<dvo_operator::identity::entra::EntraConfig>(
        json!({"tenants": [TENANT], "audience": AUDIENCE, "issuerVersion": "v2"}),
    )
    .unwrap();
    assert!(Verifier::new(none).is_err(), "a JWKS source is required");
}

/// People who sign in to the cluster itself with Entra ID: the API server verifies their token
/// (a structured AuthenticationConfiguration with Entra's claims), the webhook attributes the act
/// to the person it names and takes MFA from the `amr` the API server passes on in
/// `userInfo.extra`, without any token in an annotation.
#[tokio::test]
async fn an_entra_sign_in_at_the_api_server_approves_with_the_mfa_it_vouched_for() {
    let client = operator().await;
    let ns = namespace(&client, "entra-signin").await;
    let cp = control_plane();
    let nina = "nina@contoso.com";
    let group = identity("release-manager-1").groups[0].clone();
    apply(
        &client,
        ("rbac.authorization.k8s.io", "v1", "RoleBinding"),
        Some(&ns),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "release-managers", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "dvo-test-users"},
            "subjects": [{"kind": "Group", "name": group}]}),
    )
    .await;
    scoped_policy(
        &client,
        &ns,
        "mfa",
        json!({"action": "RequireApproval",
               "approval": {"roles": ["release_manager"], "minApprovals": 2, "requireMfa": true}}),
    )
    .await;
    let manifest = agent_manifest("gha", "staging", "gha:1");
    let ad = create_as("operator", &ns, manifest).await;
    phase(&client, &ns, "gha", Phase::PendingApproval).await;
    let apr = dvo_operator::controller::agent_deployment::approval_request_name(
        "gha",
        ad.metadata.generation.unwrap(),
        &dvo_operator::crd::agent_deployment::spec_digest(&ad.spec),
    );
    let approve = [
        "annotate",
        "approvalrequest",
        &apr,
        "-n",
        &ns,
        "dvo.caat.io/approve=ok",
    ];

    // The API server knows her by her upn, her object ID and her groups, and says how she
    // signed in.
    let password = cp.entra_token(nina, "oid-nina", &[&group], &["pwd"]);
    let (out, ok) = cp.kubectl_with_token(&password, &["auth", "whoami", "-o", "json"]);
    assert!(ok, "{out}");
    let review: Value = serde_json::from_str(&out).unwrap();
    let user = &review["status"]["userInfo"];
    assert_eq!(user["username"], nina, "{review}");
    assert_eq!(user["uid"], "oid-nina", "{review}");
    assert_eq!(user["extra"]["dvo.caat.io/amr"], json!(["pwd"]), "{review}");

    // A password-only sign-in does not satisfy requireMfa.
    let (out, ok) = cp.kubectl_with_token(&password, &approve);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "{nina} did not prove multi-factor authentication, which policy/{ns}-mfa requires"
        )),
        "{out}"
    );
    // A token the API server does not trust is no sign-in at all.
    let stranger = entra_key().sign(&json!({
        "iss": format!("https://login.microsoftonline.com/{TENANT}/v2.0"), "aud": "api://dvo-cluster",
        "exp": chrono::Utc::now().timestamp() + 600, "tid": TENANT, "oid": "oid-nina",
        "upn": nina, "groups": [group], "amr": ["pwd", "mfa"],
    }));
    let (out, ok) = cp.kubectl_with_token(&stranger, &approve);
    assert!(!ok && out.contains("Unauthorized"), "{out}");

    // An MFA sign-in does, and the act names her.
    let mfa = cp.entra_token(nina, "oid-nina", &[&group], &["pwd", "mfa"]);
    let (out, ok) = cp.kubectl_with_token(&mfa, &approve);
    assert!(ok, "{out}");

    // She is one person, whatever name another token gives her: the HTTP API takes no second
    // approval from her (same tenant and object ID, another user name).
    let now = chrono::Utc::now().timestamp();
    let api_token = |user: &str, oid: &str| {
        entra_key().sign(&json!({
            "iss": format!("https://login.microsoftonline.com/{TENANT}/v2.0"), "aud": AUDIENCE,
            "exp": now + 600, "tid": TENANT, "oid": oid, "upn": user,
            "scp": "access_as_user", "groups": [group], "amr": ["pwd", "mfa"],
        }))
    };
    let curl = crate::api::Curl::new(&ns).await;
    let approve_path = format!("/v1/approvals/{ns}/{apr}/approve");
    let curl = |token: &str| {
        curl.call(
            "POST",
            &approve_path,
            &[format!("Authorization: Bearer {token}")],
            None,
        )
        .body
    };
    let again = curl(&api_token("nina.h@contoso.com", "oid-nina"));
    assert!(
        again.contains("nina.h@contoso.com already approved") && again.contains("\"status\":409"),
        "{again}"
    );
    // Another release manager completes the quorum over HTTP.
    let rosa = curl(&api_token("rosa-release", "oid-rosa"));
    assert!(rosa.contains("\"phase\":\"Approved\""), "{rosa}");
    phase(&client, &ns, "gha", Phase::Deployed).await;
    let stored = Api::<ApprovalRequest>::namespaced(client.clone(), &ns)
        .get(&apr)
        .await
        .unwrap();
    let acts = dvo_operator::approval::signed::Acts::read(&stored, &stamp_key(&client).await)
        .unwrap()
        .verified;
    assert_eq!(acts.len(), 2, "{acts:?}");
    let act = &acts[0];
    assert_eq!(act.subject.username, nina);
    assert_eq!(act.uid.as_deref(), Some("oid-nina"));
    assert!(act.mfa, "{act:?}");
    assert_eq!(act.entra, Some(format!("{TENANT}/oid-nina")));
    assert_eq!(act.via, None, "through the Kubernetes API");
}
