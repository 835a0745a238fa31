//! Only approved specs run, and the audit log says so once per fact (issues 11 and 12): an
//! ApprovalRequest counts only for the exact change it was made for, "approved" is decided from
//! the verified signed acts (never from status alone), going back to an earlier spec is a new
//! change, and every act is recorded exactly once however often the webhook is called.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::support::{
    accepted, apr_phase, as_operator, audit_entries, control_plane, create_as, namespace, operator,
    phase, scoped_policy, stamp_key, wait_for,
};
use dvo_operator::approval::signed::{ACTS, ActKind, SignedAct};
use dvo_operator::controller::agent_deployment::approval_request_name;
use dvo_operator::controller::workload::DIGEST_ANNOTATION;
use dvo_operator::crd::agent_deployment::{Phase, spec_digest};
use dvo_operator::crd::approval_request::ApprovalPhase;
use dvo_operator::crd::{AgentDeployment, ApprovalRequest};
use dvo_operator::identity::{Role, Subject};

const WAIT: Duration = Duration::from_secs(60);

fn manifest(image: &str) -> Value {
    json!({
        "apiVersion": "dvo.caat.io/v1alpha1", "kind": "AgentDeployment", "metadata": {"name": "gha"},
        "spec": {"agent": "GHA", "platform": "langchain", "environment": "staging", "replicas": 1,
            "steps": {"healthCheck": false},
            "template": {"metadata": {"labels": {"app": "gha"}},
                "spec": {"containers": [{"name": "agent", "image": image}]}}},
    })
}

fn template(image: &str) -> Value {
    manifest(image)["spec"]["template"].clone()
}

/// A namespace whose AgentDeployments need one release manager's approval.
async fn approval_namespace(client: &Client, test: &str) -> String {
    let ns = namespace(client, test).await;
    scoped_policy(
        client,
        &ns,
        "approve",
        json!({"action": "RequireApproval", "approval": {"roles": ["release_manager"]}}),
    )
    .await;
    ns
}

/// Changes the pod template's image as ops-omar (a new generation).
async fn change_image(ns: &str, image: &str) -> AgentDeployment {
    let client = control_plane().client("operator").await;
    Api::<AgentDeployment>::namespaced(client, ns)
        .patch(
            "gha",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"template": template(image)}})),
        )
        .await
        .expect("change the image")
}

/// The digest the Deployment runs, if there is one.
async fn running(client: &Client, ns: &str) -> Option<String> {
    Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt("gha")
        .await
        .unwrap()
        .and_then(|d| d.annotations().get(DIGEST_ANNOTATION).cloned())
}

/// Waits until the AgentDeployment's status for its current generation says `what`.
async fn status_says(client: &Client, ns: &str, what: &'static str) -> AgentDeployment {
    let api = Api::<AgentDeployment>::namespaced(client.clone(), ns);
    wait_for(
        &api,
        "gha",
        move |o: Option<&AgentDeployment>| {
            o.and_then(|a| {
                let s = a.status.as_ref()?;
                (s.observed_generation == a.metadata.generation).then_some(s)
            })
            .and_then(|s| s.message.as_deref())
            .is_some_and(|m| m.contains(what))
        },
        WAIT,
    )
    .await
}

/// Approves `gha` at its current generation as rosa-release and waits for the rollout.
async fn approve_and_roll_out(client: &Client, ns: &str, ad: &AgentDeployment) {
    let digest = spec_digest(&ad.spec);
    let apr = approval_request_name("gha", ad.metadata.generation.unwrap(), &digest);
    phase(client, ns, "gha", Phase::PendingApproval).await;
    accepted(ns, &apr, "release-manager-1", "approve");
    phase(client, ns, "gha", Phase::Deployed).await;
    assert_eq!(running(client, ns).await, Some(digest));
}

