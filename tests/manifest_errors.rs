//! Every manifest mistake is a clear error naming file, line and column, with exit code 2, before any work.

mod common;
use common::*;

fn expect_error(manifest: &str, needle: &str) {
    let w = Work::new();
    w.write("m.toml", manifest);
    let o = w.run(&["run", "m.toml"]);
    let err = s(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "expected exit 2 for:\n{manifest}\nstderr: {err}");
    assert!(err.contains(needle), "expected `{needle}` in:\n{err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");
    assert!(!w.store().join("cache").exists(), "nothing may be stored when the manifest is invalid");
}

const GEN: &str = "[stages.gen]\nkind = \"generate\"\nparams = { n = 100 }\n";

#[test]
fn unknown_keys() {
    expect_error(&format!("colour = \"blue\"\n{GEN}"), "m.toml:1:1: unknown field `colour`");
    expect_error(
        "[stages.gen]\nkind = \"generate\"\nparms = { n = 100 }\n",
        "m.toml:3:1: unknown field `parms`, expected one of",
    );
    expect_error(&format!("{GEN}[execution]\njob = 2\n"), "m.toml:5:1: unknown field `job`");
    // A stage rejects parameters it does not know, at the parameter's position.
    expect_error("[stages.gen]\nkind = \"generate\"\nparams = { n = 100, sed = 3 }\n", "m.toml:3:");
    expect_error("[stages.gen]\nkind = \"generate\"\nparams = { n = 100, sed = 3 }\n", "sed");
}

#[test]
fn type_errors() {
    expect_error(
        &format!("{GEN}[execution]\njobs = \"two\"\n"),
        "m.toml:5:8: invalid type: string \"two\", expected a whole number ≥ 0",
    );
    expect_error("[stages.gen]\nkind = \"generate\"\nparams = { n = \"many\" }\n", "m.toml:3:16: gen: param `n`:");
    expect_error("[stages.gen]\nkind = 3\n", "m.toml:2:8: invalid type: integer `3`, expected a string");
    // in the manifest's terms, not Rust's ("expected f64", "expected u64"), with the field and the form expected
    expect_error(
        "[stages.gen]\nkind = \"generate\"\nparams = { n = -1 }\n",
        "integer `-1`, expected a whole number ≥ 0",
    );
    expect_error(
        &format!("{GEN}resources = {{ time = 60 }}\n"),
        "resources.time = 60: expected a string with a unit, e.g. \"90s\"",
    );
    expect_error(
        &format!("{GEN}resources = {{ memory = 8 }}\n"),
        "resources.memory = 8: expected a string with a unit",
    );
    // Syntax errors are located too.
    expect_error("[stages.gen\nkind = \"generate\"\n", "m.toml:1:");
}

#[test]
fn cycles() {
    let m = r#"
[stages.a]
kind = "subsample"
inputs = { pairs = "b.dataset" }
params = { rho = 0.5, size = 10 }

[stages.b]
kind = "subsample"
inputs = { pairs = "a.dataset" }
params = { rho = 0.5, size = 10 }
"#;
    expect_error(m, "cycle between stages: a -> b -> a");
    expect_error(m, "m.toml:2:9:");
}

/// A chain of thousands of stages, each reading the next (so that the first one's upstream is the whole chain), is
/// ordered without recursion; closed into a loop, the cycle is named from end to end.
#[test]
fn long_chains_and_long_cycles() {
    const N: usize = 20_000;
    let chain = |closed: bool| {
        let mut m = String::new();
        for i in 0..N {
            let up = if i + 1 < N {
                format!("s{:05}.dataset", i + 1)
            } else if closed {
                "s00000.dataset".into()
            } else {
                "gen.pairs".into()
            };
            m += &format!(
                "[stages.s{i:05}]\nkind = \"subsample\"\ninputs = {{ pairs = \"{up}\" }}\nparams = {{ rho = 0.5, size = 10 }}\n"
            );
        }
        m + GEN
    };
    let w = Work::new();
    w.write("m.toml", &chain(false));
    let o = w.run(&["status", "m.toml"]);
    assert!(o.status.success(), "{}", s(&o.stderr));
    assert!(s(&o.stdout).contains(&format!("{N} wait on upstream")), "{}", s(&o.stdout));
    let m = chain(true);
    expect_error(&m, "cycle between stages: s00000 -> s00001 -> s00002");
    expect_error(&m, "s19998 -> s19999 -> s00000");
}

