//! Tailnet Lock (TKA) requests and responses of the `/machine/tka/*` endpoints.
//!
//! Go's `encoding/json` rules apply: byte strings (`[]byte`, marshaled AUMs and node-key
//! signatures) are padded standard base64 ([`B64Bytes`]); AUM hashes are their 52-character
//! base32 text form, carried here as plain strings; `map[NodeID]...` keys are decimal strings.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use weft_key::NodePublic;

use crate::node::NodeId;
use crate::serde_helpers::{is_false, null_default};

/// A byte string in Go's JSON form: padded standard base64 (`null` decodes as empty).
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct B64Bytes(pub Vec<u8>);

impl B64Bytes {
    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for B64Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "B64Bytes({})",
            base64::engine::general_purpose::STANDARD.encode(&self.0)
        )
    }
}

impl From<Vec<u8>> for B64Bytes {
    fn from(v: Vec<u8>) -> Self {
        B64Bytes(v)
    }
}

impl Serialize for B64Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for B64Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Some(s) = Option::<String>::deserialize(d)? else {
            return Ok(B64Bytes::default());
        };
        let engine = base64::engine::general_purpose::STANDARD;
        let b = engine
            .decode(s.as_bytes())
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(s.as_bytes()))
            .map_err(serde::de::Error::custom)?;
        Ok(B64Bytes(b))
    }
}

/// `/machine/tka/init/begin` request: the genesis AUM the node wants to start the lock with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TkaInitBeginRequest {
    /// Client capability version.
    #[serde(rename = "Version")]
    pub version: i64,
    /// Caller's current node key.
    #[serde(rename = "NodeKey")]
    pub node_key: NodePublic,
    /// CBOR genesis checkpoint AUM.
    #[serde(rename = "GenesisAUM")]
    pub genesis_aum: B64Bytes,
}

/// A node that must be signed before the lock is enabled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TkaSignInfo {
    /// Node ID.
    #[serde(rename = "NodeID")]
    pub node_id: NodeId,
    /// Its current node key.
    #[serde(rename = "NodePublic")]
    pub node_public: NodePublic,
    /// Its raw 32-byte tailnet-lock public key (allowed to sign its key rotations).
    #[serde(rename = "RotationPubkey")]
    pub rotation_pubkey: B64Bytes,
}

/// `/machine/tka/init/begin` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TkaInitBeginResponse {
    /// Every node of the tailnet, to be signed in init/finish.
    #[serde(rename = "NeedSignatures", deserialize_with = "null_default")]
    pub need_signatures: Vec<TkaSignInfo>,
}

/// `/machine/tka/init/finish` request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TkaInitFinishRequest {
    /// Client capability version.
    #[serde(rename = "Version")]
    pub version: i64,
    /// Caller's current node key.
    #[serde(rename = "NodeKey")]
    pub node_key: NodePublic,
    /// Node-key signatures by node ID (decimal string keys on the wire).
    #[serde(rename = "Signatures", deserialize_with = "null_default")]
    pub signatures: BTreeMap<NodeId, B64Bytes>,
    /// Disablement secret handed to the operator (optional).
    #[serde(
        rename = "SupportDisablement",
        skip_serializing_if = "B64Bytes::is_empty"
    )]
    pub support_disablement: B64Bytes,
}

/// `/machine/tka/init/finish` response (empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TkaInitFinishResponse {}

/// `/machine/tka/bootstrap` request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TkaBootstrapRequest {
    /// Client capability version.
    #[serde(rename = "Version")]
    pub version: i64,
    /// Caller's current node key.
    #[serde(rename = "NodeKey")]
    pub node_key: NodePublic,
    /// The node's head (empty when it has no TKA state).
    #[serde(rename = "Head")]
    pub head: String,
}

/// `/machine/tka/bootstrap` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TkaBootstrapResponse {
    /// The genesis AUM, when the lock is enabled.
    #[serde(rename = "GenesisAUM", skip_serializing_if = "B64Bytes::is_empty")]
    pub genesis_aum: B64Bytes,
    /// The secret that disabled the lock, when it is disabled.
    #[serde(
        rename = "DisablementSecret",
        skip_serializing_if = "B64Bytes::is_empty"
    )]
    pub disablement_secret: B64Bytes,
}

/// `/machine/tka/sync/offer` request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TkaSyncOfferRequest {
    /// Client capability version.
    #[serde(rename = "Version")]
    pub version: i64,
    /// Caller's current node key.
    #[serde(rename = "NodeKey")]
    pub node_key: NodePublic,
    /// The node's head (base32).
    #[serde(rename = "Head")]
    pub head: String,
    /// The node's ancestors (base32, newest first).
    #[serde(rename = "Ancestors", deserialize_with = "null_default")]
    pub ancestors: Vec<String>,
}

