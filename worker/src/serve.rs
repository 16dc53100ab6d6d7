//! `rmdistill-worker serve`: a fork server. A worker process spends ~0.6 CPU-seconds in libtorch's static
//! initialisation (operator registration) before it reads its job, while a node of the embedded experiment computes
//! for 0.5–5 s; over the default run's ~770 nodes on libtorch that start-up was a fifth of the CPU time. So the
//! engine starts this server once per run and thread count, and the server forks one child per node: the child
//! starts with libtorch initialised and then runs the job exactly as `run JOB` does, with its own standard output
//! (protocol messages) and standard error (log) on pipes the engine made.
//!
//! Protocol, on the SOCK_SEQPACKET socket at descriptor 0, one packet per message:
//! - engine → server: `run <id> <job file>`, with two descriptors (SCM_RIGHTS): the child's stdout and stderr.
//! - server → engine: `started <id> <pid>`, `refused <id> <why>`, then `exit <pid> <wait status>` when it ends.
//!
//! Forking is safe because the server is single-threaded and never runs a tensor operation itself: no OpenMP pool
//! and no CUDA context exist to be inherited (it checks the first at start and refuses to serve otherwise, and the
//! engine then starts a process per node as before). Each child dies with the server (PR_SET_PDEATHSIG), and the
//! server dies with the engine and exits when the engine closes the socket.

use std::os::fd::RawFd;
use std::path::Path;

const SOCK: RawFd = 0;

/// Serves until the engine closes the socket; returns the exit status.
pub fn serve() -> i32 {
    let threads = std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0);
    if threads != 1 {
        // the engine falls back to a process per node
        send(&format!("unsafe {threads} threads at start-up; forking them is not safe"));
        return rmdistill_stages::protocol::EXIT_REFUSED;
    }
    send("ready");
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    loop {
        reap();
        let mut pfd = libc::pollfd { fd: SOCK, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd. The timeout bounds how late a child's exit is reported.
        let n = unsafe { libc::poll(&mut pfd, 1, 10) };
        if n <= 0 {
            continue;
        }
        match receive() {
            Some((text, fds)) => start(me, &text, &fds),
            None => {
                // the engine is done (or gone): reap the children that have exited (at the end of a run, every
                // one has), so that their CPU time is counted in ours when the engine waits for this process;
                // running ones (an engine that died) are not waited for: our exit kills them
                reap();
                return 0;
            }
        }
    }
}

/// One packet to the engine (a failure means the engine is gone; the next receive says so).
fn send(text: &str) {
    // SAFETY: a valid buffer of that length.
    unsafe { libc::send(SOCK, text.as_ptr().cast(), text.len(), libc::MSG_NOSIGNAL) };
}

/// Reports every child that ended since the last call.
fn reap() {
    loop {
        let mut status = 0;
        // SAFETY: a valid pointer for the status.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        send(&format!("exit {pid} {status}"));
    }
}

/// The next request and its descriptors; None when the socket is closed or broken.
fn receive() -> Option<(String, Vec<RawFd>)> {
    let mut buf = vec![0u8; 8192];
    // room for a few descriptors: a request carries two
    let mut cmsg = [0u64; 8];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain data; the fields set below point at live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg) as _;
    // SAFETY: msg describes valid buffers.
    let n = unsafe { libc::recvmsg(SOCK, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n <= 0 {
        return None;
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote into `cmsg`, as CMSG_* define.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const RawFd;
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    fds.push(std::ptr::read_unaligned(data.add(i)));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Some((String::from_utf8_lossy(&buf[..n as usize]).into_owned(), fds))
}

/// Forks a child for a `run <id> <job file>` request.
fn start(me: libc::pid_t, text: &str, fds: &[RawFd]) {
    let close = || {
        for &fd in fds {
            // SAFETY: descriptors received with this request, owned here.
            unsafe { libc::close(fd) };
        }
    };
    let mut parts = text.splitn(3, ' ');
    let (Some("run"), Some(id), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
        close();
        return send(&format!("refused ? not a request: {text:?}"));
    };
    let &[out, err] = fds else {
        close();
        return send(&format!("refused {id} expected 2 descriptors, got {}", fds.len()));
    };
    // SAFETY: the server is single-threaded (checked at start), so the child may run anything.
    match unsafe { libc::fork() } {
        -1 => {
            close();
            send(&format!("refused {id} fork: {}", std::io::Error::last_os_error()))
        }
        0 => crate::job::exit_now(child(me, out, err, Path::new(file))),
        pid => {
            close();
            send(&format!("started {id} {pid}"));
        }
    }
}

/// The child: the job's pipes as stdout and stderr, nothing on stdin, and the job run as `run JOB` runs it.
fn child(server: libc::pid_t, out: RawFd, err: RawFd, file: &Path) -> i32 {
    // SAFETY: descriptor and process-attribute calls on descriptors this process owns.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0
            || libc::getppid() != server
        {
            return 1;
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        if null < 0 || libc::dup2(null, 0) < 0 || libc::dup2(out, 1) < 0 || libc::dup2(err, 2) < 0 {
            return 1;
        }
        for fd in [null, out, err] {
            libc::close(fd);
        }
    }
    crate::job::run_file(file)
}
