//! The `lighthouse` ops CLI (feature `cli`): pools, proxies, consumers, leases,
//! stats, import and a load generator.
//!
//! The binary is a thin wrapper around [`main`]; every command is a function of
//! [`run`], generic over the [`Storage`], so it can be tested in process.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::filters::ProxyFilters;
use crate::lease::Lease;
use crate::manager::{AcquireOptions, ProxyManager};
use crate::names::{ConsumerName, PoolName};
use crate::pool::ProxyPool;
use crate::proxy::{Proxy, ProxyProtocol, ProxyStatus};
use crate::selector::SelectorStrategy;
use crate::stats::PoolStats;
use crate::storage::Storage;

pub mod bench;
pub mod import;

/// `lighthouse`: manage proxy pools and leases in Redis.
#[derive(Debug, Parser)]
#[command(name = "lighthouse", version, about, long_about = None)]
pub struct Cli {
    /// Redis URL (`redis://` or `rediss://`).
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        global = true
    )]
    pub redis_url: String,
    /// Key namespace.
    #[arg(
        long,
        env = "LIGHTHOUSE_NAMESPACE",
        default_value = "lighthouse",
        global = true
    )]
    pub namespace: String,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A top-level command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, show and delete pools.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Add, import, list, change and remove proxies.
    #[command(subcommand)]
    Proxy(ProxyCommand),
    /// Register and list consumers.
    #[command(subcommand)]
    Consumer(ConsumerCommand),
    /// Lease a proxy and print the lease with the proxy URL.
    Acquire(AcquireArgs),
    /// Release a lease.
    Release {
        /// The lease id.
        lease: Uuid,
        /// The lease's pool (looked up in every pool when omitted).
        #[arg(long)]
        pool: Option<String>,
    },
    /// Show or lift the site-scoped cooldowns and bans of a pool.
    #[command(subcommand)]
    Site(SiteCommand),
    /// Show the proxy a sticky session keeps, and until when.
    Session {
        /// The session's name.
        name: String,
        /// The pool.
        #[arg(long)]
        pool: String,
    },
    /// List the fair waiters' tickets of a pool, head first (see `--fair`).
    Tickets {
        /// The pool.
        #[arg(long)]
        pool: String,
    },
    /// List a pool's live leases.
    Leases {
        /// The pool.
        #[arg(long)]
        pool: String,
    },
    /// Show occupancy of one pool or of all.
    Stats {
        /// Only this pool.
        #[arg(long)]
        pool: Option<String>,
    },
    /// Reclaim expired leases in every pool, once.
    Sweep,
    /// Acquire/release load generator: cycles/s and latency percentiles.
    Bench(bench::BenchArgs),
}

/// `lighthouse pool ...`
#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Create a pool.
    Create {
        /// Pool name: ASCII letters, digits, '-', '_', '.'.
        name: String,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
        /// Attributes the pool indexes, comma-separated (country, source, city,
        /// isp, asn, geo); default: country. `none` for none.
        #[arg(long, value_delimiter = ',')]
        attributes: Option<Vec<String>>,
        /// Orders the pool keeps besides load, comma-separated (seq, latency,
        /// success); default: none. `lowest_latency` needs `latency`,
        /// `best_success` needs `success`.
        #[arg(long, value_delimiter = ',')]
        orders: Option<Vec<String>>,
        /// With the success order: the half-life of a report's weight in the
        /// success score, in seconds (default 1800).
        #[arg(long)]
        success_half_life: Option<f64>,
        /// With the success order: the share of `best_success` acquires that
        /// pick a random proxy instead, 0 to 1 (default 0.05).
        #[arg(long)]
        exploration: Option<f64>,
        /// Rate limit per proxy, `<leases>/<seconds>`: at most that many new
        /// leases of one proxy in any window of that many seconds, fleet-wide
        /// (e.g. `10/60`: one every 6 s). Default: none.
        #[arg(long)]
        rate_limit: Option<String>,
    },
    /// List pools.
    List,
    /// Show a pool with its stats.
    Show {
        /// Pool name.
        name: String,
    },
    /// The success scores of a pool's proxies, best first (pools that keep
    /// the success order).
    Scores {
        /// Pool name.
        name: String,
    },
    /// Delete a pool with its proxies and leases.
    Delete {
        /// Pool name.
        name: String,
    },
}

