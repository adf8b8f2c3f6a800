//! Every deadline the core has, named in one enum (quinn's `TimerTable` idea).

use std::collections::BTreeMap;
use std::time::Instant;

use weft_key::NodePublic;

/// A named deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// WireGuard timer tick (handshake retries, keepalives, rekeys).
    WgTick,
    /// Next STUN round for own-endpoint discovery and home-region latency.
    Restun,
    /// STUN round deadline: evaluate the replies that came in.
    StunDone,
    /// Per-peer disco heartbeat.
    Heartbeat(NodePublic),
    /// Per-peer ping expiry sweep and trust expiry.
    PeerSweep(NodePublic),
}

/// Deadlines by name; [`TimerTable::next`] is the earliest.
#[derive(Debug, Default)]
pub(crate) struct TimerTable {
    deadlines: BTreeMap<Timer, Instant>,
}

impl TimerTable {
    pub(crate) fn set(&mut self, t: Timer, at: Instant) {
        self.deadlines.insert(t, at);
    }

    /// Sets `t` to `at` unless it is already due earlier.
    pub(crate) fn set_earliest(&mut self, t: Timer, at: Instant) {
        let e = self.deadlines.entry(t).or_insert(at);
        if at < *e {
            *e = at;
        }
    }

    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn get(&self, t: Timer) -> Option<Instant> {
        self.deadlines.get(&t).copied()
    }

    pub(crate) fn clear(&mut self, t: Timer) {
        self.deadlines.remove(&t);
    }

    pub(crate) fn next(&self) -> Option<Instant> {
        self.deadlines.values().min().copied()
    }

    /// Removes and returns every timer due at `now`, in name order.
    pub(crate) fn expired(&mut self, now: Instant) -> Vec<Timer> {
        let due: Vec<Timer> = self
            .deadlines
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(t, _)| *t)
            .collect();
        for t in &due {
            self.deadlines.remove(t);
        }
        due
    }
}
