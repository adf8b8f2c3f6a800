//! The authority: verification of AUMs, state at any AUM, the active chain (fork resolution),
//! bootstrap, inform, node-key authorization, update building.

use std::collections::{BTreeMap, BTreeSet};

use weft_key::NodePublic;

use crate::ed25519::{verify_zip215, SigningKey};
use crate::hash::AumHash;
use crate::sig::{node_key_binary, NodeKeySignature, RotationDetails, SigKind};
use crate::storage::Chonk;
use crate::types::{Aum, AumKind, AumSignature, Key, KeyKind, State, MAX_KEYS};
use crate::TkaError;

/// Bound on walks over the AUM chain.
pub const MAX_SCAN_ITERATIONS: usize = 2000;
/// A checkpoint is appended to built updates unless one (or the genesis) lies within this many
/// AUMs of head.
pub const CHECKPOINT_EVERY: usize = 50;

/// Checks that `aum` is well-formed, chains onto `state` (unless it is a genesis), carries at
/// least one signature, and that *every* signature is by a key trusted in `state` and verifies
/// (ZIP-215). A RemoveKey may not remove the last key. One valid signature by any trusted key
/// suffices: votes only matter for fork resolution.
pub fn verify_aum(aum: &Aum, state: &State, is_genesis: bool) -> Result<(), TkaError> {
    aum.static_validate()?;
    if !is_genesis {
        let Some(parent) = aum.parent() else {
            return Err(TkaError::verify("aum has no parent"));
        };
        let Some(last) = state.last_aum_hash else {
            return Err(TkaError::verify(
                "cannot check update parent hash against a state with no previous AUM",
            ));
        };
        if last != parent {
            return Err(TkaError::verify(format!(
                "aum with parent {parent} cannot be applied to a state at {last}"
            )));
        }
    }
    if aum.signatures.is_empty() {
        return Err(TkaError::verify("unsigned AUM"));
    }
    let sig_hash = aum.sig_hash();
    for (i, sig) in aum.signatures.iter().enumerate() {
        // The public key comes from the state, never from the (attacker-chosen) KeyID.
        let Some(key) = state.get_key(sig.key_id()) else {
            return Err(TkaError::verify(format!(
                "bad keyID on signature {i}: key not found"
            )));
        };
        signature_verify(sig, &sig_hash, key)
            .map_err(|e| TkaError::verify(format!("signature {i}: {e}")))?;
    }
    if aum.message_kind == AumKind::REMOVE_KEY {
        if let [only] = state.keys() {
            if only.id().is_some() && only.id() == aum.key_id.as_deref() {
                return Err(TkaError::verify("cannot remove the last key in the state"));
            }
        }
    }
    Ok(())
}

fn signature_verify(sig: &AumSignature, digest: &[u8; 32], key: &Key) -> Result<(), String> {
    if key.kind != KeyKind::ED25519 {
        return Err(format!("unhandled key type: {}", key.kind.0));
    }
    let public = key.public.as_deref().unwrap_or(&[]);
    if public.len() != 32 {
        return Err(format!("ed25519 key has wrong length: {}", public.len()));
    }
    if verify_zip215(public, digest, sig.signature()) {
        Ok(())
    } else {
        Err("invalid signature".into())
    }
}

fn get<C: Chonk + ?Sized>(storage: &C, h: &AumHash) -> Result<Aum, TkaError> {
    storage.aum(h)?.ok_or(TkaError::NotFound(*h))
}

/// Chooses among sibling AUMs (a fork), judged with the parent's `state`: highest signature
/// weight, then a RemoveKey over anything else, then the bytewise-smallest hash.
pub fn pick_next_aum(state: &State, mut candidates: Vec<Aum>) -> Option<Aum> {
    if candidates.len() <= 1 {
        return candidates.pop();
    }
    let mut keyed: Vec<(u64, bool, AumHash, Aum)> = candidates
        .into_iter()
        .map(|a| {
            (
                a.weight(state),
                a.message_kind == AumKind::REMOVE_KEY,
                a.hash(),
                a,
            )
        })
        .collect();
    keyed.sort_by(|x, y| {
        y.0.cmp(&x.0) // heavier first
            .then(y.1.cmp(&x.1)) // RemoveKey first
            .then(x.2.cmp(&y.2)) // smaller hash first
    });
    keyed.into_iter().next().map(|k| k.3)
}

