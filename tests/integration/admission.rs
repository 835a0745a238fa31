//! The admission webhook against the real API server, driven with real `kubectl` as the control
//! plane's test identities: who may request, approve, reject, cancel, break glass, write status
//! and delete protected policies, and what each refusal says.

use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::support::{
    AUDIENCE, OPERATOR_NS, TENANT, accepted, apr_phase, control_plane, entra_key, namespace,
    operator, phase, refused, scoped_policy as policy, stamp_key, wait_for,
};
use dvo_operator::audit::EventType;
use dvo_operator::controller::agent_deployment::approval_request_name;
use dvo_operator::crd::ApprovalRequest;
use dvo_operator::crd::agent_deployment::{Phase, spec_digest};
use dvo_operator::crd::approval_request::ApprovalPhase;
use dvo_operator::identity::stamp::{self, Stamp};

const WAIT: Duration = Duration::from_secs(60);

/// `kubectl` as `who` with `stdin` (when given) piped in.
fn kubectl(who: &str, args: &[&str], stdin: Option<&str>) -> (String, bool) {
    match stdin {
        None => control_plane().kubectl(who, args),
        Some(text) => {
            let file = std::env::temp_dir().join(format!(
                "dvo-admission-{}-{}.json",
                std::process::id(),
                rand_suffix()
            ));
            std::fs::write(&file, text).unwrap();
            let mut all: Vec<&str> = args.to_vec();
            let path = file.to_str().unwrap().to_owned();
            all.extend(["-f", &path]);
            let out = control_plane().kubectl(who, &all);
            std::fs::remove_file(&file).unwrap();
            out
        }
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn adep(name: &str, env: &str, agent: &str) -> Value {
    json!({"apiVersion": "dvo.caat.io/v1alpha1", "kind": "AgentDeployment", "metadata": {"name": name},
        "spec": {"agent": agent, "platform": "langchain", "environment": env, "replicas": 1,
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "a", "image": format!("{name}:1")}]}}}})
}

/// Admission facts of the audit log about `resource`: (event, user, status).
async fn admission_facts(client: &Client, resource: &str) -> Vec<(EventType, String, String)> {
    crate::support::audit_entries(client, resource)
        .await
        .into_iter()
        .filter(|e| e.draft.idempotency_key.starts_with("admission/"))
        .map(|e| (e.draft.event_type, e.draft.user_id, e.draft.status))
        .collect()
}

fn annotate(who: &str, ns: &str, target: &str, annotation: &str) -> (String, bool) {
    let (kind, name) = target.split_once('/').unwrap();
    kubectl(who, &["annotate", "-n", ns, kind, name, annotation], None)
}

