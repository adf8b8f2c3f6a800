//! A compiled policy enforced by weft-filter on the receiving node, replaced live.

use std::net::IpAddr;
use std::time::Instant;
use weft_filter::packet::build;
use weft_filter::{PacketFilter, Verdict};
use weft_policy::{Policy, Snapshot, SnapshotNode};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn tailnet() -> Snapshot {
    let n = |id, user: &str, v4: &str, v6: &str| SnapshotNode {
        id,
        user: Some(user.into()),
        addresses: vec![ip(v4), ip(v6)],
        ..SnapshotNode::default()
    };
    Snapshot {
        nodes: vec![
            n(1, "a@example.com", "100.64.0.1", "fd7a:115c:a1e0::1"),
            n(2, "b@example.com", "100.64.0.2", "fd7a:115c:a1e0::2"),
            n(3, "c@example.com", "100.64.0.3", "fd7a:115c:a1e0::3"),
        ],
    }
}

fn install(f: &mut PacketFilter, p: &Policy, snap: &Snapshot, node: i64) {
    let c = p.compile(snap);
    let local: Vec<ipnet::IpNet> = snap.nodes[(node - 1) as usize]
        .addresses
        .iter()
        .map(|&a| a.into())
        .collect();
    f.set_rules(c.filter_for(node).unwrap(), &local).unwrap();
}

#[test]
#[allow(clippy::disallowed_methods)] // the test's starting instant
fn a_reaches_b_on_port_80_only_and_a_policy_change_applies_to_the_live_filter() {
    let snap = tailnet();
    let now = Instant::now();
    let port80 = Policy::parse(
        r#"{"acls": [{"action": "accept", "src": ["a@example.com"], "dst": ["b@example.com:80"]}]}"#,
    )
    .unwrap();
    let mut on_b = PacketFilter::new();
    install(&mut on_b, &port80, &snap, 2);
    let (a, b, c) = (ip("100.64.0.1"), ip("100.64.0.2"), ip("100.64.0.3"));
    assert!(on_b
        .check_inbound_bytes(&build::tcp_syn(a, b, 40000, 80), now)
        .is_accept());
    assert!(!on_b
        .check_inbound_bytes(&build::tcp_syn(a, b, 40000, 22), now)
        .is_accept());
    assert!(!on_b
        .check_inbound_bytes(&build::tcp_syn(c, b, 40000, 80), now)
        .is_accept());
    assert!(on_b
        .check_inbound_bytes(
            &build::tcp_syn(ip("fd7a:115c:a1e0::1"), ip("fd7a:115c:a1e0::2"), 1, 80),
            now
        )
        .is_accept());

    // B answers a DNS query it sent to C: the reply passes thanks to the flow table.
    let out = build::udp(b, c, 5353, 53);
    on_b.track_outbound(&weft_filter::PacketView::parse(&out).unwrap(), now);

    // New policy: port 22 instead of 80. Same filter object, no reconnect.
    let port22 = Policy::parse(
        r#"{"acls": [{"action": "accept", "src": ["a@example.com"], "dst": ["b@example.com:22"]}]}"#,
    )
    .unwrap();
    let before = port80.compile(&snap);
    let after = port22.compile(&snap);
    let ch = after.changes_since(&before);
    assert_eq!(ch.filters_changed.into_iter().collect::<Vec<_>>(), vec![2]);
    assert!(ch.visibility_changed.is_empty());
    install(&mut on_b, &port22, &snap, 2);
    assert!(on_b
        .check_inbound_bytes(&build::tcp_syn(a, b, 40000, 22), now)
        .is_accept());
    assert!(matches!(
        on_b.check_inbound_bytes(&build::tcp_syn(a, b, 40000, 80), now),
        Verdict::Drop(_)
    ));
    assert!(on_b
        .check_inbound_bytes(&build::udp(c, b, 53, 5353), now)
        .is_accept());
}

#[test]
fn no_policy_allows_all_and_everyone_sees_everyone() {
    let snap = tailnet();
    let c = Policy::allow_all().compile(&snap);
    assert_eq!(c.visible_peers(1).unwrap(), vec![2, 3]);
    assert_eq!(
        c.filter_for(3).unwrap(),
        &[weft_policy::FilterRule::allow_all()]
    );
}
