//! Command line of `lighthouse-sweeper`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tracing::{error, info};

use super::{Sweeper, SweeperConfig};
use crate::redis::{RedisConfig, RedisStorage};

/// `lighthouse-sweeper`: gives back the capacity of expired leases in every pool.
#[derive(Debug, Parser)]
#[command(name = "lighthouse-sweeper", version, about, long_about = None)]
pub struct SweeperArgs {
    /// Redis URL (`redis://` or `rediss://`).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Key namespace.
    #[arg(long, env = "LIGHTHOUSE_NAMESPACE", default_value = "lighthouse")]
    pub namespace: String,
    /// Pause between sweeps, e.g. `1s`, `500ms`, `2m`.
    #[arg(long, env = "LIGHTHOUSE_SWEEP_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Leases per cleanup call (one Redis script call).
    #[arg(long, env = "LIGHTHOUSE_SWEEP_BATCH", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// Pause between lease-counter audits; `0s` turns them off.
    #[arg(long, env = "LIGHTHOUSE_AUDIT_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub audit_interval: Duration,
    /// Address for `/metrics` and `/healthz`; `off` to serve nothing.
    #[arg(long, env = "LIGHTHOUSE_METRICS_ADDR", default_value = "0.0.0.0:9464")]
    pub metrics_addr: String,
    /// Log format.
    #[arg(long, env = "LIGHTHOUSE_LOG_FORMAT", default_value = "human", value_parser = ["human", "json"])]
    pub log_format: String,
    /// How long a Redis call may take before it counts as failed (and
    /// `/healthz` turns unhealthy), e.g. `5s`, `500ms`.
    #[arg(long, env = "LIGHTHOUSE_RESPONSE_TIMEOUT", default_value = "5s", value_parser = parse_positive_duration)]
    pub response_timeout: Duration,
    /// How long connecting to Redis may take, e.g. `2s`.
    #[arg(long, env = "LIGHTHOUSE_CONNECT_TIMEOUT", default_value = "2s", value_parser = parse_positive_duration)]
    pub connect_timeout: Duration,
    /// Check every pool's proxies through the health checker this often, e.g.
    /// `5m`; `off` (default) or `0s`: never.
    #[arg(long, env = "LIGHTHOUSE_HEALTH_CHECK_INTERVAL", default_value = "off", value_parser = parse_optional_duration)]
    pub health_check_interval: OptionalDuration,
    /// URL fetched through each proxy by the scheduled health checks (a 2xx
    /// answer within the slow threshold: active).
    #[arg(long, env = "LIGHTHOUSE_HEALTH_CHECK_TARGET", default_value = crate::health_check::DEFAULT_TARGET_URL)]
    pub health_check_target: String,
    /// Proxies checked at once by the scheduled health checks.
    #[arg(long, env = "LIGHTHOUSE_HEALTH_CHECK_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub health_check_concurrency: u32,
    /// Time allowed for one health-check attempt through a proxy, e.g. `10s`.
    #[arg(long, env = "LIGHTHOUSE_HEALTH_CHECK_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub health_check_timeout: Duration,
    /// Serve a read-only HTML status page on `/` of the metrics address (pools,
    /// resting proxies, oldest leases, last sweep). Unauthenticated: keep the
    /// port inside the cluster's network policy.
    #[arg(long, env = "LIGHTHOUSE_STATUS_PAGE")]
    pub status_page: bool,
    /// Sweep once and exit (no metrics endpoint).
    #[arg(long)]
    pub once: bool,
}

