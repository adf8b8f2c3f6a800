//! Parse and validation errors carry line and column; tag ownership and auto-approval.

use weft_policy::{Policy, SnapshotNode, TagRequester};

fn err(text: &str) -> (u32, u32, String) {
    let e = Policy::parse(text).unwrap_err();
    (e.line(), e.column(), e.reason)
}

#[test]
fn syntax_errors_report_line_and_column() {
    let (l, c, r) = err("{\n  \"acls\": [\n    {\"action\": \"accept\" \"src\": []}\n  ]\n}");
    assert_eq!((l, c), (3, 25), "{r}");
    assert!(r.contains("expected ','"), "{r}");
    let (l, c, _) = err("{\n  // fine\n  \"groups\": {\"group:a\": [\"x@y\"],},\n  'hosts': {}\n}");
    assert_eq!((l, c), (4, 3));
}

#[test]
fn unknown_group_tag_and_host_are_errors_at_their_location() {
    let text = "{\n  \"acls\": [\n    {\"action\": \"accept\", \"src\": [\"group:nope\"], \"dst\": [\"*:*\"]},\n  ],\n}";
    let (l, c, r) = err(text);
    assert_eq!((l, c), (3, 34));
    assert!(r.contains("group:nope") && r.contains("not defined"), "{r}");

    let text =
        "{\"acls\": [{\"action\": \"accept\", \"src\": [\"*\"],\n \"dst\": [\"tag:ghost:22\"]}]}";
    let (l, c, r) = err(text);
    assert_eq!((l, c), (2, 10));
    assert!(r.contains("tag:ghost"), "{r}");

    let text = "{\"grants\": [{\"src\": [\"*\"], \"dst\": [\"printer\"], \"ip\": [\"*\"]}]}";
    let (l, _, r) = err(text);
    assert_eq!(l, 1);
    assert!(r.contains("host \"printer\""), "{r}");
}

#[test]
fn malformed_rules_are_refused_with_reasons() {
    for (text, needle) in [
        (
            r#"{"acls": [{"action": "drop", "src": ["*"], "dst": ["*:*"]}]}"#,
            "only \"accept\"",
        ),
        (
            r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*"]}]}"#,
            "host:ports",
        ),
        (
            r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:70000"]}]}"#,
            "out of range",
        ),
        (
            r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"], "proto": "bogus"}]}"#,
            "unknown protocol",
        ),
        (
            r#"{"acls": [{"action": "accept", "src": ["autogroup:self"], "dst": ["*:*"]}]}"#,
            "autogroup:self",
        ),
        (
            r#"{"acls": [{"action": "accept", "src": ["autogroup:admin"], "dst": ["*:*"]}]}"#,
            "autogroup",
        ),
        (
            r#"{"grants": [{"src": ["*"], "dst": ["*"]}]}"#,
            "\"ip\" or \"app\"",
        ),
        (
            r#"{"grants": [{"src": ["*"], "dst": ["0.0.0.0/0"], "ip": ["*"]}]}"#,
            "autogroup:internet",
        ),
        (
            r#"{"hosts": {"h": "10.0.0.1/8"}}"#,
            "not an IP address or CIDR",
        ),
        (r#"{"acl": []}"#, "unknown policy section"),
        (r#"{"tagOwners": {"tag:a": ["tag:b"]}}"#, "tag:b"),
        (r#"{"groups": {"group:a": ["group:b"]}}"#, "cannot nest"),
        (
            r#"{"grants": [{"src": ["*"], "dst": ["*"], "app": {"nodomain": [{}]}}]}"#,
            "not a capability name",
        ),
        (
            r#"{"grants": [{"src": ["*"], "dst": ["*"], "app": {"example.com/cap/x": [1]}}]}"#,
            "expected an object",
        ),
        (
            r#"{"grants": [{"src": ["*"], "dst": ["*"], "app": {"example.com/cap/x": {}}}]}"#,
            "expected an array",
        ),
        (
            r#"{"grants": [{"src": ["*"], "dst": ["*"], "app": {}}]}"#,
            "needs \"ip\" or \"app\"",
        ),
    ] {
        let e = Policy::parse(text).expect_err(text);
        assert!(e.reason.contains(needle), "{text}: {e}");
        assert!(e.line() >= 1 && e.column() >= 1);
    }
}

const OWNERS: &str = r#"{
  "groups": {"group:ops": ["olga@example.com"]},
  "tagOwners": {
    "tag:web": ["alice@example.com", "group:ops"],
    "tag:ci": ["tag:web"],
    "tag:db": [],
  },
  "autoApprovers": {
    "routes": {"10.0.0.0/8": ["tag:web", "group:ops"]},
    "exitNode": ["tag:ci"],
  },
}"#;

#[test]
fn tags_are_usable_only_by_their_owners() {
    let p = Policy::parse(OWNERS).unwrap();
    let tags = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let alice = TagRequester {
        user: Some("alice@example.com"),
        ..TagRequester::default()
    };
    assert!(p.may_use_tags(&alice, &tags(&["tag:web"])));
    assert!(!p.may_use_tags(&alice, &tags(&["tag:web", "tag:ci"])));
    assert!(!p.may_use_tags(&alice, &tags(&["tag:db"])));
    assert!(!p.may_use_tags(&alice, &tags(&["tag:undefined"])));
    let oidc_ops = ["ops".to_string()];
    let olga_by_oidc = TagRequester {
        user: Some("someone@example.com"),
        user_groups: &oidc_ops,
        tags: &[],
    };
    assert!(p.may_use_tags(&olga_by_oidc, &tags(&["tag:web"])));
    let web_node_tags = tags(&["tag:web"]);
    let web_node = TagRequester {
        user: None,
        user_groups: &[],
        tags: &web_node_tags,
    };
    assert!(p.may_use_tags(&web_node, &tags(&["tag:ci"])));
    let bob = TagRequester {
        user: Some("bob@example.com"),
        ..TagRequester::default()
    };
    assert!(!p.may_use_tags(&bob, &tags(&["tag:web"])));
    assert!(p.may_use_tags(&bob, &[]));
}

#[test]
fn auto_approvers_cover_routes_inside_their_prefix_and_exit_nodes() {
    let p = Policy::parse(OWNERS).unwrap();
    let web = SnapshotNode {
        id: 1,
        tags: vec!["tag:web".into()],
        ..SnapshotNode::default()
    };
    let ci = SnapshotNode {
        id: 2,
        tags: vec!["tag:ci".into()],
        ..SnapshotNode::default()
    };
    let olga = SnapshotNode {
        id: 3,
        user: Some("olga@example.com".into()),
        ..SnapshotNode::default()
    };
    assert!(p.auto_approves_route(&web, &"10.1.0.0/16".parse().unwrap()));
    assert!(!p.auto_approves_route(&web, &"192.168.0.0/24".parse().unwrap()));
    assert!(p.auto_approves_route(&olga, &"10.0.0.0/8".parse().unwrap()));
    assert!(!p.auto_approves_route(&ci, &"10.1.0.0/16".parse().unwrap()));
    assert!(p.auto_approves_exit_node(&ci));
    assert!(!p.auto_approves_exit_node(&web));
    assert!(p.auto_approves_route(&ci, &"0.0.0.0/0".parse().unwrap()));
}
