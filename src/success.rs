//! Success-aware selection: a success score per proxy, kept by reports and
//! shared by every host, and the selector that picks the best-scoring proxy.
//!
//! A pool that keeps the success order ([`crate::IndexOrder::Success`]) counts
//! every [`crate::ProxyManager::report_success`] and
//! [`crate::ProxyManager::report_failure`] of its proxies into an exponentially
//! weighted success rate with a half-life (the pool's [`SuccessScoring`],
//! [`DEFAULT_HALF_LIFE`] by default): a report `t` ago weighs `0.5^(t / half-life)`
//! of a report now. The score is that rate smoothed towards one half by one
//! success and one failure that never decay (Laplace's rule), so a proxy never
//! reported scores 0.5, one success alone 0.67, and only a long record comes
//! near 0 or 1:
//!
//! ```text
//! score = (successes + 1) / (reports + 2)      (successes and reports decayed)
//! ```
//!
//! The score is worked out when a report about the proxy comes (the earlier
//! evidence weighed by its age at that moment) and kept as it is until the
//! next one: a proxy nobody reports about keeps the score of its last report,
//! and the half-life decides how much a new report outweighs the older ones.
//! The storage keeps it in an index of available proxies
//! ordered by score, so [`crate::SelectorStrategy::BestSuccess`] picks the
//! best-scoring available proxy that matches at O(log n), as the other
//! selectors do (ties: earliest added). On Redis the evidence lives in one hash
//! per pool, `P succ` (seq → `<successes> <reports> <ms of the last report>`),
//! and the order in `P idx:succ:<tag>`, updated inside the report's script.
//!
//! A pool that always leases its best proxy never learns about the others:
//! the storage sends a share of the `best_success` acquires (the pool's
//! [`SuccessScoring::exploration`], [`DEFAULT_EXPLORATION`] by default) to a
//! uniformly random available proxy that matches instead, so new and recovered
//! proxies keep being tried.
//!
//! Both settings belong to the pool, so every host scores and explores alike;
//! they are fixed when the pool is created, as its indexes are.
//!
//! ```
//! # use lighthouse_lease::*;
//! # use std::time::Duration;
//! # async fn demo() -> Result<()> {
//! let manager = ProxyManager::new(InMemoryStorage::new());
//! let always_best = SuccessScoring::new(Duration::from_secs(600), 0.0)?; // no exploration
//! let pool = ProxyPool::new("web")?
//!     .with_indexes(PoolIndexes::default().order(IndexOrder::Success))
//!     .with_success_scoring(always_best);
//! let pool = manager.storage().create_pool(pool).await?;
//! let a = manager.storage().add_proxy(Proxy::builder(pool.id, "10.0.0.1", 8080).build()?).await?;
//! let b = manager.storage().add_proxy(Proxy::builder(pool.id, "10.0.0.2", 8080).build()?).await?;
//! manager.report_success(&b.id).await?;
//! manager.report_success(&b.id).await?;
//! let best = AcquireOptions::new().selector(SelectorStrategy::BestSuccess);
//! let lease = manager.acquire_proxy("web", best).await?.expect("a proxy");
//! assert_eq!(lease.proxy_id, b.id, "b has the better record, a none yet");
//! assert_ne!(lease.proxy_id, a.id);
//! let scores = manager.storage().success_scores(&"web".try_into()?).await?;
//! assert!(scores.iter().any(|s| s.proxy_id == b.id && s.score > 0.5));
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};

/// The half-life of a report's weight when the pool sets none: 30 minutes.
pub const DEFAULT_HALF_LIFE: Duration = Duration::from_secs(30 * 60);

/// The share of `best_success` acquires sent to a random available proxy
/// instead, by default: 5 %.
pub const DEFAULT_EXPLORATION: f64 = 0.05;

