//! Small messages: `/key` response, EarlyNoise, ping, debug, TKA info, display messages,
//! SSH policy, helper endpoints.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use weft_key::{ChallengePublic, MachinePublic, NodePublic};

use crate::serde_helpers::{is_false, is_zero_f64, is_zero_i64, null_default};
use crate::time::Time;

/// `GET /key?v=N` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OverTlsPublicKeyResponse {
    /// Legacy NaCl key (zero is fine).
    #[serde(rename = "legacyPublicKey")]
    pub legacy_public_key: MachinePublic,
    /// The Noise static key of the server; must be non-zero.
    #[serde(rename = "publicKey")]
    pub public_key: MachinePublic,
}

/// Early payload the server may send right after the Noise handshake.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EarlyNoise {
    /// Per-connection challenge key.
    #[serde(rename = "nodeKeyChallenge")]
    pub node_key_challenge: ChallengePublic,
}

/// A request to ping something and report back (`MapResponse.PingRequest`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PingRequest {
    /// Where to send the answer; must be unique per request.
    #[serde(rename = "URL")]
    pub url: String,
    /// Whether `URL` is reached over the Noise channel.
    #[serde(rename = "URLIsNoise", skip_serializing_if = "is_false")]
    pub url_is_noise: bool,
    /// Log the request.
    #[serde(rename = "Log", skip_serializing_if = "is_false")]
    pub log: bool,
    /// `disco`, `TSMP`, `ICMP`, `peerapi`, `c2n`; empty = HEAD request.
    #[serde(rename = "Types", skip_serializing_if = "String::is_empty")]
    pub types: String,
    /// Target IP for ping types.
    #[serde(rename = "IP", skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// c2n HTTP request bytes (base64).
    #[serde(rename = "Payload", skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
}

/// Answer to a [`PingRequest`] with ping types.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PingResponse {
    /// Ping type.
    #[serde(rename = "Type")]
    pub ping_type: String,
    /// Target IP.
    #[serde(rename = "IP", skip_serializing_if = "String::is_empty")]
    pub ip: String,
    /// Node IP that answered.
    #[serde(rename = "NodeIP", skip_serializing_if = "String::is_empty")]
    pub node_ip: String,
    /// Node name that answered.
    #[serde(rename = "NodeName", skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    /// Error text.
    #[serde(rename = "Err", skip_serializing_if = "String::is_empty")]
    pub err: String,
    /// Latency.
    #[serde(rename = "LatencySeconds", skip_serializing_if = "is_zero_f64")]
    pub latency_seconds: f64,
    /// Endpoint used.
    #[serde(rename = "Endpoint", skip_serializing_if = "String::is_empty")]
    pub endpoint: String,
    /// DERP region used.
    #[serde(rename = "DERPRegionID", skip_serializing_if = "is_zero_i64")]
    pub derp_region_id: i64,
    /// DERP region code.
    #[serde(rename = "DERPRegionCode", skip_serializing_if = "String::is_empty")]
    pub derp_region_code: String,
    /// Every other key.
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

/// `MapResponse.Debug`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Debug {
    /// Pause reading for this long.
    #[serde(rename = "SleepSeconds", skip_serializing_if = "is_zero_f64")]
    pub sleep_seconds: f64,
    /// Stop uploading logs to Tailscale's log service.
    #[serde(rename = "DisableLogTail", skip_serializing_if = "is_false")]
    pub disable_log_tail: bool,
    /// Make the client exit with this code.
    #[serde(rename = "Exit", skip_serializing_if = "Option::is_none")]
    pub exit: Option<i32>,
}

/// `MapResponse.TKAInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TkaInfo {
    /// Head AUM hash (text form).
    #[serde(rename = "Head", skip_serializing_if = "String::is_empty")]
    pub head: String,
    /// Tailnet lock disabled.
    #[serde(rename = "Disabled", skip_serializing_if = "is_false")]
    pub disabled: bool,
}

