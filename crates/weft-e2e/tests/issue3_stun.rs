//! Issue 3: STUN clients behind an nftables NAT get the NAT's outside address from the
//! STUN server embedded in `weft server`.
//!
//! Topology: public 10.0.0.0/24 with the server (.2, STUN on UDP 3478); a client
//! behind NAT router r (WAN 10.0.0.21).

use std::time::Duration;

use weft_e2e::{
    find_in_path, wait_for, Harness, Mapping, NatRouter, Netns, Result, Segment, WeftServer,
};

const SERVER: [u8; 4] = [10, 0, 0, 2];

#[test]
#[ignore = "needs root + netns"]
fn coturn_stun_client_behind_nat_gets_the_nat_address_from_weft_stun() -> Result<()> {
    let h = Harness::new("issue3_stun")?;
    h.finish(stun(&h))
}

fn stun(h: &Harness) -> Result<()> {
    // Arrange.
    let public = Segment::new("pub", 24)?;
    let s_ns = Netns::new("srv")?;
    public.lan().attach(&s_ns, "eth0", SERVER.into())?;
    let router = NatRouter::new(
        "r",
        public.lan(),
        [10, 0, 0, 21].into(),
        [192, 168, 10, 1].into(),
        24,
        Mapping::EndpointIndependent,
    )?;
    let c_ns = Netns::new("c")?;
    router
        .lan()
        .attach(&c_ns, "eth0", [192, 168, 10, 2].into())?;
    let _server = WeftServer::start_with_args(
        h,
        &s_ns,
        SERVER.into(),
        8080,
        &["--stun-listen", "10.0.0.2:3478"],
    )?;
    let client = find_in_path("turnutils_stunclient").ok_or_else(|| {
        weft_e2e::Error::Environment("turnutils_stunclient (Debian package coturn)".to_owned())
    })?;
    let client = client.display().to_string();

    // Act: a binding request from behind the NAT (UDP may need a retry while the
    // server's socket comes up, so poll).
    let out = wait_for("a STUN answer from weft", Duration::from_secs(20), || {
        c_ns.run(&[&client, "-p", "3478", "10.0.0.2"])
            .map_err(|e| e.to_string())
    })?;

    // Assert: the reflexive address is the router's WAN address.
    let reflexive = out
        .lines()
        .find(|l| l.contains("reflexive addr"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        reflexive.contains(&format!("{}:", router.wan_addr())),
        "expected the NAT's address {} in {reflexive:?}; full output:\n{out}",
        router.wan_addr()
    );
    Ok(())
}
