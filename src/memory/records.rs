//! Lease records of one in-memory pool, kept in the order they were granted.
//!
//! A pool grants lease ids from its own sequence ([`Records::next_id`]: the
//! sequence number in the id's first six bytes, the rest random), so a record
//! is found by position in a ring, not by hashing, and records are appended
//! and dropped at the ends. Released and expired records stay readable for the
//! grace after they finished, as on Redis, which at a high lease rate is most
//! of the records held: in a hash map they cost about 70% of an
//! acquire→release cycle at 32 proxies (the table outgrew the caches), in the
//! ring a write at its end.
//!
//! The oldest record leaves the ring when it has been gone for its grace. One
//! that would hold the ring back longer than a grace (a lease much longer than
//! the others) moves to a small map on the side instead, so the ring holds
//! about a grace's worth of records beyond the live ones.

use std::collections::{BTreeSet, VecDeque};

use uuid::Uuid;

use crate::lease::LeaseStatus;

/// A time as nanoseconds since the Unix epoch (the storage's clock), or a
/// length of time in nanoseconds: plain integers, so the hot path compares and
/// adds without calendar arithmetic.
pub(super) type Nanos = i64;

/// What the storage keeps of a lease; the pool's name and id and the proxy's
/// endpoint are filled in when a [`crate::Lease`] is handed out (as the Redis
/// storage does), so keeping a record allocates nothing.
#[derive(Debug, Clone)]
pub(super) struct Record {
    /// The proxy's sequence number in its pool.
    pub(super) proxy_seq: u64,
    /// The holder: its place in the storage's list of consumers (which only
    /// grows), so a record is small and holds no reference count.
    pub(super) consumer: u32,
    pub(super) status: LeaseStatus,
    pub(super) acquired_at: Nanos,
    pub(super) expires_at: Nanos,
    /// When it was released (only meant when `status` is `Released`).
    pub(super) released_at: Nanos,
    pub(super) fencing_token: u64,
}

impl Record {
    /// When it finished: released, or expired at its expiry (`None` while live).
    pub(super) fn finished_at(&self) -> Option<Nanos> {
        match self.status {
            LeaseStatus::Active => None,
            LeaseStatus::Released => Some(self.released_at),
            LeaseStatus::Expired => Some(self.expires_at),
        }
    }

    /// Once finished, when the record is gone: a grace after it finished.
    fn gone_at(&self, grace: Nanos) -> Option<Nanos> {
        self.finished_at().map(|at| at.saturating_add(grace))
    }

    /// Whether the record still exists at `now`.
    fn visible(&self, now: Nanos, grace: Nanos) -> bool {
        self.gone_at(grace).is_none_or(|at| at > now)
    }

    /// The earliest time the record can be gone: its end, or its expiry plus
    /// `grace` while it is live.
    fn earliest_gone(&self, grace: Nanos) -> Nanos {
        self.gone_at(grace)
            .unwrap_or(self.expires_at.saturating_add(grace))
    }
}

/// Records by grant order; see the module docs.
#[derive(Debug, Default)]
pub(super) struct Records {
    /// How long a record is kept after its lease finished.
    grace: Nanos,
    /// The sequence number of `ring[0]`.
    base: u64,
    ring: VecDeque<Option<(Uuid, Record)>>,
    /// Records moved out of the ring's way, and when the finished ones are gone.
    side: super::FastMap<Uuid, Record>,
    side_gone: BTreeSet<(Nanos, Uuid)>,
    /// Before this time [`Self::purge`] has nothing to do (`None`: it may
    /// have now). Only changes at the ring's front or in the side map
    /// move it, so most acquires and releases skip the purge.
    idle_until: Option<Nanos>,
}

/// Rings shorter than this are never cleared to the side map.
const SIDE_AFTER: usize = 64;

/// The sequence number a lease id of this storage carries (first six bytes).
fn seq_of(id: Uuid) -> u64 {
    let b = id.as_bytes();
    u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
}

impl Records {
    /// No records yet; finished ones are kept for `grace`.
    pub(super) fn new(grace: Nanos) -> Self {
        Records {
            grace,
            ..Records::default()
        }
    }

    /// Keeps finished records for `grace` from now on.
    pub(super) fn set_grace(&mut self, grace: Nanos) {
        self.grace = grace;
        self.idle_until = None;
    }

