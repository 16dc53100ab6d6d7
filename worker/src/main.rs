//! `rmdistill-worker`: the process the engine starts for each node of a stage on libtorch (`run JOB`), asks how many
//! CUDA devices there are (`devices`), and delegates `rmdistill import-model` to (`import-model`). Protocol:
//! `rmdistill_stages::protocol`. Not meant to be run by hand, though it can be (`run` on a job file left in scratch).

use clap::{Parser, Subcommand};
use rmdistill_stages::protocol::{EXIT_REFUSED, Job, Message};
use rmdistill_worker::job::{self, Channel};
use std::io::Write;
use std::os::fd::FromRawFd;
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

/// The protocol channel: the original standard output, after file descriptor 1 is pointed at standard error, so
/// that a stray `println!` (ours or a library's) lands in the log instead of corrupting the protocol.
fn protocol_channel() -> Channel {
    // SAFETY: plain descriptor duplication at start-up, before any other thread exists.
    let fd = unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 || unsafe { libc::dup2(2, 1) } < 0 {
        eprintln!("rmdistill-worker: cannot set up the protocol descriptor: {}", std::io::Error::last_os_error());
        std::process::exit(EXIT_REFUSED);
    }
    // SAFETY: `fd` is a descriptor this process owns from here on.
    Channel::new(Box::new(unsafe { std::fs::File::from_raw_fd(fd) }))
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { job } => {
            let channel = protocol_channel();
            let parsed = std::fs::read(&job)
                .map_err(|e| format!("cannot read job file {}: {e}", job.display()))
                .and_then(|b| {
                    serde_json::from_slice::<Job>(&b).map_err(|e| {
                        format!(
                            "job file {}: {e} (rmdistill and rmdistill-worker built from different sources? rebuild both)",
                            job.display()
                        )
                    })
                });
            let code = match parsed {
                Ok(j) => job::run(&j, &channel),
                Err(message) => {
                    channel.send(&Message::Failed { message });
                    EXIT_REFUSED
                }
            };
            std::process::exit(code);
        }
        Command::Devices => {
            let channel = protocol_channel();
            let tch = rmdistill_ml::tch::Cuda::is_available();
            let cuda = if tch { rmdistill_ml::tch::Cuda::device_count().max(0) as usize } else { 0 };
            channel.send(&Message::Devices { cuda });
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
