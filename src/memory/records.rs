//! Lease records of one in-memory pool, kept in the order they were granted.
//!
//! A pool grants lease ids from its own sequence ([`Records::next_id`]: the
//! sequence number in the id's first six bytes, the rest derived from it and
//! the pool's random key), so a record is found by position in a ring, not by
//! hashing, and records are appended and dropped at the ends. Released and expired records stay readable for the
//! grace after they finished, as on Redis, which at a high lease rate is most
//! of the records held: in a hash map they cost about 70% of an
//! acquire→release cycle at 32 proxies (the table outgrew the caches), in the
//! ring a write at its end.
//!
//! The oldest record leaves the ring when it has been gone for its grace. One
//! that would hold the ring back longer than a grace (a lease much longer than
//! the others) moves to a small map on the side instead, so the ring holds
//! about a grace's worth of records beyond the live ones.
//!
//! A ring slot is 40 bytes ([`Slot`]): every lease's record stays for the
//! grace, so at a high lease rate the ring grows by a slot a lease, and its
//! first-touch page faults were about an eighth of an acquire→release cycle
//! when a slot was 64. The id is not stored: its random bits are derived from
//! the sequence number and the pool's key ([`Records::id_at`]). The status
//! shares a field with the release time; the few records that do not fit
//! (a proxy sequence number past `u32`, a release at the two earliest
//! nanoseconds) live in the side map.

use std::collections::{BTreeSet, VecDeque};
use std::num::NonZeroU32;

use uuid::Uuid;

use crate::lease::LeaseStatus;

/// A time as nanoseconds since the Unix epoch (the storage's clock), or a
/// length of time in nanoseconds: plain integers, so the hot path compares and
/// adds without calendar arithmetic.
pub(super) type Nanos = i64;

/// What the storage keeps of a lease; the pool's name and id and the proxy's
/// endpoint are filled in when a [`crate::Lease`] is handed out (as the Redis
/// storage does), so keeping a record allocates nothing.
#[derive(Debug, Clone, Copy)]
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

/// A record as the ring keeps it (40 bytes; see the module docs).
#[derive(Debug, Clone, Copy)]
struct Slot {
    acquired_at: Nanos,
    expires_at: Nanos,
    /// When it was released, or [`ACTIVE`] or [`EXPIRED`].
    end: Nanos,
    fencing_token: u64,
    /// The proxy's sequence number plus one.
    proxy: NonZeroU32,
    consumer: u32,
}

/// [`Slot::end`] of a live record.
const ACTIVE: Nanos = Nanos::MIN;
/// [`Slot::end`] of an expired record.
const EXPIRED: Nanos = Nanos::MIN + 1;

impl Slot {
    /// The slot of `r`, or `None` when it does not fit one.
    #[inline]
    fn of(r: &Record) -> Option<Slot> {
        let end = match r.status {
            LeaseStatus::Active => ACTIVE,
            LeaseStatus::Expired => EXPIRED,
            LeaseStatus::Released if r.released_at > EXPIRED => r.released_at,
            LeaseStatus::Released => return None,
        };
        let proxy = u32::try_from(r.proxy_seq.checked_add(1)?).ok()?;
        Some(Slot {
            acquired_at: r.acquired_at,
            expires_at: r.expires_at,
            end,
            fencing_token: r.fencing_token,
            proxy: NonZeroU32::new(proxy)?,
            consumer: r.consumer,
        })
    }

    #[inline]
    fn record(&self) -> Record {
        let (status, released_at) = match self.end {
            ACTIVE => (LeaseStatus::Active, 0),
            EXPIRED => (LeaseStatus::Expired, 0),
            at => (LeaseStatus::Released, at),
        };
        Record {
            proxy_seq: u64::from(self.proxy.get() - 1),
            consumer: self.consumer,
            status,
            acquired_at: self.acquired_at,
            expires_at: self.expires_at,
            released_at,
            fencing_token: self.fencing_token,
        }
    }
}

/// Records by grant order; see the module docs.
#[derive(Debug, Default)]
pub(super) struct Records {
    /// How long a record is kept after its lease finished.
    grace: Nanos,
    /// The sequence number of `ring[0]`.
    base: u64,
    /// The pool's key, from which each id's random bits are derived.
    key: (u64, u64),
    /// `None`: removed, or moved to the side map.
    ring: VecDeque<Option<Slot>>,
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

/// A 64-bit mixing function (SplitMix64's finalizer): every output bit
/// depends on every input bit.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Records {
    /// No records yet; finished ones are kept for `grace`; ids derived
    /// with `key` (random, the pool's own).
    pub(super) fn new(grace: Nanos, key: (u64, u64)) -> Self {
        Records {
            grace,
            key,
            ..Records::default()
        }
    }

