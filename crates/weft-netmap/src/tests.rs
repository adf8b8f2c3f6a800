use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use weft_key::{DiscoPublic, NodePublic};
use weft_tailcfg::{MapResponse, Node, PeerChange, Time};

use super::*;

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn key(b: u8) -> NodePublic {
    NodePublic::from_bytes([b; 32])
}

fn node(id: i64, name: &str) -> Node {
    Node {
        id,
        stable_id: format!("n{id}"),
        name: format!("{name}.tail.example."),
        key: key(id as u8),
        disco_key: DiscoPublic::from_bytes([100 + id as u8; 32]),
        addresses: vec![format!("100.64.0.{id}/32").parse().unwrap()],
        home_derp: 900,
        ..Node::default()
    }
}

fn decode(v: serde_json::Value) -> MapResponse {
    serde_json::from_value(v).unwrap()
}

fn full(peers: Vec<Node>) -> MapResponse {
    MapResponse {
        node: Some(node(1, "self")),
        peers,
        ..MapResponse::default()
    }
}

fn session_with(peers: Vec<Node>) -> MapSession {
    let mut s = MapSession::new();
    s.handle_map_response(full(peers), t0()).unwrap();
    s
}

fn peer_ids(s: &MapSession) -> Vec<i64> {
    s.netmap(t0()).unwrap().peers.iter().map(|p| p.id).collect()
}

#[test]
fn first_message_without_self_node_is_rejected() {
    let mut s = MapSession::new();
    let err = s.handle_map_response(
        MapResponse {
            peers: vec![node(2, "b")],
            ..MapResponse::default()
        },
        t0(),
    );
    assert_eq!(err, Err(NetmapError::InitialLacksNode));
    assert!(s.netmap(t0()).is_none());
}

#[test]
fn keep_alive_before_the_first_map_is_accepted_and_changes_nothing() {
    let mut s = MapSession::new();
    let ch = s
        .handle_map_response(decode(json!({"KeepAlive": true})), t0())
        .unwrap();
    assert!(ch.keep_alive);
    assert!(!ch.netmap_changed());
    assert!(!s.has_self_node());
}

