//! The operator against the real API server: rollouts gated by policy and approval, the
//! ApprovalRequest life cycle, capability fallbacks, staging evidence, health and rollback,
//! garbage collection and restarts. The control plane has no kubelet: tests play its part by
//! marking pods Ready, as a privileged identity.

use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::conditions;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::support::{
    CLUSTER_SCOPED, OPERATOR_IDENTITY, accepted, apr_phase, control_plane, create_as, namespace,
    operator, phase, phase_within, refused, restart_operator, wait_for,
};
use dvo_operator::controller::agent_deployment::approval_request_name;
use dvo_operator::controller::workload::{DIGEST_ANNOTATION, OWNER_LABEL};
use dvo_operator::crd::agent_deployment::{Phase, spec_digest};
use dvo_operator::crd::approval_request::ApprovalPhase;
use dvo_operator::crd::{AgentDeployment, ApprovalRequest, Capability, DeploymentPolicy};
use dvo_operator::identity::stamp;

const WAIT: Duration = Duration::from_secs(60);

fn manifest(name: &str, env: &str, image: &str, extra: Value) -> Value {
    let mut spec = json!({
        "agent": "GHA", "platform": "langchain", "environment": env, "replicas": 1,
        "template": {"metadata": {"labels": {"app": "gha"}}, "spec": {"containers": [{"name": "agent", "image": image}]}},
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    json!({"apiVersion": "dvo.caat.io/v1alpha1", "kind": "AgentDeployment", "metadata": {"name": name}, "spec": spec})
}

/// Creates an AgentDeployment as `who`, whom the admission webhook stamps as its requester.
/// None: as the operator's own identity, whose writes the webhook does not stamp (an object
/// without a verified requester).
async fn create(ns: &str, manifest: Value, who: Option<&str>) -> AgentDeployment {
    create_as(who.unwrap_or(OPERATOR_IDENTITY), ns, manifest).await
}

/// Changes the spec (fields merged into it) as `who`.
async fn change_spec(ns: &str, name: &str, changes: Value, who: &str) -> AgentDeployment {
    let client = control_plane().client(who).await;
    Api::<AgentDeployment>::namespaced(client, ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": changes})),
        )
        .await
        .unwrap_or_else(|e| panic!("{who} changes {name}: {e}"))
}

/// A policy scoped to the test's namespace (policies are cluster-wide).
async fn policy(client: &Client, ns: &str, name: &str, yaml: &str) -> String {
    crate::support::scoped_policy(
        client,
        ns,
        name,
        dvo_operator::yaml::from_str(yaml).unwrap(),
    )
    .await
}

/// A staging AgentDeployment `gha` by ops-omar, held by policy `approve` (`approval` as given):
/// the policy's name, the object, and its ApprovalRequest's name, once it is PendingApproval.
async fn held_for_approval(
    client: &Client,
    ns: &str,
    approval: &str,
) -> (String, AgentDeployment, String) {
    let yaml = format!("{{action: RequireApproval, approval: {approval}}}");
    let policy = policy(client, ns, "approve", &yaml).await;
    let ad = create(
        ns,
        manifest("gha", "staging", "gha:1", json!({})),
        Some("operator"),
    )
    .await;
    let apr = approval_request_name(
        "gha",
        ad.metadata.generation.unwrap(),
        &spec_digest(&ad.spec),
    );
    phase(client, ns, "gha", Phase::PendingApproval).await;
    (policy, ad, apr)
}

/// Plays the kubelet: marks every pod of the Deployment's current template Ready.
async fn pods_ready(client: &Client, ns: &str, name: &str) {
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
    let digest_of = |p: &Pod| p.annotations().get(DIGEST_ANNOTATION).cloned();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let Some(d) = deployments.get_opt(name).await.unwrap() else {
            assert!(
                std::time::Instant::now() < deadline,
                "Deployment {name} never appeared"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let want = d.annotations().get(DIGEST_ANNOTATION).cloned();
        let replicas = d.spec.replicas.unwrap_or(1) as usize;
        let list = pods
            .list(&ListParams::default().labels(&format!("{OWNER_LABEL}={name}")))
            .await
            .unwrap();
        let current: Vec<&Pod> = list
            .items
            .iter()
            .filter(|p| digest_of(p) == want && p.metadata.deletion_timestamp.is_none())
            .collect();
        if current.len() >= replicas {
            for p in current {
                let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                let status = json!({"status": {"phase": "Running", "conditions": [
                    {"type": "Ready", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                ]}});
                pods.patch_status(
                    &p.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&status),
                )
                .await
                .unwrap();
            }
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pods of {name} never appeared"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Prints what a user sees at one step (`cargo test --test integration walkthrough -- --nocapture`).
fn show(ns: &str, step: &str) {
    let (out, ok) = control_plane().kubectl("admin", &["get", "adep,apr,deploy", "-n", ns]);
    assert!(ok, "{out}");
    println!("\n# {step}\n$ kubectl get adep,apr,deploy -n {ns}\n{out}");
}

/// Whether the Deployment `name` exists.
async fn has_deployment(client: &Client, ns: &str, name: &str) -> bool {
    Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()
        .is_some()
}

/// Waits (30 s at most) until the Deployment carries `digest`: `Progressing` is written ahead
/// of the rollout it announces.
async fn rolled_out(client: &Client, ns: &str, name: &str, digest: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = deployment_digest(client, ns, name).await;
        if now.as_deref() == Some(digest) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{ns}/{name} runs {now:?}, not {digest}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn deployment_digest(client: &Client, ns: &str, name: &str) -> Option<String> {
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()?;
    d.annotations().get(DIGEST_ANNOTATION).cloned()
}

#[tokio::test]
async fn allowed_spec_rolls_out_and_becomes_ready() {
    let client = operator().await;
    let ns = namespace(&client, "allow").await;
    let ad = create(
        &ns,
        manifest("gha", "development", "gha:1", json!({"replicas": 2})),
        Some("developer"),
    )
    .await;
    let digest = spec_digest(&ad.spec);
    let ad = phase(&client, &ns, "gha", Phase::Progressing).await;
    rolled_out(&client, &ns, "gha", &digest).await;
    let d = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("gha")
        .await
        .unwrap();
    assert_eq!(d.annotations().get(DIGEST_ANNOTATION), Some(&digest));
    assert_eq!(d.spec.replicas, Some(2));
    let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("AgentDeployment", ad.uid().unwrap().as_str(), Some(true))
    );
    assert!(
        d.metadata
            .managed_fields
            .unwrap()
            .iter()
            .any(|m| m.manager.as_deref() == Some("dvo-operator")
                && m.operation.as_deref() == Some("Apply"))
    );
    pods_ready(&client, &ns, "gha").await;
    let ad = phase(&client, &ns, "gha", Phase::Deployed).await;
    let st = ad.status.unwrap();
    assert_eq!(st.deployed_digest.as_deref(), Some(digest.as_str()));
    assert_eq!(st.healthy_digest.as_deref(), Some(digest.as_str()));
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.observed_generation),
        ("True", ad.metadata.generation)
    );
    for c in [
        "PolicyEvaluated",
        "Approved",
        "CapabilitiesAvailable",
        "Degraded",
    ] {
        assert!(
            st.conditions.iter().any(|x| x.type_ == c),
            "condition {c} missing"
        );
    }
    // An Event per transition.
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    let reasons: Vec<_> = events
        .items
        .iter()
        .filter_map(|e| e.reason.clone())
        .collect();
    assert!(
        reasons.contains(&"Progressing".to_owned()) && reasons.contains(&"Deployed".to_owned()),
        "{reasons:?}"
    );
    // Labels added by GitOps tools neither change the digest nor reach the Deployment.
    let api = Api::<AgentDeployment>::namespaced(client.clone(), &ns);
    api.patch(
        "gha",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"labels": {"argocd.argoproj.io/instance": "agents"}}})),
    )
    .await
    .unwrap();
    let ad = phase(&client, &ns, "gha", Phase::Deployed).await;
    assert_eq!(spec_digest(&ad.spec), digest);
    let d = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("gha")
        .await
        .unwrap();
    assert!(!d.labels().contains_key("argocd.argoproj.io/instance"));
    assert_eq!(
        d.metadata.generation,
        Some(1),
        "the Deployment was applied once"
    );
}

