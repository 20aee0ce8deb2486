//! The sweeper's read-only status page (`GET /`, with `--status-page`): one
//! server-rendered HTML page, no script, no external asset, no form, no link
//! that does anything.
//!
//! It shows the pools with occupancy bars (live leases over the slots of their
//! active proxies), the proxies cooling down or out of service (banned,
//! inactive, slow) and until when, the oldest live leases and their consumers,
//! and the sweeper's last sweep, audit and health-check pass.
//!
//! Each view reads every pool's proxies and live leases from Redis (the
//! storage's listing calls, which, like a sweep, first give back the slots of
//! leases already expired; nothing else is written): it is a page for an
//! operator to open, not one to poll. It shows hosts, ports, consumer names and
//! failure messages, never credentials; still, serve it only inside the
//! cluster, behind its network policy (the whole port is unauthenticated).

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::metrics::SweeperStatus;
use super::Sweeper;
use crate::lease::Lease;
use crate::proxy::{Proxy, ProxyStatus};
use crate::storage::{AdminStorage, LeaseStorage};

/// Rows shown in each list (the page says how many more there are).
pub const MAX_ROWS: usize = 50;

/// One pool as the page shows it.
#[derive(Debug, Clone, Default)]
struct PoolView {
    name: String,
    proxies: usize,
    active: usize,
    /// Slots of active proxies; `None` when one of them is unlimited.
    slots: Option<u64>,
    leases: u64,
    leased_proxies: usize,
}

/// What the page is made of, read from the sweeper and the storage.
#[derive(Debug, Default)]
struct View {
    now: DateTime<Utc>,
    namespace: String,
    sweeper: SweeperStatus,
    audit_every: Option<std::time::Duration>,
    pools: Vec<PoolView>,
    /// (pool, proxy)
    resting: Vec<(String, Proxy)>,
    leases: Vec<Lease>,
    read_error: Option<String>,
}

/// The page, as HTML. A Redis failure while reading shows on the page (with
/// what could be read) rather than failing the request.
pub async fn render(sweeper: &Sweeper) -> String {
    let mut view = View {
        now: Utc::now(),
        namespace: sweeper.storage().config().namespace.clone(),
        sweeper: sweeper.metrics().status(),
        audit_every: sweeper.config().audit_interval,
        ..View::default()
    };
    if let Err(e) = read(sweeper, &mut view).await {
        view.read_error = Some(e.to_string());
    }
    page(&view)
}

