//! Layer 1: the client side of the map stream, as a pure state machine.
//!
//! A [`MapSession`] lives for one streaming `/machine/map` response. Feed it every decoded
//! message with [`MapSession::handle_map_response`] (keep-alives included); it applies full
//! peer lists and deltas (`PeersChanged`, `PeersRemoved`, `PeersChangedPatch`,
//! `OnlineChange`, `PeerSeenChange`), the DERP map's "null = keep" rules, named packet-filter
//! chunks, DNS config and user profiles, and reports what changed. [`MapSession::netmap`]
//! builds the [`NetworkMap`] as of a wall-clock `now`, adjusted by the control server's clock
//! skew, with expired peers dropped; [`MapSession::poll_timeout`] says when the next key
//! expires, so the driver can rebuild the map then. A new stream starts a new session: all
//! delta state is per HTTP response.
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use weft_key::NodePublic;
use weft_tailcfg::{
    DerpMap, DnsConfig, FilterRule, MapResponse, Node, NodeId, PingRequest, SshPolicy, Time,
    TkaInfo, UserId, UserProfile,
};

/// The legacy "magic" DERP IP that `Node.DERP` uses (`127.3.3.40:<region>`).
const LEGACY_DERP_MAGIC: &str = "127.3.3.40:";

/// Errors applying a map message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetmapError {
    /// The first non-keep-alive message of a stream must carry the self node.
    #[error("initial MapResponse lacked node")]
    InitialLacksNode,
}

/// What one message changed, so the driver only reconfigures what it must.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// A keep-alive (nothing else in it was applied).
    pub keep_alive: bool,
    /// The self node was replaced.
    pub self_node: bool,
    /// Any peer was added, removed or changed.
    pub peers: bool,
    /// The DERP map changed.
    pub derp_map: bool,
    /// The packet filter was (re)set.
    pub packet_filter: bool,
    /// The DNS config was replaced.
    pub dns: bool,
    /// The tailnet-lock state changed.
    pub tka: bool,
    /// A ping request to answer (already de-duplicated by URL).
    pub ping_request: Option<PingRequest>,
    /// A URL to show the user (already de-duplicated).
    pub pop_browser_url: Option<String>,
}

impl Changes {
    /// Whether the network map (as built by [`MapSession::netmap`]) may differ.
    pub fn netmap_changed(&self) -> bool {
        self.self_node || self.peers || self.derp_map || self.packet_filter || self.dns || self.tka
    }
}

/// The node's view of its tailnet at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkMap {
    /// This node.
    pub self_node: Node,
    /// Whether our own key has expired (the agent must log in again).
    pub self_expired: bool,
    /// Usable peers, sorted by node ID.
    pub peers: Vec<Node>,
    /// Peers left out because their key expired, sorted by node ID.
    pub expired_peers: Vec<NodeId>,
    /// The DERP map (empty until control sends one).
    pub derp_map: DerpMap,
    /// Concatenated filter rules (chunks in name order). Empty = deny all inbound.
    pub packet_filter: Vec<FilterRule>,
    /// DNS configuration.
    pub dns: DnsConfig,
    /// Tailnet name.
    pub domain: String,
    /// User profiles by ID.
    pub user_profiles: BTreeMap<UserId, UserProfile>,
    /// SSH policy, if any.
    pub ssh_policy: Option<SshPolicy>,
    /// Legacy health messages.
    pub health: Vec<String>,
    /// Tailnet lock as control last described it (`None`: never mentioned, i.e. not enabled).
    pub tka: Option<TkaInfo>,
}

impl NetworkMap {
    /// Our tailnet addresses (host prefixes).
    pub fn addresses(&self) -> &[IpNet] {
        &self.self_node.addresses
    }

    /// Our node key.
    pub fn node_key(&self) -> NodePublic {
        self.self_node.key
    }

    /// The MagicDNS suffix: the self node's name without its first label and trailing dot.
    pub fn magic_dns_suffix(&self) -> &str {
        let name = self.self_node.name.trim_end_matches('.');
        name.split_once('.').map(|(_, rest)| rest).unwrap_or("")
    }

    /// The peer with this node key.
    pub fn peer_by_key(&self, key: &NodePublic) -> Option<&Node> {
        self.peers.iter().find(|p| p.key == *key)
    }

    /// The peer that owns this tailnet address (one of its `Addresses`).
    pub fn peer_by_ip(&self, ip: IpAddr) -> Option<&Node> {
        self.peers
            .iter()
            .find(|p| p.addresses.iter().any(|a| a.addr() == ip))
    }

