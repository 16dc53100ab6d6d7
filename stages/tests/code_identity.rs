//! Code identity derived from the code: the build's identities are what `code_identity::derive` computes from the
//! workspace, and editing a file in a copy of the tree changes exactly the identities of the stage kinds that reach
//! it. Stage files never reference one another.

use rmdistill_stages::code_identity::{self, Derived};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The libtorch version the build saw (from the compiled-in library list).
fn built_libtorch() -> String {
    rmdistill_stages::port::LIBRARY_VERSIONS
        .split(';')
        .find_map(|l| l.strip_prefix("libtorch="))
        .unwrap_or("unknown")
        .to_string()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// A copy of the sources identities are derived from.
fn copy_tree() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let ws = workspace();
    std::fs::copy(ws.join("Cargo.lock"), t.path().join("Cargo.lock")).unwrap();
    for (_, dir) in code_identity::CRATES {
        copy_dir(&ws.join(dir), &t.path().join(dir));
    }
    // the manifests and the engine's side of the hand-over (outside the crates followed)
    for f in code_identity::MANIFESTS.iter().chain(&code_identity::HARNESS) {
        std::fs::create_dir_all(t.path().join(f).parent().unwrap()).unwrap();
        std::fs::copy(ws.join(f), t.path().join(f)).unwrap();
    }
    t
}

fn ids(d: &Derived) -> BTreeMap<String, String> {
    d.stages.iter().map(|s| (s.kind.clone(), s.identity.clone())).collect()
}

fn derive(root: &Path) -> Derived {
    code_identity::derive(root, &built_libtorch()).unwrap()
}

/// The kinds whose identity differs between two derivations.
fn changed(a: &Derived, b: &Derived) -> Vec<String> {
    let (a, b) = (ids(a), ids(b));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter().filter(|(k, v)| b[*k] != **v).map(|(k, _)| k.clone()).collect()
}

fn append(root: &Path, file: &str, text: &str) {
    let p = root.join(file);
    let mut s = std::fs::read_to_string(&p).unwrap();
    s.push_str(text);
    std::fs::write(p, s).unwrap();
}

#[test]
fn the_build_compiled_in_what_derive_computes() {
    let d = derive(&workspace());
    for s in &d.stages {
        let (id, files) = rmdistill_stages::port::stage_code(&s.kind).unwrap();
        assert_eq!(id, s.identity, "{}: rebuilt since the sources changed?", s.kind);
        assert_eq!(files, s.files.iter().map(String::as_str).collect::<Vec<_>>().as_slice(), "{}", s.kind);
    }
    // a copy elsewhere derives the same identities: nothing depends on where the tree lives
    let t = copy_tree();
    assert_eq!(ids(&derive(t.path())), ids(&d));
}

#[test]
fn an_edit_changes_exactly_the_kinds_that_reach_the_file() {
    let t = copy_tree();
    let base = derive(t.path());
    // the ML core's sampling: the stages that sample from a model
    append(t.path(), "ml/src/sampling.rs", "\n// an edit\n");
    let after_ml = derive(t.path());
    assert_eq!(changed(&base, &after_ml), ["evaluate", "precompute", "sample_pairs"]);
    // a module shared by stages: the β/τ/γ selection (a policy trains with a bound selection's values)
    append(t.path(), "stages/src/selection.rs", "\n// an edit\n");
    let after_sel = derive(t.path());
    assert_eq!(changed(&after_ml, &after_sel), ["evaluate", "policy", "report", "select"]);
    // a stage's own file: that stage only (editing select does not invalidate every evaluation)
    append(t.path(), "stages/src/select.rs", "\n// an edit\n");
    let after_select = derive(t.path());
    assert_eq!(changed(&after_sel, &after_select), ["select"]);
    // reward-model scoring, in the worker (evaluate checks its reward-model oracle with it)
    append(t.path(), "worker/src/rm_scoring.rs", "\n// an edit\n");
    assert_eq!(changed(&after_select, &derive(t.path())), ["evaluate", "label", "precompute"]);
    // the port every stage is written against: every stage
    let before = derive(t.path());
    append(t.path(), "stages/src/port.rs", "\n// an edit\n");
    assert_eq!(changed(&before, &derive(t.path())).len(), before.stages.len());
}

