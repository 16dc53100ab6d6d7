//! Code identity, derived from the code itself (DESIGN.md, "Cache and storage"): for every stage kind, the transitive
//! closure of the source files its computation can reach, plus the versions of the libraries that shape its output
//! bytes. A node's cache key contains its stage's identity, so editing any file a stage reaches re-runs exactly that
//! stage's nodes, and editing a file it does not reach leaves them cached.
//!
//! - **Roots.** A stage kind `K` is declared in `stages/src/K.rs` (the file that implements the `Stage` trait for it;
//!   the file stem is the kind); when it runs in the worker, its computation is in `worker/src/K.rs`. Those two files
//!   are the only per-stage fact, and both follow from the kind's name.
//! - **References** followed from a file (comments, string literals and `#[cfg(test)]` items are ignored):
//!   `crate::x`, `super::x`, `self::x`, `rmdistill_stages::x`, `rmdistill_worker::x`, `rmdistill_ml::x` (also inside
//!   `use a::{b, c::d}` groups), `mod x;` declarations, and `include_str!`/`include_bytes!` of a literal path. A name
//!   that is not a module resolves through the `pub use` re-exports of its crate's `lib.rs` to the module that defines
//!   it; a name defined in `lib.rs` itself brings in `lib.rs` (whose own `mod` declarations are not followed: declaring
//!   a module is not using it).
//! - **Impls.** A method call or a trait conversion (`.into()`, `?`, `Display`) reaches an `impl` block without naming
//!   its file, so a type brings in every file that has an `impl` for it (inherent or of a trait), and a trait the files
//!   that implement it for a type from outside the workspace or for a generic type ([`Workspace::implementors`]).
//! - **Libraries.** Every library of `Cargo.lock` that a file of the closure names in a path (`parquet::…`) and that
//!   a workspace crate depends on directly, with everything that library depends on in turn (`parquet` brings the
//!   `zstd` that compresses its pages, `tokenizers` the Unicode tables it normalises with, `statrs` the `num-traits`
//!   its quantiles compute with), each at its version in `Cargo.lock`: a `cargo update` that changes any of them
//!   changes the identities of the stages that reach it. Left out are the [`NEUTRAL`] libraries, which shape error
//!   messages, parameter documentation and temporary files but never an output, and the packages [`NOT_IN_OUTPUTS`]
//!   names (build tools, other platforms, the async runtime). A git dependency is named by its commit. `tch` brings
//!   libtorch's own version (its `version.py`) with it.
//!
//! The identity is BLAKE3 over the kind, the library versions and the sorted (workspace-relative path, BLAKE3 of the
//! bytes) of the closure, so it does not depend on where the tree lives: a copy of the workspace derives the same
//! identities, which is how the tests check which kinds an edit affects. `stages/build.rs` includes this file with
//! `#[path]` and compiles [`derive`]'s result into the crate (see `port::code_identity`); it depends on std and blake3
//! only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// The crates whose sources stage code can reach: (name in paths, source directory relative to the workspace).
pub const CRATES: [(&str, &str); 3] =
    [("rmdistill_stages", "stages/src"), ("rmdistill_worker", "worker/src"), ("rmdistill_ml", "ml/src")];

/// The files a node's job passes through on its way to its stage, part of every stage's identity with what they
/// reference (stage files aside): the port and its registry, the protocol to the worker, and the engine's side of
/// the hand-over (`src/node_ctx.rs`: parameters, inputs, threads; hashed as bytes, since the engine crate is not
/// followed). A stage's own files do not reach these: a stage implements the port, it does not name what calls it.
pub const HARNESS: [&str; 3] = ["stages/src/lib.rs", "stages/src/protocol.rs", "src/node_ctx.rs"];

/// The same for a stage that runs in the worker: its dispatch, the context it hands a stage (parameters, inputs, the
/// threads it sets), its fork server. Not `worker/src/main.rs`: it only parses the command line and calls
/// `job::run_file` (a job) or `serve::serve`, and following it would bring `import-model`'s GGUF converter into every
/// worker stage's identity.
pub const WORKER_HARNESS: [&str; 3] = ["worker/src/lib.rs", "worker/src/job.rs", "worker/src/serve.rs"];

/// The workspace's manifests: the features they enable shape what a library computes (serde_json's
/// `float_roundtrip` parses floats exactly; without it some parameters come out one ulp off), and Cargo.lock does not
/// record features. Their dependency and feature tables are part of every stage's identity ([`declared`]).
pub const MANIFESTS: [&str; 4] = ["Cargo.toml", "stages/Cargo.toml", "worker/Cargo.toml", "ml/Cargo.toml"];

/// Libraries that cannot change what a stage writes (Cargo.lock names): errors, parameter documentation, temporary
/// files, the command line. Every other library a stage names is part of its identity, with its dependencies.
pub const NEUTRAL: [&str; 6] = ["anyhow", "thiserror", "serde_path_to_error", "schemars", "clap", "tempfile"];

/// One stage kind's derived identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageCode {
    pub kind: String,
    /// 32 hex digits.
    pub identity: String,
    /// Workspace-relative paths of every source file the identity covers, sorted.
    pub files: Vec<String>,
    /// The library versions it covers (`name=version;…`).
    pub libs: String,
}

/// Everything [`derive`] found.
#[derive(Clone, Debug)]
pub struct Derived {
    pub stages: Vec<StageCode>,
    /// Every source file read, for the build script's rerun rules.
    pub files_read: Vec<PathBuf>,
    /// For each stage root file (declaration or implementation), the other stage kinds' root files it references
    /// directly. Stages share code through modules of their own, never through each other's files, so this is empty.
    pub cross_stage_references: Vec<(String, Vec<String>)>,
}

