//! `export aws-batch`: job definition and submissions follow AWS Batch's rules (at most 20 `dependsOn` per job, with
//! barrier jobs beyond; arrays of 2 to 10000; `N_TO_N` only between equal arrays that are truly element-wise; job
//! names AWS accepts; request payloads under 30 KiB), and cover exactly the nodes still to run.

mod common;
use common::*;
use rmdistill::export::aws::{self, MAX_PARENTS};
use rmdistill::export::{GNode, Graph, RunSpec};
use rmdistill::manifest::Resources;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// ref → (nodes, parent refs, N_TO_N parent refs).
type Jobs = BTreeMap<String, (Vec<String>, Vec<String>, Vec<String>)>;

fn aws_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Checks the document against AWS Batch's rules; returns ref → (nodes, parent refs, N_TO_N parent refs).
fn validate(doc: &Value) -> Jobs {
    let def = &doc["jobDefinition"];
    assert!(aws_name(def["jobDefinitionName"].as_str().unwrap()));
    assert_eq!(def["type"], "container");
    assert!(def["containerProperties"]["image"].as_str().is_some_and(|s| !s.is_empty()));
    let mut out: Jobs = BTreeMap::new();
    let mut sizes: HashMap<String, usize> = HashMap::new();
    for j in doc["jobs"].as_array().unwrap() {
        let r = j["ref"].as_str().unwrap().to_string();
        let sj = &j["submitJob"];
        assert_eq!(sj["jobName"], r.as_str());
        assert!(aws_name(&r), "job name {r}");
        assert!(sj["jobQueue"].as_str().is_some() && sj["jobDefinition"].as_str().is_some());
        assert!(serde_json::to_string(sj).unwrap().len() < 30 * 1024, "{r}: SubmitJob request over 30 KiB");
        let deps = sj["dependsOn"].as_array().cloned().unwrap_or_default();
        assert!(deps.len() <= MAX_PARENTS, "{r} has {} parents", deps.len());
        let (mut seq, mut n2n) = (vec![], vec![]);
        for d in &deps {
            let id = d["jobId"].as_str().unwrap();
            let p =
                id.strip_prefix("${").and_then(|x| x.strip_suffix('}')).unwrap_or_else(|| panic!("{r}: jobId {id}"));
            assert!(out.contains_key(p), "{r} depends on {p}, which is not an earlier job");
            if d["type"] == "N_TO_N" {
                n2n.push(p.to_string());
            } else {
                assert!(d.get("type").is_none() || d["type"] == "SEQUENTIAL");
                seq.push(p.to_string());
            }
        }
        let nodes: Vec<String> =
            j["nodes"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect();
        let size = sj["arrayProperties"]["size"].as_u64().map(|s| s as usize);
        if j["barrier"] == true {
            assert!(nodes.is_empty() && size.is_none());
        } else {
            let cmd: Vec<&str> =
                sj["containerOverrides"]["command"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
            assert_eq!(&cmd[..2], &["sh", "-c"]);
            assert!(cmd[2].contains("AWS_BATCH_JOB_ARRAY_INDEX") && cmd[2].contains(" node run "), "{}", cmd[2]);
            assert_eq!(cmd[4..].iter().map(|s| s.to_string()).collect::<Vec<_>>(), nodes, "{r}: array index → node");
            match size {
                Some(s) => assert!(
                    (2..=10_000).contains(&s) && s == nodes.len(),
                    "{r}: array size {s} for {} nodes",
                    nodes.len()
                ),
                None => assert_eq!(nodes.len(), 1, "{r}"),
            }
        }
        for p in &n2n {
            assert_eq!(sizes.get(p).copied(), size, "{r}: N_TO_N on {p} needs two arrays of one size");
        }
        sizes.insert(r.clone(), size.unwrap_or(1));
        out.insert(r, (nodes, seq, n2n));
    }
    out
}

/// Every node's dependencies are honoured: each upstream node is run by a job the node's job waits on (through
/// barriers), and an N_TO_N link pairs task i with task i of an element-wise upstream.
fn assert_covers(jobs: &Jobs, deps: &BTreeMap<String, Vec<String>>) {
    let owner: HashMap<&str, (&str, usize)> = jobs
        .iter()
        .flat_map(|(r, (n, _, _))| n.iter().enumerate().map(move |(i, x)| (x.as_str(), (r.as_str(), i))))
        .collect();
    fn reach<'a>(jobs: &'a Jobs, r: &'a str, acc: &mut BTreeSet<&'a str>) {
        for p in &jobs[r].1 {
            if acc.insert(p) {
                reach(jobs, p, acc);
            }
        }
    }
    for (node, ups) in deps {
        let Some(&(r, i)) = owner.get(node.as_str()) else { continue };
        let mut seq = BTreeSet::new();
        reach(jobs, r, &mut seq);
        for u in ups {
            let Some(&(ur, ui)) = owner.get(u.as_str()) else { continue }; // cached
            if seq.contains(ur) {
                continue;
            }
            assert!(
                jobs[r].2.iter().any(|p| p == ur) && ui == i,
                "{node} (task {i} of {r}) does not wait for {u} (task {ui} of {ur})"
            );
        }
    }
}

fn node_deps(w: &Work, manifest: &str) -> BTreeMap<String, Vec<String>> {
    let v: Value = serde_json::from_str(&w.ok(&["node", "list", manifest, "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap().to_string(),
                n["deps"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_string()).collect(),
            )
        })
        .collect()
}

#[test]
fn aws_batch_arrays_and_element_wise_links() {
    let w = Work::new();
    // pick@rho,seed reads sub@rho,seed: element-wise; member (3 per sub node) is not.
    let m = gen_manifest(5000)
        + "\n[stages.pick]\nkind = \"subsample\"\ninputs = { pairs = \"sub.dataset\" }\nsweep = { rho = \"${rhos}\", seed = \"${seeds}\" }\nparams = { rho = 0.5, size = 40, seed = \"${seed}\" }\nresources = { cpus = 4, memory = \"8G\", gpus = 1, time = \"2h\" }\n";
    w.write("m.toml", &m);
    let doc: Value = serde_json::from_str(&w.ok(&[
        "export",
        "aws-batch",
        "m.toml",
        "--image",
        "123.dkr.ecr/rmd:1",
        "--job-queue",
        "q1",
    ]))
    .unwrap();
    let jobs = validate(&doc);
    let deps = node_deps(&w, "m.toml");
    let covered: BTreeSet<&String> = jobs.values().flat_map(|(n, _, _)| n).collect();
    assert_eq!(covered, deps.keys().collect());
    assert_covers(&jobs, &deps);
    assert_eq!(jobs["sub"].0.len(), 6);
    assert_eq!(jobs["pick"].2, vec!["sub".to_string()], "pick is element-wise over sub");
    assert_eq!(jobs["member"].0.len(), 18, "member as one array after the whole sub array");
    assert!(jobs["member"].2.is_empty() && jobs["member"].1 == vec!["sub".to_string()]);
    let pick = doc["jobs"].as_array().unwrap().iter().find(|j| j["ref"] == "pick").unwrap();
    let req: BTreeMap<&str, &str> = pick["submitJob"]["containerOverrides"]["resourceRequirements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["type"].as_str().unwrap(), r["value"].as_str().unwrap()))
        .collect();
    assert_eq!(req, BTreeMap::from([("VCPU", "4"), ("MEMORY", "8192"), ("GPU", "1")]));
    assert_eq!(pick["submitJob"]["timeout"]["attemptDurationSeconds"], 7200);
    assert_eq!(pick["submitJob"]["jobQueue"], "q1");

    // After a local run of gen and sub, only member and pick are left, with no parents.
    w.ok(&["run", "m.toml", "sub", "-q"]);
    let doc: Value = serde_json::from_str(&w.ok(&["export", "aws-batch", "m.toml", "--image", "img"])).unwrap();
    let jobs = validate(&doc);
    assert_eq!(doc["nodes"]["cached"], 7);
    assert_eq!(jobs.len(), 2, "member as one array, pick as one array: {:?}", jobs.keys());
    assert!(jobs.values().all(|(_, s, n)| s.is_empty() && n.is_empty()));
}

fn graph(n_parents: usize) -> Graph {
    // n_parents independent stages of one node each, and one node that reads them all.
    let mut nodes: Vec<GNode> = (0..n_parents)
        .map(|i| GNode {
            name: format!("s{i}"),
            stage: format!("s{i}"),
            resources: Resources::default(),
            deps: vec![],
            after: vec![],
        })
        .collect();
    nodes.push(GNode {
        name: "merge".into(),
        stage: "merge".into(),
        resources: Resources::default(),
        deps: (0..n_parents).collect(),
        after: vec![],
    });
    Graph { total: nodes.len(), cached: 0, nodes, in_flight: vec![] }
}

fn spec() -> RunSpec {
    RunSpec {
        bin: "rmdistill".into(),
        manifest: "/m.toml".into(),
        store: "s3://b/p".into(),
        sets: vec![],
        workdir: "/".into(),
    }
}

fn opts() -> aws::Opts {
    aws::Opts {
        image: "img".into(),
        job_queue: "q".into(),
        job_definition: "rmdistill".into(),
        attempts: 2,
        max_array: 10_000,
    }
}

#[test]
fn aws_batch_fan_in_beyond_20_parents_goes_through_barriers() {
    for (parents, barriers, levels) in
        [(20, 0, 0), (21, 2, 1), (45, 3, 1), (400, 20, 1), (401, 21 + 2, 2), (1000, 50 + 3, 2)]
    {
        let g = graph(parents);
        let doc = aws::document(&g, &spec(), &opts()).unwrap();
        let jobs = validate(&doc);
        assert_eq!(doc["barriers"], barriers, "{parents} parents");
        assert_eq!(jobs.len(), parents + 1 + barriers);
        let deps: BTreeMap<String, Vec<String>> = g
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.deps.iter().map(|&d| g.nodes[d].name.clone()).collect()))
            .collect();
        assert_covers(&jobs, &deps);
        let depth = jobs
            .keys()
            .filter(|r| r.starts_with("merge-barrier-"))
            .map(|r| r.split('-').nth(2).unwrap().parse::<usize>().unwrap() + 1)
            .max()
            .unwrap_or(0);
        assert_eq!(depth, levels, "{parents} parents");
        // Barriers run nothing.
        for j in doc["jobs"].as_array().unwrap().iter().filter(|j| j["barrier"] == true) {
            assert_eq!(j["submitJob"]["containerOverrides"]["command"], serde_json::json!(["true"]));
        }
    }
}

