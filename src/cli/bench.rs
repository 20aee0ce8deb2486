//! `lighthouse bench`: an acquire→release load generator.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::manager::{AcquireOptions, ProxyManager};
use crate::names::PoolName;
use crate::pool::ProxyPool;
use crate::proxy::Proxy;
use crate::storage::Storage;

/// Arguments of `lighthouse bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Concurrent callers.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Proxies in the temporary pool (ignored with --pool).
    #[arg(long, default_value_t = 1000)]
    pub proxies: usize,
    /// Use this existing pool instead of a temporary one.
    #[arg(long)]
    pub pool: Option<PoolName>,
    /// Each caller acquires once, then loops on `rotate_proxy` (release and
    /// acquire in one storage call); a cycle is one rotate.
    #[arg(long)]
    pub rotate: bool,
    /// Every acquire names this site (skipping proxies resting or banned for
    /// it): measures what site-scoped cooldowns cost.
    #[arg(long)]
    pub site: Option<String>,
    /// Every caller acquires in its own sticky session: measures what
    /// sessions cost.
    #[arg(long)]
    pub sessions: bool,
    /// Caller i filters by the i-th of these countries, in turn
    /// (comma-separated, e.g. `AR,CL,UY`): a fleet whose workers ask for
    /// different countries of one pool. A temporary pool's proxies get these
    /// countries in turn too.
    #[arg(long, value_delimiter = ',')]
    pub countries: Vec<String>,
}

impl BenchArgs {
    /// The country of caller (or temporary proxy) `i` under `--countries`.
    fn country_of(&self, i: usize) -> Option<&String> {
        (!self.countries.is_empty()).then(|| &self.countries[i % self.countries.len()])
    }
}

/// What a bench run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Pool used.
    pub pool: String,
    /// Concurrent callers.
    pub concurrency: usize,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Completed acquire+release cycles (rotates, with `--rotate`).
    pub cycles: u64,
    /// Acquires that found no free proxy.
    pub exhausted: u64,
    /// Cycles per second.
    pub cycles_per_sec: f64,
    /// Cycle latency percentiles, microseconds: p50, p90, p99, max.
    pub latency_us: [u64; 4],
}

impl BenchReport {
    /// Human-readable summary.
    pub fn write_human(&self, w: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            w,
            "{} cycles in {:.1} s with {} callers on pool {}: {:.0} cycles/s ({} acquires found no free proxy)",
            self.cycles, self.seconds, self.concurrency, self.pool, self.cycles_per_sec, self.exhausted
        )?;
        let [p50, p90, p99, max] = self.latency_us;
        writeln!(
            w,
            "cycle latency: p50 {p50} us, p90 {p90} us, p99 {p99} us, max {max} us"
        )
    }
}