#[tokio::test]
async fn unknown_or_forged_requesters_are_not_privileged() {
    let client = operator().await;
    let ns = namespace(&client, "nostamp").await;
    create(&ns, manifest("gha", "staging", "gha:1", json!({})), None).await;
    let ad = phase(&client, &ns, "gha", Phase::Blocked).await;
    assert!(
        ad.status
            .unwrap()
            .message
            .unwrap()
            .contains("(unknown requester) (roles: viewer) lacks permission deploy_staging")
    );
    // Nobody can bring a stamp of their own, not even an admin.
    let forged = serde_json::to_string(&stamp::Stamp::sign(
        b"not the operator's key, not at all",
        &ns,
        "gha",
        &spec_digest(&ad.spec),
        crate::support::identity("admin"),
    ))
    .unwrap();
    let (out, ok) = control_plane().kubectl(
        "admin",
        &[
            "annotate",
            "-n",
            &ns,
            "adep",
            "gha",
            &format!("{}={forged}", stamp::ANNOTATION),
        ],
    );
    assert!(
        !ok && out.contains("the annotation dvo.caat.io/requester is written by the dvo admission webhook only; alice-admin may not set or change it"),
        "{out}"
    );
    let ad = phase(&client, &ns, "gha", Phase::Blocked).await;
    assert!(!ad.annotations().contains_key(stamp::ANNOTATION));
    assert!(!has_deployment(&client, &ns, "gha").await);
}

