//! `export slurm`: a bash script that submits the nodes still to run as `sbatch --parsable` jobs, chained with
//! `--dependency=afterok` (or `aftercorr` for element-wise arrays), a stage's nodes that need the same upstream as
//! one job array whose tasks pick their node from a generated list.
//!
//! Re-submission while earlier jobs are still queued does not duplicate them. Every job carries an identity in its
//! `--comment`: `rmdistill:C:G`, C a hash of what its nodes mean (binary, manifest path, the text of the manifest and
//! of its pipeline, the nodes they resolve to, `--set`, store), G a hash of its node list, which the job script also
//! lists (`# rmdistill-tasks: [...]`). `--submit` asks `squeue` for this user's pending/running jobs with the same C,
//! reads their node lists (`scontrol write batch_script`), and leaves out every node that a live job will run, waiting
//! on that job (or array task) instead; the script itself (`export slurm` without `--submit`, run later, maybe twice)
//! checks `squeue` per job before each `sbatch` and reuses a live job with the same identity.

use super::{Ctx, DepRef, Group, Req, RunSpec, Source};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;

/// What `export slurm` is asked for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub source: Source,
    /// Submit now (runs the script with the sbatch on PATH) and print the job ids.
    pub submit: bool,
    /// Largest job array to submit; bigger groups are split.
    pub max_array: usize,
    /// At most this many tasks of one array run at once (`--array=0-K%LIMIT`).
    pub array_limit: Option<usize>,
    pub partition: Option<String>,
    pub account: Option<String>,
    /// Extra sbatch options for every job.
    pub sbatch_args: Vec<String>,
    /// Cancel jobs whose dependency can never be satisfied instead of leaving them pending.
    pub kill_on_invalid_dep: bool,
    /// Directory for the jobs' output files (default: .rmdistill/slurm in the working directory).
    pub logs: Option<PathBuf>,
    /// The rmdistill binary as compute nodes see it (default: this binary's absolute path).
    pub bin: Option<String>,
    /// Write the script here (made executable) instead of printing it.
    pub output: Option<PathBuf>,
}

pub fn run(a: Request) -> anyhow::Result<()> {
    if a.source.json && !a.submit {
        anyhow::bail!(
            "--json: without --submit, export slurm writes a bash script, not JSON; --json is for --submit's report \
             of the jobs it submitted"
        );
    }
    if a.max_array == 0 {
        anyhow::bail!("--max-array 0: an array holds at least one task");
    }
    if a.array_limit == Some(0) {
        anyhow::bail!("--array-limit 0: at least one task must be allowed to run");
    }
    // Ask Slurm what is queued before looking at the store: a job that finishes in between is then seen as cached
    // rather than as neither queued nor cached (which would submit it again).
    let rows = if a.submit { queued_rows() } else { Vec::new() };
    let mut ctx = Ctx::load(&a.source, a.bin.as_deref(), None, false)?;
    let ident = identity(&ctx);
    let live = live_nodes(&rows, &ident);
    if !live.nodes.is_empty() {
        ctx.graph = ctx.graph.without_in_flight(&live.nodes);
    }
    let groups = super::group(&ctx.graph, a.max_array, true, true);
    let script = render(&ctx, &groups, &a, &ident)?;
    if !a.submit {
        if let Some(p) = &a.output {
            super::emit(&script, Some(p))?;
            make_executable(p)?;
            eprintln!(
                "wrote {} ({} job(s) for {} node(s); {} cached)",
                p.display(),
                groups.len(),
                ctx.graph.nodes.len(),
                ctx.graph.cached
            );
        } else {
            super::emit(&script, None)?;
        }
        return Ok(());
    }
    submit(&ctx, &groups, &a, &script, &live)
}

