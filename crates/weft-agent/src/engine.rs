//! The data-plane driver: one task that owns the [`Magicsock`] core, the UDP socket, the DERP
//! connections, the packet filter and the TUN device (or a test's channels).
//!
//! It follows the sans-IO contract: every input (UDP datagram, DERP packet, TUN packet,
//! command, timer) is handed to the core with `now`; after each one the driver drains
//! `poll_transmit` (UDP `try_send_to` or the region's DERP sender), `poll_ip_packet`
//! (through the inbound filter to TUN) and `poll_event`, then sleeps until `poll_timeout`.
//! DERP connections run in their own tasks and reach the engine over a bounded channel.
//!
//! # The fast path
//!
//! Bulk traffic moves in batches, without a task hop or an allocation per packet:
//! - TUN → UDP: one TUN read yields a TCP segment of up to 64 KiB already split into packets
//!   ([`crate::sys::TunDevice`], TSO through virtio-net headers); each goes through the
//!   outbound filter and is encrypted by the core straight into a [`UdpTx`] batch, which
//!   leaves in one `sendmsg` with UDP GSO.
//! - UDP → TUN: one `recvmmsg` yields up to 32 messages, each possibly a GRO train of
//!   datagrams ([`UdpRx`]); each is decrypted by the core straight into a [`TunTx`] slot,
//!   checked by the inbound filter, and the batch is written with TCP packets of one flow
//!   coalesced into one write.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::UdpSocket;

use crate::sys::{TunDevice, TunRx, TunTx};
use crate::udp::{UdpIo, UdpRx, UdpTx};
use tokio::sync::{mpsc, oneshot, watch};
use weft_derp::{ClientEvent, ClientOptions, DerpClient, DerpSender, TlsMode};
use weft_filter::{PacketFilter, PacketView, Verdict};
use weft_key::{DiscoPrivate, NodePrivate, NodePublic};
use weft_magicsock::{
    Config, Destination, Event, Magicsock, NetReport, Path, PeerConfig, PeerStatus, RegionId,
};
use weft_netmap::NetworkMap;

/// Batched receives per wake-up before the other inputs get a turn.
const READS_PER_WAKE: usize = 8;
/// MTU assumed for the slots of channel-based TUNs (tests, userspace).
const CHANNEL_MTU: u16 = 1280;
/// DERP packets queued per region while it connects.
const DERP_QUEUE: usize = 32;
/// Delay before redialing a failed home DERP connection.
const DERP_RETRY: Duration = Duration::from_secs(2);
/// A connection to a region other than home is closed after this long without writes.
const DERP_IDLE: Duration = Duration::from_secs(60);
/// How often peer status is republished.
const STATUS_TICK: Duration = Duration::from_secs(1);

/// Packets between the engine and a test's fake TUN (or userspace mode's sink).
#[derive(Debug)]
pub struct TunChannels {
    /// Packets read from TUN (outbound, to peers).
    pub from_tun: mpsc::Receiver<Vec<u8>>,
    /// Packets to write to TUN (inbound, from peers, already filtered).
    pub to_tun: mpsc::Sender<Vec<u8>>,
}

/// The TUN side of the engine.
#[derive(Debug)]
pub enum TunIo {
    /// A kernel TUN device, read and written in batches.
    Device(TunDevice),
    /// In-process channels, one packet at a time (tests, userspace mode).
    Channels(TunChannels),
}

/// Where a ping's result goes.
pub type PingReply = oneshot::Sender<Result<(Path, Duration), String>>;

/// Commands from the backend.
#[derive(Debug)]
pub enum EngineCmd {
    /// Start the data plane with this node key (replacing any previous one), or stop it.
    SetKey(Option<NodePrivate>),
    /// A new network map.
    SetNetmap(Box<NetworkMap>),
    /// Routes this node serves (advertised subnets), which the inbound filter treats as
    /// local, and peers' routes the kernel sends into the TUN, to which no UDP is sent
    /// (a peer endpoint there would carry the tunnel inside itself).
    SetRoutes {
        /// Advertised routes.
        local: Vec<ipnet::IpNet>,
        /// Accepted routes installed into the TUN.
        via_tun: Vec<ipnet::IpNet>,
    },
    /// One disco ping; the reply carries the path and round trip.
    Ping(
        NodePublic,
        oneshot::Sender<Result<(Path, Duration), String>>,
    ),
    /// Run a STUN round now and report it.
    Netcheck(oneshot::Sender<NetReport>),
}

