//! Incremental updates for open map streams.

use std::collections::{BTreeMap, BTreeSet};

use weft_tailcfg::{MapResponse, Node, NodeId, PeerChange, Time, UserProfile};

use crate::build::{owner_of, peer_node, profile_of, resync, self_node};
use crate::snapshot::Snapshot;

/// Which patchable fields of a node changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PatchFields {
    /// UDP endpoints.
    pub endpoints: bool,
    /// Home DERP region.
    pub derp: bool,
    /// Disco key.
    pub disco: bool,
    /// Online state (and last seen).
    pub online: bool,
    /// Node key (rotation).
    pub key: bool,
    /// Key expiry.
    pub key_expiry: bool,
    /// Capability version.
    pub cap: bool,
}

impl PatchFields {
    fn union(self, o: PatchFields) -> PatchFields {
        PatchFields {
            endpoints: self.endpoints || o.endpoints,
            derp: self.derp || o.derp,
            disco: self.disco || o.disco,
            online: self.online || o.online,
            key: self.key || o.key,
            key_expiry: self.key_expiry || o.key_expiry,
            cap: self.cap || o.cap,
        }
    }

    fn concerns_self(self) -> bool {
        self.key || self.key_expiry || self.cap
    }
}

/// Something that changed in the tailnet since the last message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A node appeared or changed in a way peers must see as a whole
    /// (Hostinfo, name, tags, routes, approval, owner).
    NodeUpdated(NodeId),
    /// Only the given fields of a node changed.
    NodePatched(NodeId, PatchFields),
    /// A node was deleted.
    NodeRemoved(NodeId),
    /// Policy, DNS, DERP map or users changed: every stream gets a full resync.
    Everything,
    /// This node's filter or visible peers changed: its stream gets a full resync.
    NodeResync(NodeId),
}

/// What one map stream has been told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapSession {
    /// The node this stream belongs to.
    pub node: NodeId,
    /// Peers the stream currently shows.
    pub visible: BTreeSet<NodeId>,
}

impl MapSession {
    /// A session that has been told nothing.
    pub fn new(node: NodeId) -> MapSession {
        MapSession {
            node,
            visible: BTreeSet::new(),
        }
    }
}

/// A batch of changes, prepared once and applied to every open session.
#[derive(Debug, Clone)]
pub struct Delta {
    now: Time,
    everything: bool,
    updated: BTreeMap<NodeId, (Node, UserProfile)>,
    patched: BTreeMap<NodeId, PatchFields>,
    removed: BTreeSet<NodeId>,
    patches: BTreeMap<NodeId, PeerChange>,
    resync: BTreeSet<NodeId>,
}

impl Delta {
    /// Coalesces `changes` against the current snapshot (after the changes).
    pub fn prepare(snap: &Snapshot, changes: &[Change], now: Time) -> Delta {
        let mut d = Delta {
            now,
            everything: false,
            updated: BTreeMap::new(),
            patched: BTreeMap::new(),
            removed: BTreeSet::new(),
            patches: BTreeMap::new(),
            resync: BTreeSet::new(),
        };
        let mut updated_ids = BTreeSet::new();
        for c in changes {
            match *c {
                Change::Everything => d.everything = true,
                Change::NodeUpdated(id) => {
                    updated_ids.insert(id);
                }
                Change::NodePatched(id, f) => {
                    let e = d.patched.entry(id).or_default();
                    *e = e.union(f);
                }
                Change::NodeRemoved(id) => {
                    d.removed.insert(id);
                }
                Change::NodeResync(id) => {
                    d.resync.insert(id);
                }
            }
        }
        for id in updated_ids {
            match snap.nodes.get(&id) {
                Some(n) => {
                    let owner = owner_of(n);
                    d.updated
                        .insert(id, (peer_node(snap, n, now), profile_of(snap, owner)));
                }
                None => {
                    d.removed.insert(id);
                }
            }
        }
        for (&id, &f) in &d.patched {
            if d.updated.contains_key(&id) || d.removed.contains(&id) {
                continue;
            }
            let Some(n) = snap.nodes.get(&id) else {
                d.removed.insert(id);
                continue;
            };
            let mut pc = PeerChange {
                node_id: id,
                ..PeerChange::default()
            };
            if f.endpoints {
                pc.endpoints = Some(n.endpoints.clone());
            }
            if f.derp && n.home_derp > 0 {
                pc.derp_region = n.home_derp;
            }
            if f.disco {
                pc.disco_key = Some(n.disco_key);
            }
            if f.online || f.disco {
                pc.online = Some(n.online);
                if !n.online {
                    pc.last_seen = n.last_seen;
                }
            }
            if f.key {
                pc.key = Some(n.node_key);
                pc.key_signature = n.key_signature.clone();
            }
            if f.key_expiry || f.key {
                pc.key_expiry = Some(if n.tags.is_empty() {
                    n.key_expiry.unwrap_or(Time::ZERO)
                } else {
                    Time::ZERO
                });
            }
            if f.cap && n.cap > 0 {
                pc.cap = n.cap;
            }
            if !pc.is_empty() {
                d.patches.insert(id, pc);
            }
        }
        d
    }

    /// Whether the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        !self.everything
            && self.updated.is_empty()
            && self.removed.is_empty()
            && self.patches.is_empty()
            && self.resync.is_empty()
            && !self.patched.values().any(|f| f.concerns_self())
    }

    /// The message for one session (updating what it has been told), or `None`.
    /// A session whose own node vanished gets `None`; the caller should end its stream.
    pub fn for_session(&self, snap: &Snapshot, session: &mut MapSession) -> Option<MapResponse> {
        let me = snap.nodes.get(&session.node)?;
        if self.everything || self.updated.contains_key(&me.id) || self.resync.contains(&me.id) {
            return Some(resync(snap, me, session, self.now, false));
        }
        let mut resp = MapResponse::default();
        let mut profiles: BTreeMap<i64, UserProfile> = BTreeMap::new();
        for (&id, (node, profile)) in &self.updated {
            let visible = snap
                .nodes
                .get(&id)
                .is_some_and(|p| crate::build::may_see(snap, me, p));
            if visible {
                session.visible.insert(id);
                resp.peers_changed.push(node.clone());
                profiles
                    .entry(profile.id)
                    .or_insert_with(|| profile.clone());
            } else if session.visible.remove(&id) {
                resp.peers_removed.push(id);
            }
        }
        for &id in &self.removed {
            if session.visible.remove(&id) {
                resp.peers_removed.push(id);
            }
        }
        for (&id, pc) in &self.patches {
            if session.visible.contains(&id) {
                resp.peers_changed_patch.push(pc.clone());
            }
        }
        if self.patched.get(&me.id).is_some_and(|f| f.concerns_self()) {
            resp.node = Some(self_node(snap, me, self.now));
        }
        resp.user_profiles = profiles.into_values().collect();
        if resp == MapResponse::default() {
            return None;
        }
        resp.control_time = Some(self.now);
        Some(resp)
    }
}
