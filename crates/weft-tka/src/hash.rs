//! AUM hashes (BLAKE2s-256) and their base32 text form.

use std::fmt;
use std::str::FromStr;

use blake2::{Blake2s256, Digest};
use thiserror::Error;

/// BLAKE2s-256 of `data`.
pub fn blake2s256(data: &[u8]) -> [u8; 32] {
    Blake2s256::digest(data).into()
}

/// The BLAKE2s-256 digest of an AUM's canonical encoding. Ordered bytewise (fork resolution
/// prefers the smallest). Text form: RFC 4648 base32, standard alphabet, no padding (52 chars).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct AumHash(pub [u8; 32]);

/// A malformed [`AumHash`] text form.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HashParseError {
    /// The text does not decode to exactly 32 bytes.
    #[error("aum hash: text has wrong length {0}, want 52")]
    Length(usize),
    /// A character outside the base32 alphabet.
    #[error("aum hash: invalid base32 character at {0}")]
    Char(usize),
}

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

impl AumHash {
    /// The raw digest.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether this is the all-zero value (never a real digest).
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }

    /// Wraps a slice of exactly 32 bytes.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        b.try_into().ok().map(Self)
    }

    /// Base32 (standard alphabet, unpadded), as Tailscale prints heads.
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(52);
        let mut acc: u32 = 0;
        let mut bits = 0;
        for &b in &self.0 {
            acc = (acc << 8) | u32::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
            }
        }
        if bits > 0 {
            out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
        }
        out
    }

    /// Parses the text form. Like Go's decoder, only a length that decodes to 32 bytes (52
    /// characters) is accepted, and unused trailing bits are ignored.
    pub fn parse(s: &str) -> Result<Self, HashParseError> {
        let b = s.as_bytes();
        if b.len() * 5 / 8 != 32 {
            return Err(HashParseError::Length(b.len()));
        }
        let mut out = [0u8; 32];
        let mut acc: u32 = 0;
        let mut bits = 0;
        let mut n = 0;
        for (i, &c) in b.iter().enumerate() {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'2'..=b'7' => c - b'2' + 26,
                _ => return Err(HashParseError::Char(i)),
            };
            acc = (acc << 5) | u32::from(v);
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                out[n] = (acc >> bits) as u8;
                n += 1;
            }
            acc &= (1 << bits) - 1;
        }
        Ok(Self(out))
    }
}

impl fmt::Display for AumHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl fmt::Debug for AumHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AumHash({})", self.to_text())
    }
}

impl FromStr for AumHash {
    type Err = HashParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn text_form_vector() {
        let h = AumHash(
            hex::decode("4a6313e0cd0d696c7ff9c737ea6fa3abcf77e382e9df0c834f3d1e16b3baeea8")
                .unwrap()
                .try_into()
                .unwrap(),
        );
        assert_eq!(
            h.to_text(),
            "JJRRHYGNBVUWY77ZY436U35DVPHXPY4C5HPQZA2PHUPBNM5252UA"
        );
        assert_eq!(AumHash::parse(&h.to_text()), Ok(h));
    }

    #[test]
    fn parse_rejects_bad_text() {
        let good = "JJRRHYGNBVUWY77ZY436U35DVPHXPY4C5HPQZA2PHUPBNM5252UA";
        assert_eq!(AumHash::parse(&good[..51]), Err(HashParseError::Length(51)));
        assert_eq!(
            AumHash::parse(&format!("{good}A")),
            Err(HashParseError::Length(53))
        );
        assert_eq!(
            AumHash::parse(&good.to_lowercase()),
            Err(HashParseError::Char(0))
        );
        assert_eq!(
            AumHash::parse(&format!("{}=", &good[..51])),
            Err(HashParseError::Char(51))
        );
        assert_eq!(AumHash::parse(""), Err(HashParseError::Length(0)));
    }

    proptest! {
        #[test]
        fn text_round_trips(b in any::<[u8; 32]>()) {
            let h = AumHash(b);
            let t = h.to_text();
            prop_assert_eq!(t.len(), 52);
            prop_assert!(!t.contains('='));
            prop_assert_eq!(AumHash::parse(&t).unwrap(), h);
        }
    }
}
