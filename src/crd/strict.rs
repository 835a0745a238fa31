//! Strict field validation, offline: the fields of a manifest that the API server would refuse
//! as unknown (kubectl's default `--validate=strict`), found by walking the kind's CRD schema
//! exactly as the API server prunes: `properties`, `items`, `additionalProperties` and
//! `x-kubernetes-preserve-unknown-fields`. Pure.

use kube::CustomResourceExt;
use serde_json::Value;

use super::{AgentDeployment, ApprovalRequest, Capability, DeploymentPolicy};

/// The kinds of our API group.
pub const KINDS: [&str; 4] = [
    "AgentDeployment",
    "DeploymentPolicy",
    "ApprovalRequest",
    "Capability",
];

/// The fields of `metadata` an object may carry (ObjectMeta).
const METADATA: [&str; 16] = [
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
    "shardInfo",
];

/// The OpenAPI schema of one of our kinds (None for another kind).
fn schema(kind: &str) -> Option<Value> {
    let crd = match kind {
        "AgentDeployment" => AgentDeployment::crd(),
        "DeploymentPolicy" => DeploymentPolicy::crd(),
        "ApprovalRequest" => ApprovalRequest::crd(),
        "Capability" => Capability::crd(),
        _ => return None,
    };
    let version = crd.spec.versions.into_iter().next()?;
    let schema = version.schema?.open_api_v3_schema?;
    serde_json::to_value(schema).ok()
}

/// The dotted paths of the fields in `doc` (a manifest of `kind`) that the API server would
/// refuse as unknown; empty when there are none (or the kind is not ours).
pub fn unknown_fields(kind: &str, doc: &Value) -> Vec<String> {
    let Some(schema) = schema(kind) else {
        return vec![];
    };
    let mut out = Vec::new();
    walk(&schema, doc, "", &mut out);
    if let Some(meta) = doc.get("metadata").and_then(Value::as_object) {
        out.extend(
            meta.keys()
                .filter(|k| !METADATA.contains(&k.as_str()))
                .map(|k| format!("metadata.{k}")),
        );
    }
    out
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn walk(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for (key, v) in map {
                // `metadata` is ObjectMeta, checked on its own; apiVersion and kind are always known.
                if path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                match (properties.and_then(|p| p.get(key)), additional) {
                    (Some(sub), _) => walk(sub, v, &join(path, key), out),
                    (None, Some(Value::Bool(true))) => {}
                    (None, Some(sub @ Value::Object(_))) => walk(sub, v, &join(path, key), out),
                    (None, _) => out.push(join(path, key)),
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    walk(sub, v, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        // (kind, manifest, unknown fields)
        let table = [
            (
                "DeploymentPolicy",
                json!({"apiVersion": "dvo.caat.io/v1alpha1", "kind": "DeploymentPolicy",
                    "metadata": {"name": "p", "labels": {"a": "b"}},
                    "spec": {"action": "Deny", "blackouts": []}}),
                vec![],
            ),
            (
                "DeploymentPolicy",
                json!({"kind": "DeploymentPolicy", "metadata": {"name": "p", "lables": {}},
                    "spec": {"action": "Deny", "blackout": [{"start": "x"}],
                        "conditions": [{"field": "agent", "operator": "Equals", "value": {"any": "thing"}, "vaule": 1}]},
                    "extra": 1}),
                vec![
                    "extra",
                    "spec.blackout",
                    "spec.conditions[0].vaule",
                    "metadata.lables",
                ],
            ),
            (
                "AgentDeployment",
                json!({"kind": "AgentDeployment", "metadata": {"name": "a"},
                    "spec": {"agent": "GHA", "platform": "langchain", "environment": "production",
                        "context": {"anything": {"goes": [1]}},
                        "template": {"spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicyy": "x"}]}}}}),
                vec!["spec.template.spec.containers[0].imagePullPolicyy"],
            ),
            (
                "ConfigMap",
                json!({"kind": "ConfigMap", "data": {"x": "y"}}),
                vec![],
            ),
        ];
        for (kind, doc, want) in table {
            assert_eq!(unknown_fields(kind, &doc), want, "{doc}");
        }
    }
}
