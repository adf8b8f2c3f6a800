//! The node-agent verbs of the `weft` binary: `daemon`, `up`, `down`, `status`, `ping`,
//! `netcheck`, `ip`, `logout`. Every verb but `daemon` is a LocalAPI client.
//!
//! The binary flattens [`AgentCommand`] into its own subcommand enum and passes its global
//! `--socket` to [`run`].

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::localapi::{
    BackendState, LocalClient, NetcheckReport, PingRequest, PingResult, Status, UpRequest,
};

/// Default LocalAPI socket.
pub const DEFAULT_SOCKET: &str = "/run/weft/weftd.sock";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/weft";
/// Default TUN device name.
pub const DEFAULT_TUN: &str = "weft0";

/// Node-agent subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AgentCommand {
    /// Run the node agent daemon (needs root for the TUN device).
    Daemon(DaemonArgs),
    /// Connect to the tailnet, logging in if needed.
    Up(UpArgs),
    /// Disconnect from the tailnet (stay logged in).
    Down,
    /// Show peers, addresses and paths.
    Status(StatusArgs),
    /// Disco-ping a peer, printing one line per pong, until the path is direct.
    Ping(PingArgs),
    /// Report on UDP connectivity, NAT mapping and DERP latency.
    Netcheck(NetcheckArgs),
    /// Show this node's tailnet addresses (or a peer's).
    Ip(IpArgs),
    /// Log out and expire this node's key.
    Logout,
    /// Tailnet lock: whether it is enabled and this node's signing state.
    #[command(subcommand)]
    Lock(LockCommand),
}

