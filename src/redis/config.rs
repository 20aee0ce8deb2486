//! [`RedisConfig`]: where the Redis storage connects and how it behaves.

use std::time::Duration;

use crate::error::Result;
use crate::storage::DEFAULT_RECORD_GRACE;

use super::keys::validate_namespace;

/// Settings of a [`crate::redis::RedisStorage`].
///
/// ```
/// use std::time::Duration;
/// use lighthouse_lease::redis::RedisConfig;
///
/// let config = RedisConfig::from_url("redis://10.0.0.5:6379/0")
///     .namespace("crawler")
///     .pool_size(32)
///     .response_timeout(Duration::from_secs(2));
/// assert_eq!(config.url(), "redis://10.0.0.5:6379/0");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RedisConfig {
    pub(crate) url: String,
    pub(crate) namespace: String,
    pub(crate) pool_size: usize,
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) response_timeout: Option<Duration>,
    pub(crate) wait_timeout: Option<Duration>,
    pub(crate) record_grace: Duration,
    pub(crate) reclaim_batch: u32,
    pub(crate) cleanup_batch: u32,
    pub(crate) max_batch: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) fit_in_flight: bool,
    pub(crate) wait_replicas: Option<(u32, Duration)>,
    pub(crate) cluster_nodes: Vec<String>,
}

impl RedisConfig {
    /// The URL used when `REDIS_URL` is not set.
    pub const DEFAULT_URL: &'static str = "redis://127.0.0.1:6379";
    /// The default key namespace.
    pub const DEFAULT_NAMESPACE: &'static str = "lighthouse";
    /// Connections kept by default (each is multiplexed: it carries any number
    /// of concurrent calls).
    pub const DEFAULT_POOL_SIZE: usize = 4;
    /// Expired leases an acquire reclaims per script call by default.
    pub const DEFAULT_RECLAIM_BATCH: u32 = 64;
    /// Expired leases a cleanup script call handles by default.
    pub const DEFAULT_CLEANUP_BATCH: u32 = 200;
    /// Concurrent acquires and releases of one pool sent as one script call, at
    /// most, by default.
    pub const DEFAULT_MAX_BATCH: usize = 32;
    /// The largest [`RedisConfig::max_batch`] (the scripts' own limit is 1,000).
    pub const MAX_BATCH_LIMIT: usize = 256;
    /// Script calls of a pool's acquires and releases (and, apart, of its
    /// rotates) in flight at once, by default.
    pub const DEFAULT_MAX_IN_FLIGHT: usize = 2;

