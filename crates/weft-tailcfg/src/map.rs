//! `/machine/map`: `MapRequest` and `MapResponse`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use weft_key::{DiscoPublic, NodePublic};

use crate::derp::DerpMap;
use crate::dns::DnsConfig;
use crate::filter::FilterRule;
use crate::hostinfo::Hostinfo;
use crate::misc::{Debug, DisplayMessage, PingRequest, SshPolicy, TkaInfo};
use crate::node::{Node, NodeId, PeerChange, UserProfile};
use crate::serde_helpers::{is_false, is_zero_i64, lenient_addrports, null_default};
use crate::time::Time;

/// A map poll or lite update from a client.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MapRequest {
    /// Client capability version.
    #[serde(rename = "Version")]
    pub version: i64,
    /// `"zstd"` from current clients.
    #[serde(rename = "Compress", skip_serializing_if = "String::is_empty")]
    pub compress: String,
    /// Client wants keep-alives.
    #[serde(rename = "KeepAlive", skip_serializing_if = "is_false")]
    pub keep_alive: bool,
    /// Current node key; must belong to the Noise machine key.
    #[serde(rename = "NodeKey")]
    pub node_key: NodePublic,
    /// Current disco key.
    #[serde(rename = "DiscoKey")]
    pub disco_key: DiscoPublic,
    /// Long-poll.
    #[serde(rename = "Stream", skip_serializing_if = "is_false")]
    pub stream: bool,
    /// Host information.
    #[serde(rename = "Hostinfo", skip_serializing_if = "Option::is_none")]
    pub hostinfo: Option<Hostinfo>,
    /// Session resume handle (unused by Go clients).
    #[serde(rename = "MapSessionHandle", skip_serializing_if = "String::is_empty")]
    pub map_session_handle: String,
    /// Session resume sequence.
    #[serde(rename = "MapSessionSeq", skip_serializing_if = "is_zero_i64")]
    pub map_session_seq: i64,
    /// UDP endpoints (unparseable entries dropped).
    #[serde(
        rename = "Endpoints",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "lenient_addrports"
    )]
    pub endpoints: Vec<SocketAddr>,
    /// Endpoint types, parallel to `Endpoints`.
    #[serde(
        rename = "EndpointTypes",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub endpoint_types: Vec<i32>,
    /// TKA head.
    #[serde(rename = "TKAHead", skip_serializing_if = "String::is_empty")]
    pub tka_head: String,
    /// Deprecated.
    #[serde(rename = "ReadOnly", skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// Lite update.
    #[serde(rename = "OmitPeers", skip_serializing_if = "is_false")]
    pub omit_peers: bool,
    /// Debug flags.
    #[serde(
        rename = "DebugFlags",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub debug_flags: Vec<String>,
    /// Hardware attestation public key (`hwattestpub:`).
    #[serde(
        rename = "HardwareAttestationKey",
        skip_serializing_if = "Option::is_none"
    )]
    pub hardware_attestation_key: Option<String>,
    /// Signature by the hardware key (base64).
    #[serde(
        rename = "HardwareAttestationKeySignature",
        skip_serializing_if = "Option::is_none"
    )]
    pub hardware_attestation_key_signature: Option<String>,
    /// Timestamp of that signature.
    #[serde(
        rename = "HardwareAttestationKeySignatureTimestamp",
        skip_serializing_if = "Option::is_none"
    )]
    pub hardware_attestation_key_signature_timestamp: Option<Time>,
    /// Test hook.
    #[serde(
        rename = "ConnectionHandleForTest",
        skip_serializing_if = "String::is_empty"
    )]
    pub connection_handle_for_test: String,
}

