//! Network namespaces that the test creates and deletes itself.

use std::ffi::OsStr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

use crate::cmd::{run, run_args, run_with_input};
use crate::error::Result;

/// Prefix of every namespace the harness creates: `we2e-<pid>-<n>-<tag>`.
pub(crate) const PREFIX: &str = "we2e-";

static COUNTER: AtomicUsize = AtomicUsize::new(0);
static STALE: Once = Once::new();

/// A network namespace owned by this test process.
///
/// Created with only `lo` (up). On drop, any process still inside it is killed and
/// the namespace is deleted, also while a test panics.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `we2e-<pid>-<n>-<tag>` (tag: a few letters saying what it is).
    pub fn new(tag: &str) -> Result<Netns> {
        STALE.call_once(remove_stale_namespaces);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{tag}", std::process::id());
        run_args("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside this namespace (`ip netns exec NAME program`).
    /// `ip netns exec` execs the program, so the child's PID is the program's.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `args[0] args[1..]` inside the namespace to completion; returns stdout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let (program, rest) = args.split_first().unwrap_or((&"true", &[]));
        run(self.command(program).args(rest))
    }

    /// Runs `ip -n NAME args…`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        ip_n(&self.name, args)
    }

    /// Loads an nftables script into this namespace (`nft -f -`).
    pub fn nft(&self, script: &str) -> Result<()> {
        run_with_input(
            self.command("nft").args(["-f", "-"]),
            Some(script.as_bytes()),
        )?;
        Ok(())
    }

    /// Sets a sysctl inside the namespace (per-namespace keys such as `net.ipv4.ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run(&["sysctl", "-q", "-w", &format!("{key}={value}")])?;
        Ok(())
    }

    /// PIDs of the processes inside this namespace.
    pub fn pids(&self) -> Vec<u32> {
        pids_in(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete_namespace(&self.name);
    }
}

/// Runs `ip -n NAME args…`.
pub(crate) fn ip_n(name: &str, args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(["-n", name]).args(args))
}

fn pids_in(name: &str) -> Vec<u32> {
    run_args("ip", &["netns", "pids", name])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn delete_namespace(name: &str) {
    // Only processes this harness started can be inside a namespace it created.
    for pid in pids_in(name) {
        let _ = run_args("kill", &["-KILL", &pid.to_string()]);
    }
    if let Err(e) = run_args("ip", &["netns", "del", name]) {
        eprintln!("weft-e2e: could not delete namespace {name}: {e}");
    }
}

/// Deletes namespaces left behind by earlier harness runs whose process is gone
/// (a test binary killed with SIGKILL cannot run its destructors).
fn remove_stale_namespaces() {
    let Ok(list) = run_args("ip", &["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            delete_namespace(name);
        }
    }
}
