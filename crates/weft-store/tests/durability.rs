//! SQLite durability: rows committed by a process that is then SIGKILLed are there
//! when the database is reopened.
//!
//! The parent test re-runs this test binary with `WEFT_STORE_CHILD_DIR` set, so that
//! only `child_writes_rows_then_waits_to_be_killed` does work in the child.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use weft_store::*;

const CHILD_ENV: &str = "WEFT_STORE_CHILD_DIR";
const ROWS: u32 = 20;

#[tokio::test]
async fn committed_rows_survive_sigkill_of_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_writes_rows_then_waits_to_be_killed",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();

    // Read the child's stdout on a thread; wait (bounded) for its "committed" line.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("WEFT-STORE-CHILD committed") => break,
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                panic!("child never reported its commit: {e}");
            }
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "child was killed, not finished: {status:?}"
    );

    let store = open(&sqlite_url_for_dir(dir.path())).await.unwrap();
    let users = store.list_users().await.unwrap();
    assert_eq!(users.len(), ROWS as usize);
    assert_eq!(
        store.kv_get("last").await.unwrap().as_deref(),
        Some(&b"written"[..])
    );
    let nodes = store.list_nodes().await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].hostname, "survivor");
    store.close().await;
}

/// Not a test on its own: the child half of the test above.
#[tokio::test]
#[ignore = "child process of committed_rows_survive_sigkill_of_the_writer"]
async fn child_writes_rows_then_waits_to_be_killed() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let store = open(&sqlite_url_for_dir(std::path::Path::new(&dir)))
        .await
        .unwrap();
    let mut first = None;
    for i in 0..ROWS {
        let u = store
            .create_user(NewUser {
                name: format!("u{i}"),
                ..Default::default()
            })
            .await
            .unwrap();
        first.get_or_insert(u.id);
    }
    let owner = first.unwrap();
    let mk = weft_key::MachinePublic::from_bytes([1; 32]);
    let nk = weft_key::NodePublic::from_bytes([2; 32]);
    store
        .create_node(
            NewNode::new(mk, nk, owner, "survivor"),
            time::OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
    store.kv_put("last", b"written").await.unwrap();
    println!("WEFT-STORE-CHILD committed");
    // Keep the pool (and its connections) open until the parent kills us.
    std::future::pending::<()>().await;
}

#[tokio::test]
async fn sqlite_runs_in_wal_mode_with_full_sync_and_reopens_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url_for_dir(&dir.path().join("nested/state"));
    let store = SqliteStore::open(&url).await.unwrap();
    let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(mode.to_lowercase(), "wal");
    let (sync,): (i64,) = sqlx::query_as("PRAGMA synchronous")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(sync, 2, "synchronous=FULL");
    let (fk,): (i64,) = sqlx::query_as("PRAGMA foreign_keys")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(fk, 1);
    store.put_policy("{}", "test").await.unwrap();
    store.close().await;
    assert!(dir.path().join("nested/state/weft.db").exists());

    // Reopening runs the (already applied) migrations again without error.
    let again = SqliteStore::open(&url).await.unwrap();
    assert_eq!(again.current_policy().await.unwrap().unwrap().text, "{}");
    again.close().await;
}
