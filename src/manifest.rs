//! Manifests and pipelines: strict TOML parsing with source positions, and the merge of a manifest over the
//! pipeline it instantiates. Expansion into nodes lives in `plan`.
//!
//! A pipeline file declares `[vars]` and `[stages.NAME]`; a manifest names a `pipeline`, overrides some of its
//! vars, may add stages, and says where the store is (`[store]`) and how to execute (`[execution]`). Both are TOML
//! and both reject unknown keys. Nothing in a manifest is ever executed by a shell.

use crate::error::{ManifestError, clip, quoted};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// The text of one TOML file, kept so that any later error can name its line and column.
#[derive(Debug)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    pub fn error(&self, span: Range<usize>, message: impl Into<String>) -> ManifestError {
        ManifestError::at(&self.path, &self.text, span.start, message)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    pipeline: Option<Spanned<String>>,
    description: Option<String>,
    #[serde(default)]
    vars: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    stages: BTreeMap<Spanned<String>, Spanned<StageDecl>>,
    store: Option<Spanned<StoreDecl>>,
    execution: Option<Spanned<ExecutionDoc>>,
}

/// One stage of a pipeline as written.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct StageDecl {
    pub kind: Spanned<String>,
    pub description: Option<String>,
    /// Input slot → `"stage.output"`, or a list of them for slots that take many artifacts.
    #[serde(default)]
    pub inputs: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    /// Sweep axis → list of values (or `"${var}"` naming a list).
    #[serde(default)]
    pub sweep: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(default)]
    pub params: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(default)]
    pub resources: Resources,
}

/// What one node of a stage needs from a machine; exporters turn it into scheduler requests. Checked when the
/// manifest loads (so a mistake is reported at its line and column): at least one CPU, memory and time as
/// [`crate::units`] parses them.
#[derive(Debug, Deserialize, Clone, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    #[serde(deserialize_with = "de_cpus")]
    pub cpus: u32,
    /// Memory, e.g. "4G" (a unit is required: K, M, G, T).
    #[serde(deserialize_with = "de_memory")]
    pub memory: String,
    pub gpus: u32,
    /// Wall-time limit, e.g. "2h", "30m" or "1h30m" (a unit is required: s, m, h, d).
    #[serde(deserialize_with = "de_time")]
    pub time: String,
}

fn de_cpus<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if n == 0 {
        return Err(serde::de::Error::custom("resources.cpus = 0: a node needs at least one CPU"));
    }
    Ok(n)
}

/// A resource written as a string; another type is named with the field and the form expected (serde alone says
/// "invalid type: integer `60`, expected a string", naming neither).
fn resource_string<'de, D: serde::Deserializer<'de>>(d: D, field: &str, example: &str) -> Result<String, D::Error> {
    match toml::Value::deserialize(d)? {
        toml::Value::String(s) => Ok(s),
        other => Err(serde::de::Error::custom(format!(
            "resources.{field} = {other}: expected a string with a unit, e.g. {example}"
        ))),
    }
}

fn de_memory<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = resource_string(d, "memory", "\"8G\" or \"512M\"")?;
    crate::units::parse_memory_mib(&s).map_err(|e| serde::de::Error::custom(format!("resources.memory: {e}")))?;
    Ok(s)
}

fn de_time<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = resource_string(d, "time", "\"90s\", \"30m\" or \"1h30m\"")?;
    match crate::units::parse_duration(&s) {
        Ok(t) if t.is_zero() => Err(serde::de::Error::custom("resources.time: must be more than 0s")),
        Ok(_) => Ok(s),
        Err(e) => Err(serde::de::Error::custom(format!("resources.time: {e}"))),
    }
}

impl Default for Resources {
    fn default() -> Self {
        Resources { cpus: 1, memory: "4G".into(), gpus: 0, time: "1h".into() }
    }
}

#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct StoreDecl {
    /// An object_store URL: `file://…` (relative paths, which begin with `.`, are relative to the working
    /// directory), `memory://`, `s3://bucket/prefix`, `gs://…`, `az://…` (see [`crate::store::check_url`]).
    pub url: Option<Spanned<String>>,
}

/// `[execution]` as written, with positions for errors.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ExecutionDoc {
    jobs: Option<Spanned<usize>>,
    device: Option<Spanned<String>>,
}

/// The most nodes that may run at once (`[execution] jobs`, `run -j`): each is a thread of the runner.
pub const MAX_JOBS: usize = 256;

/// The devices `[execution] device` and `--device` name.
pub const DEVICES: &[&str] = &["auto", "cpu", "cuda", "gpu"];

#[derive(Debug, Clone, Default)]
pub struct ExecutionDecl {
    /// Nodes run at once on CPU (1 to [`MAX_JOBS`]).
    pub jobs: Option<usize>,
    /// `auto`, `cpu` or `cuda` (`gpu` is a synonym).
    pub device: Option<String>,
    /// `FILE:LINE:COL` of `device`, so that a later error about it (no CUDA device) can say where it was asked for.
    pub device_at: Option<String>,
}

/// A stage with the file it was declared in.
#[derive(Debug, Clone)]
pub struct DeclaredStage {
    pub name: String,
    pub name_span: Range<usize>,
    pub span: Range<usize>,
    pub decl: StageDecl,
    /// Index into `Manifest::sources`.
    pub source: usize,
}

/// A variable with where its value was written.
#[derive(Debug, Clone)]
pub struct Var {
    /// The value, with the `${name}` references to other variables it held substituted.
    pub value: toml::Value,
    pub span: Range<usize>,
    pub source: usize,
    /// The `--set NAME=VALUE` argument that replaced the value written at `span`, if one did.
    pub set: Option<String>,
}

/// A manifest merged over its pipeline: everything `plan` needs, with positions.
#[derive(Debug)]
pub struct Manifest {
    /// `sources[0]` is the manifest itself; `sources[1]`, if any, its pipeline.
    pub sources: Vec<Source>,
    pub description: Option<String>,
    pub vars: BTreeMap<String, Var>,
    pub stages: Vec<DeclaredStage>,
    pub store_url: Option<String>,
    pub execution: ExecutionDecl,
}