type Advancer<'a> = dyn FnMut(&State, Vec<Aum>) -> Result<Option<(Aum, State)>, TkaError> + 'a;

/// Walks forward from the AUM at `start.last_aum_hash`, choosing children with `advance`,
/// until `done` says stop or there are no children. Returns the last AUM and its state.
fn fast_forward_with<C: Chonk + ?Sized>(
    storage: &C,
    max_iter: usize,
    start: State,
    advance: &mut Advancer<'_>,
    done: &mut dyn FnMut(&Aum, &State) -> bool,
) -> Result<(Aum, State), TkaError> {
    let Some(start_hash) = start.last_aum_hash else {
        return Err(TkaError::chain("invalid initial state"));
    };
    let mut curs = get(storage, &start_hash)?;
    let mut state = start;
    for _ in 0..max_iter {
        if done(&curs, &state) {
            return Ok((curs, state));
        }
        let children = storage.child_aums(&curs.hash())?;
        match advance(&state, children)? {
            None => return Ok((curs, state)),
            Some((next, next_state)) => {
                curs = next;
                state = next_state;
            }
        }
    }
    Err(TkaError::IterationLimit(max_iter))
}

fn advance_by_primary(state: &State, children: Vec<Aum>) -> Result<Option<(Aum, State)>, TkaError> {
    let Some(next) = pick_next_aum(state, children) else {
        return Ok(None);
    };
    let st = state
        .apply_verified_aum(&next)
        .map_err(|e| TkaError::chain(format!("advancing state: {e}")))?;
    Ok(Some((next, st)))
}

/// Fast-forward along the active chain (fork resolution at every step).
pub(crate) fn fast_forward<C: Chonk + ?Sized>(
    storage: &C,
    max_iter: usize,
    start: State,
    done: &mut dyn FnMut(&Aum, &State) -> bool,
) -> Result<(Aum, State), TkaError> {
    fast_forward_with(storage, max_iter, start, &mut advance_by_primary, done)
}

/// The state at the stored AUM `want`: walk back to a checkpoint or a genesis, then replay
/// forwards along exactly that path. `TkaError::NotFound(want)` if `want` itself is not stored.
pub fn compute_state_at<C: Chonk + ?Sized>(
    storage: &C,
    max_iter: usize,
    want: AumHash,
) -> Result<State, TkaError> {
    let mut curs = get(storage, &want)?;
    let mut path = BTreeSet::new();
    let mut i = 0;
    let state = loop {
        if i > max_iter {
            return Err(TkaError::IterationLimit(max_iter));
        }
        i += 1;
        let h = curs.hash();
        path.insert(h);
        if curs.message_kind == AumKind::CHECKPOINT {
            let Some(st) = &curs.state else {
                return Err(TkaError::chain("checkpoint without state"));
            };
            let mut st = st.clone();
            st.last_aum_hash = Some(h);
            break st;
        }
        let Some(parent) = curs.parent() else {
            // A genesis that is not a checkpoint: only NoOp and AddKey qualify.
            if curs.message_kind == AumKind::NO_OP || curs.message_kind == AumKind::ADD_KEY {
                break State::default()
                    .apply_verified_aum(&curs)
                    .map_err(|e| TkaError::chain(format!("applying genesis: {e}")))?;
            }
            return Err(TkaError::chain(format!(
                "invalid genesis update of kind {}",
                curs.message_kind.name()
            )));
        };
        curs = match storage.aum(&parent)? {
            Some(a) => a,
            None => {
                return Err(TkaError::chain(format!(
                    "reading parent {parent}: not found"
                )))
            }
        };
    };

    let mut advance =
        |state: &State, children: Vec<Aum>| -> Result<Option<(Aum, State)>, TkaError> {
            for c in children {
                if path.contains(&c.hash()) {
                    let st = state
                        .apply_verified_aum(&c)
                        .map_err(|e| TkaError::chain(format!("advancing state: {e}")))?;
                    return Ok(Some((c, st)));
                }
            }
            Err(TkaError::chain("no candidate matching path"))
        };
    let (_, state) = fast_forward_with(storage, max_iter, state, &mut advance, &mut |c, _| {
        c.hash() == want
    })?;
    if state.last_aum_hash != Some(want) {
        return Err(TkaError::chain("unexpected fastForward outcome"));
    }
    Ok(state)
}