#[tokio::test]
async fn walkthrough_production_waits_for_two_release_managers_then_rolls_out_exactly_the_approved_spec()
 {
    let client = operator().await;
    let ns = namespace(&client, "prod").await;
    policy(&client, &ns, "two-rms", "{action: RequireApproval, scope: {environments: [production]}, approval: {roles: [release_manager], minApprovals: 2}}").await;
    let ad = create(
        &ns,
        manifest("gha", "production", "gha:1", json!({})),
        Some("operator"),
    )
    .await;
    let digest = spec_digest(&ad.spec);
    let apr_name = approval_request_name("gha", ad.metadata.generation.unwrap(), &digest);
    let ad = phase(&client, &ns, "gha", Phase::PendingApproval).await;
    assert_eq!(
        ad.status.as_ref().unwrap().approval_request.as_deref(),
        Some(apr_name.as_str())
    );
    assert!(
        !has_deployment(&client, &ns, "gha").await,
        "nothing rolls out before approval"
    );
    let apr = Api::<ApprovalRequest>::namespaced(client.clone(), &ns)
        .get(&apr_name)
        .await
        .unwrap();
    assert_eq!(apr.spec.spec_digest, digest);
    assert_eq!(apr.spec.requester.as_ref().unwrap().username, "ops-omar");
    let sources: Vec<_> = apr
        .spec
        .requirements
        .iter()
        .map(|r| r.source.as_str())
        .collect();
    assert!(
        sources.contains(&format!("policy/{ns}-two-rms").as_str())
            && sources.contains(&"permission/deploy_production"),
        "{sources:?}"
    );
    show(
        &ns,
        "1. ops-omar applies gha for production: held for approval",
    );

    // The webhook refuses the requester, a developer and a service account; the same person
    // approves once.
    let out = refused(
        &ns,
        &apr_name,
        "operator",
        "approve",
        "ops-omar requested this deployment and cannot approve it",
    );
    println!("--- what ops-omar sees:\n{out}");
    refused(
        &ns,
        &apr_name,
        "developer",
        "approve",
        "dev-dana (roles: developer) holds none of the roles release_manager",
    );
    refused(
        &ns,
        &apr_name,
        "ci",
        "approve",
        "machines never count as human approvers",
    );
    accepted(&ns, &apr_name, "release-manager-1", "approve");
    let out = refused(
        &ns,
        &apr_name,
        "release-manager-1",
        "approve",
        "rosa-release already approved",
    );
    println!("--- what rosa-release sees the second time:\n{out}");
    let api = Api::<ApprovalRequest>::namespaced(client.clone(), &ns);
    let apr = wait_for(
        &api,
        &apr_name,
        |o: Option<&ApprovalRequest>| {
            o.and_then(|a| a.status.as_ref())
                .is_some_and(|s| s.approvals.len() == 1)
        },
        WAIT,
    )
    .await;
    let st = apr.status.unwrap();
    assert_eq!(st.phase, Some(ApprovalPhase::Pending));
    let record = &st.approvals[0];
    assert_eq!(
        (
            record.username.as_str(),
            record.comment.as_deref(),
            record.ignored.as_deref()
        ),
        ("rosa-release", Some("approve by test"), None)
    );
    assert_eq!(
        record.roles,
        vec![dvo_operator::identity::Role::ReleaseManager]
    );
    assert!(
        record.satisfies.contains(&format!("policy/{ns}-two-rms"))
            && record
                .satisfies
                .contains(&"permission/deploy_production".to_owned()),
        "{record:?}"
    );
    assert_eq!(
        phase(&client, &ns, "gha", Phase::PendingApproval)
            .await
            .status
            .unwrap()
            .deployed_digest,
        None
    );
    show(
        &ns,
        "2. the webhook refused the requester, a developer, a service account and rosa-release's second approval: still held",
    );

    accepted(&ns, &apr_name, "release-manager-2", "approve");
    apr_phase(&client, &ns, &apr_name, ApprovalPhase::Approved).await;
    phase(&client, &ns, "gha", Phase::Progressing).await;
    rolled_out(&client, &ns, "gha", &digest).await;
    show(
        &ns,
        "3. raj-release approves: the approved digest rolls out",
    );
    pods_ready(&client, &ns, "gha").await;
    phase(&client, &ns, "gha", Phase::Deployed).await;
    show(&ns, "4. pods ready: Deployed");

    // A new spec waits for its own approval while the approved one keeps running.
    let ad = change_spec(&ns, "gha", json!({"template": {"metadata": {"labels": {"app": "gha"}}, "spec": {"containers": [{"name": "agent", "image": "gha:2"}]}}}), "operator").await;
    let digest2 = spec_digest(&ad.spec);
    let ad = phase(&client, &ns, "gha", Phase::PendingApproval).await;
    let apr2 = approval_request_name("gha", ad.metadata.generation.unwrap(), &digest2);
    assert_eq!(
        ad.status.unwrap().approval_request.as_deref(),
        Some(apr2.as_str())
    );
    assert_eq!(
        deployment_digest(&client, &ns, "gha").await,
        Some(digest.clone()),
        "the approved spec keeps running"
    );
    show(
        &ns,
        "5. the image changes to gha:2: held again while gha:1 keeps running",
    );
    accepted(&ns, &apr2, "release-manager-1", "approve");
    // An admin counts for deploy_production, already met; the policy wants release managers.
    refused(
        &ns,
        &apr2,
        "admin",
        "approve",
        "alice-admin (roles: admin) holds none of the roles release_manager",
    );
    apr_phase(&client, &ns, &apr2, ApprovalPhase::Pending).await;
    accepted(&ns, &apr2, "release-manager-2", "approve");
    phase(&client, &ns, "gha", Phase::Progressing).await;
    rolled_out(&client, &ns, "gha", &digest2).await;
    show(&ns, "6. two release managers approve gha:2: it rolls out");
}

