//! `dvo audit verify | export | tail | query`: checks, exports and asks the audit log (of the
//! cluster, or an export) offline.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use serde::{Deserialize, Serialize};

use chrono::{DateTime, Utc};

use crate::audit::query::Filter;
use crate::audit::{self, Checkpoint, EventType, Segment};

/// An export of the audit log: its segments in chain order and its checkpoints.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Export {
    /// Segments in chain order.
    pub segments: Vec<Segment>,
    /// Signed checkpoints.
    #[serde(default)]
    pub checkpoints: Vec<Checkpoint>,
}

/// Which log to read, and what vouches for it: the arguments of `dvo audit verify`, shared by
/// `query` and `report`.
#[derive(clap::Args, Debug)]
pub struct LogArgs {
    /// An export (JSON: `{"segments": [...], "checkpoints": [...]}`); without it, the log in the
    /// cluster of the current kubeconfig.
    #[arg(short = 'f', long = "filename")]
    pub file: Option<PathBuf>,
    /// The operator's namespace, where the log lives (cluster mode).
    #[arg(long, default_value = "dvo-system")]
    pub namespace: String,
    /// The checkpoint public key: 64 hex digits, or a file holding them. In cluster mode it is
    /// derived from the operator's keys Secret when not given.
    #[arg(long)]
    pub public_key: Option<String>,
    /// Trusted checkpoints kept outside the cluster (a file of JSON lines: checkpoints, or the
    /// `checkpoint_signed` entries a sink received): the log must extend each of them.
    #[arg(long = "checkpoint")]
    pub trusted: Vec<PathBuf>,
}

/// The checkpoints in a file of JSON lines: checkpoints themselves, or entries that carry one.
pub fn trusted_checkpoints(file: &std::path::Path) -> Result<Vec<Checkpoint>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut out = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = || {
            anyhow!(
                "{} line {}: not a checkpoint or a checkpoint_signed entry",
                file.display(),
                n.saturating_add(1)
            )
        };
        if let Ok(c) = serde_json::from_str::<Checkpoint>(line) {
            out.push(c);
            continue;
        }
        let entry: audit::Entry = serde_json::from_str(line).map_err(|_| bad())?;
        match audit::carried_checkpoint(&entry) {
            Some(Ok(c)) => out.push(c),
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

fn public_key(arg: &str) -> Result<Vec<u8>> {
    let text = if std::path::Path::new(arg).is_file() {
        std::fs::read_to_string(arg)?.trim().to_owned()
    } else {
        arg.to_owned()
    };
    crate::unhex(&text)
        .filter(|b| b.len() == 32)
        .ok_or_else(|| {
            anyhow!(
                "--public-key must be 64 hex digits (an Ed25519 public key) or a file holding them"
            )
        })
}

/// Runs the verification; returns the report text and the exit code (0 intact, 3 fault).
pub fn run(args: &LogArgs) -> Result<(String, u8)> {
    let (export, key) = read_log(args)?;
    let mut trusted = Vec::new();
    for file in &args.trusted {
        trusted.extend(trusted_checkpoints(file)?);
    }
    Ok(report(&export, &trusted, &key))
}

/// The log of an export (`-f`, whose checkpoints `--public-key` checks) or of the cluster (the
/// key then derived from the operator's Secret unless given), and the key.
fn read_log(args: &LogArgs) -> Result<(Export, Vec<u8>)> {
    match &args.file {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let export: Export = serde_json::from_str(&text)
                .map_err(|e| anyhow!("{}: not an audit export: {e}", file.display()))?;
            let key = args
                .public_key
                .as_deref()
                .ok_or_else(|| anyhow!("--public-key is required to verify an export"))?;
            Ok((export, public_key(key)?))
        }
        None => tokio::runtime::Runtime::new()?
            .block_on(from_cluster(&args.namespace, args.public_key.as_deref())),
    }
}

