//! `export aws-batch`: a JSON document with a RegisterJobDefinition request and, in submission order, the SubmitJob
//! requests. A stage's nodes that need the same upstream become one array job (`arrayProperties.size`; task i picks its
//! node from the command's arguments by `AWS_BATCH_JOB_ARRAY_INDEX`); an array whose task i needs exactly task i of
//! another array of the same size depends on it `N_TO_N`. AWS Batch takes at most 20 `dependsOn` entries per job, so
//! beyond that barrier jobs (which run `true`) collect up to 20 parents each, in a tree as deep as needed.
//!
//! Every SubmitJob request stays within AWS's 30 KiB (arrays are cut to fit; a node whose name cannot fit is
//! refused), and tag values within 256 characters (a longer stage name is cut and ends in a hash of the whole).
//!
//! Job ids exist only once submitted: `dependsOn[].jobId` holds `${REF}`, where REF is an earlier job's `ref`;
//! a submitter replaces it with the jobId that SubmitJob returned for REF.

use super::slurm::q_sh;
use super::{Ctx, DepRef, Graph, Req, RunSpec, Source};
use serde_json::{Value, json};
use std::path::PathBuf;

/// AWS Batch's limit on `dependsOn` entries per job.
pub const MAX_PARENTS: usize = 20;
/// AWS Batch's largest array job.
pub const MAX_ARRAY: usize = 10_000;
/// AWS Batch's largest SubmitJob request payload, in bytes.
pub const MAX_REQUEST: usize = 30 * 1024;
/// AWS's longest tag value, in characters.
pub const MAX_TAG_VALUE: usize = 256;
/// Room in a SubmitJob request for all but the command: job name, queue and definition (at most 128 characters
/// each), up to 20 `dependsOn` entries, resources, timeout, tags (at most 256 characters) and array size. About
/// 3 KiB at most; twice that is kept free.
const OVERHEAD: usize = 6 * 1024;

/// What `export aws-batch` is asked for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub source: Source,
    /// The container image with rmdistill in it.
    pub image: String,
    /// The job queue to submit to.
    pub job_queue: String,
    /// The job definition's name.
    pub job_definition: String,
    /// The rmdistill binary inside the image.
    pub bin: Option<String>,
    /// The manifest's path inside the container (default: its absolute path here).
    pub manifest_path: Option<String>,
    /// Attempts per job (1 to 10).
    pub attempts: u32,
    /// Largest array job (2 to 10000).
    pub max_array: usize,
    pub output: Option<PathBuf>,
}

/// An AWS Batch name (job queue, job definition): letters, digits, `-` and `_`, at most 128 characters.
fn aws_name(flag: &str, v: &str) -> anyhow::Result<()> {
    if v.is_empty() || v.len() > 128 || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(crate::error::Invalid(format!(
            "{flag} \"{}\": expected letters, digits, `-` and `_` (at most 128)",
            v.escape_debug()
        ))
        .into());
    }
    Ok(())
}

/// What the document needs beyond the graph.
#[derive(Debug, Clone)]
pub struct Opts {
    pub image: String,
    pub job_queue: String,
    pub job_definition: String,
    pub attempts: u32,
    pub max_array: usize,
}

pub fn run(a: Request) -> anyhow::Result<()> {
    if a.max_array < 2 || a.max_array > MAX_ARRAY {
        anyhow::bail!("--max-array {}: AWS Batch arrays hold 2 to {MAX_ARRAY} child jobs", a.max_array);
    }
    if a.attempts == 0 || a.attempts > 10 {
        anyhow::bail!("--attempts {}: AWS Batch allows 1 to 10", a.attempts);
    }
    aws_name("--job-queue", &a.job_queue)?;
    aws_name("--job-definition", &a.job_definition)?;
    if a.image.is_empty() || a.image.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(crate::error::Invalid(format!(
            "--image \"{}\": expected an image reference (no spaces or control characters)",
            a.image.escape_debug()
        ))
        .into());
    }
    let ctx = Ctx::load(&a.source, a.bin.as_deref(), a.manifest_path.as_deref(), true)?;
    // AWS Batch substitutes `Ref::NAME` in a job's command with a parameter, with no way to escape it.
    super::refuse_marker(&ctx, &[("--image", &a.image)], "Ref::", "AWS Batch")?;
    let opts = Opts {
        image: a.image,
        job_queue: a.job_queue,
        job_definition: a.job_definition,
        attempts: a.attempts,
        max_array: a.max_array,
    };
    let doc = document(&ctx.graph, &ctx.run, &opts)?;
    super::emit(&(serde_json::to_string_pretty(&doc)? + "\n"), a.output.as_deref())
}

