//! Proxy pools, and the indexes a pool keeps.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::filters::FilterAttribute;
use crate::names::{IntoPoolName, PoolName};
use crate::selector::SelectorStrategy;

/// Longest pool description accepted, in bytes.
pub const MAX_DESCRIPTION_LEN: usize = 1024;

/// A named group of proxies that workers lease from, such as `latam-residential`.
///
/// ```
/// use lighthouse_lease::{IndexOrder, IndexedAttribute, PoolIndexes, ProxyPool};
///
/// let pool = ProxyPool::new("latam-residential")?.with_description("LATAM residential IPs");
/// assert_eq!(pool.name, "latam-residential");
/// // The default indexes: the `country` attribute, in the least-used order.
/// assert_eq!(pool.indexes, PoolIndexes::default());
///
/// // A pool that also filters by city and picks by latency cheaply.
/// let pool = ProxyPool::new("eu-datacenter")?.with_indexes(
///     PoolIndexes::new()
///         .attribute(IndexedAttribute::Country)
///         .attribute(IndexedAttribute::City)
///         .order(IndexOrder::Latency),
/// );
/// # Ok::<(), lighthouse_lease::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyPool {
    /// Unique id.
    pub id: Uuid,
    /// Unique name, see [`crate::names`] for the rules.
    pub name: PoolName,
    /// Free text for humans.
    pub description: Option<String>,
    /// Which attributes and orders the pool indexes, fixed when it is created.
    #[serde(default)]
    pub indexes: PoolIndexes,
    /// The pool's rate limit per proxy, fixed when it is created (see
    /// [`RateLimit`]); `None`: leases are limited by `max_concurrency` only.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// How the pool scores its proxies' reports and explores, for the
    /// `best_success` selector (see [`crate::success`]); fixed when it is
    /// created.
    #[serde(default)]
    pub success_scoring: crate::success::SuccessScoring,
}

/// A pool's rate limit per proxy: at most `leases` new leases of one proxy in
/// any window of `per`, fleet-wide (every manager and host of the storage).
///
/// Kept by spacing: after each lease a proxy *rests* for `per / leases`
/// (whole milliseconds, on the storage's clock) before it can be leased again,
/// out of the availability indexes as a cooling proxy is, so acquires skip it
/// at no cost and waiting acquires wake when it is back. Leases of a proxy thus
/// start at least `per / leases` apart, hence at most `leases` in any window of
/// `per` (no bursts). A rest is not a failure: a success report does not end
/// it, and [`crate::Proxy::rest_until`] shows it. A pool with no rate limit pays
/// nothing for it.
///
/// ```
/// use std::time::Duration;
/// use lighthouse_lease::{ProxyPool, RateLimit};
/// let polite = RateLimit::new(10, Duration::from_secs(60))?; // a lease every 6 s per proxy
/// assert_eq!(polite.spacing(), Duration::from_secs(6));
/// let pool = ProxyPool::new("polite")?.with_rate_limit(polite);
/// # Ok::<(), lighthouse_lease::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// New leases of one proxy allowed per `per`.
    pub leases: u32,
    /// The window.
    pub per: Duration,
}

impl RateLimit {
    /// At most `leases` new leases per proxy in any window of `per`
    /// ([`Error::InvalidArgument`] unless `leases` ≥ 1 and `per / leases` is
    /// 1 ms to 7 days).
    pub fn new(leases: u32, per: Duration) -> Result<Self> {
        let r = RateLimit { leases, per };
        r.validate()?;
        Ok(r)
    }

    /// The rest after each lease: `per / leases`, rounded up to whole
    /// milliseconds (so never more than `leases` in a window of `per`).
    pub fn spacing(&self) -> Duration {
        Duration::from_millis(self.spacing_ms())
    }

    /// [`RateLimit::spacing`] in milliseconds.
    pub fn spacing_ms(&self) -> u64 {
        let per = u64::try_from(self.per.as_millis()).unwrap_or(u64::MAX);
        per.div_ceil(u64::from(self.leases.max(1)))
    }

