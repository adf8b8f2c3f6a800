//! Tag ownership and route auto-approval.

use crate::compile::{user_in_group, SnapshotNode};
use crate::policy::{Owner, Policy};
use ipnet::IpNet;

/// Who asks to apply tags: a user (with identity-provider groups) and/or a node's current tags.
#[derive(Debug, Clone, Copy, Default)]
pub struct TagRequester<'a> {
    /// Login name of the user (auth-key creator, or the node's user).
    pub user: Option<&'a str>,
    /// The user's groups from the identity provider.
    pub user_groups: &'a [String],
    /// Tags the requesting node already holds (tag owners may be tags).
    pub tags: &'a [String],
}

impl Policy {
    fn owner_matches(&self, o: &Owner, who: &TagRequester<'_>) -> bool {
        let untagged = who.tags.is_empty();
        match o {
            Owner::User(u) => who
                .user
                .is_some_and(|l| u == l || u.strip_suffix('@') == Some(l)),
            Owner::Group(g) => user_in_group(self, g, who.user, who.user_groups),
            Owner::Tag(t) => who.tags.iter().any(|x| x == t),
            Owner::Member => who.user.is_some() && untagged,
            Owner::Tagged => !untagged,
        }
    }

    /// True if `who` may apply every tag in `tags` (auth-key tags, `--advertise-tags`):
    /// each tag must be defined in `tagOwners` and list `who` (directly, through a group, or
    /// through a tag it already holds) as an owner. An empty list is always allowed.
    pub fn may_use_tags(&self, who: &TagRequester<'_>, tags: &[String]) -> bool {
        tags.iter().all(|t| {
            self.tag_owners
                .get(t)
                .is_some_and(|owners| owners.iter().any(|o| self.owner_matches(o, who)))
        })
    }

    /// True if the policy auto-approves `route` for `node` (an `autoApprovers.routes` entry
    /// containing the route names the node). Exit routes go through `exitNode`.
    pub fn auto_approves_route(&self, node: &SnapshotNode, route: &IpNet) -> bool {
        if route.prefix_len() == 0 {
            return self.auto_approves_exit_node(node);
        }
        let who = requester(node);
        self.auto_approvers.routes.iter().any(|(net, owners)| {
            net.contains(route) && owners.iter().any(|o| self.owner_matches(o, &who))
        })
    }

    /// True if the policy auto-approves `node` as an exit node.
    pub fn auto_approves_exit_node(&self, node: &SnapshotNode) -> bool {
        let who = requester(node);
        self.auto_approvers
            .exit_node
            .iter()
            .any(|o| self.owner_matches(o, &who))
    }
}

fn requester(node: &SnapshotNode) -> TagRequester<'_> {
    TagRequester {
        user: if node.is_tagged() {
            None
        } else {
            node.user.as_deref()
        },
        user_groups: if node.is_tagged() {
            &[]
        } else {
            &node.user_groups
        },
        tags: &node.tags,
    }
}
