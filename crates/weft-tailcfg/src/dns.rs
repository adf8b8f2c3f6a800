//! `tailcfg.DNSConfig` and `dnstype.Resolver`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::serde_helpers::{is_false, null_default};

/// DNS configuration pushed to nodes. `Proxied: true` = MagicDNS on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DnsConfig {
    /// Upstream resolvers.
    #[serde(
        rename = "Resolvers",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub resolvers: Vec<Resolver>,
    /// Split DNS: suffix → resolvers (`None`/empty = answered by 100.100.100.100).
    #[serde(
        rename = "Routes",
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub routes: BTreeMap<String, Option<Vec<Resolver>>>,
    /// Resolvers used when not overriding the OS DNS.
    #[serde(
        rename = "FallbackResolvers",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub fallback_resolvers: Vec<Resolver>,
    /// Search domains (no trailing dot).
    #[serde(
        rename = "Domains",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub domains: Vec<String>,
    /// MagicDNS.
    #[serde(rename = "Proxied", skip_serializing_if = "is_false")]
    pub proxied: bool,
    /// Deprecated nameserver list.
    #[serde(
        rename = "Nameservers",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub nameservers: Vec<IpAddr>,
    /// Names `tailscale cert` may request.
    #[serde(
        rename = "CertDomains",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub cert_domains: Vec<String>,
    /// Extra records served by MagicDNS.
    #[serde(
        rename = "ExtraRecords",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub extra_records: Vec<DnsRecord>,
    /// Exit-node filtered suffixes.
    #[serde(
        rename = "ExitNodeFilteredSet",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub exit_node_filtered_set: Vec<String>,
    /// Temporary Tailscale flag.
    #[serde(
        rename = "TempCorpIssue13969",
        skip_serializing_if = "String::is_empty"
    )]
    pub temp_corp_issue_13969: String,
}

/// One DNS resolver.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Resolver {
    /// `"1.1.1.1"`, `"ip:port"`, `"https://doh/…"`, …
    #[serde(rename = "Addr")]
    pub addr: String,
    /// Bootstrap addresses for DoH names.
    #[serde(
        rename = "BootstrapResolution",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub bootstrap_resolution: Vec<IpAddr>,
    /// Use even with an exit node (capver ≥ 125).
    #[serde(rename = "UseWithExitNode", skip_serializing_if = "is_false")]
    pub use_with_exit_node: bool,
}

/// An extra DNS record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DnsRecord {
    /// FQDN.
    #[serde(rename = "Name")]
    pub name: String,
    /// `""` = A/AAAA by value.
    #[serde(rename = "Type", skip_serializing_if = "String::is_empty")]
    pub record_type: String,
    /// Value (an IP for A/AAAA).
    #[serde(rename = "Value")]
    pub value: String,
}