async fn from_cluster(namespace: &str, key: Option<&str>) -> Result<(Export, Vec<u8>)> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| anyhow!("cannot reach the API server: {e}"))?;
    let (segments, checkpoints) = crate::audit::store::load(&client, namespace)
        .await
        .map_err(|e| anyhow!(e))?;
    let key = match key {
        Some(k) => public_key(k)?,
        None => {
            let keys = crate::controller::checkpoint_seed(&client, namespace).await?;
            crate::audit::SigningKey::from_seed(&keys)
                .map_err(|e| anyhow!(e))?
                .public_key()
        }
    };
    Ok((
        Export {
            segments,
            checkpoints,
        },
        key,
    ))
}

/// The verification report of an export (with checkpoints trusted from outside), and its exit
/// code.
pub fn report(export: &Export, trusted: &[Checkpoint], key: &[u8]) -> (String, u8) {
    let all: Vec<Checkpoint> = export.checkpoints.iter().chain(trusted).cloned().collect();
    match audit::verify(&export.segments, &all, key) {
        Ok(r) => (
            format!(
                "intact: {} entries, seq {}..{}, head {}, {} checkpoints (newest at seq {}){}\n",
                r.entries,
                r.first_seq,
                r.last_seq,
                r.head_hash,
                r.checkpoints,
                r.last_checkpoint_seq
                    .map_or("none".to_owned(), |s| s.to_string()),
                match trusted.iter().map(|c| c.seq).max() {
                    Some(seq) => format!("; extends the trusted checkpoint at seq {seq}"),
                    None => String::new(),
                }
            ),
            0,
        ),
        Err(f) => (format!("TAMPERED: {f}\n"), 3),
    }
}

/// Output formats of `dvo audit export`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// Segments and checkpoints, as `dvo audit verify -f` reads them.
    Json,
    /// One entry per line.
    Jsonl,
    /// One CEF line per entry.
    Cef,
}

/// Arguments of `dvo audit export` and `dvo audit tail`.
#[derive(clap::Args, Debug)]
pub struct ReadArgs {
    /// The operator's namespace, where the log lives.
    #[arg(long, default_value = "dvo-system")]
    pub namespace: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ExportFormat::Json)]
    pub format: ExportFormat,
    /// Only the newest N entries (not with `--format json`).
    #[arg(short = 'n', long)]
    pub last: Option<usize>,
}

/// Renders the log of the cluster in `args.format`.
pub fn export(args: &ReadArgs) -> Result<String> {
    let (segments, checkpoints) = tokio::runtime::Runtime::new()?.block_on(async {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| anyhow!("cannot reach the API server: {e}"))?;
        crate::audit::store::load(&client, &args.namespace)
            .await
            .map_err(|e| anyhow!(e))
    })?;
    let export = Export {
        segments,
        checkpoints,
    };
    render(&export, args.format, args.last)
}

/// An export in a format; `last` keeps only the newest entries (line formats only).
pub fn render(export: &Export, format: ExportFormat, last: Option<usize>) -> Result<String> {
    let entries: Vec<&crate::audit::Entry> =
        export.segments.iter().flat_map(|s| &s.entries).collect();
    let skip = last.map_or(0, |n| entries.len().saturating_sub(n));
    Ok(match format {
        ExportFormat::Json if last.is_some() => {
            return Err(anyhow!(
                "-n applies to --format jsonl or cef: a partial JSON export cannot be verified"
            ));
        }
        ExportFormat::Json => serde_json::to_string_pretty(export)? + "\n",
        ExportFormat::Jsonl => entries
            .iter()
            .skip(skip)
            .map(|e| crate::json::to_string(e) + "\n")
            .collect(),
        ExportFormat::Cef => entries
            .iter()
            .skip(skip)
            .map(|e| crate::audit::sink::format::cef(e) + "\n")
            .collect(),
    })
}

/// Output formats of `dvo audit query`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryFormat {
    /// An aligned table, under a line saying what the chain verification found.
    Table,
    /// `{"verification": ..., "matched": N, "entries": [...]}`.
    Json,
    /// One entry per line (the verification on standard error).
    Jsonl,
    /// A header and one row per entry (the verification on standard error).
    Csv,
}

