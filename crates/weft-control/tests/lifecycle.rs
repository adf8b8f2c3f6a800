//! Device lifecycle over real ts2021 on 127.0.0.1: key expiry (admin expire reaching peers,
//! the default lifetime, tagged nodes exempt), sticky OldNodeKey after a completed
//! rotation, seamless re-login that keeps the old key working until the new one is
//! authorised, device approval for pre-auth keys.

mod common;

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use common::{register, MapStream, TestServer, WAIT};
use http_body_util::BodyExt;
use time::OffsetDateTime;
use tokio::time::timeout;
use tower::ServiceExt;
use weft_control::ControlConfig;
use weft_key::NodePrivate;
use weft_store::NewPreauthKey;
use weft_tailcfg::{MapResponse, Time};

/// The server as these tests use it: every key belongs to alice and is reusable unless
/// `tweak` says otherwise.
struct Server(TestServer);

impl Deref for Server {
    type Target = TestServer;
    fn deref(&self) -> &TestServer {
        &self.0
    }
}

impl Server {
    async fn key(&self, tweak: impl FnOnce(&mut NewPreauthKey)) -> String {
        self.0
            .key("alice", |k| {
                k.reusable = true;
                tweak(k)
            })
            .await
    }
}

/// A server without DERP map or base domain, configured by `tweak`.
async fn start(tweak: impl FnOnce(&mut ControlConfig)) -> Server {
    Server(common::start_plain(tweak).await)
}

/// A machine whose map streams take a time limit on every read.
struct Machine(common::Machine);

impl Deref for Machine {
    type Target = common::Machine;
    fn deref(&self) -> &common::Machine {
        &self.0
    }
}

impl DerefMut for Machine {
    fn deref_mut(&mut self) -> &mut common::Machine {
        &mut self.0
    }
}

impl Machine {
    async fn joined(s: &Server, hostname: &str, key: &str) -> Machine {
        Machine(common::Machine::joined(s, hostname, key).await)
    }

    async fn open_stream(&self) -> Stream {
        Stream(self.0.open_stream().await)
    }
}

struct Stream(MapStream);

impl Stream {
    async fn next(&mut self, within: Duration) -> MapResponse {
        self.0.next_within(within).await
    }

    async fn next_matching(
        &mut self,
        within: Duration,
        pred: impl Fn(&MapResponse) -> bool,
    ) -> MapResponse {
        self.0.next_matching_within(within, pred).await
    }
}

fn now() -> Time {
    Time::from_system(std::time::SystemTime::now())
}

#[tokio::test]
async fn admin_expire_reaches_a_peers_open_stream_within_a_second() {
    let s = start(|_| {}).await;
    let key = s.key(|_| {}).await;
    let a = Machine::joined(&s, "alpha", &key).await;
    let b = Machine::joined(&s, "beta", &key).await;
    let mut sa = a.open_stream().await;
    let first = sa.next(WAIT).await;
    assert!(first.peers.iter().any(|p| p.key == b.node.public()));
    let bid = s.node(&b.node.public()).await.id;

    assert_eq!(
        s.admin_post(&format!("/api/v1/nodes/{bid}/expire")).await,
        200
    );
    let t = now();
    // Tailscale clients drop a peer whose KeyExpiry has passed (or that is removed).
    let m = sa
        .next_matching(Duration::from_secs(1), |m| {
            m.peers_removed.contains(&bid.0)
                || m.peers_changed_patch.iter().any(|p| {
                    p.node_id == bid.0 && p.key_expiry.is_some_and(|e| !e.is_zero() && e <= t)
                })
                || m.peers_changed.iter().any(|p| {
                    p.id == bid.0 && (p.expired || (!p.key_expiry.is_zero() && p.key_expiry <= t))
                })
        })
        .await;
    assert!(!m.keep_alive);
    // The expired node itself is told to log in again.
    let r = b.register(&b.request(None)).await;
    assert!(r.node_key_expired);
}

#[tokio::test]
async fn user_nodes_get_the_default_key_lifetime_and_tagged_nodes_never_expire() {
    let s = start(|_| {}).await;
    let key = s.key(|_| {}).await;
    let a = Machine::joined(&s, "alpha", &key).await;
    let n = s.node(&a.node.public()).await;
    let expiry = n.expiry.expect("user nodes get a key expiry by default");
    let days = (expiry - OffsetDateTime::now_utc()).whole_days();
    assert!((179..=180).contains(&days), "expiry in {days} days");

    let tagged_key = s.key(|k| k.tags = vec!["tag:server".into()]).await;
    let t = Machine::joined(&s, "server", &tagged_key).await;
    assert_eq!(s.node(&t.node.public()).await.expiry, None);

    // Disabling expiry per node.
    let off = start(|c| c.node_key_expiry = None).await;
    let key = off.key(|_| {}).await;
    let a = Machine::joined(&off, "alpha", &key).await;
    assert_eq!(off.node(&a.node.public()).await.expiry, None);
}