    /// Checks the limit (see [`RateLimit::new`]).
    pub fn validate(&self) -> Result<()> {
        let max = u64::try_from(crate::limits::MAX_LEASE_DURATION.as_millis()).unwrap_or(u64::MAX);
        if self.leases == 0 || self.spacing_ms() == 0 || self.spacing_ms() > max {
            return Err(Error::InvalidArgument(
                "rate limit: leases must be at least 1, and per / leases 1 ms to 7 days".into(),
            ));
        }
        Ok(())
    }
}

impl ProxyPool {
    /// A new pool with a fresh id and the default indexes. Fails with
    /// [`Error::InvalidName`] when the name breaks the naming rules.
    pub fn new(name: impl IntoPoolName) -> Result<Self> {
        let pool = ProxyPool {
            id: Uuid::new_v4(),
            name: name.into_pool_name()?,
            description: None,
            indexes: PoolIndexes::default(),
            rate_limit: None,
            success_scoring: crate::success::SuccessScoring::default(),
        };
        pool.validate()?;
        Ok(pool)
    }

    /// Sets the description.
    #[must_use]
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Sets the pool's rate limit per proxy (see [`RateLimit`]).
    #[must_use]
    pub fn with_rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Sets how the pool scores and explores for `best_success` (see
    /// [`crate::success`]).
    #[must_use]
    pub fn with_success_scoring(mut self, scoring: crate::success::SuccessScoring) -> Self {
        self.success_scoring = scoring;
        self
    }

    /// Sets the indexes the pool keeps (see [`PoolIndexes`]).
    #[must_use]
    pub fn with_indexes(mut self, indexes: PoolIndexes) -> Self {
        self.indexes = indexes;
        self
    }

    /// The pool as storages keep it: a pool that does not keep the success
    /// order scores nothing, so it keeps the default [`SuccessScoring`] (what
    /// reading it back gives on every storage).
    ///
    /// [`SuccessScoring`]: crate::success::SuccessScoring
    pub(crate) fn into_stored(mut self) -> Self {
        if !self.indexes.has_order(IndexOrder::Success) {
            self.success_scoring = crate::success::SuccessScoring::default();
        }
        self
    }

    /// Fails when `new` changes what is fixed at a pool's creation (its
    /// indexes, rate limit and, when it keeps the success order, its success
    /// scoring): what `update_pool` of every storage checks.
    pub(crate) fn check_fixed_settings(&self, new: &ProxyPool) -> Result<()> {
        let scoring_kept = self.indexes.has_order(IndexOrder::Success);
        if self.indexes != new.indexes
            || self.rate_limit != new.rate_limit
            || (scoring_kept && self.success_scoring != new.success_scoring)
        {
            return Err(Error::InvalidArgument(format!(
                "pool {:?}: its indexes, rate limit and success scoring are fixed when it is created (remove it and create it again to change them)",
                self.name
            )));
        }
        Ok(())
    }

    /// Checks the description and the indexes (the name was checked when it
    /// was made); storages call it before they write.
    pub fn validate(&self) -> Result<()> {
        if let Some(d) = &self.description {
            if d.len() > MAX_DESCRIPTION_LEN {
                return Err(Error::InvalidArgument(format!(
                    "pool description is longer than {MAX_DESCRIPTION_LEN} bytes"
                )));
            }
        }
        if let Some(r) = &self.rate_limit {
            r.validate()?;
        }
        self.success_scoring.validate()?;
        self.indexes.validate()
    }
}

/// An attribute a pool can index, so that filters on it cost O(log n).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum IndexedAttribute {
    /// [`crate::Proxy::country`].
    Country,
    /// [`crate::Proxy::source`].
    Source,
    /// [`crate::Proxy::city`].
    City,
    /// [`crate::Proxy::isp`].
    Isp,
    /// [`crate::Proxy::asn`].
    Asn,
    /// The location (latitude, longitude): point and radius filters.
    Geo,
}

impl IndexedAttribute {
    /// Every attribute, in a fixed order.
    pub const ALL: [IndexedAttribute; 6] = [
        IndexedAttribute::Country,
        IndexedAttribute::Source,
        IndexedAttribute::City,
        IndexedAttribute::Isp,
        IndexedAttribute::Asn,
        IndexedAttribute::Geo,
    ];

