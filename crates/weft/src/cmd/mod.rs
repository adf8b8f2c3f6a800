//! Subcommand groups, one module each.

pub(crate) mod admin;
pub(crate) mod server;