struct Candidate {
    oldest: Aum,
    chains_through_active: bool,
}

fn compute_chain_candidates<C: Chonk + ?Sized>(
    storage: &C,
    last_known_oldest: Option<AumHash>,
    max_iter: usize,
) -> Result<Vec<Candidate>, TkaError> {
    let mut cands: Vec<(AumHash, Candidate)> = storage
        .heads()?
        .into_iter()
        .map(|h| {
            (
                h.hash(),
                Candidate {
                    oldest: h,
                    chains_through_active: false,
                },
            )
        })
        .collect();
    cands.sort_by_key(|c| c.0);
    let mut cands: Vec<Candidate> = cands.into_iter().map(|(_, c)| c).collect();

    let mut again = true;
    let mut i = 0;
    while again {
        if i >= max_iter {
            return Err(TkaError::IterationLimit(max_iter));
        }
        i += 1;
        again = false;
        for c in &mut cands {
            let Some(parent) = c.oldest.parent() else {
                continue;
            };
            let Some(p) = storage.aum(&parent)? else {
                continue;
            };
            if last_known_oldest == Some(p.hash()) {
                c.chains_through_active = true;
            }
            c.oldest = p;
            again = true;
        }
    }
    Ok(cands)
}

fn compute_active_ancestor(chains: &[Candidate]) -> Result<AumHash, TkaError> {
    let mut ancestors: BTreeMap<AumHash, bool> = BTreeMap::new();
    for c in chains {
        ancestors.insert(c.oldest.hash(), c.chains_through_active);
    }
    if ancestors.len() == 1 {
        return Ok(*ancestors.keys().next().expect("one ancestor"));
    }
    ancestors
        .into_iter()
        .find(|(_, active)| *active)
        .map(|(h, _)| h)
        .ok_or_else(|| TkaError::chain("multiple distinct chains"))
}

/// The active chain of `storage`: (oldest ancestor, head, state at head).
pub fn compute_active_chain<C: Chonk + ?Sized>(
    storage: &C,
    last_known_oldest: Option<AumHash>,
    max_iter: usize,
) -> Result<(Aum, Aum, State), TkaError> {
    let chains = compute_chain_candidates(storage, last_known_oldest, max_iter)?;
    if chains.is_empty() {
        return Err(TkaError::chain("no chain candidates in AUM storage"));
    }
    let oldest_hash = compute_active_ancestor(&chains)?;
    let oldest = get(storage, &oldest_hash)?;
    let state = compute_state_at(storage, max_iter, oldest_hash)
        .map_err(|e| TkaError::chain(format!("bootstrapping state: {e}")))?;
    let (head, state) = fast_forward(storage, max_iter, state, &mut |_, _| false)?;
    Ok((oldest, head, state))
}

/// Produces AUM signatures over a sig-hash (a node's tailnet-lock key, or several co-signers).
pub trait Signer {
    /// Signatures over `sig_hash`.
    fn sign_aum(&self, sig_hash: &[u8; 32]) -> Result<Vec<AumSignature>, TkaError>;
}

impl Signer for SigningKey {
    fn sign_aum(&self, sig_hash: &[u8; 32]) -> Result<Vec<AumSignature>, TkaError> {
        Ok(vec![AumSignature::new(
            &self.public(),
            &self.sign(sig_hash),
        )])
    }
}