    /// Keeps finished records for `grace` from now on.
    pub(super) fn set_grace(&mut self, grace: Nanos) {
        self.grace = grace;
        self.idle_until = None;
    }

    /// The id for the next record (see [`Self::id_at`]).
    pub(super) fn next_id(&self) -> Uuid {
        self.id_at(self.base + self.ring.len() as u64)
    }

    /// The id of the record with sequence number `seq`: the number, then
    /// bits derived from it and the pool's key (a version-8 UUID, RFC 9562's
    /// custom layout). They tell a forged or stale id (another pool's, or an
    /// earlier pool's of the same name) from the record's; they are not a
    /// secret (in one process, whoever holds the storage reads its records
    /// anyway). Derived instead of stored: a ring slot is 16 bytes smaller.
    #[inline]
    fn id_at(&self, seq: u64) -> Uuid {
        // One round of mixing (a release checks an id on its way): 64 bits
        // that differ by record, and 16 of the pool's.
        let a = mix(seq ^ self.key.0);
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&seq.to_be_bytes()[2..]);
        bytes[6..14].copy_from_slice(&a.to_be_bytes());
        bytes[14..].copy_from_slice(&self.key.1.to_be_bytes()[..2]);
        uuid::Builder::from_custom_bytes(bytes).into_uuid()
    }

    /// Appends the record of `id`, which must come from [`Self::next_id`] just before.
    pub(super) fn push(&mut self, id: Uuid, record: Record) {
        debug_assert_eq!(seq_of(id), self.base + self.ring.len() as u64);
        match Slot::of(&record) {
            Some(slot) => self.ring.push_back(Some(slot)),
            None => {
                // Kept aside; its place in the ring stays empty.
                self.ring.push_back(None);
                self.side.insert(id, record);
            }
        }
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

    #[inline]
    fn slot(&self, id: Uuid) -> Option<usize> {
        let seq = seq_of(id);
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        match self.ring.get(i) {
            Some(Some(_)) if self.id_at(seq) == id => Some(i),
            _ => None,
        }
    }

    /// The record of `id`, whether or not its grace is over (until purged).
    pub(super) fn peek(&self, id: Uuid) -> Option<Record> {
        match self.slot(id) {
            Some(i) => self.ring[i].as_ref().map(Slot::record),
            None => self.side.get(&id).copied(),
        }
    }

    /// The record of `id` if it exists at `now`.
    pub(super) fn get(&self, id: Uuid, now: Nanos) -> Option<Record> {
        self.peek(id).filter(|r| r.visible(now, self.grace))
    }

    /// Calls `change` with the record of `id` if it exists at `now`, and
    /// keeps what it made of it (see [`Self::finished`]). Inlined, so what
    /// `change` leaves alone is neither decoded nor written back.
    #[inline]
    pub(super) fn update<T>(
        &mut self,
        id: Uuid,
        now: Nanos,
        change: impl FnOnce(&mut Record) -> T,
    ) -> Option<T> {
        let slot = self.slot(id);
        self.touched(slot);
        let grace = self.grace;
        match slot {
            Some(i) => {
                let mut r = self.ring[i].as_ref()?.record();
                if !r.visible(now, grace) {
                    return None;
                }
                let out = change(&mut r);
                match Slot::of(&r) {
                    Some(s) => self.ring[i] = Some(s),
                    None => {
                        self.ring[i] = None;
                        self.side.insert(id, r);
                    }
                }
                Some(out)
            }
            None => {
                let r = self.side.get_mut(&id)?;
                r.visible(now, grace).then(|| change(r))
            }
        }
    }

    /// Call after finishing the record of `id`, with when it is gone.
    pub(super) fn finished(&mut self, id: Uuid, gone_at: Nanos) {
        // A record in the ring has its sequence number's slot there (a
        // record moved aside leaves that slot empty): no need to check the
        // id's other bits again.
        let in_ring = seq_of(id)
            .checked_sub(self.base)
            .and_then(|i| self.ring.get(usize::try_from(i).ok()?))
            .is_some_and(Option::is_some);
        if !self.side.is_empty() && !in_ring && self.side.contains_key(&id) {
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
        let ring = (self.base..)
            .zip(&self.ring)
            .filter_map(|(seq, slot)| Some((self.id_at(seq), slot.as_ref()?.record())));
        ring.chain(self.side.iter().map(|(id, r)| (*id, *r)))
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
            match front.as_ref().map(Slot::record) {
                Some(r) if r.visible(now, grace) => {
                    if self.ring.len() < SIDE_AFTER
                        || r.earliest_gone(grace) <= now.saturating_add(grace)
                    {
                        break;
                    }
                    let id = self.id_at(self.base);
                    self.ring.pop_front();
                    if let Some(at) = r.gone_at(grace) {
                        self.side_gone.insert((at, id));
                    }
                    self.side.insert(id, r);
                }
                Some(_) => {
                    dropped(self.id_at(self.base));
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
            Some(Some(slot)) => slot.record().gone_at(grace).unwrap_or(Nanos::MAX),
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
        assert!(std::mem::size_of::<Option<Slot>>() <= 40);
    }

    #[test]
    fn ids_carry_their_sequence_and_are_found_by_it() {
        let mut recs = Records::new(60 * SEC, (7, 11));
        let t0 = 1_700_000_000 * SEC;
        let ids: Vec<Uuid> = (0..10)
            .map(|_| {
                let id = recs.next_id();
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
    fn records_that_fit_no_slot_live_in_the_side_map() {
        let grace = 60 * SEC;
        let mut recs = Records::new(grace, (7, 11));
        let t0 = 1_700_000_000 * SEC;
        // A proxy sequence number past u32, and a release at the earliest times.
        let far = recs.next_id();
        recs.push(
            far,
            Record {
                proxy_seq: u64::from(u32::MAX),
                ..record(t0, 30)
            },
        );
        let early = recs.next_id();
        recs.push(early, record(Nanos::MIN, 30));
        let plain = recs.next_id();
        recs.push(plain, record(t0, 30));
        assert_eq!(recs.side.len(), 1);
        assert_eq!(
            recs.peek(far).map(|r| r.proxy_seq),
            Some(u64::from(u32::MAX))
        );
        for (id, at) in [(early, Nanos::MIN + 1), (plain, t0)] {
            recs.update(id, at, |r| {
                r.status = LeaseStatus::Released;
                r.released_at = at;
            })
            .expect("live");
            recs.finished(id, at.saturating_add(grace));
        }
        assert_eq!(recs.side.len(), 2, "moved aside as it was released");
        let r = recs.peek(early).expect("kept");
        assert_eq!(
            (r.status, r.released_at),
            (LeaseStatus::Released, Nanos::MIN + 1)
        );
        let r = recs.peek(plain).expect("kept");
        assert_eq!((r.status, r.released_at), (LeaseStatus::Released, t0));
        // Another key: other ids for the same sequence numbers.
        assert_ne!(Records::new(grace, (8, 12)).id_at(0), far);
        let mut dropped = Vec::new();
        recs.purge(t0 + grace, |id| dropped.push(id));
        assert!(dropped.contains(&early) && dropped.contains(&plain));
        assert!(recs.peek(far).is_some(), "still live");
    }

    #[test]
    fn finished_records_go_after_their_grace_and_a_long_lease_moves_aside() {
        let grace = 60 * SEC;
        let mut recs = Records::new(60 * SEC, (7, 11));
        let t0 = 1_700_000_000 * SEC;
        let long = recs.next_id();
        recs.push(long, record(t0, 7 * 24 * 3600));
        let mut short = Vec::new();
        for _ in 0..200 {
            let id = recs.next_id();
            recs.push(id, record(t0, 30));
            short.push(id);
        }
        // All short ones released at t0 + 1 s.
        let t1 = t0 + SEC;
        for id in &short {
            recs.update(*id, t1, |r| {
                r.status = LeaseStatus::Released;
                r.released_at = t1;
            })
            .expect("live");
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
        recs.update(long, t2, |r| {
            r.status = LeaseStatus::Released;
            r.released_at = t2;
        })
        .expect("live");
        recs.finished(long, t2 + grace);
        recs.purge(t2 + grace, |id| dropped.push(id));
        assert_eq!(dropped.last(), Some(&long));
        assert!(recs.side.is_empty() && recs.side_gone.is_empty());
    }
}