impl Manifest {
    /// Directory that relative data paths in the manifest are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        self.sources[0].path.parent().map(Path::to_path_buf).unwrap_or_default()
    }
    pub fn path(&self) -> &Path {
        &self.sources[0].path
    }
}

/// Largest manifest (or pipeline) read, in bytes: hand-written TOML is kilobytes; anything near this is not one.
const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// What a file that is not a regular one is, for an error message.
fn file_kind(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

/// Reads a manifest's bytes: only a regular file, and at most [`MAX_MANIFEST_BYTES`] of it. Opened without blocking
/// (a FIFO would wait for a writer) and checked on the open file, so that what is read is what was checked; read
/// through `take`, so that a file growing meanwhile cannot exceed the limit either.
fn read_manifest_bytes(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let cannot = |e: &dyn std::fmt::Display| anyhow::anyhow!("cannot read {what} {}: {e}", path.display());
    // `stat` first: opening a directory for reading succeeds on Linux, and its error later would say less.
    let meta = std::fs::metadata(path).map_err(|e| cannot(&e))?;
    let not_regular =
        |t: std::fs::FileType| cannot(&format!("not a regular file ({}): a {what} is a TOML file", file_kind(t)));
    if !meta.is_file() {
        return Err(not_regular(meta.file_type()));
    }
    let file =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(|e| cannot(&e))?;
    let meta = file.metadata().map_err(|e| cannot(&e))?;
    if !meta.is_file() {
        return Err(not_regular(meta.file_type()));
    }
    let too_big = |n: u64| {
        cannot(&format!(
            "{n} bytes is larger than the limit of {} MiB for a {what} (is this the right file?)",
            MAX_MANIFEST_BYTES >> 20
        ))
    };
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut bytes).map_err(|e| cannot(&e))?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

/// A manifest's or pipeline's text (`what` names which, for the errors).
fn read_source(path: &Path, what: &str) -> anyhow::Result<Source> {
    let bytes = read_manifest_bytes(path, what)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let before = String::from_utf8_lossy(&e.as_bytes()[..valid]).to_string();
        let bad = e.as_bytes()[valid];
        ManifestError::at(
            path,
            &before,
            valid,
            format!("byte 0x{bad:02x} is not UTF-8: a {what} is TOML, which is UTF-8 text (re-save it as UTF-8)"),
        )
    })?;
    Ok(Source { path: path.to_path_buf(), text })
}

/// Deepest dotted key or table header nesting a manifest may use; TOML parsers stop far deeper, at an error
/// without a position.
const MAX_KEY_DEPTH: usize = 32;

/// Where a parse error without a position comes from when it is TOML's recursion limit: the first line whose table
/// header or dotted key nests deeper than [`MAX_KEY_DEPTH`] (byte offset and depth). Used only after the parser
/// failed, so a long line of dots in a string of a valid manifest can never be mistaken for one.
fn too_deep(text: &str) -> Option<(usize, usize)> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        let start = offset + (line.len() - t.len());
        offset += line.len();
        // Dots outside quotes in a header (up to its first `]`) or a key (up to `=`).
        let header = t.starts_with('[');
        let mut depth = 1;
        let mut quote: Option<char> = None;
        for c in t.chars() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '"' || c == '\'' => quote = Some(c),
                None if c == '.' => depth += 1,
                None if (header && c == ']') || c == '=' || c == '#' => break,
                None => {}
            }
        }
        if depth > MAX_KEY_DEPTH {
            return Some((start, depth));
        }
    }
    None
}

fn parse_doc(src: &Source) -> Result<FileDoc, ManifestError> {
    toml::from_str::<FileDoc>(&src.text).map_err(|e| {
        let mut message = rmdistill_stages::port::plain_serde(e.message().trim());
        match e.span() {
            Some(span) if span != (0..0) => {
                // toml says "duplicate key" without the key; the span covers it
                let key = src.text.get(span.clone()).map(str::trim).unwrap_or("");
                if message == "duplicate key" && !key.is_empty() && !key.contains('\n') {
                    message = format!("duplicate key `{key}` (set earlier in the same table)");
                }
                if let Some(m) = out_of_range(&src.text, &span, &message) {
                    message = m;
                }
                src.error(span, message)
            }
            _ => match too_deep(&src.text) {
                Some((at, depth)) if message.contains("recurs") => src.error(
                    at..at,
                    format!(
                        "{message}: keys nest {depth} levels deep here; a manifest nests at most {MAX_KEY_DEPTH} \
                         (e.g. [stages.NAME])"
                    ),
                ),
                _ => src.error(0..0, message),
            },
        }
    })
}

/// toml's error for a number literal it cannot hold ("u64 value was too large", "invalid type: integer `…` as i128",
/// "integer number overflowed", "floating-point number overflowed"), said as the key it is written for and the range a
/// manifest's numbers have; `None` for any other error.
fn out_of_range(text: &str, span: &Range<usize>, message: &str) -> Option<String> {
    let integer = message == "u64 value was too large"
        || message == "integer number overflowed"
        || (message.starts_with("invalid type: integer `") && message.contains("` as i128"));
    if !integer && message != "floating-point number overflowed" {
        return None;
    }
    let literal = text.get(span.clone())?.trim();
    if literal.is_empty() || literal.contains('\n') {
        return None;
    }
    let what = match key_of_value(text, span.start) {
        Some((key, false)) => format!("`{key}` = {literal}"),
        Some((key, true)) => format!("{literal} (in the list `{key}`)"),
        None => literal.to_string(),
    };
    Some(if integer {
        format!(
            "{what}: out of range: integers in a manifest are {} to {} (TOML's 64-bit integers)",
            i64::MIN,
            i64::MAX
        )
    } else {
        format!("{what}: out of range: numbers in a manifest are at most {:e} (a 64-bit float)", f64::MAX)
    })
}

