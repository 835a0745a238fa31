use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;
use crate::admission::fixtures::{KEY, OPERATOR, mapping, who};

fn now() -> DateTime<Utc> {
    "2026-11-22T03:00:00Z".parse().unwrap()
}

fn apr(require_mfa: bool, phase: &str) -> ApprovalRequest {
    serde_json::from_value(json!({
        "apiVersion": "dvo.caat.io/v1alpha1", "kind": "ApprovalRequest",
        "metadata": {"name": "gha-1", "namespace": "team", "uid": "apr-uid"},
        "spec": {"deploymentRef": {"name": "gha", "uid": "ad-uid"},
            "specDigest": format!("sha256:{}", "a".repeat(64)),
            "requester": {"username": "dev-dana"}, "environment": "production",
            "agent": "GHA", "platform": "langchain",
            "requirements": [{"source": "policy/prod", "roles": ["release_manager", "admin"],
                "minApprovals": 2, "requireMfa": require_mfa}],
            "expiresAt": "2026-11-23T00:00:00Z"},
        "status": {"phase": phase},
    }))
    .unwrap()
}

type Outcome = (Option<String>, ApprovalRequest, Option<(EventType, String)>);

/// `user` sets `annotations` on `old` (token: the webhook's verification of approve-token).
fn act(
    user: &str,
    old: &ApprovalRequest,
    annotations: Value,
    token: Option<Result<EntraIdentity, String>>,
) -> Outcome {
    act_signed_in(user, &SignIn::default(), old, annotations, token)
}

/// As [`act`], with what the API server vouched for about the user's sign-in.
fn act_signed_in(
    user: &str,
    sign_in: &SignIn,
    old: &ApprovalRequest,
    annotations: Value,
    token: Option<Result<EntraIdentity, String>>,
) -> Outcome {
    let mapping = mapping();
    let env = Env {
        mapping: &mapping,
        key: KEY,
        operator: OPERATOR,
    };
    let mut new = old.clone();
    let map = new.metadata.annotations.get_or_insert_default();
    for (k, v) in annotations.as_object().unwrap() {
        map.insert(k.clone(), v.as_str().unwrap().to_owned());
    }
    let v = review_update(&env, &who(user), sign_in, old, &new, token, now());
    let mut obj = serde_json::to_value(&new).unwrap();
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(v.patch)).unwrap();
    json_patch::patch(&mut obj, &patch).unwrap();
    (
        v.refusal,
        serde_json::from_value(obj).unwrap(),
        v.audit.map(|d| (d.event_type, d.status)),
    )
}

fn acts(apr: &ApprovalRequest) -> Vec<String> {
    signed::recorded(apr, KEY)
        .unwrap()
        .into_iter()
        .map(|(a, ok)| {
            assert!(ok, "every recorded act verifies");
            format!("{:?} {} mfa={}", a.kind, a.subject.username, a.mfa)
        })
        .collect()
}

fn token(user: &str, mfa: bool) -> Option<Result<EntraIdentity, String>> {
    Some(Ok(EntraIdentity {
        oid: "oid-1".into(),
        tid: "tid-1".into(),
        username: user.into(),
        groups: vec![],
        app_roles: Default::default(),
        mfa,
        application: false,
    }))
}

#[test]
fn two_release_managers_approve_and_each_act_is_signed_not_audited_by_the_webhook() {
    let (refusal, once, audit) = act(
        "rosa",
        &apr(false, "Pending"),
        json!({(APPROVE): "ok"}),
        None,
    );
    assert_eq!(refusal, None);
    assert_eq!(
        audit, None,
        "an accepted act is recorded by the operator once it is stored, not per webhook call"
    );
    assert_eq!(
        annotation(&once, APPROVE),
        None,
        "the request annotation is consumed"
    );
    assert_eq!(acts(&once), ["Approve rosa-release mfa=false"]);
    let (refusal, twice, _) = act("raj", &once, json!({(APPROVE): ""}), None);
    assert_eq!(refusal, None);
    assert_eq!(
        acts(&twice),
        [
            "Approve rosa-release mfa=false",
            "Approve raj-release mfa=false"
        ]
    );
    // The acts decide the request even before the operator writes its status: nobody is needed
    // any more, and a late rejection or cancellation is refused too.
    for (user, what) in [("alice", APPROVE), ("rosa", REJECT), ("alice", CANCEL)] {
        let (refusal, _, _) = act(user, &twice, json!({(what): "late"}), None);
        let refusal = refusal.unwrap_or_else(|| panic!("{user} {what} accepted"));
        assert!(
            refusal.contains("is already decided by the acts recorded on it (approved by raj-release, rosa-release)"),
            "{refusal}"
        );
    }
}