#[tokio::test]
async fn old_node_key_still_sent_after_a_completed_rotation_is_a_plain_refresh() {
    let s = start(|_| {}).await;
    let key = s.key(|_| {}).await;
    let mut a = Machine::joined(&s, "alpha", &key).await;
    let before = s.node(&a.node.public()).await;
    let old = a.node.public();
    a.node = NodePrivate::generate();
    let mut rot = a.request(Some(&key));
    rot.old_node_key = old;
    assert_eq!(a.register(&rot).await.error, "");

    // Later registrations keep sending OldNodeKey (it is sticky in the client) and no key.
    let mut again = a.request(None);
    again.old_node_key = old;
    let r = a.register(&again).await;
    assert_eq!(r.error, "");
    assert_eq!(r.auth_url, "");
    assert!(r.machine_authorized);
    assert!(!r.node_key_expired);
    let after = s.node(&a.node.public()).await;
    assert_eq!(after.id, before.id);
    assert_eq!(after.ipv4, before.ipv4);
    assert_eq!(s.store.list_nodes().await.unwrap().len(), 1);
}

#[tokio::test]
async fn interactive_relogin_keeps_the_old_key_working_until_the_new_one_is_authorised() {
    let s = start(|_| {}).await;
    let key = s.key(|_| {}).await;
    let mut a = Machine::joined(&s, "alpha", &key).await;
    let before = s.node(&a.node.public()).await;
    let old = a.node.public();

    // `tailscale login` on a running node: new key, OldNodeKey = current, no auth key.
    a.node = NodePrivate::generate();
    let mut req = a.request(None);
    req.old_node_key = old;
    let r = a.register(&req).await;
    assert!(!r.auth_url.is_empty());
    let auth_id = r.auth_url.rsplit('/').next().unwrap().to_string();

    // While the login is pending, the old key still works.
    assert_eq!(a.map_status(old).await, 200);
    assert_eq!(s.node(&old).await.id, before.id);

    let mut follow = req.clone();
    follow.followup = r.auth_url.clone();
    let client = a.client.clone();
    let pending = tokio::spawn(async move { register(&client, &follow).await });
    let alice = s.store.get_user_by_name("alice").await.unwrap();
    s.control
        .complete_auth_session(&auth_id, alice.id)
        .await
        .unwrap();
    let r = timeout(WAIT, pending).await.unwrap().unwrap();
    assert_eq!(r.error, "");
    assert!(r.machine_authorized);

    let after = s.node(&a.node.public()).await;
    assert_eq!(after.id, before.id);
    assert_eq!(after.ipv4, before.ipv4);
    assert_eq!(after.ipv6, before.ipv6);
    assert_eq!(a.map_status(a.node.public()).await, 200);
    assert_eq!(a.map_status(old).await, 404);
}

#[tokio::test]
async fn with_approval_required_only_pre_approved_keys_skip_it() {
    let s = start(|c| c.require_approval = true).await;
    let plain = s.key(|_| {}).await;
    let pre = s.key(|k| k.pre_approved = true).await;
    let a = Machine::joined(&s, "alpha", &pre).await;
    let b = Machine::joined(&s, "beta", &plain).await;
    assert!(s.node(&a.node.public()).await.approved);
    let bn = s.node(&b.node.public()).await;
    assert!(!bn.approved);

    let mut sa = a.open_stream().await;
    let m = sa.next(WAIT).await;
    assert!(m.peers.iter().all(|p| p.key != b.node.public()));
    let mut sb = b.open_stream().await;
    let m = sb.next(WAIT).await;
    assert!(m.peers.is_empty());
    assert!(!m.node.unwrap().machine_authorized);

    assert_eq!(
        s.admin_post(&format!("/api/v1/nodes/{}/approve", bn.id))
            .await,
        200
    );
    let m = sa
        .next_matching(WAIT, |m| m.peers_changed.iter().any(|p| p.id == bn.id.0))
        .await;
    assert!(m.peers_changed.iter().any(|p| p.key == b.node.public()));
    let m = sb
        .next_matching(WAIT, |m| {
            m.node.as_ref().is_some_and(|n| n.machine_authorized)
        })
        .await;
    assert!(m.peers.iter().any(|p| p.key == a.node.public()));
}

#[tokio::test]
async fn disabling_key_expiry_revives_an_expired_node_and_peers_see_no_expiry() {
    let s = start(|_| {}).await;
    let key = s.key(|_| {}).await;
    let a = Machine::joined(&s, "alpha", &key).await;
    let b = Machine::joined(&s, "beta", &key).await;
    let bid = s.node(&b.node.public()).await.id;
    assert_eq!(
        s.admin_post(&format!("/api/v1/nodes/{bid}/expire")).await,
        200
    );
    assert!(b.register(&b.request(None)).await.node_key_expired);

    let resp = s
        .control
        .admin_router()
        .oneshot(
            axum::http::Request::post(format!("/api/v1/nodes/{bid}/key-expiry"))
                .header("content-type", "application/json")
                .body(axum::body::Body::from(r#"{"disabled":true}"#))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let info: weft_control::admin::NodeInfo = serde_json::from_slice(&body).unwrap();
    assert!(info.key_expiry_disabled);
    assert!(!info.expired);
    let r = b.register(&b.request(None)).await;
    assert!(!r.node_key_expired);
    let mut sa = a.open_stream().await;
    let m = sa.next(WAIT).await;
    let peer = m.peers.iter().find(|p| p.id == bid.0).unwrap();
    assert!(peer.key_expiry.is_zero());
    assert!(!peer.expired);
}
