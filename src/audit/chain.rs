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

/// The hash an entry must carry: SHA-256 of the RFC 8785 canonical JSON of every field except
/// `entry_hash`.
///
/// Written member by member straight into one buffer (verifying a year of log hashes a million
/// entries): the names in canonical order, strings as serde_json escapes them (which is what
/// RFC 8785 asks), and `metadata` through the canonicalizer. A test holds this to the canonical
/// JSON of the entry as a JSON value, for every field.
pub fn entry_hash(entry: &Entry) -> String {
    match canonical(entry) {
        Ok(bytes) => crate::hex(&Sha256::digest(&bytes)),
        // Writing to memory does not fail; should it, the hash matches nothing (fail closed).
        Err(_) => "unhashable".to_owned(),
    }
}

fn canonical(e: &Entry) -> Result<Vec<u8>, serde_json::Error> {
    let d = &e.draft;
    let mut out = Vec::with_capacity(1024);
    let mut member = |name: &str, value: &dyn erased::Json| -> Result<(), serde_json::Error> {
        out.push(if out.is_empty() { b'{' } else { b',' });
        serde_json::to_writer(&mut out, name)?;
        out.push(b':');
        value.write(&mut out)
    };
    // RFC 8785 orders members by the UTF-16 code units of their names; these are ASCII, so
    // byte order is that order.
    member("agents", &d.agents)?;
    member("auth_method", &d.auth_method)?;
    member("environment", &d.environment)?;
    member("error_message", &d.error_message)?;
    member("event_id", &d.event_id)?;
    member("event_type", &d.event_type)?;
    member("idempotency_key", &d.idempotency_key)?;
    member("ip_address", &d.ip_address)?;
    member("metadata", &erased::Canonical(&d.metadata))?;
    member("operation", &d.operation)?;
    member("platform", &d.platform)?;
    member("policies_evaluated", &d.policies_evaluated)?;
    member("policy_violations", &d.policy_violations)?;
    member("previous_hash", &e.previous_hash)?;
    member("request_id", &d.request_id)?;
    member("resource", &d.resource)?;
    member("resource_type", &d.resource_type)?;
    member("seq", &e.seq)?;
    member("session_id", &d.session_id)?;
    member("status", &d.status)?;
    member("timestamp", &d.timestamp)?;
    member("user_agent", &d.user_agent)?;
    member("user_email", &d.user_email)?;
    member("user_id", &d.user_id)?;
    member("user_roles", &d.user_roles)?;
    out.push(b'}');
    Ok(out)
}

/// One member's value, written as canonical JSON.
mod erased {
    /// A value that writes itself as canonical JSON.
    pub trait Json {
        fn write(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error>;
    }

    /// Strings, lists of strings, integers and unit enums: serde_json writes them canonically.
    impl<T: serde::Serialize> Json for T {
        fn write(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
            serde_json::to_writer(out, self)
        }
    }

    /// Any JSON value, through the RFC 8785 canonicalizer (sorted members, ES6 numbers).
    pub struct Canonical<'a>(pub &'a serde_json::Value);

    impl Json for Canonical<'_> {
        fn write(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
            serde_jcs::to_writer(out, self.0)
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::EventType;

    /// The hash as first defined: the entry to a JSON value, `entry_hash` removed, canonical
    /// JSON of the rest. Hashing the entry directly must give the same bytes.
    fn through_a_value(entry: &Entry) -> String {
        let mut value = crate::json::to_value(entry);
        if let Some(fields) = value.as_object_mut() {
            fields.remove("entry_hash");
        }
        crate::hex(&Sha256::digest(crate::json::canonical(&value).as_bytes()))
    }

    #[test]
    fn hashing_an_entry_directly_is_hashing_its_json_value() {
        let metadata = [
            serde_json::json!({}),
            serde_json::json!({"z": 1, "a": [1.5, -0.0, 1e21, 1e-7, 9007199254740991u64], "é": "\u{1f600}\n\t\"\\\u{7}"}),
            serde_json::json!({"nested": {"b": {"€": null, "\u{10000}": true}, "a": [[], {}]}}),
            serde_json::json!("a string"),
            serde_json::json!(null),
        ];
        let mut head = None;
        for (i, m) in metadata.into_iter().enumerate() {
            let mut d = Draft::new(
                EventType::ApprovalRequested,
                "ü<>&",
                "op",
                "ns/x",
                "AgentDeployment",
                "success",
            );
            d.timestamp = "2026-11-24T10:00:00Z".into();
            d.metadata = m;
            d.idempotency_key = format!("k{i}");
            if i % 2 == 0 {
                d.environment = Some("production".into());
                d.user_roles = vec!["release_manager".into(), "admin".into()];
                d.agents = vec!["GHA".into()];
                d.error_message = Some("a\u{0}b".into());
                d.user_email = Some("rosa@example.com".into());
                d.platform = Some("langchain".into());
                d.request_id = Some("705ab4f5-6393-11e8-b7cc-42010a800002".into());
                d.session_id = Some("s\u{1f}".into());
                d.ip_address = Some("10.0.0.1".into());
                d.user_agent = Some("kubectl/v1.34 \u{7f}".into());
                d.policies_evaluated = vec!["p1".into(), "ä".into()];
                d.policy_violations = vec!["\u{2028}".into()];
                d.event_id = "e\u{ffff}".into();
                d.auth_method = "kubernetes".into();
            }
            let e = append(head.as_ref(), d).unwrap();
            assert_eq!(e.entry_hash, through_a_value(&e), "entry {i}");
            head = Some(e.link());
        }
    }
}