#[test]
fn refusals_name_the_reason() {
    let pending = apr(false, "Pending");
    let (_, approved_once, _) = act("rosa", &pending, json!({(APPROVE): ""}), None);
    let table: [(&str, &ApprovalRequest, Value, &str); 12] = [
        (
            "dana",
            &pending,
            json!({(APPROVE): ""}),
            "dev-dana requested this deployment and cannot approve it (policy/prod)",
        ),
        (
            "vera",
            &pending,
            json!({(APPROVE): ""}),
            "vera-viewer (roles: viewer) holds none of the roles release_manager, admin that policy/prod needs",
        ),
        (
            "ci",
            &pending,
            json!({(APPROVE): ""}),
            "system:serviceaccount:ci:deployer is a machine (a service account, an application or an API key); machines never count as human approvers",
        ),
        (
            "rosa",
            &approved_once,
            json!({(APPROVE): "again"}),
            "rosa-release already approved ApprovalRequest team/gha-1; each person counts once",
        ),
        (
            "rosa",
            &apr(false, "Rejected"),
            json!({(APPROVE): ""}),
            "ApprovalRequest team/gha-1 is Rejected; it takes no more approvals",
        ),
        (
            "rosa",
            &apr(false, "Expired"),
            json!({(APPROVE): ""}),
            "is Expired",
        ),
        (
            "rosa",
            &apr(false, "Superseded"),
            json!({(APPROVE): ""}),
            "is Superseded",
        ),
        (
            "vera",
            &pending,
            json!({(CANCEL): "no"}),
            "cancellation of ApprovalRequest team/gha-1 refused: vera-viewer is neither the requester nor an admin",
        ),
        (
            "rosa",
            &pending,
            json!({(REJECT): " "}),
            "a rejection needs a reason",
        ),
        (
            "dana",
            &pending,
            json!({(REJECT): "mine"}),
            "rejection of ApprovalRequest team/gha-1 refused: dev-dana requested this deployment",
        ),
        (
            "rosa",
            &pending,
            json!({(ACTS): "[]"}),
            "the annotation dvo.caat.io/acts is written by the dvo admission webhook only",
        ),
        (
            "rosa",
            &pending,
            json!({(APPROVE): "", (REJECT): "x"}),
            "one act at a time",
        ),
    ];
    for (user, old, annotations, want) in table {
        let (refusal, _, audit) = act(user, old, annotations.clone(), None);
        let got = refusal.unwrap_or_else(|| panic!("{user} {annotations} was allowed"));
        assert!(got.contains(want), "{user} {annotations}: {got}");
        assert_eq!(
            audit.unwrap(),
            (EventType::PermissionDenied, "denied".into())
        );
    }
    let mut expired = pending.clone();
    expired.spec.expires_at = now();
    let (refusal, _, _) = act("rosa", &expired, json!({(APPROVE): ""}), None);
    assert!(
        refusal
            .unwrap()
            .contains("expired at 2026-11-22T03:00:00+00:00")
    );
}

#[test]
fn the_requester_or_an_admin_cancels_and_an_eligible_person_rejects() {
    let pending = apr(false, "Pending");
    for user in ["dana", "alice"] {
        let (refusal, after, audit) = act(user, &pending, json!({(CANCEL): "not needed"}), None);
        assert_eq!(refusal, None, "{user}");
        assert_eq!(acts(&after).len(), 1);
        assert_eq!(audit, None, "recorded by the operator once stored");
    }
    let (refusal, after, _) = act("rosa", &pending, json!({(REJECT): "not this week"}), None);
    assert_eq!(refusal, None);
    assert_eq!(acts(&after), ["Reject rosa-release mfa=false"]);
}

#[test]
fn forged_acts_are_dropped_and_never_count() {
    let (_, once, _) = act("rosa", &apr(false, "Pending"), json!({(APPROVE): ""}), None);
    let mut list: Vec<SignedAct> = serde_json::from_str(annotation(&once, ACTS).unwrap()).unwrap();
    list[0].subject.username = "raj-release".into();
    let mut forged = once.clone();
    forged
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(ACTS.into(), serde_json::to_string(&list).unwrap());
    // (Written with the webhook switched off, say.) Raj can still approve, and the forged entry goes.
    let (refusal, after, _) = act("raj", &forged, json!({(APPROVE): ""}), None);
    assert_eq!(refusal, None);
    assert_eq!(acts(&after), ["Approve raj-release mfa=false"]);
}

