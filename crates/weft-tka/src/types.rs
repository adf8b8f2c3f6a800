//! AUMs, keys, checkpoint states and AUM signatures, with their exact CBOR forms.
//!
//! Field types keep Go's nil-versus-empty distinctions where the encoding or validation depends
//! on them: a Go `[]byte`/map/pointer field is an `Option` here (`None` = nil). Fields without
//! `omitempty` encode `None` as CBOR `null`; `omitempty` fields drop `None` *and* empty values.

use std::collections::BTreeMap;

use crate::cbor::{self, CborError, Enc, Value};
use crate::hash::{blake2s256, AumHash};
use crate::TkaError;

/// Maximum keys in a checkpoint.
pub const MAX_KEYS: usize = 512;
/// Maximum disablement values in a checkpoint.
pub const MAX_DISABLEMENT_VALUES: usize = 32;
/// Maximum total bytes of key metadata (sum of key and value lengths).
pub const MAX_META_BYTES: usize = 512;
/// Maximum votes of one key.
pub const MAX_VOTES: u64 = 4096;
/// Length of a disablement value (a KDF output).
pub const DISABLEMENT_LENGTH: usize = 32;

/// The kind of a tailnet-lock key (CBOR uint8).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
pub struct KeyKind(pub u8);

impl KeyKind {
    /// Invalid / unset.
    pub const INVALID: KeyKind = KeyKind(0);
    /// An Ed25519 key; its key ID is the 32-byte public key itself.
    pub const ED25519: KeyKind = KeyKind(1);
}

/// The kind of an AUM (CBOR uint8). Unknown kinds are accepted and applied as no-ops.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
pub struct AumKind(pub u8);

impl AumKind {
    /// Invalid / unset.
    pub const INVALID: AumKind = AumKind(0);
    /// Adds `Key`.
    pub const ADD_KEY: AumKind = AumKind(1);
    /// Removes the key `KeyID`.
    pub const REMOVE_KEY: AumKind = AumKind(2);
    /// Carries nothing.
    pub const NO_OP: AumKind = AumKind(3);
    /// Changes `Votes` and/or `Meta` of the key `KeyID`.
    pub const UPDATE_KEY: AumKind = AumKind(4);
    /// Carries the full `State`.
    pub const CHECKPOINT: AumKind = AumKind(5);

    /// Tailscale's name for the kind.
    pub fn name(self) -> String {
        match self.0 {
            0 => "invalid".into(),
            1 => "add-key".into(),
            2 => "remove-key".into(),
            3 => "no-op".into(),
            4 => "update-key".into(),
            5 => "checkpoint".into(),
            n => format!("AUM?<{n}>"),
        }
    }
}

/// A key trusted by the authority. CBOR: 1 Kind, 2 Votes, 3 Public (null if nil), 12 Meta
/// (omitempty).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Key {
    /// Key kind.
    pub kind: KeyKind,
    /// Weight of this key's signatures in fork resolution (1..=4096 when valid).
    pub votes: u64,
    /// The public key (32 bytes for Ed25519).
    pub public: Option<Vec<u8>>,
    /// Free-form metadata.
    pub meta: Option<BTreeMap<String, String>>,
}

impl Key {
    /// An Ed25519 key with the given votes and no metadata.
    pub fn ed25519(public: [u8; 32], votes: u64) -> Self {
        Self {
            kind: KeyKind::ED25519,
            votes,
            public: Some(public.to_vec()),
            meta: None,
        }
    }

    /// The key ID (for Ed25519: the public key bytes); `None` for other kinds.
    pub fn id(&self) -> Option<&[u8]> {
        (self.kind == KeyKind::ED25519).then(|| self.public.as_deref().unwrap_or(&[]))
    }

    /// Static validity: votes 1..=4096, metadata ≤ 512 bytes, kind Ed25519.
    pub fn static_validate(&self) -> Result<(), TkaError> {
        if self.votes > MAX_VOTES {
            return Err(TkaError::invalid(format!(
                "excessive key weight: {} > {MAX_VOTES}",
                self.votes
            )));
        }
        if self.votes == 0 {
            return Err(TkaError::invalid("key votes must be non-zero"));
        }
        let meta_bytes: usize = self
            .meta
            .iter()
            .flatten()
            .map(|(k, v)| k.len() + v.len())
            .sum();
        if meta_bytes > MAX_META_BYTES {
            return Err(TkaError::invalid(format!(
                "key metadata too big ({meta_bytes} > {MAX_META_BYTES})"
            )));
        }
        if self.kind != KeyKind::ED25519 {
            return Err(TkaError::invalid(format!(
                "unrecognized key kind: {}",
                self.kind.0
            )));
        }
        Ok(())
    }