#[tokio::test]
async fn requesters_are_stamped_and_refused_without_the_permission() {
    let client = operator().await;
    let ns = namespace(&client, "requester").await;
    // A developer may not deploy to staging: refused at `kubectl apply`, naming what is missing.
    let (out, ok) = kubectl(
        "developer",
        &["apply", "-n", &ns, "--server-side"],
        Some(&adep("gha", "staging", "GHA").to_string()),
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("admission webhook \"agentdeployments.dvo.caat.io\" denied the request: AgentDeployment")
            && out.contains("dev-dana (roles: developer) lacks permission deploy_staging, which roles operator, release_manager, admin"),
        "{out}"
    );
    println!("--- dev-dana applies a staging AgentDeployment:\n{out}");
    assert!(
        admission_facts(&client, &format!("{ns}/gha"))
            .await
            .contains(&(
                EventType::PermissionDenied,
                "dev-dana".into(),
                "denied".into()
            ))
    );
    // Production goes to approval instead, with dev-dana as the verified requester.
    let (out, ok) = kubectl(
        "developer",
        &["apply", "-n", &ns, "--server-side"],
        Some(&adep("gha", "production", "GHA").to_string()),
    );
    assert!(ok, "{out}");
    let ad = phase(&client, &ns, "gha", Phase::PendingApproval).await;
    let stamp = Stamp::parse(&ad.annotations()[stamp::ANNOTATION]).unwrap();
    let requester = stamp
        .verify(
            &stamp_key(&client).await,
            &ns,
            "gha",
            &spec_digest(&ad.spec),
        )
        .unwrap();
    assert_eq!(
        (requester.username.as_str(), requester.uid.as_deref()),
        ("dev-dana", Some("uid-developer"))
    );
    let apr = approval_request_name(
        "gha",
        ad.metadata.generation.unwrap(),
        &spec_digest(&ad.spec),
    );
    // The requester cannot approve it but may withdraw it; a viewer may do neither.
    refused(
        &ns,
        &apr,
        "developer",
        "approve",
        "dev-dana requested this deployment and cannot approve it",
    );
    refused(
        &ns,
        &apr,
        "viewer",
        "cancel",
        "vera-viewer is neither the requester nor an admin",
    );
    accepted(&ns, &apr, "developer", "cancel");
    apr_phase(&client, &ns, &apr, ApprovalPhase::Cancelled).await;
    let facts = admission_facts(&client, &format!("{ns}/{apr}")).await;
    assert_eq!(
        facts,
        vec![
            (
                EventType::PermissionDenied,
                "dev-dana".into(),
                "denied".into()
            ),
            (
                EventType::PermissionDenied,
                "vera-viewer".into(),
                "denied".into()
            ),
        ],
        "the webhook records its refusals"
    );
    // The accepted cancellation is recorded by the operator, once, when it sees it stored.
    let recorded: Vec<(EventType, String, String)> =
        crate::support::audit_entries(&client, &format!("{ns}/{apr}"))
            .await
            .into_iter()
            .filter(|e| e.draft.idempotency_key.starts_with("act/"))
            .map(|e| (e.draft.event_type, e.draft.user_id, e.draft.status))
            .collect();
    assert_eq!(
        recorded,
        [(
            EventType::ApprovalDenied,
            "dev-dana".into(),
            "cancellation_recorded".into()
        )]
    );
}

