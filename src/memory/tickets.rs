//! The queue of fair waiters of one in-memory pool: tickets in number order,
//! each honoured until a time on the storage's clock (see [`crate::fair`]).

use std::collections::{BTreeMap, BTreeSet};

use super::records::Nanos;

/// Queued tickets by number (with when each lapses), and by when they lapse
/// (for dropping lapsed ones first).
#[derive(Debug, Default)]
pub(super) struct Tickets {
    queue: BTreeMap<u64, Nanos>,
    ends: BTreeSet<(Nanos, u64)>,
    /// The last number issued.
    last: u64,
}

impl Tickets {
    /// Issues the next ticket at `now`, honoured until `now + ttl`: the later
    /// of the last number plus one and `now` in µs (so a pool created again
    /// never reuses a number of an earlier one's waiters).
    pub(super) fn take(&mut self, now: Nanos, ttl: Nanos) -> u64 {
        self.drop_lapsed(now);
        let floor = u64::try_from(now / 1_000).unwrap_or(0);
        let number = (self.last + 1).max(floor);
        self.last = number;
        self.set(number, now.saturating_add(ttl));
        number
    }

    /// An attempt by the holder of ticket `number` at `now`: drops lapsed
    /// tickets, refreshes this one until `now + ttl` (queued again in its
    /// place if it had lapsed), and says whether it is the head, and whether
    /// another ticket is queued behind the head.
    pub(super) fn turn(&mut self, number: u64, now: Nanos, ttl: Nanos) -> (bool, bool) {
        self.drop_lapsed(now);
        self.set(number, now.saturating_add(ttl));
        let mut first = self.queue.keys();
        let head = first.next() == Some(&number);
        (head, first.next().is_some())
    }

    /// Takes ticket `number` out; returns whether it was the head.
    pub(super) fn remove(&mut self, number: u64) -> bool {
        let head = self.queue.keys().next() == Some(&number);
        if let Some(until) = self.queue.remove(&number) {
            self.ends.remove(&(until, number));
        }
        head
    }

    /// Whether any ticket is queued (lapsed ones not yet dropped included).
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The tickets honoured at `now`, head first, with when each lapses.
    pub(super) fn honoured(&self, now: Nanos) -> Vec<(u64, Nanos)> {
        self.queue
            .iter()
            .filter(|&(_, &until)| until > now)
            .map(|(&n, &until)| (n, until))
            .collect()
    }

    fn set(&mut self, number: u64, until: Nanos) {
        if let Some(old) = self.queue.insert(number, until) {
            self.ends.remove(&(old, number));
        }
        self.ends.insert((until, number));
    }

    /// Drops the tickets that lapsed by `now` (honoured until then or earlier).
    fn drop_lapsed(&mut self, now: Nanos) {
        while let Some(&(until, number)) = self.ends.first() {
            if until > now {
                break;
            }
            self.ends.pop_first();
            self.queue.remove(&number);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Tickets;

    #[test]
    fn the_head_is_the_oldest_live_ticket_and_a_lapsed_one_comes_back_in_its_place() {
        let mut q = Tickets::default();
        let a = q.take(1_000_000, 100);
        let b = q.take(1_000_000, 100);
        assert!(b > a, "numbers increase");
        assert_eq!(q.turn(b, 1_000_050, 100), (false, true), "a is ahead");
        assert_eq!(q.turn(a, 1_000_060, 100), (true, true));
        // a is not refreshed again: it lapses at 1_000_160; b lives on.
        assert_eq!(q.turn(b, 1_000_120, 100), (false, true));
        assert_eq!(q.turn(b, 1_000_160, 100), (true, false), "a lapsed");
        assert_eq!(q.honoured(1_000_160), vec![(b, 1_000_260)]);
        // a's waiter was only slow: it comes back ahead of b.
        assert_eq!(q.turn(a, 1_000_170, 100), (true, true));
        assert!(q.remove(a), "a was the head");
        assert!(!q.remove(a), "gone");
        assert_eq!(q.turn(b, 1_000_180, 100), (true, false));
        assert!(q.remove(b));
        assert!(q.is_empty());
        let c = q.take(1_000_000, 100);
        assert!(c > b, "numbers never go back, whatever the clock says");
    }
}
