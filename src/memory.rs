//! [`InMemoryStorage`]: the embedded, indexed default storage.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::clock::{Clock, SystemClock};
use crate::consumer::Consumer;
use crate::error::{Error, LostReason, Result};
use crate::fair::{QueuedTicket, WaitTicket};
use crate::filters::{FilterAttribute, ProxyFilters};
use crate::health::HealthCheckResult;
use crate::lease::{Lease, LeaseStatus, ReleaseOutcome, Rotation};
use crate::names::{ConsumerName, PoolName};
use crate::pool::IndexOrder;
use crate::pool::ProxyPool;
use crate::proxy::{Proxy, ProxyEndpoint, ProxyStatus};
use crate::selector::SelectorStrategy;
use crate::session::{SessionBinding, StickySession};
use crate::site::{Site, SiteStanding};
use crate::stats::PoolStats;
use crate::storage::{AcquireRequest, AdminStorage, LeaseStorage, DEFAULT_RECORD_GRACE};
use crate::success::SuccessScore;
use records::{Nanos, Record, Records};

mod records;
mod sessions;
mod sites;
mod tickets;

/// A thread-safe storage that keeps everything in this process.
///
/// It is the default for scripts, tests and single-process crawlers. Several
/// managers in one process may share it (wrap it in an `Arc`, or clone the manager);
/// for several processes or hosts use the Redis storage.
///
/// # Cost
///
/// Selection never scans the pool. Each pool keeps, for every indexed value
/// (the whole pool, and each country, source, city, ISP and ASN), the set of
/// *available* proxies (active with a free slot) three ways: by insertion order
/// (first available, round robin), by live lease count (least used) and as a dense
/// array (random). An acquire picks the smallest index that the filter's exact-match
/// constraints allow and walks it in the selector's order until a proxy passes the
/// rest of the filter. With no filter, or a filter of exact-match attributes, the
/// first candidate matches, so acquire and release cost O(log n) in the pool size.
/// Filters that an index cannot answer (a radius, `any_of`, `none_of`) walk the
/// chosen index until the first match, and scan it when nothing matches.
///
/// The usual acquire→release of a proxy that stays available moves nothing in
/// the by-load order: a proxy's key there is a lower bound of its lease count,
/// lowered by a release only below it and raised by `least_used` when it meets
/// a key that is behind. Live leases wait for their expiry in a heap; a
/// release takes its lease out when it is the heap's last entry (the newest
/// lease of the usual duration), and otherwise leaves it to be dropped when it
/// comes up (or in bulk, when such entries outnumber the live ones). The index
/// that serves a filter is
/// worked out once for the filters' `Arc`, which a worker usually sends with
/// every acquire (`options.clone()`).
///
/// A lease's record is kept for the record grace after it finished (see
/// [`InMemoryStorage::with_record_grace`]), in a ring in grant order: 40
/// bytes per lease, so memory grows with the lease rate times the grace.
///
/// # Time
///
/// Expiry follows a [`Clock`], the system clock by default; tests inject a
/// [`crate::clock::ManualClock`] and move time forward instead of sleeping.
///
/// ```
/// use lighthouse_lease::{InMemoryStorage, ProxyManager};
/// use lighthouse_lease::clock::ManualClock;
///
/// let clock = ManualClock::new();
/// let manager = ProxyManager::new(InMemoryStorage::with_clock(clock.clone()));
/// ```
#[derive(Debug)]
pub struct InMemoryStorage {
    state: Mutex<State>,
    clock: Arc<dyn Clock>,
    /// Whether `clock` is the [`SystemClock`].
    system_clock: bool,
    /// How long finished lease records are kept.
    grace: Nanos,
}

impl Default for InMemoryStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryStorage {
    /// An empty storage on the system clock.
    pub fn new() -> Self {
        Self::with_clock(SystemClock)
    }

    /// An empty storage on the given clock.
    pub fn with_clock(clock: impl Clock) -> Self {
        let system_clock = (&clock as &dyn std::any::Any).is::<SystemClock>();
        InMemoryStorage {
            state: Mutex::new(State::default()),
            system_clock,
            clock: Arc::new(clock),
            grace: to_nanos(DEFAULT_RECORD_GRACE),
        }
    }

    /// How long finished lease records are kept after their expiry (default
    /// [`DEFAULT_RECORD_GRACE`]).
    #[must_use]
    pub fn with_record_grace(mut self, grace: Duration) -> Self {
        self.grace = to_nanos(grace);
        for ps in self.lock().pools.values_mut() {
            ps.leases.set_grace(self.grace);
        }
        self
    }

    /// Seeds the random selector, for reproducible runs.
    #[must_use]
    pub fn with_seed(self, seed: u64) -> Self {
        self.lock().rng = fastrand::Rng::with_seed(seed);
        self
    }

    /// Now, on the storage's clock. On the system clock, the first read of
    /// a manager's call is kept for the manager, which times the call from
    /// it instead of reading the counter itself (see
    /// [`crate::clock::watch_clock`]).
    #[inline]
    fn now(&self) -> Nanos {
        if self.system_clock {
            crate::clock::system_nanos_for(self as *const Self as usize)
        } else {
            self.clock.now_nanos()
        }
    }

    #[inline]
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // No method panics half-way through a change, so a poisoned lock still
        // guards consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The in-memory acquire (see [`LeaseStorage::acquire`]).
    fn acquire_at_once(&self, request: &AcquireRequest) -> Result<Option<Lease>> {
        request.validate()?;
        let duration = to_nanos(request.duration);
        let now = self.now();
        let mut guard = self.lock();
        let State {
            pools,
            consumers,
            consumer_list,
            last_consumer,
            rng,
            freed,
            ..
        } = &mut *guard;
        let Some(ps) = pools.get_mut(&request.pool_name) else {
            return Err(Error::PoolNotFound {
                name: request.pool_name.to_string(),
            });
        };
        ps.pool
            .indexes
            .check_selector(&request.pool_name, request.selector)?;
        let known = last_consumer
            .as_ref()
            .filter(|(name, _)| name.same_text(&request.consumer_name))
            .map(|&(_, at)| at);
        let consumer = match known {
            Some(at) => at,
            None => {
                let Some(at) = consumer_at(
                    consumers,
                    consumer_list,
                    &request.consumer_name,
                    request.register_consumer,
                )?
                else {
                    return Err(Error::ConsumerNotFound {
                        name: request.consumer_name.to_string(),
                    });
                };
                *last_consumer = Some((request.consumer_name.clone(), at));
                at
            }
        };
        let holder = usize::try_from(consumer)
            .ok()
            .and_then(|at| consumer_list.get(at))
            .ok_or_else(|| Error::backend("registered consumer vanished", None))?;
        ps.reclaim(now, self.grace);
        if let Some(request_id) = &request.request_id {
            if let Some(earlier) = ps
                .requests
                .get(request_id)
                .and_then(|&id| ps.lease(id, now, consumer_list))
            {
                // Served by its earlier lease: a fair waiter leaves the
                // queue, as when it is granted one.
                if let Some(ticket) = &request.ticket {
                    if ps.tickets.remove(ticket.number()) && !ps.tickets.is_empty() {
                        if let Some(tx) = freed.get(&request.pool_name) {
                            let _ = tx.send(());
                        }
                    }
                }
                return Ok(Some(earlier));
            }
        }
        // A fair waiter takes a proxy only at the head of the queue.
        let mut queued_behind = false;
        if let Some(ticket) = &request.ticket {
            let (head, more) = ps
                .tickets
                .turn(ticket.number(), now, to_nanos(ticket.ttl()));
            if !head {
                return Ok(None);
            }
            queued_behind = more;
        }
        let site = request.site.as_ref();
        let kept = request
            .session
            .as_ref()
            .and_then(|s| ps.session_proxy(s, &request.filters, site, now));
        let selector = ps.explore(request.selector, rng);
        let picked = match (kept, site) {
            (Some(seq), _) => Some(seq),
            (None, Some(site)) if !ps.sites.is_empty() => {
                let sites = std::mem::take(&mut ps.sites);
                let blocked = |id: Uuid| sites.blocks(site.as_str(), id, now);
                let seq = ps.select(&request.filters, selector, rng, Some(&blocked));
                ps.sites = sites;
                seq
            }
            (None, _) => ps.select(&request.filters, selector, rng, None),
        };
        let Some(seq) = picked else {
            return Ok(None);
        };
        let Some(entry) = ps.change_proxy(seq, |p| p.current_leases += 1) else {
            return Err(Error::backend("selected proxy vanished", None));
        };
        let (proxy_id, endpoint) = (entry.proxy.id, Arc::clone(&entry.endpoint));
        if let Some(rate) = ps.pool.rate_limit {
            // It rests before its next lease (it was available: no cooldown).
            let until = now.saturating_add(to_nanos(rate.spacing()));
            ps.rests.insert(proxy_id, until);
            ps.change_proxy(seq, |p| p.rest_until = Some(to_time(until)));
            // Available, it had no entry in `cooling`: no scan for one.
            ps.cooling.insert((until, proxy_id));
        }
        // Strictly increasing per pool (so per proxy), with the clock as a floor so
        // a pool created again never reuses a token.
        let floor = u64::try_from(now / 1_000).unwrap_or(0);
        let expires_at = now.saturating_add(duration);
        ps.fence = (ps.fence + 1).max(floor);
        let id = ps.leases.next_id();
        ps.live.push(expires_at, id);
        ps.leases.push(
            id,
            Record {
                proxy_seq: seq,
                consumer,
                status: LeaseStatus::Active,
                acquired_at: now,
                expires_at,
                released_at: 0,
                fencing_token: ps.fence,
            },
        );
        if let Some(request_id) = &request.request_id {
            ps.requests.insert(request_id.clone(), id);
            ps.request_of.insert(id, request_id.clone());
        }
        if let Some(session) = &request.session {
            let until = now.saturating_add(to_nanos(session.ttl_for(request.duration)));
            ps.sessions.bind(&session.id, seq, until);
        }
        if let Some(ticket) = &request.ticket {
            // Served: out of the queue; the next waiter may be served too.
            ps.tickets.remove(ticket.number());
            if queued_behind {
                if let Some(tx) = freed.get(&request.pool_name) {
                    let _ = tx.send(());
                }
            }
        }
        // Built last, where it is returned (not moved there).
        Ok(Some(Lease {
            fencing_token: ps.fence,
            id,
            proxy_id,
            consumer_id: holder.id,
            consumer_name: holder.name.clone(),
            pool_id: ps.pool.id,
            pool_name: ps.pool.name.clone(),
            status: LeaseStatus::Active,
            acquired_at: to_time(now),
            expires_at: to_time(expires_at),
            released_at: None,
            proxy: endpoint,
        }))
    }
}

