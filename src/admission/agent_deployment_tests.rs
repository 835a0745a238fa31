use serde_json::{Value, json};

use super::*;
use crate::admission::fixtures::{KEY, OPERATOR, mapping, who};

fn ad(env: &str, image: &str, annotations: Value) -> AgentDeployment {
    serde_json::from_value(json!({
        "apiVersion": "dvo.caat.io/v1alpha1", "kind": "AgentDeployment",
        "metadata": {"name": "gha", "namespace": "team", "annotations": annotations},
        "spec": {"agent": "GHA", "platform": "langchain", "environment": env,
            "template": {"spec": {"containers": [{"name": "a", "image": image}]}}},
    }))
    .unwrap()
}

/// `ad` with another image: a new spec.
fn with_image(ad: &AgentDeployment, image: &str) -> AgentDeployment {
    let mut changed = ad.clone();
    let template = changed.spec.template.as_mut().unwrap();
    template.spec.as_mut().unwrap().containers[0].image = Some(image.into());
    changed
}

fn now() -> DateTime<Utc> {
    "2026-11-22T03:00:00Z".parse().unwrap()
}

/// Runs a review and applies its patch: (refusal, object after the patch, audit event).
fn run(
    user: &str,
    old: Option<&AgentDeployment>,
    new: &AgentDeployment,
) -> (Option<String>, AgentDeployment, Option<EventType>) {
    let mapping = mapping();
    let env = Env {
        mapping: &mapping,
        key: KEY,
        operator: OPERATOR,
    };
    let v = review(&env, &who(user), old, new, now());
    let mut obj = serde_json::to_value(new).unwrap();
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(v.patch)).unwrap();
    json_patch::patch(&mut obj, &patch).unwrap();
    (
        v.refusal,
        serde_json::from_value(obj).unwrap(),
        v.audit.map(|d| d.event_type),
    )
}

fn requester(ad: &AgentDeployment) -> Option<String> {
    let text = annotation(Some(ad), stamp::ANNOTATION)?;
    let stamp = Stamp::parse(&text).unwrap();
    let id = stamp
        .verify(KEY, "team", "gha", &spec_digest(&ad.spec))
        .unwrap();
    Some(id.username.clone())
}

fn break_glass(ad: &AgentDeployment) -> Option<String> {
    let text = annotation(Some(ad), BREAK_GLASS_STAMP)?;
    let bg = BreakGlass::verified(&text, KEY, "team", "gha", &spec_digest(&ad.spec)).unwrap();
    Some(format!("{}: {}", bg.identity.username, bg.reason))
}

#[test]
fn new_specs_are_stamped_with_the_authenticated_requester_when_permitted() {
    let table = [
        ("dana", "development", None),
        ("dana", "production", None), // not refused: production goes to approval
        (
            "dana",
            "staging",
            Some("dev-dana (roles: developer) lacks permission deploy_staging"),
        ),
        (
            "vera",
            "development",
            Some("vera-viewer (roles: viewer) lacks permission deploy_development"),
        ),
        ("rosa", "staging", None),
        ("operator", "staging", None), // the operator's own writes pass untouched
    ];
    for (user, env, refused) in table {
        let (refusal, after, event) = run(user, None, &ad(env, "a:1", json!(null)));
        match refused {
            None => {
                assert_eq!(refusal, None, "{user} {env}");
                if user != "operator" {
                    assert_eq!(requester(&after), Some(who(user).username), "{user} {env}");
                }
            }
            Some(want) => {
                let got = refusal.unwrap_or_else(|| panic!("{user} {env} allowed"));
                assert!(got.contains(want), "{got}");
                assert!(got.contains("which roles"), "names who has it: {got}");
                assert_eq!(event, Some(EventType::PermissionDenied));
            }
        }
    }
}

