//! Code identity through the binary: an `rmdistill` built from sources in which `ml/src/sampling.rs` gained a comment
//! says, on a store the current `rmdistill` filled, that exactly the nodes of the stages that sample from a model
//! would run again ("code of stage kind `sample_pairs` changed: …"), and the others are cached.
//!
//! The edited copy of the workspace lives in `target/identity-check/ws` and builds into `target/identity-check/target`
//! (a build directory of its own: `cargo test` holds the lock of the one it runs from). That build directory starts
//! as a copy of the libraries already built in `target/debug`, and the copy of the sources is only rewritten where it
//! differs, so the check costs one build of `rmdistill-stages` and `rmdistill` the first time and none after.
//! (Which stage kinds each edit reaches is checked without building, in stages/tests/code_identity.rs.)

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Writes `to` only when its bytes differ (an unchanged file keeps its mtime, so the build stays incremental).
fn sync_file(from: &Path, to: &Path) {
    let bytes = std::fs::read(from).unwrap();
    if std::fs::read(to).ok().as_deref() != Some(&bytes[..]) {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, &bytes).unwrap();
    }
}

fn sync_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sync_dir(&p, &to.join(e.file_name()));
        } else {
            sync_file(&p, &to.join(e.file_name()));
        }
    }
    // files the sources no longer have
    for e in std::fs::read_dir(to).unwrap().flatten() {
        if !from.join(e.file_name()).exists() {
            if e.path().is_dir() {
                std::fs::remove_dir_all(e.path()).unwrap();
            } else {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
    }
}

/// What building the workspace's binaries needs: manifests, lock file, sources (tests, examples and data aside).
fn sync_workspace(repo: &Path, ws: &Path) {
    for f in ["Cargo.toml", "Cargo.lock", "rustfmt.toml"] {
        sync_file(&repo.join(f), &ws.join(f));
    }
    for d in ["src", "benches"] {
        sync_dir(&repo.join(d), &ws.join(d));
    }
    for krate in ["stages", "worker", "ml"] {
        for f in ["Cargo.toml", "build.rs"] {
            if repo.join(krate).join(f).exists() {
                sync_file(&repo.join(krate).join(f), &ws.join(krate).join(f));
            }
        }
        sync_dir(&repo.join(krate).join("src"), &ws.join(krate).join("src"));
    }
}

/// Seeds a build directory with the libraries `target/debug` holds (copies, not links: a build may rewrite them),
/// with their modification times, which cargo compares to decide what is fresh.
/// Seeded again (files not there yet) when Cargo.lock changes.
fn seed_build_dir(from: &Path, to: &Path, lock: &Path) {
    let marker = to.join(".seeded-for-lock");
    let stamp = blake3::hash(&std::fs::read(lock).unwrap()).to_hex().to_string();
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(stamp.as_str()) {
        return;
    }
    let copy_tree = |rel: &str, filter: &dyn Fn(&Path) -> bool| {
        let mut stack = vec![from.join(rel)];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let p = e.path();
                let dest = to.join(p.strip_prefix(from).unwrap());
                if p.is_dir() {
                    stack.push(p);
                } else if filter(&p) && !dest.exists() {
                    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
                    std::fs::copy(&p, &dest).unwrap();
                    let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
                    std::fs::File::options().write(true).open(&dest).unwrap().set_modified(mtime).unwrap();
                }
            }
        }
    };
    let lib = |p: &Path| matches!(p.extension().and_then(|e| e.to_str()), Some("rlib" | "rmeta" | "so" | "d"));
    copy_tree("deps", &lib);
    copy_tree(".fingerprint", &|_| true);
    copy_tree("build", &|_| true);
    std::fs::write(marker, stamp).unwrap();
}

#[test]
fn status_after_an_ml_edit_and_a_rebuild_names_the_stages_that_changed() {
    let repo = repo();
    let base = repo.join("target/identity-check");
    let ws = base.join("ws");
    sync_workspace(&repo, &ws);
    let sampling = ws.join("ml/src/sampling.rs");
    let edited = std::fs::read_to_string(repo.join("ml/src/sampling.rs")).unwrap() + "\n// an edit (a comment)\n";
    if std::fs::read_to_string(&sampling).unwrap() != edited {
        std::fs::write(&sampling, edited).unwrap();
    }
    seed_build_dir(&repo.join("target/debug"), &base.join("target/debug"), &repo.join("Cargo.lock"));
    let t0 = std::time::Instant::now();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // Features resolved as `cargo test --workspace` resolves them (every member, and dev-dependencies, which a bench
    // target brings in), so the seeded libraries are reused and only rmdistill-stages and rmdistill compile.
    let o = Command::new(cargo)
        .args(["build", "--workspace", "--bin", "rmdistill", "--bench", "hashing", "--offline"])
        .current_dir(&ws)
        .env("CARGO_TARGET_DIR", base.join("target"))
        .output()
        .unwrap();
    assert!(o.status.success(), "building the edited copy failed:\n{}", s(&o.stderr));
    eprintln!("edited rmdistill built in {:.1} s", t0.elapsed().as_secs_f64());
    let edited_bin: PathBuf = base.join("target/debug/rmdistill");

    let w = Work::new();
    let m = w.write(
        "m.toml",
        r#"[stages.synth]
kind = "synth"
params = { n_docs = 40, seed = 1 }

[stages.sft]
kind = "sft"
inputs = { data = "synth.corpus", tokenizer = "synth.tokenizer" }
params = { steps = 2, batch_size = 4 }

[stages.pairs]
kind = "sample_pairs"
inputs = { policy = "sft.model", prompts = "synth.corpus" }
params = { max_prompts = 4, max_new_tokens = 4 }

[stages.label]
kind = "label"
inputs = { pairs = "pairs.pairs" }
params = { oracle = "synthetic" }

[stages.gen]
kind = "generate"
params = { n = 100 }
"#,
    );
    let m = m.to_str().unwrap();
    let first = w.run_json(&[m]);
    assert_eq!(first["ran"], 5, "{first}");
    let status = |bin: &Path| -> serde_json::Value {
        let o = Command::new(bin).args(["status", m, "--json"]).current_dir(w.path()).output().unwrap();
        assert!(o.status.success(), "{}", s(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v.as_array().unwrap().iter().map(|n| (n["node"].as_str().unwrap().to_string(), n.clone())).collect()
    };
    let now = status(Path::new(env!("CARGO_BIN_EXE_rmdistill")));
    assert!(now.as_object().unwrap().values().all(|n| n["state"] == "cached"), "{now}");
    let after = status(&edited_bin);
    for n in ["synth", "sft", "gen"] {
        assert_eq!(after[n]["state"], "cached", "{n}: {after}");
    }
    assert_eq!(after["pairs"]["state"], "run", "{after}");
    let why = after["pairs"]["reasons"].as_array().unwrap();
    assert!(
        why.len() == 1 && why[0].as_str().unwrap().starts_with("code of stage kind `sample_pairs` changed: "),
        "{why:?}"
    );
    assert_eq!(after["label"]["state"], "blocked", "{after}");
}
