//! AUM storage ("chonk" in Tailscale's code): a DAG of verified AUMs plus the last-active-ancestor
//! hint. [`MemChonk`] keeps everything in memory; a server can load its AUM table into one, or
//! implement [`Chonk`] over its own store.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::hash::AumHash;
use crate::types::Aum;

/// A storage backend failure.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct StorageError(pub String);

/// Storage for AUMs. Implementations only ever receive verified AUMs.
pub trait Chonk {
    /// The AUM with this hash, or `None` if it is not stored.
    fn aum(&self, hash: &AumHash) -> Result<Option<Aum>, StorageError>;
    /// Every stored AUM whose parent is `parent`.
    fn child_aums(&self, parent: &AumHash) -> Result<Vec<Aum>, StorageError>;
    /// Stores verified AUMs (all of them or, on error, none). Already stored ones are ignored.
    fn commit_verified_aums(&mut self, aums: &[Aum]) -> Result<(), StorageError>;
    /// AUMs without children (the tips of every chain).
    fn heads(&self) -> Result<Vec<Aum>, StorageError>;
    /// Records the oldest AUM that contributed to the current state (a hint used to choose
    /// between distinct chains).
    fn set_last_active_ancestor(&mut self, hash: AumHash) -> Result<(), StorageError>;
    /// The recorded hint, if any.
    fn last_active_ancestor(&self) -> Result<Option<AumHash>, StorageError>;
}

/// In-memory [`Chonk`]; deterministic (ordered maps).
#[derive(Clone, Debug, Default)]
pub struct MemChonk {
    aums: BTreeMap<AumHash, Aum>,
    /// parent -> children, in commit order.
    children: BTreeMap<AumHash, Vec<AumHash>>,
    last_active_ancestor: Option<AumHash>,
}

impl MemChonk {
    /// Empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of stored AUMs.
    pub fn len(&self) -> usize {
        self.aums.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.aums.is_empty()
    }

    /// Every stored AUM, by hash.
    pub fn all(&self) -> impl Iterator<Item = (&AumHash, &Aum)> {
        self.aums.iter()
    }
}

impl Chonk for MemChonk {
    fn aum(&self, hash: &AumHash) -> Result<Option<Aum>, StorageError> {
        Ok(self.aums.get(hash).cloned())
    }

    fn child_aums(&self, parent: &AumHash) -> Result<Vec<Aum>, StorageError> {
        Ok(self
            .children
            .get(parent)
            .into_iter()
            .flatten()
            .filter_map(|h| self.aums.get(h).cloned())
            .collect())
    }

    fn commit_verified_aums(&mut self, aums: &[Aum]) -> Result<(), StorageError> {
        for aum in aums {
            let h = aum.hash();
            self.aums.insert(h, aum.clone());
            if let Some(p) = aum.parent() {
                let c = self.children.entry(p).or_default();
                if !c.contains(&h) {
                    c.push(h);
                }
            }
        }
        Ok(())
    }

    fn heads(&self) -> Result<Vec<Aum>, StorageError> {
        Ok(self
            .aums
            .iter()
            .filter(|(h, _)| self.children.get(h).is_none_or(|c| c.is_empty()))
            .map(|(_, a)| a.clone())
            .collect())
    }

    fn set_last_active_ancestor(&mut self, hash: AumHash) -> Result<(), StorageError> {
        self.last_active_ancestor = Some(hash);
        Ok(())
    }

    fn last_active_ancestor(&self) -> Result<Option<AumHash>, StorageError> {
        Ok(self.last_active_ancestor)
    }
}