/// What hands a node's job to its stage is part of every identity it can reach: the worker's context (its threads)
/// for the kinds that run in the worker, the engine's side for every kind; and so are the features the manifests
/// enable, which Cargo.lock does not record. A reviewer's finding: an edit of `JobCtx::threads` and a feature removed
/// from serde_json each changed a stage's bytes under the same key.
#[test]
fn the_hand_over_to_a_stage_and_the_enabled_features_are_covered() {
    let t = copy_tree();
    let base = derive(t.path());
    let in_worker: Vec<String> = base
        .stages
        .iter()
        .filter(|s| s.files.iter().any(|f| f == &format!("worker/src/{}.rs", s.kind)))
        .map(|s| s.kind.clone())
        .collect();
    assert!(in_worker.contains(&"policy".to_string()) && !in_worker.contains(&"subsample".to_string()));
    append(t.path(), "worker/src/job.rs", "\n// an edit\n");
    let after_job = derive(t.path());
    assert_eq!(changed(&base, &after_job), in_worker);
    append(t.path(), "src/node_ctx.rs", "\n// an edit\n");
    let after_ctx = derive(t.path());
    assert_eq!(changed(&after_job, &after_ctx).len(), base.stages.len());
    // the worker's command line is not the hand-over: `import-model`'s GGUF converter stays import_model's alone
    append(t.path(), "ml/src/gguf.rs", "\n// an edit\n");
    let after_gguf = derive(t.path());
    assert_eq!(changed(&after_ctx, &after_gguf), ["import_model"]);
    // a feature removed from a library's declaration: the kinds that reach that library
    let with_serde_json: Vec<String> =
        base.stages.iter().filter(|s| s.libs.contains("serde_json=")).map(|s| s.kind.clone()).collect();
    assert!(!with_serde_json.is_empty());
    let cargo = t.path().join("Cargo.toml");
    let text = std::fs::read_to_string(&cargo).unwrap();
    assert!(text.contains(r#""preserve_order", "float_roundtrip""#));
    std::fs::write(&cargo, text.replace(r#""preserve_order", "float_roundtrip""#, r#""preserve_order""#)).unwrap();
    let after_features = derive(t.path());
    assert_eq!(changed(&after_gguf, &after_features), with_serde_json);
    // a comment, a test-only dependency, or a library no stage reaches (the engine's progress bars): none
    append(t.path(), "Cargo.toml", "\n# a comment\n[dev-dependencies]\nproptest = \"1\"\n");
    let text = std::fs::read_to_string(&cargo).unwrap();
    assert!(text.contains("indicatif = \"0.18\""));
    std::fs::write(
        &cargo,
        text.replace("indicatif = \"0.18\"", "indicatif = { version = \"0.18\", features = [\"rayon\"] }"),
    )
    .unwrap();
    assert!(changed(&after_features, &derive(t.path())).is_empty());
}

#[test]
fn test_code_and_comments_do_not_create_dependencies() {
    let t = copy_tree();
    let base = derive(t.path());
    append(
        t.path(),
        "stages/src/merge.rs",
        "\n/// [`crate::selection`] and \"crate::method\"\n#[cfg(test)]\nmod more_tests {\n    use crate::report::run;\n}\n",
    );
    let d = derive(t.path());
    let merge = d.stages.iter().find(|s| s.kind == "merge").unwrap();
    assert!(
        !merge
            .files
            .iter()
            .any(|f| f.ends_with("selection.rs") || f.ends_with("report.rs") || f.ends_with("method.rs"))
    );
    assert_eq!(changed(&base, &d), ["merge"], "its bytes changed, its dependencies did not");
    assert!(d.cross_stage_references.is_empty());
}

/// A method or a trait conversion reaches an `impl` block without naming its file (a reviewer's finding: an
/// `impl From<…> for` a shared type, in a file no stage referenced, changed what stages computed under the same
/// keys). A type brings in the files that implement something for it, and a trait those that implement it for a type
/// from outside the workspace.
#[test]
fn impl_blocks_in_other_files_are_covered() {
    let t = copy_tree();
    append(t.path(), "stages/src/lib.rs", "\nmod conv;\n");
    let conv = "impl From<u8> for crate::selection::RunnerUp {\n    fn from(_: u8) -> Self { todo!() }\n}\n";
    std::fs::write(t.path().join("stages/src/conv.rs"), conv).unwrap();
    append(t.path(), "ml/src/lib.rs", "\nmod ext;\n");
    std::fs::write(t.path().join("ml/src/ext.rs"), "impl crate::logprobs::Read for tch::Tensor {}\n").unwrap();
    let base = derive(t.path());
    append(t.path(), "stages/src/conv.rs", "\n// an edit\n");
    let after = derive(t.path());
    // the kinds that reach selection.rs (see an_edit_changes_exactly_the_kinds_that_reach_the_file)
    assert_eq!(changed(&base, &after), ["evaluate", "policy", "report", "select"]);
    // an impl of the ML core's trait for libtorch's tensor: every kind that reaches the trait
    append(t.path(), "ml/src/ext.rs", "\n// an edit\n");
    let reach_logprobs: Vec<String> = after
        .stages
        .iter()
        .filter(|s| s.files.iter().any(|f| f == "ml/src/logprobs.rs"))
        .map(|s| s.kind.clone())
        .collect();
    assert!(reach_logprobs.len() > 3, "{reach_logprobs:?}");
    let after_ext = derive(t.path());
    assert_eq!(changed(&after, &after_ext), reach_logprobs);
    // an outside trait on an outside type, about a workspace type in its generic arguments (`.into()` of it): the
    // kinds that reach that type; and an outside type whose name is an associated type in the workspace (serde's
    // visitors' `type Value`) belongs to the trait's file, not the visitor's (a reviewer's findings)
    append(t.path(), "stages/src/lib.rs", "\nmod conv2;\n");
    let from = "impl From<crate::selection::Choice> for String {\n    fn from(_: crate::selection::Choice) -> String { todo!() }\n}\n";
    std::fs::write(t.path().join("stages/src/conv2.rs"), from).unwrap();
    append(t.path(), "ml/src/lib.rs", "\nmod ext2;\n");
    std::fs::write(t.path().join("ml/src/ext2.rs"), "impl crate::logprobs::Read for serde_json::Value {}\n").unwrap();
    let base2 = derive(t.path());
    append(t.path(), "stages/src/conv2.rs", "\n// an edit\n");
    let after_conv2 = derive(t.path());
    assert_eq!(changed(&base2, &after_conv2), ["evaluate", "policy", "report", "select"]);
    append(t.path(), "ml/src/ext2.rs", "\n// an edit\n");
    assert_eq!(changed(&after_conv2, &derive(t.path())), reach_logprobs);
}

#[test]
fn stage_files_do_not_reference_each_other() {
    let d = derive(&workspace());
    assert!(d.cross_stage_references.is_empty(), "{:?}", d.cross_stage_references);
    // and the check sees one when it is there
    let t = copy_tree();
    append(t.path(), "stages/src/select.rs", "\npub use crate::report::run as report_run;\n");
    append(t.path(), "worker/src/label.rs", "\nuse rmdistill_stages::synth as _;\n");
    let d = derive(t.path());
    let found: BTreeMap<String, Vec<String>> = d.cross_stage_references.into_iter().collect();
    assert_eq!(found["stages/src/select.rs"], ["stages/src/report.rs"]);
    assert_eq!(found["worker/src/label.rs"], ["stages/src/synth.rs"]);
}

#[test]
fn library_versions_are_covered() {
    let d = derive(&workspace());
    let get = |k: &str| d.stages.iter().find(|s| s.kind == k).unwrap().libs.clone();
    for lib in ["arrow=", "parquet=", "rand_chacha="] {
        assert!(get("subsample").contains(lib) && get("policy").contains(lib), "{lib}");
    }
    for lib in ["libtorch=", "tch=", "torch-sys=", "safetensors=", "tokenizers="] {
        assert!(get("policy").contains(lib), "{lib}: {}", get("policy"));
        assert!(!get("subsample").contains(lib), "{lib}: a pure stage does not depend on it");
    }
    // what those libraries depend on in turn (parquet's page compressor; the t quantiles' numerics), and the
    // libraries that were not listed at first: statrs draws every interval of the report
    assert!(get("subsample").contains(";zstd=") || get("subsample").starts_with("zstd="), "{}", get("subsample"));
    for lib in ["statrs=", "num-traits=", "serde_json="] {
        assert!(get("report").contains(lib), "{lib}: {}", get("report"));
    }
    // libraries that only shape errors, documentation or temporary files are not
    for s in &d.stages {
        for lib in code_identity::NEUTRAL {
            assert!(!s.libs.contains(&format!("{lib}=")), "{}: {lib} in {}", s.kind, s.libs);
        }
    }
    // a version bump in Cargo.lock changes the identities of the stages that use the library
    let t = copy_tree();
    let base = derive(t.path());
    let v = bump(t.path(), "safetensors");
    let d = derive(t.path());
    let with = |lib: &str| -> Vec<String> {
        base.stages.iter().filter(|s| s.libs.contains(lib)).map(|s| s.kind.clone()).collect()
    };
    assert!(!with(&format!("safetensors={v};")).is_empty());
    assert_eq!(changed(&base, &d), with(&format!("safetensors={v};")));
    // a library's dependency too: `approx` comes in with statrs only, which no stage names directly
    bump(t.path(), "approx");
    let with_approx = derive(t.path());
    assert!(with("approx=").contains(&"report".to_string()), "{:?}", with("approx="));
    assert_eq!(changed(&d, &with_approx), with("approx="));
    // and libtorch's own version: the stages that compute with tch
    let other = code_identity::derive(t.path(), "0.0.0-test").unwrap();
    assert_eq!(changed(&with_approx, &other), with("tch="));
    assert!(with("tch=").contains(&"policy".to_string()) && !with("tch=").contains(&"report".to_string()));
}

/// Raises the version of the first package `name` in `root`'s Cargo.lock as `cargo update` would write it (the
/// package's own `version` and every dependency list naming that version); returns the old version.
fn bump(root: &Path, name: &str) -> String {
    let path = root.join("Cargo.lock");
    let lock = std::fs::read_to_string(&path).unwrap();
    let head = format!("name = \"{name}\"\nversion = \"");
    let at = lock.find(&head).unwrap_or_else(|| panic!("{name} is not in Cargo.lock")) + head.len();
    let v = lock[at..].split('"').next().unwrap().to_string();
    let bumped = lock
        .replacen(&format!("{head}{v}\""), &format!("{head}99.{v}\""), 1)
        .replace(&format!("\"{name} {v}\""), &format!("\"{name} 99.{v}\""));
    assert_ne!(lock, bumped);
    std::fs::write(&path, bumped).unwrap();
    v
}
