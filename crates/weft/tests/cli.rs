//! The `weft` binary end to end on loopback: server start, admin commands over the unix
//! socket, and a node registering over ts2021 with a key the CLI printed.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn admin_commands_drive_a_running_server_and_the_printed_key_registers_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());

    let (ok, _, err) = weft(dir.path(), &["users", "create", "alice"]);
    assert!(ok, "{err}");
    let (ok, _, _) = weft(dir.path(), &["users", "create", "alice"]);
    assert!(!ok, "duplicate user is an error");

    let (ok, key, err) = weft(
        dir.path(),
        &[
            "authkeys",
            "create",
            "--user",
            "alice",
            "--reusable",
            "--expiration",
            "1h",
            "--tags",
            "tag:web",
        ],
    );
    assert!(ok, "{err}");
    let key = key.trim().to_string();
    assert!(
        key.starts_with("tskey-auth-") && !key.contains(char::is_whitespace),
        "stdout is only the key: {key:?}"
    );

    let (ok, _, err) = weft(dir.path(), &["authkeys", "create", "--user", "nobody"]);
    assert!(!ok);
    assert!(err.contains("not found"), "{err}");

    // Register a node with that key over ts2021.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let machine = weft_key::MachinePrivate::generate();
        let server_key = weft_ts2021::fetch_server_key(&server.url, 130)
            .await
            .unwrap();
        let client = weft_ts2021::dial(&server.url, &machine, server_key, 130)
            .await
            .unwrap();
        let req = weft_tailcfg::RegisterRequest {
            version: 130,
            node_key: weft_key::NodePrivate::generate().public(),
            auth: Some(weft_tailcfg::RegisterAuth {
                auth_key: key.clone(),
                ..Default::default()
            }),
            hostinfo: Some(weft_tailcfg::Hostinfo::new().with_hostname("web1")),
            ..Default::default()
        };
        let resp = client.post_json("/machine/register", &req).await.unwrap();
        let body = weft_ts2021::read_body(resp, 1 << 20).await.unwrap();
        let r: weft_tailcfg::RegisterResponse = serde_json::from_slice(&body).unwrap();
        assert_eq!(r.error, "");
        assert!(r.machine_authorized);
    });

    let (ok, json, err) = weft(dir.path(), &["nodes", "list", "--json"]);
    assert!(ok, "{err}");
    let nodes: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(nodes[0]["hostname"], "web1");
    assert_eq!(nodes[0]["tags"], serde_json::json!(["tag:web"]));
    assert!(nodes[0]["ipv4"].as_str().unwrap().starts_with("100."));

    let (ok, out, err) = weft(dir.path(), &["nodes", "rename", "1", "www"]);
    assert!(ok, "{err}");
    assert!(out.contains("www"));
    let (ok, _, err) = weft(dir.path(), &["nodes", "expire", "nope"]);
    assert!(!ok);
    assert!(err.contains("invalid node id"), "{err}");
    let (ok, _, _) = weft(dir.path(), &["nodes", "delete", "1"]);
    assert!(ok);
    let (ok, json, _) = weft(dir.path(), &["nodes", "list", "--json"]);
    assert!(ok);
    assert_eq!(json.trim(), "[]");
}

#[test]
fn admin_commands_without_a_server_fail_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = weft(dir.path(), &["nodes", "list"]);
    assert!(!ok);
    assert!(err.contains("is `weft server --data-dir"), "{err}");
}

#[test]
fn server_with_a_certificate_serves_key_and_ts2021_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("c.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.path().join("k.pem"), ck.key_pair.serialize_pem()).unwrap();
    let out = dir.path().join("server.out");
    let mut server = Server {
        child: Command::new(WEFT)
            .args([
                "server",
                "--listen",
                "127.0.0.1:0",
                "--tls-listen",
                "127.0.0.1:0",
                "--no-derp",
            ])
            .arg("--tls-cert")
            .arg(dir.path().join("c.pem"))
            .arg("--tls-key")
            .arg(dir.path().join("k.pem"))
            .arg("--data-dir")
            .arg(dir.path())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        url: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.url.is_empty() {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if text.contains("http://") {
            if let Some(u) = text.split_whitespace().find(|w| w.starts_with("https://")) {
                server.url = u.to_string();
            }
        }
        assert!(Instant::now() < deadline, "server did not start: {text}");
        std::thread::yield_now();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let key = weft_ts2021::fetch_server_key(&server.url, 130)
            .await
            .unwrap();
        let machine = weft_key::MachinePrivate::generate();
        let client = weft_ts2021::dial(&server.url, &machine, key, 130)
            .await
            .unwrap();
        let resp = client
            .post_json("/machine/set-dns", &serde_json::json!({}))
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            404,
            "unknown node key over HTTPS+Noise is refused, not a transport error"
        );
    });
}
