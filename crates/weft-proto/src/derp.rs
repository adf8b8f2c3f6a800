//! Sans-IO DERP (Designated Encrypted Relay for Packets), protocol version 2.
//!
//! Three parts:
//! - [`Frame`] and [`Decoder`]: the `type u8 | len u32 BE | payload` codec for
//!   every frame type; the decoder takes arbitrary chunks and enforces limits.
//! - [`ServerCore`]: who is connected, forwarding decisions, peer gone/present
//!   notifications, watchers, mesh routes and duplicate connections. Feed it
//!   with `handle_*` calls and drain [`ServerCore::poll_command`] after each.
//! - [`ClientCore`]: the client handshake (server key, sealed client info),
//!   packet send/receive and ping/read-deadline timers. Feed bytes with
//!   [`ClientCore::handle_input`]; drain `poll_transmit`, `poll_event`, and
//!   sleep until `poll_timeout`.
//!
//! The handshake helpers used by a server driver ([`server_key_frame`],
//! [`open_client_info`], [`server_info_frame`]) are free functions so that
//! admission (which may need IO) stays outside the core.

mod client;
mod codec;
mod server;

pub use client::{ClientConfig, ClientCore, ClientError, ClientEvent};
pub use codec::{
    looks_like_disco, open_client_info, seal_client_info, server_info_frame, server_key_frame,
    ClientInfo, DecodeError, Decoder, Frame, FrameType, HandshakeError, PeerGoneReason,
    PeerPresentFlags, ServerInfo, CLIENT_MAX_FRAME_LEN, FRAME_HEADER_LEN, KEEP_ALIVE, KEY_LEN,
    MAGIC, MAX_CLIENT_INFO_LEN, MAX_PACKET_SIZE, NONCE_LEN, PROTOCOL_VERSION, SERVER_MAX_FRAME_LEN,
};
pub use server::{
    CloseReason, Command, ConnId, ConnInfo, DropReason, MeshPeer, ServerCore, ServerStats,
};

#[cfg(test)]
mod tests;
