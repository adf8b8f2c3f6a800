//! Developer tool: compares our compiled filters with captures of Tailscale's control server
//! (the JSON capture format used by Headscale's policy compatibility tests). Point it at a
//! directory of capture files; data is not part of this repository.
//!
//!     cargo run -p weft-policy --example tscap_compare -- DIR [-v]

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use weft_policy::{Policy, Snapshot, SnapshotNode};

fn load(path: &std::path::Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    let body: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    serde_json::from_str(&body).ok()
}

type Atom = (Vec<i64>, String, String, u64, u64);

fn atoms(rules: &Value) -> BTreeSet<Atom> {
    let mut out = BTreeSet::new();
    let Some(rules) = rules.as_array() else {
        return out;
    };
    for r in rules {
        if r.get("CapGrant").is_some_and(|c| !c.is_null()) {
            continue;
        }
        let mut protos: Vec<i64> = r["IPProto"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default();
        protos.sort();
        let mut srcs: Vec<String> = r["SrcIPs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        srcs.sort();
        let srcs = srcs.join(",");
        for d in r["DstPorts"].as_array().into_iter().flatten() {
            out.insert((
                protos.clone(),
                srcs.clone(),
                d["IP"].as_str().unwrap_or("").to_string(),
                d["Ports"]["First"].as_u64().unwrap_or(0),
                d["Ports"]["Last"].as_u64().unwrap_or(0),
            ));
        }
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).expect("usage: tscap_compare DIR [-v]");
    let verbose = args.iter().any(|a| a == "-v");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "hujson" || e == "json"))
        .collect();
    files.sort();
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    for f in files {
        let Some(d) = load(&f) else {
            *tally.entry("unreadable").or_default() += 1;
            continue;
        };
        let id = d["test_id"].as_str().unwrap_or("?").to_string();
        let pol = match &d["input"]["full_policy"] {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            v => v.to_string(),
        };
        let code = d["input"]["api_response_code"].as_i64().unwrap_or(200);
        let users: BTreeMap<String, String> = d["topology"]["users"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|u| {
                (
                    u["name"].as_str().unwrap_or("").to_string(),
                    u["email"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let mut names = BTreeMap::new();
        let mut snap = Snapshot::default();
        for (i, (name, n)) in d["topology"]["nodes"]
            .as_object()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let id = i as i64 + 1;
            names.insert(id, name.clone());
            let strs = |v: &Value| -> Vec<String> {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            };
            let tags = strs(&n["tags"]);
            let mut addresses = Vec::new();
            for k in ["ipv4", "ipv6"] {
                if let Some(a) = n[k].as_str().and_then(|s| s.parse().ok()) {
                    addresses.push(a);
                }
            }
            snap.nodes.push(SnapshotNode {
                id,
                user: n["user"]
                    .as_str()
                    .map(|u| users.get(u).cloned().unwrap_or_else(|| u.to_string())),
                user_groups: Vec::new(),
                tags,
                addresses,
                approved_routes: strs(&n["approved_routes"])
                    .iter()
                    .filter_map(|s| s.parse().ok())
                    .collect(),
                exit_node: false,
            });
        }
        let parsed = if pol.is_empty() {
            Ok(Policy::allow_all())
        } else {
            weft_policy::check(&pol, &snap).map_err(|e| e.to_string())
        };
        let p = match (parsed, code) {
            (Err(_), c) if c != 200 => {
                *tally.entry("both reject").or_default() += 1;
                continue;
            }
            (Ok(_), c) if c != 200 => {
                *tally.entry("tailscale rejects, we accept").or_default() += 1;
                if verbose {
                    println!(
                        "{id}: tailscale rejects ({}), we accept",
                        d["input"]["api_response_body"]
                    );
                }
                continue;
            }
            (Err(e), _) => {
                *tally.entry("we reject, tailscale accepts").or_default() += 1;
                if verbose {
                    println!("{id}: we reject: {e}");
                }
                continue;
            }
            (Ok(p), _) => p,
        };
        let c = p.compile(&snap);
        let mut ok = true;
        for (nid, name) in &names {
            let theirs = atoms(&d["captures"][name]["packet_filter_rules"]);
            let ours_json = serde_json::to_value(c.filter_for(*nid).unwrap_or(&[])).expect("json");
            let ours = atoms(&ours_json);
            if theirs != ours {
                ok = false;
                if verbose {
                    println!("{id} {name}:");
                    for a in theirs.difference(&ours).take(4) {
                        println!("   only tailscale: {a:?}");
                    }
                    for a in ours.difference(&theirs).take(4) {
                        println!("   only weft:      {a:?}");
                    }
                }
            }
        }
        *tally
            .entry(if ok {
                "filters equal"
            } else {
                "filters differ"
            })
            .or_default() += 1;
    }
    for (k, v) in tally {
        println!("{k}: {v}");
    }
}
