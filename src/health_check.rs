//! Health checks that make an HTTP request through a proxy (feature `health-check`).
//!
//! A [`HealthChecker`] sends `GET <target_url>` through a proxy (HTTP, HTTPS,
//! SOCKS4 or SOCKS5, with its credentials) and turns what happened into a
//! [`HealthCheckResult`]:
//!
//! - [`ProxyStatus::Active`]: an attempt got an expected status code within the
//!   slow threshold;
//! - [`ProxyStatus::Slow`]: an attempt got an expected status code, but slower
//!   than the slow threshold;
//! - [`ProxyStatus::Inactive`]: every attempt failed (connection refused or reset,
//!   proxy authentication refused, timeout, unexpected status code).
//!
//! [`HealthChecker::check_pool`] checks a whole pool with bounded concurrency and
//! applies each verdict with [`crate::LeaseStorage::apply_health_check`], so that proxies that
//! fail stop being leased and proxies that recover are leased again.
//!
//! ```no_run
//! use std::time::Duration;
//! use lighthouse_lease::{HealthCheckConfig, HealthChecker, InMemoryStorage, ProxyManager};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> lighthouse_lease::Result<()> {
//! let manager = ProxyManager::new(InMemoryStorage::new());
//! let checker = HealthChecker::new(
//!     HealthCheckConfig::new()
//!         .target_url("https://www.gstatic.com/generate_204")
//!         .timeout(Duration::from_secs(5))
//!         .attempts(2)
//!         .slow_threshold(Duration::from_secs(2))
//!         .concurrency(64),
//! )?;
//! for result in checker.check_pool(manager.storage(), "latam-residential").await? {
//!     println!("{} is {} ({:?})", result.proxy_id, result.status, result.latency);
//! }
//! # Ok(())
//! # }
//! ```

use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::stream::{self, StreamExt};

use crate::error::{Error, Result};
use crate::health::HealthCheckResult;
use crate::proxy::{Proxy, ProxyStatus};
use crate::storage::Storage;

/// The default target: Google's connectivity-check URL. It answers `204 No
/// Content` with an empty body from a CDN close to most proxies, and being HTTPS
/// it also checks that the proxy tunnels TLS (`CONNECT`), as crawlers need.
pub const DEFAULT_TARGET_URL: &str = "https://www.gstatic.com/generate_204";
/// Default time allowed for one attempt, from connecting to the proxy to the
/// response's status line and headers: 10 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of attempts before a proxy is declared inactive: 2.
pub const DEFAULT_ATTEMPTS: u32 = 2;
/// Default latency above which a working proxy is declared slow: 2 s.
pub const DEFAULT_SLOW_THRESHOLD: Duration = Duration::from_secs(2);
/// Default number of proxies [`HealthChecker::check_pool`] checks at once: 32.
pub const DEFAULT_CONCURRENCY: usize = 32;

/// What a [`HealthChecker`] requests and how it judges the answer.
///
/// Start from [`HealthCheckConfig::new`] (the defaults) and change what you need;
/// [`HealthChecker::new`] validates it.
///
/// | setting | default |
/// |---|---|
/// | [`target_url`](Self::target_url) | [`DEFAULT_TARGET_URL`] (`https://www.gstatic.com/generate_204`) |
/// | [`expected_statuses`](Self::expected_statuses) | `200..=299` (which includes `204`) |
/// | [`timeout`](Self::timeout) per attempt | 10 s |
/// | [`attempts`](Self::attempts) | 2 |
/// | [`slow_threshold`](Self::slow_threshold) | 2 s |
/// | [`concurrency`](Self::concurrency) | 32 |
///
/// ```
/// use std::time::Duration;
/// use lighthouse_lease::HealthCheckConfig;
///
/// let config = HealthCheckConfig::new()
///     .target_url("http://example.com/health")
///     .expected_statuses([200, 204])
///     .timeout(Duration::from_secs(3))
///     .attempts(3)
///     .slow_threshold(Duration::from_millis(1500));
/// assert!(config.is_expected(204));
/// assert!(!config.is_expected(201));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthCheckConfig {
    /// The `http://` or `https://` URL requested through each proxy.
    pub target_url: String,
    /// Status codes that count as success: a code is expected if any range holds it.
    pub expected_statuses: Vec<RangeInclusive<u16>>,
    /// Time allowed for one attempt (connect to the proxy, request, response
    /// headers).
    pub timeout: Duration,
    /// Attempts before a proxy is declared inactive (at least 1). The check stops
    /// at the first attempt that gets an expected status.
    pub attempts: u32,
    /// A successful attempt slower than this makes the proxy [`ProxyStatus::Slow`].
    pub slow_threshold: Duration,
    /// How many proxies [`HealthChecker::check_pool`] checks at once (at least 1).
    pub concurrency: usize,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            target_url: DEFAULT_TARGET_URL.to_string(),
            expected_statuses: vec![200..=299],
            timeout: DEFAULT_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
            slow_threshold: DEFAULT_SLOW_THRESHOLD,
            concurrency: DEFAULT_CONCURRENCY,
        }
    }
}