/// Sort key of a proxy in the lowest-latency order (never measured: last).
/// Maps keyed by ids and names the storage made or checked: foldhash, seeded per
/// process, instead of SipHash (hashing was a tenth of a cycle at 32 proxies).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

fn fast_map<K, V>() -> FastMap<K, V> {
    HashMap::with_hasher(foldhash::fast::RandomState::default())
}

fn latency_key(p: &Proxy) -> u64 {
    p.latency_ms.map_or(u64::MAX, u64::from)
}

/// A length of time in nanoseconds (saturating: about 292 years at most).
fn to_nanos(d: Duration) -> Nanos {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

const SECOND: Nanos = 1_000_000_000;
const DAY: Nanos = 86_400 * SECOND;

thread_local! {
    /// When the last day converted on this thread began, and its date.
    static LAST_DAY: std::cell::Cell<(Nanos, chrono::NaiveDate)> =
        const { std::cell::Cell::new((Nanos::MIN, chrono::NaiveDate::MIN)) };
}

/// A storage time as callers see it. The calendar date of the last day
/// converted on this thread is kept with when that day began: turning a day
/// number into a date is most of the cost of a conversion, and the times of
/// one storage share their day, so a time of that day is its date and the
/// time since the day began (no division by the day's length).
#[inline]
fn to_time(at: Nanos) -> DateTime<Utc> {
    let (start, date) = LAST_DAY.get();
    match at
        .checked_sub(start)
        .filter(|within| (0..DAY).contains(within))
    {
        Some(within) => time_of_day(date, within, at),
        None => to_time_new_day(at),
    }
}

/// [`to_time`] of a time on another day than the last one's.
#[cold]
fn to_time_new_day(at: Nanos) -> DateTime<Utc> {
    let (day, within) = (at.div_euclid(DAY), at.rem_euclid(DAY));
    let date = DateTime::from_timestamp_nanos(at).date_naive();
    // Kept unless the day began before the earliest time (its first hours).
    if let Some(start) = day.checked_mul(DAY) {
        LAST_DAY.set((start, date));
    }
    time_of_day(date, within, at)
}

/// The time `within` (in `0..DAY`) after the start of `date`, which is `at`.
#[inline]
fn time_of_day(date: chrono::NaiveDate, within: Nanos, at: Nanos) -> DateTime<Utc> {
    // Both within range: `within` is in 0..DAY.
    let secs = u32::try_from(within / SECOND).unwrap_or(0);
    let nanos = u32::try_from(within % SECOND).unwrap_or(0);
    match chrono::NaiveTime::from_num_seconds_from_midnight_opt(secs, nanos) {
        Some(time) => date.and_time(time).and_utc(),
        None => DateTime::from_timestamp_nanos(at),
    }
}

#[derive(Debug)]
struct State {
    /// "Capacity may have freed" notifications, per pool name.
    freed: HashMap<PoolName, tokio::sync::broadcast::Sender<()>>,
    pools: Pools,
    pool_names: FastMap<Uuid, PoolName>,
    proxy_pools: FastMap<Uuid, PoolName>,
    /// Consumers in the order they were registered (lease records refer to
    /// them by position), and their positions by name.
    consumer_list: Vec<Consumer>,
    consumers: FastMap<ConsumerName, u32>,
    /// The name an acquire asked for last and its position: the next acquire
    /// of a worker brings a clone of the same name (its options'), found by
    /// identity instead of by hashing it.
    last_consumer: Option<(ConsumerName, u32)>,
    rng: fastrand::Rng,
}

impl Default for State {
    fn default() -> Self {
        State {
            freed: HashMap::new(),
            pools: Pools::default(),
            pool_names: fast_map(),
            proxy_pools: fast_map(),
            consumer_list: Vec::new(),
            consumers: fast_map(),
            last_consumer: None,
            rng: fastrand::Rng::new(),
        }
    }
}

/// The pools, by name. The one found last is tried first, by comparing its
/// name (a few words) instead of hashing it: a worker's calls go to one pool
/// (hashing the name was about 90 instructions of each acquire and release).
#[derive(Debug, Default)]
struct Pools {
    /// Pools in slots that never move (a removed pool's slot is reused).
    slots: Vec<Option<PoolState>>,
    by_name: FastMap<PoolName, usize>,
    free: Vec<usize>,
    /// The slot found last.
    last: std::cell::Cell<usize>,
}

impl Pools {
    /// The slot of the pool named `name`.
    fn slot(&self, name: &PoolName) -> Option<usize> {
        let last = self.last.get();
        if let Some(Some(ps)) = self.slots.get(last) {
            if ps.pool.name == *name {
                return Some(last);
            }
        }
        let at = *self.by_name.get(name)?;
        self.last.set(at);
        Some(at)
    }

    fn get(&self, name: &PoolName) -> Option<&PoolState> {
        self.slots.get(self.slot(name)?)?.as_ref()
    }

    fn get_mut(&mut self, name: &PoolName) -> Option<&mut PoolState> {
        let at = self.slot(name)?;
        self.slots.get_mut(at)?.as_mut()
    }

    fn contains_key(&self, name: &PoolName) -> bool {
        self.by_name.contains_key(name)
    }

    /// Adds a pool under a name no pool has.
    fn insert(&mut self, name: PoolName, ps: PoolState) {
        let at = match self.free.pop() {
            Some(at) => at,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        if let Some(slot) = self.slots.get_mut(at) {
            *slot = Some(ps);
            self.by_name.insert(name, at);
        }
    }

    fn remove(&mut self, name: &PoolName) -> Option<PoolState> {
        let at = self.by_name.remove(name)?;
        let ps = self.slots.get_mut(at)?.take();
        self.free.push(at);
        ps
    }

    fn values(&self) -> impl Iterator<Item = &PoolState> {
        self.slots.iter().flatten()
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut PoolState> {
        self.slots.iter_mut().flatten()
    }
}

/// [`State::consumer_at`], on the two fields it needs (so a pool can be
/// borrowed meanwhile).
fn consumer_at(
    consumers: &mut FastMap<ConsumerName, u32>,
    list: &mut Vec<Consumer>,
    name: &ConsumerName,
    register: bool,
) -> Result<Option<u32>> {
    if let Some(&at) = consumers.get(name) {
        return Ok(Some(at));
    }
    if !register {
        return Ok(None);
    }
    let at = u32::try_from(list.len())
        .map_err(|_| Error::InvalidArgument("too many consumers".into()))?;
    list.push(Consumer::new(name)?);
    consumers.insert(name.clone(), at);
    Ok(Some(at))
}

/// Position of an index in `PoolState::indexes`; 0 is the whole pool.
type IndexId = usize;

/// Available proxies (by insertion sequence number), three ways.
#[derive(Debug, Default)]
struct AvailIndex {
    by_seq: BTreeSet<u64>,
    /// (a lower bound of the live lease count, seq): see [`Entry::load_key`].
    by_load: BTreeSet<(u32, u64)>,
    /// (latency in ms, or u64::MAX when never measured; seq)
    by_latency: BTreeSet<(u64, u64)>,
    /// (success rank, see [`crate::success`]; seq), in pools that keep the
    /// success order only.
    by_success: BTreeSet<(u64, u64)>,
    dense: Vec<u64>,
    dense_pos: FastMap<u64, usize>,
}

impl AvailIndex {
    fn insert(&mut self, seq: u64, load: u32, latency: u64, success: u64) {
        self.by_seq.insert(seq);
        self.by_load.insert((load, seq));
        self.by_latency.insert((latency, seq));
        if success != NOT_SCORED {
            self.by_success.insert((success, seq));
        }
        self.dense_pos.insert(seq, self.dense.len());
        self.dense.push(seq);
    }

    fn remove(&mut self, seq: u64, load: u32, latency: u64, success: u64) {
        self.by_seq.remove(&seq);
        self.by_load.remove(&(load, seq));
        self.by_latency.remove(&(latency, seq));
        if success != NOT_SCORED {
            self.by_success.remove(&(success, seq));
        }
        if let Some(pos) = self.dense_pos.remove(&seq) {
            self.dense.swap_remove(pos);
            if let Some(&moved) = self.dense.get(pos) {
                self.dense_pos.insert(moved, pos);
            }
        }
    }

    fn len(&self) -> usize {
        self.dense.len()
    }
}

#[derive(Debug)]
struct Entry {
    proxy: Proxy,
    /// What its leases hand out, shared by all of them.
    endpoint: Arc<ProxyEndpoint>,
    /// The indexes this proxy belongs to while available (interned attribute values).
    keys: Vec<IndexId>,
    /// Its key in the by-load orders, while available: a lower bound of its
    /// live lease count, not the count itself. A new lease leaves the key as
    /// it is; a release lowers it only below the key; `least_used` brings a
    /// key up to date when it meets one that is behind. So the usual
    /// acquire→release of a proxy moves nothing in the orders, and the first
    /// up-to-date key met is still the least used proxy (every key after it
    /// is at most its count).
    load_key: u32,
    /// Its key in the success order ([`crate::success`]), or [`NOT_SCORED`]
    /// in a pool that does not keep that order.
    success_rank: u64,
}

/// The success rank of a proxy in a pool that keeps no success order.
const NOT_SCORED: u64 = u64::MAX;

impl Entry {
    fn new(proxy: Proxy, keys: Vec<IndexId>, success_rank: u64) -> Self {
        Entry {
            endpoint: Arc::new(proxy.endpoint()),
            load_key: proxy.current_leases,
            proxy,
            keys,
            success_rank,
        }
    }
}

/// A pool's proxies by sequence number, each in slot `seq` of a vector: a
/// look-up is an index (it was a hash of the number and a probe, about 20
/// instructions, three or four times a cycle). Sequence numbers are never
/// reused, so a removed proxy leaves its slot empty (one pointer).
#[derive(Debug, Default)]
struct ProxyTable {
    slots: Vec<Option<Box<Entry>>>,
}

impl ProxyTable {
    fn get(&self, seq: &u64) -> Option<&Entry> {
        self.slots.get(usize::try_from(*seq).ok()?)?.as_deref()
    }

    fn get_mut(&mut self, seq: &u64) -> Option<&mut Entry> {
        self.slots
            .get_mut(usize::try_from(*seq).ok()?)?
            .as_deref_mut()
    }

    /// Puts `entry` in slot `seq` (one past the last, as sequence numbers come).
    fn insert(&mut self, seq: u64, entry: Entry) {
        let Ok(at) = usize::try_from(seq) else {
            return;
        };
        if at >= self.slots.len() {
            self.slots.resize_with(at + 1, || None);
        }
        if let Some(slot) = self.slots.get_mut(at) {
            *slot = Some(Box::new(entry));
        }
    }

    fn remove(&mut self, seq: &u64) -> Option<Entry> {
        let slot = self.slots.get_mut(usize::try_from(*seq).ok()?)?;
        slot.take().map(|entry| *entry)
    }

    /// The proxies in sequence order.
    fn values(&self) -> impl Iterator<Item = &Entry> {
        self.slots.iter().flatten().map(|entry| &**entry)
    }
}

/// Live leases by expiry, for reclaiming: a binary min-heap of (expiry,
/// lease id) in a `Vec`. A lease ending otherwise than by coming up (a
/// release, an expiry seen by a release, a renewal) is taken out when it is
/// the heap's last entry, which is where the newest lease of the usual
/// duration sits (its expiry is the latest): the common acquire→release
/// leaves nothing behind. Else its entry stays, stale (an entry counts only
/// while its record is active with the same expiry), and stale entries are
/// dropped when they come up, or all at once when they outnumber the live ones.
#[derive(Debug, Default)]
struct Expiries {
    heap: Vec<(Nanos, Uuid)>,
    stale: usize,
}

impl Expiries {
    fn push(&mut self, at: Nanos, id: Uuid) {
        self.heap.push((at, id));
        let mut i = self.heap.len() - 1;
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[parent] <= self.heap[i] {
                break;
            }
            self.heap.swap(parent, i);
            i = parent;
        }
    }

    /// The earliest entry, live or stale.
    fn first(&self) -> Option<(Nanos, Uuid)> {
        self.heap.first().copied()
    }

    /// Drops the earliest entry.
    fn pop(&mut self) {
        if self.heap.is_empty() {
            return;
        }
        self.heap.swap_remove(0);
        self.sift_down(0);
    }

    /// Takes out the entry of a lease that ended, if it is the last one (no
    /// order to restore); `false` leaves it to be counted stale.
    fn take_last(&mut self, at: Nanos, id: Uuid) -> bool {
        if self.heap.last() == Some(&(at, id)) {
            self.heap.pop();
            true
        } else {
            false
        }
    }

    /// Keeps the entries that pass `keep`.
    fn retain(&mut self, keep: impl FnMut(&(Nanos, Uuid)) -> bool) {
        self.heap.retain(keep);
        for i in (0..self.heap.len() / 2).rev() {
            self.sift_down(i);
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        loop {
            let (left, right) = (2 * i + 1, 2 * i + 2);
            let mut least = i;
            if left < self.heap.len() && self.heap[left] < self.heap[least] {
                least = left;
            }
            if right < self.heap.len() && self.heap[right] < self.heap[least] {
                least = right;
            }
            if least == i {
                return;
            }
            self.heap.swap(i, least);
            i = least;
        }
    }

    /// Every entry, in no order.
    fn iter(&self) -> impl Iterator<Item = (Nanos, Uuid)> + '_ {
        self.heap.iter().copied()
    }
}

/// What of a proxy the counters and indexes depend on.
#[derive(Debug, Clone, Copy)]
struct Standing {
    active: bool,
    banned: bool,
    available: bool,
    leases: u32,
    latency: u64,
    success: u64,
}

impl Standing {
    fn of(e: &Entry) -> Self {
        let p = &e.proxy;
        Standing {
            active: p.status == ProxyStatus::Active,
            banned: p.status == ProxyStatus::Banned,
            available: p.is_available(),
            leases: p.current_leases,
            latency: latency_key(p),
            success: e.success_rank,
        }
    }
}

/// Ends a live lease's record as `status` at `now`: returns its proxy and
/// when the record is gone (`grace` after it finished: released now, or
/// expired at its expiry), or `None` when it was not live.
fn end_record(
    lease: &mut Record,
    status: LeaseStatus,
    now: Nanos,
    grace: Nanos,
) -> Option<(u64, Nanos)> {
    if lease.status != LeaseStatus::Active {
        return None;
    }
    lease.status = status;
    let finished_at = if status == LeaseStatus::Released {
        lease.released_at = now;
        now
    } else {
        lease.expires_at
    };
    Some((lease.proxy_seq, finished_at.saturating_add(grace)))
}

/// Position of an attribute in `PoolState::index_ids`.
fn attribute_slot(attr: FilterAttribute) -> usize {
    match attr {
        FilterAttribute::Country => 0,
        FilterAttribute::Source => 1,
        FilterAttribute::City => 2,
        FilterAttribute::Isp => 3,
        FilterAttribute::Asn => 4,
    }
}

#[derive(Debug)]
struct PoolState {
    pool: ProxyPool,
    next_seq: u64,
    /// Proxies by sequence number (the order they were added), and the
    /// sequence number of each proxy id.
    proxies: ProxyTable,
    seqs: FastMap<Uuid, u64>,
    /// Attribute value -> index id, one map per attribute, so a look-up by
    /// value neither hashes nor allocates a key of its own.
    index_ids: [FastMap<Box<str>, IndexId>; 5],
    indexes: Vec<AvailIndex>,
    leases: Records,
    live: Expiries,
    rr_cursor: Option<u64>,
    stats: PoolStats,
    /// Last fencing token granted in this pool.
    fence: u64,
    /// Proxies cooling down after a failure, by the end of their cooldown.
    cooling: BTreeSet<(Nanos, Uuid)>,
    /// Idempotent acquires: request id -> lease id, and back (for purging).
    requests: FastMap<String, Uuid>,
    request_of: FastMap<Uuid, String>,
    /// How the last filters were served; see [`PoolState::plan`].
    plan: Option<FilterPlan>,
    /// Sticky sessions: the proxy each keeps.
    sessions: sessions::Sessions,
    /// Site-scoped cooldowns and bans.
    sites: sites::Sites,
    /// The queue of fair waiters.
    tickets: tickets::Tickets,
    /// Ends of the rate-limit rests of resting proxies (see `reschedule`).
    rests: FastMap<Uuid, Nanos>,
    /// Success evidence by seq, in pools that keep the success order.
    success: FastMap<u64, crate::success::Evidence>,
}

/// Which index serves a filter, and whether its proxies must still be
/// matched one by one. Kept for the filters' `Arc`, which a worker sends with
/// every acquire: holding a clone keeps it alive and unchanged (see
/// `storage::validate_shared_filters`), so the same pointer is the same filter.
#[derive(Debug)]
struct FilterPlan {
    filters: Arc<ProxyFilters>,
    /// `None`: some value it requires has no index (no proxy has it).
    index: Option<IndexId>,
    check_all: bool,
    /// How many indexes there were: a value missing then may have one now.
    indexes: usize,
}

impl PoolState {
    /// A pool with no proxies; `key` (random) derives its lease ids.
    fn new(pool: ProxyPool, grace: Nanos, key: (u64, u64)) -> Self {
        PoolState {
            pool,
            next_seq: 0,
            proxies: ProxyTable::default(),
            seqs: fast_map(),
            index_ids: std::array::from_fn(|_| fast_map()),
            indexes: vec![AvailIndex::default()],
            leases: Records::new(grace, key),
            live: Expiries::default(),
            rr_cursor: None,
            stats: PoolStats::default(),
            fence: 0,
            cooling: BTreeSet::new(),
            requests: fast_map(),
            request_of: fast_map(),
            plan: None,
            sessions: sessions::Sessions::default(),
            sites: sites::Sites::default(),
            tickets: tickets::Tickets::default(),
            rests: fast_map(),
            success: fast_map(),
        }
    }

    fn seq_of(&self, id: Uuid) -> Option<u64> {
        self.seqs.get(&id).copied()
    }

    fn entry(&self, id: Uuid) -> Option<&Entry> {
        self.proxies.get(&self.seq_of(id)?)
    }

    /// Adds (`add`) or removes a proxy's share of the counters and, when
    /// `indexes`, its index entries. Every change to a proxy's attributes goes
    /// remove, change, add.
    fn account(&mut self, seq: u64, add: bool, indexes: bool) {
        let Some(entry) = self.proxies.get(&seq) else {
            return;
        };
        let s = Standing::of(entry);
        let step = |v: &mut u64, yes: bool, by: u64| {
            if yes {
                if add {
                    *v += by;
                } else {
                    *v = v.saturating_sub(by);
                }
            }
        };
        step(&mut self.stats.total_proxies, true, 1);
        step(&mut self.stats.active_proxies, s.active, 1);
        step(&mut self.stats.available_proxies, s.available, 1);
        step(&mut self.stats.leased_proxies, s.leases > 0, 1);
        step(&mut self.stats.banned_proxies, s.banned, 1);
        step(&mut self.stats.total_leases, true, u64::from(s.leases));
        if indexes && s.available {
            let load_key = if add { s.leases } else { entry.load_key };
            for &key in &entry.keys {
                if let Some(idx) = self.indexes.get_mut(key) {
                    if add {
                        idx.insert(seq, load_key, s.latency, s.success);
                    } else {
                        idx.remove(seq, load_key, s.latency, s.success);
                    }
                }
            }
            if add {
                if let Some(e) = self.proxies.get_mut(&seq) {
                    e.load_key = load_key;
                }
            }
        }
    }

    /// The index ids a proxy belongs to, creating indexes for new values.
    fn intern(&mut self, proxy: &Proxy) -> Vec<IndexId> {
        let mut keys = vec![0];
        for attr in FilterAttribute::ALL {
            if let Some(value) = attr.value_of(proxy) {
                let next = self.indexes.len();
                let id = *self.index_ids[attribute_slot(attr)]
                    .entry(value.into_boxed_str())
                    .or_insert(next);
                if id == next {
                    self.indexes.push(AvailIndex::default());
                }
                keys.push(id);
            }
        }
        keys
    }

    /// Changes a proxy's lease count or status (not its attributes), in one
    /// look-up: the counters move by the difference, and while the proxy stays
    /// available only its place in the by-load order moves.
    fn change_proxy(&mut self, seq: u64, f: impl FnOnce(&mut Proxy)) -> Option<&Entry> {
        let e = self.proxies.get_mut(&seq)?;
        let before = Standing::of(e);
        f(&mut e.proxy);
        let after = Standing::of(e);
        let st = &mut self.stats;
        let moved = |v: &mut u64, was: bool, now: bool| match (was, now) {
            (false, true) => *v += 1,
            (true, false) => *v = v.saturating_sub(1),
            _ => {}
        };
        moved(&mut st.active_proxies, before.active, after.active);
        moved(&mut st.banned_proxies, before.banned, after.banned);
        moved(&mut st.available_proxies, before.available, after.available);
        moved(&mut st.leased_proxies, before.leases > 0, after.leases > 0);
        st.total_leases =
            (st.total_leases + u64::from(after.leases)).saturating_sub(u64::from(before.leases));
        let old_key = e.load_key;
        let new_key = match (before.available, after.available) {
            // More leases (or fewer, still at or above the key): the key
            // stays a lower bound.
            (true, true) if after.leases >= old_key => return Some(e),
            (true, true) | (false, true) => after.leases,
            (true, false) => old_key,
            (false, false) => return Some(e),
        };
        e.load_key = new_key;
        for &key in &e.keys {
            let Some(idx) = self.indexes.get_mut(key) else {
                continue;
            };
            match (before.available, after.available) {
                (true, true) => {
                    idx.by_load.remove(&(old_key, seq));
                    idx.by_load.insert((new_key, seq));
                }
                (true, false) => idx.remove(seq, old_key, before.latency, before.success),
                _ => idx.insert(seq, new_key, after.latency, after.success),
            }
        }
        Some(e)
    }

    /// Brings a proxy's by-load key up to its live lease count (in every
    /// index it is in); see [`Entry::load_key`].
    fn refresh_load_key(&mut self, seq: u64) {
        let Some(e) = self.proxies.get_mut(&seq) else {
            return;
        };
        let (old_key, new_key) = (e.load_key, e.proxy.current_leases);
        e.load_key = new_key;
        for &key in &e.keys {
            if let Some(idx) = self.indexes.get_mut(key) {
                if idx.by_load.remove(&(old_key, seq)) {
                    idx.by_load.insert((new_key, seq));
                }
            }
        }
    }

    /// Whether an expiry entry is a live lease's (its record is active with
    /// that expiry).
    fn is_live(&self, at: Nanos, id: Uuid) -> bool {
        self.leases
            .peek(id)
            .is_some_and(|r| r.status == LeaseStatus::Active && r.expires_at == at)
    }

    /// The expiry entry `(at, id)` of a lease that ended otherwise than by
    /// reclaiming it (released, expired as a release found it, renewed):
    /// taken out when it is the last, else counted stale; the stale entries
    /// are dropped when they outnumber the live ones.
    fn expiry_gone(&mut self, at: Nanos, id: Uuid) {
        if self.live.take_last(at, id) {
            return;
        }
        self.live.stale += 1;
        // Each entry is looked at about once per stale entry dropped.
        let live = self.live.heap.len().saturating_sub(self.live.stale);
        if self.live.stale > 64 && self.live.stale > 2 * live {
            let mut expiries = std::mem::take(&mut self.live);
            expiries.retain(|&(at, id)| self.is_live(at, id));
            self.live = expiries;
        }
    }

    /// Replaces a proxy's fields, moving it between attribute indexes.
    fn replace_proxy(&mut self, seq: u64, f: impl FnOnce(&mut Proxy)) {
        self.account(seq, false, true);
        let Some(e) = self.proxies.get_mut(&seq) else {
            return;
        };
        f(&mut e.proxy);
        let proxy = e.proxy.clone();
        let keys = self.intern(&proxy);
        if let Some(e) = self.proxies.get_mut(&seq) {
            e.endpoint = Arc::new(proxy.endpoint());
            e.keys = keys;
        }
        self.account(seq, true, true);
    }

    fn insert_proxy(&mut self, mut proxy: Proxy) {
        proxy.current_leases = 0;
        proxy.consecutive_failures = 0;
        proxy.cooldown_until = None;
        proxy.rest_until = None;
        proxy.last_failure = None;
        proxy.latency_ms = None;
        let seq = self.next_seq;
        self.next_seq += 1;
        let keys = self.intern(&proxy);
        self.seqs.insert(proxy.id, seq);
        let rank = if self.pool.indexes.has_order(IndexOrder::Success) {
            crate::success::rank_of(crate::success::PRIOR_SCORE)
        } else {
            NOT_SCORED
        };
        self.proxies.insert(seq, Entry::new(proxy, keys, rank));
        self.account(seq, true, true);
    }

    /// Counts a report into a proxy's success score and moves it in the
    /// success order, in a pool that keeps it (else does nothing).
    fn score_report(&mut self, seq: u64, success: bool, now: Nanos) {
        if !self.pool.indexes.has_order(IndexOrder::Success) {
            return;
        }
        let now_ms = now.div_euclid(1_000_000);
        let half_life = self.pool.success_scoring.half_life_ms();
        let e = crate::success::Evidence::after(
            self.success.get(&seq).copied(),
            success,
            now_ms,
            half_life,
        );
        self.success.insert(seq, e);
        let rank = crate::success::rank_of(e.score());
        self.account(seq, false, true);
        if let Some(entry) = self.proxies.get_mut(&seq) {
            entry.success_rank = rank;
        }
        self.account(seq, true, true);
    }

    /// `best_success` sends the pool's exploration share to a random proxy.
    fn explore(&self, selector: SelectorStrategy, rng: &mut fastrand::Rng) -> SelectorStrategy {
        if selector == SelectorStrategy::BestSuccess
            && rng.u32(0..1_000_000) < self.pool.success_scoring.exploration_ppm()
        {
            SelectorStrategy::Random
        } else {
            selector
        }
    }

    /// Removes a proxy with its leases and records.
    fn remove_proxy(&mut self, id: Uuid) {
        let Some(seq) = self.seqs.remove(&id) else {
            return;
        };
        self.success.remove(&seq);
        self.account(seq, false, true);
        self.proxies.remove(&seq);
        let gone = self.leases.ids_where(|l| l.proxy_seq == seq);
        for &lease in &gone {
            self.leases.remove(lease);
            if let Some(request) = self.request_of.remove(&lease) {
                self.requests.remove(&request);
            }
        }
        self.live.retain(|(_, lease)| !gone.contains(lease));
        self.cooling.retain(|(_, proxy)| *proxy != id);
        self.rests.remove(&id);
        self.sites.forget(id);
    }

    /// Makes proxy `id`'s one entry in `cooling`: the later of its failure
    /// cooldown's end (`cool`) and its rate-limit rest's end, if either.
    fn reschedule(&mut self, id: Uuid, cool: Option<Nanos>) {
        self.cooling.retain(|(_, p)| *p != id);
        if let Some(end) = cool.max(self.rests.get(&id).copied()) {
            self.cooling.insert((end, id));
        }
    }

    /// Expires every live lease whose time has come (and lifts the cooldowns
    /// that are over); returns how many leases. When nothing is due (most
    /// calls) it is three comparisons, inlined into the caller.
    #[inline]
    fn reclaim(&mut self, now: Nanos, grace: Nanos) -> u64 {
        let due = |first: Option<Nanos>| first.is_some_and(|at| at <= now);
        if !due(self.cooling.first().map(|&(until, _)| until))
            && !due(self.live.first().map(|(at, _)| at))
        {
            self.purge(now);
            return 0;
        }
        self.reclaim_due(now, grace)
    }

    /// [`Self::reclaim`] when a cooldown or a lease is due.
    fn reclaim_due(&mut self, now: Nanos, grace: Nanos) -> u64 {
        while let Some(&(until, id)) = self.cooling.first() {
            if until > now {
                break;
            }
            self.cooling.pop_first();
            // The entry is the later of the cooldown's and the rest's ends.
            self.rests.remove(&id);
            if let Some(seq) = self.seq_of(id) {
                self.change_proxy(seq, |p| {
                    p.cooldown_until = None;
                    p.rest_until = None;
                });
            }
        }
        let mut n = 0;
        while let Some((at, id)) = self.live.first() {
            if at > now {
                break;
            }
            self.live.pop();
            if self.is_live(at, id) {
                self.finish(id, LeaseStatus::Expired, now, grace);
                n += 1;
            } else {
                self.live.stale = self.live.stale.saturating_sub(1);
            }
        }
        self.purge(now);
        n
    }

    /// Ends a live lease: gives its slot back and schedules the record's
    /// removal. Its expiry entry is the caller's to pop or count stale.
    fn finish(&mut self, id: Uuid, status: LeaseStatus, now: Nanos, grace: Nanos) {
        let ended = self
            .leases
            .update(id, now, |lease| end_record(lease, status, now, grace));
        if let Some(Some((proxy_seq, gone_at))) = ended {
            self.record_ended(id, proxy_seq, gone_at);
        }
    }

    /// After [`end_record`]: schedules the record's removal and gives the
    /// proxy's slot back.
    fn record_ended(&mut self, id: Uuid, proxy_seq: u64, gone_at: Nanos) {
        self.leases.finished(id, gone_at);
        self.change_proxy(proxy_seq, |p| {
            p.current_leases = p.current_leases.saturating_sub(1)
        });
    }

    /// Drops the records whose grace is over, and their request ids, and
    /// the sessions that ended.
    #[inline]
    fn purge(&mut self, now: Nanos) {
        self.sessions.purge(now);
        let (requests, request_of) = (&mut self.requests, &mut self.request_of);
        self.leases.purge(now, |id| {
            if !request_of.is_empty() {
                if let Some(request) = request_of.remove(&id) {
                    requests.remove(&request);
                }
            }
        });
    }

    /// The lease `id` as callers see it, from its record (none once purged, or
    /// when its proxy is gone).
    fn lease(&self, id: Uuid, now: Nanos, consumers: &[Consumer]) -> Option<Lease> {
        let r = self.leases.get(id, now)?;
        let entry = self.proxies.get(&r.proxy_seq)?;
        let holder = consumers.get(usize::try_from(r.consumer).ok()?)?;
        Some(Lease {
            id,
            proxy_id: entry.proxy.id,
            consumer_id: holder.id,
            consumer_name: holder.name.clone(),
            pool_id: self.pool.id,
            pool_name: self.pool.name.clone(),
            status: r.status,
            acquired_at: to_time(r.acquired_at),
            expires_at: to_time(r.expires_at),
            released_at: (r.status == LeaseStatus::Released).then(|| to_time(r.released_at)),
            proxy: Arc::clone(&entry.endpoint),
            fencing_token: r.fencing_token,
        })
    }

    fn proxy_by_seq(&self, seq: u64) -> Option<&Proxy> {
        self.proxies.get(&seq).map(|e| &e.proxy)
    }

    /// The proxy sticky session `session` keeps, when it can serve a request
    /// with these filters now (active, not cooling down, a free slot, a match).
    fn session_proxy(
        &self,
        session: &StickySession,
        filters: &ProxyFilters,
        site: Option<&Site>,
        now: Nanos,
    ) -> Option<u64> {
        let seq = self.sessions.proxy_of(&session.id, now)?;
        let p = self.proxy_by_seq(seq)?;
        let blocked = site.is_some_and(|s| self.sites.blocks(s.as_str(), p.id, now));
        (p.is_available() && filters.matches(p) && !blocked).then_some(seq)
    }

    /// The index that holds the available proxies meeting the exact-match
    /// constraints (the smallest, when there are several), or `None` when no
    /// proxy has one of the values.
    fn index_for(&self, filters: &ProxyFilters) -> Option<IndexId> {
        // The whole pool's index unless a value is required; then the
        // smallest index of a required value (never larger than the pool's,
        // and it holds only proxies with that value).
        let mut best: Option<(IndexId, usize)> = None;
        let mut missing = false;
        each_required(filters, &mut |attr, value| {
            let found = self.index_ids[attribute_slot(attr)]
                .get(value)
                .and_then(|&id| Some((id, self.indexes.get(id)?.len())));
            match found {
                None => missing = true, // no proxy has this value
                Some((id, len)) => {
                    if best.is_none_or(|(_, smallest)| len < smallest) {
                        best = Some((id, len));
                    }
                }
            }
        });
        if missing {
            return None;
        }
        Some(best.map_or(0, |(id, _)| id))
    }

    /// The least used available proxy of index `at` that passes `ok`: the
    /// first in the by-load order whose key is its live lease count. Keys met
    /// on the way that are behind their counts are brought up to date (they
    /// move later in the order) and the walk goes on from where it was.
    fn least_used(&mut self, at: IndexId, ok: impl Fn(&Proxy) -> bool) -> Option<u64> {
        // The first proxy in `keys` that is behind or passes `ok`.
        fn first<'a>(
            mut keys: impl Iterator<Item = &'a (u32, u64)>,
            proxies: &ProxyTable,
            ok: &impl Fn(&Proxy) -> bool,
        ) -> Option<((u32, u64), bool)> {
            keys.find_map(|&(key, seq)| match proxies.get(&seq) {
                Some(e) if e.proxy.current_leases != key => Some(((key, seq), true)),
                Some(e) if ok(&e.proxy) => Some(((key, seq), false)),
                _ => None,
            })
        }
        let mut from = None;
        loop {
            let idx = self.indexes.get(at)?;
            let found = match from {
                None => first(idx.by_load.iter(), &self.proxies, &ok),
                Some(from) => first(idx.by_load.range(from..), &self.proxies, &ok),
            };
            match found? {
                ((_, seq), false) => return Some(seq),
                (entry, true) => {
                    self.refresh_load_key(entry.1);
                    from = Some(entry);
                }
            }
        }
    }

    /// The index to walk for `filters`, and whether its proxies must be
    /// matched one by one; worked out once for the filters' `Arc` (an index
    /// found stays right: indexes are never dropped, and any index of a value
    /// the filter requires holds every proxy that matches, if not always the
    /// smallest one).
    fn plan(&mut self, filters: &Arc<ProxyFilters>) -> (Option<IndexId>, bool) {
        if let Some(p) = &self.plan {
            if Arc::ptr_eq(&p.filters, filters)
                && (p.index.is_some() || p.indexes == self.indexes.len())
            {
                return (p.index, p.check_all);
            }
        }
        let index = self.index_for(filters);
        // Every proxy of the index passes a filter of one exact-match
        // attribute: the index holds exactly those, now and later.
        let check_all = !(filters.is_empty() || single_exact(filters));
        self.plan = Some(FilterPlan {
            filters: Arc::clone(filters),
            index,
            check_all,
            indexes: self.indexes.len(),
        });
        (index, check_all)
    }

    /// Picks an available proxy that matches, without scanning the pool when an
    /// index answers the filter; returns its sequence number.
    /// `blocked`: proxies to skip besides the filters' (those resting or banned
    /// for the request's site), or `None`.
    fn select(
        &mut self,
        filters: &Arc<ProxyFilters>,
        selector: SelectorStrategy,
        rng: &mut fastrand::Rng,
        blocked: Option<&dyn Fn(Uuid) -> bool>,
    ) -> Option<u64> {
        let (at, check_all) = self.plan(filters);
        let at = at?;
        let skip = |p: &Proxy| blocked.is_some_and(|b| b(p.id));
        if selector == SelectorStrategy::LeastUsed {
            return self.least_used(at, |p| (!check_all || filters.matches(p)) && !skip(p));
        }
        let idx = self.indexes.get(at)?;
        let ok = |seq: &u64| {
            (!check_all && blocked.is_none())
                || self
                    .proxy_by_seq(*seq)
                    .is_some_and(|p| (!check_all || filters.matches(p)) && !skip(p))
        };
        let seq = match selector {
            SelectorStrategy::FirstAvailable => idx.by_seq.iter().copied().find(|s| ok(s)),
            SelectorStrategy::LeastUsed => None,
            SelectorStrategy::LowestLatency => {
                idx.by_latency.iter().map(|(_, s)| *s).find(|s| ok(s))
            }
            SelectorStrategy::BestSuccess => idx.by_success.iter().map(|(_, s)| *s).find(|s| ok(s)),
            SelectorStrategy::RoundRobin => {
                let start = self.rr_cursor.map_or(0, |c| c.saturating_add(1));
                idx.by_seq
                    .range(start..)
                    .chain(idx.by_seq.range(..start))
                    .copied()
                    .find(|s| ok(s))
            }
            SelectorStrategy::Random => {
                let n = idx.dense.len();
                if n == 0 {
                    None
                } else {
                    let start = rng.usize(0..n);
                    idx.dense[start..]
                        .iter()
                        .chain(&idx.dense[..start])
                        .copied()
                        .find(|s| ok(s))
                }
            }
        }?;
        if selector == SelectorStrategy::RoundRobin {
            self.rr_cursor = Some(seq);
        }
        Some(seq)
    }
}

/// Calls `visit` with each exact-match constraint every matching proxy must
/// meet (the filter's own, and those of its `all_of` filters, recursively),
/// as the indexes key them: country upper-case, ASN as decimal text. Unlike
/// [`ProxyFilters::required_attributes`] it allocates nothing in the common
/// case (a country given upper-case).
fn each_required(filters: &ProxyFilters, visit: &mut impl FnMut(FilterAttribute, &str)) {
    if let Some(v) = &filters.country {
        if v.bytes().any(|b| b.is_ascii_lowercase()) {
            visit(FilterAttribute::Country, &v.to_ascii_uppercase());
        } else {
            visit(FilterAttribute::Country, v);
        }
    }
    for (attr, value) in [
        (FilterAttribute::Source, &filters.source),
        (FilterAttribute::City, &filters.city),
        (FilterAttribute::Isp, &filters.isp),
    ] {
        if let Some(v) = value {
            visit(attr, v);
        }
    }
    if let Some(asn) = filters.asn {
        let mut digits = [0u8; 10];
        visit(FilterAttribute::Asn, decimal(asn, &mut digits));
    }
    for f in &filters.all_of {
        each_required(f, visit);
    }
}

/// `n` in decimal, written into `buf`.
fn decimal(mut n: u32, buf: &mut [u8; 10]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        // A digit: n % 10 < 10.
        buf[at] = b'0' + u8::try_from(n % 10).unwrap_or(0);
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[at..]).unwrap_or_default()
}

