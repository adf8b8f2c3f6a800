//! Layer 0: the key vocabulary of weft.
//!
//! Every Curve25519 key the protocol names (machine, node, disco, the control
//! server's Noise key, challenge keys) is a newtype here, with Tailscale's text
//! form (`prefix:` + 64 lowercase hex digits) for JSON, a short log form, and a
//! `Debug` that never prints private bytes. This is the only crate that names
//! `x25519-dalek`, `crypto_box` and `ed25519-dalek` types.
#![warn(missing_docs)]

use std::fmt;

use crypto_box::aead::Aead;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Errors parsing or using keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text form did not start with the expected prefix.
    #[error("key {0:?} lacks the {1:?} prefix")]
    Prefix(String, &'static str),
    /// The hex part was not 64 hex digits.
    #[error("key has bad hex: {0}")]
    Hex(String),
    /// Raw bytes were not 32 long.
    #[error("key must be 32 bytes, got {0}")]
    Length(usize),
    /// A sealed box failed to open (wrong key, tampered, or too short).
    #[error("box failed to open")]
    Open,
}

/// Fills `buf` from the operating system's random source.
///
/// Only drivers and key generation call this; sans-IO cores take seeds.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).expect("the OS random source is available");
    b
}

fn parse_hex32(s: &str, prefix: &'static str) -> Result<[u8; 32], KeyError> {
    let Some(rest) = s.strip_prefix(prefix) else {
        return Err(KeyError::Prefix(s.chars().take(16).collect(), prefix));
    };
    if rest.len() != 64 {
        return Err(KeyError::Hex(format!(
            "want 64 hex digits, got {}",
            rest.len()
        )));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(rest, &mut out).map_err(|e| KeyError::Hex(e.to_string()))?;
    Ok(out)
}

macro_rules! public_key {
    ($(#[$m:meta])* $name:ident, $prefix:literal) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name([u8; 32]);

        impl $name {
            /// The text prefix, e.g. `nodekey:`.
            pub const PREFIX: &'static str = $prefix;
            /// Wraps raw bytes.
            pub const fn from_bytes(b: [u8; 32]) -> Self { Self(b) }
            /// Wraps a slice of exactly 32 bytes.
            pub fn from_slice(b: &[u8]) -> Result<Self, KeyError> {
                let a: [u8; 32] = b.try_into().map_err(|_| KeyError::Length(b.len()))?;
                Ok(Self(a))
            }
            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; 32] { &self.0 }
            /// The raw bytes, by value.
            pub const fn to_bytes(self) -> [u8; 32] { self.0 }
            /// Whether this is the all-zero key, which the wire uses for "absent".
            pub fn is_zero(&self) -> bool { self.0 == [0u8; 32] }
            /// Parses the prefixed text form (hex in either case).
            pub fn parse(s: &str) -> Result<Self, KeyError> { parse_hex32(s, $prefix).map(Self) }
            /// The prefixed text form with lowercase hex.
            pub fn to_text(&self) -> String { format!("{}{}", $prefix, hex::encode(self.0)) }
            /// Tailscale's log form: `[` + first 5 chars of base64 + `]`.
            pub fn short(&self) -> String {
                use base64::Engine;
                let b = base64::engine::general_purpose::STANDARD.encode(self.0);
                format!("[{}]", &b[..5])
            }
            /// The untyped hex form without prefix (as WireGuard UAPI and DERP use).
            pub fn to_hex(&self) -> String { hex::encode(self.0) }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(&self.to_text()) }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", stringify!($name), self.short())
            }
        }
        impl std::str::FromStr for $name {
            type Err = KeyError;
            fn from_str(s: &str) -> Result<Self, KeyError> { Self::parse(s) }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> { s.serialize_str(&self.to_text()) }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                if s.is_empty() { return Ok(Self::default()); }
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

macro_rules! private_key {
    ($(#[$m:meta])* $name:ident, $public:ident) => {
        $(#[$m])*
        #[derive(Clone, zeroize::ZeroizeOnDrop)]
        pub struct $name([u8; 32]);

        impl $name {
            /// A fresh random key from the OS random source.
            pub fn generate() -> Self { Self::from_bytes(random_bytes()) }
            /// Wraps raw scalar bytes (clamped on use by X25519).
            pub fn from_bytes(b: [u8; 32]) -> Self { Self(b) }
            /// The raw secret bytes. Handle with care.
            pub fn to_bytes(&self) -> [u8; 32] { self.0 }
            /// The matching public key.
            pub fn public(&self) -> $public {
                let s = x25519_dalek::StaticSecret::from(self.0);
                $public(x25519_dalek::PublicKey::from(&s).to_bytes())
            }
            /// X25519 Diffie-Hellman with a peer public key.
            pub fn shared_secret(&self, peer: &[u8; 32]) -> [u8; 32] {
                let s = x25519_dalek::StaticSecret::from(self.0);
                s.diffie_hellman(&x25519_dalek::PublicKey::from(*peer)).to_bytes()
            }
            /// `privkey:` text form, for state files only.
            pub fn to_text(&self) -> String { format!("privkey:{}", hex::encode(self.0)) }
            /// Parses the `privkey:` text form.
            pub fn parse(s: &str) -> Result<Self, KeyError> { parse_hex32(s, "privkey:").map(Self) }
            /// Seals `msg` to `peer` with a NaCl box (X25519 + XSalsa20-Poly1305).
            /// Output is `nonce(24) || ciphertext`, as Tailscale's `SealTo` produces.
            pub fn seal_to(&self, peer: &[u8; 32], msg: &[u8]) -> Vec<u8> {
                seal(&self.0, peer, msg, random_bytes())
            }
            /// Seals with a given nonce (deterministic, for sans-IO cores and tests).
            pub fn seal_to_with_nonce(&self, peer: &[u8; 32], msg: &[u8], nonce: [u8; 24]) -> Vec<u8> {
                seal(&self.0, peer, msg, nonce)
            }
            /// Opens `nonce(24) || ciphertext` from `peer`.
            pub fn open_from(&self, peer: &[u8; 32], sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
                open(&self.0, peer, sealed)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}(<redacted>)", stringify!($name))
            }
        }
    };
}

fn seal(private: &[u8; 32], peer: &[u8; 32], msg: &[u8], nonce: [u8; 24]) -> Vec<u8> {
    let b = crypto_box::SalsaBox::new(
        &crypto_box::PublicKey::from(*peer),
        &crypto_box::SecretKey::from(*private),
    );
    let n = crypto_box::Nonce::from(nonce);
    let ct = b
        .encrypt(&n, msg)
        .expect("sealing never fails for in-memory buffers");
    let mut out = Vec::with_capacity(24 + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

fn open(private: &[u8; 32], peer: &[u8; 32], sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
    if sealed.len() < 24 + 16 {
        return Err(KeyError::Open);
    }
    let b = crypto_box::SalsaBox::new(
        &crypto_box::PublicKey::from(*peer),
        &crypto_box::SecretKey::from(*private),
    );
    let nonce = crypto_box::Nonce::clone_from_slice(&sealed[..24]);
    b.decrypt(&nonce, &sealed[24..]).map_err(|_| KeyError::Open)
}

public_key!(
    /// A machine key (Noise initiator static key), `mkey:`. Also the control server's Noise key.
    MachinePublic, "mkey:"
);
public_key!(
    /// A node key (WireGuard public key, DERP identity), `nodekey:`.
    NodePublic, "nodekey:"
);
public_key!(
    /// A disco key (path discovery), `discokey:`; new on every process start.
    DiscoPublic, "discokey:"
);
public_key!(
    /// A Noise challenge key sent in EarlyNoise, `chalpub:`.
    ChallengePublic, "chalpub:"
);
public_key!(
    /// A tailnet-lock (Ed25519) public key, `nlpub:`.
    NlPublic, "nlpub:"
);
private_key!(
    /// The private half of a machine key.
    MachinePrivate, MachinePublic
);
private_key!(
    /// The private half of a node key.
    NodePrivate, NodePublic
);
private_key!(
    /// The private half of a disco key.
    DiscoPrivate, DiscoPublic
);
private_key!(
    /// The private half of a challenge key.
    ChallengePrivate, ChallengePublic
);

impl NlPublic {
    /// Verifies an Ed25519 signature made by this key.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else {
            return false;
        };
        vk.verify_strict(msg, &sig).is_ok()
    }
}

/// The private half of a tailnet-lock key (Ed25519 seed), `nlpriv:`.
#[derive(Clone, zeroize::ZeroizeOnDrop)]
pub struct NlPrivate([u8; 32]);

impl NlPrivate {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self(random_bytes())
    }
    /// Wraps a 32-byte Ed25519 seed.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }
    /// The seed bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }
    /// The public key.
    pub fn public(&self) -> NlPublic {
        NlPublic(
            ed25519_dalek::SigningKey::from_bytes(&self.0)
                .verifying_key()
                .to_bytes(),
        )
    }
    /// Signs `msg` (64-byte Ed25519 signature).
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        ed25519_dalek::SigningKey::from_bytes(&self.0)
            .sign(msg)
            .to_bytes()
    }
    /// `nlpriv:` text form.
    pub fn to_text(&self) -> String {
        format!("nlpriv:{}", hex::encode(self.0))
    }
    /// Parses the `nlpriv:` text form.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        parse_hex32(s, "nlpriv:").map(Self)
    }
}

