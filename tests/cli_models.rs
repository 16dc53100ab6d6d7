//! `import-model`: a GGUF file becomes a Hugging Face checkpoint directory, atomically.

mod common;
use common::*;

#[test]
fn import_model_writes_a_checkpoint_and_refuses_to_clobber() {
    let w = Work::new();
    let gguf = repo().join("ml/tests/fixtures/llama-tiny.gguf");
    let out = w.ok(&["import-model", gguf.to_str().unwrap(), "-o", "ckpt"]);
    assert!(out.contains("imported"), "{out}");
    // (this tiny fixture carries no vocabulary, so no tokenizer.json; SmolLM2 does — see ml/tests/gguf.rs)
    for f in ["config.json", "model.safetensors"] {
        assert!(w.path().join("ckpt").join(f).is_file(), "{f} missing");
    }
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.path().join("ckpt/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "llama");
    let o = w.run(&["import-model", gguf.to_str().unwrap(), "-o", "ckpt"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(s(&o.stderr).contains("exists and is not empty"), "{}", s(&o.stderr));
    // A file that is not GGUF fails without leaving a directory behind.
    w.write("bad.gguf", "not a gguf file");
    let o = w.run(&["import-model", "bad.gguf", "-o", "bad"]);
    assert!(!o.status.success());
    assert!(s(&o.stderr).contains("bad.gguf"), "{}", s(&o.stderr));
    assert!(!w.path().join("bad").exists());
    let leftovers: Vec<_> = std::fs::read_dir(w.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}