/// `MapResponse.DisplayMessages` value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DisplayMessage {
    /// Title.
    #[serde(rename = "Title")]
    pub title: String,
    /// Text.
    #[serde(rename = "Text")]
    pub text: String,
    /// `high`, `medium`, `low`.
    #[serde(rename = "Severity")]
    pub severity: String,
    /// Whether connectivity is affected.
    #[serde(rename = "ImpactsConnectivity", skip_serializing_if = "is_false")]
    pub impacts_connectivity: bool,
    /// Optional action button.
    #[serde(rename = "PrimaryAction", skip_serializing_if = "Option::is_none")]
    pub primary_action: Option<DisplayMessageAction>,
}

/// Button of a [`DisplayMessage`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DisplayMessageAction {
    /// Target URL.
    #[serde(rename = "URL")]
    pub url: String,
    /// Label.
    #[serde(rename = "Label")]
    pub label: String,
}

/// Tailscale SSH policy (JSON keys are lowerCamel).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SshPolicy {
    /// Rules, first match wins.
    #[serde(rename = "rules", deserialize_with = "null_default")]
    pub rules: Vec<SshRule>,
}

/// One SSH rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SshRule {
    /// Expiry of the rule.
    #[serde(rename = "ruleExpires", skip_serializing_if = "Option::is_none")]
    pub rule_expires: Option<Time>,
    /// Who may connect.
    #[serde(rename = "principals", deserialize_with = "null_default")]
    pub principals: Vec<SshPrincipal>,
    /// SSH user → local user (`"="` = same, `""` = deny).
    #[serde(rename = "sshUsers", deserialize_with = "null_default")]
    pub ssh_users: BTreeMap<String, String>,
    /// What to do.
    #[serde(rename = "action", skip_serializing_if = "Option::is_none")]
    pub action: Option<SshAction>,
    /// Environment variables the client may send.
    #[serde(
        rename = "acceptEnv",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub accept_env: Vec<String>,
}

/// SSH rule principal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SshPrincipal {
    /// Stable node ID.
    #[serde(rename = "node", skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// Node IP.
    #[serde(rename = "nodeIP", skip_serializing_if = "String::is_empty")]
    pub node_ip: String,
    /// User login name.
    #[serde(rename = "userLogin", skip_serializing_if = "String::is_empty")]
    pub user_login: String,
    /// Anyone.
    #[serde(rename = "any", skip_serializing_if = "is_false")]
    pub any: bool,
}

/// SSH rule action.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SshAction {
    /// Message shown to the user.
    #[serde(rename = "message", skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Reject.
    #[serde(rename = "reject", skip_serializing_if = "is_false")]
    pub reject: bool,
    /// Accept.
    #[serde(rename = "accept", skip_serializing_if = "is_false")]
    pub accept: bool,
    /// Session duration (ns).
    #[serde(rename = "sessionDuration", skip_serializing_if = "is_zero_i64")]
    pub session_duration: i64,
    /// Agent forwarding.
    #[serde(rename = "allowAgentForwarding", skip_serializing_if = "is_false")]
    pub allow_agent_forwarding: bool,
    /// Check-mode URL.
    #[serde(rename = "holdAndDelegate", skip_serializing_if = "String::is_empty")]
    pub hold_and_delegate: String,
    /// Local port forwarding.
    #[serde(rename = "allowLocalPortForwarding", skip_serializing_if = "is_false")]
    pub allow_local_port_forwarding: bool,
    /// Remote port forwarding.
    #[serde(rename = "allowRemotePortForwarding", skip_serializing_if = "is_false")]
    pub allow_remote_port_forwarding: bool,
    /// Session recorders.
    #[serde(
        rename = "recorders",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub recorders: Vec<String>,
    /// Recording failure behaviour (verbatim).
    #[serde(rename = "onRecordingFailure", skip_serializing_if = "Option::is_none")]
    pub on_recording_failure: Option<serde_json::Value>,
}

/// `POST /machine/set-dns` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SetDnsRequest {
    /// Capability version.
    #[serde(rename = "Version")]
    pub version: i64,
    /// Node key.
    #[serde(rename = "NodeKey")]
    pub node_key: NodePublic,
    /// Record name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Record type (`TXT`).
    #[serde(rename = "Type")]
    pub record_type: String,
    /// Record value.
    #[serde(rename = "Value")]
    pub value: String,
}