/// What the engine publishes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStatus {
    /// Per-peer paths and counters.
    pub peers: Vec<PeerStatus>,
    /// Our endpoints as `(addr, tailcfg.EndpointType)`.
    pub endpoints: Vec<(SocketAddr, i32)>,
    /// The home DERP region.
    pub home_derp: Option<RegionId>,
    /// The last STUN report.
    pub net_report: Option<NetReport>,
    /// DERP regions with a live connection.
    pub derp_connected: Vec<RegionId>,
    /// Per-packet trouble counted so far.
    pub counters: DataPlaneCounters,
}

/// A handle on the engine task.
#[derive(Debug)]
pub struct Engine {
    /// Commands.
    pub cmds: mpsc::Sender<EngineCmd>,
    /// Published status.
    pub status: watch::Receiver<EngineStatus>,
    /// The UDP socket's local address.
    pub local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Engine {
    /// Binds the UDP socket (`bind`, falling back to a random port if it is taken) and starts
    /// the engine task. `local_ips` are reported as our local endpoints (with the socket's
    /// port); empty means "discover the host's interface addresses".
    pub async fn start(
        bind: SocketAddr,
        local_ips: Vec<IpAddr>,
        disco: DiscoPrivate,
        tun: TunIo,
    ) -> std::io::Result<Engine> {
        let udp = match UdpSocket::bind(bind).await {
            Ok(s) => s,
            Err(e) if bind.port() != 0 => {
                tracing::info!(error = %e, port = bind.port(), "UDP port busy; using a random one");
                UdpSocket::bind(SocketAddr::new(bind.ip(), 0)).await?
            }
            Err(e) => return Err(e),
        };
        let udp = UdpIo::new(udp)?;
        let local_addr = udp.local_addr()?;
        let local_ips = if local_ips.is_empty() {
            if bind.ip().is_unspecified() {
                crate::sys::interface_addrs().await
            } else {
                vec![bind.ip()]
            }
        } else {
            local_ips
        };
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (status_tx, status_rx) = watch::channel(EngineStatus::default());
        let (derp_tx, derp_rx) = mpsc::channel(1024);
        let mtu = match &tun {
            TunIo::Device(d) => d.mtu(),
            TunIo::Channels(_) => CHANNEL_MTU,
        };
        let utx = UdpTx::new(udp.max_segments());
        let tun = match tun {
            TunIo::Device(d) => TunPort::Device(Arc::new(d)),
            TunIo::Channels(c) => TunPort::Channels(c),
        };
        let driver = Driver {
            udp: Arc::new(udp),
            local_addr,
            local_ips,
            disco,
            node: None,
            ms: None,
            filter: PacketFilter::new(),
            local_routes: Vec::new(),
            via_tun: Vec::new(),
            netmap: None,
            dns: crate::dns::Resolver::default(),
            tun,
            derp: BTreeMap::new(),
            derp_tx,
            next_derp_id: 0,
            derp_retry: None,
            pings: Vec::new(),
            netchecks: Vec::new(),
            status_tx,
            stats: DataPlaneCounters::default(),
            utx,
            ttx: TunTx::new(mtu),
        };
        let task = tokio::spawn(driver.run(cmd_rx, derp_rx));
        Ok(Engine {
            cmds: cmd_tx,
            status: status_rx,
            local_addr,
            task,
        })
    }
}

#[derive(Debug)]
enum DerpIn {
    Connected(u64, RegionId, DerpSender),
    Packet(RegionId, NodePublic, Bytes),
    PeerGone(RegionId, NodePublic),
    Closed(u64, RegionId, String),
}

struct DerpConn {
    id: u64,
    sender: Option<DerpSender>,
    queue: VecDeque<(NodePublic, Bytes)>,
    task: tokio::task::JoinHandle<()>,
    last_write: Instant,
}

impl Drop for DerpConn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Per-packet trouble the data plane counted (never fatal; each is also traced), shown by
/// `weft status --json` under `WeftDataPlane`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DataPlaneCounters {
    /// Inbound packets from peers that the packet filter dropped.
    pub filtered_in: u64,
    /// Packets from the host that the outbound pre-checks dropped.
    pub filtered_out: u64,
    /// UDP datagrams that were neither valid WireGuard, disco nor STUN for us.
    pub bad_datagrams: u64,
    /// DERP-relayed packets that were rejected.
    pub bad_derp: u64,
    /// Failed UDP sends.
    pub udp_send_errors: u64,
    /// Failed TUN writes (or a full test channel).
    pub tun_send_errors: u64,
    /// DNS queries to quad-100 answered by the MagicDNS resolver.
    pub dns_answered: u64,
}

