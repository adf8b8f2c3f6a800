//! Building `tailcfg` objects and full maps from a snapshot.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use weft_tailcfg::{Debug, DnsConfig, MapResponse, Node, NodeId, Time, UserId, UserProfile};

use crate::delta::MapSession;
use crate::snapshot::{NodeState, Snapshot};

/// The synthetic owner of tagged nodes (as Headscale reports them).
pub const TAGGED_DEVICES_USER_ID: UserId = 2_147_455_555;

/// Errors building a map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// The node is not in the snapshot.
    #[error("node {0} not found")]
    NodeNotFound(NodeId),
}

/// The node's owner as the netmap shows it (tagged nodes belong to `tagged-devices`).
pub(crate) fn owner_of(n: &NodeState) -> UserId {
    if n.tags.is_empty() {
        n.user_id
    } else {
        TAGGED_DEVICES_USER_ID
    }
}

pub(crate) fn profile_of(snap: &Snapshot, user: UserId) -> UserProfile {
    if user == TAGGED_DEVICES_USER_ID {
        return UserProfile {
            id: user,
            login_name: "tagged-devices".to_string(),
            display_name: "Tagged Devices".to_string(),
            ..UserProfile::default()
        };
    }
    match snap.users.get(&user) {
        Some(u) => UserProfile {
            id: u.id,
            login_name: u.login_name.clone(),
            display_name: if u.display_name.is_empty() {
                u.login_name.clone()
            } else {
                u.display_name.clone()
            },
            profile_pic_url: u.profile_pic_url.clone(),
            groups: Vec::new(),
        },
        None => UserProfile {
            id: user,
            login_name: format!("user-{user}"),
            display_name: format!("user-{user}"),
            ..UserProfile::default()
        },
    }
}

fn is_exit_route(p: &IpNet) -> bool {
    p.prefix_len() == 0
}

/// The node as its peers see it (a full object, never partial).
pub fn peer_node(snap: &Snapshot, n: &NodeState, now: Time) -> Node {
    let mut addresses: Vec<IpNet> = Vec::with_capacity(2);
    if let Some(v4) = n.ipv4 {
        addresses.push(IpNet::from(std::net::IpAddr::V4(v4)));
    }
    if let Some(v6) = n.ipv6 {
        addresses.push(IpNet::from(std::net::IpAddr::V6(v6)));
    }
    // Exit routes always; a subnet route only where the node is its primary (when several
    // routers serve one prefix, peers send it to one of them).
    let routes: Vec<IpNet> = n
        .enabled_routes()
        .into_iter()
        .filter(|r| {
            is_exit_route(r)
                || snap
                    .primaries
                    .as_ref()
                    .is_none_or(|p| p.get(r) == Some(&n.id))
        })
        .collect();
    let mut allowed = addresses.clone();
    allowed.extend(routes.iter().copied());
    let primary: Vec<IpNet> = routes
        .iter()
        .filter(|r| !is_exit_route(r))
        .copied()
        .collect();
    let name = if snap.dns.base_domain.is_empty() {
        format!("{}.", n.given_name)
    } else {
        format!("{}.{}.", n.given_name, snap.dns.base_domain)
    };
    let tagged = !n.tags.is_empty();
    let key_expiry = if tagged {
        Time::ZERO
    } else {
        n.key_expiry.unwrap_or(Time::ZERO)
    };
    let expired = !tagged && n.is_expired(now);
    Node {
        id: n.id,
        stable_id: n.id.to_string(),
        name,
        user: owner_of(n),
        key: n.node_key,
        key_expiry,
        key_signature: n.key_signature.clone(),
        machine: n.machine_key,
        disco_key: n.disco_key,
        addresses,
        allowed_ips: Some(allowed),
        endpoints: n.endpoints.clone(),
        legacy_derp: if n.home_derp > 0 {
            format!("127.3.3.40:{}", n.home_derp)
        } else {
            String::new()
        },
        home_derp: n.home_derp,
        hostinfo: n.hostinfo.clone(),
        created: n.created,
        cap: n.cap,
        tags: n.tags.clone(),
        primary_routes: primary,
        last_seen: if n.online { None } else { n.last_seen },
        online: Some(n.online),
        machine_authorized: n.machine_authorized,
        expired,
        ..Node::default()
    }
}

