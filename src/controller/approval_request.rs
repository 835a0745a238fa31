//! The ApprovalRequest reconciler: reads the acts the admission webhook signed (who, with the
//! roles they held), runs the pure life cycle, and writes the phase, records and progress.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};

use super::{Context, Error, MANAGER, conditions, record};
use crate::approval::signed::{ActKind, Acts, SignedAct};
use crate::approval::{self, Evaluation};
use crate::audit::EventType as AuditEvent;
use crate::crd::agent_deployment::spec_digest;
use crate::crd::approval_request::{ApprovalPhase, ApprovalRecord, ApprovalRequestStatus};
use crate::crd::{AgentDeployment, ApprovalRequest};

/// The status record of a verified act.
fn record_of(act: &SignedAct) -> ApprovalRecord {
    ApprovalRecord {
        username: act.subject.username.clone(),
        groups: act.subject.groups.clone(),
        roles: act.subject.roles.iter().copied().collect(),
        satisfies: vec![],
        at: act.at,
        comment: act.comment.clone(),
        mfa: act.mfa,
        ignored: None,
    }
}

/// The verified acts on the request that its status does not list yet (so not yet recorded in
/// the audit log), each with what it counted for (or why it counted for nothing).
fn new_acts<'a>(
    old: &ApprovalRequestStatus,
    acts: &'a Acts,
    eval: &Evaluation,
) -> Vec<(&'a SignedAct, Result<Vec<String>, String>)> {
    let listed = |act: &SignedAct| {
        let same = |r: &ApprovalRecord| r.username == act.subject.username && r.at == act.at;
        match act.kind {
            ActKind::Approve => old.approvals.iter().any(same),
            ActKind::Reject => old.rejection.iter().any(same),
            ActKind::Cancel => old.cancellation.iter().any(same),
        }
    };
    let approvals = acts
        .of(ActKind::Approve)
        .zip(eval.approvals.iter().cloned());
    // The first rejection and cancellation are the ones that count and that status lists.
    let others = [ActKind::Reject, ActKind::Cancel]
        .into_iter()
        .filter_map(|kind| acts.of(kind).next())
        .map(|a| {
            let ignored = match a.kind {
                ActKind::Reject => eval.ignored_rejection.clone(),
                _ => eval.ignored_cancellation.clone(),
            };
            (a, ignored.map_or(Ok(vec![]), Err))
        });
    approvals
        .chain(others)
        .filter(|(a, _)| !listed(a))
        .collect()
}

/// Records the verified acts on `apr` its status does not list yet (see [`new_acts`]): by the
/// request controller before the status that lists them, and before an outdated request is
/// replaced, so that no stored act goes unrecorded.
pub async fn record_new_acts(
    ctx: &Context,
    apr: &ApprovalRequest,
    acts: &Acts,
    eval: &Evaluation,
) -> Result<(), Error> {
    let old = apr.status.clone().unwrap_or_default();
    for (act, counted) in new_acts(&old, acts, eval) {
        let draft = record::act(apr, act, counted);
        ctx.audit.record(draft).await.map_err(Error::Audit)?;
    }
    Ok(())
}