/// A tailnet key authority: the head of the active chain, its oldest ancestor, and the state
/// at head. Methods that read or change AUMs take the storage as an argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authority {
    head: Aum,
    oldest_ancestor: Aum,
    state: State,
}

impl Authority {
    /// Opens an authority from non-empty storage.
    pub fn open<C: Chonk + ?Sized>(storage: &C) -> Result<Self, TkaError> {
        let hint = storage.last_active_ancestor()?;
        let (oldest, head, state) = compute_active_chain(storage, hint, MAX_SCAN_ITERATIONS)
            .map_err(|e| TkaError::chain(format!("active chain: {e}")))?;
        Ok(Self {
            head,
            oldest_ancestor: oldest,
            state,
        })
    }

    /// Creates a brand-new authority: signs a genesis checkpoint of `state` with `signer`
    /// (which must be a key in `state`) and bootstraps empty `storage` from it.
    pub fn create<C: Chonk + ?Sized>(
        storage: &mut C,
        state: State,
        signer: &dyn Signer,
    ) -> Result<(Self, Aum), TkaError> {
        let mut genesis = Aum {
            message_kind: AumKind::CHECKPOINT,
            state: Some(state),
            ..Default::default()
        };
        genesis
            .static_validate()
            .map_err(|e| TkaError::invalid(format!("invalid state: {e}")))?;
        let sigs = signer.sign_aum(&genesis.sig_hash())?;
        genesis.signatures.extend(sigs);
        let a = Self::bootstrap(storage, &genesis)?;
        Ok((a, genesis))
    }

    /// Initializes empty `storage` from a checkpoint (normally the genesis), which must be
    /// signed by a key of its own embedded state.
    pub fn bootstrap<C: Chonk + ?Sized>(
        storage: &mut C,
        bootstrap: &Aum,
    ) -> Result<Self, TkaError> {
        if !storage.heads()?.is_empty() {
            return Err(TkaError::chain("tailchonk is not empty"));
        }
        Self::verify_bootstrap(bootstrap)?;
        storage.commit_verified_aums(std::slice::from_ref(bootstrap))?;
        storage.set_last_active_ancestor(bootstrap.hash())?;
        Self::open(storage)
    }

    /// The checks [`Authority::bootstrap`] applies to its AUM, without storing anything (a
    /// server uses this for `/machine/tka/init/begin`).
    pub fn verify_bootstrap(bootstrap: &Aum) -> Result<(), TkaError> {
        if bootstrap.message_kind != AumKind::CHECKPOINT {
            return Err(TkaError::verify(format!(
                "bootstrap AUMs must be checkpoint messages, got {}",
                bootstrap.message_kind.name()
            )));
        }
        let Some(state) = &bootstrap.state else {
            return Err(TkaError::verify("bootstrap AUM is missing state"));
        };
        verify_aum(bootstrap, state, true)
            .map_err(|e| TkaError::verify(format!("invalid bootstrap: {e}")))
    }

    /// Hash of the head AUM.
    pub fn head(&self) -> AumHash {
        self.state
            .last_aum_hash
            .expect("an authority's state always has a last AUM")
    }

    /// The head AUM.
    pub fn head_aum(&self) -> &Aum {
        &self.head
    }

    /// The oldest stored AUM of the active chain.
    pub fn oldest_ancestor(&self) -> &Aum {
        &self.oldest_ancestor
    }

    /// The state at head.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The trusted keys.
    pub fn keys(&self) -> &[Key] {
        self.state.keys()
    }

    /// Whether `key_id` is trusted.
    pub fn key_trusted(&self, key_id: &[u8]) -> bool {
        self.state.key_trusted(key_id)
    }

    /// The authority's fixed IDs.
    pub fn state_ids(&self) -> (u64, u64) {
        (self.state.state_id1, self.state.state_id2)
    }

