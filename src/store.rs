//! The artifact store: immutable content-addressed blobs, create-only cache entries and run journals under one
//! prefix of any `object_store` URL, plus a local read cache.
//!
//! Layout under the prefix:
//! - `blobs/ab/abcdef…` — artifact bytes, addressed by BLAKE3; a directory artifact is a blob holding its canonical
//!   listing, whose files are blobs too.
//! - `cache/ab/KEY.json` — cache entry: the full key record, the output hashes and sizes, and `check`, a hash of
//!   the rest of the entry. Written create-only, after every blob it names is stored, so a visible entry never names
//!   a missing or partial blob.
//! - `nodes/ID.json` — the last key each node name had, so `status` and `explain` can say what changed;
//!   `nodes/ID.failed.json` — the key, run and error of its last failure, so that they can say it failed.
//! - `runs/RUN.json` — run journals: which outputs a run produced (kept by `gc` within the grace period).
//! - `attempts/RUN/NODE/ATTEMPT.json` — the failed attempts of a node in one exported run of jobs that have no
//!   scheduler ordering them (`export k8s`), so that a job waiting for that node's result can tell "not yet" from
//!   "never" ([`Store::record_attempt`]).
//! - `cache-corrupt/`, `nodes-corrupt/` — entries and pointers that could not be read or did not match their
//!   record, set aside (never deleted) so that they no longer block the store; `blobs-corrupt/` — whatever stood in
//!   a blob's place but was not a file (a directory), set aside when the blob was stored again.
//!
//! Nothing is served unverified. A cache hit ([`Store::get_entry`] + [`Store::entry_complete`]) checks the entry
//! against its own key and `check`, and every blob it names for presence, size and hash. Hashing every output on
//! every lookup would make a no-op run read the whole store, so for `file://` stores a blob's hash is remembered
//! with its (size, mtime, ctime, inode) in the local directory (as DVC's state database and git's index do); any
//! write to the file changes ctime, so the remembered hash is used only for bytes that were hashed before. Files
//! changed less than [`RACY_SECS`] before they were hashed are not remembered (a write within the file system's
//! timestamp granularity could go unseen). Remote stores check presence and size by HEAD on lookup and the hash on
//! download. Reading a blob's bytes ([`Store::materialize`], [`Store::get_bytes`]) always hashes them once per
//! process; a mismatch is reported as [`Corrupt`] and never handed to a stage. Storing a blob that is present but
//! corrupt replaces it (an atomic put), so a re-run or `--force` repairs the store.

use crate::error::{Invalid, StoreError};
use crate::key::{self, KeyRecord, Tree};
use bytes::Bytes;
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, path::Path as ObjPath};
use rmdistill_stages::ArtifactKind;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One failed attempt of a node in an exported run ([`Store::record_attempt`]).
#[derive(Debug, Clone, Deserialize)]
pub struct FailedAttempt {
    pub node: String,
    pub run: String,
    pub attempt: String,
    pub given_up: bool,
    pub at: String,
    pub error: String,
}

/// One output of a cached node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OutputRef {
    pub hash: String,
    pub kind: ArtifactKind,
    /// Bytes (for a directory: of all its files).
    pub size: u64,
}

/// A cache entry: what a node with this key produced.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub v: u32,
    pub key: String,
    /// The node that first produced it (another node with an identical record shares the entry).
    pub node: String,
    pub record: KeyRecord,
    pub outputs: BTreeMap<String, OutputRef>,
    /// The stage's own summary (counts, metrics).
    pub summary: serde_json::Value,
    /// What the stage warned of while it ran ([`rmdistill_stages::port::Ctx::warn`]); `show` repeats them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub created: String,
    pub seconds: f64,
    /// The kind of machine that ran the node and how ([`computed_on`]): libtorch's results differ in their last bits
    /// from one kind of CPU to another, and with the thread count, the device and kernel pins, so a store filled
    /// from several holds results no single machine and setting reproduces.
    /// Absent in entries written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
}

/// This machine as the entries record it: the CPU's model name (`/proc/cpuinfo`) and the architecture, e.g.
/// "AMD EPYC (x86_64)"; the architecture alone where the model name cannot be read.
pub fn machine() -> &'static str {
    static MACHINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MACHINE.get_or_init(|| {
        let arch = std::env::consts::ARCH;
        let model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| {
            t.lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| matches!(k.trim(), "model name" | "Model" | "cpu model"))
                .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|v| !v.is_empty())
        });
        match model {
            Some(m) => format!("{m} ({arch})"),
            None => arch.to_string(),
        }
    })
}

/// Environment variables that choose which kernels libtorch, MKL and oneDNN run, and so a result's last bits: a
/// Xeon with `ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2` computes another DPO step than the same Xeon unpinned
/// (BENCHMARKS.md, "Pinning on a real Xeon").
pub const KERNEL_PINS: [&str; 5] =
    ["ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"];

/// How a libtorch node computed here, as its entry records it: [`machine`], then what else changes libtorch's last
/// bits on it — a CUDA device, more than one CPU thread (libtorch splits its reductions by thread: 1 and 2 threads
/// give different weights after one DPO step), a kernel pin ([`KERNEL_PINS`]). The default — one CPU thread per node,
/// nothing pinned — is the machine alone, as entries recorded it before the settings were.
pub fn computed_on(cuda: bool, threads: usize) -> String {
    let pins: Vec<(&str, String)> =
        KERNEL_PINS.iter().filter_map(|&v| std::env::var(v).ok().filter(|x| !x.is_empty()).map(|x| (v, x))).collect();
    describe_computation(machine(), cuda, threads, &pins)
}

fn describe_computation(machine: &str, cuda: bool, threads: usize, pins: &[(&str, String)]) -> String {
    let mut with = Vec::new();
    if cuda {
        with.push("CUDA".to_string());
    } else if threads != 1 {
        with.push(format!("{threads} threads"));
    }
    // escaped: a value is the user's environment, and the note and the report print it on one line
    with.extend(pins.iter().map(|(v, x)| format!("{v}={}", x.escape_debug())));
    if with.is_empty() { machine.to_string() } else { format!("{machine} with {}", with.join(", ")) }
}

/// How many of `machines` name each machine, sorted by machine (counted for `run`'s note
/// and `report`'s provenance line).
pub fn count_machines<'a>(machines: impl IntoIterator<Item = &'a str>) -> Vec<(&'a str, usize)> {
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for m in machines {
        *by.entry(m).or_default() += 1;
    }
    by.into_iter().collect()
}

/// "2 on AMD EPYC (x86_64)", one per counted machine.
pub fn machines_listed(counts: &[(&str, usize)]) -> Vec<String> {
    counts.iter().map(|(m, c)| format!("{c} on {m}")).collect()
}

/// What a cache hit needs of an entry; parsing it skips the key record and the stage's summary, which a no-op run
/// does not read (the entry's `check` still covers them).
#[derive(Clone, Debug, Deserialize)]
pub struct EntryHead {
    pub key: String,
    pub node: String,
    pub outputs: BTreeMap<String, OutputRef>,
    #[serde(default)]
    pub machine: Option<String>,
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// A blob whose bytes do not match its address (or that cannot be parsed as what it claims to be).
#[derive(Debug, thiserror::Error)]
#[error("corrupt blob {hash}: {detail}")]
pub struct Corrupt {
    pub hash: String,
    pub detail: String,
}

/// Files changed this recently (seconds) before being hashed are not remembered as verified.
pub const RACY_SECS: i64 = 2;

/// Whether `s` is a blob address: 64 lower-case hex digits (so it is safe in a path, too).
pub fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks the form of a store URL: `file://PATH`, `memory://`, `s3://BUCKET/PREFIX` (also `s3a`), `gs://BUCKET/…`,
/// `az://CONTAINER/…` (also `azure`, `abfs`, `abfss`), or a plain directory path. Something that looks like a URL
/// but is none of these (`s3:/bucket`, `http://…`) is refused rather than taken as a directory name.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err("the store url is empty".into());
    }
    if let Some(c) = url.chars().find(|c| c.is_control()) {
        return Err(format!(
            "store url \"{}\" contains the control character {c:?}; a store url is a path or a URL on one line",
            url.escape_debug()
        ));
    }
    if let Some(rest) = url.strip_prefix("file://") {
        if rest.is_empty() || rest == "localhost" {
            return Err(format!(
                "store url `{url}` names no directory (e.g. file://.rmdistill/store or file:///abs/dir)"
            ));
        }
        // file://HOST/PATH: a `.` cannot begin a host name, so `file://.rmdistill/store` stays a relative path
        let host = rest.split('/').next().unwrap_or_default();
        if !host.is_empty() && host != "localhost" && !host.starts_with(['.', '~']) {
            return Err(format!(
                "store url `{url}` names the host `{host}`, but a file:// store is a directory on this machine: \
                 the host must be empty or localhost (file:///abs/dir, file://localhost/abs/dir). For the \
                 directory {rest} under the working directory write ./{rest} or file://./{rest}; for /{rest}, \
                 file:///{rest}"
            ));
        }
        return check_dir(url, local_path(url).unwrap_or_default());
    }
    if url == "memory://" {
        return Ok(());
    }
    if let Some((scheme, _)) = url.split_once("://") {
        if !REMOTE.contains(&scheme) {
            return Err(format!(
                "store url `{url}`: unsupported scheme `{scheme}` (use file://, memory://, s3://, gs:// or az://)"
            ));
        }
        return remote_parts(url).map(|_| ());
    }
    // A plain path; but `s3:/bucket` or `s3:bucket` is a mistyped URL, not a directory named `s3:`.
    if let Some((scheme, rest)) = url.split_once(':') {
        let looks_like_scheme = scheme.len() > 1
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c));
        if looks_like_scheme {
            let hint = if REMOTE.contains(&scheme) || scheme == "file" || scheme == "memory" {
                format!("; did you mean `{scheme}://{}`?", rest.trim_start_matches('/'))
            } else {
                String::new()
            };
            return Err(format!(
                "store url `{url}` is neither a supported URL (file://, memory://, s3://, gs://, az://) nor a plain \
                 directory path{hint} (a directory whose name has a colon: write ./{url} or file://./{url})"
            ));
        }
    }
    check_dir(url, url)
}

/// The schemes of object stores (`s3a` is `s3`; `azure`, `abfs` and `abfss` are `az`).
const REMOTE: &[&str] = &["s3", "s3a", "gs", "az", "azure", "abfs", "abfss"];

/// An object-store URL taken apart by [`remote_parts`].
#[derive(Debug, PartialEq)]
pub struct RemoteUrl<'a> {
    pub scheme: &'a str,
    /// The bucket (container; for `abfs[s]://`, also `CONTAINER@ACCOUNT.dfs.core.windows.net`).
    pub bucket: &'a str,
    /// The prefix everything lives under, segment by segment (empty: the bucket's top).
    pub prefix: Vec<&'a str>,
}

/// What a prefix segment may hold, for error messages.
const SEGMENT_CHARS: &str = "ASCII letters, digits, `-`, `_` and `.`";

/// Whether `c` may appear in a segment of an object-store prefix. Everything else is refused rather than encoded:
/// URL parsers and object stores rewrite or escape other characters differently (`gs://b/my prefix` stored its
/// objects under `my%252520prefix/`), so a prefix holds exactly the characters written.
fn segment_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// `c` as an error message names it: a space or another invisible character by its name or code point.
fn char_named(c: char) -> String {
    match c {
        ' ' => "a space".to_string(),
        c if c.is_ascii_graphic() => format!("`{c}`"),
        c if c.is_alphanumeric() => format!("`{c}` (U+{:04X})", c as u32),
        c => format!("U+{:04X}", c as u32),
    }
}