async fn read(sweeper: &Sweeper, view: &mut View) -> crate::Result<()> {
    let storage = sweeper.storage();
    let now = view.now;
    for name in storage.pool_names().await? {
        let proxies = match storage.list_proxies(&name).await {
            Ok(p) => p,
            Err(crate::Error::PoolNotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        let leases = match storage.list_leases(&name).await {
            Ok(l) => l,
            Err(crate::Error::PoolNotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        let active: Vec<&Proxy> = proxies
            .iter()
            .filter(|p| p.status == ProxyStatus::Active)
            .collect();
        let slots = active
            .iter()
            .map(|p| p.max_concurrency.map(u64::from))
            .sum::<Option<u64>>();
        view.pools.push(PoolView {
            name: name.to_string(),
            proxies: proxies.len(),
            active: active.len(),
            slots,
            leases: proxies.iter().map(|p| u64::from(p.current_leases)).sum(),
            leased_proxies: proxies.iter().filter(|p| p.current_leases > 0).count(),
        });
        view.resting.extend(
            proxies
                .into_iter()
                .filter(|p| {
                    p.status != ProxyStatus::Active || p.cooldown_until.is_some_and(|t| t > now)
                })
                .map(|p| (name.to_string(), p)),
        );
        view.leases.extend(leases);
    }
    view.leases.sort_by_key(|l| l.acquired_at);
    // Banned first, then inactive and slow, then cooling (soonest back first).
    view.resting.sort_by_key(|(pool, p)| {
        (
            p.status == ProxyStatus::Active,
            p.status.as_str(),
            p.cooldown_until,
            pool.clone(),
        )
    });
    Ok(())
}

/// Escapes text for HTML (element content and quoted attributes).
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// `3m 20s`, `2h 5m`, `12s`.
fn span(d: chrono::TimeDelta) -> String {
    let s = d.num_seconds().unsigned_abs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn when(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let at = t.format("%Y-%m-%d %H:%M:%S UTC");
    if t > now {
        format!("{at} (in {})", span(t - now))
    } else {
        format!("{at} ({} ago)", span(now - t))
    }
}

const STYLE: &str = "\
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2733;background:#f6f7f9}\
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}\
.sub{color:#5b6775;margin-bottom:16px}\
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px #0002;min-width:640px}\
th,td{padding:6px 10px;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:middle}\
th{background:#eef1f4;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.bar{width:180px;height:12px;background:#e3e6ea;border-radius:6px;overflow:hidden;display:inline-block;vertical-align:middle}\
.fill{height:100%;background:#2f7dd1}.fill.hot{background:#d9822b}.fill.full{background:#c23030}\
.ok{color:#1c7c3c;font-weight:600}.bad{color:#c23030;font-weight:600}\
.tag{padding:1px 6px;border-radius:4px;font-size:12px;background:#e3e6ea}\
.tag.banned{background:#c23030;color:#fff}.tag.cooling{background:#d9822b;color:#fff}\
.tag.inactive,.tag.slow{background:#5b6775;color:#fff}\
.muted{color:#5b6775}dl{display:grid;grid-template-columns:max-content auto;gap:4px 16px;margin:0}\
dt{color:#5b6775}dd{margin:0}";

fn page(v: &View) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>lighthouse-sweeper: {ns}</title><style>{STYLE}</style></head><body>\
         <h1>lighthouse-sweeper</h1><div class=\"sub\">namespace <b id=\"namespace\">{ns}</b> \
         · read-only view at {now}</div>",
        ns = escape(&v.namespace),
        now = v.now.format("%Y-%m-%d %H:%M:%S UTC"),
    );
    sweeper_section(&mut o, v);
    pools_section(&mut o, v);
    resting_section(&mut o, v);
    leases_section(&mut o, v);
    o.push_str("</body></html>\n");
    o
}

fn sweeper_section(o: &mut String, v: &View) {
    let s = &v.sweeper;
    o.push_str("<h2>Sweeper</h2><dl id=\"sweeper\">");
    let redis = if s.redis_up {
        "<span class=\"ok\">up</span>".to_string()
    } else {
        format!(
            "<span class=\"bad\">down</span> {}",
            escape(
                s.last_error
                    .as_deref()
                    .unwrap_or("no sweep has completed yet")
            )
        )
    };
    let _ = write!(o, "<dt>Redis</dt><dd id=\"redis\">{redis}</dd>");
    let last_sweep = match s.last_sweep {
        Some((at, took, reclaimed)) => format!(
            "{} · took {:.1} ms · reclaimed {reclaimed}",
            when(at, v.now),
            took.as_secs_f64() * 1e3
        ),
        None => "none yet".into(),
    };
    let _ = write!(
        o,
        "<dt>Last sweep</dt><dd id=\"last-sweep\">{last_sweep}</dd>\
         <dt>Sweeps</dt><dd>{} completed · {} failed</dd>",
        s.sweeps, s.errors
    );
    let audit = match (s.last_audit, v.audit_every) {
        (_, None) => "off".to_string(),
        (Some((at, repaired)), Some(_)) => {
            format!("{} · repaired {repaired}", when(at, v.now))
        }
        (None, Some(_)) => "none yet".into(),
    };
    let _ = write!(o, "<dt>Last audit</dt><dd id=\"last-audit\">{audit}</dd>");
    if let Some((at, checked)) = s.last_health_check {
        let _ = write!(
            o,
            "<dt>Last health check</dt><dd>{} · {checked} proxies</dd>",
            when(at, v.now)
        );
    }
    o.push_str("</dl>");
    if let Some(e) = &v.read_error {
        let _ = write!(
            o,
            "<p class=\"bad\" id=\"read-error\">Reading Redis failed: {}</p>",
            escape(e)
        );
    }
}

fn pools_section(o: &mut String, v: &View) {
    o.push_str(
        "<h2>Pools</h2><table id=\"pools\"><thead><tr><th>Pool</th><th>Occupancy</th>\
         <th>Live leases</th><th>Slots</th><th>Proxies</th><th>Active</th><th>Leased</th>\
         </tr></thead><tbody>",
    );
    if v.pools.is_empty() {
        o.push_str("<tr><td colspan=\"7\" class=\"muted\">no pools</td></tr>");
    }
    for p in &v.pools {
        let (bar, slots) = match p.slots {
            Some(slots) => {
                let pct = if slots == 0 {
                    0.0
                } else {
                    (p.leases as f64 * 100.0 / slots as f64).min(100.0)
                };
                let class = if pct >= 100.0 {
                    "fill full"
                } else if pct >= 80.0 {
                    "fill hot"
                } else {
                    "fill"
                };
                (
                    format!(
                        "<span class=\"bar\" title=\"{pct:.0}%\"><span class=\"{class}\" \
                         style=\"width:{pct:.1}%;display:block\"></span></span> \
                         <span class=\"pct\">{pct:.0}%</span>"
                    ),
                    slots.to_string(),
                )
            }
            None => (
                "<span class=\"muted\">unlimited proxies</span>".to_string(),
                "∞".to_string(),
            ),
        };
        let _ = write!(
            o,
            "<tr data-pool=\"{name}\"><td>{name}</td><td>{bar}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{slots}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td></tr>",
            p.leases,
            p.proxies,
            p.active,
            p.leased_proxies,
            name = escape(&p.name),
        );
    }
    o.push_str("</tbody></table>");
}

fn resting_section(o: &mut String, v: &View) {
    let _ = write!(
        o,
        "<h2>Proxies cooling down or out of service ({})</h2><table id=\"resting\"><thead><tr>\
         <th>Pool</th><th>Proxy</th><th>State</th><th>Until</th><th>Failures in a row</th><th>Last failure</th>\
         </tr></thead><tbody>",
        v.resting.len()
    );
    if v.resting.is_empty() {
        o.push_str(
            "<tr><td colspan=\"6\" class=\"muted\">none: every proxy is in service</td></tr>",
        );
    }
    for (pool, p) in v.resting.iter().take(MAX_ROWS) {
        let cooling = p.cooldown_until.filter(|t| *t > v.now);
        let state = match (p.status, cooling) {
            (ProxyStatus::Active, Some(_)) => "cooling",
            (s, _) => s.as_str(),
        };
        let until = match (p.status, cooling) {
            (ProxyStatus::Active, Some(t)) => when(t, v.now),
            (ProxyStatus::Banned, _) => "until an operator or a health check lifts it".into(),
            _ => "until a health check finds it working".into(),
        };
        let _ = write!(
            o,
            "<tr data-proxy=\"{id}\"><td>{pool}</td><td>{proto}://{host}:{port}</td>\
             <td><span class=\"tag {state}\">{state}</span></td><td>{until}</td>\
             <td class=\"n\">{fails}</td><td>{last}</td></tr>",
            id = p.id,
            pool = escape(pool),
            proto = p.protocol.as_str(),
            host = escape(&p.host),
            port = p.port,
            fails = p.consecutive_failures,
            last = escape(p.last_failure.as_deref().unwrap_or("")),
        );
    }
    more(o, v.resting.len(), 6);
    o.push_str("</tbody></table>");
}

fn leases_section(o: &mut String, v: &View) {
    let _ = write!(
        o,
        "<h2>Oldest live leases ({} live)</h2><table id=\"leases\"><thead><tr><th>Pool</th>\
         <th>Consumer</th><th>Proxy</th><th>Held for</th><th>Expires</th></tr></thead><tbody>",
        v.leases.len()
    );
    if v.leases.is_empty() {
        o.push_str("<tr><td colspan=\"5\" class=\"muted\">no live lease</td></tr>");
    }
    for l in v.leases.iter().take(MAX_ROWS) {
        let _ = write!(
            o,
            "<tr data-lease=\"{id}\"><td>{pool}</td><td class=\"consumer\">{consumer}</td>\
             <td>{host}:{port}</td><td>{held}</td><td>{expires}</td></tr>",
            id = l.id,
            pool = escape(&l.pool_name),
            consumer = escape(&l.consumer_name),
            host = escape(&l.proxy.host),
            port = l.proxy.port,
            held = span(v.now - l.acquired_at),
            expires = when(l.expires_at, v.now),
        );
    }
    more(o, v.leases.len(), 5);
    o.push_str("</tbody></table>");
}

fn more(o: &mut String, n: usize, columns: usize) {
    if n > MAX_ROWS {
        let _ = write!(
            o,
            "<tr><td colspan=\"{columns}\" class=\"muted\">and {} more</td></tr>",
            n - MAX_ROWS
        );
    }
}
