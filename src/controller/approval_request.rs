//! The ApprovalRequest reconciler: resolves who acted (roles from the role mapping, never from
//! what the record claims), runs the pure life cycle, and writes the phase and progress.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};

use super::{Context, Error, MANAGER, conditions, record};
use crate::approval::{self, Act};
use crate::audit::EventType as AuditEvent;
use crate::crd::agent_deployment::spec_digest;
use crate::crd::approval_request::{ApprovalPhase, ApprovalRecord, ApprovalRequestStatus};
use crate::crd::{AgentDeployment, ApprovalRequest};
use crate::identity::{Identity, RoleMapping};

fn act(mapping: &RoleMapping, env: &str, r: &ApprovalRecord) -> Act {
    let identity = Identity {
        username: r.username.clone(),
        uid: None,
        groups: r.groups.clone(),
    };
    Act {
        subject: mapping.subject(&identity, env),
        at: r.at,
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
    let mapping = ctx.role_mapping().await?;
    let env = apr.spec.environment.as_str();
    let approvals: Vec<Act> = old
        .approvals
        .iter()
        .map(|r| act(&mapping, env, r))
        .collect();
    let rejection = old.rejection.as_ref().map(|r| act(&mapping, env, r));
    let cancellation = old.cancellation.as_ref().map(|r| act(&mapping, env, r));
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
    for ((record, act), counted) in st.approvals.iter_mut().zip(&approvals).zip(&eval.approvals) {
        record.roles = act.subject.roles.iter().copied().collect();
        (record.satisfies, record.ignored) = match counted {
            Ok(sources) => (sources.clone(), None),
            Err(why) => (vec![], Some(why.clone())),
        };
    }
    if let (Some(r), Some(a)) = (st.rejection.as_mut(), rejection.as_ref()) {
        r.roles = a.subject.roles.iter().copied().collect();
        r.ignored = eval.ignored_rejection.clone();
    }
    if let (Some(c), Some(a)) = (st.cancellation.as_mut(), cancellation.as_ref()) {
        c.roles = a.subject.roles.iter().copied().collect();
        c.ignored = eval.ignored_cancellation.clone();
    }
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
