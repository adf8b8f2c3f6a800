//! MagicDNS: the quad-100 resolver (`100.100.100.100` and `fd7a:115c:a1e0::53`, UDP port 53).
//!
//! Pure: no I/O. The engine hands every packet the host sends to quad-100 to
//! [`Resolver::handle_packet`] and writes the reply (a complete IP+UDP packet) back to the TUN.
//!
//! What it answers, as tailscaled v1.90 does (docs/agent.md "MagicDNS"):
//! - A/AAAA for every node of the netmap (self and peers) by FQDN (`host.suffix.`) and by its
//!   short name (first label), case-insensitively, TTL 600; `ExtraRecords` A/AAAA first.
//!   A node's IPv6 address is left out when it also has IPv4, unless the self node has the
//!   `magicdns-aaaa` capability; an IPv6-only self node gets only IPv6 addresses.
//! - A known name without an address of the asked family: NOERROR, no answers; NS/SOA/AXFR/
//!   HINFO: NOTIMP; any other type: NOERROR, no answers.
//! - PTR for tailnet addresses (in-addr.arpa and ip6.arpa) and for the service addresses.
//! - Names inside the MagicDNS suffix or the tailnet reverse zones that are unknown, and
//!   `.onion`: NXDOMAIN.
//! - Everything else: REFUSED (no upstream forwarding).
//! - A DNS message that does not parse: FORMERR if its header is readable, else no reply.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use weft_netmap::NetworkMap;
use weft_tailcfg::Node;

/// Quad-100's IPv4 address.
pub const QUAD100_V4: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 100);
/// Quad-100's IPv6 address.
pub const QUAD100_V6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0x53);
/// TTL of positive answers (tailscaled v1.90).
pub const TTL: u32 = 600;
/// The name quad-100's own addresses resolve to (and back).
const SERVICE_NAME: &str = "magicdns.localhost-tailscale-daemon.";
/// The node capability that keeps IPv6 addresses of dual-stack nodes in MagicDNS.
const CAP_AAAA: &str = "magicdns-aaaa";
/// Replies are capped at this many bytes (no truncation needed: answers hold one record).
const MAX_REPLY: usize = 4095;

/// Whether an IP packet is addressed to quad-100 (any protocol or port). Cheap: a few byte
/// comparisons, meant for the per-packet fast path.
pub fn is_quad100(pkt: &[u8]) -> bool {
    match pkt.first().map(|b| b >> 4) {
        Some(4) => pkt.len() >= 20 && pkt[16..20] == QUAD100_V4.octets(),
        Some(6) => pkt.len() >= 40 && pkt[24..40] == QUAD100_V6.octets(),
        _ => false,
    }
}

/// The quad-100 resolver's view of the netmap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolver {
    /// Lower-case FQDN (trailing dot) → addresses, in answer order.
    hosts: BTreeMap<String, Vec<IpAddr>>,
    /// Lower-case single label → addresses (first node wins).
    short: BTreeMap<String, Vec<IpAddr>>,
    /// Address → FQDN as the netmap spells it (trailing dot).
    ptr: BTreeMap<IpAddr, String>,
    /// Authoritative zones, lower-case with trailing dot (the MagicDNS suffix and reverse
    /// zones of the tailnet ranges).
    local_zones: Vec<String>,
}

impl Resolver {
    /// Builds the resolver from a netmap: every node (self first, then peers) by FQDN and
    /// short name, `ExtraRecords`, and the MagicDNS suffix as an authoritative zone.
    pub fn from_netmap(nm: &NetworkMap) -> Resolver {
        let mut r = Resolver::default();
        let self_v6_only = !nm.addresses().is_empty()
            && nm
                .addresses()
                .iter()
                .all(|a| a.addr().is_ipv6() && a.prefix_len() == 128);
        let want_aaaa = has_cap(&nm.self_node, CAP_AAAA);
        // ExtraRecords come first: an exact host match prefers them.
        for rec in &nm.dns.extra_records {
            if !matches!(rec.record_type.as_str(), "" | "A" | "AAAA") {
                continue;
            }
            let Ok(ip) = rec.value.parse::<IpAddr>() else {
                continue;
            };
            let Some(name) = fqdn(&rec.name) else {
                continue;
            };
            r.hosts.entry(name).or_default().push(ip);
        }
        for node in std::iter::once(&nm.self_node).chain(nm.peers.iter()) {
            let Some(name) = fqdn(&node.name) else {
                continue;
            };
            let ips = node_ips(node, self_v6_only, want_aaaa);
            for a in &node.addresses {
                if a.prefix_len() == a.max_prefix_len() {
                    r.ptr
                        .entry(a.addr())
                        .or_insert_with(|| with_dot(&node.name));
                }
            }
            if let Some((label, _)) = name.split_once('.') {
                if !label.is_empty() {
                    r.short
                        .entry(label.to_string())
                        .or_insert_with(|| ips.clone());
                }
            }
            r.hosts.entry(name).or_insert(ips);
        }
        let suffix = nm.magic_dns_suffix();
        if let Some(s) = fqdn(suffix) {
            r.local_zones.push(s);
            r.local_zones
                .push("0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa.".to_string());
            for b in 64..128 {
                r.local_zones.push(format!("{b}.100.in-addr.arpa."));
            }
        }
        r
    }