/// The identity of what this export's jobs compute: the binary, the manifest's path, the text of every file the
/// manifest was read from (the manifest and the pipeline it names), what they resolve to (every node's stage, kind,
/// parameters, inputs and resources), `--set` and the store. Jobs of another manifest, version of it or of its
/// pipeline, or store are never reused.
fn identity(ctx: &Ctx) -> String {
    let mut h = blake3::Hasher::new();
    let mut part = |b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    part(b"rmdistill-slurm-v2");
    part(ctx.run.bin.as_bytes());
    part(ctx.run.manifest.as_bytes());
    part(ctx.run.store.as_bytes());
    part(&(ctx.run.sets.len() as u64).to_le_bytes());
    for x in &ctx.run.sets {
        part(x.as_bytes());
    }
    // The files as they were read and parsed for this export (not read again: what was planned is what is hashed).
    let sources = &ctx.plan.manifest.sources;
    part(&(sources.len() as u64).to_le_bytes());
    for src in sources {
        part(src.path.as_os_str().as_encoded_bytes());
        part(src.text.as_bytes());
    }
    let plan = &ctx.plan;
    part(&(plan.nodes.len() as u64).to_le_bytes());
    for n in &plan.nodes {
        let inputs: serde_json::Map<String, serde_json::Value> = n
            .inputs
            .iter()
            .map(|(slot, ups)| {
                let ups: Vec<String> =
                    ups.iter().map(|u| format!("{}.{}", plan.nodes[u.node].name, u.output)).collect();
                (slot.clone(), serde_json::json!(ups))
            })
            .collect();
        let r = &n.resources;
        let v = serde_json::json!({
            "name": n.name, "stage": n.stage, "kind": n.kind.kind(), "params": n.params, "inputs": inputs,
            "externals": n.externals.iter().map(|(k, p)| (k.clone(), p.display().to_string())).collect::<BTreeMap<_, _>>(),
            "resources": [r.cpus.to_string(), r.memory.clone(), r.gpus.to_string(), r.time.clone()],
        });
        part(crate::key::canonical(&v).as_bytes());
    }
    h.finalize().to_hex()[..12].to_string()
}

/// A job's `--comment`: the export's identity and a hash of the job's node list (in task order).
fn job_comment(ident: &str, nodes: &[&str]) -> String {
    let g = blake3::hash(serde_json::to_string(nodes).unwrap_or_default().as_bytes()).to_hex();
    format!("rmdistill:{ident}:{}", &g[..10])
}

/// States in which a job will still run (or is running): its nodes need not be submitted again.
const LIVE_STATES: &str = "PENDING,RUNNING,CONFIGURING,SUSPENDED";

/// One line of `squeue -r`: (array job id or job id, array task id, state, reason, name, comment, the dependencies it
/// still waits on).
type Row = (String, Option<u32>, String, String, String, String, String);

/// The script's `live_job IDENTITY`: the id of a pending or running job of this user's with that `--comment`, not one
/// that waits (transitively) on a job that will never run — Slurm marks only a failed job's direct dependents
/// DependencyNeverSatisfied. The script's side of [`live_nodes`], at whole-job level (squeue without `-r`).
const LIVE_JOB: &str = r#"# live_job IDENTITY: the id of this user's pending or running job with that --comment, if any
live_job() {
    command -v squeue >/dev/null || return 0
    local q
    q=$(squeue -h -u "$(id -un)" -t {LIVE_STATES} -o '%F|%r|%k|%E' 2>/dev/null) || return 0
    awk -F'|' -v c="$1" '
        { id[NR] = $1; k[NR] = $3; e[NR] = $4; if ($2 == "DependencyNeverSatisfied") doomed[$1] = 1 }
        function waits_on_doomed(d,   j) {
            while (match(d, /:[0-9]+/)) { j = substr(d, RSTART + 1, RLENGTH - 1); if (j in doomed) return 1; d = substr(d, RSTART + RLENGTH) }
            return 0
        }
        END {
            do { more = 0; for (i = 1; i <= NR; i++) if (!(id[i] in doomed) && waits_on_doomed(e[i])) { doomed[id[i]] = 1; more = 1 } } while (more)
            for (i = 1; i <= NR; i++) if (k[i] == c && !(id[i] in doomed)) { print id[i]; exit }
        }' <<<"$q"
}
"#;

