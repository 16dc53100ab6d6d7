//! `import`: a user's preference dataset → the normalised pairs table (see [`crate::table`]).
//!
//! # Input files
//! JSONL (one object per line; blank lines are skipped), a JSON array of objects, or Parquet (one row per record),
//! recognised by the first bytes (`PAR1`, `[`, `{`) and, for Parquet, the extension `.parquet`/`.pq`.
//!
//! A record's keys other than those its format reads are not read, and a Parquet file's other columns are not
//! decoded (a column of a type import cannot show, such as a timestamp in a named time zone, is then no matter);
//! the format is detected from the columns' names as from a record's keys. A Parquet row is the JSON object of its
//! columns, structs as objects and maps as objects of their entries; binary values (how some writers store strings),
//! at any depth, are the UTF-8 text they hold. A row whose column import reads is binary bytes that are not UTF-8 is a
//! bad record on that column; such bytes inside a column (a struct's field, a list's item) are a bad record only
//! where import reads them as text (a message's `content`, say), not in a key it does not read (a message's UUID).
//!
//! # Formats (`format`, default `"auto"`: detected from the first record's keys)
//! - `trl`: `prompt`, `chosen`, `rejected`. Each is a string, or (TRL's conversational form) a list of messages
//!   `[{role, content}]`, rendered with the template below.
//! - `unlabeled`: `prompt`, `response_a`, `response_b` (strings or message lists); `label` is null and the order kept.
//! - `hh`: `chosen`, `rejected` full dialogues `"\n\nHuman: …\n\nAssistant: …"`. The prompt is the text up to and
//!   including the last `"\n\nAssistant:"`, which both must share; the responses are what follows it. Message lists
//!   (TRL's implicit-prompt form) work the same way: the shared leading messages are the prompt (of two identical
//!   conversations, the messages before the last assistant turn, so the pair counts as identical responses).
//! - `sharegpt` (LLaMA-Factory): `conversations` `[{from, value}]`, `chosen`/`rejected` message objects
//!   `{from, value}` (or strings), optional `system` string. The turns follow LLaMA-Factory's rule: an optional system
//!   turn first, then the user's (`human`, `observation`) and the assistant's (`gpt`, `function_call`) alternating,
//!   from the user's to the user's; a `system` string beside a system turn with other text is a bad record
//!   (LLaMA-Factory would drop the string), with the same text it is read once.
//!
//! A TRL prompt of messages that ends with the assistant's turn is a prefilled reply (TRL's
//! `continue_final_message`): the responses continue that turn. A record whose response begins with its whole prompt
//! is kept and counted, with a warning.
//!
//! # Message template
//! A role is shown as `Human` (`user`, `human`), `Assistant` (`assistant`, `gpt`, `model`, `bot`), `System`
//! (`system`), or else the role with its first letter capitalised. A prompt of messages renders as
//! `"\n\n{Role}: {content}"` per message followed by `"\n\nAssistant:"`; a response of messages as `" {content}"` of
//! its first message followed by `"\n\n{Role}: {content}"` for any further ones. This is the Anthropic HH layout, so
//! message data and HH strings import to the same text. A response of messages is the assistant's reply: its first
//! message's role must be the assistant's (`assistant`, `gpt`, `model`, `bot`, or LLaMA-Factory's `function_call`),
//! in the implicit-prompt form the first message after the shared prompt; a response that repeats the prompt's turns
//! is a bad record rather than a reply that holds the question.
//!
//! # Output
//! Responses in the normalised table are oriented by one bit of the pair's hash: chosen becomes `response_a`
//! (label 0) or `response_b` (label 1), deterministically and independently of row order. Exact duplicate pairs
//! (same prompt, same two responses in any order) keep their first occurrence and its label; the log says how many of
//! the dropped ones preferred the other response, and how many pairs have the same text as both responses (kept).
//! Word counts are whitespace-separated words; token counts (with `tokenizer`) are the tokens of the response text
//! alone, without special tokens.
//!
//! Every bad record is an [`StageError::Invalid`] naming the field, with a message naming the file, the place
//! (JSONL `line N`, 1-based; JSON array `index N` and Parquet `row N`, 0-based) and what was expected. A record that
//! gives a key twice, at its top or inside it, is a bad record (JSON readers differ on which value counts), as is a
//! Parquet row whose map holds a key twice; a Parquet file whose schema has a column twice, or a struct with a field
//! twice in a column it reads, is refused. So is a record that gives both `chosen`/`rejected` and
//! `response_a`/`response_b`, or a message with keys of both `{from, value}` and `{role, content}`: one of the two
//! would be dropped silently. A JSONL line that is not UTF-8 is a bad record like one that is not JSON. So is a
//! record whose prompt or either response is longer than `max_text_bytes` (UTF-8 bytes as imported; default 1 MiB),
//! on that field (a prompt of HH on `chosen`, of ShareGPT on `conversations`), and, with `tokenizer`, one with a response the tokenizer drops characters of or leaves no token
//! of, on `tokenizer`: both are checked as the record is read, the size first, so that `on_invalid = "skip"` leaves
//! out that record alone and a huge text is never tokenized.
//!
//! `exclude` (optional, pairs tables) holds prompts out: a record whose prompt is one of theirs is left out and
//! counted (`held_out_prompt_records`), so that a training table shares no prompt with a held-out one taken from the
//! same file by position (TL;DR has several comparisons per post). It is left out unchecked: its texts are not held
//! to `max_text_bytes` or the tokenizer.
use crate::longer::SUMMARY_MARGIN;
use crate::port::*;
use crate::table::{self, PairRow, PairsBuilder};
use crate::tokenizer_file::{DROP_CAUSE, DROP_REMEDY};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rayon::prelude::*;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::path::Path;

pub struct Import;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Format {
    #[default]
    Auto,
    Trl,
    #[serde(alias = "unlabelled")]
    Unlabeled,
    Hh,
    Sharegpt,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Trl => "trl",
            Format::Unlabeled => "unlabeled",
            Format::Hh => "hh",
            Format::Sharegpt => "sharegpt",
        }
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Params {
    /// The dataset file (JSONL, JSON array or Parquet), relative to the manifest; its content enters the cache key.
    path: String,
    /// Record keys: trl prompt/chosen/rejected, unlabeled prompt/response_a/b, hh, sharegpt; auto (default): detected.
    #[serde(default)]
    format: Format,
    /// A tokenizer.json (relative to the manifest) that fills tokens_a/b with response token counts; none: null.
    #[serde(default)]
    tokenizer: Option<String>,
    /// Read at most this many records (after `skip`); none: every record.
    #[serde(default)]
    #[schemars(range(min = 1))]
    limit: Option<u64>,
    /// Records to skip at the start of the file (with `limit`, a row range: e.g. a held-out tail of the file).
    #[serde(default)]
    skip: u64,
    /// What an invalid record does: "error" stops the import naming it; "skip" leaves it out and the summary says
    /// how many were skipped, why, and where the first ones are.
    #[serde(default)]
    on_invalid: OnInvalid,
    /// Longest prompt or response, in UTF-8 bytes as imported (1 to 1 GiB): a longer one makes its record invalid
    /// (see `on_invalid`), refused before its tokens are counted, which takes memory in proportion to the text.
    #[serde(default = "default_max_text_bytes")]
    #[schemars(range(min = 1))]
    max_text_bytes: u64,
}

/// 1 MiB: longer than the prompt or response of any real preference datum.
fn default_max_text_bytes() -> u64 {
    1 << 20
}

/// What an invalid record does (`on_invalid`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
enum OnInvalid {
    /// Stop the import with an error naming the record, the field and what was expected.
    #[default]
    Error,
    /// Leave the record out; count it, with the reason and place of the first ones, in the summary.
    Skip,
}

fn parse(params: &Map<String, Value>) -> StageResult<Params> {
    let p: Params = parse_params(params)?;
    if p.path.is_empty() {
        return Err(StageError::invalid("path", "must name a dataset file"));
    }
    if p.limit == Some(0) {
        return Err(StageError::invalid("limit", "must be at least 1 when given"));
    }
    // a text is one value of a string column of the pairs table, whose row groups hold at most GROUP_BYTES of
    // text per column (2 GiB would overflow its 32-bit offsets)
    if p.max_text_bytes == 0 {
        return Err(StageError::invalid("max_text_bytes", "must be at least 1"));
    }
    if p.max_text_bytes > GROUP_BYTES as u64 {
        return Err(StageError::invalid(
            "max_text_bytes",
            format!(
                "must be at most {GROUP_BYTES} (1 GiB: a text is one value of a string column of the pairs table, whose 32-bit offsets hold 2 GiB per row group), got {}",
                p.max_text_bytes
            ),
        ));
    }
    // a record's source_row counts the records skipped before it in 32 bits
    if p.skip > u64::from(u32::MAX) {
        return Err(StageError::invalid(
            "skip",
            format!("must be 0 to {} (records are numbered in 32 bits), got {}", u32::MAX, p.skip),
        ));
    }
    Ok(p)
}

/// Where a record is in its file.
#[derive(Clone, Copy, Debug)]
enum Loc {
    Line(usize),
    Index(usize),
    Row(usize),
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Loc::Line(n) => write!(f, "line {n}"),
            Loc::Index(n) => write!(f, "index {n}"),
            Loc::Row(n) => write!(f, "row {n}"),
        }
    }
}

/// The error for one record: names the field; the message names the file, the place and the problem.
struct Where<'a> {
    file: &'a str,
    loc: Loc,
    /// the record's keys as its file gives them, listed ([`keys`]), when the record holds only the ones import
    /// reads: a Parquet row's are the file's columns, of which import reads only those of the format
    file_keys: Option<&'a str>,
}

impl Where<'_> {
    fn err(&self, field: &str, msg: impl fmt::Display) -> StageError {
        StageError::invalid(field, format!("{} {}: `{field}` {msg}", self.file, self.loc))
    }

    /// The keys of record `rec` as its errors list them: those its file gives.
    fn keys(&self, rec: &Map<String, Value>) -> String {
        self.file_keys.map_or_else(|| keys(rec), str::to_string)
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Object(m) if is_not_utf8(m) => NOT_UTF8_SHOWN,
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The key of the object that stands for a binary value, inside a Parquet column, whose bytes are not UTF-8 text
/// ([`Text`]): `{"binary (not UTF-8)": <its length in bytes>}`. Not a string, it is a type error wherever import
/// reads text, and no matter in a key import does not read (a UUID's bytes beside a message's `content`).
const NOT_UTF8: &str = "binary (not UTF-8)";
/// How an error names the type of that object ([`type_name`]).
const NOT_UTF8_SHOWN: &str = "binary bytes that are not UTF-8 text (in the Parquet file: re-write it as UTF-8 strings)";

/// Whether `m` is the object of [`NOT_UTF8`].
fn is_not_utf8(m: &Map<String, Value>) -> bool {
    m.len() == 1 && m.get(NOT_UTF8).is_some_and(Value::is_u64)
}

fn nonempty(w: &Where, field: &str, s: &str) -> StageResult<()> {
    if s.is_empty() {
        Err(w.err(field, "is an empty string; expected non-empty text"))
    } else if s.trim().is_empty() {
        Err(w.err(field, "is only whitespace; expected non-empty text"))
    } else {
        Ok(())
    }
}

fn field<'v>(w: &Where, rec: &'v Map<String, Value>, name: &str, expected: &str) -> StageResult<&'v Value> {
    match rec.get(name) {
        None => Err(w.err(name, format!("is missing; expected {expected} (the record has: {})", w.keys(rec)))),
        Some(Value::Null) => Err(w.err(name, format!("is null; expected {expected}"))),
        Some(v) => Ok(v),
    }
}

/// The keys of an object, as errors list them: each as [`key_shown`] shows it.
fn keys(rec: &Map<String, Value>) -> String {
    rec.keys().map(|k| key_shown(k)).collect::<Vec<_>>().join(", ")
}

/// A key of the file (a record's, a message's, a Parquet column's name) as an error names it: as it is when it is
/// plain (ASCII letters, digits, `_`, `-` and `.`, at most 60), else [`quoted`], so that no control character of
/// the file reaches a terminal and a key with a space or a comma reads as one key.
fn key_shown(k: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if !k.is_empty() && k.len() <= 60 && k.chars().all(plain) { k.to_string() } else { quoted(k) }
}

/// The roles that name the assistant (any case): rendered `Assistant`.
const ASSISTANT_ROLES: [&str; 4] = ["assistant", "gpt", "model", "bot"];
/// The roles that may begin a response: the assistant's, and LLaMA-Factory's `function_call` (the assistant's
/// tool call, which its ShareGPT converter accepts wherever it accepts `gpt`).
const REPLY_ROLES: &str = "assistant, gpt, model, bot or function_call";

fn is_assistant(role: &str) -> bool {
    ASSISTANT_ROLES.iter().any(|r| role.eq_ignore_ascii_case(r))
}

fn is_reply_role(role: &str) -> bool {
    is_assistant(role) || role.eq_ignore_ascii_case("function_call")
}

fn role_name(role: &str) -> String {
    if is_assistant(role) {
        return "Assistant".into();
    }
    match role.to_ascii_lowercase().as_str() {
        "user" | "human" => "Human".into(),
        "system" => "System".into(),
        _ => {
            let mut c = role.chars();
            match c.next() {
                Some(f) => f.to_uppercase().chain(c).collect(),
                None => "Unknown".into(),
            }
        }
    }
}

/// A string of the record as an error quotes it: JSON-quoted, cut after 60 characters. Every control character is
/// escaped (JSON escapes those below U+0020; DEL and the C1 controls, such as U+009B, a terminal's one-character
/// CSI, are escaped here too), and so are the bidirectional overrides, which reorder what a terminal shows.
fn quoted(s: &str) -> String {
    let (s, cut) = match s.char_indices().nth(60) {
        None => (s, ""),
        Some((i, _)) => (&s[..i], "…"),
    };
    let json = Value::from(s).to_string();
    let hidden = |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    let mut out = String::with_capacity(json.len() + cut.len());
    for c in json.chars() {
        if hidden(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out.push_str(cut);
    out
}

/// The (role, content) keys of a message: ShareGPT's `from`/`value` when it has either, else `role`/`content`.
fn message_keys(m: &Map<String, Value>) -> (&'static str, &'static str) {
    if m.contains_key("from") || m.contains_key("value") { ("from", "value") } else { ("role", "content") }
}

/// A message: `{role, content}` (TRL/OpenAI) or `{from, value}` (ShareGPT), not keys of both. Returns (role, content).
fn message(w: &Where, path: &str, v: &Value) -> StageResult<(String, String)> {
    let m = match v {
        Value::Object(m) if !is_not_utf8(m) => m,
        _ => {
            return Err(w.err(
                path,
                format!("is {}; expected a message object {{role, content}} or {{from, value}}", type_name(v)),
            ));
        }
    };
    let (rk, ck) = message_keys(m);
    let (role, content) = (m.get(rk), m.get(ck));
    // a message with the two keys of one convention holds none of the other's; else both may be there
    if !(m.len() == 2 && role.is_some() && content.is_some()) {
        let (ork, ock) = if rk == "from" { ("role", "content") } else { ("from", "value") };
        let own = [rk, ck].into_iter().find(|k| m.contains_key(*k));
        let other = [ork, ock].into_iter().find(|k| m.contains_key(*k));
        if let (Some(own), Some(other)) = (own, other) {
            let (sharegpt, openai) = if rk == "from" { (own, other) } else { (other, own) };
            return Err(w.err(
                path,
                format!(
                    "has both `{sharegpt}` and `{openai}`: keys of a ShareGPT {{from, value}} and of a {{role, content}} message, and readers differ on which pair counts; give one of the two"
                ),
            ));
        }
    }
    let role = match role {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => {
            return Err(w.err(
                &format!("{path}.{rk}"),
                "is an empty string; expected a role string (such as user or assistant)",
            ));
        }
        Some(other) => {
            return Err(w.err(&format!("{path}.{rk}"), format!("is {}; expected a role string", type_name(other))));
        }
        None => {
            return Err(w.err(
                &format!("{path}.{rk}"),
                format!("is missing; expected a role string (the message has: {})", keys(m)),
            ));
        }
    };
    let content = match content {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(w.err(&format!("{path}.{ck}"), format!("is {}; expected a string", type_name(other))));
        }
        None => {
            return Err(w.err(
                &format!("{path}.{ck}"),
                format!("is missing; expected a string (the message has: {})", keys(m)),
            ));
        }
    };
    if content.trim().is_empty() {
        nonempty(w, &format!("{path}.{ck}"), &content)?;
    }
    Ok((role, content))
}

fn messages(w: &Where, path: &str, list: &[Value]) -> StageResult<Vec<(String, String)>> {
    if list.is_empty() {
        return Err(w.err(path, "is an empty list; expected at least one message"));
    }
    list.iter().enumerate().map(|(i, m)| message(w, &format!("{path}[{i}]"), m)).collect()
}

/// The error of a response given as messages whose first message `msg` (at `path`) has a `role` that is not one
/// of [`REPLY_ROLES`] ([`is_reply_role`]): a response is the assistant's reply. `why` ends it, saying where the turns
/// before the reply belong.
fn not_a_reply(w: &Where, path: &str, msg: &Value, role: &str, why: &str) -> StageError {
    let rk = role_key(msg);
    w.err(&format!("{path}.{rk}"), format!("is {}; expected an assistant role ({REPLY_ROLES}): {why}", quoted(role)))
}

/// The end of the error of a response whose first message is not the assistant's, for a record with a prompt.
const REPLY_ALONE: &str = "a response is the assistant's reply alone; the turns before it belong in `prompt`";

/// The role key of a raw message (`from` or `role`), as an error names it.
fn role_key(msg: &Value) -> &'static str {
    match msg {
        Value::Object(m) => message_keys(m).0,
        _ => "role",
    }
}

/// LLaMA-Factory's rule for a ShareGPT conversation (its `SharegptDatasetConverter`): after an optional leading
/// system turn, turns alternate between the user's (`human`, `user`, `observation`) and the assistant's
/// ([`REPLY_ROLES`]), beginning and, in a preference record, ending with the user's. LLaMA-Factory skips a record that
/// breaks it; here it is a bad record, named by its turn.
fn sharegpt_turns(w: &Where, raw: &[Value], conv: &[(String, String)]) -> StageResult<()> {
    let start = usize::from(conv.first().is_some_and(|(r, _)| r.eq_ignore_ascii_case("system")));
    let is_user = |r: &str| ["human", "user", "observation"].iter().any(|u| r.eq_ignore_ascii_case(u));
    for (i, (role, _)) in conv.iter().enumerate().skip(start) {
        let user_turn = (i - start) % 2 == 0;
        if (user_turn && !is_user(role)) || (!user_turn && !is_reply_role(role)) {
            let (want, after) = if user_turn { ("human", "gpt") } else { ("gpt", "human") };
            let after = if i == start { "first".to_string() } else { format!("after a {after} turn") };
            return Err(w.err(
                &format!("conversations[{i}].{}", role_key(&raw[i])),
                format!(
                    "is {} {after}; expected {want}: turns alternate human, gpt, … (a system turn only first) and end \
                     with human, as LLaMA-Factory reads them",
                    quoted(role)
                ),
            ));
        }
    }
    if conv.len() == start {
        return Err(w.err("conversations", "holds only a system turn; expected the user's turn the reply answers"));
    }
    if (conv.len() - start).is_multiple_of(2) {
        let last = conv.len() - 1;
        return Err(w.err(
            &format!("conversations[{last}].{}", role_key(&raw[last])),
            format!(
                "is {}: the conversation ends with the assistant's turn; expected it to end with the user's turn that \
                 `chosen` and `rejected` answer (LLaMA-Factory skips such a record)",
                quoted(&conv[last].0)
            ),
        ));
    }
    Ok(())
}

/// A prompt of messages: each as `"\n\n{Role}: {content}"`, then `"\n\nAssistant:"` for the reply to follow. A prompt
/// whose last turn is the assistant's is a prefilled reply (TRL's `continue_final_message`): the response continues
/// that turn, so no new one is opened.
fn render_prompt(msgs: &[(String, String)]) -> String {
    let mut s = String::new();
    for (role, content) in msgs {
        s.push_str("\n\n");
        s.push_str(&role_name(role));
        s.push_str(": ");
        s.push_str(content);
    }
    if !msgs.last().is_some_and(|(role, _)| is_reply_role(role)) {
        s.push_str("\n\nAssistant:");
    }
    s
}

fn render_response(msgs: &[(String, String)]) -> String {
    let mut s = String::new();
    for (i, (role, content)) in msgs.iter().enumerate() {
        if i == 0 {
            s.push(' ');
        } else {
            s.push_str("\n\n");
            s.push_str(&role_name(role));
            s.push_str(": ");
        }
        s.push_str(content);
    }
    s
}

/// A prompt or response: a string, or a list of messages rendered with the template.
/// A string is taken out of the record (not copied): the record is not read again once extracted.
fn text(w: &Where, rec: &mut Map<String, Value>, name: &str, is_prompt: bool) -> StageResult<String> {
    field(w, rec, name, "a non-empty string or a list of messages")?;
    match rec.get_mut(name).expect("field checked it is present") {
        Value::String(s) => {
            nonempty(w, name, s)?;
            Ok(std::mem::take(s))
        }
        Value::Array(list) => {
            let msgs = messages(w, name, list)?;
            if is_prompt {
                Ok(render_prompt(&msgs))
            } else {
                if !is_reply_role(&msgs[0].0) {
                    return Err(not_a_reply(w, &format!("{name}[0]"), &list[0], &msgs[0].0, REPLY_ALONE));
                }
                Ok(render_response(&msgs))
            }
        }
        other => {
            Err(w.err(name, format!("is {}; expected a non-empty string or a list of messages", type_name(other))))
        }
    }
}

const HH_TAG: &str = "\n\nAssistant:";

/// The end of an error of the `hh` format on a response: it reads `chosen` and `rejected` alone, so a record of
/// another layout with those two keys (LLaMA-Factory's alpaca form, Orca's `question`) is read as `hh`.
const HH_ONLY: &str = " (hh reads `chosen` and `rejected` alone, each the whole dialogue; a prompt under another key, such \
     as `instruction`, `input`, `question` or `messages`, is not read: for records of a prompt and two responses, name \
     it `prompt` (trl) or convert it to `conversations` (sharegpt))";

/// (prompt, chosen response, rejected response) from HH dialogue strings.
fn split_hh(w: &Where, chosen: &str, rejected: &str) -> StageResult<(String, String, String)> {
    let no_tag = |f: &str| w.err(f, format!("has no \"\\n\\nAssistant:\"; expected an HH dialogue{HH_ONLY}"));
    let ic = chosen.rfind(HH_TAG).ok_or_else(|| no_tag("chosen"))?;
    let ir = rejected.rfind(HH_TAG).ok_or_else(|| no_tag("rejected"))?;
    let (pc, pr) = (&chosen[..ic + HH_TAG.len()], &rejected[..ir + HH_TAG.len()]);
    if pc != pr {
        let common = pc.chars().zip(pr.chars()).take_while(|(a, b)| a == b).count();
        return Err(w.err(
            "rejected",
            format!(
                "does not share the dialogue of `chosen` up to the last \"\\n\\nAssistant:\" (they differ from character {common}); expected the same prompt"
            ),
        ));
    }
    let (rc, rr) = (&chosen[ic + HH_TAG.len()..], &rejected[ir + HH_TAG.len()..]);
    nonempty(w, "chosen", rc)
        .map_err(|_| w.err("chosen", "has an empty response after the last \"\\n\\nAssistant:\""))?;
    nonempty(w, "rejected", rr)
        .map_err(|_| w.err("rejected", "has an empty response after the last \"\\n\\nAssistant:\""))?;
    Ok((pc.to_string(), rc.to_string(), rr.to_string()))
}

/// (prompt, chosen, rejected) from two full conversations given as message lists (`raw_*` as the record gives
/// them): the shared leading messages are the prompt, and what follows in each must begin with the assistant.
fn split_messages(
    w: &Where,
    (raw_chosen, raw_rejected): (&[Value], &[Value]),
    chosen: &[(String, String)],
    rejected: &[(String, String)],
) -> StageResult<(String, String, String)> {
    let mut shared = chosen.iter().zip(rejected).take_while(|(a, b)| a == b).count();
    if chosen == rejected {
        // the same conversation twice: as with HH strings, the reply is the last assistant turn on, and the pair is
        // counted and warned of as identical responses (a string pair of the same text is, too), not refused
        if let Some(last) = chosen.iter().rposition(|(role, _)| is_reply_role(role)).filter(|&i| i > 0) {
            shared = last;
        }
    }
    if shared == 0 {
        return Err(w.err("rejected", "shares no leading message with `chosen`; expected the same prompt messages"));
    }
    if shared == chosen.len() {
        return Err(w.err("chosen", "has no message after the prompt it shares with `rejected`"));
    }
    if shared == rejected.len() {
        return Err(w.err("rejected", "has no message after the prompt it shares with `chosen`"));
    }
    for (name, raw, msgs) in [("chosen", raw_chosen, chosen), ("rejected", raw_rejected, rejected)] {
        if !is_reply_role(&msgs[shared].0) {
            return Err(not_a_reply(
                w,
                &format!("{name}[{shared}]"),
                &raw[shared],
                &msgs[shared].0,
                &format!(
                    "the messages after the {shared} that `chosen` and `rejected` share (the prompt) are the reply, which begins with the assistant's turn"
                ),
            ));
        }
    }
    Ok((render_prompt(&chosen[..shared]), render_response(&chosen[shared..]), render_response(&rejected[shared..])))
}

/// One record, before orientation: (prompt, first, second, labelled). When labelled, `first` is chosen.
struct Extracted {
    prompt: String,
    first: String,
    second: String,
    labelled: bool,
    /// the record's fields that `first` and `second` come from, as its errors name them
    fields: (&'static str, &'static str),
}

