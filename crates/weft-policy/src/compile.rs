//! Compilation of a [`Policy`] against a tailnet [`Snapshot`]: per-node packet filters
//! (destination side, as Tailscale clients expect) and per-node peer visibility, with
//! incremental updates when one node changes.

use crate::ipset::IpSet;
use crate::policy::{Alias, AutoGroup, Policy, Ports, Protos, Rule};
use ipnet::IpNet;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use weft_tailcfg::{FilterRule, NetPortRange, NodeId, PortRange};

/// One node as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotNode {
    /// The node's id.
    pub id: NodeId,
    /// Login name of the node's user (ignored for tagged nodes, which belong to their tags).
    pub user: Option<String>,
    /// Groups of the user from the identity provider; each adds the user to the policy group
    /// of that name (`eng` or `group:eng`), if the policy defines it.
    pub user_groups: Vec<String>,
    /// Tags (`tag:name`); a node with tags is a tagged node.
    pub tags: Vec<String>,
    /// Tailnet addresses (IPv4 and IPv6).
    pub addresses: Vec<IpAddr>,
    /// Approved subnet routes. Exit routes (`0.0.0.0/0`, `::/0`) here count as `exit_node`.
    pub approved_routes: Vec<IpNet>,
    /// True if the node is an approved exit node.
    pub exit_node: bool,
}

impl SnapshotNode {
    /// True if the node carries at least one tag.
    pub fn is_tagged(&self) -> bool {
        !self.tags.is_empty()
    }
}

/// The tailnet the policy is compiled against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// All nodes, in any order (ids must be unique; a later duplicate replaces an earlier one).
    pub nodes: Vec<SnapshotNode>,
}

/// Which nodes an update affected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Nodes whose packet filter changed (send them a new `PacketFilter`).
    pub filters_changed: BTreeSet<NodeId>,
    /// Nodes whose set of visible peers changed (send `PeersChanged`/`PeersRemoved`),
    /// including the changed node itself.
    pub visibility_changed: BTreeSet<NodeId>,
}

/// Tailscale's CGNAT range minus the ChromeOS VM range, plus the tailnet ULA: what `*` means
/// as a source.
pub fn wildcard_sources() -> &'static IpSet {
    static SET: OnceLock<IpSet> = OnceLock::new();
    SET.get_or_init(|| {
        let mut s = IpSet::from_net("100.64.0.0/10".parse().expect("static"));
        s.remove_net("100.115.92.0/23".parse().expect("static"));
        s.add_net("fd7a:115c:a1e0::/48".parse().expect("static"));
        s
    })
}

/// The public internet as `autogroup:internet` means it: everything but private, CGNAT,
/// tailnet, link-local and non-global IPv6 space.
pub fn the_internet() -> &'static IpSet {
    static SET: OnceLock<IpSet> = OnceLock::new();
    SET.get_or_init(|| {
        let mut s = IpSet::from_net("0.0.0.0/0".parse().expect("static"));
        s.add_net("2000::/3".parse().expect("static"));
        for n in [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "169.254.0.0/16",
            "fc00::/7",
            "fe80::/10",
        ] {
            s.remove_net(n.parse().expect("static"));
        }
        s
    })
}

#[derive(Debug, Clone, Default)]
struct Bits(Vec<u64>);

impl Bits {
    fn get(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    fn set(&mut self, i: usize, v: bool) {
        if self.0.len() <= i / 64 {
            self.0.resize(i / 64 + 1, 0);
        }
        if v {
            self.0[i / 64] |= 1 << (i % 64);
        } else {
            self.0[i / 64] &= !(1 << (i % 64));
        }
    }
    fn or_with(&mut self, other: &Bits) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }
    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(wi * 64 + b)
            })
        })
    }
}

#[derive(Debug, Clone)]
struct Facts {
    node: SnapshotNode,
    routes: Vec<IpNet>,
    addr_strings: Vec<String>,
    /// Policy groups the node's user belongs to (sorted; empty for tagged nodes).
    groups: Vec<String>,
}