    pub(crate) fn encode(&self, e: &mut Enc) {
        let has_meta = self.meta.as_ref().is_some_and(|m| !m.is_empty());
        e.map(3 + usize::from(has_meta));
        e.uint(1);
        e.uint(u64::from(self.kind.0));
        e.uint(2);
        e.uint(self.votes);
        e.uint(3);
        e.opt_bytes(self.public.as_deref());
        if let (true, Some(m)) = (has_meta, &self.meta) {
            e.uint(12);
            e.text_map(m);
        }
    }

    pub(crate) fn decode_value(v: Value) -> Result<Self, CborError> {
        let mut k = Key::default();
        if v.is_nil() {
            return Ok(k);
        }
        for (key, val) in cbor::map_entries(v, "Key")? {
            match cbor::field_key(&key) {
                Some(1) => k.kind = KeyKind(cbor::read_u8(val, "Key.Kind")?.unwrap_or(0)),
                Some(2) => k.votes = cbor::read_u64(val, "Key.Votes")?.unwrap_or(0),
                Some(3) => k.public = cbor::read_bytes(val, "Key.Public")?,
                Some(12) => k.meta = cbor::read_text_map(val, "Key.Meta")?,
                _ => {}
            }
        }
        Ok(k)
    }
}

/// One signature over an AUM's [`Aum::sig_hash`]. CBOR: 1 KeyID, 2 Signature (both `null` if
/// nil).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct AumSignature {
    /// The signing key's ID (32 bytes).
    pub key_id: Option<Vec<u8>>,
    /// The Ed25519 signature (64 bytes).
    pub signature: Option<Vec<u8>>,
}

impl AumSignature {
    /// A signature by `key_id`.
    pub fn new(key_id: &[u8], signature: &[u8]) -> Self {
        Self {
            key_id: Some(key_id.to_vec()),
            signature: Some(signature.to_vec()),
        }
    }

    /// The key ID bytes (empty if nil).
    pub fn key_id(&self) -> &[u8] {
        self.key_id.as_deref().unwrap_or(&[])
    }

    /// The signature bytes (empty if nil).
    pub fn signature(&self) -> &[u8] {
        self.signature.as_deref().unwrap_or(&[])
    }

    fn encode(&self, e: &mut Enc) {
        e.map(2);
        e.uint(1);
        e.opt_bytes(self.key_id.as_deref());
        e.uint(2);
        e.opt_bytes(self.signature.as_deref());
    }

    fn decode_value(v: Value) -> Result<Self, CborError> {
        let mut s = AumSignature::default();
        if v.is_nil() {
            return Ok(s);
        }
        for (key, val) in cbor::map_entries(v, "Signature")? {
            match cbor::field_key(&key) {
                Some(1) => s.key_id = cbor::read_bytes(val, "Signature.KeyID")?,
                Some(2) => s.signature = cbor::read_bytes(val, "Signature.Signature")?,
                _ => {}
            }
        }
        Ok(s)
    }
}

/// The authority's state: trusted keys and disablement values. Embedded in checkpoint AUMs and
/// computed by replaying AUMs. CBOR: 1 LastAUMHash (null if nil), 2 DisablementValues (null if
/// nil), 3 Keys (null if nil), 4 StateID1 (omitempty), 5 StateID2 (omitempty).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct State {
    /// Hash of the last AUM applied (always `None` inside a checkpoint).
    pub last_aum_hash: Option<AumHash>,
    /// KDF images of the disablement secrets.
    pub disablement_values: Option<Vec<Vec<u8>>>,
    /// Trusted keys, in order (the order is part of checkpoint bytes).
    pub keys: Option<Vec<Key>>,
    /// First half of the authority's fixed random ID.
    pub state_id1: u64,
    /// Second half of the authority's fixed random ID.
    pub state_id2: u64,
}

impl State {
    /// The trusted keys (empty if nil).
    pub fn keys(&self) -> &[Key] {
        self.keys.as_deref().unwrap_or(&[])
    }

    /// The trusted key with this ID.
    pub fn get_key(&self, key_id: &[u8]) -> Option<&Key> {
        self.keys().iter().find(|k| k.id() == Some(key_id))
    }

    /// Whether `key_id` is trusted.
    pub fn key_trusted(&self, key_id: &[u8]) -> bool {
        self.get_key(key_id).is_some()
    }

