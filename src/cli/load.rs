//! Reading manifests from files and directories for the offline commands, with errors that
//! name the file, the document and the field.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::de::DeserializeOwned;

use crate::capability::CapabilitySet;
use crate::crd::{AgentDeployment, Capability, DeploymentPolicy, strict};
use crate::identity::RoleMapping;
use crate::policy;

/// The YAML files under `path` (itself, if a file), sorted, recursively.
pub fn yaml_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut out = Vec::new();
    let entries = std::fs::read_dir(path)
        .with_context(|| format!("cannot read directory {}", path.display()))?;
    for entry in entries {
        let p = entry?.path();
        if p.is_dir() {
            out.extend(yaml_files(&p)?);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Every document of kind `kind` in the YAML files under `path`, parsed as `T`, with its file.
pub fn objects<T: DeserializeOwned>(path: &Path, kind: &str) -> Result<Vec<(PathBuf, T)>> {
    let mut out = Vec::new();
    for file in yaml_files(path)? {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let docs: Vec<serde_json::Value> = crate::yaml::documents(&text)
            .map_err(|e| anyhow!("{}: invalid YAML: {e}", file.display()))?;
        for (i, value) in docs.into_iter().enumerate() {
            if value.is_null() {
                continue;
            }
            let at = || format!("{} (document {})", file.display(), i.saturating_add(1));
            let (Some(api_version), Some(found)) = (
                value.get("apiVersion").and_then(|k| k.as_str()),
                value.get("kind").and_then(|k| k.as_str()),
            ) else {
                bail!(
                    "{}: not a Kubernetes object (a mapping with apiVersion and kind)",
                    at()
                );
            };
            if api_version.split('/').next() == Some("dvo.caat.io")
                && !strict::KINDS.contains(&found)
            {
                bail!(
                    "{}: unknown kind {found:?} in {api_version} (the kinds are {})",
                    at(),
                    strict::KINDS.join(", ")
                );
            }
            if found != kind {
                continue;
            }
            let name = value
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(|n| n.as_str())
                .unwrap_or("<no name>")
                .to_owned();
            let json = value;
            let unknown = strict::unknown_fields(kind, &json);
            if !unknown.is_empty() {
                bail!(
                    "{}: {kind} {name}: unknown field{} {} (the API server refuses them)",
                    at(),
                    if unknown.len() == 1 { "" } else { "s" },
                    unknown.join(", ")
                );
            }
            let obj = serde_json::from_value(json)
                .map_err(|e| anyhow!("{}: {kind} {name}: {e}", file.display()))?;
            out.push((file.clone(), obj));
        }
    }
    Ok(out)
}

/// The single AgentDeployment in a file.
pub fn agent_deployment(file: &Path) -> Result<AgentDeployment> {
    let mut all: Vec<(PathBuf, AgentDeployment)> = objects(file, "AgentDeployment")?;
    match all.len() {
        1 => Ok(all.remove(0).1),
        0 => bail!(
            "{}: no AgentDeployment found (kind: AgentDeployment)",
            file.display()
        ),
        n => bail!(
            "{}: {n} AgentDeployments found; give a file with one",
            file.display()
        ),
    }
}

/// Policies under `path`, each checked with `validate()`: an invalid policy is an error here
/// (the cluster would refuse it at admission), and so is finding none (a wrong path must not
/// read as "no policy holds this back").
pub fn policies(path: &Path) -> Result<Vec<(String, crate::crd::DeploymentPolicySpec)>> {
    let found = objects::<DeploymentPolicy>(path, "DeploymentPolicy")?;
    if found.is_empty() {
        bail!(
            "{}: no DeploymentPolicy found (in .yaml or .yml files): nothing to evaluate against",
            path.display()
        );
    }
    let mut out = Vec::new();
    for (file, p) in found {
        let name = p.metadata.name.clone().ok_or_else(|| {
            anyhow!(
                "{}: a DeploymentPolicy has no metadata.name",
                file.display()
            )
        })?;
        if let Err(errors) = policy::validate(&p.spec) {
            bail!(
                "{}: DeploymentPolicy {name} is invalid: {}",
                file.display(),
                errors.join("; ")
            );
        }
        out.push((name, p.spec));
    }
    Ok(out)
}

/// Capability settings under `path` (defaults when `None`).
pub fn capabilities(path: Option<&Path>) -> Result<CapabilitySet> {
    let Some(path) = path else {
        return Ok(CapabilitySet::default());
    };
    let caps: Vec<(PathBuf, Capability)> = objects(path, "Capability")?;
    let named: Vec<(String, _)> = caps
        .into_iter()
        .map(|(_, c)| (c.metadata.name.unwrap_or_default(), c.spec))
        .collect();
    CapabilitySet::new(named.iter().map(|(n, s)| (n.as_str(), s.clone())))
        .map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// A role mapping file (empty mapping when `None`).
pub fn role_mapping(path: Option<&Path>) -> Result<RoleMapping> {
    let Some(path) = path else {
        return Ok(RoleMapping::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    RoleMapping::parse(&text).map_err(|e| anyhow!("{}: invalid role mapping: {e}", path.display()))
}
