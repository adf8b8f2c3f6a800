//! The tailnet policy inside the server: the adapter from a compiled [`weft_policy`] result
//! to the mapper's [`PolicyView`], the per-hub policy engine that follows node changes
//! incrementally, and the `set` / `check` operations behind `weft policy ...`.
//!
//! With no stored policy the tailnet allows everything ([`weft_mapper::AllowAll`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use weft_mapper::{Change, NodeState, PolicyView, Snapshot};
use weft_policy::{Compiled, Policy, SnapshotNode, TagRequester};
use weft_store::{NewAuditEntry, PolicyRecord};
use weft_tailcfg::{FilterRule, NodeId, UserId};

use crate::{ApiError, Control};

/// A compiled policy seen through the mapper's [`PolicyView`].
#[derive(Debug, Clone)]
pub struct CompiledView(pub Arc<Compiled>);

impl PolicyView for CompiledView {
    fn packet_filter(&self, node: NodeId) -> Vec<FilterRule> {
        self.0
            .filter_for(node)
            .map(<[_]>::to_vec)
            .unwrap_or_default()
    }

    fn may_see(&self, viewer: NodeId, peer: NodeId) -> bool {
        self.0.may_see(viewer, peer)
    }
}

/// The node as the policy compiler sees it: owner login and groups, tags, addresses,
/// approved routes the node also advertises.
pub fn snapshot_node(
    snap: &Snapshot,
    groups: &BTreeMap<UserId, Vec<String>>,
    n: &NodeState,
) -> SnapshotNode {
    let advertised: BTreeSet<ipnet::IpNet> = n.hostinfo.routable_ips().into_iter().collect();
    let routes: Vec<ipnet::IpNet> = n
        .approved_routes
        .iter()
        .filter(|r| advertised.contains(r))
        .copied()
        .collect();
    let exit_node = routes.iter().any(|r| r.prefix_len() == 0);
    let mut addresses = Vec::with_capacity(2);
    if let Some(v4) = n.ipv4 {
        addresses.push(std::net::IpAddr::V4(v4));
    }
    if let Some(v6) = n.ipv6 {
        addresses.push(std::net::IpAddr::V6(v6));
    }
    SnapshotNode {
        id: n.id,
        user: snap.users.get(&n.user_id).map(|u| u.login_name.clone()),
        user_groups: groups.get(&n.user_id).cloned().unwrap_or_default(),
        tags: n.tags.clone(),
        addresses,
        approved_routes: routes,
        exit_node,
    }
}

/// The whole tailnet as the policy compiler sees it.
pub fn policy_snapshot(
    snap: &Snapshot,
    groups: &BTreeMap<UserId, Vec<String>>,
) -> weft_policy::Snapshot {
    weft_policy::Snapshot {
        nodes: snap
            .nodes
            .values()
            .map(|n| snapshot_node(snap, groups, n))
            .collect(),
    }
}

/// The active policy compiled against the hub's snapshot, kept current as nodes change.
#[derive(Debug, Clone)]
pub(crate) struct Engine {
    pub(crate) compiled: Arc<Compiled>,
}

impl Engine {
    /// Feeds node changes to the compiler; installs the new view in `snap` and appends
    /// resyncs for nodes whose filter or visible peers changed.
    pub(crate) fn follow(
        &mut self,
        snap: &mut Snapshot,
        groups: &BTreeMap<UserId, Vec<String>>,
        changes: &mut Vec<Change>,
    ) {
        let mut affected = BTreeSet::new();
        let mut touched = false;
        let mut seen = BTreeSet::new();
        for c in changes.iter() {
            let (Change::NodeUpdated(id) | Change::NodeRemoved(id)) = *c else {
                continue;
            };
            if !seen.insert(id) {
                continue;
            }
            let ch = match snap.nodes.get(&id) {
                Some(n) => {
                    let sn = snapshot_node(snap, groups, n);
                    if self.compiled.node(id) == Some(&sn) {
                        continue;
                    }
                    touched = true;
                    Arc::make_mut(&mut self.compiled).upsert_node(sn)
                }
                None => {
                    if self.compiled.node(id).is_none() {
                        continue;
                    }
                    touched = true;
                    Arc::make_mut(&mut self.compiled).remove_node(id)
                }
            };
            affected.extend(ch.filters_changed);
            affected.extend(ch.visibility_changed);
        }
        if !touched {
            return;
        }
        snap.policy = Arc::new(CompiledView(self.compiled.clone()));
        for id in affected {
            if snap.nodes.contains_key(&id) {
                changes.push(Change::NodeResync(id));
            }
        }
    }
}

/// Nodes whose filter or visible peers differ between two views.
pub(crate) fn differing_nodes(
    snap: &Snapshot,
    old: &dyn PolicyView,
    new: &dyn PolicyView,
) -> Vec<NodeId> {
    let ids: Vec<NodeId> = snap.nodes.keys().copied().collect();
    ids.iter()
        .copied()
        .filter(|&a| {
            old.packet_filter(a) != new.packet_filter(a)
                || ids
                    .iter()
                    .any(|&b| b != a && old.may_see(a, b) != new.may_see(a, b))
        })
        .collect()
}

/// What `policy check` / `policy set` answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PolicyInfo {
    /// Version id (0 for a check).
    pub id: i64,
    /// Who set it.
    pub author: String,
    /// When.
    pub created: weft_tailcfg::Time,
    /// Number of tests the policy carries (all passed).
    pub tests: usize,
    /// The text (omitted in history listings).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text: String,
}

/// Formats a policy error as `line L, column C: reason`.
fn invalid(e: &weft_policy::PolicyError) -> ApiError {
    ApiError::BadRequest(format!(
        "policy error at line {}, column {}: {}",
        e.line(),
        e.column(),
        e.reason
    ))
}