    /// Whether `secret` is a valid disablement secret (Argon2i; takes a few tens of ms).
    pub fn valid_disablement(&self, secret: &[u8]) -> bool {
        self.state.check_disablement(secret)
    }

    /// Verifies and stores `updates` (oldest first), returning the new authority. AUMs already
    /// stored are skipped; every other update needs a parent that is stored or earlier in the
    /// batch, and must verify against the state at that parent. Forks are stored, and the
    /// active chain is recomputed. On any error nothing is stored.
    pub fn inform_idempotent<C: Chonk + ?Sized>(
        &self,
        storage: &mut C,
        updates: &[Aum],
    ) -> Result<Authority, TkaError> {
        if updates.is_empty() {
            return Err(TkaError::verify("inform called with empty slice"));
        }
        let mut state_at: BTreeMap<AumHash, State> = BTreeMap::new();
        let mut to_commit = Vec::with_capacity(updates.len());
        let mut prev_hash = self.head();
        state_at.insert(prev_hash, self.state.clone());
        let mut is_head_chain = true;

        for (i, update) in updates.iter().enumerate() {
            let hash = update.hash();
            if storage.aum(&hash)?.is_some() {
                is_head_chain = false;
                continue;
            }
            let Some(parent) = update.parent() else {
                return Err(TkaError::verify(format!("update {i}: missing parent")));
            };
            let state = match state_at.get(&parent) {
                Some(s) => s.clone(),
                None => {
                    let s =
                        compute_state_at(storage, MAX_SCAN_ITERATIONS, parent).map_err(|e| {
                            TkaError::verify(format!("update {i} computing state: {e}"))
                        })?;
                    state_at.insert(parent, s.clone());
                    s
                }
            };
            verify_aum(update, &state, false)
                .map_err(|e| TkaError::verify(format!("update {i} invalid: {e}")))?;
            let next = state
                .apply_verified_aum(update)
                .map_err(|e| TkaError::verify(format!("update {i} cannot be applied: {e}")))?;
            state_at.insert(hash, next);
            if is_head_chain && parent != prev_hash {
                is_head_chain = false;
            }
            prev_hash = hash;
            to_commit.push(update.clone());
        }

        storage.commit_verified_aums(&to_commit)?;

        if is_head_chain {
            return Ok(Authority {
                head: updates[updates.len() - 1].clone(),
                oldest_ancestor: self.oldest_ancestor.clone(),
                state: state_at
                    .remove(&prev_hash)
                    .expect("state of the last update"),
            });
        }
        let (oldest, head, state) = compute_active_chain(
            storage,
            Some(self.oldest_ancestor.hash()),
            MAX_SCAN_ITERATIONS,
        )
        .map_err(|e| TkaError::chain(format!("recomputing active chain: {e}")))?;
        Ok(Authority {
            head,
            oldest_ancestor: oldest,
            state,
        })
    }

    /// [`Authority::inform_idempotent`], updating `self` in place on success.
    pub fn inform<C: Chonk + ?Sized>(
        &mut self,
        storage: &mut C,
        updates: &[Aum],
    ) -> Result<(), TkaError> {
        *self = self.inform_idempotent(storage, updates)?;
        Ok(())
    }

    /// Whether the serialized signature `nks` authorizes `node_key` under the current state.
    pub fn node_key_authorized(&self, node_key: &NodePublic, nks: &[u8]) -> Result<(), TkaError> {
        self.node_key_authorized_with_details(node_key, nks)
            .map(|_| ())
    }

    /// Like [`Authority::node_key_authorized`], also returning rotation details for Rotation
    /// signatures.
    pub fn node_key_authorized_with_details(
        &self,
        node_key: &NodePublic,
        nks: &[u8],
    ) -> Result<Option<RotationDetails>, TkaError> {
        let decoded = NodeKeySignature::decode(nks)
            .map_err(|e| TkaError::nks(format!("unserialize: {e}")))?;
        self.node_key_authorized_decoded(node_key, &decoded)?;
        decoded.rotation_details()
    }

