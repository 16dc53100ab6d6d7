//! Exporters: a manifest's DAG as a real batch scheduler's jobs. Every job runs `rmdistill node run` against the
//! shared store, which checks the cache first, so any scheduler may retry any job, and a job that a scheduler starts
//! too early exits with code 4 (upstream not stored yet) without doing anything.
//!
//! The shared part lives here: the graph of nodes still to run (cached nodes are resolved against the store before
//! anything is emitted, and dependencies on them are dropped), grouping of a stage's nodes into array jobs, names that
//! schedulers accept, and resource requests (parsed by [`crate::units`]). Each scheduler's rendering lives in its own
//! file under `export/`. Exporters take plain requests ([`Source`] and each one's `Request`); only `cli.rs` knows how
//! they are spelt on the command line. Every value they write into a script or document is quoted for what reads it,
//! or refused where the scheduler offers no quoting, and every command ends `node run`'s options with `--` before
//! the manifest and the node, so that no name is read as an option (see `tests/export_injection.rs`).

pub mod argo;
pub mod aws;
pub mod slurm;

use crate::manifest::Resources;
use crate::plan::Plan;
use crate::store::Store;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// What every export reads: the manifest, `--set` overrides and the store URL, as `run` takes them. Exporters take
/// plain requests like this one; only the command line knows how they were spelt.
#[derive(Debug, Clone, Default)]
pub struct Source {
    pub manifest: PathBuf,
    pub sets: Vec<String>,
    /// `--store`, overriding RMDISTILL_STORE and the manifest's `[store] url`.
    pub store: Option<String>,
    /// Machine-readable output where the exporter prints a report (`export slurm --submit`).
    pub json: bool,
}

/// One node still to run.
#[derive(Debug, Clone)]
pub struct GNode {
    /// The node's name in the plan (`stage@axis=value,…`): what `node run` takes.
    pub name: String,
    pub stage: String,
    pub resources: Resources,
    /// Indices (into `Graph::nodes`) of the nodes still to run that this one reads from; cached upstream is dropped.
    pub deps: Vec<usize>,
    /// Ids of live scheduler jobs (already queued or running) that will produce upstream nodes of this one: see
    /// [`Graph::without_in_flight`]. Empty unless an exporter asked its scheduler what is queued.
    pub after: Vec<String>,
}

/// The nodes of a plan that are not cached in the store, in topological order.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub nodes: Vec<GNode>,
    /// Nodes in the plan, and how many of them are cached (not exported).
    pub total: usize,
    pub cached: usize,
    /// Nodes not cached but left out because a live scheduler job will run them: (node, job id).
    pub in_flight: Vec<(String, String)>,
}

impl Graph {
    /// Resolves cache hits against the store: cached nodes are left out, and so are dependencies on them.
    pub fn from_plan(plan: &Plan, store: &Store) -> anyhow::Result<Graph> {
        let status = crate::exec::status(plan, store)?;
        let mut index = vec![None; plan.nodes.len()];
        let mut nodes = Vec::new();
        for (i, (n, st)) in plan.nodes.iter().zip(&status).enumerate() {
            if st.state == "cached" {
                continue;
            }
            check_name(&n.name)?;
            let deps: BTreeSet<usize> = n.deps().filter_map(|d| index[d]).collect();
            index[i] = Some(nodes.len());
            nodes.push(GNode {
                name: n.name.clone(),
                stage: n.stage.clone(),
                resources: n.resources.clone(),
                deps: deps.into_iter().collect(),
                after: vec![],
            });
        }
        let g = Graph { cached: plan.nodes.len() - nodes.len(), total: plan.nodes.len(), nodes, in_flight: vec![] };
        for n in &g.nodes {
            Req::of(&n.resources)
                .map_err(|e| anyhow::anyhow!("{}: stage `{}`: {e}", plan.manifest.path().display(), n.stage))?;
        }
        Ok(g)
    }
}

