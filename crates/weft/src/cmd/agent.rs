//! Node-agent verbs (`weft daemon`, `up`, `down`, `status`, `ping`, `netcheck`, `ip`,
//! `logout`); their definitions and logic live in `weft_agent::cli`.

use std::path::Path;

pub(crate) use weft_agent::cli::AgentCommand;

/// Runs one node-agent verb against the daemon at `socket`.
pub(crate) async fn run(cmd: AgentCommand, socket: &Path) -> anyhow::Result<()> {
    weft_agent::cli::run(cmd, socket).await
}
