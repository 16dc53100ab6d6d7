//! Helpers for tests that drive the `rmdistill` binary as a user does: a private working directory, manifests
//! written into it, runs whose `--json` summaries are parsed.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The project's real preference data: `../shared/data` beside the repository (the clone's parent must hold
/// `shared/`), or $RMDISTILL_SHARED_DATA. Missing, the tests that read it stop here saying where they looked.
pub fn shared_data() -> PathBuf {
    let dir =
        std::env::var_os("RMDISTILL_SHARED_DATA").map(PathBuf::from).unwrap_or_else(|| repo().join("../shared/data"));
    assert!(
        dir.is_dir(),
        "the shared test data is not at {} (the tests read ../shared/data beside the repository): clone the \
         repository beside shared/, link shared/ there, or set RMDISTILL_SHARED_DATA",
        dir.display()
    );
    dir
}

pub struct Work {
    pub dir: tempfile::TempDir,
}

impl Work {
    pub fn new() -> Work {
        Work { dir: tempfile::tempdir().expect("tempdir") }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rmdistill"));
        c.args(args).current_dir(self.path()).env_remove("RMDISTILL_STORE").env_remove("RMDISTILL_LOCAL_DIR");
        c
    }
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("binary runs")
    }
    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "rmdistill {args:?} failed ({:?}):\nstdout:\n{}\nstderr:\n{}",
            o.status.code(),
            s(&o.stdout),
            s(&o.stderr)
        );
        s(&o.stdout)
    }
    /// `run --json` summary.
    pub fn run_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["run"];
        a.extend_from_slice(args);
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).expect("summary is JSON")
    }
    pub fn store(&self) -> PathBuf {
        self.path().join(".rmdistill/store")
    }
}

pub fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// This machine's CPU model name as `lscpu` prints it (from /proc/cpuinfo, runs of spaces as one), if there is one.
pub fn cpu_model_name() -> Option<String> {
    std::fs::read_to_string("/proc/cpuinfo").ok()?.lines().find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.trim() == "model name")
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
    })
}

/// Fails unless every Markdown table of `md` renders as one: a blank line (or the start) before it, its header
/// followed at once by the `|---|` row, and its rows contiguous with as many cells as the header — else a renderer
/// shows them as text, or as a table without the rows that a paragraph cut off from it.
pub fn assert_tables_render(md: &str) {
    let lines: Vec<&str> = md.lines().collect();
    let cells = |l: &str| l.trim().trim_matches('|').split(" | ").count();
    let mut i = 0;
    while i < lines.len() {
        if !lines[i].starts_with('|') {
            i += 1;
            continue;
        }
        let at = i + 1;
        assert!(i == 0 || lines[i - 1].trim().is_empty(), "report line {at}: a table without a blank line before it");
        let sep = lines.get(i + 1).copied().unwrap_or("");
        assert!(
            sep.starts_with("|---") || sep.starts_with("| ---"),
            "report line {at}: a table row without a header: {}",
            lines[i]
        );
        let width = cells(lines[i]);
        assert_eq!(
            sep.matches("---").count(),
            width,
            "report line {}: the separator does not match the header",
            at + 1
        );
        i += 2;
        while i < lines.len() && lines[i].starts_with('|') {
            assert_eq!(
                cells(lines[i]),
                width,
                "report line {}: {} cells, the header has {width}: {}",
                i + 1,
                cells(lines[i]),
                lines[i]
            );
            i += 1;
        }
    }
}

/// Node names with a given outcome in a run summary.
pub fn nodes_with(summary: &Value, outcome: &str) -> Vec<String> {
    let mut v: Vec<String> = summary["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["outcome"] == outcome)
        .map(|n| n["node"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// node → {output → hash} of a run summary.
pub fn output_hashes(summary: &Value) -> BTreeMap<String, BTreeMap<String, String>> {
    summary["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let outs = n["outputs"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v["hash"].as_str().unwrap().to_string()))
                .collect();
            (n["node"].as_str().unwrap().to_string(), outs)
        })
        .collect()
}

/// Every blob file in a `file://` store, with its path.
pub fn blob_files(store: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(store.join("blobs")) else { return out };
    for d in rd.flatten() {
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            out.push((name, f.path()));
        }
    }
    out.sort();
    out
}

/// Asserts the store invariants: every blob's bytes hash to its name, and every entry's outputs exist.
pub fn assert_store_consistent(store: &Path) {
    let blobs = blob_files(store);
    for (name, path) in &blobs {
        // object_store stages uploads as NAME#N and renames them into place; those are not blobs.
        if name.contains('#') {
            continue;
        }
        let got = blake3::hash(&std::fs::read(path).unwrap()).to_hex().to_string();
        assert_eq!(&got, name, "blob {} holds other bytes", path.display());
    }
    let names: std::collections::HashSet<&String> = blobs.iter().map(|(n, _)| n).collect();
    for e in entries(store) {
        for o in e["outputs"].as_object().unwrap().values() {
            assert!(
                names.contains(&o["hash"].as_str().unwrap().to_string()),
                "entry {} names a missing blob",
                e["key"]
            );
        }
    }
}

/// Every cache entry in a `file://` store.
pub fn entries(store: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(store.join("cache")) else { return out };
    for d in rd.flatten() {
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            if f.file_name().to_string_lossy().ends_with(".json") {
                out.push(serde_json::from_slice(&std::fs::read(f.path()).unwrap()).unwrap());
            }
        }
    }
    out
}

/// A manifest over generated pairs: one `gen` node, `sub` swept over ρ × seed, `member` (ensemble subsets) swept
/// over ρ × seed × member ρ′. 1 + 6 + 18 = 25 nodes with the defaults.
pub fn gen_manifest(n: u64) -> String {
    format!(
        r#"description = "generated pairs, D_rho and ensemble subsets"

[vars]
n = {n}
size = 300
rhos = [0.2, 0.5, 0.8]
seeds = [0, 1]
members = [0.2, 0.5, 0.8]

[stages.gen]
kind = "generate"
params = {{ n = "${{n}}", seed = 7 }}

[stages.sub]
kind = "subsample"
inputs = {{ pairs = "gen.pairs" }}
sweep = {{ rho = "${{rhos}}", seed = "${{seeds}}" }}
params = {{ rho = "${{rho}}", size = "${{size}}", seed = "${{seed}}" }}

[stages.member]
kind = "subsample"
inputs = {{ pairs = "sub.dataset" }}
sweep = {{ rho = "${{rhos}}", seed = "${{seeds}}", member = "${{members}}" }}
params = {{ rho = "${{member}}", size = 60, seed = "${{seed}}" }}
"#
    )
}
