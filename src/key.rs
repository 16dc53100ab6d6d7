//! Content addresses and cache keys.
//!
//! An artifact's address is the BLAKE3 of its bytes; a directory artifact's address is the BLAKE3 of a canonical
//! listing of `(path, size, hash)`. A node's cache key is the BLAKE3 of a canonical, versioned record of the stage,
//! its code identity, its parameters and the content hashes of its inputs — never paths or times — so identical
//! upstream bytes keep everything below them cached.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Version of the key record layout; bumping it invalidates every cache entry.
pub const KEY_VERSION: u32 = 2;

/// JSON with object keys sorted at every level, no whitespace: the bytes that get hashed.
pub fn canonical(v: &Value) -> String {
    let mut out = Vec::new();
    write_canonical(v, &mut out).expect("writing to memory cannot fail");
    String::from_utf8(out).expect("JSON is UTF-8")
}

/// Writes [`canonical`]'s bytes without building a sorted copy of the value (keys are hashed for every node of
/// every run, so this is on the no-op path).
fn write_canonical(v: &Value, w: &mut impl std::io::Write) -> std::io::Result<()> {
    match v {
        Value::Object(o) => write_object(o, w),
        Value::Array(a) => {
            w.write_all(b"[")?;
            for (n, v) in a.iter().enumerate() {
                if n > 0 {
                    w.write_all(b",")?;
                }
                write_canonical(v, w)?;
            }
            w.write_all(b"]")
        }
        // an integral float is written as the integer it equals: `epochs = 1` and `epochs = 1.0` are one value to
        // every stage (each parses its parameters into typed fields; an integer field refuses 1.0 before any key is
        // made), and `select` hands a chosen β = 1 over as 1.0, which must find the candidate trained with β = 1
        Value::Number(n) if n.is_f64() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 && !(f == 0.0 && f.is_sign_negative()) => {
                write!(w, "{}", f as i64)
            }
            _ => Ok(serde_json::to_writer(w, v)?),
        },
        scalar => Ok(serde_json::to_writer(w, scalar)?),
    }
}

/// A JSON object of these members with its keys sorted, each value written canonically.
fn write_object<'a>(
    members: impl IntoIterator<Item = (&'a String, &'a Value)>,
    w: &mut impl std::io::Write,
) -> std::io::Result<()> {
    let mut members: Vec<(&String, &Value)> = members.into_iter().collect();
    members.sort_unstable_by(|a, b| a.0.cmp(b.0));
    w.write_all(b"{")?;
    for (n, (k, v)) in members.into_iter().enumerate() {
        if n > 0 {
            w.write_all(b",")?;
        }
        serde_json::to_writer(&mut *w, k)?;
        w.write_all(b":")?;
        write_canonical(v, w)?;
    }
    w.write_all(b"}")
}

/// One input artifact as recorded in a key: its content hash, and the producing node's name and sweep coordinates.
/// A stage sees both (a fan-in stage labels a plot by ρ, the report a row by its stage, `precompute` orders and names
/// its members by them), so both are keyed: renaming an upstream stage re-runs what reads its name (key v2; v1 keyed
/// the hash and coordinates only, and served the old names).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InputRef {
    pub hash: String,
    /// Absent in records of key v1.
    #[serde(default)]
    pub node: String,
    pub coords: BTreeMap<String, Value>,
}

/// Everything a node's output depends on.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct KeyRecord {
    pub v: u32,
    pub stage_kind: String,
    /// Hash of the stage's source files and of the libraries that shape its artifact bytes.
    pub code: String,
    pub params: Map<String, Value>,
    pub inputs: BTreeMap<String, Vec<InputRef>>,
    /// Path parameter → content hash of the file it names.
    pub externals: BTreeMap<String, String>,
}

impl KeyRecord {
    pub fn key(&self) -> String {
        let mut h = blake3::Hasher::new();
        self.write_canonical(&mut h).expect("hashing cannot fail");
        h.finalize().to_hex().to_string()
    }

