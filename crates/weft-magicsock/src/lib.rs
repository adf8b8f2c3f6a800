//! Layer 1: weft's data-plane core, after Tailscale's magicsock. Pure, sans-IO.
//!
//! One [`Magicsock`] per node owns the WireGuard session with every peer
//! (through [`wg`], the only code that names boringtun), disco path discovery
//! (ping / pong / call-me-maybe, sealed with disco keys), the choice between a
//! direct UDP path and DERP, and own-endpoint discovery (local addresses and
//! STUN). It never touches sockets, clocks or a global random source.
//!
//! # Driving contract
//!
//! The driver (weft-agent) owns one UDP socket, the DERP client connections
//! and the TUN device, and one task that owns the `Magicsock`:
//!
//! 1. Build it with [`Magicsock::new`]`(config, seed, now)`, then give it the
//!    DERP map ([`Magicsock::set_derp_map`]), the local socket addresses
//!    ([`Magicsock::set_own_endpoints`]) and the netmap peers
//!    ([`Magicsock::set_peers`], again on every netmap change).
//! 2. Feed inputs, `now` last:
//!    - every UDP datagram: [`Magicsock::handle_datagram`] (WireGuard, disco
//!      and STUN replies all share the socket);
//!    - every DERP `RecvPacket`: [`Magicsock::handle_derp_packet`];
//!    - every IP packet read from TUN: [`Magicsock::handle_ip_packet`];
//!    - when the deadline from [`Magicsock::poll_timeout`] passes:
//!      [`Magicsock::handle_timeout`] (spurious calls are harmless).
//! 3. After **every** input, drain all outputs until they return `None`:
//!    [`Magicsock::poll_transmit`] (send to a UDP address or through a DERP
//!    region to a peer; dial the region if needed), [`Magicsock::poll_ip_packet`]
//!    (write to TUN), [`Magicsock::poll_event`] (path changes, own endpoints to
//!    report to control, home region changes, netcheck reports, pong results
//!    for `weft ping`), then re-arm one timer from [`Magicsock::poll_timeout`].
//!
//! Per-packet errors ([`RecvError`], [`SendError`]) are cheap values to count
//! and trace; they never invalidate the state machine.
//!
//! # Time and randomness
//!
//! All magicsock logic runs on the `now` it is given and on randomness drawn
//! from the seed. The WireGuard sessions inside [`wg`] are the exception:
//! boringtun reads the process clock and the OS RNG internally; see the [`wg`]
//! module docs for what that means in simulations.

#![warn(missing_docs)]

pub mod wg;

mod rng;
mod timer;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use weft_key::{DiscoPrivate, DiscoPublic, NodePrivate, NodePublic};
use weft_proto::disco::{self, CallMeMaybe, DiscoError, Message, Ping, Pong, TxId};
use weft_proto::stun;

use crate::rng::Rng;
use crate::timer::{Timer, TimerTable};
use crate::wg::{WgError, WgOut, WgPeers};

pub use crate::wg::WgStats;

/// A DERP region id (`127.3.3.40:<id>` in Tailscale's fake-address form).
pub type RegionId = u16;

/// The magic IP that stands for "via DERP" in addresses (port = region).
pub const DERP_MAGIC_IP: Ipv4Addr = Ipv4Addr::new(127, 3, 3, 40);
/// Disco heartbeat interval while a peer session is active.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
/// How long a pong keeps a direct path trusted.
pub const TRUST_UDP_ADDR_DURATION: Duration = Duration::from_millis(6500);
/// A peer with no outbound data for this long is idle: heartbeats stop.
pub const SESSION_ACTIVE_TIMEOUT: Duration = Duration::from_secs(45);
/// Minimum spacing of full ping rounds when the best path is slow.
pub const UPGRADE_INTERVAL: Duration = Duration::from_secs(60);
/// A direct path at least this fast is not worth improving.
pub const GOOD_ENOUGH_LATENCY: Duration = Duration::from_millis(5);
/// Minimum spacing of discovery pings to one endpoint.
pub const DISCO_PING_INTERVAL: Duration = Duration::from_secs(5);
/// A ping without a pong after this long has failed.
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Candidate endpoints learned from incoming pings expire this long after the last one.
pub const PING_LEARNED_LIFETIME: Duration = Duration::from_secs(45);
/// A DERP region a peer was heard on within this long is used to reply to it.
pub const DERP_ROUTE_FRESH: Duration = Duration::from_secs(60);
/// How often WireGuard's timers are run.
pub const WG_TICK: Duration = Duration::from_millis(250);
/// How long a STUN round waits for replies.
pub const STUN_ROUND_TIMEOUT: Duration = Duration::from_secs(3);

/// Static configuration of a node's data plane.
pub struct Config {
    /// The node key: WireGuard static key and DERP identity.
    pub node_private: NodePrivate,
    /// The disco key, fresh for every process start.
    pub disco_private: DiscoPrivate,
}

/// One peer, as the netmap describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// `Node.Key`: the peer's WireGuard key.
    pub node_key: NodePublic,
    /// `Node.DiscoKey`.
    pub disco_key: DiscoPublic,
    /// `Node.HomeDERP` (None for 0).
    pub home_derp: Option<RegionId>,
    /// `Node.Endpoints`: candidate UDP addresses.
    pub endpoints: Vec<SocketAddr>,
    /// `Node.AllowedIPs`: inner addresses routed to and accepted from the peer.
    pub allowed_ips: Vec<IpNet>,
}

/// A DERP region as far as the data plane cares: where to send STUN probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerpRegion {
    /// Region id.
    pub id: RegionId,
    /// STUN server addresses of the region's nodes (empty: not probed).
    pub stun: Vec<SocketAddr>,
}

/// Where a [`Transmit`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Destination {
    /// Out of the UDP socket to this address.
    Udp(SocketAddr),
    /// Through DERP region `region` (SendPacket) to node `peer`.
    Derp {
        /// Region to send through.
        region: RegionId,
        /// Destination node key.
        peer: NodePublic,
    },
}

