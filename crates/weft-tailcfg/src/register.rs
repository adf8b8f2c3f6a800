//! `/machine/register`: `RegisterRequest` and `RegisterResponse`.

use serde::{Deserialize, Deserializer, Serialize};
use weft_key::{NlPublic, NodePublic};

use crate::hostinfo::Hostinfo;
use crate::node::{Login, User};
use crate::serde_helpers::is_false;
use crate::time::Time;

/// A registration attempt.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegisterRequest {
    /// Client capability version.
    #[serde(rename = "Version")]
    pub version: i64,
    /// The key being registered.
    #[serde(rename = "NodeKey")]
    pub node_key: NodePublic,
    /// Previous key when rotating (zero otherwise; sticky on the client).
    #[serde(rename = "OldNodeKey")]
    pub old_node_key: NodePublic,
    /// Tailnet-lock key (`nlpub:`, `tlpub:` also accepted).
    #[serde(
        rename = "NLKey",
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_nl_key"
    )]
    pub nl_key: Option<NlPublic>,
    /// Auth key and friends.
    #[serde(rename = "Auth", skip_serializing_if = "Option::is_none")]
    pub auth: Option<RegisterAuth>,
    /// Zero normally, in the past for logout, in the future to expire sooner.
    #[serde(rename = "Expiry")]
    pub expiry: Time,
    /// The AuthURL being waited on.
    #[serde(rename = "Followup", skip_serializing_if = "String::is_empty")]
    pub followup: String,
    /// Host information.
    #[serde(rename = "Hostinfo", skip_serializing_if = "Option::is_none")]
    pub hostinfo: Option<Hostinfo>,
    /// Ephemeral node.
    #[serde(rename = "Ephemeral", skip_serializing_if = "is_false")]
    pub ephemeral: bool,
    /// TKA signature of `NodeKey` (base64).
    #[serde(rename = "NodeKeySignature", skip_serializing_if = "Option::is_none")]
    pub node_key_signature: Option<String>,
    /// Request signature type (Windows).
    #[serde(rename = "SignatureType", skip_serializing_if = "String::is_empty")]
    pub signature_type: String,
    /// Request timestamp (Windows).
    #[serde(rename = "Timestamp", skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Time>,
    /// Device certificate (base64).
    #[serde(rename = "DeviceCert", skip_serializing_if = "Option::is_none")]
    pub device_cert: Option<String>,
    /// Request signature (base64).
    #[serde(rename = "Signature", skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Preferred tailnet.
    #[serde(rename = "Tailnet", skip_serializing_if = "String::is_empty")]
    pub tailnet: String,
}

/// `RegisterRequest.Auth`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegisterAuth {
    /// Pre-auth key.
    #[serde(rename = "AuthKey", skip_serializing_if = "String::is_empty")]
    pub auth_key: String,
    /// Legacy OAuth2 token (verbatim).
    #[serde(rename = "Oauth2Token", skip_serializing_if = "Option::is_none")]
    pub oauth2_token: Option<serde_json::Value>,
}

/// The answer to a [`RegisterRequest`] (always HTTP 200; `Error` carries failures).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegisterResponse {
    /// Owner user.
    #[serde(rename = "User")]
    pub user: User,
    /// Login.
    #[serde(rename = "Login")]
    pub login: Login,
    /// The presented node key has expired: rotate and retry.
    #[serde(rename = "NodeKeyExpired")]
    pub node_key_expired: bool,
    /// Informational.
    #[serde(rename = "MachineAuthorized")]
    pub machine_authorized: bool,
    /// Non-empty = authorization pending at this URL.
    #[serde(rename = "AuthURL")]
    pub auth_url: String,
    /// TKA re-sign request (base64).
    #[serde(rename = "NodeKeySignature", skip_serializing_if = "Option::is_none")]
    pub node_key_signature: Option<String>,
    /// Non-empty = failure shown to the user.
    #[serde(rename = "Error")]
    pub error: String,
}

impl RegisterResponse {
    /// A response carrying only an error text.
    pub fn error(text: impl Into<String>) -> RegisterResponse {
        RegisterResponse {
            error: text.into(),
            ..RegisterResponse::default()
        }
    }
}

fn lenient_nl_key<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NlPublic>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    let Some(s) = s else { return Ok(None) };
    if s.is_empty() {
        return Ok(None);
    }
    let s = match s.strip_prefix("tlpub:") {
        Some(rest) => format!("nlpub:{rest}"),
        None => s,
    };
    NlPublic::parse(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}