/// The shell line every job runs: task i of an array runs the i-th node argument; a single job its only one.
fn script(run: &RunSpec) -> String {
    // `node run`'s options, then `--`, then the manifest and the node: nothing from the manifest is read as an option.
    let head: Vec<String> = run.args_before_node().iter().map(|x| q_sh(x)).collect();
    format!("shift \"${{AWS_BATCH_JOB_ARRAY_INDEX:-0}}\"; exec {} {} \"$1\"", q_sh(&run.bin), head.join(" "))
}

/// Bytes a string takes in a JSON request (quoted and escaped).
fn json_len(s: &str) -> usize {
    serde_json::to_string(s).map_or(s.len(), |j| j.len())
}

/// A tag value AWS accepts (at most [`MAX_TAG_VALUE`] characters): the value itself, or where longer its beginning
/// and a hash of the whole, so that it still tells stages apart and names them recognisably.
pub fn tag_value(v: &str) -> String {
    if v.chars().count() <= MAX_TAG_VALUE {
        return v.to_string();
    }
    let hash = &blake3::hash(v.as_bytes()).to_hex()[..12];
    let head: String = v.chars().take(MAX_TAG_VALUE - hash.len() - 1).collect();
    format!("{head}-{hash}")
}

fn requirements(r: &Req) -> Value {
    let mut v = vec![
        json!({"type": "VCPU", "value": r.cpus.to_string()}),
        json!({"type": "MEMORY", "value": r.mem_mib.to_string()}),
    ];
    if r.gpus > 0 {
        v.push(json!({"type": "GPU", "value": r.gpus.to_string()}));
    }
    Value::Array(v)
}