/// One message on the map stream. Every field is optional; absent = unchanged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MapResponse {
    /// Session handle (first message).
    #[serde(rename = "MapSessionHandle", skip_serializing_if = "String::is_empty")]
    pub map_session_handle: String,
    /// Sequence number.
    #[serde(rename = "Seq", skip_serializing_if = "is_zero_i64")]
    pub seq: i64,
    /// Keep-alive only.
    #[serde(rename = "KeepAlive", skip_serializing_if = "is_false")]
    pub keep_alive: bool,
    /// Ping request.
    #[serde(rename = "PingRequest", skip_serializing_if = "Option::is_none")]
    pub ping_request: Option<PingRequest>,
    /// URL to open in a browser.
    #[serde(rename = "PopBrowserURL", skip_serializing_if = "String::is_empty")]
    pub pop_browser_url: String,
    /// The self node (full replacement); required in the first message of a stream.
    #[serde(rename = "Node", skip_serializing_if = "Option::is_none")]
    pub node: Option<Node>,
    /// DERP map.
    #[serde(rename = "DERPMap", skip_serializing_if = "Option::is_none")]
    pub derp_map: Option<DerpMap>,
    /// Complete peer list sorted by ID; only applied when non-empty.
    #[serde(
        rename = "Peers",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub peers: Vec<Node>,
    /// Upserted peers (full objects), sorted by ID.
    #[serde(
        rename = "PeersChanged",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub peers_changed: Vec<Node>,
    /// Removed peer IDs.
    #[serde(
        rename = "PeersRemoved",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub peers_removed: Vec<NodeId>,
    /// Partial peer updates.
    #[serde(
        rename = "PeersChangedPatch",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub peers_changed_patch: Vec<PeerChange>,
    /// Peer last-seen changes.
    #[serde(
        rename = "PeerSeenChange",
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub peer_seen_change: BTreeMap<NodeId, bool>,
    /// Peer online changes.
    #[serde(
        rename = "OnlineChange",
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub online_change: BTreeMap<NodeId, bool>,
    /// DNS config (full replacement).
    #[serde(rename = "DNSConfig", skip_serializing_if = "Option::is_none")]
    pub dns_config: Option<DnsConfig>,
    /// Tailnet name.
    #[serde(rename = "Domain", skip_serializing_if = "String::is_empty")]
    pub domain: String,
    /// Whether to report services.
    #[serde(rename = "CollectServices", skip_serializing_if = "Option::is_none")]
    pub collect_services: Option<bool>,
    /// Base packet filter: `None` = unchanged, `Some([])` = deny all.
    #[serde(rename = "PacketFilter", skip_serializing_if = "Option::is_none")]
    pub packet_filter: Option<Vec<FilterRule>>,
    /// Named filter chunks.
    #[serde(rename = "PacketFilters", skip_serializing_if = "Option::is_none")]
    pub packet_filters: Option<BTreeMap<String, Option<Vec<FilterRule>>>>,
    /// User profiles (additive).
    #[serde(
        rename = "UserProfiles",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub user_profiles: Vec<UserProfile>,
    /// Legacy health: `None` = unchanged, `Some([])` = healthy.
    #[serde(rename = "Health", skip_serializing_if = "Option::is_none")]
    pub health: Option<Vec<String>>,
    /// Display messages (patch semantics).
    #[serde(rename = "DisplayMessages", skip_serializing_if = "Option::is_none")]
    pub display_messages: Option<BTreeMap<String, Option<DisplayMessage>>>,
    /// SSH policy.
    #[serde(rename = "SSHPolicy", skip_serializing_if = "Option::is_none")]
    pub ssh_policy: Option<SshPolicy>,
    /// Server clock.
    #[serde(rename = "ControlTime", skip_serializing_if = "Option::is_none")]
    pub control_time: Option<Time>,
    /// TKA state.
    #[serde(rename = "TKAInfo", skip_serializing_if = "Option::is_none")]
    pub tka_info: Option<TkaInfo>,
    /// Flow-log ID of the tailnet.
    #[serde(
        rename = "DomainDataPlaneAuditLogID",
        skip_serializing_if = "String::is_empty"
    )]
    pub domain_data_plane_audit_log_id: String,
    /// Debug settings.
    #[serde(rename = "Debug", skip_serializing_if = "Option::is_none")]
    pub debug: Option<Debug>,
    /// Control dial plan (verbatim).
    #[serde(rename = "ControlDialPlan", skip_serializing_if = "Option::is_none")]
    pub control_dial_plan: Option<serde_json::Value>,
    /// Client version notice (verbatim).
    #[serde(rename = "ClientVersion", skip_serializing_if = "Option::is_none")]
    pub client_version: Option<serde_json::Value>,
    /// Deprecated auto-update default.
    #[serde(rename = "DefaultAutoUpdate", skip_serializing_if = "Option::is_none")]
    pub default_auto_update: Option<bool>,
}

impl MapResponse {
    /// The keep-alive message, `{"KeepAlive":true}`.
    pub fn keep_alive() -> MapResponse {
        MapResponse {
            keep_alive: true,
            ..MapResponse::default()
        }
    }
}
