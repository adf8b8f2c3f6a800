//! `weft derp`: a standalone relay (DERP over TLS or plain HTTP, STUN, mesh).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};
use weft_key::NodePrivate;

use crate::client::TlsMode;
use crate::mesh::{self, MeshTarget};
use crate::server::{DerpServer, ServerOptions};
use crate::tls::{self, CertKey, TlsError};
use crate::verify::{UrlVerifier, VerifyError};

/// Command-line arguments of `weft derp`.
#[derive(Debug, Clone, clap::Args)]
pub struct DerpArgs {
    /// Listen address for DERP (TLS unless --plain-http).
    #[arg(long, default_value = "0.0.0.0:443")]
    pub addr: SocketAddr,
    /// Serve DERP over plain HTTP (clients need TS_DEBUG_USE_DERP_HTTP=1).
    #[arg(long)]
    pub plain_http: bool,
    /// PEM certificate chain (with --tls-key); without it a self-signed cert is made.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Names (DNS or IP) for the self-signed certificate.
    #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1")]
    pub hostname: Vec<String>,
    /// Extra plain-HTTP port for /generate_204 and probes when serving TLS (0 = off).
    #[arg(long, default_value_t = 0)]
    pub http_port: u16,
    /// STUN UDP port on the same IP as --addr (0 = no STUN).
    #[arg(long, default_value_t = 3478)]
    pub stun_port: u16,
    /// Server key file (JSON {"PrivateKey":"privkey:…"}), created if missing.
    #[arg(long, default_value = "weft-derp.key")]
    pub key_file: PathBuf,
    /// Comma-separated mesh peers: host[:port], host/dialhost, or full URLs.
    #[arg(long, value_delimiter = ',')]
    pub mesh_with: Vec<String>,
    /// File holding the 64-hex mesh key shared by the region's relays.
    #[arg(long)]
    pub mesh_key_file: Option<PathBuf>,
    /// Skip TLS verification on mesh links (self-signed test relays).
    #[arg(long, conflicts_with = "mesh_ca")]
    pub mesh_insecure: bool,
    /// PEM CA file to verify mesh peers' certificates (default: the peers'
    /// certificate must match --tls-cert's leaf, i.e. the region shares one cert).
    #[arg(long)]
    pub mesh_ca: Option<PathBuf>,
    /// Admission URL: POST {"NodePublic","Source"} -> {"Allow":bool}.
    #[arg(long, value_name = "URL")]
    pub verify_clients: Option<String>,
    /// Admit clients when the admission URL is unreachable.
    #[arg(long)]
    pub verify_fail_open: bool,
}

/// Where the TLS certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// Plain HTTP.
    None,
    /// PEM files.
    Files {
        /// Chain.
        cert: PathBuf,
        /// Key.
        key: PathBuf,
    },
    /// A fresh self-signed certificate for these names.
    SelfSigned(Vec<String>),
}

/// Parsed configuration of a standalone relay.
#[derive(Debug, Clone)]
pub struct StandaloneConfig {
    /// DERP listen address.
    pub addr: SocketAddr,
    /// TLS setup.
    pub tls: TlsSource,
    /// Extra plain-HTTP listener port (TLS mode only).
    pub http_port: Option<u16>,
    /// STUN listen address.
    pub stun_addr: Option<SocketAddr>,
    /// Server private key file.
    pub key_file: PathBuf,
    /// Mesh peers.
    pub mesh_with: Vec<String>,
    /// Mesh key file.
    pub mesh_key_file: Option<PathBuf>,
    /// TLS mode for mesh links.
    pub mesh_tls: TlsMode,
    /// Admission URL.
    pub verify_clients: Option<String>,
    /// Admit when the admission URL is unreachable.
    pub verify_fail_open: bool,
}

impl From<DerpArgs> for StandaloneConfig {
    fn from(a: DerpArgs) -> Self {
        let mesh_tls = match (a.mesh_insecure, a.mesh_ca, &a.tls_cert) {
            (true, _, _) => TlsMode::InsecureForTests,
            (false, Some(ca), _) => TlsMode::RootsPemFile(ca),
            (false, None, Some(cert)) => TlsMode::RootsPemFile(cert.clone()),
            (false, None, None) => TlsMode::Roots(Arc::new(rustls::RootCertStore::empty())),
        };
        let tls = match (a.plain_http, a.tls_cert, a.tls_key) {
            (true, _, _) => TlsSource::None,
            (false, Some(cert), Some(key)) => TlsSource::Files { cert, key },
            _ => TlsSource::SelfSigned(a.hostname),
        };
        Self {
            addr: a.addr,
            tls,
            http_port: (a.http_port != 0).then_some(a.http_port),
            stun_addr: (a.stun_port != 0).then(|| SocketAddr::new(a.addr.ip(), a.stun_port)),
            key_file: a.key_file,
            mesh_with: a.mesh_with,
            mesh_key_file: a.mesh_key_file,
            mesh_tls,
            verify_clients: a.verify_clients,
            verify_fail_open: a.verify_fail_open,
        }
    }
}

