//! A store that never serves a corrupt result: a leaf output flipped or truncated is seen by `status` (which says
//! why the node would run), refused by `show` (exit 3), and repaired by the next `run` or by `run --force`; garbage
//! cache entries and node pointers are set aside and recomputed instead of blocking the store; an entry that points
//! at another valid blob, or whose key does not match its record, is rejected the same way; stray files under
//! `cache/`, `blobs/` and `runs/` do not break `gc`, which never deletes a live blob.

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// gen → sub over two ρ; the sub nodes are leaves.
const M: &str = r#"[stages.gen]
kind = "generate"
params = { n = 2000, seed = 7 }

[stages.sub]
kind = "subsample"
inputs = { pairs = "gen.pairs" }
sweep = { rho = [0.2, 0.5] }
params = { rho = "${rho}", size = 100, seed = 0 }
"#;

fn entry_of(store: &Path, node: &str) -> (PathBuf, Value) {
    for d in std::fs::read_dir(store.join("cache")).unwrap().flatten() {
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            let v: Value = serde_json::from_slice(&std::fs::read(f.path()).unwrap()).unwrap();
            if v["node"] == node {
                return (f.path(), v);
            }
        }
    }
    panic!("no entry of {node}")
}

fn blob(store: &Path, hash: &str) -> PathBuf {
    store.join("blobs").join(&hash[..2]).join(hash)
}

fn hash_of(p: &Path) -> String {
    blake3::hash(&std::fs::read(p).unwrap()).to_hex().to_string()
}

const LEAF: &str = "sub@rho=0.2";

fn leaf_blob(w: &Work) -> (String, PathBuf) {
    let (_, e) = entry_of(&w.store(), LEAF);
    let h = e["outputs"]["dataset"]["hash"].as_str().unwrap().to_string();
    let p = blob(&w.store(), &h);
    (h, p)
}

/// `status` says the leaf would run, and why; `show` refuses it with exit 3; `run` runs only it and repairs the
/// blob; `show` works again.
fn detected_and_repaired(w: &Work, hash: &str, path: &Path, why: &str) {
    let o = w.run(&["status", "m.toml"]);
    assert_eq!(o.status.code(), Some(0), "{}", s(&o.stderr));
    let out = s(&o.stdout);
    assert!(out.contains(&format!("run      {LEAF}")) && out.contains("2 cached, 1 would run"), "{out}");
    assert!(out.contains(&format!("corrupt blob {hash} (output `dataset` of {LEAF}): {why}")), "{out}");
    let o = w.run(&["show", "m.toml", LEAF]);
    assert_eq!(o.status.code(), Some(3), "{}", s(&o.stderr));
    assert!(s(&o.stderr).contains(&format!("corrupt blob {hash}")), "{}", s(&o.stderr));
    let r = w.run(&["run", "m.toml", "--json"]);
    assert!(r.status.success(), "{}", s(&r.stderr));
    let summary: Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(nodes_with(&summary, "ran"), vec![LEAF.to_string()], "{summary}");
    assert_eq!(hash_of(path), hash, "the blob was not repaired");
    assert!(w.ok(&["show", "m.toml", LEAF, "--rows", "2"]).contains("(100 rows"));
    assert!(w.ok(&["status", "m.toml"]).contains("3 cached, 0 would run"));
    assert_store_consistent(&w.store());
}

#[test]
fn a_leaf_blob_flipped_or_truncated_is_detected_and_repaired() {
    let w = Work::new();
    w.write("m.toml", M);
    w.ok(&["run", "m.toml", "-q"]);
    let (h, p) = leaf_blob(&w);
    let len = std::fs::metadata(&p).unwrap().len();

    // One bit flipped, same size.
    let mut b = std::fs::read(&p).unwrap();
    b[len as usize / 2] ^= 0x10;
    std::fs::write(&p, &b).unwrap();
    detected_and_repaired(&w, &h, &p, &format!("its {len} bytes hash to"));

    // Truncated: caught by its size.
    std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(len / 3).unwrap();
    detected_and_repaired(&w, &h, &p, &format!("its {} bytes hash to", len / 3));

    // Gone.
    std::fs::remove_file(&p).unwrap();
    let out = w.ok(&["status", "m.toml"]);
    assert!(out.contains(&format!("missing blob {h} (output `dataset` of {LEAF}): not in the store")), "{out}");
    assert_eq!(w.run_json(&["m.toml"])["ran"], 1);
    assert_eq!(hash_of(&p), h);
}