/// How a pool scores its proxies and explores: the half-life of a report's
/// weight, and the share of `best_success` acquires that go to a random
/// available proxy instead (see the [module docs](self)). Fixed when the pool is
/// created; only pools that keep [`crate::IndexOrder::Success`] use it.
///
/// ```
/// use std::time::Duration;
/// use lighthouse_lease::SuccessScoring;
/// let s = SuccessScoring::new(Duration::from_secs(3600), 0.1)?;
/// assert_eq!(s.half_life(), Duration::from_secs(3600));
/// assert_eq!(s.exploration(), 0.1);
/// assert!(SuccessScoring::new(Duration::ZERO, 0.1).is_err());
/// assert!(SuccessScoring::new(Duration::from_secs(1), 1.5).is_err());
/// # Ok::<(), lighthouse_lease::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SuccessScoring {
    half_life_ms: u64,
    exploration_ppm: u32,
}

impl Default for SuccessScoring {
    fn default() -> Self {
        SuccessScoring {
            half_life_ms: DEFAULT_HALF_LIFE.as_millis() as u64,
            exploration_ppm: (DEFAULT_EXPLORATION * 1e6) as u32,
        }
    }
}

impl SuccessScoring {
    /// A half-life of 1 ms to 7 days, and an exploration share of 0 to 1 (kept
    /// to a millionth); [`Error::InvalidArgument`] otherwise.
    pub fn new(half_life: Duration, exploration: f64) -> Result<Self> {
        let half_life_ms = u64::try_from(half_life.as_millis()).unwrap_or(u64::MAX);
        if !(0.0..=1.0).contains(&exploration) {
            return Err(Error::InvalidArgument(format!(
                "success scoring: exploration must be between 0 and 1, not {exploration}"
            )));
        }
        let s = SuccessScoring {
            half_life_ms,
            exploration_ppm: (exploration * 1e6).round() as u32,
        };
        s.validate()?;
        Ok(s)
    }

    /// The half-life of a report's weight.
    pub fn half_life(&self) -> Duration {
        Duration::from_millis(self.half_life_ms)
    }

    /// [`SuccessScoring::half_life`] in milliseconds.
    pub fn half_life_ms(&self) -> u64 {
        self.half_life_ms
    }

    /// The share of `best_success` acquires that pick a random proxy.
    pub fn exploration(&self) -> f64 {
        f64::from(self.exploration_ppm) / 1e6
    }

    /// [`SuccessScoring::exploration`] in millionths.
    pub fn exploration_ppm(&self) -> u32 {
        self.exploration_ppm
    }

    /// Reads what [`SuccessScoring::to_text`] wrote.
    pub(crate) fn from_text(text: &str) -> Result<Self> {
        let mut it = text.split(' ');
        let (Some(h), Some(e), None) = (it.next(), it.next(), it.next()) else {
            return Err(Error::InvalidArgument(format!(
                "bad success scoring {text:?}"
            )));
        };
        let bad = |_| Error::InvalidArgument(format!("bad success scoring {text:?}"));
        let s = SuccessScoring {
            half_life_ms: h.parse().map_err(bad)?,
            exploration_ppm: e.parse().map_err(bad)?,
        };
        s.validate()?;
        Ok(s)
    }

    /// `<half-life ms> <exploration millionths>`, as storages record it.
    pub(crate) fn to_text(self) -> String {
        format!("{} {}", self.half_life_ms, self.exploration_ppm)
    }

    /// Checks the settings (see [`SuccessScoring::new`]).
    pub fn validate(&self) -> Result<()> {
        let max = u64::try_from(crate::limits::MAX_LEASE_DURATION.as_millis()).unwrap_or(u64::MAX);
        if self.half_life_ms == 0 || self.half_life_ms > max || self.exploration_ppm > 1_000_000 {
            return Err(Error::InvalidArgument(
                "success scoring: the half-life must be 1 ms to 7 days, exploration 0 to 1".into(),
            ));
        }
        Ok(())
    }
}

/// The score of a proxy never reported about.
pub const PRIOR_SCORE: f64 = 0.5;

/// Scores are ranked in steps of a millionth (the index's key).
const RANK_STEPS: f64 = 1_000_000.0;