    /// Settings for this URL (`redis://[user:password@]host:port[/db]`, or
    /// `rediss://` with TLS, feature `tls`), with the defaults:
    /// namespace `lighthouse`, 4 connections, connect timeout 5 s, response
    /// timeout 5 s, connection wait timeout 5 s.
    pub fn from_url(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            namespace: Self::DEFAULT_NAMESPACE.to_string(),
            pool_size: Self::DEFAULT_POOL_SIZE,
            connect_timeout: Some(Duration::from_secs(5)),
            response_timeout: Some(Duration::from_secs(5)),
            wait_timeout: Some(Duration::from_secs(5)),
            record_grace: DEFAULT_RECORD_GRACE,
            reclaim_batch: Self::DEFAULT_RECLAIM_BATCH,
            cleanup_batch: Self::DEFAULT_CLEANUP_BATCH,
            max_batch: Self::DEFAULT_MAX_BATCH,
            max_in_flight: Self::DEFAULT_MAX_IN_FLIGHT,
            fit_in_flight: true,
            wait_replicas: None,
            cluster_nodes: Vec::new(),
        }
        .with_cluster_url()
    }

    /// `redis+cluster://[user:password@]host1:port1,host2:port2` (or
    /// `rediss+cluster://` for TLS) names Redis Cluster seed nodes; any other URL
    /// is one server.
    fn with_cluster_url(mut self) -> Self {
        for (scheme, plain) in [
            ("redis+cluster://", "redis://"),
            ("rediss+cluster://", "rediss://"),
        ] {
            if let Some(rest) = self.url.strip_prefix(scheme) {
                let (auth, hosts) = match rest.rsplit_once('@') {
                    Some((a, h)) => (format!("{a}@"), h.to_string()),
                    None => (String::new(), rest.to_string()),
                };
                self.cluster_nodes = hosts
                    .split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map(|h| format!("{plain}{auth}{h}"))
                    .collect();
                if let Some(first) = self.cluster_nodes.first() {
                    self.url = first.clone();
                }
            }
        }
        self
    }

    /// Redis Cluster with these seed nodes (`redis://host:port` URLs): commands go
    /// to the node that owns each pool's slot (every key of a pool shares its hash
    /// tag); the functions library is loaded on a node that does not have it yet. Same as a
    /// `redis+cluster://host1:port1,host2:port2` URL.
    #[must_use]
    pub fn cluster<I, S>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cluster_nodes = nodes.into_iter().map(Into::into).collect();
        if let Some(first) = self.cluster_nodes.first() {
            self.url = first.clone();
        }
        self
    }

    /// Whether this configuration names a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        !self.cluster_nodes.is_empty()
    }

    /// After every lease change (acquire, release, extend, cleanup, status and
    /// failure reports), waits until `replicas` replicas acknowledged it (`WAIT`),
    /// at most `timeout`; a shortfall is [`crate::Error::ReplicationShortfall`]
    /// (the change stands on the primary). Off by default.
    ///
    /// `WAIT` blocks the connection it runs on, and the connections are shared:
    /// raise [`RedisConfig::pool_size`] with it. Replication stays asynchronous:
    /// this narrows, not closes, the window in which a failover loses leases.
    #[must_use]
    pub fn wait_for_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait_replicas = (replicas > 0).then_some((replicas, timeout));
        self
    }

    /// Settings from the environment: the URL in `REDIS_URL`, else
    /// [`RedisConfig::DEFAULT_URL`]; the namespace in `LIGHTHOUSE_NAMESPACE`, else
    /// `lighthouse`; and, when set, `LIGHTHOUSE_MAX_BATCH` and
    /// `LIGHTHOUSE_MAX_IN_FLIGHT` (see [`RedisConfig::tuned_from_env`]).
    pub fn from_env() -> Self {
        let url = std::env::var("REDIS_URL")
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| Self::DEFAULT_URL.to_string());
        let config = Self::from_url(url);
        let config = match std::env::var("LIGHTHOUSE_NAMESPACE") {
            Ok(ns) if !ns.trim().is_empty() => config.namespace(ns),
            _ => config,
        };
        config.tuned_from_env()
    }

    /// Applies `LIGHTHOUSE_MAX_BATCH` ([`RedisConfig::max_batch`]) and
    /// `LIGHTHOUSE_MAX_IN_FLIGHT` ([`RedisConfig::max_in_flight`]) when they are
    /// set to numbers, and `LIGHTHOUSE_FIT_IN_FLIGHT`
    /// ([`RedisConfig::fit_in_flight`]) when it is `0` or `1`; other values are
    /// ignored.
    #[must_use]
    pub fn tuned_from_env(self) -> Self {
        let num = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
        };
        let mut config = self;
        if let Some(n) = num("LIGHTHOUSE_MAX_BATCH") {
            config = config.max_batch(n);
        }
        if let Some(n) = num("LIGHTHOUSE_MAX_IN_FLIGHT") {
            config = config.max_in_flight(n);
        }
        match num("LIGHTHOUSE_FIT_IN_FLIGHT") {
            Some(0) => config = config.fit_in_flight(false),
            Some(1) => config = config.fit_in_flight(true),
            _ => {}
        }
        config
    }

    /// Every key starts with `<namespace>:`; managers that share state must use
    /// the same one. Checked when the storage is built (see
    /// [`crate::redis::validate_namespace`]).
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// How many connections to keep open (at least 1). Each is multiplexed, so
    /// calls never wait for a free one; calls are spread over them round-robin.
    #[must_use]
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// How long connecting may take (`None`: no limit).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.connect_timeout = timeout.into();
        self
    }

    /// How long one command or script may take to answer (`None`: no limit).
    ///
    /// It also bounds how long a command is sent again after its connection
    /// failed (5 s when `None`): reads and idempotent writes after a broken
    /// connection, any command when no connection could be opened or Redis was
    /// still loading its data (see the [`crate::redis`] module docs,
    /// "Connections").
    #[must_use]
    pub fn response_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.response_timeout = timeout.into();
        self
    }

    /// How long a call waits for another call that is opening its connection
    /// slot's connection (`None`: no limit). Opening one takes at most the
    /// connect timeout.
    #[must_use]
    pub fn wait_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.wait_timeout = timeout.into();
        self
    }

    /// How long a finished lease's record is kept (default
    /// [`DEFAULT_RECORD_GRACE`]): a released lease's after its release, an
    /// expired one's after it is reclaimed (by an acquire, a rotate or cleanup,
    /// at or after its expiry), so that a late release still answers
    /// `AlreadyReleased` or `Expired` rather than `NotFound`. A live lease's
    /// record has no TTL. Zero deletes a record as soon as its lease ends.
    #[must_use]
    pub fn record_grace(mut self, grace: Duration) -> Self {
        self.record_grace = grace;
        self
    }

    /// How many concurrent acquires and releases (and, apart, rotates) of one
    /// pool may share one script call (default 32, at most 256; 1 sends each
    /// call by itself).
    ///
    /// A call that finds a free slot ([`RedisConfig::max_in_flight`]) and no
    /// queue on its pool goes out at once, alone. Calls that arrive while every
    /// slot is busy wait and then go together, in arrival order, each seeing the
    /// counts the ones before it left; when releases and acquires wait
    /// together, the releases go first (`lua/cycle.lua`), so the acquires see
    /// the slots they freed, and a proxy given back and taken again in the call
    /// keeps its index entries. Under load this divides Redis's fixed cost per script call (the
    /// clock, the pool's metadata, the reclaim check, the round trip) among
    /// them. A call cancelled while it waits is left out and writes nothing; a
    /// batch that has left completes for everyone still listening.
    ///
    /// ```
    /// use lighthouse_lease::redis::RedisConfig;
    ///
    /// let config = RedisConfig::from_url("redis://127.0.0.1:6379").max_batch(64);
    /// # let _ = config;
    /// ```
    #[must_use]
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.clamp(1, Self::MAX_BATCH_LIMIT);
        self
    }

    /// How many script calls of one pool's acquires and releases (and, apart,
    /// of its rotates) may be in flight at once on a fast link (default 2, at
    /// least 1). Calls
    /// that find every slot busy queue and go in the next batch; with several
    /// batches in flight, a link with a round-trip time R carries up to
    /// `max_in_flight × max_batch / R` calls per second instead of
    /// `max_batch / R`.
    ///
    /// On a slow link the storage allows more by itself: one call in flight
    /// per 200 µs that the fastest of its last 32 calls took (the round trip
    /// with little queueing in it), up to 16 (or this number, if higher). A
    /// queued call waits about half a call's time, so on a long round trip
    /// more, smaller batches serve callers sooner; on a fast link Redis's time
    /// is what counts, and fewer, larger batches spend less of it.
    ///
    /// ```
    /// use lighthouse_lease::redis::RedisConfig;
    ///
    /// let config = RedisConfig::from_url("redis://10.0.0.5:6379").max_in_flight(8);
    /// # let _ = config;
    /// ```
    #[must_use]
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.clamp(1, 1024);
        self
    }

    /// Whether a slow link earns more calls in flight than
    /// [`RedisConfig::max_in_flight`] (default `true`; see there). Turn it off
    /// when call latency says nothing about the link: a Redis slowed down on
    /// purpose (under valgrind, say) would otherwise get many small batches.
    #[must_use]
    pub fn fit_in_flight(mut self, fit: bool) -> Self {
        self.fit_in_flight = fit;
        self
    }

    /// Expired leases one acquire reclaims before selecting (at least 1). When
    /// more are due and nothing is free, the acquire runs cleanup batches first.
    #[must_use]
    pub fn reclaim_batch(mut self, n: u32) -> Self {
        self.reclaim_batch = n.clamp(1, 100_000);
        self
    }

    /// Expired leases one cleanup script call handles (at least 1); cleanup
    /// loops, so this bounds how long each call holds Redis.
    #[must_use]
    pub fn cleanup_batch(mut self, n: u32) -> Self {
        self.cleanup_batch = n.clamp(1, 100_000);
        self
    }

    /// The Redis URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The key namespace.
    pub fn get_namespace(&self) -> &str {
        &self.namespace
    }

    pub(crate) fn validate(&self) -> Result<()> {
        validate_namespace(&self.namespace)?;
        if self.pool_size == 0 {
            return Err(crate::error::Error::InvalidArgument(
                "Redis pool size must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

impl Default for RedisConfig {
    /// [`RedisConfig::from_env`].
    fn default() -> Self {
        Self::from_env()
    }
}