/// Whether the filter is one exact-match attribute and nothing else.
fn single_exact(f: &ProxyFilters) -> bool {
    let set = usize::from(f.country.is_some())
        + usize::from(f.source.is_some())
        + usize::from(f.city.is_some())
        + usize::from(f.isp.is_some())
        + usize::from(f.asn.is_some());
    set == 1
        && f.latitude.is_none()
        && f.longitude.is_none()
        && f.radius_km.is_none()
        && f.any_of.is_empty()
        && f.all_of.is_empty()
        && f.none_of.is_empty()
}

impl State {
    /// The position of a registered consumer, registering it first when
    /// `register` (else `None` for an unknown one).
    fn consumer_at(&mut self, name: &ConsumerName, register: bool) -> Result<Option<u32>> {
        consumer_at(&mut self.consumers, &mut self.consumer_list, name, register)
    }

    /// A pool, with the consumers its lease records refer to.
    fn pool_with_consumers(&mut self, name: &PoolName) -> Result<(&mut PoolState, &[Consumer])> {
        let State {
            pools,
            consumer_list,
            ..
        } = self;
        let ps = pools.get_mut(name).ok_or_else(|| Error::PoolNotFound {
            name: name.to_string(),
        })?;
        Ok((ps, consumer_list))
    }

    fn consumer(&self, at: u32) -> Option<&Consumer> {
        self.consumer_list.get(usize::try_from(at).ok()?)
    }

