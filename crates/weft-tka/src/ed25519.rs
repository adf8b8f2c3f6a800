//! The two Ed25519 verification flavours Tailnet Lock uses.
//!
//! - [`verify_zip215`]: the ZIP-215 rules (Go `ed25519consensus`), for AUM signatures and for
//!   Direct/Credential node-key signatures. Non-canonical point encodings of A and R are
//!   accepted, S must be canonical, and the *cofactored* equation `[8][S]B = [8]R + [8][k]A` is
//!   checked.
//! - [`verify_standard`]: Go `crypto/ed25519.Verify` (cofactorless, canonical S, R compared as
//!   bytes), for Rotation node-key signatures. ed25519-dalek's non-strict `verify` follows the
//!   same rules.

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use sha2::{Digest, Sha512};

/// ZIP-215 verification. Wrong lengths verify as false.
pub fn verify_zip215(public: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    let (Ok(a_bytes), Ok(sig)) = (<[u8; 32]>::try_from(public), <[u8; 64]>::try_from(sig)) else {
        return false;
    };
    let r_bytes: [u8; 32] = sig[..32].try_into().expect("32 bytes");
    let s_bytes: [u8; 32] = sig[32..].try_into().expect("32 bytes");
    let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)) else {
        return false;
    };
    // curve25519-dalek's decompression accepts non-canonical y (>= p) and a set sign bit with
    // x = 0, which is what ZIP-215 asks for.
    let Some(a) = CompressedEdwardsY(a_bytes).decompress() else {
        return false;
    };
    let Some(r) = CompressedEdwardsY(r_bytes).decompress() else {
        return false;
    };
    let mut h = Sha512::new();
    h.update(r_bytes);
    h.update(a_bytes);
    h.update(msg);
    let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
    // [S]B - [k]A - R, times the cofactor, must be the identity.
    let sb_minus_ka = EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &(-a), &s);
    (sb_minus_ka - r).mul_by_cofactor().is_identity()
}

/// Standard (Go `crypto/ed25519`) verification. Wrong lengths verify as false.
pub fn verify_standard(public: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    use ed25519_dalek::Verifier;
    let Ok(a) = <[u8; 32]>::try_from(public) else {
        return false;
    };
    let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&a) else {
        return false;
    };
    let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else {
        return false;
    };
    vk.verify(msg, &sig).is_ok()
}

/// An Ed25519 signing key (seed) usable for AUMs and node-key signatures.
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    /// From a 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// From a tailnet-lock private key.
    pub fn from_nl(k: &weft_key::NlPrivate) -> Self {
        Self::from_seed(k.to_bytes())
    }

    /// From Go's 64-byte private key form (seed ‖ public); `None` if the halves disagree.
    pub fn from_go_private(b: &[u8]) -> Option<Self> {
        let b: [u8; 64] = b.try_into().ok()?;
        let k = Self::from_seed(b[..32].try_into().expect("32 bytes"));
        (k.public() == b[32..]).then_some(k)
    }

    /// The 32-byte public key (which is also its tailnet-lock key ID).
    pub fn public(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        self.0.sign(msg).to_bytes()
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(public={})", hex_short(&self.public()))
    }
}

fn hex_short(b: &[u8]) -> String {
    b.iter().take(4).map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn honest_signatures_verify_under_both_rules() {
        let k = SigningKey::from_seed([7; 32]);
        let sig = k.sign(b"hello");
        assert!(verify_zip215(&k.public(), b"hello", &sig));
        assert!(verify_standard(&k.public(), b"hello", &sig));
        assert!(!verify_zip215(&k.public(), b"hellO", &sig));
        assert!(!verify_standard(&k.public(), b"hellO", &sig));
        let mut bad = sig;
        bad[3] ^= 1;
        assert!(!verify_zip215(&k.public(), b"hello", &bad));
        assert!(!verify_standard(&k.public(), b"hello", &bad));
        assert!(!verify_zip215(&k.public()[..31], b"hello", &sig));
        assert!(!verify_zip215(&k.public(), b"hello", &sig[..63]));
    }

    #[test]
    fn non_canonical_s_is_rejected() {
        let k = SigningKey::from_seed([9; 32]);
        let mut sig = k.sign(b"m");
        // S + l is the same scalar mod l but not canonical.
        let l: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut carry = 0u16;
        for i in 0..32 {
            let v = u16::from(sig[32 + i]) + u16::from(l[i]) + carry;
            sig[32 + i] = v as u8;
            carry = v >> 8;
        }
        assert!(!verify_zip215(&k.public(), b"m", &sig));
        assert!(!verify_standard(&k.public(), b"m", &sig));
    }

    #[test]
    fn zip215_accepts_small_order_mixed_signatures_standard_rejects() {
        // A = identity (small order, encoded as y = 1), R = identity, S = 0: the cofactored
        // equation holds for any message. ZIP-215 accepts; Go's crypto/ed25519 accepts it
        // too (R' = 0*B - k*O = O encodes to R), so use a non-canonical identity encoding for R
        // (y = p + 1), which only ZIP-215 accepts.
        let mut ident = [0u8; 32];
        ident[0] = 1;
        let mut r_noncanon = [0xffu8; 32];
        r_noncanon[0] = 0xee; // p + 1 = 2^255 - 18
        r_noncanon[31] = 0x7f;
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&r_noncanon);
        assert!(verify_zip215(&ident, b"anything", &sig));
        assert!(!verify_standard(&ident, b"anything", &sig));
    }

    #[test]
    fn go_private_form() {
        let k = SigningKey::from_seed([3; 32]);
        let mut go = [3u8; 64];
        go[32..].copy_from_slice(&k.public());
        assert!(SigningKey::from_go_private(&go).is_some());
        go[40] ^= 1;
        assert!(SigningKey::from_go_private(&go).is_none());
    }
}
