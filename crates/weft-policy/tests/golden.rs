//! Golden corpus: each `tests/golden/*.hujson` policy compiled against `tailnet.json` must give
//! exactly the per-node filters and visible peers in `*.expected.json`.
//! Regenerate after an intended change with `WEFT_BLESS=1 cargo test -p weft-policy --test golden`
//! and review the diff.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use weft_policy::{check, Snapshot, SnapshotNode};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn tailnet() -> (Snapshot, Vec<(i64, String)>) {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("tailnet.json")).unwrap())
            .unwrap();
    let strs = |x: &Value| -> Vec<String> {
        x.as_array()
            .into_iter()
            .flatten()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let mut snap = Snapshot::default();
    let mut names = Vec::new();
    for n in v["nodes"].as_array().unwrap() {
        let id = n["id"].as_i64().unwrap();
        names.push((id, n["name"].as_str().unwrap().to_string()));
        snap.nodes.push(SnapshotNode {
            id,
            user: n["user"].as_str().map(String::from),
            user_groups: strs(&n["user_groups"]),
            tags: strs(&n["tags"]),
            addresses: strs(&n["addresses"])
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
            approved_routes: strs(&n["approved_routes"])
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
            exit_node: false,
        });
    }
    names.sort();
    (snap, names)
}

#[test]
fn golden_policies_compile_to_the_expected_filters_and_visibility() {
    let (snap, names) = tailnet();
    let name_of = |id: i64| names.iter().find(|(i, _)| *i == id).unwrap().1.clone();
    let bless = std::env::var_os("WEFT_BLESS").is_some();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hujson"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "golden corpus is missing");
    let mut mismatches = Vec::new();
    for case in cases {
        let text = std::fs::read_to_string(&case).unwrap();
        let policy = check(&text, &snap).unwrap_or_else(|e| panic!("{}: {e}", case.display()));
        let compiled = policy.compile(&snap);
        let mut out = serde_json::Map::new();
        for (id, name) in &names {
            let visible: Vec<String> = compiled
                .visible_peers(*id)
                .unwrap()
                .into_iter()
                .map(name_of)
                .collect();
            out.insert(
                name.clone(),
                json!({"filter": compiled.filter_for(*id).unwrap(), "visible": visible}),
            );
        }
        let got = Value::Object(out);
        let expected_path = case.with_extension("expected.json");
        if bless {
            std::fs::write(
                &expected_path,
                serde_json::to_string_pretty(&got).unwrap() + "\n",
            )
            .unwrap();
            continue;
        }
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(&expected_path).unwrap_or_else(|_| {
                panic!("{} missing; run with WEFT_BLESS=1", expected_path.display())
            }),
        )
        .unwrap();
        if got != expected {
            mismatches.push(case.file_name().unwrap().to_string_lossy().to_string());
        }
    }
    assert!(mismatches.is_empty(), "golden mismatches: {mismatches:?}");
}
