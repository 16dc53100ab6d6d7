//! The store on S3, against a real S3 API server on loopback (moto's server mode, installed by scripts/setup.sh).

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One raw HTTP/1.1 request (moto accepts unsigned requests); returns the status code.
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    Ok(resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0))
}

/// The S3 tests run one at a time: each starts its own server on a port picked just before, and two servers racing
/// for one port would make a test talk to the other's server.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn start_moto() -> Option<Moto> {
    let bin = repo().join(".venv/bin/moto_server");
    if !bin.exists() {
        assert!(std::env::var_os("CI").is_none(), "{} is missing: scripts/setup.sh installs it", bin.display());
        eprintln!("skipping: {} is missing (run scripts/setup.sh)", bin.display());
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let moto = Moto { child, port };
    let t = Instant::now();
    while !matches!(http(port, "GET", "/", b""), Ok(200..=499)) {
        assert!(t.elapsed() < Duration::from_secs(30), "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(moto)
}

fn s3_cmd(w: &Work, port: u16, args: &[&str]) -> Command {
    let mut c = w.cmd(args);
    c.env("AWS_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("RMDISTILL_STORE_RETRIES", "2");
    c
}

fn json_ok(mut c: Command) -> serde_json::Value {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}\n{}", s(&o.stdout), s(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Writes object `key` of bucket `rmd-test` behind the store's back (boto3), its body a Python bytes expression.
fn put_object(port: u16, key: &str, body: &str) {
    let put = Command::new(repo().join(".venv/bin/python"))
        .args(["-c", &format!(
            "import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:{port}', region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing').put_object(Bucket='rmd-test', Key='{key}', Body={body})"
        )])
        .output()
        .unwrap();
    assert!(put.status.success(), "{}", s(&put.stderr));
}

#[test]
fn a_pipeline_on_s3_caches_resumes_and_detects_corruption() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(moto) = start_moto() else { return };
    let port = moto.port;
    assert_eq!(http(port, "PUT", "/rmd-test", b"").unwrap(), 200);
    let url = "s3://rmd-test/team/exp1";
    let w = Work::new();
    w.write("m.toml", &gen_manifest(3000));

    let first = json_ok(s3_cmd(&w, port, &["run", "m.toml", "--store", url, "--json"]));
    assert_eq!(first["ran"], 25);
    assert!(!w.store().exists(), "nothing may be written to the local default store");
    // Content addressing: the same bytes as a local run.
    let local = Work::new();
    local.write("m.toml", &gen_manifest(3000));
    assert_eq!(output_hashes(&local.run_json(&["m.toml"])), output_hashes(&first));

    // A second machine (a fresh working directory, empty read cache) sees everything cached.
    let other = Work::new();
    other.write("m.toml", &gen_manifest(3000));
    let again = json_ok(s3_cmd(&other, port, &["run", "m.toml", "--store", url, "--json"]));
    assert_eq!(again["ran"], 0);
    assert_eq!(again["cached"], 25);

    // Two runners at once on S3 for a changed sweep value: both succeed with the same results.
    let spawn = |wd: &Work| {
        s3_cmd(wd, port, &["run", "m.toml", "--store", url, "--json", "--set", "rhos=[0.3]"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(&w), spawn(&other));
    let (oa, ob) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(oa.status.success() && ob.status.success(), "{}\n{}", s(&oa.stderr), s(&ob.stderr));
    let (sa, sb): (serde_json::Value, serde_json::Value) =
        (serde_json::from_slice(&oa.stdout).unwrap(), serde_json::from_slice(&ob.stdout).unwrap());
    assert_eq!(output_hashes(&sa), output_hashes(&sb));

    // Overwrite gen's output blob in the bucket with other bytes: the next reader notices and gen runs again.
    let gen_hash = output_hashes(&first)["gen"]["pairs"].clone();
    let key = format!("team/exp1/blobs/{}/{gen_hash}", &gen_hash[..2]);
    put_object(port, &key, "b'not the bytes you are looking for'");
    let fresh = Work::new();
    fresh.write("m.toml", &gen_manifest(3000));
    let o = s3_cmd(&fresh, port, &["run", "m.toml", "--store", url, "--json", "--set", "size=250"]).output().unwrap();
    assert!(o.status.success(), "{}\n{}", s(&o.stdout), s(&o.stderr));
    assert!(s(&o.stderr).contains(&format!("corrupt blob {gen_hash}")), "{}", s(&o.stderr));
    let fixed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(nodes_with(&fixed, "ran").contains(&"gen".to_string()));
    let st = s3_cmd(&fresh, port, &["status", "m.toml", "--store", url, "--set", "size=250"]).output().unwrap();
    assert!(s(&st.stdout).contains("25 cached, 0 would run"), "{}", s(&st.stdout));

    // A leaf's blob written again with as many bytes: a machine that saw it intact (the one that uploaded it)
    // notices its ETag changed and runs the node again instead of counting a hit; before, every run said cached.
    let node =
        first["nodes"].as_array().unwrap().iter().find(|n| n["node"] == "member@member=0.2,rho=0.2,seed=0").unwrap();
    let (leaf, size) =
        (node["outputs"]["dataset"]["hash"].as_str().unwrap(), node["outputs"]["dataset"]["size"].as_u64().unwrap());
    let key = format!("team/exp1/blobs/{}/{leaf}", &leaf[..2]);
    put_object(port, &key, &format!("b'x' * {size}"));
    let st = s3_cmd(&w, port, &["status", "m.toml", "--store", url]).output().unwrap();
    assert!(
        s(&st.stdout).contains("run      member@member=0.2,rho=0.2,seed=0"),
        "{}\n{}",
        s(&st.stdout),
        s(&st.stderr)
    );
    assert!(s(&st.stdout).contains("was written again since this machine saw it intact"), "{}", s(&st.stdout));
    // a machine that never saw it checks sizes only, and counts a hit; `show` downloads and hashes it, refuses it
    // and removes it, so that the next run computes it again
    let leaf_node = "member@member=0.2,rho=0.2,seed=0";
    let o = s3_cmd(&fresh, port, &["show", "m.toml", leaf_node, "--store", url]).output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", s(&o.stderr));
    assert!(s(&o.stderr).contains("removed from the store: `rmdistill run` recomputes it"), "{}", s(&o.stderr));
    let again = json_ok(s3_cmd(&w, port, &["run", "m.toml", "--store", url, "--json"]));
    assert_eq!(nodes_with(&again, "ran"), [leaf_node]);
    assert_eq!(output_hashes(&again), output_hashes(&first));

    // A bucket that does not exist is a clear store error (exit 3), not a panic.
    let o = s3_cmd(&fresh, port, &["run", "m.toml", "--store", "s3://no-such-bucket/x"]).output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", s(&o.stderr));
    assert!(s(&o.stderr).contains("no-such-bucket"), "{}", s(&o.stderr));
    assert!(!s(&o.stderr).contains("testing"), "credentials must never be printed: {}", s(&o.stderr));
    // … for the commands that only read, too: before, `status` said "0 cached, 25 would run" and `show` "no stored
    // result … run it first", as if the bucket were an empty store
    for args in [&["status", "m.toml"][..], &["show", "m.toml", "gen"], &["explain", "m.toml", "gen"]] {
        let o = s3_cmd(&fresh, port, &[args, &["--store", "s3://no-such-bucket/x"]].concat()).output().unwrap();
        assert_eq!(o.status.code(), Some(3), "{args:?}: {}", s(&o.stderr));
        assert!(s(&o.stderr).contains("the bucket does not exist"), "{args:?}: {}", s(&o.stderr));
    }
}

/// A TCP proxy in front of the S3 server that answers every `fail_every`-th connection with 503 and closes it.
fn flaky_proxy(upstream: u16, fail_every: usize) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let failed = std::sync::Arc::new(AtomicUsize::new(0));
    let f = failed.clone();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut client) = conn else { continue };
            if n % fail_every == fail_every - 1 {
                f.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = client.set_read_timeout(Some(Duration::from_millis(200)));
                let _ = client.read(&mut buf);
                let _ = client
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            }
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut c1, mut s1) = (client, server);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c1, &mut s1);
                let _ = s1.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (port, failed)
}