/// Arguments of `dvo audit query`.
#[derive(clap::Args, Debug)]
pub struct QueryArgs {
    /// The log read, and what vouches for it.
    #[command(flatten)]
    pub log: LogArgs,
    /// Entries at or after this time: RFC 3339, or an age such as 90d, 12h, 30m.
    #[arg(long, value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Entries before this time: RFC 3339, or an age.
    #[arg(long, value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
    /// The actor (repeat for several).
    #[arg(long = "user")]
    pub users: Vec<String>,
    /// Event type, e.g. approval_granted, break_glass_used (repeat for several).
    #[arg(long = "event", value_parser = parse_event)]
    pub events: Vec<EventType>,
    /// Environment (repeat for several).
    #[arg(long = "environment")]
    pub environments: Vec<String>,
    /// The namespace of the objects the entries are about (repeat for several).
    #[arg(long = "in-namespace")]
    pub in_namespaces: Vec<String>,
    /// Agent (repeat for several).
    #[arg(long = "agent")]
    pub agents: Vec<String>,
    /// Outcome, the entry's status: success, failure, denied, blocked, approved, ... (repeat).
    #[arg(long = "outcome")]
    pub outcomes: Vec<String>,
    /// The lowest severity (0-10, as the sinks give it: 10 break-glass, 7 refusals and
    /// failures, 5 policy violations, 3 degraded, 1 the rest).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=10))]
    pub min_severity: Option<u8>,
    /// Only the newest N matches.
    #[arg(short = 'n', long)]
    pub last: Option<usize>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = QueryFormat::Table)]
    pub output: QueryFormat,
}

/// An RFC 3339 time, or an age (`90d`, `12h`, `30m`, `45s`) before now.
fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let bad = || format!("{s:?}: give an RFC 3339 time or an age such as 90d, 12h, 30m, 45s");
    let unit = s.chars().last().ok_or_else(bad)?;
    let n: i64 = s
        .get(..s.len().saturating_sub(unit.len_utf8()))
        .and_then(|n| n.parse().ok())
        .filter(|n| (0..=36_500 * 86_400).contains(n))
        .ok_or_else(bad)?;
    let age = match unit {
        'd' => chrono::Duration::days(n),
        'h' => chrono::Duration::hours(n),
        'm' => chrono::Duration::minutes(n),
        's' => chrono::Duration::seconds(n),
        _ => return Err(bad()),
    };
    Utc::now().checked_sub_signed(age).ok_or_else(bad)
}

fn parse_event(s: &str) -> Result<EventType, String> {
    EventType::named(s).ok_or_else(|| {
        format!("{s:?} is not an event type (e.g. approval_granted, break_glass_used)")
    })
}

/// Runs `dvo audit query`: the entries that match, and what the verification of the chain they
/// were read from found. Exit code 0 when intact, 3 when the chain is damaged (the matches are
/// still shown, under that warning).
pub fn query(args: &QueryArgs) -> Result<(String, u8)> {
    let (export, verified) = read_verified(&args.log)?;
    let filter = Filter {
        since: args.since,
        until: args.until,
        users: args.users.clone(),
        events: args.events.clone(),
        environments: args.environments.clone(),
        namespaces: args.in_namespaces.clone(),
        agents: args.agents.clone(),
        outcomes: args.outcomes.clone(),
        min_severity: args.min_severity,
    };
    let mut matched: Vec<&audit::Entry> = export
        .segments
        .iter()
        .flat_map(|s| &s.entries)
        .filter(|e| filter.matches(e))
        .collect();
    let total = matched.len();
    if let Some(n) = args.last {
        matched.drain(..total.saturating_sub(n));
    }
    let (said, code) = said(&verified);
    let text = match args.output {
        QueryFormat::Table => format!(
            "# {said}\n# {} of them match{}\n{}",
            total,
            if matched.len() < total {
                format!(", the newest {} shown", matched.len())
            } else {
                String::new()
            },
            audit::query::table(&matched)
        ),
        QueryFormat::Json => {
            let verification = match &verified {
                Ok(r) => serde_json::json!({
                    "intact": true, "entries": r.entries, "firstSeq": r.first_seq,
                    "lastSeq": r.last_seq, "headHash": r.head_hash,
                    "lastCheckpointSeq": r.last_checkpoint_seq,
                }),
                Err(f) => serde_json::json!({"intact": false, "fault": f.to_string()}),
            };
            serde_json::to_string_pretty(&serde_json::json!({
                "verification": verification, "matched": total, "entries": matched,
            }))? + "\n"
        }
        QueryFormat::Jsonl => {
            eprintln!("{said}; {total} match");
            matched
                .iter()
                .map(|e| crate::json::to_string(e) + "\n")
                .collect()
        }
        QueryFormat::Csv => {
            eprintln!("{said}; {total} match");
            audit::query::csv(&matched)
        }
    };
    Ok((text, code))
}

