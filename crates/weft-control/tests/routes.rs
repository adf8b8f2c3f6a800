//! Subnet routes and exit nodes on the coordination server: advertised routes reach peers
//! only once approved (admin API or the policy's autoApprovers), exit routes go as a pair,
//! and of several routers for one prefix only one (the primary) serves it.

mod common;

use common::{Machine, TestServer};
use ipnet::IpNet;
use serde_json::{json, Value};
use weft_tailcfg::{Hostinfo, MapRequest, MapResponse, Node, NodeId};

/// A server whose users have e-mail addresses (what policies name them by).
async fn start() -> TestServer {
    common::start().await.with_user_emails()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn hostinfo(name: &str, routes: &[&str]) -> Hostinfo {
    let mut h = Hostinfo::new().with_hostname(name);
    h.set("RoutableIPs", json!(routes));
    h
}

/// Registers `hostname` with pre-auth `key`, advertising `routes`.
async fn router(ts: &TestServer, hostname: &str, key: &str, routes: &[&str]) -> Machine {
    let m = Machine::connect(ts, hostname).await;
    let mut req = m.register_request(Some(key));
    req.hostinfo = Some(hostinfo(hostname, routes));
    let r = m.register(&req).await;
    assert_eq!(r.error, "", "registration failed");
    assert!(r.machine_authorized);
    m
}

/// A streaming map request that keeps advertising `routes` (clients resend their whole
/// Hostinfo).
fn stream_request(m: &Machine, routes: &[&str]) -> MapRequest {
    let mut req = m.map_request(true);
    req.hostinfo = Some(hostinfo(&m.hostname, routes));
    req
}

fn peer(m: &MapResponse, id: NodeId) -> Option<&Node> {
    m.peers
        .iter()
        .chain(m.peers_changed.iter())
        .find(|p| p.id == id)
}

/// Routes in a peer's AllowedIPs beyond its own addresses.
fn routes_of(n: &Node) -> Vec<IpNet> {
    n.allowed_ips
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| !n.addresses.contains(r))
        .collect()
}

async fn node_id(ts: &TestServer, m: &Machine) -> NodeId {
    ts.node(&m.node.public()).await.id.0
}

async fn set_routes(ts: &TestServer, id: NodeId, routes: &[&str]) -> (u16, Value) {
    ts.admin_json(
        &format!("/api/v1/nodes/{id}/routes"),
        Some(json!({ "routes": routes })),
    )
    .await
}

async fn node_json(ts: &TestServer, id: NodeId) -> Value {
    let (status, v) = ts.admin_json("/api/v1/nodes", None).await;
    assert_eq!(status, 200);
    v.as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == json!(id))
        .cloned()
        .expect("node listed")
}

#[tokio::test]
async fn an_advertised_route_reaches_peers_only_once_approved_and_leaves_when_unapproved() {
    let ts = start().await;
    let key = ts.key("alice", |k| k.reusable = true).await;
    let r = router(&ts, "router", &key, &["10.77.0.0/24"]).await;
    let rid = node_id(&ts, &r).await;
    let c = common::joined(&ts, "client", &key).await;
    let mut sc = c.open_stream().await;

    let first = sc.next().await;
    let p = peer(&first, rid).expect("router is a peer");
    assert!(routes_of(p).is_empty(), "not routed before approval: {p:?}");
    assert!(p.primary_routes.is_empty());
    let listed = node_json(&ts, rid).await;
    assert_eq!(listed["advertised_routes"], json!(["10.77.0.0/24"]));
    assert_eq!(listed["approved_routes"], json!([]));
    assert_eq!(listed["serving_routes"], json!([]));

    let (status, v) = set_routes(&ts, rid, &["10.77.0.0/24"]).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["approved_routes"], json!(["10.77.0.0/24"]));
    assert_eq!(v["primary_routes"], json!(["10.77.0.0/24"]));
    assert_eq!(v["serving_routes"], json!(["10.77.0.0/24"]));
    let m = sc
        .next_matching(|m| peer(m, rid).is_some_and(|p| !routes_of(p).is_empty()))
        .await;
    let p = peer(&m, rid).unwrap();
    assert_eq!(routes_of(p), vec![net("10.77.0.0/24")]);
    assert_eq!(p.primary_routes, vec![net("10.77.0.0/24")]);
    assert_eq!(
        ts.node(&r.node.public()).await.approved_routes,
        vec![net("10.77.0.0/24")]
    );

    // An empty list clears the approval; peers stop routing through the node.
    let (status, v) = set_routes(&ts, rid, &[]).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["approved_routes"], json!([]));
    let m = sc
        .next_matching(|m| peer(m, rid).is_some_and(|p| routes_of(p).is_empty()))
        .await;
    assert!(peer(&m, rid).unwrap().primary_routes.is_empty());
}

