//! The daemon's persisted state: machine, node and tailnet-lock keys plus login preferences.
//!
//! Everything lives in one JSON file, `state.json`, inside the state directory (mode 0700),
//! written atomically (temporary file + rename) with mode 0600. Private keys are only ever
//! read from and written to this file; nothing else in the agent serialises them.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use weft_key::{MachinePrivate, NlPrivate, NodePrivate, NodePublic};

const STATE_FILE: &str = "state.json";

/// Errors reading or writing the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Filesystem error, with the path involved.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The state file is not valid JSON of the expected shape.
    #[error("{path}: corrupt state file: {msg}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        msg: String,
    },
}

/// Login preferences set by `weft up` and kept across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Prefs {
    /// Control server URL (`--login-server`).
    pub control_url: Option<String>,
    /// Hostname to report (`--hostname`); the OS hostname when absent.
    pub hostname: Option<String>,
    /// Requested ACL tags (`--advertise-tags`).
    pub advertise_tags: Vec<String>,
    /// Advertised subnet routes (`--advertise-routes`), canonical, without default routes.
    pub advertise_routes: Vec<ipnet::IpNet>,
    /// Whether to offer this node as an exit node (`--advertise-exit-node`: advertises
    /// 0.0.0.0/0 and ::/0 too).
    pub advertise_exit_node: bool,
    /// Whether to route to peers' subnet routes (`--accept-routes`).
    pub accept_routes: bool,
    /// Whether the data plane should run (`weft up` sets it, `weft down` clears it).
    pub want_running: bool,
}

/// Who the control server says we logged in as.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Profile {
    /// Control's user ID.
    pub user_id: i64,
    /// Login name (e-mail-like).
    pub login_name: String,
    /// Display name.
    pub display_name: String,
}

/// The in-memory form of the state file.
#[derive(Clone)]
pub struct AgentState {
    /// Stable per install; the Noise initiator key.
    pub machine: MachinePrivate,
    /// Current node key, once one was registered (or is being registered).
    pub node: Option<NodePrivate>,
    /// The node key we rotated away from (sticky, sent as `OldNodeKey`).
    pub old_node: NodePublic,
    /// Tailnet-lock key, sent as `NLKey`.
    pub nl: NlPrivate,
    /// Preferences.
    pub prefs: Prefs,
    /// Login profile from the last successful registration.
    pub profile: Option<Profile>,
}

impl std::fmt::Debug for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentState")
            .field("machine", &self.machine.public())
            .field("node", &self.node.as_ref().map(NodePrivate::public))
            .field("old_node", &self.old_node)
            .field("prefs", &self.prefs)
            .field("profile", &self.profile)
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct StateFileV1 {
    version: u32,
    machine_key: String,
    #[serde(default)]
    node_key: Option<String>,
    #[serde(default)]
    old_node_key: NodePublic,
    nl_key: String,
    #[serde(default)]
    prefs: Prefs,
    #[serde(default)]
    profile: Option<Profile>,
}

/// A state directory on disk.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// Opens (creating if needed, mode 0700) the directory and loads the state, generating a
    /// machine key and tailnet-lock key on first use (and saving them right away).
    pub fn open(dir: impl Into<PathBuf>) -> Result<(Self, AgentState), StateError> {
        let dir = dir.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| StateError::Io {
                path: dir.clone(),
                source,
            })?;
        let store = Self { dir };
        let path = store.file();
        match fs::read(&path) {
            Ok(bytes) => {
                let state = decode(&path, &bytes)?;
                Ok((store, state))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let state = AgentState {
                    machine: MachinePrivate::generate(),
                    node: None,
                    old_node: NodePublic::default(),
                    nl: NlPrivate::generate(),
                    prefs: Prefs::default(),
                    profile: None,
                };
                store.save(&state)?;
                Ok((store, state))
            }
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the state atomically with mode 0600.
    pub fn save(&self, state: &AgentState) -> Result<(), StateError> {
        let path = self.file();
        let tmp = self.dir.join(format!(".{STATE_FILE}.tmp"));
        let body = encode(state);
        let io = |source| StateError::Io {
            path: tmp.clone(),
            source,
        };
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io)?;
        f.write_all(&body).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        fs::rename(&tmp, &path).map_err(|source| StateError::Io { path, source })?;
        Ok(())
    }

    fn file(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }
}

fn encode(s: &AgentState) -> Vec<u8> {
    let f = StateFileV1 {
        version: 1,
        machine_key: s.machine.to_text(),
        node_key: s.node.as_ref().map(NodePrivate::to_text),
        old_node_key: s.old_node,
        nl_key: s.nl.to_text(),
        prefs: s.prefs.clone(),
        profile: s.profile.clone(),
    };
    serde_json::to_vec_pretty(&f).expect("state serialises")
}

fn decode(path: &Path, bytes: &[u8]) -> Result<AgentState, StateError> {
    let corrupt = |msg: String| StateError::Corrupt {
        path: path.to_owned(),
        msg,
    };
    let f: StateFileV1 = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if f.version != 1 {
        return Err(corrupt(format!("unknown version {}", f.version)));
    }
    let machine =
        MachinePrivate::parse(&f.machine_key).map_err(|e| corrupt(format!("machine_key: {e}")))?;
    let node = f
        .node_key
        .as_deref()
        .map(NodePrivate::parse)
        .transpose()
        .map_err(|e| corrupt(format!("node_key: {e}")))?;
    let nl = NlPrivate::parse(&f.nl_key).map_err(|e| corrupt(format!("nl_key: {e}")))?;
    Ok(AgentState {
        machine,
        node,
        old_node: f.old_node_key,
        nl,
        prefs: f.prefs,
        profile: f.profile,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_open_generates_keys_and_reopen_returns_the_same_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let (store, mut s1) = StateStore::open(&dir).unwrap();
        s1.node = Some(NodePrivate::generate());
        s1.prefs.control_url = Some("http://127.0.0.1:1".into());
        store.save(&s1).unwrap();
        let (_, s2) = StateStore::open(&dir).unwrap();
        assert_eq!(s1.machine.public(), s2.machine.public());
        assert_eq!(s1.node.unwrap().public(), s2.node.unwrap().public());
        assert_eq!(s1.nl.public(), s2.nl.public());
        assert_eq!(s2.prefs.control_url.as_deref(), Some("http://127.0.0.1:1"));
    }

    #[test]
    fn state_file_is_mode_0600_and_dir_0700() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        let (store, _) = StateStore::open(&dir).unwrap();
        let fm = fs::metadata(store.file()).unwrap().permissions().mode() & 0o777;
        let dm = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(fm, 0o600);
        assert_eq!(dm, 0o700);
    }

    #[test]
    fn corrupt_state_file_is_an_error_not_a_fresh_identity() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join(STATE_FILE), b"{not json").unwrap();
        assert!(matches!(
            StateStore::open(tmp.path()),
            Err(StateError::Corrupt { .. })
        ));
    }

    #[test]
    fn debug_output_has_no_private_key_text() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, s) = StateStore::open(tmp.path()).unwrap();
        let d = format!("{s:?}");
        assert!(!d.contains(&s.machine.to_text()[9..]));
    }
}
