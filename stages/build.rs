//! Computes the content hash of every source file of this crate at build time, so that each stage's
//! code identity (part of every cache key) changes exactly when a file it is built from changes.
use std::{fs, path::Path};

fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, root, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
            out.push((rel, blake3::hash(&fs::read(&p).unwrap()).to_hex().to_string()));
        }
    }
}

fn main() {
    // libtorch's directory as an rpath of this crate's tests and examples (as ml/build.rs does), so nothing needs
    // LD_LIBRARY_PATH.
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    println!("cargo:rerun-if-changed=src");
    let mut files = Vec::new();
    walk(&root, &root, &mut files);
    // Versions of the libraries whose bytes end up in artifacts (Parquet writer, tensors): a bump may change outputs.
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let mut libs = String::new();
    if let Ok(text) = fs::read_to_string(&lock) {
        let mut name = String::new();
        for line in text.lines() {
            if let Some(n) = line.strip_prefix("name = ") {
                name = n.trim_matches('"').to_string();
            } else if let Some(v) = line.strip_prefix("version = ") {
                if matches!(name.as_str(), "arrow" | "parquet" | "tch" | "torch-sys" | "safetensors" | "tokenizers") {
                    libs.push_str(&format!("{name}={};", v.trim_matches('"')));
                }
            }
        }
    }
    let mut src = String::from(
        "/// (path under src/, BLAKE3 of its bytes) for every source file, sorted.\npub const SOURCE_FILES: &[(&str, &str)] = &[\n",
    );
    for (p, h) in &files {
        src.push_str(&format!("    ({p:?}, {h:?}),\n"));
    }
    src.push_str("];\n");
    src.push_str(&format!(
        "/// Versions of the libraries that shape artifact bytes.\npub const ARTIFACT_LIBS: &str = {libs:?};\n"
    ));
    fs::write(Path::new(&std::env::var("OUT_DIR").unwrap()).join("code_hashes.rs"), src).unwrap();
}