    /// Resolves what a user typed: tailnet IP, node key, FQDN (with or without the trailing
    /// dot) or short host name (first label of the name, else `Hostinfo.Hostname`).
    pub fn find_peer(&self, query: &str) -> Option<&Node> {
        if let Ok(ip) = query.parse::<IpAddr>() {
            return self.peer_by_ip(ip);
        }
        if let Ok(k) = NodePublic::parse(query) {
            return self.peer_by_key(&k);
        }
        let q = query.trim_end_matches('.').to_ascii_lowercase();
        self.peers
            .iter()
            .find(|p| p.name.trim_end_matches('.').eq_ignore_ascii_case(&q))
            .or_else(|| {
                self.peers
                    .iter()
                    .find(|p| short_name(p).eq_ignore_ascii_case(&q))
            })
    }
}

/// A node's short name: the first label of its FQDN, or its reported hostname.
pub fn short_name(n: &Node) -> &str {
    match n.name.split('.').next() {
        Some(s) if !s.is_empty() => s,
        _ => n.hostinfo.hostname().unwrap_or(""),
    }
}

/// The client state of one map stream.
#[derive(Debug, Clone, Default)]
pub struct MapSession {
    self_node: Option<Node>,
    peers: BTreeMap<NodeId, Node>,
    derp_map: Option<DerpMap>,
    named_filters: BTreeMap<String, Vec<FilterRule>>,
    dns: Option<DnsConfig>,
    domain: String,
    user_profiles: BTreeMap<UserId, UserProfile>,
    ssh_policy: Option<SshPolicy>,
    health: Vec<String>,
    tka: Option<TkaInfo>,
    /// Control's clock minus ours, in nanoseconds, from the last `ControlTime`.
    skew_nanos: i128,
    last_ping_url: String,
    last_pop_url: String,
}

impl MapSession {
    /// A session for a fresh stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one message received at wall-clock `now`.
    pub fn handle_map_response(
        &mut self,
        resp: MapResponse,
        now: SystemTime,
    ) -> Result<Changes, NetmapError> {
        let mut ch = Changes::default();
        if let Some(t) = resp.control_time.filter(|t| !t.is_zero()) {
            self.skew_nanos = t.unix_nanos() - Time::from_system(now).unix_nanos();
        }
        if let Some(p) = resp.ping_request.clone() {
            if p.url != self.last_ping_url {
                self.last_ping_url.clone_from(&p.url);
                ch.ping_request = Some(p);
            }
        }
        if !resp.pop_browser_url.is_empty() && resp.pop_browser_url != self.last_pop_url {
            self.last_pop_url.clone_from(&resp.pop_browser_url);
            ch.pop_browser_url = Some(resp.pop_browser_url.clone());
        }
        if resp.keep_alive {
            ch.keep_alive = true;
            return Ok(ch);
        }
        if self.self_node.is_none() && resp.node.is_none() {
            return Err(NetmapError::InitialLacksNode);
        }
        ch.peers = self.apply_peers(&resp, now);
        if let Some(mut n) = resp.node {
            upgrade_node(&mut n);
            ch.self_node = self.self_node.as_ref() != Some(&n);
            self.self_node = Some(n);
        }
        for up in resp.user_profiles {
            self.user_profiles.insert(up.id, up);
        }
        if let Some(dm) = resp.derp_map {
            ch.derp_map = self.apply_derp_map(dm);
        }
        if let Some(pf) = resp.packet_filter {
            self.named_filters.insert("base".to_owned(), pf);
            ch.packet_filter = true;
        }
        if let Some(chunks) = resp.packet_filters {
            ch.packet_filter = true;
            if matches!(chunks.get("*"), Some(None)) {
                self.named_filters.clear();
            }
            for (name, rules) in chunks {
                if name == "*" {
                    continue;
                }
                match rules {
                    Some(r) => {
                        self.named_filters.insert(name, r);
                    }
                    None => {
                        self.named_filters.remove(&name);
                    }
                }
            }
        }
        if let Some(dns) = resp.dns_config {
            ch.dns = self.dns.as_ref() != Some(&dns);
            self.dns = Some(dns);
        }
        if !resp.domain.is_empty() {
            self.domain = resp.domain;
        }
        if let Some(p) = resp.ssh_policy {
            self.ssh_policy = Some(p);
        }
        // TKAInfo: absent = unchanged.
        if let Some(t) = resp.tka_info {
            ch.tka = self.tka.as_ref() != Some(&t);
            self.tka = Some(t);
        }
        if let Some(h) = resp.health {
            self.health = h;
        }
        Ok(ch)
    }

    /// The network map as of wall-clock `now`; `None` before the first full message.
    pub fn netmap(&self, now: SystemTime) -> Option<NetworkMap> {
        let self_node = self.self_node.clone()?;
        let control_now = self.control_now(now);
        let self_expired = self_node.expired || key_expired(&self_node, control_now);
        let mut peers = Vec::with_capacity(self.peers.len());
        let mut expired_peers = Vec::new();
        for p in self.peers.values() {
            if p.expired || key_expired(p, control_now) {
                expired_peers.push(p.id);
            } else {
                peers.push(p.clone());
            }
        }
        Some(NetworkMap {
            self_node,
            self_expired,
            peers,
            expired_peers,
            derp_map: self.derp_map.clone().unwrap_or_default(),
            packet_filter: self.named_filters.values().flatten().cloned().collect(),
            dns: self.dns.clone().unwrap_or_default(),
            domain: self.domain.clone(),
            user_profiles: self.user_profiles.clone(),
            ssh_policy: self.ssh_policy.clone(),
            health: self.health.clone(),
            tka: self.tka.clone(),
        })
    }

