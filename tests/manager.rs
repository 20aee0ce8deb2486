//! ProxyManager behaviour that is the same on every storage: retry, scoped leases,
//! guards, hooks, defaults. Runs on InMemoryStorage; waits run under tokio's paused
//! clock, so nothing here really sleeps.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lighthouse_lease::{
    AcquireOptions, AdminStorage, Error, InMemoryStorage, LeaseEvent, LeaseEventKind,
    LeaseEventOutcome, LeaseStorage, Proxy, ProxyManager, ProxyPool, ReleaseOutcome, RetryPolicy,
};

const POOL: &str = "latam-residential";

type Events = Arc<Mutex<Vec<LeaseEvent>>>;

async fn manager_with(max: u32) -> (ProxyManager<InMemoryStorage>, Events) {
    let events: Events = Arc::default();
    let sink = events.clone();
    let m = ProxyManager::builder(InMemoryStorage::new())
        .hook_with_stats(move |e| sink.lock().unwrap().push(e.clone()))
        .build();
    let pool = m
        .storage()
        .create_pool(ProxyPool::new(POOL).unwrap())
        .await
        .unwrap();
    m.storage()
        .add_proxy(
            Proxy::builder(pool.id, "10.0.0.1", 8080)
                .max_concurrency(max)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    (m, events)
}

fn attempts(events: &Events) -> usize {
    events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.kind == LeaseEventKind::Acquire)
        .count()
}

#[test]
fn retry_policy_backoff_grows_and_is_capped() {
    let p = RetryPolicy::new(10)
        .initial_backoff(Duration::from_millis(100))
        .max_backoff(Duration::from_millis(1000))
        .multiplier(2.0);
    let waits: Vec<u128> = (1..=6).map(|a| p.backoff(a).as_millis()).collect();
    assert_eq!(waits, vec![100, 200, 400, 800, 1000, 1000]);
}

#[tokio::test(start_paused = true)]
async fn retry_waits_then_succeeds_when_a_slot_frees_up() {
    let (m, events) = manager_with(1).await;
    let held = m
        .acquire_proxy(POOL, AcquireOptions::new())
        .await
        .unwrap()
        .unwrap();
    let releaser = m.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(250)).await;
        releaser.release_proxy(&held).await.unwrap();
    });
    let policy = RetryPolicy::new(5)
        .initial_backoff(Duration::from_millis(100))
        .jitter(false);
    let start = tokio::time::Instant::now();
    let lease = m
        .acquire_proxy_with_retry(POOL, AcquireOptions::new(), &policy)
        .await
        .unwrap();
    assert!(
        lease.is_some(),
        "the slot freed at 250 ms should be taken by the attempt at 300 ms"
    );
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    // The held lease's acquire, then attempts at 0, 100 and 300 ms.
    assert_eq!(attempts(&events), 4);
}

#[tokio::test(start_paused = true)]
async fn retry_gives_up_with_none_after_max_attempts() {
    let (m, events) = manager_with(1).await;
    let _held = m
        .acquire_proxy(POOL, AcquireOptions::new())
        .await
        .unwrap()
        .unwrap();
    let policy = RetryPolicy::new(4)
        .initial_backoff(Duration::from_millis(100))
        .jitter(false);
    let start = tokio::time::Instant::now();
    let got = m
        .acquire_proxy_with_retry(POOL, AcquireOptions::new(), &policy)
        .await
        .unwrap();
    assert_eq!(got, None);
    assert_eq!(start.elapsed(), Duration::from_millis(100 + 200 + 400));
    assert_eq!(attempts(&events), 1 + 4);
}

#[tokio::test(start_paused = true)]
async fn retry_never_retries_bad_input() {
    let (m, events) = manager_with(1).await;
    let policy = RetryPolicy::new(5);
    let err = m
        .acquire_proxy_with_retry("no-such-pool", AcquireOptions::new(), &policy)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PoolNotFound { .. }));
    assert_eq!(attempts(&events), 1, "an unknown pool is not retried");
    let err = m
        .acquire_proxy_with_retry(
            POOL,
            AcquireOptions::new().duration(Duration::ZERO),
            &policy,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidDuration { .. }));
    assert_eq!(attempts(&events), 1, "bad input never reaches the storage");
    let err = m
        .acquire_proxy_with_retry(POOL, AcquireOptions::new(), &RetryPolicy::new(0))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)));
}

async fn live(m: &ProxyManager<InMemoryStorage>) -> u64 {
    m.storage()
        .pool_stats(&pn(POOL))
        .await
        .unwrap()
        .total_leases
}

#[tokio::test]
async fn with_lease_releases_after_success() {
    let (m, _) = manager_with(1).await;
    let out = m
        .with_lease(POOL, AcquireOptions::new(), |lease| async move {
            assert_eq!(lease.proxy_url(), "http://10.0.0.1:8080");
            7
        })
        .await
        .unwrap();
    assert_eq!(out, Some(7));
    assert_eq!(live(&m).await, 0);
}

#[tokio::test]
async fn with_lease_releases_when_work_returns_an_error() {
    let (m, _) = manager_with(1).await;
    let out: Option<Result<(), &str>> = m
        .with_lease(POOL, AcquireOptions::new(), |_| async {
            Err("target said 403")
        })
        .await
        .unwrap();
    assert_eq!(out, Some(Err("target said 403")));
    assert_eq!(live(&m).await, 0);
}