/// The format of a record with the keys that `has`, or none.
fn detected(has: impl Fn(&str) -> bool) -> Option<Format> {
    Some(if has("conversations") && has("chosen") && has("rejected") {
        Format::Sharegpt
    } else if has("prompt") && has("chosen") && has("rejected") {
        Format::Trl
    } else if has("prompt") && has("response_a") && has("response_b") {
        Format::Unlabeled
    } else if has("chosen") && has("rejected") {
        Format::Hh
    } else {
        return None;
    })
}

fn detect(rec: &Map<String, Value>, w: &Where) -> StageResult<Format> {
    detected(|k| rec.contains_key(k)).ok_or_else(|| {
        StageError::invalid(
            "format",
            format!(
                "{} {}: cannot detect the format from the record's keys ({}); expected prompt/chosen/rejected (trl), prompt/response_a/response_b (unlabeled), chosen/rejected (hh) or conversations/chosen/rejected (sharegpt), or set `format`",
                w.file,
                w.loc,
                w.keys(rec)
            ),
        )
    })
}

/// The keys of a record that `format` reads: its own, and those of the other pair of responses, which make the
/// record ambiguous ([`one_pair_of_responses`]). A Parquet file's other columns are not read: a record's other
/// keys are not read either. `Auto` reads those of the format detected from `has` (the file's columns), or every
/// key any format reads.
fn read_keys(format: Format, has: impl Fn(&str) -> bool) -> &'static [&'static str] {
    let format = if format == Format::Auto { detected(has).unwrap_or(Format::Auto) } else { format };
    match format {
        Format::Trl => &["prompt", "chosen", "rejected", "response_a", "response_b"],
        Format::Unlabeled => &["prompt", "response_a", "response_b", "label", "chosen", "rejected"],
        Format::Hh => &["chosen", "rejected", "response_a", "response_b"],
        Format::Sharegpt => &["conversations", "system", "chosen", "rejected", "response_a", "response_b"],
        Format::Auto => {
            &["prompt", "chosen", "rejected", "response_a", "response_b", "label", "conversations", "system"]
        }
    }
}

/// A record that gives both a preference (`chosen`/`rejected`) and a pair (`response_a`/`response_b`) is refused:
/// a format reads one of the two and would drop the other silently. The error names the key the format would drop.
fn one_pair_of_responses(format: Format, w: &Where, rec: &Map<String, Value>) -> StageResult<()> {
    let Some(pref) = ["chosen", "rejected"].into_iter().find(|k| rec.contains_key(*k)) else { return Ok(()) };
    let Some(pair) = ["response_a", "response_b"].into_iter().find(|k| rec.contains_key(*k)) else { return Ok(()) };
    let (dropped, read) = if format == Format::Unlabeled { (pref, pair) } else { (pair, pref) };
    Err(w.err(
        dropped,
        format!(
            "is given beside `{read}`: a record holds chosen/rejected or response_a/response_b, not both (which of the two counts is ambiguous); give one of the two"
        ),
    ))
}

fn extract(format: Format, w: &Where, rec: &mut Map<String, Value>) -> StageResult<Extracted> {
    one_pair_of_responses(format, w, rec)?;
    match format {
        Format::Trl => Ok(Extracted {
            prompt: text(w, rec, "prompt", true)?,
            first: text(w, rec, "chosen", false)?,
            second: text(w, rec, "rejected", false)?,
            labelled: true,
            fields: ("chosen", "rejected"),
        }),
        Format::Unlabeled => {
            let (prompt, a, b) =
                (text(w, rec, "prompt", true)?, text(w, rec, "response_a", false)?, text(w, rec, "response_b", false)?);
            // a `label` column (rmdistill's own pairs table: 0 = response_a preferred, 1 = response_b) is kept
            let ab = ("response_a", "response_b");
            match rec.get("label") {
                None | Some(Value::Null) => Ok(Extracted { prompt, first: a, second: b, labelled: false, fields: ab }),
                Some(v) if v.as_i64() == Some(0) => {
                    Ok(Extracted { prompt, first: a, second: b, labelled: true, fields: ab })
                }
                Some(v) if v.as_i64() == Some(1) => {
                    Ok(Extracted { prompt, first: b, second: a, labelled: true, fields: (ab.1, ab.0) })
                }
                Some(other) => Err(w.err(
                    "label",
                    format!("is {other}; expected 0 (response_a preferred), 1 (response_b preferred) or null"),
                )),
            }
        }
        Format::Hh => {
            let c = field(w, rec, "chosen", "an HH dialogue string or a list of messages")?;
            let r = field(w, rec, "rejected", "an HH dialogue string or a list of messages")?;
            let (prompt, first, second) = match (c, r) {
                (Value::String(c), Value::String(r)) => split_hh(w, c, r)?,
                (Value::Array(c), Value::Array(r)) => {
                    split_messages(w, (c, r), &messages(w, "chosen", c)?, &messages(w, "rejected", r)?)?
                }
                (Value::String(_) | Value::Array(_), other) => {
                    return Err(w.err(
                        "rejected",
                        format!("is {}; expected the same kind as `chosen` ({})", type_name(other), type_name(c)),
                    ));
                }
                (other, _) => {
                    return Err(w.err(
                        "chosen",
                        format!(
                            "is {}; expected an HH dialogue string or a list of messages{HH_ONLY}",
                            type_name(other)
                        ),
                    ));
                }
            };
            Ok(Extracted { prompt, first, second, labelled: true, fields: ("chosen", "rejected") })
        }
        Format::Sharegpt => {
            let conv = match field(w, rec, "conversations", "a list of {from, value} messages")? {
                Value::Array(list) => {
                    let conv = messages(w, "conversations", list)?;
                    sharegpt_turns(w, list, &conv)?;
                    conv
                }
                other => {
                    return Err(w.err(
                        "conversations",
                        format!("is {}; expected a list of {{from, value}} messages", type_name(other)),
                    ));
                }
            };
            let mut msgs = Vec::with_capacity(conv.len() + 1);
            match rec.get("system") {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if s.trim().is_empty() => {}
                // LLaMA-Factory takes a leading system turn over the `system` column and drops the column's text:
                // the same text twice is one system prompt; two different ones would lose one silently
                Some(Value::String(s)) if conv[0].0.eq_ignore_ascii_case("system") => {
                    if s.trim() != conv[0].1.trim() {
                        return Err(w.err(
                            "system",
                            "differs from the system turn at `conversations[0]`; LLaMA-Factory would keep the turn and \
                             drop `system` silently: give one of the two",
                        ));
                    }
                }
                Some(Value::String(s)) => msgs.push(("system".to_string(), s.clone())),
                Some(other) => return Err(w.err("system", format!("is {}; expected a string", type_name(other)))),
            }
            msgs.extend(conv);
            let resp = |name: &str| -> StageResult<String> {
                match field(w, rec, name, "a message object {from, value}")? {
                    v @ Value::Object(_) => {
                        let msg = message(w, name, v)?;
                        if !is_reply_role(&msg.0) {
                            return Err(not_a_reply(
                                w,
                                name,
                                v,
                                &msg.0,
                                "a response is the assistant's reply alone; the turns before it belong in `conversations`",
                            ));
                        }
                        Ok(render_response(&[msg]))
                    }
                    Value::String(s) => {
                        nonempty(w, name, s)?;
                        Ok(format!(" {s}"))
                    }
                    other => {
                        Err(w.err(name, format!("is {}; expected a message object {{from, value}}", type_name(other))))
                    }
                }
            };
            Ok(Extracted {
                prompt: render_prompt(&msgs),
                first: resp("chosen")?,
                second: resp("rejected")?,
                labelled: true,
                fields: ("chosen", "rejected"),
            })
        }
        Format::Auto => unreachable!("format is detected before extraction"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FileKind {
    Jsonl,
    JsonArray,
    Parquet,
}

impl FileKind {
    fn name(self) -> &'static str {
        match self {
            FileKind::Jsonl => "jsonl",
            FileKind::JsonArray => "json",
            FileKind::Parquet => "parquet",
        }
    }
}

/// The encoding of a file's first bytes when it is UTF-16 or UTF-32 rather than UTF-8: by its byte-order mark, or,
/// without one, by the NUL bytes that ASCII text has beside each character in them (`{` is `7B 00` in UTF-16LE).
fn wide_encoding(head: &[u8]) -> Option<&'static str> {
    const MARKS: [(&[u8], &str); 4] = [
        (b"\x00\x00\xFE\xFF", "UTF-32BE (byte-order mark 00 00 FE FF)"),
        (b"\xFF\xFE\x00\x00", "UTF-32LE (byte-order mark FF FE 00 00)"),
        (b"\xFE\xFF", "UTF-16BE (byte-order mark FE FF)"),
        (b"\xFF\xFE", "UTF-16LE (byte-order mark FF FE)"),
    ];
    if let Some((_, name)) = MARKS.iter().find(|(mark, _)| head.starts_with(mark)) {
        return Some(name);
    }
    match head {
        [a, 0, 0, 0, ..] if a.is_ascii() && *a != 0 => Some("UTF-32LE"),
        [0, 0, 0, a, ..] if a.is_ascii() && *a != 0 => Some("UTF-32BE"),
        [a, 0, b, 0, ..] if a.is_ascii() && b.is_ascii() && *a != 0 && *b != 0 => Some("UTF-16LE"),
        [0, a, 0, b, ..] if a.is_ascii() && b.is_ascii() && *a != 0 && *b != 0 => Some("UTF-16BE"),
        _ => None,
    }
}

fn file_kind(path: &Path, shown: &str) -> StageResult<FileKind> {
    let mut head = vec![0u8; 4096];
    let mut f =
        std::fs::File::open(path).map_err(|e| StageError::invalid("path", format!("{shown}: cannot open: {e}")))?;
    let n = f.read(&mut head).map_err(|e| StageError::invalid("path", format!("{shown}: cannot read: {e}")))?;
    head.truncate(n);
    if head.starts_with(b"PAR1") {
        return Ok(FileKind::Parquet);
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if ext == "parquet" || ext == "pq" {
        return Err(StageError::invalid("path", format!("{shown}: not a Parquet file (no PAR1 magic)")));
    }
    if let Some(encoding) = wide_encoding(&head) {
        return Err(StageError::invalid(
            "path",
            format!(
                "{shown}: the file is {encoding} text; expected UTF-8 (re-save it as UTF-8, e.g. `iconv -f {} -t UTF-8`)",
                encoding.split(' ').next().unwrap_or(encoding)
            ),
        ));
    }
    let body = head.strip_prefix(b"\xEF\xBB\xBF".as_slice()).unwrap_or(&head);
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => Ok(FileKind::JsonArray),
        Some(b'{') => Ok(FileKind::Jsonl),
        None => Err(StageError::invalid("path", format!("{shown}: empty dataset (no records)"))),
        Some(_) => Err(StageError::invalid(
            "path",
            format!("{shown}: not JSONL, a JSON array or Parquet (the file starts with neither `{{`, `[` nor PAR1)"),
        )),
    }
}

/// One place of the file, in order: its record, or why it holds none (malformed JSON, not an object) — the caller
/// decides whether that stops the import.
struct Item {
    loc: Loc,
    rec: StageResult<Map<String, Value>>,
    /// the record's keys as its file gives them, when it holds only those import reads ([`Where::file_keys`])
    file_keys: Option<std::sync::Arc<str>>,
}

/// Bytes of JSONL read at once; their lines are parsed in parallel.
const JSONL_BLOCK: usize = 8 << 20;
/// Rows per row group of the pairs table: a million-pair import is written as 8 groups × 10 columns compressed in
/// parallel rather than one group whose longest column (the prompts) takes one core.
const GROUP_ROWS: usize = 1 << 17;
/// Text bytes of one string column (prompt, response_a, response_b) of one row group, at most: a group of long
/// texts is cut before the row that would pass it, since a string column's 32-bit offsets hold 2 GiB per group
/// (131,072 rows of texts of up to `max_text_bytes` could pass that). Ordinary data never comes near it: its groups
/// are cut by [`GROUP_ROWS`] alone.
const GROUP_BYTES: usize = 1 << 30;
/// Records of a JSON array or a Parquet file handed on at once.
const BATCH: usize = 8192;

/// Whether a JSONL line holds nothing but whitespace (as `str::trim` sees it), without decoding the usual line.
fn is_blank(line: &[u8]) -> bool {
    match line.iter().find(|&&b| !(b.is_ascii_whitespace() || b == 0x0b)) {
        None => true,
        Some(&b) if b < 0x80 => false,
        Some(_) => std::str::from_utf8(line).is_ok_and(|s| s.trim().is_empty()),
    }
}

/// A parsed value as a record: a JSON object, or the error naming what it is instead.
fn as_object(shown: &str, loc: Loc, v: Value) -> StageResult<Map<String, Value>> {
    match v {
        Value::Object(m) => Ok(m),
        other => Err(StageError::invalid(
            "path",
            format!("{shown} {loc}: expected a JSON object, found {}", type_name(&other)),
        )),
    }
}

/// A key an object of a record gives twice: serde_json would keep the last value and other readers the first, so
/// the record is refused rather than read as one of the two. `path` leads to the object, outermost first once the
/// parse is done (empty: the record itself).
#[derive(Debug)]
struct Repeated {
    path: Vec<Seg>,
    key: String,
}

#[derive(Debug)]
enum Seg {
    Key(String),
    Index(usize),
}

impl Repeated {
    /// The repeated key's place in the record, as the record errors name fields: `prompt`, `chosen[0].role`.
    fn field(&self) -> String {
        let mut s = String::new();
        for seg in self.path.iter().chain(std::iter::once(&Seg::Key(self.key.clone()))) {
            match seg {
                Seg::Key(k) if s.is_empty() => s.push_str(&key_shown(k)),
                Seg::Key(k) => {
                    s.push('.');
                    s.push_str(&key_shown(k))
                }
                Seg::Index(i) => s.push_str(&format!("[{i}]")),
            }
        }
        s
    }

    fn error(&self, w: &Where) -> StageError {
        w.err(
            &self.field(),
            "is given twice; JSON readers differ on which of the two values counts: give each key once",
        )
    }

    /// The error of a key that a map of a Parquet column gives twice in one row.
    fn parquet_error(&self, w: &Where) -> StageError {
        w.err(
            &self.field(),
            "is given twice (a map of the Parquet column holds the key twice); readers differ on which of the two values counts: give each key once",
        )
    }
}

/// The first repeated key found while parsing one record. The path to it is filled in as the parse returns from the
/// objects and lists that hold it: `pending` is the depth of the object or list whose segment comes next (0: the
/// path is whole), so that parsing the rest of the record, after the repeat, adds nothing to it.
#[derive(Default)]
struct Repeats {
    first: std::cell::RefCell<Option<Repeated>>,
    pending: std::cell::Cell<usize>,
}

/// Parses a JSON value as serde_json parses a [`Value`] (the same numbers, strings and order of keys), noting in
/// `seen` the first key an object gives twice. An object's keys go into its map through one look-up each, as in the
/// parse into a [`Value`]: 200,000 TL;DR lines (305 MB) parse in 0.24 s against 0.22 s on one core, and the whole
/// import takes as long as before within its noise.
#[derive(Clone, Copy)]
struct Strict<'a> {
    seen: &'a Repeats,
    /// the depth of the value parsed: 0 for the record
    depth: usize,
}

impl Repeats {
    /// The record parsed, or the first key it gave twice, its path outermost first.
    fn finish(self, v: Value) -> Result<Value, Repeated> {
        match self.first.into_inner() {
            Some(mut r) => {
                r.path.reverse();
                Err(r)
            }
            None => Ok(v),
        }
    }
}

impl Strict<'_> {
    fn child(self) -> Self {
        Strict { seen: self.seen, depth: self.depth + 1 }
    }
    /// After a child value: whether this value's segment comes next in the path to a repeated key.
    fn on_path(self) -> bool {
        if self.seen.pending.get() == self.depth + 1 {
            self.seen.pending.set(self.depth);
            true
        } else {
            false
        }
    }
    fn add_to_path(self, seg: Seg) {
        if let Some(r) = self.seen.first.borrow_mut().as_mut() {
            r.path.push(seg);
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Strict<'_> {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        serde::de::DeserializeSeed::deserialize(self, d)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(x) = seq.next_element_seed(self.child())? {
            if self.on_path() {
                self.add_to_path(Seg::Index(v.len()));
            }
            v.push(x);
        }
        Ok(Value::Array(v))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut m = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            match m.entry(k) {
                serde_json::map::Entry::Vacant(e) => {
                    let v = map.next_value_seed(self.child())?;
                    if self.on_path() {
                        self.add_to_path(Seg::Key(e.key().clone()));
                    }
                    e.insert(v);
                }
                serde_json::map::Entry::Occupied(e) => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    let mut first = self.seen.first.borrow_mut();
                    if first.is_none() {
                        *first = Some(Repeated { path: Vec::new(), key: e.key().clone() });
                        self.seen.pending.set(self.depth);
                    }
                }
            }
        }
        Ok(Value::Object(m))
    }
}

/// One record parsed by [`Strict`]: its value, or that it is not JSON, or the first key it gives twice.
enum Parsed {
    Value(Value),
    Malformed(serde_json::Error),
    Repeated(Repeated),
}

fn parse_strict(text: &str) -> Parsed {
    let seen = Repeats::default();
    let mut de = serde_json::Deserializer::from_str(text);
    let v = match serde::de::DeserializeSeed::deserialize(Strict { seen: &seen, depth: 0 }, &mut de)
        .and_then(|v| de.end().map(|()| v))
    {
        Ok(v) => v,
        Err(e) => return Parsed::Malformed(e),
    };
    match seen.finish(v) {
        Ok(v) => Parsed::Value(v),
        Err(r) => Parsed::Repeated(r),
    }
}

/// The records of a JSON array, each parsed by [`Strict`] on its own: a record that gives a key twice is that
/// record's error (so `on_invalid = "skip"` can leave it out), not the file's.
struct StrictRecords;

impl<'de> serde::de::Visitor<'de> for StrictRecords {
    type Value = Vec<Result<Value, Repeated>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of records")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        loop {
            let seen = Repeats::default();
            let Some(v) = seq.next_element_seed(Strict { seen: &seen, depth: 0 })? else { break };
            out.push(seen.finish(v));
        }
        Ok(out)
    }
}

/// Why a JSONL line that is not JSON may look fine: a byte-order mark at its start (line 1's is skipped),
/// carriage returns that end no line (a file with CR line endings is one line to JSONL), or NUL bytes, which a
/// terminal does not show. Empty when none.
fn malformed_hint(line: &[u8]) -> &'static str {
    if line.starts_with(b"\xEF\xBB\xBF") {
        " (the line begins with a byte-order mark U+FEFF, as files joined with `cat` have at each file's start: remove it)"
    } else if memchr::memchr(b'\r', line).is_some() {
        " (the line holds carriage returns that end no line: the file seems to use CR line endings; convert them to LF)"
    } else if let Some(i) = memchr::memchr(0, line) {
        if i == 0 {
            " (the line begins with a NUL byte 0x00: a binary file, or one padded with NULs? expected UTF-8 JSON text)"
        } else {
            " (the line holds a NUL byte 0x00: a binary file, or text in UTF-16? expected UTF-8 JSON text)"
        }
    } else {
        ""
    }
}

/// The JSONL arm of [`for_each_batch`], reading `block` bytes at a time (a parameter so that tests can cut lines
/// across blocks).
fn jsonl_batches(
    mut file: impl Read,
    shown: &str,
    limit: u64,
    block_bytes: usize,
    mut f: impl FnMut(Vec<Item>, Option<u64>) -> StageResult<()>,
) -> StageResult<()> {
    let mut block: Vec<u8> = Vec::new();
    let (mut line_no, mut seen, mut eof) = (0usize, 0u64, false);
    while !eof && seen < limit {
        // fill the block after the unfinished line carried over from the last one
        let start = block.len();
        block.resize(start + block_bytes, 0);
        let mut filled = start;
        while filled < block.len() {
            let n = file
                .read(&mut block[filled..])
                .map_err(|e| StageError::invalid("path", format!("{shown} line {}: cannot read: {e}", line_no + 1)))?;
            if n == 0 {
                eof = true;
                break;
            }
            filled += n;
        }
        block.truncate(filled);
        // whole lines end at the last newline; at the end of the file the rest is a line too
        let whole = if eof { block.len() } else { memchr::memrchr(b'\n', &block).map_or(0, |i| i + 1) };
        let mut lines: Vec<(usize, &[u8])> = Vec::new();
        let mut rest = &block[..whole];
        while !rest.is_empty() && seen < limit {
            let (mut line, next) = match memchr::memchr(b'\n', rest) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &rest[rest.len()..]),
            };
            rest = next;
            line_no += 1;
            if let Some(l) = line.strip_suffix(b"\r") {
                line = l;
            }
            if line_no == 1 {
                while let Some(l) = line.strip_prefix(b"\xEF\xBB\xBF".as_slice()) {
                    line = l;
                }
            }
            if is_blank(line) {
                continue;
            }
            if seen == 0 && line.trim_ascii() == b"{" {
                // a file that starts with a lone `{` is more likely one pretty-printed object than JSONL
                let e = serde_json::from_slice::<Value>(line).err().map(|e| e.to_string()).unwrap_or_default();
                return Err(StageError::invalid(
                    "path",
                    format!(
                        "{shown}: line {line_no} starts a JSON object that spans several lines ({e}); expected JSONL (one object per line) or a JSON array of objects"
                    ),
                ));
            }
            lines.push((line_no, line));
            seen += 1;
        }
        let items: Vec<Item> = lines
            .par_iter()
            .map(|&(n, line)| {
                let loc = Loc::Line(n);
                let rec = match std::str::from_utf8(line) {
                    Err(e) => Err(not_utf8(shown, loc, line, e.valid_up_to(), None)),
                    Ok(text) => match parse_strict(text) {
                        Parsed::Value(v) => as_object(shown, loc, v),
                        Parsed::Repeated(r) => Err(r.error(&Where { file: shown, loc, file_keys: None })),
                        Parsed::Malformed(e) => Err(StageError::invalid(
                            "path",
                            format!("{shown} {loc}: malformed JSON: {e}{}", malformed_hint(line)),
                        )),
                    },
                };
                Item { loc, rec, file_keys: None }
            })
            .collect();
        f(items, None)?;
        block.drain(..whole);
    }
    Ok(())
}

/// Calls `f` with the file's records, in order, in batches, up to `limit` records, and with the number of records
/// when the file says it (JSON array, Parquet). JSONL is read in blocks whose lines are parsed in parallel; a line
/// that is not UTF-8 is an invalid record like one that is not JSON. Returns the file kind.
fn for_each_batch(
    path: &Path,
    shown: &str,
    limit: u64,
    format: Format,
    mut f: impl FnMut(Vec<Item>, Option<u64>) -> StageResult<()>,
) -> StageResult<FileKind> {
    let kind = file_kind(path, shown)?;
    let open =
        || std::fs::File::open(path).map_err(|e| StageError::invalid("path", format!("{shown}: cannot open: {e}")));
    match kind {
        FileKind::Jsonl => jsonl_batches(open()?, shown, limit, JSONL_BLOCK, f)?,
        FileKind::JsonArray => {
            let mut bytes = Vec::new();
            open()?
                .read_to_end(&mut bytes)
                .map_err(|e| StageError::invalid("path", format!("{shown}: cannot read: {e}")))?;
            let s = String::from_utf8(bytes).map_err(|e| {
                // where, as the JSONL reader says it (a JSON array is one document: its bytes are checked as a whole)
                let at = e.utf8_error().valid_up_to();
                let bytes = e.as_bytes();
                let line_start = bytes[..at].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
                not_utf8(shown, Loc::Line(line), &bytes[line_start..], at - line_start, Some(at + 1))
            })?;
            let mut de = serde_json::Deserializer::from_str(s.trim_start_matches('\u{feff}'));
            let items = serde::Deserializer::deserialize_seq(&mut de, StrictRecords)
                .and_then(|items| de.end().map(|()| items))
                .map_err(|e| StageError::invalid("path", format!("{shown}: malformed JSON: {e}")))?;
            let total = (items.len() as u64).min(limit);
            let mut items = items.into_iter().take(total as usize).enumerate().peekable();
            while items.peek().is_some() {
                let batch = items
                    .by_ref()
                    .take(BATCH)
                    .map(|(i, item)| {
                        let loc = Loc::Index(i);
                        let rec = match item {
                            Ok(v) => as_object(shown, loc, v),
                            Err(r) => Err(r.error(&Where { file: shown, loc, file_keys: None })),
                        };
                        Item { loc, rec, file_keys: None }
                    })
                    .collect();
                f(batch, Some(total))?;
            }
        }
        FileKind::Parquet => parquet_batches(path, shown, limit, format, f)?,
    }
    Ok(kind)
}

/// The error of a byte that is not UTF-8: `line`'s byte at index `bad` (and, for a file read whole, its place in the
/// file, 1-based).
fn not_utf8(shown: &str, loc: Loc, line: &[u8], bad: usize, in_file: Option<usize>) -> StageError {
    let in_file = in_file.map_or(String::new(), |at| format!(", {at} of the file"));
    StageError::invalid(
        "path",
        format!(
            "{shown} {loc}: byte 0x{:02x} (byte {} of the line{in_file}) is not UTF-8; expected UTF-8 text (re-save \
             the file as UTF-8)",
            line[bad],
            bad + 1
        ),
    )
}

/// Rows of a Parquet batch made into records on one thread.
const PARQUET_CHUNK: usize = 512;

