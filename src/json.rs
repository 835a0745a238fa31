//! JSON of our own types. Serializing a derived `Serialize` type whose maps have string keys
//! cannot fail, so these are the one place that says so, instead of an `expect` at every call.

use serde::Serialize;
use serde_json::Value;

/// `value` as JSON text.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> String {
    #[expect(
        clippy::expect_used,
        reason = "our types serialize: derived impls, string map keys"
    )]
    serde_json::to_string(value).expect("our types serialize to JSON")
}

/// `value` as a JSON value.
pub fn to_value<T: Serialize + ?Sized>(value: &T) -> Value {
    #[expect(
        clippy::expect_used,
        reason = "our types serialize: derived impls, string map keys"
    )]
    serde_json::to_value(value).expect("our types serialize to JSON")
}

/// RFC 8785 canonical JSON of `value`. A `serde_json::Value` holds no non-finite number, the
/// one thing canonical JSON cannot write.
pub fn canonical(value: &Value) -> String {
    #[expect(
        clippy::expect_used,
        reason = "a JSON value has a canonical form: it holds no non-finite number"
    )]
    serde_jcs::to_string(value).expect("a JSON value has a canonical form")
}

/// Sets `key` of the object `target` (made an object first if it is not one).
pub fn set(target: &mut Value, key: &str, value: impl Into<Value>) {
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(map) = target {
        map.insert(key.to_owned(), value.into());
    }
}

/// The longest start of `s` of at most `max` bytes that ends on a character boundary (API
/// fields are limited in bytes).
pub fn truncate(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    s.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(super::truncate("héllo", 2), "h");
        assert_eq!(super::truncate("héllo", 3), "hé");
        assert_eq!(super::truncate("abc", 10), "abc");
        assert_eq!(super::truncate("€€", 1), "");
    }

    #[test]
    fn set_makes_an_object_when_needed() {
        let mut v = json!("text");
        super::set(&mut v, "a", 1);
        super::set(&mut v, "b", "x");
        assert_eq!(v, json!({"a": 1, "b": "x"}));
        assert_eq!(super::to_string(&v), r#"{"a":1,"b":"x"}"#);
    }
}
