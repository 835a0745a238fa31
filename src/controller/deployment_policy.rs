//! The DeploymentPolicy reconciler: `Accepted`, or the reasons the policy cannot be evaluated.

use std::sync::Arc;

use chrono::Utc;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;

use super::{Context, Error, MANAGER, conditions};
use crate::crd::DeploymentPolicy;
use crate::policy;

/// Reconciles one DeploymentPolicy.
pub async fn reconcile(p: Arc<DeploymentPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let old = p.status.clone().unwrap_or_default();
    let mut st = old.clone();
    st.observed_generation = p.metadata.generation;
    let (ok, reason, message) = match policy::validate(&p.spec) {
        Ok(()) => (true, "Valid", "the policy is in force".to_owned()),
        Err(errors) => (
            false,
            "Invalid",
            format!(
                "{}; it fails closed: matching deployments are denied unless failurePolicy is Ignore",
                errors.join("; ")
            ),
        ),
    };
    conditions::set(
        &mut st.conditions,
        "Accepted",
        ok,
        reason,
        &message,
        p.metadata.generation,
        Utc::now(),
    );
    if st != old {
        let patch = serde_json::json!({"apiVersion": "dvo.caat.io/v1alpha1", "kind": "DeploymentPolicy", "status": st});
        Api::<DeploymentPolicy>::all(ctx.client.clone())
            .patch_status(
                &p.name_any(),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
    }
    Ok(Action::await_change())
}
