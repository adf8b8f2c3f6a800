//! `weft policy set|get|check|history` against a running `weft server` on loopback: exit
//! codes and messages, and the stored policy surviving a server restart.

mod common;
use common::*;

const GOOD: &str = r#"{
  // alice reaches her own nodes on port 80
  "acls": [
    {"action": "accept", "src": ["alice@example.com"], "dst": ["alice@example.com:80"],},
  ],
  "tests": [
    {"src": "alice@example.com", "accept": ["alice@example.com:80"], "deny": ["alice@example.com:22"]},
  ],
}
"#;

#[test]
fn policy_set_get_check_history_exit_codes_and_messages() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = d.join("good.hujson");
    std::fs::write(&good, GOOD).unwrap();
    let bad_syntax = d.join("bad.hujson");
    std::fs::write(
        &bad_syntax,
        "{\n  \"acls\": [\n    {\"action\": \"accept\",, }\n  ]\n}\n",
    )
    .unwrap();
    let failing = d.join("failing.hujson");
    std::fs::write(
        &failing,
        GOOD.replace(
            r#""deny": ["alice@example.com:22"]"#,
            r#""deny": ["alice@example.com:80"]"#,
        ),
    )
    .unwrap();
    let good_s = good.to_str().unwrap();

    // Offline check needs no server.
    let (ok, out, err) = weft(d, &["policy", "check", "--local", good_s]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("policy ok (1 tests passed)"), "{out}");

    let mut server = start(d);
    let (ok, out, err) = weft(d, &["policy", "get"]);
    assert!(!ok, "no policy yet: {out}");
    assert!(err.contains("allows all traffic"), "{err}");

    let (ok, out, err) = weft(d, &["policy", "check", good_s]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("policy ok"), "{out}");
    let (ok, _, _) = weft(d, &["policy", "get"]);
    assert!(!ok, "check applies nothing");

    let (ok, out, err) = weft(d, &["policy", "set", bad_syntax.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(err.contains("line 3, column"), "{err}");

    let (ok, out, err) = weft(d, &["policy", "set", good_s]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("policy version") && out.contains("by admin"),
        "{out}"
    );

    let (ok, out, err) = weft(d, &["policy", "set", failing.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("policy tests failed") && err.contains("test 0"),
        "{err}"
    );
    let (ok, out, err) = weft(d, &["policy", "check", failing.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(err.contains("test 0"), "{err}");

    let (ok, out, _) = weft(d, &["policy", "get"]);
    assert!(ok);
    assert_eq!(out, GOOD, "the previous policy stays in force");

    let (ok, out, _) = weft(d, &["policy", "history"]);
    assert!(ok);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("admin"), "{out}");

    // The stored policy is loaded again at start.
    drop(server);
    let _ = std::fs::remove_file(d.join("admin.sock"));
    server = start(d);
    let (ok, out, err) = weft(d, &["policy", "get"]);
    assert!(ok, "{err}");
    assert_eq!(out, GOOD);
    drop(server);
}
