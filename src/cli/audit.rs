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
}

fn public_key(arg: &str) -> Result<Vec<u8>> {
    let text = if std::path::Path::new(arg).is_file() {
        std::fs::read_to_string(arg)?.trim().to_owned()
    } else {
        arg.to_owned()
    };
    let bytes: Option<Vec<u8>> = (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    bytes.filter(|b| b.len() == 32).ok_or_else(|| {
        anyhow!("--public-key must be 64 hex digits (an Ed25519 public key) or a file holding them")
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
    Ok(report(&export, &key))
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

/// The verification report of an export, and its exit code.
pub fn report(export: &Export, key: &[u8]) -> (String, u8) {
    match audit::verify(&export.segments, &export.checkpoints, key) {
        Ok(r) => (
            format!(
                "intact: {} entries, seq {}..{}, head {}, {} checkpoints (newest at seq {})\n",
                r.entries,
                r.first_seq,
                r.last_seq,
                r.head_hash,
                r.checkpoints,
                r.last_checkpoint_seq
                    .map_or("none".to_owned(), |s| s.to_string())
            ),
            0,
        ),
        Err(f) => (format!("TAMPERED: {f}\n"), 3),
    }
}