    /// [`Authority::node_key_authorized`] for an already decoded signature.
    pub fn node_key_authorized_decoded(
        &self,
        node_key: &NodePublic,
        sig: &NodeKeySignature,
    ) -> Result<(), TkaError> {
        if sig.sig_kind == SigKind::CREDENTIAL {
            return Err(TkaError::nks(
                "credential signatures cannot authorize nodes on their own",
            ));
        }
        let kid = sig.authorizing_key_id()?;
        let Some(key) = self.state.get_key(kid) else {
            return Err(TkaError::nks("key: key not found"));
        };
        sig.verify_signature(&node_key_binary(node_key), key)
    }

    /// Starts building updates on top of head, signed by `signer`.
    pub fn new_updater<'a>(&'a self, signer: &'a dyn Signer) -> UpdateBuilder<'a> {
        UpdateBuilder {
            authority: self,
            signer,
            state: self.state.clone(),
            parent: self.head(),
            out: Vec::new(),
        }
    }

    /// Builds (unsigned) a forking checkpoint that retroactively revokes `remove_keys`: its
    /// parent is `fork_from`, or else the newest AUM at which none of them was trusted but
    /// `our_key` was (or the oldest ancestor). It must be co-signed by enough votes to outweigh
    /// the branch it replaces before it is informed.
    pub fn make_retroactive_revocation<C: Chonk + ?Sized>(
        &self,
        storage: &C,
        remove_keys: &[Vec<u8>],
        our_key: &[u8],
        fork_from: Option<AumHash>,
    ) -> Result<Aum, TkaError> {
        let parent = match fork_from {
            Some(p) => p,
            None => {
                if !remove_keys.iter().any(|k| self.state.key_trusted(k)) {
                    return Err(TkaError::verify("no provided key is currently trusted"));
                }
                self.find_parent_for_rewrite(storage, remove_keys, our_key)?
            }
        };
        let mut state = self.state.clone();
        if let Some(keys) = state.keys.as_mut() {
            keys.retain(|k| !remove_keys.iter().any(|r| k.id() == Some(r.as_slice())));
        }
        if state.keys().is_empty() {
            return Err(TkaError::verify("cannot revoke all trusted keys"));
        }
        state.last_aum_hash = None;
        let aum = Aum {
            message_kind: AumKind::CHECKPOINT,
            prev_aum_hash: Some(parent.0.to_vec()),
            state: Some(state),
            ..Default::default()
        };
        aum.static_validate()?;
        Ok(aum)
    }

    fn find_parent_for_rewrite<C: Chonk + ?Sized>(
        &self,
        storage: &C,
        remove_keys: &[Vec<u8>],
        our_key: &[u8],
    ) -> Result<AumHash, TkaError> {
        let oldest = self.oldest_ancestor.hash();
        let mut cursor = self.head();
        loop {
            if cursor == oldest {
                break;
            }
            let aum = get(storage, &cursor)?;
            let state = compute_state_at(storage, MAX_SCAN_ITERATIONS, cursor)?;
            let revoked_trusted = remove_keys.iter().any(|k| state.key_trusted(k));
            if !revoked_trusted && state.key_trusted(our_key) {
                break;
            }
            match aum.parent() {
                Some(p) => cursor = p,
                None => break,
            }
        }
        Ok(cursor)
    }
}

/// Builds a batch of signed updates on top of an authority's head.
pub struct UpdateBuilder<'a> {
    authority: &'a Authority,
    signer: &'a dyn Signer,
    state: State,
    parent: AumHash,
    out: Vec<Aum>,
}