/// Takes an object-store URL (`s3://BUCKET/PREFIX`, `gs://…`, `az://…`) apart, strictly: the prefix is exactly the
/// segments written, so a URL that a URL parser or an object store would rewrite is refused, saying which part and
/// what is expected: a `.` or `..` segment (`gs://b/a/../x` would be the prefix `x`), an empty segment (`a//b`
/// would be `a/b`), a query or fragment (`x?y=1` and `x#f` would be `x`), a percent-escape (`%2e%2e` would be
/// `..`), or a character other than ASCII letters, digits, `-`, `_` and `.` (see [`segment_char`]). One trailing
/// `/` is allowed (`s3://b/x/` is `s3://b/x`).
pub fn remote_parts(url: &str) -> Result<RemoteUrl<'_>, String> {
    let Some((scheme, rest)) = url.split_once("://").filter(|(s, _)| REMOTE.contains(s)) else {
        return Err(format!("store url `{url}` is not an object-store url (s3://, gs:// or az://BUCKET/PREFIX)"));
    };
    let form = format!("{scheme}://BUCKET/PREFIX");
    if let Some(i) = rest.find(['?', '#']) {
        let what = if rest[i..].starts_with('?') { "a query" } else { "a fragment" };
        return Err(format!(
            "store url `{url}` has {what} (`{}`): a store url is {form}, without a query or fragment, which URL \
             parsers would drop from the prefix",
            &rest[i..]
        ));
    }
    if let Some(i) = rest.find('%') {
        let esc: String = rest[i..].chars().take(3).collect();
        return Err(format!(
            "store url `{url}` has the percent-escape `{esc}`: escapes are not decoded in a store url (nor written \
             as they are); write the prefix with {SEGMENT_CHARS} only"
        ));
    }
    let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(format!("store url `{url}` names no bucket (e.g. {scheme}://bucket/prefix)"));
    }
    // abfs[s]://CONTAINER@ACCOUNT.dfs.core.windows.net/… names an Azure account; elsewhere `@` would be a user name
    let azure = matches!(scheme, "az" | "azure" | "abfs" | "abfss");
    let at_ok = |c: char| c == '@' && azure && bucket.matches('@').count() == 1;
    if let Some(c) = bucket.chars().find(|&c| !segment_char(c) && !at_ok(c)) {
        let port = if c == ':' { " (a port or password has no place in a store url)" } else { "" };
        return Err(format!(
            "store url `{url}`: the bucket `{bucket}` holds {}{port}; a bucket name holds {SEGMENT_CHARS} only{}",
            char_named(c),
            if azure { " (and `@` in CONTAINER@ACCOUNT.dfs.core.windows.net)" } else { "" }
        ));
    }
    // one trailing slash is allowed (`s3://b/x/`), not an empty segment before it (`s3://b//`, `s3://b/x//`)
    let path = match path.strip_suffix('/') {
        Some(p) if !p.is_empty() && !p.ends_with('/') => p,
        _ => path,
    };
    let mut prefix = Vec::new();
    if !path.is_empty() {
        for seg in path.split('/') {
            match seg {
                "" => {
                    return Err(format!(
                        "store url `{url}` has an empty segment (`//`) in its prefix `{path}`: object stores keep \
                         it and URL parsers drop it; a store url is {form}, segments separated by single slashes"
                    ));
                }
                "." | ".." => {
                    return Err(format!(
                        "store url `{url}` has the segment `{seg}` in its prefix `{path}`: URL parsers resolve it \
                         (gs://b/a/../x is the prefix x) and object stores do not; name the prefix itself, without \
                         `.` or `..` segments"
                    ));
                }
                _ => {}
            }
            if let Some(c) = seg.chars().find(|&c| !segment_char(c)) {
                return Err(format!(
                    "store url `{url}`: the prefix segment `{seg}` holds {}, which object stores or URL parsers \
                     treat specially; a prefix segment holds {SEGMENT_CHARS} only",
                    char_named(c)
                ));
            }
            prefix.push(seg);
        }
    }
    Ok(RemoteUrl { scheme, bucket, prefix })
}

/// The directory of a `file://` URL or a plain path; `None` for other URLs. `file:///abs` and
/// `file://localhost/abs` are `/abs`; `file://REL` (whose first segment begins with `.`, such as
/// `file://.rmdistill/store`) and a plain path are relative to the working directory. For a URL [`check_url`] accepts.
pub fn local_path(url: &str) -> Option<&str> {
    match url.strip_prefix("file://") {
        Some(rest) => Some(rest.strip_prefix("localhost").filter(|p| p.starts_with('/')).unwrap_or(rest)),
        None => (!url.contains("://")).then_some(url),
    }
}

/// Why `dir` (the directory `url` names) cannot be a store, if it cannot: it is the root directory, or it begins
/// with a `~` that no shell expanded.
fn check_dir(url: &str, dir: &str) -> Result<(), String> {
    if dir.starts_with('~') {
        let home = if dir == "~" || dir.starts_with("~/") {
            format!("write {}, which the shell expands inside double quotes too", url.replacen('~', "$HOME", 1))
        } else {
            "write the absolute path".to_string()
        };
        return Err(format!(
            "store url `{url}` begins with `~`, which only a shell expands into a home directory, and it did not \
             (it does not inside quotes, after `--store=`, nor in a manifest); rmdistill does not expand it either: \
             {home} (a directory named `~` is written ./~)"
        ));
    }
    let p = Path::new(dir);
    if p.has_root() && p.components().all(|c| !matches!(c, std::path::Component::Normal(_))) {
        return Err(root_dir_error(url));
    }
    Ok(())
}

/// The error for a store whose directory is `/`.
fn root_dir_error(url: &str) -> String {
    format!(
        "store url `{url}` is the root directory `/`: a store keeps its blobs/, cache/, nodes/ and runs/ folders at \
         the top of its directory, and `gc` deletes from it, so it needs a directory of its own (e.g. \
         file:///var/lib/rmdistill/store or file://.rmdistill/store)"
    )
}

/// The store used when nothing names one: a directory in the working directory.
pub const DEFAULT_URL: &str = "file://.rmdistill/store";

/// The store URL in force: `flag` (`--store`), else RMDISTILL_STORE (when set and not empty), else the manifest's
/// `[store] url` (checked when it loaded), else [`DEFAULT_URL`]. A malformed URL is an error naming where it came from.
pub fn resolve_url(flag: Option<&str>, manifest: Option<&str>) -> Result<String, Invalid> {
    if let Some(u) = flag {
        check_url(u).map_err(|e| Invalid(format!("--store: {e}")))?;
        return Ok(u.to_string());
    }
    if let Some(u) = std::env::var("RMDISTILL_STORE").ok().filter(|u| !u.is_empty()) {
        check_url(&u).map_err(|e| Invalid(format!("RMDISTILL_STORE: {e}")))?;
        return Ok(u);
    }
    Ok(manifest.unwrap_or(DEFAULT_URL).to_string())
}

/// The local working area (read cache, scratch space, remembered hashes): RMDISTILL_LOCAL_DIR, else
/// `.rmdistill/local` in the working directory.
pub fn default_local_dir() -> PathBuf {
    std::env::var_os("RMDISTILL_LOCAL_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".rmdistill/local"))
}

pub struct Store {
    os: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    /// For `file://` stores: the directory, so blobs and entries are read in place.
    local_root: Option<PathBuf>,
    /// Local working area: read cache, assembled directory artifacts, scratch space.
    local_dir: PathBuf,
    rt: tokio::runtime::Runtime,
    /// Blobs whose bytes this process has hashed and found intact.
    verified: Mutex<HashSet<String>>,
    /// One lock per directory artifact being assembled in this process.
    dir_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Hashes remembered across processes (see the module documentation).
    state: Mutex<StateDb>,
    /// Key → why its entry is not a cache hit, as found by the last [`Store::entry_complete`].
    incomplete: Mutex<HashMap<String, String>>,
    /// Warnings already printed (each is printed once per process).
    warned: Mutex<HashSet<String>>,
    pub url: String,
}

/// What a check of one blob found.
#[derive(Debug, PartialEq)]
enum Check {
    Ok,
    Missing,
    Corrupt(String),
}

/// Whether a local directory holds exactly the files of `tree` with their bytes.
fn tree_intact(dir: &Path, tree: &Tree) -> bool {
    key::hash_tree(dir).map(|t| t == *tree).unwrap_or(false)
}

fn store_err(what: &str, e: impl std::fmt::Display) -> anyhow::Error {
    let detail = e.to_string();
    // Object stores answer with long XML bodies; the code inside is what a user can act on.
    let hint = if detail.contains("NoSuchBucket") {
        "the bucket does not exist (create it, or fix the store url)"
    } else if detail.contains("AccessDenied")
        || detail.contains("403 Forbidden")
        || detail.contains("InvalidAccessKeyId")
        || detail.contains("SignatureDoesNotMatch")
    {
        "permission denied (check the credentials in the environment and the bucket policy)"
    } else {
        ""
    };
    let short: String = detail.split("<?xml").next().unwrap_or(&detail).trim_end_matches([':', ' ']).to_string();
    if hint.is_empty() {
        StoreError(format!("{what}: {short}")).into()
    } else {
        StoreError(format!("{what}: {hint}; {short}")).into()
    }
}

/// `message` with the password of a `scheme://user:password@…` url masked: a refused url is printed back, and
/// must not put a secret in a CI log.
fn redact_password(message: &str, url: &str) -> String {
    let Some((_, rest)) = url.split_once("://") else { return message.to_string() };
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority
        .rsplit_once('@')
        .and_then(|(user_info, _)| user_info.split_once(':').map(|(u, p)| (user_info, u, p)))
    {
        Some((user_info, user, password)) if !password.is_empty() => message.replace(user_info, &format!("{user}:***")),
        _ => message.to_string(),
    }
}

fn is_not_found(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
}

/// How an entry file ends: its last field is `check`, the BLAKE3 of the file's bytes as they would be without it
/// (`…\n}`). Hashing bytes, not a re-serialisation, makes the check exact and cheap on every lookup.
const CHECK_OPEN: &[u8] = b",\n  \"check\": \"";
const CHECK_CLOSE: &[u8] = b"\"\n}";

/// The bytes of an entry file: `body` (pretty JSON of the entry, ending `\n}`) with `check` added as its last field.
fn with_check(body: &[u8]) -> Vec<u8> {
    let check = blake3::hash(body).to_hex();
    let open = body.strip_suffix(b"\n}").expect("pretty JSON of a struct ends with a closing brace");
    let mut out = Vec::with_capacity(body.len() + 90);
    out.extend_from_slice(open);
    out.extend_from_slice(CHECK_OPEN);
    out.extend_from_slice(check.as_bytes());
    out.extend_from_slice(CHECK_CLOSE);
    out
}

/// What an entry file's `check` says: `Some(true)` it matches, `Some(false)` it does not (or a `check` field is
/// there but not where `put_entry` puts it: the file was re-serialised, by an editor or `jq`), `None` the entry has
/// none (edited out, or written before checks existed). Only `Some(true)` is trusted ([`entry_mismatch`]).
fn check_matches(bytes: &[u8]) -> Option<bool> {
    const FIELD: &[u8] = b"\"check\"";
    let t = bytes.trim_ascii_end();
    let moved = || t.windows(FIELD.len()).any(|w| w == FIELD).then_some(false);
    let Some(hex_at) = t.len().checked_sub(CHECK_CLOSE.len() + 64) else { return moved() };
    let tail_ok = t.ends_with(CHECK_CLOSE) && t[..hex_at].ends_with(CHECK_OPEN);
    if !tail_ok {
        return moved();
    }
    let open = &t[..hex_at - CHECK_OPEN.len()];
    let mut h = blake3::Hasher::new();
    h.update(open);
    h.update(b"\n}");
    Some(h.finalize().to_hex().as_bytes() == &t[hex_at..hex_at + 64])
}

/// Why an entry read from `cache/…/KEY.json` cannot be trusted for `key`, if it cannot. Only an entry whose `check`
/// matches is exactly as [`Store::put_entry`] wrote it (which checked its record against its key): its outputs are
/// not part of its key, so an entry without that check could name any blobs. Entries written before checks existed
/// are refused too (their stage identities have changed since, so none would be looked up anyway).
fn entry_mismatch(key: &str, checked: Option<bool>, e: &Entry) -> Option<String> {
    match checked {
        Some(true) => {}
        Some(false) => return Some("its contents do not match its `check` hash (edited or damaged)".into()),
        None => {
            return Some(
                "it has no `check` hash (edited by hand, or written before rmdistill checked its entries)".into(),
            );
        }
    }
    if e.key != key {
        return Some(format!("it is stored under key {} but names key {}", key::short(key), key::short(&e.key)));
    }
    for (name, o) in &e.outputs {
        if !is_hash(&o.hash) {
            return Some(format!("output `{name}` names `{}`, which is not a blob address", o.hash.escape_debug()));
        }
    }
    None
}

/// A file's identity for the state database: size, mtime, ctime, inode. Any write changes ctime.
fn file_sig(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{} {}.{} {}.{} {}",
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
        meta.ino()
    )
}

