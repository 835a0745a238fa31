//! Prometheus metrics (`/metrics` on the health port): reconciles and their errors by kind,
//! decisions by outcome, pending approvals, approval latency, admission answers, audit appends,
//! sink lag and leadership. One registry for the process.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels naming a kind of ours.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// AgentDeployment, ApprovalRequest or DeploymentPolicy.
    pub kind: String,
}

/// Labels of a reconcile error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The kind reconciled.
    pub kind: String,
    /// `kube`, `config`, `audit`, `panic` or `stale` (the rules were behind what the API server holds).
    pub error: String,
}

/// A single free-form label value (outcome, result, sink).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ValueLabel {
    /// The value.
    pub value: String,
}

/// Labels of a notification delivery.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabel {
    /// The channel.
    pub channel: String,
    /// `delivered` or `failed`.
    pub outcome: String,
}

/// Labels of an admission answer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    /// The reviewed resource (agentdeployments, approvalrequests, deploymentpolicies, status).
    pub resource: String,
    /// `allowed` or `refused`.
    pub verdict: String,
}

/// Labels of a call of the dvo HTTP API.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    /// The HTTP status answered.
    pub code: String,
    /// Whether the call was written to the audit log (`false`: an unauthenticated refusal
    /// beyond the audit budget).
    pub audited: String,
}

/// Labels of an API request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The Kubernetes verb.
    pub verb: String,
    /// The resource (plural).
    pub resource: String,
}

/// Every metric of the operator.
pub struct Metrics {
    registry: Registry,
    /// Reconciles by kind.
    pub reconciles: Family<KindLabel, Counter>,
    /// Failed reconciles by kind and error class.
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// Decisions by outcome (Allow, RequireApproval, ManualActionRequired, Deny).
    pub decisions: Family<ValueLabel, Counter>,
    /// ApprovalRequests waiting for approvers.
    pub pending_approvals: Gauge,
    /// Seconds from an ApprovalRequest's creation to its approval.
    pub approval_latency: Histogram,
    /// Admission answers by resource and verdict.
    pub admissions: Family<AdmissionLabels, Counter>,
    /// Calls of the dvo HTTP API by status and whether they were audited.
    pub api_calls: Family<ApiLabels, Counter>,
    /// PolicyReport writes by result (`ok`, `error`): none while nothing changes.
    pub policy_report_writes: Family<ValueLabel, Counter>,
    /// Audit appends by result (`ok`, `error`).
    pub audit_appends: Family<ValueLabel, Counter>,
    /// Admission refusals answered although the audit log could not record them, by resource.
    pub unrecorded_refusals: Family<ValueLabel, Counter>,
    /// Entries of the chain a sink has not delivered yet, by sink.
    pub sink_lag: Family<ValueLabel, Gauge>,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
    /// Watch failures by kind (each watch retries on its own backoff).
    pub watch_errors: Family<KindLabel, Counter>,
    /// Notification deliveries by channel and outcome.
    pub notifications: Family<ChannelLabel, Counter>,
    /// Seconds a reconcile of an AgentDeployment took.
    pub reconcile_seconds: Histogram,
    /// Reconciles running now (bounded by the controllers' concurrency).
    pub reconciles_running: Gauge,
    /// Requests the operator made to the API server, by verb (`list`, `get`, `watch`, ...)
    /// and resource.
    pub api_requests: Family<RequestLabels, Counter>,
    /// Seconds the webhook took to answer an admission review (audit append included).
    pub admission_seconds: Histogram,
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("dvo");
    let m = Metrics {
        reconciles: Family::default(),
        reconcile_errors: Family::default(),
        decisions: Family::default(),
        pending_approvals: Gauge::default(),
        approval_latency: Histogram::new(exponential_buckets(30.0, 2.0, 14)),
        admissions: Family::default(),
        api_calls: Family::default(),
        policy_report_writes: Family::default(),
        audit_appends: Family::default(),
        unrecorded_refusals: Family::default(),
        sink_lag: Family::default(),
        watch_errors: Family::default(),
        notifications: Family::default(),
        reconcile_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        reconciles_running: Gauge::default(),
        api_requests: Family::default(),
        admission_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
        leader: Gauge::default(),
        registry: Registry::default(),
    };
    registry.register("reconciles", "Reconciles by kind", m.reconciles.clone());
    registry.register(
        "reconcile_errors",
        "Failed reconciles by kind and error class",
        m.reconcile_errors.clone(),
    );
    registry.register("decisions", "Decisions by outcome", m.decisions.clone());
    registry.register(
        "pending_approvals",
        "ApprovalRequests waiting for approvers",
        m.pending_approvals.clone(),
    );
    registry.register(
        "approval_latency_seconds",
        "Seconds from an ApprovalRequest's creation to its approval",
        m.approval_latency.clone(),
    );
    registry.register(
        "admissions",
        "Admission answers by resource and verdict",
        m.admissions.clone(),
    );
    registry.register(
        "policy_report_writes",
        "PolicyReport writes by result",
        m.policy_report_writes.clone(),
    );
    registry.register(
        "http_api_calls",
        "Calls of the dvo HTTP API by status and whether the audit log holds them",
        m.api_calls.clone(),
    );
    registry.register(
        "audit_appends",
        "Audit appends by result",
        m.audit_appends.clone(),
    );
    registry.register(
        "admission_refusals_unrecorded",
        "Admission refusals answered although the audit log could not record them",
        m.unrecorded_refusals.clone(),
    );
    registry.register(
        "audit_sink_lag_entries",
        "Entries a sink has not delivered yet",
        m.sink_lag.clone(),
    );
    registry.register(
        "leader",
        "1 while this replica holds the leader Lease",
        m.leader.clone(),
    );
    registry.register(
        "notifications",
        "Notification deliveries by channel and outcome",
        m.notifications.clone(),
    );
    registry.register(
        "watch_errors",
        "Watch failures by kind",
        m.watch_errors.clone(),
    );
    registry.register(
        "reconcile_seconds",
        "Seconds an AgentDeployment reconcile took",
        m.reconcile_seconds.clone(),
    );
    registry.register(
        "reconciles_running",
        "Reconciles running now",
        m.reconciles_running.clone(),
    );
    registry.register(
        "api_requests",
        "Requests to the API server by verb",
        m.api_requests.clone(),
    );
    registry.register(
        "admission_seconds",
        "Seconds the webhook took to answer an admission review",
        m.admission_seconds.clone(),
    );
    Metrics { registry, ..m }
});

/// One label value.
pub fn value(v: impl Into<String>) -> ValueLabel {
    ValueLabel { value: v.into() }
}

/// One kind label.
pub fn kind(k: impl Into<String>) -> KindLabel {
    KindLabel { kind: k.into() }
}

/// The metrics in the Prometheus text format.
pub fn encode() -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &METRICS.registry) {
        out = format!("# the metrics could not be encoded: {e}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_exposed_with_the_dvo_prefix() {
        METRICS.decisions.get_or_create(&value("Allow")).inc();
        METRICS.leader.set(1);
        let text = encode();
        assert!(
            text.contains("dvo_decisions_total{value=\"Allow\"}"),
            "{text}"
        );
        assert!(text.contains("dvo_leader 1"), "{text}");
        assert!(
            text.contains("# HELP dvo_approval_latency_seconds"),
            "{text}"
        );
    }
}