#[test]
fn a_blob_replaced_by_a_directory_is_set_aside_and_repaired() {
    // A directory in a blob's place cannot be renamed over: the repair moves it to blobs-corrupt/ (never deleted,
    // like corrupt entries) and then stores the bytes.
    let w = Work::new();
    w.write("m.toml", M);
    w.ok(&["run", "m.toml", "-q"]);
    let (h, p) = leaf_blob(&w);
    std::fs::remove_file(&p).unwrap();
    std::fs::create_dir(&p).unwrap();
    std::fs::write(p.join("inside"), "kept").unwrap();
    let r = w.run(&["run", "m.toml", "--json"]);
    assert!(r.status.success(), "{}", s(&r.stderr));
    let aside = w.store().join("blobs-corrupt").join(&h);
    assert!(
        s(&r.stderr).contains(&format!(
            "blob {h} in the store is corrupt (not a regular file); moved it to blobs-corrupt/{h} and storing the new \
             bytes"
        )),
        "{}",
        s(&r.stderr)
    );
    let summary: Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(nodes_with(&summary, "ran"), vec![LEAF.to_string()], "{summary}");
    assert_eq!(hash_of(&p), h, "the blob was not repaired");
    assert_eq!(std::fs::read_to_string(aside.join("inside")).unwrap(), "kept", "the directory was not set aside");
    assert!(w.ok(&["status", "m.toml"]).contains("3 cached, 0 would run"));
    assert_store_consistent(&w.store());

    // The same under --force, for a blob that is an input of others, and again (the name set aside is taken).
    let (_, e) = entry_of(&w.store(), "gen");
    let g = e["outputs"]["pairs"]["hash"].as_str().unwrap().to_string();
    let gp = blob(&w.store(), &g);
    for round in 0..2 {
        std::fs::remove_file(&gp).unwrap();
        std::fs::create_dir(&gp).unwrap();
        let o = w.run(&["run", "m.toml", "--force", "gen", "--json"]);
        assert!(o.status.success(), "{}", s(&o.stderr));
        let dest = if round == 0 { g.clone() } else { format!("{g}.1") };
        assert!(s(&o.stderr).contains(&format!("moved it to blobs-corrupt/{dest} and storing")), "{}", s(&o.stderr));
        assert_eq!(hash_of(&gp), g);
    }
    assert_store_consistent(&w.store());
    assert_eq!(w.run_json(&["m.toml"])["ran"], 0);
}

#[test]
fn a_bit_flip_is_found_after_the_verified_state_was_remembered() {
    // The fast path (a remembered hash for an unchanged file) must not hide a write: any write changes ctime, even
    // one that puts the old mtime back.
    let w = Work::new();
    w.write("m.toml", M);
    w.ok(&["run", "m.toml", "-q"]);
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(w.ok(&["status", "m.toml"]).contains("3 cached")); // hashes and remembers the settled blobs
    let (h, p) = leaf_blob(&w);
    let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
    let mut b = std::fs::read(&p).unwrap();
    b[10] ^= 1;
    std::fs::write(&p, &b).unwrap();
    std::fs::File::options().write(true).open(&p).unwrap().set_modified(mtime).unwrap();
    detected_and_repaired(&w, &h, &p, &format!("its {} bytes hash to", b.len()));
}

