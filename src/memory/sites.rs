//! The site-scoped cooldowns and bans of one in-memory pool (see
//! [`crate::site`]): per site, per proxy, failures in a row and a rest or ban.

use std::collections::HashMap;

use uuid::Uuid;

use super::records::Nanos;
use super::to_time;
use crate::cooldown::CooldownPolicy;
use crate::site::{SiteStanding, SITE_MEMORY};

#[derive(Debug)]
struct Entry {
    fails: u32,
    /// Resting until then (0: not resting).
    until: Nanos,
    banned: bool,
    reason: Box<str>,
}

#[derive(Debug, Default)]
struct SiteState {
    /// The last report about the site.
    last: Nanos,
    proxies: HashMap<Uuid, Entry>,
}

/// Every site's state in one pool.
#[derive(Debug, Default)]
pub(super) struct Sites {
    by_site: HashMap<Box<str>, SiteState>,
}

fn memory_ns() -> Nanos {
    Nanos::try_from(SITE_MEMORY.as_nanos()).unwrap_or(Nanos::MAX)
}

fn standing(proxy: Uuid, e: &Entry, now: Nanos) -> SiteStanding {
    SiteStanding::new(
        proxy,
        e.fails,
        (e.until > now && !e.banned).then(|| to_time(e.until)),
        e.banned,
        Some(e.reason.to_string()),
    )
}

impl Sites {
    /// The state of `site` while remembered at `now` (forgotten after
    /// [`SITE_MEMORY`] without a report).
    fn state(&self, site: &str, now: Nanos) -> Option<&SiteState> {
        self.by_site
            .get(site)
            .filter(|s| now < s.last.saturating_add(memory_ns()))
    }

    /// The state of `site` to report into, fresh when forgotten.
    fn state_mut(&mut self, site: &str, now: Nanos) -> &mut SiteState {
        let s = self.by_site.entry(Box::from(site)).or_default();
        if now >= s.last.saturating_add(memory_ns()) {
            s.proxies.clear();
        }
        s.last = now;
        s
    }

    /// Whether an acquire for `site` skips `proxy` at `now`.
    pub(super) fn blocks(&self, site: &str, proxy: Uuid, now: Nanos) -> bool {
        self.state(site, now)
            .and_then(|s| s.proxies.get(&proxy))
            .is_some_and(|e| e.banned || e.until > now)
    }

    /// Whether any site state is kept (a pool that never saw a report pays
    /// nothing for sites).
    pub(super) fn is_empty(&self) -> bool {
        self.by_site.is_empty()
    }

    /// One more failure of `proxy` with `site`.
    pub(super) fn fail(
        &mut self,
        site: &str,
        proxy: Uuid,
        reason: &str,
        now: Nanos,
        policy: &CooldownPolicy,
    ) -> SiteStanding {
        let s = self.state_mut(site, now);
        let e = s.proxies.entry(proxy).or_insert(Entry {
            fails: 0,
            until: 0,
            banned: false,
            reason: Box::from(""),
        });
        e.fails = e.fails.saturating_add(1);
        e.reason = Box::from(reason);
        if policy.ban_after.is_some_and(|b| e.fails >= b) {
            e.banned = true;
            e.until = 0;
        } else {
            let ms = policy.delay_ms(e.fails, policy.draw_keep(proxy));
            let ns = Nanos::try_from(ms)
                .unwrap_or(Nanos::MAX)
                .saturating_mul(1_000_000);
            e.until = now.saturating_add(ns);
        }
        standing(proxy, e, now)
    }

    /// A success of `proxy` with `site`: nothing counted against it any more.
    pub(super) fn succeed(&mut self, site: &str, proxy: Uuid, now: Nanos) -> SiteStanding {
        let s = self.state_mut(site, now);
        s.proxies.remove(&proxy);
        SiteStanding::clear(proxy)
    }

    /// The standings of the proxies with something counted for `site`.
    pub(super) fn standings(&self, site: &str, now: Nanos) -> Vec<SiteStanding> {
        let mut out: Vec<SiteStanding> = self
            .state(site, now)
            .map(|s| {
                s.proxies
                    .iter()
                    .map(|(id, e)| standing(*id, e, now))
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by_key(|s| s.proxy_id);
        out
    }

    /// Forgets `proxy` (removed from the pool).
    pub(super) fn forget(&mut self, proxy: Uuid) {
        for s in self.by_site.values_mut() {
            s.proxies.remove(&proxy);
        }
    }
}
