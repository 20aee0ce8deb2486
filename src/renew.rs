//! [`RenewingLease`]: a lease kept alive in the background for jobs of unknown
//! length, with a signal when it is lost.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::lease::{Lease, ReleaseOutcome};
use crate::manager::ProxyManager;
use crate::storage::Storage;

/// A lease that renews itself every third of its duration until it is released
/// or dropped, and says when it is lost.
///
/// - [`RenewingLease::lost`] resolves when a renewal finds the lease gone (it
///   expired during a pause, or was released elsewhere), or when renewals kept
///   failing until the lease's expiry passed. Stop using the proxy then.
/// - Dropping it stops the renewals and releases the lease (spawned on the current
///   tokio runtime); [`RenewingLease::release`] does the same and reports.
///
/// ```
/// # use std::time::Duration;
/// # use lighthouse_lease::*;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<()> {
/// # let manager = ProxyManager::new(InMemoryStorage::new());
/// # let pool = manager.storage().create_pool(ProxyPool::new("p")?).await?;
/// # manager.storage().add_proxy(Proxy::builder(pool.id, "1.1.1.1", 80).build()?).await?;
/// let options = AcquireOptions::new().duration(Duration::from_secs(30));
/// let held = manager.acquire_renewing("p", options).await?.expect("a free proxy");
/// tokio::select! {
///     _ = held.lost() => { /* stop: someone else may have the proxy now */ }
///     _ = async { /* a crawl of unknown length through held.lease().proxy_url() */ } => {}
/// }
/// held.release().await?;
/// # Ok(())
/// # }
/// ```
pub struct RenewingLease<S: Storage> {
    manager: ProxyManager<S>,
    current: Arc<Mutex<Lease>>,
    lost: watch::Receiver<Option<String>>,
    task: Option<JoinHandle<()>>,
    released: bool,
}

impl<S: Storage> std::fmt::Debug for RenewingLease<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenewingLease")
            .field("lease", &self.lease())
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl<S: Storage> RenewingLease<S> {
    pub(crate) fn start(manager: ProxyManager<S>, lease: Lease, duration: Duration) -> Self {
        let current = Arc::new(Mutex::new(lease));
        let (tx, rx) = watch::channel(None);
        let every = (duration / 3).max(Duration::from_millis(1));
        let task = {
            let (manager, current) = (manager.clone(), current.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let lease = current
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone();
                    match manager.extend_lease(&lease, duration).await {
                        Ok(renewed) => {
                            *current.lock().unwrap_or_else(PoisonError::into_inner) = renewed;
                        }
                        Err(e @ Error::LeaseLost { .. }) => {
                            let _ = tx.send(Some(e.to_string()));
                            return;
                        }
                        Err(e) => {
                            // The storage is unreachable: keep trying until the
                            // lease would have expired anyway.
                            if chrono::Utc::now() >= lease.expires_at {
                                let _ = tx.send(Some(format!(
                                    "lease {} could not be renewed before it expired: {e}",
                                    lease.id
                                )));
                                return;
                            }
                        }
                    }
                }
            })
        };
        RenewingLease {
            manager,
            current,
            lost: rx,
            task: Some(task),
            released: false,
        }
    }

    /// The lease as last renewed.
    pub fn lease(&self) -> Lease {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the lease is known to be lost.
    pub fn is_lost(&self) -> bool {
        self.lost.borrow().is_some()
    }

    /// Resolves with the reason once the lease is lost; never resolves while it is
    /// held.
    pub fn lost(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut rx = self.lost.clone();
        async move {
            loop {
                if let Some(reason) = rx.borrow_and_update().clone() {
                    return reason;
                }
                if rx.changed().await.is_err() {
                    // The renewer ended without a verdict (released): wait forever.
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// A watch channel that turns `Some(reason)` when the lease is lost.
    pub fn lost_signal(&self) -> watch::Receiver<Option<String>> {
        self.lost.clone()
    }

    /// Stops renewing and releases the lease.
    pub async fn release(mut self) -> Result<ReleaseOutcome> {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.released = true;
        let lease = self.lease();
        self.manager.release_proxy(&lease).await
    }
}

impl<S: Storage> Drop for RenewingLease<S> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if !self.released {
            let lease = self.lease();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let manager = self.manager.clone();
                handle.spawn(async move {
                    let _ = manager.release_proxy(&lease).await;
                });
            }
        }
    }
}
