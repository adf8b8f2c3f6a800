//! `weft server`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use axum::Router;
use clap::Args;
use weft_control::{Control, ControlConfig, FileConfig};
use weft_tailcfg::{DerpMap, DerpNode, DerpRegion};

/// Default data directory (relative to the working directory) for the server and the
/// admin commands.
pub(crate) const DEFAULT_DATA_DIR: &str = "weft-data";

/// `weft server` flags. Flags override the config file.
#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// Plain-HTTP listen address (serves /key, /ts2021, login pages).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The URL clients use (`--login-server`); default http://LISTEN.
    #[arg(long)]
    url: Option<String>,
    /// State directory (database, keys, admin socket).
    #[arg(long, env = "WEFT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Database URL (sqlite://PATH or postgres://...); default sqlite in the data directory.
    #[arg(long)]
    database: Option<String>,
    /// TLS certificate chain (PEM); enables the HTTPS listener.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// HTTPS listen address (default 0.0.0.0:443).
    #[arg(long)]
    tls_listen: Option<SocketAddr>,
    /// Use this DERP map (tailcfg JSON) instead of the embedded relay.
    #[arg(long)]
    derp_map: Option<PathBuf>,
    /// Do not run the embedded DERP relay and STUN server.
    #[arg(long)]
    no_derp: bool,
    /// Embedded DERP (TLS) listen address; default: the listen IP, a free port.
    #[arg(long)]
    derp_listen: Option<SocketAddr>,
    /// Embedded STUN (UDP) listen address; default: the listen IP, a free port.
    #[arg(long)]
    stun_listen: Option<SocketAddr>,
}

fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?.to_string()
    } else {
        authority
            .rsplit_once(':')
            .map_or(authority, |(h, _)| h)
            .to_string()
    };
    (!host.is_empty()).then_some(host)
}

fn display_addr(a: SocketAddr) -> SocketAddr {
    if a.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), a.port())
    } else {
        a
    }
}

fn ensure_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

/// The embedded relay and its DERP map.
struct EmbeddedDerp {
    running: weft_derp::standalone::Running,
    map: DerpMap,
}

async fn start_embedded_derp(
    data_dir: &Path,
    url: &str,
    listen: SocketAddr,
    derp_listen: Option<SocketAddr>,
    stun_listen: Option<SocketAddr>,
) -> anyhow::Result<EmbeddedDerp> {
    let host = host_of(url).unwrap_or_else(|| display_addr(listen).ip().to_string());
    let derp_addr = derp_listen.unwrap_or(SocketAddr::new(listen.ip(), 0));
    let stun_addr = stun_listen.unwrap_or(SocketAddr::new(listen.ip(), 0));
    let cfg = weft_derp::StandaloneConfig {
        addr: derp_addr,
        tls: weft_derp::standalone::TlsSource::SelfSigned(vec![host.clone()]),
        http_port: None,
        stun_addr: Some(stun_addr),
        key_file: data_dir.join("derp.key"),
        mesh_with: Vec::new(),
        mesh_key_file: None,
        mesh_tls: weft_derp::TlsMode::InsecureForTests,
        verify_clients: None,
        verify_fail_open: false,
    };
    let running = weft_derp::standalone::start(cfg)
        .await
        .context("starting the embedded DERP relay")?;
    let ip = display_addr(running.derp_addr).ip();
    let ip_from_host: Option<IpAddr> = host.parse().ok();
    let dial_ip = if running.derp_addr.ip().is_unspecified() {
        ip_from_host.unwrap_or(ip)
    } else {
        ip
    };
    let mut node = DerpNode {
        name: "900a".into(),
        region_id: 900,
        host_name: host,
        derp_port: i32::from(running.derp_addr.port()),
        stun_port: running.stun_addr.map_or(-1, |a| i32::from(a.port())),
        ..DerpNode::default()
    };
    match dial_ip {
        IpAddr::V4(v4) => {
            node.ipv4 = v4.to_string();
            node.ipv6 = "none".into();
        }
        IpAddr::V6(v6) => {
            node.ipv6 = v6.to_string();
            node.ipv4 = "none".into();
        }
    }
    if let Some(sha) = running.cert_sha256 {
        node.cert_name = format!("sha256-raw:{}", hex::encode(sha));
    }
    let mut map = DerpMap::default();
    map.regions.insert(
        900,
        DerpRegion {
            region_id: 900,
            region_code: "weft".into(),
            region_name: "weft".into(),
            nodes: vec![node],
            ..DerpRegion::default()
        },
    );
    tracing::info!(derp = %running.derp_addr, stun = ?running.stun_addr, "embedded DERP relay running (region 900)");
    Ok(EmbeddedDerp { running, map })
}

