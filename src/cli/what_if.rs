//! `kubectl dvo what-if -f new-policy.yaml`: every live AgentDeployment decided under the
//! policies in force and under those plus (or minus) the given ones, and the ones whose outcome
//! would change: the question a platform team asks before merging a policy.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Result, anyhow};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::load;
use crate::capability::CapabilitySet;
use crate::crd::{AgentDeployment, Capability, DeploymentPolicy, DeploymentPolicySpec};
use crate::identity::stamp::{ANNOTATION, Stamp};
use crate::policy::{self, Rules, what_if};

/// Arguments of `what-if`.
#[derive(clap::Args, Debug)]
pub struct WhatIfArgs {
    /// DeploymentPolicy manifests (a file or a directory) added, or replacing the policies of
    /// the same name.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<PathBuf>,
    /// Policies taken away (by name).
    #[arg(long)]
    pub remove: Vec<String>,
    /// Only AgentDeployments of this namespace (default: every namespace).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// The operator's namespace (its role mapping).
    #[arg(long, default_value = "dvo-system")]
    pub operator_namespace: String,
    /// The moment to decide at, RFC 3339 (default: now).
    #[arg(long)]
    pub at: Option<DateTime<Utc>>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// Output formats of `what-if`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A line per change, and why.
    Table,
    /// The changes as JSON.
    Json,
}

/// Runs `what-if` against the cluster of `client`.
pub async fn run(client: &Client, args: &WhatIfArgs) -> Result<(String, u8)> {
    if args.files.is_empty() && args.remove.is_empty() {
        return Err(anyhow!(
            "nothing to compare: give -f POLICY.yaml (added or replacing) or --remove NAME"
        ));
    }
    let mut added: Vec<(String, DeploymentPolicySpec)> = vec![];
    for file in &args.files {
        added.extend(load::policies(file)?);
    }
    let mut names = std::collections::BTreeSet::new();
    if let Some((twice, _)) = added.iter().find(|(name, _)| !names.insert(name.as_str())) {
        return Err(anyhow!(
            "DeploymentPolicy {twice} is given twice: give each proposed policy once"
        ));
    }
    let live = Api::<DeploymentPolicy>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    for name in &args.remove {
        if !live.iter().any(|p| p.name_any() == *name) {
            return Err(anyhow!(
                "--remove {name}: no such DeploymentPolicy in force"
            ));
        }
    }
    let capabilities = Api::<Capability>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let capabilities = CapabilitySet::new(
        capabilities
            .iter()
            .map(|c| (c.metadata.name.as_deref().unwrap_or(""), c.spec.clone())),
    )
    .map_err(|e| anyhow!("the capabilities in force: {e}"))?;
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &args.operator_namespace)
        .get_opt(crate::controller::ROLE_MAPPING_CONFIGMAP)
        .await?;
    let mapping =
        crate::controller::environment::role_mapping_of(cm.as_ref(), &args.operator_namespace)
            .map_err(|e| anyhow!(e))?;
    let current: Vec<(String, DeploymentPolicySpec)> = live
        .iter()
        .map(|p| (p.name_any(), p.spec.clone()))
        .collect();
    let proposed: Vec<(String, DeploymentPolicySpec)> = current
        .iter()
        .filter(|(name, _)| !args.remove.contains(name) && !added.iter().any(|(a, _)| a == name))
        .cloned()
        .chain(added.iter().cloned())
        .collect();
    let before = Rules::new(current, capabilities.clone(), mapping.clone());
    let after = Rules::new(proposed, capabilities, mapping.clone());

    // Every AgentDeployment: the staging evidence of one namespace may live in another.
    let all = Api::<AgentDeployment>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let requests: Vec<(String, policy::Request)> = all
        .iter()
        .filter(|ad| {
            args.namespace
                .as_ref()
                .is_none_or(|ns| ad.namespace().as_ref() == Some(ns))
        })
        .map(|ad| {
            // The requester as stamped for this very spec (its signature is not checked here:
            // the stamp key stays with the operator); the staging evidence as the operator
            // computes it.
            let digest = crate::crd::agent_deployment::spec_digest(&ad.spec);
            let requester = ad
                .annotations()
                .get(ANNOTATION)
                .and_then(|a| Stamp::parse(a).ok())
                .filter(|s| s.digest == digest)
                .map(|s| s.identity);
            let staging = policy::staging_validated(ad, &all, &mapping);
            let name = format!("{}/{}", ad.namespace().unwrap_or_default(), ad.name_any());
            (name, super::evaluate::request_for(ad, requester, staging))
        })
        .collect();
    let at = args.at.unwrap_or_else(Utc::now);
    let changes = what_if::changes(
        &before,
        &after,
        requests.iter().map(|(n, r)| (n.clone(), r)),
        at,
    );
    let text = match args.output {
        Format::Json => serde_json::to_string_pretty(&changes)? + "\n",
        Format::Table => {
            let mut out = format!(
                "{} AgentDeployments decided at {} (requesters as stamped, signatures not checked): {} would change\n",
                requests.len(),
                at.to_rfc3339(),
                changes.len()
            );
            for c in &changes {
                writeln!(
                    out,
                    "{}: {:?} -> {:?}",
                    c.agent_deployment, c.now, c.proposed
                )?;
                for why in &c.why {
                    writeln!(out, "  {why}")?;
                }
            }
            out
        }
    };
    Ok((text, 0))
}