/// The key whose value starts at byte `at` of `text`, and whether the value is an item of a list: the bare or quoted
/// key before the last `=` on the value's line, when only `[`, commas and number literals stand between them (a
/// list's items before it). `None` when the line holds no such key.
fn key_of_value(text: &str, at: usize) -> Option<(String, bool)> {
    let line = text.get(..at)?.rsplit('\n').next()?;
    let eq = line.rfind('=')?;
    let between = &line[eq + 1..];
    if !between.chars().all(|c| c.is_whitespace() || c.is_ascii_alphanumeric() || "[,+-._".contains(c)) {
        return None;
    }
    let before = line[..eq].trim_end();
    let key = if let Some(q) = before.strip_suffix('"') {
        let open = q.rfind('"')?;
        q[open + 1..].to_string()
    } else {
        let start = before.rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-')).map_or(0, |i| i + 1);
        before[start..].to_string()
    };
    (!key.is_empty()).then(|| (key, between.contains('[')))
}

/// Whether `--set` text is written as a TOML number, list, table or quoted string (so not meant as plain text).
fn looks_like_toml(v: &str) -> bool {
    let t = v.trim();
    t.starts_with(['[', '{', '"', '\'']) || is_number_shaped(t)
}

/// Digits in the shape of a number (`-12`, `1_000`, `0.5`, `.5`, `5.`, `3e-4`, `0x1F`, `0b101`), whatever their size
/// and whether or not TOML accepts that spelling.
fn is_number_shaped(v: &str) -> bool {
    let t = v.trim();
    let t = t.strip_prefix(['+', '-']).unwrap_or(t);
    let digits = |s: &str, radix: u32| !s.is_empty() && s.chars().all(|c| c.is_digit(radix) || c == '_');
    for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(r) = t.strip_prefix(prefix) {
            return digits(r, radix);
        }
    }
    let (mantissa, exponent) = match t.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e.strip_prefix(['+', '-']).unwrap_or(e))),
        None => (t, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        // one side of the point may be empty (`.5`, `5.`): TOML refuses both, a user means a number
        Some((i, f)) => (digits(i, 10) || i.is_empty()) && (digits(f, 10) || f.is_empty()) && i.len() + f.len() > 0,
        None => digits(mantissa, 10),
    };
    mantissa_ok
        && mantissa.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && exponent.is_none_or(|e| digits(e, 10))
}

/// The first non-finite float in a TOML value.
fn non_finite(v: &toml::Value) -> Option<f64> {
    match v {
        toml::Value::Float(f) if !f.is_finite() => Some(*f),
        toml::Value::Array(a) => a.iter().find_map(non_finite),
        toml::Value::Table(t) => t.values().find_map(non_finite),
        _ => None,
    }
}

/// Where in `span` of `text` the first `nan` or `inf` literal is (outside strings); the span's start otherwise.
fn locate_non_finite(text: &str, span: &Range<usize>) -> usize {
    let s = &text[span.start.min(text.len())..span.end.min(text.len())];
    let b = s.as_bytes();
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == b'"' || c == b'\'' => quote = Some(c),
            None => {
                let word_start = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
                let sign = usize::from(c == b'+' || c == b'-');
                let rest = &s[i + sign..];
                if word_start && (rest.starts_with("nan") || rest.starts_with("inf")) {
                    let end = i + sign + 3;
                    if end >= b.len() || !(b[end].is_ascii_alphanumeric() || b[end] == b'_') {
                        return span.start + i;
                    }
                }
            }
        }
        i += 1;
    }
    span.start
}

/// Rejects NaN and infinity: parameters become JSON in cache keys and stage inputs, where neither exists, so they
/// would silently turn into `null`.
fn check_finite(src: &Source, what: &str, v: &Spanned<toml::Value>) -> Result<(), ManifestError> {
    match non_finite(v.get_ref()) {
        None => Ok(()),
        Some(f) => Err(src.error(
            {
                let at = locate_non_finite(&src.text, &v.span());
                at..at
            },
            format!("{what}: expected a finite number, got {f} (NaN and infinity are not allowed in a manifest)"),
        )),
    }
}

/// Longest stage name, in bytes (its characters are ASCII): stage names become node names, job names, file names and
/// cloud tags. Exporters shorten them further where a scheduler needs it (a Kubernetes name has at most 63
/// characters, with a hash where that loses information).
pub const MAX_STAGE_NAME: usize = 128;

/// Why a stage name is refused, or `None`: letters, digits, `_` and `-` (ASCII), not beginning with `-` (a node name
/// begins with its stage's name and is passed as a command-line argument, e.g. to `node run`, where a leading `-`
/// reads as an option), at most [`MAX_STAGE_NAME`] characters.
fn bad_stage_name(s: &str) -> Option<String> {
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        Some(format!("stage name {} may use only letters, digits, `_` and `-` (ASCII)", quoted(s)))
    } else if s.starts_with('-') {
        Some(format!(
            "stage name {} begins with `-`: a stage name must begin with a letter, a digit or `_` (node names are \
             passed as command-line arguments, where a leading `-` reads as an option)",
            quoted(s)
        ))
    } else if s.len() > MAX_STAGE_NAME {
        Some(format!(
            "stage name {} is {} characters long; a stage name may have at most {MAX_STAGE_NAME} (it names nodes, \
             jobs and files)",
            quoted(s),
            s.len()
        ))
    } else {
        None
    }
}

/// `s` with each control character written as an escape (`\n`, `\t`, `\u{1b}`), so that an error echoing it stays one
/// line and shows what is there.
fn escape_controls(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { c.escape_debug().to_string() } else { c.to_string() }).collect()
}

/// A `--set` argument as an error message echoes it: control characters escaped, a long one clipped.
fn shown(set: &str) -> String {
    clip(&escape_controls(set))
}

/// What TOML reads in a `--set` value: `Ok` with the value and the bytes of `text` it spans, or TOML's message.
fn read_set_value(text: &str) -> Result<(toml::Value, Range<usize>), String> {
    const KEY: &str = "v = ";
    let doc = format!("{KEY}{text}");
    let mut table = toml::from_str::<BTreeMap<String, Spanned<toml::Value>>>(&doc).map_err(|e| {
        let m = e.message().trim_end();
        m.strip_suffix('.').unwrap_or(m).to_string()
    })?;
    let v = table.remove("v").ok_or("no value")?;
    let span = v.span().start.saturating_sub(KEY.len())..v.span().end.saturating_sub(KEY.len());
    Ok((v.into_inner(), span))
}

