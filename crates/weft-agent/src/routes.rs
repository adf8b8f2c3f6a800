//! Subnet routes and exit-node advertisement, on both sides.
//!
//! A *router* node advertises prefixes (`weft up --advertise-routes`, `--advertise-exit-node`):
//! they go to control as `Hostinfo.RoutableIPs`, become local networks of the inbound packet
//! filter, and the node forwards what its peers send to them. [`Router`] turns on IP
//! forwarding and masquerades (SNAT) tailnet sources leaving through other interfaces with
//! nftables tables of our own (`table ip weft`, `table ip6 weft`), as tailscaled does with
//! `--snat-subnet-routes=true`.
//!
//! A *client* node with `--accept-routes` routes its peers' `PrimaryRoutes` into the TUN
//! (kernel routes `PREFIX dev TUN`) and lets each peer's WireGuard allowed IPs carry its
//! subnet routes; without it, peers' allowed IPs are their own addresses only. Exit routes
//! (`/0`) are never used from a peer (no exit-node selection yet).
//!
//! The pure parts ([`parse_routes`], [`wg_allowed_ips`], [`accepted_routes`],
//! [`nft_script`]) are unit-tested; [`Router`] runs `ip`, `nft` and writes `/proc/sys`.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use weft_netmap::NetworkMap;
use weft_tailcfg::Node;

use crate::sys::{TAILNET_V4, TAILNET_V6};

/// Name of our nftables tables (one per family).
pub const NFT_TABLE: &str = "weft";

/// The IPv4 and IPv6 default routes `--advertise-exit-node` adds.
pub fn exit_routes() -> [IpNet; 2] {
    [
        IpNet::V4(Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("valid /0")),
        IpNet::V6(Ipv6Net::new(Ipv6Addr::UNSPECIFIED, 0).expect("valid /0")),
    ]
}

/// Whether `p` is an exit (default) route.
pub fn is_exit_route(p: &IpNet) -> bool {
    p.prefix_len() == 0
}

/// Parses `--advertise-routes` values (each may itself be comma-separated): every prefix must
/// be canonical (`10.77.0.0/24`, not `10.77.0.1/24`) and not a default route (that is
/// `--advertise-exit-node`). An empty list (or `--advertise-routes=`) clears the routes.
/// Returns them sorted and without duplicates.
pub fn parse_routes<S: AsRef<str>>(items: &[S]) -> Result<Vec<IpNet>, String> {
    let mut out = BTreeSet::new();
    for s in items
        .iter()
        .flat_map(|s| s.as_ref().split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let p: IpNet = s
            .parse()
            .map_err(|_| format!("{s:?} is not a valid IP prefix (want e.g. 10.0.0.0/24)"))?;
        check_route(&p)?;
        out.insert(p);
    }
    Ok(out.into_iter().collect())
}

/// The checks [`parse_routes`] applies to one prefix (the daemon repeats them on what a
/// LocalAPI client sends).
pub fn check_route(p: &IpNet) -> Result<(), String> {
    if p.trunc() != *p {
        return Err(format!(
            "{p} has non-address bits set; expected {}",
            p.trunc()
        ));
    }
    if is_exit_route(p) {
        return Err(format!(
            "{p} is a default route; use --advertise-exit-node instead"
        ));
    }
    Ok(())
}

/// What a node advertises: its routes, plus both default routes when it offers itself as
/// an exit node.
pub fn advertised(routes: &[IpNet], exit_node: bool) -> Vec<IpNet> {
    let mut all: BTreeSet<IpNet> = routes.iter().copied().collect();
    if exit_node {
        all.extend(exit_routes());
    }
    all.into_iter().collect()
}

fn tailnet_ranges() -> [IpNet; 2] {
    [
        TAILNET_V4.parse().expect("constant prefix"),
        TAILNET_V6.parse().expect("constant prefix"),
    ]
}

