//! Evaluation of a policy's own `tests` section through the compiled filters.
//!
//! Each test names a source (user, group member, tag, host or IP) and destinations
//! (`alias:port`). Sources and destinations that name identities are stood in for by phantom
//! nodes added to the snapshot (so a test works on a tailnet where the user or tag has no
//! node yet); IP and host destinations use the real node that owns or routes the address, or
//! a phantom node holding it. Each packet is then decided by `weft-filter` on the destination
//! node's compiled filter, exactly as a client would decide it.

use crate::compile::{Compiled, Snapshot, SnapshotNode};
use crate::policy::{Alias, AutoGroup, Policy, PolicyError, PolicyTest};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use weft_filter::{packet::build, packet::proto, Matcher, PacketView};

/// One failed expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestFailure {
    /// Index of the test in `tests`.
    pub index: usize,
    /// Line of the test in the policy text.
    pub line: u32,
    /// The test's source as written.
    pub src: String,
    /// The destination as written.
    pub dst: String,
    /// True if the test expected the destination to be reachable.
    pub expected_accept: bool,
}

impl std::fmt::Display for TestFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "test {} (line {}, src {}): {} expected to be {} but is {}",
            self.index,
            self.line,
            self.src,
            self.dst,
            if self.expected_accept {
                "accepted"
            } else {
                "denied"
            },
            if self.expected_accept {
                "denied"
            } else {
                "accepted"
            },
        )
    }
}

/// Why a policy was refused by [`check`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// The text does not parse or validate.
    #[error("invalid policy: {0}")]
    Invalid(#[from] PolicyError),
    /// The policy's own tests fail; every failure is listed.
    #[error("policy tests failed: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    TestsFailed(Vec<TestFailure>),
}

/// Parses `text` and runs its `tests` against `snapshot`; the policy is returned only if it is
/// valid and every test passes.
pub fn check(text: &str, snapshot: &Snapshot) -> Result<Policy, CheckError> {
    let p = Policy::parse(text)?;
    let failures = p.run_tests(snapshot);
    if failures.is_empty() {
        Ok(p)
    } else {
        Err(CheckError::TestsFailed(failures))
    }
}

struct Phantoms {
    next_id: i64,
    used: BTreeSet<IpAddr>,
    next4: u32,
    next6: u128,
}

impl Phantoms {
    fn new(s: &Snapshot) -> Self {
        let used = s
            .nodes
            .iter()
            .flat_map(|n| n.addresses.iter().copied())
            .collect();
        let next_id = s.nodes.iter().map(|n| n.id).max().unwrap_or(0).max(0) + 1_000_000_000;
        Phantoms {
            next_id,
            used,
            next4: u32::from(Ipv4Addr::new(100, 127, 255, 254)),
            next6: u128::from(
                "fd7a:115c:a1e0:ffff::fffe"
                    .parse::<Ipv6Addr>()
                    .expect("static"),
            ),
        }
    }

    fn addrs(&mut self) -> Vec<IpAddr> {
        let mut v4 = IpAddr::V4(Ipv4Addr::from(self.next4));
        while self.used.contains(&v4) {
            self.next4 -= 1;
            v4 = IpAddr::V4(Ipv4Addr::from(self.next4));
        }
        self.next4 -= 1;
        let v6 = IpAddr::V6(Ipv6Addr::from(self.next6));
        self.next6 -= 1;
        self.used.insert(v4);
        vec![v4, v6]
    }

    fn node(
        &mut self,
        user: Option<String>,
        user_groups: Vec<String>,
        tags: Vec<String>,
    ) -> SnapshotNode {
        self.next_id += 1;
        SnapshotNode {
            id: self.next_id,
            user,
            user_groups,
            tags,
            addresses: self.addrs(),
            ..SnapshotNode::default()
        }
    }
}

fn groups_of(s: &Snapshot, login: &str) -> Vec<String> {
    s.nodes
        .iter()
        .find(|n| !n.is_tagged() && n.user.as_deref() == Some(login))
        .map(|n| n.user_groups.clone())
        .unwrap_or_default()
}

impl Policy {
    /// Runs the policy's `tests` against `snapshot`; returns every failed expectation
    /// (empty = all pass).
    pub fn run_tests(&self, snapshot: &Snapshot) -> Vec<TestFailure> {
        if self.tests.is_empty() {
            return Vec::new();
        }
        let mut snap = snapshot.clone();
        let mut ph = Phantoms::new(snapshot);
        // (test index, source addresses, [(dst text, dst node id, dst ip, port, accept)])
        let mut plans = Vec::new();
        for t in &self.tests {
            let src_ips = self.test_source(t, &mut snap, &mut ph);
            let mut dsts = Vec::new();
            for (list, accept) in [(&t.accept, true), (&t.deny, false)] {
                for (text, alias, port) in list {
                    for (node, ip) in self.test_destination(alias, &mut snap, &mut ph) {
                        dsts.push((text.clone(), node, ip, *port, accept));
                    }
                }
            }
            plans.push((t, src_ips, dsts));
        }
        let compiled = self.compile(&snap);
        let mut failures = Vec::new();
        for (t, src_ips, dsts) in plans {
            let mut failed: BTreeSet<(String, bool)> = BTreeSet::new();
            for (text, node, dst_ip, port, accept) in dsts {
                for &src in src_ips.iter().filter(|s| s.is_ipv4() == dst_ip.is_ipv4()) {
                    let ok = packet_allowed(
                        &compiled,
                        node,
                        src,
                        dst_ip,
                        t.proto.unwrap_or(proto::TCP),
                        port,
                    );
                    if ok != accept {
                        failed.insert((text.clone(), accept));
                    }
                }
            }
            for (dst, expected_accept) in failed {
                failures.push(TestFailure {
                    index: t.index,
                    line: t.pos.line,
                    src: t.src_text.clone(),
                    dst,
                    expected_accept,
                });
            }
        }
        failures
    }

