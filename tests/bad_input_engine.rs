//! Every bad input the engine is given is a clear error — exit code 2, a message naming the file, line and column
//! (or the flag) and what was expected, no panic — and nothing is stored. One test per input.

mod common;
use common::*;

const GEN: &str = "[stages.gen]\nkind = \"generate\"\nparams = { n = 100 }\n";

/// Runs `args` in a fresh directory holding `m.toml` = `manifest`; expects exit 2 with every needle in stderr,
/// no panic, and no store written.
fn refused(manifest: &[u8], args: &[&str], needles: &[&str]) {
    let w = Work::new();
    std::fs::write(w.path().join("m.toml"), manifest).unwrap();
    refused_in(&w, args, needles);
}

/// [`refused`] in a directory the caller prepared; the command is killed after a minute (an input that blocks,
/// such as a FIFO, fails the test instead of hanging it).
fn refused_in(w: &Work, args: &[&str], needles: &[&str]) {
    use std::process::Stdio;
    let mut child = w.cmd(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("binary runs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?} still running after 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    let err = s(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: expected `{n}` in:\n{err}");
    }
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{err}");
    assert!(!w.store().join("cache").exists() && blob_files(&w.store()).is_empty(), "{args:?}: something was stored");
}

#[test]
fn gc_grace_that_overflows() {
    for g in ["1000000000000000s", "999999999999999d"] {
        refused(GEN.as_bytes(), &["gc", "m.toml", "--grace", g], &["--grace", g, "longer than the limit of 3650 days"]);
    }
}

#[test]
fn gc_grace_without_a_unit() {
    // "45" would mean seconds here and minutes in a resource time: units are required in both.
    refused(GEN.as_bytes(), &["gc", "m.toml", "--grace", "45"], &["--grace", "\"45\" has no unit"]);
}

#[test]
fn jobs_out_of_range() {
    for j in ["100000", "0"] {
        refused(
            GEN.as_bytes(),
            &["run", "m.toml", "-j", j],
            &["--jobs", "expected a number of nodes to run at once, 1 to 256"],
        );
    }
    refused(
        format!("{GEN}[execution]\njobs = 0\n").as_bytes(),
        &["run", "m.toml"],
        &["m.toml:5:8: [execution] jobs = 0: expected 1 to 256"],
    );
}

#[test]
fn resource_times_that_overflow_or_lack_a_unit() {
    let with = |r: &str| format!("{GEN}resources = {{ {r} }}\n");
    // Reported when the manifest loads, by every command, not only at export.
    for cmd in [vec!["export", "slurm", "m.toml"], vec!["run", "m.toml"]] {
        refused(
            with("time = \"99999999999999999d\"").as_bytes(),
            &cmd,
            &["m.toml:4:22: resources.time: \"99999999999999999d\" is longer than the limit of 3650 days"],
        );
        refused(
            with("time = \"999999999999999999\"").as_bytes(),
            &cmd,
            &["m.toml:4:22: resources.time: \"999999999999999999\" has no unit"],
        );
    }
    refused(
        with("memory = \"99999999999999T\"").as_bytes(),
        &["status", "m.toml"],
        &["m.toml:4:24: resources.memory:"],
    );
    refused(
        with("memory = \"512\"").as_bytes(),
        &["status", "m.toml"],
        &["m.toml:4:24: resources.memory: \"512\" has no unit"],
    );
    refused(with("cpus = 0").as_bytes(), &["status", "m.toml"], &["m.toml:4:22: resources.cpus = 0"]);
}

#[test]
fn generate_with_huge_word_counts() {
    refused(
        b"[stages.gen]\nkind = \"generate\"\nparams = { n = 10, prompt_words = [4294967295, 4294967295] }\n",
        &["run", "m.toml"],
        &["m.toml:3:35: gen: param `prompt_words`: must be [min, max] with 1 <= min <= max <= 10000"],
    );
}

