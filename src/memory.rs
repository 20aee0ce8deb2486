//! [`InMemoryStorage`]: the embedded, indexed default storage.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::clock::{Clock, SystemClock};
use crate::consumer::Consumer;
use crate::error::{Error, LostReason, Result};
use crate::filters::{FilterAttribute, ProxyFilters};
use crate::health::HealthCheckResult;
use crate::lease::{Lease, LeaseStatus, ReleaseOutcome, Rotation};
use crate::names::{ConsumerName, PoolName};
use crate::pool::ProxyPool;
use crate::proxy::{Proxy, ProxyStatus};
use crate::selector::SelectorStrategy;
use crate::stats::PoolStats;
use crate::storage::{AcquireRequest, AdminStorage, LeaseStorage, DEFAULT_RECORD_GRACE};
use records::{Record, Records};

mod records;

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
    grace: chrono::Duration,
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
        InMemoryStorage {
            state: Mutex::new(State::default()),
            clock: Arc::new(clock),
            grace: to_chrono(DEFAULT_RECORD_GRACE),
        }
    }

    /// How long finished lease records are kept after their expiry (default
    /// [`DEFAULT_RECORD_GRACE`]).
    #[must_use]
    pub fn with_record_grace(mut self, grace: Duration) -> Self {
        self.grace = to_chrono(grace);
        self
    }

    /// Seeds the random selector, for reproducible runs.
    #[must_use]
    pub fn with_seed(self, seed: u64) -> Self {
        self.lock().rng = fastrand::Rng::with_seed(seed);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // No method panics half-way through a change, so a poisoned lock still
        // guards consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
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

fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

#[derive(Debug)]
struct State {
    /// "Capacity may have freed" notifications, per pool name.
    freed: HashMap<PoolName, tokio::sync::broadcast::Sender<()>>,
    pools: FastMap<PoolName, PoolState>,
    pool_names: FastMap<Uuid, PoolName>,
    proxy_pools: FastMap<Uuid, PoolName>,
    /// Consumers by name (the name is shared with the records of their leases).
    consumers: FastMap<ConsumerName, Consumer>,
    rng: fastrand::Rng,
}

impl Default for State {
    fn default() -> Self {
        State {
            freed: HashMap::new(),
            pools: fast_map(),
            pool_names: fast_map(),
            proxy_pools: fast_map(),
            consumers: fast_map(),
            rng: fastrand::Rng::new(),
        }
    }
}

/// Position of an index in `PoolState::indexes`; 0 is the whole pool.
type IndexId = usize;

/// Available proxies (by insertion sequence number), three ways.
#[derive(Debug, Default)]
struct AvailIndex {
    by_seq: BTreeSet<u64>,
    by_load: BTreeSet<(u32, u64)>,
    /// (latency in ms, or u64::MAX when never measured; seq)
    by_latency: BTreeSet<(u64, u64)>,
    dense: Vec<u64>,
    dense_pos: FastMap<u64, usize>,
}

impl AvailIndex {
    fn insert(&mut self, seq: u64, load: u32, latency: u64) {
        self.by_seq.insert(seq);
        self.by_load.insert((load, seq));
        self.by_latency.insert((latency, seq));
        self.dense_pos.insert(seq, self.dense.len());
        self.dense.push(seq);
    }

    fn remove(&mut self, seq: u64, load: u32, latency: u64) {
        self.by_seq.remove(&seq);
        self.by_load.remove(&(load, seq));
        self.by_latency.remove(&(latency, seq));
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
    seq: u64,
    /// The indexes this proxy belongs to while available (interned attribute values).
    keys: Vec<IndexId>,
}

#[derive(Debug)]
struct PoolState {
    pool: ProxyPool,
    next_seq: u64,
    proxies: FastMap<Uuid, Entry>,
    by_seq: BTreeMap<u64, Uuid>,
    /// Attribute value -> index id, so hot paths never hash or allocate strings.
    index_ids: FastMap<(FilterAttribute, String), IndexId>,
    indexes: Vec<AvailIndex>,
    leases: Records,
    live: BTreeSet<(DateTime<Utc>, Uuid)>,
    rr_cursor: Option<u64>,
    stats: PoolStats,
    /// Last fencing token granted in this pool.
    fence: u64,
    /// Proxies cooling down after a failure, by the end of their cooldown.
    cooling: BTreeSet<(DateTime<Utc>, Uuid)>,
    /// Idempotent acquires: request id -> lease id, and back (for purging).
    requests: FastMap<String, Uuid>,
    request_of: FastMap<Uuid, String>,
}

impl PoolState {
    fn new(pool: ProxyPool) -> Self {
        PoolState {
            pool,
            next_seq: 0,
            proxies: fast_map(),
            by_seq: BTreeMap::new(),
            index_ids: fast_map(),
            indexes: vec![AvailIndex::default()],
            leases: Records::default(),
            live: BTreeSet::new(),
            rr_cursor: None,
            stats: PoolStats::default(),
            fence: 0,
            cooling: BTreeSet::new(),
            requests: fast_map(),
            request_of: fast_map(),
        }
    }

    /// Adds (`add`) or removes a proxy's share of the counters and, when
    /// `indexes`, its index entries. Every change to a proxy goes remove, change, add.
    fn account(&mut self, id: Uuid, add: bool, indexes: bool) {
        let Some(entry) = self.proxies.get(&id) else {
            return;
        };
        let p = &entry.proxy;
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
        step(
            &mut self.stats.active_proxies,
            p.status == ProxyStatus::Active,
            1,
        );
        step(&mut self.stats.available_proxies, p.is_available(), 1);
        step(&mut self.stats.leased_proxies, p.current_leases > 0, 1);
        step(
            &mut self.stats.banned_proxies,
            p.status == ProxyStatus::Banned,
            1,
        );
        step(
            &mut self.stats.total_leases,
            true,
            u64::from(p.current_leases),
        );
        if indexes && p.is_available() {
            let (seq, load, lat) = (entry.seq, p.current_leases, latency_key(p));
            for &key in &entry.keys {
                if let Some(idx) = self.indexes.get_mut(key) {
                    if add {
                        idx.insert(seq, load, lat);
                    } else {
                        idx.remove(seq, load, lat);
                    }
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
                let id = *self.index_ids.entry((attr, value)).or_insert(next);
                if id == next {
                    self.indexes.push(AvailIndex::default());
                }
                keys.push(id);
            }
        }
        keys
    }

    /// Changes a proxy's lease count or status (not its attributes). When the
    /// proxy stays available, only its place in the by-load order moves.
    fn change_proxy(&mut self, id: Uuid, f: impl FnOnce(&mut Proxy)) {
        let Some(e) = self.proxies.get(&id) else {
            return;
        };
        let (was_available, old_load, lat) = (
            e.proxy.is_available(),
            e.proxy.current_leases,
            latency_key(&e.proxy),
        );
        self.account(id, false, false);
        let Some(e) = self.proxies.get_mut(&id) else {
            return;
        };
        f(&mut e.proxy);
        let (now_available, new_load, seq) =
            (e.proxy.is_available(), e.proxy.current_leases, e.seq);
        self.account(id, true, false);
        let Some(e) = self.proxies.get(&id) else {
            return;
        };
        for &key in &e.keys {
            let Some(idx) = self.indexes.get_mut(key) else {
                continue;
            };
            match (was_available, now_available) {
                (true, true) if old_load != new_load => {
                    idx.by_load.remove(&(old_load, seq));
                    idx.by_load.insert((new_load, seq));
                }
                (true, false) => idx.remove(seq, old_load, lat),
                (false, true) => idx.insert(seq, new_load, lat),
                _ => {}
            }
        }
    }

    /// Replaces a proxy's fields, moving it between attribute indexes.
    fn replace_proxy(&mut self, id: Uuid, f: impl FnOnce(&mut Proxy)) {
        self.account(id, false, true);
        let Some(e) = self.proxies.get_mut(&id) else {
            return;
        };
        f(&mut e.proxy);
        let proxy = e.proxy.clone();
        let keys = self.intern(&proxy);
        if let Some(e) = self.proxies.get_mut(&id) {
            e.keys = keys;
        }
        self.account(id, true, true);
    }

    fn insert_proxy(&mut self, mut proxy: Proxy) {
        proxy.current_leases = 0;
        proxy.consecutive_failures = 0;
        proxy.cooldown_until = None;
        proxy.last_failure = None;
        proxy.latency_ms = None;
        let seq = self.next_seq;
        self.next_seq += 1;
        let id = proxy.id;
        let keys = self.intern(&proxy);
        self.by_seq.insert(seq, id);
        self.proxies.insert(id, Entry { proxy, seq, keys });
        self.account(id, true, true);
    }

    /// Expires every live lease whose time has come (and lifts the cooldowns
    /// that are over); returns how many leases.
    fn reclaim(&mut self, now: DateTime<Utc>, grace: chrono::Duration) -> u64 {
        while let Some(&(until, id)) = self.cooling.first() {
            if until > now {
                break;
            }
            self.cooling.pop_first();
            self.change_proxy(id, |p| p.cooldown_until = None);
        }
        let mut n = 0;
        while let Some(&(at, id)) = self.live.first() {
            if at > now {
                break;
            }
            self.live.pop_first();
            self.finish(id, LeaseStatus::Expired, now, grace);
            n += 1;
        }
        self.purge(now, grace);
        n
    }

    /// Ends a live lease: gives its slot back and schedules the record's removal.
    fn finish(
        &mut self,
        id: Uuid,
        status: LeaseStatus,
        now: DateTime<Utc>,
        grace: chrono::Duration,
    ) {
        let Some(lease) = self.leases.get_mut(id, now) else {
            return;
        };
        if lease.status != LeaseStatus::Active {
            return;
        }
        lease.status = status;
        if status == LeaseStatus::Released {
            lease.released_at = Some(now);
        }
        let (proxy_id, expires_at) = (lease.proxy_id, lease.expires_at);
        // Kept for `grace` after it finished: released now, or expired at its expiry.
        let finished_at = if status == LeaseStatus::Released {
            now
        } else {
            expires_at
        };
        lease.gone_at = Some(finished_at + grace);
        self.leases.finished(id, finished_at + grace);
        self.live.remove(&(expires_at, id));
        self.change_proxy(proxy_id, |p| {
            p.current_leases = p.current_leases.saturating_sub(1)
        });
    }

    /// Drops the records whose grace is over, and their request ids.
    fn purge(&mut self, now: DateTime<Utc>, grace: chrono::Duration) {
        let (requests, request_of) = (&mut self.requests, &mut self.request_of);
        self.leases.purge(now, grace, |id| {
            if !request_of.is_empty() {
                if let Some(request) = request_of.remove(&id) {
                    requests.remove(&request);
                }
            }
        });
    }

    /// The lease `id` as callers see it, from its record (none once purged, or
    /// when its proxy is gone).
    fn lease(&self, id: Uuid, now: DateTime<Utc>) -> Option<Lease> {
        let r = self.leases.get(id, now)?;
        let entry = self.proxies.get(&r.proxy_id)?;
        Some(Lease {
            id,
            proxy_id: r.proxy_id,
            consumer_id: r.consumer_id,
            consumer_name: r.consumer_name.clone(),
            pool_id: self.pool.id,
            pool_name: self.pool.name.clone(),
            status: r.status,
            acquired_at: r.acquired_at,
            expires_at: r.expires_at,
            released_at: r.released_at,
            proxy: entry.proxy.endpoint(),
            fencing_token: r.fencing_token,
        })
    }

    fn proxy_by_seq(&self, seq: u64) -> Option<&Proxy> {
        self.by_seq
            .get(&seq)
            .and_then(|id| self.proxies.get(id))
            .map(|e| &e.proxy)
    }

    /// Picks an available proxy that matches, without scanning the pool when an
    /// index answers the filter.
    fn select(
        &mut self,
        filters: &ProxyFilters,
        selector: SelectorStrategy,
        rng: &mut fastrand::Rng,
    ) -> Option<Uuid> {
        let mut best: Option<&AvailIndex> = self.indexes.first();
        for key in filters.required_attributes() {
            match self
                .index_ids
                .get(&key)
                .and_then(|&id| self.indexes.get(id))
            {
                None => return None, // no proxy has this value
                Some(idx) => {
                    if best.is_none_or(|b| idx.len() < b.len()) {
                        best = Some(idx);
                    }
                }
            }
        }
        let idx = best?;
        let check_all = !filters.is_empty();
        let ok =
            |seq: &u64| !check_all || self.proxy_by_seq(*seq).is_some_and(|p| filters.matches(p));
        let seq = match selector {
            SelectorStrategy::FirstAvailable => idx.by_seq.iter().copied().find(|s| ok(s)),
            SelectorStrategy::LeastUsed => idx.by_load.iter().map(|(_, s)| *s).find(|s| ok(s)),
            SelectorStrategy::LowestLatency => {
                idx.by_latency.iter().map(|(_, s)| *s).find(|s| ok(s))
            }
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
        self.by_seq.get(&seq).copied()
    }
}

impl State {
    /// Wakes the pool's waiting acquires.
    fn notify(&self, pool: &PoolName) {
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
            .proxies
            .get(&id)
            .map(|e| e.proxy.clone())
            .ok_or(Error::ProxyNotFound { id })
    }

    fn change_proxy(&mut self, id: Uuid, f: impl FnOnce(&mut Proxy)) -> Result<Proxy> {
        let name = self.pool_name_of_proxy(id)?;
        self.pool_mut(&name)?.change_proxy(id, f);
        self.notify(&name);
        self.proxy_snapshot(id)
    }
}

impl AdminStorage for InMemoryStorage {
    async fn create_pool(&self, pool: ProxyPool) -> Result<ProxyPool> {
        pool.validate()?;
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
        st.pools
            .insert(pool.name.clone(), PoolState::new(pool.clone()));
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
        if ps.pool.indexes != pool.indexes {
            return Err(Error::InvalidArgument(format!(
                "pool {:?}: its indexes are fixed when it is created (remove it and create it again to change them)",
                pool.name
            )));
        }
        ps.pool.description = pool.description;
        Ok(ps.pool.clone())
    }

    async fn remove_pool(&self, name: &PoolName) -> Result<bool> {
        let mut st = self.lock();
        let Some(ps) = st.pools.remove(name) else {
            return Ok(false);
        };
        st.pool_names.remove(&ps.pool.id);
        for id in ps.proxies.keys() {
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
        st.pool_mut(&name)?.replace_proxy(id, move |p| {
            proxy.current_leases = p.current_leases;
            proxy.consecutive_failures = p.consecutive_failures;
            proxy.cooldown_until = p.cooldown_until;
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
        let ps = st.pool_mut(&name)?;
        ps.account(proxy_id, false, true);
        if let Some(e) = ps.proxies.remove(&proxy_id) {
            ps.by_seq.remove(&e.seq);
        }
        let gone = ps.leases.ids_where(|l| l.proxy_id == proxy_id);
        for &id in &gone {
            ps.leases.remove(id);
            if let Some(request) = ps.request_of.remove(&id) {
                ps.requests.remove(&request);
            }
        }
        ps.live.retain(|(_, id)| !gone.contains(id));
        ps.cooling.retain(|(_, id)| *id != proxy_id);
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
        let now = self.clock.now();
        let mut st = self.lock();
        let ps = st.pool_mut(pool_name)?;
        ps.reclaim(now, self.grace);
        Ok(ps
            .by_seq
            .values()
            .filter_map(|id| ps.proxies.get(id))
            .map(|e| e.proxy.clone())
            .collect())
    }

    async fn ensure_consumer(&self, name: &ConsumerName) -> Result<Consumer> {
        let mut st = self.lock();
        if let Some(c) = st.consumers.get(name) {
            return Ok(c.clone());
        }
        let c = Consumer::new(name)?;
        st.consumers.insert(name.clone(), c.clone());
        Ok(c)
    }

    async fn get_consumer(&self, name: &ConsumerName) -> Result<Option<Consumer>> {
        Ok(self.lock().consumers.get(name).cloned())
    }

    async fn list_consumers(&self) -> Result<Vec<Consumer>> {
        let st = self.lock();
        let mut all: Vec<_> = st.consumers.values().cloned().collect();
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
        request.validate()?;
        let duration = to_chrono(request.duration);
        let now = self.clock.now();
        let mut guard = self.lock();
        let st = &mut *guard;
        if !st.pools.contains_key(&request.pool_name) {
            return Err(Error::PoolNotFound {
                name: request.pool_name.to_string(),
            });
        }
        let (consumer_id, consumer_name) = match st.consumers.get(&request.consumer_name) {
            Some(c) => (c.id, c.name.clone()),
            None if request.register_consumer => {
                let c = Consumer::new(&request.consumer_name)?;
                let known = (c.id, c.name.clone());
                st.consumers.insert(c.name.clone(), c);
                known
            }
            None => {
                return Err(Error::ConsumerNotFound {
                    name: request.consumer_name.to_string(),
                })
            }
        };
        let Some(ps) = st.pools.get_mut(&request.pool_name) else {
            return Err(Error::PoolNotFound {
                name: request.pool_name.to_string(),
            });
        };
        ps.pool
            .indexes
            .check_selector(&request.pool_name, request.selector)?;
        ps.reclaim(now, self.grace);
        if let Some(request_id) = &request.request_id {
            if let Some(earlier) = ps
                .requests
                .get(request_id)
                .and_then(|&id| ps.lease(id, now))
            {
                return Ok(Some(earlier));
            }
        }
        let Some(proxy_id) = ps.select(&request.filters, request.selector, &mut st.rng) else {
            return Ok(None);
        };
        ps.change_proxy(proxy_id, |p| p.current_leases += 1);
        let Some(entry) = ps.proxies.get(&proxy_id) else {
            return Err(Error::backend("selected proxy vanished", None));
        };
        // Strictly increasing per pool (so per proxy), with the clock as a floor so
        // a pool created again never reuses a token.
        let floor = u64::try_from(now.timestamp_micros()).unwrap_or(0);
        ps.fence = (ps.fence + 1).max(floor);
        let lease = Lease {
            fencing_token: ps.fence,
            id: ps.leases.next_id(),
            proxy_id,
            consumer_id,
            consumer_name: consumer_name.clone(),
            pool_id: ps.pool.id,
            pool_name: ps.pool.name.clone(),
            status: LeaseStatus::Active,
            acquired_at: now,
            expires_at: now + duration,
            released_at: None,
            proxy: entry.proxy.endpoint(),
        };
        ps.live.insert((lease.expires_at, lease.id));
        ps.leases.push(
            lease.id,
            Record {
                proxy_id,
                consumer_id,
                consumer_name,
                status: LeaseStatus::Active,
                acquired_at: now,
                expires_at: lease.expires_at,
                released_at: None,
                fencing_token: lease.fencing_token,
                gone_at: None,
            },
        );
        if let Some(request_id) = &request.request_id {
            ps.requests.insert(request_id.clone(), lease.id);
            ps.request_of.insert(lease.id, request_id.clone());
        }
        Ok(Some(lease))
    }

    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        let now = self.clock.now();
        let mut st = self.lock();
        let Some(ps) = st.pools.get_mut(&lease.pool_name) else {
            return Ok(ReleaseOutcome::NotFound);
        };
        ps.purge(now, self.grace);
        let Some(record) = ps.leases.get(lease.id, now) else {
            return Ok(ReleaseOutcome::NotFound);
        };
        let outcome = match record.status {
            LeaseStatus::Released => return Ok(ReleaseOutcome::AlreadyReleased),
            LeaseStatus::Expired => return Ok(ReleaseOutcome::Expired),
            LeaseStatus::Active if record.expires_at <= now => {
                ps.finish(lease.id, LeaseStatus::Expired, now, self.grace);
                ReleaseOutcome::Expired
            }
            LeaseStatus::Active => {
                ps.finish(lease.id, LeaseStatus::Released, now, self.grace);
                ReleaseOutcome::Released
            }
        };
        st.notify(&lease.pool_name);
        Ok(outcome)
    }

    async fn extend(&self, lease: &Lease, duration: Duration) -> Result<Lease> {
        crate::storage::validate_lease_duration(duration)?;
        let now = self.clock.now();
        let mut st = self.lock();
        let lost = |reason| Error::LeaseLost {
            id: lease.id,
            reason,
        };
        let Some(ps) = st.pools.get_mut(&lease.pool_name) else {
            return Err(lost(LostReason::Unknown));
        };
        ps.reclaim(now, self.grace);
        let Some(record) = ps.leases.get_mut(lease.id, now) else {
            return Err(lost(LostReason::Unknown));
        };
        match record.status {
            LeaseStatus::Released => return Err(lost(LostReason::Released)),
            LeaseStatus::Expired => return Err(lost(LostReason::Expired)),
            LeaseStatus::Active => {}
        }
        let old = record.expires_at;
        let new = now + to_chrono(duration);
        record.expires_at = new;
        ps.live.remove(&(old, lease.id));
        ps.live.insert((new, lease.id));
        ps.lease(lease.id, now).ok_or(Error::LeaseLost {
            id: lease.id,
            reason: LostReason::Unknown,
        })
    }

    async fn get_lease(&self, pool_name: &PoolName, lease_id: Uuid) -> Result<Option<Lease>> {
        let now = self.clock.now();
        let mut st = self.lock();
        let ps = st.pool_mut(pool_name)?;
        ps.reclaim(now, self.grace);
        Ok(ps.lease(lease_id, now))
    }

    async fn list_leases(&self, pool_name: &PoolName) -> Result<Vec<Lease>> {
        let now = self.clock.now();
        let mut st = self.lock();
        let ps = st.pool_mut(pool_name)?;
        ps.reclaim(now, self.grace);
        let mut out: Vec<Lease> = ps
            .live
            .iter()
            .filter_map(|&(_, id)| ps.lease(id, now))
            .collect();
        out.sort_by_key(|l| (l.acquired_at, l.id));
        Ok(out)
    }

    async fn cleanup_expired_leases(&self) -> Result<u64> {
        let now = self.clock.now();
        let mut st = self.lock();
        let mut total = 0;
        let mut freed = Vec::new();
        for (name, ps) in st.pools.iter_mut() {
            let n = ps.reclaim(now, self.grace);
            if n > 0 {
                freed.push(name.clone());
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

    async fn next_expiry(&self, pool_name: &PoolName) -> Result<Option<Duration>> {
        let now = self.clock.now();
        let st = self.lock();
        let ps = st.pool(pool_name)?;
        // The nearest lease expiry or cooldown end: either may free capacity
        // without anyone being notified.
        let next = match (ps.live.first(), ps.cooling.first()) {
            (Some((a, _)), Some((b, _))) => Some(*a.min(b)),
            (Some((a, _)), None) | (None, Some((a, _))) => Some(*a),
            (None, None) => None,
        };
        Ok(next.map(|at| (at - now).to_std().unwrap_or(Duration::ZERO)))
    }

    async fn pool_stats(&self, pool_name: &PoolName) -> Result<PoolStats> {
        let now = self.clock.now();
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
        ps.cooling.retain(|(_, id)| *id != proxy_id);
        ps.change_proxy(proxy_id, |p| {
            p.consecutive_failures = 0;
            p.cooldown_until = None;
        });
        st.notify(&name);
        st.proxy_snapshot(proxy_id)
    }

    async fn report_failure(
        &self,
        proxy_id: Uuid,
        reason: &str,
        policy: &crate::cooldown::CooldownPolicy,
    ) -> Result<Proxy> {
        policy.validate()?;
        crate::storage::validate_failure_reason(reason)?;
        let now = self.clock.now();
        let mut guard = self.lock();
        let st = &mut *guard;
        let name = st.pool_name_of_proxy(proxy_id)?;
        let keep = policy.draw_keep(proxy_id);
        let ps = st.pool_mut(&name)?;
        ps.cooling.retain(|(_, id)| *id != proxy_id);
        let mut cool_until = None;
        ps.change_proxy(proxy_id, |p| {
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
                let until = now + to_chrono(Duration::from_millis(delay));
                p.cooldown_until = Some(until);
                cool_until = Some(until);
            }
        });
        if let Some(until) = cool_until {
            ps.cooling.insert((until, proxy_id));
        }
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
        st.pool_mut(&name)?.replace_proxy(result.proxy_id, |p| {
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