/// A datagram to send.
#[derive(Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub dst: Destination,
    /// The bytes.
    pub payload: Vec<u8>,
}

impl fmt::Debug for Transmit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transmit")
            .field("dst", &self.dst)
            .field("len", &self.payload.len())
            .finish()
    }
}

/// How packets to a peer currently travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// No usable path (no trusted UDP address, no DERP region).
    None,
    /// A trusted direct UDP path.
    Direct(SocketAddr),
    /// Relayed through a DERP region.
    Derp(RegionId),
}

/// How an own endpoint was learned (`tailcfg.EndpointType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EndpointKind {
    /// A local interface address with the socket's port (type 1).
    Local = 1,
    /// Seen by a STUN server (type 2).
    Stun = 2,
}

/// One of our own candidate endpoints, to report to control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// The address.
    pub addr: SocketAddr,
    /// Where it came from.
    pub kind: EndpointKind,
}

/// Result of a STUN round (the UDP half of netcheck).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetReport {
    /// Whether any STUN reply came back.
    pub udp: bool,
    /// Our mapped address as seen by the fastest STUN server.
    pub global_v4: Option<SocketAddr>,
    /// Whether different STUN servers saw different mapped addresses ("hard NAT").
    pub mapping_varies_by_dest_ip: Option<bool>,
    /// Best STUN round trip per region.
    pub region_latency: BTreeMap<RegionId, Duration>,
    /// The home region chosen after this round.
    pub preferred_derp: Option<RegionId>,
}

/// Something the driver should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The path to `peer` changed.
    PathChanged {
        /// The peer.
        peer: NodePublic,
        /// The new path.
        path: Path,
    },
    /// Our candidate endpoints changed; report them to control.
    EndpointsChanged(Vec<Endpoint>),
    /// Our home DERP region changed: connect there, send NotePreferred.
    HomeDerpChanged(RegionId),
    /// A STUN round finished.
    NetReport(NetReport),
    /// A pong for a ping started with [`Magicsock::ping`].
    Pong {
        /// Who answered.
        peer: NodePublic,
        /// Which way the ping went: `Direct(addr)` or `Derp(region)`.
        via: Path,
        /// Round-trip time.
        latency: Duration,
        /// Our address as the peer saw it.
        src: SocketAddr,
    },
}