#[test]
fn mfa_requirements_take_only_verified_tokens_of_the_same_person() {
    let pending = apr(true, "Pending");
    let (refusal, _, _) = act("rosa", &pending, json!({(APPROVE): "ok"}), None);
    assert!(
        refusal
            .unwrap()
            .contains("rosa-release did not prove multi-factor authentication, which policy/prod requires: sign in to the cluster with MFA, or approve with dvo.caat.io/approve-token=<Entra ID access token>")
    );
    let (refusal, _, _) = act(
        "rosa",
        &pending,
        json!({(APPROVE_TOKEN): "t"}),
        token("rosa-release", false),
    );
    assert!(refusal.unwrap().contains("did not prove multi-factor"));
    let (refusal, _, audit) = act(
        "rosa",
        &pending,
        json!({(APPROVE_TOKEN): "t"}),
        token("raj-release", true),
    );
    assert_eq!(
        refusal.as_deref(),
        Some(
            "the approval token belongs to raj-release, not to rosa-release: approve with your own token"
        )
    );
    assert_eq!(audit.unwrap().0, EventType::AuthFailure);
    let (refusal, _, audit) = act(
        "rosa",
        &pending,
        json!({(APPROVE_TOKEN): "t"}),
        Some(Err("the token has expired".into())),
    );
    assert_eq!(
        refusal.as_deref(),
        Some("the approval token was refused: the token has expired")
    );
    assert_eq!(audit.unwrap().0, EventType::AuthFailure);

    let (refusal, after, _) = act(
        "rosa",
        &pending,
        json!({(APPROVE_TOKEN): "secret.jwt.value"}),
        token("Rosa-Release", true),
    );
    assert_eq!(refusal, None);
    assert_eq!(acts(&after), ["Approve rosa-release mfa=true"]);
    assert!(
        !annotation(&after, ACTS)
            .unwrap()
            .contains("secret.jwt.value"),
        "the token itself is never stored"
    );
    assert_eq!(annotation(&after, APPROVE_TOKEN), None);
}

#[test]
fn an_mfa_sign_in_the_api_server_vouched_for_satisfies_require_mfa() {
    let pending = apr(true, "Pending");
    let extra = |amr: &[&str], tid: &[&str]| {
        BTreeMap::from([
            (
                crate::identity::entra::EXTRA_AMR.to_owned(),
                amr.iter().map(|s| s.to_string()).collect(),
            ),
            (
                crate::identity::entra::EXTRA_TID.to_owned(),
                tid.iter().map(|s| s.to_string()).collect(),
            ),
        ])
    };
    let trusted = Some(&["t1".to_owned(), "t2".to_owned()][..]);
    let password_only = SignIn::from_extra(&extra(&["pwd"], &["t1"]), Some("oid-rosa"), trusted);
    let (refusal, _, _) = act_signed_in(
        "rosa",
        &password_only,
        &pending,
        json!({(APPROVE): "ok"}),
        None,
    );
    assert!(refusal.unwrap().contains("did not prove multi-factor"));
    let with_mfa = SignIn::from_extra(&extra(&["pwd", "mfa"], &["t1"]), Some("oid-rosa"), trusted);
    assert_eq!(with_mfa.entra.as_deref(), Some("t1/oid-rosa"));
    let (refusal, after, _) =
        act_signed_in("rosa", &with_mfa, &pending, json!({(APPROVE): "ok"}), None);
    assert_eq!(refusal, None);
    assert_eq!(acts(&after), ["Approve rosa-release mfa=true"]);
    let recorded = signed::recorded(&after, KEY).unwrap();
    assert_eq!(recorded[0].0.entra.as_deref(), Some("t1/oid-rosa"));
    assert!(recorded[0].1, "the act with its sign-in facts verifies");
    // Two tenants, or none, name no Entra identity; the UID alone is not one either.
    assert_eq!(
        SignIn::from_extra(&extra(&["mfa"], &["t1", "t2"]), Some("o"), trusted),
        SignIn::default(),
        "two tenants are none"
    );
    assert_eq!(
        SignIn::from_extra(&extra(&["mfa"], &["t3"]), Some("o"), trusted),
        SignIn::default(),
        "a tenant not trusted"
    );
    assert_eq!(
        SignIn::from_extra(&extra(&["mfa"], &["t1"]), Some("o"), None),
        SignIn::default(),
        "sign-ins not trusted at all"
    );
    assert_eq!(
        SignIn::from_extra(&extra(&["mfa"], &["t1", "t2"]), Some("o"), trusted).entra,
        None
    );
    assert_eq!(
        SignIn::from_extra(&extra(&["mfa"], &["t1"]), None, trusted).entra,
        None
    );
    assert_eq!(
        SignIn::from_extra(&BTreeMap::new(), Some("o"), trusted),
        SignIn::default()
    );
}

