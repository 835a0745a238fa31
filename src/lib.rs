//! dvo-operator: governance in front of deployments of AI agents on Kubernetes.
//!
//! The pure core (`policy`, `capability`, `identity`) decides; the shells (CLI, controllers,
//! webhook) gather inputs, call the core and write results.
#![warn(missing_docs)]
// No panic path on user data outside tests: every parse is bounded and every failure an error.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic,
        clippy::arithmetic_side_effects
    )
)]

/// The Server-Side Apply field manager of everything the operator writes (controllers, audit
/// sinks' cursors, the webhook's registration and certificates).
pub const MANAGER: &str = "dvo-operator";

pub mod admission;
pub mod api;
pub mod approval;
pub mod audit;
pub mod capability;
pub mod cli;
pub mod client;
pub mod controller;
pub mod crd;
#[cfg(any(test, fuzzing))]
pub mod fuzz_targets;
pub mod health;
pub mod https;
pub mod identity;
pub mod json;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod webhook;
pub mod yaml;

/// Lowercase hexadecimal of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hexadecimal of the first `n` bytes (all of them when there are fewer).
pub fn hex_prefix(bytes: &[u8], n: usize) -> String {
    hex(bytes.get(..n).unwrap_or(bytes))
}

/// The bytes of a hexadecimal string; None when it is not one (odd length, other characters).
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i.saturating_add(2))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_round_trips_and_refuses_non_hex() {
        assert_eq!(
            super::unhex(&super::hex(&[0, 1, 0xab, 0xff])),
            Some(vec![0, 1, 0xab, 0xff])
        );
        for bad in ["abc", "zz", "0g", "é1"] {
            assert_eq!(super::unhex(bad), None, "{bad}");
        }
    }
}