/// `$${` writes a literal `${` in a stage's params (here a file whose name has one); a lone `${` says so.
#[test]
fn a_literal_dollar_brace_is_written_doubled() {
    let m = "[stages.imp]\nkind = \"import\"\nparams = { path = \"${x.jsonl\", format = \"trl\" }\n";
    expect_error(
        m,
        "m.toml:3:19: imp: param `path`: unterminated `${` in \"${x.jsonl\" (write `$${` for a literal `${`)",
    );
    let w = Work::new();
    w.write("${x}.jsonl", "{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\n");
    w.write("m.toml", &m.replace("${x.jsonl", "$${x}.jsonl"));
    let o = w.run(&["run", "m.toml"]);
    assert!(o.status.success() && s(&o.stderr).contains("${x}.jsonl: 1 records"), "{}", s(&o.stderr));
}

#[test]
fn dangling_inputs() {
    let m = format!(
        "{GEN}\n[stages.sub]\nkind = \"subsample\"\ninputs = {{ pairs = \"gne.pairs\" }}\nparams = {{ rho = 0.5, size = 10 }}\n"
    );
    expect_error(&m, "m.toml:7:20: input `pairs` names stage `gne`, which is not declared (stages: gen, sub)");
    let m = format!(
        "{GEN}\n[stages.sub]\nkind = \"subsample\"\ninputs = {{ pairs = \"gen.pears\" }}\nparams = {{ rho = 0.5, size = 10 }}\n"
    );
    expect_error(&m, "stage `gen` (kind `generate`) has no output `pears` (its outputs: pairs)");
    let m = format!("{GEN}\n[stages.sub]\nkind = \"subsample\"\nparams = {{ rho = 0.5, size = 10 }}\n");
    expect_error(&m, "stage `sub` (kind `subsample`) needs input `pairs`");
    let m = format!(
        "{GEN}\n[stages.sub]\nkind = \"subsample\"\ninputs = {{ pairs = [\"gen.pairs\", \"gen.pairs\"] }}\nparams = {{ rho = 0.5, size = 10 }}\n"
    );
    expect_error(&m, "m.toml:7:20: input `pairs` of stage kind `subsample` takes one artifact, not a list");
    let m = format!(
        "{GEN}\n[stages.sub]\nkind = \"subsample\"\ninputs = {{ pairs = 3 }}\nparams = {{ rho = 0.5, size = 10 }}\n"
    );
    expect_error(&m, "input `pairs`: expected \"STAGE.OUTPUT\" or a non-empty list of them, got 3");
    let m = format!(
        "{GEN}\n[stages.sub]\nkind = \"subsample\"\ninputs = {{ pairs = \"gen.pairs\", extra = \"gen.pairs\" }}\nparams = {{ rho = 0.5, size = 10 }}\n"
    );
    expect_error(&m, "stage kind `subsample` has no input `extra` (its inputs: pairs)");
    // a sweep value the upstream stage lacks is named, with the values it has
    let m = format!(
        "{GEN}\n[stages.sub]\nkind = \"subsample\"\ninputs = {{ pairs = \"gen.pairs\" }}\nsweep = {{ seed = [0, 1] }}\nparams = {{ rho = 0.5, size = 10, seed = \"${{seed}}\" }}\n\n[stages.member]\nkind = \"subsample\"\ninputs = {{ pairs = \"sub.dataset\" }}\nsweep = {{ seed = [1, 5] }}\nparams = {{ rho = 0.5, size = 5, seed = \"${{seed}}\" }}\n"
    );
    expect_error(
        &m,
        "member@seed=5: input `pairs` matches no node of stage `sub` (no node agrees on the shared sweep axes; `seed` = 5 here, `sub` has 0, 1)",
    );
}