enum TunPort {
    Device(Arc<TunDevice>),
    Channels(TunChannels),
}

struct Driver {
    udp: Arc<UdpIo>,
    local_addr: SocketAddr,
    local_ips: Vec<IpAddr>,
    disco: DiscoPrivate,
    node: Option<NodePrivate>,
    ms: Option<Magicsock>,
    filter: PacketFilter,
    /// Advertised routes, local to the filter beside our addresses.
    local_routes: Vec<ipnet::IpNet>,
    /// Accepted routes: UDP to endpoints inside them is not sent.
    via_tun: Vec<ipnet::IpNet>,
    netmap: Option<Box<NetworkMap>>,
    /// MagicDNS (quad-100), rebuilt with every netmap.
    dns: crate::dns::Resolver,
    tun: TunPort,
    derp: BTreeMap<RegionId, DerpConn>,
    derp_tx: mpsc::Sender<DerpIn>,
    next_derp_id: u64,
    derp_retry: Option<Instant>,
    pings: Vec<(NodePublic, PingReply)>,
    netchecks: Vec<oneshot::Sender<NetReport>>,
    status_tx: watch::Sender<EngineStatus>,
    stats: DataPlaneCounters,
    /// Encrypted datagrams waiting for one GSO send.
    utx: UdpTx,
    /// Decrypted packets waiting for one TUN write.
    ttx: TunTx,
}

