//! The DERP server's forwarding core.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use weft_key::NodePublic;

use super::codec::{looks_like_disco, Frame, PeerGoneReason, PeerPresentFlags};

/// A connection handle chosen by the driver (unique for the server's lifetime).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// A mesh peer server (an outbound mesh client connection), chosen by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MeshPeer(pub u32);

/// What the driver knows about a connection when it registers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// Remote TCP address.
    pub remote: SocketAddr,
    /// The client presented the right mesh key.
    pub is_mesh_peer: bool,
    /// The client said it is a prober.
    pub is_prober: bool,
    /// The client answers pings.
    pub can_ack_pings: bool,
}

/// Why the core wants a connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A mesh peer sent ClosePeer for this key.
    ClosePeer,
    /// A frame needing the mesh key came from a non-mesh client.
    NotMeshPeer,
    /// A frame that must come from the client's own side did not.
    Unexpected,
}

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// No local client and no mesh route for the destination.
    UnknownDest,
    /// ForwardPacket for a key that is not connected here.
    UnknownDestOnFwd,
}

/// Side effects the driver must carry out, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Queue `frame` for writing to `conn` (the driver may drop it under load).
    Send {
        /// Target connection.
        conn: ConnId,
        /// Frame to write.
        frame: Frame,
    },
    /// Send ForwardPacket over the mesh connection to `peer`.
    Forward {
        /// Mesh peer holding the destination.
        peer: MeshPeer,
        /// Original sender.
        src: NodePublic,
        /// Destination key.
        dst: NodePublic,
        /// Packet bytes.
        packet: Bytes,
    },
    /// Close `conn`; the driver then calls [`ServerCore::handle_disconnect`].
    Close {
        /// Connection to close.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
}

/// Counters kept by the core.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Packets delivered to a local connection.
    pub packets_delivered: u64,
    /// Packets handed to a mesh peer.
    pub packets_forwarded: u64,
    /// Packets dropped: unknown destination.
    pub dropped_unknown: u64,
    /// Forwarded packets dropped: destination not connected here.
    pub dropped_unknown_on_fwd: u64,
    /// Current registered connections.
    pub connections: u64,
    /// Current distinct keys.
    pub clients: u64,
    /// Connections that arrived while their key was already connected.
    pub dup_connections: u64,
}

const NOT_HERE_RATE: Duration = Duration::from_secs(1);
const NOT_HERE_BURST: u32 = 3;

struct Conn {
    key: NodePublic,
    info: ConnInfo,
    preferred: bool,
    watcher: bool,
    /// Token bucket for PeerGone(NotHere) replies.
    not_here_tokens: u32,
    not_here_refill: Option<Instant>,
}

/// The connections of one key; `conns` in connect order, `active` gets packets.
struct KeyConns {
    conns: Vec<ConnId>,
    active: ConnId,
}

/// Sans-IO DERP server core: connection registry and forwarding decisions.
///
/// Call `handle_*` for each input and drain [`ServerCore::poll_command`] after
/// each call. Handshake and admission happen in the driver, which then calls
/// [`ServerCore::handle_connect`].
#[derive(Default)]
pub struct ServerCore {
    conns: BTreeMap<ConnId, Conn>,
    by_key: BTreeMap<NodePublic, KeyConns>,
    watchers: BTreeSet<ConnId>,
    /// src key → dst keys it sent to, for PeerGone(Disconnected) fan-out.
    sent_to: BTreeMap<NodePublic, BTreeSet<NodePublic>>,
    /// key → mesh peers that have it, in preference (insertion) order.
    mesh_routes: BTreeMap<NodePublic, Vec<MeshPeer>>,
    commands: VecDeque<Command>,
    stats: ServerStats,
}

impl ServerCore {
    /// An empty server core.
    pub fn new() -> Self {
        Self::default()
    }

    /// Next side effect to perform.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// Counters.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// True if `key` has at least one local connection.
    pub fn is_connected(&self, key: &NodePublic) -> bool {
        self.by_key.contains_key(key)
    }

    /// The key of a registered connection.
    pub fn conn_key(&self, conn: ConnId) -> Option<NodePublic> {
        self.conns.get(&conn).map(|c| c.key)
    }

    /// The connection that currently receives packets for `key`.
    pub fn active_conn(&self, key: &NodePublic) -> Option<ConnId> {
        self.by_key.get(key).map(|k| k.active)
    }

