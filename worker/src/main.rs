//! `rmdistill-worker`: the process the engine starts for each node of a stage on libtorch (`run JOB`), asks how many
//! CUDA devices there are (`devices`), forks jobs from once started (`serve`), and delegates `rmdistill import-model` to (`import-model`). Protocol:
//! `rmdistill_stages::protocol`. Not meant to be run by hand, though it can be (`run` on a job file left in scratch).

use clap::{Parser, Subcommand};
use rmdistill_stages::protocol::Message;
use rmdistill_worker::job;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "rmdistill-worker", version, about = "Runs one rmdistill node on libtorch for the engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the job in JOB (JSON, written by the engine); protocol messages on standard output.
    Run { job: PathBuf },
    /// Fork a child per job the engine sends on standard input (a socket), so that no job pays libtorch's
    /// start-up (see the `serve` module).
    #[command(hide = true)]
    Serve,
    /// Report how many CUDA devices libtorch can use.
    Devices,
    /// Convert a GGUF model into a Hugging Face checkpoint directory (what `rmdistill import-model` runs).
    ImportModel {
        #[arg(long)]
        gguf: Option<PathBuf>,
        #[arg(long)]
        smollm2: bool,
        #[arg(long)]
        python: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { job } => job::exit_now(job::run_file(&job)),
        Command::Serve => std::process::exit(rmdistill_worker::serve::serve()),
        Command::Devices => {
            let channel = job::protocol_channel();
            let tch = rmdistill_ml::tch::Cuda::is_available();
            let cuda = if tch { rmdistill_ml::tch::Cuda::device_count().max(0) as usize } else { 0 };
            channel.send(&Message::Devices { cuda });
            job::exit_now(0)
        }
        Command::ImportModel { gguf, smollm2, python, out } => {
            if let Err(e) = import_model(gguf, smollm2, python, &out) {
                eprintln!("error: {e:#}");
                std::process::exit(2); // rmdistill's "invalid input" status, which `rmdistill import-model` passes on
            }
        }
    }
}

/// `rmdistill import-model`: written beside the destination and renamed into place, so a failed import leaves
/// nothing half-done.
fn import_model(gguf: Option<PathBuf>, smollm2: bool, python: Option<PathBuf>, out: &Path) -> anyhow::Result<()> {
    let src = match (gguf, smollm2) {
        (Some(g), false) => g,
        (None, true) => {
            let py = python.unwrap_or_else(|| {
                let venv = PathBuf::from(".venv/bin/python");
                if venv.exists() { venv } else { PathBuf::from("python3") }
            });
            rmdistill_ml::gguf::locate_smollm2_gguf(&py)?
        }
        _ => anyhow::bail!("import-model: give a .gguf file or --smollm2 (not both)"),
    };
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        anyhow::bail!("import-model: {} exists and is not empty", out.display());
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let tmp = tempfile::TempDir::new_in(parent)?;
    rmdistill_ml::gguf::import_gguf(&src, tmp.path())
        .map_err(|e| anyhow::anyhow!("import-model {}: {e:#}", src.display()))?;
    let _ = std::fs::remove_dir(out);
    std::fs::rename(tmp.keep(), out)?;
    let mut so = std::io::stdout();
    let _ = writeln!(so, "imported {} -> {}", src.display(), out.display());
    Ok(())
}
