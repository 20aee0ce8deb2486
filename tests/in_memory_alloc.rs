//! The in-memory acquire→release cycle allocates nothing per call: what it
//! keeps (lease records, expiry entries) goes into storage that grows by
//! doubling, so 20,000 cycles allocate a handful of times, not 20,000.
//!
//! A global allocator counts the allocations of the thread that asks it to.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::FutureExt;
use lighthouse_lease::{
    AcquireOptions, AdminStorage, ConsumerName, InMemoryStorage, Proxy, ProxyFilters, ProxyManager,
    ProxyPool,
};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call goes to the system allocator unchanged; the counting
// touches only a const thread-local `Cell` and an atomic, which allocate nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by this thread while `f` runs.
fn allocations_in(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

fn now<T>(f: impl std::future::Future<Output = T>) -> T {
    f.now_or_never()
        .expect("in-memory futures complete at once")
}

#[test]
fn an_acquire_release_cycle_allocates_nothing() {
    let m = ProxyManager::new(InMemoryStorage::new());
    let pool = now(m.storage().create_pool(ProxyPool::new("p").unwrap())).unwrap();
    let proxies: Vec<Proxy> = (0..32)
        .map(|i| {
            Proxy::builder(pool.id, format!("10.0.0.{i}"), 8080)
                .max_concurrency(2)
                .country(if i % 2 == 0 { "AR" } else { "CL" })
                .build()
                .unwrap()
        })
        .collect();
    now(m.storage().add_proxies(proxies)).unwrap();
    now(m
        .storage()
        .ensure_consumer(&ConsumerName::new("worker-1").unwrap()))
    .unwrap();
    for filters in [ProxyFilters::new(), ProxyFilters::new().country("CL")] {
        let options = AcquireOptions::new().consumer("worker-1").filters(filters);
        let cycle = || {
            let lease = now(m.acquire_proxy("p", options.clone()))
                .unwrap()
                .expect("a free proxy");
            now(m.release_proxy(&lease)).unwrap();
        };
        // Warm: the consumer, the filters' plan, the metric handles.
        for _ in 0..1_000 {
            cycle();
        }
        let n = allocations_in(|| {
            for _ in 0..20_000 {
                cycle();
            }
        });
        // The record ring and the expiry heap double now and then.
        assert!(n <= 10, "{n} allocations in 20,000 cycles");
    }
}
