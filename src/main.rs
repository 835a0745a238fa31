//! `dvo`: the dvo-operator binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dvo_operator::cli::{evaluate, test_runner};

/// Governance for AI agent deployments on Kubernetes.
#[derive(Parser)]
#[command(name = "dvo", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML (what crds/ holds).
    Crds,
    /// Decide offline what happens to one AgentDeployment, with the trace. Exit code: 0 allow,
    /// 3 deny, 4 approval required, 5 manual action required, 1 bad input.
    Evaluate(evaluate::EvaluateArgs),
    /// Run policy test suites (YAML files under DIR) and report pass/fail. Exit code 1 when a
    /// case fails.
    Test {
        /// Directory (or file) of test suites.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds => {
            print!("{}", dvo_operator::crd::crds_yaml());
            Ok(0)
        }
        Command::Evaluate(args) => evaluate::run(&args).map(|(text, code)| {
            print!("{text}");
            code
        }),
        Command::Test { dir } => test_runner::run(&dir).map(|(text, summary)| {
            print!("{text}");
            u8::from(summary.failed > 0)
        }),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