#[test]
fn nan_and_infinity_are_refused_where_they_are_written() {
    refused(
        b"[stages.gen]\nkind = \"generate\"\nparams = { n = 100, longer_preferred = nan }\n",
        &["run", "m.toml"],
        &["m.toml:3:40: stage `gen`: param `longer_preferred`: expected a finite number, got NaN"],
    );
    refused(
        b"[vars]\np = [0.5, -inf]\n[stages.gen]\nkind = \"generate\"\nparams = { n = 100, longer_preferred = \"${p}\" }\n",
        &["status", "m.toml"],
        &["m.toml:2:11: variable `p`: expected a finite number, got -inf"],
    );
    refused(
        b"[vars]\np = 0.5\n[stages.gen]\nkind = \"generate\"\nparams = { n = 100, longer_preferred = \"${p}\" }\n",
        &["run", "m.toml", "--set", "p=inf"],
        &["--set p=inf: expected a finite number, got inf"],
    );
}

#[test]
fn malformed_store_urls() {
    refused(
        GEN.as_bytes(),
        &["run", "m.toml", "--store", "s3:/bucket/x"],
        &["--store", "did you mean `s3://bucket/x`?"],
    );
    refused(
        format!("[store]\nurl = \"s3:/bucket/x\"\n{GEN}").as_bytes(),
        &["run", "m.toml"],
        &["m.toml:2:7: [store] url: store url `s3:/bucket/x` is neither a supported URL"],
    );
    refused(GEN.as_bytes(), &["run", "m.toml", "--store", "http://example.com/x"], &["unsupported scheme `http`"]);
    let w = Work::new();
    w.write("m.toml", GEN);
    let o = w.cmd(&["run", "m.toml"]).env("RMDISTILL_STORE", "gs:bucket").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(s(&o.stderr).contains("RMDISTILL_STORE: store url `gs:bucket`"), "{}", s(&o.stderr));
    assert!(!w.path().join("s3:").exists() && !w.path().join("gs:bucket").exists());
}

/// `/` as the store would put blobs/, cache/ and runs/ at the top of the file system (and `gc` would delete there),
/// a quoted `~/x` made a directory named `~`, and `file://host/x` was read as the relative path host/x: each is
/// refused naming the URL and what was expected. Only `status` is asked of a root store (it writes nothing).
#[test]
fn store_urls_naming_the_root_an_unexpanded_home_or_a_host() {
    for root in ["file:///", "/", "file://localhost/", "//.."] {
        refused(
            GEN.as_bytes(),
            &["status", "m.toml", "--store", root],
            &[&format!("--store: store url `{root}` is the root directory `/`"), "a directory of its own"],
        );
    }
    // `..` enough times reaches `/` too: refused when the store opens
    let up = "../".repeat(64);
    refused(GEN.as_bytes(), &["status", "m.toml", "--store", &up], &["is the root directory `/`"]);

    let w = Work::new();
    w.write("m.toml", GEN);
    refused_in(
        &w,
        &["run", "m.toml", "--store", "~/x"],
        &["--store: store url `~/x` begins with `~`", "the shell", "write $HOME/x"],
    );
    refused_in(&w, &["run", "m.toml", "--store=file://~/x"], &["`file://~/x` begins with `~`", "write file://$HOME/x"]);
    w.write("t.toml", &format!("[store]\nurl = \"~/x\"\n{GEN}"));
    refused_in(&w, &["run", "t.toml"], &["t.toml:2:7: [store] url: store url `~/x` begins with `~`"]);
    assert!(!w.path().join("~").exists(), "a directory named `~` was made");

    for (url, host) in [("file://host/x", "host"), ("file://store", "store")] {
        refused_in(
            &w,
            &["run", "m.toml", "--store", url],
            &[
                &format!("--store: store url `{url}` names the host `{host}`"),
                "the host must be empty or localhost",
                "under the working directory write ./",
            ],
        );
    }
    assert!(!w.path().join("host").exists() && !w.path().join("store").exists());

    // what is meant instead works: a relative path written file://./, and localhost
    let abs = format!("file://localhost{}", w.path().join("abs-store").display());
    w.ok(&["run", "m.toml", "-q", "--store", "file://./host/x"]);
    w.ok(&["run", "m.toml", "-q", "--store", &abs]);
    assert!(w.path().join("host/x/cache").is_dir() && w.path().join("abs-store/cache").is_dir());
}

