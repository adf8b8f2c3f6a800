//! Issue 2: after `weft server` is killed with SIGKILL and restarted on the same data
//! directory, nothing is lost: the tsnet clients keep their nodes and addresses, their
//! map streams resume, and a node that joins afterwards reaches both of them.

use std::time::Duration;

use weft_e2e::{Error, Harness, Netns, Result, Segment, TsnetConfig, TsnetNode, WeftServer};

const SERVER: [u8; 4] = [10, 0, 0, 2];
const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
#[ignore = "needs root + netns"]
fn tsnet_clients_carry_on_after_the_server_is_killed_and_restarted() -> Result<()> {
    let h = Harness::new("issue2_restart")?;
    h.finish(restart(&h))
}

fn restart(h: &Harness) -> Result<()> {
    // Arrange: two registered clients that see each other.
    let public = Segment::new("pub", 24)?;
    let s_ns = Netns::new("srv")?;
    let a_ns = Netns::new("a")?;
    let b_ns = Netns::new("b")?;
    let c_ns = Netns::new("c")?;
    public.lan().attach(&s_ns, "eth0", SERVER.into())?;
    public.lan().attach(&a_ns, "eth0", [10, 0, 0, 11].into())?;
    public.lan().attach(&b_ns, "eth0", [10, 0, 0, 12].into())?;
    public.lan().attach(&c_ns, "eth0", [10, 0, 0, 13].into())?;
    let mut server = WeftServer::start(h, &s_ns, SERVER.into(), 8080)?;
    server.create_user("alice")?;
    let key = server.create_authkey("alice", true)?;
    let mut a = TsnetNode::start(h, &a_ns, TsnetConfig::new("alpha", server.url(), &key))?;
    let alpha_before = server.wait_node("alpha", TIMEOUT)?.cgnat_ipv4();
    let mut b = TsnetNode::start(h, &b_ns, TsnetConfig::new("beta", server.url(), &key))?;
    let beta_before = server.wait_node("beta", TIMEOUT)?.cgnat_ipv4();
    a.wait_peers(1, TIMEOUT)?;
    b.wait_peers(1, TIMEOUT)?;

    // Act: SIGKILL, restart, then a third client joins.
    server.kill_and_restart(h, &s_ns)?;
    let nodes = server.nodes()?;
    let mut c = TsnetNode::start(h, &c_ns, TsnetConfig::new("gamma", server.url(), &key))?;
    server.wait_node("gamma", TIMEOUT)?;

    // Assert: same nodes and addresses after the restart, and the old clients' map
    // streams were re-established (they learn about gamma).
    let find = |name: &str| {
        nodes
            .iter()
            .find(|n| n.has_name(name))
            .and_then(|n| n.cgnat_ipv4())
    };
    if find("alpha") != alpha_before || find("beta") != beta_before || alpha_before.is_none() {
        return Err(Error::Check(format!(
            "addresses changed across the restart: alpha {alpha_before:?} -> {:?}, beta {beta_before:?} -> {:?}",
            find("alpha"),
            find("beta")
        )));
    }
    assert_eq!(
        nodes.len(),
        2,
        "nodes after restart: {:?}",
        nodes.iter().map(|n| &n.raw).collect::<Vec<_>>()
    );
    a.wait_peers(2, TIMEOUT)?;
    b.wait_peers(2, TIMEOUT)?;
    c.wait_peers(2, TIMEOUT)?;
    let all = server.nodes()?;
    assert_eq!(
        all.len(),
        3,
        "a client re-registered as a new node: {:?}",
        all.iter().map(|n| &n.raw).collect::<Vec<_>>()
    );
    Ok(())
}
