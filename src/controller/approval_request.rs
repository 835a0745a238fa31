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
use crate::approval::signed::{self, ActKind, SignedAct};
use crate::approval::{self, Act};
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

/// Reconciles one ApprovalRequest.
pub async fn reconcile(apr: Arc<ApprovalRequest>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = apr.namespace().unwrap_or_default();
    let name = apr.name_any();
    let old = apr.status.clone().unwrap_or_default();
    if matches!(old.phase, Some(p) if p != ApprovalPhase::Pending) {
        return Ok(Action::await_change());
    }
    let ad = Api::<AgentDeployment>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&apr.spec.deployment_ref.name)
        .await?;
    let superseded = match &ad {
        None => true,
        Some(ad) => {
            ad.uid().as_deref() != Some(apr.spec.deployment_ref.uid.as_str())
                || spec_digest(&ad.spec) != apr.spec.spec_digest
        }
    };
    // Only acts the admission webhook signed for this request count; nothing else in the
    // object (status included) is trusted to say who acted.
    let recorded = signed::recorded(&apr, &ctx.stamp_key).map_err(Error::Config)?;
    let mut verified = Vec::new();
    for (act, ok) in recorded {
        if ok {
            verified.push(act);
        } else {
            tracing::warn!(namespace = %ns, name = %name, user = %act.subject.username, "ignoring an act whose signature does not verify");
        }
    }
    let of_kind = |kind: ActKind| verified.iter().filter(move |a| a.kind == kind);
    let approvals: Vec<Act> = of_kind(ActKind::Approve).map(SignedAct::act).collect();
    let rejection = of_kind(ActKind::Reject).next().map(SignedAct::act);
    let cancellation = of_kind(ActKind::Cancel).next().map(SignedAct::act);
    let now = Utc::now();
    let eval = approval::evaluate(&approval::Input {
        spec: &apr.spec,
        current: old.phase,
        approvals: &approvals,
        rejection: rejection.as_ref(),
        cancellation: cancellation.as_ref(),
        superseded,
        now,
    });

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

    if old.phase != Some(eval.phase)
        && eval.phase == ApprovalPhase::Approved
        && let Some(created) = &apr.metadata.creation_timestamp
    {
        let waited = now.timestamp_millis() - created.0.as_millisecond();
        crate::metrics::METRICS
            .approval_latency
            .observe(waited as f64 / 1000.0);
    }
    if old.phase != Some(eval.phase) && eval.phase != ApprovalPhase::Pending {
        let (event, status, actors) = match eval.phase {
            ApprovalPhase::Approved => (
                AuditEvent::ApprovalGranted,
                "approved",
                eval.progress
                    .iter()
                    .flat_map(|p| p.approvers.clone())
                    .collect(),
            ),
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
        let mut actors: Vec<String> = actors;
        actors.dedup();
        let draft = record::approval(&apr, event, status, &actors, &eval.message);
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
        Some(at) => {
            Action::requeue((at - now).to_std().unwrap_or_default() + Duration::from_millis(500))
        }
        None => Action::await_change(),
    })
}
