//! Node-key signatures (NKS): the proof, carried with every node key under Tailnet Lock, that a
//! trusted tailnet-lock key authorized that node key.

use base64::Engine as _;
use weft_key::NodePublic;

use crate::cbor::{self, CborError, Enc, Value};
use crate::ed25519::{verify_standard, verify_zip215, SigningKey};
use crate::hash::blake2s256;
use crate::types::{Key, KeyKind};
use crate::TkaError;

/// The kind of a node-key signature (CBOR uint8).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
pub struct SigKind(pub u8);

impl SigKind {
    /// Invalid / unset.
    pub const INVALID: SigKind = SigKind(0);
    /// A trusted key signs a node key directly.
    pub const DIRECT: SigKind = SigKind(1);
    /// The wrapping key of a nested signature signs a new node key.
    pub const ROTATION: SigKind = SigKind(2);
    /// A trusted key delegates to a one-time wrapping key (pre-signed auth keys).
    pub const CREDENTIAL: SigKind = SigKind(3);
}

/// Node keys inside signatures use Tailscale's binary form: ASCII `np` then the 32 raw bytes.
pub fn node_key_binary(k: &NodePublic) -> [u8; 34] {
    let mut out = [0u8; 34];
    out[..2].copy_from_slice(b"np");
    out[2..].copy_from_slice(k.as_bytes());
    out
}

/// Parses the 34-byte `np` binary form.
pub fn node_key_from_binary(b: &[u8]) -> Option<NodePublic> {
    if b.len() != 34 || &b[..2] != b"np" {
        return None;
    }
    NodePublic::from_slice(&b[2..]).ok()
}

/// A node-key signature. CBOR (all but 1 omitempty): 1 SigKind, 2 Pubkey, 3 KeyID,
/// 4 Signature, 5 Nested, 6 WrappingPubkey. Empty byte fields mean absent.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct NodeKeySignature {
    /// Kind.
    pub sig_kind: SigKind,
    /// The authorized node key in `np` binary form (not used by Credential).
    pub pubkey: Vec<u8>,
    /// Direct/Credential: the trusted key that signed.
    pub key_id: Vec<u8>,
    /// Ed25519 signature over [`NodeKeySignature::sig_hash`].
    pub signature: Vec<u8>,
    /// Rotation: the previous signature.
    pub nested: Option<Box<NodeKeySignature>>,
    /// The Ed25519 key allowed to sign a Rotation wrapping this signature.
    pub wrapping_pubkey: Vec<u8>,
}

/// What a verified Rotation signature says about the node's history.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RotationDetails {
    /// Previous node keys, newest first.
    pub prev_node_keys: Vec<NodePublic>,
    /// The innermost non-Rotation signature (Direct or Credential), if any.
    pub initial_sig: Option<NodeKeySignature>,
}

/// Longest chain of node keys a re-signed rotation keeps (decoder nesting limit 16).
pub const MAX_PREV_NODE_KEYS: usize = 15;

impl NodeKeySignature {
    /// Canonical CBOR encoding.
    pub fn serialize(&self) -> Vec<u8> {
        let mut e = Enc::new();
        self.encode(&mut e, true);
        e.buf
    }

    fn encode(&self, e: &mut Enc, with_signature: bool) {
        let sig = (with_signature && !self.signature.is_empty()).then_some(&self.signature);
        let n = 1
            + usize::from(!self.pubkey.is_empty())
            + usize::from(!self.key_id.is_empty())
            + usize::from(sig.is_some())
            + usize::from(self.nested.is_some())
            + usize::from(!self.wrapping_pubkey.is_empty());
        e.map(n);
        e.uint(1);
        e.uint(u64::from(self.sig_kind.0));
        if !self.pubkey.is_empty() {
            e.uint(2);
            e.bytes(&self.pubkey);
        }
        if !self.key_id.is_empty() {
            e.uint(3);
            e.bytes(&self.key_id);
        }
        if let Some(s) = sig {
            e.uint(4);
            e.bytes(s);
        }
        if let Some(n) = &self.nested {
            e.uint(5);
            n.encode(e, true);
        }
        if !self.wrapping_pubkey.is_empty() {
            e.uint(6);
            e.bytes(&self.wrapping_pubkey);
        }
    }