/// This user's live rmdistill jobs, one row per (array) task; empty, with a warning, where squeue is absent or fails.
fn queued_rows() -> Vec<Row> {
    let user = std::process::Command::new("id").arg("-un").output().ok().filter(|o| o.status.success());
    let user = user
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_default();
    let mut c = std::process::Command::new("squeue");
    c.args(["-h", "-r", "-t", LIVE_STATES, "-o", "%F|%K|%T|%r|%E|%j|%k"]);
    if !user.is_empty() {
        c.args(["-u", &user]);
    }
    let out = match c.stdin(std::process::Stdio::null()).output() {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            eprintln!(
                "warning: squeue failed ({}); jobs still queued from an earlier submission are not detected and may be submitted again",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return Vec::new();
        }
        Err(e) => {
            eprintln!(
                "warning: cannot run squeue ({e}); jobs still queued from an earlier submission are not detected and may be submitted again"
            );
            return Vec::new();
        }
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let p: Vec<&str> = l.trim().splitn(7, '|').collect();
            if p.len() != 7 || !p[6].starts_with("rmdistill:") {
                return None;
            }
            Some((
                p[0].to_string(),
                p[1].parse().ok(),
                p[2].to_string(),
                p[3].to_string(),
                p[5].to_string(),
                p[6].to_string(),
                p[4].to_string(),
            ))
        })
        .collect()
}

/// Nodes that live jobs of this identity will run.
#[derive(Default)]
pub struct Live {
    /// node name → the job (or array task) id that runs it.
    pub nodes: HashMap<String, String>,
    /// job id → (job name, its nodes' names in task order).
    pub jobs: BTreeMap<String, (String, Vec<String>)>,
}

fn live_nodes(rows: &[Row], ident: &str) -> Live {
    let mut live = Live::default();
    let prefix = format!("rmdistill:{ident}:");
    // A task pending because an upstream failed will never run: its node is not in flight; nor is one that waits
    // on such a job (Slurm says DependencyNeverSatisfied only of the failed job's direct dependents).
    let doomed = doomed_tasks(rows);
    let mut rows: Vec<&Row> =
        rows.iter().filter(|r| r.5.starts_with(&prefix) && !doomed.contains(&task_id(r))).collect();
    rows.sort_by_key(|r| (r.0.parse::<u64>().unwrap_or(u64::MAX), r.0.clone(), r.1));
    let mut tasks_of: HashMap<String, Option<Vec<String>>> = HashMap::new();
    for (job, task, _, _, name, _, _) in rows {
        let tasks = tasks_of.entry(job.clone()).or_insert_with(|| job_tasks(job, *task));
        let Some(tasks) = tasks else { continue };
        let Some(node) = tasks.get(task.unwrap_or(0) as usize) else { continue };
        let id = match task {
            Some(k) => format!("{job}_{k}"),
            None => job.clone(),
        };
        if !live.nodes.contains_key(node) {
            live.nodes.insert(node.clone(), id);
            live.jobs.entry(job.clone()).or_insert_with(|| (name.clone(), tasks.clone()));
        }
    }
    live
}

/// A row's job or array task id (`12`, `13_4`).
fn task_id(r: &Row) -> String {
    r.1.map_or_else(|| r.0.clone(), |t| format!("{}_{t}", r.0))
}