#[test]
fn aws_batch_large_sweep_splits_arrays_to_fit_requests() {
    let w = Work::new();
    let seeds: Vec<String> = (0..700).map(|i| i.to_string()).collect();
    w.write(
        "m.toml",
        &gen_manifest(5000)
            .replace("seeds = [0, 1]", &format!("seeds = [{}]", seeds.join(", ")))
            .replace("members = [0.2, 0.5, 0.8]", "members = [0.5]"),
    );
    let doc: Value = serde_json::from_str(&w.ok(&["export", "aws-batch", "m.toml", "--image", "img"])).unwrap();
    let jobs = validate(&doc);
    let deps = node_deps(&w, "m.toml");
    assert_eq!(jobs.values().map(|(n, _, _)| n.len()).sum::<usize>(), deps.len());
    assert_covers(&jobs, &deps);
    let subs: Vec<&String> = jobs.keys().filter(|r| r.starts_with("sub")).collect();
    assert!(subs.len() > 1, "2100 sub nodes are split into several arrays to keep each request under 30 KiB");
    // member is element-wise over sub, chunk by chunk.
    for (r, (_, _, n2n)) in &jobs {
        if r.starts_with("member") {
            assert_eq!(n2n.len(), 1, "{r}");
        }
    }
}

/// Registers the job definition and submits every job, in order, to moto's AWS Batch (in-process, no Docker), replacing
/// `${REF}` with the returned job ids; botocore checks each request against the Batch API model on the way.
const MOTO_SUBMIT: &str = r#"
import json, os, sys
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
import boto3
from moto import mock_aws