/// The kind of control character `c` is, for an error message.
fn control_name(c: char) -> String {
    match c {
        '\n' => "a newline".into(),
        '\r' => "a carriage return".into(),
        '\t' => "a tab".into(),
        _ => format!("the control character U+{:04X}", c as u32),
    }
}

/// The value `--set {set}` (`text` after its `=`) gives a variable whose manifest value is `old`.
///
/// A variable whose value is a string takes `text` verbatim, unless `text` begins and ends with the same quote: then
/// it is a TOML string (`"…"`, `'…'`, or `"""…"""` across lines), and gives its content. Any other variable reads
/// `text` as a TOML value (a number, boolean, list, table or quoted string), and takes text that is not written as one
/// as a string (the stage then says what it expected), but refuses what is written as a number, list, table or quoted
/// string that TOML cannot read. Either way the text must be that one value: a control character (a newline that
/// would start a second `NAME = VALUE`, a `[table]`) is refused outside a TOML string, and so is anything TOML reads
/// after the value (a `# comment`).
fn set_value(set: &str, text: &str, old: &toml::Value) -> anyhow::Result<toml::Value> {
    let control = |inside: Option<Range<usize>>| -> Option<(usize, char)> {
        text.char_indices().find(|(i, c)| c.is_control() && !inside.as_ref().is_some_and(|r| r.contains(i)))
    };
    let refuse_control = |(i, c): (usize, char)| -> anyhow::Error {
        let before = &text[..i];
        anyhow::anyhow!(
            "--set {}: the value has {} (after `{}`): one --set sets one variable (give each its own --set), and a \
             value with a newline or another control character is written as a TOML string (\"line 1\\nline 2\")",
            shown(set),
            control_name(c),
            clip(&escape_controls(before))
        )
    };
    let trailing = |span: &Range<usize>| -> Option<&str> {
        let rest = text[span.end.min(text.len())..].trim();
        (!rest.is_empty()).then_some(rest)
    };
    let t = text.trim();
    if old.is_str() {
        let quoted = t.len() >= 2 && ['"', '\''].into_iter().any(|q| t.starts_with(q) && t.ends_with(q));
        if !quoted {
            if let Some(at) = control(None) {
                return Err(refuse_control(at));
            }
            return Ok(toml::Value::String(text.to_string()));
        }
        let why = match read_set_value(text) {
            Ok((toml::Value::String(s), span)) => match trailing(&span) {
                None => match control(Some(span)) {
                    None => return Ok(toml::Value::String(s)),
                    Some(at) => return Err(refuse_control(at)),
                },
                Some(rest) => format!("it reads a string and then `{}`", clip(&escape_controls(rest))),
            },
            Ok((other, _)) => format!("it reads {} {other}", type_name(&other)),
            Err(e) => e,
        };
        anyhow::bail!(
            "--set {}: begins and ends with a quote, so it is read as a TOML string, but TOML cannot read it: {why}; \
             write the text as a TOML string ('…', or \"…\" with \\\" for a quote and \\\\ for a backslash inside)",
            shown(set)
        );
    }
    match read_set_value(text) {
        Ok((value, span)) => {
            // a control character may only be inside the string the whole text is
            let inside = value.is_str().then(|| span.clone());
            if let Some(at) = control(inside) {
                return Err(refuse_control(at));
            }
            if let Some(rest) = trailing(&span) {
                anyhow::bail!(
                    "--set {}: TOML reads {} and then `{}`: give the value alone",
                    shown(set),
                    clip(&escape_controls(&text[span.clone()])),
                    clip(&escape_controls(rest))
                );
            }
            Ok(value)
        }
        Err(_) if control(None).is_some() => Err(refuse_control(control(None).expect("found"))),
        Err(e) if looks_like_toml(text) => {
            let (what, hint) = match t.as_bytes().first() {
                Some(b'[') => ("list", ""),
                Some(b'{') => ("table", ""),
                Some(b'"' | b'\'') => ("string", ""),
                _ => (
                    "number",
                    " (integers are -9223372036854775808 to 9223372036854775807, floats at most about 1.8e308, \
                     with digits on both sides of a `.` and no leading zero)",
                ),
            };
            anyhow::bail!(
                "--set {}: written as a TOML {what}, but TOML cannot read it: {e}{hint}; to pass it as text, quote it \
                 as a TOML string (\"…\" or '…')",
                shown(set)
            )
        }
        Err(_) => Ok(toml::Value::String(text.to_string())),
    }
}

/// A value's TOML type with its article, for messages.
fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "a list",
        toml::Value::Table(_) => "a table",
    }
}

/// The name a string is exactly a reference to (`"${name}"`, which takes the variable's value with its type).
pub(crate) fn whole_ref(s: &str) -> Option<&str> {
    s.strip_prefix("${").and_then(|r| r.strip_suffix('}')).filter(|n| !n.contains("${") && !n.contains('}'))
}

/// A string cut into its text and its `${name}` references, in order; `$${` is a literal `${` (a text piece), and a
/// `${` without its `}` is an error.
pub(crate) fn pieces(s: &str) -> Result<Vec<Result<&str, &str>>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        if i > 0 && rest.as_bytes()[i - 1] == b'$' {
            if i > 1 {
                out.push(Ok(&rest[..i - 1]));
            }
            out.push(Ok("${"));
            rest = &rest[i + 2..];
            continue;
        }
        if i > 0 {
            out.push(Ok(&rest[..i]));
        }
        let after = &rest[i + 2..];
        let end = after.find('}').ok_or_else(|| {
            format!(
                "unterminated `${{` in \"{}\" (write `$${{` for a literal `${{`)",
                clip(&s.escape_debug().to_string())
            )
        })?;
        out.push(Err(&after[..end]));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        out.push(Ok(rest));
    }
    Ok(out)
}

