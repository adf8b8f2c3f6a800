//! WireGuard sessions: the only module that names `boringtun`.
//!
//! [`WgPeers`] owns one `boringtun::noise::Tunn` per peer, the 24-bit receiver
//! index space used to route incoming packets to the right `Tunn`, and the
//! scratch buffers. Everything else in weft talks to it in terms of
//! [`NodePublic`] keys and byte vectors, so swapping the WireGuard
//! implementation (e.g. for gotatun) touches only this file.
//!
//! # Clock
//!
//! boringtun reads the process's monotonic clock internally (handshake retry,
//! rekey, keepalive, cookie and rate-limiter timers) and `SystemTime` for the
//! TAI64N handshake timestamp; it also draws ephemeral keys from the OS RNG.
//! We accept that: the rest of the magicsock core runs purely on the `now` it is
//! given, and merely calls [`WgPeers::update_timers`] on a virtual-time tick.
//! In a simulation that runs much faster than real time the WireGuard timers
//! therefore advance in *real* time: handshakes still complete (they are
//! driven by packets, not timers), rekeys simply do not happen during a short
//! simulated run, and a lost handshake initiation is retried only after five
//! real seconds. Simulations must therefore not drop the first handshake on
//! every path; magicsock sends it over DERP as well as UDP while no direct path
//! is trusted, which makes that hold. boringtun's `mock-instant` feature is
//! deliberately not enabled: features unify across a cargo build and it would
//! freeze WireGuard timers in real-time tests too.

use std::collections::BTreeMap;
use std::net::IpAddr;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use weft_key::{NodePrivate, NodePublic};

/// Largest datagram we ever build or accept (an IP packet plus WireGuard overhead).
pub const MAX_DATAGRAM: usize = 65535 + 32;
/// WireGuard transport overhead: type, receiver index, counter, tag.
pub const DATA_OVERHEAD: usize = 32;

/// Why a WireGuard datagram or packet could not be processed. Cheap and `Copy`:
/// per-packet errors are counted and traced, never fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WgError {
    /// The datagram is not a WireGuard message.
    #[error("not a wireguard packet")]
    Malformed,
    /// No session or peer owns the receiver index.
    #[error("unknown receiver index")]
    UnknownIndex,
    /// A handshake from a key that is not one of our peers.
    #[error("handshake from unknown peer")]
    UnknownPeer,
    /// The caller's buffer cannot hold the result.
    #[error("buffer too small")]
    BufferTooSmall,
    /// The peer has no tunnel (not in the netmap).
    #[error("no wireguard tunnel for peer")]
    NoTunnel,
    /// boringtun rejected the packet (bad MAC, replay, expired session, ...).
    #[error("wireguard rejected packet: {0}")]
    Rejected(&'static str),
}

/// The result of decapsulating one datagram.
#[derive(Debug, Default)]
pub struct Decapsulated {
    /// Datagrams to send back to the same peer (handshake responses,
    /// keepalives, packets that were queued until the session came up).
    pub to_network: Vec<Vec<u8>>,
    /// A decrypted IP packet for the TUN device, with its inner source address.
    pub to_tunnel: Option<(Vec<u8>, IpAddr)>,
}

/// What [`WgPeers::encapsulate_into`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WgOut {
    /// A transport (data) packet of this length.
    Data(usize),
    /// A handshake initiation of this length; the IP packet waits in the tunnel's queue.
    Handshake(usize),
    /// Nothing to send (the packet is queued behind a handshake in flight).
    Queued,
}

/// Transfer statistics of one peer's tunnel.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WgStats {
    /// Time since the current session was established, by boringtun's clock.
    pub since_handshake: Option<std::time::Duration>,
    /// Plaintext bytes sent.
    pub tx_bytes: u64,
    /// Plaintext bytes received.
    pub rx_bytes: u64,
}

struct PeerTunnel {
    tunn: Tunn,
    index: u32,
}

/// All WireGuard tunnels of this node, keyed by peer node key.
pub struct WgPeers {
    secret: StaticSecret,
    public: PublicKey,
    tunnels: BTreeMap<NodePublic, PeerTunnel>,
    by_index: BTreeMap<u32, NodePublic>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for WgPeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgPeers")
            .field("peers", &self.tunnels.len())
            .finish()
    }
}