#[test]
fn force_replaces_a_corrupt_blob() {
    let w = Work::new();
    w.write("m.toml", M);
    w.ok(&["run", "m.toml", "-q"]);
    for node in [LEAF, "gen"] {
        let (_, e) = entry_of(&w.store(), node);
        let out = if node == "gen" { "pairs" } else { "dataset" };
        let h = e["outputs"][out]["hash"].as_str().unwrap().to_string();
        let p = blob(&w.store(), &h);
        let mut b = std::fs::read(&p).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0x01;
        std::fs::write(&p, &b).unwrap();
        let o = w.run(&["run", "m.toml", "--force", node, "--json"]);
        assert!(o.status.success(), "{}", s(&o.stderr));
        assert!(s(&o.stderr).contains(&format!("blob {h} in the store is corrupt")), "{}", s(&o.stderr));
        assert!(nodes_with(&serde_json::from_slice(&o.stdout).unwrap(), "ran").contains(&node.to_string()));
        assert_eq!(hash_of(&p), h, "--force {node} did not repair its blob");
    }
    assert_store_consistent(&w.store());
    assert_eq!(w.run_json(&["m.toml"])["ran"], 0);
}

#[test]
fn garbage_entries_and_pointers_are_set_aside_and_recomputed() {
    let w = Work::new();
    w.write("m.toml", M);
    w.ok(&["run", "m.toml", "-q"]);
    let store = w.store();

    // A garbage entry: status, run and gc all go on; the entry is set aside and recomputed.
    let (path, _) = entry_of(&store, "gen");
    let name = path.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::write(&path, "{ this is not an entry").unwrap();
    let o = w.run(&["status", "m.toml"]);
    assert_eq!(o.status.code(), Some(0), "{}", s(&o.stderr));
    assert!(
        s(&o.stderr).contains(&format!("cache entry cache/{}/{name} cannot be used (not JSON:", &name[..2]))
            && s(&o.stderr).contains(&format!("set aside as cache-corrupt/{name}")),
        "{}",
        s(&o.stderr)
    );
    assert!(s(&o.stdout).contains("run      gen") && s(&o.stdout).contains("could not be used"), "{}", s(&o.stdout));
    assert!(store.join("cache-corrupt").join(&name).exists());
    let r = w.run_json(&["m.toml"]);
    assert_eq!(nodes_with(&r, "ran"), vec!["gen".to_string()], "{r}");
    assert_eq!(nodes_with(&r, "cached").len(), 2, "gen reproduced its bytes: its dependents stay cached");
    assert_store_consistent(&store);

    // A directory where an entry should be.
    let (path, _) = entry_of(&store, "sub@rho=0.5");
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let r = w.run_json(&["m.toml"]);
    assert_eq!(nodes_with(&r, "ran"), vec!["sub@rho=0.5".to_string()], "{r}");

    // A garbage node pointer (it only explains changes): reported, set aside, and the run goes on.
    let ptr = std::fs::read_dir(store.join("nodes")).unwrap().flatten().next().unwrap().path();
    std::fs::write(&ptr, [0xff, 0xfe, 0x00]).unwrap();
    for cmd in [vec!["status", "m.toml"], vec!["run", "m.toml"], vec!["gc", "m.toml", "--grace", "0s"]] {
        let o = w.run(&cmd);
        assert_eq!(o.status.code(), Some(0), "{cmd:?}: {}", s(&o.stderr));
    }
    assert!(store.join("nodes-corrupt").join(ptr.file_name().unwrap()).exists());
    // And a pointer that belongs to another node: not used for this one.
    let (_, e) = entry_of(&store, "gen");
    let ptrs: Vec<PathBuf> = std::fs::read_dir(store.join("nodes")).unwrap().flatten().map(|e| e.path()).collect();
    for p in &ptrs {
        std::fs::write(p, serde_json::json!({"node": "someone-else", "key": e["key"]}).to_string()).unwrap();
    }
    let st = w.run(&["explain", "m.toml", "sub@rho=0.2"]);
    assert!(st.status.success(), "{}", s(&st.stderr));
    assert!(s(&st.stderr).contains("it is the pointer of node `someone-else`"), "{}", s(&st.stderr));
    assert_eq!(w.run_json(&["m.toml"])["ran"], 0);
}