/// Whether a file changed so recently that a later write could share its timestamps.
fn racy(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    let now = chrono::Utc::now().timestamp();
    now - meta.mtime().max(meta.ctime()) < RACY_SECS
}

/// Hashes remembered across processes: blob hash → signature of the store's file (`file://`: size, mtime, ctime,
/// inode) or object (remote: size and ETag) when its bytes were last found intact. One tab-separated file per store
/// in the local directory, loaded on first use and merged back when the store is dropped.
struct StateDb {
    /// None for `memory://` stores, which live no longer than the process.
    file: Option<PathBuf>,
    map: Option<HashMap<String, String>>,
    added: HashMap<String, String>,
}

const STATE_HEADER: &str = "rmdistill-verified-v1";
/// A state file bigger than this is started afresh (stale lines of collected blobs accumulate otherwise).
const STATE_MAX_LINES: usize = 1_000_000;

impl StateDb {
    fn read(file: Option<&Path>) -> HashMap<String, String> {
        let Some(Ok(text)) = file.map(std::fs::read_to_string) else { return HashMap::new() };
        let mut lines = text.lines();
        if lines.next() != Some(STATE_HEADER) {
            return HashMap::new();
        }
        lines.filter_map(|l| l.split_once('\t')).map(|(h, s)| (h.to_string(), s.to_string())).collect()
    }
    fn get(&mut self, hash: &str) -> Option<&String> {
        let file = self.file.as_deref();
        self.map.get_or_insert_with(|| Self::read(file)).get(hash)
    }
    fn put(&mut self, hash: &str, sig: String) {
        if sig.contains(['\t', '\n']) {
            return;
        }
        if self.get(hash) != Some(&sig) {
            self.map.as_mut().expect("loaded by get").insert(hash.to_string(), sig.clone());
            self.added.insert(hash.to_string(), sig);
        }
    }
    fn forget(&mut self, hash: &str) {
        if let Some(m) = self.map.as_mut() {
            m.remove(hash);
        }
        self.added.remove(hash);
    }
    /// Merges what this process learnt into the file (others may have written it meanwhile).
    fn save(&mut self) {
        let Some(file) = self.file.clone().filter(|_| !self.added.is_empty()) else { return };
        let mut all = Self::read(Some(&file));
        if all.len() > STATE_MAX_LINES {
            all.clear();
        }
        all.extend(self.added.drain());
        let mut text = String::with_capacity(all.len() * 120);
        text.push_str(STATE_HEADER);
        text.push('\n');
        for (h, s) in &all {
            text.push_str(h);
            text.push('\t');
            text.push_str(s);
            text.push('\n');
        }
        if let Some(dir) = file.parent() {
            let _ = std::fs::create_dir_all(dir);
            if let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir)
                && tmp.write_all(text.as_bytes()).is_ok()
            {
                let _ = tmp.persist(&file);
            }
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Ok(mut s) = self.state.lock() {
            s.save();
        }
    }
}

