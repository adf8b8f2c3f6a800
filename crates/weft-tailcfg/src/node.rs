//! `tailcfg.Node`, `User`, `Login`, `UserProfile`, `PeerChange`.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use weft_key::{DiscoPublic, MachinePublic, NodePublic};

use crate::dns::Resolver;
use crate::filter::CapMap;
use crate::hostinfo::Hostinfo;
use crate::serde_helpers::{
    is_false, is_zero_i32, is_zero_i64, lenient_addrports, lenient_opt_addrports, null_default,
};
use crate::time::Time;

/// Node ID (> 0, never reused).
pub type NodeId = i64;
/// User ID (> 0).
pub type UserId = i64;

/// A node as control describes it: the self node (`MapResponse.Node`) or a peer.
/// Always a full replacement on the wire, never a partial object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Node {
    /// Unique, stable node ID.
    #[serde(rename = "ID")]
    pub id: NodeId,
    /// Stable string ID.
    #[serde(rename = "StableID")]
    pub stable_id: String,
    /// FQDN with trailing dot, e.g. `host.tailnet.example.`.
    #[serde(rename = "Name")]
    pub name: String,
    /// Owner user ID.
    #[serde(rename = "User")]
    pub user: UserId,
    /// Sharer user ID (node sharing).
    #[serde(rename = "Sharer", skip_serializing_if = "is_zero_i64")]
    pub sharer: UserId,
    /// WireGuard public key.
    #[serde(rename = "Key")]
    pub key: NodePublic,
    /// Key expiry; zero = never.
    #[serde(rename = "KeyExpiry")]
    pub key_expiry: Time,
    /// TKA signature of the key (base64).
    #[serde(rename = "KeySignature", skip_serializing_if = "Option::is_none")]
    pub key_signature: Option<String>,
    /// Machine key.
    #[serde(rename = "Machine")]
    pub machine: MachinePublic,
    /// Disco key; zero makes the peer unusable.
    #[serde(rename = "DiscoKey")]
    pub disco_key: DiscoPublic,
    /// The node's own addresses (/32 and /128).
    #[serde(rename = "Addresses", deserialize_with = "null_default")]
    pub addresses: Vec<IpNet>,
    /// Routes to this node; `None` = same as `Addresses`, `Some([])` = nothing.
    #[serde(rename = "AllowedIPs", skip_serializing_if = "Option::is_none")]
    pub allowed_ips: Option<Vec<IpNet>>,
    /// UDP endpoints.
    #[serde(
        rename = "Endpoints",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "lenient_addrports"
    )]
    pub endpoints: Vec<SocketAddr>,
    /// Legacy home DERP (`"127.3.3.40:<region>"`).
    #[serde(rename = "DERP", skip_serializing_if = "String::is_empty")]
    pub legacy_derp: String,
    /// Home DERP region ID.
    #[serde(rename = "HomeDERP", skip_serializing_if = "is_zero_i32")]
    pub home_derp: i32,
    /// Host information, verbatim from the client.
    #[serde(rename = "Hostinfo", deserialize_with = "null_default")]
    pub hostinfo: Hostinfo,
    /// Creation time.
    #[serde(rename = "Created")]
    pub created: Time,
    /// The node's own capability version.
    #[serde(rename = "Cap", skip_serializing_if = "is_zero_i64")]
    pub cap: i64,
    /// ACL tags (`tag:…`).
    #[serde(
        rename = "Tags",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub tags: Vec<String>,
    /// Subnet routes this node is primary for.
    #[serde(
        rename = "PrimaryRoutes",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub primary_routes: Vec<IpNet>,
    /// Last seen (only for offline peers).
    #[serde(rename = "LastSeen", skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
    /// Whether the node is connected to control; `None` = unknown.
    #[serde(rename = "Online", skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
    /// Whether the node is authorized (self: gates the client).
    #[serde(rename = "MachineAuthorized", skip_serializing_if = "is_false")]
    pub machine_authorized: bool,
    /// Deprecated list form of `CapMap`.
    #[serde(
        rename = "Capabilities",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub capabilities: Vec<String>,
    /// Node attributes (self) or peer capabilities.
    #[serde(rename = "CapMap", skip_serializing_if = "Option::is_none")]
    pub cap_map: Option<CapMap>,
    /// TKA: restrict to peerAPI only.
    #[serde(rename = "UnsignedPeerAPIOnly", skip_serializing_if = "is_false")]
    pub unsigned_peer_api_only: bool,
    /// Flow-log ID.
    #[serde(
        rename = "DataPlaneAuditLogID",
        skip_serializing_if = "String::is_empty"
    )]
    pub data_plane_audit_log_id: String,
    /// Key expired.
    #[serde(rename = "Expired", skip_serializing_if = "is_false")]
    pub expired: bool,
    /// Per-peer IPv4 masquerade address.
    #[serde(
        rename = "SelfNodeV4MasqAddrForThisPeer",
        skip_serializing_if = "Option::is_none"
    )]
    pub self_node_v4_masq_addr_for_this_peer: Option<IpAddr>,
    /// Per-peer IPv6 masquerade address.
    #[serde(
        rename = "SelfNodeV6MasqAddrForThisPeer",
        skip_serializing_if = "Option::is_none"
    )]
    pub self_node_v6_masq_addr_for_this_peer: Option<IpAddr>,
    /// A plain WireGuard peer (no disco).
    #[serde(rename = "IsWireGuardOnly", skip_serializing_if = "is_false")]
    pub is_wireguard_only: bool,
    /// Peer may not initiate connections.
    #[serde(rename = "IsJailed", skip_serializing_if = "is_false")]
    pub is_jailed: bool,
    /// DNS resolvers for WireGuard-only exit nodes.
    #[serde(
        rename = "ExitNodeDNSResolvers",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub exit_node_dns_resolvers: Vec<Resolver>,
}

