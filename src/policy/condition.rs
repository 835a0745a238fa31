//! Condition operators and their type rules, and dotted-path lookup in the evaluation context.
//!
//! Type rules: `Equals`, `NotEquals`, `In` and `NotIn` compare any JSON values (numbers by
//! value, so 1 equals 1.0; a missing field is null). `Matches` needs a string field;
//! `GreaterThan` and `LessThan` need a number field and a number value; `Contains` needs a
//! string field and a string value, or a list field. Anything else, null included, is an
//! evaluation error that the policy's `failurePolicy` decides about.

use regex::Regex;
use serde_json::Value;

use crate::crd::deployment_policy::Operator;

/// A condition ready to evaluate (its regex compiled).
#[derive(Clone, Debug)]
pub struct Compiled {
    /// Dotted field path.
    pub field: String,
    /// Operator.
    pub operator: Operator,
    /// The policy's value.
    pub value: Value,
    /// The condition in words, as a matched policy's reason names it: field, operator, value.
    pub said: String,
    regex: Option<Regex>,
}

/// The longest regular expression a condition may hold.
pub const MAX_PATTERN: usize = 1024;
/// The most memory one compiled regular expression may take.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Compiles `pattern` to match a whole value. The pattern is checked exactly as written first,
/// so wrapping it in anchors cannot change its meaning (`GHA)|(.*` is refused, not turned into
/// an alternation that matches everything); `^`/`$` are not multi-line, so the anchors hold.
fn whole_value_regex(pattern: &str) -> Result<Regex, String> {
    let chars = pattern.chars().count();
    if chars > MAX_PATTERN {
        return Err(format!(
            "regular expression of {chars} characters; at most {MAX_PATTERN}"
        ));
    }
    let shown = pattern;
    let build = |p: &str| {
        regex::RegexBuilder::new(p)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_SIZE_LIMIT)
            .nest_limit(64)
            .build()
    };
    build(pattern)
        .and_then(|_| build(&format!(r"\A(?:{pattern})\z")))
        .map_err(|e| format!("invalid regular expression {shown:?}: {e}"))
}

impl Compiled {
    /// Checks a condition's value against its operator and compiles its regex.
    pub fn new(field: &str, operator: Operator, value: &Value) -> Result<Compiled, String> {
        let regex = match operator {
            Operator::Matches => {
                let pattern = value.as_str().ok_or_else(|| {
                    format!(
                        "condition on {field}: Matches needs a regular expression string, found {}",
                        type_name(value)
                    )
                })?;
                Some(whole_value_regex(pattern).map_err(|e| format!("condition on {field}: {e}"))?)
            }
            Operator::In | Operator::NotIn if !value.is_array() => {
                return Err(format!(
                    "condition on {field}: {operator:?} needs a list value, found {}",
                    type_name(value)
                ));
            }
            Operator::GreaterThan | Operator::LessThan if !value.is_number() => {
                return Err(format!(
                    "condition on {field}: {operator:?} needs a number value, found {}",
                    type_name(value)
                ));
            }
            Operator::Contains if value.is_null() || value.is_array() || value.is_object() => {
                return Err(format!(
                    "condition on {field}: Contains needs a string, number or boolean value, found {}",
                    type_name(value)
                ));
            }
            _ => None,
        };
        Ok(Compiled {
            field: field.to_owned(),
            operator,
            value: value.clone(),
            said: format!("{field} {operator:?} {value}"),
            regex,
        })
    }

    /// Evaluates the condition against a field's value.
    pub fn holds(&self, actual: &Value) -> Result<bool, String> {
        let expected = &self.value;
        let op = self.operator;
        let wrong = |needs: &str| {
            Err(format!(
                "{op:?} on {} needs {needs}, found {}",
                self.field,
                type_name(actual)
            ))
        };
        match op {
            Operator::Equals => Ok(json_eq(actual, expected)),
            Operator::NotEquals => Ok(!json_eq(actual, expected)),
            Operator::In => Ok(list(expected).iter().any(|v| json_eq(actual, v))),
            Operator::NotIn => Ok(!list(expected).iter().any(|v| json_eq(actual, v))),
            Operator::Matches => match (actual, &self.regex) {
                (Value::String(s), Some(re)) => Ok(re.is_match(s)),
                _ => wrong("a string field"),
            },
            Operator::GreaterThan | Operator::LessThan => {
                match (actual.as_f64(), expected.as_f64()) {
                    (Some(a), Some(e)) => Ok(if op == Operator::GreaterThan {
                        a > e
                    } else {
                        a < e
                    }),
                    _ => wrong("a number field"),
                }
            }
            Operator::Contains => match (actual, expected) {
                (Value::String(s), Value::String(e)) => Ok(s.contains(e.as_str())),
                (Value::Array(items), e) => Ok(items.iter().any(|v| json_eq(v, e))),
                _ => wrong("a string field (with a string value) or a list field"),
            },
        }
    }
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// Appends `v` as compact JSON (what its `Display` writes), strings without escapes directly.
pub fn write_json(out: &mut String, v: &Value) {
    match v {
        Value::String(s) if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') => {
            out.push('"');
            out.push_str(s);
            out.push('"');
        }
        v => {
            use std::fmt::Write;
            let _ = write!(out, "{v}");
        }
    }
}

/// JSON equality with numbers compared by value.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// The JSON type of a value, for messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Looks up a dotted path. Keys may themselves contain dots (label keys such as
/// `app.kubernetes.io/name`): at each level the longest key that matches wins. Missing → null.
pub fn lookup<'a>(root: &'a Value, path: &str) -> &'a Value {
    const NULL: &Value = &Value::Null;
    let mut node = root;
    let mut rest = path;
    'outer: loop {
        let Value::Object(map) = node else {
            return NULL;
        };
        // The longest key first: the whole rest, then up to each dot from the right. Keys are
        // slices of the path (nothing is split or joined).
        let ends = std::iter::once(rest.len()).chain(rest.rmatch_indices('.').map(|(i, _)| i));
        for end in ends {
            let Some(next) = rest.get(..end).and_then(|key| map.get(key)) else {
                continue;
            };
            if end >= rest.len() {
                return next;
            }
            node = next;
            rest = rest.get(end.saturating_add(1)..).unwrap_or("");
            continue 'outer;
        }
        return NULL;
    }
}

#[cfg(test)]
#[path = "condition_tests.rs"]
mod tests;
