use super::*;
use ApprovalPhase::*;
use Role::*;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

const EXPIRES: &str = "2026-11-24T12:00:00Z";

fn spec(reqs: &[(&str, &[Role], i32, bool)]) -> ApprovalRequestSpec {
    serde_json::from_value(serde_json::json!({
        "deploymentRef": {"name": "gha", "uid": "u1"},
        "specDigest": format!("sha256:{}", "a".repeat(64)),
        "requester": {"username": "omar"},
        "environment": "production", "agent": "GHA", "platform": "langchain",
        "requirements": reqs.iter().map(|(s, roles, n, selfok)| serde_json::json!({
            "source": s, "roles": roles, "minApprovals": n, "allowSelfApproval": selfok,
        })).collect::<Vec<_>>(),
        "expiresAt": EXPIRES,
    }))
    .unwrap()
}

fn act(user: &str, roles: &[Role], when: &str) -> Act {
    Act {
        subject: Subject {
            username: user.into(),
            groups: vec![],
            roles: roles.iter().copied().collect(),
            machine: user.starts_with("system:serviceaccount:") || roles.contains(&ServiceAccount),
        },
        at: at(when),
        mfa: false,
        entra: None,
    }
}

const BEFORE: &str = "2026-11-24T09:00:00Z";

fn run(spec: &ApprovalRequestSpec, approvals: &[Act], now: &str) -> Evaluation {
    evaluate(&Input {
        spec,
        current: Some(Pending),
        approvals,
        rejection: None,
        cancellation: None,
        superseded: false,
        now: at(now),
    })
}

#[test]
fn quorum_of_distinct_eligible_people() {
    let two_rms = spec(&[("policy/prod", &[ReleaseManager, Admin], 2, false)]);
    // (approvals, expected phase)
    let table: Vec<(Vec<Act>, ApprovalPhase)> = vec![
        (vec![], Pending),
        (vec![act("rosa", &[ReleaseManager], BEFORE)], Pending),
        (
            vec![
                act("rosa", &[ReleaseManager], BEFORE),
                act("raj", &[ReleaseManager], BEFORE),
            ],
            Approved,
        ),
        (
            vec![
                act("rosa", &[ReleaseManager], BEFORE),
                act("alice", &[Admin], BEFORE),
            ],
            Approved,
        ),
        // The same person twice counts once.
        (
            vec![
                act("rosa", &[ReleaseManager], BEFORE),
                act("rosa", &[ReleaseManager], BEFORE),
            ],
            Pending,
        ),
        // Wrong role.
        (
            vec![
                act("rosa", &[ReleaseManager], BEFORE),
                act("dana", &[Developer, Operator], BEFORE),
            ],
            Pending,
        ),
        // Service accounts never count, whatever roles they hold.
        (
            vec![
                act("rosa", &[ReleaseManager], BEFORE),
                act("system:serviceaccount:ci:deployer", &[Admin], BEFORE),
            ],
            Pending,
        ),
        (
            vec![
                act("rosa", &[ReleaseManager], BEFORE),
                act("bot", &[Admin, ServiceAccount], BEFORE),
            ],
            Pending,
        ),
        // The requester cannot approve their own deployment.
        (
            vec![
                act("rosa", &[ReleaseManager], BEFORE),
                act("omar", &[ReleaseManager], BEFORE),
            ],
            Pending,
        ),
        // After expiry an approval does not count.
        (
            vec![
                act("rosa", &[ReleaseManager], BEFORE),
                act("raj", &[ReleaseManager], "2026-11-24T12:00:00Z"),
            ],
            Pending,
        ),
    ];
    for (i, (approvals, want)) in table.into_iter().enumerate() {
        assert_eq!(
            run(&two_rms, &approvals, "2026-11-24T10:00:00Z").phase,
            want,
            "case {i}"
        );
    }
}