impl fmt::Debug for NlPrivate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NlPrivate(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_is_lowercase() {
        let k = NodePrivate::from_bytes([7; 32]).public();
        let t = k.to_text();
        assert!(t.starts_with("nodekey:"));
        assert_eq!(t, t.to_lowercase());
        assert_eq!(
            NodePublic::parse(&t.to_uppercase().replace("NODEKEY:", "nodekey:")).unwrap(),
            k
        );
    }

    #[test]
    fn wrong_prefix_or_length_is_rejected() {
        assert!(NodePublic::parse(&format!("mkey:{}", "00".repeat(32))).is_err());
        assert!(NodePublic::parse("nodekey:abcd").is_err());
    }

    #[test]
    fn known_x25519_vector_matches_the_protocol_notes() {
        let mut b = [0u8; 32];
        for (i, x) in b.iter_mut().enumerate() {
            *x = i as u8;
        }
        assert_eq!(
            MachinePrivate::from_bytes(b).public().to_hex(),
            "8f40c5adb68f25624ae5b214ea767a6ec94d829d3d7b5e1ad1ba6f3e2138285f"
        );
    }

    #[test]
    fn sealed_box_opens_only_for_the_right_pair() {
        let a = DiscoPrivate::generate();
        let b = DiscoPrivate::generate();
        let c = DiscoPrivate::generate();
        let sealed = a.seal_to(b.public().as_bytes(), b"ping");
        assert_eq!(
            b.open_from(a.public().as_bytes(), &sealed).unwrap(),
            b"ping"
        );
        assert_eq!(
            c.open_from(a.public().as_bytes(), &sealed),
            Err(KeyError::Open)
        );
        assert_eq!(
            b.open_from(a.public().as_bytes(), &sealed[..10]),
            Err(KeyError::Open)
        );
    }

    #[test]
    fn debug_never_prints_private_bytes() {
        let k = NodePrivate::from_bytes([0xab; 32]);
        assert!(!format!("{k:?}").contains("ab"));
    }

    #[test]
    fn json_uses_prefixed_text_and_empty_is_zero() {
        let k = DiscoPublic::from_bytes([1; 32]);
        let j = serde_json::to_string(&k).unwrap();
        assert_eq!(j, format!("\"discokey:{}\"", "01".repeat(32)));
        let z: DiscoPublic = serde_json::from_str("\"\"").unwrap();
        assert!(z.is_zero());
    }

    #[test]
    fn nl_signature_verifies() {
        let k = NlPrivate::generate();
        let sig = k.sign(b"aum");
        assert!(k.public().verify(b"aum", &sig));
        assert!(!k.public().verify(b"other", &sig));
    }

    proptest::proptest! {
        #[test]
        fn any_key_round_trips_through_text(b in proptest::array::uniform32(proptest::num::u8::ANY)) {
            let k = NodePublic::from_bytes(b);
            proptest::prop_assert_eq!(NodePublic::parse(&k.to_text()).unwrap(), k);
        }
    }
}
