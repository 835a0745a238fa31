//! Linking entries: `entry_hash = sha256(JCS(entry without entry_hash))`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Draft, Entry, MAX_SEQ};

/// `previous_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The head of a chain: the last entry's `seq` and hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// Its `seq`.
    pub seq: u64,
    /// Its `entry_hash`.
    pub hash: String,
}

/// The hash an entry must carry: over the canonical JSON of every field except `entry_hash`.
pub fn entry_hash(entry: &Entry) -> String {
    let mut value = crate::json::to_value(entry);
    if let Some(fields) = value.as_object_mut() {
        fields.remove("entry_hash");
    }
    let canonical = crate::json::canonical(&value);
    crate::hex(&Sha256::digest(canonical.as_bytes()))
}

/// The entry that follows `head` (None: the first entry of a chain).
pub fn append(head: Option<&Link>, draft: Draft) -> Result<Entry, String> {
    let (seq, previous_hash) = match head {
        Some(h) => (h.seq.saturating_add(1), h.hash.clone()),
        None => (1, GENESIS.to_owned()),
    };
    if seq > MAX_SEQ {
        return Err(format!(
            "seq {seq} is beyond what canonical JSON represents exactly"
        ));
    }
    let mut entry = Entry {
        seq,
        draft,
        previous_hash,
        entry_hash: String::new(),
    };
    entry.entry_hash = entry_hash(&entry);
    Ok(entry)
}

impl Entry {
    /// This entry as the head of its chain.
    pub fn link(&self) -> Link {
        Link {
            seq: self.seq,
            hash: self.entry_hash.clone(),
        }
    }
}