#[test]
fn reasons_for_approvals_that_do_not_count() {
    let s = spec(&[("policy/prod", &[ReleaseManager], 1, false)]);
    let e = run(
        &s,
        &[
            act("omar", &[ReleaseManager], BEFORE),
            act("dana", &[Developer], BEFORE),
            act(
                "system:serviceaccount:ci:deployer",
                &[ReleaseManager],
                BEFORE,
            ),
            act("rosa", &[ReleaseManager], BEFORE),
            act("rosa", &[ReleaseManager], BEFORE),
        ],
        "2026-11-24T10:00:00Z",
    );
    assert_eq!(e.phase, Approved);
    assert_eq!(
        e.approvals,
        vec![
            Err("omar requested this deployment and cannot approve it (policy/prod)".to_owned()),
            Err("dana (roles: developer) holds none of the roles release_manager that policy/prod needs".to_owned()),
            Err("system:serviceaccount:ci:deployer is a machine (a service account, an application or an API key); machines never count as human approvers".to_owned()),
            Ok(vec!["policy/prod".to_owned()]),
            Err("rosa already approved; each person counts once".to_owned()),
        ]
    );
    assert_eq!(e.message, "approved by rosa");
    assert_eq!(e.requeue_at, None);
}

#[test]
fn several_requirements_each_need_their_quorum() {
    let s = spec(&[
        ("policy/prod", &[ReleaseManager, Admin], 1, false),
        ("policy/security", &[Admin], 1, false),
        (
            "permission/deploy_production",
            &[ReleaseManager, Admin],
            2,
            false,
        ),
    ]);
    let rosa = act("rosa", &[ReleaseManager], BEFORE);
    let alice = act("alice", &[Admin], BEFORE);
    let e = run(&s, std::slice::from_ref(&rosa), "2026-11-24T10:00:00Z");
    assert_eq!(e.phase, Pending);
    assert_eq!(
        e.message,
        "waiting for approvals (policy/security: 0 of 1; permission/deploy_production: 1 of 2)"
    );
    assert_eq!(e.requeue_at, Some(at(EXPIRES)));
    let e = run(&s, &[rosa, alice], "2026-11-24T10:00:00Z");
    assert_eq!(e.phase, Approved);
    assert_eq!(
        e.approvals[1],
        Ok(vec![
            "policy/prod".to_owned(),
            "policy/security".to_owned(),
            "permission/deploy_production".to_owned()
        ])
    );
    assert!(e.progress.iter().all(|p| p.met));
}

#[test]
fn self_approval_when_allowed() {
    let s = spec(&[("policy/p", &[ReleaseManager], 1, true)]);
    assert_eq!(
        run(
            &s,
            &[act("omar", &[ReleaseManager], BEFORE)],
            "2026-11-24T10:00:00Z"
        )
        .phase,
        Approved
    );
}

#[test]
fn rejection_cancellation_expiry_and_supersession() {
    let s = spec(&[("policy/prod", &[ReleaseManager], 1, false)]);
    let step = |rejection: Option<Act>, cancellation: Option<Act>, superseded: bool, now: &str| {
        evaluate(&Input {
            spec: &s,
            current: Some(Pending),
            approvals: &[],
            rejection: rejection.as_ref(),
            cancellation: cancellation.as_ref(),
            superseded,
            now: at(now),
        })
    };
    let now = "2026-11-24T10:00:00Z";
    // (rejection, cancellation, superseded, now, phase)
    type Case<'a> = (Option<Act>, Option<Act>, bool, &'a str, ApprovalPhase);
    let table: Vec<Case> = vec![
        (
            Some(act("rosa", &[ReleaseManager], BEFORE)),
            None,
            false,
            now,
            Rejected,
        ),
        (
            Some(act("dana", &[Developer], BEFORE)),
            None,
            false,
            now,
            Pending,
        ),
        (
            Some(act("omar", &[ReleaseManager], BEFORE)),
            None,
            false,
            now,
            Pending,
        ),
        (
            None,
            Some(act("omar", &[Operator], BEFORE)),
            false,
            now,
            Cancelled,
        ),
        (
            None,
            Some(act("alice", &[Admin], BEFORE)),
            false,
            now,
            Cancelled,
        ),
        (
            None,
            Some(act("rosa", &[ReleaseManager], BEFORE)),
            false,
            now,
            Pending,
        ),
        (None, None, false, EXPIRES, Expired),
        (None, None, false, "2026-11-24T11:59:59Z", Pending),
        (None, None, true, now, Superseded),
        // An act that decided stands when the spec moves on later.
        (
            Some(act("rosa", &[ReleaseManager], BEFORE)),
            None,
            true,
            now,
            Rejected,
        ),
    ];
    for (i, (r, c, sup, now, want)) in table.into_iter().enumerate() {
        assert_eq!(step(r, c, sup, now).phase, want, "case {i}");
    }
    let e = step(
        None,
        Some(act("rosa", &[ReleaseManager], BEFORE)),
        false,
        now,
    );
    assert_eq!(
        e.ignored_cancellation.as_deref(),
        Some("rosa is neither the requester nor an admin and cannot cancel")
    );
    let e = step(Some(act("dana", &[Developer], BEFORE)), None, false, now);
    assert!(
        e.ignored_rejection
            .unwrap()
            .contains("holds none of the roles")
    );
}