/// A number no TOML integer holds is named by its key and the range, not "u64 value was too large"; `skip` past what
/// 32-bit record numbers count is refused before work starts, naming the range.
#[test]
fn numbers_out_of_range_name_their_key() {
    let imp =
        |skip: &str| format!("[stages.imp]\nkind = \"import\"\nparams = {{ path = \"d.jsonl\", skip = {skip} }}\n");
    for big in ["18446744073709551615", "9223372036854775808", "99999999999999999999999999999999999999999"] {
        refused(
            imp(big).as_bytes(),
            &["run", "m.toml"],
            &[
                &format!("m.toml:3:37: `skip` = {big}: out of range"),
                "integers in a manifest are -9223372036854775808 to 9223372036854775807",
            ],
        );
    }
    let w = Work::new();
    w.write("d.jsonl", "{\"prompt\": \"p\", \"chosen\": \"a b\", \"rejected\": \"a\"}\n");
    w.write("m.toml", &imp("4294967296"));
    refused_in(
        &w,
        &["run", "m.toml"],
        &["m.toml:3:37: imp: param `skip`: must be 0 to 4294967295 (records are numbered in 32 bits), got 4294967296"],
    );
    refused(
        b"[stages.gen]\nkind = \"generate\"\nparams = { n = 10, prompt_words = [4, 9223372036854775808] }\n",
        &["run", "m.toml"],
        &["m.toml:3:39: 9223372036854775808 (in the list `prompt_words`): out of range"],
    );
    refused(b"[vars]\nx = -1e400\n", &["status", "m.toml"], &["m.toml:2:5: `x` = -1e400: out of range"]);
    // `--set` used to take what TOML could not read as text: a number out of range reached the stage as a string
    // (a type error there, not a range), an unclosed list or quote as other text than was meant
    let vars = b"[vars]\nx = 1\ntitle = \"t\"\n[stages.g]\nkind = \"generate\"\nparams = { n = 10 }\n";
    for (v, needle) in [
        ("99999999999999999999", "written as a TOML number, but TOML cannot read it"),
        ("-1e400", "written as a TOML number, but TOML cannot read it: floating-point number overflowed"),
        ("007", "written as a TOML number, but TOML cannot read it: unexpected leading zero"),
        ("[0, 1", "written as a TOML list, but TOML cannot read it: unclosed array"),
        ("\"text", "written as a TOML string"),
        (".5", "written as a TOML number"),
        ("5.", "written as a TOML number"),
    ] {
        let set = format!("x={v}");
        refused(
            vars,
            &["status", "m.toml", "--set", &set],
            &[&format!("--set {set}: {needle}"), "quote it as a TOML string"],
        );
    }
    // text that is not written as one of them is still taken as a string
    let w = Work::new();
    w.write("m.toml", std::str::from_utf8(vars).unwrap());
    for v in ["2024-data.jsonl", "1.5.3", "abc", "0x1F", "1_000", "0b1c2d3", "1e-3", "+1", "12:30"] {
        w.ok(&["status", "m.toml", "--set", &format!("x={v}")]);
    }
    // and a variable whose manifest value is a string takes any text
    for v in ["[WIP] length bias", "{draft}", "007", "\"quoted"] {
        w.ok(&["status", "m.toml", "--set", &format!("title={v}")]);
    }
}

