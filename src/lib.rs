//! dvo-operator: governance in front of deployments of AI agents on Kubernetes.
//!
//! The pure core (`policy`, `capability`, `identity`) decides; the shells (CLI, controllers,
//! webhook) gather inputs, call the core and write results.
#![warn(missing_docs)]

pub mod approval;
pub mod audit;
pub mod capability;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod health;
pub mod identity;
pub mod policy;

/// Lowercase hexadecimal of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
