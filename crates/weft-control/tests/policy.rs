//! In-process tests of the tailnet policy in the coordination server: `policy set` refusals,
//! packet filters and peer visibility pushed to open map streams without reconnecting.

mod common;

use std::time::Duration;

use common::{joined, Machine, TestServer};
use http_body_util::BodyExt;
use tokio::time::timeout;
use weft_key::NodePublic;
use weft_tailcfg::MapResponse;

/// A server whose users have e-mail addresses, which the policies below name them by.
async fn start() -> TestServer {
    common::start().await.with_user_emails()
}

/// Alice reaches her own nodes on port 80 only; bob only his own nodes.
const OWN_PORT_80: &str = r#"{
  // users by login name
  "tagOwners": {"tag:web": ["alice@example.com"]},
  "acls": [
    {"action": "accept", "src": ["alice@example.com"], "dst": ["alice@example.com:80"]},
    {"action": "accept", "src": ["bob@example.com"], "dst": ["bob@example.com:*"]},
  ],
  "tests": [
    {"src": "alice@example.com", "accept": ["alice@example.com:80"], "deny": ["alice@example.com:22", "bob@example.com:80"]},
  ],
}"#;

fn ports_of(m: &MapResponse) -> Vec<(u16, u16)> {
    m.packet_filter
        .as_ref()
        .expect("packet filter present")
        .iter()
        .flat_map(|r| r.dst_ports.iter().map(|d| (d.ports.first, d.ports.last)))
        .collect()
}

fn allow_all_filter() -> Option<Vec<weft_tailcfg::FilterRule>> {
    Some(vec![weft_tailcfg::FilterRule::allow_all()])
}

