//! One job in the worker process (the protocol is `rmdistill_stages::protocol`): the job is checked (format version,
//! known kind, and the engine's code identity of the kind against this binary's own), libtorch's thread pools are
//! sized as the engine asked, the stage runs behind a [`Ctx`] whose progress and log lines become protocol messages,
//! and the outcome is the last message.

use rmdistill_stages::port::{self, Ctx, Device, InputArtifact, StageError};
use rmdistill_stages::protocol::{EXIT_REFUSED, Job, Message, OUT_OF_MEMORY_ADVICE, VERSION};
use serde_json::{Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where protocol messages go: one line each, flushed at once (the engine reads them as they come).
pub struct Channel {
    out: Mutex<Box<dyn Write + Send>>,
}

impl Channel {
    pub fn new(out: Box<dyn Write + Send>) -> Channel {
        Channel { out: Mutex::new(out) }
    }

    pub fn send(&self, m: &Message) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // A closed pipe means the engine is gone; the job's result has nowhere to go, so errors are ignored.
        let _ = writeln!(out, "{}", m.line());
        let _ = out.flush();
    }
}

/// The protocol channel: the original standard output, after file descriptor 1 is pointed at standard error, so
/// that a stray `println!` (ours or a library's) lands in the log instead of corrupting the protocol.
pub fn protocol_channel() -> Channel {
    use std::os::fd::FromRawFd;
    // SAFETY: plain descriptor duplication at start-up, before any other thread exists.
    let fd = unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 || unsafe { libc::dup2(2, 1) } < 0 {
        eprintln!("rmdistill-worker: cannot set up the protocol descriptor: {}", std::io::Error::last_os_error());
        std::process::exit(EXIT_REFUSED);
    }
    // SAFETY: `fd` is a descriptor this process owns from here on.
    Channel::new(Box::new(unsafe { std::fs::File::from_raw_fd(fd) }))
}

/// Ends the worker process once its job has reported: standard output and error flushed, then `_exit`, skipping the
/// C++ static destructors libtorch registers at start-up — they took ~150 ms per process (strace of a forked
/// evaluation child: "done" sent, 150 ms of user time, then exit), paid by every node because the engine waits for
/// the worker's exit. Nothing of the job's depends on them: its files are written and closed before it reports.
pub fn exit_now(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: terminates the process; nothing runs after this call.
    unsafe { libc::_exit(code) }
}

/// Runs the job in `file` with its messages on standard output; returns the exit status (`run JOB`, and each child
/// of `serve`).
pub fn run_file(file: &Path) -> i32 {
    let channel = protocol_channel();
    let parsed =
        std::fs::read(file).map_err(|e| format!("cannot read job file {}: {e}", file.display())).and_then(|b| {
            serde_json::from_slice::<Job>(&b).map_err(|e| {
                format!(
                    "job file {}: {e} (rmdistill and rmdistill-worker built from different sources? rebuild both)",
                    file.display()
                )
            })
        });
    match parsed {
        Ok(j) => run(&j, &channel),
        Err(message) => {
            channel.send(&Message::Failed { message });
            EXIT_REFUSED
        }
    }
}

struct JobCtx<'a> {
    job: &'a Job,
    channel: &'a Channel,
    empty: Vec<InputArtifact>,
}

impl Ctx for JobCtx<'_> {
    fn params(&self) -> &Map<String, Value> {
        &self.job.params
    }
    fn inputs(&self, slot: &str) -> &[InputArtifact] {
        self.job.inputs.get(slot).unwrap_or(&self.empty)
    }
    fn external(&self, param: &str) -> Option<&Path> {
        self.job.externals.get(param).map(PathBuf::as_path)
    }
    fn output_path(&self, name: &str) -> PathBuf {
        self.job.outputs.get(name).cloned().unwrap_or_else(|| panic!("stage {} has no output {name}", self.job.kind))
    }
    fn progress(&self, done: u64, total: u64) {
        self.channel.send(&Message::Progress { done, total });
    }
    fn log(&self, message: &str) {
        self.channel.send(&Message::Log { message: message.to_string() });
    }
    fn warn(&self, message: &str) {
        self.channel.send(&Message::Warn { message: message.to_string() });
    }
    fn device(&self) -> Device {
        self.job.device
    }
    fn threads(&self) -> usize {
        self.job.threads
    }
}