/// Hole 1: an ApprovalRequest found under the name the operator looks up, approved by
/// correctly signed acts, but made for another spec, never rolls out this one. (Names come from a
/// short digest prefix and a truncated AgentDeployment name, so colliding names can be crafted;
/// here the colliding object is made directly, with everything an attacker could forge but the
/// binding to this very spec.)
#[tokio::test]
async fn a_request_made_for_another_spec_never_rolls_out_this_one() {
    let client = operator().await;
    let ns = approval_namespace(&client, "collide").await;
    let ad = create_as("operator", &ns, manifest("gha:benign")).await;
    approve_and_roll_out(&client, &ns, &ad).await;
    let benign = spec_digest(&ad.spec);

    // The request the operator will look up for the next change, made beforehand for the
    // benign digest, with a validly signed approval and status Approved.
    let mut next = ad.clone();
    next.spec.template = serde_json::from_value(template("gha:evil")).unwrap();
    let evil = spec_digest(&next.spec);
    let name = approval_request_name("gha", 2, &evil);
    let theirs = Api::<ApprovalRequest>::namespaced(client.clone(), &ns)
        .get(&approval_request_name("gha", 1, &benign))
        .await
        .unwrap();
    let mut crafted = ApprovalRequest::new(&name, theirs.spec.clone());
    crafted.spec.deployment_ref.generation = 2;
    crafted.metadata.owner_references = theirs.metadata.owner_references.clone();
    let ops = Api::<ApprovalRequest>::namespaced(as_operator().await, &ns);
    let crafted = ops.create(&PostParams::default(), &crafted).await.unwrap();
    let mut roles = std::collections::BTreeSet::new();
    roles.insert(Role::ReleaseManager);
    let act = SignedAct {
        kind: ActKind::Approve,
        subject: Subject {
            username: "rosa-release".into(),
            groups: vec![],
            roles,
            machine: false,
        },
        uid: None,
        at: chrono::Utc::now(),
        comment: None,
        mfa: false,
        entra: None,
        via: None,
        signature: String::new(),
    }
    .sign(&stamp_key(&client).await, &crafted);
    let acts = serde_json::to_string(&[act]).unwrap();
    let annotations: BTreeMap<&str, &str> = [(ACTS, acts.as_str())].into();
    ops.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": annotations}})),
    )
    .await
    .unwrap();
    // A status writer says Approved (the operator puts it back: it is for no current spec).
    ops.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": {"phase": "Approved"}})),
    )
    .await
    .unwrap();
    change_image(&ns, "gha:evil").await;
    let ad = status_says(&client, &ns, "is not the request for this spec").await;
    assert_eq!(ad.status.unwrap().phase, Some(Phase::PendingApproval));
    assert_eq!(
        running(&client, &ns).await,
        Some(benign),
        "the benign spec keeps running"
    );
    let rollouts: Vec<String> = audit_entries(&client, &format!("{ns}/gha"))
        .await
        .into_iter()
        .filter(|e| e.draft.idempotency_key.starts_with("rollout/"))
        .map(|e| e.draft.metadata["digest"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(!rollouts.contains(&evil), "{rollouts:?}");
}

/// Hole 2: status is a report, not the source of truth. A status write that passes as the
/// operator's ServiceAccount, saying Approved with no approval given, rolls nothing out.
#[tokio::test]
async fn a_forged_approved_status_rolls_nothing_out() {
    let client = operator().await;
    let ns = approval_namespace(&client, "forgedstatus").await;
    let ad = create_as("operator", &ns, manifest("gha:1")).await;
    let apr = approval_request_name("gha", 1, &spec_digest(&ad.spec));
    phase(&client, &ns, "gha", Phase::PendingApproval).await;
    Api::<ApprovalRequest>::namespaced(as_operator().await, &ns)
        .patch_status(
            &apr,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"phase": "Approved"}})),
        )
        .await
        .unwrap();
    // The operator puts it back: an Approved its verified acts do not bear out does not stand.
    apr_phase(&client, &ns, &apr, ApprovalPhase::Pending).await;
    assert_eq!(running(&client, &ns).await, None, "nothing rolled out");
    // A real approval then releases it.
    accepted(&ns, &apr, "release-manager-1", "approve");
    phase(&client, &ns, "gha", Phase::Deployed).await;
}

