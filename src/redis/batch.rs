//! Natural batching: concurrent calls on one pool share script calls.
//!
//! Each lane (per pool: one for its acquires and releases together, one for
//! its rotates) runs at most `in_flight` script calls
//! at once, more on a slow link (below). A call that finds a free slot and
//! nobody queued runs at once, by itself, so a lone caller never waits. Calls that arrive while every slot is
//! busy queue up; a slot that finishes takes the next batch (up to `max` calls,
//! in arrival order) and runs it as one script call. Under load each script call
//! then serves many callers, so Redis pays its fixed cost per call (the script's
//! prelude, the clock, the pool's metadata, the reclaim check, the round trip)
//! once for all of them; and since several batches may be in flight, a slow link
//! does not cap throughput at one batch per round trip.
//!
//! **Fitted to the link.** A caller that queues waits, on average, for half the
//! time a call takes; on a link with a long round trip that wait is what
//! throughput loses (measured through a forwarder adding 2 ms: 0.45–0.49 of
//! redis-semaphore, which pipelines every call). So the batcher keeps the
//! latency of its last [`LINK_SAMPLES`] calls, and each lane may have one call
//! in flight per [`SLOT_PER`] of the fastest of them (the link's round trip with
//! little queueing in it), at least the configured `in_flight`, at most
//! [`LINK_CAP`] (or `in_flight`, if higher). On a fast link that is the
//! configured number, so batches stay large where Redis's time is what counts.
//!
//! Queued calls are run by spawned tasks, so a caller that gives up (a timeout,
//! a cancelled task) never strands the others: a queued call that is cancelled
//! before its batch leaves is dropped from it and writes nothing, and a batch that
//! has left completes and answers everyone still listening. A failed batch gives
//! each of its callers the same error, kind included.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// What runs one batch: the lane's key and the items, in order; the replies in
/// the same order (exactly one per item).
pub(crate) type Exec<T, R> = Arc<
    dyn Fn(String, Vec<T>) -> Pin<Box<dyn Future<Output = Result<Vec<R>>> + Send>> + Send + Sync,
>;

struct Waiting<T, R> {
    item: T,
    reply: oneshot::Sender<Result<R>>,
}

struct Lane<T, R> {
    /// Script calls of this lane in flight (inline or by runner tasks).
    in_flight: usize,
    queue: Vec<Waiting<T, R>>,
}

/// Calls whose latency sizes the lanes (the fastest of them counts).
pub(crate) const LINK_SAMPLES: usize = 32;
/// One more call in flight per lane for each this much of the link's round trip
/// (bench, c=64 through a forwarder adding 2 ms: 0.68 of redis-semaphore with
/// one per 500 µs, 0.81 with one per 200 µs; a local link's calls, well under
/// 400 µs, keep the configured number).
pub(crate) const SLOT_PER: Duration = Duration::from_micros(200);
/// Most calls in flight per lane that the link alone can earn.
pub(crate) const LINK_CAP: usize = 16;

/// The latency of recent calls, µs, in a ring.
struct Link {
    samples: [u64; LINK_SAMPLES],
    len: usize,
    next: usize,
}

