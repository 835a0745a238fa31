//! The owned `apps/v1` Deployment of an AgentDeployment: how it is built from an approved spec,
//! and how its rollout is read. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};

use crate::crd::AgentDeploymentSpec;

/// Label on the Deployment and its pods naming the AgentDeployment.
pub const OWNER_LABEL: &str = "dvo.caat.io/agent-deployment";
/// Annotation on the Deployment and its pod template carrying the spec digest that was allowed.
pub const DIGEST_ANNOTATION: &str = "dvo.caat.io/spec-digest";

/// The Deployment for spec `digest` of AgentDeployment `name`, owned by `owner`. Only the pod
/// template from the spec is carried over: none of the AgentDeployment's own labels or
/// annotations (GitOps tracking labels stay on the object they belong to).
pub fn deployment(
    name: &str,
    namespace: &str,
    spec: &AgentDeploymentSpec,
    template: PodTemplateSpec,
    digest: &str,
    owner: OwnerReference,
) -> Deployment {
    let selector = BTreeMap::from([(OWNER_LABEL.to_owned(), name.to_owned())]);
    let mut template = template;
    let meta = template.metadata.get_or_insert_with(Default::default);
    meta.labels
        .get_or_insert_with(Default::default)
        .extend(selector.clone());
    meta.annotations
        .get_or_insert_with(Default::default)
        .insert(DIGEST_ANNOTATION.to_owned(), digest.to_owned());
    let mut labels = selector.clone();
    labels.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        "dvo-operator".to_owned(),
    );
    labels.insert(
        "app.kubernetes.io/name".to_owned(),
        spec.agent.to_lowercase(),
    );
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                DIGEST_ANNOTATION.to_owned(),
                digest.to_owned(),
            )])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: DeploymentSpec {
            replicas: Some(spec.replicas.unwrap_or(1)),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            progress_deadline_seconds: Some(spec.progress_deadline_seconds),
            template,
            ..Default::default()
        },
        status: None,
    }
}

/// The digest a Deployment was applied with.
pub fn digest_of(d: &Deployment) -> Option<&str> {
    d.metadata
        .annotations
        .as_ref()?
        .get(DIGEST_ANNOTATION)
        .map(String::as_str)
}

/// SHA-256 of a pod template as the API server stores it, without the `pod-template-hash` label
/// the Deployment controller adds to ReplicaSets: equal for a Deployment's template and the
/// ReplicaSet it made of it.
pub fn template_hash(template: &k8s_openapi::api::core::v1::PodTemplateSpec) -> String {
    use sha2::{Digest, Sha256};
    let mut t = template.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove("pod-template-hash");
    }
    let bytes = serde_json::to_vec(&t).unwrap_or_default();
    crate::hex(&Sha256::digest(bytes))
}

/// Where a rollout stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rollout {
    /// Not finished yet.
    Progressing(String),
    /// Every replica updated and available.
    Available,
    /// The Deployment controller gave up (progress deadline exceeded).
    Failed(String),
}

/// Reads a Deployment's rollout the way `kubectl rollout status` does.
pub fn rollout(d: &Deployment) -> Rollout {
    let (spec, Some(status)) = (&d.spec, &d.status) else {
        return Rollout::Progressing("waiting for the Deployment controller".into());
    };
    if status.observed_generation < d.metadata.generation {
        return Rollout::Progressing(
            "waiting for the Deployment controller to observe the new spec".into(),
        );
    }
    let conditions = status.conditions.as_deref().unwrap_or_default();
    if let Some(c) = conditions.iter().find(|c| {
        c.type_.as_deref() == Some("Progressing")
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    }) {
        return Rollout::Failed(
            c.message
                .clone()
                .unwrap_or_else(|| "progress deadline exceeded".into()),
        );
    }
    let want = spec.replicas.unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    if updated < want {
        Rollout::Progressing(format!("{updated} of {want} replicas updated"))
    } else if total > updated {
        Rollout::Progressing(format!(
            "{} old replicas pending termination",
            total.saturating_sub(updated)
        ))
    } else if available < updated {
        Rollout::Progressing(format!(
            "{available} of {updated} updated replicas available"
        ))
    } else {
        Rollout::Available
    }
}