#[test]
fn final_phases_stay_final() {
    let s = spec(&[("policy/prod", &[ReleaseManager], 1, false)]);
    for phase in [Approved, Rejected, Expired, Cancelled, Superseded] {
        let e = evaluate(&Input {
            spec: &s,
            current: Some(phase),
            approvals: &[],
            rejection: None,
            cancellation: None,
            superseded: true,
            now: at("2027-01-01T00:00:00Z"),
        });
        assert_eq!(e.phase, phase);
        assert_eq!(e.requeue_at, None);
    }
    // A request approved before it expired stays approved when observed after expiry.
    let e = run(
        &s,
        &[act("rosa", &[ReleaseManager], BEFORE)],
        "2026-11-25T00:00:00Z",
    );
    assert_eq!(e.phase, Approved);
}

#[test]
fn an_mfa_requirement_counts_only_approvals_that_proved_mfa() {
    let mut s = spec(&[("policy/mfa", &[ReleaseManager], 1, false)]);
    s.requirements[0].require_mfa = true;
    let plain = act("rosa", &[ReleaseManager], "2026-11-24T10:00:00Z");
    let e = run(&s, std::slice::from_ref(&plain), "2026-11-24T10:01:00Z");
    assert_eq!(e.phase, Pending);
    assert!(
        e.approvals[0]
            .as_ref()
            .unwrap_err()
            .contains("did not prove multi-factor authentication")
    );
    let proved = Act { mfa: true, ..plain };
    assert_eq!(run(&s, &[proved], "2026-11-24T10:01:00Z").phase, Approved);
}

#[test]
fn a_pending_request_is_outdated_when_the_policies_want_other_approvals() {
    let two = spec(&[("policy/p", &[ReleaseManager], 2, false)]).requirements;
    let three = spec(&[("policy/p", &[ReleaseManager, Admin], 3, false)]).requirements;
    let table = [
        (None, &two, &two, false),
        (None, &two, &three, true),
        (Some(Pending), &two, &three, true),
        (Some(Pending), &three, &two, true), // loosened too: approvals are given anew
        (Some(Approved), &two, &three, false), // a granted request stands
        (Some(Rejected), &two, &three, false),
        (Some(Superseded), &two, &three, false),
    ];
    for (phase, has, wanted, want) in table {
        assert_eq!(outdated(phase, has, wanted), want, "{phase:?}");
    }
}

#[test]
fn a_request_binds_one_change_compared_in_full() {
    let mut s = spec(&[("policy/prod", &[ReleaseManager], 1, false)]);
    s.deployment_ref.generation = 3;
    let digest = s.spec_digest.clone();
    // Same first 60 hex digits: a name built from any prefix would collide.
    let near = format!("{}bbbb", &digest[..digest.len() - 4]);
    // (uid, generation, digest, the problem named)
    let table: [(&str, i64, &str, Option<&str>); 5] = [
        ("u1", 3, &digest, None),
        ("u2", 3, &digest, Some("UID u1, not u2")),
        ("u1", 5, &digest, Some("generation 3 of the spec, not 5")),
        ("u1", 3, &near, Some("approves spec sha256:aaaa")),
        ("u1", 0, &digest, Some("generation 3")),
    ];
    for (uid, generation, d, want) in table {
        let got = binding_problem(&s, uid, generation, d);
        match want {
            None => assert_eq!(got, None, "{uid} {generation} {d}"),
            Some(w) => assert!(
                got.as_deref().is_some_and(|g| g.contains(w)),
                "{uid} {generation} {d}: {got:?}"
            ),
        }
    }
}

#[test]
fn a_rollout_needs_both_the_verified_acts_and_the_recorded_phase() {
    let phases = [Pending, Approved, Rejected, Expired, Cancelled, Superseded];
    for reported in phases.iter().copied().map(Some).chain([None]) {
        for from_acts in phases {
            let want = reported == Some(Approved) && from_acts == Approved;
            assert_eq!(
                approved_for_rollout(reported, from_acts),
                want,
                "status {reported:?}, acts {from_acts:?}"
            );
        }
    }
}

