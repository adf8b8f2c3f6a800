//! Benchmark: full compile of a 500-rule policy for 10,000 nodes, and the incremental update
//! after one node changes. Run in release: `scripts/bench-policy.sh`.
#![allow(clippy::disallowed_methods)] // a benchmark measures wall-clock time

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};
use weft_policy::{Policy, Snapshot, SnapshotNode};

const NODES: usize = 10_000;
const RULES: usize = 500;
const USERS: usize = 2_000;
const GROUPS: usize = 50;
const TAGS: usize = 100;

fn addr(i: usize) -> (IpAddr, IpAddr) {
    let n = i as u32 + 1;
    (
        IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + n)),
        IpAddr::V6(Ipv6Addr::from(
            u128::from("fd7a:115c:a1e0::".parse::<Ipv6Addr>().unwrap()) + n as u128,
        )),
    )
}

fn user(u: usize) -> String {
    format!("user{u}@example.com")
}

fn node(i: usize, tag_shift: usize) -> SnapshotNode {
    let (v4, v6) = addr(i);
    let tagged = i % 10 >= 7; // 30% tagged
    SnapshotNode {
        id: i as i64 + 1,
        user: Some(user(i % USERS)),
        user_groups: vec![format!("g{}", i % GROUPS)],
        tags: if tagged {
            vec![format!("tag:t{}", (i + tag_shift) % TAGS)]
        } else {
            vec![]
        },
        addresses: vec![v4, v6],
        approved_routes: if i % 1000 == 999 {
            vec![format!("10.{}.0.0/16", i / 1000).parse().unwrap()]
        } else {
            vec![]
        },
        exit_node: false,
    }
}

fn policy_text() -> String {
    let mut s = String::from("{\n  \"groups\": {\n");
    for g in 0..GROUPS {
        // Each group lists 20 users explicitly; more members come from identity-provider groups.
        let members: Vec<String> = (0..20)
            .map(|k| format!("{:?}", user((g * 37 + k * 101) % USERS)))
            .collect();
        let _ = writeln!(s, "    \"group:g{g}\": [{}],", members.join(", "));
    }
    s.push_str("  },\n  \"hosts\": {\n");
    for h in 0..10 {
        let _ = writeln!(s, "    \"net{h}\": \"10.{h}.0.0/16\",");
    }
    s.push_str("  },\n  \"tagOwners\": {\n");
    for t in 0..TAGS {
        let _ = writeln!(s, "    \"tag:t{t}\": [\"group:g{}\"],", t % GROUPS);
    }
    s.push_str("  },\n  \"acls\": [\n");
    for r in 0..RULES {
        let line = match r % 10 {
            0 => format!("{{\"action\": \"accept\", \"src\": [\"group:g{}\"], \"dst\": [\"tag:t{}:80,443\"]}}", r % GROUPS, r % TAGS),
            1 => format!("{{\"action\": \"accept\", \"src\": [\"tag:t{}\"], \"dst\": [\"tag:t{}:5432\"]}}", r % TAGS, (r * 7) % TAGS),
            2 => format!("{{\"action\": \"accept\", \"src\": [\"{}\"], \"dst\": [\"tag:t{}:22\"]}}", user(r * 3 % USERS), r % TAGS),
            3 => format!("{{\"action\": \"accept\", \"src\": [\"group:g{}\", \"group:g{}\"], \"dst\": [\"net{}:*\"]}}", r % GROUPS, (r + 1) % GROUPS, r % 10),
            4 => format!("{{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"tag:t{}:443\"], \"proto\": \"tcp\"}}", r % TAGS),
            5 => "{\"action\": \"accept\", \"src\": [\"autogroup:member\"], \"dst\": [\"autogroup:self:*\"]}".to_string(),
            6 => format!("{{\"action\": \"accept\", \"src\": [\"group:g{}\"], \"dst\": [\"group:g{}:8000-9000\"]}}", r % GROUPS, (r * 3) % GROUPS),
            7 => format!("{{\"action\": \"accept\", \"src\": [\"tag:t{}\"], \"dst\": [\"tag:t{}:9100\"], \"proto\": \"udp\"}}", r % TAGS, (r + 5) % TAGS),
            8 => format!("{{\"action\": \"accept\", \"src\": [\"{}\"], \"dst\": [\"{}:*\"]}}", user(r % USERS), user((r + 1) % USERS)),
            _ => format!("{{\"action\": \"accept\", \"src\": [\"autogroup:tagged\"], \"dst\": [\"tag:t{}:9090\"]}}", r % TAGS),
        };
        let _ = writeln!(s, "    {line},");
    }
    s.push_str("  ],\n}\n");
    s
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let text = policy_text();
    let snap = Snapshot {
        nodes: (0..NODES).map(|i| node(i, 0)).collect(),
    };

    let t = Instant::now();
    let policy = Policy::parse(&text).expect("policy parses");
    let parse = t.elapsed();

    let mut compile_times = Vec::new();
    let mut compiled = None;
    for _ in 0..3 {
        let t = Instant::now();
        let c = policy.compile(&snap);
        compile_times.push(t.elapsed());
        compiled = Some(c);
    }
    let mut c = compiled.expect("compiled");
    let rules: usize = c
        .node_ids()
        .map(|id| c.filter_for(id).map_or(0, <[_]>::len))
        .sum();
    let avg_visible: f64 = c
        .node_ids()
        .map(|id| c.visible_peers(id).map_or(0, |v| v.len()))
        .sum::<usize>() as f64
        / NODES as f64;

    // Incremental: retag one tagged node, change one untagged node's user, add and remove a node.
    let mut inc = Vec::new();
    let mut touched = Vec::new();
    type Edit = Box<dyn Fn(&mut weft_policy::Compiled) -> weft_policy::Changes>;
    let edits: Vec<Edit> = vec![
        Box::new(|c| c.upsert_node(node(7, 1))),
        Box::new(|c| c.upsert_node(node(17, 3))),
        Box::new(|c| {
            let mut n = node(3, 0);
            n.user = Some(user(5));
            c.upsert_node(n)
        }),
        Box::new(|c| c.upsert_node(node(NODES, 0))),
        Box::new(|c| c.remove_node(NODES as i64 + 1)),
    ];
    for e in &edits {
        let t = Instant::now();
        let ch = e(&mut c);
        inc.push(t.elapsed());
        touched.push((ch.filters_changed.len(), ch.visibility_changed.len()));
    }

    println!(
        "nodes: {NODES}, rules: {RULES}, policy bytes: {}",
        text.len()
    );
    println!("parse: {:.2?}", parse);
    println!("full compile (median of 3): {:.2?}", median(compile_times));
    println!(
        "filter rules emitted: {rules} (avg {:.1}/node), avg visible peers: {avg_visible:.0}",
        rules as f64 / NODES as f64
    );
    for (i, (d, (f, v))) in inc.iter().zip(&touched).enumerate() {
        println!(
            "incremental edit {i}: {:.2?} (filters changed: {f}, visibility changed: {v})",
            d
        );
    }
    println!("incremental (median): {:.2?}", median(inc));
}
