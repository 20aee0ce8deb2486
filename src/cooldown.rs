//! Cooldowns and bans after reported failures.

use std::time::Duration;

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::limits::MAX_LEASE_DURATION;

/// [`CooldownPolicy::delay_ms`]'s `keep` for the whole cooldown.
pub const KEEP_ALL: u32 = 1_000_000;

/// Doublings past which the cooldown is the cap whatever the base (2^40 ms is
/// far above the 7-day cap).
const MAX_SHIFT: u32 = 40;

/// How a proxy is rested after failures reported with
/// [`crate::ProxyManager::report_failure`].
///
/// After the n-th failure in a row the proxy is not leased for
/// `min(cap, base × 2^(n-1))`, shortened by a random part of up to `jitter` of it
/// (so proxies that failed together come back spread out). After `ban_after`
/// failures in a row its status becomes `banned` (no cooldown: an operator or a
/// health check decides when it returns). A reported success resets the count and
/// lifts a cooldown.
///
/// ```
/// use std::time::Duration;
/// use lighthouse_lease::CooldownPolicy;
///
/// let policy = CooldownPolicy::default()
///     .base(Duration::from_secs(10))
///     .cap(Duration::from_secs(600))
///     .ban_after(Some(5));
/// assert_eq!(policy.delay(1, 0.0), Duration::from_secs(10));
/// assert_eq!(policy.delay(3, 0.0), Duration::from_secs(40));
/// assert_eq!(policy.delay(30, 0.0), Duration::from_secs(600));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CooldownPolicy {
    /// Cooldown after the first failure (default 30 s).
    pub base: Duration,
    /// Longest cooldown (default 15 min).
    pub cap: Duration,
    /// Largest fraction of a cooldown taken off at random, 0 to 1 (default 0.2).
    pub jitter: f64,
    /// Failures in a row that ban the proxy; `None` never bans (default 5).
    pub ban_after: Option<u32>,
    /// Makes the jitter a function of this seed and the proxy instead of random
    /// (tests, reproducible runs): see [`CooldownPolicy::jitter_seed`].
    pub jitter_seed: Option<u64>,
}

impl Default for CooldownPolicy {
    fn default() -> Self {
        CooldownPolicy {
            base: Duration::from_secs(30),
            cap: Duration::from_secs(15 * 60),
            jitter: 0.2,
            ban_after: Some(5),
            jitter_seed: None,
        }
    }
}

impl CooldownPolicy {
    /// Sets the first cooldown.
    #[must_use]
    pub fn base(mut self, d: Duration) -> Self {
        self.base = d;
        self
    }
    /// Sets the longest cooldown.
    #[must_use]
    pub fn cap(mut self, d: Duration) -> Self {
        self.cap = d;
        self
    }
    /// Sets the jitter fraction.
    #[must_use]
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction;
        self
    }
    /// Sets the failures in a row that ban a proxy.
    #[must_use]
    pub fn ban_after(mut self, n: Option<u32>) -> Self {
        self.ban_after = n;
        self
    }

    /// Draws the jitter for a failure of `proxy`, the same way for every storage
    /// (it is the one random input of [`Self::delay_ms`]): random, or from
    /// [`Self::jitter_seed`] and the proxy when a seed is set.
    pub fn draw_keep(&self, proxy: Uuid) -> u32 {
        let random = match self.jitter_seed {
            None => fastrand::f64(),
            Some(seed) => {
                // splitmix64 of the seed and the proxy id: stable across runs.
                let (hi, lo) = proxy.as_u64_pair();
                let mut z = seed ^ hi ^ lo.rotate_left(32);
                z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                (z >> 11) as f64 / (1u64 << 53) as f64
            }
        };
        self.keep(random)
    }

    /// The share of the full cooldown kept, in millionths, when `random` (in
    /// `0..1`) picks how much of the jitter to take off.
    fn keep(&self, random: f64) -> u32 {
        let cut = self.jitter.clamp(0.0, 1.0) * random.clamp(0.0, 1.0) * 1e6;
        KEEP_ALL - (cut.round() as u32).min(KEEP_ALL)
    }

    /// The cooldown after the `failures`-th failure in a row, in ms, keeping
    /// `keep` millionths of it ([`Self::draw_keep`]): `max(1, ⌊min(cap, base ×
    /// 2^(n-1)) × keep / 10^6⌋)`, in integers. This is the one definition: the
    /// in-memory storage calls it, and `lua/report.lua` computes the same
    /// formula (exactly, in doubles below 2^53) from the same `keep`.
    pub fn delay_ms(&self, failures: u32, keep: u32) -> u64 {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let (base, cap) = (ms(self.base), ms(self.cap));
        let shift = failures.saturating_sub(1).min(MAX_SHIFT);
        let full = base.checked_shl(shift).filter(|f| f >> shift == base);
        let full = full.map_or(cap, |f| f.min(cap));
        let kept = u128::from(full) * u128::from(keep.min(KEEP_ALL)) / u128::from(KEEP_ALL);
        u64::try_from(kept).unwrap_or(u64::MAX).max(1)
    }

    /// The cooldown after the `failures`-th failure in a row, with `random` in
    /// `0..1` choosing how much jitter to take off ([`Self::delay_ms`]).
    pub fn delay(&self, failures: u32, random: f64) -> Duration {
        Duration::from_millis(self.delay_ms(failures, self.keep(random)))
    }

    /// Makes the jitter a function of `seed` and the proxy instead of random:
    /// the same failures of the same proxy then cool it for the same time on
    /// every storage and every run.
    #[must_use]
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.jitter_seed = Some(seed);
        self
    }

    /// Checks the settings: base at least 1 ms, cap at least base and at most 7
    /// days, jitter in 0..=1, ban_after at least 1.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::InvalidArgument(format!("cooldown policy: {m}")));
        if self.base < Duration::from_millis(1) {
            return bad("base must be at least 1 ms");
        }
        if self.cap < self.base || self.cap > MAX_LEASE_DURATION {
            return bad("cap must be between base and 7 days");
        }
        if !(self.jitter.is_finite() && (0.0..=1.0).contains(&self.jitter)) {
            return bad("jitter must be in 0..=1");
        }
        if self.ban_after == Some(0) {
            return bad("ban_after must be at least 1 (None never bans)");
        }
        Ok(())
    }
}