#[test]
fn stamps_are_written_by_the_webhook_only() {
    let (_, stamped, _) = run("dana", None, &ad("development", "a:1", json!(null)));
    let stamp = annotation(Some(&stamped), stamp::ANNOTATION).unwrap();
    // Bringing a stamp of one's own, even a valid-looking copy, is refused on create.
    let forged = ad(
        "development",
        "a:1",
        json!({(stamp::ANNOTATION): stamp.clone()}),
    );
    let (refusal, _, event) = run("dana", None, &forged);
    assert_eq!(
        refusal.as_deref(),
        Some(
            "the annotation dvo.caat.io/requester is written by the dvo admission webhook only; dev-dana may not set or change it"
        )
    );
    assert_eq!(event, Some(EventType::PermissionDenied));
    // Changing or removing it on update is refused; a change elsewhere keeps it.
    let mut tampered = stamped.clone();
    tampered.metadata.annotations.as_mut().unwrap().insert(
        stamp::ANNOTATION.into(),
        stamp.replace("dev-dana", "rosa-release"),
    );
    assert!(run("dana", Some(&stamped), &tampered).0.is_some());
    let mut removed = stamped.clone();
    removed.metadata.annotations = None;
    assert!(run("dana", Some(&stamped), &removed).0.is_some());
    let mut labelled = stamped.clone();
    labelled.metadata.labels = Some([("team".to_owned(), "x".to_owned())].into());
    let (refusal, after, _) = run("vera", Some(&stamped), &labelled);
    assert_eq!(refusal, None);
    assert_eq!(requester(&after).as_deref(), Some("dev-dana"), "untouched");
    // A new spec gets the new requester's stamp.
    let changed = with_image(&stamped, "a:2");
    let (refusal, after, _) = run("rosa", Some(&stamped), &changed);
    assert_eq!(refusal, None);
    assert_eq!(requester(&after).as_deref(), Some("rosa-release"));
}

#[test]
fn break_glass_is_for_holders_of_bypass_approval_and_one_spec() {
    let (_, base, _) = run("dana", None, &ad("production", "a:1", json!(null)));
    let with = |obj: &AgentDeployment, reason: &str| {
        let mut o = obj.clone();
        o.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(BREAK_GLASS.into(), reason.into());
        o
    };
    let (refusal, _, event) = run("dana", Some(&base), &with(&base, "INC-1 outage"));
    assert_eq!(
        refusal.as_deref(),
        Some(
            "break-glass on AgentDeployment team/gha refused: dev-dana (roles: developer) lacks permission bypass_approval, which roles admin have; remove the annotation dvo.caat.io/break-glass"
        )
    );
    assert_eq!(event, Some(EventType::PermissionDenied));
    let (refusal, _, _) = run("rosa", Some(&base), &with(&base, "INC-1 outage"));
    assert!(
        refusal
            .unwrap()
            .contains("rosa-release (roles: release_manager) lacks")
    );
    let (refusal, _, _) = run("alice", Some(&base), &with(&base, "  "));
    assert!(refusal.unwrap().contains("needs a reason"));

    let (refusal, glassed, event) = run("alice", Some(&base), &with(&base, "INC-1 outage"));
    assert_eq!(refusal, None);
    assert_eq!(event, Some(EventType::PermissionGranted));
    assert_eq!(
        break_glass(&glassed).as_deref(),
        Some("alice-admin: INC-1 outage")
    );
    assert_eq!(
        requester(&glassed).as_deref(),
        Some("dev-dana"),
        "requester kept"
    );

    // Unrelated changes keep it; a new spec from someone without the permission is refused
    // while the annotation asks for break-glass again; removing it removes the stamp.
    let mut labelled = glassed.clone();
    labelled.metadata.labels = Some([("x".to_owned(), "y".to_owned())].into());
    let (refusal, after, _) = run("dana", Some(&glassed), &labelled);
    assert_eq!(refusal, None);
    assert!(break_glass(&after).is_some());
    let mut changed = glassed.clone();
    changed.spec.replicas = Some(3);
    assert!(
        run("dana", Some(&glassed), &changed)
            .0
            .unwrap()
            .contains("lacks permission bypass_approval")
    );
    let mut dropped = changed.clone();
    dropped
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .remove(BREAK_GLASS);
    let (refusal, after, event) = run("dana", Some(&glassed), &dropped);
    assert_eq!(refusal, None);
    assert_eq!(event, None);
    assert_eq!(annotation(Some(&after), BREAK_GLASS_STAMP), None);
    assert_eq!(requester(&after).as_deref(), Some("dev-dana"));
}

