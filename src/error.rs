//! Errors a user can act on, and the exit codes that tell a script what kind of failure happened.

use std::path::{Path, PathBuf};

/// Exit codes: 0 success; 1 a node failed; 2 the manifest or the command line is invalid; 3 the store failed
/// (unreachable, permission, corruption that could not be repaired); 4 a node's upstream is not in the store yet;
/// 5 a node's upstream will never be stored in this exported run (every attempt of its Job failed).
pub mod exit {
    pub const NODE_FAILED: i32 = 1;
    pub const INVALID: i32 = 2;
    pub const STORE: i32 = 3;
    pub const NOT_READY: i32 = 4;
    pub const UPSTREAM_FAILED: i32 = 5;
}

/// A problem in a manifest, located at file:line:column.
#[derive(Debug, thiserror::Error)]
#[error("{}:{}:{}: {message}", file.display(), line, col)]
pub struct ManifestError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl ManifestError {
    /// Builds an error at a byte offset of `source` (the text of `file`).
    pub fn at(file: &Path, source: &str, offset: usize, message: impl Into<String>) -> Self {
        let (line, col) = line_col(source, offset);
        ManifestError { file: file.to_path_buf(), line, col, message: message.into() }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The store failed in a way a retry of the command will not fix by itself.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// A node needed upstream results that are not stored yet (`node run` under a scheduler that ran it too early).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotReady(pub String);

/// An invalid command-line argument or setting that is not located in a manifest (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// One or more nodes failed; their messages were already reported.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RunFailed(pub String);

/// The most characters of a user's string (an argument, a name) an error message echoes.
pub const ECHO_CHARS: usize = 200;

/// A user's string as an error message echoes it: whole up to [`ECHO_CHARS`] characters, else its first
/// [`ECHO_CHARS`] then "… (N characters)" (a 100 KB argument is not repeated back in full).
pub fn clip(s: &str) -> String {
    match head(s) {
        None => s.to_string(),
        Some((h, n)) => format!("{h}… ({n} characters)"),
    }
}

/// [`clip`] in backquotes: "`name`", or "`first characters…` (N characters)".
pub fn quoted(s: &str) -> String {
    match head(s) {
        None => format!("`{s}`"),
        Some((h, n)) => format!("`{h}…` ({n} characters)"),
    }
}

/// The first [`ECHO_CHARS`] characters of `s` and its length in characters, when it is longer.
fn head(s: &str) -> Option<(&str, usize)> {
    s.char_indices().nth(ECHO_CHARS).map(|(end, _)| (&s[..end], s.chars().count()))
}

/// `text` (a command-line parser's message, which quotes the argument it refused) with every run of non-blank
/// characters longer than [`ECHO_CHARS`] shortened by [`clip`]; `None` when none is that long.
pub fn clip_long_words(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len().min(64 << 10));
    let mut clipped = false;
    let mut rest = text;
    while !rest.is_empty() {
        let blank = rest.find(|c: char| !c.is_whitespace()).unwrap_or(rest.len());
        out.push_str(&rest[..blank]);
        rest = &rest[blank..];
        let word = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let w = clip(&rest[..word]);
        clipped |= w.len() != word;
        out.push_str(&w);
        rest = &rest[word..];
    }
    clipped.then_some(out)
}

/// A message without the OS's error numbers: Rust writes "No such file or directory (os error 2)", and the number
/// tells a user nothing the words do not.
pub fn without_os_codes(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(at) = rest.find(" (os error ") {
        let tail = &rest[at + " (os error ".len()..];
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && tail[digits..].starts_with(')') {
            out.push_str(&rest[..at]);
            rest = &tail[digits + 1..];
        } else {
            out.push_str(&rest[..at + 1]);
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// Maps an error to its exit code; anything not typed as one of the others is a usage problem (2).
pub fn exit_code(e: &anyhow::Error) -> i32 {
    if e.downcast_ref::<ManifestError>().is_some() || e.downcast_ref::<clap::Error>().is_some() {
        exit::INVALID
    } else if e.downcast_ref::<RunFailed>().is_some() {
        exit::NODE_FAILED
    } else if e.downcast_ref::<NotReady>().is_some() {
        exit::NOT_READY
    } else if e.downcast_ref::<crate::exec::UpstreamFailed>().is_some() {
        exit::UPSTREAM_FAILED
    } else if e.downcast_ref::<StoreError>().is_some()
        || e.downcast_ref::<crate::store::Corrupt>().is_some()
        || e.downcast_ref::<crate::store::Unreadable>().is_some()
    {
        exit::STORE
    } else {
        exit::INVALID
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn os_error_numbers_are_left_out() {
        use super::without_os_codes as w;
        assert_eq!(
            w("cannot read a.toml: No such file or directory (os error 2)"),
            "cannot read a.toml: No such file or directory"
        );
        assert_eq!(w("x (os error 13) and y (os error 2): z"), "x and y: z");
        // anything else in brackets stays
        assert_eq!(w("a (os error x) (os error ) b"), "a (os error x) (os error ) b");
        assert_eq!(w("(os error 2)"), "(os error 2)");
    }

    #[test]
    fn line_col_counts_from_one() {
        let s = "a = 1\nbb = 2\n";
        assert_eq!(super::line_col(s, 0), (1, 1));
        assert_eq!(super::line_col(s, 6), (2, 1));
        assert_eq!(super::line_col(s, 9), (2, 4));
    }

    #[test]
    fn long_strings_are_clipped_when_echoed() {
        assert_eq!(super::clip("node"), "node");
        assert_eq!(super::quoted("node"), "`node`");
        let exact = "é".repeat(super::ECHO_CHARS);
        assert_eq!(super::clip(&exact), exact);
        let long = "é".repeat(100_000);
        let want = format!("{}… (100000 characters)", "é".repeat(super::ECHO_CHARS));
        assert_eq!(super::clip(&long), want);
        assert_eq!(super::quoted(&long), format!("`{}…` (100000 characters)", "é".repeat(super::ECHO_CHARS)));
    }

    #[test]
    fn a_parser_message_is_clipped_word_by_word() {
        assert_eq!(super::clip_long_words("error: unexpected argument 'x'\n"), None);
        let text = format!("error: unexpected argument '{}' found\n\nUsage: x\n", "x".repeat(1000));
        let want = format!("error: unexpected argument '{}… (1002 characters) found\n\nUsage: x\n", "x".repeat(199));
        assert_eq!(super::clip_long_words(&text), Some(want));
    }
}
