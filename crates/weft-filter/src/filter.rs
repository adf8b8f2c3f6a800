//! Compiled filter rules and the per-packet decision.

use crate::packet::{proto, tcp_flags, PacketView, ParseError, Transport};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use weft_tailcfg::FilterRule;

/// Why a packet was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Zero-length packet.
    Empty,
    /// Non-first IP fragment (the first fragment carried the decision).
    Fragment,
    /// A rule matched.
    Rule,
    /// TCP without a lone SYN: part of an established or outbound connection.
    TcpNonSyn,
    /// ICMP echo reply or error.
    IcmpResponse,
    /// Reply to a flow this node opened.
    Flow,
    /// Tailscale Message Protocol.
    Tsmp,
    /// Outbound packets are never filtered.
    Outbound,
}

/// Why a packet was dropped. Cheap to copy and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// The bytes are not a valid IP packet.
    Malformed(ParseError),
    /// Multicast destination.
    Multicast,
    /// Link-local unicast destination.
    LinkLocal,
    /// The destination is not one of this node's addresses or routes.
    NotLocal,
    /// No rule allows it (default deny).
    NoRule,
    /// No filter installed yet (before the first netmap).
    NoFilter,
}

/// The decision for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through.
    Accept(Accept),
    /// Discard it.
    Drop(Drop),
}

impl Verdict {
    /// True for [`Verdict::Accept`].
    pub fn is_accept(self) -> bool {
        matches!(self, Verdict::Accept(_))
    }
}

/// A problem in the rules handed to [`Matcher::new`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// A deprecated `SrcBits`/`Bits` field is present: the whole filter is rejected.
    #[error("deprecated SrcBits/Bits field present")]
    Deprecated,
}

#[derive(Debug, Clone)]
struct Match {
    protos: [u64; 4],
    srcs: Vec<(u128, u128)>,
    /// (first, last, port first, port last)
    dsts: Vec<(u128, u128, u16, u16)>,
}

impl Match {
    fn has_proto(&self, p: u8) -> bool {
        self.protos[usize::from(p / 64)] & (1 << (p % 64)) != 0
    }
    fn src_contains(&self, a: u128) -> bool {
        self.srcs.iter().any(|&(lo, hi)| lo <= a && a <= hi)
    }
}

/// `[FilterRule]` compiled for fast matching, plus this node's local networks.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    v4: Vec<Match>,
    v6: Vec<Match>,
    local4: Vec<(u128, u128)>,
    local6: Vec<(u128, u128)>,
    bad_entries: usize,
}

