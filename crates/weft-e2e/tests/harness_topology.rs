//! The harness's own network pieces, checked with plain HTTP (caddy's `respond`),
//! so a broken topology is told apart from a broken weft.

use std::time::Duration;

use weft_e2e::{caddy_binary, wait_for, Harness, Mapping, NatRouter, Netns, Result, Segment};

#[test]
#[ignore = "needs root + netns"]
fn nat_router_masquerades_outbound_and_drops_unsolicited_inbound() -> Result<()> {
    let h = Harness::new("harness_topology")?;
    h.finish(topology(&h))
}

fn topology(h: &Harness) -> Result<()> {
    // Arrange: a server on the public segment, a client behind a NAT router.
    let public = Segment::new("pub", 24)?;
    let s_ns = Netns::new("srv")?;
    public.lan().attach(&s_ns, "eth0", [10, 0, 0, 2].into())?;
    let router = NatRouter::new(
        "r",
        public.lan(),
        [10, 0, 0, 21].into(),
        [192, 168, 10, 1].into(),
        24,
        Mapping::EndpointDependent,
    )?;
    let c_ns = Netns::new("c")?;
    router
        .lan()
        .attach(&c_ns, "eth0", [192, 168, 10, 2].into())?;
    let respond = |ns: &Netns, name: &str, listen: &str| {
        h.spawn(
            ns,
            name,
            &caddy_binary(),
            &[
                "respond".to_owned(),
                "--listen".to_owned(),
                listen.to_owned(),
                "seen {http.request.remote.host}".to_owned(),
            ],
            &[("HOME".to_owned(), h.dir().display().to_string())],
        )
    };
    let _server = respond(&s_ns, "respond-server", "10.0.0.2:8080")?;
    let _client = respond(&c_ns, "respond-client", "192.168.10.2:8080")?;

    // Act + assert: outbound works and is masqueraded to the router's WAN address.
    let seen = wait_for(
        "client to reach the server through the NAT",
        Duration::from_secs(20),
        || {
            c_ns.run(&["curl", "-sS", "--max-time", "2", "http://10.0.0.2:8080/"])
                .map_err(|e| e.to_string())
        },
    )?;
    assert_eq!(seen.trim(), format!("seen {}", router.wan_addr()));

    // The client's own listener answers locally…
    let local = wait_for("client's listener", Duration::from_secs(20), || {
        c_ns.run(&[
            "curl",
            "-sS",
            "--max-time",
            "2",
            "http://192.168.10.2:8080/",
        ])
        .map_err(|e| e.to_string())
    })?;
    assert_eq!(local.trim(), "seen 192.168.10.2");
    // …but the public side can reach neither the LAN nor the router itself.
    s_ns.ip(&["route", "add", "192.168.10.0/24", "via", "10.0.0.21"])?;
    let inbound = s_ns.run(&[
        "curl",
        "-sS",
        "--max-time",
        "2",
        "http://192.168.10.2:8080/",
    ]);
    assert!(
        inbound.is_err(),
        "unsolicited inbound reached the LAN: {inbound:?}"
    );
    let to_router = s_ns.run(&["curl", "-sS", "--max-time", "2", "http://10.0.0.21:22/"]);
    assert!(
        to_router.is_err(),
        "router answered on its WAN side: {to_router:?}"
    );
    Ok(())
}
