//! Long-running processes inside namespaces, with their output in log files.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::env::{find_in_path, workspace_target_dir};
use crate::error::{io, Error, Result};
use crate::netns::Netns;
use crate::poll::wait_for;

/// The PATH given to every spawned process (the environment is otherwise cleared,
/// so no proxy or other ambient setting of the host leaks into a test peer).
pub(crate) const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One end-to-end test's working area: a directory for data, state and logs under
/// `target/e2e/<test>/` (kept after the run, wiped when the test runs again), and the
/// list of logs to print when the test fails.
pub struct Harness {
    name: String,
    dir: PathBuf,
    logs: Mutex<Vec<(String, PathBuf)>>,
}

impl Harness {
    /// Checks the environment (root, tools, binaries) and prepares `target/e2e/<name>/`.
    pub fn new(name: &str) -> Result<Harness> {
        crate::env::check_environment()?;
        let dir = std::env::var_os("WEFT_E2E_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_target_dir().join("e2e"))
            .join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(format!("clearing {}", dir.display())))?;
        }
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        eprintln!("weft-e2e: {name}: logs and state in {}", dir.display());
        Ok(Harness {
            name: name.to_owned(),
            dir,
            logs: Mutex::new(Vec::new()),
        })
    }

    /// The test's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh subdirectory of the test's directory.
    pub fn subdir(&self, name: &str) -> Result<PathBuf> {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d).map_err(io(format!("creating {}", d.display())))?;
        Ok(d)
    }

    /// Starts `program args…` inside `ns` with a cleared environment plus `PATH` and
    /// `env`, its stdout and stderr appended to `<dir>/<name>.log`.
    ///
    /// The process gets SIGKILL if the test thread that started it dies
    /// (`setpriv --pdeathsig`, when available), and is stopped when the returned
    /// [`Proc`] is dropped.
    pub fn spawn(
        &self,
        ns: &Netns,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> Result<Proc> {
        let log = self.dir.join(format!("{name}.log"));
        let out = File::create(&log).map_err(io(format!("creating {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io(format!("duplicating {}", log.display())))?;
        let mut cmd = match find_in_path("setpriv") {
            Some(setpriv) => {
                let mut c = ns.command(setpriv);
                c.args(["--pdeathsig", "KILL", "--"]).arg(program);
                c
            }
            None => ns.command(program),
        };
        cmd.args(args)
            .env_clear()
            .env("PATH", PATH)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd
            .spawn()
            .map_err(io(format!("starting {name} ({})", program.display())))?;
        if let Ok(mut logs) = self.logs.lock() {
            logs.push((name.to_owned(), log.clone()));
        }
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// Passes `result` through; if it is an error, first prints the tail of every log.
    pub fn finish(&self, result: Result<()>) -> Result<()> {
        if let Err(e) = &result {
            eprintln!("weft-e2e: {} failed: {e}", self.name);
            self.dump_logs();
        }
        result
    }

    fn dump_logs(&self) {
        let Ok(logs) = self.logs.lock() else { return };
        for (name, path) in logs.iter() {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(80);
            eprintln!(
                "----- {name} ({}), last {} of {} lines -----",
                path.display(),
                lines.len() - from,
                lines.len()
            );
            for line in &lines[from..] {
                eprintln!("{line}");
            }
        }
        eprintln!("----- full logs in {} -----", self.dir.display());
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
    }
}

/// A process started by [`Harness::spawn`]; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// The process's name in the test (also its log file's name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits until a line of its log satisfies `pred`, and returns that line.
    /// Fails at once if the process exits first.
    pub fn wait_log_line(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let what = format!("{}: {what}", self.name);
        let mut exited = None;
        let got = wait_for(&what, timeout, || {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| pred(l)) {
                return Ok(line.to_owned());
            }
            if let Some(status) = self.exited() {
                exited = Some(status);
                // Stop polling: nothing more will be logged.
                return Ok(String::new());
            }
            Err(last_line(&log))
        })?;
        match exited {
            Some(status) if got.is_empty() => Err(Error::Check(format!(
                "{what}: process exited ({status}) first; last log line: {}",
                last_line(&self.log())
            ))),
            _ => Ok(got),
        }
    }

    /// Waits until its log contains `needle`.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_log_line(&format!("log line containing {needle:?}"), timeout, |l| {
            l.contains(needle)
        })
    }

    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.exited() {
            None => Ok(()),
            Some(status) => Err(Error::Check(format!(
                "{} exited ({status}); last log line: {}",
                self.name,
                last_line(&self.log())
            ))),
        }
    }

    /// Kills the process with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the process: SIGTERM, then SIGKILL if it is still there after 3 s.
    pub fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let pid = self.child.id().to_string();
        let _ = crate::cmd::run_args("kill", &["-TERM", &pid]);
        let gone = wait_for(
            "process to exit after SIGTERM",
            Duration::from_secs(3),
            || match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => Ok(()),
                Ok(None) => Err("still running".to_owned()),
            },
        );
        if gone.is_err() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn last_line(log: &str) -> String {
    log.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(empty log)")
        .chars()
        .take(400)
        .collect()
}