impl WgPeers {
    /// Tunnels keyed by our node private key (the WireGuard static key).
    pub fn new(node: &NodePrivate) -> Self {
        let secret = StaticSecret::from(node.to_bytes());
        let public = PublicKey::from(&secret);
        Self {
            secret,
            public,
            tunnels: BTreeMap::new(),
            by_index: BTreeMap::new(),
            buf: vec![0; MAX_DATAGRAM],
        }
    }

    /// Whether `peer` has a tunnel.
    pub fn contains(&self, peer: &NodePublic) -> bool {
        self.tunnels.contains_key(peer)
    }

    /// Adds a tunnel for `peer` (no PSK, no persistent keepalive, as Tailscale
    /// configures its peers). `index` must be a free 24-bit value, see [`Self::is_free_index`].
    pub fn add_peer(&mut self, peer: NodePublic, index: u32) {
        if self.tunnels.contains_key(&peer) {
            return;
        }
        let index = index & 0x00ff_ffff;
        let tunn = Tunn::new(
            self.secret.clone(),
            PublicKey::from(peer.to_bytes()),
            None,
            None,
            index,
            None,
        );
        self.by_index.insert(index, peer);
        self.tunnels.insert(peer, PeerTunnel { tunn, index });
    }

    /// Whether a 24-bit index is unused.
    pub fn is_free_index(&self, index: u32) -> bool {
        !self.by_index.contains_key(&(index & 0x00ff_ffff))
    }

    /// Drops the tunnel of `peer` and its sessions.
    pub fn remove_peer(&mut self, peer: &NodePublic) {
        if let Some(t) = self.tunnels.remove(peer) {
            self.by_index.remove(&t.index);
        }
    }

    /// Peers that have tunnels, in key order.
    pub fn peers(&self) -> impl Iterator<Item = &NodePublic> {
        self.tunnels.keys()
    }

    /// Encrypts an IP packet for `peer`. Returns the datagrams to send: the
    /// transport packet, or a handshake initiation while the packet waits in
    /// the tunnel's queue (or nothing if a handshake is already in flight).
    pub fn encapsulate(
        &mut self,
        peer: &NodePublic,
        ip_packet: &[u8],
    ) -> Result<Vec<Vec<u8>>, WgError> {
        let t = self.tunnels.get_mut(peer).ok_or(WgError::NoTunnel)?;
        let need = ip_packet.len() + DATA_OVERHEAD;
        if self.buf.len() < need.max(148) {
            self.buf.resize(need.max(148), 0);
        }
        match t.tunn.encapsulate(ip_packet, &mut self.buf) {
            TunnResult::WriteToNetwork(b) => Ok(vec![b.to_vec()]),
            TunnResult::Done => Ok(Vec::new()),
            TunnResult::Err(e) => Err(rejected(e)),
            TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => Ok(Vec::new()),
        }
    }

    /// Like [`Self::encapsulate`], but writes into `out` without allocating.
    /// `out` must hold `ip_packet.len() + 32` bytes and at least 148.
    pub fn encapsulate_into(
        &mut self,
        peer: &NodePublic,
        ip_packet: &[u8],
        out: &mut [u8],
    ) -> Result<WgOut, WgError> {
        if out.len() < (ip_packet.len() + DATA_OVERHEAD).max(148) {
            return Err(WgError::BufferTooSmall);
        }
        let t = self.tunnels.get_mut(peer).ok_or(WgError::NoTunnel)?;
        match t.tunn.encapsulate(ip_packet, out) {
            TunnResult::WriteToNetwork(b) if b.first() == Some(&4) => Ok(WgOut::Data(b.len())),
            TunnResult::WriteToNetwork(b) => Ok(WgOut::Handshake(b.len())),
            TunnResult::Err(e) => Err(rejected(e)),
            TunnResult::Done
            | TunnResult::WriteToTunnelV4(..)
            | TunnResult::WriteToTunnelV6(..) => Ok(WgOut::Queued),
        }
    }