    /// The next wall-clock instant at which a key (self or peer) that is valid at `now`
    /// expires, so the netmap must be rebuilt then.
    pub fn poll_timeout(&self, now: SystemTime) -> Option<SystemTime> {
        let control_now = self.control_now(now);
        self.self_node
            .iter()
            .chain(self.peers.values())
            .filter(|n| !n.key_expiry.is_zero() && n.key_expiry > control_now)
            .map(|n| n.key_expiry)
            .min()
            .map(|t| self.to_local(t))
    }

    /// Whether the stream has delivered its first full message.
    pub fn has_self_node(&self) -> bool {
        self.self_node.is_some()
    }

    fn control_now(&self, now: SystemTime) -> Time {
        shift(Time::from_system(now), self.skew_nanos)
    }

    fn to_local(&self, t: Time) -> SystemTime {
        shift(t, -self.skew_nanos).to_system()
    }

    fn apply_peers(&mut self, resp: &MapResponse, now: SystemTime) -> bool {
        if !resp.peers.is_empty() {
            let mut next = BTreeMap::new();
            for n in &resp.peers {
                let mut n = n.clone();
                upgrade_node(&mut n);
                next.insert(n.id, n);
            }
            let changed = next != self.peers;
            self.peers = next;
            return changed;
        }
        let mut changed = false;
        for id in &resp.peers_removed {
            changed |= self.peers.remove(id).is_some();
        }
        for n in &resp.peers_changed {
            let mut n = n.clone();
            upgrade_node(&mut n);
            changed |= self.peers.get(&n.id) != Some(&n);
            self.peers.insert(n.id, n);
        }
        for (id, seen) in &resp.peer_seen_change {
            if let Some(p) = self.peers.get_mut(id) {
                p.last_seen = seen.then(|| Time::from_system(now));
                changed = true;
            }
        }
        for (id, online) in &resp.online_change {
            if let Some(p) = self.peers.get_mut(id) {
                p.online = Some(*online);
                changed = true;
            }
        }
        for pc in &resp.peers_changed_patch {
            let Some(p) = self.peers.get_mut(&pc.node_id) else {
                continue;
            };
            changed = true;
            if pc.derp_region != 0 {
                p.home_derp = pc.derp_region;
            }
            if pc.cap != 0 {
                p.cap = pc.cap;
            }
            if let Some(e) = &pc.endpoints {
                p.endpoints.clone_from(e);
            }
            if let Some(k) = pc.key {
                p.key = k;
            }
            if let Some(k) = pc.disco_key {
                p.disco_key = k;
            }
            if let Some(o) = pc.online {
                p.online = Some(o);
            }
            if let Some(t) = pc.last_seen {
                p.last_seen = Some(t);
            }
            if let Some(t) = pc.key_expiry {
                p.key_expiry = t;
            }
            if let Some(s) = &pc.key_signature {
                p.key_signature = Some(s.clone());
            }
            if let Some(c) = &pc.cap_map {
                p.cap_map = Some(c.clone());
            }
        }
        changed
    }

    fn apply_derp_map(&mut self, mut dm: DerpMap) -> bool {
        if let Some(old) = &self.derp_map {
            if dm.regions.is_empty() {
                dm.regions.clone_from(&old.regions);
                dm.omit_default_regions = old.omit_default_regions;
            }
            match (&mut dm.home_params, &old.home_params) {
                (None, Some(h)) => dm.home_params = Some(h.clone()),
                (Some(new), Some(old)) if new.region_score.is_none() => {
                    new.region_score.clone_from(&old.region_score);
                }
                _ => {}
            }
        }
        let changed = self.derp_map.as_ref() != Some(&dm);
        self.derp_map = Some(dm);
        changed
    }
}

fn shift(t: Time, nanos: i128) -> Time {
    let d = Duration::from_nanos(nanos.unsigned_abs().min(u128::from(u64::MAX)) as u64);
    if nanos >= 0 {
        t + d
    } else {
        t - d
    }
}

fn key_expired(n: &Node, control_now: Time) -> bool {
    !n.key_expiry.is_zero() && n.key_expiry <= control_now
}

/// Fills `HomeDERP` from the legacy `DERP` string when only the latter is set.
fn upgrade_node(n: &mut Node) {
    if n.home_derp == 0 {
        if let Some(r) = n
            .legacy_derp
            .strip_prefix(LEGACY_DERP_MAGIC)
            .and_then(|r| r.parse().ok())
        {
            n.home_derp = r;
        }
    }
}

#[cfg(test)]
mod tests;