/// Elects the primary router of every subnet route (exit routes have none): among the
/// approved nodes that advertise the route and are approved for it, the current primary
/// stays while it is online (no flapping back); otherwise the online node with the lowest
/// ID takes over. With no router online the current primary stays (or the lowest ID
/// becomes it), so a lone router's route does not vanish while it reconnects. Nodes
/// awaiting device approval or with an expired key at `now` are not candidates.
pub fn elect_primaries(snap: &Snapshot, now: Time) -> BTreeMap<IpNet, NodeId> {
    let mut candidates: BTreeMap<IpNet, Vec<&NodeState>> = BTreeMap::new();
    let eligible =
        |n: &&NodeState| n.machine_authorized && (!n.tags.is_empty() || !n.is_expired(now));
    for n in snap.nodes.values().filter(eligible) {
        if n.approved_routes.is_empty() {
            continue;
        }
        for r in n.enabled_routes() {
            if !is_exit_route(&r) {
                candidates.entry(r).or_default().push(n);
            }
        }
    }
    let current = snap.primaries.as_ref();
    candidates
        .into_iter()
        .filter_map(|(route, nodes)| {
            let cur = current
                .and_then(|p| p.get(&route))
                .and_then(|id| nodes.iter().find(|n| n.id == *id));
            // `nodes` is in ID order (the snapshot's BTreeMap).
            let chosen = match cur {
                Some(c) if c.online => c,
                _ => nodes.iter().find(|n| n.online).or(cur).or(nodes.first())?,
            };
            Some((route, chosen.id))
        })
        .collect()
}

/// The node as it sees itself (`MapResponse.Node`).
pub fn self_node(snap: &Snapshot, n: &NodeState, now: Time) -> Node {
    let mut node = peer_node(snap, n, now);
    node.online = None;
    node.last_seen = None;
    node
}

pub(crate) fn dns_config(snap: &Snapshot) -> DnsConfig {
    let d = &snap.dns;
    let mut domains = Vec::new();
    if !d.base_domain.is_empty() && d.magic_dns {
        domains.push(d.base_domain.clone());
    }
    domains.extend(d.search_domains.iter().cloned());
    DnsConfig {
        resolvers: d.nameservers.clone(),
        routes: d
            .routes
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect(),
        domains,
        proxied: d.magic_dns,
        extra_records: d.extra_records.clone(),
        ..DnsConfig::default()
    }
}

/// The visible peers of `viewer`, sorted by ID (the viewer itself excluded).
pub(crate) fn visible_peers<'a>(
    snap: &'a Snapshot,
    viewer: NodeId,
) -> impl Iterator<Item = &'a NodeState> + 'a {
    let me = snap.nodes.get(&viewer);
    snap.nodes
        .values()
        .filter(move |p| p.id != viewer && me.is_some_and(|me| may_see(snap, me, p)))
}

/// Whether `viewer` is shown `peer`: both are approved (device approval: a node awaiting
/// it sees no peers and is seen by none) and the policy lets `viewer` see `peer`.
pub(crate) fn may_see(snap: &Snapshot, viewer: &NodeState, peer: &NodeState) -> bool {
    viewer.machine_authorized && peer.machine_authorized && snap.policy.may_see(viewer.id, peer.id)
}

/// The first message of a map stream for `node`, and the session state that records it.
pub fn full_map(
    snap: &Snapshot,
    node: NodeId,
    now: Time,
) -> Result<(MapResponse, MapSession), MapError> {
    let me = snap.nodes.get(&node).ok_or(MapError::NodeNotFound(node))?;
    let mut session = MapSession::new(node);
    let resp = resync(snap, me, &mut session, now, true);
    Ok((resp, session))
}

/// A message that replaces everything the session knows.
pub(crate) fn resync(
    snap: &Snapshot,
    me: &NodeState,
    session: &mut MapSession,
    now: Time,
    first: bool,
) -> MapResponse {
    let mut profiles: BTreeMap<UserId, UserProfile> = BTreeMap::new();
    profiles.insert(owner_of(me), profile_of(snap, owner_of(me)));
    let mut peers = Vec::new();
    let mut visible = BTreeSet::new();
    for p in visible_peers(snap, me.id) {
        let owner = owner_of(p);
        profiles
            .entry(owner)
            .or_insert_with(|| profile_of(snap, owner));
        visible.insert(p.id);
        peers.push(peer_node(snap, p, now));
    }
    let removed: Vec<NodeId> = if peers.is_empty() && !first {
        session.visible.iter().copied().collect()
    } else {
        Vec::new()
    };
    session.visible = visible;
    MapResponse {
        node: Some(self_node(snap, me, now)),
        derp_map: Some((*snap.derp_map).clone()),
        peers,
        peers_removed: removed,
        user_profiles: profiles.into_values().collect(),
        packet_filter: Some(snap.policy.packet_filter(me.id)),
        ssh_policy: snap.policy.ssh_policy(me.id),
        dns_config: Some(dns_config(snap)),
        domain: snap.dns.base_domain.clone(),
        collect_services: Some(false),
        debug: if first {
            Some(Debug {
                disable_log_tail: true,
                ..Debug::default()
            })
        } else {
            None
        },
        control_time: Some(now),
        ..MapResponse::default()
    }
}