impl Control {
    /// Parses `text` and runs its tests against the current tailnet; nothing is applied.
    pub fn check_policy(&self, text: &str) -> Result<Policy, ApiError> {
        let policy = Policy::parse(text).map_err(|e| invalid(&e))?;
        let (snap, groups) = self.inner.hub.snapshot_and_groups();
        let failures = policy.run_tests(&policy_snapshot(&snap, &groups));
        if !failures.is_empty() {
            let list: Vec<String> = failures.iter().map(ToString::to_string).collect();
            return Err(ApiError::BadRequest(format!(
                "policy tests failed: {}",
                list.join("; ")
            )));
        }
        Ok(policy)
    }

    /// Checks, stores (with `author` and time), audits and applies a new policy; on any
    /// error the previous policy stays in force.
    pub async fn set_policy_text(&self, text: &str, author: &str) -> Result<PolicyInfo, ApiError> {
        let _w = self.inner.write.lock().await;
        let policy = self.check_policy(text)?;
        let tests = policy.tests().len();
        let rec = self.inner.store.put_policy(text, author).await?;
        if let Err(e) = self
            .inner
            .store
            .append_audit(NewAuditEntry {
                actor: author.to_string(),
                action: "policy.set".into(),
                target: format!("policy:{}", rec.id),
                detail: serde_json::json!({ "bytes": text.len(), "tests": tests }),
            })
            .await
        {
            tracing::warn!(error = %e, "audit log append failed");
        }
        self.inner.hub.install_policy(self.now(), Some(policy));
        tracing::info!(version = rec.id, author, "policy applied");
        // The new autoApprovers may cover routes nodes already advertise.
        let nodes = self.inner.store.list_nodes().await?;
        self.reapprove_routes(nodes).await?;
        Ok(policy_info(&rec, tests, false))
    }

    /// The policy in force, if one was ever set.
    pub async fn current_policy(&self) -> Result<Option<PolicyRecord>, ApiError> {
        Ok(self.inner.store.current_policy().await?)
    }

    /// Whether the user (with its groups) may put `tags` on a node under the current
    /// policy. With no policy every tag is allowed.
    pub fn may_use_tags(&self, user_login: &str, user_groups: &[String], tags: &[String]) -> bool {
        if tags.is_empty() {
            return true;
        }
        match self.inner.hub.compiled_policy() {
            None => true,
            Some(c) => c.policy().may_use_tags(
                &TagRequester {
                    user: Some(user_login),
                    user_groups,
                    tags: &[],
                },
                tags,
            ),
        }
    }
}

impl Control {
    /// Adds to the node's approved routes every route it advertises that the policy's
    /// `autoApprovers` grant to its owner or tags (an exit route brings its pair), and
    /// stores the result. Routes are only ever added here, never removed. The caller holds
    /// the write lock and then refreshes the hub.
    pub(crate) async fn auto_approve_routes(
        &self,
        n: weft_store::Node,
    ) -> Result<weft_store::Node, ApiError> {
        let advertised = crate::convert::hostinfo_of(&n.hostinfo).routable_ips();
        if advertised.iter().all(|r| n.approved_routes.contains(r)) {
            return Ok(n);
        }
        let Some(compiled) = self.inner.hub.compiled_policy() else {
            return Ok(n);
        };
        let user = self.inner.store.get_user(n.user_id).await?;
        let who = SnapshotNode {
            id: n.id.0,
            user: Some(crate::convert::user_info(&user).login_name),
            user_groups: user.groups.clone(),
            tags: n.tags.clone(),
            ..SnapshotNode::default()
        };
        let mut approved: BTreeSet<ipnet::IpNet> = n.approved_routes.iter().copied().collect();
        let mut changed = false;
        for r in &advertised {
            if !approved.contains(r) && compiled.policy().auto_approves_route(&who, r) {
                approved.insert(*r);
                if r.prefix_len() == 0 {
                    approved.extend(crate::convert::exit_routes());
                }
                changed = true;
            }
        }
        if !changed {
            return Ok(n);
        }
        let routes: Vec<ipnet::IpNet> = approved.into_iter().collect();
        tracing::info!(node = n.id.0, routes = ?routes, "routes auto-approved by the policy");
        Ok(self
            .inner
            .store
            .set_node_approved_routes(n.id, routes)
            .await?)
    }
}

impl Control {
    /// Runs [`Control::auto_approve_routes`] on `nodes` and pushes those whose approved
    /// routes grew (after a policy change, or new identity-provider groups).
    pub(crate) async fn reapprove_routes(
        &self,
        nodes: Vec<weft_store::Node>,
    ) -> Result<(), ApiError> {
        for n in nodes {
            let before = n.approved_routes.clone();
            let n = self.auto_approve_routes(n).await?;
            if n.approved_routes != before {
                self.refresh_node(&n, None).await;
            }
        }
        Ok(())
    }

    /// [`Control::auto_approve_routes`] that logs a failure and keeps the node as it was
    /// (a registration or map request does not fail over it).
    pub(crate) async fn auto_approve_routes_or_keep(
        &self,
        n: weft_store::Node,
    ) -> weft_store::Node {
        match self.auto_approve_routes(n.clone()).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(node = n.id.0, error = %e, "route auto-approval failed");
                n
            }
        }
    }
}

pub(crate) fn policy_info(rec: &PolicyRecord, tests: usize, with_text: bool) -> PolicyInfo {
    PolicyInfo {
        id: rec.id,
        author: rec.author.clone(),
        created: crate::convert::to_time(rec.created_at),
        tests,
        text: if with_text {
            rec.text.clone()
        } else {
            String::new()
        },
    }
}