    /// Wakes the pool's waiting acquires.
    fn notify(&self, pool: &PoolName) {
        if self.freed.is_empty() {
            return;
        }
        if let Some(tx) = self.freed.get(pool) {
            let _ = tx.send(());
        }
    }

    fn pool(&self, name: &PoolName) -> Result<&PoolState> {
        self.pools.get(name).ok_or_else(|| Error::PoolNotFound {
            name: name.to_string(),
        })
    }

    fn pool_mut(&mut self, name: &PoolName) -> Result<&mut PoolState> {
        self.pools.get_mut(name).ok_or_else(|| Error::PoolNotFound {
            name: name.to_string(),
        })
    }

    fn pool_name_of_proxy(&self, id: Uuid) -> Result<PoolName> {
        self.proxy_pools
            .get(&id)
            .cloned()
            .ok_or(Error::ProxyNotFound { id })
    }

    /// Validates a proxy for insertion and returns its pool's name.
    fn check_new_proxy(&self, proxy: &mut Proxy) -> Result<PoolName> {
        proxy.normalize()?;
        if self.proxy_pools.contains_key(&proxy.id) {
            return Err(Error::ProxyAlreadyExists { id: proxy.id });
        }
        self.pool_names.get(&proxy.pool_id).cloned().ok_or_else(|| {
            Error::invalid_proxy("pool_id", format!("no pool has id {}", proxy.pool_id))
        })
    }

