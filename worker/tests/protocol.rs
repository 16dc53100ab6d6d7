//! The worker binary as the engine drives it (`rmdistill_stages::protocol`): a job file in, protocol lines out on
//! standard output, the outcome last. (This test also makes `cargo test --workspace` build the binary that the
//! engine's own tests start.)

use rmdistill_stages::protocol::{EXIT_REFUSED, Job, Message, VERSION};
use rmdistill_stages::{Device, port};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn job(dir: &Path, kind: &str, params: serde_json::Value) -> Job {
    let stage = rmdistill_stages::stage(kind).unwrap();
    let outputs = stage
        .outputs()
        .iter()
        .map(|o| {
            let p = dir.join(o.name);
            if o.kind == port::ArtifactKind::Dir {
                std::fs::create_dir_all(&p).unwrap();
            }
            (o.name.to_string(), p)
        })
        .collect();
    Job {
        v: VERSION,
        node: format!("{kind}@test=1"),
        kind: kind.into(),
        code: port::code_identity(stage).to_string(),
        params: params.as_object().unwrap().clone(),
        inputs: BTreeMap::new(),
        externals: BTreeMap::new(),
        outputs,
        device: Device::Cpu,
        threads: 1,
        interop_threads: 1,
    }
}

/// Runs a job; (exit code, protocol messages, stderr).
fn run(dir: &Path, j: &Job) -> (Option<i32>, Vec<Message>, String) {
    let file = dir.join("job.json");
    std::fs::write(&file, serde_json::to_vec(j).unwrap()).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_rmdistill-worker")).arg("run").arg(&file).output().unwrap();
    let msgs = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a protocol line: {l:?}: {e}")))
        .collect();
    (o.status.code(), msgs, String::from_utf8_lossy(&o.stderr).to_string())
}

#[test]
fn a_job_runs_and_reports_progress_logs_and_its_summary_last() {
    let t = tempfile::tempdir().unwrap();
    let j = job(t.path(), "synth", json!({"n_docs": 30, "seed": 2}));
    let (code, msgs, stderr) = run(t.path(), &j);
    assert_eq!(code, Some(0), "{msgs:?}\n{stderr}");
    assert!(msgs.iter().any(|m| matches!(m, Message::Progress { done: 30, total: 30 })), "{msgs:?}");
    assert!(msgs.iter().any(|m| matches!(m, Message::Log { message } if message.contains("30 documents"))), "{msgs:?}");
    let Some(Message::Done { summary }) = msgs.last() else { panic!("{msgs:?}") };
    assert_eq!(summary["docs"], 30);
    assert!(t.path().join("corpus").is_file() && t.path().join("tokenizer/tokenizer.json").is_file());
}

#[test]
fn a_job_with_another_code_identity_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let mut j = job(t.path(), "synth", json!({"n_docs": 30}));
    j.code = "0".repeat(32);
    let (code, msgs, _) = run(t.path(), &j);
    assert_eq!(code, Some(EXIT_REFUSED));
    let [Message::Failed { message }] = msgs.as_slice() else { panic!("{msgs:?}") };
    assert!(
        message.contains("rmdistill and rmdistill-worker were built from different sources; rebuild both"),
        "{message}"
    );
    assert!(message.contains(&"0".repeat(32)) && message.contains("`synth`"), "{message}");
    assert!(!t.path().join("corpus").exists(), "nothing ran");
    // a job file from another protocol version, or none at all
    j = job(t.path(), "synth", json!({}));
    j.v = VERSION + 1;
    assert_eq!(run(t.path(), &j).0, Some(EXIT_REFUSED));
    let o = Command::new(env!("CARGO_BIN_EXE_rmdistill-worker"))
        .args(["run", t.path().join("none.json").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(EXIT_REFUSED));
    assert!(String::from_utf8_lossy(&o.stdout).contains("cannot read job file"));
}

#[test]
fn errors_are_typed() {
    let t = tempfile::tempdir().unwrap();
    // a parameter the stage rejects: Invalid with its field
    let j = job(t.path(), "synth", json!({"n_docs": 0}));
    let (code, msgs, _) = run(t.path(), &j);
    assert_eq!(code, Some(1));
    assert_eq!(msgs.last(), Some(&Message::Invalid { field: "n_docs".into(), message: "must be at least 1".into() }));
    // a missing input: the stage says which slot
    let j = job(t.path(), "sft", json!({"steps": 1}));
    let (code, msgs, _) = run(t.path(), &j);
    assert_eq!(code, Some(1));
    assert!(matches!(msgs.last(), Some(Message::Invalid { field, .. }) if field == "data"), "{msgs:?}");
}

#[test]
fn devices_answers_how_many_cuda_devices() {
    let o = Command::new(env!("CARGO_BIN_EXE_rmdistill-worker")).arg("devices").output().unwrap();
    assert!(o.status.success());
    let m: Message = serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    assert!(matches!(m, Message::Devices { .. }), "{m:?}");
}
