//! What a run shows while it works: one `indicatif` bar per running node on a terminal, plain timestamped lines
//! otherwise (logs, CI, schedulers), with `--quiet` only the failures, as they happen.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

pub enum Mode {
    Bars,
    Lines,
    Quiet,
}

pub struct Progress {
    mode: Mode,
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
    /// Each running node's warnings so far, taken into its cache entry when it ends.
    warnings: Mutex<HashMap<String, Vec<String>>>,
    start: Instant,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bars
        } else {
            Mode::Lines
        };
        let multi = MultiProgress::with_draw_target(match mode {
            Mode::Bars => ProgressDrawTarget::stderr(),
            _ => ProgressDrawTarget::hidden(),
        });
        Progress {
            mode,
            multi,
            bars: Mutex::new(HashMap::new()),
            warnings: Mutex::new(HashMap::new()),
            start: Instant::now(),
        }
    }

    fn line(&self, msg: &str) {
        match self.mode {
            Mode::Quiet => {}
            Mode::Lines => eprintln!("[{:>7.2}s] {msg}", self.start.elapsed().as_secs_f64()),
            Mode::Bars => {
                let _ = self.multi.println(msg);
            }
        }
    }

    pub fn started(&self, node: &str) {
        match self.mode {
            Mode::Bars => {
                let pb = self.multi.add(ProgressBar::new(0));
                pb.set_style(
                    ProgressStyle::with_template(
                        "{spinner} {prefix:40!} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
                    )
                    .expect("valid template"),
                );
                pb.set_prefix(node.to_string());
                pb.enable_steady_tick(std::time::Duration::from_millis(200));
                self.bars.lock().unwrap().insert(node.to_string(), pb);
            }
            _ => self.line(&format!("run     {node}")),
        }
    }

    pub fn progress(&self, node: &str, done: u64, total: u64) {
        if let Some(pb) = self.bars.lock().unwrap().get(node) {
            pb.set_length(total);
            pb.set_position(done);
        }
    }

    pub fn log(&self, node: &str, msg: &str) {
        if let Some(pb) = self.bars.lock().unwrap().get(node) {
            pb.set_message(msg.to_string());
        }
        if !matches!(self.mode, Mode::Bars) {
            self.line(&format!("        {node}: {msg}"));
        }
    }

    /// A stage's warning ([`rmdistill_stages::port::Ctx::warn`]): shown in every mode, `--quiet` and `--json`
    /// included (on stderr), and kept for the node's entry.
    pub fn warning(&self, node: &str, msg: &str) {
        let line = format!("warning: {node}: {msg}");
        match self.mode {
            Mode::Quiet => eprintln!("{line}"),
            _ => self.line(&line),
        }
        self.warnings.lock().unwrap_or_else(|e| e.into_inner()).entry(node.to_string()).or_default().push(msg.into());
    }

    /// The warnings `node` gave since it started (none are left behind for its next attempt).
    pub fn take_warnings(&self, node: &str) -> Vec<String> {
        self.warnings.lock().unwrap_or_else(|e| e.into_inner()).remove(node).unwrap_or_default()
    }

    /// A node's end: `what` is "done", "cached", "failed", "skipped".
    pub fn finished(&self, node: &str, what: &str, detail: &str) {
        if let Some(pb) = self.bars.lock().unwrap().remove(node) {
            pb.finish_and_clear();
            self.multi.remove(&pb);
        }
        if what == "cached" && matches!(self.mode, Mode::Bars) {
            return; // a screen full of cache hits hides the work; the summary counts them
        }
        if what == "failed" && matches!(self.mode, Mode::Quiet) {
            // A long quiet run must not hide a failure until its end (so the summary does not repeat it).
            eprintln!("error: {node} failed: {detail}");
            return;
        }
        self.line(&format!("{what:<7} {node}{}{detail}", if detail.is_empty() { "" } else { "  " }));
    }

    /// A warning: shown in every mode, `--quiet` and `--json` included.
    pub fn message(&self, msg: &str) {
        match self.mode {
            Mode::Quiet => eprintln!("{msg}"),
            _ => self.line(msg),
        }
    }
}