impl Graph {
    /// The graph without the nodes that live scheduler jobs will already run (`live`: node name → job id, e.g.
    /// `123_4` for an array task). A node counts as in flight when a live job covers it and every upstream node still
    /// to run is in flight too (otherwise its job may wait on something that never comes); it is left out and listed
    /// in `in_flight`, and the nodes that read it wait on that job id (`GNode::after`) instead.
    pub fn without_in_flight(&self, live: &HashMap<String, String>) -> Graph {
        let mut flying = vec![false; self.nodes.len()];
        let mut index = vec![usize::MAX; self.nodes.len()];
        let mut nodes = Vec::new();
        let mut in_flight = self.in_flight.clone();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(id) = live.get(&n.name)
                && n.deps.iter().all(|&d| flying[d])
            {
                flying[i] = true;
                in_flight.push((n.name.clone(), id.clone()));
                continue;
            }
            let mut after: BTreeSet<String> = n.after.iter().cloned().collect();
            let mut deps = Vec::new();
            for &d in &n.deps {
                if flying[d] {
                    after.insert(live[&self.nodes[d].name].clone());
                } else {
                    deps.push(index[d]);
                }
            }
            index[i] = nodes.len();
            nodes.push(GNode { deps, after: after.into_iter().collect(), ..n.clone() });
        }
        Graph { nodes, total: self.total, cached: self.cached, in_flight }
    }
}

/// Refuses to export a value the target scheduler would read as its own syntax (`marker`: Argo's `{{`, AWS Batch's
/// `Ref::`), which it offers no way to escape: passed on, it would change what a job runs.
pub fn refuse_marker(ctx: &Ctx, extra: &[(&str, &str)], marker: &str, scheduler: &str) -> anyhow::Result<()> {
    let mut fields: Vec<(String, &str)> = vec![
        ("the rmdistill binary (--bin)".into(), ctx.run.bin.as_str()),
        ("the manifest path".into(), ctx.run.manifest.as_str()),
        ("the store url".into(), ctx.run.store.as_str()),
    ];
    fields.extend(ctx.run.sets.iter().map(|x| ("--set".to_string(), x.as_str())));
    fields.extend(ctx.graph.nodes.iter().map(|n| ("node name".to_string(), n.name.as_str())));
    fields.extend(extra.iter().map(|(f, v)| (f.to_string(), *v)));
    for (field, v) in fields {
        if v.contains(marker) {
            return Err(crate::error::Invalid(format!(
                "{field} \"{}\" contains `{marker}`, which {scheduler} would replace with something else; it cannot \
                 be escaped there, so rename it",
                v.escape_debug()
            ))
            .into());
        }
    }
    Ok(())
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if name.chars().any(|c| c.is_control()) {
        anyhow::bail!(
            "node `{}` has a control character in its name (from a sweep value); schedulers cannot carry it",
            name.escape_debug()
        );
    }
    Ok(())
}

/// A dependency of a group on (part of) another group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum DepRef {
    /// Every node of that group.
    Whole(usize),
    /// One node of that group, by its index in the group (an array task).
    Task(usize, usize),
    /// Element-wise: node i of this group needs node i of that group, and nothing else of it.
    Corr(usize),
}

impl DepRef {
    pub fn group(&self) -> usize {
        match *self {
            DepRef::Whole(g) | DepRef::Task(g, _) | DepRef::Corr(g) => g,
        }
    }
}

/// Nodes of one stage submitted as one job (an array job when there is more than one).
#[derive(Debug, Clone)]
pub struct Group {
    pub stage: String,
    /// Indices into `Graph::nodes`; the array task `i` runs `nodes[i]`.
    pub nodes: Vec<usize>,
    pub deps: Vec<DepRef>,
    /// Ids of live scheduler jobs this group waits on as well (the same for all its nodes).
    pub after: Vec<String>,
    /// A scheduler-safe name (DNS-1123 label), unique among the groups.
    pub name: String,
}

