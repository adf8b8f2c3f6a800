//! Topologies: a "public" switched segment, and NAT routers with a LAN behind them.
//!
//! Every link is a veth pair between two namespaces that this test created; nothing
//! is ever attached to the host's namespace, so no packet can leave the machine.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::Result;
use crate::netns::{ip_n, Netns};

/// A layer-2 broadcast domain: a Linux bridge inside some namespace that we own.
pub struct Lan {
    bridge_ns: String,
    bridge: String,
    prefix_len: u8,
    gateway: Option<Ipv4Addr>,
    ports: AtomicUsize,
}

impl Lan {
    /// Connects `host` to this LAN through a new veth pair: `ifname` inside `host`
    /// gets `addr/prefix_len`; if the LAN has a gateway, it becomes `host`'s default route.
    pub fn attach(&self, host: &Netns, ifname: &str, addr: Ipv4Addr) -> Result<()> {
        let port = format!("p{}", self.ports.fetch_add(1, Ordering::Relaxed));
        ip_n(
            &self.bridge_ns,
            &[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                ifname,
                "netns",
                host.name(),
            ],
        )?;
        ip_n(
            &self.bridge_ns,
            &["link", "set", &port, "master", &self.bridge, "up"],
        )?;
        host.ip(&[
            "addr",
            "add",
            &format!("{addr}/{}", self.prefix_len),
            "dev",
            ifname,
        ])?;
        host.ip(&["link", "set", ifname, "up"])?;
        if let Some(gw) = self.gateway {
            host.ip(&["route", "add", "default", "via", &gw.to_string()])?;
        }
        Ok(())
    }

    fn create(ns: &Netns, bridge: &str, prefix_len: u8, gateway: Option<Ipv4Addr>) -> Result<Lan> {
        ns.ip(&["link", "add", bridge, "type", "bridge"])?;
        if let Some(gw) = gateway {
            ns.ip(&["addr", "add", &format!("{gw}/{prefix_len}"), "dev", bridge])?;
        }
        ns.ip(&["link", "set", bridge, "up"])?;
        Ok(Lan {
            bridge_ns: ns.name().to_owned(),
            bridge: bridge.to_owned(),
            prefix_len,
            gateway,
            ports: AtomicUsize::new(0),
        })
    }
}

/// The "internet" of a test: a bridge in a namespace of its own, with no address and
/// no route anywhere else. Servers and NAT routers' WAN sides attach to it.
///
/// The tests number it in 10.0.0.0/24, a private range, on purpose: for a control URL
/// `http://IP:PORT` whose IP is *not* private, Tailscale 1.90.9 also tries Noise over
/// `https://IP:443`, and after a failed dial within 2 minutes of the previous one it
/// dials only 443. A client of a server that restarted then never gets back to
/// `http://IP:PORT`. With a private IP it never tries 443.
pub struct Segment {
    // Field order matters for drop: the LAN handle first, then the namespace.
    lan: Lan,
    _ns: Netns,
}

impl Segment {
    /// A new segment whose hosts use `/prefix_len` addresses.
    pub fn new(tag: &str, prefix_len: u8) -> Result<Segment> {
        let ns = Netns::new(tag)?;
        let lan = Lan::create(&ns, "br0", prefix_len, None)?;
        Ok(Segment { lan, _ns: ns })
    }

    /// The segment as a LAN to attach hosts to.
    pub fn lan(&self) -> &Lan {
        &self.lan
    }
}

/// How a [`NatRouter`] maps inside (address, port) pairs to outside ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// Linux's default masquerade: keeps the source port when it can, so one inside
    /// socket gets the same outside port for every destination.
    EndpointIndependent,
    /// `masquerade random`: a fresh outside port per destination (a "symmetric" NAT).
    EndpointDependent,
}

/// A NAT router: its WAN side on a [`Segment`], a LAN bridge (with the router as
/// gateway) behind it, masquerade on the way out, and unsolicited inbound traffic on
/// the WAN side dropped (only replies to connections from the LAN come back).
pub struct NatRouter {
    lan: Lan,
    wan_addr: Ipv4Addr,
    ns: Netns,
}

impl NatRouter {
    /// Builds the router namespace, attaches `wan0` = `wan_addr` to `public`, and
    /// creates the LAN `gateway/prefix_len` on `br0`.
    pub fn new(
        tag: &str,
        public: &Lan,
        wan_addr: Ipv4Addr,
        gateway: Ipv4Addr,
        prefix_len: u8,
        mapping: Mapping,
    ) -> Result<NatRouter> {
        let ns = Netns::new(tag)?;
        public.attach(&ns, "wan0", wan_addr)?;
        let lan = Lan::create(&ns, "br0", prefix_len, Some(gateway))?;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        let masquerade = match mapping {
            Mapping::EndpointIndependent => "masquerade",
            Mapping::EndpointDependent => "masquerade random",
        };
        ns.nft(&format!(
            r#"
table ip weft_nat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan0" {masquerade}
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "br0" oifname "wan0" accept
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "wan0" ct state established,related accept
        iifname "wan0" drop
    }}
}}
"#
        ))?;
        Ok(NatRouter { lan, wan_addr, ns })
    }

    /// The LAN behind the router, to attach hosts to (their default route is the router).
    pub fn lan(&self) -> &Lan {
        &self.lan
    }

    /// The router's address on the public segment (the NAT's outside address).
    pub fn wan_addr(&self) -> Ipv4Addr {
        self.wan_addr
    }

    /// The router's namespace, e.g. to add nftables rules.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// Drops every UDP packet the router would forward, except to and from `allowed`
    /// (e.g. the server's and relays' STUN ports). Two hosts behind such routers have
    /// no UDP path between them.
    pub fn drop_forwarded_udp_except(&self, allowed: &[Ipv4Addr]) -> Result<()> {
        let set = allowed
            .iter()
            .map(Ipv4Addr::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        self.ns.nft(&format!(
            "insert rule ip weft_nat forward meta l4proto udp ip daddr != {{ {set} }} ip saddr != {{ {set} }} drop\n"
        ))
    }

    /// Refuses (TCP reset) every forwarded TCP connection to `dest`, so clients behind
    /// this router fail over at once to the next DERP node of a region.
    pub fn reject_forwarded_tcp_to(&self, dest: Ipv4Addr) -> Result<()> {
        self.ns.nft(&format!(
            "insert rule ip weft_nat forward ip daddr {dest} meta l4proto tcp reject with tcp reset\n"
        ))
    }
}