#[tokio::test]
async fn approving_one_exit_route_approves_the_pair_and_exit_routes_are_not_primary() {
    let ts = start().await;
    let key = ts.key("alice", |k| k.reusable = true).await;
    let r = router(&ts, "exit", &key, &["0.0.0.0/0", "::/0", "10.77.0.0/24"]).await;
    let rid = node_id(&ts, &r).await;
    let c = common::joined(&ts, "client", &key).await;
    let mut sc = c.open_stream().await;
    sc.next().await;

    let (status, v) = set_routes(&ts, rid, &["0.0.0.0/0"]).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["approved_routes"], json!(["0.0.0.0/0", "::/0"]));
    assert_eq!(v["primary_routes"], json!([]));
    assert_eq!(v["serving_routes"], json!(["0.0.0.0/0", "::/0"]));
    let m = sc
        .next_matching(|m| peer(m, rid).is_some_and(|p| !routes_of(p).is_empty()))
        .await;
    let p = peer(&m, rid).unwrap();
    let mut got = routes_of(p);
    got.sort();
    assert_eq!(got, vec![net("0.0.0.0/0"), net("::/0")]);
    assert!(p.primary_routes.is_empty(), "exit routes are never primary");

    // `::/0` alone brings `0.0.0.0/0` too, and subnet routes come along unchanged.
    let (status, v) = set_routes(&ts, rid, &["::/0", "10.77.0.0/24", "10.77.0.0/24"]).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["approved_routes"],
        json!(["0.0.0.0/0", "10.77.0.0/24", "::/0"])
    );
    assert_eq!(v["primary_routes"], json!(["10.77.0.0/24"]));
}

#[tokio::test]
async fn malformed_routes_are_refused_with_400_and_change_nothing() {
    let ts = start().await;
    let key = ts.key("alice", |_| {}).await;
    let r = router(&ts, "router", &key, &["10.77.0.0/24"]).await;
    let rid = node_id(&ts, &r).await;
    for (bad, hint) in [
        ("10.77.0.0", "CIDR"),
        ("10.77.0.0/33", "CIDR"),
        ("router", "CIDR"),
        ("10.77.0.1/24", "did you mean 10.77.0.0/24"),
    ] {
        let (status, v) = set_routes(&ts, rid, &["10.77.0.0/24", bad]).await;
        assert_eq!(status, 400, "{bad}: {v}");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains(bad) && msg.contains(hint), "{bad}: {msg}");
    }
    assert!(ts.node(&r.node.public()).await.approved_routes.is_empty());
    let (status, _) = set_routes(&ts, rid + 100, &["10.77.0.0/24"]).await;
    assert_eq!(status, 404);
    let (status, _) = ts
        .admin_json("/api/v1/nodes/x/routes", Some(json!({"routes": []})))
        .await;
    assert_eq!(status, 400);
}

/// Alice's routes inside 10.0.0.0/8 and exit nodes tagged `tag:router` are approved by
/// the policy.
const AUTO: &str = r#"{
  "tagOwners": {"tag:router": ["alice@example.com"]},
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
  "autoApprovers": {
    "routes": {"10.0.0.0/8": ["alice@example.com"]},
    "exitNode": ["tag:router"],
  },
}"#;

fn approved(n: &weft_store::Node) -> Vec<IpNet> {
    let mut v = n.approved_routes.clone();
    v.sort();
    v
}