    /// Decrypts a transport (type 4) datagram from `peer` into `out` without
    /// allocating. Returns the inner packet's length and source address, or
    /// `None` for a keepalive. `out` must be at least as long as `datagram`.
    pub fn decapsulate_data_into(
        &mut self,
        peer: &NodePublic,
        src_ip: Option<IpAddr>,
        datagram: &[u8],
        out: &mut [u8],
    ) -> Result<Option<(usize, IpAddr)>, WgError> {
        if datagram.first() != Some(&4) {
            return Err(WgError::Malformed);
        }
        if out.len() < datagram.len() {
            return Err(WgError::BufferTooSmall);
        }
        let t = self.tunnels.get_mut(peer).ok_or(WgError::NoTunnel)?;
        match t.tunn.decapsulate(src_ip, datagram, out) {
            TunnResult::WriteToTunnelV4(b, src) => Ok(Some((b.len(), IpAddr::V4(src)))),
            TunnResult::WriteToTunnelV6(b, src) => Ok(Some((b.len(), IpAddr::V6(src)))),
            TunnResult::Err(e) => Err(rejected(e)),
            TunnResult::Done | TunnResult::WriteToNetwork(_) => Ok(None),
        }
    }

    /// Which peer a datagram belongs to, without decrypting it: by receiver
    /// index for responses, cookies and data; by the initiator's static key
    /// (one DH) for handshake initiations.
    pub fn peer_of(&self, datagram: &[u8]) -> Result<NodePublic, WgError> {
        let packet = Tunn::parse_incoming_packet(datagram).map_err(|_| WgError::Malformed)?;
        let receiver = match packet {
            Packet::HandshakeInit(ref init) => {
                let half = parse_handshake_anon(&self.secret, &self.public, init)
                    .map_err(|_| WgError::UnknownPeer)?;
                let key = NodePublic::from_bytes(half.peer_static_public);
                return if self.tunnels.contains_key(&key) {
                    Ok(key)
                } else {
                    Err(WgError::UnknownPeer)
                };
            }
            Packet::HandshakeResponse(ref r) => r.receiver_idx,
            Packet::PacketCookieReply(ref c) => c.receiver_idx,
            Packet::PacketData(ref d) => d.receiver_idx,
        };
        self.by_index
            .get(&(receiver >> 8))
            .copied()
            .ok_or(WgError::UnknownIndex)
    }

    /// Decrypts a datagram from `peer` (found with [`Self::peer_of`]).
    /// `src_ip` is the outer source address, used only by the cookie mechanism.
    pub fn decapsulate(
        &mut self,
        peer: &NodePublic,
        src_ip: Option<IpAddr>,
        datagram: &[u8],
    ) -> Result<Decapsulated, WgError> {
        let t = self.tunnels.get_mut(peer).ok_or(WgError::NoTunnel)?;
        if self.buf.len() < datagram.len().max(148) {
            self.buf.resize(datagram.len().max(148), 0);
        }
        let mut out = Decapsulated::default();
        match t.tunn.decapsulate(src_ip, datagram, &mut self.buf) {
            TunnResult::Done => {}
            TunnResult::Err(e) => return Err(rejected(e)),
            TunnResult::WriteToNetwork(b) => {
                out.to_network.push(b.to_vec());
                // A handshake just completed: flush what waited for it.
                while let TunnResult::WriteToNetwork(b) =
                    t.tunn.decapsulate(None, &[], &mut self.buf)
                {
                    out.to_network.push(b.to_vec());
                }
            }
            TunnResult::WriteToTunnelV4(b, src) => {
                out.to_tunnel = Some((b.to_vec(), IpAddr::V4(src)))
            }
            TunnResult::WriteToTunnelV6(b, src) => {
                out.to_tunnel = Some((b.to_vec(), IpAddr::V6(src)))
            }
        }
        Ok(out)
    }

    /// Runs every tunnel's timers (handshake retries, rekeys, passive
    /// keepalives). Returns datagrams to send, per peer.
    pub fn update_timers(&mut self) -> Vec<(NodePublic, Vec<u8>)> {
        let mut out = Vec::new();
        for (key, t) in &mut self.tunnels {
            match t.tunn.update_timers(&mut self.buf) {
                TunnResult::WriteToNetwork(b) => out.push((*key, b.to_vec())),
                TunnResult::Err(WireGuardError::ConnectionExpired) | TunnResult::Done => {}
                TunnResult::Err(e) => {
                    tracing::trace!(peer = %key.short(), ?e, "wireguard timer error")
                }
                TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {}
            }
        }
        out
    }