/// Derives every stage's code identity from the workspace at `root`. `libtorch` is the libtorch version the worker
/// links (from `$LIBTORCH/version.py`).
pub fn derive(root: &Path, libtorch: &str) -> Result<Derived, String> {
    let mut ws = Workspace::new(root)?;
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
    let lock = Lock::parse(&lock);
    let mut declarations: Vec<(String, String)> = vec![];
    for m in MANIFESTS {
        let text = std::fs::read_to_string(root.join(m)).map_err(|e| format!("{m}: {e}"))?;
        declarations.extend(declared(&text).into_iter().map(|(name, text)| (name, format!("{m}: {text}"))));
    }
    let roots = ws.stage_roots()?;
    let mut stages = vec![];
    let mut cross = vec![];
    let root_files: BTreeMap<String, String> =
        roots.iter().flat_map(|(k, files)| files.iter().map(move |f| (f.clone(), k.clone()))).collect();
    let in_process: Vec<String> = HARNESS.iter().map(|f| f.to_string()).collect();
    let in_worker: Vec<String> =
        in_process.iter().cloned().chain(WORKER_HARNESS.iter().map(|f| f.to_string())).collect();
    let (in_process, in_worker) =
        (ws.closure_without(&in_process, &root_files)?, ws.closure_without(&in_worker, &root_files)?);
    for (kind, files) in &roots {
        let mut closure = ws.closure(files)?;
        // a kind runs in the worker when it has an implementation there (`stage_roots`)
        closure.extend(if files.len() > 1 { &in_worker } else { &in_process }.iter().cloned());
        for f in &closure {
            if let Some(what) = ws.info(f)?.unfollowable.clone() {
                return Err(format!(
                    "{f}: {what}, which the code identity cannot follow (an edit of the code it brings in would re-run \
                     no stage); write it as a function or module reached by path (stages/src/code_identity.rs)"
                ));
            }
        }
        for f in files {
            let direct: Vec<String> =
                ws.references(f)?.into_iter().filter(|r| root_files.get(r).is_some_and(|k| k != kind)).collect();
            if !direct.is_empty() {
                cross.push((f.clone(), direct));
            }
        }
        let mut used: BTreeSet<String> = BTreeSet::new();
        for f in &closure {
            used.extend(ws.crates(f)?);
        }
        let mut libs = String::new();
        let named = lock.named_by_workspace(&used);
        if named.iter().any(|&i| lock.packages[i].name == "tch") {
            libs.push_str(&format!("libtorch={libtorch};"));
        }
        let mut names: BTreeSet<String> = BTreeSet::new();
        for (name, version) in lock.with_dependencies(named) {
            libs.push_str(&format!("{name}={version};"));
            names.insert(name);
        }
        // how the manifests declare those libraries (their features), and what applies to all
        let declared: String = declarations
            .iter()
            .filter(|(name, _)| name.is_empty() || names.contains(name))
            .map(|(_, text)| format!("{text}\n"))
            .collect();
        libs.push_str(&format!("features={};", &blake3::hash(declared.as_bytes()).to_hex()[..16]));
        let mut h = blake3::Hasher::new();
        h.update(format!("rmdistill code identity v1\nkind={kind}\nlibs={libs}\n").as_bytes());
        for f in &closure {
            h.update(format!("{f} {}\n", ws.hash(f)?).as_bytes());
        }
        stages.push(StageCode {
            kind: kind.clone(),
            identity: h.finalize().to_hex()[..32].to_string(),
            files: closure.into_iter().collect(),
            libs,
        });
    }
    Ok(Derived { stages, files_read: ws.read_paths(), cross_stage_references: cross })
}

/// The declarations of a Cargo.toml that decide how a library is built, as (library name, declaration), comments and
/// blank lines left out: each entry of a dependency table (`[dependencies]`, `[workspace.dependencies]`,
/// `[build-dependencies]`, `[target.….dependencies]`; an entry may span lines) or a `[dependencies.x]` table under its
/// library's name, and under the name "" (for every library) the `[features]` tables and the feature `resolver`.
/// Dev-dependencies are left out: their features are unified only into test builds.
pub fn declared(toml: &str) -> Vec<(String, String)> {
    /// A line without its `#` comment (a `#` inside a string is kept).
    fn uncommented(line: &str) -> &str {
        let mut quote: Option<char> = None;
        for (i, c) in line.char_indices() {
            match (c, quote) {
                ('"' | '\'', None) => quote = Some(c),
                (c, Some(q)) if c == q => quote = None,
                ('#', None) => return line[..i].trim_end(),
                _ => {}
            }
        }
        line
    }
    enum Section {
        Other,
        Features,
        /// A table of dependencies, one per entry.
        Deps,
        /// `[dependencies.x]`: the whole table is x's.
        Dep(String),
    }
    /// Brackets and braces a line opens, less those it closes.
    fn opened(line: &str) -> i32 {
        line.matches(['[', '{']).count() as i32 - line.matches([']', '}']).count() as i32
    }
    let mut out: Vec<(String, String)> = vec![];
    let mut section = Section::Other;
    // an entry still open (its brackets not yet closed): its name, text and depth
    let mut open: Option<(String, String, i32)> = None;
    for line in toml.lines() {
        let line = uncommented(line.trim());
        if line.is_empty() {
            continue;
        }
        if let Some((name, text, depth)) = open.as_mut() {
            text.push(' ');
            text.push_str(line);
            *depth += opened(line);
            if *depth <= 0 {
                out.push((std::mem::take(name), std::mem::take(text)));
                open = None;
            }
            continue;
        }
        if line.starts_with('[') {
            let header: String = line.trim_matches(['[', ']']).chars().filter(|c| !c.is_whitespace()).collect();
            let parts: Vec<&str> = header.split('.').collect();
            section = match parts.iter().rposition(|p| p.ends_with("dependencies")) {
                _ if header == "features" => Section::Features,
                Some(i) if !parts[i].starts_with("dev-") && i + 1 == parts.len() => Section::Deps,
                Some(i) if !parts[i].starts_with("dev-") && i + 2 == parts.len() => {
                    Section::Dep(parts[i + 1].trim_matches('"').to_string())
                }
                _ => Section::Other,
            };
            if let Section::Dep(name) = &section {
                out.push((name.clone(), line.to_string()));
            }
            continue;
        }
        let key = line.split(['=', '.']).next().unwrap_or_default().trim().trim_matches('"').to_string();
        match &section {
            Section::Features => out.push((String::new(), line.to_string())),
            Section::Dep(name) => out.push((name.clone(), line.to_string())),
            Section::Deps => {
                let depth = opened(line);
                if depth > 0 {
                    open = Some((key, line.to_string(), depth));
                } else {
                    out.push((key, line.to_string()));
                }
            }
            Section::Other if key == "resolver" => out.push((String::new(), line.to_string())),
            Section::Other => {}
        }
    }
    out
}

/// The packages of a Cargo.lock and what each depends on.
struct Lock {
    /// Each package: how the identity names it, and its dependencies (indices into `packages`).
    packages: Vec<Package>,
}

struct Package {
    name: String,
    /// `version`, and for a git source its commit (the version stays while the commit moves), for a package of a
    /// local path that is not a workspace member `+path` (its code is not hashed: only its version is seen).
    label: String,
    deps: Vec<usize>,
}

/// The workspace's own packages: their code is hashed file by file, not by version.
const MEMBERS: [&str; 4] = ["rmdistill", "rmdistill-stages", "rmdistill-worker", "rmdistill-ml"];

/// Packages no stage's output can depend on on the platforms the tool runs on, not followed: what builds the code
/// (procedural macros' parser and quoting, the C compiler driver, build probes), what exists for other platforms
/// (Windows, WebAssembly, Android, macOS, UEFI), and the async runtime that only parquet's unused async reader
/// links. Left in, any `cargo update` of them would re-run every stage for nothing. A name ending in `*` is a prefix.
const NOT_IN_OUTPUTS: [&str; 24] = [
    "syn",
    "quote",
    "proc-macro2",
    "unicode-ident",
    "cc",
    "pkg-config",
    "autocfg",
    "version_check",
    "rustc_version",
    "semver",
    "jobserver",
    "shlex",
    "find-msvc-tools",
    "windows*",
    "wasm-bindgen*",
    "js-sys",
    "wasi",
    "wasip2",
    "wit-bindgen*",
    "r-efi",
    "android_system_properties",
    "core-foundation-sys",
    "iana-time-zone-haiku",
    "tokio*",
];

/// Whether `name` is a [`NEUTRAL`] or [`NOT_IN_OUTPUTS`] package, or a workspace member.
fn not_followed(name: &str) -> bool {
    MEMBERS.contains(&name)
        || NEUTRAL.contains(&name)
        || NOT_IN_OUTPUTS.iter().any(|n| n.strip_suffix('*').map_or(*n == name, |prefix| name.starts_with(prefix)))
}

