//! Issue 2: pre-auth keys as an unmodified client sees them. A single-use key registers
//! one node only, and a client with a used or unknown key is refused with an error that
//! reaches the client's log, and registers nothing.

use std::time::Duration;

use weft_e2e::{Error, Harness, Netns, Result, Segment, TsnetConfig, TsnetNode, WeftServer};

const SERVER: [u8; 4] = [10, 0, 0, 2];
const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
#[ignore = "needs root + netns"]
fn tsnet_clients_with_used_or_unknown_keys_are_refused_with_an_error() -> Result<()> {
    let h = Harness::new("issue2_authkeys")?;
    h.finish(authkeys(&h))
}

fn authkeys(h: &Harness) -> Result<()> {
    // Arrange.
    let public = Segment::new("pub", 24)?;
    let s_ns = Netns::new("srv")?;
    let a_ns = Netns::new("a")?;
    let b_ns = Netns::new("b")?;
    let c_ns = Netns::new("c")?;
    public.lan().attach(&s_ns, "eth0", SERVER.into())?;
    public.lan().attach(&a_ns, "eth0", [10, 0, 0, 11].into())?;
    public.lan().attach(&b_ns, "eth0", [10, 0, 0, 12].into())?;
    public.lan().attach(&c_ns, "eth0", [10, 0, 0, 13].into())?;
    let server = WeftServer::start(h, &s_ns, SERVER.into(), 8080)?;
    server.create_user("alice")?;
    let single_use = server.create_authkey("alice", false)?;
    let unknown = format!(
        "{}0",
        single_use.trim_end_matches(|c: char| c.is_ascii_alphanumeric())
    );

    // Act: the single-use key registers alpha, then beta tries the same key and gamma
    // an unknown one.
    let _a = TsnetNode::start(
        h,
        &a_ns,
        TsnetConfig::new("alpha", server.url(), &single_use),
    )?;
    server.wait_node("alpha", TIMEOUT)?;
    let mut b = TsnetNode::start(
        h,
        &b_ns,
        TsnetConfig::new("beta", server.url(), &single_use),
    )?;
    let mut c = TsnetNode::start(h, &c_ns, TsnetConfig::new("gamma", server.url(), &unknown))?;

    // Assert: both are told why (tsnet logs control's error), and neither is a node.
    let b_err = b.proc().wait_log_line(
        "a registration error from control",
        TIMEOUT,
        is_register_error,
    )?;
    let c_err = c.proc().wait_log_line(
        "a registration error from control",
        TIMEOUT,
        is_register_error,
    )?;
    eprintln!("beta (used key): {b_err}\ngamma (unknown key): {c_err}");
    let nodes = server.nodes()?;
    if nodes.len() != 1
        || nodes
            .iter()
            .any(|n| n.has_name("beta") || n.has_name("gamma"))
    {
        return Err(Error::Check(format!(
            "expected only alpha, got: {:?}",
            nodes.iter().map(|n| n.raw.to_string()).collect::<Vec<_>>()
        )));
    }
    Ok(())
}

/// tsnet's log of an error answer to /machine/register (e.g. "Received error: invalid
/// auth key: already used"), as opposed to network errors.
fn is_register_error(line: &str) -> bool {
    line.contains("Received error:")
        && line.contains("key")
        && !line.contains("dial tcp")
        && !line.contains("fetch control key")
}
