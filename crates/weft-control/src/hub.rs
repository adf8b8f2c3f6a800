//! The in-memory tailnet snapshot and the fan-out of changes to open map streams.
//!
//! The store is the source of truth; the hub mirrors it (plus online state and each
//! node's capability version, which only live in memory). Every mutation goes
//! store-first, then [`Hub::apply`], which updates the snapshot, prepares one
//! [`Delta`] and broadcasts it with the new snapshot to every stream task.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use weft_mapper::{Change, Delta, NodeState, PatchFields, Snapshot};
use weft_policy::{Compiled, Policy};
use weft_tailcfg::{NodeId, Time, UserId};

use crate::policy::{differing_nodes, policy_snapshot, CompiledView, Engine};

/// One broadcast: the changes and the snapshot they lead to.
#[derive(Debug)]
pub struct Batch {
    /// Prepared delta.
    pub delta: Delta,
    /// Snapshot after the change.
    pub snap: Arc<Snapshot>,
}

struct StreamSlot {
    generation: u64,
    cancel: CancellationToken,
}

struct Inner {
    snap: Arc<Snapshot>,
    streams: BTreeMap<NodeId, StreamSlot>,
    next_generation: u64,
    /// The active policy (`None`: allow all).
    policy: Option<Engine>,
    /// Identity-provider groups of each user (the policy's `user_groups`).
    groups: BTreeMap<UserId, Vec<String>>,
}

/// Snapshot + broadcast.
pub struct Hub {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<Batch>>,
}

/// A registered map stream.
#[derive(Debug)]
pub struct StreamTicket {
    /// Node.
    pub node: NodeId,
    /// Identifies this stream among the node's successive streams.
    pub generation: u64,
    /// Cancelled when a newer stream for the same node starts.
    pub cancel: CancellationToken,
}

impl Hub {
    /// A hub over an initial snapshot.
    pub fn new(mut snap: Snapshot) -> Hub {
        reelect(&mut snap, Time::from_system(std::time::SystemTime::now()));
        let (tx, _) = broadcast::channel(256);
        Hub {
            inner: Mutex::new(Inner {
                snap: Arc::new(snap),
                streams: BTreeMap::new(),
                next_generation: 1,
                policy: None,
                groups: BTreeMap::new(),
            }),
            tx,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.lock().snap.clone()
    }

    /// One node's state.
    pub fn node(&self, id: NodeId) -> Option<NodeState> {
        self.lock().snap.nodes.get(&id).cloned()
    }

    /// Mutates the snapshot with `f` (which returns the changes it made) and broadcasts.
    pub fn apply(&self, now: Time, f: impl FnOnce(&mut Snapshot) -> Vec<Change>) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let snap = Arc::make_mut(&mut inner.snap);
        let mut changes = f(snap);
        if changes.is_empty() {
            return;
        }
        changes.extend(reelect(snap, now));
        if let Some(engine) = inner.policy.as_mut() {
            engine.follow(snap, &inner.groups, &mut changes);
        }
        self.broadcast(inner, &changes, now);
    }

    fn broadcast(&self, inner: &Inner, changes: &[Change], now: Time) {
        let snap = inner.snap.clone();
        let delta = Delta::prepare(&snap, changes, now);
        if delta.is_empty() {
            return;
        }
        // No receivers is fine: nobody is streaming.
        let _ = self.tx.send(Arc::new(Batch { delta, snap }));
    }

    /// The snapshot and every user's groups, taken together.
    pub fn snapshot_and_groups(&self) -> (Arc<Snapshot>, BTreeMap<UserId, Vec<String>>) {
        let inner = self.lock();
        (inner.snap.clone(), inner.groups.clone())
    }

    /// The compiled policy in force (`None`: allow all).
    pub fn compiled_policy(&self) -> Option<Arc<Compiled>> {
        self.lock().policy.as_ref().map(|e| e.compiled.clone())
    }

