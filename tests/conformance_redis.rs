#![cfg(feature = "redis")]
//! The storage conformance suite, run on `RedisStorage` against a real Redis
//! (see `tests/support` for which one). Redis keeps its own time, so `advance`
//! sleeps, and the short lease and the record grace are short.

mod support;

use std::time::Duration;

use lighthouse_lease::redis::RedisStorage;
use lighthouse_lease::testkit::Harness;

/// The record grace of the suite's storages (the default, 60 s, would make the
/// cases that outlive it wait a minute).
const RECORD_GRACE: Duration = Duration::from_secs(1);

struct RedisHarness;

impl RedisHarness {
    async fn new() -> Self {
        RedisHarness
    }
}

impl Harness for RedisHarness {
    type Storage = RedisStorage;

    async fn storage(&self) -> RedisStorage {
        RedisStorage::new(support::test_config().record_grace(RECORD_GRACE))
            .expect("valid test config")
    }

    async fn advance(&self, _: &RedisStorage, by: Duration) {
        tokio::time::sleep(by).await;
    }

    fn short_lease(&self) -> Duration {
        Duration::from_millis(300)
    }

    fn record_grace(&self) -> Duration {
        RECORD_GRACE
    }
}

lighthouse_lease::conformance_suite!(RedisHarness::new().await);

/// Behaviour specific to the Redis storage: script recovery, the key schema as
/// ops see it in `redis-cli`, bounded batches, and the GEO index.
mod redis_specific {
    use crate::support::{cn, pn};
    use std::collections::HashMap;
    use std::time::Duration;

    use lighthouse_lease::redis::RedisStorage;
    use lighthouse_lease::{
        AcquireRequest, AdminStorage, InMemoryStorage, LeaseStorage, PoolIndexes, Proxy,
        ProxyFilters, ProxyPool, ReleaseOutcome, SelectorStrategy,
    };

    use super::support;

    const POOL: &str = "latam-residential";

    async fn raw() -> redis::aio::MultiplexedConnection {
        support::raw_conn(&support::redis_url()).await
    }

    async fn setup(
        config: lighthouse_lease::redis::RedisConfig,
    ) -> (RedisStorage, ProxyPool, String) {
        let ns = config.get_namespace().to_string();
        let s = RedisStorage::new(config).unwrap();
        let pool = s.create_pool(ProxyPool::new(POOL).unwrap()).await.unwrap();
        s.ensure_consumer(&cn("worker-1")).await.unwrap();
        (s, pool, ns)
    }

    fn req() -> AcquireRequest {
        AcquireRequest::new(POOL, "worker-1", Duration::from_secs(60)).unwrap()
    }

    /// The PTTL of the record of the lease with this token (-1: no TTL, -2: no record).
    async fn record_pttl(ns: &str, token: u64) -> i64 {
        redis::cmd("PTTL")
            .arg(format!("{ns}:{{{POOL}}}:{token}"))
            .query_async(&mut raw().await)
            .await
            .unwrap()
    }

    async fn keys_of(ns: &str) -> Vec<String> {
        support::keys_under(ns).await
    }