    /// Decodes with Tailscale's decoder rules (nesting ≤ 16 levels, etc.).
    pub fn decode(data: &[u8]) -> Result<Self, CborError> {
        Self::decode_value(cbor::decode(data)?)
    }

    /// Like [`NodeKeySignature::decode`], but the input must be exactly the canonical encoding.
    pub fn decode_canonical(data: &[u8]) -> Result<Self, CborError> {
        let s = Self::decode(data)?;
        if s.serialize() != data {
            return Err(CborError::NotCanonical);
        }
        Ok(s)
    }

    fn decode_value(v: Value) -> Result<Self, CborError> {
        let mut s = NodeKeySignature::default();
        if v.is_nil() {
            return Ok(s);
        }
        for (key, val) in cbor::map_entries(v, "NodeKeySignature")? {
            match cbor::field_key(&key) {
                Some(1) => s.sig_kind = SigKind(cbor::read_u8(val, "NKS.SigKind")?.unwrap_or(0)),
                Some(2) => s.pubkey = cbor::read_bytes(val, "NKS.Pubkey")?.unwrap_or_default(),
                Some(3) => s.key_id = cbor::read_bytes(val, "NKS.KeyID")?.unwrap_or_default(),
                Some(4) => {
                    s.signature = cbor::read_bytes(val, "NKS.Signature")?.unwrap_or_default()
                }
                Some(5) => {
                    s.nested = if val.is_nil() {
                        None
                    } else {
                        Some(Box::new(Self::decode_value(val)?))
                    }
                }
                Some(6) => {
                    s.wrapping_pubkey =
                        cbor::read_bytes(val, "NKS.WrappingPubkey")?.unwrap_or_default()
                }
                _ => {}
            }
        }
        Ok(s)
    }

    /// BLAKE2s-256 of the encoding without this level's Signature (nested ones stay).
    pub fn sig_hash(&self) -> [u8; 32] {
        let mut e = Enc::new();
        self.encode(&mut e, false);
        blake2s256(&e.buf)
    }

    /// The key that must sign a Rotation wrapping this signature: WrappingPubkey, or for a
    /// Rotation without one, its nested signature's. Unverified.
    pub fn wrapping_public(&self) -> Option<&[u8]> {
        if !self.wrapping_pubkey.is_empty() {
            return Some(&self.wrapping_pubkey);
        }
        match self.sig_kind {
            SigKind::ROTATION => self.nested.as_ref()?.wrapping_public(),
            _ => None,
        }
    }

    /// The trusted key ID this signature chains to. Unverified.
    pub fn authorizing_key_id(&self) -> Result<&[u8], TkaError> {
        match self.sig_kind {
            SigKind::DIRECT | SigKind::CREDENTIAL => {
                if self.key_id.is_empty() {
                    return Err(TkaError::nks("invalid signature: no keyID present"));
                }
                Ok(&self.key_id)
            }
            SigKind::ROTATION => match &self.nested {
                Some(n) => n.authorizing_key_id(),
                None => Err(TkaError::nks(
                    "invalid signature: rotation signature missing nested signature",
                )),
            },
            k => Err(TkaError::nks(format!("unhandled signature type: {}", k.0))),
        }
    }

