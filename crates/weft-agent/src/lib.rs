//! Layer 2: the weft node agent (`weft daemon` and the CLI verbs that talk to it).
//!
//! - [`state`]: the persisted state directory (keys and login preferences, mode 0600).
//! - [`control`]: the control client (register, streaming map, lite updates).
//! - [`engine`]: the data-plane driver around the sans-IO `weft-magicsock` core.
//! - [`sys`]: TUN device (batched, with offloads), addresses and routes, host facts.
//! - [`udp`]: the data-plane UDP socket with batched I/O (GSO/GRO).
//! - [`dns`]: MagicDNS, the quad-100 resolver (pure; answers DNS packets from the TUN).
//! - [`routes`]: subnet routes and exit-node advertisement (forwarding, SNAT, kernel routes).
//! - [`localapi`]: the HTTP/1.1 JSON API on a unix socket that `weft <verb>` talks to.
//! - [`daemon`]: wiring of all of the above; [`cli`]: the verbs.

mod backend;
pub mod cli;
pub mod control;
pub mod daemon;
pub mod dns;
pub mod engine;
pub mod localapi;
pub mod routes;
pub mod state;
pub mod sys;
pub mod udp;
