//! The mapper's input: a tailnet snapshot.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use weft_key::{DiscoPublic, MachinePublic, NodePublic};
use weft_tailcfg::{
    DerpMap, DnsRecord, FilterRule, Hostinfo, NodeId, Resolver, SshPolicy, Time, UserId,
};

/// Decides which peers a node sees and which packets it accepts.
///
/// Implemented by the policy engine; [`AllowAll`] is the no-policy default.
pub trait PolicyView: Send + Sync {
    /// The packet filter for `node` (destination-side rules). An empty list denies all
    /// inbound traffic.
    fn packet_filter(&self, node: NodeId) -> Vec<FilterRule>;
    /// Whether `viewer` has `peer` in its netmap.
    fn may_see(&self, viewer: NodeId, peer: NodeId) -> bool;
    /// The SSH policy for `node`, if any.
    fn ssh_policy(&self, _node: NodeId) -> Option<SshPolicy> {
        None
    }
}

/// Every node sees every node and accepts everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl PolicyView for AllowAll {
    fn packet_filter(&self, _node: NodeId) -> Vec<FilterRule> {
        vec![FilterRule::allow_all()]
    }

    fn may_see(&self, _viewer: NodeId, _peer: NodeId) -> bool {
        true
    }
}

/// A user as the netmap shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    /// User ID.
    pub id: UserId,
    /// Login name (e-mail-like).
    pub login_name: String,
    /// Display name.
    pub display_name: String,
    /// Picture URL.
    pub profile_pic_url: String,
}

/// One node's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeState {
    /// Node ID.
    pub id: NodeId,
    /// Owner.
    pub user_id: UserId,
    /// Machine key.
    pub machine_key: MachinePublic,
    /// Current node key.
    pub node_key: NodePublic,
    /// Current disco key.
    pub disco_key: DiscoPublic,
    /// MagicDNS label (unique in the tailnet).
    pub given_name: String,
    /// Tailnet IPv4 address.
    pub ipv4: Option<Ipv4Addr>,
    /// Tailnet IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
    /// Last Hostinfo, verbatim.
    pub hostinfo: Hostinfo,
    /// UDP endpoints.
    pub endpoints: Vec<SocketAddr>,
    /// Home DERP region (0 = unknown).
    pub home_derp: i32,
    /// ACL tags.
    pub tags: Vec<String>,
    /// Routes an admin approved (intersected with what the node advertises).
    pub approved_routes: Vec<IpNet>,
    /// Creation time.
    pub created: Time,
    /// Key expiry; `None` = never.
    pub key_expiry: Option<Time>,
    /// Whether the node has a live map stream.
    pub online: bool,
    /// Last time it was connected.
    pub last_seen: Option<Time>,
    /// Device approval.
    pub machine_authorized: bool,
    /// The node's capability version.
    pub cap: i64,
    /// TKA key signature (base64).
    pub key_signature: Option<String>,
}

impl NodeState {
    /// Whether the key is expired at `now`.
    pub fn is_expired(&self, now: Time) -> bool {
        self.key_expiry.is_some_and(|e| !e.is_zero() && e <= now)
    }

    /// Routes the node both advertises (`Hostinfo.RoutableIPs`) and is approved for, in
    /// approval order: the routes it may serve.
    pub fn enabled_routes(&self) -> Vec<IpNet> {
        let advertised = self.hostinfo.routable_ips();
        self.approved_routes
            .iter()
            .filter(|r| advertised.contains(r))
            .copied()
            .collect()
    }
}

/// DNS settings of the tailnet.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsSettings {
    /// MagicDNS suffix, e.g. `tailnet.example` (no trailing dot).
    pub base_domain: String,
    /// MagicDNS on (`Proxied`).
    pub magic_dns: bool,
    /// Global nameservers.
    pub nameservers: Vec<Resolver>,
    /// Extra search domains.
    pub search_domains: Vec<String>,
    /// Split DNS routes.
    pub routes: BTreeMap<String, Vec<Resolver>>,
    /// Extra records.
    pub extra_records: Vec<DnsRecord>,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            base_domain: "weft.internal".to_string(),
            magic_dns: true,
            nameservers: Vec::new(),
            search_domains: Vec::new(),
            routes: BTreeMap::new(),
            extra_records: Vec::new(),
        }
    }
}

/// Everything the mapper reads.
#[derive(Clone)]
pub struct Snapshot {
    /// Nodes by ID.
    pub nodes: BTreeMap<NodeId, NodeState>,
    /// Users by ID.
    pub users: BTreeMap<UserId, UserInfo>,
    /// DERP map sent to every node.
    pub derp_map: Arc<DerpMap>,
    /// DNS settings.
    pub dns: DnsSettings,
    /// Visibility and filters.
    pub policy: Arc<dyn PolicyView>,
    /// The node serving each subnet route (see [`crate::elect_primaries`]); `None`: no
    /// election, every node serves all its approved and advertised routes.
    pub primaries: Option<BTreeMap<IpNet, NodeId>>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            nodes: BTreeMap::new(),
            users: BTreeMap::new(),
            derp_map: Arc::new(DerpMap::default()),
            dns: DnsSettings::default(),
            policy: Arc::new(AllowAll),
            primaries: None,
        }
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("nodes", &self.nodes.len())
            .field("users", &self.users.len())
            .field("dns", &self.dns.base_domain)
            .finish_non_exhaustive()
    }
}
