//! Synchronization between two replicas: offers and the AUMs the other side lacks.

use crate::authority::{compute_state_at, fast_forward, Authority};
use crate::hash::{AumHash, HashParseError};
use crate::storage::Chonk;
use crate::types::{Aum, AumKind};
use crate::TkaError;

/// Max iterations searching for any intersection.
pub const MAX_SYNC_ITER: usize = 2000;
/// Max iterations searching for a head intersection (and building an offer).
pub const MAX_SYNC_HEAD_INTERSECTION_ITER: usize = 1000;

/// A summary of a replica's chain: its head, the checkpoints on the way back (newest first),
/// and last the oldest stored ancestor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncOffer {
    /// The replica's head.
    pub head: AumHash,
    /// Checkpoint hashes newest first, then the oldest ancestor.
    pub ancestors: Vec<AumHash>,
}

impl SyncOffer {
    /// From the text fields of a sync request (`Head`, `Ancestors`).
    pub fn from_text(head: &str, ancestors: &[String]) -> Result<Self, HashParseError> {
        Ok(Self {
            head: AumHash::parse(head)?,
            ancestors: ancestors
                .iter()
                .map(|a| AumHash::parse(a))
                .collect::<Result<_, _>>()?,
        })
    }

    /// To the text fields of a sync request/response.
    pub fn to_text(&self) -> (String, Vec<String>) {
        (
            self.head.to_text(),
            self.ancestors.iter().map(AumHash::to_text).collect(),
        )
    }
}

enum Intersection {
    UpToDate,
    Head(AumHash),
    Tail(AumHash),
}

fn compute_sync_intersection<C: Chonk + ?Sized>(
    storage: &C,
    local: &SyncOffer,
    remote: &SyncOffer,
) -> Result<Intersection, TkaError> {
    if remote.head == local.head {
        return Ok(Intersection::UpToDate);
    }
    // Head intersection: the remote's head is on our chain, behind our head.
    if storage.aum(&remote.head)?.is_some() {
        let mut curs = local.head;
        for _ in 0..MAX_SYNC_HEAD_INTERSECTION_ITER {
            let Some(aum) = storage.aum(&curs)? else {
                break;
            };
            let h = aum.hash();
            if h == remote.head {
                return Ok(Intersection::Head(h));
            }
            match aum.parent() {
                Some(p) => curs = p,
                None => break,
            }
        }
    }
    // Tail intersection: one of the remote's ancestors leads to our head.
    for a in &remote.ancestors {
        let state = match compute_state_at(storage, MAX_SYNC_ITER, *a) {
            Ok(s) => s,
            Err(TkaError::NotFound(h)) if h == *a => continue,
            Err(e) => return Err(TkaError::chain(format!("computeStateAt: {e}"))),
        };
        let (end, _) = fast_forward(storage, MAX_SYNC_ITER, state, &mut |c, _| {
            c.hash() == local.head
        })?;
        if end.hash() == local.head {
            return Ok(Intersection::Tail(*a));
        }
    }
    Err(TkaError::NoIntersection)
}

impl Authority {
    /// This replica's offer.
    pub fn sync_offer<C: Chonk + ?Sized>(&self, storage: &C) -> Result<SyncOffer, TkaError> {
        let oldest = self.oldest_ancestor().hash();
        let mut out = SyncOffer {
            head: self.head(),
            ancestors: Vec::new(),
        };
        let mut curs = self.head();
        for _ in 0..MAX_SYNC_HEAD_INTERSECTION_ITER {
            let Some(aum) = storage.aum(&curs)? else {
                break;
            };
            if aum.hash() == oldest {
                break;
            }
            if aum.message_kind == AumKind::CHECKPOINT {
                out.ancestors.push(curs);
            }
            match aum.parent() {
                Some(p) => curs = p,
                None => break,
            }
        }
        out.ancestors.push(oldest);
        Ok(out)
    }

    /// The AUMs (oldest first) a remote with offer `remote` lacks, along our active chain.
    /// Empty if both heads are equal; [`TkaError::NoIntersection`] if the chains share nothing.
    pub fn missing_aums<C: Chonk + ?Sized>(
        &self,
        storage: &C,
        remote: &SyncOffer,
    ) -> Result<Vec<Aum>, TkaError> {
        let local = self.sync_offer(storage)?;
        let from = match compute_sync_intersection(storage, &local, remote)? {
            Intersection::UpToDate => return Ok(Vec::new()),
            Intersection::Head(h) | Intersection::Tail(h) => h,
        };
        let state = compute_state_at(storage, MAX_SYNC_ITER, from)?;
        let mut out = Vec::new();
        fast_forward(storage, MAX_SYNC_ITER, state, &mut |c, _| {
            if c.hash() != from {
                out.push(c.clone());
            }
            false
        })?;
        Ok(out)
    }
}