#[test]
fn the_first_decisive_act_decides() {
    let s = spec(&[("policy/prod", &[ReleaseManager], 2, false)]);
    let (t1, t2, t3) = (
        "2026-11-24T09:00:00Z",
        "2026-11-24T09:05:00Z",
        "2026-11-24T09:10:00Z",
    );
    let quorum_at = |t: &str| {
        vec![
            act("rosa", &[ReleaseManager], t1),
            act("raj", &[ReleaseManager], t),
        ]
    };
    // (approvals, rejection, cancellation, superseded, phase, the reason an act was ignored)
    type Case = (
        Vec<Act>,
        Option<Act>,
        Option<Act>,
        bool,
        ApprovalPhase,
        Option<&'static str>,
    );
    let table: Vec<Case> = vec![
        // A rejection after the quorum is complete changes nothing (and says why).
        (
            quorum_at(t2),
            Some(act("rita", &[ReleaseManager], t3)),
            None,
            false,
            Approved,
            Some("after the request was approved"),
        ),
        // Before it, the rejection decides.
        (
            quorum_at(t3),
            Some(act("rita", &[ReleaseManager], t2)),
            None,
            false,
            Rejected,
            None,
        ),
        // At the same moment, the refusal wins (fail closed).
        (
            quorum_at(t2),
            Some(act("rita", &[ReleaseManager], t2)),
            None,
            false,
            Rejected,
            None,
        ),
        (
            quorum_at(t2),
            None,
            Some(act("omar", &[Admin], t2)),
            false,
            Cancelled,
            None,
        ),
        (
            quorum_at(t2),
            None,
            Some(act("alice", &[Admin], t3)),
            false,
            Approved,
            Some("after the request was approved"),
        ),
        // The earlier of a rejection and a cancellation decides.
        (
            vec![],
            Some(act("rita", &[ReleaseManager], t3)),
            Some(act("alice", &[Admin], t2)),
            false,
            Cancelled,
            None,
        ),
        (
            vec![],
            Some(act("rita", &[ReleaseManager], t2)),
            Some(act("alice", &[Admin], t3)),
            false,
            Rejected,
            None,
        ),
        // A quorum completed before the spec moved on stands; an incomplete one is superseded.
        (quorum_at(t2), None, None, true, Approved, None),
        (
            quorum_at(t2)[..1].to_vec(),
            None,
            None,
            true,
            Superseded,
            None,
        ),
    ];
    for (i, (approvals, rejection, cancellation, superseded, want, ignored)) in
        table.into_iter().enumerate()
    {
        let e = evaluate(&Input {
            spec: &s,
            current: None,
            approvals: &approvals,
            rejection: rejection.as_ref(),
            cancellation: cancellation.as_ref(),
            superseded,
            now: at("2026-11-24T10:00:00Z"),
        });
        assert_eq!(e.phase, want, "case {i}");
        let why = e.ignored_rejection.or(e.ignored_cancellation);
        match ignored {
            Some(w) => assert!(
                why.as_deref().is_some_and(|y| y.contains(w)),
                "case {i}: {why:?}"
            ),
            None => assert_eq!(why, None, "case {i}"),
        }
    }
}

#[test]
fn the_requester_under_another_name_is_still_the_requester() {
    let mut s = spec(&[("policy/p", &[ReleaseManager], 1, false)]);
    if let Some(r) = s.requester.as_mut() {
        r.uid = Some("oid-omar".into());
    }
    let same_object = Act {
        entra: Some("tenant/oid-omar".into()),
        ..act("omar.h@contoso.com", &[ReleaseManager], BEFORE)
    };
    assert_eq!(
        ineligible(&s, &s.requirements[0], &same_object).as_deref(),
        Some("omar requested this deployment and cannot approve it (policy/p)")
    );
    let other_case = act("OMAR", &[ReleaseManager], BEFORE);
    assert!(ineligible(&s, &s.requirements[0], &other_case).is_some());
    let someone_else = Act {
        entra: Some("tenant/oid-rosa".into()),
        ..act("rosa", &[ReleaseManager], BEFORE)
    };
    assert_eq!(ineligible(&s, &s.requirements[0], &someone_else), None);
    assert!(
        !run(&s, &[same_object], BEFORE).progress[0].met,
        "no self-approval"
    );
}