    /// The operations are a Redis Functions library: after `FUNCTION FLUSH` (or a
    /// restart without persistence) the next call loads it again by itself.
    #[tokio::test]
    async fn functions_recover_after_function_flush() {
        if !support::owns_server() {
            eprintln!("skipped: FUNCTION FLUSH only on a server the tests started");
            return;
        }
        let (s, pool, _) = setup(support::test_config()).await;
        s.add_proxy(
            Proxy::builder(pool.id, "10.0.0.1", 8001)
                .max_concurrency(1)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
        let lease = s.acquire(&req()).await.unwrap().unwrap();
        let flush = || async {
            let _: () = redis::cmd("FUNCTION")
                .arg("FLUSH")
                .query_async(&mut raw().await)
                .await
                .unwrap();
        };
        flush().await;
        assert_eq!(s.release(&lease).await.unwrap(), ReleaseOutcome::Released);
        flush().await;
        assert!(
            s.acquire(&req()).await.unwrap().is_some(),
            "acquire after FUNCTION FLUSH"
        );
        let libs: Vec<redis::Value> = redis::cmd("FUNCTION")
            .arg("LIST")
            .arg("LIBRARYNAME")
            .arg(RedisStorage::library_name())
            .query_async(&mut raw().await)
            .await
            .unwrap();
        assert_eq!(libs.len(), 1, "the library is loaded again, once");
    }

    /// The library sets the function engine's collector step multiplier to 100
    /// (Lua's default is 200) on its first call: a probe library loaded beside
    /// it reads the setting back.
    #[tokio::test]
    async fn the_library_sets_the_collectors_step_multiplier() {
        if !support::owns_server() {
            eprintln!("skipped: loads a probe library only on a server the tests started");
            return;
        }
        let (s, pool, _) = setup(support::test_config()).await;
        s.add_proxy(Proxy::builder(pool.id, "10.0.0.1", 8001).build().unwrap())
            .await
            .unwrap();
        let lease = s.acquire(&req()).await.unwrap().unwrap();
        assert_eq!(s.release(&lease).await.unwrap(), ReleaseOutcome::Released);
        let mut conn = raw().await;
        let probe = "#!lua name=lhprobe_gc\n\
            redis.register_function('lhprobe_gc', function() \
            local was = collectgarbage('setstepmul', 100) return was end)";
        let _: String = redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(probe)
            .query_async(&mut conn)
            .await
            .unwrap();
        let was: i64 = redis::cmd("FCALL")
            .arg("lhprobe_gc")
            .arg(0)
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: () = redis::cmd("FUNCTION")
            .arg("DELETE")
            .arg("lhprobe_gc")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(was, 100, "the step multiplier the library left");
    }

    /// What ops see with `redis-cli`: the proxy as JSON, its seq in the ids
    /// shard, its count in the load index's score, the lease record as plain
    /// words with its TTL, the live set, the pool's meta.
    #[tokio::test]
    async fn redis_cli_view_of_a_proxy_and_a_lease() {
        let (s, pool, ns) = setup(support::test_config()).await;
        let p = s
            .add_proxy(
                Proxy::builder(pool.id, "10.0.0.7", 8007)
                    .max_concurrency(2)
                    .country("ar")
                    .city("Córdoba")
                    .credentials("user", "secret")
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap();
        let lease = s.acquire(&req()).await.unwrap().unwrap();
        let mut c = raw().await;
        let prefix = format!("{ns}:{{{POOL}}}:");
        let shard = format!("{prefix}ids:{}", &p.id.simple().to_string()[..2]);
        let seq: String = redis::cmd("HGET")
            .arg(&shard)
            .arg(p.id.to_string())
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(seq, "1");
        let json: String = redis::cmd("HGET")
            .arg(format!("{prefix}proxies"))
            .arg(&seq)
            .query_async(&mut c)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["id"], p.id.to_string());
        assert_eq!(v["host"], "10.0.0.7");
        assert_eq!(v["port"], 8007);
        assert_eq!(v["max"], 2);
        assert_eq!(v["country"], "AR");
        assert_eq!(v["city"], "Córdoba");
        assert_eq!(v["user"], "user");
        assert!(
            v.get("proto").is_none() && v.get("status").is_none(),
            "{json}"
        );
        // One lease: the count is the load score's high part.
        let score: f64 = redis::cmd("ZSCORE")
            .arg(format!("{prefix}idx:load:all"))
            .arg(&seq)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(score as u64, (1u64 << 32) + 1);
        let in_country: Option<f64> = redis::cmd("ZSCORE")
            .arg(format!("{prefix}idx:load:country=AR"))
            .arg(&seq)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(in_country, Some(score), "the declared attribute's index");
        let record_key = format!("{prefix}{}", lease.fencing_token);
        let record: String = redis::cmd("GET")
            .arg(&record_key)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(
            record,
            format!(
                "active 1 {} 60000 worker-1",
                lease.acquired_at.timestamp_millis()
            )
        );
        assert!(
            !record.contains("secret"),
            "no credentials in a lease record"
        );
        // A live lease's record has no TTL: the live set holds its expiry (see
        // a_record_gets_the_grace_when_its_lease_leaves_the_live_set).
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&record_key)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(ttl, -1, "a live lease's record has no TTL");
        let live: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(format!("{prefix}live"))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(
            live,
            vec![(format!("1:{}", lease.fencing_token), live[0].1)]
        );
        assert_eq!(live[0].1 as i64, lease.expires_at.timestamp_millis());
        let meta: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(format!("{prefix}meta"))
            .query_async(&mut c)
            .await
            .unwrap();
        for (k, v) in [
            ("name", POOL),
            ("schema", "2"),
            ("attrs", "country"),
            ("orders", "load"),
            ("proxies", "1"),
            ("active", "1"),
            ("banned", "0"),
        ] {
            assert_eq!(
                meta.get(k).map(String::as_str),
                Some(v),
                "meta {k}: {meta:?}"
            );
        }
        // The lease id carries the token and the pool.
        assert!(lease.id.to_string().ends_with(&pool.id.to_string()[18..]));
    }