#[test]
fn an_entry_pointing_at_another_valid_blob_or_another_key_is_rejected() {
    let w = Work::new();
    w.write("m.toml", M);
    let first = w.run_json(&["m.toml"]);
    let hashes = output_hashes(&first);
    let store = w.store();
    let other = &hashes["sub@rho=0.5"]["dataset"];

    // The leaf's entry edited to name the other leaf's (valid, intact) blob, size included.
    let (path, mut e) = entry_of(&store, LEAF);
    e["outputs"]["dataset"]["hash"] = Value::String(other.clone());
    e["outputs"]["dataset"]["size"] = std::fs::metadata(blob(&store, other)).unwrap().len().into();
    std::fs::write(&path, serde_json::to_vec_pretty(&e).unwrap()).unwrap();
    let o = w.run(&["status", "m.toml"]);
    assert!(s(&o.stderr).contains("do not match its `check` hash"), "{}", s(&o.stderr));
    assert!(s(&o.stdout).contains(&format!("run      {LEAF}")), "{}", s(&o.stdout));
    let r = w.run_json(&["m.toml"]);
    assert_eq!(nodes_with(&r, "ran"), vec![LEAF.to_string()]);
    assert_eq!(output_hashes(&r)[LEAF], hashes[LEAF], "the recomputed entry names the right blob");

    // An entry of another key copied under this key (the whole file, check hash and all).
    let (path, _) = entry_of(&store, LEAF);
    let (other_path, _) = entry_of(&store, "sub@rho=0.5");
    std::fs::copy(&other_path, &path).unwrap();
    let o = w.run(&["run", "m.toml", "--json"]);
    assert!(o.status.success(), "{}", s(&o.stderr));
    assert!(s(&o.stderr).contains("it is stored under key"), "{}", s(&o.stderr));
    assert_eq!(output_hashes(&serde_json::from_slice(&o.stdout).unwrap())[LEAF], hashes[LEAF]);

    // An entry without a check hash (edited out, or as versions before checks wrote them), even one that is
    // otherwise right: refused, since its outputs are in no key (they could name any blobs), and recomputed.
    let (path, mut e) = entry_of(&store, LEAF);
    e.as_object_mut().unwrap().remove("check");
    std::fs::write(&path, serde_json::to_vec_pretty(&e).unwrap()).unwrap();
    let o = w.run(&["run", "m.toml", "--json"]);
    assert!(o.status.success(), "{}", s(&o.stderr));
    assert!(s(&o.stderr).contains("it has no `check` hash"), "{}", s(&o.stderr));
    assert_eq!(nodes_with(&serde_json::from_slice(&o.stdout).unwrap(), "ran"), vec![LEAF.to_string()]);

    // Re-serialised by another tool (one-space indent) with another node's outputs, its check kept: refused.
    // Before, the check was looked for and not found, and the entry served the other node's data.
    let (path, mut e) = entry_of(&store, LEAF);
    let (_, other) = entry_of(&store, "sub@rho=0.5");
    e["outputs"] = other["outputs"].clone();
    let text = serde_json::to_string_pretty(&e).unwrap().replace("\n  ", "\n ");
    std::fs::write(&path, text).unwrap();
    let o = w.run(&["run", "m.toml", "--json"]);
    assert!(o.status.success(), "{}", s(&o.stderr));
    assert!(s(&o.stderr).contains("do not match its `check` hash"), "{}", s(&o.stderr));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(nodes_with(&r, "ran"), vec![LEAF.to_string()]);
    assert_eq!(output_hashes(&r)[LEAF], hashes[LEAF]);
    assert_store_consistent(&store);
}