    fn proxy_snapshot(&self, id: Uuid) -> Result<Proxy> {
        let name = self.pool_name_of_proxy(id)?;
        self.pool(&name)?
            .entry(id)
            .map(|e| e.proxy.clone())
            .ok_or(Error::ProxyNotFound { id })
    }

    fn change_proxy(&mut self, id: Uuid, f: impl FnOnce(&mut Proxy)) -> Result<Proxy> {
        let name = self.pool_name_of_proxy(id)?;
        let ps = self.pool_mut(&name)?;
        let seq = ps.seq_of(id).ok_or(Error::ProxyNotFound { id })?;
        ps.change_proxy(seq, f);
        self.notify(&name);
        self.proxy_snapshot(id)
    }
}

impl AdminStorage for InMemoryStorage {
    async fn create_pool(&self, pool: ProxyPool) -> Result<ProxyPool> {
        pool.validate()?;
        let pool = pool.into_stored();
        let mut st = self.lock();
        if st.pools.contains_key(&pool.name) {
            return Err(Error::PoolAlreadyExists {
                name: pool.name.to_string(),
            });
        }
        if st.pool_names.contains_key(&pool.id) {
            return Err(Error::InvalidArgument(format!(
                "another pool already has id {}",
                pool.id
            )));
        }
        st.pool_names.insert(pool.id, pool.name.clone());
        let key = (st.rng.u64(..), st.rng.u64(..));
        st.pools.insert(
            pool.name.clone(),
            PoolState::new(pool.clone(), self.grace, key),
        );
        Ok(pool)
    }

