#![cfg(feature = "redis")]
//! Natural batching in `RedisStorage`: concurrent acquires (and releases) of one
//! pool share script calls, and each request in a batch is still served as if
//! alone. Each test has its own `redis-server`, so `INFO commandstats` counts
//! only its own calls (`FCALL`, one per script call); the runtime is current-thread, so every spawned call
//! queues before the first one's reply is read (the batches are deterministic).

mod support;
use support::{cn, pn};

use std::collections::HashSet;
use std::time::Duration;

use lighthouse_lease::redis::{RedisConfig, RedisStorage};
use lighthouse_lease::{
    AcquireOptions, AdminStorage, Lease, LeaseStorage, ProxyFilters, ProxyManager, ProxyPool,
    ReleaseOutcome, SelectorStrategy,
};
use support::server::RedisServer;
use tokio::task::JoinSet;

const POOL: &str = "batch-pool";

type Manager = ProxyManager<RedisStorage>;

/// A manager on a private server with `n` proxies of `max_concurrency` 1, every
/// other one in CL (the rest in AR), with the script and consumer caches warm.
async fn setup(server: &RedisServer, max_batch: usize, n: usize) -> Manager {
    let config =
        support::counting_config(&server.url(), &support::unique_namespace()).max_batch(max_batch);
    let (m, pool) = support::manager_with_pool(config, POOL).await;
    support::add_proxies(m.storage(), &pool, 1, n, |i, b| {
        b.max_concurrency(1)
            .country(if i % 2 == 0 { "CL" } else { "AR" })
    })
    .await;
    warm(&m).await;
    m
}

/// A manager in namespace `ns` on a private server with an empty pool `POOL`
/// (batches of up to 32, one call in flight per lane, not fitted to the link).
async fn empty_pool(server: &RedisServer, ns: &str) -> (Manager, ProxyPool) {
    let config = support::counting_config(&server.url(), ns).max_batch(32);
    let (m, pool) = support::manager_with_pool(config, POOL).await;
    (m, pool)
}

/// One acquire and its release: the library loads on the first call (one
/// FCALL more), so tests that count calls do this first.
async fn warm(m: &Manager) {
    let lease = m
        .acquire_proxy(POOL, AcquireOptions::new())
        .await
        .unwrap()
        .unwrap();
    m.release_proxy(&lease).await.unwrap();
}

async fn admin(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    support::raw_conn(&server.url()).await
}

async fn reset_stats(c: &mut redis::aio::MultiplexedConnection) {
    support::reset_stats(c).await
}

/// Script calls (`FCALL`) since the last reset.
async fn fcall_calls(c: &mut redis::aio::MultiplexedConnection) -> u64 {
    support::command_calls(c, "fcall").await
}

async fn acquire_all(m: &Manager, n: usize) -> Vec<Lease> {
    let mut set = JoinSet::new();
    for _ in 0..n {
        let m = m.clone();
        set.spawn(async move { m.acquire_proxy(POOL, AcquireOptions::new()).await });
    }
    let mut leases = Vec::new();
    while let Some(done) = set.join_next().await {
        leases.push(
            done.unwrap()
                .unwrap()
                .expect("a free proxy for every caller"),
        );
    }
    leases
}

async fn release_all(m: &Manager, leases: Vec<Lease>) -> Vec<ReleaseOutcome> {
    let mut set = JoinSet::new();
    for lease in leases {
        let m = m.clone();
        set.spawn(async move { m.release_proxy(&lease).await });
    }
    let mut out = Vec::new();
    while let Some(done) = set.join_next().await {
        out.push(done.unwrap().unwrap());
    }
    out
}