/// A peer's WireGuard allowed IPs under our prefs (Tailscale's rule): `Node.AllowedIPs`
/// (its addresses when absent) without exit routes, and without subnet routes unless
/// `accept_routes`. A single address that is not one of the peer's own counts as a subnet
/// route.
pub fn wg_allowed_ips(peer: &Node, accept_routes: bool) -> Vec<IpNet> {
    let all = peer
        .allowed_ips
        .clone()
        .unwrap_or_else(|| peer.addresses.clone());
    all.into_iter()
        .filter(|p| {
            if is_exit_route(p) {
                return false;
            }
            let own = p.prefix_len() == p.max_prefix_len()
                && peer.addresses.iter().any(|a| a.addr() == p.addr());
            own || accept_routes
        })
        .collect()
}

/// A copy of `nm` whose peers carry [`wg_allowed_ips`] (what the engine gets).
pub fn engine_netmap(nm: &NetworkMap, accept_routes: bool) -> NetworkMap {
    let mut out = nm.clone();
    for p in &mut out.peers {
        p.allowed_ips = Some(wg_allowed_ips(p, accept_routes));
    }
    out
}

/// Kernel routes a client installs: every peer's `PrimaryRoutes` when `accept_routes`,
/// except exit routes, prefixes inside the tailnet ranges and prefixes we advertise ourselves.
pub fn accepted_routes(
    nm: Option<&NetworkMap>,
    accept_routes: bool,
    own: &[IpNet],
) -> BTreeSet<IpNet> {
    let (Some(nm), true) = (nm, accept_routes) else {
        return BTreeSet::new();
    };
    let tailnet = tailnet_ranges();
    nm.peers
        .iter()
        .flat_map(|p| p.primary_routes.iter().copied())
        .map(|p| p.trunc())
        .filter(|p| !is_exit_route(p))
        .filter(|p| !tailnet.iter().any(|t| t.contains(p)))
        .filter(|p| !own.contains(p))
        .collect()
}

/// The nftables script that (re)creates our table for `family` (`ip` or `ip6`): masquerade
/// packets from the tailnet range that came in on `tun` and leave through another interface.
pub fn nft_script(family: &str, tun: &str) -> String {
    let (saddr, range) = if family == "ip6" {
        ("ip6 saddr", TAILNET_V6)
    } else {
        ("ip saddr", TAILNET_V4)
    };
    format!(
        "add table {family} {NFT_TABLE}\n\
         delete table {family} {NFT_TABLE}\n\
         table {family} {NFT_TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tiifname \"{tun}\" oifname != \"{tun}\" {saddr} {range} masquerade\n\
         \t}}\n\
         }}\n"
    )
}

/// The host side of routes: forwarding and SNAT for what we advertise, kernel routes for what
/// we accept. Undoes its nftables tables on drop (routes go away with the TUN device).
#[derive(Debug)]
pub struct Router {
    tun: String,
    /// Families whose SNAT table is installed (`ip`, `ip6`).
    snat: BTreeSet<&'static str>,
    /// Kernel routes installed into the TUN.
    installed: BTreeSet<IpNet>,
}

impl Router {
    /// A router for TUN device `tun`; changes nothing yet.
    pub fn new(tun: &str) -> Router {
        Router {
            tun: tun.to_owned(),
            snat: BTreeSet::new(),
            installed: BTreeSet::new(),
        }
    }

    /// Serves `advertised` (empty: serves nothing): for each family with a route, turns on
    /// forwarding and installs the SNAT table; removes the table of a family without one.
    pub async fn set_advertised(&mut self, advertised: &[IpNet]) -> std::io::Result<()> {
        for (family, v6) in [("ip", false), ("ip6", true)] {
            let want = advertised.iter().any(|p| p.addr().is_ipv6() == v6);
            if want {
                let knob = if v6 {
                    "/proc/sys/net/ipv6/conf/all/forwarding"
                } else {
                    "/proc/sys/net/ipv4/ip_forward"
                };
                enable_sysctl(knob).await?;
                if !self.snat.contains(family) {
                    nft(&nft_script(family, &self.tun)).await?;
                    tracing::info!(family, table = NFT_TABLE, "SNAT for subnet routes on");
                    self.snat.insert(family);
                }
            } else if self.snat.remove(family) {
                delete_table(family).await;
                tracing::info!(family, table = NFT_TABLE, "SNAT for subnet routes off");
            }
        }
        Ok(())
    }