    async fn get_pool(&self, name: &PoolName) -> Result<Option<ProxyPool>> {
        Ok(self.lock().pools.get(name).map(|p| p.pool.clone()))
    }

    async fn list_pools(&self) -> Result<Vec<ProxyPool>> {
        let st = self.lock();
        let mut pools: Vec<_> = st.pools.values().map(|p| p.pool.clone()).collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(pools)
    }

    async fn update_pool(&self, pool: ProxyPool) -> Result<ProxyPool> {
        pool.validate()?;
        let mut st = self.lock();
        let ps = st.pool_mut(&pool.name)?;
        if ps.pool.id != pool.id {
            return Err(Error::InvalidArgument(format!(
                "pool {:?} has id {}, not {}",
                pool.name, ps.pool.id, pool.id
            )));
        }
        ps.pool.check_fixed_settings(&pool)?;
        ps.pool.description = pool.description;
        Ok(ps.pool.clone())
    }

    async fn remove_pool(&self, name: &PoolName) -> Result<bool> {
        let mut st = self.lock();
        let Some(ps) = st.pools.remove(name) else {
            return Ok(false);
        };
        st.pool_names.remove(&ps.pool.id);
        for id in ps.seqs.keys() {
            st.proxy_pools.remove(id);
        }
        Ok(true)
    }

    async fn add_proxy(&self, mut proxy: Proxy) -> Result<Proxy> {
        let mut st = self.lock();
        let name = st.check_new_proxy(&mut proxy)?;
        st.proxy_pools.insert(proxy.id, name.clone());
        st.pool_mut(&name)?.insert_proxy(proxy.clone());
        st.notify(&name);
        proxy.current_leases = 0;
        Ok(proxy)
    }

    async fn add_proxies(&self, mut proxies: Vec<Proxy>) -> Result<Vec<Proxy>> {
        let mut st = self.lock();
        let mut names = Vec::with_capacity(proxies.len());
        let mut seen = HashSet::with_capacity(proxies.len());
        for (i, proxy) in proxies.iter_mut().enumerate() {
            let name = st.check_new_proxy(proxy).map_err(|e| match e {
                Error::InvalidProxy { field, reason } => Error::InvalidProxy {
                    field,
                    reason: format!("proxy #{i} ({}:{}): {reason}", proxy.host, proxy.port),
                },
                other => other,
            })?;
            if !seen.insert(proxy.id) {
                return Err(Error::ProxyAlreadyExists { id: proxy.id });
            }
            proxy.current_leases = 0;
            names.push(name);
        }
        for (proxy, name) in proxies.iter().zip(names) {
            st.proxy_pools.insert(proxy.id, name.clone());
            st.pool_mut(&name)?.insert_proxy(proxy.clone());
            st.notify(&name);
        }
        Ok(proxies)
    }

