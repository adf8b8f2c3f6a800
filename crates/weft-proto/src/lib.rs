//! Layer 1: small sans-IO wire protocols, one module each.
//!
//! Nothing here touches sockets, clocks, threads or a global random source:
//! bytes and `now` go in, bytes, events and deadlines come out.
#![warn(missing_docs)]

pub mod derp;
pub mod disco;
pub mod noise;
pub mod stun;