impl Facts {
    fn new(mut node: SnapshotNode, policy: &Policy) -> Self {
        let mut routes = Vec::new();
        for r in std::mem::take(&mut node.approved_routes) {
            if r.prefix_len() == 0 {
                node.exit_node = true;
            } else if !routes.contains(&r) {
                routes.push(r);
            }
        }
        node.approved_routes = routes.clone();
        node.addresses.sort();
        node.addresses.dedup();
        let addr_strings = node.addresses.iter().map(ToString::to_string).collect();
        let mut groups = Vec::new();
        if let (false, Some(login)) = (node.is_tagged(), node.user.as_deref()) {
            groups.extend(
                policy
                    .groups_of_user
                    .get(login)
                    .into_iter()
                    .flatten()
                    .cloned(),
            );
            for g in &node.user_groups {
                let name = if g.starts_with("group:") {
                    g.clone()
                } else {
                    format!("group:{g}")
                };
                if policy.groups.contains_key(&name) {
                    groups.push(name);
                }
            }
            groups.sort();
            groups.dedup();
        }
        Facts {
            node,
            routes,
            addr_strings,
            groups,
        }
    }

    fn tagged(&self) -> bool {
        self.node.is_tagged()
    }

    fn covered_by(&self, net: &IpNet) -> bool {
        self.node.addresses.iter().any(|a| net.contains(a))
            || self.routes.iter().any(|r| nets_overlap(r, net))
    }
}

fn nets_overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn user_matches(alias: &str, login: &str) -> bool {
    alias == login || alias.strip_suffix('@') == Some(login)
}

/// Per-rule compiled state.
#[derive(Debug, Clone, Default)]
struct RuleState {
    /// `SrcIPs` of the rule (sorted as Tailscale sorts them); empty = no source.
    src_strings: Vec<String>,
    /// The sources as an address set.
    src_set: IpSet,
    /// Nodes matched by a source selector (for visibility).
    src_nodes: Bits,
    /// Per destination target (same order as `Rule::dst`), nodes that receive it.
    dst_nodes: Vec<Bits>,
    /// Union of `dst_nodes`.
    dst_any: Bits,
    /// Index of targets that are `autogroup:self`.
    has_self: bool,
    wildcard_src: bool,
    danger_all: bool,
}

/// A policy compiled against a snapshot. Cheap queries per node; incremental updates through
/// [`Compiled::upsert_node`] and [`Compiled::remove_node`].
#[derive(Debug, Clone)]
pub struct Compiled {
    policy: Arc<Policy>,
    slots: Vec<Option<Facts>>,
    free: Vec<usize>,
    index: BTreeMap<NodeId, usize>,
    rules: Vec<RuleState>,
    filters: Vec<Vec<FilterRule>>,
    visible: Vec<Bits>,
    /// Approved subnet route -> number of nodes approving it (the `*` source extras).
    routes: BTreeMap<IpNet, usize>,
    /// User login -> slots of that user's untagged nodes.
    by_user: BTreeMap<String, BTreeSet<usize>>,
    /// Tag -> slots holding it.
    by_tag: BTreeMap<String, Bits>,
    /// Policy group -> slots of its members' untagged nodes.
    by_group: BTreeMap<String, Bits>,
    untagged: Bits,
    tagged: Bits,
    internet_strings: Vec<String>,
}

impl Policy {
    /// Compiles this policy against `snapshot`.
    pub fn compile(&self, snapshot: &Snapshot) -> Compiled {
        Compiled::new(Arc::new(self.clone()), snapshot)
    }
}

impl Compiled {
    /// Compiles `policy` against `snapshot`.
    pub fn new(policy: Arc<Policy>, snapshot: &Snapshot) -> Self {
        let mut c = Compiled {
            policy,
            slots: Vec::new(),
            free: Vec::new(),
            index: BTreeMap::new(),
            rules: Vec::new(),
            filters: Vec::new(),
            visible: Vec::new(),
            routes: BTreeMap::new(),
            by_user: BTreeMap::new(),
            by_tag: BTreeMap::new(),
            by_group: BTreeMap::new(),
            untagged: Bits::default(),
            tagged: Bits::default(),
            internet_strings: the_internet()
                .ranges()
                .map(|(a, b)| format!("{a}-{b}"))
                .collect(),
        };
        for n in &snapshot.nodes {
            let facts = Facts::new(n.clone(), &c.policy);
            let slot = match c.index.get(&n.id) {
                Some(&s) => {
                    c.forget_routes(s);
                    s
                }
                None => {
                    c.slots.push(None);
                    c.filters.push(Vec::new());
                    c.visible.push(Bits::default());
                    c.slots.len() - 1
                }
            };
            for r in &facts.routes {
                *c.routes.entry(*r).or_default() += 1;
            }
            c.unindex_user(slot);
            c.slots[slot] = Some(facts);
            c.index_user(slot);
            c.index.insert(n.id, slot);
        }
        c.rules = vec![RuleState::default(); c.policy.rules.len()];
        let mut done = Vec::new();
        for ri in 0..c.rules.len() {
            c.compute_rule_membership(ri);
            c.compute_rule_sources(ri, &mut done);
        }
        for slot in 0..c.slots.len() {
            if c.slots[slot].is_some() {
                c.filters[slot] = c.build_filter(slot);
                c.visible[slot] = c.compute_visible(slot);
            }
        }
        c
    }