    /// Whether a connection said this server is its home region.
    pub fn is_preferred(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| c.preferred)
    }

    /// A client finished the handshake and was admitted.
    pub fn handle_connect(&mut self, conn: ConnId, key: NodePublic, info: ConnInfo) {
        let flags = if info.is_mesh_peer {
            PeerPresentFlags::IS_MESH_PEER
        } else if info.is_prober {
            PeerPresentFlags::IS_PROBER
        } else {
            PeerPresentFlags::IS_REGULAR
        };
        let remote = info.remote;
        self.conns.insert(
            conn,
            Conn {
                key,
                info,
                preferred: false,
                watcher: false,
                not_here_tokens: NOT_HERE_BURST,
                not_here_refill: None,
            },
        );
        match self.by_key.get_mut(&key) {
            Some(k) => {
                k.conns.push(conn);
                k.active = conn;
                self.stats.dup_connections += 1;
            }
            None => {
                self.by_key.insert(
                    key,
                    KeyConns {
                        conns: vec![conn],
                        active: conn,
                    },
                );
            }
        }
        self.stats.connections = self.conns.len() as u64;
        self.stats.clients = self.by_key.len() as u64;
        let present = Frame::PeerPresent {
            key,
            addr: Some(remote),
            flags: Some(flags),
        };
        for w in &self.watchers {
            self.commands.push_back(Command::Send {
                conn: *w,
                frame: present.clone(),
            });
        }
    }

    /// A registered connection went away (EOF, error, or after a Close command).
    pub fn handle_disconnect(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.watchers.remove(&conn);
        let key = c.key;
        let mut last = false;
        if let Some(k) = self.by_key.get_mut(&key) {
            k.conns.retain(|x| *x != conn);
            match k.conns.last() {
                None => last = true,
                Some(newest) => {
                    if k.active == conn {
                        k.active = *newest;
                    }
                }
            }
        }
        if last {
            self.by_key.remove(&key);
            // Everyone who got packets from `key` learns it is gone.
            if let Some(dsts) = self.sent_to.remove(&key) {
                for dst in dsts {
                    if let Some(dk) = self.by_key.get(&dst) {
                        self.commands.push_back(Command::Send {
                            conn: dk.active,
                            frame: Frame::PeerGone {
                                key,
                                reason: PeerGoneReason::Disconnected,
                            },
                        });
                    }
                }
            }
            for w in &self.watchers {
                self.commands.push_back(Command::Send {
                    conn: *w,
                    frame: Frame::PeerGone {
                        key,
                        reason: PeerGoneReason::Disconnected,
                    },
                });
            }
        }
        self.stats.connections = self.conns.len() as u64;
        self.stats.clients = self.by_key.len() as u64;
    }

    /// A frame arrived from a registered connection.
    pub fn handle_frame(&mut self, conn: ConnId, frame: Frame, now: Instant) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let key = c.key;
        let is_mesh = c.info.is_mesh_peer;
        // "Last writer is active" among duplicates.
        if let Some(k) = self.by_key.get_mut(&key) {
            if k.conns.len() > 1 && k.active != conn {
                k.active = conn;
            }
        }
        match frame {
            Frame::SendPacket { dst, packet } => self.send_packet(conn, key, dst, packet, now),
            Frame::ForwardPacket { src, dst, packet } => {
                if !is_mesh {
                    self.close(conn, CloseReason::NotMeshPeer);
                    return;
                }
                self.forward_packet(conn, src, dst, packet, now);
            }
            Frame::NotePreferred { preferred } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.preferred = preferred;
                }
            }
            Frame::WatchConns => {
                if !is_mesh {
                    self.close(conn, CloseReason::NotMeshPeer);
                    return;
                }
                self.add_watcher(conn);
            }
            Frame::ClosePeer { key: target } => {
                if !is_mesh {
                    self.close(conn, CloseReason::NotMeshPeer);
                    return;
                }
                if let Some(k) = self.by_key.get(&target) {
                    for c in k.conns.clone() {
                        self.close(c, CloseReason::ClosePeer);
                    }
                }
            }
            Frame::Ping { data } => self.commands.push_back(Command::Send {
                conn,
                frame: Frame::Pong { data },
            }),
            Frame::ClientInfo { .. } | Frame::ServerKey { .. } | Frame::ServerInfo { .. } => {
                self.close(conn, CloseReason::Unexpected);
            }
            // Pong, KeepAlive and unknown or server-only frames are ignored.
            _ => {}
        }
    }

    /// Mesh: peer `peer` reports that `key` is connected to it.
    pub fn handle_mesh_peer_present(&mut self, peer: MeshPeer, key: NodePublic) {
        let routes = self.mesh_routes.entry(key).or_default();
        if !routes.contains(&peer) {
            routes.push(peer);
        }
    }

    /// Mesh: peer `peer` reports that `key` left it.
    pub fn handle_mesh_peer_gone(&mut self, peer: MeshPeer, key: NodePublic) {
        if let Some(routes) = self.mesh_routes.get_mut(&key) {
            routes.retain(|p| *p != peer);
            if routes.is_empty() {
                self.mesh_routes.remove(&key);
            }
        }
    }

    /// Mesh: the connection to `peer` broke; forget every route learned from it.
    pub fn handle_mesh_peer_down(&mut self, peer: MeshPeer) {
        self.mesh_routes.retain(|_, routes| {
            routes.retain(|p| *p != peer);
            !routes.is_empty()
        });
    }

    /// The mesh peer that would get packets for `key`, if any.
    pub fn mesh_route(&self, key: &NodePublic) -> Option<MeshPeer> {
        self.mesh_routes.get(key).and_then(|r| r.first().copied())
    }

    fn close(&mut self, conn: ConnId, reason: CloseReason) {
        self.commands.push_back(Command::Close { conn, reason });
    }

    fn add_watcher(&mut self, conn: ConnId) {
        if !self.watchers.insert(conn) {
            return;
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.watcher = true;
        }
        for (key, k) in &self.by_key {
            let Some(c) = self.conns.get(&k.active) else {
                continue;
            };
            let flags = if c.info.is_mesh_peer {
                PeerPresentFlags::IS_MESH_PEER
            } else if c.info.is_prober {
                PeerPresentFlags::IS_PROBER
            } else {
                PeerPresentFlags::IS_REGULAR
            };
            self.commands.push_back(Command::Send {
                conn,
                frame: Frame::PeerPresent {
                    key: *key,
                    addr: Some(c.info.remote),
                    flags: Some(flags),
                },
            });
        }
    }

    fn send_packet(
        &mut self,
        from: ConnId,
        src: NodePublic,
        dst: NodePublic,
        packet: Bytes,
        now: Instant,
    ) {
        if let Some(k) = self.by_key.get(&dst) {
            let to = k.active;
            self.deliver(to, src, dst, packet);
            return;
        }
        if let Some(peer) = self.mesh_route(&dst) {
            self.stats.packets_forwarded += 1;
            self.commands.push_back(Command::Forward {
                peer,
                src,
                dst,
                packet,
            });
            return;
        }
        self.drop_packet(from, dst, &packet, DropReason::UnknownDest, now);
    }

    fn forward_packet(
        &mut self,
        from: ConnId,
        src: NodePublic,
        dst: NodePublic,
        packet: Bytes,
        now: Instant,
    ) {
        // One hop only: forwarded packets are never forwarded again.
        let Some(k) = self.by_key.get(&dst) else {
            self.drop_packet(from, dst, &packet, DropReason::UnknownDestOnFwd, now);
            return;
        };
        let to = k.active;
        self.deliver(to, src, dst, packet);
    }

    fn deliver(&mut self, to: ConnId, src: NodePublic, dst: NodePublic, packet: Bytes) {
        self.stats.packets_delivered += 1;
        self.sent_to.entry(src).or_default().insert(dst);
        self.commands.push_back(Command::Send {
            conn: to,
            frame: Frame::RecvPacket { src, packet },
        });
    }

    fn drop_packet(
        &mut self,
        from: ConnId,
        dst: NodePublic,
        packet: &[u8],
        reason: DropReason,
        now: Instant,
    ) {
        match reason {
            DropReason::UnknownDest => self.stats.dropped_unknown += 1,
            DropReason::UnknownDestOnFwd => self.stats.dropped_unknown_on_fwd += 1,
        }
        if !looks_like_disco(packet) {
            return;
        }
        let Some(c) = self.conns.get_mut(&from) else {
            return;
        };
        // Refill one token per second since the last refill point.
        match c.not_here_refill {
            None => c.not_here_refill = Some(now),
            Some(at) => {
                let elapsed = now.saturating_duration_since(at);
                let add = (elapsed.as_millis() / NOT_HERE_RATE.as_millis()) as u32;
                if add > 0 {
                    c.not_here_tokens = (c.not_here_tokens + add).min(NOT_HERE_BURST);
                    c.not_here_refill = Some(at + NOT_HERE_RATE * add);
                }
            }
        }
        if c.not_here_tokens == 0 {
            return;
        }
        c.not_here_tokens -= 1;
        self.commands.push_back(Command::Send {
            conn: from,
            frame: Frame::PeerGone {
                key: dst,
                reason: PeerGoneReason::NotHere,
            },
        });
    }
}
