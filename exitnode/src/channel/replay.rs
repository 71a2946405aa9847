//! Replay protection for message 1: per consumer static key, the newest timestamp
//! accepted; a hello not newer is refused. Bounded: beyond `capacity` keys, the key
//! whose last accepted hello is oldest is forgotten (a hello of a forgotten key
//! replayed later is accepted again; it still yields only a message 2 that nobody
//! without the consumer's static key and the token can read).

use super::payload::Timestamp;
use super::NoisePublicKey;
use std::collections::{BTreeSet, HashMap};

/// The newest accepted timestamp of each recent consumer key.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    newest: HashMap<NoisePublicKey, Timestamp>,
    /// The same entries, ordered by timestamp, to find the oldest.
    by_age: BTreeSet<(Timestamp, NoisePublicKey)>,
    capacity: usize,
}

impl ReplayWindow {
    /// A window remembering at most `capacity` keys (at least 1).
    pub fn new(capacity: usize) -> ReplayWindow {
        ReplayWindow {
            newest: HashMap::new(),
            by_age: BTreeSet::new(),
            capacity: capacity.max(1),
        }
    }

    /// Whether a hello from `key` at `at` is new (strictly newer than the last one).
    pub fn is_fresh(&self, key: &NoisePublicKey, at: Timestamp) -> bool {
        self.newest.get(key).is_none_or(|&last| at > last)
    }

    /// Records an accepted hello (call only after [`ReplayWindow::is_fresh`]).
    pub fn accept(&mut self, key: NoisePublicKey, at: Timestamp) {
        if let Some(last) = self.newest.insert(key, at) {
            self.by_age.remove(&(last, key));
        }
        self.by_age.insert((at, key));
        while self.newest.len() > self.capacity {
            let Some(oldest) = self.by_age.pop_first() else {
                break;
            };
            self.newest.remove(&oldest.1);
        }
    }

    /// How many keys it remembers.
    pub fn len(&self) -> usize {
        self.newest.len()
    }

    /// Whether it remembers none.
    pub fn is_empty(&self) -> bool {
        self.newest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, nanos: u32) -> Timestamp {
        Timestamp { secs, nanos }
    }

    #[test]
    fn equal_or_older_is_refused_newer_accepted() {
        let mut w = ReplayWindow::new(4);
        let k = NoisePublicKey([1; 32]);
        assert!(w.is_fresh(&k, at(10, 0)));
        w.accept(k, at(10, 5));
        assert!(!w.is_fresh(&k, at(10, 5)));
        assert!(!w.is_fresh(&k, at(10, 4)));
        assert!(!w.is_fresh(&k, at(9, 999_999_999)));
        assert!(w.is_fresh(&k, at(10, 6)));
        assert!(w.is_fresh(&NoisePublicKey([2; 32]), at(1, 0)));
    }

    #[test]
    fn bounded_forgets_the_oldest() {
        let mut w = ReplayWindow::new(2);
        let (a, b, c) = (
            NoisePublicKey([1; 32]),
            NoisePublicKey([2; 32]),
            NoisePublicKey([3; 32]),
        );
        w.accept(a, at(1, 0));
        w.accept(b, at(2, 0));
        w.accept(a, at(3, 0));
        w.accept(c, at(4, 0));
        assert_eq!(w.len(), 2);
        assert!(w.is_fresh(&b, at(2, 0)), "b was the oldest: forgotten");
        assert!(!w.is_fresh(&a, at(3, 0)));
        assert!(!w.is_fresh(&c, at(4, 0)));
        assert_eq!(w.by_age.len(), 2);
    }
}