impl HealthCheckConfig {
    /// The defaults; see the table on [`HealthCheckConfig`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the URL requested through each proxy (`http://` or `https://`).
    #[must_use]
    pub fn target_url(mut self, url: impl Into<String>) -> Self {
        self.target_url = url.into();
        self
    }

    /// Expects exactly these status codes (replaces the current set).
    #[must_use]
    pub fn expected_statuses(mut self, codes: impl IntoIterator<Item = u16>) -> Self {
        self.expected_statuses = codes.into_iter().map(|c| c..=c).collect();
        self
    }

    /// Expects any status code in this range (replaces the current set).
    #[must_use]
    pub fn expected_status_range(mut self, range: RangeInclusive<u16>) -> Self {
        self.expected_statuses = vec![range];
        self
    }

    /// Sets the time allowed for one attempt.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets how many attempts a proxy gets before it is declared inactive.
    #[must_use]
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }

    /// Sets the latency above which a working proxy is declared slow.
    #[must_use]
    pub fn slow_threshold(mut self, threshold: Duration) -> Self {
        self.slow_threshold = threshold;
        self
    }

    /// Sets how many proxies [`HealthChecker::check_pool`] checks at once.
    #[must_use]
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Whether a status code counts as success.
    pub fn is_expected(&self, status: u16) -> bool {
        self.expected_statuses.iter().any(|r| r.contains(&status))
    }

    /// Checks every setting; [`HealthChecker::new`] calls it.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::InvalidArgument(format!("health check {reason}")));
        match reqwest::Url::parse(&self.target_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
            Ok(_) => {
                return bad(format!(
                    "target URL {:?} must be an http:// or https:// URL with a host",
                    self.target_url
                ))
            }
            Err(e) => return bad(format!("target URL {:?}: {e}", self.target_url)),
        }
        if self.expected_statuses.is_empty() {
            return bad("expected status codes: none given".into());
        }
        if let Some(r) = self
            .expected_statuses
            .iter()
            .find(|r| r.is_empty() || *r.start() < 100 || *r.end() > 999)
        {
            return bad(format!(
                "expected status codes {}..={} are empty or outside 100..=999",
                r.start(),
                r.end()
            ));
        }
        if self.timeout.is_zero() {
            return bad("timeout must be more than zero".into());
        }
        if self.attempts == 0 {
            return bad("attempts must be at least 1".into());
        }
        if self.slow_threshold.is_zero() {
            return bad("slow threshold must be more than zero".into());
        }
        if self.concurrency == 0 {
            return bad("concurrency must be at least 1".into());
        }
        Ok(())
    }
}

/// Checks proxies by making an HTTP request through them.
///
/// Each check builds its own client for the proxy ([`Proxy::url`], so credentials
/// are sent: `Proxy-Authorization: Basic` for HTTP(S) proxies, the SOCKS5
/// username/password method for SOCKS5), follows no redirects (a `3xx` is judged
/// like any other status) and opens a new connection for every attempt. The
/// latency is the time from sending the request to receiving the response's
/// status line and headers, connecting to the proxy included; the body is not
/// read.
///
/// A checker is cheap to clone and can be shared between tasks.
///
/// ```
/// use lighthouse_lease::{HealthCheckConfig, HealthChecker};
///
/// let checker = HealthChecker::new(HealthCheckConfig::new().attempts(3))?;
/// assert_eq!(checker.config().attempts, 3);
///
/// // Bad settings are refused up front.
/// assert!(HealthChecker::new(HealthCheckConfig::new().target_url("ftp://x")).is_err());
/// # Ok::<(), lighthouse_lease::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct HealthChecker {
    config: HealthCheckConfig,
}

impl HealthChecker {
    /// A checker with these settings, after [`HealthCheckConfig::validate`].
    pub fn new(config: HealthCheckConfig) -> Result<Self> {
        config.validate()?;
        Ok(HealthChecker { config })
    }

    /// The settings.
    pub fn config(&self) -> &HealthCheckConfig {
        &self.config
    }

