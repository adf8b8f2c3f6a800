//! The policy's own `tests` section: failing tests refuse the policy and are named.

use weft_policy::{check, CheckError, Policy, Snapshot, SnapshotNode};

fn tailnet() -> Snapshot {
    let node = |id, user: Option<&str>, tags: &[&str], v4: &str, v6: &str| SnapshotNode {
        id,
        user: user.map(String::from),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        addresses: vec![v4.parse().unwrap(), v6.parse().unwrap()],
        ..SnapshotNode::default()
    };
    Snapshot {
        nodes: vec![
            node(
                1,
                Some("alice@example.com"),
                &[],
                "100.64.0.1",
                "fd7a:115c:a1e0::1",
            ),
            node(
                2,
                Some("bob@example.com"),
                &[],
                "100.64.0.2",
                "fd7a:115c:a1e0::2",
            ),
            node(3, None, &["tag:server"], "100.64.0.3", "fd7a:115c:a1e0::3"),
        ],
    }
}

const BASE: &str = r#"{
  "groups": {"group:dev": ["alice@example.com"]},
  "tagOwners": {"tag:server": ["group:dev"], "tag:client": ["group:dev"]},
  "acls": [
    {"action": "accept", "src": ["group:dev"], "dst": ["tag:server:22"]},
    {"action": "accept", "src": ["tag:client"], "dst": ["tag:server:80"]},
  ],
  "tests": [TESTS],
}"#;

fn policy_with(tests: &str) -> String {
    BASE.replace("TESTS", tests)
}

#[test]
fn passing_tests_accept_the_policy() {
    let text = policy_with(
        r#"{"src": "alice@example.com", "accept": ["tag:server:22"], "deny": ["tag:server:80", "bob@example.com:22"]},
           {"src": "tag:client", "accept": ["tag:server:80"], "deny": ["tag:server:22"]},
           {"src": "bob@example.com", "deny": ["tag:server:22", "100.64.0.3:22"]},"#,
    );
    assert!(check(&text, &tailnet()).is_ok());
}

#[test]
fn a_failing_accept_is_refused_naming_the_test_and_destination() {
    let text = policy_with(
        r#"{"src": "alice@example.com", "accept": ["tag:server:22"]},
           {"src": "bob@example.com", "accept": ["tag:server:22"]},"#,
    );
    let Err(CheckError::TestsFailed(f)) = check(&text, &tailnet()) else {
        panic!("expected test failure")
    };
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].index, 1);
    assert_eq!(f[0].src, "bob@example.com");
    assert_eq!(f[0].dst, "tag:server:22");
    assert!(f[0].expected_accept);
    let msg = CheckError::TestsFailed(f).to_string();
    assert!(
        msg.contains("test 1") && msg.contains("bob@example.com") && msg.contains("tag:server:22"),
        "{msg}"
    );
}

#[test]
fn a_failing_deny_is_refused() {
    let text = policy_with(r#"{"src": "group:dev", "deny": ["tag:server:22"]}"#);
    let Err(CheckError::TestsFailed(f)) = check(&text, &tailnet()) else {
        panic!("expected test failure")
    };
    assert_eq!((f[0].index, f[0].expected_accept), (0, false));
}

#[test]
fn protocol_of_a_test_matters() {
    let text = policy_with(
        r#"{"src": "alice@example.com", "proto": "sctp", "accept": ["tag:server:22"]}"#,
    );
    assert!(matches!(
        check(&text, &tailnet()),
        Err(CheckError::TestsFailed(_))
    ));
}

#[test]
fn tests_work_for_users_and_tags_without_nodes() {
    let text = policy_with(
        r#"{"src": "carol@example.com", "deny": ["tag:server:22"]},
           {"src": "tag:client", "accept": ["tag:server:80"]},"#,
    );
    assert!(check(&text, &Snapshot::default()).is_ok());
    let text = policy_with(r#"{"src": "carol@example.com", "accept": ["tag:server:22"]}"#);
    assert!(check(&text, &Snapshot::default()).is_err());
}

#[test]
fn run_tests_reports_nothing_for_a_policy_without_tests() {
    let p = Policy::parse(r#"{"acls": []}"#).unwrap();
    assert!(p.run_tests(&tailnet()).is_empty());
}