/// Reconciles one ApprovalRequest.
pub async fn reconcile(apr: Arc<ApprovalRequest>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = apr.namespace().unwrap_or_default();
    let name = apr.name_any();
    let old = apr.status.clone().unwrap_or_default();
    if matches!(old.phase, Some(p) if p != ApprovalPhase::Pending && p != ApprovalPhase::Approved) {
        return Ok(Action::await_change());
    }
    let ad = Api::<AgentDeployment>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&apr.spec.deployment_ref.name)
        .await?;
    let superseded = match &ad {
        None => true,
        Some(ad) => approval::binding_problem(
            &apr.spec,
            ad.uid().as_deref().unwrap_or(""),
            ad.metadata.generation.unwrap_or(0),
            &spec_digest(&ad.spec),
        )
        .is_some(),
    };
    // Only acts the admission webhook signed for this request count; nothing else in the
    // object (status included) is trusted to say who acted.
    let acts = Acts::read(&apr, &ctx.stamp_key).map_err(Error::Config)?;
    for act in &acts.forged {
        tracing::warn!(namespace = %ns, name = %name, user = %act.subject.username, "ignoring an act whose signature does not verify");
    }
    let of_kind = |kind: ActKind| acts.of(kind);
    let now = Utc::now();
    // A final phase stands, except an Approved that the verified acts do not bear out (a forged
    // status write): the request is evaluated afresh from its acts.
    let current = match old.phase {
        Some(ApprovalPhase::Approved)
            if acts.evaluate(&apr.spec, None, superseded, now).phase != ApprovalPhase::Approved =>
        {
            tracing::warn!(namespace = %ns, name = %name, "status says Approved but the verified acts do not; evaluating from the acts");
            None
        }
        phase => phase,
    };
    let eval = acts.evaluate(&apr.spec, current, superseded, now);
    let mut st: ApprovalRequestStatus = old.clone();
    st.phase = Some(eval.phase);
    st.observed_generation = apr.metadata.generation;
    st.approvals = of_kind(ActKind::Approve)
        .zip(&eval.approvals)
        .map(|(act, counted)| {
            let mut record = record_of(act);
            (record.satisfies, record.ignored) = match counted {
                Ok(sources) => (sources.clone(), None),
                Err(why) => (vec![], Some(why.clone())),
            };
            record
        })
        .collect();
    st.rejection = of_kind(ActKind::Reject).next().map(|a| ApprovalRecord {
        ignored: eval.ignored_rejection.clone(),
        ..record_of(a)
    });
    st.cancellation = of_kind(ActKind::Cancel).next().map(|a| ApprovalRecord {
        ignored: eval.ignored_cancellation.clone(),
        ..record_of(a)
    });
    st.progress = eval.progress.clone();
    conditions::set(
        &mut st.conditions,
        "Approved",
        eval.phase == ApprovalPhase::Approved,
        &format!("{:?}", eval.phase),
        &eval.message,
        apr.metadata.generation,
        now,
    );

    // Each act is recorded once, when the operator first sees it stored (the status written
    // below lists it from then on), before anything it causes: the webhook does not record
    // accepted acts, because the API server may call it several times for one stored write.
    record_new_acts(&ctx, &apr, &acts, &eval).await?;
    if old.phase != Some(eval.phase)
        && eval.phase == ApprovalPhase::Approved
        && let Some(created) = &apr.metadata.creation_timestamp
    {
        let waited = now
            .timestamp_millis()
            .saturating_sub(created.0.as_millisecond());
        crate::metrics::METRICS
            .approval_latency
            .observe(waited as f64 / 1000.0);
    }
    if old.phase != Some(eval.phase) && eval.phase != ApprovalPhase::Pending {
        let (event, status, actors) = match eval.phase {
            ApprovalPhase::Approved => (AuditEvent::ApprovalGranted, "approved", vec![]),
            ApprovalPhase::Rejected => (
                AuditEvent::ApprovalDenied,
                "rejected",
                st.rejection.iter().map(|r| r.username.clone()).collect(),
            ),
            ApprovalPhase::Cancelled => (
                AuditEvent::ApprovalDenied,
                "cancelled",
                st.cancellation.iter().map(|r| r.username.clone()).collect(),
            ),
            ApprovalPhase::Expired => (AuditEvent::ApprovalDenied, "expired", vec![]),
            ApprovalPhase::Superseded | ApprovalPhase::Pending => {
                (AuditEvent::ApprovalDenied, "superseded", vec![])
            }
        };
        let quorum = acts.quorum(&eval);
        let draft = record::approval(&apr, event, status, &actors, &quorum, &eval.message);
        ctx.audit.record(draft).await.map_err(Error::Audit)?;
    }
    if st != old {
        // resourceVersion makes the write conditional: an approval recorded meanwhile is never lost.
        let patch = serde_json::json!({
            "apiVersion": "dvo.caat.io/v1alpha1", "kind": "ApprovalRequest",
            "metadata": {"resourceVersion": apr.resource_version()},
            "status": st,
        });
        Api::<ApprovalRequest>::namespaced(ctx.client.clone(), &ns)
            .patch_status(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
    }
    if old.phase != Some(eval.phase) {
        let type_ = if matches!(eval.phase, ApprovalPhase::Rejected | ApprovalPhase::Expired) {
            EventType::Warning
        } else {
            EventType::Normal
        };
        let event = Event {
            type_,
            reason: format!("{:?}", eval.phase),
            note: Some(eval.message.clone()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &apr.object_ref(&())).await {
            tracing::warn!(%e, "cannot publish event");
        }
        tracing::info!(namespace = %ns, name = %name, phase = ?eval.phase, message = %eval.message, "approval request phase");
    }
    Ok(match eval.requeue_at {
        Some(at) => Action::requeue(
            at.signed_duration_since(now)
                .to_std()
                .unwrap_or_default()
                .saturating_add(Duration::from_millis(500)),
        ),
        None => Action::await_change(),
    })
}