#[tokio::test]
async fn a_spec_change_while_pending_supersedes_the_request() {
    let client = operator().await;
    let ns = namespace(&client, "supersede").await;
    let (_, _, first) = held_for_approval(&client, &ns, "{roles: [release_manager]}").await;
    let ad = change_spec(&ns, "gha", json!({"replicas": 3}), "operator").await;
    let second = approval_request_name(
        "gha",
        ad.metadata.generation.unwrap(),
        &spec_digest(&ad.spec),
    );
    apr_phase(&client, &ns, &first, ApprovalPhase::Superseded).await;
    phase(&client, &ns, "gha", Phase::PendingApproval).await;
    // The superseded request takes no approval.
    refused(
        &ns,
        &first,
        "release-manager-1",
        "approve",
        "is Superseded; it takes no more approvals",
    );
    apr_phase(&client, &ns, &second, ApprovalPhase::Pending).await;
    let aprs = Api::<ApprovalRequest>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(aprs.items.len(), 2);
    assert!(!has_deployment(&client, &ns, "gha").await);
}

#[tokio::test]
async fn rejection_and_expiry() {
    let client = operator().await;
    let ns = namespace(&client, "reject").await;
    policy(
        &client,
        &ns,
        "approve",
        "{action: RequireApproval, scope: {agents: [GHA]}, approval: {roles: [release_manager]}}",
    )
    .await;
    policy(&client, &ns, "quick", "{action: RequireApproval, scope: {agents: [QCK]}, approval: {roles: [release_manager], expiry: 3s}}").await;
    let ad = create(
        &ns,
        manifest("gha", "staging", "gha:1", json!({})),
        Some("operator"),
    )
    .await;
    let apr = approval_request_name(
        "gha",
        ad.metadata.generation.unwrap(),
        &spec_digest(&ad.spec),
    );
    phase(&client, &ns, "gha", Phase::PendingApproval).await;
    // A developer may not reject; a release manager may.
    refused(
        &ns,
        &apr,
        "developer",
        "reject",
        "rejection of ApprovalRequest",
    );
    accepted(&ns, &apr, "release-manager-1", "reject");
    apr_phase(&client, &ns, &apr, ApprovalPhase::Rejected).await;
    refused(
        &ns,
        &apr,
        "release-manager-2",
        "approve",
        "is Rejected; it takes no more approvals",
    );
    let ad = phase(&client, &ns, "gha", Phase::Rejected).await;
    assert!(
        ad.status
            .unwrap()
            .message
            .unwrap()
            .contains("rejected by rosa-release")
    );

    create(
        &ns,
        manifest("qck", "staging", "qck:1", json!({"agent": "QCK"})),
        Some("operator"),
    )
    .await;
    phase(&client, &ns, "qck", Phase::ApprovalExpired).await;
    let ad = Api::<AgentDeployment>::namespaced(client.clone(), &ns)
        .get("qck")
        .await
        .unwrap();
    let expired = approval_request_name(
        "qck",
        ad.metadata.generation.unwrap(),
        &spec_digest(&ad.spec),
    );
    refused(
        &ns,
        &expired,
        "release-manager-1",
        "approve",
        "is Expired; it takes no more approvals",
    );
    assert!(!has_deployment(&client, &ns, "qck").await);
}