    /// The id for the next record: its sequence number, then random bits from
    /// `rng` (a version-8 UUID, RFC 9562's custom layout). The random bits tell
    /// a forged or stale id from the record's; they are not a secret (in one
    /// process, whoever holds the storage reads its records anyway).
    pub(super) fn next_id(&self, rng: &mut fastrand::Rng) -> Uuid {
        let seq = self.base + self.ring.len() as u64;
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&seq.to_be_bytes()[2..]);
        bytes[6..14].copy_from_slice(&rng.u64(..).to_be_bytes());
        bytes[14..].copy_from_slice(&rng.u16(..).to_be_bytes());
        uuid::Builder::from_custom_bytes(bytes).into_uuid()
    }

    /// Appends the record of `id`, which must come from [`Self::next_id`] just before.
    pub(super) fn push(&mut self, id: Uuid, record: Record) {
        debug_assert_eq!(seq_of(id), self.base + self.ring.len() as u64);
        self.ring.push_back(Some((id, record)));
        // A new front, or a ring now long enough to clear to the side map.
        if self.ring.len() == 1 || self.ring.len() == SIDE_AFTER {
            self.idle_until = None;
        }
    }

    /// Notes a change to the record in ring slot `slot` (`None`: in the side
    /// map) that may give [`Self::purge`] something to do.
    fn touched(&mut self, slot: Option<usize>) {
        if slot.is_none_or(|i| i == 0) {
            self.idle_until = None;
        }
    }

    fn slot(&self, id: Uuid) -> Option<usize> {
        let i = usize::try_from(seq_of(id).checked_sub(self.base)?).ok()?;
        match self.ring.get(i) {
            Some(Some((at, _))) if *at == id => Some(i),
            _ => None,
        }
    }

    /// The record of `id`, whether or not its grace is over (until purged).
    pub(super) fn peek(&self, id: Uuid) -> Option<&Record> {
        match self.slot(id) {
            Some(i) => self.ring[i].as_ref().map(|(_, r)| r),
            None => self.side.get(&id),
        }
    }

    /// The record of `id` if it exists at `now`.
    pub(super) fn get(&self, id: Uuid, now: Nanos) -> Option<&Record> {
        let r = match self.slot(id) {
            Some(i) => self.ring[i].as_ref().map(|(_, r)| r),
            None => self.side.get(&id),
        }?;
        r.visible(now, self.grace).then_some(r)
    }

    /// The record of `id` if it exists at `now`, to change it (see [`Self::finished`]).
    pub(super) fn get_mut(&mut self, id: Uuid, now: Nanos) -> Option<&mut Record> {
        let slot = self.slot(id);
        self.touched(slot);
        let grace = self.grace;
        let r = match slot {
            Some(i) => self.ring[i].as_mut().map(|(_, r)| r),
            None => self.side.get_mut(&id),
        }?;
        r.visible(now, grace).then_some(r)
    }

    /// Call after finishing the record of `id`, with when it is gone.
    pub(super) fn finished(&mut self, id: Uuid, gone_at: Nanos) {
        if !self.side.is_empty() && self.slot(id).is_none() && self.side.contains_key(&id) {
            self.side_gone.insert((gone_at, id));
        }
    }

    /// Removes the record of `id` at once.
    pub(super) fn remove(&mut self, id: Uuid) {
        let slot = self.slot(id);
        self.touched(slot);
        match slot {
            Some(i) => self.ring[i] = None,
            None => {
                if let Some(r) = self.side.remove(&id) {
                    if let Some(at) = r.gone_at(self.grace) {
                        self.side_gone.remove(&(at, id));
                    }
                }
            }
        }
    }

    /// The ids and records that pass `keep`, in no particular order.
    pub(super) fn ids_where(&self, keep: impl Fn(&Record) -> bool) -> Vec<Uuid> {
        let ring = self.ring.iter().flatten().map(|(id, r)| (*id, r));
        ring.chain(self.side.iter().map(|(id, r)| (*id, r)))
            .filter(|(_, r)| keep(r))
            .map(|(id, _)| id)
            .collect()
    }

    /// Drops the records gone by `now`, calling `dropped` with each id, and
    /// moves a record that would hold the ring back past `now + grace` to the
    /// side map. Before [`Self::idle_until`] (most calls) it is one
    /// comparison, inlined into the caller.
    #[inline]
    pub(super) fn purge(&mut self, now: Nanos, dropped: impl FnMut(Uuid)) {
        if self.idle_until.is_some_and(|until| now < until) {
            return;
        }
        self.purge_now(now, dropped);
    }

    /// [`Self::purge`] past its quick check.
    fn purge_now(&mut self, now: Nanos, mut dropped: impl FnMut(Uuid)) {
        let grace = self.grace;
        while let Some(front) = self.ring.front() {
            match front {
                Some((_, r)) if r.visible(now, grace) => {
                    if self.ring.len() < SIDE_AFTER
                        || r.earliest_gone(grace) <= now.saturating_add(grace)
                    {
                        break;
                    }
                    if let Some(Some((id, r))) = self.ring.pop_front() {
                        if let Some(at) = r.gone_at(grace) {
                            self.side_gone.insert((at, id));
                        }
                        self.side.insert(id, r);
                    }
                }
                Some((id, _)) => {
                    dropped(*id);
                    self.ring.pop_front();
                }
                None => {
                    self.ring.pop_front();
                }
            }
            self.base += 1;
        }
        while let Some(&(at, id)) = self.side_gone.first() {
            if at > now {
                break;
            }
            self.side_gone.pop_first();
            self.side.remove(&id);
            dropped(id);
        }
        // Nothing to do until the front's record or the first of the side
        // map is gone (a live front stays until it finishes, which touches it).
        let front = match self.ring.front() {
            Some(Some((_, r))) => r.gone_at(grace).unwrap_or(Nanos::MAX),
            _ => Nanos::MAX,
        };
        let side = self.side_gone.first().map_or(Nanos::MAX, |&(at, _)| at);
        self.idle_until = Some(front.min(side));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Nanos = 1_000_000_000;

    fn record(at: Nanos, secs: i64) -> Record {
        Record {
            proxy_seq: 0,
            consumer: 0,
            status: LeaseStatus::Active,
            acquired_at: at,
            expires_at: at + secs * SEC,
            released_at: 0,
            fencing_token: 1,
        }
    }

    #[test]
    fn a_kept_record_is_small() {
        // Every lease's record stays for the grace: its size is the memory
        // (and the first-touch page faults) a lease costs.
        assert!(std::mem::size_of::<Option<(Uuid, Record)>>() <= 64);
    }

    #[test]
    fn ids_carry_their_sequence_and_are_found_by_it() {
        let mut recs = Records::new(60 * SEC);
        let mut rng = fastrand::Rng::with_seed(7);
        let t0 = 1_700_000_000 * SEC;
        let ids: Vec<Uuid> = (0..10)
            .map(|_| {
                let id = recs.next_id(&mut rng);
                recs.push(id, record(t0, 30));
                id
            })
            .collect();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(seq_of(*id), i as u64);
            assert_eq!(id.get_version_num(), 8);
            assert!(recs.get(*id, t0).is_some());
        }
        // Same sequence, other random bits: not ours.
        let mut forged = *ids[3].as_bytes();
        forged[15] ^= 1;
        assert!(recs.get(Uuid::from_bytes(forged), t0).is_none());
    }

    #[test]
    fn finished_records_go_after_their_grace_and_a_long_lease_moves_aside() {
        let grace = 60 * SEC;
        let mut recs = Records::new(60 * SEC);
        let mut rng = fastrand::Rng::with_seed(7);
        let t0 = 1_700_000_000 * SEC;
        let long = recs.next_id(&mut rng);
        recs.push(long, record(t0, 7 * 24 * 3600));
        let mut short = Vec::new();
        for _ in 0..200 {
            let id = recs.next_id(&mut rng);
            recs.push(id, record(t0, 30));
            short.push(id);
        }
        // All short ones released at t0 + 1 s.
        let t1 = t0 + SEC;
        for id in &short {
            let r = recs.get_mut(*id, t1).expect("live");
            r.status = LeaseStatus::Released;
            r.released_at = t1;
            recs.finished(*id, t1 + grace);
        }
        let mut dropped = Vec::new();
        recs.purge(t1, |id| dropped.push(id));
        assert!(dropped.is_empty());
        assert!(recs.get(short[0], t1 + grace - 1_000_000).is_some());
        assert!(
            recs.get(short[0], t1 + grace).is_none(),
            "gone exactly at its end"
        );
        recs.purge(t1 + grace, |id| dropped.push(id));
        assert_eq!(
            dropped.len(),
            200,
            "the week-long lease does not hold them back"
        );
        assert!(recs.ring.is_empty() && recs.side.len() == 1);
        assert!(recs.get(long, t1 + grace).is_some());
        // It ends; gone a grace later, from the side map.
        let t2 = t1 + grace;
        let r = recs.get_mut(long, t2).expect("live");
        r.status = LeaseStatus::Released;
        r.released_at = t2;
        recs.finished(long, t2 + grace);
        recs.purge(t2 + grace, |id| dropped.push(id));
        assert_eq!(dropped.last(), Some(&long));
        assert!(recs.side.is_empty() && recs.side_gone.is_empty());
    }
}
