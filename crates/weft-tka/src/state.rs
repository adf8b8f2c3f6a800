//! Applying verified AUMs to a [`State`], and the disablement KDF.

use crate::hash::AumHash;
use crate::types::{Aum, AumKind, State};
use crate::TkaError;

const DISABLEMENT_SALT: &[u8] = b"tailscale network-lock disablement salt";

/// The public image of a disablement secret: Argon2i (v0x13, t=4, m=16 MiB, p=4, 32 bytes)
/// salted with `tailscale network-lock disablement salt`.
pub fn disablement_kdf(secret: &[u8]) -> [u8; 32] {
    let params = argon2::Params::new(16 * 1024, 4, 4, Some(32)).expect("valid argon2 parameters");
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2i, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    a.hash_password_into(secret, DISABLEMENT_SALT, &mut out)
        .expect("argon2 with fixed parameters cannot fail");
    out
}

impl State {
    /// Whether `secret` is a disablement secret of this state (constant-time comparison).
    pub fn check_disablement(&self, secret: &[u8]) -> bool {
        let derived = disablement_kdf(secret);
        self.check_disablement_value(&derived)
    }

    /// Whether the KDF output `derived` is one of this state's disablement values.
    pub fn check_disablement_value(&self, derived: &[u8; 32]) -> bool {
        use subtle::ConstantTimeEq;
        let mut found = subtle::Choice::from(0);
        for v in self.disablement_values.iter().flatten() {
            found |= v.as_slice().ct_eq(&derived[..]);
        }
        found.into()
    }

    /// Whether `update` chains onto this state (a state with no last AUM accepts anything).
    pub fn parent_matches(&self, update: &Aum) -> bool {
        match &self.last_aum_hash {
            None => true,
            Some(h) => update.prev_aum_hash.as_deref() == Some(&h.0[..]),
        }
    }

    fn clone_for_update(&self, hash: AumHash) -> State {
        let mut out = self.clone();
        out.last_aum_hash = Some(hash);
        out
    }

    /// The state after `update`, which must already be verified (statically valid and
    /// correctly signed). The result's `last_aum_hash` is the update's hash.
    pub fn apply_verified_aum(&self, update: &Aum) -> Result<State, TkaError> {
        if !self.parent_matches(update) {
            return Err(TkaError::apply("parent AUMHash mismatch"));
        }
        let hash = update.hash();
        match update.message_kind {
            AumKind::CHECKPOINT => {
                let Some(st) = &update.state else {
                    return Err(TkaError::apply("missing checkpoint state"));
                };
                if st.state_id1 != self.state_id1 || st.state_id2 != self.state_id2 {
                    return Err(TkaError::apply(
                        "checkpointed state has an incorrect stateID",
                    ));
                }
                Ok(st.clone_for_update(hash))
            }
            AumKind::ADD_KEY => {
                let Some(key) = &update.key else {
                    return Err(TkaError::apply("no key to add provided"));
                };
                let Some(id) = key.id() else {
                    return Err(TkaError::apply("unknown key kind"));
                };
                if self.key_trusted(id) {
                    return Err(TkaError::apply("key already exists"));
                }
                let mut out = self.clone_for_update(hash);
                out.keys.get_or_insert_with(Vec::new).push(key.clone());
                Ok(out)
            }
            AumKind::UPDATE_KEY => {
                let key_id = update.key_id.as_deref().unwrap_or(&[]);
                let Some(mut k) = self.get_key(key_id).cloned() else {
                    return Err(TkaError::apply("key not found"));
                };
                if let Some(v) = update.votes {
                    k.votes = v;
                }
                if let Some(m) = &update.meta {
                    k.meta = Some(m.clone());
                }
                k.static_validate()
                    .map_err(|e| TkaError::apply(format!("updated key fails validation: {e}")))?;
                let mut out = self.clone_for_update(hash);
                for slot in out.keys.iter_mut().flatten() {
                    if slot.id() == Some(key_id) {
                        *slot = k.clone();
                    }
                }
                Ok(out)
            }
            AumKind::REMOVE_KEY => {
                let key_id = update.key_id.as_deref().unwrap_or(&[]);
                let Some(idx) = self.keys().iter().position(|k| k.id() == Some(key_id)) else {
                    return Err(TkaError::apply("key not found"));
                };
                let mut out = self.clone_for_update(hash);
                if let Some(keys) = out.keys.as_mut() {
                    keys.remove(idx);
                }
                Ok(out)
            }
            // NoOp and unknown kinds.
            _ => Ok(self.clone_for_update(hash)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disablement_kdf_vector() {
        // Argon2i of 32 x 0xa5 (cross-checked with argon2-cffi; Argon2id would give efdacd87…).
        assert_eq!(
            hex::encode(disablement_kdf(&[0xa5; 32])),
            "c3fea8a0d70ede2555990ca60d70a8a03cbe627d2c9f3cb0e2ba7093d0884e2f"
        );
    }

    #[test]
    fn disablement_check() {
        let v = disablement_kdf(&[0xa5; 32]);
        let s = State {
            disablement_values: Some(vec![vec![1; 32], v.to_vec()]),
            ..Default::default()
        };
        assert!(s.check_disablement_value(&v));
        assert!(!s.check_disablement_value(&[2; 32]));
        assert!(!State::default().check_disablement_value(&v));
    }
}
