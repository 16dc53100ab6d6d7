//! Derives every stage kind's code identity from the workspace's sources (stages/, worker/, ml/) and the library
//! versions in Cargo.lock and libtorch's version.py, and compiles the result into the crate (see
//! src/code_identity.rs, which this script includes, and `port::code_identity`).
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[path = "src/code_identity.rs"]
#[allow(dead_code)]
mod code_identity;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.parent().expect("stages/ is inside the workspace").to_path_buf();
    let libtorch_dir = std::env::var_os("LIBTORCH").map(PathBuf::from);
    let libtorch = code_identity::libtorch_version(libtorch_dir.as_deref());
    let d = code_identity::derive(&root, &libtorch).unwrap_or_else(|e| panic!("deriving code identities: {e}"));
    for (_, dir) in code_identity::CRATES {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    for f in code_identity::HARNESS.iter().chain(&code_identity::MANIFESTS) {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("Cargo.lock").display());
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Some(dir) = &libtorch_dir {
        println!("cargo:rerun-if-changed={}", dir.join("version.py").display());
    }
    let mut src = String::from(
        "/// (stage kind, code identity, the workspace-relative source files it covers), sorted by kind.\n\
         pub const STAGE_CODE: &[(&str, &str, &[&str])] = &[\n",
    );
    let mut all_libs = std::collections::BTreeSet::new();
    for s in &d.stages {
        writeln!(src, "    ({:?}, {:?}, &{:?}),", s.kind, s.identity, s.files).unwrap();
        all_libs.extend(s.libs.split(';').filter(|l| !l.is_empty()).map(str::to_string));
    }
    src.push_str("];\n");
    let libs: String = all_libs.iter().map(|l| format!("{l};")).collect();
    writeln!(src, "/// The library versions the identities cover.\npub const LIBS: &str = {libs:?};").unwrap();
    let out = Path::new(&std::env::var("OUT_DIR").expect("set by cargo")).join("code_identity.rs");
    std::fs::write(out, src).expect("OUT_DIR is writable");
}
