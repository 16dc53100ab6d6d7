//! The engine's side of the worker protocol (`rmdistill_stages::protocol`): stages on libtorch run in an
//! `rmdistill-worker` process per node, which isolates crashes, thread pools and GPU memory, and keeps libtorch out of
//! this binary. Here: finding the worker binary, running one node's job in it (forwarding its progress and log lines,
//! naming the signal that killed it), and asking it how many CUDA devices there are. A run forks its worker
//! processes from a fork server (`rmdistill-worker serve`) that has paid libtorch's start-up once.

use crate::progress::Progress;
use rmdistill_stages::protocol::{EXIT_REFUSED, JOB_FILE, Job, Message, OUT_OF_MEMORY_ADVICE};
use serde_json::Value;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

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
pub(crate) fn signal_name(sig: i32) -> String {
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

/// The line Rust's default handler writes before it aborts on a failed allocation.
fn is_alloc_failure(line: &str) -> bool {
    line.starts_with("memory allocation of ") && line.ends_with(" failed")
}

/// What a death by this signal most likely means.
pub(crate) fn signal_hint(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => ": out of memory? see dmesg",
        libc::SIGSEGV | libc::SIGBUS | libc::SIGILL => ": a crash in native code",
        libc::SIGABRT => ": aborted (a failed assertion in native code?)",
        _ => "",
    }
}

/// A started worker: its pid, standard output (protocol) and error (log), and how to wait for its exit.
struct Started {
    pid: u32,
    stdout: Box<dyn Read + Send>,
    stderr: Box<dyn Read + Send>,
    wait: Box<dyn FnOnce() -> std::io::Result<std::process::ExitStatus> + Send>,
}