    /// Checks this signature (recursively) against `verification_key` (the trusted key it
    /// chains to) and, unless it is a Credential, that it authorizes `node_key` (`np` binary
    /// form; ignored for Credentials).
    pub fn verify_signature(
        &self,
        node_key: &[u8],
        verification_key: &Key,
    ) -> Result<(), TkaError> {
        if self.sig_kind != SigKind::CREDENTIAL && node_key != self.pubkey.as_slice() {
            return Err(TkaError::nks("signature does not authorize nodeKey"));
        }
        let sig_hash = self.sig_hash();
        match self.sig_kind {
            SigKind::ROTATION => {
                let Some(nested) = &self.nested else {
                    return Err(TkaError::nks("nested signatures must nest a signature"));
                };
                let Some(verify_pub) = nested.wrapping_public() else {
                    return Err(TkaError::nks("missing rotation key"));
                };
                if verify_pub.len() != 32 {
                    return Err(TkaError::nks(format!(
                        "bad rotation key length: {}",
                        verify_pub.len()
                    )));
                }
                if !verify_standard(verify_pub, &sig_hash, &self.signature) {
                    return Err(TkaError::nks("invalid signature"));
                }
                // A Credential certifies a wrapping key, not a node key.
                let nested_node: &[u8] = if nested.sig_kind != SigKind::CREDENTIAL {
                    if node_key_from_binary(&nested.pubkey).is_none() {
                        return Err(TkaError::nks("nested pubkey: malformed node key"));
                    }
                    &nested.pubkey
                } else {
                    &[]
                };
                nested
                    .verify_signature(nested_node, verification_key)
                    .map_err(|e| TkaError::nks(format!("nested: {e}")))
            }
            SigKind::DIRECT | SigKind::CREDENTIAL => {
                if self.nested.is_some() {
                    return Err(TkaError::nks(
                        "invalid signature: this signature type cannot nest another signature",
                    ));
                }
                if verification_key.kind != KeyKind::ED25519 {
                    return Err(TkaError::nks("unhandled key type"));
                }
                let public = verification_key.public.as_deref().unwrap_or(&[]);
                if public.len() != 32 {
                    return Err(TkaError::nks(format!(
                        "ed25519 key has wrong length: {}",
                        public.len()
                    )));
                }
                if verify_zip215(public, &sig_hash, &self.signature) {
                    Ok(())
                } else {
                    Err(TkaError::nks("invalid signature"))
                }
            }
            k => Err(TkaError::nks(format!("unhandled signature type: {}", k.0))),
        }
    }

    /// For a Rotation: the previous node keys (newest first) and the initial signature.
    /// `Ok(None)` for other kinds.
    pub fn rotation_details(&self) -> Result<Option<RotationDetails>, TkaError> {
        if self.sig_kind != SigKind::ROTATION {
            return Ok(None);
        }
        let mut prev = Vec::new();
        let mut nested = self.nested.as_deref();
        while let Some(n) = nested {
            if !n.pubkey.is_empty() {
                prev.push(
                    node_key_from_binary(&n.pubkey)
                        .ok_or_else(|| TkaError::nks("nested pubkey: malformed node key"))?,
                );
            }
            if n.sig_kind != SigKind::ROTATION {
                break;
            }
            nested = n.nested.as_deref();
        }
        Ok(Some(RotationDetails {
            prev_node_keys: prev,
            initial_sig: nested.cloned(),
        }))
    }

    /// Number of signatures in the chain (1 for a lone Direct).
    pub fn chain_length(&self) -> usize {
        1 + self.nested.as_ref().map_or(0, |n| n.chain_length())
    }

    /// Signs this level with `key` (sets `signature` over [`NodeKeySignature::sig_hash`]).
    pub fn sign(&mut self, key: &SigningKey) {
        self.signature = key.sign(&self.sig_hash()).to_vec();
    }

    /// A Direct signature of `node` by the trusted `signer`, with an optional rotation key.
    pub fn new_direct(node: &NodePublic, signer: &SigningKey, wrapping: Option<[u8; 32]>) -> Self {
        let mut s = NodeKeySignature {
            sig_kind: SigKind::DIRECT,
            pubkey: node_key_binary(node).to_vec(),
            key_id: signer.public().to_vec(),
            wrapping_pubkey: wrapping.map(|w| w.to_vec()).unwrap_or_default(),
            ..Default::default()
        };
        s.sign(signer);
        s
    }

    /// A Credential by the trusted `signer` delegating to `wrapping` (pre-signed auth keys).
    pub fn new_credential(signer: &SigningKey, wrapping: [u8; 32]) -> Self {
        let mut s = NodeKeySignature {
            sig_kind: SigKind::CREDENTIAL,
            key_id: signer.public().to_vec(),
            wrapping_pubkey: wrapping.to_vec(),
            ..Default::default()
        };
        s.sign(signer);
        s
    }

    /// A Rotation authorizing `node`, nesting `previous`, signed by `rotation_key` (which must
    /// be `previous`'s wrapping key to verify).
    pub fn new_rotation(
        node: &NodePublic,
        previous: NodeKeySignature,
        rotation_key: &SigningKey,
    ) -> Self {
        let mut s = NodeKeySignature {
            sig_kind: SigKind::ROTATION,
            pubkey: node_key_binary(node).to_vec(),
            nested: Some(Box::new(previous)),
            ..Default::default()
        };
        s.sign(rotation_key);
        s
    }
}

