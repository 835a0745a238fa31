//! The AgentDeployment reconciler: gathers policies, capabilities, the role mapping, the verified
//! requester and staging evidence; calls `decide()`; then holds, asks for approval, or rolls out
//! exactly the allowed spec.

use std::sync::Arc;
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::environment::Environment;
use super::workload::{self, Rollout};
use super::{Context, Error, MANAGER, conditions, record};
use crate::approval;
use crate::approval::signed::{Acts, SignedAct};
use crate::audit::EventType as AuditEvent;
use crate::crd::agent_deployment::{
    AgentDeploymentStatus, Phase, RolloutIntent, RolloutOutcome, StepState, StepStatus, spec_digest,
};
use crate::crd::approval_request::{ApprovalPhase, ApprovalRequestSpec, DeploymentRef, Requester};
use crate::crd::{AgentDeployment, ApprovalRequest};
use crate::identity::stamp::{self, BreakGlass, Stamp};
use crate::identity::{Identity, Tier};
use crate::policy::{self, Decision, Outcome, Request};

/// How often an AgentDeployment is looked at again when nothing else triggers it.
const RESYNC: Duration = Duration::from_secs(300);

/// The ApprovalRequest name for one change (spec generation and digest) of an AgentDeployment.
/// Names only find a request: whether it counts for a spec is decided by comparing its UID,
/// generation and full digest ([`approval::binding_problem`]), so a collision (a truncated
/// name, a crafted digest prefix) can only ever hold a rollout back.
pub fn approval_request_name(ad_name: &str, generation: i64, digest: &str) -> String {
    let short = digest.trim_start_matches("sha256:").get(..12).unwrap_or("");
    let suffix = format!("-g{generation}-{short}");
    let base: String = ad_name
        .chars()
        .take(253usize.saturating_sub(suffix.len()))
        .collect();
    format!("{base}{suffix}")
}

/// The verified requester, or why the stamp was not trusted.
fn requester(ad: &AgentDeployment, key: &[u8], digest: &str) -> (Option<Identity>, Option<String>) {
    let Some(value) = ad.annotations().get(stamp::ANNOTATION) else {
        return (None, None);
    };
    let ns = ad.namespace().unwrap_or_default();
    match Stamp::parse(value).and_then(|s| s.verify(key, &ns, &ad.name_any(), digest).cloned()) {
        Ok(identity) => (Some(identity), None),
        Err(why) => (None, Some(why)),
    }
}

/// One line naming what holds the spec back.
fn violations_summary(d: &Decision) -> String {
    let mut parts: Vec<String> = d
        .violations
        .iter()
        .map(|v| format!("{}: {}", v.source, v.message))
        .collect();
    if let Some(at) = d.next_window_opens_at {
        parts.push(format!("re-evaluated at {}", at.to_rfc3339()));
    }
    parts.join("; ")
}

/// Reconciles one AgentDeployment. When the audit log cannot record the next step, nothing is
/// done and the status says exactly that (not what it said before).
pub async fn reconcile(ad: Arc<AgentDeployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    let result = reconcile_spec(ad.clone(), ctx.clone()).await;
    if let Err(Error::Audit(why)) = &result {
        let st = held_by_audit(ad.status.as_ref(), why, ad.metadata.generation, Utc::now());
        if let Err(e) = write_status(&ctx, &ad, &st).await {
            tracing::warn!(%e, "cannot say in status that the audit log holds the rollout");
        }
    }
    result
}

/// The status of an AgentDeployment whose next step the audit log could not record: it says
/// so (not what it said before, such as "waiting for approvals"), and is not Ready.
fn held_by_audit(
    status: Option<&AgentDeploymentStatus>,
    why: &str,
    generation: Option<i64>,
    now: chrono::DateTime<Utc>,
) -> AgentDeploymentStatus {
    let mut st = status.cloned().unwrap_or_default();
    // The cache keeps the decision without its detail; the next reconcile that the log records
    // writes it again.
    st.decision = None;
    let message = format!(
        "held: the audit log could not record the next step, so nothing is done until it can ({why})"
    );
    conditions::set(
        &mut st.conditions,
        "Ready",
        false,
        "AuditLogUnavailable",
        &message,
        generation,
        now,
    );
    st.message = Some(message);
    st
}