    /// The record's [`canonical`] bytes, written field by field in sorted order without first converting the
    /// record to a JSON value (a test checks both give the same bytes).
    fn write_canonical(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        let KeyRecord { v, stage_kind, code, params, inputs, externals } = self;
        w.write_all(b"{\"code\":")?;
        serde_json::to_writer(&mut *w, code)?;
        w.write_all(b",\"externals\":")?;
        serde_json::to_writer(&mut *w, externals)?; // a BTreeMap of strings: sorted already
        w.write_all(b",\"inputs\":{")?;
        for (n, (slot, refs)) in inputs.iter().enumerate() {
            if n > 0 {
                w.write_all(b",")?;
            }
            serde_json::to_writer(&mut *w, slot)?;
            w.write_all(b":[")?;
            for (m, r) in refs.iter().enumerate() {
                if m > 0 {
                    w.write_all(b",")?;
                }
                w.write_all(b"{\"coords\":")?;
                write_object(&r.coords, w)?;
                w.write_all(b",\"hash\":")?;
                serde_json::to_writer(&mut *w, &r.hash)?;
                w.write_all(b",\"node\":")?;
                serde_json::to_writer(&mut *w, &r.node)?;
                w.write_all(b"}")?;
            }
            w.write_all(b"]")?;
        }
        w.write_all(b"},\"params\":")?;
        write_object(params, w)?;
        w.write_all(b",\"stage_kind\":")?;
        serde_json::to_writer(&mut *w, stage_kind)?;
        write!(w, ",\"v\":{v}}}")
    }

    /// Field-by-field differences against an older record, as human-readable lines.
    pub fn diff(&self, old: &KeyRecord) -> Vec<String> {
        let mut out = Vec::new();
        if self.v != old.v {
            out.push(format!("key format changed: v{} -> v{}", old.v, self.v));
        }
        if self.stage_kind != old.stage_kind {
            out.push(format!("stage kind changed: {} -> {}", old.stage_kind, self.stage_kind));
        }
        if self.code != old.code {
            out.push(format!("code of stage kind `{}` changed: {} -> {}", self.stage_kind, old.code, self.code));
        }
        let keys: std::collections::BTreeSet<&String> = self.params.keys().chain(old.params.keys()).collect();
        for k in keys {
            match (old.params.get(k), self.params.get(k)) {
                (Some(a), Some(b)) if canonical(a) != canonical(b) => {
                    out.push(format!("params.{k} changed: {} -> {}", canonical(a), canonical(b)))
                }
                (None, Some(b)) => out.push(format!("params.{k} added: {}", canonical(b))),
                (Some(a), None) => out.push(format!("params.{k} removed (was {})", canonical(a))),
                _ => {}
            }
        }
        let slots: std::collections::BTreeSet<&String> = self.inputs.keys().chain(old.inputs.keys()).collect();
        for s in slots {
            let (a, b) = (old.inputs.get(s), self.inputs.get(s));
            if a != b {
                let show = |x: Option<&Vec<InputRef>>, node: bool| {
                    x.map_or("none".to_string(), |v| {
                        v.iter()
                            .map(|r| if node { r.node.clone() } else { short(&r.hash) })
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                };
                let (hashes, nodes) = ((show(a, false), show(b, false)), (show(a, true), show(b, true)));
                if hashes.0 == hashes.1 && old.v < 2 {
                    // a v1 record names no upstream node: "key format changed" says all there is
                } else if hashes.0 == hashes.1 && nodes.0 != nodes.1 {
                    out.push(format!("inputs.{s} come from other nodes: {} -> {}", nodes.0, nodes.1));
                } else {
                    out.push(format!("inputs.{s} changed: {} -> {}", hashes.0, hashes.1));
                }
            }
        }
        let ext: std::collections::BTreeSet<&String> = self.externals.keys().chain(old.externals.keys()).collect();
        for e in ext {
            let (a, b) = (old.externals.get(e), self.externals.get(e));
            if a != b {
                out.push(format!(
                    "content of the file or directory named by params.{e} changed: {} -> {}",
                    a.map_or("none".into(), |h| short(h)),
                    b.map_or("none".into(), |h| short(h))
                ));
            }
        }
        out
    }
}

/// First 12 hex digits, for display.
pub fn short(h: &str) -> String {
    h.chars().take(12).collect()
}

/// BLAKE3 of a file, streamed (memory-mapped and multi-threaded for large files).
pub fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut hasher = blake3::Hasher::new();
    let size = std::fs::metadata(path)?.len();
    if size > 1 << 20 {
        hasher.update_mmap_rayon(path)?;
    } else {
        let mut f = std::fs::File::open(path)?;
        let mut buf = Vec::with_capacity(size as usize);
        f.read_to_end(&mut buf)?;
        hasher.update(&buf);
    }
    Ok((hasher.finalize().to_hex().to_string(), size))
}

/// One file of a directory artifact.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TreeFile {
    pub path: String,
    pub size: u64,
    pub hash: String,
}

