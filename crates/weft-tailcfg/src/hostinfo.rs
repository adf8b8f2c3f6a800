//! `tailcfg.Hostinfo`, kept as the client's JSON object so peers see it unchanged.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::serde_helpers::null_default;

/// Host information reported by a client. Stored verbatim (every release adds keys);
/// typed accessors read the few fields the server uses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Hostinfo(pub Map<String, Value>);

impl Hostinfo {
    /// An empty Hostinfo.
    pub fn new() -> Hostinfo {
        Hostinfo(Map::new())
    }

    /// Whether no key is present.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn str_field(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(Value::as_str)
    }

    /// `Hostname`.
    pub fn hostname(&self) -> Option<&str> {
        self.str_field("Hostname").filter(|s| !s.is_empty())
    }

    /// `OS`.
    pub fn os(&self) -> Option<&str> {
        self.str_field("OS").filter(|s| !s.is_empty())
    }

    /// `IPNVersion`.
    pub fn ipn_version(&self) -> Option<&str> {
        self.str_field("IPNVersion").filter(|s| !s.is_empty())
    }

    /// `RequestTags` (tags the node asks for).
    pub fn request_tags(&self) -> Vec<String> {
        self.0
            .get("RequestTags")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    }

    /// `RoutableIPs` (advertised subnet and exit routes); unparseable entries are dropped.
    pub fn routable_ips(&self) -> Vec<IpNet> {
        let Some(Value::Array(items)) = self.0.get("RoutableIPs") else {
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|v| v.as_str()?.parse().ok())
            .collect()
    }

    /// `NetInfo`, if present and well-formed.
    pub fn net_info(&self) -> Option<NetInfo> {
        match self.0.get("NetInfo") {
            None | Some(Value::Null) => None,
            Some(v) => serde_json::from_value(v.clone()).ok(),
        }
    }

    /// Sets a key.
    pub fn set(&mut self, key: &str, value: Value) {
        self.0.insert(key.to_string(), value);
    }

    /// Sets `Hostname`.
    pub fn with_hostname(mut self, name: &str) -> Hostinfo {
        self.set("Hostname", Value::String(name.to_string()));
        self
    }
}

/// `tailcfg.NetInfo` (the fields the control plane reads, plus the rest verbatim).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetInfo {
    /// Preferred (home) DERP region, 0 = unknown.
    #[serde(rename = "PreferredDERP")]
    pub preferred_derp: i32,
    /// `wired`, `wifi`, `mobile`.
    #[serde(rename = "LinkType", skip_serializing_if = "String::is_empty")]
    pub link_type: String,
    /// `"<region>-v4"` → latency seconds.
    #[serde(
        rename = "DERPLatency",
        skip_serializing_if = "std::collections::BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub derp_latency: std::collections::BTreeMap<String, f64>,
    /// Every other key.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}