impl Lock {
    /// Reads the `[[package]]` tables (`name`, `version`, `source`, `dependencies`) of a Cargo.lock (version 3 or 4);
    /// any other table (`[metadata]`, `[[patch.unused]]`) ends a package. A dependency is written `"name"` when the
    /// lock holds one version of it, else `"name version"`, and `"name version (source)"` when that is ambiguous too.
    fn parse(text: &str) -> Lock {
        #[derive(Default)]
        struct Raw {
            name: String,
            version: String,
            source: Option<String>,
            deps: Vec<String>,
        }
        let mut raw: Vec<Raw> = vec![];
        let mut current: Option<Raw> = None;
        let mut in_deps = false;
        for line in text.lines() {
            let line = line.trim_end();
            if line.starts_with('[') && !in_deps {
                raw.extend(current.take());
                current = (line == "[[package]]").then(Raw::default);
                continue;
            }
            let Some(p) = current.as_mut() else { continue };
            let value = |v: &str| v.trim().trim_matches('"').to_string();
            if in_deps {
                match line.trim() {
                    "]" => in_deps = false,
                    d => p.deps.push(d.trim_end_matches(',').trim_matches('"').to_string()),
                }
            } else if let Some(n) = line.strip_prefix("name = ") {
                p.name = value(n);
            } else if let Some(v) = line.strip_prefix("version = ") {
                p.version = value(v);
            } else if let Some(v) = line.strip_prefix("source = ") {
                p.source = Some(value(v));
            } else if line == "dependencies = [" {
                in_deps = true;
            }
        }
        raw.extend(current);
        let find = |d: &str| -> Option<usize> {
            let (spec, source) = match d.split_once(" (") {
                Some((s, src)) => (s, Some(src.trim_end_matches(')'))),
                None => (d, None),
            };
            let mut parts = spec.split_whitespace();
            let (name, version) = (parts.next()?, parts.next());
            raw.iter().position(|r| {
                r.name == name
                    && version.is_none_or(|v| r.version == v)
                    && source.is_none_or(|s| r.source.as_deref() == Some(s))
            })
        };
        let packages = raw
            .iter()
            .map(|r| Package {
                name: r.name.clone(),
                label: match &r.source {
                    Some(s) if s.starts_with("git+") => {
                        format!("{}#{}", r.version, s.rsplit_once('#').map_or(s.as_str(), |(_, commit)| commit))
                    }
                    Some(_) => r.version.clone(),
                    None if MEMBERS.contains(&r.name.as_str()) => r.version.clone(),
                    None => format!("{}+path", r.version),
                },
                deps: r.deps.iter().filter_map(|d| find(d)).collect(),
            })
            .collect();
        Lock { packages }
    }

    /// The libraries the workspace's crates depend on directly whose names (`-` written `_`) are among `used`,
    /// less the [`NEUTRAL`] ones.
    fn named_by_workspace(&self, used: &BTreeSet<String>) -> BTreeSet<usize> {
        self.packages
            .iter()
            .filter(|p| MEMBERS.contains(&p.name.as_str()))
            .flat_map(|p| p.deps.iter().copied())
            .filter(|&d| !not_followed(&self.packages[d].name))
            .filter(|&d| used.contains(&self.packages[d].name.replace('-', "_")))
            .collect()
    }

    /// `libs` and everything they depend on, transitively (a library's own dependencies shape its results: the
    /// compressor of parquet's pages, the tables of a Unicode normaliser), less what is [`not_followed`], as
    /// `(name, label)`. Cargo.lock does not say which dependencies are for other platforms or for building only:
    /// [`NOT_IN_OUTPUTS`] names those the workspace has; one missing there costs a needless re-run after a `cargo
    /// update` of it, never a wrong result.
    fn with_dependencies(&self, libs: BTreeSet<usize>) -> BTreeSet<(String, String)> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<usize> = libs.into_iter().collect();
        while let Some(i) = todo.pop() {
            let p = &self.packages[i];
            if not_followed(&p.name) || !seen.insert((p.name.clone(), p.label.clone())) {
                continue;
            }
            todo.extend(p.deps.iter().copied());
        }
        seen
    }
}

/// The libtorch version of a libtorch directory (`version.py`'s `__version__`), or "unknown".
pub fn libtorch_version(dir: Option<&Path>) -> String {
    dir.and_then(|d| std::fs::read_to_string(d.join("version.py")).ok())
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("__version__ = ").map(|v| v.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
            })
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// A parsed source file: its non-test references (workspace-relative paths), the crates it names at the head of a
/// path, and its content hash.
struct FileInfo {
    hash: String,
    refs: BTreeSet<String>,
    crates: BTreeSet<String>,
    /// The types and traits it defines (`struct`, `enum`, `union`, `trait`, `type` names).
    defines: BTreeSet<String>,
    /// Its `impl` blocks.
    impls: Vec<Impl>,
    /// Constructs whose code the references above cannot follow ([`unfollowable`]).
    unfollowable: Option<String>,
}

struct Workspace {
    root: PathBuf,
    files: HashMap<String, FileInfo>,
    /// Per crate: exported name → the module path it is re-exported from (lib.rs `pub use`); glob re-exports under "*".
    reexports: HashMap<&'static str, Vec<(String, Vec<String>)>>,
    /// File defining a type or trait → the other files with an `impl` for it ([`Workspace::implementors`]).
    implementors: Option<BTreeMap<String, BTreeSet<String>>>,
}

impl Workspace {
    fn new(root: &Path) -> Result<Workspace, String> {
        let mut ws = Workspace {
            root: root.to_path_buf(),
            files: HashMap::new(),
            reexports: HashMap::new(),
            implementors: None,
        };
        for (name, dir) in CRATES {
            let lib = format!("{dir}/lib.rs");
            let text = match std::fs::read_to_string(root.join(&lib)) {
                Ok(t) => t,
                Err(_) => continue, // a crate that is not there has nothing to reach
            };
            let toks = strip_test_items(lex(&text));
            ws.reexports.insert(name, pub_uses(&toks));
        }
        Ok(ws)
    }

    fn read_paths(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.files.keys().map(|f| self.root.join(f)).collect();
        v.sort();
        v
    }

    /// Stage kind → its root files (declaration, and implementation when there is one).
    fn stage_roots(&mut self) -> Result<BTreeMap<String, Vec<String>>, String> {
        let dir = self.root.join("stages/src");
        let mut entries: Vec<String> = std::fs::read_dir(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(".rs") && n != "lib.rs")
            .collect();
        entries.sort();
        let mut out = BTreeMap::new();
        for name in entries {
            let decl = format!("stages/src/{name}");
            // a file that implements `Stage` declares a kind
            if !self.info(&decl)?.impls.iter().any(|i| i.tr.as_deref() == Some("Stage")) {
                continue;
            }
            let kind = name.trim_end_matches(".rs").to_string();
            let mut files = vec![decl];
            let imp = format!("worker/src/{kind}.rs");
            if self.root.join(&imp).is_file() {
                files.push(imp);
            }
            out.insert(kind, files);
        }
        Ok(out)
    }

    fn hash(&mut self, file: &str) -> Result<String, String> {
        Ok(self.info(file)?.hash.clone())
    }

    fn references(&mut self, file: &str) -> Result<BTreeSet<String>, String> {
        Ok(self.info(file)?.refs.clone())
    }

    fn crates(&mut self, file: &str) -> Result<BTreeSet<String>, String> {
        Ok(self.info(file)?.crates.clone())
    }