/// The lanes of one operation.
pub(crate) struct Batcher<T, R> {
    lanes: Mutex<HashMap<String, Lane<T, R>>>,
    max: usize,
    /// The configured calls in flight per lane (the least a lane gets).
    in_flight: usize,
    /// Calls in flight per lane now: `in_flight`, or more on a slow link.
    limit: AtomicUsize,
    /// Whether the link's latency may raise `limit`.
    fit_link: bool,
    link: Mutex<Link>,
    exec: Exec<T, R>,
    /// `lighthouse_redis_batch_size{op}`: requests per script call.
    batch_size: metrics::Histogram,
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Batches of at most `max` items (at least 1), at most `in_flight` (at
    /// least one) at once per lane, each run by `exec`; with `fit_link`, more
    /// in flight when calls take long (see the module's doc). It records no
    /// batch sizes: `exec` may, by the script each call runs (a lane that
    /// carries several operations, the acquires and releases of a pool).
    pub(crate) fn new(max: usize, in_flight: usize, fit_link: bool, exec: Exec<T, R>) -> Arc<Self> {
        Arc::new(Self::build(
            max,
            in_flight,
            fit_link,
            exec,
            metrics::Histogram::noop(),
        ))
    }

    /// [`Self::new`] for operation `op`, recording its batch sizes in the
    /// histogram `lighthouse_redis_batch_size{op}` (of the recorder installed
    /// when the storage is made).
    pub(crate) fn named(
        op: &'static str,
        max: usize,
        in_flight: usize,
        fit_link: bool,
        exec: Exec<T, R>,
    ) -> Arc<Self> {
        let sizes = metrics::histogram!("lighthouse_redis_batch_size", "op" => op);
        Arc::new(Self::build(max, in_flight, fit_link, exec, sizes))
    }

    fn build(
        max: usize,
        in_flight: usize,
        fit_link: bool,
        exec: Exec<T, R>,
        batch_size: metrics::Histogram,
    ) -> Self {
        let in_flight = in_flight.max(1);
        Batcher {
            lanes: Mutex::new(HashMap::new()),
            max: max.max(1),
            in_flight,
            limit: AtomicUsize::new(in_flight),
            fit_link,
            link: Mutex::new(Link {
                samples: [0; LINK_SAMPLES],
                len: 0,
                next: 0,
            }),
            exec,
            batch_size,
        }
    }

    /// Calls a lane may have in flight now.
    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Notes how long a call took, and fits the lanes' limit to the fastest of
    /// the last [`LINK_SAMPLES`] calls.
    pub(crate) fn record(&self, took: Duration) {
        if !self.fit_link {
            return;
        }
        let mut link = self.link.lock().unwrap_or_else(PoisonError::into_inner);
        let i = link.next;
        link.samples[i] = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        link.next = (i + 1) % LINK_SAMPLES;
        link.len = (link.len + 1).min(LINK_SAMPLES);
        let fastest = link.samples[..link.len].iter().copied().min().unwrap_or(0);
        let per = u64::try_from(SLOT_PER.as_micros()).unwrap_or(1).max(1);
        let earned = usize::try_from(fastest.div_ceil(per)).unwrap_or(LINK_CAP);
        let limit = earned.clamp(self.in_flight, LINK_CAP.max(self.in_flight));
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Runs one batch through `exec`, noting how long it took.
    async fn exec_timed(&self, key: String, items: Vec<T>) -> Result<Vec<R>> {
        self.batch_size.record(items.len() as f64);
        let started = Instant::now();
        let out = (self.exec)(key, items).await;
        if out.is_ok() {
            self.record(started.elapsed());
        }
        out
    }

    /// Runs `item` in lane `key`: at once when a slot is free and nobody waits,
    /// else with a later batch.
    pub(crate) async fn submit(self: &Arc<Self>, key: &str, item: T) -> Result<R> {
        if self.max == 1 {
            // No batching: every call goes by itself, concurrently.
            return self.run_alone(key, item).await;
        }
        let waiting = {
            let mut lanes = self.lock_lanes();
            let lane = lanes.entry(key.to_string()).or_insert_with(|| Lane {
                in_flight: 0,
                queue: Vec::new(),
            });
            let limit = self.limit();
            if lane.in_flight < limit && lane.queue.is_empty() {
                lane.in_flight += 1;
                Ok(item)
            } else {
                let (tx, rx) = oneshot::channel();
                lane.queue.push(Waiting { item, reply: tx });
                let spawn = lane.in_flight < limit;
                if spawn {
                    lane.in_flight += 1;
                }
                Err((rx, spawn))
            }
        };
        match waiting {
            Ok(item) => {
                // Hands the slot on when this call ends, even if it is cancelled.
                let _slot = HandOn {
                    batcher: Arc::clone(self),
                    key: key.to_string(),
                };
                self.run_alone(key, item).await
            }
            Err((rx, spawn)) => {
                if spawn {
                    self.spawn_runner(key);
                }
                rx.await.unwrap_or_else(|_| {
                    Err(Error::backend(
                        "batched call dropped before it ran (the runtime is shutting down)",
                        None,
                    ))
                })
            }
        }
    }

    /// Runs one item by itself.
    async fn run_alone(&self, key: &str, item: T) -> Result<R> {
        let mut replies = one_each(self.exec_timed(key.to_string(), vec![item]).await, 1)?;
        replies
            .pop()
            .ok_or_else(|| Error::backend("batched call: no reply", None))
    }

    fn lock_lanes(&self) -> MutexGuard<'_, HashMap<String, Lane<T, R>>> {
        self.lanes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A runner keeps the slot its caller took and runs batches until nobody
    /// waits; without a runtime, every queued call is answered with an error.
    fn spawn_runner(self: &Arc<Self>, key: &str) {
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(Arc::clone(self).run_queue(key.to_string()));
            }
            Err(_) => {
                let mut lanes = self.lock_lanes();
                for w in lanes.remove(key).into_iter().flat_map(|l| l.queue) {
                    let _ = w.reply.send(Err(Error::backend(
                        "batched call dropped: no tokio runtime to run it on",
                        None,
                    )));
                }
            }
        }
    }