/// Groups the graph's nodes into jobs: the nodes of one stage that need the same upstream nodes form one array (split
/// into arrays of at most `max_array`); with `elementwise`, a stage whose node i needs exactly node i of one upstream
/// array (and otherwise the same nodes) forms an array that depends on it element-wise. Groups are in topological
/// order. Without `task_deps` (schedulers that cannot wait for one task of an array), a dependency on part of an
/// array counts as one on the whole array, and nodes are grouped by the arrays they wait for.
pub fn group(g: &Graph, max_array: usize, elementwise: bool, task_deps: bool) -> Vec<Group> {
    let max_array = max_array.max(1);
    let mut groups: Vec<Group> = Vec::new();
    let mut at: Vec<(usize, usize)> = vec![(usize::MAX, 0); g.nodes.len()]; // node → (group, index)
    let mut stages: Vec<&str> = Vec::new();
    let mut by_stage: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        if !by_stage.contains_key(n.stage.as_str()) {
            stages.push(&n.stage);
        }
        by_stage.entry(&n.stage).or_default().push(i);
    }
    for stage in stages {
        let nodes = &by_stage[stage];
        let mut rest: Vec<usize> = nodes.clone();
        let mut new: Vec<Proto> = Vec::new();
        if elementwise {
            let (corr, left) = elementwise_groups(g, nodes, &groups, &at);
            new.extend(corr);
            rest = left;
        }
        // By identical upstream sets, in order of first appearance.
        let mut order: Vec<(Vec<usize>, Vec<String>)> = Vec::new();
        let mut members: HashMap<(Vec<usize>, Vec<String>), Vec<usize>> = HashMap::new();
        for &i in &rest {
            let deps: Vec<usize> = if task_deps {
                g.nodes[i].deps.clone()
            } else {
                g.nodes[i].deps.iter().map(|&d| at[d].0).collect::<BTreeSet<_>>().into_iter().collect()
            };
            let key = (deps, g.nodes[i].after.clone());
            if !members.contains_key(&key) {
                order.push(key.clone());
            }
            members.entry(key).or_default().push(i);
        }
        for key in order {
            let refs = if task_deps {
                dep_refs(&key.0, &groups, &at)
            } else {
                key.0.iter().map(|&u| DepRef::Whole(u)).collect()
            };
            for chunk in members[&key].chunks(max_array) {
                new.push((chunk.to_vec(), refs.clone()));
            }
        }
        new.sort_by_key(|(n, _)| n[0]);
        for (nodes, deps) in new {
            let gi = groups.len();
            for (k, &n) in nodes.iter().enumerate() {
                at[n] = (gi, k);
            }
            let after = g.nodes[nodes[0]].after.clone();
            groups.push(Group { stage: stage.to_string(), nodes, deps, after, name: String::new() });
        }
    }
    name_groups(g, &mut groups);
    groups
}

/// Element-wise arrays of one stage's nodes over the arrays of one upstream stage; returns them and the nodes left.
/// Nodes of a would-be group, and its dependencies.
type Proto = (Vec<usize>, Vec<DepRef>);

fn elementwise_groups(g: &Graph, nodes: &[usize], groups: &[Group], at: &[(usize, usize)]) -> (Vec<Proto>, Vec<usize>) {
    let mut out = Vec::new();
    let Some(&first_dep) = nodes.first().and_then(|&n| g.nodes[n].deps.first()) else { return (out, nodes.to_vec()) };
    let up_stage = &g.nodes[first_dep].stage;
    // Each node's single dependency in the upstream stage, and the others.
    let mut parts: BTreeMap<usize, Vec<(usize, usize, Vec<usize>)>> = BTreeMap::new(); // upstream group → (index, node, other deps)
    let mut left = Vec::new();
    for &n in nodes {
        let (up, other): (Vec<usize>, Vec<usize>) =
            g.nodes[n].deps.iter().partition(|&&d| &g.nodes[d].stage == up_stage);
        if up.len() != 1 {
            left.push(n);
            continue;
        }
        let (grp, k) = at[up[0]];
        parts.entry(grp).or_default().push((k, n, other));
    }
    for (grp, mut part) in parts {
        part.sort();
        let size = groups[grp].nodes.len();
        let bijective = size > 1 && part.len() == size && part.iter().enumerate().all(|(i, (k, _, _))| *k == i);
        let same_rest = part.windows(2).all(|w| w[0].2 == w[1].2 && g.nodes[w[0].1].after == g.nodes[w[1].1].after);
        if bijective && same_rest {
            let mut deps = vec![DepRef::Corr(grp)];
            deps.extend(dep_refs(&part[0].2, groups, at));
            out.push((part.into_iter().map(|(_, n, _)| n).collect(), deps));
        } else {
            left.extend(part.into_iter().map(|(_, n, _)| n));
        }
    }
    left.sort();
    (out, left)
}

