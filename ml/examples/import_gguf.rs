//! Converts a GGUF file into a Hugging Face checkpoint directory (what `rmdistill import-model` does).
//! usage: cargo run -p rmdistill-ml --example import_gguf -- FILE.gguf OUT_DIR
fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let m = rmdistill_ml::gguf::import_gguf(std::path::Path::new(&a[1]), std::path::Path::new(&a[2]))?;
    println!("wrote {} ({} parameters)", a[2], m.num_parameters());
    Ok(())
}