#[tokio::test]
async fn a_closed_window_holds_the_rollout_until_it_opens() {
    let client = operator().await;
    let ns = namespace(&client, "window").await;
    // A window that opens at the next minute boundary (every day, UTC).
    let now = Utc::now();
    let open = chrono::DurationRound::duration_trunc(
        now + chrono::Duration::seconds(60),
        chrono::Duration::minutes(1),
    )
    .unwrap();
    let start = open.format("%H:%M").to_string();
    let end = (open + chrono::Duration::minutes(30))
        .format("%H:%M")
        .to_string();
    let days = "[monday, tuesday, wednesday, thursday, friday, saturday, sunday]";
    policy(
        &client,
        &ns,
        "window",
        &format!(
            "{{action: AuditOnly, windows: [{{days: {days}, start: '{start}', end: '{end}'}}]}}"
        ),
    )
    .await;
    create(
        &ns,
        manifest("gha", "development", "gha:1", json!({})),
        Some("developer"),
    )
    .await;
    let ad = phase(&client, &ns, "gha", Phase::Blocked).await;
    let decision = ad.status.unwrap().decision.unwrap();
    assert_eq!(
        decision.next_window_opens_at.map(|t| t.timestamp()),
        Some(open.timestamp())
    );
    assert!(!has_deployment(&client, &ns, "gha").await);
    // The operator re-evaluates by itself when the window opens (up to a minute from now).
    phase_within(
        &client,
        &ns,
        "gha",
        Phase::Progressing,
        Duration::from_secs(120),
    )
    .await;
    assert!(Utc::now() >= open);
}

#[tokio::test]
async fn capability_fallbacks() {
    let _lock = CLUSTER_SCOPED.lock().await;
    let client = operator().await;
    let ns = namespace(&client, "caps").await;
    let caps = Api::<Capability>::all(client.clone());
    let set = |name: &'static str, enabled: bool, fallback: &'static str| {
        let caps = caps.clone();
        async move {
            let c = json!({"apiVersion": "dvo.caat.io/v1alpha1", "kind": "Capability", "metadata": {"name": name}, "spec": {"enabled": enabled, "fallback": fallback, "message": format!("{name} is switched off ({fallback})")}});
            caps.patch(
                name,
                &PatchParams::apply("dvo-tests").force(),
                &Patch::Apply(&c),
            )
            .await
            .unwrap();
        }
    };
    let fastapi = json!({"platform": "fastapi", "agent": "FST"});
    // Error: blocked.
    set("deploy-fastapi", false, "Error").await;
    create(
        &ns,
        manifest("fst", "development", "fst:1", fastapi.clone()),
        Some("developer"),
    )
    .await;
    let ad = phase(&client, &ns, "fst", Phase::Blocked).await;
    let st = ad.status.unwrap();
    assert!(
        st.message
            .unwrap()
            .contains("capability/deploy-fastapi: deploy-fastapi is switched off (Error)")
    );
    assert!(
        st.conditions
            .iter()
            .any(|c| c.type_ == "CapabilitiesAvailable" && c.status == "False")
    );
    // Manual: a person must act; no workload.
    set("deploy-fastapi", false, "Manual").await;
    phase(&client, &ns, "fst", Phase::ManualActionRequired).await;
    assert!(!has_deployment(&client, &ns, "fst").await);
    // Enabled again: rolls out.
    set("deploy-fastapi", true, "Error").await;
    phase(&client, &ns, "fst", Phase::Progressing).await;

    // Skip and Degrade leave steps out and mark the deployment Degraded.
    let hook = json!({"steps": {"kbSync": {"image": "kb:1"}, "integrationTests": {"image": "it:1"}}, "agent": "KBS"});
    set("kb-sync", false, "Degrade").await;
    set("integration-tests", false, "Skip").await;
    create(
        &ns,
        manifest("kbs", "development", "kbs:1", hook),
        Some("developer"),
    )
    .await;
    pods_ready(&client, &ns, "kbs").await;
    let ad = phase(&client, &ns, "kbs", Phase::Degraded).await;
    let d = ad.status.unwrap().decision.unwrap();
    assert_eq!(
        d.degraded_steps
            .iter()
            .map(|s| s.capability.as_str())
            .collect::<Vec<_>>(),
        vec!["kb-sync"]
    );
    assert_eq!(
        d.skipped_steps
            .iter()
            .map(|s| s.capability.as_str())
            .collect::<Vec<_>>(),
        vec!["integration-tests"]
    );

    // Copilot Studio is always a person's job.
    let copilot = json!({"apiVersion": "dvo.caat.io/v1alpha1", "kind": "AgentDeployment", "metadata": {"name": "hdc"}, "spec": {"agent": "HDC", "platform": "copilot-studio", "environment": "development"}});
    create(&ns, copilot, Some("developer")).await;
    let ad = phase(&client, &ns, "hdc", Phase::ManualActionRequired).await;
    assert!(
        ad.status.unwrap().decision.unwrap().manual_instructions[0]
            .contains("Copilot Studio deployment requires manual action")
    );

    for name in ["deploy-fastapi", "kb-sync", "integration-tests"] {
        caps.delete(name, &DeleteParams::default()).await.unwrap();
    }
}