/// The tasks that will never run: pending on a dependency never to be satisfied, or on a task that will never run
/// itself (Slurm says DependencyNeverSatisfied only of a failed job's direct dependents).
fn doomed_tasks(rows: &[Row]) -> HashSet<String> {
    let deps: Vec<Vec<(String, String)>> = rows.iter().map(|r| dependency_tasks(&r.6)).collect();
    // the doomed tasks (`12`, `13_4`), and the jobs that have one
    let mut doomed: HashSet<String> = HashSet::new();
    let mut jobs: HashSet<&str> = HashSet::new();
    // what a row waits on, by its dependencies: `12_3` one task; `12` or `12_*` every task of job 12, but under
    // `aftercorr` only the task of the row's own index
    let waits_on_doomed = |doomed: &HashSet<String>, jobs: &HashSet<&str>, r: &Row, deps: &[(String, String)]| {
        deps.iter().any(|(kind, dep)| {
            let (job, task) = dep.split_once('_').unwrap_or((dep.as_str(), "*"));
            match (task, kind.as_str(), r.1) {
                (t, _, _) if t != "*" => doomed.contains(dep) || doomed.contains(job),
                (_, "aftercorr", Some(t)) => doomed.contains(&format!("{job}_{t}")) || doomed.contains(job),
                _ => jobs.contains(job),
            }
        })
    };
    loop {
        let more: Vec<&Row> = rows
            .iter()
            .zip(&deps)
            .filter(|(r, d)| {
                !doomed.contains(&task_id(r))
                    && (r.3 == "DependencyNeverSatisfied" || waits_on_doomed(&doomed, &jobs, r, d))
            })
            .map(|(r, _)| r)
            .collect();
        if more.is_empty() {
            return doomed;
        }
        for r in more {
            doomed.insert(task_id(r));
            jobs.insert(&r.0);
        }
    }
}

/// The (dependency type, job or task) pairs of a dependency list as squeue's `%E` writes it
/// (`afterok:12(unfulfilled),aftercorr:13_*(unfulfilled),afterok:14_2:15` → (afterok, 12), (aftercorr, 13_*),
/// (afterok, 14_2), (afterok, 15)).
fn dependency_tasks(e: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    for part in e.split(',') {
        let mut it = part.split(':');
        let kind = it.next().unwrap_or_default().trim_start_matches(['?', '&']).to_string();
        for id in it {
            let id: String = id.chars().take_while(|c| c.is_ascii_digit() || *c == '_' || *c == '*').collect();
            if id.starts_with(|c: char| c.is_ascii_digit()) {
                out.push((kind.clone(), id));
            }
        }
    }
    out
}

/// The node list of a live job, from its batch script (`# rmdistill-tasks: [...]`).
fn job_tasks(job: &str, task: Option<u32>) -> Option<Vec<String>> {
    let mut ids = vec![job.to_string()];
    if let Some(k) = task {
        ids.push(format!("{job}_{k}"));
    }
    for id in ids {
        let Ok(o) = std::process::Command::new("scontrol")
            .args(["write", "batch_script", &id, "-"])
            .stdin(std::process::Stdio::null())
            .output()
        else {
            continue;
        };
        if !o.status.success() {
            continue;
        }
        let text = String::from_utf8_lossy(&o.stdout);
        if let Some(l) = text.lines().find_map(|l| l.strip_prefix(TASKS_MARK)) {
            return serde_json::from_str(l.trim()).ok();
        }
    }
    None
}

const TASKS_MARK: &str = "# rmdistill-tasks: ";

fn make_executable(p: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut perm = std::fs::metadata(p)?.permissions();
    perm.set_mode(perm.mode() | 0o111);
    std::fs::set_permissions(p, perm)?;
    Ok(())
}

/// Whether a word needs no quoting in a shell.
fn plain_word(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+%".contains(c))
}