#[tokio::test(flavor = "current_thread")]
async fn concurrent_acquires_and_releases_share_script_calls_and_keep_limits() {
    let server = RedisServer::spawn().unwrap();
    let m = setup(&server, 32, 40).await;
    let mut admin = admin(&server).await;

    reset_stats(&mut admin).await;
    let leases = acquire_all(&m, 40).await;
    let calls = fcall_calls(&mut admin).await;
    // The first call goes alone; the 39 queued behind it go as 32 + 7.
    assert_eq!(calls, 3, "40 acquires in {calls} script calls");
    let proxies: HashSet<_> = leases.iter().map(|l| l.proxy_id).collect();
    assert_eq!(
        proxies.len(),
        40,
        "max_concurrency 1: every lease on its own proxy"
    );
    let tokens: HashSet<_> = leases.iter().map(|l| l.fencing_token).collect();
    assert_eq!(tokens.len(), 40, "fencing tokens are unique within a batch");

    reset_stats(&mut admin).await;
    let outcomes = release_all(&m, leases).await;
    let calls = fcall_calls(&mut admin).await;
    assert_eq!(calls, 3, "40 releases in {calls} script calls");
    assert!(outcomes.iter().all(|o| *o == ReleaseOutcome::Released));
    let stats = m.storage().pool_stats(&pn(POOL)).await.unwrap();
    assert_eq!(stats.total_leases, 0);
    assert!(m
        .storage()
        .list_proxies(&pn(POOL))
        .await
        .unwrap()
        .iter()
        .all(|p| p.current_leases == 0));
}

#[tokio::test(flavor = "current_thread")]
async fn each_request_of_a_batch_is_served_its_own_way() {
    let server = RedisServer::spawn().unwrap();
    let m = setup(&server, 32, 6).await;
    let first = m
        .acquire_proxy(POOL, AcquireOptions::new().request_id("job-1"))
        .await
        .unwrap()
        .unwrap();
    let mut admin = admin(&server).await;
    reset_stats(&mut admin).await;

    // The lone first call, then one batch of four different requests.
    let opener = {
        let m = m.clone();
        tokio::spawn(async move { m.acquire_proxy(POOL, AcquireOptions::new()).await })
    };
    let again = {
        let m = m.clone();
        tokio::spawn(async move {
            m.acquire_proxy(POOL, AcquireOptions::new().request_id("job-1"))
                .await
        })
    };
    let chile = {
        let m = m.clone();
        tokio::spawn(async move {
            m.acquire_proxy(
                POOL,
                AcquireOptions::new()
                    .filters(ProxyFilters::new().country("cl"))
                    .duration(Duration::from_secs(90)),
            )
            .await
        })
    };
    let brazil = {
        let m = m.clone();
        tokio::spawn(async move {
            m.acquire_proxy(
                POOL,
                AcquireOptions::new().filters(ProxyFilters::new().country("BR")),
            )
            .await
        })
    };
    let first_free = {
        let m = m.clone();
        tokio::spawn(async move {
            m.acquire_proxy(
                POOL,
                AcquireOptions::new().selector(SelectorStrategy::FirstAvailable),
            )
            .await
        })
    };
    let opener = opener.await.unwrap().unwrap().expect("a free proxy");
    let again = again
        .await
        .unwrap()
        .unwrap()
        .expect("the first lease again");
    let chile = chile.await.unwrap().unwrap().expect("a free CL proxy");
    let brazil = brazil.await.unwrap().unwrap();
    let first_free = first_free.await.unwrap().unwrap().expect("a free proxy");
    assert_eq!(fcall_calls(&mut admin).await, 2, "one lone call, one batch");

    assert_eq!(
        again.id, first.id,
        "the same request id gets the same lease"
    );
    let proxies = m.storage().list_proxies(&pn(POOL)).await.unwrap();
    let chile_proxy = proxies.iter().find(|p| p.id == chile.proxy_id).unwrap();
    assert_eq!(chile_proxy.country.as_deref(), Some("CL"));
    assert_eq!(
        chile.expires_at - chile.acquired_at,
        chrono::Duration::seconds(90)
    );
    assert!(brazil.is_none(), "no BR proxy: nothing for that request");
    let taken: HashSet<_> = [
        first.proxy_id,
        opener.proxy_id,
        chile.proxy_id,
        first_free.proxy_id,
    ]
    .into_iter()
    .collect();
    assert_eq!(taken.len(), 4, "no proxy leased twice");
    assert_eq!(
        m.storage()
            .pool_stats(&pn(POOL))
            .await
            .unwrap()
            .total_leases,
        4
    );
}

