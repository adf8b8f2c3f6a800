use std::collections::BTreeSet;
use std::sync::Arc;

use weft_key::{DiscoPublic, MachinePublic, NodePublic};
use weft_tailcfg::{FilterRule, Hostinfo, MapResponse, NodeId, Time};

use crate::*;

fn key(n: i64, salt: u8) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&n.to_be_bytes());
    b[31] = salt;
    b
}

pub(crate) fn node(id: i64, user: i64) -> NodeState {
    NodeState {
        id,
        user_id: user,
        machine_key: MachinePublic::from_bytes(key(id, 1)),
        node_key: NodePublic::from_bytes(key(id, 2)),
        disco_key: DiscoPublic::from_bytes(key(id, 3)),
        given_name: format!("node{id}"),
        ipv4: Some(std::net::Ipv4Addr::new(100, 64, (id >> 8) as u8, id as u8)),
        ipv6: Some(format!("fd7a:115c:a1e0::{id:x}").parse().unwrap()),
        hostinfo: Hostinfo::new().with_hostname(&format!("node{id}")),
        home_derp: 900,
        created: Time::from_unix(1_700_000_000, 0),
        online: true,
        machine_authorized: true,
        cap: 130,
        ..NodeState::default()
    }
}

fn snapshot(n: i64) -> Snapshot {
    let mut s = Snapshot::default();
    s.users.insert(
        1,
        UserInfo {
            id: 1,
            login_name: "alice@example.com".into(),
            display_name: "Alice".into(),
            ..UserInfo::default()
        },
    );
    s.users.insert(
        2,
        UserInfo {
            id: 2,
            login_name: "bob".into(),
            ..UserInfo::default()
        },
    );
    for id in 1..=n {
        s.nodes.insert(id, node(id, 1 + (id % 2)));
    }
    s
}

const NOW: Time = Time::from_unix(1_750_000_000, 0);

