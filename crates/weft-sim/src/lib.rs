//! Test-only: a virtual-time network simulator for weft's sans-IO data plane.
//!
//! A [`Sim`] holds [`Host`]s, each running a [`Magicsock`] behind an [`Edge`]:
//! either directly on the public network or behind a NAT modelled after
//! RFC 4787 (endpoint-independent or endpoint-dependent *mapping*; open,
//! address-restricted or port-restricted *filtering*; mapping expiry). The
//! public network also holds, per region, a STUN server (`weft_proto::stun`)
//! and a DERP relay run by `weft_proto::derp::ServerCore` (forwarding,
//! PeerGone), and a trivial
//! control plane that copies each host's reported endpoints and home region
//! into the other hosts' netmaps.
//!
//! Time is virtual: [`Sim::step`] jumps to the earliest deadline (a packet
//! arriving or a host's `poll_timeout`) and processes it; nothing sleeps.
//! [`Sim::run_until`] steps until a predicate holds or a virtual time limit
//! passes.
//!
//! WireGuard's own timers inside boringtun run on the real clock (see
//! `weft_magicsock::wg`); simulations here run far faster than real time, so
//! they see no WireGuard rekeys, which none of the scenarios depend on.

#![warn(missing_docs)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ipnet::IpNet;
use weft_key::{DiscoPrivate, NodePrivate};
use weft_magicsock::{
    Config, DerpRegion, Destination, Event, Magicsock, Path, PeerConfig, RegionId, Transmit,
};
use weft_proto::derp::{Command, ConnId, ConnInfo, Frame, ServerCore, ServerStats};
use weft_proto::stun;

/// NAT mapping behaviour (RFC 4787 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// One external port per internal address:port, whatever the destination ("easy NAT").
    EndpointIndependent,
    /// A new external port per destination address:port ("hard NAT", symmetric).
    EndpointDependent,
}

/// NAT filtering behaviour (RFC 4787 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filtering {
    /// Anyone may send to a mapped port.
    Open,
    /// Only addresses the mapping has sent to.
    AddressRestricted,
    /// Only address:port pairs the mapping has sent to.
    PortRestricted,
}

/// A NAT's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nat {
    /// Mapping behaviour.
    pub mapping: Mapping,
    /// Filtering behaviour.
    pub filtering: Filtering,
    /// Idle time after which a mapping is forgotten (refreshed by outbound packets).
    pub timeout: Duration,
}

impl Nat {
    /// A NAT with the given behaviour and a 30 s mapping timeout.
    pub fn new(mapping: Mapping, filtering: Filtering) -> Self {
        Self {
            mapping,
            filtering,
            timeout: Duration::from_secs(30),
        }
    }
}

/// How a host reaches the public network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    /// A public address, no NAT, no firewall.
    Open,
    /// Behind a NAT.
    Nat(Nat),
}

/// Whether two hosts behind these edges can ever hole-punch a direct path
/// with disco (both sides ping each other's STUN addresses after a
/// call-me-maybe, and answer pings from new sources). The oracle for the NAT
/// matrix tests.
pub fn direct_path_possible(a: Edge, b: Edge) -> bool {
    let (Edge::Nat(a), Edge::Nat(b)) = (a, b) else {
        return true;
    };
    use Filtering::*;
    use Mapping::*;
    match (a.mapping, b.mapping) {
        (EndpointIndependent, EndpointIndependent) => true,
        (EndpointDependent, EndpointIndependent) => b.filtering != PortRestricted,
        (EndpointIndependent, EndpointDependent) => a.filtering != PortRestricted,
        (EndpointDependent, EndpointDependent) => {
            matches!(
                (a.filtering, b.filtering),
                (Open, Open) | (Open, AddressRestricted) | (AddressRestricted, Open)
            )
        }
    }
}

/// Index of a host in the simulation.
pub type HostId = usize;

#[derive(Debug, Clone)]
struct NatMapping {
    internal: SocketAddr,
    dest: Option<SocketAddr>,
    external_port: u16,
    last_out: Instant,
    contacted: BTreeSet<SocketAddr>,
}