/// Why a job is not run at all.
pub fn refusal(job: &Job) -> Option<String> {
    if job.v != VERSION {
        return Some(format!(
            "job format version {} is not this worker's ({VERSION}): rmdistill and rmdistill-worker were built from different sources; rebuild both (`cargo build`)",
            job.v
        ));
    }
    let Some(stage) = rmdistill_stages::stage(&job.kind) else {
        return Some(format!("unknown stage kind `{}`", job.kind));
    };
    let own = port::code_identity(stage);
    if job.code != own {
        return Some(format!(
            "rmdistill and rmdistill-worker were built from different sources; rebuild both (`cargo build`): the code identity of stage kind `{}` is {} in rmdistill and {own} in this worker",
            job.kind, job.code
        ));
    }
    if crate::implementation(&job.kind).is_none() {
        return Some(format!("stage kind `{}` has no implementation in this worker", job.kind));
    }
    None
}

/// Runs a job and reports its outcome on `channel`; returns the process's exit status.
pub fn run(job: &Job, channel: &Channel) -> i32 {
    if let Some(why) = refusal(job) {
        channel.send(&Message::Failed { message: why });
        return EXIT_REFUSED;
    }
    let run = crate::implementation(&job.kind).expect("checked by refusal");
    // Set before any tensor work: libtorch sizes its pools once. jobs × threads ≤ cores is the engine's to keep.
    rmdistill_ml::tch::set_num_threads(job.threads.max(1) as i32);
    rmdistill_ml::tch::set_num_interop_threads(job.interop_threads.max(1) as i32);
    let ctx = JobCtx { job, channel, empty: Vec::new() };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&ctx)));
    let (msg, code) = match result {
        Ok(Ok(summary)) => (Message::Done { summary }, 0),
        Ok(Err(StageError::Invalid { field, message })) => (Message::Invalid { field, message }, 1),
        Ok(Err(StageError::Failed(message))) => {
            (Message::Failed { message: out_of_memory(&message).unwrap_or(message) }, 1)
        }
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let message = out_of_memory(&msg)
                .unwrap_or_else(|| format!("stage `{}` panicked (a bug in rmdistill): {msg}", job.kind));
            (Message::Failed { message }, 1)
        }
    };
    channel.send(&msg);
    code
}

/// libtorch's failed allocation, said as what it is: tch's infallible operations panic with the C++ exception's
/// text (the allocator's sentence and a page of stack frames), which the job would otherwise report as a bug.
/// `None` for any other message.
fn out_of_memory(msg: &str) -> Option<String> {
    const SIGNS: [&str; 3] = ["can't allocate memory", "CUDA out of memory", "OutOfMemoryError"];
    if !SIGNS.iter().any(|s| msg.contains(s)) {
        return None;
    }
    // the CPU allocator says "tried to allocate N bytes", CUDA's "Tried to allocate 2.00 GiB"
    let size = msg
        .split("ried to allocate ")
        .nth(1)
        .map(|rest| rest.split_whitespace().take(2).map(|w| w.trim_end_matches(['.', ','])).collect::<Vec<_>>())
        .map(|w| match (w.first().and_then(|n| n.parse::<f64>().ok()), w.get(1)) {
            (Some(b), Some(&"bytes")) => format!(" {:.2} GB", b / 1e9),
            _ => format!(" {}", w.join(" ")),
        })
        .unwrap_or_default();
    let device = if msg.contains("CUDA") { "the GPU" } else { "this machine" };
    Some(format!("out of memory: libtorch could not allocate{size} on {device}: {OUT_OF_MEMORY_ADVICE}"))
}

#[cfg(test)]
mod tests {
    use super::out_of_memory;

    #[test]
    fn libtorch_allocation_failures_are_said_as_out_of_memory_without_the_stack() {
        // the panic message of an sft with d_model = 100000 on a 24 GB machine (2026-12-03), frames cut short
        let cpu = "called `Result::unwrap()` on an `Err` value: Torch(\"[enforce fail at alloc_cpu.cpp:127] err == 0. \
                   DefaultCPUAllocator: can't allocate memory: you tried to allocate 120000000000 bytes. Error code 12 \
                   (Cannot allocate memory)\\nframe #0: c10::ThrowEnforceNotMet(char const*, int, char const*\")";
        let m = out_of_memory(cpu).unwrap();
        assert!(m.starts_with("out of memory: libtorch could not allocate 120.00 GB on this machine"), "{m}");
        assert!(!m.contains("frame #") && !m.contains("bug"), "{m}");
        let gpu = "Torch(\"CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 139.8 GiB\")";
        let m = out_of_memory(gpu).unwrap();
        assert!(m.contains("allocate 2.00 GiB on the GPU") && m.contains("--jobs"), "{m}");
        assert_eq!(out_of_memory("index out of range: 7 >= 5"), None);
    }
}
