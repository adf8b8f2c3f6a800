//! `weft`: one binary for the coordination server, its admin commands and the other tools.
//!
//! Each subcommand group lives in its own module under `cmd/`; add a group by adding a
//! variant to [`Command`] and a module.

mod cmd;

use clap::{Parser, Subcommand};

/// weft: a Tailscale-compatible coordination server, relay and node agent.
#[derive(Debug, Parser)]
#[command(name = "weft", version, about)]
struct Cli {
    /// LocalAPI socket of the node agent daemon.
    #[arg(long, global = true, env = "WEFT_SOCKET", default_value = weft_agent::cli::DEFAULT_SOCKET)]
    socket: std::path::PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the coordination server (with an embedded DERP relay and STUN by default).
    Server(cmd::server::ServerArgs),
    /// Manage users.
    Users(cmd::admin::UsersCmd),
    /// Manage pre-auth keys.
    #[command(alias = "preauthkeys")]
    Authkeys(cmd::admin::AuthkeysCmd),
    /// Manage nodes.
    Nodes(cmd::admin::NodesCmd),
    /// Manage the tailnet policy (HuJSON ACLs); with none set, all traffic is allowed.
    Policy(cmd::policy::PolicyCmd),
    /// Run a standalone DERP relay.
    Derp(weft_derp::DerpArgs),
    #[command(flatten)]
    Agent(cmd::agent::AgentCommand),
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Server(a) => cmd::server::run(a).await,
            Command::Users(c) => cmd::admin::users(c).await,
            Command::Authkeys(c) => cmd::admin::authkeys(c).await,
            Command::Nodes(c) => cmd::admin::nodes(c).await,
            Command::Policy(c) => cmd::policy::run(c).await,
            Command::Derp(a) => weft_derp::standalone::run(a.into())
                .await
                .map_err(anyhow::Error::from),
            Command::Agent(c) => cmd::agent::run(c, &cli.socket).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