/// Hole 3 (and audit: every change of what runs is an entry): going back to an earlier,
/// once-approved spec is a new change. It asks for approval again and its rollout is recorded
/// again, naming the approval it rests on.
#[tokio::test]
async fn going_back_to_an_earlier_spec_is_approved_and_recorded_again() {
    let client = operator().await;
    let ns = approval_namespace(&client, "goback").await;
    let a = create_as("operator", &ns, manifest("gha:a")).await;
    approve_and_roll_out(&client, &ns, &a).await;
    let b = change_image(&ns, "gha:b").await;
    approve_and_roll_out(&client, &ns, &b).await;

    let again = change_image(&ns, "gha:a").await;
    assert_eq!(spec_digest(&again.spec), spec_digest(&a.spec));
    assert_eq!(again.metadata.generation, Some(3));
    phase(&client, &ns, "gha", Phase::PendingApproval).await;
    assert_eq!(
        running(&client, &ns).await,
        Some(spec_digest(&b.spec)),
        "the running spec stays until the earlier one is approved again"
    );
    approve_and_roll_out(&client, &ns, &again).await;

    let rollouts: Vec<(String, Value)> = audit_entries(&client, &format!("{ns}/gha"))
        .await
        .into_iter()
        .filter(|e| e.draft.idempotency_key.starts_with("rollout/"))
        .map(|e| {
            (
                e.draft.metadata["digest"].as_str().unwrap().to_owned(),
                e.draft.metadata,
            )
        })
        .collect();
    let digests: Vec<&str> = rollouts.iter().map(|(d, _)| d.as_str()).collect();
    let (da, db) = (spec_digest(&a.spec), spec_digest(&b.spec));
    assert_eq!(digests, [&da, &db, &da], "one rollout entry per change");
    for (_, meta) in &rollouts {
        assert_eq!(
            meta["approval"]["approvers"][0]["username"], "rosa-release",
            "{meta}"
        );
    }
    assert_eq!(
        rollouts[2].1["approval"]["request"],
        approval_request_name("gha", 3, &da)
    );
}