#[derive(Debug)]
struct NatState {
    cfg: Nat,
    public_ip: Ipv4Addr,
    next_port: u16,
    mappings: Vec<NatMapping>,
}

impl NatState {
    fn outbound(&mut self, internal: SocketAddr, dest: SocketAddr, now: Instant) -> SocketAddr {
        let timeout = self.cfg.timeout;
        self.mappings
            .retain(|m| now.duration_since(m.last_out) < timeout);
        let key = match self.cfg.mapping {
            Mapping::EndpointIndependent => None,
            Mapping::EndpointDependent => Some(dest),
        };
        let idx = match self
            .mappings
            .iter()
            .position(|m| m.internal == internal && m.dest == key)
        {
            Some(i) => i,
            None => {
                let port = self.next_port;
                self.next_port = self.next_port.wrapping_add(1).max(1024);
                self.mappings.push(NatMapping {
                    internal,
                    dest: key,
                    external_port: port,
                    last_out: now,
                    contacted: BTreeSet::new(),
                });
                self.mappings.len() - 1
            }
        };
        let m = &mut self.mappings[idx];
        m.last_out = now;
        m.contacted.insert(dest);
        SocketAddr::new(self.public_ip.into(), m.external_port)
    }

    fn inbound(&self, port: u16, from: SocketAddr, now: Instant) -> Option<SocketAddr> {
        let m = self.mappings.iter().find(|m| {
            m.external_port == port && now.duration_since(m.last_out) < self.cfg.timeout
        })?;
        let allowed = match self.cfg.filtering {
            Filtering::Open => true,
            Filtering::AddressRestricted => m.contacted.iter().any(|c| c.ip() == from.ip()),
            Filtering::PortRestricted => m.contacted.contains(&from),
        };
        allowed.then_some(m.internal)
    }
}

/// One simulated node.
pub struct Host {
    /// Name for logs.
    pub name: String,
    /// The data-plane core under test.
    pub sock: Magicsock,
    /// The host's own socket address (private if behind a NAT).
    pub addr: SocketAddr,
    /// The host's tailnet address.
    pub tailnet_ip: IpAddr,
    /// Decrypted IP packets the host's TUN received.
    pub delivered: Vec<Vec<u8>>,
    /// Every event the core emitted, with its virtual time.
    pub events: Vec<(Instant, Event)>,
    /// Receive errors, counted by kind.
    pub recv_errors: BTreeMap<String, u64>,
    /// DERP PeerGone frames received.
    pub derp_peer_gone: u64,
    edge: Edge,
    nat: Option<NatState>,
    latency: Duration,
}

impl Host {
    /// The host's edge.
    pub fn edge(&self) -> Edge {
        self.edge
    }
}

#[derive(Debug)]
enum Delivery {
    /// A UDP datagram on the public network (after source NAT), to route by destination.
    Udp {
        from: SocketAddr,
        to: SocketAddr,
        payload: Vec<u8>,
    },
    /// A frame from a host's DERP client arriving at the region's server.
    ToDerp {
        region: RegionId,
        conn: ConnId,
        frame: Frame,
    },
    /// A frame from the region's server arriving at a host's DERP client.
    FromDerp {
        region: RegionId,
        host: HostId,
        frame: Frame,
    },
}

/// Counters of what crossed the simulated network.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    /// UDP datagrams sent by hosts.
    pub udp_sent: u64,
    /// UDP datagrams delivered to hosts.
    pub udp_delivered: u64,
    /// UDP datagrams dropped by NAT filtering, expiry or unroutable destinations.
    pub udp_dropped: u64,
    /// Packets relayed through DERP and delivered to a host.
    pub derp_relayed: u64,
}

/// The simulated world.
pub struct Sim {
    /// Hosts, indexed by [`HostId`].
    pub hosts: Vec<Host>,
    /// Current virtual time.
    pub now: Instant,
    /// Virtual time at construction.
    pub start: Instant,
    /// Network counters.
    pub stats: NetStats,
    /// Every UDP payload that crossed the public network (for "is it encrypted" checks).
    pub wire_log: Vec<Vec<u8>>,
    /// Whether to record [`Sim::wire_log`].
    pub log_wire: bool,
    regions: Vec<SimRegion>,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    pending: BTreeMap<u64, Delivery>,
    derp: BTreeMap<RegionId, ServerCore>,
    seq: u64,
}

