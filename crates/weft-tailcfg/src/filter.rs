//! Packet filter rules (`tailcfg.FilterRule`).

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::serde_helpers::null_default;

/// Capability map of a peer or node: capability name → list of JSON values (or `null`).
pub type CapMap = BTreeMap<String, Option<Vec<serde_json::Value>>>;

/// One rule of a receiving node's packet filter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FilterRule {
    /// Source IPs: `"*"`, an IP, a CIDR, an `a-b` range or `cap:<name>`.
    #[serde(rename = "SrcIPs", deserialize_with = "null_default")]
    pub src_ips: Vec<String>,
    /// Deprecated source prefix lengths.
    #[serde(rename = "SrcBits", skip_serializing_if = "Option::is_none")]
    pub src_bits: Option<Vec<i32>>,
    /// Allowed destinations; exclusive with `CapGrant`.
    #[serde(
        rename = "DstPorts",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub dst_ports: Vec<NetPortRange>,
    /// IP protocol numbers; empty = TCP, UDP, ICMPv4, ICMPv6.
    #[serde(
        rename = "IPProto",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub ip_proto: Vec<i32>,
    /// Capability grants; exclusive with `DstPorts`.
    #[serde(
        rename = "CapGrant",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub cap_grant: Vec<CapGrant>,
}

impl FilterRule {
    /// Go's `FilterAllowAll` rule: every source, every destination, every port.
    pub fn allow_all() -> FilterRule {
        FilterRule {
            src_ips: vec!["*".to_string()],
            dst_ports: vec![NetPortRange {
                ip: "*".to_string(),
                bits: None,
                ports: PortRange::ANY,
            }],
            ..FilterRule::default()
        }
    }
}

/// A destination IP spec plus port range.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetPortRange {
    /// `"*"`, an IP, a CIDR or an `a-b` range.
    #[serde(rename = "IP")]
    pub ip: String,
    /// Deprecated prefix length.
    #[serde(rename = "Bits", skip_serializing_if = "Option::is_none")]
    pub bits: Option<i32>,
    /// Inclusive port range.
    #[serde(rename = "Ports")]
    pub ports: PortRange,
}

/// Inclusive port range.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(default)]
pub struct PortRange {
    /// First port.
    #[serde(rename = "First")]
    pub first: u16,
    /// Last port (inclusive).
    #[serde(rename = "Last")]
    pub last: u16,
}

impl PortRange {
    /// All ports.
    pub const ANY: PortRange = PortRange {
        first: 0,
        last: 65535,
    };
}

/// A grant of peer capabilities to the rule's sources for the given destinations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CapGrant {
    /// Destination prefixes.
    #[serde(rename = "Dsts", deserialize_with = "null_default")]
    pub dsts: Vec<IpNet>,
    /// Deprecated list form of capabilities.
    #[serde(
        rename = "Caps",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub caps: Vec<String>,
    /// Capabilities with values.
    #[serde(rename = "CapMap", skip_serializing_if = "Option::is_none")]
    pub cap_map: Option<CapMap>,
}
