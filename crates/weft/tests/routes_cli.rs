//! `weft nodes routes` and `weft nodes approve-routes` against a running `weft server`.

mod common;
use common::*;

/// Registers a node advertising `routes` with pre-auth `key` over ts2021.
fn register_router(url: &str, key: &str, routes: &[&str]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let machine = weft_key::MachinePrivate::generate();
        let server_key = weft_ts2021::fetch_server_key(url, 130).await.unwrap();
        let client = weft_ts2021::dial(url, &machine, server_key, 130)
            .await
            .unwrap();
        let mut hostinfo = weft_tailcfg::Hostinfo::new().with_hostname("router");
        hostinfo.set("RoutableIPs", serde_json::json!(routes));
        let req = weft_tailcfg::RegisterRequest {
            version: 130,
            node_key: weft_key::NodePrivate::generate().public(),
            auth: Some(weft_tailcfg::RegisterAuth {
                auth_key: key.to_string(),
                ..Default::default()
            }),
            hostinfo: Some(hostinfo),
            ..Default::default()
        };
        let resp = client.post_json("/machine/register", &req).await.unwrap();
        let body = weft_ts2021::read_body(resp, 1 << 20).await.unwrap();
        let r: weft_tailcfg::RegisterResponse = serde_json::from_slice(&body).unwrap();
        assert_eq!(r.error, "");
    });
}

fn routes_json(dir: &std::path::Path) -> serde_json::Value {
    let (ok, json, err) = weft(dir, &["nodes", "routes", "--json"]);
    assert!(ok, "{err}");
    serde_json::from_str(&json).unwrap()
}

#[test]
fn approve_routes_sets_and_clears_what_nodes_routes_shows() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let (ok, _, err) = weft(dir.path(), &["users", "create", "alice"]);
    assert!(ok, "{err}");
    let (ok, key, err) = weft(dir.path(), &["authkeys", "create", "--user", "alice"]);
    assert!(ok, "{err}");
    register_router(
        &server.url,
        key.trim(),
        &["10.77.0.0/24", "0.0.0.0/0", "::/0"],
    );

    let v = routes_json(dir.path());
    assert_eq!(v[0]["hostname"], "router");
    assert_eq!(
        v[0]["advertised_routes"],
        serde_json::json!(["10.77.0.0/24", "0.0.0.0/0", "::/0"])
    );
    assert_eq!(v[0]["approved_routes"], serde_json::json!([]));

    // The spelling the end-to-end tests use.
    let (ok, out, err) = weft(
        dir.path(),
        &[
            "nodes",
            "approve-routes",
            "--identifier",
            "1",
            "--routes",
            "10.77.0.0/24",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("10.77.0.0/24"), "{out}");
    let v = routes_json(dir.path());
    assert_eq!(v[0]["approved_routes"], serde_json::json!(["10.77.0.0/24"]));
    assert_eq!(v[0]["serving_routes"], serde_json::json!(["10.77.0.0/24"]));

    // Short flags, a list, and the exit pair from one half.
    let (ok, _, err) = weft(
        dir.path(),
        &[
            "nodes",
            "approve-routes",
            "-i",
            "1",
            "-r",
            "10.77.0.0/24,::/0",
        ],
    );
    assert!(ok, "{err}");
    let (ok, table, err) = weft(dir.path(), &["nodes", "routes"]);
    assert!(ok, "{err}");
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "HOSTNAME", "ADVERTISED", "APPROVED", "SERVING"]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[0], "1");
    assert_eq!(row[1], "router");
    assert_eq!(row[3], "0.0.0.0/0,10.77.0.0/24,::/0");
    assert_eq!(row[4], "0.0.0.0/0,10.77.0.0/24,::/0");

    let (ok, _, err) = weft(
        dir.path(),
        &[
            "nodes",
            "approve-routes",
            "--identifier",
            "1",
            "--routes",
            "10.77.0.1/24",
        ],
    );
    assert!(!ok);
    assert!(err.contains("did you mean 10.77.0.0/24"), "{err}");
    let (ok, _, err) = weft(
        dir.path(),
        &[
            "nodes",
            "approve-routes",
            "--identifier",
            "7",
            "--routes",
            "10.77.0.0/24",
        ],
    );
    assert!(!ok);
    assert!(err.contains("not found"), "{err}");

    let (ok, _, err) = weft(
        dir.path(),
        &[
            "nodes",
            "approve-routes",
            "--identifier",
            "1",
            "--routes",
            "",
        ],
    );
    assert!(ok, "{err}");
    let v = routes_json(dir.path());
    assert_eq!(v[0]["approved_routes"], serde_json::json!([]));
    assert_eq!(v[0]["serving_routes"], serde_json::json!([]));
    let (ok, table, _) = weft(dir.path(), &["nodes", "list-routes", "--identifier", "1"]);
    assert!(ok);
    assert_eq!(table.lines().count(), 2, "{table}");
}