/// Runs `job` in a worker process with its job file in `dir`, forwarding progress and log lines to `progress`.
/// Ok(summary) only after a clean run (`Done`, then exit status 0); otherwise the message names the node and why.
/// The process is a child of this run's fork server ([`fork_server`]) when there is one, else started afresh; its
/// pid is written beside the job file ([`PID_FILE`]).
pub fn run_job(bin: &Path, job: &Job, dir: &Path, progress: &Progress) -> Result<Value, String> {
    let node = job.node.as_str();
    let file = dir.join(JOB_FILE);
    let text = serde_json::to_vec_pretty(job).map_err(|e| format!("{node}: cannot write its job: {e}"))?;
    std::fs::write(&file, text).map_err(|e| format!("{node}: cannot write {}: {e}", file.display()))?;
    let threads = job.threads.max(1);
    let forked = match fork_server(bin, threads) {
        Some(server) => server.start(&file).map_err(|e| format!("{node}: {e}"))?,
        None => None,
    };
    let started = match forked {
        Some(s) => s,
        None => spawn(bin, &file, threads).map_err(|e| format!("{node}: {e}"))?,
    };
    let pid = started.pid;
    let _ = std::fs::write(dir.join(PID_FILE), format!("{pid}\n"));
    let tail: Arc<Mutex<VecDeque<String>>> = Arc::default();
    let stderr = started.stderr;
    let tail_w = tail.clone();
    // Rust's handler for a failed allocation says so in one line, then aborts (a backtrace may push that line out
    // of the tail): kept apart, so that the abort is said as out of memory
    let stderr_reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stderr);
        let mut buf = Vec::new();
        let mut alloc_failure = None;
        while r.read_until(b'\n', &mut buf).map(|n| n > 0).unwrap_or(false) {
            let mut line = String::from_utf8_lossy(&buf).trim_end().to_string();
            if alloc_failure.is_none() && is_alloc_failure(&line) {
                alloc_failure = Some(line.clone());
            }
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
        alloc_failure
    });
    let (mut summary, mut error) = (None, None);
    let mut noise = 0usize;
    let mut out = BufReader::new(started.stdout);
    let mut buf = Vec::new();
    while out.read_until(b'\n', &mut buf).map(|n| n > 0).unwrap_or(false) {
        match serde_json::from_slice::<Message>(&buf) {
            Ok(Message::Progress { done, total }) => progress.progress(node, done, total),
            Ok(Message::Log { message }) => progress.log(node, &message),
            Ok(Message::Warn { message }) => progress.warning(node, &message),
            Ok(Message::Done { summary: s }) => summary = Some(s),
            Ok(Message::Invalid { field, message }) => {
                error = Some(rmdistill_stages::port::invalid_message(&job.kind, &field, &message))
            }
            Ok(Message::Failed { message }) => error = Some(message),
            Ok(Message::Devices { .. }) | Err(_) => noise += 1,
        }
        buf.clear();
    }
    let mut rest = Vec::new();
    let _ = out.read_to_end(&mut rest);
    let status = (started.wait)().map_err(|e| format!("{node}: waiting for worker pid {pid}: {e}"))?;
    let alloc_failure = stderr_reader.join().ok().flatten();
    let tail = tail.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect::<Vec<_>>();
    let quoted = || {
        if tail.is_empty() {
            String::new()
        } else {
            format!("\n  worker stderr (last {} lines):\n    {}", tail.len(), tail.join("\n    "))
        }
    };
    if let Some(sig) = status.signal() {
        let hint = match (&alloc_failure, sig) {
            (Some(line), libc::SIGABRT) => format!(": out of memory ({line}): {OUT_OF_MEMORY_ADVICE}"),
            _ => signal_hint(sig).to_string(),
        };
        return Err(format!("{node}: worker pid {pid} killed by {}{hint}{}", signal_name(sig), quoted()));
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

/// A worker process of its own for the job in `file`.
fn spawn(bin: &Path, file: &Path, threads: usize) -> Result<Started, String> {
    let threads = threads.to_string();
    let mut child = command(bin)
        .arg("run")
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .envs(crate::node_ctx::worker_env(&threads))
        .spawn()
        .map_err(|e| format!("cannot start the worker {}: {e}", bin.display()))?;
    Ok(Started {
        pid: child.id(),
        stdout: Box::new(child.stdout.take().expect("piped")),
        stderr: Box::new(child.stderr.take().expect("piped")),
        wait: Box::new(move || child.wait()),
    })
}

/// Set to `0` to start a worker process per node instead of forking it from a server (for debugging).
pub const FORK_SERVER_VAR: &str = "RMDISTILL_FORK_SERVER";

/// The file beside a job's file that holds the pid of the process running it.
pub const PID_FILE: &str = "worker.pid";

/// What the server said about one request.
enum Reply {
    Started(u32),
    Refused(String),
    Exit(i32),
}

/// Request id → who waits for its replies; pid → request id once started.
type Waiting = (HashMap<u64, std::sync::mpsc::Sender<Reply>>, HashMap<u32, u64>);

/// This process's connection to a running `rmdistill-worker serve` (see the worker's `serve` module).
struct ForkServer {
    sock: OwnedFd,
    waiting: Mutex<Waiting>,
    next: std::sync::atomic::AtomicU64,
    /// The thread that started the server and waits for it.
    keeper: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The fork server for `bin` and `threads` (started the first time; `None` when it is disabled or cannot serve,
/// and then every job gets a process of its own).
fn fork_server(bin: &Path, threads: usize) -> Option<Arc<ForkServer>> {
    if std::env::var(FORK_SERVER_VAR).is_ok_and(|v| v == "0") {
        return None;
    }
    let mut servers = SERVERS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    servers.entry((bin.to_path_buf(), threads)).or_insert_with(|| ForkServer::start_server(bin, threads)).clone()
}

/// This process's fork servers by worker binary and thread count (`None`: it could not serve).
type Servers = Mutex<HashMap<(PathBuf, usize), Option<Arc<ForkServer>>>>;
static SERVERS: OnceLock<Servers> = OnceLock::new();

/// Ends this process's fork servers once no node runs (the end of a run): each exits when its socket closes, after
/// reaping its children, and is waited for — so the workers' CPU time is counted as the run's (`time rmdistill run`),
/// as it was when each worker was this process's own child.
pub fn shutdown_fork_servers() {
    let Some(servers) = SERVERS.get() else { return };
    let drained: Vec<Arc<ForkServer>> =
        servers.lock().unwrap_or_else(|e| e.into_inner()).drain().filter_map(|(_, s)| s).collect();
    for server in drained {
        // SAFETY: shutting down a socket this process owns; the server reads end of file.
        unsafe { libc::shutdown(server.sock.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(keeper) = server.keeper.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = keeper.join();
        }
    }
}

impl ForkServer {
    /// Starts a server, from a thread that lives as long as it does (the server dies with the thread that started
    /// it), and waits for it to say it is ready.
    fn start_server(bin: &Path, threads: usize) -> Option<Arc<ForkServer>> {
        let (ours, theirs) = seqpacket_pair().ok()?;
        let threads = threads.to_string();
        let mut cmd = command(bin);
        cmd.arg("serve")
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .envs(crate::node_ctx::worker_env(&threads));
        let (tx, rx) = std::sync::mpsc::channel();
        let keeper = std::thread::spawn(move || {
            let spawned = cmd.spawn();
            drop(cmd); // it held the server's end of the socket: only the server may, or its exit goes unseen
            match spawned {
                Ok(mut child) => {
                    let _ = tx.send(true);
                    let _ = child.wait();
                }
                Err(_) => {
                    let _ = tx.send(false);
                }
            }
        });
        if !rx.recv().unwrap_or(false) {
            return None;
        }
        if packet(&ours).ok()? != "ready" {
            return None;
        }
        let server = Arc::new(ForkServer {
            sock: ours,
            waiting: Mutex::default(),
            next: Default::default(),
            keeper: Mutex::new(Some(keeper)),
        });
        let reader = server.clone();
        std::thread::spawn(move || reader.dispatch());
        Some(server)
    }

    /// Routes the server's replies to whoever waits for them, until it exits.
    fn dispatch(&self) {
        while let Ok(text) = packet(&self.sock) {
            let mut parts = text.splitn(3, ' ');
            let (kind, a, b) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            let (by_id, by_pid) = &mut *w;
            match kind {
                Some("started") => {
                    let (Ok(id), Ok(pid)) = (a.parse::<u64>(), b.parse::<u32>()) else { continue };
                    by_pid.insert(pid, id);
                    if let Some(tx) = by_id.get(&id) {
                        let _ = tx.send(Reply::Started(pid));
                    }
                }
                Some("refused") => {
                    if let Some(tx) = a.parse::<u64>().ok().and_then(|id| by_id.remove(&id)) {
                        let _ = tx.send(Reply::Refused(b.to_string()));
                    }
                }
                Some("exit") => {
                    let (Ok(pid), Ok(status)) = (a.parse::<u32>(), b.parse::<i32>()) else { continue };
                    if let Some(tx) = by_pid.remove(&pid).and_then(|id| by_id.remove(&id)) {
                        let _ = tx.send(Reply::Exit(status));
                    }
                }
                _ => {}
            }
        }
        // the server is gone: whoever still waits hears it when its sender is dropped here
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        w.0.clear();
        w.1.clear();
    }

    /// Asks the server to fork a child for the job in `file`. `Ok(None)`: the server is gone before it started the
    /// job (the caller starts a process of its own).
    fn start(&self, file: &Path) -> Result<Option<Started>, String> {
        let (out_r, out_w) = pipe().map_err(|e| format!("cannot make a pipe: {e}"))?;
        let (err_r, err_w) = pipe().map_err(|e| format!("cannot make a pipe: {e}"))?;
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::channel();
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).0.insert(id, tx);
        let request = format!("run {id} {}", file.display());
        if send_with_fds(&self.sock, request.as_bytes(), &[out_w.as_raw_fd(), err_w.as_raw_fd()]).is_err() {
            self.waiting.lock().unwrap_or_else(|e| e.into_inner()).0.remove(&id);
            return Ok(None);
        }
        // only the child holds the write ends now, so end of file on them means it is gone
        drop((out_w, err_w));
        match rx.recv() {
            Ok(Reply::Started(pid)) => Ok(Some(Started {
                pid,
                stdout: Box::new(std::fs::File::from(out_r)),
                stderr: Box::new(std::fs::File::from(err_r)),
                wait: Box::new(move || match rx.recv() {
                    Ok(Reply::Exit(status)) => Ok(std::process::ExitStatus::from_raw(status)),
                    _ => Err(std::io::Error::other("the fork server exited before reporting the end of the worker")),
                }),
            })),
            Ok(Reply::Refused(why)) => Err(format!("the fork server could not start the worker: {why}")),
            Ok(Reply::Exit(_)) | Err(_) => Ok(None),
        }
    }
}

/// A connected pair of SOCK_SEQPACKET sockets (each message one packet), close-on-exec.
fn seqpacket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: a valid array for the two descriptors.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptors were just created and are owned here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: a valid array for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptors were just created and are owned here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The next packet on a seqpacket socket, as text; an error when it is closed.
fn packet(sock: &OwnedFd) -> std::io::Result<String> {
    let mut buf = vec![0u8; 8192];
    // SAFETY: a valid buffer of that length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if n == 0 {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
    }
    Ok(String::from_utf8_lossy(&buf[..n as usize]).into_owned())
}

/// One packet carrying `fds` (SCM_RIGHTS).
fn send_with_fds(sock: &OwnedFd, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut _, iov_len: bytes.len() };
    let payload = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE is a pure size computation.
    let mut cmsg = vec![0u64; (unsafe { libc::CMSG_SPACE(payload) } as usize).div_ceil(8)];
    // SAFETY: msghdr is plain data; every pointer set below refers to a live buffer of the stated length.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(payload) as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(payload) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c) as *mut RawFd, fds.len());
        if libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
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
    fn rust_s_allocation_failure_line_is_recognised() {
        assert!(super::is_alloc_failure("memory allocation of 400000000000000004 bytes failed"));
        assert!(!super::is_alloc_failure("thread 'main' panicked: memory allocation of 4 bytes failed in a test"));
        assert!(!super::is_alloc_failure("memory allocation of 4 bytes failed, retrying"));
    }

    #[test]
    fn signals_are_named() {
        assert_eq!(super::signal_name(libc::SIGKILL), "SIGKILL (9)");
        assert_eq!(super::signal_name(libc::SIGSEGV), "SIGSEGV (11)");
        assert_eq!(super::signal_name(64), "signal 64");
        assert!(super::signal_hint(libc::SIGKILL).contains("out of memory"));
    }
}