#[tokio::test]
async fn forged_stamps_status_writes_and_foreign_requests_are_refused() {
    let client = operator().await;
    let ns = namespace(&client, "forgery").await;
    policy(&client, &ns, "approve", json!({"action": "RequireApproval", "approval": {"roles": ["release_manager"], "minApprovals": 2}})).await;
    let (out, ok) = kubectl(
        "operator",
        &["apply", "-n", &ns, "--server-side"],
        Some(&adep("gha", "staging", "GHA").to_string()),
    );
    assert!(ok, "{out}");
    let ad = phase(&client, &ns, "gha", Phase::PendingApproval).await;
    let apr = approval_request_name(
        "gha",
        ad.metadata.generation.unwrap(),
        &spec_digest(&ad.spec),
    );
    let target = format!("apr/{apr}");

    // A hand-written act, even a copy of a real one, is refused.
    assert!(annotate("release-manager-1", &ns, &target, "dvo.caat.io/approve=ok").1);
    let real = wait_for(
        &Api::<ApprovalRequest>::namespaced(client.clone(), &ns),
        &apr,
        |o: Option<&ApprovalRequest>| {
            o.is_some_and(|a| a.annotations().contains_key("dvo.caat.io/acts"))
        },
        WAIT,
    )
    .await;
    let acts = real.annotations()["dvo.caat.io/acts"].replace("rosa-release", "raj-release");
    let (out, ok) = kubectl(
        "release-manager-2",
        &[
            "annotate",
            "--overwrite",
            "-n",
            &ns,
            "apr",
            &apr,
            &format!("dvo.caat.io/acts={acts}"),
        ],
        None,
    );
    assert!(
        !ok && out.contains(
            "the annotation dvo.caat.io/acts is written by the dvo admission webhook only"
        ),
        "{out}"
    );
    println!("--- raj-release writes an act by hand:\n{out}");

    // Status belongs to the operator: RBAC lets these users patch it, the webhook does not.
    for (kind, name, phase) in [
        ("apr", apr.as_str(), "Approved"),
        ("adep", "gha", "Deployed"),
    ] {
        let patch = format!(r#"{{"status":{{"phase":"{phase}"}}}}"#);
        let (out, ok) = kubectl(
            "release-manager-2",
            &[
                "patch",
                "-n",
                &ns,
                kind,
                name,
                "--subresource=status",
                "--type=merge",
                "-p",
                &patch,
            ],
            None,
        );
        assert!(!ok && out.contains("is written by the dvo operator (system:serviceaccount:dvo-system:dvo-operator) only; raj-release may not change it"), "{kind}: {out}");
    }
    // Only the operator creates requests.
    let mut fake = serde_json::to_value(&real).unwrap();
    fake["metadata"] = json!({"name": "fake"});
    fake.as_object_mut().unwrap().remove("status");
    let (out, ok) = kubectl("admin", &["create", "-n", &ns], Some(&fake.to_string()));
    assert!(
        !ok && out.contains(
            "ApprovalRequests are created by the dvo operator only; alice-admin may not create"
        ),
        "{out}"
    );

    // Dry runs are answered but change and record nothing.
    let (out, ok) = kubectl(
        "release-manager-2",
        &[
            "annotate",
            "--dry-run=server",
            "-n",
            &ns,
            "apr",
            &apr,
            "dvo.caat.io/approve=ok",
        ],
        None,
    );
    assert!(ok, "{out}");
    let recorded = wait_for(
        &Api::<ApprovalRequest>::namespaced(client.clone(), &ns),
        &apr,
        |o: Option<&ApprovalRequest>| {
            o.and_then(|a| a.status.as_ref())
                .is_some_and(|s| !s.approvals.is_empty())
        },
        WAIT,
    )
    .await;
    let st = recorded.status.clone().unwrap();
    assert_eq!(st.phase, Some(ApprovalPhase::Pending));
    assert_eq!(
        st.approvals
            .iter()
            .map(|r| r.username.as_str())
            .collect::<Vec<_>>(),
        ["rosa-release"]
    );
    assert!(!recorded.annotations()["dvo.caat.io/acts"].contains("raj-release"));
    let facts = admission_facts(&client, &format!("{ns}/{apr}")).await;
    assert!(
        !facts
            .iter()
            .any(|(e, u, _)| *e == EventType::ApprovalGranted && u == "raj-release"),
        "{facts:?}"
    );
}

#[tokio::test]
async fn policies_are_checked_at_admission_and_protected_ones_deleted_by_admins_only() {
    let client = operator().await;
    let ns = namespace(&client, "policyadm").await;
    let bad = json!({"apiVersion": "dvo.caat.io/v1alpha1", "kind": "DeploymentPolicy", "metadata": {"name": format!("{ns}-bad")},
        "spec": {"action": "Deny", "timeZone": "Mars/Olympus", "scope": {"namespaces": [ns]},
            "conditions": [{"field": "agent", "operator": "Matches", "value": "(unclosed"}]}});
    let (out, ok) = kubectl("admin", &["apply", "--server-side"], Some(&bad.to_string()));
    assert!(!ok, "{out}");
    assert!(
        out.contains("denied the request: DeploymentPolicy")
            && out.contains("Mars/Olympus")
            && out.contains("(unclosed"),
        "{out}"
    );
    println!("--- an invalid policy:\n{out}");

    let name = format!("{ns}-guard");
    let guard = json!({"apiVersion": "dvo.caat.io/v1alpha1", "kind": "DeploymentPolicy",
        "metadata": {"name": name, "labels": {"dvo.caat.io/protected": "true"}},
        "spec": {"action": "Warn", "scope": {"namespaces": [ns]}}});
    let (out, ok) = kubectl(
        "admin",
        &["apply", "--server-side"],
        Some(&guard.to_string()),
    );
    assert!(ok, "{out}");
    let (out, ok) = kubectl("release-manager-1", &["delete", "dpol", &name], None);
    assert!(
        !ok && out.contains("is protected (dvo.caat.io/protected=true): only an admin may delete it; rosa-release (roles: release_manager) is not one"),
        "{out}"
    );
    let (out, ok) = kubectl("admin", &["delete", "dpol", &name], None);
    assert!(ok, "{out}");
    let facts = admission_facts(&client, &name).await;
    assert_eq!(
        facts
            .iter()
            .map(|(e, u, _)| (*e, u.as_str()))
            .collect::<Vec<_>>(),
        [
            (EventType::PermissionDenied, "rosa-release"),
            (EventType::PermissionGranted, "alice-admin")
        ]
    );
}

#[tokio::test]
async fn break_glass_lets_one_spec_through_a_blackout_and_approvals() {
    let client = operator().await;
    let ns = namespace(&client, "breakglass").await;
    let today = Utc::now().date_naive();
    policy(&client, &ns, "freeze", json!({"action": "Deny", "blackouts": [{"start": today.to_string(), "end": (today + chrono::Duration::days(2)).to_string(), "reason": "freeze"}]})).await;
    policy(&client, &ns, "approve", json!({"action": "RequireApproval", "approval": {"roles": ["release_manager"], "minApprovals": 2}})).await;
    let (out, ok) = kubectl(
        "operator",
        &["apply", "-n", &ns, "--server-side"],
        Some(&adep("gha", "staging", "GHA").to_string()),
    );
    assert!(ok, "{out}");
    phase(&client, &ns, "gha", Phase::Blocked).await;
    let (out, ok) = annotate(
        "release-manager-1",
        &ns,
        "adep/gha",
        "dvo.caat.io/break-glass=INC-42 outage",
    );
    assert!(
        !ok && out.contains("rosa-release (roles: release_manager) lacks permission bypass_approval, which roles admin have"),
        "{out}"
    );
    let (out, ok) = annotate(
        "admin",
        &ns,
        "adep/gha",
        "dvo.caat.io/break-glass=INC-42 outage",
    );
    assert!(ok, "{out}");
    let ad = phase(&client, &ns, "gha", Phase::Progressing).await;
    let decision = ad.status.unwrap().decision.unwrap();
    assert!(
        decision
            .warnings
            .iter()
            .any(|w| w.starts_with("break-glass by alice-admin (INC-42 outage) lifted")),
        "{:?}",
        decision.warnings
    );
    // Progressing is written ahead of the rollout it announces.
    wait_for(
        &Api::<Deployment>::namespaced(client.clone(), &ns),
        "gha",
        |d: Option<&Deployment>| d.is_some(),
        Duration::from_secs(30),
    )
    .await;
    let facts = admission_facts(&client, &format!("{ns}/gha")).await;
    assert!(
        facts.contains(&(
            EventType::PermissionGranted,
            "alice-admin".into(),
            "stamped".into()
        )),
        "{facts:?}"
    );
    // The override itself, with what it lifted, at the highest severity.
    let used: Vec<_> = crate::support::audit_entries(&client, &format!("{ns}/gha"))
        .await
        .into_iter()
        .filter(|e| e.draft.event_type == EventType::BreakGlassUsed)
        .collect();
    assert_eq!(used.len(), 1, "{used:?}");
    assert_eq!(used[0].draft.user_id, "alice-admin");
    assert!(
        used[0].draft.metadata["lifted"]
            .as_array()
            .is_some_and(|l| !l.is_empty()),
        "{:?}",
        used[0].draft.metadata
    );
    // A new spec is not covered: it is held again.
    let patch = r#"{"spec":{"replicas":2}}"#;
    let (out, ok) = kubectl(
        "operator",
        &[
            "patch",
            "-n",
            &ns,
            "adep",
            "gha",
            "--type=merge",
            "-p",
            patch,
        ],
        None,
    );
    assert!(
        !ok && out.contains("lacks permission bypass_approval"),
        "the annotation still asks for break-glass: {out}"
    );
    let (out, ok) = kubectl(
        "operator",
        &[
            "annotate",
            "-n",
            &ns,
            "adep",
            "gha",
            "dvo.caat.io/break-glass-",
        ],
        None,
    );
    assert!(ok, "{out}");
    let (out, ok) = kubectl(
        "operator",
        &[
            "patch",
            "-n",
            &ns,
            "adep",
            "gha",
            "--type=merge",
            "-p",
            patch,
        ],
        None,
    );
    assert!(ok, "{out}");
    let ad = phase(&client, &ns, "gha", Phase::Blocked).await;
    assert!(!ad.annotations().contains_key(stamp::BREAK_GLASS_STAMP));
}

#[tokio::test]
async fn approvals_that_must_prove_mfa_take_a_verified_entra_token() {
    let client = operator().await;
    let ns = namespace(&client, "mfa").await;
    policy(&client, &ns, "mfa", json!({"action": "RequireApproval", "approval": {"roles": ["release_manager"], "requireMfa": true}})).await;
    let (out, ok) = kubectl(
        "operator",
        &["apply", "-n", &ns, "--server-side"],
        Some(&adep("gha", "staging", "GHA").to_string()),
    );
    assert!(ok, "{out}");
    let ad = phase(&client, &ns, "gha", Phase::PendingApproval).await;
    let target = format!(
        "apr/{}",
        approval_request_name(
            "gha",
            ad.metadata.generation.unwrap(),
            &spec_digest(&ad.spec)
        )
    );
    let (out, ok) = annotate("release-manager-1", &ns, &target, "dvo.caat.io/approve=ok");
    assert!(
        !ok && out.contains("rosa-release did not prove multi-factor authentication"),
        "{out}"
    );
    let now = Utc::now().timestamp();
    let claims = |user: &str, amr: Value| {
        json!({"iss": format!("https://login.microsoftonline.com/{TENANT}/v2.0"), "aud": AUDIENCE,
            "exp": now + 600, "nbf": now - 60, "tid": TENANT, "oid": "oid-rosa", "upn": user, "amr": amr})
    };
    let cases = [
        (
            claims("rosa-release", json!(["pwd"])),
            "did not prove multi-factor authentication",
        ),
        (
            claims("raj-release", json!(["pwd", "mfa"])),
            "the approval token belongs to raj-release, not to rosa-release",
        ),
        (
            {
                let mut c = claims("rosa-release", json!(["mfa"]));
                c["exp"] = json!(now - 600);
                c
            },
            "the approval token was refused: the token has expired",
        ),
    ];
    for (claims, want) in cases {
        let token = entra_key().sign(&claims);
        let (out, ok) = annotate(
            "release-manager-1",
            &ns,
            &target,
            &format!("dvo.caat.io/approve-token={token}"),
        );
        assert!(!ok && out.contains(want), "{want}: {out}");
    }
    let token = entra_key().sign(&claims("rosa-release", json!(["pwd", "mfa"])));
    let (out, ok) = annotate(
        "release-manager-1",
        &ns,
        &target,
        &format!("dvo.caat.io/approve-token={token}"),
    );
    assert!(ok, "{out}");
    let apr = apr_phase(
        &client,
        &ns,
        target.trim_start_matches("apr/"),
        ApprovalPhase::Approved,
    )
    .await;
    let record = &apr.status.as_ref().unwrap().approvals[0];
    assert!(
        record.mfa && record.username == "rosa-release",
        "{record:?}"
    );
    assert!(
        !serde_json::to_string(&apr).unwrap().contains(&token),
        "the token is never stored"
    );
    let facts = admission_facts(&client, &format!("{ns}/{}", apr.name_any())).await;
    assert!(
        facts
            .iter()
            .filter(|(e, _, _)| *e == EventType::AuthFailure)
            .count()
            >= 2,
        "{facts:?}"
    );
}

#[tokio::test]
async fn role_mapping_changes_apply_to_the_next_request() {
    let client = operator().await;
    let ns = namespace(&client, "remap").await;
    let env = format!("stage-{ns}");
    let mut manifest = adep("gha", &env, "GHA");
    manifest["metadata"]["namespace"] = json!(ns);
    let try_apply = || {
        kubectl(
            "developer",
            &["create", "--dry-run=server", "-o", "name"],
            Some(&manifest.to_string()),
        )
    };
    let cms = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), OPERATOR_NS);
    let name = dvo_operator::controller::ROLE_MAPPING_CONFIGMAP;
    let key = dvo_operator::controller::ROLE_MAPPING_KEY;
    let base = cms.get(name).await.unwrap().data.unwrap()[key].clone();
    let set = |text: String| {
        let cms = cms.clone();
        async move {
            let patch = json!({"data": {(key): text}});
            cms.patch(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .unwrap();
        }
    };
    // The new environment is a staging one: dev-dana may not deploy there...
    let mut mapping: Value = dvo_operator::yaml::from_str(&base).unwrap();
    mapping["environmentTiers"][env.as_str()] = "staging".into();
    set(dvo_operator::yaml::to_string(&mapping).unwrap()).await;
    let (refused_out, refused_ok) = try_apply();
    // ...until she is made an operator in it.
    mapping["environments"][env.as_str()] =
        dvo_operator::yaml::from_str("{users: {dev-dana: [operator]}}").unwrap();
    set(dvo_operator::yaml::to_string(&mapping).unwrap()).await;
    let (allowed_out, allowed_ok) = try_apply();
    set(base).await;
    assert!(
        !refused_ok
            && refused_out.contains("dev-dana (roles: developer) lacks permission deploy_staging"),
        "{refused_out}"
    );
    assert!(
        allowed_ok,
        "the new grant applies to the next request: {allowed_out}"
    );
}

