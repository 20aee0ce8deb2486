//! The sticky sessions of one in-memory pool: session name -> the proxy it
//! keeps, until a time on the storage's clock (see [`crate::session`]).

use std::collections::{BTreeSet, HashMap};

use super::records::Nanos;

/// Bound sessions, and their ends in time order (for purging).
#[derive(Debug, Default)]
pub(super) struct Sessions {
    bound: HashMap<Box<str>, (u64, Nanos)>,
    ends: BTreeSet<(Nanos, Box<str>)>,
}

impl Sessions {
    /// The proxy (sequence number) session `id` keeps at `now`, if any.
    pub(super) fn proxy_of(&self, id: &str, now: Nanos) -> Option<u64> {
        self.binding(id, now).map(|(seq, _)| seq)
    }

    /// The proxy session `id` keeps at `now`, and until when, if any.
    pub(super) fn binding(&self, id: &str, now: Nanos) -> Option<(u64, Nanos)> {
        self.bound
            .get(id)
            .copied()
            .filter(|&(_, until)| until > now)
    }

    /// Binds session `id` to proxy `seq` until `until` (moving or renewing it).
    pub(super) fn bind(&mut self, id: &str, seq: u64, until: Nanos) {
        if let Some((_, old)) = self.bound.get(id) {
            self.ends.remove(&(*old, Box::from(id)));
        }
        self.bound.insert(Box::from(id), (seq, until));
        self.ends.insert((until, Box::from(id)));
    }

    /// Forgets the sessions that ended by `now`.
    pub(super) fn purge(&mut self, now: Nanos) {
        while let Some((until, _)) = self.ends.first() {
            if *until > now {
                break;
            }
            if let Some((_, id)) = self.ends.pop_first() {
                self.bound.remove(&id);
            }
        }
    }

    /// How many sessions are bound (ended ones not yet purged included).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.bound.len()
    }
}

#[cfg(test)]
mod tests {
    use super::Sessions;

    #[test]
    fn a_session_keeps_its_proxy_until_its_end_and_moves_when_bound_again() {
        let mut s = Sessions::default();
        assert_eq!(s.proxy_of("a", 0), None);
        s.bind("a", 7, 100);
        assert_eq!(s.proxy_of("a", 99), Some(7));
        assert_eq!(s.proxy_of("a", 100), None, "ended at its time");
        s.bind("a", 9, 300);
        assert_eq!(s.proxy_of("a", 150), Some(9));
        s.purge(200);
        assert_eq!(s.len(), 1, "the renewed binding outlives its old end");
        s.purge(300);
        assert_eq!(s.len(), 0);
    }
}
