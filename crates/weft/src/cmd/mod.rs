//! Subcommand groups, one module each.

pub(crate) mod admin;
pub(crate) mod agent;
pub(crate) mod policy;
pub(crate) mod server;
