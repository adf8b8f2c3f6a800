//! Issue 5: under a policy allowing beta (bob) to reach alpha (alice) on port 80 only, two
//! real tsnet clients reach exactly what the policy allows, and policy changes made with
//! `weft policy set` take effect within a second, without the clients reconnecting.
//!
//! Topology: one LAN 10.0.0.0/24 with the weft server (10.0.0.2), alpha (10.0.0.11) and
//! beta (10.0.0.12). beta proxies `127.0.0.1:8080` (in its namespace) to alpha's tailnet
//! address port 80; curl in beta's namespace fetches through it.

use std::time::{Duration, Instant};

use weft_e2e::{
    wait_for, Error, Harness, Netns, Result, Segment, TsnetConfig, TsnetNode, WeftServer,
};

const SERVER: [u8; 4] = [10, 0, 0, 2];
const TIMEOUT: Duration = Duration::from_secs(90);

const ALLOW_80: &str = r#"{
  "acls": [
    {"action": "accept", "src": ["bob@"], "dst": ["alice@:80"]},
  ],
  "tests": [
    {"src": "bob@", "accept": ["alice@:80"], "deny": ["alice@:22"]},
  ],
}"#;

const ALLOW_443: &str = r#"{
  "acls": [
    {"action": "accept", "src": ["bob@"], "dst": ["alice@:443"]},
  ],
}"#;

#[test]
#[ignore = "needs root + netns"]
fn policy_allows_exactly_port_80_and_changes_apply_within_a_second() -> Result<()> {
    let h = Harness::new("issue5_policy")?;
    h.finish(run(&h))
}

/// One fetch through beta's proxy with a short deadline: `Ok(body)` or `Err(reason)`.
fn fetch(b_ns: &Netns) -> std::result::Result<String, String> {
    match b_ns.run(&["curl", "-sS", "--max-time", "1", "http://127.0.0.1:8080/"]) {
        Ok(body) if body.contains("hello from alpha") => Ok(body),
        Ok(body) => Err(format!("unexpected body: {body:?}")),
        Err(e) => Err(e.to_string()),
    }
}

fn set_policy(h: &Harness, server: &WeftServer, name: &str, text: &str) -> Result<Instant> {
    let dir = h.subdir("policies")?;
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|e| Error::Check(format!("writing policy: {e}")))?;
    let out = server.admin(&["policy", "set", &path.display().to_string()])?;
    if !out.contains("applied") {
        return Err(Error::Check(format!("policy set printed {out:?}")));
    }
    Ok(Instant::now())
}

fn run(h: &Harness) -> Result<()> {
    let public = Segment::new("pub", 24)?;
    let s_ns = Netns::new("srv")?;
    let a_ns = Netns::new("a")?;
    let b_ns = Netns::new("b")?;
    public.lan().attach(&s_ns, "eth0", SERVER.into())?;
    public.lan().attach(&a_ns, "eth0", [10, 0, 0, 11].into())?;
    public.lan().attach(&b_ns, "eth0", [10, 0, 0, 12].into())?;

    let mut server = WeftServer::start(h, &s_ns, SERVER.into(), 8080)?;
    server.create_user("alice")?;
    server.create_user("bob")?;
    let ka = server.create_authkey("alice", false)?;
    let kb = server.create_authkey("bob", false)?;
    set_policy(h, &server, "allow80.hujson", ALLOW_80)?;

    let mut a = TsnetNode::start(h, &a_ns, TsnetConfig::new("alpha", server.url(), &ka))?;
    let alpha = server.wait_node("alpha", TIMEOUT)?;
    let alpha_ip = alpha
        .cgnat_ipv4()
        .ok_or_else(|| Error::Check(format!("alpha has no CGNAT address: {}", alpha.raw)))?;
    let b_cfg = TsnetConfig::new("beta", server.url(), &kb).with_proxy(
        "127.0.0.1:8080"
            .parse()
            .map_err(|_| Error::Check("addr".into()))?,
        &format!("{alpha_ip}:80"),
    );
    let mut b = TsnetNode::start(h, &b_ns, b_cfg)?;
    a.wait_running(TIMEOUT)?;
    b.wait_running(TIMEOUT)?;
    b.wait_peers(1, TIMEOUT)?;

    // Allowed: beta → alpha:80 is answered.
    wait_for(
        "alpha's page through beta (port 80 allowed)",
        TIMEOUT,
        || {
            if let Err(e) = a.proc().check_alive().and_then(|()| b.proc().check_alive()) {
                return Ok(Err(e));
            }
            fetch(&b_ns).map(Ok)
        },
    )??;

    // Denied: with only port 443 allowed, the request to port 80 is dropped, and the
    // change takes effect within a second of `policy set`.
    let set_at = set_policy(h, &server, "allow443.hujson", ALLOW_443)?;
    loop {
        let started = set_at.elapsed();
        match fetch(&b_ns) {
            // Dropped, not refused: the request times out.
            Err(e) if e.contains("timed out") || e.contains("(28)") => break,
            Err(e) => return Err(Error::Check(format!("denied request not dropped: {e}"))),
            Ok(_) if started < Duration::from_secs(1) => continue,
            Ok(_) => {
                return Err(Error::Check(format!(
                    "port 80 still answered {started:?} after the policy denied it"
                )))
            }
        }
    }

    // Allowed again: answered within a second, same processes, no new registration.
    let set_at = set_policy(h, &server, "allow80-again.hujson", ALLOW_80)?;
    loop {
        let started = set_at.elapsed();
        match fetch(&b_ns) {
            Ok(_) => break,
            Err(_) if started < Duration::from_secs(1) => continue,
            Err(e) => {
                return Err(Error::Check(format!(
                    "port 80 not answered {started:?} after the policy allowed it again: {e}"
                )))
            }
        }
    }
    a.proc().check_alive()?;
    b.proc().check_alive()?;
    let nodes = server.nodes()?;
    if nodes.len() != 2 {
        return Err(Error::Check(format!(
            "expected 2 nodes, got {}",
            nodes.len()
        )));
    }
    server.proc().check_alive()?;
    Ok(())
}
