//! Layer 1 (pure): the netmap a coordination server sends each node, computed from a
//! [`Snapshot`] of the tailnet.
//!
//! - [`full_map`] builds the first message of a map stream for one node: self `Node`
//!   first, peers sorted by ID, user profiles, DERP map, packet filter, DNS config. It also
//!   returns the [`MapSession`] that remembers what the stream was told.
//! - [`Delta::prepare`] turns a batch of [`Change`]s into per-session updates;
//!   [`Delta::for_session`] yields the message for one stream (`PeersChanged`,
//!   `PeersRemoved`, `PeersChangedPatch`, or a resync), or `None` when nothing concerns it.
//!   Peer objects are built once per batch and shared by every session.
//!
//! Visibility and packet filters come from a [`PolicyView`] in the snapshot
//! ([`AllowAll`] by default). Wall-clock time is passed in; nothing here reads a clock.
#![warn(missing_docs)]

mod build;
mod delta;
mod snapshot;

pub use build::{
    elect_primaries, full_map, peer_node, self_node, MapError, TAGGED_DEVICES_USER_ID,
};
pub use delta::{Change, Delta, MapSession, PatchFields};
pub use snapshot::{AllowAll, DnsSettings, NodeState, PolicyView, Snapshot, UserInfo};

#[cfg(test)]
mod tests;
