//! The engine's side of the worker protocol (`rmdistill_stages::protocol`): stages on libtorch run in an
//! `rmdistill-worker` process per node, which isolates crashes, thread pools and GPU memory, and keeps libtorch out of
//! this binary. Here: finding the worker binary, running one node's job in it (forwarding its progress and log lines,
//! naming the signal that killed it), and asking it how many CUDA devices there are.

use crate::progress::Progress;
use rmdistill_stages::protocol::{EXIT_REFUSED, JOB_FILE, Job, Message};
use serde_json::Value;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// The variable that names the worker binary, overriding the default next to `rmdistill` itself.
pub const WORKER_VAR: &str = "RMDISTILL_WORKER";

/// How much of a worker's standard error a failure message quotes.
const STDERR_TAIL_LINES: usize = 20;

/// The worker binary: `$RMDISTILL_WORKER`, else `rmdistill-worker` in the directory of the running executable.
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(WORKER_VAR) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            anyhow::bail!("{WORKER_VAR}={}: no such file (it must name the rmdistill-worker binary)", p.display());
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().map_err(|e| anyhow::anyhow!("cannot locate the running executable: {e}"))?;
    let p = exe.with_file_name("rmdistill-worker");
    if !p.is_file() {
        anyhow::bail!(
            "the worker binary rmdistill-worker is missing: looked for {} (next to {}); build it with `cargo build` (both binaries), or set {WORKER_VAR}",
            p.display(),
            exe.display()
        );
    }
    Ok(p)
}

/// A command for the worker that dies with this process: SIGKILL when the thread that started it exits (the executor
/// thread waits for it, so that is when the runner dies), and it does not start at all if the runner is already gone.
fn command(bin: &Path) -> Command {
    let mut c = Command::new(bin);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(std::io::Error::other("the runner exited before its worker started"));
            }
            Ok(())
        });
    }
    c
}

/// The conventional name of a signal.
fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => return format!("signal {sig}"),
    };
    format!("{name} ({sig})")
}

/// What a death by this signal most likely means.
fn signal_hint(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => ": out of memory? see dmesg",
        libc::SIGSEGV | libc::SIGBUS | libc::SIGILL => ": a crash in native code",
        libc::SIGABRT => ": aborted (a failed assertion in native code?)",
        _ => "",
    }
}

/// Runs `job` in a worker process with its job file in `dir`, forwarding progress and log lines to `progress`.
/// Ok(summary) only after a clean run (`Done`, then exit status 0); otherwise the message names the node and why.
pub fn run_job(bin: &Path, job: &Job, dir: &Path, progress: &Progress) -> Result<Value, String> {
    let node = job.node.as_str();
    let file = dir.join(JOB_FILE);
    let text = serde_json::to_vec_pretty(job).map_err(|e| format!("{node}: cannot write its job: {e}"))?;
    std::fs::write(&file, text).map_err(|e| format!("{node}: cannot write {}: {e}", file.display()))?;
    let threads = job.threads.max(1).to_string();
    let mut child = command(bin)
        .arg("run")
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // libtorch's OpenMP pool is sized at start-up from these, before the worker can call set_num_threads.
        .env("OMP_NUM_THREADS", &threads)
        .env("MKL_NUM_THREADS", &threads)
        .spawn()
        .map_err(|e| format!("{node}: cannot start the worker {}: {e}", bin.display()))?;
    let pid = child.id();
    let tail: Arc<Mutex<VecDeque<String>>> = Arc::default();
    let stderr = child.stderr.take().expect("piped");
    let tail_w = tail.clone();
    let stderr_reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stderr);
        let mut buf = Vec::new();
        while r.read_until(b'\n', &mut buf).map(|n| n > 0).unwrap_or(false) {
            let mut line = String::from_utf8_lossy(&buf).trim_end().to_string();
            if line.len() > 500 {
                let cut = (0..=500).rev().find(|&i| line.is_char_boundary(i)).unwrap_or(0);
                line.truncate(cut);
                line.push('…');
            }
            let mut t = tail_w.lock().unwrap_or_else(|e| e.into_inner());
            if t.len() == STDERR_TAIL_LINES {
                t.pop_front();
            }
            t.push_back(line);
            buf.clear();
        }
    });
    let (mut summary, mut error) = (None, None);
    let mut noise = 0usize;
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut buf = Vec::new();
    while out.read_until(b'\n', &mut buf).map(|n| n > 0).unwrap_or(false) {
        match serde_json::from_slice::<Message>(&buf) {
            Ok(Message::Progress { done, total }) => progress.progress(node, done, total),
            Ok(Message::Log { message }) => progress.log(node, &message),
            Ok(Message::Done { summary: s }) => summary = Some(s),
            Ok(Message::Invalid { field, message }) => {
                error = Some(if field.is_empty() { message } else { format!("param `{field}`: {message}") })
            }
            Ok(Message::Failed { message }) => error = Some(message),
            Ok(Message::Devices { .. }) | Err(_) => noise += 1,
        }
        buf.clear();
    }
    let mut rest = Vec::new();
    let _ = out.read_to_end(&mut rest);
    let status = child.wait().map_err(|e| format!("{node}: waiting for worker pid {pid}: {e}"))?;
    let _ = stderr_reader.join();
    let tail = tail.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect::<Vec<_>>();
    let quoted = || {
        if tail.is_empty() {
            String::new()
        } else {
            format!("\n  worker stderr (last {} lines):\n    {}", tail.len(), tail.join("\n    "))
        }
    };
    if let Some(sig) = status.signal() {
        return Err(format!("{node}: worker pid {pid} killed by {}{}{}", signal_name(sig), signal_hint(sig), quoted()));
    }
    match (status.code(), summary, error) {
        (Some(0), Some(s), None) => Ok(s),
        (Some(EXIT_REFUSED), _, Some(e)) => Err(format!("{node}: the worker refused the job: {e}")),
        (_, _, Some(e)) => Err(e),
        (code, _, None) => Err(format!(
            "{node}: worker pid {pid} exited with status {} without a result{}{}",
            code.map_or("?".to_string(), |c| c.to_string()),
            if noise > 0 { format!(" ({noise} line(s) of its protocol were not understood)") } else { String::new() },
            quoted()
        )),
    }
}

/// How many CUDA devices the worker's libtorch can use.
pub fn cuda_devices(bin: &Path) -> anyhow::Result<usize> {
    let out = command(bin)
        .arg("devices")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| anyhow::anyhow!("cannot start the worker {}: {e}", bin.display()))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| match serde_json::from_str::<Message>(l) {
            Ok(Message::Devices { cuda }) => Some(cuda),
            _ => None,
        })
        .ok_or_else(|| anyhow::anyhow!("{} devices: no answer (exit status {})", bin.display(), out.status))
}

#[cfg(test)]
mod tests {
    #[test]
    fn signals_are_named() {
        assert_eq!(super::signal_name(libc::SIGKILL), "SIGKILL (9)");
        assert_eq!(super::signal_name(libc::SIGSEGV), "SIGSEGV (11)");
        assert_eq!(super::signal_name(64), "signal 64");
        assert!(super::signal_hint(libc::SIGKILL).contains("out of memory"));
    }
}