doc = json.load(open(sys.argv[1]))
with mock_aws(config={"batch": {"use_docker": False}}):
    iam = boto3.client("iam")
    batch = boto3.client("batch")
    role = iam.create_role(RoleName="batch", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    ce = batch.create_compute_environment(computeEnvironmentName="rmd-ce", type="UNMANAGED", state="ENABLED", serviceRole=role)["computeEnvironmentArn"]
    for q in {j["submitJob"]["jobQueue"] for j in doc["jobs"]}:
        batch.create_job_queue(jobQueueName=q, state="ENABLED", priority=1, computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce}])
    batch.register_job_definition(**doc["jobDefinition"])
    ids = {}
    for j in doc["jobs"]:
        req = json.loads(json.dumps(j["submitJob"]))
        for d in req.get("dependsOn", []):
            d["jobId"] = ids[d["jobId"][2:-1]]
        ids[j["ref"]] = batch.submit_job(**req)["jobId"]
    out = {}
    allids = list(ids.values())
    for k in range(0, len(allids), 100):
        for job in batch.describe_jobs(jobs=allids[k:k + 100])["jobs"]:
            out[job["jobName"]] = {"dependsOn": len(job.get("dependsOn", [])), "array": job.get("arrayProperties", {}).get("size")}
    print(json.dumps(out))
