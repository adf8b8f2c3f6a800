//! Layer 0: serde types of Tailscale's control protocol (`tailcfg`), with Tailscale's JSON
//! names and Go `encoding/json` conventions.
//!
//! Decoding is lenient like Go's (unknown keys ignored, `null` = absent for lists that have no
//! distinct empty meaning). Where `[]` and absent differ on the wire (`PacketFilter`,
//! `Health`, `Node.AllowedIPs`, `PeerChange.Endpoints`) the field is an `Option<Vec<_>>`.
//! Times are [`Time`] (RFC 3339 with nanoseconds; Go's zero time is `0001-01-01T00:00:00Z`).
#![warn(missing_docs)]

pub mod derp;
pub mod dns;
pub mod filter;
pub mod hostinfo;
pub mod map;
pub mod misc;
pub mod node;
pub mod register;
mod serde_helpers;
pub mod time;
pub mod tka;

pub use derp::{DerpHomeParams, DerpMap, DerpNode, DerpRegion};
pub use dns::{DnsConfig, DnsRecord, Resolver};
pub use filter::{CapGrant, CapMap, FilterRule, NetPortRange, PortRange};
pub use hostinfo::{Hostinfo, NetInfo};
pub use map::{MapRequest, MapResponse};
pub use misc::{
    Debug, DisplayMessage, DisplayMessageAction, EarlyNoise, OverTlsPublicKeyResponse, PingRequest,
    PingResponse, SetDnsRequest, SshAction, SshPolicy, SshPrincipal, SshRule, TkaInfo,
};
pub use node::{Login, Node, NodeId, PeerChange, User, UserId, UserProfile};
pub use register::{RegisterAuth, RegisterRequest, RegisterResponse};
pub use time::{Time, TimeParseError};
pub use tka::{
    B64Bytes, TkaBootstrapRequest, TkaBootstrapResponse, TkaDisableRequest, TkaDisableResponse,
    TkaInitBeginRequest, TkaInitBeginResponse, TkaInitFinishRequest, TkaInitFinishResponse,
    TkaSignInfo, TkaSignaturesUsingKeyRequest, TkaSignaturesUsingKeyResponse,
    TkaSubmitSignatureRequest, TkaSubmitSignatureResponse, TkaSyncOfferRequest,
    TkaSyncOfferResponse, TkaSyncSendRequest, TkaSyncSendResponse,
};

/// The node capability that lets a node take part in Tailnet Lock.
pub const CAP_TAILNET_LOCK: &str = "https://tailscale.com/cap/tailnet-lock";

/// The capability version of Tailscale 1.90 (what our reference clients send).
pub const CAPVER_1_90: i64 = 130;

/// Oldest client capability version the server accepts (Tailscale 1.80).
pub const MIN_SUPPORTED_CAPVER: i64 = 113;

#[cfg(test)]
mod tests;