#[tokio::test]
async fn auto_approvers_approve_routes_on_registration_on_new_advertisements_and_on_policy_change()
{
    let ts = start().await;
    ts.user("alice").await;
    ts.control.set_policy_text(AUTO, "admin").await.unwrap();
    let alice = ts.key("alice", |k| k.reusable = true).await;
    let bob = ts.key("bob", |_| {}).await;
    let tagged = ts
        .key("alice", |k| k.tags = vec!["tag:router".into()])
        .await;

    // At registration: only what autoApprovers cover, for the right owner.
    let r = router(&ts, "router", &alice, &["10.77.0.0/24", "192.168.5.0/24"]).await;
    assert_eq!(
        approved(&ts.node(&r.node.public()).await),
        vec![net("10.77.0.0/24")]
    );
    let b = router(&ts, "bobs", &bob, &["10.99.0.0/24"]).await;
    assert!(ts.node(&b.node.public()).await.approved_routes.is_empty());
    let e = router(&ts, "exit", &tagged, &["0.0.0.0/0", "::/0", "10.5.0.0/24"]).await;
    assert_eq!(
        approved(&ts.node(&e.node.public()).await),
        vec![net("0.0.0.0/0"), net("::/0")],
        "a tagged node is not alice's: only the exitNode approver applies"
    );

    // A route advertised later (lite map update) is approved at once and reaches peers.
    let rid = node_id(&ts, &r).await;
    let c = common::joined(&ts, "client", &alice).await;
    let mut sc = c.open_stream().await;
    let first = sc.next().await;
    assert_eq!(
        routes_of(peer(&first, rid).unwrap()),
        vec![net("10.77.0.0/24")]
    );
    let mut lite = stream_request(&r, &["10.77.0.0/24", "10.88.0.0/24", "192.168.5.0/24"]);
    lite.stream = false;
    lite.omit_peers = true;
    assert_eq!(r.lite_update(&lite).await, 200);
    assert_eq!(
        approved(&ts.node(&r.node.public()).await),
        vec![net("10.77.0.0/24"), net("10.88.0.0/24")]
    );
    let m = sc
        .next_matching(|m| peer(m, rid).is_some_and(|p| routes_of(p).len() == 2))
        .await;
    let p = peer(&m, rid).unwrap();
    assert_eq!(
        p.primary_routes,
        vec![net("10.77.0.0/24"), net("10.88.0.0/24")]
    );

    // A policy that covers 192.168.0.0/16 approves the route already advertised.
    let wider = AUTO.replace(
        r#""10.0.0.0/8": ["alice@example.com"]"#,
        r#""10.0.0.0/8": ["alice@example.com"], "192.168.0.0/16": ["alice@example.com"]"#,
    );
    ts.control.set_policy_text(&wider, "admin").await.unwrap();
    assert_eq!(
        approved(&ts.node(&r.node.public()).await),
        vec![
            net("10.77.0.0/24"),
            net("10.88.0.0/24"),
            net("192.168.5.0/24")
        ]
    );
    sc.next_matching(|m| peer(m, rid).is_some_and(|p| routes_of(p).len() == 3))
        .await;
    assert!(ts.node(&b.node.public()).await.approved_routes.is_empty());
}

#[tokio::test]
async fn of_two_routers_for_one_prefix_one_serves_and_the_other_takes_over_when_it_goes_offline() {
    let ts = start().await;
    let key = ts.key("alice", |k| k.reusable = true).await;
    let route = ["10.77.0.0/24"];
    let r1 = router(&ts, "r1", &key, &route).await;
    let r2 = router(&ts, "r2", &key, &route).await;
    let (id1, id2) = (node_id(&ts, &r1).await, node_id(&ts, &r2).await);
    assert!(id1 < id2);
    for id in [id1, id2] {
        let (status, v) = set_routes(&ts, id, &route).await;
        assert_eq!(status, 200, "{v}");
    }
    let mut s1 = r1.open_stream_with(&stream_request(&r1, &route)).await;
    s1.next().await;
    let mut s2 = r2.open_stream_with(&stream_request(&r2, &route)).await;
    s2.next().await;
    let c = common::joined(&ts, "client", &key).await;
    let mut sc = c.open_stream().await;

    let first = sc.next().await;
    let (p1, p2) = (peer(&first, id1).unwrap(), peer(&first, id2).unwrap());
    assert_eq!(p1.primary_routes, vec![net("10.77.0.0/24")]);
    assert_eq!(routes_of(p1), vec![net("10.77.0.0/24")]);
    assert!(
        p2.primary_routes.is_empty(),
        "only one router serves a prefix"
    );
    assert!(routes_of(p2).is_empty());
    assert_eq!(
        node_json(&ts, id1).await["serving_routes"],
        json!(["10.77.0.0/24"])
    );
    assert_eq!(node_json(&ts, id2).await["serving_routes"], json!([]));
    assert_eq!(
        node_json(&ts, id2).await["approved_routes"],
        json!(["10.77.0.0/24"])
    );

    // r1 goes offline: r2 takes over, and peers learn both changes.
    drop(s1);
    let m = sc
        .next_matching(|m| peer(m, id2).is_some_and(|p| !p.primary_routes.is_empty()))
        .await;
    assert_eq!(routes_of(peer(&m, id2).unwrap()), vec![net("10.77.0.0/24")]);
    let p1 = peer(&m, id1).expect("the old primary is updated in the same message");
    assert!(p1.primary_routes.is_empty() && routes_of(p1).is_empty());
    assert_eq!(p1.online, Some(false));

    // r1 back online: r2 keeps serving (no flapping back).
    let mut s1 = r1.open_stream_with(&stream_request(&r1, &route)).await;
    s1.next().await;
    sc.next_matching(|m| {
        m.peers_changed_patch
            .iter()
            .any(|p| p.node_id == id1 && p.online == Some(true))
    })
    .await;
    assert_eq!(
        node_json(&ts, id2).await["serving_routes"],
        json!(["10.77.0.0/24"])
    );
    assert_eq!(node_json(&ts, id1).await["serving_routes"], json!([]));

    // r2 goes offline: back to r1.
    drop(s2);
    let m = sc
        .next_matching(|m| peer(m, id1).is_some_and(|p| !p.primary_routes.is_empty()))
        .await;
    assert!(peer(&m, id2).unwrap().primary_routes.is_empty());
}