/// Quotes a word for bash, always on one line: single quotes, or ANSI-C `$'…'` quoting with `\xHH` escapes where
/// the word holds control characters (a raw newline could end a here-document or a comment early).
pub fn q(s: &str) -> String {
    if plain_word(s) {
        return s.to_string();
    }
    if !s.chars().any(char::is_control) {
        return format!("'{}'", s.replace('\'', r"'\''"));
    }
    let mut out = String::from("$'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\x{b:02x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Quotes a word for POSIX `sh` (dash, busybox), which has no `$'…'`: single quotes, which may span lines.
pub fn q_sh(s: &str) -> String {
    if plain_word(s) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Text for a `#` comment line: control characters escaped, so that it stays one line.
fn comment(s: &str) -> String {
    s.chars().flat_map(|c| if c.is_control() { c.escape_debug().collect::<Vec<_>>() } else { vec![c] }).collect()
}

/// Slurm's `D-HH:MM:SS`.
fn slurm_time(secs: u64) -> String {
    let (d, rem) = (secs / 86400, secs % 86400);
    format!("{d}-{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

const EOF_MARK: &str = "RMDISTILL_JOB_SCRIPT";

fn render(ctx: &Ctx, groups: &[Group], a: &Request, ident: &str) -> anyhow::Result<String> {
    let g = &ctx.graph;
    let mut s = String::new();
    let manifest = comment(&ctx.manifest_file().display().to_string());
    writeln!(s, "#!/usr/bin/env bash")?;
    writeln!(s, "# Written by `rmdistill export slurm` for {manifest}.")?;
    writeln!(
        s,
        "# {} node(s): {} cached in {} (not submitted), {} to run as {} sbatch job(s).",
        g.total,
        g.cached,
        comment(&ctx.run.store),
        g.nodes.len(),
        groups.len()
    )?;
    writeln!(
        s,
        "# Every job runs `rmdistill node run`, which checks the store's cache first, so a job whose nodes are"
    )?;
    writeln!(
        s,
        "# stored meanwhile ends at once. This script is fixed at export: run again, it submits its jobs again"
    )?;
    writeln!(
        s,
        "# (less those still queued); `rmdistill export slurm --submit` again submits only what is still missing."
    )?;
    if !g.in_flight.is_empty() {
        let mut jobs: Vec<&str> = g.in_flight.iter().map(|(_, id)| id.split('_').next().unwrap_or(id)).collect();
        jobs.dedup();
        writeln!(
            s,
            "# {} more node(s) are already queued or running in live job(s) {} (reused, not submitted again).",
            g.in_flight.len(),
            jobs.join(", ")
        )?;
    }
    writeln!(
        s,
        "# A job whose identity (--comment) matches one of this user's pending or running jobs is not submitted again:"
    )?;
    writeln!(s, "# the live job's id stands in for it.")?;
    writeln!(s, "#")?;
    writeln!(s, "# job name -> node(s) (array task i runs the i-th):")?;
    for gr in groups {
        let first = comment(&g.nodes[gr.nodes[0]].name);
        if gr.nodes.len() == 1 {
            writeln!(s, "#   {:<32} {first}", comment(&gr.name))?;
        } else {
            writeln!(
                s,
                "#   {:<32} {first} … {} ({} tasks)",
                comment(&gr.name),
                comment(&g.nodes[*gr.nodes.last().unwrap()].name),
                gr.nodes.len()
            )?;
        }
    }
    // -E: the ERR trap that names the jobs submitted so far fires inside `submit` too
    writeln!(s, "set -Eeuo pipefail")?;
    if groups.is_empty() {
        if g.in_flight.is_empty() {
            writeln!(s, "echo \"nothing to submit: all {} node(s) are cached\"", g.total)?;
        } else {
            writeln!(
                s,
                "echo \"nothing to submit: {} node(s) cached, {} already queued\"",
                g.cached,
                g.in_flight.len()
            )?;
        }
        return Ok(s);
    }
    writeln!(
        s,
        "command -v sbatch >/dev/null || {{ echo 'error: sbatch is not on PATH (run this on a Slurm login node)' >&2; exit 3; }}"
    )?;
    let logs = a.logs.clone().unwrap_or_else(|| ctx.run.workdir.join(".rmdistill/slurm"));
    let logs = if logs.is_absolute() { logs } else { ctx.run.workdir.join(logs) };
    let logs = logs.display().to_string();
    if logs.contains('\\') {
        return Err(crate::error::Invalid(format!(
            "log directory {}: sbatch reads a backslash in --output as \"expand nothing\" and drops it, so the \
             jobs' output would land elsewhere; choose a directory without `\\` (--logs)",
            crate::error::quoted(&logs)
        ))
        .into());
    }
    writeln!(s, "LOGS=${{RMDISTILL_SLURM_LOGS:-}}")?;
    writeln!(s, "[[ -n $LOGS ]] || LOGS={}", q(&logs))?;
    // a relative RMDISTILL_SLURM_LOGS is taken against the jobs' --chdir, as sbatch takes --output (made here, the
    // directory would be missing there and the jobs would fail to start, leaving no log)
    writeln!(s, "[[ $LOGS == /* ]] || LOGS={}/$LOGS", q(&ctx.run.workdir.display().to_string()))?;
    writeln!(
        s,
        "[[ $LOGS != *\\\\* ]] || {{ echo \"error: log directory $LOGS has a backslash, which sbatch's --output cannot carry; choose another (RMDISTILL_SLURM_LOGS or --logs)\" >&2; exit 3; }}"
    )?;
    writeln!(s, "mkdir -p -- \"$LOGS\"")?;
    writeln!(s, "# --output is a pattern for sbatch (%j, %x, …): the directory's own `%` are written `%%`")?;
    writeln!(s, "OUT=${{LOGS//[%]/%%}}")?;
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
        "trap '[[ $BASHPID == \"$$\" ]] && echo \"error: submission stopped; submitted so far: ${{SUBMITTED[*]:-none}} (scancel them, fix the cause, and submit again)\" >&2' ERR"
    )?;
    s.push_str(&LIVE_JOB.replace("{LIVE_STATES}", LIVE_STATES));
    writeln!(
        s,
        "# submit NAME IDENTITY MAY-REUSE SBATCH-OPTION... <<SCRIPT : submits, or where MAY-REUSE is 1 (every job it"
    )?;
    writeln!(
        s,
        "# waits on was reused too) finds the live job with that identity; prints `job ID NAME` (or `reuse ID NAME`),"
    )?;
    writeln!(s, "# sets JOB and REUSED")?;
    writeln!(s, "submit() {{")?;
    writeln!(s, "    local name=$1 ident=$2 may=$3; shift 3")?;
    writeln!(s, "    REUSED=0")?;
    writeln!(s, "    if (( may )); then JOB=$(live_job \"$ident\"); else JOB=; fi")?;
    writeln!(s, "    if [[ -n $JOB ]]; then REUSED=1; echo \"reuse $JOB $name\"; return; fi")?;
    writeln!(s, "    JOB=$(sbatch --parsable --job-name=\"$name\" --comment=\"$ident\" \"${{COMMON[@]}}\" \"$@\")")?;
    writeln!(s, "    JOB=${{JOB%%;*}}")?;
    writeln!(s, "    SUBMITTED+=(\"$JOB\")")?;
    writeln!(s, "    echo \"job $JOB $name\"")?;
    writeln!(s, "}}")?;
    for (gi, gr) in groups.iter().enumerate() {
        let node0 = &g.nodes[gr.nodes[0]];
        let req = Req::of(&node0.resources)?;
        let mut opts = vec![
            format!("--cpus-per-task={}", req.cpus),
            format!("--mem={}M", req.mem_mib),
            format!("--time={}", slurm_time(req.seconds)),
        ];
        if req.gpus > 0 {
            opts.push(format!("--gres=gpu:{}", req.gpus));
        }
        let array = gr.nodes.len() > 1;
        if array {
            let limit = a.array_limit.map(|l| format!("%{l}")).unwrap_or_default();
            opts.push(format!("--array=0-{}{limit}", gr.nodes.len() - 1));
            opts.push("--output=\"$OUT/%x-%A_%a.out\"".into());
        } else {
            opts.push("--output=\"$OUT/%x-%j.out\"".into());
        }
        let mut after: Vec<String> = gr.after.clone();
        let mut corr: Vec<String> = Vec::new();
        for d in &gr.deps {
            match *d {
                DepRef::Whole(u) => after.push(format!("$J{u}")),
                DepRef::Task(u, k) => {
                    after.push(if groups[u].nodes.len() > 1 { format!("${{J{u}}}_{k}") } else { format!("$J{u}") })
                }
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
        let names: Vec<&str> = gr.nodes.iter().map(|&n| g.nodes[n].name.as_str()).collect();
        // A live job with the same nodes waits on the jobs it was submitted after: reuse it only where those were
        // reused too (and where it waits on no job found queued before rendering).
        let mut ups: Vec<usize> = gr.deps.iter().map(|d| d.group()).collect();
        ups.sort();
        ups.dedup();
        let may = if !gr.after.is_empty() {
            "0".to_string()
        } else if ups.is_empty() {
            "1".to_string()
        } else {
            format!("\"$(( {} ))\"", ups.iter().map(|u| format!("R{u}")).collect::<Vec<_>>().join(" * "))
        };
        writeln!(s, "submit {} {} {may} {} <<'{EOF_MARK}'", q(&gr.name), job_comment(ident, &names), opts.join(" "))?;
        // The job script, as a quoted here-document: nothing in it is expanded by the submitting shell.
        let body = job_script(&ctx.run, &names)?;
        // Every word is quoted onto one line, so no line can be the end marker; checked all the same.
        if body.lines().any(|l| l == EOF_MARK) {
            anyhow::bail!("internal error: a job script line equals the here-document marker {EOF_MARK}");
        }
        s.push_str(&body);
        writeln!(s, "{EOF_MARK}")?;
        writeln!(s, "J{gi}=$JOB R{gi}=$REUSED")?;
    }
    Ok(s)
}

/// The script of the job that runs `names`: `node run` for the node, or for an array job (more than one node) for the
/// `SLURM_ARRAY_TASK_ID`-th of them. Every word is quoted for bash onto one line.
pub fn job_script(run: &RunSpec, names: &[&str]) -> anyhow::Result<String> {
    let mut body = String::new();
    writeln!(body, "#!/bin/bash")?;
    writeln!(body, "{TASKS_MARK}{}", serde_json::to_string(names)?)?;
    writeln!(body, "set -eu")?;
    let node_arg = match names {
        [one] => q(one),
        _ => {
            writeln!(body, "nodes=(")?;
            for n in names {
                writeln!(body, "  {}", q(n))?;
            }
            writeln!(body, ")")?;
            "\"${nodes[$SLURM_ARRAY_TASK_ID]}\"".to_string()
        }
    };
    // `node run`'s options, then `--`, then the manifest and the node: nothing from the manifest is read as an option.
    let head: Vec<String> = run.args_before_node().iter().map(|x| q(x)).collect();
    writeln!(body, "exec {} {} {node_arg}", q(&run.bin), head.join(" "))?;
    Ok(body)
}

fn submit(ctx: &Ctx, groups: &[Group], a: &Request, script: &str, live: &Live) -> anyhow::Result<()> {
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
    // (id, name, reused) per group, in order: `job ID NAME` submitted, `reuse ID NAME` a live job with its identity.
    let ids: Vec<(String, String, bool)> = stdout
        .lines()
        .filter_map(|l| {
            l.strip_prefix("job ").map(|r| (r, false)).or_else(|| l.strip_prefix("reuse ").map(|r| (r, true)))
        })
        .filter_map(|(l, reused)| l.split_once(' ').map(|(id, name)| (id.to_string(), name.to_string(), reused)))
        .collect();
    if !out.status.success() {
        use std::os::unix::process::ExitStatusExt;
        let how = match (out.status.code(), out.status.signal()) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(s)) => format!("killed by {}", crate::worker::signal_name(s)),
            _ => "an unknown status".into(),
        };
        // the manifest and the options were fine: the scheduler refused (exit 1, as a failed node)
        return Err(crate::error::RunFailed(format!(
            "submission failed ({how}) after {} of {} job(s): {}",
            ids.len(),
            groups.len(),
            stderr.trim()
        ))
        .into());
    }
    let names = |gr: &Group| gr.nodes.iter().map(|&n| ctx.graph.nodes[n].name.clone()).collect::<Vec<_>>();
    // Live jobs relied on: those found before rendering (their nodes were left out), then whole groups the script
    // found queued.
    let mut reused: Vec<(String, String, Vec<String>)> = Vec::new();
    for (job, (name, _)) in &live.jobs {
        let nodes: Vec<String> = ctx
            .graph
            .in_flight
            .iter()
            .filter(|(_, id)| id == job || id.starts_with(&format!("{job}_")))
            .map(|(n, _)| n.clone())
            .collect();
        if !nodes.is_empty() {
            reused.push((job.clone(), name.clone(), nodes));
        }
    }
    for ((id, name, _), gr) in ids.iter().zip(groups).filter(|((_, _, r), _)| *r) {
        reused.push((id.clone(), name.clone(), names(gr)));
    }
    let submitted: usize = ids.iter().zip(groups).filter(|((_, _, r), _)| !r).map(|(_, gr)| gr.nodes.len()).sum();
    let in_flight: usize = reused.iter().map(|r| r.2.len()).sum();
    if a.source.json {
        let jobs: Vec<serde_json::Value> = groups
            .iter()
            .zip(&ids)
            .map(|(gr, (id, name, r))| {
                serde_json::json!({"id": id, "name": name, "stage": gr.stage, "array": gr.nodes.len() > 1, "reused": r, "nodes": names(gr)})
            })
            .collect();
        let reused: Vec<serde_json::Value> = reused
            .iter()
            .map(|(id, name, nodes)| serde_json::json!({"id": id, "name": name, "nodes": nodes}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"total": ctx.graph.total, "cached": ctx.graph.cached, "submitted": submitted,
                "in_flight": in_flight, "jobs": jobs, "reused": reused})
            )?
        );
    } else {
        for (id, name, nodes) in &reused {
            println!("{id}\t{name}\treused: {} node(s) already queued or running", nodes.len());
        }
        for ((id, name, _), gr) in ids.iter().zip(groups).filter(|((_, _, r), _)| !r) {
            println!("{id}\t{name}\t{} node(s)", gr.nodes.len());
        }
        if submitted == 0 && in_flight == 0 {
            println!("nothing to submit: all {} node(s) are cached", ctx.graph.total);
        } else {
            eprintln!(
                "submitted {} job(s) for {submitted} node(s); reused {} live job(s) for {in_flight} node(s); {} cached",
                ids.iter().filter(|x| !x.2).count(),
                reused.len(),
                ctx.graph.cached
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(job: &str, task: Option<u32>, reason: &str, deps: &str) -> Row {
        (job.into(), task, "PENDING".into(), reason.into(), "n".into(), "rmdistill:x:y".into(), deps.into())
    }

    /// Slurm marks only a failed job's direct dependents DependencyNeverSatisfied: what waits on them is doomed too,
    /// task by task where the dependency names a task or is element-wise (`aftercorr`).
    #[test]
    fn tasks_waiting_on_a_task_that_will_never_run_will_never_run() {
        let rows = vec![
            row("100", Some(0), "Dependency", "afterok:99(unfulfilled)"),
            row("100", Some(1), "DependencyNeverSatisfied", "afterok:99_1(failed)"),
            // element-wise on 100: only task 1 is doomed
            row("101", Some(0), "Dependency", "aftercorr:100_*(unfulfilled)"),
            row("101", Some(1), "Dependency", "aftercorr:100_*(unfulfilled)"),
            // on 101's healthy task 0 (not doomed), on all of 101 (doomed), and on 103 (doomed through it)
            row("102", None, "Dependency", "afterok:101_0(unfulfilled)"),
            row("103", None, "Dependency", "afterok:101(unfulfilled)"),
            row("104", None, "Dependency", "afterok:103(unfulfilled),afterok:98"),
        ];
        let doomed = doomed_tasks(&rows);
        let mut got: Vec<&str> = doomed.iter().map(String::as_str).collect();
        got.sort();
        assert_eq!(got, ["100_1", "101_1", "103", "104"]);
        assert_eq!(
            dependency_tasks("afterok:12(unfulfilled),aftercorr:13_*(unfulfilled),afterok:14_2:15"),
            [("afterok", "12"), ("aftercorr", "13_*"), ("afterok", "14_2"), ("afterok", "15")]
                .map(|(k, j)| (k.to_string(), j.to_string()))
        );
    }
}