/// The Job of hook step `step` (a capability name) for spec `digest`.
pub fn hook_job(
    ad_name: &str,
    namespace: &str,
    step: &str,
    hook: &crate::crd::agent_deployment::HookStep,
    digest: &str,
    owner: OwnerReference,
) -> k8s_openapi::api::batch::v1::Job {
    use k8s_openapi::api::batch::v1::{Job, JobSpec};
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    let name = hook_job_name(ad_name, step, digest);
    let labels = BTreeMap::from([
        (OWNER_LABEL.to_owned(), ad_name.to_owned()),
        ("dvo.caat.io/step".to_owned(), step.to_owned()),
    ]);
    Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels.clone()),
            annotations: Some(BTreeMap::from([(
                DIGEST_ANNOTATION.to_owned(),
                digest.to_owned(),
            )])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(hook.active_deadline_seconds),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".to_owned()),
                    containers: vec![Container {
                        name: step.to_owned(),
                        image: Some(hook.image.clone()),
                        command: (!hook.command.is_empty()).then(|| hook.command.clone()),
                        args: (!hook.args.is_empty()).then(|| hook.args.clone()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// The name of a hook step's Job: the AgentDeployment, the step and the digest.
pub fn hook_job_name(ad_name: &str, step: &str, digest: &str) -> String {
    let short = digest.trim_start_matches("sha256:").get(..10).unwrap_or("");
    let base: String = ad_name
        .chars()
        .take(51usize.saturating_sub(step.len()))
        .collect();
    format!("{base}-{step}-{short}")
}

/// How a hook Job ended, if it did: Ok(()) complete, Err(message) failed.
pub fn job_outcome(job: &k8s_openapi::api::batch::v1::Job) -> Option<Result<(), String>> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    let is = |t: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == t && c.status == "True")
    };
    if is("Complete").is_some() {
        return Some(Ok(()));
    }
    is("Failed").map(|c| {
        Err(c
            .message
            .clone()
            .or_else(|| c.reason.clone())
            .unwrap_or_else(|| "the Job failed".into()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};

    fn spec() -> AgentDeploymentSpec {
        serde_json::from_value(serde_json::json!({
            "agent": "GHA", "platform": "langchain", "environment": "staging", "replicas": 2,
            "template": {"metadata": {"labels": {"app": "gha"}}, "spec": {"containers": [{"name": "a", "image": "gha:1"}]}},
        }))
        .unwrap()
    }

    #[test]
    fn the_deployment_carries_the_template_digest_and_owner_only() {
        let owner = OwnerReference {
            api_version: "dvo.caat.io/v1alpha1".into(),
            kind: "AgentDeployment".into(),
            name: "gha".into(),
            uid: "u1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let s = spec();
        let d = deployment(
            "gha",
            "ns",
            &s,
            *s.template.clone().unwrap(),
            "sha256:x",
            owner.clone(),
        );
        assert_eq!(digest_of(&d), Some("sha256:x"));
        assert_eq!(d.metadata.owner_references, Some(vec![owner]));
        let ds = d.spec;
        assert_eq!(ds.replicas, Some(2));
        assert_eq!(ds.progress_deadline_seconds, Some(600));
        let labels = ds
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        assert_eq!(labels.get("app").map(String::as_str), Some("gha"));
        assert_eq!(labels.get(OWNER_LABEL).map(String::as_str), Some("gha"));
        assert_eq!(
            ds.selector
                .match_labels
                .unwrap()
                .get(OWNER_LABEL)
                .map(String::as_str),
            Some("gha")
        );
        let ann = ds.template.metadata.unwrap().annotations.unwrap();
        assert_eq!(
            ann.get(DIGEST_ANNOTATION).map(String::as_str),
            Some("sha256:x")
        );
    }

    #[test]
    fn rollout_states() {
        let with = |generation: i64,
                    observed: i64,
                    replicas: i32,
                    updated: i32,
                    available: i32,
                    total: i32,
                    deadline: bool| {
            let mut d = Deployment::default();
            d.metadata.generation = Some(generation);
            d.spec = DeploymentSpec {
                replicas: Some(replicas),
                ..Default::default()
            };
            d.status = Some(DeploymentStatus {
                observed_generation: Some(observed),
                updated_replicas: Some(updated),
                available_replicas: Some(available),
                replicas: Some(total),
                conditions: deadline.then(|| {
                    vec![DeploymentCondition {
                        type_: Some("Progressing".into()),
                        status: Some("False".into()),
                        reason: Some("ProgressDeadlineExceeded".into()),
                        message: Some("ReplicaSet \"x\" has timed out progressing.".into()),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            });
            rollout(&d)
        };
        assert!(matches!(
            with(2, 1, 2, 2, 2, 2, false),
            Rollout::Progressing(_)
        ));
        assert!(
            matches!(with(2, 2, 2, 1, 1, 2, false), Rollout::Progressing(m) if m == "1 of 2 replicas updated")
        );
        assert!(
            matches!(with(2, 2, 2, 2, 2, 3, false), Rollout::Progressing(m) if m.contains("old replicas"))
        );
        assert!(
            matches!(with(2, 2, 2, 2, 1, 2, false), Rollout::Progressing(m) if m == "1 of 2 updated replicas available")
        );
        assert_eq!(with(2, 2, 2, 2, 2, 2, false), Rollout::Available);
        assert_eq!(
            with(2, 2, 2, 0, 0, 2, true),
            Rollout::Failed("ReplicaSet \"x\" has timed out progressing.".into())
        );
        assert!(matches!(
            rollout(&Deployment::default()),
            Rollout::Progressing(_)
        ));
    }

    #[test]
    fn hook_job_names_fit_a_label_and_outcomes_read_from_conditions() {
        let long = "a".repeat(200);
        let name = hook_job_name(&long, "integration-tests", "sha256:0123456789abcdef");
        assert!(
            name.len() <= 63 && name.ends_with("-integration-tests-0123456789"),
            "{name}"
        );
        use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
        let job = |t: &str, status: &str| Job {
            status: Some(JobStatus {
                conditions: Some(vec![JobCondition {
                    type_: t.into(),
                    status: status.into(),
                    message: Some("BackoffLimitExceeded".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(job_outcome(&job("Complete", "True")), Some(Ok(())));
        assert_eq!(
            job_outcome(&job("Failed", "True")),
            Some(Err("BackoffLimitExceeded".into()))
        );
        assert_eq!(job_outcome(&job("Failed", "False")), None);
        assert_eq!(job_outcome(&Job::default()), None);
    }
}
