//! Model-based property test: random sequences of acquire, release, expiry, cleanup
//! and status changes on InMemoryStorage, checked step by step against a plain
//! reference model. It proves the invariants (never over `max_concurrency`, each
//! slot given back exactly once, non-active proxies never leased) and the exact
//! choices of `first_available` and `least_used`.

use std::time::Duration;

use futures_util::FutureExt;
use lighthouse_lease::clock::ManualClock;
use lighthouse_lease::{
    AcquireRequest, AdminStorage, InMemoryStorage, Lease, LeaseStorage, Proxy, ProxyFilters,
    ProxyPool, ProxyStatus, ReleaseOutcome, SelectorStrategy,
};
use proptest::prelude::*;

fn now<T>(f: impl std::future::Future<Output = T>) -> T {
    f.now_or_never()
        .expect("in-memory futures are ready at once")
}

#[derive(Debug, Clone)]
enum Op {
    Acquire {
        country: Option<bool>,
        selector: usize,
        ms: u64,
    },
    Release {
        pick: usize,
    },
    Advance {
        ms: u64,
    },
    Cleanup,
    SetStatus {
        proxy: usize,
        active: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (proptest::option::of(any::<bool>()), 0..4usize, 1..3000u64)
            .prop_map(|(country, selector, ms)| Op::Acquire { country, selector, ms }),
        3 => (0..64usize).prop_map(|pick| Op::Release { pick }),
        1 => (1..2000u64).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Cleanup),
        1 => (0..8usize, any::<bool>()).prop_map(|(proxy, active)| Op::SetStatus { proxy, active }),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum St {
    Live,
    Released,
    Expired,
}

struct ModelLease {
    lease: Lease,
    proxy: usize,
    expires: u64,
    st: St,
}

struct ModelProxy {
    proxy: Proxy,
    max: Option<u32>,
    ar: bool,
    active: bool,
}

struct Model {
    t: u64,
    proxies: Vec<ModelProxy>,
    leases: Vec<ModelLease>,
}

impl Model {
    fn counted(&self, p: usize) -> u32 {
        self.leases
            .iter()
            .filter(|l| l.proxy == p && l.st == St::Live)
            .count() as u32
    }
    fn reclaim(&mut self) -> u64 {
        let mut n = 0;
        for l in &mut self.leases {
            if l.st == St::Live && l.expires <= self.t {
                l.st = St::Expired;
                n += 1;
            }
        }
        n
    }
    fn eligible(&self, p: usize, country: Option<bool>) -> bool {
        let mp = &self.proxies[p];
        mp.active
            && country.is_none_or(|ar| ar == mp.ar)
            && mp.max.is_none_or(|m| self.counted(p) < m)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn in_memory_storage_follows_the_model(
        limits in proptest::collection::vec((proptest::option::of(1..4u32), any::<bool>()), 1..8),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let clock = ManualClock::new();
        let s = InMemoryStorage::with_clock(clock.clone()).with_record_grace(Duration::from_secs(1_000_000));
        let pool = now(s.create_pool(ProxyPool::new("p").unwrap())).unwrap();
        now(s.ensure_consumer(&cn("w"))).unwrap();
        let mut model = Model { t: 0, proxies: vec![], leases: vec![] };
        for (i, (max, ar)) in limits.iter().enumerate() {
            let mut b = Proxy::builder(pool.id, format!("10.0.0.{}", i + 1), 80)
                .country(if *ar { "AR" } else { "BR" });
            if let Some(m) = max { b = b.max_concurrency(*m); }
            let proxy = now(s.add_proxy(b.build().unwrap())).unwrap();
            model.proxies.push(ModelProxy { proxy, max: *max, ar: *ar, active: true });
        }
        for op in ops {
            match op {
                Op::Acquire { country, selector, ms } => {
                    let selector = SelectorStrategy::ALL[selector];
                    let filters = match country {
                        None => ProxyFilters::new(),
                        Some(true) => ProxyFilters::new().country("AR"),
                        Some(false) => ProxyFilters::new().country("BR"),
                    };
                    let req = AcquireRequest::new("p", "w", Duration::from_millis(ms)).unwrap()
                        .with_filters(filters)
                        .with_selector(selector);
                    let got = now(s.acquire(&req)).unwrap();
                    model.reclaim();
                    let eligible: Vec<usize> = (0..model.proxies.len()).filter(|&p| model.eligible(p, country)).collect();
                    match got {
                        None => prop_assert!(eligible.is_empty(), "None although {eligible:?} were free"),
                        Some(lease) => {
                            let p = model.proxies.iter().position(|mp| mp.proxy.id == lease.proxy_id).unwrap();
                            prop_assert!(eligible.contains(&p), "picked proxy {p}, not eligible: {eligible:?}");
                            match selector {
                                SelectorStrategy::FirstAvailable => prop_assert_eq!(p, eligible[0]),
                                SelectorStrategy::LeastUsed => {
                                    let best = *eligible.iter().min_by_key(|&&q| (model.counted(q), q)).unwrap();
                                    prop_assert_eq!(p, best);
                                }
                                _ => {}
                            }
                            model.leases.push(ModelLease { lease, proxy: p, expires: model.t + ms, st: St::Live });
                        }
                    }
                }
                Op::Release { pick } => {
                    if model.leases.is_empty() { continue; }
                    let i = pick % model.leases.len();
                    let expected = match model.leases[i].st {
                        St::Released => ReleaseOutcome::AlreadyReleased,
                        St::Expired => ReleaseOutcome::Expired,
                        St::Live if model.leases[i].expires <= model.t => { model.leases[i].st = St::Expired; ReleaseOutcome::Expired }
                        St::Live => { model.leases[i].st = St::Released; ReleaseOutcome::Released }
                    };
                    prop_assert_eq!(now(s.release(&model.leases[i].lease)).unwrap(), expected);
                }
                Op::Advance { ms } => {
                    model.t += ms;
                    clock.advance(Duration::from_millis(ms));
                }
                Op::Cleanup => {
                    let n = now(s.cleanup_expired_leases()).unwrap();
                    prop_assert_eq!(n, model.reclaim());
                }
                Op::SetStatus { proxy, active } => {
                    let p = proxy % model.proxies.len();
                    let status = if active { ProxyStatus::Active } else { ProxyStatus::Banned };
                    now(s.set_proxy_status(model.proxies[p].proxy.id, status)).unwrap();
                    model.proxies[p].active = active;
                }
            }
            // Invariants after every step (stats reclaim first, like the model).
            let stats = now(s.pool_stats(&pn("p"))).unwrap();
            model.reclaim();
            let mut total = 0;
            let mut available = 0;
            let mut leased = 0;
            for (p, mp) in model.proxies.iter().enumerate() {
                let stored = now(s.get_proxy(mp.proxy.id)).unwrap().unwrap();
                let want = model.counted(p);
                prop_assert_eq!(stored.current_leases, want, "proxy {}", p);
                if let Some(m) = mp.max { prop_assert!(want <= m, "proxy {p} over its max"); }
                total += u64::from(want);
                available += u64::from(model.eligible(p, None));
                leased += u64::from(want > 0);
            }
            prop_assert_eq!(stats.total_leases, total);
            prop_assert_eq!(stats.available_proxies, available);
            prop_assert_eq!(stats.leased_proxies, leased);
            prop_assert_eq!(stats.active_proxies, model.proxies.iter().filter(|p| p.active).count() as u64);
            prop_assert_eq!(stats.banned_proxies, model.proxies.iter().filter(|p| !p.active).count() as u64);
            prop_assert_eq!(now(s.list_leases(&pn("p"))).unwrap().len() as u64, total);
        }
    }
}

/// A pool name the test knows to be valid.
fn pn(name: &str) -> lighthouse_lease::PoolName {
    lighthouse_lease::PoolName::new(name).expect("a valid pool name")
}

/// A consumer name the test knows to be valid.
fn cn(name: &str) -> lighthouse_lease::ConsumerName {
    lighthouse_lease::ConsumerName::new(name).expect("a valid consumer name")
}