/// Per-packet receive errors: count and trace them, then carry on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// A STUN reply that matches no probe in flight.
    #[error("unsolicited stun packet")]
    UnsolicitedStun,
    /// A STUN packet that is not a well-formed binding response.
    #[error(transparent)]
    Stun(#[from] stun::StunError),
    /// A disco packet from a key that is not in the netmap.
    #[error("disco from unknown sender")]
    UnknownDiscoSender,
    /// A disco packet that failed to open or parse.
    #[error(transparent)]
    Disco(#[from] DiscoError),
    /// A call-me-maybe that did not arrive via DERP.
    #[error("call-me-maybe outside derp")]
    CallMeMaybeNotViaDerp,
    /// A WireGuard packet that failed.
    #[error(transparent)]
    Wg(#[from] WgError),
    /// A DERP packet whose WireGuard identity is not its DERP source.
    #[error("derp source does not match wireguard peer")]
    DerpSourceMismatch,
    /// A decrypted packet whose inner source is outside the peer's allowed IPs.
    #[error("inner source {0} not allowed for peer")]
    SourceNotAllowed(IpAddr),
}

/// Errors sending an IP packet from TUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Not an IPv4 or IPv6 packet.
    #[error("not an ip packet")]
    NotIp,
    /// No peer's allowed IPs contain the destination.
    #[error("no peer routes {0}")]
    NoRoute(IpAddr),
    /// The peer has neither a UDP path nor a DERP region.
    #[error("no udp or derp path to peer")]
    NoPath,
    /// The peer is not in the netmap.
    #[error("unknown peer")]
    UnknownPeer,
    /// WireGuard refused the packet.
    #[error(transparent)]
    Wg(#[from] WgError),
}

/// Status of one peer, for `weft status`.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStatus {
    /// The peer.
    pub node_key: NodePublic,
    /// Current path.
    pub path: Path,
    /// Latency of the best direct path, if any.
    pub latency: Option<Duration>,
    /// Candidate endpoints currently known.
    pub candidates: Vec<SocketAddr>,
    /// WireGuard counters.
    pub wg: WgStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PingTo {
    Udp(SocketAddr),
    Derp(RegionId),
}

#[derive(Debug, Clone, Copy)]
struct SentPing {
    to: PingTo,
    at: Instant,
    cli: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct Candidate {
    last_ping: Option<Instant>,
    /// Transaction id of the last ping received from this address.
    last_rx_tx: Option<TxId>,
    from_netmap: bool,
    from_cmm: bool,
    learned_until: Option<Instant>,
}

impl Candidate {
    fn keep(&self, now: Instant) -> bool {
        self.from_netmap || self.from_cmm || self.learned_until.is_some_and(|t| t > now)
    }
}

#[derive(Debug, Clone, Copy)]
struct BestAddr {
    addr: SocketAddr,
    latency: Duration,
}

#[derive(Debug)]
struct PeerState {
    cfg: PeerConfig,
    /// The DERP region this peer was last heard on, and when.
    derp_route: Option<(RegionId, Instant)>,
    candidates: BTreeMap<SocketAddr, Candidate>,
    best: Option<BestAddr>,
    trust_until: Option<Instant>,
    sent_pings: BTreeMap<TxId, SentPing>,
    last_send_ext: Option<Instant>,
    last_full_ping: Option<Instant>,
    heartbeat_on: bool,
    reported: Path,
}

impl PeerState {
    fn trusted(&self, now: Instant) -> bool {
        self.best.is_some() && self.trust_until.is_some_and(|t| now < t)
    }

    /// Where to relay to this peer: the region we recently heard it on (a
    /// connection we already have), else its home region, else any region it
    /// was ever heard on.
    fn derp_region(&self, now: Instant) -> Option<RegionId> {
        match self.derp_route {
            Some((r, at)) if now.saturating_duration_since(at) < DERP_ROUTE_FRESH => Some(r),
            route => self.cfg.home_derp.or(route.map(|(r, _)| r)),
        }
    }

    fn path(&self, now: Instant) -> Path {
        match (self.best, self.trusted(now), self.derp_region(now)) {
            (Some(b), true, _) => Path::Direct(b.addr),
            (_, _, Some(r)) => Path::Derp(r),
            _ => Path::None,
        }
    }

    /// Forgets everything learned through disco (the peer restarted).
    fn reset_paths(&mut self) {
        self.best = None;
        self.trust_until = None;
        self.sent_pings.clear();
        self.candidates.retain(|_, c| c.from_netmap);
        for c in self.candidates.values_mut() {
            c.last_ping = None;
        }
        self.last_full_ping = None;
    }

    fn set_netmap_endpoints(&mut self, endpoints: &[SocketAddr], now: Instant) {
        for c in self.candidates.values_mut() {
            c.from_netmap = false;
        }
        for ep in endpoints {
            self.candidates.entry(*ep).or_default().from_netmap = true;
        }
        self.candidates.retain(|_, c| c.keep(now));
    }
}

#[derive(Debug, Clone, Copy)]
struct StunProbe {
    region: RegionId,
    at: Instant,
}

/// The data-plane state machine. See the crate docs for how to drive it.
pub struct Magicsock {
    node_public: NodePublic,
    disco_private: DiscoPrivate,
    disco_public: DiscoPublic,
    wg: WgPeers,
    peers: BTreeMap<NodePublic, PeerState>,
    host_routes: BTreeMap<IpAddr, NodePublic>,
    regions: BTreeMap<RegionId, DerpRegion>,
    home: Option<RegionId>,
    local_endpoints: Vec<SocketAddr>,
    stun_endpoints: Vec<SocketAddr>,
    reported_endpoints: Vec<Endpoint>,
    stun_inflight: BTreeMap<stun::TxId, StunProbe>,
    stun_round: BTreeMap<RegionId, (Duration, SocketAddr)>,
    timers: TimerTable,
    rng: Rng,
    transmits: VecDeque<Transmit>,
    ip_out: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
}

impl fmt::Debug for Magicsock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Magicsock")
            .field("node", &self.node_public.short())
            .field("peers", &self.peers.len())
            .field("home", &self.home)
            .finish()
    }
}

impl Magicsock {
    /// A node with no peers yet. `seed` drives every random choice the core makes.
    pub fn new(config: Config, seed: [u8; 32], now: Instant) -> Self {
        let mut timers = TimerTable::default();
        timers.set(Timer::WgTick, now + WG_TICK);
        Self {
            node_public: config.node_private.public(),
            disco_public: config.disco_private.public(),
            wg: WgPeers::new(&config.node_private),
            disco_private: config.disco_private,
            peers: BTreeMap::new(),
            host_routes: BTreeMap::new(),
            regions: BTreeMap::new(),
            home: None,
            local_endpoints: Vec::new(),
            stun_endpoints: Vec::new(),
            reported_endpoints: Vec::new(),
            stun_inflight: BTreeMap::new(),
            stun_round: BTreeMap::new(),
            timers,
            rng: Rng::new(seed),
            transmits: VecDeque::new(),
            ip_out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Our node key.
    pub fn node_public(&self) -> NodePublic {
        self.node_public
    }

    /// Our disco key (report it to control as `DiscoKey`).
    pub fn disco_public(&self) -> DiscoPublic {
        self.disco_public
    }

    /// Our home DERP region, once known.
    pub fn home_derp(&self) -> Option<RegionId> {
        self.home
    }

    /// Our current candidate endpoints.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.reported_endpoints
    }

    /// Replaces the peer set with the netmap's. Peers that disappear lose their
    /// WireGuard sessions; peers whose disco key changed restart discovery.
    pub fn set_peers(&mut self, peers: Vec<PeerConfig>, now: Instant) {
        let wanted: BTreeMap<NodePublic, PeerConfig> =
            peers.into_iter().map(|p| (p.node_key, p)).collect();
        let gone: Vec<NodePublic> = self
            .peers
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for k in gone {
            self.peers.remove(&k);
            self.wg.remove_peer(&k);
            self.timers.clear(Timer::Heartbeat(k));
            self.timers.clear(Timer::PeerSweep(k));
        }
        for (key, cfg) in wanted {
            let restarted = self
                .peers
                .get(&key)
                .is_some_and(|p| p.cfg.disco_key != cfg.disco_key);
            if restarted {
                // A new disco key means the peer process restarted and lost its
                // WireGuard sessions: start over instead of waiting out
                // WireGuard's 15 s dead-session timer.
                self.wg.remove_peer(&key);
            }
            if !self.wg.contains(&key) {
                let index = loop {
                    let i = self.rng.range(1, 1 << 24) as u32;
                    if self.wg.is_free_index(i) {
                        break i;
                    }
                };
                self.wg.add_peer(key, index);
            }
            let p = self.peers.entry(key).or_insert_with(|| PeerState {
                cfg: cfg.clone(),
                derp_route: None,
                candidates: BTreeMap::new(),
                best: None,
                trust_until: None,
                sent_pings: BTreeMap::new(),
                last_send_ext: None,
                last_full_ping: None,
                heartbeat_on: false,
                reported: Path::None,
            });
            if p.cfg.disco_key != cfg.disco_key {
                p.reset_paths();
            }
            p.set_netmap_endpoints(&cfg.endpoints, now);
            p.cfg = cfg;
            self.refresh_path(key, now);
        }
        self.host_routes.clear();
        for (k, p) in &self.peers {
            for net in p
                .cfg
                .allowed_ips
                .iter()
                .filter(|n| n.prefix_len() == n.max_prefix_len())
            {
                self.host_routes.entry(net.addr()).or_insert(*k);
            }
        }
    }

    /// Sets the DERP regions (and their STUN servers) and starts a STUN round.
    /// Calling it again with an unchanged map does nothing.
    pub fn set_derp_map(&mut self, regions: Vec<DerpRegion>, now: Instant) {
        let regions: BTreeMap<RegionId, DerpRegion> =
            regions.into_iter().map(|r| (r.id, r)).collect();
        if regions == self.regions && !regions.is_empty() {
            return;
        }
        self.regions = regions;
        if self.home.is_none_or(|h| !self.regions.contains_key(&h)) {
            if let Some(first) = self.regions.keys().next().copied() {
                self.set_home(first);
            }
        }
        self.timers.set(Timer::Restun, now);
    }

    /// Sets the local addresses of our UDP socket (interface addresses with
    /// the socket's port). They are reported after STUN-discovered ones.
    pub fn set_own_endpoints(&mut self, local: Vec<SocketAddr>, _now: Instant) {
        self.local_endpoints = local;
        self.update_endpoints();
    }

    /// Asks for a STUN round now (e.g. after a network change).
    pub fn rebind(&mut self, now: Instant) {
        self.timers.set(Timer::Restun, now);
    }

    /// Starts a `weft ping`: one disco ping on the current best path (direct
    /// if trusted, else via DERP, plus the untrusted direct candidate), and a
    /// discovery round. Results arrive as [`Event::Pong`].
    pub fn ping(&mut self, peer: NodePublic, now: Instant) -> Result<(), SendError> {
        let p = self.peers.get(&peer).ok_or(SendError::UnknownPeer)?;
        let best = p.best.map(|b| b.addr);
        let trusted = p.trusted(now);
        let region = p.derp_region(now);
        if trusted {
            if let Some(addr) = best {
                self.send_disco_ping(peer, PingTo::Udp(addr), true, now);
            }
            return Ok(());
        }
        let Some(region) = region else {
            return Err(SendError::NoPath);
        };
        self.send_disco_ping(peer, PingTo::Derp(region), true, now);
        if let Some(addr) = best {
            self.send_disco_ping(peer, PingTo::Udp(addr), true, now);
        }
        self.ping_candidates(peer, now, true);
        Ok(())
    }

    /// Status of every peer.
    pub fn peer_status(&self, now: Instant) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .map(|(k, p)| PeerStatus {
                node_key: *k,
                path: p.path(now),
                latency: p.best.map(|b| b.latency),
                candidates: p.candidates.keys().copied().collect(),
                wg: self.wg.stats(k).unwrap_or_default(),
            })
            .collect()
    }

    /// The current path to `peer`.
    pub fn path(&self, peer: &NodePublic, now: Instant) -> Path {
        self.peers.get(peer).map_or(Path::None, |p| p.path(now))
    }

    // ---- inputs ---------------------------------------------------------

    /// A UDP datagram arrived on the socket bound at `local` from `from`.
    pub fn handle_datagram(
        &mut self,
        _local: SocketAddr,
        from: SocketAddr,
        bytes: &[u8],
        now: Instant,
    ) -> Result<(), RecvError> {
        if looks_like_stun(bytes) {
            return self.handle_stun(bytes, now);
        }
        if disco::looks_like_disco(bytes) {
            return self.handle_disco(Src::Udp(from), bytes, now);
        }
        self.handle_wg(Src::Udp(from), bytes, now)
    }

    /// A packet arrived through DERP region `region` from node `from`.
    pub fn handle_derp_packet(
        &mut self,
        region: RegionId,
        from: NodePublic,
        bytes: &[u8],
        now: Instant,
    ) -> Result<(), RecvError> {
        if let Some(p) = self.peers.get_mut(&from) {
            p.derp_route = Some((region, now));
        }
        if disco::looks_like_disco(bytes) {
            return self.handle_disco(Src::Derp { region, from }, bytes, now);
        }
        self.handle_wg(Src::Derp { region, from }, bytes, now)
    }

    /// A DERP region said `peer` is gone (PeerGone): forget that we heard it there.
    pub fn handle_derp_peer_gone(&mut self, region: RegionId, peer: NodePublic, now: Instant) {
        if let Some(p) = self.peers.get_mut(&peer) {
            if p.derp_route.is_some_and(|(r, _)| r == region) {
                p.derp_route = None;
            }
        }
        self.refresh_path(peer, now);
    }

    /// An IP packet read from TUN, to encrypt and send to the peer that owns
    /// its destination.
    pub fn handle_ip_packet(&mut self, packet: &[u8], now: Instant) -> Result<(), SendError> {
        let dst = ip_dst(packet).ok_or(SendError::NotIp)?;
        let peer = self.route(dst).ok_or(SendError::NoRoute(dst))?;
        let datagrams = self.wg.encapsulate(&peer, packet)?;
        if let Some(p) = self.peers.get_mut(&peer) {
            p.last_send_ext = Some(now);
            if !p.heartbeat_on {
                p.heartbeat_on = true;
                self.timers
                    .set(Timer::Heartbeat(peer), now + HEARTBEAT_INTERVAL);
            }
        }
        for d in datagrams {
            self.send_wg(peer, d, now)?;
        }
        Ok(())
    }

    /// Fast path for TUN → UDP: when the destination's peer has a trusted
    /// direct path and an established session, encrypts `packet` into `out`
    /// and returns the UDP destination and datagram length, allocating
    /// nothing. Otherwise behaves like [`Self::handle_ip_packet`] (outputs go
    /// to [`Self::poll_transmit`]) and returns `None`. `out` should hold
    /// `packet.len() + 32` bytes (and at least 148).
    pub fn encapsulate_direct(
        &mut self,
        packet: &[u8],
        now: Instant,
        out: &mut [u8],
    ) -> Result<Option<(SocketAddr, usize)>, SendError> {
        let dst = ip_dst(packet).ok_or(SendError::NotIp)?;
        let peer = self.route(dst).ok_or(SendError::NoRoute(dst))?;
        let Some(p) = self.peers.get_mut(&peer) else {
            return Err(SendError::UnknownPeer);
        };
        let best = p.best.filter(|_| p.trusted(now)).map(|b| b.addr);
        let Some(addr) = best else {
            return self.handle_ip_packet(packet, now).map(|()| None);
        };
        p.last_send_ext = Some(now);
        if !p.heartbeat_on {
            p.heartbeat_on = true;
            self.timers
                .set(Timer::Heartbeat(peer), now + HEARTBEAT_INTERVAL);
        }
        match self.wg.encapsulate_into(&peer, packet, out)? {
            WgOut::Data(len) => Ok(Some((addr, len))),
            WgOut::Handshake(len) => {
                let d = out[..len].to_vec();
                self.send_wg(peer, d, now)?;
                Ok(None)
            }
            WgOut::Queued => Ok(None),
        }
    }

    /// Fast path for UDP → TUN: decrypts a WireGuard transport datagram into
    /// `out` and returns the IP packet's length, allocating nothing. Anything
    /// else (handshakes, disco, STUN, keepalives, errors in the fast path's
    /// preconditions) goes through [`Self::handle_datagram`] and returns
    /// `None`; then drain the `poll_*` queues as usual. `out` should be at
    /// least as long as `datagram`.
    pub fn decapsulate_direct(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
        out: &mut [u8],
    ) -> Result<Option<usize>, RecvError> {
        if datagram.first() != Some(&4) || out.len() < datagram.len() {
            return self
                .handle_datagram(local, from, datagram, now)
                .map(|()| None);
        }
        let peer = self.wg.peer_of(datagram)?;
        let Some((len, inner_src)) =
            self.wg
                .decapsulate_data_into(&peer, Some(from.ip()), datagram, out)?
        else {
            return Ok(None);
        };
        let allowed = self
            .peers
            .get(&peer)
            .is_some_and(|p| p.cfg.allowed_ips.iter().any(|n| n.contains(&inner_src)));
        if !allowed {
            return Err(RecvError::SourceNotAllowed(inner_src));
        }
        if let Some(key) = tsmp_disco_key(&out[..len]) {
            self.set_peer_disco_key(peer, key, now);
            return Ok(None);
        }
        Ok(Some(len))
    }

    /// Runs whatever is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        for t in self.timers.expired(now) {
            match t {
                Timer::WgTick => {
                    for (peer, d) in self.wg.update_timers() {
                        if let Err(e) = self.send_wg(peer, d, now) {
                            tracing::trace!(peer = %peer.short(), %e, "dropping wireguard timer packet");
                        }
                    }
                    self.timers.set(Timer::WgTick, now + WG_TICK);
                }
                Timer::Restun => self.start_stun_round(now),
                Timer::StunDone => self.finish_stun_round(now),
                Timer::Heartbeat(peer) => self.heartbeat(peer, now),
                Timer::PeerSweep(peer) => self.sweep(peer, now),
            }
        }
    }

    // ---- outputs --------------------------------------------------------

    /// Next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next decrypted IP packet for TUN.
    pub fn poll_ip_packet(&mut self) -> Option<Vec<u8>> {
        self.ip_out.pop_front()
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Magicsock::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    // ---- internals ------------------------------------------------------

    fn route(&self, dst: IpAddr) -> Option<NodePublic> {
        if let Some(k) = self.host_routes.get(&dst) {
            return Some(*k);
        }
        let mut best: Option<(u8, NodePublic)> = None;
        for (k, p) in &self.peers {
            for net in &p.cfg.allowed_ips {
                if net.contains(&dst) && best.is_none_or(|(len, _)| net.prefix_len() > len) {
                    best = Some((net.prefix_len(), *k));
                }
            }
        }
        best.map(|(_, k)| k)
    }

    /// Sends a WireGuard datagram to `peer` on the best path (§6.4 of our notes):
    /// trusted direct path alone, else direct candidate plus DERP and discovery.
    fn send_wg(
        &mut self,
        peer: NodePublic,
        datagram: Vec<u8>,
        now: Instant,
    ) -> Result<(), SendError> {
        let p = self.peers.get(&peer).ok_or(SendError::UnknownPeer)?;
        if p.trusted(now) {
            if let Some(b) = p.best {
                self.transmits.push_back(Transmit {
                    dst: Destination::Udp(b.addr),
                    payload: datagram,
                });
                return Ok(());
            }
        }
        let best = p.best.map(|b| b.addr);
        let region = p.derp_region(now);
        if best.is_none() && region.is_none() {
            return Err(SendError::NoPath);
        }
        if let Some(addr) = best {
            self.transmits.push_back(Transmit {
                dst: Destination::Udp(addr),
                payload: datagram.clone(),
            });
        }
        if let Some(region) = region {
            self.transmits.push_back(Transmit {
                dst: Destination::Derp { region, peer },
                payload: datagram,
            });
        }
        self.ping_candidates(peer, now, true);
        Ok(())
    }

    /// Pings every candidate not pinged within [`DISCO_PING_INTERVAL`]; if any
    /// ping went out and `cmm`, tells the peer our endpoints via DERP.
    fn ping_candidates(&mut self, peer: NodePublic, now: Instant, cmm: bool) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.candidates.retain(|_, c| c.keep(now));
        let due: Vec<SocketAddr> = p
            .candidates
            .iter()
            .filter(|(_, c)| {
                c.last_ping
                    .is_none_or(|t| now.duration_since(t) >= DISCO_PING_INTERVAL)
            })
            .map(|(a, _)| *a)
            .collect();
        if due.is_empty() {
            return;
        }
        p.last_full_ping = Some(now);
        let region = p.derp_region(now);
        for addr in &due {
            self.send_disco_ping(peer, PingTo::Udp(*addr), false, now);
        }
        if cmm {
            if let Some(region) = region {
                let endpoints = self.reported_endpoints.iter().map(|e| e.addr).collect();
                self.send_disco(
                    peer,
                    Destination::Derp { region, peer },
                    &Message::CallMeMaybe(CallMeMaybe { endpoints }),
                );
            }
        }
    }

    fn send_disco_ping(&mut self, peer: NodePublic, to: PingTo, cli: bool, now: Instant) {
        let tx_id: TxId = self.rng.bytes();
        let msg = Message::Ping(Ping {
            tx_id,
            node_key: Some(self.node_public),
            padding: 0,
        });
        let dst = match to {
            PingTo::Udp(a) => Destination::Udp(a),
            PingTo::Derp(region) => Destination::Derp { region, peer },
        };
        self.send_disco(peer, dst, &msg);
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.sent_pings.insert(tx_id, SentPing { to, at: now, cli });
        if let PingTo::Udp(a) = to {
            if let Some(c) = p.candidates.get_mut(&a) {
                c.last_ping = Some(now);
            }
        }
        self.timers
            .set_earliest(Timer::PeerSweep(peer), now + PING_TIMEOUT);
    }

    fn send_disco(&mut self, peer: NodePublic, dst: Destination, msg: &Message) {
        let Some(p) = self.peers.get(&peer) else {
            return;
        };
        let nonce = self.rng.bytes();
        let payload = disco::seal(&self.disco_private, &p.cfg.disco_key, msg, nonce);
        tracing::trace!(peer = %peer.short(), ?dst, kind = msg_kind(msg), "disco send");
        self.transmits.push_back(Transmit { dst, payload });
    }

    fn handle_disco(&mut self, src: Src, bytes: &[u8], now: Instant) -> Result<(), RecvError> {
        let sender = disco::sender(bytes)?;
        let candidates: Vec<NodePublic> = match src {
            Src::Derp { from, .. } => self
                .peers
                .get(&from)
                .filter(|p| p.cfg.disco_key == sender)
                .map(|_| vec![from])
                .unwrap_or_default(),
            Src::Udp(_) => self
                .peers
                .iter()
                .filter(|(_, p)| p.cfg.disco_key == sender)
                .map(|(k, _)| *k)
                .collect(),
        };
        if candidates.is_empty() {
            return Err(RecvError::UnknownDiscoSender);
        }
        let msg = disco::open_from(&self.disco_private, &sender, bytes)?;
        tracing::trace!(?src, kind = msg_kind(&msg), "disco recv");
        match msg {
            Message::Ping(ping) => {
                let peer = match ping.node_key {
                    Some(k) if candidates.contains(&k) => k,
                    _ if candidates.len() == 1 => candidates[0],
                    _ => return Err(RecvError::UnknownDiscoSender),
                };
                self.handle_ping(peer, src, ping, now);
            }
            Message::Pong(pong) => {
                for peer in candidates {
                    if self.handle_pong(peer, src, pong, now) {
                        break;
                    }
                }
            }
            Message::CallMeMaybe(cmm) => {
                let Src::Derp { from, .. } = src else {
                    return Err(RecvError::CallMeMaybeNotViaDerp);
                };
                self.handle_call_me_maybe(from, cmm, now);
            }
        }
        Ok(())
    }

    fn handle_ping(&mut self, peer: NodePublic, src: Src, ping: Ping, now: Instant) {
        match src {
            Src::Udp(from) => {
                let Some(p) = self.peers.get_mut(&peer) else {
                    return;
                };
                let c = p.candidates.entry(from).or_default();
                if c.last_rx_tx == Some(ping.tx_id) {
                    // A duplicated datagram: answered already.
                    return;
                }
                c.last_rx_tx = Some(ping.tx_id);
                c.learned_until = Some(now + PING_LEARNED_LIFETIME);
                let recently_pinged = c
                    .last_ping
                    .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1));
                let is_trusted_best = p.trusted(now) && p.best.is_some_and(|b| b.addr == from);
                self.timers
                    .set_earliest(Timer::PeerSweep(peer), now + PING_LEARNED_LIFETIME);
                self.send_disco(
                    peer,
                    Destination::Udp(from),
                    &Message::Pong(Pong {
                        tx_id: ping.tx_id,
                        src: from,
                    }),
                );
                // Answer a new path with a ping of our own: the peer's ping just
                // opened its NAT towards us, so ours can get through now.
                if !recently_pinged && !is_trusted_best {
                    self.send_disco_ping(peer, PingTo::Udp(from), false, now);
                }
            }
            Src::Derp { region, from } => {
                let src = SocketAddr::new(DERP_MAGIC_IP.into(), region);
                self.send_disco(
                    peer,
                    Destination::Derp { region, peer: from },
                    &Message::Pong(Pong {
                        tx_id: ping.tx_id,
                        src,
                    }),
                );
            }
        }
    }

    /// Returns whether `peer` owned the pong's transaction.
    fn handle_pong(&mut self, peer: NodePublic, src: Src, pong: Pong, now: Instant) -> bool {
        let Some(p) = self.peers.get_mut(&peer) else {
            return false;
        };
        let Some(sent) = p.sent_pings.remove(&pong.tx_id) else {
            return false;
        };
        let latency = now.saturating_duration_since(sent.at);
        let via = match sent.to {
            PingTo::Udp(a) => Path::Direct(a),
            PingTo::Derp(r) => Path::Derp(r),
        };
        if let (PingTo::Udp(addr), Src::Udp(_)) = (sent.to, src) {
            let cand = BestAddr { addr, latency };
            let replace = match p.best {
                None => true,
                Some(b) => !p.trusted(now) || better_addr(&cand, &b),
            };
            if replace {
                p.best = Some(cand);
            }
            if let Some(b) = p.best.as_mut().filter(|b| b.addr == addr) {
                b.latency = latency;
                let until = now + TRUST_UDP_ADDR_DURATION;
                p.trust_until = Some(until);
                self.timers.set_earliest(Timer::PeerSweep(peer), until);
            }
        }
        if sent.cli {
            self.events.push_back(Event::Pong {
                peer,
                via,
                latency,
                src: pong.src,
            });
        }
        self.refresh_path(peer, now);
        true
    }

    fn handle_call_me_maybe(&mut self, peer: NodePublic, cmm: CallMeMaybe, now: Instant) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        for c in p.candidates.values_mut() {
            c.from_cmm = false;
        }
        for ep in cmm.endpoints {
            if let IpAddr::V6(v6) = ep.ip() {
                if v6.segments()[0] & 0xffc0 == 0xfe80 {
                    continue;
                }
            }
            p.candidates.entry(ep).or_default().from_cmm = true;
        }
        p.candidates.retain(|_, c| c.keep(now));
        for c in p.candidates.values_mut() {
            c.last_ping = None;
        }
        self.ping_candidates(peer, now, false);
    }

    fn handle_wg(&mut self, src: Src, bytes: &[u8], now: Instant) -> Result<(), RecvError> {
        let peer = self.wg.peer_of(bytes)?;
        let src_ip = match src {
            Src::Udp(a) => Some(a.ip()),
            Src::Derp { from, .. } => {
                if from != peer {
                    return Err(RecvError::DerpSourceMismatch);
                }
                None
            }
        };
        let out = self.wg.decapsulate(&peer, src_ip, bytes)?;
        for d in out.to_network {
            if let Err(e) = self.send_wg(peer, d, now) {
                tracing::trace!(peer = %peer.short(), %e, "dropping wireguard reply");
            }
        }
        if let Some((packet, inner_src)) = out.to_tunnel {
            let allowed = self
                .peers
                .get(&peer)
                .is_some_and(|p| p.cfg.allowed_ips.iter().any(|n| n.contains(&inner_src)));
            if !allowed {
                return Err(RecvError::SourceNotAllowed(inner_src));
            }
            if let Some(key) = tsmp_disco_key(&packet) {
                // Never for the OS. The session authenticated the sender's node
                // key, so the advertised disco key can be trusted.
                self.set_peer_disco_key(peer, key, now);
                return Ok(());
            }
            self.ip_out.push_back(packet);
        }
        Ok(())
    }

    fn set_peer_disco_key(&mut self, peer: NodePublic, key: DiscoPublic, now: Instant) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.cfg.disco_key != key {
            tracing::debug!(peer = %peer.short(), disco = %key.short(), "peer disco key advertised");
            p.cfg.disco_key = key;
            p.reset_paths();
            self.refresh_path(peer, now);
        }
    }

    fn heartbeat(&mut self, peer: NodePublic, now: Instant) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.last_send_ext
            .is_none_or(|t| now.duration_since(t) > SESSION_ACTIVE_TIMEOUT)
        {
            p.heartbeat_on = false;
            return;
        }
        let best = p.best;
        let trusted = p.trusted(now);
        let full = best.is_none()
            || !trusted
            || p.last_full_ping.is_none()
            || best.is_some_and(|b| {
                b.latency > GOOD_ENOUGH_LATENCY
                    && p.last_full_ping
                        .is_some_and(|t| now.duration_since(t) >= UPGRADE_INTERVAL)
            });
        self.timers
            .set(Timer::Heartbeat(peer), now + HEARTBEAT_INTERVAL);
        if let Some(b) = best {
            self.send_disco_ping(peer, PingTo::Udp(b.addr), false, now);
        }
        if full {
            self.ping_candidates(peer, now, true);
        }
    }

    fn sweep(&mut self, peer: NodePublic, now: Instant) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let expired: Vec<(TxId, SentPing)> = p
            .sent_pings
            .iter()
            .filter(|(_, s)| now.duration_since(s.at) >= PING_TIMEOUT)
            .map(|(t, s)| (*t, *s))
            .collect();
        let mut lost_best = false;
        for (tx, s) in expired {
            p.sent_pings.remove(&tx);
            if let (PingTo::Udp(a), Some(b)) = (s.to, p.best) {
                if a == b.addr && !p.trusted(now) {
                    tracing::debug!(peer = %peer.short(), addr = %a, "direct path timed out");
                    p.best = None;
                    p.trust_until = None;
                    lost_best = true;
                }
            }
        }
        p.candidates.retain(|_, c| c.keep(now));
        let mut next: Option<Instant> = p.sent_pings.values().map(|s| s.at + PING_TIMEOUT).min();
        for c in p.candidates.values() {
            if let Some(t) = c.learned_until.filter(|t| *t > now) {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        if let Some(t) = p.trust_until.filter(|t| *t > now) {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        if let Some(t) = next {
            self.timers.set(Timer::PeerSweep(peer), t);
        }
        if lost_best {
            // Our mapping may have changed: learn our endpoints again soon.
            self.timers.set_earliest(Timer::Restun, now);
        }
        self.refresh_path(peer, now);
    }

    fn refresh_path(&mut self, peer: NodePublic, now: Instant) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let path = p.path(now);
        if path != p.reported {
            tracing::info!(peer = %peer.short(), ?path, "path changed");
            p.reported = path;
            self.events.push_back(Event::PathChanged { peer, path });
        }
    }

    fn set_home(&mut self, region: RegionId) {
        if self.home != Some(region) {
            tracing::info!(region, "home derp region");
            self.home = Some(region);
            self.events.push_back(Event::HomeDerpChanged(region));
        }
    }

    fn start_stun_round(&mut self, now: Instant) {
        let jitter = self.rng.range(20_000, 26_000);
        self.timers
            .set(Timer::Restun, now + Duration::from_millis(jitter));
        self.stun_inflight.clear();
        self.stun_round.clear();
        let targets: Vec<(RegionId, SocketAddr)> = self
            .regions
            .values()
            .flat_map(|r| r.stun.iter().map(move |a| (r.id, *a)))
            .collect();
        if targets.is_empty() {
            return;
        }
        for (region, addr) in targets {
            let tx = stun::TxId(self.rng.bytes());
            self.stun_inflight.insert(tx, StunProbe { region, at: now });
            self.transmits.push_back(Transmit {
                dst: Destination::Udp(addr),
                payload: stun::request(tx).to_vec(),
            });
        }
        self.timers.set(Timer::StunDone, now + STUN_ROUND_TIMEOUT);
    }

    fn handle_stun(&mut self, bytes: &[u8], now: Instant) -> Result<(), RecvError> {
        let (tx, mapped) = stun::parse_response(bytes)?;
        let probe = self
            .stun_inflight
            .remove(&tx)
            .ok_or(RecvError::UnsolicitedStun)?;
        let rtt = now.saturating_duration_since(probe.at);
        let e = self.stun_round.entry(probe.region).or_insert((rtt, mapped));
        if rtt < e.0 {
            *e = (rtt, mapped);
        }
        if self.stun_inflight.is_empty() {
            self.timers.clear(Timer::StunDone);
            self.finish_stun_round(now);
        }
        Ok(())
    }

    fn finish_stun_round(&mut self, _now: Instant) {
        self.stun_inflight.clear();
        let mut by_latency: Vec<(Duration, RegionId, SocketAddr)> = self
            .stun_round
            .iter()
            .map(|(r, (d, a))| (*d, *r, *a))
            .collect();
        by_latency.sort();
        let mut mapped: Vec<SocketAddr> = Vec::new();
        for (_, _, a) in &by_latency {
            if !mapped.contains(a) {
                mapped.push(*a);
            }
        }
        let report = NetReport {
            udp: !by_latency.is_empty(),
            global_v4: by_latency
                .iter()
                .map(|(_, _, a)| *a)
                .find(SocketAddr::is_ipv4),
            mapping_varies_by_dest_ip: (by_latency.len() > 1).then_some(mapped.len() > 1),
            region_latency: self.stun_round.iter().map(|(r, (d, _))| (*r, *d)).collect(),
            preferred_derp: None,
        };
        if let Some(&(best_lat, best_region, _)) = by_latency.first() {
            let keep_old =
                self.home
                    .and_then(|h| self.stun_round.get(&h))
                    .is_some_and(|(old, _)| {
                        old.saturating_sub(best_lat) < Duration::from_millis(10)
                            || best_lat * 3 > *old * 2
                    });
            if !keep_old {
                self.set_home(best_region);
            }
        }
        self.stun_endpoints = mapped;
        self.update_endpoints();
        self.events.push_back(Event::NetReport(NetReport {
            preferred_derp: self.home,
            ..report
        }));
    }

    fn update_endpoints(&mut self) {
        let mut eps: Vec<Endpoint> = Vec::new();
        for (addr, kind) in self
            .stun_endpoints
            .iter()
            .map(|a| (*a, EndpointKind::Stun))
            .chain(
                self.local_endpoints
                    .iter()
                    .map(|a| (*a, EndpointKind::Local)),
            )
        {
            if !eps.iter().any(|e| e.addr == addr) {
                eps.push(Endpoint { addr, kind });
            }
        }
        if eps != self.reported_endpoints {
            tracing::debug!(endpoints = ?eps, "own endpoints changed");
            self.reported_endpoints = eps.clone();
            self.events.push_back(Event::EndpointsChanged(eps));
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Src {
    Udp(SocketAddr),
    Derp { region: RegionId, from: NodePublic },
}

/// Tailscale's classifier for STUN on the shared socket: header, cookie and
/// the binding method. (A bare "top bits zero" test would also match every
/// WireGuard packet.)
fn looks_like_stun(b: &[u8]) -> bool {
    b.len() >= 20 && b[0] & 0xc0 == 0 && b[1] == 0x01 && b[4..8] == stun::MAGIC_COOKIE
}

fn msg_kind(m: &Message) -> &'static str {
    match m {
        Message::Ping(_) => "ping",
        Message::Pong(_) => "pong",
        Message::CallMeMaybe(_) => "call-me-maybe",
    }
}

/// The destination address of an IPv4 or IPv6 packet.
pub fn ip_dst(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => Some(IpAddr::from(<[u8; 4]>::try_from(&packet[16..20]).ok()?)),
        6 if packet.len() >= 40 => Some(IpAddr::from(<[u8; 16]>::try_from(&packet[24..40]).ok()?)),
        _ => None,
    }
}

/// TSMP (IP protocol 99) type `'a'`: a peer advertising its disco key.
fn tsmp_disco_key(packet: &[u8]) -> Option<DiscoPublic> {
    let payload = match packet.first()? >> 4 {
        4 if packet.len() >= 20 && packet[9] == 99 => {
            packet.get(usize::from(packet[0] & 0x0f) * 4..)?
        }
        6 if packet.len() >= 40 && packet[6] == 99 => &packet[40..],
        _ => return None,
    };
    let (ty, rest) = payload.split_first()?;
    let key: [u8; 32] = rest.get(..32)?.try_into().ok()?;
    (*ty == b'a').then_some(DiscoPublic::from_bytes(key))
}

/// Tailscale's `betterAddr`: is `a` a better direct path than `b`?
fn better_addr(a: &BestAddr, b: &BestAddr) -> bool {
    if a.addr == b.addr {
        return false;
    }
    let points = |x: &BestAddr| -> i64 {
        let ip = x.addr.ip();
        let mut p = 0;
        if ip.is_loopback() {
            p += 50;
        } else if is_link_local(ip) {
            p += 30;
        } else if is_private(ip) {
            p += 20;
        }
        if ip.is_ipv6() {
            p += 10;
        }
        p
    };
    let (mut ap, mut bp) = (points(a), points(b));
    let (fa, fb) = (
        a.latency.as_nanos().max(1) as i64,
        b.latency.as_nanos().max(1) as i64,
    );
    if fa < fb {
        ap += 100 - 100 * fa / fb;
    } else if fb < fa {
        bp += 100 - 100 * fb / fa;
    }
    if ap <= 1 && bp == 0 {
        return false;
    }
    ap > bp
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xfe00 == 0xfc00,
    }
}

#[cfg(test)]
mod tests;