    fn closure(&mut self, roots: &[String]) -> Result<BTreeSet<String>, String> {
        self.closure_without(roots, &BTreeMap::new())
    }

    /// The closure of `roots` that neither includes nor follows the files of `without`.
    fn closure_without(
        &mut self,
        roots: &[String],
        without: &BTreeMap<String, String>,
    ) -> Result<BTreeSet<String>, String> {
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut todo: Vec<String> = roots.to_vec();
        while let Some(f) = todo.pop() {
            if without.contains_key(&f) || !seen.insert(f.clone()) {
                continue;
            }
            if f.ends_with(".rs") {
                todo.extend(self.references(&f)?);
                todo.extend(self.implementors()?.get(&f).into_iter().flatten().cloned());
            } else {
                self.info(&f)?; // included data files are hashed, not scanned
            }
        }
        Ok(seen)
    }

    /// For each file that defines a type or trait, the other files with an `impl` block for it: the impl's self type
    /// when the workspace defines it, else its trait (an impl for `Vec<T>`, `Tensor` or a generic `T`). A name resolves
    /// to the impl file's own definition if it has one, else to the definitions among the files it references, else to
    /// every file that defines the name (the same name in several files can only make an identity cover too much).
    fn implementors(&mut self) -> Result<&BTreeMap<String, BTreeSet<String>>, String> {
        if self.implementors.is_none() {
            let mut all = vec![];
            for (_, dir) in CRATES {
                rust_files(&self.root, Path::new(dir), &mut all);
            }
            all.sort();
            let mut defined_in: HashMap<String, Vec<String>> = HashMap::new();
            for f in &all {
                for name in &self.info(f)?.defines {
                    defined_in.entry(name.clone()).or_default().push(f.clone());
                }
            }
            let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for f in &all {
                let info = &self.files[f];
                // Some(files): the workspace defines the name (no files: this file does); None: it does not
                let resolve = |name: &str| -> Option<Vec<String>> {
                    if info.defines.contains(name) {
                        return Some(vec![]);
                    }
                    let defs = defined_in.get(name)?;
                    let referenced: Vec<String> = defs.iter().filter(|d| info.refs.contains(*d)).cloned().collect();
                    Some(if referenced.is_empty() { defs.clone() } else { referenced })
                };
                for imp in &info.impls {
                    // the self type, else the trait, else any workspace name in the header (`impl From<Pair> for
                    // String`): the impl belongs to what the workspace defines
                    let owners = resolve(&imp.ty)
                        .or_else(|| imp.tr.as_deref().and_then(resolve))
                        .or_else(|| {
                            let all: Vec<String> = imp.names.iter().filter_map(|n| resolve(n)).flatten().collect();
                            (!all.is_empty()).then_some(all)
                        })
                        .unwrap_or_default();
                    for o in owners {
                        map.entry(o).or_default().insert(f.clone());
                    }
                }
            }
            self.implementors = Some(map);
        }
        Ok(self.implementors.as_ref().expect("computed above"))
    }

    fn info(&mut self, file: &str) -> Result<&FileInfo, String> {
        if !self.files.contains_key(file) {
            let bytes = std::fs::read(self.root.join(file)).map_err(|e| format!("{file}: {e}"))?;
            let hash = blake3::hash(&bytes).to_hex().to_string();
            let mut unfollowable = None;
            let (refs, crates, defines, impls) = if file.ends_with(".rs") {
                let text = String::from_utf8_lossy(&bytes);
                let toks = strip_test_items(lex(&text));
                let crates = toks
                    .windows(2)
                    .enumerate()
                    .filter(|(i, w)| w[1] == Tok::PathSep && (*i == 0 || toks[i - 1] != Tok::PathSep))
                    .filter_map(|(_, w)| match &w[0] {
                        Tok::Ident(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect();
                unfollowable = self::unfollowable(&toks);
                (self.scan(file, &toks), crates, definitions(&toks), impl_headers(&toks))
            } else {
                (BTreeSet::new(), BTreeSet::new(), BTreeSet::new(), vec![])
            };
            let info = FileInfo { hash, refs, crates, defines, impls, unfollowable };
            self.files.insert(file.to_string(), info);
        }
        Ok(&self.files[file])
    }

    /// The crate a file belongs to and its module path within it.
    fn locate(file: &str) -> Option<(&'static str, &'static str, Vec<String>)> {
        let (name, dir) = CRATES.iter().find(|(_, d)| file.starts_with(&format!("{d}/")))?;
        let rel = &file[dir.len() + 1..];
        let rel = rel.strip_suffix(".rs")?;
        let mut segs: Vec<String> = rel.split('/').map(str::to_string).collect();
        if segs.last().is_some_and(|s| s == "mod" || s == "lib" || s == "main") {
            segs.pop();
        }
        Some((name, dir, segs))
    }

    fn scan(&self, file: &str, toks: &[Tok]) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let Some((own_crate, own_dir, own_mod)) = Self::locate(file) else { return out };
        let is_root_file = own_mod.is_empty();
        let file_dir = Path::new(file).parent().map(Path::to_path_buf).unwrap_or_default();
        let mut i = 0;
        while i < toks.len() {
            // include_str!("x") / include_bytes!("x")
            if let Tok::Ident(m) = &toks[i]
                && (m == "include_str" || m == "include_bytes")
                && toks.get(i + 1) == Some(&Tok::Punct('!'))
                && toks.get(i + 2) == Some(&Tok::Punct('('))
                && let Some(Tok::Str(p)) = toks.get(i + 3)
            {
                let f = normalize(&file_dir.join(p));
                if self.root.join(&f).is_file() {
                    out.insert(f);
                }
            }
            // `mod x;` (a non-test child module declared in this file; lib.rs's declarations are not uses)
            if toks[i] == Tok::id("mod")
                && !is_root_file
                && let (Some(Tok::Ident(name)), Some(Tok::Punct(';'))) = (toks.get(i + 1), toks.get(i + 2))
            {
                let mut m = own_mod.clone();
                m.push(name.clone());
                out.extend(self.module_files(own_dir, &m));
            }
            // paths: ROOT :: seg :: seg …  or  ROOT :: { tree, … }
            if let Tok::Ident(head) = &toks[i] {
                let prev_is_sep = i > 0 && toks[i - 1] == Tok::PathSep;
                if !prev_is_sep && toks.get(i + 1) == Some(&Tok::PathSep) {
                    let base: Option<(&'static str, &'static str, Vec<String>)> = match head.as_str() {
                        "crate" => Some((own_crate, own_dir, vec![])),
                        "self" => Some((own_crate, own_dir, own_mod.clone())),
                        "super" => {
                            let mut m = own_mod.clone();
                            m.pop();
                            Some((own_crate, own_dir, m))
                        }
                        other => CRATES.iter().find(|(n, _)| *n == other).map(|(n, d)| (*n, *d, vec![])),
                    };
                    if let Some((krate, dir, prefix)) = base {
                        let mut paths = vec![];
                        use_tree(toks, i + 2, &mut vec![], &mut paths);
                        for p in paths {
                            let mut full = prefix.clone();
                            full.extend(p);
                            out.extend(self.resolve(krate, dir, &full, head == "super" || head == "self"));
                        }
                    }
                }
            }
            i += 1;
        }
        out.remove(file);
        out
    }

    /// The files of module `m` (and its ancestors' files, which declare it) in the crate at `dir`, if it is one.
    fn module_files(&self, dir: &str, m: &[String]) -> Vec<String> {
        let mut out = vec![];
        for k in 1..=m.len() {
            let p = m[..k].join("/");
            let a = format!("{dir}/{p}.rs");
            let b = format!("{dir}/{p}/mod.rs");
            if self.root.join(&a).is_file() {
                out.push(a);
            } else if self.root.join(&b).is_file() {
                out.push(b);
            } else {
                break;
            }
        }
        out
    }

    /// The files a path `segs` (from the crate root) reaches.
    fn resolve(&self, krate: &'static str, dir: &str, segs: &[String], relative: bool) -> Vec<String> {
        if segs.is_empty() {
            return vec![];
        }
        let files = self.module_files(dir, segs);
        if !files.is_empty() {
            return files;
        }
        // not a module: a re-export of lib.rs, or an item defined there
        let ex = self.reexports.get(krate).cloned().unwrap_or_default();
        if let Some((_, path)) = ex.iter().find(|(n, _)| n == &segs[0]) {
            // (nothing for a re-exported external crate, e.g. `pub use tch;`: its version is among the libraries)
            return self.module_files(dir, path);
        }
        let globs: Vec<String> =
            ex.iter().filter(|(n, _)| n == "*").flat_map(|(_, p)| self.module_files(dir, p)).collect();
        if !globs.is_empty() {
            return globs;
        }
        if relative {
            return vec![]; // `super::X` for an item of an inline parent module: the file itself
        }
        let lib = format!("{dir}/lib.rs");
        if self.root.join(&lib).is_file() { vec![lib] } else { vec![] }
    }
}

/// The `.rs` files under `dir` (workspace-relative), recursively.
fn rust_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(root.join(dir)) else { return };
    for e in entries.flatten() {
        let rel = dir.join(e.file_name());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            rust_files(root, &rel, out);
        } else if rel.extension().is_some_and(|x| x == "rs") {
            out.push(normalize(&rel));
        }
    }
}