async fn serve_tls(
    addr: SocketAddr,
    cert: &Path,
    key: &Path,
    app: Router,
) -> anyhow::Result<SocketAddr> {
    let ck = weft_derp::tls::CertKey::from_pem_files(cert, key)
        .context("loading the TLS certificate")?;
    let acceptor = tokio_rustls::TlsAcceptor::from(
        weft_derp::tls::server_config(ck, None).context("building the TLS configuration")?,
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the HTTPS listener {addr}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(%bound, "HTTPS listener running");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, remote)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp));
                let Ok(Ok(tls)) = handshake.await else {
                    tracing::debug!(%remote, "TLS handshake failed");
                    return;
                };
                let svc = hyper_util::service::TowerToHyperService::new(app);
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                if let Err(e) = builder
                    .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), svc)
                    .await
                {
                    tracing::debug!(%remote, error = %e, "HTTPS connection ended");
                }
            });
        }
    });
    Ok(bound)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        let Ok(mut term) = term else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

pub(crate) async fn run(a: ServerArgs) -> anyhow::Result<()> {
    let file = match &a.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let data_dir = a
        .data_dir
        .clone()
        .or(file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    ensure_dir(&data_dir)?;
    let listen = a
        .listen
        .or(file.listen)
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080)));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let bound = listener.local_addr()?;
    let url = a
        .url
        .clone()
        .or(file.server_url.clone())
        .unwrap_or_else(|| format!("http://{}", display_addr(bound)));
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("--url must start with http:// or https:// (got {url:?})");
    }
    let db_url = a
        .database
        .clone()
        .or(file.database_url.clone())
        .unwrap_or_else(|| weft_store::sqlite_url_for_dir(&data_dir));
    let store = weft_store::open(&db_url)
        .await
        .context("opening the database")?;

    let mut cfg = ControlConfig::new(&url);
    cfg.apply_file(&file)?;
    let derp_map_path = a.derp_map.clone().or(file.derp_map_path.clone());
    let mut embedded = None;
    if let Some(p) = &derp_map_path {
        cfg.derp_map = weft_control::load_derp_map(p)?;
    } else if !a.no_derp {
        let e = start_embedded_derp(&data_dir, &url, bound, a.derp_listen, a.stun_listen).await?;
        cfg.derp_map = e.map.clone();
        embedded = Some(e);
    }
    if cfg.derp_map.regions.is_empty() {
        tracing::warn!(
            "no DERP map configured: clients will not reach the Running state without one"
        );
    }

    let control = Control::new(cfg, store.clone()).await?;
    let app = control.public_router(None);
    let sock = data_dir.join("admin.sock");
    let _admin = weft_control::admin::serve_unix(&sock, control.admin_router())
        .await
        .with_context(|| format!("serving the admin socket {}", sock.display()))?;
    if let Some(addr) = file.admin_listen {
        let Some(key) = control.config().admin_api_key.clone() else {
            bail!("admin_listen needs admin_api_key in the config file");
        };
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the admin listener {addr}"))?;
        let r = weft_control::admin::router_with_key(control.clone(), key);
        tokio::spawn(async move {
            let _ = axum::serve(l, r).await;
        });
    }
    let tls_cert = a.tls_cert.clone().or(file.tls_cert.clone());
    let tls_key = a.tls_key.clone().or(file.tls_key.clone());
    if let (Some(cert), Some(key)) = (&tls_cert, &tls_key) {
        let addr = a
            .tls_listen
            .or(file.tls_listen)
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 443)));
        let bound = serve_tls(addr, cert, key, app.clone()).await?;
        println!("weft server listening on https://{}", display_addr(bound));
    }
    let _housekeeping = control.spawn_housekeeping();

    println!(
        "weft server listening on http://{} (clients use --login-server {url}); data in {}",
        display_addr(bound),
        data_dir.display()
    );
    tracing::info!(%bound, %url, database = %redact_db(&db_url), "weft server started");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;
    if let Some(e) = &embedded {
        // Clients reconnect to the next instance promptly instead of on their own timers.
        e.running.stop_gracefully().await;
    }
    store.close().await;
    let _ = std::fs::remove_file(&sock);
    Ok(())
}

fn redact_db(url: &str) -> String {
    match url.split_once('@') {
        Some((_, rest)) if url.starts_with("postgres") => format!("postgres://***@{rest}"),
        _ => url.to_string(),
    }
}