#[test]
fn stray_files_do_not_break_gc_and_live_blobs_survive() {
    let w = Work::new();
    w.write("m.toml", M);
    let first = w.run_json(&["m.toml"]);
    let store = w.store();
    std::fs::write(store.join("cache/README"), "notes").unwrap();
    std::fs::create_dir_all(store.join("cache/zz")).unwrap();
    std::fs::write(store.join("cache/zz/junk.json"), "junk").unwrap();
    std::fs::write(store.join("blobs/README"), "notes").unwrap();
    std::fs::create_dir_all(store.join("blobs/qq")).unwrap();
    std::fs::write(store.join("blobs/qq/notahash"), "x").unwrap();
    std::fs::create_dir_all(store.join("runs")).unwrap();
    std::fs::write(store.join("runs/garbage.json"), "{").unwrap();
    // An orphan blob: the only thing gc may remove.
    let orphan = blake3::hash(b"orphan").to_hex().to_string();
    std::fs::create_dir_all(store.join("blobs").join(&orphan[..2])).unwrap();
    std::fs::write(blob(&store, &orphan), "orphan").unwrap();
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options().write(true).open(blob(&store, &orphan)).unwrap().set_modified(hour_ago).unwrap();

    // Journals within the grace period are read (the garbage one is reported); the orphan is older than it.
    let o = w.run(&["gc", "m.toml", "--grace", "10m", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", s(&o.stderr));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["removed"], 1, "{r}");
    let skipped: Vec<&str> = r["skipped"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
    for p in ["cache/README", "cache/zz/junk.json", "blobs/README", "blobs/qq/notahash", "runs/garbage.json"] {
        assert!(skipped.contains(&p), "{p} not reported as skipped: {skipped:?}");
        assert!(s(&o.stderr).contains(&format!("gc skipped {p}")), "{}", s(&o.stderr));
    }
    assert!(!blob(&store, &orphan).exists());
    assert!(store.join("blobs/README").exists() && store.join("blobs/qq/notahash").exists(), "gc removed stray files");
    // Every live blob is still there: nothing runs again.
    for outs in output_hashes(&first).values() {
        for h in outs.values() {
            assert!(blob(&store, h).exists(), "gc deleted live blob {h}");
        }
    }
    assert_eq!(w.run_json(&["m.toml"])["ran"], 0);
}

/// What a killed run leaves half-written (a red-team finding: never served, but never removed either, and gc said
/// nothing): object_store's `NAME#N` files in the store, a half-assembled directory artifact in the local area
/// (hard links that keep deleted blobs' space), a damaged one set aside. gc removes those unchanged for longer than
/// the grace period and says so; younger ones may be a running run's, and stay. "Unchanged" is the newest status
/// change anywhere in a folder (a reviewer's finding: a tree being assembled deep down kept its top folder's time).
#[test]
fn gc_removes_what_killed_runs_left_half_written() {
    let w = Work::new();
    w.write("m.toml", M);
    w.run_json(&["m.toml"]);
    let store = w.store();
    let local = w.path().join(".rmdistill/local");
    let entry = std::fs::read_dir(store.join("cache")).unwrap().flatten().next().unwrap().path();
    let staged = [entry.join("0123.json#1"), store.join("runs/r.json#12")];
    for f in &staged {
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, "half").unwrap();
    }
    let not_staging = [store.join("runs/a#b"), store.join("runs/a#1#2")];
    for f in &not_staging {
        std::fs::write(f, "x").unwrap();
    }
    let tmp_tree = local.join("trees/.tmpAbC123");
    std::fs::create_dir_all(tmp_tree.join("sub")).unwrap();
    std::fs::write(tmp_tree.join("sub/model.bin"), vec![0u8; 1000]).unwrap();
    let damaged = local.join("trees/ab12.damaged.77.123");
    std::fs::create_dir_all(&damaged).unwrap();
    // a tree still being assembled: its top folder is old, a file was linked into it deep down just now
    let busy = local.join("trees/.tmpBusy99");
    std::fs::create_dir_all(busy.join("a/b")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    std::fs::write(busy.join("a/b/weights.bin"), "w").unwrap();
    let young = store.join("runs/now.json#3");
    std::fs::write(&young, "being written").unwrap();

    let dry = w.ok(&["gc", "m.toml", "--grace", "2s", "--dry-run"]);
    assert!(dry.contains("would remove 4 partial file(s) or folder(s) that killed runs left (1008 bytes)"), "{dry}");
    assert!(tmp_tree.exists() && staged.iter().all(|f| f.exists()));
    let o = w.run(&["gc", "m.toml", "--grace", "2s", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", s(&o.stderr));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((r["leftovers"].as_u64(), r["leftover_bytes"].as_u64()), (Some(4), Some(1008)), "{r}");
    assert!(staged.iter().all(|f| !f.exists()) && !tmp_tree.exists() && !damaged.exists());
    assert!(young.exists() && busy.exists(), "what changed within the grace period stays");
    assert!(not_staging.iter().all(|f| f.exists()), "names that are not object_store's staging names stay");
    assert_eq!(w.run_json(&["m.toml"])["ran"], 0, "nothing live was touched");
}

#[test]
fn exit_codes_of_show_and_report_say_what_is_wrong() {
    let w = Work::new();
    w.write("m.toml", M);
    // Not run yet: 4 (the result is not in the store yet).
    let o = w.run(&["show", "m.toml", "gen"]);
    assert_eq!(o.status.code(), Some(4), "{}", s(&o.stderr));
    assert!(s(&o.stderr).contains("gen has no stored result for the current manifest; run it first"));
    let o = w.run(&["show", "m.toml", LEAF]);
    assert_eq!(o.status.code(), Some(4), "{}", s(&o.stderr));
    // A store that cannot be created: 3 (`run` creates it; `status` reads a store that does not exist as empty).
    let o = w.run(&["run", "m.toml", "--store", "file:///proc/rmdistill-store"]);
    assert_eq!(o.status.code(), Some(3), "{}", s(&o.stderr));
    // Unknown node: 2.
    let o = w.run(&["show", "m.toml", "nope"]);
    assert_eq!(o.status.code(), Some(2), "{}", s(&o.stderr));
}

/// An output that reproduces bytes already in the store, from long ago and no longer referenced, gets the blob's
/// time made now: `gc` spares an unreferenced blob only while it is younger than the grace period, and before the
/// run writes the entry that references it again the blob would look old and unreferenced.
#[test]
fn a_blob_stored_again_is_made_young_for_gc() {
    let w = Work::new();
    w.write("m.toml", M);
    w.run_json(&["m.toml"]);
    let (hash, path) = leaf_blob(&w);
    let (entry, _) = entry_of(&w.store(), LEAF);
    std::fs::remove_file(entry).unwrap();
    let day_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
    std::fs::File::open(&path).unwrap().set_modified(day_ago).unwrap();
    let summary = w.run_json(&["m.toml"]);
    assert_eq!(nodes_with(&summary, "ran"), vec![LEAF.to_string()], "{summary}");
    assert_eq!(hash_of(&path), hash);
    let age = std::fs::metadata(&path).unwrap().modified().unwrap().elapsed().unwrap_or_default();
    assert!(age < std::time::Duration::from_secs(600), "the blob stored again is {age:?} old");
}

/// The local copy of a directory artifact (`.rmdistill/local/trees/HASH`) replaced by a file is set aside and
/// made again, as a damaged copy is; before, every node reading the directory failed with "Not a directory".
#[test]
fn a_local_tree_replaced_by_a_file_is_set_aside_and_made_again() {
    let w = Work::new();
    w.write("m.toml", "[stages.synth]\nkind = \"synth\"\nparams = { n_docs = 20 }\n");
    w.run_json(&["m.toml"]);
    let (_, e) = entry_of(&w.store(), "synth");
    let hash = e["outputs"]["tokenizer"]["hash"].as_str().unwrap().to_string();
    let trees = w.path().join(".rmdistill/local/trees");
    w.ok(&["show", "m.toml", "synth.tokenizer"]);
    let tree = trees.join(&hash);
    assert!(tree.is_dir(), "{}", tree.display());
    std::fs::remove_dir_all(&tree).unwrap();
    std::fs::write(&tree, "not a directory").unwrap();
    let shown = w.ok(&["show", "m.toml", "synth.tokenizer"]);
    assert!(shown.contains("tokenizer.json"), "{shown}");
    assert!(tree.is_dir());
    let aside = std::fs::read_dir(&trees)
        .unwrap()
        .flatten()
        .filter(|f| f.file_name().to_string_lossy().contains(".damaged."))
        .count();
    assert_eq!(aside, 1);
}
