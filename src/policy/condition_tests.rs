use serde_json::json;

use super::*;
use Operator::*;

/// Result of one evaluation: Ok(true), Ok(false) or an error.
#[derive(Debug, PartialEq)]
enum R {
    T,
    F,
    E,
}

fn eval(op: Operator, value: Value, actual: Value) -> R {
    let c = Compiled::new("f", op, &value).expect("valid condition");
    match c.holds(&actual) {
        Ok(true) => R::T,
        Ok(false) => R::F,
        Err(_) => R::E,
    }
}

/// Every operator against every JSON type of field value.
#[test]
fn operator_by_value_type() {
    let s = || json!("production");
    let table: Vec<(Operator, Value, Value, R)> = vec![
        // Equals / NotEquals: any types, never an error.
        (Equals, s(), json!("production"), R::T),
        (Equals, s(), json!("staging"), R::F),
        (Equals, json!(1), json!(1.0), R::T),
        (Equals, json!(2), json!(1), R::F),
        (Equals, json!(true), json!(true), R::T),
        (Equals, json!(true), json!("true"), R::F),
        (Equals, json!(null), Value::Null, R::T),
        (Equals, json!(["a", 1]), json!(["a", 1.0]), R::T),
        (Equals, json!({"a": 1}), json!({"a": 1}), R::T),
        (Equals, s(), Value::Null, R::F),
        (NotEquals, json!(true), Value::Null, R::T),
        (NotEquals, json!(true), json!(true), R::F),
        (NotEquals, s(), json!(7), R::T),
        // In / NotIn: list values, any field type.
        (In, json!(["production", "prod"]), json!("prod"), R::T),
        (In, json!(["production", "prod"]), json!("staging"), R::F),
        (In, json!([9, 10, 11]), json!(10.0), R::T),
        (In, json!([9, 10]), Value::Null, R::F),
        (In, json!([null]), Value::Null, R::T),
        (NotIn, json!([9, 10, 11]), json!(8), R::T),
        (NotIn, json!([9, 10, 11]), json!(9), R::F),
        (NotIn, json!(["a"]), json!(["a"]), R::T),
        // Matches: string fields only, whole-value match.
        (Matches, json!("GH[A-Z]"), json!("GHA"), R::T),
        (Matches, json!("GH"), json!("GHA"), R::F),
        (Matches, json!("a|b"), json!("ab"), R::F),
        (Matches, json!(".*"), json!(""), R::T),
        // Anchored whole-value match: an alternation cannot escape the anchors.
        (Matches, json!("GHA|X"), json!("GHAB"), R::F),
        (Matches, json!("GHA|X"), json!("ZX"), R::F),
        (Matches, json!("(?m)GHA"), json!("GHA\nB"), R::F),
        (Matches, json!("1"), json!(1), R::E),
        (Matches, json!(".*"), Value::Null, R::E),
        (Matches, json!(".*"), json!(["x"]), R::E),
        // GreaterThan / LessThan: numbers only.
        (GreaterThan, json!(17), json!(18), R::T),
        (GreaterThan, json!(17), json!(17), R::F),
        (GreaterThan, json!(1.5), json!(2), R::T),
        (LessThan, json!(9), json!(8), R::T),
        (LessThan, json!(9), json!(9.0), R::F),
        (LessThan, json!(9), json!("8"), R::E),
        (GreaterThan, json!(9), Value::Null, R::E),
        (GreaterThan, json!(9), json!(true), R::E),
        (LessThan, json!(9), json!([1]), R::E),
        // Contains: string in string, or element in list.
        (Contains, json!("prod"), json!("eu-production"), R::T),
        (Contains, json!("prod"), json!("staging"), R::F),
        (Contains, json!("admin"), json!(["viewer", "admin"]), R::T),
        (Contains, json!(3), json!([1, 2, 3.0]), R::T),
        (Contains, json!("x"), json!([]), R::F),
        (Contains, json!(3), json!("123"), R::E),
        (Contains, json!("a"), Value::Null, R::E),
        (Contains, json!("a"), json!({"a": 1}), R::E),
        (Contains, json!("a"), json!(5), R::E),
    ];
    for (op, value, actual, want) in table {
        assert_eq!(
            eval(op, value.clone(), actual.clone()),
            want,
            "{op:?} {value} against {actual}"
        );
    }
}