/// `/machine/tka/sync/offer` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TkaSyncOfferResponse {
    /// The server's head.
    #[serde(rename = "Head")]
    pub head: String,
    /// The server's ancestors.
    #[serde(rename = "Ancestors", deserialize_with = "null_default")]
    pub ancestors: Vec<String>,
    /// AUMs the server thinks the node lacks, oldest first.
    #[serde(rename = "MissingAUMs", deserialize_with = "null_default")]
    pub missing_aums: Vec<B64Bytes>,
}

/// `/machine/tka/sync/send` request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TkaSyncSendRequest {
    /// Client capability version.
    #[serde(rename = "Version")]
    pub version: i64,
    /// Caller's current node key.
    #[serde(rename = "NodeKey")]
    pub node_key: NodePublic,
    /// The node's head after applying the offer's AUMs.
    #[serde(rename = "Head")]
    pub head: String,
    /// AUMs the node thinks the server lacks, oldest first.
    #[serde(rename = "MissingAUMs", deserialize_with = "null_default")]
    pub missing_aums: Vec<B64Bytes>,
    /// An operator action (`lock add/remove`), not a background sync.
    #[serde(rename = "Interactive", skip_serializing_if = "is_false")]
    pub interactive: bool,
}

/// `/machine/tka/sync/send` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TkaSyncSendResponse {
    /// The server's head after applying.
    #[serde(rename = "Head")]
    pub head: String,
}

/// `/machine/tka/disable` request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TkaDisableRequest {
    /// Client capability version.
    #[serde(rename = "Version")]
    pub version: i64,
    /// Caller's current node key.
    #[serde(rename = "NodeKey")]
    pub node_key: NodePublic,
    /// The node's head.
    #[serde(rename = "Head")]
    pub head: String,
    /// The disablement secret (32 bytes).
    #[serde(rename = "DisablementSecret")]
    pub disablement_secret: B64Bytes,
}

/// `/machine/tka/disable` response (empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TkaDisableResponse {}

/// `/machine/tka/sign` request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TkaSubmitSignatureRequest {
    /// Client capability version.
    #[serde(rename = "Version")]
    pub version: i64,
    /// Caller's current node key.
    #[serde(rename = "NodeKey")]
    pub node_key: NodePublic,
    /// CBOR node-key signature.
    #[serde(rename = "Signature")]
    pub signature: B64Bytes,
}

/// `/machine/tka/sign` response (empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TkaSubmitSignatureResponse {}

/// `/machine/tka/affected-sigs` request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TkaSignaturesUsingKeyRequest {
    /// Client capability version.
    #[serde(rename = "Version")]
    pub version: i64,
    /// Caller's current node key.
    #[serde(rename = "NodeKey")]
    pub node_key: NodePublic,
    /// The tailnet-lock key ID.
    #[serde(rename = "KeyID")]
    pub key_id: B64Bytes,
}

/// `/machine/tka/affected-sigs` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TkaSignaturesUsingKeyResponse {
    /// Stored node-key signatures whose authorizing key is `KeyID`.
    #[serde(rename = "Signatures", deserialize_with = "null_default")]
    pub signatures: Vec<B64Bytes>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tka_json_shapes() {
        let mut sigs = BTreeMap::new();
        sigs.insert(7, B64Bytes(vec![1, 2, 3]));
        let req = TkaInitFinishRequest {
            version: 130,
            node_key: NodePublic::default(),
            signatures: sigs,
            support_disablement: B64Bytes::default(),
        };
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(v["Signatures"]["7"], "AQID");
        assert!(v.get("SupportDisablement").is_none());
        let back: TkaInitFinishRequest = serde_json::from_value(v).unwrap();
        assert_eq!(back, req);

        let r: TkaSyncOfferResponse =
            serde_json::from_str(r#"{"Head":"X","Ancestors":null,"MissingAUMs":["AA=="]}"#)
                .unwrap();
        assert_eq!(r.missing_aums, vec![B64Bytes(vec![0])]);
        assert!(r.ancestors.is_empty());
        let b: TkaBootstrapResponse = serde_json::from_str("{}").unwrap();
        assert!(b.genesis_aum.is_empty());
        assert_eq!(serde_json::to_string(&b).unwrap(), "{}");
        assert!(
            serde_json::from_str::<TkaSubmitSignatureRequest>(r#"{"Signature":"!!"}"#).is_err()
        );
    }
}