#[tokio::test]
async fn production_is_validated_by_a_ready_staging_deployment_of_the_same_images() {
    let client = operator().await;
    let ns = namespace(&client, "evidence").await;
    policy(&client, &ns, "deny-direct-prod", "{priority: 5, action: Deny, message: Production deployments require prior staging validation, conditions: [{field: environment, operator: Equals, value: production}, {field: staging_validated, operator: NotEquals, value: true}]}").await;
    let agent = json!({"agent": format!("EV{}", &ns[ns.len() - 4..].replace('-', ""))});
    create(
        &ns,
        manifest("prod", "production", "ev:7", agent.clone()),
        Some("release-manager-1"),
    )
    .await;
    let ad = phase(&client, &ns, "prod", Phase::Blocked).await;
    assert!(
        ad.status
            .unwrap()
            .message
            .unwrap()
            .contains("require prior staging validation")
    );
    create(
        &ns,
        manifest("stage", "staging", "ev:7", agent),
        Some("operator"),
    )
    .await;
    pods_ready(&client, &ns, "stage").await;
    phase(&client, &ns, "stage", Phase::Deployed).await;
    // Staging being Deployed and Ready re-evaluates production: now it only needs approval.
    let ad = phase(&client, &ns, "prod", Phase::PendingApproval).await;
    let trace = ad.status.unwrap().decision.unwrap().trace;
    assert!(
        trace[0]
            .conditions
            .iter()
            .any(|c| c.field == "staging_validated" && c.actual == json!(true))
    );
}

#[tokio::test]
async fn a_failed_rollout_rolls_back_to_the_last_healthy_spec_unless_disabled() {
    let client = operator().await;
    let ns = namespace(&client, "rollback").await;
    for (name, auto) in [("auto", true), ("manual", false)] {
        let ad = create(
            &ns,
            manifest(
                name,
                "development",
                "good:1",
                json!({"steps": {"autoRollback": auto}}),
            ),
            Some("developer"),
        )
        .await;
        let good = spec_digest(&ad.spec);
        pods_ready(&client, &ns, name).await;
        phase(&client, &ns, name, Phase::Deployed).await;
        let template = json!({"metadata": {"labels": {"app": "gha"}}, "spec": {"containers": [{"name": "agent", "image": "bad:2"}]}});
        let ad = change_spec(
            &ns,
            name,
            json!({"template": template, "progressDeadlineSeconds": 2}),
            "developer",
        )
        .await;
        let bad = spec_digest(&ad.spec);
        // Nobody makes the new pods ready: the Deployment controller gives up after 2s.
        let ad = phase(&client, &ns, name, Phase::Failed).await;
        let st = ad.status.unwrap();
        assert_eq!(st.failed_digest.as_deref(), Some(bad.as_str()));
        if auto {
            assert!(
                st.message
                    .unwrap()
                    .contains(&format!("rolled back to {good}"))
            );
            assert_eq!(
                deployment_digest(&client, &ns, name).await,
                Some(good.clone())
            );
            let d = Api::<Deployment>::namespaced(client.clone(), &ns)
                .get(name)
                .await
                .unwrap();
            let image = d.spec.template.spec.unwrap().containers[0].image.clone();
            assert_eq!(image.as_deref(), Some("good:1"));
        } else {
            assert_eq!(deployment_digest(&client, &ns, name).await, Some(bad));
        }
    }
}

#[tokio::test]
async fn deleting_the_agent_deployment_collects_its_deployment() {
    let client = operator().await;
    let ns = namespace(&client, "gc").await;
    create(
        &ns,
        manifest("gha", "development", "gha:1", json!({})),
        Some("developer"),
    )
    .await;
    let ad = phase(&client, &ns, "gha", Phase::Progressing).await;
    rolled_out(&client, &ns, "gha", &spec_digest(&ad.spec)).await;
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    let uid = deployments.get("gha").await.unwrap().uid().unwrap();
    Api::<AgentDeployment>::namespaced(client.clone(), &ns)
        .delete("gha", &DeleteParams::default())
        .await
        .unwrap();
    let gone =
        kube::runtime::wait::await_condition(deployments, "gha", conditions::is_deleted(&uid));
    tokio::time::timeout(WAIT, gone)
        .await
        .expect("the garbage collector deletes the Deployment")
        .unwrap();
}

#[tokio::test]
async fn a_restart_mid_flow_resumes_without_duplicates() {
    let client = operator().await;
    let ns = namespace(&client, "restart").await;
    let (_, _, apr) = held_for_approval(&client, &ns, "{roles: [release_manager]}").await;
    restart_operator().await;
    accepted(&ns, &apr, "release-manager-1", "approve");
    phase(&client, &ns, "gha", Phase::Progressing).await;
    restart_operator().await;
    pods_ready(&client, &ns, "gha").await;
    phase(&client, &ns, "gha", Phase::Deployed).await;
    let aprs = Api::<ApprovalRequest>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(aprs.items.len(), 1, "one request per digest");
    let d = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("gha")
        .await
        .unwrap();
    assert_eq!(d.metadata.generation, Some(1), "one rollout");
    let _ = control_plane();
}