#[test]
fn the_final_check_wants_a_stamp_for_exactly_the_stored_spec() {
    let mapping = mapping();
    let env = Env {
        mapping: &mapping,
        key: KEY,
        operator: OPERATOR,
    };
    let (_, stamped, _) = run("dana", None, &ad("development", "a:1", json!(null)));
    assert_eq!(
        review_final(&env, &who("dana"), None, &stamped),
        Verdict::allow()
    );
    // Another mutating webhook changed the image after ours stamped it.
    let changed = with_image(&stamped, "evil:1");
    let v = review_final(&env, &who("dana"), None, &changed);
    assert!(
        v.refusal
            .unwrap()
            .contains("the requester stamp is for spec"),
        "refused"
    );
    let bare = ad("development", "a:1", json!(null));
    let v = review_final(&env, &who("dana"), None, &bare);
    assert!(v.refusal.unwrap().contains("it has no requester stamp"));
    // Unchanged specs (metadata updates) and the operator's own writes pass.
    assert_eq!(
        review_final(&env, &who("vera"), Some(&bare), &bare),
        Verdict::allow()
    );
    assert_eq!(
        review_final(&env, &who("operator"), None, &bare),
        Verdict::allow()
    );
}

#[test]
fn a_break_glass_that_would_lift_nothing_is_refused() {
    let (_, base, _) = run("dana", None, &ad("production", "a:1", json!(null)));
    // The operator's decision for exactly this spec, as its status says.
    let decided = |violations: Value, approvals: Value| {
        let mut o = base.clone();
        o.metadata.generation = Some(1);
        o.status = Some(
            serde_json::from_value(json!({
                "observedGeneration": 1, "specDigest": spec_digest(&o.spec),
                "decision": {"outcome": "Deny", "evaluatedAt": "2026-11-22T03:00:00Z",
                    "violations": violations, "approvalRequirements": approvals},
            }))
            .unwrap(),
        );
        o
    };
    let glassed = |old: &AgentDeployment| {
        let mut o = old.clone();
        o.metadata
            .annotations
            .get_or_insert_default()
            .insert(BREAK_GLASS.into(), "INC-7".into());
        o
    };
    let capability = json!([{"source": "capability/deploy-to-production", "kind": "CapabilityUnavailable", "message": "off", "breakGlassLifts": false}]);
    let window = json!([{"source": "policy/hours", "kind": "OutsideWindow", "message": "closed", "breakGlassLifts": true}]);
    let approval = json!([{"source": "policy/p", "roles": ["release_manager"], "minApprovals": 1, "expiry": "24h", "allowSelfApproval": false, "breakGlassLifts": true}]);
    // (violations, approval requirements, refusal)
    let table = [
        (
            capability.clone(),
            json!([]),
            Some(
                "it would lift nothing; what holds it back is not lifted by break-glass: capability/deploy-to-production (CapabilityUnavailable)",
            ),
        ),
        (
            json!([]),
            json!([]),
            Some("it would lift nothing; nothing holds it back"),
        ),
        (window, json!([]), None),
        (capability, approval, None),
    ];
    for (violations, approvals, want) in table {
        let old = decided(violations.clone(), approvals.clone());
        let (refusal, _, _) = run("alice", Some(&old), &glassed(&old));
        match want {
            None => assert_eq!(refusal, None, "{violations} {approvals}"),
            Some(w) => assert!(
                refusal.as_deref().is_some_and(|r| r.contains(w)),
                "{violations}: {refusal:?}"
            ),
        }
    }
    // A status of another spec says nothing about this one: not refused here.
    let mut stale = decided(capability_only(), json!([]));
    stale.status.as_mut().unwrap().spec_digest = Some("sha256:other".into());
    assert_eq!(run("alice", Some(&stale), &glassed(&stale)).0, None);
}

fn capability_only() -> Value {
    json!([{"source": "capability/x", "kind": "CapabilityUnavailable", "message": "off"}])
}