#[test]
fn duplicate_names() {
    // Within one file TOML itself refuses the duplicate table.
    expect_error(&format!("{GEN}{GEN}"), "m.toml:4:");
    // A key set twice in one table is named.
    expect_error(
        "[stages.gen]\nkind = \"generate\"\nparams = { n = 100 }\nkind = \"generate\"\n",
        "m.toml:4:1: duplicate key `kind` (set earlier in the same table)",
    );
    // Between a manifest and its pipeline.
    let w = Work::new();
    w.write("p.toml", GEN);
    w.write("m.toml", &format!("pipeline = \"p.toml\"\n{GEN}"));
    let o = w.run(&["run", "m.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(s(&o.stderr).contains("m.toml:2:9: duplicate stage `gen` (already declared at"), "{}", s(&o.stderr));
}

#[test]
fn empty_and_bad_sweeps() {
    let m = format!(
        "{GEN}\n[stages.sub]\nkind = \"subsample\"\ninputs = {{ pairs = \"gen.pairs\" }}\nsweep = {{ rho = [] }}\nparams = {{ rho = \"${{rho}}\", size = 10 }}\n"
    );
    expect_error(&m, "m.toml:8:17: sweep `rho` is empty");
    let m = format!(
        "[vars]\nrhos = []\n{GEN}\n[stages.sub]\nkind = \"subsample\"\ninputs = {{ pairs = \"gen.pairs\" }}\nsweep = {{ rho = \"${{rhos}}\" }}\nparams = {{ rho = \"${{rho}}\", size = 10 }}\n"
    );
    expect_error(&m, "sweep `rho` is empty: a sweep needs at least one value");
    let m = format!(
        "{GEN}\n[stages.sub]\nkind = \"subsample\"\ninputs = {{ pairs = \"gen.pairs\" }}\nsweep = {{ rho = 0.5 }}\nparams = {{ rho = \"${{rho}}\", size = 10 }}\n"
    );
    expect_error(&m, "sweep `rho` must be a list of values");
    let m = format!(
        "{GEN}\n[stages.sub]\nkind = \"subsample\"\ninputs = {{ pairs = \"gen.pairs\" }}\nparams = {{ rho = \"${{rh}}\", size = 10 }}\n"
    );
    expect_error(&m, "m.toml:8:18: sub: param `rho`: `${rh}` names no variable or sweep axis");
}

#[test]
fn unknown_stage_kinds_and_bad_values() {
    expect_error(
        "[stages.x]\nkind = \"trian\"\n",
        "m.toml:2:8: unknown stage kind `trian` (known: import, import_model, subsample, generate",
    );
    let m = format!(
        "{GEN}\n[stages.sub]\nkind = \"subsample\"\ninputs = {{ pairs = \"gen.pairs\" }}\nparams = {{ rho = 1.5, size = 10 }}\n"
    );
    expect_error(&m, "m.toml:8:18: sub: param `rho`:");
    expect_error(
        "[stages.i]\nkind = \"import\"\nparams = { path = \"missing.jsonl\" }\n",
        "m.toml:3:19: i: param `path`: no such file or directory",
    );
    expect_error(
        "[stages.i]\nkind = \"import\"\nparams = { path = \"/dev/null\" }\n",
        "m.toml:3:19: i: param `path`: not a regular file or directory",
    );
    expect_error("description = \"nothing\"\n", "declares no stages");
}

#[test]
fn unknown_variables_in_a_manifest_over_a_pipeline() {
    let w = Work::new();
    w.write("p.toml", &format!("[vars]\nn = 100\n{GEN}"));
    w.write("m.toml", "pipeline = \"p.toml\"\n[vars]\nm = 5\n");
    let o = w.run(&["status", "m.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        s(&o.stderr).contains("m.toml:3:5: pipeline")
            && s(&o.stderr).contains("declares no variable `m` (it declares: n)"),
        "{}",
        s(&o.stderr)
    );
    let o = w.run(&["status", "p.toml", "--set", "q=1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(s(&o.stderr).contains("declares no variable `q`"), "{}", s(&o.stderr));
}

/// The shipped pipeline damaged in many seeded ways (cut, spliced, a line lost or doubled, a value retyped): `dag`,
/// `status` and `node list` either accept it or refuse it with exit 2 and a located error naming the file —
/// never a panic, and `status` stores nothing.
#[test]
fn damaged_pipelines_are_refused_with_a_place_or_accepted_never_a_panic() {
    let manifest = std::fs::read_to_string(repo().join("manifests/synthetic-default.toml")).unwrap();
    let pipeline = std::fs::read_to_string(repo().join("pipelines/robust-distill.toml")).unwrap();
    const SPLICE: [&str; 16] =
        ["\"", "[", "]", "{", "}", "=", ",", "\n", "${", "${seeds}", "-1", "1e400", "nan", "'", "[]", "{}"];
    const VALUES: [&str; 10] = ["-1", "0", "1e9", "\"\"", "[]", "{}", "[0.2, 0.2]", "2.5", "\"${nope}\"", "true"];
    // xorshift: the cases are the same on every run
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut pick = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n.max(1) as u64) as usize
    };
    let (mut accepted, mut refused) = (0, 0);
    for case in 0..40 {
        let t = pipeline.as_str();
        let i = pick(t.len());
        let i = (0..=i).rev().find(|&j| t.is_char_boundary(j)).unwrap();
        let damaged = match case % 5 {
            0 => t[..i].to_string(),
            1 => format!("{}{}{}", &t[..i], SPLICE[pick(SPLICE.len())], &t[i..]),
            2 => {
                let mut lines: Vec<&str> = t.lines().collect();
                lines.remove(pick(lines.len()));
                lines.join("\n")
            }
            3 => {
                let mut lines: Vec<&str> = t.lines().collect();
                let l = lines[pick(lines.len())];
                lines.insert(pick(lines.len()), l);
                lines.join("\n")
            }
            _ => {
                let starts: Vec<usize> = t.match_indices(" = ").map(|(j, _)| j + 3).collect();
                let s = starts[pick(starts.len())];
                let end = s + t[s..].find(['\n', '#']).unwrap_or(t.len() - s);
                format!("{}{}{}", &t[..s], VALUES[pick(VALUES.len())], &t[end..])
            }
        };
        let w = Work::new();
        w.write("manifests/m.toml", &manifest);
        w.write("pipelines/robust-distill.toml", &damaged);
        let store = format!("file://{}", w.path().join("store").display());
        for args in [vec!["dag", "manifests/m.toml"], vec!["status", "manifests/m.toml", "--store", &store]] {
            let o = w.run(&args);
            let err = s(&o.stderr);
            assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "case {case}, {args:?}: {err}");
            match o.status.code() {
                Some(0) => accepted += 1,
                Some(2) => {
                    refused += 1;
                    assert!(err.contains("robust-distill.toml:"), "case {case}, {args:?}: no place named: {err}");
                }
                c => panic!("case {case}, {args:?}: exit {c:?}: {err}"),
            }
        }
        assert!(!w.path().join("store/cache").exists(), "case {case}: status stored something");
    }
    assert!(accepted > 0 && refused > 0, "accepted {accepted}, refused {refused}");
}

/// Runs `args` in `w`; expects exit 2 and `needle` in stderr, which stays one line per error (no raw control
/// character from the command line is echoed).
fn refused_in(w: &Work, args: &[&str], needle: &str) {
    let o = w.run(args);
    let err = s(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: expected `{needle}` in:\n{err}");
    assert!(!err.trim_end().contains('\n') && !err.contains("panicked"), "{err}");
}

/// The node names `dag` prints for `args`.
fn dag_nodes(w: &Work, args: &[&str]) -> Vec<String> {
    let out = w.ok(&[&["dag"], args].concat());
    out.lines().filter(|l| !l.starts_with(' ')).map(|l| l.rsplit_once(" [").map_or(l, |(n, _)| n).to_string()).collect()
}

/// `--set` on a variable whose manifest value is a string takes the text as written: `1.10` was read as the TOML
/// float 1.1 (and `0x1F` as 31, `1e3` as 1000.0, `1_000` as 1000), then spliced into the text as such. A TOML string
/// (`"…"`, `'…'`) gives its content.
#[test]
fn set_on_a_string_variable_keeps_the_text() {
    let w = Work::new();
    w.write("m.toml", "[vars]\ntag = \"v1.0\"\n[stages.g]\nkind = \"generate\"\nparams = { n = 10 }\nsweep = { t = [\"run-${tag}\"] }\n");
    for (text, node) in [
        ("1.10", "g@t=run-1.10"),
        ("0x1F", "g@t=run-0x1F"),
        ("1e3", "g@t=run-1e3"),
        ("1_000", "g@t=run-1_000"),
        ("true", "g@t=run-true"),
        ("[WIP]", "g@t=run-[WIP]"),
        ("\"1.10\"", "g@t=run-1.10"),
        ("'v2'", "g@t=run-v2"),
        ("\"a b\"", "g@t=run-a b"),
    ] {
        assert_eq!(dag_nodes(&w, &["m.toml", "--set", &format!("tag={text}")]), [node], "{text}");
    }
    refused_in(
        &w,
        &["dag", "m.toml", "--set", "tag=\"C:\\new\"x\""],
        "--set tag=\"C:\\new\"x\": begins and ends with a quote, so it is read as a TOML string, but TOML cannot read it",
    );
}

/// `--set` text is one value: `x=5\nseed=7` set x to 5 and dropped the rest without a word (it was read as the TOML
/// document `v = 5\nseed=7`); a table header or a comment after the value slipped through the same way.
#[test]
fn set_is_one_value_of_one_variable() {
    let w = Work::new();
    w.write(
        "m.toml",
        "[vars]\nx = 1\nseed = 0\ntag = \"t\"\n[stages.g]\nkind = \"generate\"\nparams = { n = \"${x}\", seed = \"${seed}\" }\n",
    );
    for name in ["x", "tag"] {
        for (text, echoed, what) in [
            ("5\nseed=7", "5\\nseed=7", "a newline (after `5`)"),
            ("5\n[x]", "5\\n[x]", "a newline (after `5`)"),
            ("5\r", "5\\r", "a carriage return (after `5`)"),
            ("a\u{1b}[2J", "a\\u{1b}[2J", "the control character U+001B (after `a`)"),
        ] {
            refused_in(
                &w,
                &["status", "m.toml", "--set", &format!("{name}={text}")],
                &format!(
                    "--set {name}={echoed}: the value has {what}: one --set sets one variable (give each its own \
                     --set), and a value with a newline or another control character is written as a TOML string"
                ),
            );
        }
    }
    refused_in(&w, &["status", "m.toml", "--set", "x=5 # five"], "--set x=5 # five: TOML reads 5 and then `# five`");
    refused_in(&w, &["status", "m.toml", "--set", "x=[1,\n2]"], "the value has a newline (after `[1,`)");
    // inside a TOML string, a newline is the string's
    w.ok(&["status", "m.toml", "--set", "tag=\"\"\"two\nlines\"\"\""]);
    w.ok(&["status", "m.toml", "--set", "tag=\"two\\nlines\""]);
}

/// A variable may use other variables: `title = "Study of ${data}"` reached the stage as the literal text, and a typed
/// one (`t = "${u}"`) failed as `invalid type: string "${u}"` at the param. An override flows into the variables that
/// use it.
#[test]
fn variables_use_other_variables() {
    let w = Work::new();
    let m = "[vars]\ndata = \"d.jsonl\"\ntitle = \"Study of ${data}\"\ntitles = [\"${title}\"]\nt = \"${u}\"\nu = 5\n\
             [stages.g]\nkind = \"generate\"\nparams = { n = \"${t}\" }\nsweep = { title = \"${titles}\" }\n";
    w.write("m.toml", m);
    assert_eq!(dag_nodes(&w, &["m.toml"]), ["g@title=Study of d.jsonl"]);
    assert_eq!(
        dag_nodes(&w, &["m.toml", "--set", "data=other.jsonl", "--set", "u=7"]),
        ["g@title=Study of other.jsonl"]
    );
    assert_eq!(dag_nodes(&w, &["m.toml", "--set", "data=${u} files"]), ["g@title=Study of 5 files"]);
    // the typed value reaches the stage's check with its type
    refused_in(&w, &["dag", "m.toml", "--set", "u=0"], "g@title=Study of d.jsonl: param `n`");

    expect_error(
        "[vars]\na = \"${b}\"\nb = \"x-${a}\"\n[stages.g]\nkind = \"generate\"\nparams = { n = \"${a}\" }\n",
        "m.toml:2:5: variable `a`: cycle between variables: a -> b -> a",
    );
    refused_in(
        &w,
        &["dag", "m.toml", "--set", "data=${title}"],
        "--set data=${title}: variable `data`: cycle between variables: data -> title -> data",
    );
    expect_error(
        "[vars]\ntitle = \"Study of ${dta}\"\ndata = \"d\"\n[stages.g]\nkind = \"generate\"\nparams = { n = 5 }\n",
        "m.toml:2:9: variable `title`: `${dta}` names no variable (variables: data, title)",
    );
    expect_error(
        "[vars]\nname = \"at ${rho}\"\n[stages.g]\nkind = \"generate\"\nsweep = { rho = [1] }\nparams = { n = 5 }\n",
        "m.toml:2:8: variable `name`: `${rho}` is a sweep axis (of stage `g`), which a variable cannot use",
    );
    refused_in(
        &w,
        &["dag", "m.toml", "--set", "data=${nope}"],
        "--set data=${nope}: variable `data`: `${nope}` names no variable",
    );
}

/// A `${name}` that names nothing is refused naming it, the node or stage, and the param or sweep.
#[test]
fn references_to_nothing_name_where_they_are() {
    expect_error(
        "[stages.g]\nkind = \"generate\"\nparams = { n = \"${count}\" }\n",
        "m.toml:3:16: g: param `n`: `${count}` names no variable or sweep axis (known: none)",
    );
    expect_error(
        "[vars]\nn = 5\n[stages.g]\nkind = \"generate\"\nsweep = { s = \"${seeds}\" }\nparams = { n = \"${n}\" }\n",
        "m.toml:5:15: g: sweep `s`: `${seeds}` names no variable or sweep axis (known: n)",
    );
}

/// A stage named `--help` made node names a command line reads as options (`node run m.toml --help` printed the help
/// and exited 0); names are also refused past 128 characters.
#[test]
fn stage_names_that_begin_with_a_dash_or_are_too_long() {
    let stage = |name: &str| format!("[stages.{name}]\nkind = \"generate\"\nparams = {{ n = 10 }}\n");
    for name in ["\"--help\"", "-q", "-"] {
        expect_error(
            &stage(name),
            &format!(
                "m.toml:1:9: stage name `{}` begins with `-`: a stage name must begin with a letter, a digit or `_`",
                name.trim_matches('"')
            ),
        );
    }
    let long = "s".repeat(129);
    expect_error(
        &stage(&long),
        &format!("m.toml:1:9: stage name `{long}` is 129 characters long; a stage name may have at most 128"),
    );
    // what is allowed still is
    let w = Work::new();
    let ok = "s".repeat(128);
    w.write("m.toml", &format!("{}{}", stage(&ok), stage("_a-1")));
    assert_eq!(dag_nodes(&w, &["m.toml"]).len(), 2);
}

#[test]
fn a_pipeline_path_that_names_no_pipeline_file_is_called_a_pipeline() {
    expect_error(
        "pipeline = \"nope.toml\"\n",
        "m.toml:1:12: cannot read pipeline nope.toml: No such file or directory (`pipeline` is a path relative to the manifest's directory)",
    );
    expect_error(
        "pipeline = \".\"\n",
        "m.toml:1:12: cannot read pipeline .: not a regular file (a directory): a pipeline is a TOML file",
    );
    expect_error("pipeline = \"\"\n", "m.toml:1:12: `pipeline` is empty: name a pipeline file");
}

/// What parameters require of the inputs is checked when the manifest loads, not when the node runs after its
/// upstream did (a reviewer's finding: each of these failed mid-run with exit 1).
#[test]
fn parameters_that_need_an_input_are_checked_at_load() {
    let policy = |params: &str, inputs: &str| {
        format!(
            "{GEN}[stages.p]\nkind = \"policy\"\ninputs = {{ pairs = \"gen.pairs\", reference = \"gen.pairs\"{inputs} }}\n\
             params = {{ {params} }}\n"
        )
    };
    expect_error(&policy("method = \"p-dpo\"", ""), "p: param `gamma`: p-DPO has a forward-KL term");
    expect_error(
        &policy("method = \"d-dpo\", selection_method = \"d-dpo-oracle\"", ""),
        "p: param `selection_method`: names whose choice a bound `selection` applies, but no `selection` input is bound",
    );
    let label = |params: &str| {
        format!("{GEN}[stages.l]\nkind = \"label\"\ninputs = {{ pairs = \"gen.pairs\" }}\nparams = {{ {params} }}\n")
    };
    expect_error(
        &label("oracle = \"reward_model\""),
        "l: param `oracle`: oracle = \"reward_model\" needs the `oracle` input or the oracle_path param",
    );
    let eval = "[stages.e]\nkind = \"evaluate\"\ninputs = { policy = \"gen.pairs\", reference = \"gen.pairs\", prompts = \"gen.pairs\" }\nparams = { oracle = \"reward_model\" }\n";
    expect_error(
        &format!("{GEN}{eval}"),
        "e: param `oracle`: oracle = \"reward_model\" needs a reward-model checkpoint bound to the `oracle` input",
    );
}

/// An error in a param whose value comes from a variable names where the variable was set: the param may sit in a
/// pipeline the user never edits, and the value to fix is in the manifest or on the command line.
#[test]
fn a_bad_value_from_a_variable_names_where_it_was_set() {
    let w = Work::new();
    w.write("p.toml", "[vars]\nn = 100\ndata = \"d.jsonl\"\n\n[stages.gen]\nkind = \"generate\"\nparams = { n = \"${n}\" }\n\n[stages.imp]\nkind = \"import\"\nparams = { path = \"${data}\" }\n");
    w.write("m.toml", "pipeline = \"p.toml\"\n\n[vars]\nn = -1\n");
    let err = s(&w.run(&["status", "m.toml"]).stderr);
    assert!(err.contains("p.toml:7:16: gen: param `n`:") && err.contains("(`${n}` is set at m.toml:4:5)"), "{err}");
    let err = s(&w.run(&["status", "m.toml", "--set", "n=12", "--set", "data=nope.jsonl"]).stderr);
    assert!(
        err.contains("imp: param `path`: no such file or directory")
            && err.contains("(`${data}` is `--set data=nope.jsonl`)"),
        "{err}"
    );
}