/// References to the groups holding a set of nodes: the whole group where all its nodes are in the set.
fn dep_refs(deps: &[usize], groups: &[Group], at: &[(usize, usize)]) -> Vec<DepRef> {
    let mut per: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &d in deps {
        let (grp, k) = at[d];
        per.entry(grp).or_default().push(k);
    }
    let mut out = Vec::new();
    for (grp, ks) in per {
        if ks.len() == groups[grp].nodes.len() {
            out.push(DepRef::Whole(grp));
        } else {
            out.extend(ks.into_iter().map(|k| DepRef::Task(grp, k)));
        }
    }
    out
}

/// Names: a single node keeps its own (sanitized) name; arrays are named after their stage, numbered where a stage has
/// several.
fn name_groups(g: &Graph, groups: &mut [Group]) {
    let mut per_stage: HashMap<&str, usize> = HashMap::new();
    for gr in groups.iter() {
        if gr.nodes.len() > 1 {
            *per_stage.entry(gr.stage.as_str()).or_default() += 1;
        }
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut raw = Vec::new();
    for gr in groups.iter() {
        let base = if gr.nodes.len() == 1 {
            g.nodes[gr.nodes[0]].name.clone()
        } else if per_stage[gr.stage.as_str()] > 1 {
            let k = seen.entry(gr.stage.clone()).or_default();
            *k += 1;
            format!("{}-{}", gr.stage, *k - 1)
        } else {
            gr.stage.clone()
        };
        raw.push(base);
    }
    let names = unique_names(&raw, 52);
    for (gr, n) in groups.iter_mut().zip(names) {
        gr.name = n;
    }
}

/// A DNS-1123 label (lower-case letters, digits and `-`, starting and ending alphanumeric) of at most `max` characters.
pub fn sanitize(name: &str, max: usize) -> String {
    let mut s = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.ends_with('-') {
            s.push('-');
        }
    }
    let mut s: String = s.trim_matches('-').chars().take(max.max(1)).collect();
    while s.ends_with('-') {
        s.pop();
    }
    if s.is_empty() {
        s.push('n');
    }
    if !s.starts_with(|c: char| c.is_ascii_alphabetic()) {
        s.insert(0, 'n');
        s.truncate(max.max(1));
    }
    s
}

/// Sanitizes names so that they are unique: a name that lost information (truncated) or collides with another gets a
/// short hash of the original appended. Deterministic; at most `max` + 7 characters.
pub fn unique_names(raw: &[String], max: usize) -> Vec<String> {
    let base: Vec<String> = raw.iter().map(|r| sanitize(r, max)).collect();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for b in &base {
        *count.entry(b.as_str()).or_default() += 1;
    }
    let mut out: Vec<String> = raw
        .iter()
        .zip(&base)
        .map(
            |(r, b)| {
                if count[b.as_str()] > 1 || sanitize(r, usize::MAX).len() > max { with_hash(b, r) } else { b.clone() }
            },
        )
        .collect();
    // Hash suffixes of distinct originals collide with negligible probability; make it impossible.
    let mut used: BTreeSet<String> = BTreeSet::new();
    for (o, r) in out.iter_mut().zip(raw) {
        let mut k = 0;
        while !used.insert(o.clone()) {
            k += 1;
            *o = with_hash(&sanitize(r, max), &format!("{r}#{k}"));
        }
    }
    out
}

fn with_hash(base: &str, original: &str) -> String {
    format!("{base}-{}", &blake3::hash(original.as_bytes()).to_hex()[..6])
}

/// What one node asks of a machine, in the units schedulers take.
#[derive(Debug, Clone, PartialEq)]
pub struct Req {
    pub cpus: u32,
    pub mem_mib: u64,
    pub gpus: u32,
    pub seconds: u64,
}

impl Req {
    /// The request of a node's resources (checked when the manifest loaded; checked again here for resources built
    /// any other way).
    pub fn of(r: &Resources) -> anyhow::Result<Req> {
        if r.cpus == 0 {
            anyhow::bail!("resources.cpus = 0: a node needs at least one CPU");
        }
        let mem_mib =
            crate::units::parse_memory_mib(&r.memory).map_err(|e| anyhow::anyhow!("resources.memory: {e}"))?;
        let seconds =
            crate::units::parse_duration(&r.time).map_err(|e| anyhow::anyhow!("resources.time: {e}"))?.as_secs();
        if seconds == 0 {
            anyhow::bail!("resources.time: must be more than 0s");
        }
        Ok(Req { cpus: r.cpus, mem_mib, gpus: r.gpus, seconds })
    }
}

