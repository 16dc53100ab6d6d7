//! Manifests and pipelines: strict TOML parsing with source positions, and the merge of a manifest over the
//! pipeline it instantiates. Expansion into nodes lives in `plan`.
//!
//! A pipeline file declares `[vars]` and `[stages.NAME]`; a manifest names a `pipeline`, overrides some of its
//! vars, may add stages, and says where the store is (`[store]`) and how to execute (`[execution]`). Both are TOML
//! and both reject unknown keys. Nothing in a manifest is ever executed by a shell.

use crate::error::ManifestError;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// The text of one TOML file, kept so that any later error can name its line and column.
#[derive(Debug)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    pub fn error(&self, span: Range<usize>, message: impl Into<String>) -> ManifestError {
        ManifestError::at(&self.path, &self.text, span.start, message)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    pipeline: Option<Spanned<String>>,
    description: Option<String>,
    #[serde(default)]
    vars: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    stages: BTreeMap<Spanned<String>, Spanned<StageDecl>>,
    store: Option<Spanned<StoreDecl>>,
    execution: Option<Spanned<ExecutionDecl>>,
}

/// One stage of a pipeline as written.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct StageDecl {
    pub kind: Spanned<String>,
    pub description: Option<String>,
    /// Input slot → `"stage.output"`, or a list of them for slots that take many artifacts.
    #[serde(default)]
    pub inputs: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    /// Sweep axis → list of values (or `"${var}"` naming a list).
    #[serde(default)]
    pub sweep: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(default)]
    pub params: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(default)]
    pub resources: Resources,
}

/// What one node of a stage needs from a machine; exporters turn it into scheduler requests.
#[derive(Debug, Deserialize, Clone, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    pub cpus: u32,
    /// Memory, e.g. "4G".
    pub memory: String,
    pub gpus: u32,
    /// Wall-time limit, e.g. "2h" or "30m".
    pub time: String,
}

impl Default for Resources {
    fn default() -> Self {
        Resources { cpus: 1, memory: "4G".into(), gpus: 0, time: "1h".into() }
    }
}

#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct StoreDecl {
    /// An object_store URL: `file://…` (relative paths are relative to the working directory), `memory://`,
    /// `s3://bucket/prefix`, `gs://…`, `az://…`.
    pub url: Option<String>,
}

#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct ExecutionDecl {
    /// Nodes run at once on CPU.
    pub jobs: Option<usize>,
    /// `auto`, `cpu` or `cuda`.
    pub device: Option<String>,
}

/// A stage with the file it was declared in.
#[derive(Debug, Clone)]
pub struct DeclaredStage {
    pub name: String,
    pub name_span: Range<usize>,
    pub span: Range<usize>,
    pub decl: StageDecl,
    /// Index into `Manifest::sources`.
    pub source: usize,
}

/// A variable with where its value was written.
#[derive(Debug, Clone)]
pub struct Var {
    pub value: toml::Value,
    pub span: Range<usize>,
    pub source: usize,
}

/// A manifest merged over its pipeline: everything `plan` needs, with positions.
#[derive(Debug)]
pub struct Manifest {
    /// `sources[0]` is the manifest itself; `sources[1]`, if any, its pipeline.
    pub sources: Vec<Source>,
    pub description: Option<String>,
    pub vars: BTreeMap<String, Var>,
    pub stages: Vec<DeclaredStage>,
    pub store_url: Option<String>,
    pub execution: ExecutionDecl,
}

impl Manifest {
    /// Directory that relative data paths in the manifest are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        self.sources[0].path.parent().map(Path::to_path_buf).unwrap_or_default()
    }
    pub fn path(&self) -> &Path {
        &self.sources[0].path
    }
}

fn read_source(path: &Path) -> anyhow::Result<Source> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read manifest {}: {e}", path.display()))?;
    Ok(Source { path: path.to_path_buf(), text })
}