    /// `country`, `source`, `city`, `isp`, `asn` or `geo`.
    pub fn as_str(self) -> &'static str {
        match self {
            IndexedAttribute::Country => "country",
            IndexedAttribute::Source => "source",
            IndexedAttribute::City => "city",
            IndexedAttribute::Isp => "isp",
            IndexedAttribute::Asn => "asn",
            IndexedAttribute::Geo => "geo",
        }
    }

    /// The exact-match filter attribute it indexes (`None` for `Geo`).
    pub fn filter_attribute(self) -> Option<FilterAttribute> {
        match self {
            IndexedAttribute::Country => Some(FilterAttribute::Country),
            IndexedAttribute::Source => Some(FilterAttribute::Source),
            IndexedAttribute::City => Some(FilterAttribute::City),
            IndexedAttribute::Isp => Some(FilterAttribute::Isp),
            IndexedAttribute::Asn => Some(FilterAttribute::Asn),
            IndexedAttribute::Geo => None,
        }
    }
}

impl fmt::Display for IndexedAttribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for IndexedAttribute {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        IndexedAttribute::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{s:?} is not an indexable attribute (country, source, city, isp, asn, geo)"
                ))
            })
    }
}

/// An order a pool keeps its available proxies in, so that selectors that use
/// it cost O(log n).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum IndexOrder {
    /// Fewest live leases first, then insertion order: `least_used` and `random`.
    /// Always kept (the live lease counts live in it).
    Load,
    /// Insertion order: `first_available` and `round_robin` at O(log n) whatever
    /// the lease counts (without it they walk the load order once per distinct
    /// lease count, O(L log n)).
    Sequence,
    /// Lowest latency first (never measured last): `lowest_latency` needs it.
    Latency,
    /// Best success score first (see [`crate::success`]): `best_success`
    /// needs it, and reports keep the scores only in pools that keep it.
    Success,
}

impl IndexOrder {
    /// Every order, in the order storages record them.
    pub const ALL: [IndexOrder; 4] = [
        IndexOrder::Load,
        IndexOrder::Sequence,
        IndexOrder::Latency,
        IndexOrder::Success,
    ];

    /// `load`, `seq`, `lat` or `succ`: the names in storage keys.
    pub fn as_str(self) -> &'static str {
        match self {
            IndexOrder::Load => "load",
            IndexOrder::Sequence => "seq",
            IndexOrder::Latency => "lat",
            IndexOrder::Success => "succ",
        }
    }
}

impl fmt::Display for IndexOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for IndexOrder {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "load" => Ok(IndexOrder::Load),
            "seq" | "sequence" => Ok(IndexOrder::Sequence),
            "lat" | "latency" => Ok(IndexOrder::Latency),
            "succ" | "success" => Ok(IndexOrder::Success),
            _ => Err(Error::InvalidArgument(format!(
                "{s:?} is not an index order (load, seq, latency, success)"
            ))),
        }
    }
}

/// The indexes a pool keeps: which attributes exact-match filters find at
/// O(log n), and which orders selectors read at O(log n). Fixed when the pool is
/// created.
///
/// The default is the `country` attribute and the load order, what most fleets
/// filter and pick by. Every filter and every selector but `lowest_latency`
/// and `best_success` works on any pool: a filter on an attribute the pool does
/// not index walks the smallest index it can use in bounded batches, testing
/// each candidate (cost grows with the number of available proxies that do not
/// match); `lowest_latency` needs [`IndexOrder::Latency`], `best_success`
/// [`IndexOrder::Success`]. Each index costs storage: in
/// Redis about 100 bytes per proxy per attribute and order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PoolIndexes {
    /// Indexed attributes, without repeats.
    pub attributes: Vec<IndexedAttribute>,
    /// Kept orders besides [`IndexOrder::Load`] (always kept), without repeats.
    pub orders: Vec<IndexOrder>,
}

impl Default for PoolIndexes {
    fn default() -> Self {
        PoolIndexes {
            attributes: vec![IndexedAttribute::Country],
            orders: Vec::new(),
        }
    }
}