#[tokio::test]
async fn policies_report_whether_they_are_accepted() {
    let client = operator().await;
    let ns = namespace(&client, "accepted").await;
    let good = policy(&client, &ns, "good", "{action: Warn}").await;
    // The schema cannot see an unknown time zone; the webhook refuses it at admission, and the
    // controller flags one stored without the webhook (written here as the operator itself).
    let yaml = "{action: Warn, timeZone: Mars/Olympus_Mons}";
    let mut spec: Value = dvo_operator::yaml::from_str(yaml).unwrap();
    spec["scope"]["namespaces"] = json!([ns]);
    let bad = format!("{ns}-bad");
    let p: DeploymentPolicy = serde_json::from_value(json!({"apiVersion": "dvo.caat.io/v1alpha1", "kind": "DeploymentPolicy", "metadata": {"name": bad}, "spec": spec})).unwrap();
    let refused = Api::<DeploymentPolicy>::all(client.clone())
        .create(&PostParams::default(), &p)
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("unknown time zone"),
        "{refused}"
    );
    Api::<DeploymentPolicy>::all(control_plane().client(OPERATOR_IDENTITY).await)
        .create(&PostParams::default(), &p)
        .await
        .unwrap();
    let api = Api::<DeploymentPolicy>::all(client.clone());
    let accepted = |want: &'static str| {
        move |o: Option<&DeploymentPolicy>| {
            o.and_then(|p| p.status.as_ref()).is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Accepted" && c.status == want)
            })
        }
    };
    wait_for(&api, &good, accepted("True"), WAIT).await;
    let p = wait_for(&api, &bad, accepted("False"), WAIT).await;
    let st = p.status.unwrap();
    assert!(
        st.conditions[0]
            .message
            .contains("unknown time zone \"Mars/Olympus_Mons\"")
    );
    assert_eq!(st.observed_generation, p.metadata.generation);
}

