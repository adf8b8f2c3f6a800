//! Layer 2: the weft node agent.
//!
//! - [`state`]: the persisted state directory (keys and login preferences, mode 0600).
//! - [`localapi`]: the HTTP/1.1 JSON API on a unix socket that `weft <verb>` talks to.
//! - [`control`]: the control client (register, streaming map, lite updates).

pub mod control;
pub mod localapi;
pub mod state;
