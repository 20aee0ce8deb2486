#![cfg(feature = "redis")]
//! RenewingLease on both storages, in real time (the renewals run on tokio's
//! clock and expiry on the storage's, so they are tested together with short
//! leases): it outlives its duration, signals a loss, and releases on drop.

mod support;

use std::time::Duration;

use lighthouse_lease::{AcquireOptions, InMemoryStorage, ProxyManager, ReleaseOutcome, Storage};

const POOL: &str = "latam-residential";

async fn manager<S: Storage>(storage: S) -> ProxyManager<S> {
    support::one_proxy_manager(storage, 1).await
}

fn short() -> AcquireOptions {
    AcquireOptions::new().duration(Duration::from_millis(300))
}

async fn outlives_its_duration<S: Storage>(m: ProxyManager<S>) {
    let held = m.acquire_renewing(POOL, short()).await.unwrap().unwrap();
    let first_expiry = held.lease().expires_at;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        m.cleanup_expired_leases().await.unwrap(),
        0,
        "renewed, not expired"
    );
    assert_eq!(
        m.acquire_proxy(POOL, AcquireOptions::new()).await.unwrap(),
        None,
        "still held"
    );
    assert!(!held.is_lost());
    assert!(held.lease().expires_at > first_expiry);
    assert_eq!(held.release().await.unwrap(), ReleaseOutcome::Released);
    assert!(m
        .acquire_proxy(POOL, AcquireOptions::new())
        .await
        .unwrap()
        .is_some());
}

async fn signals_a_loss<S: Storage>(m: ProxyManager<S>) {
    let held = m.acquire_renewing(POOL, short()).await.unwrap().unwrap();
    // Someone else releases it (an operator with the CLI, say).
    m.release_proxy(&held.lease()).await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(2), held.lost())
        .await
        .expect("lost within 2 s");
    assert!(reason.contains("was released"), "{reason}");
    assert!(held.is_lost());
}

async fn releases_on_drop<S: Storage>(m: ProxyManager<S>) {
    let held = m
        .acquire_renewing(POOL, AcquireOptions::new())
        .await
        .unwrap()
        .unwrap();
    drop(held);
    for _ in 0..100 {
        if m.storage().pool_stats(POOL).await.unwrap().total_leases == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("dropping the guard did not release the lease");
}

#[tokio::test]
async fn in_memory_renewing_lease_outlives_its_duration() {
    outlives_its_duration(manager(InMemoryStorage::new()).await).await;
}

#[tokio::test]
async fn in_memory_renewing_lease_signals_a_loss() {
    signals_a_loss(manager(InMemoryStorage::new()).await).await;
}

#[tokio::test]
async fn in_memory_renewing_lease_releases_on_drop() {
    releases_on_drop(manager(InMemoryStorage::new()).await).await;
}

#[tokio::test]
async fn redis_renewing_lease_outlives_its_duration() {
    outlives_its_duration(manager(support::storage()).await).await;
}

#[tokio::test]
async fn redis_renewing_lease_signals_a_loss() {
    signals_a_loss(manager(support::storage()).await).await;
}

#[tokio::test]
async fn redis_renewing_lease_releases_on_drop() {
    releases_on_drop(manager(support::storage()).await).await;
}
