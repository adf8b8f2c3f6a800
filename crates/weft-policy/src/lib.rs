//! Layer 1 (pure): Tailscale policy files.
//!
//! [`Policy::parse`] reads HuJSON policy text (comments and trailing commas, nothing looser)
//! into a validated model; every error carries line and column. [`Policy::compile`] turns a
//! policy plus a tailnet [`Snapshot`] into a [`Compiled`]: each node's packet filter
//! (destination-side `FilterRule`s, as Tailscale clients expect) and the peers each node may
//! see (those it may reach or that may reach it). [`Compiled::upsert_node`] and
//! [`Compiled::remove_node`] update the result after one node changes and say which nodes'
//! filters and visibility changed. [`Policy::run_tests`] and [`check`] evaluate the policy's
//! own `tests` through the compiled filters. [`Policy::may_use_tags`] and the
//! auto-approver queries answer the server's tag and route questions.
//!
//! With no policy at all a tailnet allows everything: use [`Policy::allow_all`] (every node gets
//! Tailscale's allow-all filter and sees every other node). A policy with neither `acls` nor
//! `grants` also allows everything; `"acls": []` or `"grants": []` denies everything.
#![warn(missing_docs)]

mod compile;
pub mod hujson;
mod ipset;
mod owners;
mod policy;
mod tests_eval;

pub use compile::{the_internet, wildcard_sources, Changes, Compiled, Snapshot, SnapshotNode};
pub use hujson::Pos;
pub use ipset::IpSet;
pub use owners::TagRequester;
pub use policy::{
    Alias, AutoApprovers, AutoGroup, Owner, Policy, PolicyError, PolicyTest, Ports, Protos, Rule,
    Target,
};
pub use tests_eval::{check, CheckError, TestFailure};
pub use weft_tailcfg::{FilterRule, NetPortRange, NodeId, PortRange};