    /// Records a user's identity-provider groups; nodes of the user are recompiled
    /// (and resynced if their filter or visibility changed).
    pub fn set_user_groups(&self, now: Time, user: UserId, groups: Vec<String>) {
        {
            let mut inner = self.lock();
            if inner
                .groups
                .get(&user)
                .map_or(groups.is_empty(), |g| *g == groups)
            {
                return;
            }
            inner.groups.insert(user, groups);
        }
        self.apply(now, |snap| {
            snap.nodes
                .values()
                .filter(|n| n.user_id == user)
                .map(|n| Change::NodeUpdated(n.id))
                .collect()
        });
    }

    /// Stops following node changes with the compiled policy (a caller installs its own
    /// [`weft_mapper::PolicyView`] next).
    pub fn forget_policy_engine(&self) {
        self.lock().policy = None;
    }

    /// Compiles `policy` against the current snapshot and installs it (`None`: allow
    /// all); only nodes whose filter or visible peers changed get a resync.
    pub fn install_policy(&self, now: Time, policy: Option<Policy>) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let old = inner.snap.policy.clone();
        let (engine, view): (Option<Engine>, Arc<dyn weft_mapper::PolicyView>) = match policy {
            None => (None, Arc::new(weft_mapper::AllowAll)),
            Some(p) => {
                let compiled = Arc::new(Compiled::new(
                    Arc::new(p),
                    &policy_snapshot(&inner.snap, &inner.groups),
                ));
                (
                    Some(Engine {
                        compiled: compiled.clone(),
                    }),
                    Arc::new(CompiledView(compiled)),
                )
            }
        };
        let changed: Vec<NodeId> = match (&inner.policy, &engine) {
            (Some(o), Some(n)) => {
                let ch = n.compiled.changes_since(&o.compiled);
                ch.filters_changed
                    .union(&ch.visibility_changed)
                    .copied()
                    .filter(|id| inner.snap.nodes.contains_key(id))
                    .collect()
            }
            _ => differing_nodes(&inner.snap, old.as_ref(), view.as_ref()),
        };
        inner.policy = engine;
        Arc::make_mut(&mut inner.snap).policy = view;
        let changes: Vec<Change> = changed.into_iter().map(Change::NodeResync).collect();
        if !changes.is_empty() {
            self.broadcast(inner, &changes, now);
        }
    }

    /// Inserts or replaces a node, keeping in-memory fields (online, cap) unless given.
    /// Returns the change kind peers must see, computed against the previous state.
    pub fn upsert(&self, now: Time, mut state: NodeState, cap: Option<i64>) {
        self.apply(now, |snap| {
            let change = match snap.nodes.get(&state.id) {
                None => Change::NodeUpdated(state.id),
                Some(old) => {
                    state.online = old.online;
                    state.cap = cap.unwrap_or(old.cap);
                    if old.online {
                        state.last_seen = old.last_seen;
                    }
                    match classify(old, &state) {
                        Some(c) => c,
                        None => return Vec::new(),
                    }
                }
            };
            if let Some(c) = cap {
                state.cap = c;
            }
            snap.nodes.insert(state.id, state);
            vec![change]
        });
    }

    /// Removes a node.
    pub fn remove(&self, now: Time, id: NodeId) {
        self.apply(now, |snap| {
            if snap.nodes.remove(&id).is_some() {
                vec![Change::NodeRemoved(id)]
            } else {
                Vec::new()
            }
        });
    }

    /// Registers a new map stream for `node`, cancelling any older one, marks the node
    /// online and returns the ticket plus a receiver subscribed before the snapshot taken.
    pub fn open_stream(
        &self,
        now: Time,
        node: NodeId,
    ) -> (StreamTicket, Arc<Snapshot>, broadcast::Receiver<Arc<Batch>>) {
        let rx = self.tx.subscribe();
        let ticket = {
            let mut inner = self.lock();
            let generation = inner.next_generation;
            inner.next_generation += 1;
            let cancel = CancellationToken::new();
            if let Some(old) = inner.streams.insert(
                node,
                StreamSlot {
                    generation,
                    cancel: cancel.clone(),
                },
            ) {
                old.cancel.cancel();
            }
            StreamTicket {
                node,
                generation,
                cancel,
            }
        };
        self.apply(now, |snap| set_online(snap, node, true, now));
        let snap = self.snapshot();
        (ticket, snap, rx)
    }

    /// Ends a stream; the node goes offline unless a newer stream replaced it.
    /// Returns whether the node went offline.
    pub fn close_stream(&self, now: Time, ticket: &StreamTicket) -> bool {
        {
            let mut inner = self.lock();
            match inner.streams.get(&ticket.node) {
                Some(slot) if slot.generation == ticket.generation => {
                    inner.streams.remove(&ticket.node);
                }
                _ => return false,
            }
        }
        self.apply(now, |snap| set_online(snap, ticket.node, false, now));
        true
    }

    /// Whether `node` has a live stream.
    pub fn is_streaming(&self, node: NodeId) -> bool {
        self.lock().streams.contains_key(&node)
    }

    /// Ends the stream of `node`, if any (e.g. the node was deleted).
    pub fn kick(&self, node: NodeId) {
        if let Some(slot) = self.lock().streams.get(&node) {
            slot.cancel.cancel();
        }
    }

    /// Number of live streams.
    pub fn stream_count(&self) -> usize {
        self.lock().streams.len()
    }
}