/// Re-signs the node's signature `old_nks` for its new node key, with the node's own
/// tailnet-lock key (a Rotation). Returns `old_nks` unchanged if it already authorizes
/// `node_key`. Chains longer than [`MAX_PREV_NODE_KEYS`] are rebuilt from the initial signature
/// with the 14 newest previous keys.
pub fn resign_nks(
    priv_key: &SigningKey,
    node_key: &NodePublic,
    old_nks: &[u8],
) -> Result<Vec<u8>, TkaError> {
    let old = NodeKeySignature::decode(old_nks)
        .map_err(|e| TkaError::nks(format!("decoding NKS: {e}")))?;
    let nk = node_key_binary(node_key);
    if old.pubkey == nk {
        return Ok(old_nks.to_vec());
    }
    let nested = trim_rotation_chain(old, priv_key);
    Ok(NodeKeySignature::new_rotation(node_key, nested, priv_key).serialize())
}

fn trim_rotation_chain(sig: NodeKeySignature, priv_key: &SigningKey) -> NodeKeySignature {
    if sig.sig_kind != SigKind::ROTATION {
        return sig;
    }
    let mut prev: Vec<Vec<u8>> = vec![sig.pubkey.clone()];
    let mut nested = sig.nested.as_deref();
    while let Some(n) = nested {
        if !n.pubkey.is_empty() {
            prev.push(n.pubkey.clone());
        }
        if n.sig_kind != SigKind::ROTATION {
            break;
        }
        nested = n.nested.as_deref();
    }
    if prev.len() <= MAX_PREV_NODE_KEYS {
        return sig;
    }
    let Some(initial) = nested.cloned() else {
        return sig;
    };
    let mut result = initial;
    for i in (0..=MAX_PREV_NODE_KEYS - 2).rev() {
        let mut r = NodeKeySignature {
            sig_kind: SigKind::ROTATION,
            pubkey: prev[i].clone(),
            nested: Some(Box::new(result)),
            ..Default::default()
        };
        r.sign(priv_key);
        result = r;
    }
    result
}

/// A pre-signed ("wrapped") auth key split into its parts.
#[derive(Clone, Debug)]
pub struct WrappedAuthKey {
    /// The plain auth key, sent as `Auth.AuthKey`.
    pub auth_key: String,
    /// The Credential signature.
    pub credential: NodeKeySignature,
    /// The one-time wrapping private key (seed ‖ public, 64 bytes in Go form).
    pub wrapping_private: Vec<u8>,
}

/// Splits `<authkey>--TL<base64 NKS>-<base64 private>` (standard base64, no padding). Returns
/// `None` for an unwrapped or malformed key (the whole string is then the auth key).
pub fn decode_wrapped_auth_key(s: &str) -> Option<WrappedAuthKey> {
    let (auth, suffix) = s.split_once("--TL")?;
    let (sig_b64, priv_b64) = suffix.split_once('-')?;
    // Go's RawStdEncoding: no padding, unused trailing bits ignored.
    let b64 = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_encode_padding(false)
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone)
            .with_decode_allow_trailing_bits(true),
    );
    let sig = b64.decode(sig_b64).ok()?;
    let private = b64.decode(priv_b64).ok()?;
    let credential = NodeKeySignature::decode(&sig).ok()?;
    Some(WrappedAuthKey {
        auth_key: auth.to_string(),
        credential,
        wrapping_private: private,
    })
}

/// The node-side signature for a wrapped auth key: a Rotation over `node_key` nesting the
/// Credential, signed with the wrapping private key.
pub fn sign_by_credential(
    wrapped: &WrappedAuthKey,
    node_key: &NodePublic,
) -> Result<Vec<u8>, TkaError> {
    if wrapped.credential.sig_kind != SigKind::CREDENTIAL {
        return Err(TkaError::nks("wrapped signature must be a credential"));
    }
    let key = SigningKey::from_go_private(&wrapped.wrapping_private)
        .ok_or_else(|| TkaError::nks("malformed wrapping private key"))?;
    Ok(NodeKeySignature::new_rotation(node_key, wrapped.credential.clone(), &key).serialize())
}