/// `lighthouse proxy ...`
#[derive(Debug, Subcommand)]
pub enum ProxyCommand {
    /// Add one proxy.
    Add(ProxyArgs),
    /// Import proxies from a CSV, JSON or JSON Lines file: all of them, or none if
    /// any record is invalid (unless --skip-invalid).
    Import {
        /// Pool to add them to.
        #[arg(long)]
        pool: String,
        /// The file.
        file: PathBuf,
        /// File format (default: from the extension).
        #[arg(long, value_enum)]
        format: Option<import::ImportFormat>,
        /// Import the valid records and report the invalid ones, instead of
        /// importing nothing.
        #[arg(long)]
        skip_invalid: bool,
    },
    /// List a pool's proxies.
    List {
        /// Pool name.
        #[arg(long)]
        pool: String,
    },
    /// Change a proxy's status.
    SetStatus {
        /// Proxy id.
        id: Uuid,
        /// active, inactive, slow or banned.
        status: ProxyStatus,
    },
    /// Remove a proxy and its leases.
    Remove {
        /// Proxy id.
        id: Uuid,
    },
}

/// Fields of `lighthouse proxy add`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Pool to add it to.
    #[arg(long)]
    pub pool: String,
    /// IP address or host name.
    #[arg(long)]
    pub host: String,
    /// TCP port.
    #[arg(long)]
    pub port: u16,
    /// Protocol.
    #[arg(long, default_value = "http")]
    pub protocol: ProxyProtocol,
    /// User name.
    #[arg(long)]
    pub username: Option<String>,
    /// Password.
    #[arg(long, requires = "username")]
    pub password: Option<String>,
    /// Most concurrent leases (default unlimited).
    #[arg(long)]
    pub max_concurrency: Option<u32>,
    /// Status.
    #[arg(long, default_value = "active")]
    pub status: ProxyStatus,
    /// The proxy's attributes.
    #[command(flatten)]
    pub attrs: Attributes,
    /// Latitude (with --longitude).
    #[arg(long, requires = "longitude", allow_hyphen_values = true)]
    pub latitude: Option<f64>,
    /// Longitude (with --latitude).
    #[arg(long, requires = "latitude", allow_hyphen_values = true)]
    pub longitude: Option<f64>,
}

/// Exact-match attributes: a proxy's (`proxy add`) or required ones (`acquire`).
#[derive(Debug, Args)]
pub struct Attributes {
    /// Country code.
    #[arg(long)]
    pub country: Option<String>,
    /// Provider.
    #[arg(long)]
    pub source: Option<String>,
    /// City.
    #[arg(long)]
    pub city: Option<String>,
    /// ISP.
    #[arg(long)]
    pub isp: Option<String>,
    /// ASN.
    #[arg(long)]
    pub asn: Option<u32>,
}

/// `lighthouse site ...`
#[derive(Debug, Subcommand)]
pub enum SiteCommand {
    /// List the proxies resting, banned or with failures counted for a site.
    Show {
        /// The site, e.g. shop.example.
        site: String,
        /// The pool.
        #[arg(long)]
        pool: String,
    },
    /// Lift a proxy's rest or ban for a site (as a reported success does).
    Lift {
        /// The site.
        site: String,
        /// The proxy id.
        proxy: Uuid,
    },
}

/// `lighthouse consumer ...`
#[derive(Debug, Subcommand)]
pub enum ConsumerCommand {
    /// Register a consumer (no-op if it exists).
    Add {
        /// Consumer name.
        name: String,
    },
    /// List consumers.
    List,
}

/// Arguments of `lighthouse acquire`.
#[derive(Debug, Args)]
pub struct AcquireArgs {
    /// Pool to lease from.
    #[arg(long)]
    pub pool: String,
    /// Consumer (registered on first use); default "default".
    #[arg(long)]
    pub consumer: Option<String>,
    /// Lease length in seconds.
    #[arg(long, default_value_t = 300)]
    pub duration: u64,
    /// How to pick a proxy.
    #[arg(long, default_value = "least_used")]
    pub selector: SelectorStrategy,
    /// Only proxies with these attributes.
    #[command(flatten)]
    pub attrs: Attributes,
    /// Near this latitude (with --longitude and --radius-km).
    #[arg(long, allow_hyphen_values = true)]
    pub latitude: Option<f64>,
    /// Near this longitude.
    #[arg(long, allow_hyphen_values = true)]
    pub longitude: Option<f64>,
    /// Radius around the point, in km.
    #[arg(long)]
    pub radius_km: Option<f64>,
    /// Acquire in this sticky session: the proxy it had last when that one can
    /// serve, else another, which it keeps from then on.
    #[arg(long)]
    pub session: Option<String>,
    /// How long the session keeps its proxy after this acquire, in seconds
    /// (default: the lease's duration).
    #[arg(long, requires = "session")]
    pub session_ttl: Option<u64>,
    /// Lease for this site: skip proxies resting or banned for it.
    #[arg(long)]
    pub site: Option<String>,
    /// Wait up to this many seconds for a proxy when none is free.
    #[arg(long)]
    pub wait: Option<u64>,
    /// Wait in the pool's fleet-wide queue: served in ticket order with the
    /// fair waiters of every host (`lighthouse tickets` shows the queue).
    #[arg(long, requires = "wait")]
    pub fair: bool,
}