impl UpdateBuilder<'_> {
    fn mk_update(&mut self, mut update: Aum) -> Result<(), TkaError> {
        update.prev_aum_hash = Some(self.parent.0.to_vec());
        let sigs = self.signer.sign_aum(&update.sig_hash())?;
        update.signatures.extend(sigs);
        update
            .static_validate()
            .map_err(|e| TkaError::invalid(format!("generated update was invalid: {e}")))?;
        self.state = self.state.apply_verified_aum(&update)?;
        self.parent = update.hash();
        self.out.push(update);
        Ok(())
    }

    /// Adds a trusted key.
    pub fn add_key(&mut self, key: Key) -> Result<(), TkaError> {
        let Some(id) = key.id() else {
            return Err(TkaError::invalid("unknown key kind"));
        };
        if self.state.key_trusted(id) {
            return Err(TkaError::verify("cannot add key: already exists"));
        }
        if self.state.keys().len() >= MAX_KEYS {
            return Err(TkaError::verify(
                "cannot add key: maximum number of keys reached",
            ));
        }
        self.mk_update(Aum {
            message_kind: AumKind::ADD_KEY,
            key: Some(key),
            ..Default::default()
        })
    }

    /// Removes a trusted key.
    pub fn remove_key(&mut self, key_id: &[u8]) -> Result<(), TkaError> {
        if !self.state.key_trusted(key_id) {
            return Err(TkaError::verify("cannot remove key: key not found"));
        }
        self.mk_update(Aum {
            message_kind: AumKind::REMOVE_KEY,
            key_id: Some(key_id.to_vec()),
            ..Default::default()
        })
    }

    /// Sets a key's votes.
    pub fn set_key_vote(&mut self, key_id: &[u8], votes: u64) -> Result<(), TkaError> {
        if !self.state.key_trusted(key_id) {
            return Err(TkaError::verify("cannot update key: key not found"));
        }
        self.mk_update(Aum {
            message_kind: AumKind::UPDATE_KEY,
            key_id: Some(key_id.to_vec()),
            votes: Some(votes),
            ..Default::default()
        })
    }

    /// Replaces a key's metadata.
    pub fn set_key_meta(
        &mut self,
        key_id: &[u8],
        meta: BTreeMap<String, String>,
    ) -> Result<(), TkaError> {
        if !self.state.key_trusted(key_id) {
            return Err(TkaError::verify("cannot update key: key not found"));
        }
        self.mk_update(Aum {
            message_kind: AumKind::UPDATE_KEY,
            key_id: Some(key_id.to_vec()),
            meta: Some(meta),
            ..Default::default()
        })
    }

    /// Appends a no-op (used in tests and to force a new head).
    pub fn no_op(&mut self) -> Result<(), TkaError> {
        self.mk_update(Aum {
            message_kind: AumKind::NO_OP,
            ..Default::default()
        })
    }

    fn generate_checkpoint(&mut self) -> Result<(), TkaError> {
        let mut state = self.authority.state.clone();
        for (i, u) in self.out.iter().enumerate() {
            state = state
                .apply_verified_aum(u)
                .map_err(|e| TkaError::apply(format!("applying update {i}: {e}")))?;
        }
        state.last_aum_hash = None;
        self.mk_update(Aum {
            message_kind: AumKind::CHECKPOINT,
            state: Some(state),
            ..Default::default()
        })
    }

    /// The built updates, with a checkpoint appended if neither a checkpoint nor the genesis is
    /// within [`CHECKPOINT_EVERY`] AUMs of head.
    pub fn finalize<C: Chonk + ?Sized>(mut self, storage: &C) -> Result<Vec<Aum>, TkaError> {
        let mut need_checkpoint = true;
        let mut cursor = self.authority.head();
        for _ in self.out.len()..CHECKPOINT_EVERY {
            let Some(aum) = storage.aum(&cursor)? else {
                need_checkpoint = false;
                break;
            };
            if aum.message_kind == AumKind::CHECKPOINT {
                need_checkpoint = false;
                break;
            }
            let Some(p) = aum.parent() else {
                need_checkpoint = false;
                break;
            };
            cursor = p;
        }
        if need_checkpoint {
            self.generate_checkpoint()?;
        }
        if let Some(first) = self.out.first() {
            if first.parent() != Some(self.authority.head()) {
                return Err(TkaError::verify("updates no longer apply to head"));
            }
        }
        Ok(self.out)
    }
}
