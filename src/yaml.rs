//! Every YAML we read or write goes through here: serde-saphyr (a maintained, panic-free
//! parser) with bounds on size, depth, nodes and events, so a hostile file (64k-deep `[[[...]]]`,
//! an alias bomb, a huge document) is refused quickly with a clear error instead of taking
//! minutes or memory.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The largest YAML text read (a file, a ConfigMap value, a test suite).
pub const MAX_BYTES: usize = 4 * 1024 * 1024;
/// The deepest nesting read.
pub const MAX_DEPTH: usize = 64;

fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.flow_nesting_limit = MAX_DEPTH;
    budget.max_nodes = 250_000;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    options
}

fn sized(text: &str) -> Result<(), String> {
    if text.len() > MAX_BYTES {
        return Err(format!("{} bytes of YAML; at most {MAX_BYTES}", text.len()));
    }
    Ok(())
}

/// One YAML document as `T`.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    sized(text)?;
    serde_saphyr::from_str_with_options(text, options()).map_err(|e| e.to_string())
}

/// Every document of a YAML stream as `T` (empty documents are skipped).
pub fn documents<T: DeserializeOwned>(text: &str) -> Result<Vec<T>, String> {
    sized(text)?;
    serde_saphyr::from_multiple_with_options(text, options()).map_err(|e| e.to_string())
}

/// `value` as YAML.
pub fn to_string<T: Serialize>(value: &T) -> Result<String, String> {
    serde_saphyr::to_string(value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_yaml_is_refused_quickly() {
        let deep = "[".repeat(65_536) + &"]".repeat(65_536);
        let started = std::time::Instant::now();
        assert!(from_str::<serde_json::Value>(&deep).is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        let nested = (0..100).fold("x".to_owned(), |inner, _| format!("{{a: {inner}}}"));
        assert!(from_str::<serde_json::Value>(&nested).is_err());
        let bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n".to_owned()
            + &(1..20)
                .map(|i| format!("b{i}: &b{i} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n", p = if i == 1 { "a".to_owned() } else { format!("b{}", i - 1) }))
                .collect::<String>();
        assert!(from_str::<serde_json::Value>(&bomb).is_err());
        let huge = format!("a: \"{}\"", "x".repeat(MAX_BYTES));
        assert!(
            from_str::<serde_json::Value>(&huge)
                .unwrap_err()
                .contains("at most")
        );
        assert!(
            from_str::<serde_json::Value>("a: 1\na: 2\n").is_err(),
            "duplicate keys"
        );
        let docs: Vec<serde_json::Value> = documents("a: 1\n---\nb: 2\n").unwrap();
        assert_eq!(docs.len(), 2);
    }
}
