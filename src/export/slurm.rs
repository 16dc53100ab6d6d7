//! `export slurm`: a bash script that submits the nodes still to run as `sbatch --parsable` jobs, chained with
//! `--dependency=afterok` (or `aftercorr` for element-wise arrays), a stage's nodes that need the same upstream as
//! one job array whose tasks pick their node from a generated list.

use super::{Ctx, DepRef, Group, Req};
use crate::cli::Common;
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(clap::Args, Clone)]
pub struct Args {
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
    #[arg(long, short = 'p')]
    pub partition: Option<String>,
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

pub fn run(a: Args) -> anyhow::Result<()> {
    if a.max_array == 0 {
        anyhow::bail!("--max-array 0: an array holds at least one task");
    }
    if a.array_limit == Some(0) {
        anyhow::bail!("--array-limit 0: at least one task must be allowed to run");
    }
    let ctx = Ctx::load(&a.common, a.bin.as_deref(), None, false)?;
    let groups = super::group(&ctx.graph, a.max_array, true, true);
    let script = render(&ctx, &groups, &a)?;
    if !a.submit {
        if let Some(p) = &a.output {
            super::emit(&script, Some(p))?;
            make_executable(p)?;
            eprintln!("wrote {} ({} job(s) for {} node(s); {} cached)", p.display(), groups.len(), ctx.graph.nodes.len(), ctx.graph.cached);
        } else {
            super::emit(&script, None)?;
        }
        return Ok(());
    }
    submit(&ctx, &groups, &a, &script)
}

fn make_executable(p: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut perm = std::fs::metadata(p)?.permissions();
    perm.set_mode(perm.mode() | 0o111);
    std::fs::set_permissions(p, perm)?;
    Ok(())
}

/// Single-quotes a word for bash.
pub fn q(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+%".contains(c)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Slurm's `D-HH:MM:SS`.
fn slurm_time(secs: u64) -> String {
    let (d, rem) = (secs / 86400, secs % 86400);
    format!("{d}-{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

const EOF_MARK: &str = "RMDISTILL_JOB_SCRIPT";

fn render(ctx: &Ctx, groups: &[Group], a: &Args) -> anyhow::Result<String> {
    let g = &ctx.graph;
    let mut s = String::new();
    let manifest = ctx.manifest_file().display().to_string();
    writeln!(s, "#!/usr/bin/env bash")?;
    writeln!(s, "# Written by `rmdistill export slurm` for {manifest}.")?;
    writeln!(
        s,
        "# {} node(s): {} cached in {} (not submitted), {} to run as {} sbatch job(s).",
        g.total,
        g.cached,
        ctx.run.store,
        g.nodes.len(),
        groups.len()
    )?;
    writeln!(s, "# Every job runs `rmdistill node run`, which checks the store's cache first: re-running this script")?;
    writeln!(s, "# (or `rmdistill export slurm --submit` again) submits only what is still missing.")?;
    writeln!(s, "#")?;
    writeln!(s, "# job name -> node(s) (array task i runs the i-th):")?;
    for gr in groups {
        let first = &g.nodes[gr.nodes[0]].name;
        if gr.nodes.len() == 1 {
            writeln!(s, "#   {:<32} {first}", gr.name)?;
        } else {
            writeln!(s, "#   {:<32} {first} … {} ({} tasks)", gr.name, g.nodes[*gr.nodes.last().unwrap()].name, gr.nodes.len())?;
        }
    }
    writeln!(s, "set -euo pipefail")?;
    if groups.is_empty() {
        writeln!(s, "echo \"nothing to submit: all {} node(s) are cached\"", g.total)?;
        return Ok(s);
    }
    writeln!(s, "command -v sbatch >/dev/null || {{ echo 'error: sbatch is not on PATH (run this on a Slurm login node)' >&2; exit 3; }}")?;
    let logs = a.logs.clone().unwrap_or_else(|| ctx.run.workdir.join(".rmdistill/slurm"));
    let logs = if logs.is_absolute() { logs } else { ctx.run.workdir.join(logs) };
    writeln!(s, "LOGS=\"${{RMDISTILL_SLURM_LOGS:-{}}}\"", logs.display().to_string().replace(['"', '$', '`', '\\'], "_"))?;
    writeln!(s, "mkdir -p \"$LOGS\"")?;
    let mut common: Vec<String> = vec![format!("--chdir={}", ctx.run.workdir.display())];
    if let Some(p) = &a.partition {
        common.push(format!("--partition={p}"));
    }
    if let Some(acc) = &a.account {
        common.push(format!("--account={acc}"));
    }
    if a.kill_on_invalid_dep {
        common.push("--kill-on-invalid-dep=yes".into());
    }
    common.extend(a.sbatch_args.iter().cloned());
    writeln!(s, "COMMON=({})", common.iter().map(|c| q(c)).collect::<Vec<_>>().join(" "))?;
    writeln!(s, "SUBMITTED=()")?;
    writeln!(
        s,
        "trap 'echo \"error: submission stopped; submitted so far: ${{SUBMITTED[*]:-none}} (scancel them, fix the cause, and submit again)\" >&2' ERR"
    )?;
    writeln!(s, "# submit NAME SBATCH-OPTION... <<SCRIPT : submits, prints `job ID NAME`, sets JOB")?;
    writeln!(s, "submit() {{")?;
    writeln!(s, "    local name=$1; shift")?;
    writeln!(s, "    JOB=$(sbatch --parsable --job-name=\"$name\" \"${{COMMON[@]}}\" \"$@\")")?;
    writeln!(s, "    JOB=${{JOB%%;*}}")?;
    writeln!(s, "    SUBMITTED+=(\"$JOB\")")?;
    writeln!(s, "    echo \"job $JOB $name\"")?;
    writeln!(s, "}}")?;
    let tail: Vec<String> = ctx.run.tail_args().iter().map(|x| q(x)).collect();
    for (gi, gr) in groups.iter().enumerate() {
        let node0 = &g.nodes[gr.nodes[0]];
        let req = Req::of(&node0.resources)?;
        let mut opts = vec![format!("--cpus-per-task={}", req.cpus), format!("--mem={}M", req.mem_mib), format!("--time={}", slurm_time(req.seconds))];
        if req.gpus > 0 {
            opts.push(format!("--gres=gpu:{}", req.gpus));
        }
        let array = gr.nodes.len() > 1;
        if array {
            let limit = a.array_limit.map(|l| format!("%{l}")).unwrap_or_default();
            opts.push(format!("--array=0-{}{limit}", gr.nodes.len() - 1));
            opts.push("--output=\"$LOGS/%x-%A_%a.out\"".into());
        } else {
            opts.push("--output=\"$LOGS/%x-%j.out\"".into());
        }
        let mut after: Vec<String> = Vec::new();
        let mut corr: Vec<String> = Vec::new();
        for d in &gr.deps {
            match *d {
                DepRef::Whole(u) => after.push(format!("$J{u}")),
                DepRef::Task(u, k) => after.push(if groups[u].nodes.len() > 1 { format!("${{J{u}}}_{k}") } else { format!("$J{u}") }),
                DepRef::Corr(u) => corr.push(format!("$J{u}")),
            }
        }
        after.dedup();
        let mut dep = Vec::new();
        if !after.is_empty() {
            dep.push(format!("afterok:{}", after.join(":")));
        }
        if !corr.is_empty() {
            dep.push(format!("aftercorr:{}", corr.join(":")));
        }
        if !dep.is_empty() {
            opts.push(format!("--dependency=\"{}\"", dep.join(",")));
        }
        writeln!(s)?;
        writeln!(s, "submit {} {} <<'{EOF_MARK}'", q(&gr.name), opts.join(" "))?;
        writeln!(s, "#!/bin/bash")?;
        writeln!(s, "set -eu")?;
        let node_arg = if array {
            writeln!(s, "nodes=(")?;
            for &n in &gr.nodes {
                writeln!(s, "  {}", q(&g.nodes[n].name))?;
            }
            writeln!(s, ")")?;
            "\"${nodes[$SLURM_ARRAY_TASK_ID]}\"".to_string()
        } else {
            q(&node0.name)
        };
        writeln!(s, "exec {} node run {} {node_arg} {}", q(&ctx.run.bin), q(&ctx.run.manifest), tail.join(" "))?;
        writeln!(s, "{EOF_MARK}")?;
        writeln!(s, "J{gi}=$JOB")?;
    }
    Ok(s)
}

fn submit(ctx: &Ctx, groups: &[Group], a: &Args, script: &str) -> anyhow::Result<()> {
    let (path, _keep) = match &a.output {
        Some(p) => {
            super::emit(script, Some(p))?;
            make_executable(p)?;
            (p.clone(), None)
        }
        None => {
            let f = tempfile::Builder::new().prefix("rmdistill-slurm-").suffix(".sh").tempfile()?;
            std::fs::write(f.path(), script)?;
            (f.path().to_path_buf(), Some(f))
        }
    };
    let out = std::process::Command::new("bash")
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run bash for {}: {e}", path.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ids: Vec<(String, String)> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("job "))
        .filter_map(|l| l.split_once(' '))
        .map(|(id, name)| (id.to_string(), name.to_string()))
        .collect();
    if !out.status.success() {
        anyhow::bail!(
            "submission failed (exit {:?}) after {} of {} job(s): {}",
            out.status.code(),
            ids.len(),
            groups.len(),
            stderr.trim()
        );
    }
    if a.common.json {
        let jobs: Vec<serde_json::Value> = groups
            .iter()
            .zip(&ids)
            .map(|(gr, (id, name))| {
                serde_json::json!({"id": id, "name": name, "stage": gr.stage, "array": gr.nodes.len() > 1,
                    "nodes": gr.nodes.iter().map(|&n| ctx.graph.nodes[n].name.clone()).collect::<Vec<_>>()})
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"total": ctx.graph.total, "cached": ctx.graph.cached, "submitted": ctx.graph.nodes.len(), "jobs": jobs}))?
        );
    } else if groups.is_empty() {
        println!("nothing to submit: all {} node(s) are cached", ctx.graph.total);
    } else {
        for ((id, name), gr) in ids.iter().zip(groups) {
            println!("{id}\t{name}\t{} node(s)", gr.nodes.len());
        }
        eprintln!("submitted {} job(s) for {} node(s); {} cached", ids.len(), ctx.graph.nodes.len(), ctx.graph.cached);
    }
    Ok(())
}
