//! The library's metrics as a recorder sees them: a manager over the in-memory
//! storage runs every kind of call under a `DebuggingRecorder` (current-thread
//! runtime with paused time, so waits end at once). Included with `#[path]` by
//! the tests that read them.

use std::time::Duration;

use lighthouse_lease::{
    AcquireOptions, AdminStorage, InMemoryStorage, Proxy, ProxyManager, ProxyPool,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::CompositeKey;

/// A recorder's snapshot.
pub type Snapshot = Vec<(
    CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

/// Pool `p` with one proxy of one slot: acquire (leased), acquire (none), a
/// 50 ms wait that times out, extend, release, a repeated release, an extend of
/// the released lease (lost), acquire, rotate, a failure and a success report,
/// and the last release.
pub fn record_every_call() -> Snapshot {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let m = ProxyManager::new(InMemoryStorage::new());
        let pool = m
            .storage()
            .create_pool(ProxyPool::new("p").unwrap())
            .await
            .unwrap();
        let proxy = Proxy::builder(pool.id, "10.0.0.1", 80)
            .max_concurrency(1)
            .build()
            .unwrap();
        m.storage().add_proxy(proxy).await.unwrap();
        let lease = m
            .acquire_proxy("p", AcquireOptions::new())
            .await
            .unwrap()
            .unwrap();
        assert!(m
            .acquire_proxy("p", AcquireOptions::new())
            .await
            .unwrap()
            .is_none());
        let waited = m
            .acquire_proxy_wait("p", AcquireOptions::new(), Duration::from_millis(50))
            .await
            .unwrap();
        assert!(waited.is_none());
        m.extend_lease(&lease, Duration::from_secs(60))
            .await
            .unwrap();
        m.release_proxy(&lease).await.unwrap();
        m.release_proxy(&lease).await.unwrap();
        assert!(m
            .extend_lease(&lease, Duration::from_secs(60))
            .await
            .is_err());
        let next = m
            .acquire_proxy("p", AcquireOptions::new())
            .await
            .unwrap()
            .unwrap();
        let rotated = m.rotate_proxy(&next, AcquireOptions::new()).await.unwrap();
        m.report_failure(&next, "403").await.unwrap();
        m.report_success(&next).await.unwrap();
        m.release_proxy(&rotated.next.unwrap()).await.unwrap();
    });
    snapshotter.snapshot().into_vec()
}