const STUN_BASE: [u8; 4] = [198, 51, 100, 0];
/// One-way latency between the public network and region 900's servers.
const DEFAULT_REGION_LATENCY: Duration = Duration::from_millis(15);

/// A DERP region's servers on the public network.
#[derive(Debug, Clone, Copy)]
struct SimRegion {
    id: RegionId,
    stun: SocketAddr,
    latency: Duration,
}

impl Sim {
    /// An empty world with one DERP region (900) and its STUN server.
    pub fn new() -> Self {
        // The base instant only anchors virtual time; nothing waits on the real clock.
        #[allow(clippy::disallowed_methods)]
        let start = Instant::now();
        Self {
            hosts: Vec::new(),
            now: start,
            start,
            stats: NetStats::default(),
            wire_log: Vec::new(),
            log_wire: false,
            regions: vec![SimRegion {
                id: 900,
                stun: SocketAddr::from((STUN_BASE, 3478)),
                latency: DEFAULT_REGION_LATENCY,
            }],
            queue: BinaryHeap::new(),
            pending: BTreeMap::new(),
            derp: BTreeMap::from([(900, ServerCore::new())]),
            seq: 0,
        }
    }

    /// Adds DERP region `id` (with a STUN server) whose servers are `latency`
    /// away from the public network; every host connects to it and probes it.
    pub fn add_region(&mut self, id: RegionId, latency: Duration) {
        let n = u8::try_from(self.regions.len() + 1).expect("fewer than 255 regions");
        let stun = SocketAddr::from(([STUN_BASE[0], STUN_BASE[1], STUN_BASE[2], n], 3478));
        self.regions.push(SimRegion { id, stun, latency });
        self.derp.insert(id, ServerCore::new());
        let regions = self.derp_regions();
        for i in 0..self.hosts.len() {
            self.connect_derp(i);
            let now = self.now;
            self.hosts[i].sock.set_derp_map(regions.clone(), now);
            self.drain(i);
        }
    }

    fn derp_regions(&self) -> Vec<DerpRegion> {
        self.regions
            .iter()
            .map(|r| DerpRegion {
                id: r.id,
                stun: vec![r.stun],
            })
            .collect()
    }

    fn region_latency(&self, id: RegionId) -> Duration {
        self.regions
            .iter()
            .find(|r| r.id == id)
            .map_or(DEFAULT_REGION_LATENCY, |r| r.latency)
    }

    /// Virtual time elapsed since construction.
    pub fn elapsed(&self) -> Duration {
        self.now.duration_since(self.start)
    }

    /// Adds a host behind `edge`, with `latency` one way to the public network.
    /// Hosts know each other through the simulated control plane.
    pub fn add_host(&mut self, name: &str, edge: Edge, latency: Duration) -> HostId {
        let id = self.hosts.len();
        let n = u8::try_from(id + 1).expect("fewer than 255 hosts");
        let cfg = Config {
            node_private: NodePrivate::from_bytes([n; 32]),
            disco_private: DiscoPrivate::from_bytes([n.wrapping_add(128); 32]),
        };
        let mut seed = [0u8; 32];
        seed[0] = n;
        let mut sock = Magicsock::new(cfg, seed, self.now);
        let (addr, nat) = match edge {
            Edge::Open => (SocketAddr::from(([203, 0, 113, n], 41641)), None),
            Edge::Nat(cfg) => (
                SocketAddr::from(([10, n, 0, 2], 41641)),
                Some(NatState {
                    cfg,
                    public_ip: Ipv4Addr::new(192, 0, 2, n),
                    next_port: 20000 + u16::from(n) * 100,
                    mappings: Vec::new(),
                }),
            ),
        };
        sock.set_own_endpoints(vec![addr], self.now);
        let regions = self.derp_regions();
        sock.set_derp_map(regions, self.now);
        self.hosts.push(Host {
            name: name.to_string(),
            sock,
            addr,
            tailnet_ip: IpAddr::from([100, 64, 0, n]),
            delivered: Vec::new(),
            events: Vec::new(),
            recv_errors: BTreeMap::new(),
            derp_peer_gone: 0,
            edge,
            nat,
            latency,
        });
        self.connect_derp(id);
        self.sync_netmaps();
        self.drain_all();
        id
    }