/// Runs the load; with `progress`, draws a progress bar on stderr for runs over 2 s.
pub async fn run<S: Storage>(
    manager: &ProxyManager<S>,
    args: &BenchArgs,
    progress: bool,
) -> Result<BenchReport> {
    if args.concurrency == 0 || args.concurrency > 10_000 {
        return Err(Error::InvalidArgument(
            "--concurrency must be in 1..=10000".into(),
        ));
    }
    if !(args.duration.is_finite() && args.duration > 0.0 && args.duration <= 86_400.0) {
        return Err(Error::InvalidArgument(
            "--duration must be in (0, 86400] seconds".into(),
        ));
    }
    let (pool, temporary) = match &args.pool {
        Some(p) => (p.clone(), false),
        None => {
            if args.proxies == 0 || args.proxies > 1_000_000 {
                return Err(Error::InvalidArgument(
                    "--proxies must be in 1..=1000000".into(),
                ));
            }
            let name = PoolName::new(&format!(
                "bench-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ))?;
            let pool = manager
                .storage()
                .create_pool(ProxyPool::new(&name)?)
                .await?;
            let mut batch = Vec::with_capacity(1000);
            for i in 0..args.proxies {
                let mut proxy = Proxy::builder(
                    pool.id,
                    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
                    8080,
                )
                .max_concurrency(4);
                if let Some(country) = args.country_of(i) {
                    proxy = proxy.country(country.clone());
                }
                batch.push(proxy.build()?);
                if batch.len() == 1000 {
                    manager
                        .storage()
                        .add_proxies(std::mem::take(&mut batch))
                        .await?;
                }
            }
            if !batch.is_empty() {
                manager.storage().add_proxies(batch).await?;
            }
            (name, true)
        }
    };
    let result = load(manager, &pool, args, progress).await;
    if temporary {
        let _ = manager.storage().remove_pool(&pool).await;
    }
    result
}

async fn load<S: Storage>(
    manager: &ProxyManager<S>,
    pool: &PoolName,
    args: &BenchArgs,
    progress: bool,
) -> Result<BenchReport> {
    let duration = Duration::from_secs_f64(args.duration);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let bar = (progress && duration > Duration::from_secs(2)).then(|| {
        let bar = indicatif::ProgressBar::new(duration.as_secs());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} s {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(args.concurrency);
    for i in 0..args.concurrency {
        let (m, stop, done, pool) = (manager.clone(), stop.clone(), done.clone(), pool.clone());
        let rotate = args.rotate;
        let mut options = AcquireOptions::new().consumer(format!("bench-{i}"));
        if let Some(site) = &args.site {
            options = options.site(site.clone());
        }
        if let Some(country) = args.country_of(i) {
            options = options.filters(crate::filters::ProxyFilters::new().country(country.clone()));
        }
        if args.sessions {
            options = options.session(format!("bench-session-{i}"));
        }
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut exhausted = 0u64;
            let mut n = 0u64;
            let mut held = None;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if n.is_multiple_of(64) {
                    // A storage that never waits (in memory) would otherwise starve
                    // the timer that ends the run.
                    tokio::task::yield_now().await;
                }
                let t = Instant::now();
                if rotate {
                    // Rotate the lease in hand; the first lease (or the next one
                    // after a rotate that found none) is acquired, not counted.
                    match held.take() {
                        Some(lease) => {
                            held = m.rotate_proxy(&lease, options.clone()).await?.next;
                            if held.is_some() {
                                lat.push(t.elapsed().as_micros() as u64);
                                done.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                        }
                        None => {
                            held = m.acquire_proxy(&pool, options.clone()).await?;
                            if held.is_some() {
                                continue;
                            }
                        }
                    }
                    exhausted += 1;
                    tokio::task::yield_now().await;
                    continue;
                }
                match m.acquire_proxy(&pool, options.clone()).await? {
                    Some(lease) => {
                        m.release_proxy(&lease).await?;
                        lat.push(t.elapsed().as_micros() as u64);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        exhausted += 1;
                        tokio::task::yield_now().await;
                    }
                }
            }
            if let Some(lease) = held {
                m.release_proxy(&lease).await?;
            }
            Ok::<_, Error>((lat, exhausted))
        }));
    }
    while start.elapsed() < duration {
        tokio::time::sleep(
            Duration::from_millis(200).min(duration.saturating_sub(start.elapsed())),
        )
        .await;
        if let Some(bar) = &bar {
            bar.set_position(start.elapsed().as_secs());
            let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
            bar.set_message(format!("{rate:.0} cycles/s"));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut exhausted = 0;
    for t in tasks {
        let (lat, ex) = t
            .await
            .map_err(|e| Error::backend(format!("bench task failed: {e}"), None))??;
        all.extend(lat);
        exhausted += ex;
    }
    let seconds = start.elapsed().as_secs_f64();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    all.sort_unstable();
    let pct = |q: f64| -> u64 {
        if all.is_empty() {
            0
        } else {
            all[((all.len() - 1) as f64 * q).round() as usize]
        }
    };
    Ok(BenchReport {
        pool: pool.to_string(),
        concurrency: args.concurrency,
        seconds,
        cycles: all.len() as u64,
        exhausted,
        cycles_per_sec: all.len() as f64 / seconds,
        latency_us: [pct(0.5), pct(0.9), pct(0.99), pct(1.0)],
    })
}