#[test]
fn full_wire_message_builds_a_netmap() {
    let mut s = MapSession::new();
    let msg = decode(json!({
        "Node": {"ID": 1, "Name": "self.tail.example.", "Key": key(1).to_text(),
                 "Addresses": ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"], "MachineAuthorized": true},
        "Peers": [{"ID": 3, "Name": "c.tail.example.", "Key": key(3).to_text(), "Addresses": ["100.64.0.3/32"]},
                  {"ID": 2, "Name": "b.tail.example.", "Key": key(2).to_text(), "Addresses": ["100.64.0.2/32"],
                   "Endpoints": ["192.0.2.1:41641"], "DERP": "127.3.3.40:901"}],
        "DERPMap": {"Regions": {"900": {"RegionID": 900, "RegionCode": "test", "Nodes": []}}},
        "PacketFilter": [{"SrcIPs": ["*"], "DstPorts": [{"IP": "*", "Ports": {"First": 0, "Last": 65535}}]}],
        "DNSConfig": {"Domains": ["tail.example"]},
        "Domain": "example.com",
        "UserProfiles": [{"ID": 7, "LoginName": "alice@example.com", "DisplayName": "Alice"}]
    }));
    let ch = s.handle_map_response(msg, t0()).unwrap();
    assert!(ch.self_node && ch.peers && ch.derp_map && ch.packet_filter && ch.dns);
    let nm = s.netmap(t0()).unwrap();
    assert_eq!(
        nm.peers.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert_eq!(
        nm.peers[0].home_derp, 901,
        "legacy DERP string is upgraded to HomeDERP"
    );
    assert_eq!(nm.addresses().len(), 2);
    assert_eq!(nm.magic_dns_suffix(), "tail.example");
    assert_eq!(nm.derp_map.regions[&900].region_code, "test");
    assert_eq!(nm.packet_filter.len(), 1);
    assert_eq!(nm.domain, "example.com");
    assert_eq!(nm.user_profiles[&7].login_name, "alice@example.com");
}

#[test]
fn full_peer_list_replaces_the_set_and_ignores_deltas_in_the_same_message() {
    let mut s = session_with(vec![node(2, "b"), node(3, "c")]);
    let mut msg = MapResponse {
        peers: vec![node(4, "d")],
        peers_removed: vec![4],
        ..MapResponse::default()
    };
    msg.peers_changed = vec![node(5, "e")];
    let ch = s.handle_map_response(msg, t0()).unwrap();
    assert!(ch.peers);
    assert_eq!(peer_ids(&s), vec![4]);
}

#[test]
fn empty_peer_list_means_unchanged_not_no_peers() {
    let mut s = session_with(vec![node(2, "b")]);
    let ch = s
        .handle_map_response(decode(json!({"Peers": [], "Domain": "x"})), t0())
        .unwrap();
    assert!(!ch.peers);
    assert_eq!(peer_ids(&s), vec![2]);
}

#[test]
fn peers_changed_upserts_whole_nodes_and_peers_removed_deletes() {
    let mut s = session_with(vec![node(2, "b"), node(3, "c")]);
    let mut b2 = node(2, "b-renamed");
    b2.endpoints = vec!["192.0.2.9:1".parse().unwrap()];
    let msg = MapResponse {
        peers_changed: vec![b2, node(9, "z")],
        peers_removed: vec![3, 77],
        ..MapResponse::default()
    };
    assert!(s.handle_map_response(msg, t0()).unwrap().peers);
    let nm = s.netmap(t0()).unwrap();
    assert_eq!(
        nm.peers.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![2, 9]
    );
    assert_eq!(nm.peers[0].name, "b-renamed.tail.example.");
    assert_eq!(nm.peers[0].endpoints.len(), 1);
}

#[test]
fn patch_updates_only_the_fields_it_carries_and_skips_unknown_peers() {
    let mut s = session_with(vec![node(2, "b")]);
    let msg = decode(json!({"PeersChangedPatch": [
        {"NodeID": 2, "DERPRegion": 902, "Endpoints": ["198.51.100.1:5000", "[2001:db8::1]:5000"],
         "DiscoKey": DiscoPublic::from_bytes([9; 32]).to_text(), "Online": true},
        {"NodeID": 42, "DERPRegion": 1}
    ]}));
    assert!(s.handle_map_response(msg, t0()).unwrap().peers);
    let nm = s.netmap(t0()).unwrap();
    let b = &nm.peers[0];
    assert_eq!(b.home_derp, 902);
    assert_eq!(b.endpoints.len(), 2);
    assert_eq!(b.disco_key, DiscoPublic::from_bytes([9; 32]));
    assert_eq!(b.online, Some(true));
    assert_eq!(b.key, key(2), "key untouched by a patch without Key");
    assert_eq!(
        nm.peers.len(),
        1,
        "patch for an unknown ID does not create a peer"
    );

    let clear = MapResponse {
        peers_changed_patch: vec![PeerChange {
            node_id: 2,
            endpoints: Some(vec![]),
            ..PeerChange::default()
        }],
        ..MapResponse::default()
    };
    s.handle_map_response(clear, t0()).unwrap();
    assert!(
        s.netmap(t0()).unwrap().peers[0].endpoints.is_empty(),
        "Endpoints: [] clears"
    );
}

#[test]
fn online_and_seen_changes_apply_to_known_peers() {
    let mut s = session_with(vec![node(2, "b")]);
    let later = t0() + Duration::from_secs(5);
    let msg =
        decode(json!({"OnlineChange": {"2": false}, "PeerSeenChange": {"2": true, "3": true}}));
    s.handle_map_response(msg, later).unwrap();
    let b = s.netmap(later).unwrap().peers[0].clone();
    assert_eq!(b.online, Some(false));
    assert_eq!(b.last_seen, Some(Time::from_system(later)));
}

#[test]
fn expired_peers_are_dropped_and_poll_timeout_names_the_next_expiry() {
    let mut b = node(2, "b");
    b.key_expiry = Time::from_system(t0() + Duration::from_secs(60));
    let mut c = node(3, "c");
    c.key_expiry = Time::from_system(t0() - Duration::from_secs(1));
    let mut d = node(4, "d");
    d.expired = true;
    let s = session_with(vec![b, c, d, node(5, "e")]);
    let nm = s.netmap(t0()).unwrap();
    assert_eq!(
        nm.peers.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![2, 5]
    );
    assert_eq!(nm.expired_peers, vec![3, 4]);
    assert_eq!(s.poll_timeout(t0()), Some(t0() + Duration::from_secs(60)));

    let after = t0() + Duration::from_secs(61);
    assert_eq!(
        s.netmap(after)
            .unwrap()
            .peers
            .iter()
            .map(|p| p.id)
            .collect::<Vec<_>>(),
        vec![5]
    );
    assert_eq!(s.poll_timeout(after), None);
}

#[test]
fn expiry_is_judged_by_control_time_when_our_clock_is_behind() {
    let mut b = node(2, "b");
    b.key_expiry = Time::from_system(t0() + Duration::from_secs(30));
    let mut s = MapSession::new();
    let mut msg = full(vec![b]);
    // Control's clock is 40 s ahead of ours: for control the key already expired.
    msg.control_time = Some(Time::from_system(t0() + Duration::from_secs(40)));
    s.handle_map_response(msg, t0()).unwrap();
    let nm = s.netmap(t0()).unwrap();
    assert!(nm.peers.is_empty());
    assert_eq!(nm.expired_peers, vec![2]);
}

#[test]
fn self_key_expiry_is_reported() {
    let mut s = MapSession::new();
    let mut me = node(1, "self");
    me.key_expiry = Time::from_system(t0() + Duration::from_secs(10));
    s.handle_map_response(
        MapResponse {
            node: Some(me),
            ..MapResponse::default()
        },
        t0(),
    )
    .unwrap();
    assert!(!s.netmap(t0()).unwrap().self_expired);
    assert_eq!(s.poll_timeout(t0()), Some(t0() + Duration::from_secs(10)));
    assert!(
        s.netmap(t0() + Duration::from_secs(10))
            .unwrap()
            .self_expired
    );
}

#[test]
fn derp_map_with_null_regions_keeps_the_old_regions() {
    let mut s = MapSession::new();
    let first = decode(json!({"Node": {"ID": 1}, "DERPMap": {
        "HomeParams": {"RegionScore": {"900": 0.5}},
        "Regions": {"900": {"RegionID": 900, "RegionCode": "a"}}}}));
    s.handle_map_response(first, t0()).unwrap();
    let ch = s
        .handle_map_response(decode(json!({"DERPMap": {"HomeParams": {}}})), t0())
        .unwrap();
    assert!(!ch.derp_map, "nothing actually changed");
    let dm = s.netmap(t0()).unwrap().derp_map;
    assert_eq!(dm.regions[&900].region_code, "a");
    assert_eq!(dm.home_params.unwrap().region_score.unwrap()[&900], 0.5);

    let ch = s
        .handle_map_response(
            decode(json!({"DERPMap": {"Regions": {"901": {"RegionID": 901}}}})),
            t0(),
        )
        .unwrap();
    assert!(ch.derp_map);
    assert_eq!(
        s.netmap(t0())
            .unwrap()
            .derp_map
            .regions
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        vec![901]
    );
}

#[test]
fn packet_filter_chunks_concatenate_by_name_and_star_null_clears_them() {
    let rule = |src: &str| json!({"SrcIPs": [src], "DstPorts": [{"IP": "*", "Ports": {"First": 22, "Last": 22}}]});
    let mut s = session_with(vec![]);
    assert!(
        s.netmap(t0()).unwrap().packet_filter.is_empty(),
        "no filter yet = deny all"
    );
    let msg = decode(json!({"PacketFilter": [rule("100.64.0.2")],
                            "PacketFilters": {"zz": [rule("100.64.0.9")], "aa": [rule("100.64.0.5")]}}));
    assert!(s.handle_map_response(msg, t0()).unwrap().packet_filter);
    let srcs: Vec<String> = s
        .netmap(t0())
        .unwrap()
        .packet_filter
        .iter()
        .map(|r| r.src_ips[0].clone())
        .collect();
    assert_eq!(srcs, vec!["100.64.0.5", "100.64.0.2", "100.64.0.9"]);

    s.handle_map_response(decode(json!({"PacketFilters": {"zz": null}})), t0())
        .unwrap();
    assert_eq!(s.netmap(t0()).unwrap().packet_filter.len(), 2);
    s.handle_map_response(
        decode(json!({"PacketFilters": {"*": null, "new": [rule("1.2.3.4")]}})),
        t0(),
    )
    .unwrap();
    assert_eq!(s.netmap(t0()).unwrap().packet_filter.len(), 1);
    s.handle_map_response(decode(json!({"PacketFilter": []})), t0())
        .unwrap();
    assert_eq!(
        s.netmap(t0()).unwrap().packet_filter.len(),
        1,
        "base chunk is now empty; 'new' stays"
    );
}

#[test]
fn ping_requests_and_browser_urls_are_reported_once() {
    let mut s = session_with(vec![]);
    let ping = json!({"PingRequest": {"URL": "http://c/ping/1"}, "KeepAlive": true});
    assert!(s
        .handle_map_response(decode(ping.clone()), t0())
        .unwrap()
        .ping_request
        .is_some());
    assert!(s
        .handle_map_response(decode(ping), t0())
        .unwrap()
        .ping_request
        .is_none());
    let pop = json!({"PopBrowserURL": "http://c/a"});
    assert_eq!(
        s.handle_map_response(decode(pop.clone()), t0())
            .unwrap()
            .pop_browser_url
            .as_deref(),
        Some("http://c/a")
    );
    assert!(s
        .handle_map_response(decode(pop), t0())
        .unwrap()
        .pop_browser_url
        .is_none());
}

#[test]
fn find_peer_accepts_ip_key_fqdn_and_short_name() {
    let s = session_with(vec![node(2, "bravo"), node(3, "charlie")]);
    let nm = s.netmap(t0()).unwrap();
    assert_eq!(nm.find_peer("100.64.0.3").unwrap().id, 3);
    assert_eq!(nm.find_peer(&key(2).to_text()).unwrap().id, 2);
    assert_eq!(nm.find_peer("charlie.tail.example.").unwrap().id, 3);
    assert_eq!(nm.find_peer("charlie.tail.example").unwrap().id, 3);
    assert_eq!(nm.find_peer("BRAVO").unwrap().id, 2);
    assert!(nm.find_peer("delta").is_none());
    assert!(nm.find_peer("100.64.0.1").is_none(), "self is not a peer");
}

#[test]
fn repeating_an_identical_self_node_is_not_a_change() {
    let mut s = session_with(vec![]);
    let ch = s
        .handle_map_response(
            MapResponse {
                node: Some(node(1, "self")),
                ..MapResponse::default()
            },
            t0(),
        )
        .unwrap();
    assert!(!ch.self_node);
    let mut renamed = node(1, "self2");
    renamed.machine_authorized = true;
    let ch = s
        .handle_map_response(
            MapResponse {
                node: Some(renamed),
                ..MapResponse::default()
            },
            t0(),
        )
        .unwrap();
    assert!(ch.self_node);
}

#[test]
fn tka_info_is_kept_until_control_sends_another() {
    let mut s = session_with(vec![]);
    assert_eq!(s.netmap(t0()).unwrap().tka, None);
    let ch = s
        .handle_map_response(decode(json!({"TKAInfo": {"Head": "ABCD"}})), t0())
        .unwrap();
    assert!(ch.tka && ch.netmap_changed());
    let head = |s: &MapSession| s.netmap(t0()).unwrap().tka;
    assert_eq!(head(&s).unwrap().head, "ABCD");
    // A message without TKAInfo leaves it as it was.
    let ch = s
        .handle_map_response(decode(json!({"PeersRemoved": [99]})), t0())
        .unwrap();
    assert!(!ch.tka);
    assert_eq!(head(&s).unwrap().head, "ABCD");
    s.handle_map_response(decode(json!({"TKAInfo": {"Disabled": true}})), t0())
        .unwrap();
    assert!(head(&s).unwrap().disabled);
}