fn parse_doc(src: &Source) -> Result<FileDoc, ManifestError> {
    toml::from_str::<FileDoc>(&src.text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        src.error(span, e.message().trim().to_string())
    })
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Reads a manifest (and the pipeline it names), merges them and applies `--set name=value` overrides.
pub fn load(path: &Path, sets: &[String]) -> anyhow::Result<Manifest> {
    let top = read_source(path)?;
    let doc = parse_doc(&top)?;
    let mut sources = vec![top];
    let mut vars = BTreeMap::new();
    let mut stages = Vec::new();

    let add_stages = |stages: &mut Vec<DeclaredStage>,
                      sources: &[Source],
                      decls: BTreeMap<Spanned<String>, Spanned<StageDecl>>,
                      source: usize|
     -> Result<(), ManifestError> {
        for (name, decl) in decls {
            let src = &sources[source];
            if !valid_name(name.get_ref()) {
                return Err(src.error(
                    name.span(),
                    format!("stage name `{}` may use only letters, digits, `_` and `-`", name.get_ref()),
                ));
            }
            if let Some(prev) = stages.iter().find(|s: &&DeclaredStage| s.name == *name.get_ref()) {
                let (l, c) = crate::error::line_col(&sources[prev.source].text, prev.name_span.start);
                return Err(src.error(
                    name.span(),
                    format!(
                        "duplicate stage `{}` (already declared at {}:{l}:{c})",
                        name.get_ref(),
                        sources[prev.source].path.display()
                    ),
                ));
            }
            stages.push(DeclaredStage {
                name: name.get_ref().clone(),
                name_span: name.span(),
                span: decl.span(),
                decl: decl.into_inner(),
                source,
            });
        }
        Ok(())
    };

    if let Some(p) = &doc.pipeline {
        let ppath = sources[0].path.parent().unwrap_or(Path::new(".")).join(p.get_ref());
        let psrc = read_source(&ppath).map_err(|e| sources[0].error(p.span(), format!("{e}")))?;
        let pdoc = parse_doc(&psrc)?;
        if let Some(pp) = &pdoc.pipeline {
            return Err(psrc.error(pp.span(), "a pipeline cannot name another pipeline").into());
        }
        if let Some(s) = &pdoc.store {
            return Err(psrc.error(s.span(), "[store] belongs in a manifest, not in a pipeline").into());
        }
        sources.push(psrc);
        for (k, v) in pdoc.vars {
            vars.insert(k, Var { span: v.span(), value: v.into_inner(), source: 1 });
        }
        add_stages(&mut stages, &sources, pdoc.stages, 1)?;
        for (k, v) in doc.vars {
            if !vars.contains_key(&k) {
                let known: Vec<_> = vars.keys().cloned().collect();
                return Err(sources[0]
                    .error(
                        v.span(),
                        format!(
                            "pipeline {} declares no variable `{k}` (it declares: {})",
                            sources[1].path.display(),
                            known.join(", ")
                        ),
                    )
                    .into());
            }
            vars.insert(k, Var { span: v.span(), value: v.into_inner(), source: 0 });
        }
    } else {
        for (k, v) in doc.vars {
            vars.insert(k, Var { span: v.span(), value: v.into_inner(), source: 0 });
        }
    }
    add_stages(&mut stages, &sources, doc.stages, 0)?;
    if stages.is_empty() {
        return Err(sources[0]
            .error(0..0, "the manifest declares no stages (add [stages.NAME] or a `pipeline = \"…\"`)")
            .into());
    }

    for set in sets {
        let (k, v) = set.split_once('=').ok_or_else(|| anyhow::anyhow!("--set {set}: expected NAME=VALUE"))?;
        let Some(var) = vars.get_mut(k) else {
            anyhow::bail!(
                "--set {set}: the manifest declares no variable `{k}` (known: {})",
                vars.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        };
        // A value is read as TOML (numbers, lists, booleans), falling back to a plain string.
        var.value = toml::from_str::<toml::Table>(&format!("v = {v}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(v.to_string()));
    }

    Ok(Manifest {
        store_url: doc.store.and_then(|s| s.into_inner().url),
        execution: doc.execution.map(|e| e.into_inner()).unwrap_or_default(),
        description: doc.description,
        sources,
        vars,
        stages,
    })
}

/// TOML value → JSON value (datetimes become strings).
pub fn to_json(v: &toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.iter().map(to_json).collect()),
        toml::Value::Table(t) => J::Object(t.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
    }
}