    /// The addresses a name resolves to (FQDN with or without trailing dot, or a short
    /// name), if it is a tailnet name.
    pub fn lookup(&self, name: &str) -> Option<&[IpAddr]> {
        let key = fqdn(name)?;
        if let Some(ips) = self.hosts.get(&key) {
            return Some(ips);
        }
        let label = key.strip_suffix('.')?;
        if label.contains('.') {
            return None;
        }
        self.short.get(label).map(Vec::as_slice)
    }

    /// Answers one IP packet to quad-100 UDP port 53 with the reply packet; anything else
    /// (other addresses, ports or protocols, fragments, malformed packets) gives `None`.
    pub fn handle_packet(&self, ip_packet: &[u8]) -> Option<Vec<u8>> {
        let udp = parse_udp(ip_packet)?;
        if udp.dst_port != 53 {
            return None;
        }
        let reply = self.handle_query(udp.payload)?;
        Some(build_udp(&udp, &reply))
    }

    /// Answers one DNS message (the UDP payload).
    pub fn handle_query(&self, query: &[u8]) -> Option<Vec<u8>> {
        let Ok(msg) = Message::from_vec(query) else {
            return formerr(query);
        };
        if msg.message_type() != MessageType::Query {
            return None;
        }
        let mut resp = Message::new();
        resp.set_id(msg.id())
            .set_message_type(MessageType::Response)
            .set_op_code(msg.op_code())
            .set_authoritative(true)
            .set_recursion_desired(msg.recursion_desired())
            .set_recursion_available(msg.recursion_desired());
        let Some(q) = msg.queries().first() else {
            resp.set_response_code(ResponseCode::FormErr);
            return resp.to_vec().ok();
        };
        resp.add_query(q.clone());
        if msg.op_code() != OpCode::Query {
            resp.set_response_code(ResponseCode::NotImp);
            return resp.to_vec().ok();
        }
        let (rcode, answer) = self.resolve(q.name(), q.query_type());
        resp.set_response_code(rcode);
        if let Some(rdata) = answer {
            resp.add_answer(Record::from_rdata(q.name().clone(), TTL, rdata));
        }
        let out = resp.to_vec().ok()?;
        (out.len() <= MAX_REPLY).then_some(out)
    }