/// The Parquet arm of [`for_each_batch`]. Only the columns that `format` reads ([`read_keys`]) are read: the others
/// are not decoded (a column of a type the reader cannot show, such as a timestamp in a named time zone, does not
/// stop the import), as a JSON record's other keys are not read. Each row is made the JSON record of its columns
/// (by arrow's JSON encoders; bytes as UTF-8 text, at any depth: [`BytesAsText`]) and parsed by [`Strict`], so that
/// a map that gives a key twice is that record's error, as a JSON object that does; a struct type with a field
/// twice (every row's) and a column twice are the file's. Errors name the column.
fn parquet_batches(
    path: &Path,
    shown: &str,
    limit: u64,
    format: Format,
    mut f: impl FnMut(Vec<Item>, Option<u64>) -> StageResult<()>,
) -> StageResult<()> {
    let open =
        || std::fs::File::open(path).map_err(|e| StageError::invalid("path", format!("{shown}: cannot open: {e}")));
    let builder = ParquetRecordBatchReaderBuilder::try_new(open()?)
        .map_err(|e| StageError::invalid("path", format!("{shown}: not a readable Parquet file: {e}")))?;
    let schema = builder.schema().clone();
    // each row is read as a JSON object of its columns: two columns of one name would be one key twice
    let mut names = HashSet::new();
    if let Some(f) = schema.fields().iter().find(|f| !names.insert(f.name())) {
        return Err(StageError::invalid(
            "path",
            format!(
                "{shown}: column `{}` appears twice in the file's schema; which one a reader takes differs: give each column once",
                key_shown(f.name())
            ),
        ));
    }
    let wanted = read_keys(format, |k| schema.fields().iter().any(|f| f.name() == k));
    let read: Vec<usize> =
        (0..schema.fields().len()).filter(|&i| wanted.contains(&schema.field(i).name().as_str())).collect();
    for &i in &read {
        let column = schema.field(i);
        if let Some((path, name)) = repeated_field(column.data_type()) {
            return Err(StageError::invalid(
                "path",
                format!(
                    "{shown}: column `{c}` holds a struct with two fields named `{name}` (`{c}{path}` of each row); which of the two a reader takes differs: give each field once",
                    c = key_shown(column.name()),
                    name = key_shown(&name),
                ),
            ));
        }
    }
    let file_keys: std::sync::Arc<str> =
        schema.fields().iter().map(|f| key_shown(f.name())).collect::<Vec<_>>().join(", ").into();
    let total = (builder.metadata().file_metadata().num_rows() as u64).min(limit);
    let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), read.iter().copied());
    let reader = builder
        .with_projection(mask)
        .with_batch_size(BATCH)
        .with_limit(total as usize)
        .build()
        .map_err(|e| StageError::invalid("path", format!("{shown}: {e}")))?;
    let mut row = 0usize;
    for batch in reader {
        let batch = batch.map_err(|e| decode_error(path, shown, &read, row, e))?;
        let n = batch.num_rows();
        let starts: Vec<usize> = (0..n).step_by(PARQUET_CHUNK).collect();
        let chunks: Vec<StageResult<Vec<Item>>> = starts
            .par_iter()
            .map(|&s| parquet_records(&batch.slice(s, PARQUET_CHUNK.min(n - s)), shown, row + s, &file_keys))
            .collect();
        let mut items = Vec::with_capacity(n);
        for chunk in chunks {
            items.extend(chunk?);
        }
        row += n;
        f(items, Some(total))?;
    }
    Ok(())
}

/// The first field name that a struct of a column of type `t` gives twice, and the path to it below the column
/// (`[]` for a list's items, `.name` for a struct's field, `{}` for a map's values; ending with `.name` of it).
fn repeated_field(t: &arrow::datatypes::DataType) -> Option<(String, String)> {
    use arrow::datatypes::DataType;
    let below = |t: &DataType, seg: &str| repeated_field(t).map(|(p, n)| (format!("{seg}{p}"), n));
    match t {
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::FixedSizeList(f, _)
        | DataType::ListView(f)
        | DataType::LargeListView(f) => below(f.data_type(), "[]"),
        DataType::Struct(fields) => {
            let mut names = HashSet::new();
            if let Some(f) = fields.iter().find(|f| !names.insert(f.name())) {
                return Some((format!(".{}", key_shown(f.name())), f.name().clone()));
            }
            fields.iter().find_map(|f| below(f.data_type(), &format!(".{}", key_shown(f.name()))))
        }
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => below(kv[1].data_type(), "{}"),
            other => below(other, "{}"),
        },
        DataType::Dictionary(_, v) => repeated_field(v),
        DataType::RunEndEncoded(_, v) => repeated_field(v.data_type()),
        _ => None,
    }
}

/// The error of a batch the Parquet reader could not decode at `row`, naming the column whose values fail (each of
/// the columns read, `read`, is read again alone over the batch's rows).
fn decode_error(path: &Path, shown: &str, read: &[usize], row: usize, e: arrow::error::ArrowError) -> StageError {
    let fails = |i: usize| -> Option<String> {
        let builder = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).ok()?).ok()?;
        let name = builder.schema().field(i).name().clone();
        let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), [i]);
        let fails =
            match builder.with_projection(mask).with_offset(row).with_limit(BATCH).with_batch_size(BATCH).build() {
                Ok(mut reader) => reader.any(|b| b.is_err()),
                Err(_) => true,
            };
        fails.then_some(name)
    };
    match read.iter().find_map(|&i| fails(i)) {
        Some(c) => StageError::invalid(
            "path",
            format!("{shown} near row {row}: column `{}` cannot be decoded: {e}", key_shown(&c)),
        ),
        None => StageError::invalid("path", format!("{shown} near row {row}: cannot decode: {e}")),
    }
}

/// The records of rows `batch` of a Parquet file, the first of them row `first`: each row the JSON object of its
/// columns, parsed by [`Strict`]. A column that cannot be shown as JSON is the file's error, naming it; a row whose
/// binary values hold bytes that are not UTF-8, or whose map gives a key twice, is that record's error.
fn parquet_records(
    batch: &arrow::array::RecordBatch,
    shown: &str,
    first: usize,
    file_keys: &std::sync::Arc<str>,
) -> StageResult<Vec<Item>> {
    use arrow::json::writer::{EncoderOptions, make_encoder};
    let schema = batch.schema();
    let options = EncoderOptions::default()
        .with_explicit_nulls(true)
        .with_encoder_factory(std::sync::Arc::new(BytesAsText::of(schema.fields())));
    let mut encoders = Vec::with_capacity(batch.num_columns());
    for (field, col) in schema.fields().iter().zip(batch.columns()) {
        let enc = make_encoder(field, col.as_ref(), &options).map_err(|e| {
            StageError::invalid(
                "path",
                format!(
                    "{shown}: column `{}` (of type {}) cannot be read: {e}",
                    key_shown(field.name()),
                    field.data_type()
                ),
            )
        })?;
        let mut name = serde_json::to_vec(field.name()).expect("a string serialises");
        name.push(b':');
        encoders.push((name, enc));
    }
    let mut text = Vec::new();
    let mut ends = Vec::with_capacity(encoders.len());
    let mut items = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        text.clear();
        ends.clear();
        text.push(b'{');
        for (k, (name, enc)) in encoders.iter_mut().enumerate() {
            if k > 0 {
                text.push(b',');
            }
            text.extend_from_slice(name);
            if enc.is_null(i) {
                text.extend_from_slice(b"null");
            } else {
                enc.encode(i, &mut text);
            }
            ends.push(text.len());
        }
        text.push(b'}');
        let loc = Loc::Row(first + i);
        let w = Where { file: shown, loc, file_keys: Some(file_keys) };
        let rec = match std::str::from_utf8(&text) {
            // every encoder writes UTF-8 but that of bytes that are not UTF-8 text (left as they are): the column
            // is the one whose value holds the first byte that is not
            Err(e) => {
                let at = e.valid_up_to();
                let column = schema.field(ends.partition_point(|&end| end <= at).min(ends.len() - 1)).name();
                Err(w.err(
                    column,
                    format!(
                        "holds bytes that are not UTF-8 text (byte 0x{:02x}, in a binary value of column `{}`); expected UTF-8 strings: re-write the column as UTF-8 text",
                        text[at],
                        key_shown(column)
                    ),
                ))
            }
            Ok(t) => match parse_strict(t) {
                Parsed::Value(Value::Object(m)) => Ok(m),
                Parsed::Repeated(r) => Err(r.parquet_error(&w)),
                // the encoders write an object of JSON values: a row reads as one
                Parsed::Value(_) | Parsed::Malformed(_) => Err(StageError::invalid(
                    "path",
                    format!("{shown} {loc}: the row does not read as a JSON object of its columns"),
                )),
            },
        };
        items.push(Item { loc, rec, file_keys: Some(file_keys.clone()) });
    }
    Ok(items)
}

/// Shows the values of binary columns, at any depth (in lists, structs, maps and dictionaries, and as map keys), as
/// the text they hold rather than as the JSON encoder's hex: some writers store strings as bytes. Bytes that are not
/// UTF-8 are, in a column of binary values (`columns`: the addresses of those columns' fields), written as they are,
/// so that the row's text is not UTF-8 and [`parquet_records`] makes it the record's error, naming the column (only
/// the columns import reads are decoded); inside a column, the object of [`NOT_UTF8`], an error only where import
/// reads it as text (it may be a key no format reads, such as a message's UUID), and as a map key the string
/// `binary (not UTF-8) 0x<hex>`.
#[derive(Debug)]
struct BytesAsText {
    columns: Vec<usize>,
}

fn is_binary(t: &arrow::datatypes::DataType) -> bool {
    use arrow::datatypes::DataType;
    matches!(t, DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_))
}

impl BytesAsText {
    /// For the columns `fields`: those whose values are binary (dictionaries of them too, whose values the encoder
    /// makes with the column's field) write bytes that are not UTF-8 as they are.
    fn of(fields: &arrow::datatypes::Fields) -> BytesAsText {
        use arrow::datatypes::DataType;
        let values = |t: &DataType| match t {
            DataType::Dictionary(_, v) => is_binary(v),
            DataType::RunEndEncoded(_, v) => is_binary(v.data_type()),
            t => is_binary(t),
        };
        let columns = fields.iter().filter(|f| values(f.data_type())).map(|f| std::sync::Arc::as_ptr(f) as usize);
        BytesAsText { columns: columns.collect() }
    }
}

/// What [`Text`] writes for bytes that are not UTF-8.
#[derive(Clone, Copy)]
enum NotUtf8 {
    /// the bytes as they are (a column's own values)
    Raw,
    /// the object of [`NOT_UTF8`] (a value inside a column)
    Marked,
    /// a string naming them (a map key)
    Key,
}

/// The encoder of `array`'s values when it holds binary values, by [`Text`].
fn text_encoder<'a>(
    array: &'a dyn arrow::array::Array,
    bad: NotUtf8,
) -> Option<Box<dyn arrow::json::writer::Encoder + 'a>> {
    use arrow::array::AsArray;
    use arrow::datatypes::DataType;
    Some(match array.data_type() {
        DataType::Binary => Box::new(Text(array.as_binary::<i32>(), bad)),
        DataType::LargeBinary => Box::new(Text(array.as_binary::<i64>(), bad)),
        DataType::BinaryView => Box::new(Text(array.as_binary_view(), bad)),
        DataType::FixedSizeBinary(_) => Box::new(Text(array.as_fixed_size_binary(), bad)),
        _ => return None,
    })
}

impl arrow::json::writer::EncoderFactory for BytesAsText {
    fn make_default_encoder<'a>(
        &self,
        field: &'a arrow::datatypes::FieldRef,
        array: &'a dyn arrow::array::Array,
        options: &'a arrow::json::writer::EncoderOptions,
    ) -> Result<Option<arrow::json::writer::NullableEncoder<'a>>, arrow::error::ArrowError> {
        use arrow::array::AsArray;
        use arrow::datatypes::DataType;
        use arrow::json::writer::{NullableEncoder, make_encoder};
        // a list's, a map's and a dictionary's values are made with the field of the list, map or dictionary: a
        // column's field is that of its own values only when its values are binary
        let bad = if self.columns.contains(&(std::sync::Arc::as_ptr(field) as usize)) {
            NotUtf8::Raw
        } else {
            NotUtf8::Marked
        };
        let encoder = match array.data_type() {
            // arrow's map encoder takes string keys only
            DataType::Map(..) if is_binary(array.as_map().key_type()) => {
                let map = array.as_map();
                Box::new(MapOfBytes {
                    offsets: map.offsets().clone(),
                    keys: text_encoder(map.keys(), NotUtf8::Key).expect("the keys are binary"),
                    values: make_encoder(field, map.values(), options)?,
                })
            }
            _ => match text_encoder(array, bad) {
                Some(e) => e,
                None => return Ok(None),
            },
        };
        Ok(Some(NullableEncoder::new(encoder, array.nulls().cloned())))
    }
}

/// Binary values as JSON strings of the text they hold; bytes that are not UTF-8 as [`NotUtf8`] says (see
/// [`BytesAsText`]).
struct Text<A>(A, NotUtf8);

impl<'a, A: arrow::array::ArrayAccessor<Item = &'a [u8]>> arrow::json::writer::Encoder for Text<A> {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        let bytes = self.0.value(idx);
        let written = match (std::str::from_utf8(bytes), self.1) {
            (Ok(s), _) => serde_json::to_writer(&mut *out, s),
            (Err(_), NotUtf8::Raw) => {
                out.push(b'"');
                out.extend_from_slice(bytes);
                out.push(b'"');
                Ok(())
            }
            (Err(_), NotUtf8::Marked) => serde_json::to_writer(&mut *out, &json!({ NOT_UTF8: bytes.len() })),
            (Err(_), NotUtf8::Key) => {
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                serde_json::to_writer(&mut *out, &format!("{NOT_UTF8} 0x{hex}"))
            }
        };
        written.expect("writing to a Vec does not fail");
    }
}

/// A map whose keys are bytes, as a JSON object (keys by [`Text`]), every entry written (a key given twice too).
struct MapOfBytes<'a> {
    offsets: arrow::buffer::OffsetBuffer<i32>,
    keys: Box<dyn arrow::json::writer::Encoder + 'a>,
    values: arrow::json::writer::NullableEncoder<'a>,
}

impl arrow::json::writer::Encoder for MapOfBytes<'_> {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        out.push(b'{');
        for (k, i) in (self.offsets[idx] as usize..self.offsets[idx + 1] as usize).enumerate() {
            if k > 0 {
                out.push(b',');
            }
            self.keys.encode(i, out);
            out.push(b':');
            if self.values.is_null(i) {
                out.extend_from_slice(b"null");
            } else {
                self.values.encode(i, out);
            }
        }
        out.push(b'}');
    }
}

/// Records left out with `on_invalid = "skip"`: how many, why (per field), and where the first ones are.
#[derive(Default)]
struct Skipped {
    count: u64,
    by_field: std::collections::BTreeMap<String, u64>,
    first: Vec<String>,
}

impl Skipped {
    const SHOWN: usize = 10;
    fn add(&mut self, e: &StageError) {
        self.count += 1;
        let field = match e {
            StageError::Invalid { field, .. } => field.clone(),
            _ => "record".to_string(),
        };
        *self.by_field.entry(field).or_default() += 1;
        if self.first.len() < Self::SHOWN {
            self.first.push(e.to_string());
        }
    }
}

/// What a record's texts must pass to make a pair, checked where the record is extracted so that a failure is the
/// record's error (`on_invalid`): the size limit, then, with a tokenizer, that it counts each response whole.
struct Checks<'a> {
    max_text_bytes: u64,
    /// the tokenizer and the name its param gives it, for token counts
    tokenizer: Option<(&'a tokenizers::Tokenizer, &'a str)>,
    /// when that tokenizer can drop characters, its check ([`crate::tokenizer_file::DropCheck`]): each response is
    /// then checked for what it drops, and refused with a drop
    drops: Option<crate::tokenizer_file::DropCheck>,
}

/// A size in bytes, and in KiB or MiB from 1 KiB: `150 bytes`, `102400 bytes (100.0 KiB)`,
/// `52428800 bytes (50.0 MiB)`.
fn bytes_shown(n: u64) -> String {
    match n {
        0..1024 => format!("{n} bytes"),
        1024..1048576 => format!("{n} bytes ({:.1} KiB)", n as f64 / 1024.0),
        _ => format!("{n} bytes ({:.1} MiB)", n as f64 / 1048576.0),
    }
}

impl Checks<'_> {
    /// The record's pair, with its responses' token counts when there is a tokenizer, or the record's error.
    fn pair(&self, format: Format, w: &Where, e: Extracted) -> StageResult<Pair> {
        // the sizes first: a text's tokens take memory in proportion to it
        let (first, second) = e.fields;
        // the key the prompt is read from: HH's is in `chosen` (and `rejected`), ShareGPT's in `conversations`
        let prompt = match format {
            Format::Hh => "chosen",
            Format::Sharegpt => "conversations",
            _ => "prompt",
        };
        self.size(w, prompt, &e.prompt, || match format {
            Format::Hh => "the prompt (what `chosen` and `rejected` share)".to_string(),
            Format::Sharegpt => "the prompt (`system` and `conversations`)".to_string(),
            _ => "`prompt`".to_string(),
        })?;
        for (field, text) in [(first, &e.first), (second, &e.second)] {
            self.size(w, field, text, || match format {
                Format::Hh => format!("the response of `{field}`"),
                _ => format!("`{field}`"),
            })?;
        }
        let tokens = match self.tokenizer {
            None => None,
            Some(tok) => Some((self.tokens(tok, w, first, &e.first)?, self.tokens(tok, w, second, &e.second)?)),
        };
        Ok(Pair::of(e, tokens))
    }

    /// Refuses a text longer than `max_text_bytes`, on `field`; `what` names it in the message.
    fn size(&self, w: &Where, field: &str, text: &str, what: impl FnOnce() -> String) -> StageResult<()> {
        let n = text.len() as u64;
        if n <= self.max_text_bytes {
            return Ok(());
        }
        let remedy = if n <= GROUP_BYTES as u64 {
            format!(
                "if the text is meant, raise the limit: `max_text_bytes = {n}` (or more) in the node's params, or `--set` the manifest variable they take it from"
            )
        } else {
            format!("the pairs table holds texts of at most {}", bytes_shown(GROUP_BYTES as u64))
        };
        Err(StageError::invalid(
            field,
            format!(
                "{} {}: {} is {} as imported, over `max_text_bytes` = {}: no real preference datum is that long, and counting its tokens would take memory in proportion; {remedy}",
                w.file,
                w.loc,
                what(),
                bytes_shown(n),
                bytes_shown(self.max_text_bytes),
            ),
        ))
    }

    /// The tokens of response `s` (from `field`), without special tokens; refused, on `tokenizer`, when the
    /// tokenizer drops some of its characters or leaves none of it.
    fn tokens(
        &self,
        (tok, shown): (&tokenizers::Tokenizer, &str),
        w: &Where,
        field: &str,
        s: &str,
    ) -> StageResult<u32> {
        let cannot = |e: tokenizers::Error| {
            StageError::invalid(
                "tokenizer",
                format!("{} {}: cannot tokenize `{field}` with {shown}: {e}", w.file, w.loc),
            )
        };
        let len = tok.encode_fast(s, false).map(|e| e.len() as u32).map_err(cannot)?;
        // a BPE model without an unknown token drops what its vocabulary lacks, silently: the response would be
        // counted short
        if let Some(check) = &self.drops
            && let Some(d) = check.first_dropped(tok, s).map_err(cannot)?
        {
            return Err(StageError::invalid(
                "tokenizer",
                format!(
                    "{} {}: `{field}` loses {} to tokenizer {shown}: {DROP_CAUSE}, so the response would count {len} tokens, too few; {DROP_REMEDY}",
                    w.file,
                    w.loc,
                    d.described()
                ),
            ));
        }
        // nothing dropped: the normalizer and pre-tokenizer took out all of a non-blank text
        if len == 0 {
            return Err(StageError::invalid(
                "tokenizer",
                format!(
                    "{} {}: `{field}` ({:?}) is no token at all to tokenizer {shown}: the tokenizer's normalizer and pre-tokenizer leave none of its text; use the model's own tokenizer",
                    w.file,
                    w.loc,
                    s.chars().take(40).collect::<String>()
                ),
            ));
        }
        Ok(len)
    }
}

/// A record's pair, oriented by its hash: chosen becomes `a` (label 0) or `b` (label 1) by one bit of the hash.
struct Pair {
    hash: blake3::Hash,
    prompt: String,
    a: String,
    b: String,
    label: Option<i8>,
    /// the token counts of `a` and `b`, with a tokenizer
    tokens: Option<(u32, u32)>,
}

impl Pair {
    /// The pair of `e`, whose responses (first, second) count `tokens`.
    fn of(e: Extracted, tokens: Option<(u32, u32)>) -> Pair {
        let hash = table::pair_hash(&e.prompt, &e.first, &e.second);
        let swap = |t: Option<(u32, u32)>| t.map(|(x, y)| (y, x));
        let (a, b, label, tokens) = if !e.labelled {
            (e.first, e.second, None, tokens)
        } else if hash.as_bytes()[31] & 1 == 0 {
            (e.first, e.second, Some(0i8), tokens)
        } else {
            (e.second, e.first, Some(1i8), swap(tokens))
        };
        Pair { hash, prompt: e.prompt, a, b, label, tokens }
    }

    /// Which response is preferred, the same value for every occurrence of the pair whichever order its record
    /// gives the responses in (one bit of the hash puts the chosen one in `a` or `b`): whether the preferred one
    /// sorts first. None when unlabelled.
    fn preference(&self) -> Option<bool> {
        self.label.map(|l| if l == 0 { self.a <= self.b } else { self.b <= self.a })
    }
}

/// A pair kept, and the record it came from (0-based, counting skipped and invalid records).
struct Row {
    pair: Pair,
    source_row: u32,
}

/// Hashes a BLAKE3 hash by taking its bits: they are uniform already, so SipHash over them (std's default) only
/// costs time, on the one thread that keeps the records in file order.
#[derive(Default)]
struct HashBits(u64);

impl std::hash::Hasher for HashBits {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as its length (a constant), then its bytes: mixing in each write's first 8 bytes keeps
        // the hash's own bits
        let mut b = [0u8; 8];
        let n = bytes.len().min(8);
        b[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(17) ^ u64::from_le_bytes(b);
    }
}

/// The records in file order: the pairs kept since the last write (the first occurrence of each), the duplicates,
/// the invalid ones. A duplicate is known by its hash alone, so nothing of a written pair stays in memory but its
/// hash and which response it prefers.
#[derive(Default)]
struct Collected {
    pending: Vec<Row>,
    /// the text bytes (prompt and responses) of `pending`
    pending_bytes: usize,
    /// the [`Pair::preference`] of each pair's first occurrence
    first_seen: HashMap<[u8; 32], Option<bool>, std::hash::BuildHasherDefault<HashBits>>,
    records: u64,
    duplicates: u64,
    conflicting: u64,
    invalid: Skipped,
    /// the records left out as their prompt is held out ([`held_out_or_pair`])
    excluded: u64,
}

/// The pair of record `e`, or None when its prompt is one of `held_out` (BLAKE3 of each prompt of the `exclude`
/// tables), a record left out unchecked: only the others must pass `checks`.
fn held_out_or_pair(
    held_out: &HashSet<[u8; 32]>,
    checks: &Checks,
    format: Format,
    w: &Where,
    e: Extracted,
) -> StageResult<Option<Pair>> {
    if !held_out.is_empty() && held_out.contains(blake3::hash(e.prompt.as_bytes()).as_bytes()) {
        return Ok(None);
    }
    checks.pair(format, w, e).map(Some)
}

impl Collected {
    /// The next record: kept, counted as a duplicate (conflicting when it prefers the other response) or, when
    /// None, as held out ([`held_out_or_pair`]), or, when invalid, the error that stops the import or a skipped
    /// record.
    fn add(
        &mut self,
        pair: StageResult<Option<Pair>>,
        on_invalid: OnInvalid,
        skip: u64,
        shown: &str,
    ) -> StageResult<()> {
        let pair = match (pair, on_invalid) {
            (Ok(pair), _) => pair,
            (Err(e), OnInvalid::Error) => return Err(e),
            (Err(e), OnInvalid::Skip) => {
                self.invalid.add(&e);
                return Ok(());
            }
        };
        let source_row = u32::try_from(self.records + self.invalid.count + skip)
            .map_err(|_| StageError::invalid("path", format!("{shown}: more than 2^32 records")))?;
        self.records += 1;
        let Some(pair) = pair else {
            self.excluded += 1;
            return Ok(());
        };
        match self.first_seen.entry(*pair.hash.as_bytes()) {
            std::collections::hash_map::Entry::Occupied(o) => {
                self.duplicates += 1;
                if *o.get() != pair.preference() {
                    self.conflicting += 1;
                }
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(pair.preference());
                self.pending_bytes += pair.prompt.len() + pair.a.len() + pair.b.len();
                self.pending.push(Row { pair, source_row });
            }
        }
        Ok(())
    }