/// `<leases>/<seconds>` (seconds may have a fraction) as a [`crate::RateLimit`].
fn parse_rate_limit(text: &str) -> Result<crate::RateLimit> {
    let bad = || {
        Error::InvalidArgument(format!(
            "rate limit {text:?}: expected <leases>/<seconds>, e.g. 10/60"
        ))
    };
    let (leases, secs) = text.split_once('/').ok_or_else(bad)?;
    let leases: u32 = leases.trim().parse().map_err(|_| bad())?;
    let secs: f64 = secs.trim().parse().map_err(|_| bad())?;
    if !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
        return Err(bad());
    }
    crate::RateLimit::new(leases, Duration::from_secs_f64(secs))
}

/// Runs the CLI: parses arguments and the environment, connects to Redis, runs
/// the command, prints the result. Errors are one line on stderr and exit code 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(async {
        let storage = crate::redis::RedisStorage::new(
            crate::redis::RedisConfig::from_url(cli.redis_url.clone())
                .namespace(cli.namespace.clone())
                .tuned_from_env(),
        )?;
        let mut out = std::io::stdout().lock();
        run(&cli, &manager(storage), &mut out).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

fn io(e: std::io::Error) -> Error {
    Error::backend(format!("cannot write output: {e}"), Some(Box::new(e)))
}

struct Printer<'a, W: Write> {
    json: bool,
    out: &'a mut W,
}

impl<W: Write> Printer<'_, W> {
    fn print<T: Serialize>(
        &mut self,
        value: &T,
        human: impl FnOnce(&mut W) -> std::io::Result<()>,
    ) -> Result<()> {
        if self.json {
            let text = serde_json::to_string(value)
                .map_err(|e| Error::InvalidArgument(format!("cannot encode JSON: {e}")))?;
            writeln!(self.out, "{text}").map_err(io)
        } else {
            human(self.out).map_err(io)
        }
    }
}

fn limit(p: &Proxy) -> String {
    p.max_concurrency
        .map_or_else(|| "unlimited".into(), |m| m.to_string())
}

fn proxy_line(p: &Proxy) -> String {
    let mut attrs = Vec::new();
    for (k, v) in [
        ("country", &p.country),
        ("source", &p.source),
        ("city", &p.city),
        ("isp", &p.isp),
    ] {
        if let Some(v) = v {
            attrs.push(format!("{k}={v}"));
        }
    }
    if let Some(a) = p.asn {
        attrs.push(format!("asn={a}"));
    }
    let ms =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    if let Some(t) = p.cooldown_until {
        attrs.push(format!("cooling-until={}", ms(t)));
    }
    if let Some(t) = p.rest_until {
        attrs.push(format!("resting-until={}", ms(t)));
    }
    format!(
        "{}  {:<8} {}/{:<9} {}  {}",
        p.id,
        p.status,
        p.current_leases,
        limit(p),
        p.endpoint().redacted_url(),
        attrs.join(" ")
    )
}

fn lease_line(l: &Lease) -> String {
    format!(
        "{}  proxy {}  {}  consumer {}  expires {}",
        l.id,
        l.proxy_id,
        l.proxy.redacted_url(),
        l.consumer_name,
        l.expires_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    )
}

fn stats_line(name: &str, s: &PoolStats) -> String {
    format!(
        "{name}: {} proxies, {} active, {} available, {} leased, {} leases, {} cooling, {} banned",
        s.total_proxies,
        s.active_proxies,
        s.available_proxies,
        s.leased_proxies,
        s.total_leases,
        s.cooling_proxies,
        s.banned_proxies
    )
}

