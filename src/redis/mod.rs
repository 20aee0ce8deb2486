//! [`RedisStorage`]: the production storage (feature `redis`), shared by any
//! number of managers on any number of hosts.
//!
//! # How it works
//!
//! Every state change is one Lua script from `lua/` (acquire, release, cleanup,
//! proxy add / update / status / remove, pool create / update / remove, audit), run
//! atomically by Redis. Scripts are invoked by SHA1 and reloaded automatically
//! when Redis answers `NOSCRIPT` (after a restart or `SCRIPT FLUSH`). Time is
//! Redis's own (`TIME`, read once at the start of a script), so hosts with skewed
//! clocks agree on expiry.
//!
//! - **Acquire** reclaims the pool's expired leases (a bounded batch), picks an
//!   available proxy from an index, counts the lease and writes its record, in
//!   one script: no two callers anywhere can both take a proxy's last slot.
//! - **Batching**: concurrent acquires of one pool (and, apart, releases) that
//!   queue behind one in flight go together in one script call, up to
//!   [`RedisConfig::max_batch`]; each request is served in arrival order exactly
//!   as if alone, and a lone caller never waits for company.
//! - **Indexes**: for the whole pool and for each country, source, city, ISP and
//!   ASN value, two sorted sets of the *available* proxies (active, with a free
//!   slot): by insertion sequence (first available, round robin, random) and by
//!   load (least used). The scripts keep them up to date, so an unfiltered or
//!   exact-attribute acquire costs O(log n) whatever the pool size. Point and
//!   radius filters use `GEOSEARCH` over a geo set of available proxies.
//! - **Expiry without leaks**: each pool has a sorted set of live leases scored
//!   by expiry; acquire and cleanup give back the slots of expired ones. Lease
//!   records carry a TTL of expiry plus the record grace
//!   ([`crate::storage::DEFAULT_RECORD_GRACE`]), so a late release is told
//!   `Expired` rather than `NotFound`.
//! - **Stats are set sizes**, never counters: proxies (`proxies`), active ones
//!   (`active`), available ones (the `all` index), leased ones (`leased`) and live
//!   leases (`holders`), read in one MULTI/EXEC. They cannot drift from the state.
//! - **Audit**: `holders` also tells each proxy's live leases
//!   (`ZCOUNT holders seq seq`), so [`RedisStorage::audit_pool`] can find a
//!   `current_leases` that drifted (edited by hand, say) and repair it.
//! - **Cleanup** works pool by pool in batches of
//!   [`RedisConfig::cleanup_batch`] leases per script call.
//!
//! # Keys
//!
//! Every key of a pool carries its hash tag, `<ns>:{<pool>}:...`, so a pool's
//! scripts touch a single Redis Cluster slot. Proxies and lease records are plain
//! hashes that `redis-cli HGETALL` shows field by field:
//!
//! ```text
//! $ redis-cli HGETALL 'lighthouse:{latam-residential}:proxy:1b4e28ba-2fa1-11d2-883f-0016d3cca427'
//!  host 10.0.0.1  port 8001  protocol http  status active  max_concurrency 2
//!  current_leases 1  country AR  city Córdoba  seq 1  tags "country=AR city=C%C3%B3rdoba" ...
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
//! # Atomicity across keys outside a pool
//!
//! The cross-pool registries (`<ns>:pools`, `<ns>:pool-ids`, `<ns>:proxy-pool`,
//! `<ns>:consumers`) live in other slots, so they are written by single commands
//! next to the scripts, not inside them. Creating a pool, adding proxies and
//! removing them write the registry and the pool in separate steps; a failure
//! between the two can leave a registry entry without a pool (harmless: lookups
//! then find nothing) but never a lease count out of step with the leases.

mod batch;
mod codec;
mod config;
mod conn;
mod keys;
mod maintenance;
mod notify;
mod scripts;
mod storage;

pub use config::RedisConfig;
pub use keys::{validate_namespace, MAX_NAMESPACE_LEN};
pub use maintenance::{CleanupBatch, CounterFix};
pub use storage::RedisStorage;