/// One reconcile of the current spec.
async fn reconcile_spec(ad: Arc<AgentDeployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    if ad.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = ad.namespace().unwrap_or_default();
    let name = ad.name_any();
    let now = Utc::now();
    let digest = spec_digest(&ad.spec);

    let (requester, stamp_problem) = requester(&ad, &ctx.stamp_key, &digest);
    let env = ctx.environment();
    let rules = env.rules.clone().map_err(Error::Config)?;
    let mapping = rules.mapping();
    let staging_validated = match mapping.tier(&ad.spec.environment) {
        Tier::Staging => false,
        _ => {
            let same_agent = ctx.agents.state_filter(|o| o.spec.agent == ad.spec.agent);
            policy::staging_validated(&ad, same_agent.iter().map(AsRef::as_ref), mapping)
        }
    };
    let request = Request {
        namespace: ns.clone(),
        labels: ad.labels().clone(),
        spec: ad.spec.clone(),
        requester: requester.clone(),
        staging_validated,
    };
    let decision = policy::decide_for_status(&rules, &request, now);
    // Break-glass counts only as the webhook signed it, for this very spec.
    let decision = match ad.annotations().get(stamp::BREAK_GLASS_STAMP) {
        None => decision,
        Some(text) => match BreakGlass::verified(text, &ctx.stamp_key, &ns, &name, &digest) {
            Ok(bg) => {
                let by = &bg.identity.username;
                let (decision, lifted) =
                    policy::break_glass::apply(&rules, decision, by, &bg.reason);
                // What it lifted is the fact (at the highest severity); one that lifted nothing
                // is recorded as such. Once: when the status does not say it yet.
                let said = decision.warnings.last().cloned();
                let known = ad
                    .status
                    .as_ref()
                    .and_then(|s| s.decision.as_ref())
                    .is_some_and(|d| said.as_ref().is_some_and(|w| d.warnings.contains(w)));
                let (event, status, key) = if lifted.is_empty() {
                    (
                        AuditEvent::PolicyEvaluated,
                        "break_glass_lifted_nothing",
                        "break-glass-idle",
                    )
                } else {
                    (AuditEvent::BreakGlassUsed, "success", "break-glass")
                };
                let mut d = record::agent(
                    &ad,
                    &digest,
                    requester.as_ref(),
                    event,
                    "break_glass",
                    status,
                    key,
                );
                d.user_id = by.clone();
                crate::json::set(&mut d.metadata, "reason", bg.reason.clone());
                crate::json::set(&mut d.metadata, "lifted", lifted);
                if !known {
                    ctx.audit.record(d).await.map_err(Error::Audit)?;
                }
                decision
            }
            Err(why) => {
                tracing::warn!(namespace = %ns, name = %name, %why, "ignoring the break-glass stamp");
                decision
            }
        },
    };

    crate::metrics::METRICS
        .decisions
        .get_or_create(&crate::metrics::value(format!("{:?}", decision.outcome)))
        .inc();
    let old = ad.status.clone().unwrap_or_default();
    let mut st = old.clone();
    // The cache keeps decisions without their detail: every status written from here on
    // carries this decision in full.
    st.decision = Some(decision.for_status());
    st.observed_generation = ad.metadata.generation;
    st.spec_digest = Some(digest.clone());
    let generation = ad.metadata.generation;
    let mut running = Running::new(&ctx, &ad, &env);
    // A decision that is new (a new spec, or other rules) is acted on only when the rules are
    // current; a resync that decides what was decided before reads nothing more.
    if !decided_before(&old, ad.metadata.generation, &decision) {
        running.confirm_current().await?;
    }
    settle_intent(&ad, &digest, &mut running, &mut st).await?;
    let mut requeue = Some(RESYNC);
    let mut approved = (
        decision.outcome == Outcome::Allow,
        "NotRequired".to_owned(),
        "no approval required".to_owned(),
    );

    let (phase, message) = match decision.outcome {
        Outcome::Deny => {
            if let Some(at) = decision.next_window_opens_at {
                let wait = at
                    .signed_duration_since(now)
                    .to_std()
                    .unwrap_or_default()
                    .saturating_add(Duration::from_secs(1));
                requeue = Some(wait.min(RESYNC));
            }
            (Phase::Blocked, violations_summary(&decision))
        }
        Outcome::ManualActionRequired => (
            Phase::ManualActionRequired,
            decision.manual_instructions.join("; "),
        ),
        Outcome::RequireApproval => {
            match ensure_approval_request(&ctx, &ad, &digest, &decision, requester.as_ref()).await?
            {
                Err(conflict) => {
                    approved = (false, "Conflict".to_owned(), conflict.clone());
                    requeue = Some(Duration::from_secs(30));
                    (Phase::PendingApproval, conflict)
                }
                Ok(apr) => {
                    let apr_name = apr.name_any();
                    st.approval_request = Some(apr_name.clone());
                    let reported = apr.status.as_ref().and_then(|s| s.phase);
                    // Decided from the acts the webhook signed for this request, with the same
                    // life cycle as the ApprovalRequest controller; status alone never counts.
                    let acts = Acts::read(&apr, &ctx.stamp_key).map_err(Error::Config)?;
                    let eval = acts.evaluate(&apr.spec, None, false, now);
                    let mut apr_message = apr
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Approved"))
                        .map(|c| c.message.clone())
                        .unwrap_or_else(|| eval.message.clone());
                    let ok = approval::approved_for_rollout(reported, eval.phase);
                    if reported == Some(ApprovalPhase::Approved) && !ok {
                        tracing::warn!(namespace = %ns, name = %name, request = %apr_name, "the request's status says Approved but its verified acts do not");
                        apr_message = format!(
                            "its status says Approved but its verified acts do not ({})",
                            eval.message
                        );
                    }
                    approved = (
                        ok,
                        format!("{reported:?}"),
                        format!("ApprovalRequest {apr_name}: {apr_message}"),
                    );
                    match reported {
                        Some(ApprovalPhase::Approved) if ok => {
                            let quorum = acts.quorum(&eval);
                            let approval = Approval {
                                request: &apr_name,
                                quorum: &quorum,
                            };
                            rollout(
                                &ad,
                                &digest,
                                requester.as_ref(),
                                Some(approval),
                                &decision,
                                &mut running,
                                &mut st,
                            )
                            .await?
                        }
                        Some(ApprovalPhase::Rejected) => (
                            Phase::Rejected,
                            format!("ApprovalRequest {apr_name}: {apr_message}"),
                        ),
                        Some(ApprovalPhase::Expired) => (
                            Phase::ApprovalExpired,
                            format!("ApprovalRequest {apr_name}: {apr_message}"),
                        ),
                        Some(ApprovalPhase::Cancelled) => (
                            Phase::Blocked,
                            format!("ApprovalRequest {apr_name}: {apr_message}"),
                        ),
                        _ => (
                            Phase::PendingApproval,
                            format!("ApprovalRequest {apr_name}: {apr_message}"),
                        ),
                    }
                }
            }
        }
        Outcome::Allow => {
            st.approval_request = None;
            rollout(
                &ad,
                &digest,
                requester.as_ref(),
                None,
                &decision,
                &mut running,
                &mut st,
            )
            .await?
        }
    };

    // An intent for this very change still open here was not written in this reconcile: the
    // decision no longer lets it out.
    if let Some(intent) = st.rollout_intent.take() {
        let why = format!("not written: {phase:?}: {message}");
        let draft = record::rollout_outcome(&ad, &intent, "withheld", &why);
        ctx.audit.record(draft).await.map_err(Error::Audit)?;
    }
    let message = match &stamp_problem {
        Some(why) => format!("{message} (requester unknown: {why})"),
        None => message,
    };
    let approved = super::status::Approved {
        met: approved.0,
        reason: approved.1,
        message: approved.2,
    };
    super::status::conclude(
        &mut st, &decision, phase, &message, &approved, generation, now,
    );

    if old.phase != Some(phase) || old.spec_digest.as_deref() != Some(digest.as_str()) {
        // Every policy in scope, also those the status leaves out.
        let evaluated = rules.in_scope(&ns, &ad.spec).map(|p| p.name.clone());
        let draft = record::transition(
            &ad,
            &digest,
            requester.as_ref(),
            phase,
            &message,
            &decision,
            evaluated.collect(),
        );
        ctx.audit.record(draft).await.map_err(Error::Audit)?;
    }
    if differs(&old, &st) {
        write_status(&ctx, &ad, &st).await?;
    }
    if old.phase != Some(phase) {
        let type_ = if matches!(
            phase,
            Phase::Blocked | Phase::Rejected | Phase::ApprovalExpired | Phase::Failed
        ) {
            EventType::Warning
        } else {
            EventType::Normal
        };
        let event = Event {
            type_,
            reason: format!("{phase:?}"),
            note: Some(message.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &ad.object_ref(&())).await {
            tracing::warn!(%e, "cannot publish event");
        }
        tracing::info!(namespace = %ns, name = %name, phase = ?phase, %message, "phase changed");
    }
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// Server-side applies the whole status (the operator owns all of it).
async fn write_status(
    ctx: &Context,
    ad: &AgentDeployment,
    st: &AgentDeploymentStatus,
) -> Result<(), Error> {
    let patch = serde_json::json!({"apiVersion": "dvo.caat.io/v1alpha1", "kind": "AgentDeployment", "status": st});
    Api::<AgentDeployment>::namespaced(ctx.client.clone(), &ad.namespace().unwrap_or_default())
        .patch_status(
            &ad.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(())
}

/// What a reconcile reads from the API server itself rather than the caches, each at most
/// once and only when needed: the Deployment, and whether the rules are current.
struct Running<'a> {
    api: Api<Deployment>,
    ad: &'a AgentDeployment,
    ctx: &'a Context,
    env: &'a Environment,
    read: Option<Option<Deployment>>,
    confirmed: bool,
    /// When the reconcile read its AgentDeployment from the cache.
    observed: std::time::Instant,
}

impl<'a> Running<'a> {
    fn new(ctx: &'a Context, ad: &'a AgentDeployment, env: &'a Environment) -> Running<'a> {
        Running {
            api: Api::namespaced(ctx.client.clone(), &ad.namespace().unwrap_or_default()),
            ad,
            ctx,
            env,
            read: None,
            confirmed: false,
            observed: std::time::Instant::now(),
        }
    }

    /// Fails with [`Error::Stale`] unless the rules were built from what the API server holds
    /// (asked once per reconcile, and shared with the reconciles running alongside).
    async fn confirm_current(&mut self) -> Result<(), Error> {
        if !self.confirmed {
            let namespace = self.ad.namespace().unwrap_or_default();
            (self.ctx)
                .confirm_current(self.env, self.observed, &namespace, &self.ad.spec)
                .await?;
            self.confirmed = true;
        }
        Ok(())
    }

    /// The Deployment as the API server has it now (one GET the first time).
    async fn get(&mut self) -> Result<Option<&Deployment>, Error> {
        if self.read.is_none() {
            self.read = Some(self.api.get_opt(&self.ad.name_any()).await?);
        }
        Ok(self.read.as_ref().and_then(Option::as_ref))
    }
}

/// Records what became of a rollout intent left in status (applied, or superseded by a later
/// spec before it reached the workload), once the workload shows it.
async fn settle_intent(
    ad: &AgentDeployment,
    digest: &str,
    deployment: &mut Running<'_>,
    st: &mut AgentDeploymentStatus,
) -> Result<(), Error> {
    let Some(intent) = st.rollout_intent.clone() else {
        return Ok(());
    };
    let ctx = deployment.ctx;
    let running = deployment.get().await?.and_then(workload::digest_of);
    let generation = ad.metadata.generation.unwrap_or(0);
    if let Some(outcome) = intent.outcome(running, generation, digest) {
        let message = match outcome {
            RolloutOutcome::Applied => "the Deployment runs it".to_owned(),
            RolloutOutcome::Superseded => format!(
                "the spec changed (generation {generation}, {digest}) before it was written; the Deployment runs {}",
                running.unwrap_or("nothing")
            ),
        };
        let draft = record::rollout_outcome(ad, &intent, outcome.as_str(), &message);
        ctx.audit.record(draft).await.map_err(Error::Audit)?;
        st.rollout_intent = None;
    }
    Ok(())
}

/// Whether the status changed in anything but the evaluation time.
fn differs(old: &AgentDeploymentStatus, new: &AgentDeploymentStatus) -> bool {
    let strip = |s: &AgentDeploymentStatus| AgentDeploymentStatus {
        decision: s.decision.as_ref().map(Decision::without_detail),
        ..s.clone()
    };
    strip(old) != strip(new)
}

/// Whether `old` (a status as cached) already holds `decision` for `generation`: then nothing
/// new is acted on, and the rules need no check that they are current.
fn decided_before(
    old: &AgentDeploymentStatus,
    generation: Option<i64>,
    decision: &Decision,
) -> bool {
    let same = |d: &Decision| d.for_status().without_detail();
    old.observed_generation == generation && old.decision.as_ref().map(same) == Some(same(decision))
}

/// What the operator keeps of an AgentDeployment in memory: the decision in its status without
/// its detail (see [`Decision::without_detail`]), which is most of the object.
pub fn slim(ad: &mut AgentDeployment) {
    if let Some(st) = ad.status.as_mut() {
        slim_status(st);
    }
    ad.spec.drop_template();
    if let Some(annotations) = ad.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// kubectl's copy of the whole object as last applied: nothing the operator reads, and as big
/// as the spec.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

fn slim_status(st: &mut AgentDeploymentStatus) {
    if let Some(d) = st.decision.as_mut() {
        *d = d.without_detail();
    }
}

/// The ApprovalRequest for this change (generation and digest), created when missing (its name
/// is derived from both, so a restart never creates a second one). `Ok(Err(why))`: an object of
/// that name exists but is not this change's request; it is never used.
async fn ensure_approval_request(
    ctx: &Context,
    ad: &AgentDeployment,
    digest: &str,
    decision: &Decision,
    requester: Option<&Identity>,
) -> Result<Result<ApprovalRequest, String>, Error> {
    let ns = ad.namespace().unwrap_or_default();
    let api: Api<ApprovalRequest> = Api::namespaced(ctx.client.clone(), &ns);
    let generation = ad.metadata.generation.unwrap_or(0);
    let uid = ad.uid().unwrap_or_default();
    let name = approval_request_name(&ad.name_any(), generation, digest);
    let requirements = approval::requirements(decision);
    let not_ours = |apr: &ApprovalRequest| {
        approval::binding_problem(&apr.spec, &uid, generation, digest).map(|why| {
            format!(
                "ApprovalRequest {name} is not the request for this spec ({why}), so it is not used; the rollout waits until it is gone"
            )
        })
    };
    let cached = ctx.requests.get(&ObjectRef::new(&name).within(&ns));
    if let Some(existing) = cached.as_deref() {
        if let Some(conflict) = not_ours(existing) {
            tracing::warn!(namespace = %ns, %conflict, "approval request conflict");
            return Ok(Err(conflict));
        }
        let phase = existing.status.as_ref().and_then(|s| s.phase);
        if !approval::outdated(phase, &existing.spec.requirements, &requirements) {
            return Ok(Ok(existing.clone()));
        }
        // Acts stored on it that the request controller has not recorded yet are recorded now,
        // before it goes.
        let acts = Acts::read(existing, &ctx.stamp_key).map_err(Error::Config)?;
        let eval = acts.evaluate(&existing.spec, None, false, Utc::now());
        super::approval_request::record_new_acts(ctx, existing, &acts, &eval).await?;
        let uid = existing.uid().unwrap_or_default();
        let replaced = record::agent(
            ad,
            digest,
            requester,
            AuditEvent::PolicyEvaluated,
            "replace approval request",
            "approval_requirements_changed",
            &format!("approval-replaced/{uid}"),
        );
        ctx.audit.record(replaced).await.map_err(Error::Audit)?;
        let dp = kube::api::DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        api.delete(&name, &dp).await?;
        tracing::info!(namespace = %ns, name = %name, "approval requirements changed; request replaced");
    }
    let expiry = decision
        .approval_requirements
        .iter()
        .filter_map(|r| policy::parse_expiry(&r.expiry).ok())
        .min()
        .unwrap_or(chrono::Duration::hours(24));
    let expires_at = Utc::now()
        .checked_add_signed(expiry)
        .unwrap_or(chrono::DateTime::<Utc>::MAX_UTC)
        .trunc_subsecs(0);
    let asked = record::approval_requested(
        ad,
        digest,
        requester,
        &name,
        &requirements,
        expires_at,
        decision,
    );
    ctx.audit.record(asked).await.map_err(Error::Audit)?;
    let spec = ApprovalRequestSpec {
        deployment_ref: DeploymentRef {
            name: ad.name_any(),
            uid: uid.clone(),
            generation,
        },
        spec_digest: digest.to_owned(),
        requester: requester.map(|r| Requester {
            username: r.username.clone(),
            uid: r.uid.clone(),
            groups: r.groups.clone(),
        }),
        environment: ad.spec.environment.clone(),
        agent: ad.spec.agent.clone(),
        platform: ad.spec.platform,
        action: ad.spec.action,
        justification: ad.spec.justification.clone(),
        requirements,
        expires_at,
    };
    let mut apr = ApprovalRequest::new(&name, spec);
    apr.metadata.owner_references = ad.controller_owner_ref(&()).map(|o| vec![o]);
    apr.metadata.labels = Some([(workload::OWNER_LABEL.to_owned(), ad.name_any())].into());
    let stored = super::create_or_get(&api, &name, &apr).await?;
    Ok(match not_ours(&stored) {
        Some(conflict) => Err(conflict),
        None => Ok(stored),
    })
}

/// Whether a step runs: asked for in the spec and not left out by its capability.
fn step_active(wanted: bool, capability: &str, decision: &Decision) -> bool {
    wanted
        && !decision
            .skipped_steps
            .iter()
            .chain(&decision.degraded_steps)
            .any(|s| s.capability == capability)
}

/// The approval a rollout rests on: the request and the verified acts of its quorum.
struct Approval<'a> {
    request: &'a str,
    quorum: &'a [&'a SignedAct],
}

/// Rolls out spec `digest` (allowed, and approved where required: `approval`) and follows its
/// health.
async fn rollout(
    ad: &AgentDeployment,
    digest: &str,
    requester: Option<&Identity>,
    approval: Option<Approval<'_>>,
    decision: &Decision,
    live: &mut Running<'_>,
    st: &mut AgentDeploymentStatus,
) -> Result<(Phase, String), Error> {
    let ctx = live.ctx;
    let ns = ad.namespace().unwrap_or_default();
    let name = ad.name_any();
    if st.failed_digest.as_deref() == Some(digest) {
        return Ok((
            Phase::Failed,
            st.message
                .clone()
                .unwrap_or_else(|| format!("the rollout of {digest} failed")),
        ));
    }
    let current = live.get().await?.cloned();
    let running = current.filter(|d| workload::digest_of(d) == Some(digest));
    let Some(deployment) = running else {
        // Write-ahead, in order: the intent in status (so that its outcome is recorded even if
        // the spec moves on while the operator is down), the intent in the log, the write, and
        // its outcome in the log.
        // Only rules that are current let a spec out.
        live.confirm_current().await?;
        let template = ad
            .spec
            .pod_template()
            .map_err(Error::Config)?
            .ok_or_else(|| Error::Config("spec.template is missing".into()))?;
        let intent = RolloutIntent {
            generation: ad.metadata.generation.unwrap_or(0),
            digest: digest.to_owned(),
        };
        if st.rollout_intent.as_ref() != Some(&intent) {
            super::status::announce(st, intent.clone());
            write_status(ctx, ad, st).await?;
        }
        let mut started = record::agent(
            ad,
            digest,
            requester,
            AuditEvent::DeploymentStarted,
            "roll out",
            "success",
            "rollout",
        );
        crate::json::set(
            &mut started.metadata,
            "approval",
            match &approval {
                Some(a) => serde_json::json!({
                    "request": a.request, "approvers": record::acts_summary(a.quorum),
                }),
                None => serde_json::json!({"required": false, "outcome": decision.outcome}),
            },
        );
        // What runs: the change report names the images of each change.
        crate::json::set(
            &mut started.metadata,
            "images",
            crate::crd::agent_deployment::images(&ad.spec),
        );
        ctx.audit.record(started).await.map_err(Error::Audit)?;
        if let Err(e) = apply(ctx, ad, &ns, template, digest).await {
            // An attempt, not an outcome: the write may still have happened (a timeout), and
            // the outcome (applied, superseded, withheld) follows once the operator sees it.
            let failed = record::rollout_outcome(ad, &intent, "write_failed", &e.to_string());
            if let Err(why) = ctx.audit.record(failed).await {
                tracing::warn!(namespace = %ns, name = %name, %why, "cannot record a failed write");
            }
            return Err(e);
        }
        let applied = record::rollout_outcome(ad, &intent, "applied", "written to the Deployment");
        ctx.audit.record(applied).await.map_err(Error::Audit)?;
        st.rollout_intent = None;
        st.deployed_digest = Some(digest.to_owned());
        return Ok((Phase::Progressing, format!("rolling out {digest}")));
    };
    st.deployed_digest = Some(digest.to_owned());
    let healthy_phase = if decision.skipped_steps.is_empty() && decision.degraded_steps.is_empty() {
        Phase::Deployed
    } else {
        Phase::Degraded
    };
    let healthy_template = Some(workload::template_hash(&deployment.spec.template));
    if !step_active(ad.spec.steps.health_check, "health-check", decision) {
        st.healthy_digest = Some(digest.to_owned());
        st.healthy_template = healthy_template;
        return Ok((healthy_phase, "rolled out (no health check)".into()));
    }
    match workload::rollout(&deployment) {
        Rollout::Progressing(m) => Ok((Phase::Progressing, m)),
        Rollout::Failed(m) => fail(live, ad, &deployment, digest, decision, st, m).await,
        Rollout::Available => match run_hooks(ctx, ad, digest, decision, st).await? {
            Hooks::Running(m) => Ok((Phase::Progressing, m)),
            Hooks::TestsFailed(m) => fail(live, ad, &deployment, digest, decision, st, m).await,
            Hooks::Done(problem) => {
                st.healthy_digest = Some(digest.to_owned());
                st.healthy_template = healthy_template;
                match problem {
                    Some(m) => Ok((Phase::Degraded, format!("{digest} is available; {m}"))),
                    None => Ok((healthy_phase, format!("{digest} is available"))),
                }
            }
        },
    }
}

/// Records a failed rollout of `digest` and rolls back to the last healthy spec when allowed:
/// auto-rollback is the operator's own act (allowed by the `auto-rollback` capability), restores
/// only the exact template that passed its health check, and is recorded before and after.
async fn fail(
    live: &mut Running<'_>,
    ad: &AgentDeployment,
    deployment: &Deployment,
    digest: &str,
    decision: &Decision,
    st: &mut AgentDeploymentStatus,
    why: String,
) -> Result<(Phase, String), Error> {
    let ctx = live.ctx;
    let ns = ad.namespace().unwrap_or_default();
    st.failed_digest = Some(digest.to_owned());
    let target = st
        .healthy_digest
        .clone()
        .filter(|h| h != digest)
        .zip(st.healthy_template.clone());
    let Some((good, hash)) = target else {
        return Ok((Phase::Failed, format!("rollout of {digest} failed ({why})")));
    };
    if !step_active(ad.spec.steps.auto_rollback, "auto-rollback", decision) {
        return Ok((Phase::Failed, format!("rollout of {digest} failed ({why})")));
    }
    let Some(template) = previous_template(ctx, deployment, &good, &hash).await? else {
        return Ok((
            Phase::Failed,
            format!(
                "rollout of {digest} failed ({why}); no ReplicaSet of the Deployment holds the healthy template of {good} to roll back to"
            ),
        ));
    };
    let operator = |event, operation: &str, status: &str, key: String| {
        let mut d = record::agent(ad, digest, None, event, operation, status, &key);
        d.user_id = record::OPERATOR.to_owned();
        crate::json::set(&mut d.metadata, "rollbackTo", good.clone());
        crate::json::set(&mut d.metadata, "template", hash.clone());
        record::notify(&mut d, decision);
        d
    };
    let started = operator(
        AuditEvent::RollbackStarted,
        "auto-rollback",
        "intent",
        format!("rollback-to/{good}"),
    );
    // The rollback is a write like any other: only on rules that are current.
    live.confirm_current().await?;
    ctx.audit.record(started).await.map_err(Error::Audit)?;
    apply(ctx, ad, &ns, template, &good).await?;
    let done = operator(
        AuditEvent::RollbackCompleted,
        "auto-rollback",
        "applied",
        format!("rollback-applied/{good}"),
    );
    ctx.audit.record(done).await.map_err(Error::Audit)?;
    st.deployed_digest = Some(good.clone());
    Ok((
        Phase::Failed,
        format!("rollout of {digest} failed ({why}); rolled back to {good}"),
    ))
}

/// Where the hook steps of a rolled-out spec stand.
enum Hooks {
    /// A Job is still running.
    Running(String),
    /// Integration tests failed: the rollout failed.
    TestsFailed(String),
    /// All done; a KB sync failure degrades the deployment.
    Done(Option<String>),
}

/// Creates (once) and follows the Jobs of the spec's hook steps that their capabilities allow.
async fn run_hooks(
    ctx: &Context,
    ad: &AgentDeployment,
    digest: &str,
    decision: &Decision,
    st: &mut AgentDeploymentStatus,
) -> Result<Hooks, Error> {
    let ns = ad.namespace().unwrap_or_default();
    let name = ad.name_any();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let steps = [
        ("integration-tests", &ad.spec.steps.integration_tests),
        ("kb-sync", &ad.spec.steps.kb_sync),
    ];
    let mut statuses = Vec::new();
    for (step, hook) in steps {
        let Some(hook) = hook.as_ref().filter(|_| step_active(true, step, decision)) else {
            continue;
        };
        let job_name = workload::hook_job_name(&name, step, digest);
        let job = match jobs.get_opt(&job_name).await? {
            Some(job) => job,
            None => {
                let owner = ad
                    .controller_owner_ref(&())
                    .ok_or_else(|| Error::Config("AgentDeployment has no UID yet".into()))?;
                let job = workload::hook_job(&name, &ns, step, hook, digest, owner);
                super::create_or_get(&jobs, &job_name, &job).await?
            }
        };
        let (state, message) = match workload::job_outcome(&job) {
            None => (StepState::Running, None),
            Some(Ok(())) => (StepState::Succeeded, None),
            Some(Err(m)) => (StepState::Failed, Some(m)),
        };
        statuses.push(StepStatus {
            name: step.to_owned(),
            job: job_name,
            digest: digest.to_owned(),
            state,
            message,
        });
    }
    st.steps = statuses.clone();
    let describe = |s: &StepStatus| {
        format!(
            "{} (Job {}): {}",
            s.name,
            s.job,
            s.message.as_deref().unwrap_or("failed")
        )
    };
    if let Some(s) = statuses.iter().find(|s| s.state == StepState::Running) {
        return Ok(Hooks::Running(format!(
            "running {} (Job {})",
            s.name, s.job
        )));
    }
    if let Some(s) = statuses
        .iter()
        .find(|s| s.state == StepState::Failed && s.name == "integration-tests")
    {
        return Ok(Hooks::TestsFailed(describe(s)));
    }
    Ok(Hooks::Done(
        statuses
            .iter()
            .find(|s| s.state == StepState::Failed)
            .map(describe),
    ))
}

/// Server-side applies the owned Deployment for `digest`.
async fn apply(
    ctx: &Context,
    ad: &AgentDeployment,
    ns: &str,
    template: k8s_openapi::api::core::v1::PodTemplateSpec,
    digest: &str,
) -> Result<(), Error> {
    let owner = ad
        .controller_owner_ref(&())
        .ok_or_else(|| Error::Config("AgentDeployment has no UID yet".into()))?;
    let deployment = workload::deployment(&ad.name_any(), ns, &ad.spec, template, digest, owner);
    Api::<Deployment>::namespaced(ctx.client.clone(), ns)
        .patch(
            &ad.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&deployment),
        )
        .await?;
    tracing::info!(namespace = %ns, name = %ad.name_any(), %digest, "applied Deployment");
    Ok(())
}

/// The pod template of spec `digest` from the ReplicaSets the Deployment controls, only if it
/// hashes to `hash` (the template that passed its health check): a ReplicaSet someone else made
/// with our labels and annotations is never restored.
async fn previous_template(
    ctx: &Context,
    deployment: &Deployment,
    digest: &str,
    hash: &str,
) -> Result<Option<k8s_openapi::api::core::v1::PodTemplateSpec>, Error> {
    let ns = deployment.namespace().unwrap_or_default();
    let owner = deployment.uid().unwrap_or_default();
    let rs = Api::<ReplicaSet>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels(&format!(
            "{}={}",
            workload::OWNER_LABEL,
            deployment.name_any()
        )))
        .await?;
    let found = rs
        .items
        .into_iter()
        .filter(|r| {
            r.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && o.uid == owner)
        })
        .filter_map(|r| r.spec.template)
        .find(|t| {
            let annotated = t
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get(workload::DIGEST_ANNOTATION))
                .map(String::as_str);
            annotated == Some(digest) && workload::template_hash(t) == hash
        });
    // The Deployment controller adds this label to ReplicaSet templates; it is not ours to apply.
    Ok(found.map(|mut t| {
        if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            labels.remove("pod-template-hash");
        }
        t
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::AgentDeploymentSpec;
    use crate::crd::agent_deployment::images;

    /// The cache keeps the pod template as JSON text (a typed one is most of an object's
    /// memory) and no kubectl copy of the object, yet answers template, digest and images as
    /// the whole object does; what stands in for the template is never written, and never read
    /// from what the API server sends.
    #[test]
    fn a_cached_copy_answers_for_the_whole_spec() {
        let whole: AgentDeployment = serde_json::from_value(serde_json::json!({
            "apiVersion": "dvo.caat.io/v1alpha1", "kind": "AgentDeployment",
            "metadata": {"name": "gha", "namespace": "agents", "annotations": {
                LAST_APPLIED: "{\"spec\": {}}", "dvo.caat.io/requester-stamp": "{}"}},
            "spec": {"agent": "GHA", "platform": "langchain", "environment": "production",
                "template": {"spec": {
                    "initContainers": [{"name": "init", "image": "init:1"}],
                    "containers": [{"name": "b", "image": "gha:2"}, {"name": "a", "image": "side:1"}]}}},
        }))
        .unwrap();
        let mut cached = whole.clone();
        slim(&mut cached);
        assert!(cached.spec.template.is_none());
        assert_eq!(
            cached.spec.pod_template().unwrap(),
            whole.spec.template.as_deref().cloned()
        );
        assert_eq!(spec_digest(&cached.spec), spec_digest(&whole.spec));
        assert_eq!(images(&cached.spec), ["gha:2", "init:1", "side:1"]);
        assert!(!cached.annotations().contains_key(LAST_APPLIED));
        assert!(
            cached
                .annotations()
                .contains_key("dvo.caat.io/requester-stamp")
        );
        let again = {
            let mut c = cached.clone();
            slim(&mut c);
            c
        };
        assert_eq!(again, cached, "slimming twice changes nothing");

        let written = serde_json::to_value(&cached.spec).unwrap();
        assert!(written.get("template").is_none());
        assert!(
            written.get("withoutTemplate").is_none() && written.get("without_template").is_none()
        );
        let mut sent = serde_json::to_value(&whole.spec).unwrap();
        sent["withoutTemplate"] = serde_json::json!({"digest": "sha256:forged", "images": []});
        sent["without_template"] = sent["withoutTemplate"].clone();
        let read: AgentDeploymentSpec = serde_json::from_value(sent).unwrap();
        assert_eq!(read.without_template, None);
        assert_eq!(spec_digest(&read), spec_digest(&whole.spec));

        // A template whose text would not read back (found by a review: k8s-openapi reads
        // year 0 with an offset and writes a year it cannot read) stays typed.
        let mut odd = whole.clone();
        odd.spec.template.as_mut().unwrap().metadata = serde_json::from_value(
            serde_json::json!({"creationTimestamp": "0000-01-01T00:00:00+01:00"}),
        )
        .unwrap();
        let mut cached = odd.clone();
        slim(&mut cached);
        assert!(cached.spec.template.is_some());
        assert_eq!(
            cached.spec.pod_template().unwrap(),
            odd.spec.template.as_deref().cloned()
        );
        assert_eq!(spec_digest(&cached.spec), spec_digest(&odd.spec));
    }

    #[test]
    fn an_audit_failure_is_what_the_status_says() {
        let waiting: AgentDeploymentStatus = serde_json::from_value(serde_json::json!({
            "phase": "PendingApproval", "message": "ApprovalRequest gha-g1-x: waiting for approvals",
            "conditions": [{"type": "Ready", "status": "False", "reason": "PendingApproval",
                "message": "waiting for approvals", "lastTransitionTime": "2026-11-26T00:00:00Z"}],
        }))
        .unwrap();
        let now = "2026-11-26T01:00:00Z".parse().unwrap();
        let held = held_by_audit(Some(&waiting), "etcd is down", Some(3), now);
        let said = "held: the audit log could not record the next step, so nothing is done until it can (etcd is down)";
        assert_eq!(held.message.as_deref(), Some(said));
        let ready = held.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            (
                ready.status.as_str(),
                ready.reason.as_str(),
                ready.message.as_str()
            ),
            ("False", "AuditLogUnavailable", said)
        );
        assert_eq!(ready.observed_generation, Some(3));
        assert_eq!(
            held.phase, waiting.phase,
            "the phase is what it was: nothing happened"
        );
        assert!(held_by_audit(None, "x", None, now).message.is_some());
    }

    /// A policy renamed (or its non-matching conditions edited, or priorities reordered)
    /// changes only the detail of a decision: the status is still written again (found by a
    /// review: it kept naming a policy that no longer existed).
    #[test]
    fn a_change_of_detail_alone_is_written() {
        use crate::policy::{Request, Rules, decide};
        let mapping: crate::identity::RoleMapping =
            crate::yaml::from_str("users: {adm: [admin]}").unwrap();
        let spec: crate::crd::AgentDeploymentSpec = serde_json::from_value(serde_json::json!({
            "agent": "GHA", "platform": "langchain", "environment": "staging",
            "template": {"spec": {"containers": [{"name": "agent", "image": "gha:1"}]}},
        }))
        .unwrap();
        let req = Request {
            namespace: "agents".into(),
            labels: Default::default(),
            spec,
            requester: Some(Identity {
                username: "adm".into(),
                uid: None,
                groups: vec![],
            }),
            staging_validated: true,
        };
        let p = |y: &str| -> crate::crd::deployment_policy::DeploymentPolicySpec {
            crate::yaml::from_str(y).unwrap()
        };
        let rules = |name: &str| {
            Rules::new(
                [
                    (name.to_owned(), p("{action: Allow, priority: 10}")),
                    (
                        "audit".to_owned(),
                        p(
                            "{action: AuditOnly, priority: 5, conditions: [{field: agent, operator: Equals, value: GHA}]}",
                        ),
                    ),
                ],
                Default::default(),
                mapping.clone(),
            )
        };
        let now = Utc::now();
        let a = decide(&rules("allow-staging"), &req, now);
        let b = decide(&rules("allow-staging-v2"), &req, now);
        assert_ne!(a.matched_policies, b.matched_policies);
        let approved = super::super::status::Approved {
            met: true,
            reason: "NotRequired".into(),
            message: "no approval required".into(),
        };
        let concluded = |from: &AgentDeploymentStatus, d: &Decision| {
            let mut st = from.clone();
            st.observed_generation = Some(1);
            super::super::status::conclude(
                &mut st,
                d,
                Phase::Deployed,
                "ok",
                &approved,
                Some(1),
                now,
            );
            st
        };
        // What the API server holds after the first reconcile, and what the cache keeps of it.
        let stored = concluded(&AgentDeploymentStatus::default(), &a);
        let mut cached = stored.clone();
        slim_status(&mut cached);
        // The same decision again is known; the renamed one is new and written.
        assert!(decided_before(&cached, Some(1), &a));
        assert!(!decided_before(&cached, Some(1), &b));
        assert!(
            !decided_before(&cached, Some(2), &a),
            "a new generation is new"
        );
        assert!(
            !differs(&cached, &concluded(&cached, &a)),
            "nothing new: nothing written"
        );
        assert!(
            differs(&cached, &concluded(&cached, &b)),
            "the renamed policy is written"
        );
    }
}
