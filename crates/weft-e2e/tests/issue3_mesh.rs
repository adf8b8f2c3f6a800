//! Issue 3: two standalone `weft derp` relays meshed into one region, one tsnet client
//! on each, exchanging HTTP through the mesh.
//!
//! Topology: public 10.0.0.0/24 with the server (.2, `--derp-map` pointing at the
//! relays), relay 900a (.31) and relay 900b (.32); alpha behind NAT ra, beta behind NAT
//! rb. ra refuses TCP to 900b and rb refuses TCP to 900a, so alpha can only use 900a
//! and beta only 900b (tsnet tries a region's nodes in order). No UDP passes between
//! the clients, so alpha's page reaches beta only by relay-to-relay forwarding.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::json;
use weft_e2e::{
    spawn_weft, wait_for, Error, Harness, Mapping, NatRouter, Netns, Proc, Result, Segment,
    TsnetConfig, TsnetNode, WeftServer,
};

const SERVER: [u8; 4] = [10, 0, 0, 2];
const RELAY_A: [u8; 4] = [10, 0, 0, 31];
const RELAY_B: [u8; 4] = [10, 0, 0, 32];
const TIMEOUT: Duration = Duration::from_secs(90);
const MESH_KEY: &str = "5f1c0a9e3b7d2468ace0f1357b9d2468ace0f1357b9d2468ace0f1357b9d2468";

#[test]
#[ignore = "needs root + netns"]
fn tsnet_clients_on_two_meshed_weft_relays_exchange_http() -> Result<()> {
    let h = Harness::new("issue3_mesh")?;
    h.finish(mesh(&h))
}

fn start_relay(
    h: &Harness,
    ns: &Netns,
    name: &str,
    addr: Ipv4Addr,
    peer: Ipv4Addr,
) -> Result<Proc> {
    let dir = h.subdir(name)?;
    let mesh_key = dir.join("mesh.key");
    std::fs::write(&mesh_key, format!("{MESH_KEY}\n"))
        .map_err(|e| Error::Check(format!("writing {}: {e}", mesh_key.display())))?;
    let args: Vec<String> = [
        "derp",
        "--addr",
        &format!("{addr}:443"),
        "--hostname",
        &addr.to_string(),
        "--stun-port",
        "3478",
        "--key-file",
        &dir.join("derp.key").display().to_string(),
        "--mesh-with",
        &format!("{peer}:443"),
        "--mesh-key-file",
        &mesh_key.display().to_string(),
        "--mesh-insecure",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut relay = spawn_weft(h, ns, name, &args)?;
    let probe = format!("https://{addr}:443/derp/probe");
    wait_for(
        &format!("{name} to answer HTTPS"),
        Duration::from_secs(30),
        || {
            relay.check_alive().map_err(|e| e.to_string())?;
            ns.run(&["curl", "-sk", "-o", "/dev/null", "--max-time", "2", &probe])
                .map_err(|e| e.to_string())
        },
    )?;
    Ok(relay)
}

fn derp_node(name: &str, ip: Ipv4Addr) -> serde_json::Value {
    json!({
        "Name": name, "RegionID": 900, "HostName": ip.to_string(), "IPv4": ip.to_string(),
        "IPv6": "none", "DERPPort": 443, "STUNPort": 3478, "InsecureForTests": true,
    })
}

fn mesh(h: &Harness) -> Result<()> {
    // Arrange: network.
    let public = Segment::new("pub", 24)?;
    let s_ns = Netns::new("srv")?;
    let r1_ns = Netns::new("d1")?;
    let r2_ns = Netns::new("d2")?;
    public.lan().attach(&s_ns, "eth0", SERVER.into())?;
    public.lan().attach(&r1_ns, "eth0", RELAY_A.into())?;
    public.lan().attach(&r2_ns, "eth0", RELAY_B.into())?;
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
        Mapping::EndpointIndependent,
    )?;
    let stun_servers = [SERVER.into(), RELAY_A.into(), RELAY_B.into()];
    ra.drop_forwarded_udp_except(&stun_servers)?;
    rb.drop_forwarded_udp_except(&stun_servers)?;
    ra.reject_forwarded_tcp_to(RELAY_B.into())?;
    rb.reject_forwarded_tcp_to(RELAY_A.into())?;
    let a_ns = Netns::new("a")?;
    let b_ns = Netns::new("b")?;
    ra.lan().attach(&a_ns, "eth0", [192, 168, 10, 2].into())?;
    rb.lan().attach(&b_ns, "eth0", [192, 168, 20, 2].into())?;

    // Two meshed relays, and a server whose DERP map lists them as one region.
    let mut relay_a = start_relay(h, &r1_ns, "derp-900a", RELAY_A.into(), RELAY_B.into())?;
    let mut relay_b = start_relay(h, &r2_ns, "derp-900b", RELAY_B.into(), RELAY_A.into())?;
    let map = json!({"Regions": {"900": {
        "RegionID": 900, "RegionCode": "weft", "RegionName": "weft mesh",
        "Nodes": [derp_node("900a", RELAY_A.into()), derp_node("900b", RELAY_B.into())],
    }}});
    let map_path = h.dir().join("derp-map.json");
    std::fs::write(&map_path, map.to_string())
        .map_err(|e| Error::Check(format!("writing {}: {e}", map_path.display())))?;
    let map_arg = map_path.display().to_string();
    let mut server =
        WeftServer::start_with_args(h, &s_ns, SERVER.into(), 8080, &["--derp-map", &map_arg])?;
    server.create_user("alice")?;
    let key = server.create_authkey("alice", true)?;

    // Act: alpha serves, beta proxies to alpha over the tailnet.
    let mut a = TsnetNode::start(h, &a_ns, TsnetConfig::new("alpha", server.url(), &key))?;
    let alpha = server.wait_node("alpha", TIMEOUT)?;
    let alpha_ip = alpha.cgnat_ipv4().ok_or_else(|| {
        Error::Check(format!("alpha has no 100.64.0.0/10 address: {}", alpha.raw))
    })?;
    let listen = std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080);
    let b_cfg =
        TsnetConfig::new("beta", server.url(), &key).with_proxy(listen, &format!("{alpha_ip}:80"));
    let mut b = TsnetNode::start(h, &b_ns, b_cfg)?;
    a.proc()
        .wait_log("magicsock: derp-900 connected", TIMEOUT)?;
    b.proc()
        .wait_log("magicsock: derp-900 connected", TIMEOUT)?;

    // Assert: the page crosses the mesh.
    let body = wait_for(
        "alpha's page through beta's proxy across the relay mesh",
        TIMEOUT,
        || {
            for p in [
                a.proc(),
                b.proc(),
                &mut relay_a,
                &mut relay_b,
                server.proc(),
            ] {
                if let Err(e) = p.check_alive() {
                    return Ok(Err(e));
                }
            }
            match b_ns.run(&["curl", "-sS", "--max-time", "10", "http://127.0.0.1:8080/"]) {
                Ok(body) if body.contains("hello from alpha") => Ok(Ok(body)),
                Ok(body) => Err(format!("unexpected body: {body:?}")),
                Err(e) => Err(e.to_string()),
            }
        },
    )??;
    assert_eq!(body.trim(), "hello from alpha");
    Ok(())
}
