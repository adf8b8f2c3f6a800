//! Subnet routes end to end: a weft subnet router in front of a plain host, in network
//! namespaces this test creates (nothing touches the host's).
//!
//! Topology: public 198.18.0.0/24 with `weft server` (.2); node a behind NAT router ra (WAN
//! 198.18.0.21, LAN 192.168.10.0/24); router node r behind NAT router rr (WAN 198.18.0.22,
//! LAN 192.168.20.0/24) and also on a segment 10.77.0.0/24 (r = 10.77.0.1) with host h
//! (10.77.0.2, no weft, no default route: it can only answer r's LAN address, so a reply
//! reaching a proves r masqueraded). h runs a TCP echo listener that logs its peers.

use std::time::{Duration, Instant};

use serde_json::Value;
use weft_e2e::{
    ensure, tcp_connect, tcp_listen, wait_for, Error, Harness, Mapping, NatRouter, Netns, Result,
    Segment, WeftNode as Node, WeftServer,
};

const SERVER: [u8; 4] = [198, 18, 0, 2];
const H: [u8; 4] = [10, 77, 0, 2];
const SUBNET: &str = "10.77.0.0/24";
const PORT: u16 = 8000;
const WAIT: Duration = Duration::from_secs(60);

/// `ip route show PREFIX` in the node's namespace.
fn route(node: &Node, prefix: &str) -> Result<String> {
    node.ns
        .ip(&["route", "show", prefix])
        .map(|s| s.trim().to_owned())
}

fn start_node(h: &Harness, ns: Netns, tag: &str) -> Result<Node> {
    Node::start(h, ns, tag, "")
}

/// The strings of a JSON array (empty when absent).
fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Node `name`'s peer entry in `node`'s status.
fn peer(node: &Node, name: &str) -> Result<Value> {
    let s = node.status()?;
    s["Peer"]
        .as_object()
        .and_then(|m| m.values().find(|p| p["HostName"] == name).cloned())
        .ok_or_else(|| Error::Check(format!("no peer {name} in {s}")))
}

/// `weft nodes routes --identifier ID --json` on the server: the node's entry.
fn control_routes(server: &WeftServer, id: &str) -> Result<Value> {
    let out = server.admin(&["nodes", "routes", "--identifier", id, "--json"])?;
    let v: Value = serde_json::from_str(&out)
        .map_err(|e| Error::Check(format!("nodes routes --json: {e}: {out}")))?;
    Ok(v.get(0).cloned().unwrap_or(Value::Null))
}

/// Whether `nft list table FAMILY weft` succeeds in `ns`.
fn snat_table(ns: &Netns, family: &str) -> bool {
    ns.run(&["nft", "list", "table", family, "weft"]).is_ok()
}

#[test]
#[ignore = "needs root + netns"]
fn a_client_reaches_a_host_behind_a_subnet_router_once_the_route_is_approved() -> Result<()> {
    let h = Harness::new("routes_subnet")?;
    h.finish(subnet(&h))
}