    /// Transfer statistics of `peer`'s tunnel.
    pub fn stats(&self, peer: &NodePublic) -> Option<WgStats> {
        let t = self.tunnels.get(peer)?;
        let (since, tx, rx, _, _) = t.tunn.stats();
        Some(WgStats {
            since_handshake: since,
            tx_bytes: tx as u64,
            rx_bytes: rx as u64,
        })
    }
}

fn rejected(e: WireGuardError) -> WgError {
    WgError::Rejected(match e {
        WireGuardError::DestinationBufferTooSmall => "buffer too small",
        WireGuardError::IncorrectPacketLength => "incorrect length",
        WireGuardError::UnexpectedPacket => "unexpected packet",
        WireGuardError::WrongPacketType => "wrong packet type",
        WireGuardError::WrongIndex => "wrong index",
        WireGuardError::WrongKey => "wrong key",
        WireGuardError::InvalidTai64nTimestamp => "invalid timestamp",
        WireGuardError::WrongTai64nTimestamp => "replayed timestamp",
        WireGuardError::InvalidMac => "invalid mac",
        WireGuardError::InvalidAeadTag => "invalid aead tag",
        WireGuardError::InvalidCounter => "invalid counter",
        WireGuardError::DuplicateCounter => "duplicate counter",
        WireGuardError::InvalidPacket => "invalid packet",
        WireGuardError::NoCurrentSession => "no current session",
        WireGuardError::LockFailed => "lock failed",
        WireGuardError::ConnectionExpired => "connection expired",
        WireGuardError::UnderLoad => "under load",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_packet(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let len = 20 + payload.len();
        let mut p = vec![
            0x45,
            0,
            (len >> 8) as u8,
            len as u8,
            0,
            0,
            0,
            0,
            64,
            17,
            0,
            0,
        ];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn two_tunnels_handshake_and_carry_a_packet_both_ways() {
        let a_key = NodePrivate::from_bytes([1; 32]);
        let b_key = NodePrivate::from_bytes([2; 32]);
        let mut a = WgPeers::new(&a_key);
        let mut b = WgPeers::new(&b_key);
        a.add_peer(b_key.public(), 7);
        b.add_peer(a_key.public(), 9);

        let pkt = ipv4_packet([100, 64, 0, 1], [100, 64, 0, 2], b"hello");
        let init = a.encapsulate(&b_key.public(), &pkt).expect("encap");
        assert_eq!(init.len(), 1);
        assert_eq!(init[0].len(), 148);
        assert_eq!(b.peer_of(&init[0]), Ok(a_key.public()));
        let resp = b
            .decapsulate(&a_key.public(), None, &init[0])
            .expect("init");
        assert_eq!(resp.to_network.len(), 1);
        assert_eq!(a.peer_of(&resp.to_network[0]), Ok(b_key.public()));
        let flushed = a
            .decapsulate(&b_key.public(), None, &resp.to_network[0])
            .expect("resp");
        // keepalive + the queued packet
        assert_eq!(flushed.to_network.len(), 2);
        let mut got = Vec::new();
        for d in &flushed.to_network {
            assert_eq!(b.peer_of(d), Ok(a_key.public()));
            if let Some((p, _)) = b
                .decapsulate(&a_key.public(), None, d)
                .expect("data")
                .to_tunnel
            {
                got.push(p);
            }
        }
        assert_eq!(got, vec![pkt]);

        let back = ipv4_packet([100, 64, 0, 2], [100, 64, 0, 1], b"world");
        let d = b.encapsulate(&a_key.public(), &back).expect("encap");
        let (p, src) = a
            .decapsulate(&b_key.public(), None, &d[0])
            .expect("data")
            .to_tunnel
            .expect("packet");
        assert_eq!(p, back);
        assert_eq!(src, IpAddr::from([100, 64, 0, 2]));
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        let a = WgPeers::new(&NodePrivate::from_bytes([1; 32]));
        assert_eq!(a.peer_of(&[]), Err(WgError::Malformed));
        assert_eq!(
            a.peer_of(&[
                4, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                0, 0, 0, 0
            ]),
            Err(WgError::UnknownIndex)
        );
        let mut init = vec![1, 0, 0, 0];
        init.resize(148, 0xaa);
        assert_eq!(a.peer_of(&init), Err(WgError::UnknownPeer));
    }
}
