//! Issue 3: two tsnet clients with no UDP path between them reach state Running and
//! exchange HTTP over the tailnet, relayed by the DERP server embedded in `weft server`.
//!
//! Topology:
//!
//! ```text
//!   alpha 192.168.10.2 ─ NAT ra (10.0.0.21) ─┐
//!                                              ├─ public 10.0.0.0/24 ─ weft server 10.0.0.2
//!   beta  192.168.20.2 ─ NAT rb (10.0.0.22) ─┘
//! ```
//!
//! Both routers masquerade and drop unsolicited inbound traffic; ra keeps ports
//! (endpoint-independent), rb randomises them (endpoint-dependent). Both drop every
//! forwarded UDP packet except to and from the server, so the only path between the
//! clients is DERP over TCP. beta proxies `127.0.0.1:8080` (in its own namespace) to
//! alpha's tailnet address with `reverse_proxy … transport tailscale`, and curl fetches
//! alpha's page through it.

use std::time::Duration;

use weft_e2e::{
    wait_for, Error, Harness, Mapping, NatRouter, Netns, Result, Segment, TsnetConfig, TsnetNode,
    WeftServer,
};

const SERVER: [u8; 4] = [10, 0, 0, 2];
const TIMEOUT: Duration = Duration::from_secs(90);

#[test]
#[ignore = "needs root + netns"]
fn tsnet_clients_without_a_udp_path_exchange_http_through_weft_derp() -> Result<()> {
    let h = Harness::new("issue3_derp")?;
    h.finish(derp_only(&h))
}

fn derp_only(h: &Harness) -> Result<()> {
    // Arrange: network, routers without a UDP path, server.
    let public = Segment::new("pub", 24)?;
    let s_ns = Netns::new("srv")?;
    public.lan().attach(&s_ns, "eth0", SERVER.into())?;
    let ra = NatRouter::new(
        "ra",
        public.lan(),
        [10, 0, 0, 21].into(),
        [192, 168, 10, 1].into(),
        24,
        Mapping::EndpointIndependent,
    )?;
    let rb = NatRouter::new(
        "rb",
        public.lan(),
        [10, 0, 0, 22].into(),
        [192, 168, 20, 1].into(),
        24,
        Mapping::EndpointDependent,
    )?;
    ra.drop_forwarded_udp_except(&[SERVER.into()])?;
    rb.drop_forwarded_udp_except(&[SERVER.into()])?;
    let a_ns = Netns::new("a")?;
    let b_ns = Netns::new("b")?;
    ra.lan().attach(&a_ns, "eth0", [192, 168, 10, 2].into())?;
    rb.lan().attach(&b_ns, "eth0", [192, 168, 20, 2].into())?;

    let mut server = WeftServer::start(h, &s_ns, SERVER.into(), 8080)?;
    server.create_user("alice")?;
    let key = server.create_authkey("alice", true)?;

    // Act: alpha serves a page; beta proxies to it over the tailnet.
    let mut a = TsnetNode::start(h, &a_ns, TsnetConfig::new("alpha", server.url(), &key))?;
    let alpha = server.wait_node("alpha", TIMEOUT)?;
    let alpha_ip = alpha.cgnat_ipv4().ok_or_else(|| {
        Error::Check(format!("alpha has no 100.64.0.0/10 address: {}", alpha.raw))
    })?;
    let upstream = format!("{alpha_ip}:80");
    let b_cfg = TsnetConfig::new("beta", server.url(), &key).with_proxy(
        "127.0.0.1:8080"
            .parse()
            .map_err(|_| Error::Check("addr".into()))?,
        &upstream,
    );
    let mut b = TsnetNode::start(h, &b_ns, b_cfg)?;

    a.wait_running(TIMEOUT)?;
    b.wait_running(TIMEOUT)?;
    b.wait_peers(1, TIMEOUT)?;

    // Assert: the page comes back through DERP.
    let body = wait_for("alpha's page through beta's tailnet proxy", TIMEOUT, || {
        if let Err(e) = a.proc().check_alive().and_then(|()| b.proc().check_alive()) {
            return Ok(Err(e));
        }
        match b_ns.run(&["curl", "-sS", "--max-time", "10", "http://127.0.0.1:8080/"]) {
            Ok(body) if body.contains("hello from alpha") => Ok(Ok(body)),
            Ok(body) => Err(format!("unexpected body: {body:?}")),
            Err(e) => Err(e.to_string()),
        }
    })??;
    assert_eq!(body.trim(), "hello from alpha");

    // Both clients hold a live connection to our relay (region 900), each received the
    // other's packets through it, and neither found a direct path.
    for node in [&mut a, &mut b] {
        node.proc()
            .wait_log("magicsock: derp-900 connected", TIMEOUT)?;
        node.proc().wait_log("magicsock: derp route for", TIMEOUT)?;
        let log = node.proc().log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("magicsock: disco: node") && l.contains("now using"))
        {
            return Err(Error::Check(format!(
                "{} found a direct UDP path although UDP is blocked: {line}",
                node.hostname()
            )));
        }
    }
    server.proc().check_alive()?;
    Ok(())
}