fn subnet(h: &Harness) -> Result<()> {
    let started = Instant::now();
    let python = weft_e2e::find_in_path("python3")
        .ok_or_else(|| Error::Environment("python3".to_owned()))?;
    let public = Segment::new("pub", 24)?;
    let s_ns = Netns::new("srv")?;
    public.lan().attach(&s_ns, "eth0", SERVER.into())?;
    let server = WeftServer::start_with_args(
        h,
        &s_ns,
        SERVER.into(),
        8080,
        &["--stun-listen", "198.18.0.2:3478"],
    )?;
    server.create_user("alice")?;
    let key = server.create_authkey("alice", true)?;
    let ra = NatRouter::new(
        "ra",
        public.lan(),
        [198, 18, 0, 21].into(),
        [192, 168, 10, 1].into(),
        24,
        Mapping::EndpointIndependent,
    )?;
    let rr = NatRouter::new(
        "rr",
        public.lan(),
        [198, 18, 0, 22].into(),
        [192, 168, 20, 1].into(),
        24,
        Mapping::EndpointIndependent,
    )?;
    let sub = Segment::new("sub", 24)?;
    let h_ns = Netns::new("h")?;
    sub.lan().attach(&h_ns, "eth0", H.into())?;
    let a_ns = Netns::new("a")?;
    ra.lan().attach(&a_ns, "eth0", [192, 168, 10, 2].into())?;
    let r_ns = Netns::new("r")?;
    rr.lan().attach(&r_ns, "eth0", [192, 168, 20, 2].into())?;
    sub.lan().attach(&r_ns, "eth1", [10, 77, 0, 1].into())?;

    let listener = tcp_listen(h, &h_ns, "listen-h", &python, H.into(), PORT, WAIT)?;

    let mut a = start_node(h, a_ns, "a")?;
    let r = start_node(h, r_ns, "r")?;
    // Forwarding starts off in a fresh namespace; only advertising routes turns it on.
    let fwd = r.ns.run(&["cat", "/proc/sys/net/ipv4/ip_forward"])?;
    ensure(fwd.trim() == "0", || format!("ip_forward before up: {fwd}"))?;

    for (node, name, extra) in [
        (&a, "a", ["--accept-routes"].as_slice()),
        (&r, "r", ["--advertise-routes", SUBNET].as_slice()),
    ] {
        let mut args = vec![
            "up",
            "--login-server",
            server.url(),
            "--auth-key",
            &key,
            "--hostname",
            name,
            "--timeout",
            "60",
        ];
        args.extend_from_slice(extra);
        node.weft(&args)?;
    }

    // A non-canonical prefix is refused with a clear error, and nothing changes.
    let bad = r.weft(&["up", "--advertise-routes", "10.77.0.1/24"]);
    match bad {
        Err(e) => ensure(e.to_string().contains("10.77.0.0/24"), || {
            format!("error for 10.77.0.1/24 does not name the canonical prefix: {e}")
        })?,
        Ok(out) => return Err(Error::Check(format!("10.77.0.1/24 was accepted: {out}"))),
    }

    // r serves the route: forwarding on, our SNAT table in place, the route in its status.
    let fwd = r.ns.run(&["cat", "/proc/sys/net/ipv4/ip_forward"])?;
    ensure(fwd.trim() == "1", || format!("ip_forward after up: {fwd}"))?;
    ensure(snat_table(&r.ns, "ip"), || "no `table ip weft` on r".into())?;
    ensure(!snat_table(&r.ns, "ip6"), || {
        "`table ip6 weft` on r without IPv6 routes".into()
    })?;
    let rs = r.status()?;
    ensure(strings(&rs["WeftRoutes"]["Advertised"]) == [SUBNET], || {
        format!("r's WeftRoutes: {}", rs["WeftRoutes"])
    })?;
    let r_id = rs["Self"]["ID"].as_str().unwrap_or_default().to_owned();
    ensure(!r_id.is_empty(), || format!("no Self.ID in {rs}"))?;

    // Control learns the advertised route from Hostinfo.RoutableIPs, but serves nothing yet.
    wait_for("control to see r's advertised route", WAIT, || {
        let v = control_routes(&server, &r_id).map_err(|e| e.to_string())?;
        if strings(&v["advertised_routes"]) == [SUBNET] {
            Ok(())
        } else {
            Err(v.to_string())
        }
    })?;
    let before = tcp_connect(&a.ns, &python, H.into(), PORT)?;
    ensure(!before.starts_with("ok"), || {
        format!("a reached h before the route was approved: {before}")
    })?;
    ensure(route(&a, SUBNET)?.is_empty(), || {
        format!("a routes {SUBNET} before approval")
    })?;
    let rp = peer(&a, "r")?;
    ensure(strings(&rp["PrimaryRoutes"]).is_empty(), || {
        format!("r has PrimaryRoutes before approval: {rp}")
    })?;

    // Approve; a routes the subnet into its TUN and reaches h's echo through r.
    let approved_at = Instant::now();
    server.admin(&[
        "nodes",
        "approve-routes",
        "--identifier",
        &r_id,
        "--routes",
        SUBNET,
    ])?;
    wait_for("a to route the subnet into weft0", WAIT, || {
        let route = route(&a, SUBNET).map_err(|e| e.to_string())?;
        if route.contains("dev weft0") {
            Ok(())
        } else {
            Err(format!("ip route show {SUBNET}: {route:?}"))
        }
    })?;
    let reply = wait_for("a to get h's echo through r", WAIT, || {
        match tcp_connect(&a.ns, &python, H.into(), PORT).map_err(|e| e.to_string())? {
            ok if ok == format!("ok echo hello {PORT}") => Ok(ok),
            other => Err(other),
        }
    })?;
    eprintln!(
        "a got {reply:?} from h {:?} after approve-routes",
        approved_at.elapsed()
    );
    // h saw r's LAN address (SNAT), never a tailnet address.
    let log = listener.log();
    ensure(log.contains("accepted 10.77.0.1"), || {
        format!("h's listener did not see r's LAN address: {log}")
    })?;
    ensure(!log.contains("accepted 100."), || {
        format!("h saw a tailnet source (no SNAT): {log}")
    })?;
    let rp = peer(&a, "r")?;
    ensure(strings(&rp["PrimaryRoutes"]) == [SUBNET], || {
        format!("a's view of r: {rp}")
    })?;
    ensure(
        strings(&rp["AllowedIPs"]).contains(&SUBNET.to_owned()),
        || format!("a's view of r: {rp}"),
    )?;
    let rs = r.status()?;
    ensure(strings(&rs["Self"]["PrimaryRoutes"]) == [SUBNET], || {
        format!("r's Self: {}", rs["Self"])
    })?;
    let as_ = a.status()?;
    ensure(strings(&as_["WeftRoutes"]["Installed"]) == [SUBNET], || {
        format!("a's WeftRoutes: {}", as_["WeftRoutes"])
    })?;

    // --accept-routes=false takes the route away (no re-login); turning it on brings it back.
    a.weft(&["up", "--accept-routes=false", "--timeout", "30"])?;
    ensure(route(&a, SUBNET)?.is_empty(), || {
        format!("a still routes {SUBNET} after --accept-routes=false")
    })?;
    let off = tcp_connect(&a.ns, &python, H.into(), PORT)?;
    ensure(!off.starts_with("ok"), || {
        format!("a reached h with --accept-routes=false: {off}")
    })?;
    a.weft(&["up", "--accept-routes", "--timeout", "30"])?;
    wait_for("a to reach h again", WAIT, || {
        match tcp_connect(&a.ns, &python, H.into(), PORT).map_err(|e| e.to_string())? {
            ok if ok.starts_with("ok") => Ok(()),
            other => Err(other),
        }
    })?;

    // r's inbound filter decides on subnet traffic by the netmap's rules: with a policy
    // that lets the tailnet reach h on PORT only, PORT+1 (nothing listens there; h would
    // refuse it) times out instead, dropped by r before it is forwarded.
    let other = PORT + 1;
    let p = tcp_connect(&a.ns, &python, H.into(), other)?;
    ensure(p == "refused", || {
        format!("port {other} on h before the policy: {p}")
    })?;
    let policy = h.subdir("policies")?.join("subnet-port.hujson");
    std::fs::write(
        &policy,
        format!(
            r#"{{"acls": [{{"action": "accept", "src": ["*"], "dst": ["{SUBNET}:{PORT}"]}}]}}"#
        ),
    )
    .map_err(|e| Error::Check(format!("writing policy: {e}")))?;
    let out = server.admin(&["policy", "set", &policy.display().to_string()])?;
    ensure(out.contains("applied"), || format!("policy set: {out}"))?;
    let drops_before = r.status()?["WeftDataPlane"]["FilteredIn"]
        .as_u64()
        .unwrap_or(0);
    wait_for(
        "r's filter to drop a's SYN to the other port",
        WAIT,
        || match tcp_connect(&a.ns, &python, H.into(), other).map_err(|e| e.to_string())? {
            t if t == "timeout" => Ok(()),
            o => Err(o),
        },
    )?;
    let p = tcp_connect(&a.ns, &python, H.into(), PORT)?;
    ensure(p == format!("ok echo hello {PORT}"), || {
        format!("port {PORT} under the policy: {p}")
    })?;
    wait_for("r to count the dropped SYNs", WAIT, || {
        let n = r.status().map_err(|e| e.to_string())?["WeftDataPlane"]["FilteredIn"]
            .as_u64()
            .unwrap_or(0);
        if n > drops_before {
            Ok(())
        } else {
            Err(format!("FilteredIn {n}"))
        }
    })?;
    std::fs::write(
        &policy,
        r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}"#,
    )
    .map_err(|e| Error::Check(format!("writing policy: {e}")))?;
    server.admin(&["policy", "set", &policy.display().to_string()])?;

    // r stops advertising (a second `up`, no re-login): control drops the primary route, a
    // removes its kernel route, r removes its SNAT table.
    r.weft(&["up", "--advertise-routes=", "--timeout", "30"])?;
    ensure(!snat_table(&r.ns, "ip"), || {
        "`table ip weft` still on r after --advertise-routes=".into()
    })?;
    wait_for("a to drop the route r no longer serves", WAIT, || {
        let route = route(&a, SUBNET).map_err(|e| e.to_string())?;
        if route.is_empty() {
            Ok(())
        } else {
            Err(format!("ip route show {SUBNET}: {route:?}"))
        }
    })?;

    // Exit node: r advertises 0.0.0.0/0 and ::/0 (SNAT for both families); once approved,
    // a sees it as an exit node option but installs no default route through it.
    r.weft(&["up", "--advertise-exit-node", "--timeout", "30"])?;
    ensure(snat_table(&r.ns, "ip") && snat_table(&r.ns, "ip6"), || {
        "exit node without both SNAT tables".into()
    })?;
    let fwd6 =
        r.ns.run(&["cat", "/proc/sys/net/ipv6/conf/all/forwarding"])?;
    ensure(fwd6.trim() == "1", || format!("IPv6 forwarding: {fwd6}"))?;
    wait_for("control to see r's exit routes", WAIT, || {
        let v = control_routes(&server, &r_id).map_err(|e| e.to_string())?;
        let adv = strings(&v["advertised_routes"]);
        if adv.contains(&"0.0.0.0/0".to_owned()) && adv.contains(&"::/0".to_owned()) {
            Ok(())
        } else {
            Err(v.to_string())
        }
    })?;
    server.admin(&[
        "nodes",
        "approve-routes",
        "--identifier",
        &r_id,
        "--routes",
        "0.0.0.0/0,::/0",
    ])?;
    wait_for("a to see r as an exit node option", WAIT, || {
        let rp = peer(&a, "r").map_err(|e| e.to_string())?;
        if rp["ExitNodeOption"] == true {
            Ok(())
        } else {
            Err(rp.to_string())
        }
    })?;
    let default = a.ns.ip(&["route", "show", "default"])?;
    ensure(!default.contains("weft0"), || {
        format!("a routes its default through the tailnet: {default}")
    })?;

    // r's daemon removes its tables when it exits.
    let mut r = r;
    r.daemon.stop();
    ensure(
        !snat_table(&r.ns, "ip") && !snat_table(&r.ns, "ip6"),
        || "SNAT tables left behind after r's daemon exited".into(),
    )?;
    a.daemon.check_alive()?;
    eprintln!("routes_subnet took {:?}", started.elapsed());
    Ok(())
}
