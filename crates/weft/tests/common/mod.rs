//! Shared by the `weft` binary tests: start `weft server` on loopback and run CLI verbs.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) const WEFT: &str = env!("CARGO_BIN_EXE_weft");

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start(dir: &Path) -> Server {
    let out = dir.join("server.out");
    let mut server = Server {
        child: Command::new(WEFT)
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        url: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if let Some(url) = text.split_whitespace().find(|w| w.starts_with("http://")) {
            if dir.join("admin.sock").exists() {
                server.url = url.to_string();
                return server;
            }
        }
        assert!(Instant::now() < deadline, "server did not start: {text}");
        std::thread::yield_now();
    }
}

pub(crate) fn weft(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(WEFT)
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