/// A batch of acquires for several countries (one attribute, so no proxy is
/// in two of their indexes) is one call that serves each request from its own
/// country's index, least used first, in arrival order.
#[tokio::test(flavor = "current_thread")]
async fn a_batch_of_acquires_for_several_countries_serves_each_from_its_own() {
    let server = RedisServer::spawn().unwrap();
    // Proxies 0, 2, 4, 6 in CL; 1, 3, 5, 7 in AR; one slot each.
    let m = setup(&server, 32, 8).await;
    let proxies = m.storage().list_proxies(&pn(POOL)).await.unwrap();
    let seq_of = |id: uuid::Uuid| proxies.iter().position(|p| p.id == id).unwrap();
    let mut admin = admin(&server).await;
    reset_stats(&mut admin).await;
    // The lone first call (unfiltered: proxy 0), then CL, AR, CL, AR in one
    // batch behind it.
    let spawn = |country: Option<&'static str>| {
        let m = m.clone();
        tokio::spawn(async move {
            let mut o = AcquireOptions::new();
            if let Some(c) = country {
                o = o.filters(ProxyFilters::new().country(c));
            }
            m.acquire_proxy(POOL, o)
                .await
                .unwrap()
                .expect("a free proxy")
        })
    };
    let opener = spawn(None);
    let queued: Vec<_> = ["CL", "AR", "CL", "AR"]
        .into_iter()
        .map(|c| spawn(Some(c)))
        .collect();
    assert_eq!(seq_of(opener.await.unwrap().proxy_id), 0);
    let mut got = Vec::new();
    for t in queued {
        got.push(seq_of(t.await.unwrap().proxy_id));
    }
    assert_eq!(
        got,
        [2, 1, 4, 3],
        "each from its country, lowest sequence first"
    );
    assert_eq!(fcall_calls(&mut admin).await, 2, "one lone call, one batch");
    // The straight way read the JSONs it did not remember yet (proxies 1-4;
    // the warm-up read proxy 0's) with one HGET each as its walk reached them,
    // where the general way reads a request's candidates with one HMGET.
    let stats = support::commandstats(&mut admin).await;
    assert_eq!(stats.get("hget"), Some(&4), "{stats:?}");
    for p in &proxies {
        let want = u32::from([0, 1, 2, 3, 4].contains(&seq_of(p.id)));
        assert_eq!(
            support::leases_of(m.storage(), p.id).await,
            want,
            "{}",
            p.host
        );
    }
    let fixes = m.storage().audit_pool(POOL, 100).await.unwrap();
    assert!(fixes.is_empty(), "{fixes:?}");
}

