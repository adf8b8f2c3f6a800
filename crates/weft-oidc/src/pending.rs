//! Logins started at the provider and not finished yet, kept server-side.
//!
//! Each entry is keyed by the `state` value sent to the provider and is taken out on the
//! first callback that names it, so a replayed callback (same code and state) finds nothing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// At most this many logins may be in progress at once; beyond it new logins are refused
/// until old ones expire (bounds the memory an unauthenticated client can make us hold).
pub const MAX_PENDING: usize = 10_000;

/// What the server remembers about a login it sent to the provider.
pub struct PendingLogin {
    /// The registration session (auth id of the AuthURL) this login completes.
    pub auth_id: String,
    /// The nonce the ID token must carry.
    pub nonce: String,
    /// The PKCE verifier for the code exchange.
    pub pkce_verifier: String,
    /// When the login was started.
    pub started: Instant,
}

impl std::fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLogin")
            .field("auth_id", &self.auth_id)
            .finish_non_exhaustive()
    }
}

/// Why [`PendingLogins::take`] found no usable login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeError {
    /// No login with this state: never started here, or already finished (a replay).
    Unknown,
    /// The login was started longer ago than the time-to-live.
    Expired,
}

/// The table of started logins.
#[derive(Debug)]
pub struct PendingLogins {
    ttl: Duration,
    by_state: BTreeMap<String, PendingLogin>,
}

impl PendingLogins {
    /// An empty table whose entries live for `ttl`.
    pub fn new(ttl: Duration) -> PendingLogins {
        PendingLogins {
            ttl,
            by_state: BTreeMap::new(),
        }
    }

    /// Number of entries (expired ones included until the next prune).
    pub fn len(&self) -> usize {
        self.by_state.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.by_state.is_empty()
    }

    /// Adds a login under `state`. Returns false (and stores nothing) if the table is full
    /// even after dropping expired entries, or if `state` is already in use.
    pub fn insert(&mut self, state: String, login: PendingLogin, now: Instant) -> bool {
        if self.by_state.len() >= MAX_PENDING {
            self.prune(now);
        }
        if self.by_state.len() >= MAX_PENDING || self.by_state.contains_key(&state) {
            return false;
        }
        self.by_state.insert(state, login);
        true
    }

    /// Removes and returns the login started under `state`, if it has not expired at `now`.
    /// An expired entry is removed too.
    pub fn take(&mut self, state: &str, now: Instant) -> Result<PendingLogin, TakeError> {
        let login = self.by_state.remove(state).ok_or(TakeError::Unknown)?;
        if now.saturating_duration_since(login.started) >= self.ttl {
            return Err(TakeError::Expired);
        }
        Ok(login)
    }

    /// Drops every entry expired at `now`.
    pub fn prune(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.by_state
            .retain(|_, l| now.saturating_duration_since(l.started) < ttl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(auth_id: &str, at: Instant) -> PendingLogin {
        PendingLogin {
            auth_id: auth_id.into(),
            nonce: "n".into(),
            pkce_verifier: "v".into(),
            started: at,
        }
    }

    #[test]
    fn a_login_can_be_taken_once() {
        let t0 = Instant::now();
        let mut p = PendingLogins::new(Duration::from_secs(60));
        assert!(p.insert("s1".into(), login("a1", t0), t0));
        assert_eq!(p.take("s1", t0).unwrap().auth_id, "a1");
        assert_eq!(p.take("s1", t0).unwrap_err(), TakeError::Unknown);
    }

    #[test]
    fn an_unknown_state_is_refused() {
        let t0 = Instant::now();
        let mut p = PendingLogins::new(Duration::from_secs(60));
        assert!(p.insert("s1".into(), login("a1", t0), t0));
        assert_eq!(p.take("s2", t0).unwrap_err(), TakeError::Unknown);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn an_expired_login_is_refused_and_removed() {
        let t0 = Instant::now();
        let mut p = PendingLogins::new(Duration::from_secs(60));
        assert!(p.insert("s1".into(), login("a1", t0), t0));
        let later = t0 + Duration::from_secs(60);
        assert_eq!(p.take("s1", later).unwrap_err(), TakeError::Expired);
        assert!(p.is_empty());
    }

    #[test]
    fn a_duplicate_state_is_refused() {
        let t0 = Instant::now();
        let mut p = PendingLogins::new(Duration::from_secs(60));
        assert!(p.insert("s1".into(), login("a1", t0), t0));
        assert!(!p.insert("s1".into(), login("a2", t0), t0));
        assert_eq!(p.take("s1", t0).unwrap().auth_id, "a1");
    }

    #[test]
    fn a_full_table_drops_expired_entries_before_refusing() {
        let t0 = Instant::now();
        let mut p = PendingLogins::new(Duration::from_secs(60));
        for i in 0..MAX_PENDING {
            assert!(p.insert(format!("s{i}"), login("a", t0), t0));
        }
        assert!(!p.insert("new".into(), login("a", t0), t0));
        let later = t0 + Duration::from_secs(61);
        assert!(p.insert("new".into(), login("a", later), later));
        assert_eq!(p.len(), 1);
    }
}
