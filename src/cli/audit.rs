//! `dvo audit verify`: checks an exported audit log (segments and checkpoints) offline.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use serde::{Deserialize, Serialize};

use crate::audit::{self, Checkpoint, Segment};

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

/// Arguments of `dvo audit verify`.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
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
pub fn run(args: &VerifyArgs) -> Result<(String, u8)> {
    let (export, key) = match &args.file {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let export: Export = serde_json::from_str(&text)
                .map_err(|e| anyhow!("{}: not an audit export: {e}", file.display()))?;
            let key = args
                .public_key
                .as_deref()
                .ok_or_else(|| anyhow!("--public-key is required to verify an export"))?;
            (export, public_key(key)?)
        }
        None => tokio::runtime::Runtime::new()?
            .block_on(from_cluster(&args.namespace, args.public_key.as_deref()))?,
    };
    let mut trusted = Vec::new();
    for file in &args.trusted {
        trusted.extend(trusted_checkpoints(file)?);
    }
    Ok(report(&export, &trusted, &key))
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