    /// Takes the next batch of `key`'s lane, or gives up the caller's slot (and
    /// forgets an idle lane) when nobody waits.
    fn next_batch(&self, key: &str) -> Option<Vec<Waiting<T, R>>> {
        let mut lanes = self.lock_lanes();
        let lane = lanes.get_mut(key)?;
        lane.queue.retain(|w| !w.reply.is_closed());
        if lane.queue.is_empty() {
            release_slot(&mut lanes, key);
            return None;
        }
        let n = lane.queue.len().min(self.max);
        Some(lane.queue.drain(..n).collect())
    }

    /// Runs the lane's queued calls, batch after batch, until none is left.
    async fn run_queue(self: Arc<Self>, key: String) {
        while let Some(batch) = self.next_batch(&key) {
            let (items, replies): (Vec<T>, Vec<_>) =
                batch.into_iter().map(|w| (w.item, w.reply)).unzip();
            let n = items.len();
            match one_each(self.exec_timed(key.clone(), items).await, n) {
                Ok(results) => {
                    for (tx, r) in replies.into_iter().zip(results) {
                        // A caller that stopped listening lost only its reply.
                        let _ = tx.send(Ok(r));
                    }
                }
                Err(e) => {
                    for tx in replies {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

/// Gives up one slot of `key`'s lane; forgets the lane when it is idle.
fn release_slot<T, R>(lanes: &mut HashMap<String, Lane<T, R>>, key: &str) {
    if let Some(lane) = lanes.get_mut(key) {
        lane.in_flight = lane.in_flight.saturating_sub(1);
        if lane.in_flight == 0 && lane.queue.is_empty() {
            lanes.remove(key);
        }
    }
}

/// Ends an inline call: its slot goes to a runner when calls queued behind it,
/// else it is freed.
struct HandOn<T: Send + 'static, R: Send + 'static> {
    batcher: Arc<Batcher<T, R>>,
    key: String,
}

impl<T: Send + 'static, R: Send + 'static> Drop for HandOn<T, R> {
    fn drop(&mut self) {
        let waiting = {
            let mut lanes = self.batcher.lock_lanes();
            let waiting = lanes.get_mut(&self.key).is_some_and(|lane| {
                lane.queue.retain(|w| !w.reply.is_closed());
                !lane.queue.is_empty()
            });
            if !waiting {
                release_slot(&mut lanes, &self.key);
            }
            waiting
        };
        if waiting {
            self.batcher.spawn_runner(&self.key);
        }
    }
}

/// The replies of a batch of `n` calls: exactly one each, in order.
fn one_each<R>(replies: Result<Vec<R>>, n: usize) -> Result<Vec<R>> {
    match replies {
        Ok(r) if r.len() == n => Ok(r),
        Ok(_) => Err(Error::backend(
            "batched call: the script answered a different number of replies",
            None,
        )),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// An exec that doubles each item and records batch sizes; each call takes
    /// until `gate` lets it through.
    fn doubling(
        sizes: Arc<Mutex<Vec<usize>>>,
        gate: Arc<tokio::sync::Semaphore>,
    ) -> Exec<u32, u32> {
        Arc::new(move |_key, items: Vec<u32>| {
            let sizes = Arc::clone(&sizes);
            let gate = Arc::clone(&gate);
            Box::pin(async move {
                sizes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(items.len());
                let _permit = gate
                    .acquire()
                    .await
                    .map_err(|_| Error::backend("closed", None))?;
                Ok(items.into_iter().map(|i| i * 2).collect())
            })
        })
    }

    /// Submits `item` to lane "p" from a task of its own.
    fn spawn_submit(b: &Arc<Batcher<u32, u32>>, item: u32) -> tokio::task::JoinHandle<Result<u32>> {
        let b = Arc::clone(b);
        tokio::spawn(async move { b.submit("p", item).await })
    }

    /// Waits until `cond` holds.
    async fn wait_until(cond: impl Fn() -> bool) {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn queue_len(b: &Batcher<u32, u32>) -> usize {
        b.lanes
            .lock()
            .unwrap()
            .get("p")
            .map_or(0, |l| l.queue.len())
    }

    #[test]
    fn a_slow_link_earns_more_calls_in_flight_and_a_fast_one_gives_them_back() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let b = Batcher::new(8, 2, true, doubling(Arc::clone(&sizes), Arc::clone(&gate)));
        assert_eq!(b.limit(), 2, "the configured number to start with");
        b.record(Duration::from_micros(300));
        assert_eq!(b.limit(), 2, "a fast link: no more than configured");
        for _ in 0..LINK_SAMPLES {
            b.record(Duration::from_micros(2_400));
        }
        assert_eq!(b.limit(), 12, "2.4 ms round trips: one per 200 µs");
        b.record(Duration::from_micros(100));
        assert_eq!(b.limit(), 2, "the fastest recent call counts");
        for _ in 0..LINK_SAMPLES {
            b.record(Duration::from_secs(1));
        }
        assert_eq!(b.limit(), LINK_CAP, "never more than the cap");
        let fixed = Batcher::new(8, 2, false, doubling(sizes, gate));
        fixed.record(Duration::from_secs(1));
        assert_eq!(fixed.limit(), 2, "without fit_link the number is fixed");
    }

    #[tokio::test]
    async fn a_lane_runs_as_many_calls_at_once_as_the_link_earned() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let b = Batcher::new(8, 1, true, doubling(Arc::clone(&sizes), Arc::clone(&gate)));
        for _ in 0..LINK_SAMPLES {
            b.record(Duration::from_micros(800));
        }
        assert_eq!(b.limit(), 4);
        let calls: Vec<_> = (1..=5u32).map(|i| spawn_submit(&b, i)).collect();
        // Four go out alone at once; the fifth waits for one of them.
        wait_until(|| sizes.lock().unwrap().len() >= 4 && queue_len(&b) >= 1).await;
        assert_eq!(*sizes.lock().unwrap(), vec![1, 1, 1, 1]);
        gate.add_permits(100);
        for (i, h) in (1..=5u32).zip(calls) {
            assert_eq!(h.await.unwrap().unwrap(), i * 2);
        }
        assert_eq!(sizes.lock().unwrap().len(), 5);
    }

    #[tokio::test]
    async fn lone_call_runs_inline_and_lane_is_forgotten() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Semaphore::new(100));
        let b = Batcher::new(8, 1, false, doubling(Arc::clone(&sizes), gate));
        assert_eq!(b.submit("p", 21).await.unwrap(), 42);
        assert_eq!(*sizes.lock().unwrap(), vec![1]);
        assert!(b.lanes.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn calls_queued_behind_one_in_flight_share_batches_of_at_most_max() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let b = Batcher::new(4, 1, false, doubling(Arc::clone(&sizes), Arc::clone(&gate)));
        let first = spawn_submit(&b, 0);
        // Wait until the first call is in flight, then queue ten more.
        wait_until(|| !sizes.lock().unwrap().is_empty()).await;
        let mut rest = Vec::new();
        for i in 1..=10u32 {
            rest.push((i, spawn_submit(&b, i)));
        }
        wait_until(|| queue_len(&b) >= 10).await;
        gate.add_permits(100);
        assert_eq!(first.await.unwrap().unwrap(), 0);
        for (i, h) in rest {
            assert_eq!(h.await.unwrap().unwrap(), i * 2);
        }
        assert_eq!(*sizes.lock().unwrap(), vec![1, 4, 4, 2]);
        assert!(b.lanes.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_cancelled_leader_does_not_strand_queued_calls() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let b = Batcher::new(8, 1, false, doubling(Arc::clone(&sizes), Arc::clone(&gate)));
        let leader = spawn_submit(&b, 1);
        wait_until(|| !sizes.lock().unwrap().is_empty()).await;
        let follower = spawn_submit(&b, 5);
        wait_until(|| queue_len(&b) >= 1).await;
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        gate.add_permits(100);
        assert_eq!(follower.await.unwrap().unwrap(), 10);
    }

    #[tokio::test]
    async fn a_call_cancelled_while_queued_is_left_out_of_the_batch() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let b = Batcher::new(8, 1, false, doubling(Arc::clone(&sizes), Arc::clone(&gate)));
        let leader = spawn_submit(&b, 1);
        wait_until(|| !sizes.lock().unwrap().is_empty()).await;
        let gone = spawn_submit(&b, 2);
        let kept = spawn_submit(&b, 3);
        wait_until(|| queue_len(&b) >= 2).await;
        gone.abort();
        let _ = gone.await;
        gate.add_permits(100);
        assert_eq!(leader.await.unwrap().unwrap(), 2);
        assert_eq!(kept.await.unwrap().unwrap(), 6);
        assert_eq!(*sizes.lock().unwrap(), vec![1, 1]);
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_calls() {
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let exec: Exec<u32, u32> = {
            let calls = Arc::clone(&calls);
            let gate = Arc::clone(&gate);
            Arc::new(move |_key, _items| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                let gate = Arc::clone(&gate);
                Box::pin(async move {
                    let _p = gate
                        .acquire()
                        .await
                        .map_err(|_| Error::backend("closed", None))?;
                    if n == 0 {
                        Ok(vec![7])
                    } else {
                        Err(Error::ReplicationShortfall {
                            wanted: 1,
                            acknowledged: 0,
                        })
                    }
                })
            })
        };
        let b = Batcher::new(8, 1, false, exec);
        let leader = spawn_submit(&b, 1);
        wait_until(|| calls.load(Ordering::SeqCst) > 0).await;
        let mut queued = Vec::new();
        for i in 0..3 {
            queued.push(spawn_submit(&b, i));
        }
        wait_until(|| queue_len(&b) >= 3).await;
        gate.add_permits(100);
        assert_eq!(leader.await.unwrap().unwrap(), 7);
        for h in queued {
            assert!(matches!(
                h.await.unwrap(),
                Err(Error::ReplicationShortfall {
                    wanted: 1,
                    acknowledged: 0
                })
            ));
        }
    }
}