#[test]
fn a_flaky_server_is_retried_and_large_artifacts_go_up_in_parts() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(moto) = start_moto() else { return };
    let (port, failed) = flaky_proxy(moto.port, 3);
    let mk = Command::new(repo().join(".venv/bin/python"))
        .args(["-c", &format!("import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:{}', region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing').create_bucket(Bucket='rmd-flaky')", moto.port)])
        .output()
        .unwrap();
    assert!(mk.status.success(), "{}", s(&mk.stderr));
    let w = Work::new();
    // 300k generated pairs make a Parquet artifact above the 16 MiB multipart threshold.
    w.write(
        "m.toml",
        &gen_manifest(300_000)
            .replace("rhos = [0.2, 0.5, 0.8]", "rhos = [0.5]")
            .replace("members = [0.2, 0.5, 0.8]", "members = [0.5]"),
    );
    let mut c = s3_cmd(&w, port, &["run", "m.toml", "--store", "s3://rmd-flaky/p", "--json"]);
    c.env("RMDISTILL_STORE_RETRIES", "10");
    let first = json_ok(c);
    assert_eq!(first["failed"], 0);
    let gen_node = first["nodes"].as_array().unwrap().iter().find(|n| n["node"] == "gen").unwrap().clone();
    assert!(gen_node["outputs"]["pairs"]["size"].as_u64().unwrap() > 16 << 20, "{gen_node}");
    assert!(failed.load(std::sync::atomic::Ordering::SeqCst) > 0, "the proxy failed no request");
    // Read back through the flaky proxy from a fresh working directory (no local read cache).
    let other = Work::new();
    other.write(
        "m.toml",
        &gen_manifest(300_000)
            .replace("rhos = [0.2, 0.5, 0.8]", "rhos = [0.5]")
            .replace("members = [0.2, 0.5, 0.8]", "members = [0.5]"),
    );
    let mut c = s3_cmd(&other, port, &["run", "m.toml", "--store", "s3://rmd-flaky/p", "--json", "--set", "size=250"]);
    c.env("RMDISTILL_STORE_RETRIES", "10");
    let second = json_ok(c);
    assert_eq!(second["failed"], 0);
    assert_eq!(nodes_with(&second, "cached"), vec!["gen".to_string()]);
}