/// A request like the one before it in a batch is not parsed again (the
/// script shares the previous one's table): each still gets its own options, whether
/// it repeats its neighbour, differs from it in one option only (its consumer,
/// say), or names a request id.
#[tokio::test(flavor = "current_thread")]
async fn repeated_requests_in_a_batch_keep_their_own_options() {
    let server = RedisServer::spawn().unwrap();
    let m = setup(&server, 32, 12).await;
    for name in ["worker-2", "worker-3"] {
        m.storage().ensure_consumer(&cn(name)).await.unwrap();
    }
    let mut admin = admin(&server).await;
    reset_stats(&mut admin).await;
    let chile = || AcquireOptions::new().filters(ProxyFilters::new().country("CL"));
    let long = || AcquireOptions::new().duration(Duration::from_secs(90));
    // (options, in CL, 90 s); the first goes alone, the rest in one batch.
    let plan: Vec<(AcquireOptions, bool, bool)> = vec![
        (AcquireOptions::new(), false, false),
        (AcquireOptions::new(), false, false),
        (AcquireOptions::new(), false, false),
        (chile(), true, false),
        (chile(), true, false),
        (long(), false, true),
        (long(), false, true),
        (AcquireOptions::new(), false, false),
        (AcquireOptions::new().request_id("job-x"), false, false),
        (AcquireOptions::new().consumer("worker-2"), false, false),
        (AcquireOptions::new().consumer("worker-3"), false, false),
    ];
    let tasks: Vec<_> = plan
        .iter()
        .map(|(o, _, _)| {
            let (m, o) = (m.clone(), o.clone());
            tokio::spawn(async move { m.acquire_proxy(POOL, o).await })
        })
        .collect();
    let mut leases = Vec::new();
    for t in tasks {
        leases.push(t.await.unwrap().unwrap().expect("a free proxy"));
    }
    let names: Vec<&str> = leases.iter().map(|l| l.consumer_name.as_str()).collect();
    assert_eq!(
        names[9..],
        ["worker-2", "worker-3"],
        "each its own consumer"
    );
    assert!(names[..9].iter().all(|n| *n == names[0]));
    assert_eq!(fcall_calls(&mut admin).await, 2, "one lone call, one batch");
    let proxies = m.storage().list_proxies(&pn(POOL)).await.unwrap();
    let default = leases[0].expires_at - leases[0].acquired_at;
    assert_ne!(default, chrono::Duration::seconds(90));
    for (i, (lease, (_, in_chile, long))) in leases.iter().zip(&plan).enumerate() {
        let p = proxies.iter().find(|p| p.id == lease.proxy_id).unwrap();
        if *in_chile {
            assert_eq!(p.country.as_deref(), Some("CL"), "request {i}");
        }
        let want = if *long {
            chrono::Duration::seconds(90)
        } else {
            default
        };
        assert_eq!(lease.expires_at - lease.acquired_at, want, "request {i}");
    }
    let taken: HashSet<_> = leases.iter().map(|l| l.proxy_id).collect();
    assert_eq!(taken.len(), plan.len(), "no proxy leased twice");
    let again = m
        .acquire_proxy(POOL, AcquireOptions::new().request_id("job-x"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.id, leases[8].id, "the request id was kept");
}

/// A request without a request id goes to the script as its consumer and one
/// "spec" argument, which the script reads once per pool and keeps: calls one
/// after another with different options each get their own, and a pool created
/// again under the same name with other indexes does not reuse what the script
/// kept for the first (the spec `country=CL` is an index look-up in the first
/// pool, a filter to test in the second).
#[tokio::test(flavor = "current_thread")]
async fn request_specs_kept_by_the_script_serve_each_call_its_own_options() {
    let server = RedisServer::spawn().unwrap();
    let ns = support::unique_namespace();
    let chile = || ProxyFilters::new().country("CL");
    let long = Duration::from_secs(90);
    let (m, _) = empty_pool(&server, &ns).await;
    for indexes in [
        lighthouse_lease::PoolIndexes::default(),
        lighthouse_lease::PoolIndexes::new(),
    ] {
        assert!(m.storage().remove_pool(&pn(POOL)).await.unwrap());
        let pool = m
            .storage()
            .create_pool(ProxyPool::new(POOL).unwrap().with_indexes(indexes.clone()))
            .await
            .unwrap();
        // Eight in AR, then four in CL: unfiltered requests take AR proxies
        // first (least used, then the lowest sequence number).
        support::add_proxies(m.storage(), &pool, 2, 12, |i, b| {
            b.max_concurrency(1)
                .country(if i >= 8 { "CL" } else { "AR" })
        })
        .await;
        // (options, in CL, 90 s), each call alone and held until the end.
        let plan: Vec<(AcquireOptions, bool, bool)> = vec![
            (AcquireOptions::new().filters(chile()), true, false),
            (AcquireOptions::new(), false, false),
            (AcquireOptions::new().duration(long), false, true),
            (AcquireOptions::new().filters(chile()), true, false),
            (
                AcquireOptions::new().filters(chile()).duration(long),
                true,
                true,
            ),
            (AcquireOptions::new().duration(long), false, true),
            (AcquireOptions::new().filters(chile()), true, false),
        ];
        let mut leases = Vec::new();
        for (o, _, _) in &plan {
            leases.push(
                m.acquire_proxy(POOL, o.clone())
                    .await
                    .unwrap()
                    .expect("a free proxy"),
            );
        }
        let listed = m.storage().list_proxies(&pn(POOL)).await.unwrap();
        let default = leases[1].expires_at - leases[1].acquired_at;
        assert_ne!(default, chrono::Duration::seconds(90));
        for (i, (lease, (_, in_chile, is_long))) in leases.iter().zip(&plan).enumerate() {
            let p = listed.iter().find(|p| p.id == lease.proxy_id).unwrap();
            if *in_chile {
                assert_eq!(p.country.as_deref(), Some("CL"), "{indexes:?}: request {i}");
            }
            let want = if *is_long {
                chrono::Duration::seconds(90)
            } else {
                default
            };
            assert_eq!(
                lease.expires_at - lease.acquired_at,
                want,
                "{indexes:?}: request {i}"
            );
        }
        // The four CL proxies are all held: the next CL request finds none,
        // while a request without the filter still gets an AR proxy.
        assert!(m
            .acquire_proxy(POOL, AcquireOptions::new().filters(chile()))
            .await
            .unwrap()
            .is_none());
        let last = m
            .acquire_proxy(POOL, AcquireOptions::new())
            .await
            .unwrap()
            .expect("AR proxies left");
        let p = listed.iter().find(|p| p.id == last.proxy_id).unwrap();
        assert_eq!(p.country.as_deref(), Some("AR"));
    }
}

/// A request too large for a spec (a filter of tens of kilobytes) goes as the
/// full block and is read as before: the script's bound on a spec is not a
/// bound on requests.
#[tokio::test(flavor = "current_thread")]
async fn a_request_too_large_for_a_spec_goes_as_a_full_block() {
    let server = RedisServer::spawn().unwrap();
    let m = setup(&server, 32, 4).await;
    // 60 required cities of 1,000 bytes: about 60 kB of filter JSON and as much
    // in index tags, each within the script's limits for a full block.
    let cities = (0..60).map(|i| ProxyFilters::new().city(format!("{i:02}{}", "x".repeat(998))));
    let big = AcquireOptions::new().filters(ProxyFilters::new().all_of(cities));
    assert!(
        m.acquire_proxy(POOL, big).await.unwrap().is_none(),
        "no proxy is in those cities"
    );
    // The pool still serves a plain request after it.
    assert!(m
        .acquire_proxy(POOL, AcquireOptions::new())
        .await
        .unwrap()
        .is_some());
}

/// The live set is a skiplist as soon as a batch adds several leases to it
/// (a listpack, Redis's small-set encoding, would be scanned by every ZADD, ZREM
/// and ZMSCORE), and the member that converts it leaves no trace; once emptied
/// (Redis deletes it), the next batch makes the new one a skiplist again.
#[tokio::test(flavor = "current_thread")]
async fn a_batch_makes_the_live_set_a_skiplist_without_a_trace() {
    let server = RedisServer::spawn().unwrap();
    let m = setup(&server, 32, 10).await;
    let live = format!("{}:{{{POOL}}}:live", m.storage().config().get_namespace());
    let mut admin = admin(&server).await;
    for round in 0..2 {
        let leases = acquire_all(&m, 5).await;
        let encoding: String = redis::cmd("OBJECT")
            .arg("ENCODING")
            .arg(&live)
            .query_async(&mut admin)
            .await
            .unwrap();
        assert_eq!(encoding, "skiplist", "round {round}");
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(&live)
            .arg(0)
            .arg(-1)
            .query_async(&mut admin)
            .await
            .unwrap();
        assert_eq!(members.len(), 5, "only the leases: {members:?}");
        assert!(members.iter().all(|m| m.contains(':')), "{members:?}");
        assert!(release_all(&m, leases)
            .await
            .iter()
            .all(|o| *o == ReleaseOutcome::Released));
        let exists: bool = redis::cmd("EXISTS")
            .arg(&live)
            .query_async(&mut admin)
            .await
            .unwrap();
        assert!(!exists, "an empty live set is deleted");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_lease_released_twice_in_one_batch_frees_one_slot() {
    let server = RedisServer::spawn().unwrap();
    let m = setup(&server, 32, 2).await;
    let held = m
        .acquire_proxy(POOL, AcquireOptions::new())
        .await
        .unwrap()
        .unwrap();
    let other = m
        .acquire_proxy(POOL, AcquireOptions::new())
        .await
        .unwrap()
        .unwrap();
    let mut outcomes = release_all(&m, vec![other.clone(), held.clone(), held.clone()]).await;
    outcomes.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(
        outcomes,
        vec![
            ReleaseOutcome::AlreadyReleased,
            ReleaseOutcome::Released,
            ReleaseOutcome::Released
        ]
    );
    let proxies = m.storage().list_proxies(&pn(POOL)).await.unwrap();
    assert!(proxies.iter().all(|p| p.current_leases == 0), "{proxies:?}");
    assert_eq!(
        m.storage()
            .pool_stats(&pn(POOL))
            .await
            .unwrap()
            .total_leases,
        0
    );
}

/// A batch of releases with several leases of one proxy (max_concurrency 4,
/// three leases each, so the proxies stay in their indexes and the batch takes
/// the straight path): each lease gives exactly one slot back (a proxy is
/// counted down once per lease), the records read `released`, and the whole
/// capacity is there again, round after round.
#[tokio::test(flavor = "current_thread")]
async fn a_batch_of_releases_counts_each_lease_of_a_proxy() {
    let server = RedisServer::spawn().unwrap();
    let ns = support::unique_namespace();
    let (m, pool) = empty_pool(&server, &ns).await;
    support::add_proxies(m.storage(), &pool, 3, 2, |_, b| b.max_concurrency(4)).await;
    let mut admin = admin(&server).await;
    for round in 0..3 {
        let leases = acquire_all(&m, 6).await;
        reset_stats(&mut admin).await;
        let outcomes = release_all(&m, leases.clone()).await;
        assert!(
            outcomes.iter().all(|o| *o == ReleaseOutcome::Released),
            "round {round}: {outcomes:?}"
        );
        // The first release goes alone, the other five in one call.
        assert_eq!(fcall_calls(&mut admin).await, 2, "round {round}");
        for l in &leases {
            let record: String = redis::cmd("GET")
                .arg(format!("{ns}:{{{POOL}}}:{}", l.fencing_token))
                .query_async(&mut admin)
                .await
                .unwrap();
            assert!(record.starts_with("released "), "{record}");
        }
        assert_eq!(
            m.storage()
                .pool_stats(&pn(POOL))
                .await
                .unwrap()
                .total_leases,
            0,
            "round {round}"
        );
        let listed = m.storage().list_proxies(&pn(POOL)).await.unwrap();
        assert!(listed.iter().all(|p| p.current_leases == 0), "{listed:?}");
        // Every slot is free again: eight leases, not a ninth.
        let all = acquire_all(&m, 8).await;
        assert!(
            m.acquire_proxy(POOL, AcquireOptions::new())
                .await
                .unwrap()
                .is_none(),
            "round {round}: eight slots"
        );
        release_all(&m, all).await;
    }
}

/// Batches of acquires that take each proxy several times (two proxies of
/// max_concurrency 4): six callers get three leases on each (least used
/// first, each lease counted in the index), two more fill them (out of the
/// indexes once full), a ninth gets nothing, and every slot comes back on
/// release, round after round.
#[tokio::test(flavor = "current_thread")]
async fn a_batch_of_acquires_counts_each_lease_of_a_proxy() {
    let server = RedisServer::spawn().unwrap();
    let (m, pool) = empty_pool(&server, &support::unique_namespace()).await;
    support::add_proxies(m.storage(), &pool, 4, 2, |_, b| b.max_concurrency(4)).await;
    warm(&m).await;
    let mut admin = admin(&server).await;
    for round in 0..3 {
        reset_stats(&mut admin).await;
        let leases = acquire_all(&m, 6).await;
        // The first acquire goes alone, the other five in one call.
        assert_eq!(fcall_calls(&mut admin).await, 2, "round {round}");
        let listed = m.storage().list_proxies(&pn(POOL)).await.unwrap();
        assert!(listed.iter().all(|p| p.current_leases == 3), "{listed:?}");
        let tokens: HashSet<u64> = leases.iter().map(|l| l.fencing_token).collect();
        assert_eq!(tokens.len(), 6, "one token per lease");
        let mut leases = leases;
        leases.extend(acquire_all(&m, 2).await);
        let listed = m.storage().list_proxies(&pn(POOL)).await.unwrap();
        assert!(listed.iter().all(|p| p.current_leases == 4), "{listed:?}");
        assert!(
            m.acquire_proxy(POOL, AcquireOptions::new())
                .await
                .unwrap()
                .is_none(),
            "round {round}: eight slots"
        );
        assert_eq!(
            m.storage()
                .pool_stats(&pn(POOL))
                .await
                .unwrap()
                .total_leases,
            8,
            "round {round}"
        );
        let outcomes = release_all(&m, leases).await;
        assert!(outcomes.iter().all(|o| *o == ReleaseOutcome::Released));
    }
}

/// Random rounds of concurrent acquires and releases (batched, so they take
/// the straight batch paths where they can and the general ones where they
/// cannot) on proxies of max_concurrency 1 to 4, some filtered by country:
/// after every round each proxy's count is exactly the leases held on it,
/// never above its limit, every lease's proxy matches its filter, and an
/// acquire gets nothing only when no matching proxy has a free slot.
#[tokio::test(flavor = "current_thread")]
async fn random_batches_keep_every_count_exact() {
    let server = RedisServer::spawn().unwrap();
    let (m, pool) = empty_pool(&server, &support::unique_namespace()).await;
    let mut rng = fastrand::Rng::with_seed(0x5eed_1ea5e);
    let proxies = support::add_proxies(m.storage(), &pool, 5, 12, |i, b| {
        b.max_concurrency(1 + (i % 4) as u32)
            .country(if i % 3 == 0 { "CL" } else { "AR" })
    })
    .await;
    let max: std::collections::HashMap<_, _> = proxies
        .iter()
        .map(|p| {
            (
                p.id,
                (p.max_concurrency.unwrap_or(u32::MAX), p.country.clone()),
            )
        })
        .collect();
    let mut held: Vec<Lease> = Vec::new();
    for round in 0..60 {
        // Release a random share of the leases held, all at once.
        let keep = rng.usize(0..=held.len());
        rng.shuffle(&mut held);
        let gone: Vec<Lease> = held.split_off(keep);
        let outcomes = release_all(&m, gone).await;
        assert!(
            outcomes.iter().all(|o| *o == ReleaseOutcome::Released),
            "round {round}: {outcomes:?}"
        );
        // Then a random number of acquires, all at once, some in CL only.
        let n = rng.usize(1..=20);
        let chile: Vec<bool> = (0..n).map(|_| rng.bool()).collect();
        let tasks: Vec<_> = chile
            .iter()
            .map(|&cl| {
                let m = m.clone();
                let o = if cl {
                    AcquireOptions::new().filters(ProxyFilters::new().country("CL"))
                } else {
                    AcquireOptions::new()
                };
                tokio::spawn(async move { m.acquire_proxy(POOL, o).await })
            })
            .collect();
        let mut none_cl = false;
        let mut none_any = false;
        for (t, cl) in tasks.into_iter().zip(&chile) {
            match t.await.unwrap().unwrap() {
                Some(l) => {
                    if *cl {
                        assert_eq!(max[&l.proxy_id].1.as_deref(), Some("CL"), "round {round}");
                    }
                    held.push(l);
                }
                None if *cl => none_cl = true,
                None => none_any = true,
            }
        }
        let mut mine: std::collections::HashMap<_, u32> = Default::default();
        for l in &held {
            *mine.entry(l.proxy_id).or_default() += 1;
        }
        let listed = m.storage().list_proxies(&pn(POOL)).await.unwrap();
        for p in &listed {
            let want = mine.get(&p.id).copied().unwrap_or(0);
            assert_eq!(p.current_leases, want, "round {round}: {p:?}");
            assert!(want <= max[&p.id].0, "round {round}: over its limit");
        }
        let free = |cl: bool| {
            listed.iter().any(|p| {
                p.current_leases < max[&p.id].0 && (!cl || max[&p.id].1.as_deref() == Some("CL"))
            })
        };
        if none_any {
            assert!(!free(false), "round {round}: refused with a free slot");
        }
        if none_cl {
            assert!(!free(true), "round {round}: refused with a free CL slot");
        }
        assert_eq!(
            m.storage()
                .pool_stats(&pn(POOL))
                .await
                .unwrap()
                .total_leases,
            held.len() as u64,
            "round {round}"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn max_batch_one_sends_every_call_alone() {
    let server = RedisServer::spawn().unwrap();
    let m = setup(&server, 1, 10).await;
    let mut admin = admin(&server).await;
    reset_stats(&mut admin).await;
    let leases = acquire_all(&m, 10).await;
    assert_eq!(fcall_calls(&mut admin).await, 10);
    let outcomes = release_all(&m, leases).await;
    assert!(outcomes.iter().all(|o| *o == ReleaseOutcome::Released));
}

/// With two calls in flight per pool and kind, the second caller goes at once
/// instead of queueing behind the first (a slow link then carries two batches
/// per round trip), and the queue drains into whichever slot frees first.
#[tokio::test(flavor = "current_thread")]
async fn two_batches_may_be_in_flight_at_once() {
    let server = RedisServer::spawn().unwrap();
    let config = RedisConfig::from_url(server.url())
        .namespace(support::unique_namespace())
        .max_batch(32)
        .max_in_flight(2)
        .fit_in_flight(false);
    let (m, pool) = support::manager_with_pool(config, POOL).await;
    support::add_proxies(m.storage(), &pool, 2, 40, |_, b| b.max_concurrency(1)).await;
    warm(&m).await;
    let mut admin = admin(&server).await;
    reset_stats(&mut admin).await;
    let leases = acquire_all(&m, 40).await;
    // Two go alone (two slots), the 38 queued behind them as 32 + 6.
    assert_eq!(fcall_calls(&mut admin).await, 4);
    let distinct: HashSet<_> = leases.iter().map(|l| l.proxy_id).collect();
    assert_eq!(
        distinct.len(),
        40,
        "max_concurrency 1 holds across batches in flight"
    );
    let tokens: HashSet<_> = leases.iter().map(|l| l.fencing_token).collect();
    assert_eq!(tokens.len(), 40);
    reset_stats(&mut admin).await;
    let outcomes = release_all(&m, leases).await;
    assert!(outcomes.iter().all(|o| *o == ReleaseOutcome::Released));
    assert_eq!(fcall_calls(&mut admin).await, 4);
    assert_eq!(
        m.storage()
            .pool_stats(&pn(POOL))
            .await
            .unwrap()
            .total_leases,
        0
    );
}

/// `lighthouse_redis_batch_size{op}` records the requests of each script call:
/// the deterministic 40 acquires above are calls of 1, 32 and 7.
#[tokio::test(flavor = "current_thread")]
async fn batch_sizes_are_recorded_per_operation() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let server = RedisServer::spawn().unwrap();
    let m = setup(&server, 32, 40).await; // its warm-up: one acquire, one release
    let leases = acquire_all(&m, 40).await;
    release_all(&m, leases).await;
    // One snapshot: taking one drains the histograms.
    let snapshot = snapshotter.snapshot().into_vec();
    let sizes = |op: &str| -> Vec<f64> {
        snapshot
            .iter()
            .find_map(|(key, _, _, value)| {
                let k = key.key();
                let ours = k.name() == "lighthouse_redis_batch_size"
                    && k.labels().any(|l| l.key() == "op" && l.value() == op);
                match (ours, value) {
                    (true, DebugValue::Histogram(v)) => {
                        Some(v.iter().map(|x| x.into_inner()).collect())
                    }
                    _ => None,
                }
            })
            .unwrap_or_default()
    };
    let mut acquires = sizes("acquire");
    acquires.sort_by(f64::total_cmp);
    assert_eq!(acquires, [1.0, 1.0, 7.0, 32.0], "warm-up, then 1 + 32 + 7");
    assert_eq!(sizes("release").iter().sum::<f64>(), 41.0);
}
