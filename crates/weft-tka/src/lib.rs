//! Tailnet Lock (TKA, "tailnet key authority"): the pure core.
//!
//! - [`Aum`], [`Key`], [`State`], [`AumSignature`]: the signed log entries and the state they
//!   produce, with byte-exact canonical CBOR (Tailscale's integer keys, CTAP2 ordering) and a
//!   strict decoder ([`cbor`]).
//! - [`AumHash`]: BLAKE2s-256 of an AUM's canonical bytes; base32 text form.
//! - [`State::apply_verified_aum`], [`verify_aum`]: the state machine and its checks.
//! - [`Authority`] over a [`Chonk`] (AUM storage; [`MemChonk`] in memory): bootstrap, inform,
//!   active-chain / fork resolution, sync offers and missing AUMs, disablement.
//! - [`NodeKeySignature`]: node-key signatures (Direct, Rotation, Credential) and their
//!   verification against the authority's keys.
//!
//! No I/O, no clocks, no randomness: callers supply keys, bytes and storage.

pub mod authority;
pub mod cbor;
pub mod ed25519;
pub mod hash;
pub mod sig;
pub mod state;
pub mod storage;
pub mod sync;
pub mod types;

pub use authority::{verify_aum, Authority, UpdateBuilder, CHECKPOINT_EVERY, MAX_SCAN_ITERATIONS};
pub use cbor::CborError;
pub use ed25519::{verify_standard, verify_zip215, SigningKey};
pub use hash::{AumHash, HashParseError};
pub use sig::{
    decode_wrapped_auth_key, node_key_binary, node_key_from_binary, resign_nks, sign_by_credential,
    NodeKeySignature, RotationDetails, SigKind, WrappedAuthKey,
};
pub use state::disablement_kdf;
pub use storage::{Chonk, MemChonk, StorageError};
pub use sync::SyncOffer;
pub use types::{Aum, AumKind, AumSignature, Key, KeyKind, State};

use thiserror::Error;

/// Everything that can go wrong in this crate.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TkaError {
    /// Malformed CBOR.
    #[error("decode: {0}")]
    Decode(#[from] CborError),
    /// A structurally invalid AUM, key or checkpoint state.
    #[error("invalid: {0}")]
    Invalid(String),
    /// An AUM that is well-formed but not acceptable (parent, signatures, last key...).
    #[error("verify: {0}")]
    Verify(String),
    /// An AUM that cannot be applied to the state.
    #[error("apply: {0}")]
    Apply(String),
    /// A node-key signature that does not verify or is malformed.
    #[error("node-key signature: {0}")]
    Nks(String),
    /// The storage holds nothing usable, or disagrees with itself.
    #[error("chain: {0}")]
    Chain(String),
    /// An AUM that was expected in storage is missing.
    #[error("aum {0} not found")]
    NotFound(AumHash),
    /// The storage backend failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// Sync: the two offers share no AUM.
    #[error("no intersection")]
    NoIntersection,
    /// A walk over the chain exceeded its bound.
    #[error("iteration limit exceeded ({0})")]
    IterationLimit(usize),
}

impl TkaError {
    pub(crate) fn invalid(m: impl Into<String>) -> Self {
        TkaError::Invalid(m.into())
    }
    pub(crate) fn verify(m: impl Into<String>) -> Self {
        TkaError::Verify(m.into())
    }
    pub(crate) fn apply(m: impl Into<String>) -> Self {
        TkaError::Apply(m.into())
    }
    pub(crate) fn nks(m: impl Into<String>) -> Self {
        TkaError::Nks(m.into())
    }
    pub(crate) fn chain(m: impl Into<String>) -> Self {
        TkaError::Chain(m.into())
    }
}