    async fn update_proxy(&self, mut proxy: Proxy) -> Result<Proxy> {
        proxy.normalize()?;
        let mut st = self.lock();
        let current = st.proxy_snapshot(proxy.id)?;
        if current.pool_id != proxy.pool_id {
            return Err(Error::invalid_proxy(
                "pool_id",
                "a proxy cannot move to another pool (remove it and add it there)",
            ));
        }
        let name = st.pool_name_of_proxy(proxy.id)?;
        let id = proxy.id;
        let ps = st.pool_mut(&name)?;
        let seq = ps.seq_of(id).ok_or(Error::ProxyNotFound { id })?;
        ps.replace_proxy(seq, move |p| {
            proxy.current_leases = p.current_leases;
            proxy.consecutive_failures = p.consecutive_failures;
            proxy.cooldown_until = p.cooldown_until;
            proxy.rest_until = p.rest_until;
            proxy.last_failure = p.last_failure.take();
            proxy.latency_ms = p.latency_ms;
            *p = proxy;
        });
        st.notify(&name);
        st.proxy_snapshot(id)
    }

    async fn set_proxy_status(&self, proxy_id: Uuid, status: ProxyStatus) -> Result<Proxy> {
        self.lock().change_proxy(proxy_id, |p| p.status = status)
    }

    async fn remove_proxy(&self, proxy_id: Uuid) -> Result<bool> {
        let mut st = self.lock();
        let Ok(name) = st.pool_name_of_proxy(proxy_id) else {
            return Ok(false);
        };
        st.proxy_pools.remove(&proxy_id);
        st.pool_mut(&name)?.remove_proxy(proxy_id);
        Ok(true)
    }