/// Parses `250ms`, `1s`, `1.5s`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (try 500ms, 1s, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?} (use ms, s, m or h)"
            ))
        }
    };
    if !(secs.is_finite() && (0.0..=86_400.0).contains(&secs)) {
        return Err(format!("{s:?} is out of range (0 to 24h)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A duration that may be turned off: `None` for `off` or zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalDuration(pub Option<Duration>);

/// `off`, or [`parse_duration`] (zero is off too).
pub fn parse_optional_duration(s: &str) -> Result<OptionalDuration, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(OptionalDuration(None));
    }
    let d = parse_duration(s)?;
    Ok(OptionalDuration((!d.is_zero()).then_some(d)))
}

/// [`parse_duration`], above zero.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("{s:?} must be above zero")),
        d => Ok(d),
    }
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Runs the sidecar until SIGTERM or SIGINT; exit code 0 on a clean stop.
pub fn main() -> ExitCode {
    let args = SweeperArgs::parse();
    init_logs(&args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: SweeperArgs) -> ExitCode {
    let config = RedisConfig::from_url(args.redis_url.clone())
        .namespace(args.namespace.clone())
        .response_timeout(args.response_timeout)
        .connect_timeout(args.connect_timeout);
    let storage = match RedisStorage::new(config) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "bad configuration");
            return ExitCode::from(2);
        }
    };
    match storage.server_warnings().await {
        Ok(warnings) => {
            for w in warnings {
                tracing::warn!(warning = %w, "Redis configuration");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot check the Redis configuration yet"),
    }
    // The exporter first, so that the sweeper's metrics and the library's (its
    // storage calls) are recorded into it from the start.
    let gauge_idle = (args.interval * 10).max(Duration::from_secs(120));
    let prometheus = match super::metrics::prometheus_builder(gauge_idle).install_recorder() {
        Ok(h) => h,
        Err(e) => {
            error!(error = %e, "cannot install the metrics recorder");
            return ExitCode::FAILURE;
        }
    };
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let sweeper = Sweeper::new(
        storage,
        SweeperConfig {
            interval: args.interval,
            batch_size: args.batch_size,
            audit_interval: (!args.audit_interval.is_zero()).then_some(args.audit_interval),
            ..SweeperConfig::default()
        },
    );
    let sweeper = std::sync::Arc::new(sweeper);
    let checker = match args.health_check_interval.0 {
        None => None,
        Some(every) => {
            let config = crate::HealthCheckConfig::new()
                .target_url(args.health_check_target.clone())
                .timeout(args.health_check_timeout)
                .concurrency(args.health_check_concurrency as usize);
            match crate::HealthChecker::new(config) {
                Ok(c) => Some((c, every)),
                Err(e) => {
                    error!(error = %e, "bad health-check settings");
                    return ExitCode::from(2);
                }
            }
        }
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    if args.once {
        return match sweeper.sweep_once(&rx).await {
            Ok(r) => {
                info!(pools = r.pools, reclaimed = r.reclaimed, "swept once");
                ExitCode::SUCCESS
            }
            Err(e) => {
                error!(error = %e, "sweep failed");
                ExitCode::FAILURE
            }
        };
    }
    let http = if args.metrics_addr != "off" {
        let addr: SocketAddr = match args.metrics_addr.parse() {
            Ok(a) => a,
            Err(e) => {
                error!(addr = %args.metrics_addr, error = %e, "bad --metrics-addr");
                return ExitCode::from(2);
            }
        };
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                error!(%addr, error = %e, "cannot listen for /metrics");
                return ExitCode::FAILURE;
            }
        };
        let local = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        if args.status_page {
            info!(addr = %local, "serving /metrics, /healthz and the status page on /");
        } else {
            info!(addr = %local, "serving /metrics and /healthz");
        }
        let endpoint = super::http::Endpoint {
            sweeper: sweeper.clone(),
            prometheus,
            status_page: args.status_page,
        };
        let shutdown = rx.clone();
        Some(tokio::spawn(async move {
            if let Err(e) = super::http::serve(listener, endpoint, shutdown).await {
                error!(error = %e, "the HTTP endpoint stopped");
            }
        }))
    } else {
        None
    };
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("signal received: finishing the current batch");
        let _ = tx.send(true);
    });
    info!(namespace = %args.namespace, interval_ms = args.interval.as_millis() as u64,
        batch = args.batch_size, "lighthouse-sweeper started");
    let checks = checker.map(|(checker, every)| {
        info!(interval_ms = every.as_millis() as u64, target = %checker.config().target_url,
            concurrency = checker.config().concurrency, "scheduled health checks on");
        let (sweeper, stop) = (sweeper.clone(), rx.clone());
        tokio::spawn(async move { sweeper.run_health_checks(checker, every, stop).await })
    });
    sweeper.run(rx).await;
    if let Some(h) = checks {
        let _ = h.await;
    }
    if let Some(h) = http {
        let _ = h.await;
    }
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
