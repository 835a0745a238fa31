//! `kubectl-dvo`: the kubectl plugin (`kubectl dvo ...`). Put it on PATH.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::arithmetic_side_effects
)]

use std::process::ExitCode;

use clap::Parser;
use dvo_operator::cli::plugin::Plugin;

fn main() -> ExitCode {
    match Plugin::parse().run() {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