/// A proxy's success score as the storage keeps it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct SuccessScore {
    /// The proxy.
    pub proxy_id: Uuid,
    /// `(successes + 1) / (reports + 2)`, between 0 and 1.
    pub score: f64,
    /// The successes reported, each weighed by its age at the last report
    /// (`updated_at`; see the module docs).
    pub successes: f64,
    /// The reports, each weighed by its age at the last report.
    pub reports: f64,
    /// When the last report came (the storage's clock).
    pub updated_at: DateTime<Utc>,
}

/// Decayed evidence of one proxy: successes and reports as of `at_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Evidence {
    pub successes: f64,
    pub reports: f64,
    pub at_ms: i64,
}

impl Evidence {
    /// The evidence after one more report at `now_ms` (earlier reports weigh
    /// `0.5^(age / half_life)`; a clock that went back decays nothing).
    pub(crate) fn after(
        previous: Option<Evidence>,
        success: bool,
        now_ms: i64,
        half_life_ms: u64,
    ) -> Evidence {
        let (s, n) = match previous {
            None => (0.0, 0.0),
            Some(e) => {
                let age = now_ms.saturating_sub(e.at_ms).max(0) as f64;
                let w = 0.5f64.powf(age / half_life_ms.max(1) as f64);
                (e.successes * w, e.reports * w)
            }
        };
        Evidence {
            successes: s + if success { 1.0 } else { 0.0 },
            reports: n + 1.0,
            at_ms: now_ms,
        }
    }

    /// `(successes + 1) / (reports + 2)`.
    pub(crate) fn score(&self) -> f64 {
        score_of(self.successes, self.reports)
    }
}

/// `(successes + 1) / (reports + 2)`.
pub(crate) fn score_of(successes: f64, reports: f64) -> f64 {
    (successes + 1.0) / (reports + 2.0)
}

/// The key of a score in the success order, lowest first: millionths short
/// of a perfect score (0 ..= 1,000,000; a proxy never reported: 500,000).
/// Redis's `_lib.lua` computes the same (`succ_rank`).
pub(crate) fn rank_of(score: f64) -> u64 {
    let r = ((1.0 - score) * RANK_STEPS + 0.5).floor();
    r.clamp(0.0, RANK_STEPS) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoring_settings_round_trip_as_text() {
        let s = SuccessScoring::new(Duration::from_millis(1234), 0.25).expect("valid");
        assert_eq!(s.to_text(), "1234 250000");
        assert_eq!(SuccessScoring::from_text(&s.to_text()).expect("read"), s);
        assert!(SuccessScoring::from_text("0 5").is_err());
        assert!(SuccessScoring::from_text("5").is_err());
        assert!(SuccessScoring::from_text("5 2000000").is_err());
        assert_eq!(SuccessScoring::default().half_life(), DEFAULT_HALF_LIFE);
    }

    #[test]
    fn a_report_half_a_life_ago_weighs_half() {
        let h = 60_000;
        let e = Evidence::after(None, true, 0, h);
        assert_eq!((e.successes, e.reports), (1.0, 1.0));
        let e = Evidence::after(Some(e), false, 60_000, h);
        assert!((e.successes - 0.5).abs() < 1e-12);
        assert!((e.reports - 1.5).abs() < 1e-12);
        // A clock that went back decays nothing.
        let back = Evidence::after(Some(e), true, 0, h);
        assert!((back.successes - 1.5).abs() < 1e-12);
    }

    #[test]
    fn scores_rank_best_first_and_the_prior_sits_in_the_middle() {
        assert_eq!(rank_of(PRIOR_SCORE), 500_000);
        assert_eq!(rank_of(score_of(0.0, 0.0)), 500_000);
        assert!(rank_of(score_of(1.0, 1.0)) < rank_of(PRIOR_SCORE));
        assert!(rank_of(score_of(0.0, 1.0)) > rank_of(PRIOR_SCORE));
        assert_eq!(rank_of(1.0), 0);
        assert_eq!(rank_of(0.0), 1_000_000);
        assert_eq!(rank_of(f64::NAN), 0, "NaN clamps; never stored");
    }
}
