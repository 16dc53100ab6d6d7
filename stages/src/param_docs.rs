//! What `rmdistill stages KIND` prints about a stage's parameters: name, type, default and meaning, read from the JSON
//! Schema its Params struct derives (doc comments become the meanings), so that the listing cannot drift from what
//! the stage accepts.

use serde_json::Value;

/// One parameter (nested tables are flattened as `table.field`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ParamDoc {
    pub name: String,
    pub ty: String,
    /// The default as JSON, when the parameter has one.
    pub default: Option<String>,
    pub required: bool,
    pub doc: String,
}

pub fn param_docs(schema: &schemars::Schema) -> Vec<ParamDoc> {
    let root = schema.as_value();
    let mut out = vec![];
    walk(root, root.get("$defs"), "", &mut out);
    out
}

fn walk(obj: &Value, defs: Option<&Value>, prefix: &str, out: &mut Vec<ParamDoc>) {
    let Some(props) = obj.get("properties").and_then(Value::as_object) else { return };
    let required: Vec<&str> = obj
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, prop) in props {
        let target = resolve(prop, defs);
        let doc = [prop, target]
            .iter()
            .find_map(|v| v.get("description").and_then(Value::as_str))
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        out.push(ParamDoc {
            name: format!("{prefix}{name}"),
            ty: type_of(prop, defs),
            default: prop.get("default").filter(|d| !d.is_null()).map(|d| d.to_string()),
            required: required.contains(&name.as_str()),
            doc,
        });
        if target.get("properties").is_some() {
            walk(target, defs, &format!("{prefix}{name}."), out);
        }
    }
}

/// Follows `$ref` (and the `anyOf [T, null]` of an optional field) to the definition that says what a value is.
fn resolve<'a>(v: &'a Value, defs: Option<&'a Value>) -> &'a Value {
    if let Some(name) = v.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/$defs/"))
        && let Some(d) = defs.and_then(|d| d.get(name))
    {
        return resolve(d, defs);
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(alts) = v.get(key).and_then(Value::as_array) {
            let non_null: Vec<&Value> = alts.iter().filter(|a| a.get("type") != Some(&Value::from("null"))).collect();
            if non_null.len() == 1 {
                return resolve(non_null[0], defs);
            }
        }
    }
    v
}