/// The names a file's module-level items define: `struct`, `enum`, `union`, `trait` and `type`, outside any block
/// but an inline `mod x { … }` (an associated type such as a serde visitor's `type Value` is no type of the module:
/// counting it made `impl Tr for serde_json::Value` look like an impl for the visitor's file).
fn definitions(toks: &[Tok]) -> BTreeSet<String> {
    let kinds = ["struct", "enum", "union", "trait", "type"].map(Tok::id);
    let mut out = BTreeSet::new();
    // for each open brace: whether it opens an inline module
    let mut blocks: Vec<bool> = vec![];
    for (i, t) in toks.iter().enumerate() {
        match t {
            Tok::Punct('{') => {
                blocks.push(i >= 2 && toks[i - 2] == Tok::id("mod") && matches!(toks[i - 1], Tok::Ident(_)))
            }
            Tok::Punct('}') => {
                blocks.pop();
            }
            _ if kinds.contains(t) && blocks.iter().all(|&m| m) => {
                if let Some(Tok::Ident(n)) = toks.get(i + 1) {
                    out.insert(n.clone());
                }
            }
            _ => {}
        }
    }
    out
}

/// One `impl` item: its trait and self type by their last path segments outside generic arguments (`impl<T> a::Tr<T>
/// for &b::Ty<T> where …` has trait "Tr" and self type "Ty"; `impl dyn Tr + Send` self type "Tr"), and every name in
/// its header, generic arguments included (`impl From<crate::a::Pair> for String` is about `Pair`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Impl {
    tr: Option<String>,
    ty: String,
    names: Vec<String>,
}

/// Every `impl` item of a file. An `impl Trait` in a type (after `->`, `:`, `(`, …) is not an item.
fn impl_headers(toks: &[Tok]) -> Vec<Impl> {
    let mut out = vec![];
    for i in 0..toks.len() {
        let item_start = i == 0
            || matches!(&toks[i - 1], Tok::Punct('}' | ';' | '{' | ']'))
            || toks[i - 1] == Tok::id("unsafe")
            || toks[i - 1] == Tok::id("default");
        if toks[i] != Tok::id("impl") || !item_start {
            continue;
        }
        let mut j = i + 1;
        // the impl's own generic parameters
        if toks.get(j) == Some(&Tok::Punct('<')) {
            j = after_angles(toks, j);
        }
        // the header, up to its block or `where`, split at a `for` outside angle brackets; a bound after `+` is not
        // the type
        let (mut parts, mut depth, mut bound): (Vec<Vec<&Tok>>, i32, bool) = (vec![vec![]], 0, false);
        let mut names = vec![];
        while j < toks.len() {
            match &toks[j] {
                Tok::Punct('-') if toks.get(j + 1) == Some(&Tok::Punct('>')) => j += 1,
                Tok::Punct('<') => depth += 1,
                Tok::Punct('>') => depth -= 1,
                Tok::Punct('{') | Tok::Punct(';') if depth <= 0 => break,
                Tok::Punct('+') if depth <= 0 => bound = true,
                Tok::Ident(w) if depth <= 0 && w == "where" => break,
                Tok::Ident(w) if depth <= 0 && w == "for" => {
                    parts.push(vec![]);
                    bound = false;
                    j += 1;
                    continue;
                }
                Tok::Ident(n) => names.push(n.clone()),
                _ => {}
            }
            if depth <= 0 && !bound {
                parts.last_mut().expect("one part at least").push(&toks[j]);
            }
            j += 1;
        }
        let last_ident = |p: &[&Tok]| {
            p.iter().rev().find_map(|t| match t {
                Tok::Ident(n) if n != "dyn" && n != "mut" => Some(n.clone()),
                _ => None,
            })
        };
        let (tr, ty) = match parts.as_slice() {
            [ty] => (None, last_ident(ty)),
            [tr, ty, ..] => (last_ident(tr), last_ident(ty)),
            [] => (None, None),
        };
        if let Some(ty) = ty {
            out.push(Impl { tr, ty, names });
        }
    }
    out
}