/// Every `${name}` a value refers to, in order (repeats included).
fn refs_of(v: &toml::Value, out: &mut Vec<String>) -> Result<(), String> {
    match v {
        toml::Value::String(s) if s.contains("${") => match whole_ref(s) {
            Some(name) => out.push(name.to_string()),
            None => out.extend(pieces(s)?.into_iter().filter_map(|p| p.err()).map(str::to_string)),
        },
        toml::Value::Array(a) => a.iter().try_for_each(|x| refs_of(x, out))?,
        toml::Value::Table(t) => t.values().try_for_each(|x| refs_of(x, out))?,
        _ => {}
    }
    Ok(())
}

/// Every string inside a value (list items and table values included).
fn value_strings(v: &toml::Value) -> Box<dyn Iterator<Item = &str> + '_> {
    match v {
        toml::Value::String(s) => Box::new(std::iter::once(s.as_str())),
        toml::Value::Array(a) => Box::new(a.iter().flat_map(value_strings)),
        toml::Value::Table(t) => Box::new(t.values().flat_map(value_strings)),
        _ => Box::new(std::iter::empty()),
    }
}

/// Most bytes substituting variables into variables may produce, all of them together: a few variables that each use
/// the one before twice (`a = "${b}${b}"`) would otherwise double it at every step.
const MAX_SUBSTITUTED_BYTES: usize = 64 << 20;

/// About how many bytes a value takes (its text, or 24 for a number, boolean or date-time).
fn value_bytes(v: &toml::Value) -> usize {
    match v {
        toml::Value::String(s) => s.len() + 2,
        toml::Value::Array(a) => a.iter().map(|x| value_bytes(x) + 1).sum::<usize>() + 2,
        toml::Value::Table(t) => t.iter().map(|(k, x)| k.len() + 3 + value_bytes(x) + 1).sum::<usize>() + 2,
        _ => 24,
    }
}

/// `v` with its `${name}` references replaced by `vars`' (already substituted) values: a string that is exactly one
/// reference takes the value with its type, references inside longer strings are spliced in as text (as a stage's
/// params are, see `plan`). `budget` is what may still be produced; `None` when it would be exceeded.
fn substitute(
    v: &toml::Value,
    vars: &BTreeMap<String, Var>,
    sizes: &BTreeMap<String, usize>,
    budget: &mut usize,
) -> Option<toml::Value> {
    let mut spend = |n: usize| -> Option<()> {
        *budget = budget.checked_sub(n)?;
        Some(())
    };
    Some(match v {
        toml::Value::String(s) if s.contains("${") => match whole_ref(s) {
            Some(name) => {
                spend(sizes[name])?;
                vars[name].value.clone()
            }
            None => {
                let mut out = String::new();
                for p in pieces(s).ok()? {
                    match p {
                        Ok(text) => out.push_str(text),
                        Err(name) => {
                            spend(sizes[name])?;
                            let text = crate::plan::coord_str(&to_json(&vars[name].value));
                            spend(text.len().saturating_sub(sizes[name]))?;
                            out.push_str(&text);
                        }
                    }
                }
                toml::Value::String(out)
            }
        },
        toml::Value::Array(a) => {
            toml::Value::Array(a.iter().map(|x| substitute(x, vars, sizes, budget)).collect::<Option<_>>()?)
        }
        toml::Value::Table(t) => toml::Value::Table(
            t.iter().map(|(k, x)| Some((k.clone(), substitute(x, vars, sizes, budget)?))).collect::<Option<_>>()?,
        ),
        other => other.clone(),
    })
}

/// Substitutes the `${name}` references variables make to other variables (`title = "Study of ${data}"`), after
/// `--set`, so that an override flows into every variable that uses it. A reference to no variable, a cycle, or a
/// value that grows past [`MAX_SUBSTITUTED_BYTES`] is an error at the variable (or its `--set`).
fn resolve_vars(vars: &mut BTreeMap<String, Var>, sources: &[Source], stages: &[DeclaredStage]) -> anyhow::Result<()> {
    let fail = |vars: &BTreeMap<String, Var>, name: &str, message: String| -> anyhow::Error {
        let var = &vars[name];
        match &var.set {
            Some(set) => anyhow::anyhow!("--set {}: variable `{name}`: {message}", shown(set)),
            None => sources[var.source].error(var.span.clone(), format!("variable `{name}`: {message}")).into(),
        }
    };
    let mut refs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, var) in vars.iter() {
        let mut r = Vec::new();
        refs_of(&var.value, &mut r).map_err(|e| fail(vars, name, e))?;
        for to in &r {
            if vars.contains_key(to) {
                continue;
            }
            let axis = stages.iter().find(|s| s.decl.sweep.keys().any(|a| a.get_ref() == to));
            return Err(fail(
                vars,
                name,
                match axis {
                    Some(s) => format!(
                        "`${{{to}}}` is a sweep axis (of stage `{}`), which a variable cannot use: variables are \
                         substituted before sweeps expand (use `${{{to}}}` in the stage's params instead)",
                        s.name
                    ),
                    None => format!(
                        "`${{{to}}}` names no variable (variables: {})",
                        vars.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                },
            ));
        }
        r.sort();
        r.dedup();
        refs.insert(name.clone(), r);
    }
    // Depth-first, without recursion (a chain of variables may be long): each variable after those it uses.
    let mut order: Vec<String> = Vec::new();
    let mut state: BTreeMap<&str, u8> = BTreeMap::new(); // 1 on the path, 2 done
    for start in refs.keys() {
        if state.contains_key(start.as_str()) {
            continue;
        }
        let mut path: Vec<(&str, usize)> = vec![(start, 0)];
        state.insert(start, 1);
        while let Some((name, next)) = path.last_mut() {
            let name: &str = name;
            match refs[name].get(*next) {
                Some(to) => {
                    *next += 1;
                    match state.get(to.as_str()) {
                        Some(2) => {}
                        Some(_) => {
                            let from = path.iter().position(|(n, _)| *n == to).expect("on the path");
                            let mut cycle: Vec<&str> = path[from..].iter().map(|(n, _)| *n).collect();
                            cycle.push(to);
                            // a `--set` that closed the cycle is what to name
                            let at = cycle.iter().find(|n| vars[**n].set.is_some()).unwrap_or(&cycle[0]);
                            return Err(fail(
                                vars,
                                at,
                                format!(
                                    "cycle between variables: {} (a variable's value may use other variables, but not \
                                     itself through them)",
                                    cycle.join(" -> ")
                                ),
                            ));
                        }
                        None => {
                            state.insert(to, 1);
                            path.push((to, 0));
                        }
                    }
                }
                None => {
                    state.insert(name, 2);
                    order.push(name.to_string());
                    path.pop();
                }
            }
        }
    }
    let mut sizes: BTreeMap<String, usize> = BTreeMap::new();
    let mut budget = MAX_SUBSTITUTED_BYTES;
    // every variable with a reference or a `$${` in it: the escape must read the same whether or not the value
    // also uses a variable
    let mentions = |v: &toml::Value| value_strings(v).any(|s| s.contains("${"));
    for name in order {
        if !refs[&name].is_empty() || mentions(&vars[&name].value) {
            let value = substitute(&vars[&name].value, vars, &sizes, &mut budget).ok_or_else(|| {
                fail(
                    vars,
                    &name,
                    format!(
                        "with the variables it uses substituted, the values of the variables grow past {} MiB (do \
                         variables use each other many times over?)",
                        MAX_SUBSTITUTED_BYTES >> 20
                    ),
                )
            })?;
            vars.get_mut(&name).expect("declared").value = value;
        }
        sizes.insert(name.clone(), value_bytes(&vars[&name].value));
    }
    Ok(())
}