"#;

fn moto_python() -> Option<std::path::PathBuf> {
    let py = repo().join(".venv/bin/python");
    let ok =
        std::process::Command::new(&py).args(["-c", "import boto3, moto"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} with boto3 and moto is missing: scripts/setup.sh installs it",
            py.display()
        );
        eprintln!(
            "SKIPPED: moto AWS Batch test: {} with boto3 and moto is missing (run scripts/setup.sh)",
            py.display()
        );
        return None;
    }
    Some(py)
}

fn submit_to_moto(py: &std::path::Path, w: &Work, doc: &Value) {
    let path = w.write("doc.json", &serde_json::to_string(doc).unwrap());
    let script = w.write("submit.py", MOTO_SUBMIT);
    let o = std::process::Command::new(py).arg(&script).arg(&path).output().unwrap();
    assert!(o.status.success(), "moto refused the document:\n{}", s(&o.stderr));
    let got: Value = serde_json::from_slice(&o.stdout).unwrap();
    let jobs = doc["jobs"].as_array().unwrap();
    assert_eq!(got.as_object().unwrap().len(), jobs.len());
    for j in jobs {
        let sj = &j["submitJob"];
        let g = &got[sj["jobName"].as_str().unwrap()];
        assert_eq!(g["dependsOn"], sj["dependsOn"].as_array().map_or(0, |d| d.len()), "{}", sj["jobName"]);
        assert_eq!(g["array"], sj["arrayProperties"]["size"], "{}", sj["jobName"]);
    }
}

#[test]
fn aws_batch_document_is_accepted_by_moto() {
    let Some(py) = moto_python() else { return };
    let w = Work::new();
    let m = gen_manifest(5000)
        + "\n[stages.pick]\nkind = \"subsample\"\ninputs = { pairs = \"sub.dataset\" }\nsweep = { rho = \"${rhos}\", seed = \"${seeds}\" }\nparams = { rho = 0.5, size = 40, seed = \"${seed}\" }\nresources = { cpus = 4, memory = \"8G\", gpus = 1, time = \"2h\" }\n";
    w.write("m.toml", &m);
    let doc: Value =
        serde_json::from_str(&w.ok(&["export", "aws-batch", "m.toml", "--image", "img", "--job-queue", "rmd-queue"]))
            .unwrap();
    submit_to_moto(&py, &w, &doc);
    // A fan-in through two levels of barriers.
    let doc = aws::document(&graph(401), &spec(), &aws::Opts { job_queue: "rmd-queue".into(), ..opts() }).unwrap();
    assert_eq!(doc["barriers"], 23);
    submit_to_moto(&py, &w, &doc);
}

