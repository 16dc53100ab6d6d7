//! Reusing another node's computation: a stage that could compute something itself (π_ref's samples in `evaluate`,
//! π_ref's log-probs in `precompute`) may instead read it from a bound upstream table, but only when that table
//! records it was computed from the same inputs (content hashes) with the same parameters. The record is a JSON
//! object stored in the table's metadata; [`record_mismatch`] names what differs, so the node fails saying why
//! instead of silently using something it would not have computed.
use crate::port::{InputArtifact, StageError, StageResult};
use serde_json::Value;
use std::path::Path;

/// A table bound to `slot` for reuse, and what a usable one is (for the error that refuses it).
pub struct Offered<'a> {
    pub slot: &'static str,
    pub bound: &'a InputArtifact,
    /// What to bind instead, e.g. "the `rewards` of a precompute node with the same pairs, …".
    pub wanted: &'static str,
}

impl Offered<'_> {
    /// The error refusing the table: which one, why, and what to bind instead.
    pub fn refuse(&self, why: impl std::fmt::Display) -> StageError {
        StageError::invalid(
            self.slot,
            format!("{} ({}): {why}; bind {}", self.bound.node, self.bound.path.display(), self.wanted),
        )
    }

    /// Fails unless the table's record under `key` equals `ours`; `how` names the computation ("drawn otherwise …").
    pub fn check_record(&self, key: &str, ours: &Value, how: &str) -> StageResult<()> {
        let differ = record_mismatch(ours, read_record(&self.bound.path, key)?.as_ref());
        if differ.is_empty() { Ok(()) } else { Err(self.refuse(format!("{how} otherwise ({})", differ.join("; ")))) }
    }

    /// Fails unless the table has as many rows as this node.
    pub fn check_rows(&self, theirs: usize, ours: usize) -> StageResult<()> {
        if theirs == ours { Ok(()) } else { Err(self.refuse(format!("{theirs} rows, this node has {ours}"))) }
    }
}

/// The fields where a bound table's record (`theirs`, `None` when the table has none) differs from this node's, as
/// `field: … there, … here`; empty when what the table holds can be reused.
pub fn record_mismatch(ours: &Value, theirs: Option<&Value>) -> Vec<String> {
    let Some(theirs) = theirs else {
        return vec![
            "the table has no record of how it was computed (not an output of the stage that makes it)".into(),
        ];
    };
    let (Value::Object(a), Value::Object(b)) = (ours, theirs) else {
        return vec![format!("malformed record {theirs}")];
    };
    differing_keys(a, b, |_| true)
        .into_iter()
        .map(|k| {
            let show = |v: Option<&Value>| v.map_or_else(|| "absent".to_string(), |v| v.to_string());
            format!("{k}: {} there, {} here", show(b.get(k)), show(a.get(k)))
        })
        .collect()
}

/// The keys, among those `keep` takes, whose values differ between two records (absent on one side counts), sorted.
pub fn differing_keys<'a>(
    a: &'a serde_json::Map<String, Value>,
    b: &'a serde_json::Map<String, Value>,
    keep: impl Fn(&str) -> bool,
) -> Vec<&'a String> {
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).filter(|k| keep(k)).collect();
    keys.sort();
    keys.dedup();
    keys.retain(|k| a.get(*k) != b.get(*k));
    keys
}

/// The record stored under `key` in a Parquet file's metadata, if any (None when absent or not JSON).
pub fn read_record(path: &Path, key: &str) -> StageResult<Option<Value>> {
    let kv = crate::table::read_kv(path)?;
    Ok(kv.iter().find(|(k, _)| k == key).and_then(|(_, v)| serde_json::from_str::<Value>(v).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mismatches_name_each_field_both_ways() {
        let ours = json!({"a": 1, "b": "x", "c": null});
        assert!(record_mismatch(&ours, Some(&ours.clone())).is_empty());
        assert_eq!(
            record_mismatch(&ours, Some(&json!({"a": 2, "b": "x", "c": null, "d": true}))),
            vec!["a: 2 there, 1 here", "d: true there, absent here"]
        );
        assert_eq!(record_mismatch(&ours, Some(&json!({"a": 1, "b": "x"}))), vec!["c: absent there, null here"]);
        assert_eq!(record_mismatch(&ours, None).len(), 1);
        assert_eq!(record_mismatch(&ours, Some(&json!([1]))), vec!["malformed record [1]"]);
    }
}