    /// Checkpoint validity: no LastAUMHash; 1..=32 distinct 32-byte disablement values;
    /// 1..=512 statically valid keys with distinct IDs.
    pub fn static_validate_checkpoint(&self) -> Result<(), TkaError> {
        if self.last_aum_hash.is_some() {
            return Err(TkaError::invalid("cannot specify a parent AUM"));
        }
        let dv = self.disablement_values.as_deref().unwrap_or(&[]);
        if dv.is_empty() {
            return Err(TkaError::invalid(
                "at least one disablement secret required",
            ));
        }
        if dv.len() > MAX_DISABLEMENT_VALUES {
            return Err(TkaError::invalid(format!(
                "too many disablement values ({}, max {MAX_DISABLEMENT_VALUES})",
                dv.len()
            )));
        }
        for (i, d) in dv.iter().enumerate() {
            if d.len() != DISABLEMENT_LENGTH {
                return Err(TkaError::invalid(format!(
                    "disablement[{i}]: invalid length (got {}, want {DISABLEMENT_LENGTH})",
                    d.len()
                )));
            }
            if let Some(j) = dv[..i].iter().position(|x| x == d) {
                return Err(TkaError::invalid(format!(
                    "disablement[{j}]: duplicates disablement[{i}]"
                )));
            }
        }
        let keys = self.keys();
        if keys.is_empty() {
            return Err(TkaError::invalid("at least one key is required"));
        }
        if keys.len() > MAX_KEYS {
            return Err(TkaError::invalid(format!(
                "too many keys ({}, max {MAX_KEYS})",
                keys.len()
            )));
        }
        for (i, k) in keys.iter().enumerate() {
            k.static_validate()
                .map_err(|e| TkaError::invalid(format!("key[{i}]: {e}")))?;
        }
        for (i, k) in keys.iter().enumerate() {
            if let Some(j) = keys[..i].iter().position(|x| x.id() == k.id()) {
                return Err(TkaError::invalid(format!("key[{j}]: duplicates key[{i}]")));
            }
        }
        Ok(())
    }

    pub(crate) fn encode(&self, e: &mut Enc) {
        let n = 3 + usize::from(self.state_id1 != 0) + usize::from(self.state_id2 != 0);
        e.map(n);
        e.uint(1);
        e.opt_bytes(self.last_aum_hash.as_ref().map(|h| &h.0[..]));
        e.uint(2);
        match &self.disablement_values {
            Some(dv) => {
                e.array(dv.len());
                for d in dv {
                    e.bytes(d);
                }
            }
            None => e.null(),
        }
        e.uint(3);
        match &self.keys {
            Some(keys) => {
                e.array(keys.len());
                for k in keys {
                    k.encode(e);
                }
            }
            None => e.null(),
        }
        if self.state_id1 != 0 {
            e.uint(4);
            e.uint(self.state_id1);
        }
        if self.state_id2 != 0 {
            e.uint(5);
            e.uint(self.state_id2);
        }
    }

    /// Strictness beyond Go (documented in docs/tka.md): a present LastAUMHash must be 32 bytes
    /// and disablement values may not be `null`. Go decodes those and then rejects the AUM in
    /// static validation anyway.
    pub(crate) fn decode_value(v: Value) -> Result<Self, CborError> {
        let mut s = State::default();
        if v.is_nil() {
            return Ok(s);
        }
        for (key, val) in cbor::map_entries(v, "State")? {
            match cbor::field_key(&key) {
                Some(1) => {
                    s.last_aum_hash = match cbor::read_bytes(val, "State.LastAUMHash")? {
                        Some(b) => Some(
                            AumHash::from_slice(&b).ok_or(CborError::Type("State.LastAUMHash"))?,
                        ),
                        None => None,
                    }
                }
                Some(2) => {
                    s.disablement_values = match cbor::read_array(val, "State.DisablementValues")? {
                        Some(items) => Some(
                            items
                                .into_iter()
                                .map(|i| {
                                    cbor::read_bytes(i, "State.DisablementValues")?
                                        .ok_or(CborError::Type("State.DisablementValues"))
                                })
                                .collect::<Result<_, _>>()?,
                        ),
                        None => None,
                    }
                }
                Some(3) => {
                    s.keys = match cbor::read_array(val, "State.Keys")? {
                        Some(items) => Some(
                            items
                                .into_iter()
                                .map(Key::decode_value)
                                .collect::<Result<_, _>>()?,
                        ),
                        None => None,
                    }
                }
                Some(4) => s.state_id1 = cbor::read_u64(val, "State.StateID1")?.unwrap_or(0),
                Some(5) => s.state_id2 = cbor::read_u64(val, "State.StateID2")?.unwrap_or(0),
                _ => {}
            }
        }
        Ok(s)
    }
}

