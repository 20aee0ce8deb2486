//! [`RedisStorage`]: the production storage (feature `redis`), shared by any
//! number of managers on any number of hosts.
//!
//! # How it works
//!
//! Every state change is one Lua script from `lua/` (acquire, rotate, release,
//! extend, cleanup, proxy add / update / status / remove, reports, pool create /
//! update / remove, audit), run atomically by Redis; `src/redis/ops/` has one
//! Rust file per script that encodes its arguments and decodes its typed reply.
//! The scripts form one Redis Functions library (`FUNCTION LOAD`, named
//! `lighthouse_<hash>` so versions never clash), called with `FCALL` (`FCALL_RO`
//! for reads) and loaded again automatically when Redis lost it (a restart
//! without persistence, `FUNCTION FLUSH`). Time is Redis's own (`TIME`, read
//! once per script), so hosts with skewed clocks agree on expiry.
//!
//! - **Acquire** gives back what time freed (only when the pool's `exp` or
//!   `cool_next` hint says something may be due), picks an available proxy from
//!   an index, counts the lease and writes its record, in one script: no two
//!   callers anywhere can both take a proxy's last slot.
//! - **Batching**: concurrent acquires and releases of one pool (and, apart,
//!   rotates) that find every slot busy go together in one script call, up to
//!   [`RedisConfig::max_batch`], with up to [`RedisConfig::max_in_flight`] calls
//!   in flight; each request is served in arrival order exactly as if alone,
//!   except that the releases of a call go before its acquires
//!   (`lua/cycle.lua`): an acquire may get a slot given back a moment after it
//!   asked, and a proxy given back and taken again in the call keeps its
//!   index entries.
//!   The writes of a call are aggregated: one `ZADD` per index, one for the live
//!   set, one meta `HSET`, whatever the number of requests.
//! - **Indexes**: a pool declares which attributes (`country`, `source`, `city`,
//!   `isp`, `asn`, `geo`) and orders (`load` always, `seq`, `lat`) it indexes
//!   ([`crate::PoolIndexes`]); each index is a sorted set of the *available*
//!   proxies (active, not cooling, a free slot). The load order's score is
//!   `live leases × 2³² + seq`: it is where a proxy's lease count lives while it
//!   is available (else in the `held` hash), so selection reads counts for free.
//! - **Expiry without leaks**: each pool has a sorted set of live leases scored
//!   by expiry; acquire, cleanup and the sweeper give back the slots of expired
//!   ones. A live lease's record has no TTL (the live set holds its expiry, so a
//!   call writes its records in one `MSET`); whatever takes a lease out of the
//!   live set (its release, a reclaim, the removal of its proxy) gives the
//!   record the record grace ([`crate::storage::DEFAULT_RECORD_GRACE`]) or
//!   deletes it.
//! - **Stats are counters and cardinalities**: proxies and active proxies are
//!   counters in the pool's meta; available proxies, leased proxies and live
//!   leases are read from the load index, `held` and the live set.
//! - **Cleanup** works pool by pool in batches of
//!   [`RedisConfig::cleanup_batch`] leases per script call.
//!
//! # Keys
//!
//! Every key of a pool carries its hash tag, `<ns>:{<pool>}:...`, so a pool's
//! scripts touch a single Redis Cluster slot. Proxies are readable JSON, lease
//! records plain words:
//!
//! ```text
//! $ redis-cli HGET 'lighthouse:{latam-residential}:proxies' 17
//! {"id":"1b4e28ba-2fa1-41d2-883f-0016d3cca427","host":"10.0.0.1","port":8001,"max":2,"country":"AR"}
//! $ redis-cli GET 'lighthouse:{latam-residential}:1733500000000123'   # the lease's fencing token
//! active 17 1733500000000 300000 worker-1
//! ```
//!
//! The full schema is in the README and in `src/redis/keys.rs`.
//!
//! ```no_run
//! use lighthouse_lease::redis::{RedisConfig, RedisStorage};
//! use lighthouse_lease::ProxyManager;
//!
//! # fn main() -> lighthouse_lease::Result<()> {
//! let storage = RedisStorage::new(RedisConfig::from_env().namespace("crawler"))?;
//! let manager = ProxyManager::new(storage);
//! # Ok(())
//! # }
//! ```
//!
//! # Connections
//!
//! The storage keeps [`RedisConfig::pool_size`] multiplexed connections and
//! spreads calls over them. They recover by themselves when Redis restarts or
//! drops them, without failing the calls that come after:
//!
//! - A connection whose socket closed (Redis restarted, a proxy in between hung
//!   up) is seen as closed before a call uses it, also while it was idle, and
//!   replaced before anything is sent: after a restart, once Redis answers, no
//!   call fails, whatever it does. Seeing it costs no round trip (the storage
//!   runs each connection's I/O task and notes when it ends).
//! - A command whose connection broke while it was out may or may not have run.
//!   Reads are sent again, and so are writes that do the same however often they
//!   run: release and extend (by lease id), an acquire with a request id (it
//!   returns the lease the lost attempt took), pool and proxy updates, status
//!   changes and success reports, cleanup. Writes that must not run twice (an
//!   acquire without a request id, a rotate, a failure report, adding or removing
//!   a proxy or a pool) are sent again only when nothing was sent: no connection
//!   could be opened, or Redis answered `LOADING` (it refuses every command while
//!   it loads its data after a restart). `WAIT` is never sent again.
//! - Repeats stop once the response timeout has passed since the first failure
//!   (waits of 10 ms doubling to 200 ms between them); a timed-out command is
//!   not repeated. A repeated write reports what its last attempt found: a
//!   release whose first reply was lost after it ran answers `AlreadyReleased`.
//!
//! Redis Cluster uses redis-rs's cluster connection, which reconnects by
//! itself.
//!
//! # Atomicity across keys outside a pool
//!
//! The cross-pool registries (`<ns>:pools`, `<ns>:pool-ids`, `<ns>:consumers`)
//! live in other slots, so they are written by single commands next to the
//! scripts, not inside them. A proxy id is found by asking each pool's id
//! shards (the answer is cached: proxies never move); its uniqueness across
//! pools is checked before the add, and inside its pool by the add script.

mod batch;
mod codec;
mod config;
mod conn;
mod error;
mod keys;
mod maintenance;
mod notify;
mod ops;
mod storage;

pub use config::RedisConfig;
pub use keys::{validate_namespace, MAX_NAMESPACE_LEN, SCHEMA};
pub use maintenance::{CleanupBatch, CounterFix};
pub use storage::RedisStorage;