/// AWS Batch refuses a SubmitJob request over 30 KiB and a tag value over 256 characters: a 10,000-character stage
/// name is tagged by its beginning and a hash of the whole (stages still told apart), arrays of long node names are cut
/// to fit, and a node whose name cannot fit even alone is refused, naming it and the limit.
#[test]
fn aws_batch_long_names_fit_requests_and_tags_or_are_refused() {
    let node = |name: String, stage: &str, deps: Vec<usize>| GNode {
        name,
        stage: stage.into(),
        resources: Resources::default(),
        deps,
        after: vec![],
    };
    // Two stages whose 10,000-character names differ only at the end (manifests may refuse such names; the exporter
    // does not rely on it).
    let a = "s".repeat(10_000);
    let b = "s".repeat(9_999) + "t";
    let nodes = vec![node(a.clone(), &a, vec![]), node(b.clone(), &b, vec![0])];
    let g = Graph { total: 2, cached: 0, nodes, in_flight: vec![] };
    let doc = aws::document(&g, &spec(), &opts()).unwrap();
    let jobs = validate(&doc);
    assert_eq!(jobs.len(), 2);
    let tags: Vec<String> = doc["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["submitJob"]["tags"]["rmdistill-stage"].as_str().unwrap().to_string())
        .collect();
    for t in &tags {
        assert!(t.chars().count() <= aws::MAX_TAG_VALUE && t.starts_with(&"s".repeat(200)), "{t}");
        assert!(t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{t}");
    }
    assert_ne!(tags[0], tags[1]);
    assert_eq!(aws::tag_value("sub"), "sub");

    // 200 nodes with 1,000-character names: arrays cut so that every request fits (validate checks < 30 KiB).
    let mut nodes = vec![node("gen".into(), "gen", vec![])];
    nodes.extend((0..200).map(|i| node(format!("sub@t={}{i}", "x".repeat(1000)), "sub", vec![0])));
    let g = Graph { total: nodes.len(), cached: 0, nodes, in_flight: vec![] };
    let jobs = validate(&aws::document(&g, &spec(), &opts()).unwrap());
    assert_eq!(jobs.values().map(|(n, _, _)| n.len()).sum::<usize>(), 201);
    assert!(jobs.len() > 9, "{} jobs", jobs.len());

    // Through the command line: a sweep value of 10,000 characters fits alone; one of 16,000 cannot.
    let w = Work::new();
    let m = |v: &str| {
        format!("[stages.gen]\nkind = \"generate\"\nparams = {{ n = 10 }}\nsweep = {{ t = [\"{v}\", \"short\"] }}\n")
    };
    w.write("ok.toml", &m(&"x".repeat(10_000)));
    let doc: Value = serde_json::from_str(&w.ok(&["export", "aws-batch", "ok.toml", "--image", "img"])).unwrap();
    assert_eq!(validate(&doc).len(), 2);
    w.write("long.toml", &m(&"y".repeat(16_000)));
    let o = w.run(&["export", "aws-batch", "long.toml", "--image", "img"]);
    assert_eq!(o.status.code(), Some(2), "{}", s(&o.stderr));
    let err = s(&o.stderr);
    assert!(err.contains("node `gen@t=yyyy") && err.contains("(16006 characters)"), "{err}");
    assert!(err.contains("30720 bytes (30 KiB)") && err.contains("shorten the stage name or the sweep value"), "{err}");
}
