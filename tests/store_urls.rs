//! Object-store URLs are taken exactly as written or refused: a prefix that a URL parser or an object store would
//! rewrite (`..`, `.`, `//`, a query, a fragment, a percent-escape, a space) is an error naming the URL, the part
//! and what is expected, from `--store`, RMDISTILL_STORE and a manifest's `[store] url` alike — before anything is
//! read or written.

mod common;
use common::*;

const M: &str = "[stages.gen]\nkind = \"generate\"\nparams = { n = 10 }\n";

#[test]
fn object_store_urls_that_would_be_rewritten_are_refused_wherever_they_come_from() {
    let w = Work::new();
    w.write("m.toml", M);
    for (url, needle) in [
        ("gs://b/a/../../../etc", " has the segment `..` in its prefix `a/../../../etc`"),
        ("s3://b/%2e%2e/x", " has the percent-escape `%2e`"),
        ("az://c/a//b", " has an empty segment (`//`) in its prefix `a//b`"),
        ("gs://b/a/./b", " has the segment `.` in its prefix `a/./b`"),
        ("s3://b/x?y=1", " has a query (`?y=1`)"),
        ("gs://b/x#frag", " has a fragment (`#frag`)"),
        ("gs://b/my prefix", ": the prefix segment `my prefix` holds a space"),
    ] {
        let o = w.run(&["status", "m.toml", "--store", url]);
        assert_eq!(o.status.code(), Some(2), "{url}: {}", s(&o.stderr));
        assert!(s(&o.stderr).contains(&format!("--store: store url `{url}`{needle}")), "{url}: {}", s(&o.stderr));
        let o = w.cmd(&["status", "m.toml"]).env("RMDISTILL_STORE", url).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{url}: {}", s(&o.stderr));
        assert!(s(&o.stderr).contains(&format!("RMDISTILL_STORE: store url `{url}`{needle}")), "{}", s(&o.stderr));
        w.write("u.toml", &format!("{M}\n[store]\nurl = {url:?}\n"));
        let o = w.run(&["status", "u.toml"]);
        assert_eq!(o.status.code(), Some(2), "{url}: {}", s(&o.stderr));
        assert!(s(&o.stderr).contains(&format!("store url `{url}`{needle}")), "{url}: {}", s(&o.stderr));
    }
    assert!(!w.path().join(".rmdistill").exists(), "nothing was written");
}