#[tokio::test]
async fn replicas_converge_on_one_webhook_certificate() {
    let client = operator().await;
    let ns = namespace(&client, "webhookcert").await;
    let hosts = vec![
        "127.0.0.1".to_owned(),
        "dvo-operator-webhook.x.svc".to_owned(),
    ];
    let (a, b) = tokio::join!(
        dvo_operator::webhook::tls::ensure(&client, &ns, &hosts),
        dvo_operator::webhook::tls::ensure(&client, &ns, &hosts)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        (a.ca.as_str(), a.cert.as_str()),
        (b.ca.as_str(), b.cert.as_str()),
        "two replicas racing"
    );
    let again = dvo_operator::webhook::tls::ensure(&client, &ns, &hosts[..1])
        .await
        .unwrap();
    assert_eq!(again.cert, a.cert, "a restart reuses it");
    let more = dvo_operator::webhook::tls::ensure(&client, &ns, &["10.0.0.7".to_owned()])
        .await
        .unwrap();
    assert_ne!(more.cert, a.cert, "a new host needs a new certificate");
    let back = dvo_operator::webhook::tls::ensure(&client, &ns, &hosts)
        .await
        .unwrap();
    assert_eq!(back.cert, more.cert, "which still covers the old hosts");
    // Issued by another (cert-manager): the operator takes the Secret as it is.
    let ns2 = namespace(&client, "webhookcertext").await;
    let external = tokio::spawn({
        let client = client.clone();
        let ns2 = ns2.clone();
        async move { dvo_operator::webhook::tls::external(&client, &ns2).await }
    });
    let mut secret = k8s_openapi::api::core::v1::Secret::default();
    secret.metadata.name = Some(dvo_operator::webhook::tls::SECRET.to_owned());
    secret.string_data = Some(
        [
            ("ca.crt", &back.ca),
            ("tls.crt", &back.cert),
            ("tls.key", &back.key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.clone()))
        .collect(),
    );
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns2)
        .create(&kube::api::PostParams::default(), &secret)
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(30), external)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((got.ca, got.cert), (back.ca, back.cert));
}