#[tokio::test]
async fn a_syntax_error_is_refused_with_line_and_column_and_the_previous_policy_stays() {
    let ts = start().await;
    ts.user("alice").await;
    let first = ts
        .control
        .set_policy_text(OWN_PORT_80, "admin")
        .await
        .expect("valid policy applies");
    assert_eq!(first.author, "admin");
    assert_eq!(first.tests, 1);

    let bad = "{\n  \"acls\": [\n    {\"action\": \"accept\" \"src\": [\"*\"]},\n  ],\n}";
    let err = ts
        .control
        .set_policy_text(bad, "admin")
        .await
        .expect_err("syntax error refused")
        .to_string();
    assert!(err.contains("line 3, column"), "{err}");
    let cur = ts.store.current_policy().await.unwrap().unwrap();
    assert_eq!(cur.text, OWN_PORT_80, "previous policy stays in force");
    assert_eq!(ts.store.policy_history(10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_policy_whose_tests_fail_is_refused_naming_the_test_and_the_previous_stays() {
    let ts = start().await;
    ts.user("alice").await;
    ts.control
        .set_policy_text(OWN_PORT_80, "admin")
        .await
        .unwrap();
    let failing = OWN_PORT_80.replace(
        r#""deny": ["alice@example.com:22""#,
        r#""deny": ["alice@example.com:80""#,
    );
    let err = ts
        .control
        .set_policy_text(&failing, "admin")
        .await
        .expect_err("failing tests refused")
        .to_string();
    assert!(
        err.contains("test 0") && err.contains("alice@example.com:80"),
        "{err}"
    );
    let cur = ts.store.current_policy().await.unwrap().unwrap();
    assert_eq!(cur.text, OWN_PORT_80);
    // check alone applies nothing
    ts.control.check_policy(OWN_PORT_80).unwrap();
    assert!(ts.control.check_policy(&failing).is_err());
    assert_eq!(ts.store.policy_history(10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn policy_set_pushes_the_new_packet_filter_to_an_open_stream_within_a_second() {
    let ts = start().await;
    let key = ts.key("alice", |k| k.reusable = true).await;
    let a = joined(&ts, "alpha", &key).await;
    let _b = joined(&ts, "beta", &key).await;
    let mut sa = a.open_stream().await;
    let first = sa.next().await;
    assert_eq!(
        first.packet_filter,
        allow_all_filter(),
        "no policy: allow all"
    );
    assert_eq!(first.peers.len(), 1);

    ts.control
        .set_policy_text(OWN_PORT_80, "admin")
        .await
        .unwrap();
    let m = timeout(
        Duration::from_secs(1),
        sa.next_matching(|m| m.packet_filter.is_some()),
    )
    .await
    .expect("new filter within a second, same stream");
    assert_eq!(ports_of(&m), vec![(80, 80), (80, 80)], "{m:?}");
    assert_eq!(m.peers.len(), 1, "alice still sees her other node");

    // A second change on the same stream: back to port 22 only.
    let p22 = r#"{"acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["alice@example.com:22"]}]}"#;
    ts.control.set_policy_text(p22, "admin").await.unwrap();
    let m = timeout(
        Duration::from_secs(1),
        sa.next_matching(|m| m.packet_filter.is_some()),
    )
    .await
    .expect("second change within a second");
    assert_eq!(ports_of(&m), vec![(22, 22), (22, 22)], "{m:?}");
}

#[tokio::test]
async fn a_node_that_may_not_talk_to_another_stops_seeing_it() {
    let ts = start().await;
    let ka = ts.key("alice", |_| {}).await;
    let kb = ts.key("bob", |_| {}).await;
    let a = joined(&ts, "alpha", &ka).await;
    let b = joined(&ts, "beta", &kb).await;
    let mut sa = a.open_stream().await;
    let first = sa.next().await;
    assert_eq!(first.peers.len(), 1, "allow all: alice sees bob's node");
    assert_eq!(first.peers[0].key, b.node.public());

    ts.control
        .set_policy_text(OWN_PORT_80, "admin")
        .await
        .unwrap();
    let m = timeout(
        Duration::from_secs(1),
        sa.next_matching(|m| m.packet_filter.is_some()),
    )
    .await
    .expect("update within a second");
    assert!(m.peers.is_empty(), "{m:?}");
    let b_id = first.peers[0].id;
    assert_eq!(m.peers_removed, vec![b_id], "bob's node is removed");

    // Allowing alice to reach bob again makes the node visible again.
    let open = OWN_PORT_80.replace(
        r#""dst": ["alice@example.com:80"]},"#,
        r#""dst": ["alice@example.com:80", "bob@example.com:443"]},"#,
    );
    ts.control.set_policy_text(&open, "admin").await.unwrap();
    let m = timeout(
        Duration::from_secs(1),
        sa.next_matching(|m| m.packet_filter.is_some()),
    )
    .await
    .expect("update within a second");
    assert_eq!(m.peers.len(), 1);
    assert_eq!(m.peers[0].key, b.node.public());
}

#[tokio::test]
async fn a_node_joining_under_a_policy_reaches_only_the_nodes_it_may_see() {
    let ts = start().await;
    ts.user("alice").await;
    ts.user("bob").await;
    ts.control
        .set_policy_text(OWN_PORT_80, "admin")
        .await
        .unwrap();
    let ka = ts.key("alice", |k| k.reusable = true).await;
    let kb = ts.key("bob", |_| {}).await;
    let a = joined(&ts, "alpha", &ka).await;
    let mut sa = a.open_stream().await;
    let first = sa.next().await;
    assert!(first.peers.is_empty());

    // bob's node is invisible to alice: alice's stream hears nothing of it
    let _b = joined(&ts, "beta", &kb).await;
    // alice's second node appears on her stream
    let a2 = joined(&ts, "alpha2", &ka).await;
    let m = sa
        .next_matching(|m| !m.peers_changed.is_empty() || !m.peers.is_empty())
        .await;
    let keys: Vec<NodePublic> = m
        .peers_changed
        .iter()
        .chain(m.peers.iter())
        .map(|n| n.key)
        .collect();
    assert_eq!(keys, vec![a2.node.public()], "{m:?}");
}

#[tokio::test]
async fn auth_keys_with_tags_the_user_does_not_own_are_refused() {
    use tower::ServiceExt;
    let ts = start().await;
    ts.user("alice").await;
    ts.user("bob").await;
    ts.control
        .set_policy_text(OWN_PORT_80, "admin")
        .await
        .unwrap();
    let call = |user: &str| {
        let body = serde_json::json!({"user": user, "tags": ["tag:web"]}).to_string();
        let app = ts.control.admin_router();
        async move {
            let resp = app
                .oneshot(
                    hyper::Request::post("/api/v1/authkeys")
                        .header("content-type", "application/json")
                        .body(axum::body::Body::from(body))
                        .unwrap(),
                )
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&bytes).to_string())
        }
    };
    let (status, body) = call("bob").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("does not own tags tag:web"), "{body}");
    let (status, body) = call("alice").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn advertised_tags_are_applied_only_when_the_user_owns_them() {
    let ts = start().await;
    ts.control
        .set_policy_text(OWN_PORT_80, "admin")
        .await
        .unwrap();
    let with_tags = |m: &Machine, key: &str| {
        let mut req = m.register_request(Some(key));
        let hi = req.hostinfo.as_mut().unwrap();
        hi.0.insert("RequestTags".into(), serde_json::json!(["tag:web"]));
        req
    };
    let kb = ts.key("bob", |_| {}).await;
    let b = Machine::connect(&ts, "beta").await;
    let r = b.register(&with_tags(&b, &kb)).await;
    assert!(
        r.error.contains("tag:web") && r.error.contains("not permitted"),
        "{r:?}"
    );
    assert!(ts.store.list_nodes().await.unwrap().is_empty());

    let ka = ts.key("alice", |_| {}).await;
    let a = Machine::connect(&ts, "alpha").await;
    let r = a.register(&with_tags(&a, &ka)).await;
    assert_eq!(r.error, "");
    let nodes = ts.store.list_nodes().await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].tags, vec!["tag:web".to_string()]);
}

/// Starts an interactive login (no key) that advertises tag:web; returns the auth ID.
async fn begin_tagged_login(m: &Machine) -> String {
    let mut req = m.register_request(None);
    let hi = req.hostinfo.as_mut().unwrap();
    hi.0.insert("RequestTags".into(), serde_json::json!(["tag:web"]));
    let r = m.register(&req).await;
    assert!(!r.auth_url.is_empty(), "{r:?}");
    r.auth_url.rsplit('/').next().unwrap().to_string()
}

#[tokio::test]
async fn interactive_logins_get_advertised_tags_only_when_the_user_owns_them() {
    let ts = start().await;
    ts.control
        .set_policy_text(OWN_PORT_80, "admin")
        .await
        .unwrap();
    let alice = ts.user("alice").await;
    let bob = ts.user("bob").await;
    let b = Machine::connect(&ts, "beta").await;
    let auth_b = begin_tagged_login(&b).await;
    let err = ts
        .control
        .complete_auth_session(&auth_b, bob.id)
        .await
        .expect_err("bob does not own tag:web");
    assert!(err.to_string().contains("not permitted"), "{err}");
    assert!(ts.store.list_nodes().await.unwrap().is_empty());

    let a = Machine::connect(&ts, "alpha").await;
    let auth_a = begin_tagged_login(&a).await;
    let node = ts
        .control
        .complete_auth_session(&auth_a, alice.id)
        .await
        .unwrap();
    assert_eq!(node.tags, vec!["tag:web".to_string()]);
    assert_eq!(node.expiry, None, "tagged nodes do not expire");
}

#[tokio::test]
async fn tagging_a_node_recomputes_only_what_changed_and_pushes_it_at_once() {
    use tower::ServiceExt;
    let ts = start().await;
    ts.user("alice").await;
    ts.control
        .set_policy_text(
            r#"{
              "tagOwners": {"tag:web": ["alice@example.com"]},
              "acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["tag:web:80"]}],
            }"#,
            "admin",
        )
        .await
        .unwrap();
    let ka = ts.key("alice", |k| k.reusable = true).await;
    let a = joined(&ts, "alpha", &ka).await;
    let w = joined(&ts, "web", &ka).await;
    let mut sa = a.open_stream().await;
    assert!(
        sa.next().await.peers.is_empty(),
        "untagged web is invisible"
    );
    let mut sw = w.open_stream().await;
    let first = sw.next().await;
    assert_eq!(first.packet_filter, Some(vec![]), "web accepts nothing yet");
    let w_id = first.node.unwrap().id;

    let resp = ts
        .control
        .admin_router()
        .oneshot(
            hyper::Request::post(format!("/api/v1/nodes/{w_id}/tags"))
                .header("content-type", "application/json")
                .body(axum::body::Body::from(r#"{"tags": ["tag:web"]}"#))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let m = timeout(
        Duration::from_secs(1),
        sw.next_matching(|m| m.packet_filter.is_some()),
    )
    .await
    .expect("web's new filter within a second");
    assert_eq!(ports_of(&m), vec![(80, 80), (80, 80)], "{m:?}");
    let m = timeout(
        Duration::from_secs(1),
        sa.next_matching(|m| !m.peers.is_empty() || !m.peers_changed.is_empty()),
    )
    .await
    .expect("alpha sees web within a second");
    let ids: Vec<i64> = m
        .peers
        .iter()
        .chain(m.peers_changed.iter())
        .map(|n| n.id)
        .collect();
    assert_eq!(ids, vec![w_id]);
}