#[tokio::test]
async fn with_lease_releases_on_panic_and_the_panic_goes_on() {
    let (m, _) = manager_with(1).await;
    let m2 = m.clone();
    let joined = tokio::spawn(async move {
        m2.with_lease(POOL, AcquireOptions::new(), |_| async {
            panic!("worker crashed")
        })
        .await
    })
    .await;
    assert!(joined.unwrap_err().is_panic());
    assert_eq!(
        live(&m).await,
        0,
        "the lease was released before the panic resumed"
    );
}

#[tokio::test]
async fn with_lease_releases_when_cancelled() {
    let (m, _) = manager_with(1).await;
    let slow = m.with_lease(POOL, AcquireOptions::new(), |_| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    });
    assert!(tokio::time::timeout(Duration::from_millis(20), slow)
        .await
        .is_err());
    // The guard's drop spawned the release; let it run.
    for _ in 0..10 {
        if live(&m).await == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(live(&m).await, 0);
}

#[tokio::test]
async fn with_lease_skips_work_when_no_proxy_is_free() {
    let (m, _) = manager_with(1).await;
    let _held = m
        .acquire_proxy(POOL, AcquireOptions::new())
        .await
        .unwrap()
        .unwrap();
    let out = m
        .with_lease(POOL, AcquireOptions::new(), |_| async {
            unreachable!("no lease, no work")
        })
        .await
        .unwrap();
    assert_eq!(out, None::<()>);
}

#[tokio::test]
async fn guard_releases_on_drop_and_reports_on_release() {
    let (m, _) = manager_with(1).await;
    let guard = m
        .acquire_guard(POOL, AcquireOptions::new())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live(&m).await, 1);
    drop(guard);
    tokio::task::yield_now().await;
    assert_eq!(live(&m).await, 0);
    let guard = m
        .acquire_guard(POOL, AcquireOptions::new())
        .await
        .unwrap()
        .unwrap();
    let lease = guard.lease().clone();
    assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::Released);
    assert_eq!(
        m.release_proxy(&lease).await.unwrap(),
        ReleaseOutcome::AlreadyReleased
    );
    let guard = m
        .acquire_guard(POOL, AcquireOptions::new())
        .await
        .unwrap()
        .unwrap();
    let handed_over = guard.into_lease();
    tokio::task::yield_now().await;
    assert_eq!(live(&m).await, 1, "into_lease disarms the guard");
    assert_eq!(
        m.release_proxy(&handed_over).await.unwrap(),
        ReleaseOutcome::Released
    );
}

#[tokio::test]
async fn hooks_see_every_outcome_with_stats() {
    let (m, events) = manager_with(1).await;
    let lease = m
        .acquire_proxy(POOL, AcquireOptions::new())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        m.acquire_proxy(POOL, AcquireOptions::new()).await.unwrap(),
        None
    );
    m.release_proxy(&lease).await.unwrap();
    m.release_proxy(&lease).await.unwrap();
    let _ = m
        .acquire_proxy(POOL, AcquireOptions::new().consumer("ghost"))
        .await;
    let ev = events.lock().unwrap().clone();
    let outcomes: Vec<_> = ev.iter().map(|e| (e.kind, e.outcome.clone())).collect();
    assert_eq!(
        outcomes[..4],
        [
            (LeaseEventKind::Acquire, LeaseEventOutcome::Acquired),
            (LeaseEventKind::Acquire, LeaseEventOutcome::Exhausted),
            (
                LeaseEventKind::Release,
                LeaseEventOutcome::Released(ReleaseOutcome::Released)
            ),
            (
                LeaseEventKind::Release,
                LeaseEventOutcome::Released(ReleaseOutcome::AlreadyReleased)
            ),
        ]
    );
    assert!(matches!(&ev[4].outcome, LeaseEventOutcome::Failed(msg) if msg.contains("ghost")));
    assert_eq!(ev[0].pool, POOL);
    assert_eq!(ev[0].consumer, "default");
    assert_eq!(ev[0].lease_id, Some(lease.id));
    assert_eq!(ev[0].pool_stats.map(|s| s.total_leases), Some(1));
    assert_eq!(ev[2].pool_stats.map(|s| s.total_leases), Some(0));
}

#[tokio::test]
async fn default_duration_is_300_seconds_and_configurable() {
    let (m, _) = manager_with(5).await;
    let lease = m
        .acquire_proxy(POOL, AcquireOptions::new())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((lease.expires_at - lease.acquired_at).num_seconds(), 300);
    let m2 = ProxyManager::builder_from_arc(m.storage_arc())
        .default_duration(Duration::from_secs(30))
        .build();
    let lease = m2
        .acquire_proxy(POOL, AcquireOptions::new())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((lease.expires_at - lease.acquired_at).num_seconds(), 30);
    assert_eq!(
        live(&m).await,
        2,
        "managers over one storage share its state"
    );
}

#[test]
fn manager_futures_are_send_so_they_run_on_any_tokio_task() {
    fn assert_send<T: Send>(_: &T) {}
    let m = ProxyManager::new(InMemoryStorage::new());
    assert_send(&m.acquire_proxy(POOL, AcquireOptions::new()));
    assert_send(&m.cleanup_expired_leases());
    assert_send(&m.with_lease(POOL, AcquireOptions::new(), |_| async {}));
}

/// A pool name the test knows to be valid.
fn pn(name: &str) -> lighthouse_lease::PoolName {
    lighthouse_lease::PoolName::new(name).expect("a valid pool name")
}