    /// Makes the kernel route exactly `routes` into the TUN (of those this router added).
    pub async fn set_accepted(&mut self, routes: &BTreeSet<IpNet>) -> std::io::Result<()> {
        let mut result = Ok(());
        for old in self.installed.clone() {
            if !routes.contains(&old) {
                match ip_route("del", &old, &self.tun).await {
                    Ok(()) => {
                        tracing::info!(route = %old, "subnet route removed");
                        self.installed.remove(&old);
                    }
                    Err(e) => {
                        // Already gone (the device went down, someone removed it): forget it.
                        tracing::debug!(route = %old, error = %e, "removing route failed");
                        self.installed.remove(&old);
                    }
                }
            }
        }
        for new in routes {
            if !self.installed.contains(new) {
                match ip_route("replace", new, &self.tun).await {
                    Ok(()) => {
                        tracing::info!(route = %new, dev = %self.tun, "subnet route added");
                        self.installed.insert(*new);
                    }
                    Err(e) => {
                        tracing::warn!(route = %new, error = %e, "adding route failed");
                        result = Err(e);
                    }
                }
            }
        }
        result
    }

    /// The routes currently installed.
    pub fn installed(&self) -> &BTreeSet<IpNet> {
        &self.installed
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        // Runs on daemon exit (the backend task is aborted): synchronous on purpose.
        for family in std::mem::take(&mut self.snat) {
            let _ = std::process::Command::new("nft")
                .args(["delete", "table", family, NFT_TABLE])
                .output();
        }
    }
}

async fn enable_sysctl(path: &str) -> std::io::Result<()> {
    match tokio::fs::read_to_string(path).await {
        Ok(v) if v.trim() == "1" => return Ok(()),
        _ => {}
    }
    tokio::fs::write(path, b"1")
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("enabling forwarding ({path}): {e}")))?;
    tracing::info!(path, "IP forwarding enabled");
    Ok(())
}

async fn nft(script: &str) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "nft -f: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

async fn delete_table(family: &str) {
    let r = tokio::process::Command::new("nft")
        .args(["delete", "table", family, NFT_TABLE])
        .output()
        .await;
    if let Ok(out) = r {
        if !out.status.success() {
            tracing::debug!(family, stderr = %String::from_utf8_lossy(&out.stderr).trim(), "nft delete table");
        }
    }
}

