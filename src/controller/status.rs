//! What an AgentDeployment's status says, given what a reconcile decided and did: a pure
//! function (no client), table-tested, called by the reconciler once everything is known.

use chrono::{DateTime, Utc};

use super::conditions;
use crate::crd::agent_deployment::{AgentDeploymentStatus, Phase, RolloutIntent};
use crate::policy::{Decision, decision::ViolationKind};

/// A count the status keeps as u32, as a length.
fn count(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Where the approval of the spec stands, for the `Approved` condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Approved {
    /// Whether the spec may roll out as far as approval goes.
    pub met: bool,
    /// The condition's reason (`NotRequired`, the request's phase, `Conflict`).
    pub reason: String,
    /// The condition's message.
    pub message: String,
}

/// The status written ahead of a rollout: the intent, and the phase of the generation it names
/// (a status that names a new generation never shows the last one's phase).
pub fn announce(st: &mut AgentDeploymentStatus, intent: RolloutIntent) {
    st.message = Some(format!("rolling out {}", intent.digest));
    st.observed_generation = Some(intent.generation);
    st.rollout_intent = Some(intent);
    st.phase = Some(Phase::Progressing);
}

/// Sets the conditions (`PolicyEvaluated`, `Approved`, `CapabilitiesAvailable`, `Degraded`,
/// `Ready`), the phase, the message and the (bounded) decision of `st`.
pub fn conclude(
    st: &mut AgentDeploymentStatus,
    decision: &Decision,
    phase: Phase,
    message: &str,
    approved: &Approved,
    generation: Option<i64>,
    now: DateTime<Utc>,
) {
    let cs = &mut st.conditions;
    conditions::set(
        cs,
        "PolicyEvaluated",
        true,
        &format!("{:?}", decision.outcome),
        &format!(
            "{} policies in scope, {} matched",
            decision
                .trace
                .len()
                .saturating_add(count(decision.trace_omitted)),
            decision
                .matched_policies
                .len()
                .saturating_add(count(decision.matched_omitted))
        ),
        generation,
        now,
    );
    conditions::set(
        cs,
        "Approved",
        approved.met,
        &approved.reason,
        &approved.message,
        generation,
        now,
    );
    let capability_problem = decision
        .violations
        .iter()
        .filter(|v| v.kind == ViolationKind::CapabilityUnavailable)
        .map(|v| v.message.clone())
        .chain(decision.manual_instructions.iter().cloned())
        .collect::<Vec<_>>();
    conditions::set(
        cs,
        "CapabilitiesAvailable",
        capability_problem.is_empty(),
        if capability_problem.is_empty() {
            "Available"
        } else {
            "Unavailable"
        },
        &capability_problem.join("; "),
        generation,
        now,
    );
    let degraded: Vec<String> = decision
        .skipped_steps
        .iter()
        .chain(&decision.degraded_steps)
        .map(|s| format!("{}: {}", s.capability, s.message))
        .collect();
    conditions::set(
        cs,
        "Degraded",
        !degraded.is_empty(),
        if degraded.is_empty() {
            "Complete"
        } else {
            "StepsLeftOut"
        },
        &degraded.join("; "),
        generation,
        now,
    );
    let ready = matches!(phase, Phase::Deployed | Phase::Degraded);
    conditions::set(
        cs,
        "Ready",
        ready,
        &format!("{phase:?}"),
        message,
        generation,
        now,
    );
    st.phase = Some(phase);
    st.message = Some(message.to_owned());
    st.decision = Some(decision.for_status());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::decision::{StepNote, Violation};

    fn decision(edit: impl FnOnce(&mut Decision)) -> Decision {
        let mut d: Decision = serde_json::from_value(serde_json::json!({
            "outcome": "Allow", "evaluatedAt": "2026-11-26T00:00:00Z",
        }))
        .unwrap();
        edit(&mut d);
        d
    }

    fn condition(st: &AgentDeploymentStatus, type_: &str) -> (String, String) {
        let c = st.conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    /// Found by the end-to-end suite: a new spec read as `Failed`, with the failure of the spec
    /// before it, while its rollout was being written.
    #[test]
    fn a_rollout_is_announced_with_its_own_phase() {
        let mut st = AgentDeploymentStatus {
            phase: Some(Phase::Failed),
            observed_generation: Some(2),
            message: Some("rollout of sha256:old failed".into()),
            ..Default::default()
        };
        let intent = RolloutIntent {
            generation: 3,
            digest: "sha256:new".into(),
        };
        announce(&mut st, intent.clone());
        assert_eq!(st.phase, Some(Phase::Progressing));
        assert_eq!(st.observed_generation, Some(3));
        assert_eq!(st.rollout_intent, Some(intent));
        assert_eq!(st.message.as_deref(), Some("rolling out sha256:new"));
    }

    #[test]
    fn conditions_follow_the_phase_and_the_decision() {
        let now = "2026-11-26T01:00:00Z".parse().unwrap();
        let approved = Approved {
            met: true,
            reason: "NotRequired".into(),
            message: "no approval required".into(),
        };
        let plain = decision(|_| {});
        let unavailable = decision(|d| {
            d.outcome = crate::policy::Outcome::Deny;
            d.violations.push(Violation {
                source: "capability/deploy-fastapi".into(),
                kind: ViolationKind::CapabilityUnavailable,
                message: "switched off".into(),
                break_glass_lifts: false,
            });
        });
        let skipped = decision(|d| {
            d.skipped_steps.push(StepNote {
                capability: "kb-sync".into(),
                message: "off".into(),
            })
        });
        // (decision, phase, Ready, CapabilitiesAvailable, Degraded)
        let table = [
            (&plain, Phase::Deployed, "True", "True", "False"),
            (&plain, Phase::Progressing, "False", "True", "False"),
            (&plain, Phase::PendingApproval, "False", "True", "False"),
            (&unavailable, Phase::Blocked, "False", "False", "False"),
            (&skipped, Phase::Degraded, "True", "True", "True"),
            (&plain, Phase::Failed, "False", "True", "False"),
        ];
        for (d, phase, ready, capabilities, degraded) in table {
            let mut st = AgentDeploymentStatus::default();
            conclude(&mut st, d, phase, "m", &approved, Some(2), now);
            assert_eq!(st.phase, Some(phase));
            assert_eq!(
                condition(&st, "Ready"),
                (ready.into(), format!("{phase:?}"))
            );
            assert_eq!(
                condition(&st, "CapabilitiesAvailable").0,
                capabilities,
                "{phase:?}"
            );
            assert_eq!(condition(&st, "Degraded").0, degraded, "{phase:?}");
            assert_eq!(
                condition(&st, "Approved"),
                ("True".into(), "NotRequired".into())
            );
            assert!(
                st.conditions
                    .iter()
                    .all(|c| c.observed_generation == Some(2))
            );
            assert_eq!(st.decision, Some(d.for_status()));
        }
    }
}