#[test]
fn failed_attempts_of_an_exported_run_are_recorded_on_s3_and_end_a_wait_that_cannot_end() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(moto) = start_moto() else { return };
    let port = moto.port;
    assert_eq!(http(port, "PUT", "/rmd-k8s", b"").unwrap(), 200);
    let url = "s3://rmd-k8s/exp";
    let w = Work::new();
    w.write("d.jsonl", "not json\n");
    w.write(
        "m.toml",
        "[stages.imp]\nkind = \"import\"\nparams = { path = \"d.jsonl\" }\n\n\
         [stages.sub]\nkind = \"subsample\"\ninputs = { pairs = \"imp.pairs\" }\nparams = { rho = 0.5, size = 10, seed = 0 }\n",
    );
    // what an exported Job's pod runs (`export k8s --backoff-limit 1 --run-id r1`), as attempt `pod`
    let node_run = |node: &str, pod: &str| {
        let mut c =
            s3_cmd(&w, port, &["node", "run", "--store", url, "--run-id", "r1", "--attempts", "2", "m.toml", node]);
        c.env("RMDISTILL_ATTEMPT", pod);
        c
    };
    let o = node_run("imp", "imp-1").output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", s(&o.stderr));
    let o = node_run("sub", "sub-1").output().unwrap();
    assert_eq!(o.status.code(), Some(4), "1 of 2 attempts failed: not yet, not never\n{}", s(&o.stderr));

    // The second attempt fails too; its wrapper's record of the same attempt (it saw exit code 1) adds nothing.
    let o = node_run("imp", "imp-2").output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", s(&o.stderr));
    let o = node_run("imp", "imp-2").env("RMDISTILL_RECORD_EXIT", "1").output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", s(&o.stderr));
    let o = node_run("sub", "sub-2").output().unwrap();
    let err = s(&o.stderr);
    assert_eq!(o.status.code(), Some(5), "{err}");
    assert!(
        err.contains("upstream node imp will not be stored in run r1: all 2 attempts of its Job failed")
            && err.contains("not JSONL"),
        "{err}"
    );
    // A third attempt of imp in r1 can only come from the same export applied again: refused, saying so.
    let o = node_run("imp", "imp-3").output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", s(&o.stderr));
    assert!(
        s(&o.stderr).contains("node imp ran out of attempts in run r1 already")
            && s(&o.stderr).contains("export again for a new run"),
        "{}",
        s(&o.stderr)
    );
    // another run of the same manifest and store does not count r1's attempts
    let mut c =
        s3_cmd(&w, port, &["node", "run", "--store", url, "--run-id", "r2", "--attempts", "2", "m.toml", "sub"]);
    let o = c.env("RMDISTILL_ATTEMPT", "sub-3").output().unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", s(&o.stderr));
}