/// The document: `jobDefinition` (a RegisterJobDefinition request) and `jobs` in submission order, each with its
/// `ref`, the nodes it runs, and its SubmitJob request.
pub fn document(g: &Graph, run: &RunSpec, o: &Opts) -> anyhow::Result<Value> {
    let sh = script(run);
    // A job's request carries its script and its nodes' names (each in the command, the first also as the `node`
    // parameter): arrays are cut so that every request stays under AWS's limit, and a name that cannot fit even
    // alone is refused.
    let fixed = json_len(&sh) + OVERHEAD;
    if fixed >= MAX_REQUEST {
        return Err(crate::error::Invalid(format!(
            "the command every AWS Batch job runs (binary, manifest path, store URL and --set values) takes {} bytes, \
             and AWS takes SubmitJob requests of at most {MAX_REQUEST} bytes (30 KiB) with room for the rest; \
             shorten them",
            json_len(&sh)
        ))
        .into());
    }
    let budget = MAX_REQUEST - fixed;
    let mut max_array = o.max_array.min(MAX_ARRAY);
    if let Some(n) = g.nodes.iter().max_by_key(|n| json_len(&n.name)) {
        let longest = json_len(&n.name) + 1;
        if 2 * longest > budget {
            return Err(crate::error::Invalid(format!(
                "node {}: its name takes {} bytes and appears twice in its job's SubmitJob request (in the command \
                 and as the `node` parameter), which AWS Batch takes up to {MAX_REQUEST} bytes (30 KiB), {budget} of \
                 them left for node names; shorten the stage name or the sweep value",
                crate::error::quoted(&n.name),
                longest - 1
            ))
            .into());
        }
        max_array = max_array.min((budget - longest) / longest).max(1);
    }
    let groups = super::group(g, max_array, true, false);
    let default_req = Req::of(&Default::default())?;
    let definition = json!({
        "jobDefinitionName": o.job_definition,
        "type": "container",
        "parameters": {"node": ""},
        "containerProperties": {
            "image": o.image,
            "command": ["sh", "-c", sh, "rmdistill", "Ref::node"],
            "resourceRequirements": requirements(&default_req),
        },
        "retryStrategy": {"attempts": o.attempts, "evaluateOnExit": [
            {"onExitCode": "1", "action": "EXIT"},
            {"onExitCode": "2", "action": "EXIT"},
            {"onReason": "*", "action": "RETRY"}
        ]},
        "propagateTags": true,
        "tags": {"managed-by": "rmdistill"}
    });

    let mut jobs: Vec<Value> = Vec::new();
    let mut barriers = 0usize;
    for gr in &groups {
        let node0 = &g.nodes[gr.nodes[0]];
        let req = Req::of(&node0.resources)?;
        let array = gr.nodes.len() > 1;
        // Parents: element-wise ones must stay direct; the rest may be gathered by barriers.
        let mut n_to_n: Vec<String> = Vec::new();
        let mut seq: Vec<String> = Vec::new();
        for d in &gr.deps {
            let parent = &groups[d.group()];
            match d {
                DepRef::Corr(_) => n_to_n.push(parent.name.clone()),
                // Grouped without task dependencies: a parent is a whole job (AWS Batch waits for all of an array).
                DepRef::Whole(_) | DepRef::Task(..) => seq.push(parent.name.clone()),
            }
        }
        seq.sort();
        seq.dedup();
        let room = MAX_PARENTS.saturating_sub(n_to_n.len()).max(1);
        let mut level = 0;
        while seq.len() > room {
            let mut next = Vec::new();
            for (k, chunk) in seq.chunks(MAX_PARENTS).enumerate() {
                let name = format!("{}-barrier-{level}-{k}", gr.name);
                jobs.push(json!({
                    "ref": name,
                    "barrier": true,
                    "nodes": [],
                    "submitJob": {
                        "jobName": name,
                        "jobQueue": o.job_queue,
                        "jobDefinition": o.job_definition,
                        "dependsOn": chunk.iter().map(|p| json!({"jobId": format!("${{{p}}}")})).collect::<Vec<_>>(),
                        "containerOverrides": {"command": ["true"], "resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "256"}]},
                        "tags": {"rmdistill-barrier-for": gr.name},
                    }
                }));
                next.push(name);
                barriers += 1;
            }
            seq = next;
            level += 1;
        }
        let mut depends: Vec<Value> = seq.iter().map(|p| json!({"jobId": format!("${{{p}}}")})).collect();
        depends.extend(n_to_n.iter().map(|p| json!({"jobId": format!("${{{p}}}"), "type": "N_TO_N"})));
        let names: Vec<String> = gr.nodes.iter().map(|&n| g.nodes[n].name.clone()).collect();
        let mut command = vec!["sh".to_string(), "-c".into(), sh.clone(), "rmdistill".into()];
        command.extend(names.iter().cloned());
        let mut submit = json!({
            "jobName": gr.name,
            "jobQueue": o.job_queue,
            "jobDefinition": o.job_definition,
            "parameters": {"node": names[0]},
            "containerOverrides": {"command": command, "resourceRequirements": requirements(&req)},
            "timeout": {"attemptDurationSeconds": req.seconds.max(60)},
            "tags": {"rmdistill-stage": tag_value(&gr.stage)},
        });
        if !depends.is_empty() {
            submit["dependsOn"] = Value::Array(depends);
        }
        if array {
            submit["arrayProperties"] = json!({"size": gr.nodes.len()});
        }
        let size = serde_json::to_string(&submit)?.len();
        if size > MAX_REQUEST {
            return Err(crate::error::Invalid(format!(
                "job {} (node {}): its SubmitJob request takes {size} bytes, over AWS's {MAX_REQUEST} (30 KiB); \
                 shorten the node names, the manifest path, the store URL or the --set values",
                gr.name,
                crate::error::quoted(&names[0])
            ))
            .into());
        }
        jobs.push(json!({"ref": gr.name, "stage": gr.stage, "nodes": names, "submitJob": submit}));
    }
    Ok(json!({
        "note": "Register jobDefinition, then submit jobs in order; in dependsOn, replace ${REF} with the jobId that SubmitJob returned for the job whose ref is REF. Each job runs `rmdistill node run`, which checks the store's cache first, so any job may be retried or resubmitted.",
        "nodes": {"total": g.total, "cached": g.cached, "submitted": g.nodes.len()},
        "barriers": barriers,
        "jobDefinition": definition,
        "jobs": jobs,
    }))
}