    /// The policy this was compiled from.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The node ids known to this compilation, ascending.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.index.keys().copied()
    }

    /// The node's packet filter (`MapResponse.PacketFilter`), or `None` for an unknown node.
    /// An empty slice means "deny all inbound".
    pub fn filter_for(&self, node: NodeId) -> Option<&[FilterRule]> {
        let &slot = self.index.get(&node)?;
        Some(&self.filters[slot])
    }

    /// The peers `node` may see (those it may reach or that may reach it), ascending.
    pub fn visible_peers(&self, node: NodeId) -> Option<Vec<NodeId>> {
        let &slot = self.index.get(&node)?;
        Some(self.visible_ids(slot).into_iter().collect())
    }

    /// True if `a` may see `b` in its netmap.
    pub fn may_see(&self, a: NodeId, b: NodeId) -> bool {
        match (self.index.get(&a), self.index.get(&b)) {
            (Some(&sa), Some(&sb)) if sa != sb => self.visible[sa].get(sb),
            _ => false,
        }
    }

    /// Which nodes differ between `old` and `self` (e.g. the same tailnet compiled under the
    /// previous and the new policy): filters and visible peers, node by node.
    pub fn changes_since(&self, old: &Compiled) -> Changes {
        let mut ch = Changes::default();
        let ids: BTreeSet<NodeId> = self.node_ids().chain(old.node_ids()).collect();
        for id in ids {
            if self.filter_for(id) != old.filter_for(id) {
                ch.filters_changed.insert(id);
            }
            if self.visible_peers(id) != old.visible_peers(id) {
                ch.visibility_changed.insert(id);
            }
        }
        ch
    }

    /// The snapshot node with this id.
    pub fn node(&self, id: NodeId) -> Option<&SnapshotNode> {
        let &slot = self.index.get(&id)?;
        self.slots[slot].as_ref().map(|f| &f.node)
    }

    fn visible_ids(&self, slot: usize) -> BTreeSet<NodeId> {
        self.visible[slot]
            .iter()
            .filter_map(|s| self.slots.get(s)?.as_ref().map(|f| f.node.id))
            .collect()
    }

    /// Adds or replaces one node; returns which nodes' filters and visibility changed.
    pub fn upsert_node(&mut self, node: SnapshotNode) -> Changes {
        let id = node.id;
        let new_facts = Facts::new(node, &self.policy);
        let (slot, old_facts) = match self.index.get(&id) {
            Some(&s) => (s, self.slots[s].take()),
            None => {
                let s = match self.free.pop() {
                    Some(s) => s,
                    None => {
                        self.slots.push(None);
                        self.filters.push(Vec::new());
                        self.visible.push(Bits::default());
                        self.slots.len() - 1
                    }
                };
                self.index.insert(id, s);
                (s, None)
            }
        };
        self.apply_change(slot, old_facts, Some(new_facts))
    }

    /// Removes one node; returns which nodes' filters and visibility changed.
    pub fn remove_node(&mut self, id: NodeId) -> Changes {
        let Some(slot) = self.index.remove(&id) else {
            return Changes::default();
        };
        let old = self.slots[slot].take();
        let mut ch = self.apply_change(slot, old, None);
        ch.filters_changed.remove(&id);
        self.filters[slot].clear();
        self.visible[slot] = Bits::default();
        self.free.push(slot);
        ch
    }

    fn forget_routes(&mut self, slot: usize) {
        if let Some(f) = &self.slots[slot] {
            for r in &f.routes {
                if let Some(c) = self.routes.get_mut(r) {
                    *c -= 1;
                    if *c == 0 {
                        self.routes.remove(r);
                    }
                }
            }
        }
    }

    fn apply_change(&mut self, slot: usize, old: Option<Facts>, new: Option<Facts>) -> Changes {
        let mut ch = Changes::default();
        let id = old
            .as_ref()
            .or(new.as_ref())
            .map(|f| f.node.id)
            .expect("old or new");
        ch.visibility_changed.insert(id);
        let old_visible = self.visible_ids(slot);
        let old_same_user: Vec<usize> = old
            .as_ref()
            .map(|f| self.same_user_slots(f))
            .unwrap_or_default();

        // Routes (the `*` source extras).
        let old_routes: Vec<IpNet> = old.as_ref().map(|f| f.routes.clone()).unwrap_or_default();
        let old_src_member: Vec<bool> = self
            .policy
            .rules
            .iter()
            .map(|r| {
                old.as_ref()
                    .is_some_and(|f| node_based_src_member(&self.policy, r, f))
            })
            .collect();
        self.slots[slot] = old;
        self.forget_routes(slot);
        self.unindex_user(slot);
        self.slots[slot] = new;
        self.index_user(slot);
        if let Some(f) = &self.slots[slot] {
            for r in &f.routes {
                *self.routes.entry(*r).or_default() += 1;
            }
        }
        let new_routes: Vec<IpNet> = self.slots[slot]
            .as_ref()
            .map(|f| f.routes.clone())
            .unwrap_or_default();
        let routes_changed = old_routes != new_routes;

        if !self.policy.has_rules {
            // Allow-all: everyone sees everyone; filters never change.
            let all: Vec<usize> = self.index.values().copied().collect();
            for &s in &all {
                if s != slot {
                    self.visible[s].set(slot, self.slots[slot].is_some());
                    ch.visibility_changed
                        .insert(self.slots[s].as_ref().expect("live").node.id);
                }
            }
            if self.slots[slot].is_some() {
                self.filters[slot] = self.build_filter(slot);
                self.visible[slot] = self.compute_visible(slot);
                ch.filters_changed.insert(id);
            }
            return ch;
        }

        // Rebuild per-rule membership for this slot, and sources where they can change.
        let mut rebuild: BTreeSet<usize> = BTreeSet::new();
        rebuild.insert(slot);
        let mut done = Vec::new();
        #[allow(clippy::needless_range_loop)] // several parallel per-rule vectors are indexed
        for ri in 0..self.rules.len() {
            let rule = &self.policy.rules[ri];
            let (in_src, in_dsts) = match &self.slots[slot] {
                Some(f) => (
                    src_covers(&self.policy, rule, f),
                    rule.dst
                        .iter()
                        .map(|t| target_covers(&self.policy, &t.alias, f))
                        .collect(),
                ),
                None => (false, vec![false; rule.dst.len()]),
            };
            let st = &mut self.rules[ri];
            st.src_nodes.set(slot, in_src);
            let mut any = false;
            for (ti, v) in in_dsts.into_iter().enumerate() {
                st.dst_nodes[ti].set(slot, v);
                any |= v;
            }
            st.dst_any.set(slot, any);

            // Sources change only if this node is (or was) a member of a node selector of
            // the rule, or the approved routes behind `*` changed.
            let new_member = self.slots[slot]
                .as_ref()
                .is_some_and(|f| node_based_src_member(&self.policy, rule, f));
            let st = &self.rules[ri];
            let src_may_change =
                (st.wildcard_src && routes_changed) || old_src_member[ri] || new_member;
            if src_may_change {
                let before = std::mem::take(&mut self.rules[ri].src_strings);
                self.compute_rule_sources(ri, &mut done);
                if self.rules[ri].src_strings != before {
                    rebuild.extend(self.rules[ri].dst_any.iter());
                }
            }
            if self.rules[ri].has_self {
                // Self rules depend on the same user's nodes, before and after the change.
                rebuild.extend(old_same_user.iter().copied());
                if let Some(f) = &self.slots[slot] {
                    rebuild.extend(self.same_user_slots(f));
                }
            }
        }
        for s in rebuild {
            let Some(f) = &self.slots[s] else { continue };
            let fid = f.node.id;
            let nf = self.build_filter(s);
            if nf != self.filters[s] {
                self.filters[s] = nf;
                ch.filters_changed.insert(fid);
            }
        }
        // Visibility is symmetric: only pairs involving this node can change.
        let new_vis = if self.slots[slot].is_some() {
            self.compute_visible(slot)
        } else {
            Bits::default()
        };
        self.visible[slot] = new_vis;
        let new_visible = self.visible_ids(slot);
        for other in old_visible.symmetric_difference(&new_visible) {
            if let Some(&os) = self.index.get(other) {
                self.visible[os].set(slot, new_visible.contains(other));
            }
            ch.visibility_changed.insert(*other);
        }
        ch
    }

    fn same_user_slots(&self, f: &Facts) -> Vec<usize> {
        let Some(u) = &f.node.user else {
            return Vec::new();
        };
        self.by_user
            .get(u)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    fn index_user(&mut self, slot: usize) {
        self.set_indexes(slot, true);
    }

    fn unindex_user(&mut self, slot: usize) {
        self.set_indexes(slot, false);
    }

    fn set_indexes(&mut self, slot: usize, on: bool) {
        let Some(f) = &self.slots[slot] else { return };
        if f.tagged() {
            self.tagged.set(slot, on);
            for t in &f.node.tags {
                self.by_tag.entry(t.clone()).or_default().set(slot, on);
            }
        } else {
            self.untagged.set(slot, on);
            if let Some(u) = &f.node.user {
                let set = self.by_user.entry(u.clone()).or_default();
                if on {
                    set.insert(slot);
                } else {
                    set.remove(&slot);
                    if set.is_empty() {
                        self.by_user.remove(u);
                    }
                }
            }
            for g in &f.groups {
                self.by_group.entry(g.clone()).or_default().set(slot, on);
            }
        }
    }

    /// Slots selected by a node-based alias, from the indexes.
    fn alias_bits(&self, a: &Alias) -> Bits {
        match a {
            Alias::Tag(t) => self.by_tag.get(t).cloned().unwrap_or_default(),
            Alias::Group(g) => self.by_group.get(g).cloned().unwrap_or_default(),
            Alias::AutoGroup(AutoGroup::Member) => self.untagged.clone(),
            Alias::AutoGroup(AutoGroup::Tagged) => self.tagged.clone(),
            Alias::User(u) => {
                let mut b = Bits::default();
                let keys = [Some(u.as_str()), u.strip_suffix('@')];
                for slots in keys
                    .into_iter()
                    .flatten()
                    .filter_map(|k| self.by_user.get(k))
                {
                    for &s in slots {
                        b.set(s, true);
                    }
                }
                b
            }
            _ => Bits::default(),
        }
    }

    /// Slots selected by any alias, scanning nodes only for address-based aliases.
    fn selector_bits(&self, a: &Alias, covers: impl Fn(&Facts) -> bool) -> Bits {
        if is_node_based(a) {
            return self.alias_bits(a);
        }
        let mut b = Bits::default();
        for (s, f) in self.live() {
            if covers(f) {
                b.set(s, true);
            }
        }
        b
    }

    fn live(&self) -> impl Iterator<Item = (usize, &Facts)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(s, f)| f.as_ref().map(|f| (s, f)))
    }

    fn compute_rule_membership(&mut self, ri: usize) {
        let rule = &self.policy.rules[ri];
        let mut st = RuleState {
            dst_nodes: vec![Bits::default(); rule.dst.len()],
            has_self: rule
                .dst
                .iter()
                .any(|t| t.alias == Alias::AutoGroup(AutoGroup::SelfDevices)),
            wildcard_src: rule.src.contains(&Alias::Wildcard),
            danger_all: rule.src.contains(&Alias::AutoGroup(AutoGroup::DangerAll)),
            ..RuleState::default()
        };
        for a in &rule.src {
            let one = Rule {
                src: vec![a.clone()],
                dst: Vec::new(),
                ip: Vec::new(),
                app: None,
                pos: rule.pos,
            };
            let b = self.selector_bits(a, |f| src_covers(&self.policy, &one, f));
            st.src_nodes.or_with(&b);
        }
        for (ti, t) in rule.dst.iter().enumerate() {
            let b = self.selector_bits(&t.alias, |f| target_covers(&self.policy, &t.alias, f));
            st.dst_any.or_with(&b);
            st.dst_nodes[ti] = b;
        }
        self.rules[ri] = st;
    }

    /// Recomputes a rule's sources; `done` lists rules already recomputed in this pass, whose
    /// result is reused when their source list is identical.
    fn compute_rule_sources(&mut self, ri: usize, done: &mut Vec<usize>) {
        let rule = &self.policy.rules[ri];
        if let Some(&rj) = done
            .iter()
            .find(|&&rj| self.policy.rules[rj].src == rule.src)
        {
            let (strings, set) = (
                self.rules[rj].src_strings.clone(),
                self.rules[rj].src_set.clone(),
            );
            self.rules[ri].src_strings = strings;
            self.rules[ri].src_set = set;
            return;
        }
        done.push(ri);
        // Tailscale lists `*`'s ranges and the other selectors' addresses side by side, without
        // folding node addresses into the wildcard ranges.
        let mut others = IpSet::new();
        let mut node_based = false;
        let mut prefixes = Vec::new();
        for a in &rule.src {
            match a {
                Alias::Host(_, n) | Alias::Prefix(n) => prefixes.push(IpSet::from_net(*n)),
                Alias::Wildcard | Alias::AutoGroup(AutoGroup::DangerAll) => {}
                _ => node_based = true,
            }
        }
        if node_based {
            let mut members = Bits::default();
            for a in rule.src.iter().filter(|a| is_node_based(a)) {
                members.or_with(&self.alias_bits(a));
            }
            let mut addrs = Vec::new();
            for s in members.iter() {
                if let Some(f) = self.slots.get(s).and_then(Option::as_ref) {
                    addrs.extend(f.node.addresses.iter().copied());
                }
            }
            others.add_addrs(addrs);
        }
        others.extend_all(prefixes.iter());
        let st = &mut self.rules[ri];
        if st.danger_all {
            st.src_strings = vec!["*".to_string()];
            let mut all = IpSet::from_net("0.0.0.0/0".parse().expect("static"));
            all.add_net("::/0".parse().expect("static"));
            st.src_set = all;
            return;
        }
        let mut strings = others.range_strings();
        let mut set = others;
        if st.wildcard_src {
            strings.extend(wildcard_sources().range_strings());
            strings.extend(self.routes.keys().map(ToString::to_string));
            set.extend(wildcard_sources());
        }
        strings.sort();
        strings.dedup();
        st.src_strings = strings;
        st.src_set = set;
    }

    fn build_filter(&self, slot: usize) -> Vec<FilterRule> {
        let f = self.slots[slot].as_ref().expect("live slot");
        if !self.policy.has_rules {
            return vec![FilterRule::allow_all()];
        }
        let mut out: Vec<FilterRule> = Vec::new();
        // Self-rule sources depend only on the rule's source set; many rules share one.
        let mut self_cache: Vec<(&[Alias], Vec<String>)> = Vec::new();
        for (ri, rule) in self.policy.rules.iter().enumerate() {
            let st = &self.rules[ri];
            let in_dst = st.dst_any.get(slot);
            let self_applies = st.has_self && !f.tagged() && f.node.user.is_some();
            if !in_dst && !self_applies {
                continue;
            }
            for (protos, ports) in &rule.ip {
                let ip_proto = protos_wire(protos);
                if in_dst && !st.src_strings.is_empty() {
                    let mut dsts = Vec::new();
                    for (ti, t) in rule.dst.iter().enumerate() {
                        if !st.dst_nodes[ti].get(slot) {
                            continue;
                        }
                        for ip in self.target_ips(&t.alias, f) {
                            for p in ports {
                                dsts.push(npr(&ip, *p));
                            }
                        }
                    }
                    push_merged(&mut out, &st.src_strings, dsts, &ip_proto);
                }
                if self_applies {
                    let srcs = match self_cache
                        .iter()
                        .find(|(src, _)| *src == rule.src.as_slice())
                    {
                        Some((_, v)) => v.clone(),
                        None => {
                            let v = self.self_sources(st, f);
                            self_cache.push((&rule.src, v.clone()));
                            v
                        }
                    };
                    if !srcs.is_empty() {
                        let mut dsts = Vec::new();
                        for ip in &f.addr_strings {
                            for p in ports {
                                dsts.push(npr(ip, *p));
                            }
                        }
                        push_merged(&mut out, &srcs, dsts, &ip_proto);
                    }
                }
            }
            if let Some(app) = &rule.app {
                // Capabilities apply to this node's own addresses that the grant's
                // destinations cover (broad prefixes narrowed to the node), as peers
                // look them up by (source, destination) address.
                if in_dst && !st.src_strings.is_empty() {
                    let dsts = self.covered_own_prefixes(rule, st, slot, f);
                    push_cap_grant(&mut out, &st.src_strings, dsts, app);
                }
                if self_applies {
                    let srcs = self.self_sources(st, f);
                    if !srcs.is_empty() {
                        push_cap_grant(
                            &mut out,
                            &srcs,
                            f.node.addresses.iter().map(|a| IpNet::from(*a)).collect(),
                            app,
                        );
                    }
                }
            }
        }
        out
    }

    /// This node's addresses, as host prefixes, that the rule's destinations select.
    fn covered_own_prefixes(
        &self,
        rule: &Rule,
        st: &RuleState,
        slot: usize,
        f: &Facts,
    ) -> Vec<IpNet> {
        let mut out: Vec<IpNet> = Vec::new();
        for (ti, t) in rule.dst.iter().enumerate() {
            if !st.dst_nodes[ti].get(slot) {
                continue;
            }
            for a in &f.node.addresses {
                let covered = match &t.alias {
                    Alias::Host(_, n) | Alias::Prefix(n) => n.contains(a),
                    _ => true,
                };
                let p = IpNet::from(*a);
                if covered && !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        out
    }

    fn self_sources(&self, st: &RuleState, f: &Facts) -> Vec<String> {
        let mut set = IpSet::new();
        for s in self.same_user_slots(f) {
            let o = self.slots[s].as_ref().expect("live");
            let addrs: Vec<IpAddr> = o
                .node
                .addresses
                .iter()
                .copied()
                .filter(|a| st.src_set.contains(*a))
                .collect();
            set.add_addrs(addrs);
        }
        let mut v = set.range_strings();
        v.sort();
        v
    }

    fn target_ips<'a>(&'a self, alias: &'a Alias, f: &'a Facts) -> Vec<Cow<'a, str>> {
        match alias {
            Alias::Wildcard => vec![Cow::Borrowed("*")],
            Alias::Host(_, n) | Alias::Prefix(n) => vec![Cow::Owned(net_string(n))],
            Alias::AutoGroup(AutoGroup::Internet) => self
                .internet_strings
                .iter()
                .map(|s| Cow::Borrowed(s.as_str()))
                .collect(),
            _ => f
                .addr_strings
                .iter()
                .map(|s| Cow::Borrowed(s.as_str()))
                .collect(),
        }
    }

    fn compute_visible(&self, slot: usize) -> Bits {
        let mut v = Bits::default();
        if !self.policy.has_rules {
            for (s, _) in self.live() {
                v.set(s, true);
            }
            v.set(slot, false);
            return v;
        }
        let f = self.slots[slot].as_ref().expect("live");
        let mut same_user: Option<Vec<usize>> = None;
        for st in &self.rules {
            if st.src_nodes.get(slot) {
                v.or_with(&st.dst_any);
            }
            if st.dst_any.get(slot) {
                v.or_with(&st.src_nodes);
            }
            if st.has_self && !f.tagged() && f.node.user.is_some() {
                let su = same_user.get_or_insert_with(|| self.same_user_slots(f));
                let me_src = st.src_nodes.get(slot);
                for &s in su.iter() {
                    if me_src || st.src_nodes.get(s) {
                        v.set(s, true);
                    }
                }
            }
        }
        v.set(slot, false);
        v
    }
}