/// Elects the primary router of each subnet route again (a router went offline or came
/// online, routes were approved or advertised); every node whose primary routes changed
/// is updated in full for its peers.
fn reelect(snap: &mut Snapshot, now: Time) -> Vec<Change> {
    let new = weft_mapper::elect_primaries(snap, now);
    let old = snap.primaries.take().unwrap_or_default();
    let mut moved = std::collections::BTreeSet::new();
    for (route, id) in &old {
        if new.get(route) != Some(id) {
            moved.insert(*id);
            moved.extend(new.get(route).copied());
        }
    }
    for (route, id) in &new {
        if !old.contains_key(route) {
            moved.insert(*id);
        }
    }
    if !moved.is_empty() {
        tracing::info!(primaries = ?new, "subnet route primaries changed");
    }
    snap.primaries = Some(new);
    moved
        .into_iter()
        .filter(|id| snap.nodes.contains_key(id))
        .map(Change::NodeUpdated)
        .collect()
}

fn set_online(snap: &mut Snapshot, node: NodeId, online: bool, now: Time) -> Vec<Change> {
    let Some(n) = snap.nodes.get_mut(&node) else {
        return Vec::new();
    };
    if n.online == online {
        return Vec::new();
    }
    n.online = online;
    n.last_seen = Some(now);
    vec![Change::NodePatched(
        node,
        PatchFields {
            online: true,
            ..PatchFields::default()
        },
    )]
}

/// What peers must be told when a node goes from `old` to `new`.
fn classify(old: &NodeState, new: &NodeState) -> Option<Change> {
    let mut hi_old = old.hostinfo.clone();
    let mut hi_new = new.hostinfo.clone();
    hi_old.0.remove("NetInfo");
    hi_new.0.remove("NetInfo");
    let full = old.user_id != new.user_id
        || old.given_name != new.given_name
        || old.ipv4 != new.ipv4
        || old.ipv6 != new.ipv6
        || old.tags != new.tags
        || old.approved_routes != new.approved_routes
        || old.machine_authorized != new.machine_authorized
        || old.machine_key != new.machine_key
        || old.key_signature != new.key_signature
        || hi_old != hi_new;
    if full {
        return Some(Change::NodeUpdated(new.id));
    }
    let f = PatchFields {
        endpoints: old.endpoints != new.endpoints,
        derp: old.home_derp != new.home_derp,
        disco: old.disco_key != new.disco_key,
        online: false,
        key: old.node_key != new.node_key,
        key_expiry: old.key_expiry != new.key_expiry,
        cap: old.cap != new.cap,
    };
    if f == PatchFields::default() {
        None
    } else {
        Some(Change::NodePatched(new.id, f))
    }
}