/// Runs `m.toml` in `w`; expects the node to fail (exit 1) with every needle in stderr, no panic, no cache entry.
fn node_fails(w: &Work, needles: &[&str]) {
    let o = w.run(&["run", "m.toml", "-j", "1"]);
    let err = s(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    for n in needles {
        assert!(err.contains(n), "expected `{n}` in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(entries(&w.store()).iter().all(|e| e["node"] != "imp" && e["node"] != "sub"), "the failed node was stored");
}

/// A record that gives a key twice was imported with the last value (another reader takes the first): refused
/// naming the file, the line and the key; with `on_invalid = "skip"` it is left out and counted.
#[test]
fn an_import_record_with_a_key_twice() {
    let w = Work::new();
    w.write(
        "d.jsonl",
        "{\"prompt\": \"p\", \"chosen\": \"a b c\", \"rejected\": \"a\"}\n{\"prompt\": \"a\", \"prompt\": \"b\", \"chosen\": \"x y z\", \"rejected\": \"x\"}\n",
    );
    w.write("m.toml", "[stages.imp]\nkind = \"import\"\nparams = { path = \"d.jsonl\" }\n");
    node_fails(&w, &["imp failed: `prompt`: d.jsonl line 2: `prompt` is given twice", "give each key once"]);
    w.write("m.toml", "[stages.imp]\nkind = \"import\"\nparams = { path = \"d.jsonl\", on_invalid = \"skip\" }\n");
    // The skip is a warning: shown under `--quiet` too, counted in the summary, and kept with the node's entry
    let o = w.run(&["run", "m.toml", "-q"]);
    let err = s(&o.stderr);
    assert!(o.status.success(), "{err}");
    let warning = "warning: imp: d.jsonl: skipped 1 invalid records (1 on `prompt`); the first: prompt: d.jsonl line 2: `prompt` is given twice";
    assert!(err.contains(warning) && err.contains("1 warning(s) from imp, shown above"), "{err}");
    assert!(!err.contains("records → 1 pairs"), "-q shows no log lines: {err}");
    let o = w.run(&["run", "m.toml", "--json"]);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["cached"], 1, "{summary}");
    let o = w.run(&["show", "m.toml", "imp", "--json"]);
    assert!(o.status.success() && serde_json::from_slice::<serde_json::Value>(&o.stdout).is_ok());
    assert!(s(&o.stderr).contains("warning: imp.pairs: d.jsonl: skipped 1 invalid records"), "{}", s(&o.stderr));
    let o = w.run(&["run", "m.toml", "--force", "imp", "--json"]);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let warnings = &summary["nodes"].as_array().unwrap().iter().find(|n| n["node"] == "imp").unwrap()["warnings"];
    assert!(warnings[0].as_str().unwrap().starts_with("d.jsonl: skipped 1 invalid records"), "{summary}");
    assert!(s(&o.stderr).contains(warning), "--json keeps the warning on stderr");
}

/// A `label_column` that is not a column, or not one of labels, is named as the param, with the value given, the
/// input it was looked for in (by its node, not its path in the store) and the columns there are.
#[test]
fn subsample_label_column_that_is_not_a_label_column() {
    let w = Work::new();
    let m = |col: &str| {
        format!(
            "{GEN}[stages.sub]\nkind = \"subsample\"\ninputs = {{ pairs = \"gen.pairs\" }}\nparams = {{ rho = 0.5, size = 10, label_column = \"{col}\" }}\n"
        )
    };
    w.write("m.toml", &m("oracle_label"));
    node_fails(
        &w,
        &[
            "sub failed: param `label_column`: \"oracle_label\" is not a column of input `pairs` (from gen); its columns: \
         pair_id, prompt, response_a, response_b, label, words_a, words_b, tokens_a, tokens_b, source_row",
        ],
    );
    w.write("m.toml", &m("prompt"));
    node_fails(
        &w,
        &[
            "sub failed: param `label_column`: \"prompt\" is a column of Utf8 values in input `pairs` (from gen), not of labels",
            "its integer columns: label, words_a, words_b, tokens_a, tokens_b, source_row",
        ],
    );
    let o = w.run(&["run", "m.toml"]);
    assert!(!s(&o.stderr).contains("/blobs/"), "a path in the store: {}", s(&o.stderr));
}

#[test]
fn sweep_values_that_would_name_one_node_twice() {
    let m = format!(
        "{GEN}[stages.sub]\nkind = \"subsample\"\ninputs = {{ pairs = \"gen.pairs\" }}\nsweep = {{ x = [\"1\", 1] }}\nparams = {{ rho = 0.5, size = 10 }}\n"
    );
    refused(
        m.as_bytes(),
        &["run", "m.toml"],
        &["m.toml:7:15: sweep `x` lists \"1\" and 1, which name the same node `1`"],
    );
    // Values that spell another point's name through `,` and `=`.
    let m = format!(
        "{GEN}[stages.sub]\nkind = \"subsample\"\ninputs = {{ pairs = \"gen.pairs\" }}\nsweep = {{ x = [\"1,y=2\", \"1\"], y = [\"2,y=2\", \"2\"] }}\nparams = {{ rho = 0.5, size = 10 }}\n"
    );
    refused(m.as_bytes(), &["run", "m.toml"], &["m.toml:7:", "are both named `sub@x=1,y=2,y=2`"]);
}

#[test]
fn a_manifest_that_is_not_utf8() {
    let mut m = b"description = \"caf".to_vec();
    m.push(0xe9); // Latin-1 é
    m.extend_from_slice(b"\"\n");
    m.extend_from_slice(GEN.as_bytes());
    refused(&m, &["run", "m.toml"], &["m.toml:1:19: byte 0xe9 is not UTF-8"]);
}

#[test]
fn execution_device_errors_name_the_line() {
    refused(
        format!("{GEN}[execution]\ndevice = \"tpu\"\n").as_bytes(),
        &["run", "m.toml"],
        &["m.toml:5:10: [execution] device = \"tpu\": expected one of auto, cpu, cuda, gpu"],
    );
}

#[test]
fn a_deeply_nested_table_header_is_located() {
    let header = format!("[{}]\nx = 1\n", vec!["a"; 200].join("."));
    refused(format!("{GEN}\n{header}").as_bytes(), &["run", "m.toml"], &["m.toml:5:1:", "nest 200 levels deep"]);
}

#[test]
fn two_manifests_with_one_file_name_keep_separate_histories() {
    // a/m.toml and b/m.toml share a store: b's first status must not explain itself by a's last run.
    let w = Work::new();
    let m = gen_manifest(2000);
    w.write("a/m.toml", &m);
    w.write("b/m.toml", &m.replace("size = 300", "size = 250"));
    let store = format!("file://{}", w.path().join("shared-store").display());
    w.ok(&["run", "a/m.toml", "--store", &store, "-q", "sub"]);
    let st = w.ok(&["status", "b/m.toml", "--store", &store]);
    assert!(!st.contains("params.size changed"), "b/m.toml saw a/m.toml's history:\n{st}");
    assert!(st.contains("run      sub@rho=0.2,seed=0\n           no run of this manifest has stored it yet"), "{st}");
    // Each keeps its own: a/m.toml edited says what changed against its own last run.
    w.ok(&["run", "b/m.toml", "--store", &store, "-q", "sub"]);
    let st = w.ok(&["status", "a/m.toml", "--store", &store, "--set", "size=200"]);
    assert!(st.contains("params.size changed: 300 -> 200"), "{st}");
}

/// Makes a FIFO at `path` (opening one for reading waits for a writer).
fn mkfifo(path: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo {}", path.display());
}

#[test]
fn a_manifest_that_is_not_a_regular_file() {
    // /dev/zero would be read forever, a FIFO would block, a directory reads as an error that says less.
    let w = Work::new();
    mkfifo(&w.path().join("fifo.toml"));
    std::fs::create_dir(w.path().join("dir.toml")).unwrap();
    refused_in(&w, &["status", "/dev/zero"], &["manifest /dev/zero: not a regular file (a character device)"]);
    refused_in(&w, &["status", "fifo.toml"], &["manifest fifo.toml: not a regular file (a FIFO)"]);
    refused_in(&w, &["run", "dir.toml"], &["manifest dir.toml: not a regular file (a directory)"]);
    // A pipeline named by a manifest: the error is located at its `pipeline = ...`.
    for (p, kind) in [("/dev/zero", "a character device"), ("fifo.toml", "a FIFO"), ("dir.toml", "a directory")] {
        w.write("m.toml", &format!("pipeline = \"{p}\"\n"));
        refused_in(&w, &["status", "m.toml"], &["m.toml:1:12:", "not a regular file", kind]);
    }
}

#[test]
fn a_manifest_too_large_to_be_one() {
    let w = Work::new();
    let f = std::fs::File::create(w.path().join("big.toml")).unwrap();
    f.set_len((16 << 20) + 1).unwrap(); // sparse: no disk used
    refused_in(&w, &["status", "big.toml"], &["manifest big.toml: 16777217 bytes is larger than the limit of 16 MiB"]);
    w.write("m.toml", "pipeline = \"big.toml\"\n");
    refused_in(&w, &["status", "m.toml"], &["m.toml:1:12:", "16777217 bytes is larger than the limit of 16 MiB"]);
}

#[test]
fn import_model_inputs_that_are_not_files() {
    // The worker reads the GGUF: /dev/zero would be read until memory runs out, a FIFO would block.
    let w = Work::new();
    mkfifo(&w.path().join("fifo.gguf"));
    refused_in(&w, &["import-model", "/dev/zero", "-o", "o1"], &["/dev/zero: not a regular file"]);
    refused_in(&w, &["import-model", "fifo.gguf", "-o", "o2"], &["fifo.gguf: not a regular file"]);
    assert!(!w.path().join("o1").exists() && !w.path().join("o2").exists());
    // An output that is a file is named, before the worker starts.
    w.write("out.txt", "x");
    refused_in(&w, &["import-model", "/dev/zero", "-o", "out.txt"], &["import-model -o out.txt: not a directory"]);
}

#[test]
fn import_model_worker_killed_by_a_signal() {
    // A worker killed (the kernel's OOM killer) writes nothing: the signal is named, and the exit code is 1.
    let w = Work::new();
    let worker = w.write("worker.sh", "#!/bin/sh\nkill -9 $$\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = w.cmd(&["import-model", "x.gguf", "-o", "o"]).env("RMDISTILL_WORKER", &worker).output().unwrap();
    let err = s(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("rmdistill-worker was killed by SIGKILL (9): out of memory? see dmesg"), "{err}");
}

#[test]
fn report_node_that_is_not_a_report() {
    refused(
        GEN.as_bytes(),
        &["report", "m.toml", "--node", "gen"],
        &["node `gen` is a `generate` node, not a report; report nodes in this manifest: none"],
    );
    let m = format!("{GEN}[stages.rep]\nkind = \"report\"\ninputs = {{ evals = \"gen.pairs\" }}\n");
    refused(
        m.as_bytes(),
        &["report", "m.toml", "--node", "gen", "-o", "x"],
        &["node `gen` is a `generate` node, not a report; report nodes in this manifest: rep"],
    );
}

#[test]
fn a_sweep_too_large_to_expand() {
    // 300^3 = 27M nodes: counted before any is made (made, they would take gigabytes).
    let values: Vec<String> = (0..300).map(|i| i.to_string()).collect();
    let m = format!(
        "[vars]\na = [{}]\n{GEN}[stages.sub]\nkind = \"subsample\"\ninputs = {{ pairs = \"gen.pairs\" }}\nsweep = {{ x = \"${{a}}\", y = \"${{a}}\", z = \"${{a}}\" }}\nparams = {{ rho = 0.5, size = 5, seed = \"${{x}}\" }}\n",
        values.join(", ")
    );
    refused(
        m.as_bytes(),
        &["status", "m.toml"],
        &[
            "m.toml:9:11: stage `sub`: its sweep expands to 27000000 nodes (300 `x` × 300 `y` × 300 `z`)",
            "a plan may have at most 1000000 nodes",
        ],
    );
}

#[test]
fn a_quiet_run_names_each_failure_once() {
    // Written when it happens; the summary at the end does not repeat it.
    let w = Work::new();
    w.write(
        "m.toml",
        &format!(
            "{GEN}[stages.sub]\nkind = \"subsample\"\ninputs = {{ pairs = \"gen.pairs\" }}\nparams = {{ rho = 0.0, size = 1000 }}\n"
        ),
    );
    let o = w.run(&["run", "m.toml", "-q", "-j", "1"]);
    let err = s(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.matches("error: sub failed:").count(), 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_data_path_that_is_a_symbolic_link_loop() {
    // ELOOP was reported as "no such file or directory"; a link to a missing target is named as a link.
    let w = Work::new();
    std::os::unix::fs::symlink("loop1", w.path().join("loop2")).unwrap();
    std::os::unix::fs::symlink("loop2", w.path().join("loop1")).unwrap();
    std::os::unix::fs::symlink("gone.jsonl", w.path().join("dangling.jsonl")).unwrap();
    w.write("m.toml", "[stages.imp]\nkind = \"import\"\nparams = { path = \"loop1\" }\n");
    refused_in(
        &w,
        &["run", "m.toml"],
        &["m.toml:3:", "imp: param `path`: a symbolic link that loops (too many levels of symbolic links): loop1"],
    );
    w.write("m.toml", "[stages.imp]\nkind = \"import\"\nparams = { path = \"dangling.jsonl\" }\n");
    refused_in(
        &w,
        &["run", "m.toml"],
        &["imp: param `path`: a symbolic link to gone.jsonl, which does not exist: dangling.jsonl"],
    );
}

#[test]
fn a_data_path_with_control_characters_is_shown_escaped() {
    // A path param holding a newline and an escape sequence was echoed raw: the terminal took `ESC[31m` as a colour
    // and the message broke across lines.
    let w = Work::new();
    w.write("m.toml", "[stages.imp]\nkind = \"import\"\nparams = { path = \"no\\nsuch\\u001b[31mRED\" }\n");
    refused_in(&w, &["run", "m.toml"], &["imp: param `path`: no such file or directory: no\\nsuch\\u{1b}[31mRED"]);
    let err = s(&w.run(&["run", "m.toml"]).stderr);
    assert!(!err.contains('\u{1b}') && err.trim_end().lines().count() == 1, "{err:?}");
}

#[test]
fn a_huge_argument_is_not_echoed_in_full() {
    // A 100,000-character node name was repeated back whole in the error (100 KB on stderr).
    let long = "x".repeat(100_000);
    let clipped = format!("`{}…` (100000 characters)", "x".repeat(200));
    let set = format!("{long}=1");
    let set_clipped =
        format!("--set {}… (100002 characters): the manifest declares no variable {clipped}", "x".repeat(200));
    // An argument the command-line parser refuses (`status` takes no node), quoted in its message.
    let parser_clipped = format!("unexpected argument '{}… (100002 characters)", "x".repeat(199));
    for (args, needle) in [
        (vec!["show", "m.toml", long.as_str()], &clipped),
        (vec!["explain", "m.toml", long.as_str()], &clipped),
        (vec!["node", "run", "m.toml", long.as_str()], &clipped),
        (vec!["run", "m.toml", long.as_str()], &clipped),
        (vec!["run", "m.toml", "--force", long.as_str()], &clipped),
        (vec!["status", "m.toml", long.as_str()], &parser_clipped),
        (vec!["report", "m.toml", "--node", long.as_str()], &clipped),
        (vec!["stages", long.as_str()], &clipped),
        (vec!["status", "m.toml", "--set", set.as_str()], &set_clipped),
    ] {
        let w = Work::new();
        w.write("m.toml", GEN);
        let o = w.run(&args);
        let err = s(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{:?}: {err}", &args[..2]);
        assert!(err.contains(needle.as_str()) && err.len() < 1000, "{:?}: {} bytes: {err}", &args[..2], err.len());
    }
    // A short one is echoed whole, as before.
    refused(GEN.as_bytes(), &["show", "m.toml", "nope"], &["`nope` is neither a node"]);
}

#[test]
fn show_takes_a_blob_hash_prefix_in_either_case() {
    let w = Work::new();
    w.write("m.toml", GEN);
    w.ok(&["run", "m.toml"]);
    let (hash, _) = blob_files(&w.store()).into_iter().next().expect("a blob");
    let lower = w.ok(&["show", "m.toml", &hash[..8]]);
    assert!(lower.starts_with(&hash), "{lower}");
    // Hashes are lower-case hex: an upper-case prefix matched no blob.
    assert_eq!(w.ok(&["show", "m.toml", &hash[..8].to_ascii_uppercase()]), lower);
    assert_eq!(w.ok(&["show", "m.toml", &hash.to_ascii_uppercase()]), lower);
    // A character that is not a hex digit is named.
    let bad = format!("{}g", &hash[..8]);
    let o = w.run(&["show", "m.toml", &bad]);
    let err = s(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("`{bad}` is neither a node"))
            && err.contains("`g`, character 9 of it, is not a hex digit"),
        "{err}"
    );
}