impl PoolIndexes {
    /// No attribute, only the load order (the leanest pool); add what you filter by.
    pub fn new() -> Self {
        PoolIndexes {
            attributes: Vec::new(),
            orders: Vec::new(),
        }
    }

    /// Every attribute and every order.
    pub fn all() -> Self {
        PoolIndexes {
            attributes: IndexedAttribute::ALL.to_vec(),
            orders: vec![
                IndexOrder::Sequence,
                IndexOrder::Latency,
                IndexOrder::Success,
            ],
        }
    }

    /// Also indexes this attribute.
    #[must_use]
    pub fn attribute(mut self, attribute: IndexedAttribute) -> Self {
        if !self.attributes.contains(&attribute) {
            self.attributes.push(attribute);
        }
        self
    }

    /// Also keeps this order.
    #[must_use]
    pub fn order(mut self, order: IndexOrder) -> Self {
        if order != IndexOrder::Load && !self.orders.contains(&order) {
            self.orders.push(order);
        }
        self
    }

    /// Whether the pool indexes this attribute.
    pub fn has_attribute(&self, attribute: IndexedAttribute) -> bool {
        self.attributes.contains(&attribute)
    }

    /// Whether the pool keeps this order (always true for [`IndexOrder::Load`]).
    pub fn has_order(&self, order: IndexOrder) -> bool {
        order == IndexOrder::Load || self.orders.contains(&order)
    }

    /// Checks that no attribute or order is listed twice.
    pub fn validate(&self) -> Result<()> {
        for (i, a) in self.attributes.iter().enumerate() {
            if self.attributes[..i].contains(a) {
                return Err(Error::InvalidArgument(format!(
                    "pool indexes: attribute {a} is listed twice"
                )));
            }
        }
        for (i, o) in self.orders.iter().enumerate() {
            if self.orders[..i].contains(o) || *o == IndexOrder::Load && i > 0 {
                return Err(Error::InvalidArgument(format!(
                    "pool indexes: order {o} is listed twice"
                )));
            }
        }
        Ok(())
    }

    /// Fails with [`Error::InvalidArgument`] when `selector` needs an order the
    /// pool does not keep (`lowest_latency` needs the latency order,
    /// `best_success` the success order).
    #[inline]
    pub fn check_selector(&self, pool: &PoolName, selector: SelectorStrategy) -> Result<()> {
        let needs = match selector {
            SelectorStrategy::LowestLatency => IndexOrder::Latency,
            SelectorStrategy::BestSuccess => IndexOrder::Success,
            _ => return Ok(()),
        };
        if !self.has_order(needs) {
            return Err(Error::missing_order(pool, needs));
        }
        Ok(())
    }

    /// The attributes, space-separated, in a fixed order (as storages record them).
    pub fn attributes_text(&self) -> String {
        IndexedAttribute::ALL
            .into_iter()
            .filter(|a| self.has_attribute(*a))
            .map(IndexedAttribute::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The orders, space-separated, `load` first (as storages record them).
    pub fn orders_text(&self) -> String {
        IndexOrder::ALL
            .into_iter()
            .filter(|o| self.has_order(*o))
            .map(IndexOrder::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Reads the texts [`PoolIndexes::attributes_text`] and
    /// [`PoolIndexes::orders_text`] wrote.
    pub fn from_texts(attributes: &str, orders: &str) -> Result<Self> {
        let mut out = PoolIndexes::new();
        for a in attributes.split_whitespace() {
            out = out.attribute(a.parse()?);
        }
        for o in orders.split_whitespace() {
            out = out.order(o.parse()?);
        }
        Ok(out)
    }
}

impl Error {
    pub(crate) fn missing_order(pool: &str, order: IndexOrder) -> Self {
        let (name, variant) = match order {
            IndexOrder::Load => ("load", "Load"),
            IndexOrder::Sequence => ("seq", "Sequence"),
            IndexOrder::Latency => ("latency", "Latency"),
            IndexOrder::Success => ("success", "Success"),
        };
        Error::InvalidArgument(format!(
            "pool {pool:?} does not keep the {name} order that this selector needs: create \
             the pool with PoolIndexes::default().order(IndexOrder::{variant}) (or \
             `lighthouse pool create --orders {name}`)"
        ))
    }
}