    /// The pending rows that fill whole row groups, group by group (at the end of the file, all of them), leaving
    /// the rest pending. A group is `group_rows` rows, or fewer when the next row would take the text bytes of one
    /// of its string columns past `group_bytes` (a row alone is a group whatever its size). The groups written
    /// before depend on the rows alone, not on when they were taken: the file's groups are those of one take.
    fn take_groups(&mut self, group_rows: usize, group_bytes: usize, at_end: bool) -> Vec<Vec<Row>> {
        let mut sizes = Vec::new();
        let (mut rows, mut bytes) = (0usize, [0usize; 3]);
        for r in &self.pending {
            let row = [r.pair.prompt.len(), r.pair.a.len(), r.pair.b.len()];
            if rows > 0 && bytes.iter().zip(row).any(|(b, n)| b + n > group_bytes) {
                sizes.push(rows);
                (rows, bytes) = (0, [0; 3]);
            }
            rows += 1;
            bytes.iter_mut().zip(row).for_each(|(b, n)| *b += n);
            if rows == group_rows {
                sizes.push(rows);
                (rows, bytes) = (0, [0; 3]);
            }
        }
        if at_end && rows > 0 {
            sizes.push(rows);
        }
        let taken: usize = sizes.iter().sum();
        let rest = self.pending.split_off(taken);
        let mut rows = std::mem::replace(&mut self.pending, rest).into_iter();
        self.pending_bytes = self.pending.iter().map(|r| r.pair.prompt.len() + r.pair.a.len() + r.pair.b.len()).sum();
        sizes.into_iter().map(|n| rows.by_ref().take(n).collect()).collect()
    }
}

/// How often the longer response (longer by [`SUMMARY_MARGIN`]) is preferred, counted over labelled rows.
#[derive(Default)]
struct LengthBias {
    longer: u64,
    shorter: u64,
    within: u64,
}

impl LengthBias {
    fn add(&mut self, label: Option<i8>, (a, b): (u32, u32)) {
        let Some(l) = label else { return };
        match crate::longer::longer(a, b, SUMMARY_MARGIN) {
            Some(side) if side == l => self.longer += 1,
            Some(_) => self.shorter += 1,
            None => self.within += 1,
        }
    }

    fn summary(&self, length: &str) -> Value {
        let (longer, shorter) = (self.longer, self.shorter);
        json!({
            "length": length,
            "margin": SUMMARY_MARGIN,
            "longer_preferred": longer,
            "shorter_preferred": shorter,
            "within_margin": self.within,
            "longer_preferred_share": if longer + shorter > 0 { longer as f64 / (longer + shorter) as f64 } else { 0.0 },
        })
    }
}

/// Whether `response` begins with the whole `prompt` (of three words or more, spaces at either end aside): a record
/// whose responses hold the dialogue again, as TRL's implicit-prompt strings do, given with an explicit prompt too.
/// TRL would read the prompt twice; here the prompt's words count in the response's length. Kept, and warned of.
fn repeats_prompt(prompt: &str, response: &str) -> bool {
    let p = prompt.trim();
    p.split_whitespace().nth(2).is_some() && response.trim_start().starts_with(p)
}

/// The summary's counts over the pairs written, added up group by group.
#[derive(Default)]
struct Counts {
    pairs: u64,
    labelled: u64,
    label_b_preferred: u64,
    identical_responses: u64,
    /// pairs with a response that begins with the whole prompt ([`repeats_prompt`])
    responses_repeating_prompt: u64,
    words: u64,
    bias_words: LengthBias,
    bias_tokens: LengthBias,
}

/// The pairs table as it is written: opened with the first rows, then group by group, and the summary's counts of
/// what it holds.
struct PairsOut<'a> {
    path: &'a Path,
    out: Option<table::GroupWriter>,
    counts: Counts,
}

impl PairsOut<'_> {
    /// Writes `groups` (row groups, from [`Collected::take_groups`]) and adds them to the counts. The rows' strings
    /// move into the groups' batches, each group's rows freed as its batch is built.
    fn write(&mut self, groups: Vec<Vec<Row>>) -> StageResult<()> {
        if groups.is_empty() {
            return Ok(());
        }
        let rows: Vec<&Row> = groups.iter().flatten().collect();
        let words: Vec<(u32, u32)> =
            rows.par_iter().map(|r| (table::word_count(&r.pair.a), table::word_count(&r.pair.b))).collect();
        for (i, r) in rows.iter().enumerate() {
            let label = r.pair.label;
            self.counts.pairs += 1;
            self.counts.labelled += label.is_some() as u64;
            self.counts.label_b_preferred += (label == Some(1)) as u64;
            self.counts.identical_responses += (r.pair.a == r.pair.b) as u64;
            self.counts.responses_repeating_prompt +=
                (repeats_prompt(&r.pair.prompt, &r.pair.a) || repeats_prompt(&r.pair.prompt, &r.pair.b)) as u64;
            self.counts.words += (words[i].0 + words[i].1) as u64;
            self.counts.bias_words.add(label, words[i]);
            if let Some(t) = r.pair.tokens {
                self.counts.bias_tokens.add(label, t);
            }
        }
        drop(rows);
        // each group's first row among all the rows, for its words
        let firsts: Vec<usize> = groups
            .iter()
            .scan(0, |n, g| {
                *n += g.len();
                Some(*n - g.len())
            })
            .collect();
        let batches: Vec<arrow::array::RecordBatch> = groups
            .into_par_iter()
            .zip(firsts)
            .map(|(chunk, first)| {
                let text_bytes: usize =
                    chunk.iter().map(|r| r.pair.prompt.len() + r.pair.a.len() + r.pair.b.len()).sum();
                let mut builder = PairsBuilder::with_capacity(chunk.len(), text_bytes);
                for (k, r) in chunk.iter().enumerate() {
                    let i = first + k;
                    let id = table::pair_id(&r.pair.hash);
                    builder.push(PairRow {
                        pair_id: &id,
                        prompt: &r.pair.prompt,
                        a: &r.pair.a,
                        b: &r.pair.b,
                        label: r.pair.label,
                        words: words[i],
                        tokens: r.pair.tokens,
                        source_row: r.source_row,
                    });
                }
                builder.finish()
            })
            .collect();
        let w = match &mut self.out {
            Some(w) => w,
            None => self.out.insert(table::GroupWriter::create(self.path, batches[0].schema())?),
        };
        w.write_groups(batches)
    }

    /// Writes the footer with `kv`; an error when no row was ever written.
    fn finish(self, shown: &str, kv: &[(String, String)]) -> StageResult<()> {
        let out = self.out.ok_or_else(|| StageError::failed(format!("{shown}: no pair to write")))?;
        out.finish(kv)
    }
}

impl Stage for Import {
    fn kind(&self) -> &'static str {
        "import"
    }
    fn doc(&self) -> &'static str {
        "normalise a preference dataset (JSONL, JSON or Parquet; TRL, unlabelled, HH or ShareGPT) into a pairs table"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        &[InputSpec {
            name: "exclude",
            required: false,
            many: true,
            doc: "pairs tables held out from this one: a record whose prompt is one of theirs is left out (counted)",
        }]
    }
    fn outputs(&self) -> &'static [OutputSpec] {
        &[OutputSpec { name: "pairs", kind: ArtifactKind::File, doc: "normalised pairs (Parquet)" }]
    }
    fn path_params(&self) -> &'static [&'static str] {
        &["path", "tokenizer"]
    }
    fn validate(&self, params: &Map<String, Value>) -> StageResult<()> {
        parse(params).map(|_| ())
    }
    fn params_schema(&self) -> schemars::Schema {
        schemars::schema_for!(Params)
    }
    fn runs(&self) -> Runs {
        Runs::InProcess(run)
    }
}

pub fn run(ctx: &dyn Ctx) -> StageResult<Value> {
    import_in_groups(ctx, GROUP_ROWS, GROUP_BYTES)
}

/// [`run`] with row groups of `group_rows` rows, cut before `group_bytes` text bytes of a column (parameters so
/// that tests can write many groups from a small file: [`Collected::take_groups`]).
fn import_in_groups(ctx: &dyn Ctx, group_rows: usize, group_bytes: usize) -> StageResult<Value> {
    let p = parse(ctx.params())?;
    let shown = p.path.as_str();
    let path = ctx
        .external("path")
        .ok_or_else(|| StageError::invalid("path", format!("{shown}: the runner did not resolve this file")))?;
    let tokenizer =
        match &p.tokenizer {
            None => None,
            Some(t) => {
                let tp = ctx.external("tokenizer").ok_or_else(|| {
                    StageError::invalid("tokenizer", format!("{t}: the runner did not resolve this file"))
                })?;
                Some(crate::tokenizer_file::read(tp).map_err(|e| {
                    StageError::invalid("tokenizer", format!("{t}: not a readable tokenizer.json: {e}"))
                })?)
            }
        };

    let exclude = ctx.inputs("exclude");
    let held_out = held_out_prompts(exclude)?;

    let mut format = p.format;
    let mut c = Collected::default();
    let out_path = ctx.output_path("pairs");
    let mut out = PairsOut { path: &out_path, out: None, counts: Counts::default() };
    let checks = Checks {
        max_text_bytes: p.max_text_bytes,
        tokenizer: tokenizer.as_ref().zip(p.tokenizer.as_deref()),
        drops: tokenizer.as_ref().and_then(crate::tokenizer_file::DropCheck::of),
    };
    // rows are written as soon as they fill a group per thread: memory holds a few groups, whatever the file's size
    // (past `flush_bytes`, one of the three text columns holds a group's bytes per thread: some groups are whole)
    let threads = rayon::current_num_threads().max(1);
    let (flush_rows, flush_bytes) = (group_rows * threads, group_bytes.saturating_mul(3 * threads));
    let mut skipped = 0u64;
    let limit = p.limit.map_or(u64::MAX, |l| l.saturating_add(p.skip));
    let kind = for_each_batch(path, shown, limit, p.format, |items, total| {
        let mut items = items.into_iter().skip_while(|_| {
            let skip = skipped < p.skip;
            skipped += skip as u64;
            skip
        });
        // one record at a time until the format is known: the first valid record decides it
        while format == Format::Auto {
            let Some(item) = items.next() else { return Ok(()) };
            let w = Where { file: shown, loc: item.loc, file_keys: item.file_keys.as_deref() };
            let pair = item.rec.and_then(|mut rec| {
                format = detect(&rec, &w)?;
                ctx.log(&format!("{shown}: detected format `{}`", format.name()));
                extract(format, &w, &mut rec).and_then(|e| held_out_or_pair(&held_out, &checks, format, &w, e))
            });
            c.add(pair, p.on_invalid, p.skip, shown)?;
        }
        let pairs: Vec<StageResult<Option<Pair>>> = items
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|item| {
                let w = Where { file: shown, loc: item.loc, file_keys: item.file_keys.as_deref() };
                let e = item.rec.and_then(|mut rec| extract(format, &w, &mut rec));
                e.and_then(|e| held_out_or_pair(&held_out, &checks, format, &w, e))
            })
            .collect();
        for pair in pairs {
            c.add(pair, p.on_invalid, p.skip, shown)?;
        }
        if c.pending.len() >= flush_rows || c.pending_bytes > flush_bytes {
            out.write(c.take_groups(group_rows, group_bytes, false))?;
        }
        ctx.progress(c.records, total.unwrap_or(0));
        Ok(())
    })?;
    out.write(c.take_groups(group_rows, group_bytes, true))?;
    let Collected { records, duplicates, conflicting, invalid, excluded, .. } = c;
    if records > 0 && excluded == records {
        return Err(StageError::invalid(
            "exclude",
            format!(
                "{shown}: every one of its {records} records has a prompt of `exclude` ({}): nothing is left",
                nodes(exclude)
            ),
        ));
    }
    if records == 0 {
        let why = if invalid.count > 0 {
            format!("all {} records were invalid and skipped; the first: {}", invalid.count, invalid.first.join("; "))
        } else if p.skip > 0 {
            format!("skip = {} passes the end of the file, which has {skipped} records", p.skip)
        } else {
            "empty dataset (no records)".to_string()
        };
        return Err(StageError::invalid(
            if p.skip > 0 && invalid.count == 0 { "skip" } else { "path" },
            format!("{shown}: {why}"),
        ));
    }
    if invalid.count > 0 {
        ctx.warn(&format!(
            "{shown}: skipped {} invalid records ({}); the first: {}",
            invalid.count,
            invalid.by_field.iter().map(|(f, n)| format!("{n} on `{f}`")).collect::<Vec<_>>().join(", "),
            invalid.first.first().map(String::as_str).unwrap_or("")
        ));
    }
    ctx.progress(records, records);

    let counts = &out.counts;
    let (pairs, identical, repeating) = (counts.pairs, counts.identical_responses, counts.responses_repeating_prompt);
    let mut summary = json!({
        "format": format.name(),
        "file_kind": kind.name(),
        "records": records,
        "pairs": pairs,
        "duplicates": duplicates,
        "conflicting_duplicates": conflicting,
        "labelled": counts.labelled,
        "unlabelled": pairs - counts.labelled,
        "label_b_preferred": counts.label_b_preferred,
        "identical_responses": counts.identical_responses,
        "responses_repeating_prompt": counts.responses_repeating_prompt,
        "tokenizer": tokenizer.is_some(),
        "mean_words_response": if pairs == 0 { 0.0 } else { counts.words as f64 / (2 * pairs) as f64 },
        "length_bias_words": counts.bias_words.summary("words"),
        "invalid_skipped": invalid.count,
        "invalid_by_field": invalid.by_field,
        "invalid_first": invalid.first,
    });
    if tokenizer.is_some() {
        summary["length_bias_tokens"] = counts.bias_tokens.summary("tokens");
    }
    if !exclude.is_empty() {
        summary["held_out_prompt_records"] = json!(excluded);
    }
    out.finish(shown, &table::summary_kv("import", &summary))?;
    ctx.log(&format!("{shown}: {records} records → {pairs} pairs ({duplicates} duplicates dropped)"));
    if !exclude.is_empty() {
        ctx.log(&format!(
            "{shown}: {excluded} records left out: their prompt is held out in `exclude` ({}) (counted in `rmdistill.held_out_prompt_records` of the pairs table's metadata)",
            nodes(exclude)
        ));
    }
    if conflicting > 0 {
        ctx.warn(&format!(
            "{shown}: {conflicting} of the {duplicates} duplicates dropped prefer the other response of their pair; each pair keeps the label of its first record (counted in `rmdistill.conflicting_duplicates` of the pairs table's metadata)"
        ));
    }
    if repeating > 0 {
        ctx.warn(&format!(
            "{shown}: {} of the {pairs} pairs have a response that begins with the whole prompt: the responses seem to \
             hold the dialogue again, which TRL would read after the prompt a second time; imported as given, the \
             prompt's words count in those responses' lengths (counted in `rmdistill.responses_repeating_prompt` of the \
             pairs table's metadata)",
            repeating
        ));
    }
    if identical > 0 {
        ctx.warn(&format!(
            "{shown}: {identical} of the {pairs} pairs have the same text as both responses (response_a = response_b): imported as given, they carry no preference (counted in `rmdistill.identical_responses` of the pairs table's metadata)"
        ));
    }
    Ok(summary)
}

/// BLAKE3 of every prompt of the `exclude` tables: a prompt is held out by its exact text, as import writes it.
fn held_out_prompts(tables: &[InputArtifact]) -> StageResult<HashSet<[u8; 32]>> {
    let mut set = HashSet::new();
    for t in tables {
        let batch = table::read_table(&t.path, Some(&[table::PROMPT]))?;
        let col = batch.column(0).as_any().downcast_ref::<arrow::array::StringArray>().ok_or_else(|| {
            StageError::invalid(
                "exclude",
                format!("input `exclude` (from {}): `prompt` is not a string column", t.node),
            )
        })?;
        set.extend(col.iter().flatten().map(|p| *blake3::hash(p.as_bytes()).as_bytes()));
    }
    Ok(set)
}

