//! Who may call the admission webhook, through real HTTPS: only the API server, which presents
//! the client certificate of its AdmissionConfiguration. A hand-made AdmissionReview from anyone
//! else does not get through the TLS handshake, so it can write nothing in anybody's name; and
//! unauthenticated traffic costs bounded time and memory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::Api;
use serde_json::json;

use crate::support::{audit_entries, control_plane, operator};

/// The webhook's URL for `path` and the CA bundle that verifies it (a file).
async fn webhook(client: &kube::Client, path: &str, scratch: &Path) -> (String, PathBuf) {
    let config = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get(dvo_operator::webhook::CONFIGURATION)
        .await
        .expect("the webhook is registered");
    let hook = &config.webhooks.expect("webhooks")[0];
    let url = hook.client_config.url.clone().expect("registered by URL");
    let base = url.split("/admit/").next().unwrap().to_owned();
    let ca = scratch.join("webhook-ca.pem");
    let bundle = hook.client_config.ca_bundle.clone().expect("caBundle");
    std::fs::write(&ca, &bundle.0).unwrap();
    (format!("{base}{path}"), ca)
}

/// A forged AdmissionReview: dev-dana creates a staging AgentDeployment in `ns` (refused, and
/// recorded, when served).
fn forged_review(ns: &str) -> String {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": format!("forged-{ns}"),
            "kind": {"group": "dvo.caat.io", "version": "v1alpha1", "kind": "AgentDeployment"},
            "resource": {"group": "dvo.caat.io", "version": "v1alpha1", "resource": "agentdeployments"},
            "name": "gha", "namespace": ns, "operation": "CREATE",
            "userInfo": {"username": "dev-dana", "uid": "uid-developer", "groups": ["a7c4e2b9-1d3f-4a6b-8e5c-9f0a1b2c3d4e"]},
            "object": {"apiVersion": "dvo.caat.io/v1alpha1", "kind": "AgentDeployment",
                "metadata": {"name": "gha", "namespace": ns},
                "spec": {"agent": "GHA", "platform": "langchain", "environment": "staging",
                    "template": {"spec": {"containers": [{"name": "a", "image": "gha:1"}]}}}},
            "dryRun": false,
        },
    })
    .to_string()
}

/// `curl` POSTs `body` to `url` (trusting `ca`), with a client certificate when given: the HTTP
/// status (0 when no HTTP answer came) and the body.
fn post(
    url: &str,
    ca: &Path,
    cert: Option<(&Path, &Path)>,
    body: &[u8],
    scratch: &Path,
) -> (u16, String) {
    let file = scratch.join("body");
    std::fs::File::create(&file)
        .unwrap()
        .write_all(body)
        .unwrap();
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "--max-time",
        "20",
        "--cacert",
    ])
    .arg(ca)
    .args(["-H", "Content-Type: application/json", "--data-binary"])
    .arg(format!("@{}", file.display()));
    if let Some((crt, key)) = cert {
        cmd.arg("--cert").arg(crt).arg("--key").arg(key);
    }
    let out = cmd.arg(url).output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dvo-webhook-auth-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn only_the_api_server_can_call_the_webhook() {
    let client = operator().await;
    let dir = scratch("forge");
    let (url, ca) = webhook(&client, "/admit/agentdeployments", &dir).await;
    let ns = format!("forged-{}", std::process::id());
    let review = forged_review(&ns);

    // No client certificate: the handshake fails, nothing is served.
    let (code, out) = post(&url, &ca, None, review.as_bytes(), &dir);
    assert_eq!(code, 0, "served without a client certificate: {out}");

    // A certificate of another CA (made here, as an attacker would): refused the same way.
    let (key, crt) = (dir.join("mallory.key"), dir.join("mallory.crt"));
    crate::support::self_signed("kube-apiserver-webhook-client", &key, &crt);
    let (code, out) = post(&url, &ca, Some((&crt, &key)), review.as_bytes(), &dir);
    assert_eq!(code, 0, "served with another CA's certificate: {out}");
    assert!(
        audit_entries(&client, &format!("{ns}/gha"))
            .await
            .is_empty(),
        "nothing forged was recorded"
    );

    // The API server's own client certificate is served (it is the credential the API server
    // holds), and only then is a refusal recorded in the name of the user it names.
    let pki = control_plane().dir().join("pki");
    let apiserver = (
        pki.join("webhook-client.crt"),
        pki.join("webhook-client.key"),
    );
    let (code, out) = post(
        &url,
        &ca,
        Some((&apiserver.0, &apiserver.1)),
        review.as_bytes(),
        &dir,
    );
    assert_eq!(code, 200, "{out}");
    assert!(out.contains("lacks permission deploy_staging"), "{out}");
    let entries = audit_entries(&client, &format!("{ns}/gha")).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].draft.user_id, "dev-dana");

    // Bodies are bounded: more than MAX_BODY is refused before it is read.
    let huge = vec![b' '; dvo_operator::webhook::MAX_BODY + 1];
    let (code, _) = post(&url, &ca, Some((&apiserver.0, &apiserver.1)), &huge, &dir);
    assert_eq!(code, 413);
}