/// A prefix as Tailscale writes a destination: a bare address for a single IP.
fn net_string(n: &IpNet) -> String {
    if n.prefix_len() == n.max_prefix_len() {
        n.addr().to_string()
    } else {
        n.to_string()
    }
}

fn npr(ip: &str, p: Ports) -> NetPortRange {
    NetPortRange {
        ip: ip.to_string(),
        bits: None,
        ports: PortRange {
            first: p.first,
            last: p.last,
        },
    }
}

fn protos_wire(p: &Protos) -> Vec<i32> {
    p.as_ref()
        .map(|v| v.iter().map(|&n| i32::from(n)).collect())
        .unwrap_or_default()
}

fn push_merged(
    out: &mut Vec<FilterRule>,
    srcs: &[String],
    dsts: Vec<NetPortRange>,
    ip_proto: &[i32],
) {
    if dsts.is_empty() || srcs.is_empty() {
        return;
    }
    if let Some(r) = out
        .iter_mut()
        .find(|r| r.src_ips == srcs && r.ip_proto == ip_proto)
    {
        for d in dsts {
            if !r.dst_ports.contains(&d) {
                r.dst_ports.push(d);
            }
        }
        return;
    }
    let mut uniq: Vec<NetPortRange> = Vec::with_capacity(dsts.len());
    for d in dsts {
        if !uniq.contains(&d) {
            uniq.push(d);
        }
    }
    out.push(FilterRule {
        src_ips: srcs.to_vec(),
        dst_ports: uniq,
        ip_proto: ip_proto.to_vec(),
        ..FilterRule::default()
    });
}