    fn resolve(&self, qname: &Name, typ: RecordType) -> (ResponseCode, Option<RData>) {
        let name = with_dot(&qname.to_lowercase().to_ascii());
        if typ == RecordType::PTR {
            return self.resolve_ptr(&name);
        }
        if name.ends_with(".onion.") || name == "onion." {
            return (ResponseCode::NXDomain, None);
        }
        let service = [IpAddr::V4(QUAD100_V4), IpAddr::V6(QUAD100_V6)];
        let ips: &[IpAddr] = if name == SERVICE_NAME {
            &service
        } else {
            match self.lookup(&name) {
                Some(ips) => ips,
                None if self.is_local(&name) => return (ResponseCode::NXDomain, None),
                None => return (ResponseCode::Refused, None),
            }
        };
        let rdata = match typ {
            RecordType::A => ips.iter().find_map(|ip| match ip {
                IpAddr::V4(v4) => Some(RData::A(A(*v4))),
                IpAddr::V6(_) => None,
            }),
            RecordType::AAAA => ips.iter().find_map(|ip| match ip {
                IpAddr::V6(v6) => Some(RData::AAAA(AAAA(*v6))),
                IpAddr::V4(_) => None,
            }),
            RecordType::ANY => ips.first().map(|ip| match ip {
                IpAddr::V4(v4) => RData::A(A(*v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
            }),
            RecordType::NS | RecordType::SOA | RecordType::AXFR | RecordType::HINFO => {
                return (ResponseCode::NotImp, None)
            }
            _ => None,
        };
        (ResponseCode::NoError, rdata)
    }

    fn resolve_ptr(&self, name: &str) -> (ResponseCode, Option<RData>) {
        let Some(ip) = reverse_ip(name) else {
            return self.not_found(name);
        };
        if ip == IpAddr::V4(QUAD100_V4) || ip == IpAddr::V6(QUAD100_V6) {
            return ptr_answer(SERVICE_NAME);
        }
        match self.ptr.get(&ip) {
            Some(host) => ptr_answer(host),
            None => self.not_found(name),
        }
    }

    fn not_found(&self, name: &str) -> (ResponseCode, Option<RData>) {
        if self.is_local(name) {
            (ResponseCode::NXDomain, None)
        } else {
            (ResponseCode::Refused, None)
        }
    }

    /// Whether `name` (lower-case, trailing dot) is inside an authoritative zone.
    fn is_local(&self, name: &str) -> bool {
        self.local_zones.iter().any(|z| {
            name == z
                || name
                    .strip_suffix(z.as_str())
                    .is_some_and(|rest| rest.ends_with('.'))
        })
    }
}

fn ptr_answer(host: &str) -> (ResponseCode, Option<RData>) {
    match Name::from_str(host) {
        Ok(n) => (ResponseCode::NoError, Some(RData::PTR(PTR(n)))),
        Err(_) => (ResponseCode::ServFail, None),
    }
}

fn has_cap(n: &Node, cap: &str) -> bool {
    n.capabilities.iter().any(|c| c == cap)
        || n.cap_map.as_ref().is_some_and(|m| m.contains_key(cap))
}

/// A node's MagicDNS addresses (tailscaled's rule: host addresses only; drop IPv6 when the
/// node has IPv4 unless `want_aaaa`; only IPv6 when we are IPv6-only).
fn node_ips(n: &Node, self_v6_only: bool, want_aaaa: bool) -> Vec<IpAddr> {
    let host = || {
        n.addresses
            .iter()
            .filter(|a| a.prefix_len() == a.max_prefix_len())
            .map(|a| a.addr())
    };
    let have4 = host().any(|ip| ip.is_ipv4());
    host()
        .filter(|ip| {
            if self_v6_only {
                ip.is_ipv6()
            } else {
                ip.is_ipv4() || !have4 || want_aaaa
            }
        })
        .collect()
}

/// Lower-case FQDN with a trailing dot; `None` for an empty name.
fn fqdn(name: &str) -> Option<String> {
    let n = name.trim_end_matches('.');
    if n.is_empty() {
        return None;
    }
    Some(format!("{}.", n.to_ascii_lowercase()))
}

fn with_dot(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// The address a reverse-lookup name (`d.c.b.a.in-addr.arpa.`, 32 nibbles `.ip6.arpa.`)
/// stands for.
fn reverse_ip(name: &str) -> Option<IpAddr> {
    if let Some(rest) = name.strip_suffix(".in-addr.arpa.") {
        let mut octets = [0u8; 4];
        let labels: Vec<&str> = rest.split('.').collect();
        if labels.len() != 4 {
            return None;
        }
        for (i, l) in labels.iter().rev().enumerate() {
            if l.is_empty() || l.len() > 3 || !l.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            octets[i] = l.parse().ok()?;
        }
        return Some(IpAddr::V4(Ipv4Addr::from(octets)));
    }
    let rest = name.strip_suffix(".ip6.arpa.")?;
    let labels: Vec<&str> = rest.split('.').collect();
    if labels.len() != 32 {
        return None;
    }
    let mut v: u128 = 0;
    for l in labels.iter().rev() {
        if l.len() != 1 {
            return None;
        }
        let d = u128::from(char::from(l.as_bytes()[0]).to_digit(16)?);
        v = (v << 4) | d;
    }
    Some(IpAddr::V6(Ipv6Addr::from(v)))
}

/// FORMERR for a message whose 12-byte header is readable and is a query.
fn formerr(query: &[u8]) -> Option<Vec<u8>> {
    let h = query.get(..12)?;
    if h[2] & 0x80 != 0 {
        return None;
    }
    let mut out = vec![0u8; 12];
    out[..2].copy_from_slice(&h[..2]);
    // QR, the query's opcode and RD; RCODE 1 (FORMERR).
    out[2] = 0x80 | (h[2] & 0x79);
    out[3] = 0x01;
    Some(out)
}

/// A parsed IPv4/IPv6 UDP datagram.
struct Udp<'a> {
    src: IpAddr,
    dst: IpAddr,
    src_port: u16,
    dst_port: u16,
    payload: &'a [u8],
}

/// Parses an unfragmented UDP packet to quad-100 (IPv4 with any options; IPv6 with UDP as
/// the first next header).
fn parse_udp(pkt: &[u8]) -> Option<Udp<'_>> {
    let (src, dst, l4) = match pkt.first()? >> 4 {
        4 => {
            let ihl = usize::from(pkt.first()? & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*pkt.get(2)?, *pkt.get(3)?]));
            if ihl < 20 || total < ihl || total > pkt.len() || pkt[9] != 17 {
                return None;
            }
            // More fragments, or a non-zero fragment offset.
            if u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0 {
                return None;
            }
            let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
            let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
            if dst != QUAD100_V4 {
                return None;
            }
            (IpAddr::V4(src), IpAddr::V4(dst), &pkt[ihl..total])
        }
        6 => {
            if pkt.len() < 40 || pkt[6] != 17 {
                return None;
            }
            let plen = usize::from(u16::from_be_bytes([pkt[4], pkt[5]]));
            let end = 40usize.checked_add(plen)?;
            if end > pkt.len() {
                return None;
            }
            let src: [u8; 16] = pkt[8..24].try_into().ok()?;
            let dst: [u8; 16] = pkt[24..40].try_into().ok()?;
            let dst = Ipv6Addr::from(dst);
            if dst != QUAD100_V6 {
                return None;
            }
            (
                IpAddr::V6(Ipv6Addr::from(src)),
                IpAddr::V6(dst),
                &pkt[40..end],
            )
        }
        _ => return None,
    };
    if l4.len() < 8 {
        return None;
    }
    let ulen = usize::from(u16::from_be_bytes([l4[4], l4[5]]));
    if ulen < 8 || ulen > l4.len() {
        return None;
    }
    Some(Udp {
        src,
        dst,
        src_port: u16::from_be_bytes([l4[0], l4[1]]),
        dst_port: u16::from_be_bytes([l4[2], l4[3]]),
        payload: &l4[8..ulen],
    })
}