    /// The netmap entry other hosts see for `id`.
    pub fn peer_config(&self, id: HostId) -> PeerConfig {
        let h = &self.hosts[id];
        PeerConfig {
            node_key: h.sock.node_public(),
            disco_key: h.sock.disco_public(),
            home_derp: h.sock.home_derp(),
            endpoints: h.sock.endpoints().iter().map(|e| e.addr).collect(),
            allowed_ips: vec![IpNet::from(h.tailnet_ip)],
        }
    }

    fn sync_netmaps(&mut self) {
        let cfgs: Vec<PeerConfig> = (0..self.hosts.len()).map(|i| self.peer_config(i)).collect();
        for (i, h) in self.hosts.iter_mut().enumerate() {
            let peers = cfgs
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, c)| c.clone())
                .collect();
            h.sock.set_peers(peers, self.now);
        }
    }

    /// Forgets every mapping of `id`'s NAT and moves its port allocator, as a
    /// NAT reboot or a carrier-grade NAT rebinding does.
    pub fn rebind_nat(&mut self, id: HostId) {
        if let Some(nat) = self.hosts[id].nat.as_mut() {
            nat.mappings.clear();
            nat.next_port = nat.next_port.wrapping_add(5000).max(1024);
        }
    }

    /// Sends an IPv4/UDP packet from `from`'s tailnet address to `to`'s,
    /// through `from`'s TUN. Returns the packet as sent.
    pub fn send_ip(&mut self, from: HostId, to: HostId, payload: &[u8]) -> Vec<u8> {
        let pkt = ipv4_udp(
            self.hosts[from].tailnet_ip,
            self.hosts[to].tailnet_ip,
            40000,
            7,
            payload,
        );
        let now = self.now;
        if let Err(e) = self.hosts[from].sock.handle_ip_packet(&pkt, now) {
            tracing::debug!(host = %self.hosts[from].name, %e, "send failed");
        }
        self.drain(from);
        pkt
    }

    /// Starts a `weft ping` from `from` to `to`; pongs arrive as events on `from`.
    pub fn ping(&mut self, from: HostId, to: HostId) {
        let peer = self.hosts[to].sock.node_public();
        let now = self.now;
        if let Err(e) = self.hosts[from].sock.ping(peer, now) {
            tracing::debug!(host = %self.hosts[from].name, %e, "ping failed");
        }
        self.drain(from);
    }

    /// The current path from `from` to `to`.
    pub fn path(&self, from: HostId, to: HostId) -> Path {
        self.hosts[from]
            .sock
            .path(&self.hosts[to].sock.node_public(), self.now)
    }

    /// Advances to the earliest pending deadline and processes everything due
    /// then. Returns false if nothing is pending at all.
    pub fn step(&mut self) -> bool {
        let next_packet = self.queue.peek().map(|Reverse((t, _))| *t);
        let next_timer = self
            .hosts
            .iter()
            .filter_map(|h| h.sock.poll_timeout())
            .min();
        let Some(next) = [next_packet, next_timer].into_iter().flatten().min() else {
            return false;
        };
        self.now = self.now.max(next);
        while let Some(Reverse((t, _))) = self.queue.peek() {
            if *t > self.now {
                break;
            }
            let Some(Reverse((_, seq))) = self.queue.pop() else {
                break;
            };
            if let Some(d) = self.pending.remove(&seq) {
                self.deliver(d);
            }
        }
        for i in 0..self.hosts.len() {
            if self.hosts[i]
                .sock
                .poll_timeout()
                .is_some_and(|t| t <= self.now)
            {
                let now = self.now;
                self.hosts[i].sock.handle_timeout(now);
                self.drain(i);
            }
        }
        true
    }

    /// Steps until `pred` holds (true) or `limit` of virtual time passes (false).
    pub fn run_until(&mut self, mut pred: impl FnMut(&Sim) -> bool, limit: Duration) -> bool {
        let end = self.now + limit;
        loop {
            if pred(self) {
                return true;
            }
            let next_packet = self.queue.peek().map(|Reverse((t, _))| *t);
            let next_timer = self
                .hosts
                .iter()
                .filter_map(|h| h.sock.poll_timeout())
                .min();
            match [next_packet, next_timer].into_iter().flatten().min() {
                Some(t) if t <= end => {
                    self.step();
                }
                _ => {
                    self.now = end;
                    return pred(self);
                }
            }
        }
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(|_| false, d);
    }

    fn drain_all(&mut self) {
        for i in 0..self.hosts.len() {
            self.drain(i);
        }
    }

    fn drain(&mut self, id: HostId) {
        let mut netmap_dirty = false;
        loop {
            let mut progressed = false;
            while let Some(t) = self.hosts[id].sock.poll_transmit() {
                progressed = true;
                self.transmit(id, t);
            }
            while let Some(p) = self.hosts[id].sock.poll_ip_packet() {
                progressed = true;
                self.hosts[id].delivered.push(p);
            }
            while let Some(e) = self.hosts[id].sock.poll_event() {
                progressed = true;
                tracing::debug!(host = %self.hosts[id].name, t = ?self.elapsed(), ?e, "event");
                if matches!(e, Event::EndpointsChanged(_) | Event::HomeDerpChanged(_)) {
                    netmap_dirty = true;
                }
                self.hosts[id].events.push((self.now, e));
            }
            if !progressed {
                break;
            }
        }
        if netmap_dirty {
            self.sync_netmaps();
            for i in 0..self.hosts.len() {
                if i != id {
                    self.drain(i);
                }
            }
        }
    }

    fn push(&mut self, at: Instant, d: Delivery) {
        self.seq += 1;
        self.pending.insert(self.seq, d);
        self.queue.push(Reverse((at, self.seq)));
    }

    /// One-way latency from the public network to whoever owns `ip`.
    fn latency_to(&self, ip: IpAddr) -> Duration {
        if let Some(r) = self.regions.iter().find(|r| r.stun.ip() == ip) {
            return r.latency;
        }
        self.host_by_public_ip(ip)
            .map_or(Duration::ZERO, |i| self.hosts[i].latency)
    }

    fn host_by_public_ip(&self, ip: IpAddr) -> Option<HostId> {
        self.hosts.iter().position(|h| match &h.nat {
            Some(nat) => IpAddr::V4(nat.public_ip) == ip,
            None => h.addr.ip() == ip,
        })
    }

    fn transmit(&mut self, id: HostId, t: Transmit) {
        let now = self.now;
        match t.dst {
            Destination::Udp(to) => {
                self.stats.udp_sent += 1;
                let rx_latency = self.latency_to(to.ip());
                let h = &mut self.hosts[id];
                let from = match h.nat.as_mut() {
                    Some(nat) => nat.outbound(h.addr, to, now),
                    None => h.addr,
                };
                let at = now + h.latency + rx_latency;
                if self.log_wire {
                    self.wire_log.push(t.payload.clone());
                }
                self.push(
                    at,
                    Delivery::Udp {
                        from,
                        to,
                        payload: t.payload,
                    },
                );
            }
            Destination::Derp { region, peer } => {
                let at = now + self.hosts[id].latency + self.region_latency(region);
                let frame = Frame::SendPacket {
                    dst: peer,
                    packet: Bytes::from(t.payload),
                };
                self.push(
                    at,
                    Delivery::ToDerp {
                        region,
                        conn: ConnId(id as u64),
                        frame,
                    },
                );
            }
        }
    }

    /// Carries out what a region's DERP server core decided.
    fn run_derp(&mut self, region: RegionId) {
        let now = self.now;
        loop {
            let Some(cmd) = self
                .derp
                .get_mut(&region)
                .and_then(ServerCore::poll_command)
            else {
                break;
            };
            match cmd {
                Command::Send { conn, frame } => {
                    let host = conn.0 as usize;
                    let Some(h) = self.hosts.get(host) else {
                        continue;
                    };
                    let at = now + self.region_latency(region) + h.latency;
                    self.push(
                        at,
                        Delivery::FromDerp {
                            region,
                            host,
                            frame,
                        },
                    );
                }
                Command::Close { conn, .. } => {
                    if let Some(core) = self.derp.get_mut(&region) {
                        core.handle_disconnect(conn);
                    }
                }
                Command::Forward { .. } => {}
            }
        }
    }

    /// Disconnects host `id` from every DERP region (its relay connection drops).
    pub fn disconnect_derp(&mut self, id: HostId) {
        let regions: Vec<RegionId> = self.derp.keys().copied().collect();
        for r in regions {
            if let Some(core) = self.derp.get_mut(&r) {
                core.handle_disconnect(ConnId(id as u64));
            }
            self.run_derp(r);
        }
    }

    /// Connects host `id` to every DERP region (done by [`Sim::add_host`]).
    pub fn connect_derp(&mut self, id: HostId) {
        let key = self.hosts[id].sock.node_public();
        let info = ConnInfo {
            remote: self.hosts[id].addr,
            is_mesh_peer: false,
            is_prober: false,
            can_ack_pings: true,
        };
        let regions: Vec<RegionId> = self.derp.keys().copied().collect();
        for r in regions {
            if let Some(core) = self.derp.get_mut(&r) {
                core.handle_connect(ConnId(id as u64), key, info.clone());
            }
            self.run_derp(r);
        }
    }

    /// Statistics of a region's DERP server core.
    pub fn derp_stats(&self, region: RegionId) -> Option<ServerStats> {
        self.derp.get(&region).map(|c| c.stats().clone())
    }

    fn deliver(&mut self, d: Delivery) {
        let now = self.now;
        match d {
            Delivery::ToDerp {
                region,
                conn,
                frame,
            } => {
                if let Some(core) = self.derp.get_mut(&region) {
                    core.handle_frame(conn, frame, now);
                }
                self.run_derp(region);
            }
            Delivery::FromDerp {
                region,
                host,
                frame,
            } => {
                let h = &mut self.hosts[host];
                match frame {
                    Frame::RecvPacket { src, packet } => {
                        self.stats.derp_relayed += 1;
                        let r = h.sock.handle_derp_packet(region, src, &packet, now);
                        record(h, r);
                    }
                    Frame::PeerGone { key, .. } => {
                        h.derp_peer_gone += 1;
                        h.sock.handle_derp_peer_gone(region, key, now);
                    }
                    _ => {}
                }
                self.drain(host);
            }
            Delivery::Udp { from, to, payload } => {
                if let Some(r) = self.regions.iter().find(|r| r.stun == to).copied() {
                    let stun_addr = &r.stun;
                    if let Some(reply) = stun::respond(&payload, from) {
                        let at = now + r.latency + self.latency_to(from.ip());
                        self.push(
                            at,
                            Delivery::Udp {
                                from: *stun_addr,
                                to: from,
                                payload: reply,
                            },
                        );
                    }
                    return;
                }
                let Some(i) = self.host_by_public_ip(to.ip()) else {
                    self.stats.udp_dropped += 1;
                    return;
                };
                let h = &mut self.hosts[i];
                let local = match &h.nat {
                    Some(nat) => nat.inbound(to.port(), from, now),
                    None => Some(to),
                };
                if local != Some(h.addr) {
                    self.stats.udp_dropped += 1;
                    return;
                }
                self.stats.udp_delivered += 1;
                let r = h.sock.handle_datagram(h.addr, from, &payload, now);
                record(h, r);
                self.drain(i);
            }
        }
    }
}

impl Default for Sim {
    fn default() -> Self {
        Self::new()
    }
}

fn record(h: &mut Host, r: Result<(), weft_magicsock::RecvError>) {
    if let Err(e) = r {
        *h.recv_errors.entry(format!("{e:?}")).or_default() += 1;
    }
}

/// Builds an IPv4/UDP packet (checksums zero, which IPv4 allows for UDP).
pub fn ipv4_udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
        return Vec::new();
    };
    let len = 28 + payload.len();
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
    p.extend_from_slice(&s.octets());
    p.extend_from_slice(&d.octets());
    let ulen = (8 + payload.len()) as u16;
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&ulen.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}