/// How a job calls `node run`, the same way this command sees the manifest.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The binary as jobs call it.
    pub bin: String,
    /// The manifest as jobs see it.
    pub manifest: String,
    /// The store URL as jobs see it (a relative `file://` made absolute).
    pub store: String,
    /// `--set` overrides, passed on to every job.
    pub sets: Vec<String>,
    /// The working directory jobs run in (their `.rmdistill/local` lives there).
    pub workdir: PathBuf,
}

impl RunSpec {
    /// The `node run` arguments before the node name: `node run`, its options (each one `--name=value` word, so that
    /// no value can be read as an option), `--`, and the manifest. After `--` nothing is an option: a node named
    /// `--help` or a manifest path beginning with `-` is read as NODE or MANIFEST, never as a flag.
    pub fn args_before_node(&self) -> Vec<String> {
        let mut v = vec!["node".to_string(), "run".into(), format!("--store={}", self.store)];
        v.extend(self.sets.iter().map(|s| format!("--set={s}")));
        v.push("--".into());
        v.push(self.manifest.clone());
        v
    }
    /// The full command for one node.
    pub fn argv(&self, node: &str) -> Vec<String> {
        self.argv_with(node, &[])
    }
    /// The full command for one node, with `node run` options of the scheduler's own (each one `--name=value`
    /// word) before the `--`.
    pub fn argv_with(&self, node: &str, options: &[String]) -> Vec<String> {
        let mut v = vec![self.bin.clone()];
        let mut args = self.args_before_node();
        let at = args.iter().position(|a| a == "--").unwrap_or(args.len());
        args.splice(at..at, options.iter().cloned());
        v.extend(args);
        v.push(node.to_string());
        v
    }
}

/// The plan, what of it is still to run, and how jobs run it.
pub struct Ctx {
    pub plan: Plan,
    pub graph: Graph,
    pub run: RunSpec,
}

impl Ctx {
    /// Loads the plan, resolves cache hits and the paths jobs will use. `container`: the jobs run in images, where
    /// the binary is `rmdistill` on the PATH unless told, and a `file://` store is shared only through a volume.
    pub fn load(src: &Source, bin: Option<&str>, manifest_path: Option<&str>, container: bool) -> anyhow::Result<Ctx> {
        let plan = crate::plan::load(&src.manifest, &src.sets)?;
        let url = crate::store::resolve_url(src.store.as_deref(), plan.manifest.store_url.as_deref())?;
        let store = Store::open(&url, &crate::store::default_local_dir())?;
        let store_url = shared_store_url(&url, container)?;
        let graph = Graph::from_plan(&plan, &store)?;
        let bin = match bin {
            Some(b) if b.is_empty() || b.starts_with('-') => {
                return Err(crate::error::Invalid(format!(
                    "--bin {}: a command that begins with `-` (or is empty) would be read as an option by the shell \
                     that starts it; give its path (e.g. ./{})",
                    crate::error::quoted(b),
                    b.escape_debug()
                ))
                .into());
            }
            Some(b) => b.to_string(),
            None if container => "rmdistill".to_string(),
            None => std::env::current_exe()
                .and_then(|p| p.canonicalize())
                .map_err(|e| anyhow::anyhow!("cannot find this rmdistill binary's path ({e}); give it with --bin"))?
                .display()
                .to_string(),
        };
        let manifest = match manifest_path {
            Some(m) => m.to_string(),
            None => src
                .manifest
                .canonicalize()
                .map_err(|e| anyhow::anyhow!("{}: {e}", src.manifest.display()))?
                .display()
                .to_string(),
        };
        let workdir = std::env::current_dir()?;
        Ok(Ctx { plan, graph, run: RunSpec { bin, manifest, store: store_url, sets: src.sets.clone(), workdir } })
    }

    pub fn manifest_file(&self) -> &Path {
        self.plan.manifest.path()
    }
}