fn key(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

fn net_range(n: &IpNet) -> (bool, u128, u128) {
    match n {
        IpNet::V4(n) => (
            false,
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        ),
        IpNet::V6(n) => (true, u128::from(n.network()), u128::from(n.broadcast())),
    }
}

/// Parses one `SrcIPs`/`DstPorts.IP` entry into (is_v6, first, last) ranges.
fn parse_entry(s: &str) -> Option<Vec<(bool, u128, u128)>> {
    if s == "*" {
        return Some(vec![(false, 0, u128::from(u32::MAX)), (true, 0, u128::MAX)]);
    }
    if s.contains('/') {
        let n: IpNet = s.parse().ok()?;
        if n.trunc() != n {
            return None;
        }
        return Some(vec![net_range(&n)]);
    }
    if let Some((a, b)) = s.split_once('-') {
        let (fa, a) = key(a.parse().ok()?);
        let (fb, b) = key(b.parse().ok()?);
        if fa != fb || a > b {
            return None;
        }
        return Some(vec![(fa, a, b)]);
    }
    let (f, a) = key(s.parse().ok()?);
    Some(vec![(f, a, a)])
}

impl Matcher {
    /// Compiles rules. `local_nets` are this node's addresses and the routes it serves
    /// (packets to anything else are dropped). Unparseable entries are skipped and counted.
    pub fn new(rules: &[FilterRule], local_nets: &[IpNet]) -> Result<Matcher, RuleError> {
        let mut m = Matcher::default();
        for n in local_nets {
            let (v6, a, b) = net_range(n);
            if v6 {
                m.local6.push((a, b));
            } else {
                m.local4.push((a, b));
            }
        }
        for r in rules {
            if r.src_bits.is_some() || r.dst_ports.iter().any(|d| d.bits.is_some()) {
                return Err(RuleError::Deprecated);
            }
            if r.dst_ports.is_empty() {
                continue; // capability grants carry no packet decision
            }
            let mut protos = [0u64; 4];
            if r.ip_proto.is_empty() {
                for p in [proto::TCP, proto::UDP, proto::ICMP4, proto::ICMP6] {
                    protos[usize::from(p / 64)] |= 1 << (p % 64);
                }
            } else {
                for &p in &r.ip_proto {
                    if let Ok(p) = u8::try_from(p) {
                        protos[usize::from(p / 64)] |= 1 << (p % 64);
                    }
                }
            }
            let mut fam = [
                Match {
                    protos,
                    srcs: Vec::new(),
                    dsts: Vec::new(),
                },
                Match {
                    protos,
                    srcs: Vec::new(),
                    dsts: Vec::new(),
                },
            ];
            for s in &r.src_ips {
                if s.starts_with("cap:") {
                    continue; // node capabilities are not known to this engine
                }
                match parse_entry(s) {
                    Some(rs) => {
                        for (v6, a, b) in rs {
                            fam[usize::from(v6)].srcs.push((a, b));
                        }
                    }
                    None => m.bad_entries += 1,
                }
            }
            for d in &r.dst_ports {
                match parse_entry(&d.ip) {
                    Some(rs) => {
                        for (v6, a, b) in rs {
                            fam[usize::from(v6)]
                                .dsts
                                .push((a, b, d.ports.first, d.ports.last));
                        }
                    }
                    None => m.bad_entries += 1,
                }
            }
            let [f4, f6] = fam;
            if !f4.srcs.is_empty() && !f4.dsts.is_empty() {
                m.v4.push(f4);
            }
            if !f6.srcs.is_empty() && !f6.dsts.is_empty() {
                m.v6.push(f6);
            }
        }
        Ok(m)
    }

    /// How many `SrcIPs`/`DstPorts` entries could not be parsed and were skipped.
    pub fn bad_entries(&self) -> usize {
        self.bad_entries
    }

    fn is_local(&self, dst: IpAddr) -> bool {
        let (v6, a) = key(dst);
        let l = if v6 { &self.local6 } else { &self.local4 };
        l.iter().any(|&(lo, hi)| lo <= a && a <= hi)
    }

    fn family(&self, ip: IpAddr) -> &[Match] {
        if ip.is_ipv6() {
            &self.v6
        } else {
            &self.v4
        }
    }

    /// Full match: protocol, source, destination and port.
    fn matches(&self, p: &PacketView<'_>) -> bool {
        let (_, s) = key(p.src);
        let (_, d) = key(p.dst);
        let port = p.dst_port();
        self.family(p.dst).iter().any(|m| {
            m.has_proto(p.proto)
                && m.src_contains(s)
                && m.dsts
                    .iter()
                    .any(|&(lo, hi, pf, pl)| lo <= d && d <= hi && pf <= port && port <= pl)
        })
    }

    /// Source and destination only (ICMP: "if any port is open to an IP, allow ICMP to it").
    fn matches_ips_only(&self, p: &PacketView<'_>) -> bool {
        let (_, s) = key(p.src);
        let (_, d) = key(p.dst);
        self.family(p.dst)
            .iter()
            .any(|m| m.src_contains(s) && m.dsts.iter().any(|&(lo, hi, _, _)| lo <= d && d <= hi))
    }

    /// Protocol, source and a destination open on every port (protocols without ports).
    fn matches_all_ports(&self, p: &PacketView<'_>) -> bool {
        let (_, s) = key(p.src);
        let (_, d) = key(p.dst);
        self.family(p.dst).iter().any(|m| {
            m.has_proto(p.proto)
                && m.src_contains(s)
                && m.dsts
                    .iter()
                    .any(|&(lo, hi, pf, pl)| lo <= d && d <= hi && pf == 0 && pl == u16::MAX)
        })
    }

    /// The stateless part of the inbound decision; `flow_hit` says whether the reversed
    /// tuple is in the flow table (consulted for UDP and SCTP only).
    pub fn decide_inbound(&self, p: &PacketView<'_>, flow_hit: impl FnOnce() -> bool) -> Verdict {
        if let Some(v) = precheck(p) {
            return v;
        }
        if !self.is_local(p.dst) {
            return Verdict::Drop(Drop::NotLocal);
        }
        let ok = match (p.proto, p.transport) {
            (proto::ICMP4 | proto::ICMP6, Transport::Icmp { kind, .. }) => {
                if icmp_is_response(p.proto, kind) {
                    return Verdict::Accept(Accept::IcmpResponse);
                }
                self.matches_ips_only(p)
            }
            (proto::TCP, Transport::Tcp { flags, .. }) => {
                if flags & (tcp_flags::SYN | tcp_flags::ACK) != tcp_flags::SYN {
                    return Verdict::Accept(Accept::TcpNonSyn);
                }
                self.matches(p)
            }
            (proto::UDP | proto::SCTP, _) => {
                if flow_hit() {
                    return Verdict::Accept(Accept::Flow);
                }
                self.matches(p)
            }
            (proto::TSMP, _) => return Verdict::Accept(Accept::Tsmp),
            _ => self.matches_all_ports(p),
        };
        if ok {
            Verdict::Accept(Accept::Rule)
        } else {
            Verdict::Drop(Drop::NoRule)
        }
    }
}

fn icmp_is_response(proto_num: u8, kind: u8) -> bool {
    if proto_num == proto::ICMP4 {
        // echo reply, destination unreachable, source quench, redirect, time exceeded, parameter problem
        matches!(kind, 0 | 3 | 4 | 5 | 11 | 12)
    } else {
        // errors are < 128; echo reply is 129
        kind < 128 || kind == 129
    }
}

fn precheck(p: &PacketView<'_>) -> Option<Verdict> {
    let multicast = match p.dst {
        IpAddr::V4(a) => a.is_multicast() || a.is_broadcast(),
        IpAddr::V6(a) => a.is_multicast(),
    };
    if multicast {
        return Some(Verdict::Drop(Drop::Multicast));
    }
    let link_local = match p.dst {
        IpAddr::V4(a) => a.is_link_local() && a.octets() != [169, 254, 169, 254],
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    };
    if link_local {
        return Some(Verdict::Drop(Drop::LinkLocal));
    }
    if p.transport == Transport::Fragment {
        return Some(Verdict::Accept(Accept::Fragment));
    }
    None
}

/// A 5-tuple as an inbound reply would carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct FlowKey {
    proto: u8,
    src: IpAddr,
    src_port: u16,
    dst: IpAddr,
    dst_port: u16,
}

