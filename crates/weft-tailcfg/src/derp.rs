//! DERP relay map (`tailcfg.DERPMap`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::serde_helpers::{is_false, is_zero_f64, is_zero_i32, null_default};

/// The set of DERP regions a client may use. Region IDs 900–999 are for self-hosted relays.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DerpMap {
    /// Home-region scoring hints; `None` = keep the previous ones.
    #[serde(rename = "HomeParams", skip_serializing_if = "Option::is_none")]
    pub home_params: Option<DerpHomeParams>,
    /// Regions by ID (JSON object keys are decimal strings).
    #[serde(rename = "Regions", deserialize_with = "null_default")]
    pub regions: BTreeMap<i32, DerpRegion>,
    /// Tells the client not to merge its built-in regions.
    #[serde(rename = "omitDefaultRegions", skip_serializing_if = "is_false")]
    pub omit_default_regions: bool,
}

/// `tailcfg.DERPHomeParams`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DerpHomeParams {
    /// Score multiplier per region ID.
    #[serde(rename = "RegionScore", skip_serializing_if = "Option::is_none")]
    pub region_score: Option<BTreeMap<i32, f64>>,
}

/// One DERP region: a set of interchangeable relay nodes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DerpRegion {
    /// Region ID (> 0).
    #[serde(rename = "RegionID")]
    pub region_id: i32,
    /// Short code, e.g. `"weft"`.
    #[serde(rename = "RegionCode")]
    pub region_code: String,
    /// Human name.
    #[serde(rename = "RegionName")]
    pub region_name: String,
    /// Latitude (informational).
    #[serde(rename = "Latitude", skip_serializing_if = "is_zero_f64")]
    pub latitude: f64,
    /// Longitude (informational).
    #[serde(rename = "Longitude", skip_serializing_if = "is_zero_f64")]
    pub longitude: f64,
    /// Deprecated: avoid as home.
    #[serde(rename = "Avoid", skip_serializing_if = "is_false")]
    pub avoid: bool,
    /// Do not measure or choose as home (capver ≥ 115).
    #[serde(rename = "NoMeasureNoHome", skip_serializing_if = "is_false")]
    pub no_measure_no_home: bool,
    /// Relay nodes of this region.
    #[serde(rename = "Nodes", deserialize_with = "null_default")]
    pub nodes: Vec<DerpNode>,
}

/// One DERP relay server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DerpNode {
    /// Unique node name, e.g. `"900a"`.
    #[serde(rename = "Name")]
    pub name: String,
    /// The region this node belongs to.
    #[serde(rename = "RegionID")]
    pub region_id: i32,
    /// DNS name (TLS SNI and certificate name unless `CertName`).
    #[serde(rename = "HostName")]
    pub host_name: String,
    /// Certificate name override; `sha256-raw:<hex>` pins a self-signed certificate.
    #[serde(rename = "CertName", skip_serializing_if = "String::is_empty")]
    pub cert_name: String,
    /// IPv4 address to dial, or `"none"`.
    #[serde(rename = "IPv4", skip_serializing_if = "String::is_empty")]
    pub ipv4: String,
    /// IPv6 address to dial, or `"none"`.
    #[serde(rename = "IPv6", skip_serializing_if = "String::is_empty")]
    pub ipv6: String,
    /// STUN port: 0 = 3478, -1 = disabled.
    #[serde(rename = "STUNPort", skip_serializing_if = "is_zero_i32")]
    pub stun_port: i32,
    /// Only STUN, no DERP.
    #[serde(rename = "STUNOnly", skip_serializing_if = "is_false")]
    pub stun_only: bool,
    /// DERP TLS port: 0 = 443.
    #[serde(rename = "DERPPort", skip_serializing_if = "is_zero_i32")]
    pub derp_port: i32,
    /// Skip TLS verification (tests only).
    #[serde(rename = "InsecureForTests", skip_serializing_if = "is_false")]
    pub insecure_for_tests: bool,
    /// STUN test IP override.
    #[serde(rename = "STUNTestIP", skip_serializing_if = "String::is_empty")]
    pub stun_test_ip: String,
    /// Whether port 80 is reachable for captive-portal checks.
    #[serde(rename = "CanPort80", skip_serializing_if = "is_false")]
    pub can_port80: bool,
}
