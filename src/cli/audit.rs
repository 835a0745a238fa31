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
    /// The export (JSON: `{"segments": [...], "checkpoints": [...]}`).
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// The checkpoint public key: 64 hex digits, or a file holding them.
    #[arg(long)]
    pub public_key: String,
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
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let export: Export = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{}: not an audit export: {e}", args.file.display()))?;
    match audit::verify(
        &export.segments,
        &export.checkpoints,
        &public_key(&args.public_key)?,
    ) {
        Ok(r) => Ok((
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
        )),
        Err(f) => Ok((format!("TAMPERED: {f}\n"), 3)),
    }
}