    /// Checks one proxy: up to [`HealthCheckConfig::attempts`] requests through it,
    /// stopping at the first that gets an expected status code.
    ///
    /// The result is [`ProxyStatus::Active`] (with the latency) if that attempt
    /// took at most the slow threshold, [`ProxyStatus::Slow`] (with the latency) if
    /// it took longer, and [`ProxyStatus::Inactive`] (no latency) if no attempt
    /// succeeded. `checked_at` is when the check started. It never fails and
    /// never panics: whatever the network does is a verdict. The result is not
    /// applied; pass it to [`crate::LeaseStorage::apply_health_check`] (or use
    /// [`HealthChecker::check_pool`]).
    ///
    /// ```no_run
    /// # use lighthouse_lease::{HealthCheckConfig, HealthChecker, Proxy, ProxyPool, ProxyStatus};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> lighthouse_lease::Result<()> {
    /// # let pool = ProxyPool::new("p")?;
    /// let proxy = Proxy::builder(pool.id, "10.0.0.1", 8080).credentials("me", "s3cret").build()?;
    /// let checker = HealthChecker::new(HealthCheckConfig::new())?;
    /// let result = checker.check(&proxy).await;
    /// if result.status == ProxyStatus::Active {
    ///     println!("{} answered in {:?}", proxy.endpoint().redacted_url(), result.latency);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn check(&self, proxy: &Proxy) -> HealthCheckResult {
        let started = Utc::now();
        let verdict = match self.client_for(proxy) {
            Some(client) => {
                let mut verdict = None;
                for _ in 0..self.config.attempts {
                    verdict = self.attempt(&client).await;
                    if verdict.is_some() {
                        break;
                    }
                }
                verdict
            }
            None => None,
        };
        let result = match verdict {
            Some(latency) if latency <= self.config.slow_threshold => {
                HealthCheckResult::new(proxy.id, ProxyStatus::Active).with_latency(latency)
            }
            Some(latency) => {
                HealthCheckResult::new(proxy.id, ProxyStatus::Slow).with_latency(latency)
            }
            None => HealthCheckResult::new(proxy.id, ProxyStatus::Inactive),
        };
        result.checked_at(started)
    }

    /// Checks every proxy of a pool, at most [`HealthCheckConfig::concurrency`] at
    /// once, applies each result with [`crate::LeaseStorage::apply_health_check`] as soon as it
    /// is known, and returns the results in the pool's order.
    ///
    /// [`ProxyStatus::Banned`] proxies are skipped (a ban is an operator's
    /// decision about targets, which a connectivity check cannot overturn) and so
    /// are proxies removed while the check ran. An unknown pool is the storage's
    /// error (such as [`Error::PoolNotFound`]); a storage failure while applying
    /// stops the pass and is returned, with the results applied so far kept.
    ///
    /// ```no_run
    /// # use lighthouse_lease::{HealthCheckConfig, HealthChecker, InMemoryStorage, ProxyStatus};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> lighthouse_lease::Result<()> {
    /// # let storage = InMemoryStorage::new();
    /// let checker = HealthChecker::new(HealthCheckConfig::new().concurrency(16))?;
    /// let results = checker.check_pool(&storage, "latam-residential").await?;
    /// let down = results.iter().filter(|r| r.status == ProxyStatus::Inactive).count();
    /// println!("{down} of {} proxies are down", results.len());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn check_pool<S: Storage>(
        &self,
        storage: &S,
        pool_name: impl crate::names::IntoPoolName,
    ) -> Result<Vec<HealthCheckResult>> {
        let proxies = storage.list_proxies(&pool_name.into_pool_name()?).await?;
        let mut checks = stream::iter(
            proxies
                .into_iter()
                .filter(|p| p.status != ProxyStatus::Banned),
        )
        .map(|proxy| async move {
            let result = self.check(&proxy).await;
            match storage.apply_health_check(&result).await {
                Ok(_) => Ok(Some(result)),
                Err(Error::ProxyNotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .buffered(self.config.concurrency);
        let mut results = Vec::new();
        while let Some(applied) = checks.next().await {
            if let Some(result) = applied? {
                results.push(result);
            }
        }
        Ok(results)
    }

    /// A client that sends everything through this proxy, or `None` if the
    /// proxy's URL is unusable (which makes the proxy inactive).
    fn client_for(&self, proxy: &Proxy) -> Option<reqwest::Client> {
        let via = reqwest::Proxy::all(proxy.url()).ok()?;
        reqwest::Client::builder()
            .proxy(via)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(self.config.timeout)
            .connect_timeout(self.config.timeout)
            .pool_max_idle_per_host(0)
            .user_agent(concat!(
                "lighthouse-lease/",
                env!("CARGO_PKG_VERSION"),
                " health-check"
            ))
            .build()
            .ok()
    }

    /// One request through the client: its latency if it got an expected status.
    async fn attempt(&self, client: &reqwest::Client) -> Option<Duration> {
        let start = Instant::now();
        // The client's timeout bounds the whole attempt; any error is a failure.
        let response = client
            .get(self.config.target_url.as_str())
            .send()
            .await
            .ok()?;
        let latency = start.elapsed();
        self.config
            .is_expected(response.status().as_u16())
            .then_some(latency)
    }
}