/// A client that connects and never completes a TLS handshake is dropped (it does not hold a
/// connection forever).
#[tokio::test]
async fn a_silent_connection_is_closed() {
    let client = operator().await;
    let dir = scratch("silent");
    let (url, _) = webhook(&client, "/", &dir).await;
    let addr = url
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_owned();
    let started = Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::io::AsyncReadExt::read(&mut tcp, &mut buf),
    )
    .await
    .expect("the server closes a silent connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "closed by the handshake timeout"
    );
}

/// The way out when the operator is down (documented in README): our webhooks fail closed, but a
/// cluster admin's DELETE of a DeploymentPolicy goes to a webhook of its own that is ignored when
/// it cannot be reached. Tested with a copy of exactly our policy webhooks, pointed at a port
/// where nothing listens and scoped to one policy: a release manager's delete is refused, the
/// cluster admin's goes through.
#[tokio::test]
async fn a_cluster_admin_can_delete_a_policy_while_the_webhook_is_down() {
    let client = operator().await;
    let ns = crate::support::namespace(&client, "wayout").await;
    let name = format!("{ns}-p");
    let policy = json!({"apiVersion": "dvo.caat.io/v1alpha1", "kind": "DeploymentPolicy",
        "metadata": {"name": name, "labels": {"dvo-test-wayout": ns}},
        "spec": {"action": "Warn", "scope": {"namespaces": [ns]}}});
    crate::support::apply(
        &client,
        ("dvo.caat.io", "v1alpha1", "DeploymentPolicy"),
        None,
        policy,
    )
    .await;
    let ca = std::fs::read_to_string(control_plane().dir().join("pki/ca.crt")).unwrap();
    let settings = dvo_operator::webhook::Settings {
        namespace: crate::support::OPERATOR_NS.to_owned(),
        addr: ([127, 0, 0, 1], 1).into(),
        url: Some("https://127.0.0.1:1".to_owned()),
        service: "dvo-operator-webhook".to_owned(),
        entra: None,
        certificates: dvo_operator::webhook::Certificates::Own,
        client_ca: None,
        api: None,
    };
    let [_, (gvk, mut down)] = dvo_operator::webhook::configurations(&settings, &ca);
    down["metadata"]["name"] = json!(format!("{ns}-down"));
    let hooks: Vec<serde_json::Value> = down["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| {
            h["name"]
                .as_str()
                .unwrap()
                .starts_with("deploymentpolicies")
        })
        .map(|h| {
            let mut h = h.clone();
            h["objectSelector"] = json!({"matchLabels": {"dvo-test-wayout": ns}});
            h
        })
        .collect();
    assert_eq!(hooks.len(), 2, "the guarded webhook and the way out");
    down["webhooks"] = json!(hooks);
    crate::support::apply(&client, (&gvk.group, &gvk.version, &gvk.kind), None, down).await;

    let delete = |who: &str, dry: bool| {
        let mut args = vec!["delete", "dpol", name.as_str()];
        if dry {
            args.push("--dry-run=server");
        }
        control_plane().kubectl(who, &args)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let (out, ok) = delete("release-manager-1", true);
        if !ok {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "the down webhook never took effect"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(refused.contains("failed calling webhook"), "{refused}");
    let (out, ok) = delete("admin", false);
    let (gone, _) = control_plane().kubectl("admin", &["get", "dpol", &name]);
    kube::Api::<kube::core::DynamicObject>::all_with(
        client.clone(),
        &kube::core::ApiResource::from_gvk_with_plural(&gvk, "validatingwebhookconfigurations"),
    )
    .delete(&format!("{ns}-down"), &Default::default())
    .await
    .unwrap();
    assert!(ok, "{out}");
    assert!(gone.contains("NotFound"), "{gone}");
}
