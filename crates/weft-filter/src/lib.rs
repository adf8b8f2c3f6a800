//! Layer 1 (pure): the packet filter a node runs on traffic from its peers.
//!
//! Feed it the `PacketFilter` rules from the netmap ([`PacketFilter::set_rules`], replaceable
//! at any time), call [`PacketFilter::track_outbound`] for each packet the node sends and
//! [`PacketFilter::check_inbound`] for each packet received from a peer. Semantics follow
//! Tailscale's `wgengine/filter`: inbound is default-deny; ICMP is allowed to any address with
//! an open port; TCP segments other than a lone SYN pass (return traffic); UDP/SCTP replies to
//! flows this node opened pass (bounded LRU flow table that survives rule replacement);
//! protocols without ports need a rule open on every port. Time is passed in (`now`).
#![warn(missing_docs)]

mod filter;
pub mod packet;

pub use filter::{
    Accept, Drop, FlowTable, Matcher, PacketFilter, RuleError, Verdict, DEFAULT_FLOWS,
    DEFAULT_FLOW_IDLE,
};
pub use packet::{PacketView, ParseError, Transport};