#[test]
fn bad_values_are_refused_when_compiled() {
    let cases = [
        (
            Matches,
            json!("(unclosed"),
            "invalid regular expression \"(unclosed\"",
        ),
        (
            Matches,
            json!(5),
            "Matches needs a regular expression string, found a number",
        ),
        // Invalid as written, valid once wrapped in `^(?:...)$`: refused as written.
        (
            Matches,
            json!("GHA)|(.*"),
            "invalid regular expression \"GHA)|(.*\"",
        ),
        (Matches, json!(")|("), "invalid regular expression \")|(\""),
        (
            Matches,
            json!("a".repeat(1025)),
            "regular expression of 1025 characters; at most 1024",
        ),
        (
            Matches,
            json!("(a{1000}){1000}"),
            "invalid regular expression \"(a{1000}){1000}\"",
        ),
        (
            In,
            json!("production"),
            "In needs a list value, found a string",
        ),
        (
            NotIn,
            json!({"a": 1}),
            "NotIn needs a list value, found an object",
        ),
        (
            GreaterThan,
            json!("9"),
            "GreaterThan needs a number value, found a string",
        ),
        (
            LessThan,
            Value::Null,
            "LessThan needs a number value, found null",
        ),
        (
            Contains,
            json!(["a"]),
            "Contains needs a string, number or boolean value, found a list",
        ),
    ];
    for (op, value, want) in cases {
        let err = Compiled::new("spec.x", op, &value).unwrap_err();
        assert!(err.starts_with("condition on spec.x: "), "{err}");
        assert!(err.contains(want), "{op:?}: {err}");
    }
}

#[test]
fn errors_name_operator_field_and_type() {
    let c = Compiled::new("deployment_hour", GreaterThan, &json!(17)).unwrap();
    assert_eq!(
        c.holds(&Value::Null).unwrap_err(),
        "GreaterThan on deployment_hour needs a number field, found null"
    );
}

#[test]
fn dotted_lookup() {
    let ctx = json!({
        "environment": "production",
        "user": {"username": "alice", "roles": ["admin"]},
        "labels": {"app.kubernetes.io/name": "gha", "app": "x", "team": {"not": "a label"}},
        "a": {"b.c": {"d": 1}, "b": {"c": {"d": 2}}},
    });
    let table = [
        ("environment", json!("production")),
        ("user.username", json!("alice")),
        ("user.roles", json!(["admin"])),
        ("labels.app.kubernetes.io/name", json!("gha")),
        ("labels.app", json!("x")),
        ("a.b.c.d", json!(1)),
        ("user.missing", Value::Null),
        ("missing.deeper", Value::Null),
        ("environment.length", Value::Null),
    ];
    for (path, want) in table {
        assert_eq!(lookup(&ctx, path), &want, "{path}");
    }
}

/// Values are written as their JSON `Display` writes them, with or without escapes.
#[test]
fn values_are_written_as_compact_json() {
    let values = [
        json!("GHA"),
        json!(""),
        json!("quote \" and backslash \\ and newline \n and tab \t"),
        json!("\u{7f} del, \u{1b} escape, é, 日本, 😀, \u{2028}"),
        json!(3),
        json!(-0.5),
        json!(1e300),
        json!(null),
        json!(true),
        json!(["a", {"b": "c\"d"}, 1.5]),
        json!({"k": "v", "n": null}),
    ];
    for v in values {
        let mut out = String::from("x");
        write_json(&mut out, &v);
        assert_eq!(out, format!("x{v}"), "{v:?}");
    }
}