/// `weft lock` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum LockCommand {
    /// Whether tailnet lock is enabled, its head, this node's tailnet-lock key and whether
    /// this node's key is signed.
    Status {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

/// `weft daemon`.
#[derive(Debug, Clone, clap::Args)]
pub struct DaemonArgs {
    /// State directory (machine and node keys, mode 0600).
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// TUN device name; `userspace-networking` runs without one (no packets reach the host).
    #[arg(long, default_value = DEFAULT_TUN)]
    pub tun: String,
    /// UDP port for WireGuard, disco and STUN (0 = random).
    #[arg(long, default_value_t = 41641)]
    pub port: u16,
}

/// `weft up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Control server URL.
    #[arg(long)]
    pub login_server: Option<String>,
    /// Pre-auth key (without one, a login URL is printed).
    #[arg(long)]
    pub auth_key: Option<String>,
    /// Hostname to use instead of the OS one.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Comma-separated ACL tags to request (`tag:a,tag:b`).
    #[arg(long, value_delimiter = ',')]
    pub advertise_tags: Vec<String>,
    /// Comma-separated subnet routes to offer to the tailnet (`10.0.0.0/24,fd00::/64`);
    /// `--advertise-routes=` clears them. Kept from the last `up` when absent.
    #[arg(long, value_name = "CIDR[,CIDR...]")]
    pub advertise_routes: Option<String>,
    /// Offer this node as an exit node (advertises 0.0.0.0/0 and ::/0); `=false` stops.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub advertise_exit_node: Option<bool>,
    /// Route to the subnets that peers advertise; `=false` stops.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub accept_routes: Option<bool>,
    /// Give up after this many seconds (0 = wait forever).
    #[arg(long, default_value_t = 0)]
    pub timeout: u64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `weft status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Print the full status as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `weft ping`.
#[derive(Debug, Clone, clap::Args)]
pub struct PingArgs {
    /// Peer: name, tailnet IP or node key.
    pub peer: String,
    /// Maximum number of pings.
    #[arg(short = 'c', long, default_value_t = 10)]
    pub count: u32,
    /// Keep pinging after the path is direct.
    #[arg(long)]
    pub until_direct: Option<bool>,
    /// Per-ping timeout in seconds.
    #[arg(long, default_value_t = 5)]
    pub timeout: u64,
}

/// `weft netcheck`.
#[derive(Debug, Clone, clap::Args)]
pub struct NetcheckArgs {
    /// Output format: empty for text, `json` for JSON.
    #[arg(long, default_value = "")]
    pub format: String,
}

/// `weft ip`.
#[derive(Debug, Clone, clap::Args)]
pub struct IpArgs {
    /// Only the IPv4 address.
    #[arg(short = '4', conflicts_with = "v6")]
    pub v4: bool,
    /// Only the IPv6 address.
    #[arg(short = '6')]
    pub v6: bool,
    /// A peer to show instead of this node.
    pub peer: Option<String>,
}

/// Runs one verb. `daemon` is handled by the caller through [`crate::daemon::run`].
pub async fn run(cmd: AgentCommand, socket: &Path) -> anyhow::Result<()> {
    let c = LocalClient::new(socket);
    match cmd {
        AgentCommand::Daemon(args) => {
            crate::daemon::run(crate::daemon::DaemonConfig::from_args(&args, socket)).await
        }
        AgentCommand::Up(args) => up(&c, args).await,
        AgentCommand::Down => {
            c.down().await?;
            Ok(())
        }
        AgentCommand::Status(args) => {
            let s = c.status(None).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", format_status(&s));
                if s.backend_state != BackendState::Running {
                    std::process::exit(1);
                }
            }
            Ok(())
        }
        AgentCommand::Ping(args) => ping(&c, args).await,
        AgentCommand::Netcheck(args) => {
            let r = c.netcheck().await?;
            if args.format == "json" {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", format_netcheck(&r));
            }
            Ok(())
        }
        AgentCommand::Ip(args) => {
            let s = c.status(None).await?;
            let ips = pick_ips(&s, args.peer.as_deref(), args.v4, args.v6)?;
            for ip in ips {
                println!("{ip}");
            }
            Ok(())
        }
        AgentCommand::Logout => {
            c.logout().await?;
            Ok(())
        }
        AgentCommand::Lock(LockCommand::Status { json }) => {
            let s = c.status(None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s.tailnet_lock)?);
            } else {
                print!("{}", format_lock_status(&s.tailnet_lock));
            }
            Ok(())
        }
    }
}

/// `weft lock status` text, in the words of `tailscale lock status`.
pub fn format_lock_status(l: &crate::localapi::LockStatus) -> String {
    let mut out = String::new();
    if l.enabled {
        out.push_str("Tailnet lock is ENABLED.\n\n");
        if l.node_key_signed {
            out.push_str("This node is accessible under tailnet lock.\n\n");
        } else {
            out.push_str(
                "This node is LOCKED OUT by tailnet-lock, and action is required to establish \
                 connectivity.\nRun the following command on a node with a trusted key:\n\t\
                 weft lock sign ",
            );
            let _ = writeln!(out, "{}\n", l.node_key);
        }
        let _ = writeln!(out, "This node's tailnet-lock key: {}", l.nl_public);
        let _ = writeln!(out, "Head: {}", l.head);
    } else {
        out.push_str("Tailnet lock is NOT enabled.\n\n");
        let _ = writeln!(out, "This node's tailnet-lock key: {}", l.nl_public);
    }
    out
}

/// The LocalAPI request for `weft up` (validates `--advertise-routes`).
pub fn up_request(args: &UpArgs) -> anyhow::Result<UpRequest> {
    let advertise_routes = args
        .advertise_routes
        .as_deref()
        .map(|s| crate::routes::parse_routes(&[s]))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--advertise-routes: {e}"))?;
    Ok(UpRequest {
        login_server: args.login_server.clone().unwrap_or_default(),
        auth_key: args.auth_key.clone().unwrap_or_default(),
        hostname: args.hostname.clone().unwrap_or_default(),
        advertise_tags: args.advertise_tags.clone(),
        advertise_routes,
        advertise_exit_node: args.advertise_exit_node,
        accept_routes: args.accept_routes,
    })
}

async fn up(c: &LocalClient, args: UpArgs) -> anyhow::Result<()> {
    let req = up_request(&args)?;
    c.up(&req).await?;
    let deadline =
        (args.timeout > 0).then(|| tokio::time::Instant::now() + Duration::from_secs(args.timeout));
    let mut shown_url = String::new();
    let mut version = None;
    loop {
        let poll = c.status(version.map(|v| (v, Duration::from_secs(10))));
        let s = match deadline {
            Some(d) => tokio::time::timeout_at(d, poll)
                .await
                .map_err(|_| anyhow::anyhow!("timed out waiting for the node to come up"))??,
            None => poll.await?,
        };
        version = Some(s.version);
        if s.backend_state == BackendState::NeedsLogin {
            if let Some(e) = s.health.iter().find(|h| h.starts_with("control server:")) {
                bail!("{e}");
            }
        }
        if !s.auth_url.is_empty() && s.auth_url != shown_url {
            eprintln!("\nTo authenticate, visit:\n\n\t{}\n", s.auth_url);
            shown_url.clone_from(&s.auth_url);
        }
        match s.backend_state {
            BackendState::Running => {
                if args.json {
                    println!("{}", serde_json::json!({"BackendState": "Running"}));
                } else if !shown_url.is_empty() {
                    eprintln!("Success.");
                }
                return Ok(());
            }
            BackendState::NeedsMachineAuth if shown_url != "machine-auth" => {
                eprintln!("Machine is not yet approved by the tailnet admin.");
                shown_url = "machine-auth".into();
            }
            _ => {}
        }
    }
}

async fn ping(c: &LocalClient, args: PingArgs) -> anyhow::Result<()> {
    let until_direct = args.until_direct.unwrap_or(true);
    let mut any_pong = false;
    let count = args.count.max(1);
    for n in 1..=count {
        let r = c
            .ping(&PingRequest {
                peer: args.peer.clone(),
                timeout_ms: args.timeout * 1000,
            })
            .await?;
        if r.err.ends_with("timed out") {
            println!("{}", r.err);
            continue;
        }
        if !r.err.is_empty() {
            bail!("{}", r.err);
        }
        any_pong = true;
        println!("{}", format_pong(&r));
        if until_direct && !r.endpoint.is_empty() {
            return Ok(());
        }
        if n < count {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    if !any_pong {
        bail!("no reply");
    }
    if until_direct {
        bail!("direct connection not established");
    }
    Ok(())
}

/// One line per pong, in Tailscale's words.
pub fn format_pong(r: &PingResult) -> String {
    let ms = (r.latency_seconds * 1000.0).round() as u64;
    let via = if r.endpoint.is_empty() {
        format!("DERP({})", r.derp_region_code)
    } else {
        r.endpoint.clone()
    };
    format!(
        "pong from {} ({}) via {} in {}ms",
        r.node_name, r.ip, via, ms
    )
}

/// `weft status` text: one line per node, like `tailscale status`.
pub fn format_status(s: &Status) -> String {
    let mut out = String::new();
    match s.backend_state {
        BackendState::Running | BackendState::Starting => {}
        BackendState::NeedsLogin => {
            out.push_str("Logged out.\n");
            if !s.auth_url.is_empty() {
                let _ = writeln!(out, "Log in at: {}", s.auth_url);
            }
        }
        BackendState::NeedsMachineAuth => {
            out.push_str("Machine is not yet approved by the tailnet admin.\n")
        }
        BackendState::Stopped => out.push_str("Weft is stopped.\n"),
        BackendState::NoState => out.push_str("Weft is not configured; run `weft up`.\n"),
    }
    if let Some(me) = &s.self_ {
        out.push_str(&node_line(me, &with_routes(me, "-".to_owned())));
    }
    for p in s.peer.values() {
        let state = if !p.cur_addr.is_empty() {
            format!(
                "active; direct {}, tx {} rx {}",
                p.cur_addr, p.tx_bytes, p.rx_bytes
            )
        } else if p.tx_bytes > 0 || p.rx_bytes > 0 {
            format!(
                "active; relay \"{}\", tx {} rx {}",
                p.relay, p.tx_bytes, p.rx_bytes
            )
        } else if !p.online {
            "offline".to_owned()
        } else {
            "-".to_owned()
        };
        out.push_str(&node_line(p, &with_routes(p, state)));
    }
    for h in &s.health {
        let _ = writeln!(out, "# Health check: {h}");
    }
    out
}

fn node_line(p: &crate::localapi::PeerStatus, state: &str) -> String {
    let ip = p
        .tailscale_ips
        .iter()
        .find(|i| i.is_ipv4())
        .or(p.tailscale_ips.first());
    let ip = ip.map(ToString::to_string).unwrap_or_else(|| "-".into());
    let name = if p.host_name.is_empty() {
        p.dns_name.split('.').next().unwrap_or("-")
    } else {
        &p.host_name
    };
    let owner = if p.tags.is_empty() {
        format!("user{}", p.user_id)
    } else {
        "tagged-devices".into()
    };
    let os = if p.os.is_empty() { "-" } else { &p.os };
    format!("{ip:<15} {name:<20} {owner:<15} {os:<7} {state}\n")
}

/// `state`, plus what the node routes: "; offers exit node" as Tailscale prints it, and the
/// subnets it serves.
fn with_routes(p: &crate::localapi::PeerStatus, mut state: String) -> String {
    if p.exit_node_option {
        state.push_str("; offers exit node");
    }
    if !p.primary_routes.is_empty() {
        let routes: Vec<String> = p.primary_routes.iter().map(ToString::to_string).collect();
        let _ = write!(state, "; subnets {}", routes.join(","));
    }
    state
}

/// `weft netcheck` text, in the shape of `tailscale netcheck`.
pub fn format_netcheck(r: &NetcheckReport) -> String {
    let mut out = String::from("\nReport:\n");
    let _ = writeln!(out, "\t* UDP: {}", r.udp);
    if r.ipv4 {
        let _ = writeln!(out, "\t* IPv4: yes, {}", r.global_v4);
    } else {
        let _ = writeln!(out, "\t* IPv4: (no addr found)");
    }
    let _ = writeln!(
        out,
        "\t* IPv6: {}",
        if r.ipv6 {
            format!("yes, {}", r.global_v6)
        } else {
            "no".into()
        }
    );
    let varies = r
        .mapping_varies_by_dest_ip
        .map_or(String::new(), |b| b.to_string());
    let _ = writeln!(out, "\t* MappingVariesByDestIP: {varies}");
    let home = r
        .region_codes
        .get(&r.preferred_derp)
        .cloned()
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "\t* Nearest DERP: {}",
        if home.is_empty() {
            "unknown (no response to latency probes)".into()
        } else {
            home
        }
    );
    out.push_str("\t* DERP latency:\n");
    let mut rows: Vec<(u16, f64)> = r.region_latency.iter().map(|(k, v)| (*k, *v)).collect();
    rows.sort_by(|a, b| a.1.total_cmp(&b.1));
    for (id, secs) in rows {
        let code = r
            .region_codes
            .get(&id)
            .cloned()
            .unwrap_or_else(|| id.to_string());
        let _ = writeln!(out, "\t\t- {code}: {:.1}ms", secs * 1000.0);
    }
    for (id, code) in &r.region_codes {
        if !r.region_latency.contains_key(id) {
            let _ = writeln!(out, "\t\t- {code}: -");
        }
    }
    out
}

/// The addresses `weft ip` prints.
pub fn pick_ips(s: &Status, peer: Option<&str>, v4: bool, v6: bool) -> anyhow::Result<Vec<IpAddr>> {
    let ips = match peer {
        None => {
            if s.tailscale_ips.is_empty() {
                bail!("no current Tailscale IPs; state: {:?}", s.backend_state);
            }
            s.tailscale_ips.clone()
        }
        Some(q) => {
            let p = s
                .peer
                .values()
                .find(|p| {
                    p.host_name.eq_ignore_ascii_case(q)
                        || p.dns_name
                            .trim_end_matches('.')
                            .eq_ignore_ascii_case(q.trim_end_matches('.'))
                        || p.tailscale_ips.iter().any(|i| i.to_string() == q)
                        || p.public_key == q
                })
                .with_context(|| format!("no peer named {q:?}"))?;
            p.tailscale_ips.clone()
        }
    };
    let out: Vec<IpAddr> = ips
        .into_iter()
        .filter(|i| (!v4 || i.is_ipv4()) && (!v6 || i.is_ipv6()))
        .collect();
    if out.is_empty() {
        bail!("no address of the requested family");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::localapi::PeerStatus;

    #[test]
    fn pong_lines_use_tailscales_words() {
        let mut r = PingResult {
            ip: "100.64.0.2".into(),
            node_name: "bravo".into(),
            latency_seconds: 0.0031,
            endpoint: "192.0.2.1:41641".into(),
            ..PingResult::default()
        };
        assert_eq!(
            format_pong(&r),
            "pong from bravo (100.64.0.2) via 192.0.2.1:41641 in 3ms"
        );
        r.endpoint.clear();
        r.derp_region_code = "test".into();
        r.latency_seconds = 0.02;
        assert_eq!(
            format_pong(&r),
            "pong from bravo (100.64.0.2) via DERP(test) in 20ms"
        );
    }

    fn status() -> Status {
        let me = PeerStatus {
            host_name: "alpha".into(),
            tailscale_ips: vec![
                "100.64.0.1".parse().unwrap(),
                "fd7a:115c:a1e0::1".parse().unwrap(),
            ],
            ..PeerStatus::default()
        };
        let b = PeerStatus {
            host_name: "bravo".into(),
            public_key: "nodekey:bb".into(),
            tailscale_ips: vec![
                "100.64.0.2".parse().unwrap(),
                "fd7a:115c:a1e0::2".parse().unwrap(),
            ],
            cur_addr: "192.0.2.1:41641".into(),
            online: true,
            ..PeerStatus::default()
        };
        Status {
            backend_state: BackendState::Running,
            tailscale_ips: me.tailscale_ips.clone(),
            self_: Some(me),
            peer: [("nodekey:bb".to_owned(), b)].into_iter().collect(),
            ..Status::default()
        }
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: AgentCommand,
    }

    fn up_args(args: &[&str]) -> UpArgs {
        use clap::Parser;
        let mut all = vec!["weft", "up"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all).unwrap().cmd {
            AgentCommand::Up(a) => a,
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn up_route_flags_parse_validate_and_default_to_unchanged() {
        let r = up_request(&up_args(&[])).unwrap();
        assert_eq!(
            (r.advertise_routes, r.advertise_exit_node, r.accept_routes),
            (None, None, None)
        );
        let r = up_request(&up_args(&[
            "--advertise-routes",
            "10.77.0.0/24,fd00:77::/64",
            "--advertise-exit-node",
            "--accept-routes",
        ]))
        .unwrap();
        assert_eq!(
            r.advertise_routes.unwrap(),
            vec![
                "10.77.0.0/24".parse::<ipnet::IpNet>().unwrap(),
                "fd00:77::/64".parse().unwrap()
            ]
        );
        assert_eq!(
            (r.advertise_exit_node, r.accept_routes),
            (Some(true), Some(true))
        );
        let r = up_request(&up_args(&["--advertise-routes=", "--accept-routes=false"])).unwrap();
        assert_eq!(r.advertise_routes, Some(vec![]));
        assert_eq!(r.accept_routes, Some(false));
        let e = up_request(&up_args(&["--advertise-routes", "10.77.0.1/24"])).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("--advertise-routes") && e.contains("10.77.0.0/24"),
            "{e}"
        );
    }

    #[test]
    fn ip_picks_by_family_and_peer() {
        let s = status();
        assert_eq!(
            pick_ips(&s, None, true, false).unwrap(),
            vec!["100.64.0.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            pick_ips(&s, None, false, true).unwrap(),
            vec!["fd7a:115c:a1e0::1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(pick_ips(&s, None, false, false).unwrap().len(), 2);
        assert_eq!(
            pick_ips(&s, Some("bravo"), true, false).unwrap(),
            vec!["100.64.0.2".parse::<IpAddr>().unwrap()]
        );
        assert!(pick_ips(&s, Some("charlie"), false, false).is_err());
        assert!(pick_ips(&Status::default(), None, true, false).is_err());
    }

    #[test]
    fn status_lists_self_then_peers_with_their_path() {
        let text = format_status(&status());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("100.64.0.1") && lines[0].contains("alpha"));
        assert!(
            lines[1].contains("bravo") && lines[1].contains("active; direct 192.0.2.1:41641"),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn lock_status_text_names_the_state_and_the_keys() {
        use crate::localapi::LockStatus;
        let off = format_lock_status(&LockStatus {
            nl_public: "tlpub:ab".into(),
            ..LockStatus::default()
        });
        assert!(off.starts_with("Tailnet lock is NOT enabled."), "{off}");
        assert!(off.contains("tailnet-lock key: tlpub:ab"));
        let on = LockStatus {
            enabled: true,
            head: "HEAD".into(),
            nl_public: "tlpub:ab".into(),
            node_key: "nodekey:cd".into(),
            node_key_signed: true,
        };
        let t = format_lock_status(&on);
        assert!(t.contains("ENABLED") && t.contains("accessible") && t.contains("Head: HEAD"));
        let t = format_lock_status(&LockStatus {
            node_key_signed: false,
            ..on
        });
        assert!(
            t.contains("LOCKED OUT") && t.contains("weft lock sign nodekey:cd"),
            "{t}"
        );
    }

    #[test]
    fn status_shows_exit_nodes_and_served_subnets() {
        let mut s = status();
        let p = s.peer.values_mut().next().unwrap();
        p.exit_node_option = true;
        p.primary_routes = vec!["10.77.0.0/24".parse().unwrap()];
        let text = format_status(&s);
        let line = text.lines().nth(1).unwrap();
        assert!(
            line.ends_with("; offers exit node; subnets 10.77.0.0/24"),
            "{line}"
        );
        assert!(!text.lines().next().unwrap().contains("offers"));
    }

    #[test]
    fn netcheck_text_names_the_home_region_and_latencies() {
        let r = NetcheckReport {
            udp: true,
            ipv4: true,
            global_v4: "198.51.100.1:41641".into(),
            mapping_varies_by_dest_ip: Some(false),
            preferred_derp: 900,
            region_latency: [(900, 0.0012)].into_iter().collect(),
            region_codes: [(900, "test".to_owned()), (901, "other".to_owned())]
                .into_iter()
                .collect(),
            ..NetcheckReport::default()
        };
        let t = format_netcheck(&r);
        assert!(t.contains("* UDP: true"));
        assert!(t.contains("* IPv4: yes, 198.51.100.1:41641"));
        assert!(t.contains("* MappingVariesByDestIP: false"));
        assert!(t.contains("* Nearest DERP: test"));
        assert!(t.contains("- test: 1.2ms"));
        assert!(t.contains("- other: -"));
    }
}
