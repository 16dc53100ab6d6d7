//! `gc`: removes blobs that no cache entry and no recent run journal references. Blobs younger than the grace
//! period are kept whatever refers to them, so a run that has uploaded outputs but not yet written their entry is
//! never robbed.

use crate::store::{Entry, Store};
use rmdistill_stages::ArtifactKind;
use serde::Serialize;
use std::collections::HashSet;
use std::time::Duration;

#[derive(Debug, Serialize)]
pub struct GcReport {
    pub removed: usize,
    pub removed_bytes: u64,
    pub referenced: usize,
    pub recent: usize,
}

/// Parses `90s`, `30m`, `24h`, `7d`.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| anyhow::anyhow!("--grace {s}: expected a number and a unit, e.g. 24h"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => anyhow::bail!("--grace {s}: unknown unit `{unit}` (s, m, h, d)"),
    };
    Ok(Duration::from_secs(secs))
}

pub fn gc(store: &Store, grace: Duration, dry_run: bool) -> anyhow::Result<GcReport> {
    let now = chrono::Utc::now();
    let cutoff = now - chrono::Duration::from_std(grace)?;
    let mut live: HashSet<String> = HashSet::new();
    let add_output = |hash: &str, kind: &ArtifactKind, live: &mut HashSet<String>| -> anyhow::Result<()> {
        live.insert(hash.to_string());
        if *kind == ArtifactKind::Dir {
            if let Ok(t) = store.tree(hash) {
                live.extend(t.files.into_iter().map(|f| f.hash));
            }
        }
        Ok(())
    };
    for (path, _, _) in store.list("cache")? {
        if let Some(e) = store.get_path_json::<Entry>(&path)? {
            for o in e.outputs.values() {
                add_output(&o.hash, &o.kind, &mut live)?;
            }
        }
    }
    for (path, _, modified) in store.list("runs")? {
        if modified < cutoff {
            continue;
        }
        if let Some(j) = store.get_path_json::<serde_json::Value>(&path)? {
            for n in j["nodes"].as_array().into_iter().flatten() {
                for o in n["outputs"].as_object().into_iter().flat_map(|m| m.values()) {
                    let kind = if o["kind"] == "dir" { ArtifactKind::Dir } else { ArtifactKind::File };
                    if let Some(h) = o["hash"].as_str() {
                        add_output(h, &kind, &mut live)?;
                    }
                }
            }
        }
    }
    let mut r = GcReport { removed: 0, removed_bytes: 0, referenced: 0, recent: 0 };
    for (path, size, modified) in store.list("blobs")? {
        let hash = path.rsplit('/').next().unwrap_or("");
        if live.contains(hash) {
            r.referenced += 1;
        } else if modified >= cutoff {
            r.recent += 1;
        } else {
            r.removed += 1;
            r.removed_bytes += size;
            if !dry_run {
                store.delete(&path)?;
            }
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        assert_eq!(super::parse_duration("24h").unwrap().as_secs(), 86400);
        assert_eq!(super::parse_duration("0s").unwrap().as_secs(), 0);
        assert!(super::parse_duration("5x").is_err());
    }
}
