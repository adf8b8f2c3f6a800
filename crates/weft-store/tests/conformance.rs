//! One conformance suite, run against SQLite (a temp file) and PostgreSQL.
//!
//! PostgreSQL: set `WEFT_TEST_POSTGRES_URL` (see `scripts/start-postgres.sh`); each
//! test creates and drops its own database, so the role needs CREATEDB. Without the
//! variable the PostgreSQL tests print a SKIP line and pass, except under `CI`,
//! where they fail.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use serde_json::json;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};
use weft_key::{DiscoPublic, MachinePublic, NlPublic, NodePublic};
use weft_store::*;

const NOW: OffsetDateTime = datetime!(2030-01-01 00:00:00 UTC);

fn mkey(n: u32) -> MachinePublic {
    MachinePublic::from_bytes(key_bytes(1, n))
}
fn nkey(n: u32) -> NodePublic {
    NodePublic::from_bytes(key_bytes(2, n))
}
fn key_bytes(kind: u8, n: u32) -> [u8; 32] {
    let mut b = [kind; 32];
    b[..4].copy_from_slice(&n.to_be_bytes());
    b
}

async fn user(s: &dyn Store, name: &str) -> User {
    s.create_user(NewUser {
        name: name.into(),
        ..Default::default()
    })
    .await
    .unwrap()
}

fn new_node(n: u32, user: UserId, hostname: &str) -> NewNode {
    NewNode::new(mkey(n), nkey(n), user, hostname)
}

/// Everything a failing call must leave untouched.
async fn snapshot(s: &dyn Store) -> (Vec<User>, Vec<PreauthKey>, Vec<Node>) {
    (
        s.list_users().await.unwrap(),
        s.list_preauth_keys(None).await.unwrap(),
        s.list_nodes().await.unwrap(),
    )
}

// ------------------------------------------------------------------------------------------
// the suite
// ------------------------------------------------------------------------------------------

