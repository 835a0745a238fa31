//! The tamper-evident audit log. Pure part: entries (the seed's event types and fields plus
//! `seq`), the hash chain over RFC 8785 canonical JSON, Ed25519-signed checkpoints, and
//! `verify()`, which names the first bad entry and the kind of fault. Shell: `store`, the log in
//! ConfigMaps.

mod chain;
mod checkpoint;
mod entry;
pub mod query;
pub mod report;
pub mod sink;
pub mod store;
mod verify;

pub use chain::{GENESIS, Link, append, entry_hash};
pub use checkpoint::{Checkpoint, SigningKey};
pub use entry::{Draft, Entry, EventType};
pub use verify::{Fault, FaultKind, Report, Segment, carried_checkpoint, verify};

/// The actor of what the operator decides or observes by itself.
pub const OPERATOR: &str = "system:dvo-operator";

/// The largest `seq` that canonical JSON represents exactly (2^53 - 1): numbers are IEEE doubles
/// in RFC 8785.
pub const MAX_SEQ: u64 = (1 << 53) - 1;
