//! # lighthouse-lease
//!
//! Lease proxies from shared pools across a horizontally scaled crawler fleet, so
//! that no proxy is ever used by more workers than its `max_concurrency` allows and
//! no capacity leaks when a worker dies.
//!
//! This is a Rust take on the Python `lighthouse` proxy manager: same vocabulary
//! ([`ProxyManager`], [`ProxyManager::acquire_proxy`], [`ProxyManager::release_proxy`],
//! [`ProxyManager::cleanup_expired_leases`], [`ProxyFilters`], [`Proxy`] with
//! `max_concurrency`, [`ProxyStatus`], [`InMemoryStorage`], the [`IStorage`]
//! interface), made idiomatic and safe under concurrency:
//!
//! - **Acquire is one atomic storage step** ([`LeaseStorage::acquire`]): reclaim the
//!   pool's expired leases, pick a proxy, count the lease, record it.
//! - **Release is idempotent** and says what it found ([`ReleaseOutcome`]).
//! - **Selection is indexed**: acquire and release stay O(log n) up to 100,000
//!   proxies per pool in [`InMemoryStorage`].
//!
//! ## Quick start
//!
//! ```
//! use lighthouse_lease::{AcquireOptions, AdminStorage, ConsumerName, InMemoryStorage, Proxy, ProxyFilters, ProxyManager, ProxyPool};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> lighthouse_lease::Result<()> {
//! let manager = ProxyManager::new(InMemoryStorage::new());
//! let storage = manager.storage();
//! let pool = storage.create_pool(ProxyPool::new("latam-residential")?).await?;
//! storage
//!     .add_proxy(Proxy::builder(pool.id, "1.1.1.1", 8080).country("AR").max_concurrency(2).build()?)
//!     .await?;
//! storage.ensure_consumer(&ConsumerName::new("worker-1")?).await?;
//!
//! let options = AcquireOptions::new()
//!     .consumer("worker-1")
//!     .duration_seconds(300)
//!     .filters(ProxyFilters::new().country("AR"));
//! match manager.acquire_proxy("latam-residential", options).await? {
//!     Some(lease) => {
//!         println!("Leased proxy {} ({})", lease.proxy_id, lease.proxy_url());
//!         manager.release_proxy(&lease).await?;
//!     }
//!     None => println!("No proxy available"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! ## Storages
//!
//! - [`InMemoryStorage`]: embedded default for scripts, tests and single processes.
//! - Any type implementing [`Storage`] (alias [`IStorage`]); the conformance suite in
//!   `testkit` (feature `testkit`) checks an adapter against the contract.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

#[cfg(feature = "cli")]
pub mod cli;
pub mod clock;
pub mod cooldown;
pub mod error;
pub mod fair;
pub mod fencing;
pub mod filters;
pub mod health;
#[cfg(feature = "health-check")]
pub mod health_check;
pub mod hooks;
pub mod lease;
mod limits;
pub mod manager;
pub mod memory;
pub mod names;
pub mod pool;
pub mod proxy;
#[cfg(feature = "redis")]
pub mod redis;
pub mod renew;
pub mod retry;
pub mod selector;
pub mod session;
pub mod site;
pub mod stats;
pub mod storage;
pub mod success;
#[cfg(feature = "cli")]
pub mod sweeper;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;

pub mod consumer;

pub use clock::{Clock, ManualClock, SystemClock};
pub use consumer::Consumer;
pub use cooldown::CooldownPolicy;
pub use error::{BackendErrorKind, Error, LostReason, Result};
pub use fair::{QueuedTicket, WaitOptions, WaitTicket};
pub use fencing::FencingGuard;
pub use filters::ProxyFilters;
pub use health::HealthCheckResult;
#[cfg(feature = "health-check")]
pub use health_check::{HealthCheckConfig, HealthChecker};
pub use hooks::{LeaseEvent, LeaseEventKind, LeaseEventOutcome};
pub use lease::{Lease, LeaseStatus, ReleaseOutcome, Rotation};
pub use manager::{AcquireOptions, LeaseGuard, ProxyManager, ProxyManagerBuilder, ProxyRef};
pub use memory::InMemoryStorage;
pub use names::{ConsumerName, IntoConsumerName, IntoPoolName, PoolName};
pub use pool::{IndexOrder, IndexedAttribute, PoolIndexes, ProxyPool, RateLimit};
pub use proxy::{Proxy, ProxyBuilder, ProxyCredentials, ProxyEndpoint, ProxyProtocol, ProxyStatus};
pub use renew::{RenewPolicy, RenewTimings, RenewingLease};
pub use retry::RetryPolicy;
pub use selector::SelectorStrategy;
pub use session::StickySession;
pub use site::{Site, SiteStanding};
pub use stats::PoolStats;
/// The original's name for [`Storage`].
pub use storage::Storage as IStorage;
pub use storage::{AcquireRequest, AdminStorage, LeaseStorage, Storage};
pub use success::{SuccessScore, SuccessScoring};