/// Bounded table of outbound UDP/SCTP flows whose replies are let in: least recently used
/// entries are evicted at capacity, idle entries expire.
#[derive(Debug, Clone)]
pub struct FlowTable {
    capacity: usize,
    idle: Duration,
    tick: u64,
    by_key: BTreeMap<FlowKey, (u64, Instant)>,
    by_age: BTreeMap<u64, FlowKey>,
}

impl FlowTable {
    /// A table of at most `capacity` flows, each forgotten after `idle` without traffic.
    pub fn new(capacity: usize, idle: Duration) -> Self {
        FlowTable {
            capacity: capacity.max(1),
            idle,
            tick: 0,
            by_key: BTreeMap::new(),
            by_age: BTreeMap::new(),
        }
    }

    fn insert(&mut self, k: FlowKey, now: Instant) {
        self.tick += 1;
        if let Some((old_tick, _)) = self.by_key.insert(k, (self.tick, now)) {
            self.by_age.remove(&old_tick);
        }
        self.by_age.insert(self.tick, k);
        while self.by_key.len() > self.capacity {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.by_key.remove(&oldest);
        }
    }

    fn contains(&self, k: &FlowKey, now: Instant) -> bool {
        self.by_key
            .get(k)
            .is_some_and(|&(_, seen)| now.saturating_duration_since(seen) <= self.idle)
    }

    /// Number of tracked flows (including expired ones not yet evicted).
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// True if no flow is tracked.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// Tailscale's flow table size.
pub const DEFAULT_FLOWS: usize = 512;
/// How long an idle UDP flow keeps its return path open.
pub const DEFAULT_FLOW_IDLE: Duration = Duration::from_secs(120);

/// The node's packet filter: the current [`Matcher`] (replaceable live) and the flow table
/// (kept across replacements). Inbound is default-deny; before the first
/// [`PacketFilter::set_matcher`] every inbound packet is dropped.
#[derive(Debug, Clone)]
pub struct PacketFilter {
    matcher: Option<Matcher>,
    flows: FlowTable,
}

impl Default for PacketFilter {
    fn default() -> Self {
        Self::new()
    }
}

impl PacketFilter {
    /// A filter with no rules yet (drops all inbound) and a default flow table.
    pub fn new() -> Self {
        PacketFilter {
            matcher: None,
            flows: FlowTable::new(DEFAULT_FLOWS, DEFAULT_FLOW_IDLE),
        }
    }