impl Store {
    /// Opens the store at `url` (see [`check_url`]). A URL without a scheme, or `file://` with a relative path, is
    /// a directory relative to the working directory. `local_dir` holds the read cache and scratch files.
    pub fn open(url: &str, local_dir: &Path) -> anyhow::Result<Store> {
        check_url(url).map_err(|m| Invalid(redact_password(&m, url)))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| store_err("cannot start the I/O runtime", e))?;
        std::fs::create_dir_all(local_dir)
            .map_err(|e| store_err(&format!("cannot create {}", local_dir.display()), e))?;
        let local_dir =
            local_dir.canonicalize().map_err(|e| store_err(&format!("cannot open {}", local_dir.display()), e))?;
        let (os, prefix, local_root): (Arc<dyn ObjectStore>, ObjPath, Option<PathBuf>) =
            if let Some(rest) = local_path(url) {
                let dir = PathBuf::from(rest);
                std::fs::create_dir_all(&dir)
                    .map_err(|e| store_err(&format!("cannot create store directory {}", dir.display()), e))?;
                let dir = dir.canonicalize().map_err(|e| store_err(&format!("cannot open {}", dir.display()), e))?;
                // `..` enough times, or a link, can reach `/` where the URL does not say it
                if dir.parent().is_none() {
                    return Err(Invalid(root_dir_error(url)).into());
                }
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(|e| store_err(url, e))?;
                (Arc::new(fs), ObjPath::default(), Some(dir))
            } else if url.starts_with("memory://") {
                (Arc::new(object_store::memory::InMemory::new()), ObjPath::default(), None)
            } else {
                let parts = remote_parts(url).map_err(|m| Invalid(redact_password(&m, url)))?;
                let (os, prefix) = crate::remote::open(url, &parts)?;
                // A missing bucket answers every read "not found", which would read as an empty store ("0 cached",
                // "never run"): one listing tells it apart. Any other failure of the listing is left to the reads
                // (credentials may allow reading objects but not listing them).
                if let Err(e) = rt.block_on(os.list_with_delimiter(Some(&prefix)))
                    && format!("{e:?}").contains("NoSuchBucket")
                {
                    return Err(store_err(url, e));
                }
                (os, prefix, None)
            };
        let identity = match &local_root {
            Some(d) => format!("file://{}", d.display()),
            None => url.to_string(),
        };
        let state_file = (!url.starts_with("memory://")).then(|| {
            local_dir.join("verified").join(format!("{}.tsv", &blake3::hash(identity.as_bytes()).to_hex()[..24]))
        });
        Ok(Store {
            os,
            prefix,
            local_root,
            local_dir,
            rt,
            verified: Mutex::new(HashSet::new()),
            dir_locks: Mutex::new(Default::default()),
            state: Mutex::new(StateDb { file: state_file, map: None, added: HashMap::new() }),
            incomplete: Mutex::new(HashMap::new()),
            warned: Mutex::new(HashSet::new()),
            url: url.to_string(),
        })
    }

    fn p(&self, rel: &str) -> ObjPath {
        if self.prefix.as_ref().is_empty() {
            ObjPath::from(rel)
        } else {
            ObjPath::from(format!("{}/{rel}", self.prefix))
        }
    }
    fn blob_rel(hash: &str) -> String {
        format!("blobs/{}/{hash}", hash.get(..2).unwrap_or("__"))
    }
    fn blob_path(&self, hash: &str) -> ObjPath {
        self.p(&Self::blob_rel(hash))
    }
    fn entry_rel(key: &str) -> String {
        format!("cache/{}/{key}.json", key.get(..2).unwrap_or("__"))
    }

    pub fn local_dir(&self) -> &Path {
        &self.local_dir
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Prints a warning once per process.
    fn warn(&self, msg: String) {
        if self.warned.lock().unwrap().insert(msg.clone()) {
            eprintln!("warning: {msg}");
        }
    }

    /// Why the entry for `key` was not a cache hit at its last [`Store::entry_complete`], if it was not.
    pub fn incomplete_reason(&self, key: &str) -> Option<String> {
        self.incomplete.lock().unwrap().get(key).cloned()
    }

    /// The bytes of an object under the prefix; `None` when there is none. `file://` stores read the file directly.
    /// A directory where a file should be counts as unreadable, not as absent.
    pub fn read(&self, rel: &str) -> anyhow::Result<Option<Vec<u8>>> {
        if let Some(root) = &self.local_root {
            let path = root.join(rel);
            return match std::fs::read(&path) {
                Ok(b) => Ok(Some(b)),
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::IsADirectory => {
                    Err(Unreadable(format!("{rel} is a directory")).into())
                }
                Err(e) => Err(store_err(&format!("cannot read {}", path.display()), e)),
            };
        }
        let p = self.p(rel);
        match self.block_on(async { self.os.get(&p).await?.bytes().await }) {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err(&format!("cannot read {p}"), e)),
        }
    }

    /// Moves an unreadable object out of the way: `area/NAME` (with a number added if that is taken). Skipped when
    /// the object changed since `seen` was read (another process has replaced it meanwhile). Returns where it went.
    fn set_aside(&self, rel: &str, area: &str, seen: Option<&[u8]>) -> anyhow::Result<Option<String>> {
        let name = rel.rsplit('/').next().unwrap_or(rel);
        if let Some(root) = &self.local_root {
            let from = root.join(rel);
            if let Some(seen) = seen {
                match std::fs::read(&from) {
                    Ok(now) if now != seen => return Ok(None),
                    Err(e) if is_not_found(&e) => return Ok(None),
                    _ => {}
                }
            }
            let dir = root.join(area);
            std::fs::create_dir_all(&dir).map_err(|e| store_err(&format!("cannot create {}", dir.display()), e))?;
            let mut dest = name.to_string();
            let mut k = 1;
            while dir.join(&dest).exists() {
                dest = format!("{name}.{k}");
                k += 1;
            }
            return match std::fs::rename(&from, dir.join(&dest)) {
                Ok(()) => Ok(Some(format!("{area}/{dest}"))),
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(store_err(&format!("cannot move {} aside", from.display()), e)),
            };
        }
        let dest = format!("{area}/{name}.{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ"));
        match self.block_on(self.os.rename(&self.p(rel), &self.p(&dest))) {
            Ok(()) => Ok(Some(dest)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err(&format!("cannot move {rel} aside"), e)),
        }
    }

    /// Whether a blob is present (not whether it is intact: reads check that).
    pub fn has_blob(&self, hash: &str) -> anyhow::Result<bool> {
        if let Some(root) = &self.local_root {
            return match std::fs::metadata(root.join(Self::blob_rel(hash))) {
                Ok(_) => Ok(true),
                Err(e) if is_not_found(&e) => Ok(false),
                Err(e) => Err(store_err(&format!("cannot read blob {hash}"), e)),
            };
        }
        match self.block_on(self.os.head(&self.blob_path(hash))) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_err(&format!("cannot read blob {hash}"), e)),
        }
    }

    /// Checks one blob of a `file://` store: present, a regular file, `size` bytes (when given), and its bytes hash
    /// to its name — by the state database when the file is unchanged since it was last hashed, else by hashing it.
    fn check_local_blob(&self, root: &Path, hash: &str, size: Option<u64>) -> anyhow::Result<Check> {
        if !is_hash(hash) {
            return Ok(Check::Corrupt(format!("`{}` is not a blob address", hash.escape_debug())));
        }
        let path = root.join(Self::blob_rel(hash));
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if is_not_found(&e) => return Ok(Check::Missing),
            Err(e) => return Err(store_err(&format!("cannot read {}", path.display()), e)),
        };
        if !meta.is_file() {
            return Ok(Check::Corrupt("not a regular file".into()));
        }
        let sig = file_sig(&meta);
        if size.is_none_or(|s| s == meta.len()) && self.state.lock().unwrap().get(hash) == Some(&sig) {
            return Ok(Check::Ok);
        }
        let (got, n) = match key::hash_file(&path) {
            Ok(x) => x,
            Err(e) if is_not_found(&e) => return Ok(Check::Missing),
            Err(e) => return Err(store_err(&format!("cannot read {}", path.display()), e)),
        };
        if got != hash {
            self.state.lock().unwrap().forget(hash);
            return Ok(Check::Corrupt(format!("its {n} bytes hash to {}", key::short(&got))));
        }
        if let Some(s) = size.filter(|&s| s != n) {
            return Ok(Check::Corrupt(format!("the blob is intact ({n} bytes) but the entry records {s} bytes")));
        }
        // Remember it only if the file did not change while it was hashed, and not too recently.
        if let Ok(after) = std::fs::metadata(&path)
            && file_sig(&after) == sig
            && !racy(&after)
        {
            self.state.lock().unwrap().put(hash, sig);
        }
        Ok(Check::Ok)
    }

    /// Checks blobs of a remote store concurrently: present and of the expected size, and, where this machine has
    /// seen the blob intact (its upload, or a download that hashed right), with the ETag it had then: an object
    /// written again since, even with as many bytes, is not served as a hit. Hashes are checked when the bytes are
    /// downloaded.
    fn check_remote_blobs(&self, blobs: &[(&str, Option<u64>)]) -> anyhow::Result<Vec<Check>> {
        self.block_on(async {
            let heads = futures::stream::iter(blobs.iter().map(|(h, size)| async move {
                if !is_hash(h) {
                    return Ok(Check::Corrupt(format!("`{}` is not a blob address", h.escape_debug())));
                }
                match self.os.head(&self.blob_path(h)).await {
                    Ok(m) => Ok(match size {
                        Some(s) if *s != m.size => Check::Corrupt(format!("it has {} bytes, expected {s}", m.size)),
                        _ => {
                            let seen = self.state.lock().unwrap().get(h).cloned();
                            let now = format!("{} {}", m.size, m.e_tag.clone().unwrap_or_default());
                            match seen {
                                Some(seen) if m.e_tag.is_some() && seen != now => Check::Corrupt(format!(
                                    "it was written again since this machine saw it intact (ETag and size `{seen}` \
                                     then, `{now}` now)"
                                )),
                                _ => Check::Ok,
                            }
                        }
                    }),
                    Err(object_store::Error::NotFound { .. }) => Ok(Check::Missing),
                    Err(e) => Err(store_err(&format!("cannot read blob {h}"), e)),
                }
            }))
            .buffered(16)
            .collect::<Vec<anyhow::Result<Check>>>()
            .await;
            heads.into_iter().collect()
        })
    }

    fn check_blobs(&self, blobs: &[(&str, Option<u64>)]) -> anyhow::Result<Vec<Check>> {
        match &self.local_root {
            Some(root) => blobs.iter().map(|(h, s)| self.check_local_blob(root, h, *s)).collect(),
            None => self.check_remote_blobs(blobs),
        }
    }

    /// Whether a blob in the store holds exactly these bytes, so that storing them again can be skipped. A present
    /// blob that is corrupt is reported, and then replaced by the caller.
    fn blob_intact(&self, hash: &str, size: u64) -> anyhow::Result<bool> {
        if let Some(root) = &self.local_root {
            return Ok(match self.check_local_blob(root, hash, Some(size))? {
                Check::Ok => true,
                Check::Missing => false,
                Check::Corrupt(d) => {
                    // A file is replaced by renaming the new bytes over it; a directory (or another thing that is
                    // not a regular file) cannot be, so it is set aside first, like a corrupt entry.
                    let rel = Self::blob_rel(hash);
                    let regular = std::fs::metadata(root.join(&rel)).map_or(true, |m| m.is_file());
                    match (!regular).then(|| self.set_aside(&rel, "blobs-corrupt", None)).transpose()? {
                        Some(Some(dest)) => self.warn(format!(
                            "blob {hash} in the store is corrupt ({d}); moved it to {dest} and storing the new bytes"
                        )),
                        _ => self.warn(format!(
                            "blob {hash} in the store is corrupt ({d}); replacing it with the new bytes"
                        )),
                    }
                    false
                }
            });
        }
        // Remote: skip only what this machine has seen intact with the same ETag (a download that hashed right, or
        // its own upload); anything else is uploaded again, which is an atomic overwrite.
        match self.block_on(self.os.head(&self.blob_path(hash))) {
            Ok(m) => {
                let sig = format!("{} {}", m.size, m.e_tag.unwrap_or_default());
                Ok(m.size == size && self.state.lock().unwrap().get(hash) == Some(&sig))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_err(&format!("cannot read blob {hash}"), e)),
        }
    }

    fn remember_remote(&self, hash: &str, size: u64, e_tag: Option<String>) {
        if self.local_root.is_none()
            && let Some(t) = e_tag
        {
            self.state.lock().unwrap().put(hash, format!("{size} {t}"));
        }
    }

    /// Stores the bytes of a local file as a blob (skipped when an intact copy is present); returns (hash, size).
    pub fn put_file(&self, path: &Path) -> anyhow::Result<(String, u64)> {
        self.store_file(path, false)
    }

    /// [`Store::put_file`]; with `take`, the caller gives the file up (see [`Store::store_blob`]).
    fn store_file(&self, path: &Path, take: bool) -> anyhow::Result<(String, u64)> {
        let (hash, size) = key::hash_file(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        self.store_blob(path, &hash, size, take)?;
        Ok((hash, size))
    }

    /// Uploads a file; small ones in one atomic put, large ones as a multipart upload that becomes visible only
    /// when complete. Either replaces what was there atomically.
    fn upload(&self, path: &Path, dest: &ObjPath, hash: &str, size: u64) -> anyhow::Result<()> {
        const PART: usize = 16 << 20;
        let e_tag = self.block_on(async {
            if size <= PART as u64 {
                let data = tokio::fs::read(path).await?;
                let r = self
                    .os
                    .put(dest, PutPayload::from(data))
                    .await
                    .map_err(|e| store_err(&format!("cannot write {dest}"), e))?;
                return Ok::<_, anyhow::Error>(r.e_tag);
            }
            let mut up =
                self.os.put_multipart(dest).await.map_err(|e| store_err(&format!("cannot write {dest}"), e))?;
            // every part, or none: an upload that fails part-way is aborted, so that no unfinished multipart upload
            // is left for the bucket to keep (and bill) until a lifecycle rule removes it
            let parts = async {
                let mut f = tokio::fs::File::open(path).await?;
                use tokio::io::AsyncReadExt;
                let mut pending = Vec::new();
                loop {
                    let mut buf = vec![0u8; PART];
                    let mut filled = 0;
                    while filled < PART {
                        let n = f.read(&mut buf[filled..]).await?;
                        if n == 0 {
                            break;
                        }
                        filled += n;
                    }
                    if filled == 0 {
                        break;
                    }
                    buf.truncate(filled);
                    pending.push(up.put_part(PutPayload::from(buf)));
                    if pending.len() >= 4 {
                        for p in pending.drain(..) {
                            p.await.map_err(|e| store_err(&format!("cannot write {dest}"), e))?;
                        }
                    }
                    if filled < PART {
                        break;
                    }
                }
                for p in pending {
                    p.await.map_err(|e| store_err(&format!("cannot write {dest}"), e))?;
                }
                Ok::<_, anyhow::Error>(())
            }
            .await;
            if let Err(e) = parts {
                let _ = up.abort().await;
                return Err(e);
            }
            let r = up.complete().await.map_err(|e| store_err(&format!("cannot complete {dest}"), e))?;
            Ok(r.e_tag)
        })?;
        self.remember_remote(hash, size, e_tag);
        Ok(())
    }

    pub fn put_bytes(&self, data: Vec<u8>) -> anyhow::Result<String> {
        let hash = blake3::hash(&data).to_hex().to_string();
        let size = data.len() as u64;
        if !self.blob_intact(&hash, size)? {
            let dest = self.blob_path(&hash);
            let r = self
                .block_on(self.os.put(&dest, PutPayload::from(data)))
                .map_err(|e| store_err(&format!("cannot write {dest}"), e))?;
            self.remember_remote(&hash, size, r.e_tag);
        }
        Ok(hash)
    }

    /// Stores a directory artifact that the caller gives up (see [`Store::store_blob`]): every file, then its
    /// listing. Returns (listing hash, total size).
    fn put_tree(&self, dir: &Path) -> anyhow::Result<(String, u64)> {
        let tree = key::hash_tree(dir)?;
        for f in &tree.files {
            self.store_blob(&dir.join(&f.path), &f.hash, f.size, true)?;
        }
        let size = tree.files.iter().map(|f| f.size).sum();
        Ok((self.put_bytes(tree.bytes())?, size))
    }

    /// Stores a node's output (file or directory) from its scratch space, which the caller then removes: a
    /// `file://` store takes the files by renaming them (no copy).
    pub fn put_output(&self, path: &Path, kind: ArtifactKind) -> anyhow::Result<OutputRef> {
        let (hash, size) = match kind {
            ArtifactKind::File => self.store_file(path, true)?,
            ArtifactKind::Dir => self.put_tree(path)?,
        };
        Ok(OutputRef { hash, kind, size })
    }

    /// Stores the file `path` as the blob `hash` unless an intact copy is present. With `take` (the caller gives the
    /// file up), a `file://` store renames it into place when it is on the same file system (atomic, like an upload;
    /// a node's scratch space is inside the store's local directory); otherwise it is uploaded.
    fn store_blob(&self, path: &Path, hash: &str, size: u64, take: bool) -> anyhow::Result<()> {
        if self.blob_intact(hash, size)? {
            // `gc` keeps an unreferenced blob while it is younger than the grace period: a blob stored long ago and
            // now stored again (an output that reproduces old bytes) would otherwise look old and unreferenced until
            // this run writes its entry, and a `gc` meanwhile would delete it under the entry. Its mtime is made
            // now, as an upload's would be. (Remote stores cannot set a time without uploading again; there the
            // grace period must exceed the longest run.) Best effort: a blob owned by another user of a shared
            // store cannot have its time set, which leaves that race, not a reason to fail the node.
            if let Some(root) = &self.local_root {
                let blob = root.join(Self::blob_rel(hash));
                let _ = std::fs::File::open(&blob).and_then(|f| f.set_modified(std::time::SystemTime::now()));
            }
            return Ok(());
        }
        if take && let Some(root) = &self.local_root {
            let dest = root.join(Self::blob_rel(hash));
            if let Some(dir) = dest.parent() {
                std::fs::create_dir_all(dir).map_err(|e| store_err(&format!("cannot create {}", dir.display()), e))?;
            }
            if std::fs::rename(path, &dest).is_ok() {
                return Ok(());
            }
        }
        self.upload(path, &self.blob_path(hash), hash, size)
    }

    /// Reads a whole blob, verified.
    pub fn get_bytes(&self, hash: &str) -> anyhow::Result<Bytes> {
        if !is_hash(hash) {
            return Err(Corrupt { hash: hash.into(), detail: "not a blob address".into() }.into());
        }
        let data: Bytes = if self.local_root.is_some() {
            match self.read(&Self::blob_rel(hash)) {
                Ok(Some(b)) => b.into(),
                Ok(None) => return Err(Corrupt { hash: hash.into(), detail: "missing from the store".into() }.into()),
                Err(e) if e.downcast_ref::<Unreadable>().is_some() => {
                    return Err(Corrupt { hash: hash.into(), detail: "not a regular file".into() }.into());
                }
                Err(e) => return Err(e),
            }
        } else {
            let p = self.blob_path(hash);
            self.block_on(async { self.os.get(&p).await?.bytes().await }).map_err(|e| match e {
                object_store::Error::NotFound { .. } => {
                    anyhow::Error::new(Corrupt { hash: hash.into(), detail: "missing from the store".into() })
                }
                e => store_err(&format!("cannot read {p}"), e),
            })?
        };
        let got = blake3::hash(&data).to_hex().to_string();
        if got != hash {
            return Err(Corrupt {
                hash: hash.into(),
                detail: format!("its bytes hash to {got} ({} bytes)", data.len()),
            }
            .into());
        }
        Ok(data)
    }

    /// A local path holding the verified bytes of a file blob.
    pub fn materialize_file(&self, hash: &str) -> anyhow::Result<PathBuf> {
        if !is_hash(hash) {
            return Err(Corrupt { hash: hash.into(), detail: "not a blob address".into() }.into());
        }
        if let Some(root) = &self.local_root {
            let path = root.join(Self::blob_rel(hash));
            if !self.verified.lock().unwrap().contains(hash) {
                let (got, size) = match key::hash_file(&path) {
                    Ok(x) => x,
                    Err(e) if is_not_found(&e) => {
                        return Err(Corrupt { hash: hash.into(), detail: "missing from the store".into() }.into());
                    }
                    Err(e) => return Err(store_err(&format!("cannot read {}", path.display()), e)),
                };
                if got != hash {
                    return Err(Corrupt {
                        hash: hash.into(),
                        detail: format!("its bytes hash to {got} ({size} bytes)"),
                    }
                    .into());
                }
                self.verified.lock().unwrap().insert(hash.to_string());
            }
            return Ok(path);
        }
        let cached = self.local_dir.join("blobs").join(hash);
        if cached.is_file() {
            if self.verified.lock().unwrap().contains(hash)
                || key::hash_file(&cached).map(|(h, _)| h == hash).unwrap_or(false)
            {
                self.verified.lock().unwrap().insert(hash.to_string());
                return Ok(cached);
            }
            let _ = std::fs::remove_file(&cached);
        }
        std::fs::create_dir_all(cached.parent().unwrap())?;
        let tmp = tempfile::NamedTempFile::new_in(cached.parent().unwrap())?;
        let p = self.blob_path(hash);
        let got = self.block_on(async {
            let res = self.os.get(&p).await?;
            let meta = res.meta.clone();
            let mut stream = res.into_stream();
            let mut hasher = blake3::Hasher::new();
            let mut f = std::io::BufWriter::new(tmp.as_file());
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                hasher.update(&chunk);
                f.write_all(&chunk)
                    .map_err(|e| object_store::Error::Generic { store: "local", source: Box::new(e) })?;
            }
            f.flush().map_err(|e| object_store::Error::Generic { store: "local", source: Box::new(e) })?;
            Ok::<_, object_store::Error>((hasher.finalize().to_hex().to_string(), meta))
        });
        let (got, meta) = match got {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Corrupt { hash: hash.into(), detail: "missing from the store".into() }.into());
            }
            Err(e) => return Err(store_err(&format!("cannot read {p}"), e)),
        };
        if got != hash {
            return Err(Corrupt { hash: hash.into(), detail: format!("its bytes hash to {got}") }.into());
        }
        self.remember_remote(hash, meta.size, meta.e_tag);
        tmp.persist(&cached).map_err(|e| e.error)?;
        self.verified.lock().unwrap().insert(hash.to_string());
        Ok(cached)
    }

    /// Reads and parses a directory artifact's listing (every path relative and inside the directory, every hash a
    /// blob address).
    pub fn tree(&self, hash: &str) -> anyhow::Result<Tree> {
        let data = self.get_bytes(hash)?;
        let bad = |detail: String| anyhow::Error::new(Corrupt { hash: hash.into(), detail });
        let tree: Tree = serde_json::from_slice(&data).map_err(|e| bad(format!("not a directory listing: {e}")))?;
        for f in &tree.files {
            let p = Path::new(&f.path);
            let inside = !f.path.is_empty()
                && p.components().all(|c| matches!(c, std::path::Component::Normal(_)))
                && !f.path.contains('\\');
            if !inside || !is_hash(&f.hash) {
                return Err(bad(format!("not a directory listing: bad file entry `{}`", f.path.escape_debug())));
            }
        }
        Ok(tree)
    }

    /// A local directory holding a verified copy of a directory artifact. Assembled in a private temporary
    /// directory and renamed into place, so a reader never sees a partial tree; a tree already in place is verified
    /// and reused, never removed while another node (or process) may be reading it.
    pub fn materialize_dir(&self, hash: &str) -> anyhow::Result<PathBuf> {
        let lock = self.dir_locks.lock().unwrap().entry(hash.to_string()).or_default().clone();
        let _held = lock.lock().unwrap();
        let trees = self.local_dir.join("trees");
        let dest = trees.join(hash);
        if dest.is_dir() && self.verified.lock().unwrap().contains(hash) {
            return Ok(dest);
        }
        let tree = self.tree(hash)?;
        // Damaged locally (not in the store), or not a directory at all (a file, a link): moved aside rather than
        // deleted under a reader's feet, and never in the way for good.
        let set_aside = || {
            let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
            let _ = std::fs::rename(&dest, trees.join(format!("{hash}.damaged.{}.{now}", std::process::id())));
        };
        match dest.symlink_metadata() {
            Ok(m) if m.is_dir() => {
                if tree_intact(&dest, &tree) {
                    self.verified.lock().unwrap().insert(hash.to_string());
                    return Ok(dest);
                }
                set_aside();
            }
            Ok(_) => set_aside(),
            Err(_) => {}
        }
        std::fs::create_dir_all(&trees)?;
        let tmp = tempfile::TempDir::new_in(&trees)?;
        for f in &tree.files {
            let src = self.materialize_file(&f.hash)?;
            let to = tmp.path().join(&f.path);
            std::fs::create_dir_all(to.parent().unwrap())?;
            if std::fs::hard_link(&src, &to).is_err() {
                std::fs::copy(&src, &to)?;
            }
        }
        match std::fs::rename(tmp.path(), &dest) {
            Ok(()) => {
                let _ = tmp.keep();
            }
            // Another process put the same tree in place first: use theirs once it checks out.
            Err(_) if dest.is_dir() && tree_intact(&dest, &tree) => {}
            Err(e) => return Err(anyhow::anyhow!("cannot place {}: {e}", dest.display())),
        }
        self.verified.lock().unwrap().insert(hash.to_string());
        Ok(dest)
    }

    pub fn materialize(&self, out: &OutputRef) -> anyhow::Result<PathBuf> {
        match out.kind {
            ArtifactKind::File => self.materialize_file(&out.hash),
            ArtifactKind::Dir => self.materialize_dir(&out.hash),
        }
    }

    /// Re-checks a blob reported corrupt and removes it if it still is (missing counts as bad), so that the node
    /// producing it stores it afresh. Returns false when the blob is intact now, e.g. because a concurrent
    /// recomputation has already replaced it.
    pub fn discard_if_corrupt(&self, hash: &str) -> anyhow::Result<bool> {
        self.verified.lock().unwrap().remove(hash);
        self.state.lock().unwrap().forget(hash);
        let _ = std::fs::remove_file(self.local_dir.join("blobs").join(hash));
        match self.get_bytes(hash) {
            Ok(_) => return Ok(false),
            Err(e) if e.downcast_ref::<Corrupt>().is_some() => {}
            Err(e) => return Err(e),
        }
        if !is_hash(hash) {
            return Ok(true);
        }
        match self.block_on(self.os.delete(&self.blob_path(hash))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
            Err(e) => Err(store_err(&format!("cannot remove corrupt blob {hash}"), e)),
        }
    }

    /// The cache entry for `key`, if one is stored and can be trusted: it parses, its `check` matches, and it names
    /// this key. An entry that fails any of these is set aside (see the module documentation) with a warning, and
    /// reads as absent, so that its node runs again.
    pub fn get_entry(&self, key: &str) -> anyhow::Result<Option<Entry>> {
        let rel = Self::entry_rel(key);
        let read = match &self.local_root {
            Some(root) => read_with_meta(&root.join(&rel)).map(|r| r.map(|(b, _)| b)),
            None => self.read(&rel),
        };
        let bytes = match read {
            Ok(Some(x)) => x,
            Ok(None) => return Ok(None),
            Err(e) if e.downcast_ref::<Unreadable>().is_some() => {
                self.reject_entry(&rel, &e.to_string(), None)?;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let checked = check_matches(&bytes);
        let why = match serde_json::from_slice::<Entry>(&bytes) {
            Err(e) if e.is_syntax() || e.is_eof() => format!("not JSON: {e}"),
            Err(e) => format!("not a cache entry: {e}"),
            Ok(e) => match entry_mismatch(key, checked, &e) {
                None => return Ok(Some(e)),
                Some(why) => why,
            },
        };
        self.reject_entry(&rel, &why, Some(&bytes))?;
        Ok(None)
    }

    /// [`Store::get_entry`] reading only what a cache hit needs. An entry whose `check` matches is parsed as an
    /// [`EntryHead`]; any other (damaged, or written before checks existed) takes the full path.
    pub fn get_entry_head(&self, key: &str) -> anyhow::Result<Option<EntryHead>> {
        if let Some(root) = &self.local_root
            && let Ok(bytes) = std::fs::read(root.join(Self::entry_rel(key)))
            && check_matches(&bytes) == Some(true)
            && let Ok(h) = serde_json::from_slice::<EntryHead>(&bytes)
            && h.key == key
            && h.outputs.values().all(|o| is_hash(&o.hash))
        {
            return Ok(Some(h));
        }
        Ok(self.get_entry(key)?.map(|e| EntryHead {
            key: e.key,
            node: e.node,
            outputs: e.outputs,
            machine: e.machine,
            warnings: e.warnings,
        }))
    }

    fn reject_entry(&self, rel: &str, why: &str, seen: Option<&[u8]>) -> anyhow::Result<()> {
        if let Some(dest) = self.set_aside(rel, "cache-corrupt", seen)? {
            self.warn(format!(
                "cache entry {rel} cannot be used ({why}); set aside as {dest}, and its node is recomputed"
            ));
            let key = rel.rsplit('/').next().unwrap_or(rel).trim_end_matches(".json");
            self.incomplete.lock().unwrap().insert(
                key.to_string(),
                format!("its cache entry could not be used ({why}) and was set aside as {dest}"),
            );
        }
        Ok(())
    }

    /// Whether every blob an entry names (and every file of its directory outputs) is present, of the recorded size
    /// and intact (see the module documentation for how much is hashed). When not, the reason is kept for
    /// [`Store::incomplete_reason`], a warning is printed, and the caller runs the node again.
    pub fn entry_complete(&self, e: &Entry) -> anyhow::Result<bool> {
        self.outputs_complete(&e.key, &e.node, &e.outputs)
    }

    /// [`Store::entry_complete`] for the parts of an entry it checks.
    pub fn outputs_complete(
        &self,
        key: &str,
        node: &str,
        outputs: &BTreeMap<String, OutputRef>,
    ) -> anyhow::Result<bool> {
        match self.entry_problem(node, outputs)? {
            None => {
                self.incomplete.lock().unwrap().remove(key);
                Ok(true)
            }
            Some(why) => {
                self.warn(format!("{why}; not served, so the node runs again"));
                self.incomplete.lock().unwrap().insert(key.to_string(), why);
                Ok(false)
            }
        }
    }

    fn entry_problem(&self, node: &str, outputs: &BTreeMap<String, OutputRef>) -> anyhow::Result<Option<String>> {
        let describe = |what: &str, hash: &str, c: &Check| match c {
            Check::Ok => None,
            Check::Missing => Some(format!("missing blob {hash} ({what}): not in the store")),
            Check::Corrupt(d) => Some(format!("corrupt blob {hash} ({what}): {d}")),
        };
        let files: Vec<(&str, Option<u64>)> =
            outputs.values().map(|o| (o.hash.as_str(), (o.kind == ArtifactKind::File).then_some(o.size))).collect();
        let checks = self.check_blobs(&files)?;
        for ((name, o), c) in outputs.iter().zip(&checks) {
            let what = match o.kind {
                ArtifactKind::File => format!("output `{name}` of {}", node),
                ArtifactKind::Dir => format!("the listing of directory output `{name}` of {}", node),
            };
            if let Some(why) = describe(&what, &o.hash, c) {
                return Ok(Some(why));
            }
        }
        for (name, o) in outputs.iter().filter(|(_, o)| o.kind == ArtifactKind::Dir) {
            let tree = match self.tree(&o.hash) {
                Ok(t) => t,
                Err(err) => match err.downcast::<Corrupt>() {
                    Ok(c) => {
                        return Ok(Some(format!(
                            "corrupt blob {} (the listing of directory output `{name}` of {}): {}",
                            c.hash, node, c.detail
                        )));
                    }
                    Err(err) => return Err(err),
                },
            };
            let total: u64 = tree.files.iter().map(|f| f.size).sum();
            if total != o.size {
                return Ok(Some(format!(
                    "directory output `{name}` of {} lists {total} bytes but its entry records {}",
                    node, o.size
                )));
            }
            let files: Vec<(&str, Option<u64>)> = tree.files.iter().map(|f| (f.hash.as_str(), Some(f.size))).collect();
            for (f, c) in tree.files.iter().zip(self.check_blobs(&files)?) {
                if let Some(why) = describe(&format!("file `{}` of output `{name}` of {}", f.path, node), &f.hash, &c) {
                    return Ok(Some(why));
                }
            }
        }
        Ok(None)
    }

    /// Writes an entry create-only. If another runner wrote one first, returns theirs (which wins, so that every
    /// reader sees one result per key); `replace` overwrites an entry whose blobs were found missing or corrupt.
    /// An unusable entry in the way is set aside by the read and the write is tried again.
    pub fn put_entry(&self, e: &Entry, replace: bool) -> anyhow::Result<Entry> {
        let rel = Self::entry_rel(&e.key);
        let p = self.p(&rel);
        let rk = e.record.key();
        if rk != e.key {
            return Err(StoreError(format!(
                "internal error: refusing to store an entry for key {} whose record hashes to {}",
                e.key, rk
            ))
            .into());
        }
        let data = with_check(&serde_json::to_vec_pretty(e)?);
        let mode = if replace { PutMode::Overwrite } else { PutMode::Create };
        for _ in 0..3 {
            let res = self.block_on(self.os.put_opts(
                &p,
                PutPayload::from(data.clone()),
                PutOptions { mode: mode.clone(), ..Default::default() },
            ));
            match res {
                Ok(_) => return Ok(e.clone()),
                Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => {
                    if let Some(theirs) = self.get_entry(&e.key)? {
                        return Ok(theirs);
                    }
                    // Theirs was unusable and is set aside now (or vanished): try again.
                }
                Err(object_store::Error::NotImplemented { .. }) => {
                    // Stores without conditional writes: check, then write (a race leaves two identical-key entries
                    // with equal content for deterministic stages).
                    if let Some(old) = self.get_entry(&e.key)?.filter(|_| !replace) {
                        return Ok(old);
                    }
                    self.block_on(self.os.put(&p, PutPayload::from(data)))
                        .map_err(|err| store_err(&format!("cannot write {p}"), err))?;
                    return Ok(e.clone());
                }
                Err(err) => return Err(store_err(&format!("cannot write {p}"), err)),
            }
        }
        Err(StoreError(format!("cannot write {p}: another process keeps writing unusable entries there")).into())
    }

    /// A node's name within its scope (the manifest), as a file name.
    fn node_id(scope: &str, node: &str) -> String {
        blake3::hash(format!("{scope}\0{node}").as_bytes()).to_hex()[..32].to_string()
    }

    fn node_pointer(scope: &str, node: &str) -> String {
        format!("nodes/{}.json", Self::node_id(scope, node))
    }

    /// What a failure record keeps of an error: its first line, at most 300 characters.
    fn first_line(error: &str) -> String {
        error.lines().next().unwrap_or("").chars().take(300).collect()
    }

    /// Remembers the key a node had at its last run (for `status`/`explain`); `scope` separates manifests.
    pub fn set_last_key(&self, scope: &str, node: &str, key: &str) -> anyhow::Result<()> {
        let p = self.p(&Self::node_pointer(scope, node));
        let v = serde_json::json!({"node": node, "key": key});
        self.block_on(self.os.put(&p, PutPayload::from(serde_json::to_vec(&v)?)))
            .map_err(|e| store_err(&format!("cannot write {p}"), e))?;
        Ok(())
    }

    /// The key a node had at its last run. A pointer that cannot be read is set aside with a warning and reads as
    /// absent (it only ever explains what changed; it never decides a cache hit).
    pub fn last_key(&self, scope: &str, node: &str) -> anyhow::Result<Option<String>> {
        let rel = Self::node_pointer(scope, node);
        let bytes = match self.read(&rel) {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(None),
            Err(e) if e.downcast_ref::<Unreadable>().is_some() => {
                self.reject_pointer(&rel, node, &e.to_string(), None)?;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let key =
            serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| format!("not JSON: {e}")).and_then(|v| {
                match (v.get("node").and_then(|n| n.as_str()), v.get("key").and_then(|k| k.as_str())) {
                    (Some(n), Some(k)) if n == node && is_hash(k) => Ok(k.to_string()),
                    (Some(n), Some(_)) if n != node => Err(format!("it is the pointer of node `{}`", n.escape_debug())),
                    _ => Err("expected {\"node\": NAME, \"key\": HASH}".to_string()),
                }
            });
        match key {
            Ok(k) => Ok(Some(k)),
            Err(why) => {
                self.reject_pointer(&rel, node, &why, Some(&bytes))?;
                Ok(None)
            }
        }
    }

    /// Remembers that a node failed with `key` (for `status`/`explain`, which would otherwise say it never ran): the
    /// run, when, and the error's first line. Like the last-run pointer it only ever explains, never decides.
    pub fn set_failure(&self, scope: &str, node: &str, key: &str, run_id: &str, error: &str) -> anyhow::Result<()> {
        let rel = Self::node_pointer(scope, node).replace(".json", ".failed.json");
        let v = serde_json::json!({"node": node, "key": key, "run": run_id,
            "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true), "error": Self::first_line(error)});
        let p = self.p(&rel);
        self.block_on(self.os.put(&p, PutPayload::from(serde_json::to_vec(&v)?)))
            .map_err(|e| store_err(&format!("cannot write {p}"), e))?;
        Ok(())
    }

    /// The failure [`Store::set_failure`] recorded for this node, if it failed with `key`: "in run RUN (AT): ERROR".
    /// A record that cannot be read counts as none.
    pub fn failure(&self, scope: &str, node: &str, key: &str) -> anyhow::Result<Option<String>> {
        let rel = Self::node_pointer(scope, node).replace(".json", ".failed.json");
        let Ok(Some(bytes)) = self.read(&rel) else { return Ok(None) };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else { return Ok(None) };
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("?").to_string();
        Ok((s("node") == node && s("key") == key).then(|| format!("in run {} ({}): {}", s("run"), s("at"), s("error"))))
    }

    fn attempts_folder(run: &str, scope: &str, node: &str) -> String {
        format!("attempts/{run}/{}", Self::node_id(scope, node))
    }

    /// Records that one attempt (a pod) of `node` in the exported run `run` failed: `given_up` when it stopped
    /// because an upstream node will never be stored, which ends the node's Job at once. A second record of the same
    /// attempt is not written (the first, from the node itself, says more than the one its wrapper adds when the
    /// process was killed).
    pub fn record_attempt(
        &self,
        run: &str,
        scope: &str,
        node: &str,
        attempt: &str,
        given_up: bool,
        error: &str,
    ) -> anyhow::Result<()> {
        let id = blake3::hash(attempt.as_bytes()).to_hex();
        let rel = format!("{}/{}.json", Self::attempts_folder(run, scope, node), &id[..32]);
        let v = serde_json::json!({"node": node, "run": run, "attempt": attempt, "given_up": given_up,
            "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true), "error": Self::first_line(error)});
        let p = self.p(&rel);
        let data = PutPayload::from(serde_json::to_vec(&v)?);
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.block_on(self.os.put_opts(&p, data.clone(), opts)) {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => {
                Ok(())
            }
            // stores without conditional writes: check, then write
            Err(object_store::Error::NotImplemented { .. }) => {
                if self.read(&rel)?.is_none() {
                    self.block_on(self.os.put(&p, data)).map_err(|e| store_err(&format!("cannot write {p}"), e))?;
                }
                Ok(())
            }
            Err(e) => Err(store_err(&format!("cannot write {p}"), e)),
        }
    }

    /// The failed attempts of `node` in the exported run `run`, oldest first. A record that cannot be read, or that
    /// names another node or run, is left out: a missing record only makes a waiting job wait longer.
    pub fn failed_attempts(&self, run: &str, scope: &str, node: &str) -> anyhow::Result<Vec<FailedAttempt>> {
        let folder = Self::attempts_folder(run, scope, node);
        let mut out = vec![];
        for (rel, _, _) in self.list(&folder)? {
            let Ok(Some(bytes)) = self.read(&rel) else { continue };
            let Ok(a) = serde_json::from_slice::<FailedAttempt>(&bytes) else { continue };
            if a.node == node && a.run == run {
                out.push(a);
            }
        }
        out.sort_by(|a, b| a.at.cmp(&b.at));
        Ok(out)
    }

    fn reject_pointer(&self, rel: &str, node: &str, why: &str, seen: Option<&[u8]>) -> anyhow::Result<()> {
        if let Some(dest) = self.set_aside(rel, "nodes-corrupt", seen)? {
            self.warn(format!(
                "the last-run pointer of {node} ({rel}) cannot be used ({why}); set aside as {dest} (status cannot say \
                 what changed for this node until it runs again)"
            ));
        }
        Ok(())
    }

    pub fn put_journal(&self, run_id: &str, journal: &serde_json::Value) -> anyhow::Result<()> {
        let p = self.p(&format!("runs/{run_id}.json"));
        self.block_on(self.os.put(&p, PutPayload::from(serde_json::to_vec_pretty(journal)?)))
            .map_err(|e| store_err(&format!("cannot write {p}"), e))?;
        Ok(())
    }

    /// Every object under a folder of the store: (path relative to the prefix, size, last modified). `file://`
    /// stores are walked directly; names that are not UTF-8 are left out with a warning, and files being written
    /// by `object_store` (`NAME#N`) are left out.
    pub fn list(&self, folder: &str) -> anyhow::Result<Vec<(String, u64, chrono::DateTime<chrono::Utc>)>> {
        if let Some(root) = &self.local_root {
            let mut out = Vec::new();
            self.walk(root, &root.join(folder), &mut out)?;
            out.sort();
            return Ok(out);
        }
        let base = self.p(folder);
        let prefix_len = self.prefix.parts().count();
        self.block_on(async {
            let mut out = Vec::new();
            let mut s = self.os.list(Some(&base));
            while let Some(m) = s.next().await {
                let m = m.map_err(|e| store_err(&format!("cannot list {base}"), e))?;
                let rel: Vec<String> = m.location.parts().skip(prefix_len).map(|p| p.as_ref().to_string()).collect();
                out.push((rel.join("/"), m.size, m.last_modified));
            }
            Ok(out)
        })
    }

    fn walk(
        &self,
        root: &Path,
        dir: &Path,
        out: &mut Vec<(String, u64, chrono::DateTime<chrono::Utc>)>,
    ) -> anyhow::Result<()> {
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
                self.warn(format!("{} is a file where the store expects a folder; left alone", dir.display()));
                return Ok(());
            }
            Err(e) => return Err(store_err(&format!("cannot list {}", dir.display()), e)),
        };
        for ent in rd {
            let ent = ent.map_err(|e| store_err(&format!("cannot list {}", dir.display()), e))?;
            let path = ent.path();
            let Ok(rel) = path.strip_prefix(root).map(|r| r.to_string_lossy().to_string()) else { continue };
            if ent.file_name().to_str().is_none() {
                self.warn(format!("{} has a name that is not UTF-8; left alone", path.display()));
                continue;
            }
            let meta = ent.metadata().map_err(|e| store_err(&format!("cannot read {}", path.display()), e))?;
            if meta.is_dir() {
                self.walk(root, &path, out)?;
            } else if meta.is_file() && !rel.contains('#') {
                let modified = meta.modified().map(chrono::DateTime::<chrono::Utc>::from).unwrap_or_default();
                out.push((rel, meta.len(), modified));
            }
        }
        Ok(())
    }

    /// What killed runs leave behind, unchanged since before `cutoff`: a `file://` store's `NAME#N` files under
    /// `blobs/`, `cache/`, `nodes/` and `runs/` (written by `object_store` and renamed into place: a kill between the
    /// two leaves them, never listed or served), and the local area's half-assembled directory artifacts
    /// (`trees/.tmp…`, holding hard links to blobs) and damaged ones set aside (`trees/HASH.damaged.…`). Each as
    /// (path, bytes). "Unchanged" is the newest status change (ctime) in the whole subtree: a link added deep in a
    /// tree being assembled, or the rename that set a tree aside, counts, where modification times would not.
    pub fn leftovers(&self, cutoff: chrono::DateTime<chrono::Utc>) -> Vec<(PathBuf, u64)> {
        use std::os::unix::fs::MetadataExt;
        // (bytes, newest ctime in nanoseconds) of a file or a directory's subtree, links not followed
        fn walk(p: &Path) -> (u64, i128) {
            let Ok(m) = p.symlink_metadata() else { return (0, i128::MAX) };
            let ctime = m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128;
            if !m.is_dir() {
                return (m.len(), ctime);
            }
            std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| walk(&e.path()))
                .fold((0, ctime), |(b, t), (b2, t2)| (b + b2, t.max(t2)))
        }
        let cutoff = cutoff.timestamp() as i128 * 1_000_000_000 + cutoff.timestamp_subsec_nanos() as i128;
        let mut out = vec![];
        // object_store's staging names: NAME#N, N digits after the first `#` (as it reads them)
        let staging = |name: &str| {
            name.split_once('#').is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        };
        fn files(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                match e.file_type() {
                    Ok(t) if t.is_dir() => files(&e.path(), out),
                    Ok(t) if t.is_file() => out.push(e.path()),
                    _ => {}
                }
            }
        }
        if let Some(root) = &self.local_root {
            let mut all = vec![];
            for folder in ["blobs", "cache", "nodes", "runs", "attempts"] {
                files(&root.join(folder), &mut all);
            }
            for p in all {
                if p.file_name().is_some_and(|n| staging(&n.to_string_lossy())) {
                    let (bytes, changed) = walk(&p);
                    if changed < cutoff {
                        out.push((p, bytes));
                    }
                }
            }
        }
        for e in std::fs::read_dir(self.local_dir.join("trees")).into_iter().flatten().flatten() {
            let (p, name) = (e.path(), e.file_name().to_string_lossy().to_string());
            if name.starts_with(".tmp") || name.contains(".damaged.") {
                let (bytes, changed) = walk(&p);
                if changed < cutoff {
                    out.push((p, bytes));
                }
            }
        }
        out.sort();
        out
    }

    pub fn delete(&self, rel: &str) -> anyhow::Result<()> {
        let p = self.p(rel);
        match self.block_on(self.os.delete(&p)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_err(&format!("cannot delete {p}"), e)),
        }
    }
}

/// A local file's bytes and the metadata of the same open file; `None` when there is none.
fn read_with_meta(path: &Path) -> anyhow::Result<Option<(Vec<u8>, std::fs::Metadata)>> {
    use std::io::Read;
    let fail = |e: std::io::Error| -> anyhow::Result<Option<(Vec<u8>, std::fs::Metadata)>> {
        if is_not_found(&e) {
            Ok(None)
        } else if e.kind() == std::io::ErrorKind::IsADirectory {
            Err(Unreadable(format!("{} is a directory", path.display())).into())
        } else {
            Err(store_err(&format!("cannot read {}", path.display()), e))
        }
    };
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let meta = match f.metadata() {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    if meta.is_dir() {
        return Err(Unreadable(format!("{} is a directory", path.display())).into());
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    if let Err(e) = f.read_to_end(&mut buf) {
        return fail(e);
    }
    Ok(Some((buf, meta)))
}

/// An object that exists but cannot be read as a file (e.g. a directory in its place).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(pub String);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{InputRef, KEY_VERSION};

    #[test]
    fn a_computation_names_what_changes_libtorchs_bits_beyond_the_default() {
        let m = "AMD EPYC (x86_64)";
        // one CPU thread and no pin: the machine alone, as entries recorded it before the settings were
        assert_eq!(describe_computation(m, false, 1, &[]), m);
        assert_eq!(describe_computation(m, false, 2, &[]), "AMD EPYC (x86_64) with 2 threads");
        assert_eq!(describe_computation(m, true, 8, &[]), "AMD EPYC (x86_64) with CUDA");
        let pins = [("ATEN_CPU_CAPABILITY", "avx2".to_string()), ("MKL_CBWR", "AVX2".to_string())];
        assert_eq!(
            describe_computation(m, false, 1, &pins),
            "AMD EPYC (x86_64) with ATEN_CPU_CAPABILITY=avx2, MKL_CBWR=AVX2"
        );
        assert_eq!(
            describe_computation(m, false, 4, &pins[..1]),
            "AMD EPYC (x86_64) with 4 threads, ATEN_CPU_CAPABILITY=avx2"
        );
        let odd = [("MKL_CBWR", "AVX2\n$(x)".to_string())];
        assert_eq!(describe_computation(m, false, 1, &odd), "AMD EPYC (x86_64) with MKL_CBWR=AVX2\\n$(x)");
    }

    #[test]
    fn store_urls_are_checked() {
        for ok in
            ["file://.rmdistill/store", "file:///abs", "memory://", "s3://b/x", "gs://b", "az://c/p", "dir", "/a/b"]
        {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        let err = check_url("s3:/bucket/x").unwrap_err();
        assert!(err.contains("did you mean `s3://bucket/x`"), "{err}");
        for bad in ["", "file://", "http://host/x", "s3://", "x\ny", "ftp:x", "memory://x"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        assert!(check_url("./a:b").is_ok());
        // the root directory, an unexpanded `~`, a host: refused, each saying why
        for root in ["/", "//", "/.", "/..", "file:///", "file:////", "file://localhost/", "file:///./.."] {
            let err = check_url(root).unwrap_err();
            assert!(
                err.contains("is the root directory `/`") && err.contains("a directory of its own"),
                "{root}: {err}"
            );
        }
        for (tilde, hint) in [("~/x", "write $HOME/x"), ("~", "write $HOME"), ("file://~/x", "write file://$HOME/x")] {
            let err = check_url(tilde).unwrap_err();
            assert!(err.contains("begins with `~`") && err.contains(hint), "{tilde}: {err}");
        }
        assert!(check_url("~bob/x").unwrap_err().contains("write the absolute path"));
        for host in ["file://host/x", "file://store", "file://a:b", "file://10.0.0.1/x", "file://localhost.x/y"] {
            let err = check_url(host).unwrap_err();
            assert!(err.contains("names the host `") && err.contains("empty or localhost"), "{host}: {err}");
        }
        assert!(check_url("file://localhost").unwrap_err().contains("names no directory"));
        for ok in ["file://localhost/abs", "file://./x", "file://../x", "./~", "a~b", "/a/.."] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for (url, dir) in [
            ("file://.rmdistill/store", Some(".rmdistill/store")),
            ("file:///abs/d", Some("/abs/d")),
            ("file://localhost/abs/d", Some("/abs/d")),
            ("rel/d", Some("rel/d")),
            ("s3://b/x", None),
            ("memory://", None),
        ] {
            assert_eq!(local_path(url), dir, "{url}");
        }
    }

    #[test]
    fn object_store_urls_are_parsed_strictly() {
        // what is written is the prefix, segment by segment
        for (url, scheme, bucket, prefix) in [
            ("s3://b/x", "s3", "b", vec!["x"]),
            ("s3://b", "s3", "b", vec![]),
            ("s3://b/", "s3", "b", vec![]),
            ("gs://my-bucket.example/team_1/exp-2/", "gs", "my-bucket.example", vec!["team_1", "exp-2"]),
            ("az://c/p.v1/..x", "az", "c", vec!["p.v1", "..x"]),
            ("s3a://b/a/b/c", "s3a", "b", vec!["a", "b", "c"]),
            ("abfss://fs@acct.dfs.core.windows.net/p", "abfss", "fs@acct.dfs.core.windows.net", vec!["p"]),
        ] {
            assert_eq!(remote_parts(url), Ok(RemoteUrl { scheme, bucket, prefix }), "{url}");
            assert!(check_url(url).is_ok(), "{url}");
        }
        // what a URL parser or an object store would rewrite is refused, naming the part and what is expected
        for scheme in ["s3", "gs", "az"] {
            for (tail, needles) in [
                ("a/../../../etc", &["the segment `..` in its prefix `a/../../../etc`", "without `.` or `..`"][..]),
                ("a/./b", &["the segment `.` in its prefix `a/./b`"]),
                ("..", &["the segment `..`"]),
                ("a//b", &["an empty segment (`//`) in its prefix `a//b`", "separated by single slashes"]),
                ("/", &["an empty segment"]),
                ("x//", &["an empty segment"]),
                ("/x", &["an empty segment"]),
                ("%2e%2e/x", &["the percent-escape `%2e`", "escapes are not decoded"]),
                ("my%20prefix", &["the percent-escape `%20`"]),
                ("x?y=1", &["has a query (`?y=1`)", "without a query or fragment"]),
                ("x#frag", &["has a fragment (`#frag`)"]),
                ("x/?", &["has a query (`?`)"]),
                (
                    "my prefix",
                    &["the prefix segment `my prefix` holds a space", "ASCII letters, digits, `-`, `_` and `.` only"],
                ),
                ("a/b\\c", &["the prefix segment `b\\c` holds `\\`"]),
                ("a*", &["holds `*`"]),
                ("café", &["holds `é` (U+00E9)"]),
                ("a\u{202e}b", &["holds U+202E"]),
            ] {
                let url = format!("{scheme}://b/{tail}");
                let err = check_url(&url).unwrap_err();
                assert!(err.contains(&format!("store url `{url}`")), "{url}: {err}");
                for n in needles {
                    assert!(err.contains(n), "{url}: {err}\n  lacks: {n}");
                }
            }
        }
        for (url, needle) in [
            ("s3://user:pw@b/x", "the bucket `user:pw@b` holds `:` (a port or password has no place in a store url)"),
            ("gs://b:9000/x", "the bucket `b:9000` holds `:`"),
            ("s3://u@b/x", "the bucket `u@b` holds `@`"),
            ("az://a@b@c/x", "holds `@`"),
            ("s3:///x", "names no bucket"),
            ("gs://?x", "has a query"),
        ] {
            let err = check_url(url).unwrap_err();
            assert!(err.contains(needle), "{url}: {err}");
        }
    }

    fn entry(key_record: &KeyRecord, hash: &str) -> Entry {
        Entry {
            v: KEY_VERSION,
            key: key_record.key(),
            node: "n".into(),
            record: key_record.clone(),
            outputs: BTreeMap::from([(
                "out".to_string(),
                OutputRef { hash: hash.into(), kind: ArtifactKind::File, size: 5 },
            )]),
            // Floats that need 17 digits: their text must parse back to the same bits (serde_json's
            // `float_roundtrip`), or the entry's check and its record's key would not match after a read.
            summary: serde_json::json!({"b": 1.5, "a": [0.1, 1e-7, 12345678901234567890u64, 1.5778092959999999]}),
            warnings: vec!["3 of 9 duplicates prefer the other response".into()],
            created: "now".into(),
            seconds: 1.5778092959999999,
            machine: Some(machine().to_string()),
        }
    }

    fn record() -> KeyRecord {
        KeyRecord {
            v: KEY_VERSION,
            stage_kind: "generate".into(),
            code: "c".into(),
            params: serde_json::json!({"n": 3, "x": 0.30000000000000004, "y": 2.2250738585072014e-308, "z": 0.1 + 0.7})
                .as_object()
                .unwrap()
                .clone(),
            inputs: BTreeMap::from([(
                "i".into(),
                vec![InputRef { hash: "h".into(), node: "n".into(), coords: BTreeMap::new() }],
            )]),
            externals: BTreeMap::new(),
        }
    }

    #[test]
    fn entries_are_checked_against_their_key_and_check_hash() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("file://{}", d.path().join("s").display()), &d.path().join("l")).unwrap();
        let hash = store.put_bytes(b"hello".to_vec()).unwrap();
        let e = entry(&record(), &hash);
        store.put_entry(&e, false).unwrap();
        let got = store.get_entry(&e.key).unwrap().expect("a good entry reads back");
        assert!(store.entry_complete(&got).unwrap());
        let path = d.path().join("s").join(Store::entry_rel(&e.key));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"check\""), "{text}");

        // Another valid blob of the same size put in place of the output: the check hash no longer matches.
        let other = store.put_bytes(b"world".to_vec()).unwrap();
        std::fs::write(&path, text.replace(&hash, &other)).unwrap();
        assert!(store.get_entry(&e.key).unwrap().is_none());
        assert!(!path.exists() && d.path().join("s/cache-corrupt").join(format!("{}.json", e.key)).exists());

        // Garbage, and an entry filed under another key.
        std::fs::write(&path, "{not json").unwrap();
        assert!(store.get_entry(&e.key).unwrap().is_none());
        assert!(d.path().join("s/cache-corrupt").join(format!("{}.json.1", e.key)).exists());
        let mut r2 = record();
        r2.code = "d".into();
        let e2 = entry(&r2, &hash);
        store.put_entry(&e2, false).unwrap();
        std::fs::copy(d.path().join("s").join(Store::entry_rel(&e2.key)), &path).unwrap();
        assert!(store.get_entry(&e.key).unwrap().is_none());
        // A put over a garbage entry succeeds (the garbage is set aside first).
        std::fs::write(&path, "garbage").unwrap();
        store.put_entry(&e, false).unwrap();
        assert!(store.get_entry(&e.key).unwrap().is_some());
    }

    #[test]
    fn entries_with_long_floats_read_back_as_written() {
        // Every f64 printed by serde_json must parse back to itself; spot-check many that need 17 digits.
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("file://{}", d.path().join("s").display()), &d.path().join("l")).unwrap();
        let hash = store.put_bytes(b"hello".to_vec()).unwrap();
        let mut x: f64 = 1.0;
        for i in 0..200 {
            x = x * 1.000_000_123_456_789 + 1e-9 * i as f64;
            let mut r = record();
            r.params.insert("x".into(), serde_json::json!(x / 3.0));
            let mut e = entry(&r, &hash);
            e.seconds = x / 7.0;
            store.put_entry(&e, false).unwrap();
            assert!(store.get_entry(&e.key).unwrap().is_some(), "entry with {} did not read back", x / 3.0);
            // Without its check (as entries before checks were, or one edited by hand): refused, since its outputs
            // could name any blobs.
            let path = d.path().join("s").join(Store::entry_rel(&e.key));
            std::fs::write(&path, serde_json::to_vec_pretty(&e).unwrap()).unwrap();
            assert_eq!(check_matches(&std::fs::read(&path).unwrap()), None);
            assert!(store.get_entry(&e.key).unwrap().is_none(), "an entry without a check was served");
        }
    }

    #[test]
    fn a_password_in_a_refused_url_is_not_printed() {
        let url = "s3://AKIA1:s3cret@bucket/p";
        let e = Store::open(url, tempfile::tempdir().unwrap().path()).err().unwrap().to_string();
        assert!(!e.contains("s3cret") && e.contains("AKIA1:***@bucket"), "{e}");
        assert_eq!(redact_password("x", "s3://bucket/p"), "x");
    }

    /// An entry re-serialised by another tool (its `check` kept, but no longer where `put_entry` writes it) is
    /// refused: the seven-byte `"check"` was looked for in eight-byte windows, never found, and the entry was taken
    /// for one written before checks, whose outputs nothing verifies.
    #[test]
    fn a_re_serialised_entry_is_refused_whatever_its_outputs() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("file://{}", d.path().join("s").display()), &d.path().join("l")).unwrap();
        let (a, b) = (store.put_bytes(b"rho 0.2".to_vec()).unwrap(), store.put_bytes(b"rho 0.8".to_vec()).unwrap());
        let e = entry(&record(), &a);
        store.put_entry(&e, false).unwrap();
        let path = d.path().join("s").join(Store::entry_rel(&e.key));
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        v["outputs"]["out"]["hash"] = serde_json::json!(b);
        let mut text = String::new();
        for (i, line) in serde_json::to_string_pretty(&v).unwrap().lines().enumerate() {
            text += &format!("{}{}\r\n", if i == 0 { "" } else { " " }, line.trim_start());
        }
        std::fs::write(&path, &text).unwrap();
        assert_eq!(check_matches(text.as_bytes()), Some(false));
        assert!(store.get_entry(&e.key).unwrap().is_none(), "a re-serialised entry naming other blobs was served");
    }

    #[test]
    fn a_corrupt_blob_is_not_complete_and_a_put_replaces_it() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("file://{}", d.path().join("s").display()), &d.path().join("l")).unwrap();
        let src = d.path().join("f");
        std::fs::write(&src, b"hello").unwrap();
        let (hash, _) = store.put_file(&src).unwrap();
        let e = entry(&record(), &hash);
        assert!(store.entry_complete(&e).unwrap());
        let blob = d.path().join("s").join(Store::blob_rel(&hash));
        std::fs::write(&blob, b"hellO").unwrap();
        assert!(!store.entry_complete(&e).unwrap());
        assert!(store.incomplete_reason(&e.key).unwrap().contains("(output `out` of n): its 5 bytes hash to"));
        std::fs::write(&blob, b"hell").unwrap();
        assert!(!store.entry_complete(&e).unwrap());
        store.put_file(&src).unwrap();
        assert_eq!(std::fs::read(&blob).unwrap(), b"hello");
        assert!(store.entry_complete(&e).unwrap());
        std::fs::remove_file(&blob).unwrap();
        assert!(!store.entry_complete(&e).unwrap());
        assert!(store.incomplete_reason(&e.key).unwrap().contains("missing"));
    }

    #[test]
    fn the_state_database_remembers_only_settled_files() {
        let d = tempfile::tempdir().unwrap();
        let url = format!("file://{}", d.path().join("s").display());
        let store = Store::open(&url, &d.path().join("l")).unwrap();
        let hash = store.put_bytes(b"settled".to_vec()).unwrap();
        let blob = d.path().join("s").join(Store::blob_rel(&hash));
        let root = d.path().join("s").canonicalize().unwrap();
        // Just written: checked by hashing, not remembered.
        assert_eq!(store.check_local_blob(&root, &hash, Some(7)).unwrap(), Check::Ok);
        assert!(store.state.lock().unwrap().get(&hash).is_none());
        // Old enough: remembered, and saved for the next process.
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        std::fs::File::options().write(true).open(&blob).unwrap().set_modified(old).unwrap();
        // ctime is now; wait until it is settled too.
        std::thread::sleep(std::time::Duration::from_secs(RACY_SECS as u64 + 1));
        assert_eq!(store.check_local_blob(&root, &hash, Some(7)).unwrap(), Check::Ok);
        assert!(store.state.lock().unwrap().get(&hash).is_some());
        drop(store);
        let store = Store::open(&url, &d.path().join("l")).unwrap();
        assert!(store.state.lock().unwrap().get(&hash).is_some());
        // Any write changes ctime, even one that restores mtime: hashed again, and found corrupt.
        std::fs::write(&blob, b"unsettl").unwrap();
        std::fs::File::options().write(true).open(&blob).unwrap().set_modified(old).unwrap();
        assert!(matches!(store.check_local_blob(&root, &hash, Some(7)).unwrap(), Check::Corrupt(_)));
    }
}
