//! `rmdistill stages [KIND]` as a user reads it: every kind listed with its parameters, and one kind's parameters in
//! full (type, default, meaning), taken from the stage's own Params struct.

mod common;
use common::*;

#[test]
fn stages_kind_lists_each_parameter_with_type_default_and_meaning() {
    let w = Work::new();
    let all = w.ok(&["stages"]);
    assert!(all.contains("import:") && all.contains("params path, format"), "{all}");
    let import = w.ok(&["stages", "import"]);
    assert!(import.contains("param  limit:") && import.contains("param  skip:"), "{import}");
    assert!(import.contains("param  path: string (required)"), "{import}");
    let policy = w.ok(&["stages", "policy"]);
    assert!(policy.contains("param  beta: number = 0.1"), "{policy}");
    assert!(policy.contains("param  method: \"dpo\" | \"ipo\""), "{policy}");
    let json: serde_json::Value = serde_json::from_str(&w.ok(&["stages", "subsample", "--json"])).unwrap();
    let params = json[0]["params"].as_array().unwrap();
    let rho = params.iter().find(|p| p["name"] == "rho").unwrap();
    assert_eq!(rho["required"], true, "{rho}");
    assert!(params.iter().all(|p| !p["doc"].as_str().unwrap().is_empty()), "every parameter has a meaning: {json}");
    // an unknown kind names the ones that exist
    let o = w.run(&["stages", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(s(&o.stderr).contains("no stage kind `nope`; the kinds are: import"), "{}", s(&o.stderr));
}