    /// Replaces the rules; tracked flows survive.
    pub fn set_matcher(&mut self, m: Matcher) {
        self.matcher = Some(m);
    }

    /// Compiles and installs rules from a netmap.
    pub fn set_rules(
        &mut self,
        rules: &[FilterRule],
        local_nets: &[IpNet],
    ) -> Result<(), RuleError> {
        self.set_matcher(Matcher::new(rules, local_nets)?);
        Ok(())
    }

    /// The flow table.
    pub fn flows(&self) -> &FlowTable {
        &self.flows
    }

    /// Decides on a packet from a peer to this node (or to a route it serves).
    pub fn check_inbound(&self, p: &PacketView<'_>, now: Instant) -> Verdict {
        let Some(m) = &self.matcher else {
            return Verdict::Drop(Drop::NoFilter);
        };
        m.decide_inbound(p, || {
            self.flows.contains(
                &FlowKey {
                    proto: p.proto,
                    src: p.src,
                    src_port: p.src_port(),
                    dst: p.dst,
                    dst_port: p.dst_port(),
                },
                now,
            )
        })
    }

    /// Parses and decides on raw inbound bytes (empty = accept, unparseable = drop).
    pub fn check_inbound_bytes(&self, bytes: &[u8], now: Instant) -> Verdict {
        if bytes.is_empty() {
            return Verdict::Accept(Accept::Empty);
        }
        match PacketView::parse(bytes) {
            Ok(p) => self.check_inbound(&p, now),
            Err(e) => Verdict::Drop(Drop::Malformed(e)),
        }
    }