    /// A live lease's record has no TTL (the live set holds the expiry, so an
    /// acquire call writes its records in one `MSET`), and gets the record
    /// grace as its TTL when its lease leaves the live set: released, released
    /// after its expiry, or reclaimed by cleanup; it goes at once when its
    /// proxy is removed. So no record outlives its lease by more than the grace. (Redis
    /// keeps its own time: the expiries here are waited for.)
    #[tokio::test]
    async fn a_record_gets_the_grace_when_its_lease_leaves_the_live_set() {
        let grace = Duration::from_secs(40);
        let (s, pool, ns) = setup(support::test_config().record_grace(grace)).await;
        for i in [1, 2] {
            let p = Proxy::builder(pool.id, format!("10.0.0.{i}"), 8000 + i)
                .max_concurrency(4)
                .build()
                .unwrap();
            s.add_proxy(p).await.unwrap();
        }
        let short = || AcquireRequest::new(POOL, "worker-1", Duration::from_millis(300)).unwrap();
        let (long, brief) = (req(), short());
        // Three concurrent acquires: batched into calls whose records go in one MSET.
        let (a, b, c) = tokio::join!(s.acquire(&long), s.acquire(&brief), s.acquire(&brief));
        let [released, late, reclaimed] = [a, b, c].map(|l| l.unwrap().expect("a free proxy"));
        // A proxy of its own for the lease whose proxy is removed (least used: it
        // gets the next lease).
        let own = s
            .add_proxy(
                Proxy::builder(pool.id, "10.0.0.3", 8003)
                    .max_concurrency(4)
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap();
        let orphan = s.acquire(&long).await.unwrap().expect("a free proxy");
        assert_eq!(orphan.proxy_id, own.id);
        let pttl = |token: u64| record_pttl(&ns, token);
        for l in [&released, &late, &reclaimed, &orphan] {
            assert_eq!(pttl(l.fencing_token).await, -1, "live: no TTL");
        }
        let in_grace = |ttl: i64| ttl > 30_000 && ttl <= 40_000;

        assert_eq!(
            s.release(&released).await.unwrap(),
            ReleaseOutcome::Released
        );
        let ttl = pttl(released.fencing_token).await;
        assert!(in_grace(ttl), "released: {ttl} ms");

        // The proxy of `orphan` is removed while it is leased: its lease leaves
        // the live set, and its record goes with it (its release is not_found).
        assert!(s.remove_proxy(orphan.proxy_id).await.unwrap());
        assert_eq!(
            pttl(orphan.fencing_token).await,
            -2,
            "a lease of a removed proxy"
        );
        assert_eq!(s.release(&orphan).await.unwrap(), ReleaseOutcome::NotFound);

        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(s.release(&late).await.unwrap(), ReleaseOutcome::Expired);
        let ttl = pttl(late.fencing_token).await;
        assert!(in_grace(ttl), "released after its expiry: {ttl} ms");

        assert_eq!(s.cleanup_expired_leases().await.unwrap(), 1);
        let ttl = pttl(reclaimed.fencing_token).await;
        assert!(in_grace(ttl), "reclaimed: {ttl} ms");
        assert_eq!(
            s.release(&reclaimed).await.unwrap(),
            ReleaseOutcome::Expired
        );
    }

    /// With no record grace, a record goes as soon as its lease leaves the
    /// live set: released (one lease, and a batch of them), released after its
    /// expiry, or reclaimed by cleanup.
    #[tokio::test]
    async fn with_no_grace_a_record_goes_when_its_lease_leaves_the_live_set() {
        let (s, pool, ns) = setup(support::test_config().record_grace(Duration::ZERO)).await;
        s.add_proxy(
            Proxy::builder(pool.id, "10.0.0.1", 8001)
                .max_concurrency(8)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
        let short = AcquireRequest::new(POOL, "worker-1", Duration::from_millis(300)).unwrap();
        let long = req();
        let (a, b, c, d, e) = tokio::join!(
            s.acquire(&long),
            s.acquire(&long),
            s.acquire(&long),
            s.acquire(&short),
            s.acquire(&short)
        );
        let [one, two, three, late, reclaimed] =
            [a, b, c, d, e].map(|l| l.unwrap().expect("a free slot"));
        let ns = ns.as_str();
        let exists = |token: u64| async move { record_pttl(ns, token).await != -2 };
        assert_eq!(s.release(&one).await.unwrap(), ReleaseOutcome::Released);
        assert!(!exists(one.fencing_token).await, "released alone");
        let (r2, r3) = tokio::join!(s.release(&two), s.release(&three));
        assert_eq!(
            (r2.unwrap(), r3.unwrap()),
            (ReleaseOutcome::Released, ReleaseOutcome::Released)
        );
        assert!(!exists(two.fencing_token).await && !exists(three.fencing_token).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(s.release(&late).await.unwrap(), ReleaseOutcome::Expired);
        assert!(
            !exists(late.fencing_token).await,
            "released after its expiry"
        );
        assert!(
            exists(reclaimed.fencing_token).await,
            "still in the live set"
        );
        assert_eq!(s.cleanup_expired_leases().await.unwrap(), 1);
        assert!(!exists(reclaimed.fencing_token).await, "reclaimed");
    }

    #[tokio::test]
    async fn every_pool_key_carries_the_hash_tag_and_values_are_encoded() {
        let ns = support::unique_namespace();
        let s = RedisStorage::new(support::test_config().namespace(&ns)).unwrap();
        let pool = s
            .create_pool(
                ProxyPool::new(POOL)
                    .unwrap()
                    .with_indexes(PoolIndexes::all()),
            )
            .await
            .unwrap();
        s.ensure_consumer(&cn("worker-1")).await.unwrap();
        let nasty = "a{b}:c d%20é";
        s.add_proxy(
            Proxy::builder(pool.id, "10.0.0.1", 8001)
                .city(nasty)
                .isp("x}")
                .location(-34.6, -58.4)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
        let lease = s
            .acquire(&req().with_filters(ProxyFilters::new().city(nasty)))
            .await
            .unwrap()
            .expect("the proxy matches its own city");
        s.release(&lease).await.unwrap();
        let registries = ["pools", "pool-ids", "consumers"].map(|k| format!("{ns}:{k}"));
        let tag = format!("{ns}:{{{POOL}}}:");
        for key in keys_of(&ns).await {
            if registries.contains(&key) {
                continue;
            }
            assert!(key.starts_with(&tag), "{key} lacks the pool's hash tag");
            let rest = &key[tag.len()..];
            assert!(!rest.contains(['{', '}', ' ']), "{key}: raw input in a key");
        }
        let keys = keys_of(&ns).await;
        for order in ["load", "seq", "lat"] {
            let key = format!("{tag}idx:{order}:city=a%7Bb%7D%3Ac%20d%2520%C3%A9");
            assert!(keys.contains(&key), "{key} in {keys:?}");
        }
    }

    #[tokio::test]
    async fn cleanup_works_in_bounded_batches() {
        let (s, pool, _) = setup(support::test_config().cleanup_batch(100).reclaim_batch(10)).await;
        let p = s
            .add_proxy(Proxy::builder(pool.id, "10.0.0.1", 8001).build().unwrap())
            .await
            .unwrap();
        // Long enough that no lease expires (and is reclaimed by a later acquire)
        // before all 350 are taken, even on a slow, busy machine.
        let lease = Duration::from_millis(2500);
        let short = AcquireRequest::new(POOL, "worker-1", lease).unwrap();
        let started = std::time::Instant::now();
        for _ in 0..350 {
            s.acquire(&short).await.unwrap().unwrap();
        }
        assert!(started.elapsed() < lease, "acquires too slow for this test");
        // The last lease was taken just now: wait a whole lease for it to expire.
        tokio::time::sleep(lease + Duration::from_millis(200)).await;
        assert_eq!(s.cleanup_expired_leases().await.unwrap(), 350);
        assert_eq!(s.cleanup_expired_leases().await.unwrap(), 0);
        assert_eq!(s.get_proxy(p.id).await.unwrap().unwrap().current_leases, 0);
        assert_eq!(s.pool_stats(&pn(POOL)).await.unwrap().total_leases, 0);
        assert!(s.list_leases(&pn(POOL)).await.unwrap().is_empty());
    }

    /// SLOWLOG shows cleanup as many short script calls, never one long one.
    #[tokio::test]
    async fn slowlog_shows_cleanup_in_bounded_batches() {
        if !support::owns_server() {
            eprintln!("skipped: CONFIG SET only on a server the tests started");
            return;
        }
        let (s, pool, ns) = setup(support::test_config().cleanup_batch(200)).await;
        s.add_proxy(Proxy::builder(pool.id, "10.0.0.1", 8001).build().unwrap())
            .await
            .unwrap();
        let short = AcquireRequest::new(POOL, "worker-1", Duration::from_secs(2)).unwrap();
        let mut tasks = Vec::new();
        let s = std::sync::Arc::new(s);
        for _ in 0..8 {
            let s = s.clone();
            let short = short.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..250 {
                    s.acquire(&short).await.unwrap().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let mut c = raw().await;
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("slowlog-max-len")
            .arg(10_000)
            .query_async(&mut c)
            .await
            .unwrap();
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("slowlog-log-slower-than")
            .arg(100)
            .query_async(&mut c)
            .await
            .unwrap();
        let _: () = redis::cmd("SLOWLOG")
            .arg("RESET")
            .query_async(&mut c)
            .await
            .unwrap();
        // Every script call over 100 µs is logged: each cleanup batch of 200 is.
        let expired = s.cleanup_expired_leases().await.unwrap();
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("slowlog-log-slower-than")
            .arg(10_000)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(expired, 2000);
        let log: Vec<redis::Value> = redis::cmd("SLOWLOG")
            .arg("GET")
            .arg(10_000)
            .query_async(&mut c)
            .await
            .unwrap();
        let meta = format!("{ns}:{{{POOL}}}:meta");
        let mut calls = Vec::new();
        for entry in log {
            let redis::Value::Array(fields) = entry else {
                continue;
            };
            let (Some(redis::Value::Int(micros)), Some(redis::Value::Array(args))) =
                (fields.get(2), fields.get(3))
            else {
                continue;
            };
            let args: Vec<String> = args
                .iter()
                .map(|a| match a {
                    redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                    _ => String::new(),
                })
                .collect();
            // cleanup is the function called with 2 keys: meta and live.
            if args.first().map(String::as_str) == Some("FCALL")
                && args.get(1).is_some_and(|f| f.ends_with("_cleanup"))
                && args.get(3) == Some(&meta)
            {
                calls.push(*micros);
            }
        }
        calls.sort_unstable();
        eprintln!(
            "cleanup of 2000 leases: {} script calls, slowest {} µs",
            calls.len(),
            calls.last().copied().unwrap_or(0)
        );
        assert!(
            calls.len() >= 10,
            "2000 leases in batches of 200 take at least 10 calls, got {}",
            calls.len()
        );
    }

    #[tokio::test]
    async fn acquire_on_a_full_pool_reclaims_a_large_backlog() {
        // More expired leases than one acquire reclaims: it must still find the slot.
        let (s, pool, _) = setup(support::test_config().reclaim_batch(5)).await;
        for i in 0..30u8 {
            s.add_proxy(
                Proxy::builder(pool.id, format!("10.0.0.{i}"), 8000)
                    .max_concurrency(1)
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap();
        }
        let short = AcquireRequest::new(POOL, "worker-1", Duration::from_millis(200)).unwrap();
        for _ in 0..30 {
            s.acquire(&short).await.unwrap().unwrap();
        }
        assert!(s.acquire(&req()).await.unwrap().is_none());
        tokio::time::sleep(Duration::from_millis(400)).await;
        let filtered =
            req().with_filters(ProxyFilters::new().none_of([ProxyFilters::new().city("nowhere")]));
        for _ in 0..30 {
            assert!(s.acquire(&filtered).await.unwrap().is_some());
        }
        assert!(s.acquire(&req()).await.unwrap().is_none());
        assert_eq!(s.pool_stats(&pn(POOL)).await.unwrap().total_leases, 30);
    }

    #[tokio::test]
    async fn removing_a_large_pool_leaves_no_key_behind() {
        let (s, pool, ns) = setup(support::test_config()).await;
        let batch: Vec<Proxy> = (0..2500u32)
            .map(|i| {
                Proxy::builder(pool.id, format!("10.0.{}.{}", i / 256, i % 256), 8000)
                    .country(["AR", "BR", "CL"][i as usize % 3])
                    .location(-34.0 + f64::from(i % 50) / 10.0, -58.0)
                    .build()
                    .unwrap()
            })
            .collect();
        let ids: Vec<_> = batch.iter().map(|p| p.id).collect();
        s.add_proxies(batch).await.unwrap();
        let _held = s.acquire(&req()).await.unwrap().unwrap();
        assert!(s.remove_pool(&pn(POOL)).await.unwrap());
        assert_eq!(s.get_proxy(ids[0]).await.unwrap(), None);
        let left: Vec<String> = keys_of(&ns)
            .await
            .into_iter()
            .filter(|k| !k.ends_with(":consumers"))
            .collect();
        assert!(
            left.is_empty(),
            "left behind: {:?}",
            &left[..left.len().min(10)]
        );
    }

    /// The GEO path (used when the smallest index has more than a batch of
    /// proxies) picks what the in-memory storage picks.
    #[tokio::test]
    async fn radius_selection_matches_the_in_memory_storage() {
        let (s, pool, _) = setup(support::test_config()).await;
        let mem = InMemoryStorage::new();
        let mpool = mem.create_pool(pool.clone()).await.unwrap();
        mem.ensure_consumer(&cn("worker-1")).await.unwrap();
        let mut proxies = Vec::new();
        for i in 0..200u32 {
            let lat = -40.0 + f64::from(i % 20) * 0.5;
            let lon = -60.0 + f64::from(i / 20) * 0.5;
            let b = Proxy::builder(mpool.id, format!("10.1.{}.{}", i / 256, i % 256), 8000)
                .location(lat, lon)
                .max_concurrency(1 + i % 3);
            proxies.push(b.build().unwrap());
        }
        // One proxy beyond GEO's latitude range.
        proxies.push(
            Proxy::builder(mpool.id, "10.9.9.9", 8000)
                .location(89.9, 0.0)
                .build()
                .unwrap(),
        );
        s.add_proxies(proxies.clone()).await.unwrap();
        mem.add_proxies(proxies).await.unwrap();
        let near = ProxyFilters::new().near(-37.0, -58.0, 120.0);
        for selector in [
            SelectorStrategy::FirstAvailable,
            SelectorStrategy::LeastUsed,
            SelectorStrategy::RoundRobin,
        ] {
            let r = req().with_filters(near.clone()).with_selector(selector);
            let mut got = (Vec::new(), Vec::new());
            loop {
                let a = s.acquire(&r).await.unwrap();
                let b = mem.acquire(&r).await.unwrap();
                assert_eq!(
                    a.as_ref().map(|l| l.proxy_id),
                    b.as_ref().map(|l| l.proxy_id),
                    "{selector}"
                );
                match (a, b) {
                    (Some(a), Some(b)) => {
                        got.0.push(a);
                        got.1.push(b);
                    }
                    _ => break,
                }
            }
            assert!(
                got.0.len() > 10,
                "{selector}: the circle holds several proxies"
            );
            for l in got.0 {
                assert_eq!(s.release(&l).await.unwrap(), ReleaseOutcome::Released);
            }
            for l in got.1 {
                mem.release(&l).await.unwrap();
            }
        }
        let polar = ProxyFilters::new().near(89.5, 10.0, 100.0);
        let l = s
            .acquire(&req().with_filters(polar))
            .await
            .unwrap()
            .expect("polar proxy");
        assert_eq!(l.proxy.host, "10.9.9.9");
    }

    /// Acquires skip the cooldown set until the pool's `cool_next` hint is due:
    /// a failure lowers the hint to its cooldown's end (the earliest wins), and
    /// the acquire that finds it due lifts what is over and resets the hint.
    #[tokio::test]
    async fn cooldown_hint_follows_the_earliest_cooldown() {
        use lighthouse_lease::CooldownPolicy;
        use redis::AsyncCommands;

        let (s, pool, ns) = setup(support::test_config()).await;
        let a = s
            .add_proxy(Proxy::builder(pool.id, "10.0.0.1", 80).build().unwrap())
            .await
            .unwrap();
        let b = s
            .add_proxy(Proxy::builder(pool.id, "10.0.0.2", 80).build().unwrap())
            .await
            .unwrap();
        let meta = format!("{ns}:{{{POOL}}}:meta");
        let mut c = raw().await;
        let hint = |c: &mut redis::aio::MultiplexedConnection| {
            let meta = meta.clone();
            let mut c = c.clone();
            async move {
                let v: Option<i64> = c.hget(&meta, "cool_next").await.unwrap();
                v
            }
        };
        assert_eq!(hint(&mut c).await, None, "no cooldown, no hint");

        let long = CooldownPolicy::default()
            .base(Duration::from_secs(600))
            .cap(Duration::from_secs(600))
            .jitter(0.0);
        let short = long
            .clone()
            .base(Duration::from_millis(300))
            .cap(Duration::from_millis(300));
        let a_cool = s.report_failure(a.id, "slow", &long).await.unwrap();
        let a_until = a_cool.cooldown_until.unwrap().timestamp_millis();
        assert_eq!(hint(&mut c).await, Some(a_until));
        let b_cool = s.report_failure(b.id, "slow", &short).await.unwrap();
        let b_until = b_cool.cooldown_until.unwrap().timestamp_millis();
        assert!(b_until < a_until);
        assert_eq!(hint(&mut c).await, Some(b_until), "the earlier end wins");

        // Both cooling: nothing to lease, and the hint is not due yet.
        assert!(s.acquire(&req()).await.unwrap().is_none());
        assert_eq!(hint(&mut c).await, Some(b_until));

        // Once b's cooldown is over, the next acquire lifts it and moves the hint
        // on to a's.
        tokio::time::sleep(Duration::from_millis(450)).await;
        let l = s.acquire(&req()).await.unwrap().expect("b is back");
        assert_eq!(l.proxy_id, b.id);
        assert_eq!(hint(&mut c).await, Some(a_until));

        // A success ends a's cooldown early: the hint is early too (never late),
        // and the acquire that finds it due clears it.
        let _ = s.report_success(a.id).await.unwrap();
        let _: () = c.hset(&meta, "cool_next", 1).await.unwrap();
        let again = s.acquire(&req()).await.unwrap().expect("a is back");
        assert_eq!(again.proxy_id, a.id);
        assert_eq!(hint(&mut c).await, None);
    }

    /// The stats count cooling proxies by the end of their cooldown, not by the
    /// size of the cooldown set (which is cleaned lazily), and banned proxies by
    /// the meta's `banned` counter; a pool whose meta has no such counter
    /// (written before it was kept) reads 0, and lifting a ban there leaves it
    /// at 0, never below.
    #[tokio::test]
    async fn stats_count_cooldowns_by_their_end_and_bans_by_the_meta_counter() {
        use lighthouse_lease::{CooldownPolicy, ProxyStatus};
        use redis::AsyncCommands;

        let (s, pool, ns) = setup(support::test_config()).await;
        let a = s
            .add_proxy(Proxy::builder(pool.id, "10.0.0.1", 80).build().unwrap())
            .await
            .unwrap();
        let b = s
            .add_proxy(Proxy::builder(pool.id, "10.0.0.2", 80).build().unwrap())
            .await
            .unwrap();
        let (meta, cooldown) = (
            format!("{ns}:{{{POOL}}}:meta"),
            format!("{ns}:{{{POOL}}}:cooldown"),
        );
        let mut c = raw().await;
        let second = CooldownPolicy::default()
            .base(Duration::from_secs(1))
            .cap(Duration::from_secs(1))
            .jitter(0.0)
            .ban_after(None);
        s.report_failure(a.id, "slow", &second).await.unwrap();
        assert_eq!(
            s.pool_stats_snapshot(POOL).await.unwrap().cooling_proxies,
            1
        );
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        // The snapshot lifts nothing: a is still in the set, its cooldown over.
        let in_set: u64 = c.zcard(&cooldown).await.unwrap();
        assert_eq!(in_set, 1);
        assert_eq!(
            s.pool_stats_snapshot(POOL).await.unwrap().cooling_proxies,
            0
        );

        s.set_proxy_status(b.id, ProxyStatus::Banned).await.unwrap();
        let banned: Option<String> = c.hget(&meta, "banned").await.unwrap();
        assert_eq!(banned.as_deref(), Some("1"));
        assert_eq!(s.pool_stats_snapshot(POOL).await.unwrap().banned_proxies, 1);

        // As a pool created before the counter existed.
        let _: () = c.hdel(&meta, "banned").await.unwrap();
        assert_eq!(s.pool_stats_snapshot(POOL).await.unwrap().banned_proxies, 0);
        s.set_proxy_status(b.id, ProxyStatus::Active).await.unwrap();
        let banned: Option<String> = c.hget(&meta, "banned").await.unwrap();
        assert_eq!(banned.as_deref(), Some("0"));
        let stats = s.pool_stats(&pn(POOL)).await.unwrap();
        assert_eq!((stats.banned_proxies, stats.active_proxies), (0, 2));
    }
}