/// The index after the `<…>` that opens at `i` (a `->` inside does not close it).
fn after_angles(toks: &[Tok], mut i: usize) -> usize {
    let mut depth = 0i32;
    while i < toks.len() {
        match &toks[i] {
            Tok::Punct('-') if toks.get(i + 1) == Some(&Tok::Punct('>')) => i += 1,
            Tok::Punct('<') => depth += 1,
            Tok::Punct('>') => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

/// Lexically normalised relative path with `/` separators.
fn normalize(p: &Path) -> String {
    let mut out: Vec<String> = vec![];
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(s) => out.push(s.to_string_lossy().to_string()),
            _ => {}
        }
    }
    out.join("/")
}

/// The module paths a use-tree starting at `toks[i]` names (each path cut at its first non-identifier).
fn use_tree(toks: &[Tok], mut i: usize, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let start_len = prefix.len();
    loop {
        match toks.get(i) {
            Some(Tok::Ident(s)) if s != "self" => {
                prefix.push(s.clone());
                i += 1;
                if toks.get(i) == Some(&Tok::PathSep) {
                    i += 1;
                    continue;
                }
                out.push(prefix.clone());
                break;
            }
            Some(Tok::Punct('{')) => {
                i += 1;
                loop {
                    match toks.get(i) {
                        None => break,
                        Some(Tok::Punct('}')) => {
                            i += 1;
                            break;
                        }
                        Some(Tok::Punct(',')) => i += 1,
                        Some(_) => {
                            let before = i;
                            i = use_tree(toks, i, prefix, out);
                            // skip the rest of this entry (`as x`, generics, …) up to `,` or `}` at this depth
                            let mut depth = 0i32;
                            while let Some(t) = toks.get(i) {
                                match t {
                                    Tok::Punct('{') | Tok::Punct('(') | Tok::Punct('[') => depth += 1,
                                    Tok::Punct('}') | Tok::Punct(')') | Tok::Punct(']') if depth > 0 => depth -= 1,
                                    Tok::Punct(',') | Tok::Punct('}') if depth == 0 => break,
                                    _ => {}
                                }
                                i += 1;
                            }
                            if i == before {
                                i += 1;
                            }
                        }
                    }
                }
                break;
            }
            _ => {
                // `self`, `*`, or anything else: the prefix itself is the module used
                if !prefix.is_empty() {
                    out.push(prefix.clone());
                }
                break;
            }
        }
    }
    prefix.truncate(start_len);
    i
}

/// `pub use a::b::{C, D as E};` items of a token stream: (exported name, module path), globs as ("*", path).
fn pub_uses(toks: &[Tok]) -> Vec<(String, Vec<String>)> {
    let mut out = vec![];
    for i in 0..toks.len() {
        if toks[i] == Tok::id("pub") && toks.get(i + 1) == Some(&Tok::id("use")) {
            let mut j = i + 2;
            let mut entries = vec![];
            collect_exports(toks, &mut j, &mut vec![], &mut entries);
            out.extend(entries);
        }
    }
    out
}

fn collect_exports(toks: &[Tok], i: &mut usize, prefix: &mut Vec<String>, out: &mut Vec<(String, Vec<String>)>) {
    let start = prefix.len();
    loop {
        match toks.get(*i) {
            Some(Tok::Ident(s)) => {
                let s = s.clone();
                *i += 1;
                if toks.get(*i) == Some(&Tok::PathSep) {
                    prefix.push(s);
                    *i += 1;
                    continue;
                }
                let name = if toks.get(*i) == Some(&Tok::id("as")) {
                    *i += 1;
                    match toks.get(*i) {
                        Some(Tok::Ident(a)) => {
                            *i += 1;
                            a.clone()
                        }
                        _ => s.clone(),
                    }
                } else {
                    s.clone()
                };
                if s == "self" {
                    out.push((prefix.last().cloned().unwrap_or_default(), prefix.clone()));
                } else {
                    // `pub use x;` re-exports a module or crate x; `pub use m::Item;` an item of module m
                    let mut path = prefix.clone();
                    if prefix.is_empty() {
                        path.push(s);
                    }
                    out.push((name, path));
                }
                break;
            }
            Some(Tok::Punct('*')) => {
                *i += 1;
                out.push(("*".into(), prefix.clone()));
                break;
            }
            Some(Tok::Punct('{')) => {
                *i += 1;
                loop {
                    match toks.get(*i) {
                        None => break,
                        Some(Tok::Punct('}')) => {
                            *i += 1;
                            break;
                        }
                        Some(Tok::Punct(',')) => *i += 1,
                        Some(_) => {
                            let before = *i;
                            collect_exports(toks, i, prefix, out);
                            if *i == before {
                                *i += 1;
                            }
                        }
                    }
                }
                break;
            }
            _ => break,
        }
    }
    prefix.truncate(start);
}

/// The tokens that matter here.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// A string literal's contents (escapes left as written).
    Str(String),
    PathSep,
    Punct(char),
}

impl Tok {
    fn id(s: &str) -> Tok {
        Tok::Ident(s.to_string())
    }
}