/// Errors starting a relay.
#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    /// File or socket error, with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// Context.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Bad admission URL.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// Bad configuration value.
    #[error("config: {0}")]
    Config(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StandaloneError {
    let what = what.into();
    move |source| StandaloneError::Io { what, source }
}

/// A started relay: bound addresses and its tasks.
pub struct Running {
    /// The server.
    pub server: Arc<DerpServer>,
    /// Bound DERP address.
    pub derp_addr: SocketAddr,
    /// Bound plain-HTTP address, if any.
    pub http_addr: Option<SocketAddr>,
    /// Bound STUN address, if any.
    pub stun_addr: Option<SocketAddr>,
    /// SHA-256 of the TLS leaf (for `CertName: "sha256-raw:<hex>"`).
    pub cert_sha256: Option<[u8; 32]>,
    tasks: Vec<JoinHandle<()>>,
}

/// What a restarting server asks its clients: reconnect after this long...
pub const RESTART_RECONNECT_IN: Duration = Duration::from_secs(1);
/// ...and keep trying for this long.
pub const RESTART_TRY_FOR: Duration = Duration::from_secs(60);
/// How long a graceful stop waits for the restart notices to be written.
pub const RESTART_GRACE: Duration = Duration::from_secs(2);

impl Running {
    /// Tells every client the server is restarting (`Restarting` frame), waits up to
    /// [`RESTART_GRACE`] for the notices to go out, then stops like [`Running::stop`].
    pub async fn stop_gracefully(&self) {
        self.server
            .shutdown_gracefully(RESTART_RECONNECT_IN, RESTART_TRY_FOR, RESTART_GRACE)
            .await;
        self.stop();
    }

    /// Stops listeners, connections and mesh links.
    pub fn stop(&self) {
        self.server.shutdown();
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Loads the server key file, creating it (mode 0600) if missing.
pub fn load_or_create_key(path: &Path) -> Result<NodePrivate, StandaloneError> {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct KeyFile {
        #[serde(rename = "PrivateKey")]
        private_key: String,
    }
    match std::fs::read(path) {
        Ok(b) => {
            let kf: KeyFile = serde_json::from_slice(&b)
                .map_err(|e| StandaloneError::Config(format!("{}: {e}", path.display())))?;
            NodePrivate::parse(&kf.private_key)
                .map_err(|e| StandaloneError::Config(format!("{}: {e}", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let k = NodePrivate::generate();
            let json = serde_json::to_vec(&KeyFile {
                private_key: k.to_text(),
            })
            .expect("key JSON");
            write_private(path, &json).map_err(io_err(format!("writing {}", path.display())))?;
            info!(path = %path.display(), "created server key");
            Ok(k)
        }
        Err(e) => Err(io_err(format!("reading {}", path.display()))(e)),
    }
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)?.write_all(data)
}

/// Reads a 64-hex mesh key file (whitespace trimmed).
pub fn read_mesh_key(path: &Path) -> Result<String, StandaloneError> {
    let s = std::fs::read_to_string(path).map_err(io_err(format!("reading {}", path.display())))?;
    let k = s.trim().to_ascii_lowercase();
    if k.len() != 64 || !k.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(StandaloneError::Config(format!(
            "{}: mesh key must be 64 hex digits",
            path.display()
        )));
    }
    Ok(k)
}

/// Binds and starts everything in `cfg`; returns once listening.
pub async fn start(cfg: StandaloneConfig) -> Result<Running, StandaloneError> {
    let private = load_or_create_key(&cfg.key_file)?;
    let mesh_key = cfg
        .mesh_key_file
        .as_deref()
        .map(read_mesh_key)
        .transpose()?;
    if !cfg.mesh_with.is_empty() && mesh_key.is_none() {
        return Err(StandaloneError::Config(
            "--mesh-with needs --mesh-key-file".into(),
        ));
    }
    let verifier = match &cfg.verify_clients {
        Some(url) => Some(Arc::new(UrlVerifier::new(url, cfg.verify_fail_open)?)
            as Arc<dyn crate::verify::ClientVerifier>),
        None => None,
    };
    let server = DerpServer::new(
        private,
        ServerOptions {
            mesh_key: mesh_key.clone(),
            verifier,
            ..Default::default()
        },
    );
    let router = server.router();
    let mut tasks = Vec::new();

    let (acceptor, cert_sha256) = match &cfg.tls {
        TlsSource::None => (None, None),
        TlsSource::Files { cert, key } => {
            let ck = CertKey::from_pem_files(cert, key)?;
            let sha = ck.leaf_sha256();
            (
                Some(TlsAcceptor::from(tls::server_config(
                    ck,
                    Some(server.public_key()),
                )?)),
                Some(sha),
            )
        }
        TlsSource::SelfSigned(names) => {
            let ck = CertKey::self_signed(names)?;
            let sha = ck.leaf_sha256();
            (
                Some(TlsAcceptor::from(tls::server_config(
                    ck,
                    Some(server.public_key()),
                )?)),
                Some(sha),
            )
        }
    };

    let ln = TcpListener::bind(cfg.addr)
        .await
        .map_err(io_err(format!("binding {}", cfg.addr)))?;
    let derp_addr = ln.local_addr().map_err(io_err("local addr"))?;
    tasks.push(tokio::spawn(accept_loop(
        ln,
        server.clone(),
        router.clone(),
        acceptor.clone(),
    )));

    let mut http_addr = None;
    if let (Some(port), Some(_)) = (cfg.http_port, &acceptor) {
        let a = SocketAddr::new(cfg.addr.ip(), port);
        let ln = TcpListener::bind(a)
            .await
            .map_err(io_err(format!("binding {a}")))?;
        http_addr = Some(ln.local_addr().map_err(io_err("local addr"))?);
        tasks.push(tokio::spawn(accept_loop(
            ln,
            server.clone(),
            router.clone(),
            None,
        )));
    }

    let mut stun_addr = None;
    if let Some(a) = cfg.stun_addr {
        let sock = UdpSocket::bind(a)
            .await
            .map_err(io_err(format!("binding STUN {a}")))?;
        stun_addr = Some(sock.local_addr().map_err(io_err("local addr"))?);
        tasks.push(crate::stun::serve(sock));
    }

    if let Some(mk) = &mesh_key {
        for entry in &cfg.mesh_with {
            let t = MeshTarget::parse(entry, acceptor.is_none());
            tasks.push(mesh::spawn(
                server.clone(),
                t,
                mk.clone(),
                cfg.mesh_tls.clone(),
            ));
        }
    }

    info!(
        %derp_addr,
        tls = acceptor.is_some(),
        ?stun_addr,
        ?http_addr,
        key = %server.public_key().short(),
        cert_name = cert_sha256.map(|s| format!("sha256-raw:{}", hex::encode(s))).unwrap_or_default(),
        mesh_peers = cfg.mesh_with.len(),
        "derp relay listening"
    );
    Ok(Running {
        server,
        derp_addr,
        http_addr,
        stun_addr,
        cert_sha256,
        tasks,
    })
}

/// Runs the relay until Ctrl-C / SIGTERM.
pub async fn run(cfg: StandaloneConfig) -> Result<(), StandaloneError> {
    let running = start(cfg).await?;
    wait_for_signal().await;
    info!("shutting down");
    running.stop_gracefully().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Accepts connections forever, serving each with [`DerpServer::serve_conn`].
pub async fn accept_loop(
    ln: TcpListener,
    server: Arc<DerpServer>,
    router: Router,
    tls: Option<TlsAcceptor>,
) {
    loop {
        let (tcp, remote) = match ln.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "accept");
                // Out of file descriptors and similar: back off briefly.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let server = server.clone();
        let router = router.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => server.serve_conn(tcp, remote, router).await,
                Some(acc) => {
                    match tokio::time::timeout(Duration::from_secs(30), acc.accept(tcp)).await {
                        Ok(Ok(s)) => server.serve_conn(s, remote, router).await,
                        Ok(Err(e)) => debug!(%remote, error = %e, "tls handshake"),
                        Err(_) => debug!(%remote, "tls handshake timed out"),
                    }
                }
            }
        });
    }
}