/// The reply datagram: addresses and ports swapped, checksums filled in.
fn build_udp(q: &Udp<'_>, payload: &[u8]) -> Vec<u8> {
    let ulen = 8 + payload.len();
    let mut udp = Vec::with_capacity(ulen);
    udp.extend_from_slice(&q.dst_port.to_be_bytes());
    udp.extend_from_slice(&q.src_port.to_be_bytes());
    udp.extend_from_slice(&(ulen as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    // Reply source = the query's destination and vice versa.
    let (src, dst) = (q.dst, q.src);
    let mut pseudo = 0u32;
    let mut out = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo = sum_words(pseudo, &s.octets());
            pseudo = sum_words(pseudo, &d.octets());
            pseudo += 17 + ulen as u32;
            let total = (20 + ulen) as u16;
            let mut ip = Vec::with_capacity(20 + ulen);
            ip.extend_from_slice(&[0x45, 0]);
            ip.extend_from_slice(&total.to_be_bytes());
            ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let c = fold(sum_words(0, &ip));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            ip
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo = sum_words(pseudo, &s.octets());
            pseudo = sum_words(pseudo, &d.octets());
            pseudo += 17 + ulen as u32;
            let mut ip = Vec::with_capacity(40 + ulen);
            ip.extend_from_slice(&[0x60, 0, 0, 0]);
            ip.extend_from_slice(&(ulen as u16).to_be_bytes());
            ip.extend_from_slice(&[17, 64]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            ip
        }
        // parse_udp never mixes families.
        _ => Vec::new(),
    };
    let mut c = fold(sum_words(pseudo, &udp));
    if c == 0 {
        c = 0xffff;
    }
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&udp);
    out
}

