//! The HTTP API from outside, with curl, against the real API server and the real operator:
//! every route, every refusal (no token, a bad token, no MFA, the wrong role, self-approval, a
//! machine, the rate limit, policy writes), and an approval through HTTP and one through
//! kubectl counting toward the same quorum. Every call is in the audit log.

use std::collections::BTreeSet;
use std::process::Command;

use dvo_operator::audit::EventType;
use dvo_operator::crd::agent_deployment::Phase;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::*;

/// One answer: status, headers (lowercase names) and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    /// The problem detail of a refusal (asserting it is problem+json with this status).
    fn problem(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert!(
            self.headers
                .contains("content-type: application/problem+json"),
            "{self:?}"
        );
        let p = self.json();
        assert_eq!(p["status"], status, "{p}");
        p["detail"].as_str().unwrap().to_owned()
    }
}

/// The HTTP API as curl sees it, trusting the webhook's CA.
pub struct Curl {
    ca: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl Curl {
    pub async fn new(ns: &str) -> Curl {
        let secret = Api::<Secret>::namespaced(admin().await, OPERATOR_NS)
            .get("dvo-operator-webhook-tls")
            .await
            .unwrap();
        let ca = secret.data.unwrap()["ca.crt"].0.clone();
        let dir = Peer::dir("curl", ns);
        std::fs::write(dir.join("ca.crt"), ca).unwrap();
        Curl {
            ca: dir.join("ca.crt"),
            dir,
        }
    }

    /// `method path` with `headers` and an optional JSON body.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[String],
        body: Option<&Value>,
    ) -> Answer {
        let head = self.dir.join("headers");
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "30", "-X", method, "--cacert"])
            .arg(&self.ca)
            .arg("-D")
            .arg(&head)
            .args(["-w", "\n%{http_code}"]);
        for h in headers {
            cmd.args(["-H", h]);
        }
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
                .arg(b.to_string());
        }
        let out = cmd
            .arg(format!("https://127.0.0.1:{}{path}", api_port()))
            .output()
            .expect("run curl");
        assert!(out.status.success(), "curl: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, status) = text.rsplit_once('\n').unwrap();
        Answer {
            status: status.parse().unwrap(),
            headers: std::fs::read_to_string(&head).unwrap().to_lowercase(),
            body: body.to_owned(),
        }
    }
}

/// An Entra ID access token of the test tenant for a person (`upn`).
fn token(user: &str, groups: &[&str], amr: &[&str]) -> String {
    let now = chrono::Utc::now().timestamp();
    entra_key().sign(&json!({
        "iss": format!("https://login.microsoftonline.com/{TENANT}/v2.0"), "aud": AUDIENCE,
        "exp": now + 600, "nbf": now - 60, "tid": TENANT, "oid": format!("oid-{user}"),
        "upn": user, "scp": "access_as_user", "groups": groups, "amr": amr,
    }))
}

fn bearer(token: &str) -> Vec<String> {
    vec![format!("Authorization: Bearer {token}")]
}

fn key_header(key: &str) -> Vec<String> {
    vec![format!("X-API-Key: {key}")]
}

