//! Netmap benchmark: `cargo run --release -p weft-mapper --example bench_mapper`.
//!
//! For tailnets of 100, 1,000 and 10,000 nodes (allow-all policy, everyone sees everyone):
//! time to build one node's full map (and to JSON-encode it), and the time for a full
//! fan-out after one node changes its endpoints or its Hostinfo (a delta for every
//! open session, JSON-encoded).

use std::hint::black_box;
use std::time::{Duration, Instant};

use weft_key::{DiscoPublic, MachinePublic, NodePublic};
use weft_mapper::{
    full_map, Change, Delta, MapSession, NodeState, PatchFields, Snapshot, UserInfo,
};
use weft_tailcfg::{Hostinfo, Time};

fn key(n: i64, salt: u8) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&n.to_be_bytes());
    b[31] = salt;
    b
}

fn snapshot(n: i64) -> Snapshot {
    let mut s = Snapshot::default();
    for u in 1..=10 {
        s.users.insert(
            u,
            UserInfo {
                id: u,
                login_name: format!("user{u}@example.com"),
                display_name: format!("User {u}"),
                ..UserInfo::default()
            },
        );
    }
    for id in 1..=n {
        let mut hi = Hostinfo::new().with_hostname(&format!("host-{id}"));
        hi.set("OS", "linux".into());
        hi.set("IPNVersion", "1.90.9".into());
        hi.set(
            "Services",
            serde_json::json!([{"Proto": "peerapi4", "Port": 12345}]),
        );
        s.nodes.insert(
            id,
            NodeState {
                id,
                user_id: 1 + id % 10,
                machine_key: MachinePublic::from_bytes(key(id, 1)),
                node_key: NodePublic::from_bytes(key(id, 2)),
                disco_key: DiscoPublic::from_bytes(key(id, 3)),
                given_name: format!("host-{id}"),
                ipv4: Some(std::net::Ipv4Addr::from(0x6440_0000u32 + id as u32)),
                ipv6: Some(std::net::Ipv6Addr::from(
                    0xfd7a_115c_a1e0_0000_0000_0000_0000_0000u128 + id as u128,
                )),
                hostinfo: hi,
                endpoints: vec![format!("192.0.2.{}:41641", id % 250).parse().unwrap()],
                home_derp: 900,
                created: Time::from_unix(1_700_000_000, 0),
                online: true,
                machine_authorized: true,
                cap: 130,
                ..NodeState::default()
            },
        );
    }
    s
}

fn time_it<F: FnMut()>(mut f: F, min_iters: u32, budget: Duration) -> Duration {
    let start = Instant::now();
    let mut iters = 0u32;
    while iters < min_iters || (start.elapsed() < budget && iters < 1000) {
        f();
        iters += 1;
    }
    start.elapsed() / iters
}

fn main() {
    let now = Time::from_unix(1_750_000_000, 0);
    println!("| nodes | one full map (build) | one full map (build+JSON) | full map JSON size | fan-out after endpoint patch (build+JSON, all sessions) | fan-out after Hostinfo change (build+JSON, all sessions) |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for n in [100i64, 1_000, 10_000] {
        let mut s = snapshot(n);
        let build = time_it(
            || {
                black_box(full_map(&s, n / 2, now).unwrap());
            },
            3,
            Duration::from_secs(2),
        );
        let mut size = 0;
        let build_json = time_it(
            || {
                let (m, _) = full_map(&s, n / 2, now).unwrap();
                size = serde_json::to_vec(&m).unwrap().len();
            },
            3,
            Duration::from_secs(2),
        );
        let mut sessions: Vec<MapSession> = (1..=n)
            .map(|id| MapSession {
                node: id,
                visible: (1..=n).filter(|&p| p != id).collect(),
            })
            .collect();
        s.nodes.get_mut(&1).unwrap().endpoints = vec!["198.51.100.1:41641".parse().unwrap()];
        let fields = PatchFields {
            endpoints: true,
            ..PatchFields::default()
        };
        let patch = time_it(
            || {
                let d = Delta::prepare(&s, &[Change::NodePatched(1, fields)], now);
                for sess in sessions.iter_mut() {
                    if let Some(m) = d.for_session(&s, sess) {
                        black_box(serde_json::to_vec(&m).unwrap());
                    }
                }
            },
            3,
            Duration::from_secs(3),
        );
        s.nodes
            .get_mut(&1)
            .unwrap()
            .hostinfo
            .set("OSVersion", "6.1".into());
        let full = time_it(
            || {
                let d = Delta::prepare(&s, &[Change::NodeUpdated(1)], now);
                for sess in sessions.iter_mut() {
                    if let Some(m) = d.for_session(&s, sess) {
                        black_box(serde_json::to_vec(&m).unwrap());
                    }
                }
            },
            3,
            Duration::from_secs(3),
        );
        println!(
            "| {n} | {:.3} ms | {:.3} ms | {} KiB | {:.3} ms | {:.3} ms |",
            ms(build),
            ms(build_json),
            size / 1024,
            ms(patch),
            ms(full)
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
