//! `gc`: removes blobs that no cache entry and no recent run journal references. Blobs younger than the grace
//! period are kept whatever refers to them, so a run that has uploaded outputs but not yet written their entry is
//! never robbed.
//!
//! It errs on the side of keeping: a file under `cache/` or `runs/` that cannot be parsed is skipped and reported
//! (its blobs are not known, so they may be collected; an entry that cannot be parsed is never served anyway); any
//! output hash an entry names counts as live even when the rest of the entry is damaged; a file under `blobs/`
//! whose name is not a blob address is left alone; and when the listing of a live directory artifact cannot be
//! read, no blob is removed at all, because its files cannot be told apart from garbage. It also removes what killed
//! runs left half-written and older than the grace period (a `file://` store's `NAME#N` files, the local area's
//! half-assembled directory artifacts): nothing reads them, and nothing else would remove them.

use crate::store::{Store, is_hash};
use serde::Serialize;
use std::collections::HashSet;
use std::time::Duration;

#[derive(Debug, Serialize)]
pub struct GcReport {
    pub removed: usize,
    pub removed_bytes: u64,
    pub referenced: usize,
    pub recent: usize,
    /// Unreferenced blobs kept because of `held_back`.
    pub held: usize,
    /// Files gc could not use and left alone (each was reported on stderr).
    pub skipped: Vec<String>,
    /// Partial files and directories of killed runs removed ([`Store::leftovers`]), and their bytes.
    pub leftovers: usize,
    pub leftover_bytes: u64,
    /// Why nothing was removed, when gc could not tell live blobs from garbage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_back: Option<String>,
}

/// Output hashes (and their kinds) named by a cache entry or a journal's node, read leniently.
fn outputs(v: &serde_json::Value) -> Vec<(String, bool)> {
    v["outputs"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(|o| Some((o["hash"].as_str()?.to_string(), o["kind"] == "dir")))
        .collect()
}

pub fn gc(store: &Store, grace: Duration, dry_run: bool) -> anyhow::Result<GcReport> {
    let now = chrono::Utc::now();
    let cutoff = now - chrono::Duration::from_std(grace)?;
    let mut live: HashSet<String> = HashSet::new();
    let mut dirs: Vec<(String, String)> = Vec::new(); // (listing hash, who names it)
    let mut skipped = Vec::new();
    let mut skip = |path: &str, why: String| {
        eprintln!("warning: gc skipped {path}: {why}");
        skipped.push(path.to_string());
    };
    let parse = |bytes: &[u8]| serde_json::from_slice::<serde_json::Value>(bytes).map_err(|e| e.to_string());

    for (path, _, _) in store.list("cache")? {
        if !path.ends_with(".json") {
            skip(&path, "not a cache entry (entries are cache/XX/KEY.json)".into());
            continue;
        }
        let v = match store.read(&path).map(|b| b.map(|b| parse(&b))) {
            Ok(Some(Ok(v))) => v,
            Ok(Some(Err(e))) => {
                skip(&path, format!("not JSON ({e})"));
                continue;
            }
            Ok(None) => continue, // removed meanwhile
            Err(e) if e.downcast_ref::<crate::store::Unreadable>().is_some() => {
                skip(&path, e.to_string());
                continue;
            }
            Err(e) => return Err(e),
        };
        for (h, dir) in outputs(&v) {
            if dir {
                dirs.push((h.clone(), path.clone()));
            }
            live.insert(h);
        }
    }
    for (path, _, modified) in store.list("runs")? {
        if modified < cutoff {
            continue;
        }
        let v = match store.read(&path).map(|b| b.map(|b| parse(&b))) {
            Ok(Some(Ok(v))) => v,
            Ok(Some(Err(e))) => {
                skip(&path, format!("not a run journal ({e})"));
                continue;
            }
            Ok(None) => continue,
            Err(e) if e.downcast_ref::<crate::store::Unreadable>().is_some() => {
                skip(&path, e.to_string());
                continue;
            }
            Err(e) => return Err(e),
        };
        for n in v["nodes"].as_array().into_iter().flatten() {
            for (h, dir) in outputs(n) {
                if dir {
                    dirs.push((h.clone(), path.clone()));
                }
                live.insert(h);
            }
        }
    }
    let mut held_back = None;
    let mut seen = HashSet::new();
    for (h, by) in dirs {
        if !seen.insert(h.clone()) {
            continue;
        }
        match store.tree(&h) {
            Ok(t) => live.extend(t.files.into_iter().map(|f| f.hash)),
            Err(e) if e.downcast_ref::<crate::store::Corrupt>().is_some() => {
                // A missing listing names no files; an unreadable one names files we cannot know.
                let missing = !is_hash(&h) || !store.has_blob(&h)?;
                if !missing && held_back.is_none() {
                    held_back = Some(format!(
                        "the listing of directory artifact {h} (named by {by}) cannot be read ({e}); its files cannot be \
                         told from garbage, so nothing is removed (run the manifest that produced it to repair it, or \
                         move {by} out of cache/)"
                    ));
                }
            }
            Err(e) => return Err(e),
        }
    }
    let mut r = GcReport {
        removed: 0,
        removed_bytes: 0,
        referenced: 0,
        recent: 0,
        held: 0,
        skipped,
        leftovers: 0,
        leftover_bytes: 0,
        held_back,
    };
    if let Some(why) = &r.held_back {
        eprintln!("warning: gc: {why}");
    }
    for (path, size, modified) in store.list("blobs")? {
        let hash = path.rsplit('/').next().unwrap_or("");
        let well_formed = is_hash(hash) && path == format!("blobs/{}/{hash}", &hash[..2]);
        if !well_formed {
            eprintln!("warning: gc skipped {path}: not a blob (blobs are blobs/XX/HASH); left alone");
            r.skipped.push(path);
        } else if live.contains(hash) {
            r.referenced += 1;
        } else if modified >= cutoff {
            r.recent += 1;
        } else if r.held_back.is_some() {
            r.held += 1;
        } else {
            r.removed += 1;
            r.removed_bytes += size;
            if !dry_run {
                store.delete(&path)?;
            }
        }
    }
    // what killed runs left half-written: never served, but never removed by anything else (older than the grace
    // period, so a run writing one now is not robbed)
    for (path, bytes) in store.leftovers(cutoff) {
        if !dry_run {
            let gone = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            if let Err(e) = gone {
                eprintln!("warning: gc could not remove {}: {e}", path.display());
                continue;
            }
        }
        r.leftovers += 1;
        r.leftover_bytes += bytes;
    }
    Ok(r)
}