/// The log (see [`read_log`]) and what the verification of its chain found, with checkpoints
/// kept outside the cluster (`--checkpoint`).
fn read_verified(args: &LogArgs) -> Result<(Export, Result<audit::Report, audit::Fault>)> {
    let (export, key) = read_log(args)?;
    let mut checkpoints = export.checkpoints.clone();
    for file in &args.trusted {
        checkpoints.extend(trusted_checkpoints(file)?);
    }
    let verified = audit::verify(&export.segments, &checkpoints, &key);
    Ok((export, verified))
}

/// What a verification found, in a sentence, and the exit code it means (0 intact, 3 damaged).
fn said(verified: &Result<audit::Report, audit::Fault>) -> (String, u8) {
    match verified {
        Ok(r) => (
            format!(
                "chain intact: {} entries read, seq {}..{}, head {}, {}",
                r.entries,
                r.first_seq,
                r.last_seq,
                r.head_hash,
                r.last_checkpoint_seq.map_or(
                    "no signed checkpoint yet (the hash chain alone vouches for it)".to_owned(),
                    |s| format!("signed checkpoints verified up to seq {s}")
                )
            ),
            0,
        ),
        Err(f) => (
            format!("CHAIN DAMAGED, these results cannot be trusted: {f}"),
            3,
        ),
    }
}

/// Output formats of `dvo audit report`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    /// Markdown.
    Markdown,
    /// One self-contained HTML page with charts.
    Html,
    /// The report's data as JSON.
    Json,
}

/// Arguments of `dvo audit report`.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// The log read, and what vouches for it.
    #[command(flatten)]
    pub log: LogArgs,
    /// Changes first seen at or after this time: RFC 3339, or an age such as 90d.
    #[arg(long, value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Changes first seen before this time: RFC 3339, or an age.
    #[arg(long, value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
    /// The environments reported on (repeat for several).
    #[arg(long = "environment", default_values_t = ["production".to_owned()])]
    pub environments: Vec<String>,
    /// Only changes in these namespaces (repeat for several).
    #[arg(long = "in-namespace")]
    pub in_namespaces: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = ReportFormat::Markdown)]
    pub output: ReportFormat,
}

/// Runs `dvo audit report`. Exit code 0 when the chain verified, 3 when it is damaged (the
/// report says so at its top).
pub fn report_of(args: &ReportArgs) -> Result<(String, u8)> {
    let (export, verified) = read_verified(&args.log)?;
    let (sentence, code) = said(&verified);
    let entries: Vec<&audit::Entry> = export.segments.iter().flat_map(|s| &s.entries).collect();
    let report = audit::report::build(
        &entries,
        args.since,
        args.until,
        &args.environments,
        &args.in_namespaces,
        (code == 0, sentence),
    );
    let text = match args.output {
        ReportFormat::Markdown => audit::report::markdown(&report),
        ReportFormat::Html => audit::report::html(&report),
        ReportFormat::Json => serde_json::to_string_pretty(&report)? + "\n",
    };
    Ok((text, code))
}
