//! The commands that need no running operator: `evaluate`, `test` and `audit`, shared by
//! `dvo` and `kubectl dvo`; manifest loading; and the `kubectl dvo` plugin.

pub mod audit;
pub mod evaluate;
pub mod load;
pub mod plugin;
pub mod test_runner;
pub mod what_if;

use std::path::PathBuf;

use clap::Subcommand;

/// `evaluate`, `test` and `audit`.
#[derive(Subcommand)]
pub enum Offline {
    /// Decide offline what happens to one AgentDeployment, with the trace. Exit code: 0 allow,
    /// 3 deny, 4 approval required, 5 manual action required, 1 bad input.
    Evaluate(evaluate::EvaluateArgs),
    /// Run policy test suites (YAML files under DIR) and report pass/fail. Exit code 1 when a
    /// case fails.
    Test {
        /// Directory (or file) of test suites.
        dir: PathBuf,
    },
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
}

/// `audit` subcommands.
#[derive(Subcommand)]
pub enum AuditCommand {
    /// Verify an exported audit log: every hash, link, seq, segment and checkpoint. Exit code 0
    /// intact, 3 tampered (the first bad entry is named), 1 bad input.
    Verify(audit::LogArgs),
    /// Print the log of the cluster: `--format json` (verifiable with `verify -f`), `jsonl` or `cef`.
    Export(audit::ReadArgs),
    /// Print the newest entries (default 20) as JSON lines, or `--format cef`.
    Tail(audit::ReadArgs),
    /// The entries that match: by time, user, event type, environment, namespace, agent,
    /// outcome, severity; as a table, JSON, JSON lines or CSV. The chain read is verified, and
    /// the output says what that found (exit code 3 when damaged).
    Query(Box<audit::QueryArgs>),
    /// The change-management report of a period: each production change with its requester,
    /// approvals, outcomes, rollbacks, break-glass and refused attempts; totals, approval latency,
    /// changes per week, refusals by reason; and the chain verification it rests on. Markdown,
    /// one self-contained HTML page with charts, or JSON.
    Report(Box<audit::ReportArgs>),
}

impl Offline {
    /// Runs the command, printing its output; the exit code.
    pub fn run(self) -> anyhow::Result<u8> {
        let (text, code) = match self {
            Offline::Evaluate(args) => evaluate::run(&args)?,
            Offline::Test { dir } => {
                let (text, summary) = test_runner::run(&dir)?;
                (text, u8::from(summary.failed > 0))
            }
            Offline::Audit(AuditCommand::Verify(args)) => audit::run(&args)?,
            Offline::Audit(AuditCommand::Export(args)) => (audit::export(&args)?, 0),
            Offline::Audit(AuditCommand::Query(args)) => audit::query(&args)?,
            Offline::Audit(AuditCommand::Report(args)) => audit::report_of(&args)?,
            Offline::Audit(AuditCommand::Tail(mut args)) => {
                if args.format == audit::ExportFormat::Json {
                    args.format = audit::ExportFormat::Jsonl;
                }
                args.last.get_or_insert(20);
                (audit::export(&args)?, 0)
            }
        };
        print!("{text}");
        Ok(code)
    }
}