/// The nodes the `exclude` tables come from, for the log.
fn nodes(tables: &[InputArtifact]) -> String {
    tables.iter().map(|t| t.node.as_str()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::local_ctx::{LocalCtx, shared_data};
    use arrow::array::{Array, Int8Array, StringArray, UInt32Array};
    use std::path::PathBuf;
    use std::sync::Arc;

    fn tldr() -> PathBuf {
        shared_data().join("tldr-2k/train.jsonl")
    }

    /// Runs `import` on `file` with extra params; returns (summary, output path, ctx) or the error text.
    fn import(dir: &Path, file: &Path, extra: Value) -> Result<(Value, PathBuf), String> {
        import_grouped(dir, file, extra, GROUP_ROWS)
    }

    fn import_grouped(dir: &Path, file: &Path, extra: Value, group_rows: usize) -> Result<(Value, PathBuf), String> {
        import_bounded(dir, file, extra, group_rows, GROUP_BYTES)
    }

    /// [`import_grouped`] with groups cut before `group_bytes` text bytes of a column.
    fn import_bounded(
        dir: &Path,
        file: &Path,
        extra: Value,
        group_rows: usize,
        group_bytes: usize,
    ) -> Result<(Value, PathBuf), String> {
        let mut params = json!({"path": file.to_string_lossy()});
        for (k, v) in extra.as_object().unwrap() {
            params[k] = v.clone();
        }
        let tok = params.get("tokenizer").and_then(|t| t.as_str()).map(PathBuf::from);
        let mut ctx = LocalCtx::new(dir, params).external("path", file);
        if let Some(t) = tok {
            ctx = ctx.external("tokenizer", t);
        }
        std::fs::create_dir_all(dir).unwrap();
        Import.validate(ctx.params()).map_err(|e| e.to_string())?;
        let summary = import_in_groups(&ctx, group_rows, group_bytes).map_err(|e| e.to_string())?;
        Ok((summary, ctx.out("pairs")))
    }

    /// A tokenizer.json of a BPE model of `vocab` (no merges, no unknown token, no byte fallback) with a
    /// Whitespace pre-tokenizer, and `set` on top (`"model.unk_token"` sets a field of the model).
    fn bpe_tokenizer<S: AsRef<str>>(vocab: impl IntoIterator<Item = S>, set: Value) -> Value {
        let vocab: serde_json::Map<String, Value> =
            vocab.into_iter().enumerate().map(|(i, t)| (t.as_ref().to_string(), json!(i))).collect();
        let mut tok = json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
            "model": {"type": "BPE", "vocab": vocab, "merges": [], "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
                "byte_fallback": false}});
        for (k, v) in set.as_object().unwrap() {
            match k.strip_prefix("model.") {
                Some(m) => tok["model"][m] = v.clone(),
                None => tok[k] = v.clone(),
            }
        }
        tok
    }

    /// Imports `(chosen, rejected)` pairs with tokenizer `tok`: each pair's token counts (chosen, rejected, as
    /// `tokens_a`/`tokens_b` hold them beside `response_a`/`response_b`), or the error.
    fn token_counts(tok: &Value, pairs: &[(&str, &str)]) -> Result<Vec<(u32, u32)>, String> {
        let d = tempfile::tempdir().unwrap();
        let t = write(d.path(), "tokenizer.json", &tok.to_string());
        let rows: Vec<String> =
            pairs.iter().map(|(c, r)| json!({"prompt": "p", "chosen": c, "rejected": r}).to_string()).collect();
        let f = write(d.path(), "d.jsonl", &rows.join("\n"));
        let (_, out) = import(&d.path().join("o"), &f, json!({"tokenizer": t.to_string_lossy()}))?;
        let t = table::read_table(&out, None).unwrap();
        let col = |c: &str| t.column_by_name(c).unwrap().as_any().downcast_ref::<UInt32Array>().unwrap().clone();
        let (a, b) = (col("tokens_a"), col("tokens_b"));
        let chosen_is_a = strings(&t, "response_a").into_iter().zip(pairs).map(|(ra, (c, _))| ra == *c);
        Ok(chosen_is_a
            .enumerate()
            .map(|(i, first)| if first { (a.value(i), b.value(i)) } else { (b.value(i), a.value(i)) })
            .collect())
    }

    /// The count of `text` by the crate's own `encode`, for comparison.
    fn encoded(tok: &Value, text: &str) -> u32 {
        let t = tokenizers::Tokenizer::from_bytes(tok.to_string().as_bytes()).unwrap();
        t.encode_fast(text, false).unwrap().len() as u32
    }

    /// A BPE tokenizer with no unknown token and no byte fallback drops the characters it has no token for, and
    /// counts the response short: with some of its characters dropped (`ab ac` would count 3), or all of them (0),
    /// the response is refused naming the row, what is dropped and in which word.
    #[test]
    fn a_response_the_tokenizer_drops_characters_of_is_refused() {
        let tok = bpe_tokenizer(["a", "b"], json!({}));
        assert_eq!(encoded(&tok, "ab ac"), 3, "the silent drop: `c` counts nothing");
        assert_eq!(token_counts(&tok, &[("a b", "b a"), ("ab ba", "ba")]), Ok(vec![(2, 2), (4, 2)]));
        let e = token_counts(&tok, &[("a b", "b a"), ("a", "ab ac")]).unwrap_err();
        for part in [
            "d.jsonl line 2: `rejected` loses \"c\" (in \"ac\") to tokenizer ",
            "tokenizer.json: ",
            "count 3 tokens",
            "unk_token",
        ] {
            assert!(e.starts_with("tokenizer:") && e.contains(part), "{part}: {e}");
        }
        let e = token_counts(&tok, &[("a b", "b a"), ("a", "€ €")]).unwrap_err();
        assert!(e.contains("line 2: `rejected` loses \"€\"") && e.contains("count 0 tokens"), "{e}");
        // Whitespace splits punctuation off the words: a comma with no token is a drop too
        let e = token_counts(&tok, &[("ab, ba", "a")]).unwrap_err();
        assert!(e.contains("line 1: `chosen` loses \",\""), "{e}");
    }

    /// The token counts of the `pairs` table at `out`, checked against the tokenizer's own `encode_fast` of each
    /// response: (response_a, response_b, tokens_a, tokens_b) per row.
    fn counted_as_encoded(tok: &Value, out: &Path) -> Vec<(String, String, u32, u32)> {
        let t = table::read_table(out, None).unwrap();
        let col = |c: &str| t.column_by_name(c).unwrap().as_any().downcast_ref::<UInt32Array>().unwrap().clone();
        let (ta, tb) = (col("tokens_a"), col("tokens_b"));
        let rows: Vec<(String, String, u32, u32)> = strings(&t, "response_a")
            .into_iter()
            .zip(strings(&t, "response_b"))
            .enumerate()
            .map(|(i, (a, b))| (a, b, ta.value(i), tb.value(i)))
            .collect();
        for (a, b, na, nb) in &rows {
            assert_eq!((*na, *nb), (encoded(tok, a), encoded(tok, b)), "{a:?} / {b:?}");
        }
        rows
    }

    /// A response the tokenizer drops characters of is its record's error, found where the record is read: with
    /// `on_invalid = "error"` it stops the import naming the place, the field and what is dropped; with "skip" the
    /// record is left out and counted on `tokenizer`, and the other records import with the tokenizer's counts —
    /// whether the record is the first one (read while the format is detected) or one of the later ones.
    #[test]
    fn a_response_the_tokenizer_drops_characters_of_is_an_invalid_record() {
        let d = tempfile::tempdir().unwrap();
        let tok = bpe_tokenizer(["a", "b"], json!({}));
        let tp = write(d.path(), "tokenizer.json", &tok.to_string());
        let rec = |c: &str, r: &str| json!({"prompt": "p", "chosen": c, "rejected": r}).to_string();
        let good = [rec("a b", "b a"), rec("ab ba", "ba"), rec("a a a", "b"), rec("ba", "a b ab")];
        for (name, at, loc) in [("first", 0, "line 1"), ("later", 2, "line 3")] {
            let mut lines = good.to_vec();
            lines.insert(at, rec("ab ac", "a"));
            let f = write(d.path(), &format!("{name}.jsonl"), &lines.join("\n"));
            let params = |on_invalid: &str| json!({"tokenizer": tp.to_string_lossy(), "on_invalid": on_invalid});
            let e = import(&d.path().join(format!("e-{name}")), &f, params("error")).unwrap_err();
            for part in [
                &format!("tokenizer: {}", f.display()),
                &format!("{name}.jsonl {loc}: `chosen` loses \"c\" (in \"ac\") to tokenizer "),
                "count 3 tokens, too few",
                DROP_REMEDY,
            ] {
                assert!(e.contains(part), "{name}: {part}: {e}");
            }
            let (s, logs) = import_logged(&d.path().join(format!("s-{name}")), &f, params("skip"));
            let s = s.unwrap();
            assert_eq!((s["records"].as_u64(), s["invalid_skipped"].as_u64()), (Some(4), Some(1)), "{name}: {s}");
            assert_eq!(s["invalid_by_field"], json!({"tokenizer": 1}), "{name}: {s}");
            assert!(s["invalid_first"][0].as_str().unwrap().contains(&format!("{loc}: `chosen` loses \"c\"")), "{s}");
            assert!(
                logs.iter()
                    .any(|l| l.starts_with("warning: ") && l.contains("skipped 1 invalid records (1 on `tokenizer`)")),
                "{name}: {logs:?}"
            );
            let rows = counted_as_encoded(&tok, &d.path().join(format!("s-{name}")).join("pairs.parquet"));
            assert_eq!(rows.len(), 4, "{name}");
            // the skipped record is counted in the source rows of those after it
            let t = table::read_table(&d.path().join(format!("s-{name}")).join("pairs.parquet"), None).unwrap();
            let src = t.column_by_name("source_row").unwrap().as_any().downcast_ref::<UInt32Array>().unwrap();
            let mut src = src.values().to_vec();
            src.sort();
            let want: Vec<u32> = (0..5).filter(|&r| r != at as u32).collect();
            assert_eq!(src, want, "{name}");
        }
        // a JSON array names the record by its index
        let mut recs: Vec<Value> = good.iter().map(|r| serde_json::from_str(r).unwrap()).collect();
        recs.insert(1, json!({"prompt": "p", "chosen": "a", "rejected": "b €"}));
        let f = write(d.path(), "a.json", &Value::Array(recs).to_string());
        let e = import(&d.path().join("e-array"), &f, json!({"tokenizer": tp.to_string_lossy()})).unwrap_err();
        assert!(e.contains("a.json index 1: `rejected` loses \"€\" (in \"€\")"), "{e}");
    }

    /// A prompt or response longer than `max_text_bytes` is an invalid record, refused before its tokens are
    /// counted: the error names the place, the field, the size and the limit and how to raise it; "skip" leaves the
    /// record out counted on its field; a higher limit imports it.
    #[test]
    fn a_text_over_max_text_bytes_is_an_invalid_record() {
        let d = tempfile::tempdir().unwrap();
        let long = "ab ".repeat(50); // 150 bytes
        let good = json!({"prompt": "p", "chosen": "a", "rejected": "b"}).to_string();
        let cases: Vec<(&str, String, &str, &str)> = vec![
            (
                "chosen.jsonl",
                json!({"prompt": "p", "chosen": long, "rejected": "b"}).to_string(),
                "chosen",
                "line 2: `chosen` is 150 bytes as imported, over `max_text_bytes` = 100 bytes",
            ),
            (
                "prompt.jsonl",
                json!({"prompt": long, "chosen": "a", "rejected": "b"}).to_string(),
                "prompt",
                "line 2: `prompt` is 150 bytes as imported",
            ),
            (
                // response_b is preferred: the record's first response is response_b, named as the record has it
                "unlabeled.jsonl",
                json!({"prompt": "p", "response_a": long, "response_b": "b", "label": 1}).to_string(),
                "response_a",
                "line 2: `response_a` is 150 bytes",
            ),
            (
                "hh.jsonl",
                json!({"chosen": format!("\n\nHuman: {long}\n\nAssistant: a"),
                       "rejected": format!("\n\nHuman: {long}\n\nAssistant: b")})
                .to_string(),
                "chosen",
                "line 2: the prompt (what `chosen` and `rejected` share) is 171 bytes",
            ),
            (
                "sharegpt.jsonl",
                json!({"conversations": [{"from": "human", "value": long}],
                       "chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}})
                .to_string(),
                "conversations",
                "line 2: the prompt (`system` and `conversations`) is 171 bytes",
            ),
        ];
        for (name, bad, field, needle) in cases {
            let good = if name.starts_with("sharegpt") {
                json!({"conversations": [{"from": "human", "value": "q"}],
                       "chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}})
                .to_string()
            } else if name.starts_with("hh") {
                json!({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"})
                    .to_string()
            } else if name.starts_with("unlabeled") {
                json!({"prompt": "p", "response_a": "a", "response_b": "b", "label": 0}).to_string()
            } else {
                good.clone()
            };
            let f = write(d.path(), name, &format!("{good}\n{bad}\n{good}"));
            let e = import(&d.path().join(format!("e-{name}")), &f, json!({"max_text_bytes": 100})).unwrap_err();
            assert!(e.starts_with(&format!("{field}: ")), "{name}: {e}");
            let size = if name.starts_with("hh") || name.starts_with("sharegpt") { 171 } else { 150 };
            let raise =
                format!("raise the limit: `max_text_bytes = {size}` (or more) in the node's params, or `--set`");
            for part in [needle, &raise] {
                assert!(e.contains(part), "{name}: expected `{part}` in: {e}");
            }
            let (s, _) =
                import(&d.path().join(format!("s-{name}")), &f, json!({"max_text_bytes": 100, "on_invalid": "skip"}))
                    .unwrap();
            assert_eq!((s["records"].as_u64(), s["invalid_skipped"].as_u64()), (Some(2), Some(1)), "{name}: {s}");
            assert_eq!(s["invalid_by_field"][field], 1, "{name}: {s}");
            let (s, _) = import(&d.path().join(format!("o-{name}")), &f, json!({"max_text_bytes": 200})).unwrap();
            assert_eq!((s["records"].as_u64(), s["invalid_skipped"].as_u64()), (Some(3), Some(0)), "{name}: {s}");
        }
        // the size is checked before the tokenizer, which would refuse this response for its `c`
        let tok = bpe_tokenizer(["a", "b"], json!({}));
        let tp = write(d.path(), "tokenizer.json", &tok.to_string());
        let f = write(
            d.path(),
            "both.jsonl",
            &json!({"prompt": "p", "chosen": "a", "rejected": format!("{long}c")}).to_string(),
        );
        let e = import(&d.path().join("e-both"), &f, json!({"max_text_bytes": 100, "tokenizer": tp.to_string_lossy()}))
            .unwrap_err();
        assert!(e.starts_with("rejected: ") && e.contains("line 1: `rejected` is 151 bytes"), "{e}");
        let e = import(&d.path().join("e-zero"), &f, json!({"max_text_bytes": 0})).unwrap_err();
        assert_eq!(e, "max_text_bytes: must be at least 1");
    }

    /// The default limit, 1 MiB, admits a text of 100 kB, counted by the tokenizer as its `encode_fast` counts it;
    /// a text of more than 1 MiB is refused, in MiB too.
    #[test]
    fn the_default_max_text_bytes_admits_a_long_text() {
        let d = tempfile::tempdir().unwrap();
        let tok = bpe_tokenizer(["a", "b", "ab"], json!({"model.merges": [["a", "b"]]}));
        let tp = write(d.path(), "tokenizer.json", &tok.to_string());
        let long = "ab a b ".repeat(100_000 / 7);
        assert!(long.len() > 99_000);
        let f = write(d.path(), "long.jsonl", &json!({"prompt": long, "chosen": long, "rejected": "a b"}).to_string());
        let (s, out) = import(&d.path().join("o"), &f, json!({"tokenizer": tp.to_string_lossy()})).unwrap();
        assert_eq!(s["invalid_skipped"], 0, "{s}");
        let rows = counted_as_encoded(&tok, &out);
        let long_count = if rows[0].0 == long { rows[0].2 } else { rows[0].3 };
        assert_eq!(long_count, 3 * 14_285);
        let huge = "a".repeat((1 << 20) + 1);
        let f = write(d.path(), "huge.jsonl", &json!({"prompt": "p", "chosen": "a", "rejected": huge}).to_string());
        let e = import(&d.path().join("h"), &f, json!({"tokenizer": tp.to_string_lossy()})).unwrap_err();
        assert!(
            e.contains("line 1: `rejected` is 1048577 bytes (1.0 MiB) as imported, over `max_text_bytes` = 1048576 bytes (1.0 MiB)"),
            "{e}"
        );
    }

    /// With an unknown token the same tokenizer counts each missing character as one: nothing is dropped and
    /// nothing is refused, the counts are the crate's own.
    #[test]
    fn a_tokenizer_with_an_unknown_token_counts_as_before() {
        let tok = bpe_tokenizer(["<unk>", "a", "b"], json!({"model.unk_token": "<unk>"}));
        let counts = token_counts(&tok, &[("ab ac", "€ €"), ("a", "ca")]).unwrap();
        assert_eq!(counts, vec![(4, 2), (1, 2)]);
        assert_eq!(counts[0], (encoded(&tok, "ab ac"), encoded(&tok, "€ €")));
    }

    /// A byte-level tokenizer (GPT-2's kind, with its 256 byte symbols) has a token for everything: it is not
    /// checked, and counts what the crate counts.
    #[test]
    fn a_byte_level_tokenizer_is_not_checked() {
        let mut symbols: Vec<String> =
            tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet().into_iter().map(|c| c.to_string()).collect();
        symbols.sort();
        symbols.push("Ġw".to_string());
        let byte_level =
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        let tok = bpe_tokenizer(
            &symbols,
            json!({"pre_tokenizer": byte_level, "post_processor": byte_level, "model.merges": [["Ġ", "w"]]}),
        );
        let t = tokenizers::Tokenizer::from_bytes(tok.to_string().as_bytes()).unwrap();
        assert!(!crate::tokenizer_file::may_drop_characters(&t));
        let (a, b) = ("héllo wörld, € ✓", "a w\u{0}\u{10ffff}");
        assert_eq!(token_counts(&tok, &[(a, b)]), Ok(vec![(encoded(&tok, a), encoded(&tok, b))]));
        assert_eq!(encoded(&tok, b), 7, "a, Ġw, one symbol for NUL, four for the bytes of U+10FFFF");
    }

    /// A normalizer's changes are what the model is given: lowercase letters cover "AB" under Lowercase, and a
    /// character it still drops is named as the response has it.
    #[test]
    fn what_the_normalizer_gives_the_model_is_what_is_checked() {
        let tok = bpe_tokenizer(["a", "b"], json!({"normalizer": {"type": "Lowercase"}}));
        assert_eq!(token_counts(&tok, &[("AB", "Ba a")]), Ok(vec![(2, 3)]));
        let e = token_counts(&tok, &[("AB", "AC")]).unwrap_err();
        assert!(e.contains("loses \"C\" (normalized to \"c\") (in \"AC\")"), "{e}");
    }

    /// A response the normalizer and pre-tokenizer take out whole (punctuation removed) is no token at all, with no
    /// character dropped by the model: refused, saying so.
    #[test]
    fn a_response_taken_out_before_the_model_is_refused() {
        let tok = json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
            "pre_tokenizer": {"type": "Punctuation", "behavior": "Removed"}, "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "a": 1}, "unk_token": "[UNK]"}});
        assert_eq!(token_counts(&tok, &[("a!", "b")]), Ok(vec![(1, 1)]));
        let e = token_counts(&tok, &[("a", "b"), ("a", "!?")]).unwrap_err();
        assert!(
            e.contains("line 2: `rejected` (\"!?\") is no token at all") && e.contains("normalizer and pre-tokenizer"),
            "{e}"
        );
    }

    /// The real-data pipelines hold out TL;DR records 1600..2000 and train on the first 1600; 69 posts are on both
    /// sides (95 training records). With the held-out table bound to `exclude`, none of its prompts is left in the
    /// training table and every other record is.
    #[test]
    fn exclude_leaves_out_the_records_of_held_out_prompts() {
        let d = tempfile::tempdir().unwrap();
        let (_, held_path) = import(&d.path().join("held"), &tldr(), json!({"skip": 1600, "limit": 400})).unwrap();
        let (plain, _) = import(&d.path().join("plain"), &tldr(), json!({"limit": 1600})).unwrap();
        let dir = d.path().join("train");
        std::fs::create_dir_all(&dir).unwrap();
        let params = json!({"path": tldr().to_string_lossy(), "limit": 1600});
        let ctx = LocalCtx::new(&dir, params).external("path", tldr()).input("exclude", &held_path);
        let s = import_in_groups(&ctx, GROUP_ROWS, GROUP_BYTES).unwrap();
        let prompts = |p: &Path| -> std::collections::HashSet<String> {
            strings(&table::read_table(p, Some(&["prompt"])).unwrap(), "prompt").into_iter().collect()
        };
        let (train, held) = (prompts(&ctx.out("pairs")), prompts(&held_path));
        assert_eq!(train.intersection(&held).count(), 0);
        assert_eq!(s["held_out_prompt_records"], 95, "{s}");
        assert_eq!(s["records"], plain["records"]);
        assert!(s["pairs"].as_u64().unwrap() < plain["pairs"].as_u64().unwrap());
        assert!(held.len() > 300, "the held-out side keeps its {} prompts", held.len());
        // a table holding out every prompt leaves nothing, and says so
        let dir = d.path().join("all");
        std::fs::create_dir_all(&dir).unwrap();
        let ctx = LocalCtx::new(&dir, json!({"path": tldr().to_string_lossy(), "skip": 1600, "limit": 400}))
            .external("path", tldr())
            .input("exclude", &held_path);
        let e = import_in_groups(&ctx, GROUP_ROWS, GROUP_BYTES).unwrap_err().to_string();
        assert!(e.contains("exclude") && e.contains("nothing is left"), "{e}");
    }

    /// A record whose prompt is held out is left out unchecked: a text of it over `max_text_bytes`, or one the
    /// tokenizer drops characters of, neither fails the import nor counts as invalid, whether it is the first record
    /// (read alone, to detect the format) or not.
    #[test]
    fn a_held_out_record_is_left_out_unchecked() {
        let d = tempfile::tempdir().unwrap();
        let held = write(d.path(), "held.jsonl", &json!({"prompt": "p1", "chosen": "a", "rejected": "b"}).to_string());
        let (_, held_path) = import(&d.path().join("held"), &held, json!({})).unwrap();
        let tok = bpe_tokenizer(["a", "b"], json!({}));
        let tp = write(d.path(), "tokenizer.json", &tok.to_string());
        let long = json!({"prompt": "p1", "chosen": "a".repeat(200), "rejected": "b"}).to_string();
        let dropped = json!({"prompt": "p1", "chosen": "a c", "rejected": "b"}).to_string();
        let ordinary = json!({"prompt": "p2", "chosen": "a", "rejected": "b b"}).to_string();
        let cases = [
            ("long", &long, json!({"max_text_bytes": 100})),
            ("dropped", &dropped, json!({"tokenizer": tp.to_string_lossy()})),
        ];
        for (what, held_out, params) in cases {
            for first in [true, false] {
                let text = if first { format!("{held_out}\n{ordinary}") } else { format!("{ordinary}\n{held_out}") };
                let f = write(d.path(), &format!("{what}-{first}.jsonl"), &text);
                for on_invalid in ["error", "skip"] {
                    let case = format!("{what}, held out first: {first}, on_invalid {on_invalid}");
                    let dir = d.path().join(format!("o-{what}-{first}-{on_invalid}"));
                    std::fs::create_dir_all(&dir).unwrap();
                    let mut p = params.clone();
                    p["path"] = json!(f.to_string_lossy());
                    p["on_invalid"] = json!(on_invalid);
                    let tok = p.get("tokenizer").is_some();
                    let mut ctx = LocalCtx::new(&dir, p).external("path", &f).input("exclude", &held_path);
                    if tok {
                        ctx = ctx.external("tokenizer", &tp);
                    }
                    let s = import_in_groups(&ctx, GROUP_ROWS, GROUP_BYTES).unwrap_or_else(|e| panic!("{case}: {e}"));
                    assert_eq!(s["held_out_prompt_records"], 1, "{case}: {s}");
                    assert_eq!((s["records"].as_u64(), s["pairs"].as_u64()), (Some(2), Some(1)), "{case}: {s}");
                    assert_eq!(s["invalid_skipped"], 0, "{case}: {s}");
                    let rows = table::read_table(&ctx.out("pairs"), None).unwrap();
                    let source_row = rows.column_by_name("source_row").unwrap();
                    let source_row = source_row.as_any().downcast_ref::<UInt32Array>().unwrap();
                    assert_eq!(source_row.value(0), if first { 1 } else { 0 }, "{case}");
                }
            }
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn strings(b: &arrow::array::RecordBatch, col: &str) -> Vec<String> {
        let a = b.column_by_name(col).unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        a.iter().map(|s| s.unwrap().to_string()).collect()
    }
    fn labels(b: &arrow::array::RecordBatch) -> Vec<Option<i8>> {
        b.column_by_name("label").unwrap().as_any().downcast_ref::<Int8Array>().unwrap().iter().collect()
    }

    #[test]
    fn imports_tldr() {
        let dir = tempfile::tempdir().unwrap();
        let (s, out) = import(dir.path(), &tldr(), json!({})).unwrap();
        assert_eq!(s["format"], "trl");
        assert_eq!(s["records"], 2000);
        assert_eq!(s["pairs"].as_u64().unwrap() + s["duplicates"].as_u64().unwrap(), 2000);
        let t = table::read_table(&out, None).unwrap();
        assert_eq!(t.schema(), table::pairs_schema());
        assert_eq!(t.num_rows() as u64, s["pairs"].as_u64().unwrap());
        let l = labels(&t);
        let ones = l.iter().filter(|x| **x == Some(1)).count();
        assert!(l.iter().all(|x| x.is_some()));
        assert!((800..1200).contains(&ones), "label should follow the hash bit, not be constant: {ones}");
        let tok = t.column_by_name("tokens_a").unwrap();
        assert_eq!(tok.null_count(), t.num_rows(), "no tokenizer, no token counts");
        let share = s["length_bias_words"]["longer_preferred_share"].as_f64().unwrap();
        eprintln!("tldr: {s}");
        assert!((0.5..0.66).contains(&share), "README says about 58%: {share}");
        // the chosen summary of the first record is the preferred response of row 0
        let first: Value =
            serde_json::from_str(std::fs::read_to_string(tldr()).unwrap().lines().next().unwrap()).unwrap();
        let (a, b) = (strings(&t, "response_a"), strings(&t, "response_b"));
        let preferred = if l[0] == Some(0) { &a[0] } else { &b[0] };
        assert_eq!(preferred, first["chosen"].as_str().unwrap());
        let src = t.column_by_name("source_row").unwrap().as_any().downcast_ref::<UInt32Array>().unwrap();
        assert_eq!(src.value(0), 0);
        let kv = table::read_kv(&out).unwrap();
        assert!(kv.contains(&("rmdistill.records".into(), "2000".into())), "{kv:?}");
        assert!(kv.contains(&("rmdistill.stage".into(), "import".into())));
    }

    #[test]
    fn import_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let (_, o1) = import(&dir.path().join("1"), &tldr(), json!({})).unwrap();
        let (_, o2) = import(&dir.path().join("2"), &tldr(), json!({})).unwrap();
        assert_eq!(std::fs::read(o1).unwrap(), std::fs::read(o2).unwrap());
    }

    #[test]
    fn rows_written_group_by_group_are_the_rows_of_one_write() {
        // 2,000 TL;DR records, then 700 of them again (half with chosen and rejected swapped: conflicting), read
        // in groups of 64 rows — ~40 writes, duplicates of rows written long before — and in one group
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(tldr()).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        for (i, l) in text.lines().take(700).enumerate() {
            let mut v: Value = serde_json::from_str(l).unwrap();
            if i % 2 == 1 {
                let c = v["chosen"].take();
                v["chosen"] = std::mem::replace(&mut v["rejected"], c);
            }
            lines.push(v.to_string());
        }
        let f = write(dir.path(), "d.jsonl", &lines.join("\n"));
        let (small, o1) = import_grouped(&dir.path().join("64"), &f, json!({}), 64).unwrap();
        let (whole, o2) = import_grouped(&dir.path().join("all"), &f, json!({}), 1 << 20).unwrap();
        assert_eq!(small, whole);
        assert_eq!(small["records"], 2700);
        let dups = whole["duplicates"].as_u64().unwrap();
        assert!(dups >= 700, "{whole}");
        assert!(whole["conflicting_duplicates"].as_u64().unwrap() >= 350, "{whole}");
        let (t1, t2) = (table::read_table(&o1, None).unwrap(), table::read_table(&o2, None).unwrap());
        assert_eq!(t1, t2);
        assert_eq!(t1.num_rows() as u64, 2700 - dups);
        let groups = |p: &Path| {
            parquet::file::reader::SerializedFileReader::new(std::fs::File::open(p).unwrap())
                .unwrap()
                .metadata()
                .num_row_groups()
        };
        use parquet::file::reader::FileReader;
        assert_eq!((groups(&o1), groups(&o2)), (t1.num_rows().div_ceil(64), 1));
        assert_eq!(table::read_kv(&o1).unwrap(), table::read_kv(&o2).unwrap());
    }

    #[test]
    fn pair_ids_are_stable_under_row_shuffling_and_ab_order() {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(tldr()).unwrap();
        let lines: Vec<&str> = text.lines().take(400).collect();
        // unlabelled copies with a/b swapped on odd rows, then the rows reversed and interleaved
        let unl = |swap: bool, l: &str| {
            let v: Value = serde_json::from_str(l).unwrap();
            let (a, b) = if swap { (&v["rejected"], &v["chosen"]) } else { (&v["chosen"], &v["rejected"]) };
            json!({"prompt": v["prompt"], "response_a": a, "response_b": b}).to_string()
        };
        let mut shuffled: Vec<String> = lines.iter().enumerate().map(|(i, l)| unl(i % 2 == 1, l)).collect();
        shuffled.reverse();
        shuffled.rotate_left(123);
        let straight: Vec<String> = lines.iter().map(|l| unl(false, l)).collect();
        let f1 = write(dir.path(), "a.jsonl", &straight.join("\n"));
        let f2 = write(dir.path(), "b.jsonl", &shuffled.join("\n"));
        let f3 = write(dir.path(), "c.jsonl", &lines.iter().rev().copied().collect::<Vec<_>>().join("\n"));
        let f4 = write(dir.path(), "d.jsonl", &lines.join("\n"));
        let ids = |f: &Path, sub: &str, fmt: &str| {
            let (_, out) = import(&dir.path().join(sub), f, json!({"format": fmt})).unwrap();
            let t = table::read_table(&out, None).unwrap();
            let mut pairs: Vec<(String, Option<String>)> = strings(&t, "pair_id")
                .into_iter()
                .zip(labels(&t))
                .zip(strings(&t, "response_a").into_iter().zip(strings(&t, "response_b")))
                .map(|((id, l), (a, b))| (id, l.map(|l| if l == 0 { a } else { b })))
                .collect();
            pairs.sort();
            pairs
        };
        let (i1, i2) = (ids(&f1, "1", "unlabeled"), ids(&f2, "2", "unlabelled"));
        assert_eq!(i1, i2);
        // labelled: the same ids, and the same preferred response whatever the row order
        let (i3, i4) = (ids(&f3, "3", "trl"), ids(&f4, "4", "auto"));
        assert_eq!(i3, i4);
        let strip = |v: &Vec<(String, Option<String>)>| v.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
        assert_eq!(strip(&i1), strip(&i3));
    }

    #[test]
    fn imports_llama_factory_sharegpt() {
        let dir = tempfile::tempdir().unwrap();
        let f = shared_data().join("preference-formats/llama-factory-dpo_en_demo.json");
        let (s, out) = import(dir.path(), &f, json!({})).unwrap();
        assert_eq!(s["format"], "sharegpt");
        assert_eq!(s["file_kind"], "json");
        assert_eq!(s["records"], 300);
        let t = table::read_table(&out, None).unwrap();
        let prompts = strings(&t, "prompt");
        assert!(prompts.iter().all(|p| p.starts_with("\n\n") && p.ends_with("\n\nAssistant:")));
        assert!(
            prompts[0].starts_with("\n\nHuman: Hi! I'd like to create a new language game"),
            "{:?}",
            &prompts[0][..60]
        );
        assert!(prompts.iter().any(|p| p.contains("\n\nSystem: ")), "system turns rendered");
        let a = strings(&t, "response_a");
        assert!(a.iter().all(|r| r.starts_with(' ')));
        assert!(labels(&t).iter().all(|l| l.is_some()));
    }

    #[test]
    fn imports_hh_strings_and_messages() {
        let dir = tempfile::tempdir().unwrap();
        let recs = [
            json!({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a fruit\n\nAssistant: An apple.",
                   "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a fruit\n\nAssistant: No."}),
            json!({"chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
                   "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}]}),
        ];
        let f = write(dir.path(), "hh.jsonl", &recs.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("\n"));
        let (s, out) = import(&dir.path().join("o"), &f, json!({})).unwrap();
        assert_eq!(s["format"], "hh");
        let t = table::read_table(&out, None).unwrap();
        let p = strings(&t, "prompt");
        assert_eq!(p[0], "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a fruit\n\nAssistant:");
        assert_eq!(p[1], "\n\nHuman: 2+2?\n\nAssistant:");
        let (a, b, l) = (strings(&t, "response_a"), strings(&t, "response_b"), labels(&t));
        let pref = |i: usize| if l[i] == Some(0) { a[i].clone() } else { b[i].clone() };
        assert_eq!(pref(0), " An apple.");
        assert_eq!(pref(1), " 4");
        let words = t.column_by_name("words_a").unwrap().as_any().downcast_ref::<UInt32Array>().unwrap();
        assert_eq!(words.value(0), if l[0] == Some(0) { 2 } else { 1 });

        // prompts that differ, and a dialogue without an assistant turn
        let bad = write(
            dir.path(),
            "bad.jsonl",
            &json!({"chosen": "\n\nHuman: A\n\nAssistant: x", "rejected": "\n\nHuman: B\n\nAssistant: y"}).to_string(),
        );
        let e = import(&dir.path().join("b"), &bad, json!({})).unwrap_err();
        assert!(
            e.starts_with("rejected:")
                && e.contains("line 1")
                && e.contains("bad.jsonl")
                && e.contains("differ from character 9"),
            "{e}"
        );
        let bad = write(
            dir.path(),
            "bad2.jsonl",
            &json!({"chosen": "just text", "rejected": "\n\nAssistant: y"}).to_string(),
        );
        let e = import(&dir.path().join("c"), &bad, json!({"format": "hh"})).unwrap_err();
        assert!(e.starts_with("chosen:") && e.contains("line 1") && e.contains("Assistant"), "{e}");
    }

    #[test]
    fn imports_unlabelled_and_trl_messages_and_dedups() {
        let dir = tempfile::tempdir().unwrap();
        let msgs = |c: &str| json!([{"role": "assistant", "content": c}]);
        let recs = [
            json!({"prompt": "P1", "response_a": "first", "response_b": "second answer"}),
            json!({"prompt": "P2", "response_a": "x", "response_b": "y", "extra": 5}),
            json!({"prompt": "P1", "response_a": "second answer", "response_b": "first"}),
        ];
        let f = write(dir.path(), "u.jsonl", &format!("{}\n\n{}\n{}\n", recs[0], recs[1], recs[2]));
        let (s, out) = import(&dir.path().join("o"), &f, json!({})).unwrap();
        assert_eq!(
            (s["format"].as_str(), s["pairs"].as_u64(), s["duplicates"].as_u64()),
            (Some("unlabeled"), Some(2), Some(1))
        );
        let t = table::read_table(&out, None).unwrap();
        assert_eq!(labels(&t), vec![None, None]);
        assert_eq!(strings(&t, "response_a"), vec!["first", "x"], "unlabelled pairs keep their order");
        let src = t.column_by_name("source_row").unwrap().as_any().downcast_ref::<UInt32Array>().unwrap();
        assert_eq!(src.values().to_vec(), vec![0, 1], "records, not lines");

        let trl = [
            json!({"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}],
                   "chosen": msgs("Paris."), "rejected": msgs("Lyon, I think.")}),
            json!({"prompt": "Q", "chosen": "yes", "rejected": "no"}),
            json!({"prompt": "Q", "chosen": "no", "rejected": "yes"}),
            json!({"prompt": "Q", "chosen": "yes", "rejected": "no"}),
        ];
        let f = write(dir.path(), "t.json", &serde_json::to_string_pretty(&trl).unwrap());
        let (s, out) = import(&dir.path().join("t"), &f, json!({})).unwrap();
        assert_eq!(
            (s["pairs"].as_u64(), s["duplicates"].as_u64(), s["conflicting_duplicates"].as_u64()),
            (Some(2), Some(2), Some(1))
        );
        let t = table::read_table(&out, None).unwrap();
        assert_eq!(strings(&t, "prompt")[0], "\n\nSystem: Be brief.\n\nHuman: Capital of France?\n\nAssistant:");
        let (a, b) = (strings(&t, "response_a"), strings(&t, "response_b"));
        let mut r = vec![a[0].clone(), b[0].clone()];
        r.sort();
        assert_eq!(r, vec![" Lyon, I think.", " Paris."]);

        let (s, _) = import(&dir.path().join("l"), &f, json!({"limit": 2})).unwrap();
        assert_eq!(s["records"], 2);
        // skip + limit select a row range; source_row stays the record's index in the file.
        let (s, out) = import(&dir.path().join("r"), &f, json!({"skip": 1, "limit": 1})).unwrap();
        assert_eq!(s["records"], 1);
        let t = table::read_table(&out, None).unwrap();
        let rows = t
            .column_by_name("source_row")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::UInt32Array>()
            .unwrap()
            .values()
            .to_vec();
        assert_eq!(rows, vec![1]);
    }

    #[test]
    fn imports_parquet_like_jsonl() {
        use arrow::array::{ArrayRef, RecordBatch};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(tldr()).unwrap();
        let recs: Vec<Value> = text.lines().take(50).map(|l| serde_json::from_str(l).unwrap()).collect();
        let col = |k: &str| -> ArrayRef {
            Arc::new(StringArray::from(recs.iter().map(|r| r[k].as_str().unwrap().to_string()).collect::<Vec<_>>()))
        };
        let batch = RecordBatch::try_from_iter([
            ("prompt", col("prompt")),
            ("chosen", col("chosen")),
            ("rejected", col("rejected")),
        ])
        .unwrap();
        let pq = dir.path().join("in.parquet");
        table::write_table(&pq, &batch, &[]).unwrap();
        let jl = write(dir.path(), "in.jsonl", &text.lines().take(50).collect::<Vec<_>>().join("\n"));
        let (s1, o1) = import(&dir.path().join("1"), &pq, json!({})).unwrap();
        let (_, o2) = import(&dir.path().join("2"), &jl, json!({})).unwrap();
        assert_eq!(s1["file_kind"], "parquet");
        assert_eq!(
            table::read_table(&o1, None).unwrap(),
            table::read_table(&o2, None).unwrap(),
            "same data, same table"
        );

        // a missing column in Parquet names the row and the field
        let batch = RecordBatch::try_from_iter([("prompt", col("prompt")), ("chosen", col("chosen"))]).unwrap();
        let pq = dir.path().join("bad.parquet");
        table::write_table(&pq, &batch, &[]).unwrap();
        let e = import(&dir.path().join("3"), &pq, json!({"format": "trl"})).unwrap_err();
        assert!(e.starts_with("rejected:") && e.contains("bad.parquet row 0") && e.contains("missing"), "{e}");
    }

    /// A record that gives a key twice (serde_json kept the last value silently) is refused naming the file, the
    /// place and the key — at the top of the record or inside it, in JSONL, a JSON array, or as a Parquet schema
    /// with a column twice — and `on_invalid = "skip"` leaves it out like any invalid record.
    #[test]
    fn a_key_given_twice_is_refused_naming_it() {
        use arrow::array::{ArrayRef, RecordBatch};
        let dir = tempfile::tempdir().unwrap();
        let good = r#"{"prompt": "p", "chosen": "c", "rejected": "r"}"#;
        let cases = [
            (
                "top.jsonl",
                format!("{good}\n\n{}", r#"{"prompt": "a", "prompt": "b", "chosen": "c", "rejected": "r"}"#),
                ("prompt", "top.jsonl line 3: `prompt` is given twice"),
            ),
            (
                "nested.jsonl",
                format!(
                    "{good}\n{}",
                    r#"{"prompt": [{"role": "user", "content": "x"}], "chosen": [{"role": "assistant", "content": "a", "content": "b"}], "rejected": "r"}"#
                ),
                ("chosen[0].content", "nested.jsonl line 2: `chosen[0].content` is given twice"),
            ),
            (
                "array.json",
                format!("[{good}, {good}, {}]", r#"{"prompt": "p", "chosen": "c", "rejected": "r", "chosen": "d"}"#),
                ("chosen", "array.json index 2: `chosen` is given twice"),
            ),
        ];
        for (name, text, (field, want)) in cases {
            let f = write(dir.path(), name, &text);
            let e = import(&dir.path().join(format!("o-{name}")), &f, json!({})).unwrap_err();
            assert!(e.starts_with(&format!("{field}: ")), "{name}: {e}");
            assert!(e.contains(want) && e.contains("give each key once"), "{name}: {e}");
            // skipped, it is counted under its field and named among the first
            let (s, _) = import(&dir.path().join(format!("s-{name}")), &f, json!({"on_invalid": "skip"})).unwrap();
            assert_eq!(s["invalid_skipped"], 1, "{name}: {s}");
            assert!(s["invalid_first"][0].as_str().unwrap().contains(want), "{name}: {s}");
            assert_eq!(s["invalid_by_field"][field], 1, "{name}: {s}");
        }
        // a repeat after the first one, and keys that only look alike, are not mistaken for it
        let f = write(
            dir.path(),
            "two.jsonl",
            r#"{"prompt": "p", "chosen": {"a": 1, "b": {"a": 2}}, "chosen": "c", "rejected": "r", "rejected": "s"}"#,
        );
        let e = import(&dir.path().join("two"), &f, json!({"format": "trl"})).unwrap_err();
        assert!(e.starts_with("chosen: ") && e.contains("two.jsonl line 1: `chosen` is given twice"), "{e}");
        let f = write(dir.path(), "alike.jsonl", r#"{"prompt": "p", "Prompt": "q", "chosen": "c", "rejected": "r"}"#);
        assert!(import(&dir.path().join("alike"), &f, json!({"format": "trl"})).is_ok());

        let col = |v: &str| -> ArrayRef { Arc::new(StringArray::from(vec![v.to_string()])) };
        let batch = RecordBatch::try_new(
            Arc::new(arrow::datatypes::Schema::new(
                ["prompt", "chosen", "rejected", "chosen"]
                    .map(|n| arrow::datatypes::Field::new(n, arrow::datatypes::DataType::Utf8, false))
                    .to_vec(),
            )),
            vec![col("p"), col("a"), col("r"), col("b")],
        )
        .unwrap();
        let pq = dir.path().join("twice.parquet");
        table::write_table(&pq, &batch, &[]).unwrap();
        let e = import(&dir.path().join("pq"), &pq, json!({})).unwrap_err();
        assert!(e.contains("twice.parquet: column `chosen` appears twice in the file's schema"), "{e}");
    }

    /// The strict parse reads every value as serde_json reads it: numbers of each kind, escapes, nesting, key order.
    #[test]
    fn the_strict_parse_reads_what_serde_json_reads() {
        let texts = [
            r#"{"a": 1, "b": -2, "c": 18446744073709551615, "d": -9223372036854775808, "e": 0.1, "f": 1e300}"#,
            r#"{"z": "\u00e9\ud83d\ude00\n", "y": [1, [2, {"x": null, "w": true}], false], "x": {}, "v": []}"#,
            r#"{"n": 2.5e-324, "m": 123456789012345678901234567890, "o": -0.0, "p": 1.7976931348623157e308}"#,
            "  [1, 2, 3] ",
            r#""just a string""#,
        ];
        for t in texts {
            let want: Value = serde_json::from_str(t).unwrap();
            match parse_strict(t) {
                Parsed::Value(v) => {
                    assert_eq!(v, want, "{t}");
                    assert_eq!(v.to_string(), want.to_string(), "{t}: same order, same numbers");
                }
                _ => panic!("{t}: not read"),
            }
        }
        for bad in ["{", r#"{"a": 1} x"#, r#"{"a": 1,}"#, "", "[1,]"] {
            let want = serde_json::from_str::<Value>(bad).unwrap_err().to_string();
            match parse_strict(bad) {
                Parsed::Malformed(e) => assert_eq!(e.to_string(), want, "{bad}"),
                _ => panic!("{bad}: read"),
            }
        }
        let Parsed::Repeated(r) = parse_strict(r#"{"a": [0, {"b": {"c": 1, "c": 2}}], "a": 3}"#) else { panic!() };
        assert_eq!(r.field(), "a[1].b.c", "the first repeat, with its whole path");
    }

    #[test]
    fn counts_tokens_with_a_tokenizer() {
        let dir = tempfile::tempdir().unwrap();
        let tok = json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
            "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "a": 1}, "unk_token": "[UNK]"}});
        let tp = write(dir.path(), "tokenizer.json", &tok.to_string());
        let f = write(
            dir.path(),
            "u.jsonl",
            &json!({"prompt": "p", "response_a": "a b, c", "response_b": "a"}).to_string(),
        );
        let (s, out) = import(&dir.path().join("o"), &f, json!({"tokenizer": tp.to_string_lossy()})).unwrap();
        assert_eq!(s["tokenizer"], true);
        let t = table::read_table(&out, None).unwrap();
        let ta = t.column_by_name("tokens_a").unwrap().as_any().downcast_ref::<UInt32Array>().unwrap();
        let tb = t.column_by_name("tokens_b").unwrap().as_any().downcast_ref::<UInt32Array>().unwrap();
        assert_eq!((ta.value(0), tb.value(0)), (4, 1), "`a`, `b`, `,`, `c`");
        let e = import(&dir.path().join("x"), &f, json!({"tokenizer": f.to_string_lossy()})).unwrap_err();
        assert!(e.starts_with("tokenizer:"), "{e}");
    }

    #[test]
    fn bad_inputs_name_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let good = json!({"prompt": "p", "chosen": "c", "rejected": "r"}).to_string();
        let cases: Vec<(&str, String, Value, &str, Vec<&str>)> = vec![
            (
                "malformed.jsonl",
                format!("{good}\n{good}\n{{\"prompt\": \"p\", \"chosen\": \n"),
                json!({}),
                "path",
                vec!["line 3", "malformed JSON"],
            ),
            (
                "missing.jsonl",
                format!("{good}\n{}", json!({"prompt": "p", "chosen": "c"})),
                json!({}),
                "rejected",
                vec!["line 2", "`rejected` is missing"],
            ),
            (
                "null.jsonl",
                format!("{}", json!({"prompt": null, "chosen": "c", "rejected": "r"})),
                json!({}),
                "prompt",
                vec!["line 1", "is null"],
            ),
            (
                "empty_str.jsonl",
                format!("{good}\n\n{}", json!({"prompt": "p", "chosen": "", "rejected": "r"})),
                json!({}),
                "chosen",
                vec!["line 3", "empty string"],
            ),
            (
                "wrong_type.jsonl",
                format!("{}", json!({"prompt": "p", "chosen": 3, "rejected": "r"})),
                json!({}),
                "chosen",
                vec!["line 1", "is a number"],
            ),
            (
                "not_object.jsonl",
                format!("{good}\n[1, 2]"),
                json!({}),
                "path",
                vec!["line 2", "expected a JSON object"],
            ),
            ("empty.jsonl", "\n  \n".to_string(), json!({}), "path", vec!["empty dataset"]),
            (
                "forced_format.jsonl",
                good.to_string(),
                json!({"format": "unlabeled"}),
                "response_a",
                vec!["line 1", "missing"],
            ),
            (
                "unknown_keys.jsonl",
                format!("{}", json!({"question": "q", "answer": "a"})),
                json!({}),
                "format",
                vec!["line 1", "cannot detect", "question, answer"],
            ),
            (
                "array.json",
                format!("[{good}, {}]", json!({"prompt": "p", "chosen": "c", "rejected": ["x"]})),
                json!({}),
                "rejected[0]",
                vec!["index 1", "expected a message object"],
            ),
            ("array_empty.json", "[]".to_string(), json!({}), "path", vec!["empty dataset"]),
            (
                "msg.jsonl",
                format!("{}", json!({"prompt": [{"role": "user"}], "chosen": "c", "rejected": "r"})),
                json!({}),
                "prompt[0].content",
                vec!["line 1", "missing"],
            ),
            (
                "sharegpt.jsonl",
                format!(
                    "{}",
                    json!({"conversations": [{"from": "human", "value": "hi"}], "chosen": {"from": "gpt", "value": ""}, "rejected": {"from": "gpt", "value": "x"}})
                ),
                json!({}),
                "chosen.value",
                vec!["line 1", "empty"],
            ),
            ("garbage.txt", "hello".to_string(), json!({}), "path", vec!["not JSONL"]),
            ("fake.parquet", "hello".to_string(), json!({}), "path", vec!["not a Parquet file"]),
        ];
        for (name, text, extra, field, needles) in cases {
            let f = write(dir.path(), name, &text);
            let e = import(&dir.path().join(format!("o-{name}")), &f, extra).unwrap_err();
            assert!(e.starts_with(&format!("{field}: ")), "{name}: field {field}: {e}");
            for n in needles {
                assert!(e.contains(n), "{name}: expected `{n}` in: {e}");
            }
            if field != "format" && !name.contains("parquet") {
                assert!(e.contains(name), "{name}: the file is named: {e}");
            }
        }
        // unknown format and unknown params are parameter errors
        let f = write(dir.path(), "ok.jsonl", &good);
        let e = import(&dir.path().join("p1"), &f, json!({"format": "csv"})).unwrap_err();
        assert!(e.starts_with("format:") && e.contains("unknown variant"), "{e}");
        let e = import(&dir.path().join("p2"), &f, json!({"lmit": 3})).unwrap_err();
        assert!(e.contains("unknown field `lmit`"), "{e}");
    }

    /// HH records as in Anthropic's HH-RLHF: the third has an empty last assistant turn (as line 87 of the
    /// harmless-base test split does), the fifth is not JSON.
    fn hh_with_invalid() -> String {
        let rec = |c: &str, r: &str| {
            json!({"chosen": format!("\n\nHuman: q?\n\nAssistant:{c}"), "rejected": format!("\n\nHuman: q?\n\nAssistant:{r}")}).to_string()
        };
        [rec(" yes", " no"), rec(" a", " b"), rec("", " b"), rec(" c", " d"), "{not json".to_string(), rec(" e", " f")]
            .join("\n")
    }

    #[test]
    fn on_invalid_skip_leaves_out_invalid_records_and_says_which() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "hh.jsonl", &hh_with_invalid());
        // by default the first invalid record stops the import, naming its line and field
        let e = import(&dir.path().join("e"), &f, json!({})).unwrap_err();
        assert!(e.contains("hh.jsonl line 3") && e.contains("chosen"), "{e}");
        let (s, out) = import(&dir.path().join("s"), &f, json!({"on_invalid": "skip"})).unwrap();
        assert_eq!((s["records"].as_u64(), s["invalid_skipped"].as_u64()), (Some(4), Some(2)), "{s}");
        let first: Vec<String> = serde_json::from_value(s["invalid_first"].clone()).unwrap();
        assert!(
            first[0].contains("line 3") && first[1].contains("line 5") && first[1].contains("malformed JSON"),
            "{first:?}"
        );
        assert_eq!(s["invalid_by_field"]["path"], 1, "{s}");
        let t = table::read_table(&out, None).unwrap();
        assert_eq!(t.num_rows(), 4);
        // source rows keep pointing at the file's records (0-based), the skipped ones counted
        let src = t.column_by_name("source_row").unwrap().as_any().downcast_ref::<UInt32Array>().unwrap();
        let mut rows: Vec<u32> = src.values().to_vec();
        rows.sort();
        assert_eq!(rows, vec![0, 1, 3, 5]);
        // a file of invalid records only: the error says so
        let bad = write(dir.path(), "bad.jsonl", "{not json\n[1]\n");
        let e = import(&dir.path().join("b"), &bad, json!({"on_invalid": "skip"})).unwrap_err();
        assert!(e.contains("all 2 records were invalid"), "{e}");
        let e = import(&dir.path().join("x"), &f, json!({"on_invalid": "ignore"})).unwrap_err();
        assert!(e.starts_with("on_invalid:"), "{e}");
    }

    #[test]
    fn rmdistills_own_pairs_table_imports_with_its_labels() {
        let dir = tempfile::tempdir().unwrap();
        let (first, out) = import(&dir.path().join("1"), &tldr(), json!({"limit": 300})).unwrap();
        let (s, again) = import(&dir.path().join("2"), &out, json!({})).unwrap();
        assert_eq!(s["format"], "unlabeled");
        assert_eq!((s["labelled"].as_u64(), s["unlabelled"].as_u64()), (first["pairs"].as_u64(), Some(0)), "{s}");
        let (a, b) = (table::read_table(&out, None).unwrap(), table::read_table(&again, None).unwrap());
        let preferred = |t: &arrow::array::RecordBatch| {
            let (ra, rb) = (strings(t, "response_a"), strings(t, "response_b"));
            let mut v: Vec<(String, String)> = strings(t, "pair_id")
                .into_iter()
                .zip(labels(t))
                .enumerate()
                .map(|(i, (id, l))| (id, if l == Some(0) { ra[i].clone() } else { rb[i].clone() }))
                .collect();
            v.sort();
            v
        };
        assert_eq!(preferred(&a), preferred(&b), "same pairs, same preferred response");
        // a label that is neither 0, 1 nor null is an error naming it
        let f = write(
            dir.path(),
            "l.jsonl",
            &json!({"prompt": "p", "response_a": "a", "response_b": "b", "label": 2}).to_string(),
        );
        let e = import(&dir.path().join("3"), &f, json!({})).unwrap_err();
        assert!(e.starts_with("label:") && e.contains("line 1") && e.contains("expected 0"), "{e}");
    }

    #[test]
    fn binary_string_columns_import_as_text() {
        use arrow::array::{ArrayRef, BinaryArray};
        use arrow::datatypes::{DataType, Field, Schema};
        let dir = tempfile::tempdir().unwrap();
        let col =
            |v: &[&str]| Arc::new(BinaryArray::from(v.iter().map(|s| s.as_bytes()).collect::<Vec<_>>())) as ArrayRef;
        let schema =
            Schema::new(["prompt", "chosen", "rejected"].map(|n| Field::new(n, DataType::Binary, false)).to_vec());
        let batch = arrow::array::RecordBatch::try_new(
            Arc::new(schema),
            vec![col(&["Say hi", "Bye?"]), col(&["héllo", "bye"]), col(&["no", "later"])],
        )
        .unwrap();
        let f = dir.path().join("bin.parquet");
        let mut w =
            parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&f).unwrap(), batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let (s, out) = import(&dir.path().join("o"), &f, json!({})).unwrap();
        assert_eq!(s["format"], "trl");
        let t = table::read_table(&out, None).unwrap();
        let all: Vec<String> = [strings(&t, "prompt"), strings(&t, "response_a"), strings(&t, "response_b")].concat();
        assert!(all.contains(&"héllo".to_string()) && all.contains(&"Say hi".to_string()), "{all:?}");
        // bytes that are not UTF-8 are an error naming the column
        let bad = arrow::array::RecordBatch::try_new(
            batch.schema(),
            vec![col(&["a", "b"]), Arc::new(BinaryArray::from(vec![&b"\xff\xfe"[..], b"x"])), col(&["c", "d"])],
        )
        .unwrap();
        let f = dir.path().join("bad.parquet");
        let mut w =
            parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&f).unwrap(), bad.schema(), None).unwrap();
        w.write(&bad).unwrap();
        w.close().unwrap();
        let e = import(&dir.path().join("b"), &f, json!({})).unwrap_err();
        assert!(e.contains("column `chosen`") && e.contains("not UTF-8"), "{e}");
    }

    #[test]
    fn skip_past_the_end_and_pretty_printed_json_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "two.jsonl", &hh_with_invalid().lines().take(2).collect::<Vec<_>>().join("\n"));
        let e = import(&dir.path().join("1"), &f, json!({"skip": 5})).unwrap_err();
        assert!(
            e.starts_with("skip:") && e.contains("skip = 5 passes the end of the file, which has 2 records"),
            "{e}"
        );
        let pretty = serde_json::to_string_pretty(&json!({"prompt": "p", "chosen": "a", "rejected": "b"})).unwrap();
        let f = write(dir.path(), "pretty.json", &pretty);
        let e = import(&dir.path().join("2"), &f, json!({})).unwrap_err();
        assert!(e.contains("spans several lines") && e.contains("JSON array of objects"), "{e}");
    }

    /// Every place of a JSONL text as `jsonl_batches` hands it on: (location, record or error), and how it ended.
    fn jsonl_places(text: &[u8], limit: u64, block: usize) -> (Vec<(String, String)>, Result<(), String>) {
        let mut out = Vec::new();
        let end = jsonl_batches(text, "f.jsonl", limit, block, |items, _| {
            for it in items {
                out.push((it.loc.to_string(), it.rec.map_or_else(|e| e.to_string(), |r| Value::Object(r).to_string())));
            }
            Ok(())
        });
        (out, end.map_err(|e| e.to_string()))
    }

    /// Responses that hold the prompt again are kept, counted and warned of (a red-team finding: imported silently,
    /// the prompt's words counted in the responses' lengths, while the same data as messages is refused).
    #[test]
    fn responses_that_repeat_the_prompt_are_warned_of() {
        let dir = tempfile::tempdir().unwrap();
        let p = "\n\nHuman: What is 2+2?\n\nAssistant:";
        let recs = [
            json!({"prompt": p, "chosen": format!("{p} 4"), "rejected": format!("{p} 5")}),
            json!({"prompt": p, "chosen": " 4", "rejected": " 5"}),
            // a short prompt that a reply may well begin with is not counted
            json!({"prompt": "Hi", "chosen": "Hi there!", "rejected": "Hello."}),
        ];
        let f = write(dir.path(), "d.jsonl", &recs.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("\n"));
        let (s, logs) = import_logged(&dir.path().join("o"), &f, json!({}));
        let s = s.unwrap();
        assert_eq!((s["pairs"].as_u64(), s["responses_repeating_prompt"].as_u64()), (Some(3), Some(1)), "{s}");
        assert!(
            logs.iter().any(|l| l.starts_with("warning: ")
                && l.contains("1 of the 3 pairs have a response that begins with the whole prompt")),
            "{logs:?}"
        );
    }

    /// A JSON array that is not UTF-8 is named by line and byte, as a JSONL line is (a red-team finding: it said only
    /// "stream did not contain valid UTF-8").
    #[test]
    fn a_json_array_that_is_not_utf8_says_where() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("lat1.json");
        std::fs::write(
            &f,
            b"[\n{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"},\n{\"prompt\": \"caf\xe9\"}]",
        )
        .unwrap();
        let e = import(&dir.path().join("o"), &f, json!({})).unwrap_err();
        assert!(e.contains("lat1.json line 3: byte 0xe9 (byte 16 of the line, 67 of the file) is not UTF-8"), "{e}");
    }

    #[test]
    fn jsonl_lines_cut_across_blocks_read_as_whole_lines() {
        let long = format!("{{\"prompt\": \"{}\", \"x\": 1}}", "w ".repeat(40));
        let text = format!(
            "\u{feff}{{\"a\": 1}}\r\n\n   \n{long}\n{{\"b\": [1, 2]}}\nnot json\n[1]\n\u{a0}\n\x0b\n{{\"c\": \"é\"}}\r\n{{\"d\": 4}}"
        );
        let whole = jsonl_places(text.as_bytes(), u64::MAX, JSONL_BLOCK);
        let locs: Vec<&str> = whole.0.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(locs, ["line 1", "line 4", "line 5", "line 6", "line 7", "line 10", "line 11"], "{whole:?}");
        assert_eq!(whole.0[0].1, r#"{"a":1}"#);
        assert!(whole.0[3].1.contains("line 6: malformed JSON"), "{whole:?}");
        assert!(whole.0[4].1.contains("line 7: expected a JSON object, found a list"), "{whole:?}");
        assert_eq!(whole.0[6].1, r#"{"d":4}"#, "the last line needs no newline");
        assert!(whole.1.is_ok());
        for block in [1, 2, 3, 7, 16, 61, 1000] {
            assert_eq!(jsonl_places(text.as_bytes(), u64::MAX, block), whole, "block of {block} bytes");
        }
        // the limit counts records (and invalid lines), not blank lines
        let first3 = jsonl_places(text.as_bytes(), 3, 5);
        assert_eq!(first3.0, whole.0[..3]);
        // a line that is not UTF-8 is that line's error, like one that is not JSON; the lines after it are read
        let mut bad = b"{\"a\": 1}\n{\"b\": 2}\n{\"c\": \"\xff\"}\n{\"d\": 3}\n".to_vec();
        for block in [4, JSONL_BLOCK] {
            let (places, end) = jsonl_places(&bad, u64::MAX, block);
            assert!(end.is_ok(), "block {block}: {end:?}");
            assert_eq!(places.len(), 4, "block {block}: {places:?}");
            assert_eq!(places[3].1, r#"{"d":3}"#);
            assert!(
                places[2].1.starts_with("path: f.jsonl line 3: byte 0xff (byte 8 of the line) is not UTF-8"),
                "{places:?}"
            );
        }
        bad.truncate(0);
        assert_eq!(jsonl_places(&bad, u64::MAX, 4), (vec![], Ok(())));
    }

    /// [`import`] that also returns the stage's log lines and warnings (in that order).
    fn import_logged(dir: &Path, file: &Path, extra: Value) -> (Result<Value, String>, Vec<String>) {
        let mut params = json!({"path": file.to_string_lossy()});
        for (k, v) in extra.as_object().unwrap() {
            params[k] = v.clone();
        }
        let tok = params.get("tokenizer").and_then(|t| t.as_str()).map(PathBuf::from);
        let mut ctx = LocalCtx::new(dir, params).external("path", file);
        if let Some(t) = tok {
            ctx = ctx.external("tokenizer", t);
        }
        std::fs::create_dir_all(dir).unwrap();
        let r = import_in_groups(&ctx, GROUP_ROWS, GROUP_BYTES).map_err(|e| e.to_string());
        let mut logs = ctx.logs.lock().unwrap().clone();
        logs.extend(ctx.warnings.lock().unwrap().iter().map(|w| format!("warning: {w}")));
        (r, logs)
    }

    /// Imports each `(name, text)` expecting an error on `field` that contains every needle; then, with
    /// `on_invalid = "skip"` and a valid record of the same format after it, expects the record skipped and counted
    /// under `field`. The valid record: a ShareGPT one when the text has `conversations`, an unlabelled one when it
    /// has `response_a` but no `chosen`, an HH one when it has no `prompt`, else a TRL one.
    fn refused_and_skipped(dir: &Path, cases: &[(&str, String, &str, &[&str])]) {
        for (name, text, field, needles) in cases {
            let good = if text.contains("\"conversations\"") {
                json!({"conversations": [{"from": "human", "value": "q"}], "chosen": "c", "rejected": "r"})
            } else if text.contains("\"response_a\"") && !text.contains("\"chosen\"") {
                json!({"prompt": "p", "response_a": "a", "response_b": "b"})
            } else if !text.contains("\"prompt\"") {
                json!({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"})
            } else {
                json!({"prompt": "p", "chosen": "c", "rejected": "r"})
            };
            let f = write(dir, name, text);
            let e = import(&dir.join(format!("e-{name}")), &f, json!({})).unwrap_err();
            assert!(e.starts_with(&format!("{field}: ")), "{name}: field {field}: {e}");
            for n in *needles {
                assert!(e.contains(n), "{name}: expected `{n}` in: {e}");
            }
            let f = write(dir, &format!("s-{name}"), &format!("{text}\n{good}\n"));
            let (s, _) = import(&dir.join(format!("o-s-{name}")), &f, json!({"on_invalid": "skip"}))
                .unwrap_or_else(|e| panic!("{name} skipped: {e}"));
            assert_eq!((s["invalid_skipped"].as_u64(), s["records"].as_u64()), (Some(1), Some(1)), "{name}: {s}");
            assert_eq!(s["invalid_by_field"][field], 1, "{name}: {s}");
        }
    }

    /// A ShareGPT conversation follows LLaMA-Factory's turn rule, and a TRL prompt that ends with the assistant's
    /// turn is continued (a red-team finding: each was flattened into a prompt silently — two assistant turns in a
    /// row, a conversation opened by the assistant, two human turns, two different system texts — where
    /// LLaMA-Factory skips the record or drops the `system` column, and TRL continues the prefilled turn).
    #[test]
    fn sharegpt_turns_alternate_as_llama_factory_reads_them_and_prefills_continue() {
        let dir = tempfile::tempdir().unwrap();
        let (h, g, sy) = (
            |v: &str| json!({"from": "human", "value": v}),
            |v: &str| json!({"from": "gpt", "value": v}),
            |v: &str| json!({"from": "system", "value": v}),
        );
        let m = |role: &str, c: &str| json!({"role": role, "content": c});
        let sg = |conv: Value| json!({"conversations": conv, "chosen": g("c"), "rejected": g("r")}).to_string();
        let cases: Vec<(&str, String, &str, &[&str])> = vec![
            (
                "sg_ends_with_gpt.jsonl",
                sg(json!([h("Hi"), g("Hello!")])),
                "conversations[1].from",
                &["`conversations[1].from` is \"gpt\": the conversation ends with the assistant's turn"],
            ),
            (
                "sg_gpt_first.jsonl",
                sg(json!([g("I start"), h("ok")])),
                "conversations[0].from",
                &["`conversations[0].from` is \"gpt\" first; expected human", "as LLaMA-Factory reads them"],
            ),
            (
                "sg_two_humans.jsonl",
                sg(json!([h("a"), h("b")])),
                "conversations[1].from",
                &["`conversations[1].from` is \"human\" after a human turn; expected gpt"],
            ),
            (
                "sg_system_twice.jsonl",
                json!({"system": "Col sys", "conversations": [sy("Conv sys"), h("q")], "chosen": g("c"), "rejected": g("r")})
                    .to_string(),
                "system",
                &["`system` differs from the system turn at `conversations[0]`", "give one of the two"],
            ),
            (
                "sg_system_late.jsonl",
                sg(json!([h("q"), sy("late"), h("q2")])),
                "conversations[1].from",
                &["`conversations[1].from` is \"system\" after a human turn; expected gpt"],
            ),
        ];
        refused_and_skipped(dir.path(), &cases);
        // what LLaMA-Factory accepts still imports: a system turn first, tool turns, several exchanges
        let ok = [
            json!({"conversations": [sy("Be brief."), h("q"), g("a"), h("q2")], "chosen": g("c"), "rejected": g("r")}),
            json!({"conversations": [h("q"), {"from": "function_call", "value": "f()"}, {"from": "observation", "value": "1"}],
                   "chosen": g("c"), "rejected": g("r")}),
            json!({"system": "Be brief.", "conversations": [h("q")], "chosen": g("c"), "rejected": g("r")}),
            // the same system text twice is one system prompt (LLaMA-Factory reads the turn)
            json!({"system": "Be brief.", "conversations": [sy("Be brief."), h("q3")], "chosen": g("c"), "rejected": g("r")}),
        ];
        let f = write(dir.path(), "ok.jsonl", &ok.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("\n"));
        let (s, out) = import(&dir.path().join("ok"), &f, json!({})).unwrap();
        assert_eq!(s["pairs"], 4, "{s}");
        let p = strings(&table::read_table(&out, None).unwrap(), "prompt");
        assert!(
            p.contains(&"\n\nSystem: Be brief.\n\nHuman: q\n\nAssistant: a\n\nHuman: q2\n\nAssistant:".to_string()),
            "{p:?}"
        );
        assert!(p.contains(&"\n\nSystem: Be brief.\n\nHuman: q3\n\nAssistant:".to_string()), "{p:?}");
        // a TRL prompt that ends with the assistant's turn is a prefill the responses continue (TRL's
        // continue_final_message), given as the prompt or shared by the two conversations
        for (name, rec) in [
            (
                "trl_prefill.jsonl",
                json!({"prompt": [m("user", "q"), m("assistant", "Sure:")], "chosen": [m("assistant", "a")],
                       "rejected": [m("assistant", "b")]}),
            ),
            (
                "implicit_prefill.jsonl",
                json!({"chosen": [m("user", "q"), m("assistant", "Sure:"), m("assistant", "a")],
                       "rejected": [m("user", "q"), m("assistant", "Sure:"), m("assistant", "b")]}),
            ),
        ] {
            let f = write(dir.path(), name, &rec.to_string());
            let (_, out) = import(&dir.path().join(format!("o-{name}")), &f, json!({})).unwrap();
            let t = table::read_table(&out, None).unwrap();
            assert_eq!(strings(&t, "prompt"), ["\n\nHuman: q\n\nAssistant: Sure:"], "{name}");
            let mut r = [strings(&t, "response_a")[0].clone(), strings(&t, "response_b")[0].clone()];
            r.sort();
            assert_eq!(r, [" a", " b"], "{name}");
        }
    }

    /// A response given as messages is the assistant's reply: its first message must have an assistant role, in
    /// TRL and unlabelled records, ShareGPT `chosen`/`rejected` objects, and after the prompt that the two
    /// conversations of TRL's implicit-prompt form share. Otherwise the record is invalid, naming the role's field,
    /// its value and what was expected — a prompt repeated in the responses no longer ends up inside them.
    #[test]
    fn a_response_must_begin_with_the_assistants_turn() {
        let dir = tempfile::tempdir().unwrap();
        let m = |role: &str, c: &str| json!({"role": role, "content": c});
        let q = "What is the capital of France?";
        let cases: Vec<(&str, String, &str, &[&str])> = vec![
            (
                "repeated_prompt.jsonl",
                json!({"prompt": [m("user", q)], "chosen": [m("user", q), m("assistant", "Paris.")],
                       "rejected": [m("user", q), m("assistant", "Lyon, I think.")]})
                .to_string(),
                "chosen[0].role",
                &[
                    "line 1: `chosen[0].role` is \"user\"; expected an assistant role (assistant, gpt, model, bot or function_call)",
                    "the turns before it belong in `prompt`",
                ],
            ),
            (
                "wizard.jsonl",
                json!({"prompt": "q", "chosen": [m("assistant", "a")], "rejected": [m("wizard", "b")]}).to_string(),
                "rejected[0].role",
                &["`rejected[0].role` is \"wizard\"; expected an assistant role"],
            ),
            (
                "unlabelled.jsonl",
                json!({"prompt": "q", "response_a": [m("gpt", "a")], "response_b": [m("Human", "b")]}).to_string(),
                "response_b[0].role",
                &["`response_b[0].role` is \"Human\""],
            ),
            (
                "sharegpt.jsonl",
                json!({"conversations": [{"from": "human", "value": "q"}],
                       "chosen": {"from": "human", "value": "a human turn"}, "rejected": {"from": "gpt", "value": "no"}})
                .to_string(),
                "chosen.from",
                &["`chosen.from` is \"human\"; expected an assistant role", "belong in `conversations`"],
            ),
            (
                "implicit.jsonl",
                json!({"chosen": [m("user", "q"), m("assistant", "Sure."), m("user", "more"), m("assistant", "x")],
                       "rejected": [m("user", "q"), m("assistant", "Sure."), m("user", "less"), m("assistant", "y")]})
                .to_string(),
                "chosen[2].role",
                &["`chosen[2].role` is \"user\"", "after the 2 that `chosen` and `rejected` share (the prompt)"],
            ),
        ];
        refused_and_skipped(dir.path(), &cases);

        // every assistant role of the vocabularies, in any case; a reply of several messages; the implicit form
        let recs = [
            json!({"prompt": [m("user", "q1")], "chosen": [m("Assistant", "a b")], "rejected": [m("model", "c")]}),
            json!({"prompt": "q2", "chosen": [m("bot", "a"), m("user", "thanks"), m("assistant", "welcome")],
                   "rejected": [m("GPT", "c")]}),
            json!({"chosen": [m("user", "q3"), m("assistant", "yes")], "rejected": [m("user", "q3"), m("assistant", "no")]}),
            json!({"conversations": [{"from": "human", "value": "q4"}], "chosen": {"from": "function_call", "value": "f()"},
                   "rejected": {"from": "gpt", "value": "no"}}),
        ];
        for (i, r) in recs.iter().enumerate() {
            let f = write(dir.path(), &format!("ok{i}.jsonl"), &r.to_string());
            let (s, out) = import(&dir.path().join(format!("ok{i}")), &f, json!({})).unwrap();
            assert_eq!(s["pairs"], 1, "{r}: {s}");
            let t = table::read_table(&out, None).unwrap();
            let both = [strings(&t, "response_a"), strings(&t, "response_b")].concat();
            assert!(both.iter().all(|r| r.starts_with(' ') && !r.contains("q1") && !r.contains("q3")), "{both:?}");
        }
    }

    /// A record with both a preference and a pair of responses, or a message with the keys of both conventions,
    /// would have one of the two read and the other dropped silently: refused, naming both keys.
    #[test]
    fn a_record_or_message_that_gives_two_forms_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let cases: Vec<(&str, String, &str, &[&str])> = vec![
            (
                "both_pairs.jsonl",
                json!({"prompt": "p", "chosen": "c c", "rejected": "r", "response_a": "other a", "response_b": "b"})
                    .to_string(),
                "response_a",
                &["line 1: `response_a` is given beside `chosen`", "not both"],
            ),
            (
                "both_message_forms.jsonl",
                json!({"conversations": [{"from": "human", "value": "q1", "role": "user", "content": "q2"}],
                       "chosen": {"from": "gpt", "value": "long answer"}, "rejected": {"from": "gpt", "value": "no"}})
                .to_string(),
                "conversations[0]",
                &["`conversations[0]` has both `from` and `role`", "give one of the two"],
            ),
            (
                "content_and_value.jsonl",
                json!({"prompt": "p", "chosen": [{"role": "assistant", "content": "a", "value": "b"}], "rejected": "r"})
                    .to_string(),
                "chosen[0]",
                &["`chosen[0]` has both `value` and `role`"],
            ),
        ];
        refused_and_skipped(dir.path(), &cases);
        // forced to read the pair, the preference is the key named
        let f = write(
            dir.path(),
            "u.jsonl",
            &json!({"prompt": "p", "response_a": "a", "response_b": "b", "rejected": "r"}).to_string(),
        );
        let e = import(&dir.path().join("u"), &f, json!({"format": "unlabeled"})).unwrap_err();
        assert!(e.starts_with("rejected: ") && e.contains("`rejected` is given beside `response_a`"), "{e}");
        // a message may carry other keys beside one form's two
        let f = write(
            dir.path(),
            "extra.jsonl",
            &json!({"prompt": [{"role": "user", "content": "q", "name": "x"}], "chosen": [{"role": "assistant", "content": "a", "weight": 1}], "rejected": "r"}).to_string(),
        );
        assert!(import(&dir.path().join("extra"), &f, json!({})).is_ok());
    }

    /// With `on_invalid = "skip"`, a JSONL line that is not UTF-8 is skipped like a line that is not JSON.
    #[test]
    fn a_line_that_is_not_utf8_is_an_invalid_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = b"{\"prompt\":\"p\",\"chosen\":\"a b\",\"rejected\":\"c\"}\n{bad json\n".to_vec();
        text.extend_from_slice(b"{\"prompt\":\"p\xff\",\"chosen\":\"a\",\"rejected\":\"b\"}\n");
        text.extend_from_slice(b"{\"prompt\":\"q\",\"chosen\":\"d e\",\"rejected\":\"f\"}\n");
        let f = dir.path().join("d.jsonl");
        std::fs::write(&f, &text).unwrap();
        let e = import(&dir.path().join("e"), &f, json!({})).unwrap_err();
        assert!(e.starts_with("path: ") && e.contains("d.jsonl line 2: malformed JSON"), "{e}");
        let (s, _) = import(&dir.path().join("s"), &f, json!({"on_invalid": "skip"})).unwrap();
        assert_eq!((s["records"].as_u64(), s["invalid_skipped"].as_u64()), (Some(2), Some(2)), "{s}");
        assert_eq!(s["invalid_by_field"]["path"], 2, "{s}");
        let first = s["invalid_first"][1].as_str().unwrap();
        assert!(first.contains("d.jsonl line 3: byte 0xff (byte 13 of the line) is not UTF-8"), "{first}");
    }

    /// Duplicates that prefer the other response, and pairs whose two responses are the same text, are imported as
    /// before and said in the log with the metadata key that counts them.
    #[test]
    fn conflicting_duplicates_and_identical_responses_are_logged() {
        let dir = tempfile::tempdir().unwrap();
        let rec = |c: &str, r: &str| json!({"prompt": "p", "chosen": c, "rejected": r}).to_string();
        let text = [
            rec("short", "a much longer reply"),
            rec("a much longer reply", "short"),
            rec("a much longer reply", "short"),
            rec("short", "a much longer reply"),
            rec("same text", "same text"),
        ]
        .join("\n");
        let f = write(dir.path(), "d.jsonl", &text);
        let (s, logs) = import_logged(&dir.path().join("o"), &f, json!({}));
        let s = s.unwrap();
        assert_eq!(
            (s["pairs"].as_u64(), s["duplicates"].as_u64(), s["conflicting_duplicates"].as_u64()),
            (Some(2), Some(3), Some(2))
        );
        // the same in TRL's implicit-prompt form and as HH strings: the identical pair is counted, not refused
        let msgs = |reply: &str| json!([{"role": "user", "content": "p"}, {"role": "assistant", "content": reply}]);
        let hh = |reply: &str| format!("\n\nHuman: p\n\nAssistant: {reply}");
        for (name, same, differ) in [
            (
                "m.jsonl",
                json!({"chosen": msgs("same"), "rejected": msgs("same")}),
                json!({"chosen": msgs("a"), "rejected": msgs("b")}),
            ),
            (
                "h.jsonl",
                json!({"chosen": hh("same"), "rejected": hh("same")}),
                json!({"chosen": hh("a"), "rejected": hh("b")}),
            ),
        ] {
            let f = write(dir.path(), name, &format!("{same}\n{differ}"));
            let (s, logs) = import_logged(&dir.path().join(name).with_extension("out"), &f, json!({}));
            let s = s.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((s["pairs"].as_u64(), s["identical_responses"].as_u64()), (Some(2), Some(1)), "{name}");
            assert!(
                logs.iter().any(|l| l.contains("1 of the 2 pairs have the same text as both responses")),
                "{logs:?}"
            );
        }
        assert_eq!(s["identical_responses"], 1);
        let all = logs.join("\n");
        assert!(all.contains("d.jsonl: 5 records → 2 pairs (3 duplicates dropped)"), "{all}");
        assert!(
            logs.iter().any(|l| l.starts_with("warning: ") && l.contains("d.jsonl: 2 of the 3 duplicates dropped prefer the other response of their pair; each pair keeps the label of its first record (counted in `rmdistill.conflicting_duplicates`")),
            "{all}"
        );
        assert!(
            logs.iter().any(|l| l.starts_with("warning: ") && l.contains("d.jsonl: 1 of the 2 pairs have the same text as both responses (response_a = response_b): imported as given, they carry no preference (counted in `rmdistill.identical_responses`")),
            "{all}"
        );
        // none of either: no such line
        let f = write(dir.path(), "clean.jsonl", &[rec("a", "b"), rec("a", "b")].join("\n"));
        let (_, logs) = import_logged(&dir.path().join("c"), &f, json!({}));
        assert!(!logs.join("\n").contains("prefer the other") && !logs.join("\n").contains("same text"), "{logs:?}");
    }

    /// Messages for causes that are easy to miss: whitespace-only text, an empty role, a byte-order mark at the start
    /// of a line other than the first, a file with CR line endings.
    #[test]
    fn invisible_causes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let cases: Vec<(&str, String, &str, &[&str])> = vec![
            (
                "ws.jsonl",
                json!({"prompt": "p", "chosen": "   \t ", "rejected": "x"}).to_string(),
                "chosen",
                &["`chosen` is only whitespace; expected non-empty text"],
            ),
            (
                "ws_content.jsonl",
                json!({"prompt": [{"role": "user", "content": "\n "}], "chosen": "c", "rejected": "x"}).to_string(),
                "prompt[0].content",
                &["`prompt[0].content` is only whitespace"],
            ),
            (
                "empty_role.jsonl",
                json!({"prompt": "p", "chosen": [{"role": "", "content": "x"}], "rejected": "y"}).to_string(),
                "chosen[0].role",
                &["`chosen[0].role` is an empty string; expected a role string"],
            ),
        ];
        refused_and_skipped(dir.path(), &cases);
        let e = import(
            &dir.path().join("empty"),
            &write(dir.path(), "empty.jsonl", &json!({"prompt": "p", "chosen": "", "rejected": "x"}).to_string()),
            json!({}),
        )
        .unwrap_err();
        assert!(e.contains("`chosen` is an empty string"), "{e}");

        let good = |p: &str| json!({"prompt": p, "chosen": "a", "rejected": "b"}).to_string();
        let bom = write(dir.path(), "bom.jsonl", &format!("\u{feff}{}\n\u{feff}{}\n", good("p"), good("q")));
        let e = import(&dir.path().join("bom"), &bom, json!({})).unwrap_err();
        assert!(
            e.contains("bom.jsonl line 2: malformed JSON: expected value at line 1 column 1 (the line begins with a byte-order mark U+FEFF"),
            "{e}"
        );
        let cr = write(dir.path(), "cr.jsonl", &format!("{}\r{}\r", good("p"), good("q")));
        let e = import(&dir.path().join("cr"), &cr, json!({})).unwrap_err();
        assert!(
            e.contains("cr.jsonl line 1: malformed JSON: trailing characters")
                && e.contains("the file seems to use CR line endings; convert them to LF"),
            "{e}"
        );
        // CRLF line endings are read as they were
        let crlf = write(dir.path(), "crlf.jsonl", &format!("{}\r\n{}\r\n", good("p"), good("q")));
        assert_eq!(import(&dir.path().join("crlf"), &crlf, json!({})).unwrap().0["pairs"], 2);

        // a line of NULs (a file cut short and padded, say): named, not only "expected value"
        let nul = write(dir.path(), "nul.jsonl", &format!("{}\n\0\0\0\n", good("p")));
        let e = import(&dir.path().join("nul"), &nul, json!({})).unwrap_err();
        assert!(e.contains("nul.jsonl line 2: malformed JSON") && e.contains("begins with a NUL byte 0x00"), "{e}");
        // UTF-16 and UTF-32, with a byte-order mark or without: the encoding is named, whatever the first record
        let text = format!("{}\n{}\n", good("p"), good("q"));
        let utf16le: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let utf16be: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
        let utf32le: Vec<u8> = text.chars().flat_map(|c| (c as u32).to_le_bytes()).collect();
        let cases: [(&str, Vec<u8>, &str); 5] = [
            ("le_bom.jsonl", [b"\xFF\xFE".as_slice(), &utf16le].concat(), "UTF-16LE (byte-order mark FF FE)"),
            ("be_bom.jsonl", [b"\xFE\xFF".as_slice(), &utf16be].concat(), "UTF-16BE (byte-order mark FE FF)"),
            ("le.jsonl", utf16le, "is UTF-16LE text; expected UTF-8"),
            ("be.jsonl", utf16be, "is UTF-16BE text; expected UTF-8"),
            ("le32.jsonl", utf32le, "is UTF-32LE text; expected UTF-8"),
        ];
        for (name, bytes, want) in cases {
            std::fs::write(dir.path().join(name), bytes).unwrap();
            let e = import(&dir.path().join(format!("{name}.out")), &dir.path().join(name), json!({})).unwrap_err();
            assert!(e.contains(name) && e.contains(want) && e.contains("iconv -f UTF-"), "{name}: {e}");
        }
    }

    /// Writes `batch` to Parquet file `name` of `dir` with arrow's own writer (its types as they are).
    fn parquet(dir: &Path, name: &str, batch: &arrow::array::RecordBatch) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let f = dir.join(name);
        let mut w =
            parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&f).unwrap(), batch.schema(), None).unwrap();
        w.write(batch).unwrap();
        w.close().unwrap();
        f
    }

    fn batch_of(cols: Vec<(&str, arrow::array::ArrayRef)>) -> arrow::array::RecordBatch {
        arrow::array::RecordBatch::try_from_iter(cols).unwrap()
    }

    /// A list array of `values`, `lens` of them per row.
    fn list_of(values: arrow::array::ArrayRef, lens: &[usize]) -> arrow::array::ArrayRef {
        let field = Arc::new(arrow::datatypes::Field::new("item", values.data_type().clone(), true));
        let offsets = arrow::buffer::OffsetBuffer::from_lengths(lens.iter().copied());
        Arc::new(arrow::array::ListArray::new(field, offsets, values, None))
    }

    /// A struct array of messages: `role` and `content` arrays, one value per message.
    fn messages_of(role: arrow::array::ArrayRef, content: arrow::array::ArrayRef) -> arrow::array::ArrayRef {
        use arrow::datatypes::Field;
        Arc::new(arrow::array::StructArray::from(vec![
            (Arc::new(Field::new("role", role.data_type().clone(), true)), role),
            (Arc::new(Field::new("content", content.data_type().clone(), true)), content),
        ]))
    }

    fn binary(v: &[&[u8]]) -> arrow::array::ArrayRef {
        Arc::new(arrow::array::BinaryArray::from(v.to_vec()))
    }

    /// Three records of messages (prompt, chosen, rejected), as JSONL, and as the (role, content) lists of each
    /// column, row by row.
    type Conversation = Vec<(&'static str, &'static str)>;
    fn three_conversations() -> (String, [Vec<Conversation>; 3]) {
        let prompts: Vec<Conversation> =
            vec![vec![("user", "héllo")], vec![("system", "be brief"), ("user", "2+2?")], vec![("user", "why")]];
        let chosen: Vec<Conversation> =
            vec![vec![("assistant", "good")], vec![("assistant", "4")], vec![("assistant", "because")]];
        let rejected: Vec<Conversation> =
            vec![vec![("assistant", "bad")], vec![("assistant", "5")], vec![("assistant", "no")]];
        let msgs = |c: &Conversation| c.iter().map(|(r, t)| json!({"role": r, "content": t})).collect::<Vec<_>>();
        let jsonl = (0..3)
            .map(|i| json!({"prompt": msgs(&prompts[i]), "chosen": msgs(&chosen[i]), "rejected": msgs(&rejected[i])}))
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        (jsonl, [prompts, chosen, rejected])
    }

    /// Strings stored as bytes import as the text they hold at any depth — in lists, large and fixed-size lists,
    /// structs, maps (keys too) and dictionaries, as Binary, LargeBinary, BinaryView and FixedSizeBinary — as the
    /// same records in JSONL do, not as hex. Bytes that are not UTF-8 are that record's error, naming the column.
    #[test]
    fn binary_at_any_depth_imports_as_text() {
        use arrow::array::{
            ArrayRef, BinaryViewArray, DictionaryArray, FixedSizeBinaryArray, FixedSizeListArray, Int32Array,
            LargeBinaryArray, LargeListArray, MapBuilder,
        };
        use arrow::datatypes::{Field, Int32Type};
        let dir = tempfile::tempdir().unwrap();
        let (jsonl, [prompts, chosen, rejected]) = three_conversations();
        let jl = write(dir.path(), "msgs.jsonl", &jsonl);
        let (_, want) = import(&dir.path().join("jl"), &jl, json!({})).unwrap();
        let want = table::read_table(&want, None).unwrap();
        let lens = |c: &[Conversation]| c.iter().map(Vec::len).collect::<Vec<_>>();
        let each = |c: &[Conversation], k: usize| -> Vec<&'static [u8]> {
            c.iter().flatten().map(|m| if k == 0 { m.0.as_bytes() } else { m.1.as_bytes() }).collect()
        };
        // list<struct<role: binary, content: binary>>
        let binary_messages =
            |c: &[Conversation]| list_of(messages_of(binary(&each(c, 0)), binary(&each(c, 1))), &lens(c));
        let all_binary = batch_of(vec![
            ("prompt", binary_messages(&prompts)),
            ("chosen", binary_messages(&chosen)),
            ("rejected", binary_messages(&rejected)),
        ]);
        // large_list<struct<role: string, content: large_binary>>
        let large = {
            let role: ArrayRef = Arc::new(StringArray::from(
                each(&prompts, 0).iter().map(|b| std::str::from_utf8(b).unwrap()).collect::<Vec<_>>(),
            ));
            let content: ArrayRef = Arc::new(LargeBinaryArray::from(each(&prompts, 1)));
            let values = messages_of(role, content);
            let field = Arc::new(Field::new("item", values.data_type().clone(), true));
            let offsets = arrow::buffer::OffsetBuffer::<i64>::from_lengths(lens(&prompts));
            Arc::new(LargeListArray::new(field, offsets, values, None)) as ArrayRef
        };
        // list<map<binary, binary>>
        let maps = {
            let mut b = MapBuilder::new(None, arrow::array::BinaryBuilder::new(), arrow::array::BinaryBuilder::new());
            for (role, content) in chosen.iter().flatten() {
                b.keys().append_value("role");
                b.values().append_value(role);
                b.keys().append_value("content");
                b.values().append_value(content);
                b.append(true).unwrap();
            }
            list_of(Arc::new(b.finish()), &lens(&chosen))
        };
        // fixed_size_list<struct<role: dictionary<int32, binary>, content: binary_view>, 1>
        let fixed = {
            let keys = Int32Array::from((0..3).collect::<Vec<i32>>());
            let role: ArrayRef =
                Arc::new(DictionaryArray::<Int32Type>::try_new(keys, binary(&each(&rejected, 0))).unwrap());
            let content: ArrayRef = Arc::new(BinaryViewArray::from(each(&rejected, 1)));
            let values = messages_of(role, content);
            let field = Arc::new(Field::new("item", values.data_type().clone(), true));
            Arc::new(FixedSizeListArray::new(field, 1, values, None)) as ArrayRef
        };
        let mixed = batch_of(vec![("prompt", large), ("chosen", maps), ("rejected", fixed)]);
        for (name, batch) in [("binary.parquet", &all_binary), ("mixed.parquet", &mixed)] {
            let f = parquet(dir.path(), name, batch);
            let (s, out) = import(&dir.path().join(format!("o-{name}")), &f, json!({})).unwrap();
            assert_eq!(s["records"], 3, "{name}: {s}");
            assert_eq!(table::read_table(&out, None).unwrap(), want, "{name}: the records of the JSONL");
        }

        // fixed-size binary strings
        let fsb = |v: &[&str]| {
            Arc::new(FixedSizeBinaryArray::try_from_iter(v.iter().map(|s| s.as_bytes())).unwrap()) as ArrayRef
        };
        let strings = |v: &[&str]| Arc::new(StringArray::from(v.to_vec())) as ArrayRef;
        let f = parquet(
            dir.path(),
            "fsb.parquet",
            &batch_of(vec![
                ("prompt", fsb(&["p1", "p2"])),
                ("chosen", strings(&["a", "b"])),
                ("rejected", fsb(&["xy", "zw"])),
            ]),
        );
        let jl = write(
            dir.path(),
            "fsb.jsonl",
            &format!(
                "{}\n{}",
                json!({"prompt": "p1", "chosen": "a", "rejected": "xy"}),
                json!({"prompt": "p2", "chosen": "b", "rejected": "zw"})
            ),
        );
        let (_, o1) = import(&dir.path().join("fsb"), &f, json!({})).unwrap();
        let (_, o2) = import(&dir.path().join("fsb-jl"), &jl, json!({})).unwrap();
        assert_eq!(table::read_table(&o1, None).unwrap(), table::read_table(&o2, None).unwrap());

        // a role given as bytes is named as its text
        let wizard: Vec<Conversation> = vec![vec![("assistant", "a")], vec![("wizard", "b")], vec![("assistant", "c")]];
        let f = parquet(
            dir.path(),
            "wizard.parquet",
            &batch_of(vec![
                ("prompt", binary_messages(&prompts)),
                ("chosen", binary_messages(&chosen)),
                ("rejected", binary_messages(&wizard)),
            ]),
        );
        let e = import(&dir.path().join("wizard"), &f, json!({})).unwrap_err();
        assert!(
            e.contains("wizard.parquet row 1: `rejected[0].role` is \"wizard\"; expected an assistant role"),
            "{e}"
        );

        // bytes that are not UTF-8, deep in a row where import reads them as text, are that record's error, naming
        // the path to them
        let bad = list_of(
            messages_of(
                binary(&[b"assistant", b"assistant", b"assistant"]),
                binary(&[b"good", b"\xe2\x82 \xff", b"fine"]),
            ),
            &[1, 1, 1],
        );
        let f = parquet(
            dir.path(),
            "bad.parquet",
            &batch_of(vec![
                ("prompt", binary_messages(&prompts)),
                ("chosen", bad),
                ("rejected", binary_messages(&rejected)),
            ]),
        );
        let e = import(&dir.path().join("bad"), &f, json!({})).unwrap_err();
        assert!(
            e.starts_with("chosen[0].content: ")
                && e.contains("bad.parquet row 1: `chosen[0].content` is binary bytes that are not UTF-8 text"),
            "{e}"
        );
        let (s, _) = import(&dir.path().join("bad-skip"), &f, json!({"on_invalid": "skip"})).unwrap();
        assert_eq!((s["records"].as_u64(), s["invalid_skipped"].as_u64()), (Some(2), Some(1)), "{s}");
        assert_eq!(s["invalid_by_field"]["chosen[0].content"], 1, "{s}");
    }

    /// Binary bytes that are not UTF-8 inside a column are no matter in a key import does not read (a message's UUID,
    /// a map key), and a clear error, naming the path to them, in one it reads as text.
    #[test]
    fn bytes_that_are_not_utf8_matter_only_where_import_reads_them() {
        use arrow::array::{ArrayRef, FixedSizeBinaryArray, MapBuilder};
        use arrow::datatypes::Field;
        let dir = tempfile::tempdir().unwrap();
        let strings = |v: &[&str]| Arc::new(StringArray::from(v.to_vec())) as ArrayRef;
        // list<struct<role: utf8, content: <content>, id: fixed_size_binary(16), tags: map<binary, utf8>>>, one
        // message per row
        let messages = |role: &[&str], content: ArrayRef| {
            let id: ArrayRef =
                Arc::new(FixedSizeBinaryArray::try_from_iter(role.iter().map(|_| [0xffu8; 16])).unwrap());
            let mut tags =
                MapBuilder::new(None, arrow::array::BinaryBuilder::new(), arrow::array::StringBuilder::new());
            for _ in role {
                tags.keys().append_value(b"\xfe\x00");
                tags.values().append_value("t");
                tags.append(true).unwrap();
            }
            let tags: ArrayRef = Arc::new(tags.finish());
            let role = strings(role);
            let values: ArrayRef = Arc::new(arrow::array::StructArray::from(vec![
                (Arc::new(Field::new("role", role.data_type().clone(), true)), role),
                (Arc::new(Field::new("content", content.data_type().clone(), true)), content),
                (Arc::new(Field::new("id", id.data_type().clone(), true)), id),
                (Arc::new(Field::new("tags", tags.data_type().clone(), true)), tags),
            ]));
            list_of(values, &[1, 1])
        };
        let batch = |prompt: ArrayRef| {
            batch_of(vec![
                ("prompt", messages(&["user", "user"], prompt)),
                ("chosen", messages(&["assistant", "assistant"], strings(&["good", "yes"]))),
                ("rejected", messages(&["assistant", "assistant"], strings(&["bad", "no"]))),
            ])
        };
        let f = parquet(dir.path(), "uuid.parquet", &batch(strings(&["hi", "why"])));
        let (s, _) = import(&dir.path().join("uuid"), &f, json!({})).unwrap();
        assert_eq!((s["records"].as_u64(), s["pairs"].as_u64()), (Some(2), Some(2)), "{s}");
        // the same, with contents as bytes (UTF-8 text)
        let f = parquet(dir.path(), "uuid-bytes.parquet", &batch(binary(&[b"hi", b"why"])));
        assert_eq!(import(&dir.path().join("uuid-bytes"), &f, json!({})).unwrap().0["pairs"], 2);
        // a content that is not UTF-8 is read: refused, naming where it is
        let f = parquet(dir.path(), "content.parquet", &batch(binary(&[b"hi", b"\xffwhy"])));
        let e = import(&dir.path().join("content"), &f, json!({})).unwrap_err();
        assert!(
            e.starts_with("prompt[0].content: ")
                && e.contains(
                    "content.parquet row 1: `prompt[0].content` is binary bytes that are not UTF-8 text (in the Parquet file: re-write it as UTF-8 strings); expected a string"
                ),
            "{e}"
        );
        let (s, _) = import(&dir.path().join("content-skip"), &f, json!({"on_invalid": "skip"})).unwrap();
        assert_eq!((s["records"].as_u64(), s["invalid_skipped"].as_u64()), (Some(1), Some(1)), "{s}");
        assert_eq!(s["invalid_by_field"]["prompt[0].content"], 1, "{s}");
        // a list of byte strings where messages are expected
        let f = parquet(
            dir.path(),
            "list.parquet",
            &batch_of(vec![
                ("prompt", list_of(binary(&[b"\xff"]), &[1])),
                ("chosen", strings(&["a"])),
                ("rejected", strings(&["b"])),
            ]),
        );
        let e = import(&dir.path().join("list"), &f, json!({})).unwrap_err();
        assert!(e.contains("row 0: `prompt[0]` is binary bytes that are not UTF-8 text"), "{e}");
    }

    /// A key that a Parquet value gives twice is refused, as in JSON: a struct type with a field twice (every row
    /// has it) is the file's error, a map that holds a key twice is its record's; both name the column and the key.
    #[test]
    fn a_key_given_twice_inside_a_parquet_value_is_refused() {
        use arrow::array::{ArrayRef, MapBuilder, StringBuilder, StructArray};
        use arrow::datatypes::{DataType, Field, Fields};
        let dir = tempfile::tempdir().unwrap();
        let strings = |v: &[&str]| Arc::new(StringArray::from(v.to_vec())) as ArrayRef;
        let fields: Fields =
            ["role", "content", "content"].map(|n| Field::new(n, DataType::Utf8, true)).to_vec().into();
        let twice = StructArray::try_new(
            fields,
            vec![strings(&["assistant", "assistant"]), strings(&["FIRST", "FIRST"]), strings(&["SECOND", "SECOND"])],
            None,
        )
        .unwrap();
        let f = parquet(
            dir.path(),
            "struct.parquet",
            &batch_of(vec![
                ("prompt", strings(&["q1", "q2"])),
                ("chosen", list_of(Arc::new(twice), &[1, 1])),
                ("rejected", strings(&["no", "nope"])),
            ]),
        );
        let e = import(&dir.path().join("struct"), &f, json!({"on_invalid": "skip"})).unwrap_err();
        assert!(
            e.starts_with("path: ")
                && e.contains("struct.parquet: column `chosen` holds a struct with two fields named `content` (`chosen[].content` of each row)")
                && e.contains("give each field once"),
            "{e}"
        );

        // maps of messages, the second row's chosen with `content` twice, the third's rejected (bytes) too
        let mut chosen = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        let mut rejected =
            MapBuilder::new(None, arrow::array::BinaryBuilder::new(), arrow::array::BinaryBuilder::new());
        for row in 0..3 {
            let r = format!("R{row}");
            for (k, v, w) in [("role", "assistant", "assistant"), ("content", "A1", r.as_str())] {
                chosen.keys().append_value(k);
                chosen.values().append_value(v);
                rejected.keys().append_value(k);
                rejected.values().append_value(w);
            }
            if row == 1 {
                chosen.keys().append_value("content");
                chosen.values().append_value("A2");
            }
            if row == 2 {
                rejected.keys().append_value("content");
                rejected.values().append_value("R2");
            }
            chosen.append(true).unwrap();
            rejected.append(true).unwrap();
        }
        let f = parquet(
            dir.path(),
            "map.parquet",
            &batch_of(vec![
                ("prompt", strings(&["q0", "q1", "q2"])),
                ("chosen", list_of(Arc::new(chosen.finish()), &[1, 1, 1])),
                ("rejected", list_of(Arc::new(rejected.finish()), &[1, 1, 1])),
            ]),
        );
        let e = import(&dir.path().join("map"), &f, json!({})).unwrap_err();
        assert!(
            e.starts_with("chosen[0].content: ")
                && e.contains("map.parquet row 1: `chosen[0].content` is given twice (a map of the Parquet column holds the key twice)")
                && e.contains("give each key once"),
            "{e}"
        );
        let (s, _) = import(&dir.path().join("map-skip"), &f, json!({"on_invalid": "skip"})).unwrap();
        assert_eq!((s["records"].as_u64(), s["invalid_skipped"].as_u64()), (Some(1), Some(2)), "{s}");
        assert_eq!(s["invalid_by_field"], json!({"chosen[0].content": 1, "rejected[0].content": 1}), "{s}");
    }

    /// Only the columns the format reads are read: a column of a type the reader cannot show (a timestamp in a named
    /// time zone) or with a struct that has a field twice does not matter unless it is one of them, and then the
    /// error names it. The errors that list a record's keys list the file's columns.
    #[test]
    fn only_the_columns_a_format_reads_are_read() {
        use arrow::array::{ArrayRef, FixedSizeBinaryArray, StructArray, TimestampNanosecondArray};
        use arrow::datatypes::{DataType, Field, Fields};
        let dir = tempfile::tempdir().unwrap();
        let strings = |v: &[&str]| Arc::new(StringArray::from(v.to_vec())) as ArrayRef;
        let ts = Arc::new(TimestampNanosecondArray::from(vec![Some(1), None]).with_timezone("UTC")) as ArrayRef;
        let fields: Fields = ["a", "a"].map(|n| Field::new(n, DataType::Utf8, true)).to_vec().into();
        let meta =
            Arc::new(StructArray::try_new(fields, vec![strings(&["x", "y"]), strings(&["z", "w"])], None).unwrap());
        let blob = Arc::new(FixedSizeBinaryArray::try_from_iter([b"\xff\x00", b"\xfe\x01"].into_iter()).unwrap());
        let base = vec![
            ("prompt", strings(&["p1", "p2"])),
            ("chosen", strings(&["a", "b"])),
            ("rejected", strings(&["x", "y"])),
        ];
        let plain = parquet(dir.path(), "plain.parquet", &batch_of(base.clone()));
        let mut cols = base.clone();
        cols.extend([("ts", ts.clone()), ("meta", meta as ArrayRef), ("blob", blob as ArrayRef)]);
        let wide = parquet(dir.path(), "wide.parquet", &batch_of(cols));
        let (_, o1) = import(&dir.path().join("plain"), &plain, json!({})).unwrap();
        for extra in [json!({}), json!({"format": "trl"}), json!({"format": "hh"})] {
            let r = import(&dir.path().join(format!("wide-{extra}")), &wide, extra.clone());
            if extra["format"] == "hh" {
                // hh reads chosen and rejected alone: these are no HH dialogues (the columns did read)
                assert!(r.unwrap_err().contains("has no \"\\n\\nAssistant:\""));
                continue;
            }
            let (_, o2) = r.unwrap();
            assert_eq!(table::read_table(&o1, None).unwrap(), table::read_table(&o2, None).unwrap(), "{extra}");
        }
        // a column read that the reader cannot show is named
        let f = parquet(
            dir.path(),
            "label.parquet",
            &batch_of(vec![
                ("prompt", strings(&["p1", "p2"])),
                ("response_a", strings(&["a", "b"])),
                ("response_b", strings(&["x", "y"])),
                ("label", ts),
            ]),
        );
        let e = import(&dir.path().join("label"), &f, json!({})).unwrap_err();
        assert!(
            e.starts_with("path: ")
                && e.contains("label.parquet: column `label` (of type Timestamp(ns, \"UTC\")) cannot be read"),
            "{e}"
        );
        // the keys of a record are the file's columns, read or not
        let f = parquet(
            dir.path(),
            "missing.parquet",
            &batch_of(vec![("prompt", strings(&["p"])), ("chosen", strings(&["a"])), ("note", strings(&["n"]))]),
        );
        let e = import(&dir.path().join("missing"), &f, json!({"format": "trl"})).unwrap_err();
        assert!(
            e.contains("row 0: `rejected` is missing") && e.contains("(the record has: prompt, chosen, note)"),
            "{e}"
        );
        // none of the columns is read: every record is still there, and says which keys it has
        let f = parquet(
            dir.path(),
            "unknown.parquet",
            &batch_of(vec![("question", strings(&["q", "r"])), ("answer", strings(&["a", "b"]))]),
        );
        let e = import(&dir.path().join("unknown"), &f, json!({})).unwrap_err();
        assert!(
            e.starts_with("format: ")
                && e.contains(
                    "unknown.parquet row 0: cannot detect the format from the record's keys (question, answer)"
                ),
            "{e}"
        );
        let e =
            import(&dir.path().join("unknown-skip"), &f, json!({"on_invalid": "skip", "format": "trl"})).unwrap_err();
        assert!(
            e.contains("all 2 records were invalid and skipped") && e.contains("(the record has: question, answer)"),
            "{e}"
        );
    }

    /// Keys are named as the file gives them when plain, and JSON-quoted otherwise: no control character of the
    /// file reaches a terminal through an error.
    #[test]
    fn keys_with_control_characters_are_escaped_in_errors() {
        use arrow::array::ArrayRef;
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "detect.jsonl",
                r#"{"\u001b[31mfoo\u001b]0;T\u0007": "p", "chosen": "a"}"#,
                r#"cannot detect the format from the record's keys ("\u001b[31mfoo\u001b]0;T\u0007", chosen)"#,
            ),
            (
                "missing.jsonl",
                r#"{"prompt": "p", "chosen": "a", "a b": 1, "\u001b[2J": 2, "x\u202ey\u007f": 3}"#,
                r#"(the record has: prompt, chosen, "a b", "\u001b[2J", "x\u202ey\u007f")"#,
            ),
            (
                "twice.jsonl",
                r#"{"prompt": "p", "chosen": [{"role": "assistant", "\u001b[2J": 1, "\u001b[2J": 2}], "rejected": "r"}"#,
                r#"`chosen[0]."\u001b[2J"` is given twice"#,
            ),
            (
                "message.jsonl",
                r#"{"prompt": [{"role": "user", "\u009b31m": "x"}], "chosen": "a", "rejected": "r"}"#,
                r#"(the message has: role, "\u009b31m")"#,
            ),
        ];
        for (name, text, want) in cases {
            let f = write(dir.path(), name, text);
            let extra = if name == "missing.jsonl" { json!({"format": "trl"}) } else { json!({}) };
            let e = import(&dir.path().join(format!("o-{name}")), &f, extra).unwrap_err();
            assert!(e.contains(want), "{name}: {e}");
            assert!(!e.contains(['\u{1b}', '\u{7}', '\u{9b}', '\u{202e}', '\u{7f}']), "{name}: {e:?}");
        }
        let col = |v: &str| Arc::new(StringArray::from(vec![v])) as ArrayRef;
        let batch = arrow::array::RecordBatch::try_new(
            Arc::new(arrow::datatypes::Schema::new(
                ["prompt", "chosen", "rejected", "\u{1b}[2J", "\u{1b}[2J"]
                    .map(|n| arrow::datatypes::Field::new(n, arrow::datatypes::DataType::Utf8, false))
                    .to_vec(),
            )),
            vec![col("p"), col("a"), col("r"), col("x"), col("y")],
        )
        .unwrap();
        let f = parquet(dir.path(), "twice.parquet", &batch);
        let e = import(&dir.path().join("pq"), &f, json!({})).unwrap_err();
        assert!(e.contains(r#"column `"\u001b[2J"` appears twice"#) && !e.contains('\u{1b}'), "{e:?}");
    }

    /// A Parquet file whose `chosen` pages are damaged: the error names the column.
    #[test]
    fn a_column_that_does_not_decode_is_named() {
        use arrow::array::ArrayRef;
        use parquet::file::reader::FileReader;
        let dir = tempfile::tempdir().unwrap();
        let n = 2000;
        let strings = |k: &str| {
            Arc::new(StringArray::from(
                (0..n).map(|i| format!("{k} {i} {}", "text ".repeat(i % 17))).collect::<Vec<_>>(),
            )) as ArrayRef
        };
        let batch = batch_of(vec![("prompt", strings("p")), ("chosen", strings("c")), ("rejected", strings("r"))]);
        let f = dir.path().join("d.parquet");
        let props = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
            .set_dictionary_enabled(false)
            .build();
        let mut w =
            parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&f).unwrap(), batch.schema(), Some(props))
                .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let (start, len) = {
            let r = parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&f).unwrap()).unwrap();
            r.metadata().row_group(0).column(1).byte_range()
        };
        let mut bytes = std::fs::read(&f).unwrap();
        // the middle of the column chunk: its compressed page data
        for b in &mut bytes[(start + len / 3) as usize..(start + 2 * len / 3) as usize] {
            *b = 0x5a;
        }
        std::fs::write(&f, &bytes).unwrap();
        let e = import(&dir.path().join("o"), &f, json!({})).unwrap_err();
        assert!(
            e.starts_with("path: ") && e.contains("d.parquet near row 0: column `chosen` cannot be decoded"),
            "{e}"
        );
    }

    /// Row groups are cut by rows, and before a row that would take the text bytes of one column of its group past
    /// the bound (a row alone is a group whatever its size); the rows are those of one group.
    #[test]
    fn a_group_is_cut_before_its_text_bytes_pass_the_bound() {
        use parquet::file::reader::FileReader;
        let dir = tempfile::tempdir().unwrap();
        let sizes = [100, 100, 100, 300, 10, 10, 10, 10, 10, 10];
        let text = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| json!({"prompt": format!("{i}{}", "p".repeat(n - 1)), "chosen": format!("a{i}"), "rejected": format!("b{i}")}).to_string())
            .collect::<Vec<_>>()
            .join("\n");
        let f = write(dir.path(), "d.jsonl", &text);
        let (s1, o1) = import_bounded(&dir.path().join("cut"), &f, json!({}), 4, 250).unwrap();
        let (s2, o2) = import(&dir.path().join("one"), &f, json!({})).unwrap();
        assert_eq!(s1, s2);
        assert_eq!(table::read_table(&o1, None).unwrap(), table::read_table(&o2, None).unwrap());
        let groups = |p: &Path| {
            let r = parquet::file::reader::SerializedFileReader::new(std::fs::File::open(p).unwrap()).unwrap();
            (0..r.metadata().num_row_groups()).map(|g| r.metadata().row_group(g).num_rows()).collect::<Vec<_>>()
        };
        // 100+100 (a third 100 passes 250); 100 (300 passes it); 300 alone; 4 rows; the last 2
        assert_eq!(groups(&o1), vec![2, 1, 1, 4, 2]);
        assert_eq!(groups(&o2), vec![10]);
    }

    /// The groups taken row by row as the rows come are those of one take at the end: the file does not depend on
    /// when rows are written.
    #[test]
    fn groups_do_not_depend_on_when_they_are_taken() {
        let row = |i: usize| {
            let n = [3, 90, 40, 200, 7, 120, 60, 61, 5, 250, 1, 1][i % 12];
            let e = Extracted {
                prompt: format!("{i} {}", "x".repeat(n)),
                first: format!("a{i}{}", "y".repeat(i % 5 * 30)),
                second: format!("b{i}"),
                labelled: true,
                fields: ("chosen", "rejected"),
            };
            Row { pair: Pair::of(e, None), source_row: i as u32 }
        };
        let (group_rows, group_bytes) = (5, 200);
        let sizes = |groups: Vec<Vec<Row>>| groups.iter().map(|g| g.iter().map(|r| r.source_row).collect()).collect();
        let mut once = Collected { pending: (0..100).map(row).collect(), ..Collected::default() };
        let once: Vec<Vec<u32>> = sizes(once.take_groups(group_rows, group_bytes, true));
        let mut each = Collected::default();
        let mut taken: Vec<Vec<u32>> = Vec::new();
        for i in 0..100 {
            each.pending.push(row(i));
            taken.extend(sizes(each.take_groups(group_rows, group_bytes, false)));
        }
        taken.extend(sizes(each.take_groups(group_rows, group_bytes, true)));
        assert_eq!(taken, once);
        assert!(once.iter().any(|g| g.len() < group_rows) && once.iter().any(|g| g.len() == group_rows), "{once:?}");
        assert_eq!(once.concat(), (0..100).collect::<Vec<u32>>());
    }
}