/// Plays the kubelet for a hook Job: its pod ends with `phase` (`Succeeded` or `Failed`).
async fn finish_job_pod(client: &Client, ns: &str, job: &str, pod_phase: &str) {
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let deadline = std::time::Instant::now() + WAIT;
    let pod = loop {
        let list = pods
            .list(&ListParams::default().labels(&format!("job-name={job}")))
            .await
            .unwrap();
        if let Some(p) = list.items.into_iter().next() {
            break p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pod of Job {job} never appeared"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let exit = if pod_phase == "Succeeded" { 0 } else { 1 };
    let container = pod.spec.as_ref().unwrap().containers[0].name.clone();
    let status = json!({"status": {"phase": pod_phase, "startTime": now, "containerStatuses": [{
        "name": container, "image": "x", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": exit, "reason": if exit == 0 { "Completed" } else { "Error" }, "startedAt": now, "finishedAt": now}},
    }]}});
    pods.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn hook_jobs_run_after_the_rollout_and_their_outcome_is_recorded() {
    // Capabilities are cluster-wide: another test switching kb-sync off would skip the hook.
    let _lock = CLUSTER_SCOPED.lock().await;
    let client = operator().await;
    let ns = namespace(&client, "hooks").await;
    let steps = json!({"steps": {"integrationTests": {"image": "tests:1", "args": ["--smoke"]}, "kbSync": {"image": "kb:1"}}});
    let ad = create(
        &ns,
        manifest("gha", "development", "gha:1", steps.clone()),
        Some("developer"),
    )
    .await;
    let digest = spec_digest(&ad.spec);
    pods_ready(&client, &ns, "gha").await;
    let tests_job =
        dvo_operator::controller::workload::hook_job_name("gha", "integration-tests", &digest);
    let kb_job = dvo_operator::controller::workload::hook_job_name("gha", "kb-sync", &digest);
    let api = Api::<AgentDeployment>::namespaced(client.clone(), &ns);
    let ad = wait_for(
        &api,
        "gha",
        |o: Option<&AgentDeployment>| {
            o.and_then(|a| a.status.as_ref())
                .is_some_and(|s| s.steps.len() == 2)
        },
        WAIT,
    )
    .await;
    assert_eq!(ad.status.unwrap().phase, Some(Phase::Progressing));
    let job = Api::<k8s_openapi::api::batch::v1::Job>::namespaced(client.clone(), &ns)
        .get(&tests_job)
        .await
        .unwrap();
    let container = &job.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(
        (container.image.as_deref(), container.args.clone()),
        (Some("tests:1"), Some(vec!["--smoke".to_owned()]))
    );
    finish_job_pod(&client, &ns, &tests_job, "Succeeded").await;
    finish_job_pod(&client, &ns, &kb_job, "Failed").await;
    // Tests passed, KB sync failed: deployed, but degraded, with both outcomes recorded.
    let ad = phase(&client, &ns, "gha", Phase::Degraded).await;
    let st = ad.status.unwrap();
    let states: Vec<_> = st
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.state))
        .collect();
    use dvo_operator::crd::agent_deployment::StepState;
    assert_eq!(
        states,
        vec![
            ("integration-tests", StepState::Succeeded),
            ("kb-sync", StepState::Failed)
        ]
    );
    assert!(st.message.unwrap().contains("kb-sync"));

    // Failing integration tests fail the rollout.
    let ad = create(
        &ns,
        manifest(
            "orc",
            "development",
            "orc:1",
            json!({"agent": "ORC", "steps": {"integrationTests": {"image": "tests:1"}}}),
        ),
        Some("developer"),
    )
    .await;
    pods_ready(&client, &ns, "orc").await;
    finish_job_pod(
        &client,
        &ns,
        &dvo_operator::controller::workload::hook_job_name(
            "orc",
            "integration-tests",
            &spec_digest(&ad.spec),
        ),
        "Failed",
    )
    .await;
    let ad = phase(&client, &ns, "orc", Phase::Failed).await;
    assert!(
        ad.status
            .unwrap()
            .message
            .unwrap()
            .contains("integration-tests")
    );
}

/// A pending request follows the policies in force: tightened while pending, it is replaced and
/// needs the new quorum; approvals given to the old one must be given again.
#[tokio::test]
async fn a_policy_tightened_while_pending_replaces_the_request() {
    let client = operator().await;
    let ns = namespace(&client, "tighten").await;
    let (name, _, apr) =
        held_for_approval(&client, &ns, "{roles: [release_manager], minApprovals: 2}").await;
    accepted(&ns, &apr, "release-manager-1", "approve");
    let api = Api::<ApprovalRequest>::namespaced(client.clone(), &ns);
    let first = api.get(&apr).await.unwrap().uid();
    let patch =
        json!({"spec": {"approval": {"roles": ["release_manager", "admin"], "minApprovals": 3}}});
    Api::<DeploymentPolicy>::all(client.clone())
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let replaced = wait_for(
        &api,
        &apr,
        move |o: Option<&ApprovalRequest>| {
            o.is_some_and(|a| a.uid() != first && a.spec.requirements[0].min_approvals == 3)
        },
        WAIT,
    )
    .await;
    assert!(
        !replaced.annotations().contains_key("dvo.caat.io/acts"),
        "approvals given to the old request do not carry over"
    );
    for who in ["release-manager-1", "release-manager-2", "admin"] {
        accepted(&ns, &apr, who, "approve");
    }
    apr_phase(&client, &ns, &apr, ApprovalPhase::Approved).await;
    phase(&client, &ns, "gha", Phase::Progressing).await;
}

/// Policies other teams keep changing (a GitOps tool syncing all day) never hold up a rollout
/// they are not in scope of: the operator checks that the rules it decides on are current, and
/// a change out of scope of the object does not make them stale for it. A policy in scope that
/// is written together with the object still counts.
#[tokio::test]
async fn policy_churn_out_of_scope_never_holds_up_a_rollout() {
    let client = operator().await;
    let ns = namespace(&client, "churn").await;
    let elsewhere = namespace(&client, "churn-elsewhere").await;
    let churned = policy(&client, &elsewhere, "warn", "{action: Warn, message: '0'}").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let api = Api::<DeploymentPolicy>::all(client);
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                api.patch(
                    &churned,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"spec": {"message": n.to_string()}})),
                )
                .await
                .expect("change the policy elsewhere");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        })
    };
    // A Deny in scope written just before the object holds it, churn or not.
    policy(
        &client,
        &ns,
        "deny-held",
        "{action: Deny, scope: {agents: [HELD]}}",
    )
    .await;
    let mut held = manifest("held", "development", "gha:1", json!({}));
    held["spec"]["agent"] = json!("HELD");
    create(&ns, held, Some("developer")).await;
    create(
        &ns,
        manifest("gha", "development", "gha:1", json!({})),
        Some("developer"),
    )
    .await;
    let progressing = phase_within(
        &client,
        &ns,
        "gha",
        Phase::Progressing,
        Duration::from_secs(20),
    )
    .await;
    phase_within(
        &client,
        &ns,
        "held",
        Phase::Blocked,
        Duration::from_secs(20),
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let changes = churn.await.expect("churn task");
    assert!(
        changes > 20,
        "the policy elsewhere changed {changes} times meanwhile"
    );
    assert_eq!(progressing.status.unwrap().phase, Some(Phase::Progressing));
    assert!(
        !has_deployment(&client, &ns, "held").await,
        "a denied spec never rolls out"
    );
}