/// An Authority Update Message. CBOR: 1 MessageKind, 2 PrevAUMHash (null if nil), 3 Key,
/// 4 KeyID, 5 State, 6 Votes, 7 Meta, 23 Signatures (3..=23 omitempty).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Aum {
    /// What this AUM does.
    pub message_kind: AumKind,
    /// The parent's hash; `None` for a genesis AUM.
    pub prev_aum_hash: Option<Vec<u8>>,
    /// AddKey: the key to add.
    pub key: Option<Key>,
    /// RemoveKey/UpdateKey: the key concerned.
    pub key_id: Option<Vec<u8>>,
    /// Checkpoint: the full state.
    pub state: Option<State>,
    /// UpdateKey: new votes.
    pub votes: Option<u64>,
    /// UpdateKey: new metadata (replaces the whole map).
    pub meta: Option<BTreeMap<String, String>>,
    /// Signatures over [`Aum::sig_hash`].
    pub signatures: Vec<AumSignature>,
}

impl Aum {
    /// Canonical CBOR encoding (what is hashed, stored and sent).
    pub fn serialize(&self) -> Vec<u8> {
        let mut e = Enc::new();
        self.encode(&mut e, true);
        e.buf
    }

    fn encode(&self, e: &mut Enc, with_signatures: bool) {
        let key_id = self.key_id.as_deref().filter(|k| !k.is_empty());
        let meta = self.meta.as_ref().filter(|m| !m.is_empty());
        let sigs = (with_signatures && !self.signatures.is_empty()).then_some(&self.signatures);
        let n = 2
            + usize::from(self.key.is_some())
            + usize::from(key_id.is_some())
            + usize::from(self.state.is_some())
            + usize::from(self.votes.is_some())
            + usize::from(meta.is_some())
            + usize::from(sigs.is_some());
        e.map(n);
        e.uint(1);
        e.uint(u64::from(self.message_kind.0));
        e.uint(2);
        e.opt_bytes(self.prev_aum_hash.as_deref());
        if let Some(k) = &self.key {
            e.uint(3);
            k.encode(e);
        }
        if let Some(k) = key_id {
            e.uint(4);
            e.bytes(k);
        }
        if let Some(s) = &self.state {
            e.uint(5);
            s.encode(e);
        }
        if let Some(v) = self.votes {
            e.uint(6);
            e.uint(v);
        }
        if let Some(m) = meta {
            e.uint(7);
            e.text_map(m);
        }
        if let Some(sigs) = sigs {
            e.uint(23);
            e.array(sigs.len());
            for s in sigs {
                s.encode(e);
            }
        }
    }

    /// Decodes an AUM with Tailscale's decoder rules (see [`crate::cbor`]). Non-shortest
    /// integers and unsorted maps are accepted; hash the re-encoding, never the input.
    pub fn decode(data: &[u8]) -> Result<Self, CborError> {
        Self::decode_value(cbor::decode(data)?)
    }

    /// Like [`Aum::decode`], but also requires the input to be exactly the canonical encoding.
    pub fn decode_canonical(data: &[u8]) -> Result<Self, CborError> {
        let a = Self::decode(data)?;
        if a.serialize() != data {
            return Err(CborError::NotCanonical);
        }
        Ok(a)
    }

    fn decode_value(v: Value) -> Result<Self, CborError> {
        let mut a = Aum::default();
        if v.is_nil() {
            return Ok(a);
        }
        for (key, val) in cbor::map_entries(v, "AUM")? {
            match cbor::field_key(&key) {
                Some(1) => {
                    a.message_kind = AumKind(cbor::read_u8(val, "AUM.MessageKind")?.unwrap_or(0))
                }
                Some(2) => a.prev_aum_hash = cbor::read_bytes(val, "AUM.PrevAUMHash")?,
                Some(3) => {
                    a.key = if val.is_nil() {
                        None
                    } else {
                        Some(Key::decode_value(val)?)
                    }
                }
                Some(4) => a.key_id = cbor::read_bytes(val, "AUM.KeyID")?,
                Some(5) => {
                    a.state = if val.is_nil() {
                        None
                    } else {
                        Some(State::decode_value(val)?)
                    }
                }
                Some(6) => a.votes = cbor::read_u64(val, "AUM.Votes")?,
                Some(7) => a.meta = cbor::read_text_map(val, "AUM.Meta")?,
                Some(23) => {
                    a.signatures = cbor::read_array(val, "AUM.Signatures")?
                        .unwrap_or_default()
                        .into_iter()
                        .map(AumSignature::decode_value)
                        .collect::<Result<_, _>>()?
                }
                _ => {}
            }
        }
        Ok(a)
    }