fn type_of(v: &Value, defs: Option<&Value>) -> String {
    let v = resolve(v, defs);
    if let Some(values) = v.get("enum").and_then(Value::as_array) {
        return values.iter().map(Value::to_string).collect::<Vec<_>>().join(" | ");
    }
    if let Some(c) = v.get("const") {
        return c.to_string();
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(alts) = v.get(key).and_then(Value::as_array) {
            let parts: Vec<String> = alts
                .iter()
                .filter(|a| a.get("type") != Some(&Value::from("null")))
                .map(|a| {
                    let t = type_of(a, defs);
                    match a.get("description").and_then(Value::as_str) {
                        Some(d) if a.get("const").is_none() && t == "table" => format!("table {d}"),
                        _ => t,
                    }
                })
                .collect();
            return parts.join(" | ");
        }
    }
    let types: Vec<&str> = match v.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect(),
        _ => vec![],
    };
    let one = |t: &str| -> String {
        match t {
            "array" => match v.get("items") {
                Some(items) => format!("list of {}", type_of(items, defs)),
                None => "list".into(),
            },
            "object" => "table".into(),
            "integer" => match v.get("minimum").and_then(Value::as_f64) {
                Some(m) => format!("integer ≥ {m}"),
                None => "integer".into(),
            },
            other => other.into(),
        }
    };
    if types.is_empty() { "any".into() } else { types.iter().map(|t| one(t)).collect::<Vec<_>>().join(" | ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(rows: &'a [ParamDoc], name: &str) -> &'a ParamDoc {
        rows.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no {name} in {rows:#?}"))
    }

    #[test]
    fn every_stage_lists_its_parameters_with_types_defaults_and_meanings() {
        let mut undocumented = vec![];
        for s in crate::registry() {
            for r in param_docs(&s.params_schema()) {
                assert!(!r.ty.is_empty() && r.ty != "any", "{}: {r:?}", s.kind());
                if r.doc.is_empty() {
                    undocumented.push(format!("{}.{}", s.kind(), r.name));
                }
            }
        }
        assert!(undocumented.is_empty(), "parameters without a doc comment: {undocumented:?}");
        let policy = crate::registry().into_iter().find(|s| s.kind() == "policy").unwrap();
        let rows = param_docs(&policy.params_schema());
        let method = find(&rows, "method");
        assert!(method.required && method.ty.contains("\"dpo\"") && method.ty.contains("\"e-dpo\""), "{method:?}");
        let beta = find(&rows, "beta");
        assert_eq!((beta.ty.as_str(), beta.default.as_deref(), beta.required), ("number", Some("0.1"), false));
        assert!(find(&rows, "gamma").ty.contains("number"), "{rows:#?}");
        let sft = crate::registry().into_iter().find(|s| s.kind() == "sft").unwrap();
        let rows = param_docs(&sft.params_schema());
        assert!(rows.iter().any(|r| r.name.starts_with("arch.")), "nested tables are listed field by field: {rows:#?}");
        let subsample = crate::registry().into_iter().find(|s| s.kind() == "subsample").unwrap();
        let size = find(&param_docs(&subsample.params_schema()), "size").clone();
        assert_eq!(size.ty, "integer ≥ 1 | \"max\"", "{size:?}");
        assert!(!size.doc.is_empty(), "{size:?}");
    }

    /// The least value a listing states for an integer is one the stage accepts (a reviewer's finding: "integer ≥ 0"
    /// was listed for parameters that refuse 0).
    #[test]
    fn the_stated_least_integer_is_accepted() {
        // the fewest parameters each stage needs to validate
        let base = |kind: &str| -> serde_json::Map<String, Value> {
            let v = match kind {
                "import" => serde_json::json!({"path": "x"}),
                "import_model" => serde_json::json!({"path": "x.gguf"}),
                "subsample" => serde_json::json!({"rho": 0.5, "size": 10}),
                "generate" => serde_json::json!({"n": 10}),
                "policy" => serde_json::json!({"method": "e-dpo", "gamma": 0.1}),
                "evaluate" | "label" => serde_json::json!({"oracle": "synthetic"}),
                _ => serde_json::json!({}),
            };
            v.as_object().unwrap().clone()
        };
        let (mut refused, mut accepted) = (vec![], vec![]);
        for s in crate::registry() {
            let b = base(s.kind());
            if let Err(e) = s.validate(&b) {
                panic!("{}: the base parameters do not validate: {e}", s.kind());
            }
            for r in param_docs(&s.params_schema()).iter().filter(|r| !r.name.contains('.')) {
                let Some(least) = r.ty.split(" | ").find_map(|t| t.strip_prefix("integer ≥ ")) else { continue };
                let mut p = b.clone();
                // a bound relative to another parameter: that one at its least too
                let companion = match (s.kind(), r.name.as_str()) {
                    ("policy", "kl_batch_size") => Some(("kl_source", Value::from("ref_samples_uniform"))),
                    ("evaluate" | "precompute", "max_len") => Some(("max_new_tokens", Value::from(1))),
                    ("synth", "vocab_size") => Some(("topic_words", Value::from(1))),
                    _ => None,
                };
                if let Some((k, v)) = companion {
                    p.insert(k.into(), v);
                }
                let least = least.parse::<u64>().unwrap();
                p.insert(r.name.clone(), Value::from(least));
                if let Err(e) = s.validate(&p) {
                    refused.push(format!("{}.{} = {least}: {e}", s.kind(), r.name));
                }
                // and one less is refused when the manifest loads, not when the node runs
                if least > 0 {
                    p.insert(r.name.clone(), Value::from(least - 1));
                    if s.validate(&p).is_ok() {
                        accepted.push(format!("{}.{} = {}", s.kind(), r.name, least - 1));
                    }
                }
            }
        }
        assert!(refused.is_empty(), "stated least values that are refused: {refused:#?}");
        assert!(accepted.is_empty(), "values below the stated least that load: {accepted:#?}");
    }
}