async fn pool_id<S: Storage>(storage: &S, name: &str) -> Result<Uuid> {
    storage
        .get_pool(&PoolName::new(name)?)
        .await?
        .map(|p| p.id)
        .ok_or_else(|| Error::PoolNotFound {
            name: name.to_string(),
        })
}

/// The manager the CLI uses: consumers named on the command line are registered
/// on first use.
pub fn manager<S: Storage>(storage: S) -> ProxyManager<S> {
    ProxyManager::builder(storage)
        .auto_register_consumers(true)
        .build()
}

/// Runs one parsed command through a manager, writing to `out`.
pub async fn run<S: Storage, W: Write>(
    cli: &Cli,
    manager: &ProxyManager<S>,
    out: &mut W,
) -> Result<()> {
    let s = manager.storage();
    let mut p = Printer {
        json: cli.json,
        out,
    };
    match &cli.command {
        Command::Pool(PoolCommand::Create {
            name,
            description,
            attributes,
            orders,
            rate_limit,
            success_half_life,
            exploration,
        }) => {
            let mut pool = ProxyPool::new(name.clone())?;
            if success_half_life.is_some() || exploration.is_some() {
                let d = crate::success::SuccessScoring::default();
                let half = match success_half_life {
                    Some(secs) if *secs > 0.0 && Duration::try_from_secs_f64(*secs).is_ok() => {
                        Duration::try_from_secs_f64(*secs).unwrap_or_default()
                    }
                    Some(secs) => {
                        return Err(Error::InvalidArgument(format!(
                            "--success-half-life must be a positive number of seconds, not {secs}"
                        )))
                    }
                    None => d.half_life(),
                };
                pool.success_scoring = crate::success::SuccessScoring::new(
                    half,
                    exploration.unwrap_or(d.exploration()),
                )?;
            }
            if let Some(text) = rate_limit {
                pool.rate_limit = Some(parse_rate_limit(text)?);
            }
            pool.description = description.clone();
            if let Some(list) = attributes {
                let mut ix = crate::pool::PoolIndexes::new();
                for a in list.iter().filter(|a| a.trim() != "none") {
                    ix = ix.attribute(a.parse()?);
                }
                ix.orders = pool.indexes.orders.clone();
                pool.indexes = ix;
            }
            if let Some(list) = orders {
                for o in list.iter().filter(|o| o.trim() != "none") {
                    pool.indexes = pool.indexes.clone().order(o.parse()?);
                }
            }
            if (success_half_life.is_some() || exploration.is_some())
                && !pool.indexes.has_order(crate::pool::IndexOrder::Success)
            {
                return Err(Error::InvalidArgument(
                    "--success-half-life and --exploration need the success order (--orders success)"
                        .into(),
                ));
            }
            let pool = s.create_pool(pool).await?;
            p.print(&pool, |w| {
                writeln!(w, "created pool {} ({})", pool.name, pool.id)
            })
        }
        Command::Pool(PoolCommand::List) => {
            let pools = s.list_pools().await?;
            p.print(&pools, |w| {
                for pool in &pools {
                    writeln!(
                        w,
                        "{}  {}  {}",
                        pool.name,
                        pool.id,
                        pool.description.as_deref().unwrap_or("")
                    )?;
                }
                Ok(())
            })
        }
        Command::Pool(PoolCommand::Show { name }) => {
            let name = &PoolName::new(name)?;
            let pool = s.get_pool(name).await?.ok_or_else(|| Error::PoolNotFound {
                name: name.to_string(),
            })?;
            let stats = s.pool_stats(name).await?;
            let tickets = s.wait_tickets(name).await?;
            #[derive(Serialize)]
            struct Show<'a> {
                pool: &'a ProxyPool,
                stats: &'a PoolStats,
                tickets: &'a [crate::fair::QueuedTicket],
            }
            p.print(
                &Show {
                    pool: &pool,
                    stats: &stats,
                    tickets: &tickets,
                },
                |w| {
                    writeln!(w, "pool {} ({})", pool.name, pool.id)?;
                    if let Some(d) = &pool.description {
                        writeln!(w, "  {d}")?;
                    }
                    writeln!(
                        w,
                        "  indexes: attributes [{}], orders [{}]",
                        pool.indexes.attributes_text(),
                        pool.indexes.orders_text()
                    )?;
                    if let Some(r) = &pool.rate_limit {
                        writeln!(
                            w,
                            "  rate limit: {} leases per proxy per {:?} (a rest of {:?} after each)",
                            r.leases,
                            r.per,
                            r.spacing()
                        )?;
                    }
                    if pool.indexes.has_order(crate::pool::IndexOrder::Success) {
                        let sc = &pool.success_scoring;
                        writeln!(
                            w,
                            "  success scoring: half-life {:?}, exploration {}",
                            sc.half_life(),
                            sc.exploration()
                        )?;
                    }
                    if let Some(head) = tickets.first() {
                        writeln!(
                            w,
                            "  fair waiters: {} tickets queued, head #{}",
                            tickets.len(),
                            head.number
                        )?;
                    }
                    writeln!(w, "  {}", stats_line(&pool.name, &stats))
                },
            )
        }
        Command::Pool(PoolCommand::Scores { name }) => {
            let name = &PoolName::new(name)?;
            let scores = s.success_scores(name).await?;
            let proxies = s.list_proxies(name).await?;
            let endpoint = |id: uuid::Uuid| {
                proxies
                    .iter()
                    .find(|p| p.id == id)
                    .map_or_else(String::new, |p| format!("{}:{}", p.host, p.port))
            };
            p.print(&scores, |w| {
                if scores.is_empty() {
                    return writeln!(
                        w,
                        "no scores in pool {name} (none reported, or it does not keep the success order)"
                    );
                }
                for sc in &scores {
                    writeln!(
                        w,
                        "{} {}  score={:.3} successes={:.2} reports={:.2} last={}",
                        sc.proxy_id,
                        endpoint(sc.proxy_id),
                        sc.score,
                        sc.successes,
                        sc.reports,
                        sc.updated_at
                            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                    )?;
                }
                Ok(())
            })
        }
        Command::Pool(PoolCommand::Delete { name }) => {
            let name = &PoolName::new(name)?;
            if !s.remove_pool(name).await? {
                return Err(Error::PoolNotFound {
                    name: name.to_string(),
                });
            }
            p.print(&serde_json::json!({ "deleted": name }), |w| {
                writeln!(w, "deleted pool {name}")
            })
        }
        Command::Proxy(ProxyCommand::Add(a)) => {
            let pool_id = pool_id(s, &a.pool).await?;
            let mut b = Proxy::builder(pool_id, a.host.clone(), a.port)
                .protocol(a.protocol)
                .status(a.status);
            if let Some(u) = &a.username {
                b = b.credentials(u.clone(), a.password.clone().unwrap_or_default());
            }
            if let Some(m) = a.max_concurrency {
                b = b.max_concurrency(m);
            }
            if let Some(v) = &a.attrs.source {
                b = b.source(v.clone());
            }
            if let Some(v) = &a.attrs.country {
                b = b.country(v.clone());
            }
            if let Some(v) = &a.attrs.city {
                b = b.city(v.clone());
            }
            if let Some(v) = &a.attrs.isp {
                b = b.isp(v.clone());
            }
            if let Some(v) = a.attrs.asn {
                b = b.asn(v);
            }
            if let (Some(lat), Some(lon)) = (a.latitude, a.longitude) {
                b = b.location(lat, lon);
            }
            let proxy = s.add_proxy(b.build()?).await?;
            p.print(&proxy, |w| writeln!(w, "added {}", proxy_line(&proxy)))
        }
        Command::Proxy(ProxyCommand::Import {
            pool,
            file,
            format,
            skip_invalid,
        }) => {
            let pool_id = pool_id(s, pool).await?;
            let format = format
                .or_else(|| import::ImportFormat::from_path(file))
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "cannot tell the format of {}: name it with --format csv|json|jsonl",
                        file.display()
                    ))
                })?;
            let text = std::fs::read_to_string(file).map_err(|e| {
                Error::InvalidArgument(format!("cannot read {}: {e}", file.display()))
            })?;
            let parsed = import::parse(&text, format, pool_id);
            if !parsed.errors.is_empty() && !skip_invalid {
                let more = parsed.errors.len() - 1;
                let tail = if more > 0 {
                    format!(" (and {more} more invalid records)")
                } else {
                    String::new()
                };
                return Err(Error::InvalidArgument(format!(
                    "{}: {}{tail}; nothing was imported (use --skip-invalid to import the valid records)",
                    file.display(),
                    parsed.errors[0]
                )));
            }
            let added = if parsed.proxies.is_empty() {
                Vec::new()
            } else {
                s.add_proxies(parsed.proxies).await?
            };
            #[derive(Serialize)]
            struct Imported<'a> {
                imported: usize,
                skipped: &'a [String],
            }
            p.print(
                &Imported {
                    imported: added.len(),
                    skipped: &parsed.errors,
                },
                |w| {
                    writeln!(w, "imported {} proxies into {pool}", added.len())?;
                    for e in &parsed.errors {
                        writeln!(w, "skipped {e}")?;
                    }
                    Ok(())
                },
            )
        }
        Command::Proxy(ProxyCommand::List { pool }) => {
            let proxies = s.list_proxies(&PoolName::new(pool)?).await?;
            p.print(&proxies, |w| {
                for proxy in &proxies {
                    writeln!(w, "{}", proxy_line(proxy))?;
                }
                Ok(())
            })
        }
        Command::Proxy(ProxyCommand::SetStatus { id, status }) => {
            let proxy = s.set_proxy_status(*id, *status).await?;
            p.print(&proxy, |w| writeln!(w, "{}", proxy_line(&proxy)))
        }
        Command::Proxy(ProxyCommand::Remove { id }) => {
            if !s.remove_proxy(*id).await? {
                return Err(Error::ProxyNotFound { id: *id });
            }
            p.print(&serde_json::json!({ "removed": id }), |w| {
                writeln!(w, "removed proxy {id}")
            })
        }
        Command::Consumer(ConsumerCommand::Add { name }) => {
            let c = s.ensure_consumer(&ConsumerName::new(name)?).await?;
            p.print(&c, |w| writeln!(w, "consumer {} ({})", c.name, c.id))
        }
        Command::Consumer(ConsumerCommand::List) => {
            let all = s.list_consumers().await?;
            p.print(&all, |w| {
                for c in &all {
                    writeln!(w, "{}  {}", c.name, c.id)?;
                }
                Ok(())
            })
        }
        Command::Acquire(a) => {
            let mut filters = ProxyFilters {
                country: a.attrs.country.clone(),
                source: a.attrs.source.clone(),
                city: a.attrs.city.clone(),
                isp: a.attrs.isp.clone(),
                asn: a.attrs.asn,
                latitude: a.latitude,
                longitude: a.longitude,
                radius_km: a.radius_km,
                ..ProxyFilters::default()
            };
            filters.validate()?;
            let mut options = AcquireOptions::new()
                .duration(Duration::from_secs(a.duration))
                .selector(a.selector)
                .filters(std::mem::take(&mut filters));
            if let Some(c) = &a.consumer {
                options = options.consumer(c.clone());
            }
            if let Some(site) = &a.site {
                options = options.site(site.clone());
            }
            if let Some(id) = &a.session {
                let mut session = crate::session::StickySession::new(id.clone());
                if let Some(secs) = a.session_ttl {
                    session = session.with_ttl(Duration::from_secs(secs));
                }
                options = options.session(session);
            }
            let got = match a.wait {
                Some(secs) => {
                    let wait =
                        crate::fair::WaitOptions::new(Duration::from_secs(secs)).fair(a.fair);
                    manager.acquire_proxy_wait(&a.pool, options, wait).await?
                }
                None => manager.acquire_proxy(&a.pool, options).await?,
            };
            match got {
                Some(lease) => {
                    #[derive(Serialize)]
                    struct Acquired<'a> {
                        #[serde(flatten)]
                        lease: &'a Lease,
                        proxy_url: String,
                    }
                    p.print(&Acquired { lease: &lease, proxy_url: lease.proxy_url() }, |w| {
                        writeln!(w, "lease {}", lease.id)?;
                        writeln!(w, "proxy {}", lease.proxy_url())?;
                        writeln!(w, "expires {}", lease.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                    })
                }
                None => Err(Error::InvalidArgument(format!(
                    "no proxy available in pool {:?}{} (every matching proxy is full, or none matches)",
                    a.pool,
                    a.wait.map(|secs| format!(" within {secs} s")).unwrap_or_default()
                ))),
            }
        }
        Command::Release { lease, pool } => {
            let pools = match pool {
                Some(p) => vec![PoolName::new(p)?],
                None => s.list_pools().await?.into_iter().map(|p| p.name).collect(),
            };
            let mut found = None;
            for name in &pools {
                if let Some(l) = s.get_lease(name, *lease).await? {
                    found = Some(l);
                    break;
                }
            }
            let Some(record) = found else {
                return Err(Error::InvalidArgument(format!(
                    "no lease {lease} in {}",
                    if pool.is_some() {
                        "that pool"
                    } else {
                        "any pool"
                    }
                )));
            };
            let outcome = manager.release_proxy(&record).await?;
            p.print(
                &serde_json::json!({ "lease": lease, "outcome": outcome }),
                |w| writeln!(w, "{lease}: {outcome}"),
            )
        }
        Command::Site(SiteCommand::Show { site, pool }) => {
            let site = crate::site::Site::new(site)?;
            let all = s.site_standings(&PoolName::new(pool)?, &site).await?;
            p.print(&all, |w| {
                if all.is_empty() {
                    return writeln!(w, "no proxy has a standing for {site}");
                }
                for st in &all {
                    let state = match (st.banned, st.cooldown_until) {
                        (true, _) => "banned".to_string(),
                        (false, Some(t)) => format!(
                            "resting until {}",
                            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                        ),
                        (false, None) => "usable".to_string(),
                    };
                    writeln!(
                        w,
                        "{} {state}, {} failures in a row, last: {}",
                        st.proxy_id,
                        st.consecutive_failures,
                        st.last_failure.as_deref().unwrap_or("")
                    )?;
                }
                Ok(())
            })
        }
        Command::Site(SiteCommand::Lift { site, proxy }) => {
            let st = manager.report_site_success(proxy, site).await?;
            p.print(&st, |w| writeln!(w, "{proxy}: lifted for {site}"))
        }
        Command::Session { name, pool } => {
            let binding = s.session(&PoolName::new(pool)?, name).await?;
            let proxy = match &binding {
                Some(b) => s.get_proxy(b.proxy_id).await?,
                None => None,
            };
            let until = binding
                .as_ref()
                .map(|b| b.until.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            let json = serde_json::json!({
                "session": name,
                "proxy_id": binding.as_ref().map(|b| b.proxy_id),
                "proxy": proxy.as_ref().map(|p| format!("{}:{}", p.host, p.port)),
                "until": until,
            });
            p.print(&json, |w| match (&binding, &until) {
                (Some(b), Some(until)) => {
                    let at = proxy
                        .as_ref()
                        .map(|p| format!(" ({}:{})", p.host, p.port))
                        .unwrap_or_default();
                    writeln!(w, "session {name}: proxy {}{at} until {until}", b.proxy_id)
                }
                _ => writeln!(w, "session {name}: keeps no proxy"),
            })
        }
        Command::Tickets { pool } => {
            let tickets = s.wait_tickets(&PoolName::new(pool)?).await?;
            p.print(&tickets, |w| {
                if tickets.is_empty() {
                    return writeln!(w, "no fair waiter in pool {pool}");
                }
                for (at, t) in tickets.iter().enumerate() {
                    writeln!(
                        w,
                        "{:>3}. ticket {}  honoured until {}",
                        at + 1,
                        t.number,
                        t.honoured_until
                            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                    )?;
                }
                Ok(())
            })
        }
        Command::Leases { pool } => {
            let leases = s.list_leases(&PoolName::new(pool)?).await?;
            p.print(&leases, |w| {
                for l in &leases {
                    writeln!(w, "{}", lease_line(l))?;
                }
                Ok(())
            })
        }
        Command::Stats { pool } => {
            let names = match pool {
                Some(p) => vec![PoolName::new(p)?],
                None => s.list_pools().await?.into_iter().map(|p| p.name).collect(),
            };
            let mut all = std::collections::BTreeMap::new();
            for name in names {
                let st = s.pool_stats(&name).await?;
                all.insert(name, st);
            }
            p.print(&all, |w| {
                for (name, st) in &all {
                    writeln!(w, "{}", stats_line(name, st))?;
                }
                Ok(())
            })
        }
        Command::Sweep => {
            let n = manager.cleanup_expired_leases().await?;
            p.print(&serde_json::json!({ "reclaimed": n }), |w| {
                writeln!(w, "reclaimed {n} expired leases")
            })
        }
        Command::Bench(args) => {
            let report = bench::run(manager, args, !cli.json).await?;
            p.print(&report, |w| report.write_human(w))
        }
    }
}