impl Driver {
    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<EngineCmd>,
        mut derp_rx: mpsc::Receiver<DerpIn>,
    ) {
        let mut tick = tokio::time::interval(STATUS_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let udp = self.udp.clone();
        let mut urx = UdpRx::default();
        let mut dev = match &self.tun {
            TunPort::Device(d) => Some(d.clone()),
            TunPort::Channels(_) => None,
        };
        let mut trx = TunRx::new(dev.as_ref().map_or(CHANNEL_MTU, |d| d.mtu()));
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                r = udp.readable() => match r {
                    Ok(()) => self.on_udp_readable(&udp, &mut urx).await,
                    Err(e) => tracing::debug!(error = %e, "UDP socket failed"),
                },
                r = device_readable(dev.as_deref()) => match (r, dev.as_deref()) {
                    (Ok(()), Some(d)) => self.on_tun_readable(d, &mut trx).await,
                    (Err(e), _) => {
                        // Keep serving disco, DERP and the control plane; only reads stop.
                        tracing::warn!(error = %e, "TUN device failed; no more reads");
                        dev = None;
                    }
                    (Ok(()), None) => {}
                },
                Some(pkt) = channel_recv(&mut self.tun) => {
                    self.outbound(&pkt, Instant::now()).await;
                }
                Some(d) = derp_rx.recv() => self.on_derp(d),
                cmd = cmds.recv() => match cmd {
                    Some(c) => self.on_cmd(c),
                    None => return,
                },
                _ = sleep_until_opt(deadline) => self.on_timeout(),
                _ = tick.tick() => {
                    self.close_idle_derp();
                    self.publish_status();
                }
            }
            self.drain().await;
            self.flush_udp().await;
            self.flush_tun().await;
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let ms = self.ms.as_ref().and_then(Magicsock::poll_timeout);
        match (ms, self.derp_retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Drains the UDP socket in batches: every datagram is decrypted into the TUN batch.
    async fn on_udp_readable(&mut self, udp: &UdpIo, rx: &mut UdpRx) {
        for _ in 0..READS_PER_WAKE {
            let n = match udp.try_recv(rx) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!(error = %e, "UDP receive failed");
                    return;
                }
            };
            let now = Instant::now();
            for i in 0..n {
                let (from, datagrams) = rx.datagrams(i);
                for d in datagrams {
                    if self.ttx.is_full() {
                        self.flush_tun().await;
                    }
                    self.inbound(from, d, now);
                }
            }
        }
    }

    /// One datagram from the network: WireGuard data is decrypted into the next TUN slot and
    /// kept if the inbound filter accepts it; anything else goes through the core's slow path.
    fn inbound(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) {
        let Some(ms) = self.ms.as_mut() else { return };
        let slot = self.ttx.slot();
        match ms.decapsulate_direct(self.local_addr, from, datagram, now, slot) {
            Ok(Some(len)) => match self.filter.check_inbound_bytes(&slot[..len], now) {
                Verdict::Accept(_) => self.ttx.commit(len),
                Verdict::Drop(d) => {
                    self.stats.filtered_in += 1;
                    tracing::trace!(?d, "inbound packet dropped by filter");
                }
            },
            Ok(None) => {}
            Err(e) => {
                self.stats.bad_datagrams += 1;
                tracing::trace!(%from, %e, "dropping datagram");
            }
        }
    }

    /// Drains the TUN device: every packet it splits a read into is encrypted into the UDP
    /// batch.
    async fn on_tun_readable(&mut self, dev: &TunDevice, rx: &mut TunRx) {
        for _ in 0..READS_PER_WAKE {
            match dev.try_recv(rx) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!(error = %e, "TUN read failed");
                    return;
                }
            }
            let now = Instant::now();
            for i in 0..rx.len() {
                self.outbound(rx.packet(i), now).await;
            }
        }
    }

    /// One packet from the host to a peer: outbound filter (connection tracking), then
    /// encrypted into the UDP batch when the peer has a direct path, or handed to the core.
    async fn outbound(&mut self, pkt: &[u8], now: Instant) {
        if self.ms.is_none() {
            return;
        }
        if crate::dns::is_quad100(pkt) {
            self.answer_quad100(pkt).await;
            return;
        }
        if let Ok(view) = PacketView::parse(pkt) {
            if let Verdict::Drop(d) = self.filter.track_outbound(&view, now) {
                self.stats.filtered_out += 1;
                tracing::trace!(?d, "outbound packet dropped by pre-checks");
                return;
            }
        }
        if self.utx.is_full() {
            self.flush_udp().await;
        }
        let Some(ms) = self.ms.as_mut() else { return };
        let before = self.utx.len();
        match ms.encapsulate_direct(pkt, now, self.utx.spare()) {
            Ok(Some((addr, n))) => {
                if !self.utx.push(addr, n) {
                    self.flush_udp().await;
                    self.utx.carry(before, addr, n);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::trace!(%e, "cannot send packet from TUN"),
        }
    }

    /// A packet to quad-100: DNS queries are answered into the TUN batch; anything else
    /// there is dropped (no peer owns the address).
    async fn answer_quad100(&mut self, pkt: &[u8]) {
        let Some(reply) = self.dns.handle_packet(pkt) else {
            tracing::trace!("dropping packet to quad-100 that is no DNS query");
            return;
        };
        if self.ttx.is_full() {
            self.flush_tun().await;
        }
        if self.ttx.push(&reply) {
            self.stats.dns_answered += 1;
        }
    }

    async fn flush_udp(&mut self) {
        if self.utx.is_empty() {
            return;
        }
        if let Err(e) = self.udp.send_batch(&mut self.utx).await {
            self.stats.udp_send_errors += 1;
            tracing::trace!(%e, "UDP send failed");
        }
    }

    async fn flush_tun(&mut self) {
        if self.ttx.is_empty() {
            return;
        }
        match &mut self.tun {
            TunPort::Device(d) => {
                if let Err(e) = d.send(&mut self.ttx).await {
                    self.stats.tun_send_errors += 1;
                    tracing::debug!(error = %e, "TUN write failed");
                }
            }
            TunPort::Channels(c) => {
                for p in self.ttx.packets() {
                    if c.to_tun.try_send(p.to_vec()).is_err() {
                        self.stats.tun_send_errors += 1;
                    }
                }
                self.ttx.clear();
            }
        }
    }

    fn on_derp(&mut self, d: DerpIn) {
        match d {
            DerpIn::Connected(id, region, sender) => {
                tracing::info!(region, "DERP connected");
                if let Some(c) = self.derp.get_mut(&region).filter(|c| c.id == id) {
                    for (dst, p) in c.queue.drain(..) {
                        let _ = sender.try_send(dst, p);
                    }
                    c.sender = Some(sender);
                }
                self.publish_status();
            }
            DerpIn::Packet(region, src, packet) => {
                let Some(ms) = self.ms.as_mut() else { return };
                if let Err(e) = ms.handle_derp_packet(region, src, &packet, Instant::now()) {
                    self.stats.bad_derp += 1;
                    tracing::trace!(region, src = %src.short(), %e, "dropping DERP packet");
                }
            }
            DerpIn::PeerGone(region, peer) => {
                tracing::debug!(region, peer = %peer.short(), "DERP: peer gone");
                if let Some(ms) = self.ms.as_mut() {
                    ms.handle_derp_peer_gone(region, peer, Instant::now());
                }
            }
            DerpIn::Closed(id, region, why) => {
                if self.derp.get(&region).is_none_or(|c| c.id != id) {
                    return;
                }
                tracing::info!(region, %why, "DERP connection closed");
                self.derp.remove(&region);
                if self.ms.as_ref().and_then(Magicsock::home_derp) == Some(region) {
                    self.derp_retry = Some(Instant::now() + DERP_RETRY);
                }
                self.publish_status();
            }
        }
    }

    fn on_cmd(&mut self, c: EngineCmd) {
        let now = Instant::now();
        match c {
            EngineCmd::SetKey(key) => {
                let same = match (&key, &self.node) {
                    (Some(a), Some(b)) => a.public() == b.public(),
                    (None, None) => true,
                    _ => false,
                };
                if same {
                    return;
                }
                self.derp.clear();
                self.ms = key.as_ref().map(|k| {
                    let cfg = Config {
                        node_private: k.clone(),
                        disco_private: self.disco.clone(),
                    };
                    let mut ms = Magicsock::new(cfg, weft_key::random_bytes(), now);
                    let port = self.local_addr.port();
                    ms.set_own_endpoints(
                        self.local_ips
                            .iter()
                            .map(|ip| SocketAddr::new(*ip, port))
                            .collect(),
                        now,
                    );
                    ms
                });
                self.node = key;
                if let Some(nm) = self.netmap.take() {
                    self.apply_netmap(nm, now);
                }
                self.publish_status();
            }
            EngineCmd::SetNetmap(nm) => self.apply_netmap(nm, now),
            EngineCmd::SetRoutes { local, via_tun } => {
                self.via_tun = via_tun;
                if self.local_routes == local {
                    return;
                }
                self.local_routes = local;
                if let Some(nm) = self.netmap.take() {
                    self.set_filter(&nm);
                    self.netmap = Some(nm);
                }
            }
            EngineCmd::Ping(peer, reply) => {
                let Some(ms) = self.ms.as_mut() else {
                    let _ = reply.send(Err("weft is not running".into()));
                    return;
                };
                match ms.ping(peer, now) {
                    Ok(()) => {
                        self.pings.retain(|(_, r)| !r.is_closed());
                        self.pings.push((peer, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
            EngineCmd::Netcheck(reply) => {
                if let Some(ms) = self.ms.as_mut() {
                    ms.rebind(now);
                }
                self.netchecks.retain(|r| !r.is_closed());
                self.netchecks.push(reply);
            }
        }
    }

    fn set_filter(&mut self, nm: &NetworkMap) {
        let mut local = nm.addresses().to_vec();
        local.extend(self.local_routes.iter().copied());
        if let Err(e) = self.filter.set_rules(&nm.packet_filter, &local) {
            tracing::warn!(%e, "packet filter rejected; inbound traffic stays denied");
        }
    }

    fn apply_netmap(&mut self, nm: Box<NetworkMap>, now: Instant) {
        self.set_filter(&nm);
        self.dns = crate::dns::Resolver::from_netmap(&nm);
        if let Some(ms) = self.ms.as_mut() {
            ms.set_derp_map(derp_regions(&nm), now);
            ms.set_peers(peer_configs(&nm), now);
        }
        let wanted: Vec<RegionId> = nm
            .derp_map
            .regions
            .keys()
            .filter_map(|r| u16::try_from(*r).ok())
            .collect();
        self.derp.retain(|r, _| wanted.contains(r));
        self.netmap = Some(nm);
    }

    fn on_timeout(&mut self) {
        let now = Instant::now();
        if self.derp_retry.is_some_and(|t| t <= now) {
            self.derp_retry = None;
            if let Some(home) = self.ms.as_ref().and_then(Magicsock::home_derp) {
                self.ensure_derp(home, true);
            }
        }
        if let Some(ms) = self.ms.as_mut() {
            ms.handle_timeout(now);
        }
    }

    async fn drain(&mut self) {
        let now = Instant::now();
        loop {
            let Some(ms) = self.ms.as_mut() else { return };
            if let Some(t) = ms.poll_transmit() {
                match t.dst {
                    Destination::Udp(addr)
                        if self.via_tun.iter().any(|n| n.contains(&addr.ip())) =>
                    {
                        tracing::trace!(%addr, "not sending UDP to an address routed into the TUN");
                    }
                    Destination::Udp(addr) => {
                        if let Err(e) = self.udp.try_send_to(&t.payload, addr) {
                            tracing::trace!(%addr, %e, "UDP send failed");
                        }
                    }
                    Destination::Derp { region, peer } => {
                        self.derp_send(region, peer, Bytes::from(t.payload))
                    }
                }
                continue;
            }
            if let Some(p) = ms.poll_ip_packet() {
                match self.filter.check_inbound_bytes(&p, now) {
                    Verdict::Accept(_) => {
                        if self.ttx.is_full() {
                            self.flush_tun().await;
                        }
                        self.ttx.push(&p);
                    }
                    Verdict::Drop(d) => {
                        self.stats.filtered_in += 1;
                        tracing::trace!(?d, "inbound packet dropped by filter");
                    }
                }
                continue;
            }
            if let Some(ev) = ms.poll_event() {
                self.on_event(ev);
                continue;
            }
            return;
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::PathChanged { peer, path } => {
                tracing::info!(peer = %peer.short(), ?path, "path changed");
                self.publish_status();
            }
            Event::EndpointsChanged(_) => self.publish_status(),
            Event::HomeDerpChanged(region) => {
                tracing::info!(region, "home DERP region");
                let old: Vec<RegionId> =
                    self.derp.keys().copied().filter(|r| *r != region).collect();
                for r in old {
                    if let Some(s) = self.derp.get(&r).and_then(|c| c.sender.clone()) {
                        tokio::spawn(async move { s.note_preferred(false).await });
                    }
                }
                match self.derp.get(&region).and_then(|c| c.sender.clone()) {
                    Some(s) => {
                        tokio::spawn(async move { s.note_preferred(true).await });
                    }
                    None => self.ensure_derp(region, true),
                }
                self.publish_status();
            }
            Event::NetReport(r) => {
                for reply in self.netchecks.drain(..) {
                    let _ = reply.send(r.clone());
                }
                self.status_tx.send_modify(|s| s.net_report = Some(r));
                self.publish_status();
            }
            Event::Pong {
                peer, via, latency, ..
            } => {
                if let Some(i) = self
                    .pings
                    .iter()
                    .position(|(p, r)| *p == peer && !r.is_closed())
                {
                    let (_, reply) = self.pings.remove(i);
                    let _ = reply.send(Ok((via, latency)));
                }
            }
        }
    }

    fn derp_send(&mut self, region: RegionId, peer: NodePublic, payload: Bytes) {
        self.ensure_derp(region, false);
        let Some(c) = self.derp.get_mut(&region) else {
            return;
        };
        c.last_write = Instant::now();
        match &c.sender {
            Some(s) => {
                if !s.try_send(peer, payload) {
                    tracing::trace!(region, "DERP send queue full; dropping");
                }
            }
            None => {
                if c.queue.len() >= DERP_QUEUE {
                    c.queue.pop_front();
                }
                c.queue.push_back((peer, payload));
            }
        }
    }

    fn ensure_derp(&mut self, region: RegionId, preferred: bool) {
        if self.derp.contains_key(&region) {
            return;
        }
        let (Some(node), Some(nm)) = (self.node.clone(), self.netmap.as_ref()) else {
            return;
        };
        let Some((url, opts)) = derp_dial(nm, region, preferred) else {
            tracing::debug!(region, "no DERP node to dial in region");
            return;
        };
        let tx = self.derp_tx.clone();
        self.next_derp_id += 1;
        let id = self.next_derp_id;
        let task = tokio::spawn(derp_task(id, region, url, node, opts, tx));
        self.derp.insert(
            region,
            DerpConn {
                id,
                sender: None,
                queue: VecDeque::new(),
                task,
                last_write: Instant::now(),
            },
        );
    }

    /// Closes connections to regions other than home that carried no writes for
    /// [`DERP_IDLE`] (they are redialled on the next packet).
    fn close_idle_derp(&mut self) {
        let home = self.ms.as_ref().and_then(Magicsock::home_derp);
        let now = Instant::now();
        self.derp.retain(|r, c| {
            let keep = Some(*r) == home || now.duration_since(c.last_write) < DERP_IDLE;
            if !keep {
                tracing::debug!(region = *r, "closing idle DERP connection");
            }
            keep
        });
    }

    fn publish_status(&mut self) {
        let now = Instant::now();
        let (peers, endpoints, home) = match &self.ms {
            Some(ms) => (
                ms.peer_status(now),
                ms.endpoints()
                    .iter()
                    .map(|e| (e.addr, e.kind as i32))
                    .collect(),
                ms.home_derp(),
            ),
            None => (Vec::new(), Vec::new(), None),
        };
        let derp_connected: Vec<RegionId> = self
            .derp
            .iter()
            .filter(|(_, c)| c.sender.is_some())
            .map(|(r, _)| *r)
            .collect();
        self.status_tx.send_if_modified(|s| {
            let next = EngineStatus {
                peers,
                endpoints,
                home_derp: home,
                net_report: s.net_report.clone(),
                derp_connected,
                counters: self.stats,
            };
            if *s == next {
                return false;
            }
            *s = next;
            true
        });
    }
}

async fn derp_task(
    id: u64,
    region: RegionId,
    url: String,
    node: NodePrivate,
    opts: ClientOptions,
    tx: mpsc::Sender<DerpIn>,
) {
    let mut client = match DerpClient::connect(&url, node, opts).await {
        Ok(c) => c,
        Err(e) => {
            let _ = tx
                .send(DerpIn::Closed(id, region, format!("connect {url}: {e}")))
                .await;
            return;
        }
    };
    if tx
        .send(DerpIn::Connected(id, region, client.sender()))
        .await
        .is_err()
    {
        return;
    }
    loop {
        let msg = match client.recv_event().await {
            Ok(ClientEvent::Packet { src, packet }) => DerpIn::Packet(region, src, packet),
            Ok(ClientEvent::PeerGone { key, .. }) => DerpIn::PeerGone(region, key),
            Ok(_) => continue,
            Err(e) => {
                let _ = tx.send(DerpIn::Closed(id, region, e.to_string())).await;
                return;
            }
        };
        if tx.send(msg).await.is_err() {
            return;
        }
    }
}

async fn device_readable(dev: Option<&TunDevice>) -> std::io::Result<()> {
    match dev {
        Some(d) => d.readable().await,
        None => std::future::pending().await,
    }
}

async fn channel_recv(tun: &mut TunPort) -> Option<Vec<u8>> {
    match tun {
        TunPort::Channels(c) => c.from_tun.recv().await,
        TunPort::Device(_) => std::future::pending().await,
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

/// Peers the data plane can use: those with a disco key.
pub fn peer_configs(nm: &NetworkMap) -> Vec<PeerConfig> {
    nm.peers
        .iter()
        .filter(|p| !p.disco_key.is_zero() && !p.key.is_zero())
        .map(|p| PeerConfig {
            node_key: p.key,
            disco_key: p.disco_key,
            home_derp: u16::try_from(p.home_derp).ok().filter(|r| *r != 0),
            endpoints: p.endpoints.clone(),
            allowed_ips: p.allowed_ips.clone().unwrap_or_else(|| p.addresses.clone()),
        })
        .collect()
}

/// The regions' STUN servers, for magicsock.
pub fn derp_regions(nm: &NetworkMap) -> Vec<weft_magicsock::DerpRegion> {
    nm.derp_map
        .regions
        .values()
        .filter(|r| !r.no_measure_no_home && !r.avoid)
        .filter_map(|r| {
            let id = u16::try_from(r.region_id).ok()?;
            let stun = r
                .nodes
                .iter()
                .filter(|n| n.stun_port >= 0)
                .filter_map(|n| {
                    let port = if n.stun_port == 0 {
                        3478
                    } else {
                        n.stun_port as u16
                    };
                    let ip = [&n.stun_test_ip, &n.ipv4, &n.host_name]
                        .into_iter()
                        .find_map(|s| s.parse::<IpAddr>().ok())?;
                    Some(SocketAddr::new(ip, port))
                })
                .collect();
            Some(weft_magicsock::DerpRegion { id, stun })
        })
        .collect()
}

/// URL and options to dial a region's first DERP node.
pub fn derp_dial(
    nm: &NetworkMap,
    region: RegionId,
    preferred: bool,
) -> Option<(String, ClientOptions)> {
    let r = nm.derp_map.regions.get(&i32::from(region))?;
    let n = r.nodes.iter().find(|n| !n.stun_only)?;
    let plain = std::env::var("WEFT_DERP_HTTP").is_ok_and(|v| v == "1")
        || std::env::var("TS_DEBUG_USE_DERP_HTTP").is_ok_and(|v| v == "1");
    let scheme = if plain { "http" } else { "https" };
    let port = match n.derp_port {
        p if p > 0 => p as u16,
        _ if plain => 80,
        _ => 443,
    };
    let host = if n.host_name.contains(':') {
        format!("[{}]", n.host_name)
    } else {
        n.host_name.clone()
    };
    let url = format!("{scheme}://{host}:{port}/derp");
    let dial_addr = n
        .ipv4
        .parse::<std::net::Ipv4Addr>()
        .ok()
        .map(|ip| format!("{ip}:{port}"))
        .or_else(|| {
            n.ipv6
                .parse::<std::net::Ipv6Addr>()
                .ok()
                .map(|ip| format!("[{ip}]:{port}"))
        });
    let tls = if n.insecure_for_tests {
        TlsMode::InsecureForTests
    } else if let Some(pin) = n
        .cert_name
        .strip_prefix("sha256-raw:")
        .and_then(parse_hex32)
    {
        TlsMode::PinnedSha256(pin)
    } else {
        TlsMode::Roots(Arc::new(crate::sys::system_roots()))
    };
    let opts = ClientOptions {
        tls,
        dial_addr,
        preferred,
        app_name: "weft".into(),
        ..ClientOptions::default()
    };
    Some((url, opts))
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_tailcfg::{DerpMap, DerpNode, DerpRegion, Node};

    fn nm_with(region: DerpRegion) -> NetworkMap {
        let mut s = weft_netmap::MapSession::new();
        let mut dm = DerpMap::default();
        dm.regions.insert(region.region_id, region);
        let mut peer = Node {
            id: 2,
            key: NodePublic::from_bytes([2; 32]),
            ..Node::default()
        };
        peer.addresses = vec!["100.64.0.2/32".parse().unwrap()];
        let no_disco = Node {
            id: 3,
            key: NodePublic::from_bytes([3; 32]),
            ..Node::default()
        };
        let mut with_disco = peer.clone();
        with_disco.disco_key = weft_key::DiscoPublic::from_bytes([9; 32]);
        with_disco.home_derp = 900;
        s.handle_map_response(
            weft_tailcfg::MapResponse {
                node: Some(Node {
                    id: 1,
                    ..Node::default()
                }),
                derp_map: Some(dm),
                peers: vec![with_disco, no_disco],
                ..Default::default()
            },
            std::time::SystemTime::now(),
        )
        .unwrap();
        s.netmap(std::time::SystemTime::now()).unwrap()
    }

    fn region() -> DerpRegion {
        DerpRegion {
            region_id: 900,
            region_code: "test".into(),
            nodes: vec![DerpNode {
                name: "900a".into(),
                region_id: 900,
                host_name: "derp.test".into(),
                ipv4: "127.0.0.1".into(),
                stun_port: 3479,
                derp_port: 3341,
                insecure_for_tests: true,
                ..DerpNode::default()
            }],
            ..DerpRegion::default()
        }
    }

    #[test]
    fn peers_without_disco_keys_are_left_out_and_allowed_ips_default_to_addresses() {
        let nm = nm_with(region());
        let peers = peer_configs(&nm);
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].home_derp, Some(900));
        assert_eq!(
            peers[0].allowed_ips,
            vec!["100.64.0.2/32".parse::<ipnet::IpNet>().unwrap()]
        );
    }

    #[test]
    fn derp_region_stun_and_dial_use_the_ip_literal_and_ports() {
        let nm = nm_with(region());
        let r = derp_regions(&nm);
        assert_eq!(r[0].stun, vec!["127.0.0.1:3479".parse().unwrap()]);
        let (url, opts) = derp_dial(&nm, 900, true).unwrap();
        assert_eq!(url, "https://derp.test:3341/derp");
        assert_eq!(opts.dial_addr.as_deref(), Some("127.0.0.1:3341"));
        assert!(matches!(opts.tls, TlsMode::InsecureForTests));
        assert!(opts.preferred);
        assert!(derp_dial(&nm, 901, false).is_none());
    }

    #[test]
    fn pinned_cert_name_selects_pinning() {
        let mut r = region();
        r.nodes[0].insecure_for_tests = false;
        r.nodes[0].cert_name = format!("sha256-raw:{}", "ab".repeat(32));
        let (_, opts) = derp_dial(&nm_with(r), 900, false).unwrap();
        assert!(matches!(opts.tls, TlsMode::PinnedSha256(p) if p == [0xab; 32]));
    }
}