    fn test_source(&self, t: &PolicyTest, snap: &mut Snapshot, ph: &mut Phantoms) -> Vec<IpAddr> {
        let node = match &t.src {
            Alias::User(u) => ph.node(Some(u.clone()), groups_of(snap, u), Vec::new()),
            Alias::Group(g) => {
                let login = format!(
                    "phantom-member-of-{}@weft.invalid",
                    g.trim_start_matches("group:")
                );
                let short = g.trim_start_matches("group:").to_string();
                ph.node(Some(login), vec![short], Vec::new())
            }
            Alias::Tag(tag) => ph.node(None, Vec::new(), vec![tag.clone()]),
            Alias::AutoGroup(AutoGroup::Member) => {
                ph.node(Some("phantom@weft.invalid".into()), Vec::new(), Vec::new())
            }
            Alias::AutoGroup(AutoGroup::Tagged) => {
                let tag = self
                    .tag_owners
                    .keys()
                    .next()
                    .cloned()
                    .unwrap_or_else(|| "tag:phantom".into());
                ph.node(None, Vec::new(), vec![tag])
            }
            Alias::Host(_, n) | Alias::Prefix(n) => return vec![n.network()],
            _ => return Vec::new(),
        };
        let addrs = node.addresses.clone();
        snap.nodes.push(node);
        addrs
    }

    fn test_destination(
        &self,
        alias: &Alias,
        snap: &mut Snapshot,
        ph: &mut Phantoms,
    ) -> Vec<(i64, IpAddr)> {
        let node = match alias {
            Alias::User(u) => ph.node(Some(u.clone()), groups_of(snap, u), Vec::new()),
            Alias::Group(g) => {
                let login = format!(
                    "phantom-member-of-{}@weft.invalid",
                    g.trim_start_matches("group:")
                );
                ph.node(
                    Some(login),
                    vec![g.trim_start_matches("group:").to_string()],
                    Vec::new(),
                )
            }
            Alias::Tag(tag) => ph.node(None, Vec::new(), vec![tag.clone()]),
            Alias::Host(_, n) | Alias::Prefix(n) => {
                let ip = n.network();
                let owner = snap.nodes.iter().find(|x| x.addresses.contains(&ip));
                let router = snap
                    .nodes
                    .iter()
                    .filter(|x| {
                        x.approved_routes
                            .iter()
                            .any(|r| r.prefix_len() > 0 && r.contains(&ip))
                    })
                    .map(|x| x.id)
                    .collect::<Vec<_>>();
                if let Some(o) = owner {
                    return vec![(o.id, ip)];
                }
                if !router.is_empty() {
                    return router.into_iter().map(|r| (r, ip)).collect();
                }
                let mut n = ph.node(None, Vec::new(), Vec::new());
                n.addresses = vec![ip];
                n
            }
            _ => return Vec::new(),
        };
        let id = node.id;
        let out = node.addresses.iter().map(|&a| (id, a)).collect();
        snap.nodes.push(node);
        out
    }
}

/// Decides one first packet (TCP SYN, UDP datagram, ICMP echo request or bare protocol) from
/// `src` to `dst` on node `node` using the node's compiled filter and `weft-filter`.
pub(crate) fn packet_allowed(
    c: &Compiled,
    node: i64,
    src: IpAddr,
    dst: IpAddr,
    proto_num: u8,
    port: u16,
) -> bool {
    let Some(rules) = c.filter_for(node) else {
        return false;
    };
    let Some(n) = c.node(node) else { return false };
    let mut local: Vec<ipnet::IpNet> = n.addresses.iter().map(|&a| ipnet::IpNet::from(a)).collect();
    local.extend(n.approved_routes.iter().copied());
    if n.exit_node {
        local.push("0.0.0.0/0".parse().expect("static"));
        local.push("::/0".parse().expect("static"));
    }
    let Ok(m) = Matcher::new(rules, &local) else {
        return false;
    };
    let bytes = match proto_num {
        proto::TCP => build::tcp_syn(src, dst, 40000, port),
        proto::UDP => build::udp(src, dst, 40000, port),
        proto::ICMP4 | proto::ICMP6 => build::ping(src, dst),
        other => build::packet(src, dst, other, 40000, port, 0, 0),
    };
    let Ok(p) = PacketView::parse(&bytes) else {
        return false;
    };
    m.decide_inbound(&p, || false).is_accept()
}
