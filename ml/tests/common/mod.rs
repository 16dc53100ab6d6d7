//! Helpers shared by the integration tests: fixture paths, the Python interpreter, tensor comparisons.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use tch::Tensor;

/// One intra-op torch thread: tests run in parallel on a 2-core machine, where more threads only contend.
pub fn one_thread() {
    tch::set_num_threads(1);
}

/// libtorch's default generator and its intra-op thread count are process-wide, and the tests of one binary run on
/// parallel threads: a test that seeds the generator and compares two runs (or two ways of computing one thing that
/// both draw from it) holds this guard for its whole body, so that no test beside it draws between its seed and its
/// draws. Without it, `training_is_deterministic_and_accumulation_matches_big_batch` failed once in CI (weights 0.14
/// apart) while the SFT test beside it initialised its model.
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that failed while holding it poisons it; the generator is re-seeded by the next holder anyway.
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn fixtures() -> PathBuf {
    one_thread();
    repo_root().join("ml/tests/fixtures")
}

/// `RMDISTILL_REPO` (a test binary run away from its checkout, e.g. by scripts/gpu/check.sh on a GPU machine), else
/// the checkout it was built from.
pub fn repo_root() -> PathBuf {
    std::env::var_os("RMDISTILL_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")))
}

/// The device the device-independent checks run on: `RMDISTILL_TEST_DEVICE=cuda` (scripts/gpu/check.sh on a GPU
/// machine), else the CPU. Asking for CUDA where libtorch sees none fails rather than testing the CPU instead.
pub fn test_device() -> tch::Device {
    match std::env::var("RMDISTILL_TEST_DEVICE").as_deref() {
        Ok("cuda") => {
            assert!(tch::Cuda::is_available(), "RMDISTILL_TEST_DEVICE=cuda but libtorch sees no CUDA device");
            tch::Device::Cuda(0)
        }
        Ok("cpu") | Err(_) => tch::Device::Cpu,
        Ok(other) => panic!("RMDISTILL_TEST_DEVICE={other:?}: expected cpu or cuda"),
    }
}

/// `RMDISTILL_PYTHON`, else `<repo>/.venv/bin/python`; `None` (the test then skips, saying why) if absent.
pub fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RMDISTILL_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let p = repo_root().join(".venv/bin/python");
    p.exists().then_some(p)
}

pub fn shared_data() -> PathBuf {
    std::env::var_os("RMDISTILL_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data")))
}

pub fn read_tensors(path: &std::path::Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_device(tch::Device::Cpu).to_kind(tch::Kind::Double);
    let b = b.to_device(tch::Device::Cpu).to_kind(tch::Kind::Double);
    assert_eq!(a.size(), b.size(), "shape mismatch");
    f64::try_from((a - b).abs().max()).unwrap()
}

pub fn to_vec2(t: &Tensor) -> Vec<Vec<i64>> {
    Vec::<Vec<i64>>::try_from(t).unwrap()
}

/// The message a caught panic carried (`panic!` with a literal or a formatted string), for a test's failure report.
pub fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
}

/// The tokenizer of a checkpoint directory's `tokenizer.json` (or of a `tokenizer.json` file), with the special
/// tokens of the `tokenizer_config.json` beside it: read as the pipeline reads one (see `Codec::load` in the
/// worker), by `rmdistill_stages::tokenizer_file::read` and [`rmdistill_ml::Tokenizer::with_config`]. The error
/// names the file.
pub fn load_tokenizer(path: &std::path::Path) -> anyhow::Result<rmdistill_ml::Tokenizer> {
    let (file, dir) =
        if path.is_dir() { (path.join("tokenizer.json"), Some(path)) } else { (path.to_path_buf(), path.parent()) };
    let inner = rmdistill_stages::tokenizer_file::read(&file)
        .map_err(|e| anyhow::anyhow!("loading {}: {e}", file.display()))?;
    rmdistill_ml::Tokenizer::with_config(inner, dir)
}