/// `tailcfg.User`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct User {
    /// User ID.
    #[serde(rename = "ID")]
    pub id: UserId,
    /// Display name.
    #[serde(rename = "DisplayName")]
    pub display_name: String,
    /// Picture URL.
    #[serde(rename = "ProfilePicURL", skip_serializing_if = "String::is_empty")]
    pub profile_pic_url: String,
    /// Creation time.
    #[serde(rename = "Created", skip_serializing_if = "Time::is_zero")]
    pub created: Time,
}

/// `tailcfg.Login`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Login {
    /// Login ID.
    #[serde(rename = "ID")]
    pub id: i64,
    /// Identity provider (`""`, `"oidc"`, …).
    #[serde(rename = "Provider")]
    pub provider: String,
    /// Login name (e-mail-like).
    #[serde(rename = "LoginName")]
    pub login_name: String,
    /// Display name.
    #[serde(rename = "DisplayName")]
    pub display_name: String,
    /// Picture URL.
    #[serde(rename = "ProfilePicURL", skip_serializing_if = "String::is_empty")]
    pub profile_pic_url: String,
}

/// `tailcfg.UserProfile` (sent in `MapResponse.UserProfiles`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UserProfile {
    /// User ID.
    #[serde(rename = "ID")]
    pub id: UserId,
    /// Login name (e-mail-like).
    #[serde(rename = "LoginName")]
    pub login_name: String,
    /// Display name.
    #[serde(rename = "DisplayName")]
    pub display_name: String,
    /// Picture URL.
    #[serde(rename = "ProfilePicURL", skip_serializing_if = "String::is_empty")]
    pub profile_pic_url: String,
    /// Groups (optional).
    #[serde(
        rename = "Groups",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub groups: Vec<String>,
}

/// A partial update of one peer (`MapResponse.PeersChangedPatch`). `None` = unchanged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerChange {
    /// The peer.
    #[serde(rename = "NodeID")]
    pub node_id: NodeId,
    /// New home DERP region (0 = unchanged).
    #[serde(rename = "DERPRegion", skip_serializing_if = "is_zero_i32")]
    pub derp_region: i32,
    /// New capability version (0 = unchanged).
    #[serde(rename = "Cap", skip_serializing_if = "is_zero_i64")]
    pub cap: i64,
    /// New capability map.
    #[serde(rename = "CapMap", skip_serializing_if = "Option::is_none")]
    pub cap_map: Option<CapMap>,
    /// New endpoints (`Some([])` = none).
    #[serde(
        rename = "Endpoints",
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_opt_addrports"
    )]
    pub endpoints: Option<Vec<SocketAddr>>,
    /// New node key.
    #[serde(rename = "Key", skip_serializing_if = "Option::is_none")]
    pub key: Option<NodePublic>,
    /// New key signature (base64).
    #[serde(rename = "KeySignature", skip_serializing_if = "Option::is_none")]
    pub key_signature: Option<String>,
    /// New disco key.
    #[serde(rename = "DiscoKey", skip_serializing_if = "Option::is_none")]
    pub disco_key: Option<DiscoPublic>,
    /// Online state.
    #[serde(rename = "Online", skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
    /// Last seen.
    #[serde(rename = "LastSeen", skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
    /// New key expiry (zero = none).
    #[serde(rename = "KeyExpiry", skip_serializing_if = "Option::is_none")]
    pub key_expiry: Option<Time>,
}

impl PeerChange {
    /// Whether the patch carries no change besides the ID.
    pub fn is_empty(&self) -> bool {
        *self
            == PeerChange {
                node_id: self.node_id,
                ..PeerChange::default()
            }
    }
}