/// Reads a manifest (and the pipeline it names), merges them and applies `--set name=value` overrides.
pub fn load(path: &Path, sets: &[String]) -> anyhow::Result<Manifest> {
    let top = read_source(path, "manifest")?;
    let doc = parse_doc(&top)?;
    let mut sources = vec![top];
    let mut vars = BTreeMap::new();
    let mut stages = Vec::new();

    // names → index into `stages`: a manifest may declare thousands of stages
    let mut declared: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut add_stages = |stages: &mut Vec<DeclaredStage>,
                          sources: &[Source],
                          decls: BTreeMap<Spanned<String>, Spanned<StageDecl>>,
                          source: usize|
     -> Result<(), ManifestError> {
        for (name, decl) in decls {
            let src = &sources[source];
            if let Some(why) = bad_stage_name(name.get_ref()) {
                return Err(src.error(name.span(), why));
            }
            if let Some(prev) = declared.get(name.get_ref()).map(|&i| &stages[i]) {
                let (l, c) = crate::error::line_col(&sources[prev.source].text, prev.name_span.start);
                return Err(src.error(
                    name.span(),
                    format!(
                        "duplicate stage `{}` (already declared at {}:{l}:{c})",
                        name.get_ref(),
                        sources[prev.source].path.display()
                    ),
                ));
            }
            declared.insert(name.get_ref().clone(), stages.len());
            stages.push(DeclaredStage {
                name: name.get_ref().clone(),
                name_span: name.span(),
                span: decl.span(),
                decl: decl.into_inner(),
                source,
            });
        }
        Ok(())
    };

    if let Some(p) = &doc.pipeline {
        if p.get_ref().is_empty() {
            return Err(sources[0]
                .error(
                    p.span(),
                    "`pipeline` is empty: name a pipeline file (e.g. \"../pipelines/robust-distill.toml\")",
                )
                .into());
        }
        let ppath = sources[0].path.parent().unwrap_or(Path::new(".")).join(p.get_ref());
        let psrc = read_source(&ppath, "pipeline").map_err(|e| {
            sources[0].error(p.span(), format!("{e} (`pipeline` is a path relative to the manifest's directory)"))
        })?;
        let pdoc = parse_doc(&psrc)?;
        if let Some(pp) = &pdoc.pipeline {
            return Err(psrc.error(pp.span(), "a pipeline cannot name another pipeline").into());
        }
        if let Some(s) = &pdoc.store {
            return Err(psrc.error(s.span(), "[store] belongs in a manifest, not in a pipeline").into());
        }
        sources.push(psrc);
        for (k, v) in pdoc.vars {
            vars.insert(k, Var { span: v.span(), value: v.into_inner(), source: 1, set: None });
        }
        add_stages(&mut stages, &sources, pdoc.stages, 1)?;
        for (k, v) in doc.vars {
            if !vars.contains_key(&k) {
                let known: Vec<_> = vars.keys().cloned().collect();
                return Err(sources[0]
                    .error(
                        v.span(),
                        format!(
                            "pipeline {}: declares no variable `{k}` ({})",
                            sources[1].path.display(),
                            if known.is_empty() {
                                "it declares none".to_string()
                            } else {
                                format!("it declares: {}", known.join(", "))
                            }
                        ),
                    )
                    .into());
            }
            vars.insert(k, Var { span: v.span(), value: v.into_inner(), source: 0, set: None });
        }
    } else {
        for (k, v) in doc.vars {
            vars.insert(k, Var { span: v.span(), value: v.into_inner(), source: 0, set: None });
        }
    }
    add_stages(&mut stages, &sources, doc.stages, 0)?;
    if stages.is_empty() {
        // with a pipeline, that is the file that lost its stages (a truncated or damaged pipeline)
        let err = match sources.get(1) {
            Some(pipeline) => {
                pipeline.error(0..0, "the pipeline declares no stages, nor does the manifest (add [stages.NAME])")
            }
            None => {
                sources[0].error(0..0, "the manifest declares no stages (add [stages.NAME] or a `pipeline = \"…\"`)")
            }
        };
        return Err(err.into());
    }

    for (name, var) in &vars {
        let src = &sources[var.source];
        let spanned = Spanned::new(var.span.clone(), var.value.clone());
        check_finite(src, &format!("variable `{name}`"), &spanned)?;
    }
    for st in &stages {
        let src = &sources[st.source];
        for (k, v) in &st.decl.params {
            check_finite(src, &format!("stage `{}`: param `{}`", st.name, k.get_ref()), v)?;
        }
        for (k, v) in &st.decl.sweep {
            check_finite(src, &format!("stage `{}`: sweep `{}`", st.name, k.get_ref()), v)?;
        }
        for (k, v) in &st.decl.inputs {
            check_finite(src, &format!("stage `{}`: input `{}`", st.name, k.get_ref()), v)?;
        }
    }

    for set in sets {
        let (k, v) = set.split_once('=').ok_or_else(|| anyhow::anyhow!("--set {}: expected NAME=VALUE", shown(set)))?;
        let Some(var) = vars.get_mut(k) else {
            anyhow::bail!(
                "--set {}: the manifest declares no variable {} (known: {})",
                shown(set),
                quoted(&escape_controls(k)),
                vars.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        };
        var.value = set_value(set, v, &var.value)?;
        var.set = Some(set.clone());
        if let Some(f) = non_finite(&var.value) {
            anyhow::bail!("--set {}: expected a finite number, got {f} (NaN and infinity are not allowed)", shown(set));
        }
    }
    resolve_vars(&mut vars, &sources, &stages)?;

    let store_url = match doc.store.and_then(|s| s.into_inner().url) {
        Some(u) => {
            crate::store::check_url(u.get_ref())
                .map_err(|e| sources[0].error(u.span(), format!("[store] url: {e}")))?;
            Some(u.into_inner())
        }
        None => None,
    };
    let execution = match doc.execution.map(Spanned::into_inner) {
        None => ExecutionDecl::default(),
        Some(ExecutionDoc { jobs, device }) => {
            if let Some(j) = &jobs
                && !(1..=MAX_JOBS).contains(j.get_ref())
            {
                return Err(sources[0]
                    .error(j.span(), format!("[execution] jobs = {}: expected 1 to {MAX_JOBS}", j.get_ref()))
                    .into());
            }
            if let Some(d) = &device
                && !DEVICES.contains(&d.get_ref().to_ascii_lowercase().as_str())
            {
                return Err(sources[0]
                    .error(
                        d.span(),
                        format!(
                            "[execution] device = \"{}\": expected one of {}",
                            d.get_ref().escape_debug(),
                            DEVICES.join(", ")
                        ),
                    )
                    .into());
            }
            let device_at = device.as_ref().map(|d| {
                let (l, c) = crate::error::line_col(&sources[0].text, d.span().start);
                format!("{}:{l}:{c}", sources[0].path.display())
            });
            ExecutionDecl { jobs: jobs.map(Spanned::into_inner), device: device.map(Spanned::into_inner), device_at }
        }
    };

    Ok(Manifest { store_url, execution, description: doc.description, sources, vars, stages })
}

/// TOML value → JSON value (datetimes become strings). Non-finite floats have no JSON form; [`load`] rejects them,
/// so the `null` here is never reached from a manifest.
pub fn to_json(v: &toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.iter().map(to_json).collect()),
        toml::Value::Table(t) => J::Object(t.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(old: toml::Value, text: &str) -> anyhow::Result<toml::Value> {
        set_value(&format!("x={text}"), text, &old)
    }
    fn s(v: &str) -> toml::Value {
        toml::Value::String(v.into())
    }

    #[test]
    fn a_string_variable_takes_the_text_verbatim() {
        for text in
            ["1.10", "0x1F", "1e3", "1_000", "+1", "true", "[WIP] draft", "{x}", "007", "\"quoted", "'a' b", " v1 "]
        {
            assert_eq!(set(s("v1.0"), text).unwrap(), s(text), "{text}");
        }
    }

    #[test]
    fn a_string_variable_takes_the_content_of_a_toml_string() {
        for (text, want) in [
            ("\"1.10\"", "1.10"),
            ("'C:\\dir'", "C:\\dir"),
            ("\"a\\tb\"", "a\tb"),
            ("\"\"", ""),
            ("\"\"\"two\nlines\"\"\"", "two\nlines"),
            ("'''it's'''", "it's"),
        ] {
            assert_eq!(set(s("v1.0"), text).unwrap(), s(want), "{text}");
        }
        for (text, needle) in [
            ("\"C:\\p\"", "begins and ends with a quote, so it is read as a TOML string, but TOML cannot read it"),
            ("'it's'", "write the text as a TOML string ('…', or \"…\""),
            ("\"a\" # \"b\"", "it reads a string and then `# \"b\"`"),
        ] {
            let e = set(s("v1.0"), text).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--set x={text}: ")) && e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn other_variables_read_toml_as_before() {
        let n = toml::Value::Integer(1);
        assert_eq!(set(n.clone(), "0x1F").unwrap(), toml::Value::Integer(31));
        assert_eq!(set(n.clone(), "[0, 1]").unwrap(), toml::Value::Array(vec![0.into(), 1.into()]));
        assert_eq!(set(n.clone(), "'text'").unwrap(), s("text"));
        assert_eq!(set(n.clone(), "abc").unwrap(), s("abc"));
        let e = set(n.clone(), "007").unwrap_err().to_string();
        assert!(e.contains("written as a TOML number, but TOML cannot read it"), "{e}");
        let e = set(n.clone(), "5 # five").unwrap_err().to_string();
        assert_eq!(e, "--set x=5 # five: TOML reads 5 and then `# five`: give the value alone");
    }

    #[test]
    fn control_characters_are_refused_outside_a_toml_string() {
        for old in [s("v1.0"), toml::Value::Integer(1), toml::Value::Array(vec![])] {
            for (text, what) in [
                ("5\nseed=7", "a newline (after `5`)"),
                ("5\n[x]", "a newline (after `5`)"),
                ("[1,\n2]", "a newline (after `[1,`)"),
                ("a\tb", "a tab (after `a`)"),
                ("ab\r", "a carriage return (after `ab`)"),
                ("\u{1b}[31m", "the control character U+001B (after ``)"),
                ("\"a\"\n", "a newline (after `\"a\"`)"),
            ] {
                let e = set(old.clone(), text).unwrap_err().to_string();
                let echoed = escape_controls(text);
                assert!(
                    e.starts_with(&format!("--set x={echoed}: the value has {what}: one --set sets one variable")),
                    "{old}: {e}"
                );
                assert!(!e.contains(['\n', '\t', '\r', '\u{1b}']), "{e}");
            }
            // inside a TOML string they are the string's
            assert_eq!(set(old.clone(), "\"\"\"a\nb\"\"\"").unwrap(), s("a\nb"));
            assert_eq!(set(old.clone(), "\"a\tb\"").unwrap(), s("a\tb"));
        }
    }

    #[test]
    fn stage_names() {
        for ok in ["a", "_x", "9a-b", "a-", &"a".repeat(MAX_STAGE_NAME)] {
            assert_eq!(bad_stage_name(ok), None, "{ok}");
        }
        assert!(
            bad_stage_name("--help").unwrap().starts_with(
                "stage name `--help` begins with `-`: a stage name must begin with a letter, a digit or `_`"
            )
        );
        assert!(bad_stage_name("-").unwrap().contains("begins with `-`"));
        assert!(
            bad_stage_name("a;b").unwrap().starts_with("stage name `a;b` may use only letters, digits, `_` and `-`")
        );
        assert!(bad_stage_name("ρ").unwrap().contains("may use only"));
        assert!(bad_stage_name("").unwrap().contains("may use only"));
        let long = "a".repeat(MAX_STAGE_NAME + 1);
        assert_eq!(
            bad_stage_name(&long).unwrap(),
            format!(
                "stage name `{long}` is 129 characters long; a stage name may have at most 128 (it names nodes, jobs and files)"
            )
        );
    }

    fn load_text(text: &str, sets: &[&str]) -> anyhow::Result<Manifest> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.toml");
        std::fs::write(&p, text).unwrap();
        load(&p, &sets.iter().map(|x| x.to_string()).collect::<Vec<_>>())
    }
    const STAGE: &str = "[stages.g]\nkind = \"generate\"\n";

    #[test]
    fn variables_use_other_variables() {
        let m = load_text(
            &format!(
                "[vars]\ntitle = \"Study of ${{data}} (${{n}})\"\ndata = \"d.jsonl\"\nn = 3\nm = \"${{n}}\"\n\
                 l = [\"${{m}}\", {{ t = \"${{title}}\" }}]\n{STAGE}"
            ),
            &[],
        )
        .unwrap();
        assert_eq!(m.vars["title"].value, s("Study of d.jsonl (3)"));
        assert_eq!(m.vars["m"].value, toml::Value::Integer(3));
        assert_eq!(m.vars["l"].value.to_string(), "[3, { t = \"Study of d.jsonl (3)\" }]");
        // an override flows into the variables that use it, and may use variables itself
        let m = load_text(
            &format!("[vars]\ntitle = \"Study of ${{data}}\"\ndata = \"d.jsonl\"\nn = 3\n{STAGE}"),
            &["data=other ${n}.jsonl"],
        )
        .unwrap();
        assert_eq!(m.vars["title"].value, s("Study of other 3.jsonl"));
        // a long chain is fine (no recursion)
        let mut t = String::from("[vars]\nv0 = 1\n");
        for i in 1..5000 {
            t += &format!("v{i} = \"${{v{}}}\"\n", i - 1);
        }
        let m = load_text(&format!("{t}{STAGE}"), &[]).unwrap();
        assert_eq!(m.vars["v4999"].value, toml::Value::Integer(1));
    }

    #[test]
    fn bad_references_between_variables() {
        let err =
            |vars: &str, sets: &[&str]| load_text(&format!("[vars]\n{vars}{STAGE}"), sets).unwrap_err().to_string();
        let e = err("a = \"${b}\"\nb = \"x-${c}\"\nc = [\"${a}\"]\n", &[]);
        assert!(
            e.ends_with(
                "/m.toml:2:5: variable `a`: cycle between variables: a -> b -> c -> a (a variable's value may use \
                 other variables, but not itself through them)"
            ),
            "{e}"
        );
        assert!(err("a = \"${a}\"\n", &[]).contains(":2:5: variable `a`: cycle between variables: a -> a"));
        assert!(
            err("a = \"${b}\"\nb = 1\n", &["b=${a}"])
                .starts_with("--set b=${a}: variable `b`: cycle between variables: a -> b -> a")
        );
        assert!(
            err("a = \"x ${nope}\"\nb = 1\n", &[])
                .contains(":2:5: variable `a`: `${nope}` names no variable (variables: a, b)")
        );
        assert!(
            err("a = \"x\"\n", &["a=${nope}"])
                .starts_with("--set a=${nope}: variable `a`: `${nope}` names no variable")
        );
        assert!(err("a = \"x${b\"\n", &[]).contains(":2:5: variable `a`: unterminated `${` in \"x${b\""));
        assert!(err("a = \"x${b\"\n", &[]).contains("(write `$${` for a literal `${`)"));
        // `$${` is a literal `${`, in a variable that uses others or not, in lists, and through `--set`
        let m = load_text(
            "[vars]\nb = \"$${x}\"\nc = \"p-$${y}-${b}\"\nd = [\"$${z\", \"$$ and $\"]\ne = \"t\"\n[stages.g]\nkind = \"generate\"\n",
            &["e=$${e}"],
        )
        .unwrap();
        let var = |n: &str| m.vars[n].value.clone();
        assert_eq!(var("b").as_str(), Some("${x}"));
        assert_eq!(var("c").as_str(), Some("p-${y}-${x}"));
        assert_eq!(
            var("d").as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect::<Vec<_>>(),
            ["${z", "$$ and $"]
        );
        assert_eq!(var("e").as_str(), Some("${e}"));
        let e = load_text("[vars]\na = \"${rho}\"\n[stages.g]\nkind = \"generate\"\nsweep = { rho = [1] }\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(":2:5: variable `a`: `${rho}` is a sweep axis (of stage `g`), which a variable cannot use"),
            "{e}"
        );
        // a value that doubles at every step stops at the limit, at the variable where it got there
        let mut t = String::from("v0 = \"xxxxxxxxxxxxxxxx\"\n");
        for i in 1..64 {
            t += &format!("v{i} = \"${{v{}}}${{v{}}}\"\n", i - 1, i - 1);
        }
        let e = err(&t, &[]);
        assert!(
            e.contains(
                "variable `v21`: with the variables it uses substituted, the values of the variables grow past 64 MiB"
            ),
            "{e}"
        );
    }
}