    /// BLAKE2s-256 of the canonical encoding, signatures included.
    pub fn hash(&self) -> AumHash {
        AumHash(blake2s256(&self.serialize()))
    }

    /// BLAKE2s-256 of the canonical encoding without signatures: what signatures sign.
    pub fn sig_hash(&self) -> [u8; 32] {
        let mut e = Enc::new();
        self.encode(&mut e, false);
        blake2s256(&e.buf)
    }

    /// The parent hash, if any (a non-32-byte parent is truncated/zero-padded as in Go).
    pub fn parent(&self) -> Option<AumHash> {
        let p = self.prev_aum_hash.as_deref().filter(|p| !p.is_empty())?;
        let mut h = [0u8; 32];
        let n = p.len().min(32);
        h[..n].copy_from_slice(&p[..n]);
        Some(AumHash(h))
    }

    /// Appends a signature by `key` over [`Aum::sig_hash`].
    pub fn sign(&mut self, key: &crate::SigningKey) {
        let sig = key.sign(&self.sig_hash());
        self.signatures.push(AumSignature::new(&key.public(), &sig));
    }

    /// Fork-resolution weight under `state`: the sum of votes of the *distinct* trusted keys
    /// that signed (unknown keys count zero). Signatures are not checked here.
    pub fn weight(&self, state: &State) -> u64 {
        let mut seen: Vec<&[u8]> = Vec::new();
        let mut weight = 0u64;
        for s in &self.signatures {
            let Some(k) = state.get_key(s.key_id()) else {
                continue;
            };
            if seen.contains(&s.key_id()) {
                continue;
            }
            seen.push(s.key_id());
            weight = weight.saturating_add(k.votes);
        }
        weight
    }

    /// Static validity (shape only; no signatures or state involved).
    pub fn static_validate(&self) -> Result<(), TkaError> {
        if let Some(k) = &self.key {
            k.static_validate()?;
        }
        if self.prev_aum_hash.as_ref().is_some_and(|p| p.is_empty()) {
            return Err(TkaError::invalid(
                "absent parent must be represented by a nil slice",
            ));
        }
        for (i, s) in self.signatures.iter().enumerate() {
            if s.key_id().len() != 32 || s.signature().len() != 64 {
                return Err(TkaError::invalid(format!(
                    "signature {i} has missing keyID or malformed signature"
                )));
            }
        }
        if let Some(s) = &self.state {
            s.static_validate_checkpoint()
                .map_err(|e| TkaError::invalid(format!("checkpoint state: {e}")))?;
        }
        let extra_for_key_ops = self.state.is_some() || self.votes.is_some() || self.meta.is_some();
        match self.message_kind {
            AumKind::ADD_KEY => {
                if self.key.is_none() {
                    return Err(TkaError::invalid("AddKey AUMs must contain a key"));
                }
                if self.key_id.is_some() || extra_for_key_ops {
                    return Err(TkaError::invalid("AddKey AUMs may only specify a Key"));
                }
            }
            AumKind::REMOVE_KEY => {
                if self.key_id.as_ref().is_none_or(|k| k.is_empty()) {
                    return Err(TkaError::invalid("RemoveKey AUMs must specify a key ID"));
                }
                if self.key.is_some() || extra_for_key_ops {
                    return Err(TkaError::invalid("RemoveKey AUMs may only specify a KeyID"));
                }
            }
            AumKind::UPDATE_KEY => {
                if self.key_id.as_ref().is_none_or(|k| k.is_empty()) {
                    return Err(TkaError::invalid("UpdateKey AUMs must specify a key ID"));
                }
                if self.meta.is_none() && self.votes.is_none() {
                    return Err(TkaError::invalid(
                        "UpdateKey AUMs must contain an update to votes or key metadata",
                    ));
                }
                if self.key.is_some() || self.state.is_some() {
                    return Err(TkaError::invalid(
                        "UpdateKey AUMs may only specify KeyID, Votes, and Meta",
                    ));
                }
            }
            AumKind::CHECKPOINT => {
                if self.state.is_none() {
                    return Err(TkaError::invalid("Checkpoint AUMs must specify the state"));
                }
                if self.key_id.is_some()
                    || self.key.is_some()
                    || self.votes.is_some()
                    || self.meta.is_some()
                {
                    return Err(TkaError::invalid("Checkpoint AUMs may only specify State"));
                }
            }
            // NoOp, and unknown kinds (forward compatibility: new kinds only add features).
            _ => {}
        }
        Ok(())
    }
}