async fn ip_route(verb: &str, p: &IpNet, dev: &str) -> std::io::Result<()> {
    let family = if p.addr().is_ipv6() { "-6" } else { "-4" };
    let out = tokio::process::Command::new("ip")
        .args([family, "route", verb, &p.to_string(), "dev", dev])
        .output()
        .await?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "ip route {verb} {p} dev {dev}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn routes_must_be_canonical_prefixes_and_not_default_routes() {
        assert_eq!(
            parse_routes(&["10.77.0.0/24,192.168.1.0/24", "10.77.0.0/24"]).unwrap(),
            vec![net("10.77.0.0/24"), net("192.168.1.0/24")]
        );
        assert_eq!(
            parse_routes(&["fd00:1::/64"]).unwrap(),
            vec![net("fd00:1::/64")]
        );
        let e = parse_routes(&["10.77.0.1/24"]).unwrap_err();
        assert!(e.contains("10.77.0.0/24"), "{e}");
        let e = parse_routes(&["0.0.0.0/0"]).unwrap_err();
        assert!(e.contains("--advertise-exit-node"), "{e}");
        assert!(parse_routes(&["10.77.0.0"]).is_err());
        assert!(parse_routes(&["banana"]).is_err());
        assert_eq!(parse_routes(&[""]).unwrap(), vec![]);
    }

    #[test]
    fn exit_node_adds_both_default_routes() {
        let r = advertised(&[net("10.0.0.0/8")], true);
        assert_eq!(r, vec![net("0.0.0.0/0"), net("10.0.0.0/8"), net("::/0")]);
        assert_eq!(advertised(&[], false), vec![]);
    }

    fn router_peer() -> Node {
        Node {
            addresses: vec![net("100.64.0.2/32"), net("fd7a:115c:a1e0::2/128")],
            allowed_ips: Some(vec![
                net("100.64.0.2/32"),
                net("fd7a:115c:a1e0::2/128"),
                net("10.77.0.0/24"),
                net("192.0.2.7/32"),
                net("0.0.0.0/0"),
                net("::/0"),
            ]),
            primary_routes: vec![net("10.77.0.0/24"), net("192.0.2.7/32")],
            ..Node::default()
        }
    }

    #[test]
    fn wireguard_allowed_ips_keep_subnets_only_when_accepting_and_never_exit_routes() {
        let p = router_peer();
        assert_eq!(
            wg_allowed_ips(&p, false),
            vec![net("100.64.0.2/32"), net("fd7a:115c:a1e0::2/128")]
        );
        assert_eq!(
            wg_allowed_ips(&p, true),
            vec![
                net("100.64.0.2/32"),
                net("fd7a:115c:a1e0::2/128"),
                net("10.77.0.0/24"),
                net("192.0.2.7/32"),
            ]
        );
        let bare = Node {
            addresses: vec![net("100.64.0.3/32")],
            ..Node::default()
        };
        assert_eq!(wg_allowed_ips(&bare, true), vec![net("100.64.0.3/32")]);
    }

    #[test]
    fn accepted_routes_are_peers_primary_routes_when_accepting() {
        let mut s = weft_netmap::MapSession::new();
        let mut odd = router_peer();
        odd.id = 3;
        odd.key = weft_key::NodePublic::from_bytes([3; 32]);
        odd.primary_routes = vec![net("100.100.0.0/16"), net("0.0.0.0/0"), net("10.9.0.0/16")];
        let mut p = router_peer();
        p.id = 2;
        p.key = weft_key::NodePublic::from_bytes([2; 32]);
        s.handle_map_response(
            weft_tailcfg::MapResponse {
                node: Some(Node {
                    id: 1,
                    ..Node::default()
                }),
                peers: vec![p, odd],
                ..Default::default()
            },
            std::time::SystemTime::now(),
        )
        .unwrap();
        let nm = s.netmap(std::time::SystemTime::now()).unwrap();
        assert!(accepted_routes(Some(&nm), false, &[]).is_empty());
        assert!(accepted_routes(None, true, &[]).is_empty());
        let got: Vec<IpNet> = accepted_routes(Some(&nm), true, &[net("10.9.0.0/16")])
            .into_iter()
            .collect();
        assert_eq!(got, vec![net("10.77.0.0/24"), net("192.0.2.7/32")]);
        assert_eq!(nm.peers.len(), 2);
        let enm = engine_netmap(&nm, false);
        assert!(enm
            .peers
            .iter()
            .all(|p| p.allowed_ips.as_ref().unwrap().len() == 2));
    }

    #[test]
    fn nft_script_replaces_our_table_and_masquerades_tailnet_sources_leaving_the_tun() {
        let s = nft_script("ip", "weft0");
        assert!(s.starts_with("add table ip weft\ndelete table ip weft\ntable ip weft {"));
        assert!(
            s.contains("iifname \"weft0\" oifname != \"weft0\" ip saddr 100.64.0.0/10 masquerade")
        );
        let s6 = nft_script("ip6", "weft0");
        assert!(s6.contains("ip6 saddr fd7a:115c:a1e0::/48 masquerade"));
    }
}
