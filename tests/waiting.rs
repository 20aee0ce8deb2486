#![cfg(feature = "redis")]
//! Waiting acquire in real time on both storages: woken at a lease's expiry
//! (which publishes nothing), and how soon a release wakes a waiter.

mod support;

use std::time::{Duration, Instant};

use lighthouse_lease::{AcquireOptions, InMemoryStorage, ProxyManager, Storage};

const POOL: &str = "latam-residential";

async fn manager<S: Storage>(storage: S) -> ProxyManager<S> {
    support::one_proxy_manager(storage, 1).await
}

async fn woken_at_expiry<S: Storage>(m: ProxyManager<S>) {
    let held = m
        .acquire_proxy(
            POOL,
            AcquireOptions::new().duration(Duration::from_millis(400)),
        )
        .await
        .unwrap()
        .unwrap();
    let started = Instant::now();
    let got = m
        .acquire_proxy_wait(POOL, AcquireOptions::new(), Duration::from_secs(4))
        .await
        .unwrap();
    let took = started.elapsed();
    let lease = got.expect("the expired lease's slot");
    assert_eq!(lease.proxy_id, held.proxy_id);
    assert!(
        lease.acquired_at >= held.expires_at,
        "not before the first lease expired"
    );
    assert!(
        took < Duration::from_secs(2),
        "polled at the expiry, not at the 5 s safety poll: {took:?}"
    );
}

/// Median time from a release to the waiter's lease, over several rounds.
async fn wake_latency<S: Storage>(m: ProxyManager<S>) -> Duration {
    let mut held = m
        .acquire_proxy(POOL, AcquireOptions::new().duration_seconds(3600))
        .await
        .unwrap()
        .unwrap();
    let mut delays = Vec::new();
    for _ in 0..15 {
        let waiter = {
            let m = m.clone();
            tokio::spawn(async move {
                let l = m
                    .acquire_proxy_wait(
                        POOL,
                        AcquireOptions::new().duration_seconds(3600),
                        Duration::from_secs(10),
                    )
                    .await
                    .unwrap()
                    .unwrap();
                (l, Instant::now())
            })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        let released = Instant::now();
        m.release_proxy(&held).await.unwrap();
        let (lease, woke) = waiter.await.unwrap();
        delays.push(woke - released);
        held = lease;
    }
    delays.sort();
    delays[delays.len() / 2]
}

#[tokio::test]
async fn in_memory_waiter_is_woken_at_the_nearest_expiry() {
    woken_at_expiry(manager(InMemoryStorage::new()).await).await;
}

#[tokio::test]
async fn redis_waiter_is_woken_at_the_nearest_expiry() {
    woken_at_expiry(manager(support::storage()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_wakes_a_waiter_within_milliseconds() {
    let memory = wake_latency(manager(InMemoryStorage::new()).await).await;
    let redis = wake_latency(manager(support::storage()).await).await;
    eprintln!("median release-to-lease wake-up: in memory {memory:?}, Redis {redis:?}");
    // The safety poll is 5 s and the next expiry an hour away: anything near a
    // second would mean the notification did not arrive.
    assert!(memory < Duration::from_millis(250), "{memory:?}");
    assert!(redis < Duration::from_millis(250), "{redis:?}");
}