fn sum_words(mut sum: u32, b: &[u8]) -> u32 {
    for ch in b.chunks(2) {
        sum += u32::from(u16::from_be_bytes([ch[0], *ch.get(1).unwrap_or(&0)]));
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use proptest::prelude::*;
    use weft_tailcfg::DnsRecord;

    fn node(id: i64, name: &str, addrs: &[&str]) -> Node {
        Node {
            id,
            name: name.into(),
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            ..Node::default()
        }
    }

    fn netmap(self_caps: &[&str]) -> NetworkMap {
        let mut me = node(
            1,
            "alpha.tailnet.test.",
            &["100.64.0.1/32", "fd7a:115c:a1e0::1/128"],
        );
        me.capabilities = self_caps.iter().map(|c| c.to_string()).collect();
        let mut dns = weft_tailcfg::DnsConfig {
            proxied: true,
            domains: vec!["tailnet.test".into()],
            ..Default::default()
        };
        dns.extra_records.push(DnsRecord {
            name: "svc.tailnet.test".into(),
            record_type: "A".into(),
            value: "100.64.9.9".into(),
        });
        NetworkMap {
            self_node: me,
            self_expired: false,
            peers: vec![
                node(
                    2,
                    "Bravo.tailnet.test.",
                    &["100.64.0.2/32", "fd7a:115c:a1e0::2/128"],
                ),
                node(3, "v6only.tailnet.test.", &["fd7a:115c:a1e0::3/128"]),
            ],
            expired_peers: Vec::new(),
            derp_map: Default::default(),
            packet_filter: Vec::new(),
            dns,
            domain: "tailnet.test".into(),
            user_profiles: Default::default(),
            ssh_policy: None,
            health: Vec::new(),
            tka: None,
        }
    }

    fn query(name: &str, typ: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(0x4242).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), typ));
        m.to_vec().unwrap()
    }

    fn ask(r: &Resolver, name: &str, typ: RecordType) -> Message {
        let out = r.handle_query(&query(name, typ)).expect("a reply");
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.id(), 0x4242);
        assert_eq!(m.message_type(), MessageType::Response);
        assert!(m.authoritative());
        assert!(m.recursion_available());
        assert_eq!(m.queries().len(), 1);
        m
    }

    fn answers(m: &Message) -> Vec<IpAddr> {
        m.answers()
            .iter()
            .map(|a| {
                assert_eq!(a.ttl(), TTL);
                match a.data() {
                    RData::A(v) => IpAddr::V4(v.0),
                    RData::AAAA(v) => IpAddr::V6(v.0),
                    d => panic!("unexpected {d:?}"),
                }
            })
            .collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_records_for_fqdn_with_and_without_dot_any_case_and_short_names() {
        let r = Resolver::from_netmap(&netmap(&[]));
        for name in [
            "bravo.tailnet.test.",
            "bravo.tailnet.test",
            "BRAVO.Tailnet.Test.",
            "bravo",
            "Bravo.",
        ] {
            let m = ask(&r, name, RecordType::A);
            assert_eq!(m.response_code(), ResponseCode::NoError, "{name}");
            assert_eq!(answers(&m), vec![ip("100.64.0.2")], "{name}");
            // The answer repeats the question's spelling (0x20 randomisation).
            assert_eq!(
                m.answers()[0].name().to_ascii().trim_end_matches('.'),
                name.trim_end_matches('.')
            );
        }
        let m = ask(&r, "alpha.tailnet.test.", RecordType::A);
        assert_eq!(answers(&m), vec![ip("100.64.0.1")]);
        let m = ask(&r, "svc.tailnet.test.", RecordType::A);
        assert_eq!(answers(&m), vec![ip("100.64.9.9")]);
    }

    #[test]
    fn aaaa_follows_the_magicdns_aaaa_cap_and_v6_only_nodes() {
        let r = Resolver::from_netmap(&netmap(&[]));
        let m = ask(&r, "bravo.tailnet.test.", RecordType::AAAA);
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(answers(&m).is_empty());
        let m = ask(&r, "v6only.tailnet.test.", RecordType::AAAA);
        assert_eq!(answers(&m), vec![ip("fd7a:115c:a1e0::3")]);
        let m = ask(&r, "v6only.tailnet.test.", RecordType::A);
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(answers(&m).is_empty());

        let r = Resolver::from_netmap(&netmap(&[CAP_AAAA]));
        let m = ask(&r, "bravo.tailnet.test", RecordType::AAAA);
        assert_eq!(answers(&m), vec![ip("fd7a:115c:a1e0::2")]);
        let m = ask(&r, "bravo", RecordType::A);
        assert_eq!(answers(&m), vec![ip("100.64.0.2")]);
    }

    #[test]
    fn unknown_inside_suffix_is_nxdomain_outside_is_refused() {
        let r = Resolver::from_netmap(&netmap(&[]));
        let m = ask(&r, "nobody.tailnet.test.", RecordType::A);
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        assert!(m.answers().is_empty());
        let m = ask(&r, "tailnet.test.", RecordType::A);
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        for name in ["example.com.", "nottailnet.test.", "nobody"] {
            let m = ask(&r, name, RecordType::A);
            assert_eq!(m.response_code(), ResponseCode::Refused, "{name}");
        }
        let m = ask(&r, "hidden.onion.", RecordType::A);
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
    }

    #[test]
    fn record_types_other_than_addresses() {
        let r = Resolver::from_netmap(&netmap(&[]));
        let m = ask(&r, "bravo.tailnet.test.", RecordType::SOA);
        assert_eq!(m.response_code(), ResponseCode::NotImp);
        let m = ask(&r, "bravo.tailnet.test.", RecordType::TXT);
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.answers().is_empty());
        let m = ask(&r, "magicdns.localhost-tailscale-daemon.", RecordType::A);
        assert_eq!(answers(&m), vec![IpAddr::V4(QUAD100_V4)]);
    }

    #[test]
    fn reverse_lookups_of_tailnet_addresses() {
        let r = Resolver::from_netmap(&netmap(&[]));
        let ptr = |m: &Message| match m.answers()[0].data() {
            RData::PTR(p) => p.0.to_ascii(),
            d => panic!("unexpected {d:?}"),
        };
        let m = ask(&r, "2.0.64.100.in-addr.arpa.", RecordType::PTR);
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(ptr(&m).eq_ignore_ascii_case("bravo.tailnet.test."));
        let v6 = "3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa.";
        let m = ask(&r, v6, RecordType::PTR);
        assert_eq!(ptr(&m), "v6only.tailnet.test.");
        let m = ask(&r, "100.100.100.100.in-addr.arpa.", RecordType::PTR);
        assert_eq!(ptr(&m), SERVICE_NAME);
        let m = ask(&r, "77.0.64.100.in-addr.arpa.", RecordType::PTR);
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        let m = ask(&r, "1.1.168.192.in-addr.arpa.", RecordType::PTR);
        assert_eq!(m.response_code(), ResponseCode::Refused);
    }

    #[test]
    fn malformed_messages() {
        let r = Resolver::from_netmap(&netmap(&[]));
        assert_eq!(r.handle_query(&[1, 2, 3]), None);
        let mut bad = query("bravo.tailnet.test.", RecordType::A);
        bad.truncate(bad.len() - 3);
        let out = r.handle_query(&bad).expect("FORMERR");
        assert_eq!(&out[..2], &[0x42, 0x42]);
        assert_eq!(out[3] & 0x0f, 1);
        // A response is never answered.
        let mut resp = query("bravo.tailnet.test.", RecordType::A);
        resp[2] |= 0x80;
        assert_eq!(r.handle_query(&resp), None);
    }

    /// An IPv4/UDP packet from 100.64.0.1:5353 to quad-100.
    fn v4_packet(dst: Ipv4Addr, dport: u16, dns: &[u8]) -> Vec<u8> {
        let q = Udp {
            src: IpAddr::V4(dst),
            dst: ip("100.64.0.1"),
            src_port: dport,
            dst_port: 5353,
            payload: &[],
        };
        build_udp(&q, dns)
    }

    fn check_checksums(pkt: &[u8]) {
        match pkt[0] >> 4 {
            4 => {
                assert_eq!(fold(sum_words(0, &pkt[..20])), 0, "IPv4 header checksum");
                let mut pseudo = sum_words(0, &pkt[12..20]);
                pseudo += 17 + (pkt.len() - 20) as u32;
                assert_eq!(fold(sum_words(pseudo, &pkt[20..])), 0, "UDP checksum");
            }
            _ => {
                let mut pseudo = sum_words(0, &pkt[8..40]);
                pseudo += 17 + (pkt.len() - 40) as u32;
                assert_eq!(fold(sum_words(pseudo, &pkt[40..])), 0, "UDP checksum");
            }
        }
    }

    #[test]
    fn ipv4_packet_round_trip_with_checksums() {
        let r = Resolver::from_netmap(&netmap(&[]));
        let pkt = v4_packet(QUAD100_V4, 53, &query("bravo", RecordType::A));
        check_checksums(&pkt);
        assert!(is_quad100(&pkt));
        let reply = r.handle_packet(&pkt).expect("reply");
        check_checksums(&reply);
        assert_eq!(&reply[12..16], &QUAD100_V4.octets());
        assert_eq!(&reply[16..20], &[100, 64, 0, 1]);
        assert_eq!(u16::from_be_bytes([reply[20], reply[21]]), 53);
        assert_eq!(u16::from_be_bytes([reply[22], reply[23]]), 5353);
        let m = Message::from_vec(&reply[28..]).unwrap();
        assert_eq!(answers(&m), vec![ip("100.64.0.2")]);

        // Other ports, other destinations, fragments: no answer.
        let other = v4_packet(QUAD100_V4, 54, &query("bravo", RecordType::A));
        assert_eq!(r.handle_packet(&other), None);
        let mut frag = pkt.clone();
        frag[6] |= 0x20;
        assert_eq!(r.handle_packet(&frag), None);
        let elsewhere = v4_packet(
            Ipv4Addr::new(8, 8, 8, 8),
            53,
            &query("bravo", RecordType::A),
        );
        assert!(!is_quad100(&elsewhere));
        assert_eq!(r.handle_packet(&elsewhere), None);
        assert_eq!(r.handle_packet(&pkt[..30]), None);
    }

    #[test]
    fn ipv6_packet_round_trip_with_checksums() {
        let r = Resolver::from_netmap(&netmap(&[]));
        let q = Udp {
            src: IpAddr::V6(QUAD100_V6),
            dst: ip("fd7a:115c:a1e0::1"),
            src_port: 53,
            dst_port: 40000,
            payload: &[],
        };
        let pkt = build_udp(&q, &query("v6only.tailnet.test", RecordType::AAAA));
        check_checksums(&pkt);
        assert!(is_quad100(&pkt));
        let reply = r.handle_packet(&pkt).expect("reply");
        check_checksums(&reply);
        assert_eq!(&reply[8..24], &QUAD100_V6.octets());
        let m = Message::from_vec(&reply[48..]).unwrap();
        assert_eq!(answers(&m), vec![ip("fd7a:115c:a1e0::3")]);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let r = Resolver::from_netmap(&netmap(&[]));
            let _ = r.handle_query(&body);
            let _ = r.handle_packet(&body);
            let _ = is_quad100(&body);
            // The same bytes as a DNS payload inside valid IPv4/UDP to quad-100.
            let pkt = v4_packet(QUAD100_V4, 53, &body);
            if let Some(reply) = r.handle_packet(&pkt) {
                check_checksums(&reply);
            }
        }

        #[test]
        fn random_packets_to_quad100_never_panic(
            v6 in any::<bool>(),
            tail in proptest::collection::vec(any::<u8>(), 0..120),
        ) {
            let r = Resolver::from_netmap(&netmap(&[]));
            let mut pkt = if v6 {
                let mut p = vec![0x60, 0, 0, 0, 0, 0, 17, 64];
                p.extend_from_slice(&[0; 16]);
                p.extend_from_slice(&QUAD100_V6.octets());
                p
            } else {
                let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 100, 64, 0, 1];
                p.extend_from_slice(&QUAD100_V4.octets());
                p
            };
            pkt.extend_from_slice(&tail);
            let n = pkt.len() as u16;
            if v6 {
                pkt[4..6].copy_from_slice(&(n.saturating_sub(40)).to_be_bytes());
            } else {
                pkt[2..4].copy_from_slice(&n.to_be_bytes());
            }
            prop_assert!(is_quad100(&pkt));
            if let Some(reply) = r.handle_packet(&pkt) {
                check_checksums(&reply);
            }
        }
    }
}