/// Audit: an act is recorded once per act stored, never per webhook call. Two release managers
/// and a developer hammer one request concurrently (each `kubectl annotate` may be retried and
/// each is one webhook call or more): the log holds exactly one `approval_recorded` per stored
/// act, each naming its person, and one `approved` naming the whole quorum.
#[tokio::test]
async fn concurrent_approvals_are_recorded_once_per_stored_act() {
    let client = operator().await;
    let ns = namespace(&client, "concurrent").await;
    scoped_policy(
        &client,
        &ns,
        "two",
        json!({"action": "RequireApproval", "approval": {"roles": ["release_manager", "admin"], "minApprovals": 3}}),
    )
    .await;
    let ad = create_as("operator", &ns, manifest("gha:1")).await;
    let apr = approval_request_name("gha", 1, &spec_digest(&ad.spec));
    phase(&client, &ns, "gha", Phase::PendingApproval).await;
    let who = [
        "release-manager-1",
        "release-manager-2",
        "developer",
        "viewer",
    ];
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let (ns, apr, who) = (ns.clone(), apr.clone(), who[i % who.len()]);
            std::thread::spawn(move || crate::support::act(&ns, &apr, who, "approve"))
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    accepted(&ns, &apr, "admin", "approve");
    let approved = apr_phase(&client, &ns, &apr, ApprovalPhase::Approved).await;
    let stored: Vec<String> = approved
        .status
        .unwrap()
        .approvals
        .into_iter()
        .map(|a| a.username)
        .collect();
    let entries = audit_entries(&client, &format!("{ns}/{apr}")).await;
    let mut recorded: Vec<String> = entries
        .iter()
        .filter(|e| e.draft.status == "approval_recorded")
        .map(|e| e.draft.user_id.clone())
        .collect();
    let mut want = stored.clone();
    recorded.sort();
    want.sort();
    assert_eq!(recorded, want, "one entry per stored act");
    assert_eq!(want, ["alice-admin", "raj-release", "rosa-release"]);
    let quorum: Vec<_> = entries
        .iter()
        .filter(|e| e.draft.status == "approved")
        .collect();
    assert_eq!(quorum.len(), 1);
    assert_eq!(quorum[0].draft.user_id, "system:dvo-operator");
    let mut named: Vec<&str> = quorum[0].draft.metadata["approvers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["username"].as_str().unwrap())
        .collect();
    named.sort();
    assert_eq!(named, want);
    assert!(
        entries
            .iter()
            .all(|e| e.draft.platform.as_deref() == Some("langchain")),
        "every entry names the platform"
    );
    // Refusals are recorded by the webhook, at most once per admission request.
    let refusals: Vec<&str> = entries
        .iter()
        .filter(|e| e.draft.status == "denied")
        .filter_map(|e| e.draft.request_id.as_deref())
        .collect();
    let unique: std::collections::BTreeSet<&&str> = refusals.iter().collect();
    assert_eq!(unique.len(), refusals.len(), "{refusals:?}");
    assert!(
        entries
            .iter()
            .any(|e| e.draft.status == "denied" && e.draft.user_id == "dev-dana"),
        "the developer's refusals are recorded"
    );
}

/// Audit: a rollout written ahead of its write is always followed by its outcome. v1 is allowed
/// but the API server refuses the Deployment (failed), the spec moves to v2 before v1 ever
/// reaches the workload (superseded), then writes are allowed again and v2 is written (applied).
/// Nothing in the log says v1 ran.
#[tokio::test]
async fn every_rollout_intent_is_followed_by_its_outcome() {
    let client = operator().await;
    let ns = namespace(&client, "outcome").await;
    crate::support::hold_deployments(&client, &ns).await;
    let v1 = create_as("operator", &ns, manifest("gha:1")).await;
    let resource = format!("{ns}/gha");
    let facts = || async {
        audit_entries(&client, &resource)
            .await
            .into_iter()
            .filter(|e| e.draft.idempotency_key.starts_with("rollout"))
            .map(|e| {
                let key = e.draft.idempotency_key;
                let kind = key.split('/').next().unwrap_or("").to_owned();
                (
                    kind,
                    e.draft.metadata["digest"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect::<Vec<_>>()
    };
    let (d1, kind) = (spec_digest(&v1.spec), |k: &str| k.to_owned());
    let deadline = std::time::Instant::now() + WAIT;
    while !facts()
        .await
        .contains(&(kind("rollout-write_failed"), d1.clone()))
    {
        assert!(std::time::Instant::now() < deadline, "{:?}", facts().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let v2 = change_image(&ns, "gha:2").await;
    let d2 = spec_digest(&v2.spec);
    let deadline = std::time::Instant::now() + WAIT;
    while !facts()
        .await
        .contains(&(kind("rollout-write_failed"), d2.clone()))
    {
        assert!(std::time::Instant::now() < deadline, "{:?}", facts().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    crate::support::release_deployments(&client, &ns).await;
    phase(&client, &ns, "gha", Phase::Deployed).await;
    assert_eq!(running(&client, &ns).await, Some(d2.clone()));
    let want = [
        ("rollout", &d1),
        ("rollout-write_failed", &d1),
        ("rollout-superseded", &d1),
        ("rollout", &d2),
        ("rollout-write_failed", &d2),
        ("rollout-applied", &d2),
    ]
    .map(|(k, d)| (kind(k), d.clone()));
    assert_eq!(facts().await, want);
}

/// Audit: an act stored while the operator is down is recorded once it is back, exactly once,
/// before anything it causes (the rollout entry comes after it).
#[tokio::test]
async fn an_act_stored_while_the_operator_is_down_is_recorded_once_when_it_is_back() {
    let client = operator().await;
    let ns = approval_namespace(&client, "downact").await;
    let ad = create_as("operator", &ns, manifest("gha:1")).await;
    let apr = approval_request_name("gha", 1, &spec_digest(&ad.spec));
    apr_phase(&client, &ns, &apr, ApprovalPhase::Pending).await;
    let resource = format!("{ns}/{apr}");
    let recorded = || async {
        audit_entries(&client, &resource)
            .await
            .into_iter()
            .filter(|e| e.draft.status == "approval_recorded")
            .count()
    };
    crate::support::while_operator_stopped(async {
        accepted(&ns, &apr, "release-manager-1", "approve");
        assert_eq!(
            recorded().await,
            0,
            "nobody recorded it yet: the webhook does not"
        );
    })
    .await;
    phase(&client, &ns, "gha", Phase::Deployed).await;
    assert_eq!(recorded().await, 1);
    let act_seq = audit_entries(&client, &resource)
        .await
        .into_iter()
        .find(|e| e.draft.status == "approval_recorded")
        .map(|e| e.seq)
        .unwrap();
    let rollout_seq = audit_entries(&client, &format!("{ns}/gha"))
        .await
        .into_iter()
        .find(|e| e.draft.idempotency_key.starts_with("rollout/"))
        .map(|e| e.seq)
        .unwrap();
    assert!(
        act_seq < rollout_seq,
        "the act is recorded before the rollout it released"
    );
}