    /// Records a packet this node sends, so replies to it are let in. Outbound is never
    /// blocked apart from multicast/link-local pre-checks.
    pub fn track_outbound(&mut self, p: &PacketView<'_>, now: Instant) -> Verdict {
        if let Some(v @ Verdict::Drop(_)) = precheck(p) {
            return v;
        }
        if matches!(p.proto, proto::UDP | proto::SCTP) && p.transport != Transport::Fragment {
            self.flows.insert(
                FlowKey {
                    proto: p.proto,
                    src: p.dst,
                    src_port: p.dst_port(),
                    dst: p.src,
                    dst_port: p.src_port(),
                },
                now,
            );
        }
        Verdict::Accept(Accept::Outbound)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests take a real `Instant` as their starting point
mod tests {
    use super::*;
    use crate::packet::build;
    use weft_tailcfg::{NetPortRange, PortRange};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn rule(src: &[&str], dst: &str, first: u16, last: u16, protos: &[i32]) -> FilterRule {
        FilterRule {
            src_ips: src.iter().map(|s| s.to_string()).collect(),
            dst_ports: vec![NetPortRange {
                ip: dst.into(),
                bits: None,
                ports: PortRange { first, last },
            }],
            ip_proto: protos.to_vec(),
            ..FilterRule::default()
        }
    }

    fn filter(rules: &[FilterRule]) -> PacketFilter {
        let mut f = PacketFilter::new();
        f.set_rules(
            rules,
            &[
                "100.64.0.2/32".parse().unwrap(),
                "fd7a::2/128".parse().unwrap(),
            ],
        )
        .unwrap();
        f
    }

    fn inbound(f: &PacketFilter, pkt: &[u8]) -> Verdict {
        f.check_inbound_bytes(pkt, Instant::now())
    }

    #[test]
    fn port_80_rule_allows_80_and_drops_22() {
        let f = filter(&[rule(&["100.64.0.1"], "100.64.0.2", 80, 80, &[])]);
        let a = ip("100.64.0.1");
        let b = ip("100.64.0.2");
        assert!(inbound(&f, &build::tcp_syn(a, b, 5000, 80)).is_accept());
        assert_eq!(
            inbound(&f, &build::tcp_syn(a, b, 5000, 22)),
            Verdict::Drop(Drop::NoRule)
        );
        assert_eq!(
            inbound(&f, &build::tcp_syn(ip("100.64.0.9"), b, 5000, 80)),
            Verdict::Drop(Drop::NoRule)
        );
    }

    #[test]
    fn icmp_is_allowed_when_any_port_is_open_and_replies_always() {
        let f = filter(&[rule(&["100.64.0.1"], "100.64.0.2", 80, 80, &[6])]);
        assert!(inbound(&f, &build::ping(ip("100.64.0.1"), ip("100.64.0.2"))).is_accept());
        assert!(!inbound(&f, &build::ping(ip("100.64.0.7"), ip("100.64.0.2"))).is_accept());
        let reply = build::packet(ip("100.64.0.7"), ip("100.64.0.2"), proto::ICMP4, 0, 0, 0, 0);
        assert_eq!(inbound(&f, &reply), Verdict::Accept(Accept::IcmpResponse));
    }

    #[test]
    fn udp_reply_to_outbound_flow_is_allowed_and_survives_replacement() {
        let mut f = filter(&[]);
        let me = ip("100.64.0.2");
        let peer = ip("100.64.0.1");
        let now = Instant::now();
        let reply = build::udp(peer, me, 53, 40000);
        assert_eq!(inbound(&f, &reply), Verdict::Drop(Drop::NoRule));
        let out = build::udp(me, peer, 40000, 53);
        f.track_outbound(&PacketView::parse(&out).unwrap(), now);
        assert_eq!(
            f.check_inbound_bytes(&reply, now),
            Verdict::Accept(Accept::Flow)
        );
        f.set_rules(&[], &["100.64.0.2/32".parse().unwrap()])
            .unwrap();
        assert_eq!(
            f.check_inbound_bytes(&reply, now),
            Verdict::Accept(Accept::Flow)
        );
        let later = now + DEFAULT_FLOW_IDLE + Duration::from_secs(1);
        assert_eq!(
            f.check_inbound_bytes(&reply, later),
            Verdict::Drop(Drop::NoRule)
        );
    }

    #[test]
    fn tcp_non_syn_is_accepted_as_return_traffic() {
        let f = filter(&[]);
        let ack = build::packet(
            ip("100.64.0.1"),
            ip("100.64.0.2"),
            proto::TCP,
            80,
            5000,
            tcp_flags::ACK,
            0,
        );
        assert_eq!(inbound(&f, &ack), Verdict::Accept(Accept::TcpNonSyn));
        let synack = build::packet(
            ip("100.64.0.1"),
            ip("100.64.0.2"),
            proto::TCP,
            80,
            5000,
            tcp_flags::SYN | tcp_flags::ACK,
            0,
        );
        assert!(inbound(&f, &synack).is_accept());
    }

    #[test]
    fn no_filter_drops_everything_and_foreign_destinations_are_dropped() {
        let f = PacketFilter::new();
        let p = build::tcp_syn(ip("100.64.0.1"), ip("100.64.0.2"), 1, 80);
        assert_eq!(
            f.check_inbound_bytes(&p, Instant::now()),
            Verdict::Drop(Drop::NoFilter)
        );
        let f = filter(&[FilterRule::allow_all()]);
        assert!(inbound(&f, &p).is_accept());
        let other = build::tcp_syn(ip("100.64.0.1"), ip("100.64.0.3"), 1, 80);
        assert_eq!(inbound(&f, &other), Verdict::Drop(Drop::NotLocal));
    }

    #[test]
    fn ranges_and_ipv6_sources_match() {
        let f = filter(&[rule(
            &["100.64.0.0-100.64.0.10", "fd7a::/64"],
            "*",
            0,
            65535,
            &[],
        )]);
        assert!(inbound(&f, &build::udp(ip("100.64.0.5"), ip("100.64.0.2"), 1, 9)).is_accept());
        assert!(!inbound(&f, &build::udp(ip("100.64.0.11"), ip("100.64.0.2"), 1, 9)).is_accept());
        assert!(inbound(&f, &build::udp(ip("fd7a::9"), ip("fd7a::2"), 1, 9)).is_accept());
    }

    #[test]
    fn other_protocols_need_an_explicit_all_ports_rule() {
        let gre = build::packet(ip("100.64.0.1"), ip("100.64.0.2"), 47, 0, 0, 0, 0);
        assert!(!inbound(&filter(&[rule(&["*"], "*", 0, 65535, &[])]), &gre).is_accept());
        assert!(inbound(&filter(&[rule(&["*"], "*", 0, 65535, &[47])]), &gre).is_accept());
        assert!(!inbound(&filter(&[rule(&["*"], "*", 47, 47, &[47])]), &gre).is_accept());
    }
}