fn shared_store_url(url: &str, container: bool) -> anyhow::Result<String> {
    if url.starts_with("memory://") {
        anyhow::bail!(
            "store `{url}` lives in one process's memory, so scheduler jobs cannot share it; pass --store with a file:// path on a shared file system, or s3://, gs://, az://"
        );
    }
    if let Some(rest) = crate::store::local_path(url) {
        let p = Path::new(rest).canonicalize().map_err(|e| anyhow::anyhow!("store `{url}`: {e}"))?;
        if container {
            eprintln!(
                "warning: store {} is a local directory: every pod or container must mount it at that same path (or pass --store s3://…)",
                p.display()
            );
        }
        // the resolved path is what every job is handed: a control character in the working directory's name would
        // make each job refuse it, long after the export said nothing
        let resolved = format!("file://{}", p.display());
        crate::store::check_url(&resolved).map_err(|e| {
            anyhow::anyhow!(
                "{e} (the store directory as the jobs would be given it); use a directory whose path has none"
            )
        })?;
        return Ok(resolved);
    }
    Ok(url.to_string())
}

/// Writes `text` to `-o PATH` (or stdout).
pub fn emit(text: &str, out: Option<&Path>) -> anyhow::Result<()> {
    match out {
        Some(p) => std::fs::write(p, text).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display())),
        None => {
            use std::io::Write;
            let mut so = std::io::stdout().lock();
            so.write_all(text.as_bytes())?;
            so.flush()?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, stage: &str, deps: &[usize]) -> GNode {
        GNode {
            name: name.into(),
            stage: stage.into(),
            resources: Resources::default(),
            deps: deps.to_vec(),
            after: vec![],
        }
    }

    #[test]
    fn names_are_dns_labels_and_unique() {
        let raw: Vec<String> = ["sub@rho=0.2,seed=1", "sub@rho=0-2,seed=1", "Gen", "9lives", &"x".repeat(80)]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let n = unique_names(&raw, 52);
        assert_eq!(n.len(), 5);
        assert!(
            n[0].starts_with("sub-rho-0-2-seed-1-") && n[1].starts_with("sub-rho-0-2-seed-1-") && n[0] != n[1],
            "{n:?}"
        );
        assert_eq!(n[2], "gen");
        assert_eq!(n[3], "n9lives");
        assert!(n[4].len() <= 59, "{}", n[4]);
        for s in &n {
            assert!(
                s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') && !s.ends_with('-'),
                "{s}"
            );
        }
    }

    #[test]
    fn parses_resources() {
        let r = |memory: &str, time: &str| {
            Req::of(&Resources { memory: memory.into(), time: time.into(), ..Default::default() })
        };
        assert_eq!(r("1.5GB", "1h30m").unwrap(), Req { cpus: 1, mem_mib: 1536, gpus: 0, seconds: 5400 });
        assert!(r("lots", "1h").unwrap_err().to_string().contains("resources.memory"));
        assert!(r("4G", "45").unwrap_err().to_string().contains("no unit"));
        assert!(r("4G", "99999999999999999d").unwrap_err().to_string().contains("longer than the limit"));
        assert!(r("4G", "0s").is_err());
    }

    #[test]
    fn groups_arrays_by_shared_upstream_and_elementwise() {
        // gen; a[0..4] all on gen; b[i] on a[i] (element-wise); c[i] on a[i/2] (not element-wise).
        let mut nodes = vec![node("gen", "gen", &[])];
        for i in 0..4 {
            nodes.push(node(&format!("a@i={i}"), "a", &[0]));
        }
        for i in 0..4 {
            nodes.push(node(&format!("b@i={i}"), "b", &[1 + i]));
        }
        for i in 0..4 {
            nodes.push(node(&format!("c@i={i}"), "c", &[1 + i / 2]));
        }
        let g = Graph { total: nodes.len(), cached: 0, nodes, in_flight: vec![] };
        let gs = group(&g, 1000, true, true);
        assert_eq!(group(&g, 1000, true, false).len(), 4, "c as one array waiting for all of a");
        let shape: Vec<(usize, Vec<DepRef>)> = gs.iter().map(|x| (x.nodes.len(), x.deps.clone())).collect();
        assert_eq!(
            shape,
            vec![
                (1, vec![]),
                (4, vec![DepRef::Whole(0)]),
                (4, vec![DepRef::Corr(1)]),
                (2, vec![DepRef::Task(1, 0)]),
                (2, vec![DepRef::Task(1, 1)]),
            ]
        );
        let gs = group(&g, 3, false, true);
        assert_eq!(gs.iter().filter(|x| x.stage == "a").map(|x| x.nodes.len()).collect::<Vec<_>>(), vec![3, 1]);
        assert_eq!(gs.iter().filter(|x| x.stage == "b").count(), 4);
        assert_eq!(gs[1].name, "a");
        assert_eq!(gs[2].name, "a-i-3");
    }

    #[test]
    fn k8s_deadlines_follow_the_longest_upstream_chain() {
        // gen (1h); a (2h) and b (30m) read gen; c (10m) reads both. Two attempts each, checks every 10s.
        let timed = |name: &str, time: &str, deps: &[usize]| GNode {
            resources: Resources { time: time.into(), ..Default::default() },
            ..node(name, name, deps)
        };
        let nodes =
            vec![timed("gen", "1h", &[]), timed("a", "2h", &[0]), timed("b", "30m", &[0]), timed("c", "10m", &[1, 2])];
        let g = Graph { total: 4, cached: 0, nodes, in_flight: vec![] };
        let d = argo::deadlines(&g, 1, 10).unwrap();
        let got: Vec<(u64, u64, u64)> = d.iter().map(|d| (d.wait, d.pod, d.job)).collect();
        assert_eq!(
            got,
            vec![
                (0, 3600, 7200),
                (7200, 7210 + 7200, 7210 + 2 * 7200),
                (7200, 7210 + 1800, 7210 + 2 * 1800),
                (21610, 21620 + 600, 21620 + 2 * 600),
            ]
        );
        // Sums past Kubernetes' int64 are capped, not wrapped: a chain of the longest limits, retried 2^32 times.
        let nodes: Vec<GNode> = (0..10)
            .map(|i| GNode { deps: (0..i).rev().take(1).collect(), ..timed(&format!("x{i}"), "3650d", &[]) })
            .collect();
        let chain = Graph { total: 10, cached: 0, nodes, in_flight: vec![] };
        let d = argo::deadlines(&chain, u32::MAX, 10).unwrap();
        assert_eq!(d[9].job, i64::MAX as u64);
        assert!(d.iter().all(|d| d.pod <= d.job && d.wait <= d.job) && d.windows(2).all(|w| w[0].job <= w[1].job));
    }

    #[test]
    fn in_flight_nodes_are_left_out_and_waited_on() {
        // gen; a[0..3] on gen; b[i] on a[i]. Live: gen (job 7) and a[0], a[1] (array 8); a[2] is not live; b[0] is
        // live but b[2] is live while its upstream is not, so it is not in flight.
        let mut nodes = vec![node("gen", "gen", &[])];
        for i in 0..3 {
            nodes.push(node(&format!("a@i={i}"), "a", &[0]));
        }
        for i in 0..3 {
            nodes.push(node(&format!("b@i={i}"), "b", &[1 + i]));
        }
        let g = Graph { total: nodes.len(), cached: 0, nodes, in_flight: vec![] };
        let live: HashMap<String, String> =
            [("gen", "7"), ("a@i=0", "8_0"), ("a@i=1", "8_1"), ("b@i=0", "9_0"), ("b@i=2", "9_2")]
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
        let h = g.without_in_flight(&live);
        let names: Vec<&str> = h.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a@i=2", "b@i=1", "b@i=2"]);
        assert_eq!(
            h.in_flight.iter().map(|(n, id)| format!("{n}={id}")).collect::<Vec<_>>(),
            ["gen=7", "a@i=0=8_0", "a@i=1=8_1", "b@i=0=9_0"]
        );
        assert_eq!((h.nodes[0].after.clone(), h.nodes[0].deps.clone()), (vec!["7".to_string()], vec![]));
        assert_eq!((h.nodes[1].after.clone(), h.nodes[1].deps.clone()), (vec!["8_1".to_string()], vec![]));
        assert_eq!((h.nodes[2].after.clone(), h.nodes[2].deps.clone()), (vec![], vec![0]));
        // Nodes waiting on different live jobs are not one array.
        let gs = group(&h, 1000, true, true);
        assert_eq!(
            gs.iter().map(|x| (x.nodes.clone(), x.after.clone())).collect::<Vec<_>>(),
            vec![(vec![0], vec!["7".to_string()]), (vec![1], vec!["8_1".to_string()]), (vec![2], vec![]),]
        );
        assert_eq!(g.without_in_flight(&HashMap::new()).nodes.len(), 7);
    }
}