/// The canonical listing of a directory artifact; its bytes' hash is the artifact's address.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Tree {
    pub rmdistill_tree: u32,
    pub files: Vec<TreeFile>,
}

impl Tree {
    pub fn bytes(&self) -> Vec<u8> {
        canonical(&serde_json::to_value(self).expect("tree serialises")).into_bytes()
    }
}

/// Lists and hashes every file under `dir` (sorted by relative path; symlinks and empty directories are rejected
/// rather than silently dropped).
pub fn hash_tree(dir: &Path) -> std::io::Result<Tree> {
    hash_tree_with(dir, false)
}

/// [`hash_tree`] of a directory of the user's (a data file param naming a directory), where a link to a regular file
/// counts as that file: a Hugging Face cache snapshot is made of links into its blobs.
pub fn hash_external_tree(dir: &Path) -> std::io::Result<Tree> {
    hash_tree_with(dir, true)
}

fn hash_tree_with(dir: &Path, file_links: bool) -> std::io::Result<Tree> {
    let mut files = Vec::new();
    for (path, p) in tree_files(dir, file_links)? {
        let (hash, size) = hash_file(&p)?;
        files.push(TreeFile { path, size, hash });
    }
    Ok(Tree { rmdistill_tree: 1, files })
}

/// Every regular file under `dir`, by its relative path (`/`-separated) and its path, sorted by the relative path;
/// with `file_links` a link to a regular file counts as that file. Anything else that is not a directory (a socket, any
/// other link) is an error: no walk follows a link out of the directory or round in a loop.
pub fn tree_files(dir: &Path, file_links: bool) -> std::io::Result<Vec<(String, PathBuf)>> {
    fn walk(root: &Path, dir: &Path, file_links: bool, out: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let ft = e.file_type()?;
            let p = e.path();
            let to_file = || file_links && ft.is_symlink() && std::fs::metadata(&p).is_ok_and(|m| m.is_file());
            if ft.is_dir() {
                walk(root, &p, file_links, out)?;
            } else if ft.is_file() || to_file() {
                let rel = p.strip_prefix(root).expect("under root").to_string_lossy().replace('\\', "/");
                out.push((rel, p));
            } else {
                return Err(std::io::Error::other(if file_links {
                    format!(
                        "{}: only regular files, or links to them, may be in a directory given as data",
                        p.display()
                    )
                } else {
                    format!("{}: only regular files may be in an artifact directory", p.display())
                }));
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, dir, file_links, &mut files)?;
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_sorts_nested_keys() {
        let a = json!({"b": 1, "a": {"y": [1, {"d": 2, "c": 3}], "x": 0.5}});
        assert_eq!(canonical(&a), r#"{"a":{"x":0.5,"y":[1,{"c":3,"d":2}]},"b":1}"#);
    }

    fn rec() -> KeyRecord {
        KeyRecord {
            v: KEY_VERSION,
            stage_kind: "subsample".into(),
            code: "abc".into(),
            params: json!({"rho": 0.2, "size": 10}).as_object().unwrap().clone(),
            inputs: BTreeMap::from([(
                "pairs".into(),
                vec![InputRef { hash: "h1".into(), node: "a".into(), coords: BTreeMap::new() }],
            )]),
            externals: BTreeMap::new(),
        }
    }

    #[test]
    fn the_record_is_written_as_its_canonical_json() {
        let r = KeyRecord {
            v: KEY_VERSION,
            stage_kind: "policy".into(),
            code: "c0de\"q".into(),
            params: json!({"z": [1, {"b": 2.5, "a": null}], "method": "e-DPO", "β": 0.1, "Beta": true})
                .as_object()
                .unwrap()
                .clone(),
            inputs: BTreeMap::from([
                (
                    "rm".into(),
                    vec![
                        InputRef {
                            hash: "h2".into(),
                            node: "b".into(),
                            coords: BTreeMap::from([("rho".into(), json!(0.2))]),
                        },
                        InputRef {
                            hash: "h3".into(),
                            node: "c@seed=1".into(),
                            coords: BTreeMap::from([("seed".into(), json!(1)), ("m".into(), json!("x"))]),
                        },
                    ],
                ),
                ("base".into(), vec![InputRef { hash: "h1".into(), node: "a".into(), coords: BTreeMap::new() }]),
            ]),
            externals: BTreeMap::from([("path".into(), "e1".into()), ("a\nb".into(), "e2".into())]),
        };
        let mut direct = Vec::new();
        r.write_canonical(&mut direct).unwrap();
        assert_eq!(String::from_utf8(direct).unwrap(), canonical(&serde_json::to_value(&r).unwrap()));
        let empty = KeyRecord { params: Map::new(), inputs: BTreeMap::new(), ..rec() };
        let mut direct = Vec::new();
        empty.write_canonical(&mut direct).unwrap();
        assert_eq!(String::from_utf8(direct).unwrap(), canonical(&serde_json::to_value(&empty).unwrap()));
    }

    /// A record of key v1 names no upstream node; what differs from it is the key's format, not where inputs come from.
    #[test]
    fn a_v1_record_differs_by_its_format_not_by_its_inputs_nodes() {
        let new = rec();
        let mut old = rec();
        old.v = 1;
        for refs in old.inputs.values_mut() {
            for r in refs {
                r.node.clear();
            }
        }
        assert_eq!(new.diff(&old), ["key format changed: v1 -> v2"]);
        let mut renamed = rec();
        renamed.inputs.get_mut("pairs").unwrap()[0].node = "z".into();
        assert_eq!(renamed.diff(&new), ["inputs.pairs come from other nodes: a -> z"]);
    }

    #[test]
    fn an_integral_float_keys_as_its_integer() {
        let mut a = rec();
        a.params.insert("beta".into(), json!(1));
        let mut b = a.clone();
        b.params.insert("beta".into(), json!(1.0));
        assert_eq!(a.key(), b.key());
        assert!(b.diff(&a).is_empty());
        for other in [json!(1.5), json!(-0.0), json!(1e300), json!(2)] {
            b.params.insert("beta".into(), other.clone());
            assert_ne!(a.key(), b.key(), "{other}");
        }
        assert_eq!(canonical(&json!([1.0, -3.0, 0.0, -0.0, 0.25, 1e20])), "[1,-3,0,-0.0,0.25,1e+20]");
    }

    #[test]
    fn key_ignores_param_order_but_not_values() {
        let a = rec();
        let mut b = rec();
        b.params = json!({"size": 10, "rho": 0.2}).as_object().unwrap().clone();
        assert_eq!(a.key(), b.key());
        b.params.insert("rho".into(), json!(0.3));
        assert_ne!(a.key(), b.key());
        assert_eq!(b.diff(&a), vec!["params.rho changed: 0.2 -> 0.3".to_string()]);
    }

    #[test]
    fn key_changes_with_code_and_inputs() {
        let a = rec();
        let mut b = rec();
        b.code = "def".into();
        assert_ne!(a.key(), b.key());
        let mut c = rec();
        c.inputs.get_mut("pairs").unwrap()[0].hash = "h2".into();
        assert_ne!(a.key(), c.key());
        assert!(c.diff(&a)[0].starts_with("inputs.pairs changed"));
    }

    #[test]
    fn tree_hash_depends_on_names_and_bytes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.txt"), b"1").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/b.txt"), b"2").unwrap();
        let t1 = hash_tree(d.path()).unwrap();
        assert_eq!(t1.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), vec!["a.txt", "sub/b.txt"]);
        std::fs::write(d.path().join("a.txt"), b"3").unwrap();
        let t2 = hash_tree(d.path()).unwrap();
        assert_ne!(blake3::hash(&t1.bytes()), blake3::hash(&t2.bytes()));
    }
}