#[test]
fn only_the_operator_creates_requests_and_its_writes_pass() {
    let mapping = mapping();
    let env = Env {
        mapping: &mapping,
        key: KEY,
        operator: OPERATOR,
    };
    let pending = apr(false, "Pending");
    assert_eq!(
        review_create(&env, &who("operator"), &pending),
        Verdict::allow()
    );
    let v = review_create(&env, &who("alice"), &pending);
    assert_eq!(
        v.refusal.as_deref(),
        Some(
            "ApprovalRequests are created by the dvo operator only; alice-admin may not create team/gha-1"
        )
    );
    let mut touched = pending.clone();
    touched.metadata.finalizers = Some(vec!["x".into()]);
    let v = review_update(
        &env,
        &who("operator"),
        &SignIn::default(),
        &pending,
        &touched,
        None,
        now(),
    );
    assert_eq!(v, Verdict::allow());
    // A metadata change by anyone else (labels, owner references, finalizers) passes untouched.
    let v = review_update(
        &env,
        &who("vera"),
        &SignIn::default(),
        &pending,
        &touched,
        None,
        now(),
    );
    assert_eq!(v, Verdict::allow());
}

#[test]
fn the_same_reason_for_several_requirements_is_said_once() {
    let reasons = [
        ("policy/a", "omar requested this (policy/a)".to_owned()),
        (
            "permission/b",
            "omar requested this (permission/b)".to_owned(),
        ),
        (
            "policy/c",
            "omar holds none of the roles that policy/c needs".to_owned(),
        ),
    ];
    assert_eq!(
        merged(&reasons),
        "omar requested this (policy/a, permission/b); omar holds none of the roles that policy/c needs"
    );
}

#[test]
fn one_person_under_two_names_counts_once_and_never_approves_their_own_request() {
    let mapping = mapping();
    let env = Env {
        mapping: &mapping,
        key: KEY,
        operator: OPERATOR,
    };
    let mut pending = apr(false, "Pending");
    pending.spec.requester = Some(crate::crd::approval_request::Requester {
        username: "dana@contoso.com".into(),
        uid: Some("oid-dana".into()),
        groups: vec![],
    });
    // The same Entra ID person as the API server names them (upn) and as a token does.
    let actor = |name: &str, oid: &str| Actor {
        subject: mapping.subject(&who(name), "production"),
        uid: Some(oid.into()),
        mfa: false,
        entra: Some(format!("t1/{oid}")),
        via: None,
    };
    let mut rosa_upn = actor("rosa", "oid-rosa");
    rosa_upn.subject.username = "rosa@contoso.com".into();
    let first = super::act(&env, &rosa_upn, &pending, ActKind::Approve, None, now()).unwrap();
    let mut approved = pending.clone();
    approved
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(ACTS.into(), acts_with(&env, &pending, first));
    let mut rosa_token = actor("rosa", "oid-rosa");
    rosa_token.subject.username = "rosa.h@contoso.com".into();
    rosa_token.via = Some(Via::Http);
    let again =
        super::act(&env, &rosa_token, &approved, ActKind::Approve, None, now()).unwrap_err();
    assert!(
        again.conflict && again.message.contains("already approved"),
        "{again:?}"
    );
    let raj = actor("raj", "oid-raj");
    assert!(super::act(&env, &raj, &approved, ActKind::Approve, None, now()).is_ok());

    // The requester under another name (a token's preferred_username) is still the requester:
    // no approval of their own, but they may cancel.
    let mut dana = actor("rosa", "oid-dana");
    dana.subject.username = "dana.h@contoso.com".into();
    let own = super::act(&env, &dana, &pending, ActKind::Approve, None, now()).unwrap_err();
    assert!(
        own.message
            .contains("dana@contoso.com requested this deployment and cannot approve it"),
        "{own:?}"
    );
    assert!(
        super::act(
            &env,
            &dana,
            &pending,
            ActKind::Cancel,
            Some("no longer needed"),
            now()
        )
        .is_ok()
    );
}