/// Adds a capability grant for `srcs` on `dsts`.
fn push_cap_grant(
    out: &mut Vec<FilterRule>,
    srcs: &[String],
    dsts: Vec<IpNet>,
    app: &weft_tailcfg::CapMap,
) {
    if dsts.is_empty() {
        return;
    }
    out.push(FilterRule {
        src_ips: srcs.to_vec(),
        cap_grant: vec![weft_tailcfg::CapGrant {
            dsts,
            cap_map: Some(app.clone()),
            ..weft_tailcfg::CapGrant::default()
        }],
        ..FilterRule::default()
    });
}

/// True if the node contributes addresses to the rule's sources through a node selector.
fn node_based_src_member(p: &Policy, rule: &Rule, f: &Facts) -> bool {
    rule.src
        .iter()
        .any(|a| is_node_based(a) && node_in_alias(p, a, f))
}

fn is_node_based(a: &Alias) -> bool {
    matches!(
        a,
        Alias::User(_)
            | Alias::Group(_)
            | Alias::Tag(_)
            | Alias::AutoGroup(AutoGroup::Member)
            | Alias::AutoGroup(AutoGroup::Tagged)
    )
}

/// True if the node is a member of a node-based alias (user, group, tag, member, tagged).
fn node_in_alias(_p: &Policy, a: &Alias, f: &Facts) -> bool {
    let n = &f.node;
    match a {
        Alias::User(u) => !f.tagged() && n.user.as_deref().is_some_and(|l| user_matches(u, l)),
        Alias::Group(g) => f.groups.binary_search(g).is_ok(),
        Alias::Tag(t) => n.tags.iter().any(|x| x == t),
        Alias::AutoGroup(AutoGroup::Member) => !f.tagged(),
        Alias::AutoGroup(AutoGroup::Tagged) => f.tagged(),
        _ => false,
    }
}