fn sha256(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn every_route_and_refusal_over_https_and_one_quorum_with_kubectl() {
    let client = operator().await;
    let ns = namespace(&client, "http-api").await;
    let curl = Curl::new(&ns).await;
    let rm = identity("release-manager-1").groups[0].clone();
    let ops = identity("operator").groups[0].clone();
    let (portal, bot) = (
        format!("portal-{ns}-0123456789abcdef"),
        format!("bot-{ns}-0123456789abcdef0123"),
    );
    std::fs::write(
        api_keys_file(),
        format!(
            "keys:\n- {{name: portal, sha256: {}, roles: [viewer], requestsPerMinute: 4}}\n- {{name: release-bot, sha256: {}, roles: [release_manager]}}\n",
            sha256(&portal),
            sha256(&bot)
        ),
    )
    .unwrap();

    // Two release managers, with MFA; the developer asks.
    scoped_policy(
        &client,
        &ns,
        "two",
        json!({"action": "RequireApproval", "reason": "production agents need two release managers",
               "approval": {"roles": ["release_manager"], "minApprovals": 2, "requireMfa": true}}),
    )
    .await;
    let manifest = json!({"apiVersion": "dvo.caat.io/v1alpha1", "kind": "AgentDeployment",
        "metadata": {"name": "gha", "namespace": ns}, "spec": {
        "agent": "GHA", "platform": "langchain", "environment": "staging", "replicas": 1,
        "steps": {"healthCheck": false},
        "template": {"spec": {"containers": [{"name": "agent", "image": "gha:1"}]}},
    }});
    let ad = create_as("operator", &ns, manifest.clone()).await;
    phase(&client, &ns, "gha", Phase::PendingApproval).await;
    let apr = dvo_operator::controller::agent_deployment::approval_request_name(
        "gha",
        ad.metadata.generation.unwrap(),
        &dvo_operator::crd::agent_deployment::spec_digest(&ad.spec),
    );
    let one = format!("/v1/approvals/{ns}/{apr}");
    let approve = format!("{one}/approve");

    // The document describes every route called here.
    let doc = curl.call("GET", "/v1/openapi.json", &[], None).json();
    for path in [
        "/v1/policies",
        "/v1/policies/{name}",
        "/v1/policies/evaluate",
        "/v1/approvals/pending",
        "/v1/approvals/history",
        "/v1/approvals/{namespace}/{name}",
        "/v1/approvals/{namespace}/{name}/{action}",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} not in the OpenAPI document"
        );
    }

    // No credentials, a bad token, a token for another audience.
    let none = curl.call("GET", "/v1/approvals/pending", &[], None);
    assert!(none.problem(401).starts_with("no credentials"));
    assert!(
        none.headers.contains("www-authenticate: bearer"),
        "{none:?}"
    );
    let anonymous = curl.call("GET", &one, &[], None);
    anonymous.problem(401);
    let bad = curl.call("GET", "/v1/approvals/pending", &bearer("not.a.jwt"), None);
    assert!(
        bad.problem(401).starts_with("the token was refused"),
        "{bad:?}"
    );
    let now = chrono::Utc::now().timestamp();
    let elsewhere = entra_key().sign(&json!({
        "iss": format!("https://login.microsoftonline.com/{TENANT}/v2.0"), "aud": "api://other",
        "exp": now + 600, "tid": TENANT, "oid": "o", "upn": "rosa-release",
    }));
    let refused = curl.call("GET", "/v1/approvals/pending", &bearer(&elsewhere), None);
    assert!(
        refused.problem(401).contains("another audience"),
        "{refused:?}"
    );

    // The requester: sees the request with cancel only; approving it herself is refused with
    // the words kubectl gets.
    let omar = token("ops-omar", &[&ops], &["pwd", "mfa"]);
    let pending = until(
        "the request is listed for its requester",
        || {
            curl.call(
                "GET",
                &format!("/v1/approvals/pending?namespace={ns}"),
                &bearer(&omar),
                None,
            )
        },
        |a| a.status != 200 || a.body.contains(&apr),
    )
    .await;
    assert_eq!(pending.status, 200, "{pending:?}");
    assert_eq!(
        pending.json()["items"][0]["actions"],
        json!(["cancel"]),
        "{pending:?}"
    );
    let own = curl.call(
        "POST",
        &approve,
        &bearer(&omar),
        Some(&json!({"comment": "mine"})),
    );
    let detail = own.problem(403);
    assert!(
        detail.contains("ops-omar requested this deployment and cannot approve it"),
        "{detail}"
    );
    let (out, ok) = control_plane().kubectl(
        "operator",
        &[
            "annotate",
            "approvalrequest",
            &apr,
            "-n",
            &ns,
            "dvo.caat.io/approve=mine",
        ],
    );
    assert!(
        !ok && out.contains(&detail),
        "kubectl says {out}, HTTP said {detail}"
    );

    // The wrong role, then no MFA, then a machine holding the right role.
    let vera = token("vera-viewer", &["dvo-viewers"], &["pwd", "mfa"]);
    let viewer = curl.call("POST", &approve, &bearer(&vera), None);
    assert!(
        viewer
            .problem(403)
            .contains("holds none of the roles release_manager"),
        "{viewer:?}"
    );
    let rosa_pwd = token("rosa-release", &[&rm], &["pwd"]);
    let no_mfa = curl.call("POST", &approve, &bearer(&rosa_pwd), None);
    assert!(
        no_mfa
            .problem(403)
            .contains("did not prove multi-factor authentication"),
        "{no_mfa:?}"
    );
    let machine = until(
        "the release bot's key is read",
        || curl.call("POST", &approve, &key_header(&bot), None),
        |a| a.status != 401,
    )
    .await;
    assert!(
        machine
            .problem(403)
            .contains("apikey:release-bot is a machine"),
        "{machine:?}"
    );
    // A release manager by her group, whom Kubernetes RBAC does not let act in this
    // namespace, may not act here either.
    let nina = token("nina@contoso.com", &[&rm], &["pwd", "mfa"]);
    let outsider = curl.call("POST", &approve, &bearer(&nina), None);
    assert!(
        outsider
            .problem(403)
            .contains("may not patch approvalrequests in namespace"),
        "{outsider:?}"
    );
    let seen_by_outsider = curl.call("GET", &one, &bearer(&nina), None);
    seen_by_outsider.problem(403);
    // A token cannot claim Kubernetes system groups for that check, nor a system user name.
    let claims = token(
        "nina@contoso.com",
        &[&rm, "system:masters"],
        &["pwd", "mfa"],
    );
    let forged = curl.call("GET", &one, &bearer(&claims), None);
    assert!(
        forged.problem(403).contains("(Kubernetes RBAC)"),
        "{forged:?}"
    );
    let claims = token("system:kube-controller-manager", &[&rm], &["pwd", "mfa"]);
    let forged = curl.call("GET", &one, &bearer(&claims), None);
    assert!(
        forged.problem(401).contains("starts with system:"),
        "{forged:?}"
    );
    // What is not a Kubernetes name never reaches the Kubernetes client (no query smuggled in).
    let smuggled = curl.call(
        "POST",
        &format!("/v1/approvals/{ns}/{apr}%3FdryRun=All/approve"),
        &bearer(&token("rosa-release", &[&rm], &["pwd", "mfa"])),
        None,
    );
    assert!(
        smuggled.problem(404).contains("lowercase letters"),
        "{smuggled:?}"
    );
    let unreasoned = curl.call("POST", &format!("{one}/reject"), &bearer(&rosa_pwd), None);
    assert!(
        unreasoned
            .problem(400)
            .contains("a rejection needs a reason: {\"reason\"")
    );

    // What a release manager sees, then her approval over HTTP.
    let rosa = token("rosa-release", &[&rm], &["pwd", "mfa"]);
    let seen = curl.call("GET", &one, &bearer(&rosa), None).json();
    assert_eq!(seen["actions"], json!(["approve", "reject"]), "{seen}");
    assert_eq!(seen["decision"]["outcome"], "RequireApproval", "{seen}");
    assert!(
        seen["decision"]["trace"]
            .as_array()
            .is_some_and(|t| !t.is_empty()),
        "the decision trace: {seen}"
    );
    let approved = curl.call(
        "POST",
        &approve,
        &bearer(&rosa),
        Some(&json!({"comment": "looks good"})),
    );
    assert_eq!(approved.status, 200, "{approved:?}");
    let approved = approved.json();
    assert_eq!(approved["phase"], "Pending", "one of two: {approved}");
    assert_eq!(approved["act"]["via"], "http");
    let again = curl.call("POST", &approve, &bearer(&rosa), None);
    assert!(again.problem(409).contains("already approved"), "{again:?}");

    // The second approval, through kubectl (with an approval token for MFA), completes the
    // same quorum.
    let raj = token("raj-release", &[&rm], &["pwd", "mfa"]);
    let (out, ok) = control_plane().kubectl(
        "release-manager-2",
        &[
            "annotate",
            "approvalrequest",
            &apr,
            "-n",
            &ns,
            &format!("dvo.caat.io/approve-token={raj}"),
        ],
    );
    assert!(ok, "{out}");
    phase(&client, &ns, "gha", Phase::Deployed).await;
    let late = curl.call("POST", &approve, &bearer(&rosa), None);
    assert!(late.problem(409).contains("is Approved"), "{late:?}");

    // Rejecting and cancelling over HTTP; an application's own token acts on nothing.
    let mut second = manifest.clone();
    let mut requests = vec![];
    for name in ["gha-reject", "gha-cancel"] {
        second["metadata"]["name"] = json!(name);
        let ad = create_as("operator", &ns, second.clone()).await;
        phase(&client, &ns, name, Phase::PendingApproval).await;
        requests.push(format!(
            "/v1/approvals/{ns}/{}",
            dvo_operator::controller::agent_deployment::approval_request_name(
                name,
                ad.metadata.generation.unwrap(),
                &dvo_operator::crd::agent_deployment::spec_digest(&ad.spec),
            )
        ));
    }
    let application = entra_key().sign(&json!({
        "iss": format!("https://login.microsoftonline.com/{TENANT}/v2.0"), "aud": AUDIENCE,
        "exp": now + 600, "tid": TENANT, "oid": "oid-deploy-app", "idtyp": "app",
        "roles": ["DVO.ReleaseManager"],
    }));
    let by_app = curl.call(
        "POST",
        &format!("{}/approve", requests[0]),
        &bearer(&application),
        None,
    );
    by_app.problem(403);
    let rejected = curl.call(
        "POST",
        &format!("{}/reject", requests[0]),
        &bearer(&rosa),
        Some(&json!({"reason": "not this week"})),
    );
    assert_eq!(rejected.json()["phase"], "Rejected", "{rejected:?}");
    let cancelled = curl.call(
        "POST",
        &format!("{}/cancel", requests[1]),
        &bearer(&omar),
        Some(&json!({"comment": "superseded by a later change"})),
    );
    assert_eq!(cancelled.json()["phase"], "Cancelled", "{cancelled:?}");
    phase(&client, &ns, "gha-reject", Phase::Rejected).await;

    // Policies: read, evaluate, never written here.
    let policies = curl
        .call("GET", "/v1/policies", &bearer(&rosa), None)
        .json();
    let names: BTreeSet<String> = policies["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains(&format!("{ns}-two")), "{names:?}");
    let policy = curl
        .call(
            "GET",
            &format!("/v1/policies/{ns}-two"),
            &bearer(&rosa),
            None,
        )
        .json();
    assert_eq!(policy["spec"]["approval"]["minApprovals"], 2, "{policy}");
    for (method, path) in [
        ("POST", "/v1/policies".to_owned()),
        ("DELETE", format!("/v1/policies/{ns}-two")),
    ] {
        let write = curl.call(method, &path, &bearer(&rosa), Some(&json!({})));
        assert!(
            write
                .problem(405)
                .contains("changed through Git and kubectl"),
            "{write:?}"
        );
        assert!(write.headers.contains("allow: get"), "{write:?}");
    }
    let what_if = curl
        .call(
            "POST",
            "/v1/policies/evaluate",
            &bearer(&omar),
            Some(&manifest),
        )
        .json();
    assert_eq!(what_if["outcome"], "RequireApproval", "{what_if}");
    let garbage = curl.call(
        "POST",
        "/v1/policies/evaluate",
        &bearer(&omar),
        Some(&json!({"spec": 1})),
    );
    assert!(garbage.problem(400).contains("AgentDeployment manifest"));

    // History from the audit log: both approvals, one via HTTP.
    let history = curl.call(
        "GET",
        &format!("/v1/approvals/history?namespace={ns}&event=approval_granted"),
        &bearer(&rosa),
        None,
    );
    assert_eq!(history.status, 200, "{history:?}");
    let items = history.json()["items"].as_array().unwrap().clone();
    let by = |user: &str| {
        items
            .iter()
            .find(|i| i["user"] == user && i["status"] == "approval_recorded")
            .cloned()
    };
    assert_eq!(by("rosa-release").unwrap()["via"], "http", "{items:#?}");
    assert!(by("raj-release").unwrap()["via"].is_null(), "{items:#?}");

    // An API key: a viewer may read but not the audit log, and only so often.
    let viewer_history = curl.call("GET", "/v1/approvals/history", &key_header(&portal), None);
    assert!(
        viewer_history
            .problem(403)
            .contains("lacks permission view_audit_log"),
        "{viewer_history:?}"
    );
    let mut answers = vec![];
    for _ in 0..5 {
        answers.push(curl.call("GET", "/v1/approvals/pending", &key_header(&portal), None));
    }
    let limited = answers
        .iter()
        .find(|a| a.status == 429)
        .expect("the fifth call within a minute is refused");
    assert!(
        limited
            .problem(429)
            .contains("over its rate of 4 calls per minute")
    );
    assert!(limited.headers.contains("retry-after: "), "{limited:?}");
    // A flood over the rate is refused and counted, but written to the audit log only within
    // a budget (20 at once, then 1 a second), so it cannot fill the log.
    let started = std::time::Instant::now();
    let refused = (0..40)
        .filter(|_| {
            curl.call("GET", "/v1/approvals/pending", &key_header(&portal), None)
                .status
                == 429
        })
        .count();
    let elapsed = started.elapsed().as_secs();
    assert_eq!(refused, 40);
    let written = dvo_operator::audit::store::newest(
        &client,
        OPERATOR_NS,
        |e| e.draft.user_id == "apikey:portal" && e.draft.status == "rate_limited",
        1000,
        50,
    )
    .await
    .unwrap()
    .0
    .len() as u64;
    assert!(
        (1..=22 + elapsed).contains(&written),
        "{written} of {} refusals written in {elapsed} s",
        refused + 2
    );
    let wrong_key = curl.call(
        "GET",
        "/v1/approvals/pending",
        &key_header("x".repeat(40).as_str()),
        None,
    );
    assert_eq!(wrong_key.problem(401), "the API key is not valid");

    // A keys file that goes bad accepts no key (and tells callers nothing of it); fixed, it
    // is read again.
    let good = std::fs::read_to_string(api_keys_file()).unwrap();
    std::fs::write(api_keys_file(), "keys: [{name: Bad}]").unwrap();
    let broken = until(
        "the bad keys file is read",
        || curl.call("GET", "/v1/approvals/pending", &key_header(&bot), None),
        |a| a.status == 503,
    )
    .await;
    let detail = broken.problem(503);
    assert!(
        detail.contains("keys file is unreadable or invalid") && !detail.contains("Bad"),
        "{detail}"
    );
    std::fs::write(api_keys_file(), good).unwrap();
    until(
        "the keys file is read again",
        || curl.call("GET", "/v1/approvals/pending", &key_header(&bot), None),
        |a| a.status == 200,
    )
    .await;

    // Every call is in the audit log: who, what, outcome.
    let calls = dvo_operator::audit::store::newest(
        &client,
        OPERATOR_NS,
        |e| e.draft.operation == "http" && e.draft.resource.contains(&ns),
        100,
        50,
    )
    .await
    .unwrap()
    .0;
    let found = |user: &str, resource: &str, event: EventType, status: &str| {
        calls.iter().any(|e| {
            e.draft.user_id == user
                && e.draft.resource == resource
                && e.draft.event_type == event
                && e.draft.status == status
        })
    };
    assert!(
        found(
            "rosa-release",
            &format!("POST {approve}"),
            EventType::AuthSuccess,
            "success"
        ),
        "{calls:#?}"
    );
    assert!(found(
        "ops-omar",
        &format!("POST {approve}"),
        EventType::PermissionDenied,
        "denied"
    ));
    assert!(found(
        "apikey:release-bot",
        &format!("POST {approve}"),
        EventType::PermissionDenied,
        "denied"
    ));
    assert!(found(
        "(anonymous)",
        &format!("GET {one}"),
        EventType::AuthFailure,
        "denied"
    ));
    let recorded = calls
        .iter()
        .find(|e| e.draft.user_id == "rosa-release" && e.draft.status == "success")
        .unwrap();
    assert_eq!(recorded.draft.auth_method, "azure_ad");
    assert_eq!(
        recorded.draft.metadata["entra"],
        format!("{TENANT}/oid-rosa-release")
    );
}