#[test]
fn full_map_has_self_node_sorted_peers_profiles_and_allow_all_filter() {
    let s = snapshot(5);
    let (m, session) = full_map(&s, 3, NOW).unwrap();
    let me = m.node.as_ref().unwrap();
    assert_eq!(me.id, 3);
    assert_eq!(me.name, "node3.weft.internal.");
    assert_eq!(me.addresses.len(), 2);
    let ids: Vec<NodeId> = m.peers.iter().map(|p| p.id).collect();
    assert_eq!(ids, vec![1, 2, 4, 5]);
    assert_eq!(session.visible, BTreeSet::from([1, 2, 4, 5]));
    assert_eq!(
        m.user_profiles.iter().map(|u| u.id).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(m.packet_filter, Some(vec![FilterRule::allow_all()]));
    assert_eq!(m.domain, "weft.internal");
    let dns = m.dns_config.unwrap();
    assert!(dns.proxied);
    assert_eq!(dns.domains, vec!["weft.internal".to_string()]);
    assert!(m.derp_map.is_some());
    assert_eq!(m.control_time, Some(NOW));
    let v = serde_json::to_value(&m.peers[0]).unwrap();
    assert_eq!(v["Online"], true);
    assert_eq!(v["HomeDERP"], 900);
    assert_eq!(v["AllowedIPs"], v["Addresses"]);
}

#[test]
fn full_map_of_unknown_node_is_an_error() {
    assert_eq!(
        full_map(&snapshot(2), 9, NOW).unwrap_err(),
        MapError::NodeNotFound(9)
    );
}

#[test]
fn new_node_reaches_existing_sessions_as_peers_changed() {
    let mut s = snapshot(2);
    let (_, mut session) = full_map(&s, 1, NOW).unwrap();
    s.nodes.insert(3, node(3, 2));
    let d = Delta::prepare(&s, &[Change::NodeUpdated(3)], NOW);
    let m = d.for_session(&s, &mut session).unwrap();
    assert_eq!(m.peers_changed.len(), 1);
    assert_eq!(m.peers_changed[0].id, 3);
    assert_eq!(m.user_profiles[0].id, 2);
    assert!(m.node.is_none());
    assert!(session.visible.contains(&3));
}

#[test]
fn endpoint_change_is_a_patch_and_not_sent_to_the_node_itself() {
    let mut s = snapshot(3);
    let (_, mut s1) = full_map(&s, 1, NOW).unwrap();
    let (_, mut s2) = full_map(&s, 2, NOW).unwrap();
    s.nodes.get_mut(&2).unwrap().endpoints = vec!["192.0.2.1:41641".parse().unwrap()];
    let f = PatchFields {
        endpoints: true,
        ..PatchFields::default()
    };
    let d = Delta::prepare(&s, &[Change::NodePatched(2, f)], NOW);
    let m = d.for_session(&s, &mut s1).unwrap();
    assert!(m.peers_changed.is_empty());
    assert_eq!(
        serde_json::to_value(&m.peers_changed_patch).unwrap(),
        serde_json::json!([{"NodeID": 2, "Endpoints": ["192.0.2.1:41641"]}])
    );
    assert_eq!(d.for_session(&s, &mut s2), None);
}

#[test]
fn offline_patch_carries_last_seen() {
    let mut s = snapshot(2);
    let (_, mut s1) = full_map(&s, 1, NOW).unwrap();
    let n = s.nodes.get_mut(&2).unwrap();
    n.online = false;
    n.last_seen = Some(NOW);
    let d = Delta::prepare(
        &s,
        &[Change::NodePatched(
            2,
            PatchFields {
                online: true,
                ..PatchFields::default()
            },
        )],
        NOW,
    );
    let m = d.for_session(&s, &mut s1).unwrap();
    assert_eq!(m.peers_changed_patch[0].online, Some(false));
    assert_eq!(m.peers_changed_patch[0].last_seen, Some(NOW));
}

#[test]
fn key_rotation_patches_peers_and_resends_self_node() {
    let mut s = snapshot(2);
    let (_, mut s1) = full_map(&s, 1, NOW).unwrap();
    let (_, mut s2) = full_map(&s, 2, NOW).unwrap();
    s.nodes.get_mut(&2).unwrap().node_key = NodePublic::from_bytes([9; 32]);
    let d = Delta::prepare(
        &s,
        &[Change::NodePatched(
            2,
            PatchFields {
                key: true,
                ..PatchFields::default()
            },
        )],
        NOW,
    );
    let m1 = d.for_session(&s, &mut s1).unwrap();
    assert_eq!(
        m1.peers_changed_patch[0].key,
        Some(NodePublic::from_bytes([9; 32]))
    );
    assert_eq!(m1.peers_changed_patch[0].key_expiry, Some(Time::ZERO));
    let m2 = d.for_session(&s, &mut s2).unwrap();
    assert_eq!(m2.node.unwrap().key, NodePublic::from_bytes([9; 32]));
}

#[test]
fn removed_node_is_announced_once_to_sessions_that_saw_it() {
    let mut s = snapshot(3);
    let (_, mut s1) = full_map(&s, 1, NOW).unwrap();
    s.nodes.remove(&3);
    let d = Delta::prepare(&s, &[Change::NodeRemoved(3)], NOW);
    assert_eq!(d.for_session(&s, &mut s1).unwrap().peers_removed, vec![3]);
    assert_eq!(d.for_session(&s, &mut s1), None);
}

#[test]
fn a_node_awaiting_approval_sees_no_peers_and_is_seen_by_none_until_approved() {
    let mut s = snapshot(2);
    let mut pending = node(3, 2);
    pending.machine_authorized = false;
    s.nodes.insert(3, pending);
    let (m3, mut s3) = full_map(&s, 3, NOW).unwrap();
    assert!(m3.peers.is_empty());
    assert!(!m3.node.unwrap().machine_authorized);
    let (m1, mut s1) = full_map(&s, 1, NOW).unwrap();
    assert_eq!(m1.peers.iter().map(|p| p.id).collect::<Vec<_>>(), vec![2]);

    s.nodes.get_mut(&3).unwrap().machine_authorized = true;
    let d = Delta::prepare(&s, &[Change::NodeUpdated(3)], NOW);
    let m1 = d.for_session(&s, &mut s1).unwrap();
    assert_eq!(
        m1.peers_changed.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![3]
    );
    let m3 = d.for_session(&s, &mut s3).unwrap();
    assert!(m3.node.unwrap().machine_authorized);
    assert_eq!(
        m3.peers.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![1, 2]
    );
}

struct Islands;
impl PolicyView for Islands {
    fn packet_filter(&self, _node: NodeId) -> Vec<FilterRule> {
        Vec::new()
    }
    fn may_see(&self, a: NodeId, b: NodeId) -> bool {
        a % 2 == b % 2
    }
}

#[test]
fn policy_hook_limits_visibility_and_filter() {
    let mut s = snapshot(6);
    s.policy = Arc::new(Islands);
    let (m, _) = full_map(&s, 2, NOW).unwrap();
    assert_eq!(m.peers.iter().map(|p| p.id).collect::<Vec<_>>(), vec![4, 6]);
    assert_eq!(
        m.packet_filter,
        Some(vec![]),
        "empty filter is sent as [] (deny all)"
    );
    let (_, mut s1) = full_map(&s, 1, NOW).unwrap();
    let d = Delta::prepare(&s, &[Change::NodeUpdated(4)], NOW);
    assert_eq!(
        d.for_session(&s, &mut s1),
        None,
        "invisible peer changes are not sent"
    );
}

#[test]
fn resync_to_zero_peers_uses_peers_removed() {
    let mut s = snapshot(3);
    let (_, mut s1) = full_map(&s, 1, NOW).unwrap();
    struct Alone;
    impl PolicyView for Alone {
        fn packet_filter(&self, _n: NodeId) -> Vec<FilterRule> {
            Vec::new()
        }
        fn may_see(&self, _a: NodeId, _b: NodeId) -> bool {
            false
        }
    }
    s.policy = Arc::new(Alone);
    let m = Delta::prepare(&s, &[Change::Everything], NOW)
        .for_session(&s, &mut s1)
        .unwrap();
    assert!(m.peers.is_empty());
    assert_eq!(m.peers_removed, vec![2, 3]);
    assert!(m.node.is_some());
}

#[test]
fn tagged_nodes_belong_to_tagged_devices_and_never_expire() {
    let mut s = snapshot(2);
    let n = s.nodes.get_mut(&2).unwrap();
    n.tags = vec!["tag:server".into()];
    n.key_expiry = Some(Time::from_unix(1, 0));
    let (m, _) = full_map(&s, 1, NOW).unwrap();
    assert_eq!(m.peers[0].user, TAGGED_DEVICES_USER_ID);
    assert!(m.peers[0].key_expiry.is_zero());
    assert!(!m.peers[0].expired);
    assert!(m
        .user_profiles
        .iter()
        .any(|p| p.login_name == "tagged-devices"));
}

#[test]
fn approved_advertised_routes_go_into_allowed_ips_and_primary_routes() {
    let mut s = snapshot(2);
    let n = s.nodes.get_mut(&2).unwrap();
    n.hostinfo.set(
        "RoutableIPs",
        serde_json::json!(["10.0.0.0/24", "0.0.0.0/0", "192.168.0.0/24"]),
    );
    n.approved_routes = vec![
        "10.0.0.0/24".parse().unwrap(),
        "0.0.0.0/0".parse().unwrap(),
        "172.16.0.0/12".parse().unwrap(),
    ];
    let (m, _) = full_map(&s, 1, NOW).unwrap();
    let p = &m.peers[0];
    assert_eq!(p.allowed_ips.as_ref().unwrap().len(), 4);
    assert_eq!(
        p.primary_routes,
        vec!["10.0.0.0/24".parse::<ipnet::IpNet>().unwrap()]
    );
}

#[test]
fn expired_peer_is_marked_expired() {
    let mut s = snapshot(2);
    s.nodes.get_mut(&2).unwrap().key_expiry = Some(Time::from_unix(1_000, 0));
    let (m, _) = full_map(&s, 1, NOW).unwrap();
    assert!(m.peers[0].expired);
}

#[test]
fn node_resync_resends_only_that_nodes_map() {
    let s = snapshot(3);
    let (_, mut s1) = full_map(&s, 1, NOW).unwrap();
    let (_, mut s2) = full_map(&s, 2, NOW).unwrap();
    let d = Delta::prepare(&s, &[Change::NodeResync(2)], NOW);
    assert!(!d.is_empty());
    assert_eq!(d.for_session(&s, &mut s1), None);
    let m = d.for_session(&s, &mut s2).unwrap();
    assert!(m.node.is_some());
    assert_eq!(m.peers.len(), 2);
    assert!(m.packet_filter.is_some());
}

#[test]
fn one_primary_per_subnet_route_sticky_while_online_lowest_online_id_otherwise() {
    let route: ipnet::IpNet = "10.77.0.0/24".parse().unwrap();
    let mut s = snapshot(4);
    for id in [2, 3, 4] {
        let n = s.nodes.get_mut(&id).unwrap();
        n.hostinfo.set(
            "RoutableIPs",
            serde_json::json!(["10.77.0.0/24", "0.0.0.0/0"]),
        );
        n.approved_routes = vec![route, "0.0.0.0/0".parse().unwrap()];
    }
    // Node 4 advertises but is not approved for the subnet route.
    s.nodes.get_mut(&4).unwrap().approved_routes.remove(0);
    s.primaries = Some(elect_primaries(&s, NOW));
    assert_eq!(s.primaries.as_ref().unwrap().get(&route), Some(&2));
    let (m, _) = full_map(&s, 1, NOW).unwrap();
    let by_id = |m: &MapResponse, id: NodeId| m.peers.iter().find(|p| p.id == id).cloned().unwrap();
    assert_eq!(by_id(&m, 2).primary_routes, vec![route]);
    assert!(by_id(&m, 3).primary_routes.is_empty());
    assert!(!by_id(&m, 3).allowed_ips.unwrap().contains(&route));
    assert!(by_id(&m, 3)
        .allowed_ips
        .unwrap()
        .contains(&"0.0.0.0/0".parse().unwrap()));

    // Node 2 goes offline: 3 takes over; 2 back online: 3 keeps it.
    s.nodes.get_mut(&2).unwrap().online = false;
    s.primaries = Some(elect_primaries(&s, NOW));
    assert_eq!(s.primaries.as_ref().unwrap().get(&route), Some(&3));
    s.nodes.get_mut(&2).unwrap().online = true;
    s.primaries = Some(elect_primaries(&s, NOW));
    assert_eq!(s.primaries.as_ref().unwrap().get(&route), Some(&3));
    // Everyone offline: the current primary stays.
    for id in [2, 3] {
        s.nodes.get_mut(&id).unwrap().online = false;
    }
    s.primaries = Some(elect_primaries(&s, NOW));
    assert_eq!(s.primaries.as_ref().unwrap().get(&route), Some(&3));
    // An expired key disqualifies: node 2 takes over although offline.
    s.nodes.get_mut(&3).unwrap().key_expiry = Some(Time::from_unix(1_000, 0));
    s.primaries = Some(elect_primaries(&s, NOW));
    assert_eq!(s.primaries.as_ref().unwrap().get(&route), Some(&2));
    // Unapproved: no primary at all.
    for id in [2, 3] {
        s.nodes.get_mut(&id).unwrap().approved_routes.clear();
    }
    assert!(elect_primaries(&s, NOW).is_empty());
}