async fn users_round_trip_and_enforce_unique_names(s: &dyn Store) {
    let alice = s
        .create_user(NewUser {
            name: "alice".into(),
            display_name: "Alice".into(),
            email: "alice@example.com".into(),
            provider: "oidc".into(),
            provider_subject: Some("https://idp|123".into()),
            groups: vec!["admins".into(), "eng".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(alice.id.0 > 0);
    assert_eq!(s.get_user(alice.id).await.unwrap(), alice);
    assert_eq!(s.get_user_by_name("alice").await.unwrap(), alice);
    assert_eq!(
        s.get_user_by_provider_subject("https://idp|123")
            .await
            .unwrap(),
        alice
    );
    assert_eq!(alice.groups, vec!["admins".to_owned(), "eng".to_owned()]);

    // Local users have no subject; several of them may coexist.
    let bob = user(s, "bob").await;
    let carol = user(s, "carol").await;
    assert_eq!(bob.provider_subject, None);
    assert!(bob.id > alice.id && carol.id > bob.id);

    assert!(s
        .create_user(NewUser {
            name: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap_err()
        .is_conflict());
    let dup_subject = NewUser {
        name: "alice2".into(),
        provider_subject: Some("https://idp|123".into()),
        ..Default::default()
    };
    assert!(s.create_user(dup_subject).await.unwrap_err().is_conflict());
    assert!(s
        .rename_user(bob.id, "alice")
        .await
        .unwrap_err()
        .is_conflict());

    let bob = s.rename_user(bob.id, "robert").await.unwrap();
    assert_eq!(bob.name, "robert");
    assert!(s.get_user_by_name("bob").await.unwrap_err().is_not_found());

    let alice = s
        .update_user_profile(
            alice.id,
            UserProfileUpdate {
                display_name: "Alice A.".into(),
                email: "a@example.com".into(),
                profile_pic_url: "https://pic".into(),
                groups: vec![],
            },
        )
        .await
        .unwrap();
    assert_eq!(alice.display_name, "Alice A.");
    assert_eq!(alice.groups, Vec::<String>::new());
    assert_eq!(s.get_user(alice.id).await.unwrap(), alice);

    let names: Vec<_> = s
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["alice", "robert", "carol"]);

    s.delete_user(carol.id).await.unwrap();
    assert!(s.get_user(carol.id).await.unwrap_err().is_not_found());
    assert!(s.delete_user(carol.id).await.unwrap_err().is_not_found());
    assert!(s
        .get_user(UserId(999_999))
        .await
        .unwrap_err()
        .is_not_found());
}

async fn preauth_keys_verify_by_hash_and_are_consumed_once(s: &dyn Store) {
    let u = user(s, "keys").await;
    let (k, full) = s
        .create_preauth_key(NewPreauthKey {
            user_id: u.id,
            tags: vec!["tag:server".into()],
            expiration: Some(NOW + Duration::hours(1)),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(full.starts_with("tskey-auth-") && !full.starts_with("tskey-client-"));
    assert!(full.contains(&k.prefix));
    assert!(!k.used && k.use_count == 0 && !k.reusable);
    assert_eq!(k.tags, vec!["tag:server".to_owned()]);
    assert_eq!(k.expiration, Some(NOW + Duration::hours(1)));

    assert_eq!(s.get_preauth_key_by_key(&full).await.unwrap(), k);
    let tampered = format!(
        "{}{}",
        &full[..full.len() - 1],
        if full.ends_with('0') { '1' } else { '0' }
    );
    assert!(s
        .get_preauth_key_by_key(&tampered)
        .await
        .unwrap_err()
        .is_not_found());
    assert!(s
        .get_preauth_key_by_key("tskey-auth-nope")
        .await
        .unwrap_err()
        .is_not_found());
    assert!(s
        .get_preauth_key_by_key("")
        .await
        .unwrap_err()
        .is_not_found());

    let used = s.mark_preauth_key_used(k.id, NOW).await.unwrap();
    assert!(used.used && used.use_count == 1);
    assert!(!used.is_usable(NOW));
    assert!(s
        .mark_preauth_key_used(k.id, NOW)
        .await
        .unwrap_err()
        .is_conflict());
    assert_eq!(s.get_preauth_key(k.id).await.unwrap().use_count, 1);

    let (r, _) = s
        .create_preauth_key(NewPreauthKey {
            user_id: u.id,
            reusable: true,
            ..Default::default()
        })
        .await
        .unwrap();
    for _ in 0..3 {
        s.mark_preauth_key_used(r.id, NOW).await.unwrap();
    }
    let r = s.get_preauth_key(r.id).await.unwrap();
    assert_eq!(r.use_count, 3);
    assert!(r.is_usable(NOW));

    // Expiring sets the expiration to `now` (never later), after which it cannot be used.
    let r = s.expire_preauth_key(r.id, NOW).await.unwrap();
    assert_eq!(r.expiration, Some(NOW));
    assert!(r.is_expired(NOW));
    assert!(s
        .mark_preauth_key_used(r.id, NOW)
        .await
        .unwrap_err()
        .is_conflict());
    let r = s
        .expire_preauth_key(r.id, NOW + Duration::hours(5))
        .await
        .unwrap();
    assert_eq!(r.expiration, Some(NOW));

    let (past, _) = s
        .create_preauth_key(NewPreauthKey {
            user_id: u.id,
            expiration: Some(NOW - Duration::seconds(1)),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(s
        .mark_preauth_key_used(past.id, NOW)
        .await
        .unwrap_err()
        .is_conflict());
    assert!(s
        .mark_preauth_key_used(PreauthKeyId(987_654), NOW)
        .await
        .unwrap_err()
        .is_not_found());

    let other = user(s, "other").await;
    s.create_preauth_key(NewPreauthKey {
        user_id: other.id,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(s.list_preauth_keys(Some(u.id)).await.unwrap().len(), 3);
    assert_eq!(s.list_preauth_keys(None).await.unwrap().len(), 4);
    assert!(s
        .create_preauth_key(NewPreauthKey {
            user_id: UserId(424_242),
            ..Default::default()
        })
        .await
        .unwrap_err()
        .is_not_found());

    s.delete_preauth_key(past.id).await.unwrap();
    assert!(s.get_preauth_key(past.id).await.unwrap_err().is_not_found());
    assert!(s
        .delete_preauth_key(past.id)
        .await
        .unwrap_err()
        .is_not_found());

    // Deleting a user (without nodes) deletes their keys.
    s.delete_user(other.id).await.unwrap();
    assert_eq!(s.list_preauth_keys(None).await.unwrap().len(), 2);
}

async fn nodes_round_trip_and_keep_identity_across_key_rotation(s: &dyn Store) {
    let u = user(s, "owner").await;
    let mut nn = new_node(1, u.id, "Laptop");
    nn.disco_key = DiscoPublic::from_bytes([9; 32]);
    nn.nl_key = NlPublic::from_bytes([8; 32]);
    nn.hostinfo = json!({"Hostname": "Laptop", "OS": "linux", "RoutableIPs": ["10.0.0.0/24"]});
    nn.endpoints = vec![
        "192.0.2.1:41641".parse().unwrap(),
        "[2001:db8::1]:41641".parse().unwrap(),
    ];
    nn.tags = vec!["tag:a".into()];
    nn.approved_routes = vec!["10.0.0.0/24".parse().unwrap()];
    nn.expiry = Some(datetime!(2030-06-01 12:34:56.123456789 UTC));
    nn.ephemeral = true;
    nn.approved = false;
    let a = s.create_node(nn.clone(), NOW).await.unwrap();
    assert_eq!(a.ipv4, Ipv4Addr::new(100, 64, 0, 1));
    assert_eq!(a.ipv6, "fd7a:115c:a1e0::1".parse::<Ipv6Addr>().unwrap());
    assert_eq!(a.given_name, "laptop");
    assert_eq!(a.hostname, "Laptop");
    assert_eq!(a.machine_key, mkey(1));
    assert_eq!(a.node_key, nkey(1));
    assert_eq!(a.disco_key, nn.disco_key);
    assert_eq!(a.nl_key, nn.nl_key);
    assert_eq!(a.hostinfo, nn.hostinfo);
    assert_eq!(a.endpoints, nn.endpoints);
    assert_eq!(a.tags, nn.tags);
    assert_eq!(a.approved_routes, nn.approved_routes);
    assert_eq!(a.expiry, nn.expiry, "timestamps keep nanoseconds");
    assert!(a.ephemeral && !a.approved && !a.key_expiry_disabled);
    assert_eq!(a.last_seen, None);
    assert_eq!(a.created_at, NOW);
    assert_eq!(s.get_node(a.id).await.unwrap(), a);
    assert_eq!(s.get_node_by_machine_key(&mkey(1)).await.unwrap(), a);
    assert_eq!(s.get_node_by_node_key(&nkey(1)).await.unwrap(), a);
    assert!(s
        .get_node_by_node_key(&nkey(77))
        .await
        .unwrap_err()
        .is_not_found());

    // Same hostname: the given name gets a suffix; addresses are the next free ones.
    let b = s
        .create_node(new_node(2, u.id, "laptop"), NOW)
        .await
        .unwrap();
    assert_eq!(b.given_name, "laptop-1");
    assert_eq!(b.ipv4, Ipv4Addr::new(100, 64, 0, 2));
    assert_eq!(s.unique_given_name("Laptop").await.unwrap(), "laptop-2");
    assert_eq!(s.unique_given_name("desk").await.unwrap(), "desk");

    // Rotation keeps id and addresses.
    let exp = Some(NOW + Duration::days(180));
    let a2 = s.update_node_key(a.id, nkey(100), exp).await.unwrap();
    assert_eq!(
        (a2.id, a2.ipv4, a2.ipv6, a2.machine_key),
        (a.id, a.ipv4, a.ipv6, a.machine_key)
    );
    assert_eq!(a2.node_key, nkey(100));
    assert_eq!(a2.expiry, exp);
    assert!(s
        .get_node_by_node_key(&nkey(1))
        .await
        .unwrap_err()
        .is_not_found());
    assert_eq!(s.get_node_by_node_key(&nkey(100)).await.unwrap().id, a.id);
    assert!(
        s.update_node_key(a.id, nkey(2), None)
            .await
            .unwrap_err()
            .is_conflict(),
        "key of node b"
    );
    assert!(s
        .update_node_key(NodeId(55_555), nkey(3), None)
        .await
        .unwrap_err()
        .is_not_found());

    // Live updates change only the given fields.
    let seen = NOW + Duration::minutes(3);
    let eps: Vec<SocketAddr> = vec!["198.51.100.7:1234".parse().unwrap()];
    let a3 = s
        .update_node_live(
            a.id,
            NodeLiveUpdate {
                disco_key: Some(DiscoPublic::from_bytes([7; 32])),
                endpoints: Some(eps.clone()),
                hostinfo: Some(json!({"Hostname": "laptop-renamed", "OS": "linux"})),
                last_seen: Some(seen),
            },
        )
        .await
        .unwrap();
    assert_eq!(a3.disco_key, DiscoPublic::from_bytes([7; 32]));
    assert_eq!(a3.endpoints, eps);
    assert_eq!(a3.hostname, "laptop-renamed");
    assert_eq!(a3.given_name, "laptop", "hostname changes do not rename");
    assert_eq!(a3.last_seen, Some(seen));
    let a4 = s
        .update_node_live(
            a.id,
            NodeLiveUpdate {
                last_seen: Some(seen + Duration::seconds(1)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (a4.disco_key, &a4.endpoints, &a4.hostinfo),
        (a3.disco_key, &a3.endpoints, &a3.hostinfo)
    );
    assert_eq!(a4.last_seen, Some(seen + Duration::seconds(1)));

    let a5 = s.set_node_expiry(a.id, None).await.unwrap();
    assert_eq!(a5.expiry, None);
    assert!(!a5.is_expired(NOW + Duration::days(10_000)));
    let a5 = s.set_node_expiry(a.id, Some(NOW)).await.unwrap();
    assert!(a5.is_expired(NOW));
    let a5 = s.set_node_key_expiry_disabled(a.id, true).await.unwrap();
    assert!(a5.key_expiry_disabled && !a5.is_expired(NOW));
    assert!(s.set_node_approved(a.id, true).await.unwrap().approved);
    assert_eq!(
        s.set_node_tags(a.id, vec![]).await.unwrap().tags,
        Vec::<String>::new()
    );
    let routes = vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
    assert_eq!(
        s.set_node_approved_routes(a.id, routes.clone())
            .await
            .unwrap()
            .approved_routes,
        routes
    );

    assert_eq!(
        s.rename_node(a.id, "work").await.unwrap().given_name,
        "work"
    );
    assert!(s.rename_node(b.id, "work").await.unwrap_err().is_conflict());
    assert!(matches!(
        s.rename_node(b.id, "Not A Label").await,
        Err(StoreError::Invalid(_))
    ));
    assert!(s
        .rename_node(NodeId(55_555), "x")
        .await
        .unwrap_err()
        .is_not_found());

    let v = user(s, "new-owner").await;
    assert_eq!(s.set_node_user(b.id, v.id).await.unwrap().user_id, v.id);
    assert!(s
        .set_node_user(b.id, UserId(31_337))
        .await
        .unwrap_err()
        .is_not_found());
    assert_eq!(s.list_nodes_by_user(v.id).await.unwrap().len(), 1);
    assert_eq!(s.list_nodes_by_user(u.id).await.unwrap()[0].id, a.id);
    assert!(
        s.delete_user(v.id).await.unwrap_err().is_conflict(),
        "owns node b"
    );

    // Deleting frees the address; the lowest free address is taken next.
    s.delete_node(a.id).await.unwrap();
    assert!(s.get_node(a.id).await.unwrap_err().is_not_found());
    assert!(s.delete_node(a.id).await.unwrap_err().is_not_found());
    let c = s.create_node(new_node(3, u.id, "c"), NOW).await.unwrap();
    assert_eq!(c.ipv4, Ipv4Addr::new(100, 64, 0, 1));
    assert!(c.id > b.id, "ids are never reused");
    let ids: Vec<_> = s
        .list_nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(ids, [b.id, c.id]);
}

async fn create_node_consumes_its_pre_auth_key_atomically(s: &dyn Store) {
    let u = user(s, "ak").await;
    let (single, _) = s
        .create_preauth_key(NewPreauthKey {
            user_id: u.id,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut nn = new_node(1, u.id, "one");
    nn.auth_key_id = Some(single.id);
    let n = s.create_node(nn, NOW).await.unwrap();
    assert_eq!(n.auth_key_id, Some(single.id));
    let k = s.get_preauth_key(single.id).await.unwrap();
    assert!(k.used && k.use_count == 1);

    let mut again = new_node(2, u.id, "two");
    again.auth_key_id = Some(single.id);
    let before = snapshot(s).await;
    assert!(s
        .create_node(again.clone(), NOW)
        .await
        .unwrap_err()
        .is_conflict());
    assert_eq!(snapshot(s).await, before);

    let (expiring, _) = s
        .create_preauth_key(NewPreauthKey {
            user_id: u.id,
            reusable: true,
            expiration: Some(NOW),
            ..Default::default()
        })
        .await
        .unwrap();
    again.auth_key_id = Some(expiring.id);
    assert!(
        s.create_node(again.clone(), NOW)
            .await
            .unwrap_err()
            .is_conflict(),
        "expired at now"
    );
    assert!(
        s.create_node(again.clone(), NOW - Duration::seconds(1))
            .await
            .is_ok(),
        "valid just before"
    );

    // Deleting the key keeps the node and clears its reference.
    s.delete_preauth_key(single.id).await.unwrap();
    assert_eq!(s.get_node(n.id).await.unwrap().auth_key_id, None);

    // Re-registration in place keeps id and addresses and consumes its key atomically.
    let (rk, _) = s
        .create_preauth_key(NewPreauthKey {
            user_id: u.id,
            ..Default::default()
        })
        .await
        .unwrap();
    let other = user(s, "ak-other").await;
    let rereg = NodeReregistration {
        node_key: nkey(10),
        user_id: other.id,
        hostinfo: Some(json!({"Hostname": "again"})),
        expiry: Some(NOW + Duration::days(1)),
        auth_key_id: Some(rk.id),
        tags: Some(vec!["tag:x".into()]),
        ephemeral: true,
        approved: None,
    };
    let r = s.reregister_node(n.id, rereg.clone(), NOW).await.unwrap();
    assert_eq!(
        (r.id, r.ipv4, r.ipv6, r.machine_key),
        (n.id, n.ipv4, n.ipv6, n.machine_key)
    );
    assert_eq!(
        (r.node_key, r.user_id, r.hostname.as_str()),
        (nkey(10), other.id, "again")
    );
    assert_eq!(
        (r.auth_key_id, r.expiry),
        (Some(rk.id), Some(NOW + Duration::days(1)))
    );
    assert_eq!(r.tags, vec!["tag:x".to_owned()]);
    assert!(r.ephemeral && r.approved);
    assert!(s.get_preauth_key(rk.id).await.unwrap().used);

    let before = snapshot(s).await;
    assert!(
        s.reregister_node(n.id, rereg.clone(), NOW)
            .await
            .unwrap_err()
            .is_conflict(),
        "spent key"
    );
    let (fresh, _) = s
        .create_preauth_key(NewPreauthKey {
            user_id: u.id,
            ..Default::default()
        })
        .await
        .unwrap();
    let before = (before, snapshot(s).await);
    let taken_key = NodeReregistration {
        node_key: nkey(2),
        auth_key_id: Some(fresh.id),
        ..rereg.clone()
    };
    assert!(
        s.reregister_node(n.id, taken_key, NOW)
            .await
            .unwrap_err()
            .is_conflict(),
        "key of another node"
    );
    assert!(
        !s.get_preauth_key(fresh.id).await.unwrap().used,
        "rolled back"
    );
    let no_user = NodeReregistration {
        user_id: UserId(77_777),
        auth_key_id: None,
        ..rereg.clone()
    };
    assert!(s
        .reregister_node(n.id, no_user, NOW)
        .await
        .unwrap_err()
        .is_not_found());
    assert!(s
        .reregister_node(NodeId(77_777), rereg, NOW)
        .await
        .unwrap_err()
        .is_not_found());
    assert_eq!(snapshot(s).await, before.1);
    assert_eq!(
        before.0 .2, before.1 .2,
        "nodes unchanged by the spent-key attempt"
    );
}

async fn failing_operations_leave_the_database_unchanged(s: &dyn Store) {
    let u = user(s, "atomic").await;
    let (key, _) = s
        .create_preauth_key(NewPreauthKey {
            user_id: u.id,
            ..Default::default()
        })
        .await
        .unwrap();
    let existing = s
        .create_node(new_node(1, u.id, "existing"), NOW)
        .await
        .unwrap();
    let second = s
        .create_node(new_node(7, u.id, "second"), NOW)
        .await
        .unwrap();
    user(s, "other").await;
    let before = snapshot(s).await;

    let unknown_user = new_node(2, UserId(123_456), "ghost");
    assert!(s
        .create_node(unknown_user, NOW)
        .await
        .unwrap_err()
        .is_not_found());

    // The single-use key is consumed inside the transaction before the duplicate is
    // detected; the rollback must restore it.
    let mut dup_machine = new_node(3, u.id, "dup");
    dup_machine.machine_key = existing.machine_key;
    dup_machine.auth_key_id = Some(key.id);
    assert!(s
        .create_node(dup_machine, NOW)
        .await
        .unwrap_err()
        .is_conflict());
    let mut dup_node_key = new_node(4, u.id, "dup");
    dup_node_key.node_key = existing.node_key;
    dup_node_key.auth_key_id = Some(key.id);
    assert!(s
        .create_node(dup_node_key, NOW)
        .await
        .unwrap_err()
        .is_conflict());
    let mut unknown_key = new_node(5, u.id, "dup");
    unknown_key.auth_key_id = Some(PreauthKeyId(999_999));
    assert!(s
        .create_node(unknown_key, NOW)
        .await
        .unwrap_err()
        .is_not_found());

    assert!(s.delete_user(u.id).await.unwrap_err().is_conflict());
    assert!(s
        .rename_user(u.id, "other")
        .await
        .unwrap_err()
        .is_conflict());
    assert!(s
        .update_node_key(second.id, existing.node_key, None)
        .await
        .unwrap_err()
        .is_conflict());
    assert!(s
        .rename_node(second.id, &existing.given_name)
        .await
        .unwrap_err()
        .is_conflict());
    assert!(s
        .set_node_user(second.id, UserId(5_050))
        .await
        .unwrap_err()
        .is_not_found());
    let bad_session = s.complete_session("missing", u.id, existing.id).await;
    assert!(bad_session.unwrap_err().is_not_found());

    assert_eq!(snapshot(s).await, before);
    assert!(!s.get_preauth_key(key.id).await.unwrap().used);
    // The next successful creation takes the next address: nothing was leaked.
    let next = s.create_node(new_node(6, u.id, "next"), NOW).await.unwrap();
    assert_eq!(next.ipv4, Ipv4Addr::new(100, 64, 0, 3));
}

/// Property: however creations and deletions interleave, no two live nodes ever share
/// an IPv4, an IPv6 or a given name, and no reserved address is handed out.
async fn concurrent_node_creation_never_hands_out_an_address_twice(s: &Arc<dyn Store>) {
    let u = user(&**s, "many").await;
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next_key = 0u32;
    for round in 0..4 {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..12 {
            next_key += 1;
            let s = Arc::clone(s);
            // Few distinct hostnames, so given names collide too.
            let nn = new_node(
                next_key,
                u.id,
                ["web", "db", "cache"][(next_key % 3) as usize],
            );
            set.spawn(async move { s.create_node(nn, NOW).await });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap().unwrap();
        }
        let nodes = s.list_nodes().await.unwrap();
        check_unique(&nodes, round);

        // Delete a pseudo-random third, concurrently with a new batch of creations.
        let mut set = tokio::task::JoinSet::new();
        for n in &nodes {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            if rng % 3 == 1 {
                let s = Arc::clone(s);
                let id = n.id;
                set.spawn(async move { s.delete_node(id).await });
            }
        }
        for _ in 0..6 {
            next_key += 1;
            let s = Arc::clone(s);
            let nn = new_node(next_key, u.id, "web");
            set.spawn(async move { s.create_node(nn, NOW).await.map(|_| ()) });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap().unwrap();
        }
        check_unique(&s.list_nodes().await.unwrap(), round);
    }
}

fn check_unique(nodes: &[Node], round: u32) {
    let v4: BTreeSet<_> = nodes.iter().map(|n| n.ipv4).collect();
    let v6: BTreeSet<_> = nodes.iter().map(|n| n.ipv6).collect();
    let names: BTreeSet<_> = nodes.iter().map(|n| n.given_name.clone()).collect();
    assert_eq!(v4.len(), nodes.len(), "duplicate IPv4 in round {round}");
    assert_eq!(v6.len(), nodes.len(), "duplicate IPv6 in round {round}");
    assert_eq!(
        names.len(),
        nodes.len(),
        "duplicate given name in round {round}"
    );
    assert!(nodes
        .iter()
        .all(|n| !ipv4_reserved(n.ipv4) && !ipv6_reserved(n.ipv6)));
}

async fn registration_sessions_complete_once(s: &dyn Store) {
    let u = user(s, "sess").await;
    let node = s.create_node(new_node(1, u.id, "n"), NOW).await.unwrap();
    let mk = |id: &str, expires_at| NewRegistrationSession {
        auth_id: id.to_owned(),
        machine_key: mkey(50),
        node_key: nkey(50),
        old_node_key: NodePublic::default(),
        hostinfo: json!({"Hostname": "pending"}),
        ephemeral: true,
        requested_expiry: None,
        expires_at,
    };
    let a = s
        .create_session(mk("aaaa", NOW + Duration::minutes(15)), NOW)
        .await
        .unwrap();
    assert_eq!(a.auth_id, "aaaa");
    assert_eq!(a.created_at, NOW);
    assert_eq!(a.hostinfo, json!({"Hostname": "pending"}));
    assert!(a.ephemeral && a.completed_user_id.is_none());
    assert_eq!(s.get_session("aaaa").await.unwrap(), a);
    assert!(s
        .create_session(mk("aaaa", NOW), NOW)
        .await
        .unwrap_err()
        .is_conflict());
    s.create_session(mk("bbbb", NOW - Duration::seconds(1)), NOW)
        .await
        .unwrap();
    let id = names::random_auth_id();
    s.create_session(mk(&id, NOW + Duration::minutes(1)), NOW)
        .await
        .unwrap();

    let pending: Vec<_> = s
        .list_pending_sessions(NOW)
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.auth_id)
        .collect();
    assert_eq!(pending.len(), 2);
    assert!(pending.contains(&"aaaa".to_owned()) && pending.contains(&id));

    let done = s.complete_session("aaaa", u.id, node.id).await.unwrap();
    assert_eq!(
        (done.completed_user_id, done.completed_node_id),
        (Some(u.id), Some(node.id))
    );
    assert!(s
        .complete_session("aaaa", u.id, node.id)
        .await
        .unwrap_err()
        .is_conflict());
    assert!(s
        .complete_session("zzzz", u.id, node.id)
        .await
        .unwrap_err()
        .is_not_found());
    assert!(s
        .complete_session(&id, UserId(9_999), node.id)
        .await
        .unwrap_err()
        .is_not_found());
    assert!(s
        .complete_session(&id, u.id, NodeId(9_999))
        .await
        .unwrap_err()
        .is_not_found());
    assert_eq!(s.get_session(&id).await.unwrap().completed_user_id, None);
    assert_eq!(s.list_pending_sessions(NOW).await.unwrap().len(), 1);

    assert_eq!(
        s.delete_expired_sessions(NOW).await.unwrap(),
        1,
        "only bbbb has expired"
    );
    assert!(s.get_session("bbbb").await.unwrap_err().is_not_found());
    s.delete_session(&id).await.unwrap();
    assert!(s.delete_session(&id).await.unwrap_err().is_not_found());
}

async fn policy_history_keeps_every_version(s: &dyn Store) {
    assert_eq!(s.current_policy().await.unwrap(), None);
    let p1 = s.put_policy("{\"acls\": []}", "alice").await.unwrap();
    let p2 = s.put_policy("// v2\n{\"acls\": [],}", "bob").await.unwrap();
    assert!(p2.id > p1.id);
    assert_eq!(s.current_policy().await.unwrap(), Some(p2.clone()));
    assert_eq!(s.policy_history(10).await.unwrap(), vec![p2.clone(), p1]);
    assert_eq!(s.policy_history(1).await.unwrap(), vec![p2]);
}

async fn audit_log_lists_newest_first_with_paging(s: &dyn Store) {
    let mut ids = Vec::new();
    for i in 0..5 {
        let e = s
            .append_audit(NewAuditEntry {
                actor: "alice".into(),
                action: "node.delete".into(),
                target: format!("node:{i}"),
                detail: json!({"i": i, "why": "test"}),
            })
            .await
            .unwrap();
        ids.push(e.id);
    }
    let all = s.list_audit(100, None).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.id).collect::<Vec<_>>(),
        ids.iter().rev().copied().collect::<Vec<_>>()
    );
    assert_eq!(all[0].detail, json!({"i": 4, "why": "test"}));
    assert_eq!(all[0].target, "node:4");
    let page = s.list_audit(2, Some(ids[3])).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![ids[2], ids[1]]
    );
}

async fn kv_stores_binary_values(s: &dyn Store) {
    assert_eq!(s.kv_get("noise_private").await.unwrap(), None);
    let v = vec![0u8, 1, 2, 255, 0, 7];
    s.kv_put("noise_private", &v).await.unwrap();
    assert_eq!(s.kv_get("noise_private").await.unwrap(), Some(v));
    s.kv_put("noise_private", b"replaced").await.unwrap();
    assert_eq!(
        s.kv_get("noise_private").await.unwrap().as_deref(),
        Some(&b"replaced"[..])
    );
    s.kv_delete("noise_private").await.unwrap();
    s.kv_delete("noise_private").await.unwrap();
    assert_eq!(s.kv_get("noise_private").await.unwrap(), None);
}

async fn tka_state_aums_and_signatures_commit_atomically(s: &dyn Store) {
    assert_eq!(s.tka_state().await.unwrap(), None);
    assert!(s.tka_aums().await.unwrap().is_empty());
    let u = user(s, "tka").await;
    let a = s.create_node(new_node(1, u.id, "a"), NOW).await.unwrap();
    let b = s.create_node(new_node(2, u.id, "b"), NOW).await.unwrap();
    assert_eq!(a.key_signature, None);
    let genesis = TkaAumRecord {
        hash: vec![1; 32],
        parent: None,
        data: vec![0xa4, 0, 0xff],
    };
    let state = TkaState {
        mode: TkaMode::Enabled,
        genesis_hash: vec![1; 32],
        head: vec![1; 32],
        disablement_secret: None,
        support_disablement: Some(vec![9; 32]),
        updated_at: NOW,
    };
    s.tka_commit(TkaCommit {
        state: state.clone(),
        reset: true,
        aums: vec![genesis.clone()],
        signatures: vec![(a.id, Some(vec![7, 7])), (b.id, Some(vec![8]))],
    })
    .await
    .unwrap();
    assert_eq!(s.tka_state().await.unwrap(), Some(state.clone()));
    assert_eq!(s.tka_aums().await.unwrap(), vec![genesis.clone()]);
    assert_eq!(
        s.get_node(a.id).await.unwrap().key_signature,
        Some(vec![7, 7])
    );
    assert_eq!(s.get_node(b.id).await.unwrap().key_signature, Some(vec![8]));

    // A commit naming a missing node changes nothing (not even the AUMs before it).
    let child = TkaAumRecord {
        hash: vec![2; 32],
        parent: Some(vec![1; 32]),
        data: vec![1, 2, 3],
    };
    let moved = TkaState {
        head: vec![2; 32],
        ..state.clone()
    };
    let err = s
        .tka_commit(TkaCommit {
            state: moved.clone(),
            reset: false,
            aums: vec![child.clone()],
            signatures: vec![(NodeId(999_999), Some(vec![1]))],
        })
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert_eq!(s.tka_state().await.unwrap(), Some(state.clone()));
    assert_eq!(s.tka_aums().await.unwrap().len(), 1);

    // Appending keeps commit order and ignores AUMs already stored.
    s.tka_commit(TkaCommit {
        state: moved.clone(),
        reset: false,
        aums: vec![genesis.clone(), child.clone()],
        signatures: vec![],
    })
    .await
    .unwrap();
    assert_eq!(
        s.tka_aums().await.unwrap(),
        vec![genesis.clone(), child.clone()]
    );
    assert_eq!(s.tka_state().await.unwrap().unwrap().head, vec![2; 32]);

    // Per-node signature updates, and they survive a node listing.
    let a2 = s.set_node_key_signature(a.id, None).await.unwrap();
    assert_eq!(a2.key_signature, None);
    let a3 = s
        .set_node_key_signature(a.id, Some(vec![5; 40]))
        .await
        .unwrap();
    assert_eq!(a3.key_signature, Some(vec![5; 40]));
    let listed = s.list_nodes().await.unwrap();
    assert_eq!(
        listed.iter().find(|n| n.id == a.id).unwrap().key_signature,
        Some(vec![5; 40])
    );
    assert!(s
        .set_node_key_signature(NodeId(999_999), None)
        .await
        .unwrap_err()
        .is_not_found());

    // Disabling keeps the log and records the secret; a reset wipes AUMs and signatures.
    let disabled = TkaState {
        mode: TkaMode::Disabled,
        disablement_secret: Some(vec![0xa5; 32]),
        ..moved.clone()
    };
    s.tka_commit(TkaCommit {
        state: disabled.clone(),
        reset: false,
        aums: vec![],
        signatures: vec![],
    })
    .await
    .unwrap();
    assert_eq!(s.tka_state().await.unwrap(), Some(disabled));
    assert_eq!(s.tka_aums().await.unwrap().len(), 2);
    let fresh = TkaAumRecord {
        hash: vec![3; 32],
        parent: None,
        data: vec![3],
    };
    s.tka_commit(TkaCommit {
        state: TkaState {
            genesis_hash: vec![3; 32],
            head: vec![3; 32],
            ..state
        },
        reset: true,
        aums: vec![fresh.clone()],
        signatures: vec![],
    })
    .await
    .unwrap();
    assert_eq!(s.tka_aums().await.unwrap(), vec![fresh]);
    assert_eq!(s.get_node(a.id).await.unwrap().key_signature, None);
    assert_eq!(s.get_node(b.id).await.unwrap().key_signature, None);
}

// ------------------------------------------------------------------------------------------
// backends
// ------------------------------------------------------------------------------------------

struct SqliteDb {
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

impl SqliteDb {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&sqlite_url_for_dir(dir.path())).await.unwrap();
        assert_eq!(store.backend(), Backend::Sqlite);
        Self { store, _dir: dir }
    }
}

struct PgDb {
    store: Arc<dyn Store>,
    admin_url: String,
    name: String,
}

impl PgDb {
    /// A fresh database on the server named by `WEFT_TEST_POSTGRES_URL`, or `None` (SKIP).
    async fn new(test: &str) -> Option<Self> {
        let Ok(admin_url) = std::env::var("WEFT_TEST_POSTGRES_URL") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "WEFT_TEST_POSTGRES_URL is unset under CI: run scripts/start-postgres.sh and export it"
            );
            eprintln!(
                "SKIP {test}: WEFT_TEST_POSTGRES_URL is unset (see scripts/start-postgres.sh)"
            );
            return None;
        };
        let name = format!("weft_test_{}", names::random_auth_id());
        admin(&admin_url, &format!("CREATE DATABASE {name}")).await;
        let store = open(&with_database(&admin_url, &name)).await.unwrap();
        assert_eq!(store.backend(), Backend::Postgres);
        Some(Self {
            store,
            admin_url,
            name,
        })
    }

    async fn drop_database(self) {
        self.store.close().await;
        admin(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        )
        .await;
    }
}

async fn admin(url: &str, sql: &str) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

/// `url` with its database path replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{host_part}/{db}{query}")
}

/// Lets one macro call suite functions taking `&dyn Store` or `&Arc<dyn Store>`.
trait StoreArg<'a> {
    fn from_arc(a: &'a Arc<dyn Store>) -> Self;
}
impl<'a> StoreArg<'a> for &'a dyn Store {
    fn from_arc(a: &'a Arc<dyn Store>) -> Self {
        &**a
    }
}
impl<'a> StoreArg<'a> for &'a Arc<dyn Store> {
    fn from_arc(a: &'a Arc<dyn Store>) -> Self {
        a
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::SqliteDb::new().await;
                    super::$name(super::StoreArg::from_arc(&db.store)).await;
                    db.store.close().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = super::PgDb::new(stringify!($name)).await else { return };
                    super::$name(super::StoreArg::from_arc(&db.store)).await;
                    db.drop_database().await;
                }
            )*
        }
    };
}

conformance!(
    users_round_trip_and_enforce_unique_names,
    preauth_keys_verify_by_hash_and_are_consumed_once,
    nodes_round_trip_and_keep_identity_across_key_rotation,
    create_node_consumes_its_pre_auth_key_atomically,
    failing_operations_leave_the_database_unchanged,
    concurrent_node_creation_never_hands_out_an_address_twice,
    registration_sessions_complete_once,
    policy_history_keeps_every_version,
    audit_log_lists_newest_first_with_paging,
    kv_stores_binary_values,
    tka_state_aums_and_signatures_commit_atomically,
);

#[test]
fn with_database_replaces_only_the_path() {
    assert_eq!(
        with_database("postgres://u:p@127.0.0.1:5432/weft", "x"),
        "postgres://u:p@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database("postgres://u@h/weft?sslmode=disable", "x"),
        "postgres://u@h/x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
}

#[tokio::test]
async fn open_rejects_unknown_schemes() {
    let err = open("mysql://root@127.0.0.1/x").await.err().unwrap();
    assert!(matches!(err, StoreError::UnsupportedUrl(_)), "{err:?}");
}