/// A small Rust lexer: identifiers, string literals, `::` and punctuation; comments, numbers, characters and
/// lifetimes are dropped.
fn lex(src: &str) -> Vec<Tok> {
    let c: Vec<char> = src.chars().collect();
    let n = c.len();
    let mut out = vec![];
    let mut i = 0;
    while i < n {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && i + 1 < n && c[i + 1] == '/' {
            while i < n && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && i + 1 < n && c[i + 1] == '*' {
            let mut depth = 0;
            while i < n {
                if c[i] == '/' && i + 1 < n && c[i + 1] == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && i + 1 < n && c[i + 1] == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if ch == '"' {
            let (s, next) = quoted(&c, i + 1);
            out.push(Tok::Str(s));
            i = next;
        } else if (ch == 'r' || ch == 'b' || ch == 'c') && raw_or_prefixed_string(&c, i).is_some() {
            let (s, next) = raw_or_prefixed_string(&c, i).unwrap();
            out.push(Tok::Str(s));
            i = next;
        } else if ch == '\'' {
            // a character literal ('x', '\n', '\u{..}') or a lifetime ('a)
            if i + 2 < n && c[i + 1] == '\\' {
                i += 2;
                while i < n && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if i + 2 < n && c[i + 2] == '\'' {
                i += 3;
            } else {
                i += 1;
                while i < n && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let s = i;
            while i < n && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let mut word: String = c[s..i].iter().collect();
            if word == "r" && i < n && c[i] == '#' {
                // raw identifier r#name
                let s2 = i + 1;
                i += 1;
                while i < n && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
                word = c[s2..i].iter().collect();
            }
            out.push(Tok::Ident(word));
        } else if ch.is_ascii_digit() {
            while i < n
                && (c[i].is_alphanumeric() || c[i] == '_' || (c[i] == '.' && i + 1 < n && c[i + 1].is_ascii_digit()))
            {
                i += 1;
            }
        } else if ch == ':' && i + 1 < n && c[i + 1] == ':' {
            out.push(Tok::PathSep);
            i += 2;
        } else {
            out.push(Tok::Punct(ch));
            i += 1;
        }
    }
    out
}

/// The contents of a `"…"` literal whose opening quote precedes `i`, and the index after its closing quote.
fn quoted(c: &[char], mut i: usize) -> (String, usize) {
    let s = i;
    while i < c.len() && c[i] != '"' {
        if c[i] == '\\' {
            i += 1;
        }
        i += 1;
    }
    let end = i.min(c.len());
    (c[s..end].iter().collect(), (i + 1).min(c.len()))
}

/// `r"…"`, `r#"…"#`, `b"…"`, `br#"…"#`, `c"…"` literals starting at `i`: (contents, index after), or None.
fn raw_or_prefixed_string(c: &[char], i: usize) -> Option<(String, usize)> {
    let n = c.len();
    if i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_') {
        return None; // the middle of an identifier
    }
    let mut j = i;
    if c[j] == 'b' || c[j] == 'c' {
        j += 1;
    }
    let raw = j < n && c[j] == 'r';
    if raw {
        j += 1;
    }
    let mut hashes = 0;
    while raw && j < n && c[j] == '#' {
        hashes += 1;
        j += 1;
    }
    if j >= n || c[j] != '"' || (j == i) {
        return None;
    }
    if !raw {
        let (s, next) = quoted(c, j + 1);
        return Some((s, next));
    }
    let s = j + 1;
    let mut k = s;
    while k < n {
        if c[k] == '"' && (0..hashes).all(|h| k + 1 + h < n && c[k + 1 + h] == '#') {
            return Some((c[s..k].iter().collect(), k + 1 + hashes));
        }
        k += 1;
    }
    Some((c[s..].iter().collect(), n))
}

/// A construct outside test code whose code the references cannot follow, so that an edit of it would change no
/// identity: a macro (`macro_rules!`: its uses name the crate root, not the file defining it), `include!` of source,
/// a `#[path]` module, a workspace crate renamed by `as` (its paths would not be recognised). None is used today; the
/// build refuses one rather than derive an identity that misses it.
fn unfollowable(toks: &[Tok]) -> Option<String> {
    let crates: Vec<Tok> = CRATES.iter().map(|(name, _)| Tok::id(name)).collect();
    // what a build script generated (`include!(concat!(env!("OUT_DIR"), …))`) is not workspace source
    let generated =
        [Tok::id("concat"), Tok::Punct('!'), Tok::Punct('('), Tok::id("env"), Tok::Punct('!'), Tok::Punct('(')];
    toks.windows(4).enumerate().find_map(|(i, w)| match w {
        [Tok::Ident(m), Tok::Punct('!'), ..] if m == "macro_rules" => Some("a `macro_rules!` macro".to_string()),
        [Tok::Ident(m), Tok::Punct('!'), Tok::Punct('('), ..]
            if m == "include"
                && !(toks.get(i + 3..i + 9) == Some(&generated[..])
                    && toks.get(i + 9) == Some(&Tok::Str("OUT_DIR".into()))) =>
        {
            Some("`include!`".to_string())
        }
        [Tok::Punct('#'), Tok::Punct('['), Tok::Ident(p), Tok::Punct('=')] if p == "path" => {
            Some("a `#[path]` module".to_string())
        }
        [Tok::Ident(u), c, Tok::Ident(a), _] if (u == "use" || u == "crate") && a == "as" && crates.contains(c) => {
            Some(format!("a workspace crate renamed (`{c:?} as …`)"))
        }
        _ => None,
    })
}

/// Removes `#[cfg(test)]` items, and the rest of the block an inner `#![cfg(test)]` opens (the whole file at its
/// top, an inline `mod x { #![cfg(test)] … }` inside it): test code is not part of a computation.
fn strip_test_items(toks: Vec<Tok>) -> Vec<Tok> {
    let is_cfg_test = |t: &[Tok], at: usize| -> Option<(bool, usize)> {
        // # [!]? [ cfg ( test ) ]
        let mut k = at + 1;
        let inner = t.get(k) == Some(&Tok::Punct('!'));
        if inner {
            k += 1;
        }
        let want =
            [Tok::Punct('['), Tok::id("cfg"), Tok::Punct('('), Tok::id("test"), Tok::Punct(')'), Tok::Punct(']')];
        if t.len() >= k + want.len() && t[k..k + want.len()] == want { Some((inner, k + want.len())) } else { None }
    };
    let mut out = Vec::with_capacity(toks.len());
    let mut i = 0;
    // braces open in what is kept (skipped items are balanced)
    let mut depth = 0usize;
    while i < toks.len() {
        if toks[i] == Tok::Punct('#')
            && let Some((inner, after)) = is_cfg_test(&toks, i)
        {
            if !inner {
                i = skip_item(&toks, after);
                continue;
            }
            if depth == 0 {
                return out; // the whole file is test code
            }
            // the rest of the enclosing block, up to its closing brace (kept)
            let mut d = 0usize;
            i = after;
            while i < toks.len() {
                match toks[i] {
                    Tok::Punct('{') => d += 1,
                    Tok::Punct('}') if d == 0 => break,
                    Tok::Punct('}') => d -= 1,
                    _ => {}
                }
                i += 1;
            }
            continue;
        }
        match toks[i] {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => depth = depth.saturating_sub(1),
            _ => {}
        }
        out.push(toks[i].clone());
        i += 1;
    }
    out
}

/// The index after the item starting at `i` (its further attributes, then up to a `;` or a `{…}` block at depth 0).
fn skip_item(t: &[Tok], mut i: usize) -> usize {
    let mut depth = 0i32;
    while i < t.len() {
        match &t[i] {
            Tok::Punct('(') | Tok::Punct('[') => depth += 1,
            Tok::Punct(')') | Tok::Punct(']') => depth -= 1,
            Tok::Punct(';') if depth == 0 => return i + 1,
            Tok::Punct('{') if depth == 0 => {
                let mut d = 0i32;
                while i < t.len() {
                    match t[i] {
                        Tok::Punct('{') => d += 1,
                        Tok::Punct('}') => {
                            d -= 1;
                            if d == 0 {
                                return i + 1;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                return i;
            }
            _ => {}
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(src: &str) -> Vec<Tok> {
        strip_test_items(lex(src))
    }

    #[test]
    fn lexer_drops_comments_strings_and_test_items() {
        let t = ids("//! see [`crate::a`]\nuse crate::b; /* crate::c /* nested */ crate::d */ let s = \"crate::e\"; \
             let r = r#\"crate::f\"#; let ch = '\"'; fn f<'a>(x: &'a str) {}\n\
             #[cfg(test)]\nmod tests { use crate::g; }\n#[cfg(test)] use crate::h;\nuse crate::i;");
        let text: String = t.iter().map(|t| format!("{t:?}")).collect();
        for gone in ["\"a\"", "\"c\"", "\"d\"", "\"g\"", "\"h\""] {
            assert!(!text.contains(&format!("Ident({gone})")), "{gone} in {text}");
        }
        assert!(text.contains("Ident(\"b\")") && text.contains("Ident(\"i\")"), "{text}");
        assert!(t.contains(&Tok::Str("crate::e".into())) && t.contains(&Tok::Str("crate::f".into())));
    }

    #[test]
    fn impl_headers_name_trait_and_self_type() {
        let h = |src: &str| -> Vec<(Option<String>, String)> {
            impl_headers(&ids(src)).into_iter().map(|i| (i.tr, i.ty)).collect()
        };
        let s = |x: &str| x.to_string();
        assert_eq!(h("impl Foo { fn f() {} }"), [(None, s("Foo"))]);
        assert_eq!(
            h("impl<'a, T: Fn() -> u8> a::Tr<T> for &'a mut b::Ty<Vec<T>> where T: Copy { }"),
            [(Some(s("Tr")), s("Ty"))]
        );
        assert_eq!(
            h("unsafe impl Send for X {}\nimpl<T> From<T> for Box<dyn Y> {}"),
            [(Some(s("Send")), s("X")), (Some(s("From")), s("Box"))]
        );
        // a bound after `+` is not the type (a reviewer's finding: `impl dyn Stage + Send` read as `Send`)
        assert_eq!(h("impl dyn Stage + Send { }"), [(None, s("Stage"))]);
        // the names of the generic arguments are kept for the impls of outside traits on outside types
        let names = &impl_headers(&ids("impl From<crate::a::Pair> for String { }"))[0].names;
        assert!(names.contains(&s("Pair")), "{names:?}");
        // `impl Trait` in a type is not an item
        assert!(h("fn f(x: impl Read) -> impl Iterator<Item = u8> { x }\nstruct S(Box<impl Tr>);").is_empty());
        assert_eq!(definitions(&ids("pub struct A; enum B {} trait C {} type D = u8; union E {}")).len(), 5);
        // associated types and items inside functions define nothing of the module; an inline module's items do
        let d = definitions(&ids(
            "impl<'de> Visitor<'de> for V { type Value = u8; }\ntrait T { type Out; }\nfn f() { struct Local; }\n\
             mod m { pub struct Inner; }",
        ));
        assert_eq!(d.into_iter().collect::<Vec<_>>(), ["Inner", "T"]);
    }

    /// An inner `#![cfg(test)]` makes test code of the block it opens, not of the rest of the file (a reviewer's
    /// finding: one inside an inline module dropped every item after it, the `impl Stage for` included).
    #[test]
    fn an_inner_cfg_test_drops_its_own_block() {
        let text = |src: &str| ids(src).iter().map(|t| format!("{t:?}")).collect::<String>();
        let t =
            text("use crate::a;\nmod helpers { #![cfg(test)] use crate::b; fn f() { crate::c::g() } }\nuse crate::d;");
        assert!(t.contains("Ident(\"a\")") && t.contains("Ident(\"d\")"), "{t}");
        assert!(!t.contains("Ident(\"b\")") && !t.contains("Ident(\"c\")"), "{t}");
        // at the top of a file: all of it
        let t = text("#![cfg(test)]\nuse crate::a;\nmod m { use crate::b; }");
        assert!(!t.contains("Ident(\"a\")") && !t.contains("Ident(\"b\")"), "{t}");
    }

    #[test]
    fn constructs_the_identity_cannot_follow_are_named() {
        let of = |src: &str| unfollowable(&ids(src));
        assert_eq!(of("use crate::a; fn f() { g!(x) }"), None);
        assert!(of("macro_rules! bump { () => {} }").unwrap().contains("macro_rules"));
        assert!(of("include!(\"gen.rs\");").unwrap().contains("include!"));
        assert_eq!(of("include!(concat!(env!(\"OUT_DIR\"), \"/code_identity.rs\"));"), None);
        assert!(of("#[path = \"x.rs\"] mod x;").unwrap().contains("#[path]"));
        assert!(of("use rmdistill_ml as ml;").unwrap().contains("renamed"));
        assert_eq!(of("use rmdistill_ml::gguf as g; let s = include_str!(\"a\");"), None);
        // in test code they do not count
        assert_eq!(of("#[cfg(test)]\nmod t { macro_rules! m { () => {} } }"), None);
    }

    #[test]
    fn manifests_declare_each_library_s_features() {
        let d = declared(
            "[package]\nname = \"x\" # not a dependency\n\n[workspace]\nresolver = \"3\"\n\n\
             [workspace.dependencies]\nserde_json = { version = \"1\", features = [\"float_roundtrip\"] } # exact floats\n\
             arrow = { version = \"60\", features = [\n  \"json\", # the reader\n  \"prettyprint\",\n] }\n\
             [dependencies]\nanyhow.workspace = true\n\n[ features ] # for GPUs\ncuda = [\"ml/cuda\"]\n\n\
             [target.'cfg(unix)'.dependencies]\nlibc = \"0.2\"\n\n[dependencies.tch]\nversion = \"0.24\"\n\n\
             [dev-dependencies]\nproptest = \"1\"\n[profile.dev]\nopt-level = 1\n",
        );
        let names: Vec<&str> = d.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["", "serde_json", "arrow", "anyhow", "", "libc", "tch", "tch"], "{d:?}");
        assert_eq!(d[1].1, "serde_json = { version = \"1\", features = [\"float_roundtrip\"] }");
        assert_eq!(d[2].1, "arrow = { version = \"60\", features = [ \"json\", \"prettyprint\", ] }");
        assert_eq!(d[4].1, "cuda = [\"ml/cuda\"]");
    }

    #[test]
    fn use_trees_name_their_modules() {
        let t = ids("crate::{data_io::{self, Codec}, port::*, table}");
        let mut out = vec![];
        use_tree(&t, 2, &mut vec![], &mut out);
        let names: Vec<String> = out.iter().map(|p| p.join("::")).collect();
        assert_eq!(names, ["data_io", "data_io::Codec", "port", "table"]);
        let t = ids("pub use port::{ArtifactKind, Ctx as C}; pub use tch; pub use x::*;");
        let ex = pub_uses(&t);
        assert!(ex.contains(&("ArtifactKind".into(), vec!["port".into()])), "{ex:?}");
        assert!(ex.contains(&("C".into(), vec!["port".into()])), "{ex:?}");
        assert!(ex.contains(&("tch".into(), vec!["tch".into()])), "{ex:?}");
        assert!(ex.contains(&("*".into(), vec!["x".into()])), "{ex:?}");
    }

    /// A Cargo.lock as `cargo` writes it: a package at two versions, one of them also from git, a git source, a local
    /// path, build-only and other-platform packages, and the tables after the packages.
    const LOCK: &str = r#"version = 4

[[package]]
name = "rmdistill-stages"
version = "0.1.0"
dependencies = [
 "anyhow",
 "parquet",
 "statrs",
 "local",
]

[[package]]
name = "parquet"
version = "60.1.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "aa"
dependencies = [
 "zstd 0.14.4",
 "tokio",
 "windows-sys",
 "syn",
]

[[package]]
name = "zstd"
version = "0.14.4"
source = "registry+https://github.com/rust-lang/crates.io-index"

[[package]]
name = "zstd"
version = "0.11.2"
source = "registry+https://github.com/rust-lang/crates.io-index"

[[package]]
name = "statrs"
version = "0.18.0"
source = "git+https://github.com/statrs-dev/statrs?rev=1111#1111aaaa"
dependencies = [
 "approx 0.5.1 (git+https://github.com/x/approx#2222bbbb)",
]

[[package]]
name = "approx"
version = "0.5.1"
source = "registry+https://github.com/rust-lang/crates.io-index"

[[package]]
name = "approx"
version = "0.5.1"
source = "git+https://github.com/x/approx#2222bbbb"

[[package]]
name = "local"
version = "0.2.0"

[[package]]
name = "anyhow"
version = "1.0.0"

[[package]]
name = "tokio"
version = "1.54.1"

[[package]]
name = "windows-sys"
version = "0.61.2"

[[package]]
name = "syn"
version = "2.0.0"

[[patch.unused]]
name = "serde_json"
version = "1.0.999"
"#;

    fn libs(lock: &str, used: &[&str]) -> Vec<String> {
        let l = Lock::parse(lock);
        let named = l.named_by_workspace(&used.iter().map(|s| s.to_string()).collect());
        l.with_dependencies(named).into_iter().map(|(n, v)| format!("{n}={v}")).collect()
    }

    #[test]
    fn cargo_lock_packages_are_labelled_by_version_and_git_commit() {
        assert_eq!(
            libs(LOCK, &["parquet", "statrs", "local", "anyhow"]),
            ["approx=0.5.1#2222bbbb", "local=0.2.0+path", "parquet=60.1.0", "statrs=0.18.0#1111aaaa", "zstd=0.14.4"]
        );
        // only what the stage's files name
        assert_eq!(libs(LOCK, &["parquet"]), ["parquet=60.1.0", "zstd=0.14.4"]);
        // a git dependency's commit moves while its version stays: the label changes
        let moved = LOCK.replace("#1111aaaa", "#3333cccc");
        assert!(libs(&moved, &["statrs"]).contains(&"statrs=0.18.0#3333cccc".to_string()));
        // the table after the packages does not rename the last one
        let l = Lock::parse(LOCK);
        assert_eq!(l.packages.last().map(|p| p.name.as_str()), Some("syn"));
        assert_eq!(l.packages.len(), 12);
    }
}
