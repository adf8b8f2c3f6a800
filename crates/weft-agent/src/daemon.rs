//! `weft daemon`: wires the state directory, the TUN device, the data-plane engine, the
//! backend task and the LocalAPI socket together.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use weft_key::DiscoPrivate;

use crate::backend::Backend;
use crate::cli::DaemonArgs;
use crate::control::LiteInputs;
use crate::engine::{Engine, TunChannels, TunIo};
use crate::localapi::{self, Status};
use crate::state::StateStore;
use crate::sys::{Tun, DEFAULT_MTU};

/// Name of `--tun` that runs without a TUN device.
pub const USERSPACE: &str = "userspace-networking";

/// Where packets to and from the tailnet go.
pub enum TunMode {
    /// A kernel TUN device with this name.
    Device(String),
    /// No device: packets from peers are dropped, nothing is sent from the host.
    None,
    /// In-process channels (tests).
    Channels(TunChannels),
}

/// Daemon configuration.
pub struct DaemonConfig {
    /// State directory.
    pub state_dir: PathBuf,
    /// LocalAPI socket path.
    pub socket: PathBuf,
    /// TUN mode.
    pub tun: TunMode,
    /// UDP bind address (port 0 = random).
    pub bind: SocketAddr,
    /// Addresses reported as local endpoints; empty = the host's interface addresses.
    pub local_ips: Vec<IpAddr>,
}

impl DaemonConfig {
    /// From `weft daemon` flags and the global `--socket`.
    pub fn from_args(args: &DaemonArgs, socket: &std::path::Path) -> Self {
        let tun = if args.tun == USERSPACE {
            TunMode::None
        } else {
            TunMode::Device(args.tun.clone())
        };
        DaemonConfig {
            state_dir: args.state_dir.clone(),
            socket: socket.to_owned(),
            tun,
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), args.port),
            local_ips: Vec::new(),
        }
    }
}

/// A running daemon. Dropping it stops every task.
pub struct Daemon {
    status: watch::Receiver<Status>,
    engine: Engine,
    api: tokio::task::JoinHandle<()>,
    backend: tokio::task::JoinHandle<()>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.api.abort();
        self.backend.abort();
    }
}

impl Daemon {
    /// Starts everything and returns once the LocalAPI socket is listening.
    pub async fn start(cfg: DaemonConfig) -> anyhow::Result<Daemon> {
        let (store, state) =
            StateStore::open(&cfg.state_dir).context("opening the state directory")?;
        tracing::info!(dir = %cfg.state_dir.display(), machine = %state.machine.public().short(), "state loaded");
        let (tun, channels) = match cfg.tun {
            TunMode::Device(name) => {
                let (tun, dev) = Tun::create(&name, DEFAULT_MTU)
                    .with_context(|| format!("creating TUN device {name}"))?;
                (Some(tun), TunIo::Device(dev))
            }
            TunMode::None => {
                let (_keep, from_tun) = mpsc::channel(1);
                let (to_tun, mut sink) = mpsc::channel::<Vec<u8>>(1024);
                tokio::spawn(async move {
                    let _keep = _keep;
                    while sink.recv().await.is_some() {}
                });
                (None, TunIo::Channels(TunChannels { from_tun, to_tun }))
            }
            TunMode::Channels(ch) => (None, TunIo::Channels(ch)),
        };
        let disco = DiscoPrivate::generate();
        let engine = Engine::start(cfg.bind, cfg.local_ips, disco.clone(), channels)
            .await
            .context("starting the data plane")?;
        tracing::info!(udp = %engine.local_addr, "data plane listening");
        let listener = localapi::bind(&cfg.socket)
            .with_context(|| format!("binding {}", cfg.socket.display()))?;
        let (status_tx, status_rx) = watch::channel(Status::default());
        let (api_tx, api_rx) = mpsc::channel(64);
        let (lite, _) = watch::channel(LiteInputs::default());
        let backend = Backend {
            store,
            state,
            disco,
            backend_log_id: hex::encode(weft_key::random_bytes::<32>()),
            status_tx,
            engine_cmds: engine.cmds.clone(),
            engine_status: engine.status.clone(),
            router: tun.as_ref().map(|t| crate::routes::Router::new(t.name())),
            served: Vec::new(),
            tun,
            control: None,
            control_gen: 0,
            lite: Arc::new(lite),
            netmap: None,
            auth_url: String::new(),
            health: Vec::new(),
            logged_in: false,
        };
        let backend = tokio::spawn(backend.run(api_rx));
        let api = tokio::spawn(localapi::serve(listener, status_rx.clone(), api_tx));
        Ok(Daemon {
            status: status_rx,
            engine,
            api,
            backend,
        })
    }

    /// The published status.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// The UDP socket's address.
    pub fn udp_addr(&self) -> SocketAddr {
        self.engine.local_addr
    }
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(cfg: DaemonConfig) -> anyhow::Result<()> {
    let socket = cfg.socket.clone();
    let d = Daemon::start(cfg).await?;
    eprintln!("weft daemon running; LocalAPI at {}", socket.display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(d);
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