    async fn get_proxy(&self, proxy_id: Uuid) -> Result<Option<Proxy>> {
        match self.lock().proxy_snapshot(proxy_id) {
            Ok(p) => Ok(Some(p)),
            Err(Error::ProxyNotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list_proxies(&self, pool_name: &PoolName) -> Result<Vec<Proxy>> {
        let now = self.now();
        let mut st = self.lock();
        let ps = st.pool_mut(pool_name)?;
        ps.reclaim(now, self.grace);
        // In sequence order: the order they were added.
        Ok(ps.proxies.values().map(|e| e.proxy.clone()).collect())
    }

    async fn ensure_consumer(&self, name: &ConsumerName) -> Result<Consumer> {
        let mut st = self.lock();
        let at = st.consumer_at(name, true)?;
        at.and_then(|at| st.consumer(at).cloned())
            .ok_or_else(|| Error::backend("registered consumer vanished", None))
    }

    async fn get_consumer(&self, name: &ConsumerName) -> Result<Option<Consumer>> {
        let st = self.lock();
        Ok(st
            .consumers
            .get(name)
            .and_then(|&at| st.consumer(at))
            .cloned())
    }

    async fn list_consumers(&self) -> Result<Vec<Consumer>> {
        let st = self.lock();
        let mut all: Vec<_> = st.consumer_list.clone();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }
}

impl LeaseStorage for InMemoryStorage {
    /// Checks the request and the pool's selector, releases, then acquires
    /// (two steps of this storage's lock: a concurrent acquire may take the
    /// proxy just given back).
    async fn rotate(&self, lease: &Lease, request: &AcquireRequest) -> Result<Rotation> {
        request.validate()?;
        if let Some(pool) = self.get_pool(&request.pool_name).await? {
            pool.indexes
                .check_selector(&request.pool_name, request.selector)?;
        }
        let released = self.release(lease).await?;
        Ok(Rotation::new(released, self.acquire(request).await?))
    }

    async fn acquire(&self, request: &AcquireRequest) -> Result<Option<Lease>> {
        self.acquire_at_once(request)
    }

    /// Never waits: the acquire is done here.
    fn acquire_now(&self, request: &AcquireRequest) -> std::task::Poll<Result<Option<Lease>>> {
        std::task::Poll::Ready(self.acquire_at_once(request))
    }

    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        let now = self.now();
        let mut st = self.lock();
        let Some(ps) = st.pools.get_mut(&lease.pool_name) else {
            return Ok(ReleaseOutcome::NotFound);
        };
        ps.purge(now);
        // One look-up of the record, to read and to end it.
        let grace = self.grace;
        let ended = ps.leases.update(lease.id, now, |record| {
            let expires_at = record.expires_at;
            let (status, outcome) = match record.status {
                LeaseStatus::Released => return Err(ReleaseOutcome::AlreadyReleased),
                LeaseStatus::Expired => return Err(ReleaseOutcome::Expired),
                LeaseStatus::Active if expires_at <= now => {
                    (LeaseStatus::Expired, ReleaseOutcome::Expired)
                }
                LeaseStatus::Active => (LeaseStatus::Released, ReleaseOutcome::Released),
            };
            Ok((end_record(record, status, now, grace), expires_at, outcome))
        });
        let (ended, expires_at, outcome) = match ended {
            None => return Ok(ReleaseOutcome::NotFound),
            Some(Err(outcome)) => return Ok(outcome),
            Some(Ok(ended)) => ended,
        };
        if let Some((proxy_seq, gone_at)) = ended {
            ps.record_ended(lease.id, proxy_seq, gone_at);
        }
        ps.expiry_gone(expires_at, lease.id);
        st.notify(&lease.pool_name);
        Ok(outcome)
    }

    async fn extend(&self, lease: &Lease, duration: Duration) -> Result<Lease> {
        crate::storage::validate_lease_duration(duration)?;
        let now = self.now();
        let mut st = self.lock();
        let lost = |reason| Error::LeaseLost {
            id: lease.id,
            reason,
        };
        let Ok((ps, consumers)) = st.pool_with_consumers(&lease.pool_name) else {
            return Err(lost(LostReason::Unknown));
        };
        ps.reclaim(now, self.grace);
        let new = now.saturating_add(to_nanos(duration));
        let renewed = ps.leases.update(lease.id, now, |record| {
            match record.status {
                LeaseStatus::Released => return Err(lost(LostReason::Released)),
                LeaseStatus::Expired => return Err(lost(LostReason::Expired)),
                LeaseStatus::Active => {}
            }
            let old = record.expires_at;
            record.expires_at = new;
            Ok(old)
        });
        let old = renewed.ok_or_else(|| lost(LostReason::Unknown))??;
        if new != old {
            ps.expiry_gone(old, lease.id);
            ps.live.push(new, lease.id);
        }
        ps.lease(lease.id, now, consumers).ok_or(Error::LeaseLost {
            id: lease.id,
            reason: LostReason::Unknown,
        })
    }

    async fn get_lease(&self, pool_name: &PoolName, lease_id: Uuid) -> Result<Option<Lease>> {
        let now = self.now();
        let mut st = self.lock();
        let (ps, consumers) = st.pool_with_consumers(pool_name)?;
        ps.reclaim(now, self.grace);
        Ok(ps.lease(lease_id, now, consumers))
    }

    async fn list_leases(&self, pool_name: &PoolName) -> Result<Vec<Lease>> {
        let now = self.now();
        let mut st = self.lock();
        let (ps, consumers) = st.pool_with_consumers(pool_name)?;
        ps.reclaim(now, self.grace);
        let mut out: Vec<Lease> = ps
            .live
            .iter()
            .filter(|&(at, id)| ps.is_live(at, id))
            .filter_map(|(_, id)| ps.lease(id, now, consumers))
            .collect();
        out.sort_by_key(|l| (l.acquired_at, l.id));
        // A lease renewed back to an expiry it had before has two entries that
        // both match it (the older one was left stale): list it once.
        out.dedup_by_key(|l| l.id);
        Ok(out)
    }

    async fn session(&self, pool_name: &PoolName, session: &str) -> Result<Option<SessionBinding>> {
        StickySession::new(session).validate()?;
        let now = self.now();
        let st = self.lock();
        let ps = st.pools.get(pool_name).ok_or_else(|| Error::PoolNotFound {
            name: pool_name.to_string(),
        })?;
        Ok(ps.sessions.binding(session, now).and_then(|(seq, until)| {
            let proxy = ps.proxy_by_seq(seq)?;
            Some(SessionBinding::new(proxy.id, to_time(until)))
        }))
    }

    async fn cleanup_expired_leases(&self) -> Result<u64> {
        let now = self.now();
        let mut st = self.lock();
        let mut total = 0;
        let mut freed = Vec::new();
        for ps in st.pools.values_mut() {
            let n = ps.reclaim(now, self.grace);
            if n > 0 {
                freed.push(ps.pool.name.clone());
            }
            total += n;
        }
        for name in freed {
            st.notify(&name);
        }
        Ok(total)
    }

    async fn subscribe_freed(
        &self,
        pool_name: &PoolName,
    ) -> Result<tokio::sync::broadcast::Receiver<()>> {
        let mut st = self.lock();
        st.pool(pool_name)?;
        Ok(st
            .freed
            .entry(pool_name.clone())
            .or_insert_with(|| tokio::sync::broadcast::channel(16).0)
            .subscribe())
    }

    async fn take_ticket(
        &self,
        pool_name: &PoolName,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Option<WaitTicket>> {
        crate::fair::validate_ticket_ttl(ttl)?;
        let _ = wait;
        let now = self.now();
        let mut st = self.lock();
        let number = st.pool_mut(pool_name)?.tickets.take(now, to_nanos(ttl));
        Ok(Some(WaitTicket::new(pool_name.clone(), number, ttl)))
    }

    async fn drop_ticket(&self, ticket: &WaitTicket) -> Result<()> {
        let mut st = self.lock();
        let Ok(ps) = st.pool_mut(ticket.pool_name()) else {
            return Ok(());
        };
        // The head gave up: the next one may be served at once.
        if ps.tickets.remove(ticket.number()) && !ps.tickets.is_empty() {
            st.notify(ticket.pool_name());
        }
        Ok(())
    }

    async fn wait_tickets(&self, pool_name: &PoolName) -> Result<Vec<QueuedTicket>> {
        let now = self.now();
        let st = self.lock();
        Ok(st
            .pool(pool_name)?
            .tickets
            .honoured(now)
            .into_iter()
            .map(|(number, until)| QueuedTicket::new(number, to_time(until)))
            .collect())
    }

    async fn next_expiry(&self, pool_name: &PoolName) -> Result<Option<Duration>> {
        let now = self.now();
        let mut st = self.lock();
        let ps = st.pool_mut(pool_name)?;
        // Stale entries first out of the way, so the first is a live lease's.
        while let Some((at, id)) = ps.live.first() {
            if ps.is_live(at, id) {
                break;
            }
            ps.live.pop();
            ps.live.stale = ps.live.stale.saturating_sub(1);
        }
        // The nearest lease expiry or cooldown end: either may free capacity
        // without anyone being notified.
        let next = match (ps.live.first(), ps.cooling.first()) {
            (Some((a, _)), Some((b, _))) => Some(a.min(*b)),
            (Some((a, _)), None) => Some(a),
            (None, Some((b, _))) => Some(*b),
            (None, None) => None,
        };
        Ok(next.map(|at| Duration::from_nanos(u64::try_from(at.saturating_sub(now)).unwrap_or(0))))
    }

    async fn pool_stats(&self, pool_name: &PoolName) -> Result<PoolStats> {
        let now = self.now();
        let mut st = self.lock();
        let ps = st.pool_mut(pool_name)?;
        ps.reclaim(now, self.grace);
        // Reclaiming lifted every cooldown that is over: the rest end after now.
        let mut stats = ps.stats;
        stats.cooling_proxies = ps.cooling.len() as u64;
        Ok(stats)
    }

    async fn report_success(&self, proxy_id: Uuid) -> Result<Proxy> {
        let mut st = self.lock();
        let name = st.pool_name_of_proxy(proxy_id)?;
        let ps = st.pool_mut(&name)?;
        let seq = ps
            .seq_of(proxy_id)
            .ok_or(Error::ProxyNotFound { id: proxy_id })?;
        ps.change_proxy(seq, |p| {
            p.consecutive_failures = 0;
            p.cooldown_until = None;
        });
        // A success ends a cooldown, not a rate-limit rest.
        ps.reschedule(proxy_id, None);
        ps.score_report(seq, true, self.now());
        st.notify(&name);
        st.proxy_snapshot(proxy_id)
    }

    async fn report_site_failure(
        &self,
        proxy_id: Uuid,
        site: &Site,
        reason: &str,
        policy: &crate::cooldown::CooldownPolicy,
    ) -> Result<SiteStanding> {
        crate::storage::validate_failure(reason, policy)?;
        let now = self.now();
        let mut guard = self.lock();
        let st = &mut *guard;
        let name = st.pool_name_of_proxy(proxy_id)?;
        let ps = st.pool_mut(&name)?;
        Ok(ps.sites.fail(site.as_str(), proxy_id, reason, now, policy))
    }

    async fn report_site_success(&self, proxy_id: Uuid, site: &Site) -> Result<SiteStanding> {
        let now = self.now();
        let mut guard = self.lock();
        let st = &mut *guard;
        let name = st.pool_name_of_proxy(proxy_id)?;
        st.pool_mut(&name)?
            .sites
            .succeed(site.as_str(), proxy_id, now);
        // A rest or ban lifted may serve a waiter for the site.
        st.notify(&name);
        Ok(SiteStanding::clear(proxy_id))
    }

    async fn success_scores(&self, pool_name: &PoolName) -> Result<Vec<SuccessScore>> {
        let st = self.lock();
        let ps = st.pools.get(pool_name).ok_or_else(|| Error::PoolNotFound {
            name: pool_name.to_string(),
        })?;
        let mut out: Vec<_> = ps
            .success
            .iter()
            .filter_map(|(seq, e)| {
                let proxy = &ps.proxies.get(seq)?.proxy;
                Some(SuccessScore {
                    proxy_id: proxy.id,
                    score: e.score(),
                    successes: e.successes,
                    reports: e.reports,
                    updated_at: to_time(e.at_ms.saturating_mul(1_000_000)),
                })
            })
            .collect();
        out.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(a.proxy_id.cmp(&b.proxy_id))
        });
        Ok(out)
    }

    async fn site_standings(&self, pool_name: &PoolName, site: &Site) -> Result<Vec<SiteStanding>> {
        let now = self.now();
        let st = self.lock();
        let ps = st.pools.get(pool_name).ok_or_else(|| Error::PoolNotFound {
            name: pool_name.to_string(),
        })?;
        Ok(ps.sites.standings(site.as_str(), now))
    }

    async fn report_failure(
        &self,
        proxy_id: Uuid,
        reason: &str,
        policy: &crate::cooldown::CooldownPolicy,
    ) -> Result<Proxy> {
        crate::storage::validate_failure(reason, policy)?;
        let now = self.now();
        let mut guard = self.lock();
        let st = &mut *guard;
        let name = st.pool_name_of_proxy(proxy_id)?;
        let keep = policy.draw_keep(proxy_id);
        let ps = st.pool_mut(&name)?;
        let seq = ps
            .seq_of(proxy_id)
            .ok_or(Error::ProxyNotFound { id: proxy_id })?;
        ps.cooling.retain(|(_, id)| *id != proxy_id);
        let mut cool_until = None;
        ps.change_proxy(seq, |p| {
            p.consecutive_failures = p.consecutive_failures.saturating_add(1);
            p.last_failure = Some(reason.to_string());
            if policy
                .ban_after
                .is_some_and(|n| p.consecutive_failures >= n)
            {
                p.status = ProxyStatus::Banned;
                p.cooldown_until = None;
            } else {
                let delay = policy.delay_ms(p.consecutive_failures, keep);
                let until = now.saturating_add(to_nanos(Duration::from_millis(delay)));
                p.cooldown_until = Some(to_time(until));
                cool_until = Some(until);
            }
        });
        ps.reschedule(proxy_id, cool_until);
        ps.score_report(seq, false, now);
        st.proxy_snapshot(proxy_id)
    }

    async fn apply_health_check(&self, result: &HealthCheckResult) -> Result<Proxy> {
        let (status, at) = (result.status, result.checked_at);
        let latency = result
            .latency
            .map(|l| u32::try_from(l.as_millis()).unwrap_or(u32::MAX));
        let mut st = self.lock();
        let name = st.pool_name_of_proxy(result.proxy_id)?;
        // A new latency moves the proxy in the lowest-latency order: re-index it.
        let ps = st.pool_mut(&name)?;
        let seq = ps.seq_of(result.proxy_id).ok_or(Error::ProxyNotFound {
            id: result.proxy_id,
        })?;
        ps.replace_proxy(seq, |p| {
            p.status = status;
            p.checked_at = Some(at);
            if latency.is_some() {
                p.latency_ms = latency;
            }
        });
        st.notify(&name);
        st.proxy_snapshot(result.proxy_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_come_out_earliest_first_and_the_last_is_taken_out_in_place() {
        let mut rng = fastrand::Rng::with_seed(5);
        let mut e = Expiries::default();
        let mut all = Vec::new();
        for _ in 0..500 {
            let entry = (rng.i64(0..1_000), Uuid::from_u128(rng.u128(..)));
            e.push(entry.0, entry.1);
            all.push(entry);
            // The newest, when it is the latest, is the last entry.
            if entry == *all.iter().max().unwrap_or(&entry) && rng.bool() {
                assert!(e.take_last(entry.0, entry.1));
                all.pop();
            }
        }
        e.retain(|&(at, _)| at % 7 != 0);
        all.retain(|&(at, _)| at % 7 != 0);
        all.sort();
        let mut out = Vec::new();
        while let Some(first) = e.first() {
            out.push(first);
            e.pop();
        }
        assert_eq!(out, all);
    }

    #[test]
    fn times_convert_as_chrono_does_across_days_and_before_the_epoch() {
        let day = 86_400 * 1_000_000_000_i64;
        for at in [
            0,
            1,
            day - 1,
            day,
            1_767_225_599_999_999_999,
            1_767_225_600_000_000_000,
            -1,
            -day,
            -day - 1,
            i64::MAX,
            i64::MIN,
        ] {
            assert_eq!(to_time(at), DateTime::from_timestamp_nanos(at), "{at}");
            // Again, from the kept day.
            assert_eq!(to_time(at), DateTime::from_timestamp_nanos(at), "{at}");
        }
    }
}