pub(crate) fn user_in_group(
    p: &Policy,
    group: &str,
    user: Option<&str>,
    user_groups: &[String],
) -> bool {
    let Some(login) = user else { return false };
    let listed = p
        .groups
        .get(group)
        .is_some_and(|members| members.iter().any(|m| user_matches(m, login)));
    listed
        || (p.groups.contains_key(group)
            && user_groups
                .iter()
                .any(|g| g == group || group.strip_prefix("group:") == Some(g.as_str())))
}

/// True if traffic from this node (or from behind it) can match a source selector of the rule.
fn src_covers(p: &Policy, rule: &Rule, f: &Facts) -> bool {
    rule.src.iter().any(|a| match a {
        Alias::Wildcard => {
            f.node
                .addresses
                .iter()
                .any(|ip| wildcard_sources().contains(*ip))
                || !f.routes.is_empty()
        }
        Alias::AutoGroup(AutoGroup::DangerAll) => true,
        Alias::Host(_, n) | Alias::Prefix(n) => f.covered_by(n),
        _ => node_in_alias(p, a, f),
    })
}

/// True if the node receives traffic for this destination (self handled separately).
fn target_covers(p: &Policy, a: &Alias, f: &Facts) -> bool {
    match a {
        Alias::Wildcard => true,
        Alias::Host(_, n) | Alias::Prefix(n) => f.covered_by(n),
        Alias::AutoGroup(AutoGroup::Internet) => f.node.exit_node,
        Alias::AutoGroup(AutoGroup::SelfDevices) => false,
        _ => node_in_alias(p, a, f),
    }
}
